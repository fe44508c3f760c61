"""Trace input validation: token counts are bounded per row (a 1e12-token row used to size the summary's
histogram and die of MemoryError), header-only files are refused at open, and bad values print as values."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from odhsim.cli import app
from odhsim.errors import TraceError
from odhsim.workload.loaders import open_trace, trace_info
from odhsim.workload.schema import concat

runner = CliRunner()
PLAIN = "arrival_s,prompt_tokens,output_tokens\n"
AZURE = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("name", "text", "line", "message"),
    [
        ("p.csv", PLAIN + "0,10,5\n1,1000000000000,5\n2,7,2\n", 3,
         "prompt_tokens 1000000000000 exceeds the maximum of 10,000,000"),
        ("f.csv", PLAIN + "0,10,5\n1,7,1e12\n2,7,2\n", 3,
         "output_tokens 1000000000000 exceeds the maximum of 10,000,000"),
        ("a.csv", AZURE + "2023-11-16 18:15:46,10,5\n2023-11-16 18:15:47,10000001,5\n", 3,
         "ContextTokens 10000001 exceeds the maximum of 10,000,000"),
        ("m.jsonl", '{"timestamp": 0, "input_length": 10, "output_length": 5}\n'
         '{"timestamp": 1, "input_length": 1e12, "output_length": 5}\n', 2,
         "input_length 1000000000000 exceeds the maximum of 10,000,000"),
    ],
)  # fmt: skip
def test_huge_token_counts_are_refused_with_the_line(
    tmp_path: Path, name: str, text: str, line: int, message: str
) -> None:
    path = write(tmp_path, name, text)
    with pytest.raises(TraceError) as err:
        trace_info(path)
    assert str(err.value) == f"{path} line {line}: {message}"
    info = trace_info(path, on_error="skip")
    assert info["skipped"] == 1 and info["skipped_lines"] == [line]
    assert info["prompt_tokens"]["max"] <= 10 and info["output_tokens"]["max"] <= 5
    edge = write(tmp_path, "edge.csv", PLAIN + "0,10000000,1\n1,5,10000000\n")  # the limit itself is accepted
    b = concat(open_trace(edge).batches())
    assert b.prompt_tokens.tolist() == [10_000_000, 5] and b.output_tokens.tolist() == [1, 10_000_000]


def test_traces_info_skip_bad_rows_on_a_1e12_row_stays_small(tmp_path: Path) -> None:
    """The CLI command from the issue, in a child process capped at 4 GiB of address space: before the bound, the
    token histogram (np.bincount up to 1e12) asked for terabytes and died of MemoryError."""
    path = write(tmp_path, "big.csv", PLAIN + "0,10,5\n1,1000000000000,5\n2,7,2\n")
    code = (
        "import resource, sys\n"
        f"resource.setrlimit(resource.RLIMIT_AS, ({4 * 2**30}, {4 * 2**30}))\n"
        "from odhsim.cli import app\n"
        f"sys.argv = ['odhsim', 'traces', 'info', {str(path)!r}, '--skip-bad-rows']\n"
        "app()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "MemoryError" not in done.stderr
    assert "skipped" in done.stdout and "3" in done.stdout


def test_header_only_traces_are_refused_at_open(tmp_path: Path) -> None:
    for name, text in (("h.csv", PLAIN), ("b.csv", PLAIN + "\n\n"), ("z.csv", AZURE)):
        with pytest.raises(TraceError, match="no requests: the file has no data rows after its header"):
            open_trace(write(tmp_path, name, text))
    with pytest.raises(TraceError, match=r"e\.jsonl: no requests: the file has no data rows$"):
        open_trace(write(tmp_path, "e.jsonl", "\n"))
    result = runner.invoke(app, ["traces", "info", str(tmp_path / "h.csv")])
    assert result.exit_code == 2 and "no data rows" in result.output


def test_missing_columns_are_reported_at_open_without_reading_rows(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match=r"c\.csv line 1: missing column\(s\) \['output_tokens'\]"):
        open_trace(write(tmp_path, "c.csv", "arrival_s,prompt_tokens\n0,1\n"))


@pytest.mark.parametrize("cell", ["nan", "NaN", "inf", "-inf"])
def test_non_finite_arrival_prints_the_value_not_a_numpy_repr(tmp_path: Path, cell: str) -> None:
    path = write(tmp_path, "n.csv", PLAIN + f"0,10,5\n{cell},4,4\n")
    with pytest.raises(TraceError) as err:
        trace_info(path)
    msg = str(err.value)
    assert "np.float64" not in msg
    assert msg == f"{path} line 3: arrival_s {float(cell)} is not a finite number"
