"""What a custom-format dump holds (its table of contents, `pg_restore --list`), and which of
those objects a restored database lacks.

The restored database is compared with the dump, not with the live database: live may have
changed since the backup (a table added, a trigger dropped) and the restore is meant to give
back the backup, so the dump is the reference. Data is compared separately (row counts per
table against the manifest); grants, comments and other properties are not objects and are
reported as not compared.

A TOC line is `<id>; <tableoid> <oid> <KIND> <schema> <tag> <owner>` where kind, tag and
owner may contain spaces: the kind is matched against pg_dump's known kinds (longest first),
and an entry is present when `<schema> <tag>` — the line minus one or more trailing words
(the owner) — names an object the catalog holds.
"""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg

from backup_pipelines.lib.errors import BackupError
from backup_pipelines.lib.postgres.connection import pg_bin

# pg_dump's TOC kinds (pg_dump.c / pg_backup_archiver.c), longest matched first.
KNOWN_KINDS = sorted(
    """ACCESS METHOD|ACL|AGGREGATE|BLOB|BLOBS|BLOB METADATA|CAST|CHECK CONSTRAINT|COLLATION|
    COMMENT|CONSTRAINT|CONVERSION|DATABASE|DATABASE PROPERTIES|DEFAULT|DEFAULT ACL|DOMAIN|
    ENCODING|EVENT TRIGGER|EXTENSION|FK CONSTRAINT|FOREIGN DATA WRAPPER|FOREIGN SERVER|
    FOREIGN TABLE|FUNCTION|INDEX|INDEX ATTACH|LARGE OBJECT|MATERIALIZED VIEW|
    MATERIALIZED VIEW DATA|OPERATOR|OPERATOR CLASS|OPERATOR FAMILY|POLICY|PROCEDURAL LANGUAGE|
    PROCEDURE|PUBLICATION|PUBLICATION TABLE|PUBLICATION TABLES IN SCHEMA|ROW SECURITY|RULE|
    SCHEMA|SEARCHPATH|SECURITY LABEL|SEQUENCE|SEQUENCE OWNED BY|SEQUENCE SET|SERVER|
    SHELL TYPE|STATISTICS|STDSTRINGS|SUBSCRIPTION|SUBSCRIPTION TABLE|TABLE|TABLE ATTACH|
    TABLE DATA|TEXT SEARCH CONFIGURATION|TEXT SEARCH DICTIONARY|TEXT SEARCH PARSER|
    TEXT SEARCH TEMPLATE|TRANSFORM|TRIGGER|TYPE|USER MAPPING|VIEW""".replace("\n", "")
    .replace("    ", "")
    .split("|"),
    key=len,
    reverse=True,
)
FUNCTION_KINDS = {"FUNCTION", "PROCEDURE", "AGGREGATE"}
LINE = re.compile(r"^\d+; \d+ \d+ (?P<rest>.*)$")

