"""Tests for L{bulklq.udp}: UDP Leasequery (RFC 5007) next to Bulk Leasequery."""

from __future__ import annotations

from ipaddress import IPv6Address
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from bulklq.config import ServerConfig, parse_access_rule
from bulklq.interfaces import IBindingStore
from bulklq.model import BindingPage
from bulklq.stats import ServerStats
from bulklq.stores.memory import MemoryBindingStore
from bulklq.testing import DEFAULT_CLTT, make_binding, make_duid, make_link, make_relay_data
from bulklq.udp import UDPLeasequeryProtocol
from bulklq.wire import (
    ClientData,
    ClientId,
    CltTime,
    IAAddress,
    LQClientLink,
    LQQuery,
    LQRelayData,
    Message,
    MessageType,
    OptionRequest,
    QueryType,
    RelayId,
    RemoteId,
    ServerId,
    StatusCode,
    StatusCodeOption,
    UnknownOption,
    decode_message,
)

SERVER = make_duid(1000)
REQUESTOR = make_duid(2000)
PEER = ("2001:db8::100", 40000)
NOW = DEFAULT_CLTT + 100


class FakeDatagramTransport:
    """Records what a DatagramProtocol writes."""

    def __init__(self) -> None:
        self.written: list[tuple[bytes, Any]] = []

    def write(self, data: bytes, addr: Any = None) -> None:
        """Record one datagram."""
        self.written.append((data, addr))


def query(
    query_type: int,
    *options: Any,
    link: str = "::",
    xid: int = 0x123456,
    server_id: bool = False,
) -> bytes:
    """A LEASEQUERY datagram."""
    message_options: list[Any] = [ClientId(REQUESTOR)]
    if server_id:
        message_options.append(ServerId(make_duid(999)))
    message_options.append(LQQuery(query_type, IPv6Address(link), tuple(options)))
    return Message(MessageType.LEASEQUERY, xid, tuple(message_options)).encode()


@implementer(IBindingStore)
class SlowStore:
    """A store whose fetch never answers (or fails when told)."""

    name = "slow"

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.cancelled = 0

    def fetch(self, query: Any, resume_after: Any, limit: int) -> Deferred[BindingPage]:
        """Never answer, or fail."""
        if self.error is not None:
            failed: Deferred[BindingPage] = Deferred()
            failed.errback(self.error)
            return failed

        def cancelled(d: Deferred[BindingPage]) -> None:
            self.cancelled += 1

        return Deferred(cancelled)

    def find_link(self, address: IPv6Address) -> Deferred[Any]:
        """Every address is on link-1."""
        done: Deferred[Any] = Deferred()
        done.callback(make_link())
        return done

    def get_link(self, link_id: str) -> Deferred[Any]:
        """No links known."""
        done: Deferred[Any] = Deferred()
        done.callback(None)
        return done

    def close(self) -> Deferred[None]:
        """Nothing to close."""
        done: Deferred[None] = Deferred()
        done.callback(None)
        return done


