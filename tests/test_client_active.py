"""
The Active Leasequery requestor (RFC 7653 section 8) against a scripted server, in memory.

Each test naming a rule quotes it: "8.3 MUST NOT ..." is RFC 7653 section 8.3.
"""

from __future__ import annotations

import random
from ipaddress import IPv6Address
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from bulklq.client import (
    ActiveQuery,
    ActiveQueryRefused,
    ActiveWatcher,
    BindingChange,
    LeaseQuery,
    Requestor,
    RequestorOptions,
    WindowQuery,
)
from bulklq.wire import (
    ClientId,
    LQEndTime,
    LQQuery,
    LQStartTime,
    Message,
    MessageType,
    OptionCode,
    OptionRequest,
    QueryType,
    StatusCode,
)
from tests.fake_active_server import (
    FakeActiveServerFactory,
    FakeActiveServerProtocol,
    active_reply,
    catch_up_complete,
    change,
    data_missing_reply,
    done_terminated,
    keepalive,
    refuse_active,
    removal,
)
from tests.fake_server import (
    REQUESTOR_DUID,
    InMemoryEndpoint,
    answer,
    client_data,
    client_duid,
    data,
)

LINK = IPv6Address("2001:db8:1::")
LINK_QUERY = LeaseQuery.by_link_address(LINK)


class _Harness:
    """A watcher connected through iosim to a fake active server, on a Clock."""

    def __init__(
        self,
        factory: FakeActiveServerFactory,
        *,
        query: ActiveQuery | None = None,
        start_time: int | None = None,
        refuse: int = 0,
        snapshot: bool = False,
        fallback: str = "window",
    ) -> None:
        self.notes: list[str] = []
        self.clock = Clock()
        self.factory = factory
        self.endpoint = InMemoryEndpoint(factory, self.clock, refuse=refuse)
        self.requestor = Requestor(
            REQUESTOR_DUID,
            self.clock,
            RequestorOptions(retries=0),
            lambda server: self.endpoint,
            random.Random(7),
        )
        self.changes: list[BindingChange] = []
        self.watcher = ActiveWatcher(
            self.requestor,
            "[2001:db8::1]:547",
            query or ActiveQuery(LINK_QUERY),
            on_change=self.changes.append,
            start_time=start_time,
            endpoint_factory=lambda server: self.endpoint,
            snapshot=snapshot,
            fallback=fallback,
            rng=random.Random(3),
            on_note=self.notes.append,
        )
        self.done = self.watcher.start()
        self.flush()

    def flush(self) -> None:
        self.endpoint.flush()

    @property
    def server(self) -> FakeActiveServerProtocol:
        return self.factory.last

    def send(self, *messages: Message) -> None:
        self.server.send(*messages)
        self.flush()

    def stop(self) -> None:
        stopped = self.watcher.stop()
        self.flush()
        assert stopped.called


def _lq_query(message: Message) -> LQQuery | None:
    return message.option(LQQuery)


