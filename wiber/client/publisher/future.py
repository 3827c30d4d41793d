"""`PublishFuture`: the acknowledgement of one published message, once its request is answered.

A request's futures share its reply and each knows its position in the batch, so the Ack is built
only when asked for (100,000 futures resolve without 100,000 Ack objects). A future is resolved on
the thread that does the publisher's I/O; `result` waits for that thread (or drives the I/O itself
when there is none, or when called from a callback). Callbacks are queued on the publisher when a
future resolves and run once that turn's I/O is done (see `wiber.client.publisher`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable

from wiber.client.values import Ack

if TYPE_CHECKING:
    from wiber.client.publisher.publisher import Publisher

__all__ = ["Callback", "PublishFuture"]

Callback = Callable[["PublishFuture"], None]


class PublishFuture:
    """The acknowledgement of one message, once its request is answered.

    The Ack is built only when asked for: a request's futures share its reply and each knows its
    position in the batch (100,000 futures resolve without 100,000 Ack objects).
    """

    __slots__ = ("_publisher", "_first", "_position", "_error", "_callback")

    def __init__(self, publisher: Publisher, callback: Callback | None) -> None:
        self._publisher = publisher
        self._first: dict[str, Any] | None = None  # the request's ok reply
        self._position = 0
        self._error: BaseException | None = None
        self._callback = callback

    def done(self) -> bool:
        """Returns: whether the message was acknowledged or failed."""
        return self._first is not None or self._error is not None

    def _resolve(self, first: dict[str, Any] | None, position: int, error: BaseException | None) -> None:
        if self._first is not None or self._error is not None:
            return
        # `done()` is read from other threads: the field it tests is set last.
        self._position = position
        if error is not None:
            self._error = error
        else:
            self._first = first
        if self._callback is not None:
            self._publisher._callbacks_due.append(self)  # run once the I/O is done: see the package docstring

    def result(self, timeout: float | None = None) -> Ack:
        """Wait for the acknowledgement (driving the publisher's I/O when there is no I/O thread, or
        from inside a callback). Returns: this message's Ack.

        Raises:
            the WireError the cluster answered, or ClientError when it did not answer in time (or
            the publisher was closed first); TimeoutError: `timeout` passed first.
        """
        if not self.done():
            self._publisher._wait(self.done, None if timeout is None else time.monotonic() + timeout,
                                  "the acknowledgement did not arrive in time")
        if self._error is not None:
            raise self._error
        first = self._first
        assert first is not None
        k = self._position
        return Ack(first["topic"], first["offset"] + k, first["index"], first["lamport"] + k, first["ts"],
                   bool(first["duplicate"]), 1)

    def exception(self) -> BaseException | None:
        """Returns: the error this message failed with, or None (acknowledged, or not yet done)."""
        return self._error
