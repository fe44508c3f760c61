"""The replica HTTP API: in-process (ASGI) for validation and error shapes, real processes for the official clients
(`openai`, `tritonclient.http`), cross-process determinism, readiness, and a clean SIGTERM exit."""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from runtime.processes import ReplicaProcess, ReplicaStartError
from runtime.replica.app import ClientGone, _sse, _until_disconnect
from runtime.replica.config import ReplicaConfig
from runtime.tokenizer import count_tokens
from tests.runtime.replica_helpers import (
    TINY_CNN,
    TINY_LM,
    TINY_MLP,
    app_client,
    fixed_config,
    lm_config,
    running_replicas,
)

HEADER = "x-odhsim-replica"


def metrics_of(text: str) -> dict[str, float]:
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}


def v2_input(shape, data, datatype="FP32", name="INPUT__0"):
    return {"inputs": [{"name": name, "datatype": datatype, "shape": shape, "data": data}]}


# -- in-process ------------------------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_v2_fixed_model_answers_and_rejects_bad_input():
    async def main():
        async with app_client(fixed_config("digits", TINY_MLP)) as c:
            meta = (await c.get("/v2/models/digits")).json()
            assert meta["versions"] == ["v1"] and meta["inputs"] == [
                {"name": "INPUT__0", "datatype": "FP32", "shape": [-1, 8]}
            ]
            assert {o["name"]: o["shape"] for o in meta["outputs"]} == {"probabilities": [-1, 4], "label": [-1]}
            assert (await c.get("/v2/models/digits/ready")).status_code == 200

            nested = [[float(i + j) / 10 for j in range(8)] for i in range(3)]
            r = await c.post("/v2/models/digits/infer", json={"id": "req-7", **v2_input([3, 8], nested)})
            assert r.status_code == 200 and r.headers[HEADER] == "test-replica"
            body = r.json()
            assert (body["id"], body["model_name"], body["model_version"]) == ("req-7", "digits", "v1")
            out = {o["name"]: o for o in body["outputs"]}
            probs = np.array(out["probabilities"]["data"]).reshape(out["probabilities"]["shape"])
            assert probs.shape == (3, 4) and np.allclose(probs.sum(1), 1.0, atol=1e-6)
            assert out["label"]["data"] == probs.argmax(1).tolist() and out["label"]["datatype"] == "INT64"
            flat = await c.post("/v2/models/digits/infer", json=v2_input([3, 8], [v for row in nested for v in row]))
            assert flat.json()["outputs"][0]["data"] == out["probabilities"]["data"]
            only = await c.post(
                "/v2/models/digits/infer", json={**v2_input([1, 8], [0.0] * 8), "outputs": [{"name": "label"}]}
            )
            assert [o["name"] for o in only.json()["outputs"]] == ["label"]

            bad = {
                "shape": v2_input([2, 7], [0.0] * 14),
                "rank": v2_input([8], [0.0] * 8),
                "count": v2_input([2, 8], [0.0] * 15),
                "datatype": v2_input([1, 8], [0] * 8, datatype="INT32"),
                "name": v2_input([1, 8], [0.0] * 8, name="x"),
                "strings": v2_input([1, 8], ["a"] * 8),
                "no inputs": {"inputs": []},
                "output": {**v2_input([1, 8], [0.0] * 8), "outputs": [{"name": "logits"}]},
            }
            for what, payload in bad.items():
                r = await c.post("/v2/models/digits/infer", json=payload)
                assert r.status_code == 400, what
                assert isinstance(r.json()["error"], str) and r.headers[HEADER] == "test-replica", what
            r = await c.post("/v2/models/digits/infer", content=b"{not json")
            assert r.status_code == 400 and "JSON" in r.json()["error"]

            for path in ("/v2/models/other", "/v2/models/other/ready"):
                r = await c.get(path)
                assert r.status_code == 404 and "other" in r.json()["error"] and r.headers[HEADER] == "test-replica"
            assert (await c.post("/v2/models/other/infer", json=v2_input([1, 8], [0.0] * 8))).status_code == 404
            r = await c.get("/no/such/route")
            assert r.status_code == 404 and r.json() == {"error": "Not Found"} and HEADER in r.headers
            assert (await c.post("/v1/completions", json={"model": "digits", "prompt": "x"})).status_code == 404

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_classifier_input_that_overflows_fails_alone_and_non_finite_input_is_refused():
    """Rows near float32's limit used to give NaN probabilities, a 500 (JSON cannot hold NaN), and with it retries,
    ejections and an open breaker at the gateway. Now that request alone gets 422 `sequence_failed` with an error
    id, the request batched beside it is answered, and NaN / inf input (binary, or JSON beyond float32) is a 400."""

    async def main():
        async with app_client(fixed_config("digits", TINY_MLP, max_batch_size=8)) as c:
            huge = c.post("/v2/models/digits/infer", json=v2_input([1, 8], [3e38] * 8))
            fine = c.post("/v2/models/digits/infer", json=v2_input([1, 8], [0.5] * 8))
            huge_r, fine_r = await asyncio.gather(huge, fine)
            assert huge_r.status_code == 422 and "error id err-" in huge_r.json()["error"], huge_r.text
            assert fine_r.status_code == 200
            beyond = await c.post(
                "/v2/models/digits/infer",
                content=json.dumps(v2_input([1, 8], [1e39] * 8)).encode(),
                headers={"content-type": "application/json"},
            )
            assert beyond.status_code == 400 and "finite" in beyond.json()["error"]
            blob = np.array([np.nan] * 8, dtype="<f4").tobytes()
            tensor = {"name": "INPUT__0", "datatype": "FP32", "shape": [1, 8]}
            head = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": len(blob)}}]}).encode()
            binary = await c.post(
                "/v2/models/digits/infer",
                content=head + blob,
                headers={"inference-header-content-length": str(len(head))},
            )
            assert binary.status_code == 400 and "finite" in binary.json()["error"]

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_completions_validation_and_errors_in_openai_shape():
    async def main():
        async with app_client(lm_config()) as c:
            ok = await c.post("/v1/completions", json={"model": "chat", "prompt": ["hi"], "max_tokens": 4})
            assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 4
            cases = {
                "temperature": ({"model": "chat", "prompt": "x", "temperature": 5}, 400),
                "prompt": ({"model": "chat", "prompt": ["a", "b"]}, 400),
                "max_tokens": ({"model": "chat", "prompt": "x", "max_tokens": 0}, 400),
                "model": ({"model": "nope", "prompt": "x"}, 404),
            }
            for param, (body, status) in cases.items():
                r = await c.post("/v1/completions", json=body)
                err = r.json()["error"]
                assert r.status_code == status, param
                assert set(err) == {"message", "type", "param", "code"} and err["param"] == param, param
            r = await c.post("/v1/completions", json={"model": "chat", "prompt": "x" * 100, "max_tokens": 50})
            assert r.status_code == 400 and "maximum context length is 128 tokens" in r.json()["error"]["message"]
            r = await c.post("/v1/completions", content=b"[")
            assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
            r = await c.get("/v1/completions")
            assert r.status_code == 405 and "message" in r.json()["error"]

            infer = {**v2_input([1], ["hello"], datatype="BYTES", name="text_input")}
            infer["parameters"] = {"max_tokens": 5, "temperature": 0}
            r = await c.post("/v2/models/chat/infer", json=infer)
            out = r.json()["outputs"][0]
            assert (out["name"], out["datatype"], out["shape"]) == ("text_output", "BYTES", [1])
            assert r.json()["parameters"]["completion_tokens"] == 5
            greedy = await c.post(
                "/v1/completions", json={"model": "chat", "prompt": "hello", "max_tokens": 5, "temperature": 0}
            )
            assert out["data"] == [greedy.json()["choices"][0]["text"]]
            r = await c.post("/v2/models/chat/infer", json=v2_input([1], [1.0], name="text_input"))
            assert r.status_code == 400 and "BYTES" in r.json()["error"]

            text = (await c.get("/metrics")).text
            m = metrics_of(text)
            assert m["vllm:num_requests_waiting"] == 0 and m["vllm:num_requests_running"] == 0
            assert m["vllm:kv_cache_usage_perc"] == 0.0
            assert m["vllm:request_success_total"] == 3
            assert m["vllm:generation_tokens_total"] == 4 + 5 + 5
            assert m["vllm:prompt_tokens_total"] == count_tokens("hi") + 2 * count_tokens("hello")
            assert 'model_name="chat"' in text

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_stream_closed_by_client_cancels_its_sequence():
    async def main():
        async with app_client(lm_config()) as c:
            engine = c.app.state.replica.backend.engine
            from runtime.models.continuous_batching import SamplingParams

            stream = engine.submit([256, 1, 2], SamplingParams(max_tokens=100, ignore_eos=True))
            events = _sse(stream, "cmpl-x", 0, "chat")
            first = await events.__anext__()
            assert json.loads(first.removeprefix("data: "))["choices"][0]["finish_reason"] is None
            await events.aclose()  # what Starlette does when the client disconnects
            result = await stream.result()
            assert result.finish_reason == "abort" and result.completion_tokens < 100
            await asyncio.sleep(0.01)
            assert engine.stats().running == 0

            class Disconnecting:  # a request whose client hangs up after 2 ms (126 decode steps take longer)
                async def receive(self):
                    await asyncio.sleep(0.002)
                    return {"type": "http.disconnect"}

            slow = SamplingParams(max_tokens=126, ignore_eos=True)
            with pytest.raises(ClientGone):
                await _until_disconnect(Disconnecting(), engine.generate([256, 1], slow))
            await asyncio.sleep(0.01)
            assert engine.stats().running == 0
            assert engine.stats().request_success_total == 0  # neither request completed

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_not_ready_while_the_model_cannot_load(tmp_path):
    broken = lm_config(lm=TINY_LM.model_copy(update={"weights": "absent.pt"}), base_dir=tmp_path)

    async def main():
        async with app_client(broken, wait_ready=False) as c:
            await asyncio.sleep(0.3)
            assert (await c.get("/v2/health/live")).json() == {"live": True}
            r = await c.get("/v2/health/ready")
            assert (r.status_code, r.json()) == (503, {"ready": False})
            assert (await c.get("/v2/models/chat/ready")).status_code == 503
            r = await c.post("/v1/completions", json={"model": "chat", "prompt": "x"})
            assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"
            assert "absent.pt" in str(c.app.state.replica.load_error)

    asyncio.run(main())


