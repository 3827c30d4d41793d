"""The file's sections (`cluster`, its `retention` and `topics`, and `nodes`), each parsed and checked."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from wiber.config.model import (
    MAX_MESSAGE_BYTES_LIMIT,
    MAX_NODE_ID_LEN,
    MAX_NODES,
    MAX_REPLY_BYTES_LIMIT,
    PUB_PORT_OFFSET,
    METRICS_PORT_OFFSET,
    RAFT_PORT_OFFSET,
    ClusterConfig,
    NodeConfig,
    RetentionConfig,
    _hostport,
    _no_topics,
)
from wiber.config.values import (
    _BAD_HOST_CHAR_RE,
    _NODE_ID_RE,
    _bool,
    _describe,
    _int,
    _join,
    _mapping,
    _optional_int,
    _optional_seconds,
    _path_text,
    _short,
    _str,
)
from wiber.errors import ConfigError
from wiber.topics import name_problem

# --------------------------------------------------------------------------------------------------
# Sections.

_CLUSTER_KEYS: Final = tuple(f.name for f in dataclasses.fields(ClusterConfig))
_RETENTION_KEYS: Final = tuple(f.name for f in dataclasses.fields(RetentionConfig))
_NODE_KEYS: Final = tuple(f.name for f in dataclasses.fields(NodeConfig) if f.name != "metrics_port_defaulted")
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
    "max_reply_bytes",
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
    insecure = _bool(file, "cluster.insecure", get("insecure"))
    retention = _parse_retention(file, "cluster.retention", section.get("retention"), RetentionConfig())
    topics = _parse_topics(file, section.get("topics"), retention)

    if ints["max_message_bytes"] > MAX_MESSAGE_BYTES_LIMIT:
        raise ConfigError(
            file,
            "cluster.max_message_bytes",
            f"must be at most {MAX_MESSAGE_BYTES_LIMIT} (64 MiB), got {ints['max_message_bytes']}",
        )
    if ints["max_reply_bytes"] > MAX_REPLY_BYTES_LIMIT:
        raise ConfigError(
            file,
            "cluster.max_reply_bytes",
            f"must be at most {MAX_REPLY_BYTES_LIMIT} (1 GiB), got {ints['max_reply_bytes']}",
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
        insecure=insecure,
        max_reply_bytes=ints["max_reply_bytes"],
        retention=retention,
        topics=topics,
    )


def _data_dir(file: str, value: object) -> str:
    """Returns: `value` as an absolute path, relative ones resolved against the working directory."""
    text = _path_text(file, "cluster.data_dir", value, "the current directory")
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
        problem = name_problem(name)
        if problem is not None:
            raise ConfigError(file, topic_path, problem)
        topics[name] = _parse_retention(file, topic_path, value, base)
    return MappingProxyType(topics)


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
        for key, offset in (("raft_port", RAFT_PORT_OFFSET), ("pub_port", PUB_PORT_OFFSET),
                            ("metrics_port", METRICS_PORT_OFFSET)):
            if key == "metrics_port" and section.get(key) == 0:
                continue  # no metrics endpoint
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
                    f"{mine}{theirs}; every port, raft_port, pub_port and metrics_port must be unique on a host",
                )
            used[address] = (index, node_id, key, defaulted)

        nodes.append(
            NodeConfig(
                id=node_id,
                host=host,
                port=port,
                raft_port=ports["raft_port"][0],
                pub_port=ports["pub_port"][0],
                metrics_port=ports["metrics_port"][0] if "metrics_port" in ports else 0,
                metrics_port_defaulted=ports.get("metrics_port", (0, False))[1],
            )
        )
    return tuple(nodes)


def _defaulted(key: str, defaulted: bool, prefix: str = ", ") -> str:
    """Returns: a note that the port `key` was not written but defaulted, or "" when it was written."""
    if not defaulted:
        return ""
    offset = {"raft_port": RAFT_PORT_OFFSET, "pub_port": PUB_PORT_OFFSET}.get(key, METRICS_PORT_OFFSET)
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
