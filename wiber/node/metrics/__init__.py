"""The node's metrics (docs/operations.md, "Metrics"): a tiny Prometheus registry and the HTTP server
that serves it from the node's own poller.

* `registry`  `Counter`, `Gauge`, `Histogram`, `Registry`: pure, rendered as text exposition 0.0.4
* `http`      `MetricsHttp`: a non-blocking HTTP/1.1 server for the loop's `zmq.Poller`, no thread
"""

from wiber.node.metrics.http import MetricsBindError, MetricsHttp, Route
from wiber.node.metrics.registry import (
    CONTENT_TYPE,
    LATENCY_BUCKETS,
    SNAPSHOT_BUCKETS,
    Counter,
    Gauge,
    Histogram,
    Metric,
    Registry,
)

__all__ = [
    "CONTENT_TYPE", "LATENCY_BUCKETS", "SNAPSHOT_BUCKETS", "Counter", "Gauge", "Histogram",
    "Metric", "MetricsBindError", "MetricsHttp", "Registry", "Route",
]