# kind -> query returning (schema or '-', tag) of what the database holds.
CATALOG = {
    "SCHEMA": "SELECT '-', nspname FROM pg_namespace",
    "EXTENSION": "SELECT '-', extname FROM pg_extension",
    "EVENT TRIGGER": "SELECT '-', evtname FROM pg_event_trigger",
    "TABLE": "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = "
    "c.relnamespace WHERE c.relkind IN ('r', 'p')",
    "TABLE ATTACH": "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = "
    "c.relnamespace WHERE c.relkind IN ('r', 'p', 'f') AND c.relispartition",
    "VIEW": "SELECT schemaname, viewname FROM pg_views",
    "MATERIALIZED VIEW": "SELECT schemaname, matviewname FROM pg_matviews",
    "SEQUENCE": "SELECT schemaname, sequencename FROM pg_sequences",
    "FOREIGN TABLE": "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = "
    "c.relnamespace WHERE c.relkind = 'f'",
    "INDEX": "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = "
    "c.relnamespace WHERE c.relkind IN ('i', 'I')",
    "INDEX ATTACH": "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = "
    "c.relnamespace WHERE c.relkind IN ('i', 'I') AND c.relispartition",
    "CONSTRAINT": "SELECT n.nspname, c.relname || ' ' || k.conname FROM pg_constraint k "
    "JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
    "UNION ALL SELECT n.nspname, t.typname || ' ' || k.conname FROM pg_constraint k "
    "JOIN pg_type t ON t.oid = k.contypid JOIN pg_namespace n ON n.oid = t.typnamespace",
    "TRIGGER": "SELECT n.nspname, c.relname || ' ' || t.tgname FROM pg_trigger t "
    "JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE NOT t.tgisinternal",
    "RULE": "SELECT schemaname, tablename || ' ' || rulename FROM pg_rules",
    "POLICY": "SELECT schemaname, tablename || ' ' || policyname FROM pg_policies",
    "DEFAULT": "SELECT n.nspname, c.relname || ' ' || a.attname FROM pg_attrdef d "
    "JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum "
    "JOIN pg_class c ON c.oid = d.adrelid JOIN pg_namespace n ON n.oid = c.relnamespace",
    "TYPE": "SELECT n.nspname, t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = "
    "t.typnamespace",
    "FUNCTION": "SELECT n.nspname, p.proname || '(' FROM pg_proc p JOIN pg_namespace n ON "
    "n.oid = p.pronamespace",
}
SAME_CATALOG = {  # kinds looked up in another kind's catalog
    "FK CONSTRAINT": "CONSTRAINT",
    "CHECK CONSTRAINT": "CONSTRAINT",
    "DOMAIN": "TYPE",
    "PROCEDURE": "FUNCTION",
    "AGGREGATE": "FUNCTION",
}


@dataclass(frozen=True)
class TocEntry:
    kind: str
    rest: str  # "<schema> <tag> <owner>"

    def __str__(self) -> str:
        return f"{self.kind} {self.rest.rsplit(' ', 1)[0]}"


def read_toc(dump_path: str, env: dict[str, str] | None = None) -> list[TocEntry]:
    """The entries of a custom-format dump, from `pg_restore --list` (no server needed)."""
    done = subprocess.run(
        [pg_bin("pg_restore"), "--list", dump_path],
        capture_output=True,
        text=True,
        env=env,
    )
    if done.returncode != 0:
        raise BackupError(f"pg_restore --list {dump_path} failed: {done.stderr.strip()[-1000:]}")
    return list(parse_toc(done.stdout))


def parse_toc(listing: str) -> Iterator[TocEntry]:
    for line in listing.splitlines():
        match = LINE.match(line)
        if not match:
            continue  # comments (;) and blank lines
        rest = match["rest"]
        kind = next((k for k in KNOWN_KINDS if rest.startswith(k + " ")), None)
        if kind is None:
            yield TocEntry("UNKNOWN", rest)
        else:
            yield TocEntry(kind, rest[len(kind) + 1 :])


@dataclass
class ObjectCheck:
    checked: Counter  # kind -> objects found
    missing: list[str]
    not_compared: list[str]  # kinds that are not objects or not checked (ACL, COMMENT, ...)

    def to_dict(self) -> dict:
        return {
            "objects_checked": sum(self.checked.values()),
            "by_kind": dict(sorted(self.checked.items())),
            "missing": self.missing,
            "not_compared": self.not_compared,
        }


def missing_objects(conn: psycopg.Connection, entries: list[TocEntry]) -> ObjectCheck:
    """Every TOC entry of a checked kind must name an object of `conn`'s database."""
    catalog = {
        kind: {f"{schema} {tag}" for schema, tag in conn.execute(query)}
        for kind, query in CATALOG.items()
    }
    checked: Counter = Counter()
    missing, not_compared = [], set()
    for entry in entries:
        keys = catalog.get(SAME_CATALOG.get(entry.kind, entry.kind))
        if keys is None:
            not_compared.add(entry.kind)
        elif _present(entry, keys):
            checked[entry.kind] += 1
        else:
            missing.append(str(entry))
    return ObjectCheck(checked, missing, sorted(not_compared))


def _present(entry: TocEntry, keys: set[str]) -> bool:
    if entry.kind in FUNCTION_KINDS:
        return entry.rest.split("(", 1)[0] + "(" in keys
    words = entry.rest.split(" ")
    # Drop the owner (one or more trailing words), keep at least "<schema> <tag>".
    return any(" ".join(words[:n]) in keys for n in range(len(words) - 1, 1, -1))
