"""Tests for L{bulklq.tap}: C{twistd bulklq}'s options, errors and log observer."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

from twisted.application.service import Application
from twisted.logger import ILogObserver, Logger, LogLevel
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from bulklq import tap
from bulklq.settings import OPTIONS

from .test_active_glue import write_certificates

BIN = Path(sys.executable).parent

#: One bad value per option.
BAD_VALUES = {
    "listen": "nonsense:1",
    "store": "ftp://example",
    "allow": "2001:db8::/200",
    "max-connections": "0",
    "max-connections-per-requestor": "many",
    "max-queries-per-connection": "-1",
    "data-timeout": "soon",
    "idle-timeout": "0",
    "store-timeout": "nan",
    "page-size": "1.5",
    "sensitive-options": "47,bogus",
    "shutdown-grace": "-3",
    "server-duid": "zz:zz",
    "state-dir": " ",
    "metrics": "tcp:notaport",
    "log-level": "loud",
    "log-json": " ",
    "tls-cert": "/nonexistent/server.pem",
    "tls-key": "/nonexistent/server.key",
    "tls-ca": " ",
    "tls-requestor": "relay 1",
    "history-window": "forever",
    "history-size": "0",
    "active-backlog": "0",
}

#: Flags, which take no value: alone, each of these is refused.
BAD_FLAGS = ("active-leasequery", "active-without-tls")


class OptionsTests(SynchronousTestCase):
    """Parsing the command line."""

    def parse(self, *argv: str) -> tap.Options:
        """Parse C{argv}, with state kept under a temporary directory."""
        options = tap.Options()
        options.parseOptions(["--state-dir", self.mktemp(), *argv])
        return options

    def test_defaults(self) -> None:
        """S15: without options the server listens on port 547, dual stack."""
        options = self.parse()
        assert options.settings is not None
        self.assertEqual(options.settings.listen, ("tcp6:547:interface=\\:\\:",))

    def test_repeatable(self) -> None:
        """--listen and --allow may be given several times."""
        options = self.parse(
            "--listen",
            "tcp6:5547",
            "--listen",
            "tcp:5548",
            "--allow",
            "::1",
            "--allow",
            "10.0.0.0/8:4",
        )
        assert options.settings is not None
        self.assertEqual(options.settings.listen, ("tcp6:5547", "tcp:5548"))
        assert options.settings.allow is not None
        self.assertEqual(len(options.settings.allow), 2)

    def test_flag(self) -> None:
        """--udp is a flag."""
        options = self.parse("--udp", "--listen", "tcp6:5547")
        assert options.settings is not None
        self.assertTrue(options.settings.udp)

    def test_config_file(self) -> None:
        """--config reads TOML; the command line wins over it."""
        path = Path(self.mktemp())
        path.write_text("max-connections = 3\npage-size = 7\n")
        options = self.parse("--config", str(path), "--max-connections", "4")
        assert options.settings is not None
        self.assertEqual(options.settings.max_connections, 4)
        self.assertEqual(options.settings.page_size, 7)

    def test_every_bad_option(self) -> None:
        """Every option's bad value is a UsageError of one line naming the option."""
        self.assertEqual(set(BAD_VALUES) | {"udp", *BAD_FLAGS}, {spec.name for spec in OPTIONS})
        for name, value in BAD_VALUES.items():
            error = self.assertRaises(usage.UsageError, self.parse, f"--{name}", value)
            self.assertTrue(str(error).startswith(f"--{name}: "), str(error))
            self.assertNotIn("\n", str(error))
        for name in BAD_FLAGS:
            error = self.assertRaises(usage.UsageError, self.parse, f"--{name}")
            self.assertTrue(str(error).startswith(f"--{name}: "), str(error))
            self.assertNotIn("\n", str(error))

    def test_active_leasequery_options(self) -> None:
        """RFC 7653 section 9.1: --active-leasequery with the three TLS files; flags and
        values reach the settings."""
        certs = write_certificates(Path(self.mktemp()))
        options = self.parse(
            "--active-leasequery",
            "--history-window",
            "90",
            "--history-size",
            "5000",
            "--listen",
            "ssl:5547",
            *certs.settings(),
        )
        assert options.settings is not None
        self.assertTrue(options.settings.active_leasequery)
        self.assertFalse(options.settings.active_without_tls)
        self.assertEqual(options.settings.history_window, 90.0)
        self.assertEqual(options.settings.history_size, 5000)
        self.assertEqual(options.settings.tls_key, certs.server_key)

    def test_unknown_option(self) -> None:
        """An unknown option is a UsageError."""
        self.assertRaises(usage.UsageError, self.parse, "--max-conections", "3")

    def test_help_lists_every_option(self) -> None:
        """--help shows every option with its default."""
        text = str(tap.Options())
        for spec in OPTIONS:
            self.assertIn(f"--{spec.name}", text)
        self.assertIn("--config", text)


