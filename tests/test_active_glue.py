"""
The operator's side of Active Leasequery (RFC 7653): L{BulkLeasequeryService} with
C{active=...} (change feed required, history window, expiry published as a removal, C{ssl:}
listeners with the configured certificate) and the same over real loopback TLS with
requestor certificates generated at test time.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import attrs
from twisted.internet import defer, endpoints
from twisted.internet.address import IPv6Address as TwistedIPv6Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SynchronousTestCase, TestCase

from bulklq.client import mutual_tls_options
from bulklq.config import ServerConfig, parse_access_rule
from bulklq.server import ActiveConfig, tls_options
from bulklq.service import BulkLeasequeryService
from bulklq.stores.memory import MemoryBindingStore
from bulklq.testing import DEFAULT_CLTT, make_binding
from bulklq.wire import (
    ClientData,
    IAAddress,
    LQBaseTime,
    Message,
    MessageType,
    StatusCode,
)

from .test_server import REQUESTOR, SERVER_DUID, ControlledStore, framed, status_of, take
from .test_server_tls import StartTLSRequestor, _issue, _pem


@attrs.frozen
class Certificates:
    """PEM files of a test PKI: a CA, the server, a requestor, and a stranger whose
    certificate another CA signed."""

    directory: Path
    ca: Path
    server_cert: Path
    server_key: Path
    requestor_cert: Path
    requestor_key: Path
    stranger_cert: Path
    stranger_key: Path
    other_ca: Path

    def settings(self) -> list[str]:
        """The C{--tls-*} arguments for these files."""
        return [
            "--tls-cert",
            str(self.server_cert),
            "--tls-key",
            str(self.server_key),
            "--tls-ca",
            str(self.ca),
        ]


def write_certificates(directory: Path) -> Certificates:
    """Generate a CA, a server (C{localhost}) and two requestors into C{directory}."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _issue("bulklq test CA", None, ca=True)
    server_key, server_cert = _issue("localhost", (ca_key, ca_cert.subject))
    requestor_key, requestor_cert = _issue("requestor", (ca_key, ca_cert.subject))
    other_key, other_cert = _issue("other CA", None, ca=True)
    stranger_key, stranger_cert = _issue("stranger", (other_key, other_cert.subject))
    files = {
        "ca": ("ca.pem", ca_cert),
        "server_cert": ("server.pem", server_cert),
        "server_key": ("server.key", server_key),
        "requestor_cert": ("requestor.pem", requestor_cert),
        "requestor_key": ("requestor.key", requestor_key),
        "stranger_cert": ("stranger.pem", stranger_cert),
        "stranger_key": ("stranger.key", stranger_key),
        "other_ca": ("other-ca.pem", other_cert),
    }
    paths = {}
    for field, (name, obj) in files.items():
        path = directory / name
        path.write_bytes(_pem(obj))
        paths[field] = path
    return Certificates(directory, **paths)


def active_query(xid: int = 7) -> Message:
    """An ACTIVELEASEQUERY with the requestor's CLIENTID."""
    return Message(MessageType.ACTIVELEASEQUERY, xid, (REQUESTOR,))


def open_active_query(
    test: SynchronousTestCase, service: BulkLeasequeryService
) -> tuple[Any, StringTransport]:
    """An ACTIVELEASEQUERY from ::1 to C{service}'s factory over a L{StringTransport},
    checked to get a LEASEQUERY-REPLY without a status (success); the server's protocol
    and the transport, emptied."""
    server = service.factory.buildProtocol(TwistedIPv6Address("TCP", "::1", 40000))
    assert server is not None
    transport = StringTransport()
    server.makeConnection(transport)
    server.dataReceived(framed(active_query()))
    (reply,) = take(transport)
    test.assertEqual(reply.msg_type, MessageType.LEASEQUERY_REPLY)
    test.assertIsNone(status_of(reply))
    return server, transport


def lifetimes(message: Message) -> list[tuple[int, int]]:
    """(preferred, valid) of every IAADDR of the CLIENT_DATA in C{message}."""
    data = message.option(ClientData)
    assert data is not None, message
    return [(a.preferred_lifetime, a.valid_lifetime) for a in data.options_of(IAAddress)]


