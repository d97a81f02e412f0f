"""
Consistency under writes, through the server (issue 7): writers add, update and remove
bindings while several requestors stream the same link; every binding present and
unchanged for the whole of a query is returned exactly once, none twice, and every binding
returned is one of the states its key had during the query, all checked against the log of
writes (L{WriteLog}). The memory, SQLite and (with C{BULKLQ_TEST_POSTGRES_DSN})
PostgreSQL stores; C{bench/torture.py consistency} runs 100,000 bindings at 5,000 writes/s
over TCP.

Writes are interleaved with the server's page fetches by L{InterleavingStore}, which runs a
few writes before every fetch, so every page boundary of every query sees changes.

The benchmark's writer runs in a process of its own and commits one batch of writes per
transaction (L{SQLiteBatchWriter}, L{KeaBatchWriter}); it logs each batch with the clock
readings taken just before its transaction began and just after it committed
(L{WriteLog.record}), and the checker judges every query against those intervals.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from ipaddress import IPv6Address
from typing import Any

import attrs
from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from zope.interface import implementer

from bulklq.config import ServerConfig
from bulklq.interfaces import IBindingStore
from bulklq.model import AddressLease, Binding, BindingKey, BindingPage, BindingQuery, Link
from bulklq.server import BulkLeasequeryFactory
from bulklq.stores.memory import MemoryBindingStore
from bulklq.testing import make_binding, make_duid, make_link
from bulklq.wire import (
    ClientData,
    ClientId,
    Duid,
    IAAddress,
    Message,
    MessageType,
    decode_message,
)

from .test_hardening_harness import (
    REQUESTOR_DUID,
    Harness,
    frame,
    harness_config,
    written_frames,
)

#: The link every binding is on (a Kea subnet id, so PostgreSQL can hold it too).
LINK = make_link("subnet-1", ("2001:db8:1::/64",))


def state(client: int, version: int, base_time: int) -> Binding:
    """
    Version C{version} of client C{client}: its address encodes both numbers, so a
    returned address names the state exactly.
    """
    address = IPv6Address(_NETWORK + (version << 32) + client)
    lease = AddressLease(address, 1800, 3600)  # a lease as is: make_binding parses no text
    return make_binding(client, LINK.link_id, cltt=base_time - 60 + version, addresses=(lease,))


_NETWORK = int(LINK.prefixes[0].network_address)


def identify(client_data: ClientData) -> tuple[BindingKey, frozenset[IPv6Address]]:
    """The key and addresses a CLIENT_DATA reports."""
    client_id = client_data.option(ClientId)
    assert client_id is not None
    addresses = frozenset(option.address for option in client_data.options_of(IAAddress))
    return (LINK.link_id, client_id.duid.raw), addresses


def fingerprint(binding: Binding) -> frozenset[IPv6Address]:
    """What L{identify} sees of a stored binding."""
    return frozenset(lease.address for lease in binding.addresses)


@attrs.define
class WriteLog:
    """
    Every write, per key, with the stamps at which it began and completed: [began,
    completed, new state or C{None} for a removal].

    Writes made here (L{issue}, L{done}) are stamped with a sequence number C{seq} that
    advances on each issue and each completion; a query's window is then C{seq} when it was
    sent and when its answer ended. A write still in flight when a query is judged counts
    as completing after it (C{done} is infinite until then). Writes made elsewhere are
    L{record}ed with clock readings around their transactions, and queries are judged by
    readings of the same clock.
    """

    seq: float = 0
    history: dict[BindingKey, list[list[Any]]] = attrs.Factory(dict)

    def _tick(self) -> float:
        self.seq += 1
        return self.seq

    def initial(self, bindings: Iterable[Binding]) -> None:
        """The bindings present before any query."""
        for binding in bindings:
            self.history[binding.key] = [[-1, -1, binding]]

    def issue(self, key: BindingKey, binding: Binding | None) -> list[Any]:
        """A write of C{binding} (C{None}: removal) under C{key} starts: its entry."""
        entry = [self._tick(), math.inf, binding]
        self.history.setdefault(key, []).append(entry)
        return entry

    def done(self, entry: list[Any]) -> None:
        """The write of C{entry} (from L{issue}) is complete."""
        entry[1] = self._tick()

    def record(
        self, key: BindingKey, binding: Binding | None, started: float, committed: float
    ) -> None:
        """
        A write of C{binding} (C{None}: removal) under C{key} made elsewhere: its
        transaction began after C{started} and had committed by C{committed} (readings of
        the clock the queries are stamped with). Writes to one key must be recorded in the
        order they were made.
        """
        if committed < started:
            raise ValueError(f"a write committed ({committed}) before it started ({started})")
        self.history.setdefault(key, []).append([started, committed, binding])
        self.seq = max(self.seq, committed)

    def record_batches(self, batches: Iterable[WriteBatch], base_time: int) -> int:
        """
        Record every write of C{batches} (from L{Writer.batch}, each with its transaction's
        interval), in order; how many writes.
        """
        count = 0
        for started, committed, writes in batches:
            for client, version in writes:
                key, binding = write_of(client, version, base_time)
                self.record(key, binding, started, committed)
            count += len(writes)
        return count

    def check(
        self, start: float, end: float, returned: list[tuple[BindingKey, frozenset[IPv6Address]]]
    ) -> dict[str, Any]:
        """
        Judge one query that was sent at C{start} and ended at C{end}: counts and the
        first few problems (a key returned more than once, an unchanged binding not
        returned, a state the key did not have at some moment of the query: never written,
        or replaced before the query began). A key counts as unchanged when it was present
        at C{start} and no write to it overlaps [C{start}, C{end}].
        """
        problems: list[str] = []
        seen: dict[BindingKey, int] = {}
        for key, _ in returned:
            seen[key] = seen.get(key, 0) + 1
        twice = [key for key, count in seen.items() if count > 1]
        problems += [f"returned {seen[key]} times: {key!r}" for key in twice[:3]]
        unchanged = 0
        missing = 0
        for key, writes in self.history.items():
            prior, during = _window(writes, start, end)
            if prior is not None and prior[2] is not None and not during:
                unchanged += 1
                if key not in seen:
                    missing += 1
                    if missing <= 3:
                        problems.append(f"unchanged binding not returned: {key!r}")
        wrong = 0
        for key, addresses in returned:
            prior, during = _window(self.history.get(key, []), start, end)
            candidates = during if prior is None else [prior, *during]
            if any(w[2] is not None and fingerprint(w[2]) == addresses for w in candidates):
                continue
            wrong += 1
            if wrong <= 3:
                got = sorted(str(a) for a in addresses)
                had = [sorted(str(a) for a in fingerprint(w[2])) for w in candidates if w[2]]
                problems.append(
                    f"a state {key!r} never had during the query: {got}, not one of {had}"
                )
        return {
            "returned": len(returned),
            "unchanged": unchanged,
            "twice": len(twice),
            "missing": missing,
            "wrong_state": wrong,
            "problems": problems,
        }


def _window(writes: list[list[Any]], start: float, end: float) -> tuple[Any, list[list[Any]]]:
    """
    Of one key's C{writes} (in the order made): the last one complete before C{start}
    (C{None} if none), and those overlapping [C{start}, C{end}].
    """
    prior = None
    during = []
    for write in writes:
        if write[1] < start:
            prior = write
        elif write[0] <= end:
            during.append(write)
        else:
            break  # made after the query, like every write after it
    return prior, during


#: One batch of writes as the benchmark's writer logs it: the clock just before its
#: transaction began, just after it committed, and its writes as (client, version), version
#: C{-1} for a removal (see L{write_of}).
WriteBatch = tuple[float, float, list[tuple[int, int]]]


def write_of(client: int, version: int, base_time: int) -> tuple[BindingKey, Binding | None]:
    """The key and new state (C{None}: removal, C{version} -1) of a logged write."""
    if version < 0:
        return (LINK.link_id, make_duid(client).raw), None
    binding = state(client, version, base_time)
    return binding.key, binding


class Writer:
    """
    Random writes against a store: a third add a new client, a third update a present one
    (new version: new address and CLT_TIME), a third remove one; each logged in L{log}.

    L{write} makes writes one at a time through C{put} and C{remove}, logging each; L{batch}
    only chooses them (as (client, version), for a writer elsewhere that logs them).

    @param put: writes one binding (may return a Deferred); only for L{write}.
    @param remove: removes one key (may return a Deferred); only for L{write}.
    """

    def __init__(
        self,
        log: WriteLog,
        *,
        present: dict[int, int],
        put: Callable[[Binding], Any] | None,
        remove: Callable[[BindingKey], Any] | None,
        base_time: int,
        seed: int = 1,
    ) -> None:
        self.log = log
        self.present = present  # client number -> version
        self.put = put
        self.remove = remove
        self.base_time = base_time
        self.rng = random.Random(seed)
        self.next_client = max(present, default=0) + 1
        # The present clients in a list too, for a random choice in O(1).
        self._clients = list(present)
        self._positions = {client: index for index, client in enumerate(self._clients)}
        self.operations = 0
        # A write L{batch} chose but left for the next batch (its client was in this one).
        self._held: tuple[int, int] | None = None

    def _next(self) -> tuple[int, int]:
        """The next write as (client, version), version -1 for a removal."""
        choice = self.rng.randrange(3)
        if choice == 0 or len(self.present) < 2:
            client = self.next_client
            self.next_client += 1
            self.present[client] = 0
            self._positions[client] = len(self._clients)
            self._clients.append(client)
            return client, 0
        client = self._clients[self.rng.randrange(len(self._clients))]
        if choice == 1:
            self.present[client] += 1
            return client, self.present[client]
        del self.present[client]
        index = self._positions.pop(client)
        last = self._clients.pop()
        if last != client:
            self._clients[index] = last
            self._positions[last] = index
        return client, -1

    def choose(self) -> tuple[BindingKey, Binding | None]:
        """The next write: a key and its new state (C{None}: remove)."""
        client, version = self._next()
        return write_of(client, version, self.base_time)

    def batch(self, count: int) -> list[tuple[int, int]]:
        """
        The next (up to) C{count} writes as (client, version; -1: removal), no client
        twice: the order of two writes to one key inside one transaction would be unknown
        to the log, so a repeated client waits for the next batch.
        """
        writes: list[tuple[int, int]] = []
        clients: set[int] = set()
        while len(writes) < count:
            write = self._held if self._held is not None else self._next()
            self._held = None
            if write[0] in clients:
                self._held = write
                break
            clients.add(write[0])
            writes.append(write)
        return writes

    async def write(self, count: int) -> None:
        """C{count} writes, one after the other, each logged."""
        assert self.put is not None and self.remove is not None, "a writer that only chooses"
        for _ in range(count):
            key, binding = self.choose()
            entry = self.log.issue(key, binding)
            result = self.put(binding) if binding is not None else self.remove(key)
            if isinstance(result, Deferred):
                await result
            self.log.done(entry)
            self.operations += 1


class SQLiteBatchWriter:
    """
    Writes batches into a bulklq SQLite database through L{SQLiteDatabase}, on a
    connection of its own (WAL lets it write while the server reads): the puts and the
    removals of a batch in one transaction (L{SQLiteDatabase.apply}).
    """

    def __init__(self, path: str) -> None:
        from bulklq.stores.sqlite import SQLiteDatabase

        self.database = SQLiteDatabase(path)

    def apply(self, puts: list[Binding], removes: list[BindingKey]) -> None:
        """Put C{puts}, remove C{removes}; returns once the transaction has committed."""
        writes: list[tuple[bool, Any]] = [(False, key) for key in removes]
        if puts:
            writes.append((True, puts))
        if writes:
            self.database.apply(writes)

    def close(self) -> None:
        """Close the connection."""
        self.database.close()


class KeaBatchWriter:
    """
    Writes batches into Kea's lease tables (schema 17: C{lease6.binaddr}, relay tables
    keyed by BYTEA C{lease_addr}) with SQL, as Kea's lease manager would, on a connection of
    its own: one transaction per batch deletes the clients' old leases (and their
    relay-table rows) and inserts their new ones, each statement over arrays of the whole
    batch (C{unnest}, the arrays sent in binary), in pipeline mode: one round trip per batch
    whatever its size.
    """

    def __init__(self, dsn: str) -> None:
        import psycopg

        self.connection = psycopg.connect(dsn, autocommit=True)

    def apply(self, puts: list[Binding], removes: list[BindingKey]) -> None:
        """Put C{puts}, remove C{removes}; returns once the transaction has committed."""
        from bulklq.stores.postgresql import subnet_of_link

        from .test_store_postgresql import V17, kea_rows

        subnets: list[int | None] = []
        duids: list[bytes] = []
        for link_id, duid in [*removes, *(binding.key for binding in puts)]:
            subnets.append(subnet_of_link(link_id))
            duids.append(duid)
        leases: list[list[Any]] = [[] for _ in range(11)]
        relays: tuple[list[bytes], list[bytes]] = ([], [])
        remotes: tuple[list[bytes], list[bytes]] = ([], [])
        for binding in puts:
            # kea_rows gives the addresses' rows, then the prefixes': their binaddr in turn.
            packed_addresses = [lease.address.packed for lease in binding.addresses] + [
                lease.prefix.network_address.packed for lease in binding.prefixes
            ]
            for (row, relay_ids, remote_ids), packed in zip(
                kea_rows(binding, V17), packed_addresses, strict=True
            ):
                for column, value in zip(leases, (*row, packed), strict=True):
                    column.append(value)
                for values, ids in ((relays, relay_ids), (remotes, remote_ids)):
                    values[0].extend(ids)
                    values[1].extend(packed for _ in ids)
        connection = self.connection
        with connection.pipeline(), connection.transaction(), connection.cursor() as cursor:
            for table in ("lease6_relay_id", "lease6_remote_id"):
                cursor.execute(
                    f"DELETE FROM {table} WHERE lease_addr IN (SELECT lease6.binaddr "
                    "FROM lease6 JOIN unnest(%b::bigint[], %b::bytea[]) AS k(subnet_id, duid) "
                    "ON lease6.subnet_id = k.subnet_id AND lease6.duid = k.duid)",
                    (subnets, duids),
                )
            cursor.execute(
                "DELETE FROM lease6 USING unnest(%b::bigint[], %b::bytea[]) AS k(subnet_id, duid) "
                "WHERE lease6.subnet_id = k.subnet_id AND lease6.duid = k.duid",
                (subnets, duids),
            )
            cursor.execute(
                "INSERT INTO lease6 (address, duid, valid_lifetime, expire, subnet_id, "
                "pref_lifetime, lease_type, iaid, prefix_len, state, user_context, binaddr) "
                "SELECT a, d, v, to_timestamp(e), s, p, t, i, l, 0, u, b FROM unnest("
                "%b::varchar[], %b::bytea[], %b::bigint[], %b::bigint[], %b::bigint[], "
                "%b::bigint[], %b::smallint[], %b::int[], %b::smallint[], %b::text[], "
                "%b::bytea[]) AS r(a, d, v, e, s, p, t, i, l, u, b)",
                leases,
            )
            for table, column, values in (
                ("lease6_relay_id", "relay_id", relays),
                ("lease6_remote_id", "remote_id", remotes),
            ):
                if values[0]:
                    cursor.execute(
                        f"INSERT INTO {table} ({column}, lease_addr) "
                        "SELECT * FROM unnest(%b::bytea[], %b::bytea[])",
                        values,
                    )

    def close(self) -> None:
        """Close the connection."""
        self.connection.close()


@implementer(IBindingStore)
class InterleavingStore:
    """Wraps a store; before every C{fetch} runs C{step()} (some writes) to completion."""

    def __init__(self, inner: Any, step: Callable[[], Awaitable[None]]) -> None:
        self.inner = inner
        self.step = step
        self.name = f"interleaving {inner.name}"

    def fetch(
        self, query: BindingQuery, resume_after: BindingKey | None, limit: int
    ) -> Deferred[BindingPage]:
        """Write, then fetch."""

        async def fetch() -> BindingPage:
            await self.step()
            page: BindingPage = await self.inner.fetch(query, resume_after, limit)
            return page

        return Deferred.fromCoroutine(fetch())

    def find_link(self, address: IPv6Address) -> Deferred[Link | None]:
        """The inner store's answer."""
        result: Deferred[Link | None] = self.inner.find_link(address)
        return result

    def get_link(self, link_id: str) -> Deferred[Link | None]:
        """The inner store's answer."""
        result: Deferred[Link | None] = self.inner.get_link(link_id)
        return result

    def close(self) -> Deferred[None]:
        """Close the inner store."""
        result: Deferred[None] = self.inner.close()
        return result


