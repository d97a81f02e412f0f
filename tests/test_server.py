"""
The Bulk Leasequery server protocol, message by message, with C{StringTransport} and a
C{MemoryReactorClock}: one test (at least) per checklist item S1-S53 (S13 is UDP, tested
with the twistd service). Other C{test_server_*} modules import the helpers below.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from ipaddress import IPv6Address
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.address import IPv6Address as TwistedIPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from bulklq.config import ServerConfig, parse_access_rule
from bulklq.model import AddressLease, Binding, BindingPage, BindingQuery, Link, PrefixLease
from bulklq.server import BulkLeasequeryFactory, BulkLeasequeryProtocol
from bulklq.stores.memory import MemoryBindingStore
from bulklq.testing import (
    CONTRACT_NOW,
    DEFAULT_CLTT,
    make_binding,
    make_duid,
    make_link,
    make_relay_data,
    make_relay_hop,
)
from bulklq.wire import (
    ClientData,
    ClientId,
    CltTime,
    Duid,
    IAAddress,
    IAPrefix,
    InterfaceId,
    LQClientLink,
    LQQuery,
    LQRelayData,
    Message,
    MessageType,
    Option,
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

SERVER_DUID = Duid.llt(1, 700000000, bytes.fromhex("020000000001"))
REQUESTOR = ClientId(Duid.en(32473, b"requestor-1"))
RELAY = Duid.uuid(bytes(range(16)))
REMOTE = RemoteId(32473, b"circuit-7")
LINK1 = make_link("link-1", ("2001:db8:1::/64",))
LINK2 = make_link("link-2", ("2001:db8:2::/64",))
UNSPECIFIED = IPv6Address(0)


def lq(
    query_type: int,
    link: str | IPv6Address = UNSPECIFIED,
    *query_options: Option,
    xid: int = 0x123456,
    client_id: ClientId | None = REQUESTOR,
    extra: Iterable[Option] = (),
) -> Message:
    """A LEASEQUERY message."""
    options: list[Option] = [] if client_id is None else [client_id]
    options.extend(extra)
    options.append(LQQuery(query_type, IPv6Address(link), tuple(query_options)))
    return Message(MessageType.LEASEQUERY, xid, tuple(options))


def framed(message: Message | bytes) -> bytes:
    """The message (or raw octets) with its size prefix."""
    data = message if isinstance(message, bytes) else message.encode()
    return struct.pack("!H", len(data)) + data


def parse_frames(data: bytes) -> list[Message]:
    """Every framed message in C{data}; fails on a trailing partial frame."""
    messages: list[Message] = []
    offset = 0
    while offset < len(data):
        (size,) = struct.unpack_from("!H", data, offset)
        assert offset + 2 + size <= len(data), "partial frame in output"
        message = decode_message(data[offset + 2 : offset + 2 + size])
        assert isinstance(message, Message)
        messages.append(message)
        offset += 2 + size
    return messages


def status_of(message: Message) -> int | None:
    """The STATUS_CODE's code, or C{None}."""
    status = message.option(StatusCodeOption)
    return None if status is None else status.status


def default_bindings() -> list[Binding]:
    """Three clients on link-1, one on link-2 (client 1 is on both)."""
    return [
        make_binding(1, "link-1", relay_id=RELAY, remote_id=REMOTE),
        make_binding(2, "link-1", prefixes=("2001:db8:ff02::/56",), relay_id=RELAY),
        make_binding(3, "link-1"),
        make_binding(1, "link-2", addresses=("2001:db8:2::1",), relay_id=RELAY),
    ]


