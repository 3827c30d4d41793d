"""A tiny Prometheus registry: counters, gauges and histograms rendered as text exposition 0.0.4.

Why not `prometheus_client`: the node is one thread and one poller, and counts every client
request; the library's metrics take a lock per increment and its exposition server is a thread.
This module is pure (no sockets, no clock, no threads), so the loop counts with a dict update and
renders on its own turn (docs/operations.md, "Metrics").

Theory of operation:

* A metric is built once, with its name, help text and label names validated at construction
  (`ValueError` otherwise), and registered in a `Registry` under a unique name.
* The hot path is one dict get and one dict set: a labelled counter keeps its values in a dict
  keyed by the tuple of label values (`Counter.add(("publish", "ok"))`); `labels(*values)` hands
  out a cached child over the same dict. A label value set seen for the first time is checked
  once (count, type) and its rendered `{a="x",b="y"}` text is kept, so rendering never escapes a
  counter's labels twice.
* A gauge is either set by the loop, or read at render time through a callback: one float, or for a
  labelled gauge an iterable of (label values, float), one sample per topic for example. A callback
  that fails leaves its family without samples and logs the error: one broken source does not
  blank the whole page.
* A histogram has fixed upper bounds; `observe` is one bisect and two additions. Rendering makes
  the buckets cumulative and adds `+Inf` (always equal to `_count`), `_sum` and `_count`.

Format rules kept (https://prometheus.io/docs/instrumenting/exposition_formats/, text 0.0.4):
metric names match `[a-zA-Z_:][a-zA-Z0-9_:]*`, label names `[a-zA-Z_][a-zA-Z0-9_]*` and do not
begin with `__` (reserved); a counter's name ends with `_total`; HELP escapes backslash and newline;
label values escape backslash, double quote and newline; a float that is an integer prints without
a fraction or exponent, the others as Python's shortest round-trip repr (which Go's ParseFloat
reads), and the specials as `NaN`, `+Inf`, `-Inf`.

Invariants: a registered name is unique in its registry; every sample of a labelled metric has
exactly its label names; a histogram's `+Inf` bucket equals its `_count`.
"""

from __future__ import annotations

import logging
import math
import re
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar, Union, cast

log = logging.getLogger(__name__)

#: The HTTP Content-Type of `Registry.render`'s output.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Upper bounds (seconds) for latencies from 50 us to 10 s: loop turns, fsyncs.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
#: Upper bounds (seconds) for snapshots, from 1 ms to 60 s.
SNAPSHOT_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")

#: What a gauge's callback returns: one value, or for a labelled gauge (label values, value) pairs.
GaugeSamples = Union[float, Iterable[tuple[Sequence[str], float]]]
LabelKey = tuple[str, ...]

_SPECIAL_VALUES = {"nan": "NaN", "inf": "+Inf", "-inf": "-Inf"}


def format_value(value: float) -> str:
    """Returns: `value` as a sample value: integers without fraction or exponent (below 1e21),
    `NaN`, `+Inf`, `-Inf`, else Python's shortest round-trip repr (`0.25`, `1e-05`, `1e+300`)."""
    if type(value) is not float:
        if isinstance(value, int):
            return str(int(value))
        value = float(value)
    text = repr(value)
    if text.endswith(".0"):
        return text[:-2]
    special = _SPECIAL_VALUES.get(text)
    if special is not None:
        return special
    if "e+" in text and -1e21 < value < 1e21:  # an integer >= 1e16: repr's exponent, not Go's
        return str(int(value))
    return text


def escape_label_value(value: str) -> str:
    """Returns: `value` with backslash, double quote and newline escaped for a label value."""
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _METRIC_NAME.match(name):
        raise ValueError(f"invalid metric name {name!r}: must match [a-zA-Z_:][a-zA-Z0-9_:]*")
    return name


def _check_labelnames(name: str, labelnames: Sequence[str]) -> LabelKey:
    names = tuple(labelnames)
    for label in names:
        if not isinstance(label, str) or not _LABEL_NAME.match(label) or label.startswith("__"):
            raise ValueError(f"metric {name}: invalid label name {label!r}: must match "
                             "[a-zA-Z_][a-zA-Z0-9_]* and not begin with __")
    if len(set(names)) != len(names):
        raise ValueError(f"metric {name}: duplicate label names in {names!r}")
    return names