def query_message(xid: int) -> bytes:
    """QUERY_BY_LINK_ADDRESS for L{LINK}, framed."""
    from bulklq.wire import LQQuery, QueryType

    lq = LQQuery(QueryType.QUERY_BY_LINK_ADDRESS, LINK.address + 1, ())
    return frame(Message(MessageType.LEASEQUERY, xid, (ClientId(REQUESTOR_DUID), lq)).encode())


def returned_bindings(data: bytes) -> tuple[list[tuple[BindingKey, frozenset[IPv6Address]]], bool]:
    """The (key, addresses) of every CLIENT_DATA written, and whether a DONE ended it."""
    found = []
    finished = False
    for raw in written_frames(data):
        message = decode_message(raw)
        assert isinstance(message, Message)
        for client_data in message.options_of(ClientData):
            found.append(identify(client_data))
        if message.msg_type == MessageType.LEASEQUERY_DONE:
            finished = True
    return found, finished


async def stream_with_writes(
    factory_store: Any,
    *,
    harness_clock: Any,
    log: WriteLog,
    requestors: int,
    pump: Callable[[], Awaitable[None]],
    config: ServerConfig,
) -> list[dict[str, Any]]:
    """
    Run C{requestors} link queries at once against a server over C{factory_store}, each
    on a transport that takes one page at a time, resuming every transport in turn until
    every query has its DONE; C{pump} lets asynchronous stores make progress. The
    verdicts of L{WriteLog.check}, one per query.
    """
    harness = Harness(config=config, store=factory_store)
    harness.factory = BulkLeasequeryFactory(factory_store, config, harness_clock)
    connections = []
    for number in range(requestors):
        protocol, transport = harness.connect(f"2001:db8::{number + 1:x}", full=True)
        assert protocol is not None
        connections.append([protocol, transport, log.seq, None])
        protocol.dataReceived(query_message(0x900 + number))
    while any(c[3] is None for c in connections):
        for connection in connections:
            if connection[3] is not None:
                continue
            _, finished = returned_bindings(connection[1].value())
            if finished:
                connection[3] = log.seq
            else:
                connection[1].producer.resumeProducing()
        await pump()
    verdicts = []
    for protocol, transport, start, end in connections:
        found, _ = returned_bindings(transport.value())
        verdicts.append(log.check(start, end, found))
        harness.lose(protocol, transport)
    return verdicts


