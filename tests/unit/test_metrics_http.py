"""The metrics HTTP server answers real clients from a real `zmq.Poller` loop in the test thread,
and never holds that loop: slow senders, a client that never reads, 33+ connections, oversized
heads, idle connections and `close()` (docs/operations.md, "Metrics").

The loop here is the node's in miniature: poll with a timeout, `handle(dict(events), now)`. Clients
run in the test thread (raw sockets, interleaved with loop turns, so the order is exact) or in
threads (urllib), which the tests join. Nothing waits with sleep: the loop turns until a condition
holds or a deadline passes. `now` is the monotonic clock plus a skew the idle tests move forward.
"""

from __future__ import annotations

import functools
import http.client
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

import pytest
import zmq

from wiber.node.metrics import CONTENT_TYPE, Gauge, MetricsBindError, MetricsHttp, Registry, Route
from wiber.node.metrics.http import ACCEPTS_PER_CALL, IDLE_TIMEOUT_S, MAX_CONNECTIONS, MAX_HEAD_BYTES

T = TypeVar("T")
DEADLINE_S = 20.0
BIG = 32 << 20  # a body the kernel's socket buffers cannot hold (loopback autotunes to a few MiB)

#: An opener that ignores proxy settings from the environment: the server is on 127.0.0.1.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class InThread(Generic[T]):
    """Run `fn` in a thread; `done()` says whether it finished; `result()` joins and returns or raises."""

    def __init__(self, fn: Callable[[], T]) -> None:
        self._fn = fn
        self._value: T | None = None
        self._error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self._value = self._fn()
        except BaseException as exc:  # handed to the test thread by result()
            self._error = exc

    def done(self) -> bool:
        return not self.thread.is_alive()

    def result(self) -> T:
        self.thread.join(DEADLINE_S)
        assert not self.thread.is_alive(), "client thread did not finish"
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


class Loop:
    """One poller, made once; each turn polls with a timeout and hands the events to the server."""

    def __init__(self, server: MetricsHttp, translate_to_objects: bool = False) -> None:
        self.server = server
        self.poller = zmq.Poller()
        server.register(self.poller)
        self.skew = 0.0
        self.turns = 0
        self.longest_handle_s = 0.0
        self._translate = translate_to_objects

    def now(self) -> float:
        return time.monotonic() + self.skew

    def turn(self, timeout_ms: int = 20) -> None:
        events = dict(self.poller.poll(timeout_ms))
        if self._translate:  # as a loop that maps fds back to the socket objects it registered
            by_fd = {s.fileno(): s for s, _ in self.poller.sockets if not isinstance(s, zmq.Socket)}
            events = {by_fd.get(key, key): ev for key, ev in events.items()}
        start = time.perf_counter()
        self.server.handle(events, self.now())
        self.longest_handle_s = max(self.longest_handle_s, time.perf_counter() - start)
        self.turns += 1

    def until(self, condition: Callable[[], Any], what: str) -> None:
        deadline = time.monotonic() + DEADLINE_S
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            self.turn()

    def serve(self, client: InThread[T]) -> T:
        """Turn the loop until the client thread is done. Returns: its result."""
        self.until(client.done, "the client thread")
        return client.result()

    def flags(self) -> list[int]:
        """The poll flags of the server's sockets in the poller, listener first."""
        return [flags for _, flags in self.poller.sockets]


def metrics_page() -> tuple[int, str, bytes]:
    reg = Registry()
    reg.register(Gauge("wiber_raft_term", "Current term.")).set(3)
    return 200, CONTENT_TYPE, reg.render()


@functools.cache
def big_body() -> bytes:
    return b"x" * BIG


def failing_route() -> tuple[int, str, bytes]:
    raise RuntimeError("render broke")


ROUTES: dict[str, Route] = {
    "/metrics": metrics_page,
    "/big": lambda: (200, "application/octet-stream", big_body()),
    "/teapot": lambda: (418, "text/plain", b"short and stout\n"),
    "/fail": failing_route,
}


@pytest.fixture
def server() -> Iterator[MetricsHttp]:
    srv = MetricsHttp("127.0.0.1", 0, ROUTES)
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture
def loop(server: MetricsHttp) -> Loop:
    return Loop(server)


@pytest.fixture
def clients() -> Iterator[list[socket.socket]]:
    """Raw client sockets, closed at teardown."""
    socks: list[socket.socket] = []
    yield socks
    for s in socks:
        s.close()


def connect(server: MetricsHttp, socks: list[socket.socket], rcvbuf: int | None = None) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    socks.append(s)
    if rcvbuf is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(DEADLINE_S)
    s.connect(("127.0.0.1", server.port))
    return s


