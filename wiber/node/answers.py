"""The answers to clients parked on the leader: from the entry that carried their writes once it
is applied, or the error that ended their wait (leadership lost, the request timeout, storage).

Every answer is counted in `wiber_requests_total{op,result}` as it leaves, so a parked request is
counted once, with how it ended.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from wiber import protocol
from wiber.broker import AppliedEntry
from wiber.errors import Unavailable, UnknownGroup, WireError
from wiber.node.metrics.families import RESULT_OK
from wiber.node.waiting import Waiter

if TYPE_CHECKING:
    from wiber.node.loop import Node


class Answers:
    """Replies to waiting writers, FETCHes and reads of one node (its transport, packer and counters)."""

    def __init__(self, node: Node, pack: Callable[[Any], bytes]) -> None:
        self.node = node
        self._pack = pack

    def entry_applied(self, waiters: list[Waiter[Any]], ours: bool, applied: AppliedEntry) -> None:
        """Answer the writers parked under an applied entry; `ours`: it is the entry they were proposed in."""
        results: list[Any] = applied.results if applied.consumer_results else applied.pub_results
        if not ours or len(results) != len(waiters):
            self.fail(waiters, Unavailable(
                f"node {self.node.id} lost leadership before the write committed; its outcome is unknown, "
                f"retry with the same client_id and seq"))
            return
        if applied.consumer_results:
            self._mixed(waiters, applied)
            return
        reply, pack, pub_reply = self.node.transport.reply, self._pack, protocol.pub_reply
        count = self.node.metrics.requests.add
        for waiter, result in zip(waiters, results):
            if result.answer is not None:
                reply(waiter.envelope, pack(pub_reply(result.answer, result.duplicate, waiter.req_id)))
                count((waiter.op, RESULT_OK))
            else:
                assert result.error is not None
                reply(waiter.envelope, protocol.error_reply(result.error, waiter.req_id))
                count((waiter.op, result.error.code))

    def _mixed(self, waiters: list[Waiter[Any]], applied: AppliedEntry) -> None:
        """Answer the writers of an entry holding consumer ops as well as PUBs, in op order."""
        clients, reply = self.node.clients, self.node.transport.reply
        consumer_results = dict(applied.consumer_results)
        pubs = iter(applied.pub_results)
        for position, waiter in enumerate(waiters):
            consumer_result = consumer_results.get(position)
            if consumer_result is not None:
                clients.consumer_reply(waiter, consumer_result)
                continue
            result = next(pubs)
            if result.answer is not None:
                reply(waiter.envelope, self._pack(protocol.pub_reply(result.answer, result.duplicate, waiter.req_id)))
                clients.count(waiter.op, RESULT_OK)
            else:
                assert result.error is not None
                reply(waiter.envelope, protocol.error_reply(result.error, waiter.req_id))
                clients.count(waiter.op, result.error.code)

    def fetches_done(self, done: list[Waiter[Any]]) -> None:
        """Answer FETCHes whose wait is over with nothing (NO_GROUP when their group went meanwhile)."""
        groups = self.node.broker.groups.groups
        for waiter in done:
            name = waiter.request.group
            if name in groups:
                reply = protocol.ok_reply({"group": name, "messages": []}, waiter.req_id)
                self.node.clients.count(waiter.op, RESULT_OK)
            else:
                err = UnknownGroup(f"no consumer group {name!r}: create it first")
                reply = protocol.error_reply(err, waiter.req_id)
                self.node.clients.count(waiter.op, err.code)
            self.node.transport.reply(waiter.envelope, reply)

    def fail(self, waiters: list[Waiter[Any]], err: WireError) -> None:
        """Answer every one of `waiters` with `err`."""
        reply, count = self.node.transport.reply, self.node.clients.count
        for waiter in waiters:
            reply(waiter.envelope, protocol.error_reply(err, waiter.req_id))
            count(waiter.op, err.code)
