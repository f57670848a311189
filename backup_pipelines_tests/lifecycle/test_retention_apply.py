"""Retention's deletions on S3 (moto): many artifacts at once by DeleteObjects of the keys the
plan listed (with Object Lock: of their versions), the SQL dump of a partition after its index
artifacts, and held when one of them could not be deleted or is under retention."""

from __future__ import annotations

import secrets
import time
from collections import Counter
from datetime import UTC, date, datetime

import dagster as dg
import pytest

from backup_pipelines.defs import lifecycle as retention_defs
from backup_pipelines.defs.resources import BackupStoreResource, PolicyResource
from backup_pipelines.lib.lifecycle import markers, retention
from backup_pipelines.lib.lifecycle.deletion import HELD, delete_one_by_one
from backup_pipelines.lib.lifecycle.scan import scan_store
from backup_pipelines.lib.policy import Policy
from backup_pipelines.lib.store import MANIFEST_NAME, LocalStore, S3Store, listing, make_s3_client
from backup_pipelines.lib.store.s3 import ObjectLock
from backup_pipelines_tests.faults.proxy import TcpProxy
from backup_pipelines_tests.lifecycle.test_retention import (
    SQL,
    TYPESENSE,
    WORKSPACE_ASSETS,
    ago,
    keys_in,
    partitions_in,
    write_artifact,
    write_backup,
)

TODAY = date(2026, 3, 31)
PAYLOAD_AGAIN = b"rewritten in place"
WORKSPACES = [f"ws_{n:02d}" for n in range(8)]
DAYS = 5  # ages 0..4; keep_daily_days=2 keeps ages 0 and 1
POLICY = Policy(keep_daily_days=2, keep_weekly_days=2)


def filled_store(prefix: str, bucket: str = "test-backups") -> S3Store:
    store = S3Store(bucket, f"{prefix}-{secrets.token_hex(4)}")
    for age in range(DAYS):
        for workspace in WORKSPACES:
            write_backup(store, ago(age, TODAY), workspace)
    return store


def count_requests(store: S3Store) -> Counter:
    """Every S3 operation the store's client sends from now on, by name."""
    counted: Counter = Counter()

    def count(model, **_kwargs) -> None:
        counted[model.name] += 1

    store.client.meta.events.register("before-call.s3", count)
    return counted


def expected_after(store: S3Store, plan) -> set[str]:
    """The keys of the artifacts the plan keeps, as listed now."""
    kept = {f"{artifact.ref.folder}/" for artifact in plan.kept}
    return {key for key in keys_in(store) if any(key.startswith(f) for f in kept)}


def test_retention_apply_deletes_many_s3_artifacts_in_a_few_requests(s3_env):
    store = filled_store("together")
    plan = retention.plan_retention(store, POLICY, TODAY, remember=False)
    doomed = len(plan.to_delete)
    assert doomed == 3 * len(WORKSPACES) * (DAYS - 2)  # 72 artifacts
    before = keys_in(store)
    remaining = expected_after(store, plan)
    lines: list[str] = []
    requests = count_requests(store)

    result = retention.apply_plan(store, plan, log=lines.append)
    sent = Counter(requests)

    assert result.errors == [] and result.skipped == []
    assert len(result.deleted) == doomed and keys_in(store) == remaining
    assert len(before - remaining) == 2 * doomed  # a manifest and a data file each
    assert partitions_in(store) == {(a.asset, a.ref.date, a.ref.workspace) for a in plan.kept}
    assert result.bytes_freed == sum(a.bytes for a in plan.to_delete) > 0
    # One request for the index manifests, one for the SQL manifests, one for the 72 files; the
    # keep markers and the leases listed once (none exists, so none is read). An artifact at
    # a time, this was a listing and a delete per manifest and per generation folder, and a
    # read of every partition's marker and every workspace's lease.
    assert sent == Counter(DeleteObjects=3, ListObjectsV2=2), sent
    # One message for the batch (a Dagster run writes each to its event log), a line each.
    assert len(lines) == 1 and lines[0].count(": deleted (") == doomed


