"""Retention against a synthetic catalog of real (tiny) artifacts, on both store backends.

Expected sets are written out by date here, not computed with the planner's own rules. The
unit of retention is one artifact, judged within its asset x workspace series."""

import os
import re
import shutil
import sys
import time
from datetime import UTC, date, datetime, timedelta

import dagster as dg
import pytest

from backup_pipelines import cli
from backup_pipelines.defs import lifecycle as retention_defs
from backup_pipelines.defs.resources import BackupStoreResource, PolicyResource, build_resources
from backup_pipelines.lib.errors import ArtifactNotFound, ConfigError
from backup_pipelines.lib.lifecycle import markers, retention
from backup_pipelines.lib.lifecycle.markers import Partition
from backup_pipelines.lib.lifecycle.retention import plan_retention, run_retention
from backup_pipelines.lib.policy import Policy
from backup_pipelines.lib.store import MANIFEST_NAME, ArtifactRef, LocalStore, S3Store
from backup_pipelines_tests.helpers import flip_one_byte

TODAY = date(2026, 3, 31)  # a Tuesday; 2026-03-01 is a Sunday 30 days before
SQL, TYPESENSE, QDRANT = (
    "postgres/workspace_dump",
    "typesense/collection_export",
    "qdrant/collection_snapshot",
)
FULL = "postgres/full_dump"
WORKSPACE_ASSETS = (SQL, TYPESENSE, QDRANT)
PAYLOAD = bytes(range(256))  # long enough for flip_one_byte's offset
HOUR = 3600.0


def ago(days: int, today: date = TODAY) -> str:
    return (today - timedelta(days=days)).isoformat()


def dates_from(first: str, last: str) -> list[str]:
    start, end = date.fromisoformat(first), date.fromisoformat(last)
    return [(start + timedelta(days=n)).isoformat() for n in range((end - start).days + 1)]


def write_artifact(store, asset: str, day: str, workspace: str | None) -> ArtifactRef:
    ref = ArtifactRef(asset, day, workspace)
    with store.begin(ref) as writer:
        writer.write_bytes("data.bin", PAYLOAD)
        writer.commit(
            captured_at=f"{day}T00:30:00Z", counts={"rows": {}}, source={}, tool={}, tables=[]
        )
    return ref


def write_backup(store, day: str, workspace: str | None, assets=WORKSPACE_ASSETS) -> None:
    for asset in assets if workspace else (FULL,):
        write_artifact(store, asset, day, workspace)


def partitions_in(store) -> set[tuple[str, str, str | None]]:
    return {(ref.asset, ref.date, ref.workspace) for ref in store.list_artifacts()}


def keys_in(store) -> set[str]:
    return {key for key, _size, _mtime in store._list("")}


def kept_of(plan) -> set[tuple[str, str, str | None]]:
    return {(a.asset, a.ref.date, a.ref.workspace) for a in plan.kept}


def every_asset(partitions, assets=WORKSPACE_ASSETS) -> set[tuple[str, str, str | None]]:
    """(asset, date, workspace) of each asset of each (date, workspace) backup written whole."""
    return {(a, d, w) for d, w in partitions for a in (assets if w else (FULL,))}


def reasons_of(plan, day: str, workspace: str | None, asset: str | None = None) -> list[str]:
    asset = asset or (SQL if workspace else FULL)
    return next(a.reasons for a in plan.artifacts if a.ref == ArtifactRef(asset, day, workspace))


# --------------------------------------------------------------------------------------------
# The 120-day catalog (local store): ws_acme and ws_globex every day, ws_initech with gaps,
# the whole database every day, and ws_gone whose backups stopped 200 days ago.

DAILY_DATES = dates_from("2026-03-02", "2026-03-31")  # age 0..29
SUNDAYS = [  # newest of each ISO week with age < 90 that is older than the dailies
    "2026-01-04", "2026-01-11", "2026-01-18", "2026-01-25",
    "2026-02-01", "2026-02-08", "2026-02-15", "2026-02-22", "2026-03-01",
]  # fmt: skip
# ws_initech missed 01-02..01-04 (the week's newest within 90 days is then Thursday 01-01, age
# 89) and the Sundays 02-08 and 02-15 (their Saturdays stand in).
INITECH_MISSING = {"2026-01-02", "2026-01-03", "2026-01-04", "2026-02-08", "2026-02-15"}
INITECH_WEEKLY = [
    "2026-01-01", "2026-01-11", "2026-01-18", "2026-01-25",
    "2026-02-01", "2026-02-07", "2026-02-14", "2026-02-22", "2026-03-01",
]  # fmt: skip
GONE_DATES = [ago(n) for n in range(200, 210)]
EXPECTED_KEPT = (
    {(d, w) for w in ("ws_acme", "ws_globex", None) for d in DAILY_DATES + SUNDAYS}
    | {(d, "ws_initech") for d in DAILY_DATES + INITECH_WEEKLY}
    | {("2025-09-12", "ws_gone")}
)


