"""Wiber: a replicated publish/subscribe log in pure Python (Raft over ZeroMQ).

Public API: `Client`, the exception tree of `wiber.errors` (with the client's key errors,
`CurveError` and `KeyFileError`), and `__version__`.
"""

from __future__ import annotations

import logging

from wiber.client import Client, Timeouts
from wiber.client.curve import CurveError, KeyFileError
from wiber.errors import (
    BadRequest,
    ClientError,
    ConfigError,
    Forbidden,
    NotLeader,
    SessionExpired,
    StorageError,
    TooLarge,
    Unavailable,
    UnknownOp,
    WiberError,
    WireError,
)

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "BadRequest",
    "Client",
    "ClientError",
    "ConfigError",
    "CurveError",
    "Forbidden",
    "KeyFileError",
    "NotLeader",
    "SessionExpired",
    "StorageError",
    "Timeouts",
    "TooLarge",
    "Unavailable",
    "UnknownOp",
    "WiberError",
    "WireError",
    "__version__",
]
