"""
Fault injection: stores that fail or hang at every point of a query, requestors that
vanish mid-stream, and a server shut down mid-stream (issue 7, "Faults").

The server runs on a L{MemoryReactorClock} over a L{ScriptedStore}, which wraps a memory
store and misbehaves on the fetch the test chooses. Every test checks the bytes on the wire
with L{written_frames} and the log with L{FailureCounter}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionLost
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from bulklq.interfaces import IBindingStore
from bulklq.model import BindingKey, BindingPage, BindingQuery, Link
from bulklq.stores.memory import MemoryBindingStore
from bulklq.wire import (
    ClientId,
    LQQuery,
    Message,
    MessageType,
    QueryType,
    RelayId,
    StatusCode,
    StatusCodeOption,
    decode_message,
)

from .test_hardening_harness import (
    LINK,
    RELAY_DUID,
    REQUESTOR_DUID,
    FailureCounter,
    Harness,
    frame,
    harness_bindings,
    harness_config,
    written_frames,
)


class StoreBrokeError(Exception):
    """The failure a L{ScriptedStore} raises."""


@implementer(IBindingStore)
class ScriptedStore:
    """
    A memory store whose C{fetch} number C{n} (1-based) does what C{script[n]} says:
    C{"raise"} (a synchronous exception), C{"fail"} (a failed Deferred), C{"hang"} (a
    Deferred that never fires; its cancellation is recorded). C{find_link} may do the same
    through C{link_script}.

    @ivar fetches: how many times C{fetch} was called.
    @ivar cancelled: how many hanging Deferreds were cancelled.
    """

    name = "scripted"

    def __init__(
        self,
        inner: MemoryBindingStore,
        script: dict[int, str] | None = None,
        link_script: str | None = None,
    ) -> None:
        self.inner = inner
        self.script = script or {}
        self.link_script = link_script
        self.fetches = 0
        self.cancelled = 0
        self.hanging: list[Deferred[Any]] = []
        #: Called with a hanging Deferred when it is cancelled (default: CancelledError).
        self.hanging_canceller: Any = None

    def _misbehave(self, what: str | None, real: Deferred[Any]) -> Deferred[Any]:
        if what == "raise":
            raise StoreBrokeError("the store raised")
        if what == "fail":
            return fail(StoreBrokeError("the store failed"))
        if what == "hang":

            def cancelled(deferred: Deferred[Any]) -> None:
                self.cancelled += 1
                if self.hanging_canceller is not None:
                    self.hanging_canceller(deferred)

            hanging: Deferred[Any] = Deferred(cancelled)
            self.hanging.append(hanging)
            return hanging
        return real

    def fetch(
        self, query: BindingQuery, resume_after: BindingKey | None, limit: int
    ) -> Deferred[BindingPage]:
        """The inner store's page, or the scripted misbehaviour."""
        self.fetches += 1
        return self._misbehave(
            self.script.get(self.fetches), self.inner.fetch(query, resume_after, limit)
        )

    def find_link(self, address: Any) -> Deferred[Link | None]:
        """The inner store's link, or the scripted misbehaviour."""
        return self._misbehave(self.link_script, self.inner.find_link(address))

    def get_link(self, link_id: str) -> Deferred[Link | None]:
        """The inner store's link."""
        return self.inner.get_link(link_id)

    def close(self) -> Deferred[None]:
        """Close the inner store."""
        return self.inner.close()


def link_query(xid: int, link: bool = True) -> bytes:
    """A framed QUERY_BY_LINK_ADDRESS (or, C{link=False}, QUERY_BY_RELAY_ID over ::)."""
    if link:
        lq = LQQuery(QueryType.QUERY_BY_LINK_ADDRESS, LINK.address + 1, ())
    else:
        lq = LQQuery(QueryType.QUERY_BY_RELAY_ID, LINK.address + 1, (RelayId(RELAY_DUID),))
    return frame(Message(MessageType.LEASEQUERY, xid, (ClientId(REQUESTOR_DUID), lq)).encode())


def messages(transport: Any) -> list[Message]:
    """What the server wrote, decoded."""
    decoded = [decode_message(raw) for raw in written_frames(transport.value())]
    assert all(isinstance(m, Message) for m in decoded)
    return decoded  # type: ignore[return-value]


def status_of(message: Message) -> StatusCode | None:
    """The message's STATUS_CODE, if any."""
    option = message.option(StatusCodeOption)
    return None if option is None else option.status


