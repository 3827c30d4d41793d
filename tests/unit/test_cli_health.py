"""The verdict `wiber ping` and `wiber status` draw from the nodes' answers: exit statuses 0/1/3, the
JSON `cluster` object, and the per-second rates of `status --watch` (issue 18)."""

from __future__ import annotations

from wiber.cli.health import (
    EXIT_DEGRADED,
    EXIT_NO_QUORUM,
    EXIT_OK,
    NodeAnswer,
    classify,
    rates,
    verdict,
)
from wiber.errors import ClientError, Forbidden


def up(node: str, role: str = "follower", term: int = 2, leader: str | None = "n1") -> dict[str, object]:
    return {"ok": True, "node": node, "role": role, "term": term, "leader": leader}


def answers(*results: dict[str, object] | BaseException) -> list[NodeAnswer]:
    return [classify(f"tcp://127.0.0.1:{9100 + i}", r) for i, r in enumerate(results)]


DOWN = ClientError("no answer from tcp://127.0.0.1:1 within 0.3 s")


def test_all_up_with_a_leader_is_0_some_down_is_1_no_quorum_is_3() -> None:
    ok = verdict(answers(up("n1", "leader"), up("n2"), up("n3")))
    assert (ok.exit_status, ok.leader, ok.term, ok.up) == (EXIT_OK, "n1", 2, 3)
    degraded = verdict(answers(up("n1", "leader"), up("n2"), DOWN))
    assert (degraded.exit_status, degraded.down) == (EXIT_DEGRADED, 1)
    minority = verdict(answers(up("n1", "leader"), DOWN, DOWN))  # an old leader, cut off
    assert minority.exit_status == EXIT_NO_QUORUM and "1 of 3" in minority.summary
    electing = verdict(answers(up("n2", "candidate", leader=None), up("n3"), DOWN))
    assert electing.exit_status == EXIT_NO_QUORUM and electing.leader is None
    assert verdict(answers(DOWN)).exit_status == EXIT_NO_QUORUM
    # Five nodes: two down is still a quorum.
    five = verdict(answers(up("n1", "leader"), up("n2"), up("n3"), DOWN, DOWN))
    assert (five.exit_status, five.majority) == (EXIT_DEGRADED, 3)


def test_a_node_that_refuses_this_client_is_there_not_down() -> None:
    refused = ClientError("no answer from tcp://x:1 within 0.3 s: tcp://x:1 refused this client's key "
                          "(CURVE handshake, status 400): ...")
    forbidden = Forbidden("STATUS needs an admin key")
    assert [a.state for a in answers(up("n1"), refused, forbidden, DOWN)] == ["up", "error", "error", "down"]
    # Every node refused: what they think is unknown, but they are there: 1, not 3.
    assert verdict(answers(forbidden, forbidden, forbidden)).exit_status == EXIT_DEGRADED
    assert verdict(answers(up("n1", "leader"), forbidden, up("n3"))).exit_status == EXIT_DEGRADED


def test_the_leader_of_the_highest_term_wins_and_json_keys_are_stable() -> None:
    both = verdict(answers(up("n1", "leader", term=2), up("n2", "leader", term=3, leader="n2"), up("n3")))
    assert (both.leader, both.term) == ("n2", 3)
    assert list(both.as_json()) == ["nodes", "up", "error", "down", "majority", "leader", "term", "exit_status",
                                    "summary"]
    (answer,) = answers({"ok": True, "id": 7, "node": "n1"})
    assert answer.reply == {"node": "n1"}  # the envelope is not the node's view


def test_rates_come_from_two_answers_timed_by_the_nodes_uptime() -> None:
    first = {"node": "n1", "uptime_s": 10.0, "commit_index": 100, "applied_index": 90, "last_index": 100,
             "transport": {"peer_send_dropped": 1, "client_reply_dropped": 0, "pub_dropped": 0,
                           "peer_frames_failed": 0, "history_refused": 0}, "reorder": {"late": 0}}
    second = {**first, "uptime_s": 12.0, "commit_index": 300, "applied_index": 290, "last_index": 310,
              "transport": {**first["transport"], "pub_dropped": 4}}  # type: ignore[dict-item]
    got = rates(first, second)
    assert got is not None
    assert (got["commit_per_s"], got["applied_per_s"], got["appended_per_s"], got["dropped_per_s"]) == \
        (100.0, 100.0, 105.0, 2.0)
    assert rates(None, second) is None
    assert rates(second, {**first, "uptime_s": 1.0}) is None  # restarted in between
    without = rates({"node": "n1", "uptime_s": 1}, {"node": "n1", "uptime_s": 2})
    assert without is not None and set(without.values()) == {None}  # an older node: no counters, no rates