@pytest.fixture(scope="module")
def catalog_template(tmp_path_factory):
    store = LocalStore(tmp_path_factory.mktemp("catalog") / "store")
    for day in [ago(n) for n in range(120)]:
        write_backup(store, day, None)
        write_backup(store, day, "ws_acme")
        write_backup(store, day, "ws_globex")
        if day not in INITECH_MISSING:
            write_backup(store, day, "ws_initech")
    for day in GONE_DATES:
        write_backup(store, day, "ws_gone")
    return store.root


@pytest.fixture
def catalog(catalog_template, tmp_path):
    root = tmp_path / "catalog"
    shutil.copytree(catalog_template, root)
    return LocalStore(root)


def test_catalog_dates_are_what_the_expectations_assume():
    assert ago(29) == "2026-03-02" and ago(30) == "2026-03-01" and ago(89) == "2026-01-01"
    assert ago(200) == "2025-09-12"
    assert all(date.fromisoformat(d).isoweekday() == 7 for d in SUNDAYS)


def test_plan_keeps_exactly_daily_weekly_and_newest_verified(catalog):
    plan = plan_retention(catalog, Policy(), TODAY)
    # Every backup of this catalog holds all its assets, so per asset the same dates are kept.
    assert kept_of(plan) == every_asset(EXPECTED_KEPT)
    assert len(plan.to_delete) == len(plan.artifacts) - len(every_asset(EXPECTED_KEPT))
    assert reasons_of(plan, "2026-03-31", "ws_acme") == ["daily", "weekly", "newest verified"]
    assert reasons_of(plan, "2026-03-08", "ws_acme") == ["daily", "weekly"]  # a Sunday
    assert reasons_of(plan, "2026-03-02", "ws_acme") == ["daily"]  # age 29, Monday
    assert reasons_of(plan, "2026-03-01", None) == ["weekly"]  # age 30: no longer daily
    assert reasons_of(plan, "2026-01-01", "ws_initech") == ["weekly"]  # age 89
    assert reasons_of(plan, "2025-12-31", "ws_initech") == []  # age 90
    assert reasons_of(plan, "2025-09-12", "ws_gone") == ["newest verified"]
    assert reasons_of(plan, "2025-09-12", "ws_gone", QDRANT) == ["newest verified"]
    # Lazy verification: only the newest artifact of each of the 13 series (3 assets x 4
    # workspaces, and the whole database) was read — the same artifacts as the 5 partitions.
    assert plan.verifications == 13 and plan.failed_verification == []
    assert plan.reason_counts()["newest verified"] == 13
    assert plan.leftovers == []


def test_apply_deletes_exactly_the_doomed_artifacts(catalog):
    # Not counted: the verification record the plan writes under _catalog/ (verified.py).
    before = sum(size for key, size, _mtime in catalog._list("") if not key.startswith("_catalog/"))
    plan, result = run_retention(catalog, Policy(), TODAY, log=lambda _m: None)
    assert result is not None and result.errors == [] and result.skipped == []
    expected = {(a, d, w) for d, w in EXPECTED_KEPT if w for a in WORKSPACE_ASSETS}
    expected |= {(FULL, d, None) for d, w in EXPECTED_KEPT if w is None}
    assert partitions_in(catalog) == expected
    after = sum(size for key, size, _mtime in catalog._list("") if not key.startswith("_catalog/"))
    assert result.bytes_freed == before - after == plan.bytes_to_free
    assert not (catalog.root / SQL / "date=2025-12-02").exists()  # empty folders pruned
    again = plan_retention(catalog, Policy(), TODAY)
    assert again.to_delete == [] and kept_of(again) == every_asset(EXPECTED_KEPT)


def test_dry_run_deletes_nothing(catalog):
    before = keys_in(catalog)
    plan, result = run_retention(catalog, Policy(), TODAY, dry_run=True, log=lambda _m: None)
    assert result is None and plan.to_delete
    assert keys_in(catalog) == before


def test_daily_boundary_is_age_below_keep_daily_days(tmp_path):
    store = LocalStore(tmp_path / "store")
    for day in ("2026-03-02", "2026-03-01", "2026-02-28"):
        write_backup(store, day, "ws_acme", assets=(SQL,))
    plan = plan_retention(store, Policy(keep_daily_days=30, keep_weekly_days=0), TODAY)
    assert kept_of(plan) == {(SQL, "2026-03-02", "ws_acme")}  # age 29 kept, age 30 not


# --------------------------------------------------------------------------------------------
# A smaller catalog on both backends: 40 days of one workspace (SQL + Typesense) and the
# whole database, daily 7 days, weekly 28.

SMALL_POLICY = Policy(keep_daily_days=7, keep_weekly_days=28)
SMALL_EXPECTED = (
    set(dates_from("2026-03-25", "2026-03-31"))  # age 0..6
    | {"2026-03-08", "2026-03-15", "2026-03-22"}  # Sundays with age < 28 (03-03 is age 28)
)


def write_small_catalog(store) -> None:
    for day in dates_from("2026-02-20", "2026-03-31"):
        write_backup(store, day, "ws_acme", assets=(SQL, TYPESENSE))
        write_backup(store, day, None)


