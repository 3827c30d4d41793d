"""Wiber's configuration: one YAML file, parsed into frozen dataclasses and validated once at start.

Every node and every `wiber` command reads the same file. A mistake in it is caught before
anything binds a socket or touches a disk, and reported as one line, ``FILE: KEY: PROBLEM``, that
names the file, the key path (``cluster.heartbeat_ms``, ``nodes[1].port``) and what to change
(DESIGN section 2; the CLI exits with status 2). Once `load_config` has returned, every value is
known to be well typed and consistent, and no other module checks it again.

Example (this is ``conf/cluster.yaml``)::

    cluster:                         # optional: every key below has a default
      data_dir: ./data
      heartbeat_ms: 50
      election_timeout_ms: 300
      max_message_bytes: 1048576
      reorder_window_ms: 0
    nodes:                           # required: 1 to 7 nodes (3 or 5 in production)
      - {id: n1, host: 127.0.0.1, port: 9101}
      - {id: n2, host: 127.0.0.1, port: 9102}
      - {id: n3, host: 127.0.0.1, port: 9103}

Keys of ``cluster`` (all optional)
----------------------------------

data_dir (string, default ``./data``)
    Directory under which node <id> keeps its log, hard state and snapshots, in ``data_dir/<id>``.
    A relative path is resolved against the current working directory of the process that loads
    the file (for ``make run``, the repository root), never against the YAML file's location;
    ``~`` is expanded. The loaded config holds the absolute path.

heartbeat_ms (integer > 0, default 50)
    How often the leader sends AppendEntries (empty when there is nothing new) to each follower.
    Must be less than election_timeout_ms, or followers would start elections between heartbeats.

election_timeout_ms (integer > 0, default 300)
    A follower that hears no leader for this long starts an election. Each node draws its timeout
    at random in [t, 2t) every time, so that split votes resolve. A deposed leader that has not
    heard from a majority for this long steps down (CheckQuorum). Lower values fail over faster
    but risk needless elections on a loaded machine.

max_message_bytes (integer > 0, at most 67108864 = 64 MiB, default 1048576 = 1 MiB)
    Largest ``data`` of one PUB; a larger one is answered TOO_LARGE. A PUB_BATCH may carry up to
    16 times this in all.

reorder_window_ms (integer >= 0, default 0 = off)
    With a window, the leader holds PUBs that carry a client ``ts`` for up to this long and appends
    them in (ts, client_id, seq) order (DESIGN section 5). Must be less than request_timeout_ms.

request_timeout_ms (integer > 0, default 5000)
    A PUB that is not committed this long after it arrived is answered UNAVAILABLE (its outcome is
    unknown; a retry with the same client_id and seq is safe).

snapshot_every (integer > 0, default 10000)
    Number of log entries applied between two checkpoints (Raft snapshots); the Raft log before a
    checkpoint is then discarded. Smaller values mean faster restarts and more checkpoint writes.
    A checkpoint is cheap (it fsyncs the topic segments written since the last one and commits the
    index rows that changed, off the node's loop) and never stops the loop for long.

snapshot_bytes (integer > 0, default 16777216 = 16 MiB)
    A checkpoint is also taken once this many bytes of log entries were applied since the last one.
    It bounds the memory a node holds for what the last checkpoint does not cover yet (the Raft log
    since it, and the index of the messages written since it), whatever the size of the batches.

segment_bytes (integer > 0, default 67108864 = 64 MiB)
    Size at which a topic segment file (shared by every topic) is sealed and a new one started.
    Retention frees disk space a whole sealed segment at a time.

session_window (integer > 0, default 4096)
    Per client_id, how many answers the broker keeps for deduplicating retries (seqs at or above
    the client's ack_floor). A pipelining client may have up to this many requests in flight.

max_sessions (integer > 0, default 10000)
    Number of client_ids the broker remembers; the least recently active (by log index) is evicted
    first, and its late retries get SESSION_EXPIRED.

fsync (true or false, default true)
    Whether the log is fsynced before a write is acknowledged. ``false`` is UNSAFE: a power loss or
    kernel crash can then lose acknowledged messages or break Raft's guarantees. Use it only for
    experiments and benchmarks, and say so next to any figure measured with it.

retention (mapping, default: keep everything)
    Cluster-wide limits on what each topic keeps, with the keys below. When a limit is reached the
    oldest messages are removed; offsets are never reused (HISTORY's ``first_offset`` moves up).

    max_messages (integer > 0, or null = unlimited; default null)
        Keep at most this many messages per topic.
    max_bytes (integer > 0, or null = unlimited; default null)
        Keep at most this many bytes of message data per topic.
    max_age_s (number > 0, or null = unlimited; default null)
        Remove messages older than this many seconds (by their ``ts``).

topics (mapping of topic name to retention, default: none)
    Per-topic retention overrides, e.g. ``topics: {audit: {max_age_s: 86400}}``. Each override takes
    the keys of ``retention``; a key it leaves out keeps the cluster-wide value, and an explicit
    ``null`` makes that limit unlimited for the topic. So the effective retention of a topic is
    ``cluster.topics.get(name, cluster.retention)``. Topic names: 1-255 bytes of UTF-8, no NUL,
    not starting with ``$`` (reserved).

Keys of each entry of ``nodes``
-------------------------------

id (string, required)
    The node's name: 1-64 characters of ``A-Z a-z 0-9 _ . -`` (not ``.`` or ``..``), unique. It
    names the node's data directory, ``data_dir/<id>``, and is what ``wiber-node <id>`` starts.

host (string, required)
    Hostname or IP address the node binds its sockets to and that peers and clients connect to,
    so it must be reachable by them (``127.0.0.1`` for a single-machine cluster).

port (integer 1-65535, required)
    Client requests (ZeroMQ ROUTER), ``tcp://host:port``.

raft_port (integer 1-65535, default port + 100)
    Raft messages from the other nodes, ``tcp://host:raft_port``.

pub_port (integer 1-65535, default port + 200)
    Fan-out of applied messages to subscribers (ZeroMQ PUB), ``tcp://host:pub_port``.

Every (host, port) pair, across the port, raft_port and pub_port of all nodes, must be unique.
There must be 1 to 7 nodes; a cluster of N tolerates the loss of (N - 1) // 2 of them.

Validation rules
----------------
* A key that is not listed above is refused, naming the keys allowed at that place.
* An integer key takes an integer only: ``true``, ``1.5`` and ``"50"`` are refused. A number key
  (max_age_s) also takes an integer. A mapping key repeated in one YAML mapping is refused
  (PyYAML would silently keep the last one).
* An empty section (``cluster:`` with nothing under it) is the same as leaving it out.
* Checking stops at the first problem found. An error that concerns the file as a
  whole names the pseudo-key ``(file)`` (missing, unreadable), ``(yaml)`` (not YAML; with line and
  column) or ``(top level)`` (empty, or not a mapping).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

import yaml

from wiber.errors import ConfigError

__all__ = [
    "MAX_MESSAGE_BYTES_LIMIT",
    "MAX_NODES",
    "MAX_NODE_ID_LEN",
    "MAX_TOPIC_BYTES",
    "PUB_PORT_OFFSET",
    "RAFT_PORT_OFFSET",
    "ClusterConfig",
    "Config",
    "NodeConfig",
    "RetentionConfig",
    "load_config",
    "parse_config",
]

MAX_NODES: Final = 7
"""Most nodes a cluster may have: beyond 7, every commit waits on more disks for no practical gain."""

MAX_MESSAGE_BYTES_LIMIT: Final = 64 * 1024 * 1024
"""Upper bound of `cluster.max_message_bytes` (64 MiB): a log entry is held in memory whole."""

RAFT_PORT_OFFSET: Final = 100
"""A node's raft_port defaults to its port plus this."""

