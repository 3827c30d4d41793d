"""A node's side of cluster membership. `MembershipOps`: the ops (docs/protocol.md; `wiber cluster`):
MEMBERS lists voters and learners as this node follows them (on the leader, with each member's lag);
MEMBER_ADD and MEMBER_REMOVE start a single-server change on the leader and answer with the index
of its CONFIG entry, which the caller watches commit (`commit_index` in MEMBERS). All need admin.
`MemberPeers`: the membership a node starts with, and a connection to each member added later.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from wiber.config import NodeConfig, load_config
from wiber.errors import BadRequest, ConfigError, Unavailable
from wiber.raft import ChangeKind, ConfChange, Role
from wiber.raft.membership import ChangeBlocked, Membership, MembershipError, decode_membership

if TYPE_CHECKING:
    from wiber.node.clients import ClientHandlers
    from wiber.node.loop import Node
    from wiber.node.transport import ClientRequest

log = logging.getLogger("wiber.node.loop")

#: An unknown sender makes a node read its config file again at most this often (per id).
LEARN_EVERY_S = 1.0
#: At most this many unknown ids are looked up within one `LEARN_EVERY_S`.
LEARN_IDS_MAX = 16


class MembershipOps:
    """Handlers of MEMBERS, MEMBER_ADD and MEMBER_REMOVE for one node."""

    def __init__(self, clients: ClientHandlers) -> None:
        self.clients = clients
        self.node = clients.node

    def describe(self) -> dict[str, Any]:
        """Returns: the membership this node follows and, on the leader, how far each member lags."""
        raft = self.node.raft
        membership = raft.membership
        last = raft.last_index
        lag = {peer: max(0, last - raft.match_index(peer)) for peer in sorted(membership.members)} \
            if raft.role is Role.LEADER else {}
        return {"voters": sorted(membership.voters), "learners": sorted(membership.learners), "lag": lag,
                "leader": raft.leader_id, "commit_index": raft.commit_index,
                "membership_index": raft.membership_index}

    def on_members(self, msg: dict[str, Any], request: ClientRequest, req_id: Any) -> dict[str, Any]:
        """MEMBERS: `describe()`, from this node's log (committed or not)."""
        return {"node": self.node.id, **self.describe()}

    def on_change(self, msg: dict[str, Any], request: ClientRequest, req_id: Any) -> dict[str, Any]:
        """MEMBER_ADD (as a learner, promoted once caught up) and MEMBER_REMOVE, on the leader."""
        node, raft = self.node, self.node.raft
        target = msg["node"]
        if node.storage_failure is not None:
            raise self.clients.storage_error()
        if raft.role is not Role.LEADER:
            raise self.clients.not_leader()
        adding = msg["op"] == "MEMBER_ADD"
        if adding and node.node_config(target) is None:
            raise BadRequest(f"{target} is not in {node.id}'s config file: add it to the YAML's nodes "
                             f"(host and ports) on every node first, start it with --join, then add it")
        kind = ChangeKind.ADD_LEARNER if adding else ChangeKind.REMOVE
        try:
            index = raft.propose_change(ConfChange(kind, target))
        except ChangeBlocked as exc:
            raise Unavailable(f"node {node.id}: {exc}") from None
        except MembershipError as exc:
            raise BadRequest(str(exc)) from None
        return {"index": index, **self.describe()}


class MemberPeers:
    """The node's side of a membership: where a member is (the config file, read again for a node added
    after the start), a connection to each member, and the membership a node starts with."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.seen: Membership | None = None
        """The membership `connect` last looked at."""
        self._next_look: dict[str, float] = {}

    def node_config(self, node_id: str) -> NodeConfig | None:
        """Returns: `node_id`'s host and ports from the config, read again from its file when the id is
        not in the one loaded (an operator adds a node to the YAML before adding it), or None."""
        node = self.node
        for known in node.config.nodes:
            if known.id == node_id:
                return known
        try:
            reread = load_config(node.config.path)
        except (ConfigError, OSError) as exc:
            log.error("node %s cannot read its config file again: %s", node.id, exc)
            return None
        for found in reread.nodes:
            if found.id == node_id:
                # The nodes only: every lookup of an id (a leader's address, ...) must find it from now
                # on. The cluster settings stay those the node started with.
                ids = {n.id for n in node.config.nodes}
                extra = tuple(n for n in reread.nodes if n.id not in ids)
                node.config = dataclasses.replace(node.config, nodes=node.config.nodes + extra)
                return found
        return None

    def learn(self, node_id: str) -> bool:
        """A Raft message came from `node_id`, a node this one has no connection to: if the config file
        lists it now (a member added while this node was cut off, which may lead by now), connect to
        it and take its messages. The file is read at most once a second per unknown id.

        Returns: whether the node is known now."""
        node = self.node
        now = node.clock.monotonic()
        if now < self._next_look.get(node_id, 0.0) or node_id == node.id:
            return False
        if len(self._next_look) >= LEARN_IDS_MAX:  # forged ids must not grow it (or read the file) for ever
            self._next_look = {i: t for i, t in self._next_look.items() if t > now}
            if len(self._next_look) >= LEARN_IDS_MAX:
                return False
        self._next_look[node_id] = now + LEARN_EVERY_S
        if not self._connect(node_id, quiet=True):
            return False
        node.raft.add_known(node_id)
        return True

    def connect(self) -> None:
        """The membership changed: connect to members this node has no connection to yet."""
        node = self.node
        membership = self.seen = node.raft.membership
        for member in sorted(membership.members - {node.id} - set(node.transport.peers)):
            self._connect(member)

    def _connect(self, member: str, quiet: bool = False) -> bool:
        """Connect to `member` from the config file (read again if needed); `quiet`: a sender nobody
        vouched for, not a member, so its absence from the file is no error. Returns: whether it worked."""
        node = self.node
        peer = self.node_config(member)
        if peer is None:
            (log.debug if quiet else log.error)(
                "node %s: %s is a member, but not in %s: add its host and ports to the file", node.id, member,
                node.config.path)
            return False
        try:
            node.transport.add_peer(peer)
        except KeyError:
            log.error("node %s: %s is a member, but its public key is not in keys_dir: copy %s.key there "
                      "and restart this node", node.id, member, member)
            return False
        node.peer_ids.append(member)
        node._peer_contact[member] = None
        node.shipping.add_peer(member)
        log.info("node %s connected to %s, a new member, at %s", node.id, member, peer.raft_addr)
        return True

    def at_start(self, join: bool) -> tuple[tuple[str, ...], tuple[str, ...], bool]:
        """Returns: the voters and learners as of the checkpoint (the core takes CONFIG entries after it
        from the log); the YAML's nodes seed a new cluster (docs/operations.md, "Membership"). A joining
        node's core ignores them as a membership (it learns its own from the leader) but takes messages
        from them. The flag: whether this node is a member (one removed before the checkpoint is not)."""
        node = self.node
        data = node.broker.membership
        if data is not None:
            membership = decode_membership(data)
            return (tuple(sorted(membership.voters)), tuple(sorted(membership.learners)),
                    node.id in membership.members)
        seed = tuple(n.id for n in node.config.nodes)
        if not join and node.storage.last_index() == 0 and node.storage.last_snapshot_index == 0:
            # A brand-new cluster: its first checkpoint keeps the seed, so that a restart reads the
            # membership from the data, not from a YAML an operator may have grown meanwhile.
            node.broker.membership = Membership.of(seed).encode()
        return seed, (), True
