"""Tests of wiber.config: the default file, defaults, per-topic retention, and one case per kind of bad file.

Every refusal must be a single line ``FILE: KEY: PROBLEM`` naming the exact key path, because that
line is all an operator sees when a node refuses to start (docs/design.md section 2).
"""

from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import wiber.config as config_module
from wiber.config import (
    ClientRights,
    ClusterConfig,
    Config,
    NodeConfig,
    RetentionConfig,
    SecurityConfig,
    load_config,
    parse_config,
    pattern_problem,
)
from wiber.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
DEFAULT_FILE = REPO / "conf" / "cluster.yaml"

NODES = "nodes:\n  - {id: n1, host: 127.0.0.1, port: 9101}\n"
THREE_NODES = (
    "nodes:\n"
    "  - {id: n1, host: 127.0.0.1, port: 9101}\n"
    "  - {id: n2, host: 127.0.0.1, port: 9102}\n"
    "  - {id: n3, host: 127.0.0.1, port: 9103}\n"
)


def write(tmp_path: Path, text: str | bytes, name: str = "cluster.yaml") -> str:
    """Returns: the path of a new file in `tmp_path` holding `text`."""
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return str(path)


def refusal(path: str) -> ConfigError:
    """Returns: the ConfigError that loading `path` raises, after checking it is one well-formed line."""
    with pytest.raises(ConfigError) as info:
        load_config(path)
    err = info.value
    text = str(err)
    assert "\n" not in text and "\r" not in text, text
    assert text == f"{path}: {err.key}: {err.problem}"
    assert err.path == path
    return err


def cluster(body: str) -> str:
    """Returns: a file with `body` (one key per line) under `cluster:` and one node."""
    lines = "".join(f"  {line}\n" for line in body.splitlines())
    return f"cluster:\n{lines}{NODES}"


def node_list(*entries: str) -> str:
    """Returns: a file whose `nodes` are the given flow mappings."""
    return "nodes:\n" + "".join(f"  - {entry}\n" for entry in entries)


# --------------------------------------------------------------------------------------------------
# Good files.


def test_default_file_loads_with_the_documented_addresses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(str(DEFAULT_FILE))

    assert [n.id for n in config.nodes] == ["n1", "n2", "n3"]
    assert [n.client_addr for n in config.nodes] == [
        "tcp://127.0.0.1:9101",
        "tcp://127.0.0.1:9102",
        "tcp://127.0.0.1:9103",
    ]
    assert [n.raft_addr for n in config.nodes] == [
        "tcp://127.0.0.1:9201",
        "tcp://127.0.0.1:9202",
        "tcp://127.0.0.1:9203",
    ]
    assert [n.pub_addr for n in config.nodes] == [
        "tcp://127.0.0.1:9301",
        "tcp://127.0.0.1:9302",
        "tcp://127.0.0.1:9303",
    ]
    # data_dir is relative to the working directory, not to conf/.
    assert config.cluster.data_dir == str(tmp_path / "data")
    assert config.node_data_dir("n2") == str(tmp_path / "data" / "n2")
    assert config.cluster == ClusterConfig(data_dir=str(tmp_path / "data"))


def test_defaults_apply_when_cluster_is_left_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(write(tmp_path, NODES))

    c = config.cluster
    assert c.data_dir == str(tmp_path / "data")
    assert (c.heartbeat_ms, c.election_timeout_ms, c.max_message_bytes) == (50, 300, 1048576)
    assert (c.reorder_window_ms, c.request_timeout_ms, c.snapshot_every) == (0, 5000, 10000)
    assert (c.session_window, c.max_sessions, c.fsync) == (4096, 10000, True)
    assert c.retention == RetentionConfig(None, None, None)
    assert dict(c.topics) == {}
    assert config.nodes == (NodeConfig("n1", "127.0.0.1", 9101, 9201, 9301, 9401),)
    assert config.nodes[0].metrics_port_defaulted


