"""
STARTTLS over real loopback TCP with certificates generated at test time: mutual
authentication accepted, a requestor certificate from another CA refused (RFC 7653
sections 8.2 and 9.1, RFC 7525: TLS 1.2 or later).
"""

from __future__ import annotations

import datetime
import struct
from ipaddress import ip_address
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import defer, endpoints, protocol
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SynchronousTestCase, TestCase

from bulklq.client import mutual_tls_options
from bulklq.config import ServerConfig, parse_access_rule
from bulklq.server import ActiveConfig, BulkLeasequeryFactory, tls_options
from bulklq.stores.memory import MemoryBindingStore
from bulklq.wire import Message, MessageType, StatusCodeOption, decode_message

from .test_server import REQUESTOR, SERVER_DUID


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _issue(
    subject: str,
    issuer: tuple[Any, x509.Name] | None,
    ca: bool = False,
    dns: tuple[str, ...] = ("localhost",),
    ips: tuple[str, ...] = (),
) -> tuple[Any, Any]:
    """A key and a certificate for C{subject}, self-signed or signed by C{issuer} (its key
    and name); a non-CA certificate names C{dns} and C{ips} in its subjectAltName."""
    key = ec.generate_private_key(ec.SECP256R1())
    signer, issuer_name = issuer if issuer is not None else (key, _name(subject))
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns]
    names += [x509.IPAddress(ip_address(address)) for address in ips]
    if not ca and names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return key, builder.sign(signer, hashes.SHA256())


def _pem(obj: Any) -> bytes:
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM)
    return obj.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class StartTLSRequestor(protocol.Protocol):
    """Sends C{first}; collects every message; on a REPLY to STARTTLS, starts TLS and sends
    an ACTIVELEASEQUERY (xid 7, the requestor's CLIENTID)."""

    def __init__(self, first: Message, tls: Any = None) -> None:
        self.first = first
        self.tls = tls
        self.buffer = b""
        self.messages: list[Message] = []
        self.waiting: list[tuple[int, defer.Deferred[None]]] = []
        self.lost: defer.Deferred[None] = defer.Deferred()

    def send(self, message: Message) -> None:
        data = message.encode()
        self.transport.write(struct.pack("!H", len(data)) + data)  # type: ignore[union-attr]

    def connectionMade(self) -> None:
        self.send(self.first)

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= 2:
            (size,) = struct.unpack_from("!H", self.buffer)
            if len(self.buffer) < 2 + size:
                return
            message = decode_message(self.buffer[2 : 2 + size])
            self.buffer = self.buffer[2 + size :]
            assert isinstance(message, Message)
            self.messages.append(message)
            if message.msg_type == MessageType.REPLY:
                self.transport.startTLS(self.tls)  # type: ignore[union-attr]
                self.send(Message(MessageType.ACTIVELEASEQUERY, 7, (REQUESTOR,)))
            for count, waiter in list(self.waiting):
                if len(self.messages) >= count:
                    self.waiting.remove((count, waiter))
                    waiter.callback(None)

    def received(self, count: int) -> defer.Deferred[None]:
        """Fires once C{count} messages have arrived (or fails if the connection goes)."""
        waiter: defer.Deferred[None] = defer.Deferred()
        if len(self.messages) >= count:
            waiter.callback(None)
        else:
            self.waiting.append((count, waiter))
        return waiter

    def connectionLost(self, reason: Any = None) -> None:
        for _, waiter in self.waiting:
            waiter.errback(RuntimeError(f"connection lost after {self.messages}"))
        self.waiting = []
        self.lost.callback(None)


async def starttls_exchange(reactor: Any, factory: Any, options: Any) -> list[Message]:
    """Over loopback TCP to C{factory}: STARTTLS, then (on its REPLY) TLS with C{options}
    and an ACTIVELEASEQUERY; the messages received until the active REPLY (then the
    requestor closes) or until the server closes (a refused handshake). The factory is
    shut down after."""
    port = await endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    try:
        requestor = StartTLSRequestor(Message(MessageType.STARTTLS, 1, ()), options)
        client = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        await endpoints.connectProtocol(client, requestor)
        try:
            await requestor.received(2)
        except RuntimeError:
            pass  # the connection went before a second message: refused
        else:
            requestor.transport.loseConnection()  # type: ignore[union-attr]
        await requestor.lost
        await factory.shutdown(grace=1)
    finally:
        await port.stopListening()
    return requestor.messages


