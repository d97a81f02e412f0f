"""
Test support for bulklq and for code built on it.

Three things live here:

  - L{BindingStoreContractMixin}: a trial mixin that checks any
    L{IBindingStore<bulklq.interfaces.IBindingStore>} against the contract (query semantics,
    key order, keyset paging, consistency while bindings change, expiry, links, close). Every
    store in bulklq runs it; a third party subclasses it to test their own store.
  - Builders with sensible defaults: L{make_duid}, L{make_link}, L{make_relay_hop},
    L{make_relay_data}, L{make_binding}.
  - L{connect_in_memory}: a requestor connected to a server through
    L{twisted.test.iosim} (no sockets), with the IPv6 addresses each side sees chosen by
    the test, so the server's access control sees the peer the test wants.

Example, testing a store of your own (see docs/testing.md)::

    from twisted.trial.unittest import TestCase
    from bulklq.testing import BindingStoreContractMixin

    class MyStoreContractTests(BindingStoreContractMixin, TestCase):
        def make_store(self, links, bindings):
            store = MyStore(clock=self.clock)   # take "now" from self.clock
            for link in links:
                store.add_link(link)
            for binding in bindings:
                store.put(binding)
            return store                        # or a Deferred firing with it
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterable, Sequence
from ipaddress import IPv6Address, IPv6Network
from typing import TYPE_CHECKING, Any

from twisted.internet import address as _address
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IProtocolFactory
from twisted.internet.task import Clock
from twisted.test import iosim
from zope.interface.verify import verifyObject

from .interfaces import IBindingStore
from .model import (
    AddressLease,
    Binding,
    BindingKey,
    BindingQuery,
    Link,
    PrefixLease,
)
from .wire import (
    Duid,
    InterfaceId,
    LQRelayData,
    MessageType,
    Option,
    RelayId,
    RelayMessage,
    RelayMessageOption,
    RemoteId,
)

__all__ = [
    "CONTRACT_NOW",
    "DEFAULT_CLTT",
    "BindingStoreContractMixin",
    "collect_bindings",
    "connect_in_memory",
    "contract_dataset",
    "make_binding",
    "make_duid",
    "make_link",
    "make_relay_data",
    "make_relay_hop",
    "relay_identity_options",
]

#: The default client last transaction time of L{make_binding}: 2023-11-14 22:13:20 UTC.
DEFAULT_CLTT = 1_700_000_000
#: The Unix time the contract mixin's clock shows: 100 s after L{DEFAULT_CLTT}.
CONTRACT_NOW = DEFAULT_CLTT + 100

# Builders


def make_duid(number: int = 1) -> Duid:
    """A DUID-LL (hardware type 1) whose MAC address is C{number} in 6 octets."""
    return Duid.ll(1, number.to_bytes(6, "big"))


def make_link(
    link_id: str = "link-1", prefixes: Iterable[str | IPv6Network] = ("2001:db8:1::/64",)
) -> Link:
    """A L{Link} with the given id and prefixes (text or networks)."""
    return Link(link_id, tuple(IPv6Network(prefix) for prefix in prefixes))


def relay_identity_options(
    interface_id: bytes | None, remote_id: RemoteId | None, relay_id: Duid | None
) -> list[Option]:
    """A relay's INTERFACE_ID, REMOTE_ID and RELAY_ID options (in that order; None: left out)."""
    options: list[Option] = []
    if interface_id is not None:
        options.append(InterfaceId(interface_id))
    if remote_id is not None:
        options.append(remote_id)
    if relay_id is not None:
        options.append(RelayId(relay_id))
    return options


