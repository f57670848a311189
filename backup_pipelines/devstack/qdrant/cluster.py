"""`GET /cluster` and `GET /collections/{c}/cluster` of a single node, or of a simulated cluster.

By default the stand-in is one node with distributed mode off, like a plain real server:
`/cluster` says `{"status": "disabled"}` and every collection has its one shard locally.

For tests of cluster handling the stand-in can pretend to be one peer of `peers` nodes (it
still stores everything in one Edge shard; the other peers do not exist):
- `replicated=False`: each collection has one shard per peer; this node holds shard 0 only,
  so its collection snapshots hold shard 0 only, as on a real cluster;
- `replicated=True`: one shard, with an active replica on every peer (this node holds all).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True)
class ClusterLayout:
    peers: int = 1
    replicated: bool = False

    @property
    def enabled(self) -> bool:
        return self.peers > 1

    def peer_ids(self, this_peer: int) -> list[int]:
        return [this_peer + number for number in range(self.peers)]

    def status(self, this_peer: int) -> dict:
        if not self.enabled:
            return {"status": "disabled"}
        return {
            "status": "enabled",
            "peer_id": this_peer,
            "peers": {
                str(peer): {"uri": f"http://peer-{number}.qdrant.invalid:6335/"}
                for number, peer in enumerate(self.peer_ids(this_peer))
            },
            "raft_info": {
                "term": 1,
                "commit": 1,
                "pending_operations": 0,
                "leader": this_peer,
                "role": "Leader",
                "is_voter": True,
            },
            "consensus_thread_status": {
                "consensus_thread_status": "working",
                "last_update": datetime.now(UTC).isoformat(),
            },
            "message_send_failures": {},
        }

    def collection_info(self, this_peer: int, points: int, local_state: str) -> dict:
        """The collection's shards: shard 0 is local (with all the points the stand-in has)."""
        others = self.peer_ids(this_peer)[1:]
        if self.replicated or not self.enabled:
            shard_count = 1
            remote = [{"shard_id": 0, "peer_id": peer, "state": "Active"} for peer in others]
        else:
            shard_count = self.peers
            remote = [
                {"shard_id": number, "peer_id": peer, "state": "Active"}
                for number, peer in enumerate(others, start=1)
            ]
        return {
            "peer_id": this_peer,
            "shard_count": shard_count,
            "local_shards": [{"shard_id": 0, "points_count": points, "state": local_state}],
            "remote_shards": remote,
            "shard_transfers": [],
        }
