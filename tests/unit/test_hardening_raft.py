"""Hardening of the Raft port (issue 15): no peer input raises out of the core or makes it emit
what the wire or the disk cannot hold.

Forged messages of every type, with numbers near the nodes' own (so they reach deep into the
handlers), small ones, and ones at the codec's limit (2**63 - 1), are put through the real codec
(`encode_message` then `decode_message`, as a node receives them) and stepped into the cores of a
3-node cluster that also runs normally (ticks, proposals, deliveries). The cores may be misled (a
forged leader's append is believed: only authentication prevents that), but they must never raise,
and everything they emit must round-trip through the codec and every hard state fit the disk.
"""

from __future__ import annotations

import random

import pytest

from tests.unit.raft.helpers import Net
from wiber.raft import Role
from wiber.raft.messages import (
    MAX_NUMBER,
    AppendEntries,
    AppendEntriesReply,
    Entry,
    EntryKind,
    InstallSnapshotReply,
    Message,
    RequestVote,
    RequestVoteReply,
    TimeoutNow,
)
from wiber.raft.wire import MalformedMessage, decode_message, encode_message
from wiber.storage.format import encode_hard_state

IDS = ["n1", "n2", "n3"]


def _number(rng: random.Random, near: int) -> int:
    """Returns: a number a fuzzer would try: near `near`, small, or at the codec's limit."""
    pick = rng.random()
    if pick < 0.55:
        value = near + rng.randint(-3, 3)
    elif pick < 0.8:
        value = rng.randint(0, 20)
    else:
        value = MAX_NUMBER - rng.randint(0, 2)
    return min(MAX_NUMBER, max(0, value))


def _forge(rng: random.Random, net: Net, to: str) -> Message:
    """Returns: a forged message to `to`, from a peer or from a node that is none."""
    core = net[to].raft
    frm = rng.choice([i for i in IDS if i != to] + ["intruder"])
    term = _number(rng, core.term)
    last = core.last_index
    kind = rng.randrange(6)
    if kind == 0:
        prev = _number(rng, last)
        prev_term = _number(rng, term)
        entries = []
        entry_term = prev_term
        for k in range(rng.randrange(4) if prev + 4 <= MAX_NUMBER else 0):
            entry_term = _number(rng, entry_term)
            entries.append(Entry(prev + 1 + k, entry_term, EntryKind(rng.randrange(2)), b"x"))
        return AppendEntries(term, frm, to, prev, prev_term, tuple(entries), _number(rng, core.commit_index),
                             rng.choice([0, 0, _number(rng, 3)]))
    if kind == 1:
        return AppendEntriesReply(term, frm, to, rng.random() < 0.5, _number(rng, last), _number(rng, last),
                                  _number(rng, term), rng.choice([0, _number(rng, 3)]))
    if kind == 2:
        return RequestVote(term, frm, to, _number(rng, last), _number(rng, term), rng.random() < 0.5,
                           rng.random() < 0.5)
    if kind == 3:
        return RequestVoteReply(term, frm, to, rng.random() < 0.5, rng.random() < 0.5)
    if kind == 4:
        return TimeoutNow(term, frm, to)
    return InstallSnapshotReply(term, frm, to, _number(rng, last))


def _check_output(net: Net) -> None:
    """Every message in flight round-trips through the codec; every hard state fits the disk format."""
    for msg in net.queue:
        assert decode_message(encode_message(msg)) == msg
    for node in net.nodes.values():
        encode_hard_state(node.storage.initial_state()[0])


@pytest.mark.parametrize("seed", range(150))
def test_forged_peer_messages_never_raise_out_of_the_core(seed: int) -> None:
    """300 steps of normal work mixed with forged messages: the cores never raise."""
    rng = random.Random(seed)
    net = Net(IDS)
    net.campaign("n1")
    for _ in range(300):
        pick = rng.random()
        if pick < 0.3:
            to = rng.choice(IDS)
            try:
                msg = decode_message(encode_message(_forge(rng, net, to)))
            except MalformedMessage:
                continue
            net.send(net[to].step(msg))
        elif pick < 0.45:
            net.tick_all(1)
        elif pick < 0.55:
            for node in net.nodes.values():
                if node.raft.role is Role.LEADER:
                    node.raft.propose([b"p"])
                    net.send(node.flush())
        elif net.queue:
            msg = net.queue.pop(0)
            net.send(net[msg.to].step(msg))
        _check_output(net)


def test_a_node_at_the_largest_term_does_not_campaign_past_it() -> None:
    """A forged heartbeat at term 2**63 - 1 is believed, but the node never campaigns at 2**63
    (its vote requests would be refused by every peer's codec, its hard state by its disk)."""
    net = Net(IDS)
    net.campaign("n1")
    n2 = net["n2"]
    n2.step(AppendEntries(MAX_NUMBER, "n1", "n2", 0, 0, (), 0, 1))
    assert n2.raft.term == MAX_NUMBER
    sent = n2.tick(20 * n2.config.election_ticks)
    assert n2.raft.term == MAX_NUMBER and n2.raft.role is Role.FOLLOWER
    assert all(m.term <= MAX_NUMBER for m in sent)