class ActiveQueryMessageTests(SynchronousTestCase):
    """What the requestor sends (RFC 7653 6.2.1, 6.3, 8.3)."""

    def test_unfiltered_has_no_lq_query(self) -> None:
        """6.2.1 MUST NOT: a requestor wanting every update sends no OPTION_LQ_QUERY."""
        message = ActiveQuery().to_message(5, REQUESTOR_DUID, None)
        self.assertEqual(message.msg_type, MessageType.ACTIVELEASEQUERY)
        self.assertIsNone(message.option(LQQuery))
        self.assertEqual(message.option(ClientId), ClientId(REQUESTOR_DUID))
        oro = message.option(OptionRequest)
        assert oro is not None
        self.assertIn(OptionCode.OPTION_LQ_BASE_TIME, oro.codes)
        self.assertIn(OptionCode.OPTION_LQ_RELAY_DATA, oro.codes)

    def test_filtered_carries_the_query(self) -> None:
        """6.2.1 MAY: a filter is an OPTION_LQ_QUERY with an RFC 5007/5460 query-type."""
        message = ActiveQuery(LINK_QUERY).to_message(5, REQUESTOR_DUID, None)
        lq_query = message.option(LQQuery)
        assert lq_query is not None
        self.assertEqual(lq_query.query_type, QueryType.QUERY_BY_LINK_ADDRESS)
        self.assertEqual(lq_query.link_address, LINK)

    def test_start_time_and_never_end_time(self) -> None:
        """6.3.3 MUST NOT: no OPTION_LQ_END_TIME in an active query; 8.3: start time sent."""
        message = ActiveQuery().to_message(5, REQUESTOR_DUID, 4242)
        self.assertEqual(message.option(LQStartTime), LQStartTime(4242))
        self.assertIsNone(message.option(LQEndTime))
        self.assertIsNone(ActiveQuery().to_message(5, REQUESTOR_DUID, None).option(LQStartTime))

    def test_window_query(self) -> None:
        """8.4.1 SHOULD: the fallback bulk query carries LQ_START_TIME and LQ_END_TIME."""
        message = WindowQuery.of(LINK_QUERY, 100, 200).to_message(9, REQUESTOR_DUID)
        self.assertEqual(message.msg_type, MessageType.LEASEQUERY)
        self.assertEqual(message.option(LQStartTime), LQStartTime(100))
        self.assertEqual(message.option(LQEndTime), LQEndTime(200))
        self.assertIsNotNone(message.option(LQQuery))

    def test_transaction_id(self) -> None:
        """8.1 MUST: the ACTIVELEASEQUERY has a transaction-id; replies must match it."""
        harness = _Harness(FakeActiveServerFactory())
        sent = harness.server.active
        assert sent is not None
        harness.send(data(sent.transaction_id ^ 1, client_data(1, ["2001:db8:1::1"])))
        self.assertEqual(harness.watcher.replica, {})
        harness.send(change(sent.transaction_id, client_data(1, ["2001:db8:1::1"])))
        self.assertEqual(len(harness.watcher.replica), 1)
        harness.stop()


class ActiveReplicaTests(SynchronousTestCase):
    """Changes, removals, keep-alives (RFC 7653 7, 8.4)."""

    def test_changes_update_the_replica(self) -> None:
        """8.4 MUST: many replies with the query's transaction-id; each one is applied."""
        harness = _Harness(FakeActiveServerFactory())
        xid = harness.server.xid
        harness.send(
            change(xid, client_data(1, ["2001:db8:1::1"])),
            change(xid, client_data(2, ["2001:db8:1::2"], ["2001:db8:ff02::/56"])),
            change(xid, client_data(1, ["2001:db8:1::11"])),
        )
        replica = harness.watcher.replica
        self.assertEqual(
            sorted(str(key[0]) for key in replica),
            sorted([str(client_duid(1)), str(client_duid(2))]),
        )
        first = replica[(client_duid(1), str(LINK))]
        self.assertEqual([str(lease.address) for lease in first.addresses], ["2001:db8:1::11"])
        self.assertEqual([c.removed for c in harness.changes], [False, False, False])
        self.assertIsNotNone(harness.changes[2].previous)
        self.assertEqual(harness.watcher.base_time, 1001)
        harness.stop()

    def test_zero_lifetimes_remove(self) -> None:
        """7 / 9.3: a removed or expired binding comes with zero lifetimes: it is dropped."""
        harness = _Harness(FakeActiveServerFactory())
        xid = harness.server.xid
        harness.send(change(xid, client_data(1, ["2001:db8:1::1"])))
        harness.send(change(xid, removal(1, ["2001:db8:1::1"])))
        self.assertEqual(harness.watcher.replica, {})
        self.assertTrue(harness.changes[-1].removed)
        self.assertIsNotNone(harness.changes[-1].previous)
        harness.stop()

    def test_keepalive_resets_the_receive_timer(self) -> None:
        """8.4 SHOULD: terminate after ACTIVE_LQ_RCV_TIMEOUT (120 s) without any message."""
        harness = _Harness(FakeActiveServerFactory())
        xid = harness.server.xid
        harness.clock.advance(100)
        harness.send(keepalive(xid, 1100))
        harness.clock.advance(100)
        self.assertEqual(harness.watcher.connections, 1)
        self.assertFalse(harness.server.closed)
        self.assertEqual(harness.watcher.base_time, 1100)
        harness.clock.advance(21)
        harness.flush()
        self.assertTrue(harness.server.closed)
        self.assertIn("nothing received", harness.watcher.last_error or "")
        harness.stop()

    def test_requestor_not_ours(self) -> None:
        """R11: a REPLY whose CLIENTID is not ours is discarded (then DATA is too)."""
        factory = FakeActiveServerFactory(on_active=lambda protocol, query: None)
        harness = _Harness(factory)
        other = Message(
            MessageType.LEASEQUERY_REPLY,
            harness.server.xid,
            (ClientId(client_duid(99)), *active_reply(harness.server.active).options[1:]),  # type: ignore[arg-type]
        )
        harness.send(other, change(harness.server.xid, client_data(1, ["2001:db8:1::1"])))
        self.assertEqual(harness.watcher.replica, {})
        harness.stop()


