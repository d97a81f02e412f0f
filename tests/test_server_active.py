"""
Active Leasequery (RFC 7653) on the server: STARTTLS, ACTIVELEASEQUERY, the change stream,
catch-up, keep-alives, send timeout, backlog and shutdown, with C{StringTransport} and a
C{MemoryReactorClock}. Each test names the RFC 7653 section it covers.
"""

from __future__ import annotations

from ipaddress import IPv6Address
from typing import Any

from twisted.internet.address import IPv6Address as TwistedIPv6Address
from twisted.internet.testing import StringTransport

from bulklq.query import RFC7653_EPOCH
from bulklq.server import BulkLeasequeryFactory
from bulklq.server._active import ActiveConfig
from bulklq.testing import CONTRACT_NOW, make_binding
from bulklq.wire import (
    ClientData,
    IAAddress,
    LQBaseTime,
    LQEndTime,
    LQQuery,
    LQStartTime,
    Message,
    MessageType,
    QueryType,
    ServerId,
    StatusCode,
)

from .test_server import (
    REQUESTOR,
    SERVER_DUID,
    ControlledStore,
    ServerHarness,
    ServerTestCase,
    clients,
    framed,
    lose,
    lq,
    status_of,
    take,
)

_TLS = object()


class TLSTransport(StringTransport):
    """A StringTransport that records C{startTLS}."""

    tls: Any = None

    def startTLS(self, options: Any) -> None:
        """Record the TLS options."""
        self.tls = options


def active(*options: Any, xid: int = 7) -> Message:
    """An ACTIVELEASEQUERY with CLIENTID and C{options}."""
    return Message(MessageType.ACTIVELEASEQUERY, xid, (REQUESTOR, *options))


class ActiveTestCase(ServerTestCase):
    """A harness whose factory serves Active Leasequery."""

    def active_harness(self, **active_config: Any) -> ServerHarness:
        """A harness over the memory store with Active Leasequery enabled (insecure)."""
        harness = self.harness()
        active_config.setdefault("enabled", True)
        active_config.setdefault("allow_insecure", True)
        harness.factory = BulkLeasequeryFactory(
            harness.store, harness.config, harness.clock, active=ActiveConfig(**active_config)
        )
        return harness

    def start(self, harness: ServerHarness, *options: Any) -> tuple[Any, Any, list[Message]]:
        """Connect and send an ACTIVELEASEQUERY."""
        protocol, transport = harness.connect()
        protocol.dataReceived(framed(active(*options)))
        return protocol, transport, take(transport)


def _base() -> LQBaseTime:
    return LQBaseTime(CONTRACT_NOW - RFC7653_EPOCH)


