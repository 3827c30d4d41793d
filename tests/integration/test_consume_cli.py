"""`wiber consume` and `wiber consumers` as subprocesses against three real nodes (docs/consumers.md).

Each test runs `python -m wiber ...` as a user would and checks the exact output, the exit status and,
through `wiber consumers` or the client library, what the group holds afterwards: acked messages are
neither pending nor lagging, and a second run gets only what the first did not print.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from tests.conftest import REPO, ClusterHarness, wait_for
from tests.integration.test_cli import LineReader, ok, wiber, wiber_command
from wiber import cli
from wiber.client import Client


def created_note(group: str, pattern: str, from_start: bool = False, ack_wait_ms: int = 30000) -> str:
    """Returns: the stderr line `wiber consume` writes when it creates its group."""
    start = "the first kept message" if from_start else "the end"
    return f"created consumer group {group!r} on {pattern!r} (from {start} of each topic, ack_wait_ms {ack_wait_ms})\n"


@contextmanager
def running(cluster: ClusterHarness, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """Run `wiber ARGS` in the background for the block; it is killed and reaped when the block ends.

    SIGINT is at its default in the child: a suite started in the background (`make test &`) runs
    with SIGINT ignored, which every child inherits, and Ctrl-C would then never reach it.
    """
    with subprocess.Popen(wiber_command(cluster, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          cwd=str(REPO), preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)) as proc:
        try:
            yield proc
        finally:
            proc.kill()  # then Popen's exit closes the pipes and reaps it


def consumers(cluster: ClusterHarness) -> dict[str, dict[str, object]]:
    """Returns: `wiber consumers --json`, one entry per group."""
    out, _ = ok(cluster, "consumers", "--json")
    rows = [json.loads(line) for line in out]
    return {row.pop("group"): row for row in rows}


def wait_for_group(client: Client, group: str) -> None:
    """Wait until the cluster has group `group` (a background `wiber consume` created it)."""
    wait_for(lambda: group in client.groups(), 20, f"consumer group {group!r} to exist")


@pytest.mark.parametrize("command, words", [
    ("consume", ["GROUP", "PATTERN", "--count", "--json", "--ack-wait-ms", "--from-start", "--member", "durable",
                 "created on first use", "at the end", "at least once", "ack_wait_ms", "delivery", "Ctrl-C",
                 "GroupConflict", "topic<TAB>offset<TAB>data", "base64"]),
    ("consumers", ["PATTERN", "PENDING", "LAG", "--json", "--delete", "leader"]),
])
def test_consume_and_consumers_explain_themselves(command: str, words: list[str],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    missing = [word for word in [*words, "--config", "--addr", "--timeout", "--key"] if word not in text]
    assert exited.value.code == 0 and not missing, f"`wiber {command} --help` does not mention {missing}"
    assert f"wiber {command} " in cli.__doc__  # the command list of `wiber.cli`


@pytest.mark.timeout(90)
def test_consume_count_prints_the_messages_in_order_acks_them_and_a_second_run_gets_only_newer_ones(
        cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(3)
    client = cluster.client(total_s=20.0)
    for topic, data in (("orders.eu", b"eu-0"), ("orders.us", b"us-0"), ("orders.eu", b"eu-1"),
                        ("orders.eu.x", b"x-0")):  # orders.eu.x is not one token past orders.: never delivered
        client.publish(topic, data)

    # --from-start: what is kept already, each topic in offset order (topics in creation order).
    out, err = ok(cluster, "consume", "billing", "orders.*", "--from-start", "--count", "3")
    assert out == ["orders.eu\t0\teu-0", "orders.eu\t1\teu-1", "orders.us\t0\tus-0"]
    assert err == created_note("billing", "orders.*", from_start=True)

    # Every printed message is acked: nothing pending, nothing left to deliver (read from the leader,
    # which has applied every ack it answered: no waiting).
    out, _ = ok(cluster, "consumers")
    assert [line.split() for line in out] == [
        ["GROUP", "PATTERN", "ACK_WAIT_MS", "TOPICS", "PENDING", "LAG"],
        ["billing", "orders.*", "30000", "2", "0", "0"],
    ]

    # A second run of the group (its settings left out: the group's own apply) gets only what came since.
    client.publish("orders.us", b"us-1")
    client.publish("orders.eu", b"eu-2")
    out, err = ok(cluster, "consume", "billing", "orders.*", "--count", "2")
    assert out == ["orders.eu\t2\teu-2", "orders.us\t1\tus-1"] and err == ""

    # Lag counts the kept messages not delivered yet; a topic created later is the group's too.
    for i in range(3):
        client.publish("orders.asia", b"asia-%d" % i)
    assert consumers(cluster) == {"billing": {"pattern": "orders.*", "ack_wait_ms": 30000, "from_start": True,
                                              "topics": 3, "pending": 0, "lag": 3}}
    out, _ = ok(cluster, "consume", "billing", "orders.*", "--from-start", "--count", "3")
    assert out == [f"orders.asia\t{i}\tasia-{i}" for i in range(3)]
    assert consumers(cluster)["billing"]["lag"] == 0


@pytest.mark.timeout(90)
def test_a_new_group_starts_at_the_end_and_its_json_lines_carry_the_delivery_count(
        cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(3)
    client = cluster.client(total_s=20.0)
    client.publish("jobs", b"before the group")

    # Without --from-start, only messages published after the group was made.
    with running(cluster, "consume", "fresh", "jobs", "--count", "2") as proc:
        wait_for_group(client, "fresh")
        client.publish("jobs", b"new-1")
        client.publish("jobs", b"new-2")
        assert proc.wait(timeout=30) == 0
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.read().decode().splitlines() == ["jobs\t1\tnew-1", "jobs\t2\tnew-2"]
        assert proc.stderr.read().decode() == created_note("fresh", "jobs")

    # A member that received a message and died without acking: the group gives it again after its
    # ack_wait_ms, with delivery 2. The CLI takes the group's 1000 ms when --ack-wait-ms is left out.
    crashed = client.consumer("workers", "jobs", ack_wait_ms=1000, member="crashed")
    client.publish("jobs", "héllo")
    client.publish("jobs", b"\xff\x00 binary")
    held = crashed.fetch(1)
    assert [(m.offset, m.delivery) for m in held] == [(3, 1)]
    out, err = ok(cluster, "consume", "workers", "jobs", "--json", "--count", "2", "--member", "cli")
    assert err == ""
    lines = sorted((json.loads(line) for line in out), key=lambda line: line["offset"])
    for line in lines:
        assert set(line) == {"topic", "offset", "data", "encoding", "lamport", "ts", "index", "late", "delivery"}
        assert line["topic"] == "jobs" and line["late"] is False
    assert [(m["offset"], m["data"], m["encoding"], m["delivery"]) for m in lines] == [
        (3, "héllo", "utf-8", 2),
        (4, "/wAgYmluYXJ5", "base64", 1),
    ]
    assert lines[0]["lamport"] < lines[1]["lamport"]
    assert consumers(cluster)["workers"] == {"pattern": "jobs", "ack_wait_ms": 1000, "from_start": False,
                                             "topics": 1, "pending": 0, "lag": 0}
    assert held[0].ack() is False  # the CLI acked it: the crashed member's hold is gone


@pytest.mark.timeout(90)
def test_a_group_conflict_exits_1_naming_the_settings_and_bad_names_exit_2(
        cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(3)
    client = cluster.client(total_s=20.0)
    client.consumer("audit", "orders.*", ack_wait_ms=5000)
    settings = ("consumer group 'audit' exists with pattern 'orders.*', ack_wait_ms 5000 and from_start False")
    for args in (["orders.>"], ["orders.*", "--ack-wait-ms", "30000"], ["orders.*", "--from-start"]):
        done = wiber(cluster, "consume", "audit", *args, "--count", "1")
        assert done.returncode == 1 and done.stdout == b"", args
        assert done.stderr.decode().startswith(f"wiber: {settings}: "), done.stderr

    # The group's own settings, left out or given alike, join it.
    client.publish("orders.eu", b"eu-0")
    client.publish("orders.eu", b"eu-1")
    out, err = ok(cluster, "consume", "audit", "orders.*", "--count", "1")
    assert out == ["orders.eu\t0\teu-0"] and err == ""
    out, err = ok(cluster, "consume", "audit", "orders.*", "--ack-wait-ms", "5000", "--count", "1")
    assert out == ["orders.eu\t1\teu-1"] and err == ""

    # Names the broker would refuse are usage errors, found before anything is sent.
    for args, problem in (
            (["a*b", "orders.*"], "a group name must not contain '*' or '>'"),
            (["audit", "orders..eu"], "a topic pattern must not have an empty token"),
            (["audit", "orders.x>"], "are wildcards only as whole tokens"),
            (["audit", "orders.*", "--member", "m>"], "a member name must not contain '*' or '>'")):
        done = wiber(cluster, "consume", *args, "--count", "1")
        assert done.returncode == 2 and done.stdout == b"", args
        assert done.stderr.decode().startswith("wiber: ") and problem in done.stderr.decode(), done.stderr

    # --delete removes the group; a second delete finds none.
    done = wiber(cluster, "consumers", "--delete", "audit")
    assert done.returncode == 0 and done.stderr.decode() == "deleted consumer group 'audit'\n"
    done = wiber(cluster, "consumers", "--delete", "audit")
    assert done.returncode == 1 and done.stderr.decode() == "wiber: no consumer group 'audit'\n"
    assert consumers(cluster) == {}
    out, _ = ok(cluster, "consumers")
    assert [line.split() for line in out] == [["GROUP", "PATTERN", "ACK_WAIT_MS", "TOPICS", "PENDING", "LAG"]]


@pytest.mark.timeout(90)
def test_consume_ends_cleanly_on_ctrl_c_and_sigterm_leaving_nothing_held(
        cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(3)
    client = cluster.client(total_s=20.0)

    def all_acked() -> bool:
        group = client.groups()["tail"]
        return group["pending"] == 0 and group["lag"] == 0

    # --count 0: until Ctrl-C, which ends it with status 0 and nothing on stderr but the creation.
    # (A line is acked just after it is printed: the signal waits for that, or the last message would
    # be held until ack_wait_ms, as at-least-once allows.)
    with running(cluster, "consume", "tail", "events") as proc:
        wait_for_group(client, "tail")
        for i in range(3):
            client.publish("events", b"event-%d" % i)
        assert LineReader(proc.stdout).lines(3, timeout=20) == [f"events\t{i}\tevent-{i}" for i in range(3)]
        wait_for(all_acked, 10, "the printed messages to be acked")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
        assert proc.stderr is not None and proc.stderr.read().decode() == created_note("tail", "events")
    assert consumers(cluster)["tail"] == {"pattern": "events", "ack_wait_ms": 30000, "from_start": False,
                                          "topics": 1, "pending": 0, "lag": 0}

    # SIGTERM before --count messages came: 128 + 15, quietly, holding nothing.
    with running(cluster, "consume", "tail", "events", "--count", "5") as proc:
        client.publish("events", b"more")
        assert LineReader(proc.stdout).lines(1, timeout=20) == ["events\t3\tmore"]
        wait_for(all_acked, 10, "the printed message to be acked")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 128 + signal.SIGTERM
        assert proc.stderr is not None and proc.stderr.read() == b""
    assert consumers(cluster)["tail"]["pending"] == 0


@pytest.mark.timeout(90)
def test_a_closed_stdout_ends_consume_quietly_and_gives_back_what_it_did_not_write(
        cluster_factory: Callable[..., ClusterHarness]) -> None:
    cluster = cluster_factory(3)
    client = cluster.client(total_s=20.0)
    padding = "x" * 20_000  # ten lines of 20 kB: more than a pipe holds, so a write is waiting when it closes
    client.publish_batch("big", [f"{i:02d} {padding}".encode() for i in range(20)])
    with running(cluster, "consume", "piped", "big", "--from-start") as proc:
        assert LineReader(proc.stdout).lines(1, timeout=20) == [f"big\t0\t00 {padding}"]
        assert proc.stdout is not None
        proc.stdout.close()  # `wiber consume ... | head -1`
        assert proc.wait(timeout=20) == 0
        assert proc.stderr is not None
        assert proc.stderr.read().decode() == created_note("piped", "big", from_start=True)

    # The messages of its last fetch it had not written are pending and due now, not in 30 s: the next
    # run gets the first of them again at once (delivery 2), then the ones never delivered.
    group = consumers(cluster)["piped"]
    assert group["lag"] == 10 and 1 <= int(group["pending"]) <= 9, group  # type: ignore[call-overload]
    out, _ = ok(cluster, "consume", "piped", "big", "--json", "--count", "1")
    first = json.loads(out[0])
    assert first["delivery"] == 2 and first["offset"] == 10 - int(group["pending"])  # type: ignore[call-overload]
