"""The local demo (`make demo`): start the local stack, seed three workspaces, back up the
last completed day of every asset for every workspace through Dagster — the discovery sensor
and the schedules' own run requests, executed like the daemon would — verify every artifact,
print a summary, and stop what it started.

Honours BACKUP_STORE_URL when set; otherwise uses the local folder it names (.demo/store).
DEMO_S3=1 puts the artifacts in a local S3 endpoint (moto) instead.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import UTC, datetime

from backup_pipelines.devstack.stack import (
    DEMO_WORKSPACES,
    PROJECT_ROOT,
    LocalStack,
    prepare_dagster_home,
)


def run_backups_like_the_daemon(defs, instance) -> list[tuple[str, str, bool]]:
    """Evaluate the discovery sensor, then every schedule, and execute their run requests."""
    import dagster as dg

    sensor = defs.resolve_sensor_def("workspace_discovery_sensor")
    with dg.build_sensor_context(
        instance=instance, definitions=defs, resources=defs.resources
    ) as context:
        result = sensor(context)  # the daemon applies the partition requests before the runs
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    outcomes = []
    now = datetime.now(UTC)
    for schedule_name in ("postgres_full_backup_daily", "workspace_backup_daily"):
        schedule = defs.resolve_schedule_def(schedule_name)
        with dg.build_schedule_context(
            instance=instance,
            scheduled_execution_time=now,
            resources=defs.resources,  # the workspace schedule asks the SQL registry
            repository_def=defs.get_repository_def(),
        ) as context:
            data = schedule.evaluate_tick(context)
        job = defs.resolve_job_def(schedule.job_name)
        for request in data.run_requests or []:
            started = time.monotonic()
            run = job.execute_in_process(
                instance=instance,
                partition_key=request.partition_key,
                tags=request.tags,
                raise_on_error=False,
            )
            print(
                f"  {job.name} {request.partition_key}: {'ok' if run.success else 'FAILED'} in {time.monotonic() - started:.1f} s"
            )
            outcomes.append((job.name, request.partition_key, run.success))
    return outcomes


def run_monitoring_like_the_daemon(defs, instance) -> list[tuple[str, str, bool]]:
    """One RPO sensor tick (its rpo_met checks recorded as the daemon does), then the restore
    drill and the health report."""
    import dagster as dg

    sensor = defs.resolve_sensor_def("rpo_sensor")
    with dg.build_sensor_context(
        instance=instance, definitions=defs, resources=defs.resources
    ) as context:
        result = sensor(context)
    outcomes = []
    for evaluation in result.asset_events:
        instance.report_runless_asset_event(evaluation)
        if not isinstance(evaluation, dg.AssetCheckEvaluation):  # the health report it records
            continue
        name = f"{evaluation.asset_key.to_user_string()}:rpo_met"
        print(f"  {name}: {'passed' if evaluation.passed else 'FAILED'} ({evaluation.description})")
        outcomes.append(("rpo_sensor", name, evaluation.passed))
    for job_name in ("restore_drill_job", "backup_health_report_job"):
        started = time.monotonic()
        run = defs.resolve_job_def(job_name).execute_in_process(
            instance=instance, raise_on_error=False
        )
        print(
            f"  {job_name}: {'ok' if run.success else 'FAILED'} in {time.monotonic() - started:.1f} s"
        )
        for event in run.get_asset_materialization_events():
            metadata = event.materialization.metadata
            shown = {k: v.value for k, v in metadata.items() if isinstance(v.value, int | float)}
            print(f"    {event.asset_key.to_user_string()}: {shown}")
        outcomes.append((job_name, "", run.success))
    return outcomes


def summarize(store) -> tuple[int, bool]:
    total_bytes = count = 0
    all_ok = True
    for ref in sorted(store.list_artifacts()):
        manifest = store.read_manifest(ref)
        check = store.verify(ref)
        all_ok &= check.ok
        size = sum(f["bytes"] for f in manifest["files"])
        total_bytes += size
        count += 1
        status = "verified" if check.ok else "CORRUPT "
        print(f"  {status} {ref}  {size:>12,} bytes  {describe_counts(manifest['counts'])}")
    print(f"{count} artifacts, {total_bytes:,} bytes in {store.describe()}")
    return count, all_ok


def describe_counts(counts: dict) -> str:
    if "documents" in counts:
        return f"{counts['documents']:,} documents"
    if "points" in counts:
        return f"{counts['points']:,} points"
    return f"{sum(counts.get('rows', {}).values()):,} rows"


def main() -> int:
    demo_dir = PROJECT_ROOT / ".demo"
    use_s3 = os.environ.get("DEMO_S3") == "1" and not os.environ.get("BACKUP_STORE_URL")
    store_url = os.environ.get("BACKUP_STORE_URL") or (
        None if use_s3 else f"file://{demo_dir / 'store'}"
    )
    started = time.monotonic()
    with LocalStack(with_s3=use_s3) as stack:
        seeded = stack.seed(DEMO_WORKSPACES)
        print(f"local stack up and seeded in {time.monotonic() - started:.1f} s: {seeded}")
        os.environ.update(stack.env(store_url))
        os.environ["DAGSTER_HOME"] = str(prepare_dagster_home(demo_dir / "dagster_home"))

        import dagster as dg

        from backup_pipelines.definitions import build_definitions

        defs = build_definitions()
        with dg.DagsterInstance.get() as instance:
            print("backing up the last completed day through Dagster:")
            outcomes = run_backups_like_the_daemon(defs, instance)
            print("checking the RPO, drilling a restore, reporting health:")
            outcomes += run_monitoring_like_the_daemon(defs, instance)
        store = defs.resources["backup_store"].get_store()
        count, verified = summarize(store)
    failed = [o for o in outcomes if not o[2]]
    print(f"demo finished in {time.monotonic() - started:.1f} s; the local stack is stopped")
    if failed or not verified or count < 1 + 3 * len(DEMO_WORKSPACES):
        print(
            f"DEMO FAILED: {len(failed)} failed run(s), verified={verified}, artifacts={count}",
            file=sys.stderr,
        )
        return 1
    print(where_artifacts_are(store, demo_s3=use_s3))
    return 0


def where_artifacts_are(store, demo_s3: bool) -> str:
    """The demo's last line: where its artifacts are, and whether they outlive it (the demo's
    own S3 endpoint is an in-memory moto server, stopped with the stack)."""
    from backup_pipelines.lib.store import LocalStore

    if isinstance(store, LocalStore):
        return f"artifacts kept in {store.describe()} (local folder)"
    if demo_s3:
        return (
            f"artifacts were written to {store.describe()} on the demo's S3 endpoint (moto, "
            "in memory), stopped with the stack: set BACKUP_STORE_URL to keep them"
        )
    return f"artifacts kept in {store.describe()} (S3 bucket)"


if __name__ == "__main__":
    sys.exit(main())
