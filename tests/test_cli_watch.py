"""
C{bulklq watch}: printing changes, the state file, exit codes (against the fake active server).
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from bulklq.cli import build_parser
from bulklq.cli.watch import EXIT_TLS, load_state, run_watch
from bulklq.config import ServerConfig, parse_access_rule
from bulklq.server import ActiveConfig, tls_options
from bulklq.service import BulkLeasequeryService
from bulklq.stores.memory import MemoryBindingStore
from bulklq.testing import make_binding, make_link
from bulklq.wire import LQStartTime, MessageType, StatusCode
from tests.fake_active_server import (
    FakeActiveServerFactory,
    catch_up_complete,
    change,
    data_missing_reply,
    refuse_active,
    removal,
)
from tests.fake_server import REQUESTOR_DUID, InMemoryEndpoint, client_data
from tests.test_active_glue import write_certificates
from tests.test_server import SERVER_DUID

LINK = "2001:db8:1::"


class _Run:
    """One C{bulklq watch} run on a Clock, connected in memory to a fake server."""

    def __init__(self, test: SynchronousTestCase, *argv: str, factory: Any = None) -> None:
        self.clock = Clock()
        self.factory = factory or FakeActiveServerFactory()
        self.endpoint = InMemoryEndpoint(self.factory, self.clock)
        self.out = io.StringIO()
        self.err = io.StringIO()
        self.stopper: Deferred[None] = Deferred()
        arguments = build_parser().parse_args(
            ["watch", "[2001:db8::1]:547", "--requestor-duid", str(REQUESTOR_DUID), *argv]
        )
        self.result = Deferred.fromCoroutine(
            run_watch(
                self.clock,
                arguments,
                self.out,
                self.err,
                endpoint_factory=lambda server: self.endpoint,
                stop=self.stopper,
            )
        )
        self.endpoint.flush()
        self.test = test

    def send(self, *messages: Any) -> None:
        self.factory.last.send(*messages)
        self.endpoint.flush()

    def stop(self) -> int:
        if not self.stopper.called:
            self.stopper.callback(None)
        self.endpoint.flush()
        code: int = self.test.successResultOf(self.result)
        return code


class WatchCommandTests(SynchronousTestCase):
    """The command's output, state and exit codes."""

    def test_jsonl(self) -> None:
        """Each change is one JSON line: update, then remove (zero lifetimes)."""
        run = _Run(self, "--link", LINK, "--no-snapshot")
        xid = run.factory.last.xid
        run.send(
            change(xid, client_data(1, ["2001:db8:1::1"])),
            change(xid, removal(1, ["2001:db8:1::1"])),
        )
        self.assertEqual(run.stop(), 0)
        lines = [json.loads(line) for line in run.out.getvalue().splitlines()]
        self.assertEqual([line["event"] for line in lines], ["update", "remove"])
        self.assertEqual(lines[0]["binding"]["addresses"][0]["address"], "2001:db8:1::1")

    def test_routes(self) -> None:
        """routes: replace for a delegated prefix, del when it goes or is removed."""
        run = _Run(self, "--link", LINK, "--no-snapshot", "--format", "routes")
        xid = run.factory.last.xid
        run.send(change(xid, client_data(1, ["2001:db8:1::1"], ["2001:db8:ff01::/56"])))
        run.send(change(xid, client_data(1, ["2001:db8:1::1"], ["2001:db8:ff02::/56"])))
        run.send(change(xid, removal(1, ["2001:db8:1::1"], ["2001:db8:ff02::/56"])))
        self.assertEqual(run.stop(), 0)
        self.assertEqual(
            run.out.getvalue().splitlines(),
            [
                "ip -6 route replace 2001:db8:ff01::/56 via 2001:db8:1::1",
                "ip -6 route replace 2001:db8:ff02::/56 via 2001:db8:1::1",
                "ip -6 route del 2001:db8:ff01::/56",
                "ip -6 route del 2001:db8:ff02::/56",
            ],
        )

    def test_state_file_resumes(self) -> None:
        """--state: the replica and base time are saved at exit and resumed (8.3 start time)."""
        path = self.mktemp()
        run = _Run(self, "--link", LINK, "--no-snapshot", "--state", path, "--format", "none")
        xid = run.factory.last.xid
        run.send(change(xid, client_data(1, ["2001:db8:1::1"], ["2001:db8:ff01::/56"]), 1234))
        self.assertEqual(run.stop(), 0)
        _, _, base_time, replica = load_state(path)
        self.assertEqual(base_time, 1234)
        self.assertEqual(len(replica), 1)
        again = _Run(self, "--link", LINK, "--state", path, "--format", "none")
        self.assertEqual(again.factory.last.active.option(LQStartTime), LQStartTime(1234))
        again.send(catch_up_complete(again.factory.last.xid, 1300))
        self.assertEqual(again.stop(), 0)
        self.assertEqual(load_state(path)[2], 1300)
        self.assertEqual(load_state(path)[3], replica)
        self.assertEqual(
            [name for name in os.listdir(os.path.dirname(path))], [os.path.basename(path)]
        )

    def test_state_for_another_query(self) -> None:
        """A state file of another query is refused (exit 2, one line), not used."""
        path = self.mktemp()
        _Run(self, "--link", LINK, "--no-snapshot", "--state", path).stop()
        run = _Run(self, "--link", "2001:db8:2::", "--state", path)
        self.assertEqual(self.successResultOf(run.result), 2)
        self.assertEqual(len(run.err.getvalue().splitlines()), 1)

    def test_refused(self) -> None:
        """A refusal ends the command with exit 3 and one line."""
        run = _Run(self, factory=FakeActiveServerFactory(refuse_active(StatusCode.NotSupported)))
        self.assertEqual(self.successResultOf(run.result), 3)
        self.assertIn("NotSupported", run.err.getvalue())

    def test_until_synchronised(self) -> None:
        """--until-synchronised exits 0 after catch-up completes."""
        run = _Run(self, "--link", LINK, "--until-synchronised", "--no-snapshot")
        run.clock.advance(0.1)
        run.endpoint.flush()
        self.assertEqual(self.successResultOf(run.result), 0)

    def test_every_binding_has_no_snapshot(self) -> None:
        """No query selector: no bulk query is sent (RFC 5460 has none for every binding),
        the watch runs on the live stream, and stderr gets one note, not an error."""
        run = _Run(self, "--format", "jsonl")
        xid = run.factory.last.xid
        run.send(change(xid, client_data(1, ["2001:db8:1::1"])))
        self.assertEqual(run.stop(), 0)
        self.assertEqual(
            [m.msg_type for p in run.factory.protocols for m in p.received],
            [MessageType.ACTIVELEASEQUERY],
        )
        (line,) = run.err.getvalue().splitlines()
        self.assertTrue(line.startswith("bulklq watch: note: "), line)
        self.assertIn("no initial snapshot", line)
        self.assertNotIn("error", line)
        self.assertEqual(len(run.out.getvalue().splitlines()), 1)

    def test_every_binding_no_snapshot_is_quiet(self) -> None:
        """--no-snapshot without a selector asked for no bulk query: stderr stays empty."""
        run = _Run(self, "--no-snapshot")
        self.assertEqual(run.stop(), 0)
        self.assertEqual(run.err.getvalue(), "")

    def test_every_binding_data_missing(self) -> None:
        """DataMissing on a watch of every binding: no fallback query, one note on stderr,
        the watch goes on (8.4.1)."""
        path = self.mktemp()
        first = _Run(self, "--no-snapshot", "--state", path, "--format", "none")
        first.send(change(first.factory.last.xid, client_data(1, ["2001:db8:1::1"]), 900))
        self.assertEqual(first.stop(), 0)
        factory = FakeActiveServerFactory(
            lambda protocol, query: protocol.send(data_missing_reply(query, 5000))
        )
        run = _Run(self, "--state", path, "--format", "none", factory=factory)
        self.assertEqual(
            [m.msg_type for p in factory.protocols for m in p.received],
            [MessageType.ACTIVELEASEQUERY],
        )
        self.assertEqual(run.stop(), 0)
        (line,) = run.err.getvalue().splitlines()
        self.assertTrue(line.startswith("bulklq watch: note: "), line)
        self.assertIn("DataMissing", line)

    def test_partial_tls_arguments(self) -> None:
        """--tls-cert without --tls-key and --tls-ca: exit 2 with one line."""
        run = _Run(self, "--tls-cert", "x.pem")
        self.assertEqual(self.successResultOf(run.result), 2)
        self.assertIn("--tls-key", run.err.getvalue())
        self.assertNotEqual(EXIT_TLS, 2)

    def test_tls_direct_needs_certificates(self) -> None:
        """--tls-direct without the --tls-* files: exit 2 with one line."""
        run = _Run(self, "--tls-direct")
        self.assertEqual(self.successResultOf(run.result), 2)
        (line,) = run.err.getvalue().splitlines()
        self.assertIn("--tls-direct", line)