def make_relay_hop(
    link_address: str | IPv6Address = "2001:db8:1::1",
    peer_address: str | IPv6Address = "fe80::1",
    *,
    interface_id: bytes | None = b"eth0",
    remote_id: RemoteId | None = None,
    relay_id: Duid | None = None,
    options: Iterable[Option] = (),
) -> RelayMessage:
    """
    One RELAY-FORW layer without RELAY_MSG: its INTERFACE_ID, REMOTE_ID and RELAY_ID options
    (each left out when C{None}), then C{options}.
    """
    relay_options = relay_identity_options(interface_id, remote_id, relay_id)
    relay_options.extend(options)
    return RelayMessage(
        MessageType.RELAY_FORW,
        0,
        IPv6Address(link_address),
        IPv6Address(peer_address),
        tuple(relay_options),
    )


def make_relay_data(
    *hops: RelayMessage,
    peer_address: str | IPv6Address | None = None,
    link_address: str | IPv6Address = "2001:db8:1::1",
    interface_id: bytes | None = b"eth0",
    remote_id: RemoteId | None = None,
    relay_id: Duid | None = None,
) -> LQRelayData:
    """
    An LQ_RELAY_DATA value: the relay chain of C{hops}, outermost first.

    Each outer hop carries the next in a RELAY_MSG option; the innermost has none (the
    client's message is removed, RFC 5007). Hop counts run from C{len(hops) - 1} (outermost)
    down to 0. Without C{hops}, one hop is built from the keyword arguments with
    L{make_relay_hop}. C{peer_address} (the address the server received the chain from)
    defaults to the outermost hop's link-address.

    Two hops, the Relay-ID on the outer relay and the Remote-ID on the inner one::

        make_relay_data(
            make_relay_hop("2001:db8:ffff::1", relay_id=make_duid(900)),
            make_relay_hop("2001:db8:1::1", remote_id=RemoteId(32473, b"port-7")),
        )
    """
    if not hops:
        hops = (
            make_relay_hop(
                link_address,
                interface_id=interface_id,
                remote_id=remote_id,
                relay_id=relay_id,
            ),
        )
    chain: RelayMessage | None = None
    for hop_count, hop in enumerate(reversed(hops)):
        options = tuple(
            option for option in hop.options if not isinstance(option, RelayMessageOption)
        )
        if chain is not None:
            options += (RelayMessageOption(chain),)
        chain = RelayMessage(
            MessageType.RELAY_FORW, hop_count, hop.link_address, hop.peer_address, options
        )
    assert chain is not None
    peer = chain.link_address if peer_address is None else IPv6Address(peer_address)
    return LQRelayData(peer, chain)


def make_binding(
    client: int | Duid = 1,
    link_id: str = "link-1",
    *,
    cltt: int = DEFAULT_CLTT,
    addresses: Iterable[str | IPv6Address | AddressLease] | None = None,
    prefixes: Iterable[str | IPv6Network | PrefixLease] = (),
    preferred_lifetime: int = 1800,
    valid_lifetime: int = 3600,
    relay_data: LQRelayData | None = None,
    relay_id: Duid | None = None,
    remote_id: RemoteId | None = None,
    options: Iterable[Option] = (),
) -> Binding:
    """
    A L{Binding} with sensible defaults.

    @param client: a DUID, or a number for L{make_duid}.
    @param addresses: text, addresses or leases; when C{None} and C{client} is a number,
        one address C{2001:db8:1::<client>}; lifetimes from C{preferred_lifetime} and
        C{valid_lifetime} unless a lease is given.
    @param prefixes: delegated prefixes, likewise.
    @param relay_id: with C{remote_id}, builds a one-hop relay chain (L{make_relay_data})
        when C{relay_data} is not given.
    """
    duid = make_duid(client) if isinstance(client, int) else client
    if addresses is None:
        addresses = (IPv6Address("2001:db8:1::") + client,) if isinstance(client, int) else ()
    address_leases = tuple(
        item
        if isinstance(item, AddressLease)
        else AddressLease(IPv6Address(item), preferred_lifetime, valid_lifetime)
        for item in addresses
    )
    prefix_leases = tuple(
        item
        if isinstance(item, PrefixLease)
        else PrefixLease(IPv6Network(item), preferred_lifetime, valid_lifetime)
        for item in prefixes
    )
    if relay_data is None and (relay_id is not None or remote_id is not None):
        relay_data = make_relay_data(relay_id=relay_id, remote_id=remote_id)
    return Binding(
        duid,
        link_id,
        cltt,
        address_leases,
        prefix_leases,
        relay_data,
        options=tuple(options),
    )