# -- real processes --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def replicas():
    with running_replicas(
        ("chat-a", lm_config()),
        ("chat-b", lm_config()),
        ("digits", fixed_config("digits", TINY_MLP)),
        ("images", fixed_config("images", TINY_CNN)),
        timeout_s=45.0,  # inside the first test's 60 s timeout
    ) as procs:
        yield procs


@pytest.mark.timeout(60)
def test_openai_client_completions_and_streaming(replicas):
    import openai

    rp = replicas["chat-a"]
    client = openai.OpenAI(base_url=rp.url + "/v1", api_key="x", max_retries=0, timeout=10)
    done = client.completions.create(model="chat", prompt="Hello", max_tokens=7, temperature=0)
    assert done.object == "text_completion" and done.choices[0].finish_reason == "length"
    assert (done.usage.prompt_tokens, done.usage.completion_tokens, done.usage.total_tokens) == (6, 7, 13)

    chunks = list(client.completions.create(model="chat", prompt="Hello", max_tokens=7, temperature=0, stream=True))
    assert len(chunks) == 7  # one per token
    assert "".join(c.choices[0].text for c in chunks) == done.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks] == [None] * 6 + ["length"]
    assert chunks[-1].usage.completion_tokens == 7

    raw = client.completions.with_raw_response.create(model="chat", prompt="x", max_tokens=1)
    assert raw.headers[HEADER] == "chat-a"
    with pytest.raises(openai.BadRequestError, match="maximum context length is 128"):
        client.completions.create(model="chat", prompt="x" * 120, max_tokens=20)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt="x", max_tokens=1)


