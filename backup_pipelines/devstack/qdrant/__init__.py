"""A Qdrant REST stand-in built on Qdrant's own storage engine (qdrant-edge-py).

No Qdrant server can run on these machines, so tests and demos talk to this process instead.
It serves the part of the real REST API the product uses (collections, aliases, points,
collection snapshots) with the real response envelopes, and stores points with
``qdrant_edge.EdgeShard``, the engine a real server uses for one shard.

Collection snapshots use the real server's layout, so a snapshot written here can be recovered
here and is shaped like the ones a real server writes and reads::

    config.json  version.info  payload_index.json
    0/segments/<segment-uuid>.tar       (snapshot/files/... inside, like Segment::take_snapshot)
    0/wal/closed-<next-op>              (an empty WAL that continues the operation numbers)
    0/shard_config.json  0/replica_state.json

Storage layout under ``--storage DIR``::

    DIR/collections/<name>/config.json   collection config, in the server's config.json format
    DIR/collections/<name>/0/            the Edge shard (segments/, wal/, edge_config.json)
    DIR/aliases.json                     {alias: collection}
    DIR/peer.json                        this node's peer id (used in snapshot names)
    DIR/snapshots/<name>/<snapshot>      snapshots, each with <snapshot>.checksum (sha256 hex)
    DIR/tmp/                             work space of snapshot creation and recovery

Run it with ``python -m backup_pipelines.devstack.qdrant --port P --storage DIR``, or
in-process with ``QdrantStandin(storage).start()`` (returns the base URL) and ``.stop()``.

    models.py   REST vocabulary: errors, JSON <-> engine conversions, collection configs
    storage.py  collections, aliases, snapshots and recovery on disk (the engine side)
    archive.py  snapshot archives in the server's layout
    uploads.py  streamed multipart request bodies
    http.py     routes, request handler, threaded server (the HTTP surface)
    server.py   QdrantStandin (in-process), QdrantStandinProcess, the command line
"""

from backup_pipelines.devstack.qdrant.server import QdrantStandin, QdrantStandinProcess

__all__ = ["QdrantStandin", "QdrantStandinProcess"]