PUB_PORT_OFFSET: Final = 200
"""A node's pub_port defaults to its port plus this."""

MAX_TOPIC_BYTES: Final = 255
"""Longest topic name in UTF-8 bytes (DESIGN section 3)."""

MAX_NODE_ID_LEN: Final = 64
"""Longest node id: it travels in every Raft message and names a directory."""

# Labels used as the "key" of errors that are about the file as a whole, not one key in it.
_FILE: Final = "(file)"
_YAML: Final = "(yaml)"
_TOP: Final = "(top level)"

_NODE_ID_RE: Final = re.compile(r"[A-Za-z0-9_.\-]+")
_SIMPLE_KEY_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")
_BAD_HOST_CHAR_RE: Final = re.compile(r"[\s/\x00-\x1f\x7f]")
_INTEGER_STRING_RE: Final = re.compile(r"[+-]?[0-9][0-9_]*")
_MISSING: Final[Any] = object()


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
    """One node of the cluster: its id and the three endpoints it binds and others connect to."""

    id: str
    host: str
    port: int
    raft_port: int
    pub_port: int

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
    retention: RetentionConfig = RetentionConfig()
    topics: Mapping[str, RetentionConfig] = field(default_factory=_no_topics)


@dataclass(frozen=True, slots=True)
class Config:
    """A whole configuration file: where it came from, the cluster settings and the nodes in file order."""

    path: str
    cluster: ClusterConfig
    nodes: tuple[NodeConfig, ...]

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