def test_metrics_port_is_written_defaulted_or_off(tmp_path: Path) -> None:
    """metrics_port defaults to port + 300, 0 turns it off, and it must not clash with another port."""
    text = node_list("{id: n1, host: 127.0.0.1, port: 9101, metrics_port: 9500}",
                     "{id: n2, host: 127.0.0.1, port: 9102, metrics_port: 0}",
                     "{id: n3, host: 127.0.0.1, port: 9103}")
    n1, n2, n3 = load_config(write(tmp_path, text)).nodes
    assert (n1.metrics_port, n1.metrics_port_defaulted) == (9500, False)
    assert (n2.metrics_port, n2.metrics_port_defaulted) == (0, False)
    assert (n3.metrics_port, n3.metrics_port_defaulted) == (9403, True)
    clash = node_list("{id: n1, host: 127.0.0.1, port: 9101}", "{id: n2, host: 127.0.0.1, port: 9102, metrics_port: 9101}")
    with pytest.raises(ConfigError, match=r"nodes\[1\]\.metrics_port.*already uses as port"):
        load_config(write(tmp_path, clash))


@pytest.mark.parametrize("section", ["cluster:\n", "cluster: {}\n", "cluster: {retention: , topics: }\n"])
def test_empty_sections_mean_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, section: str) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(write(tmp_path, section + NODES))
    assert config.cluster == ClusterConfig(data_dir=str(tmp_path / "data"))


def test_every_key_is_read(tmp_path: Path) -> None:
    text = (
        "cluster:\n"
        f"  data_dir: {tmp_path / 'state'}\n"
        "  heartbeat_ms: 20\n"
        "  election_timeout_ms: 150\n"
        "  max_message_bytes: 67108864\n"
        "  reorder_window_ms: 25\n"
        "  request_timeout_ms: 2000\n"
        "  snapshot_every: 500\n"
        "  session_window: 64\n"
        "  max_sessions: 100\n"
        "  fsync: false\n"
        "  retention: {max_messages: 1000, max_bytes: 1_000_000, max_age_s: 3600}\n"
        "nodes:\n"
        "  - {id: a.1, host: localhost, port: 7000, raft_port: 7001, pub_port: 7002}\n"
        "  - {id: b-2, host: '::1', port: 7000}\n"
    )
    config = load_config(write(tmp_path, text))
    assert config.cluster == ClusterConfig(
        data_dir=str(tmp_path / "state"),
        heartbeat_ms=20,
        election_timeout_ms=150,
        max_message_bytes=64 * 1024 * 1024,
        reorder_window_ms=25,
        request_timeout_ms=2000,
        snapshot_every=500,
        session_window=64,
        max_sessions=100,
        fsync=False,
        retention=RetentionConfig(max_messages=1000, max_bytes=1_000_000, max_age_s=3600.0),
    )
    assert isinstance(config.cluster.retention.max_age_s, float)
    a, b = config.nodes
    assert (a.client_addr, a.raft_addr, a.pub_addr) == (
        "tcp://localhost:7000",
        "tcp://localhost:7001",
        "tcp://localhost:7002",
    )
    assert (b.client_addr, b.raft_addr, b.pub_addr) == (
        "tcp://[::1]:7000",
        "tcp://[::1]:7100",
        "tcp://[::1]:7200",
    )


def test_per_topic_retention_overrides_key_by_key(tmp_path: Path) -> None:
    text = cluster(
        "retention: {max_messages: 1000, max_bytes: 5000}\n"
        "topics:\n"
        "  audit: {max_age_s: 86400}\n"
        "  firehose: {max_bytes: null, max_messages: 10}\n"
        "  orders.eu: {}\n"
        "  plain:\n"
        '  "caf\u00e9 \u2615": {max_age_s: 1.5}\n'
    )
    c = load_config(write(tmp_path, text)).cluster
    assert c.retention == RetentionConfig(max_messages=1000, max_bytes=5000)
    assert dict(c.topics) == {
        "audit": RetentionConfig(max_messages=1000, max_bytes=5000, max_age_s=86400.0),
        "firehose": RetentionConfig(max_messages=10, max_bytes=None, max_age_s=None),
        "orders.eu": c.retention,
        "plain": c.retention,
        "caf\u00e9 \u2615": RetentionConfig(max_messages=1000, max_bytes=5000, max_age_s=1.5),
    }
    assert list(c.topics) == ["audit", "firehose", "orders.eu", "plain", "caf\u00e9 \u2615"]
    assert c.topics.get("unlisted", c.retention) == c.retention
    with pytest.raises(TypeError):
        c.topics["new"] = RetentionConfig()  # type: ignore[index]


