"""Tests for L{bulklq.stores._materialise}."""

from __future__ import annotations

from ipaddress import IPv6Address, IPv6Network

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from bulklq.stores import _materialise
from bulklq.stores._materialise import LazyBindings, ipv6_address, ipv6_network
from bulklq.testing import make_binding

_numbers = st.integers(min_value=0, max_value=(1 << 128) - 1)


class BuilderTests(SynchronousTestCase):
    """The fast builders make exactly what the constructors make."""

    def test_fast_builders_in_use(self) -> None:
        """On this Python the fast builders passed their import-time check."""
        self.assertIs(ipv6_address, _materialise._fast_ipv6_address)
        self.assertIs(ipv6_network, _materialise._fast_ipv6_network)

    @given(_numbers)
    def test_address(self, number: int) -> None:
        """An address equals, hashes, prints and packs as the constructor's."""
        built, reference = ipv6_address(number), IPv6Address(number)
        self.assertIs(type(built), IPv6Address)
        self.assertEqual(built, reference)
        self.assertEqual(hash(built), hash(reference))
        self.assertEqual(str(built), str(reference))
        self.assertEqual(built.packed, reference.packed)
        self.assertIsNone(built.scope_id)
        self.assertEqual(built.is_link_local, reference.is_link_local)

    @given(_numbers, st.integers(min_value=0, max_value=128))
    def test_network(self, number: int, length: int) -> None:
        """
        A network (prefix lengths 127 and 128 included) equals, hashes and prints as the
        constructor's, with the same state, so its properties and methods agree.
        """
        number &= ((1 << 128) - 1) ^ ((1 << (128 - length)) - 1)
        built, reference = ipv6_network(number, length), IPv6Network((number, length))
        self.assertIs(type(built), IPv6Network)
        self.assertEqual(built, reference)
        self.assertEqual(hash(built), hash(reference))
        self.assertEqual(str(built), str(reference))
        self.assertEqual(set(vars(built)), set(vars(reference)))
        self.assertEqual(built.broadcast_address, reference.broadcast_address)
        self.assertEqual(built.num_addresses, reference.num_addresses)
        self.assertEqual(IPv6Address(number) in built, True)
        if length >= 120:
            self.assertEqual(list(built.hosts()), list(reference.hosts()))


class LazyBindingsTests(SynchronousTestCase):
    """L{LazyBindings} builds each binding when it is reached."""

    def setUp(self) -> None:
        self.expected = [make_binding(n) for n in range(1, 4)]
        self.built: list[int] = []

        def iterate(rows):  # type: ignore[no-untyped-def]
            for row in rows:
                self.built.append(row)
                yield self.expected[row]

        self.bindings = LazyBindings([0, 1, 2], iterate)

    def test_built_when_reached(self) -> None:
        """Nothing is built until reached; iterating builds one binding per step."""
        self.assertEqual(len(self.bindings), 3)
        self.assertEqual(self.built, [])
        iterator = iter(self.bindings)
        self.assertEqual(next(iterator), self.expected[0])
        self.assertEqual(self.built, [0])
        self.assertEqual(self.bindings[-1], self.expected[2])
        self.assertEqual(self.built, [0, 2])

    def test_equality(self) -> None:
        """Equal to lists and tuples of equal bindings in order, to nothing else."""
        self.assertEqual(self.bindings, self.expected)
        self.assertEqual(self.bindings, tuple(self.expected))
        self.assertNotEqual(self.bindings, self.expected[::-1])
        self.assertNotEqual(self.bindings, set(self.expected))
        self.assertFalse(self.bindings == object())


class FilteredLazyBindingsTests(SynchronousTestCase):
    """A C{filtered} L{LazyBindings} may leave rows out, and still counts exactly."""

    def setUp(self) -> None:
        self.expected = [make_binding(n) for n in range(1, 5)]
        self.built: list[int] = []

        def iterate(rows):  # type: ignore[no-untyped-def]
            for row in rows:
                self.built.append(row)
                if row % 2 == 0:  # even rows are kept, odd ones left out
                    yield self.expected[row]

        self.bindings = LazyBindings([0, 1, 2, 3], iterate, filtered=True)

    def test_iteration_builds_when_reached(self) -> None:
        """Iterating builds each binding when reached and leaves rows out."""
        iterator = iter(self.bindings)
        self.assertEqual(next(iterator), self.expected[0])
        self.assertEqual(self.built, [0])
        self.assertEqual(list(iterator), [self.expected[2]])
        self.assertEqual(self.built, [0, 1, 2, 3])

    def test_length_and_indexing_build_once(self) -> None:
        """C{len}, indexing and C{reversed} build the page once and count what is kept."""
        self.assertEqual(len(self.bindings), 2)
        self.assertEqual(self.bindings[-1], self.expected[2])
        self.assertEqual(self.bindings[0:1], [self.expected[0]])
        self.assertEqual(list(reversed(self.bindings)), [self.expected[2], self.expected[0]])
        self.assertEqual(list(self.bindings), [self.expected[0], self.expected[2]])
        self.assertEqual(self.built, [0, 1, 2, 3])
        self.assertEqual(self.bindings, [self.expected[0], self.expected[2]])

    def test_unfiltered_default(self) -> None:
        """Without C{filtered}, the length is the rows' (the SQLite store's pages)."""
        self.assertEqual(len(LazyBindings([0, 1, 2], lambda rows: iter(()))), 3)
