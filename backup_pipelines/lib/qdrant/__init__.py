"""Qdrant: the client, collection snapshots, and recovering a collection.

client.py    the REST calls (streamed snapshot download and upload, points, aliases)
snapshot.py  the backup of a workspace's collections (teed download, server sha256 check)
offline.py   a snapshot opened offline with Qdrant's engine (count, ids)
points.py    memory rows as Qdrant points
restore.py   a collection recovered from its snapshot, merged, or rebuilt from memory rows
ids.py       the point ids of a snapshot artifact (for the consistency gate)
engine.py    Qdrant as an index engine (backup_pipelines.lib.engines)
"""
