"""The narrow interface between the index engines and the code that uses them.

`recovery` (the consistency gate, restores, the drill) and `monitoring` never reach into an
engine package: they ask the registry for the engines of a deployment and call what every
index engine offers — its backup asset, the ids an artifact holds, a restore from an
artifact, a rebuild from the SQL rows (read by the policy's mapping for that engine,
`indexes.<name>`), a count and a search that must find a restored memory, and the
catch-up of a restore to an instant (the ids a collection holds, upsert rows, delete ids).
Adding an engine is adding a package with an `engine.py` exposing `ENGINE`, and one line in
ENGINE_MODULES.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable, Iterator, Mapping
from enum import StrEnum
from typing import Any, Protocol

import numpy as np

from backup_pipelines.lib.errors import Refusals
from backup_pipelines.lib.ids import Side
from backup_pipelines.lib.mapping import Row
from backup_pipelines.lib.policy import IndexMapping, Policy
from backup_pipelines.lib.store import ArtifactRef, BackupStore
from backup_pipelines.lib.streams import Log


class Mode(StrEnum):
    MERGE = "merge"  # add what is missing; never overwrite what is there
    REPLACE = "replace"  # indexes back exactly as backed up (SQL rows still never overwritten)


class IndexEngine(Protocol):
    """What an index engine offers. `client` is the engine's own client object (it has
    `collection_exists`, `delete_collection`, `server_version` and `close`)."""

    name: str  # "typesense": the deployment's name for it (environment, resources, reports)
    label: str  # "Typesense"
    asset: str  # its per-workspace backup asset, "typesense/collection_export"

    def configured(self, env: Mapping[str, str]) -> bool:
        """Whether the environment names a server of this engine (else it is not deployed)."""

    def client_from_env(self, env: Mapping[str, str]) -> Any:
        """A client for the server the environment names."""

    def memory_collection(self, policy: Policy, workspace: str) -> str:
        """The workspace's collection derived from the memory rows (gated and verified)."""

    def holds(self, manifest: dict, collection: str) -> bool:
        """Whether the artifact holds a restorable copy of `collection` (else: rebuild)."""

    def ids(self, store: BackupStore, ref: ArtifactRef, manifest: dict, collection: str) -> Side:
        """The ids the artifact holds for `collection`, and when it was taken."""

    def restore(
        self,
        client: Any,
        store: BackupStore,
        ref: ArtifactRef,
        manifest: dict,
        collection: str,
        target: str,
        mode: Mode,
        refused: Refusals | None = None,
    ) -> dict:
        """Put the backed-up `collection` back as `target` (merge: only what is missing).
        An entry the index refuses does not stop the others: it goes to `refused` (by id, with
        the index's reason); without `refused`, EntriesRefused is raised once the others are
        in."""

    def column_problems(self, mapping: IndexMapping, columns: Mapping[str, Any]) -> list[str]:
        """What is wrong with `mapping` for this engine given the mapped table's columns
        (column name -> postgres.catalog.ColumnInfo): e.g. a value type the engine cannot
        hold. Each problem names the policy key."""

    def rebuild(
        self,
        client: Any,
        target: str,
        rows: Iterator[Row],
        mode: Mode,
        mapping: IndexMapping,
        refused: Refusals | None = None,
    ) -> dict:
        """Build `target` from rows (the SQL truth, column -> value, with the columns of
        `mapping`), as the platform's indexer would. A row the index refuses (or that cannot
        become an entry) goes to `refused` as in restore."""

    def count(self, client: Any, collection: str) -> int:
        """How many entries `collection` holds."""

    def finds(self, client: Any, collection: str, probe: Row, mapping: IndexMapping) -> bool:
        """A real search in `collection` returns the probe row's entry (the mapping has a
        probe_column)."""

    def restore_missing(
        self,
        client: Any,
        store: BackupStore,
        ref: ArtifactRef,
        manifest: dict,
        policy: Policy,
        log: Log,
    ) -> dict:
        """After a full database restore: the artifact's collections the server lacks."""

    def prepare_scratch(
        self, client: Any, store: BackupStore, ref: ArtifactRef, manifest: dict, target: str
    ) -> None:
        """Make `target` ready for a restore into a scratch place without touching anything
        live (the drill): e.g. the collection's definition without its aliases."""

    # Catching an index up to an instant (recovery/instant.py): after the newest artifact
    # taken before it, the entries of rows changed since are written and the entries of rows
    # gone by then removed.

    def entry_ids(self, client: Any, collection: str) -> np.ndarray:
        """The ids `collection` holds now, streamed into an array like an artifact's (int64,
        or bytes for non-integer ids; lib.ids); empty when the collection does not exist."""

    def upsert_rows(
        self, client: Any, collection: str, rows: Iterator[Row], mapping: IndexMapping
    ) -> int:
        """Write the entries of `rows` (created, or replaced when present), creating the
        collection by the mapping when it is missing; returns how many were written."""

    def delete_ids(self, client: Any, collection: str, ids: list) -> int:
        """Remove the entries with these ids (ints or id text) from `collection`; ids it does
        not hold are no error. Returns how many were asked for."""


ENGINE_MODULES = {
    "typesense": "backup_pipelines.lib.typesense.engine",
    "qdrant": "backup_pipelines.lib.qdrant.engine",
}


def index_engine(name: str) -> IndexEngine:
    if name not in ENGINE_MODULES:
        raise KeyError(f"unknown index engine {name!r}; known: {', '.join(ENGINE_MODULES)}")
    return importlib.import_module(ENGINE_MODULES[name]).ENGINE


def index_engines(names: Iterable[str] | None = None) -> list[IndexEngine]:
    """The engines named (all registered ones by default), in registration order."""
    wanted = set(ENGINE_MODULES if names is None else names)
    return [index_engine(name) for name in ENGINE_MODULES if name in wanted]


def configured_engines(env: Mapping[str, str] | None = None) -> list[IndexEngine]:
    env = os.environ if env is None else env
    return [engine for engine in index_engines() if engine.configured(env)]


def engine_for_asset(asset: str) -> IndexEngine | None:
    return next((e for e in index_engines() if e.asset == asset), None)