# --------------------------------------------------------------------------------------------------
# Loading.


def load_config(path: str) -> Config:
    """Read, parse and validate the YAML file at `path`.

    Returns:
        The validated configuration.
    Raises:
        ConfigError: the file cannot be read, is not valid YAML, or breaks a rule of the module
            docstring; its message is one line naming the file, the key path and the problem.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ConfigError(path, _FILE, f"no such file (looked for {os.path.abspath(path)})") from None
    except IsADirectoryError:
        raise ConfigError(path, _FILE, "is a directory; give the path of the YAML file") from None
    except OSError as exc:
        raise ConfigError(path, _FILE, f"cannot read it: {exc.strerror or exc}") from None
    except ValueError as exc:  # e.g. a NUL in the path
        raise ConfigError(path, _FILE, f"not a usable path: {exc}") from None
    try:
        raw = yaml.load(data, Loader=_StrictLoader)  # safe: a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(path, _YAML, _yaml_problem(exc)) from None
    except RecursionError:
        raise ConfigError(path, _YAML, "nested too deeply to be a Wiber configuration") from None
    return parse_config(raw, path)


def parse_config(raw: object, path: str) -> Config:
    """Validate an already-loaded YAML document (plain dicts, lists and scalars) as a configuration.

    `path` is only used in error messages and kept in `Config.path`.

    Returns:
        The validated configuration.
    Raises:
        ConfigError: a rule of the module docstring is broken; the message is one line.
    """
    if raw is None:
        raise ConfigError(
            path, _TOP, "the file is empty; it needs at least a `nodes` list (see conf/cluster.yaml)"
        )
    top = _mapping(path, "", raw, ("cluster", "nodes"))
    if "nodes" not in top:
        raise ConfigError(
            path,
            "nodes",
            "missing required key; list the nodes, e.g. `nodes: [{id: n1, host: 127.0.0.1, port: 9101}]`",
        )
    cluster = _parse_cluster(path, top.get("cluster"))
    nodes = _parse_nodes(path, top["nodes"])
    return Config(path=path, cluster=cluster, nodes=nodes)


class _StrictLoader(yaml.SafeLoader):  # type: ignore[misc,unused-ignore]  # Any without stubs
    """A SafeLoader that refuses a key repeated within one mapping, which PyYAML silently overwrites."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        """Returns: the mapping of `node`, after checking its own scalar keys are distinct."""
        seen: set[object] = set()
        for key_node, _value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # unhashable: the base class reports it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"the key {_short(key)} appears twice in the same mapping",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """Returns: one line saying where (line, column, 1-based) and why PyYAML refused the document."""
    if isinstance(exc, yaml.reader.ReaderError):
        return f"not readable as text at byte {exc.position}: {' '.join(str(exc.reason).split())}"
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None)
    context = getattr(exc, "context", None)
    if problem is None:
        text = str(exc)
    else:
        text = str(problem) + (f" ({context})" if context else "")
    text = " ".join(text.split())
    if mark is not None:
        return f"not valid YAML at line {mark.line + 1}, column {mark.column + 1}: {text}"
    return f"not valid YAML: {text}"


# --------------------------------------------------------------------------------------------------
# Sections.

_CLUSTER_KEYS: Final = tuple(f.name for f in dataclasses.fields(ClusterConfig))
_RETENTION_KEYS: Final = tuple(f.name for f in dataclasses.fields(RetentionConfig))
_NODE_KEYS: Final = tuple(f.name for f in dataclasses.fields(NodeConfig))
_DEFAULTS: Final = ClusterConfig()
_POSITIVE_INT_KEYS: Final = (
    "heartbeat_ms",
    "election_timeout_ms",
    "max_message_bytes",
    "request_timeout_ms",
    "snapshot_every",
    "snapshot_bytes",
    "segment_bytes",
    "session_window",
    "max_sessions",
)


def _parse_cluster(file: str, raw: object) -> ClusterConfig:
    """Returns: the `cluster` section, defaults filled in. Raises: ConfigError."""
    section = _mapping(file, "cluster", raw, _CLUSTER_KEYS, allow_null=True)

    def get(key: str) -> object:
        return section.get(key, getattr(_DEFAULTS, key))

    data_dir = _data_dir(file, get("data_dir"))
    ints = {
        key: _int(file, f"cluster.{key}", get(key), 1, default=getattr(_DEFAULTS, key))
        for key in _POSITIVE_INT_KEYS
    }
    reorder_window_ms = _int(file, "cluster.reorder_window_ms", get("reorder_window_ms"), 0, default=0)
    fsync = _bool(file, "cluster.fsync", get("fsync"))
    retention = _parse_retention(file, "cluster.retention", section.get("retention"), RetentionConfig())
    topics = _parse_topics(file, section.get("topics"), retention)

    if ints["max_message_bytes"] > MAX_MESSAGE_BYTES_LIMIT:
        raise ConfigError(
            file,
            "cluster.max_message_bytes",
            f"must be at most {MAX_MESSAGE_BYTES_LIMIT} (64 MiB), got {ints['max_message_bytes']}",
        )
    if ints["heartbeat_ms"] >= ints["election_timeout_ms"]:
        raise ConfigError(
            file,
            "cluster.heartbeat_ms",
            f"must be less than cluster.election_timeout_ms ({ints['election_timeout_ms']}), got "
            f"{ints['heartbeat_ms']}; followers would start elections between heartbeats",
        )
    if reorder_window_ms >= ints["request_timeout_ms"]:
        raise ConfigError(
            file,
            "cluster.reorder_window_ms",
            f"must be less than cluster.request_timeout_ms ({ints['request_timeout_ms']}), got "
            f"{reorder_window_ms}; held PUBs would time out before being appended",
        )
    return ClusterConfig(
        data_dir=data_dir,
        heartbeat_ms=ints["heartbeat_ms"],
        election_timeout_ms=ints["election_timeout_ms"],
        max_message_bytes=ints["max_message_bytes"],
        reorder_window_ms=reorder_window_ms,
        request_timeout_ms=ints["request_timeout_ms"],
        snapshot_every=ints["snapshot_every"],
        snapshot_bytes=ints["snapshot_bytes"],
        segment_bytes=ints["segment_bytes"],
        session_window=ints["session_window"],
        max_sessions=ints["max_sessions"],
        fsync=fsync,
        retention=retention,
        topics=topics,
    )


def _data_dir(file: str, value: object) -> str:
    """Returns: `value` as an absolute path, relative ones resolved against the working directory."""
    key = "cluster.data_dir"
    text = _str(file, key, value)
    if not text:
        raise ConfigError(file, key, "must not be empty; use . for the current directory")
    if "\0" in text:
        raise ConfigError(file, key, "must not contain a NUL character")
    return os.path.abspath(os.path.expanduser(text))


def _parse_retention(file: str, keypath: str, raw: object, base: RetentionConfig) -> RetentionConfig:
    """Returns: the retention at `keypath`; a key left out keeps `base`'s value. Raises: ConfigError."""
    section = _mapping(file, keypath, raw, _RETENTION_KEYS, allow_null=True)
    max_messages = base.max_messages
    max_bytes = base.max_bytes
    max_age_s = base.max_age_s
    if "max_messages" in section:
        max_messages = _optional_int(file, f"{keypath}.max_messages", section["max_messages"])
    if "max_bytes" in section:
        max_bytes = _optional_int(file, f"{keypath}.max_bytes", section["max_bytes"])
    if "max_age_s" in section:
        max_age_s = _optional_seconds(file, f"{keypath}.max_age_s", section["max_age_s"])
    return RetentionConfig(max_messages=max_messages, max_bytes=max_bytes, max_age_s=max_age_s)


