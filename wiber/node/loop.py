"""The node loop: one process, one thread, one `zmq.Poller` loop that wires every other module.

Each turn (docs/design.md section 1):

1. poll, with the time to the next timer as timeout, and answer the ZAP handler's questions
   first (with security, new CURVE connections wait on them: `wiber.node.auth`);
2. drain every readable socket without blocking: peer frames are stepped into the Raft core,
   client requests are validated and answered or queued;
3. fire due timers (Raft ticks, `$hb` fan-out heartbeats);
4. process the core's `Ready`s: send what may go before persisting, persist with one fsync,
   send acknowledgements, apply committed entries, answer whoever waited on them.

Messages to one peer produced in one turn leave as one multipart ZeroMQ message, so a loaded
leader sends one message per peer per turn. The node is the only place in Wiber that does I/O
(and its checkpoint thread, which does a checkpoint's file work: fsyncs, the index commit, the Raft
snapshot file, unlinking compacted log segments, laying a checkpoint out for a follower:
`wiber.node.checkpoints`).
"""

from __future__ import annotations

import logging
import math
import os
import random
import signal
from types import FrameType
from typing import Any, Callable

import msgpack
import zmq

from wiber import protocol
from wiber.broker import AppliedEntry, BrokerSettings, PubOp, encode_entry
from wiber.broker.entry import EntryOp
from wiber.clock import Clock, SyncedClock, SystemClock
from wiber.config import Config, NodeConfig
from wiber.errors import StorageError, Unavailable, WireError
from wiber.raft import (
    EntryKind,
    InstallSnapshot,
    ProposalDropped,
    Raft,
    RaftConfig,
    Ready,
    Role,
    encode_message,
)
from wiber.node import timesync
from wiber.node.auth import NodeSecurity
from wiber.node.checkpoints import Checkpoints
from wiber.node.answers import Answers
from wiber.node.clients import ClientHandlers
from wiber.node.connections import raise_open_files_limit
from wiber.node.consumers import ParkedFetches
from wiber.node.fanout import FanOut
from wiber.node.heap import HeapTrimmer
from wiber.node.members import MemberPeers
from wiber.node.notices import CommitNotices
from wiber.node.peers import PeerIntake
from wiber.node.metrics import MetricsHttp
from wiber.node.metrics.families import NodeMetrics
from wiber.node.raftclock import RaftClock, ms_to_ticks
from wiber.node.reorder import ReorderBuffer
from wiber.node.shipping import Outgoing, Shipping
from wiber.node.transport import Transport
from wiber.node.waiting import PendingReads, PendingWrites, Waiter, by_entry_size
from wiber.raft.messages import Entry, Message, SnapshotMeta
from wiber.raft.wire import MAX_FRAME_BYTES
from wiber.storage import CorruptLog, DurableStorage, StorageFailure
from wiber.storage.fs import OS, FileSystem

log = logging.getLogger(__name__)

#: Fan-out heartbeat period (docs/design.md section 3): subscribers tell a dead node from a quiet topic.
PUB_HEARTBEAT_S = 0.25
#: At most this many frames are drained from one socket per turn, so no socket starves the others.
DRAIN_LIMIT = 10_000
#: How long a stopping leader waits for its leadership transfer before it exits anyway.
TRANSFER_GRACE_S = 0.6
#: A follower measures its clock offset to the leader this often (docs/design.md section 5).
CLOCK_PROBE_S = 0.1
#: A turn's writes are proposed as several entries past this many bytes of messages: every append then
#: fits a peer frame (`wiber.raft.wire.MAX_FRAME_BYTES`, 64 MiB), whatever the turn gathered.
MAX_ENTRY_BYTES = 16 << 20

#: What applying a Raft no-op gives: nothing to fan out or answer.
_NOTHING_APPLIED = AppliedEntry([], [])


