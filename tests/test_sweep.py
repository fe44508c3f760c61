"""Sweeps and executors: the Parquet dataset, failed jobs, resume, killed workers, and local == Ray."""

from __future__ import annotations

import functools
import os
import signal
from pathlib import Path

import pandas as pd
import pytest

from odhsim.errors import ScenarioError
from odhsim.experiments.executors import LocalExecutor, Outcome, make_executor
from odhsim.experiments.jobs import Job, JobOutput, run_job
from odhsim.experiments.sweep import run_sweep, sweep_cells

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = str(ROOT / "scenarios" / "default.yaml")
GRID = ["duration_s=8,12", "gateway.router.profile=round-robin,least-request"]
WALL_COLUMNS = ["wall_s", "sim_requests_per_wall_s"]  # wall-clock time: the one thing that differs run to run


def die_once(marker_dir: str, job: Job) -> JobOutput:
    """Kill this worker process on the job's first attempt (a marker file remembers it), run it on the second."""
    marker = Path(marker_dir) / f"{job.job_id}.died"
    if not marker.exists():
        marker.write_text("1")
        os.kill(os.getpid(), signal.SIGKILL)
    return run_job(job)


def die_always(job: Job) -> JobOutput:
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable")


def _no_wall(summary: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in summary.items() if k not in WALL_COLUMNS}


def _dataset(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "summary").sort_values("job_id", ignore_index=True)


def test_cells_grid_times_zip_and_bad_axes() -> None:
    cells = sweep_cells(["a=1,2"], ["b=x,y", "c=null,'p,q'"])
    assert cells == [
        {"a": 1, "b": "x", "c": None},
        {"a": 1, "b": "y", "c": "p,q"},
        {"a": 2, "b": "x", "c": None},
        {"a": 2, "b": "y", "c": "p,q"},
    ]
    with pytest.raises(ScenarioError, match="same number of values"):
        sweep_cells([], ["b=1,2", "c=1"])
    with pytest.raises(ScenarioError, match="expected path=v1,v2"):
        sweep_cells(["duration_s"])
    with pytest.raises(ScenarioError, match="seed cannot be an axis"):
        sweep_cells(["seed=1,2"])


def test_failed_job_recorded_dataset_columns_and_resume(tmp_path: Path) -> None:
    grid = ["duration_s=8,abc", "gateway.router.profile=round-robin,least-request"]
    report = run_sweep(SCENARIO, grid=grid, seeds=2, out_dir=tmp_path, requests=True)
    assert (report.total, report.ran, report.failed, report.skipped) == (8, 8, 4, 0)
    df = _dataset(tmp_path)
    assert len(df) == 8
    assert list(df.columns[:6]) == ["duration_s", "gateway.router.profile", "seed", "status", "error", "job_id"]
    for col in ("ttft_p99_s", "slo_attainment", "by_model.chat.ttft_p99_s", "slos.critical.ttft_s", "warnings"):
        assert col in df.columns
    bad = df[df["duration_s"] == "abc"]
    assert set(bad["status"]) == {"failed"} and len(bad) == 4
    assert bad["error"].str.contains("duration_s").all()
    good = df[df["status"] == "ok"]
    assert len(good) == 4 and good["error"].isna().all()
    assert sorted(good["seed"].unique()) == [42, 43]
    assert (good["requests"] > 0).all() and good["ttft_p99_s"].notna().all()
    assert len(pd.read_parquet(tmp_path / "requests")) == int(good["requests"].sum())

    # Resume: remove one finished job's file; the rerun runs exactly that job.
    gone = good["job_id"].iloc[0]
    (tmp_path / "summary" / f"{gone}.parquet").unlink()
    ran: list[str] = []

    def progress(outcome: Outcome | None, done: int, total: int) -> None:
        if outcome is not None:
            ran.append(outcome.job.job_id)

    again = run_sweep(SCENARIO, grid=grid, seeds=2, out_dir=tmp_path, progress=progress)
    assert (again.ran, again.skipped) == (1, 7) and ran == [gone]
    again = run_sweep(SCENARIO, grid=grid, seeds=2, out_dir=tmp_path, retry_failed=True)
    assert (again.ran, again.failed, again.skipped) == (4, 4, 4)
    pd.testing.assert_frame_equal(_dataset(tmp_path).drop(columns=WALL_COLUMNS), df.drop(columns=WALL_COLUMNS))


def test_local_killed_worker_is_retried_or_recorded(tmp_path: Path) -> None:
    job = Job(SCENARIO, 1, (("duration_s", 5),))
    with LocalExecutor(workers=1) as ex:
        [once] = list(ex.map([job], functools.partial(die_once, str(tmp_path))))
        [always] = list(ex.map([job], die_always))
        [after] = list(ex.map([job], run_job))  # the pool is usable again
    assert once.ok and once.attempts == 2 and once.result.summary["requests"] > 0
    assert not always.ok and always.attempts == 2 and "worker process died" in always.error
    assert after.ok and _no_wall(after.result.summary) == _no_wall(once.result.summary)


def test_local_and_ray_give_identical_results(tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e '.[ray]'; make test has it)")
    with make_executor("local", workers=2) as ex:
        local = run_sweep(SCENARIO, grid=GRID, seeds=2, out_dir=tmp_path / "local", executor=ex)
    with make_executor("ray", workers=2) as ex:
        ray = run_sweep(SCENARIO, grid=GRID, seeds=2, out_dir=tmp_path / "ray", executor=ex)
        job = Job(SCENARIO, 1, (("duration_s", 5),))
        [once] = list(ex.map([job], functools.partial(die_once, str(tmp_path))))
        [always] = list(ex.map([job], die_always))
    assert (local.ran, local.failed, ray.ran, ray.failed) == (8, 0, 8, 0)
    a, b = _dataset(tmp_path / "local"), _dataset(tmp_path / "ray")
    assert a["ttft_p99_s"].nunique() > 1  # the cells differ, so equality below means something
    pd.testing.assert_frame_equal(a.drop(columns=WALL_COLUMNS), b.drop(columns=WALL_COLUMNS))
    assert once.ok and (tmp_path / f"{job.job_id}.died").exists() and once.result.summary["requests"] > 0
    assert not always.ok and "worker died" in always.error


def test_compare_through_a_process_pool_matches_inline() -> None:
    from odhsim.analysis import parse_variants, run_comparison

    variants = parse_variants(["rr=round-robin", "lr=least-request"])
    args = {"seeds": 2, "overrides": ["duration_s=8"]}
    inline = run_comparison(SCENARIO, variants, **args)
    with LocalExecutor(workers=2) as ex:
        pooled = run_comparison(SCENARIO, variants, executor=ex, keep_results=True, **args)
    assert inline.runs["value"].notna().any() and inline.runs["value"].nunique() > 2
    pd.testing.assert_frame_equal(inline.runs, pooled.runs)
    pd.testing.assert_frame_equal(inline.table, pooled.table)
    assert list(pooled.results) == [("rr", 42), ("lr", 42), ("rr", 43), ("lr", 43)]
