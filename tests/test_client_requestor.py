"""
Tests for L{bulklq.client.Requestor}: connecting, timeouts, retries with back-off, and
asking several servers (R3, R4, R14-R18), against the scripted fake server in memory.
"""

from __future__ import annotations

import random
from ipaddress import IPv6Address

from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from bulklq.client import (
    LeaseQuery,
    QueryResult,
    QueryStatus,
    Requestor,
    RequestorOptions,
    ServerAddress,
    ServerResult,
)
from bulklq.model import Binding
from bulklq.wire import Duid, StatusCode

from .fake_server import (
    OTHER_SERVER_DUID,
    REQUESTOR_DUID,
    FakeServerFactory,
    InMemoryEndpoint,
    answer,
    client_data,
    client_duid,
    close_mid_stream,
    interleave_pairs,
    kea_style,
    overlong_length,
    refuse,
    silent,
    stall,
    status,
    terminated_then,
)

NOW = 1_700_000_000
RELAY = Duid.uuid(bytes(range(16)))
QUERY = LeaseQuery.by_relay_id(RELAY)


class ServerAddressTests(SynchronousTestCase):
    """Parsing SERVER arguments; the port (R4)."""

    def test_forms(self) -> None:
        """R4: host, host:port, a bare IPv6 address and [v6]:port; 547 by default."""
        cases = {
            "dhcp.example": ServerAddress("dhcp.example", 547),
            "dhcp.example:1547": ServerAddress("dhcp.example", 1547),
            "192.0.2.1": ServerAddress("192.0.2.1", 547),
            "2001:db8::1": ServerAddress("2001:db8::1", 547),
            "[2001:db8::1]": ServerAddress("2001:db8::1", 547),
            "[2001:db8::1]:5470": ServerAddress("2001:db8::1", 5470),
            "[fe80::1%eth0]:547": ServerAddress("fe80::1%eth0", 547),
        }
        for text, expected in cases.items():
            self.assertEqual(ServerAddress.parse(text), expected)
        self.assertEqual(ServerAddress.parse("h", default_port=10547).port, 10547)
        self.assertEqual(str(ServerAddress("2001:db8::1", 547)), "[2001:db8::1]:547")

    def test_errors(self) -> None:
        """Bad SERVER texts raise ValueError with one line."""
        for text in ("[2001:db8::1", "[nothost]:5", "h:0", "h:99999", "h:x", ":547", "[::1]x"):
            with self.assertRaises(ValueError) as caught:
                ServerAddress.parse(text)
            self.assertNotIn("\n", str(caught.exception))

    def test_stream_endpoints_only(self) -> None:
        """R3: the requestor only speaks TCP; every query type goes over a stream endpoint."""
        clock = MemoryReactorClock()
        for text, kind in (
            ("2001:db8::1", TCP6ClientEndpoint),
            ("192.0.2.1", TCP4ClientEndpoint),
            ("dhcp.example", HostnameEndpoint),
        ):
            endpoint = ServerAddress.parse(text).endpoint(clock, 30)
            self.assertIsInstance(endpoint, kind)
            self.assertTrue(IStreamClientEndpoint.providedBy(endpoint))


