"""
The requestor against the real bulklq server: in memory through iosim (with a shared
clock, so bindings come back exactly as the store holds them), and over real loopback TCP.
"""

from __future__ import annotations

import random
from ipaddress import IPv6Address

import attrs
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from bulklq.client import (
    LeaseQuery,
    QueryResult,
    QueryStatus,
    Requestor,
    RequestorOptions,
    ServerAddress,
    ServerResult,
)
from bulklq.config import ServerConfig, parse_access_rule
from bulklq.model import Binding
from bulklq.server import BulkLeasequeryFactory
from bulklq.stores.memory import MemoryBindingStore
from bulklq.testing import (
    CONTRACT_NOW,
    make_binding,
    make_duid,
    make_link,
    make_relay_data,
)
from bulklq.wire import Duid, RemoteId, StatusCode

from .fake_server import REQUESTOR_DUID, SERVER_DUID, InMemoryEndpoint

RELAY = Duid.uuid(bytes(range(16)))
OTHER_RELAY = Duid.uuid(bytes(range(1, 17)))
REMOTE = RemoteId(32473, b"circuit-7")


def _dataset() -> tuple[list[object], list[Binding]]:
    links = [make_link("link-1", ["2001:db8:1::/64"]), make_link("link-2", ["2001:db8:2::/64"])]
    relay_1 = make_relay_data(link_address="2001:db8:1::1", relay_id=RELAY, remote_id=REMOTE)
    relay_2 = make_relay_data(link_address="2001:db8:2::1", relay_id=OTHER_RELAY)
    bindings = [
        make_binding(
            n,
            "link-1",
            addresses=[f"2001:db8:1::{n:x}"],
            prefixes=[f"2001:db8:ff{n:02x}::/56"],
            relay_data=relay_1,
            cltt=CONTRACT_NOW - n,
        )
        for n in range(1, 60)
    ] + [
        make_binding(100 + n, "link-2", addresses=[f"2001:db8:2::{n:x}"], relay_data=relay_2)
        for n in range(1, 5)
    ]
    return links, bindings  # type: ignore[return-value]


def _as_requestor_sees(binding: Binding, link: str) -> Binding:
    return attrs.evolve(binding, link_id=link)


