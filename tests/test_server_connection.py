"""
Connections: limits, ACL, timeouts, concurrency, backpressure, errors, half-close and
shutdown (S15-S27, S38), with StringTransport and MemoryReactorClock.
"""

from __future__ import annotations

from ipaddress import IPv6Address

from twisted.internet.address import IPv4Address
from twisted.internet.address import IPv6Address as TwistedIPv6Address
from twisted.internet.endpoints import serverFromString

from bulklq.config import parse_access_rule
from bulklq.stats import QueryRecord
from bulklq.testing import make_binding
from bulklq.wire import (
    LEASEQUERY_PORT,
    ClientData,
    MessageType,
    RelayId,
    StatusCode,
)

from .test_server import (
    RELAY,
    ServerTestCase,
    framed,
    lose,
    lq,
    status_of,
    take,
)

LINK1_QUERY = lq(4, "2001:db8:1::1", xid=1)


class ListeningTests(ServerTestCase):
    """S15-S17, S24: accepting connections."""

    def test_port(self) -> None:
        """S15: the default port is 547, and the factory listens on any endpoint port."""
        harness = self.harness()
        self.assertEqual(LEASEQUERY_PORT, 547)
        for port in (LEASEQUERY_PORT, 10547):
            serverFromString(harness.clock, f"tcp6:{port}").listen(harness.factory)
        self.assertEqual([entry[0] for entry in harness.clock.tcpServers], [547, 10547])
        self.assertIs(harness.clock.tcpServers[0][1], harness.factory)

    def test_global_limit_default(self) -> None:
        """S16, S17: the default limit is 10 connections; the 11th is closed at once."""
        harness = self.harness(max_connections_per_requestor=20)
        self.assertEqual(harness.config.max_connections, 10)
        for index in range(10):
            harness.connect(f"2001:db8::{index + 1:x}")
        refused = harness.factory.buildProtocol(TwistedIPv6Address("TCP", "2001:db8::99", 1))
        self.assertIsNone(refused)
        self.assertEqual(harness.factory.stats.refusals["limit"], 1)
        self.assertEqual(harness.factory.stats.connections_open, 10)

    def test_per_requestor_limit(self) -> None:
        """S16, S17: connections over the per-requestor limit are closed at once."""
        harness = self.harness(max_connections_per_requestor=2)
        harness.connect()
        harness.connect()
        peer = TwistedIPv6Address("TCP", "2001:db8::100", 1)
        self.assertIsNone(harness.factory.buildProtocol(peer))
        self.assertEqual(harness.factory.stats.refusals["per-requestor-limit"], 1)
        harness.connect("2001:db8::101")

    def test_ipv4_mapped_peer(self) -> None:
        """S14: an IPv4-mapped peer is matched against IPv4 rules and counted as IPv4."""
        harness = self.harness(allow=(parse_access_rule("192.0.2.0/24"),))
        protocol = harness.factory.buildProtocol(TwistedIPv6Address("TCP", "::ffff:192.0.2.7", 1))
        assert protocol is not None
        self.assertEqual(protocol.peer, "192.0.2.7")
        harness.factory.connectionLost(protocol)
        self.assertIsNone(harness.factory.buildProtocol(IPv4Address("TCP", "198.51.100.1", 1)))

    def test_idle_eviction(self) -> None:
        """S24: at the limit, the connection idle the longest (and for at least
        eviction_min_idle) is closed to let a new requestor in; a busy one never is."""
        harness = self.harness(controlled=True, max_connections=2)
        busy, busy_transport = harness.connect("2001:db8::1")
        harness.store.hold = True
        busy.dataReceived(framed(LINK1_QUERY))
        idle, idle_transport = harness.connect("2001:db8::2")
        peer = TwistedIPv6Address("TCP", "2001:db8::3", 1)
        self.assertIsNone(harness.factory.buildProtocol(peer), "idle too briefly")
        harness.clock.advance(harness.factory.eviction_min_idle)
        newcomer = harness.factory.buildProtocol(peer)
        self.assertIsNotNone(newcomer)
        self.assertTrue(idle_transport.disconnecting)
        self.assertFalse(busy_transport.disconnecting)
        self.assertEqual(harness.factory.stats.evictions, 1)
        lose(idle, idle_transport)
        harness.store.hold = False
        harness.store.release(len(harness.store.pending))
        assert newcomer is not None
        harness.factory.connectionLost(newcomer)