def _parse_topics(file: str, raw: object, base: RetentionConfig) -> Mapping[str, RetentionConfig]:
    """Returns: a read-only map of topic name to its effective retention. Raises: ConfigError."""
    keypath = "cluster.topics"
    if raw is None:
        return _no_topics()
    if not isinstance(raw, Mapping):
        raise ConfigError(
            file,
            keypath,
            f"must be a mapping of topic name to retention, e.g. `{{audit: {{max_age_s: 86400}}}}`, "
            f"got {_describe(raw)}",
        )
    topics: dict[str, RetentionConfig] = {}
    for name, value in raw.items():
        topic_path = _join(keypath, name)
        if not isinstance(name, str):
            raise ConfigError(
                file, topic_path, f"a topic name must be a string, got {_describe(name)}; quote it"
            )
        problem = _topic_problem(name)
        if problem is not None:
            raise ConfigError(file, topic_path, problem)
        topics[name] = _parse_retention(file, topic_path, value, base)
    return MappingProxyType(topics)


def _topic_problem(name: str) -> str | None:
    """Returns: why `name` is not a valid topic name (DESIGN section 3), or None if it is one."""
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return "a topic name must be valid UTF-8 text"
    if size == 0:
        return "a topic name must not be empty"
    if size > MAX_TOPIC_BYTES:
        return f"a topic name must be at most {MAX_TOPIC_BYTES} bytes of UTF-8, this one is {size}"
    if "\0" in name:
        return "a topic name must not contain a NUL character"
    if name.startswith("$"):
        return "a topic name must not start with '$' (reserved for Wiber's own channels)"
    return None