def test_retention_apply_keeps_the_sql_dump_when_an_index_deletion_failed(s3_env, monkeypatch):
    """S3 drops the connection once the index manifests' DeleteObjects is sent: whether S3
    acted on it is unknown, so those artifacts are errors, and no SQL dump of their partitions
    is deleted. A later run finishes the job."""
    monkeypatch.setenv("BACKUP_CONNECT_TIMEOUT", "1")
    monkeypatch.setenv("BACKUP_READ_TIMEOUT", "1")
    doomed_sql: set[str] = set()
    with TcpProxy.in_front_of(s3_env.endpoint) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url_for(s3_env.endpoint))
        store = filled_store("held")
        plan = retention.plan_retention(store, POLICY, TODAY, remember=False)
        doomed_sql = {a.ref.folder for a in plan.to_delete if a.asset == SQL}
        proxy.stop_once_sent(
            lambda _link, chunk: chunk.startswith(b"POST ") and b"?delete" in chunk
        )

        result = retention.apply_plan(store, plan, log=lambda _line: None)

    assert proxy.mode == "stopped"
    assert result.deleted == []
    held = {ref.folder for ref, why in result.skipped if why == HELD}
    assert held == doomed_sql and len(held) == len(WORKSPACES) * (DAYS - 2)
    assert len(result.errors) == 2 * len(held)
    assert all(": its manifest: " in error and "S3" in error for error in result.errors)

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_env.endpoint)
    direct = S3Store("test-backups", store.prefix)
    for folder in doomed_sql:  # every SQL dump of a failed partition is still whole
        assert direct._get(f"{folder}/{MANIFEST_NAME}") is not None
    # The next run, two days on: what S3 had already deleted of the index artifacts is debris.
    later = time.time() + 2 * 86400
    again = retention.plan_retention(direct, POLICY, TODAY, now=later, remember=False)
    finished = retention.apply_plan(direct, again, log=lambda _line: None)
    assert finished.errors == []
    assert {(a, d, w) for a, d, w in partitions_in(direct)} == {
        (asset, ago(age, TODAY), workspace)
        for asset in WORKSPACE_ASSETS
        for age in range(2)
        for workspace in WORKSPACES
    }
    assert all(
        key.startswith(tuple(f"{a.ref.folder}/" for a in again.kept)) for key in keys_in(direct)
    )


@pytest.mark.parametrize(("limit", "sizes"), [(1, [3, 3, 3, 3]), (7, [9, 3]), (1000, [12])])
def test_retention_apply_batches_never_split_a_partition(limit, sizes):
    """Up to `limit` artifacts are checked and deleted together, but a partition's SQL dump
    always goes in the same batch as its index artifacts (a batch grows past the limit to
    finish its last partition)."""

    class Doomed:  # what _whole_partitions reads of an artifact
        def __init__(self, day: str, workspace: str) -> None:
            self.partition = (day, workspace)

    # 4 partitions of 3 artifacts (two indexes and the SQL dump), numbered as apply_plan does
    partitions = [Doomed(day, ws) for day in ("d1", "d2") for ws in ("a", "b") for _ in range(3)]
    numbered = list(enumerate(partitions, 1))
    batches = list(retention._whole_partitions(numbered, limit))
    assert [entry for batch in batches for entry in batch] == numbered
    assert [len(batch) for batch in batches] == sizes
    owner: dict = {}
    for index, batch in enumerate(batches):
        for _number, artifact in batch:
            assert owner.setdefault(artifact.partition, index) == index


def test_retention_apply_job_logs_a_message_per_batch_not_per_artifact(tmp_path):
    """Each message a Dagster run logs is a row of its event log; a line per series and per
    deleted artifact was ~60,000 rows a day at 10,000 workspaces. Every line is still there."""
    today = datetime.now(UTC).date()
    store = LocalStore(tmp_path / "store")
    workspaces = [f"ws_{n:03d}" for n in range(60)]
    for age in range(3):
        for workspace in workspaces:
            write_backup(store, ago(age, today), workspace)
    (tmp_path / "policy.yaml").write_text("keep_daily_days: 2\nkeep_weekly_days: 0\n")
    resources = {
        "backup_store": BackupStoreResource(url=f"file://{store.root}"),
        "policy": PolicyResource(policy_file=str(tmp_path / "policy.yaml")),
    }
    instance = dg.DagsterInstance.ephemeral()

    result = retention_defs.retention_job.execute_in_process(resources=resources, instance=instance)

    assert result.success
    messages = [
        event.user_message
        for event in instance.all_logs(result.run_id)
        if event.step_key == "apply_retention" and event.dagster_event is None
    ]
    text = "\n".join(messages)
    doomed = 3 * len(workspaces)  # the oldest date of every series
    assert text.count(": deleted (") == doomed
    assert text.count("newest verified ") == 3 * len(workspaces)
    # 180 series lines in one message, 180 deletions in 2 batches of ~100, the summaries
    assert len(messages) <= 8, [m[:80] for m in messages]
    assert {d for _a, d, _w in partitions_in(store)} == {ago(0, today), ago(1, today)}


