"""Logging for every `wiber` command: `--log-level` and `--log-format text|json`, the only handler setup.

The library only logs (a NullHandler in `wiber/__init__`); the command line decides where lines go.
Every command, and every node `wiber up` starts, writes log lines to stderr, quiet (WARNING) by
default so stdout and the terminal keep only what the command prints.

`--log-format json` writes one JSON object per line, for log shippers that parse rather than grep:

    {"ts": "2026-12-03T10:15:02.123Z", "level": "INFO", "logger": "wiber.node.loop",
     "msg": "n1 became leader at term 3", "pid": 4242}

`ts` (UTC, ISO 8601, milliseconds), `level`, `logger`, `msg` (the formatted message) and `pid` are
always there; `exc` holds a traceback when the record carries one, and any `extra={...}` field a
call site gives is added under its own name (values JSON cannot hold are written as their repr).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")
DEFAULT_LEVEL = "warning"
DEFAULT_FORMAT = "text"
TEXT_FORMAT = "%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"

#: The attributes every LogRecord has: anything else on a record came from `extra=` at the call site.
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None))) | {
    "message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: ts, level, logger, msg, pid, then the structured fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Returns: the record as one line of JSON (no newline inside: tracebacks are escaped)."""
        seconds = time.gmtime(record.created)
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", seconds) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process,
        }
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and key not in doc:
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        elif record.stack_info:
            doc["exc"] = self.formatStack(record.stack_info)
        return json.dumps(doc, default=repr, ensure_ascii=False)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A StreamHandler on whatever sys.stderr is when a record is written (tests swap it per test)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


#: The handler setup_logging installed, replaced by the next call (and no other handler touched:
#: a test runner's own capture handlers stay).
_installed: logging.Handler | None = None


def setup_logging(level: str = DEFAULT_LEVEL, fmt: str = DEFAULT_FORMAT) -> None:
    """Send the root logger's records at `level` and above to stderr, as text lines or JSON objects.

    Replaces the handler an earlier call installed, so a command that calls it twice (`wiber node`
    through `main` and then `run_node`) still writes each line once.
    """
    global _installed
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    if _installed is not None:
        root.removeHandler(_installed)
    root.addHandler(handler)
    _installed = handler
    root.setLevel(level.upper())


def add_logging_args(p: argparse.ArgumentParser, top: bool) -> None:
    """Add --log-level and --log-format. On the top parser they carry the defaults; on a subcommand
    they are SUPPRESSed when absent, so `wiber --log-level info status` is not undone by `status`."""
    level_default: Any = DEFAULT_LEVEL if top else argparse.SUPPRESS
    format_default: Any = DEFAULT_FORMAT if top else argparse.SUPPRESS
    p.add_argument("--log-level", choices=LEVELS, default=level_default,
                   help=f"log lines at this level and above go to stderr (default {DEFAULT_LEVEL}: quiet)")
    p.add_argument("--log-format", choices=FORMATS, default=format_default,
                   help="text lines, or one JSON object per line with ts, level, logger, msg (default text)")
