"""Client-side encryption wired into the store, against real servers (PostgreSQL, Typesense,
the Qdrant stand-in) and both back ends (a local folder, moto S3): what is stored is
ciphertext, the manifest's sha256 covers it (verify needs no key), restores decrypt on the
fly, a missing key is named, and after a rotation both generations restore."""

from __future__ import annotations

import json
import subprocess
import sys

import psycopg
import pytest

from backup_pipelines.lib.errors import ChecksumMismatch, ConfigError
from backup_pipelines.lib.policy import Policy
from backup_pipelines.lib.postgres import dump
from backup_pipelines.lib.postgres import load as pg_load
from backup_pipelines.lib.recovery.workspace_restore import restore_workspace
from backup_pipelines.lib.store import ArtifactRef, LocalStore, ManifestInvalid, cipher
from backup_pipelines.lib.store.cipher import KeyMissing
from backup_pipelines.lib.streams import iter_decompressed
from backup_pipelines_tests.helpers import DATE, back_up, flip_one_byte, index_workspace
from backup_pipelines_tests.pg_checks import fingerprint
from backup_pipelines_tests.test_definitions import definitions  # noqa: F401 (fixture)

SENTENCE = "Marguerite keeps the spare key of the lighthouse under the blue heron statue"
OLD, NEW = "k2026-q3", "k2026-q4"
KEYS = {OLD: cipher.new_key(), NEW: cipher.new_key()}
ASSETS = ("postgres/workspace_dump", "typesense/collection_export", "qdrant/collection_snapshot")


@pytest.fixture
def use_keys(monkeypatch):
    """Set the encryption environment as an operator would: the listed keys, the active id."""

    def use(active: str | None, *listed: str) -> None:
        monkeypatch.delenv("BACKUP_ENCRYPTION_KEY_FILE", raising=False)
        monkeypatch.setenv("BACKUP_ENCRYPTION_KEYS", ",".join(f"{i}:{KEYS[i]}" for i in listed))
        if active:
            monkeypatch.setenv("BACKUP_ENCRYPTION_KEY_ID", active)
        else:
            monkeypatch.delenv("BACKUP_ENCRYPTION_KEY_ID", raising=False)

    use(None)
    return use


def stored_objects(store, ref: ArtifactRef) -> dict[str, bytes]:
    """Every object of an artifact's folder as stored (small test artifacts only)."""
    objects = {}
    for key, _size, _mtime in store._list(f"{ref.folder}/"):
        with store._open_read(key) as handle:
            objects[key] = handle.read()
    return objects


def plaintext(store, ref: ArtifactRef, name: str) -> bytes:
    manifest = store.require_manifest(ref)
    with store.open_file(ref, manifest, name) as reader:
        return b"".join(iter_decompressed(reader) if name.endswith(".zst") else iter(reader))


def dump_workspace(store, url, workspace="ws_acme", date=DATE) -> ArtifactRef:
    ref = ArtifactRef("postgres/workspace_dump", date, workspace)
    with store.begin(ref) as writer:
        writer.commit(**dump.dump_workspace(url, workspace, Policy(), writer))
    return ref


def plant_sentence(indexed, workspace: str) -> None:
    """The sentence in a memory of the workspace, and in both indexes, as the platform would."""
    with psycopg.connect(indexed["db"], autocommit=True) as conn:
        conn.execute(
            "UPDATE memory_entries SET content = %s WHERE id = "
            "(SELECT min(id) FROM memory_entries WHERE workspace_id = %s)",
            (SENTENCE, workspace),
        )
    with psycopg.connect(indexed["db"]) as conn:  # the indexer reads with a server-side cursor
        index_workspace(conn, workspace, indexed["policy"], indexed["typesense"], indexed["qdrant"])


def index_state(indexed, workspace):
    policy = indexed["policy"]
    documents = b"".join(
        indexed["typesense"].stream_export(policy.typesense_collection_for(workspace))
    )
    points = indexed["qdrant"].scroll(policy.qdrant_collections_for(workspace)[0])
    return (
        sorted(json.dumps(json.loads(line), sort_keys=True) for line in documents.splitlines()),
        sorted(json.dumps(p, sort_keys=True) for p in points),
    )


def lose_workspace(indexed, workspace):
    with psycopg.connect(indexed["db"], autocommit=True) as conn:
        for table in (
            "knowledge_graph_edges",
            "knowledge_graph_nodes",
            "turns",
            "memory_entries",
            "sessions",
            "workspaces",
        ):
            conn.execute(f"DELETE FROM {table} WHERE workspace_id = %s", (workspace,))
    indexed["typesense"].delete_collection(indexed["policy"].typesense_collection_for(workspace))
    indexed["qdrant"].delete_collection(indexed["policy"].qdrant_collections_for(workspace)[0])