class AcceptanceTests(ActiveTestCase):
    """RFC 7653 section 9.1: enabling, TLS requirement, query validation."""

    def test_disabled_by_default(self) -> None:
        """RFC 7653 section 9.1 (MUST NOT be enabled by default), S52: NotSupported."""
        _, transport, (reply,) = self.harness().ask(active())
        self.assertEqual(status_of(reply), StatusCode.NotSupported)
        self.assertTrue(transport.disconnecting)

    def test_store_without_feed(self) -> None:
        """RFC 7653 section 9.2: a store with no change feed cannot serve it: NotSupported."""
        harness = self.harness(controlled=True)
        harness.factory = BulkLeasequeryFactory(
            harness.store, harness.config, harness.clock, active=ActiveConfig(enabled=True)
        )
        _, transport, (reply,) = harness.ask(active())
        self.assertEqual(status_of(reply), StatusCode.NotSupported)
        self.assertTrue(transport.disconnecting)
        self.assertIsInstance(harness.store, ControlledStore)

    def test_insecure_needs_its_own_option(self) -> None:
        """RFC 7653 section 9.1 (insecure mode MUST need a separate explicit step): enabled
        without allow_insecure, a plain connection gets NotAllowed and is closed."""
        harness = self.active_harness(allow_insecure=False)
        _, transport, (reply,) = self.start(harness)
        self.assertEqual(status_of(reply), StatusCode.NotAllowed)
        self.assertTrue(transport.disconnecting)

    def test_end_time_malformed(self) -> None:
        """RFC 7653 section 9.3 (SHOULD): OPTION_LQ_END_TIME in an ACTIVELEASEQUERY gets
        MalformedQuery and the connection is closed."""
        _, transport, (reply,) = self.start(self.active_harness(), LQEndTime(5))
        self.assertEqual(reply.msg_type, MessageType.LEASEQUERY_REPLY)
        self.assertEqual(status_of(reply), StatusCode.MalformedQuery)
        self.assertTrue(transport.disconnecting)

    def test_bad_lq_query(self) -> None:
        """RFC 7653 section 9.3: an error in initial processing gets a REPLY with the
        status, then close (an unknown query-type: UnknownQueryType)."""
        query = LQQuery(99, IPv6Address(0))
        _, transport, (reply,) = self.start(self.active_harness(), query)
        self.assertEqual(status_of(reply), StatusCode.UnknownQueryType)
        self.assertTrue(transport.disconnecting)

    def test_one_query_per_connection(self) -> None:
        """RFC 7653 section 9.4 (MUST: no other request active): a LEASEQUERY or another
        ACTIVELEASEQUERY on an active connection gets NotAllowed; the active query goes on."""
        harness = self.active_harness()
        protocol, transport, _ = self.start(harness)
        protocol.dataReceived(framed(lq(QueryType.QUERY_BY_LINK_ADDRESS, "2001:db8:1::1", xid=9)))
        protocol.dataReceived(framed(active(xid=10)))
        replies = take(transport)
        self.assertEqual(
            [(m.transaction_id, status_of(m)) for m in replies],
            [(9, StatusCode.NotAllowed), (10, StatusCode.NotAllowed)],
        )
        self.assertFalse(transport.disconnecting)
        harness.memory.put(make_binding(5, "link-1"))
        self.assertEqual(len(clients(take(transport))), 1)