class ActiveBaseTimeTests(SynchronousTestCase):
    """The saved base time and catch-up (RFC 7653 8.3, 8.4, 8.4.1)."""

    def test_highest_base_time_is_start_time(self) -> None:
        """8.3 SHOULD: reconnect with the highest base time as OPTION_LQ_START_TIME."""
        harness = _Harness(FakeActiveServerFactory())
        xid = harness.server.xid
        harness.send(change(xid, client_data(1, ["2001:db8:1::1"]), 1500))
        harness.send(keepalive(xid, 1400))
        self.assertEqual(harness.watcher.base_time, 1500)
        harness.server.transport.loseConnection()
        harness.flush()
        harness.clock.advance(60)
        harness.flush()
        queries = harness.factory.active_queries()
        self.assertEqual(len(queries), 2)
        self.assertEqual(queries[1].option(LQStartTime), LQStartTime(1500))
        harness.stop()

    def test_no_base_time_saved_during_catch_up(self) -> None:
        """8.3 / 8.4 MUST NOT: base times received during catch-up are not kept."""
        harness = _Harness(FakeActiveServerFactory(), start_time=900)
        xid = harness.server.xid
        self.assertEqual(harness.server.active.option(LQStartTime), LQStartTime(900))  # type: ignore[union-attr]
        harness.send(change(xid, client_data(1, ["2001:db8:1::1"]), 1500))
        self.assertEqual(harness.watcher.base_time, 900)
        self.assertTrue(harness.changes[0].catch_up)
        harness.send(catch_up_complete(xid, 1600))
        self.assertEqual(harness.watcher.base_time, 1600)
        self.assertTrue(harness.watcher.synchronised)
        harness.send(change(xid, client_data(2, ["2001:db8:1::2"]), 1700))
        self.assertEqual(harness.watcher.base_time, 1700)
        self.assertFalse(harness.changes[-1].catch_up)
        harness.stop()

    def test_lost_during_catch_up_reuses_previous_base_time(self) -> None:
        """8.4.1 MUST: lost before catch-up completes: reconnect with the previous base time."""
        harness = _Harness(FakeActiveServerFactory(), start_time=900)
        xid = harness.server.xid
        harness.send(change(xid, client_data(1, ["2001:db8:1::1"]), 1500))
        harness.send(done_terminated(xid, 1550))
        self.assertEqual(harness.watcher.base_time, 900)
        harness.clock.advance(60)
        harness.flush()
        self.assertEqual(harness.factory.last.active.option(LQStartTime), LQStartTime(900))  # type: ignore[union-attr]
        harness.stop()

    def test_query_terminated_reconnects(self) -> None:
        """8.1 MAY retry after QueryTerminated; 8.4: the DONE's base time is the new start."""
        harness = _Harness(FakeActiveServerFactory())
        xid = harness.server.xid
        harness.send(done_terminated(xid, 2000))
        self.assertTrue(harness.server.closed)
        self.assertEqual(harness.watcher.base_time, 2000)
        harness.clock.advance(59)
        harness.flush()
        self.assertEqual(len(harness.factory.protocols), 1)
        harness.clock.advance(1)
        harness.flush()
        self.assertEqual(len(harness.factory.protocols), 2)
        self.assertEqual(harness.factory.last.active.option(LQStartTime), LQStartTime(2000))  # type: ignore[union-attr]
        harness.stop()

    def test_retries_no_more_than_one_per_idle_timeout(self) -> None:
        """8.1 should: connection retries are no more frequent than ACTIVE_LQ_IDLE_TIMEOUT."""
        harness = _Harness(FakeActiveServerFactory(), refuse=2)
        self.assertEqual(harness.endpoint.attempts, 1)
        harness.clock.advance(59.9)
        self.assertEqual(harness.endpoint.attempts, 1)
        harness.clock.advance(0.1)
        self.assertEqual(harness.endpoint.attempts, 2)
        harness.clock.advance(60)
        harness.flush()
        self.assertEqual(harness.endpoint.attempts, 3)
        self.assertEqual(harness.watcher.connections, 1)
        harness.stop()