class Node:
    """One Wiber node: binds its sockets at construction, serves until `request_stop()`."""

    def __init__(
        self,
        config: Config,
        node_id: str,
        clock: Clock | None = None,
        ctx: zmq.Context[zmq.Socket[bytes]] | None = None,
        rng: random.Random | None = None,
        log_fs: FileSystem | None = None,
        join: bool = False,
    ) -> None:
        """Bind the sockets and open the data directory. `log_fs` is where the Raft log's files live
        (the real file system unless a test passes its crash-consistent one). `join`: an empty node
        joins an existing cluster (`wiber node --join`) instead of seeding a new one from the YAML."""
        self.config = config
        self.me: NodeConfig = config.node(node_id)
        self.id = node_id
        self.clock: Clock = clock or SystemClock()
        self.synced = SyncedClock(self.clock)
        self._sync_leader: str | None = None
        self.limits = protocol.Limits(max_message_bytes=config.cluster.max_message_bytes)
        # Keys and the loopback rule are checked before anything binds (docs/design.md section 10).
        self.security = NodeSecurity.for_node(config, node_id)
        self._own_ctx = ctx is None
        # One descriptor per client connection: a soft limit of 1,024 was the ceiling at ~1,000
        # clients while the hard limit allowed far more (docs/operations.md, "Open files").
        before, after = raise_open_files_limit()
        if after != before:
            log.info("node %s raised its open-files limit from %d to %d", node_id, before, after)
        self.ctx = ctx or zmq.Context()
        self.peer_ids = [p.id for p in config.peers(node_id)]
        # The largest append carries one entry holding the largest request (entries are otherwise cut
        # at MAX_ENTRY_BYTES): every peer must accept it, whatever max_message_bytes allows.
        self._peer_frame_limit = max(MAX_FRAME_BYTES, self.limits.max_batch_bytes + (1 << 20))
        try:
            self.transport = Transport(self.ctx, self.me, config.peers(node_id), self.limits.max_frame_bytes,
                                       self._peer_frame_limit, None if self.security is None else self.security.keys)
        except BaseException:
            if self._own_ctx:
                self.ctx.term()
            raise

        self._broker_settings = BrokerSettings.from_cluster(config.cluster)
        try:
            self.storage = DurableStorage.open(config.node_data_dir(node_id), fsync=config.cluster.fsync,
                                               logger=logging.getLogger("wiber.storage"), fs=log_fs or OS)
            try:
                self.checkpoints = Checkpoints(config, node_id, self.storage, self._broker_settings)
                self.broker = self.checkpoints.load()
            except BaseException:
                self.storage.close()
                if hasattr(self, "checkpoints"):
                    self.checkpoints.close()
                raise
        except BaseException:
            self.transport.close()  # a refused data directory must not leave sockets bound
            raise
        self.member_peers = MemberPeers(self)
        voters, learners, member = self.member_peers.at_start(join)
        raft_config = RaftConfig(
            id=node_id,
            peers=voters,
            learners=learners,
            member=member,
            others=tuple(n.id for n in config.nodes if n.id != node_id),
            join=join and self.storage.last_index() == 0 and self.broker.membership is None,
            election_ticks=ms_to_ticks(config.cluster.election_timeout_ms),
            heartbeat_ticks=ms_to_ticks(config.cluster.heartbeat_ms),
            logger=logging.getLogger("wiber.raft"),
        )
        # The node is the I/O layer: seeding the core's randomness from the OS belongs here.
        self.raft = Raft(raft_config, self.storage, rng or random.Random(os.urandom(16)))
        self.applied_index = self.broker.applied_index
        self.shipping = Shipping(node_id, self.peer_ids, self.checkpoints, self.clock.monotonic)
        self.checkpoints.hold_compaction = self.shipping.streaming
        self._request_timeout_s = config.cluster.request_timeout_ms / 1000.0
        self._turn_deadline = 0.0  # when the requests of this turn time out (set as they are read)
        self._heap = HeapTrimmer()
        self._turn_writes: list[Waiter[Any]] = []  # Waiter[EntryOp]s: PUBs and consumer ops
        self._turn_reads: list[Waiter[dict[str, Any]]] = []
        self._writes: PendingWrites[EntryOp] = PendingWrites()
        self._proposed: dict[int, tuple[int, float, list[EntryOp]]] = {}  # index -> (term, ts, ops)
        self.fetches = ParkedFetches()  # FETCHes waiting for their group to have work (wiber.node.consumers)
        self._reads: PendingReads[dict[str, Any]] = PendingReads()
        self._read_round = 0
        self._storage_failure: str | None = None
        window_ms = config.cluster.reorder_window_ms
        self._reorder: ReorderBuffer[Waiter[PubOp]] | None = ReorderBuffer(window_ms / 1000.0) if window_ms else None

        self._stopping = False
        self._stop_deadline: float | None = None
        now = self.clock.monotonic()
        self._started = now
        self._peer_contact: dict[str, float | None] = {p: None for p in self.peer_ids}
        self.raft_clock = RaftClock(node_id, now, raft_config.election_ticks, self.clock.monotonic)
        self._next_pub_heartbeat = now
        self._next_clock_probe = now
        self._outbox: dict[str, list[bytes]] = {}
        self.notices = CommitNotices()  # the leader's empty appends, held a millisecond (wiber.node.notices)
        self._was_leader = False  # the role at the end of the last _process_ready
        # One packer for the loop's hot replies and fan-out: msgpack.packb builds a Packer per call
        # (~0.4 us). It keeps its largest buffer for good, so big messages are packed by packb.
        self._pack: Callable[[Any], bytes] = msgpack.Packer(use_bin_type=True).pack
        self.fanout = FanOut(self.transport.publish, self._pack)
        self.clients = ClientHandlers(self)
        self.answers = Answers(self, self._pack)
        self.peers = PeerIntake(self)
        self.metrics = NodeMetrics(self)
        self.metrics_http: MetricsHttp | None = None
        try:
            self.metrics_http = self.metrics.serve(self.me, self.transport.poller)
        except BaseException:
            self.close()
            raise
        log.info("node %s listening client=%s raft=%s pub=%s metrics=%s", self.id, self.me.client_addr,
                 self.me.raft_addr, self.me.pub_addr,
                 "off" if self.metrics_http is None else f"http://{self.me.host}:{self.metrics_http.port}/metrics")

    def node_config(self, node_id: str) -> NodeConfig | None:
        """Returns: `node_id`'s host and ports, the config file read again if needed (`MemberPeers`)."""
        return self.member_peers.node_config(node_id)

    @property
    def storage_failure(self) -> str | None:
        """Why the node cannot write its log (it has stopped taking part in Raft), or None."""
        return self._storage_failure

    @property
    def pending_writes(self) -> int:
        """Client writes waiting for their entry to commit."""
        return len(self._writes)

    # ---------------------------------------------------------------- lifecycle

    def request_stop(self) -> None:
        """Ask the loop to stop (safe from a signal handler); a leader first hands leadership over."""
        self._stopping = True

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT stop the loop cleanly (leadership handed over, sockets closed, exit 0)."""

        def handler(signum: int, frame: FrameType | None) -> None:
            self.request_stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def run(self) -> None:
        """Serve until asked to stop, then close every socket."""
        try:
            while not self._should_exit():
                self.run_once()
        finally:
            self.close()

    def _should_exit(self) -> bool:
        """A stopping leader keeps serving until its transfer is done or its grace time is over."""
        if not self._stopping:
            return False
        now = self.clock.monotonic()
        if self._stop_deadline is None:
            self._stop_deadline = now + TRANSFER_GRACE_S
            # A node whose storage failed holds a Ready it never advanced: its core takes no more calls.
            if self.raft.role is Role.LEADER and self.peer_ids and self._storage_failure is None:
                log.info("node %s stopping: handing leadership over", self.id)
                self.raft.transfer_leadership(None)
                self._process_ready()
                return False
            log.info("node %s stopping", self.id)
            return True
        return self.raft.role is not Role.LEADER or now >= self._stop_deadline

    def close(self) -> None:
        """Close the metrics server, the sockets (linger 0), wait for a checkpoint being written, close
        the files and, if this node made it, the context."""
        if self.metrics_http is not None:
            self.metrics_http.close()
            self.metrics_http = None
        self.transport.close()
        self.shipping.close()
        self.checkpoints.close()
        self.storage.close()
        if self._own_ctx:
            self.ctx.term()

    # ---------------------------------------------------------------- the loop

    def run_once(self) -> None:
        """One loop turn: poll until input or the next timer, drain inputs, fire timers, process Ready."""
        now = self.clock.monotonic()
        deadline = min(self.raft_clock.next_tick, self._next_pub_heartbeat)
        if self._reorder is not None:
            release_at = self._reorder.next_release()
            if release_at is not None:
                deadline = min(deadline, now + max(0.0, release_at - self.synced.now()))
        if self.notices.due is not None:
            deadline = min(deadline, self.notices.due)
        timeout_ms = math.ceil(max(0.0, deadline - now) * 1000)  # never 0 ahead of a timer: no spinning
        if self._turn_writes:  # parked FETCHes released by the last turn's entries: propose them now
            timeout_ms = 0
        clients_ready, peers_ready, subscriptions_changed, zap_ready = self.transport.poll(timeout_ms)
        turn_started = self.clock.monotonic()
        if self.metrics_http is not None:
            self.metrics_http.handle(self.transport.events, turn_started)
        if zap_ready:  # first: handshakes wait for these answers
            self._serve_zap()
        if self.notices.due is not None and self.clock.monotonic() >= self.notices.due:
            self._send_commit_notices()
        if subscriptions_changed:
            self.fanout.on_subscriptions(self.transport.recv_subscriptions())
        if peers_ready:
            took = self._heap.took
            for user, frames in self.transport.recv_peers(DRAIN_LIMIT):
                took(sum(map(len, frames)))
                self.peers.on_frames(frames, user)
        if clients_ready:
            # One deadline for every request of the turn: they arrived together.
            self._turn_deadline = self.clock.monotonic() + self._request_timeout_s
            on_client_request = self.clients.on_client_request
            for request in self.transport.recv_clients(DRAIN_LIMIT):
                on_client_request(request)
        self._fire_timers(self.clock.monotonic())
        if self._reorder is not None and len(self._reorder):
            self._turn_writes.extend(self._reorder.release(self.synced.now()))
        self._propose_turn()
        self._process_ready()
        if self.raft.membership is not self.member_peers.seen:
            self.member_peers.connect()
        self._flush_outbox()  # clock-sync frames of a turn without Raft traffic
        self._expire_waiters(self.clock.monotonic())
        if len(self.fetches):
            self._sort_out_fetches()
        self.metrics.loop_turn_seconds.observe(self.clock.monotonic() - turn_started)

    def _fire_timers(self, now: float) -> None:
        for _ in range(self.raft_clock.ticks_due(now, running=self._storage_failure is None)):
            self.raft.tick()
        if now >= self._next_pub_heartbeat:
            self.transport.publish(protocol.heartbeat_frames(self.clients.pub_heartbeat()))
            self._next_pub_heartbeat = now + PUB_HEARTBEAT_S
        if now >= self._next_clock_probe:
            self._next_clock_probe = now + CLOCK_PROBE_S
            self.raft_clock.probe()
            if self.metrics_http is not None:
                self.metrics_http.expire(now)
            self._heap.maybe_trim(now)  # what a burst of large peer frames took goes back (wiber.node.heap)
            leader = self.raft.leader_id
            if leader is not None and leader != self.id and self._storage_failure is None:
                if leader != self._sync_leader:
                    self.synced.estimator.reset()  # samples against the old leader no longer apply
                    self._sync_leader = leader
                self._outbox.setdefault(leader, []).append(timesync.probe(self.id, self.clock.wall()))
            self._send_frames(self.shipping.nudge())

    # ---------------------------------------------------------------- raft

    def _serve_zap(self) -> None:
        """Answer libzmq's questions about new CURVE connections (`wiber.node.auth.ZapHandler`)."""
        assert self.security is not None
        answer = self.security.zap.answer
        for request in self.transport.recv_zap():
            reply = answer(request)
            if reply is not None:
                self.transport.send_zap(reply)

    def _queue(self, messages: list[Message]) -> None:
        for msg in messages:
            if isinstance(msg, InstallSnapshot):  # streamed as files, never sent whole (wiber.node.shipping)
                self._send_frames(self.shipping.snapshot_needed(msg.to, self.storage.last_snapshot_index,
                                                                self.raft.term, self.raft.membership_at))
                continue
            self._outbox.setdefault(msg.to, []).append(encode_message(msg))

    def _send_frames(self, frames: Outgoing) -> None:
        """Queue snapshot transfer frames for their peers (sent with the turn's other frames)."""
        for peer, frame in frames:
            self._outbox.setdefault(peer, []).append(frame)

    def _step_completed_snapshot(self) -> None:
        """A snapshot whose files are all staged: step it into the core, which installs it (Ready)."""
        msg = self.shipping.completed()
        if msg is None or self.raft.role is Role.LEADER:
            return
        if msg.meta.index <= self.raft.commit_index:
            self.shipping.discard_staged()
            return
        self.shipping.handed_over = True  # installed by this turn's Ready, or discarded after it
        self.raft.step(msg)

    def _send_commit_notices(self) -> None:
        self._queue(self.notices.take())
        self._flush_outbox()

    def _flush_outbox(self) -> None:
        """Send everything queued per peer as one multipart message (one send per peer per turn)."""
        for peer, frames in self._outbox.items():
            self.transport.send_peer_frames(peer, frames)
        self._outbox.clear()

    def _process_ready(self) -> None:
        """Persist, send, apply, advance: the order of `wiber.raft.ready`'s docstring."""
        if self._storage_failure is not None:
            return
        while self.raft.has_ready():
            rd = self.raft.ready()
            if rd.must_sync:  # the leader's appends overlap with its own disk write (§10.2.1)
                self.notices.drop_for(rd.messages)
                self._queue(rd.messages)
            else:  # nothing to persist: empty appends may wait for an append to ride on
                self._queue(self.notices.hold(rd.messages, self.clock.monotonic()))
            self._flush_outbox()
            try:
                self._persist(rd)
            except StorageFailure as exc:
                self._on_storage_failure(exc)
                return
            self._queue(rd.messages_after_persist)
            self._flush_outbox()
            for read_state in rd.read_states:
                self._reads.confirm(read_state.ctx, read_state.index)
            try:
                self._apply(rd.committed_entries)
            except StorageFailure as exc:
                self._on_storage_failure(exc)
                return
            except StorageError as exc:  # a damaged block read by retention: stop writing, never crash-loop
                self._on_storage_failure(StorageFailure(f"applying entries failed: {exc}"))
                return
            self.raft.advance(rd)
            self.storage.release(self.applied_index)  # applied entries leave memory (read back if a peer lags)
        if self.shipping.handed_over:  # the core did not need the staged snapshot (stale term, or it
            self.shipping.discard_staged()  # already held those entries): free its disk space
        # The core steps down inside step() or tick(), before this runs: compare across turns.
        is_leader = self.raft.role is Role.LEADER
        if self._was_leader and not is_leader:
            self._lost_leadership()
        self._was_leader = is_leader
        self._maybe_checkpoint()

    def _persist(self, rd: Ready) -> None:
        """Make the Ready durable: snapshot, entries, hard state, then one fsync for all of it."""
        clock = self.clock.monotonic
        on_disk = 0.0
        if rd.snapshot is not None:
            meta, data = rd.snapshot
            started = clock()
            self._install_snapshot(meta, data)
            on_disk = clock() - started
            log.info("node %s installed the leader's snapshot at index %d (%.0f ms)", self.id, meta.index,
                     on_disk * 1000)
        started = clock()
        if rd.entries:
            self.storage.append(rd.entries)
        if rd.hard_state is not None:
            self.storage.set_hard_state(rd.hard_state)
        if rd.must_sync:
            synced = clock()
            self.storage.sync()
            self.metrics.fsync_seconds.observe(clock() - synced)
        self.raft_clock.disk_waited(on_disk + clock() - started, "log write and fsync")

    def _install_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        """Replace the whole state by the leader's snapshot, whose files are staged: the core only
        restores the snapshots the node steps into it once they are (`_step_completed_snapshot`)."""
        staged = self.shipping.receiver.manifest
        if not self.shipping.receiver.complete or staged is None or staged.index != meta.index:
            # Never expected (the staged snapshot is held until its Ready): stop writing, loudly.
            raise StorageFailure(f"snapshot {meta.index} reached the log without its files staged "
                                 f"(staged: {None if staged is None else staged.index})")
        try:
            self.broker = self.checkpoints.install_staged(meta, self.shipping.install)
        except (OSError, CorruptLog) as exc:  # the node stops writing, as for any disk failure
            raise StorageFailure(f"installing the leader's snapshot at {meta.index} failed: {exc}") from exc
        self.applied_index = meta.index

    def _maybe_checkpoint(self) -> None:
        """Take a written checkpoint in (compacting the Raft log behind it), or start one when due."""
        checkpoints = self.checkpoints
        started = self.clock.monotonic()
        try:
            if checkpoints.running:
                job = checkpoints.poll()
                if job is not None:
                    self.raft_clock.disk_waited(self.clock.monotonic() - started, "log compaction")
                    self.metrics.snapshot_seconds.observe(checkpoints.seconds_last)
                    if job.export_dir is not None and self.raft.role is Role.LEADER:
                        self._send_frames(self.shipping.export_ready(self.storage.last_snapshot_index,
                                                                     self.raft.term, self.raft.membership_at))
                        self._flush_outbox()
            elif checkpoints.due(self.applied_index):
                checkpoints.start(self.broker)
                self.raft_clock.disk_waited(self.clock.monotonic() - started, "checkpoint flush")
        except StorageFailure as exc:
            self._on_storage_failure(exc)

    def _on_storage_failure(self, exc: StorageFailure) -> None:
        """Stop acknowledging and campaigning; keep serving reads; answer writes with STORAGE."""
        self._storage_failure = str(exc)
        log.error("node %s cannot write its log, it stops taking part in Raft: %s", self.id, exc)
        err = self.clients.storage_error()
        self._fail(self._writes.drain(), err)
        self._fail(self._reads.drain(), err)
        if self._reorder is not None:
            self._fail(self._reorder.drain(), err)  # never proposed: safe to retry on another node
        self._fail(self.fetches.drain(), err)

    def _apply(self, entries: list[Entry]) -> None:
        """Apply committed entries to the broker, fan out what they stored, answer their writers."""
        for entry in entries:
            if entry.index <= self.applied_index:
                continue
            self.applied_index = entry.index
            self.checkpoints.applied_bytes += len(entry.data)
            if entry.kind is EntryKind.CONFIG:  # the core follows it already; the checkpoint keeps it
                self.broker.apply_config(entry.index, entry.data)
                applied = _NOTHING_APPLIED
            elif entry.kind is EntryKind.NOOP:
                self.broker.apply_noop(entry.index)
                applied = _NOTHING_APPLIED
            else:
                proposed = self._proposed.pop(entry.index, None)
                if proposed is not None and proposed[0] == entry.term:
                    applied = self.broker.apply_entry_ops(entry.index, proposed[1], proposed[2])
                else:  # a follower, or an entry of another leader: decode what the log holds
                    applied = self.broker.apply_entry(entry.index, entry.data)
                stored = self.fanout.publish(applied.pub_results)
                if stored:
                    self.metrics.messages_stored.inc(stored)
            waiters, ours = self._writes.take(entry.index, entry.term)
            if waiters:
                self.answers.entry_applied(waiters, ours, applied)
        for read in self._reads.releasable(self.applied_index):
            self.clients.answer_history(read)

    def _sort_out_fetches(self) -> None:
        """Parked FETCHes whose group now has work join the next turn's entry (with a fresh request
        timeout); those whose wait is over are answered empty (NO_GROUP when the group went)."""
        now = self.clock.monotonic()
        ready, done = self.fetches.sort_out(self.broker, self.synced.now(), now)
        for waiter in ready:
            waiter.deadline = now + self._request_timeout_s
        self._turn_writes.extend(ready)
        self.answers.fetches_done(done)

    def _lost_leadership(self) -> None:
        """Whoever waited on this node's leadership learns that the outcome is unknown."""
        log.info("node %s is no longer leader (term %d)", self.id, self.raft.term)
        self._proposed.clear()  # a later leader decides what these indexes hold
        self.shipping.stop_sending()
        self.notices.clear()  # a deposed leader's commit notices are stale
        self._fail(self._writes.drain(), Unavailable(
            f"node {self.id} lost leadership; the write's outcome is unknown, retry with the same client_id and seq"))
        self._fail(self._reads.drain(), self.clients.not_leader())
        if self._reorder is not None:
            self._fail(self._reorder.drain(), self.clients.not_leader())  # never proposed: a retry is safe
        self._fail(self.fetches.drain(), self.clients.not_leader())  # never proposed: a retry is safe

    def _fail(self, waiters: list[Waiter[Any]], err: WireError) -> None:
        self.answers.fail(waiters, err)

    def _expire_waiters(self, now: float) -> None:
        """Answer UNAVAILABLE to whoever waited past the request timeout (cheap when nobody did)."""
        expired_writes = self._writes.expire(now)
        if expired_writes:
            self._fail(expired_writes, Unavailable(
                f"no commit within {self._request_timeout_s:g} s (no quorum?); the outcome is unknown, "
                f"retry with the same client_id and seq"))
        expired_reads = self._reads.expire(now) if len(self._reads) else []
        if expired_reads:
            self._fail(expired_reads, Unavailable(
                f"linearizable read not confirmed within {self._request_timeout_s:g} s (no quorum?)"))

    def _propose_turn(self) -> None:
        """Propose this turn's writes as one entry (several when they pass `MAX_ENTRY_BYTES`, so no
        append ever makes a frame a follower refuses), and start one ReadIndex round for its reads.
        A node whose storage failed answers them STORAGE: its core waits on a Ready it cannot persist."""
        if self._storage_failure is not None:
            self._fail([*self._turn_writes, *self._turn_reads], self.clients.storage_error())
            self._turn_writes, self._turn_reads = [], []
            return
        if self._turn_writes:
            waiters, self._turn_writes = self._turn_writes, []
            ts = self.synced.now()
            groups = by_entry_size(waiters, MAX_ENTRY_BYTES)
            datas = [encode_entry(ts, [w.request for w in group]) for group in groups]
            try:
                first, _ = self.raft.propose(datas)
            except ProposalDropped:
                self._fail(waiters, self.clients.not_leader())
            else:
                term = self.raft.term
                for index, group in enumerate(groups, start=first):
                    self._writes.add(index, term, group)
                    self._proposed[index] = (term, ts, [w.request for w in group])  # applied without decoding
        if self._turn_reads:
            reads, self._turn_reads = self._turn_reads, []
            self._read_round += 1
            ctx = self._read_round.to_bytes(8, "big")
            try:
                self.raft.read_index(ctx)
            except ProposalDropped:
                self._fail(reads, self.clients.not_leader())
            else:
                self._reads.start(ctx, reads)
