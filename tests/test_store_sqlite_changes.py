"""
The SQLite store's change feed for Active Leasequery (RFC 7653): writes published after
they commit (RFC 7653 section 8.4: every change of a binding is sent), removals carrying
the binding as it was, catch-up history and DataMissing (RFC 7653 section 8.4.1 and 9.3),
expiry published as a removal by an indexed sweep (RFC 7653 section 9.3), the schema
migration adding that index, and the service, twistd options and a watcher end to end.

Most tests run the store's statements synchronously (a thread pool that runs work at once,
or when told to), so that they are deterministic; a few use the real thread pool and
reactor.
"""

from __future__ import annotations

import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import defer, endpoints, utils
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from bulklq import tap
from bulklq.changes import BindingChange, ExpiryPublisher, PublishesExpiry
from bulklq.config import ServerConfig, parse_access_rule
from bulklq.interfaces import IBindingChangeFeed, IBindingStore
from bulklq.model import Binding
from bulklq.server import ActiveConfig
from bulklq.service import BulkLeasequeryService
from bulklq.stores import sqlite
from bulklq.stores.sqlite import (
    SCHEMA_VERSION,
    SQLiteBindingStore,
    SQLiteDatabase,
    SQLiteStoreError,
    SQLiteSweep,
)
from bulklq.testing import DEFAULT_CLTT, make_binding, make_duid
from bulklq.wire import ClientData, LQBaseTime, MessageType, RemoteId, StatusCode

from .test_active_glue import active_query, lifetimes, open_active_query
from .test_server import SERVER_DUID, status_of, take
from .test_server_tls import StartTLSRequestor


class _SyncPool:
    """A stand-in for the store's thread pool that runs each piece of work at once."""

    def __init__(self, **kwargs: Any) -> None:
        self.held: list[Callable[[], None]] = []
        self.hold = False

    def start(self) -> None:
        """Nothing to start."""

    def stop(self) -> None:
        """Nothing to stop."""

    def callInThreadWithCallback(
        self, onResult: Callable[[bool, Any], None], f: Callable[..., Any], *a: Any, **kw: Any
    ) -> None:
        """Run C{f} now (or when L{run} is called, while C{hold} is set)."""

        def work() -> None:
            try:
                result = f(*a, **kw)
            except BaseException:
                onResult(False, Failure())
            else:
                onResult(True, result)

        if self.hold:
            self.held.append(work)
        else:
            work()

    def callInThread(self, f: Callable[..., Any], *a: Any, **kw: Any) -> None:
        """Run C{f} now."""
        f(*a, **kw)

    def run(self) -> int:
        """Run the work held so far (and work it queues); how many pieces ran."""
        count = 0
        while self.held:
            self.held.pop(0)()
            count += 1
        return count


class _SyncReactor(MemoryReactorClock):
    """A memory reactor whose C{callFromThread} calls at once (the pool is synchronous)."""

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Call C{f} now."""
        f(*args, **kwargs)


class _Recorder:
    """Collects the changes a feed publishes."""

    def __init__(self) -> None:
        self.changes: list[BindingChange] = []

    def __call__(self, change: BindingChange) -> None:
        self.changes.append(change)

    def take(self) -> list[tuple[Binding, bool]]:
        """(binding, removed) of every change so far, and forget them."""
        found = [(change.binding, change.removed) for change in self.changes]
        self.changes = []
        return found


def _refuse(path: str, statement: str) -> None:
    """Install a trigger that makes some writes fail (the transaction rolls back)."""
    connection = sqlite3.connect(path)
    connection.execute(statement)
    connection.commit()
    connection.close()


_REFUSE_INSERT = (
    "CREATE TRIGGER refuse_insert BEFORE INSERT ON bindings WHEN NEW.link_id = 'bad' "
    "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
)
_REFUSE_DELETE = (
    "CREATE TRIGGER refuse_delete BEFORE DELETE ON bindings WHEN OLD.link_id = 'kept' "
    "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
)


class SyncStoreCase(SynchronousTestCase):
    """A store over a synchronous pool and a memory reactor at L{DEFAULT_CLTT}."""

    def setUp(self) -> None:
        self.path = self.mktemp()
        self.reactor = _SyncReactor()
        self.reactor.advance(DEFAULT_CLTT)
        self.patch(sqlite, "ThreadPool", _SyncPool)
        self.store = SQLiteBindingStore(self.path, self.reactor)  # type: ignore[arg-type]
        self.pool: _SyncPool = self.store._pool  # type: ignore[assignment]
        self.addCleanup(self.store.close)
        self.recorder = _Recorder()
        self.unsubscribe = self.store.subscribe(self.recorder)

    def stored(self, binding: Binding) -> Binding | None:
        """The binding with C{binding}'s key as another connection reads it now."""
        database = SQLiteDatabase(self.path)
        try:
            return database.get(binding.key)
        finally:
            database.close()