def test_small_catalog_on_both_backends(store):
    write_small_catalog(store)
    lines: list[str] = []
    plan, result = run_retention(store, SMALL_POLICY, TODAY, log=lines.append)
    # the listing's own line, after the summary: 40 days of 3 assets, one date folder each
    assert plan.listing is not None and plan.listing.artifact_folders == 3 * 40
    assert plan.listing.walk.date_folders == 3 * 40
    listed = lines[lines.index(plan.summary()) + 1]
    assert listed == plan.listing.describe() and "120 artifact folders in 120 date" in listed
    # disk reads are a local store's figure: an S3 listing reads nothing from this disk
    counted = not isinstance(store, S3Store) and sys.platform.startswith("linux")
    assert (plan.listing.disk_bytes is not None) == counted == ("read from disk" in listed)
    partitions = {(d, w) for d in SMALL_EXPECTED for w in ("ws_acme", None)}
    expected = every_asset(partitions, (SQL, TYPESENSE))
    assert kept_of(plan) == expected
    assert result is not None and len(result.deleted) == 3 * 40 - len(expected)
    assert partitions_in(store) == (
        {(a, d, "ws_acme") for d in SMALL_EXPECTED for a in (SQL, TYPESENSE)}
        | {(FULL, d, None) for d in SMALL_EXPECTED}
    )


def test_keep_marker_holds_a_partition_until_released(store):
    write_small_catalog(store)
    old = "2026-02-21"
    marker = markers.mark_kept(store, old, "ws_acme", "before migration 42", created_by="ops")
    markers.mark_kept(store, old, None, "whole database too")
    assert [m.partition for m in markers.list_kept(store)] == [
        Partition(old),
        Partition(old, "ws_acme"),
    ]
    assert marker.reason == "before migration 42"
    plan, _ = run_retention(store, SMALL_POLICY, TODAY, log=lambda _m: None)
    assert reasons_of(plan, old, "ws_acme") == ["kept: before migration 42"]
    assert reasons_of(plan, old, "ws_acme", TYPESENSE) == ["kept: before migration 42"]
    assert {(SQL, old, "ws_acme"), (TYPESENSE, old, "ws_acme"), (FULL, old, None)} <= (
        partitions_in(store)
    )
    markers.release(store, old, "ws_acme")
    plan, _ = run_retention(store, SMALL_POLICY, TODAY, log=lambda _m: None)
    assert Partition(old, "ws_acme") in [b.partition for b in plan.to_delete]
    left = partitions_in(store)
    assert (SQL, old, "ws_acme") not in left and (TYPESENSE, old, "ws_acme") not in left
    assert (FULL, old, None) in left  # the whole-database marker holds only the full dump
    with pytest.raises(ArtifactNotFound, match="no keep marker"):
        markers.release(store, old, "ws_acme")


def test_keep_marker_on_the_big_catalog_survives_beyond_90_days(catalog):
    markers.mark_kept(catalog, "2025-12-05", "ws_globex", "audit")
    plan, _ = run_retention(catalog, Policy(), TODAY, log=lambda _m: None)
    assert kept_of(plan) == every_asset(EXPECTED_KEPT | {("2025-12-05", "ws_globex")})
    assert {(a, "2025-12-05", "ws_globex") for a in WORKSPACE_ASSETS} <= partitions_in(catalog)


def test_a_marker_placed_after_planning_still_wins(tmp_path):
    store = LocalStore(tmp_path / "store")
    write_backup(store, "2025-12-10", "ws_acme")
    write_backup(store, "2026-03-30", "ws_acme")
    plan = plan_retention(store, Policy(), TODAY)
    assert {a.partition for a in plan.to_delete} == {Partition("2025-12-10", "ws_acme")}
    markers.mark_kept(store, "2025-12-10", "ws_acme", "legal hold")
    result = retention.apply_plan(store, plan, log=lambda _m: None)
    assert result.deleted == []
    assert {ref for ref, _why in result.skipped} == {
        ArtifactRef(a, "2025-12-10", "ws_acme") for a in WORKSPACE_ASSETS
    }
    assert (SQL, "2025-12-10", "ws_acme") in partitions_in(store)


def test_marker_refuses_bad_input_and_unknown_partitions(tmp_path):
    store = LocalStore(tmp_path / "store")
    write_backup(store, "2026-03-30", "ws_acme")
    with pytest.raises(ArtifactNotFound, match="no backup of 2026-03-29"):
        markers.mark_kept(store, "2026-03-29", "ws_acme", "typo")
    with pytest.raises(ArtifactNotFound, match="that date holds backups of: ws_acme"):
        markers.mark_kept(store, "2026-03-30", "ws_globex", "wrong workspace")
    with pytest.raises(ValueError, match="reason"):
        markers.mark_kept(store, "2026-03-30", "ws_acme", "  ")
    with pytest.raises(ValueError, match="invalid date"):
        markers.mark_kept(store, "2026-13-01", "ws_acme", "x")
    with pytest.raises(ValueError, match="invalid workspace id"):
        markers.mark_kept(store, "2026-03-30", "../etc", "x")


