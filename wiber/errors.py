"""Wiber's exceptions: one root, wire errors mapped 1:1 to the codes of docs/design.md section 3.

Tree::

    WiberError
    ├── ConfigError            a configuration file was refused (names file, key, problem)
    ├── NodeStartError         a node cannot start (port taken, data dir unusable)
    ├── InvariantError         a programmer error inside the Raft core or broker (never bad input)
    ├── ClientError            the client library gave up (see .last_error for the cause)
    └── WireError              an error a node answers on the wire; `.code` is the contract's code
        ├── BadRequest         BAD_REQUEST
        │   └── ConsumerError  BAD_REQUEST with a `reason` (docs/design.md section 11):
        │       UnknownGroup (NO_GROUP), GroupConflict (GROUP_CONFLICT),
        │       TooManyGroups (TOO_MANY_GROUPS), PendingCapReached (PENDING_CAP)
        ├── TooLarge           TOO_LARGE
        ├── UnknownOp          UNKNOWN_OP
        ├── NotLeader          NOT_LEADER   (.leader, .leader_addr)
        ├── Unavailable        UNAVAILABLE
        ├── StorageError       STORAGE
        ├── SessionExpired     SESSION_EXPIRED
        ├── OutOfSequence      OUT_OF_SEQUENCE
        └── Forbidden          FORBIDDEN

Local versus remote (as in h11): a WireError raised while handling a request is answered to that
client and never escapes the node loop; the client library raises the same classes from replies.
"""

from __future__ import annotations

from typing import Any


class WiberError(Exception):
    """Root of every exception Wiber raises on purpose."""


class ConfigError(WiberError):
    """A configuration file was refused: the message names the file, the key and the problem."""

    def __init__(self, path: str, key: str, problem: str) -> None:
        self.path = path
        self.key = key
        self.problem = problem
        super().__init__(f"{path}: {key}: {problem}")


class NodeStartError(WiberError):
    """A node cannot start, for a reason the operator can fix (port in use, unknown node id)."""


class InvariantError(WiberError):
    """An internal invariant broke: a bug in Wiber, never the fault of input."""


class ClientError(WiberError):
    """The client library gave up on a request before its deadline produced an answer."""

    def __init__(self, message: str, last_error: BaseException | None = None) -> None:
        self.last_error = last_error
        super().__init__(message)


class WireError(WiberError):
    """An error that travels on the wire as `{ok: false, error: code, message: text}`."""

    code: str = "INTERNAL"

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)

    def to_reply(self) -> dict[str, Any]:
        """Returns: the reply map for this error (without the request `id`)."""
        return {"ok": False, "error": self.code, "message": self.message}


class BadRequest(WireError):
    """Not msgpack, not a map, a missing or mistyped field, or a bad topic name."""

    code = "BAD_REQUEST"


class ConsumerError(BadRequest):
    """A consumer-group op that cannot be done in the group's current state.

    On the wire it is BAD_REQUEST with a `reason` naming the subclass, so a client raises the same
    class; within the broker it is an op's result, never raised by apply (every node applies it alike).
    """

    reason: str = "CONSUMER"

    def to_reply(self) -> dict[str, Any]:
        reply = super().to_reply()
        reply["reason"] = self.reason
        return reply


class UnknownGroup(ConsumerError):
    """FETCH, ACK, NAK or a group read of a group that does not exist (create it first)."""

    reason = "NO_GROUP"


class GroupConflict(ConsumerError):
    """GROUP_CREATE of an existing group with other settings."""

    reason = "GROUP_CONFLICT"


class TooManyGroups(ConsumerError):
    """GROUP_CREATE when the cluster keeps as many groups as it may."""

    reason = "TOO_MANY_GROUPS"


class PendingCapReached(ConsumerError):
    """FETCH when the group (or all groups) hold as many unacked deliveries as they may: ack first."""

    reason = "PENDING_CAP"


CONSUMER_ERRORS: dict[str, type[ConsumerError]] = {
    cls.reason: cls for cls in (UnknownGroup, GroupConflict, TooManyGroups, PendingCapReached)
}


class TooLarge(WireError):
    """A message (or a batch in all) is over `max_message_bytes`."""

    code = "TOO_LARGE"


class UnknownOp(WireError):
    """The `op` is not one of the contract's."""

    code = "UNKNOWN_OP"


class NotLeader(WireError):
    """A write or linearizable read reached a follower; retry at `leader_addr` (nil during an election)."""

    code = "NOT_LEADER"

    def __init__(self, message: str, leader: str | None = None, leader_addr: str | None = None) -> None:
        self.leader = leader
        self.leader_addr = leader_addr
        super().__init__(message)

    def to_reply(self) -> dict[str, Any]:
        reply = super().to_reply()
        reply["leader"] = self.leader
        reply["leader_addr"] = self.leader_addr
        return reply


class Unavailable(WireError):
    """No quorum or no commit before the deadline: the outcome is unknown, a retry with the same seq is safe."""

    code = "UNAVAILABLE"


class StorageError(WireError):
    """The node cannot write its log (disk full, I/O error): try another node."""

    code = "STORAGE"


class SessionExpired(WireError):
    """A retry whose dedup session was evicted: it may or may not be stored, and is not stored again."""

    code = "SESSION_EXPIRED"


class OutOfSequence(WireError):
    """An `ordered` PUB whose seq is past the next one its session stores: not stored; send the
    earlier seqs first (docs/design.md section 3)."""

    code = "OUT_OF_SEQUENCE"


class Forbidden(WireError):
    """The client's key does not give it this op or topic (security.clients of the config)."""

    code = "FORBIDDEN"


WIRE_ERRORS: dict[str, type[WireError]] = {
    cls.code: cls
    for cls in (BadRequest, TooLarge, UnknownOp, NotLeader, Unavailable, StorageError, SessionExpired,
                OutOfSequence, Forbidden)
}


def error_from_reply(reply: dict[str, Any]) -> WireError:
    """Returns: the WireError a `{ok: false}` reply stands for (unknown codes become a plain WireError)."""
    code = str(reply.get("error", "INTERNAL"))
    message = str(reply.get("message", ""))
    cls = WIRE_ERRORS.get(code)
    if cls is NotLeader:
        leader = reply.get("leader")
        addr = reply.get("leader_addr")
        return NotLeader(
            message,
            leader if isinstance(leader, str) else None,
            addr if isinstance(addr, str) else None,
        )
    if cls is BadRequest and isinstance(reply.get("reason"), str):
        cls = CONSUMER_ERRORS.get(reply["reason"], ConsumerError)
    if cls is None:
        err = WireError(f"{code}: {message}")
        err.code = code
        return err
    return cls(message)