class WriteLogTests(SynchronousTestCase):
    """The checker must be able to fail."""

    def test_check_finds_problems(self) -> None:
        """A duplicate, a missing unchanged binding and a never-seen state are flagged."""
        log = WriteLog()
        a, b, c = (state(n, 0, 1000) for n in (1, 2, 3))
        log.initial([a, b, c])
        start = log.seq
        end = log.seq + 10
        verdict = log.check(
            start,
            end,
            [
                (a.key, fingerprint(a)),
                (a.key, fingerprint(a)),
                (c.key, fingerprint(state(3, 7, 1000))),
            ],
        )
        self.assertEqual((verdict["twice"], verdict["missing"], verdict["wrong_state"]), (1, 1, 1))
        self.assertEqual(len(verdict["problems"]), 3)
        good = log.check(start, end, [(k.key, fingerprint(k)) for k in (a, b, c)])
        self.assertEqual(good["problems"], [])

    def _recorded(self) -> tuple[WriteLog, dict[str, Binding]]:
        """
        A log of writes made elsewhere, around a query from 20 to 30: C{a} updated after
        it, C{b} updated before it, C{c} updated across its start, C{d} removed across its
        end, C{e} added before it, C{f} removed before it.
        """
        states = {f"{name}0": state(n, 0, 1000) for n, name in enumerate("abcdf", start=1)}
        log = WriteLog()
        log.initial(states.values())
        changes = [
            ("a", 1, 31.0, 32.0),
            ("b", 1, 10.0, 11.0),
            ("c", 1, 19.0, 21.0),
            ("d", -1, 29.0, 31.0),
            ("e", 0, 5.0, 6.0),
            ("f", -1, 7.0, 8.0),
        ]
        for name, version, started, committed in changes:
            key, binding = write_of("abcdfe".index(name) + 1, version, 1000)
            log.record(key, binding, started, committed)
            if binding is not None:
                states[f"{name}{version}"] = binding
        return log, states

    def test_recorded_intervals_consistent(self) -> None:
        """
        Judged by the writes' transaction intervals: the states present for the whole
        query are due exactly once (C{a} as before its later update, C{b} as updated,
        C{e} added); C{c} and C{d}, changed during the query, may come in either state
        or not at all; C{f}, removed before, must not come.
        """
        log, states = self._recorded()
        returned = [
            (states[name].key, fingerprint(states[name])) for name in ("a0", "b1", "c1", "d0", "e0")
        ]
        verdict = log.check(20.0, 30.0, returned)
        self.assertEqual(verdict["problems"], [])
        self.assertEqual(verdict["unchanged"], 3)
        alternative = [(states[n].key, fingerprint(states[n])) for n in ("a0", "b1", "c0", "e0")]
        self.assertEqual(log.check(20.0, 30.0, alternative)["problems"], [])

    def test_recorded_intervals_problems(self) -> None:
        """
        Injected into a good result: a duplicate (C{a} twice), a missing binding (C{e}
        left out), a stale version (C{b} as it was before its update committed) and a
        binding removed before the query (C{f}): each is reported.
        """
        log, states = self._recorded()
        returned = [
            (states[name].key, fingerprint(states[name]))
            for name in ("a0", "a0", "b0", "c1", "d0", "f0")
        ]
        verdict = log.check(20.0, 30.0, returned)
        self.assertEqual((verdict["twice"], verdict["missing"], verdict["wrong_state"]), (1, 1, 2))
        self.assertEqual(len(verdict["problems"]), 4)
        self.assertIn("returned 2 times", verdict["problems"][0])
        self.assertIn("not returned", verdict["problems"][1])
        self.assertIn("never had", verdict["problems"][2])

    def test_record_refuses_backwards_interval(self) -> None:
        """A write cannot commit before it started: the log refuses it."""
        key, binding = write_of(1, 0, 1000)
        self.assertRaises(ValueError, WriteLog().record, key, binding, 2.0, 1.0)

    def test_record_batches(self) -> None:
        """Batches as the writer logs them become one entry per write, in order."""
        log = WriteLog()
        count = log.record_batches([(1.0, 2.0, [(1, 0), (2, 0)]), (3.0, 4.0, [(1, -1)])], 1000)
        self.assertEqual(count, 3)
        key = write_of(1, 0, 1000)[0]
        self.assertEqual(
            [(w[0], w[1], w[2] is None) for w in log.history[key]],
            [(1.0, 2.0, False), (3.0, 4.0, True)],
        )


