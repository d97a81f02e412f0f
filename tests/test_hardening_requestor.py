"""
A hostile server, for the requestor (issue 7): over-long lengths, endless DATA, wrong xids,
a DONE for an unknown xid, a stream that never ends. The requestor must never crash, and
its memory must never grow beyond what the caller asked to keep.

The requestor protocol runs over a L{StringTransport} on a L{Clock}; the test writes the
hostile server's octets into it directly, with the builders of L{tests.fake_server}.
"""

from __future__ import annotations

import random
import struct
import tracemalloc
from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from bulklq.client import (
    MAX_LEASES_PER_BINDING,
    BulkLeasequeryClientProtocol,
    LeaseQuery,
    QueryStatus,
    ServerResult,
)
from bulklq.wire import Duid, decode_message

from .fake_server import REQUESTOR_DUID, client_data, data, done, frame, reply
from .test_hardening_harness import FailureCounter

QUERY = LeaseQuery.by_relay_id(Duid.en(32473, b"relay-1"))


class HostileServerTests(SynchronousTestCase):
    """Whatever the server sends, the requestor ends each query with a result."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.protocol = BulkLeasequeryClientProtocol(
            REQUESTOR_DUID, self.clock, data_timeout=60, rng=random.Random(3)
        )
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    def send_query(self, **options: Any) -> tuple[int, Any]:
        """Send L{QUERY}; its xid and Deferred."""
        self.transport.clear()
        deferred = self.protocol.query(QUERY, **options)
        message = decode_message(self.transport.value()[2:])
        return message.transaction_id, deferred

    def lose(self) -> None:
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        self.protocol.connectionLost(Failure(ConnectionDone()))

    def result(self, deferred: Any) -> ServerResult:
        value: ServerResult = self.successResultOf(deferred)
        return value

    def test_over_long_length(self) -> None:
        """
        A size prefix of 65535 followed by fewer octets, then silence: the requestor
        buffers at most that one frame, and the data timeout ends the query as a timeout
        (R14); a length bigger than the message inside it (an option running past the
        end) is discarded without harm.
        """
        xid, deferred = self.send_query()
        inner = reply(xid, client_data(1, ["2001:db8::1"])).encode()
        broken = bytearray(inner)
        struct.pack_into("!H", broken, 6, 0xFFF0)  # CLIENTID's length runs past the end
        with FailureCounter() as failures:
            self.protocol.dataReceived(frame(bytes(broken)))
            self.protocol.dataReceived(b"\xff\xff" + b"\x0f" * 60000)
            self.assertNoResult(deferred)
            self.clock.advance(60)
        self.assertTrue(self.transport.disconnecting)
        self.assertLessEqual(len(self.protocol._unprocessed), 65537)
        self.lose()
        result = self.result(deferred)
        self.assertEqual(result.status, QueryStatus.TIMEOUT)
        self.assertEqual(failures.count, 0, failures.examples)

    def test_wrong_xids(self) -> None:
        """
        REPLY, DATA and DONE-less streams carrying other xids are discarded (R11, R13);
        the query's own answer still completes it.
        """
        xid, deferred = self.send_query()
        other = (xid + 1) % (1 << 24)
        with FailureCounter() as failures:
            self.protocol.dataReceived(
                frame(
                    reply(other, client_data(9, ["2001:db8::9"])),
                    data(other, client_data(8, ["2001:db8::8"])),
                    reply(xid, client_data(1, ["2001:db8::1"])),
                    data(other, client_data(7, ["2001:db8::7"])),
                    data(xid, client_data(2, ["2001:db8::2"])),
                    done(xid),
                )
            )
        result = self.result(deferred)
        self.assertEqual(result.status, QueryStatus.SUCCESS)
        self.assertEqual(len(result.bindings), 2)
        self.assertEqual(failures.count, 0, failures.examples)

    def test_done_for_unknown_xid(self) -> None:
        """
        A DONE for an xid that is not outstanding closes the connection (R6), and the
        outstanding query ends as incomplete, never as a success (R9).
        """
        xid, deferred = self.send_query()
        self.protocol.dataReceived(frame(reply(xid, client_data(1, ["2001:db8::1"]))))
        self.protocol.dataReceived(frame(done((xid + 5) % (1 << 24))))
        self.assertTrue(self.transport.disconnecting)
        self.lose()
        result = self.result(deferred)
        self.assertEqual(result.status, QueryStatus.INCOMPLETE)
        self.assertIn("unknown transaction-id", result.error or "")

    def endless(self, xid: int, count: int, same_client: bool = False) -> None:
        """C{count} DATA messages after a REPLY, fed in chunks; no DONE."""
        self.protocol.dataReceived(frame(reply(xid, client_data(1, ["2001:db8::1"]))))
        chunk = []
        for number in range(2, count + 2):
            client = 1 if same_client else number
            address = f"2001:db8:{number >> 16:x}:{number & 0xFFFF:x}::1"
            chunk.append(data(xid, client_data(client, [address])))
            if len(chunk) == 500:
                self.protocol.dataReceived(frame(*chunk))
                chunk = []
                if self.transport.disconnecting:
                    return
        if chunk:
            self.protocol.dataReceived(frame(*chunk))

    def test_endless_data_not_kept(self) -> None:
        """
        10,000 DATA messages, no DONE, for a query that keeps nothing (C{keep=False},
        bindings go to a callback): memory held by the requestor does not grow with the
        stream (well under 1 MB of new allocations still alive, while keeping the
        bindings would take tens of MB); the query is not a success.
        """
        xid, deferred = self.send_query(keep=False, on_binding=lambda binding: None)
        tracemalloc.start()
        try:
            before = tracemalloc.take_snapshot()
            self.endless(xid, 10_000)
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
        growth = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
        self.assertLess(growth, 1_000_000)
        self.assertNoResult(deferred)
        self.lose()
        result = self.result(deferred)
        self.assertEqual(result.status, QueryStatus.INCOMPLETE)
        self.assertEqual(result.received, 10_001)

    def test_endless_data_bounded_by_max_bindings(self) -> None:
        """
        An endless stream of distinct clients with C{max_bindings=1000}: the query ends
        as incomplete at the 1001st, the connection is aborted, and nothing more is kept.
        """
        xid, deferred = self.send_query(max_bindings=1000)
        self.endless(xid, 5_000)
        result = self.result(deferred)
        self.assertEqual(result.status, QueryStatus.INCOMPLETE)
        self.assertEqual(len(result.bindings), 1000)
        self.assertTrue(self.transport.disconnecting)

    def test_endless_data_one_client(self) -> None:
        """
        An endless stream about one client, each DATA with a new address: the merged
        binding cannot grow without bound either: beyond C{MAX_LEASES_PER_BINDING} leases
        the query ends as incomplete and the connection is aborted.
        """
        xid, deferred = self.send_query(max_bindings=1000)
        self.endless(xid, 5_000, same_client=True)
        result = self.result(deferred)
        self.assertEqual(result.status, QueryStatus.INCOMPLETE)
        self.assertIn("leases", result.error or "")
        self.assertTrue(self.transport.disconnecting)
        (binding,) = result.bindings
        self.assertEqual(len(binding.addresses), MAX_LEASES_PER_BINDING)

    def test_never_ending_stream_cancellable(self) -> None:
        """
        A stream that keeps trickling DATA (one message every 59 s, under the data
        timeout) never ends by itself; the caller's cancel aborts the connection and the
        Deferred fails with CancelledError, nothing logged as a failure.
        """
        from twisted.internet.defer import CancelledError

        xid, deferred = self.send_query(keep=False)
        self.protocol.dataReceived(frame(reply(xid, client_data(1, ["2001:db8::1"]))))
        for number in range(200):
            self.clock.advance(59)
            self.protocol.dataReceived(frame(data(xid, client_data(number + 2, ["::1"]))))
        self.assertNoResult(deferred)
        with FailureCounter() as failures:
            deferred.cancel()
        self.failureResultOf(deferred, CancelledError)
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(failures.count, 0, failures.examples)

    def test_random_octets(self) -> None:
        """
        300 connections each fed 20 random chunks (random octets, torn frames, random
        frames): no exception escapes, nothing is logged as a failure, and every
        query ends with a result once the connection is lost (R9).
        """
        rng = random.Random(17)
        with FailureCounter() as failures:
            for _ in range(300):
                self.setUp()
                xid, deferred = self.send_query(max_bindings=50)
                for _ in range(20):
                    kind = rng.randrange(3)
                    if kind == 0:
                        chunk = rng.randbytes(rng.randrange(200))
                    elif kind == 1:
                        message = bytearray(
                            reply(xid, client_data(rng.randrange(9), ["::1"])).encode()
                        )
                        for _ in range(rng.randrange(4)):
                            message[rng.randrange(len(message))] = rng.randrange(256)
                        chunk = frame(bytes(message))
                    else:
                        message = bytearray(data(xid, client_data(rng.randrange(99), [])).encode())
                        message[0] = rng.choice((15, 16, 17, 7, 14))
                        chunk = frame(bytes(message))[: rng.randrange(1, 60)]
                    self.protocol.dataReceived(chunk)
                self.lose()
                self.assertIsInstance(self.result(deferred), ServerResult)
        self.assertEqual(failures.count, 0, failures.examples)