class SlowlorisEvictionTests(ServerTestCase):
    """S24 against stalled partial frames."""

    def test_partial_frame_evictable(self) -> None:
        """S24: a connection stuck in a partial frame is idle since its last octet and
        can be evicted; a connection that just sent an octet cannot."""
        harness = self.harness(max_connections=2, data_timeout=1000)
        stalled, stalled_transport = harness.connect("2001:db8::1")
        stalled.dataReceived(framed(LINK1_QUERY)[:3])
        harness.clock.advance(harness.factory.eviction_min_idle)
        fresh, fresh_transport = harness.connect("2001:db8::2")
        fresh.dataReceived(framed(LINK1_QUERY)[:3])
        newcomer = harness.factory.buildProtocol(TwistedIPv6Address("TCP", "2001:db8::3", 1))
        self.assertIsNotNone(newcomer)
        self.assertTrue(stalled_transport.disconnecting)
        self.assertFalse(fresh_transport.disconnecting)
        lose(stalled, stalled_transport)
        assert newcomer is not None
        harness.factory.connectionLost(newcomer)


class TimeoutTests(ServerTestCase):
    """S18, S19 and the idle timeout."""

    def test_partial_frame_data_timeout(self) -> None:
        """S18: a partial query is closed after the data timeout, counted as such."""
        harness = self.harness(data_timeout=300, idle_timeout=1000)
        protocol, transport = harness.connect()
        protocol.dataReceived(framed(LINK1_QUERY)[:5])
        harness.clock.advance(299)
        protocol.dataReceived(b"\x00")
        harness.clock.advance(1)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(harness.factory.stats.timeouts["data"], 1)

    def test_silence_idle_timeout(self) -> None:
        """S18: a connection that sends nothing is closed after the idle timeout."""
        harness = self.harness(idle_timeout=60)
        _protocol, transport = harness.connect()
        harness.clock.advance(59)
        self.assertFalse(transport.disconnecting)
        harness.clock.advance(1)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(harness.factory.stats.timeouts["idle"], 1)

    def test_idle_timer_restarts_after_query(self) -> None:
        """S23: after a query the connection stays open for the idle timeout again."""
        harness = self.harness(idle_timeout=60)
        protocol, transport = harness.connect()
        harness.clock.advance(50)
        protocol.dataReceived(framed(LINK1_QUERY))
        harness.clock.advance(50)
        self.assertFalse(transport.disconnecting)
        harness.clock.advance(10)
        self.assertTrue(transport.disconnecting)

    def test_blocked_writes(self) -> None:
        """S19: replies that cannot be written for the data timeout abort the connection;
        resuming in time cancels the timer."""
        harness = self.harness(data_timeout=300, idle_timeout=10_000)
        _protocol, transport = harness.connect()
        producer = transport.producer
        producer.pauseProducing()
        harness.clock.advance(200)
        producer.resumeProducing()
        producer.pauseProducing()
        harness.clock.advance(299)
        self.assertFalse(transport.disconnected)
        harness.clock.advance(1)
        self.assertTrue(transport.disconnected)
        self.assertEqual(harness.factory.stats.timeouts["write"], 1)

    def test_store_timeout_after_reply(self) -> None:
        """S26, S38: the store not answering a page in time after the REPLY: DONE with
        QueryTerminated, then close; the store's Deferred is cancelled."""
        harness = self.harness(controlled=True, page_size=1, store_timeout=5)
        harness.store.hold = True
        protocol, transport = harness.connect()
        protocol.dataReceived(framed(LINK1_QUERY))
        harness.store.release()
        (reply,) = take(transport)
        self.assertEqual(reply.msg_type, MessageType.LEASEQUERY_REPLY)
        harness.clock.advance(5)
        (done,) = take(transport)
        self.assertEqual(done.msg_type, MessageType.LEASEQUERY_DONE)
        self.assertEqual(status_of(done), StatusCode.QueryTerminated)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(harness.factory.stats.timeouts["store"], 1)
        self.assertEqual(harness.store.cancelled, 1)


