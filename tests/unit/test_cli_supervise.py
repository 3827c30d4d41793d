"""`wiber up`'s pure parts: the restart backoff, how an exit is described, and which ports of a config
are checked and who holds a taken one (issue 18)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from wiber.cli.ports import bind_problem, listening_inodes, node_ports, port_holder
from wiber.cli.supervise import Backoff, describe_exit
from wiber.config import NodeConfig, parse_config


def test_restart_backoff_doubles_to_a_cap_and_resets_after_a_stable_run() -> None:
    backoff = Backoff(initial_s=0.5, max_s=30.0, stable_s=10.0)
    assert [backoff.after_exit(0.1) for _ in range(9)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    assert backoff.after_exit(10.0) == 0.5 and backoff.after_exit(1.0) == 1
    assert describe_exit(2) == "status 2" and describe_exit(-9) == "status -9 (killed by SIGKILL)"


def test_every_port_of_a_node_is_checked_and_a_taken_one_named_with_its_holder(tmp_path: Path) -> None:
    config = parse_config({"nodes": [{"id": "n1", "host": "127.0.0.1", "port": 9101}]}, str(tmp_path / "c.yaml"))
    ports = [(p.node_id, p.role, p.port) for p in node_ports(config) if p.required]
    assert ports[:3] == [("n1", "client", 9101), ("n1", "raft", 9201), ("n1", "pub", 9301)]
    assert len(ports) == 3  # a defaulted metrics port, if the config has one, is not required
    if "metrics_port" in NodeConfig.__slots__:  # a written one is
        written = parse_config({"nodes": [{"id": "n1", "host": "127.0.0.1", "port": 9101, "metrics_port": 9999}]},
                               str(tmp_path / "c.yaml"))
        assert [(p.role, p.port, p.required) for p in node_ports(written)][3:] == [("metrics", 9999, True)]
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        port = held.getsockname()[1]
        assert bind_problem("127.0.0.1", port) == "already in use"
        if Path("/proc/net/tcp").exists():
            holder = port_holder(port)
            assert holder is not None and holder.startswith(f"pid {os.getpid()} (")
    assert bind_problem("127.0.0.1", port) is None
    assert bind_problem("192.0.2.1", port) == "not an address of this machine"
    table = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
             "   0: 0100007F:2391 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4242 1\n"
             "   1: 0100007F:2391 0100007F:C350 01 00000000:00000000 00:00000000 00000000  1000        0 4243 1\n")
    assert listening_inodes(table, 0x2391) == {"4242"} and listening_inodes(table, 80) == set()
