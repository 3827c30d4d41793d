"""Operation histories, Jepsen style: every step of every client process, one JSON object a line.

A client process records an ``invoke`` before it sends a request and exactly one completion after:

* ``ok``   - the cluster acknowledged it (a publish carries the topic and offset it was given);
* ``fail`` - it certainly did not happen (the request was refused as bad; never stored);
* ``info`` - the outcome is unknown (timeout, SESSION_EXPIRED): it may or may not be stored.

Subscribers record each delivered message as an ``ok`` ``read`` with its offset and value.
Readers record each HISTORY request as a ``history`` op: the invoke names the topic, the
``consistency`` (``linearizable`` or ``local``) and what was asked (``detail``); an ``ok`` adds the
node that answered, the topic's ``end`` offset it reported and the ``messages`` it returned as
``[offset, value]`` pairs (a few per read, so the files stay small). The nemesis records each fault as ``info`` ops with ``f`` = ``start`` / ``heal``, the fault's kind in
``value`` and its number in ``fault_id``.

Each process writes its own file (no interleaving across processes) and flushes every line, so a
killed process loses at most the line it was writing; `read_history` skips such a torn last line.
``time`` is ``time.monotonic()``: on Linux that is CLOCK_MONOTONIC, one clock for every process of
the machine, so records of different processes order correctly. ``wall`` is ``time.time()``, to
line records up with node logs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import IO, Any

INVOKE = "invoke"
OK = "ok"
FAIL = "fail"
INFO = "info"
TYPES = (INVOKE, OK, FAIL, INFO)

PUBLISH = "publish"
READ = "read"
HISTORY = "history"
LINEARIZABLE = "linearizable"
LOCAL = "local"
START = "start"
HEAL = "heal"

NEMESIS = "nemesis"


@dataclass(frozen=True, slots=True)
class Op:
    """One record of a history."""

    process: str
    type: str
    f: str
    topic: str | None = None
    value: str | None = None
    offset: int | None = None
    time: float = 0.0
    wall: float = 0.0
    error: str | None = None
    node: str | None = None
    fault_id: int | None = None
    detail: str | None = None
    consistency: str | None = None
    end: int | None = None
    messages: tuple[tuple[int, str], ...] | None = None

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if v is not None}, separators=(",", ":"))

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Op:
        known = {f.name for f in fields(cls)}
        kept = {k: v for k, v in raw.items() if k in known}
        if kept.get("messages") is not None:  # JSON lists back to the tuples records are made of
            kept["messages"] = tuple((int(o), str(v)) for o, v in kept["messages"])
        return cls(**kept)


def now_times() -> tuple[float, float]:
    """Returns: (monotonic, wall) now."""
    return time.monotonic(), time.time()


class HistoryWriter:
    """Appends one process's records to its JSONL file, flushing each line."""

    def __init__(self, path: Path | str, process: str) -> None:
        self.path = Path(path)
        self.process = process
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] | None = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()

    def write(self, op: Op) -> Op:
        if self._file is None:
            raise ValueError(f"history {self.path} is closed")
        self._file.write(op.to_json() + "\n")
        self._file.flush()
        return op

    def record(self, type_: str, f: str, **extra: Any) -> Op:
        """Write a record of this process stamped now. Returns: the record."""
        if type_ not in TYPES:
            raise ValueError(f"unknown op type {type_!r}")
        mono, wall = now_times()
        return self.write(Op(self.process, type_, f, time=mono, wall=wall, **extra))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> HistoryWriter:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_file(path: Path | str) -> list[Op]:
    """Returns: the records of one JSONL file, in file order (a torn last line is skipped).

    Raises:
        ValueError: a line other than the last is not a record.
    """
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    out: list[Op] = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(Op.from_dict(json.loads(line)))
        except (ValueError, TypeError):
            if i == len(lines) - 1:
                break  # the writer died mid-line
            raise ValueError(f"{path}:{i + 1}: not a history record: {line[:80]!r}") from None
    return out


def read_history(paths: Path | str | Iterable[Path | str]) -> list[Op]:
    """Returns: every record of a directory of ``*.jsonl`` files (or of the given files), by time.

    The sort is stable, so records of one process with the same time keep their file order.
    """
    if isinstance(paths, (str, Path)) and Path(paths).is_dir():
        files: list[Path | str] = sorted(Path(paths).glob("*.jsonl"))
    elif isinstance(paths, (str, Path)):
        files = [paths]
    else:
        files = list(paths)
    ops: list[Op] = []
    for path in files:
        ops.extend(read_file(path))
    ops.sort(key=lambda op: op.time)
    return ops


def write_history(path: Path | str, ops: Iterable[Op]) -> None:
    """Write records to one JSONL file (tests build histories by hand with this)."""
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(op.to_json() + "\n" for op in ops)
