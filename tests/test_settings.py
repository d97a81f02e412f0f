"""Tests for L{bulklq.settings}: options and TOML merged into validated settings."""

from __future__ import annotations

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
)
from bulklq.wire import Duid, QueryType

ENV = {"HOME": "/home/operator", "STATE_DIRECTORY": "/var/lib/bulklq-test"}


class ResolveTests(SynchronousTestCase):
    """Merging command line, config file and defaults."""

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
            },
            ENV,
        )
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
            """
        )
        settings = resolve({}, ENV, path)
        self.assertEqual(settings.listen, ("tcp6:5547:interface=\\:\\:",))
        self.assertEqual(settings.max_connections, 3)
        self.assertEqual(settings.store_timeout, 2.5)
        self.assertEqual(settings.sensitive_options, frozenset({47, 37}))
        self.assertTrue(settings.udp)
        self.assertEqual(settings.log_level, LogLevel.debug)
        self.assertEqual(settings.log_json, "/tmp/bulklq.jsonl")
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
