"""The Publisher's background I/O thread: its loop, the pipe that wakes it, and threads waiting on it.

The thread alone touches the publisher's socket (no ZMQ socket is used by two threads). It turns
(`turn`: take what was handed over, send, read replies, resend, run callbacks) and then sleeps in
one poll on the socket and a pipe, for at most the time to the next deadline (`due`: a batch's
linger, a per-try timeout, a total deadline), as the zguide's loops do. Other threads wake it with a
byte on the pipe; `sleeping` says whether one is needed, so a publishing thread writes to the pipe
once per sleep, not per message. Threads that wait on it (`wait`: a result, a flush, room to hand a
message over) sleep on `changed`, which it notifies after each turn while any wait.

Nothing here knows batches or requests: the Publisher passes its own steps in.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from typing import Callable

import zmq

from wiber.errors import ClientError

__all__ = ["IO_IDLE_S", "IoThread", "WAIT_SLICE_S"]

log = logging.getLogger(__name__)

#: Longest the I/O thread sleeps with nothing due (it is woken for anything new).
IO_IDLE_S = 1.0
#: Longest a thread waiting on the I/O thread goes without looking again (a safety net: it is notified).
WAIT_SLICE_S = 1.0


class IoThread:
    """A publisher's I/O thread (see the module docstring), started by `start`.

    Args:
        name: the thread's name.
        turn: one round of I/O, waiting up to its argument (seconds) for replies.
        due: seconds until something is due (may be negative), or None with nothing pending.
        busy: whether there is more to send at once (then it does not sleep).
        socket: the socket to poll for replies, or None with none open.
        finish: called on the thread when it ends, with the exception that ended it, or None after `stop`.
    """

    def __init__(self, name: str, turn: Callable[[float], None], due: Callable[[], float | None],
                 busy: Callable[[], bool], socket: Callable[[], zmq.Socket[bytes] | None],
                 finish: Callable[[BaseException | None], None]) -> None:
        self._turn, self._due, self._busy, self._socket, self._finish = turn, due, busy, socket, finish
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._poller = zmq.Poller()
        self._poller.register(self._wake_r, zmq.POLLIN)
        self._polled: zmq.Socket[bytes] | None = None  # the socket `_poller` holds
        self.changed = threading.Condition()  # notified after each turn while a thread waits
        self.waiting = 0  # threads waiting on this one (changed under `changed`)
        self.sleeping = False  # the thread is (about to be) waiting with nothing to do: wake it
        self.stopping = False
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._main, name=name, daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self.thread.start()

    @property
    def ident(self) -> int | None:
        """The thread's identifier (None before `start`)."""
        return self.thread.ident

    def is_alive(self) -> bool:
        """Returns: whether the thread still runs."""
        return self.thread.is_alive()

    def wake(self) -> None:
        """Wake the thread from its poll (a byte on its pipe; a full pipe wakes it too)."""
        try:
            os.write(self._wake_w, b"\0")
        except OSError:  # full (it will wake), or closed (it is gone)
            pass

    def wait(self, done: Callable[[], bool], deadline: float | None, what: str) -> None:
        """Wait (on another thread) until `done()`, which the thread's turns make true.

        Raises:
            TimeoutError: `deadline` passed first (saying `what`); ClientError: the thread is gone.
        """
        with self.changed:
            self.waiting += 1
            try:
                while not done():
                    if not self.thread.is_alive():
                        raise ClientError(f"the publisher was closed first: {what}")
                    if deadline is None:
                        self.changed.wait(WAIT_SLICE_S)
                        continue
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError(what)
                    self.changed.wait(min(remaining, WAIT_SLICE_S))
            finally:
                self.waiting -= 1

    def stop(self) -> None:
        """Have the thread end after its next turn, wait for it, and close the pipe."""
        self.stopping = True
        self.wake()
        self.thread.join()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _main(self) -> None:
        """Turn until `stop`; then `finish` (also when a turn raised: nothing may wait on this forever)."""
        try:
            while not self.stopping:
                self._turn(0.0)
                if self.waiting:
                    with self.changed:
                        self.changed.notify_all()
                self._sleep()
        except BaseException as exc:  # a bug, or a socket error
            log.exception("publisher: the I/O thread failed")
            self.failure = exc
        finally:
            try:
                self._finish(self.failure)
            finally:
                with self.changed:
                    self.changed.notify_all()

    def _sleep(self) -> None:
        """Wait for a reply, something handed over, or the next deadline."""
        # Announced before looking: whatever is handed over after the look wakes the poll.
        self.sleeping = True
        if self._busy():
            self.sleeping = False
            return  # more to send now
        due = self._due()
        timeout = IO_IDLE_S if due is None else min(IO_IDLE_S, due)
        sock = self._socket()
        if sock is not self._polled:
            self._poller = zmq.Poller()
            self._poller.register(self._wake_r, zmq.POLLIN)
            if sock is not None:
                self._poller.register(sock, zmq.POLLIN)
            self._polled = sock
        if self.stopping:
            timeout = 0.0
        try:
            events = self._poller.poll(math.ceil(max(0.0, timeout) * 1000))
        finally:
            self.sleeping = False
        for fd, _ in events:
            if fd == self._wake_r:
                try:
                    while os.read(self._wake_r, 4096):
                        pass
                except BlockingIOError:
                    pass
