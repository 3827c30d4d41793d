"""Raft's safety properties (paper Figure 3), checked incrementally after every simulation step.

Each property is checked in O(1) per observation or per entry, so the whole history is covered
without rescanning logs:

* Election Safety: at most one leader per term (`leaders[term]`).
* Leader Append-Only: a leader never overwrites or deletes entries of its log: while it leads,
  its last index never decreases and what it persists starts after what it had persisted.
* Log Matching: if two logs hold an entry with the same index and term, they are identical up to
  it. Every persisted entry gets a chain hash ``h(i) = hash(h(i - 1), term, kind, data)``; the first
  chain hash seen for an (index, term) is recorded and every later one must equal it.
* Leader Completeness: when a node becomes leader, its log holds every entry known committed
  (its chain hash at the highest committed index equals the committed chain's).
* State Machine Safety: no two nodes apply different entries at an index; a node applies indexes
  in order without gaps (applied state is a chain hash, compared with the committed chain).
* Linearizable reads (thesis 6.4): a ReadState's index is at least every index known committed
  when the read was requested.

A breach raises `InvariantViolation`, whose message names the property.
"""

from __future__ import annotations

from collections.abc import Sequence

from wiber.raft import Entry, SnapshotMeta

__all__ = [
    "ELECTION_SAFETY", "LEADER_APPEND_ONLY", "LEADER_COMPLETENESS", "LINEARIZABLE_READS", "LOG_MATCHING",
    "PROPERTIES", "STATE_MACHINE_SAFETY", "InvariantViolation", "SafetyChecker", "chain",
]

ELECTION_SAFETY = "Election Safety"
LEADER_APPEND_ONLY = "Leader Append-Only"
LOG_MATCHING = "Log Matching"
LEADER_COMPLETENESS = "Leader Completeness"
STATE_MACHINE_SAFETY = "State Machine Safety"
LINEARIZABLE_READS = "Linearizable reads"
#: Every property checked, as named at the start of an `InvariantViolation`'s message.
PROPERTIES = (ELECTION_SAFETY, LEADER_APPEND_ONLY, LOG_MATCHING, LEADER_COMPLETENESS, STATE_MACHINE_SAFETY,
              LINEARIZABLE_READS)


class InvariantViolation(AssertionError):
    """A Raft safety property does not hold; the message starts with its name and a colon."""

    @property
    def broken(self) -> str:
        """The name of the property broken (one of `PROPERTIES`)."""
        return str(self).split(":", 1)[0]


def chain(prev: int, entry: Entry) -> int:
    """Returns: the chain hash of `entry` following chain hash `prev`, as an unsigned 64-bit int.

    Python's hash of bytes is salted per process: values differ between runs, but equality within
    a run is all the checks use (and nothing printed depends on them).
    """
    return hash((prev, entry.term, entry.kind, entry.data)) & 0xFFFF_FFFF_FFFF_FFFF


