"""The configuration as the rest of Wiber sees it: frozen dataclasses, and the limits they keep."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from wiber.errors import ConfigError
from wiber.topics import TOPIC_MAX_BYTES

__all__ = [
    "MAX_MESSAGE_BYTES_LIMIT",
    "MAX_NODES",
    "MAX_NODE_ID_LEN",
    "MAX_REPLY_BYTES_LIMIT",
    "MAX_TOPIC_BYTES",
    "PUB_PORT_OFFSET",
    "METRICS_PORT_OFFSET",
    "RAFT_PORT_OFFSET",
    "ClientRights",
    "ClusterConfig",
    "Config",
    "NodeConfig",
    "RetentionConfig",
    "SecurityConfig",
]

MAX_NODES: Final = 7
"""Most nodes a cluster may have: beyond 7, every commit waits on more disks for no practical gain."""

MAX_MESSAGE_BYTES_LIMIT: Final = 64 * 1024 * 1024
"""Upper bound of `cluster.max_message_bytes` (64 MiB): a log entry is held in memory whole."""

RAFT_PORT_OFFSET: Final = 100
"""A node's raft_port defaults to its port plus this."""

PUB_PORT_OFFSET: Final = 200
"""A node's pub_port defaults to its port plus this."""

METRICS_PORT_OFFSET: Final = 300
"""A node's metrics_port (Prometheus /metrics and /healthz over HTTP) defaults to its port plus this."""

MAX_TOPIC_BYTES: Final = TOPIC_MAX_BYTES
"""Longest topic name in UTF-8 bytes (docs/design.md section 3; the rules are `wiber.topics`)."""

MAX_NODE_ID_LEN: Final = 64
"""Longest node id: it travels in every Raft message and names a directory."""

MAX_REPLY_BYTES_LIMIT: Final = 1 << 30
"""Upper bound of `cluster.max_reply_bytes` (1 GiB): a reply is built in memory whole."""


# --------------------------------------------------------------------------------------------------
# The configuration, as the rest of Wiber sees it.


@dataclass(frozen=True, slots=True)
class RetentionConfig:
    """How much of a topic to keep; each limit is None for unlimited, and whichever is hit first trims.

    A value object shared by the cluster-wide default and the per-topic overrides, so the broker
    applies one rule whatever its source.
    """

    max_messages: int | None = None
    max_bytes: int | None = None
    max_age_s: float | None = None


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """One node of the cluster: its id, the three endpoints it binds and others connect to, and the
    HTTP port of its metrics (0: none)."""

    id: str
    host: str
    port: int
    raft_port: int
    pub_port: int
    metrics_port: int = 0
    #: Whether metrics_port was left to its default (port + 300) rather than written: a node whose
    #: defaulted metrics port is taken serves without metrics and says so; a written one must bind.
    metrics_port_defaulted: bool = dataclasses.field(default=False, compare=False)

    @property
    def client_addr(self) -> str:
        """Returns: the ZeroMQ endpoint of the client ROUTER, ``tcp://host:port``."""
        return _tcp(self.host, self.port)

    @property
    def raft_addr(self) -> str:
        """Returns: the ZeroMQ endpoint peers send Raft messages to, ``tcp://host:raft_port``."""
        return _tcp(self.host, self.raft_port)

    @property
    def pub_addr(self) -> str:
        """Returns: the ZeroMQ endpoint of the fan-out PUB socket, ``tcp://host:pub_port``."""
        return _tcp(self.host, self.pub_port)


def _no_topics() -> Mapping[str, RetentionConfig]:
    """Returns: an empty read-only topic map (a factory, so the frozen default is never shared mutable)."""
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """Settings shared by every node; the module docstring documents each field and its reason."""

    data_dir: str = "./data"
    heartbeat_ms: int = 50
    election_timeout_ms: int = 300
    max_message_bytes: int = 1048576
    reorder_window_ms: int = 0
    request_timeout_ms: int = 5000
    snapshot_every: int = 10000
    snapshot_bytes: int = 16 << 20
    segment_bytes: int = 64 << 20
    session_window: int = 4096
    max_sessions: int = 10000
    fsync: bool = True
    insecure: bool = False  # plain TCP on non-loopback hosts without a security section (logged at start)
    max_reply_bytes: int = 4 << 20
    retention: RetentionConfig = RetentionConfig()
    topics: Mapping[str, RetentionConfig] = field(default_factory=_no_topics)


@dataclass(frozen=True, slots=True)
class ClientRights:
    """One entry of `security.clients`: the name of a client's key and what it may do
    (docs/design.md section 10). Patterns are topic patterns (`*` one token, `>` the rest)."""

    name: str
    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()
    admin: bool = False  # every op, STATUS and cluster commands


@dataclass(frozen=True, slots=True)
class SecurityConfig:
    """The `security` section: where the zcert key files live and who may use the client ports."""

    keys_dir: str  # absolute: <name>.key (public) and <name>.key_secret per node and per client
    clients: tuple[ClientRights, ...] = ()


@dataclass(frozen=True, slots=True)
class Config:
    """A whole configuration file: where it came from, the cluster settings and the nodes in file order.

    `security` is None when the file has no `security` section (no CURVE: loopback only, unless
    `cluster.insecure`)."""

    path: str
    cluster: ClusterConfig
    nodes: tuple[NodeConfig, ...]
    security: SecurityConfig | None = None

    def node(self, node_id: str) -> NodeConfig:
        """Returns: the node named `node_id`.

        Raises:
            ConfigError: no node has that id (the message lists the known ids).
        """
        for node in self.nodes:
            if node.id == node_id:
                return node
        known = ", ".join(n.id for n in self.nodes)
        raise ConfigError(self.path, "nodes", f"no node with id {node_id!r}; known: {known}")

    def peers(self, node_id: str) -> tuple[NodeConfig, ...]:
        """Returns: every node but `node_id`, in file order.

        Raises:
            ConfigError: no node has that id.
        """
        self.node(node_id)
        return tuple(n for n in self.nodes if n.id != node_id)

    def node_data_dir(self, node_id: str) -> str:
        """Returns: the absolute directory of node `node_id`'s files, ``data_dir/<id>``.

        Raises:
            ConfigError: no node has that id (so an arbitrary string never becomes a path).
        """
        return os.path.join(self.cluster.data_dir, self.node(node_id).id)


def _hostport(host: str, port: int) -> str:
    """Returns: ``host:port``, with an IPv6 literal in brackets."""
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def _tcp(host: str, port: int) -> str:
    """Returns: the ZeroMQ TCP endpoint of `host` and `port`."""
    return f"tcp://{_hostport(host, port)}"
