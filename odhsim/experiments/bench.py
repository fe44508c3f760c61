"""Executor benchmark: the same jobs on 1 and 2 workers of each executor; wall time, speed-up, overhead per job.

    python -m odhsim.experiments.bench [--jobs 32] [--duration 10] [--executors local,ray]

Startup (spawning the pool, starting Ray) is timed apart from the map. Overhead per job is the worker time not
spent inside jobs, per job: (map wall x workers - sum of the jobs' own times) / jobs; it is what shipping jobs and
results costs (plus idle workers at the tail), and it bounds how small a job may be before parallelism stops paying.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

from odhsim.experiments.executors import make_executor
from odhsim.experiments.jobs import Job, run_job

SCENARIO = Path(__file__).resolve().parents[2] / "scenarios" / "default.yaml"


@dataclass(frozen=True)
class BenchRow:
    executor: str
    workers: int
    jobs: int
    start_s: float
    wall_s: float
    job_s: float
    failed: int

    @property
    def overhead_per_job_s(self) -> float:
        return (self.wall_s * self.workers - self.job_s) / self.jobs


def bench_jobs(n: int, duration_s: float) -> list[Job]:
    return [Job(str(SCENARIO), seed, (("duration_s", duration_s),)) for seed in range(n)]


def bench_executor(name: str, workers: int, jobs: list[Job]) -> BenchRow:
    t0 = time.perf_counter()
    with make_executor(name, workers=workers) as ex:
        t1 = time.perf_counter()
        outcomes = list(ex.map(jobs, run_job))
        t2 = time.perf_counter()
    return BenchRow(name, workers, len(jobs), t1 - t0, t2 - t1, sum(o.wall_s for o in outcomes),
                    sum(not o.ok for o in outcomes))  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=32)
    parser.add_argument("--duration", type=float, default=10.0, help="simulated seconds per job")
    parser.add_argument("--executors", default="local,ray")
    args = parser.parse_args(argv)
    jobs = bench_jobs(args.jobs, args.duration)
    rows = [bench_executor("inline", 1, jobs)]
    for name in args.executors.split(","):
        rows += [bench_executor(name, w, jobs) for w in (1, 2)]
    base = {r.executor: r.wall_s for r in rows if r.workers == 1}
    print(f"{args.jobs} jobs (scenarios/default.yaml, duration_s={args.duration:g}, seeds 0..{args.jobs - 1})")
    print(f"{'executor':<8} {'workers':>7} {'start s':>8} {'wall s':>8} {'jobs s':>8} {'speed-up':>8} "
          f"{'overhead/job ms':>15} {'failed':>6}")  # fmt: skip
    for r in rows:
        print(f"{r.executor:<8} {r.workers:>7} {r.start_s:>8.2f} {r.wall_s:>8.2f} {r.job_s:>8.2f} "
              f"{base[r.executor] / r.wall_s:>8.2f} {r.overhead_per_job_s * 1000:>15.1f} {r.failed:>6}")  # fmt: skip


if __name__ == "__main__":
    main()
