"""The metric families one node exposes (docs/operations.md, "Metrics"), and how each is fed.

Two kinds. Counters and histograms of events are fed by the loop as they happen, each a dict
update or a bisect (~0.25 us): requests by op and result, messages stored, fsync and loop-turn
times, checkpoints. Everything that is state (term, commit index, role, topic ends, group lag,
connections, clock offset, drop counters) is read from the node when scraped, so it costs
nothing between scrapes; `_sync_counters` turns the node's own running counts into counters then.

Names follow Prometheus's conventions: base units (seconds, bytes), `_total` for counters, labels
for what varies (`op`, `result`, `topic`, `group`, `domain`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable, Iterable

import zmq

from wiber.config import NodeConfig
from wiber.errors import NodeStartError
from wiber.node.metrics.http import MetricsBindError, MetricsHttp

from wiber.node.metrics.registry import (
    CONTENT_TYPE,
    LATENCY_BUCKETS,
    SNAPSHOT_BUCKETS,
    Counter,
    Gauge,
    Histogram,
    Registry,
)
from wiber.raft import Role

if TYPE_CHECKING:
    from wiber.node.loop import Node

log = logging.getLogger("wiber.node.loop")

#: Label values of `wiber_requests_total{result}` besides the wire error codes.
RESULT_OK = "ok"
#: Label values of `wiber_auth_rejected_total{domain}`: the CURVE handshakes of each port, and rights.
AUTH_DOMAINS = ("client", "raft", "pub", "forbidden")


class NodeMetrics:
    """Every family of one node, registered in one registry; `render` answers a scrape."""

    def __init__(self, node: Node) -> None:
        self.node = node
        r = self.registry = Registry()
        # -- fed by the loop as things happen
        self.requests = r.register(Counter(
            "wiber_requests_total", "Client requests answered, by op and result (ok or the wire error code).",
            ("op", "result")))
        self.messages_stored = r.register(Counter(
            "wiber_messages_stored_total", "Messages this node applied to its topics (each node counts its own copy)."))
        self.fsync_seconds = r.register(Histogram(
            "wiber_fsync_seconds", "Time of one Raft log write and fsync on the loop.", LATENCY_BUCKETS))
        self.loop_turn_seconds = r.register(Histogram(
            "wiber_loop_turn_seconds", "Work of one loop turn, from the poll's return to the next poll.",
            LATENCY_BUCKETS))
        self.snapshot_seconds = r.register(Histogram(
            "wiber_snapshot_seconds", "Time of one checkpoint, from its start on the loop to its take-in.",
            SNAPSHOT_BUCKETS))
        # -- the node's own running counts, turned into counters at scrape (_sync_counters)
        self.auth_rejected = r.register(Counter(
            "wiber_auth_rejected_total", "Connections or requests refused by security, by where: the CURVE "
            "handshake of a port (client, raft, pub) or a client's rights (forbidden).", ("domain",)))
        for domain in AUTH_DOMAINS:  # present at 0 from the start: an alert's rate() needs the series
            self.auth_rejected.labels(domain)
        self.dropped = r.register(Counter(
            "wiber_transport_dropped_total", "Frames the transport dropped rather than block the loop, by kind.",
            ("kind",)))
        self.connections_accepted = r.register(Counter(
            "wiber_client_connections_accepted_total", "Client connections accepted on the client port."))
        self.connections_refused = r.register(Counter(
            "wiber_client_connections_refused_total",
            "Client connections the node could not accept (out of file descriptors, most often)."))
        self.waits_taken_off = r.register(Counter(
            "wiber_raft_clock_paused_seconds_total", "Time taken off Raft's timers while the loop waited on its "
            "disk or for a CPU, by cause: high values mean an overloaded machine.", ("cause",)))
        self._synced: dict[tuple[str, tuple[str, ...]], float] = {}
        # -- state, read at scrape
        self._gauge("wiber_raft_term", "The node's current Raft term.", lambda: node.raft.term)
        self._gauge("wiber_raft_commit_index", "The highest log index known committed.", lambda: node.raft.commit_index)
        self._gauge("wiber_raft_applied_index", "The highest log index applied to the topics.", lambda: node.applied_index)
        self._gauge("wiber_raft_last_index", "The highest index in the node's log.", lambda: node.raft.last_index)
        self._gauge("wiber_raft_leader", "1 on the leader, else 0: summed over the cluster it must be 1.",
                    lambda: 1.0 if node.raft.role is Role.LEADER else 0.0)
        self._gauge("wiber_raft_has_leader", "1 when the node knows a leader, else 0.",
                    lambda: 0.0 if node.raft.leader_id is None else 1.0)
        self._gauge("wiber_storage_ok", "1 while the node can write its log, 0 after a storage failure (it has "
                    "stopped taking part in Raft: see its log).", lambda: 1.0 if node.storage_failure is None else 0.0)
        self._gauge("wiber_clock_offset_seconds", "Estimated offset of this node's wall clock to the leader's "
                    "(0 on the leader).", lambda: node.synced.estimator.offset)
        self._gauge("wiber_clock_error_seconds", "Bound on the error of wiber_clock_offset_seconds.",
                    lambda: node.synced.estimator.error)
        self._gauge("wiber_client_connections", "Client connections open on the client port.",
                    lambda: node.transport.connections.open)
        self._gauge("wiber_topics", "Topics on this node.", lambda: len(node.broker.topic_states()))
        self._gauge("wiber_sessions", "Publisher dedup sessions held.", lambda: node.broker.session_count)
        self._gauge("wiber_pending_writes", "Client writes waiting for their entry to commit.",
                    lambda: node.pending_writes)
        self._gauge("wiber_checkpoint_index", "Log index of the last checkpoint taken.", lambda: node.checkpoints.index)
        r.register(Gauge("wiber_topic_end_offset", "Offset the next message of a topic will get.", ("topic",),
                         fn=self._topic_ends))
        r.register(Gauge("wiber_consumer_pending", "Deliveries of a consumer group not yet acked.", ("group",),
                         fn=self._group_pending))
        r.register(Gauge("wiber_consumer_lag", "Messages of a consumer group's topics not yet delivered to it.",
                         ("group",), fn=self._group_lag))
        r.register(Gauge("wiber_raft_members", "Members of the cluster as this node follows them, by role.",
                         ("role",), fn=self._members))
        r.register(Gauge("wiber_raft_member_lag_entries", "On the leader: log entries each member lacks.",
                         ("member", "role"), fn=self._member_lag))

    def _gauge(self, name: str, help: str, read: Callable[[], float]) -> None:
        self.registry.register(Gauge(name, help, fn=lambda: float(read())))

    def _topic_ends(self) -> Iterable[tuple[tuple[str, ...], float]]:
        # A generator of ints over the broker's own map: the one family that grows with the topics
        # (10,000 topics: 5.8 ms to render, 9.0 ms as a list of floats from a copied dict).
        return (((topic,), state.end) for topic, state in self.node.broker.topic_states().items())

    def _group_pending(self) -> Iterable[tuple[tuple[str, ...], float]]:
        return [((name, ), float(len(group.pending))) for name, group in self.node.broker.groups.groups.items()]

    def _group_lag(self) -> Iterable[tuple[tuple[str, ...], float]]:
        topic = self.node.broker.topic_by_id
        out = []
        for name, group in self.node.broker.groups.groups.items():
            lag = sum(max(0, topic(topic_id).end - cursor) for topic_id, cursor in group.cursors.items())
            out.append(((name,), float(lag)))
        return out

    def _members(self) -> Iterable[tuple[tuple[str, ...], float]]:
        membership = self.node.raft.membership
        return [(("voter",), float(len(membership.voters))), (("learner",), float(len(membership.learners)))]

    def _member_lag(self) -> Iterable[tuple[tuple[str, ...], float]]:
        raft = self.node.raft
        if raft.role is not Role.LEADER:
            return []
        membership, last = raft.membership, raft.last_index
        return [((peer, membership.role_of(peer)), float(max(0, last - raft.match_index(peer))))
                for peer in sorted(membership.members)]

    def _count(self, counter: Counter, key: tuple[str, ...], total: float) -> None:
        """Bring `counter{key}` up to `total`, a running count the node keeps itself."""
        seen = self._synced.get((counter.name, key), 0.0)
        if total > seen:
            counter.add(key, total - seen)
            self._synced[(counter.name, key)] = total

    def _sync_counters(self) -> None:
        node, count = self.node, self._count
        security = node.security
        if security is not None:
            for domain, rejected in security.zap.rejected.items():
                count(self.auth_rejected, (domain,), rejected)
            count(self.auth_rejected, ("forbidden",), security.forbidden)
        stats = node.transport.stats
        count(self.dropped, ("peer_send",), stats.peer_send_dropped)
        count(self.dropped, ("client_reply",), stats.client_reply_dropped)
        count(self.dropped, ("pub",), stats.pub_dropped)
        count(self.dropped, ("peer_frame_failed",), stats.peer_frames_failed)
        connections = node.transport.connections
        count(self.connections_accepted, (), connections.accepted_total)
        count(self.connections_refused, (), connections.refused_total)
        count(self.waits_taken_off, ("disk",), node.raft_clock.disk_wait_s)
        count(self.waits_taken_off, ("cpu",), node.raft_clock.cpu_wait_s)

    def serve(self, me: NodeConfig, poller: zmq.Poller) -> MetricsHttp | None:
        """Serve /metrics and /healthz on `me`'s metrics_port from the loop's `poller` (None when off).

        A written port that cannot be bound stops the start, as the other ports do; a defaulted one
        (port + 300) only costs the metrics, with a warning: the node's messages matter more.
        Raises: NodeStartError.
        """
        if not me.metrics_port:
            return None
        try:
            server = MetricsHttp(me.host, me.metrics_port, {"/metrics": self.render, "/healthz": self.health})
        except MetricsBindError as exc:
            if me.metrics_port_defaulted:
                log.warning("node %s serves no metrics: %s (metrics_port defaulted to port + 300; set it, or 0 "
                            "to turn metrics off)", me.id, exc)
                return None
            raise NodeStartError(f"node {me.id}: {exc}; free the port or change metrics_port") from None
        server.register(poller)
        return server

    def render(self) -> tuple[int, str, bytes]:
        """The /metrics route: every family in the text exposition format."""
        self._sync_counters()
        return 200, CONTENT_TYPE, self.registry.render()

    def health(self) -> tuple[int, str, bytes]:
        """The /healthz route: 200 when the node is a healthy member (knows a leader, can write its log),
        else 503 with the reason, one line each way."""
        node = self.node
        if node.storage_failure is not None:
            return 503, "text/plain; charset=utf-8", f"storage failed: {node.storage_failure}\n".encode()
        leader = node.raft.leader_id
        if leader is None:
            return 503, "text/plain; charset=utf-8", b"no leader known (election under way, or no quorum)\n"
        role = "leader" if leader == node.id else f"follower of {leader}"
        return 200, "text/plain; charset=utf-8", f"ok: {role}, term {node.raft.term}\n".encode()

