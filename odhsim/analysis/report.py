"""The comparison as a rich Table for the terminal: value per variant, and the paired difference vs the baseline."""

from __future__ import annotations

import math

from rich.markup import escape
from rich.table import Table

from odhsim.analysis.compare import Comparison

MINUS = "\u2212"


def fmt_number(value: float, *, signed: bool = False) -> str:
    """4 significant digits, '-' for NaN, a true minus sign (and '+' when `signed`) so columns read cleanly."""
    if not math.isfinite(value):
        return "-"
    text = f"{value:+,.4g}" if signed else f"{value:,.4g}"
    return text.replace("-", MINUS)


def fmt_diff(diff: float, ci_low: float, ci_high: float, significant: bool) -> str:
    """'−0.12 [−0.2, −0.04] *': mean paired difference, its 95% CI (omitted when undefined), '*' if p < 0.05."""
    text = fmt_number(diff, signed=True)
    if math.isfinite(ci_low) and math.isfinite(ci_high):
        text += f" [{fmt_number(ci_low)}, {fmt_number(ci_high)}]"
    return text + (" *" if significant else "")


def comparison_header(comparison: Comparison) -> str:
    n = len(comparison.seeds)
    seeds = ", ".join(map(str, comparison.seeds))
    reps = comparison.replicates
    if reps is not None and reps.mode == "windows":
        text = f"baseline: {comparison.baseline}; {n} replicate{'s' if n != 1 else ''} (seeds {seeds}; "
        text += f"{reps.window_s:g} s trace windows)"
    else:
        text = f"baseline: {comparison.baseline}; {n} seed{'s' if n != 1 else ''} ({seeds})"
    if n < 2:
        text += "; one seed: no confidence intervals or p-values"
    return text


def _over(comparison: Comparison) -> str:
    """What a replicate is, for the caption (the full description is `comparison.replicates.description`)."""
    reps = comparison.replicates
    if reps is not None and reps.mode == "windows":
        return f"replicates (each a seed and its own {reps.window_s:g} s trace window)"
    return "seeds"


def comparison_table(comparison: Comparison) -> Table:
    """Rows per metric; per variant its mean value, and for non-baseline variants Δ = variant − baseline."""
    table = Table(
        title=escape(comparison_header(comparison)),
        caption=f"Δ: mean paired difference over {_over(comparison)} [95% t CI]; * paired t-test p < 0.05",
        header_style="bold",
    )
    table.add_column("metric")
    for name in comparison.variants:  # variant names are the user's: escaped so "[x]" is not taken as markup
        table.add_column(escape(name), justify="right")
        if name != comparison.baseline:
            table.add_column(escape(f"Δ {name}"), justify="right")
    df = comparison.table
    for metric in dict.fromkeys(df["metric"]):
        cells = [escape(str(metric))]
        rows = df[df["metric"] == metric].set_index("variant")
        for name in comparison.variants:
            r = rows.loc[name]
            cells.append(fmt_number(float(r["value"])))
            if name != comparison.baseline:
                cells.append(
                    fmt_diff(float(r["diff"]), float(r["ci_low"]), float(r["ci_high"]), bool(r["significant"]))
                )
        table.add_row(*cells)
    return table
