"""Retention's planning pass made cheaper for 10,000 workspaces (issue 16) decides exactly as
before: the series verified several at a time give the plan of one series after the other —
the same decisions, reasons, failed verifications and log lines, in the same order."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from backup_pipelines.lib.lifecycle import markers, retention
from backup_pipelines.lib.lifecycle.retention import plan_retention
from backup_pipelines.lib.policy import Policy
from backup_pipelines.lib.store import ArtifactRef
from backup_pipelines_tests.helpers import flip_one_byte

TODAY = date(2026, 3, 31)
ASSETS = ("postgres/workspace_dump", "typesense/collection_export", "qdrant/collection_snapshot")
PAYLOAD = bytes(range(256))


def write(store, asset: str, day: str, workspace: str | None) -> ArtifactRef:
    ref = ArtifactRef(asset, day, workspace)
    with store.begin(ref) as writer:
        writer.write_bytes("data.bin", PAYLOAD)
        writer.commit(
            captured_at=f"{day}T00:30:00Z", counts={"rows": {}}, source={}, tool={}, tables=[]
        )
    return ref


def write_grid(store, days: list[str], workspaces: list[str]) -> None:
    """A full dump a day, and every workspace asset of every workspace each day."""
    for day in days:
        write(store, "postgres/full_dump", day, None)
        for workspace in workspaces:
            for asset in ASSETS:
                write(store, asset, day, workspace)


def plan_of(store, verifiers: int, monkeypatch) -> tuple[list, list, int, list[str]]:
    monkeypatch.setattr(retention, "VERIFIERS", verifiers)
    lines: list[str] = []
    policy = Policy(keep_daily_days=2, keep_weekly_days=2)
    # full_reverify: every plan verifies (the second would trust the first's verifications)
    plan = plan_retention(store, policy, TODAY, log=lines.append, full_reverify=True)
    decisions = [(a.asset, a.where, a.decision, a.why) for a in plan.decisions()]
    return decisions, plan.failed_verification, plan.verifications, lines


def test_retention_plan_verifying_series_in_parallel_decides_as_one_by_one(store, monkeypatch):
    days = [(TODAY - timedelta(days=n)).isoformat() for n in range(4)]
    workspaces = [f"ws_{n}" for n in range(6)]
    write_grid(store, days, workspaces)
    # Newest artifacts that fail verification: one series walks back one, one walks back two,
    # one series has nothing that verifies (held whole).
    flip_one_byte(store, ArtifactRef(ASSETS[0], days[0], "ws_1"), "data.bin")
    for day in days[:2]:
        flip_one_byte(store, ArtifactRef(ASSETS[1], day, "ws_2"), "data.bin")
    for day in days:
        flip_one_byte(store, ArtifactRef(ASSETS[2], day, "ws_3"), "data.bin")
    markers.mark_kept(store, days[3], "ws_4", "before migration 42")

    one_by_one = plan_of(store, 1, monkeypatch)
    parallel = plan_of(store, 8, monkeypatch)
    assert parallel == one_by_one
    decisions, failed, verifications, lines = parallel
    assert len(failed) == 1 + 2 + 4 and verifications == 6 * 3 + 1 + len(failed) - 1
    why = {(asset, where): why for asset, where, _d, why in decisions}
    assert why[(ASSETS[2], f"{days[3]}|ws_3")] == "held: no verified backup"
    assert why[(ASSETS[1], f"{days[2]}|ws_2")] == "newest verified"
    assert why[(ASSETS[1], f"{days[3]}|ws_2")].endswith(f"newer verified: {days[2]}")
    assert why[(ASSETS[0], f"{days[3]}|ws_4")].startswith("kept: before migration 42")
    assert any("failed verification; trying the next older one" in line for line in lines)


@pytest.mark.parametrize("verifiers", [1, 8])
def test_retention_counts_every_verification_when_verifying_in_parallel(
    tmp_path, monkeypatch, verifiers
):
    from backup_pipelines.lib.store import LocalStore

    store = LocalStore(tmp_path / "store")
    for n in range(4):
        for workspace in ("ws_a", "ws_b", "ws_c"):
            write(store, ASSETS[0], (TODAY - timedelta(days=n)).isoformat(), workspace)
    _decisions, failed, verifications, _lines = plan_of(store, verifiers, monkeypatch)
    assert failed == [] and verifications == 3


def _plan_shape(plan) -> tuple:
    return (
        [(a.asset, a.where, a.decision, a.why, a.bytes) for a in plan.decisions()],
        sorted(plan.failed_verification),
        (plan.verifications, plan.trusted, plan.bytes_to_free),
        sorted((x.kind, x.key, x.bytes) for x in plan.leftovers),
    )


def test_retention_scale_plan_from_lean_listing_is_the_one_listings_plan(store, monkeypatch):
    """The plan's scan keeps a local file's lstat and makes its key and tag only for a
    fingerprint (listing.local_stats), and adds a folder's listed objects at once: on a
    store whose remembered artifacts were since tampered with, rewritten, cut short or added
    to, beside crashed runs' debris and a keep marker, it decides, trusts, re-verifies and
    cleans exactly as the plan built on one listing of every object added one at a time,
    and never trusts a changed artifact."""
    import time

    from backup_pipelines.lib.lifecycle import scan
    from backup_pipelines.lib.lifecycle.verified import fingerprint

    days = [(TODAY - timedelta(days=n)).isoformat() for n in range(3)]
    workspaces = [f"ws_{n}" for n in range(4)]
    write_grid(store, days, workspaces)
    policy = Policy(keep_daily_days=2, keep_weekly_days=2, incomplete_max_age_hours=0.5)
    now = time.time() + 3600  # whatever is written now is an hour old to the plans below
    first = plan_retention(store, policy, TODAY, now=now)  # remembers every newest artifact
    assert (
        first.verifications == 1 + len(ASSETS) * len(workspaces) and not first.failed_verification
    )

    tampered = ArtifactRef(ASSETS[0], days[0], "ws_0")
    flip_one_byte(store, tampered, "data.bin")
    rewritten = ArtifactRef(ASSETS[1], days[0], "ws_1")  # same bytes, written again
    rewritten_key = _data_key(store, rewritten)
    store._put_atomic(rewritten_key, PAYLOAD)
    cut_short = ArtifactRef(ASSETS[2], days[0], "ws_2")  # a file gone
    store._delete_prefix(_data_key(store, cut_short))
    added_to = ArtifactRef(ASSETS[0], days[0], "ws_3")  # one more file in its generation
    store._put_atomic(_data_key(store, added_to).rpartition("/")[0] + "/extra.bin", b"x")
    crashed = "g-20260331T011500-0000beef"
    store._put_atomic(f"{ArtifactRef(ASSETS[1], days[0], 'ws_0').folder}/{crashed}/x", b"o")
    store._put_atomic(f"{ArtifactRef(ASSETS[1], days[0], 'ws_9').folder}/{crashed}/x", b"u")
    store._put_atomic(f"{ArtifactRef(ASSETS[2], days[0], 'ws_0').folder}/.m.json.1.tmp", b"t")
    markers.mark_kept(store, days[2], "ws_3", "before migration 42")

    lean = plan_retention(store, policy, TODAY, now=now, remember=False)
    lean_prints = {ref: fingerprint(f) for ref, f in scan.scan_store(store).items()}
    monkeypatch.setattr(retention, "scan_store", _scan_one_key_at_a_time)
    one = plan_retention(store, policy, TODAY, now=now, remember=False)
    assert _plan_shape(lean) == _plan_shape(one)
    assert lean_prints == {ref: fingerprint(f) for ref, f in _scan_one_key_at_a_time(store).items()}

    # What the plan must never do, checked on the lean plan itself.
    assert tampered in lean.failed_verification and cut_short in lean.failed_verification
    why = {(a.asset, a.where): a.why for a in lean.decisions()}
    for changed in (tampered, cut_short):  # the next older one protects the series
        assert "newest verified" in why[(changed.asset, f"{days[1]}|{changed.workspace}")]
        assert "newest verified" not in why[(changed.asset, f"{days[0]}|{changed.workspace}")]
    assert lean.verifications >= 3  # tampered, cut short and added to are read again
    assert lean.trusted <= len(ASSETS) * len(workspaces) + 1 - 3
    assert why[(ASSETS[0], f"{days[2]}|ws_3")].startswith("kept: before migration 42")
    newest = {
        (a.asset, a.ref.workspace): a.ref.date for a in lean.kept if "newest verified" in a.reasons
    }
    for doomed in lean.to_delete:  # each goes only for a newer verified one of its series
        assert newest[(doomed.asset, doomed.ref.workspace)] > doomed.ref.date
    kinds = {(x.kind, x.key.rstrip("/").rpartition("/")[2]) for x in lean.leftovers}
    assert {("orphan generation", crashed), ("temp file", ".m.json.1.tmp")} <= kinds
    assert sum(1 for x in lean.leftovers if x.kind == "orphan generation") == 2


def _scan_one_key_at_a_time(store, _report=None, _defer=None) -> dict:
    """The scan as it was first written: one listing of the store (listing.iter_objects,
    every key, size, mtime and tag made as it is listed), each object added on its own (no
    report of how the walk went, no generation folder left for later)."""
    from backup_pipelines.lib.lifecycle import scan
    from backup_pipelines.lib.store import listing

    folders: dict = {}
    known: dict = {}
    for key, size, mtime, tag in listing.iter_objects(store, ""):
        where = scan._artifact_of(key.rpartition("/")[0], known)
        if where is not None and not key.startswith(scan.RESERVED_PREFIXES):
            folder = folders.setdefault(where[0], scan.Folder(where[0]))
            folder.add(key, size, mtime, where[1], tag)
    return folders


def _data_key(store, ref: ArtifactRef) -> str:
    manifest = store.require_manifest(ref)
    return store.file_key(ref, manifest, "data.bin")


def test_retention_scale_plan_lists_only_the_generation_folders_it_needs(tmp_path, monkeypatch):
    """A local store keeping a week and a half of dailies: the plan opens the generation
    folders of the newest artifact of each series and of what it deletes, not those of the
    kept ones between (a store keeping a month is mostly those). The walk lists the date
    folders the age rules do not keep and each asset's newest; a series whose newest is
    older (a workspace that missed last night) has it listed after the walk. The decisions,
    reasons and sizes are those of the plan built on every file listed, and the kept ones'
    sizes are listed when asked for (a dry run's lines)."""
    from backup_pipelines.lib.store import LocalStore

    store = LocalStore(tmp_path / "store")
    days = [(TODAY - timedelta(days=n)).isoformat() for n in range(10)]
    write_grid(store, days, ["ws_a", "ws_b"])  # 7 series (the full dump, 3 assets x 2) x 10
    for day in days[1:]:  # ws_c missed the newest date
        for asset in ASSETS:
            write(store, asset, day, "ws_c")
    policy = Policy(keep_daily_days=7, keep_weekly_days=0)  # ages 7-9 go
    first = plan_retention(store, policy, TODAY)  # verifies and remembers each newest
    plan = plan_retention(store, policy, TODAY, remember=False)  # trusts them
    assert first.verifications == 10 and plan.trusted == 10 and len(plan.to_delete) == 10 * 3
    for listed in (first, plan):  # ws_c's 3 newest, in a date folder the walk deferred
        assert listed.listing is not None and listed.listing.generation_folders == 3
        assert "then the 3 generation folders the plan needed in" in listed.listing.describe()
    never_listed = [a for a in plan.artifacts if a.folder._deferred]
    # ages 1-6 of the 7 full series, ages 2-6 of ws_c's 3: kept by age, not the newest
    assert len(never_listed) == 7 * 6 + 3 * 5
    assert all(a.keep and a.reasons == ["daily"] for a in never_listed)
    lean = _plan_shape(plan)  # every size asked for: the kept ones' folders listed now
    assert not any(a.folder._deferred for a in plan.artifacts)
    monkeypatch.setattr(retention, "scan_store", _scan_one_key_at_a_time)
    every_file = plan_retention(store, policy, TODAY, remember=False)
    assert lean == _plan_shape(every_file)
    assert every_file.listing is not None and every_file.listing.generation_folders == 0
    assert all(a.bytes > len(PAYLOAD) for a in plan.artifacts)  # the payload and the manifest
