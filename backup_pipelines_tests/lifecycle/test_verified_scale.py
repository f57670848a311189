"""Retention remembers its verifications (issue 16: 10,000 workspaces' planning pass): a plan
trusts an earlier verification of the very same objects for `reverify_after_days`, and
verifies again what changed, what is too old, or everything on `full_reverify`; the decisions
stay those of a plan that re-reads every artifact."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, date, datetime, timedelta

import zstandard

from backup_pipelines.lib.lifecycle.retention import (
    NEWEST_VERIFIED,
    plan_retention,
    run_retention,
)
from backup_pipelines.lib.lifecycle.verified import VERIFIED_PREFIX, VerificationRecord
from backup_pipelines.lib.policy import Policy
from backup_pipelines.lib.store import ArtifactRef, LocalStore
from backup_pipelines_tests.helpers import flip_one_byte

TODAY = date(2026, 3, 31)
DAY = 86400
ASSETS = ("postgres/workspace_dump", "typesense/collection_export")
WORKSPACES = ("ws_a", "ws_b", "ws_c")
POLICY = Policy(keep_daily_days=2, keep_weekly_days=2, reverify_after_days=4)
SERIES = len(ASSETS) * len(WORKSPACES)


def write(store, asset: str, day: str, workspace: str) -> ArtifactRef:
    ref = ArtifactRef(asset, day, workspace)
    with store.begin(ref) as writer:
        writer.write_bytes("data.bin", bytes(range(256)) * 4)
        writer.commit(
            captured_at=f"{day}T00:30:00Z", counts={"rows": {}}, source={}, tool={}, tables=[]
        )
    return ref


def fill(store, days: int = 4, today: date = TODAY) -> list[str]:
    dates = [(today - timedelta(days=n)).isoformat() for n in range(days)]
    for day in dates:
        for asset in ASSETS:
            for workspace in WORKSPACES:
                write(store, asset, day, workspace)
    return dates


def decisions(plan) -> list[tuple]:
    return [(a.asset, a.where, a.decision) for a in plan.decisions()]


def test_scale_retention_trusts_a_recent_verification_of_unchanged_artifacts(store):
    fill(store)
    now = time.time()
    first = plan_retention(store, POLICY, TODAY, now=now)
    assert (first.verifications, first.trusted) == (SERIES, 0)
    assert any(key.startswith(VERIFIED_PREFIX) for key, _s, _m in store._list("_catalog/"))
    second = plan_retention(store, POLICY, TODAY, now=now + 3600)
    assert (second.verifications, second.trusted) == (0, SERIES)
    assert decisions(second) == decisions(first) and second.to_delete
    assert "0 artifacts verified now, 6 trusted from an earlier verification" in second.summary()


def test_scale_retention_reverifies_a_tampered_artifact(store):
    dates = fill(store)
    now = time.time()
    plan_retention(store, POLICY, TODAY, now=now)
    tampered = ArtifactRef(ASSETS[0], dates[0], "ws_b")
    flip_one_byte(store, tampered, "data.bin")  # rewritten: its listed tag changes
    lines: list[str] = []
    plan = plan_retention(store, POLICY, TODAY, now=now + 60, log=lines.append)
    # The tampered one is read again and fails; its series walks back to the next older one,
    # read too (never verified before: not the newest then); the other series are trusted.
    assert plan.failed_verification == [tampered]
    assert (plan.verifications, plan.trusted) == (2, SERIES - 1)
    full = plan_retention(store, POLICY, TODAY, now=now + 120, full_reverify=True)
    assert decisions(plan) == decisions(full)
    assert (full.verifications, full.trusted) == (SERIES + 1, 0)
    why = {(a.asset, a.where): a.why for a in plan.artifacts}
    assert why[(ASSETS[0], f"{dates[1]}|ws_b")].endswith(NEWEST_VERIFIED)


def test_scale_retention_reverifies_a_verification_older_than_the_policy_allows(tmp_path):
    store = LocalStore(tmp_path / "store")
    dates = fill(store)
    now = time.time()
    plan_retention(store, POLICY, TODAY, now=now)
    # Bytes changed in place with the tag forged back (same inode, same mtime): unseen while
    # the verification is trusted, found once it is too old (at most reverify_after_days).
    tampered = ArtifactRef(ASSETS[1], dates[0], "ws_c")
    manifest = store.require_manifest(tampered)
    path = store.root / tampered.folder / manifest["files"][0]["path"]
    before = os.stat(path)
    with open(path, "r+b") as handle:
        handle.seek(10)
        handle.write(b"\xff")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(path).st_ino == before.st_ino
    soon = plan_retention(store, POLICY, TODAY, now=now + DAY)
    assert soon.failed_verification == [] and soon.verifications == 0
    late = plan_retention(store, POLICY, TODAY, now=now + 4 * DAY)
    assert late.failed_verification == [tampered]
    assert late.verifications == SERIES + 1 and late.trusted == 0
    # The failure dropped its entry; the next older one, verified in its place, protects the
    # series from then on (the tampered one is kept by the daily window, never trusted).
    again = plan_retention(store, POLICY, TODAY, now=now + 4 * DAY + 60)
    assert (again.verifications, again.trusted) == (0, SERIES)
    protected = [a.ref for a in again.artifacts if NEWEST_VERIFIED in a.reasons]
    assert ArtifactRef(ASSETS[1], dates[1], "ws_c") in protected and tampered not in protected


def test_scale_retention_trusts_last_nights_verified_backup_instead_of_reading_tonights(
    tmp_path,
):
    store = LocalStore(tmp_path / "store")
    fill(store, days=3, today=TODAY - timedelta(days=1))
    now = time.time()
    first = plan_retention(store, POLICY, TODAY - timedelta(days=1), now=now)
    assert first.verifications == SERIES
    tonight = TODAY.isoformat()
    for asset in ASSETS:
        for workspace in WORKSPACES:
            write(store, asset, tonight, workspace)
    plan = plan_retention(store, POLICY, TODAY, now=now + DAY)
    assert (plan.verifications, plan.trusted) == (0, SERIES)
    yesterday = (TODAY - timedelta(days=1)).isoformat()
    protected = {(a.asset, a.where) for a in plan.artifacts if NEWEST_VERIFIED in a.reasons}
    assert protected == {(a, f"{yesterday}|{w}") for a in ASSETS for w in WORKSPACES}
    # Everything deleted is older than the series' protected (verified) artifact.
    assert all(a.ref.date < yesterday for a in plan.to_delete) and plan.to_delete


def test_scale_retention_ignores_an_unusable_or_forged_record(store):
    fill(store)
    now = time.time()
    store._put_atomic(f"{VERIFIED_PREFIX}{ASSETS[0]}.json.zst", b"not zstd at all")
    # A forged entry naming an artifact with a made-up fingerprint is not trusted.
    ref = ArtifactRef(ASSETS[1], TODAY.isoformat(), "ws_a")
    entries = {ref.folder: ["0" * 64, now], "../../etc": ["x", 1]}
    forged = json.dumps({"format": 1, "asset": ASSETS[1], "entries": entries})
    store._put_atomic(
        f"{VERIFIED_PREFIX}{ASSETS[1]}.json.zst",
        zstandard.ZstdCompressor().compress(forged.encode()),
    )
    lines: list[str] = []
    plan = plan_retention(store, POLICY, TODAY, now=now, log=lines.append)
    assert (plan.verifications, plan.trusted) == (SERIES, 0)
    assert any(f"{VERIFIED_PREFIX}{ASSETS[0]}.json.zst" in line for line in lines)
    record = VerificationRecord.load(store, ASSETS)
    assert record.problems == [] and set(record.entries[ASSETS[1]]) == {
        f"{ASSETS[1]}/date={TODAY.isoformat()}/workspace={w}" for w in WORKSPACES
    }


def test_scale_retention_dry_run_and_zero_days_remember_nothing(store):
    fill(store)
    plan, result = run_retention(store, POLICY, TODAY, dry_run=True, log=lambda _m: None)
    assert result is None and plan.verifications == SERIES
    assert list(store._list("_catalog/")) == []
    never = POLICY.model_copy(update={"reverify_after_days": 0.0})
    plan_retention(store, never, TODAY)
    again = plan_retention(store, never, TODAY)
    assert (again.verifications, again.trusted) == (SERIES, 0)


def test_scale_retention_cli_full_reverify_reads_again_what_a_plan_remembered(
    tmp_path, monkeypatch, capsys
):
    from backup_pipelines import cli

    store = LocalStore(tmp_path / "store")
    today = datetime.now(UTC).date()
    for day in (today.isoformat(), "2025-01-01"):  # the default policy deletes the old one
        for asset in ASSETS:
            for workspace in WORKSPACES:
                write(store, asset, day, workspace)
    monkeypatch.setenv("BACKUP_STORE_URL", f"file://{store.root}")
    monkeypatch.delenv("BACKUP_POLICY_FILE", raising=False)
    plan_retention(store, Policy(), today)  # remembers the newest of every series
    assert cli.main(["retention", "--dry-run"]) == 0
    assert f"0 artifacts verified now, {SERIES} trusted" in capsys.readouterr().out
    assert cli.main(["retention", "--dry-run", "--full-reverify"]) == 0
    assert f"{SERIES} artifacts verified now, 0 trusted" in capsys.readouterr().out


def test_scale_retention_plan_from_date_folders_listed_at_once_is_the_one_listings_plan(
    store, monkeypatch
):
    """The scan lists date folders several at a time (listing.iter_store_folders): the plan,
    what it trusts and what it deletes, is that of one listing of the whole store, and the
    artifact a tampered generation file leaves unverified is still not deleted for it."""
    from backup_pipelines.lib.lifecycle import scan
    from backup_pipelines.lib.store import listing

    dates = fill(store)
    plan_retention(store, POLICY, TODAY)  # remembers the verifications
    tampered = ArtifactRef(ASSETS[0], dates[0], WORKSPACES[0])
    key = next(k for k, *_ in store._list(f"{tampered.folder}/") if k.endswith("data.bin"))
    store._put_atomic(key, b"not the bytes the manifest names")
    many = plan_retention(store, POLICY, TODAY, remember=False)
    one_listing = listing.iter_objects
    monkeypatch.setattr(
        scan.listing, "iter_store_folders", lambda s, **_: iter([(None, list(one_listing(s, "")))])
    )
    one = plan_retention(store, POLICY, TODAY, remember=False)
    assert decisions(many) == decisions(one) != []
    assert (many.verifications, many.trusted) == (one.verifications, one.trusted)
    assert many.failed_verification == one.failed_verification == [tampered]
    kept = {a.ref: a.keep for a in many.decisions()}
    assert kept[ArtifactRef(ASSETS[0], dates[1], WORKSPACES[0])]  # the newest verified