class UDPLeasequeryTests(SynchronousTestCase):
    """One datagram in, at most one LEASEQUERY-REPLY out."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.store = MemoryBindingStore(
            [make_link("link-1", ["2001:db8:1::/64"]), make_link("link-2", ["2001:db8:2::/64"])],
            clock=self.clock,
        )
        self.relay = make_relay_data(relay_id=make_duid(900), remote_id=RemoteId(9, b"port"))
        self.store.put(make_binding(1, "link-1", relay_data=self.relay))
        self.store.put(make_binding(2, "link-1", addresses=["2001:db8:1::2"]))
        self.store.put(make_binding(2, "link-2", addresses=["2001:db8:2::2"]))
        self.stats = ServerStats()
        self.config = ServerConfig(
            server_duid=SERVER, allow=(parse_access_rule("2001:db8::/32"),), store_timeout=5
        )
        self.protocol = self.make_protocol(self.store)

    def make_protocol(self, store: Any, **kwargs: Any) -> UDPLeasequeryProtocol:
        """A protocol on a fake transport."""
        protocol = UDPLeasequeryProtocol(
            store, self.config, self.stats, reactor=self.clock, **kwargs
        )
        self.transport = FakeDatagramTransport()
        protocol.makeConnection(self.transport)  # type: ignore[arg-type]
        return protocol

    def replies(self) -> list[Message]:
        """The replies sent so far, decoded; each went back to the sender."""
        messages = []
        for data, addr in self.transport.written:
            self.assertEqual(addr, PEER)
            message = decode_message(data)
            assert isinstance(message, Message)
            messages.append(message)
        return messages

    def only_reply(self, datagram: bytes) -> Message:
        """Send one datagram; exactly one reply must come back."""
        self.protocol.datagramReceived(datagram, PEER)
        replies = self.replies()
        self.assertEqual(len(replies), 1)
        return replies[0]

    def assertStatus(self, reply: Message, status: StatusCode) -> None:
        """The reply is a LEASEQUERY-REPLY with C{status} and no client data."""
        self.assertEqual(reply.msg_type, MessageType.LEASEQUERY_REPLY)
        status_option = reply.option(StatusCodeOption)
        assert status_option is not None
        self.assertEqual(status_option.status, status)
        self.assertIsNone(reply.option(ClientData))

    def test_query_by_address(self) -> None:
        """
        QUERY_BY_ADDRESS gets one LEASEQUERY-REPLY with the xid, CLIENTID copy, SERVERID and
        the client's CLIENT_DATA with CLT_TIME (S28, S29, S39).
        """
        reply = self.only_reply(query(1, IAAddress(IPv6Address("2001:db8:1::1"), 0, 0)))
        self.assertEqual(reply.msg_type, MessageType.LEASEQUERY_REPLY)
        self.assertEqual(reply.transaction_id, 0x123456)
        self.assertEqual(reply.option(ClientId), ClientId(REQUESTOR))
        self.assertEqual(reply.option(ServerId), ServerId(SERVER))
        self.assertIsNone(reply.option(StatusCodeOption))
        data = reply.option(ClientData)
        assert data is not None
        self.assertEqual(data.option(ClientId), ClientId(make_duid(1)))
        self.assertEqual(data.option(CltTime), CltTime(100))
        self.assertEqual(self.stats.queries[("address", "Success")], 1)
        self.assertEqual(self.stats.bindings_sent, 1)

    def test_relay_data_on_request(self) -> None:
        """LQ_RELAY_DATA is included when the LQ_QUERY's ORO asks for 47 (S44)."""
        reply = self.only_reply(
            query(1, IAAddress(IPv6Address("2001:db8:1::1"), 0, 0), OptionRequest((47,)))
        )
        data = reply.option(ClientData)
        assert data is not None
        self.assertEqual(data.option(LQRelayData), self.relay)

    def test_client_on_several_links(self) -> None:
        """
        QUERY_BY_CLIENTID with link :: finding the client on two links answers with
        LQ_CLIENT_LINK listing both and no CLIENT_DATA (RFC 5007 section 4.4.1).
        """
        reply = self.only_reply(query(2, ClientId(make_duid(2))))
        self.assertIsNone(reply.option(ClientData))
        self.assertIsNone(reply.option(StatusCodeOption))
        self.assertEqual(
            reply.option(LQClientLink),
            LQClientLink((IPv6Address("2001:db8:1::"), IPv6Address("2001:db8:2::"))),
        )

    def test_client_on_given_link(self) -> None:
        """QUERY_BY_CLIENTID with a link-address answers with that link's CLIENT_DATA."""
        reply = self.only_reply(query(2, ClientId(make_duid(2)), link="2001:db8:2::1"))
        data = reply.option(ClientData)
        assert data is not None
        self.assertEqual(data.option(IAAddress).address, IPv6Address("2001:db8:2::2"))  # type: ignore[union-attr]
        self.assertIsNone(reply.option(LQClientLink))

    def test_client_on_one_link(self) -> None:
        """QUERY_BY_CLIENTID with link :: and a client on one link: its CLIENT_DATA."""
        reply = self.only_reply(query(2, ClientId(make_duid(1))))
        self.assertIsNotNone(reply.option(ClientData))

    def test_no_binding(self) -> None:
        """A client with no binding: a REPLY with neither status error nor data (S31)."""
        reply = self.only_reply(query(2, ClientId(make_duid(77))))
        self.assertIsNone(reply.option(ClientData))
        self.assertIsNone(reply.option(StatusCodeOption))
        self.assertIsNone(reply.option(LQClientLink))

    def test_bulk_types_not_allowed(self) -> None:
        """S13: over UDP, query types 3, 4 and 5 get NotAllowed."""
        datagrams = [
            query(QueryType.QUERY_BY_RELAY_ID, RelayId(make_duid(900))),
            query(QueryType.QUERY_BY_LINK_ADDRESS, link="2001:db8:1::1"),
            query(QueryType.QUERY_BY_REMOTE_ID, RemoteId(9, b"port")),
        ]
        for datagram in datagrams:
            self.transport.written.clear()
            self.assertStatus(self.only_reply(datagram), StatusCode.NotAllowed)
        self.assertEqual(self.stats.queries[("relay-id", "NotAllowed")], 1)

    def test_unknown_and_malformed(self) -> None:
        """S7: unknown query type gets UnknownQueryType; S8: missing option, MalformedQuery."""
        self.assertStatus(self.only_reply(query(99)), StatusCode.UnknownQueryType)
        self.transport.written.clear()
        self.assertStatus(self.only_reply(query(1)), StatusCode.MalformedQuery)

    def test_address_on_no_link(self) -> None:
        """S10: an address on no link and in no delegated prefix gets NotConfigured."""
        reply = self.only_reply(query(1, IAAddress(IPv6Address("2001:db8:99::1"), 0, 0)))
        self.assertStatus(reply, StatusCode.NotConfigured)

    def test_dropped_without_answer(self) -> None:
        """
        S2, S3, S5, S14: no CLIENTID, a foreign SERVERID, a LEASEQUERY-REPLY, garbage and a
        requestor outside the ACL get no answer at all.
        """
        lq = LQQuery(1, IPv6Address(0), (IAAddress(IPv6Address("2001:db8:1::1"), 0, 0),))
        self.protocol.datagramReceived(Message(MessageType.LEASEQUERY, 1, (lq,)).encode(), PEER)
        self.protocol.datagramReceived(
            query(1, IAAddress(IPv6Address("2001:db8:1::1"), 0, 0), server_id=True), PEER
        )
        self.protocol.datagramReceived(
            Message(MessageType.LEASEQUERY_REPLY, 1, (ClientId(REQUESTOR),)).encode(), PEER
        )
        self.protocol.datagramReceived(b"\x0e\x00", PEER)
        self.protocol.datagramReceived(
            query(1, IAAddress(IPv6Address("2001:db8:1::1"), 0, 0)), ("192.0.2.1", 547)
        )
        self.assertEqual(self.transport.written, [])

    def test_acl_query_types(self) -> None:
        """S14: a requestor limited to other query types gets NotAllowed."""
        self.config = ServerConfig(
            server_duid=SERVER, allow=(parse_access_rule("2001:db8::/32:client-id"),)
        )
        self.protocol = self.make_protocol(self.store)
        reply = self.only_reply(query(1, IAAddress(IPv6Address("2001:db8:1::1"), 0, 0)))
        self.assertStatus(reply, StatusCode.NotAllowed)

    def test_oversized_reply_drops_requested_options(self) -> None:
        """
        A reply that would not fit a datagram is sent without the options the ORO asked for
        (a SHOULD in RFC 5007 section 4.4.2), keeping CLIENTID, leases and CLT_TIME.
        """
        big = UnknownOption(2000, b"x" * 600)
        self.store.put(make_binding(5, "link-1", options=[big]))
        self.protocol = self.make_protocol(self.store, max_reply_size=300)
        reply = self.only_reply(
            query(1, IAAddress(IPv6Address("2001:db8:1::5"), 0, 0), OptionRequest((2000,)))
        )
        data = reply.option(ClientData)
        assert data is not None
        self.assertEqual(data.options_of(UnknownOption), [])
        self.assertIsNotNone(data.option(CltTime))
        self.assertLessEqual(len(reply.encode()), 300)

    def test_reply_that_cannot_fit(self) -> None:
        """A reply that does not fit even minimal gets UnspecFail pointing to TCP."""
        self.protocol = self.make_protocol(self.store, max_reply_size=40)
        reply = self.only_reply(query(1, IAAddress(IPv6Address("2001:db8:1::1"), 0, 0)))
        self.assertStatus(reply, StatusCode.UnspecFail)
        status = reply.option(StatusCodeOption)
        assert status is not None
        self.assertIn("TCP", status.message)

    def test_store_timeout(self) -> None:
        """A store that does not answer in store_timeout: no reply, a store timeout counted."""
        store = SlowStore()
        self.protocol = self.make_protocol(store)
        self.protocol.datagramReceived(query(2, ClientId(make_duid(1))), PEER)
        self.clock.advance(5)
        self.assertEqual(self.transport.written, [])
        self.assertEqual(store.cancelled, 1)
        self.assertEqual(self.stats.timeouts["store"], 1)

    def test_store_failure(self) -> None:
        """A failing store: UnspecFail, and a store error counted."""
        self.protocol = self.make_protocol(SlowStore(RuntimeError("disk on fire")))
        reply = self.only_reply(query(2, ClientId(make_duid(1))))
        self.assertStatus(reply, StatusCode.UnspecFail)
        self.assertEqual(self.stats.store_errors, 1)
        self.flushLoggedErrors(RuntimeError)

    def test_stop_cancels_in_flight(self) -> None:
        """Closing the port cancels queries waiting for the store; nothing is sent."""
        store = SlowStore()
        self.protocol = self.make_protocol(store)
        self.protocol.datagramReceived(query(2, ClientId(make_duid(1))), PEER)
        self.protocol.doStop()
        self.assertEqual(store.cancelled, 1)
        self.clock.advance(10)
        self.assertEqual(self.transport.written, [])
        self.assertEqual(self.stats.timeouts["store"], 0)

    def test_in_flight_bound(self) -> None:
        """Datagrams beyond max_in_flight queries waiting for the store are dropped."""
        store = SlowStore()
        self.protocol = self.make_protocol(store, max_in_flight=2)
        for xid in range(3):
            self.protocol.datagramReceived(query(2, ClientId(make_duid(1)), xid=xid), PEER)
        self.protocol.doStop()
        self.assertEqual(store.cancelled, 2)