# --------------------------------------------------------------------------------------------
# Newest verified


def test_corrupt_recent_backups_keep_the_newest_verified_even_past_90_days(store):
    ages = [1, 5, 40, 95, 100, 110]
    for n in ages:
        write_backup(store, ago(n), "ws_rot")
    for n in (1, 5, 40, 95):
        flip_one_byte(store, ArtifactRef(QDRANT, ago(n), "ws_rot"), "data.bin")
    plan, _ = run_retention(store, Policy(), TODAY, log=lambda _m: None)
    # Per asset (changed with the per-asset rule): SQL and Typesense verify at age 1, so their
    # artifacts past the windows go; Qdrant's newest verified snapshot is 100 days old.
    young = {ago(1), ago(5), ago(40)}
    assert kept_of(plan) == {(a, d, "ws_rot") for a in (SQL, TYPESENSE) for d in young} | {
        (QDRANT, d, "ws_rot") for d in young | {ago(100)}
    }
    assert reasons_of(plan, ago(100), "ws_rot", QDRANT) == ["newest verified"]
    assert reasons_of(plan, ago(1), "ws_rot") == ["daily", "weekly", "newest verified"]
    assert plan.failed_verification == [
        ArtifactRef(QDRANT, ago(n), "ws_rot") for n in (1, 5, 40, 95)
    ]
    assert plan.verifications == 7  # SQL 1, Typesense 1, Qdrant 5 (up to the first that verified)
    assert partitions_in(store) == kept_of(plan)


def test_workspace_no_longer_backed_up_keeps_its_newest_verified_backup(store):
    for n in (200, 201, 230):
        write_backup(store, ago(n), "ws_gone", assets=(SQL,))
    plan, _ = run_retention(store, Policy(), TODAY, log=lambda _m: None)
    assert kept_of(plan) == {(SQL, ago(200), "ws_gone")}
    assert partitions_in(store) == {(SQL, ago(200), "ws_gone")}


def test_when_nothing_verifies_nothing_of_the_series_is_deleted(tmp_path):
    store = LocalStore(tmp_path / "store")
    for n in (1, 100, 120):
        write_backup(store, ago(n), "ws_acme", assets=(SQL,))
    plan = plan_retention(store, Policy(), TODAY, is_verified=lambda _b: False)
    assert plan.to_delete == [] and plan.verifications == 3
    assert reasons_of(plan, ago(100), "ws_acme") == ["held: no verified backup"]


def test_verifier_is_not_called_when_nothing_would_be_deleted(tmp_path):
    store = LocalStore(tmp_path / "store")
    for n in range(10):
        write_backup(store, ago(n), "ws_acme", assets=(SQL,))
    calls = []
    plan = plan_retention(store, Policy(), TODAY, is_verified=lambda b: calls.append(b) or True)
    assert calls == [] and plan.to_delete == []


# --------------------------------------------------------------------------------------------
# Leftovers of crashed runs


def stage_orphan(store, folder: str, generation: str) -> str:
    sink = store._open_sink(f"{folder}/{generation}/data.bin")
    sink.write(b"half-written")
    sink.close()
    return f"{folder}/{generation}/"


def start_upload(store, key: str) -> str:
    """An upload with one part sent, never completed (a run killed mid-file)."""
    answer = store.client.create_multipart_upload(Bucket=store.bucket, Key=store._full(key))
    store.client.upload_part(
        Bucket=store.bucket,
        Key=store._full(key),
        UploadId=answer["UploadId"],
        PartNumber=1,
        Body=b"part",
    )
    return answer["UploadId"]


