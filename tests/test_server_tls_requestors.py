"""
The requestor certificate allow-list (C{--tls-requestor}, L{RequestorAllowList}): RFC 7653
section 9.1, "DHCPv6 servers MUST be configurable with regard to which requestors they will
communicate. The certificate presented by a requestor ... is used to distinguish between
acceptable and unacceptable requestors", and an unacceptable one makes the server "abort
the creation of the TLS connection".
"""

from __future__ import annotations

from ipaddress import ip_address
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from twisted.internet import defer
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from bulklq.client import mutual_tls_options
from bulklq.config import ConfigError, ServerConfig, parse_access_rule
from bulklq.server import ActiveConfig, BulkLeasequeryFactory, RequestorAllowList, tls_options
from bulklq.settings import resolve
from bulklq.stores.memory import MemoryBindingStore
from bulklq.tap import Options
from bulklq.wire import MessageType

from .test_active_glue import write_certificates
from .test_server import SERVER_DUID
from .test_server_tls import _issue, _pem, starttls_exchange

ENV = {"STATE_DIRECTORY": "/nonexistent/state"}


class AllowListTests(SynchronousTestCase):
    """L{RequestorAllowList}: parsing the patterns and matching a certificate's identities."""

    def setUp(self) -> None:
        self.ca = _issue("bulklq test CA", None, ca=True)
        issuer = (self.ca[0], self.ca[1].subject)
        self.edge = _issue("edge-1", issuer, dns=("Edge-1.example.net",), ips=("2001:db8::1",))
        self.bare = _issue("edge-2.example.net", issuer, dns=())

    def test_parse_kinds(self) -> None:
        """A sha256: fingerprint (with or without colons), an IP address and a DNS name
        each land in their own set; names are kept in lower case."""
        digest = self.edge[1].fingerprint(hashes.SHA256())
        allow = RequestorAllowList.parse(
            [f"sha256:{digest.hex(':')}", "2001:DB8::1", "Edge-1.Example.NET", "192.0.2.7"]
        )
        self.assertEqual(allow.fingerprints, frozenset({digest}))
        self.assertEqual(
            allow.addresses, frozenset({ip_address("2001:db8::1"), ip_address("192.0.2.7")})
        )
        self.assertEqual(allow.names, frozenset({"edge-1.example.net"}))
        self.assertEqual(
            RequestorAllowList.parse([f"SHA256:{digest.hex()}"]).fingerprints, {digest}
        )

    def test_parse_refuses(self) -> None:
        """A short fingerprint, a wildcard and text that is no name are refused, each in
        one line quoting the pattern."""
        for pattern in ("sha256:abcd", "*.example.net", "edge 1", "a/b", ""):
            error = self.assertRaises(ValueError, RequestorAllowList.parse, [pattern])
            self.assertIn(repr(pattern), str(error))
            self.assertEqual(len(str(error).splitlines()), 1)

    def test_empty_is_false(self) -> None:
        """An empty allow-list is false: every certificate from the CA is accepted."""
        self.assertFalse(RequestorAllowList.parse([]))
        self.assertTrue(RequestorAllowList.parse(["edge-1"]))

    def test_matches_each_identity(self) -> None:
        """RFC 7653 section 9.1: the certificate is what tells requestors apart. A DNS
        subjectAltName (any case), an IP subjectAltName, the subject CN and the
        fingerprint each admit the certificate; other identities do not."""
        edge, bare = self.edge[1], self.bare[1]
        digest = edge.fingerprint(hashes.SHA256()).hex()
        for pattern in ("edge-1.example.net", "EDGE-1.example.net", "2001:db8::1", "edge-1"):
            self.assertTrue(RequestorAllowList.parse([pattern]).allows(edge), pattern)
        self.assertTrue(RequestorAllowList.parse([f"sha256:{digest}"]).allows(edge))
        self.assertFalse(RequestorAllowList.parse([f"sha256:{digest}"]).allows(bare))
        self.assertTrue(RequestorAllowList.parse(["edge-2.example.net"]).allows(bare))
        for pattern in ("edge-2.example.net", "2001:db8::2", "example.net"):
            self.assertFalse(RequestorAllowList.parse([pattern]).allows(edge), pattern)


