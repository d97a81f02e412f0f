"""Tests for L{bulklq.settings}: options and TOML merged into validated settings."""

from __future__ import annotations

import os
from ipaddress import ip_network
from pathlib import Path

from twisted.logger import LogLevel
from twisted.trial.unittest import SynchronousTestCase

from bulklq.config import LOOPBACK_ONLY, ConfigError
from bulklq.settings import (
    DEFAULT_LISTEN,
    OPTIONS,
    default_state_dir,
    resolve,
    tcp_endpoint_address,
    tls_listen_description,
)
from bulklq.wire import Duid, QueryType

from .test_active_glue import Certificates, write_certificates

ENV = {"HOME": "/home/operator", "STATE_DIRECTORY": "/var/lib/bulklq-test"}


class ResolveTests(SynchronousTestCase):
    """Merging command line, config file and defaults."""

    def setUp(self) -> None:
        self.certs = write_certificates(Path(self.mktemp()))

    def write(self, text: str) -> Path:
        """A TOML file with C{text}."""
        path = Path(self.mktemp())
        path.write_text(text, encoding="utf-8")
        return path

    def test_defaults(self) -> None:
        """
        With nothing given, the server listens on TCP port 547, dual stack (S15), allows this
        host only, and its ServerConfig has RFC 5460's defaults (S16: 10 connections, 300 s
        data timeout).
        """
        settings = resolve({}, ENV)
        self.assertEqual(settings.listen, (DEFAULT_LISTEN,))
        self.assertEqual(DEFAULT_LISTEN, "tcp6:547:interface=\\:\\:")
        self.assertEqual(settings.state_dir, Path("/var/lib/bulklq-test"))
        self.assertEqual(settings.store_uri, "sqlite:/var/lib/bulklq-test/bindings.sqlite3")
        self.assertFalse(settings.udp)
        self.assertIsNone(settings.metrics)
        self.assertEqual(settings.log_level, LogLevel.info)
        config = settings.server_config(Duid.from_text("00:03:00:01:02:00:00:00:00:01"))
        self.assertEqual(config.allow, LOOPBACK_ONLY)
        self.assertEqual(config.max_connections, 10)
        self.assertEqual(config.data_timeout, 300)

    def test_every_option_from_command_line(self) -> None:
        """Each option given on the command line reaches the settings and ServerConfig."""
        settings = resolve(
            {
                "listen": ["tcp6:5547:interface=\\:\\:", "tcp:5548:interface=127.0.0.1"],
                "store": "memory:",
                "allow": ["2001:db8::/32:relay-id,link", "192.0.2.0/24"],
                "max-connections": "20",
                "max-connections-per-requestor": "2",
                "max-queries-per-connection": "8",
                "data-timeout": "120",
                "idle-timeout": "60.5",
                "store-timeout": "5",
                "page-size": "100",
                "sensitive-options": "47,remote-id",
                "shutdown-grace": "3",
                "server-duid": "00:03:00:01:02:00:00:00:00:01",
                "state-dir": "/tmp/bulklq-state",
                "udp": True,
                "metrics": "tcp:9547:interface=127.0.0.1",
                "log-level": "WARNING",
                "log-json": "-",
                "tls-cert": str(self.certs.server_cert),
                "tls-key": str(self.certs.server_key),
                "tls-ca": str(self.certs.ca),
                "active-leasequery": True,
                "active-without-tls": True,
                "history-window": "600",
                "active-backlog": "50",
            },
            ENV,
        )
        self.assertEqual(settings.tls_cert, self.certs.server_cert)
        self.assertTrue(settings.tls)
        self.assertEqual(settings.history_window, 600.0)
        active = settings.active_config()
        self.assertEqual((active.enabled, active.allow_insecure), (True, True))
        self.assertEqual(active.max_backlog, 50)
        self.assertIsNotNone(active.tls)
        self.assertEqual(len(settings.listen), 2)
        self.assertEqual(settings.store_uri, "memory:")
        self.assertTrue(settings.udp)
        self.assertEqual(settings.metrics, "tcp:9547:interface=127.0.0.1")
        self.assertEqual(settings.log_level, LogLevel.warn)
        self.assertEqual(settings.log_json, "-")
        self.assertEqual(settings.state_dir, Path("/tmp/bulklq-state"))
        assert settings.server_duid is not None
        config = settings.server_config(settings.server_duid)
        self.assertEqual(config.allow[0].network, ip_network("2001:db8::/32"))
        self.assertEqual(
            config.allow[0].query_types,
            frozenset({QueryType.QUERY_BY_RELAY_ID, QueryType.QUERY_BY_LINK_ADDRESS}),
        )
        self.assertEqual(config.max_connections, 20)
        self.assertEqual(config.max_connections_per_requestor, 2)
        self.assertEqual(config.max_queries_per_connection, 8)
        self.assertEqual(config.data_timeout, 120.0)
        self.assertEqual(config.idle_timeout, 60.5)
        self.assertEqual(config.store_timeout, 5.0)
        self.assertEqual(config.page_size, 100)
        self.assertEqual(config.sensitive_options, frozenset({47, 37}))
        self.assertEqual(config.shutdown_grace, 3.0)

    def test_every_option_has_a_config_key(self) -> None:
        """Every option can be set in the TOML file under its own name."""
        path = self.write(
            """
            listen = ["tcp6:5547:interface=\\\\:\\\\:"]
            store = "memory:"
            allow = ["2001:db8::/32"]
            max-connections = 3
            max-connections-per-requestor = 1
            max-queries-per-connection = 2
            data-timeout = 30
            idle-timeout = 10
            store-timeout = 2.5
            page-size = 50
            sensitive-options = [47, "OPTION_REMOTE_ID"]
            shutdown-grace = 1
            server-duid = "00:03:00:01:02:00:00:00:00:01"
            state-dir = "/tmp/s"
            udp = true
            metrics = "tcp:9547"
            log-level = "debug"
            log-json = "/tmp/bulklq.jsonl"
            tls-cert = "CERTS/server.pem"
            tls-key = "CERTS/server.key"
            tls-ca = "CERTS/ca.pem"
            tls-requestor = ["relay-1", "2001:db8::1"]
            active-leasequery = true
            active-without-tls = false
            history-window = 60
            history-size = 500
            active-backlog = 7
            """.replace("CERTS", str(self.certs.directory))
        )
        settings = resolve({}, ENV, path)
        self.assertEqual(settings.listen, ("tcp6:5547:interface=\\:\\:",))
        self.assertEqual(settings.max_connections, 3)
        self.assertEqual(settings.store_timeout, 2.5)
        self.assertEqual(settings.sensitive_options, frozenset({47, 37}))
        self.assertTrue(settings.udp)
        self.assertEqual(settings.log_level, LogLevel.debug)
        self.assertEqual(settings.log_json, "/tmp/bulklq.jsonl")
        self.assertEqual(settings.tls_ca, self.certs.ca)
        self.assertEqual(settings.tls_requestor, ("relay-1", "2001:db8::1"))
        self.assertTrue(settings.active_leasequery)
        self.assertFalse(settings.active_without_tls)
        self.assertEqual((settings.history_window, settings.active_backlog), (60.0, 7))
        self.assertEqual(settings.history_size, 500)
        keys = {line.split("=")[0].strip() for line in path.read_text().splitlines() if "=" in line}
        self.assertEqual(keys, {spec.name for spec in OPTIONS})

    def test_command_line_wins(self) -> None:
        """A value on the command line replaces the config file's, lists included."""
        path = self.write('max-connections = 3\nlisten = ["tcp:1547"]\ndata-timeout = 30\n')
        settings = resolve({"max-connections": "7", "listen": ["tcp:2547"]}, ENV, path)
        self.assertEqual(settings.max_connections, 7)
        self.assertEqual(settings.listen, ("tcp:2547",))
        self.assertEqual(settings.data_timeout, 30.0)

    def test_bad_command_line_values(self) -> None:
        """Each bad value gives one line naming the option (and no traceback text)."""
        cases = {
            "listen": ["nonsense:1"],
            "store": "ftp://example",
            "allow": ["2001:db8::/200"],
            "max-connections": "0",
            "max-connections-per-requestor": "many",
            "max-queries-per-connection": "-1",
            "data-timeout": "soon",
            "idle-timeout": "0",
            "store-timeout": "inf",
            "page-size": "1.5",
            "sensitive-options": "47,bogus",
            "shutdown-grace": "-3",
            "server-duid": "zz:zz",
            "state-dir": " ",
            "metrics": "tcp:notaport",
            "log-level": "loud",
            "log-json": "",
            "tls-cert": "/nonexistent/server.pem",
            "tls-key": "/nonexistent/server.key",
            "tls-ca": "",
            "tls-requestor": ["*.example.net"],
            "active-leasequery": True,
            "active-without-tls": True,
            "history-window": "0",
            "history-size": "-1",
            "active-backlog": "none",
        }
        self.assertEqual(set(cases) | {"udp"}, {spec.name for spec in OPTIONS})
        for name, value in cases.items():
            error = self.assertRaises(ConfigError, resolve, {name: value}, ENV)
            message = str(error)
            self.assertTrue(message.startswith(f"--{name}: "), message)
            self.assertNotIn("\n", message)
            self.assertNotIn("Traceback", message)

    def test_bad_config_file_values(self) -> None:
        """A bad value in the config file is named by file and key."""
        cases = {
            "max-connections": '"ten"',
            "udp": '"yes"',
            "listen": "[]",
            "allow": "42",
            "data-timeout": "true",
        }
        for key, value in cases.items():
            path = self.write(f"{key} = {value}\n")
            error = self.assertRaises(ConfigError, resolve, {}, ENV, path)
            self.assertTrue(str(error).startswith(f"{path}: {key}: "), str(error))

    def test_bad_config_file(self) -> None:
        """Unknown keys, bad TOML and a missing file are one-line errors naming the file."""
        unknown = self.write("max-conections = 3\n")
        error = self.assertRaises(ConfigError, resolve, {}, ENV, unknown)
        self.assertEqual(str(error), f"{unknown}: unknown key 'max-conections'")
        broken = self.write("listen = [\n")
        error = self.assertRaises(ConfigError, resolve, {}, ENV, broken)
        self.assertTrue(str(error).startswith(f"{broken}: not valid TOML"))
        self.assertNotIn("\n", str(error))
        missing = Path(self.mktemp())
        error = self.assertRaises(ConfigError, resolve, {}, ENV, missing)
        self.assertIn("--config: cannot read", str(error))

    def test_udp_needs_tcp_listen(self) -> None:
        """--udp takes its addresses from tcp/tcp6 endpoints; others are refused by name."""
        error = self.assertRaises(
            ConfigError,
            resolve,
            {"udp": True, "listen": ["systemd:domain=INET6:index=0"]},
            ENV,
        )
        self.assertTrue(str(error).startswith("--udp: "))

    def test_systemd_endpoint_accepted(self) -> None:
        """A systemd endpoint is left for the server to resolve under socket activation."""
        settings = resolve({"listen": ["systemd:domain=INET6:index=0"]}, ENV)
        self.assertEqual(settings.listen, ("systemd:domain=INET6:index=0",))


