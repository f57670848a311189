"""python -m backup_pipelines.devstack.mssql --port P --storage DIR [--password PWD]"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from .process import DEFAULT_PASSWORD
from .server import StandinServer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="SQL Server stand-in speaking TDS 7.4 on 127.0.0.1"
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--storage", type=Path, required=True)
    parser.add_argument(
        "--password",
        default=os.environ.get("MSSQL_STANDIN_PASSWORD", DEFAULT_PASSWORD),
        help="the sa password (default: $MSSQL_STANDIN_PASSWORD or a fixed development one)",
    )
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    parser.add_argument(
        "--parent-pid", type=int, help="exit when this process is gone (test harnesses)"
    )
    args = parser.parse_args(argv)
    verbose = args.verbose or bool(os.environ.get("MSSQL_STANDIN_VERBOSE"))
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    server = StandinServer(args.port, args.storage, args.password)

    def stop(*_):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    if args.parent_pid:
        threading.Thread(target=_exit_with_parent, args=(args.parent_pid,), daemon=True).start()
    print(f"mssql stand-in listening on 127.0.0.1:{args.port}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except (SystemExit, KeyboardInterrupt):
        pass
    finally:
        server.server_close()
    sys.exit(0)


def _exit_with_parent(parent: int) -> None:
    """A crashed test run must not leave the server behind."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGTERM)


if __name__ == "__main__":
    main()