class TLSDirectTests(TestCase):
    """
    C{bulklq watch --tls-direct} against the real service's C{ssl:} listener (TLS from the
    first octet, no STARTTLS), mutual TLS with certificates generated at test time
    (RFC 7653 section 9.1).
    """

    def setUp(self) -> Deferred[None]:
        from twisted.internet import reactor

        self.reactor: Any = reactor
        self.certs = write_certificates(Path(self.mktemp()))
        self.store = MemoryBindingStore([make_link("link-1", ["2001:db8:1::/64"])], clock=reactor)
        config = ServerConfig(SERVER_DUID, allow=(parse_access_rule("127.0.0.0/8"),))
        service = BulkLeasequeryService(
            self.store,
            config,
            ["ssl:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.1"],
            reactor=reactor,
            active=ActiveConfig(
                enabled=True,
                tls=tls_options(self.certs.server_cert, self.certs.server_key, self.certs.ca),
            ),
        )
        service.startService()
        self.addCleanup(service.stopService)
        self.service = service
        listening: Deferred[None] = service.listening
        return listening

    def watch(
        self, cert: Path, key: Path, *argv: str, listener: int = 0, direct: bool = True
    ) -> tuple[Deferred[int], Any, Any, Any]:
        """
        Run C{bulklq watch} on the reactor against C{listener} (0: C{ssl:}, 1: C{tcp:}),
        with C{--tls-direct} if C{direct}: (exit status, stop, out, err).
        """
        port = self.service.ports[listener].getHost().port
        arguments = build_parser().parse_args(
            [
                "watch",
                f"127.0.0.1:{port}",
                "--requestor-duid",
                str(REQUESTOR_DUID),
                *(["--tls-direct"] if direct else []),
                "--tls-cert",
                str(cert),
                "--tls-key",
                str(key),
                "--tls-ca",
                str(self.certs.ca),
                "--tls-name",
                "localhost",
                "--connect-timeout",
                "10",
                *argv,
            ]
        )
        out, err = io.StringIO(), io.StringIO()
        stop: Deferred[None] = Deferred()
        result = Deferred.fromCoroutine(run_watch(self.reactor, arguments, out, err, stop=stop))

        def stopped() -> Deferred[int]:
            if not stop.called:
                stop.callback(None)
            return result

        self.addCleanup(stopped)
        return result, stop, out, err

    def test_every_binding_over_ssl_listener(self) -> None:
        """A watch of every binding over TLS from the first octet gets the live changes; the
        only line on stderr is the note that there is no snapshot (no MalformedQuery)."""

        async def scenario() -> None:
            result, stop, out, err = self.watch(self.certs.requestor_cert, self.certs.requestor_key)
            binding = make_binding(1, "link-1", cltt=int(self.reactor.seconds()))
            for _ in range(200):
                if out.getvalue():
                    break
                # Until the active query is registered a write is not delivered: repeat it.
                self.store.put(binding)
                await deferLater(self.reactor, 0.05)
            stop.callback(None)
            self.assertEqual(await result, 0)
            line = json.loads(out.getvalue().splitlines()[0])
            self.assertEqual(line["event"], "update")
            (note,) = err.getvalue().splitlines()
            self.assertTrue(note.startswith("bulklq watch: note: no initial snapshot"), note)

        return Deferred.fromCoroutine(scenario())  # type: ignore[return-value]

    def test_snapshot_over_ssl_listener(self) -> None:
        """With a selector, the snapshot's bulk query goes over TLS from the first octet as
        well: --until-synchronised prints every binding on the link and exits 0."""
        now = int(self.reactor.seconds())
        for number in range(1, 4):
            self.store.put(make_binding(number, "link-1", cltt=now))

        async def scenario() -> None:
            result, _, out, err = self.watch(
                self.certs.requestor_cert,
                self.certs.requestor_key,
                "--link",
                "2001:db8:1::1",
                "--until-synchronised",
            )
            self.assertEqual(await result, 0)
            self.assertEqual(err.getvalue(), "")
            self.assertEqual(len(out.getvalue().splitlines()), 3)

        return Deferred.fromCoroutine(scenario())  # type: ignore[return-value]

    def test_direct_to_plain_listener(self) -> None:
        """8.2 (a failed handshake is reported and the connection closed): --tls-direct to a
        plain port gets no handshake; exit 6 with one line, not a silent retry loop."""

        async def scenario() -> None:
            result, _, _, err = self.watch(
                self.certs.requestor_cert, self.certs.requestor_key, listener=1
            )
            self.assertEqual(await result, EXIT_TLS)
            (line,) = err.getvalue().splitlines()
            self.assertIn("TLS handshake", line)

        return Deferred.fromCoroutine(scenario())  # type: ignore[return-value]

    def test_starttls_to_ssl_listener(self) -> None:
        """Without --tls-direct, STARTTLS to an C{ssl:} port is a TLS failure: exit 6."""

        async def scenario() -> None:
            result, _, _, err = self.watch(
                self.certs.requestor_cert, self.certs.requestor_key, direct=False
            )
            self.assertEqual(await result, EXIT_TLS)
            self.assertEqual(len(err.getvalue().splitlines()), 1)

        return Deferred.fromCoroutine(scenario())  # type: ignore[return-value]

    def test_stranger_refused(self) -> None:
        """9.1 / 8.2: a requestor certificate from another CA fails the TLS handshake: exit
        6 with one line, not a retry loop."""

        async def scenario() -> None:
            result, _, out, err = self.watch(self.certs.stranger_cert, self.certs.stranger_key)
            self.assertEqual(await result, EXIT_TLS)
            self.assertEqual(out.getvalue(), "")
            (line,) = err.getvalue().splitlines()
            self.assertIn("TLS", line)

        return Deferred.fromCoroutine(scenario())  # type: ignore[return-value]
