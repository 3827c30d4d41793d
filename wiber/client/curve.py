"""CURVE on the client side: the client's key pair and each node's public key (docs/design.md section 10).

Key files are zcert files as `zmq.auth` writes them (`wiber keygen`): `<name>.key` holds a public
key, `<name>.key_secret` the public and the secret key. A client given its key pair makes every
socket it opens (REQ or DEALER to a node's client port, SUB to a node's PUB port) a CURVE client
with that pair and the public key of the node it connects to, set before `connect`.

Without a client key and without node keys a client speaks plain TCP, as before; `WIBER_KEY`
(the path of the client's `.key_secret` file) is read only when node keys are known, that is when
the cluster uses CURVE. A failed handshake shows up only as silence on a zmq socket, so a secured
socket also watches its monitor for failed handshakes, and a timeout says why there was no answer.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

import zmq
import zmq.auth
from zmq.utils import z85
from zmq.utils.monitor import recv_monitor_message

from wiber.client.values import normalize_address
from wiber.errors import WiberError

if TYPE_CHECKING:
    from wiber.config import Config

#: The environment variable naming the client's secret key file when none is passed.
KEY_ENV = "WIBER_KEY"
#: Suffixes of the two files of one key, as zmq.auth.create_certificates names them.
PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"

#: A key pair as zmq takes it: (public, secret), each 40 bytes of Z85 text.
KeyPair: TypeAlias = tuple[bytes, bytes]
#: Where a client key comes from: the path of a `.key_secret` file, or the pair itself.
KeySource: TypeAlias = "str | os.PathLike[str] | KeyPair"

_HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                     | zmq.EVENT_HANDSHAKE_FAILED_AUTH)


class CurveError(WiberError):
    """The client's CURVE keys are missing or do not fit the cluster (no client key, no key for a node)."""


class KeyFileError(CurveError):
    """A key file is missing, unreadable or not a zcert key file; `.path` names it."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        super().__init__(f"key file {path}: {problem}")


def _check_key(key: bytes, what: str, path: str) -> bytes:
    """Returns: `key`, checked to be a Z85 CURVE key (40 characters, 32 bytes decoded).

    Raises:
        KeyFileError: it is not.
    """
    try:
        ok = len(key) == 40 and len(z85.decode(key)) == 32
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise KeyFileError(path, f"its {what} is not a CURVE key (40 characters of Z85)")
    return key


def _read_certificate(path: str) -> tuple[bytes, bytes | None]:
    """Returns: (public, secret or None) of a zcert file.

    Raises:
        KeyFileError: the file is missing, unreadable, or holds no public key.
    """
    if not os.path.exists(path):
        raise KeyFileError(path, "no such file (create one with `wiber keygen NAME --dir DIR`)")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except OSError as exc:
        raise KeyFileError(path, f"cannot be read: {exc.strerror or exc}") from None
    except ValueError:
        raise KeyFileError(path, "holds no public-key line: not a key file as `wiber keygen` writes") from None
    return _check_key(public, "public key", path), None if secret is None else _check_key(secret, "secret key", path)


def load_key_pair(path: str | os.PathLike[str]) -> KeyPair:
    """Returns: (public, secret) from a client's `<name>.key_secret` file.

    Raises:
        KeyFileError: missing, unreadable, malformed, or a public `.key` file holding no secret.
    """
    name = os.fspath(path)
    public, secret = _read_certificate(name)
    if secret is None:
        raise KeyFileError(name, f"holds no secret key: give the {SECRET_SUFFIX} file, not the public "
                                 f"{PUBLIC_SUFFIX} one")
    return public, secret


def load_public_key(path: str | os.PathLike[str]) -> bytes:
    """Returns: the public key of a `<name>.key` (or `.key_secret`) file.

    Raises:
        KeyFileError: missing, unreadable or malformed.
    """
    return _read_certificate(os.fspath(path))[0]


def node_keys(config: Config) -> dict[str, bytes]:
    """Returns: each node's public key (`keys_dir/<id>.key`) by its client address and its PUB address.

    Raises:
        CurveError: the config has no security section.
        KeyFileError: a node's public key file is missing or malformed.
    """
    if config.security is None:
        raise CurveError(f"{config.path}: no security section, so the nodes have no CURVE keys")
    keys: dict[str, bytes] = {}
    for node in config.nodes:
        public = load_public_key(os.path.join(config.security.keys_dir, node.id + PUBLIC_SUFFIX))
        keys[node.client_addr] = keys[node.pub_addr] = public
    return keys


@dataclass(frozen=True, slots=True)
class CurveKeys:
    """A client's key pair and the public key of every node address it may connect to."""

    public: bytes
    secret: bytes
    servers: dict[str, bytes]  # normalized address -> that node's public key

    def server_key(self, address: str, node_address: str | None = None) -> bytes:
        """Returns: the public key of the node at `address`; for an address not known (a PUB
        endpoint a node reported), the key of the node at `node_address`, which reported it.

        Raises:
            CurveError: neither address has a known key.
        """
        for candidate in (address, node_address):
            if candidate is not None:
                key = self.servers.get(normalize_address(candidate))
                if key is not None:
                    return key
        raise CurveError(f"no public key known for the node at {address}: pass it in server_keys, or "
                         f"build the client from the cluster's config (keys_dir/<node id>.key)")


