"""
Limits under attack (issue 7): slowloris, floods, slow and stalled readers.

In memory on an injected clock, except the file-descriptor count, which needs real
sockets (loopback only). C{bench/torture.py} runs the same attacks at full size over TCP.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from bulklq.server import BulkLeasequeryFactory
from bulklq.stores.memory import MemoryBindingStore
from bulklq.wire import MessageType

from .test_hardening_access import answers, client_data_count, query_frame
from .test_hardening_faults import link_query
from .test_hardening_harness import (
    LINK,
    REQUESTOR_DUID,
    Harness,
    harness_bindings,
    harness_config,
)

#: Half a LEASEQUERY frame: the size prefix and a few octets of the message.
HALF_FRAME = link_query(1)[:20]


def attack_config(**changes: Any) -> Any:
    """The RFC's default limits (10 connections, 4 per requestor) with an open ACL."""
    values: dict[str, Any] = {"max_connections": 10, "max_connections_per_requestor": 4}
    values.update(changes)
    return harness_config(**values)


class SlowlorisTests(SynchronousTestCase):
    """Half a frame, then silence (RFC 5460 section 8)."""

    def test_one_address(self) -> None:
        """
        500 connections from one address send half a frame: the per-requestor cap admits
        4 and closes the other 496 at once (S17, S21); a requestor from another address
        that connects during the attack is served; the 4 are closed at the data timeout
        (S18), not before.
        """
        harness = Harness(bindings=5, config=attack_config())
        held = []
        refused = 0
        for _ in range(500):
            protocol, transport = harness.connect("2001:db8::bad")
            if protocol is None:
                refused += 1
                continue
            protocol.dataReceived(HALF_FRAME)
            held.append((protocol, transport))
        self.assertEqual((len(held), refused), (4, 496))
        self.assertEqual(harness.factory.stats.refusals["per-requestor-limit"], 496)
        harness.clock.advance(60)
        good, good_transport = harness.connect("2001:db8::100")
        assert good is not None
        good.dataReceived(query_frame(4, 0x10))
        sent = answers(good_transport)
        self.assertEqual(client_data_count(sent), 5)
        self.assertEqual(sent[-1].msg_type, MessageType.LEASEQUERY_DONE)
        harness.clock.advance(harness.config.data_timeout - 60 - 0.5)
        self.assertFalse(any(t.disconnecting for _, t in held))
        harness.clock.advance(1)
        self.assertTrue(all(t.disconnecting for _, t in held))
        self.assertEqual(harness.factory.stats.timeouts["data"], 4)
        for protocol, transport in [*held, (good, good_transport)]:
            harness.lose(protocol, transport)
        self.assertEqual(harness.clock.getDelayedCalls(), [])

    def test_many_addresses(self) -> None:
        """
        500 connections from 500 addresses of the ACL send half a frame and then
        nothing: they fill the pool (S16), but a requestor connecting after
        C{eviction_min_idle} seconds of their silence evicts the one silent the longest
        (S24) and is served. Each later attacker can only evict another stalled attacker,
        never a connection with a query in progress.
        """
        harness = Harness(bindings=5, config=attack_config())
        attackers = []
        for number in range(500):
            protocol, transport = harness.connect(f"2001:db8:bad::{number + 1:x}")
            if protocol is not None:
                protocol.dataReceived(HALF_FRAME)
                attackers.append((protocol, transport))
            harness.clock.advance(0.01)
        self.assertEqual(len(attackers), 10)
        harness.clock.advance(harness.factory.eviction_min_idle)
        good, good_transport = harness.connect("2001:db8::100", full=True)
        self.assertIsNotNone(good)
        assert good is not None
        self.assertEqual(harness.factory.stats.evictions, 1)
        self.assertTrue(attackers[0][1].disconnecting)
        harness.lose(*attackers[0])
        good.dataReceived(query_frame(4, 0x11, client=REQUESTOR_DUID))
        # The stream is in progress (the transport is full) when more attackers arrive,
        # long after the first ones stalled.
        self.assertEqual(client_data_count(answers(good_transport)), 2)
        harness.clock.advance(harness.factory.eviction_min_idle)
        for number in range(30):
            protocol, transport = harness.connect(f"2001:db8:bad:1::{number + 1:x}")
            if protocol is not None:
                protocol.dataReceived(HALF_FRAME)
                attackers.append((protocol, transport))
        self.assertFalse(good_transport.disconnecting)
        self.assertLessEqual(len(harness.factory.connections), 10)
        while answers(good_transport)[-1].msg_type != MessageType.LEASEQUERY_DONE:
            good_transport.producer.resumeProducing()
        self.assertEqual(client_data_count(answers(good_transport)), 5)
        for protocol, transport in [*attackers, (good, good_transport)]:
            harness.lose(protocol, transport)

    def test_trickle_many_addresses(self) -> None:
        """
        Attackers from 10 addresses of the ACL fill the pool and keep trickling their
        frames, one octet every 2 seconds, so none is ever silent for
        C{eviction_min_idle}: a frame that is still incomplete is no progress, so a
        requestor connecting later evicts the connection idle the longest (S24) and is
        served.
        """
        harness = Harness(bindings=5, config=attack_config())
        frame = link_query(3)
        attackers = []
        for number in range(10):
            protocol, transport = harness.connect(f"2001:db8:bad::{number + 1:x}")
            assert protocol is not None
            attackers.append((protocol, transport))
        for step in range(8):
            harness.clock.advance(2)
            for protocol, transport in attackers:
                if not transport.disconnecting:
                    protocol.dataReceived(frame[step : step + 1])
        good, good_transport = harness.connect("2001:db8::100")
        self.assertIsNotNone(good, "a trickling attacker held its slot")
        assert good is not None
        good.dataReceived(query_frame(4, 0x12))
        self.assertEqual(client_data_count(answers(good_transport)), 5)
        self.assertEqual(harness.factory.stats.evictions, 1)
        for protocol, transport in [*attackers, (good, good_transport)]:
            harness.lose(protocol, transport)

    def test_trickle(self) -> None:
        """
        A frame trickled one octet at a time, each just before the data timeout would
        fire if it restarted on every octet, is still closed once the data timeout has
        passed since the frame began (S18): trickling cannot hold a connection.
        """
        harness = Harness(config=attack_config(data_timeout=30.0))
        protocol, transport = harness.connect()
        assert protocol is not None
        frame = link_query(2)
        sent = 0
        while not transport.disconnecting and sent < len(frame):
            protocol.dataReceived(frame[sent : sent + 1])
            sent += 1
            harness.clock.advance(29)
        self.assertTrue(transport.disconnecting)
        self.assertLessEqual(sent, 2)
        harness.lose(protocol, transport)


