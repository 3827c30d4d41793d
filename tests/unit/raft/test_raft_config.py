"""`RaftConfig.validate()`: every bad field is refused with a message naming it."""

from __future__ import annotations

import random

import pytest

from wiber.raft import MemoryStorage, Raft, RaftConfig
from wiber.raft.messages import MAX_ENTRIES_PER_MESSAGE


def test_defaults_are_valid() -> None:
    config = RaftConfig("n1", ("n2", "n3"))
    config.validate()
    assert config.voters == ("n1", "n2", "n3")
    assert RaftConfig("n1", ("n1", "n2")).voters == ("n1", "n2")  # listing itself is harmless


@pytest.mark.parametrize("changes,field", [
    ({"id": ""}, "id"),
    ({"peers": ["n2"]}, "peers"),
    ({"peers": ("n2", "n2")}, "peers"),
    ({"peers": ("n2", "")}, "peers"),
    ({"election_ticks": 0}, "election_ticks"),
    ({"heartbeat_ticks": True}, "heartbeat_ticks"),
    ({"max_inflight": -1}, "max_inflight"),
    ({"max_batch_bytes": 0}, "max_batch_bytes"),
    ({"max_batch_entries": MAX_ENTRIES_PER_MESSAGE + 1}, "max_batch_entries"),
    ({"election_ticks": 5, "heartbeat_ticks": 5}, "heartbeat_ticks"),
    ({"pre_vote": 1}, "pre_vote"),
    ({"logger": "log"}, "logger"),
])
def test_bad_fields_are_named(changes: dict[str, object], field: str) -> None:
    """The ValueError names the field, so the message is actionable."""
    config = RaftConfig(**{"id": "n1", "peers": ("n2", "n3"), **changes})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=f"RaftConfig.{field}"):
        config.validate()
    with pytest.raises(ValueError):
        Raft(config, MemoryStorage(), random.Random(0))