def test_retention_apply_one_by_one_holds_the_sql_dump_too(s3_env, monkeypatch):
    """The way of a local store and of a bucket with Object Lock, on a real S3 fault: the
    first index artifact's delete is sent and its answer lost, S3 is then unreachable. Both
    index artifacts of the partition fail, and its SQL dump is not even tried."""
    monkeypatch.setenv("BACKUP_CONNECT_TIMEOUT", "1")
    monkeypatch.setenv("BACKUP_READ_TIMEOUT", "1")
    with TcpProxy.in_front_of(s3_env.endpoint) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url_for(s3_env.endpoint))
        store = S3Store("test-backups", f"one-{secrets.token_hex(4)}")
        write_backup(store, ago(3, TODAY), "ws_acme")
        folders = scan_store(store)
        partition = sorted(folders.values(), key=lambda f: (f.ref.asset == SQL, f.ref.asset))
        proxy.stop_once_sent(
            lambda _link, chunk: chunk.startswith(b"POST ") and b"?delete" in chunk
        )

        outcome = delete_one_by_one(store, partition)

    assert proxy.mode == "stopped"
    sql = next(f.ref for f in partition if f.ref.asset == SQL)
    assert outcome.held == {sql: HELD}
    assert set(outcome.failed) == {f.ref for f in partition} - {sql}
    assert all("S3" in why for why in outcome.failed.values())
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_env.endpoint)
    direct = S3Store("test-backups", store.prefix)
    assert direct.verify(sql).ok


# -- Object Lock: a versioned bucket, artifacts deleted version by version --------------------

LOCK = ObjectLock("GOVERNANCE", 2)


def locked_bucket() -> str:
    bucket = f"locked-{secrets.token_hex(4)}"
    make_s3_client().create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    return bucket


def versions_in(store: S3Store, prefix: str = "", current: bool = False) -> set[tuple[str, str]]:
    """(key, version id) of every version and delete marker under `prefix` (`current`: of
    the current versions only)."""
    listed = listing.iter_versions(store, prefix)
    return {(v.key, v.version_id) for v in listed if v.is_latest or not current}


def test_retention_apply_object_lock_deletes_expired_artifacts_by_version_in_a_few_requests(
    s3_env,
):
    """Artifacts whose retention has run out (written unlocked into a bucket with Object
    Lock): every version of every file goes, with a few listings of versions a run of
    neighbouring folders, no HEAD per object, and DeleteObjects by version id. A partition
    kept between doomed ones is listed through, never deleted."""
    written = filled_store("lock-together", bucket=locked_bucket())
    store = S3Store(written.bucket, written.prefix, object_lock=LOCK)
    for kept in ("ws_03", "ws_07"):  # inside a run of doomed folders, and after it
        markers.mark_kept(store, ago(3, TODAY), kept, "audit")
    plan = retention.plan_retention(store, POLICY, TODAY, remember=False)
    doomed = len(plan.to_delete)
    assert doomed == 3 * (len(WORKSPACES) * (DAYS - 2) - 2)  # 66 artifacts
    # Debris S3 keeps in a versioned bucket: an older version of a file, and a key deleted
    # the plain way (a noncurrent version under a delete marker); both go with their artifact.
    # Both in the run ws_00..06 (through ws_03), which ends before its folder does.
    middle = [
        a for a in plan.to_delete if (a.ref.date, a.ref.workspace) == (ago(3, TODAY), "ws_01")
    ]
    ghost = f"{middle[0].ref.folder}/stray.tmp"
    written._put_atomic(ghost, b"half")
    written.client.delete_object(Bucket=written.bucket, Key=written._full(ghost))
    rewritten = next(k for k, _s, _t in middle[1].folder.objects if k.endswith(".bin"))
    written._put_atomic(rewritten, PAYLOAD_AGAIN)
    kept = {f"{artifact.ref.folder}/" for artifact in plan.kept} | {markers.KEEP_PREFIX}
    remaining = {(k, v) for k, v in versions_in(store) if k.startswith(tuple(kept))}
    lines: list[str] = []
    requests = count_requests(store)

    result = retention.apply_plan(store, plan, log=lines.append)
    sent = Counter(requests)

    assert result.errors == [] and result.skipped == [] and result.locked == []
    assert len(result.deleted) == doomed
    assert versions_in(store) == remaining  # no version, no delete marker of a doomed folder
    assert partitions_in(store) == {(a.asset, a.ref.date, a.ref.workspace) for a in plan.kept}
    for artifact in plan.kept:
        assert store.verify(artifact.ref).ok
    # Per (asset, date) folder, its first workspace's versions, then the others' paged on
    # from there (2 x 9), through ws_03's where it is kept (left alone). DeleteObjects: index
    # manifests, SQL manifests, files, delete markers. Reading each object's retention first
    # was a listing and a HEAD per object, and a listing of versions and a delete per
    # manifest and per generation folder.
    assert sent == Counter(ListObjectVersions=18, DeleteObjects=4, ListObjectsV2=2), sent
    assert len(lines) == 1 and lines[0].count(": deleted (") == doomed