class StreamTests(ActiveTestCase):
    """RFC 7653 sections 6.2.3, 8.4 and 9.3: the REPLY, then a DATA per change."""

    def test_reply_then_changes(self) -> None:
        """RFC 7653 section 6.2.3 (exactly one REPLY) and 9.3 (base time in every reply):
        the REPLY has SERVERID, CLIENTID, base time and no CLIENT_DATA; each change comes in
        a DATA with one CLIENT_DATA and base time."""
        harness = self.active_harness()
        _, transport, (reply,) = self.start(harness)
        self.assertEqual(reply.msg_type, MessageType.LEASEQUERY_REPLY)
        self.assertEqual(reply.transaction_id, 7)
        self.assertEqual(reply.option(ServerId), ServerId(SERVER_DUID))
        self.assertEqual(reply.option(LQBaseTime), _base())
        self.assertIsNone(status_of(reply))
        self.assertEqual(reply.options_of(ClientData), [])
        harness.memory.put(make_binding(5, "link-1", cltt=CONTRACT_NOW))
        (data,) = take(transport)
        self.assertEqual(data.msg_type, MessageType.LEASEQUERY_DATA)
        self.assertEqual(data.transaction_id, 7)
        self.assertEqual(len(data.options_of(ClientData)), 1)
        self.assertEqual(data.option(LQBaseTime), _base())

    def test_removed_binding(self) -> None:
        """RFC 7653 section 2 (a binding change includes deletion and expiry): a removed
        binding is sent with its leases at lifetime 0."""
        harness = self.active_harness()
        _, transport, _ = self.start(harness)
        binding = make_binding(1, "link-1")
        harness.memory.remove(binding.key)
        (data,) = take(transport)
        (client_data,) = data.options_of(ClientData)
        leases = client_data.options_of(IAAddress)
        self.assertTrue(leases)
        self.assertEqual({(a.preferred_lifetime, a.valid_lifetime) for a in leases}, {(0, 0)})

    def test_filter(self) -> None:
        """RFC 7653 section 6.2.1 (MAY include OPTION_LQ_QUERY): only changes the query
        matches are sent."""
        harness = self.active_harness()
        query = LQQuery(QueryType.QUERY_BY_LINK_ADDRESS, IPv6Address("2001:db8:2::1"))
        _, transport, (reply,) = self.start(harness, query)
        self.assertIsNone(status_of(reply))
        harness.memory.put(make_binding(8, "link-1"))
        harness.memory.put(make_binding(9, "link-2", addresses=("2001:db8:2::9",)))
        self.assertEqual([c[0][-1] for c in clients(take(transport))], [9])

    def test_keep_alive(self) -> None:
        """RFC 7653 section 8.4 (SHOULD): a DATA without CLIENT_DATA every
        ACTIVE_LQ_IDLE_TIMEOUT (60 s) when idle, with base time."""
        harness = self.active_harness()
        _, transport, _ = self.start(harness)
        harness.clock.advance(59)
        self.assertEqual(take(transport), [])
        harness.clock.advance(1)
        (data,) = take(transport)
        self.assertEqual(data.msg_type, MessageType.LEASEQUERY_DATA)
        self.assertEqual(data.options_of(ClientData), [])
        self.assertIsNotNone(data.option(LQBaseTime))
        harness.clock.advance(60)
        self.assertEqual(len(take(transport)), 1)

    def test_send_timeout(self) -> None:
        """RFC 7653 section 9.3 (SHOULD): a connection blocked for ACTIVE_LQ_SEND_TIMEOUT
        (120 s) is terminated."""
        harness = self.active_harness()
        protocol, transport, _ = self.start(harness)
        protocol._producer.pauseProducing()
        harness.memory.put(make_binding(5))
        self.assertEqual(take(transport), [])
        harness.clock.advance(119)
        self.assertFalse(transport.disconnecting)
        harness.clock.advance(1)
        self.assertTrue(transport.disconnecting)
        lose(protocol, transport)

    def test_resumed_sends_latest_state(self) -> None:
        """RFC 7653 section 7: while blocked, changes of one binding are coalesced and the
        current state is sent when writing resumes."""
        harness = self.active_harness()
        protocol, transport, _ = self.start(harness)
        protocol._producer.pauseProducing()
        harness.memory.put(make_binding(5, cltt=CONTRACT_NOW - 10))
        harness.memory.put(make_binding(5, cltt=CONTRACT_NOW))
        protocol._producer.resumeProducing()
        messages = take(transport)
        self.assertEqual(len(clients(messages)), 1)

    def test_backlog(self) -> None:
        """A requestor that cannot keep up (backlog over max_backlog) gets
        DONE(QueryTerminated) with base time, and the connection is closed (RFC 7653
        section 9.5: aborting a request SHOULD signal QueryTerminated)."""
        harness = self.active_harness(max_backlog=2)
        protocol, transport, _ = self.start(harness)
        protocol._producer.pauseProducing()
        for client in (11, 12, 13):
            harness.memory.put(make_binding(client))
        (done,) = take(transport)
        self.assertEqual(done.msg_type, MessageType.LEASEQUERY_DONE)
        self.assertEqual(status_of(done), StatusCode.QueryTerminated)
        self.assertIsNotNone(done.option(LQBaseTime))
        self.assertTrue(transport.disconnecting)

    def test_shutdown(self) -> None:
        """RFC 7653 section 8.4 (SHOULD): at shutdown, DONE with QueryTerminated and base
        time, the last message, then close (MUST)."""
        harness = self.active_harness()
        protocol, transport, _ = self.start(harness)
        stopped = harness.factory.shutdown()
        (done,) = take(transport)
        self.assertEqual(done.msg_type, MessageType.LEASEQUERY_DONE)
        self.assertEqual(status_of(done), StatusCode.QueryTerminated)
        self.assertEqual(done.option(LQBaseTime), _base())
        self.assertTrue(transport.disconnecting)
        lose(protocol, transport)
        self.successResultOf(stopped)

    def test_half_close(self) -> None:
        """RFC 7653 section 9.5 (MUST close when the requestor end is closed)."""
        harness = self.active_harness()
        protocol, transport, _ = self.start(harness)
        protocol.readConnectionLost()
        self.assertTrue(transport.disconnecting)
        harness.memory.put(make_binding(5))
        self.assertEqual(take(transport), [])


