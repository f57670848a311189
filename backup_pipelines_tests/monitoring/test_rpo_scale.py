"""The RPO tick reading the store by listings and the captured-at catalog (issue 16), on both
back ends: still truthful about re-runs, deletions and damaged catalogs; each manifest read
once, also across a code-server restart; bounded reads give lower-bound ages."""

from __future__ import annotations

import inspect
import json
import os
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest
import zstandard

from backup_pipelines.defs import backups
from backup_pipelines.defs.monitoring import health
from backup_pipelines.defs.monitoring import rpo as rpo_defs
from backup_pipelines.defs.resources import (
    BackupStoreResource,
    PolicyResource,
    WorkspaceRegistryResource,
)
from backup_pipelines.lib.monitoring import catalog, rpo
from backup_pipelines.lib.store import MANIFEST_NAME, ArtifactRef, LocalStore

WORKSPACE_DUMP = "postgres/workspace_dump"
NOW = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)


def commit(store, captured: datetime, workspace: str, day: str | None = None) -> ArtifactRef:
    """A committed workspace dump representing `captured` (the daily partition of the day
    before, as the schedule writes it, unless `day` is given)."""
    day = day or (captured - timedelta(days=1)).date().isoformat()
    ref = ArtifactRef(WORKSPACE_DUMP, day, workspace)
    with store.begin(ref) as writer:
        writer.write_bytes("rows.copy.zst", b"data")
        writer.commit(
            captured_at=captured.isoformat(),
            counts={"rows": {}},
            source={},
            tool={"name": "t"},
            tables=[],
        )
    return ref


def record(instance, ref: ArtifactRef) -> None:
    """Dagster's record of the materialization (the run history the store must agree with)."""
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            dg.AssetKey(ref.asset.split("/")), partition=f"{ref.date}|{ref.workspace}"
        )
    )


class CountingReads:
    """Counts manifest reads of one store (instrumentation of the real store, not a fake)."""

    def __init__(self, store, monkeypatch) -> None:
        self.count = 0
        original = type(store).read_manifest

        def counted(this, ref):
            if this.describe() == store.describe():
                self.count += 1
            return original(this, ref)

        monkeypatch.setattr(type(store), "read_manifest", counted)


@pytest.fixture
def setting(store, monkeypatch):
    """A store (local folder or S3), an instance knowing two workspaces, the clock at NOW, and
    a code server that has read nothing yet."""
    monkeypatch.setattr(rpo_defs, "utc_now", lambda: NOW)
    catalog.forget()
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("workspaces", ["ws_fresh", "ws_missed"])
        resources = {
            "backup_store": BackupStoreResource(url=store.describe()),
            "policy": PolicyResource(),
            "workspace_registry": WorkspaceRegistryResource(),  # no SQL source: all are held
        }
        yield store, instance, resources
    catalog.forget()


def tick(instance, resources, cursor=None):
    sensor = rpo_defs.build_rpo_sensor([WORKSPACE_DUMP])
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
        result = sensor(context)
    (evaluation,) = result.asset_events
    return result, evaluation


def late_rows(evaluation) -> dict[str, dict]:
    return {row["workspace"]: row for row in evaluation.metadata["late_workspaces"].value}


