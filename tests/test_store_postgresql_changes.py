"""
Tests for L{bulklq.stores.postgresql_changes}: the change feed of Kea's PostgreSQL lease
database for Active Leasequery (RFC 7653), through the C{lease6} trigger and LISTEN/NOTIFY.

The pure parts (notification payloads, coalescing, URI options) run everywhere. The rest
runs against the server of C{scripts/postgres-test-server} like L{tests.test_store_postgresql}
(a scratch copy of Kea's schema per test): skipped without C{BULKLQ_TEST_POSTGRES_DSN},
failing instead when C{BULKLQ_REQUIRE_SERVICES=1}.
"""

from __future__ import annotations

import io
import json
import sys
import threading
import time
from collections.abc import Callable
from ipaddress import IPv6Address
from typing import Any

from psycopg.conninfo import conninfo_to_dict
from twisted.internet import defer, endpoints, reactor
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from bulklq.changes import BindingChange, SweepableStore
from bulklq.cli import main
from bulklq.cli.store import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from bulklq.client import ActiveQuery, ActiveWatcher, Requestor, RequestorOptions
from bulklq.config import ServerConfig, parse_access_rule
from bulklq.interfaces import IBindingChangeFeed, IBindingStore
from bulklq.server import ActiveConfig, BulkLeasequeryFactory
from bulklq.stores import SCHEMES, open_store
from bulklq.stores.kea_leases import KeaLease6
from bulklq.stores.postgresql import PostgreSQLBindingStore, PostgreSQLSettings
from bulklq.stores.postgresql_changes import (
    CHANNEL,
    INSTALL_SQL,
    ChangeFeedOptions,
    LeaseEvent,
    PostgreSQLChangeFeedStore,
    changes_of,
    install_notify,
    notify_installed,
    open_store_uri,
    parse_notification,
    split_changes_options,
    uninstall_notify,
)
from bulklq.testing import make_binding, make_duid
from tests.fake_server import REQUESTOR_DUID, SERVER_DUID
from tests.test_store_postgresql import REPO, V13, V17, V19, ScratchDatabase, _connect

NOW = 1_800_000_000


def _lease(address: str = "2001:db8::1", *, client: int = 1, **changes: Any) -> KeaLease6:
    fields: dict[str, Any] = {
        "address": IPv6Address(address),
        "duid": make_duid(client).raw,
        "valid_lifetime": 3600,
        "expire": NOW + 1800,
        "subnet_id": 7,
        "pref_lifetime": 1800,
    }
    fields.update(changes)
    return KeaLease6(**fields)


def _payload(op: str, lease: KeaLease6) -> str:
    return json.dumps(
        {
            "op": op,
            "s": lease.subnet_id,
            "d": lease.duid.hex(),
            "a": str(lease.address),
            "t": lease.lease_type,
            "p": lease.prefix_len,
            "i": lease.iaid,
            "v": lease.valid_lifetime,
            "f": lease.pref_lifetime,
            "e": lease.expire,
            "st": lease.state,
            "c": lease.user_context,
        }
    )


class NotificationTests(SynchronousTestCase):
    """The trigger's payload, read back strictly."""

    def test_round_trip(self) -> None:
        """A payload in the trigger's format becomes the row it describes."""
        lease = _lease(lease_type=2, prefix_len=56, address="2001:db8:100::", iaid=9)
        event = parse_notification(_payload("D", lease))
        self.assertEqual(event, LeaseEvent((7, lease.duid), lease, old=True))
        self.assertFalse(parse_notification(_payload("I", lease)).old)

    def test_missing_context_and_nulls(self) -> None:
        """Columns Kea leaves NULL read as Kea's defaults; an absent context is None."""
        payload = json.dumps(
            {"op": "U", "s": 3, "d": None, "a": "2001:db8::5", "v": None, "e": None}
        )
        event = parse_notification(payload)
        self.assertEqual(event.client, (3, b""))
        self.assertEqual(event.lease.valid_lifetime, 0)
        self.assertEqual(event.lease.prefix_len, 128)
        self.assertIsNone(event.lease.user_context)

    def test_malformed(self) -> None:
        """Anything but the trigger's JSON object is a ValueError naming the problem."""
        good = json.loads(_payload("I", _lease()))
        cases = [
            "not json",
            "[1]",
            json.dumps({**good, "op": "X"}),
            json.dumps({**good, "a": "10.0.0.1"}),
            json.dumps({**good, "d": "zz"}),
            json.dumps({**good, "v": "3600"}),
            json.dumps({**good, "c": 5}),
        ]
        for payload in cases:
            with self.subTest(payload=payload):
                self.assertRaises(ValueError, parse_notification, payload)