class Metric:
    """What a registry holds: a family with a name, a help text and a type, that renders itself."""

    kind = "untyped"

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        """Raises: ValueError if the name or a label name is invalid."""
        self.name = _check_name(name)
        self.help = help
        self.labelnames = _check_labelnames(name, labelnames)
        self._header = f"# HELP {name} {_escape_help(help)}\n# TYPE {name} {self.kind}\n"
        #: Rendered label text per label-value tuple, made once when the tuple is first seen.
        self._label_text: dict[LabelKey, str] = {}

    def _key(self, values: Sequence[str]) -> LabelKey:
        """Returns: `values` as a checked key (right count, all str), with its label text kept.

        Raises: ValueError on a wrong count or a non-str value.
        """
        key = tuple(values)
        if key in self._label_text:
            return key
        if len(key) != len(self.labelnames):
            raise ValueError(f"metric {self.name}: expected {len(self.labelnames)} label values "
                             f"{self.labelnames!r}, got {key!r}")
        for value in key:
            if not isinstance(value, str):
                raise ValueError(f"metric {self.name}: label values must be str, got {key!r}")
        self._label_text[key] = _label_text(self.labelnames, key)
        return key

    def render_into(self, out: list[str]) -> None:
        """Append this family's text (HELP, TYPE, samples) to `out`."""
        out.append(self._header)


def _label_text(names: LabelKey, values: Sequence[str]) -> str:
    if not names:
        return ""
    return "{" + ",".join(f'{n}="{escape_label_value(v)}"' for n, v in zip(names, values)) + "}"


class _Child:
    """One labelled series of a counter or gauge, over its parent's value dict."""

    __slots__ = ("_values", "_key")

    def __init__(self, values: dict[LabelKey, float], key: LabelKey) -> None:
        self._values = values
        self._key = key

    def get(self) -> float:
        """Returns: the current value."""
        return self._values[self._key]


class CounterChild(_Child):
    """A counter's series for one label value set (`Counter.labels`)."""

    __slots__ = ()

    def inc(self, amount: float = 1.0) -> None:
        """Add `amount` (>= 0). Raises: ValueError on a negative amount."""
        if amount < 0:
            raise ValueError(f"a counter only goes up, got {amount!r}")
        self._values[self._key] += amount


class GaugeChild(_Child):
    """A gauge's series for one label value set (`Gauge.labels`)."""

    __slots__ = ()

    def set(self, value: float) -> None:
        """Set the value."""
        self._values[self._key] = value

    def inc(self, amount: float = 1.0) -> None:
        """Add `amount` (may be negative)."""
        self._values[self._key] += amount

    def dec(self, amount: float = 1.0) -> None:
        """Subtract `amount`."""
        self._values[self._key] -= amount


_ChildT = TypeVar("_ChildT", bound=_Child)


class _Labelled(Metric):
    """Shared by counters and gauges: one value per label value set (the empty tuple when unlabelled)."""

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, help, labelnames)
        self._values: dict[LabelKey, float] = {}
        self._children: dict[LabelKey, _Child] = {}
        if not self.labelnames:
            self._values[self._key(())] = 0.0

    def _child(self, values: tuple[str, ...], cls: type[_ChildT]) -> _ChildT:
        child = self._children.get(values)
        if child is None:
            if not self.labelnames:
                raise ValueError(f"metric {self.name} has no labels")
            key = self._key(values)
            self._values.setdefault(key, 0.0)
            child = self._children[key] = cls(self._values, key)
        return cast(_ChildT, child)

    def get(self, *values: str) -> float:
        """Returns: the value of the series with these label values (0 if never touched)."""
        return self._values.get(values, 0.0)

    def total(self) -> float:
        """Returns: the sum over every series (a labelled counter's grand total)."""
        return sum(self._values.values())

    def remove(self, *values: str) -> None:
        """Drop the series with these label values (a deleted topic); no error if absent."""
        self._values.pop(values, None)
        self._children.pop(values, None)
        self._label_text.pop(values, None)

    def render_into(self, out: list[str]) -> None:
        """Append HELP, TYPE and one sample per label value set to `out`."""
        out.append(self._header)
        name, text = self.name, self._label_text
        out.extend([f"{name}{text[key]} {format_value(value)}\n" for key, value in self._values.items()])


