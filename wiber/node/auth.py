"""Who may talk to a node, and what each client may do (docs/design.md section 10).

Theory of operation
-------------------
With a `security` section every socket of the node is CURVE: its client ROUTER, raft ROUTER and
PUB (XPUB) are CURVE servers with the node's secret key, each with its own ZAP domain ("client",
"raft", "pub"); its peer DEALERs are CURVE clients with the node's key pair and the peer's public
key. libzmq asks a ZAP handler (RFC 27) about every handshake on the server sockets; the node
binds that handler's socket in its own context and answers it from its own poller (`ZapHandler`
decides, `wiber.node.transport` moves the frames), so no thread is added and nothing from an
unknown key ever reaches the loop: its handshake fails.

* raft domain: exactly the configured nodes' keys; the node id is the connection's user id, and
  the loop drops (and counts) a Raft message, clock-sync or transfer frame that claims another
  sender (`claimed_sender` reads a transfer frame's without decoding the rest).
* client domain: exactly the `clients` keys; the client's name is the user id, which
  `wiber.node.clients` reads per request to apply `Rights`.
* pub domain: the clients that may read every topic (`subscribe: [">"]`, or admin), since a PUB
  socket cannot filter per subscriber. Nodes are not admitted: no node subscribes to another.

Without a `security` section nothing here runs, and `check_exposure` keeps such a node on
loopback addresses unless `cluster.insecure` says otherwise.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import msgpack
import zmq
import zmq.auth
from zmq.utils import z85

from wiber.config import ClientRights, Config
from wiber.errors import NodeStartError
from wiber.topics import WILDCARD_ONE, WILDCARD_REST, covers, matches

__all__ = [
    "DOMAIN_CLIENT",
    "DOMAIN_PUB",
    "DOMAIN_RAFT",
    "OPEN_OPS",
    "READ_OPS",
    "WRITE_OPS",
    "ZAP_ENDPOINT",
    "NodeKeys",
    "NodeSecurity",
    "Rights",
    "TopicPatterns",
    "ZapHandler",
    "check_exposure",
    "claimed_sender",
    "load_keys",
]

log = logging.getLogger(__name__)

ZAP_ENDPOINT: Final = "inproc://zeromq.zap.01"
"""Where libzmq sends the ZAP requests of the sockets of one context (RFC 27)."""
DOMAIN_RAFT: Final = "raft"
DOMAIN_CLIENT: Final = "client"
DOMAIN_PUB: Final = "pub"
PUBLIC_SUFFIX: Final = ".key"
SECRET_SUFFIX: Final = ".key_secret"
#: Distinct refused keys (and forged senders) whose first refusal is logged as a WARNING; later ones are DEBUG.
LOGGED_MAX: Final = 1024
#: Topics whose verdict one client's patterns cache, before the cache starts over.
VERDICTS_MAX: Final = 4096
_LOOPBACK_NAMES: Final = ("localhost", "localhost.")


# --------------------------------------------------------------------------------------------------
# Keys.


@dataclass(frozen=True, slots=True)
class NodeKeys:
    """One node's key pair and the public keys it admits, all as Z85 text (what zmq's options take)."""

    public: bytes
    secret: bytes
    nodes: Mapping[str, bytes]    # node id -> public key, this node included
    clients: Mapping[str, bytes]  # client name -> public key


def load_keys(config: Config, node_id: str) -> NodeKeys:
    """Returns: node `node_id`'s keys from `keys_dir`: its own `<id>.key_secret`, and `<name>.key` of
    every node and every client (a node needs no other node's secret).

    Raises:
        NodeStartError: no security section, or a key file is missing or unusable (the line names it).
    """
    security = config.security
    if security is None:
        raise NodeStartError(f"node {node_id}: {config.path} has no security section, so there are no keys")
    directory = security.keys_dir
    names = [n.id for n in config.nodes] + [c.name for c in security.clients]
    missing = [os.path.join(directory, n + PUBLIC_SUFFIX) for n in names
               if not os.path.isfile(os.path.join(directory, n + PUBLIC_SUFFIX))]
    own_secret = os.path.join(directory, node_id + SECRET_SUFFIX)
    if not os.path.isfile(own_secret):
        missing.insert(0, own_secret)
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise NodeStartError(
            f"node {node_id}: key file {missing[0]} is missing{more} (security.keys_dir of {config.path}): each "
            f"node needs its own <id>{SECRET_SUFFIX} and the <name>{PUBLIC_SUFFIX} of every node and client; "
            f"`wiber keygen NAME --dir {directory}` writes a pair")
    public, secret = _read(own_secret, node_id)
    if secret is None:
        raise NodeStartError(f"node {node_id}: key file {own_secret} holds no secret-key line: give it the file "
                             f"`wiber keygen {node_id}` wrote")
    if zmq.curve_public(secret) != public:
        raise NodeStartError(f"node {node_id}: key file {own_secret}: its public key is not the one of its "
                             f"secret key; write the pair again with `wiber keygen {node_id} --force`")
    _warn_if_readable(own_secret, node_id)
    keys = {name: _read(os.path.join(directory, name + PUBLIC_SUFFIX), node_id)[0] for name in names}
    if keys[node_id] != public:
        raise NodeStartError(
            f"node {node_id}: {os.path.join(directory, node_id + PUBLIC_SUFFIX)} does not hold the public key of "
            f"{own_secret}: peers and clients would not recognize this node; copy the pair written together")
    node_ids = {n.id for n in config.nodes}
    return NodeKeys(public=public, secret=secret,
                    nodes={n: k for n, k in keys.items() if n in node_ids},
                    clients={n: k for n, k in keys.items() if n not in node_ids})


def _read(path: str, node_id: str) -> tuple[bytes, bytes | None]:
    """Returns: (public, secret or None) of a zcert file, each a CURVE key. Raises: NodeStartError."""
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise NodeStartError(f"node {node_id}: key file {path} cannot be used: {exc}") from None
    for what, key in (("public", public), ("secret", secret)):
        if key is not None and not _is_key(key):
            raise NodeStartError(f"node {node_id}: key file {path}: its {what} key is not a CURVE key "
                                 f"(40 characters of Z85); write it with `wiber keygen`")
    return public, secret


def _is_key(key: bytes) -> bool:
    """Returns: whether `key` is a CURVE key in Z85 (40 characters, 32 bytes)."""
    try:
        return len(key) == 40 and len(z85.decode(key)) == 32
    except (ValueError, KeyError, TypeError):
        return False


def _warn_if_readable(path: str, node_id: str) -> None:
    """Log a WARNING when a secret key file can be read by others than its owner."""
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        log.warning("node %s: secret key file %s has mode %04o: anyone who reads it can pose as this node; "
                    "chmod 600 it", node_id, path, mode)


# --------------------------------------------------------------------------------------------------
# Plain TCP only on loopback.


def check_exposure(config: Config, node_id: str) -> None:
    """Refuse a node without a security section when any node's host is not a loopback address,
    unless `cluster.insecure` is set (then log a WARNING): without CURVE anyone who reaches a port
    may publish, read and forge Raft messages. Names are not resolved: only ``localhost`` counts.

    Raises:
        NodeStartError: a host is not loopback and `cluster.insecure` is false.
    """
    if config.security is not None:
        return
    exposed = sorted({n.host for n in config.nodes if not _is_loopback(n.host)})
    if not exposed:
        return
    hosts = ", ".join(exposed)
    if not config.cluster.insecure:
        raise NodeStartError(
            f"node {node_id}: {config.path} has no security section and nodes listen on {hosts}, not a loopback "
            f"address: anyone who reaches them could publish, read and forge Raft messages; add a security "
            f"section (docs/design.md section 10) or set cluster.insecure: true on a network you trust")
    log.warning("node %s: INSECURE: no security section and nodes listen on %s (cluster.insecure: true): "
                "anyone who reaches these ports can publish, read and forge Raft messages", node_id, hosts)


def _is_loopback(host: str) -> bool:
    """Returns: whether `host` is a loopback address (127.0.0.0/8, ::1) or ``localhost``."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# --------------------------------------------------------------------------------------------------
# Authorization.


class TopicPatterns:
    """A client's topic patterns, compiled: exact names in a set, wildcard verdicts cached per topic."""

    __slots__ = ("everything", "_exact", "_wild", "_verdicts")

    def __init__(self, patterns: Iterable[str], everything: bool = False) -> None:
        split = [tuple(p.split(".")) for p in patterns]
        self.everything = everything or (WILDCARD_REST,) in split
        wild = [t for t in split if WILDCARD_ONE in t or WILDCARD_REST in t]
        self._exact = {".".join(t) for t in split if t not in wild}
        self._wild = wild
        self._verdicts: dict[str, bool] = {}

    def cover(self, pattern: str) -> bool:
        """Returns: whether every topic `pattern` (a pattern or a name) matches is within these patterns."""
        if self.everything or pattern in self._exact:
            return True
        tokens = pattern.split(".")
        if WILDCARD_ONE not in tokens and WILDCARD_REST not in tokens:
            return pattern in self
        return any(covers(p, tokens) for p in self._wild)

    def __contains__(self, topic: str) -> bool:
        if self.everything or topic in self._exact:
            return True
        if not self._wild:
            return False
        verdict = self._verdicts.get(topic)
        if verdict is None:
            if len(self._verdicts) >= VERDICTS_MAX:
                self._verdicts.clear()
            tokens = topic.split(".")
            verdict = self._verdicts[topic] = any(matches(p, tokens) for p in self._wild)
        return verdict


#: Ops every admitted client may send (TOPICS and GROUPS list only what the client may use).
OPEN_OPS: Final = frozenset({"PING", "TOPICS", "GROUPS"})
#: Ops that write a topic: its `publish` patterns decide.
WRITE_OPS: Final = frozenset({"PUB", "PUB_BATCH"})
#: Ops that read a topic: its `subscribe` patterns decide. The consumer ops read their group's pattern
#: (GROUP_CREATE the one it sends), so a client may use a group only if it could SUB to that pattern.
#: Any op named nowhere here needs admin.
READ_OPS: Final = frozenset({"HISTORY", "SUB", "GROUP_CREATE", "GROUP_DELETE", "FETCH", "ACK", "NAK"})


@dataclass(slots=True)
class Rights:
    """What one client may do: its `ClientRights`, with the patterns compiled."""

    name: str
    publish: TopicPatterns
    read: TopicPatterns
    admin: bool

    @classmethod
    def of(cls, rights: ClientRights) -> Rights:
        """Returns: the compiled rights of a `security.clients` entry (admin: every topic)."""
        return cls(rights.name, TopicPatterns(rights.publish, rights.admin),
                   TopicPatterns(rights.subscribe, rights.admin), rights.admin)

    def refusal(self, op: str, topic: str | None) -> str | None:
        """Returns: why this client may not send `op` (on `topic`), or None when it may."""
        if self.admin or op in OPEN_OPS:
            return None
        if op in WRITE_OPS:
            if topic is not None and topic in self.publish:
                return None
            return f"client {self.name} may not publish to topic {topic!r} (its publish patterns)"
        if op in READ_OPS:
            if topic is not None and topic in self.read:
                return None
            return f"client {self.name} may not read topic {topic!r} (its subscribe patterns)"
        return f"client {self.name} may not send {op}: it needs admin: true in security.clients"

    def group_refusal(self, pattern: str) -> str | None:
        """Returns: why this client may not use a consumer group on `pattern`, or None when it may: its
        subscribe patterns must cover every topic the group's pattern matches."""
        if self.admin or self.read.cover(pattern):
            return None
        return (f"client {self.name} may not read every topic of pattern {pattern!r} (its subscribe patterns "
                f"must cover the consumer group's pattern)")

    def may_see(self, topic: str) -> bool:
        """Returns: whether TOPICS shows `topic` to this client (it may publish to it or read it)."""
        return topic in self.read or topic in self.publish


# --------------------------------------------------------------------------------------------------
# The ZAP handler.


class ZapHandler:
    """Answers libzmq's ZAP requests (RFC 27): admits a CURVE key known to the request's domain,
    with its name as the user id, and refuses and counts any other."""

    def __init__(self, node_id: str, admitted: Mapping[str, Mapping[bytes, str]]) -> None:
        """`admitted`: per domain, the raw 32-byte public keys it admits and their names."""
        self._id = node_id
        self._admitted = admitted
        self.rejected: dict[str, int] = {domain: 0 for domain in admitted}
        self._logged: set[tuple[str, bytes]] = set()

    def answer(self, frames: Sequence[bytes]) -> list[bytes] | None:
        """Returns: the reply frames to a ZAP request received on a ROUTER (its envelope first), or
        None when `frames` is not a ZAP request at all (nothing to answer)."""
        try:
            delimiter = list(frames).index(b"")
        except ValueError:
            return None
        envelope, body = list(frames[:delimiter + 1]), frames[delimiter + 1:]
        if len(body) < 6 or body[0] != b"1.0":
            return None
        request_id, domain_raw, address, mechanism = body[1], body[2], body[3], body[5]
        domain = domain_raw.decode("utf-8", "replace")
        name = None
        if mechanism == b"CURVE" and len(body) == 7:
            name = self._admitted.get(domain, {}).get(body[6])
        if name is None:
            self._refused(domain, address, mechanism, body[6] if len(body) == 7 else b"")
            return envelope + [b"1.0", request_id, b"400", b"key not admitted", b"", b""]
        return envelope + [b"1.0", request_id, b"200", b"OK", name.encode(), b""]

    def _refused(self, domain: str, address: bytes, mechanism: bytes, key: bytes) -> None:
        """Count a refused handshake; log the first one of each key at WARNING (clients retry every 100 ms)."""
        counted = domain if domain in self.rejected else "other"
        self.rejected[counted] = self.rejected.get(counted, 0) + 1
        first = (domain, key) not in self._logged and len(self._logged) < LOGGED_MAX
        if first:
            self._logged.add((domain, key))
        shown = z85.encode(key).decode() if len(key) == 32 else mechanism.decode("utf-8", "replace")
        log.log(logging.WARNING if first else logging.DEBUG,
                "node %s refused a %s connection from %s: key %s is not admitted there (security.clients / "
                "nodes of the config)", self._id, domain[:20], address.decode("utf-8", "replace")[:64], shown)


# --------------------------------------------------------------------------------------------------
# What the node holds.


@dataclass(slots=True)
class NodeSecurity:
    """A secured node's keys, ZAP handler, client rights and counters (STATUS `security`)."""

    keys: NodeKeys
    zap: ZapHandler
    rights: dict[str, Rights]
    forged_frm: int = 0
    forbidden: int = 0
    _logged: set[tuple[str, str]] = field(default_factory=set)

    @classmethod
    def for_node(cls, config: Config, node_id: str) -> NodeSecurity | None:
        """Returns: what node `node_id` needs to serve CURVE, or None without a security section
        (after `check_exposure`).

        Raises:
            NodeStartError: a key file is missing or unusable, or plain TCP on a non-loopback host.
        """
        check_exposure(config, node_id)
        if config.security is None:
            return None
        if not zmq.has("curve"):
            raise NodeStartError(f"node {node_id}: this libzmq has no CURVE support, which the security section "
                                 f"of {config.path} needs; install a pyzmq wheel (it bundles libsodium)")
        keys = load_keys(config, node_id)
        raw = {name: z85.decode(key) for name, key in (*keys.nodes.items(), *keys.clients.items())}
        rights = {c.name: Rights.of(c) for c in config.security.clients}
        admitted = {
            DOMAIN_RAFT: {raw[n]: n for n in keys.nodes},
            DOMAIN_CLIENT: {raw[c]: c for c in keys.clients},
            DOMAIN_PUB: {raw[c]: c for c in keys.clients if rights[c].read.everything},
        }
        return cls(keys, ZapHandler(node_id, admitted), rights)

    def forged(self, node_id: str, user: str, claimed: str, what: str) -> None:
        """Count a peer frame whose sender is not the node that authenticated its connection."""
        self.forged_frm += 1
        first = (user, claimed) not in self._logged and len(self._logged) < LOGGED_MAX
        if first:
            self._logged.add((user, claimed))
        log.log(logging.WARNING if first else logging.DEBUG,
                "node %s dropped a %s from the connection of %s claiming to come from %r", node_id, what, user,
                claimed[:64])

    def status(self) -> dict[str, Any]:
        """Returns: STATUS's `security` map."""
        return {"enabled": True, "rejected": dict(self.zap.rejected), "forged_frm": self.forged_frm,
                "forbidden": self.forbidden}


def claimed_sender(frame: bytes) -> str | None:
    """Returns: the sender a snapshot transfer frame names (its second item), or None when it names
    none; only the frame's head is read (`wiber.storage.transfer` validates the whole frame later)."""
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=256)
    unpacker.feed(frame[2:130])  # after the two marker bytes: [kind, sender, transfer id, ...]
    try:
        unpacker.read_array_header()
        unpacker.skip()
        sender = unpacker.unpack()
    except Exception:  # msgpack raises many types; any of them means no usable sender
        return None
    return sender if isinstance(sender, str) else None
