"""The sans-I/O subscription core (wiber.client.subscribing) that the sync and asyncio subscriptions
share: gap-free delivery, dedup of what was delivered, resume offsets, liveness judged by what waits in
the socket, failover. A small in-memory node answers the TOPICS and HISTORY requests a catch-up asks
for, and frames are packed as the node's PUB socket sends them; the clock is a number passed in."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from wiber import protocol
from wiber.client.subscribing import (
    HEARTBEAT_SILENCE_S,
    MAX_BUFFERED,
    CatchUp,
    PatternFollower,
    ReadPage,
    ReadTopics,
    Step,
    TopicFollower,
)
from wiber.client.values import History, Message
from wiber.errors import BadRequest


class Node:
    """Topics as a node stores them, answering what a catch-up asks; `commit` grows per message."""

    def __init__(self) -> None:
        self.topics: dict[str, list[bytes]] = {}
        self.first: dict[str, int] = {}  # retention: the first offset still stored
        self.commit = 0
        self.asked: list[ReadTopics | ReadPage] = []

    def store(self, topic: str, *datas: bytes) -> list[dict[str, Any]]:
        """Returns: the stored messages' fan-out items, as PUB would send them."""
        items = []
        for data in datas:
            self.commit += 1
            log = self.topics.setdefault(topic, [])
            log.append(data)
            items.append(self.item(topic, len(log) - 1))
        return items

    def item(self, topic: str, offset: int) -> dict[str, Any]:
        return {"offset": offset, "data": self.topics[topic][offset], "lamport": offset + 1, "ts": 1.0,
                "index": self.commit}

    def answer(self, want: ReadTopics | ReadPage) -> Any:
        self.asked.append(want)
        if isinstance(want, ReadTopics):
            return {name: len(log) for name, log in self.topics.items()}
        log = self.topics.get(want.topic, [])
        first = self.first.get(want.topic, 0)
        start = max(want.from_offset, first)
        stop = min(len(log), start + want.limit)
        messages = [Message.from_wire(want.topic, self.item(want.topic, o)) for o in range(start, stop)]
        return History(want.topic, messages, stop, first, len(log), self.commit)


def run(plan: CatchUp, node: Node, now: float = 0.0, deadline: float = 10.0) -> CatchUp:
    """Make every request `plan` asks for at `node`, as a subscription's I/O does."""
    while (want := plan.next(now, deadline)) is not None:
        if isinstance(want, ReadTopics):
            plan.on_topics(node.answer(want))
        else:
            plan.on_page(want, node.answer(want))
    return plan


def frame(topic: str, item: dict[str, Any]) -> tuple[bytes, bytes]:
    return protocol.topic_prefix(topic), msgpack.packb(item, use_bin_type=True)


def heartbeat(commit: int) -> tuple[bytes, bytes]:
    return protocol.HEARTBEAT_PREFIX, msgpack.packb({"commit_index": commit})


def delivered(state: TopicFollower) -> list[tuple[str, int]]:
    out = []
    while (message := state.pop()) is not None:
        out.append((message.topic, message.offset))
    return out


def feed(state: TopicFollower, node: Node, topic: str, item: dict[str, Any], now: float = 0.0) -> CatchUp | None:
    """Hand one live frame to `state`, running the catch-up it asks for. Returns: that catch-up."""
    plan = state.on_frame(*frame(topic, item), now)
    return run(plan, node, now) if plan is not None else None


def attached(node: Node, topic: str = "t", from_offset: int | None = 0) -> TopicFollower:
    state = TopicFollower(topic, from_offset)
    run(state.on_attach(0.0, {"next_offset": len(node.topics.get(topic, []))}), node)
    return state


# ---------------------------------------------------------------- gaps, duplicates, resume offsets

def test_catch_up_from_history_then_live_frames_in_order_each_once() -> None:
    node = Node()
    node.store("t", b"a", b"b")
    state = attached(node)
    assert not state.behind and delivered(state) == [("t", 0), ("t", 1)]
    (live,) = node.store("t", b"c")
    assert feed(state, node, "t", live) is None
    assert delivered(state) == [("t", 2)] and state.next_offset == 3


def test_a_gap_in_live_frames_is_filled_from_history_before_the_frame_and_nothing_twice() -> None:
    node = Node()
    state = attached(node)
    node.store("t", b"0", b"1", b"2")  # PUB dropped all three
    (live,) = node.store("t", b"3")
    plan = feed(state, node, "t", live)
    assert plan is not None and state.gaps_filled == 1
    assert node.asked[-1] == ReadPage("t", 0)
    assert delivered(state) == [("t", 0), ("t", 1), ("t", 2), ("t", 3)]  # the frame's own came from HISTORY