def test_crashed_runs_leftovers_are_cleaned_when_old_and_left_alone_when_fresh(store):
    committed = write_artifact(store, SQL, "2026-03-30", "ws_acme")
    uncommitted = ArtifactRef(TYPESENSE, "2026-03-30", "ws_acme")
    old_keys = [
        stage_orphan(store, committed.folder, "g-20260330T010000-0000dead"),
        stage_orphan(store, uncommitted.folder, "g-20260330T010000-0000beef"),
    ]
    old_upload = start_upload(store, f"{committed.folder}/g-old/big.bin") if _s3(store) else None
    if _s3(store):
        # S3 sets LastModified itself: age by passing `now` instead, just past the limit for
        # the old ones and (1.5 s later) short of it for the fresh ones. An upload's age is
        # that of its newest part here: moto reports one fixed `Initiated` (2010) for all.
        newest_old = max(
            [m for k, _s, m in store._list("") if k.startswith(tuple(old_keys))]
            + [store.upload_last_part_time(f"{committed.folder}/g-old/big.bin", old_upload)]
        )
        time.sleep(1.5)
    fresh = stage_orphan(store, committed.folder, "g-20260331T010000-00000f00")
    fresh_upload = start_upload(store, f"{committed.folder}/g-new/big.bin") if _s3(store) else None
    if _s3(store):
        now = newest_old + 24 * HOUR + 0.25
    else:
        stale = time.time() - 25 * HOUR
        for key in old_keys:
            path = store.root / key / "data.bin"
            os.utime(path, (stale, stale))
        temp = store.root / committed.folder / ".manifest.json.1234abcd.tmp"
        temp.write_bytes(b"{")
        os.utime(temp, (stale, stale))
        old_keys.append(f"{committed.folder}/.manifest.json.1234abcd.tmp")
        now = time.time()

    plan, dry = run_retention(store, Policy(), TODAY, dry_run=True, now=now, log=lambda _m: None)
    found = {x.key for x in plan.leftovers if x.kind != "multipart upload"}
    assert dry is None and found == set(old_keys)
    uploads = {x.upload_id for x in plan.leftovers if x.kind == "multipart upload"}
    assert uploads == ({old_upload} if _s3(store) else set())
    assert len(keys_in(store)) == (5 if _s3(store) else 6)  # the dry run touched nothing

    _plan, result = run_retention(store, Policy(), TODAY, now=now, log=lambda _m: None)
    assert result is not None and result.errors == []
    assert result.leftovers_cleaned == len(old_keys) + bool(old_upload)
    remaining = keys_in(store)
    assert not any(k.startswith(tuple(old_keys)) for k in remaining)
    assert any(k.startswith(fresh) for k in remaining)
    assert store.verify(committed).ok  # the committed generation was not touched
    if _s3(store):
        left = {upload_id for _k, upload_id, _t in store.incomplete_uploads()}
        assert old_upload not in left and fresh_upload in left
        store.abort_upload(f"{committed.folder}/g-new/big.bin", fresh_upload)
    else:
        assert not (store.root / uncommitted.folder).exists()


def test_debris_inside_a_doomed_partition_goes_with_it(tmp_path):
    store = LocalStore(tmp_path / "store")
    doomed = write_artifact(store, SQL, "2025-06-01", "ws_acme")
    write_artifact(store, SQL, "2026-03-30", "ws_acme")
    orphan = stage_orphan(store, doomed.folder, "g-20250601T010000-0000dead")
    stale = time.time() - 48 * HOUR
    os.utime(store.root / orphan / "data.bin", (stale, stale))
    plan, result = run_retention(store, Policy(), TODAY, log=lambda _m: None)
    assert plan.leftovers == [] and result.deleted == [doomed]
    assert not (store.root / doomed.folder).exists()


def test_folders_this_project_did_not_write_are_left_alone(tmp_path):
    store = LocalStore(tmp_path / "store")
    write_artifact(store, SQL, "2026-03-30", "ws_acme")
    store._put_atomic(f"{SQL}/date=2020-1-1/workspace=ws_acme/{MANIFEST_NAME}", b"{}")
    store._put_atomic("notes/readme.txt", b"hello")
    plan, _ = run_retention(store, Policy(), TODAY, log=lambda _m: None)
    assert [str(a) for a in plan.artifacts] == [f"{SQL} 2026-03-30|ws_acme"]
    assert (store.root / SQL / "date=2020-1-1").exists() and (store.root / "notes").exists()


def _s3(store) -> bool:
    return isinstance(store, S3Store)


# --------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    "values, message",
    [
        ({"keep_daily_days": -1}, "keep_daily_days"),
        ({"keep_weekly_days": -7}, "keep_weekly_days"),
        ({"keep_weekly_days": "90"}, "keep_weekly_days"),
        ({"keep_daily_days": 1.5}, "keep_daily_days"),
        ({"incomplete_max_age_hours": 0}, "incomplete_max_age_hours"),
    ],
)
def test_bad_policy_is_a_clear_error(tmp_path, values, message):
    # The typed policy refuses such values when it is made; nothing is planned with them.
    with pytest.raises(ConfigError, match=message):
        plan_retention(LocalStore(tmp_path / "store"), Policy(**values), TODAY)


def test_today_must_be_a_date(tmp_path):
    with pytest.raises(TypeError, match=r"datetime\.date"):
        plan_retention(LocalStore(tmp_path / "s"), Policy(), datetime(2026, 3, 31, tzinfo=UTC))
    with pytest.raises(TypeError):
        plan_retention(LocalStore(tmp_path / "s"), Policy(), "2026-03-31")


def test_unreadable_marker_still_holds_its_partition(tmp_path):
    store = LocalStore(tmp_path / "store")
    write_backup(store, "2025-01-01", "ws_acme", assets=(SQL,))
    write_backup(store, "2026-03-30", "ws_acme", assets=(SQL,))
    store._put_atomic("_keep/date=2025-01-01/workspace=ws_acme.json", b"not json")
    plan = plan_retention(store, Policy(), TODAY)
    assert reasons_of(plan, "2025-01-01", "ws_acme")[0].startswith("kept: unreadable marker")


# --------------------------------------------------------------------------------------------
# Dagster job and CLI


