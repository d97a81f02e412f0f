"""
The interface between the Bulk Leasequery server and whatever holds the bindings.

Stores in L{bulklq.stores} implement it; so can an application that embeds bulklq and keeps
bindings its own way. L{bulklq.testing.BindingStoreContractMixin} checks an implementation
against this contract.
"""

from __future__ import annotations

from ipaddress import IPv6Address

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

from .model import BindingKey, BindingPage, BindingQuery, Link

__all__ = ["IBindingStore"]


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