class WriterTests(SynchronousTestCase):
    """The random writer's batches."""

    def test_batches_lose_nothing(self) -> None:
        """
        Batches never hold one client twice, and together they are exactly the writes the
        writer chose, in order: a repeated client is held over to the next batch.
        """
        present = dict.fromkeys(range(1, 21), 0)
        batched = Writer(WriteLog(), present=dict(present), put=None, remove=None, base_time=0)
        single = Writer(WriteLog(), present=dict(present), put=None, remove=None, base_time=0)
        writes: list[tuple[int, int]] = []
        held_over = 0
        for _ in range(200):
            batch = batched.batch(8)
            self.assertEqual(len({client for client, _ in batch}), len(batch))
            held_over += len(batch) < 8
            writes += batch
        self.assertGreater(held_over, 0)
        self.assertEqual(writes, [single._next() for _ in writes])


class _BatchWriterMixin:
    """A batch writer leaves the store holding exactly what the writer's model says."""

    def open_writer(self, initial: list[Binding]) -> tuple[Any, Callable[[], list[Binding]]]:
        raise NotImplementedError

    def test_batches_written(self) -> None:
        """After 40 batches of adds, updates and removals, the store matches the model."""
        test: Any = self
        present = dict.fromkeys(range(1, 51), 0)
        initial = [state(client, 0, 1000) for client in present]
        sink, stored = self.open_writer(initial)
        writer = Writer(WriteLog(), present=present, put=None, remove=None, base_time=1000)
        for size in [10] * 40 + [1]:  # the last takes the write held over, if any
            puts, removes = [], []
            for client, version in writer.batch(size):
                key, binding = write_of(client, version, 1000)
                if binding is None:
                    removes.append(key)
                else:
                    puts.append(binding)
            sink.apply(puts, removes)
        expected = [state(client, version, 1000) for client, version in present.items()]
        test.assertEqual(self._rows(stored()), self._rows(expected))

    @staticmethod
    def _rows(bindings: list[Binding]) -> list[tuple[BindingKey, list[IPv6Address]]]:
        """Each binding's key and addresses, sorted: a key present twice shows twice."""
        return sorted((binding.key, sorted(fingerprint(binding))) for binding in bindings)


