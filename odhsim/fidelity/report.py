"""fidelity.csv and the printed table: what a comparison (or several loads of one) found, with pass/fail."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from rich.table import Table

from odhsim.fidelity.compare import COLUMNS


def write_csv(table: pd.DataFrame, out_dir: str | Path, name: str = "fidelity.csv") -> Path:
    """The table (COLUMNS first, any extra columns after) as CSV, written whole (temp file, rename)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    extra = [c for c in table.columns if c not in COLUMNS]
    tmp = out / f".{name}.tmp"
    table[[*extra[:1], *COLUMNS, *extra[1:]] if extra else COLUMNS].to_csv(tmp, index=False)
    tmp.replace(out / name)
    return out / name


def _num(v: object, fmt: str = ".4g") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, fmt)


def _verdict(row: pd.Series) -> str:
    if row["passed"] is None or (isinstance(row["passed"], float) and math.isnan(row["passed"])):
        return ""
    return "[green]pass[/]" if bool(row["passed"]) else "[red]miss[/]"


def fidelity_table(table: pd.DataFrame, title: str) -> Table:
    """One line per (case, load, metric, model): sim, live, error, target, verdict."""
    out = Table(title=title, header_style="bold")
    has_case = "case" in table.columns
    if has_case:
        out.add_column("case")
    for col in ("load", "metric", "model", "sim", "live", "error %", "|diff|", "target", ""):
        out.add_column(col, justify="left" if col in ("metric", "model", "") else "right")
    for _, row in table.iterrows():
        replicas = row["metric"] == "ready_replicas"
        target = f"<= {_num(row['target'], 'g')} rep" if replicas else _num(row["target"], "g")
        cells = [_num(row["load"], ".2f"), str(row["metric"]), str(row["model"]), _num(row["sim"]),
                 _num(row["live"]), _num(row["error_pct"], "+.1f"), _num(row["abs_diff"]),
                 target if not (isinstance(row["target"], float) and math.isnan(row["target"])) else "",
                 _verdict(row)]  # fmt: skip
        out.add_row(*([str(row["case"])] if has_case else []), *cells)
    return out
