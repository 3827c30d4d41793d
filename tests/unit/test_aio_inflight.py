"""The sans-I/O table of requests in flight (wiber.client.inflight), without sockets or a cluster."""

from __future__ import annotations

import pytest

from wiber.client.inflight import MAX_WINDOW, InFlight
from wiber.client.values import Timeouts
from wiber.errors import ClientError, NotLeader, SessionExpired

ADDRS = ["tcp://127.0.0.1:1", "tcp://127.0.0.1:2", "tcp://127.0.0.1:3"]


def table(window: int = 10, per_try_s: float = 1.0, total_s: float = 10.0) -> InFlight[str]:
    return InFlight(list(ADDRS), Timeouts(per_try_s=per_try_s, total_s=total_s), client_id="me", window=window)


def ok(rid: int, **fields: object) -> dict[str, object]:
    return {"ok": True, "id": rid, **fields}


def test_publishes_take_seqs_in_order_and_the_floor_is_the_lowest_unanswered() -> None:
    t = table()
    a, b, c = (t.add(f"publish {n}", n, 0.0, session=True) for n in "abc")
    read = t.add("history", "h", 0.0)
    assert [s.seq for s in (a, b, c)] == [1, 2, 3] and read.seq is None
    assert all(s.client_id == "me" for s in (a, b, c))
    assert t.floor() == 1
    for slot in (a, b, c, read):
        t.sent(slot, 0.0, ADDRS[0])
    slot = t.answered(b.rid)
    assert slot is b
    assert t.on_reply(b, ok(b.rid)).reply is not None
    assert t.floor() == 1  # never above an unanswered seq: a is still out
    assert t.on_reply(t.answered(a.rid), ok(a.rid)).reply is not None  # type: ignore[arg-type]
    assert t.floor() == 3 and len(t) == 2


def test_the_unanswered_seqs_never_span_more_than_the_window() -> None:
    t = table(window=3)
    first = t.add("p", "1", 0.0, session=True)
    t.add("p", "2", 0.0, session=True)
    t.add("p", "3", 0.0, session=True)
    assert not t.room() and t.free() == 0
    # The first answered: one seq of room, however many later ones are answered meanwhile.
    t.finish(first)
    assert t.free() == 1
    with pytest.raises(ValueError):
        InFlight(ADDRS, Timeouts(), window=MAX_WINDOW + 1)


def test_each_session_has_its_own_floor_and_last_seq_counts_every_seq_taken() -> None:
    """After SESSION_EXPIRED the old session's publishes may still be ahead of the new one's: a node
    starts an ordered session at its ack_floor, so each carries its own session's lowest seq."""
    t = table()
    old = t.add("p", "old", 0.0, session=True)
    t.sent(old, 0.0, ADDRS[0])
    expired = t.add("p", "expired", 0.0, session=True)
    t.sent(expired, 0.0, ADDRS[0])
    t.on_reply(t.answered(expired.rid), {"ok": False, "id": expired.rid,  # type: ignore[arg-type]
                                         "error": "SESSION_EXPIRED", "message": "gone"})
    new = t.add("p", "new", 0.0, session=True)
    assert (old.client_id, new.client_id != "me", new.seq) == ("me", True, 3)
    assert t.floor() == 1 and t.floor("me") == 1 and t.floor(new.client_id) == 3
    assert t.floor("nobody") is None and t.last_seq == 3


def test_a_try_taken_off_the_wire_by_a_move_leaves_its_outcome_unknown() -> None:
    """Its answer, if one comes, is dropped: an earlier try may have stored it."""
    t = table()
    answered, other = t.add("p", "a", 0.0, session=True), t.add("p", "b", 0.0, session=True)
    t.sent(answered, 0.0, ADDRS[0])
    t.sent(other, 0.0, ADDRS[0])
    refusal = {"ok": False, "id": answered.rid, "error": "NOT_LEADER", "message": "no", "leader": "n2",
               "leader_addr": ADDRS[1]}
    t.on_reply(t.answered(answered.rid), refusal)  # type: ignore[arg-type]
    t.detach()
    assert other.plan.outcome_unknown and not answered.plan.outcome_unknown


