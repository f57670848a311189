"""Qdrant: the client, collection snapshots, and recovering a collection.

client.py    the server's API: JSON calls through qdrant-client; snapshot files streamed by hand
             (identity download checked against its length; upload never sent twice)
snapshot.py  the backup of a workspace's collections (teed download, server sha256 check,
             aliases and configuration recorded, cluster check)
offline.py   a snapshot opened offline with Qdrant's engine (count, ids)
segment_ids.py  a snapshot's point ids read from its segments' id-tracker files, flat memory
             (the engine reads the layouts it does not parse)
points.py    memory rows as Qdrant points
restore.py   a collection recovered from its snapshot, merged, or rebuilt from memory rows
versions.py  which server versions can read which snapshots
ids.py       the point ids of a snapshot artifact (for the consistency gate)
engine.py    Qdrant as an index engine (backup_pipelines.lib.engines)
"""
