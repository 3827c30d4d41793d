"""A minimal non-blocking HTTP/1.1 server that lives in the node's own `zmq.Poller` (no thread).

Why: the node serves `/metrics` (docs/operations.md, "Metrics") from the one loop that runs Raft, and
must never stop that loop for more than a few milliseconds. A thread would race the loop's state;
`http.server` blocks. So this server is a handful of plain non-blocking sockets that the loop's
poller watches beside its ZeroMQ sockets, and `handle` does a bounded amount of work per call.

Theory of operation:

* `MetricsHttp(host, port, routes)` binds a non-blocking listening socket (SO_REUSEADDR, backlog
  64) or raises `MetricsBindError` naming host:port and the OS's reason.
* `register(poller)` puts the listener in the loop's poller; from then on the server registers,
  modifies and unregisters its connections in that poller itself.
* Each loop turn passes the poll result to `handle(events, now)`. For a plain socket registered
  as an object, pyzmq's `Poller.poll` reports its integer fd, not the object (pyzmq 27 builds the
  result from the pollitem's fd); a caller may also have registered the fd itself. So the server
  looks up each of its own sockets under both its fd and its object, and never touches the
  other keys (ZeroMQ sockets of the node).
* A connection goes READING (POLLIN, one `recv` per ready turn, the head at most 8 KiB) ->
  WRITING (the whole response is built at once, the route called synchronously; sent
  non-blocking, the rest on POLLOUT) -> LINGERING (after `shutdown(SHUT_WR)`, what the client
  still sends is read and dropped until it closes, so that closing does not turn into a reset that
  could destroy the response in flight: Apache's "lingering close") -> closed.
* Every response has `Connection: close` and a Content-Length: one request per connection, which
  is all Prometheus needs and keeps the states few.
* Limits that bound each `handle` call and the server's memory: at most 32 connections (the 33rd
  and later are accepted and answered 503 at once, then closed), at most 16 accepts per call, one
  `recv`/`send` per ready connection per call, a connection with no progress for 5 s is closed
  (checked in `handle` and in `expire`, which the loop calls on its timer), a lingering one after
  2 s. When accepting fails for lack of descriptors, the listener leaves the poller for a second,
  so that a full process table does not turn the loop into a busy spin.

Answers: `GET`/`HEAD` on a route -> the route's (status, content type, body), HEAD without the
body; unknown path -> 404; another method -> 405 with `Allow: GET, HEAD`; a malformed request
line, version or header -> 400; a head over 8 KiB -> 431; a route that raises -> 500 (logged).
A client's bad input never raises out of `handle`.

`now` is the caller's monotonic clock in seconds (the node's `Clock.monotonic()`); the server
reads no clock of its own, so tests drive its timeouts.
"""

from __future__ import annotations

import enum
import errno
import logging
import re
import socket
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import Any

import zmq

log = logging.getLogger(__name__)

#: A route: called with no argument, returns (HTTP status code, Content-Type, body).
Route = Callable[[], tuple[int, str, bytes]]

#: Open connections at most; beyond, a new one is answered 503 and closed at once.
MAX_CONNECTIONS = 32
#: Bytes of request head (request line and headers, up to the empty line) at most; else 431.
MAX_HEAD_BYTES = 8192
#: A connection with no progress for this long (reading or writing) is closed.
IDLE_TIMEOUT_S = 5.0
#: After the response, how long a client may take to close its side before the server does.
LINGER_TIMEOUT_S = 2.0
#: Connections accepted per `handle` call at most (the rest wait in the backlog for the next turn).
ACCEPTS_PER_CALL = 16
#: The listening socket's backlog.
BACKLOG = 64
#: How long the listener stays out of the poller after accept failed for lack of descriptors.
ACCEPT_PAUSE_S = 1.0

_DRAIN_BYTES = 65536
_MAX_DRAINED = 1 << 20
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_VERSION = re.compile(r"HTTP/1\.[0-9]\Z")
_ACCEPT_PAUSE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class MetricsBindError(Exception):
    """The metrics server could not listen on its address (taken, not local, unresolvable)."""

    def __init__(self, host: str, port: int, reason: str) -> None:
        super().__init__(f"cannot listen for metrics HTTP on {host}:{port}: {reason}")
        self.host = host
        self.port = port
        self.reason = reason


class _State(enum.Enum):
    READING = "reading"
    WRITING = "writing"
    LINGERING = "lingering"


