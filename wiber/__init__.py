"""Wiber: a replicated publish/subscribe log in pure Python (Raft over ZeroMQ).

Public API: `Client` (with `Consumer` and `ConsumedMessage` of consumer groups), the exception tree of `wiber.errors` (with the client's key errors,
`CurveError` and `KeyFileError`), and `__version__`.
"""

from __future__ import annotations

import importlib.metadata as _metadata
import logging

from wiber.client import Client, ConsumedMessage, Consumer, Timeouts
from wiber.client.curve import CurveError, KeyFileError
from wiber.errors import (
    BadRequest,
    ClientError,
    ConfigError,
    ConsumerError,
    Forbidden,
    GroupConflict,
    NotLeader,
    PendingCapReached,
    SessionExpired,
    StorageError,
    TooLarge,
    TooManyGroups,
    Unavailable,
    UnknownGroup,
    UnknownOp,
    WiberError,
    WireError,
)

try:  # the installed distribution's version (pyproject.toml): one place to change it
    __version__ = _metadata.version("wiber")
except _metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "BadRequest",
    "Client",
    "ClientError",
    "ConfigError",
    "ConsumedMessage",
    "Consumer",
    "ConsumerError",
    "CurveError",
    "Forbidden",
    "GroupConflict",
    "KeyFileError",
    "NotLeader",
    "PendingCapReached",
    "SessionExpired",
    "StorageError",
    "Timeouts",
    "TooLarge",
    "TooManyGroups",
    "Unavailable",
    "UnknownGroup",
    "UnknownOp",
    "WiberError",
    "WireError",
    "__version__",
]
