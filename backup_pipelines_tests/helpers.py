"""Small helpers shared by tests (no fakes of project code here)."""

from backup_pipelines.lib.store import ArtifactRef, BackupStore


def flip_one_byte(store: BackupStore, ref: ArtifactRef, name: str, offset: int = 100) -> None:
    """Corrupt one byte of a committed file in place, as bit rot or a bad copy would."""
    manifest = store.require_manifest(ref)
    entry = next(f for f in manifest["files"] if f["name"] == name)
    key = f"{ref.folder}/{entry['path']}"
    with store._open_read(key) as handle:
        data = bytearray(handle.read())
    data[min(offset, len(data) - 1)] ^= 0x01
    sink = store._open_sink(key)
    sink.write(bytes(data))
    sink.close()
