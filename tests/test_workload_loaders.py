"""Trace loaders: the real public traces the repository carries (traces/) and synthetic good/bad files."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from odhsim.errors import TraceError
from odhsim.workload.loaders import MOONCAKE_BLOCK_TOKENS, open_trace, summarize, trace_info
from odhsim.workload.schema import NO_SESSION, PRIORITY_CLASSES, RequestBatch, concat
from tests.conftest import DATA_DIR, data_file

TRACES = DATA_DIR
CONV = TRACES / "azure_llm_2023" / "AzureLLMInferenceTrace_conv.csv"
CODE = TRACES / "azure_llm_2023" / "AzureLLMInferenceTrace_code.csv"
WEEK = TRACES / "azure_llm_2024" / "AzureLLMInferenceTrace_1week_rows_from_notebook.csv"
MOONCAKE = TRACES / "mooncake" / "conversation_trace.jsonl"
COLUMNS = ("arrival_s", "prompt_tokens", "output_tokens", "model", "priority", "tenant", "session")


def need(path: Path) -> Path:
    return data_file(*path.relative_to(DATA_DIR).parts)  # fails, never skips, when a committed trace is missing


def load(path: Path, **kw: object) -> RequestBatch:
    return concat(open_trace(path, **kw).batches())  # type: ignore[arg-type]


def same(a: RequestBatch, b: RequestBatch) -> bool:
    cols = (*COLUMNS, "block_offsets", "block_ids")
    return all(np.array_equal(getattr(a, c), getattr(b, c)) for c in cols)


# --- real traces ------------------------------------------------------------------------------------------------
def test_azure_2023_conv() -> None:
    reader = open_trace(need(CONV))
    assert reader.format == "azure2023"
    b = concat(reader.batches())
    assert len(b) == 19_366 and reader.stats.rows == 19_366 and reader.skipped == 0
    assert b.arrival_s[0] == 0.0 and np.all(np.diff(b.arrival_s) >= 0)
    assert b.arrival_s[-1] == pytest.approx(3501.721937, abs=1e-6)  # ~58 min, to the microsecond
    assert b.arrival_s[1] == pytest.approx(4.314579, abs=1e-9)  # 18:15:46.6805900 -> 18:15:50.9951690
    assert int(np.median(b.prompt_tokens)) == 1020 and b.prompt_tokens.max() == 14_050
    assert int(np.median(b.output_tokens)) == 129 and b.output_tokens.max() == 1000
    assert not b.has_blocks


def test_azure_2023_code_and_info() -> None:
    info = trace_info(need(CODE))
    assert info["requests"] == 8_819 and info["format"] == "azure2023"
    assert 56 * 60 < info["span_s"] < 58 * 60
    assert info["prompt_tokens"]["p50"] == 1469 and info["prompt_tokens"]["max"] == 7437
    assert info["output_tokens"]["p50"] == 13
    assert info["rate_rps"] == pytest.approx(8_819 / info["span_s"])
    assert info["has_prefix_blocks"] is False and info["prefix_reuse_fraction"] is None


def test_mooncake_conversation() -> None:
    reader = open_trace(need(MOONCAKE))
    assert reader.format == "mooncake" and reader.block_tokens == MOONCAKE_BLOCK_TOKENS == 512
    b = concat(reader.batches())
    assert len(b) == 12_031 and b.arrival_s[0] == 0.0
    assert b.arrival_s[-1] == pytest.approx(3536.999)
    assert b.prompt_tokens.mean() == pytest.approx(12_035, abs=1)
    assert b.output_tokens.mean() == pytest.approx(343, abs=1)
    assert b.has_blocks and list(b.blocks_of(0)) == list(range(14))
    assert list(b.blocks_of(1)[:2]) == [0, 14]
    info = summarize([b])
    assert info["prefix_reuse_fraction"] == pytest.approx(0.366, abs=0.001)


def test_mooncake_info_reports_reuse() -> None:
    info = trace_info(need(MOONCAKE), chunk_rows=1000)  # reuse is counted across chunk boundaries
    assert info["requests"] == 12_031 and info["block_tokens"] == 512
    assert info["prefix_reuse_fraction"] == pytest.approx(0.366, abs=0.001)
    assert info["prompt_tokens"]["mean"] == pytest.approx(12_035, abs=1)


@pytest.mark.parametrize("path", [CONV, MOONCAKE])
def test_chunking_does_not_change_the_result(path: Path) -> None:
    small, big = load(need(path), chunk_rows=7), load(path, chunk_rows=100_000)
    assert same(small, big)
    assert len(list(open_trace(path, chunk_rows=5000).batches())) == -(-len(big) // 5000)


def test_reader_is_reiterable() -> None:
    reader = open_trace(need(CODE), chunk_rows=3000)
    assert same(concat(reader.batches()), concat(reader.batches()))
    assert reader.stats.rows == 8_819


def test_interleaved_passes_are_independent(tmp_path: Path) -> None:
    reader = open_trace(write(tmp_path, "i.csv", HEAD + "".join(ROW)), chunk_rows=1)
    a, b = reader.batches(), reader.batches()
    first_a, first_b = next(a), next(b)
    assert same(concat([first_a, *a]), concat([first_b, *b]))


def test_azure_2024_sample_needs_a_trace_filter() -> None:
    path = need(WEEK)
    assert open_trace(path).format == "azure2024"
    with pytest.raises(TraceError, match=r"line 12: .*mixes traces.*trace_filter"):
        load(path)
    code = load(path, trace_filter="code_1week", chunk_rows=3)
    assert len(code) == 10
    assert code.arrival_s[:3] == pytest.approx([0.0, 0.007405, 0.012384], abs=1e-9)
    assert code.arrival_s[-1] == pytest.approx(7 * 86400 - 0.009930 - 0.070499, abs=1e-9)
    conv = load(path, trace_filter="conv_1week")
    assert len(conv) == 6 and conv.arrival_s[1] == pytest.approx(0.04052, abs=1e-9)
    with pytest.raises(TraceError, match="no rows with trace == 'nope'"):
        load(path, trace_filter="nope")


# --- synthetic files ----------------------------------------------------------------------------------------------
HEAD = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
ROW = ["2023-11-16 18:15:46.6805900,374,44\n", "2023-11-16 18:15:46.6806900,396,109\n", "2023-11-16 18:15:47,1,2\n"]


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_azure_precision_and_timezones(tmp_path: Path) -> None:
    b = load(write(tmp_path, "a.csv", HEAD + "".join(ROW)))
    assert b.arrival_s[1] == pytest.approx(1e-4, abs=1e-12)  # 7th fractional digit kept
    assert b.arrival_s[2] == pytest.approx(0.31941, abs=1e-12)  # a timestamp without a fraction
    week = "x,TIMESTAMP,ContextTokens,GeneratedTokens\n1,2024-05-10 00:00:00+00:00,5,6\n"
    week += "2,2024-05-10 00:00:00.009930+00:00,7,8\n"
    r = open_trace(write(tmp_path, "w.csv", week))
    assert r.format == "azure2024"
    assert concat(r.batches()).arrival_s.tolist() == pytest.approx([0.0, 0.00993])


def test_zero_tokens_are_clamped_and_counted(tmp_path: Path) -> None:
    r = open_trace(write(tmp_path, "z.csv", HEAD + ROW[0] + "2023-11-16 18:15:47,0,0\n2023-11-16 18:15:48,5,0\n"))
    b = concat(r.batches())
    assert b.prompt_tokens.tolist() == [374, 1, 5] and b.output_tokens.tolist() == [44, 1, 1]
    assert r.stats.clamped == 2 and r.skipped == 0


BAD_CSV = {
    "letters": (HEAD + ROW[0] + ROW[1] + "2023-11-16 18:15:48,12,abc\n", 4, "GeneratedTokens 'abc' is not an integer"),
    "negative": (HEAD + ROW[0] + "2023-11-16 18:15:48,-5,3\n" + ROW[2], 3, "ContextTokens -5 is negative"),
    "fraction": (HEAD + ROW[0] + "2023-11-16 18:15:48,5.5,3\n", 3, "ContextTokens 5.5 is not an integer"),
    "timestamp": (HEAD + ROW[0] + "yesterday,5,3\n" + ROW[1], 3, "TIMESTAMP 'yesterday' is not a timestamp"),
    "short_row": (HEAD + ROW[0] + "\n" + "2023-11-16 18:15:48,5\n", 4, "GeneratedTokens is missing"),
    "long_row": (HEAD + ROW[0] + ROW[1] + ROW[2] + "2023-11-16 18:15:48,5,3,9\n", 5, "Expected 3 fields"),
}


@pytest.mark.parametrize("case", sorted(BAD_CSV))
def test_malformed_csv_names_file_and_line(tmp_path: Path, case: str) -> None:
    text, line, message = BAD_CSV[case]
    path = write(tmp_path, f"{case}.csv", text)
    with pytest.raises(TraceError) as err:
        load(path, chunk_rows=2)
    assert f"{case}.csv line {line}: " in str(err.value) and message in str(err.value)
    r = open_trace(path, on_error="skip", chunk_rows=2)
    b = concat(r.batches())
    assert r.skipped == 1 and r.skipped_lines == [line]
    assert len(b) == text.count("\n") - 1 - text.count("\n\n") - 1


def test_skip_mode_counts_every_bad_row(tmp_path: Path) -> None:
    rows = [f"2023-11-16 18:15:{i:02d},{'x' if i % 3 == 0 else i},{i + 1}\n" for i in range(1, 40)]
    r = open_trace(write(tmp_path, "many.csv", HEAD + "".join(rows)), on_error="skip", chunk_rows=4)
    b = concat(r.batches())
    assert r.skipped == 13 and len(b) == 26
    assert r.skipped_lines == [4, 7, 10, 13, 16, 19, 22, 25, 28, 31]  # first ten, 1-based lines
    assert trace_info(r.path, on_error="skip")["skipped"] == 13


@pytest.mark.parametrize("chunk_rows", [1, 2, 3, 100])
def test_line_numbers_survive_blank_and_dropped_lines(tmp_path: Path, chunk_rows: int) -> None:
    rows = ["1,1,1", "", "2,1,1,1", "3,x,1", "", "4,1,1,5", "5,1,-1", "6,1,1"]  # blank lines 3 and 6 are ignored
    text = HEAD + "".join(f"2023-11-16 18:15:4{r}\n" if r else "\n" for r in rows)
    r = open_trace(write(tmp_path, "mix.csv", text), on_error="skip", chunk_rows=chunk_rows)
    b = concat(r.batches())
    assert len(b) == 2 and b.arrival_s.tolist() == [0.0, 5.0]
    assert r.skipped == 4 and r.skipped_lines == [4, 5, 7, 8]


def test_missing_columns_are_named(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match=r"m\.csv line 1: missing column\(s\) \['GeneratedTokens'\]"):
        load(write(tmp_path, "m.csv", "TIMESTAMP,ContextTokens\n2023-11-16 18:15:46,3\n"))
    with pytest.raises(TraceError, match="cannot detect the trace format"):
        open_trace(write(tmp_path, "u.csv", "a,b\n1,2\n"))
    with pytest.raises(TraceError, match="trace file not found"):
        open_trace(tmp_path / "absent.csv")


def test_unsorted_trace_raises_even_when_skipping(tmp_path: Path) -> None:
    path = write(tmp_path, "o.csv", HEAD + ROW[1] + ROW[2] + ROW[0])
    for mode in ("raise", "skip"):
        with pytest.raises(TraceError, match=r"o\.csv line 4: arrival time is earlier than line 3"):
            load(path, on_error=mode, chunk_rows=2)


MOON = '{"timestamp": %d, "input_length": 10, "output_length": 5, "hash_ids": [1, 2]}\n'
BAD_JSON = {
    "syntax": ('{"timestamp": 5, "input_length": 10,\n', "invalid JSON"),
    "missing": ('{"timestamp": 5, "input_length": 10, "hash_ids": []}\n', "missing key(s) ['output_length']"),
    "text": ('{"timestamp": 5, "input_length": "ten", "output_length": 1}\n', "input_length 'ten' is not an integer"),
    "negative": ('{"timestamp": 5, "input_length": 3, "output_length": -1}\n', "output_length -1 is negative"),
    "hashes": ('{"timestamp": 5, "input_length": 3, "output_length": 1, "hash_ids": "ab"}\n', "hash_ids must be"),
    "timestamp": ('{"timestamp": "noon", "input_length": 3, "output_length": 1}\n', "timestamp 'noon' is not a number"),
}


@pytest.mark.parametrize("case", sorted(BAD_JSON))
def test_malformed_jsonl_names_file_and_line(tmp_path: Path, case: str) -> None:
    bad, message = BAD_JSON[case]
    path = write(tmp_path, f"{case}.jsonl", MOON % 0 + "\n" + bad + MOON % 7)  # blank line 2 is ignored
    with pytest.raises(TraceError) as err:
        load(path)
    assert f"{case}.jsonl line 3: " in str(err.value) and message in str(err.value)
    r = open_trace(path, on_error="skip", chunk_rows=1)
    b = concat(r.batches())
    assert len(b) == 2 and r.skipped == 1 and r.skipped_lines == [3]
    assert b.arrival_s.tolist() == [0.0, 0.007] and b.block_offsets.tolist() == [0, 2, 4]


def test_gzip_and_optional_hash_ids(tmp_path: Path) -> None:
    p = tmp_path / "t.jsonl.gz"
    with gzip.open(p, "wt") as f:
        f.write('{"timestamp": 1000, "input_length": 10, "output_length": 5}\n' + MOON % 1500)
    b = load(p)
    assert b.arrival_s.tolist() == [0.0, 0.5] and b.block_offsets.tolist() == [0, 0, 2]


def test_plain_csv_with_attribute_columns(tmp_path: Path) -> None:
    text = (
        "arrival_s,prompt_tokens,output_tokens,model,priority,tenant,session\n"
        "10.5,100,20,big,critical,b,7\n11.0,50,5,small,low,a,\n11.0,60,6,big,normal,a,7\n"
    )
    path = write(tmp_path, "plain.csv", text)
    r = open_trace(path, model_names=["small", "big"], tenant_names=["a", "b"])
    assert r.format == "csv" and r.provides == {"model", "priority", "tenant", "session"}
    b = concat(r.batches())
    assert b.arrival_s.tolist() == [0.0, 0.5, 0.5]
    assert b.model.tolist() == [1, 0, 1] and b.tenant.tolist() == [1, 0, 0]
    assert b.priority.tolist() == [PRIORITY_CLASSES.index(p) for p in ("critical", "low", "normal")]
    assert b.session.tolist() == [7, NO_SESSION, 7]
    with pytest.raises(TraceError, match=r"plain\.csv line 2: tenant 'b' is not one of \['a'\]"):
        load(path, model_names=["small", "big"], tenant_names=["a"])
    assert "tenant" not in open_trace(path).provides  # no names given: the column is ignored


def test_summarize_percentiles() -> None:
    b = RequestBatch.from_columns(np.arange(100.0), np.arange(1, 101), np.full(100, 3))
    info = summarize([b.take(np.arange(50)), b.take(np.arange(50, 100))])
    assert info["requests"] == 100 and info["span_s"] == 99.0
    assert info["prompt_tokens"] == {"p50": 50.0, "p90": 90.0, "p99": 99.0, "max": 100.0, "mean": 50.5}
    assert info["output_tokens"]["p99"] == 3.0
