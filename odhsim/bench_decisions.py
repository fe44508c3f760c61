"""What decision tracing costs the simulator: `odhsim bench`'s Azure case with `outputs.decisions` none / all /
sample, side by side in one run, each repetition in a fresh process, the modes interleaved so machine noise hits
them alike; CPU-time medians (steadier than wall time on a shared machine) and their ratio to `none`.

    python -m odhsim.bench_decisions [--rounds 5] [--baseline-tree DIR] [--sample 0.1]

`--baseline-tree DIR`: also time a source tree without decision tracing (e.g. `git archive <commit>` unpacked into
DIR) on the same case, to show what `none` costs against it. Prints JSON lines and a summary table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

_ONE = """
import json, sys, time
from odhsim.bench import AZURE_CONV, _scenario_dict
from odhsim.scenario.load import scenario_from_dict
from odhsim.sim.run import simulate
replicas, decisions = int(sys.argv[1]), sys.argv[2]
d = _scenario_dict("azure_conv_70b_h100_tp8", AZURE_CONV, replicas, 1.0)
if decisions != "-":
    d["outputs"]["decisions"] = decisions
sc = scenario_from_dict(d)
c0, t0 = time.process_time(), time.perf_counter()
res = simulate(sc)
cpu, wall = time.process_time() - c0, time.perf_counter() - t0
rows = 0 if getattr(res, "decisions", None) is None else len(res.decisions)
print(json.dumps({"cpu_s": cpu, "wall_s": wall, "requests": res.summary["requests"], "decision_rows": rows,
                  "finish_sum": float(res.requests["finish_s"].sum())}))
"""


def _replicas() -> int:
    """The bench's sizing of the Azure case (odhsim.bench.run_bench): 70% load on the trace's mean rate."""
    from odhsim.bench import _capacity_rps_per_replica, run_isolated_value, trace_rate_rps

    return max(1, math.ceil(trace_rate_rps() / (0.7 * run_isolated_value(_capacity_rps_per_replica))))


def _run(tree: Path | None, replicas: int, decisions: str) -> dict[str, Any]:
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    out = subprocess.run(
        [sys.executable, "-c", _ONE, str(replicas), decisions], env=env, capture_output=True, text=True, check=True,
        cwd=str(tree) if tree is not None else None,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--baseline-tree", type=Path, default=None)
    ap.add_argument("--sample", type=float, default=0.1)
    args = ap.parse_args(argv)
    replicas = _replicas()
    sample = f"sample:{args.sample:g}"
    modes: list[tuple[str, Path | None, str]] = [("none", None, "none"), ("all", None, "all"), (sample, None, sample)]
    if args.baseline_tree is not None:
        modes.insert(0, ("baseline", args.baseline_tree.resolve(), "-"))
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in modes}
    for _ in range(args.rounds):
        for name, tree, decisions in modes:
            r = _run(tree, replicas, decisions)
            runs[name].append(r)
            print(json.dumps({"mode": name, **r}), flush=True)
    sums = {name: {r["finish_sum"] for r in rs} for name, rs in runs.items()}
    if len(set().union(*sums.values())) != 1:
        print(f"warning: the modes' results differ (sum of finish times per mode: {sums})", file=sys.stderr)
    med = {name: statistics.median(r["cpu_s"] for r in rs) for name, rs in runs.items()}
    n = runs["none"][0]["requests"]
    print(f"\nAzure case, {replicas} replicas, {n} requests; CPU-time medians of {args.rounds} fresh processes")
    print(f"{'mode':>16} {'cpu_s':>8} {'req/cpu-s':>10} {'vs none':>8} {'wall_s (median)':>16}")
    for name, rs in runs.items():
        wall = statistics.median(r["wall_s"] for r in rs)
        print(f"{name:>16} {med[name]:8.3f} {n / med[name]:10.0f} {med[name] / med['none']:8.3f} {wall:16.3f}")


if __name__ == "__main__":
    main()