def read_to_eof(loop: Loop, sock: socket.socket) -> bytes:
    """Turn the loop until the server closes `sock`'s connection. Returns: all it sent."""
    sock.setblocking(False)
    chunks: list[bytes] = []
    eof = False

    def drained() -> bool:
        nonlocal eof
        while True:
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                return False
            if not data:
                eof = True
                return True
            chunks.append(data)

    loop.until(drained, "the server to close the connection")
    return b"".join(chunks)


def get(server: MetricsHttp, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """One request with urllib (run it in a thread). Returns: status, headers, body."""
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}{path}", method=method)
    try:
        with OPENER.open(request, timeout=DEADLINE_S) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, dict(err.headers), err.read()


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


# -- answers -------------------------------------------------------------------------------------


def test_get_metrics_answers_the_page_with_length_type_and_close(server: MetricsHttp, loop: Loop) -> None:
    status, headers, body = loop.serve(InThread(lambda: get(server, "/metrics")))
    assert status == 200
    assert headers["Content-Type"] == CONTENT_TYPE
    assert headers["Connection"] == "close"
    assert int(headers["Content-Length"]) == len(body)
    assert b"wiber_raft_term 3\n" in body
    loop.until(lambda: server.open_connections == 0, "the connection to close")


def test_query_string_and_absolute_form_reach_the_route(server: MetricsHttp, loop: Loop,
                                                         clients: list[socket.socket]) -> None:
    assert loop.serve(InThread(lambda: get(server, "/metrics?name[]=x")))[0] == 200
    s = connect(server, clients)
    s.sendall(f"GET http://127.0.0.1:{server.port}/metrics HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert status_of(read_to_eof(loop, s)) == 200


def test_head_has_the_length_of_get_but_no_body(server: MetricsHttp, loop: Loop,
                                               clients: list[socket.socket]) -> None:
    def head() -> tuple[int, str | None, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=DEADLINE_S)
        try:
            conn.request("HEAD", "/metrics")
            resp = conn.getresponse()
            return resp.status, resp.getheader("Content-Length"), resp.read()
        finally:
            conn.close()

    status, length, body = loop.serve(InThread(head))
    assert (status, body) == (200, b"")
    assert int(length or -1) == len(metrics_page()[2])
    s = connect(server, clients)  # and on the wire: the head only, then the close
    s.sendall(b"HEAD /metrics HTTP/1.1\r\n\r\n")
    raw = read_to_eof(loop, s)
    assert raw.endswith(b"\r\n\r\n") and b"wiber_raft_term" not in raw


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/nope", 404), ("HEAD", "/nope", 404), ("POST", "/metrics", 405), ("DELETE", "/metrics", 405),
    ("GET", "/teapot", 418), ("GET", "/fail", 500),
])
def test_status_codes(server: MetricsHttp, loop: Loop, method: str, path: str, status: int) -> None:
    got, headers, body = loop.serve(InThread(lambda: get(server, path, method)))
    assert got == status
    assert headers["Connection"] == "close"
    if method == "HEAD":
        assert body == b""
    if status == 405:
        assert headers["Allow"] == "GET, HEAD"


@pytest.mark.parametrize("garbage", [
    b"hello\r\n\r\n", b"\r\n\r\n", b"GET /metrics\r\n\r\n", b"GET /metrics HTTP/2.0\r\n\r\n",
    b"GET  /metrics HTTP/1.1\r\n\r\n", b"G(T /metrics HTTP/1.1\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n", b"GET /metrics HTTP/1.1\r\n folded: x\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n\n",
])
def test_garbage_is_answered_400(server: MetricsHttp, loop: Loop, clients: list[socket.socket],
                                 garbage: bytes) -> None:
    s = connect(server, clients)
    s.sendall(garbage)
    assert status_of(read_to_eof(loop, s)) == 400
    s.close()  # the server, lingering, closes its end on the client's close
    loop.until(lambda: server.open_connections == 0, "the connection to close")


def test_bare_newlines_end_a_head_too(server: MetricsHttp, loop: Loop, clients: list[socket.socket]) -> None:
    s = connect(server, clients)
    s.sendall(b"GET /metrics HTTP/1.0\nHost: x\n\n")
    assert status_of(read_to_eof(loop, s)) == 200


# -- slow, stuck and many clients ----------------------------------------------------------------


def test_a_client_sending_one_byte_at_a_time_is_served(server: MetricsHttp, loop: Loop,
                                                       clients: list[socket.socket]) -> None:
    s = connect(server, clients)
    request = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slow\r\n\r\n"
    s.setblocking(False)
    for i, byte in enumerate(request[:-1]):
        s.send(bytes([byte]))
        turns = loop.turns
        loop.until(lambda: loop.turns > turns, "a turn")  # the server reads what is there
        with pytest.raises(BlockingIOError):
            s.recv(1)  # nothing answered before the head is whole
    s.send(request[-1:])
    response = read_to_eof(loop, s)
    assert status_of(response) == 200 and response.endswith(b"wiber_raft_term 3\n")