class WriteTests(SyncStoreCase):
    """C{put}, C{put_many} and C{remove} publish what they committed, nothing else."""

    def test_provides_feed(self) -> None:
        """RFC 7653 section 9.2: the SQLite store is a change feed (and still a store)."""
        self.assertTrue(IBindingChangeFeed.providedBy(self.store))
        self.assertTrue(IBindingStore.providedBy(self.store))
        self.assertIsInstance(self.store, PublishesExpiry)

    def test_put_published_after_commit(self) -> None:
        """RFC 7653 section 8.4: a binding written is published, with the clock's time,
        once committed: the subscriber already sees it from another connection."""
        binding = make_binding(1, relay_id=make_duid(900), remote_id=RemoteId(9, b"port-1"))
        seen: list[Binding | None] = []
        self.store.subscribe(lambda change: seen.append(self.stored(change.binding)))
        self.reactor.advance(5)
        self.successResultOf(self.store.put(binding))
        (change,) = self.recorder.changes
        self.assertEqual((change.binding, change.removed), (binding, False))
        self.assertEqual(change.time, DEFAULT_CLTT + 5)
        self.assertEqual(seen, [binding])

    def test_nothing_before_commit(self) -> None:
        """Nothing is published while the write's transaction has not run; writes queued
        meanwhile go to the pool together after it, and changes are published in the
        order the writes were made, each before its Deferred fires."""
        self.pool.hold = True
        first = make_binding(1, valid_lifetime=100)
        second = make_binding(1, valid_lifetime=200)
        third = make_binding(2)
        done = [self.store.put(first)]
        self.assertEqual(len(self.pool.held), 1)
        done += [self.store.put(second), self.store.put_many([third])]
        self.assertEqual(len(self.pool.held), 1)  # they wait for the first
        self.assertEqual(self.recorder.changes, [])
        seen: list[int] = []
        done[1].addCallback(lambda _: seen.append(len(self.recorder.changes)))
        self.assertEqual(self.pool.run(), 2)  # the first, then the other two as one job
        for written in done:
            self.successResultOf(written)
        self.assertEqual(seen, [2])
        self.assertEqual(self.recorder.take(), [(first, False), (second, False), (third, False)])
        self.assertEqual(self.stored(second), second)

    def test_queued_writes_one_transaction(self) -> None:
        """Puts and removals queued together commit as one transaction, applied in the
        order they were made (a binding put then removed is gone; removed then put is
        there), each with its own result, published in that order."""
        first, second = make_binding(1), make_binding(2)
        self.successResultOf(self.store.put(first))
        self.recorder.take()
        self.pool.hold = True
        blocker = self.store.put(make_binding(9))
        again = make_binding(1, valid_lifetime=77)
        done = [
            self.store.remove(first.key),
            self.store.put(again),
            self.store.put_many([second, second]),
            self.store.remove(second.key),
            self.store.remove(make_binding(5).key),
        ]
        commits: list[int] = []
        original = SQLiteDatabase.apply

        def apply(database: SQLiteDatabase, writes: Any) -> Any:
            commits.append(len(writes))
            return original(database, writes)

        self.patch(SQLiteDatabase, "apply", apply)
        self.assertEqual(self.pool.run(), 2)
        self.successResultOf(blocker)
        self.assertEqual(commits, [5])
        self.assertEqual([self.successResultOf(d) for d in done], [True, None, 1, True, False])
        self.assertEqual(
            self.recorder.take(),
            [
                (make_binding(9), False),
                (first, True),
                (again, False),
                (second, False),
                (second, True),
            ],
        )
        self.assertEqual(self.stored(again), again)
        self.assertIsNone(self.stored(second))

    def test_failure_in_a_queued_burst(self) -> None:
        """A write that fails among writes queued together fails alone: the others commit
        and are published, in order."""
        _refuse(self.path, _REFUSE_INSERT)
        self.pool.hold = True
        bad, good = make_binding(2, "bad"), make_binding(3)
        done = [self.store.put(make_binding(1)), self.store.put(bad), self.store.put(good)]
        self.pool.run()
        self.successResultOf(done[0])
        self.failureResultOf(done[1], sqlite3.IntegrityError)
        self.successResultOf(done[2])
        self.assertEqual(self.recorder.take(), [(make_binding(1), False), (good, False)])

    def test_failed_put_publishes_nothing(self) -> None:
        """A write that rolls back publishes nothing, and its Deferred fails."""
        _refuse(self.path, _REFUSE_INSERT)
        bad = make_binding(2, "bad")
        failure = self.failureResultOf(self.store.put(bad))
        self.assertIn("refused by the test", str(failure.value))
        self.assertEqual(self.recorder.changes, [])
        self.assertIsNone(self.stored(bad))
        good = make_binding(3)
        self.successResultOf(self.store.put(good))
        self.assertEqual(self.recorder.take(), [(good, False)])

    def test_remove_carries_old_binding(self) -> None:
        """RFC 7653 section 8.4: a removal is published with the binding as it was (read in
        the deleting transaction); removing a missing key publishes nothing."""
        binding = make_binding(1, relay_id=make_duid(900), remote_id=RemoteId(9, b"port-1"))
        self.successResultOf(self.store.put(binding))
        self.recorder.take()
        self.assertTrue(self.successResultOf(self.store.remove(binding.key)))
        self.assertEqual(self.recorder.take(), [(binding, True)])
        self.assertIsNone(self.stored(binding))
        self.assertFalse(self.successResultOf(self.store.remove(binding.key)))
        self.assertEqual(self.recorder.changes, [])

    def test_failed_remove_publishes_nothing(self) -> None:
        """A removal that rolls back publishes nothing and leaves the binding."""
        kept = make_binding(1, "kept")
        self.successResultOf(self.store.put(kept))
        self.recorder.take()
        _refuse(self.path, _REFUSE_DELETE)
        self.failureResultOf(self.store.remove(kept.key), sqlite3.IntegrityError)
        self.assertEqual(self.recorder.changes, [])
        self.assertEqual(self.stored(kept), kept)

    def test_put_many_publishes_every_binding(self) -> None:
        """C{put_many} publishes every binding written (the last of a repeated key)."""
        bindings = [make_binding(n) for n in range(1, 6)]
        again = make_binding(2, valid_lifetime=99)
        self.assertEqual(self.successResultOf(self.store.put_many([*bindings, again])), 5)
        found = self.recorder.take()
        self.assertEqual(
            sorted((b.key, b, removed) for b, removed in found),
            sorted((b.key, b, False) for b in [again, *bindings[:1], *bindings[2:]]),
        )

    def test_put_many_partial_failure(self) -> None:
        """When a later batch of C{put_many} rolls back, the batches that committed are
        published (they are in the database), the failed one is not."""
        self.patch(SQLiteDatabase.put_many, "__defaults__", (2, None))
        _refuse(self.path, _REFUSE_INSERT)
        bindings = [make_binding(1), make_binding(2), make_binding(3), make_binding(4, "bad")]
        self.failureResultOf(self.store.put_many(bindings), sqlite3.IntegrityError)
        self.assertEqual(self.recorder.take(), [(bindings[0], False), (bindings[1], False)])
        self.assertEqual(self.stored(bindings[1]), bindings[1])
        self.assertIsNone(self.stored(bindings[2]))

    def test_inactive_costs_nothing(self) -> None:
        """With no subscriber and no history, writes publish nothing (and build no
        change); subscribing later sees only the writes after it."""
        self.unsubscribe()
        self.assertFalse(self.store.changes.active)
        published: list[Any] = []
        original = self.store.changes.publish

        def publish(binding: Binding, removed: bool = False) -> Any:
            published.append(binding)
            return original(binding, removed)

        self.patch(self.store.changes, "publish", publish)
        self.successResultOf(self.store.put(make_binding(1)))
        self.successResultOf(self.store.put_many([make_binding(2), make_binding(3)]))
        self.successResultOf(self.store.remove(make_binding(1).key))
        self.assertEqual(published, [])
        self.store.subscribe(self.recorder)
        self.successResultOf(self.store.remove(make_binding(2).key))
        self.assertEqual(self.recorder.take(), [(make_binding(2), True)])

    def test_changes_since(self) -> None:
        """RFC 7653 section 8.4.1 and 9.3: with history kept, C{changes_since} gives the
        latest change of each binding since a time, oldest first; a time before the
        history began, or beyond the window, is DataMissing (C{None})."""
        start = self.reactor.seconds()
        self.store.keep_history()
        self.store.changes.window = 100
        first, second = make_binding(1), make_binding(2)
        self.reactor.advance(10)
        self.successResultOf(self.store.put(first))
        self.reactor.advance(10)
        self.successResultOf(self.store.put(second))
        self.reactor.advance(10)
        self.successResultOf(self.store.remove(first.key))
        found = self.successResultOf(self.store.changes_since(start + 15))
        assert found is not None
        self.assertEqual(
            [(c.binding, c.removed, c.time) for c in found],
            [(second, False, start + 20), (first, True, start + 30)],
        )
        self.assertIsNone(self.successResultOf(self.store.changes_since(start - 1)))
        self.reactor.advance(95)
        self.assertIsNone(self.successResultOf(self.store.changes_since(start + 15)))