def _parse_nodes(file: str, raw: object) -> tuple[NodeConfig, ...]:
    """Returns: the nodes in file order, ports defaulted, ids and (host, port) unique. Raises: ConfigError."""
    if not isinstance(raw, (list, tuple)):
        raise ConfigError(
            file,
            "nodes",
            f"must be a list of nodes like `- {{id: n1, host: 127.0.0.1, port: 9101}}`, got {_describe(raw)}",
        )
    if not raw:
        raise ConfigError(file, "nodes", "at least 1 node is required, the list is empty")
    if len(raw) > MAX_NODES:
        raise ConfigError(
            file,
            "nodes",
            f"at most {MAX_NODES} nodes are supported, got {len(raw)}; use 3 or 5 (larger clusters "
            "only slow commits)",
        )

    nodes: list[NodeConfig] = []
    ids: dict[str, int] = {}
    # (host lowercased, port) -> (index of the node, its id, which port, whether it was defaulted)
    used: dict[tuple[str, int], tuple[int, str, str, bool]] = {}
    for index, item in enumerate(raw):
        keypath = f"nodes[{index}]"
        section = _mapping(file, keypath, item, _NODE_KEYS, example="{id: n1, host: 127.0.0.1, port: 9101}")
        for key in ("id", "host", "port"):
            if key not in section:
                raise ConfigError(
                    file, f"{keypath}.{key}", "missing required key; every node needs id, host and port"
                )

        node_id = _node_id(file, f"{keypath}.id", section["id"])
        if node_id in ids:
            raise ConfigError(
                file,
                f"{keypath}.id",
                f"duplicate id {node_id!r}, already used by nodes[{ids[node_id]}]; ids must be unique",
            )
        ids[node_id] = index

        host = _host(file, f"{keypath}.host", section["host"])
        port = _port(file, f"{keypath}.port", section["port"])
        ports: dict[str, tuple[int, bool]] = {"port": (port, False)}
        for key, offset in (("raft_port", RAFT_PORT_OFFSET), ("pub_port", PUB_PORT_OFFSET)):
            if key in section:
                ports[key] = (_port(file, f"{keypath}.{key}", section[key]), False)
            elif port + offset > 65535:
                raise ConfigError(
                    file,
                    f"{keypath}.{key}",
                    f"not set, and its default port+{offset} = {port + offset} is over 65535; "
                    f"set {key} explicitly",
                )
            else:
                ports[key] = (port + offset, True)

        for key, (number, defaulted) in ports.items():
            address = (host.lower(), number)
            if address in used:
                other_index, other_id, other_key, other_defaulted = used[address]
                where = _hostport(host, number)
                mine = f"node {node_id!r} uses {where} as {key}{_defaulted(key, defaulted, ' (')}"
                if other_index == index:
                    theirs = f" and also as {other_key}{_defaulted(other_key, other_defaulted, ' (')}"
                else:
                    theirs = (
                        f", which node {other_id!r} already uses as {other_key} "
                        f"(nodes[{other_index}].{other_key}"
                        f"{_defaulted(other_key, other_defaulted)})"
                    )
                raise ConfigError(
                    file,
                    f"{keypath}.{key}",
                    f"{mine}{theirs}; every port, raft_port and pub_port must be unique on a host",
                )
            used[address] = (index, node_id, key, defaulted)

        nodes.append(
            NodeConfig(
                id=node_id,
                host=host,
                port=port,
                raft_port=ports["raft_port"][0],
                pub_port=ports["pub_port"][0],
            )
        )
    return tuple(nodes)