def test_a_client_that_never_reads_does_not_hold_the_loop(server: MetricsHttp, loop: Loop,
                                                          clients: list[socket.socket]) -> None:
    stuck = connect(server, clients, rcvbuf=4096)
    stuck.sendall(b"GET /big HTTP/1.1\r\n\r\n")
    loop.until(lambda: zmq.POLLOUT in loop.flags(), "the server to wait for POLLOUT")
    # The loop keeps turning: other clients are served while the stuck one holds its connection.
    # (Measured from here: building the response is the route's time, not the server's.)
    loop.longest_handle_s = 0.0
    for _ in range(3):
        assert loop.serve(InThread(lambda: get(server, "/metrics")))[0] == 200
    assert server.open_connections >= 1 and zmq.POLLOUT in loop.flags()
    print(f"longest handle() call with a {BIG >> 20} MiB response pending: "
          f"{loop.longest_handle_s * 1e3:.1f} ms over {loop.turns} turns")
    assert loop.longest_handle_s < 0.25  # loose: the send of one kernel buffer's worth, no more
    # No progress for the idle timeout: the connection is closed (handle checks it as well).
    loop.skew += IDLE_TIMEOUT_S + 0.1
    loop.turn(0)
    assert server.open_connections == 0
    assert loop.flags() == [zmq.POLLIN]  # the listener only


def test_a_slow_reader_gets_the_whole_large_response(server: MetricsHttp, loop: Loop) -> None:
    def fetch() -> int:
        with socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE_S) as s:
            s.sendall(b"GET /big HTTP/1.1\r\n\r\n")
            total = 0
            while data := s.recv(1 << 16):
                total += len(data)
            return total

    total = loop.serve(InThread(fetch))
    assert total > BIG and total - BIG < 200  # the head and the whole body


def test_connections_beyond_the_cap_get_503_and_a_freed_slot_serves_again(
        server: MetricsHttp, loop: Loop, clients: list[socket.socket]) -> None:
    held = [connect(server, clients) for _ in range(MAX_CONNECTIONS)]
    loop.until(lambda: server.open_connections == MAX_CONNECTIONS, "all held connections accepted")
    extra = [connect(server, clients) for _ in range(3)]
    extra[0].sendall(b"GET /metrics HTTP/1.1\r\n\r\n")  # one already asked: still a clean 503
    loop.until(lambda: server.refused == 3, "the three extra connections refused")
    for s in extra:
        response = read_to_eof(loop, s)
        assert status_of(response) == 503 and b"Connection: close" in response
    assert server.open_connections == MAX_CONNECTIONS
    held[0].close()  # a held client leaves: its slot serves the next one
    loop.until(lambda: server.open_connections == MAX_CONNECTIONS - 1, "the freed slot")
    assert loop.serve(InThread(lambda: get(server, "/metrics")))[0] == 200


def test_a_burst_of_concurrent_clients_is_answered(server: MetricsHttp, loop: Loop) -> None:
    burst = [InThread(lambda: get(server, "/metrics")) for _ in range(MAX_CONNECTIONS + 8)]
    loop.until(lambda: all(c.done() for c in burst), "every client")
    statuses = [c.result()[0] for c in burst]
    assert set(statuses) <= {200, 503} and statuses.count(200) >= 1
    loop.until(lambda: server.open_connections == 0, "every connection closed")


def test_one_handle_call_accepts_a_bounded_number(server: MetricsHttp, loop: Loop,
                                                  clients: list[socket.socket]) -> None:
    for _ in range(ACCEPTS_PER_CALL + 10):
        connect(server, clients)  # connect returns once the kernel has queued the connection
    loop.until(lambda: server.open_connections > 0, "the first accepts")
    assert server.open_connections == ACCEPTS_PER_CALL
    loop.until(lambda: server.open_connections == ACCEPTS_PER_CALL + 10, "the rest, next turns")


# -- limits and timeouts -------------------------------------------------------------------------


def request_of_size(size: int) -> bytes:
    start = b"GET /metrics HTTP/1.1\r\nX-Pad: "
    return start + b"p" * (size - len(start) - 4) + b"\r\n\r\n"


@pytest.mark.parametrize(("size", "status"),
                         [(MAX_HEAD_BYTES, 200), (MAX_HEAD_BYTES + 1, 431), (20_000, 431)])
def test_a_head_over_8_kib_gets_431(server: MetricsHttp, loop: Loop, clients: list[socket.socket],
                                    size: int, status: int) -> None:
    s = connect(server, clients)
    s.sendall(request_of_size(size))
    response = read_to_eof(loop, s)  # the whole answer arrives: the close lingers, no reset
    assert status_of(response) == status