class CoalescingTests(SynchronousTestCase):
    """L{changes_of}: what one batch of notifications publishes."""

    def test_coalesced_per_binding(self) -> None:
        """Many rows of one client in a batch publish its current binding once, in the order
        clients first appeared."""
        current = {
            (7, make_duid(1).raw): make_binding(1, "subnet-7", addresses=["2001:db8::1"]),
            (7, make_duid(2).raw): make_binding(2, "subnet-7", addresses=["2001:db8::2"]),
        }
        events = [
            LeaseEvent((7, make_duid(2).raw), _lease("2001:db8::2", client=2), old=False),
            LeaseEvent((7, make_duid(1).raw), _lease("2001:db8::1"), old=False),
            LeaseEvent((7, make_duid(2).raw), _lease("2001:db8::2", client=2), old=True),
            LeaseEvent((7, make_duid(2).raw), _lease("2001:db8::3", client=2), old=True),
        ]
        published = changes_of(events, current, NOW)
        self.assertEqual(
            published,
            [(current[(7, make_duid(2).raw)], False), (current[(7, make_duid(1).raw)], False)],
        )

    def test_removed_from_old_rows(self) -> None:
        """RFC 7653 section 7: a client with no active lease left is published as removed,
        with the leases it had (the old rows that were in use)."""
        events = [
            LeaseEvent((7, make_duid(1).raw), _lease("2001:db8::1"), old=True),
            LeaseEvent((7, make_duid(1).raw), _lease("2001:db8::9", state=2), old=True),
        ]
        [(binding, removed)] = changes_of(events, {}, NOW)
        self.assertTrue(removed)
        self.assertEqual(binding.key, ("subnet-7", make_duid(1).raw))
        self.assertEqual([a.address for a in binding.addresses], [IPv6Address("2001:db8::1")])

    def test_nothing_when_never_a_binding(self) -> None:
        """A row inserted not in use, or a row already expired and now deleted, changes no
        binding: nothing is published (an expiry was published by the sweep)."""
        events = [
            LeaseEvent((7, make_duid(1).raw), _lease(state=1), old=False),
            LeaseEvent((7, make_duid(2).raw), _lease(client=2, expire=NOW - 5), old=True),
        ]
        self.assertEqual(changes_of(events, {}, NOW), [])

    def test_expired_rows(self) -> None:
        """RFC 7653 section 9.3: a lease found expired by a sweep was in use until then: its
        client's removal is published."""
        lease = _lease(expire=NOW - 1)
        events = [LeaseEvent((7, lease.duid), lease, old=True, expired=True)]
        [(binding, removed)] = changes_of(events, {}, NOW)
        self.assertTrue(removed)
        self.assertEqual(binding.cltt, NOW - 1 - 3600)


class _FakeReactor(MemoryReactorClock):
    """A memory reactor on which removing a system event trigger (the stores do) works."""

    def removeSystemEventTrigger(self, triggerID: Any) -> None:
        """Forget a trigger: the memory reactor's own C{addSystemEventTrigger} gives no id,
        so there is nothing to look up."""