def test_a_gap_filled_short_of_the_frame_takes_the_frame_when_it_is_next() -> None:
    node = Node()
    state = attached(node)
    items = node.store("t", b"0", b"1")
    node.topics["t"].pop()  # the node answering HISTORY has not stored offset 1 yet
    assert feed(state, node, "t", items[1]) is not None
    assert delivered(state) == [("t", 0), ("t", 1)]


def test_frames_already_delivered_are_dropped_after_a_failover() -> None:
    node = Node()
    items = node.store("t", b"0", b"1", b"2")
    state = attached(node)
    assert len(delivered(state)) == 3
    state.fail_over()
    run(state.on_attach(1.0, {"next_offset": 0}), node)  # the new node's SUB reply does not move the start
    for item in items:  # the new node's PUB replays what the old one sent
        assert feed(state, node, "t", item) is None
    assert delivered(state) == [] and state.next_offsets == {"t": 3} and state.failovers == 1


def test_a_page_reaching_before_the_next_offset_gives_only_what_is_new() -> None:
    node = Node()
    node.store("t", b"0", b"1", b"2", b"3")
    state = TopicFollower("t", 2)
    plan = state.on_attach(0.0, {"next_offset": 0})
    assert plan.next(0.0, 1.0) == ReadPage("t", 2)
    plan.on_page(ReadPage("t", 2), node.answer(ReadPage("t", 0)))  # a page from before the start
    assert plan.next(0.0, 1.0) is None and delivered(state) == [("t", 2), ("t", 3)]


def test_without_a_start_offset_the_sub_reply_gives_it_and_retention_skips_ahead() -> None:
    node = Node()
    node.store("t", b"0", b"1")
    state = TopicFollower("t", None)
    assert state.next_offset is None and state.next_offsets == {}
    run(state.on_attach(0.0, {"next_offset": 2}), node)
    assert delivered(state) == [] and state.next_offset == 2
    resumed = TopicFollower("t", 0)
    node.first["t"] = 1  # offset 0 was removed by retention before delivery
    run(resumed.on_attach(0.0, {"next_offset": 2}), node)
    assert delivered(resumed) == [("t", 1)]


def test_a_heartbeat_past_the_seen_commit_reads_history_once() -> None:
    node = Node()
    state = attached(node)
    node.store("t", b"dropped")  # its frame never came
    plan = state.on_frame(*heartbeat(node.commit), 0.1)
    assert plan is not None
    run(plan, node, 0.1)
    assert delivered(state) == [("t", 0)] and state.seen_commit == node.commit
    assert state.on_frame(*heartbeat(node.commit), 0.2) is None  # nothing new: no HISTORY


def test_a_catch_up_stops_at_a_full_buffer_and_reads_on_after_the_reader_took_some() -> None:
    node = Node()
    node.store("t", *[b"x"] * (MAX_BUFFERED + 1500))
    state = attached(node)
    assert state.behind and state.buffered == MAX_BUFFERED
    assert state.step(0.0, lambda: False) is Step.CATCH_UP
    for _ in range(1500):
        state.pop()
    run(state.catch_up(), node)
    assert not state.behind and state.next_offset == MAX_BUFFERED + 1500


def test_a_catch_up_past_its_deadline_asks_nothing_and_leaves_the_subscription_behind() -> None:
    node = Node()
    state = attached(node)
    node.store("t", b"0")
    plan = state.catch_up()
    assert plan.next(now=5.0, deadline=5.0) is None
    assert state.behind and delivered(state) == []


def test_a_catch_up_abandoned_midway_does_not_take_the_frame_that_showed_the_gap() -> None:
    node = Node()
    state = attached(node)
    items = node.store("t", b"0", b"1")
    plan = state.on_frame(*frame("t", items[1]), 0.0)
    assert plan is not None and isinstance(plan.next(0.0, 1.0), ReadPage)
    # the HISTORY request failed: the subscription detaches and attaches again later
    state.detach()
    assert delivered(state) == [] and state.behind and state.next_offset == 0


def test_frames_that_are_not_ours_or_not_msgpack_only_count_as_signs_of_life() -> None:
    node = Node()
    state = attached(node)
    assert state.on_frame(b"other\0", b"\x81\xa1x\x01", 1.0) is None
    assert state.on_frame(protocol.topic_prefix("t"), b"\xc1 not msgpack", 2.0) is None
    assert delivered(state) == [] and state.last_heard == 2.0


# ---------------------------------------------------------------- liveness and failover

def test_a_node_silent_past_the_heartbeat_silence_is_left_for_another() -> None:
    node = Node()
    state = attached(node)
    asked: list[bool] = []

    def nothing_waits() -> bool:
        asked.append(True)
        return False

    assert state.step(0.5, nothing_waits) is Step.WAIT and not asked  # not silent: the socket is not asked
    assert state.wait_until(deadline=10.0) == HEARTBEAT_SILENCE_S
    assert state.wait_until(deadline=0.6) == 0.6
    assert state.step(HEARTBEAT_SILENCE_S + 0.01, nothing_waits) is Step.FAIL_OVER and asked
    state.fail_over()
    assert state.failovers == 1 and state.step(1.0, nothing_waits) is Step.ATTACH