class ExpiryTests(SyncStoreCase):
    """RFC 7653 section 9.3: a binding whose last lease runs out is published as removed."""

    def sweep(self, **kwargs: Any) -> SQLiteSweep:
        """A started sweep every second (of expiries only, unless told); stopped, and no
        timer left, at cleanup."""
        kwargs.setdefault("other_writers", False)
        sweep = SQLiteSweep(self.store, self.reactor, 1.0, **kwargs)
        sweep.start()

        def stop() -> None:
            sweep.stop()
            self.assertFalse(sweep.running)
            self.assertEqual(self.reactor.getDelayedCalls(), [])

        self.addCleanup(stop)
        return sweep

    def expiring(self, client: int, seconds: int, link_id: str = "link-1") -> Binding:
        """A binding whose last lease ends C{seconds} from now."""
        now = int(self.reactor.seconds())
        return make_binding(client, link_id, cltt=now - 100, valid_lifetime=100 + seconds)

    def test_expiry_published_once(self) -> None:
        """RFC 7653 section 9.3: the binding is published as removed, as it was, at the
        first sweep at or after its expiry, and only once."""
        sweep = self.sweep()
        self.assertIsInstance(sweep, ExpiryPublisher)
        binding = self.expiring(1, 5)
        self.successResultOf(self.store.put(binding))
        self.assertEqual(self.recorder.take(), [(binding, False)])
        self.reactor.pump([1.0] * 4)
        self.assertEqual(self.recorder.changes, [])
        self.reactor.pump([1.0])
        (change,) = self.recorder.changes
        self.assertEqual((change.binding, change.removed), (binding, True))
        self.assertEqual(change.time, self.reactor.seconds())
        self.reactor.pump([1.0] * 10)
        self.assertEqual(len(self.recorder.changes), 1)
        self.assertEqual(sweep.published, 1)
        # The binding stays in the database: expiry is not a deletion.
        self.assertEqual(self.stored(binding), binding)

    def test_rewritten_or_removed_not_expired(self) -> None:
        """A binding renewed before its expiry, or removed, is not published as expired
        at its old expiry time."""
        self.sweep()
        renewed, removed = self.expiring(1, 3), self.expiring(2, 3)
        self.successResultOf(self.store.put_many([renewed, removed]))
        self.reactor.advance(1)
        longer = self.expiring(1, 50)
        self.successResultOf(self.store.put(longer))
        self.successResultOf(self.store.remove(removed.key))
        self.recorder.take()
        self.reactor.pump([1.0] * 10)
        self.assertEqual(self.recorder.changes, [])

    def test_expired_before_start_not_published(self) -> None:
        """Bindings that expired before the sweep started are not published (they are
        older than the history); those expiring after it are."""
        old, later = self.expiring(1, -5), self.expiring(2, 2)
        self.successResultOf(self.store.put_many([old, later]))
        self.recorder.take()
        self.sweep()
        self.reactor.pump([1.0] * 3)
        self.assertEqual(self.recorder.take(), [(later, True)])

    def test_many_in_pages(self) -> None:
        """Expiries found by several pages of the index are all published, by expiry
        time then key."""
        sweep = self.sweep(batch=2)
        bindings = [self.expiring(n, 2 if n % 2 else 3) for n in range(1, 8)]
        self.successResultOf(self.store.put_many(bindings))
        self.recorder.take()
        self.reactor.advance(5)
        found = self.recorder.take()
        expected = sorted(bindings, key=lambda b: (b.expires_at(), b.key))
        self.assertEqual(found, [(b, True) for b in expected])
        self.assertEqual(sweep.published, 7)

    def test_nobody_listens_no_query(self) -> None:
        """With no subscriber and no history a sweep reads nothing, yet moves on (what
        expired meanwhile is not published later)."""
        sweep = self.sweep()
        self.successResultOf(self.store.put(self.expiring(1, 2)))
        self.unsubscribe()
        self.recorder.take()
        self.pool.hold = True
        self.reactor.pump([1.0] * 3)
        self.assertEqual(self.pool.held, [])
        self.assertEqual(sweep.swept_until, int(self.reactor.seconds()))
        self.pool.hold = False
        self.store.subscribe(self.recorder)
        self.reactor.pump([1.0] * 3)
        self.assertEqual(self.recorder.changes, [])

    def test_expiry_ordered_with_writes(self) -> None:
        """A sweep and a write of the same binding are published in the order they ran:
        the sweep holds the writes off while it reads."""
        sweep = self.sweep()
        binding = self.expiring(1, 1)
        self.successResultOf(self.store.put(binding))
        self.recorder.take()
        self.pool.hold = True
        self.reactor.advance(1)  # the sweep is queued
        renewed = make_binding(1, cltt=int(self.reactor.seconds()), valid_lifetime=60)
        written = self.store.put(renewed)
        self.assertEqual(len(self.pool.held), 1)
        self.pool.run()
        self.successResultOf(written)
        self.assertEqual(self.recorder.take(), [(binding, True), (renewed, False)])
        self.assertEqual(sweep.published, 1)

    def test_failed_sweep_retried(self) -> None:
        """A sweep whose query fails is logged and its window swept again next time."""
        sweep = self.sweep()
        binding = self.expiring(1, 1)
        self.successResultOf(self.store.put(binding))
        self.recorder.take()
        original = SQLiteDatabase.expired
        calls: list[int] = []

        def expired(database: SQLiteDatabase, *args: Any, **kwargs: Any) -> Any:
            calls.append(1)
            if len(calls) == 1:
                raise sqlite3.OperationalError("database is locked")
            return original(database, *args, **kwargs)

        self.patch(SQLiteDatabase, "expired", expired)
        self.reactor.advance(1)
        self.assertEqual(len(self.flushLoggedErrors(sqlite3.OperationalError)), 1)
        self.assertEqual(self.recorder.changes, [])
        self.assertTrue(sweep.running)
        self.reactor.advance(1)
        self.assertEqual(self.recorder.take(), [(binding, True)])

    def test_closed_store(self) -> None:
        """A sweep of a closed store does nothing (and logs nothing)."""
        sweep = self.sweep()
        self.successResultOf(self.store.put(self.expiring(1, 1)))
        self.recorder.take()
        self.successResultOf(self.store.close())
        self.reactor.advance(2)
        self.assertEqual(self.recorder.changes, [])
        self.assertEqual(sweep.published, 0)

    def test_interval_positive(self) -> None:
        """An interval that is not positive is refused."""
        self.assertRaises(ValueError, self.store.expiry_publisher, 0)


