"""Tests for L{bulklq.stores.memory}."""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv6Address

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from bulklq.model import Binding, BindingKey, BindingQuery, Link
from bulklq.stores import memory
from bulklq.stores.memory import MemoryBindingStore, _SortedKeys
from bulklq.testing import (
    DEFAULT_CLTT,
    BindingStoreContractMixin,
    make_binding,
    make_duid,
    make_link,
)


class MemoryStoreContractTests(BindingStoreContractMixin, TestCase):
    """L{MemoryBindingStore} passes the store contract."""

    def make_store(self, links: Sequence[Link], bindings: Sequence[Binding]) -> MemoryBindingStore:
        store = MemoryBindingStore(links, self.clock)
        store.put_many(bindings)
        return store

    def mutate_store(
        self, store: MemoryBindingStore, put: Sequence[Binding], remove: Sequence[BindingKey]
    ) -> None:
        for key in remove:
            store.remove(key)
        for binding in put:
            store.put(binding)


class BigIndexContractTests(MemoryStoreContractTests):
    """
    The contract holds when every index entry is a chunked L{_SortedKeys} with tiny chunks
    (so pages cross chunk boundaries).
    """

    def setUp(self) -> None:
        self.patch(memory, "_LOAD", 2)
        self.patch(memory, "_SMALL", 0)


