"""Mutations of the Raft core: each switches off one rule, so that one safety property breaks.

Each mutation replaces one method of `Raft` (wiber/raft/core.py, or the role mixin it inherits it
from) for the duration of a block (`mutated`), nothing test-only in the core. `MUTATIONS` maps a
name to the method, its replacement, the property of `tests/sim/invariants.py` the simulation must
report as broken, and seeds of the default simulation (`run_seed` with `MUTATION_STEPS` steps) whose
run breaks exactly that property. tests/sim/test_mutations.py proves it;
``python -m tests.sim.replay --search N --mutation NAME`` finds seeds again when a change to the core
or the simulation moved them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

from wiber.raft import (
    AppendEntries,
    AppendEntriesReply,
    Entry,
    EntryKind,
    InstallSnapshotReply,
    Raft,
    ReadState,
    RequestVote,
    RequestVoteReply,
)
from wiber.raft.messages import Message
from wiber.raft.quorum import committed_index

from .invariants import (
    ELECTION_SAFETY,
    LEADER_APPEND_ONLY,
    LEADER_COMPLETENESS,
    LINEARIZABLE_READS,
    LOG_MATCHING,
    STATE_MACHINE_SAFETY,
)

__all__ = ["MUTATIONS", "MUTATION_STEPS", "Mutation", "mutated"]

#: The steps each listed seed runs (the seeds were searched with this many).
MUTATION_STEPS = 2000


def _grant_every_vote(self: Raft, msg: RequestVote) -> None:
    """Votes are granted to every candidate with an up-to-date log, even after voting for another
    candidate in the same term (Figure 2: "votedFor is null or candidateId" switched off)."""
    if self._log_is_up_to_date(msg.last_log_index, msg.last_log_term):
        self._send(RequestVoteReply(msg.term, self._id, msg.frm, True, msg.pre_vote))
        if not msg.pre_vote:
            self._election_elapsed = 0
            self._voted_for = msg.frm
    else:
        self._send(RequestVoteReply(self._term, self._id, msg.frm, False, msg.pre_vote))


_become_leader = Raft._become_leader


def _become_leader_dropping_uncommitted(self: Raft) -> None:
    """A new leader deletes its uncommitted entries and writes its NOOP right after its commit index."""
    _become_leader(self)
    log = self._log
    log._truncate_and_append([Entry(log.committed + 1, self._term, EntryKind.NOOP, b"")])


_handle_append = Raft._handle_append


def _append_without_prev_term_check(self: Raft, msg: AppendEntries) -> None:
    """A follower accepts entries after any entry it holds at ``prev_index``, whatever its term
    (Figure 2, AppendEntries rule 2 switched off)."""
    log = self._log
    if log.committed <= msg.prev_index <= log.last_index():
        msg = replace(msg, prev_term=log.term(msg.prev_index))
    _handle_append(self, msg)


def _commit_beyond_new_entries(self: Raft, msg: AppendEntries) -> None:
    """A follower raises its commit index to the leader's up to its own last entry, not only up to
    the last entry the message vouched for (Figure 2, AppendEntries rule 5 without "index of last
    new entry"): it commits a stale suffix the leader does not hold."""
    log = self._log
    accepted = msg.prev_index >= log.committed and log.match_term(msg.prev_index, msg.prev_term)
    _handle_append(self, msg)
    if accepted:
        log.commit_to(min(msg.commit, log.last_index()))


def _always_up_to_date(self: Raft, last_index: int, last_term: int) -> bool:
    """Votes are granted whatever the candidate's log (section 5.4.1 switched off)."""
    return True


def _commit_by_counting_any_term(self: Raft) -> bool:
    """A leader commits what a majority holds, of any term (section 5.4.2, Figure 8, switched off)."""
    matches = {p: pr.match for p, pr in self._prs.items()}
    matches[self._id] = self._self_match
    return self._log.commit_to(committed_index(matches, self._voters))


_reply_channel = Raft._reply_channel


def _vote_before_persisting(self: Raft, msg: Message) -> list[Message]:
    """A vote leaves before the term and vote it grants are durable: a crash forgets it."""
    return self._msgs if type(msg) is RequestVoteReply else _reply_channel(self, msg)


def _ack_before_persisting(self: Raft, msg: Message) -> list[Message]:
    """An append or snapshot acknowledgement leaves before what it acknowledges is durable."""
    acknowledgement = type(msg) in (AppendEntriesReply, InstallSnapshotReply)
    return self._msgs if acknowledgement else _reply_channel(self, msg)


def _read_without_heartbeat_round(self: Raft, ctx: bytes) -> None:
    """A leader answers a ReadIndex read at once, without confirming it still leads (thesis 6.4)."""
    self._read_states.append(ReadState(self._log.committed, ctx))


@dataclass(frozen=True, slots=True)
class Mutation:
    """One rule switched off: the `Raft` method replaced, the property that must break, and seeds
    whose run (`MUTATION_STEPS` steps) breaks it."""

    method: str
    replacement: Callable[..., object]
    breaks: str
    seeds: tuple[int, ...]


#: One mutation per property at least; the seeds are the first three of 300 (`MUTATION_STEPS` steps
#: of the `SIM` profile) that break the property (``--search 300`` lists the rest). Other seeds may
#: break another property first: two leaders of one term (`vote_twice`, `vote_before_persisting`)
#: write different entries at one (index, term) before the second is seen as leader (Log Matching);
#: Figure 8's old-term commit is always caught at the next election (Leader Completeness), before a
#: node applies the entry that overwrites it.
MUTATIONS: dict[str, Mutation] = {
    "vote_twice": Mutation("_handle_vote_request", _grant_every_vote, ELECTION_SAFETY, (1, 7, 9)),
    # (The seeds of several mutations changed when an empty node began to refuse votes once it saw
    # history, wiber/raft/reconfig.py: the runs take other paths from their first elections.)
    "vote_before_persisting": Mutation("_reply_channel", _vote_before_persisting, ELECTION_SAFETY,
                                       (34, 98, 254)),
    "leader_drops_uncommitted": Mutation("_become_leader", _become_leader_dropping_uncommitted,
                                         LEADER_APPEND_ONLY, (0, 1, 2)),
    "no_prev_term_check": Mutation("_handle_append", _append_without_prev_term_check, LOG_MATCHING,
                                   (1, 3, 4)),
    "up_to_date_check": Mutation("_log_is_up_to_date", _always_up_to_date, LEADER_COMPLETENESS, (0, 1, 2)),
    "figure_8": Mutation("_maybe_commit", _commit_by_counting_any_term, LEADER_COMPLETENESS, (120, 136, 176)),
    "ack_before_persisting": Mutation("_reply_channel", _ack_before_persisting, LEADER_COMPLETENESS,
                                      (58, 68, 84)),
    "commit_beyond_new_entries": Mutation("_handle_append", _commit_beyond_new_entries, STATE_MACHINE_SAFETY,
                                          (6, 13, 20)),
    "read_without_heartbeat": Mutation("_start_read", _read_without_heartbeat_round, LINEARIZABLE_READS,
                                       (16, 21, 26)),
}


@contextmanager
def mutated(name: str | None) -> Iterator[None]:
    """Within the block, `Raft` runs with mutation `name` (None: unchanged)."""
    if name is None:
        yield
        return
    mutation = MUTATIONS[name]
    getattr(Raft, mutation.method)  # AttributeError if the core no longer has the method
    # Most methods come from a role mixin (wiber/raft/election.py, ...): patch `Raft` itself, then
    # take the patch off so the inherited method shows through again.
    own = Raft.__dict__.get(mutation.method)
    setattr(Raft, mutation.method, mutation.replacement)
    try:
        yield
    finally:
        if own is None:
            delattr(Raft, mutation.method)
        else:
            setattr(Raft, mutation.method, own)
