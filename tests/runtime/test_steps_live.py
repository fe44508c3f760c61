"""Live engine step logs: real replica processes spool every engine step / dynamic batch to $ODHSIM_STEPS_FILE,
and the rows add up to the work the requests asked for."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import numpy as np
import pytest

from runtime.processes import ReplicaProcess, terminate_all
from runtime.replica.steps_spool import STEPS_FILE_ENV, SpoolError, read_spools
from tests.runtime.replica_helpers import TINY_LM, TINY_MLP, fixed_config, lm_config

N_LM = 6
MAX_SEQS = 4


def _start(name: str, config, steps_dir: Path) -> ReplicaProcess:
    env = {"ODHSIM_TORCH_THREADS": "1", STEPS_FILE_ENV: str(steps_dir / f"{name}.csv")}
    return ReplicaProcess.start(config, name=name, device="cpu", env=env)


async def _completions(url: str) -> list[dict]:
    async with httpx.AsyncClient(timeout=30) as client:
        bodies = [
            {"model": "chat", "prompt": "step " * (i + 1), "max_tokens": 5 + 3 * i, "temperature": 0,
             "ignore_eos": True}
            for i in range(N_LM)
        ]  # fmt: skip
        answers = await asyncio.gather(*(client.post(f"{url}/v1/completions", json=b) for b in bodies))
    assert all(r.status_code == 200 for r in answers)
    return [r.json()["usage"] for r in answers]


async def _infers(url: str, rows: list[int]) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        bodies = [
            {"inputs": [{"name": "INPUT__0", "datatype": "FP32", "shape": [n, TINY_MLP.input_dim],
                         "data": [0.1] * (n * TINY_MLP.input_dim)}]}
            for n in rows
        ]  # fmt: skip
        answers = await asyncio.gather(*(client.post(f"{url}/v2/models/digits/infer", json=b) for b in bodies))
    assert all(r.status_code == 200 for r in answers)


@pytest.mark.timeout(90)
def test_real_replicas_spool_steps_that_sum_to_the_requests(tmp_path):
    steps_dir = tmp_path / "steps"
    procs = {}
    try:
        procs["chat-0"] = _start("chat-0", lm_config(max_num_seqs=MAX_SEQS), steps_dir)
        procs["digits-0"] = _start("digits-0", fixed_config("digits", TINY_MLP, max_batch_size=8), steps_dir)
        for p in procs.values():
            p.wait_ready(60.0)
        usage = asyncio.run(_completions(procs["chat-0"].url))
        rows = [1, 2, 3, 1, 2, 4, 1, 1, 3]
        asyncio.run(_infers(procs["digits-0"].url, rows))
    finally:
        codes = terminate_all(procs.values(), grace_s=10.0)
    assert codes == {"chat-0": 0, "digits-0": 0}  # graceful exit: the spool's last rows were flushed

    steps = read_spools(steps_dir)
    lm = steps[steps["kind"] == "llm"]
    assert set(lm["replica"]) == {"chat-0"} and set(lm["model"]) == {"chat"}
    prompts = sum(u["prompt_tokens"] for u in usage)
    generated = sum(u["completion_tokens"] for u in usage)
    assert generated == sum(5 + 3 * i for i in range(N_LM))
    # each admitted sequence gets its first token from its prefill step, every later one from a decode row
    assert lm["prefill_seqs"].sum() == N_LM
    assert lm["prefill_tokens"].sum() == prompts
    assert lm["decode_seqs"].sum() == generated - N_LM
    assert (lm["batch_size"] == lm["prefill_seqs"] + lm["decode_seqs"]).all()
    assert lm["batch_size"].max() <= MAX_SEQS and lm["batch_size"].min() >= 1
    assert (lm["kv_blocks_total"] == MAX_SEQS * TINY_LM.max_seq_len).all() and (lm["block_size"] == 1).all()
    assert (lm["kv_blocks_used"] == lm["context_tokens"] + lm["prefill_tokens"]).all()
    assert (lm["duration_s"] > 0).all() and lm["time_s"].is_monotonic_increasing
    # a step starts after the previous one of the same engine ended
    t = lm["time_s"].to_numpy()
    assert np.all(t[1:] >= t[:-1] + lm["duration_s"].to_numpy()[:-1] - 1e-6)

    fixed = steps[steps["kind"] == "fixed"]
    assert set(fixed["replica"]) == {"digits-0"}
    assert fixed["batch_size"].sum() == len(rows) and fixed["input_rows"].sum() == sum(rows)
    assert fixed["input_rows"].max() <= 8  # max_batch_size rows
    assert (fixed[["prefill_tokens", "decode_seqs", "context_tokens", "kv_blocks_used"]] == 0).all().all()


def test_a_step_file_cut_mid_line_keeps_its_whole_rows_and_a_bad_one_names_its_line(tmp_path):
    header = '# {"model": "chat", "replica": "chat-0", "kind": "llm", "kv_blocks_total": 512, "block_size": 1}\n'
    row = "100.000000,0.010000,2,5,1,25,1,7,12,0,0,0\n"
    (tmp_path / "chat-0.csv").write_text(header + row + row + "100.5,0.0")  # the writer died mid-line
    steps = read_spools(tmp_path, t0=99.0)
    assert len(steps) == 2 and steps["time_s"].tolist() == [1.0, 1.0] and steps["prefill_tokens"].sum() == 10
    (tmp_path / "chat-0.csv").write_text(header + "1.0,0.1,2\n" + row)
    with pytest.raises(SpoolError, match=r"chat-0.csv, line 2: 3 fields, expected 12"):
        read_spools(tmp_path)