class OtherWriterTests(SyncStoreCase):
    """
    Writes by other processes (another connection to the file: C{bulklq store import}, an
    application, the C{sqlite3} shell) are logged by triggers while the store listens and
    published by the sweep (RFC 7653 section 8.4: every change of a binding is sent).
    """

    def setUp(self) -> None:
        super().setUp()
        self.other = SQLiteDatabase(self.path)
        self.addCleanup(self.other.close)

    def sweep(self, **kwargs: Any) -> SQLiteSweep:
        """A started sweep every second; stopped, and no timer left, at cleanup."""
        sweep = self.store.expiry_publisher(1.0)
        sweep.start()

        def stop() -> None:
            sweep.stop()
            self.assertEqual(self.reactor.getDelayedCalls(), [])

        self.addCleanup(stop)
        return sweep

    def logged(self) -> int:
        """How many entries the change log holds."""
        return int(self.other._connection.execute("SELECT COUNT(*) FROM change_log").fetchone()[0])

    def listeners(self) -> list[str]:
        """The listeners registered in the file."""
        rows = self.other._connection.execute("SELECT listener FROM change_listeners")
        return [row[0] for row in rows]

    def test_put_and_remove_published(self) -> None:
        """A binding another process writes is published at the next sweep; one it
        removes is published as removed, as it was; a replacement is one change."""
        sweep = self.sweep()
        binding = make_binding(1, relay_id=make_duid(900), remote_id=RemoteId(9, b"port-1"))
        self.other.put(binding)
        self.assertEqual(self.recorder.changes, [])
        self.reactor.advance(1)
        self.assertEqual(self.recorder.take(), [(binding, False)])
        replaced = make_binding(1, relay_id=make_duid(900), remote_id=RemoteId(9, b"port-2"))
        self.other.put(replaced)
        self.reactor.advance(1)
        self.assertEqual(self.recorder.take(), [(replaced, False)])
        self.other.remove(binding.key)
        self.reactor.advance(1)
        self.assertEqual(self.recorder.take(), [(replaced, True)])
        self.assertEqual(sweep.published_logged, 3)
        self.reactor.advance(1)
        self.assertEqual(self.recorder.changes, [])

    def test_own_writes_not_again(self) -> None:
        """The store's own writes, published when they committed, are not published again
        by the sweep; a binding both wrote ends with its state now as the last change."""
        self.sweep()
        mine = make_binding(1)
        self.successResultOf(self.store.put(mine))
        self.successResultOf(self.store.put_many([make_binding(2), make_binding(3)]))
        self.successResultOf(self.store.remove(make_binding(3).key))
        self.recorder.take()
        self.reactor.advance(1)
        self.assertEqual(self.recorder.changes, [])
        theirs = make_binding(4, valid_lifetime=10)
        self.other.put(theirs)
        ours = make_binding(4, valid_lifetime=20)
        self.successResultOf(self.store.put(ours))
        gone = make_binding(5)
        self.other.put(gone)
        self.successResultOf(self.store.remove(gone.key))
        self.assertEqual(self.recorder.take(), [(ours, False), (gone, True)])
        self.reactor.advance(1)
        self.assertEqual(self.recorder.take(), [(ours, False)])

    def test_update_by_hand(self) -> None:
        """An UPDATE of the bindings table (by hand, say) is published as a write."""
        self.sweep()
        binding = make_binding(1)
        self.other.put(binding)
        self.reactor.advance(1)
        self.recorder.take()
        self.other._connection.execute("UPDATE bindings SET expires = expires")
        self.reactor.advance(1)
        self.assertEqual(self.recorder.take(), [(binding, False)])

    def test_many_in_pages(self) -> None:
        """Log entries read in several pages are all published, in the order written."""
        self.sweep()
        bindings = [make_binding(n) for n in range(1, 8)]
        for binding in bindings:
            self.other.put(binding)
        self.assertEqual(self.successResultOf(self.store.publish_logged(batch=2)), 7)
        self.assertEqual(self.recorder.take(), [(b, False) for b in bindings])

    def test_logged_only_while_listening(self) -> None:
        """Writes are logged only while a server listens: nothing before the sweep
        starts, nothing after it stops (its listener row is removed, and the log emptied
        when it was the last)."""
        self.other.put(make_binding(1))
        self.assertEqual((self.logged(), self.listeners()), (0, []))
        sweep = self.sweep()
        self.assertEqual(len(self.listeners()), 1)
        self.other.put(make_binding(2))
        self.assertEqual(self.logged(), 1)
        sweep.stop()
        self.assertEqual((self.listeners(), self.logged()), ([], 0))
        self.other.put(make_binding(3))
        self.assertEqual(self.logged(), 0)
        self.reactor.advance(2)
        self.assertEqual(self.recorder.take(), [])

    def test_close_stops_listening(self) -> None:
        """Closing the store removes its listener row, so writes stop being logged."""
        self.sweep()
        self.assertEqual(len(self.listeners()), 1)
        self.successResultOf(self.store.close())
        self.assertEqual(self.listeners(), [])
        self.assertFalse(self.store.listening)

    def test_refreshed(self) -> None:
        """The listener row is refreshed while the sweep runs (and written again if another
        process forgot it as stale)."""
        self.sweep()
        self.other._connection.execute("DELETE FROM change_listeners")
        self.reactor.pump([1.0] * 61)
        self.assertEqual(len(self.listeners()), 1)

    def test_log_bounded_and_stale_listeners_forgotten(self) -> None:
        """Every 1024th entry prunes the log to its last CHANGE_LOG_KEPT entries and
        forgets listeners not refreshed for LISTENER_STALE seconds; a listener whose
        unread entries were pruned logs an error naming them."""
        self.assertEqual((sqlite.CHANGE_LOG_KEPT, sqlite.LISTENER_STALE), (200_000, 600))
        self.sweep()
        connection = self.other._connection
        connection.execute("INSERT INTO change_listeners VALUES ('crashed', 0)")
        connection.execute("INSERT INTO change_log (serial, link_id, duid) VALUES (5, 'x', x'01')")
        connection.execute(
            "INSERT INTO change_log (serial, link_id, duid) VALUES (204798, 'x', x'01')"
        )
        self.other.put(make_binding(1))  # serial 204799
        self.assertEqual(self.logged(), 3)
        self.other.put(make_binding(2))  # serial 204800: prunes
        serials = [row[0] for row in connection.execute("SELECT serial FROM change_log")]
        self.assertEqual(serials, [204798, 204799, 204800])
        self.assertEqual(len(self.listeners()), 1)
        self.assertNotIn("crashed", self.listeners())
        events: list[dict[str, Any]] = []
        self.patch(sqlite._log, "observer", events.append)
        self.reactor.advance(1)
        (event,) = events
        self.assertEqual((event["first"], event["last"]), (1, 204797))
        self.assertEqual(self.recorder.take(), [(make_binding(1), False), (make_binding(2), False)])