def test_rpo_tick_by_listing_reports_a_rerun_partition_and_a_deleted_artifact(
    setting, alert_receiver
):
    store, instance, resources = setting
    fresh = commit(store, NOW - timedelta(hours=2), "ws_fresh")
    missed = commit(store, NOW - timedelta(hours=30), "ws_missed")
    record(instance, fresh)
    record(instance, missed)
    result, evaluation = tick(instance, resources)
    assert set(late_rows(evaluation)) == {"ws_missed"}
    assert [(p["kind"], p["workspace"]) for p in alert_receiver.webhook] == [
        ("rpo_breach", "ws_missed")
    ]

    # The same partition re-run: a new manifest of the same folder, read again (also by a
    # restarted code server, which starts from the catalog object the first tick saved).
    commit(store, NOW - timedelta(hours=1), "ws_missed", day=missed.date)
    catalog.forget()
    result, evaluation = tick(instance, resources, result.cursor)
    assert evaluation.passed and late_rows(evaluation) == {}
    assert alert_receiver.webhook[-1]["kind"] == "rpo_recovered"

    # ws_fresh's artifact deleted from the store while Dagster still records it.
    store.delete_artifact(fresh)
    result, evaluation = tick(instance, resources, result.cursor)
    row = late_rows(evaluation)["ws_fresh"]
    assert row["age_hours"] is None and row["newest_date"] is None
    (disagreement,) = evaluation.metadata["history_disagreements"].value
    assert disagreement["workspace"] == "ws_fresh"
    assert "the store's newest is nothing" in disagreement["disagreement"]
    assert alert_receiver.webhook[-1]["workspace"] == "ws_fresh"


def test_each_manifest_is_read_once_also_across_a_code_server_restart(setting, monkeypatch):
    store, instance, resources = setting
    for workspace in ("ws_fresh", "ws_missed"):
        commit(store, NOW - timedelta(hours=3), workspace)
    reads = CountingReads(store, monkeypatch)
    result, evaluation = tick(instance, resources)
    assert reads.count == 2 and evaluation.metadata["workspaces_late"].value == 0
    tick(instance, resources, result.cursor)
    assert reads.count == 2  # the same code server: from memory
    catalog.forget()  # a restarted code server: from the catalog object in the store
    _result, evaluation = tick(instance, resources, result.cursor)
    assert reads.count == 2
    assert evaluation.metadata["oldest_age_hours"].value == pytest.approx(3.0)
    assert any(key.startswith(catalog.CATALOG_PREFIX) for key, _s, _m in store._list(""))


def test_a_damaged_catalog_object_is_ignored_and_the_manifests_read(setting, monkeypatch):
    store, instance, resources = setting
    commit(store, NOW - timedelta(hours=3), "ws_fresh")
    commit(store, NOW - timedelta(hours=40), "ws_missed")
    tick(instance, resources)
    key = catalog.CapturedCatalog(WORKSPACE_DUMP).key
    for damage in (b"not zstd at all", zstandard.ZstdCompressor().compress(b'{"format": 1}')):
        store._put_atomic(key, damage)
        catalog.forget()
        reads = CountingReads(store, monkeypatch)
        _result, evaluation = tick(instance, resources)
        assert reads.count == 2
        assert set(late_rows(evaluation)) == {"ws_missed"}
        assert late_rows(evaluation)["ws_missed"]["age_hours"] == pytest.approx(40.0)


def test_a_tampered_manifest_is_not_a_recovery_point_nor_remembered(setting, monkeypatch):
    """A newest manifest that fails the store's validated model (a file path leading out of
    its artifact) is read through that model: the workspace is late (no restorable backup),
    the tick goes on, and nothing of it enters the captured-at catalog."""
    store, instance, resources = setting
    ref = commit(store, NOW - timedelta(hours=3), "ws_fresh")
    commit(store, NOW - timedelta(hours=3), "ws_missed")
    manifest = json.loads(store._get(f"{ref.folder}/{MANIFEST_NAME}"))
    manifest["files"][0]["path"] = "../../" + manifest["files"][0]["path"]
    store._put_atomic(f"{ref.folder}/{MANIFEST_NAME}", json.dumps(manifest).encode())
    logged: list[str] = []
    monkeypatch.setattr(rpo, "captured_times", _with_log(rpo.captured_times, logged))
    _result, evaluation = tick(instance, resources)
    row = late_rows(evaluation)["ws_fresh"]
    assert row["age_hours"] is None and set(late_rows(evaluation)) == {"ws_fresh"}
    assert any("ws_fresh" in line and "manifest.json" in line for line in logged)
    assert ref.folder not in catalog.catalog_for(store, WORKSPACE_DUMP).entries


