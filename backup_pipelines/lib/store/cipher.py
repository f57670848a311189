"""Client-side authenticated encryption of artifact files, streamed: AES-256-GCM in chunks
(`cryptography`, the well-kept binding of OpenSSL; about 2 GB/s per core with AES-NI here, so
it never becomes the bottleneck of a backup that runs at the pg_dump floor).

One file:

    header  = b"BPAE1" | key id length (1 byte) | key id (ASCII) | salt (32 bytes)
    chunk i = AES-256-GCM(file key, nonce = i as 12 bytes big-endian,
                          plaintext = up to CHUNK bytes,
                          associated data = header | i | last-chunk flag) -> ciphertext + 16-byte tag

The file key is HKDF-SHA256(master key, salt, "backup_pipelines artifact v1"), fresh per file,
so counters as nonces never repeat under one key. The header (with the key id) is bound to
every chunk, a reordered, repeated or dropped chunk fails its tag, and the last chunk is
flagged, so a file cut at a chunk boundary fails too. The manifest's sha256 covers the
ciphertext: `verify` works without the key; reading needs it and names the key id when it is
missing.

Keys come from the environment, never from the store: `BACKUP_ENCRYPTION_KEYS` (or the file
named by `BACKUP_ENCRYPTION_KEY_FILE`) lists `id:base64-key` pairs, comma- or line-separated;
`BACKUP_ENCRYPTION_KEY_ID` names the one new backups use. Rotation: add a new key, point the id
at it, keep the old ones listed for as long as backups made with them are kept.
`BACKUP_ENCRYPTION_REQUIRED=1` refuses writing or reading any artifact file unencrypted.
"""

from __future__ import annotations

import base64
import io
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from backup_pipelines.lib.errors import ChecksumMismatch, ConfigError, StoreError

# The manifest's name for this format (files[].encryption.scheme).
SCHEME = "aes-256-gcm-chunked-v1"
MAGIC = b"BPAE1"
CHUNK = 1 << 20
TAG = 16
SALT = 32
KEY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
INFO = b"backup_pipelines artifact v1"
ALGORITHM = "AES-256-GCM, 1 MiB chunks, HKDF-SHA256 per-file key"


class KeyMissing(StoreError):
    """An artifact was encrypted with a key this process does not have."""


@dataclass(frozen=True)
class Keyring:
    keys: Mapping[str, bytes]
    active: str | None  # the key id new artifacts are encrypted with; None: encryption off

    def key(self, key_id: str, where: str = "this artifact") -> bytes:
        if key_id not in self.keys:
            raise KeyMissing(
                f"{where} is encrypted with key {key_id!r}, which is not in "
                "BACKUP_ENCRYPTION_KEYS / BACKUP_ENCRYPTION_KEY_FILE: add it (keys are never "
                "stored with the backups; a lost key is a lost backup)"
            )
        return self.keys[key_id]

    def encryptor(self) -> Encryptor | None:
        """What a new artifact file is encrypted with; None when encryption is off."""
        return Encryptor(self.active, self.keys[self.active]) if self.active else None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, writing: bool = True) -> Keyring:
        """The keys of the environment. `writing=False` (a reader) ignores the active id: a
        reader needs only the keys the artifacts name, and reading must not fail because the
        id for new backups is misconfigured."""
        env = os.environ if env is None else env
        text = env.get("BACKUP_ENCRYPTION_KEYS", "")
        if env.get("BACKUP_ENCRYPTION_KEY_FILE"):
            try:
                with open(env["BACKUP_ENCRYPTION_KEY_FILE"]) as handle:
                    text += "\n" + handle.read()
            except OSError as exc:
                raise ConfigError(
                    f"BACKUP_ENCRYPTION_KEY_FILE {env['BACKUP_ENCRYPTION_KEY_FILE']}: {exc.strerror}"
                ) from None
        keys = parse_keys(text)
        active = (env.get("BACKUP_ENCRYPTION_KEY_ID") or None) if writing else None
        if active is not None and active not in keys:
            raise ConfigError(
                f"BACKUP_ENCRYPTION_KEY_ID {active!r} names no key of BACKUP_ENCRYPTION_KEYS / "
                f"BACKUP_ENCRYPTION_KEY_FILE (known ids: {', '.join(sorted(keys)) or 'none'})"
            )
        return cls(keys, active)


def encryption_required(env: Mapping[str, str] | None = None) -> bool:
    """BACKUP_ENCRYPTION_REQUIRED: no artifact file is written or read unencrypted. Without
    it, a manifest that names plaintext files is read as such (artifacts made before
    encryption was turned on); with it, a planted or downgraded manifest is refused too."""
    env = os.environ if env is None else env
    value = (env.get("BACKUP_ENCRYPTION_REQUIRED") or "").strip().lower()
    if value in {"", "0", "false", "no", "off"}:
        return False
    if value in {"1", "true", "yes", "on"}:
        return True
    raise ConfigError(f"BACKUP_ENCRYPTION_REQUIRED={value!r}: use 1/true/yes or 0/false/no")


def parse_keys(text: str) -> dict[str, bytes]:
    keys: dict[str, bytes] = {}
    for number, item in enumerate(re.split(r"[,\n]", text), 1):
        item = item.strip()
        if not item or item.startswith("#"):
            continue
        key_id, _, encoded = item.partition(":")
        if not KEY_ID.fullmatch(key_id):
            raise ConfigError(f"encryption key entry {number}: {key_id!r} is not a key id")
        try:
            key = base64.b64decode(encoded.strip(), validate=True)
        except ValueError:
            raise ConfigError(f"encryption key {key_id!r} is not base64") from None
        if len(key) != 32:
            raise ConfigError(
                f"encryption key {key_id!r} is {len(key)} bytes: AES-256 needs 32 "
                "(make one with: head -c 32 /dev/urandom | base64)"
            )
        keys[key_id] = key
    return keys