class OpenerTests(SynchronousTestCase):
    """The registry's opener and its URI options."""

    def test_options_taken_out(self) -> None:
        """changes= and expiry-interval= are this module's; the rest stays for the store."""
        uri, options = split_changes_options(
            "postgresql:///kea?host=/tmp&changes=off&pool-size=2&expiry-interval=0.5"
        )
        self.assertEqual(uri, "postgresql:///kea?host=%2Ftmp&pool-size=2")
        self.assertEqual(options, ChangeFeedOptions("off", 0.5))
        self.assertEqual(split_changes_options("postgres://h/kea")[1], ChangeFeedOptions())

    def test_listener_on_the_primary(self) -> None:
        """NOTIFY is not replicated: where the store reads from standbys the listener asks
        for the primary of the same hosts, or connects to C{changes-host}."""
        _, options = split_changes_options("postgresql://u@r1,r2/kea")
        conninfo = "host=r1,r2 dbname=kea target_session_attrs=standby"
        listener = conninfo_to_dict(options.listener_conninfo(conninfo))
        self.assertEqual(listener["target_session_attrs"], "primary")
        self.assertEqual(listener["host"], "r1,r2")
        self.assertEqual(options.listener_conninfo("host=db dbname=kea"), "host=db dbname=kea")
        _, options = split_changes_options(
            "postgresql://u@r1/kea?changes-host=primary.example&changes-port=5433"
        )
        listener = conninfo_to_dict(options.listener_conninfo(conninfo))
        self.assertEqual(
            (listener["host"], listener["port"], listener["target_session_attrs"]),
            ("primary.example", "5433", "any"),
        )

    def test_bad_options(self) -> None:
        """A bad value is a one-line ValueError."""
        for uri in (
            "postgresql:///kea?changes=yes",
            "postgresql:///kea?expiry-interval=0",
            "postgresql:///kea?expiry-interval=x",
            "postgresql:///kea?changes-host=",
            "postgresql:///kea?changes-port=5432",
        ):
            with self.subTest(uri=uri):
                self.assertRaises(ValueError, split_changes_options, uri)

    def test_registry_opens_a_feed(self) -> None:
        """Both schemes open the store wrapped in the change feed, without connecting;
        C{changes=off} opens the plain store (no IBindingChangeFeed)."""
        self.assertEqual(SCHEMES["postgresql"], "bulklq.stores.postgresql_changes:open_store_uri")
        self.assertEqual(SCHEMES["postgres"], SCHEMES["postgresql"])
        clock = _FakeReactor()
        store = open_store("postgresql://nobody@127.0.0.1:1/kea", clock)
        self.assertIsInstance(store, PostgreSQLChangeFeedStore)
        verifyObject(IBindingStore, store)
        verifyObject(IBindingChangeFeed, store)
        self.assertEqual(store.name, "postgresql:kea")
        # Not swept by the service's ExpirySweep: the feed sweeps the database itself.
        self.assertNotIsInstance(store, SweepableStore)
        self.successResultOf(store.close())
        plain = open_store_uri("postgresql://nobody@127.0.0.1:1/kea?changes=off", clock)
        self.assertIsInstance(plain, PostgreSQLBindingStore)
        self.assertFalse(IBindingChangeFeed.providedBy(plain))
        self.successResultOf(plain.close())

    def test_idle_until_used(self) -> None:
        """Nothing starts until Active Leasequery uses the feed, and then only once the
        reactor runs (twistd opens the store before it forks); until the listener is
        connected, catch-up answers DataMissing (RFC 7653 section 8.4.1)."""
        clock = _FakeReactor()
        store = open_store_uri("postgresql://nobody@127.0.0.1:1/kea", clock)
        assert isinstance(store, PostgreSQLChangeFeedStore)
        self.assertEqual(clock.whenRunningHooks, [])
        store.keep_history()
        store.subscribe(lambda change: None)
        self.assertEqual(len(clock.whenRunningHooks), 1)
        self.assertFalse(store.running)
        self.assertIsNone(self.successResultOf(store.changes_since(0)))
        self.successResultOf(store.close())
        store.start()  # after close: nothing
        self.assertFalse(store.running)


# -- against PostgreSQL --------------------------------------------------------------------


def _sleep(seconds: float) -> defer.Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