def test_an_endless_head_gets_431_while_the_client_still_sends(server: MetricsHttp, loop: Loop) -> None:
    def flood() -> bytes:
        with socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE_S) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\n" + b"X-A: b\r\n" * 4000)  # 32 KB, no end
            return s.recv(4096)

    assert status_of(loop.serve(InThread(flood))) == 431
    loop.until(lambda: server.open_connections == 0, "the connection to close")


@pytest.mark.parametrize("sent", [b"", b"GET /metr"])
def test_idle_connections_close_after_5_s(server: MetricsHttp, loop: Loop, clients: list[socket.socket],
                                          sent: bytes) -> None:
    s = connect(server, clients)
    s.sendall(sent)
    loop.until(lambda: server.open_connections == 1, "the accept")
    loop.turn(0)
    deadline = server.next_deadline()
    assert deadline is not None and deadline > loop.now() + IDLE_TIMEOUT_S - 1
    server.expire(loop.now() + IDLE_TIMEOUT_S - 1)
    assert server.open_connections == 1
    server.expire(loop.now() + IDLE_TIMEOUT_S + 0.1)  # the loop's timer
    assert server.open_connections == 0 and server.next_deadline() is None
    assert read_to_eof(loop, s) == b""


def test_a_client_that_does_not_close_after_the_answer_is_closed_by_the_server(
        server: MetricsHttp, loop: Loop, clients: list[socket.socket]) -> None:
    s = connect(server, clients)
    s.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
    s.setblocking(False)

    def answered() -> bytes | None:
        try:
            return s.recv(65536)
        except BlockingIOError:
            return None

    loop.until(answered, "the answer")
    assert server.open_connections == 1  # lingering: waiting for the client's close
    loop.skew += IDLE_TIMEOUT_S
    loop.turn(0)
    assert server.open_connections == 0


# -- poller keys, binding, close -----------------------------------------------------------------


def test_pyzmq_reports_plain_sockets_by_fd() -> None:
    """What `handle` relies on: zmq.Poller.poll gives the fd of a plain socket registered as an
    object (pyzmq 27); `handle` also accepts the object, for a loop that maps fds back."""
    a, b = socket.socketpair()
    with a, b:
        poller = zmq.Poller()
        poller.register(a, zmq.POLLOUT)
        [(key, flags)] = poller.poll(1000)
        assert flags == zmq.POLLOUT
        assert key == a.fileno() or key is a  # pyzmq 27: the fd


def test_events_keyed_by_socket_objects_work_too(server: MetricsHttp) -> None:
    loop = Loop(server, translate_to_objects=True)
    assert loop.serve(InThread(lambda: get(server, "/metrics")))[0] == 200


def test_other_keys_in_the_events_are_ignored(server: MetricsHttp, loop: Loop) -> None:
    ctx = zmq.Context()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    try:
        pull.bind("inproc://metrics-test")
        push.connect("inproc://metrics-test")
        push.send(b"x")
        loop.poller.register(pull, zmq.POLLIN)  # always ready: its key is in every turn's events
        assert loop.serve(InThread(lambda: get(server, "/metrics")))[0] == 200
        loop.poller.unregister(pull)
    finally:
        pull.close(linger=0)
        push.close(linger=0)
        ctx.term()


def test_bind_errors_name_the_address_and_the_reason(server: MetricsHttp) -> None:
    in_use = rf"127\.0\.0\.1:{server.port}: .*[Aa]ddress already in use"
    with pytest.raises(MetricsBindError, match=in_use) as info:
        MetricsHttp("127.0.0.1", server.port, ROUTES)
    assert (info.value.host, info.value.port) == ("127.0.0.1", server.port)
    with pytest.raises(MetricsBindError, match=r"no\.such\.host\.invalid:9"):
        MetricsHttp("no.such.host.invalid", 9, ROUTES)
    with pytest.raises(MetricsBindError, match=r"192\.0\.2\.1:0: .*assign"):
        MetricsHttp("192.0.2.1", 0, ROUTES)  # TEST-NET-1: not an address of this machine


def test_close_closes_everything_and_leaves_the_poller_clean(server: MetricsHttp, loop: Loop,
                                                             clients: list[socket.socket]) -> None:
    reading = connect(server, clients)
    writing = connect(server, clients, rcvbuf=4096)
    writing.sendall(b"GET /big HTTP/1.1\r\n\r\n")
    loop.until(lambda: zmq.POLLOUT in loop.flags() and server.open_connections == 2, "both connections")
    port = server.port
    server.close()
    server.close()  # idempotent
    assert loop.poller.sockets == []
    assert server.open_connections == 0
    server.handle({}, loop.now())  # a late call is harmless
    server.expire(loop.now())
    reading.settimeout(DEADLINE_S)
    assert reading.recv(1) == b""
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S).close()