class ServiceTests(SynchronousTestCase):
    """L{BulkLeasequeryService} with Active Leasequery, on a C{MemoryReactorClock}."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.reactor.advance(DEFAULT_CLTT)
        self.store = MemoryBindingStore(clock=self.reactor)
        self.config = ServerConfig(SERVER_DUID, allow=(parse_access_rule("::1"),))

    def service(self, **kwargs: Any) -> BulkLeasequeryService:
        """A service over the memory store; stopped, and no timer left, at cleanup."""
        kwargs.setdefault("active", ActiveConfig(enabled=True, allow_insecure=True))
        service = BulkLeasequeryService(
            self.store, self.config, ["tcp6:5547"], reactor=self.reactor, **kwargs
        )

        def stop() -> None:
            if service.running:
                stopped = service.stopService()
                self.reactor.advance(60)
                self.successResultOf(stopped)
            self.assertEqual(self.reactor.getDelayedCalls(), [])

        self.addCleanup(stop)
        return service

    def test_store_without_feed_refused(self) -> None:
        """RFC 7653 section 9.2: Active Leasequery on a store that publishes no changes is a
        configuration error naming the store, not a server that answers NotSupported."""
        error = self.assertRaises(
            ValueError,
            BulkLeasequeryService,
            ControlledStore(self.store),
            self.config,
            reactor=self.reactor,
            active=ActiveConfig(enabled=True),
        )
        self.assertIn(f"the {ControlledStore(self.store).name} store", str(error))
        # Without Active Leasequery the same store is fine.
        BulkLeasequeryService(ControlledStore(self.store), self.config, reactor=self.reactor)

    def test_history_window(self) -> None:
        """RFC 7653 section 9.3 (the history SHOULD be configurable): history_window sets
        the memory store's window, and history is kept from the start."""
        self.service(history_window=120)
        self.assertEqual(self.store.changes.window, 120)
        self.assertEqual(self.store.changes.complete_from, self.reactor.seconds())

    def test_history_size(self) -> None:
        """RFC 7653 section 9.3 (the history SHOULD be configurable): history_size caps the
        distinct bindings kept; once the oldest is dropped, a catch-up from before it gets
        DataMissing (C{None}) while a catch-up from after it is still answered."""
        self.service(history_size=2)
        self.assertEqual(self.store.changes.max_changes, 2)
        started = self.reactor.seconds()
        for number in range(3):
            self.reactor.advance(1)
            self.store.put(make_binding(number + 1))
        self.assertEqual(len(self.store.changes), 2)
        self.assertIsNone(self.successResultOf(self.store.changes_since(started)))
        recent = self.successResultOf(self.store.changes_since(started + 2))
        assert recent is not None
        self.assertEqual(len(recent), 2)

    def test_disabled_leaves_store_alone(self) -> None:
        """Without Active Leasequery, no history is kept and no expiry sweep runs."""
        service = self.service(active=None, history_window=120, history_size=5)
        service.startService()
        self.assertIsNone(service.expiry)
        self.assertIsNone(self.store.changes.complete_from)
        self.assertEqual(self.store.changes.window, 3600)
        self.assertEqual(self.store.changes.max_changes, 100_000)

    def test_expiry_delivered_as_removal(self) -> None:
        """RFC 7653 section 9.3 (a binding that expires is a change): a binding whose last
        lease runs out with no store write reaches the active requestor as a
        LEASEQUERY-DATA whose IAADDR has preferred and valid lifetime 0; at shutdown the
        query ends with DONE(QueryTerminated) (RFC 7653 section 8.4)."""
        service = self.service()
        service.startService()
        server, transport = open_active_query(self, service)

        now = int(self.reactor.seconds())
        binding = make_binding(1, cltt=now - 100, preferred_lifetime=50, valid_lifetime=105)
        self.store.put(binding)
        (written,) = take(transport)
        self.assertEqual(lifetimes(written), [(0, 5)])
        self.reactor.pump([1.0] * 4)
        self.assertEqual(take(transport), [])
        self.reactor.pump([1.0] * 2)
        (expired,) = take(transport)
        self.assertEqual(expired.msg_type, MessageType.LEASEQUERY_DATA)
        self.assertEqual(lifetimes(expired), [(0, 0)])
        self.assertIsNotNone(expired.option(LQBaseTime))
        assert service.expiry is not None
        self.assertEqual(service.expiry.published, 1)

        stopped = service.stopService()
        (done,) = take(transport)
        self.assertEqual(
            (done.msg_type, status_of(done)),
            (MessageType.LEASEQUERY_DONE, StatusCode.QueryTerminated),
        )
        server.connectionLost(None)  # type: ignore[arg-type]
        self.successResultOf(stopped)
        self.assertFalse(service.expiry.running)

    def test_ssl_listener_uses_configured_tls(self) -> None:
        """RFC 7653 section 9.1 (TLS-only listener): an C{ssl:} endpoint with no key of its
        own listens on the same port and interface with the server's mutual-TLS options."""
        certs = write_certificates(Path(self.mktemp()))
        options = tls_options(certs.server_cert, certs.server_key, certs.ca)
        service = self.service(active=ActiveConfig(enabled=True, tls=options))
        # (LoopbackTLSTests shows, over real TLS, that these are the options used.)
        service.listen = ("ssl:5548:interface=\\:\\:1:backlog=7",)
        service.startService()
        self.successResultOf(service.listening)
        ((port, factory, backlog, interface),) = self.reactor.tcpServers
        self.assertEqual((port, backlog, interface), (5548, 7, "::1"))
        self.assertIsInstance(factory, TLSMemoryBIOFactory)
        self.assertIs(factory.wrappedFactory, service.factory)


