"""
Cheap materialisation of stored bindings (private to the stores).

A store that streams hundreds of thousands of bindings per second spends its time building
L{Binding<bulklq.model.Binding>} objects, and, when a whole page of them is built at once,
in the garbage collector: every binding is about ten tracked objects, a page of a thousand
outlives several young-generation collections, is promoted, and makes the full collections
that walk the whole heap come often. Two tools address this:

  - L{LazyBindings}: a page whose bindings are built from the stored rows only when the
    consumer reaches them, one at a time. The server encodes each binding and drops it, so a
    binding dies young (freed by its reference count, never seen by a collection) and the
    page costs the collector only its rows (tuples of strings, bytes and numbers).
  - L{ipv6_address} and L{ipv6_network}: C{IPv6Address}/C{IPv6Network} from a number
    without the constructors' type dispatch and checks, for values the store wrote itself.
    Each is checked against the public constructor when this module is imported and falls
    back to it if this Python's C{ipaddress} differs.

The SQLite store uses both; the other stores (Kea CSV, PostgreSQL, memory) can too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from ipaddress import IPv6Address, IPv6Network
from typing import Any, ClassVar, overload

from ..model import Binding

__all__ = ["LazyBindings", "ipv6_address", "ipv6_network"]

_new = object.__new__


def _fast_ipv6_address(number: int) -> IPv6Address:
    address = _new(IPv6Address)
    address._ip = number  # type: ignore[attr-defined]
    address._scope_id = None  # type: ignore[attr-defined]
    return address


def _netmasks() -> list[IPv6Address]:
    return [IPv6Network((0, length)).netmask for length in range(129)]


_NETMASKS = _netmasks()


def _fast_ipv6_network(number: int, prefixlen: int) -> IPv6Network:
    if prefixlen >= 127:  # the constructor adds a C{hosts} override for these
        return IPv6Network((number, prefixlen))
    network = _new(IPv6Network)
    network.network_address = _fast_ipv6_address(number)
    network.netmask = _NETMASKS[prefixlen]
    network._prefixlen = prefixlen  # type: ignore[attr-defined]
    return network


def _same_address(built: IPv6Address, reference: IPv6Address) -> bool:
    return (
        type(built) is IPv6Address
        and built == reference
        and hash(built) == hash(reference)
        and str(built) == str(reference)
        and built.packed == reference.packed
        and built.scope_id == reference.scope_id
    )


def _same_network(built: IPv6Network, reference: IPv6Network) -> bool:
    try:
        state = vars(built) == vars(reference)
    except TypeError:  # pragma: no cover - another Python's ipaddress (slots)
        return False
    return (
        state
        and type(built) is IPv6Network
        and built == reference
        and hash(built) == hash(reference)
        and str(built) == str(reference)
        and built.prefixlen == reference.prefixlen
        and built.broadcast_address == reference.broadcast_address
        and list(built.subnets(prefixlen_diff=1)) == list(reference.subnets(prefixlen_diff=1))
    )


def _checked() -> tuple[Callable[[int], IPv6Address], Callable[[int, int], IPv6Network]]:
    """The fast builders if they agree with the constructors here, else the constructors."""
    address: Callable[[int], IPv6Address] = _fast_ipv6_address
    network: Callable[[int, int], IPv6Network] = _fast_ipv6_network
    try:
        for number in (0, 1, 0x20010DB8 << 96, (1 << 128) - 1):
            if not _same_address(_fast_ipv6_address(number), IPv6Address(number)):
                address = IPv6Address  # pragma: no cover - another Python's ipaddress
        for number, length in ((0, 0), (0x20010DB8 << 96, 32), (0x20010DB8_00010000 << 64, 64)):
            if not _same_network(_fast_ipv6_network(number, length), IPv6Network((number, length))):
                network = _constructor_network  # pragma: no cover - another Python
    except (AttributeError, TypeError):  # pragma: no cover - another Python's ipaddress
        return IPv6Address, _constructor_network
    if address is IPv6Address:  # pragma: no cover - the network builder uses it
        network = _constructor_network
    return address, network


def _constructor_network(number: int, prefixlen: int) -> IPv6Network:
    return IPv6Network((number, prefixlen))


#: C{ipv6_address(number)}: the C{IPv6Address} of a number in 0..2**128-1 (not checked).
#: C{ipv6_network(number, prefixlen)}: the C{IPv6Network} of a network address number with
#: no host bits set and a prefix length 0..128 (neither checked).
ipv6_address, ipv6_network = _checked()


class LazyBindings(Sequence[Binding]):
    """
    The bindings of one page, built from stored rows when they are reached: iterating builds
    one binding per step, indexing builds the one asked for (each time: equal values, not
    the same objects). Equal to a list, a tuple or another C{LazyBindings} holding equal
    bindings in the same order.

    A page whose rows may turn out not to be bindings (a row found malformed, or not
    matching the query, only when its binding is built) is made with C{filtered=True}:
    iterating then builds each binding when reached and leaves such rows out, and
    C{len}, indexing and C{reversed} build the whole page once and keep it.

    @param rows: the page's rows, in key order.
    @param iterate: builds the bindings of some rows, lazily, in order (a generator
        function); it must accept any iterable of rows. Unless C{filtered}, it builds
        exactly one binding per row.
    @param filtered: whether C{iterate} may leave rows out.
    """

    __slots__ = ("_built", "_iterate", "_rows")
    __hash__: ClassVar[None] = None  # type: ignore[assignment]

    def __init__(
        self,
        rows: Sequence[Any],
        iterate: Callable[[Iterable[Any]], Iterator[Binding]],
        filtered: bool = False,
    ) -> None:
        self._rows = rows
        self._iterate = iterate
        # The page built (filtered pages, once something needs more than one pass).
        self._built: list[Binding] | None = None if filtered else _EXACT

    def _all(self) -> list[Binding]:
        built = self._built
        if built is None:
            built = self._built = list(self._iterate(self._rows))
        return built

    def __len__(self) -> int:
        """How many bindings the page holds."""
        if self._built is _EXACT:
            return len(self._rows)
        return len(self._all())

    def __iter__(self) -> Iterator[Binding]:
        """The bindings in order, each built when reached."""
        built = self._built
        if built is None or built is _EXACT:
            return self._iterate(self._rows)
        return iter(built)

    def __reversed__(self) -> Iterator[Binding]:
        """The bindings in reverse order, each built when reached."""
        if self._built is _EXACT:
            return self._iterate(reversed(self._rows))
        return reversed(self._all())

    @overload
    def __getitem__(self, index: int) -> Binding: ...

    @overload
    def __getitem__(self, index: slice) -> list[Binding]: ...

    def __getitem__(self, index: int | slice) -> Binding | list[Binding]:
        """One binding, or a list of those in a slice."""
        if self._built is not _EXACT:
            return self._all()[index]
        if isinstance(index, slice):
            return list(self._iterate(self._rows[index]))
        return next(self._iterate((self._rows[index],)))

    def __eq__(self, other: object) -> bool:
        """Whether C{other} (a list, tuple or C{LazyBindings}) holds equal bindings in order."""
        if not isinstance(other, list | tuple | LazyBindings):
            return NotImplemented
        return len(self) == len(other) and all(
            mine == theirs for mine, theirs in zip(self, other, strict=True)
        )

    def __repr__(self) -> str:
        """The bindings, built."""
        return f"LazyBindings({list(self)!r})"


#: The C{_built} of a page whose rows are exactly its bindings (never built as a whole).
_EXACT: list[Binding] = []
