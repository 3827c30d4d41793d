"""Dedup sessions (Raft thesis section 6.3): per client, the answers of its requests still awaited.

A request with ``client_id`` belongs to a session that keeps the answers of that client's seqs at
or above its ``floor``: a retry whose answer is kept gets it back with ``duplicate: True`` and stores
nothing; a seq below the floor gets `SessionExpired` (it may or may not have been stored: the answer
is gone) and stores nothing. The floor is the highest ``ack_floor`` the client sent, raised past any
answer dropped to keep the session within ``session_window``. At most ``max_sessions`` sessions are
kept; a new one evicts the least recently active (lowest log index of its last request, then lowest
client_id). A request from a client without a session is SessionExpired when its id is among the
last ``max_sessions`` evicted; no session is created then, so retrying it again can never store it.

A request marked ``ordered`` (the Publisher's) is stored only as the session's next seq
(`Session.next_seq`: one past the highest answer kept, or the floor when none is): one past a gap
gets `OutOfSequence` and stores nothing, as Kafka's idempotent producer refuses an out-of-sequence
batch. So an earlier seq refused on its way (NOT_LEADER from a node that then became leader, a
request its client could not send) can never be stored after a later one of the same client: the
client sends it again, then the later ones. A client moves the floor past a seq it gave up on
(``ack_floor``), which ends the gap. Requests without ``ordered`` (a `Client.publish` with
``dedup``, which may number its publishes with gaps and out of order) are stored at any seq at or
above the floor, as before.
(An ``ack_floor > 1`` from an unknown client is not taken as proof of an evicted session: a client
whose first publishes were refused or timed out before reaching the log legitimately starts its
session above seq 1.)

Memory is capped in bytes too, as counted by `answer_bytes` and `session_bytes` (what an answer
and a session cost in memory and in a checkpoint row, roughly): past `MAX_SESSION_BYTES` a session
drops its lowest answers as past its window; past `MAX_SESSIONS_BYTES` in all, the least recently
active sessions other than the one being answered are evicted, as at `max_sessions`. (Unlike the
window, these are not yet configuration keys.) Without authentication any client may send any
``client_id``: a flood of fresh ids evicts other clients' sessions (their retries then get
SessionExpired, never a second copy); the caps only bound the memory it can take.

Everything here is deterministic: eviction order depends only on log indexes, client ids and the
answers' sizes, so every node evicts alike.
"""

from __future__ import annotations

import bisect
import heapq
from collections import OrderedDict, deque
from typing import Any

from wiber.broker.records import Answer
from wiber.errors import OutOfSequence, SessionExpired

__all__ = ["MAX_SESSIONS_BYTES", "MAX_SESSION_BYTES", "Session", "Sessions", "answer_bytes", "expired",
           "out_of_sequence", "session_bytes"]

ANSWER_OVERHEAD_BYTES = 256
"""What one kept answer costs beside its topic name (the tuple, its numbers, the dict and deque slots)."""
SESSION_OVERHEAD_BYTES = 512
"""What one session costs beside its client_id and answers (the object, its containers, its heap item)."""
MAX_SESSION_BYTES = 4 << 20
"""Most bytes of answers one session keeps (4,096 answers of 255-byte topics take 2 MiB)."""
MAX_SESSIONS_BYTES = 256 << 20
"""Most bytes all sessions together take (sessions and their answers)."""


def answer_bytes(answer: Answer) -> int:
    """Returns: the bytes one kept answer counts for (deterministic: every node counts alike)."""
    return ANSWER_OVERHEAD_BYTES + len(answer[0])


def session_bytes(client_id: str) -> int:
    """Returns: the bytes a session counts for beside its answers."""
    return SESSION_OVERHEAD_BYTES + len(client_id)


class Session:
    """One client's dedup state: the answers of its seqs at or above `floor`.

    ``answers`` maps a seq to its `Answer`; ``seqs`` holds the same seqs in ascending order.
    Clients number their requests upwards, so a new seq almost always goes at the end and the
    lowest leaves from the front, both O(1) (a min-heap took 0.39 us per op, this 0.16); the rare
    seq that arrives out of order is inserted in its place.
    """

    __slots__ = ("answers", "floor", "last_index", "nbytes", "seqs")

    def __init__(self, floor: int, last_index: int) -> None:
        self.floor = floor
        self.last_index = last_index
        self.answers: dict[int, Answer] = {}
        self.seqs: deque[int] = deque()
        self.nbytes = 0
        """Bytes of the kept answers (`answer_bytes`)."""

    def next_seq(self) -> int:
        """Returns: the only seq an ``ordered`` request may store now: one past the highest answer
        kept, or the floor when none is (answers leave only from the low end, so the highest kept is
        the highest stored at or above the floor)."""
        seqs = self.seqs
        return seqs[-1] + 1 if seqs else self.floor

    def raise_floor(self, floor: int) -> None:
        """Move the floor up to `floor` (never down) and drop the answers below it."""
        if floor <= self.floor:
            return
        self.floor = floor
        seqs = self.seqs
        answers = self.answers
        while seqs and seqs[0] < floor:
            self.nbytes -= answer_bytes(answers.pop(seqs.popleft()))

    def keep(self, seq: int, answer: Answer, window: int) -> None:
        """Keep `answer` for `seq` (not kept yet); past `window` answers or `MAX_SESSION_BYTES`, drop
        the lowest and raise the floor past it."""
        self.answers[seq] = answer
        self.nbytes += answer_bytes(answer)
        seqs = self.seqs
        if not seqs or seq > seqs[-1]:
            seqs.append(seq)
        else:
            bisect.insort(seqs, seq)
        while len(seqs) > window or self.nbytes > MAX_SESSION_BYTES:
            lowest = seqs.popleft()
            self.nbytes -= answer_bytes(self.answers.pop(lowest))
            self.floor = lowest + 1

    def recount(self) -> None:
        """Count `nbytes` again from the answers (after they were loaded from a checkpoint)."""
        self.nbytes = sum(map(answer_bytes, self.answers.values()))

    def to_row(self) -> list[Any]:
        """Returns: ``[floor, last_index, [[seq, topic, offset, count, index, lamport, ts], ...]]`` by seq."""
        return [self.floor, self.last_index, [(seq, *self.answers[seq]) for seq in self.seqs]]