def _defaulted(key: str, defaulted: bool, prefix: str = ", ") -> str:
    """Returns: a note that the port `key` was not written but defaulted, or "" when it was written."""
    if not defaulted:
        return ""
    offset = RAFT_PORT_OFFSET if key == "raft_port" else PUB_PORT_OFFSET
    return f"{prefix}defaulted to port+{offset}" + (")" if prefix.endswith("(") else "")


def _node_id(file: str, keypath: str, value: object) -> str:
    """Returns: `value` if it is a valid node id. Raises: ConfigError."""
    text = _str(file, keypath, value)
    if not text:
        raise ConfigError(file, keypath, "must not be empty")
    if len(text) > MAX_NODE_ID_LEN:
        raise ConfigError(file, keypath, f"must be at most {MAX_NODE_ID_LEN} characters, got {len(text)}")
    if not _NODE_ID_RE.fullmatch(text) or text in (".", ".."):
        raise ConfigError(
            file,
            keypath,
            f"must use only letters, digits, '_', '.' and '-' (and not be . or ..), got {_short(text)}",
        )
    return text


def _host(file: str, keypath: str, value: object) -> str:
    """Returns: `value` if it can be a hostname or IP address. Raises: ConfigError."""
    text = _str(file, keypath, value)
    if not text:
        raise ConfigError(file, keypath, "must not be empty; give a hostname or IP address such as 127.0.0.1")
    if len(text) > 253 or _BAD_HOST_CHAR_RE.search(text):
        raise ConfigError(
            file,
            keypath,
            f"must be a hostname or IP address (no spaces, '/' or control characters), got {_short(text)}",
        )
    return text


def _port(file: str, keypath: str, value: object) -> int:
    """Returns: `value` if it is a TCP port number. Raises: ConfigError."""
    return _int(file, keypath, value, 1, 65535, what="a port number from 1 to 65535")


# --------------------------------------------------------------------------------------------------
# Scalars and mappings. Every message names the value it got through repr(), so it stays one line.


def _mapping(
    file: str,
    keypath: str,
    raw: object,
    allowed: tuple[str, ...],
    *,
    allow_null: bool = False,
    example: str | None = None,
) -> Mapping[Any, Any]:
    """Returns: `raw` as a mapping whose keys are all in `allowed` (null is {} if `allow_null`).

    Raises:
        ConfigError: `raw` is not a mapping, or has a key not in `allowed` (the message lists them).
    """
    if raw is None and allow_null:
        return {}
    if not isinstance(raw, Mapping):
        like = f" like `{example}`" if example else ""
        raise ConfigError(file, keypath or _TOP, f"must be a mapping{like}, got {_describe(raw)}")
    for key in raw:
        if isinstance(key, str) and key in allowed:
            continue
        problem = (
            "unknown key" if isinstance(key, str) else f"unknown key {_describe(key)} (keys are strings)"
        )
        problem += f"; allowed here: {', '.join(allowed)}"
        if isinstance(key, str):
            close = difflib.get_close_matches(key, allowed, n=1)
            if close:
                problem += f" (did you mean {close[0]!r}?)"
        raise ConfigError(file, _join(keypath, key), problem)
    return raw