class LoopbackTLSTests(TestCase):
    """The service over real loopback TCP and TLS, requestor certificates generated now."""

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.reactor: Any = reactor
        self.certs = write_certificates(Path(self.mktemp()))
        self.store = MemoryBindingStore(clock=reactor)
        config = ServerConfig(SERVER_DUID, allow=(parse_access_rule("127.0.0.0/8"),))
        options = tls_options(self.certs.server_cert, self.certs.server_key, self.certs.ca)
        self.service = BulkLeasequeryService(
            self.store,
            config,
            ["ssl:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.1"],
            reactor=reactor,
            active=ActiveConfig(enabled=True, tls=options),
            expiry_interval=0.2,
        )
        self.service.startService()
        self.addCleanup(self.service.stopService)
        return self.service.listening  # type: ignore[return-value]

    def client_tls(self, cert: Path, key: Path) -> Any:
        """Client TLS options trusting the test CA, presenting C{cert}."""
        return mutual_tls_options(
            "localhost", self.certs.ca.read_bytes(), cert.read_bytes(), key.read_bytes()
        )

    async def connect(self, index: int, requestor: StartTLSRequestor, tls: Any = None) -> None:
        """Connect C{requestor} to listener C{index} (0: ssl:, 1: tcp:), with TLS if given."""
        port = self.service.ports[index].getHost().port
        endpoint: Any = endpoints.TCP4ClientEndpoint(self.reactor, "127.0.0.1", port)
        if tls is not None:
            endpoint = endpoints.wrapClientTLS(tls, endpoint)
        await endpoints.connectProtocol(endpoint, requestor)

        def close() -> defer.Deferred[None]:
            requestor.transport.loseConnection()  # type: ignore[union-attr]
            return requestor.lost

        self.addCleanup(close)

    def test_ssl_listener_streams_changes_and_expiry(self) -> None:
        """RFC 7653 sections 9.1 and 9.3: on the C{ssl:} listener a requestor with a
        certificate from the configured CA gets the REPLY without STARTTLS, then a DATA for
        a binding written, then a DATA with lifetimes 0 when that binding expires with no
        store write."""

        async def run() -> None:
            requestor = StartTLSRequestor(active_query())
            await self.connect(
                0, requestor, self.client_tls(self.certs.requestor_cert, self.certs.requestor_key)
            )
            await requestor.received(1)
            self.assertEqual(requestor.messages[0].msg_type, MessageType.LEASEQUERY_REPLY)
            self.assertIsNone(status_of(requestor.messages[0]))
            now = int(time.time())
            self.store.put(make_binding(1, cltt=now - 100, valid_lifetime=102))
            await requestor.received(3)
            written, expired = requestor.messages[1:3]
            self.assertNotEqual(lifetimes(written)[0][1], 0)
            self.assertEqual(lifetimes(expired), [(0, 0)])

        return defer.Deferred.fromCoroutine(run())  # type: ignore[return-value]

    def test_ssl_listener_refuses_stranger(self) -> None:
        """RFC 7653 section 9.1 (MUST validate the requestor's certificate): a certificate
        from another CA on the C{ssl:} listener gets no reply; the connection closes."""

        async def run() -> None:
            requestor = StartTLSRequestor(active_query())
            tls = self.client_tls(self.certs.stranger_cert, self.certs.stranger_key)
            port = self.service.ports[0].getHost().port
            endpoint = endpoints.wrapClientTLS(
                tls, endpoints.TCP4ClientEndpoint(self.reactor, "127.0.0.1", port)
            )
            await endpoints.connectProtocol(endpoint, requestor)
            await requestor.lost
            self.assertEqual(requestor.messages, [])

        return defer.Deferred.fromCoroutine(run())  # type: ignore[return-value]

    def test_starttls_on_tcp_listener(self) -> None:
        """RFC 7653 section 9.1: on the plain listener, STARTTLS gets a REPLY, TLS starts
        with the requestor's certificate, and the ACTIVELEASEQUERY then gets its REPLY."""

        async def run() -> None:
            tls = self.client_tls(self.certs.requestor_cert, self.certs.requestor_key)
            requestor = StartTLSRequestor(Message(MessageType.STARTTLS, 1, (REQUESTOR,)), tls)
            await self.connect(1, requestor)
            await requestor.received(2)
            self.assertEqual(
                [m.msg_type for m in requestor.messages],
                [MessageType.REPLY, MessageType.LEASEQUERY_REPLY],
            )
            self.assertIsNone(status_of(requestor.messages[1]))

        return defer.Deferred.fromCoroutine(run())  # type: ignore[return-value]