class AllowListHandshakeTests(TestCase):
    """RFC 7653 section 9.1 over real loopback STARTTLS: a listed certificate gets its
    active REPLY; a certificate from the right CA that is not listed is refused in the
    handshake, and the refusal is logged naming the certificate."""

    def setUp(self) -> None:
        directory = Path(self.mktemp())
        directory.mkdir()
        ca_key, ca_cert = _issue("bulklq test CA", None, ca=True)
        issuer = (ca_key, ca_cert.subject)
        server_key, server_cert = _issue("localhost", issuer)
        self.listed = _issue("edge-1", issuer, dns=("edge-1.example.net",))
        self.unlisted = _issue("edge-9", issuer, dns=("edge-9.example.net",))
        self.ca_cert = ca_cert
        for name, obj in (
            ("ca.pem", ca_cert),
            ("server.pem", server_cert),
            ("server.key", server_key),
        ):
            (directory / name).write_bytes(_pem(obj))
        options = tls_options(
            directory / "server.pem",
            directory / "server.key",
            directory / "ca.pem",
            ["edge-1.example.net"],
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
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    async def exchange(self, key: Any, cert: Any) -> list[MessageType]:
        """STARTTLS then ACTIVELEASEQUERY with this certificate: the message types seen."""
        options = mutual_tls_options("localhost", _pem(self.ca_cert), _pem(cert), _pem(key))
        messages = await starttls_exchange(self.reactor, self.factory, options)
        return [message.msg_type for message in messages]

    def test_listed_accepted(self) -> None:
        """RFC 7653 section 9.1: a requestor whose certificate is listed is served."""

        async def run() -> None:
            seen = await self.exchange(*self.listed)
            self.assertEqual(seen, [MessageType.REPLY, MessageType.LEASEQUERY_REPLY])

        return defer.Deferred.fromCoroutine(run())  # type: ignore[return-value]

    def test_unlisted_refused(self) -> None:
        """RFC 7653 section 9.1 (the server MUST abort the creation of the TLS connection
        when the requestor's certificate is deemed unacceptable): a certificate signed by
        the configured CA but not listed never gets past the STARTTLS REPLY, and a warning
        names its subject."""

        async def run() -> None:
            seen = await self.exchange(*self.unlisted)
            self.assertEqual(seen, [MessageType.REPLY])
            refusals = [
                event
                for event in self.events
                if "not in --tls-requestor" in event.get("log_format", "")
            ]
            self.assertEqual(len(refusals), 1)
            self.assertIn("edge-9", refusals[0]["certificate"])
            self.flushLoggedErrors()

        return defer.Deferred.fromCoroutine(run())  # type: ignore[return-value]


class SettingsTests(SynchronousTestCase):
    """C{--tls-requestor} on the command line and in the config file."""

    def test_needs_tls(self) -> None:
        """Without --tls-cert/--tls-key/--tls-ca, --tls-requestor is refused in one line."""
        error = self.assertRaises(ConfigError, resolve, {"tls-requestor": ["edge-1"]}, ENV)
        self.assertEqual(str(error), "--tls-requestor: needs --tls-cert, --tls-key and --tls-ca")

    def test_bad_pattern(self) -> None:
        """A bad pattern is refused in one line naming the option."""
        error = self.assertRaises(ConfigError, resolve, {"tls-requestor": ["*.example.net"]}, ENV)
        self.assertTrue(str(error).startswith("--tls-requestor: '*.example.net'"), str(error))

    def test_twistd_option_repeats(self) -> None:
        """C{twistd bulklq --tls-requestor A --tls-requestor B} keeps both, in order, and
        the server's TLS options then check the allow-list."""
        certs = write_certificates(Path(self.mktemp()))
        options = Options()
        options.parseOptions(
            [
                *("--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key)),
                *("--tls-ca", str(certs.ca), "--tls-requestor", "edge-1"),
                *("--tls-requestor", "2001:db8::1"),
            ]
        )
        settings = options.settings
        assert settings is not None
        self.assertEqual(settings.tls_requestor, ("edge-1", "2001:db8::1"))
        tls = settings.tls_options()
        self.assertEqual(tls.allow, RequestorAllowList.parse(["edge-1", "2001:db8::1"]))

    def test_config_file_list(self) -> None:
        """C{tls-requestor = [...]} in the TOML file is the same list."""
        certs = write_certificates(Path(self.mktemp()))
        config = Path(self.mktemp())
        config.write_text(
            f'tls-cert = "{certs.server_cert}"\ntls-key = "{certs.server_key}"\n'
            f'tls-ca = "{certs.ca}"\ntls-requestor = ["edge-1", "sha256:{"ab" * 32}"]\n'
        )
        settings = resolve({}, ENV, config)
        self.assertEqual(settings.tls_requestor, ("edge-1", f"sha256:{'ab' * 32}"))