def test_config_is_frozen(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, NODES))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.cluster.heartbeat_ms = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.nodes[0].port = 1  # type: ignore[misc]
    assert dict(ClusterConfig().topics) == {}
    with pytest.raises(TypeError):
        ClusterConfig().topics["x"] = RetentionConfig()  # type: ignore[index]


def test_node_lookup_peers_and_data_dirs(tmp_path: Path) -> None:
    path = write(tmp_path, f"cluster: {{data_dir: {tmp_path}}}\n{THREE_NODES}")
    config = load_config(path)
    assert config.node("n2").port == 9102
    assert [n.id for n in config.peers("n2")] == ["n1", "n3"]
    assert config.node_data_dir("n3") == os.path.join(str(tmp_path), "n3")

    for call in (config.node, config.peers, config.node_data_dir):
        with pytest.raises(ConfigError) as info:
            call("n9")
        assert str(info.value) == f"{path}: nodes: no node with id 'n9'; known: n1, n2, n3"


def test_data_dir_expands_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    config = load_config(write(tmp_path, cluster("data_dir: ~/wiber")))
    assert config.cluster.data_dir == str(tmp_path / "wiber")


def test_parse_config_takes_a_loaded_document() -> None:
    raw: dict[str, Any] = {"nodes": [{"id": "n1", "host": "h", "port": 1000}], "cluster": {"fsync": False}}
    config = parse_config(raw, "inline.yaml")
    assert isinstance(config, Config)
    assert config.path == "inline.yaml"
    assert config.cluster.fsync is False
    assert config.nodes[0].raft_port == 1100

    raw["nodes"][0]["port"] = "1000"
    with pytest.raises(ConfigError) as info:
        parse_config(raw, "inline.yaml")
    assert info.value.key == "nodes[0].port"


def test_docstring_documents_every_key() -> None:
    """The README's configuration reference is built from the module docstring: no key may be missing."""
    doc = config_module.__doc__ or ""
    for cls in (ClusterConfig, RetentionConfig, NodeConfig):
        for f in dataclasses.fields(cls):
            if f.name == "metrics_port_defaulted":
                continue  # not a key: whether metrics_port was written
            assert f"\n{f.name} (" in doc or f"\n    {f.name} (" in doc, f.name


# --------------------------------------------------------------------------------------------------
# Bad files: one case per kind, with the exact key path and a phrase of the problem.

EIGHT_NODES = node_list(*(f"{{id: n{i}, host: 127.0.0.1, port: {9100 + i}}}" for i in range(8)))