class RequestorTestCase(SynchronousTestCase):
    """A requestor on a Clock, connecting to fake servers in memory."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.endpoints: dict[ServerAddress, InMemoryEndpoint] = {}

    def requestor(self, **options: object) -> Requestor:
        """A requestor whose endpoints come from C{self.endpoints}."""
        return Requestor(
            REQUESTOR_DUID,
            self.clock,
            RequestorOptions(**options),  # type: ignore[arg-type]
            self.endpoints.__getitem__,
            random.Random(3),
        )

    def serve(self, name: str, behaviour: object, **kwargs: object) -> InMemoryEndpoint:
        """Register a fake server for C{name}."""
        endpoint = InMemoryEndpoint(
            FakeServerFactory(behaviour),  # type: ignore[arg-type]
            **kwargs,  # type: ignore[arg-type]
        )
        self.endpoints[ServerAddress.parse(name)] = endpoint
        return endpoint

    def run_until(self, results: list[object], step: float = 1.0, limit: int = 5000) -> None:
        """Pump every connection and advance the clock until C{results} has something."""
        for _ in range(limit):
            for endpoint in self.endpoints.values():
                endpoint.flush()
            if results:
                return
            self.clock.advance(step)
        self.fail("no result")

    def tearDown(self) -> None:
        self.assertEqual(self.clock.getDelayedCalls(), [])


class SingleServerTests(RequestorTestCase):
    """One server."""

    def test_success_and_close(self) -> None:
        """R15: after the DONE the requestor closes the connection; the result is complete."""
        endpoint = self.serve("::1", answer([client_data(n, [f"2001:db8::{n}"]) for n in (1, 2)]))
        results: list[ServerResult] = []
        self.requestor().query("::1", QUERY).addCallback(results.append)
        self.run_until(results)
        (result,) = results
        self.assertEqual(result.status, QueryStatus.SUCCESS)
        self.assertEqual(result.server, "[::1]:547")
        self.assertEqual(len(result.bindings), 2)
        self.assertEqual(result.attempts, 1)
        (server,) = endpoint.server_factory.protocols  # type: ignore[attr-defined]
        self.assertTrue(server.transport.disconnected)

    def test_kea_style_merged(self) -> None:
        """R16: Kea's one-lease-per-CLIENT_DATA stream gives one binding per client and link."""
        self.serve("::1", kea_style(5))
        results: list[ServerResult] = []
        streamed: list[Binding] = []
        self.requestor().query("::1", QUERY, streamed.append).addCallback(results.append)
        self.run_until(results)
        (result,) = results
        self.assertEqual((len(streamed), len(result.bindings)), (10, 5))
        for binding in result.bindings:
            self.assertEqual((len(binding.addresses), len(binding.prefixes)), (1, 1))

    def test_server_error_not_retried(self) -> None:
        """R10: an error status other than QueryTerminated is final: no retry."""
        endpoint = self.serve("::1", refuse(StatusCode.NotAllowed, "go away"))
        results: list[ServerResult] = []
        self.requestor().query("::1", QUERY).addCallback(results.append)
        self.run_until(results)
        self.assertEqual(results[0].status, QueryStatus.SERVER_ERROR)
        self.assertEqual(endpoint.attempts, 1)

    def test_connect_retries_with_backoff(self) -> None:
        """R17: refused connections are retried with exponential back-off until one works."""
        endpoint = self.serve("::1", answer([client_data(1)]), refuse=3)
        results: list[ServerResult] = []
        requestor = self.requestor(initial_backoff=2.0)
        requestor.query("::1", QUERY).addCallback(results.append)
        self.assertEqual(endpoint.attempts, 1)
        waits = []
        while endpoint.attempts < 4:
            (call,) = self.clock.getDelayedCalls()
            waits.append(call.getTime() - self.clock.seconds())
            self.clock.advance(waits[-1])
        self.run_until(results)
        self.assertEqual(results[0].status, QueryStatus.SUCCESS)
        self.assertEqual(results[0].attempts, 4)
        for number, wait in enumerate(waits, start=1):
            ceiling = 2.0 * 2 ** (number - 1)
            self.assertTrue(ceiling / 2 <= wait <= ceiling, (number, wait))

    def test_options_validated(self) -> None:
        """Nonsense options are refused when built, with the option's name."""
        for bad in (
            {"data_timeout": 0},
            {"connect_timeout": -1},
            {"retries": -1},
            {"max_backoff": 0},
            {"max_bindings": 0},
        ):
            with self.assertRaises(ValueError) as caught:
                RequestorOptions(**bad)  # type: ignore[arg-type]
            self.assertIn(next(iter(bad)), str(caught.exception))

    def test_backoff_capped(self) -> None:
        """R17: the back-off doubles up to a 60 s ceiling, with jitter below it."""
        requestor = self.requestor()
        waits = [requestor.backoff(attempt) for attempt in range(1, 40)]
        self.assertTrue(all(wait <= 60 for wait in waits))
        self.assertTrue(all(wait >= 30 for wait in waits[7:]))
        self.assertGreater(len({round(wait, 3) for wait in waits[10:]}), 10)

    def test_retry_limit(self) -> None:
        """R17: after the retry limit the result is a connection failure with the reason."""
        endpoint = self.serve("::1", silent, refuse=100)
        results: list[ServerResult] = []
        self.requestor(retries=2).query("::1", QUERY).addCallback(results.append)
        self.run_until(results)
        (result,) = results
        self.assertEqual(result.status, QueryStatus.CONNECTION_FAILED)
        self.assertEqual((result.attempts, endpoint.attempts), (3, 3))
        self.assertIn("refused", result.error or "")

    def test_connect_timeout(self) -> None:
        """R17: a connection attempt is abandoned after the connect timeout (30 s)."""
        endpoint = self.serve("::1", silent, hang=1)
        results: list[ServerResult] = []
        self.requestor(retries=0).query("::1", QUERY).addCallback(results.append)
        self.clock.advance(29)
        self.assertEqual(results, [])
        self.clock.advance(1)
        (result,) = results
        self.assertEqual(result.status, QueryStatus.CONNECTION_FAILED)
        self.assertIn("30 s", result.error or "")
        self.assertTrue(endpoint.hanging[0].called)

    def test_query_terminated_waits(self) -> None:
        """
        R18: after DONE with QueryTerminated the requestor waits a short interval, then
        retries.
        """
        done_terminated = answer([client_data(1), client_data(2)], status(11, "busy"))
        endpoint = self.serve(
            "::1", terminated_then([done_terminated, answer([client_data(1), client_data(2)])])
        )
        results: list[ServerResult] = []
        self.requestor(initial_backoff=0.5, terminated_backoff=7.0).query("::1", QUERY).addCallback(
            results.append
        )
        endpoint.flush()
        (call,) = self.clock.getDelayedCalls()
        self.assertGreaterEqual(call.getTime() - self.clock.seconds(), 7.0)
        self.clock.advance(6.9)
        self.assertEqual(endpoint.attempts, 1)
        self.clock.advance(0.1)
        self.assertEqual(endpoint.attempts, 2)
        self.run_until(results)
        self.assertEqual(results[0].status, QueryStatus.SUCCESS)
        self.assertEqual(results[0].attempts, 2)

    def test_reply_query_terminated_retried(self) -> None:
        """R18: a REPLY with QueryTerminated (server busy) is also retried after a pause."""
        endpoint = self.serve(
            "::1", terminated_then([refuse(StatusCode.QueryTerminated), answer([])])
        )
        results: list[ServerResult] = []
        self.requestor().query("::1", QUERY).addCallback(results.append)
        self.run_until(results)
        self.assertEqual((results[0].status, endpoint.attempts), (QueryStatus.SUCCESS, 2))

    def test_stall_times_out(self) -> None:
        """R14: a server that stops sending is abandoned after the data timeout, then retried."""
        endpoint = self.serve("::1", stall([client_data(1), client_data(2)]))
        results: list[ServerResult] = []
        self.requestor(retries=1, data_timeout=300).query("::1", QUERY).addCallback(results.append)
        self.run_until(results, step=10)
        (result,) = results
        self.assertEqual(result.status, QueryStatus.TIMEOUT)
        self.assertEqual(endpoint.attempts, 2)
        self.assertGreaterEqual(self.clock.seconds() - NOW, 600)

    def test_close_mid_stream(self) -> None:
        """R9: a server closing before DONE gives an incomplete result, never a success."""
        self.serve("::1", close_mid_stream([client_data(1), client_data(2)]))
        results: list[ServerResult] = []
        self.requestor(retries=0).query("::1", QUERY).addCallback(results.append)
        self.run_until(results)
        self.assertEqual(results[0].status, QueryStatus.INCOMPLETE)
        self.assertEqual(len(results[0].bindings), 2)

    def test_overlong_length(self) -> None:
        """S1/R9: a size prefix longer than what follows, then a close: incomplete."""
        self.serve("::1", overlong_length([client_data(1), client_data(2)]))
        results: list[ServerResult] = []
        self.requestor(retries=0).query("::1", QUERY).addCallback(results.append)
        self.run_until(results)
        self.assertEqual(results[0].status, QueryStatus.INCOMPLETE)
        self.assertEqual(results[0].received, 1)


