"""The client port's connections: how many are open, and a clear word when one cannot be accepted.

Every client holds one TCP connection to the node it talks to (the leader, mostly), and each is a
file descriptor there. libzmq accepts them on its own thread; the node learns of them from the
socket monitor (ACCEPTED, DISCONNECTED, ACCEPT_FAILED) it polls with everything else. A failed
accept (out of descriptors: EMFILE, ENFILE; or out of memory) leaves the client waiting in the
listen queue, so the node says why, once per `REFUSED_LOG_EVERY_S`, with what to change.

The node also raises its soft open-files limit to the hard one at start (`raise_open_files_limit`):
a soft limit of 1,024 was the ceiling at ~1,000 clients while the hard limit allowed far more.
"""

from __future__ import annotations

import errno
import logging
import math
import os
from typing import Callable

import zmq
from zmq.utils.monitor import parse_monitor_message

log = logging.getLogger(__name__)

#: A refused connection is logged at most once per this many seconds (libzmq retries it at once).
REFUSED_LOG_EVERY_S = 10.0
#: Monitor events drained per loop turn (a failing accept repeats as fast as libzmq's thread turns).
DRAIN_LIMIT = 10_000
_EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_ACCEPT_FAILED


def raise_open_files_limit() -> tuple[int, int]:
    """Raise this process's soft limit of open files to its hard limit (no-op where there is none).

    Returns: (the soft limit before, the soft limit now).
    """
    try:
        import resource
    except ImportError:  # not a POSIX system
        return (0, 0)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return (soft, soft)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning("could not raise the open-files limit from %d to %d: %s", soft, target, exc)
        return (soft, soft)
    return (soft, target)


def open_files_limit() -> int:
    """Returns: the soft limit of open files now (0 when unknown)."""
    try:
        import resource
    except ImportError:
        return 0
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def open_files() -> int:
    """Returns: how many file descriptors this process has open (-1 where /proc does not say)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return -1


class ClientConnections:
    """Counts the client port's connections from libzmq's monitor socket, and logs refused ones."""

    def __init__(self, client: zmq.Socket[bytes], node_id: str, monotonic: Callable[[], float]) -> None:
        """Start monitoring `client` (the node's client ROUTER); `monitor` is then polled by the node."""
        self.monitor: zmq.Socket[bytes] = client.get_monitor_socket(_EVENTS)
        self._id = node_id
        self._monotonic = monotonic
        self.open = 0
        self.accepted_total = 0
        self.refused_total = 0
        self._refused_logged = -math.inf
        self._refused_since_log = 0

    def drain(self) -> None:
        """Take every queued monitor event into the counts (bounded per turn)."""
        for _ in range(DRAIN_LIMIT):
            try:
                frames = self.monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            event = parse_monitor_message(frames)
            kind = event["event"]
            if kind == zmq.EVENT_ACCEPTED:
                self.open += 1
                self.accepted_total += 1
            elif kind == zmq.EVENT_DISCONNECTED:
                self.open = max(0, self.open - 1)
            elif kind == zmq.EVENT_ACCEPT_FAILED:
                self._refused(int(event["value"]))

    def _refused(self, err: int) -> None:
        """Count a connection libzmq could not accept; say why at most once per REFUSED_LOG_EVERY_S."""
        self.refused_total += 1
        self._refused_since_log += 1
        now = self._monotonic()
        if now - self._refused_logged < REFUSED_LOG_EVERY_S:
            return
        self._refused_logged = now
        name = errno.errorcode.get(err, str(err))
        if err in (errno.EMFILE, errno.ENFILE):
            advice = (f"it holds {open_files()} open files of a limit of {open_files_limit()}; raise the hard "
                      f"limit (ulimit -Hn, or LimitNOFILE= in a systemd unit), or spread clients over more nodes")
        else:
            advice = "the client waits in the listen queue and is accepted when the cause passes"
        log.warning("node %s cannot accept a client connection (%s, %s; %d refused since the last report, "
                    "%d open): %s", self._id, name, os.strerror(err), self._refused_since_log, self.open, advice)
        self._refused_since_log = 0

    def close(self) -> None:
        """Close the monitor socket (the client socket's owner stops the monitor by closing it)."""
        self.monitor.close(linger=0)