BAD_FILES: list[tuple[str, str, str, str]] = [
    # (case, file text, key path, phrase that must be in the problem)
    ("yaml-syntax", "cluster: [1, 2\nnodes: []\n", "(yaml)", "line 2, column"),
    ("yaml-tab", "nodes:\n\t- {id: n1}\n", "(yaml)", "line 2, column 1"),
    ("yaml-two-documents", NODES + "---\n" + NODES, "(yaml)", "line 3"),
    (
        "yaml-duplicate-key",
        cluster("heartbeat_ms: 50\nheartbeat_ms: 60"),
        "(yaml)",
        "'heartbeat_ms' appears twice",
    ),
    ("empty-file", "", "(top level)", "the file is empty"),
    ("comments-only", "# nothing\n", "(top level)", "the file is empty"),
    ("top-is-list", "- {id: n1, host: h, port: 1}\n", "(top level)", "must be a mapping, got a list"),
    ("top-is-scalar", "hello\n", "(top level)", "must be a mapping, got the string 'hello'"),
    ("missing-nodes", "cluster: {heartbeat_ms: 50}\n", "nodes", "missing required key"),
    ("unknown-top-key", NODES + "clustr: {}\n", "clustr", "did you mean 'cluster'"),
    (
        "unknown-cluster-key",
        cluster("heartbeat: 50"),
        "cluster.heartbeat",
        "allowed here: data_dir, heartbeat_ms",
    ),
    ("unknown-non-string-key", cluster("on: 1"), "cluster[True]", "unknown key true (keys are strings)"),
    (
        "unknown-node-key",
        node_list("{id: n1, host: h, port: 1, prot: 2}"),
        "nodes[0].prot",
        "did you mean 'port'",
    ),
    (
        "unknown-retention-key",
        cluster("retention: {max_msgs: 5}"),
        "cluster.retention.max_msgs",
        "max_messages",
    ),
    (
        "unknown-topic-key",
        cluster("topics: {audit: {max_age: 5}}"),
        "cluster.topics.audit.max_age",
        "max_age_s",
    ),
    ("cluster-not-mapping", "cluster: [1]\n" + NODES, "cluster", "must be a mapping, got a list"),
    ("retention-not-mapping", cluster("retention: 100"), "cluster.retention", "must be a mapping, got 100"),
    ("bool-for-int", cluster("heartbeat_ms: true"), "cluster.heartbeat_ms", "must be an integer, got true"),
    (
        "string-for-int",
        cluster("heartbeat_ms: '50'"),
        "cluster.heartbeat_ms",
        "write the number without quotes",
    ),
    (
        "float-for-int",
        cluster("max_message_bytes: 1.5"),
        "cluster.max_message_bytes",
        "must be an integer, got 1.5",
    ),
    (
        "null-for-int",
        cluster("session_window:"),
        "cluster.session_window",
        "got null (an empty value); leave the key out for the default, 4096",
    ),
    (
        "heartbeat-zero",
        cluster("heartbeat_ms: 0"),
        "cluster.heartbeat_ms",
        "must be a positive integer, got 0",
    ),
    (
        "election-negative",
        cluster("election_timeout_ms: -1"),
        "cluster.election_timeout_ms",
        "positive integer",
    ),
    ("max-bytes-zero", cluster("max_message_bytes: 0"), "cluster.max_message_bytes", "positive integer"),
    (
        "request-timeout-zero",
        cluster("request_timeout_ms: 0"),
        "cluster.request_timeout_ms",
        "positive integer",
    ),
    ("snapshot-zero", cluster("snapshot_every: 0"), "cluster.snapshot_every", "positive integer"),
    ("session-window-zero", cluster("session_window: 0"), "cluster.session_window", "positive integer"),
    ("max-sessions-zero", cluster("max_sessions: 0"), "cluster.max_sessions", "positive integer"),
    (
        "reorder-negative",
        cluster("reorder_window_ms: -5"),
        "cluster.reorder_window_ms",
        "must be 0 or more, got -5",
    ),
    (
        "heartbeat-not-below-election",
        cluster("heartbeat_ms: 300\nelection_timeout_ms: 300"),
        "cluster.heartbeat_ms",
        "must be less than cluster.election_timeout_ms (300), got 300",
    ),
    (
        "max-message-over-64mib",
        cluster("max_message_bytes: 67108865"),
        "cluster.max_message_bytes",
        "must be at most 67108864 (64 MiB)",
    ),
    (
        "reorder-not-below-request-timeout",
        cluster("reorder_window_ms: 5000"),
        "cluster.reorder_window_ms",
        "less than cluster.request_timeout_ms (5000)",
    ),
    (
        "fsync-string",
        cluster("fsync: 'false'"),
        "cluster.fsync",
        "must be true or false, got the string 'false'",
    ),
    ("fsync-int", cluster("fsync: 1"), "cluster.fsync", "must be true or false, got 1"),
    ("data-dir-empty", cluster("data_dir: ''"), "cluster.data_dir", "must not be empty"),
    ("data-dir-not-string", cluster("data_dir: [a]"), "cluster.data_dir", "must be a string, got a list"),
    (
        "retention-zero",
        cluster("retention: {max_messages: 0}"),
        "cluster.retention.max_messages",
        "positive integer",
    ),
    (
        "retention-bytes-bool",
        cluster("retention: {max_bytes: true}"),
        "cluster.retention.max_bytes",
        "got true",
    ),
    ("retention-age-zero", cluster("retention: {max_age_s: 0}"), "cluster.retention.max_age_s", "positive"),
    ("retention-age-inf", cluster("retention: {max_age_s: .inf}"), "cluster.retention.max_age_s", "finite"),
    (
        "retention-age-string",
        cluster("retention: {max_age_s: 1d}"),
        "cluster.retention.max_age_s",
        "the string '1d'",
    ),
    (
        "topic-retention-neg",
        cluster("topics: {audit: {max_bytes: -1}}"),
        "cluster.topics.audit.max_bytes",
        "positive",
    ),
    ("topics-not-mapping", cluster("topics: [audit]"), "cluster.topics", "must be a mapping of topic name"),
    ("topic-reserved", cluster("topics: {$sys: {}}"), "cluster.topics['$sys']", "must not start with '$'"),
    ("topic-empty", cluster("topics: {'': {}}"), "cluster.topics['']", "must not be empty"),
    ("topic-nul", cluster('topics: {"a\\0b": {}}'), "cluster.topics['a\\x00b']", "NUL"),
    (
        "topic-not-string",
        cluster("topics: {7: {}}"),
        "cluster.topics[7]",
        "must be a string, got 7; quote it",
    ),
    (
        "topic-too-long",
        cluster("topics: {" + "t" * 256 + ": {}}"),
        "cluster.topics['" + "t" * 56 + "...]",
        "this one is 256",
    ),
    ("topic-not-mapping", cluster("topics: {audit: 5}"), "cluster.topics.audit", "must be a mapping, got 5"),
    ("nodes-not-list", "nodes: {id: n1, host: h, port: 1}\n", "nodes", "must be a list of nodes"),
    ("nodes-null", "nodes:\n", "nodes", "must be a list of nodes"),
    ("nodes-empty", "nodes: []\n", "nodes", "at least 1 node is required"),
    ("nodes-too-many", EIGHT_NODES, "nodes", "at most 7 nodes are supported, got 8"),
    ("node-not-mapping", node_list("n1"), "nodes[0]", "must be a mapping like `{id: n1"),
    ("node-null", "nodes:\n  -\n", "nodes[0]", "got null"),
    ("node-missing-id", node_list("{host: h, port: 1}"), "nodes[0].id", "missing required key"),
    ("node-missing-host", node_list("{id: n1, port: 1}"), "nodes[0].host", "missing required key"),
    ("node-missing-port", node_list("{id: n1, host: h}"), "nodes[0].port", "missing required key"),
    ("id-empty", node_list("{id: '', host: h, port: 1}"), "nodes[0].id", "must not be empty"),
    (
        "id-not-string",
        node_list("{id: 1, host: h, port: 1}"),
        "nodes[0].id",
        "must be a string, got 1; put it in quotes",
    ),
    ("id-bad-chars", node_list("{id: n 1, host: h, port: 1}"), "nodes[0].id", "only letters, digits"),
    ("id-dot-dot", node_list("{id: .., host: h, port: 1}"), "nodes[0].id", "not be . or .."),
    ("id-slash", node_list("{id: a/b, host: h, port: 1}"), "nodes[0].id", "only letters, digits"),
    (
        "id-too-long",
        node_list("{id: " + "n" * 65 + ", host: h, port: 1}"),
        "nodes[0].id",
        "at most 64 characters",
    ),
    (
        "id-duplicate",
        node_list("{id: n1, host: h, port: 1}", "{id: n2, host: h, port: 2}", "{id: n1, host: h, port: 3}"),
        "nodes[2].id",
        "duplicate id 'n1', already used by nodes[0]",
    ),
    ("host-empty", node_list("{id: n1, host: '', port: 1}"), "nodes[0].host", "must not be empty"),
    (
        "host-space",
        node_list("{id: n1, host: 'my host', port: 1}"),
        "nodes[0].host",
        "hostname or IP address",
    ),
    (
        "host-not-string",
        node_list("{id: n1, host: [h], port: 1}"),
        "nodes[0].host",
        "must be a string, got a list",
    ),
    (
        "port-zero",
        node_list("{id: n1, host: h, port: 0}"),
        "nodes[0].port",
        "a port number from 1 to 65535, got 0",
    ),
    ("port-too-big", node_list("{id: n1, host: h, port: 65536}"), "nodes[0].port", "1 to 65535, got 65536"),
    ("port-string", node_list("{id: n1, host: h, port: '9101'}"), "nodes[0].port", "without quotes"),
    (
        "port-bool",
        node_list("{id: n1, host: h, port: true}"),
        "nodes[0].port",
        "must be an integer, got true",
    ),
    (
        "raft-port-zero",
        node_list("{id: n1, host: h, port: 1, raft_port: 0}"),
        "nodes[0].raft_port",
        "1 to 65535",
    ),
    (
        "pub-port-float",
        node_list("{id: n1, host: h, port: 1, pub_port: 2.0}"),
        "nodes[0].pub_port",
        "got 2.0",
    ),
    (
        "raft-port-default-overflows",
        node_list("{id: n1, host: h, port: 65500}"),
        "nodes[0].raft_port",
        "default port+100 = 65600 is over 65535; set raft_port explicitly",
    ),
    (
        "pub-port-default-overflows",
        node_list("{id: n1, host: h, port: 65400, raft_port: 1000}"),
        "nodes[0].pub_port",
        "default port+200 = 65600 is over 65535; set pub_port explicitly",
    ),
    (
        "port-duplicate",
        node_list("{id: n1, host: h, port: 9101}", "{id: n2, host: h, port: 9101}"),
        "nodes[1].port",
        "node 'n2' uses h:9101 as port, which node 'n1' already uses as port (nodes[0].port); every port",
    ),
    (
        "port-hits-defaulted-raft-port",
        node_list("{id: n1, host: h, port: 9101}", "{id: n2, host: h, port: 9201}"),
        "nodes[1].port",
        "node 'n2' uses h:9201 as port, which node 'n1' already uses as raft_port "
        "(nodes[0].raft_port, defaulted to port+100)",
    ),
    (
        "defaulted-pub-port-hits-port",
        node_list("{id: n1, host: h, port: 9301}", "{id: n2, host: h, port: 9101}"),
        "nodes[1].pub_port",
        "node 'n2' uses h:9301 as pub_port (defaulted to port+200), which node 'n1' already uses as port "
        "(nodes[0].port)",
    ),
    (
        "port-duplicate-within-node",
        node_list("{id: n1, host: h, port: 9101, raft_port: 9101}"),
        "nodes[0].raft_port",
        "node 'n1' uses h:9101 as raft_port and also as port;",
    ),
    (
        "port-duplicate-host-case",
        node_list("{id: n1, host: LocalHost, port: 9101}", "{id: n2, host: localhost, port: 9101}"),
        "nodes[1].port",
        "node 'n1'",
    ),
]


