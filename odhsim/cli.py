"""The `odhsim` command line: the app, the error wrapper every command runs in, and the registration of the
commands (odhsim/commands/, the importers' and experiments' CLIs) in the order `odhsim --help` lists them."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.markup import escape

from odhsim.commands import analysis, calibrate, explain, fidelity, live, reports
from odhsim.commands import run as run_commands
from odhsim.commands.output import err_console
from odhsim.errors import OdhsimError
from odhsim.experiments.capacity_cli import capacity
from odhsim.experiments.cli import sweep
from odhsim.importers.cli import import_app

app = typer.Typer(add_completion=False, no_args_is_help=True, help="odhsim: simulate and compare ML-serving policies.")
traces_app = typer.Typer(no_args_is_help=True, help="Inspect and download traces.")
profiles_app = typer.Typer(no_args_is_help=True, help="GPU latency profiles.")
app.add_typer(traces_app, name="traces")
app.add_typer(profiles_app, name="profiles")
app.add_typer(import_app, name="import")
app.command("sweep")(sweep)
app.command("capacity")(capacity)

F = TypeVar("F", bound=Callable[..., Any])

# what `pip install -e '.[live]'` adds; a command needing one of them says so instead of printing a traceback
LIVE_EXTRA_MODULES = frozenset({"torch", "fastapi", "uvicorn", "uvloop", "httptools", "prometheus_client", "redis"})


def user_errors(fn: F) -> F:
    """Print an OdhsimError's message (it names the file, line or field) and exit 2, without a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except OdhsimError as err:
            err_console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except ModuleNotFoundError as err:
            if err.name is None or err.name.split(".")[0] not in LIVE_EXTRA_MODULES:
                raise
            err_console.print(
                "[bold red]error:[/] "
                + escape(
                    f"the live runtime needs its extra (missing module {err.name!r}): "
                    "pip install -e '.[live]'  (or `make test`, which installs it)"
                ),
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


for command in (
    run_commands.run,
    run_commands.validate,
    reports.bench,
    analysis.compare,
    analysis.cost,
    live.serve,
    live.replay,
):
    app.command()(user_errors(command))
app.command("bench-live")(user_errors(live.bench_live))
app.command("fidelity")(user_errors(fidelity.fidelity))
app.command("bench-fidelity")(user_errors(fidelity.bench_fidelity))
app.command("calibrate")(user_errors(calibrate.calibrate))
app.command("explain")(user_errors(explain.explain))
app.command("list")(user_errors(reports.list_))
traces_app.command("info")(user_errors(reports.traces_info))
traces_app.command("list")(user_errors(reports.traces_list))
traces_app.command("fetch")(user_errors(reports.traces_fetch))
profiles_app.command("fit")(user_errors(reports.profiles_fit))


def main() -> None:  # pragma: no cover - console entry
    sys.exit(app())
