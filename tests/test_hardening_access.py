"""
Access control under attack (issue 7): unlisted addresses in every spelling never get
data, per-network query-type limits hold, and an in-flight query cannot be read from another
connection by reusing its transaction-id.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import address
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from bulklq.client import BulkLeasequeryClientProtocol
from bulklq.config import parse_access_rule
from bulklq.testing import connect_in_memory, make_duid
from bulklq.wire import (
    ClientData,
    ClientId,
    Duid,
    IAAddress,
    LQQuery,
    Message,
    MessageType,
    QueryType,
    RelayId,
    StatusCode,
    StatusCodeOption,
    decode_message,
)

from .test_hardening_harness import (
    LINK,
    RELAY_DUID,
    REMOTE,
    REQUESTOR_DUID,
    Harness,
    frame,
    harness_config,
    written_frames,
)

ACL = (
    parse_access_rule("2001:db8:1::/48:link"),
    parse_access_rule("2001:db8::/32:relay-id,remote-id"),
    parse_access_rule("192.0.2.0/24:address,client-id"),
    parse_access_rule("::ffff:198.51.100.0/120"),
)

UNLISTED = (
    "203.0.113.9",
    "::ffff:203.0.113.9",
    "::ffff:cb00:7109",
    "2001:db9::1",
    "::1",
    "127.0.0.1",
    "::",
    "0.0.0.0",
    "::192.0.2.5",  # IPv4-compatible (deprecated): not IPv4, not listed
    "2002:c000:205::1",  # 6to4 of 192.0.2.5: not listed either
    "64:ff9b::c000:205",  # NAT64 of 192.0.2.5
    "fe80::1%eth0",
    "255.255.255.255",
    "not-an-address",
    "",
)


def query_frame(query_type: int, xid: int, client: Duid = REQUESTOR_DUID) -> bytes:
    """A framed LEASEQUERY of C{query_type} with the option it needs."""
    options: tuple[Any, ...] = ()
    link = LINK.address + 1
    if query_type == QueryType.QUERY_BY_ADDRESS:
        options = (IAAddress(LINK.address + 1, 0, 0),)
    elif query_type == QueryType.QUERY_BY_CLIENTID:
        options = (ClientId(make_duid(1)),)
    elif query_type == QueryType.QUERY_BY_RELAY_ID:
        options = (RelayId(RELAY_DUID),)
    elif query_type == QueryType.QUERY_BY_REMOTE_ID:
        options = (REMOTE,)
    lq = LQQuery(query_type, link, options)
    return frame(Message(MessageType.LEASEQUERY, xid, (ClientId(client), lq)).encode())


def answers(transport: StringTransport) -> list[Message]:
    """The messages a server wrote on C{transport}."""
    decoded = [decode_message(raw) for raw in written_frames(transport.value())]
    assert all(isinstance(m, Message) for m in decoded)
    return decoded  # type: ignore[return-value]


def client_data_count(messages: list[Message]) -> int:
    """How many CLIENT_DATA options C{messages} hold."""
    return sum(len(m.options_of(ClientData)) for m in messages)


class UnlistedTests(SynchronousTestCase):
    """Addresses outside the ACL are closed at once, however they are spelled (S17)."""

    def test_unlisted_refused(self) -> None:
        """
        IPv4, IPv6, IPv4-mapped, IPv4-compatible, 6to4, NAT64, link-local with a scope,
        the unspecified and broadcast addresses, and non-addresses: no protocol is built
        (the connection closes at once, S17), each counted as an ACL refusal.
        """
        harness = Harness(config=harness_config(allow=ACL))
        for peer in UNLISTED:
            protocol, _ = harness.connect(peer)
            self.assertIsNone(protocol, peer)
        self.assertEqual(harness.factory.stats.refusals["acl"], len(UNLISTED))
        self.assertEqual(harness.factory.connections, {})

    def test_odd_address_objects_refused(self) -> None:
        """A peer address without a host (a UNIX socket, a bare object) is refused."""
        harness = Harness(config=harness_config(allow=ACL))
        for peer in (address.UNIXAddress(b"/tmp/x"), object()):
            self.assertIsNone(harness.factory.buildProtocol(peer))  # type: ignore[arg-type]

    def test_unlisted_gets_no_data_in_memory(self) -> None:
        """
        A real requestor connecting in memory from an unlisted IPv4-mapped address is
        refused before any octet is exchanged.
        """
        harness = Harness(config=harness_config(allow=ACL))
        for peer in ("::ffff:203.0.113.9", "2001:db9::1"):
            with self.assertRaises(ConnectionRefusedError):
                connect_in_memory(
                    harness.factory,
                    _client_factory(harness),
                    peer=peer,
                    clock=harness.clock,
                )

    def test_listed_mapped_equals_ipv4(self) -> None:
        """
        An IPv4 peer reaches the same rule whether it arrives as IPv4 or IPv4-mapped
        IPv6, and an ACL written as an IPv4-mapped network (C{::ffff:198.51.100.0/120})
        covers the IPv4 peers.
        """
        harness = Harness(config=harness_config(allow=ACL))
        for peer in ("192.0.2.5", "::ffff:192.0.2.5", "198.51.100.7", "::ffff:198.51.100.7"):
            protocol, transport = harness.connect(peer)
            self.assertIsNotNone(protocol, peer)
            assert protocol is not None
            self.assertEqual(protocol.peer, peer.removeprefix("::ffff:"))
            harness.lose(protocol, transport)


class QueryTypeLimitTests(SynchronousTestCase):
    """Per-network query-type limits (S14)."""

    def test_types_by_network(self) -> None:
        """
        Every query type from every listed network: the types its most specific rule
        lists get data, the others get a REPLY with NotAllowed and no CLIENT_DATA (S14),
        and the connection stays usable.
        """
        allowed = {
            "2001:db8:1::5": {QueryType.QUERY_BY_LINK_ADDRESS},
            "2001:db8:2::5": {QueryType.QUERY_BY_RELAY_ID, QueryType.QUERY_BY_REMOTE_ID},
            "192.0.2.5": {QueryType.QUERY_BY_ADDRESS, QueryType.QUERY_BY_CLIENTID},
            "::ffff:192.0.2.5": {QueryType.QUERY_BY_ADDRESS, QueryType.QUERY_BY_CLIENTID},
            "198.51.100.7": set(QueryType),
        }
        harness = Harness(config=harness_config(allow=ACL))
        for peer, types in allowed.items():
            protocol, transport = harness.connect(peer)
            assert protocol is not None
            for query_type in QueryType:
                transport.clear()
                protocol.dataReceived(query_frame(query_type, 0x500 + query_type))
                sent = answers(transport)
                self.assertEqual(sent[0].msg_type, MessageType.LEASEQUERY_REPLY)
                status = sent[0].option(StatusCodeOption)
                if query_type in types:
                    self.assertIsNone(status, (peer, query_type))
                    self.assertGreater(client_data_count(sent), 0, (peer, query_type))
                else:
                    self.assertEqual(len(sent), 1, (peer, query_type))
                    assert status is not None
                    self.assertEqual(status.status, StatusCode.NotAllowed, (peer, query_type))
                    self.assertEqual(client_data_count(sent), 0)
                self.assertFalse(transport.disconnecting)
            harness.lose(protocol, transport)


class TransactionIdTests(SynchronousTestCase):
    """Transaction-ids belong to one connection."""

    def test_xid_reuse_on_other_connection(self) -> None:
        """
        A second connection sending the transaction-id (and even the CLIENTID) of a query
        in flight on the first gets only the answer to its own query; the first query's
        bindings never appear on it, and the first query completes on its own connection.
        """
        harness = Harness(bindings=9)
        victim, victim_transport = harness.connect("2001:db8::100", full=True)
        thief, thief_transport = harness.connect("2001:db8::666")
        assert victim is not None and thief is not None
        victim.dataReceived(query_frame(QueryType.QUERY_BY_RELAY_ID, 0x777))
        self.assertEqual(client_data_count(answers(victim_transport)), 2)
        # Same xid, same CLIENTID, a query for a client that has no binding.
        lq = LQQuery(QueryType.QUERY_BY_CLIENTID, LINK.address + 1, (ClientId(make_duid(99)),))
        thief.dataReceived(
            frame(Message(MessageType.LEASEQUERY, 0x777, (ClientId(REQUESTOR_DUID), lq)).encode())
        )
        # And a DONE, DATA and REPLY with that xid: a requestor never sends them.
        for kind in (
            MessageType.LEASEQUERY_DONE,
            MessageType.LEASEQUERY_DATA,
            MessageType.LEASEQUERY_REPLY,
        ):
            if not thief_transport.disconnecting:
                thief.dataReceived(frame(Message(kind, 0x777, ()).encode()))
        while answers(victim_transport)[-1].msg_type != MessageType.LEASEQUERY_DONE:
            victim_transport.producer.resumeProducing()
        stolen = answers(thief_transport)
        self.assertEqual(client_data_count(stolen), 0)
        self.assertEqual([m.msg_type for m in stolen], [MessageType.LEASEQUERY_REPLY])
        mine = answers(victim_transport)
        self.assertEqual(client_data_count(mine), 9)
        self.assertEqual(mine[-1].msg_type, MessageType.LEASEQUERY_DONE)
        harness.lose(victim, victim_transport)
        harness.lose(thief, thief_transport)


def _client_factory(harness: Harness) -> Any:
    from twisted.internet.protocol import Factory

    return Factory.forProtocol(
        lambda: BulkLeasequeryClientProtocol(REQUESTOR_DUID, harness.clock)  # type: ignore[arg-type]
    )