class MultiServerTests(RequestorTestCase):
    """R16: several servers in parallel."""

    def test_merge_most_recent_wins(self) -> None:
        """R16: the same client from two servers: merged, the most recent CLT_TIME wins."""
        self.serve(
            "[2001:db8::a]",
            answer([client_data(1, ["2001:db8::1"], clt_time=500, valid=100), client_data(2)]),
        )
        self.serve(
            "[2001:db8::b]:1547",
            answer(
                [client_data(1, ["2001:db8::1"], clt_time=5, valid=3000), client_data(3)],
                server=OTHER_SERVER_DUID,
            ),
        )
        results: list[QueryResult] = []
        self.requestor().query_all(["2001:db8::a", "[2001:db8::b]:1547"], QUERY).addCallback(
            results.append
        )
        self.run_until(results)
        (result,) = results
        self.assertTrue(result.complete)
        self.assertEqual(
            [b.client_id for b in result.bindings], [client_duid(n) for n in (1, 2, 3)]
        )
        first = result.bindings[0]
        self.assertEqual(first.cltt, NOW - 5)
        self.assertEqual(first.addresses[0].address, IPv6Address("2001:db8::1"))
        self.assertEqual(first.addresses[0].valid_lifetime, 3005)
        self.assertEqual(
            [r.server_duid for r in result.servers],
            [result.servers[0].server_duid, OTHER_SERVER_DUID],
        )

    def test_failure_keeps_other_data(self) -> None:
        """R16: one server failing is reported; the other servers' data is kept."""
        self.serve("2001:db8::a", answer([client_data(1), client_data(2)]))
        self.serve("2001:db8::b", silent, refuse=100)
        self.serve("2001:db8::c", refuse(StatusCode.NotConfigured))
        results: list[QueryResult] = []
        self.requestor(retries=1).query_all(
            ["2001:db8::a", "2001:db8::b", "2001:db8::c"], QUERY
        ).addCallback(results.append)
        self.run_until(results)
        (result,) = results
        self.assertFalse(result.complete)
        self.assertEqual(len(result.bindings), 2)
        self.assertEqual(
            [r.status for r in result.failures],
            [QueryStatus.CONNECTION_FAILED, QueryStatus.SERVER_ERROR],
        )