@pytest.mark.parametrize(
    ("text", "key", "phrase"), [case[1:] for case in BAD_FILES], ids=[c[0] for c in BAD_FILES]
)
def test_bad_file_is_refused_with_one_line_naming_the_key(
    tmp_path: Path, text: str, key: str, phrase: str
) -> None:
    err = refusal(write(tmp_path, text))
    assert err.key == key, str(err)
    assert phrase in err.problem, str(err)


def test_every_positive_int_key_refuses_zero(tmp_path: Path) -> None:
    """Guards the table above against a key added to the positive list without a case."""
    from wiber.config import sections

    for key in sections._POSITIVE_INT_KEYS:
        err = refusal(write(tmp_path, cluster(f"{key}: 0")))
        assert err.key == f"cluster.{key}"


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.yaml")
    err = refusal(path)
    assert err.key == "(file)"
    assert err.problem == f"no such file (looked for {path})"


def test_directory_instead_of_file(tmp_path: Path) -> None:
    err = refusal(str(tmp_path))
    assert err.key == "(file)"
    assert "is a directory" in err.problem


def test_unreadable_file(tmp_path: Path) -> None:
    """A path that exists and cannot be opened for reading, for root too (a mode-0 file is readable
    by root, which CI is): a Unix socket's name."""
    path = str(tmp_path / "cluster.yaml")
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(path)
        err = refusal(path)
    finally:
        sock.close()
    assert err.key == "(file)"
    assert "cannot read it" in err.problem