class Counter(_Labelled):
    """A count that only goes up: requests served, messages stored. The name ends with `_total`.

    Unlabelled: `inc(amount)`. Labelled: `labels(*values).inc()`, or on the hot path
    `add(("publish", "ok"))`, one dict get and one dict set.
    """

    kind = "counter"

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        """Raises: ValueError if the name does not end with `_total` or a name is invalid."""
        if isinstance(name, str) and not name.endswith("_total"):
            raise ValueError(f"counter name {name!r} must end with _total")
        super().__init__(name, help, labelnames)

    def inc(self, amount: float = 1.0) -> None:
        """Add `amount` (>= 0) to an unlabelled counter.

        Raises: ValueError on a negative amount or a labelled counter.
        """
        if amount < 0:
            raise ValueError(f"a counter only goes up, got {amount!r}")
        if self.labelnames:
            raise ValueError(f"metric {self.name} is labelled: use labels(...).inc() or add()")
        self._values[()] += amount

    def add(self, key: tuple[str, ...], amount: float = 1.0) -> None:
        """Add `amount` (>= 0, not checked here: the hot path) to the series `key`, the label values
        in the order of `labelnames`. Checked once, the first time `key` is seen.

        Raises: ValueError if a new key has the wrong number of values or a non-str value.
        """
        values = self._values
        value = values.get(key)
        if value is None:
            value = values[self._key(key)] = 0.0
        values[key] = value + amount

    def labels(self, *values: str) -> CounterChild:
        """Returns: the (cached) series with these label values, in the order of `labelnames`.

        Raises: ValueError on a wrong number of values or an unlabelled counter.
        """
        return self._child(values, CounterChild)


class Gauge(_Labelled):
    """A value that goes up and down: the term, the commit index, a topic's end offset.

    Either set by the node (`set`, `inc`, `dec`, `labels(*values).set(v)`), or read when rendered
    through `fn`: a float when unlabelled, an iterable of (label values, float) when labelled.
    """

    kind = "gauge"

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = (),
                 fn: Callable[[], GaugeSamples] | None = None) -> None:
        """Raises: ValueError if a name is invalid."""
        super().__init__(name, help, labelnames)
        self._fn = fn

    def _settable(self) -> None:
        if self._fn is not None:
            raise ValueError(f"gauge {self.name} is read through its callback, not set")
        if self.labelnames:
            raise ValueError(f"metric {self.name} is labelled: use labels(...)")

    def set(self, value: float) -> None:
        """Set an unlabelled gauge. Raises: ValueError on a labelled or callback gauge."""
        self._settable()
        self._values[()] = value

    def inc(self, amount: float = 1.0) -> None:
        """Add `amount` to an unlabelled gauge. Raises: ValueError on a labelled or callback gauge."""
        self._settable()
        self._values[()] += amount

    def dec(self, amount: float = 1.0) -> None:
        """Subtract `amount` from an unlabelled gauge. Raises: as `inc`."""
        self.inc(-amount)

    def labels(self, *values: str) -> GaugeChild:
        """Returns: the (cached) series with these label values.

        Raises: ValueError on a wrong number of values, an unlabelled or a callback gauge.
        """
        if self._fn is not None:
            raise ValueError(f"gauge {self.name} is read through its callback, not set")
        return self._child(values, GaugeChild)

    def render_into(self, out: list[str]) -> None:
        """Append HELP, TYPE and the samples (set, or read from the callback now) to `out`."""
        if self._fn is None:
            super().render_into(out)
            return
        out.append(self._header)
        try:
            samples = self._fn()
            if not self.labelnames:
                if not isinstance(samples, (int, float)):
                    raise TypeError(f"expected a float, got {type(samples).__name__}")
                out.append(f"{self.name} {format_value(samples)}\n")
                return
            if isinstance(samples, (int, float)):
                raise TypeError("a labelled gauge's callback returns (label values, value) pairs")
            out.extend(self._render_pairs(samples))
        except Exception:
            log.exception("metric %s: its callback failed; rendered without samples", self.name)

    def _render_pairs(self, samples: Iterable[tuple[Sequence[str], float]]) -> list[str]:
        name, names, width = self.name, self.labelnames, len(self.labelnames)
        lines = []
        if width == 1:  # one sample per topic or group: the common case, kept lean
            prefix = f'{name}{{{names[0]}="'
            for values, value in samples:
                if len(values) != 1:
                    raise ValueError(f"expected 1 label value {names!r}, got {values!r}")
                lines.append(f'{prefix}{escape_label_value(values[0])}"}} {format_value(value)}\n')
            return lines
        for values, value in samples:
            if len(values) != width:
                raise ValueError(f"expected {width} label values {names!r}, got {values!r}")
            lines.append(f"{name}{_label_text(names, values)} {format_value(value)}\n")
        return lines