class MemoryStoreTests(SynchronousTestCase):
    """The write API and behaviour specific to L{MemoryBindingStore}."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(DEFAULT_CLTT)
        self.store = MemoryBindingStore([make_link("link-1")], self.clock)

    def fetch_all(self, query: BindingQuery, limit: int = 100) -> list[Binding]:
        """Every binding the store answers to C{query}."""
        found: list[Binding] = []
        after: BindingKey | None = None
        while True:
            page = self.successResultOf(self.store.fetch(query, after, limit))
            found.extend(page.bindings)
            if page.resume_after is None:
                return found
            after = page.resume_after

    def test_put_replaces_and_reindexes(self) -> None:
        """
        C{put} of a binding with an existing key replaces it: the old relay-id and address
        no longer find it, the new ones do.
        """
        old = make_binding(1, relay_id=make_duid(900), addresses=["2001:db8:1::1"])
        new = make_binding(1, relay_id=make_duid(901), addresses=["2001:db8:1::2"])
        self.store.put(old)
        self.store.put(new)
        self.assertEqual(len(self.store), 1)
        self.assertEqual(self.store.get(new.key), new)
        self.assertEqual(self.fetch_all(BindingQuery.by_relay_id(make_duid(900))), [])
        self.assertEqual(self.fetch_all(BindingQuery.by_relay_id(make_duid(901))), [new])
        self.assertEqual(self.fetch_all(BindingQuery.by_address(IPv6Address("2001:db8:1::1"))), [])
        self.assertEqual(
            self.fetch_all(BindingQuery.by_address(IPv6Address("2001:db8:1::2"))), [new]
        )

    def test_remove(self) -> None:
        """C{remove} deletes from every index and says whether the key was there."""
        binding = make_binding(1, relay_id=make_duid(900), prefixes=["2001:db8:77::/48"])
        self.store.put(binding)
        self.assertTrue(self.store.remove(binding.key))
        self.assertFalse(self.store.remove(binding.key))
        self.assertIsNone(self.store.get(binding.key))
        self.assertEqual(len(self.store), 0)
        self.assertEqual(self.fetch_all(BindingQuery.by_link("link-1")), [])
        self.assertEqual(self.fetch_all(BindingQuery.by_address(IPv6Address("2001:db8:77::1"))), [])
        self.assertEqual(self.fetch_all(BindingQuery.by_client_id(make_duid(1))), [])

    def test_bindings_in_key_order(self) -> None:
        """C{bindings()} yields everything held, expired bindings included, in key order."""
        bindings = [make_binding(n, f"link-{n % 3}", cltt=0) for n in (5, 3, 9, 1)]
        self.store.put_many(bindings)
        self.assertEqual(list(self.store.bindings()), sorted(bindings, key=lambda b: b.key))

    def test_unknown_link_still_served(self) -> None:
        """A binding on a link the store does not know is served; get_link answers None."""
        binding = make_binding(1, "elsewhere")
        self.store.put(binding)
        self.assertEqual(self.fetch_all(BindingQuery.by_link("elsewhere")), [binding])
        self.assertIsNone(self.successResultOf(self.store.get_link("elsewhere")))

    def test_links(self) -> None:
        """
        C{find_link} picks the longest matching prefix; C{remove_link} forgets a link;
        C{add_link} replaces one with the same id.
        """
        wide = make_link("wide", ["2001:db8::/32"])
        narrow = make_link("narrow", ["2001:db8:5::/48"])
        self.store.add_link(wide)
        self.store.add_link(narrow)
        find = self.store.find_link
        self.assertEqual(self.successResultOf(find(IPv6Address("2001:db8:5::1"))), narrow)
        self.assertEqual(self.successResultOf(find(IPv6Address("2001:db8:6::1"))), wide)
        self.store.remove_link("narrow")
        self.assertEqual(self.successResultOf(find(IPv6Address("2001:db8:5::1"))), wide)
        self.store.add_link(make_link("wide", ["2001:db9::/32"]))
        self.assertIsNone(self.successResultOf(find(IPv6Address("2001:db8:6::1"))))
        self.store.remove_link("no-such-link")
        self.assertEqual([link.link_id for link in self.store.links()], ["link-1", "wide"])

    def test_limit_below_one(self) -> None:
        """A limit below 1 fails the Deferred with ValueError."""
        failure = self.failureResultOf(
            self.store.fetch(BindingQuery.by_link("link-1"), None, 0), ValueError
        )
        self.assertIn("at least 1", str(failure.value))

    def test_expired_skipping_is_bounded(self) -> None:
        """
        A run of expired bindings longer than the scan budget gives a page with fewer
        bindings than the limit and a resume key; continuing reaches the active ones.
        """
        self.store.put_many(make_binding(n, cltt=0) for n in range(1, 5001))
        live = make_binding(6000)
        self.store.put(live)
        query = BindingQuery.by_link("link-1")
        first = self.successResultOf(self.store.fetch(query, None, 10))
        self.assertEqual(first.bindings, [])
        self.assertIsNotNone(first.resume_after)
        self.assertEqual(self.fetch_all(query, limit=10), [live])

    def test_last_page_has_no_resume_key(self) -> None:
        """
        A page that ends exactly at the last match says so (C{resume_after} C{None}) rather
        than sending the server back for an empty page.
        """
        bindings = [make_binding(n) for n in range(1, 5)]
        self.store.put_many(bindings)
        page = self.successResultOf(self.store.fetch(BindingQuery.by_link("link-1"), None, 4))
        self.assertEqual(list(page.bindings), bindings)
        self.assertIsNone(page.resume_after)
        page = self.successResultOf(self.store.fetch(BindingQuery.by_link("link-1"), None, 3))
        self.assertEqual(page.resume_after, bindings[2].key)

    def test_default_clock_is_global_reactor(self) -> None:
        """Without a clock the store takes now from the global reactor."""
        store = MemoryBindingStore()
        store.put(make_binding(1, cltt=0, valid_lifetime=1))
        page = self.successResultOf(store.fetch(BindingQuery.by_link("link-1"), None, 5))
        self.assertEqual(page.bindings, [])


class SortedKeysTests(SynchronousTestCase):
    """L{_SortedKeys}, the chunked sorted set behind the large indexes."""

    def test_matches_sorted_set(self) -> None:
        """Random adds and discards leave exactly the sorted set, across chunk splits."""
        import random

        self.patch(memory, "_LOAD", 4)
        chooser = random.Random(7)
        keys = _SortedKeys()
        model: set[BindingKey] = set()
        for _ in range(3000):
            key = (f"l{chooser.randrange(3)}", bytes([chooser.randrange(40)]))
            if chooser.random() < 0.6:
                keys.add(key)
                model.add(key)
            else:
                keys.discard(key)
                model.discard(key)
            self.assertEqual(len(keys), len(model))
        self.assertEqual(list(keys), sorted(model))
        for lower in [None, *sorted(model)[::7], ("l1", b"\xff"), ("", b"")]:
            expected = [k for k in sorted(model) if lower is None or k > lower]
            self.assertEqual(list(keys.after(lower)), expected)