def test_encrypt_workspace_backup_holds_no_plaintext_and_restores_identical(
    store, indexed_source, use_keys
):
    use_keys(NEW, NEW)
    plant_sentence(indexed_source, "ws_acme")
    back_up(store, indexed_source, "ws_acme")
    before = fingerprint(indexed_source["db"], "ws_acme"), index_state(indexed_source, "ws_acme")

    needle = SENTENCE.encode()
    for asset in ASSETS:
        ref = ArtifactRef(asset, DATE, "ws_acme")
        manifest = store.require_manifest(ref)
        assert manifest["files"] and all(
            entry["encryption"] == {"scheme": "aes-256-gcm-chunked-v1", "key_id": NEW}
            for entry in manifest["files"]
        )
        for key, data in stored_objects(store, ref).items():
            assert needle not in data, key
            if not key.endswith("manifest.json"):
                assert data.startswith(cipher.MAGIC), key  # ciphertext, not a zstd frame
        assert store.verify(ref).ok
    # The sentence was backed up: it is in the plaintext the store hands a restore.
    sql_ref = ArtifactRef("postgres/workspace_dump", DATE, "ws_acme")
    assert any(
        needle in plaintext(store, sql_ref, entry["name"])
        for entry in store.require_manifest(sql_ref)["files"]
    )

    lose_workspace(indexed_source, "ws_acme")
    report = restore_workspace(
        store, DATE, "ws_acme", indexed_source["db"], indexed_source["policy"],
        indexed_source["indexes"],
    )  # fmt: skip

    assert report.verdict == "PASS"
    after = fingerprint(indexed_source["db"], "ws_acme"), index_state(indexed_source, "ws_acme")
    assert after == before


def test_encrypt_missing_key_is_named_and_verify_needs_no_key(
    store, source_db, make_database, use_keys
):
    use_keys(NEW, NEW)
    ref = dump_workspace(store, source_db)
    use_keys(None, OLD)  # the key id of the artifact is no longer listed

    result = store.verify(ref)
    assert result.ok and result.files == len(store.require_manifest(ref)["files"])
    target = make_database("nokey")
    with pytest.raises(KeyMissing) as missing:
        pg_load.load_workspace_dump_into_empty_database(store, ref, target)
    message = str(missing.value)
    assert NEW in message and "BACKUP_ENCRYPTION_KEYS" in message
    assert "BACKUP_ENCRYPTION_KEY_FILE" in message and ref.folder in message
    assert KEYS[OLD] not in message and KEYS[NEW] not in message
    with psycopg.connect(target) as conn:  # refused before anything was written
        query = "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        assert conn.execute(query).fetchone()[0] == 0


def test_encrypt_flipped_ciphertext_byte_fails_verify_and_decryption(store, source_db, use_keys):
    use_keys(NEW, NEW)
    ref = dump_workspace(store, source_db)
    manifest = store.require_manifest(ref)
    name = next(t["file"] for t in manifest["tables"] if t["table"] == "public.memory_entries")
    flip_one_byte(store, ref, name, offset=200)

    use_keys(None)  # verify without any key
    result = store.verify(ref)
    assert not result.ok
    assert len(result.problems) == 1 and name in result.problems[0]
    assert "does not match its manifest" in result.problems[0]

    use_keys(None, NEW)  # with the key, a restore's read is refused, no plaintext handed out
    with (
        pytest.raises(ChecksumMismatch, match=name),
        store.open_file(ref, manifest, name) as reader,
    ):
        reader.read()
    # And the cipher alone (no sha256 check in front of it) refuses it by the chunk's tag.
    key = store.file_key(ref, manifest, name)
    keyring = cipher.Keyring.from_env(writing=False)
    with (
        pytest.raises(ChecksumMismatch, match="chunk 0 fails authentication"),
        cipher.DecryptingReader(store._open_read(key), keyring) as reader,
    ):
        reader.read()


def test_encrypt_key_rotation_both_generations_restore(store, source_db, make_database, use_keys):
    use_keys(OLD, OLD)
    first = dump_workspace(store, source_db, date="2026-11-20")
    use_keys(NEW, OLD, NEW)  # rotation: new key added and made active, old one still listed
    second = dump_workspace(store, source_db, date="2026-11-21")

    ids = {
        ref.date: {entry["encryption"]["key_id"] for entry in store.require_manifest(ref)["files"]}
        for ref in (first, second)
    }
    assert ids == {"2026-11-20": {OLD}, "2026-11-21": {NEW}}
    expected = fingerprint(source_db, "ws_acme")
    for ref in (first, second):
        target = make_database("rotated")
        pg_load.load_workspace_dump_into_empty_database(store, ref, target)
        assert fingerprint(target) == expected

    use_keys(NEW, NEW)  # the old key dropped: its generation is unreadable, named
    with pytest.raises(KeyMissing, match=OLD):
        pg_load.load_workspace_dump_into_empty_database(store, first, make_database("gone"))
    assert store.verify(first).ok