class FaultTests(SynchronousTestCase):
    """A misbehaving store, requestor or operator never leaves a query hanging."""

    def build(
        self, script: dict[int, str] | None = None, link_script: str | None = None, **config: Any
    ) -> tuple[Harness, ScriptedStore]:
        inner = MemoryBindingStore([LINK], clock=None)
        harness = Harness(config=harness_config(**config), store=inner)
        inner._clock = harness.clock
        inner.put_many(harness_bindings(9))
        store = ScriptedStore(inner, script, link_script)
        harness.factory.store = store
        return harness, store

    def connect(self, harness: Harness) -> tuple[Any, Any]:
        protocol, transport = harness.connect()
        self.addCleanup(harness.lose, protocol, transport)
        return protocol, transport

    def assertTerminatedMidStream(self, transport: Any, xid: int) -> None:
        """A REPLY with data, DATA, then DONE(QueryTerminated), then close (S26, S38)."""
        sent = messages(transport)
        self.assertEqual(sent[0].msg_type, MessageType.LEASEQUERY_REPLY)
        self.assertIsNone(status_of(sent[0]))
        self.assertEqual(sent[-1].msg_type, MessageType.LEASEQUERY_DONE)
        self.assertEqual(status_of(sent[-1]), StatusCode.QueryTerminated)
        self.assertEqual({m.transaction_id for m in sent}, {xid})
        self.assertTrue(transport.disconnecting)

    def test_store_raises_mid_stream(self) -> None:
        """
        A store that fails on the third page (a failed Deferred, or an exception raised
        by C{fetch} itself, which breaks the interface): the query ends with
        DONE(QueryTerminated) after the two pages sent, then the connection closes (S26,
        S38). The failure is logged once.
        """
        for behaviour in ("fail", "raise"):
            harness, store = self.build({3: behaviour})
            protocol, transport = self.connect(harness)
            with FailureCounter() as failures:
                protocol.dataReceived(link_query(0x42))
            self.assertTerminatedMidStream(transport, 0x42)
            self.assertEqual(len(messages(transport)), 4 + 1)  # 2 pages of 2, DONE
            self.assertEqual(failures.count, 1, behaviour)
            self.assertIn("StoreBrokeError", failures.examples[0])
            self.assertEqual(store.fetches, 3)
            self.flushLoggedErrors(StoreBrokeError)
            self.assertEqual(
                harness.factory.stats.queries, {("link", "QueryTerminated"): 1}, behaviour
            )

    def test_store_hangs_mid_stream(self) -> None:
        """
        A store that never answers the second page: after C{store_timeout} (not before)
        the query ends with DONE(QueryTerminated), the store's Deferred is cancelled, and
        the connection closes (S26, S38).
        """
        harness, store = self.build({2: "hang"}, store_timeout=7.0)
        protocol, transport = self.connect(harness)
        protocol.dataReceived(link_query(0x43))
        self.assertEqual(len(messages(transport)), 2)
        harness.clock.advance(6.9)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(store.cancelled, 0)
        harness.clock.advance(0.2)
        self.assertTerminatedMidStream(transport, 0x43)
        self.assertEqual(store.cancelled, 1)
        self.assertEqual(harness.factory.stats.timeouts["store"], 1)

    def test_store_fails_before_first_reply(self) -> None:
        """
        A store that fails (or hangs) on the first page, or on the link lookup, before
        anything was sent: a REPLY carrying an error status (QueryTerminated), no DATA, no
        DONE (S37).
        """
        cases: list[tuple[dict[int, str], str | None]] = [
            ({1: "raise"}, None),
            ({1: "fail"}, None),
            ({1: "hang"}, None),
            ({}, "fail"),
            ({}, "hang"),
            ({}, "raise"),
        ]
        for script, link_script in cases:
            harness, _ = self.build(script, link_script, store_timeout=5.0)
            protocol, transport = self.connect(harness)
            with FailureCounter():
                protocol.dataReceived(link_query(0x44))
                harness.clock.advance(5.0)
            sent = messages(transport)
            self.assertEqual(len(sent), 1, (script, link_script))
            self.assertEqual(sent[0].msg_type, MessageType.LEASEQUERY_REPLY)
            self.assertEqual(sent[0].transaction_id, 0x44)
            self.assertEqual(sent[0].option(ClientId), ClientId(REQUESTOR_DUID))
            self.assertEqual(status_of(sent[0]), StatusCode.QueryTerminated)
            self.flushLoggedErrors(StoreBrokeError)

    def test_requestor_gone_mid_stream(self) -> None:
        """
        The requestor disconnects while the store is answering a page: the store's
        Deferred is cancelled, the store is not asked again, nothing is written after,
        no timer is left, and nothing is logged as a failure or error.
        """
        harness, store = self.build({2: "hang"})
        protocol, transport = self.connect(harness)
        with FailureCounter() as failures:
            protocol.dataReceived(link_query(0x45))
            written = len(transport.value())
            protocol.connectionLost(Failure(ConnectionLost("gone")))
            harness.clock.advance(10_000)
        self.assertEqual(store.cancelled, 1)
        self.assertEqual(store.fetches, 2)
        self.assertEqual(len(transport.value()), written)
        self.assertEqual(failures.count, 0, failures.examples)
        self.assertEqual(harness.clock.getDelayedCalls(), [])
        self.assertEqual(harness.factory.connections, {})

    def test_requestor_gone_while_writes_paused(self) -> None:
        """
        The requestor disconnects while its transport is full (writes paused between
        pages): the query stops, the store is not asked for another page, nothing is logged
        as a failure.
        """
        harness, store = self.build()
        protocol, transport = self.connect(harness)
        transport.producer.pauseProducing()
        with FailureCounter() as failures:
            protocol.dataReceived(link_query(0x46))
            fetched = store.fetches
            protocol.connectionLost(Failure(ConnectionLost("gone")))
            transport.producer.resumeProducing()
            harness.clock.advance(10_000)
        self.assertEqual(store.fetches, fetched)
        self.assertEqual(failures.count, 0, failures.examples)
        self.assertEqual(harness.clock.getDelayedCalls(), [])

    def test_shutdown_mid_stream(self) -> None:
        """
        A server shutdown while a store page hangs: after the grace period the requestor
        gets DONE(QueryTerminated) and the connection closes; the store's Deferred is
        cancelled; the shutdown Deferred fires once the connection is gone.
        """
        harness, store = self.build({3: "hang"}, store_timeout=1000.0)
        protocol, transport = self.connect(harness)
        protocol.dataReceived(link_query(0x47))
        stopped = harness.factory.shutdown(grace=3.0)
        self.assertNoResult(stopped)
        harness.clock.advance(3.0)
        self.assertTerminatedMidStream(transport, 0x47)
        self.assertEqual(store.cancelled, 1)
        harness.lose(protocol, transport)
        self.successResultOf(stopped)
        self.assertEqual(harness.clock.getDelayedCalls(), [])

    def test_shutdown_before_first_reply(self) -> None:
        """
        A shutdown while the first page hangs ends the query, after the grace period,
        with a REPLY carrying QueryTerminated (S37), then close.
        """
        harness, store = self.build({1: "hang"}, store_timeout=1000.0)
        protocol, transport = self.connect(harness)
        protocol.dataReceived(link_query(0x48))
        harness.factory.shutdown(grace=3.0)
        harness.clock.advance(2.9)
        self.assertEqual(transport.value(), b"")
        harness.clock.advance(0.1)
        sent = messages(transport)
        self.assertEqual(
            [(m.transaction_id, m.msg_type, status_of(m)) for m in sent],
            [(0x48, MessageType.LEASEQUERY_REPLY, StatusCode.QueryTerminated)],
        )
        self.assertTrue(transport.disconnecting)
        self.assertEqual(store.cancelled, 1)

    def test_cancelled_store_deferred_not_a_crash(self) -> None:
        """
        A store whose Deferred, when cancelled, errbacks with an error of its own (a
        driver reporting the interrupted statement) still ends the query quietly when the
        requestor is gone: nothing logged as a failure.
        """
        harness, store = self.build({2: "hang"})

        def driver_error(deferred: Deferred[Any]) -> None:
            deferred.errback(StoreBrokeError("statement interrupted"))

        store.hanging_canceller = driver_error
        protocol, _ = self.connect(harness)
        protocol.dataReceived(link_query(0x4A))
        with FailureCounter() as failures:
            protocol.connectionLost(Failure(ConnectionLost("gone")))
        self.assertEqual(store.cancelled, 1)
        self.assertEqual(failures.count, 0, failures.examples)
        self.assertEqual(harness.clock.getDelayedCalls(), [])
