"""What `wiber ping` and `wiber status` conclude from the nodes' answers: the JSON view and the exit status.

Pure: answers in (a reply or the exception that stood in its way, per address), verdict out, so the
rules are tested without a cluster (tests/unit/test_cli_health.py).

Each node addressed is in one of three states:

* `up`: it answered the request.
* `error`: it is there but refused the request: an error reply (STATUS needs an admin key:
  FORBIDDEN), or a CURVE handshake that refused this client's key. What it thinks of the cluster
  is unknown.
* `down`: no answer within --timeout.

Exit status (documented in docs/operations.md, "Exit status"):

* 0 (`EXIT_OK`): every node is up and one of them is the leader.
* 1 (`EXIT_DEGRADED`): a majority is there and a leader answered, but some node is down or
  answered an error; also when every node refused this client (no leader can be seen then).
* 3 (`EXIT_NO_QUORUM`): fewer than a majority of the nodes addressed are there, or those that
  answered have no leader among them (an election is under way, or the cluster has lost quorum).
* 2 stays what it is for every command: bad usage or config.

The majority is of the nodes addressed: every node of --config, or the --addr list.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from wiber.errors import WireError

EXIT_OK = 0
EXIT_DEGRADED = 1
EXIT_USAGE = 2
EXIT_NO_QUORUM = 3

NodeState = Literal["up", "error", "down"]

#: Reply fields of the envelope, not of the node's own view.
_ENVELOPE = ("ok", "id")


@dataclass(frozen=True, slots=True)
class NodeAnswer:
    """One node's answer: its state, its reply (without the envelope) when up, or why not."""

    address: str
    state: NodeState
    reply: dict[str, Any] | None
    error: str | None

    @property
    def node(self) -> str | None:
        """Returns: the node's id from its reply, None when it did not answer."""
        return None if self.reply is None else str(self.reply.get("node"))


def classify(address: str, result: Mapping[str, Any] | BaseException) -> NodeAnswer:
    """Returns: the NodeAnswer of one node, from its reply or the exception a request raised."""
    if not isinstance(result, BaseException):
        return NodeAnswer(address, "up", {k: v for k, v in result.items() if k not in _ENVELOPE}, None)
    # A refused CURVE handshake surfaces as "no answer" with the monitor's reason in the text
    # (wiber.client.curve._describe): the node is there, it refused this client.
    there = isinstance(result, WireError) or "handshake" in str(result)
    return NodeAnswer(address, "error" if there else "down", None, str(result))


@dataclass(frozen=True, slots=True)
class Verdict:
    """The cluster as the answers show it."""

    nodes: int
    up: int
    error: int
    down: int
    leader: str | None
    term: int | None
    exit_status: int
    summary: str

    @property
    def majority(self) -> int:
        """Returns: how many nodes make a quorum of those addressed."""
        return self.nodes // 2 + 1

    def as_json(self) -> dict[str, Any]:
        """Returns: the `cluster` object of `--json` (keys documented in docs/operations.md)."""
        return {"nodes": self.nodes, "up": self.up, "error": self.error, "down": self.down,
                "majority": self.majority, "leader": self.leader, "term": self.term,
                "exit_status": self.exit_status, "summary": self.summary}


def verdict(answers: list[NodeAnswer]) -> Verdict:
    """Returns: the exit status and one-line summary the module docstring defines for these answers."""
    up = [a for a in answers if a.state == "up"]
    errors = sum(a.state == "error" for a in answers)
    down = sum(a.state == "down" for a in answers)
    leaders = [a.reply for a in up if a.reply is not None and a.reply.get("role") == "leader"]
    # Two nodes may both say leader for a moment (an old one not yet told): the higher term is the one.
    best = max(leaders, key=lambda r: int(r.get("term") or 0), default=None)
    leader = None if best is None else str(best.get("node"))
    term = None if best is None else int(best.get("term") or 0)
    majority = len(answers) // 2 + 1
    there = len(up) + errors
    if there < majority:
        status, summary = EXIT_NO_QUORUM, (f"no quorum: {there} of {len(answers)} nodes answered "
                                           f"(a majority is {majority})")
    elif leader is None and up:
        status, summary = EXIT_NO_QUORUM, f"no quorum: no leader among the {len(up)} nodes that answered"
    elif leader is None:
        status, summary = EXIT_DEGRADED, f"every node that answered refused this client ({errors} of {len(answers)})"
    elif down or errors:
        status, summary = EXIT_DEGRADED, (f"degraded: leader {leader} (term {term}); {down} down, "
                                          f"{errors} answered an error, of {len(answers)}")
    else:
        status, summary = EXIT_OK, f"ok: leader {leader} (term {term}), all {len(answers)} nodes up"
    return Verdict(len(answers), len(up), errors, down, leader, term, status, summary)


#: The per-second rates `status --watch` shows: column name -> the STATUS counters summed for it.
#: STATUS carries Raft indexes and drop counters only: entries, not messages (a PUB_BATCH is one
#: entry) and no request count.
RATES: dict[str, tuple[tuple[str, ...], ...]] = {
    "stored_per_s": (("messages_stored",),),
    "requests_per_s": (("requests",),),
    "commit_per_s": (("commit_index",),),
    "applied_per_s": (("applied_index",),),
    "appended_per_s": (("last_index",),),
    "dropped_per_s": (("transport", "peer_send_dropped"), ("transport", "client_reply_dropped"),
                      ("transport", "pub_dropped"), ("transport", "peer_frames_failed")),
    "refused_per_s": (("transport", "history_refused"),),
    "late_per_s": (("reorder", "late"),),
}


def _counter(reply: Mapping[str, Any], paths: tuple[tuple[str, ...], ...]) -> float | None:
    """Returns: the sum of the counters at `paths` in a STATUS reply, None if any is missing."""
    total = 0.0
    for path in paths:
        value: Any = reply
        for key in path:
            value = value.get(key) if isinstance(value, Mapping) else None
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return None
        total += value
    return total


def rates(before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> dict[str, float | None] | None:
    """Returns: per-second rates of the RATES counters between two STATUS replies of one node, timed
    by the node's own `uptime_s`; None without an earlier reply or when the node restarted between
    them (its uptime went back), or no time passed."""
    if before is None or before.get("node") != after.get("node"):
        return None
    try:
        elapsed = float(after["uptime_s"]) - float(before["uptime_s"])
    except (KeyError, TypeError, ValueError):
        return None
    if elapsed <= 0:
        return None
    out: dict[str, float | None] = {}
    for name, paths in RATES.items():
        old, new = _counter(before, paths), _counter(after, paths)
        out[name] = None if old is None or new is None else round((new - old) / elapsed, 2)
    return out
