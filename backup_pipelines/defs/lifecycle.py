"""Retention: prune the backup store by policy once a day (lib/lifecycle/retention.py decides).

Dry run (plan and report, delete nothing): op config `dry_run: true`, or the run tag
`retention/dry_run=true` from the launchpad; either one is enough.
"""

from datetime import UTC, datetime

import dagster as dg

from backup_pipelines.lib.lifecycle import retention
from backup_pipelines.lib.scratch import sweep_work_dir

DRY_RUN_TAG = "retention/dry_run"
TRUE_VALUES = {"1", "true", "yes"}
FALSE_VALUES = {"0", "false", "no", ""}
MAX_TABLE_ROWS = 100  # the run page stays readable; deletions are all in the run's logs
# Always every key (zeros too), so the values plot alike from run to run.
REASON_KEYS = {
    retention.DAILY: "kept_daily",
    retention.WEEKLY: "kept_weekly",
    "kept": "kept_by_marker",
    retention.NEWEST_VERIFIED: "kept_newest_verified",
    retention.HELD_UNVERIFIED: "kept_held_unverified",
}


class RetentionConfig(dg.Config):
    dry_run: bool = False


def dry_run_of(context: dg.OpExecutionContext, config: RetentionConfig) -> bool:
    tag = context.run.tags.get(DRY_RUN_TAG, "").strip().lower()
    if tag not in TRUE_VALUES | FALSE_VALUES:
        raise dg.Failure(f"run tag {DRY_RUN_TAG}={tag!r} is not true or false")
    return config.dry_run or tag in TRUE_VALUES


def _markdown_table(rows: list[dict], columns: list[str], total: int) -> str:
    if not rows:
        return "_nothing_"
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in rows]
    if total > len(rows):
        lines.append(f"\n… and {total - len(rows)} more (see the run's logs)")
    return "\n".join(lines)


def _decisions_table(plan: retention.RetentionPlan) -> str:
    """Asset, partition, decision and reason of each artifact: deletions first, then what is
    kept (the run's logs hold every line when there are more)."""
    ordered = sorted(plan.decisions(), key=lambda a: a.keep)
    rows = [
        {
            "asset": a.asset,
            "partition": a.where,
            "decision": a.decision,
            "reason": a.why,
            "size": retention.human_bytes(a.bytes),
        }
        for a in ordered[:MAX_TABLE_ROWS]
    ]
    return _markdown_table(
        rows, ["asset", "partition", "decision", "reason", "size"], len(plan.artifacts)
    )


def _leftovers_table(plan: retention.RetentionPlan) -> str:
    rows = [
        {
            "kind": x.kind,
            "key": x.key,
            "size": retention.human_bytes(x.bytes),
            "age": f"{x.age_hours:.0f} h",
        }
        for x in plan.leftovers[:MAX_TABLE_ROWS]
    ]
    return _markdown_table(rows, ["kind", "key", "size", "age"], len(plan.leftovers))


def _metadata(
    plan: retention.RetentionPlan, result: retention.ApplyResult | None, dry_run: bool
) -> dict:
    reasons = plan.reason_counts()
    return {
        "dry_run": dg.MetadataValue.bool(dry_run),
        "today": dg.MetadataValue.text(plan.today.isoformat()),
        "artifacts_kept": dg.MetadataValue.int(len(plan.kept)),
        "artifacts_to_delete": dg.MetadataValue.int(len(plan.to_delete)),
        "artifacts_deleted": dg.MetadataValue.int(len(result.deleted) if result else 0),
        "not_deleted_object_lock": dg.MetadataValue.json(
            [f"{retention.label(ref)} until {until}" for ref, until in result.locked[:200]]
            if result
            else []
        ),
        **{
            key: dg.MetadataValue.int(reasons.get(reason, 0)) for reason, key in REASON_KEYS.items()
        },
        "leftovers_found": dg.MetadataValue.int(len(plan.leftovers)),
        "leftovers_cleaned": dg.MetadataValue.int(result.leftovers_cleaned if result else 0),
        "bytes_to_free": dg.MetadataValue.int(plan.bytes_to_free),
        "bytes_freed": dg.MetadataValue.int(result.bytes_freed if result else 0),
        **_listing_metadata(plan.listing),
        "artifacts_verified": dg.MetadataValue.int(plan.verifications),
        "artifacts_trusted": dg.MetadataValue.int(plan.trusted),  # verified earlier, unchanged
        "failed_verification": dg.MetadataValue.json([str(r) for r in plan.failed_verification]),
        "keep_markers": dg.MetadataValue.int(len(plan.markers)),
        "by_asset": dg.MetadataValue.json(plan.by_asset()),
        "decisions": dg.MetadataValue.md(_decisions_table(plan)),
        "leftovers": dg.MetadataValue.md(_leftovers_table(plan)),
    }


