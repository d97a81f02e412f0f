"""
Junk (issue 7): random and mutated frames through the server in memory, and random octets
over real loopback TCP followed by a legitimate requestor. C{bench/torture.py junk} runs the
full million; this suite runs a fast, fixed-seed subset.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from bulklq.client import LeaseQuery, QueryStatus, Requestor, RequestorOptions
from bulklq.server import BulkLeasequeryFactory
from bulklq.stores.memory import MemoryBindingStore

from .test_hardening_harness import (
    LINK,
    RELAY_DUID,
    REQUESTOR_DUID,
    harness_bindings,
    harness_config,
    run_junk,
)


class InMemoryJunkTests(SynchronousTestCase):
    """Junk through the protocol, judged message by message."""

    def test_junk_subset(self) -> None:
        """
        3,000 junk messages (random octets and mutations of real queries, alone on fresh
        connections or several per connection split into random segments): nothing raises,
        nothing is logged as a failure, every answer is what the RFC says for the message
        (S1-S7, S28, S29, S31-S35, S52, S53), every connection ends closed, no timer or
        connection is left behind; every kind of outcome occurs.
        """
        problems: list[str] = []
        counts = run_junk(3000, seed=7, on_problem=problems.append)
        self.assertEqual(problems, [])
        self.assertEqual(counts["failures_logged"], 0)
        self.assertEqual(counts["messages"], 3000)
        for outcome in ("none/close", "none/open", "reply/open", "stream"):
            self.assertGreater(counts.get(f"outcome {outcome}", 0), 10, outcome)


class _JunkSender(Protocol):
    """Send random octets, then wait for the server to close (or give up and close)."""

    def __init__(self, junk: bytes, done: Deferred[str]) -> None:
        self.junk = junk
        self.done = done
        self.giveUp: Any = None

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.junk)
        self.giveUp = reactor.callLater(0.5, self.transport.loseConnection)  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self.giveUp is not None and self.giveUp.active():
            self.giveUp.cancel()
            self.done.callback("closed by server")
        else:
            self.done.callback("closed by us")


class _JunkFactory(ClientFactory):
    """One L{_JunkSender}; a failed connection attempt fires C{done} too."""

    def __init__(self, junk: bytes, done: Deferred[str]) -> None:
        self.junk = junk
        self.done = done

    def buildProtocol(self, addr: object) -> _JunkSender:
        return _JunkSender(self.junk, self.done)

    def clientConnectionFailed(self, connector: object, reason: Failure) -> None:
        self.done.callback(f"connection failed: {reason.getErrorMessage()}")


class TCPJunkTests(TestCase):
    """Random octets over loopback TCP, then a real requestor (Kea's system test, bigger)."""

    def test_random_bytes_then_requestor(self) -> None:
        """
        Seven connections each send 5,000 random octets; the server closes each of them
        or leaves it waiting for the rest of a frame; then a requestor on the same address
        gets every binding, complete.
        """
        store = MemoryBindingStore([LINK], clock=reactor)  # type: ignore[arg-type]
        store.put_many(harness_bindings(25, cltt=int(reactor.seconds()) - 60))  # type: ignore[attr-defined]
        config = harness_config(page_size=1000, max_connections=10)
        factory = BulkLeasequeryFactory(store, config, reactor)  # type: ignore[arg-type]
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        rng = random.Random(11)

        async def run() -> None:
            outcomes: list[Deferred[str]] = []
            for _ in range(7):
                done: Deferred[str] = Deferred()
                client = _JunkFactory(rng.randbytes(5000), done)
                reactor.connectTCP("127.0.0.1", port.getHost().port, client)  # type: ignore[attr-defined]
                outcomes.append(done)
            results = await DeferredList(outcomes)
            self.assertEqual(len(results), 7)
            requestor = Requestor(
                REQUESTOR_DUID,
                reactor,  # type: ignore[arg-type]
                RequestorOptions(retries=0, data_timeout=10, connect_timeout=10),
            )
            result = await requestor.query(
                f"127.0.0.1:{port.getHost().port}", LeaseQuery.by_relay_id(RELAY_DUID)
            )
            self.assertEqual(result.status, QueryStatus.SUCCESS, result.describe())
            self.assertEqual(len(result.bindings), 25)
            self.assertGreaterEqual(factory.stats.connections_accepted, 8)
            await factory.shutdown(grace=1.0)

        return ensureDeferred(run())