class ControlledStore:
    """
    A store wrapper whose answers the test releases by hand (C{hold}), or that fails.

    @ivar pending: (method, Deferred, real result) waiting to be released.
    @ivar cancelled: how many held Deferreds were cancelled.
    """

    name = "controlled"

    def __init__(self, inner: MemoryBindingStore) -> None:
        self.inner = inner
        self.hold = False
        self.fail_fetch: Exception | None = None
        self.pending: list[tuple[str, Deferred[Any], Any]] = []
        self.cancelled = 0
        self.fetches = 0
        self.limits: list[int] = []

    def _wrap(self, method: str, result: Deferred[Any]) -> Deferred[Any]:
        if not self.hold:
            return result

        def cancel(d: Deferred[Any]) -> None:
            self.cancelled += 1

        held: Deferred[Any] = Deferred(cancel)
        self.pending.append((method, held, result.result))
        return held

    def release(self, count: int = 1) -> None:
        """Fire the oldest C{count} held answers."""
        for _ in range(count):
            _, held, value = self.pending.pop(0)
            held.callback(value)

    def fail_next(self, error: Exception) -> None:
        """Fail the oldest held answer with C{error}."""
        _, held, _ = self.pending.pop(0)
        held.errback(error)

    def fetch(self, query: BindingQuery, resume_after: Any, limit: int) -> Deferred[BindingPage]:
        """Fetch from the inner store (held or failing as configured)."""
        self.fetches += 1
        self.limits.append(limit)
        if self.fail_fetch is not None:
            from twisted.internet.defer import fail

            return fail(self.fail_fetch)
        return self._wrap("fetch", self.inner.fetch(query, resume_after, limit))

    def find_link(self, address: IPv6Address) -> Deferred[Link | None]:
        """Find the link in the inner store (never held)."""
        return self.inner.find_link(address)

    def get_link(self, link_id: str) -> Deferred[Link | None]:
        """Get the link from the inner store."""
        return self.inner.get_link(link_id)

    def close(self) -> Deferred[None]:
        """Close the inner store."""
        return self.inner.close()


class ServerHarness:
    """A factory over a memory store with a clock at L{CONTRACT_NOW}, and connections."""

    def __init__(
        self,
        bindings: Iterable[Binding] | None = None,
        links: Iterable[Link] = (LINK1, LINK2),
        controlled: bool = False,
        **config: Any,
    ) -> None:
        self.clock = MemoryReactorClock()
        self.clock.advance(CONTRACT_NOW)
        self.memory = MemoryBindingStore(links, clock=self.clock)
        for binding in default_bindings() if bindings is None else bindings:
            self.memory.put(binding)
        self.store: Any = ControlledStore(self.memory) if controlled else self.memory
        config.setdefault("allow", (parse_access_rule("2001:db8::/32"),))
        self.config = ServerConfig(SERVER_DUID, **config)
        self.factory = BulkLeasequeryFactory(self.store, self.config, self.clock)

    def connect(
        self, peer: str = "2001:db8::100"
    ) -> tuple[BulkLeasequeryProtocol, StringTransport]:
        """A connection from C{peer}, made."""
        address: Any = (
            IPv4Address("TCP", peer, 40000)
            if "." in peer and ":" not in peer
            else TwistedIPv6Address("TCP", peer, 40000)
        )
        protocol = self.factory.buildProtocol(address)
        assert protocol is not None, f"refused {peer}"
        transport = StringTransport(peerAddress=address)
        protocol.makeConnection(transport)
        return protocol, transport

    def ask(
        self, message: Message | bytes, peer: str = "2001:db8::100"
    ) -> tuple[BulkLeasequeryProtocol, StringTransport, list[Message]]:
        """Connect, send one message, return what came back."""
        protocol, transport = self.connect(peer)
        protocol.dataReceived(framed(message))
        return protocol, transport, take(transport)


def take(transport: StringTransport) -> list[Message]:
    """The messages written so far (and forget them)."""
    messages = parse_frames(transport.value())
    transport.clear()
    return messages


def lose(protocol: BulkLeasequeryProtocol, transport: StringTransport) -> None:
    """Deliver connectionLost as the transport would after a close."""
    protocol.connectionLost(Failure(ConnectionLost("test")))


def client_datas(messages: Iterable[Message]) -> list[ClientData]:
    """Every CLIENT_DATA in C{messages}, in order."""
    return [cd for message in messages for cd in message.options_of(ClientData)]


