"""`backup-pipelines`: the operator's command line. Reads only the environment and the store,
so it works when Dagster (its daemon, webserver or database) is gone.

    backup-pipelines doctor
    backup-pipelines list [--asset A] [--date D] [--workspace W] [--verdicts]
    backup-pipelines list --restorable [--workspace W]   # restorable dates per workspace
    backup-pipelines workspaces list | remove W [W ...] [--force]   # Dagster's partitions
    backup-pipelines verify [--asset A] [--date D] [--workspace W]
    backup-pipelines restore workspace --date D --workspace W [W ...] [--mode merge|replace]
                                       [--dry-run] [--override-gate REASON] [--skip-refused]
    backup-pipelines restore workspace --to '2026-12-01 13:05:00+00:00' --workspace W [W ...] [--dry-run]
    backup-pipelines restore platform --to '2026-12-01 13:05:00+00:00' [--target-dir D --port P | --overwrite-live] [--dry-run]
    backup-pipelines restore full --date D [--target-database NAME | --overwrite-live] [--jobs N]
                                  [--resume] [--command-before CMD ...] [--command-after CMD ...]
    backup-pipelines release-database NAME     # drop a <live>_before_restore_<time> database
    backup-pipelines keep --date D [--workspace W] --reason TEXT
    backup-pipelines release --date D [--workspace W]
    backup-pipelines kept
    backup-pipelines retention [--dry-run] [--today D]
    backup-pipelines copy [--asset A] [--date D] [--workspace W] | --all-missing
    backup-pipelines lease list
    backup-pipelines lease break (--workspace W | --database) [--force]
    backup-pipelines pitr setup | info | backup [--type auto|full|diff|incr]
    backup-pipelines keys new [--id ID]        # a new encryption key, printed as id:base64
    backup-pipelines restore pitr --to '2026-12-01 13:05:00+00' [--target-dir D --port P | --overwrite-live]
    backup-pipelines restore managed --to '2026-12-01 13:05:00+00' [--name N]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import traceback
from collections.abc import Iterator
from datetime import date as Date

from backup_pipelines import cli_copy, cli_instant, cli_pitr, cli_workspaces
from backup_pipelines.lib.errors import BackupError, StoreError
from backup_pipelines.lib.policy import load_policy
from backup_pipelines.lib.store import ArtifactRef, store_from_url
from backup_pipelines.lib.workspaces import is_valid_workspace_id

STRICT_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
ASSET_KEY = re.compile(r"[A-Za-z0-9_]+(/[A-Za-z0-9_]+)*")
# What reading an untrusted manifest can raise: the store's own errors (a tampered or invalid
# manifest is a StoreError subclass), and, for manifests of the wrong shape, the lookups
# that fail on them. verify and list report these per artifact and go on.
UNREADABLE = (StoreError, OSError, KeyError, TypeError, ValueError, AttributeError)


def date_argument(text: str) -> str:
    """A calendar date written YYYY-MM-DD, nothing else (not 20261201, not 2026-W49-2: the
    store's folders are named date=YYYY-MM-DD, and a date that names no folder finds nothing)."""
    if not STRICT_DATE.fullmatch(text or ""):
        raise argparse.ArgumentTypeError(f"{text!r} is not a date written YYYY-MM-DD")
    try:
        Date.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a calendar date ({exc})") from exc
    return text


def workspace_argument(text: str) -> str:
    if not is_valid_workspace_id(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a workspace id (letters, digits, _ and -, starting with a letter "
            "or digit, at most 64 characters)"
        )
    return text


def asset_argument(text: str) -> str:
    if not ASSET_KEY.fullmatch(text or ""):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an asset key path such as postgres/workspace_dump"
        )
    return text


def jobs_argument(text: str) -> int:
    try:
        jobs = int(text)
    except ValueError:
        jobs = 0
    if not 1 <= jobs <= 64:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of jobs from 1 to 64")
    return jobs


def text_argument(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def _store():
    return store_from_url(os.environ.get("BACKUP_STORE_URL"))


def _index_clients() -> dict:
    """A client for every index engine the environment configures (engine name -> client)."""
    from backup_pipelines.lib.engines import configured_engines

    return {engine.name: engine.client_from_env(os.environ) for engine in configured_engines()}


def _close_all(clients: dict) -> None:
    for client in clients.values():
        client.close()


def _selected(store, args):
    for ref in sorted(store.list_artifacts(args.asset)):
        if args.date and ref.date != args.date:
            continue
        if args.workspace and ref.workspace != args.workspace:
            continue
        yield ref


def pg_dump_major(version_text: str) -> int:
    """The major version of `pg_dump --version` output, distribution suffixes and all:
    "pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)" is 15."""
    match = re.search(r"\(PostgreSQL\)\s+(\d+)", version_text) or re.search(r"(\d+)", version_text)
    return int(match.group(1)) if match else 0


def cmd_doctor(args) -> int:
    from backup_pipelines.lib.engines import configured_engines, index_engines
    from backup_pipelines.lib.postgres import connection as postgres

    failures = 0

    def report(name: str, ok: bool, detail: str) -> None:
        nonlocal failures
        failures += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {name:<12} {detail}")

    policy = None
    try:
        policy = load_policy()
        source = os.environ.get("BACKUP_POLICY_FILE") or "built-in defaults"
        report("policy", True, f"{source} loads")
    except BackupError as exc:
        report("policy", False, str(exc))
    store = None
    try:
        store = _store()
        store.check_writable()
        report("store", True, f"{store.describe()} is writable")
    except BackupError as exc:
        report("store", False, str(exc))
    cli_copy.doctor_checks(report, store)  # the copy store; Object Lock against the buckets
    _doctor_encryption(report)
    database_url = os.environ.get("DATABASE_URL")
    if database_url:
        try:
            with postgres.connect(database_url) as conn:
                server = conn.execute("SHOW server_version").fetchone()[0]
            client = postgres.tool_version(postgres.pg_bin("pg_dump"))
            detail = f"{postgres.describe_database(database_url)}: server {server}; {client}"
            if pg_dump_major(client) < postgres.major_version(server):
                detail += " — WARNING: pg_dump is older than the server; install a newer client or set PG_BIN_DIR"
            report("postgres", True, detail)
        except BackupError as exc:
            report("postgres", False, str(exc))
        if policy is not None:
            _doctor_schema(report, database_url, policy, configured_engines())
    else:
        print("--   postgres     DATABASE_URL not set: not part of this deployment")
    for engine in index_engines():
        if not engine.configured(os.environ):
            print(f"--   {engine.name:<12} not configured: not part of this deployment")
            continue
        try:
            with engine.client_from_env(os.environ) as client:
                report(engine.name, True, f"version {client.server_version()}")
        except BackupError as exc:
            report(engine.name, False, str(exc))
    return 1 if failures else 0


def _doctor_encryption(report) -> None:
    """Whether new backups are encrypted, and with which key id (ids only, never a key)."""
    from backup_pipelines.lib.store.cipher import Keyring

    try:
        keyring = Keyring.from_env()
    except BackupError as exc:
        report("encryption", False, str(exc))
        return
    known = ", ".join(sorted(keyring.keys)) or "none"
    if keyring.active:
        report(
            "encryption", True, f"new backups encrypted with key {keyring.active!r} (keys: {known})"
        )
    else:
        print(f"--   encryption   off: BACKUP_ENCRYPTION_KEY_ID not set (keys listed: {known})")


def cmd_keys_new(args) -> int:
    """A new random 256-bit key as `id:base64`, the form BACKUP_ENCRYPTION_KEYS takes."""
    from backup_pipelines.lib.store.cipher import new_key

    key_id = args.id or f"k{Date.today():%Y%m%d}"
    print(f"{key_id}:{new_key()}")
    return 0


def key_id_argument(text: str) -> str:
    from backup_pipelines.lib.store.cipher import KEY_ID

    if not KEY_ID.fullmatch(text or ""):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a key id (letters, digits, '.', '_' and '-', starting with a "
            "letter or digit, at most 64 characters)"
        )
    return text


def _doctor_schema(report, database_url: str, policy, engines) -> None:
    """The workspace registry and each configured index's mapping against the live schema."""
    from backup_pipelines.lib.postgres import connection as postgres
    from backup_pipelines.lib.postgres.catalog import list_workspaces
    from backup_pipelines.lib.recovery.mappings import mapping_problems

    try:
        valid, invalid = list_workspaces(database_url, policy)
        registry = f"{policy.schema}.{policy.workspace_registry_table}"
        extra = f" ({len(invalid)} invalid ids skipped)" if invalid else ""
        report("workspaces", True, f"{len(valid)} in {registry}{extra}")
    except BackupError as exc:
        report("workspaces", False, str(exc))
    for engine in engines:
        mapping = policy.index_mapping(engine.name)
        try:
            with postgres.connect(database_url) as conn:
                problems = mapping_problems(conn, policy, [engine])
        except BackupError as exc:
            problems = [str(exc)]
        name = f"{engine.name} map"
        if problems:
            report(name, False, "; ".join(problems))
        else:
            probe = f"probe by {mapping.probe_column}" if mapping.probe_column else "no probe"
            how = "rebuild command" if mapping.rebuild_command else "built-in mapping"
            report(
                name,
                True,
                f"{policy.schema}.{mapping.table} by {mapping.id_column} ({how}, {probe})",
            )


def cmd_list(args) -> int:
    if args.restorable:
        return cli_workspaces.cmd_list_restorable(args, _store())
    store = _store()
    refs = list(_selected(store, args))
    unreadable = 0
    print(f"{'asset':<30} {'date':<16} {'workspace':<20} {'bytes':>14}  counts")
    for ref in refs:
        when = f"{ref.date} {ref.window}" if ref.window else ref.date  # HHMM: a sub-daily window
        head = f"{ref.asset:<30} {when:<16} {ref.workspace or '-':<20}"
        try:
            print(f"{head} {_list_columns(store, ref, args.verdicts)}")
        except UNREADABLE as exc:
            unreadable += 1
            print(f"{head} UNREADABLE: {_describe_error(exc)}")
    print(
        f"{len(refs)} artifacts listed"
        + (f", {unreadable} with an unreadable manifest" if unreadable else "")
        + ("" if refs else f" (none matches in {store.describe()})")
    )
    return 1 if unreadable else 0


def _list_columns(store, ref, verdicts: bool) -> str:
    manifest = store.read_manifest(ref)
    if manifest is None:
        raise StoreError(f"{store.location(ref)}: the manifest disappeared while listing")
    size = sum(f["bytes"] for f in manifest["files"])
    counts = {
        k: (sum(v.values()) if isinstance(v, dict) else v)
        for k, v in manifest["counts"].items()
        if k != "tables"
    }
    line = f"{size:>14,}  {json.dumps(counts)}"
    key_ids = sorted({f["encryption"]["key_id"] for f in manifest["files"] if f.get("encryption")})
    if key_ids:  # which keys a restore needs (rotation: drop a key only when none lists it)
        line += f"  encrypted with {', '.join(key_ids)}"
    if verdicts and ref.asset == "postgres/workspace_dump":
        try:
            line += f"  {_verdict(store, ref, manifest)}"
        except BackupError as exc:
            raise StoreError(f"no verdict: {exc}") from exc
    return line


def _describe_error(exc: BaseException) -> str:
    """Our errors say what is wrong; a lookup failing on a manifest of the wrong shape does not."""
    if isinstance(exc, BackupError | OSError):
        return str(exc)
    return f"the manifest does not have the expected shape ({type(exc).__name__}: {exc})"


def _verdict(store, ref, manifest) -> str:
    """The consistency gate's verdict of the partition (SQL against its index artifacts)."""
    from backup_pipelines.lib.engines import index_engines
    from backup_pipelines.lib.recovery.consistency import evaluate_partition

    refs, manifests = {ref.asset: ref}, {ref.asset: manifest}
    for engine in index_engines():
        other = ArtifactRef(engine.asset, ref.date, ref.workspace)
        found = store.read_manifest(other)
        if found is not None:
            refs[engine.asset], manifests[engine.asset] = other, found
    return evaluate_partition(store, refs, manifests, load_policy()).summary()


def cmd_verify(args) -> int:
    store = _store()
    refs = list(_selected(store, args))
    corrupt = unreadable = 0
    for ref in refs:
        try:
            result = store.verify(ref)
        except (
            UNREADABLE
        ) as exc:  # e.g. a manifest that is not JSON, tampered or of the wrong shape
            unreadable += 1
            print(f"UNREADABLE {ref}: {_describe_error(exc)}")
            continue
        corrupt += not result.ok
        print(
            f"{'ok     ' if result.ok else 'CORRUPT'} {ref} ({result.files} files, {result.bytes:,} bytes)"
        )
        for problem in result.problems:
            print(f"        {problem}")
    verified = len(refs) - corrupt - unreadable
    print(
        f"{verified} of {len(refs)} artifacts verified"
        + (f", {corrupt} corrupt" if corrupt else "")
        + (f", {unreadable} with an unreadable manifest" if unreadable else "")
    )
    if not refs:
        print(f"no artifact matches the selection in {store.describe()}", file=sys.stderr)
        return 1
    return 1 if corrupt or unreadable else 0


def cmd_restore_workspace(args) -> int:
    from backup_pipelines.lib.engines import Mode
    from backup_pipelines.lib.recovery.workspace_restore import restore_workspace

    if args.to:  # one instant across stores (SQL by PITR, indexes caught up)
        return cli_instant.cmd_restore_workspace_to(args)
    database_url = os.environ.get("DATABASE_URL")
    if not database_url:
        print("DATABASE_URL is not set: it names the database to restore into", file=sys.stderr)
        return 2
    store, policy = _store(), load_policy()
    failed: list[str] = []
    for workspace in args.workspace:
        indexes: dict = {}
        try:
            indexes = _index_clients()
            report = restore_workspace(
                store, args.date, workspace, database_url, policy, indexes,
                mode=Mode(args.mode), dry_run=args.dry_run, override_gate=args.override_gate or "", log=print,
                skip_refused=args.skip_refused,
            )  # fmt: skip
            print(json.dumps(report.to_dict(), indent=2, default=str))
        except Exception as exc:  # one workspace's failure never stops the others
            failed.append(workspace)
            # Our own errors say what and where; anything else needs its type to be read.
            reason = str(exc) if isinstance(exc, BackupError) else f"{type(exc).__name__}: {exc}"
            print(f"restore of {args.date}|{workspace} FAILED: {reason}", file=sys.stderr)
        finally:
            _close_all(indexes)
    done = len(args.workspace) - len(failed)
    summary = f"restored {done} of {len(args.workspace)} workspace(s) to {args.date}"
    if failed:
        print(f"{summary}; FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    print(summary)
    return 0


def cmd_restore_full(args) -> int:
    from backup_pipelines.lib.recovery.full_restore import FullRestoreRequest, restore_full

    database_url = os.environ.get("DATABASE_URL")
    if not database_url:
        print(
            "DATABASE_URL is not set: it names the server (and live database) to restore to",
            file=sys.stderr,
        )
        return 2
    request = FullRestoreRequest(
        date=args.date,
        target_database=args.target_database,
        overwrite_live=args.overwrite_live,
        jobs=args.jobs,
        resume=args.resume,
        commands_before=args.command_before,
        commands_after=args.command_after,
    )
    try:
        request.check()
    except BackupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = restore_full(_store(), request, database_url, log=print)
    print(json.dumps(result, indent=2))
    if result.get("previous_database"):
        print(
            f"the previous live database is kept as {result['previous_database']}; drop it when "
            f"no longer needed: backup-pipelines release-database {result['previous_database']}"
        )
    return 0


def cmd_release_database(args) -> int:
    from backup_pipelines.lib.postgres.database_swap import release_database

    database_url = os.environ.get("DATABASE_URL")
    if not database_url:
        print("DATABASE_URL is not set: it names the server of the database", file=sys.stderr)
        return 2
    release_database(database_url, args.name)
    print(f"dropped {args.name}")
    return 0


def _mssql_settings():
    """(connection string, database, backup folders) from the environment, or an error."""
    from pathlib import Path

    from backup_pipelines.lib.errors import ConfigError
    from backup_pipelines.lib.mssql.backup import Folders
    from backup_pipelines.lib.mssql.connection import database_of

    connection_string = os.environ.get("MSSQL_CONNECTION_STRING")
    backup_dir = os.environ.get("MSSQL_BACKUP_DIR")
    if not connection_string or not backup_dir:
        raise ConfigError(
            "MSSQL_CONNECTION_STRING and MSSQL_BACKUP_DIR must be set: the server (its DATABASE= "
            "is the database restored) and the folder it reads backup files from"
        )
    local = Path(os.environ.get("MSSQL_BACKUP_LOCAL_DIR") or backup_dir)
    return connection_string, database_of(connection_string), Folders(backup_dir, local)


def _instant(value: str | None):
    from datetime import UTC, datetime

    if not value or value == "latest":
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BackupError(
            f"--to {value!r} is not an ISO 8601 time, e.g. '2026-12-01 13:05:00+00:00'"
        ) from None
    if moment.tzinfo is None:
        raise BackupError(f"--to {value!r} has no time zone: add +00:00 (UTC) or another offset")
    return moment.astimezone(UTC)


def cmd_restore_mssql(args) -> int:
    from backup_pipelines.lib.mssql.restore import restore_database

    connection_string, database, folders = _mssql_settings()
    result = restore_database(
        connection_string, _store(), database, _instant(args.to), folders,
        target_database=args.target_database, overwrite_live=args.overwrite_live,
        dry_run=args.dry_run, log=print,
    )  # fmt: skip
    print(json.dumps(result, indent=2, default=str))
    return 0


def cmd_restore_agent(args) -> int:
    from backup_pipelines.lib.engines import index_engine
    from backup_pipelines.lib.mssql.agent import restore_agent

    connection_string, database, folders = _mssql_settings()
    engine = index_engine("qdrant")
    if not engine.configured(os.environ):
        print("QDRANT_URL is not set: an agent's vectors are restored into it", file=sys.stderr)
        return 2
    failed = 0
    with engine.client_from_env(os.environ) as client:
        for agent in args.agent:
            try:
                report = restore_agent(
                    connection_string, _store(), database, agent, args.date, folders, engine,
                    client, load_policy(), dry_run=args.dry_run,
                    override_gate=args.override_gate or "", log=print,
                )  # fmt: skip
                print(json.dumps(report.__dict__, indent=2, default=str))
            except BackupError as exc:
                failed += 1
                print(f"restore of agent {agent} ({args.date}) FAILED: {exc}", file=sys.stderr)
    return 1 if failed else 0


def _who() -> str:
    import getpass
    import socket

    try:
        return f"{getpass.getuser()}@{socket.gethostname()}"
    except (KeyError, OSError):  # no user name in a bare container
        return f"uid {os.getuid()}@{socket.gethostname()}"


def _partition_label(date: str, workspace: str | None) -> str:
    return f"{date}|{workspace}" if workspace else f"{date} (whole database)"


def cmd_keep(args) -> int:
    from backup_pipelines.lib.lifecycle.markers import mark_kept

    try:
        mark_kept(_store(), args.date, args.workspace, args.reason, created_by=_who())
    except ValueError as exc:  # a bad date, workspace id or empty reason
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"kept {_partition_label(args.date, args.workspace)} until released: {args.reason}")
    return 0


def cmd_release(args) -> int:
    from backup_pipelines.lib.lifecycle.markers import release

    try:
        marker = release(_store(), args.date, args.workspace)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"released {_partition_label(args.date, args.workspace)} (was kept: {marker.reason}); "
        "the retention policy applies to it again"
    )
    return 0


def cmd_kept(args) -> int:
    from backup_pipelines.lib.lifecycle.markers import list_kept

    markers = list_kept(_store())
    print(f"{'date':<11} {'workspace':<20} {'since':<25} {'by':<24} reason")
    for m in markers:
        print(
            f"{m.partition.date:<11} {m.partition.workspace or '(whole database)':<20} "
            f"{m.created_at or '?':<25} {m.created_by or '?':<24} {m.reason}"
        )
    return 0


def cmd_retention(args) -> int:
    from datetime import UTC, datetime

    from backup_pipelines.lib.lifecycle.retention import run_retention
    from backup_pipelines.lib.scratch import sweep_work_dir, work_dir

    # --today was checked by date_argument: None means not given, never an empty string.
    today = Date.fromisoformat(args.today) if args.today is not None else datetime.now(UTC).date()
    from backup_pipelines.lib.store.copy import copy_store_from_env

    primary, policy, failed = _store(), load_policy(), False
    stores = [(primary, None)]
    copy = copy_store_from_env()
    if copy is not None:  # pruned by the same policy, with the primary's keep markers
        stores.append((copy, primary))
    for store, control in stores:
        if control is not None:
            print(f"copy store {store.describe()}:")
        _plan, result = run_retention(
            store, policy, today, dry_run=args.dry_run, log=print, control=control,
            full_reverify=args.full_reverify,
        )  # fmt: skip
        if result is None:
            print("dry run: nothing deleted")
            continue
        print(f"deleted {len(result.deleted)} artifacts and {result.leftovers_cleaned} leftovers")
        for ref, until in result.locked:
            print(f"not deleted (Object Lock): {ref} until {until}")
        for error in result.errors:
            print(f"FAILED {error}", file=sys.stderr)
        failed = failed or bool(result.errors)
    if not args.dry_run:
        freed = sweep_work_dir(print)
        print(f"work folder {work_dir()}: {freed:,} bytes freed of what killed runs left")
    return 1 if failed else 0


def cmd_lease_list(args) -> int:
    leases = _store().list_leases()
    print(f"{'lease':<28} {'state':<10} {'purpose':<10} {'held by':<32} {'until'}")
    for lease in leases:
        if lease.record is None:
            print(f"{lease.name:<28} {'UNREADABLE':<10} {'-':<10} {'-':<32} {lease.problem}")
            continue
        r = lease.record
        who = f"{r.owner.who} ({r.owner.host} pid {r.owner.pid})"
        state = "expired" if lease.expired() else "held"
        print(f"{lease.name:<28} {state:<10} {r.owner.purpose:<10} {who:<32} {r.expires_at}")
    if not leases:
        print("(no leases: no backup or restore holds a partition)")
    return 0


def cmd_lease_break(args) -> int:
    from backup_pipelines.lib.store import lease_name

    try:
        name = lease_name(None if args.database else args.workspace)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    store = _store()
    lease = store.read_lease(name)
    if lease is None:
        print(f"no lease {name}: nothing to break")
        return 0
    if not lease.expired() and lease.record is not None and not args.force:
        print(
            f"lease {name} is live: {lease.describe()}. Break it only if that process is gone "
            "(check the host and pid, or the Dagster run); then add --force",
            file=sys.stderr,
        )
        return 2
    broken = store.break_lease(name, lease.version)
    print(f"broke lease {name}: {broken.describe() if broken else 'already gone'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="backup-pipelines",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("doctor", help="reach every configured store; versions").set_defaults(
        run=cmd_doctor
    )
    for name, run in (("list", cmd_list), ("verify", cmd_verify)):
        sub = commands.add_parser(name, help=f"{name} artifacts in the store")
        sub.add_argument("--asset", type=asset_argument)
        sub.add_argument("--date", type=date_argument, help="YYYY-MM-DD")
        sub.add_argument("--workspace", type=workspace_argument)
        if name == "list":
            sub.add_argument(
                "--verdicts", action="store_true", help="each partition's consistency verdict"
            )
            sub.add_argument(
                "--restorable",
                action="store_true",
                help="per workspace, the dates a restore can use and what each holds",
            )
        sub.set_defaults(run=run)
    restore = commands.add_parser("restore", help="restore without Dagster").add_subparsers(
        dest="what", required=True
    )
    workspace = restore.add_parser(
        "workspace", help="restore workspaces to a date (SQL rows and indexes)"
    )
    when = workspace.add_mutually_exclusive_group(required=True)
    when.add_argument("--date", type=date_argument, help="YYYY-MM-DD: that day's backups")
    when.add_argument(
        "--to",
        type=text_argument,
        help="an instant, e.g. '2026-12-01 13:05:00+00:00': SQL by point-in-time recovery, "
        "indexes from their artifacts caught up to it",
    )
    workspace.add_argument("--workspace", required=True, nargs="+", type=workspace_argument)
    workspace.add_argument("--mode", choices=["merge", "replace"], default="merge")
    workspace.add_argument("--dry-run", action="store_true")
    workspace.add_argument(
        "--override-gate", metavar="REASON", help="restore despite a FAIL verdict (recorded)"
    )
    workspace.add_argument(
        "--skip-refused",
        action="store_true",
        help="with --date: skip the entries an index refuses (reported by id); without it "
        "they fail the restore, which then says each store's state",
    )
    workspace.set_defaults(run=cmd_restore_workspace)
    full = restore.add_parser(
        "full",
        help="the whole database from postgres/full_dump into a new database, or over the "
        "live one by a verified swap",
    )
    full.add_argument("--date", required=True, type=date_argument, help="YYYY-MM-DD")
    full.add_argument(
        "--target-database", type=text_argument, help="default: <live>_restored_<date>"
    )
    full.add_argument(
        "--overwrite-live",
        action="store_true",
        help="restore beside live, verify, then swap it in under the live name; the previous "
        "live database is kept as <live>_before_restore_<time>",
    )
    full.add_argument("--jobs", type=jobs_argument, default=2, help="parallel pg_restore jobs")
    full.add_argument(
        "--resume",
        action="store_true",
        help="continue into the database a failed or killed run of this command left",
    )
    full.add_argument(
        "--command-before",
        action="append",
        default=[],
        type=text_argument,
        metavar="CMD",
        help="run before (over live: just before the swap), e.g. stop the platform's writers; "
        "repeatable",
    )
    full.add_argument(
        "--command-after",
        action="append",
        default=[],
        type=text_argument,
        metavar="CMD",
        help="run after, e.g. migrations, start the writers; over live a failure swaps back; "
        "repeatable",
    )
    full.set_defaults(run=cmd_restore_full)
    mssql = restore.add_parser(
        "mssql", help="SQL Server to a point in time, planned from the store's catalog alone"
    )
    mssql.add_argument("--to", default="latest", help="ISO 8601 time with a zone, or 'latest'")
    mssql.add_argument("--target-database", help="default: <database>_restored_<stamp>")
    mssql.add_argument(
        "--overwrite-live", action="store_true", help="restore over the live database itself"
    )
    mssql.add_argument("--dry-run", action="store_true", help="print the plan only")
    mssql.set_defaults(run=cmd_restore_mssql)
    agent = restore.add_parser(
        "agent",
        help="one agent's SQL Server rows and Qdrant collection to its snapshot's instant",
    )
    agent.add_argument(
        "--date",
        required=True,
        type=date_argument,
        help="the date of the agent's Qdrant snapshot, YYYY-MM-DD",
    )
    agent.add_argument("--agent", required=True, nargs="+")
    agent.add_argument("--dry-run", action="store_true")
    agent.add_argument("--override-gate", metavar="REASON")
    agent.set_defaults(run=cmd_restore_agent)
    cli_pitr.add_restore_parsers(restore)  # restore pitr, restore managed
    cli_instant.add_restore_parsers(restore)  # restore platform
    keep = commands.add_parser(
        "keep", help="hold a backup (all artifacts of the partition) until released"
    )
    keep.add_argument("--date", required=True, type=date_argument, help="YYYY-MM-DD")
    keep.add_argument(
        "--workspace",
        type=workspace_argument,
        help="default: the whole-database backup of the date",
    )
    keep.add_argument(
        "--reason", required=True, type=text_argument, help="e.g. 'before migration 42'"
    )
    keep.set_defaults(run=cmd_keep)
    release = commands.add_parser("release", help="remove a keep marker")
    release.add_argument("--date", required=True, type=date_argument, help="YYYY-MM-DD")
    release.add_argument(
        "--workspace",
        type=workspace_argument,
        help="default: the whole-database backup of the date",
    )
    release.set_defaults(run=cmd_release)
    commands.add_parser("kept", help="list the keep markers").set_defaults(run=cmd_kept)
    released = commands.add_parser(
        "release-database",
        help="drop a database a swap kept (<live>_before_restore_<time>); refuses any other",
    )
    released.add_argument("name")
    released.set_defaults(run=cmd_release_database)
    prune = commands.add_parser(
        "retention", help="delete what the retention policy no longer keeps"
    )
    prune.add_argument("--dry-run", action="store_true", help="print the plan, delete nothing")
    prune.add_argument(
        "--today", type=date_argument, help="plan as of this UTC date, YYYY-MM-DD (default: today)"
    )
    prune.add_argument(
        "--full-reverify",
        action="store_true",
        help="re-read every artifact the plan needs verified, trusting no earlier verification",
    )
    prune.set_defaults(run=cmd_retention)
    lease = commands.add_parser(
        "lease", help="leases: which backup or restore holds a partition; break a stale one"
    ).add_subparsers(dest="lease_command", required=True)
    lease.add_parser("list", help="every lease in the store").set_defaults(run=cmd_lease_list)
    breaking = lease.add_parser("break", help="remove a stale lease (its holder is gone)")
    which = breaking.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--workspace", type=workspace_argument, help="the lease of this workspace's partitions"
    )
    which.add_argument("--database", action="store_true", help="the whole-database lease")
    breaking.add_argument(
        "--force", action="store_true", help="break it even though it has not expired yet"
    )
    breaking.set_defaults(run=cmd_lease_break)
    cli_pitr.add_commands(commands)  # pitr setup | info | backup
    cli_workspaces.add_commands(commands, workspace_argument)  # workspaces list | remove
    cli_copy.add_commands(commands, date_argument, workspace_argument, asset_argument)  # copy
    keys = commands.add_parser(
        "keys", help="client-side encryption keys of the artifacts"
    ).add_subparsers(dest="keys_command", required=True)
    new_key = keys.add_parser(
        "new",
        help="print a new random key as id:base64 (add it to BACKUP_ENCRYPTION_KEYS or the key "
        "file, and keep a copy outside the store: a lost key is a lost backup)",
    )
    new_key.add_argument("--id", type=key_id_argument, help="the key id (default: k<YYYYMMDD>)")
    new_key.set_defaults(run=cmd_keys_new)
    return parser


class _ScrubbedStream:
    """A text stream whose every write is scrubbed of secrets (lib/secrets.py)."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        from backup_pipelines.lib.secrets import scrub

        self._stream.write(scrub(text))
        return len(text)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


@contextlib.contextmanager
def _scrubbed_output() -> Iterator[None]:
    """Everything the command prints, its errors and tracebacks included, goes out scrubbed:
    a library's message can quote a secret (psycopg quotes a malformed DATABASE_URL whole)."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _ScrubbedStream(sys.stdout), _ScrubbedStream(sys.stderr)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved


def main(argv: list[str] | None = None) -> int:
    with _scrubbed_output():
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exc:  # argparse refused the input (its message is printed): exit 2
            return exc.code if isinstance(exc.code, int) else 2
        try:
            return args.run(args)
        except BackupError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except Exception as exc:  # not ours: show where, for a bug report, but scrubbed
            traceback.print_exc()
            print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
