"""Tests for L{bulklq.stores.sqlite}."""

from __future__ import annotations

import sqlite3
import struct
import threading
from collections.abc import Sequence
from ipaddress import IPv6Address
from typing import Any

import attrs
from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from bulklq.model import (
    AddressLease,
    Binding,
    BindingKey,
    BindingPage,
    BindingQuery,
    Link,
    relay_identities,
)
from bulklq.stores import open_store
from bulklq.stores._materialise import LazyBindings
from bulklq.stores.sqlite import (
    _MIGRATIONS,
    SCHEMA_VERSION,
    SQLiteBindingStore,
    SQLiteDatabase,
    SQLiteStoreError,
    _Decoder,
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
    Option,
    RelayId,
    RelayMessage,
    RelayMessageOption,
    RemoteId,
    UnknownOption,
    encode_options,
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


def _v1_relay(relay_data: LQRelayData) -> bytes:
    """The schema version 1 C{relay} column of a chain (as bulklq 1 wrote it)."""
    parts = [relay_data.peer_address.packed]
    for layer in relay_data.relay_message.layers():
        position = 0xFFFF
        others: list[Option] = []
        remote_ids: list[tuple[int, RemoteId]] = []
        index = 0
        for option in layer.options:
            if isinstance(option, RelayMessageOption) and isinstance(option.message, RelayMessage):
                position = index
                continue
            if isinstance(option, RemoteId):
                remote_ids.append((index, option))
            else:
                others.append(option)
            index += 1
        data = encode_options(others)
        parts.append(
            struct.pack(
                "!B16s16sHHB",
                layer.hop_count,
                layer.link_address.packed,
                layer.peer_address.packed,
                position,
                len(data),
                len(remote_ids),
            )
        )
        parts.append(data)
        for index, remote_id in remote_ids:
            payload = remote_id.enterprise_number.to_bytes(4, "big") + remote_id.remote_id
            parts.append(struct.pack("!HH", index, len(payload)) + payload)
    return b"".join(parts)


def _v1_ids(values: Sequence[bytes]) -> bytes:
    return b"".join(len(value).to_bytes(2, "big") + value for value in values)


def write_v1_database(path: str, links: Sequence[Link], bindings: Sequence[Binding]) -> None:
    """A database as schema version 1 (bulklq 1) wrote it, holding C{links} and C{bindings}."""
    connection = sqlite3.connect(path, isolation_level=None)
    execute = connection.execute
    execute("BEGIN")
    execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    for statement in _MIGRATIONS[1]:
        assert isinstance(statement, str)
        execute(statement)
    execute("INSERT INTO schema_version VALUES (1)")
    for link in links:
        execute("INSERT INTO links VALUES (?)", (link.link_id,))
        for position, prefix in enumerate(link.prefixes):
            execute(
                "INSERT INTO link_prefixes VALUES (?, ?, ?, ?)",
                (prefix.prefixlen, prefix.network_address.packed, link.link_id, position),
            )
    for binding in bindings:
        key = binding.key
        chain_relay_ids, chain_remote_ids = relay_identities(binding.relay_data)
        remote_raw = [
            r.enterprise_number.to_bytes(4, "big") + r.remote_id for r in binding.remote_ids
        ]
        execute(
            "INSERT INTO bindings VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                *key,
                binding.cltt,
                binding.expires_at(),
                b"".join(
                    struct.pack("!16sII", a.address.packed, a.preferred_lifetime, a.valid_lifetime)
                    for a in binding.addresses
                ),
                b"".join(
                    struct.pack(
                        "!16sBII",
                        p.prefix.network_address.packed,
                        p.prefix.prefixlen,
                        p.preferred_lifetime,
                        p.valid_lifetime,
                    )
                    for p in binding.prefixes
                ),
                None if binding.relay_data is None else _v1_relay(binding.relay_data),
                None
                if binding.relay_ids == chain_relay_ids
                else _v1_ids([duid.raw for duid in binding.relay_ids]),
                None if binding.remote_ids == chain_remote_ids else _v1_ids(remote_raw),
                encode_options(binding.options),
            ),
        )
        for lease in binding.addresses:
            execute(
                "INSERT OR IGNORE INTO addresses VALUES (?, ?, ?)", (lease.address.packed, *key)
            )
        for p in binding.prefixes:
            execute(
                "INSERT OR IGNORE INTO prefixes VALUES (?, ?, ?, ?)",
                (p.prefix.prefixlen, p.prefix.network_address.packed, *key),
            )
        for duid in set(binding.relay_ids):
            execute("INSERT OR IGNORE INTO relay_ids VALUES (?, ?, ?)", (duid.raw, *key))
        for raw in set(remote_raw):
            execute("INSERT OR IGNORE INTO remote_ids VALUES (?, ?, ?)", (raw, *key))
    execute("COMMIT")
    connection.close()


