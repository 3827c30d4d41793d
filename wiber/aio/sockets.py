"""The asyncio client's sockets: owned by a zmq.asyncio socket, configured and watched through a plain view.

`wiber.client.curve.client_socket` makes a client's sockets (LINGER 0, CURVE keys, a watch on failed
handshakes that reads a monitor socket without awaiting). Here each socket is *owned* by a
`zmq.asyncio.Socket`, so closing it is final: had a plain socket owned the handle while the asyncio
one shadowed it, the plain one, not knowing of the close, would close the handle again when garbage
collected, and libzmq may by then have handed the same handle to a new socket (seen: a live DEALER
closed under the client). `client_socket` and `HandshakeWatch` get a plain shadow of the owner (its
`view`), on which options apply to the same handle and the monitor is read synchronously.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import zmq
import zmq.asyncio

from wiber.client.curve import CurveKeys, HandshakeWatch, client_socket
from wiber.errors import ClientError

__all__ = ["AioSocket", "open_socket"]


class _OwnedByAsyncio:
    """Stands in for a context in `client_socket`: the socket it hands out is a plain view of a new
    asyncio socket (`owner`), with the plain context its monitor socket is made on."""

    def __init__(self, ctx: zmq.Context[Any]) -> None:
        self._ctx = ctx
        self._actx = zmq.asyncio.Context.shadow(ctx.underlying)
        self.owner: zmq.asyncio.Socket | None = None

    def socket(self, kind: int) -> zmq.Socket[bytes]:
        owner = self._actx.socket(kind)
        view: zmq.Socket[bytes] = zmq.Socket.shadow(owner.underlying)
        view.context = self._ctx  # get_monitor_socket makes the monitor's PAIR on it
        self.owner = owner
        return view


@dataclass(eq=False)  # (no slots: the client keeps its sockets in a WeakSet)
class AioSocket:
    """One socket: `owner` to await on (and the only one that closes it), `view` for plain non-blocking
    calls, `watch` on its CURVE handshakes (None without CURVE)."""

    owner: zmq.asyncio.Socket
    view: zmq.Socket[bytes]
    watch: HandshakeWatch | None
    address: str

    def refused(self) -> str | None:
        """Returns: why the last CURVE handshake failed, if one did."""
        return self.watch.check() if self.watch is not None else None

    def close(self) -> None:
        """Close the socket (its handshake watch first); its pending futures are cancelled. Idempotent."""
        if self.watch is not None:
            self.watch.close()
            self.watch = None
        self.owner.close(linger=0)


def open_socket(ctx: zmq.Context[Any], kind: int, address: str, curve: CurveKeys | None,
                node_address: str | None = None, options: dict[int, int | bytes] | None = None) -> AioSocket:
    """Returns: a socket of `kind` made as `client_socket` makes one (`curve`, `node_address` as there),
    `options` set, connected to `address`.

    Raises:
        CurveError: no key is known for the node.
        ClientError: libzmq refused the socket or the address (a malformed endpoint).
    """
    maker = _OwnedByAsyncio(ctx)
    try:
        view, watch = client_socket(cast("zmq.Context[zmq.Socket[bytes]]", maker), kind, address, curve, node_address)
    except zmq.ZMQError as exc:
        raise ClientError(f"cannot open a socket for {address}: {exc}") from None
    assert maker.owner is not None
    sock = AioSocket(maker.owner, view, watch, address)
    try:
        for option, value in (options or {}).items():
            view.setsockopt(option, value)
        view.connect(address)
    except zmq.ZMQError as exc:
        sock.close()
        raise ClientError(f"cannot connect to {address}: {exc}") from None
    return sock