async def _until(condition: Callable[[], bool], seconds: float = 15.0) -> None:
    """Wait (polling) until C{condition()}; fail the test after C{seconds}."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await _sleep(0.01)


def _insert(database: ScratchDatabase, address: str, client: int, **columns: Any) -> None:
    """INSERT one lease6 row as Kea writes it (plain SQL), expiring an hour from now."""
    row = {
        "address": address,
        "duid": make_duid(client).raw,
        "valid_lifetime": 3600,
        "expire": columns.pop("expire", time.time() + 3600),
        "subnet_id": 7,
        "pref_lifetime": 1800,
        "lease_type": 0,
        "iaid": 1,
        "prefix_len": 128,
        "state": 0,
    }
    row.update(columns)
    names = ", ".join(row)
    values = ", ".join(
        "to_timestamp(%(expire)s)" if name == "expire" else f"%({name})s" for name in row
    )
    database.execute(f"INSERT INTO lease6 ({names}) VALUES ({values})", row)  # type: ignore[arg-type]


class _FeedTestCase(TestCase):
    """A scratch Kea database with the trigger, and a feed store over it."""

    timeout = 60
    schema = V17
    install = True

    def setUp(self) -> None:
        self.database = ScratchDatabase(self.schema)
        self.addCleanup(self.database.drop)
        if self.install:
            install_notify(self.database.dsn)
        self.seen: list[BindingChange] = []

    def feed(self, clock: Any = None, **kwargs: Any) -> PostgreSQLChangeFeedStore:
        """A started feed store over the scratch database, closed at cleanup."""
        store = PostgreSQLBindingStore(PostgreSQLSettings(self.database.dsn, pool_size=1), reactor)
        kwargs.setdefault("expiry_interval", 0.05)
        kwargs.setdefault("reconnect_delays", (0.05, 0.2))
        feed = PostgreSQLChangeFeedStore(store, self.database.dsn, reactor, clock=clock, **kwargs)
        self.addCleanup(feed.close)
        feed.keep_history()
        feed.subscribe(self.seen.append)
        return feed

    def run_scenario(self, scenario: Any) -> defer.Deferred[None]:
        """Run an C{async def} scenario as the test's Deferred."""
        return defer.Deferred.fromCoroutine(scenario())


