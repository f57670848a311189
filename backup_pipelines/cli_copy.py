"""The second copy and Object Lock in `backup-pipelines` (added to cli.py's parser and doctor):

backup-pipelines copy [--asset A] [--date D] [--workspace W]   # copy what the copy store lacks
backup-pipelines copy --all-missing                           # every artifact of the primary
"""

from __future__ import annotations

import os
import sys

from backup_pipelines.lib.errors import BackupError, ConfigError


def add_commands(commands, date_argument, workspace_argument, asset_argument) -> None:
    copy = commands.add_parser(
        "copy",
        help="copy committed artifacts the copy store (BACKUP_COPY_STORE_URL) lacks; "
        "those already there (same generation and sha256) are skipped",
    )
    copy.add_argument("--asset", type=asset_argument)
    copy.add_argument("--date", type=date_argument, help="YYYY-MM-DD")
    copy.add_argument("--workspace", type=workspace_argument)
    copy.add_argument(
        "--all-missing", action="store_true", help="every artifact of the primary store"
    )
    copy.set_defaults(run=cmd_copy)


def cmd_copy(args) -> int:
    from backup_pipelines.lib.store import store_from_url
    from backup_pipelines.lib.store.copy import copy_missing, copy_store_from_env, select_artifacts

    target = copy_store_from_env()
    if target is None:
        raise ConfigError("BACKUP_COPY_STORE_URL is not set: there is no copy store to copy to")
    if not (args.all_missing or args.asset or args.date or args.workspace):
        print(
            "say what to copy: --date/--workspace/--asset, or --all-missing for everything",
            file=sys.stderr,
        )
        return 2
    source = store_from_url(os.environ.get("BACKUP_STORE_URL"))
    refs = select_artifacts(source, args.asset, args.date, args.workspace)
    print(f"copying from {source.describe()} to {target.describe()}: {len(refs)} artifact(s)")
    report = copy_missing(source, target, refs, log=print)
    print(report.summary())
    for failed in report.failed:
        print(f"FAILED {failed.ref}: {failed.detail}", file=sys.stderr)
    return 1 if report.failed else 0


def doctor_checks(report, store) -> None:
    """The copy store reachable and writable; each S3 store's lock and versioning settings
    against BACKUP_OBJECT_LOCK_MODE."""
    from backup_pipelines.lib.store.copy import copy_store_from_env

    stores = [("store", store)] if store is not None else []
    try:
        target = copy_store_from_env()
    except ConfigError as exc:
        report("copy store", False, str(exc))
        target = None
    if target is None and not os.environ.get("BACKUP_COPY_STORE_URL"):
        print("--   copy store   BACKUP_COPY_STORE_URL not set: no second copy")
    elif target is not None:
        try:
            target.check_writable()
            report("copy store", True, f"{target.describe()} is writable")
            stores.append(("copy store", target))
        except BackupError as exc:
            report("copy store", False, str(exc))
    for name, each in stores:
        _lock_check(report, f"{name} lock", each)


def _lock_check(report, name: str, store) -> None:
    from backup_pipelines.lib.store import S3Store
    from backup_pipelines.lib.store.s3 import lock_problems, object_lock_from_env

    try:
        wanted = object_lock_from_env()
    except ConfigError as exc:
        report(name, False, str(exc))
        return
    if not isinstance(store, S3Store):
        if wanted is not None:
            report(name, False, f"BACKUP_OBJECT_LOCK_MODE is set but {store.describe()} is not "
                   "S3: a folder has no Object Lock (use a WORM file system or an S3 bucket)")  # fmt: skip
        return
    try:
        settings = store.lock_settings()
    except BackupError as exc:
        report(name, False, str(exc))
        return
    problems = lock_problems(settings, wanted)
    state = f"versioning {settings['versioning']}, Object Lock {settings['object_lock']}; " + (
        f"new objects locked {wanted.describe()}" if wanted else "no lock configured"
    )
    report(name, not problems, "; ".join(problems) if problems else state)
