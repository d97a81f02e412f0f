"""
Counters the server keeps for logs and the metrics endpoint.

The factory owns one L{ServerStats}; the Prometheus exporter of C{twistd bulklq} reads its
counters and subscribes to finished queries for the duration histogram.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import attrs

__all__ = ["QueryRecord", "ServerStats"]


@attrs.frozen
class QueryRecord:
    """One finished query, as logged and as the duration histogram sees it."""

    peer: str
    transaction_id: int
    query_type: str
    status: str
    bindings: int
    duration: float


@attrs.define
class ServerStats:
    """
    Plain counters; the names are those of the Prometheus metrics they feed.

    @ivar connections_open: connections currently accepted.
    @ivar connections_accepted: connections accepted since start.
    @ivar refusals: connections closed at once, by reason (C{"acl"}, C{"limit"},
        C{"per-requestor-limit"}).
    @ivar evictions: idle connections closed to let a waiting requestor in (S24).
    @ivar queries: finished queries by (query type name, status name).
    @ivar bindings_sent: CLIENT_DATA options sent.
    @ivar bytes_sent: octets written, frames included.
    @ivar timeouts: timeouts by kind (C{"data"}, C{"idle"}, C{"write"}, C{"store"}).
    @ivar store_errors: store calls that failed.
    @ivar query_listeners: called with each L{QueryRecord}.
    """

    connections_open: int = 0
    connections_accepted: int = 0
    refusals: Counter[str] = attrs.Factory(Counter)
    evictions: int = 0
    queries: Counter[tuple[str, str]] = attrs.Factory(Counter)
    bindings_sent: int = 0
    bytes_sent: int = 0
    timeouts: Counter[str] = attrs.Factory(Counter)
    store_errors: int = 0
    query_listeners: list[Callable[[QueryRecord], None]] = attrs.Factory(list)

    def query_finished(self, record: QueryRecord) -> None:
        """Count a finished query and tell the listeners."""
        self.queries[(record.query_type, record.status)] += 1
        for listener in self.query_listeners:
            listener(record)
