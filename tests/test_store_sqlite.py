"""Tests for L{bulklq.stores.sqlite}."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from ipaddress import IPv6Address

import attrs
from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from bulklq.model import AddressLease, Binding, BindingKey, BindingQuery, Link
from bulklq.stores import open_store
from bulklq.stores.sqlite import (
    SCHEMA_VERSION,
    SQLiteBindingStore,
    SQLiteDatabase,
    SQLiteStoreError,
)
from bulklq.testing import (
    DEFAULT_CLTT,
    BindingStoreContractMixin,
    contract_dataset,
    make_binding,
    make_duid,
    make_link,
    make_relay_data,
    make_relay_hop,
)
from bulklq.wire import (
    InterfaceId,
    LQRelayData,
    MessageType,
    RelayId,
    RelayMessage,
    RelayMessageOption,
    RemoteId,
    UnknownOption,
)


class SQLiteStoreContractTests(BindingStoreContractMixin, TestCase):
    """L{SQLiteBindingStore} passes the store contract."""

    def make_store(self, links: Sequence[Link], bindings: Sequence[Binding]) -> SQLiteBindingStore:
        path = self.mktemp()
        database = SQLiteDatabase(path)
        database.add_links(links)
        database.put_many(bindings)
        database.close()
        return SQLiteBindingStore(path, reactor, self.clock, threads=2)

    def mutate_store(
        self, store: SQLiteBindingStore, put: Sequence[Binding], remove: Sequence[BindingKey]
    ) -> Deferred[None]:
        async def mutate() -> None:
            for key in remove:
                await store.remove(key)
            await store.put_many(put)

        return ensureDeferred(mutate())


class DatabaseTests(SynchronousTestCase):
    """The synchronous layer: schema, round trips, writes."""

    def setUp(self) -> None:
        self.path = self.mktemp()
        self.database = SQLiteDatabase(self.path)
        self.addCleanup(self.database.close)

    def test_round_trip(self) -> None:
        """Every binding of the contract dataset reads back equal, in key order."""
        links, bindings = contract_dataset()
        self.database.add_links(links)
        self.assertEqual(self.database.put_many(bindings, batch=7), len(bindings))
        self.assertEqual(
            list(self.database.bindings(batch=5)), sorted(bindings, key=lambda b: b.key)
        )
        self.assertEqual(self.database.links(), list(links))
        for binding in bindings:
            self.assertEqual(self.database.get(binding.key), binding)

    def test_explicit_ids_and_relay_msg_position(self) -> None:
        """
        Relay-IDs and Remote-IDs that differ from the chain's, client options, and a
        RELAY_MSG that is not a hop's last option all read back exactly; the explicit ids
        are what the indexes hold.
        """
        inner = make_relay_hop("2001:db8:1::1", remote_id=RemoteId(9, b"inner"))
        outer = RelayMessage(
            MessageType.RELAY_FORW,
            1,
            IPv6Address("2001:db8:ffff::1"),
            IPv6Address("fe80::2"),
            (RelayMessageOption(inner), InterfaceId(b"uplink"), RelayId(make_duid(900))),
        )
        binding = Binding(
            make_duid(1),
            "link-1",
            DEFAULT_CLTT,
            relay_data=LQRelayData(IPv6Address("2001:db8:ffff::1"), outer),
            relay_ids=(make_duid(901),),
            remote_ids=(),
            options=(UnknownOption(65000, b"x"),),
        )
        binding = attrs.evolve(
            binding, addresses=(AddressLease(IPv6Address("2001:db8:1::7"), 1, 2),)
        )
        self.database.put(binding)
        self.assertEqual(self.database.get(binding.key), binding)
        by_relay = BindingQuery.by_relay_id
        self.assertEqual(self.database.fetch(by_relay(make_duid(900)), None, 5, 0).bindings, [])
        self.assertEqual(
            list(self.database.fetch(by_relay(make_duid(901)), None, 5, 0).bindings), [binding]
        )
        remote = BindingQuery.by_remote_id(RemoteId(9, b"inner"))
        self.assertEqual(self.database.fetch(remote, None, 5, 0).bindings, [])

    def test_relay_shapes_round_trip(self) -> None:
        """
        One-hop chains with no, one or two Remote-IDs, with or without other options, and a
        three-hop chain read back exactly, and their ids find them.
        """
        chains = [
            make_relay_data(relay_id=make_duid(900), interface_id=None),
            make_relay_data(interface_id=None),
            make_relay_data(remote_id=RemoteId(1, b"only"), interface_id=None),
            make_relay_data(
                make_relay_hop(
                    interface_id=b"x",
                    remote_id=RemoteId(1, b"a"),
                    options=(RemoteId(2, b"b"), RelayId(make_duid(901))),
                )
            ),
            make_relay_data(
                make_relay_hop("2001:db8:f::1", relay_id=make_duid(902)),
                make_relay_hop("2001:db8:e::1", remote_id=RemoteId(3, b"mid")),
                make_relay_hop("2001:db8:1::1", remote_id=RemoteId(4, b"in")),
            ),
        ]
        bindings = [make_binding(n + 1, relay_data=chain) for n, chain in enumerate(chains)]
        self.database.put_many(bindings)
        for binding in bindings:
            self.assertEqual(self.database.get(binding.key), binding)
            for remote_id in binding.remote_ids:
                query = BindingQuery.by_remote_id(remote_id)
                found = self.database.fetch(query, None, 9, DEFAULT_CLTT).bindings
                self.assertEqual(list(found), [binding])

    def test_replace_reindexes(self) -> None:
        """Replacing a binding drops its old index rows and adds the new ones."""
        old = make_binding(1, relay_id=make_duid(900), prefixes=["2001:db8:50::/48"])
        new = make_binding(1, relay_id=make_duid(901), addresses=["2001:db8:1::99"])
        self.database.put(old)
        self.database.put(new)
        self.assertEqual(
            self.database.stats(),
            {
                "bindings": 1,
                "links": 0,
                "addresses": 1,
                "prefixes": 0,
                "relay_ids": 1,
                "remote_ids": 0,
                "schema_version": SCHEMA_VERSION,
            },
        )
        page = self.database.fetch(BindingQuery.by_relay_id(make_duid(901)), None, 5, DEFAULT_CLTT)
        self.assertEqual(list(page.bindings), [new])

    def test_remove(self) -> None:
        """Removing deletes the binding and its index rows; a second removal says False."""
        binding = make_binding(1, relay_id=make_duid(900), prefixes=["2001:db8:50::/48"])
        self.database.put(binding)
        self.assertTrue(self.database.remove(binding.key))
        self.assertFalse(self.database.remove(binding.key))
        stats = self.database.stats()
        self.assertEqual(
            [stats[name] for name in ("bindings", "addresses", "prefixes", "relay_ids")],
            [0, 0, 0, 0],
        )

    def test_failed_write_rolls_back(self) -> None:
        """A batch that fails part-way leaves the database as it was."""
        self.database.put(make_binding(1))

        class BoomError(Exception):
            pass

        def bindings():  # type: ignore[no-untyped-def]
            yield make_binding(2)
            raise BoomError()

        self.assertRaises(BoomError, self.database.put_many, bindings())
        self.assertEqual(self.database.stats()["bindings"], 1)
        self.database.put(make_binding(3))
        self.assertEqual(self.database.stats()["bindings"], 2)

    def test_links_replace_and_remove(self) -> None:
        """Adding a link again replaces its prefixes; removing one keeps its bindings."""
        self.database.add_links([make_link("a", ["2001:db8:a::/64", "2001:db8:aa::/48"])])
        self.database.add_links([make_link("a", ["2001:db8:b::/64"])])
        self.database.put(make_binding(1, "a"))
        self.assertEqual(self.database.links(), [make_link("a", ["2001:db8:b::/64"])])
        self.assertTrue(self.database.remove_link("a"))
        self.assertFalse(self.database.remove_link("a"))
        self.assertEqual(self.database.links(), [])
        self.assertEqual(self.database.stats()["bindings"], 1)

    def test_wal(self) -> None:
        """The database runs in WAL mode, so readers and a writer do not block each other."""
        connection = sqlite3.connect(self.path)
        self.addCleanup(connection.close)
        self.assertEqual(connection.execute("PRAGMA journal_mode").fetchone()[0], "wal")

    def test_reopen_keeps_schema(self) -> None:
        """Opening an existing database again neither migrates nor loses anything."""
        self.database.put(make_binding(1))
        again = SQLiteDatabase(self.path)
        self.addCleanup(again.close)
        self.assertEqual(again.schema_version(), SCHEMA_VERSION)
        self.assertEqual(again.stats()["bindings"], 1)


class SchemaTests(SynchronousTestCase):
    """Schema versioning: newer databases and foreign databases are refused."""

    def test_newer_refused(self) -> None:
        """A database from a newer bulklq is refused with a message saying so."""
        path = self.mktemp()
        SQLiteDatabase(path).close()
        connection = sqlite3.connect(path)
        connection.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION + 1,))
        connection.commit()
        connection.close()
        error = self.assertRaises(SQLiteStoreError, SQLiteDatabase, path)
        self.assertIn(f"schema version {SCHEMA_VERSION + 1}, newer than this bulklq", str(error))
        self.assertIn("upgrade bulklq", str(error))

    def test_foreign_refused(self) -> None:
        """A SQLite database that is not bulklq's is refused, not modified."""
        path = self.mktemp()
        connection = sqlite3.connect(path)
        connection.execute("CREATE TABLE lease6 (address TEXT)")
        connection.commit()
        connection.close()
        error = self.assertRaises(SQLiteStoreError, SQLiteDatabase, path)
        self.assertIn("is not a bulklq database", str(error))

    def test_not_sqlite(self) -> None:
        """A file that is not SQLite is refused with one line."""
        path = self.mktemp()
        with open(path, "wb") as out:
            out.write(b"this is not a database" * 100)
        error = self.assertRaises(SQLiteStoreError, SQLiteDatabase, path)
        self.assertIn(path, str(error))
        self.assertNotIn("\n", str(error))

    def test_unwritable_directory(self) -> None:
        """A path in a missing directory is refused with one line."""
        self.assertRaises(SQLiteStoreError, SQLiteDatabase, "/nonexistent/dir/x.db")


