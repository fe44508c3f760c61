"""Prefix-cache benchmark: CPU time of the block-pool-heavy runs, with fingerprints of their results.

Cases: the Mooncake conversation trace (scenarios/mooncake_prefix.yaml, its 30-minute window; prompts average ~750
KV blocks, so per-block work shows) and the Azure conversation trace on 4 llama2-70b replicas (`odhsim bench`'s
trace case). Each run is a fresh Python process; CPU is `time.process_time()` around `simulate()` (trace loading
included, imports not). The fingerprint is a sha256 over the requests and timeseries tables (run_id excluded, floats
by their bits), so two code versions with equal fingerprints produced bit-identical results.

    python -m odhsim.bench_prefix --runs 5                       # this tree
    python -m odhsim.bench_prefix --runs 5 --against /tmp/pc-old # alternate runs of this tree and another checkout
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

REPO_ROOT = Path(__file__).resolve().parents[1]
CASES = ("mooncake_30min", "azure_conv_4rep")

# Runs in the child with the checkout under test first on sys.path; it imports only what every version has.
_CHILD = r"""
import hashlib, json, sys, time
import numpy as np
from odhsim.scenario.load import load_scenario, scenario_from_dict
from odhsim.sim.run import simulate

case = sys.argv[1]
if case == "mooncake_30min":
    sc = load_scenario("scenarios/mooncake_prefix.yaml")  # its window: the first 30 min
elif case == "azure_conv_4rep":
    from odhsim.bench import AZURE_CONV, _scenario_dict
    sc = scenario_from_dict(_scenario_dict(case, AZURE_CONV, 4, 1.0))
else:
    raise SystemExit(f"unknown case {case!r}")

t0 = time.process_time()
res = simulate(sc)
cpu = time.process_time() - t0

digest = hashlib.sha256()
for name in ("requests", "timeseries"):
    df = getattr(res, name).drop(columns=["run_id"])
    for col in df.columns:
        values = df[col].to_numpy()
        digest.update(col.encode())
        if values.dtype.kind in "fiub":
            digest.update(np.ascontiguousarray(values).tobytes())
        else:
            digest.update("\x1f".join(map(str, values)).encode())
s = res.summary
import resource
rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"case": case, "cpu_s": cpu, "peak_rss_mb": rss_mb, "requests": s["requests"],
                  "fingerprint": digest.hexdigest()[:16], "hit_rate": s.get("prefix_cache_hit_rate")}))
"""


def run_case(case: str, root: Path) -> dict[str, Any]:
    """One run of `case` with the checkout at `root`, in a fresh process: its CPU seconds and fingerprint."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, case], cwd=root, env=env, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{case} at {root} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench(roots: dict[str, Path], runs: int, cases: tuple[str, ...] = CASES) -> list[dict[str, Any]]:
    """`runs` rounds per case, the checkouts alternating within each round so machine noise hits them alike."""
    rows = []
    for case in cases:
        cpu: dict[str, list[float]] = {label: [] for label in roots}
        prints: dict[str, set[str]] = {label: set() for label in roots}
        rss: dict[str, list[float]] = {label: [] for label in roots}
        for _ in range(runs):
            for label, root in roots.items():
                got = run_case(case, root)
                cpu[label].append(got["cpu_s"])
                prints[label].add(got["fingerprint"])
                rss[label].append(got["peak_rss_mb"])
        for label in roots:
            rows.append(
                {
                    "case": case,
                    "tree": label,
                    "cpu_median_s": statistics.median(cpu[label]),
                    "cpu_runs_s": [round(c, 3) for c in cpu[label]],
                    "fingerprints": sorted(prints[label]),
                    "peak_rss_mb": max(rss[label]),
                }
            )
    return rows


def main(
    runs: Annotated[int, typer.Option(help="runs per case and checkout (median reported)")] = 3,
    against: Annotated[Path | None, typer.Option(help="another checkout to alternate with (e.g. a worktree)")] = None,
    case: Annotated[list[str] | None, typer.Option(help=f"cases to run (default all: {', '.join(CASES)})")] = None,
) -> None:
    cases = tuple(case) if case else CASES
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise typer.BadParameter(f"unknown case(s) {unknown}; known: {list(CASES)}", param_hint="--case")
    roots = {"this": REPO_ROOT}
    if against is not None:
        if not (against / "odhsim" / "sim" / "run.py").exists():
            raise typer.BadParameter(f"{against} is not an odhsim checkout", param_hint="--against")
        roots = {"against": against.resolve(), "this": REPO_ROOT}
    rows = bench(roots, runs, cases)
    table = Table(title=f"prefix-cache bench: CPU seconds of simulate(), median of {runs}")
    for col in ("case", "tree", "CPU median s", "runs", "peak RSS MB", "fingerprint"):
        table.add_column(col)
    for row in rows:
        table.add_row(
            row["case"],
            row["tree"],
            f"{row['cpu_median_s']:.3f}",
            " ".join(f"{c:.2f}" for c in row["cpu_runs_s"]),
            f"{row['peak_rss_mb']:.0f}",
            ",".join(row["fingerprints"]),
        )
    Console(soft_wrap=True).print(table)
    if against is not None:
        for c in cases:
            fps = {tuple(r["fingerprints"]) for r in rows if r["case"] == c}
            same = len(fps) == 1 and len(next(iter(fps))) == 1
            Console().print(f"{c}: results {'IDENTICAL' if same else 'DIFFER'} between the checkouts")


if __name__ == "__main__":
    typer.run(main)