class CatchUpTests(ActiveTestCase):
    """RFC 7653 sections 8.4.1 and 9.3: catch-up from OPTION_LQ_START_TIME."""

    def test_catch_up(self) -> None:
        """RFC 7653 section 9.3 (MUST): after the catch-up DATA, a DATA with
        CatchUpComplete; live changes follow."""
        harness = self.active_harness()
        harness.clock.advance(10)
        harness.memory.put(make_binding(20))
        harness.memory.put(make_binding(21))
        start = LQStartTime(CONTRACT_NOW + 5 - RFC7653_EPOCH)
        _, transport, messages = self.start(harness, start)
        self.assertEqual(messages[0].msg_type, MessageType.LEASEQUERY_REPLY)
        self.assertIsNone(status_of(messages[0]))
        self.assertEqual(sorted(c[0][-1] for c in clients(messages)), [20, 21])
        self.assertEqual(status_of(messages[-1]), StatusCode.CatchUpComplete)
        self.assertEqual(messages[-1].msg_type, MessageType.LEASEQUERY_DATA)
        self.assertIsNotNone(messages[-1].option(LQBaseTime))
        harness.memory.put(make_binding(22))
        self.assertEqual(len(clients(take(transport))), 1)

    def test_data_missing(self) -> None:
        """RFC 7653 section 8.4.1: history not reaching back: REPLY with DataMissing and
        base time; the query stays and live changes follow."""
        harness = self.active_harness()
        start = LQStartTime(CONTRACT_NOW - 1000 - RFC7653_EPOCH)
        _, transport, (reply,) = self.start(harness, start)
        self.assertEqual(status_of(reply), StatusCode.DataMissing)
        self.assertEqual(reply.option(LQBaseTime), _base())
        self.assertFalse(transport.disconnecting)
        harness.memory.put(make_binding(22))
        self.assertEqual(len(clients(take(transport))), 1)


class StartTLSTests(ActiveTestCase):
    """RFC 7653 section 9.1: STARTTLS with TLS configured."""

    def test_starttls(self) -> None:
        """RFC 7653 section 9.1 (MUST respond with REPLY without status, then negotiate):
        REPLY (type 7) without STATUS_CODE, then TLS starts with the configured options; an
        ACTIVELEASEQUERY is then accepted without the insecure option."""
        harness = self.active_harness(allow_insecure=False, tls=_TLS)
        protocol = harness.factory.buildProtocol(TwistedIPv6Address("TCP", "2001:db8::100", 4000))
        assert protocol is not None
        transport = TLSTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(framed(Message(MessageType.STARTTLS, 3, (REQUESTOR,))))
        (reply,) = take(transport)
        self.assertEqual(reply.msg_type, MessageType.REPLY)
        self.assertEqual(reply.transaction_id, 3)
        self.assertIsNone(status_of(reply))
        self.assertIs(transport.tls, _TLS)
        protocol.dataReceived(framed(active()))
        (reply,) = take(transport)
        self.assertIsNone(status_of(reply))
        self.assertEqual(reply.msg_type, MessageType.LEASEQUERY_REPLY)

    def test_starttls_not_first(self) -> None:
        """RFC 7653 section 8.2 (STARTTLS is the first message): a later STARTTLS gets
        TLSConnectionRefused."""
        harness = self.active_harness(tls=_TLS)
        protocol, transport = harness.connect()
        protocol.dataReceived(framed(lq(QueryType.QUERY_BY_LINK_ADDRESS, "2001:db8:1::1")))
        take(transport)
        protocol.dataReceived(framed(Message(MessageType.STARTTLS, 3, ())))
        (reply,) = take(transport)
        self.assertEqual(status_of(reply), StatusCode.TLSConnectionRefused)