class SQLiteBatchWriterTests(_BatchWriterMixin, SynchronousTestCase):
    """L{SQLiteBatchWriter}."""

    def open_writer(self, initial: list[Binding]) -> tuple[Any, Callable[[], list[Binding]]]:
        from bulklq.stores.sqlite import SQLiteDatabase

        path = self.mktemp() + ".db"
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        database = SQLiteDatabase(path)
        self.addCleanup(database.close)
        database.add_links([LINK])
        database.put_many(initial)
        sink = SQLiteBatchWriter(path)
        self.addCleanup(sink.close)
        return sink, lambda: list(database.bindings())


class KeaBatchWriterTests(_BatchWriterMixin, SynchronousTestCase):
    """L{KeaBatchWriter}, its leases read back from C{lease6} (BULKLQ_TEST_POSTGRES_DSN)."""

    def open_writer(self, initial: list[Binding]) -> tuple[Any, Callable[[], list[Binding]]]:
        from .test_store_postgresql import V17, ScratchDatabase

        _require_postgresql()
        database = ScratchDatabase(V17)
        self.addCleanup(database.drop)
        sink = KeaBatchWriter(database.dsn)
        self.addCleanup(sink.close)
        sink.apply(initial, [])

        def stored() -> list[Binding]:
            rows = sink.connection.execute(
                "SELECT duid, address, subnet_id FROM lease6 ORDER BY duid"
            ).fetchall()
            return [
                make_binding(Duid(duid), f"subnet-{subnet}", addresses=(address,))
                for duid, address, subnet in rows
            ]

        return sink, stored


