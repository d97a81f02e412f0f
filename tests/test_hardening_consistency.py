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
from bulklq.model import Binding, BindingKey, BindingPage, BindingQuery, Link
from bulklq.server import BulkLeasequeryFactory
from bulklq.stores.memory import MemoryBindingStore
from bulklq.testing import make_binding, make_duid, make_link
from bulklq.wire import ClientData, ClientId, IAAddress, Message, MessageType, decode_message

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
    address = LINK.prefixes[0].network_address + (version << 32) + client
    return make_binding(client, LINK.link_id, cltt=base_time - 60 + version, addresses=(address,))


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
    Every write with the sequence numbers at which it was issued and completed, per key.
    C{seq} advances on each issue and each completion; a query's window is the sequence
    numbers when it was sent and when its answer ended. A write still in flight when a
    query is judged counts as completing after it (C{done} is infinite until then).
    """

    seq: float = 0
    history: dict[BindingKey, list[list[Any]]] = attrs.Factory(dict)
    #: When given, stamps come from this clock (C{time.monotonic}, shared by processes
    #: on one host) instead of a counter, so queries run elsewhere can be judged.
    clock: Callable[[], float] | None = None

    def _tick(self) -> float:
        self.seq = self.clock() if self.clock is not None else self.seq + 1
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

    def check(
        self, start: float, end: float, returned: list[tuple[BindingKey, frozenset[IPv6Address]]]
    ) -> dict[str, Any]:
        """
        Judge one query that was sent at C{start} and ended at C{end}: counts and the
        first few problems (returned twice, an unchanged binding missing, a state the key
        never had during the query).
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
            during = [w for w in writes if not (w[1] < start or w[0] > end)]
            before = [w for w in writes if w[1] < start]
            present = before and before[-1][2] is not None
            if present and not during:
                unchanged += 1
                if seen.get(key) != 1:
                    missing += 1
                    if missing <= 3:
                        problems.append(f"unchanged binding not returned once: {key!r}")
        wrong = 0
        for key, addresses in returned:
            writes = self.history.get(key, [])
            before = [w for w in writes if w[1] < start][-1:]
            during = [w for w in writes if not (w[1] < start or w[0] > end)]
            allowed = {fingerprint(w[2]) for w in before + during if w[2] is not None}
            if addresses not in allowed:
                wrong += 1
                if wrong <= 3:
                    got = sorted(str(a) for a in addresses)
                    had = sorted(sorted(str(a) for a in state) for state in allowed)
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


class Writer:
    """
    Random writes against a store: a third add a new client, a third update a present one
    (new version: new address and CLT_TIME), a third remove one; each logged in L{log}.

    @param put: writes one binding (may return a Deferred).
    @param remove: removes one key (may return a Deferred).
    """

    def __init__(
        self,
        log: WriteLog,
        *,
        present: dict[int, int],
        put: Callable[[Binding], Any],
        remove: Callable[[BindingKey], Any],
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

    def choose(self) -> tuple[BindingKey, Binding | None]:
        """The next write: a key and its new state (C{None}: remove)."""
        choice = self.rng.randrange(3)
        if choice == 0 or len(self.present) < 2:
            client = self.next_client
            self.next_client += 1
            self.present[client] = 0
            self._positions[client] = len(self._clients)
            self._clients.append(client)
            binding = state(client, 0, self.base_time)
            return binding.key, binding
        client = self._clients[self.rng.randrange(len(self._clients))]
        if choice == 1:
            self.present[client] += 1
            binding = state(client, self.present[client], self.base_time)
            return binding.key, binding
        del self.present[client]
        index = self._positions.pop(client)
        last = self._clients.pop()
        if last != client:
            self._clients[index] = last
            self._positions[last] = index
        return (LINK.link_id, make_duid(client).raw), None

    async def write(self, count: int) -> None:
        """C{count} writes, one after the other, each logged."""
        for _ in range(count):
            key, binding = self.choose()
            entry = self.log.issue(key, binding)
            result = self.put(binding) if binding is not None else self.remove(key)
            if isinstance(result, Deferred):
                await result
            self.log.done(entry)
            self.operations += 1


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
        self.assertEqual((verdict["twice"], verdict["missing"], verdict["wrong_state"]), (1, 2, 1))
        good = log.check(start, end, [(k.key, fingerprint(k)) for k in (a, b, c)])
        self.assertEqual(good["problems"], [])


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
    The PostgreSQL store over Kea's schema (BULKLQ_TEST_POSTGRES_DSN); smaller, as each
    write is a transaction of its own on a new connection.
    """

    bindings = 150
    page_size = 10

    async def open_store(self, initial: list[Binding], base_time: int) -> Any:
        from bulklq.stores.postgresql import PostgreSQLBindingStore, PostgreSQLSettings

        from .test_store_postgresql import V17, ScratchDatabase

        if not os.environ.get("BULKLQ_TEST_POSTGRES_DSN"):
            reason = "BULKLQ_TEST_POSTGRES_DSN is not set (scripts/postgres-test-server)"
            if os.environ.get("BULKLQ_REQUIRE_SERVICES") == "1":
                raise AssertionError(reason)
            raise SkipTest(reason)
        database = ScratchDatabase(V17)
        self.addCleanup(database.drop)
        database.put(initial)
        store = PostgreSQLBindingStore(
            PostgreSQLSettings(database.dsn, pool_size=2), reactor, [LINK]
        )
        self.addCleanup(store.close)
        return store, lambda b: database.put([b]), lambda k: database.remove([k])