class Sessions:
    """Every kept session, the activity heap that picks who is evicted, and the recently evicted ids.

    The broker's apply loop reads `by_client` and pushes on `activity` directly (the per-op hot path);
    everything else goes through the methods.
    """

    __slots__ = ("activity", "by_client", "dirty", "evicted", "max_bytes", "max_sessions", "nbytes")

    def __init__(self, max_sessions: int, max_bytes: int = MAX_SESSIONS_BYTES) -> None:
        self.max_sessions = max_sessions
        self.max_bytes = max_bytes
        self.nbytes = 0
        """Bytes of every session and its answers (`session_bytes`, `Session.nbytes`); the broker
        adds what a session's answers grow or shrink by, and calls `shrink` when it is over `max_bytes`."""
        self.by_client: dict[str, Session] = {}
        self.activity: list[tuple[int, str]] = []
        """Min-heap of (last_index, client_id); an item is stale unless it matches its session."""
        self.evicted: OrderedDict[str, None] = OrderedDict()
        """The last max_sessions evicted client_ids, oldest first."""
        self.dirty: set[str] = set()
        """Client ids whose session changed (or went) since the last checkpoint took them."""

    def __len__(self) -> int:
        return len(self.by_client)

    def new(self, client_id: str, floor: int, index: int) -> Session:
        """Create `client_id`'s session, first evicting the least recently active while at the limit.

        Returns: the new session.
        """
        sessions = self.by_client
        while len(sessions) >= self.max_sessions and self._evict_one(None):
            pass
        session = Session(floor, index)
        sessions[client_id] = session
        self.nbytes += session_bytes(client_id)
        heapq.heappush(self.activity, (index, client_id))
        if self.nbytes > self.max_bytes:
            self.shrink(client_id)
        return session

    def shrink(self, keep: str) -> None:
        """Evict the least recently active sessions, never `keep` (the one being answered), until
        the sessions are within `max_bytes` (or `keep` is all that is left)."""
        while self.nbytes > self.max_bytes and self._evict_one(keep):
            pass

    def _evict_one(self, keep: str | None) -> bool:
        """Evict the least recently active session other than `keep`. Returns: whether one was."""
        sessions = self.by_client
        activity = self.activity
        held: tuple[int, str] | None = None
        while activity:
            last_index, victim = heapq.heappop(activity)
            session = sessions.get(victim)
            if session is None or session.last_index != last_index:
                continue  # stale: the client was active again later
            if victim == keep:
                held = (last_index, victim)
                continue
            del sessions[victim]
            self.nbytes -= session_bytes(victim) + session.nbytes
            self.dirty.add(victim)
            self.evicted[victim] = None
            if len(self.evicted) > self.max_sessions:
                self.evicted.popitem(last=False)
            break
        else:
            victim = None
        if held is not None:
            heapq.heappush(activity, held)
        return victim is not None

    def prune_activity(self) -> None:
        """Rebuild the activity heap without its stale items once they outnumber the live ones
        (it gains one per client per entry). Eviction pops (last_index, client_id) pairs, unique among
        live sessions, so the heap's internal layout never changes which session is evicted."""
        if len(self.activity) > 2 * len(self.by_client) + 64:
            self.rebuild_activity()

    def rebuild_activity(self) -> None:
        """Rebuild the activity heap and the byte count from the live sessions."""
        self.activity = [(session.last_index, cid) for cid, session in self.by_client.items()]
        heapq.heapify(self.activity)
        self.nbytes = sum(session_bytes(cid) + session.nbytes for cid, session in self.by_client.items())


def out_of_sequence(client_id: str, seq: int, expected: int) -> OutOfSequence:
    """Returns: the OutOfSequence for an ``ordered`` request past its session's next seq."""
    return OutOfSequence(
        f"seq {seq} of client {client_id!r} is not stored: its session stores seq {expected} next "
        f"(ordered); send seq {expected} and the ones after it again, in order"
    )


def expired(client_id: str, seq: int, floor: int | None) -> SessionExpired:
    """Returns: the SessionExpired for a retry whose answer is gone (`floor` None: no session at all)."""
    if floor is None:
        why = f"client {client_id!r} has no session any more (evicted) for its seq {seq}"
    else:
        why = f"seq {seq} of client {client_id!r} is below its session's floor {floor}"
    return SessionExpired(
        f"{why}: it may or may not have been stored, and is not stored again; check HISTORY"
    )
