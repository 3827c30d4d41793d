"""The pyzmq calls of Wiber's per-message paths, without the sugar layer's wrappers.

pyzmq's `zmq.Socket` (the "sugar" class) wraps `send` and `getsockopt` for features Wiber never
uses (DRAFT routing_id/group arguments, option numbers turned into enums) and ends in the backend
class's methods; calling those directly halves their cost (send 0.60 -> 0.33 us, measured). The
flags are plain ints: pyzmq's flag enums cost an arithmetic dispatch per call. Everywhere else
the ordinary `zmq.Socket` methods are used.
"""

from __future__ import annotations

from typing import Any

import zmq

__all__ = ["MORE_NOBLOCK", "NOBLOCK", "RCVMORE", "SNDMORE", "get", "recv", "send"]

NOBLOCK = int(zmq.NOBLOCK)
SNDMORE = int(zmq.SNDMORE)
MORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)
RCVMORE = int(zmq.RCVMORE)

#: ``send(sock, data: bytes, flags: int)``: raises zmq.Again when NOBLOCK and the queue is full.
send: Any = zmq.backend.Socket.send
#: ``recv(sock, flags: int) -> bytes``: raises zmq.Again when NOBLOCK and nothing is queued.
recv: Any = zmq.backend.Socket.recv
#: ``get(sock, option: int) -> int``: a socket option (RCVMORE after a recv).
get: Any = zmq.backend.Socket.get
