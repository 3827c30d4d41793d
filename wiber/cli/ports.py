"""Before `wiber up` starts anything: can every port of the config be bound here, and if not, who holds it?

A second `wiber up` on a config already running used to start nodes that died with "port already
in use" while it pinged the cluster that held the ports and reported it as its own. Now `up` binds
each (host, port) of each node first, the way a node will (SO_REUSEADDR, as libzmq sets it on a
listening socket, so a port left in TIME_WAIT by a stopped node is not mistaken for a taken one),
and refuses to start when any fails.

Who holds a port is read from Linux's /proc: the inode of the listening socket in /proc/net/tcp
(and tcp6), then the process with that inode among its open descriptors. Only processes this user
may inspect are found; elsewhere, or for another user's process, the holder is simply not named.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from wiber.config import Config

#: The state column of /proc/net/tcp for a listening socket.
TCP_LISTEN = "0A"


@dataclass(frozen=True, slots=True)
class PortProblem:
    """One port of the config that cannot be bound: which node and role, and why."""

    node_id: str
    role: str  # "client", "raft", "pub", or another `*_port` field's name
    host: str
    port: int
    reason: str  # the OS error, e.g. "already in use"
    holder: str | None  # "pid 4242 (python -m wiber node ...)" when knowable
    required: bool = True  # False: the node starts without it (a defaulted metrics port), a warning

    def describe(self) -> str:
        """Returns: one line an operator can act on."""
        held = f", held by {self.holder}" if self.holder else ""
        return f"node {self.node_id}: {self.role} port {self.host}:{self.port} is {self.reason}{held}"


@dataclass(frozen=True, slots=True)
class NodePort:
    """One port a node of the config binds."""

    node_id: str
    role: str
    host: str
    port: int
    required: bool = True


def node_ports(config: Config) -> Iterator[NodePort]:
    """Yields: every port the config gives a node: the client, raft and pub ports, and any other
    `*_port` field of its config (a metrics port, unless 0). A port whose config says it was
    defaulted (`<name>_defaulted`) is not required: the node serves without it when it is taken."""
    for node in config.nodes:
        yield NodePort(node.id, "client", node.host, node.port)
        yield NodePort(node.id, "raft", node.host, node.raft_port)
        yield NodePort(node.id, "pub", node.host, node.pub_port)
        for name in getattr(node, "__slots__", ()):
            if name.endswith("_port") and name not in ("raft_port", "pub_port"):
                port = getattr(node, name)
                if isinstance(port, int) and port > 0:  # 0 turns such a port off
                    defaulted = bool(getattr(node, f"{name}_defaulted", False))
                    yield NodePort(node.id, name.removesuffix("_port"), node.host, port, not defaulted)


def bind_problem(host: str, port: int) -> str | None:
    """Returns: why (host, port) cannot be bound for listening now, or None when it can."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"not a usable address ({exc.strerror})"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
            s.listen(1)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return "already in use"
            if exc.errno == errno.EADDRNOTAVAIL:
                return "not an address of this machine"
            if exc.errno == errno.EACCES:
                return "not allowed to this user (a port below 1024?)"
            return f"not bindable ({exc.strerror})"
    return None


def check_ports(config: Config) -> list[PortProblem]:
    """Returns: every port of the config that cannot be bound now, with its holder when knowable."""
    problems = []
    for p in node_ports(config):
        reason = bind_problem(p.host, p.port)
        if reason is not None:
            holder = port_holder(p.port) if reason == "already in use" else None
            problems.append(PortProblem(p.node_id, p.role, p.host, p.port, reason, holder, p.required))
    return problems


def listening_inodes(table: str, port: int) -> set[str]:
    """Returns: the socket inodes of the LISTEN entries for `port` in the text of /proc/net/tcp[6]."""
    inodes = set()
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or fields[3] != TCP_LISTEN:
            continue
        local = fields[1]
        try:
            local_port = int(local.rsplit(":", 1)[1], 16)
        except (IndexError, ValueError):
            continue
        if local_port == port:
            inodes.add(fields[9])
    return inodes


def port_holder(port: int, proc: Path = Path("/proc")) -> str | None:
    """Returns: `pid N (command line)` of the process listening on `port`, None when not knowable."""
    inodes: set[str] = set()
    for name in ("tcp", "tcp6"):
        try:
            inodes |= listening_inodes((proc / "net" / name).read_text(), port)
        except OSError:
            continue
    if not inodes:
        return None
    targets = {f"socket:[{inode}]" for inode in inodes}
    for pid_dir in _pid_dirs(proc):
        try:
            fds = list((pid_dir / "fd").iterdir())
        except OSError:  # another user's process, or gone
            continue
        if any(_readlink(fd) in targets for fd in fds):
            return f"pid {pid_dir.name} ({_cmdline(pid_dir)})"
    return None


def _pid_dirs(proc: Path) -> Iterable[Path]:
    try:
        return [p for p in proc.iterdir() if p.name.isdigit()]
    except OSError:
        return []


def _readlink(path: Path) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def _cmdline(pid_dir: Path) -> str:
    """Returns: the process's command line, shortened to 120 characters."""
    try:
        text = (pid_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"
    return text if len(text) <= 120 else text[:117] + "..."