@pytest.mark.timeout(60)
def test_greedy_and_seeded_answers_are_identical_across_processes(replicas):
    a, b = replicas["chat-a"].url, replicas["chat-b"].url
    bodies = [
        {"model": "chat", "prompt": "determinism", "max_tokens": 24, "temperature": 0, "ignore_eos": True},
        {"model": "chat", "prompt": "determinism", "max_tokens": 24, "temperature": 0.8, "seed": 42, "top_p": 0.95},
    ]
    for body in bodies:
        ra = httpx.post(f"{a}/v1/completions", json=body, timeout=10).json()
        rb = httpx.post(f"{b}/v1/completions", json=body, timeout=10).json()
        assert ra["choices"] == rb["choices"] and ra["usage"] == rb["usage"]
    unseeded = {**bodies[1], "seed": None, "max_tokens": 40, "ignore_eos": True}
    outs = {httpx.post(f"{a}/v1/completions", json=unseeded, timeout=10).json()["choices"][0]["text"] for _ in range(3)}
    assert len(outs) > 1  # without a seed, sampling varies


@pytest.mark.timeout(60)
def test_tritonclient_infer_on_mlp_and_cnn(replicas):
    import tritonclient.http as triton

    for name, spec, shape in (
        ("digits", TINY_MLP, (5, TINY_MLP.input_dim)),
        ("images", TINY_CNN, (2, TINY_CNN.channels, TINY_CNN.height, TINY_CNN.width)),
    ):
        url = replicas[name].url.removeprefix("http://")
        client = triton.InferenceServerClient(url=url)
        try:
            assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(name)
            meta = client.get_model_metadata(name)
            assert meta["inputs"][0]["shape"] == [-1, *shape[1:]]
            x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
            answers = []
            for binary in (False, True):
                inp = triton.InferInput("INPUT__0", list(shape), "FP32")
                inp.set_data_from_numpy(x, binary_data=binary)
                res = client.infer(name, [inp], request_id="r1")
                probs, labels = res.as_numpy("probabilities"), res.as_numpy("label")
                assert probs.shape == (shape[0], spec.classes) and np.allclose(probs.sum(1), 1.0, atol=1e-5)
                assert labels.tolist() == probs.argmax(1).tolist()
                assert res.get_response()["id"] == "r1"
                answers.append(probs)
            assert np.array_equal(answers[0], answers[1])
            bad = triton.InferInput("INPUT__0", [1, 3], "FP32")
            bad.set_data_from_numpy(np.zeros((1, 3), np.float32), binary_data=False)
            with pytest.raises(triton.InferenceServerException, match="shape"):
                client.infer(name, [bad])
        finally:
            client.close()
    m = metrics_of(httpx.get(replicas["digits"].url + "/metrics", timeout=5).text)
    assert m["vllm:request_success_total"] >= 2 and m["vllm:kv_cache_usage_perc"] == 0.0