def _odd_bindings() -> list[Binding]:
    """Bindings of every relay shape the codec distinguishes, explicit ids, options."""
    inner = make_relay_hop("2001:db8:1::1", remote_id=RemoteId(9, b"inner"))
    outer = RelayMessage(
        MessageType.RELAY_FORW,
        1,
        IPv6Address("2001:db8:ffff::1"),
        IPv6Address("fe80::2"),
        (RelayMessageOption(inner), InterfaceId(b"uplink"), RelayId(make_duid(900))),
    )
    explicit = Binding(
        make_duid(100),
        "link-9",
        DEFAULT_CLTT,
        (AddressLease(IPv6Address("2001:db8:1::7"), 1, 2),),
        relay_data=LQRelayData(IPv6Address("2001:db8:ffff::1"), outer),
        relay_ids=(make_duid(901),),
        remote_ids=(RemoteId(7, b"elsewhere"),),
        options=(UnknownOption(65000, b"x"),),
    )
    chains = [
        make_relay_data(relay_id=make_duid(900), interface_id=None),
        make_relay_data(remote_id=RemoteId(1, b"only"), interface_id=b"p"),
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
    return [
        explicit,
        make_binding(101, "link-9", addresses=(), prefixes=["2001:db8:8000::/40"]),
        make_binding(102, "link-9", addresses=["2001:db8:1::1", "2001:db8:1::2"]),
        *(make_binding(n + 103, "link-9", relay_data=chain) for n, chain in enumerate(chains)),
    ]


class MigrationTests(SynchronousTestCase):
    """Databases written by older schema versions are migrated when opened."""

    def test_version_1(self) -> None:
        """
        A version 1 database (Remote-IDs inside the relay column, one column per field)
        opens as the current version, every binding and link reads back equal, and the
        index tables still answer every query kind.
        """
        links, contract = contract_dataset()
        bindings = [*contract, *_odd_bindings()]
        path = self.mktemp()
        write_v1_database(path, links, bindings)
        database = SQLiteDatabase(path)
        self.addCleanup(database.close)
        self.assertEqual(database.schema_version(), SCHEMA_VERSION)
        self.assertEqual(list(database.bindings(batch=4)), sorted(bindings, key=lambda b: b.key))
        self.assertEqual(database.links(), list(links))
        for binding in bindings:
            for remote_id in binding.remote_ids:
                found = database.fetch(BindingQuery.by_remote_id(remote_id), None, 99, 0)
                self.assertIn(binding, list(found.bindings))
            for relay_id in binding.relay_ids:
                found = database.fetch(BindingQuery.by_relay_id(relay_id), None, 99, 0)
                self.assertIn(binding, list(found.bindings))
            found = database.fetch(BindingQuery.by_client_id(binding.client_id), None, 99, 0)
            self.assertIn(binding, list(found.bindings))
        # Writes after the migration keep the indexes right.
        self.assertTrue(database.remove(bindings[-1].key))
        database.put(bindings[-1])
        self.assertEqual(database.get(bindings[-1].key), bindings[-1])
        again = SQLiteDatabase(path)
        self.addCleanup(again.close)
        self.assertEqual(again.schema_version(), SCHEMA_VERSION)

    def test_version_1_many(self) -> None:
        """A migration of more bindings than one batch of rows rewrites them all."""
        bindings = [
            make_binding(n, remote_id=RemoteId(9, b"r-%d" % n), relay_id=make_duid(900))
            for n in range(1, 10_050)
        ]
        path = self.mktemp()
        write_v1_database(path, [], bindings)
        database = SQLiteDatabase(path)
        self.addCleanup(database.close)
        self.assertEqual(list(database.bindings(batch=5000)), bindings)


class LazyPageTests(TestCase):
    """L{SQLiteBindingStore} pages build their bindings when the consumer reaches them."""

    def setUp(self) -> None:
        path = self.mktemp()
        database = SQLiteDatabase(path)
        self.bindings = sorted(_odd_bindings(), key=lambda b: b.key)
        database.put_many(self.bindings)
        database.close()
        clock = Clock()
        clock.advance(DEFAULT_CLTT)
        self.store = SQLiteBindingStore(path, reactor, clock, threads=1)
        self.addCleanup(self.store.close)

    def test_sequence(self) -> None:
        """
        A page's bindings are a L{LazyBindings} that behaves as a sequence of the stored
        bindings: length, iteration, indexing (negative too), slices, reversal,
        membership, equality with lists and tuples, no hash, and a readable repr.
        """
        expected = self.bindings[:5]

        def check(page: BindingPage) -> None:
            bindings = page.bindings
            self.assertIsInstance(bindings, LazyBindings)
            self.assertEqual(len(bindings), 5)
            self.assertEqual(list(bindings), expected)
            self.assertEqual([bindings[n] for n in range(-5, 5)], expected + expected)
            self.assertRaises(IndexError, lambda: bindings[5])
            self.assertEqual(bindings[1:4], expected[1:4])
            self.assertEqual(bindings[::-2], expected[::-2])
            self.assertEqual(list(reversed(bindings)), expected[::-1])
            self.assertIn(expected[3], bindings)
            self.assertNotIn(self.bindings[5], bindings)
            self.assertEqual(bindings, expected)
            self.assertEqual(expected, bindings)
            self.assertEqual(bindings, tuple(expected))
            self.assertNotEqual(bindings, expected[:4])
            self.assertNotEqual(bindings, expected[::-1])
            self.assertNotEqual(bindings, "not bindings")
            self.assertEqual(bindings, LazyBindings(list(bindings._rows), bindings._iterate))
            self.assertRaises(TypeError, hash, bindings)
            self.assertEqual(repr(bindings), f"LazyBindings({expected!r})")
            self.assertEqual(page, BindingPage(expected, expected[-1].key))

        return self.store.fetch(BindingQuery.by_link("link-9"), None, 5).addCallback(check)

    def test_last_page(self) -> None:
        """The last page says so, and holds the remaining bindings."""

        def check(page: BindingPage) -> None:
            self.assertIsNone(page.resume_after)
            self.assertEqual(page.bindings, self.bindings[5:])

        return self.store.fetch(
            BindingQuery.by_link("link-9"), self.bindings[4].key, 100
        ).addCallback(check)


class DecoderTests(SynchronousTestCase):
    """The decoder shares what repeats across bindings and stays bounded."""

    def setUp(self) -> None:
        self.database = SQLiteDatabase(self.mktemp())
        self.addCleanup(self.database.close)

    def test_one_port_many_clients(self) -> None:
        """
        Clients behind one relay port (same chain but their Remote-IDs) each get their own
        Remote-ID; chains without a Remote-ID are one shared value.
        """
        port = [
            make_binding(n, relay_id=make_duid(900), remote_id=RemoteId(9, b"client-%d" % n))
            for n in range(1, 6)
        ]
        shared = [make_binding(n, relay_id=make_duid(901)) for n in range(6, 9)]
        self.database.put_many(port + shared)
        found = list(self.database.bindings())
        self.assertEqual(found, port + shared)
        self.assertEqual(
            [b.remote_ids for b in found[:5]],
            [(RemoteId(9, b"client-%d" % n),) for n in range(1, 6)],
        )
        self.assertIs(found[5].relay_data, found[6].relay_data)

    def test_caches_bounded(self) -> None:
        """Caches that reach their limit start again; what is decoded stays right."""
        self.patch(_Decoder, "_LIMIT", 2)
        bindings = [*_odd_bindings(), *(make_binding(n, relay_id=make_duid(n)) for n in range(9))]
        self.database.put_many(bindings)
        expected = sorted(bindings, key=lambda b: b.key)
        decoder = _Decoder()
        rows = self.database._connection.execute(
            "SELECT link_id, duid, leases, relay, relay_remote, extra FROM bindings "
            "ORDER BY link_id, duid"
        ).fetchall()
        self.assertEqual(decoder.bindings(rows), expected)
        self.assertEqual(decoder.bindings(rows), expected)
        self.assertLessEqual(len(decoder._plans), 2)


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
                    # New keys from a bounded set (then replaced): a writer that outpaces
                    # the reader must not make the query endless.
                    connection.put(make_binding(1000 + number % 200, "link-1", cltt=DEFAULT_CLTT))
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


class _TriggerReactor(MemoryReactorClock):
    """
    A memory reactor whose system event triggers behave as Twisted's: firing an event
    removes each trigger before calling it, and removing a trigger that is not registered
    fails.
    """

    def __init__(self) -> None:
        super().__init__()
        self.shutdownTriggers: dict[int, tuple[Any, tuple[Any, ...], dict[str, Any]]] = {}

    def addSystemEventTrigger(  # type: ignore[override]
        self, phase: str, eventType: str, callable: Any, *args: Any, **kw: Any
    ) -> int:
        """Register a shutdown trigger; its id."""
        assert (phase, eventType) == ("during", "shutdown")
        number = len(self.shutdownTriggers) + 1
        self.shutdownTriggers[number] = (callable, args, kw)
        return number

    def removeSystemEventTrigger(self, triggerID: int) -> None:
        """Unregister a trigger; C{KeyError} if it is not registered."""
        del self.shutdownTriggers[triggerID]

    def shutdown(self) -> None:
        """Fire the shutdown event."""
        while self.shutdownTriggers:
            _, (callable, args, kw) = self.shutdownTriggers.popitem()
            callable(*args, **kw)


class ShutdownTests(SynchronousTestCase):
    """The store's thread pool stops at reactor shutdown, or earlier on close."""

    def test_reactor_shutdown_closes(self) -> None:
        """Reactor shutdown closes an unclosed store, without error."""
        reactor = _TriggerReactor()
        store = SQLiteBindingStore(self.mktemp(), reactor)  # type: ignore[arg-type]
        self.assertEqual(len(reactor.shutdownTriggers), 1)
        reactor.shutdown()
        self.failureResultOf(store.fetch(BindingQuery.by_link("x"), None, 1), SQLiteStoreError)
        self.successResultOf(store.close())

    def test_close_removes_trigger(self) -> None:
        """A store closed before shutdown leaves no trigger behind."""
        reactor = _TriggerReactor()
        store = SQLiteBindingStore(self.mktemp(), reactor)  # type: ignore[arg-type]
        self.successResultOf(store.close())
        self.assertEqual(reactor.shutdownTriggers, {})
        reactor.shutdown()
