"""The node's answers to client requests (docs/design.md section 3): validation, dispatch, and each op.

With security (section 10) every request carries the name its connection authenticated with: the
op and topic are checked against that client's rights (`wiber.node.auth.Rights`) before dispatch,
answered FORBIDDEN when outside them, and its dedup session is keyed by ``name/client_id``, so no
client can touch another's session.

A handler answers at once (a reply map) or parks the client and answers later (None): writes wait
for their entry to commit, linearizable reads for their ReadIndex round (`wiber.node.waiting`).
Every error is a `WireError` answered to that client; nothing a client sends ends the loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import msgpack

from wiber import protocol
from wiber.broker import pub_op_from_request
from wiber.broker.consumers import ConsumerResult, FetchOp, FetchResult
from wiber.errors import BadRequest, Forbidden, NotLeader, StorageError, Unavailable, UnknownGroup, WireError
from wiber.node.backlog import ReplyBacklog
from wiber.node.members import MembershipOps
from wiber.node.metrics.families import RESULT_OK
from wiber.node.consumers import consumer_op_from_request, group_pattern, result_fields
from wiber.node.transport import ClientRequest
from wiber.node.waiting import Waiter
from wiber.raft import Role
from wiber.topics import TopicPattern, is_pattern

if TYPE_CHECKING:
    from wiber.node.loop import Node

__all__ = ["ClientHandlers", "ROLE_NAMES"]

#: A handler answers at once (a reply map) or parks the client and answers later (None).
Handler = Callable[[dict[str, Any], ClientRequest, Any], "dict[str, Any] | None"]

#: Ops whose replies may be large: counted in the reply backlog until they have left.
BACKLOG_OPS = frozenset({"HISTORY", "FETCH"})

def _op_of(body: bytes) -> str:
    """Returns: the op a request that failed validation names, or "invalid" (for the request counter)."""
    try:
        msg = msgpack.unpackb(body, raw=False)
    except Exception:  # any garbage: it has no op
        return "invalid"
    op = msg.get("op") if isinstance(msg, dict) else None
    return op if isinstance(op, str) else "invalid"


ROLE_NAMES = {
    Role.FOLLOWER: "follower",
    Role.PRE_CANDIDATE: "pre_candidate",
    Role.CANDIDATE: "candidate",
    Role.LEADER: "leader",
}


class ClientHandlers:
    """The client ops of one node, answered from its Raft core, broker and clocks."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.backlog = ReplyBacklog(node.config.cluster.max_reply_bytes)
        self.members = MembershipOps(self)
        self.handlers: dict[str, Handler] = {
            "PING": self.on_ping,
            "STATUS": self.on_status,
            "PUB": self.on_write,
            "PUB_BATCH": self.on_write,
            "HISTORY": self.on_history,
            "SUB": self.on_sub,
            "TOPICS": self.on_topics,
            "GROUP_CREATE": self.on_consumer_write,
            "GROUP_DELETE": self.on_consumer_write,
            "FETCH": self.on_fetch,
            "ACK": self.on_consumer_write,
            "NAK": self.on_consumer_write,
            "GROUPS": self.on_groups,
            "MEMBERS": self.members.on_members,
            "MEMBER_ADD": self.members.on_change,
            "MEMBER_REMOVE": self.members.on_change,
        }

    def on_client_request(self, request: ClientRequest) -> None:
        """Validate and dispatch one client request; every error becomes a wire error reply."""
        req_id: Any = None
        backlog: ReplyBacklog | None = None
        op = "invalid"  # the label of a request that does not parse (no op of the contract)
        try:
            req_id, msg = protocol.parse_request(request.body, self.node.limits)
            op = msg["op"]
            if self.node.security is not None:
                self.authorize(msg, request)
            fields = self.handlers[op](msg, request, req_id)
            if fields is None:
                return  # parked: answered (and counted) when its entry commits or its read is confirmed
            reply = protocol.ok_reply(fields, req_id)
            if op in BACKLOG_OPS:
                backlog = self.backlog  # up to max_reply_bytes: counted until it has left
            self.count(op, RESULT_OK)
        except WireError as err:
            req_id = getattr(err, "request_id", req_id)
            reply = protocol.error_reply(err, req_id)
            self.count(op if op != "invalid" else _op_of(request.body), err.code)
        self.node.transport.reply(request.envelope, reply, backlog)

    def count(self, op: str, result: str) -> None:
        """Count one answered request in wiber_requests_total{op,result} (ops outside the contract as
        "invalid", so a client cannot grow the label set)."""
        self.node.metrics.requests.add((op if op in self.handlers else "invalid", result))

    def authorize(self, msg: dict[str, Any], request: ClientRequest) -> None:
        """Check a secured request against its client's rights; scope its dedup session to the client.

        Raises: Forbidden (counted), or BadRequest when the scoped client_id would be too long.
        """
        security = self.node.security
        assert security is not None
        rights = security.rights.get(request.user or "")
        op = msg["op"]
        if rights is None:
            problem: str | None = f"connection authenticated as {request.user!r}, not a client of security.clients"
        elif op in protocol.CONSUMER_OPS and not rights.admin:  # reading a group is reading all of its pattern
            self.writable()  # NOT_LEADER first: a follower (or a new leader) may not know the group yet
            problem = rights.group_refusal(group_pattern(self.node.broker, msg))
        else:
            problem = rights.refusal(op, msg.get("topic"))
        if problem is not None:
            security.forbidden += 1
            raise Forbidden(problem)
        client_id = msg.get("client_id")
        if client_id is not None:
            scoped = f"{request.user}/{client_id}"
            if len(scoped) > protocol.CLIENT_ID_MAX_CHARS:
                room = protocol.CLIENT_ID_MAX_CHARS - len(scoped) + len(client_id)
                raise BadRequest(f"client_id is {len(client_id)} characters; for client {request.user} it may "
                                 f"have at most {room} (sessions are kept as <name>/<client_id>)")
            msg["client_id"] = scoped

    def storage_error(self) -> StorageError:
        """Returns: the STORAGE error of a node that cannot write its log (it stays out of Raft)."""
        return StorageError(f"node {self.node.id} cannot write its log: {self.node._storage_failure}; "
                            f"try another node")

    def not_leader(self) -> NotLeader:
        leader = self.node.raft.leader_id
        if leader is None or leader == self.node.id:
            return NotLeader(f"node {self.node.id} is not the leader and no leader is known yet; retry shortly")
        peer = self.node.node_config(leader)
        if peer is None:  # a member the config file does not list (docs/operations.md, "Membership")
            return NotLeader(f"node {self.node.id} is not the leader; the leader is {leader}, whose address is "
                             f"not in {self.node.config.path}", leader, None)
        addr = peer.client_addr
        return NotLeader(f"node {self.node.id} is not the leader; the leader is {leader} at {addr}", leader, addr)

    def on_write(self, msg: dict[str, Any], request: ClientRequest, req_id: Any) -> None:
        """PUB and PUB_BATCH: parked until the turn's entry commits (leader only)."""
        self.writable()
        waiter: Waiter[Any] = Waiter(request.envelope, req_id, self.node._turn_deadline, pub_op_from_request(msg),
                                     msg["op"])
        sent_at = msg.get("ts")
        if self.node._reorder is not None and sent_at is not None:
            if self.node._reorder.add(waiter, float(sent_at), msg.get("client_id") or "", msg.get("seq") or 0,
                                 self.node.synced.now()):
                return None  # held until its window passes (docs/design.md section 5)
            waiter.request = waiter.request._replace(late=True)
        self.node._turn_writes.append(waiter)
        return None

    def writable(self) -> None:
        """Raises: StorageError or NotLeader unless this node may propose writes now."""
        if self.node._storage_failure is not None:
            raise self.storage_error()
        if self.node.raft.role is not Role.LEADER or self.node._stopping:
            raise self.not_leader()

    def on_consumer_write(self, msg: dict[str, Any], request: ClientRequest, req_id: Any) -> None:
        """GROUP_CREATE, GROUP_DELETE, ACK, NAK: parked until the turn's entry commits (leader only)."""
        self.writable()
        op = consumer_op_from_request(msg)
        self.node._turn_writes.append(Waiter(request.envelope, req_id, self.node._turn_deadline, op, msg["op"]))
        return None

    def on_fetch(self, msg: dict[str, Any], request: ClientRequest, req_id: Any) -> dict[str, Any] | None:
        """FETCH: proposed when its group may have something to deliver; otherwise answered empty at once,
        or parked for up to ``wait_ms`` (within the request timeout) until it has (`wiber.node.consumers`).

        Refused UNAVAILABLE while earlier replies are not yet read, as HISTORY is (before anything is
        delivered: a refused FETCH leaves the group as it was)."""
        self.writable()
        unread = self.backlog.refusal(request.envelope[0], self.node._turn_deadline)
        if unread is not None:
            raise Unavailable(f"node {self.node.id}: {unread}")
        op = consumer_op_from_request(msg)
        assert isinstance(op, FetchOp)
        waiter: Waiter[FetchOp] = Waiter(request.envelope, req_id, self.node._turn_deadline, op, "FETCH")
        work = self.node.broker.groups.has_work(op.group, self.node.synced.now())
        if work is None:
            raise UnknownGroup(f"no consumer group {op.group!r}: create it first")
        if work:
            self.node._turn_writes.append(waiter)
            return None
        if msg["wait_ms"] == 0:
            return {"group": op.group, "messages": []}
        now = self.node.clock.monotonic()
        self.node.fetches.park(waiter, min(now + msg["wait_ms"] / 1000, self.node._turn_deadline))
        return None

    def consumer_reply(self, waiter: Waiter[Any], result: ConsumerResult) -> None:
        """Answer a consumer op from its result (a FETCH reply counts in the reply backlog)."""
        if result.error is not None:
            self.count(waiter.op, result.error.code)
            self.node.transport.reply(waiter.envelope, protocol.error_reply(result.error, waiter.req_id))
            return
        self.count(waiter.op, RESULT_OK)
        fields = result_fields(self.node.broker, result, self.node.config.cluster.max_reply_bytes)
        backlog = self.backlog if type(result) is FetchResult else None
        self.node.transport.reply(waiter.envelope, protocol.ok_reply(fields, waiter.req_id), backlog)

    def on_groups(self, msg: dict[str, Any], request: ClientRequest, req_id: Any) -> dict[str, Any]:
        """GROUPS: every consumer group with its pattern, settings, pending count and lag, from this node's
        applied state (with security: the groups whose pattern the client may read)."""
        groups = self.node.broker.groups
        security = self.node.security
        rights = None
        if security is not None and request.user is not None:
            rights = security.rights.get(request.user)
        listed: dict[str, dict[str, Any]] = {}
        for name in sorted(groups.groups):
            if rights is not None and rights.group_refusal(groups.groups[name].pattern.text) is not None:
                continue
            listed[name] = groups.describe(name)
        return {"groups": listed}

    def on_history(self, msg: dict[str, Any], request: ClientRequest, req_id: Any) -> dict[str, Any] | None:
        """HISTORY: `local` from this node's applied state (never uncommitted), `linearizable` by ReadIndex.

        Refused UNAVAILABLE while earlier replies are not yet read (`wiber.node.backlog`)."""
        unread = self.backlog.refusal(request.envelope[0], self.node._turn_deadline)
        if unread is not None:
            raise Unavailable(f"node {self.node.id}: {unread}")
        if msg["consistency"] == "linearizable":
            if self.node._storage_failure is not None:  # out of Raft: it cannot confirm its leadership
                raise self.storage_error()
            if self.node.raft.role is not Role.LEADER:
                raise self.not_leader()
            self.node._turn_reads.append(Waiter(request.envelope, req_id, self.node._turn_deadline, msg, "HISTORY"))
            return None
        return self.history(msg)

    def history(self, msg: dict[str, Any]) -> dict[str, Any]:
        reply = self.node.broker.history(msg["topic"], msg.get("from_offset") if "last" not in msg else None,
                                    msg.get("last"), msg["limit"], self.node.config.cluster.max_reply_bytes)
        # What this page reflects: the applied state. Raft's commit index may be ahead within a turn (the
        # peers' frames are stepped before the clients'), and a subscriber counts all up to it as read.
        reply["commit_index"] = self.node.applied_index
        return reply

    def answer_history(self, waiter: Waiter[dict[str, Any]]) -> None:
        """Answer a linearizable HISTORY once its read is confirmed. The backlog is checked again:
        reads parked in one turn all passed it before any of them was answered."""
        unread = self.backlog.refusal(waiter.envelope[0], self.node._turn_deadline)
        try:
            if unread is not None:
                raise Unavailable(f"node {self.node.id}: {unread}")
            reply = protocol.ok_reply(self.history(waiter.request), waiter.req_id)
            self.count(waiter.op, RESULT_OK)
        except (StorageError, Unavailable) as err:
            reply = protocol.error_reply(err, waiter.req_id)
            self.count(waiter.op, err.code)
        self.node.transport.reply(waiter.envelope, reply, self.backlog)

    def on_sub(self, msg: dict[str, Any], request: ClientRequest, req_id: Any) -> dict[str, Any]:
        topic = msg["topic"]
        return {"topic": topic, "pub_addr": self.node.me.pub_addr, "next_offset": self.node.broker.end_offset(topic)}

    def on_topics(self, msg: dict[str, Any], request: ClientRequest, req_id: Any) -> dict[str, Any]:
        """TOPICS: every topic with its end offset, or those `pattern` matches (a pattern subscription asks)."""
        topics = self.node.broker.topics()
        if "pattern" in msg:
            text = msg["pattern"]
            if is_pattern(text):  # validated as a pattern by the protocol
                pattern = TopicPattern.parse(text)
                prefix = pattern.literal_prefix  # a cheap first cut: 100,000 topics are a normal load
                topics = {topic: end for topic, end in topics.items()
                          if topic.startswith(prefix) and pattern.matches(topic)}
            else:  # a plain name (an old one may hold an empty token): only itself
                topics = {text: topics[text]} if text in topics else {}
        security = self.node.security
        if security is not None and request.user is not None and request.user in security.rights:
            rights = security.rights[request.user]
            if not rights.admin:
                topics = {topic: end for topic, end in topics.items() if rights.may_see(topic)}
        return {"topics": topics}

    def on_ping(self, msg: dict[str, Any], request: ClientRequest, req_id: Any) -> dict[str, Any]:
        return {
            "op": "PONG",
            "node": self.node.id,
            "role": ROLE_NAMES[self.node.raft.role],
            "term": self.node.raft.term,
            "leader": self.node.raft.leader_id,
            "time": self.node.synced.now(),
            "max_message_bytes": self.node.config.cluster.max_message_bytes,
        }

    def on_status(self, msg: dict[str, Any], request: ClientRequest, req_id: Any) -> dict[str, Any]:
        now = self.node.clock.monotonic()
        match = self.node.raft.progress() if self.node.raft.role is Role.LEADER else {}
        peers: dict[str, dict[str, Any]] = {}
        for peer, seen in self.node._peer_contact.items():
            peers[peer] = {
                "match_index": match.get(peer, 0),
                "last_contact_ms": None if seen is None else int((now - seen) * 1000),
            }
        return {
            "node": self.node.id,
            "role": ROLE_NAMES[self.node.raft.role],
            "term": self.node.raft.term,
            "leader": self.node.raft.leader_id,
            "commit_index": self.node.raft.commit_index,
            "applied_index": self.node.applied_index,
            "last_index": self.node.raft.last_index,
            "snapshot_index": self.node.storage.last_snapshot_index,
            "checkpoint": self.node.checkpoints.status(),
            "storage": {"ok": self.node._storage_failure is None, "error": self.node._storage_failure},
            "peers": peers,
            "membership": self.members.describe(),
            "clock": {
                "offset_ms": round(self.node.synced.estimator.offset * 1000, 3),
                "error_ms": round(self.node.synced.estimator.error * 1000, 3),
                "samples": self.node.synced.estimator.samples,
            },
            "reorder": {
                "window_ms": self.node.config.cluster.reorder_window_ms,
                "held": len(self.node._reorder) if self.node._reorder is not None else 0,
                "late": self.node.broker.late_count,
            },
            "security": {"enabled": False} if self.node.security is None else self.node.security.status(),
            "consumers": {"groups": len(self.node.broker.groups), "pending": self.node.broker.groups.total_pending,
                          "waiting_fetches": len(self.node.fetches)},
            "transport": {**self.node.transport.stats.status(), **self.backlog.status()},
            "connections": {"open": self.node.transport.connections.open,
                            "accepted": self.node.transport.connections.accepted_total,
                            "refused": self.node.transport.connections.refused_total},
            "messages_stored": int(self.node.metrics.messages_stored.total()),
            "requests": int(self.node.metrics.requests.total()),
            "uptime_s": round(now - self.node._started, 3),
        }

    def pub_heartbeat(self) -> dict[str, Any]:
        return {"node": self.node.id, "term": self.node.raft.term, "commit_index": self.node.raft.commit_index,
                "time": self.node.synced.now()}