class URITests(TestCase):
    """C{sqlite:PATH} through the registry."""

    def test_open(self) -> None:
        """C{sqlite:PATH?threads=2} opens a store on that file."""
        path = self.mktemp()
        store = open_store(f"sqlite:{path}?threads=2", reactor)
        self.addCleanup(store.close)
        self.assertIsInstance(store, SQLiteBindingStore)
        self.assertEqual(store.name, "sqlite")

    def test_bad_threads(self) -> None:
        """A thread count that is not 1..64 is refused."""
        error = self.assertRaises(ValueError, open_store, "sqlite:x.db?threads=0", reactor)
        self.assertIn("threads", str(error))

    def test_no_path(self) -> None:
        """C{sqlite:} alone is refused."""
        error = self.assertRaises(ValueError, open_store, "sqlite:", reactor)
        self.assertIn("needs the database's path", str(error))

    def test_closed_store_fails(self) -> None:
        """After close, calls fail instead of hanging."""
        store = SQLiteBindingStore(self.mktemp(), reactor)
        store.close()
        self.failureResultOf(store.fetch(BindingQuery.by_link("x"), None, 1), SQLiteStoreError)


class ConcurrentWriterTests(TestCase):
    """
    Another connection writes while a query streams: every binding unchanged for the whole
    query is returned exactly once, none twice.
    """

    def test_writer_thread(self) -> None:
        """
        A thread inserts, replaces and removes bindings as fast as it can while the query
        streams in pages of 3; the query waits for the writer to make progress after every
        page, so writes land between pages as well as during them.
        """
        path = self.mktemp()
        database = SQLiteDatabase(path)
        stable = [make_binding(n, "link-1", cltt=DEFAULT_CLTT) for n in range(1, 400, 2)]
        churn = [make_binding(n, "link-1", cltt=DEFAULT_CLTT) for n in range(2, 400, 2)]
        database.put_many(stable + churn)
        database.close()
        clock = Clock()
        clock.advance(DEFAULT_CLTT)
        store = SQLiteBindingStore(path, reactor, clock, threads=2)
        self.addCleanup(store.close)
        stop = threading.Event()
        progress = threading.Condition()
        writes = [0]

        def writer() -> None:
            connection = SQLiteDatabase(path)
            try:
                number = 0
                while not stop.is_set():
                    victim = churn[number % len(churn)]
                    if number % 3 == 0:
                        connection.remove(victim.key)
                    else:
                        connection.put(
                            make_binding(victim.client_id, "link-1", cltt=DEFAULT_CLTT + number)
                        )
                    connection.put(make_binding(1000 + number, "link-1", cltt=DEFAULT_CLTT))
                    number += 1
                    with progress:
                        writes[0] = number
                        progress.notify_all()
            finally:
                connection.close()

        def wait_for_write() -> None:
            with progress:
                target = writes[0] + 1
                progress.wait_for(lambda: writes[0] >= target or stop.is_set(), timeout=10)

        async def stream() -> tuple[list[Binding], int]:
            found: list[Binding] = []
            resume = None
            pages = 0
            while True:
                page = await store.fetch(BindingQuery.by_link("link-1"), resume, 3)
                found.extend(page.bindings)
                pages += 1
                if page.resume_after is None:
                    return found, pages
                resume = page.resume_after
                wait_for_write()

        thread = threading.Thread(target=writer)
        thread.start()

        def finish(result: tuple[list[Binding], int]) -> None:
            found, pages = result
            stop.set()
            thread.join()
            keys = [b.key for b in found]
            self.assertEqual(len(keys), len(set(keys)))
            self.assertEqual(keys, sorted(keys))
            found_set = set(found)
            for binding in stable:
                self.assertIn(binding, found_set)
            self.assertGreaterEqual(writes[0], pages - 1)

        def failed(failure):  # type: ignore[no-untyped-def]
            stop.set()
            thread.join()
            return failure

        d = ensureDeferred(stream())
        d.addCallbacks(finish, failed)
        return d