def test_a_late_answer_to_an_earlier_try_is_not_taken_for_the_current_one() -> None:
    t = table()
    slot = t.add("p", "x", 0.0, session=True)
    old = t.sent(slot, 0.0, ADDRS[0])
    t.detach()
    new = t.sent(slot, 0.1, ADDRS[1])
    assert old != new
    assert t.answered(old) is None
    assert t.answered("not an int") is None
    assert t.answered(new) is slot


def test_after_a_move_everything_is_resent_in_the_order_handed_over() -> None:
    t = table()
    slots = [t.add("p", str(n), 0.0, session=True) for n in range(5)]
    for slot in reversed(slots):  # whatever order the tries left in
        t.sent(slot, 0.0, ADDRS[0])
    step = t.on_reply(t.answered(slots[2].rid), {"ok": False, "id": slots[2].rid, "error": "NOT_LEADER",  # type: ignore[arg-type]
                                                 "message": "no", "leader": "n2", "leader_addr": ADDRS[1]})
    assert not step.done and step.address == ADDRS[1]
    t.detach()
    assert [s.seq for s in t.unsent()] == [1, 2, 3, 4, 5]
    assert isinstance(slots[2].plan.last_error, NotLeader)


def test_silence_takes_every_try_off_the_wire_and_expiry_names_the_operation() -> None:
    t = table(per_try_s=1.0, total_s=5.0)
    a = t.add("publish to 'orders'", "a", 0.0, session=True)
    b = t.add("history of 'orders'", "b", 0.5)
    t.sent(a, 0.0, ADDRS[0])
    t.sent(b, 0.5, ADDRS[0])
    assert t.next_check() == 1.0
    assert not t.silent(0.9) and t.silent(1.0)
    assert t.on_silence("refused") == [a, b]
    assert [s.rid for s in t.unsent()] == [0, 0]
    assert a.plan.outcome_unknown and b.plan.outcome_unknown
    assert t.expire(4.9) == []
    (slot, error), = t.expire(5.0)
    assert slot is a and isinstance(error, ClientError)
    assert "publish to 'orders'" in str(error) and "refused" in str(error)
    assert len(t) == 1 and t.floor() is None


def test_session_expired_on_the_only_try_says_nothing_was_stored_and_starts_a_new_session() -> None:
    t = table()
    slot = t.add("publish to 'orders'", "a", 0.0, session=True)
    t.sent(slot, 0.0, ADDRS[0])
    step = t.on_reply(t.answered(slot.rid), {"ok": False, "id": slot.rid, "error": "SESSION_EXPIRED",  # type: ignore[arg-type]
                                             "message": "gone"})
    assert isinstance(step.error, SessionExpired)
    assert "stored nothing" in str(step.error) and "publish to 'orders'" in str(step.error)
    assert t.client_id != "me"
    assert t.add("p", "b", 0.0, session=True).client_id == t.client_id


def test_session_expired_after_an_unanswered_try_says_it_may_have_been_stored() -> None:
    t = table()
    slot = t.add("publish to 'orders'", "a", 0.0, session=True)
    kept = t.add("publish to 'orders'", "b", 0.0, session=True)
    t.sent(slot, 0.0, ADDRS[0])
    t.sent(kept, 0.0, ADDRS[0])
    t.on_silence()
    t.sent(slot, 1.0, ADDRS[1])
    t.sent(kept, 1.0, ADDRS[1])
    step = t.on_reply(t.answered(slot.rid), {"ok": False, "id": slot.rid, "error": "SESSION_EXPIRED",  # type: ignore[arg-type]
                                             "message": "gone"})
    assert isinstance(step.error, SessionExpired) and "may or may not" in str(step.error)
    assert kept.client_id == "me" != t.client_id  # in flight already: its resends keep their session


def test_a_reserve_hook_covers_each_seq_before_it_is_used() -> None:
    reserved: list[int] = []
    t = InFlight(ADDRS, Timeouts(), client_id="fixed", first_seq=41, reserve=reserved.append)
    assert t.add("p", "a", 0.0, session=True).seq == 41
    assert t.take_seq() == 42
    assert reserved == [41, 42]


def test_drain_empties_the_table() -> None:
    t = table()
    slots = [t.add("p", str(n), 0.0, session=True) for n in range(3)]
    t.sent(slots[0], 0.0, ADDRS[0])
    assert t.drain() == slots
    assert len(t) == 0 and t.floor() is None and t.next_check() is None and not t.silent(100.0)