class LogObserverTests(SynchronousTestCase):
    """The observer offered to twistd's application."""

    def test_json_lines_filtered(self) -> None:
        """--log-json writes JSON lines, at --log-level and above only."""
        path = Path(self.mktemp())
        options = tap.Options()
        options.parseOptions(
            ["--state-dir", self.mktemp(), "--log-json", str(path), "--log-level", "warn"]
        )
        assert options.settings is not None
        observer = tap._log_observer(options.settings, None)
        assert observer is not None
        log = Logger(namespace="bulklq.test", observer=observer)
        log.info("not written")
        log.warn("written {n}", n=1)
        log.error("written {n}", n=2)
        observer._observer._outFile.flush()  # type: ignore[attr-defined]
        lines = [line for line in path.read_text().split("\n") if line]
        self.assertEqual(len(lines), 2)
        self.assertEqual(json.loads(lines[0].lstrip("\x1e"))["n"], 1)

    def test_offered_to_application(self) -> None:
        """The observer becomes the application's ILogObserver, unless one is set already."""
        application = Application("bulklq")
        service = tap._TwistdService(_Idle(), lambda event: None, None)
        service.setServiceParent(application)
        self.assertIsNotNone(application.getComponent(ILogObserver, None))

    def test_text_level(self) -> None:
        """The text log is filtered at --log-level too (debug dropped by default)."""
        options = tap.Options()
        options.parseOptions(["--state-dir", self.mktemp()])
        assert options.settings is not None
        stream = io.StringIO()
        self.patch(sys, "stdout", stream)
        observer = tap._log_observer(options.settings, {"logfile": "-"})
        assert observer is not None
        event = {"log_namespace": "bulklq.test", "log_time": 0}
        observer({**event, "log_level": LogLevel.debug, "log_format": "hidden"})
        observer({**event, "log_level": LogLevel.info, "log_format": "shown"})
        self.assertNotIn("hidden", stream.getvalue())
        self.assertIn("shown", stream.getvalue())


class _Idle:
    """A stand-in server service."""

    listening = None

    def setServiceParent(self, parent: object) -> None:
        """Join nothing."""


class CommandLineTests(SynchronousTestCase):
    """The real twistd command: errors are one line and exit status 1."""

    def twistd(self, *argv: str, prelude: str = "") -> subprocess.CompletedProcess[str]:
        """Run twistd -n bulklq with C{argv} in a subprocess."""
        code = "\n".join(
            [
                "import sys",
                prelude,
                "from twisted.scripts.twistd import run",
                f"sys.argv = ['twistd', '-n', 'bulklq', *{list(argv)!r}]",
                "run()",
            ]
        )
        return subprocess.run(
            [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60
        )

    def test_bad_option_exits_1(self) -> None:
        """A bad value: exit status 1, the last line names it, no traceback."""
        result = self.twistd("--max-connections", "0")
        self.assertEqual(result.returncode, 1)
        output = result.stdout + result.stderr
        self.assertNotIn("Traceback", output)
        self.assertEqual(
            output.strip().splitlines()[-1],
            "twistd -n: --max-connections: must be a positive integer, not 0",
        )

    def test_metrics_without_extra(self) -> None:
        """--metrics without prometheus-client: one line saying how to install it."""
        result = self.twistd(
            "--metrics", "tcp:9547", prelude="sys.modules['prometheus_client'] = None"
        )
        self.assertEqual(result.returncode, 1)
        output = result.stdout + result.stderr
        self.assertNotIn("Traceback", output)
        self.assertIn("pip install 'bulklq[metrics]'", output.strip().splitlines()[-1])

    def test_tls_and_active_errors_exit_1(self) -> None:
        """RFC 7653 section 9.1 options: each problem (a missing file, a key that does not
        match, a file that is not PEM, Active Leasequery without TLS) is exit status 1 with
        one last line naming it, no traceback. (A store with no change feed is refused by
        the service: tests/test_active_glue.py.)"""
        certs = write_certificates(Path(self.mktemp()).resolve())
        junk = certs.directory / "junk.pem"
        junk.write_text("junk\n")
        good = certs.settings()
        cases = [
            (
                [*good[:-1], str(certs.directory / "missing.pem")],
                "--tls-ca: '{}' does not exist".format(certs.directory / "missing.pem"),
            ),
            (
                [*good[:3], str(certs.requestor_key), *good[4:]],
                f"--tls-key: '{certs.requestor_key}' does not match the certificate",
            ),
            ([str(junk) if part == str(certs.server_cert) else part for part in good], "PEM"),
            (["--active-leasequery"], "--active-leasequery: needs --tls-cert"),
            # (The SQLite store publishes its changes now: tests/test_store_sqlite_changes.py
            # shows twistd accepting it with --active-leasequery.)
        ]
        for argv, expected in cases:
            result = self.twistd(*argv)
            output = (result.stdout + result.stderr).strip()
            self.assertEqual(result.returncode, 1, output)
            self.assertNotIn("Traceback", output)
            self.assertIn(expected, output.splitlines()[-1])

    def test_unusable_state_dir_exits_1(self) -> None:
        """A state directory that cannot be created: one line on stderr, status 1."""
        blocker = Path(self.mktemp()).resolve()
        blocker.write_text("not a directory")
        result = self.twistd(
            "--state-dir", str(blocker / "state"), "--store", "memory:", "--listen", "tcp:0"
        )
        self.assertEqual(result.returncode, 1)
        self.assertNotIn("Traceback", result.stdout + result.stderr)
        self.assertIn("--state-dir", result.stderr.strip().splitlines()[-1])