class InMemoryServerTests(SynchronousTestCase):
    """The requestor and the bulklq server connected through iosim on one Clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(CONTRACT_NOW)
        links, self.bindings = _dataset()
        store = MemoryBindingStore(links, clock=self.clock)  # type: ignore[arg-type]
        for binding in self.bindings:
            store.put(binding)
        config = ServerConfig(SERVER_DUID, allow=(parse_access_rule("2001:db8::/32"),))
        self.server = BulkLeasequeryFactory(store, config, self.clock)
        self.endpoint = InMemoryEndpoint(self.server)
        self.requestor = Requestor(
            REQUESTOR_DUID,
            self.clock,
            RequestorOptions(retries=0),
            lambda address: self.endpoint,
            random.Random(1),
        )

    def drive(self, deferred: defer.Deferred[object]) -> object:
        """Pump until C{deferred} fires; return its result."""
        for _ in range(100):
            self.endpoint.flush()
            if deferred.called:
                break
            self.clock.advance(0.01)
        return self.successResultOf(deferred)

    def query(self, query: LeaseQuery) -> ServerResult:
        """One query to the server."""
        result = self.drive(self.requestor.query("2001:db8::1", query))  # type: ignore[arg-type]
        assert isinstance(result, ServerResult)
        return result

    def test_relay_id_round_trip(self) -> None:
        """
        R9/R16/S40: by relay-id with relay data, every binding comes back exactly as the store
        holds it (cltt from CLT_TIME, lifetimes re-based), with the relay's link.
        """
        result = self.query(LeaseQuery.by_relay_id(RELAY, relay_data=True))
        self.assertEqual(result.status, QueryStatus.SUCCESS)
        self.assertEqual(result.server_duid, SERVER_DUID)
        expected = [_as_requestor_sees(b, "2001:db8:1::1") for b in self.bindings[:59]]
        self.assertEqual(list(result.bindings), sorted(expected, key=lambda b: b.key))

    def test_link_query(self) -> None:
        """QUERY_BY_LINK_ADDRESS: the link id is the query's link-address."""
        result = self.query(LeaseQuery.by_link_address(IPv6Address("2001:db8:2::1")))
        self.assertEqual(result.status, QueryStatus.SUCCESS)
        self.assertEqual({b.link_id for b in result.bindings}, {"2001:db8:2::1"})
        self.assertEqual(
            sorted(b.client_id for b in result.bindings),
            sorted(make_duid(100 + n) for n in range(1, 5)),
        )
        # Without --relay-data the server sends no LQ_RELAY_DATA.
        self.assertEqual({b.relay_data for b in result.bindings}, {None})

    def test_other_query_types(self) -> None:
        """By remote-id, client-id and address the requestor gets the matching bindings."""
        remote = self.query(LeaseQuery.by_remote_id(REMOTE))
        self.assertEqual(len(remote.bindings), 59)
        client = self.query(LeaseQuery.by_client_id(make_duid(3)))
        self.assertEqual([b.client_id for b in client.bindings], [make_duid(3)])
        address = self.query(LeaseQuery.by_address(IPv6Address("2001:db8:ff05::77")))
        self.assertEqual([b.client_id for b in address.bindings], [make_duid(5)])

    def test_not_configured(self) -> None:
        """S9/R10: a link the server does not serve: a server error naming NotConfigured."""
        result = self.query(LeaseQuery.by_link_address(IPv6Address("2001:db8:99::1")))
        self.assertEqual(result.status, QueryStatus.SERVER_ERROR)
        self.assertEqual(result.status_code, StatusCode.NotConfigured)

    def test_pipelined(self) -> None:
        """R13/S22: several queries pipelined on one connection to the real server."""
        protocol = self.drive(self.requestor.connect("2001:db8::1"))  # type: ignore[arg-type]
        queries = [
            protocol.query(LeaseQuery.by_relay_id(RELAY)),  # type: ignore[attr-defined]
            protocol.query(LeaseQuery.by_relay_id(OTHER_RELAY)),  # type: ignore[attr-defined]
            protocol.query(LeaseQuery.by_link_address(IPv6Address("2001:db8:1::9"))),  # type: ignore[attr-defined]
        ]
        results = self.drive(defer.gatherResults(queries))  # type: ignore[arg-type]
        self.assertEqual([len(r.bindings) for r in results], [59, 4, 59])  # type: ignore[attr-defined]
        protocol.transport.loseConnection()  # type: ignore[attr-defined]
        self.endpoint.flush()

    def test_two_servers_merged(self) -> None:
        """R16: the same store behind two servers: merged, one binding per client and link."""
        addresses = [ServerAddress.parse("2001:db8::1"), ServerAddress.parse("2001:db8::2")]
        result = self.drive(
            self.requestor.query_all(addresses, LeaseQuery.by_relay_id(OTHER_RELAY))  # type: ignore[arg-type]
        )
        assert isinstance(result, QueryResult)
        self.assertTrue(result.complete)
        self.assertEqual(len(result.bindings), 4)
        self.assertEqual([r.received for r in result.servers], [4, 4])


class LoopbackTests(TestCase):
    """Over real TCP on ::1 with the global reactor."""

    def test_loopback(self) -> defer.Deferred[None]:
        """R4/R15: connect to a listening bulklq server, stream 2,000 bindings, close."""
        import time

        from twisted.internet import reactor

        now = int(time.time())
        links = [make_link("link-1", ["2001:db8:1::/64"])]
        store = MemoryBindingStore(links)  # type: ignore[arg-type]
        relay = make_relay_data(relay_id=RELAY)
        for n in range(1, 2001):
            store.put(
                make_binding(
                    n, "link-1", addresses=[f"2001:db8:1::{n:x}"], cltt=now - 5, relay_data=relay
                )
            )
        config = ServerConfig(SERVER_DUID)
        factory = BulkLeasequeryFactory(store, config, reactor)  # type: ignore[arg-type]
        try:
            port = reactor.listenTCP(0, factory, interface="::1")  # type: ignore[attr-defined]
        except Exception as error:  # pragma: no cover - host without IPv6 loopback
            self.skipTest(f"no IPv6 loopback: {error}")
        self.addCleanup(port.stopListening)
        counted: list[Binding] = []
        requestor = Requestor(
            REQUESTOR_DUID, options=RequestorOptions(retries=0, keep_bindings=False)
        )

        def check(result: ServerResult) -> None:
            self.assertEqual(result.status, QueryStatus.SUCCESS)
            self.assertEqual((result.received, len(counted), result.bindings), (2000, 2000, ()))
            # The server's clock and ours are the same host's: cltt is back within a second.
            self.assertTrue(all(now - 7 <= b.cltt <= now - 4 for b in counted))

        return requestor.query(
            f"[::1]:{port.getHost().port}", LeaseQuery.by_relay_id(RELAY), counted.append
        ).addCallback(check)
