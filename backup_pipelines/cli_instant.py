"""The restore-to-an-instant commands of `backup-pipelines` (lib/recovery/instant.py):

backup-pipelines restore workspace --to '2026-12-01 13:05:00+00:00' --workspace W [W ...] [--dry-run]
backup-pipelines restore platform --to '2026-12-01 13:05:00+00:00' [--target-dir D] [--port P]
                                  [--listen ADDR] [--overwrite-live] [--dry-run]

The plan is printed before anything is written; --dry-run prints only the plan.
"""

from __future__ import annotations

import json
import os
import sys

from backup_pipelines.lib.policy import load_policy


def _setup():
    from backup_pipelines.cli import _index_clients, _store
    from backup_pipelines.lib.postgres import pitr

    policy = load_policy()
    return policy, pitr.PitrConfig.from_env(policy.pgbackrest_stanza), _store(), _index_clients()


def _target(text: str):
    from backup_pipelines.defs.pitr import parse_target

    return parse_target(text)


def _report(result, what: str) -> int:
    print(json.dumps(result.to_dict(), indent=2, default=str))
    if result.dry_run:
        print(f"dry run of the restore of {what}: the plan above, nothing written")
        return 1 if result.failed else 0
    done = [r.workspace for r in result.results if not r.error]
    summary = f"restored {what}: {len(done)} workspace(s) to {result.plan.to_dict()['target']}"
    if result.failed:
        failed = ", ".join(r.workspace for r in result.failed)
        print(f"{summary}; FAILED: {failed}", file=sys.stderr)
        return 1
    print(summary)
    return 0


def cmd_restore_workspace_to(args) -> int:
    """`restore workspace --to T`: called by cli.cmd_restore_workspace."""
    from backup_pipelines.lib.recovery import instant

    if args.mode != "merge" or args.override_gate:
        print(
            "--mode and --override-gate belong to --date restores: a restore --to merges into "
            "live and gates its own result",
            file=sys.stderr,
        )
        return 2
    database_url = os.environ.get("DATABASE_URL")
    if not database_url:
        print("DATABASE_URL is not set: it names the database to restore into", file=sys.stderr)
        return 2
    target = _target(args.to)
    policy, config, store, clients = _setup()
    try:
        result = instant.restore_workspaces_to(
            config, store, target, args.workspace, database_url, policy, clients,
            dry_run=args.dry_run, log=print,
        )  # fmt: skip
    finally:
        for client in clients.values():
            client.close()
    return _report(result, f"{len(args.workspace)} workspace(s)")


def cmd_restore_platform(args) -> int:
    from backup_pipelines.lib.recovery import instant

    target = _target(args.to)
    policy, config, store, clients = _setup()
    try:
        result = instant.restore_platform_to(
            config, store, target, policy, clients,
            target_dir=args.target_dir, port=args.port, listen=args.listen,
            overwrite_live=args.overwrite_live, dry_run=args.dry_run, log=print,
        )  # fmt: skip
    finally:
        for client in clients.values():
            client.close()
    return _report(result, "the platform")


def add_restore_parsers(restore) -> None:
    platform = restore.add_parser(
        "platform",
        help="the whole cluster (pgBackRest) and every workspace's indexes to one instant",
    )
    platform.add_argument("--to", required=True, help="e.g. '2026-12-01 13:05:00+00:00'")
    where = platform.add_mutually_exclusive_group()
    where.add_argument("--target-dir", help="new data directory (default: under BACKUP_WORK_DIR)")
    where.add_argument(
        "--overwrite-live",
        action="store_true",
        help="the verified copy swapped into the live cluster's place",
    )
    platform.add_argument("--port", type=int, help="port of the restored cluster (default: free)")
    platform.add_argument("--listen", default="127.0.0.1", help="its listen_addresses")
    platform.add_argument("--dry-run", action="store_true", help="print the plan only")
    platform.set_defaults(run=cmd_restore_platform)