class PipelineTests(RequestorTestCase):
    """Several queries on one connection."""

    def test_interleaved_by_fake_server(self) -> None:
        """
        R13/R10: two pipelined queries answered interleaved message by message, with and
        without STATUS_CODE Success in DONE, both complete with their own bindings.
        """
        for done_status in (None, StatusCode.Success):
            datas = [client_data(n, [f"2001:db8::{n}"]) for n in range(1, 6)]
            endpoint = self.serve("::1", interleave_pairs(datas, done_status))
            connected: list[object] = []
            self.requestor().connect("::1").addCallback(connected.append)
            (protocol,) = connected
            results: list[ServerResult] = []
            protocol.query(QUERY).addCallback(results.append)  # type: ignore[attr-defined]
            link_query = LeaseQuery.by_link_address(IPv6Address("2001:db8::1"))
            protocol.query(link_query).addCallback(results.append)  # type: ignore[attr-defined]
            endpoint.flush()
            self.assertEqual([r.status for r in results], [QueryStatus.SUCCESS] * 2)
            self.assertEqual([len(r.bindings) for r in results], [5, 5])
            # The second query's stream started first, so it completes first.
            self.assertEqual(
                [{b.link_id for b in r.bindings} for r in results],
                [{"2001:db8::1"}, {"unknown"}],
            )
            protocol.transport.loseConnection()  # type: ignore[attr-defined]
            endpoint.flush()

    def test_pipelined_on_one_connection(self) -> None:
        """R13/S23: two queries on one connection, answered in turn, both complete."""
        endpoint = self.serve("::1", answer([client_data(1), client_data(2)]))
        connected: list[object] = []
        self.requestor().connect("::1").addCallback(connected.append)
        (protocol,) = connected
        results: list[ServerResult] = []
        protocol.query(QUERY).addCallback(results.append)  # type: ignore[attr-defined]
        protocol.query(QUERY, keep=False).addCallback(results.append)  # type: ignore[attr-defined]
        endpoint.flush()
        self.assertEqual([r.status for r in results], [QueryStatus.SUCCESS] * 2)
        self.assertEqual([len(r.bindings) for r in results], [2, 0])
        self.assertEqual([r.received for r in results], [2, 2])
        protocol.transport.loseConnection()  # type: ignore[attr-defined]
        endpoint.flush()