def _int(
    file: str,
    keypath: str,
    value: object,
    minimum: int,
    maximum: int | None = None,
    *,
    what: str | None = None,
    default: object = _MISSING,
) -> int:
    """Returns: `value` if it is an int (not a bool) within [minimum, maximum]. Raises: ConfigError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(
            file, keypath, f"must be an integer, got {_describe(value)}{_type_hint(value, default)}"
        )
    too_big = maximum is not None and value > maximum
    if value < minimum or too_big:
        if what is None:
            if minimum == 1:
                what = "a positive integer"
            elif minimum == 0:
                what = "0 or more"
            else:
                what = f"at least {minimum}"
            if maximum is not None:
                what += f" and at most {maximum}"
        raise ConfigError(file, keypath, f"must be {what}, got {value}")
    return value


def _optional_int(file: str, keypath: str, value: object) -> int | None:
    """Returns: None (unlimited) or a positive int. Raises: ConfigError."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(
            file,
            keypath,
            f"must be a positive integer or null (unlimited), got {_describe(value)}{_type_hint(value)}",
        )
    if value < 1:
        raise ConfigError(file, keypath, f"must be a positive integer or null (unlimited), got {value}")
    return value


def _optional_seconds(file: str, keypath: str, value: object) -> float | None:
    """Returns: None (unlimited) or a positive finite number of seconds, as a float. Raises: ConfigError."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(
            file,
            keypath,
            f"must be a positive number of seconds or null (unlimited), got {_describe(value)}"
            f"{_type_hint(value)}",
        )
    seconds = float(value)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(
            file, keypath, f"must be a positive, finite number of seconds or null (unlimited), got {value!r}"
        )
    return seconds


def _bool(file: str, keypath: str, value: object) -> bool:
    """Returns: `value` if it is a bool. Raises: ConfigError."""
    if not isinstance(value, bool):
        hint = (
            " (write it without quotes)"
            if isinstance(value, str) and value.lower() in ("true", "false")
            else ""
        )
        raise ConfigError(file, keypath, f"must be true or false, got {_describe(value)}{hint}")
    return value


def _str(file: str, keypath: str, value: object) -> str:
    """Returns: `value` if it is a str. Raises: ConfigError (suggesting quotes for YAML's non-strings)."""
    if not isinstance(value, str):
        hint = "; put it in quotes" if isinstance(value, (bool, int, float)) else ""
        raise ConfigError(file, keypath, f"must be a string, got {_describe(value)}{hint}")
    return value


def _type_hint(value: object, default: object = _MISSING) -> str:
    """Returns: advice for a common wrong type (a quoted number, an empty value), or ""."""
    if isinstance(value, str) and _INTEGER_STRING_RE.fullmatch(value.strip()):
        return " (write the number without quotes)"
    if value is None and default is not _MISSING:
        return f"; leave the key out for the default, {default}"
    return ""


def _describe(value: object) -> str:
    """Returns: how the YAML author would name `value` ("true", "the string '50'", "a list")."""
    if value is None:
        return "null (an empty value)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return _short(value)
    if isinstance(value, str):
        return f"the string {_short(value)}"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return f"a {type(value).__name__} ({_short(value)})"


def _short(value: object, limit: int = 60) -> str:
    """Returns: repr(value), cut to `limit` characters: one line, however odd the value."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _join(keypath: str, key: object) -> str:
    """Returns: the key path of `key` inside `keypath`: ``a.b`` for plain names, ``a['x.y']`` otherwise."""
    if isinstance(key, str) and len(key) <= 60 and _SIMPLE_KEY_RE.fullmatch(key):
        return f"{keypath}.{key}" if keypath else key
    return f"{keypath}[{_short(key)}]"


def _hostport(host: str, port: int) -> str:
    """Returns: ``host:port``, with an IPv6 literal in brackets."""
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def _tcp(host: str, port: int) -> str:
    """Returns: the ZeroMQ TCP endpoint of `host` and `port`."""
    return f"tcp://{_hostport(host, port)}"