def test_encrypt_full_dump_streams_into_pg_restore(store, source_db, make_database, use_keys):
    use_keys(NEW, NEW)
    ref = ArtifactRef("postgres/full_dump", DATE)
    with store.begin(ref) as writer:
        writer.commit(**dump.dump_full_database(source_db, writer))
    entry = store.require_manifest(ref)["files"][0]
    assert entry["encryption"]["key_id"] == NEW
    use_keys(None, NEW)
    assert store.verify(ref).ok

    target = make_database("full")
    pg_load.pg_restore_full_dump(store, ref, target)  # decrypted into pg_restore's stdin
    assert fingerprint(target) == fingerprint(source_db)


def test_encrypt_full_restore_into_new_database(tmp_path, source_db, use_keys):
    from backup_pipelines.lib.postgres.full_restore import restore_full_database

    use_keys(NEW, NEW)
    store = LocalStore(tmp_path)
    ref = ArtifactRef("postgres/full_dump", DATE)
    with store.begin(ref) as writer:
        writer.commit(**dump.dump_full_database(source_db, writer))
    result = restore_full_database(store, DATE, source_db, jobs=2)
    admin = source_db.rsplit("/", 1)[0]
    try:
        assert fingerprint(f"{admin}/{result['database']}") == fingerprint(source_db)
    finally:
        with psycopg.connect(f"{admin}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{result["database"]}" WITH (FORCE)')


def test_encrypt_off_by_default_and_old_manifests_stay_valid(tmp_path, source_db, use_keys):
    store = LocalStore(tmp_path)
    ref = dump_workspace(store, source_db)  # no key id configured
    manifest = store.require_manifest(ref)
    assert all("encryption" not in entry for entry in manifest["files"])
    use_keys(NEW, NEW)  # turning encryption on later leaves older artifacts readable
    assert plaintext(store, ref, manifest["files"][0]["name"])
    assert store.verify(ref).ok


@pytest.mark.parametrize(
    "encryption",
    [
        {"scheme": "aes-128-cbc", "key_id": NEW},
        {"scheme": "aes-256-gcm-chunked-v1", "key_id": "../../etc/passwd"},
        {"scheme": "aes-256-gcm-chunked-v1", "key_id": ""},
        {"scheme": "aes-256-gcm-chunked-v1", "key_id": NEW, "key": KEYS[NEW]},
        {"scheme": "aes-256-gcm-chunked-v1"},
        "aes-256-gcm-chunked-v1",
    ],
)
def test_encrypt_record_in_a_manifest_is_validated(tmp_path, source_db, use_keys, encryption):
    use_keys(NEW, NEW)
    store = LocalStore(tmp_path)
    ref = dump_workspace(store, source_db)
    path = tmp_path / ref.folder / "manifest.json"
    raw = json.loads(path.read_text())
    raw["files"][0]["encryption"] = encryption
    path.write_text(json.dumps(raw))
    with pytest.raises(ManifestInvalid, match=r"files\.0\.encryption"):
        store.require_manifest(ref)


def test_encrypt_manifest_and_file_header_must_name_the_same_key(tmp_path, source_db, use_keys):
    use_keys(NEW, OLD, NEW)
    store = LocalStore(tmp_path)
    ref = dump_workspace(store, source_db)
    path = tmp_path / ref.folder / "manifest.json"
    raw = json.loads(path.read_text())
    raw["files"][0]["encryption"]["key_id"] = OLD
    path.write_text(json.dumps(raw))
    manifest = store.require_manifest(ref)
    with pytest.raises(ChecksumMismatch, match="tampered"):
        store.open_file(ref, manifest, manifest["files"][0]["name"])


def test_encrypt_misconfigured_key_id_fails_the_backup_before_anything_is_staged(
    tmp_path, source_db, use_keys, monkeypatch
):
    use_keys(None, OLD)
    monkeypatch.setenv("BACKUP_ENCRYPTION_KEY_ID", "k-typo")
    store = LocalStore(tmp_path)
    with pytest.raises(ConfigError, match="k-typo"):
        dump_workspace(store, source_db)
    assert not list(store._list(""))


def test_encrypt_stored_copy_keeps_ciphertext_without_the_key(tmp_path, source_db, use_keys):
    """What a second store gets: the stored bytes, unchanged (same sha256), no key needed."""
    use_keys(NEW, NEW)
    primary, copy = LocalStore(tmp_path / "primary"), LocalStore(tmp_path / "copy")
    ref = dump_workspace(primary, source_db)
    manifest = primary.require_manifest(ref)
    use_keys(None)
    with copy.begin(ref) as writer:
        for entry in manifest["files"]:
            with (
                primary.open_file(ref, manifest, entry["name"], decrypt=False) as source,
                writer.open_stored_copy(entry["name"], entry) as out,
            ):
                while chunk := source.read(1 << 20):
                    out.write(chunk)
        own = {"format_version", "asset", "partition", "created_at", "generation", "files"}
        writer.commit(**{k: v for k, v in manifest.items() if k not in own})
    copied = copy.require_manifest(ref)
    assert [(f["sha256"], f["encryption"]) for f in copied["files"]] == [
        (f["sha256"], f["encryption"]) for f in manifest["files"]
    ]
    assert copy.verify(ref).ok
    use_keys(None, NEW)
    assert plaintext(copy, ref, manifest["files"][0]["name"]) == plaintext(
        primary, ref, manifest["files"][0]["name"]
    )


def test_encrypt_cli_keys_new_prints_a_key_the_keyring_accepts():
    output = subprocess.run(
        [sys.executable, "-m", "backup_pipelines.cli", "keys", "new", "--id", "prod-2026"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    keyring = cipher.Keyring.from_env(
        {"BACKUP_ENCRYPTION_KEYS": output, "BACKUP_ENCRYPTION_KEY_ID": "prod-2026"}
    )
    assert keyring.active == "prod-2026" and len(keyring.keys["prod-2026"]) == 32


def test_encrypt_cli_list_names_the_key_ids_and_verify_needs_no_key(
    tmp_path, source_db, use_keys, monkeypatch, capsys
):
    from backup_pipelines import cli

    store = LocalStore(tmp_path)
    use_keys(OLD, OLD)
    dump_workspace(store, source_db, date="2026-11-20")
    use_keys(NEW, OLD, NEW)
    dump_workspace(store, source_db, date="2026-11-21")
    monkeypatch.setenv("BACKUP_STORE_URL", f"file://{tmp_path}")
    use_keys(None)

    assert cli.main(["list"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert [line.rsplit("  ", 1)[-1] for line in listing if "workspace_dump" in line] == [
        f"encrypted with {OLD}",
        f"encrypted with {NEW}",
    ]
    assert cli.main(["verify"]) == 0
    assert "2 of 2 artifacts verified" in capsys.readouterr().out


def test_encrypt_dagster_backup_job_encrypts_and_its_checks_pass(
    definitions,  # noqa: F811
    use_keys,
    tmp_path,
):
    """The workspace backup job with a key configured: every artifact encrypted, the verify and
    consistency checks (which read the point-id and export files back) pass, the UI shows the
    key id and never a key."""
    import dagster as dg

    use_keys(NEW, OLD, NEW)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("workspaces", ["ws_acme"])
        job = definitions.resolve_job_def("workspace_backup_job")
        result = job.execute_in_process(instance=instance, partition_key=f"{DATE}|ws_acme")
        assert result.success
        materializations = result.get_asset_materialization_events()
        assert len(materializations) == 3
        for event in materializations:
            metadata = event.materialization.metadata
            assert metadata["encryption"].value == f"aes-256-gcm, key {NEW}"
        checks = [
            e.event_specific_data
            for e in result.all_events
            if e.event_type_value == "ASSET_CHECK_EVALUATION"
        ]
        assert checks and all(check.passed for check in checks)
        seen = str([e.message or "" for e in instance.all_logs(result.run_id)])
        seen += str([e.materialization.metadata for e in materializations])
        assert KEYS[NEW] not in seen and KEYS[OLD] not in seen
    store = LocalStore(tmp_path / "store")
    for asset in ASSETS:
        ref = ArtifactRef(asset, DATE, "ws_acme")
        assert {f["encryption"]["key_id"] for f in store.require_manifest(ref)["files"]} == {NEW}


def test_encrypt_required_refuses_plaintext_artifacts_both_ways(
    tmp_path, source_db, use_keys, monkeypatch
):
    store = LocalStore(tmp_path)
    plain = dump_workspace(store, source_db, date="2026-11-20")  # before encryption was on
    monkeypatch.setenv("BACKUP_ENCRYPTION_REQUIRED", "1")
    with pytest.raises(ConfigError, match="BACKUP_ENCRYPTION_KEY_ID"):
        dump_workspace(store, source_db, date="2026-11-21")
    assert [ref.date for ref in store.list_artifacts()] == ["2026-11-20"]
    manifest = store.require_manifest(plain)
    with pytest.raises(ChecksumMismatch, match="BACKUP_ENCRYPTION_REQUIRED"):
        store.open_file(plain, manifest, manifest["files"][0]["name"])
    assert store.verify(plain).ok  # verify reads stored bytes: still fine

    use_keys(NEW, NEW)
    sealed = dump_workspace(store, source_db, date="2026-11-21")
    assert plaintext(store, sealed, store.require_manifest(sealed)["files"][0]["name"])
