"""The local stack used by the demo, `make dev` and the tests alike: a throwaway PostgreSQL
cluster, a real Typesense server, the Qdrant stand-in and, on request, an S3 endpoint, on
free 127.0.0.1 ports, all stopped and removed on exit.

    python -m backup_pipelines.devstack.stack dev     # the stack, seeded, plus `dagster dev`
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from backup_pipelines.devstack import sample_data
from backup_pipelines.devstack.postgres_cluster import PostgresCluster
from backup_pipelines.devstack.qdrant import QdrantStandinProcess
from backup_pipelines.devstack.s3_server import S3Server
from backup_pipelines.devstack.typesense_server import TypesenseServer

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEMO_WORKSPACES = ["ws_acme", "ws_globex", "ws_initech"]
DATABASE_NAME = "agent_memory"


class LocalStack:
    def __init__(self, with_s3: bool = False, with_indexes: bool = True) -> None:
        self.with_s3 = with_s3
        self.with_indexes = with_indexes
        self.postgres: PostgresCluster | None = None
        self.s3: S3Server | None = None
        self.typesense: TypesenseServer | None = None
        self.qdrant: QdrantStandinProcess | None = None
        self.database_url = ""
        self._stack = contextlib.ExitStack()

    def start(self) -> LocalStack:
        try:
            self.postgres = self._stack.enter_context(PostgresCluster())
            self.database_url = self.postgres.create_database(DATABASE_NAME)
            if self.with_s3:
                self.s3 = self._stack.enter_context(S3Server())
            if self.with_indexes:
                key = secrets.token_hex(16)
                self.typesense = self._stack.enter_context(TypesenseServer(api_key=key))
                self.qdrant = self._stack.enter_context(QdrantStandinProcess())
        except BaseException:
            self.stop()
            raise
        return self

    def seed(self, workspaces=DEMO_WORKSPACES, scale: sample_data.Scale | None = None) -> dict:
        """The sample database, and every memory entry indexed into Typesense and Qdrant."""
        totals = sample_data.seed(self.database_url, workspaces, scale or sample_data.Scale())
        if self.with_indexes:
            totals["indexed"] = index_workspaces(self, workspaces)
        return totals

    def env(self, store_url: str | None = None) -> dict[str, str]:
        env = {"DATABASE_URL": self.database_url}
        if self.typesense:
            env["TYPESENSE_URL"] = self.typesense.url
            env["TYPESENSE_API_KEY"] = self.typesense.api_key
        if self.qdrant:
            env["QDRANT_URL"] = self.qdrant.url
        if self.s3:
            env.update(self.s3.env)
            env["BACKUP_STORE_URL"] = store_url or f"s3://{self.s3.bucket}/agent-memory"
        elif store_url:
            env["BACKUP_STORE_URL"] = store_url
        return env

    def stop(self) -> None:
        self._stack.close()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def index_workspaces(stack: LocalStack, workspaces: list[str], policy=None) -> dict[str, int]:
    """Index every memory entry of each workspace, as the platform itself would (by the
    policy's mapping: the built-in defaults unless one is given)."""
    import psycopg

    from backup_pipelines.lib.policy import Policy
    from backup_pipelines.lib.postgres.memory_rows import iter_index_rows
    from backup_pipelines.lib.qdrant.client import QdrantHttp
    from backup_pipelines.lib.qdrant.points import index_into_qdrant
    from backup_pipelines.lib.typesense.client import TypesenseClient
    from backup_pipelines.lib.typesense.documents import index_into_typesense

    policy = policy or Policy()
    documents, points = policy.index_mapping("typesense"), policy.index_mapping("qdrant")
    counts = {"typesense_documents": 0, "qdrant_points": 0}
    with (
        psycopg.connect(stack.database_url) as conn,
        TypesenseClient(stack.typesense.url, stack.typesense.api_key) as typesense,
        QdrantHttp(stack.qdrant.url) as qdrant,
    ):
        for workspace in workspaces:
            rows = iter_index_rows(conn, workspace, documents, policy.schema)
            counts["typesense_documents"] += index_into_typesense(
                typesense, policy.typesense_collection_for(workspace), rows, documents
            )
            rows = iter_index_rows(conn, workspace, points, policy.schema)
            counts["qdrant_points"] += index_into_qdrant(
                qdrant, policy.qdrant_collections_for(workspace)[0], rows, points
            )
    return counts


def prepare_dagster_home(path: Path) -> Path:
    """A DAGSTER_HOME with the project's local dagster.yaml and no welcome pop-up."""
    path.mkdir(parents=True, exist_ok=True)
    shutil.copy(PROJECT_ROOT / "dagster.yaml", path / "dagster.yaml")
    (path / ".nux").mkdir(exist_ok=True)
    (path / ".nux" / "nux.yaml").write_text("seen: 1\n")
    return path


def run_dagster_dev(env: dict[str, str], port: int) -> int:
    """`dagster dev` in its own session so Ctrl-C and SIGTERM reach it (FACTS: an inherited
    ignore mask otherwise swallows them), with a SIGKILL fallback for its process group."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dagster",
            "dev",
            "-w",
            str(PROJECT_ROOT / "workspace.yaml"),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        env={**os.environ, **env},
        cwd=PROJECT_ROOT,
        start_new_session=True,
        preexec_fn=lambda: [
            signal.signal(s, signal.SIG_DFL) for s in (signal.SIGINT, signal.SIGTERM)
        ],
    )
    try:
        return process.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["dev"])
    parser.add_argument("--port", type=int, default=int(os.environ.get("DAGSTER_PORT", "3000")))
    parser.add_argument("--s3", action="store_true", help="store artifacts in a local S3 endpoint")
    args = parser.parse_args(argv)
    home = prepare_dagster_home(
        Path(os.environ.get("DAGSTER_HOME") or PROJECT_ROOT / ".dagster_home")
    )
    store_url = os.environ.get("BACKUP_STORE_URL") or f"file://{PROJECT_ROOT / '.demo' / 'store'}"
    with LocalStack(with_s3=args.s3) as stack:
        started = time.monotonic()
        stack.seed()
        env = {**stack.env(None if args.s3 else store_url), "DAGSTER_HOME": str(home)}
        print(
            f"local stack up in {time.monotonic() - started:.1f} s: PostgreSQL {stack.postgres.url_base}"
        )
        print(
            f"backup store: {env['BACKUP_STORE_URL']}; Dagster UI on http://127.0.0.1:{args.port}"
        )
        sys.exit(run_dagster_dev(env, args.port))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
