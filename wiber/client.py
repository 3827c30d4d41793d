"""The client library: talk to a Wiber cluster over DESIGN section 3.

`Client` sends one request at a time over a REQ socket. A request that gets no answer within the
per-try timeout closes and reopens the socket and tries the next address (the zguide's Lazy
Pirate), until the overall deadline; a NOT_LEADER answer is followed to the leader it names.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass
from typing import Any, Sequence

import zmq

from wiber import protocol
from wiber.errors import ClientError, NotLeader, WireError, error_from_reply

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Timeouts:
    """How long the client waits: per try (one address) and in all (every retry included)."""

    per_try_s: float = 1.0
    total_s: float = 10.0


def normalize_address(address: str) -> str:
    """Returns: a zmq endpoint for `host:port` or `tcp://host:port`."""
    address = address.strip()
    if "://" in address:
        return address
    return f"tcp://{address}"


class Client:
    """A connection to a cluster, given the client addresses of some or all of its nodes.

    Not thread-safe: use one Client per thread.
    """

    def __init__(
        self,
        addresses: Sequence[str] | str,
        timeouts: Timeouts | None = None,
        ctx: zmq.Context | None = None,
    ) -> None:
        if isinstance(addresses, str):
            addresses = [addresses]
        self.addresses = [normalize_address(a) for a in addresses]
        if not self.addresses:
            raise ValueError("Client needs at least one node address")
        self.timeouts = timeouts or Timeouts()
        self._own_ctx = ctx is None
        self.ctx = ctx or zmq.Context()
        self._rotation = itertools.cycle(range(len(self.addresses)))
        self._current = self.addresses[next(self._rotation)]
        self._sock: zmq.Socket | None = None

    # ---------------------------------------------------------------- plumbing

    def _socket(self) -> zmq.Socket:
        if self._sock is None:
            sock = self.ctx.socket(zmq.REQ)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(self._current)
            self._sock = sock
        return self._sock

    def _reset(self, address: str | None = None) -> None:
        """Close the REQ socket (it is stuck in lockstep after a timeout) and pick an address."""
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None
        if address is not None:
            self._current = normalize_address(address)
        else:
            self._current = self.addresses[next(self._rotation)]

    def _try_once(self, body: bytes, timeout_s: float) -> dict[str, Any] | None:
        """Send to the current address. Returns: the reply map, or None on timeout."""
        sock = self._socket()
        sock.send(body)
        if sock.poll(max(1, int(timeout_s * 1000)), zmq.POLLIN):
            return protocol.parse_reply(sock.recv())
        self._reset()
        return None

    def request_to(self, address: str, op: str, **fields: Any) -> dict[str, Any]:
        """Send one request to exactly one node (no failover). Returns: the ok reply.

        Raises:
            WireError subclass: the node answered an error.
            ClientError: no answer within the per-try timeout.
        """
        msg = self._build(op, fields)
        saved = self._current
        self._reset(address)
        try:
            reply = self._try_once(protocol.pack(msg), self.timeouts.per_try_s)
        finally:
            self._reset(saved)
        if reply is None:
            raise ClientError(f"no answer from {address} within {self.timeouts.per_try_s:g} s")
        if not reply["ok"]:
            raise error_from_reply(reply)
        return reply

    def _build(self, op: str, fields: dict[str, Any]) -> dict[str, Any]:
        msg = {"op": op, **{k: v for k, v in fields.items() if v is not None}}
        # Validate locally with the node's own rules: a bad request fails here, not after a round trip.
        protocol.validate_request(msg, protocol.Limits())
        return msg

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send one request with failover until the total deadline. Returns: the ok reply.

        Raises:
            WireError subclass: the cluster answered an error that a retry cannot fix.
            ClientError: no usable answer before the deadline.
        """
        body = protocol.pack(self._build(op, fields))
        deadline = time.monotonic() + self.timeouts.total_s
        last_error: BaseException | None = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ClientError(
                    f"{op}: no answer from {', '.join(self.addresses)} within {self.timeouts.total_s:g} s",
                    last_error,
                )
            reply = self._try_once(body, min(self.timeouts.per_try_s, remaining))
            if reply is None:
                last_error = TimeoutError(f"{self._current} did not answer")
                continue
            if reply["ok"]:
                return reply
            err = error_from_reply(reply)
            if isinstance(err, NotLeader):
                last_error = err
                self._reset(err.leader_addr)  # None: no leader known yet, try the next node
                if err.leader_addr is None:
                    _pause(deadline, 0.05)
                continue
            raise err

    # ---------------------------------------------------------------- ops

    def ping(self) -> dict[str, Any]:
        """Returns: the PONG of whichever node answered (node, role, term, leader, time)."""
        return self.request("PING")

    def status(self) -> dict[str, Any]:
        """Returns: STATUS of whichever node answered."""
        return self.request("STATUS")

    def status_all(self) -> dict[str, dict[str, Any] | BaseException]:
        """Returns: per address, its STATUS reply or the error that stood in the way."""
        out: dict[str, dict[str, Any] | BaseException] = {}
        for address in self.addresses:
            try:
                out[address] = self.request_to(address, "STATUS")
            except (WireError, ClientError) as exc:
                out[address] = exc
        return out

    # ---------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Close the socket, and the context if this client made it."""
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None
        if self._own_ctx:
            self.ctx.term()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _pause(deadline: float, seconds: float) -> None:
    """Back off briefly before another try (bounded by the deadline): an election is under way."""
    time.sleep(max(0.0, min(seconds, deadline - time.monotonic())))