class Histogram(Metric):
    """Observations counted into fixed buckets: fsync and loop-turn durations, snapshot times.

    `observe(value)` bisects the upper bounds (a value equal to a bound falls in that bound's
    bucket: `le` is "less or equal"). Unlabelled: the node has one series per histogram.
    """

    kind = "histogram"

    def __init__(self, name: str, help: str, buckets: Sequence[float] = LATENCY_BUCKETS) -> None:
        """`buckets`: strictly increasing finite upper bounds; a trailing +Inf is implied (and
        dropped if given).

        Raises: ValueError if the name is invalid or the bounds are empty, unsorted or not finite.
        """
        super().__init__(name, help)
        bounds = [float(b) for b in buckets]
        if bounds and bounds[-1] == math.inf:
            bounds.pop()
        if not bounds:
            raise ValueError(f"histogram {name}: needs at least one finite bucket bound")
        if any(not math.isfinite(b) for b in bounds) or any(a >= b for a, b in zip(bounds, bounds[1:])):
            raise ValueError(f"histogram {name}: bucket bounds must be finite and strictly "
                             f"increasing, got {tuple(buckets)!r}")
        self.buckets: tuple[float, ...] = tuple(bounds)
        self._counts = [0] * (len(bounds) + 1)
        self._sum = 0.0
        les = [format_value(b) for b in bounds] + ["+Inf"]
        self._bucket_prefixes = [f'{name}_bucket{{le="{le}"}} ' for le in les]

    def observe(self, value: float) -> None:
        """Count one observation. Raises: ValueError on NaN."""
        if value != value:
            raise ValueError(f"histogram {self.name}: cannot observe NaN")
        self._counts[bisect_left(self.buckets, value)] += 1
        self._sum += value

    @property
    def count(self) -> int:
        """The number of observations so far."""
        return sum(self._counts)

    @property
    def sum(self) -> float:
        """The sum of the observations so far."""
        return self._sum

    def render_into(self, out: list[str]) -> None:
        """Append HELP, TYPE, the cumulative `_bucket` samples, `_sum` and `_count` to `out`."""
        out.append(self._header)
        total = 0
        for prefix, n in zip(self._bucket_prefixes, self._counts):
            total += n
            out.append(f"{prefix}{total}\n")
        out.append(f"{self.name}_sum {format_value(self._sum)}\n{self.name}_count {total}\n")


_M = TypeVar("_M", bound=Metric)


class Registry:
    """The node's metrics, rendered in registration order as one text exposition page."""

    def __init__(self) -> None:
        self._metrics: dict[str, Metric] = {}

    def register(self, metric: _M) -> _M:
        """Add `metric`. Returns: it, so that `x = registry.register(Counter(...))` reads in one line.

        Raises: ValueError if a metric of that name is already registered.
        """
        if metric.name in self._metrics:
            raise ValueError(f"metric {metric.name} is already registered")
        self._metrics[metric.name] = metric
        return metric

    def unregister(self, name: str) -> None:
        """Drop the metric called `name`; no error if absent."""
        self._metrics.pop(name, None)

    def get(self, name: str) -> Metric | None:
        """Returns: the metric called `name`, or None."""
        return self._metrics.get(name)

    def render(self) -> bytes:
        """Returns: every metric in the text exposition format 0.0.4 (`CONTENT_TYPE`), UTF-8."""
        out: list[str] = []
        for metric in self._metrics.values():
            metric.render_into(out)
        return "".join(out).encode("utf-8")