class FeedTests(_FeedTestCase):
    """Changes written to lease6 with plain SQL reach the subscribers (schema 17)."""

    def test_insert_update_delete(self) -> None:
        """INSERT publishes the binding; UPDATE its new state; DELETE of the last lease its
        removal with the address it had (RFC 7653 section 7: lifetimes 0 on the wire)."""

        async def scenario() -> None:
            feed = self.feed()
            await feed.listening()
            self.assertTrue(feed.trigger_installed)
            _insert(self.database, "2001:db8::1", 1)
            await _until(lambda: len(self.seen) == 1)
            change = self.seen[0]
            self.assertEqual(change.key, ("subnet-7", make_duid(1).raw))
            self.assertFalse(change.removed)
            self.assertEqual(
                [(a.address, a.valid_lifetime) for a in change.binding.addresses],
                [(IPv6Address("2001:db8::1"), 3600)],
            )
            self.database.execute(
                "UPDATE lease6 SET valid_lifetime = 7200, "
                "expire = expire + interval '3600 seconds' WHERE address = '2001:db8::1'"
            )
            await _until(lambda: len(self.seen) == 2)
            self.assertFalse(self.seen[1].removed)
            self.assertEqual(self.seen[1].binding.addresses[0].valid_lifetime, 7200)
            self.database.execute("DELETE FROM lease6 WHERE address = '2001:db8::1'")
            await _until(lambda: len(self.seen) == 3)
            gone = self.seen[2]
            self.assertTrue(gone.removed)
            self.assertEqual(gone.key, change.key)
            self.assertEqual(gone.binding.addresses[0].address, IPv6Address("2001:db8::1"))
            self.assertEqual([c.serial for c in self.seen], sorted(c.serial for c in self.seen))

        return self.run_scenario(scenario)

    def test_partial_delete_and_reassignment(self) -> None:
        """Deleting one of two leases publishes the binding with the other (not removed);
        an UPDATE giving a lease to another client (Kea reuses expired leases) publishes
        the new client's binding and the old client's removal."""

        async def scenario() -> None:
            feed = self.feed()
            await feed.listening()
            _insert(self.database, "2001:db8::1", 1)
            _insert(self.database, "2001:db8::2", 1)
            await _until(lambda: any(len(c.binding.addresses) == 2 for c in self.seen))
            del self.seen[:]
            self.database.execute("DELETE FROM lease6 WHERE address = '2001:db8::2'")
            await _until(lambda: len(self.seen) == 1)
            self.assertFalse(self.seen[0].removed)
            self.assertEqual(
                [a.address for a in self.seen[0].binding.addresses], [IPv6Address("2001:db8::1")]
            )
            del self.seen[:]
            self.database.execute(
                "UPDATE lease6 SET duid = %s WHERE address = '2001:db8::1'", (make_duid(2).raw,)
            )
            await _until(lambda: len(self.seen) == 2)
            outcome = {c.key[1]: c.removed for c in self.seen}
            self.assertEqual(outcome, {make_duid(1).raw: True, make_duid(2).raw: False})

        return self.run_scenario(scenario)

    def test_transaction_coalesced(self) -> None:
        """Twenty leases of one client written in one transaction arrive together and are
        published as the client's binding, coalesced: far fewer changes than rows, the
        last one holding all twenty."""

        async def scenario() -> None:
            feed = self.feed()
            await feed.listening()
            with _connect(self.database.dsn) as conn, conn.transaction():
                for number in range(1, 21):
                    conn.execute(
                        "INSERT INTO lease6 (address, duid, valid_lifetime, expire, subnet_id, "
                        "pref_lifetime, lease_type, iaid, prefix_len, state) VALUES "
                        "(%s, %s, 3600, now() + interval '1 hour', 7, 1800, 0, 1, 128, 0)",
                        (f"2001:db8::{number:x}", make_duid(1).raw),
                    )
            await _until(lambda: any(len(c.binding.addresses) == 20 for c in self.seen))
            self.assertLess(len(self.seen), 20)
            self.assertEqual({c.key for c in self.seen}, {("subnet-7", make_duid(1).raw)})

        return self.run_scenario(scenario)

    def test_history_and_catch_up(self) -> None:
        """RFC 7653 section 8.4.1: published changes are kept for catch-up from the time the
        listener connected; earlier times get None (DataMissing)."""

        async def scenario() -> None:
            feed = self.feed()
            before = reactor.seconds()
            await feed.listening()
            after = reactor.seconds()
            _insert(self.database, "2001:db8::1", 1)
            await _until(lambda: len(self.seen) == 1)
            self.assertIsNone(await feed.changes_since(before - 1))
            changes = await feed.changes_since(after)
            self.assertEqual(changes, self.seen)

        return self.run_scenario(scenario)

    def test_expiry_published_once(self) -> None:
        """RFC 7653 section 9.3: a lease that runs out with no write is published as the
        binding's removal by the sweep, once, however many sweeps follow."""

        async def scenario() -> None:
            clock = Clock()
            clock.advance(time.time())
            start = clock.seconds()
            feed = self.feed(clock)
            await feed.listening()
            _insert(self.database, "2001:db8::1", 1, expire=start + 100)
            _insert(self.database, "2001:db8::2", 2, expire=start + 100)
            _insert(self.database, "2001:db8::3", 2, expire=start + 5000)
            await _until(lambda: len(self.seen) == 3)
            del self.seen[:]
            clock.advance(200)
            await _until(lambda: len(self.seen) == 2)
            sweeps = feed.sweeps
            await _until(lambda: feed.sweeps >= sweeps + 3)
            by_client = {c.key[1]: c for c in self.seen}
            self.assertEqual(len(self.seen), 2)
            self.assertTrue(by_client[make_duid(1).raw].removed)
            # The other client keeps one lease: its binding changed, it is not removed.
            other = by_client[make_duid(2).raw]
            self.assertFalse(other.removed)
            self.assertEqual(
                [a.address for a in other.binding.addresses], [IPv6Address("2001:db8::3")]
            )

        return self.run_scenario(scenario)

    def test_reconnect_marks_data_missing(self) -> None:
        """RFC 7653 section 8.4.1: after the listening connection is lost (its backend
        terminated, as by a database restart) the feed reconnects; catch-up from before the
        reconnection answers None (DataMissing), later changes flow again."""

        async def scenario() -> None:
            feed = self.feed()
            await feed.listening()
            before = reactor.seconds()
            self.assertIsNotNone(await feed.changes_since(before))
            again = feed.next_connection()
            with _connect(self.database.admin) as conn:
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = %s AND application_name = 'bulklq-changes'",
                    (self.database.name,),
                )
            await again
            reconnected = reactor.seconds()
            self.assertEqual(feed.connections, 2)
            self.assertIsNone(await feed.changes_since(before))
            _insert(self.database, "2001:db8::1", 1)
            await _until(lambda: len(self.seen) >= 1)
            self.assertEqual(self.seen[-1].key, ("subnet-7", make_duid(1).raw))
            self.assertEqual(await feed.changes_since(reconnected), self.seen[-1:])

        return self.run_scenario(scenario)

    def test_writes_during_the_gap_republished(self) -> None:
        """A lease written while the listener was disconnected (its NOTIFY went nowhere) is
        published after the reconnection, found by its CLTT."""

        async def scenario() -> None:
            feed = self.feed(reconnect_delays=(2.0, 2.0))
            await feed.listening()
            again = feed.next_connection()
            with _connect(self.database.admin) as conn:
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = %s AND application_name = 'bulklq-changes'",
                    (self.database.name,),
                )
            await _until(lambda: not feed.connected)
            _insert(self.database, "2001:db8::9", 9)
            self.assertFalse(feed.connected)
            await again
            await _until(lambda: len(self.seen) == 1)
            self.assertEqual(self.seen[0].key, ("subnet-7", make_duid(9).raw))
            self.assertFalse(self.seen[0].removed)

        return self.run_scenario(scenario)

    def test_close_stops_thread_and_connection(self) -> None:
        """close() ends the listener thread and its connection, then closes the store."""

        async def scenario() -> None:
            feed = self.feed()
            await feed.listening()
            self.assertTrue(feed.running)
            await feed.close()
            self.assertFalse(feed.running)
            self.assertFalse(feed.connected)
            names = [thread.name for thread in threading.enumerate()]
            self.assertNotIn("bulklq-postgresql-changes", names)
            with _connect(self.database.admin) as conn:
                left = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = %s AND application_name = 'bulklq-changes'",
                    (self.database.name,),
                ).fetchone()[0]
            self.assertEqual(left, 0)
            self.assertIsNone(await feed.changes_since(0))

        return self.run_scenario(scenario)


