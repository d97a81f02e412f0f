"""
The binding model shared by the server, the requestor and every store.

A L{Binding} is one client (DUID) on one link: its addresses and delegated prefixes with the
lifetimes granted at its last transaction, that transaction's time, the most recent relay
chain, and the Relay-IDs and Remote-IDs it was relayed with. A L{BindingQuery} says which
bindings a Bulk Leasequery wants; a L{BindingPage} is one slice of a store's answer.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from ipaddress import IPv6Address, IPv6Network

import attrs

from .wire import (
    Duid,
    LQRelayData,
    Option,
    RelayId,
    RemoteId,
)

__all__ = [
    "AddressLease",
    "Binding",
    "BindingKey",
    "BindingPage",
    "BindingQuery",
    "Link",
    "PrefixLease",
    "QueryKind",
    "relay_identities",
]

#: The identity and sort key of a binding: (link id, client DUID octets).
BindingKey = tuple[str, bytes]


@attrs.frozen
class Link:
    """
    A link the server serves (Kea: a subnet).

    @ivar link_id: stable identity, unique in a store (C{"subnet-8"}, or a prefix's text).
    @ivar prefixes: the link's prefixes; an address in any of them is on this link.
    """

    link_id: str
    prefixes: tuple[IPv6Network, ...]

    def contains(self, address: IPv6Address) -> bool:
        """Whether C{address} lies in one of this link's prefixes."""
        return any(address in prefix for prefix in self.prefixes)

    @property
    def address(self) -> IPv6Address:
        """A representative link-address (the first prefix's), as LQ_CLIENT_LINK carries."""
        return self.prefixes[0].network_address if self.prefixes else IPv6Address(0)


@attrs.frozen
class AddressLease:
    """An address (IA_NA or IA_TA) with the lifetimes granted at the last transaction."""

    address: IPv6Address
    preferred_lifetime: int
    valid_lifetime: int


@attrs.frozen
class PrefixLease:
    """A delegated prefix (IA_PD) with the lifetimes granted at the last transaction."""

    prefix: IPv6Network
    preferred_lifetime: int
    valid_lifetime: int


def relay_identities(
    relay_data: LQRelayData | None,
) -> tuple[tuple[Duid, ...], tuple[RemoteId, ...]]:
    """
    The Relay-IDs and Remote-IDs found in every hop of a relay chain, outermost first.

    Kea matches bulk queries against every hop, not only the outermost; bulklq does the same.
    """
    if relay_data is None:
        return (), ()
    relay_ids: list[Duid] = []
    remote_ids: list[RemoteId] = []
    for layer in relay_data.relay_message.layers():
        for option in layer.options:
            if isinstance(option, RelayId):
                relay_ids.append(option.duid)
            elif isinstance(option, RemoteId):
                remote_ids.append(option)
    return tuple(relay_ids), tuple(remote_ids)


@attrs.frozen
class Binding:
    """
    One client on one link, as a store holds it.

    Lifetimes are those granted at C{cltt}; the server sends the remaining ones (RFC 5460
    section 6.1, S40). C{relay_ids}/C{remote_ids} default to those found in C{relay_data}
    (every hop) when not given.

    @ivar client_id: the client's DUID.
    @ivar link_id: the L{Link} the binding is on.
    @ivar cltt: client last transaction time, Unix seconds.
    @ivar relay_data: the most recent complete relay chain, innermost RELAY_MSG removed.
    @ivar options: other stored client options that a query's ORO may ask for (S42).
    """

    client_id: Duid
    link_id: str
    cltt: int
    addresses: tuple[AddressLease, ...] = ()
    prefixes: tuple[PrefixLease, ...] = ()
    relay_data: LQRelayData | None = None
    relay_ids: tuple[Duid, ...] = attrs.field()
    remote_ids: tuple[RemoteId, ...] = attrs.field()
    options: tuple[Option, ...] = ()

    @relay_ids.default
    def _relay_ids_from_chain(self) -> tuple[Duid, ...]:
        return relay_identities(self.relay_data)[0]

    @remote_ids.default
    def _remote_ids_from_chain(self) -> tuple[RemoteId, ...]:
        return relay_identities(self.relay_data)[1]

    @property
    def key(self) -> BindingKey:
        """The binding's identity and position in every query's order."""
        return (self.link_id, self.client_id.raw)

    def expires_at(self) -> int:
        """Unix time at which the last of its leases' valid lifetime ends."""
        lifetimes = [lease.valid_lifetime for lease in self.addresses] + [
            lease.valid_lifetime for lease in self.prefixes
        ]
        return self.cltt + max(lifetimes, default=0)

    def is_active(self, now: float) -> bool:
        """Whether any lease still has valid lifetime left at Unix time C{now}."""
        return self.expires_at() > now

    def contains(self, address: IPv6Address) -> bool:
        """Whether C{address} is one of its addresses or lies in one of its prefixes."""
        return any(lease.address == address for lease in self.addresses) or any(
            address in lease.prefix for lease in self.prefixes
        )


class QueryKind(enum.Enum):
    """What a L{BindingQuery} selects on; values are RFC 5007/5460 query-types."""

    ADDRESS = 1
    CLIENT_ID = 2
    RELAY_ID = 3
    LINK = 4
    REMOTE_ID = 5


@attrs.frozen
class BindingQuery:
    """
    Which bindings to return, with the link already resolved to a L{Link} id.

    Build one with the class methods; C{link_id} restricts the result to one link (always
    set for L{QueryKind.LINK}; optional for the other kinds).
    """

    kind: QueryKind
    link_id: str | None = None
    address: IPv6Address | None = None
    client_id: Duid | None = None
    relay_id: Duid | None = None
    remote_id: RemoteId | None = None

    @classmethod
    def by_address(cls, address: IPv6Address, link_id: str | None = None) -> BindingQuery:
        """The binding holding C{address} or a delegated prefix containing it."""
        return cls(QueryKind.ADDRESS, link_id, address=address)

    @classmethod
    def by_client_id(cls, client_id: Duid, link_id: str | None = None) -> BindingQuery:
        """The client's bindings: one per link, or only on C{link_id}."""
        return cls(QueryKind.CLIENT_ID, link_id, client_id=client_id)

    @classmethod
    def by_relay_id(cls, relay_id: Duid, link_id: str | None = None) -> BindingQuery:
        """Bindings relayed by C{relay_id} (any hop of the stored chain)."""
        return cls(QueryKind.RELAY_ID, link_id, relay_id=relay_id)

    @classmethod
    def by_link(cls, link_id: str) -> BindingQuery:
        """Every binding on the link."""
        return cls(QueryKind.LINK, link_id)

    @classmethod
    def by_remote_id(cls, remote_id: RemoteId, link_id: str | None = None) -> BindingQuery:
        """Bindings relayed with C{remote_id} (whole option value, any hop)."""
        return cls(QueryKind.REMOTE_ID, link_id, remote_id=remote_id)

    def matches(self, binding: Binding) -> bool:
        """
        Whether C{binding} answers this query; the reference semantics every store follows.
        """
        if self.link_id is not None and binding.link_id != self.link_id:
            return False
        if self.kind is QueryKind.ADDRESS:
            return self.address is not None and binding.contains(self.address)
        if self.kind is QueryKind.CLIENT_ID:
            return binding.client_id == self.client_id
        if self.kind is QueryKind.RELAY_ID:
            return self.relay_id in binding.relay_ids
        if self.kind is QueryKind.REMOTE_ID:
            return self.remote_id in binding.remote_ids
        return self.kind is QueryKind.LINK


@attrs.frozen
class BindingPage:
    """
    One page of a store's answer, in key order.

    @ivar bindings: at most the number asked for, keys strictly increasing, all after the
        resume key that was given.
    @ivar resume_after: the key to pass to get the next page, or C{None} when the answer is
        complete.
    """

    bindings: Sequence[Binding]
    resume_after: BindingKey | None

    @classmethod
    def of(cls, bindings: Iterable[Binding], limit: int, more: bool) -> BindingPage:
        """A page of C{bindings}; C{more} says whether the store has more after them."""
        page = list(bindings)[:limit]
        return cls(page, page[-1].key if more and page else None)
