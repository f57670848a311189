"""The streaming cipher of artifact files: round trips at every chunk boundary, and every way a
ciphertext can be damaged, cut, reordered or read with the wrong key is refused by name."""

from __future__ import annotations

import io
import os

import pytest

from backup_pipelines.lib.errors import ChecksumMismatch, ConfigError
from backup_pipelines.lib.store import cipher

KEY = os.urandom(32)
SENTENCE = b"the agent remembers that Alice's daughter is called Mira. "


def encrypt(data: bytes, key_id: str = "k1", key: bytes = KEY, pieces: int = 7) -> bytes:
    encryptor = cipher.Encryptor(key_id, key)
    out = bytearray()
    step = max(1, len(data) // pieces)
    for start in range(0, len(data), step):
        out += encryptor.update(data[start : start + step])
    return bytes(out + encryptor.finalize())


def decrypt(data: bytes, keys: dict | None = None) -> bytes:
    keyring = cipher.Keyring(keys or {"k1": KEY}, None)
    reader = cipher.DecryptingReader(io.BytesIO(data), keyring, "test file")
    return reader.read()


@pytest.mark.parametrize(
    "size", [0, 1, cipher.CHUNK - 1, cipher.CHUNK, cipher.CHUNK + 1, 3 * cipher.CHUNK + 5]
)
def test_encrypt_round_trip_at_every_chunk_boundary(size):
    data = (SENTENCE * (size // len(SENTENCE) + 1))[:size]
    sealed = encrypt(data)
    assert decrypt(sealed) == data
    if size >= len(SENTENCE):
        assert SENTENCE not in sealed


def test_encrypt_each_file_has_its_own_key_and_nonces():
    assert encrypt(SENTENCE * 10) != encrypt(SENTENCE * 10)


def test_encrypt_flipped_byte_is_refused():
    sealed = bytearray(encrypt(SENTENCE * 100_000))
    for offset in (3, 60, len(sealed) // 2, len(sealed) - 1):
        damaged = bytearray(sealed)
        damaged[offset] ^= 0x01
        with pytest.raises(ChecksumMismatch):
            decrypt(bytes(damaged))


def test_encrypt_cut_off_or_reordered_chunks_are_refused():
    data = SENTENCE * (3 * cipher.CHUNK // len(SENTENCE))
    sealed = encrypt(data)
    header = len(cipher.MAGIC) + 1 + 2 + cipher.SALT
    sealed_chunk = cipher.CHUNK + cipher.TAG
    chunks = [sealed[i : i + sealed_chunk] for i in range(header, len(sealed), sealed_chunk)]
    cut_at_boundary = sealed[: header + 2 * sealed_chunk]
    swapped = sealed[:header] + chunks[1] + chunks[0] + b"".join(chunks[2:])
    for bad in (cut_at_boundary, swapped, sealed[:-5], sealed[: header - 3]):
        with pytest.raises(ChecksumMismatch):
            decrypt(bad)


def test_encrypt_missing_or_wrong_key_is_named():
    sealed = encrypt(SENTENCE, key_id="2026-q4")
    with pytest.raises(cipher.KeyMissing, match="2026-q4"):
        decrypt(sealed, {"k1": KEY})
    with pytest.raises(ChecksumMismatch, match="2026-q4"):
        decrypt(sealed, {"2026-q4": os.urandom(32)})


def test_encrypt_keys_from_the_environment_and_rotation(tmp_path):
    old, new = cipher.new_key(), cipher.new_key()
    key_file = tmp_path / "keys"
    key_file.write_text(f"# rotated 2026-12-01\nold:{old}\n")
    keyring = cipher.Keyring.from_env(
        {
            "BACKUP_ENCRYPTION_KEYS": f"new:{new}",
            "BACKUP_ENCRYPTION_KEY_FILE": str(key_file),
            "BACKUP_ENCRYPTION_KEY_ID": "new",
        }
    )
    assert keyring.active == "new" and set(keyring.keys) == {"old", "new"}
    sealed_old = encrypt(SENTENCE, "old", keyring.keys["old"])
    assert cipher.DecryptingReader(io.BytesIO(sealed_old), keyring).read() == SENTENCE
    for env, problem in [
        ({"BACKUP_ENCRYPTION_KEYS": "a:notbase64!"}, "not base64"),
        ({"BACKUP_ENCRYPTION_KEYS": "a:" + cipher.new_key()[:20]}, "needs 32"),
        ({"BACKUP_ENCRYPTION_KEYS": f"a:{old}", "BACKUP_ENCRYPTION_KEY_ID": "b"}, "names no key"),
        ({"BACKUP_ENCRYPTION_KEYS": f"../x:{old}"}, "not a key id"),
        ({"BACKUP_ENCRYPTION_KEY_FILE": str(tmp_path / "absent")}, "BACKUP_ENCRYPTION_KEY_FILE"),
    ]:
        with pytest.raises(ConfigError, match=problem):
            cipher.Keyring.from_env(env)
    assert cipher.Keyring.from_env({}).active is None  # off unless configured
