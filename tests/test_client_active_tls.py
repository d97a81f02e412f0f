"""
The watcher over STARTTLS against bulklq's server on real loopback TCP, with certificates
generated at test time (RFC 7653 section 8.2): mutual authentication gives a replica; a
server without TLS answers TLSConnectionRefused; a requestor certificate from another CA is
refused in the handshake. Each failure is reported, not retried.
"""

from __future__ import annotations

import datetime
import time
from ipaddress import IPv6Address
from pathlib import Path
from typing import Any

from twisted.internet import defer, endpoints
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from bulklq.client import (
    ActiveQuery,
    ActiveQueryRefused,
    ActiveWatcher,
    LeaseQuery,
    Requestor,
    RequestorOptions,
    ServerAddress,
    StartTLSEndpoint,
    mutual_tls_options,
)
from bulklq.client._starttls import DirectTLSEndpoint
from bulklq.config import ServerConfig, parse_access_rule
from bulklq.server import ActiveConfig, BulkLeasequeryFactory, tls_options
from bulklq.stores.memory import MemoryBindingStore
from bulklq.testing import make_binding, make_link
from tests.fake_server import REQUESTOR_DUID, SERVER_DUID

try:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
except ImportError:  # pragma: no cover - the tls extra is not installed
    x509 = None  # type: ignore[assignment]