def job_store(tmp_path) -> tuple[LocalStore, dict, list[str]]:
    """A store with backups today, yesterday and 5 days ago (UTC), policy: 2 daily days."""
    today = datetime.now(UTC).date()
    store = LocalStore(tmp_path / "store")
    dates = [ago(n, today) for n in (0, 1, 5)]
    for day in dates:
        write_backup(store, day, "ws_acme", assets=(SQL, TYPESENSE))
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text("keep_daily_days: 2\nkeep_weekly_days: 0\n")
    resources = {
        "backup_store": BackupStoreResource(url=f"file://{store.root}"),
        "policy": PolicyResource(policy_file=str(policy_file)),
    }
    return store, resources, dates


def output_metadata(result) -> dict:
    for event in result.events_for_node("apply_retention"):
        if event.event_type_value == "STEP_OUTPUT":
            return event.event_specific_data.metadata
    raise AssertionError("no output")


@pytest.mark.parametrize("how", ["tag", "config"])
def test_job_dry_run_by_tag_or_config_deletes_nothing(tmp_path, how):
    store, resources, dates = job_store(tmp_path)
    before = keys_in(store)
    result = retention_defs.retention_job.execute_in_process(
        resources=resources,
        instance=dg.DagsterInstance.ephemeral(),
        tags={"retention/dry_run": "true"} if how == "tag" else None,
        run_config=(
            {"ops": {"apply_retention": {"config": {"dry_run": True}}}} if how == "config" else None
        ),
    )
    assert result.success
    assert keys_in(store) == before
    metadata = output_metadata(result)
    assert metadata["dry_run"].value is True
    assert metadata["artifacts_to_delete"].value == 2 and metadata["artifacts_deleted"].value == 0
    table = metadata["decisions"].value
    assert "| asset | partition | decision | reason | size |" in table
    assert (
        f"| {SQL} | {dates[2]}|ws_acme | delete | age 5 d: older than keep_daily_days (2) and keep_weekly_days (0)"
        in table
    )
    assert f"| {TYPESENSE} | {dates[0]}|ws_acme | keep | daily, newest verified |" in table
    assert result.output_for_node("apply_retention")["to_delete"] == [
        f"{SQL} {dates[2]}|ws_acme",
        f"{TYPESENSE} {dates[2]}|ws_acme",
    ]
    assert metadata["by_asset"].value[SQL] == {
        "daily": 2, "delete": 1, "keep": 2, "newest verified": 1,
    }  # fmt: skip


def test_job_applies_the_plan_and_reports_it(tmp_path):
    store, resources, dates = job_store(tmp_path)
    result = retention_defs.retention_job.execute_in_process(
        resources=resources, instance=dg.DagsterInstance.ephemeral()
    )
    assert result.success
    assert {d for _a, d, _w in partitions_in(store)} == set(dates[:2])
    metadata = output_metadata(result)
    assert metadata["artifacts_deleted"].value == 2 and metadata["kept_daily"].value == 4
    assert metadata["kept_newest_verified"].value == 2
    assert metadata["bytes_freed"].value > 0
    # How the store's one listing went: 6 artifact folders in 3 date folders of each asset
    assert metadata["store_listing"].value.startswith("store listed in ")
    assert "6 artifact folders in 6 date folders" in metadata["store_listing"].value
    assert metadata["store_listing_seconds"].value >= 0
    assert metadata["store_listing_disk_read_bytes"].value >= 0  # Linux: getrusage counts


def test_job_refuses_a_bad_dry_run_tag(tmp_path):
    _store, resources, _dates = job_store(tmp_path)
    result = retention_defs.retention_job.execute_in_process(
        resources=resources,
        instance=dg.DagsterInstance.ephemeral(),
        tags={"retention/dry_run": "maybe"},
        raise_on_error=False,
    )
    assert not result.success


def test_retention_defs_load_with_the_code_locations_resources():
    env = {"BACKUP_STORE_URL": "file:///tmp/retention-defs-check"}
    defs = dg.Definitions.merge(dg.Definitions(resources=build_resources(env)), retention_defs.defs)
    assert defs.resolve_job_def("retention_job").name == "retention_job"
    schedule = defs.resolve_schedule_def("retention_daily")
    assert schedule.cron_schedule == "30 3 * * *" and schedule.execution_timezone == "UTC"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING


def test_cli_keep_kept_release_and_retention(tmp_path, monkeypatch, capsys):
    store = LocalStore(tmp_path / "store")
    write_backup(store, "2025-01-01", "ws_acme", assets=(SQL,))
    write_backup(store, ago(0, datetime.now(UTC).date()), "ws_acme", assets=(SQL,))
    monkeypatch.setenv("BACKUP_STORE_URL", f"file://{store.root}")
    monkeypatch.delenv("BACKUP_POLICY_FILE", raising=False)
    keep = ["keep", "--date", "2025-01-01", "--workspace", "ws_acme", "--reason", "audit"]
    assert cli.main(keep) == 0
    assert cli.main(["kept"]) == 0
    assert "audit" in capsys.readouterr().out
    assert cli.main(["retention", "--dry-run"]) == 0
    assert "delete 0" in capsys.readouterr().out
    assert cli.main(["release", "--date", "2025-01-01", "--workspace", "ws_acme"]) == 0
    assert cli.main(["retention", "--dry-run", "--today", "2026-03-31"]) == 0
    assert f"would delete {SQL} 2025-01-01|ws_acme" in capsys.readouterr().out
    assert (SQL, "2025-01-01", "ws_acme") in partitions_in(store)
    assert cli.main(["retention"]) == 0
    assert (SQL, "2025-01-01", "ws_acme") not in partitions_in(store)
    assert cli.main(["release", "--date", "2025-01-01", "--workspace", "ws_acme"]) == 1
    assert cli.main(["keep", "--date", "2025-1-1", "--reason", "x"]) == 2


