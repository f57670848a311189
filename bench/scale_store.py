"""A store of many workspaces, built in seconds, holding what the product writes.

One artifact per asset is written by the store's own writer (`ArtifactWriter`: generation
folder, files with their sha256, manifest.json last) with the fields
the product's engines commit (tables, collections, counts, source, tool; shapes copied from a
`make demo` store), for a template workspace and date. Every artifact of the scenario is then
that template with its partition, workspace, generation and timestamps substituted, written
as plain files (no fsync: set-up of 500,000 files must not take an hour). Files are small;
their number and names are the product's: 7 files for a workspace dump, 2 for a Typesense
export, 3 for a Qdrant snapshot, 1 for the whole-database dump, plus each one's manifest.

Scenario (as bench_rpo_sensor.py): the last `days` dates of every workspace for the three
per-workspace assets plus the whole-database dump; one workspace in `missed_every` missed last
night. The newest artifact of a workspace represents 8 hours ago, the one before 32 hours ago
(late: past 24 h + 60 min), and so on a day apart.
"""

from __future__ import annotations

import json
import os
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from backup_pipelines.lib.store import MANIFEST_NAME, ArtifactRef, LocalStore

WORKSPACE_ASSETS = [
    "postgres/workspace_dump",
    "typesense/collection_export",
    "qdrant/collection_snapshot",
]
FULL_DUMP = "postgres/full_dump"
ASSETS = [FULL_DUMP, *WORKSPACE_ASSETS]

TEMPLATE_WORKSPACE = "wsTEMPLATE0"
TEMPLATE_DATE = "1999-12-31"
TEMPLATE_CAPTURED = "1999-12-31T23:59:58.123Z"
NEWEST_AGE = timedelta(hours=8)

TABLES = {
    "public.workspaces": ["workspace_id", "name", "plan", "settings", "created_at"],
    "public.sessions": ["id", "workspace_id", "agent", "title", "metadata", "started_at",
                        "ended_at"],
    "public.knowledge_graph_nodes": ["id", "workspace_id", "label", "node_type", "properties",
                                     "embedding", "created_at"],
    "public.turns": ["id", "workspace_id", "session_id", "seq", "role", "content", "tokens",
                     "created_at"],
    "public.memory_entries": ["id", "workspace_id", "session_id", "kind", "content",
                              "importance", "metadata", "embedding", "created_at",
                              "updated_at"],
    "public.knowledge_graph_edges": ["id", "workspace_id", "source_id", "target_id", "relation",
                                     "weight", "properties", "created_at"],
}  # fmt: skip
SOURCE_PG = {
    "database": "agent_memory",
    "kind": "postgresql",
    "server": "db.internal:5432/agent_memory",
    "server_version": "15.18 (Debian 15.18-0+deb12u1)",
    "txid_snapshot": "776:776:",
    "wal_lsn": "0/1D3C020",
}
PG_DUMP = "pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"


def _fields(asset: str, workspace: str | None) -> tuple[list[str], dict]:
    """File names and manifest fields of one artifact, as the engines commit them."""
    rows = {"public.workspaces": 1, "public.sessions": 20, "public.knowledge_graph_nodes": 50,
            "public.turns": 200, "public.memory_entries": 500,
            "public.knowledge_graph_edges": 100}  # fmt: skip
    if asset == FULL_DUMP:
        return ["database.dump.zst"], {
            "counts": {"rows": rows, "tables": len(rows)},
            "source": SOURCE_PG,
            "tool": {"compression": "zstd level 1", "format": "custom", "name": "pg_dump",
                     "uncompressed_bytes": 7794789, "version": PG_DUMP},
            "duration_seconds": 0.687,
        }  # fmt: skip
    if asset == "postgres/workspace_dump":
        tables = [
            {"columns": columns, "file": f"{table}.copy.zst", "rows": rows[table],
             "table": table, "workspace_column": "workspace_id"}
            for table, columns in TABLES.items()
        ]  # fmt: skip
        return ["schema.sql"] + [t["file"] for t in tables], {
            "counts": {"rows": rows},
            "source": SOURCE_PG,
            "tables": tables,
            "tool": {"compression": "zstd level 1", "format": "copy-text",
                     "method": "COPY in one REPEATABLE READ snapshot", "name": "pg_dump",
                     "version": PG_DUMP},
            "uncompressed_bytes": 2586389,
            "duration_seconds": 0.416,
        }  # fmt: skip
    if asset == "typesense/collection_export":
        return ["collection.json", "documents.jsonl.zst"], {
            "aliases": [],
            "collection_exists": True,
            "counts": {"documents": 500},
            "export_started_at": TEMPLATE_CAPTURED,
            "source": {"collection": f"memory_{workspace}", "kind": "typesense",
                       "server": "http://typesense.internal:8108", "server_version": "0.24.1"},
            "tool": {"compression": "zstd level 1", "name": "typesense documents/export"},
            "uncompressed_bytes": 173442,
            "duration_seconds": 0.022,
        }  # fmt: skip
    collection = f"agent_{workspace}"
    return [f"{collection}.snapshot.zst", f"{collection}.point_ids.txt.zst", "collections.json"], {
        "collections": {collection: {
            "aliases": [], "points": 500, "sha256_uncompressed": "47" * 32,
            "snapshot": {"checksum": "47" * 32, "creation_time": "1999-12-31T23:59:58",
                         "name": f"{collection}-3115833498959069-1999-12-31-23-59-58.snapshot",
                         "size": 69304320}}},
        "collections_missing": [],
        "counts": {"points": 500, "points_per_collection": {collection: 500}},
        "source": {"collections": [collection], "kind": "qdrant",
                   "server": "http://qdrant.internal:6333", "server_version": "1.19.0"},
        "tool": {"compression": "zstd level 1", "name": "qdrant collection snapshot",
                 "offline_reader": "qdrant-edge"},
    }  # fmt: skip