class TLSOptionTests(SynchronousTestCase):
    """--tls-cert, --tls-key, --tls-ca and Active Leasequery (RFC 7653 section 9.1): every
    problem is one line naming the option."""

    def setUp(self) -> None:
        self.certs: Certificates = write_certificates(Path(self.mktemp()))

    def tls(self, **override: str) -> dict[str, object]:
        """The three TLS options for the test files, some replaced."""
        given: dict[str, object] = {
            "tls-cert": str(self.certs.server_cert),
            "tls-key": str(self.certs.server_key),
            "tls-ca": str(self.certs.ca),
        }
        given.update(override)
        return given

    def refused(self, given: dict[str, object]) -> str:
        """The one-line error for C{given}."""
        message = str(self.assertRaises(ConfigError, resolve, given, ENV))
        self.assertNotIn("\n", message)
        self.assertNotIn("Traceback", message)
        return message

    def test_valid(self) -> None:
        """RFC 7653 section 9.1: the three files give TLS options requiring a requestor
        certificate; Active Leasequery is off until asked for (MUST NOT be on by
        default)."""
        settings = resolve(self.tls(), ENV)
        self.assertTrue(settings.tls)
        active = settings.active_config()
        self.assertFalse(active.enabled)
        self.assertIsNotNone(active.tls)
        self.assertIsNone(resolve({}, ENV).active_config().tls)

    def test_all_three_or_none(self) -> None:
        """The TLS files go together; the message names what is missing."""
        message = self.refused({"tls-key": str(self.certs.server_key)})
        self.assertEqual(
            message,
            "--tls-key: --tls-cert, --tls-key and --tls-ca go together; "
            "missing --tls-cert and --tls-ca",
        )

    def test_missing_file(self) -> None:
        """A file that does not exist is named with the option."""
        missing = str(self.certs.directory / "nope.pem")
        self.assertEqual(
            self.refused(self.tls(**{"tls-ca": missing})), f"--tls-ca: {missing!r} does not exist"
        )

    def test_unreadable_file(self) -> None:
        """A file that cannot be read (here a directory; permissions too) is named."""
        message = self.refused(self.tls(**{"tls-key": str(self.certs.directory)}))
        self.assertTrue(message.startswith("--tls-key: "), message)
        self.assertIn("is a directory", message)
        if os.geteuid() != 0:
            self.certs.server_key.chmod(0)
            message = self.refused(self.tls())
            self.assertIn("--tls-key: cannot read", message)

    def test_key_does_not_match(self) -> None:
        """A key that is not the certificate's: one line naming both files."""
        message = self.refused(self.tls(**{"tls-key": str(self.certs.requestor_key)}))
        self.assertEqual(
            message,
            f"--tls-key: {str(self.certs.requestor_key)!r} does not match the certificate "
            f"{str(self.certs.server_cert)!r}",
        )

    def test_bad_pem(self) -> None:
        """Files that are not PEM of the right kind."""
        junk = self.certs.directory / "junk.pem"
        junk.write_text("not a certificate\n")
        for option, expected in (
            ("tls-cert", "is not a PEM certificate"),
            ("tls-key", "is not a PEM private key"),
            ("tls-ca", "is not a PEM certificate"),
        ):
            message = self.refused(self.tls(**{option: str(junk)}))
            self.assertEqual(message, f"--{option}: {str(junk)!r} {expected}")
        # A certificate where the key should be is not a key either.
        message = self.refused(self.tls(**{"tls-key": str(self.certs.server_cert)}))
        self.assertIn("is not a PEM private key", message)

    def test_ca_bundle_refused(self) -> None:
        """The CA file holds exactly the one CA trusted for requestor certificates."""
        bundle = self.certs.directory / "bundle.pem"
        bundle.write_bytes(self.certs.ca.read_bytes() + self.certs.other_ca.read_bytes())
        message = self.refused(self.tls(**{"tls-ca": str(bundle)}))
        self.assertTrue(message.startswith("--tls-ca: "), message)
        self.assertIn("holds 2 certificates", message)

    def test_active_needs_tls_or_its_own_option(self) -> None:
        """RFC 7653 section 9.1 (insecure mode needs a separate explicit step): Active
        Leasequery without TLS needs --active-without-tls, which alone is refused."""
        self.assertIn(
            "--active-without-tls",
            self.refused({"active-leasequery": True}),
        )
        self.assertEqual(
            self.refused({"active-without-tls": True}),
            "--active-without-tls: needs --active-leasequery",
        )
        insecure = resolve({"active-leasequery": True, "active-without-tls": True}, ENV)
        active = insecure.active_config()
        self.assertEqual((active.enabled, active.allow_insecure, active.tls), (True, True, None))
        secure = resolve({"active-leasequery": True, **self.tls()}, ENV).active_config()
        self.assertEqual((secure.enabled, secure.allow_insecure), (True, False))

    def test_ssl_listen(self) -> None:
        """RFC 7653 section 9.1 (TLS-only listener): an ssl: endpoint takes the --tls-*
        files; without them, or with its own key, it is refused by name."""
        settings = resolve({"listen": ["ssl:5547:interface=\\:\\:"], **self.tls()}, ENV)
        self.assertEqual(settings.listen, ("ssl:5547:interface=\\:\\:",))
        self.assertEqual(
            self.refused({"listen": ["ssl:5547"]}),
            "--listen: 'ssl:5547' needs --tls-cert, --tls-key and --tls-ca",
        )
        message = self.refused({"listen": ["ssl:5547:privateKey=k.pem"], **self.tls()})
        self.assertTrue(message.startswith("--listen: 'ssl:5547:privateKey=k.pem': "), message)
        self.assertIn("remove privatekey=", message)
        self.assertTrue(self.refused({"listen": ["ssl:port"]}).startswith("--listen: "))

    def test_udp_with_ssl_listen(self) -> None:
        """--udp takes its ports from the tcp listeners and leaves ssl: ones alone."""
        settings = resolve({"udp": True, "listen": ["tcp6:5547", "ssl:5548"], **self.tls()}, ENV)
        self.assertTrue(settings.udp)

    def test_tls_listen_description(self) -> None:
        """ssl: descriptions map to tcp: on the same port, interface and backlog."""
        self.assertEqual(
            tls_listen_description("ssl:547:interface=\\:\\::backlog=5"),
            "tcp:547:interface=\\:\\::backlog=5",
        )
        self.assertIsNone(tls_listen_description("tcp6:547"))
        self.assertRaises(ConfigError, tls_listen_description, "SSL:547:certKey=c.pem")


