"""The backup store: a local folder or an S3 bucket behind one interface.

An artifact exists only when its manifest exists. Every write stages its files under a fresh
generation folder and commits by writing manifest.json last, atomically (local: fsync +
rename; S3: a single PUT after every multipart upload completed). A crashed run therefore
leaves files that no manifest names: never read, and replaced cleanly by the next run of the
same partition.

    refs.py      which artifact (asset, date, workspace) and its folder
    manifest.py  the manifest: commit point, and the validated model of what is read back
    lease.py     leases: mutual exclusion of work on one partition, held in the store
    writer.py    staging files (streamed, hashed off the critical path) and the commit
    reader.py    reading a file back, checked against its sha256
    base.py      BackupStore: what both back ends offer on top of moving bytes by key
    local.py     a local folder
    s3.py        an S3-compatible bucket
    url.py       the store named by BACKUP_STORE_URL
"""

from backup_pipelines.lib.store.base import BackupStore
from backup_pipelines.lib.store.lease import (
    DEFAULT_LEASE_TTL,
    LEASE_PREFIX,
    WHOLE_DATABASE_LEASE,
    HeldLease,
    Lease,
    LeaseHeld,
    LeaseLost,
    LeaseOwner,
    default_owner,
    lease_name,
)
from backup_pipelines.lib.store.local import LocalStore
from backup_pipelines.lib.store.manifest import (
    GENERATION_PREFIX,
    MANIFEST_FORMAT_VERSION,
    MANIFEST_NAME,
    ManifestInvalid,
    UnsafeName,
    UnsafeObject,
    is_generation,
    is_plain_name,
    require_plain_name,
)
from backup_pipelines.lib.store.reader import CHUNK, VerifyingReader, VerifyResult, iter_chunks
from backup_pipelines.lib.store.refs import ArtifactRef, parse_artifact_folder, utc_now_iso
from backup_pipelines.lib.store.s3 import S3Store, make_s3_client
from backup_pipelines.lib.store.url import DEFAULT_LOCAL_STORE, store_from_url
from backup_pipelines.lib.store.writer import ArtifactWriter, FileWriter

__all__ = [
    "CHUNK",
    "DEFAULT_LEASE_TTL",
    "DEFAULT_LOCAL_STORE",
    "GENERATION_PREFIX",
    "LEASE_PREFIX",
    "MANIFEST_FORMAT_VERSION",
    "MANIFEST_NAME",
    "WHOLE_DATABASE_LEASE",
    "ArtifactRef",
    "ArtifactWriter",
    "BackupStore",
    "FileWriter",
    "HeldLease",
    "Lease",
    "LeaseHeld",
    "LeaseLost",
    "LeaseOwner",
    "LocalStore",
    "ManifestInvalid",
    "S3Store",
    "UnsafeName",
    "UnsafeObject",
    "VerifyResult",
    "VerifyingReader",
    "default_owner",
    "is_generation",
    "is_plain_name",
    "iter_chunks",
    "lease_name",
    "make_s3_client",
    "parse_artifact_folder",
    "require_plain_name",
    "store_from_url",
    "utc_now_iso",
]
