"""Benchmark: one tick of the RPO sensor with 1,000 workspaces and every per-workspace backup
asset (postgres/workspace_dump, typesense/collection_export, qdrant/collection_snapshot) plus
the whole-database dump. Aim: under 10 s (Dagster stops a sensor tick at 60 s).

Set-up (not timed): a store holding the last 3 days of artifacts of every workspace (5% of
workspaces missed last night), a SQLite Dagster instance with the 1,000 `workspaces`
partitions and the matching materializations in its event log, and a real HTTP receiver for
the alerts. Then times the first tick (every late workspace alerted; a code server just
started, so every newest manifest is read) and a second tick (state from the cursor, nothing
re-sent; captured_at of unchanged manifests known from the first), each in this process, and
prints the ratio to the aim.

    .venv/bin/python bench/bench_rpo_sensor.py [--workspaces 1000] [--store local|s3]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backup_pipelines.defs.monitoring import rpo as rpo_defs
from backup_pipelines.defs.resources import (
    BackupStoreResource,
    PolicyResource,
    WorkspaceRegistryResource,
)
from backup_pipelines.lib.store import MANIFEST_NAME, ArtifactRef, store_from_url
from backup_pipelines_tests.alert_receiver import AlertReceiver

AIM_SECONDS = 10.0
WORKSPACE_ASSETS = [
    "postgres/workspace_dump",
    "typesense/collection_export",
    "qdrant/collection_snapshot",
]
ASSETS = ["postgres/full_dump", *WORKSPACE_ASSETS]
DAYS = 3
MISSED_EVERY = 20  # one workspace in 20 missed last night


def manifest(ref: ArtifactRef, captured: datetime) -> bytes:
    generation = f"g-{captured:%Y%m%dT%H%M%S}-00000000"
    return json.dumps(
        {
            "format_version": 1,
            "asset": ref.asset,
            "partition": ref.partition,
            "created_at": captured.isoformat(),
            "captured_at": captured.isoformat(),
            "generation": generation,
            "files": [
                {
                    "name": "data",
                    "path": f"{generation}/data",
                    "bytes": 4,
                    "sha256": hashlib.sha256(b"data").hexdigest(),
                }
            ],
            "counts": {"rows": {}},
            "tables": [],
            "source": {},
            "tool": {"name": "bench"},
        }
    ).encode()


def populate_store(store, workspaces: list[str], now: datetime) -> int:
    """Manifests plus one data file per artifact, written straight through the backend (a
    committed artifact's layout, without 9,000 fsyncs of set-up)."""
    written = 0
    for back in range(1, DAYS + 1):
        day = (now - timedelta(days=back)).date().isoformat()
        captured = now.replace(hour=1, minute=15) - timedelta(days=back - 1)
        for asset in ASSETS:
            owners = [None] if asset == "postgres/full_dump" else workspaces
            for n, workspace in enumerate(owners):
                if back == 1 and n % MISSED_EVERY == 0 and workspace is not None:
                    continue  # missed last night
                ref = ArtifactRef(asset, day, workspace)
                body = manifest(ref, captured)
                generation = json.loads(body)["generation"]
                store._put_atomic(f"{ref.folder}/{generation}/data", b"data")
                store._put_atomic(f"{ref.folder}/{MANIFEST_NAME}", body)
                written += 1
    return written


def populate_history(instance, workspaces: list[str], now: datetime) -> int:
    """The event log Dagster would hold: a materialization per committed partition."""
    reported = 0
    for back in range(1, DAYS):
        day = (now - timedelta(days=back)).date().isoformat()
        for asset in WORKSPACE_ASSETS:
            key = dg.AssetKey(asset.split("/"))
            for n, workspace in enumerate(workspaces):
                if back == 1 and n % MISSED_EVERY == 0:
                    continue
                instance.report_runless_asset_event(
                    dg.AssetMaterialization(key, partition=f"{day}|{workspace}")
                )
                reported += 1
        instance.report_runless_asset_event(
            dg.AssetMaterialization(dg.AssetKey(["postgres", "full_dump"]), partition=day)
        )
    return reported


def timed_tick(sensor, instance, resources, cursor):
    started = time.perf_counter()
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
        result = sensor(context)
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workspaces", type=int, default=1000)
    parser.add_argument("--store", choices=["local", "s3"], default="local")
    args = parser.parse_args()
    now = datetime.now(UTC)
    workspaces = [f"ws_{n:05d}" for n in range(args.workspaces)]
    receiver = AlertReceiver().start()
    os.environ["ALERT_WEBHOOK_URL"] = f"{receiver.url}/hook"
    with contextlib.ExitStack() as stack:  # every server started is stopped, whatever happens
        stack.callback(receiver.stop)
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-rpo-"))
        instance = stack.enter_context(dg.instance_for_test(temp_dir=tmp))
        if args.store == "s3":
            from backup_pipelines.devstack.s3_server import S3Server

            s3 = stack.enter_context(S3Server(bucket="bench-rpo"))
            os.environ.update(s3.env)
            url = "s3://bench-rpo/backups"
        else:
            url = f"file://{tmp}/store"
        store = store_from_url(url)
        started = time.perf_counter()
        artifacts = populate_store(store, workspaces, now)
        instance.add_dynamic_partitions("workspaces", workspaces)
        events = populate_history(instance, workspaces, now)
        print(
            f"set-up: {artifacts:,} artifacts in a {args.store} store, {events:,} "
            f"materializations, {len(workspaces):,} workspaces ({time.perf_counter() - started:.1f} s)"
        )
        resources = {
            "backup_store": BackupStoreResource(url=url),
            "policy": PolicyResource(),
            # No SQL source: every known workspace is held to the RPO.
            "workspace_registry": WorkspaceRegistryResource(),
        }
        sensor = rpo_defs.build_rpo_sensor(ASSETS)
        first, result = timed_tick(sensor, instance, resources, None)
        late = sum(e.metadata["workspaces_late"].value for e in result.asset_events)
        second, _ = timed_tick(sensor, instance, resources, result.cursor)
        subjects = len(WORKSPACE_ASSETS) * len(workspaces) + 1
        print(f"asset x workspace evaluated per tick: {subjects:,}; late: {late}")
        print(f"alerts received by the webhook: {len(receiver.webhook)} (first tick)")
        print(f"cursor size: {len(result.cursor):,} bytes")
        for name, seconds in (("first tick (cold)", first), ("second tick (steady)", second)):
            verdict = "PASS" if seconds < AIM_SECONDS else "MISS"
            print(
                f"{name}: {seconds:.2f} s = {seconds / AIM_SECONDS:.3f} x the {AIM_SECONDS:.0f} s "
                f"aim ({verdict})"
            )


if __name__ == "__main__":
    main()