def test_not_text(tmp_path: Path) -> None:
    err = refusal(write(tmp_path, b"nodes: \x80\xff\n"))
    assert err.key == "(yaml)"
    assert "at byte 7" in err.problem


def test_topic_name_over_255_utf8_bytes(tmp_path: Path) -> None:
    name = "\u00e9" * 128  # 128 characters, 256 bytes
    err = refusal(write(tmp_path, cluster(f"topics: {{{name}: {{}}}}")))
    assert err.key.startswith("cluster.topics['\u00e9")
    assert "at most 255 bytes of UTF-8, this one is 256" in err.problem
    assert load_config(write(tmp_path, cluster(f"topics: {{{name[:-1]}x: {{}}}}"))).cluster.topics


def test_errors_stay_on_one_line_whatever_the_value(tmp_path: Path) -> None:
    err = refusal(write(tmp_path, node_list('{id: "n\\n1", host: h, port: 1}')))
    assert err.key == "nodes[0].id"
    err = refusal(write(tmp_path, cluster('"bad\\nkey": 1')))
    assert err.key == "cluster['bad\\nkey']"


# --------------------------------------------------------------------------------------------------
# Whatever the document, the only outcome is a Config or a one-line ConfigError.

_scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8)
_documents = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(_scalars.filter(lambda v: v == v), inner, max_size=4)
    ),
    max_leaves=12,
)
_field_names = st.sampled_from(
    [f.name for cls in (ClusterConfig, RetentionConfig, NodeConfig) for f in dataclasses.fields(cls)]
)


