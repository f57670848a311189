"""Tampered manifests: a manifest is data from storage, and storage can be tampered with or
damaged. Nothing a manifest says may lead a backup, verify or restore outside the artifact's
own folder (or a scratch folder), make a read endless, or crash with a traceback: each is a
clear StoreError (ManifestInvalid) naming the manifest's location and the offending key."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

import psycopg
import pytest
import zstandard

from backup_pipelines.lib.errors import BackupError, StoreError
from backup_pipelines.lib.policy import Policy
from backup_pipelines.lib.qdrant.restore import recover_qdrant_collection
from backup_pipelines.lib.recovery.full_restore import restore_missing_indexes
from backup_pipelines.lib.recovery.workspace_restore import restore_workspace
from backup_pipelines.lib.store import LocalStore
from backup_pipelines.lib.typesense.restore import restore_typesense_collection
from backup_pipelines_tests.faults.store_faults import (
    DATE,
    FULL_REF,
    MEMORY_FILE,
    QDRANT_REF,
    SQL_REF,
    TYPESENSE_REF,
    WORKSPACE,
    cli_env,
    put_manifest_bytes,
    raw_manifest,
    run_cli,
    tamper,
    write_full_dump,
    write_qdrant_artifact,
    write_typesense_artifact,
    write_workspace_dump,
)
from backup_pipelines_tests.helpers import back_up

pytestmark = pytest.mark.faults

# From an artifact folder (<asset>/<asset>/date=/workspace=) up to the store's root and one more.
OUT_OF_A_WORKSPACE_ARTIFACT = "../../../../../"


def assert_manifest_invalid(exc: BaseException, ref, *keys: str) -> None:
    """A StoreError of class ManifestInvalid naming the manifest and every key given."""
    message = str(exc)
    assert isinstance(exc, StoreError) and type(exc).__name__ == "ManifestInvalid", repr(exc)
    assert f"{ref.folder}/manifest.json" in message, message
    for key in keys:
        assert key in message, f"{key!r} not named in: {message}"
    assert "Traceback" not in message


# --------------------------------------------------------------------------------------------
# Traversal: generation, file paths, collection names


def test_tampered_generation_never_makes_a_backup_delete_outside_the_store(store, tmp_path):
    """The next ordinary backup drops the previous generation's folder; a generation of
    `../../x` must not make it delete a folder outside the store (or anything at all)."""
    write_workspace_dump(store)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("not the store's to delete")
    store._put_atomic("other/precious.txt", b"another folder of the same store")
    tamper(store, SQL_REF, lambda m: m.update(generation=OUT_OF_A_WORKSPACE_ARTIFACT + "victim"))

    with pytest.raises(StoreError) as raised:
        store.verify(SQL_REF)
    assert_manifest_invalid(raised.value, SQL_REF, "generation")

    manifest = write_workspace_dump(store)  # the next ordinary backup of the partition
    assert (victim / "precious.txt").read_text() == "not the store's to delete"
    assert store._get("other/precious.txt") == b"another folder of the same store"
    assert store.verify(SQL_REF).ok
    assert store.read_manifest(SQL_REF)["generation"] == manifest["generation"]


@pytest.mark.parametrize(
    "path",
    [
        "../../x",
        "..",
        "/etc/hostname",
        "g-20200101T000000-deadbeef/public.memory_entries.copy.zst",  # another generation
        "../../../../typesense/collection_export/date=2026-11-21/workspace=ws_acme/x",
    ],
    ids=["dotdot", "bare-dotdot", "absolute", "other-generation", "other-artifact"],
)
def test_tampered_file_path_is_refused_even_with_a_matching_sha256(store, path):
    manifest = write_workspace_dump(store)
    entry = manifest["files"][0]
    # Whatever the path names, put bytes there whose size and sha256 match the manifest, so
    # only the path itself can give the tampering away.
    if not path.startswith(("/", "..")):
        body = store._get(f"{SQL_REF.folder}/{entry['path']}")
        store._put_atomic(f"{SQL_REF.folder}/{path}", body)
    tamper(store, SQL_REF, lambda m: m["files"][0].update(path=path))

    for read in (store.verify, store.require_manifest):
        with pytest.raises(StoreError) as raised:
            read(SQL_REF)
        assert_manifest_invalid(raised.value, SQL_REF, "files.0.path")


def test_tampered_file_path_never_restores_rows_from_outside_the_store(source_db, tmp_path):
    """A table file `path` of ../../.. pointing at a file outside the store with a matching
    size and sha256: verify must not pass it and the restore must insert nothing."""
    store = LocalStore(tmp_path / "store")
    back_up(store, {"db": source_db, "policy": Policy()}, WORKSPACE, indexes=())
    manifest = raw_manifest(store, SQL_REF)
    entry = next(f for f in manifest["files"] if f["name"] == MEMORY_FILE)
    table = next(t for t in manifest["tables"] if t["file"] == MEMORY_FILE)
    content = table["columns"].index("content")
    original = (store.root / SQL_REF.folder / entry["path"]).read_bytes()
    rows = zstandard.ZstdDecompressor().decompressobj().decompress(original)
    forged = b"".join(
        b"\t".join(
            b"PWNED from outside the store" if n == content else value
            for n, value in enumerate(line.split(b"\t"))
        )
        + b"\n"
        for line in rows.splitlines()
    )
    outside = tmp_path / "outside" / MEMORY_FILE
    outside.parent.mkdir()
    outside.write_bytes(zstandard.ZstdCompressor().compress(forged))
    body = outside.read_bytes()
    tamper(
        store,
        SQL_REF,
        lambda m: next(f for f in m["files"] if f["name"] == MEMORY_FILE).update(
            path=OUT_OF_A_WORKSPACE_ARTIFACT + f"outside/{MEMORY_FILE}",
            bytes=len(body),
            sha256=hashlib.sha256(body).hexdigest(),
        ),
    )
    with psycopg.connect(source_db, autocommit=True) as conn:
        conn.execute("DELETE FROM memory_entries WHERE workspace_id = %s", (WORKSPACE,))

    verified = None
    with contextlib.suppress(StoreError):
        verified = store.verify(SQL_REF)
    failure = None
    try:
        restore_workspace(store, DATE, WORKSPACE, source_db, Policy(), {})
    except BackupError as exc:
        failure = exc
    with psycopg.connect(source_db) as conn:
        restored = conn.execute(
            "SELECT count(*) FROM memory_entries WHERE workspace_id = %s", (WORKSPACE,)
        ).fetchone()[0]
        pwned = conn.execute(
            "SELECT count(*) FROM memory_entries WHERE content LIKE 'PWNED%%'"
        ).fetchone()[0]
    assert (restored, pwned) == (0, 0), "rows read from outside the store were inserted"
    assert verified is None or not verified.ok, "verify passed the tampered artifact"
    assert failure is not None, "the restore went through"
    assert_manifest_invalid(failure, SQL_REF, "path")


def test_tampered_collection_name_never_writes_outside_the_scratch_folder(
    indexed_source, tmp_path, monkeypatch
):
    """A Qdrant collection named `../x/pwn` in the manifest: the full restore's recovery of
    missing collections must not write its snapshot outside its scratch folder."""
    work = tmp_path / "work"
    (work / "x").mkdir(parents=True)
    monkeypatch.setenv("BACKUP_WORK_DIR", str(work))
    store = LocalStore(tmp_path / "store")
    back_up(store, indexed_source, WORKSPACE, sql=False, indexes=("qdrant",))

    def rename(manifest: dict) -> None:
        manifest["collections"] = {"../x/pwn": manifest["collections"]["agent_ws_acme"]}
        for entry in manifest["files"]:  # the old name keeps its (real, verified) path
            entry["name"] = entry["name"].replace("agent_ws_acme", "../x/pwn")

    tamper(store, QDRANT_REF, rename)
    failure = None
    try:
        restore_missing_indexes(store, DATE, Policy(), {"qdrant": indexed_source["qdrant"]})
    except BackupError as exc:
        failure = exc
    assert list((work / "x").iterdir()) == [], "a snapshot was written outside the scratch folder"
    assert sorted(p.name for p in work.iterdir()) == ["x"]  # scratch folders removed too
    assert failure is not None, "the tampered artifact was restored"
    assert_manifest_invalid(failure, QDRANT_REF, "collections")


# --------------------------------------------------------------------------------------------
# Endless reads: devices, FIFOs, links out of the store


def _point_file_at(store: LocalStore, kind: str, tmp_path: Path) -> None:
    manifest = raw_manifest(store, SQL_REF)
    entry = manifest["files"][0]
    stored = store.root / SQL_REF.folder / entry["path"]
    body = stored.read_bytes()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / entry["name"]).write_bytes(body)
    if kind == "traversal to /dev/zero":
        depth = len(stored.parent.relative_to("/").parts)
        tamper(store, SQL_REF, lambda m: m["files"][0].update(path="../" * depth + "dev/zero"))
    elif kind == "symlink to /dev/zero":
        stored.unlink()
        stored.symlink_to("/dev/zero")
    elif kind == "fifo":
        stored.unlink()
        os.mkfifo(stored)
    elif kind == "symlink out of the store":
        stored.unlink()
        stored.symlink_to(outside / entry["name"])
    elif kind == "manifest a fifo":
        manifest_path = store.root / SQL_REF.folder / "manifest.json"
        manifest_path.unlink()
        os.mkfifo(manifest_path)
    elif kind == "symlinked generation folder":
        for child in stored.parent.iterdir():
            child.unlink()
        stored.parent.rmdir()
        stored.parent.symlink_to(outside, target_is_directory=True)


@pytest.mark.parametrize(
    "kind, refusal",
    [
        ("traversal to /dev/zero", "files.0.path"),
        ("symlink to /dev/zero", "symbolic link"),
        ("fifo", "not a regular file (a FIFO)"),
        ("symlink out of the store", "symbolic link"),
        ("symlinked generation folder", "leads outside the store"),
        ("manifest a fifo", "not a regular file (a FIFO)"),
    ],
)
def test_tampered_device_fifo_or_symlink_is_refused_and_verify_ends(tmp_path, kind, refusal):
    """`verify` as an operator runs it: it must end (not read /dev/zero forever or wait on a
    FIFO for a writer) and report the artifact, naming why."""
    store = LocalStore(tmp_path / "store")
    write_workspace_dump(store)
    _point_file_at(store, kind, tmp_path)
    code, out, err = run_cli(["verify"], cli_env(store), deadline=60)
    assert code is not None, f"verify still running after 60 s ({kind}): it hangs"
    assert code == 1 and ("CORRUPT" in out or "UNREADABLE" in out) and refusal in out, (out, err)
    assert "Traceback" not in err


def test_tampered_sparse_file_is_read_only_up_to_its_declared_size(tmp_path):
    """A file that is far longer than its manifest says (here a 1 TiB sparse file) is read
    to its declared size + 1 byte, then reported, instead of being read to its end."""
    store = LocalStore(tmp_path / "store")
    manifest = write_workspace_dump(store)
    stored = store.root / SQL_REF.folder / manifest["files"][0]["path"]
    with open(stored, "r+b") as handle:
        handle.truncate(1 << 40)
    code, out, err = run_cli(["verify"], cli_env(store), deadline=60)
    assert code is not None, "verify still running after 60 s: it reads the whole file"
    assert code == 1 and "longer than the" in out, (out, err)


def test_tampered_store_object_longer_than_declared_stops_at_declared_size(store):
    manifest = write_workspace_dump(store)
    key = f"{SQL_REF.folder}/{manifest['files'][0]['path']}"
    store._put_atomic(key, store._get(key) + os.urandom(3 << 20))
    result = store.verify(SQL_REF)
    assert not result.ok and "longer than the" in result.problems[0]
    assert result.bytes <= manifest["files"][0]["bytes"]  # the extra byte is never handed out


# --------------------------------------------------------------------------------------------
# Wrong shapes and types: a clear error naming the key, from verify and from every restore


def _first_file(m):
    return m["files"][0]


def _set(path: str, value):
    """A change setting the key at dotted `path` (list indexes as numbers)."""

    def change(manifest: dict) -> None:
        *parents, last = path.split(".")
        node = manifest
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return change


def _drop(key: str):
    def change(manifest: dict) -> None:
        del manifest[key]

    return change


SQL_CASES = {
    "top-level list": (lambda m: [m], "(top level)"),
    "top-level string": (lambda m: "manifest", "(top level)"),
    "files missing": (_drop("files"), "files: required key is missing"),
    "files a string": (_set("files", "a.bin"), "files"),
    "files an object": (_set("files", {"name": "a"}), "files"),
    "bytes a string": (_set("files.0.bytes", "12"), "files.0.bytes"),
    "bytes huge": (_set("files.0.bytes", 10**30), "files.0.bytes"),
    "bytes negative": (_set("files.0.bytes", -1), "files.0.bytes"),
    "bytes boolean": (_set("files.0.bytes", True), "files.0.bytes"),
    "bytes a float": (_set("files.0.bytes", 1e300), "files.0.bytes"),
    "sha256 not hex": (_set("files.0.sha256", "z" * 64), "files.0.sha256"),
    "sha256 short": (_set("files.0.sha256", "ab"), "files.0.sha256"),
    "name with slash": (_set("files.0.name", "a/b"), "files.0.name"),
    "name dotdot": (_set("files.0.name", ".."), "files.0.name"),
    "name with NUL": (_set("files.0.name", "a\x00b"), "files.0.name"),
    "name with backslash": (_set("files.0.name", "..\\x"), "files.0.name"),
    "name too long": (_set("files.0.name", "n" * 300), "files.0.name"),
    "name missing": (lambda m: _first_file(m).pop("name") and None, "files.0.name"),
    "file listed twice": (lambda m: m["files"].append(dict(m["files"][0])), "listed twice"),
    "generation traversal": (_set("generation", "../../x"), "generation"),
    "generation a number": (_set("generation", 7), "generation"),
    "workspace of another folder": (_set("partition.workspace", "ws_other"), "partition"),
    "date of another folder": (_set("partition.date", "2020-01-01"), "partition.date"),
    "asset of another folder": (_set("asset", "postgres/full_dump"), "asset"),
    "captured_at not a time": (_set("captured_at", "yesterday"), "captured_at"),
    "counts a list": (_set("counts", [1]), "counts"),
    "counts rows a string": (_set("counts.rows", "many"), "counts"),
    "source missing": (_drop("source"), "source"),
    "tables missing": (_drop("tables"), "tables"),
    "tables a string": (_set("tables", "public.t"), "tables"),
    "columns a string": (_set("tables.0.columns", "id"), "tables.0.columns"),
    "table without schema": (_set("tables.0.table", "memory_entries"), "tables.0.table"),
    "table file traversal": (_set("tables.0.file", "../x.zst"), "tables.0.file"),
    "table file not listed": (_set("tables.0.file", "other.copy.zst"), "tables.0.file"),
    "workspace column not a column": (_set("tables.0.workspace_column", "tenant"), "tables.0"),
    "rows a string": (_set("tables.0.rows", "1"), "tables.0.rows"),
    "format_version 2": (_set("format_version", 2), "format_version"),
    "too many files": (
        lambda m: m["files"].extend(
            dict(m["files"][0], name=f"f{n}", path=f"{m['generation']}/f{n}") for n in range(10_001)
        ),
        "files",
    ),
}


def _restore_workspace(store):
    restore_workspace(store, DATE, WORKSPACE, "postgresql://unused.invalid/db", Policy(), {})


def _recover_qdrant(store):
    recover_qdrant_collection(None, store, QDRANT_REF, "agent_ws_acme")


def _restore_typesense(store):
    restore_typesense_collection(None, store, TYPESENSE_REF, "memory_ws_acme")


def _restore_full(store):
    from backup_pipelines.lib.postgres.full_restore import restore_full_database

    restore_full_database(store, DATE, "postgresql://unused.invalid/db")


ASSETS = {
    "sql": (SQL_REF, write_workspace_dump, _restore_workspace),
    "qdrant": (QDRANT_REF, write_qdrant_artifact, _recover_qdrant),
    "typesense": (TYPESENSE_REF, write_typesense_artifact, _restore_typesense),
    "full": (FULL_REF, write_full_dump, _restore_full),
}

OTHER_CASES = {
    ("qdrant", "collection name traversal"): (
        lambda m: m.update(collections={"../x/pwn": m["collections"]["agent_ws_acme"]}),
        "collections",
    ),
    ("qdrant", "collections a list"): (_set("collections", ["agent_ws_acme"]), "collections"),
    ("qdrant", "points a string"): (
        _set("collections.agent_ws_acme.points", "1"),
        "collections.agent_ws_acme.points",
    ),
    ("qdrant", "snapshot checksum not hex"): (
        _set("collections.agent_ws_acme.snapshot.checksum", "not-hex"),
        "collections.agent_ws_acme.snapshot.checksum",
    ),
    ("qdrant", "snapshot name traversal"): (
        _set("collections.agent_ws_acme.snapshot.name", "../../etc/x"),
        "collections.agent_ws_acme.snapshot.name",
    ),
    ("typesense", "collection_exists a string"): (
        _set("collection_exists", "yes"),
        "collection_exists",
    ),
    ("typesense", "aliases a string"): (_set("aliases", "memory"), "aliases"),
    ("full", "rows missing"): (_set("counts", {"tables": 1}), "counts.rows"),
    ("full", "rows negative"): (
        lambda m: m["counts"]["rows"].update({"public.memory_entries": -1}),
        "counts.rows",
    ),
}

CASES = {("sql", name): case for name, case in SQL_CASES.items()} | OTHER_CASES


@pytest.mark.parametrize("asset, case", list(CASES), ids=[f"{a}-{c}" for a, c in CASES])
def test_tampered_manifest_shape_is_a_clear_error_naming_the_key(store, asset, case):
    ref, write, restore = ASSETS[asset]
    change, key = CASES[(asset, case)]
    write(store)
    tamper(store, ref, change)

    for read in (store.verify, store.require_manifest):
        with pytest.raises(StoreError) as raised:
            read(ref)
        assert_manifest_invalid(raised.value, ref, key)
    with pytest.raises(BackupError) as raised:
        restore(store)
    assert key in str(raised.value) and ref.folder in str(raised.value), str(raised.value)


@pytest.mark.parametrize(
    "body, problem",
    [
        (b"{not json", "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
        (b'{"format_version": 1, "n": 1' + b"0" * 5000 + b"}", "not valid JSON"),
        (b" " * (17 << 20) + b"{}", "larger than"),
    ],
    ids=["broken", "deeply-nested", "5000-digit-number", "17-MiB"],
)
def test_tampered_manifest_bytes_are_a_clear_error(store, body, problem):
    write_workspace_dump(store)
    put_manifest_bytes(store, SQL_REF, body)
    with pytest.raises(StoreError) as raised:
        store.verify(SQL_REF)
    assert problem in str(raised.value) and SQL_REF.folder in str(raised.value)
    with pytest.raises(BackupError) as raised:
        _restore_workspace(store)
    assert problem in str(raised.value) and SQL_REF.folder in str(raised.value)


def test_tampered_unknown_keys_are_kept_but_never_used(store):
    """Forward compatibility: extra keys survive validation (a newer writer's fields)."""
    manifest = write_workspace_dump(store)
    tamper(store, SQL_REF, lambda m: m.update(future={"path": "../../x"}, note="n"))
    read = store.read_manifest(SQL_REF)
    assert read["future"] == {"path": "../../x"} and read["note"] == "n"
    assert read["files"] == manifest["files"] and store.verify(SQL_REF).ok


def test_tampered_manifest_cli_verify_and_restore_print_errors_not_tracebacks(tmp_path):
    store = LocalStore(tmp_path / "store")
    write_workspace_dump(store)
    write_full_dump(store)
    tamper(store, SQL_REF, _drop("files"))
    tamper(store, FULL_REF, lambda m: [m])
    env = cli_env(store, DATABASE_URL="postgresql://unused.invalid/db")
    for args in (
        ["verify"],
        ["restore", "workspace", "--date", DATE, "--workspace", WORKSPACE],
        ["restore", "full", "--date", DATE],
    ):
        code, out, err = run_cli(args, env)
        assert code == 1 and "Traceback" not in err, (args, out, err)
        assert "invalid manifest" in out + err and "manifest.json" in out + err, (args, out, err)


def test_tampered_manifest_is_kept_out_of_json_round_trips(store):
    """read_manifest returns plain JSON-able dicts (what ~40 consumers expect)."""
    manifest = write_qdrant_artifact(store)
    read = store.read_manifest(QDRANT_REF)
    assert read == manifest and json.loads(json.dumps(read)) == read