class ConcurrencyTests(ServerTestCase):
    """S20-S23: several queries on one connection."""

    def test_reading_pauses_at_limit(self) -> None:
        """S20, S21: with a limit of 2, a third query in the same segment is not read
        until one finishes; the transport's reading is paused meanwhile."""
        harness = self.harness(controlled=True, max_queries_per_connection=2)
        harness.store.hold = True
        protocol, transport = harness.connect()
        protocol.dataReceived(
            b"".join(framed(lq(4, "2001:db8:2::1", xid=xid)) for xid in (1, 2, 3))
        )
        self.assertEqual(harness.store.fetches, 2)
        self.assertEqual(transport.producerState, "paused")
        harness.store.release()
        self.assertEqual(harness.store.fetches, 3)
        harness.store.release(2)
        self.assertEqual(transport.producerState, "producing")
        ids = [m.transaction_id for m in take(transport)]
        self.assertEqual(sorted(set(ids)), [1, 2, 3])

    def test_interleaved_replies(self) -> None:
        """S22: replies to parallel queries interleave by page, each with its own xid."""
        harness = self.harness(controlled=True, page_size=1)
        harness.store.hold = True
        protocol, transport = harness.connect()
        protocol.dataReceived(framed(lq(4, "2001:db8:1::1", xid=7)))
        protocol.dataReceived(framed(lq(3, "::", RelayId(RELAY), xid=8)))
        for _ in range(2):
            harness.store.release(2)
        messages = take(transport)
        self.assertEqual(
            [(m.transaction_id, m.msg_type) for m in messages],
            [
                (7, MessageType.LEASEQUERY_REPLY),
                (8, MessageType.LEASEQUERY_REPLY),
                (7, MessageType.LEASEQUERY_DATA),
                (8, MessageType.LEASEQUERY_DATA),
            ],
        )
        harness.store.hold = False
        harness.store.release(len(harness.store.pending))
        rest = take(transport)
        self.assertEqual(
            [m.msg_type for m in rest if m.msg_type == MessageType.LEASEQUERY_DONE],
            [MessageType.LEASEQUERY_DONE] * 2,
        )

    def test_duplicate_transaction_id_closes(self) -> None:
        """R5 on the server side: a query reusing the xid of one in progress closes the
        connection; the one in progress gets QueryTerminated."""
        harness = self.harness(controlled=True)
        harness.store.hold = True
        protocol, transport = harness.connect()
        protocol.dataReceived(framed(LINK1_QUERY) + framed(LINK1_QUERY))
        (reply,) = take(transport)
        self.assertEqual(status_of(reply), StatusCode.QueryTerminated)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(harness.store.cancelled, 1)

    def test_more_queries_after_done(self) -> None:
        """S23: after a query's DONE the connection takes another query."""
        harness = self.harness()
        protocol, transport = harness.connect()
        protocol.dataReceived(framed(LINK1_QUERY))
        self.assertEqual(take(transport)[-1].msg_type, MessageType.LEASEQUERY_DONE)
        protocol.dataReceived(framed(lq(4, "2001:db8:2::1", xid=2)))
        self.assertEqual(take(transport)[-1].transaction_id, 2)
        self.assertFalse(transport.disconnecting)


class BackpressureTests(ServerTestCase):
    """The store is pulled only while the transport accepts data."""

    def test_pull_only_when_writable(self) -> None:
        """A paused transport stops the pulling after the current page; resuming pulls
        the next; memory holds at most one page."""
        bindings = [make_binding(n) for n in range(1, 21)]
        harness = self.harness(bindings=bindings, controlled=True, page_size=5)
        protocol, transport = harness.connect()
        transport.producer.pauseProducing()
        protocol.dataReceived(framed(LINK1_QUERY))
        self.assertEqual(harness.store.fetches, 0)
        transport.producer.resumeProducing()
        self.assertEqual(harness.store.fetches, 4)
        self.assertEqual(len(take(transport)), 21)

    def test_small_first_page(self) -> None:
        """The first page is small (the REPLY goes out fast), the next ones page_size."""
        bindings = [make_binding(n) for n in range(1, 201)]
        harness = self.harness(bindings=bindings, controlled=True, page_size=100)
        protocol, transport = harness.connect()
        protocol.dataReceived(framed(LINK1_QUERY))
        self.assertEqual(harness.store.limits, [64, 100, 100])
        self.assertEqual(len(take(transport)), 201)

    def test_pause_between_pages(self) -> None:
        """A pause raised by a page's write holds the next fetch until resumed."""
        bindings = [make_binding(n) for n in range(1, 21)]
        harness = self.harness(bindings=bindings, controlled=True, page_size=5)
        protocol, transport = harness.connect()
        original = transport.write

        def write(data: bytes) -> None:
            original(data)
            transport.producer.pauseProducing()

        transport.write = write  # type: ignore[method-assign]
        protocol.dataReceived(framed(LINK1_QUERY))
        self.assertEqual(harness.store.fetches, 1)
        transport.producer.resumeProducing()
        self.assertEqual(harness.store.fetches, 2)
        for _ in range(3):
            transport.producer.resumeProducing()
        self.assertEqual(len(take(transport)), 21)


