"""wiber.node.auth without sockets: topic patterns, client rights, the ZAP handler's answers, key
loading with errors that name the file, the loopback rule, and the sender of a transfer frame."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import zmq
import zmq.auth
from zmq.utils import z85

from wiber.config import ClientRights, ClusterConfig, Config, NodeConfig, SecurityConfig
from wiber.errors import NodeStartError
from wiber.node.auth import (
    DOMAIN_CLIENT,
    DOMAIN_PUB,
    DOMAIN_RAFT,
    NodeSecurity,
    Rights,
    TopicPatterns,
    ZapHandler,
    check_exposure,
    claimed_sender,
    load_keys,
)
from wiber.storage.transfer import Data, Done, Request


@pytest.mark.parametrize(("pattern", "topic", "expected"), [
    (">", "a", True),
    (">", "a.b.c", True),
    ("orders", "orders", True),
    ("orders", "orders.eu", False),
    ("orders.>", "orders", False),
    ("orders.>", "orders.eu", True),
    ("orders.>", "orders.eu.new", True),
    ("orders.*", "orders.eu", True),
    ("orders.*", "orders.eu.new", False),
    ("orders.*", "orders", False),
    ("*.eu", "orders.eu", True),
    ("*.eu", "eu", False),
    ("a.*.c.>", "a.b.c.d", True),
    ("a.*.c.>", "a.b.c", False),
    ("a.*", "a.", True),       # an empty last token is still one token
    ("a.*", "b.x", False),
    ("caf\u00e9.*", "caf\u00e9.x", True),
])
def test_topic_patterns(pattern: str, topic: str, expected: bool) -> None:
    patterns = TopicPatterns([pattern])
    assert (topic in patterns) is expected
    assert (topic in patterns) is expected  # the cached verdict agrees


def test_many_topics_keep_the_cache_bounded() -> None:
    patterns = TopicPatterns(["t.*"])
    for k in range(10_000):
        assert f"t.{k}" in patterns and f"u.{k}" not in patterns
    assert len(patterns._verdicts) <= 4096


def test_rights_by_op() -> None:
    app = Rights.of(ClientRights("app", publish=("orders.>",), subscribe=("orders.*", "audit")))
    assert app.refusal("PING", None) is None and app.refusal("TOPICS", None) is None
    assert app.refusal("PUB", "orders.eu") is None and app.refusal("PUB_BATCH", "orders.eu.x") is None
    assert "may not publish" in str(app.refusal("PUB", "audit"))
    assert app.refusal("HISTORY", "audit") is None and app.refusal("SUB", "orders.eu") is None
    assert "may not read" in str(app.refusal("HISTORY", "orders.eu.x"))
    assert "needs admin" in str(app.refusal("STATUS", None))
    assert "needs admin" in str(app.refusal("LEAVE", None))  # a future cluster command: admin unless opened
    assert app.may_see("orders.eu.x") and app.may_see("audit") and not app.may_see("secret")
    ops = Rights.of(ClientRights("ops", admin=True))
    assert all(ops.refusal(op, "any") is None for op in ("STATUS", "PUB", "HISTORY", "LEAVE"))
    assert ops.read.everything and ops.publish.everything


def _zap(domain: str, key: bytes, mechanism: bytes = b"CURVE") -> list[bytes]:
    """Returns: a ZAP request as the handler's ROUTER receives it."""
    return [b"\x00rid", b"", b"1.0", b"7", domain.encode(), b"10.0.0.9", b"", mechanism, key]


