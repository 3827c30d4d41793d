"""What a client does after each try of a request: the one retry policy of the sync and asyncio clients.

Sans-I/O (as h11 keeps HTTP apart from sockets): a `RetryPlan` is told what each try gave (a reply,
or silence until the per-try timeout) and the time, and answers with the next step: return the
reply, raise an error, or try again at some address after some pause. `wiber.client.Client` and
`wiber.aio.Client` drive it with their own sockets and clocks, so both follow the leader, retry
and give up alike, and it is tested without a cluster.

The rules (docs/design.md section 3, "what the client does"):

* an ok reply ends the request;
* NOT_LEADER: go to the leader it names at once, or, with no leader known (an election), to the
  next address after a short pause;
* UNAVAILABLE: the outcome is unknown; the same request (same seq) is safe: again after a pause,
  at the same node; STORAGE: that node cannot write: the next node, after a pause;
* silence (no reply within the per-try timeout): the outcome is unknown; the next node, at once;
* OUT_OF_SEQUENCE (only an ``ordered`` request, the Publisher's, meets it): an earlier seq was refused
  on its way, so this one was not stored: the same node, at once, behind the earlier ones;
* any other error is final: the request itself is wrong (BAD_REQUEST, TOO_LARGE, FORBIDDEN, ...);
* past the total deadline: `ClientError` naming the operation the caller called and the last cause.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from wiber.errors import (
    ClientError,
    NotLeader,
    OutOfSequence,
    StorageError,
    Unavailable,
    WireError,
    error_from_reply,
)

__all__ = ["ELECTION_PAUSE_S", "RETRY_PAUSE_S", "Next", "RetryPlan"]

#: Pause before another try when no leader is known yet (an election is under way).
ELECTION_PAUSE_S = 0.05
#: Pause before trying again after UNAVAILABLE or STORAGE.
RETRY_PAUSE_S = 0.05


@dataclass(frozen=True, slots=True)
class Next:
    """The step after a try: try again (at `address`: None = the next in rotation, `same` = the
    address just tried) after `pause_s`, or end with `reply` or `error`."""

    reply: dict[str, Any] | None = None
    error: BaseException | None = None
    address: str | None = None
    same: bool = False
    pause_s: float = 0.0

    @property
    def done(self) -> bool:
        """Returns: whether the request ended (with a reply or an error)."""
        return self.reply is not None or self.error is not None


class RetryPlan:
    """The retry state of one request: `what` names it in errors (the caller's operation, e.g.
    ``publish to 'orders'``), `addresses` are the cluster's, `deadline` is on the caller's clock."""

    # One per request in flight (a pipelined publisher makes tens of thousands a second): slots.
    __slots__ = ("what", "addresses", "deadline", "total_s", "last_error", "outcome_unknown", "refused")

    def __init__(self, what: str, addresses: list[str], deadline: float, total_s: float) -> None:
        self.what = what
        self.addresses = addresses
        self.deadline = deadline
        self.total_s = total_s
        self.last_error: BaseException | None = None
        self.outcome_unknown = False
        """Whether a try may have reached the log (silence, UNAVAILABLE, STORAGE): a retry of a
        publish may then meet its own earlier copy."""
        self.refused: str | None = None
        """Why the last failed CURVE handshake failed, if one did (said when giving up)."""

    def expired(self, now: float) -> Next | None:
        """Returns: the final ClientError when `now` is past the deadline, else None."""
        if now < self.deadline:
            return None
        cause = f"; last: {self.last_error}" if self.last_error is not None else ""
        refused = f"; {self.refused}" if self.refused else ""
        return Next(error=ClientError(
            f"{self.what}: no answer from {', '.join(self.addresses)} within {self.total_s:g} s{refused}{cause}",
            self.last_error))

    def on_silence(self, address: str, refused: str | None = None) -> Next:
        """The try at `address` got no answer within its per-try timeout: the next node, at once."""
        self.refused = refused or self.refused
        self.last_error = TimeoutError(refused or f"{address} did not answer")
        self.outcome_unknown = True
        return Next()

    def on_reply(self, reply: dict[str, Any]) -> Next:
        """The try got `reply` (parsed): end, or say where to go next."""
        if reply["ok"]:
            return Next(reply=reply)
        err = error_from_reply(reply)
        return self.on_error(err)

    def on_error(self, err: WireError) -> Next:
        """The try was answered `err`: follow the leader, retry, or end with it."""
        if isinstance(err, NotLeader):
            self.last_error = err
            if err.leader_addr is not None:
                return Next(address=err.leader_addr)
            return Next(pause_s=ELECTION_PAUSE_S)
        if isinstance(err, (Unavailable, StorageError)):
            self.last_error = err
            self.outcome_unknown = True
            return Next(same=isinstance(err, Unavailable), pause_s=RETRY_PAUSE_S)
        if isinstance(err, OutOfSequence):
            self.last_error = err
            return Next(same=True)
        return Next(error=err)