class ErrorTests(ServerTestCase):
    """S25, S26, S38: failures."""

    def test_store_failure_before_reply(self) -> None:
        """S26, S37: the store failing before anything was sent: REPLY with
        QueryTerminated, then close."""
        harness = self.harness(controlled=True)
        harness.store.fail_fetch = RuntimeError("disk on fire")
        _, transport, (reply,) = harness.ask(LINK1_QUERY)
        self.assertEqual(reply.msg_type, MessageType.LEASEQUERY_REPLY)
        self.assertEqual(status_of(reply), StatusCode.QueryTerminated)
        self.assertEqual(reply.options_of(ClientData), [])
        self.assertTrue(transport.disconnecting)
        self.assertEqual(harness.factory.stats.store_errors, 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_store_failure_after_reply(self) -> None:
        """S26, S38: the store failing after the REPLY: DONE with QueryTerminated and
        close; another query in progress is terminated too."""
        harness = self.harness(controlled=True, page_size=1)
        harness.store.hold = True
        protocol, transport = harness.connect()
        protocol.dataReceived(framed(LINK1_QUERY))
        protocol.dataReceived(framed(lq(3, "::", RelayId(RELAY), xid=2)))
        harness.store.release(2)
        self.assertEqual(
            [(m.transaction_id, m.msg_type) for m in take(transport)],
            [(1, MessageType.LEASEQUERY_REPLY), (2, MessageType.LEASEQUERY_REPLY)],
        )
        harness.store.fail_next(RuntimeError("gone"))
        messages = take(transport)
        self.assertEqual(
            [(m.transaction_id, m.msg_type, status_of(m)) for m in messages],
            [
                (1, MessageType.LEASEQUERY_DONE, StatusCode.QueryTerminated),
                (2, MessageType.LEASEQUERY_DONE, StatusCode.QueryTerminated),
            ],
        )
        self.assertTrue(transport.disconnecting)
        self.assertEqual(harness.store.cancelled, 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_client_gone_mid_stream(self) -> None:
        """S25: the connection lost mid-stream (a send error) stops the stream and
        cancels the store's outstanding Deferred; the query is counted as lost."""
        harness = self.harness(controlled=True, page_size=1)
        records: list[QueryRecord] = []
        harness.factory.stats.query_listeners.append(records.append)
        protocol, transport = harness.connect()
        harness.store.hold = True
        protocol.dataReceived(framed(LINK1_QUERY))
        harness.store.release()
        lose(protocol, transport)
        self.assertEqual(harness.store.cancelled, 1)
        self.assertEqual([r.status for r in records], ["ConnectionLost"])
        self.assertEqual(harness.factory.stats.connections_open, 0)


class CancelTests(ServerTestCase):
    """Cancelling the store's Deferred when the requestor goes away."""

    def test_canceller_error_is_quiet(self) -> None:
        """S25: a store whose canceller errbacks with its own error (a driver reporting
        the interrupted statement) ends the query quietly: no failure logged, no store
        error counted."""
        harness = self.harness(controlled=True)
        harness.store.hold = True
        protocol, transport = harness.connect()
        protocol.dataReceived(framed(LINK1_QUERY))
        _, held, _ = harness.store.pending[0]
        # The canceller errbacks with a driver error instead of CancelledError.
        held._canceller = lambda d: d.errback(RuntimeError("statement interrupted"))
        lose(protocol, transport)
        self.assertEqual(self.flushLoggedErrors(RuntimeError), [])
        self.assertEqual(harness.factory.stats.store_errors, 0)


class HalfCloseTests(ServerTestCase):
    """S27: the requestor half-closes."""

    def test_finish_then_close(self) -> None:
        """S27: after the half-close the outstanding query finishes, then the server
        closes."""
        harness = self.harness(controlled=True)
        harness.store.hold = True
        protocol, transport = harness.connect()
        protocol.dataReceived(framed(LINK1_QUERY))
        protocol.readConnectionLost()
        self.assertFalse(transport.disconnecting)
        harness.store.release()
        messages = take(transport)
        self.assertEqual(messages[-1].msg_type, MessageType.LEASEQUERY_DONE)
        self.assertTrue(transport.disconnecting)

    def test_half_close_when_idle(self) -> None:
        """S27: a half-close with nothing outstanding closes at once."""
        protocol, transport = self.harness().connect()
        protocol.readConnectionLost()
        self.assertTrue(transport.disconnecting)


class ShutdownTests(ServerTestCase):
    """The factory's graceful stop."""

    def test_graceful(self) -> None:
        """Idle connections close at once; a running query finishes within the grace;
        new connections are refused; the Deferred fires when all are gone."""
        harness = self.harness(controlled=True)
        harness.store.hold = True
        busy, busy_transport = harness.connect("2001:db8::1")
        busy.dataReceived(framed(LINK1_QUERY))
        idle, idle_transport = harness.connect("2001:db8::2")
        done = harness.factory.shutdown(grace=10)
        self.assertTrue(idle_transport.disconnecting)
        lose(idle, idle_transport)
        self.assertIsNone(
            harness.factory.buildProtocol(TwistedIPv6Address("TCP", "2001:db8::3", 1))
        )
        busy.dataReceived(framed(lq(4, "2001:db8:2::1", xid=9)))
        harness.store.release()
        messages = take(busy_transport)
        self.assertEqual(messages[-1].msg_type, MessageType.LEASEQUERY_DONE)
        self.assertTrue(busy_transport.disconnecting)
        self.assertNoResult(done)
        lose(busy, busy_transport)
        self.successResultOf(done)
        self.assertEqual(harness.clock.getDelayedCalls(), [])

    def test_grace_expires(self) -> None:
        """After the grace, a query that has sent its REPLY gets DONE(QueryTerminated),
        one that has not gets a REPLY with it; then close and, later, abort."""
        harness = self.harness(controlled=True, page_size=1)
        harness.store.hold = True
        protocol, transport = harness.connect()
        protocol.dataReceived(framed(LINK1_QUERY))
        protocol.dataReceived(framed(lq(4, "2001:db8:2::1", xid=2)))
        harness.store.release()
        take(transport)
        done = harness.factory.shutdown(grace=10)
        harness.clock.advance(10)
        statuses = {(m.transaction_id, m.msg_type): status_of(m) for m in take(transport)}
        self.assertEqual(
            statuses,
            {
                (1, MessageType.LEASEQUERY_DONE): StatusCode.QueryTerminated,
                (2, MessageType.LEASEQUERY_REPLY): StatusCode.QueryTerminated,
            },
        )
        self.assertTrue(transport.disconnecting)
        harness.clock.advance(harness.factory.shutdown_drain)
        self.assertTrue(transport.disconnected)
        lose(protocol, transport)
        self.successResultOf(done)


class StatsTests(ServerTestCase):
    """The counters the metrics endpoint reads."""

    def test_counters(self) -> None:
        """Queries by type and status, bindings and octets sent, connections."""
        harness = self.harness()
        records: list[QueryRecord] = []
        harness.factory.stats.query_listeners.append(records.append)
        _, _transport, _ = harness.ask(LINK1_QUERY)
        harness.ask(lq(99, "::"))
        stats = harness.factory.stats
        self.assertEqual(stats.queries[("link", "Success")], 1)
        self.assertEqual(stats.queries[("unknown(99)", "UnknownQueryType")], 1)
        self.assertEqual(stats.bindings_sent, 3)
        self.assertGreater(stats.bytes_sent, 0)
        self.assertEqual(stats.connections_accepted, 2)
        self.assertEqual(records[0].bindings, 3)
        self.assertEqual(records[0].peer, "2001:db8::100")
        self.assertEqual(IPv6Address(records[0].peer), IPv6Address("2001:db8::100"))
