"""The client's retry policy (`wiber.client.retry`) and its seq file (`wiber.client.seqfile`), without a cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from wiber.client.retry import ELECTION_PAUSE_S, RETRY_PAUSE_S, RetryPlan
from wiber.client.seqfile import BLOCK, SeqFile, SeqFileError
from wiber.errors import BadRequest, ClientError, NotLeader, OutOfSequence, StorageError, Unavailable

ADDRS = ["tcp://127.0.0.1:1", "tcp://127.0.0.1:2"]


def plan() -> RetryPlan:
    return RetryPlan("publish to 'orders'", ADDRS, deadline=10.0, total_s=10.0)


def test_an_ok_reply_ends_the_request() -> None:
    step = plan().on_reply({"ok": True, "offset": 3})
    assert step.done and step.reply == {"ok": True, "offset": 3} and step.error is None


def test_not_leader_goes_to_the_leader_named_at_once_or_to_the_next_node_after_a_pause() -> None:
    retry = plan()
    named = retry.on_error(NotLeader("not me", "n2", "tcp://127.0.0.1:2"))
    assert (named.done, named.address, named.pause_s, named.same) == (False, "tcp://127.0.0.1:2", 0.0, False)
    unknown = retry.on_error(NotLeader("election"))
    assert (unknown.done, unknown.address, unknown.pause_s) == (False, None, ELECTION_PAUSE_S)
    assert not retry.outcome_unknown, "a NOT_LEADER answer stored nothing"


def test_unavailable_retries_the_same_node_and_storage_the_next_both_outcome_unknown() -> None:
    retry = plan()
    step = retry.on_reply({"ok": False, "error": "UNAVAILABLE", "message": "no quorum"})
    assert (step.done, step.same, step.pause_s) == (False, True, RETRY_PAUSE_S)
    assert retry.outcome_unknown
    step = plan().on_error(StorageError("disk full"))
    assert (step.done, step.same, step.address) == (False, False, None)


def test_silence_moves_on_and_marks_the_outcome_unknown() -> None:
    retry = plan()
    step = retry.on_silence(ADDRS[0], refused="the node refused this client's key")
    assert not step.done and retry.outcome_unknown and retry.refused == "the node refused this client's key"


def test_out_of_sequence_goes_again_to_the_same_node_at_once_and_stored_nothing() -> None:
    """Only an ``ordered`` request (the Publisher's) meets it: an earlier seq was refused on its way."""
    retry = plan()
    step = retry.on_reply({"ok": False, "error": "OUT_OF_SEQUENCE", "message": "send seq 2 again"})
    assert (step.done, step.same, step.address, step.pause_s) == (False, True, None, 0.0)
    assert isinstance(retry.last_error, OutOfSequence) and not retry.outcome_unknown


def test_a_request_error_is_final() -> None:
    step = plan().on_reply({"ok": False, "error": "BAD_REQUEST", "message": "no topic"})
    assert isinstance(step.error, BadRequest) and step.done


def test_past_the_deadline_the_error_names_the_callers_operation_and_the_last_cause() -> None:
    retry = plan()
    assert retry.expired(9.99) is None
    retry.on_error(Unavailable("no quorum"))
    step = retry.expired(10.0)
    assert step is not None and isinstance(step.error, ClientError)
    assert str(step.error).startswith("publish to 'orders': no answer from tcp://127.0.0.1:1, tcp://127.0.0.1:2")
    assert "no quorum" in str(step.error) and isinstance(step.error.last_error, Unavailable)


def test_a_seq_file_starts_above_every_seq_reserved_before(tmp_path: Path) -> None:
    path = tmp_path / "producer.seq"
    first = SeqFile(path)
    assert first.first == 1 and not path.exists()
    first.reserve(1)
    assert path.read_text() == f"{BLOCK}\n"
    first.reserve(BLOCK)  # covered: no write
    first.reserve(BLOCK + 1)
    assert path.read_text() == f"{2 * BLOCK}\n"
    assert SeqFile(path).first == 2 * BLOCK + 1, "a restart must never reuse a seq it may have sent"


def test_a_damaged_seq_file_is_refused_with_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "producer.seq"
    path.write_text("12x\n")
    with pytest.raises(SeqFileError, match="expected the highest seq used"):
        SeqFile(path)