def clients(messages: Iterable[Message]) -> list[tuple[bytes, IPv6Address | None]]:
    """(client DUID, first address) per CLIENT_DATA."""
    found = []
    for cd in client_datas(messages):
        cid = cd.option(ClientId)
        assert cid is not None
        address = cd.option(IAAddress)
        found.append((cid.duid.raw, None if address is None else address.address))
    return found


class ServerTestCase(SynchronousTestCase):
    """Shared setup: a harness; every connection is closed and no timer is left."""

    def harness(self, **kwargs: Any) -> ServerHarness:
        """A harness whose connections are lost and timers checked at cleanup."""
        harness = ServerHarness(**kwargs)

        def cleanup() -> None:
            for protocol in list(harness.factory.connections):
                lose(protocol, protocol.transport)
            self.assertEqual(harness.clock.getDelayedCalls(), [])

        self.addCleanup(cleanup)
        return harness


class MessageFormatTests(ServerTestCase):
    """S1-S6: framing and which messages are processed."""

    def test_split_and_coalesced_frames(self) -> None:
        """S1: a query split over segments octet by octet, and two queries in one segment,
        are each answered."""
        harness = self.harness()
        protocol, transport = harness.connect()
        data = framed(lq(QueryType.QUERY_BY_CLIENTID, "::", ClientId(make_duid(3)), xid=1))
        for index in range(len(data)):
            protocol.dataReceived(data[index : index + 1])
        self.assertEqual([m.transaction_id for m in take(transport)], [1, 1])
        two = framed(lq(4, "2001:db8:2::5", xid=2)) + framed(lq(4, "2001:db8:2::5", xid=3))
        protocol.dataReceived(two)
        self.assertEqual([m.transaction_id for m in take(transport)], [2, 2, 3, 3])

    def test_no_client_id_discarded(self) -> None:
        """S2: a LEASEQUERY without CLIENTID gets nothing; the connection stays open."""
        _protocol, transport, replies = self.harness().ask(lq(4, "2001:db8:1::1", client_id=None))
        self.assertEqual(replies, [])
        self.assertFalse(transport.disconnecting)

    def test_foreign_server_id_discarded(self) -> None:
        """S3: a SERVERID that is not ours: discarded; our own SERVERID: answered."""
        harness = self.harness()
        other = ServerId(Duid.ll(1, b"\x02\x00\x00\x00\x00\x99"))
        _, transport, replies = harness.ask(lq(4, "2001:db8:2::1", extra=[other]))
        self.assertEqual(replies, [])
        self.assertFalse(transport.disconnecting)
        _, _, replies = harness.ask(lq(4, "2001:db8:2::1", extra=[ServerId(SERVER_DUID)]))
        self.assertEqual(replies[0].msg_type, MessageType.LEASEQUERY_REPLY)

    def test_no_lq_query_discarded(self) -> None:
        """S4: a LEASEQUERY without LQ_QUERY is discarded."""
        message = Message(MessageType.LEASEQUERY, 7, (REQUESTOR,))
        _, transport, replies = self.harness().ask(message)
        self.assertEqual(replies, [])
        self.assertFalse(transport.disconnecting)

    def test_leasequery_reply_discarded(self) -> None:
        """S5: a LEASEQUERY-REPLY received by the server is discarded."""
        message = Message(MessageType.LEASEQUERY_REPLY, 7, (REQUESTOR,))
        _, transport, replies = self.harness().ask(message)
        self.assertEqual(replies, [])
        self.assertFalse(transport.disconnecting)

    def test_undecodable_closes(self) -> None:
        """S6: an undecodable frame (a truncated option) closes without a reply."""
        raw = lq(4, "2001:db8:1::1").encode() + b"\x00\x01\x00"
        _, transport, replies = self.harness().ask(raw)
        self.assertEqual(replies, [])
        self.assertTrue(transport.disconnecting)

    def test_zero_length_frame_closes(self) -> None:
        """S6: a zero-length frame is not a message: close."""
        _, transport, _ = self.harness().ask(b"")
        self.assertTrue(transport.disconnecting)

    def test_other_message_type_closes(self) -> None:
        """S6: a SOLICIT or a RELAY-FORW on a bulk connection closes it."""
        harness = self.harness()
        _, transport, replies = harness.ask(Message(MessageType.SOLICIT, 1, (REQUESTOR,)))
        self.assertEqual(replies, [])
        self.assertTrue(transport.disconnecting)
        _, transport, replies = harness.ask(make_relay_hop().encode())
        self.assertTrue(transport.disconnecting)

    def test_internal_error_contained(self) -> None:
        """S6: an unexpected error while handling a message is logged and closes this
        connection; nothing escapes stringReceived."""
        from bulklq.server import _protocol

        def broken(*args: object) -> None:
            raise ZeroDivisionError("bug")

        self.patch(_protocol, "validate_query", broken)
        protocol, transport = self.harness().connect()
        protocol.dataReceived(framed(lq(4, "2001:db8:1::1")))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_oversized_frame_closes(self) -> None:
        """S6: a frame longer than MAX_LENGTH (no LEASEQUERY is that big) closes at once."""
        protocol, transport = self.harness().connect()
        protocol.dataReceived(struct.pack("!H", BulkLeasequeryProtocol.MAX_LENGTH + 1))
        self.assertTrue(transport.disconnecting)


