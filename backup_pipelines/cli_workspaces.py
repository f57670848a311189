"""The workspace commands of `backup-pipelines` (added to cli.py's parser):

backup-pipelines workspaces list                   # Dagster's workspaces, SQL's, the store's
backup-pipelines workspaces remove W [W ...] [--force]
backup-pipelines list --restorable [--workspace W] # restorable dates per workspace (the store)

`workspaces` manages the `workspaces` dynamic partitions through the Dagster instance
(DAGSTER_HOME); the SQL registry (DATABASE_URL) and the store say what each one is. A
partition is removed only when SQL no longer lists it (discovery would add it back) and the
store holds no backup of it (restoring those from the UI needs the partition): `--force`
removes one with backups all the same (they stay in the store, under the retention policy,
and `backup-pipelines restore workspace` still restores them).
"""

from __future__ import annotations

import os
import sys

from backup_pipelines.lib.errors import BackupError, ConfigError
from backup_pipelines.lib.recovery import catalog as catalog_lib

PARTITIONS = "workspaces"  # defs/partitions.py: the dynamic partitions def's name


def _instance():
    """Dagster's instance of DAGSTER_HOME (its storage holds the dynamic partitions)."""
    if not os.environ.get("DAGSTER_HOME"):
        raise ConfigError(
            "DAGSTER_HOME is not set: workspaces are Dagster's dynamic partitions; point it at "
            "the instance folder (make dev: .dagster_home; production: the folder holding the "
            "dagster.yaml of the webserver and daemon)"
        )
    import dagster as dg

    return dg.DagsterInstance.get()


def _in_sql() -> set[str] | None:
    """What the SQL registry lists, or None when this deployment has no PostgreSQL source."""
    database_url = os.environ.get("DATABASE_URL")
    if not database_url:
        return None
    from backup_pipelines.lib.policy import load_policy
    from backup_pipelines.lib.postgres.catalog import list_workspaces

    valid, _invalid = list_workspaces(database_url, load_policy())
    return set(valid)


def required_assets() -> list[str]:
    """What a workspace restore of this deployment needs: the SQL dump and each index's."""
    from backup_pipelines.lib.engines import configured_engines

    sql = [catalog_lib.SQL_ASSET] if os.environ.get("DATABASE_URL") else []
    return sql + [engine.asset for engine in configured_engines()]


def _catalog(store) -> catalog_lib.Catalog:
    return catalog_lib.build_catalog(store, required_assets(), ["postgres/full_dump"])


def _state(workspace: str, in_sql: set[str] | None, catalog: catalog_lib.Catalog) -> str:
    if in_sql is None:
        return "?"
    if in_sql is not None and workspace in in_sql:
        return "active"
    return "vanished from SQL" if catalog.dates(workspace) else "never in SQL (remove it?)"


def cmd_workspaces_list(args, store) -> int:
    known = set(_instance().get_dynamic_partitions(PARTITIONS))
    in_sql = _in_sql()
    catalog = _catalog(store)
    print(f"{'workspace':<28} {'state':<28} {'dates':>5}  newest restorable")
    for workspace in sorted(known | (in_sql or set())):
        if workspace not in known:
            state = "new in SQL (discovery adds it)"
        else:
            state = _state(workspace, in_sql, catalog)
        newest = catalog.newest_restorable(workspace) or ""
        print(f"{workspace:<28} {state:<28} {len(catalog.dates(workspace)):>5}  {newest}")
    print(
        f"{len(known)} workspace partition(s)"
        + ("" if in_sql is not None else " (DATABASE_URL not set: SQL not consulted)")
    )
    return 0


def cmd_workspaces_remove(args, store) -> int:
    instance = _instance()
    known = set(instance.get_dynamic_partitions(PARTITIONS))
    in_sql = _in_sql()
    catalog = _catalog(store)
    refused = 0
    for workspace in args.workspace:
        reason = _refusal(workspace, known, in_sql, catalog, args.force)
        if reason:
            refused += 1
            print(f"refused: {workspace}: {reason}", file=sys.stderr)
            continue
        instance.delete_dynamic_partition(PARTITIONS, workspace)
        held = len(catalog.dates(workspace))
        print(
            f"removed partition {workspace}"
            + (
                f"; its {held} backed-up date(s) stay in {store.describe()} (retention applies; "
                f"`backup-pipelines restore workspace --workspace {workspace}` restores them)"
                if held
                else ""
            )
        )
    return 1 if refused else 0


def _refusal(workspace, known, in_sql, catalog, force: bool) -> str:
    if workspace not in known:
        return f"no such workspace partition (known: {len(known)}; `workspaces list`)"
    if in_sql is None and not force:
        return "DATABASE_URL is not set: cannot tell whether SQL still lists it (--force)"
    if in_sql is not None and workspace in in_sql:
        return "SQL still lists it: the discovery sensor would add it back; delete it there first"
    dates = catalog.dates(workspace)
    if dates and not force:
        return (
            f"the store holds backups of it ({len(dates)} date(s), newest {dates[0].date}); "
            "restoring them from the UI needs the partition. --force removes it anyway (the "
            "backups stay and the command line restores them)"
        )
    return ""


def cmd_list_restorable(args, store) -> int:
    catalog = _catalog(store)
    workspaces = [args.workspace] if args.workspace else catalog.workspaces()
    for workspace in workspaces:
        points = catalog.dates(workspace)
        print(f"{workspace}: {len(catalog.restorable_dates(workspace))} restorable date(s)")
        for point in points:
            print(f"  {catalog_lib.describe_point(point, catalog.required)}")
        if not points:
            print("  none")
    if not args.workspace:
        dumps = catalog.dates(catalog_lib.WHOLE_DATABASE)
        print(f"(whole database): {len(dumps)} full dump(s)")
        for point in dumps:
            print(f"  {point.date}" + (", kept" if point.kept else ""))
    return 0


def run(command):
    """Our errors are printed by cli.main; a Dagster storage error is reported as such."""

    def wrapped(args) -> int:
        from backup_pipelines.cli import _store

        try:
            return command(args, _store())
        except BackupError:
            raise
        except Exception as exc:  # the Dagster instance unreachable, its storage refusing
            if type(exc).__module__.startswith(("dagster", "sqlalchemy")):
                print(f"error: Dagster's instance: {type(exc).__name__}: {exc}", file=sys.stderr)
                return 1
            raise

    return wrapped


def add_commands(commands, workspace_argument) -> None:
    group = commands.add_parser(
        "workspaces", help="Dagster's workspace partitions: list, remove"
    ).add_subparsers(dest="workspaces_command", required=True)
    group.add_parser(
        "list", help="each workspace partition: in SQL, vanished or never registered; backups"
    ).set_defaults(run=run(cmd_workspaces_list))
    remove = group.add_parser(
        "remove", help="remove workspace partitions SQL no longer lists (a typo, a deletion)"
    )
    remove.add_argument("workspace", nargs="+", type=workspace_argument)
    remove.add_argument(
        "--force", action="store_true", help="remove even when the store holds backups of it"
    )
    remove.set_defaults(run=run(cmd_workspaces_remove))