@pytest.mark.timeout(60)
def test_metrics_of_a_real_replica(replicas):
    url = replicas["chat-b"].url
    before = metrics_of(httpx.get(url + "/metrics", timeout=5).text)
    httpx.post(f"{url}/v1/completions", json={"model": "chat", "prompt": "abc", "max_tokens": 3}, timeout=10)
    r = httpx.get(url + "/metrics", timeout=5)
    assert r.headers["content-type"].startswith("text/plain") and r.headers[HEADER] == "chat-b"
    after = metrics_of(r.text)
    assert after["vllm:prompt_tokens_total"] - before["vllm:prompt_tokens_total"] == 4
    assert after["vllm:generation_tokens_total"] - before["vllm:generation_tokens_total"] == 3
    assert after["vllm:request_success_total"] - before["vllm:request_success_total"] == 1
    assert after["vllm:num_requests_running"] == 0 and 0.0 <= after["vllm:kv_cache_usage_perc"] <= 1.0


@pytest.mark.timeout(60)
def test_sigterm_exits_cleanly_and_a_failed_load_exits_1(tmp_path):
    broken = ReplicaConfig.model_validate(
        {**lm_config().model_dump(), "spec": {"lm": {**TINY_LM.model_dump(), "weights": "gone.pt"}}}
    )
    ok = ReplicaProcess.start(fixed_config("digits", TINY_MLP), name="term", device="cpu")
    bad = ReplicaProcess.start(broken.model_copy(update={"base_dir": str(tmp_path)}), name="bad", device="cpu")
    try:
        ok.wait_ready(45)
        assert ok.alive()
        assert ok.terminate(grace_s=10) == 0  # SIGTERM; a SIGKILL after the grace would read -9
        assert "Traceback" not in ok.log_tail(200)
        with pytest.raises(ReplicaStartError, match=r"(?s)exited with code 1.*gone\.pt"):
            bad.wait_ready(45)
    finally:
        ok.terminate(grace_s=2)
        bad.kill()
    assert not ok.alive() and not bad.alive()


# -- config ----------------------------------------------------------------------------------------------------


def test_replica_config_from_deployment_and_validation():
    from odhsim.scenario.deployment import ModelDeployment

    lm = TINY_LM.model_dump()
    m = ModelDeployment.model_validate(
        {"name": "chat", "version": "v3", "profile": "llama3.2-1b", "gpu": "L4", "engine": {"max_model_len": 4096},
         "live": {"lm": lm, "max_num_seqs": 8}}
    )  # fmt: skip
    cfg = ReplicaConfig.from_deployment(m, "/scenarios")
    assert (cfg.model, cfg.version, cfg.kind, cfg.base_dir) == ("chat", "v3", "llm", "/scenarios")
    assert cfg.max_model_len == cfg.context_len == 128  # capped at the tiny LM's max_seq_len
    assert ReplicaConfig.model_validate_json(cfg.model_dump_json()) == cfg
    with pytest.raises(ValueError, match="does not match"):
        ReplicaConfig(model="x", kind="fixed", spec={"lm": lm})
    with pytest.raises(ValueError, match="exceeds the LM's max_seq_len 128"):
        ReplicaConfig(model="x", kind="llm", spec={"lm": lm}, max_model_len=129)
    no_live = ModelDeployment.model_validate({"name": "c", "profile": "llama3.2-1b", "gpu": "L4"})
    with pytest.raises(ValueError, match="no `live:` section"):
        ReplicaConfig.from_deployment(no_live)