def _check_outcome(raw: object) -> None:
    try:
        parse_config(raw, "fuzz.yaml")
    except ConfigError as err:
        assert "\n" not in str(err) and "\r" not in str(err), str(err)
        assert str(err).startswith("fuzz.yaml: ")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_documents)
def test_any_document_gives_config_or_config_error(raw: object) -> None:
    _check_outcome(raw)


@settings(max_examples=300, deadline=None)
@given(section=st.sampled_from(["cluster", "node", "retention", "topic"]), key=_field_names, value=_documents)
def test_any_value_in_a_valid_file_gives_config_or_config_error(
    section: str, key: str, value: object
) -> None:
    node: dict[str, object] = {"id": "n1", "host": "h", "port": 9101}
    retention: dict[str, object] = {}
    raw: dict[str, Any] = {"cluster": {"retention": retention, "topics": {"t": {}}}, "nodes": [node]}
    if section == "cluster":
        raw["cluster"][key] = value
    elif section == "node":
        node[key] = value
    elif section == "retention":
        retention[key] = value
    else:
        raw["cluster"]["topics"]["t"] = {key: value}
    _check_outcome(raw)


# --------------------------------------------------------------------------------------------------
# The security section, insecure and max_reply_bytes (docs/design.md section 10).

SECURED = (
    "security:\n"
    "  keys_dir: keys\n"
    "  clients:\n"
    "    - {name: app, publish: [orders.>, 'audit.*.eu'], subscribe: ['>']}\n"
    "    - {name: ops, admin: true}\n"
    "    - {name: reader, subscribe: [orders.eu]}\n"
)


def security(body: str) -> str:
    """Returns: a file with one node and `body` (lines) under `security:`."""
    lines = "".join(f"  {line}\n" for line in body.splitlines())
    return f"{NODES}security:\n{lines}"


def test_security_section_is_read_with_keys_dir_relative_to_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # keys_dir follows the file, not the working directory
    conf = tmp_path / "conf"
    conf.mkdir()
    config = load_config(write(conf, NODES + SECURED))
    assert config.security == SecurityConfig(
        keys_dir=str(conf / "keys"),
        clients=(
            ClientRights("app", publish=("orders.>", "audit.*.eu"), subscribe=(">",)),
            ClientRights("ops", admin=True),
            ClientRights("reader", subscribe=("orders.eu",)),
        ),
    )
    absolute = load_config(write(conf, security(f"keys_dir: {tmp_path / 'k'}/../k2"))).security
    assert absolute == SecurityConfig(keys_dir=str(tmp_path / "k2"))
    assert load_config(write(conf, NODES)).security is None


def test_insecure_and_max_reply_bytes(tmp_path: Path) -> None:
    c = load_config(write(tmp_path, NODES)).cluster
    assert (c.insecure, c.max_reply_bytes) == (False, 4 << 20)
    c = load_config(write(tmp_path, cluster("insecure: true\nmax_reply_bytes: 1000"))).cluster
    assert (c.insecure, c.max_reply_bytes) == (True, 1000)


def test_docstring_documents_the_security_keys() -> None:
    doc = config_module.__doc__ or ""
    for cls in (SecurityConfig, ClientRights):
        for f in dataclasses.fields(cls):
            if f.name == "metrics_port_defaulted":
                continue  # not a key: whether metrics_port was written
            assert f"\n{f.name} (" in doc or f"\n    {f.name} (" in doc, f.name


@pytest.mark.parametrize("pattern", [">", "*", "orders", "orders.>", "*.eu", "a.*.c.>", "caf\u00e9.*",
                                     "a-b_c"])
def test_good_topic_patterns(pattern: str) -> None:
    assert pattern_problem(pattern) is None