class StateDirectoryTests(SynchronousTestCase):
    """Where state lives by default."""

    def test_systemd(self) -> None:
        """systemd's StateDirectory= comes first."""
        self.assertEqual(
            default_state_dir({"STATE_DIRECTORY": "/var/lib/a:/var/lib/b"}), Path("/var/lib/a")
        )

    def test_user(self) -> None:
        """Without it, a user's state goes under XDG_STATE_HOME or ~/.local/state."""
        import os

        if os.geteuid() == 0:
            self.assertEqual(default_state_dir({}), Path("/var/lib/bulklq"))
        else:
            self.assertEqual(
                default_state_dir({"HOME": "/home/u"}), Path("/home/u/.local/state/bulklq")
            )
            self.assertEqual(default_state_dir({"XDG_STATE_HOME": "/x"}), Path("/x/bulklq"))


class EndpointAddressTests(SynchronousTestCase):
    """The address a UDP listener shares with a TCP endpoint."""

    def test_tcp6(self) -> None:
        """tcp6 endpoints, escaped colons and all."""
        self.assertEqual(tcp_endpoint_address(DEFAULT_LISTEN), ("::", 547))
        self.assertEqual(tcp_endpoint_address("tcp6:5547"), ("::", 5547))
        self.assertEqual(
            tcp_endpoint_address("tcp6:port=5547:interface=2001\\:db8\\:\\:1"),
            ("2001:db8::1", 5547),
        )

    def test_tcp(self) -> None:
        """tcp endpoints, with the interface given by keyword or position."""
        self.assertEqual(tcp_endpoint_address("tcp:547:interface=127.0.0.1"), ("127.0.0.1", 547))
        self.assertEqual(tcp_endpoint_address("tcp:547:50:127.0.0.1"), ("127.0.0.1", 547))
        self.assertEqual(tcp_endpoint_address("tcp:547"), ("", 547))

    def test_others(self) -> None:
        """Other endpoint types have no UDP counterpart."""
        self.assertIsNone(tcp_endpoint_address("systemd:domain=INET6:index=0"))
        self.assertIsNone(tcp_endpoint_address("ssl:547"))
        self.assertIsNone(tcp_endpoint_address("tcp:port=x"))


class ReferenceDocumentTests(SynchronousTestCase):
    """docs/configuration.md stays true."""

    DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"

    def test_every_option_documented(self) -> None:
        """Every option has a row in the reference table."""
        text = self.DOC.read_text()
        for spec in OPTIONS:
            self.assertIn(f"| `{spec.name}` |", text)

    def test_example_file_is_valid(self) -> None:
        """The complete example file in the reference is accepted as it is."""
        text = self.DOC.read_text()
        block = text.split("```toml\n", 1)[1].split("```", 1)[0]
        path = Path(self.mktemp())
        path.write_text(block)
        settings = resolve({}, ENV, path)
        self.assertTrue(settings.udp)
        assert settings.allow is not None
        self.assertEqual(len(settings.allow), 2)
        self.assertEqual(settings.sensitive_options, frozenset({37}))
