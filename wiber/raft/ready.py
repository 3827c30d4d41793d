"""`Ready`: everything the core asks the application to do, in one batch (etcd `rawnode.go`).

The application's loop (one turn, thesis section 10.2.1, etcd `node.go`)::

    while raft.has_ready():
        rd = raft.ready()
        send(rd.messages)                        # 1. may go out before persisting (leader's appends)
        if rd.snapshot: storage.apply_snapshot(*rd.snapshot); state_machine.restore(rd.snapshot[1])
        storage.append(rd.entries)               # 2. persist: snapshot, then entries (truncating),
        if rd.hard_state: storage.set_hard_state(rd.hard_state)   #    then the hard state
        if rd.must_sync: fsync()                 # 3. make it durable
        send(rd.messages_after_persist)          # 4. votes and acknowledgements, only now
        for e in rd.committed_entries: apply(e)  # 5. apply in order
        answer(rd.read_states)                   #    (reads once their index is applied)
        raft.advance(rd)                         # 6. tell the core it is all done

Nothing may be stepped, ticked or proposed between `ready()` and `advance()`.

Durability contract for storage: the writes of step 2 become durable *in order* — snapshot, then
entries, then hard state — so that after a crash at any moment the disk holds a prefix of that
sequence (one append-only file gives this; with separate files, make the log durable before writing
the hard state). A durable hard state whose commit index points at entries that were not made
durable would make a restarted node apply whatever stale entries it holds at those indexes.
"""

from __future__ import annotations

from dataclasses import dataclass

from wiber.raft.messages import Entry, HardState, Message, ReadState, SnapshotMeta

__all__ = ["Ready"]


@dataclass(frozen=True, slots=True)
class Ready:
    """One batch of work for the application; process it in the order of the module docstring.

    Fields:
        hard_state: persist when not None (term, vote, commit changed).
        snapshot: a snapshot received from the leader: persist it (it replaces the whole log) and
            restore the state machine from its data, before `entries`.
        entries: append to stable storage, first dropping any stored entry at or after
            ``entries[0].index``.
        messages: may be sent before persisting: the leader's AppendEntries, heartbeats, TimeoutNow
            and snapshots, and vote requests (a leader's own disk write overlaps with its followers').
        messages_after_persist: send only once `hard_state`/`entries`/`snapshot` are durable: vote
            grants and refusals, append and snapshot acknowledgements (Figure 2: "updated on
            stable storage before responding to RPCs").
        committed_entries: apply in order, after persisting.
        read_states: answered ReadIndex requests; serve each once its index is applied.
        must_sync: whether the writes must be fsynced before `messages_after_persist` go out
            (False when only the commit index changed).
    """

    hard_state: HardState | None
    snapshot: tuple[SnapshotMeta, bytes] | None
    entries: list[Entry]
    messages: list[Message]
    messages_after_persist: list[Message]
    committed_entries: list[Entry]
    read_states: list[ReadState]
    must_sync: bool