class FloodTests(SynchronousTestCase):
    """Connections over the limits are closed at once (S16, S17)."""

    def test_over_limit_closed_at_once(self) -> None:
        """
        With 10 busy connections (a query in progress each), 1,000 more from 100
        addresses are all refused at once; the 10 are not disturbed.
        """
        harness = Harness(bindings=9, config=attack_config())
        busy = []
        for number in range(10):
            protocol, transport = harness.connect(f"2001:db8::{number + 1:x}", full=True)
            assert protocol is not None
            protocol.dataReceived(link_query(0x20 + number))
            busy.append((protocol, transport))
        for number in range(1000):
            protocol, _ = harness.connect(f"2001:db8:f::{number % 100 + 1:x}")
            self.assertIsNone(protocol)
        self.assertEqual(harness.factory.stats.refusals["limit"], 1000)
        for protocol, transport in busy:
            self.assertFalse(transport.disconnecting)
            while answers(transport)[-1].msg_type != MessageType.LEASEQUERY_DONE:
                transport.producer.resumeProducing()
            self.assertEqual(client_data_count(answers(transport)), 9)
            harness.lose(protocol, transport)


def open_fds() -> int:
    """The number of file descriptors this process has open."""
    return len(os.listdir("/proc/self/fd"))


class _Closer(Protocol):
    """Connects, then closes at once; fires C{done} when the connection is gone."""

    def __init__(self, done: Deferred[None]) -> None:
        self.done = done

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.done.callback(None)


class _CloserFactory(ClientFactory):
    def __init__(self, done: Deferred[None]) -> None:
        self.done = done

    def buildProtocol(self, addr: object) -> _Closer:
        return _Closer(self.done)

    def clientConnectionFailed(self, connector: object, reason: Failure) -> None:
        self.done.callback(None)


class DescriptorTests(TestCase):
    """Connect/close cycles over loopback leave no descriptor behind."""

    def test_connect_close_cycles(self) -> None:
        """
        300 connect/close cycles against a real listening server, in batches of 30
        (over the limit of 10, so most are refused at once): afterwards the process has
        exactly as many open file descriptors as before, and the factory holds no
        connection.
        """
        if not os.path.isdir("/proc/self/fd"):
            self.skipTest("no /proc/self/fd on this system")
        store = MemoryBindingStore([LINK], clock=reactor)  # type: ignore[arg-type]
        store.put_many(harness_bindings(3))
        factory = BulkLeasequeryFactory(store, attack_config(), reactor)  # type: ignore[arg-type]
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)

        async def run() -> None:
            await deferLater(reactor, 0)  # type: ignore[arg-type]
            before = open_fds()
            for _ in range(10):
                batch = []
                for _ in range(30):
                    done: Deferred[None] = Deferred()
                    reactor.connectTCP(  # type: ignore[attr-defined]
                        "127.0.0.1", port.getHost().port, _CloserFactory(done)
                    )
                    batch.append(done)
                for done in batch:
                    await done
            for _ in range(200):
                if not factory.connections:
                    break
                await deferLater(reactor, 0.01)  # type: ignore[arg-type]
            self.assertEqual(factory.connections, {})
            self.assertEqual(open_fds(), before)
            self.assertEqual(
                factory.stats.connections_accepted + sum(factory.stats.refusals.values()), 300
            )

        return ensureDeferred(run())