# --------------------------------------------------------------------------------------------
# Per asset x workspace: each series keeps its own newest verified artifact


def test_retention_newest_date_with_only_sql_keeps_older_index_artifacts(store):
    """The newest backup of ws_acme holds only its SQL dump (the index backups failed that
    day): the older Typesense and Qdrant artifacts are that workspace's newest index
    backups and stay. (Per partition, they were all deleted.)"""
    write_backup(store, ago(100), "ws_acme", assets=(SQL,))
    for n in (120, 130):
        write_backup(store, ago(n), "ws_acme")
    plan, result = run_retention(store, Policy(), TODAY, log=lambda _m: None)
    assert kept_of(plan) == {
        (SQL, ago(100), "ws_acme"),
        (TYPESENSE, ago(120), "ws_acme"),
        (QDRANT, ago(120), "ws_acme"),
    }
    assert reasons_of(plan, ago(120), "ws_acme", TYPESENSE) == ["newest verified"]
    assert reasons_of(plan, ago(120), "ws_acme", QDRANT) == ["newest verified"]
    doomed = {a.ref: a.deletion_reason for a in plan.to_delete}
    assert doomed[ArtifactRef(SQL, ago(120), "ws_acme")].endswith(f"newer verified: {ago(100)}")
    assert result is not None and result.errors == []
    assert partitions_in(store) == kept_of(plan)
    for ref in (
        ArtifactRef(TYPESENSE, ago(120), "ws_acme"),
        ArtifactRef(QDRANT, ago(120), "ws_acme"),
    ):
        assert store.verify(ref).ok


def test_retention_corrupt_newest_qdrant_keeps_that_dates_sql_and_typesense(store):
    """The newest Qdrant snapshot is corrupt: that date's verified SQL and Typesense artifacts
    are still the newest verified of their series and stay; Qdrant falls back to the older
    snapshot. (Per partition, the whole newest date was deleted.)"""
    for n in (100, 120):
        write_backup(store, ago(n), "ws_acme")
    flip_one_byte(store, ArtifactRef(QDRANT, ago(100), "ws_acme"), "data.bin")
    plan, _ = run_retention(store, Policy(), TODAY, log=lambda _m: None)
    assert kept_of(plan) == {
        (SQL, ago(100), "ws_acme"),
        (TYPESENSE, ago(100), "ws_acme"),
        (QDRANT, ago(120), "ws_acme"),
    }
    assert plan.failed_verification == [ArtifactRef(QDRANT, ago(100), "ws_acme")]
    doomed = {a.ref: a.deletion_reason for a in plan.to_delete}
    assert doomed[ArtifactRef(QDRANT, ago(100), "ws_acme")].endswith(
        f"failed verification (kept instead: {ago(120)})"
    )
    assert partitions_in(store) == kept_of(plan)


def test_retention_weekly_keeps_the_newest_of_the_week_per_asset(tmp_path):
    """Sunday 2026-03-08 has only the SQL dump; the week's newest Typesense export is
    Saturday's, so that one is the weekly Typesense backup."""
    store = LocalStore(tmp_path / "store")
    write_backup(store, "2026-03-07", "ws_acme", assets=(SQL, TYPESENSE))
    write_backup(store, "2026-03-08", "ws_acme", assets=(SQL,))
    write_backup(store, "2026-03-30", "ws_acme", assets=(SQL, TYPESENSE))
    plan = plan_retention(store, Policy(keep_daily_days=7, keep_weekly_days=90), TODAY)
    assert reasons_of(plan, "2026-03-08", "ws_acme", SQL) == ["weekly"]
    assert reasons_of(plan, "2026-03-07", "ws_acme", SQL) == []
    assert reasons_of(plan, "2026-03-07", "ws_acme", TYPESENSE) == ["weekly"]


def test_retention_unreadable_manifest_counts_as_unverified(tmp_path):
    store = LocalStore(tmp_path / "store")
    for n in (100, 120):
        write_backup(store, ago(n), "ws_acme", assets=(SQL,))
    store._put_atomic(f"{ArtifactRef(SQL, ago(100), 'ws_acme').folder}/{MANIFEST_NAME}", b"{oops")
    plan = plan_retention(store, Policy(), TODAY)
    assert plan.failed_verification == [ArtifactRef(SQL, ago(100), "ws_acme")]
    assert kept_of(plan) == {(SQL, ago(120), "ws_acme")}


