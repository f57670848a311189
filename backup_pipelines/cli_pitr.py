"""The point-in-time commands of `backup-pipelines` (added to cli.py's parser):

backup-pipelines pitr setup                      # write the pgBackRest config, stanza-create, check
backup-pipelines pitr info                       # backups, WAL archive, reachable window, WAL RPO
backup-pipelines pitr backup [--type full|diff|incr]
backup-pipelines restore pitr --to '2026-12-01 13:05:00+00' [--target-dir D] [--port P] [--listen ADDR]
backup-pipelines restore pitr --to ... --overwrite-live
backup-pipelines restore managed --to '2026-12-01 13:05:00+00' [--name N] [--wait-minutes M]
"""

from __future__ import annotations

import json
import os

from backup_pipelines.lib.policy import load_policy


def _config():
    from backup_pipelines.lib.postgres import pitr

    return pitr.PitrConfig.from_env(load_policy().pgbackrest_stanza)


def _target(text: str):
    from backup_pipelines.defs.pitr import parse_target

    return parse_target(text)


def cmd_pitr_setup(args) -> int:
    from backup_pipelines.lib.postgres import pitr

    policy = load_policy()
    config = _config()
    problems = pitr.setup(config, policy.pitr_window_days, log=print)
    if problems:
        print("postgresql.conf of the live cluster still needs:")
        for line in problems:
            print(f"  {line}")
        return 1
    print(f"stanza {config.stanza.name} created and checked: WAL reaches the repository")
    return 0


def cmd_pitr_info(args) -> int:
    from backup_pipelines.lib.postgres import pitr

    policy = load_policy()
    config = _config()
    info = config.stanza.info()
    report = {
        "stanza": info.name,
        "status": info.status_message,
        "archive_min": info.archive_min,
        "archive_max": info.archive_max,
        "backups": [b.to_dict() for b in info.backups],
    }
    try:
        report["reachable"] = pitr.reachable_window(config.stanza, info).to_dict()
    except pitr.PitrTargetUnreachable as exc:
        report["reachable"] = str(exc)
    report["wal_rpo"] = pitr.wal_rpo(
        config.database_url, policy.wal_rpo_minutes * 60, info
    ).to_dict()
    print(json.dumps(report, indent=2))
    return 0


def cmd_pitr_backup(args) -> int:
    from backup_pipelines.defs.pitr import choose_backup_type

    config = _config()
    kind = choose_backup_type(args.type, load_policy(), config.stanza.info(), _now())
    record = config.stanza.backup(kind, log=print)
    print(json.dumps(record.to_dict(), indent=2))
    return 0


def _now():
    from datetime import UTC, datetime

    return datetime.now(UTC)


def cmd_restore_pitr(args) -> int:
    from backup_pipelines.lib.postgres import pitr
    from backup_pipelines.lib.store.copy import lease_store_for_live

    leases = None
    if args.overwrite_live:
        leases = lease_store_for_live(os.environ.get("BACKUP_STORE_URL"), print)
    restored = pitr.restore_to_time(
        _config(),
        _target(args.to),
        target_dir=args.target_dir,
        port=args.port,
        listen=args.listen,
        overwrite_live=args.overwrite_live,
        log=print,
        leases=leases,
    )
    print(json.dumps(restored.to_dict(), indent=2))
    print(f"the restored cluster runs; stop it with: pg_ctl -D {restored.data_dir} stop")
    return 0


def cmd_restore_managed(args) -> int:
    from backup_pipelines.lib.postgres.digitalocean import ManagedDatabases

    api = ManagedDatabases.from_env(log=print)
    restored = api.restore_to_time(
        _target(args.to), name=args.name, wait_timeout=args.wait_minutes * 60
    )
    print(json.dumps(restored.to_dict(), indent=2))
    print(f"point the platform at {restored.display_url} (password: control panel or API)")
    return 0


def add_restore_parsers(restore) -> None:
    sub = restore.add_parser(
        "pitr", help="the whole cluster to an instant with pgBackRest, into a new data dir/port"
    )
    sub.add_argument("--to", required=True, help="e.g. '2026-12-01 13:05:00+00'")
    where = sub.add_mutually_exclusive_group()
    where.add_argument("--target-dir", help="new data directory (default: under BACKUP_WORK_DIR)")
    where.add_argument(
        "--overwrite-live", action="store_true", help="stop the live cluster and restore over it"
    )
    sub.add_argument("--port", type=int, help="port of the restored cluster (default: a free one)")
    sub.add_argument(
        "--listen", default="127.0.0.1", help="listen_addresses of the restored cluster"
    )
    sub.set_defaults(run=cmd_restore_pitr)
    managed = restore.add_parser(
        "managed", help="DigitalOcean: a new managed cluster restored to an instant"
    )
    managed.add_argument("--to", required=True)
    managed.add_argument("--name", help="the new cluster's name (default <source>-pitr-<stamp>)")
    managed.add_argument("--wait-minutes", type=float, default=30.0)
    managed.set_defaults(run=cmd_restore_managed)


def add_commands(commands) -> None:
    group = commands.add_parser(
        "pitr", help="pgBackRest stanza: setup, info, backup"
    ).add_subparsers(dest="pitr_command", required=True)
    group.add_parser("setup", help="write the configuration, stanza-create, check").set_defaults(
        run=cmd_pitr_setup
    )
    group.add_parser("info", help="backups, WAL archive, reachable window, WAL RPO").set_defaults(
        run=cmd_pitr_info
    )
    backup = group.add_parser("backup", help="a physical backup now")
    backup.add_argument("--type", choices=["auto", "full", "diff", "incr"], default="auto")
    backup.set_defaults(run=cmd_pitr_backup)