class ReaderTests(SynchronousTestCase):
    """Requestors that read slowly or not at all (S19, S20)."""

    def test_slow_reader_bounded(self) -> None:
        """
        A requestor whose transport accepts one page at a time pulls 2,000 bindings:
        the server never writes more than one page (100 bindings) between two
        resumptions, fetches a page only after the previous one was accepted, and the
        stream completes with every binding.
        """
        harness = Harness(bindings=2000, config=attack_config(page_size=100))
        fetches = []
        inner_fetch = harness.store.fetch

        def counting_fetch(*args: Any) -> Any:
            fetches.append(args)
            return inner_fetch(*args)

        harness.store.fetch = counting_fetch
        protocol, transport = harness.connect(full=True)
        assert protocol is not None
        protocol.dataReceived(link_query(0x30))
        received = 0
        largest = 0
        done = False
        rounds = 0
        while not done:
            written = answers(transport)
            received += client_data_count(written)
            largest = max(largest, client_data_count(written))
            done = bool(written) and written[-1].msg_type == MessageType.LEASEQUERY_DONE
            self.assertEqual(len(fetches), rounds + 1)
            transport.clear()
            transport.producer.resumeProducing()
            rounds += 1
        self.assertEqual(received, 2000)
        self.assertEqual(largest, 100)
        harness.lose(protocol, transport)

    def test_stalled_reader_closed(self) -> None:
        """
        A requestor that stops reading mid-stream: the connection is aborted once writes
        have been blocked for the data timeout (S19), not before; the store is not asked
        for another page meanwhile.
        """
        harness = Harness(bindings=50, config=attack_config(data_timeout=120.0))
        protocol, transport = harness.connect(full=True)
        assert protocol is not None
        protocol.dataReceived(link_query(0x31))
        written = len(transport.value())
        harness.clock.advance(119.5)
        self.assertFalse(transport.disconnecting)
        harness.clock.advance(1)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(transport.value()), written)
        self.assertEqual(harness.factory.stats.timeouts["write"], 1)
        harness.lose(protocol, transport)
        self.assertEqual(harness.clock.getDelayedCalls(), [])


class AmplificationTests(SynchronousTestCase):
    """Queries answered at once (errors, STARTTLS) respect backpressure too (S19, S20)."""

    def test_cheap_queries_never_read(self) -> None:
        """
        A requestor that never reads sends 20,000 queries the server answers at once
        without the store (unknown query type, STARTTLS, NotConfigured, NotAllowed): once
        the transport says its buffer is full, the server stops reading instead of
        buffering a reply for every query; what it wrote stays below 100 replies.
        """
        from bulklq.config import parse_access_rule
        from bulklq.wire import (
            ClientId,
            LQQuery,
            Message,
            MessageType,
        )

        from .test_hardening_harness import REQUESTOR_DUID, frame

        allow = (parse_access_rule("::/0:link,address"),)
        harness = Harness(config=attack_config(allow=allow))
        protocol, transport = harness.connect(full=True)
        assert protocol is not None
        client = ClientId(REQUESTOR_DUID)
        cheap = [
            Message(MessageType.LEASEQUERY, 1, (client, LQQuery(77, LINK.address, ()))),
            Message(MessageType.STARTTLS, 2, (client,)),
            Message(MessageType.LEASEQUERY, 3, (client, LQQuery(4, LINK.address + (1 << 80), ()))),
            Message(MessageType.LEASEQUERY, 4, (client, LQQuery(3, LINK.address, ()))),
        ]
        octets = b"".join(frame(cheap[n % 4].encode()) for n in range(20_000))
        offset = 0
        # A real transport delivers nothing more once reading is paused.
        while offset < len(octets) and transport.producerState != "paused":
            protocol.dataReceived(octets[offset : offset + 65536])
            offset += 65536
        replies = len(answers(transport))
        self.assertGreater(replies, 0)
        self.assertLess(replies, 100)
        self.assertEqual(transport.producerState, "paused")
        harness.lose(protocol, transport)
