"""Tests for L{bulklq.testing}: builders, the in-memory connection, and the contract mixin."""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv6Address, IPv6Network

from twisted.internet import address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import FailTest, SynchronousTestCase

from bulklq.model import Binding, BindingKey, BindingPage, BindingQuery, Link
from bulklq.stores.memory import MemoryBindingStore
from bulklq.testing import (
    CONTRACT_NOW,
    DEFAULT_CLTT,
    BindingStoreContractMixin,
    connect_in_memory,
    contract_dataset,
    make_binding,
    make_duid,
    make_link,
    make_relay_data,
    make_relay_hop,
)
from bulklq.wire import (
    Duid,
    InterfaceId,
    MessageType,
    RelayId,
    RelayMessageOption,
    RemoteId,
)


class BuilderTests(SynchronousTestCase):
    """The value builders and their defaults."""

    def test_make_duid(self) -> None:
        """make_duid gives a DUID-LL with the number as its MAC address."""
        self.assertEqual(make_duid(258), Duid.ll(1, b"\x00\x00\x00\x00\x01\x02"))

    def test_make_link(self) -> None:
        """make_link takes prefixes as text."""
        self.assertEqual(
            make_link("a", ["2001:db8:a::/64"]), Link("a", (IPv6Network("2001:db8:a::/64"),))
        )

    def test_make_binding_defaults(self) -> None:
        """A numbered client gets one address derived from its number and default lifetimes."""
        binding = make_binding(5)
        self.assertEqual(binding.client_id, make_duid(5))
        self.assertEqual(binding.link_id, "link-1")
        self.assertEqual(binding.cltt, DEFAULT_CLTT)
        self.assertEqual([a.address for a in binding.addresses], [IPv6Address("2001:db8:1::5")])
        self.assertEqual(binding.expires_at(), DEFAULT_CLTT + 3600)
        self.assertIsNone(binding.relay_data)

    def test_make_binding_relay(self) -> None:
        """relay_id and remote_id build a one-hop chain the binding's ids come from."""
        binding = make_binding(
            1, relay_id=make_duid(9), remote_id=RemoteId(9, b"r"), prefixes=["2001:db8:9::/48"]
        )
        self.assertEqual(binding.relay_ids, (make_duid(9),))
        self.assertEqual(binding.remote_ids, (RemoteId(9, b"r"),))
        self.assertEqual(binding.prefixes[0].prefix, IPv6Network("2001:db8:9::/48"))

    def test_relay_chain(self) -> None:
        """
        Nested hops: outermost first, each outer hop carries the next in RELAY_MSG, hop
        counts descend to 0, the innermost has no RELAY_MSG, and the peer-address defaults
        to the outermost hop's link-address.
        """
        outer = make_relay_hop("2001:db8:ffff::1", "2001:db8:fffe::1", relay_id=make_duid(900))
        inner = make_relay_hop("2001:db8:1::1", remote_id=RemoteId(1, b"port"))
        relay_data = make_relay_data(outer, inner)
        layers = relay_data.relay_message.layers()
        self.assertEqual([layer.hop_count for layer in layers], [1, 0])
        self.assertEqual([layer.msg_type for layer in layers], [MessageType.RELAY_FORW] * 2)
        self.assertEqual(relay_data.peer_address, IPv6Address("2001:db8:ffff::1"))
        self.assertIsNotNone(layers[0].option(RelayMessageOption))
        self.assertIsNone(layers[1].option(RelayMessageOption))
        self.assertEqual(layers[0].option(RelayId), RelayId(make_duid(900)))
        self.assertEqual(layers[1].option(InterfaceId), InterfaceId(b"eth0"))
        binding = make_binding(1, relay_data=relay_data)
        self.assertEqual(binding.relay_ids, (make_duid(900),))
        self.assertEqual(binding.remote_ids, (RemoteId(1, b"port"),))
        # The chain survives the wire.
        self.assertEqual(relay_data.encode()[:2], b"\x00\x2f")

    def test_contract_dataset(self) -> None:
        """The contract dataset has unique keys, expired bindings and non-empty answers."""
        links, bindings = contract_dataset()
        self.assertEqual(len({b.key for b in bindings}), len(bindings))
        self.assertTrue(any(not b.is_active(CONTRACT_NOW) for b in bindings))
        self.assertEqual([link.link_id for link in links], sorted(link.link_id for link in links))
        self.assertGreater(
            sum(BindingQuery.by_relay_id(Duid.en(32473, b"relay-1")).matches(b) for b in bindings),
            5,
        )


class _Recorder(Protocol):
    def __init__(self) -> None:
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data


class ConnectInMemoryTests(SynchronousTestCase):
    """connect_in_memory wires a client and a server with chosen addresses."""

    def test_addresses_and_data(self) -> None:
        """The server factory sees the chosen peer; bytes flow both ways on pump."""
        seen: list[object] = []

        class ServerFactory(Factory):
            def buildProtocol(self, addr):  # type: ignore[no-untyped-def]
                seen.append(addr)
                return _Recorder()

        client, server, pump = connect_in_memory(
            ServerFactory(), Factory.forProtocol(_Recorder), peer="2001:db8::42"
        )
        self.assertEqual(seen, [address.IPv6Address("TCP", "2001:db8::42", 40000)])
        self.assertEqual(server.transport.getPeer().host, "2001:db8::42")
        self.assertEqual(client.transport.getPeer().host, "2001:db8::1")
        self.assertEqual(client.transport.getPeer().port, 547)
        client.transport.write(b"ping")
        server.transport.write(b"pong")
        pump.flush()
        self.assertEqual(server.received, b"ping")
        self.assertEqual(client.received, b"pong")

    def test_refused(self) -> None:
        """A server factory that builds no protocol raises ConnectionRefusedError."""

        class Refusing(Factory):
            def buildProtocol(self, addr):  # type: ignore[no-untyped-def]
                return None

        self.assertRaises(
            ConnectionRefusedError, connect_in_memory, Refusing(), Factory.forProtocol(_Recorder)
        )