def _issue(subject: str, issuer: tuple[Any, Any] | None = None) -> tuple[bytes, bytes, Any]:
    """A certificate for C{subject} (a CA when C{issuer} is None): (cert PEM, key PEM, signer)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    signer, issuer_name = issuer if issuer is not None else (key, name)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False
        )
    cert = builder.sign(signer, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem, (key, name)


@implementer(IStreamClientEndpoint)
class _SilentEndpoint:
    """Connects at once to a L{StringTransport} whose other side never answers."""

    def __init__(self) -> None:
        self.transports: list[StringTransport] = []

    def connect(self, factory: IProtocolFactory) -> defer.Deferred[Any]:
        """A connected protocol on a new StringTransport."""
        protocol = factory.buildProtocol(None)  # type: ignore[arg-type]
        assert protocol is not None
        transport = StringTransport()
        transport.startTLS = lambda options: None  # type: ignore[attr-defined]
        protocol.makeConnection(transport)
        self.transports.append(transport)
        return defer.succeed(protocol)


class CancelTests(SynchronousTestCase):
    """
    Cancelling a connection attempt during STARTTLS or the handshake (a connect timeout,
    or the watcher stopped meanwhile) closes the TCP connection and leaves no timer behind.
    """

    def connect(self, kind: type[StartTLSEndpoint]) -> tuple[Any, Clock, StringTransport]:
        """Start connecting through C{kind} on a silent connection."""
        clock = Clock()
        wrapped = _SilentEndpoint()
        endpoint = kind(wrapped, object(), clock, timeout=5)  # type: ignore[arg-type]
        connecting = endpoint.connect(Factory.forProtocol(Protocol))
        return connecting, clock, wrapped.transports[0]

    def test_cancel_during_starttls(self) -> None:
        """Cancelled while waiting for the REPLY to STARTTLS: aborted, no timer left."""
        connecting, clock, transport = self.connect(StartTLSEndpoint)
        self.assertNotEqual(transport.value(), b"")  # STARTTLS went out
        connecting.cancel()
        self.failureResultOf(connecting, defer.CancelledError)
        self.assertTrue(transport.disconnected)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_cancel_during_direct_handshake(self) -> None:
        """The same during the handshake of a direct TLS connection (an C{ssl:} port)."""
        connecting, clock, transport = self.connect(DirectTLSEndpoint)
        connecting.cancel()
        self.failureResultOf(connecting, defer.CancelledError)
        self.assertTrue(transport.disconnected)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_watcher_stopped_during_starttls(self) -> None:
        """ActiveWatcher.stop() while STARTTLS is pending: the watch ends, the connection
        is closed and no timer (STARTTLS, connect timeout, retry) is left."""
        clock = Clock()
        wrapped = _SilentEndpoint()

        def endpoint(server: ServerAddress) -> IStreamClientEndpoint:
            return StartTLSEndpoint(wrapped, object(), clock, timeout=5)  # type: ignore[arg-type]

        requestor = Requestor(REQUESTOR_DUID, clock, RequestorOptions(retries=0), endpoint)
        watcher = ActiveWatcher(requestor, "[2001:db8::1]:547", endpoint_factory=endpoint)
        done = watcher.start()
        self.assertNoResult(done)
        stopped = watcher.stop()
        self.successResultOf(stopped)
        self.assertIsNone(self.successResultOf(done))
        self.assertTrue(wrapped.transports[0].disconnected)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_connect_timeout_during_starttls(self) -> None:
        """The watcher's connect timeout firing during STARTTLS closes that connection
        before the retry: one connection open at a time, never a leaked one."""
        clock = Clock()
        wrapped = _SilentEndpoint()

        def endpoint(server: ServerAddress) -> IStreamClientEndpoint:
            return StartTLSEndpoint(wrapped, object(), clock, timeout=60)  # type: ignore[arg-type]

        requestor = Requestor(
            REQUESTOR_DUID, clock, RequestorOptions(retries=0, connect_timeout=10), endpoint
        )
        watcher = ActiveWatcher(requestor, "[2001:db8::1]:547", endpoint_factory=endpoint)
        done = watcher.start()
        clock.advance(10)
        self.assertTrue(wrapped.transports[0].disconnected)
        self.assertIn("no connection within 10 s", watcher.last_error or "")
        self.successResultOf(watcher.stop())
        self.assertIsNone(self.successResultOf(done))
        self.assertEqual(clock.getDelayedCalls(), [])


class StartTLSWatcherTests(TestCase):
    """ActiveWatcher + StartTLSEndpoint over loopback."""

    if x509 is None:
        skip = "cryptography is not installed (the tls extra)"

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.reactor: Any = reactor
        directory = Path(self.mktemp())
        directory.mkdir()
        ca_cert, _, ca = _issue("bulklq test CA")
        server_cert, server_key, _ = _issue("localhost", ca)
        client_cert, client_key, _ = _issue("requestor", ca)
        _, _, other_ca = _issue("another CA")
        rogue_cert, rogue_key, _ = _issue("rogue", other_ca)
        files = {
            "ca.pem": ca_cert,
            "server.pem": server_cert,
            "server.key": server_key,
        }
        for name, content in files.items():
            (directory / name).write_bytes(content)
        self.ca_pem = ca_cert
        self.client = (client_cert, client_key)
        self.rogue = (rogue_cert, rogue_key)
        self.server_tls = tls_options(
            directory / "server.pem", directory / "server.key", directory / "ca.pem"
        )
        self.store = MemoryBindingStore([make_link("link-1", ["2001:db8:1::/64"])])
        for number in range(1, 6):
            self.store.put(
                make_binding(
                    number, "link-1", cltt=int(time.time()), addresses=[f"2001:db8:1::{number:x}"]
                )
            )

    async def _listen(self, tls: Any) -> int:
        config = ServerConfig(SERVER_DUID, allow=(parse_access_rule("127.0.0.1/32"),))
        factory = BulkLeasequeryFactory(
            self.store, config, self.reactor, active=ActiveConfig(enabled=True, tls=tls)
        )
        port = await endpoints.TCP4ServerEndpoint(self.reactor, 0, interface="127.0.0.1").listen(
            factory
        )
        self.addCleanup(port.stopListening)

        def close_connections() -> None:
            for protocol in list(factory.connections):
                if protocol.transport is not None:
                    protocol.transport.abortConnection()

        self.addCleanup(close_connections)
        return int(port.getHost().port)

    def _watcher(self, port: int, cert: tuple[bytes, bytes]) -> ActiveWatcher:
        options = mutual_tls_options("localhost", self.ca_pem, cert[0], cert[1])

        def endpoint(server: ServerAddress) -> IStreamClientEndpoint:
            plain = endpoints.TCP4ClientEndpoint(self.reactor, "127.0.0.1", port, timeout=5)
            return StartTLSEndpoint(plain, options, self.reactor, timeout=5)

        requestor = Requestor(REQUESTOR_DUID, self.reactor, RequestorOptions(retries=0), endpoint)
        watcher = ActiveWatcher(
            requestor,
            f"127.0.0.1:{port}",
            ActiveQuery(LeaseQuery.by_link_address(IPv6Address("2001:db8:1::1"))),
            endpoint_factory=endpoint,
        )
        self.addCleanup(watcher.stop)
        return watcher

    async def _until(self, condition: Any, seconds: float = 10.0) -> None:
        for _ in range(int(seconds / 0.02)):
            if condition():
                return
            await defer.Deferred.fromCoroutine(_sleep(self.reactor, 0.02))
        self.fail("condition not reached")

    def test_mutual_tls_replica(self) -> None:
        """8.2 MUST validate the server's certificate; mutual TLS accepted: the snapshot and
        a live change arrive over TLS."""

        async def scenario() -> None:
            port = await self._listen(self.server_tls)
            watcher = self._watcher(port, self.client)
            done = watcher.start()
            await self._until(lambda: watcher.synchronised)
            self.assertEqual(len(watcher.replica), 5)
            self.store.put(
                make_binding(9, "link-1", cltt=int(time.time()), addresses=["2001:db8:1::9"])
            )
            await self._until(lambda: len(watcher.replica) == 6)
            await watcher.stop()
            await done

        return defer.Deferred.fromCoroutine(scenario())

    def test_tls_connection_refused(self) -> None:
        """8.2 MUST close: a server without TLS answers TLSConnectionRefused; the watch ends
        with a TLS error, not a retry loop."""

        async def scenario() -> None:
            port = await self._listen(None)
            watcher = self._watcher(port, self.client)
            try:
                await watcher.start()
            except ActiveQueryRefused as error:
                self.assertTrue(error.tls)
                self.assertIn("TLSConnectionRefused", str(error))
            else:
                self.fail("not refused")
            self.assertEqual(watcher.connections, 0)

        return defer.Deferred.fromCoroutine(scenario())

    def test_wrong_ca_refused(self) -> None:
        """9.1 / 8.2: a requestor certificate from another CA fails the handshake; the
        requestor reports it and closes."""

        async def scenario() -> None:
            port = await self._listen(self.server_tls)
            watcher = self._watcher(port, self.rogue)
            try:
                await watcher.start()
            except ActiveQueryRefused as error:
                self.assertTrue(error.tls)
            else:
                self.fail("not refused")
            self.assertEqual(len(watcher.replica), 0)

        return defer.Deferred.fromCoroutine(scenario())


async def _sleep(reactor: Any, seconds: float) -> None:
    await defer.Deferred(lambda d: None).addTimeout(seconds, reactor).addErrback(lambda _: None)
