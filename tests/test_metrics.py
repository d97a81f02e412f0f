"""Tests for L{bulklq.metrics}: Prometheus text from the server's counters."""

from __future__ import annotations

from unittest import mock

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from bulklq import metrics
from bulklq.config import ConfigError
from bulklq.stats import QueryRecord, ServerStats


def filled_stats() -> ServerStats:
    """Statistics as a server that has seen some traffic has them."""
    stats = ServerStats()
    stats.connections_open = 2
    stats.connections_accepted = 7
    stats.refusals["acl"] += 3
    stats.refusals["limit"] += 1
    stats.evictions = 1
    stats.bindings_sent = 1234
    stats.bytes_sent = 98765
    stats.timeouts["data"] += 2
    stats.store_errors = 4
    return stats


class ExporterTests(SynchronousTestCase):
    """The exporter reads L{ServerStats} at scrape time."""

    def test_counters(self) -> None:
        """Every counter of ServerStats appears under its metric name."""
        stats = filled_stats()
        exporter = metrics.MetricsExporter(stats)
        self.addCleanup(exporter.close)
        stats.query_finished(QueryRecord("::1", 1, "relay-id", "Success", 10, 0.02))
        stats.query_finished(QueryRecord("::1", 2, "link", "NotConfigured", 0, 0.001))
        text = exporter.text().decode()
        for line in [
            "bulklq_connections_open 2.0",
            "bulklq_connections_accepted_total 7.0",
            'bulklq_connection_refusals_total{reason="acl"} 3.0',
            'bulklq_connection_refusals_total{reason="limit"} 1.0',
            "bulklq_connection_evictions_total 1.0",
            'bulklq_queries_total{status="Success",type="relay-id"} 1.0',
            'bulklq_queries_total{status="NotConfigured",type="link"} 1.0',
            "bulklq_bindings_sent_total 1234.0",
            "bulklq_sent_bytes_total 98765.0",
            'bulklq_timeouts_total{kind="data"} 2.0',
            "bulklq_store_errors_total 4.0",
            'bulklq_query_duration_seconds_count{type="relay-id"} 1.0',
            'bulklq_query_duration_seconds_bucket{le="0.05",type="relay-id"} 1.0',
            'bulklq_query_duration_seconds_bucket{le="0.01",type="relay-id"} 0.0',
        ]:
            self.assertIn(line, text.splitlines())

    def test_live_values(self) -> None:
        """A scrape sees the counters as they are now, not as they were at creation."""
        stats = ServerStats()
        exporter = metrics.MetricsExporter(stats)
        self.addCleanup(exporter.close)
        stats.connections_open = 5
        self.assertIn("bulklq_connections_open 5.0", exporter.text().decode().splitlines())

    def test_close_unsubscribes(self) -> None:
        """After close(), finished queries are no longer observed."""
        stats = ServerStats()
        exporter = metrics.MetricsExporter(stats)
        exporter.close()
        self.assertEqual(stats.query_listeners, [])

    def test_resource(self) -> None:
        """GET /metrics renders the text format with Prometheus's content type."""
        stats = filled_stats()
        exporter = metrics.MetricsExporter(stats)
        self.addCleanup(exporter.close)
        site = exporter.site()
        request = DummyRequest([b"metrics"])
        resource = site.getResourceFor(request)
        body = resource.render(request)
        self.assertIn(b"bulklq_connections_open 2.0", body)
        self.assertTrue(
            request.responseHeaders.getRawHeaders(b"content-type")[0].startswith(b"text/plain")
        )

    def test_missing_extra(self) -> None:
        """Without prometheus-client, --metrics is one line saying how to install it."""
        with mock.patch.object(metrics, "AVAILABLE", False):
            error = self.assertRaises(ConfigError, metrics.require)
        self.assertEqual(
            str(error),
            "--metrics: needs prometheus-client; install it with: pip install 'bulklq[metrics]'",
        )
