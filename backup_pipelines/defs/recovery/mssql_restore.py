"""SQL Server restore jobs: the database to a point in time (planned from the store's catalog
alone), and one agent back across SQL Server and Qdrant to the instant of its Qdrant snapshot.

The agent restore is partitioned like the backups (date x workspace, the workspace being the
agent id), so an on-call engineer restores agents by launching a backfill, with the same run
tags as the PostgreSQL workspace restore: `restore/dry_run`, `restore/override_gate`.
"""

from datetime import UTC, datetime

import dagster as dg

from backup_pipelines.defs.artifacts import run_owner
from backup_pipelines.defs.partitions import daily_by_workspace, date_and_workspace
from backup_pipelines.defs.recovery.restore import DRY_RUN_TAG, OVERRIDE_TAG
from backup_pipelines.defs.resources import index_clients
from backup_pipelines.lib.engines import index_engine
from backup_pipelines.lib.errors import BackupError
from backup_pipelines.lib.mssql import agent, restore


class PointInTimeConfig(dg.Config):
    target_time: str = ""  # ISO 8601 with a zone; empty: the newest reachable instant
    target_database: str = ""  # default: <database>_restored_<stamp>, a new database
    overwrite_live: bool = False  # restore over the live database itself: explicit only
    dry_run: bool = False  # show the plan only


def parse_time(value: str) -> datetime | None:
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise dg.Failure(f"target_time {value!r} is not an ISO 8601 time") from exc
    if moment.tzinfo is None:
        raise dg.Failure(f"target_time {value!r} has no time zone (e.g. +00:00)")
    return moment.astimezone(UTC)


def build_mssql_restore_jobs(index_stores: set[str]) -> list[dg.JobDefinition]:
    @dg.op(required_resource_keys={"mssql", "backup_store"})
    def restore_database_to_point(context: dg.OpExecutionContext, config: PointInTimeConfig):
        mssql = context.resources.mssql
        try:
            result = restore.restore_database(
                mssql.connection_string,
                context.resources.backup_store.get_store(),
                mssql.database(),
                parse_time(config.target_time),
                mssql.folders(),
                config.target_database or None,
                config.overwrite_live,
                dry_run=config.dry_run,
                log=context.log.info,
                lease_owner=run_owner(context),
            )
        except BackupError as exc:
            raise dg.Failure(description=str(exc), allow_retries=False) from None
        context.add_output_metadata(
            {
                "database": dg.MetadataValue.text(result["database"]),
                "restored_to": dg.MetadataValue.text(result["restored_to"]),
                "plan": dg.MetadataValue.md("\n".join(f"    {line}" for line in result["plan"])),
                "seconds": dg.MetadataValue.float(result.get("seconds", 0.0)),
            }
        )
        return result

    @dg.job(
        name="mssql_point_in_time_restore_job",
        description="SQL Server to a point in time: full + diff + logs WITH STOPAT, into a new "
        "database by default; the plan (every file and the chosen instant) is in the metadata.",
        tags={"restore": "mssql"},
    )
    def mssql_point_in_time_restore_job():
        restore_database_to_point()

    jobs = [mssql_point_in_time_restore_job]
    if "qdrant" in index_stores:
        jobs.append(build_agent_restore_job())
    return jobs


def build_agent_restore_job() -> dg.JobDefinition:
    @dg.op(required_resource_keys={"mssql", "backup_store", "policy", "qdrant"})
    def restore_one_agent(context: dg.OpExecutionContext):
        date, agent_id = date_and_workspace(context.partition_key)
        tags = context.run.tags
        mssql = context.resources.mssql
        with index_clients(context.resources, ["qdrant"]) as clients:
            try:
                report = agent.restore_agent(
                    mssql.connection_string,
                    context.resources.backup_store.get_store(),
                    mssql.database(),
                    agent_id,
                    date,
                    mssql.folders(),
                    index_engine("qdrant"),
                    clients["qdrant"],
                    context.resources.policy.load(),
                    dry_run=tags.get(DRY_RUN_TAG, "").lower() in {"1", "true", "yes"},
                    override_gate=tags.get(OVERRIDE_TAG, ""),
                    log=context.log.info,
                    lease_owner=run_owner(context),
                )
            except agent.AgentGateRefused as exc:
                raise dg.Failure(
                    description=f"restore refused, nothing written: {exc.verdict.summary()}",
                    metadata={"evidence": dg.MetadataValue.json(exc.verdict.to_dict())},
                    allow_retries=False,
                ) from None
            except BackupError as exc:  # e.g. another restore of the agent holds its lease
                raise dg.Failure(description=str(exc), allow_retries=False) from None
        context.add_output_metadata(
            {
                "restored_to": dg.MetadataValue.text(report.target),
                "verdict": dg.MetadataValue.text(report.verdict),
                "rows": dg.MetadataValue.json(report.rows),
                "qdrant": dg.MetadataValue.json(report.qdrant),
                "plan": dg.MetadataValue.md("\n".join(f"    {line}" for line in report.plan)),
                "seconds": dg.MetadataValue.json(report.seconds),
            }
        )

    @dg.job(
        name="agent_restore_job",
        partitions_def=daily_by_workspace,
        description="One agent (SQL Server rows + its Qdrant collection) back to the instant of "
        "its Qdrant snapshot of that date; refuses when they disagree; other agents untouched.",
        tags={"restore": "agent"},
    )
    def agent_restore_job():
        restore_one_agent()

    return agent_restore_job