class _ConsistencyMixin:
    """The scenario, for a store the subclass opens."""

    bindings = 300
    requestors = 3
    writes_per_fetch = 3
    page_size = 7

    def open_store(
        self, initial: list[Binding], base_time: int
    ) -> Awaitable[tuple[Any, Callable[[Binding], Any], Callable[[BindingKey], Any]]]:
        raise NotImplementedError

    async def scenario(
        self, base_time: int, clock: Any, pump: Callable[[], Awaitable[None]]
    ) -> None:
        initial = [state(n, 0, base_time) for n in range(1, self.bindings + 1)]
        store, put, remove = await self.open_store(initial, base_time)
        log = WriteLog()
        log.initial(initial)
        writer = Writer(
            log,
            present=dict.fromkeys(range(1, self.bindings + 1), 0),
            put=put,
            remove=remove,
            base_time=base_time,
        )
        wrapped = InterleavingStore(store, lambda: writer.write(self.writes_per_fetch))
        config = harness_config(page_size=self.page_size, store_timeout=60.0)
        verdicts = await stream_with_writes(
            wrapped,
            harness_clock=clock,
            log=log,
            requestors=self.requestors,
            pump=pump,
            config=config,
        )
        test: Any = self
        for verdict in verdicts:
            test.assertEqual(verdict["problems"], [])
            test.assertGreater(verdict["unchanged"], self.bindings // 5)
        test.assertGreater(writer.operations, 100)


class MemoryConsistencyTests(_ConsistencyMixin, SynchronousTestCase):
    """The memory store, on an injected clock."""

    async def open_store(self, initial: list[Binding], base_time: int) -> Any:
        clock = Clock()
        clock.advance(base_time)
        store = MemoryBindingStore([LINK], clock=clock)
        store.put_many(initial)
        return store, store.put, store.remove

    def test_consistency_under_writes(self) -> None:
        """
        300 bindings, 3 writes before every page fetch (pages of 7), 3 requestors
        streaming the link at once: every binding unchanged for a whole query is
        returned exactly once, none twice, every returned state existed during the query.
        """
        clock = Clock()
        clock.advance(1_700_000_000)

        async def pump() -> None:
            return None

        self.successResultOf(ensureDeferred(self.scenario(1_700_000_000, clock, pump)))


class _RealReactorConsistency(_ConsistencyMixin):
    """Stores that answer from threads: the real reactor, real time."""

    def test_consistency_under_writes(self) -> Deferred[None]:
        """
        300 bindings, 3 writes before every page fetch (pages of 7), 3 requestors
        streaming the link at once: every binding unchanged for a whole query is
        returned exactly once, none twice, every returned state existed during the query.
        """

        async def pump() -> None:
            await deferLater(reactor, 0.002)  # type: ignore[arg-type]

        return ensureDeferred(self.scenario(int(time.time()), reactor, pump))


class SQLiteConsistencyTests(_RealReactorConsistency, TestCase):
    """The SQLite store (a thread pool)."""

    async def open_store(self, initial: list[Binding], base_time: int) -> Any:
        from bulklq.stores.sqlite import SQLiteBindingStore, SQLiteDatabase

        path = os.path.join(self.mktemp() + ".db")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        database = SQLiteDatabase(path)
        database.add_links([LINK])
        database.put_many(initial)
        database.close()
        store = SQLiteBindingStore(path, reactor, threads=2)  # type: ignore[arg-type]
        self.addCleanup(store.close)
        return store, store.put, store.remove


class PostgreSQLConsistencyTests(_RealReactorConsistency, TestCase):
    """
    The PostgreSQL store over Kea's schema (BULKLQ_TEST_POSTGRES_DSN), written by
    L{KeaBatchWriter}, one transaction per write.
    """

    async def open_store(self, initial: list[Binding], base_time: int) -> Any:
        from bulklq.stores.postgresql import PostgreSQLBindingStore, PostgreSQLSettings

        from .test_store_postgresql import V17, ScratchDatabase

        _require_postgresql()
        database = ScratchDatabase(V17)
        self.addCleanup(database.drop)
        sink = KeaBatchWriter(database.dsn)
        self.addCleanup(sink.close)
        sink.apply(initial, [])
        store = PostgreSQLBindingStore(
            PostgreSQLSettings(database.dsn, pool_size=2), reactor, [LINK]
        )
        self.addCleanup(store.close)
        return store, lambda b: sink.apply([b], []), lambda k: sink.apply([], [k])


def _require_postgresql() -> None:
    """Skip without BULKLQ_TEST_POSTGRES_DSN, or fail when services are required."""
    if not os.environ.get("BULKLQ_TEST_POSTGRES_DSN"):
        reason = "BULKLQ_TEST_POSTGRES_DSN is not set (scripts/postgres-test-server)"
        if os.environ.get("BULKLQ_REQUIRE_SERVICES") == "1":
            raise AssertionError(reason)
        raise SkipTest(reason)