class ValidationTests(ServerTestCase):
    """S7-S12, S14: error statuses and link resolution."""

    def test_unknown_query_type(self) -> None:
        """S7, S37: an unknown query-type gets a REPLY with UnknownQueryType and no data."""
        _, transport, replies = self.harness().ask(lq(99, "::"))
        (reply,) = replies
        self.assertEqual(reply.msg_type, MessageType.LEASEQUERY_REPLY)
        self.assertEqual(status_of(reply), StatusCode.UnknownQueryType)
        self.assertEqual(reply.options_of(ClientData), [])
        self.assertFalse(transport.disconnecting)

    def test_missing_query_option(self) -> None:
        """S8: each type without its required query-option gets MalformedQuery."""
        harness = self.harness()
        for query_type in (1, 2, 3, 5):
            _, _, (reply,) = harness.ask(lq(query_type, "::"))
            self.assertEqual(status_of(reply), StatusCode.MalformedQuery, query_type)

    def test_unknown_link_not_configured(self) -> None:
        """S9: a non-zero link-address in no configured link gets NotConfigured."""
        _, _, (reply,) = self.harness().ask(lq(2, "2001:db8:99::1", ClientId(make_duid(1))))
        self.assertEqual(status_of(reply), StatusCode.NotConfigured)
        self.assertEqual(reply.option(ClientId), REQUESTOR)

    def test_address_link_from_address(self) -> None:
        """S10: QUERY_BY_ADDRESS with link :: finds the binding from the address; an
        address on no link gets NotConfigured."""
        harness = self.harness()
        _, _, replies = harness.ask(lq(1, "::", IAAddress(IPv6Address("2001:db8:1::3"), 0, 0)))
        self.assertEqual(clients(replies), [(make_duid(3).raw, IPv6Address("2001:db8:1::3"))])
        _, _, (reply,) = harness.ask(lq(1, "::", IAAddress(IPv6Address("2001:db8:77::1"), 0, 0)))
        self.assertEqual(status_of(reply), StatusCode.NotConfigured)

    def test_address_on_link_without_binding(self) -> None:
        """S10, S31: an address on a configured link with no binding: empty REPLY."""
        _, _, (reply,) = self.harness().ask(
            lq(1, "::", IAAddress(IPv6Address("2001:db8:1::99"), 0, 0))
        )
        self.assertIsNone(status_of(reply))
        self.assertEqual(reply.options_of(ClientData), [])

    def test_address_inside_delegated_prefix(self) -> None:
        """S10: an address inside a delegated prefix (on no link) finds that binding."""
        address = IAAddress(IPv6Address("2001:db8:ff02:12::1"), 0, 0)
        _, _, replies = self.harness().ask(lq(1, "::", address))
        ((client, _),) = clients(replies)
        self.assertEqual(client, make_duid(2).raw)

    def test_client_id_all_links(self) -> None:
        """S11: QUERY_BY_CLIENTID with link :: gives one CLIENT_DATA per link."""
        _, _, replies = self.harness().ask(lq(2, "::", ClientId(make_duid(1))))
        self.assertEqual(
            [address for _, address in clients(replies)],
            [IPv6Address("2001:db8:1::1"), IPv6Address("2001:db8:2::1")],
        )

    def test_client_id_one_link(self) -> None:
        """S11: QUERY_BY_CLIENTID with a link-address gives only that link's binding."""
        _, _, replies = self.harness().ask(lq(2, "2001:db8:2::9", ClientId(make_duid(1))))
        self.assertEqual([a for _, a in clients(replies)], [IPv6Address("2001:db8:2::1")])

    def test_no_client_link_ever(self) -> None:
        """S12: no LQ_CLIENT_LINK in a bulk reply, even asked for and stored."""
        stored = LQClientLink((IPv6Address("2001:db8:1::"),))
        harness = self.harness(bindings=[make_binding(5, options=[stored])])
        oro = OptionRequest((48, 46))
        _, _, replies = harness.ask(lq(2, "::", ClientId(make_duid(5)), oro))
        self.assertEqual(len(replies), 2)
        for message in replies:
            self.assertIsNone(message.option(LQClientLink))
            for cd in message.options_of(ClientData):
                self.assertIsNone(cd.option(LQClientLink))

    def test_query_type_not_allowed(self) -> None:
        """S14: a requestor whose ACL rule excludes a query type gets NotAllowed; its
        allowed types work."""
        harness = self.harness(allow=(parse_access_rule("2001:db8::/32:client-id"),))
        _, _, (reply,) = harness.ask(lq(4, "2001:db8:1::1"))
        self.assertEqual(status_of(reply), StatusCode.NotAllowed)
        _, _, replies = harness.ask(lq(2, "::", ClientId(make_duid(3))))
        self.assertIsNone(status_of(replies[0]))

    def test_requestor_not_permitted(self) -> None:
        """S14, S17: a peer matching no rule is refused by buildProtocol (closed at once)."""
        harness = self.harness()
        self.assertIsNone(
            harness.factory.buildProtocol(TwistedIPv6Address("TCP", "2001:db9::1", 1))
        )
        self.assertEqual(harness.factory.stats.refusals["acl"], 1)


