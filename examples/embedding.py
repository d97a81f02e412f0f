"""
An existing Twisted application that also serves Bulk Leasequery from its own bindings.

The application keeps its DHCPv6 bindings in a dict of its own (here: filled at start; in a
real application, by its DHCP logic). ``AppBindingStore`` adapts that dict to
``bulklq.interfaces.IBindingStore``, and a ``BulkLeasequeryService`` joins the application's
service tree. Run it with::

    twistd -n -y examples/embedding.py

and query it with ``bulklq query`` on port 15547 (see docs/embedding.md).
"""

from __future__ import annotations

from ipaddress import IPv6Address, IPv6Network

from twisted.application.service import Application, MultiService
from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from bulklq.config import ServerConfig, parse_access_rule
from bulklq.interfaces import IBindingStore
from bulklq.model import AddressLease, Binding, BindingKey, BindingPage, BindingQuery, Link
from bulklq.service import BulkLeasequeryService
from bulklq.wire import Duid

LINK = Link("lan", (IPv6Network("2001:db8:5::/64"),))


@implementer(IBindingStore)
class AppBindingStore:
    """The application's own bindings, keyed by (link id, client DUID octets)."""

    name = "embedded-app"

    def __init__(self, clock: object) -> None:
        self.clock = clock
        self.bindings: dict[BindingKey, Binding] = {}

    def fetch(
        self, query: BindingQuery, resume_after: BindingKey | None, limit: int
    ) -> Deferred[BindingPage]:
        """Matching active bindings in key order, after ``resume_after``, ``limit`` at most."""
        now = self.clock.seconds()  # type: ignore[attr-defined]
        keys = sorted(key for key in self.bindings if resume_after is None or key > resume_after)
        matching = [
            self.bindings[key]
            for key in keys
            if query.matches(self.bindings[key]) and self.bindings[key].is_active(now)
        ]
        return succeed(BindingPage.of(matching, limit, more=len(matching) > limit))

    def find_link(self, address: IPv6Address) -> Deferred[Link | None]:
        """The one link, if it holds ``address``."""
        return succeed(LINK if LINK.contains(address) else None)

    def get_link(self, link_id: str) -> Deferred[Link | None]:
        """The one link by id."""
        return succeed(LINK if link_id == LINK.link_id else None)

    def close(self) -> Deferred[None]:
        """Nothing to release."""
        return succeed(None)


def make_service(reactor: object, listen: str = "tcp6:15547:interface=\\:\\:1") -> MultiService:
    """The application's services, Bulk Leasequery among them."""
    store = AppBindingStore(reactor)
    now = int(reactor.seconds())  # type: ignore[attr-defined]
    for n in range(1, 4):
        client = Duid.ll(1, bytes([2, 0, 0, 0, 5, n]))
        store.bindings[(LINK.link_id, client.raw)] = Binding(
            client, LINK.link_id, now, (AddressLease(IPv6Address(f"2001:db8:5::{n}"), 3600, 7200),)
        )
    app_services = MultiService()  # the application's other services join this tree too
    config = ServerConfig(
        server_duid=Duid.en(32473, b"embedded-app"),
        allow=(parse_access_rule("::1"), parse_access_rule("127.0.0.1")),
    )
    BulkLeasequeryService(store, config, [listen], reactor=reactor).setServiceParent(app_services)
    return app_services


def _application() -> Application:
    from twisted.internet import reactor  # noqa: PLC0415

    application = Application("embedded-bulklq")
    make_service(reactor).setServiceParent(application)
    return application


if __name__ in {"__builtin__", "builtins"}:  # loaded by twistd -y
    application = _application()