def new_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def _file_key(master: bytes, salt: bytes) -> AESGCM:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=INFO).derive(master)
    return AESGCM(key)


def _aad(header: bytes, index: int, last: bool) -> bytes:
    return header + index.to_bytes(8, "big") + (b"\x01" if last else b"\x00")


def _nonce(index: int) -> bytes:
    return index.to_bytes(12, "big")


class Encryptor:
    """Plaintext in, ciphertext out, a chunk at a time (memory: one chunk)."""

    def __init__(self, key_id: str, master: bytes) -> None:
        salt = secrets.token_bytes(SALT)
        self.key_id = key_id
        self.header = MAGIC + bytes([len(key_id)]) + key_id.encode() + salt
        self._aead = _file_key(master, salt)
        self._pending = bytearray()
        self._index = 0
        self._started = False

    def update(self, data: bytes) -> bytes:
        out: list[bytes] = []
        if not self._started:
            out.append(self.header)
            self._started = True
        view = memoryview(data)
        # Keep at least one byte back: the last chunk must be sealed with the last flag.
        if self._pending:
            room = CHUNK - len(self._pending)
            self._pending += view[:room]
            view = view[room:]
            if not view:
                return b"".join(out)
            out.append(self._seal(self._pending, last=False))
            self._pending = bytearray()
        while len(view) > CHUNK:  # whole chunks straight from the caller's buffer, no copy
            out.append(self._seal(view[:CHUNK], last=False))
            view = view[CHUNK:]
        self._pending += view
        return b"".join(out)

    def finalize(self) -> bytes:
        head = b"" if self._started else self.header
        self._started = True
        return head + self._seal(bytes(self._pending), last=True)

    def _seal(self, chunk, last: bool) -> bytes:
        sealed = self._aead.encrypt(
            _nonce(self._index), chunk, _aad(self.header, self._index, last)
        )
        self._index += 1
        return sealed


def read_header(raw: io.RawIOBase | object) -> tuple[bytes, str, bytes]:
    """(header bytes, key id, salt) from the start of an encrypted file."""
    start = _read_exactly(raw, len(MAGIC) + 1)
    if start[: len(MAGIC)] != MAGIC:
        raise ChecksumMismatch("not an encrypted artifact file (bad magic): corrupt or not ours")
    length = start[-1]
    rest = _read_exactly(raw, length + SALT)
    key_id = rest[:length].decode("ascii", errors="replace")
    if not KEY_ID.fullmatch(key_id):
        raise ChecksumMismatch("an encrypted artifact file names no valid key id: corrupt")
    return start + rest, key_id, rest[length:]


def _read_exactly(raw, size: int) -> bytes:
    data = b""
    while len(data) < size:
        piece = raw.read(size - len(data))
        if not piece:
            raise ChecksumMismatch("an encrypted artifact file ends inside its header: cut off")
        data += piece
    return data


class DecryptingReader(io.RawIOBase):
    """A read()-able plaintext view of an encrypted stream; every chunk is authenticated
    before a byte of it is returned. `expected_key_id` (the manifest's) must be the one the
    file's own header names: a manifest and a file that disagree were tampered with."""

    def __init__(
        self,
        raw,
        keyring: Keyring,
        where: str = "an artifact file",
        expected_key_id: str | None = None,
    ) -> None:
        self._raw = raw
        self._where = where
        self.header, self.key_id, salt = read_header(raw)
        if expected_key_id is not None and self.key_id != expected_key_id:
            raise ChecksumMismatch(
                f"{where}: the manifest says key {expected_key_id!r} but the file is sealed "
                f"with key {self.key_id!r}; the artifact was tampered with — do not restore "
                "from it"
            )
        self._aead = _file_key(keyring.key(self.key_id, where), salt)
        self._index = 0
        self._buffer = memoryview(b"")
        self._next = self._read_sealed()
        self._done = False

    def readable(self) -> bool:
        return True

    def _read_sealed(self) -> bytes:
        data = b""
        while len(data) < CHUNK + TAG:
            piece = self._raw.read(CHUNK + TAG - len(data))
            if not piece:
                break
            data += piece
        return data

    def _open_next(self) -> bytes:
        sealed, self._next = self._next, self._read_sealed()
        last = not self._next
        if len(sealed) < TAG:
            raise ChecksumMismatch(f"{self._where}: encrypted data cut off")
        try:
            plain = self._aead.decrypt(
                _nonce(self._index), sealed, _aad(self.header, self._index, last)
            )
        except InvalidTag:
            raise ChecksumMismatch(
                f"{self._where}: chunk {self._index} fails authentication (damaged, cut off, "
                f"reordered, or not encrypted with key {self.key_id!r}): do not restore from it"
            ) from None
        self._index += 1
        self._done = last
        return plain

    def readinto(self, buffer) -> int:
        # A memoryview of the open chunk: handing it out piece by piece copies nothing twice.
        while not self._buffer and not self._done:
            self._buffer = memoryview(self._open_next())
        if not self._buffer:
            return 0
        size = min(len(buffer), len(self._buffer))
        buffer[:size] = self._buffer[:size]
        self._buffer = self._buffer[size:]
        return size

    def close(self) -> None:
        try:
            self._raw.close()
        finally:
            super().close()
