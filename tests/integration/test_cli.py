"""The `wiber` message commands (pub, sub, history, topics) as subprocesses against three real nodes.

Each test runs `python -m wiber ...` the way a user or a script would, and checks the exact output
format, the exit status and, through the client library, what the cluster really stored.
"""

from __future__ import annotations

import base64
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from tests.conftest import REPO, ClusterHarness, free_port, wait_for
from tests.integration.test_publisher import read_all
from wiber import cli

RANGE_LINE = re.compile(r"first_offset=(\d+) end_offset=(\d+) next_offset=(\d+)")


def wiber_command(cluster: ClusterHarness | None, *args: str) -> list[str]:
    """Returns: the argv of `wiber ARGS`, pointed at the cluster's config when there is one."""
    config = ["--config", str(cluster.config_path)] if cluster is not None else []
    return [sys.executable, "-m", "wiber", *args, *config]


def wiber(cluster: ClusterHarness | None, *args: str, stdin: bytes = b"",
          timeout: float = 30.0) -> subprocess.CompletedProcess[bytes]:
    """Run `wiber ARGS` to completion. Returns: the finished process, its output as bytes."""
    return subprocess.run(wiber_command(cluster, *args), input=stdin, capture_output=True, cwd=str(REPO),
                          timeout=timeout, check=False)


def ok(cluster: ClusterHarness, *args: str, stdin: bytes = b"") -> tuple[list[str], str]:
    """Run `wiber ARGS`, which must exit 0. Returns: stdout lines and stderr text."""
    done = wiber(cluster, *args, stdin=stdin)
    err = done.stderr.decode(errors="replace")
    assert done.returncode == 0, f"wiber {' '.join(args)} exited {done.returncode}: {err}"
    return done.stdout.decode().splitlines(), err


def offset_range(stderr: str) -> tuple[int, int, int]:
    """Returns: (first_offset, end_offset, next_offset) from history's stderr line."""
    found = RANGE_LINE.fullmatch(stderr.strip())
    assert found, f"no range line in {stderr!r}"
    return int(found[1]), int(found[2]), int(found[3])


class LineReader:
    """Reads whole lines from a subprocess pipe with a deadline (select, then os.read: no blocking)."""

    def __init__(self, stream: object) -> None:
        self.fd = stream.fileno()  # type: ignore[attr-defined]
        self.buffer = b""

    def lines(self, n: int, timeout: float) -> list[str]:
        """Returns: the next `n` lines. Raises: AssertionError when they do not come in time."""
        deadline = time.monotonic() + timeout
        while (have := self.buffer.count(b"\n")) < n:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"only {have} of {n} lines within {timeout:g} s"
            readable, _, _ = select.select([self.fd], [], [], remaining)
            if readable:
                chunk = os.read(self.fd, 1 << 16)
                assert chunk, f"the process closed its output after {have} of {n} lines"
                self.buffer += chunk
        *taken, self.buffer = self.buffer.split(b"\n", n)
        return [line.decode() for line in taken]

    def any_line(self) -> bool:
        """Returns: whether a whole line has arrived (without waiting)."""
        while select.select([self.fd], [], [], 0)[0]:
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                break
            self.buffer += chunk
        return b"\n" in self.buffer


def test_every_message_command_has_a_helpful_help(capsys: pytest.CaptureFixture[str]) -> None:
    for command, expected in {
        "pub": ["--batch", "--linger-ms", "--window", "stdin", "published N messages"],
        "sub": ["--from", "--count", "--json", "Ctrl-C", "base64"],
        "history": ["--from", "--last", "--limit", "--all", "--linearizable", "--json", "next_offset"],
        "topics": ["END_OFFSET"],
    }.items():
        with pytest.raises(SystemExit) as exited:
            cli.main([command, "--help"])
        assert exited.value.code == 0
        text = " ".join(capsys.readouterr().out.split())
        for word in expected + ["--config", "--addr", "--timeout", "--key"]:
            assert word in text, f"`wiber {command} --help` does not mention {word}"
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    listing = capsys.readouterr().out
    assert all(c in listing for c in ("pub", "sub", "history", "topics", "keygen"))