def test_a_reader_away_twice_the_silence_drains_what_waits_and_stays_with_the_node() -> None:
    node = Node()
    state = attached(node)
    now = 0.0
    for away in range(3):
        now += 2 * HEARTBEAT_SILENCE_S  # the reader was busy; heartbeats and a message wait in the socket
        (item,) = node.store("t", f"m{away}".encode())
        assert state.step(now, lambda: True) is Step.DRAIN
        assert state.on_frame(*heartbeat(node.commit - 1), now) is None
        feed(state, node, "t", item, now)
        assert delivered(state) == [("t", away)]
        assert state.step(now + 0.1, lambda: False) is Step.WAIT
    assert state.failovers == 0


def test_a_refused_key_switches_to_polling_history() -> None:
    node = Node()
    state = attached(node)
    state.poll_history_instead()
    assert state.step(5.0, lambda: False) is Step.POLL_HISTORY
    assert run(state.catch_up(), node).taken == 0  # nothing new: the caller pauses
    node.store("t", b"0", b"1")
    assert run(state.catch_up(), node).taken == 2 and state.failovers == 0


# ---------------------------------------------------------------- patterns

def test_a_pattern_starts_known_topics_at_their_end_and_new_ones_at_zero() -> None:
    node = Node()
    node.store("orders.eu", b"old")
    node.store("other", b"x")
    state = PatternFollower("orders.*", None)
    assert state.next_offset is None and state.prefix == b"orders."
    plan = state.on_attach(0.0, {"next_offset": 0})
    run(plan, node)
    assert [type(w) for w in node.asked] == [ReadTopics, ReadTopics]  # the start, then the catch-up
    assert state.next_offsets == {"orders.eu": 1} and delivered(state) == []
    (eu,) = node.store("orders.eu", b"new")
    (us,) = node.store("orders.us", b"first")
    assert feed(state, node, "orders.eu", eu) is None and feed(state, node, "orders.us", us) is None
    assert delivered(state) == [("orders.eu", 1), ("orders.us", 0)]


def test_a_pattern_from_an_offset_catches_every_matching_topic_up_and_drops_others() -> None:
    node = Node()
    node.store("orders.eu", b"0", b"1")
    node.store("orders.us", b"0")
    node.store("orders.*", b"stored before patterns were refused")
    node.store("stock", b"0")
    state = PatternFollower("orders.*", 0)
    run(state.on_attach(0.0, {"next_offset": 0}), node)
    assert sorted(delivered(state)) == [("orders.eu", 0), ("orders.eu", 1), ("orders.us", 0)]
    (other,) = node.store("stock", b"1")
    assert state.on_frame(b"stock\0", msgpack.packb(other), 0.0) is None
    assert state.on_frame(b"$hbx\0", msgpack.packb(other), 0.0) is None
    assert delivered(state) == []


def test_a_pattern_gap_reads_only_its_topic_and_a_heartbeat_reads_topics_again() -> None:
    node = Node()
    state = PatternFollower("orders.>", None)
    run(state.on_attach(0.0, {"next_offset": 0}), node)
    node.store("orders.eu", b"0")  # dropped
    (second,) = node.store("orders.eu", b"1")
    node.asked.clear()
    plan = feed(state, node, "orders.eu", second)
    assert plan is not None and node.asked == [ReadPage("orders.eu", 0)] and state.gaps_filled == 1
    assert delivered(state) == [("orders.eu", 0), ("orders.eu", 1)]
    node.store("orders.us", b"dropped too")
    node.asked.clear()
    plan = state.on_frame(*heartbeat(node.commit), 0.1)
    assert plan is not None
    run(plan, node, 0.1)
    assert isinstance(node.asked[0], ReadTopics) and delivered(state) == [("orders.us", 0)]
    assert state.seen_commit == node.commit and not state.behind


def test_frames_before_a_pattern_knows_its_start_are_left_to_the_catch_up() -> None:
    node = Node()
    (item,) = node.store("orders.eu", b"0")
    state = PatternFollower("orders.*", 0)
    assert state.on_frame(*frame("orders.eu", item), 0.0) is None and delivered(state) == []
    run(state.on_attach(0.0, {"next_offset": 0}), node)
    assert delivered(state) == [("orders.eu", 0)]


def test_bad_names_are_refused_before_any_io() -> None:
    with pytest.raises(BadRequest):
        TopicFollower("", 0)
    with pytest.raises(BadRequest, match="not a topic pattern"):
        PatternFollower("orders.>.x", None)