# In-memory connections


def connect_in_memory(
    server_factory: IProtocolFactory,
    client_factory: IProtocolFactory,
    *,
    peer: str = "2001:db8::100",
    server_address: str = "2001:db8::1",
    server_port: int = 547,
    peer_port: int = 40000,
    clock: Clock | None = None,
    greet: bool = True,
) -> tuple[Any, Any, iosim.IOPump]:
    """
    Connect a protocol of C{client_factory} to one of C{server_factory} in memory.

    Each factory's C{buildProtocol} is called with the address of the other side, as a
    listening port and a connector would: the server's with C{IPv6Address("TCP", peer,
    peer_port)} (so its access control and limits see C{peer}), the client's with the
    server's address. Both transports report the same addresses from C{getPeer}/C{getHost}.

    @param clock: advanced a little on every pump step (see L{iosim.IOPump}).
    @param greet: flush once before returning, as L{iosim.connect} does.
    @return: C{(client protocol, server protocol, pump)}; call C{pump.flush()} to move
        bytes both ways until both sides are quiet.
    @raise ConnectionRefusedError: if the server factory refuses (C{buildProtocol} returns
        C{None}).
    """
    peer_address = _address.IPv6Address("TCP", peer, peer_port)
    host_address = _address.IPv6Address("TCP", server_address, server_port)
    server = server_factory.buildProtocol(peer_address)
    if server is None:
        raise ConnectionRefusedError(f"server factory refused {peer}")
    client = client_factory.buildProtocol(host_address)
    if client is None:
        raise ConnectionRefusedError("client factory built no protocol")
    server_transport = iosim.FakeTransport(
        server, isServer=True, hostAddress=host_address, peerAddress=peer_address
    )
    client_transport = iosim.FakeTransport(
        client, isServer=False, hostAddress=peer_address, peerAddress=host_address
    )
    pump = iosim.connect(
        server, server_transport, client, client_transport, greet=greet, clock=clock
    )
    return client, server, pump


# The store contract


async def collect_bindings(
    store: IBindingStore,
    query: BindingQuery,
    limit: int = 1000,
    resume_after: BindingKey | None = None,
) -> list[Binding]:
    """
    Every binding a store answers to C{query} (after C{resume_after} when given), fetched
    page by page with C{limit}.

    @raise AssertionError: if a page breaks the paging rules (more than C{limit} bindings, a
        key not above the resume key, keys not strictly increasing).
    """
    found: list[Binding] = []
    resume = resume_after
    while True:
        page = await store.fetch(query, resume, limit)
        _check_page(page.bindings, resume, limit)
        found.extend(page.bindings)
        if page.bindings:
            resume = page.bindings[-1].key
        if page.resume_after is None:
            return found
        if resume is not None and page.resume_after < resume:
            raise AssertionError(f"resume_after {page.resume_after!r} is below a returned key")
        resume = page.resume_after


def _check_page(bindings: Sequence[Binding], resume: BindingKey | None, limit: int) -> None:
    if len(bindings) > limit:
        raise AssertionError(f"page of {len(bindings)} bindings exceeds limit {limit}")
    previous = resume
    for binding in bindings:
        if previous is not None and not binding.key > previous:
            raise AssertionError(f"key {binding.key!r} does not follow {previous!r}")
        previous = binding.key