class MigrationTests(SynchronousTestCase):
    """Schema version 3 adds the expiry index (and older databases get it)."""

    def test_version_2_migrated(self) -> None:
        """A version 2 database (no expiry index) opens as the current version with its
        bindings kept, and the expiry query is one range scan of the new index."""
        path = self.mktemp()
        database = SQLiteDatabase(path)
        bindings = [make_binding(n) for n in range(1, 20)]
        database.put_many(bindings)
        database.close()
        connection = sqlite3.connect(path)
        connection.execute("DROP INDEX bindings_by_expires")
        for trigger in ("insert", "delete", "update"):
            connection.execute(f"DROP TRIGGER bindings_log_{trigger}")
        connection.execute("DROP TABLE change_log")
        connection.execute("DROP TABLE change_listeners")
        connection.execute("DELETE FROM schema_version WHERE version = 3")
        connection.commit()
        connection.close()
        database = SQLiteDatabase(path)
        self.addCleanup(database.close)
        self.assertEqual(SCHEMA_VERSION, 3)
        self.assertEqual(database.schema_version(), 3)
        self.assertEqual(list(database.bindings()), bindings)
        plan = " ".join(
            str(row)
            for row in database._connection.execute(
                "EXPLAIN QUERY PLAN SELECT expires FROM bindings "
                "WHERE (expires, link_id, duid) > (?, ?, ?) AND expires <= ? "
                "ORDER BY expires, link_id, duid LIMIT ?",
                (0, "", b"", 1, 10),
            )
        )
        self.assertIn("bindings_by_expires", plan)
        self.assertNotIn("TEMP B-TREE", plan)
        expires = bindings[0].expires_at()
        found, resume = database.expired(expires - 1, expires, limit=100)
        self.assertEqual((found, resume), (bindings, None))

    def test_newer_still_refused(self) -> None:
        """A database from a newer bulklq than this schema version is still refused."""
        path = self.mktemp()
        SQLiteDatabase(path).close()
        connection = sqlite3.connect(path)
        connection.execute("INSERT INTO schema_version (version) VALUES (?)", (4,))
        connection.commit()
        connection.close()
        error = self.assertRaises(SQLiteStoreError, SQLiteDatabase, path)
        self.assertIn("schema version 4, newer than this bulklq supports (3)", str(error))


