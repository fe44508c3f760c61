"""`python -m runtime.replica --model-json JSON --port P [--host H] [--device auto|cpu|cuda] [--replica-name N]`.

Serves one `ReplicaConfig` under uvicorn. SIGTERM (or SIGINT) is uvicorn's graceful shutdown: stop accepting,
let open requests finish (bounded), run the app's shutdown, exit 0. Exit 2: bad arguments or config; exit 1: the
model failed to load (the message is in the log).

With $ODHSIM_REPLICA_SECRET set (`odhsim serve` always sets it) every request must carry that secret
(runtime.replica_secret), or it is answered 401. Started by `runtime.processes.ReplicaProcess`, it never outlives
its parent: with $ODHSIM_PARENT_PID set it asks
Linux for SIGTERM when the parent dies ($ODHSIM_PARENT_DEATHSIG=1, prctl PR_SET_PDEATHSIG), and a daemon thread
checks `os.getppid()` every 0.5 s and sends itself SIGTERM once the parent is gone (the same graceful shutdown).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping
from types import FrameType
from typing import Any

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PARENT_POLL_S = 0.5


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m runtime.replica", description="Serve one model replica over HTTP.")
    p.add_argument("--model-json", required=True, help="ReplicaConfig as JSON")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--replica-name", default=None, help="reported in the x-odhsim-replica header (default: model-port)")
    p.add_argument("--graceful-timeout", type=float, default=10.0, help="seconds open requests get on SIGTERM")
    return p.parse_args(argv)


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def _parent_gone(parent: int) -> bool:
    return os.getppid() != parent


def _watch_parent(parent: int, grace_s: float) -> None:
    """Poll for the parent's death (the process is then re-parented); SIGTERM this process once it is gone, and
    end it outright if the graceful shutdown has not after `grace_s`."""
    while not _parent_gone(parent):
        time.sleep(PARENT_POLL_S)
    print(f"replica: parent process {parent} is gone; shutting down", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(grace_s)
    os._exit(0)


def die_with_parent(environ: Mapping[str, str], grace_s: float) -> None:
    """Exit with the parent named in $ODHSIM_PARENT_PID (see the module doc); nothing without it."""
    value = environ.get("ODHSIM_PARENT_PID", "")
    if not value.isdigit():
        return
    parent = int(value)
    if environ.get("ODHSIM_PARENT_DEATHSIG") == "1" and sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if _parent_gone(parent):  # it died before the request above took effect: no signal will come
        raise SystemExit(0)
    threading.Thread(target=_watch_parent, args=(parent, grace_s), name="parent-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    # SIGTERM while starting exits at once; once serving, uvicorn shuts down gracefully, restores this handler and
    # re-raises SIGTERM into it, so the exit status is 0 rather than -15.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    die_with_parent(os.environ, args.graceful_timeout + 5.0)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("runtime").setLevel(logging.INFO)
    from pydantic import ValidationError

    from runtime.replica.config import ReplicaConfig

    try:
        config = ReplicaConfig.model_validate_json(args.model_json)
    except ValidationError as err:
        print(f"invalid --model-json: {err}", file=sys.stderr)
        return 2

    import uvicorn

    from runtime.replica.app import create_app
    from runtime.replica_secret import SECRET_ENV, ReplicaSecretGuard
    from runtime.transport import uvicorn_options

    failed: list[BaseException] = []
    server: uvicorn.Server | None = None

    def on_fatal(err: BaseException) -> None:
        failed.append(err)
        if server is not None:
            server.should_exit = True

    name = args.replica_name or f"{config.model}-{args.port}"
    app: Any = create_app(config, replica_name=name, device=args.device, on_fatal=on_fatal)
    secret = os.environ.pop(SECRET_ENV, "")  # not inherited by anything this process starts
    if secret:
        app = ReplicaSecretGuard(app, secret)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=args.host,
            port=args.port,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=args.graceful_timeout,
            **uvicorn_options(config.transport),
        )
    )
    with contextlib.suppress(SystemExit):
        server.run()
    if failed:
        print(f"replica {name}: model failed to load: {failed[0]}", file=sys.stderr)
        return 1
    return 0 if server.started else 1


if __name__ == "__main__":
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter finalization: its garbage collection over torch's and scipy's module state takes seconds
    # after serving, and nothing is left to save. Restarts and test teardowns stay fast.
    os._exit(code)