@dataclass
class Template:
    """One committed artifact as the writer left it, with the strings a clone replaces."""

    asset: str
    manifest: str
    generation: str
    created_at: str
    files: list[tuple[str, bytes]]

    def clone(self, day: str, workspace: str | None, captured: datetime) -> list[tuple[str, bytes]]:
        """(key, bytes) of the same artifact for another partition, in the order the writer
        writes them: data files, then the manifest."""
        stamp = captured.astimezone(UTC)
        captured_text = stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"
        created = stamp + timedelta(seconds=40)
        created_text = (
            created.strftime("%Y-%m-%dT%H:%M:%S.") + f"{created.microsecond // 1000:03d}Z"
        )
        tag = zlib.crc32(f"{self.asset}|{day}|{workspace}".encode())
        generation = f"g-{stamp:%Y%m%dT%H%M%S}-{tag:08x}"
        text = (
            self.manifest.replace(self.generation, generation)
            .replace(self.created_at, created_text)
            .replace(TEMPLATE_CAPTURED, captured_text)
            .replace(TEMPLATE_DATE, day)
        )
        if workspace is not None:
            text = text.replace(TEMPLATE_WORKSPACE, workspace)
        folder = ArtifactRef(self.asset, day, workspace).folder
        out = []
        for name, data in self.files:
            if workspace is not None:
                name = name.replace(TEMPLATE_WORKSPACE, workspace)
            out.append((f"{folder}/{generation}/{name}", data))
        out.append((f"{folder}/{MANIFEST_NAME}", text.encode()))
        return out


def make_templates() -> dict[str, Template]:
    """One artifact per asset, written by the store's writer into a scratch folder."""
    templates = {}
    with tempfile.TemporaryDirectory(prefix="bench-templates-") as scratch:
        store = LocalStore(scratch)
        for asset in ASSETS:
            workspace = None if asset == FULL_DUMP else TEMPLATE_WORKSPACE
            ref = ArtifactRef(asset, TEMPLATE_DATE, workspace)
            names, fields = _fields(asset, workspace)
            files = [(name, f"bench {name}\n".encode()) for name in names]
            with store.begin(ref) as writer:
                for name, data in files:
                    writer.write_bytes(name, data)
                manifest = writer.commit(captured_at=TEMPLATE_CAPTURED, **fields)
            text = (Path(scratch) / ref.folder / MANIFEST_NAME).read_text()
            templates[asset] = Template(
                asset, text, writer.generation, manifest["created_at"], files
            )
    return templates


def workspace_ids(count: int) -> list[str]:
    return [f"ws_{n:05d}" for n in range(count)]


def scenario(
    workspaces: list[str], now: datetime, days: int, missed_every: int = 20
) -> Iterator[tuple[str, str, str | None, datetime]]:
    """(asset, date, workspace, captured) of every artifact the store holds."""
    today = now.astimezone(UTC).date()
    for back in range(1, days + 1):
        day = (today - timedelta(days=back)).isoformat()
        captured = now - NEWEST_AGE - timedelta(days=back - 1)
        for asset in ASSETS:
            owners = [None] if asset == FULL_DUMP else workspaces
            for n, workspace in enumerate(owners):
                if back == 1 and workspace is not None and n % missed_every == 0:
                    continue  # missed last night
                yield asset, day, workspace, captured


def write_local(root: Path, artifacts, templates: dict[str, Template]) -> tuple[int, int]:
    """Write every artifact as plain files under root; (artifacts, files)."""
    made: set[str] = set()
    count = files = 0
    for asset, day, workspace, captured in artifacts:
        for key, data in templates[asset].clone(day, workspace, captured):
            folder = os.path.join(root, os.path.dirname(key))
            if folder not in made:
                os.makedirs(folder, exist_ok=True)
                made.add(folder)
            with open(os.path.join(root, key), "wb") as handle:
                handle.write(data)
            files += 1
        count += 1
    return count, files


def template_summary(templates: dict[str, Template]) -> str:
    return ", ".join(
        f"{asset}: {len(t.files)} files + manifest ({len(t.manifest):,} B)"
        for asset, t in templates.items()
    )


def committed_partitions(artifacts) -> Iterator[tuple[str, str]]:
    """(asset, partition key) Dagster would have recorded for these artifacts."""
    for asset, day, workspace, _captured in artifacts:
        yield asset, day if workspace is None else f"{day}|{workspace}"


def describe_manifest(templates: dict[str, Template], asset: str) -> dict:
    return json.loads(templates[asset].manifest)
