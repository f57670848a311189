"""A Qdrant REST stand-in built on Qdrant's own storage engine (qdrant-edge-py).

No Qdrant server can run on these machines, so tests and demos talk to this process instead.
It serves the part of the real REST API the product uses (collections, aliases, points,
collection snapshots, cluster state) with the real response envelopes, and stores points with
``qdrant_edge.EdgeShard``, the engine a real server uses for one shard. Where production
depends on them it behaves like the real server (v1.19 source): uploaded snapshots are kept
in the snapshots folder of the collection named in the URL; aliases are resolved in exists,
snapshots and recovery; version.info is checked on recovery; recovering into an existing
collection keeps its configuration and checks vectors and shard number; a missing or wrong
key is a plain-text 401 while `/` stays open, and a read-only key may only read; snapshot
downloads are gzipped for clients that accept it; `/cluster` reports a single node, or one
peer of a simulated cluster; a recovery goes on when its client disconnects.

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
    DIR/snapshots/<name>/<snapshot>      snapshots, each with <snapshot>.checksum (sha256 hex),
                                         and uploaded files (kept, without a checksum file)
    DIR/tmp/                             work space of snapshot creation and recovery

Run it with ``python -m backup_pipelines.devstack.qdrant --port P --storage DIR``, or
in-process with ``QdrantStandin(storage).start()`` (returns the base URL) and ``.stop()``.

    models.py     REST vocabulary: errors, JSON <-> engine conversions, collection configs
    storage.py    collections, aliases and cluster state on disk (the engine side)
    snapshots.py  snapshot files: created, listed, deleted, uploads kept
    recovery.py   recovery from a snapshot file or location, version and config checks
    archive.py    snapshot archives in the server's layout
    uploads.py    streamed multipart request bodies
    auth.py       API keys: open paths, plain-text 401, read-only key
    cluster.py    /cluster and a collection's shards (single node or simulated peers)
    http.py       routes, request handler, threaded server (the HTTP surface)
    server.py     QdrantStandin (in-process), QdrantStandinProcess, the command line
"""

from backup_pipelines.devstack.qdrant.server import QdrantStandin, QdrantStandinProcess

__all__ = ["QdrantStandin", "QdrantStandinProcess"]