class Schema19Tests(_FeedTestCase):
    """The trigger on Kea schema 19 (INET addresses)."""

    schema = V19

    def test_round_trip(self) -> None:
        """An INSERT and a DELETE are published, the removal with the address it had."""

        async def scenario() -> None:
            feed = self.feed()
            await feed.listening()
            _insert(self.database, "2001:db8::1", 1)
            await _until(lambda: len(self.seen) == 1)
            self.database.execute("DELETE FROM lease6")
            await _until(lambda: len(self.seen) == 2)
            self.assertEqual([c.removed for c in self.seen], [False, True])
            self.assertEqual(self.seen[1].binding.addresses[0].address, IPv6Address("2001:db8::1"))

        return self.run_scenario(scenario)


class Schema13Tests(Schema19Tests):
    """The trigger on Kea 2.2's schema as Debian ships it."""

    schema = V13


class TriggerInstallTests(_FeedTestCase):
    """Without the trigger the feed says so; installing it later is picked up."""

    install = False

    def test_missing_then_installed(self) -> None:
        """Without the trigger, catch-up is DataMissing (nothing is known); once the DBA
        installs it, the feed notices and changes flow."""

        async def scenario() -> None:
            feed = self.feed()
            feed.trigger_check_interval = 0.05
            await feed.listening()
            self.assertFalse(feed.trigger_installed)
            self.assertIsNone(await feed.changes_since(reactor.seconds()))
            install_notify(self.database.dsn)
            await _until(lambda: bool(feed.trigger_installed))
            _insert(self.database, "2001:db8::1", 1)
            await _until(lambda: len(self.seen) == 1)
            self.assertIsNotNone(await feed.changes_since(reactor.seconds()))

        return self.run_scenario(scenario)

    def test_install_uninstall(self) -> None:
        """install_notify is idempotent; uninstall_notify removes the trigger; the SQL
        names the channel."""
        self.assertIn(CHANNEL, INSTALL_SQL)
        install_notify(self.database.dsn)
        install_notify(self.database.dsn)
        with _connect(self.database.dsn) as conn:
            self.assertTrue(notify_installed(conn))
        uninstall_notify(self.database.dsn)
        uninstall_notify(self.database.dsn)
        with _connect(self.database.dsn) as conn:
            self.assertFalse(notify_installed(conn))