_LINKS = (
    make_link("subnet-1", ("2001:db8:1::/64", "2001:db8:100::/56")),
    make_link("subnet-10", ("2001:db8:10::/64",)),
    make_link("subnet-2", ("2001:db8:2::/64",)),
)
_RELAY_1 = Duid.en(32473, b"relay-1")
_RELAY_2 = Duid.en(32473, b"relay-2")
_RELAY_INNER = Duid.en(32473, b"relay-inner")
_REMOTE_1 = RemoteId(32473, b"circuit-1")
_REMOTE_2 = RemoteId(32473, b"circuit-2")
_REMOTE_1_OTHER_ENTERPRISE = RemoteId(9, b"circuit-1")
_UNKNOWN_DUID = Duid.en(32473, b"nobody")
_UNKNOWN_REMOTE = RemoteId(32473, b"nowhere")


def _contract_relay(variant: int, link: Link) -> LQRelayData | None:
    link_address = link.address + 1
    if variant == 1:
        return make_relay_data(link_address=link_address, relay_id=_RELAY_1, remote_id=_REMOTE_1)
    if variant == 2:
        return make_relay_data(link_address=link_address, relay_id=_RELAY_2, remote_id=_REMOTE_2)
    if variant == 3:
        return make_relay_data(
            make_relay_hop("2001:db8:ffff::1", "2001:db8:fffe::1", relay_id=_RELAY_1),
            make_relay_hop(
                link_address,
                relay_id=_RELAY_INNER,
                remote_id=_REMOTE_1_OTHER_ENTERPRISE,
                interface_id=b"ge-0/0/1",
            ),
        )
    if variant == 4:
        return make_relay_data(link_address=link_address, relay_id=_RELAY_1, remote_id=_REMOTE_2)
    return None


def contract_dataset(now: int = CONTRACT_NOW) -> tuple[tuple[Link, ...], tuple[Binding, ...]]:
    """
    The links and bindings L{BindingStoreContractMixin} loads into a store.

    Three links whose ids sort as text, not as numbers (C{subnet-1 < subnet-10 < subnet-2});
    bindings with addresses, delegated prefixes or both; one- and two-hop relay chains with
    Relay-IDs and Remote-IDs on either hop (one Remote-ID differs from another only in its
    enterprise number); clients on several links; DUIDs of which one is a prefix of
    another; and expired bindings (one expiring exactly at C{now}) that match queries too.
    """
    active = now - 100
    expired = now - 10_000
    bindings: list[Binding] = []
    for number in range(30):
        link = _LINKS[number % 3]
        base = link.prefixes[0].network_address
        shape = number % 4
        addresses = () if shape == 3 else (base + 0x100 + number,)
        prefixes: tuple[str, ...] = ()
        if shape in (2, 3):
            prefixes = (f"2001:db8:{0x8000 + number:x}::/{48 + number % 17}",)
        bindings.append(
            make_binding(
                number + 1,
                link.link_id,
                cltt=expired if number in (5, 17, 26) else active,
                addresses=addresses,
                prefixes=prefixes,
                relay_data=_contract_relay(number % 5, link),
            )
        )
    # Clients on more than one link.
    for number, link in ((1, _LINKS[1]), (1, _LINKS[2]), (8, _LINKS[0]), (6, _LINKS[0])):
        bindings.append(
            make_binding(
                number,
                link.link_id,
                cltt=active,
                addresses=(link.prefixes[0].network_address + 0x200 + number,),
                relay_data=_contract_relay(number % 5, link),
            )
        )
    # One DUID a prefix of another; the shorter sorts first.
    for identifier in (b"ab", b"abc", b"abd"):
        bindings.append(
            make_binding(
                Duid.en(32473, identifier),
                "subnet-2",
                cltt=active,
                addresses=(IPv6Address("2001:db8:2::") + 0x300 + len(bindings),),
                relay_data=_contract_relay(1, _LINKS[2]),
            )
        )
    # Expires exactly now: no longer active.
    bindings.append(
        make_binding(
            Duid.en(32473, b"ends-now"),
            "subnet-1",
            cltt=now - 3600,
            addresses=("2001:db8:1::dead",),
            valid_lifetime=3600,
            relay_data=_contract_relay(1, _LINKS[0]),
        )
    )
    assert len({binding.key for binding in bindings}) == len(bindings)
    return _LINKS, tuple(bindings)