class SafetyChecker:
    """Accumulated knowledge about a cluster's history, and the checks against it."""

    def __init__(self) -> None:
        self.leaders: dict[int, str] = {}
        self.entry_chain: dict[tuple[int, int], int] = {(0, 0): 0}
        # Per node: its persisted log as chain hashes, node_chain[n][k] is the hash at node_base[n] + k.
        self.node_chain: dict[str, list[int]] = {}
        self.node_base: dict[str, int] = {}
        # The committed chain: committed[i] is the state after applying entries 1..i (committed[0] = 0).
        self.committed: list[int] = [0]
        self._lead_last: dict[str, tuple[int, int]] = {}

    def add_node(self, node: str) -> None:
        """Start tracking a node with an empty log."""
        self.node_chain[node] = [0]
        self.node_base[node] = 0

    # -- observations ---------------------------------------------------------------------------

    def observe_role(self, node: str, is_leader: bool, term: int, last_index: int) -> None:
        """After a step: Election Safety, Leader Append-Only (in memory), Leader Completeness."""
        if not is_leader:
            return
        leader = self.leaders.get(term)
        if leader is None:
            self.leaders[term] = node
            self._lead_last[node] = (term, last_index)
            self._check_completeness(node, term)
            return
        if leader != node:
            raise InvariantViolation(f"{ELECTION_SAFETY}: {leader} and {node} are both leaders of term "
                                     f"{term}")
        seen_term, seen_last = self._lead_last.get(node, (term, last_index))
        if seen_term == term and last_index < seen_last:
            raise InvariantViolation(
                f"{LEADER_APPEND_ONLY}: leader {node} of term {term} shrank its log from {seen_last} "
                f"to {last_index}")
        self._lead_last[node] = (term, last_index)

    def persisted_entries(self, node: str, entries: Sequence[Entry], stored_last: int,
                          is_leader: bool) -> None:
        """`node` wrote `entries` (its storage held up to `stored_last` before): Log Matching."""
        if not entries:
            return
        first = entries[0].index
        if is_leader and first <= stored_last:
            raise InvariantViolation(
                f"{LEADER_APPEND_ONLY}: leader {node} overwrote its persisted log from index {first} "
                f"(it held up to {stored_last})")
        base = self.node_base[node]
        hashes = self.node_chain[node]
        if first <= base:
            entries = [e for e in entries if e.index > base]
            if not entries:
                return
            first = entries[0].index
        k = first - base
        if k > len(hashes):
            raise InvariantViolation(f"{LOG_MATCHING}: {node} persisted entry {first} after a gap (log ends "
                                     f"at {base + len(hashes) - 1})")
        del hashes[k:]
        h = hashes[-1]
        known = self.entry_chain
        for e in entries:
            h = chain(h, e)
            seen = known.setdefault((e.index, e.term), h)
            if seen != h:
                raise InvariantViolation(
                    f"{LOG_MATCHING}: {node} holds entry {e.index} of term {e.term} with a different prefix "
                    f"or content than another log")
            hashes.append(h)

    def persisted_snapshot(self, node: str, meta: SnapshotMeta) -> None:
        """`node` replaced its log by a snapshot: it must be of entries some log held."""
        h = self.entry_chain.get((meta.index, meta.term))
        if h is None:
            raise InvariantViolation(f"{LOG_MATCHING}: {node} installed snapshot {meta.term}/{meta.index} "
                                     f"of an entry no log ever held")
        self.node_base[node] = meta.index
        self.node_chain[node] = [h]

    def applied(self, node: str, state: tuple[int, int], entries: Sequence[Entry]) -> tuple[int, int]:
        """`node`, at applied state (index, chain hash), applies `entries`: State Machine Safety.

        Returns:
            the new applied state.
        """
        index, h = state
        committed = self.committed
        for e in entries:
            if e.index != index + 1:
                raise InvariantViolation(
                    f"{STATE_MACHINE_SAFETY}: {node} applied {e.index} right after {index}")
            index += 1
            h = chain(h, e)
            if index < len(committed):
                if committed[index] != h:
                    raise InvariantViolation(
                        f"{STATE_MACHINE_SAFETY}: {node} applied a different entry at index {index} "
                        f"(term {e.term}) than another node")
            else:
                committed.append(h)
        return index, h

    def restored(self, node: str, state: tuple[int, int]) -> None:
        """`node` restored its state machine from a snapshot of (index, chain hash)."""
        index, h = state
        if index < len(self.committed) and self.committed[index] != h:
            raise InvariantViolation(f"{STATE_MACHINE_SAFETY}: {node} restored a snapshot at {index} that "
                                     f"differs from the committed state")
        if index >= len(self.committed):
            raise InvariantViolation(f"{STATE_MACHINE_SAFETY}: {node} restored a snapshot at {index} beyond "
                                     f"anything applied ({len(self.committed) - 1})")

    def read_floor(self) -> int:
        """Returns: the highest index known committed (a read requested now must see it)."""
        return len(self.committed) - 1

    def read_answered(self, node: str, index: int, floor: int) -> None:
        """A ReadState at `index` answered a read requested when `floor` was committed."""
        if index < floor:
            raise InvariantViolation(f"{LINEARIZABLE_READS}: {node} answered a read at index {index} though "
                                     f"{floor} was committed when it was requested")

    def _check_completeness(self, node: str, term: int) -> None:
        """Leader Completeness: a new leader holds every entry known committed."""
        top = len(self.committed) - 1
        base = self.node_base[node]
        hashes = self.node_chain[node]
        if top < base:
            return
        k = top - base
        if k >= len(hashes) or hashes[k] != self.committed[top]:
            raise InvariantViolation(
                f"{LEADER_COMPLETENESS}: {node} became leader of term {term} without committed entry {top} "
                f"(its persisted log ends at {base + len(hashes) - 1})")
