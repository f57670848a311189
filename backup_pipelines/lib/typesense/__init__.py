"""Typesense: the client, the per-workspace export, and putting a collection back.

client.py     the REST calls (streamed export and import, schema, synonyms, aliases)
export.py     the backup of one collection (documents + what an export leaves out)
documents.py  memory rows as Typesense documents
restore.py    a collection back from its export, or rebuilt from memory rows
ids.py        the document ids of an export (for the consistency gate)
engine.py     Typesense as an index engine (backup_pipelines.lib.engines)
"""