@pytest.mark.timeout(60)
def test_pub_one_message_then_a_stream_from_stdin(cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(3, max_message_bytes=1000)
    out, _ = ok(cluster, "pub", "greetings", "hello, wörld")
    first = re.fullmatch(r"topic=greetings offset=0 index=(\d+) lamport=(\d+)", out[0])
    assert first and len(out) == 1, out
    out, _ = ok(cluster, "pub", "greetings", "again")
    second = re.fullmatch(r"topic=greetings offset=1 index=(\d+) lamport=(\d+)", out[0])
    assert second and int(second[2]) > int(first[2]) and int(second[1]) > int(first[1])

    lines = [b"line-%03d" % i for i in range(500)]
    out, err = ok(cluster, "pub", "lines", "--batch", "64", "--window", "4", stdin=b"\n".join(lines) + b"\n")
    assert re.fullmatch(r"published 500 messages to lines \(offsets 0\.\.499\) in \d+\.\d\d s \(\d+ msg/s\)",
                        out[0]), out
    assert len(out) == 1 and err == ""  # no progress line: stderr is not a terminal

    # An empty line is an empty message; a last line without its newline still counts.
    out, _ = ok(cluster, "pub", "edge", stdin=b"first\n\nthird")
    assert out[0].startswith("published 3 messages to edge (offsets 0..2)")

    # A line over the cluster's max_message_bytes (read from --config) stops the stream, exit 1;
    # the lines before it are still stored.
    done = wiber(cluster, "pub", "sized", stdin=b"ok-1\nok-2\n" + b"x" * 1001 + b"\nnever\n")
    assert done.returncode == 1 and done.stdout == b""
    assert done.stderr.decode().startswith("wiber: publishing to 'sized' stopped after 2 acknowledged "
                                           "messages (2 read): line 3 refused: ")

    client = cluster.client(total_s=20.0)
    assert [m.data for m in read_all(client, "lines")] == lines
    assert [m.data for m in read_all(client, "edge")] == [b"first", b"", b"third"]
    assert [m.data for m in read_all(client, "sized")] == [b"ok-1", b"ok-2"]
    assert [m.data for m in read_all(client, "greetings")] == ["hello, wörld".encode(), b"again"]

    out, _ = ok(cluster, "topics")
    assert out == ["edge\t3", "greetings\t2", "lines\t500", "sized\t2"]


@pytest.mark.timeout(60)
def test_history_last_from_json_all_and_limits(cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(3)
    client = cluster.client(total_s=20.0)
    client.publish_batch("hist", [b"m-%04d" % i for i in range(1000)])
    client.publish_batch("hist", [b"m-%04d" % i for i in range(1000, 1500)])
    raw = bytes([0x66, 0x6F, 0xFF, 0x00, 0x80])  # not UTF-8
    client.publish("bin", raw)
    expected = [f"{i}\tm-{i:04d}" for i in range(1500)]

    out, err = ok(cluster, "history", "hist", "--last", "5", "--linearizable")
    assert out == expected[1495:] and offset_range(err) == (0, 1500, 1500)
    out, err = ok(cluster, "history", "hist", "--from", "10", "--limit", "3", "--linearizable")
    assert out == expected[10:13] and offset_range(err) == (0, 1500, 13)
    out, err = ok(cluster, "history", "hist", "--linearizable")  # default: from 0, limit 100
    assert out == expected[:100] and offset_range(err) == (0, 1500, 100)

    out, _ = ok(cluster, "history", "hist", "--from", "1498", "--json", "--linearizable")
    objects = [json.loads(line) for line in out]
    assert [(o["offset"], o["data"], o["encoding"], o["topic"]) for o in objects] == [
        (1498, "m-1498", "utf-8", "hist"), (1499, "m-1499", "utf-8", "hist")]
    assert all(isinstance(o["lamport"], int) and o["ts"] > 0 and o["index"] >= 1 and o["late"] is False
               for o in objects)
    out, _ = ok(cluster, "history", "bin", "--json", "--linearizable")
    (item,) = [json.loads(line) for line in out]
    assert item["encoding"] == "base64" and base64.b64decode(item["data"]) == raw
    out, _ = ok(cluster, "history", "bin", "--linearizable")
    assert out == ["0\t" + raw.decode("utf-8", errors="replace")]

    out, err = ok(cluster, "history", "hist", "--all", "--linearizable")
    assert out == expected and offset_range(err) == (0, 1500, 1500)
    out, err = ok(cluster, "history", "hist", "--all", "--limit", "400")  # four pages, local reads
    assert out == expected and offset_range(err)[2] == 1500
    out, _ = ok(cluster, "history", "hist", "--all", "--last", "1200", "--linearizable")
    assert out == expected[300:]
    out, _ = ok(cluster, "history", "hist", "--all", "--from", "1400", "--json", "--linearizable")
    assert [json.loads(line)["offset"] for line in out] == list(range(1400, 1500))

    refused = wiber(cluster, "history", "hist", "--limit", "1001")
    assert refused.returncode == 2 and b"--all" in refused.stderr
    refused = wiber(cluster, "history", "hist", "--from", "1", "--last", "2")
    assert refused.returncode == 2


@pytest.mark.timeout(60)
def test_sub_from_zero_receives_exactly_count_in_order(cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(3)
    client = cluster.client(total_s=20.0)
    for i in range(10):
        client.publish("feed", b"msg-%02d" % i)
    proc = subprocess.Popen(wiber_command(cluster, "sub", "feed", "--from", "0", "--count", "30"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(REPO))
    try:
        reader = LineReader(proc.stdout)
        early = reader.lines(10, timeout=20)  # the past, from HISTORY
        for i in range(10, 40):  # then live: ten more than --count asks for
            client.publish("feed", b"msg-%02d" % i)
        assert proc.wait(timeout=30) == 0, proc.stderr.read() if proc.stderr else ""
        rest = reader.lines(20, timeout=5)
        assert reader.buffer == b"" and proc.stdout is not None and proc.stdout.read() == b""
    finally:
        proc.kill()
        proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    assert early + rest == [f"{i}\tmsg-{i:02d}" for i in range(30)]

    out, _ = ok(cluster, "sub", "feed", "--from", "38", "--count", "2", "--json")
    assert [(o["offset"], o["data"]) for o in map(json.loads, out)] == [(38, "msg-38"), (39, "msg-39")]


@pytest.mark.timeout(60)
def test_sub_ends_quietly_on_ctrl_c_and_on_a_closed_pipe(cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(3)
    client = cluster.client(total_s=20.0)

    # Ctrl-C: exit 0, nothing on stderr. Without --from only new messages come: publish until one shows.
    # SIGINT at its default in the child: a suite started in the background (`make test &`) runs with
    # SIGINT ignored, which every child inherits, and Ctrl-C would then never reach `wiber sub`.
    proc = subprocess.Popen(wiber_command(cluster, "sub", "live"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=str(REPO),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        reader = LineReader(proc.stdout)

        def heard() -> bool:
            client.publish("live", b"ping")
            return reader.any_line()

        wait_for(heard, 20, "the subscriber to print a live message", interval=0.2)
        assert re.fullmatch(r"\d+\tping", reader.lines(1, timeout=1)[0])
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
        assert proc.stderr is not None and proc.stderr.read() == b""
    finally:
        proc.kill()
        proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()

    # A reader that goes away (`wiber sub t | head -1`): exit 0, no traceback.
    padding = b" " + b"x" * 200  # 5000 lines of 220 bytes: far more than a pipe buffer holds
    for start in range(0, 5000, 1000):
        client.publish_batch("many", [b"message number %05d" % i + padding for i in range(start, start + 1000)])
    proc = subprocess.Popen(wiber_command(cluster, "sub", "many", "--from", "0"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=str(REPO))
    try:
        assert LineReader(proc.stdout).lines(1, timeout=20) == ["0\tmessage number 00000" + padding.decode()]
        assert proc.stdout is not None
        proc.stdout.close()
        assert proc.wait(timeout=20) == 0
        assert proc.stderr is not None and proc.stderr.read() == b""
    finally:
        proc.kill()
        proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


@pytest.mark.timeout(60)
def test_commands_fail_with_one_clear_line() -> None:
    dead = f"127.0.0.1:{free_port()}"
    for args, stdin, says in [
        (["pub", "t", "message"], b"", "no answer"),
        (["pub", "t"], b"a\nb\n", "stopped after 0 acknowledged messages (2 read)"),
        (["history", "t"], b"", "no answer"),
        (["topics"], b"", "no answer"),
    ]:
        started = time.monotonic()
        done = wiber(None, *args, "--addr", dead, "--timeout", "0.2", stdin=stdin)
        err = done.stderr.decode()
        assert done.returncode == 1, (args, err)
        assert err.startswith("wiber: ") and err.count("\n") == 1 and says in err, err
        assert time.monotonic() - started < 10  # a stream gives up after 10 x --timeout

    bad = wiber(None, "pub", "$reserved", "message", "--addr", dead)
    assert bad.returncode == 2 and b"bad topic name" in bad.stderr
    bad = wiber(None, "pub", "t", "--batch", "0", "--addr", dead)
    assert bad.returncode == 2