# The mixin must catch broken stores: each one below breaks one rule.


class _Reversed(MemoryBindingStore):
    def fetch(
        self, query: BindingQuery, resume_after: BindingKey | None, limit: int
    ) -> Deferred[BindingPage]:
        page = self.fetch_correct(query, resume_after, limit)
        return succeed(BindingPage(list(reversed(page.bindings)), page.resume_after))

    def fetch_correct(
        self, query: BindingQuery, resume_after: BindingKey | None, limit: int
    ) -> BindingPage:
        result: list[BindingPage] = []
        MemoryBindingStore.fetch(self, query, resume_after, limit).addCallback(result.append)
        return result[0]


class _KeepsExpired(MemoryBindingStore):
    def _now(self) -> float:
        return 0.0


class _IgnoresLink(_Reversed):
    def fetch(
        self, query: BindingQuery, resume_after: BindingKey | None, limit: int
    ) -> Deferred[BindingPage]:
        if query.link_id is not None and query.kind.name != "LINK":
            query = BindingQuery(
                query.kind, None, query.address, query.client_id, query.relay_id, query.remote_id
            )
        return succeed(self.fetch_correct(query, resume_after, limit))


class _Repeats(_Reversed):
    def fetch(
        self, query: BindingQuery, resume_after: BindingKey | None, limit: int
    ) -> Deferred[BindingPage]:
        page = self.fetch_correct(query, resume_after, limit)
        if page.resume_after is not None and page.bindings:
            last = page.bindings[-1]
            before = page.bindings[-2].key if len(page.bindings) > 1 else resume_after
            return succeed(BindingPage(page.bindings, before or last.key))
        return succeed(page)


def _contract_case(store_class: type[MemoryBindingStore], method: str) -> BindingStoreContractMixin:
    class Case(BindingStoreContractMixin, SynchronousTestCase):
        def make_store(
            self, links: Sequence[Link], bindings: Sequence[Binding]
        ) -> MemoryBindingStore:
            store = store_class(links, self.clock)
            store.put_many(bindings)
            return store

    return Case(method)


class ContractCatchesBrokenStoresTests(SynchronousTestCase):
    """Each contract test fails for a store that breaks its rule."""

    def assertContractFails(self, store_class: type[MemoryBindingStore], method: str) -> None:
        """Running C{method} of the mixin against C{store_class} fails."""
        case = _contract_case(store_class, method)
        result = getattr(case, method)()
        self.failureResultOf(result, FailTest, AssertionError)

    def test_correct_store_passes(self) -> None:
        """The unbroken memory store passes the same tests (so failures are meaningful)."""
        for method in ("test_contract_every_query", "test_contract_small_pages"):
            case = _contract_case(MemoryBindingStore, method)
            self.successResultOf(getattr(case, method)())

    def test_order(self) -> None:
        """Bindings out of key order fail."""
        self.assertContractFails(_Reversed, "test_contract_every_query")

    def test_expiry(self) -> None:
        """Expired bindings in an answer fail."""
        self.assertContractFails(_KeepsExpired, "test_contract_expired_excluded")
        self.assertContractFails(_KeepsExpired, "test_contract_every_query")

    def test_link_restriction(self) -> None:
        """Ignoring a query's link restriction fails."""
        self.assertContractFails(_IgnoresLink, "test_contract_every_query")

    def test_repeats(self) -> None:
        """A resume key that makes the next page repeat a binding fails."""
        self.assertContractFails(_Repeats, "test_contract_small_pages")

    def test_mutation_skipped_without_hook(self) -> None:
        """Without mutate_store, the write test is skipped, not passed."""
        from twisted.trial.unittest import SkipTest

        case = _contract_case(MemoryBindingStore, "test_contract_writes_between_pages")
        self.failureResultOf(case.test_contract_writes_between_pages(), SkipTest)


class DocsExampleTests(SynchronousTestCase):
    """The store example in docs/testing.md runs and passes the whole contract."""

    def test_docs_example_passes(self) -> None:
        """Every contract test of the documented ListStore example passes."""
        import os
        import re

        path = os.path.join(os.path.dirname(__file__), "..", "docs", "testing.md")
        with open(path, encoding="utf-8") as docs:
            text = docs.read()
        match = re.search(r"<!-- example: contract -->\n```python\n(.*?)```", text, re.S)
        assert match is not None, "example block not found"
        namespace: dict[str, object] = {}
        exec(compile(match.group(1), "docs/testing.md", "exec"), namespace)
        case_class = namespace["ListStoreContractTests"]
        names = [name for name in dir(case_class) if name.startswith("test_contract_")]
        self.assertGreaterEqual(len(names), 10)
        for name in names:
            case = case_class(name)  # type: ignore[operator]
            self.successResultOf(getattr(case, name)())