def _listing_metadata(listed: retention.StoreListing | None) -> dict:
    if listed is None:
        return {}
    found = {
        "store_listing": dg.MetadataValue.text(listed.describe()),
        "store_listing_seconds": dg.MetadataValue.float(round(listed.total_seconds, 3)),
    }
    if listed.disk_bytes is not None:
        found["store_listing_disk_read_bytes"] = dg.MetadataValue.int(listed.disk_bytes)
    return found


def _prune_copy_store(context, primary, today, dry_run: bool, metadata: dict) -> list[str]:
    """The copy store (BACKUP_COPY_STORE_URL) pruned by the same policy, held by the
    primary's keep markers and leases; its figures added to `metadata` as copy_*."""
    from backup_pipelines.lib.store.copy import copy_store_from_env

    copy = copy_store_from_env()
    if copy is None:
        return []
    context.log.info(f"retention of the copy store {copy.describe()}")
    plan, result = retention.run_retention(
        copy, context.resources.policy.load(), today, dry_run=dry_run,
        log=context.log.info, control=primary,
    )  # fmt: skip
    metadata["copy_store"] = dg.MetadataValue.text(copy.describe())
    metadata["copy_kept"] = dg.MetadataValue.int(len(plan.kept))
    metadata["copy_to_delete"] = dg.MetadataValue.int(len(plan.to_delete))
    if result is None:
        return []
    metadata["copy_deleted"] = dg.MetadataValue.int(len(result.deleted))
    metadata["copy_not_deleted_object_lock"] = dg.MetadataValue.int(len(result.locked))
    return result.errors


@dg.op(required_resource_keys={"backup_store", "policy"})
def apply_retention(context: dg.OpExecutionContext, config: RetentionConfig) -> dict:
    """Plan retention for today's UTC date, log it, and apply it unless dry run."""
    dry_run = dry_run_of(context, config)
    store = context.resources.backup_store.get_store()
    today = datetime.now(UTC).date()
    plan, result = retention.run_retention(
        store, context.resources.policy.load(), today, dry_run=dry_run, log=context.log.info
    )
    for ref in plan.failed_verification:
        context.log.warning(f"artifact {ref} failed verification (see the log above)")
    metadata = _metadata(plan, result, dry_run)
    if not dry_run:  # the daily janitor of this machine's work folder too
        metadata["work_dir_freed_bytes"] = dg.MetadataValue.int(sweep_work_dir(context.log.info))
    copy_errors = _prune_copy_store(context, store, today, dry_run, metadata)
    context.add_output_metadata(metadata)
    if copy_errors:
        raise dg.Failure(
            description=f"{len(copy_errors)} deletions in the copy store failed: "
            + "; ".join(copy_errors[:5]),
            metadata=metadata,
        )
    if result is not None and result.errors:
        raise dg.Failure(
            description=f"{len(result.errors)} deletions failed: " + "; ".join(result.errors[:5]),
            metadata=_metadata(plan, result, dry_run),
        )
    return {
        "today": today.isoformat(),
        "dry_run": dry_run,
        "kept": len(plan.kept),
        "to_delete": [str(a) for a in plan.to_delete],
        "deleted": [retention.label(r) for r in result.deleted] if result else [],
    }


@dg.job(
    name="retention_job",
    description="Delete backups the retention policy no longer keeps (daily, weekly, keep "
    "markers, newest verified) and the leftovers of crashed runs. Tag "
    f"{DRY_RUN_TAG}=true to only report.",
    tags={"retention": "daily"},
)
def retention_job():
    apply_retention()


retention_schedule = dg.ScheduleDefinition(
    name="retention_daily",
    job=retention_job,
    cron_schedule="30 3 * * *",  # after the 01:00/01:15 backups have had time to finish
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)

defs = dg.Definitions(jobs=[retention_job], schedules=[retention_schedule])
