"""`--key` / WIBER_KEY on the `wiber` commands (docs/design.md section 10), against a raw CURVE node stand-in.

The config is a real YAML file with a security section whose keys_dir holds the stand-in's public
key (`n1.key`); the handshakes are real. Commands run in this process (`wiber.cli.main`), and once
as a subprocess, the way a user runs them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
import zmq
import zmq.auth

from tests.conftest import free_port
from tests.integration.curve_fake import FakeCurveNode, make_keys
from wiber import cli
from wiber.client.curve import KEY_ENV
from wiber.errors import ClientError


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def write_config(path: Path, client_port: int, pub_port: int, security: dict[str, object] | None) -> Path:
    """Write a one-node config naming the stand-in's ports. Returns: its path."""
    node = {"id": "n1", "host": "127.0.0.1", "port": client_port, "raft_port": free_port(), "pub_port": pub_port}
    doc: dict[str, object] = {"cluster": {"data_dir": str(path.parent / "data")}, "nodes": [node]}
    if security is not None:
        doc["security"] = security
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture
def secured(tmp_path: Path, zmq_ctx: zmq.Context, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeCurveNode]:
    """A CURVE node stand-in admitting `app` (not `other`), and tmp_path/cluster.yaml naming it."""
    keys = make_keys(tmp_path / "keys", "n1", "app", "other")
    node = FakeCurveNode(zmq_ctx, "n1", keys["n1"])
    node.allow_client(keys["app"][0])
    write_config(tmp_path / "cluster.yaml", port_of(node.client_addr), port_of(node.pub_addr),
                 {"keys_dir": "keys", "clients": [{"name": "app", "subscribe": [">"]}, {"name": "other"}]})
    monkeypatch.chdir(tmp_path)  # where `--config cluster.yaml` is read, keys_dir resolved beside it
    monkeypatch.delenv(KEY_ENV, raising=False)
    yield node
    node.close()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Returns: (exit status, stdout, stderr) of `wiber ARGV --config cluster.yaml` run in this process."""
    timeout = [] if argv[0] == "up" else ["--timeout", "0.3"]
    status = cli.main([*argv, "--config", "cluster.yaml", *timeout])
    out, err = capsys.readouterr()
    return status, out, err


def test_every_client_command_and_up_take_key(capsys: pytest.CaptureFixture[str]) -> None:
    for command in (["ping"], ["status"], ["topics"], ["pub", "t"], ["sub", "t"], ["history", "t"],
                    ["bench", "pub", "t"], ["bench", "sub", "t"], ["up"]):
        with pytest.raises(SystemExit):
            cli.main([*command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "--key PATH" in text and KEY_ENV in text, f"`wiber {' '.join(command)} --help` lacks --key"


def test_a_secured_config_without_a_key_is_a_usage_error_naming_both_ways(
        secured: FakeCurveNode, capsys: pytest.CaptureFixture[str]) -> None:
    for command in (["ping"], ["pub", "t", "m"], ["history", "t"], ["sub", "t"], ["topics"], ["up"],
                    ["bench", "pub", "t"]):
        status, out, err = run(capsys, *command)
        assert status == 2 and out == "", (command, err)
        assert err.startswith("wiber: ") and err.count("\n") == 1 and "security section" in err
        assert "--key PATH" in err and f"{KEY_ENV}=PATH" in err, err
    env = {k: v for k, v in os.environ.items() if k != KEY_ENV}
    done = subprocess.run([sys.executable, "-m", "wiber", "pub", "t", "m", "--config", "cluster.yaml"], env=env,
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2 and done.stdout == "" and done.stderr.count("\n") == 1, done.stderr
    assert "security section" in done.stderr and "--key PATH" in done.stderr
    assert secured.users == []


def test_key_files_that_cannot_be_used_are_named(secured: FakeCurveNode, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nobody.key_secret"
    status, _, err = run(capsys, "ping", "--key", str(missing))
    assert status == 2 and f"key file {missing}: no such file" in err
    status, _, err = run(capsys, "ping", "--key", str(tmp_path / "keys" / "app.key"))
    assert status == 2 and "holds no secret key" in err
    (tmp_path / "keys" / "n1.key").unlink()
    status, _, err = run(capsys, "ping", "--key", str(tmp_path / "keys" / "app.key_secret"))
    assert status == 2 and f"key file {tmp_path / 'keys' / 'n1.key'}: no such file" in err


def test_commands_with_a_key_talk_curve(secured: FakeCurveNode, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    app = str(tmp_path / "keys" / "app.key_secret")
    status, out, err = run(capsys, "ping", "--key", app)
    assert status == 0 and f"{secured.client_addr}  n1  leader" in out, err
    status, out, err = run(capsys, "pub", "orders", "one", "--key", app)
    assert status == 0 and out.startswith("topic=orders offset=0 "), err
    monkeypatch.setenv(KEY_ENV, app)  # the same key, from the environment
    status, out, err = run(capsys, "history", "orders")
    assert status == 0 and out == "0\tone\n", err
    status, out, err = run(capsys, "ping", "--addr", secured.client_addr, "--key", app)
    assert status == 0 and "n1  leader" in out, err
    assert set(secured.users) == {zmq.auth.load_certificate(app)[0].decode()}


def test_a_refused_key_or_an_unknown_address_says_so(secured: FakeCurveNode, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    other = str(tmp_path / "keys" / "other.key_secret")
    status, out, _ = run(capsys, "ping", "--key", other)
    # The node is there and refused this client: ERROR, not DOWN; it is not a quorum problem (1, not 3).
    assert status == 1 and "ERROR" in out and "refused this client's key" in out
    status, _, err = run(capsys, "history", "t", "--key", other)
    assert status == 1 and err.count("\n") == 1 and "refused this client's key" in err
    status, _, err = run(capsys, "ping", "--addr", "127.0.0.1:1", "--key", other)
    assert status == 2 and "no public key known for the node at tcp://127.0.0.1:1" in err
    assert secured.users == []


def test_a_key_for_a_plain_config_is_refused_and_wiber_key_ignored(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    write_config(tmp_path / "cluster.yaml", free_port(), free_port(), None)
    monkeypatch.chdir(tmp_path)
    status, _, err = run(capsys, "topics", "--key", str(tmp_path / "app.key_secret"))
    assert status == 2 and "has no security section" in err and "drop --key" in err
    monkeypatch.setenv(KEY_ENV, str(tmp_path / "app.key_secret"))  # not even a file: not read
    status, _, err = run(capsys, "topics")
    assert status == 1 and "no answer" in err  # plain TCP to a port where nothing listens


def test_a_node_that_answers_an_error_is_not_shown_down() -> None:
    from wiber.cli.info import format_status_table
    from wiber.errors import WireError

    refused = WireError("client app may not send STATUS: it needs admin: true in security.clients")
    rows = format_status_table({"tcp://a:1": refused, "tcp://b:2": ClientError("no answer from tcp://b:2")})
    assert rows.splitlines()[1].split()[:3] == ["?", "tcp://a:1", "error"]
    assert rows.splitlines()[2].split()[:3] == ["?", "tcp://b:2", "down"]