def _contract_queries(bindings: Sequence[Binding]) -> list[BindingQuery]:
    link_ids: list[str | None] = [None, *(link.link_id for link in _LINKS), "no-such-link"]
    queries = [BindingQuery.by_link(link.link_id) for link in _LINKS]
    queries.append(BindingQuery.by_link("no-such-link"))
    for link_id in link_ids:
        for relay_id in (_RELAY_1, _RELAY_2, _RELAY_INNER, _UNKNOWN_DUID):
            queries.append(BindingQuery.by_relay_id(relay_id, link_id))
        for remote_id in (_REMOTE_1, _REMOTE_2, _REMOTE_1_OTHER_ENTERPRISE, _UNKNOWN_REMOTE):
            queries.append(BindingQuery.by_remote_id(remote_id, link_id))
        queries.append(BindingQuery.by_client_id(make_duid(1), link_id))
        queries.append(BindingQuery.by_address(IPv6Address("2001:db8:1::101"), link_id))
    for client_id in sorted({binding.client_id for binding in bindings}):
        queries.append(BindingQuery.by_client_id(client_id))
    queries.append(BindingQuery.by_client_id(_UNKNOWN_DUID))
    for binding in bindings:
        for lease in binding.addresses:
            queries.append(BindingQuery.by_address(lease.address))
        for prefix_lease in binding.prefixes:
            network = prefix_lease.prefix
            queries.append(BindingQuery.by_address(network.network_address))
            queries.append(BindingQuery.by_address(network.broadcast_address))
            queries.append(BindingQuery.by_address(network.network_address + 77))
            queries.append(BindingQuery.by_address(network.broadcast_address + 1))
    queries.append(BindingQuery.by_address(IPv6Address("2001:db8:9999::1")))
    return queries


if TYPE_CHECKING:
    from twisted.trial.unittest import SynchronousTestCase as _TestCaseBase
else:
    _TestCaseBase = object