BAD_SECURITY: list[tuple[str, str, str, str]] = [
    ("security-empty", NODES + "security:\n", "security", "is empty; give at least keys_dir"),
    ("security-not-mapping", NODES + "security: keys\n", "security", "must be a mapping"),
    ("security-unknown-key", security("keys_dir: k\nclient: []"), "security.client",
     "did you mean 'clients'"),
    ("keys-dir-missing", security("clients: []"), "security.keys_dir", "missing required key"),
    ("keys-dir-empty", security("keys_dir: ''"), "security.keys_dir", "must not be empty"),
    ("keys-dir-not-string", security("keys_dir: 5"), "security.keys_dir", "must be a string, got 5"),
    ("clients-not-list", security("keys_dir: k\nclients: {name: app}"), "security.clients",
     "must be a list"),
    ("client-not-mapping", security("keys_dir: k\nclients: [app]"), "security.clients[0]",
     "must be a mapping"),
    ("client-unknown-key", security("keys_dir: k\nclients: [{name: a, publsh: [x]}]"),
     "security.clients[0].publsh", "did you mean 'publish'"),
    ("client-no-name", security("keys_dir: k\nclients: [{admin: true}]"), "security.clients[0].name",
     "missing required key"),
    ("client-bad-name", security("keys_dir: k\nclients: [{name: 'a/b'}]"), "security.clients[0].name",
     "letters, digits"),
    ("client-name-dotdot", security("keys_dir: k\nclients: [{name: '..'}]"), "security.clients[0].name",
     "not ."),
    ("client-duplicate", security("keys_dir: k\nclients: [{name: a}, {name: a}]"), "security.clients[1].name",
     "duplicate name 'a', already used by security.clients[0]"),
    ("client-is-node", security("keys_dir: k\nclients: [{name: n1}]"), "security.clients[0].name",
     "'n1' is a node id"),
    ("admin-not-bool", security("keys_dir: k\nclients: [{name: a, admin: 'yes'}]"),
     "security.clients[0].admin",
     "must be true or false"),
    ("patterns-string", security("keys_dir: k\nclients: [{name: a, publish: orders.>}]"),
     "security.clients[0].publish", "must be a list of topic patterns"),
    ("pattern-not-string", security("keys_dir: k\nclients: [{name: a, subscribe: [5]}]"),
     "security.clients[0].subscribe[0]", "must be a string, got 5"),
    ("pattern-rest-not-last", security("keys_dir: k\nclients: [{name: a, subscribe: ['>.x']}]"),
     "security.clients[0].subscribe[0]", "only be the last token"),
    ("pattern-partial-wildcard", security("keys_dir: k\nclients: [{name: a, publish: ['orders*']}]"),
     "security.clients[0].publish[0]", "only as whole tokens"),
    ("pattern-empty-token", security("keys_dir: k\nclients: [{name: a, publish: ['a..b']}]"),
     "security.clients[0].publish[0]", "empty token"),
    ("pattern-empty", security("keys_dir: k\nclients: [{name: a, publish: ['']}]"),
     "security.clients[0].publish[0]", "a topic pattern must not be empty"),
    ("pattern-reserved", security("keys_dir: k\nclients: [{name: a, publish: ['$hb']}]"),
     "security.clients[0].publish[0]", "start with '$'"),
    ("insecure-string", cluster("insecure: 'true'"), "cluster.insecure", "without quotes"),
    ("max-reply-zero", cluster("max_reply_bytes: 0"), "cluster.max_reply_bytes", "positive integer"),
    ("max-reply-huge", cluster("max_reply_bytes: 1073741825"), "cluster.max_reply_bytes",
     "at most 1073741824"),
]


@pytest.mark.parametrize(
    ("text", "key", "phrase"), [case[1:] for case in BAD_SECURITY], ids=[c[0] for c in BAD_SECURITY]
)
def test_bad_security_is_refused_with_one_line_naming_the_key(
    tmp_path: Path, text: str, key: str, phrase: str
) -> None:
    test_bad_file_is_refused_with_one_line_naming_the_key(tmp_path, text, key, phrase)


@settings(max_examples=200, deadline=None)
@given(key=st.sampled_from(["keys_dir", "clients", "name", "publish", "subscribe", "admin"]),
       value=_documents)
def test_any_value_in_the_security_section_gives_config_or_config_error(key: str, value: object) -> None:
    client: dict[str, object] = {"name": "app"}
    section: dict[str, object] = {"keys_dir": "keys", "clients": [client]}
    if key in ("keys_dir", "clients"):
        section[key] = value
    else:
        client[key] = value
    _check_outcome({"nodes": [{"id": "n1", "host": "h", "port": 9101}], "security": section})
