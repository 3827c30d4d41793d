"""Each node its own host: network namespaces on a bridge, cut with nftables, slowed with tbf.

Layout (root only: namespaces, veth pairs, a bridge, nftables and tbf, all the test machines allow)::

    root namespace: bridge wfb<pid> holding 10.77.S.1/24   <- the test driver and its clients
        veth wf<pid>v<i>  <-->  namespace wf-<pid>-n<i>: eth0 = 10.77.S.(10+i)/24  <- node n<i>

``S`` is picked per run from 100-249 (starting from the pid, skipping subnets already in use), and
every name carries this process's pid, so concurrent runs and other users of the machine are not
touched. Node processes start inside their namespace with ``ip netns exec``; the driver reaches
them through the bridge.

Faults (`NetLab.block`): a blocked ordered pair (src, dst) drops every packet from src to dst,
with an nftables table ``inet wiberfault`` inside src's namespace (``output``: ``ip daddr dst``)
and inside dst's (``input``: ``ip saddr src``). Blocking both orders cuts a link silently (TCP
just hangs, as in a real network fault); blocking one order is one-way loss. Only peer addresses
are dropped: the driver at 10.77.S.1 keeps reaching every node. `NetLab.heal` deletes the tables.
`NetLab.slow` puts a ``tbf`` rate limit on a node's eth0 egress (tc netem is not in this kernel,
so there is no added delay or random loss). `NetLab.blackhole` adds ``blackhole`` routes to the
peers inside a node's namespace: sends fail at once (EINVAL), a fast-fail cut.

Teardown (`NetLab.down`) is idempotent and registered with atexit: delete the namespaces, the
veths and the bridge. Processes inside the namespaces are the cluster harness's to kill, by pid.
Should a driver be killed before its teardown ran, ``python -m tests.faults.netlab cleanup``
deletes what it left (only names of this scheme whose pid is no longer alive).
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Iterable

log = logging.getLogger(__name__)

TABLE = "wiberfault"
_probe_result: str | None | bool = False  # False: not probed yet


class NetLabError(RuntimeError):
    """A network command failed."""


def _run(args: list[str], check: bool = True, input_text: str | None = None,
         timeout: float = 15.0) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(args, input=input_text, capture_output=True, text=True, timeout=timeout,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetLabError(f"{' '.join(args)}: {exc}") from None
    if check and proc.returncode != 0:
        raise NetLabError(f"{' '.join(args)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc


def unavailable_reason() -> str | None:
    """Returns: why partition tests cannot run here (not root, no `ip`/`nft`, no netns), or None.

    Probes once per process: creates a namespace with an nftables table in it and deletes both.
    """
    global _probe_result
    if _probe_result is not False:
        return _probe_result  # type: ignore[return-value]
    reason: str | None = None
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        reason = "partition faults need root (network namespaces and nftables)"
    elif shutil.which("ip") is None:
        reason = "partition faults need `ip` (iproute2); run tools/install-system-deps.sh as root"
    elif shutil.which("nft") is None:
        reason = "partition faults need `nft` (nftables); run tools/install-system-deps.sh as root"
    else:
        ns = f"wf-{os.getpid()}-probe"
        try:
            _run(["ip", "netns", "add", ns])
            try:
                _run(["ip", "netns", "exec", ns, "nft", "add", "table", "inet", TABLE])
                _run(["ip", "-n", ns, "link", "set", "lo", "up"])
            finally:
                _run(["ip", "netns", "del", ns], check=False)
        except NetLabError as exc:
            reason = f"network namespaces or nftables do not work here: {exc}"
    _probe_result = reason
    return reason


def _subnets_in_use() -> set[str]:
    out = _run(["ip", "-4", "-o", "addr", "show"], check=False).stdout
    out += _run(["ip", "-4", "route", "show"], check=False).stdout
    used = set()
    for word in out.split():
        if word.startswith("10.77."):
            parts = word.split("/")[0].split(".")
            if len(parts) == 4:
                used.add(parts[2])
    return used


class NetLab:
    """A bridge and one network namespace per node, named after this process (see the module doc)."""

    def __init__(self, node_ids: Iterable[str]) -> None:
        self.pid = os.getpid()
        self.node_ids = list(node_ids)
        used = _subnets_in_use()
        start = 100 + self.pid % 150
        candidates = [100 + (start - 100 + k) % 150 for k in range(150)]
        free = [s for s in candidates if str(s) not in used]
        if not free:
            raise NetLabError("no free 10.77.S.0/24 subnet (S in 100..249)")
        self.subnet = free[0]
        self.bridge = f"wfb{self.pid}"
        self.gateway = f"10.77.{self.subnet}.1"
        self._index = {nid: i + 1 for i, nid in enumerate(self.node_ids)}
        self._blocked: set[tuple[str, str]] = set()
        self._slowed: set[str] = set()
        self._blackholed: dict[str, list[str]] = {}
        self._up = False

    # ------------------------------------------------------------ names

    def host(self, node_id: str) -> str:
        """Returns: the node's address inside its namespace."""
        return f"10.77.{self.subnet}.{10 + self._index[node_id]}"

    def netns(self, node_id: str) -> str:
        return f"wf-{self.pid}-n{self._index[node_id]}"

    def _veth(self, node_id: str) -> tuple[str, str]:
        i = self._index[node_id]
        return f"wf{self.pid}v{i}", f"wf{self.pid}p{i}"

    def exec_prefix(self, node_id: str) -> list[str]:
        """Returns: the argv prefix that runs a command inside the node's namespace."""
        return ["ip", "netns", "exec", self.netns(node_id)]

    # ------------------------------------------------------------ life cycle

    def up(self) -> None:
        """Create the bridge, the namespaces and their links. Tears down what it made on failure."""
        atexit.register(self.down)
        self._up = True
        try:
            _run(["ip", "link", "add", self.bridge, "type", "bridge"])
            _run(["ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge])
            _run(["ip", "link", "set", self.bridge, "up"])
            for nid in self.node_ids:
                ns, (outer, inner) = self.netns(nid), self._veth(nid)
                _run(["ip", "netns", "add", ns])
                _run(["ip", "link", "add", outer, "type", "veth", "peer", "name", inner])
                _run(["ip", "link", "set", inner, "netns", ns])
                _run(["ip", "link", "set", outer, "master", self.bridge, "up"])
                _run(["ip", "-n", ns, "link", "set", inner, "name", "eth0"])
                _run(["ip", "-n", ns, "addr", "add", f"{self.host(nid)}/24", "dev", "eth0"])
                _run(["ip", "-n", ns, "link", "set", "eth0", "up"])
                _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        except BaseException:
            self.down()
            raise
        log.info("netlab: bridge %s %s/24, namespaces %s", self.bridge, self.gateway,
                 ", ".join(self.netns(n) for n in self.node_ids))

    def down(self) -> None:
        """Delete every namespace, veth and the bridge this lab made (idempotent, never raises)."""
        if not self._up:
            return
        self._up = False
        def quietly(args: list[str]) -> None:
            try:
                _run(args, check=False)
            except NetLabError as exc:
                log.warning("netlab teardown: %s", exc)

        for nid in self.node_ids:
            quietly(["ip", "netns", "del", self.netns(nid)])
            quietly(["ip", "link", "del", self._veth(nid)[0]])
        quietly(["ip", "link", "del", self.bridge])
        self._blocked.clear()
        self._slowed.clear()
        self._blackholed.clear()

    # ------------------------------------------------------------ faults

    @property
    def blocked(self) -> frozenset[tuple[str, str]]:
        return frozenset(self._blocked)

    def block(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Drop every packet from src to dst for each (src, dst), on top of what is already blocked."""
        self._blocked |= {(s, d) for s, d in pairs if s != d}
        self._apply()

    def cut(self, side_a: Iterable[str], side_b: Iterable[str]) -> None:
        """Cut every link between the two sides, both ways."""
        a, b = list(side_a), list(side_b)
        self.block([(x, y) for x in a for y in b] + [(y, x) for x in a for y in b])

    def _apply(self) -> None:
        for nid in self.node_ids:
            drop_out = sorted(self.host(d) for s, d in self._blocked if s == nid)
            drop_in = sorted(self.host(s) for s, d in self._blocked if d == nid)
            ns = self.netns(nid)
            _run(["ip", "netns", "exec", ns, "nft", "delete", "table", "inet", TABLE], check=False)
            if not drop_out and not drop_in:
                continue
            rules_in = "".join(f"    ip saddr {a} drop\n" for a in drop_in)
            rules_out = "".join(f"    ip daddr {a} drop\n" for a in drop_out)
            script = (f"table inet {TABLE} {{\n"
                      f"  chain input {{\n    type filter hook input priority 0; policy accept;\n{rules_in}  }}\n"
                      f"  chain output {{\n    type filter hook output priority 0; policy accept;\n{rules_out}  }}\n"
                      f"}}\n")
            _run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input_text=script)

    def slow(self, node_id: str, rate: str = "256kbit") -> None:
        """Rate-limit the node's outbound traffic with tbf (a slow link; no added latency)."""
        _run(["ip", "netns", "exec", self.netns(node_id), "tc", "qdisc", "replace", "dev", "eth0", "root",
              "tbf", "rate", rate, "burst", "16kb", "latency", "400ms"])
        self._slowed.add(node_id)

    def blackhole(self, node_id: str, peers: Iterable[str]) -> None:
        """Blackhole routes to the peers inside the node's namespace: its sends to them fail at once."""
        hosts = [self.host(p) for p in peers]
        for h in hosts:
            _run(["ip", "-n", self.netns(node_id), "route", "add", "blackhole", f"{h}/32"])
        self._blackholed.setdefault(node_id, []).extend(hosts)

    def heal(self) -> None:
        """Remove every cut, rate limit and blackhole route."""
        self._blocked.clear()
        for nid in self.node_ids:
            _run(["ip", "netns", "exec", self.netns(nid), "nft", "delete", "table", "inet", TABLE], check=False)
        for nid in list(self._slowed):
            _run(["ip", "netns", "exec", self.netns(nid), "tc", "qdisc", "del", "dev", "eth0", "root"],
                 check=False)
        self._slowed.clear()
        for nid, hosts in self._blackholed.items():
            for h in hosts:
                _run(["ip", "-n", self.netns(nid), "route", "del", "blackhole", f"{h}/32"], check=False)
        self._blackholed.clear()

    def rules(self) -> str:
        """Returns: the nftables rules of every namespace (evidence for a report)."""
        out = []
        for nid in self.node_ids:
            text = _run(["ip", "netns", "exec", self.netns(nid), "nft", "list", "ruleset"], check=False).stdout
            out.append(f"# {nid} ({self.netns(nid)})\n{text.strip() or '(no rules)'}")
        return "\n".join(out)


def cleanup_stale() -> list[str]:
    """Delete namespaces and links of this module's naming scheme whose creating process is gone.

    Only for a driver that was killed before its teardown ran (kill -9). Returns: what was deleted.
    """
    removed: list[str] = []
    for line in _run(["ip", "netns", "list"], check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.fullmatch(r"wf-(\d+)-(n\d+|probe)", name)
        if m and not _alive(int(m.group(1))):
            _run(["ip", "netns", "del", name], check=False)
            removed.append(name)
    for line in _run(["ip", "-o", "link", "show"], check=False).stdout.splitlines():
        parts = line.split(":")
        if len(parts) < 2:
            continue
        name = parts[1].strip().split("@")[0]
        m = re.fullmatch(r"wf(?:b(\d+)|(\d+)v\d+)", name)
        if m and not _alive(int(m.group(1) or m.group(2))):
            _run(["ip", "link", "del", name], check=False)
            removed.append(name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["cleanup"]:
        sys.exit("usage: python -m tests.faults.netlab cleanup   (delete leftovers of killed fault runs)")
    print("\n".join(cleanup_stale()) or "nothing to clean up")