class ActiveFailureTests(SynchronousTestCase):
    """Refusals and DataMissing (RFC 7653 8.4, 8.4.1, 8.6.1, 8.6.2)."""

    def test_error_status_is_not_retried(self) -> None:
        """8.4 / 8.6.1: a REPLY with an error status ends the watch (RFC 5007 handling)."""
        harness = _Harness(FakeActiveServerFactory(on_active=refuse_active(StatusCode.NotAllowed)))
        failure = self.failureResultOf(harness.done, ActiveQueryRefused)
        self.assertIn("NotAllowed", str(failure.value))
        harness.clock.advance(600)
        self.assertEqual(len(harness.factory.protocols), 1)

    def test_data_missing_falls_back_to_a_window_bulk_query(self) -> None:
        """
        8.4.1 SHOULD: after DataMissing, a Bulk Leasequery with LQ_START_TIME = our start time
        and LQ_END_TIME = the DataMissing base time; live changes are kept meanwhile.
        """
        bulk_answers = [client_data(3, ["2001:db8:1::3"]), client_data(4, ["2001:db8:1::4"])]
        factory = FakeActiveServerFactory(
            on_active=lambda protocol, query: protocol.send(data_missing_reply(query, 5000)),
            on_bulk=answer(bulk_answers),  # type: ignore[arg-type]
        )
        harness = _Harness(factory, start_time=900)
        bulk = [
            m for p in factory.protocols for m in p.received if m.msg_type == MessageType.LEASEQUERY
        ]
        self.assertEqual(len(bulk), 1)
        self.assertEqual(bulk[0].option(LQStartTime), LQStartTime(900))
        self.assertEqual(bulk[0].option(LQEndTime), LQEndTime(5000))
        self.assertEqual(len(harness.watcher.replica), 2)
        self.assertEqual(harness.watcher.base_time, 5000)
        self.assertEqual(harness.watcher.fallbacks, 1)
        self.assertTrue(harness.watcher.synchronised)
        active = factory.protocols[0]
        active.send(change(active.xid, removal(3, ["2001:db8:1::3"]), 5100))
        harness.flush()
        self.assertEqual(len(harness.watcher.replica), 1)
        self.assertEqual(harness.watcher.base_time, 5100)
        harness.stop()

    def test_failed_fallback_keeps_the_old_base_time(self) -> None:
        """8.4.1: until the missing window is recovered, the old base time stays the start."""
        factory = FakeActiveServerFactory(
            on_active=lambda protocol, query: protocol.send(data_missing_reply(query, 5000))
        )
        harness = _Harness(factory, start_time=900)
        self.assertEqual(harness.watcher.base_time, 900)
        self.assertTrue(factory.protocols[0].closed)
        self.assertIn("bulk fallback failed", harness.watcher.last_error or "")
        harness.stop()

    def test_snapshot_then_live(self) -> None:
        """Section 3: with no saved base time, a bulk query fills the replica; live changes
        arriving meanwhile are applied after it."""

        def bulk(protocol: Any, query: Message) -> None:
            active = factory.protocols[0]
            active.send(change(active.xid, client_data(5, ["2001:db8:1::5"]), 1200))
            answer([client_data(4, ["2001:db8:1::4"]), client_data(5, ["2001:db8:1::55"])])(
                protocol, query
            )

        factory = FakeActiveServerFactory(on_bulk=bulk)
        harness = _Harness(factory, snapshot=True)
        replica = harness.watcher.replica
        self.assertEqual(len(replica), 2)
        newest = replica[(client_duid(5), str(LINK))]
        self.assertEqual(str(newest.addresses[0].address), "2001:db8:1::5")
        self.assertEqual(harness.watcher.base_time, 1200)
        harness.stop()

    def test_stop(self) -> None:
        """stop() closes the connection and the start Deferred fires; no timer is left."""
        harness = _Harness(FakeActiveServerFactory())
        harness.stop()
        self.assertIsNone(self.successResultOf(harness.done))
        self.assertTrue(harness.server.closed)
        self.assertEqual(harness.clock.getDelayedCalls(), [])