class ServiceTests(SyncStoreCase):
    """L{BulkLeasequeryService} serving Active Leasequery from the SQLite store."""

    def service(self, **kwargs: Any) -> BulkLeasequeryService:
        """A running service with Active Leasequery (insecure) over the store; stopped,
        and no timer left, at cleanup."""
        self.unsubscribe()
        config = ServerConfig(SERVER_DUID, allow=(parse_access_rule("::1"),))
        service = BulkLeasequeryService(
            self.store,
            config,
            ["tcp6:5547"],
            reactor=self.reactor,
            active=ActiveConfig(enabled=True, allow_insecure=True),
            **kwargs,
        )

        def stop() -> None:
            if service.running:
                stopped = service.stopService()
                self.reactor.advance(60)
                self.successResultOf(stopped)
            self.assertEqual(self.reactor.getDelayedCalls(), [])

        self.addCleanup(stop)
        service.startService()
        return service

    def test_history_and_sweep(self) -> None:
        """RFC 7653 section 9.3 (history SHOULD be configurable): the service sets the
        store's window, history is kept from the start, and the store's own expiry sweep
        runs while the service does."""
        service = self.service(history_window=120, expiry_interval=2)
        self.assertEqual(self.store.changes.window, 120)
        self.assertEqual(self.store.changes.complete_from, self.reactor.seconds())
        self.assertIsInstance(service.expiry, SQLiteSweep)
        assert isinstance(service.expiry, SQLiteSweep)
        self.assertEqual(service.expiry.interval, 2)
        self.assertTrue(service.expiry.running)

    def test_watcher_sees_put_remove_expiry(self) -> None:
        """RFC 7653 sections 8.4 and 9.3: an active requestor gets a LEASEQUERY-DATA for a
        binding written, one with lifetimes 0 when it is removed and when another expires
        with no write, one for a binding another process writes to the file; at shutdown
        DONE(QueryTerminated) (RFC 7653 section 8.4), and the sweep is stopped."""
        service = self.service()
        server, transport = open_active_query(self, service)

        now = int(self.reactor.seconds())
        kept = make_binding(1, cltt=now, preferred_lifetime=50, valid_lifetime=600)
        self.successResultOf(self.store.put(kept))
        (written,) = take(transport)
        self.assertEqual(lifetimes(written), [(50, 600)])
        self.successResultOf(self.store.remove(kept.key))
        (removed,) = take(transport)
        self.assertEqual(lifetimes(removed), [(0, 0)])

        expiring = make_binding(2, cltt=now - 100, preferred_lifetime=50, valid_lifetime=103)
        self.successResultOf(self.store.put(expiring))
        (written,) = take(transport)
        self.assertEqual(lifetimes(written), [(0, 3)])
        self.reactor.pump([1.0] * 2)
        self.assertEqual(take(transport), [])
        self.reactor.pump([1.0])
        (expired,) = take(transport)
        self.assertEqual(expired.msg_type, MessageType.LEASEQUERY_DATA)
        self.assertEqual(lifetimes(expired), [(0, 0)])
        self.assertIsNotNone(expired.option(LQBaseTime))

        other = SQLiteDatabase(self.path)  # another process: bulklq store import, say
        self.addCleanup(other.close)
        other.put(make_binding(3, cltt=now, preferred_lifetime=40, valid_lifetime=400))
        self.assertEqual(take(transport), [])
        self.reactor.advance(1)
        (imported,) = take(transport)
        elapsed = int(self.reactor.seconds()) - now
        self.assertEqual(lifetimes(imported), [(40 - elapsed, 400 - elapsed)])

        stopped = service.stopService()
        (done,) = take(transport)
        self.assertEqual(
            (done.msg_type, status_of(done)),
            (MessageType.LEASEQUERY_DONE, StatusCode.QueryTerminated),
        )
        server.connectionLost(None)  # type: ignore[arg-type]
        self.successResultOf(stopped)
        assert service.expiry is not None
        self.assertFalse(service.expiry.running)
        self.assertTrue(self.store.closed)


