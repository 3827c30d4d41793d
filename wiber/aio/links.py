"""The asyncio client's connections: one DEALER per node (`Link`) with the task that reads its replies,
and `Links`, which makes and closes them and hands each reply to whoever waits for it.

Every request carries an `id` of its own, which the node echoes, so any number of coroutines share
one socket. Ids below zero are pinned requests (`Links.ask`: one try at one node, awaited here); every
other reply goes to the pipeline (`wiber.aio.pipeline`), which matches it to its request in flight.
Kept apart from the pipeline because this is the part that touches sockets and tasks; the pipeline's
decisions are `wiber.client.inflight`'s and `wiber.client.retry`'s.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import weakref
from typing import Any, Callable

import zmq

from wiber import protocol, zmqcalls
from wiber.aio.sockets import AioSocket, open_socket
from wiber.client.curve import CurveError, CurveKeys
from wiber.errors import ClientError, WireError

__all__ = ["DRAIN_MAX", "LINK_ERRORS", "Link", "Links"]

log = logging.getLogger(__name__)

#: Replies a link's reader takes from its socket in one go before it lets other tasks run.
DRAIN_MAX = 1000
#: What making a link may raise that a try treats as silence (so the next node is tried).
LINK_ERRORS = (ClientError, CurveError)


class Link:
    """One DEALER to one node (`sock`), and the task that reads its replies into `deliver`.

    Requests leave and replies are read with the plain backend calls of `wiber.zmqcalls` on the
    socket's view (pyzmq's asyncio send builds a future and does flag arithmetic per call: half of
    the client's time per publish, measured). The reader awaits the asyncio socket only when nothing
    is queued. libzmq signals readiness by edges, and a send may take the edge of a reply that has
    just arrived; so after sends a drain runs once, at the loop's next turn (`_kick`).
    """

    def __init__(self, sock: AioSocket, deliver: Callable[[Link, bytes], None]) -> None:
        self.address = sock.address
        self.sock = sock
        self._deliver = deliver
        self._loop = asyncio.get_running_loop()
        self._kick_due = False
        self._closed = False
        self.task = self._loop.create_task(self._read(), name=f"wiber.aio reader {sock.address}")

    def send(self, body: bytes) -> bool:
        """Queue one request (never blocking). Returns: whether the socket took it."""
        view = self.sock.view
        try:
            zmqcalls.send(view, b"", zmqcalls.MORE_NOBLOCK)
            zmqcalls.send(view, body, zmqcalls.NOBLOCK)
        except zmq.ZMQError:  # Again (no connection), or closed: the request stays in flight
            return False
        finally:
            if not self._kick_due:
                self._kick_due = True
                self._loop.call_soon(self._kick)
        return True

    def _kick(self) -> None:
        """After sends: read what waits (a send may have taken its readiness edge)."""
        self._kick_due = False
        if not self._closed and self.drain():
            self._kick_due = True
            self._loop.call_soon(self._kick)  # more than one go's worth: on at the next turn

    def drain(self) -> bool:
        """Deliver the replies waiting in the socket, at most `DRAIN_MAX`. Returns: whether more may wait."""
        view, deliver = self.sock.view, self._deliver
        try:
            for _ in range(DRAIN_MAX):
                first = zmqcalls.recv(view, zmqcalls.NOBLOCK)
                # [b"", reply] per the contract; the second frame of a message is there with the first.
                deliver(self, zmqcalls.recv(view, zmqcalls.NOBLOCK) if first == b"" else first)
        except zmq.Again:
            return False
        except zmq.ZMQError:
            return False  # closed
        return True

    async def _read(self) -> None:
        owner = self.sock.owner
        while True:
            try:
                frames = await owner.recv_multipart()
            except zmq.ZMQError:
                return  # closed
            self._deliver(self, frames[-1])
            while self.drain():
                await asyncio.sleep(0)  # a long burst: let the tasks it woke run

    def refused(self) -> str | None:
        """Returns: why the last CURVE handshake with the node failed, if one did."""
        return self.sock.refused()

    def close(self) -> None:
        """Stop reading and close the socket."""
        self._closed = True
        self.task.cancel()
        self.sock.close()


class Links:
    """A client's sockets: its DEALER per node (made on first use), the other sockets it opened (a
    subscription's SUB), and the pinned requests awaiting their reply.

    `on_reply` takes every reply that is not a pinned request's (the pipeline's), already parsed.
    """

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], curve: CurveKeys | None,
                 on_reply: Callable[[dict[str, Any]], None]) -> None:
        self._ctx = ctx
        self._curve = curve
        self._on_reply = on_reply
        self._links: dict[str, Link] = {}
        self._sockets: weakref.WeakSet[AioSocket] = weakref.WeakSet()  # every one open: `close` closes them
        self._pinned: dict[int, tuple[Link, asyncio.Future[dict[str, Any] | None]]] = {}
        self._pinned_ids = itertools.count(1)  # pinned requests' ids are negative: the pipeline's are not
        self.closed = False

    def open(self, kind: int, address: str, node_address: str | None = None,
             options: dict[int, int | bytes] | None = None) -> AioSocket:
        """Returns: a new socket (`wiber.aio.sockets.open_socket`), closed by `close`.

        Raises: ClientError: closed already (the context may be gone), or libzmq refused it; CurveError.
        """
        if self.closed:
            raise ClientError(f"cannot open a socket for {address}: the client is closed")
        sock = open_socket(self._ctx, kind, address, self._curve, node_address, options)
        self._sockets.add(sock)
        return sock

    def get(self, address: str) -> Link:
        """Returns: the DEALER to `address`, made when there is none. Raises: CurveError, ClientError."""
        link = self._links.get(address)
        if link is None:
            # No high-water mark: the pipeline's window bounds what waits here.
            sock = self.open(zmq.DEALER, address, options={zmq.SNDHWM: 0, zmq.RCVHWM: 0})
            link = self._links[address] = Link(sock, self._on_body)
        return link

    def refused(self, address: str) -> str | None:
        """Returns: why the last CURVE handshake with `address` failed, if its link has one that did."""
        link = self._links.get(address)
        return link.refused() if link is not None else None

    def has(self, address: str) -> bool:
        """Returns: whether a DEALER to `address` is open."""
        return address in self._links

    def drop(self, address: str) -> None:
        """Close the DEALER to `address` (the node went silent); pinned requests on it count as silent."""
        link = self._links.pop(address, None)
        if link is None:
            return
        link.close()
        for on, future in list(self._pinned.values()):
            if on is link and not future.done():
                future.set_result(None)

    def _on_body(self, link: Link, body: bytes) -> None:
        """One reply from `link`: to the pinned request it answers (by `id`), else to `on_reply`."""
        try:
            reply = protocol.parse_reply(body)
        except WireError:
            return
        rid = reply.get("id")
        if type(rid) is int and rid < 0:
            pinned = self._pinned.pop(rid, None)
            if pinned is not None and not pinned[1].done():
                pinned[1].set_result(reply)
            return
        self._on_reply(reply)

    async def ask(self, loop: asyncio.AbstractEventLoop, address: str, msg: dict[str, Any],
                  timeout: float) -> tuple[dict[str, Any] | None, str | None]:
        """One try of a pinned request at `address`. Returns: (the reply or None when none came within
        `timeout`, why a CURVE handshake failed, when one did)."""
        try:
            link = self.get(address)
        except LINK_ERRORS as exc:
            await asyncio.sleep(max(0.0, timeout))
            return None, str(exc)
        rid = -next(self._pinned_ids)
        future: asyncio.Future[dict[str, Any] | None] = loop.create_future()
        self._pinned[rid] = (link, future)
        try:
            link.send(protocol.pack({**msg, "id": rid}))
            return await asyncio.wait_for(future, max(0.001, timeout)), None
        except asyncio.TimeoutError:
            return None, link.refused()
        finally:
            self._pinned.pop(rid, None)

    async def close(self) -> None:
        """Close every socket, then wait for the links' readers to end. Never waits on the network."""
        self.closed = True
        tasks = [link.task for link in self._links.values()]
        for address in list(self._links):
            self.drop(address)
        for sock in list(self._sockets):
            sock.close()  # whatever is left (a subscription's socket opened while closing): a context
        if tasks:         # cannot terminate while a socket of it is open
            await asyncio.gather(*tasks, return_exceptions=True)