def test_zap_admits_per_domain_with_the_name_as_user_id(caplog: pytest.LogCaptureFixture) -> None:
    n2, app, stranger = (z85.decode(zmq.curve_keypair()[0]) for _ in range(3))
    zap = ZapHandler("n1", {DOMAIN_RAFT: {n2: "n2"}, DOMAIN_CLIENT: {app: "app"}, DOMAIN_PUB: {}})
    assert zap.answer(_zap("raft", n2)) == [b"\x00rid", b"", b"1.0", b"7", b"200", b"OK", b"n2", b""]
    assert zap.answer(_zap("client", app))[4:7] == [b"200", b"OK", b"app"]  # type: ignore[index]
    caplog.set_level(logging.DEBUG, "wiber.node.auth")
    for domain, key in (("raft", app), ("client", n2), ("pub", app), ("client", stranger), ("client", stranger)):
        reply = zap.answer(_zap(domain, key))
        assert reply is not None and reply[4] == b"400" and reply[6] == b""
    assert zap.rejected == {"raft": 1, "client": 3, "pub": 1}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 4  # the stranger's retry is logged at DEBUG
    assert zap.answer(_zap("client", b"", b"NULL"))[4] == b"400"  # type: ignore[index]
    assert zap.answer(_zap("elsewhere", app))[4] == b"400"  # type: ignore[index]
    assert zap.rejected["other"] == 1
    assert zap.answer([b"rid", b"no delimiter"]) is None
    assert zap.answer([b"rid", b"", b"2.0", b"7", b"client", b"a", b"", b"CURVE", app]) is None


def _write_keys(keys_dir: Path, *names: str) -> dict[str, tuple[bytes, bytes]]:
    keys_dir.mkdir(exist_ok=True)
    out = {}
    for name in names:
        _, secret_file = zmq.auth.create_certificates(str(keys_dir), name)
        os.chmod(secret_file, 0o600)
        public, secret = zmq.auth.load_certificate(secret_file)
        assert secret is not None
        out[name] = (public, secret)
    return out


def _config(tmp_path: Path, hosts: tuple[str, ...] = ("127.0.0.1", "127.0.0.1"), secured: bool = True,
            insecure: bool = False) -> Config:
    nodes = tuple(NodeConfig(f"n{i}", host, 9100 + i, 9200 + i, 9300 + i) for i, host in enumerate(hosts, 1))
    clients = (ClientRights("app", subscribe=(">",)), ClientRights("writer", publish=("a",)))
    security = SecurityConfig(str(tmp_path / "keys"), clients) if secured else None
    return Config(str(tmp_path / "cluster.yaml"), ClusterConfig(insecure=insecure), nodes, security)


def test_keys_are_loaded_and_the_pub_port_admits_readers_of_everything(tmp_path: Path) -> None:
    pairs = _write_keys(tmp_path / "keys", "n1", "n2", "app", "writer")
    os.unlink(tmp_path / "keys" / "n2.key_secret")  # n1 needs no other node's secret
    config = _config(tmp_path)
    keys = load_keys(config, "n1")
    assert (keys.public, keys.secret) == pairs["n1"]
    assert dict(keys.nodes) == {"n1": pairs["n1"][0], "n2": pairs["n2"][0]}
    assert dict(keys.clients) == {"app": pairs["app"][0], "writer": pairs["writer"][0]}
    security = NodeSecurity.for_node(config, "n1")
    assert security is not None
    raw = {name: z85.decode(pair[0]) for name, pair in pairs.items()}
    assert security.zap.answer(_zap("pub", raw["app"]))[6] == b"app"  # type: ignore[index]
    assert security.zap.answer(_zap("pub", raw["writer"]))[4] == b"400"  # type: ignore[index]
    assert security.zap.answer(_zap("raft", raw["n2"]))[6] == b"n2"  # type: ignore[index]
    assert security.status() == {"enabled": True, "rejected": {"raft": 0, "client": 0, "pub": 1},
                                 "forged_frm": 0, "forbidden": 0}


@pytest.mark.parametrize(("remove", "named"), [
    ("n1.key_secret", "n1.key_secret"), ("n2.key", "n2.key"), ("writer.key", "writer.key")])
def test_a_missing_key_file_is_named(tmp_path: Path, remove: str, named: str) -> None:
    _write_keys(tmp_path / "keys", "n1", "n2", "app", "writer")
    os.unlink(tmp_path / "keys" / remove)
    with pytest.raises(NodeStartError) as refused:
        load_keys(_config(tmp_path), "n1")
    assert str(tmp_path / "keys" / named) in str(refused.value) and "wiber keygen" in str(refused.value)
    assert "\n" not in str(refused.value)