def _bulk_queries(factory: FakeActiveServerFactory) -> list[Message]:
    """Every LEASEQUERY (bulk) the fake server received, across connections."""
    return [
        m for p in factory.protocols for m in p.received if m.msg_type == MessageType.LEASEQUERY
    ]


class UnfilteredWatchTests(SynchronousTestCase):
    """
    A watch of every binding (no LQ_QUERY, 6.2.1) has no bulk query to start from or to
    recover a DataMissing gap with: RFC 5460 has no "every binding" query, and a
    QUERY_BY_LINK_ADDRESS with link :: is MalformedQuery. It says so, once, as a note.
    """

    def test_no_snapshot_for_every_binding(self) -> None:
        """Starting empty with snapshot on: no LEASEQUERY is sent, the watcher is in step
        with the live stream at the REPLY, and one note says why there is no snapshot."""
        factory = FakeActiveServerFactory()
        harness = _Harness(factory, query=ActiveQuery(), snapshot=True)
        self.assertEqual(_bulk_queries(factory), [])
        self.assertTrue(harness.watcher.synchronised)
        self.assertEqual(harness.watcher.base_time, 1000)
        self.assertEqual(len(harness.notes), 1)
        self.assertIn("no initial snapshot", harness.notes[0])
        self.assertEqual(len(harness.notes[0].splitlines()), 1)
        harness.server.send(change(harness.server.xid, client_data(1, ["2001:db8:1::1"])))
        harness.flush()
        self.assertEqual(len(harness.watcher.replica), 1)
        # A reconnection does not repeat the note.
        harness.server.transport.loseConnection()
        harness.flush()
        harness.clock.advance(3600)
        harness.flush()
        self.assertEqual(len(factory.protocols), 2)
        self.assertEqual(len(harness.notes), 1)
        harness.stop()

    def test_no_note_without_snapshot(self) -> None:
        """snapshot=False (--no-snapshot) asked for no bulk query: nothing to note."""
        harness = _Harness(FakeActiveServerFactory(), query=ActiveQuery(), snapshot=False)
        self.assertEqual(harness.notes, [])
        self.assertTrue(harness.watcher.synchronised)
        harness.stop()

    def test_data_missing_without_fallback(self) -> None:
        """8.4.1: after DataMissing an unfiltered watch has no window query to send; it goes
        on with the live stream (no LEASEQUERY) and notes that the gap may be missing."""
        factory = FakeActiveServerFactory(
            on_active=lambda protocol, query: protocol.send(data_missing_reply(query, 5000))
        )
        harness = _Harness(factory, query=ActiveQuery(), start_time=900)
        self.assertEqual(_bulk_queries(factory), [])
        self.assertEqual(len(factory.protocols), 1)
        self.assertFalse(factory.protocols[0].closed)
        self.assertTrue(harness.watcher.synchronised)
        self.assertEqual(len(harness.notes), 1)
        self.assertIn("DataMissing", harness.notes[0])
        self.assertEqual(len(harness.notes[0].splitlines()), 1)
        harness.stop()
