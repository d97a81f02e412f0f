"""
Prometheus metrics for C{twistd bulklq --metrics ENDPOINT}, served by twisted.web.

The exporter reads the counters of the server's L{ServerStats} at scrape time (nothing is
copied on the query path) and feeds the query-duration histogram from finished queries.
prometheus-client is an optional dependency (C{pip install 'bulklq[metrics]'}); L{require}
says so in one line when it is missing.
"""

from __future__ import annotations

from collections.abc import Iterator

from twisted.web.http import Request as HTTPRequest
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from .config import ConfigError
from .stats import QueryRecord, ServerStats

try:
    from prometheus_client import CONTENT_TYPE_LATEST, Histogram, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import CollectorRegistry
except ImportError:  # the optional extra is not installed
    AVAILABLE = False
else:
    AVAILABLE = True

__all__ = ["AVAILABLE", "DURATION_BUCKETS", "MetricsExporter", "require"]

#: Query-duration histogram buckets in seconds: from a cache hit to a full relay recovery.
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0)


def require() -> None:
    """
    Check that prometheus-client is installed.

    @raise ConfigError: if it is not, saying how to install it.
    """
    if not AVAILABLE:
        raise ConfigError(
            "--metrics: needs prometheus-client; install it with: pip install 'bulklq[metrics]'"
        )


class _StatsCollector:
    """A prometheus-client collector reading a L{ServerStats} at scrape time."""

    def __init__(self, stats: ServerStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        """Yield one metric family per counter of the server's statistics."""
        stats = self._stats
        yield GaugeMetricFamily(
            "bulklq_connections_open", "Bulk Leasequery connections open.", stats.connections_open
        )
        yield CounterMetricFamily(
            "bulklq_connections_accepted",
            "Bulk Leasequery connections accepted.",
            stats.connections_accepted,
        )
        refusals = CounterMetricFamily(
            "bulklq_connection_refusals",
            "Connections closed at once, by reason (acl, limit, per-requestor-limit).",
            labels=["reason"],
        )
        for reason, count in sorted(stats.refusals.items()):
            refusals.add_metric([reason], count)
        yield refusals
        yield CounterMetricFamily(
            "bulklq_connection_evictions",
            "Idle connections closed to admit a waiting requestor.",
            stats.evictions,
        )
        queries = CounterMetricFamily(
            "bulklq_queries",
            "Finished queries by query type and status.",
            labels=["type", "status"],
        )
        for (query_type, status), count in sorted(stats.queries.items()):
            queries.add_metric([query_type, status], count)
        yield queries
        yield CounterMetricFamily(
            "bulklq_bindings_sent", "CLIENT_DATA options sent.", stats.bindings_sent
        )
        yield CounterMetricFamily(
            "bulklq_sent_bytes", "Octets written to requestors.", stats.bytes_sent
        )
        timeouts = CounterMetricFamily(
            "bulklq_timeouts", "Timeouts by kind (data, idle, write, store).", labels=["kind"]
        )
        for kind, count in sorted(stats.timeouts.items()):
            timeouts.add_metric([kind], count)
        yield timeouts
        yield CounterMetricFamily(
            "bulklq_store_errors", "Store calls that failed.", stats.store_errors
        )


class _MetricsPage(Resource):
    """C{GET /metrics}: the registry in Prometheus text format."""

    isLeaf = True  # noqa: N815 - twisted.web's name

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self._registry = registry

    def render_GET(self, request: Request) -> bytes:
        """Render every metric, synchronously (the collectors only read counters)."""
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        return generate_latest(self._registry)


class _QuietSite(Site):
    """A site that does not log every scrape."""

    def log(self, request: HTTPRequest) -> None:
        """Keep scrapes out of the server's log."""


class MetricsExporter:
    """
    Exposes one L{ServerStats} as Prometheus metrics.

    @ivar registry: the prometheus-client registry holding bulklq's metrics only.
    """

    def __init__(self, stats: ServerStats) -> None:
        require()
        self._stats = stats
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_StatsCollector(stats))
        self._duration = Histogram(
            "bulklq_query_duration_seconds",
            "Time from reading a query to sending its last message.",
            ["type"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        stats.query_listeners.append(self._observe)

    def _observe(self, record: QueryRecord) -> None:
        self._duration.labels(record.query_type).observe(record.duration)

    def text(self) -> bytes:
        """The current metrics in Prometheus text format."""
        return generate_latest(self.registry)

    def site(self) -> Site:
        """A twisted.web site serving the metrics at C{/metrics}."""
        root = Resource()
        root.putChild(b"metrics", _MetricsPage(self.registry))
        site = _QuietSite(root)
        site.displayTracebacks = False
        return site

    def close(self) -> None:
        """Stop observing finished queries."""
        if self._observe in self._stats.query_listeners:
            self._stats.query_listeners.remove(self._observe)