class EndToEndTests(_FeedTestCase):
    """A watcher over loopback TCP against the server and the PostgreSQL store."""

    def test_watcher_sees_plain_sql_writes(self) -> None:
        """RFC 7653 sections 8 and 7: an active query to the server backed by the
        postgresql:// store (opened through the registry) receives a lease INSERTed with
        plain SQL, as Kea writes it, then its removal when the row is DELETEd."""

        async def scenario() -> None:
            store = open_store(self.database.uri + "&expiry-interval=0.05", reactor)
            assert isinstance(store, PostgreSQLChangeFeedStore)
            self.addCleanup(store.close)
            config = ServerConfig(SERVER_DUID, allow=(parse_access_rule("127.0.0.1/32"),))
            factory = BulkLeasequeryFactory(
                store, config, reactor, active=ActiveConfig(enabled=True, allow_insecure=True)
            )
            port = await endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
                factory
            )
            self.addCleanup(port.stopListening)
            number = port.getHost().port

            def endpoint(server: Any) -> Any:
                return endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", number, timeout=5)

            requestor = Requestor(REQUESTOR_DUID, reactor, RequestorOptions(retries=0), endpoint)
            watcher = ActiveWatcher(
                requestor, f"127.0.0.1:{number}", ActiveQuery(), endpoint_factory=endpoint
            )
            self.addCleanup(watcher.stop)
            watcher.start()
            await store.listening()
            await _until(lambda: watcher.synchronised)
            _insert(self.database, "2001:db8::77", 5)

            def holds(duid: bytes) -> bool:
                return any(b.client_id.raw == duid for b in watcher.replica.values())

            await _until(lambda: holds(make_duid(5).raw))
            self.database.execute("DELETE FROM lease6 WHERE address = '2001:db8::77'")
            await _until(lambda: not holds(make_duid(5).raw))
            await watcher.stop()

        return self.run_scenario(scenario)


class InstallCommandTests(SynchronousTestCase):
    """C{bulklq store install-notify}."""

    def setUp(self) -> None:
        self.stdout = io.StringIO()
        self.stderr = io.StringIO()
        self.patch(sys, "stdout", self.stdout)
        self.patch(sys, "stderr", self.stderr)

    def run_command(self, *argv: str) -> int:
        """Run C{bulklq ARGV}; a usage error's SystemExit becomes its status."""
        try:
            return main(list(argv))
        except SystemExit as exit_:
            return int(exit_.code or 0)

    def test_sql(self) -> None:
        """--sql prints the installation SQL without connecting anywhere."""
        self.assertEqual(self.run_command("store", "install-notify", "--sql"), EXIT_OK)
        self.assertEqual(self.stdout.getvalue(), INSTALL_SQL.lstrip())

    def test_bad_arguments(self) -> None:
        """No store (exit 2), another scheme or --sql with a store (exit 1): one line each."""
        self.assertEqual(self.run_command("store", "install-notify"), EXIT_USAGE)
        status = self.run_command("store", "install-notify", "--store", "sqlite:x.db")
        self.assertEqual(status, EXIT_FAILURE)
        status = self.run_command(
            "store", "install-notify", "--sql", "--store", "postgresql:///kea"
        )
        self.assertEqual(status, EXIT_FAILURE)
        lines = self.stderr.getvalue().splitlines()
        self.assertEqual(len(lines), 3)
        self.assertIn("only a postgresql:// store", lines[1])

    def test_install_and_remove(self) -> None:
        """Against a scratch database: installed, then removed; an unreachable database
        is one line and exit 1."""
        database = ScratchDatabase(V17)
        self.addCleanup(database.drop)
        uri = database.uri + "&changes=notify"
        self.assertEqual(self.run_command("store", "install-notify", "--store", uri), EXIT_OK)
        with _connect(database.dsn) as conn:
            self.assertTrue(notify_installed(conn))
        status = self.run_command("store", "install-notify", "--store", uri, "--remove")
        self.assertEqual(status, EXIT_OK)
        with _connect(database.dsn) as conn:
            self.assertFalse(notify_installed(conn))
        missing = database.uri.replace(database.name, database.name + "_missing")
        status = self.run_command("store", "install-notify", "--store", missing)
        self.assertEqual(status, EXIT_FAILURE)
        last = self.stderr.getvalue().splitlines()[-1]
        self.assertIn("database error", last)
        self.assertIn("does not exist", last)


class DocumentationTests(SynchronousTestCase):
    """docs/postgresql.md shows the SQL the command installs."""

    def test_install_sql_documented(self) -> None:
        """The SQL block after the install-sql marker is exactly L{INSTALL_SQL}."""
        text = (REPO / "docs" / "postgresql.md").read_text(encoding="utf-8")
        after = text.split("<!-- postgresql-changes: install-sql -->", 1)[1]
        block = after.split("```sql\n", 1)[1].split("```", 1)[0]
        self.assertEqual(block.strip(), INSTALL_SQL.strip())
