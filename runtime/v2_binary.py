"""Triton's binary-tensor extension to the Open Inference Protocol v2, shared by the gateway and the replicas.

A binary request's body is a JSON header of `Inference-Header-Content-Length` bytes followed by the raw tensors,
in input order; an input sent that way carries `parameters.binary_data_size` instead of `data`. `tritonclient`
sends inputs this way by default, so a KServe v2 endpoint that only reads JSON refuses its requests.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

# little-endian numpy dtypes of the v2 datatypes that have a fixed width (BYTES is length-prefixed)
FIXED_WIDTH: dict[str, str] = {
    "BOOL": "?",
    "INT8": "<i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "UINT8": "<u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}


class BinaryBodyError(ValueError):
    """The binary part of a v2 body does not match its JSON header."""


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """(JSON header, binary blob) of a v2 body; the blob is empty without the extension's header."""
    if header_length is None:
        return body, b""
    try:
        n = int(header_length)
    except ValueError:
        raise BinaryBodyError("Inference-Header-Content-Length is not an integer") from None
    if not 0 < n <= len(body):
        raise BinaryBodyError(f"Inference-Header-Content-Length {n} is outside the body of {len(body)} bytes")
    return body[:n], body[n:]


def binary_slices(inputs: list[tuple[str, Any]], blob: bytes) -> dict[str, bytes]:
    """Each binary input's raw bytes by name, from (name, binary_data_size or None) in input order."""
    raw: dict[str, bytes] = {}
    offset = 0
    for name, size in inputs:
        if size is None:
            continue
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(blob):
            raise BinaryBodyError(f"input {name!r}: binary_data_size {size!r} does not fit the binary body")
        raw[name] = blob[offset : offset + size]
        offset += size
    if offset != len(blob):
        raise BinaryBodyError(f"{len(blob) - offset} bytes of binary body belong to no input")
    return raw


def decode_bytes_tensor(raw: bytes) -> list[str]:
    """Triton's BYTES serialisation: each element a 4-byte little-endian length, then its bytes."""
    out, i = [], 0
    while i < len(raw):
        if i + 4 > len(raw):
            raise BinaryBodyError("BYTES tensor: a length prefix is cut short")
        (n,) = struct.unpack_from("<I", raw, i)
        if i + 4 + n > len(raw):
            raise BinaryBodyError("BYTES tensor: an element runs past the end of its data")
        try:  # strict, as a JSON body is: invalid bytes would reach the model silently replaced
            out.append(raw[i + 4 : i + 4 + n].decode("utf-8"))
        except UnicodeDecodeError:
            raise BinaryBodyError(f"BYTES tensor: element {len(out)} is not valid UTF-8") from None
        i += 4 + n
    return out


def inline_binary_inputs(doc: dict[str, Any], blob: bytes) -> dict[str, Any]:
    """The same request as plain JSON: each binary input's bytes decoded into a flat `data` list by its
    datatype, its `binary_data_size` dropped. What is left is checked like any JSON request."""
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not all(isinstance(t, dict) for t in inputs):
        if blob:
            raise BinaryBodyError("a binary body needs a JSON header with a list of inputs")
        return doc
    sizes = [(str(t.get("name")), (t.get("parameters") or {}).get("binary_data_size")) for t in inputs]
    raw = binary_slices(sizes, blob)
    out = []
    for t in inputs:
        name = str(t.get("name"))
        if name not in raw:
            out.append(t)
            continue
        datatype = t.get("datatype")
        if datatype == "BYTES":
            data: list[Any] = decode_bytes_tensor(raw[name])
        elif datatype in FIXED_WIDTH:
            width = np.dtype(FIXED_WIDTH[datatype]).itemsize
            if len(raw[name]) % width:
                raise BinaryBodyError(f"input {name!r}: {len(raw[name])} bytes is not a whole number of {datatype}")
            data = np.frombuffer(raw[name], dtype=FIXED_WIDTH[datatype]).tolist()
        else:
            raise BinaryBodyError(f"input {name!r}: unknown datatype {datatype!r}")
        params = {k: v for k, v in (t.get("parameters") or {}).items() if k != "binary_data_size"}
        entry = {k: v for k, v in t.items() if k != "parameters"}
        entry["data"] = data
        if params:
            entry["parameters"] = params
        out.append(entry)
    return {**doc, "inputs": out}