def _with_log(function, lines: list[str]):
    """`function` with its `log` argument also collected into `lines`."""
    signature = inspect.signature(function)

    def logged(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        given = bound.arguments.get("log")

        def both(line: str) -> None:
            lines.append(line)
            if given is not None:
                given(line)

        bound.arguments["log"] = both
        return function(*bound.args, **bound.kwargs)

    return logged


def test_a_catalog_entry_for_another_manifest_is_not_used(setting):
    """Entries name the manifest they were read from (its tag): a manifest replaced outside
    the writer (restored from a copy, edited) is read again."""
    store, instance, resources = setting
    ref = commit(store, NOW - timedelta(hours=3), "ws_fresh")
    commit(store, NOW - timedelta(hours=3), "ws_missed")
    tick(instance, resources)
    body = store._get(f"{ref.folder}/{MANIFEST_NAME}")
    older = body.replace(
        (NOW - timedelta(hours=3)).isoformat().encode(),
        (NOW - timedelta(hours=50)).isoformat().encode(),
    )
    assert older != body
    store._put_atomic(f"{ref.folder}/{MANIFEST_NAME}", older)
    _result, evaluation = tick(instance, resources)
    assert late_rows(evaluation)["ws_fresh"]["age_hours"] == pytest.approx(50.0)


def test_manifests_not_read_in_time_give_lower_bound_ages(setting, monkeypatch):
    """Past the read budget an artifact's age is taken from its manifest's write time: never
    younger than the truth, so a late verdict is certain and an on-time one is marked as
    unconfirmed until the next tick reads it."""
    store, instance, resources = setting
    old = commit(store, NOW - timedelta(hours=40), "ws_missed")
    commit(store, NOW - timedelta(hours=2), "ws_fresh")
    if isinstance(store, LocalStore):  # S3 sets LastModified itself: local only for this part
        written = (NOW - timedelta(hours=39)).timestamp()
        os.utime(store.root / old.folder / MANIFEST_NAME, (written, written))
    monkeypatch.setattr(rpo, "MANIFEST_READ_SECONDS", 0.0)
    monkeypatch.setattr(rpo, "MIN_READ_SECONDS", 0.0)
    _result, evaluation = tick(instance, resources)
    assert evaluation.metadata["ages_unconfirmed"].value == 2
    assert "lower bounds" in evaluation.description
    if isinstance(store, LocalStore):
        row = late_rows(evaluation)["ws_missed"]
        assert row["age_is_lower_bound"] and row["age_hours"] == pytest.approx(39.0)
    monkeypatch.setattr(rpo, "MANIFEST_READ_SECONDS", 20.0)
    _result, evaluation = tick(instance, resources)
    assert evaluation.metadata["ages_unconfirmed"].value == 0
    assert late_rows(evaluation)["ws_missed"]["age_hours"] == pytest.approx(40.0)


def report_tick(instance, resources):
    """A tick of the sensor as definitions.py builds it: it also records the health report
    and may ask for a run of its job."""
    sensor = rpo_defs.build_rpo_sensor([WORKSPACE_DUMP], health_report=True)
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        result = sensor(context)
    check = next(e for e in result.asset_events if isinstance(e, dg.AssetCheckEvaluation))
    return result, check


def test_scale_first_tick_leaves_unread_manifests_to_a_health_report_run(setting, monkeypatch):
    """A tick reads manifests for a bounded time (MANIFEST_READ_SECONDS): what it leaves
    unread makes it ask for one run of the health report, which reads every manifest without
    that bound and saves the captured-at catalog. The next tick of the same code server reads
    that catalog back and confirms every age without reading a manifest."""
    store, instance, resources = setting
    commit(store, NOW - timedelta(hours=40), "ws_missed")
    commit(store, NOW - timedelta(hours=2), "ws_fresh")
    monkeypatch.setattr(rpo, "MANIFEST_READ_SECONDS", 0.0)  # a tick that can read nothing
    monkeypatch.setattr(rpo, "MIN_READ_SECONDS", 0.0)
    reads = CountingReads(store, monkeypatch)

    result, check = report_tick(instance, resources)
    assert check.metadata["ages_unconfirmed"].value == 2 and reads.count == 0
    (request,) = result.run_requests
    assert request.job_name == rpo_defs.HEALTH_REPORT_JOB
    assert request.run_key.startswith("captured-at-catch-up-2026-11-22T09")
    assert result.skip_reason is None

    # While such a run waits or runs, no other is asked for.
    defs = dg.Definitions.merge(
        health.build_health_defs([WORKSPACE_DUMP]), dg.Definitions(resources=resources)
    )
    job = defs.resolve_job_def(rpo_defs.HEALTH_REPORT_JOB)
    waiting = instance.create_run_for_job(job)  # NOT_STARTED, as a run about to launch
    result, _check = report_tick(instance, resources)
    assert result.run_requests == [] and result.skip_reason is not None
    instance.delete_run(waiting.run_id)

    # The run, in a process of its own (it starts from the stored catalog object, not from
    # the code server's memory): every manifest read, whatever the tick's budget.
    code_server_catalogs = dict(catalog._MEMORY)
    catalog.forget()
    run = job.execute_in_process(instance=instance)
    catalog.forget()
    catalog._MEMORY.update(code_server_catalogs)  # back in the code server, which read none
    assert run.success and reads.count == 2
    (report,) = run.asset_materializations_for_node("monitoring__backup_health_report")
    assert report.metadata["workspaces_late"].value == 1

    result, check = report_tick(instance, resources)
    assert check.metadata["ages_unconfirmed"].value == 0 and reads.count == 2
    assert late_rows(check)["ws_missed"]["age_hours"] == pytest.approx(40.0)
    assert result.run_requests == []


def test_health_report_search_past_a_week_finds_an_old_backup_by_listing(setting):
    store, instance, _resources = setting
    commit(store, NOW - timedelta(hours=3), "ws_fresh")
    commit(store, NOW - timedelta(days=20), "ws_missed")
    policy = PolicyResource().load()
    evaluation = rpo_defs.evaluate_rpo(
        instance, store, policy, [WORKSPACE_DUMP], NOW, horizon_days=policy.keep_weekly_days
    )
    ages = {i.workspace: i.age_hours for i in evaluation.items}
    assert ages == {"ws_fresh": pytest.approx(3.0), "ws_missed": pytest.approx(480.0)}


@pytest.mark.parametrize("new_workspaces", [3, 150])
def test_discovery_first_backups_skip_workspaces_the_store_holds(store, new_workspaces):
    """Few new workspaces: each one's folder is listed; many: the date's folder once. The
    answer is the same: a first backup for exactly those whose partition holds no manifest."""
    day = "2026-11-21"
    workspaces = [f"ws_{n:03d}" for n in range(new_workspaces)]
    held = set(workspaces[::2])
    for workspace in held:
        commit(store, NOW, workspace, day=day)
    staged = ArtifactRef(WORKSPACE_DUMP, day, workspaces[1])  # a run in flight: no manifest
    with store.begin(staged) as writer:
        writer.write_bytes("rows.copy.zst", b"half")
        requests = backups.first_backups(store, workspaces, day)
    assert {r.partition_key for r in requests} == {
        f"{day}|{w}" for w in workspaces if w not in held
    }


def test_scale_rpo_a_removed_manifest_is_late_whatever_the_catalog_and_files_left_say(setting):
    """The manifest is the commit: removed (its generation files and the catalog's entry for
    it left behind, the catalog object then forged to claim a fresh backup of the other
    workspace too), the workspace is late; the S3 listing that groups generation files away
    shows them as no backup."""
    store, instance, resources = setting
    fresh = commit(store, NOW - timedelta(hours=2), "ws_fresh")
    commit(store, NOW - timedelta(hours=30), "ws_missed")
    _result, evaluation = tick(instance, resources)
    assert set(late_rows(evaluation)) == {"ws_missed"}
    held = catalog.catalog_for(store, WORKSPACE_DUMP)
    assert fresh.folder in held.entries  # remembered: the stale entry this test keeps

    store._delete_prefix(f"{fresh.folder}/{MANIFEST_NAME}")
    assert any(key.startswith(fresh.folder) for key, *_ in store._list(WORKSPACE_DUMP + "/"))
    forged = catalog.CapturedCatalog(WORKSPACE_DUMP)
    forged.entries = dict(held.entries)
    missing = ArtifactRef(WORKSPACE_DUMP, NOW.date().isoformat(), "ws_missed")
    forged.entries[missing.folder] = ("any-tag", NOW)  # a backup that does not exist
    forged.changed = True
    catalog.save(store, forged, NOW.date())
    for restarted in (False, True):  # the process's catalog, then the stored one
        if restarted:
            catalog.forget()
        _result, evaluation = tick(instance, resources)
        rows = late_rows(evaluation)
        assert set(rows) == {"ws_fresh", "ws_missed"}
        assert rows["ws_fresh"]["newest_date"] is None
        assert rows["ws_missed"]["age_hours"] == pytest.approx(30.0)


def test_scale_rpo_on_a_server_grouping_keys_otherwise_than_s3_a_late_backup_stays_late(
    s3_env, monkeypatch
):
    """An S3-compatible server that does not group by the generation delimiter as S3 does
    (here it groups at "/", which would hide every manifest): the tick lists in full and
    the verdicts are those of the truth, neither all late nor all on time."""
    import secrets

    from backup_pipelines.lib.store import S3Store, listing

    store = S3Store(s3_env.bucket, f"run-{secrets.token_hex(4)}")
    monkeypatch.setattr(listing, "_FULL_LISTING_ONLY", set())
    original = store.client.list_objects_v2

    def grouping_at_slash(**arguments):
        if arguments.get("Delimiter") == listing.GENERATION_DELIMITER:
            arguments["Delimiter"] = "/"
        return original(**arguments)

    monkeypatch.setattr(store.client, "list_objects_v2", grouping_at_slash)
    commit(store, NOW - timedelta(hours=2), "ws_fresh")
    commit(store, NOW - timedelta(hours=30), "ws_missed")
    catalog.forget()
    found = rpo.newest_dates(store, WORKSPACE_DUMP, ["ws_fresh", "ws_missed"], NOW.date(), 3)
    newest = rpo.captured_times(store, WORKSPACE_DUMP, found, NOW.date())
    catalog.forget()
    assert store.describe() in listing._FULL_LISTING_ONLY
    assert newest["ws_fresh"].captured_at == NOW - timedelta(hours=2)
    assert newest["ws_missed"].captured_at == NOW - timedelta(hours=30)


def test_scale_manifest_readers_stop_at_the_deadline_and_lose_no_item():
    """The readers take items from one queue until the deadline: every item is either read
    (its result kept) or returned as unread, never both, never lost; a reader's error (a store
    refusing reads) is raised in the caller, as the tick's failure."""
    import threading
    import time

    items = [(f"ws_{n:04d}", n) for n in range(2000)]
    gate = threading.Event()

    def slow_read(item):
        workspace, n = item
        if n >= 100:
            gate.wait(60)  # held until the call below has returned
        return workspace, n

    newest: dict = {}
    left = rpo._read_until(slow_read, items, newest, time.monotonic() + 0.5, None, "a")
    gate.set()
    # Whatever the machine's load: only reads finished by the deadline count, each item once.
    assert len(newest) + len(left) == len(items)
    assert not set(newest) & {workspace for workspace, _n in left}
    assert all(n < 100 for n in newest.values()) and len(left) >= len(items) - 100

    newest = {}
    assert rpo._read_until(slow_read, items, newest, None, None, "a") == []
    assert len(newest) == len(items)

    def refused(item):
        raise OSError("permission denied")

    with pytest.raises(OSError, match="permission denied"):
        rpo._read_until(refused, items, {}, None, None, "a")