class TLSOptionsTests(SynchronousTestCase):
    """L{tls_options} builds its TLS context with the current (non-deprecated) API."""

    def setUp(self) -> None:
        self.directory = Path(self.mktemp())
        self.directory.mkdir()
        ca_key, ca_cert = _issue("bulklq test CA", None, ca=True)
        self.server = _issue("localhost", (ca_key, ca_cert.subject))
        self.stranger = _issue("localhost", None)
        (self.directory / "ca.pem").write_bytes(_pem(ca_cert))

    def write(self, key: Any, cert: Any) -> tuple[Path, Path, Path]:
        """The server's certificate and key files (and the CA file)."""
        (self.directory / "server.pem").write_bytes(_pem(cert))
        (self.directory / "server.key").write_bytes(_pem(key))
        return (
            self.directory / "server.pem",
            self.directory / "server.key",
            self.directory / "ca.pem",
        )

    def test_no_deprecation_warning(self) -> None:
        """Building the server's TLS context passes cryptography objects, not pyOpenSSL
        ones (deprecated in pyOpenSSL and Twisted 26): no warning at all is emitted."""
        options = tls_options(*self.write(*self.server))
        options.getContext()
        self.assertEqual([w["message"] for w in self.flushWarnings()], [])

    def test_client_options_no_deprecation_warning(self) -> None:
        """L{mutual_tls_options} (the requestor's side) emits no deprecation warning."""
        key, cert = self.server
        options = mutual_tls_options(
            "localhost", (self.directory / "ca.pem").read_bytes(), _pem(cert), _pem(key)
        )
        # The TLS context is made when a connection starts its handshake.
        factory = TLSMemoryBIOFactory(
            options, True, protocol.Factory.forProtocol(protocol.Protocol)
        )
        client = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 547))
        assert client is not None
        transport = StringTransport()
        client.makeConnection(transport)
        self.assertNotEqual(transport.value(), b"")  # the ClientHello went out
        self.assertEqual([w["message"] for w in self.flushWarnings()], [])

    def test_key_not_matching(self) -> None:
        """A key that is not the certificate's is refused at once, in one line."""
        cert_path, key_path, ca_path = self.write(self.stranger[0], self.server[1])
        error = self.assertRaises(ValueError, tls_options, cert_path, key_path, ca_path)
        self.assertIn("does not match", str(error))
        self.assertEqual(len(str(error).splitlines()), 1)

    def test_not_pem(self) -> None:
        """A certificate file that is not PEM is refused in one line naming it."""
        cert_path, key_path, ca_path = self.write(*self.server)
        cert_path.write_bytes(b"not a certificate")
        error = self.assertRaises(ValueError, tls_options, cert_path, key_path, ca_path)
        self.assertIn(str(cert_path), str(error))
        self.assertEqual(len(str(error).splitlines()), 1)


class MutualTLSTests(TestCase):
    """RFC 7653 section 9.1: STARTTLS with mutual authentication over loopback."""

    def setUp(self) -> None:
        directory = Path(self.mktemp())
        directory.mkdir()
        ca_key, ca_cert = _issue("bulklq test CA", None, ca=True)
        server_key, server_cert = _issue("localhost", (ca_key, ca_cert.subject))
        self.good = _issue("requestor", (ca_key, ca_cert.subject))
        other_key, other_cert = _issue("other CA", None, ca=True)
        self.bad = _issue("intruder", (other_key, other_cert.subject))
        self.ca_cert = ca_cert
        for name, obj in (
            ("ca.pem", ca_cert),
            ("server.pem", server_cert),
            ("server.key", server_key),
        ):
            (directory / name).write_bytes(_pem(obj))
        options = tls_options(
            directory / "server.pem", directory / "server.key", directory / "ca.pem"
        )
        from twisted.internet import reactor

        self.reactor: Any = reactor
        config = ServerConfig(SERVER_DUID, allow=(parse_access_rule("127.0.0.0/8"),))
        self.factory = BulkLeasequeryFactory(
            MemoryBindingStore(clock=reactor),
            config,
            reactor,
            active=ActiveConfig(enabled=True, tls=options),
        )

    def client_options(self, key: Any, cert: Any) -> Any:
        """The requestor's TLS options: trust the test CA, present C{cert}."""
        return mutual_tls_options("localhost", _pem(self.ca_cert), _pem(cert), _pem(key))

    async def exchange(self, key: Any, cert: Any) -> list[Message]:
        """STARTTLS then ACTIVELEASEQUERY with this certificate: the messages received."""
        options = self.client_options(key, cert)
        return await starttls_exchange(self.reactor, self.factory, options)

    def test_mutual_authentication(self) -> None:
        """RFC 7653 section 9.1 (MUST validate the requestor's certificate; all TLS
        connections for Active Leasequery MUST be mutually authenticated): a requestor with
        a certificate from the configured CA gets REPLY, then over TLS the active REPLY."""

        async def run() -> None:
            messages = await self.exchange(*self.good)
            self.assertEqual(
                [m.msg_type for m in messages],
                [MessageType.REPLY, MessageType.LEASEQUERY_REPLY],
            )
            self.assertIsNone(messages[1].option(StatusCodeOption))

        return defer.Deferred.fromCoroutine(run())  # type: ignore[return-value]

    def test_wrong_ca_refused(self) -> None:
        """RFC 7653 section 9.1 (MUST close connections whose certificate is unacceptable;
        a failed handshake closes the TCP connection): a certificate from another CA gets
        only the STARTTLS REPLY, never an active REPLY."""

        async def run() -> None:
            messages = await self.exchange(*self.bad)
            self.assertEqual([m.msg_type for m in messages], [MessageType.REPLY])

        return defer.Deferred.fromCoroutine(run())  # type: ignore[return-value]