def test_unusable_key_files_are_refused_naming_them(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    keys_dir = tmp_path / "keys"
    _write_keys(keys_dir, "n1", "n2", "app", "writer")
    config = _config(tmp_path)
    secret = keys_dir / "n1.key_secret"
    os.chmod(secret, 0o644)
    with caplog.at_level(logging.WARNING, "wiber.node.auth"):
        load_keys(config, "n1")
    assert "chmod 600" in caplog.text
    (keys_dir / "n1.key").write_bytes((keys_dir / "n2.key").read_bytes())  # not n1's own public key
    with pytest.raises(NodeStartError, match="does not hold the public key of"):
        load_keys(config, "n1")
    secret.write_bytes((keys_dir / "n2.key").read_bytes())  # a public key file under the secret's name
    with pytest.raises(NodeStartError, match=f"{secret} holds no secret-key line"):
        load_keys(config, "n1")
    secret.write_text('curve\n    public-key = "short"\n')
    with pytest.raises(NodeStartError, match="is not a CURVE key"):
        load_keys(config, "n1")
    secret.write_text("nothing here\n")
    with pytest.raises(NodeStartError, match=f"{secret} cannot be used"):
        load_keys(config, "n1")


@pytest.mark.parametrize("host", ["127.0.0.1", "127.9.9.9", "::1", "[::1]", "localhost", "LocalHost"])
def test_loopback_hosts_need_no_security(tmp_path: Path, host: str) -> None:
    check_exposure(_config(tmp_path, (host, "127.0.0.1"), secured=False), "n1")


@pytest.mark.parametrize("host", ["0.0.0.0", "10.0.0.1", "::", "192.168.1.5", "node1.example",
                                  "localhost.example"])
def test_other_hosts_need_security_or_insecure(tmp_path: Path, host: str,
                                               caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(NodeStartError) as refused:
        check_exposure(_config(tmp_path, ("127.0.0.1", host), secured=False), "n1")
    assert host in str(refused.value) and "cluster.insecure: true" in str(refused.value)
    with caplog.at_level(logging.WARNING, "wiber.node.auth"):
        check_exposure(_config(tmp_path, ("127.0.0.1", host), secured=False, insecure=True), "n1")
    assert "INSECURE" in caplog.text and host in caplog.text
    check_exposure(_config(tmp_path, ("127.0.0.1", host)), "n1")  # with a security section: fine


def test_the_sender_of_a_transfer_frame() -> None:
    assert claimed_sender(Done("n2", 5).encode()) == "n2"
    assert claimed_sender(Data("n3", 5, "seg-1", 0, b"x" * (1 << 20)).encode()) == "n3"  # the head only
    assert claimed_sender(Request("n" * 64, 5, "seg-1", 0, 100).encode()) == "n" * 64
    for bad in (b"\xc1X", b"\xc1X\x93", b"\xc1X\x93\x04\x05\x05", b"\xc1X\x93\x04\xc4\x01a"):
        assert claimed_sender(bad) is None


def test_a_consumer_group_needs_read_rights_covering_its_whole_pattern() -> None:
    app = Rights.of(ClientRights("app", subscribe=("orders.*", "audit")))
    assert app.group_refusal("orders.*") is None and app.group_refusal("orders.eu") is None
    assert app.group_refusal("audit") is None
    refusal = app.group_refusal("orders.>")  # it would read orders.eu.x, which HISTORY refuses app
    assert refusal is not None and "may not read every topic of pattern 'orders.>'" in refusal
    assert app.group_refusal(">") is not None and app.group_refusal("audit.>") is not None
    star = Rights.of(ClientRights("star", subscribe=("*",)))
    assert star.group_refusal("x") is None and star.group_refusal(">") is not None
    assert Rights.of(ClientRights("all", subscribe=(">",))).group_refusal("a.>") is None
    assert Rights.of(ClientRights("ops", admin=True)).group_refusal(">") is None