def curve_keys(client_key: KeySource | None, server_keys: Mapping[str, bytes] | None) -> CurveKeys | None:
    """Returns: the keys a client's sockets use, or None for plain TCP (neither key given).

    With node keys and no client key, the file named by `WIBER_KEY` is the client's key.

    Raises:
        CurveError: a client key without node keys, or node keys and no client key anywhere.
        KeyFileError: the client's key file is missing, unreadable or malformed.
    """
    if server_keys is None:
        if client_key is not None:
            raise CurveError("a client key needs the nodes' public keys: pass server_keys, or build the "
                             "client from the cluster's config (from_config)")
        return None
    if client_key is None:
        client_key = os.environ.get(KEY_ENV) or None
        if client_key is None:
            raise CurveError(f"the cluster uses CURVE but no client key was given: pass client_key, or set "
                             f"{KEY_ENV} to your <name>{SECRET_SUFFIX} file")
    if isinstance(client_key, tuple):
        public = _check_key(client_key[0], "public key", "(given pair)")
        secret = _check_key(client_key[1], "secret key", "(given pair)")
    else:
        public, secret = load_key_pair(client_key)
    servers = {normalize_address(a): _check_key(k, "public key", f"(server key of {a})")
               for a, k in server_keys.items()}
    return CurveKeys(public, secret, servers)


def config_curve_keys(config: Config, client_key: KeySource | None) -> CurveKeys | None:
    """Returns: the keys to talk to the cluster of `config`: CURVE with `keys_dir` when it has a
    security section, else None (plain TCP).

    Raises:
        CurveError: a client key given for a cluster without security, or none for one with it.
        KeyFileError: a key file is missing, unreadable or malformed.
    """
    if config.security is None:
        if client_key is not None:
            raise CurveError(f"{config.path} has no security section: the nodes do not use CURVE, "
                             f"so no client key is needed")
        return None
    return curve_keys(client_key, node_keys(config))


def client_socket(ctx: zmq.Context[zmq.Socket[bytes]], kind: int, address: str, curve: CurveKeys | None,
                  node_address: str | None = None) -> tuple[zmq.Socket[bytes], HandshakeWatch | None]:
    """Returns: a new socket of `kind` with LINGER 0, not yet connected, and, when `curve` is given,
    made a CURVE client of the node at `address` (see CurveKeys.server_key) with a watch on its
    handshakes (close the watch before the socket); else a plain socket and None.

    Raises:
        CurveError: no key is known for that node (raised before any socket is made).
    """
    server = None if curve is None else curve.server_key(address, node_address)
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    if curve is None or server is None:
        return sock, None
    sock.setsockopt(zmq.CURVE_SERVERKEY, server)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, curve.public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, curve.secret)
    return sock, HandshakeWatch(sock, address)


def close_client_socket(sock: zmq.Socket[bytes] | None, watch: HandshakeWatch | None) -> None:
    """Close a socket made by client_socket, its handshake watch first; either may be None."""
    if watch is not None:
        watch.close()
    if sock is not None:
        sock.close(linger=0)


def client_options(curve: CurveKeys | None) -> dict[str, Any]:
    """Returns: the `client_key` and `server_keys` arguments of a Client or Publisher that uses
    `curve` (none for plain TCP)."""
    if curve is None:
        return {}
    return {"client_key": (curve.public, curve.secret), "server_keys": curve.servers}


class HandshakeWatch:
    """The failed handshakes of one CURVE socket, read from its monitor: why a node did not answer."""

    def __init__(self, sock: zmq.Socket[bytes], address: str) -> None:
        self._sock = sock
        self.address = address
        self._monitor: zmq.Socket[bytes] | None = sock.get_monitor_socket(_HANDSHAKE_FAILED)
        self.failure: str | None = None
        self.key_refused = False  # the last failure was the node refusing this client's key

    def check(self) -> str | None:
        """Returns: why the last handshake failed, or None when none failed (so far)."""
        monitor = self._monitor
        while monitor is not None and monitor.poll(0):
            event = recv_monitor_message(monitor, zmq.NOBLOCK)
            self.failure = _describe(int(event["event"]), int(event["value"]), self.address)
            self.key_refused = int(event["event"]) == zmq.EVENT_HANDSHAKE_FAILED_AUTH
        return self.failure

    def close(self) -> None:
        """Stop watching (before the socket is closed)."""
        if self._monitor is not None:
            self._sock.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None


def _describe(event: int, value: int, address: str) -> str:
    """Returns: one line saying what a failed-handshake event means for the user."""
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return (f"{address} refused this client's key (CURVE handshake, status {value}): the key's name "
                f"must be listed under security.clients of the cluster's config")
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        return (f"the handshake with {address} failed (ZMTP protocol error {value:#x}): the node does not "
                f"use CURVE, or speaks another protocol")
    return (f"the CURVE handshake with {address} failed: the public key used for that node does not "
            f"match its secret key (keys_dir/<node id>.key out of date?)")
