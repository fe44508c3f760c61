"""Triton's binary-tensor extension, decoded from bodies built by tritonclient itself."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.http as triton

from runtime.v2_binary import BinaryBodyError, inline_binary_inputs, split_body


def _binary_body(*inputs: triton.InferInput) -> tuple[bytes, str]:
    body, json_size = triton.InferenceServerClient.generate_request_body(list(inputs))
    return body, str(json_size)


def test_fp32_int64_and_bytes_inputs_become_the_same_json_data() -> None:
    rows = np.arange(6, dtype=np.float32).reshape(2, 3) / 4
    fp = triton.InferInput("INPUT__0", [2, 3], "FP32")
    fp.set_data_from_numpy(rows)
    ints = triton.InferInput("IDS", [3], "INT64")
    ints.set_data_from_numpy(np.array([-1, 0, 2**40], dtype=np.int64))
    text = triton.InferInput("text_input", [1], "BYTES")
    text.set_data_from_numpy(np.array(["héllo"], dtype=object))
    body, header = _binary_body(fp, ints, text)
    head, blob = split_body(body, header)
    doc = inline_binary_inputs(json.loads(head), blob)
    by_name = {t["name"]: t for t in doc["inputs"]}
    assert by_name["INPUT__0"]["data"] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.25]
    assert by_name["IDS"]["data"] == [-1, 0, 2**40]
    assert by_name["text_input"]["data"] == ["héllo"]
    assert all("binary_data_size" not in (t.get("parameters") or {}) for t in doc["inputs"])


def test_json_inputs_pass_through_and_bad_binary_bodies_are_named() -> None:
    plain = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.5]}]}
    assert inline_binary_inputs(plain, b"") == plain
    fp = triton.InferInput("INPUT__0", [1, 2], "FP32")
    fp.set_data_from_numpy(np.ones((1, 2), dtype=np.float32))
    body, header = _binary_body(fp)
    with pytest.raises(BinaryBodyError, match="outside the body"):
        split_body(body, str(len(body) + 1))
    with pytest.raises(BinaryBodyError, match="not an integer"):
        split_body(body, "ten")
    head, blob = split_body(body, header)
    with pytest.raises(BinaryBodyError, match="does not fit the binary body"):
        inline_binary_inputs(json.loads(head), blob[:-1])
    with pytest.raises(BinaryBodyError, match="belong to no input"):
        inline_binary_inputs(json.loads(head), blob + b"\0")