class BindingStoreContractMixin(_TestCaseBase):
    """
    Trial tests every L{IBindingStore} must pass; mix into L{twisted.trial.unittest.TestCase}.

    The tests return Deferreds (a store may answer from a thread), so the test case class
    must be the asynchronous C{TestCase}, not C{SynchronousTestCase}.

    A subclass implements L{make_store}, and may implement L{mutate_store} (writes between
    pages; those tests are skipped without it) and L{comparable} (when the store keeps less
    than a whole L{Binding}). The store must take "now" from L{clock} (a L{Clock} showing
    L{contract_now}); a store that reads the wall clock instead sets
    C{contract_now = time.time()} in its subclass.

    Reference semantics: a query's answer is C{[b for b in bindings if query.matches(b) and
    b.is_active(now)]} in L{Binding.key} order.
    """

    #: The Unix time the store must take as now.
    contract_now: float = CONTRACT_NOW
    #: The page limits the paging tests use.
    contract_limits: Sequence[int] = (1, 2, 7)

    @property
    def clock(self) -> Clock:
        """A L{Clock} showing L{contract_now}, the same one for the whole test."""
        clock: Clock | None = self.__dict__.get("_contract_clock")
        if clock is None:
            clock = Clock()
            clock.advance(self.contract_now)
            self.__dict__["_contract_clock"] = clock
        return clock

    def make_store(
        self, links: Sequence[Link], bindings: Sequence[Binding]
    ) -> IBindingStore | Deferred[IBindingStore]:
        """
        A store serving C{links} and holding C{bindings}, or a Deferred firing with one.
        The mixin closes it at the end of the test.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement make_store")

    def mutate_store(
        self, store: IBindingStore, put: Sequence[Binding], remove: Sequence[BindingKey]
    ) -> Deferred[None] | None:
        """
        Insert or replace each binding of C{put} and delete the bindings with keys in
        C{remove}, while a query may be in progress. Optional: without it the write tests
        are skipped.
        """
        raise NotImplementedError

    def comparable(self, binding: Binding) -> object:
        """
        What of a binding the store preserves; the tests compare C{comparable(returned)}
        with C{comparable(stored)}. The whole binding by default.
        """
        return binding

    # Helpers

    def _reference(self, bindings: Iterable[Binding], query: BindingQuery) -> list[object]:
        now = self.contract_now
        chosen = sorted(
            (b for b in bindings if query.matches(b) and b.is_active(now)), key=lambda b: b.key
        )
        return [self.comparable(b) for b in chosen]

    async def _open(
        self, dataset: tuple[Sequence[Link], Sequence[Binding]] | None = None
    ) -> tuple[IBindingStore, Sequence[Link], Sequence[Binding]]:
        links, bindings = contract_dataset(int(self.contract_now)) if dataset is None else dataset
        made = self.make_store(links, bindings)
        store: IBindingStore = await made if isinstance(made, Deferred) else made
        self.addCleanup(store.close)
        return store, links, bindings

    def _contract_run(self, test: Callable[[], Any]) -> Deferred[None]:
        return ensureDeferred(test())

    # The contract

    def test_contract_provides_interface(self) -> Deferred[None]:
        """The store provides L{IBindingStore} and has a non-empty text C{name}."""

        async def test() -> None:
            store, _, _ = await self._open()
            self.assertTrue(verifyObject(IBindingStore, store))
            self.assertIsInstance(store.name, str)
            self.assertTrue(store.name)

        return self._contract_run(test)

    def test_contract_every_query(self) -> Deferred[None]:
        """
        For every query kind, with and without a link restriction, the store answers exactly
        the active bindings for which L{BindingQuery.matches} holds, in strict key order.
        """

        async def test() -> None:
            store, _, bindings = await self._open()
            queries = _contract_queries(bindings)
            for query in queries:
                found = await collect_bindings(store, query)
                self.assertEqual(
                    [self.comparable(b) for b in found], self._reference(bindings, query), query
                )

        return self._contract_run(test)

    def test_contract_empty_store(self) -> Deferred[None]:
        """A store with links and no bindings answers every query with nothing."""

        async def test() -> None:
            store, _, _ = await self._open((_LINKS, ()))
            _, bindings = contract_dataset(int(self.contract_now))
            for query in _contract_queries(bindings):
                self.assertEqual(await collect_bindings(store, query), [], query)

        return self._contract_run(test)

    def test_contract_address_in_delegated_prefix(self) -> Deferred[None]:
        """An address inside a delegated prefix finds the binding holding the prefix."""

        async def test() -> None:
            binding = make_binding(
                1,
                "subnet-1",
                cltt=int(self.contract_now),
                addresses=(),
                prefixes=("2001:db8:a0::/48",),
            )
            store, _, _ = await self._open((_LINKS, (binding,)))
            query = BindingQuery.by_address(IPv6Address("2001:db8:a0:ffff::42"))
            found = await collect_bindings(store, query)
            self.assertEqual([self.comparable(b) for b in found], [self.comparable(binding)])

        return self._contract_run(test)

    def test_contract_expired_excluded(self) -> Deferred[None]:
        """
        A binding whose every lease's valid lifetime has ended (at or before now) is in no
        answer, even when it matches.
        """

        async def test() -> None:
            now = int(self.contract_now)
            gone = make_binding(1, "subnet-1", cltt=now - 7200, valid_lifetime=3600)
            ends_now = make_binding(2, "subnet-1", cltt=now - 3600, valid_lifetime=3600)
            live = make_binding(3, "subnet-1", cltt=now - 3600, valid_lifetime=3601)
            store, _, _ = await self._open((_LINKS, (gone, ends_now, live)))
            found = await collect_bindings(store, BindingQuery.by_link("subnet-1"))
            self.assertEqual([self.comparable(b) for b in found], [self.comparable(live)])
            for binding in (gone, ends_now):
                query = BindingQuery.by_address(binding.addresses[0].address)
                self.assertEqual(await collect_bindings(store, query), [])

        return self._contract_run(test)

    def test_contract_small_pages(self) -> Deferred[None]:
        """Paging with small limits gives the same answer as one big page."""

        async def test() -> None:
            store, _, bindings = await self._open()
            queries = [BindingQuery.by_link(link.link_id) for link in _LINKS]
            queries += [
                BindingQuery.by_relay_id(_RELAY_1),
                BindingQuery.by_relay_id(_RELAY_1, "subnet-2"),
                BindingQuery.by_remote_id(_REMOTE_2),
                BindingQuery.by_client_id(make_duid(1)),
            ]
            for query in queries:
                whole = await collect_bindings(store, query, limit=len(bindings) + 10)
                self.assertEqual(
                    [self.comparable(b) for b in whole], self._reference(bindings, query)
                )
                for limit in self.contract_limits:
                    paged = await collect_bindings(store, query, limit=limit)
                    self.assertEqual([b.key for b in paged], [b.key for b in whole], limit)

        return self._contract_run(test)

    def test_contract_resume_after(self) -> Deferred[None]:
        """
        A page holds only keys strictly above C{resume_after}, whether or not that key is a
        stored binding's; resuming after the last match answers nothing more.
        """

        async def test() -> None:
            store, _, bindings = await self._open()
            query = BindingQuery.by_relay_id(_RELAY_1)
            expected = [
                b.key for b in bindings if query.matches(b) and b.is_active(self.contract_now)
            ]
            expected.sort()
            self.assertGreater(len(expected), 3)
            for index, key in enumerate(expected):
                page = await store.fetch(query, key, len(bindings))
                _check_page(page.bindings, key, len(bindings))
                rest = [b.key for b in page.bindings]
                while page.resume_after is not None:
                    page = await store.fetch(query, page.resume_after, len(bindings))
                    rest.extend(b.key for b in page.bindings)
                self.assertEqual(rest, expected[index + 1 :])
                # A key between two matches (no such binding): same answer.
                between = (key[0], key[1] + b"\x00")
                rest = [b.key for b in await collect_bindings(store, query, resume_after=between)]
                self.assertEqual(rest, expected[index + 1 :])
            # A resume key below every link id, and one above every key.
            rest = [b.key for b in await collect_bindings(store, query, resume_after=("", b""))]
            self.assertEqual(rest, expected)
            self.assertEqual(
                await collect_bindings(store, query, resume_after=("\U0010ffff", b"")), []
            )

        return self._contract_run(test)

    def test_contract_links(self) -> Deferred[None]:
        """
        C{find_link} answers the link whose prefix holds an address (any of a link's
        prefixes) and C{None} outside them; C{get_link} answers by id, C{None} if unknown.
        """

        async def test() -> None:
            store, links, _ = await self._open()
            for link in links:
                self.assertEqual(await store.get_link(link.link_id), link)
                for prefix in link.prefixes:
                    for address in (prefix.network_address, prefix.broadcast_address):
                        self.assertEqual(await store.find_link(address), link, address)
            self.assertIsNone(await store.get_link("no-such-link"))
            self.assertIsNone(await store.find_link(IPv6Address("2001:db8:9999::1")))
            self.assertIsNone(await store.find_link(IPv6Address("2001:db8:1:1::")))

        return self._contract_run(test)

    def test_contract_cancel_harmless(self) -> Deferred[None]:
        """Cancelling an outstanding C{fetch} is harmless: the store keeps answering."""

        async def test() -> None:
            store, _, bindings = await self._open()
            query = BindingQuery.by_link("subnet-1")
            pending = store.fetch(query, None, 2)
            pending.cancel()
            with contextlib.suppress(CancelledError):
                await pending
            found = await collect_bindings(store, query)
            self.assertEqual([self.comparable(b) for b in found], self._reference(bindings, query))

        return self._contract_run(test)

    def test_contract_close_idempotent(self) -> Deferred[None]:
        """C{close} may be called more than once; each call succeeds."""

        async def test() -> None:
            store, _, _ = await self._open()
            await store.close()
            await store.close()

        return self._contract_run(test)

    def test_contract_writes_between_pages(self) -> Deferred[None]:
        """
        Bindings added, changed and removed between pages: no key is returned twice, keys
        stay in strict order, every binding unchanged for the whole query is returned
        exactly once, and every returned binding is one of the states its key had during
        the query.
        """

        async def test() -> None:
            await self._check_writes(BindingQuery.by_link("subnet-1"), seed=1)
            await self._check_writes(BindingQuery.by_relay_id(_RELAY_1), seed=2)
            await self._check_writes(BindingQuery.by_remote_id(_REMOTE_2), seed=3)

        return self._contract_run(test)

    async def _check_writes(self, query: BindingQuery, seed: int) -> None:
        store, _, bindings = await self._open()
        chooser = random.Random(seed)
        current = {binding.key: binding for binding in bindings}
        states: dict[BindingKey, list[Binding]] = {key: [b] for key, b in current.items()}
        touched: set[BindingKey] = set()
        initial = dict(current)
        found: list[Binding] = []
        resume: BindingKey | None = None
        next_client = 1000
        while True:
            page = await store.fetch(query, resume, 2)
            _check_page(page.bindings, resume, 2)
            found.extend(page.bindings)
            if page.resume_after is None:
                break
            resume = page.resume_after
            # One removal, one update and one insertion, anywhere relative to the cursor.
            keys = sorted(current)
            removed = chooser.choice(keys)
            del current[removed]
            touched.add(removed)
            updated_key = chooser.choice(sorted(current))
            old = current[updated_key]
            link = next(link for link in _LINKS if link.link_id == old.link_id)
            updated = make_binding(
                old.client_id,
                old.link_id,
                cltt=old.cltt + 1,
                addresses=old.addresses,
                prefixes=old.prefixes,
                relay_data=_contract_relay(chooser.randrange(5), link),
            )
            current[updated_key] = updated
            link = chooser.choice(_LINKS)
            added = make_binding(
                next_client,
                link.link_id,
                cltt=int(self.contract_now) - 10,
                addresses=(link.prefixes[0].network_address + next_client,),
                relay_data=_contract_relay(chooser.randrange(1, 5), link),
            )
            next_client += 1
            current[added.key] = added
            for binding in (updated, added):
                touched.add(binding.key)
                states.setdefault(binding.key, []).append(binding)
            try:
                mutated = self.mutate_store(store, [updated, added], [removed])
            except NotImplementedError:
                from twisted.trial.unittest import SkipTest  # noqa: PLC0415

                raise SkipTest(f"{type(self).__name__} has no mutate_store") from None
            if isinstance(mutated, Deferred):
                await mutated
        keys = [b.key for b in found]
        self.assertEqual(len(keys), len(set(keys)), "a binding was returned twice")
        now = self.contract_now
        for binding in found:
            allowed = [self.comparable(state) for state in states[binding.key]]
            self.assertIn(self.comparable(binding), allowed)
            self.assertTrue(query.matches(binding), binding)
        for key, binding in initial.items():
            if key in touched or not (query.matches(binding) and binding.is_active(now)):
                continue
            self.assertEqual(keys.count(key), 1, f"unchanged binding {key!r} not returned once")
        self.assertGreater(len(touched), 0)
