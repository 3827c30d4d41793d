"""`_Reads`, the ReadIndex role of `Raft` (thesis section 6.4): a linearizable read waits for a
heartbeat round sent after it, and is answered once a majority has echoed that round.

`Raft.read_index` (core.py) takes the read; the leader's commit in its own term releases reads
taken before it (`_Replication._on_commit`).
"""

from __future__ import annotations

from wiber.raft.messages import ReadState
from wiber.raft.quorum import committed_index
from wiber.raft.state import _State


class _Reads(_State):
    """Mixin of `Raft`: queue reads behind a heartbeat round and release them once a majority echoed it."""

    def _start_read(self, ctx: bytes) -> None:
        """Queue a read at the current commit index behind a heartbeat round not yet sent."""
        if not self._peers:
            self._read_states.append(ReadState(self._log.committed, ctx))
            return
        if not self._round_unsent:
            self._bcast_heartbeat()
        self._read_queue.append((self._round, self._log.committed, ctx))

    def _release_reads(self) -> None:
        """Answer the reads whose heartbeat round a majority (this leader included) has echoed."""
        rounds = {p: pr.acked_round for p, pr in self._prs.items()}
        rounds[self._id] = self._round
        acked = committed_index(rounds, self._voters)
        queue = self._read_queue
        while queue and queue[0][0] <= acked:
            _, index, ctx = queue.popleft()
            self._read_states.append(ReadState(index, ctx))
