"""Row-level fingerprints of PostgreSQL tables, to compare a restore with its source."""

import psycopg
from psycopg import sql

TABLES = [
    "workspaces",
    "sessions",
    "turns",
    "memory_entries",
    "knowledge_graph_nodes",
    "knowledge_graph_edges",
]


def fingerprint(
    database_url: str, workspace: str | None = None, tables=TABLES
) -> dict[str, tuple[int, str]]:
    """(row count, md5 of every row's text, sorted) per table, of one workspace or of all."""
    out = {}
    with psycopg.connect(database_url) as conn:
        for table in tables:
            where = (
                sql.SQL("WHERE workspace_id = {}").format(sql.Literal(workspace))
                if workspace
                else sql.SQL("")
            )
            query = sql.SQL(
                "SELECT count(*), coalesce(md5(string_agg(t::text, E'\\n' ORDER BY t::text)), '') FROM {} t {}"
            ).format(sql.Identifier(table), where)
            out[table] = tuple(conn.execute(query).fetchone())
    return out


def workspaces_present(database_url: str, tables=TABLES) -> set[str]:
    found = set()
    with psycopg.connect(database_url) as conn:
        for table in tables:
            query = sql.SQL("SELECT DISTINCT workspace_id FROM {}").format(sql.Identifier(table))
            found |= {r[0] for r in conn.execute(query)}
    return found