def test_retention_asset_rule_hook_can_keep_for_another_assets_sake(tmp_path):
    """The extension point: a rule registered for one asset runs after the generic rules and
    sees every series — the shape SQL Server's log-chain rule takes ("a log is kept while a
    kept full needs it"). Here: a `demo/log` artifact is kept when the `demo/full` of its
    date is kept."""
    store = LocalStore(tmp_path / "store")
    for n in (100, 120):
        write_artifact(store, "demo/full", ago(n), None)
        write_artifact(store, "demo/log", ago(n), None)
    markers.mark_kept(store, ago(120), None, "audit")
    store._delete_prefix("_keep/")  # the marker's reason reaches the full only through the rule
    seen = []

    def keep_logs_of_kept_fulls(series, context):
        seen.append(series.key)
        fulls = context.series[("demo/full", series.workspace)]
        kept_dates = {a.ref.date for a in fulls.artifacts if a.keep}
        for artifact in series.artifacts:
            if artifact.ref.date in kept_dates:
                artifact.keep_for("needed by a kept full")

    def keep_every_full(series, _context):
        for artifact in series.artifacts:
            artifact.keep_for("held by test")

    rules = {"demo/full": [keep_every_full], "demo/log": [keep_logs_of_kept_fulls]}
    plan = plan_retention(store, Policy(), TODAY, asset_rules=rules)
    assert seen == [("demo/log", None)]
    assert reasons_of(plan, ago(120), None, "demo/full") == ["held by test"]
    assert reasons_of(plan, ago(100), None, "demo/log") == [
        "newest verified",
        "needed by a kept full",
    ]
    assert reasons_of(plan, ago(120), None, "demo/log") == ["needed by a kept full"]
    assert plan.to_delete == []
    assert retention.ASSET_RULES == {}  # the registry itself is untouched by the test


def test_retention_dry_run_cli_prints_asset_partition_decision_and_reason(
    tmp_path, monkeypatch, capsys
):
    store = LocalStore(tmp_path / "store")
    write_backup(store, ago(100), "ws_acme", assets=(SQL,))
    write_backup(store, ago(120), "ws_acme", assets=(SQL, TYPESENSE))
    monkeypatch.setenv("BACKUP_STORE_URL", f"file://{store.root}")
    monkeypatch.delenv("BACKUP_POLICY_FILE", raising=False)
    assert cli.main(["retention", "--dry-run", "--today", TODAY.isoformat()]) == 0
    out = capsys.readouterr().out

    def decision(asset: str, day: str) -> tuple[str, str]:
        """(decision, reason) of one artifact's line: decision, asset, partition, size, why."""
        line = re.search(
            rf"^(keep|would delete) +{re.escape(asset)} +{day}\|ws_acme +\d+ B +(.*)$", out, re.M
        )
        assert line, f"no plan line for {asset} {day} in:\n{out}"
        return line[1], line[2]

    assert decision(SQL, ago(100)) == ("keep", "newest verified")
    assert decision(TYPESENSE, ago(120)) == ("keep", "newest verified")
    assert decision(SQL, ago(120)) == (
        "would delete",
        f"age 120 d: older than keep_daily_days (30) and keep_weekly_days (90); newer verified: {ago(100)}",
    )
    lines = out.splitlines()
    assert "dry run: nothing deleted" in lines


def test_retention_orders_sub_daily_windows_within_their_date(tmp_path):
    """Artifacts of sub-daily windows (SQL Server differentials and logs): the newest window
    of a date is the newest of the series, and the week's newest window is its weekly one."""
    store = LocalStore(tmp_path / "store")
    log = "mssql/diff_backup"  # (logs follow their own point-in-time rule, not these windows)
    for day, windows in (("2026-03-07", ("0000", "2345")), ("2025-12-01", ("0100", "0115"))):
        for window in windows:
            ref = ArtifactRef(log, day, "agent_a", window)
            with store.begin(ref) as writer:
                writer.write_bytes("data.bin", PAYLOAD)
                writer.commit(captured_at=f"{day}T00:30:00Z", counts={}, source={}, tool={})
    plan = plan_retention(store, Policy(keep_daily_days=7, keep_weekly_days=90), TODAY)
    decisions = {(a.ref.date, a.ref.window): a.why for a in plan.artifacts}
    assert decisions[("2026-03-07", "2345")] == "weekly, newest verified"
    assert decisions[("2026-03-07", "0000")].startswith("age 24 d: older than keep_daily_days (7)")
    assert decisions[("2025-12-01", "0115")].endswith("newer verified: 2026-03-07 2345")
    assert {a.where for a in plan.to_delete} == {
        "2026-03-07|agent_a 0000", "2025-12-01|agent_a 0100", "2025-12-01|agent_a 0115",
    }  # fmt: skip
    result = retention.apply_plan(store, plan, log=lambda _m: None)
    assert result.errors == [] and {r.window for r in store.list_artifacts()} == {"2345"}