def refs_of(plan):
    return [artifact.ref for artifact in plan.to_delete]


def test_retention_apply_object_lock_keeps_a_locked_artifact_whole_and_holds_its_sql_dump(
    s3_env,
):
    """S3 refuses the versions of an artifact still under retention: retention keeps that
    artifact whole (its manifest refused, nothing else tried), says until when, and keeps the
    SQL dump of its partition, which would otherwise restore without its index."""
    written = filled_store("lock-held", bucket=locked_bucket())
    store = S3Store(written.bucket, written.prefix, object_lock=LOCK)
    day = ago(3, TODAY)
    locked = write_artifact(store, TYPESENSE, day, "ws_01")  # a re-run: locked for 2 days
    sql_locked = write_artifact(store, SQL, ago(4, TODAY), "ws_02")
    plan = retention.plan_retention(store, POLICY, TODAY, remember=False)
    before = {ref: versions_in(store, f"{ref.folder}/", current=True) for ref in refs_of(plan)}
    requests = count_requests(store)
    lines: list[str] = []

    result = retention.apply_plan(store, plan, log=lines.append)

    assert result.errors == []
    assert sorted(ref for ref, _until in result.locked) == sorted([locked, sql_locked])
    assert all(until.startswith(str(datetime.now(UTC).year)) for _r, until in result.locked)
    held = [ref for ref, why in result.skipped if why == HELD]
    assert [(ref.asset, ref.date, ref.workspace) for ref in held] == [(SQL, day, "ws_01")]
    assert len(result.deleted) == len(plan.to_delete) - 3
    for ref in (locked, sql_locked, held[0]):  # every file as it was (an older version of a
        assert store.verify(ref).ok  # re-run's manifest, not under retention, may go)
        assert versions_in(store, f"{ref.folder}/", current=True) == before[ref]
    assert requests["HeadObject"] == 2  # the retain-until of each refused manifest, no more
    text = "\n".join(lines)
    assert text.count("NOT deleted, under Object Lock retention until 20") == 2


def test_retention_apply_object_lock_deletes_nothing_it_could_not_list_the_versions_of(
    s3_env, monkeypatch
):
    """S3 drops the connection at the first listing of versions: no artifact whose versions
    are unknown is touched (each is an error naming the listing), none is half-deleted, and
    the next run deletes them all."""
    monkeypatch.setenv("BACKUP_CONNECT_TIMEOUT", "1")
    monkeypatch.setenv("BACKUP_READ_TIMEOUT", "1")
    bucket = locked_bucket()
    with TcpProxy.in_front_of(s3_env.endpoint) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url_for(s3_env.endpoint))
        written = filled_store("lock-unlisted", bucket=bucket)
        store = S3Store(bucket, written.prefix, object_lock=LOCK)
        plan = retention.plan_retention(store, POLICY, TODAY, remember=False)
        before = versions_in(store)
        proxy.stop_once_sent(
            lambda _link, chunk: chunk.startswith(b"GET ") and b"versions" in chunk
        )

        result = retention.apply_plan(store, plan, log=lambda _line: None)

    assert proxy.mode == "stopped"
    assert result.deleted == [] and result.skipped == [] and result.locked == []
    assert len(result.errors) == len(plan.to_delete)
    assert all(": its versions could not be listed: " in error for error in result.errors)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_env.endpoint)
    direct = S3Store(bucket, store.prefix, object_lock=LOCK)
    assert versions_in(direct) == before
    again = retention.plan_retention(direct, POLICY, TODAY, remember=False)
    finished = retention.apply_plan(direct, again, log=lambda _line: None)
    assert finished.errors == [] and len(finished.deleted) == len(plan.to_delete)
    assert partitions_in(direct) == {(a.asset, a.ref.date, a.ref.workspace) for a in plan.kept}