class TapTests(SynchronousTestCase):
    """C{twistd bulklq --active-leasequery --store sqlite:...}."""

    def test_active_with_sqlite(self) -> None:
        """RFC 7653 section 9.1: the twistd options accept Active Leasequery with an SQLite
        store; the service keeps the configured history window and runs the store's own
        expiry sweep."""
        state = Path(self.mktemp()).resolve()
        options = tap.Options()
        options.parseOptions(
            [
                "--active-leasequery",
                "--active-without-tls",
                "--state-dir",
                str(state),
                "--store",
                f"sqlite:{state}/b.sqlite3",
                "--listen",
                "tcp:0:interface=127.0.0.1",
                "--history-window",
                "90",
            ]
        )
        service: Any = tap.makeService(options)
        server = service.server
        self.addCleanup(server.store.close)
        self.assertIsInstance(server.store, SQLiteBindingStore)
        self.assertTrue(server.active.enabled)
        self.assertEqual(server.store.changes.window, 90)
        self.assertIsInstance(server.expiry, SQLiteSweep)


class LoopbackTests(TestCase):
    """The service over real loopback TCP and the store's real thread pool."""

    def setUp(self) -> Deferred[Any]:
        from twisted.internet import reactor

        self.reactor: Any = reactor
        self.store = SQLiteBindingStore(self.mktemp(), reactor)
        config = ServerConfig(SERVER_DUID, allow=(parse_access_rule("127.0.0.0/8"),))
        self.service = BulkLeasequeryService(
            self.store,
            config,
            ["tcp:0:interface=127.0.0.1"],
            reactor=reactor,
            active=ActiveConfig(enabled=True, allow_insecure=True),
            expiry_interval=0.2,
        )
        self.service.startService()
        self.addCleanup(self.service.stopService)
        return self.service.listening

    def test_watcher_sees_put_remove_expiry(self) -> None:
        """RFC 7653 sections 8.4 and 9.3, end to end: a requestor with an active query
        gets a DATA for a binding written to the SQLite store, one with lifetimes 0 when it
        is removed, one with lifetimes 0 when another binding expires unwritten, and one for
        a binding another connection to the file writes."""

        async def run() -> None:
            requestor = StartTLSRequestor(active_query())
            port = self.service.ports[0].getHost().port
            endpoint = endpoints.TCP4ClientEndpoint(self.reactor, "127.0.0.1", port)
            await endpoints.connectProtocol(endpoint, requestor)

            def close() -> Deferred[None]:
                requestor.transport.loseConnection()  # type: ignore[union-attr]
                return requestor.lost

            self.addCleanup(close)
            await requestor.received(1)
            self.assertIsNone(status_of(requestor.messages[0]))
            now = int(time.time())
            kept = make_binding(1, cltt=now, valid_lifetime=600)
            await self.store.put(kept)
            await requestor.received(2)
            await self.store.remove(kept.key)
            await requestor.received(3)
            await self.store.put(make_binding(2, cltt=now - 100, valid_lifetime=102))
            await requestor.received(5)
            valid = [lifetimes(message)[0][1] for message in requestor.messages[1:5]]
            self.assertEqual(valid[:2], [600, 0])  # written, removed
            self.assertGreater(valid[2], 0)  # written, expiring soon
            self.assertEqual(valid[3], 0)  # expired
            other = SQLiteDatabase(self.store.path)  # another process, as it were
            self.addCleanup(other.close)
            other.put(make_binding(3, cltt=int(time.time()), valid_lifetime=700))
            await requestor.received(6)
            self.assertEqual(lifetimes(requestor.messages[5])[0][1], 700)

        return defer.Deferred.fromCoroutine(run())  # type: ignore[return-value]

    def test_import_by_another_process(self) -> None:
        """RFC 7653 section 8.4, across processes: C{bulklq store import} run in another
        process while the server runs reaches an active requestor as one LEASEQUERY-DATA
        per binding imported (from the change log, at the next sweep)."""
        examples = Path(__file__).resolve().parents[1] / "examples" / "bindings.jsonl"

        async def run() -> None:
            requestor = StartTLSRequestor(active_query())
            port = self.service.ports[0].getHost().port
            endpoint = endpoints.TCP4ClientEndpoint(self.reactor, "127.0.0.1", port)
            await endpoints.connectProtocol(endpoint, requestor)

            def close() -> Deferred[None]:
                requestor.transport.loseConnection()  # type: ignore[union-attr]
                return requestor.lost

            self.addCleanup(close)
            await requestor.received(1)
            code = "import sys; from bulklq.cli import main; sys.exit(main(sys.argv[1:]))"
            arguments = ["store", "import", "--store", f"sqlite:{self.store.path}"]
            _out, err, status = await utils.getProcessOutputAndValue(
                sys.executable, ["-c", code, *arguments, str(examples)], env=None
            )
            self.assertEqual(status, 0, err)
            await requestor.received(7)
            self.assertEqual(
                [m.msg_type for m in requestor.messages[1:]], [MessageType.LEASEQUERY_DATA] * 6
            )
            self.assertEqual(len({m.option(ClientData) for m in requestor.messages[1:]}), 6)

        return defer.Deferred.fromCoroutine(run())  # type: ignore[return-value]