class _Conn:
    """One client connection: its socket, fd (kept: `fileno()` is -1 once closed), state, buffers."""

    __slots__ = ("sock", "fd", "state", "buf", "out", "sent", "drained", "deadline")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.state = _State.READING
        self.buf = b""
        self.out = b""
        self.sent = 0
        self.drained = 0
        self.deadline = deadline


def _response(status: int, content_type: str, body: bytes, head_only: bool = False,
              extra: str = "") -> bytes:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Unknown"
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n{extra}\r\n")
    return head.encode("latin-1") + (b"" if head_only else body)


def _error(status: int, text: str, head_only: bool = False, extra: str = "") -> bytes:
    return _response(status, "text/plain; charset=utf-8", f"{text}\n".encode(), head_only, extra)


_REFUSED = _error(503, "too many connections")


class MetricsHttp:
    """An HTTP/1.1 server for a few GET routes, driven by the caller's `zmq.Poller`."""

    def __init__(self, host: str, port: int, routes: Mapping[str, Route], *,
                 max_connections: int = MAX_CONNECTIONS, max_head_bytes: int = MAX_HEAD_BYTES,
                 idle_timeout_s: float = IDLE_TIMEOUT_S,
                 linger_timeout_s: float = LINGER_TIMEOUT_S) -> None:
        """Bind and listen on host:port (port 0: any free port, see `port`); `routes` maps a path
        (`/metrics`, without query) to its route.

        Raises: MetricsBindError if the address cannot be resolved or bound.
        """
        self.host = host
        self._routes = dict(routes)
        self._max_connections = max_connections
        self._max_head = max_head_bytes
        self._idle = idle_timeout_s
        self._linger = linger_timeout_s
        self._poller: zmq.Poller | None = None
        self._conns: dict[int, _Conn] = {}
        self._paused_until: float | None = None
        self._closed = False
        #: Connections answered 503 because `max_connections` were open.
        self.refused = 0
        self._listener = self._listen(host, port)
        self._listener_fd = self._listener.fileno()
        #: The port listened on (the one the system chose when `port` was 0).
        self.port: int = self._listener.getsockname()[1]

    @staticmethod
    def _listen(host: str, port: int) -> socket.socket:
        try:
            family, kind, proto, _, addr = socket.getaddrinfo(
                host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        except (socket.gaierror, UnicodeError) as exc:
            raise MetricsBindError(host, port, str(exc)) from exc
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
            sock.listen(BACKLOG)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise MetricsBindError(host, port, exc.strerror or str(exc)) from exc
        return sock

    @property
    def open_connections(self) -> int:
        """The connections open now (reading, writing or lingering)."""
        return len(self._conns)

    def register(self, poller: zmq.Poller) -> None:
        """Put the listener (and any open connection) in `poller`; the server keeps its own
        sockets' registrations in it from now on, until `close`."""
        self._poller = poller
        if self._paused_until is None and not self._closed:
            poller.register(self._listener, zmq.POLLIN)
        for conn in self._conns.values():
            poller.register(conn.sock, zmq.POLLOUT if conn.state is _State.WRITING else zmq.POLLIN)

    def handle(self, events: Mapping[Any, int], now: float) -> None:
        """Serve what the poll result `events` says is ready (keys as `zmq.Poller.poll` gives them:
        an fd or a socket object for plain sockets; other keys are ignored), then close what has
        expired at `now`. Bounded work: one recv or send per ready connection, a few accepts."""
        if self._closed:
            return
        for conn in list(self._conns.values()):
            ev = events.get(conn.fd, 0) or events.get(conn.sock, 0)
            if not ev:
                continue
            if conn.state is _State.READING:
                self._read(conn, now)
            elif conn.state is _State.WRITING:
                self._write(conn, now)
            else:
                self._drain(conn)
        if events.get(self._listener_fd, 0) or events.get(self._listener, 0):
            self._accept(now)
        self.expire(now)

    def expire(self, now: float) -> None:
        """Close the connections past their deadline; take the listener back after a pause."""
        if self._closed:
            return
        for conn in [c for c in self._conns.values() if c.deadline <= now]:
            log.debug("metrics http: closing a connection %s past its deadline", conn.state.value)
            self._close_conn(conn)
        if self._paused_until is not None and now >= self._paused_until:
            self._paused_until = None
            if self._poller is not None:
                self._poller.register(self._listener, zmq.POLLIN)

    def next_deadline(self) -> float | None:
        """Returns: the earliest time `expire` has something to do, or None (for the poll timeout)."""
        times = [c.deadline for c in self._conns.values()]
        if self._paused_until is not None:
            times.append(self._paused_until)
        return min(times, default=None)

    def close(self) -> None:
        """Close every connection and the listener, and take them out of the poller. Idempotent."""
        if self._closed:
            return
        for conn in list(self._conns.values()):
            self._close_conn(conn)
        self._unregister(self._listener)
        self._listener.close()
        self._closed = True

    # -- states -----------------------------------------------------------------------------------

    def _accept(self, now: float) -> None:
        for _ in range(ACCEPTS_PER_CALL):
            try:
                sock, _addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _ACCEPT_PAUSE_ERRNOS:
                    log.warning("metrics http: cannot accept (%s); pausing for %gs", exc, ACCEPT_PAUSE_S)
                    self._unregister(self._listener)
                    self._paused_until = now + ACCEPT_PAUSE_S
                    return
                continue  # ECONNABORTED and the like: that client is gone, take the next
            sock.setblocking(False)
            if len(self._conns) >= self._max_connections:
                self._refuse(sock)
                continue
            conn = _Conn(sock, now + self._idle)
            self._conns[conn.fd] = conn
            if self._poller is not None:
                self._poller.register(sock, zmq.POLLIN)

    def _refuse(self, sock: socket.socket) -> None:
        """Answer 503 and close; what the client already sent is read first, so the close is a
        FIN rather than a reset that could destroy the 503 before the client reads it."""
        self.refused += 1
        try:
            sock.send(_REFUSED)
            sock.shutdown(socket.SHUT_WR)
            sock.recv(_DRAIN_BYTES)
        except OSError:
            pass
        sock.close()

    def _read(self, conn: _Conn, now: float) -> None:
        try:
            data = conn.sock.recv(self._max_head + 4 - len(conn.buf))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close_conn(conn)
            return
        if not data:
            self._close_conn(conn)  # the client left before its request was whole
            return
        conn.buf += data
        conn.deadline = now + self._idle
        end = _HEAD_END.search(conn.buf)
        if end is None or end.end() > self._max_head:
            if len(conn.buf) >= self._max_head:
                self._start_response(conn, _error(431, "request head too large"), now)
            return
        self._start_response(conn, self._answer(conn.buf[:end.start()]), now)

    def _answer(self, head: bytes) -> bytes:
        lines = head.decode("latin-1").split("\n")
        parts = lines[0].rstrip("\r").split(" ")
        if len(parts) != 3 or not _TOKEN.match(parts[0]) or not _VERSION.match(parts[2]):
            return _error(400, "bad request line")
        for line in lines[1:]:
            line = line.rstrip("\r")
            name, colon, _ = line.partition(":")
            if not colon or not _TOKEN.match(name):
                return _error(400, "bad header")
        method, target = parts[0], parts[1]
        head_only = method == "HEAD"
        if method not in ("GET", "HEAD"):
            return _error(405, "method not allowed", extra="Allow: GET, HEAD\r\n")
        if target.startswith(("http://", "https://")):
            target = "/" + target.split("://", 1)[1].partition("/")[2]
        route = self._routes.get(target.partition("?")[0])
        if route is None:
            return _error(404, "not found", head_only)
        try:
            status, content_type, body = route()
        except Exception:
            log.exception("metrics http: route %s failed", target)
            return _error(500, "internal error", head_only)
        return _response(status, content_type, body, head_only)

    def _start_response(self, conn: _Conn, out: bytes, now: float) -> None:
        conn.buf = b""
        conn.out = out
        conn.state = _State.WRITING
        self._write(conn, now)

    def _write(self, conn: _Conn, now: float) -> None:
        try:
            n = conn.sock.send(memoryview(conn.out)[conn.sent:])
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError:
            self._close_conn(conn)
            return
        if n:
            conn.sent += n
            conn.deadline = now + self._idle
        if conn.sent < len(conn.out):
            if self._poller is not None:
                self._poller.register(conn.sock, zmq.POLLOUT)
            return
        conn.out = b""
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close_conn(conn)
            return
        conn.state = _State.LINGERING
        conn.deadline = now + self._linger
        if self._poller is not None:
            self._poller.register(conn.sock, zmq.POLLIN)

    def _drain(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(_DRAIN_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        conn.drained += len(data)
        if not data or conn.drained > _MAX_DRAINED:
            self._close_conn(conn)

    def _close_conn(self, conn: _Conn) -> None:
        self._conns.pop(conn.fd, None)
        self._unregister(conn.sock)
        conn.sock.close()

    def _unregister(self, sock: socket.socket) -> None:
        if self._poller is not None:
            try:
                self._poller.unregister(sock)
            except KeyError:
                pass
