"""
The interface between the Bulk Leasequery server and whatever holds the bindings.

Stores in L{bulklq.stores} implement it; so can an application that embeds bulklq and keeps
bindings its own way. L{bulklq.testing.BindingStoreContractMixin} checks an implementation
against this contract.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from ipaddress import IPv6Address
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

from .model import BindingKey, BindingPage, BindingQuery, Link

if TYPE_CHECKING:
    from .changes import BindingChange

__all__ = ["IBindingChangeFeed", "IBindingStore"]


class IBindingStore(Interface):
    """
    A source of DHCPv6 bindings that the server pulls from at its own pace.

    B{Paging.} L{fetch} answers with one L{BindingPage} at a time, in ascending
    L{Binding.key<bulklq.model.Binding.key>} order (link id, then client DUID octets). The
    server passes the previous page's C{resume_after} to get the next; a page of fewer
    bindings than the limit is allowed and does not mean the end: only
    C{resume_after is None} does. This is keyset pagination, as Kea pages its lease tables:
    the store keeps no cursor between calls, so a requestor that goes away costs nothing
    beyond cancelling the outstanding Deferred.

    B{Consistency while bindings change.} Because every page starts strictly after the last
    key returned, a query never returns the same binding twice, and every binding that
    exists, unchanged, for the whole query is returned exactly once. A binding added,
    changed or removed during the query may or may not appear (once at most), and if it
    appears it is in one of its states during the query.

    B{What a page holds.} Only bindings for which C{query.matches(binding)} holds and that are
    active (C{binding.is_active(now)} for the store's notion of now; the server re-checks
    lifetimes at send time). A query never changes a binding (S51).

    B{Deferreds.} Every method returns a Deferred; cancelling it must be harmless (the server
    cancels on disconnect and on timeout). A failed Deferred makes the server end the query
    with an error status.

    B{Change feeds.} Active Leasequery (RFC 7653) needs stores to publish changes with
    timestamps; that is a separate, optional interface, so stores that cannot do it still
    serve Bulk Leasequery.
    """

    name = Attribute("A short text naming the store, for logs and metrics.")

    def fetch(
        query: BindingQuery, resume_after: BindingKey | None, limit: int
    ) -> Deferred[BindingPage]:
        """
        The next page of bindings matching C{query}, all with keys above C{resume_after}
        (from the first when C{None}), at most C{limit} (at least 1) of them.
        """

    def find_link(address: IPv6Address) -> Deferred[Link | None]:
        """
        The configured link whose prefixes contain C{address}, or C{None} (NotConfigured,
        S9, S48). A store that knows no prefixes for its links may also match an address
        equal to a link's relay link-address.
        """

    def get_link(link_id: str) -> Deferred[Link | None]:
        """The link with id C{link_id}, or C{None}."""

    def close() -> Deferred[None]:
        """Release resources (threads, connections, file watchers). Idempotent."""


class IBindingChangeFeed(Interface):
    """
    A store that publishes its binding changes, with timestamps, for Active Leasequery
    (RFC 7653). Optional: a store that provides only L{IBindingStore} serves Bulk
    Leasequery, and an ACTIVELEASEQUERY then gets NotSupported.

    A change (L{bulklq.changes.BindingChange}) carries the binding's state after the change
    (or, for a removal, the state it had), whether it was removed, the Unix time of the
    change in the server's clock, and a serial number that grows with every change.
    L{bulklq.changes.ChangeHistory} implements this interface for any store that can call
    it from its write path.
    """

    def subscribe(callback: Callable[[BindingChange], None]) -> Callable[[], None]:
        """
        Call C{callback} with every change from now on, in the order they happen, until the
        returned function (unsubscribe; idempotent) is called. The callback must not raise.
        """

    def changes_since(time: float) -> Deferred[Sequence[BindingChange] | None]:
        """
        Every change at Unix time C{time} or later that is still in the history (the latest
        per binding is enough), oldest first; or C{None} when the history does not reach
        back to C{time} (DataMissing).
        """

    def keep_history() -> None:
        """
        Start keeping history for L{changes_since} (idempotent). The server calls it when
        Active Leasequery is enabled; before, a store may keep nothing (RFC 7653 section 9.3).
        """