class ReplyTests(ServerTestCase):
    """S28-S36, S39-S51: the messages of a successful query."""

    def link_query(self, **kwargs: Any) -> list[Message]:
        """All of link-1 (three clients)."""
        _, _, replies = self.harness(**kwargs).ask(lq(4, "2001:db8:1::1", xid=0xABCDEF))
        return replies

    def test_sequence(self) -> None:
        """S28, S30, S32, S33, S35: one REPLY with the first CLIENT_DATA, one DATA per
        further client, one DONE, all with the query's transaction-id."""
        replies = self.link_query()
        self.assertEqual(
            [m.msg_type for m in replies],
            [
                MessageType.LEASEQUERY_REPLY,
                MessageType.LEASEQUERY_DATA,
                MessageType.LEASEQUERY_DATA,
                MessageType.LEASEQUERY_DONE,
            ],
        )
        self.assertEqual({m.transaction_id for m in replies}, {0xABCDEF})
        for message in replies[:3]:
            self.assertEqual(len(message.options_of(ClientData)), 1)
        self.assertEqual([c for c, _ in clients(replies)], [make_duid(n).raw for n in (1, 2, 3)])

    def test_reply_ids(self) -> None:
        """S29: the REPLY carries SERVERID and a copy of the query's CLIENTID."""
        reply = self.link_query()[0]
        self.assertEqual(reply.option(ServerId), ServerId(SERVER_DUID))
        self.assertEqual(reply.option(ClientId), REQUESTOR)
        self.assertIsNone(reply.option(StatusCodeOption))

    def test_no_bindings(self) -> None:
        """S31: no match: a REPLY with neither STATUS_CODE nor CLIENT_DATA, and no DONE."""
        _, transport, replies = self.harness().ask(lq(2, "::", ClientId(make_duid(77))))
        (reply,) = replies
        self.assertEqual(reply.msg_type, MessageType.LEASEQUERY_REPLY)
        self.assertIsNone(reply.option(StatusCodeOption))
        self.assertEqual(reply.options_of(ClientData), [])
        self.assertFalse(transport.disconnecting)

    def test_single_binding_no_data(self) -> None:
        """S33, S35: one client: REPLY then DONE, no DATA."""
        _, _, replies = self.harness().ask(lq(2, "2001:db8:1::1", ClientId(make_duid(3))))
        self.assertEqual(
            [m.msg_type for m in replies],
            [MessageType.LEASEQUERY_REPLY, MessageType.LEASEQUERY_DONE],
        )

    def test_data_and_done_options(self) -> None:
        """S34, S36: DATA has only CLIENT_DATA (no SERVERID, CLIENTID, STATUS_CODE); a
        successful DONE has no option."""
        replies = self.link_query()
        for data in replies[1:3]:
            self.assertEqual([type(o) for o in data.options], [ClientData])
        self.assertEqual(replies[-1].options, ())

    def test_client_data_contents(self) -> None:
        """S39, S40, S41: CLIENTID, IAADDR and IAPREFIX with the remaining lifetimes, and
        CLT_TIME of 4 octets = now - cltt."""
        replies = self.link_query()
        second = client_datas(replies)[1]
        elapsed = CONTRACT_NOW - DEFAULT_CLTT
        self.assertEqual(second.option(ClientId), ClientId(make_duid(2)))
        self.assertEqual(
            second.option(IAAddress),
            IAAddress(IPv6Address("2001:db8:1::2"), 1800 - elapsed, 3600 - elapsed),
        )
        self.assertEqual(
            second.option(IAPrefix),
            IAPrefix(1800 - elapsed, 3600 - elapsed, 56, IPv6Address("2001:db8:ff02::")),
        )
        self.assertEqual(second.option(CltTime), CltTime(elapsed))
        self.assertEqual(CltTime(elapsed).encode()[2:4], b"\x00\x04")

    def test_expired_lease_omitted(self) -> None:
        """S40: a lease with no valid lifetime left is omitted; a binding with none left
        is skipped; preferred never goes below 0; infinity stays infinite."""
        elapsed = CONTRACT_NOW - DEFAULT_CLTT
        binding = make_binding(
            8,
            addresses=[
                AddressLease(IPv6Address("2001:db8:1::8"), 10, elapsed),
                AddressLease(IPv6Address("2001:db8:1::9"), 10, elapsed + 5),
            ],
            prefixes=[PrefixLease(make_link().prefixes[0], 0xFFFFFFFF, 0xFFFFFFFF)],
        )
        harness = self.harness(bindings=[binding])
        _, _, replies = harness.ask(lq(4, "2001:db8:1::1"))
        (cd,) = client_datas(replies)
        self.assertEqual(cd.options_of(IAAddress), [IAAddress(IPv6Address("2001:db8:1::9"), 0, 5)])
        (prefix,) = cd.options_of(IAPrefix)
        self.assertEqual((prefix.preferred_lifetime, prefix.valid_lifetime), (0xFFFFFFFF,) * 2)

    def test_binding_expired_at_send_time_skipped(self) -> None:
        """S40: a binding whose leases ran out between the store's page and sending is
        skipped (the store's clock is behind the server's here)."""
        elapsed = CONTRACT_NOW - DEFAULT_CLTT
        short = make_binding(8, valid_lifetime=elapsed + 1)
        harness = self.harness(bindings=[short, make_binding(9)])
        harness.memory._clock = None  # type: ignore[attr-defined]
        harness.memory._now = lambda: float(CONTRACT_NOW)  # type: ignore[method-assign]
        harness.clock.advance(2)
        _, _, replies = harness.ask(lq(4, "2001:db8:1::1"))
        self.assertEqual([c for c, _ in clients(replies)], [make_duid(9).raw])
        self.assertEqual(replies[0].msg_type, MessageType.LEASEQUERY_REPLY)

    def test_oversized_binding_skipped(self) -> None:
        """S40 and framing: a binding whose CLIENT_DATA cannot fit in one message (65535
        octets) is skipped and logged; the others on the page are sent."""
        huge = [UnknownOption(39, b"x" * 40000), UnknownOption(39, b"y" * 40000)]
        harness = self.harness(bindings=[make_binding(5, options=huge), make_binding(6)])
        _, _, replies = harness.ask(lq(4, "2001:db8:1::1", OptionRequest((39,))))
        self.assertEqual([c for c, _ in clients(replies)], [make_duid(6).raw])
        self.assertEqual(replies[-1].msg_type, MessageType.LEASEQUERY_DONE)

    def test_oro_stored_option(self) -> None:
        """S42: a stored option asked for by the LQ_QUERY's ORO is included."""
        stored = UnknownOption(39, b"\x00\x05host1")
        harness = self.harness(bindings=[make_binding(5, options=[stored])])
        _, _, replies = harness.ask(lq(2, "::", ClientId(make_duid(5)), OptionRequest((39,))))
        (cd,) = client_datas(replies)
        self.assertEqual(cd.option(UnknownOption), stored)
        _, _, replies = harness.ask(lq(2, "::", ClientId(make_duid(5))))
        self.assertIsNone(client_datas(replies)[0].option(UnknownOption))

    def test_sensitive_options(self) -> None:
        """S43: options on the sensitive list are never returned, even asked for."""
        stored = UnknownOption(39, b"\x00\x05host1")
        harness = self.harness(
            bindings=[make_binding(5, options=[stored], relay_id=RELAY)],
            sensitive_options=frozenset({39, 47}),
        )
        oro = OptionRequest((39, 47))
        _, _, replies = harness.ask(lq(2, "::", ClientId(make_duid(5)), oro))
        (cd,) = client_datas(replies)
        self.assertIsNone(cd.option(UnknownOption))
        self.assertIsNone(cd.option(LQRelayData))

    def test_relay_data(self) -> None:
        """S44, S46: LQ_RELAY_DATA when 47 is asked: the stored chain (innermost RELAY_MSG
        removed), with every hop's options."""
        chain = make_relay_data(
            make_relay_hop("2001:db8:ffff::1", relay_id=RELAY),
            make_relay_hop("2001:db8:1::1", remote_id=REMOTE),
        )
        harness = self.harness(bindings=[make_binding(5, relay_data=chain)])
        _, _, replies = harness.ask(lq(2, "::", ClientId(make_duid(5)), OptionRequest((47,))))
        (cd,) = client_datas(replies)
        self.assertEqual(cd.option(LQRelayData), chain)
        inner = chain.relay_message.layers()[-1]
        self.assertIsNone(inner.inner)
        self.assertEqual(inner.option(InterfaceId), InterfaceId(b"eth0"))

    def test_no_relay_data_without_chain(self) -> None:
        """S45: no LQ_RELAY_DATA for a client with no relay information."""
        _, _, replies = self.harness().ask(
            lq(2, "::", ClientId(make_duid(3)), OptionRequest((47,)))
        )
        (cd,) = client_datas(replies)
        self.assertIsNone(cd.option(LQRelayData))

    def test_relay_id(self) -> None:
        """S47: QUERY_BY_RELAY_ID returns the bindings with that Relay-ID, every link."""
        _, _, replies = self.harness().ask(lq(3, "::", RelayId(RELAY)))
        self.assertEqual(
            [a for _, a in clients(replies)],
            [IPv6Address(a) for a in ("2001:db8:1::1", "2001:db8:1::2", "2001:db8:2::1")],
        )

    def test_link_restriction(self) -> None:
        """S48: QUERY_BY_RELAY_ID/REMOTE_ID with a link-address return only that link's
        bindings; a link-address in no link gets NotConfigured."""
        harness = self.harness()
        _, _, replies = harness.ask(lq(3, "2001:db8:2::77", RelayId(RELAY)))
        self.assertEqual([a for _, a in clients(replies)], [IPv6Address("2001:db8:2::1")])
        _, _, replies = harness.ask(lq(5, "2001:db8:2::77", REMOTE))
        self.assertEqual(clients(replies), [])
        for query in (lq(3, "2001:db8:9::1", RelayId(RELAY)), lq(5, "2001:db8:9::1", REMOTE)):
            _, _, (reply,) = harness.ask(query)
            self.assertEqual(status_of(reply), StatusCode.NotConfigured)

    def test_link_address(self) -> None:
        """S49: QUERY_BY_LINK_ADDRESS returns every binding on the link containing the
        address; link-address :: gets MalformedQuery (bulklq's documented choice)."""
        harness = self.harness()
        _, _, replies = harness.ask(lq(4, "2001:db8:2::1234"))
        self.assertEqual(clients(replies), [(make_duid(1).raw, IPv6Address("2001:db8:2::1"))])
        _, _, (reply,) = harness.ask(lq(4, "::"))
        self.assertEqual(status_of(reply), StatusCode.MalformedQuery)

    def test_remote_id_whole_value(self) -> None:
        """S50: QUERY_BY_REMOTE_ID matches the whole value: another enterprise number with
        the same remote-id matches nothing."""
        harness = self.harness()
        _, _, replies = harness.ask(lq(5, "::", REMOTE))
        self.assertEqual([c for c, _ in clients(replies)], [make_duid(1).raw])
        _, _, (reply,) = harness.ask(lq(5, "::", RemoteId(9, REMOTE.remote_id)))
        self.assertEqual(reply.options_of(ClientData), [])

    def test_query_changes_nothing(self) -> None:
        """S51: queries leave every binding as it was."""
        harness = self.harness()
        before = sorted(harness.memory.bindings(), key=lambda b: b.key)
        for query in (
            lq(4, "2001:db8:1::1"),
            lq(3, "::", RelayId(RELAY)),
            lq(2, "::", ClientId(make_duid(1)), OptionRequest((47,))),
        ):
            harness.ask(query)
        self.assertEqual(sorted(harness.memory.bindings(), key=lambda b: b.key), before)


class ActiveLeasequeryTests(ServerTestCase):
    """S52, S53: Active Leasequery messages on a server without it."""

    def test_active_leasequery(self) -> None:
        """S52: ACTIVELEASEQUERY gets LEASEQUERY-REPLY with NotSupported, then close."""
        message = Message(MessageType.ACTIVELEASEQUERY, 5, (REQUESTOR,))
        _, transport, (reply,) = self.harness().ask(message)
        self.assertEqual(reply.msg_type, MessageType.LEASEQUERY_REPLY)
        self.assertEqual(reply.transaction_id, 5)
        self.assertEqual(status_of(reply), StatusCode.NotSupported)
        self.assertTrue(transport.disconnecting)

    def test_starttls(self) -> None:
        """S53: STARTTLS gets a REPLY (type 7) with TLSConnectionRefused."""
        message = Message(MessageType.STARTTLS, 6, (REQUESTOR,))
        _, _transport, (reply,) = self.harness().ask(message)
        self.assertEqual(reply.msg_type, MessageType.REPLY)
        self.assertEqual(status_of(reply), StatusCode.TLSConnectionRefused)
        self.assertEqual(reply.option(ServerId), ServerId(SERVER_DUID))
