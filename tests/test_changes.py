"""
The change feed: L{ChangeHistory} (window, size bound, catch-up, DataMissing) and the
memory store publishing from its write API, and the expiry sweep (RFC 7653 sections 8.4.1
and 9.3).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from bulklq.changes import BindingChange, ChangeHistory, ExpirySweep, SweepableStore
from bulklq.interfaces import IBindingChangeFeed
from bulklq.stores.memory import MemoryBindingStore
from bulklq.testing import DEFAULT_CLTT, make_binding


class ChangeHistoryTests(SynchronousTestCase):
    """L{ChangeHistory}: publishing, catch-up and the window."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.history = ChangeHistory(self.clock, window=100, max_changes=3)

    def test_provides(self) -> None:
        """ChangeHistory provides IBindingChangeFeed."""
        self.assertTrue(verifyObject(IBindingChangeFeed, self.history))

    def test_inactive_keeps_nothing(self) -> None:
        """Nobody listens and no history kept: publish records nothing and catch-up is
        DataMissing (RFC 7653 section 9.3: history MAY start with Active Leasequery)."""
        self.assertIsNone(self.history.publish(make_binding(1)))
        self.assertIsNone(self.successResultOf(self.history.changes_since(0)))

    def test_subscribers_get_changes_in_order(self) -> None:
        """Subscribers get every change with its time and a growing serial, removals
        flagged; after unsubscribing nothing more."""
        seen: list[BindingChange] = []
        unsubscribe = self.history.subscribe(seen.append)
        self.history.publish(make_binding(1))
        self.clock.advance(5)
        self.history.publish(make_binding(1), removed=True)
        unsubscribe()
        unsubscribe()
        self.history.publish(make_binding(2))
        self.assertEqual([(c.removed, c.time) for c in seen], [(False, 1000), (True, 1005)])
        self.assertLess(seen[0].serial, seen[1].serial)

    def test_catch_up_latest_per_binding(self) -> None:
        """RFC 7653 section 8.4.1: catch-up gives the latest state of each binding changed
        at or after the start time, oldest first."""
        self.history.keep_history()
        self.clock.advance(1)
        self.history.publish(make_binding(1))
        self.clock.advance(1)
        self.history.publish(make_binding(2))
        self.clock.advance(1)
        self.history.publish(make_binding(1), removed=True)
        found = self.successResultOf(self.history.changes_since(1002))
        assert found is not None
        self.assertEqual(
            [(c.binding.client_id, c.removed) for c in found],
            [(make_binding(2).client_id, False), (make_binding(1).client_id, True)],
        )

    def test_before_history_is_missing(self) -> None:
        """RFC 7653 section 8.4.1: a start time before the history began: DataMissing."""
        self.history.keep_history()
        self.assertIsNone(self.successResultOf(self.history.changes_since(999)))
        self.assertEqual(self.successResultOf(self.history.changes_since(1000)), [])

    def test_window(self) -> None:
        """RFC 7653 section 9.3 (SHOULD be configurable): changes older than the window
        are forgotten and a start time before it is DataMissing."""
        self.history.keep_history()
        self.history.publish(make_binding(1))
        self.clock.advance(150)
        self.assertIsNone(self.successResultOf(self.history.changes_since(1010)))
        self.assertEqual(self.successResultOf(self.history.changes_since(1100)), [])
        self.assertEqual(len(self.history), 0)

    def test_size_bound(self) -> None:
        """The history holds at most max_changes bindings; dropping one makes earlier
        start times DataMissing."""
        self.history.keep_history()
        for client in range(1, 6):
            self.clock.advance(1)
            self.history.publish(make_binding(client))
        self.assertEqual(len(self.history), 3)
        self.assertIsNone(self.successResultOf(self.history.changes_since(1001)))
        found = self.successResultOf(self.history.changes_since(1003))
        assert found is not None
        self.assertEqual(len(found), 3)

    def test_bad_configuration(self) -> None:
        """A non-positive window or size is refused."""
        self.assertRaises(ValueError, ChangeHistory, self.clock, window=0)
        self.assertRaises(ValueError, ChangeHistory, self.clock, max_changes=0)


class MemoryStoreFeedTests(SynchronousTestCase):
    """The memory store publishes from put, put_many and remove."""

    def test_feed(self) -> None:
        """put, put_many (small and bulk) and remove publish; remove carries the removed
        binding."""
        clock = Clock()
        store = MemoryBindingStore(clock=clock)
        self.assertTrue(verifyObject(IBindingChangeFeed, store))
        seen: list[BindingChange] = []
        unsubscribe = store.subscribe(seen.append)
        store.put(make_binding(1))
        store.put_many([make_binding(2), make_binding(3)])
        store.put_many([make_binding(n) for n in range(10, 1200)])
        self.assertTrue(store.remove(make_binding(1).key))
        self.assertFalse(store.remove(make_binding(1).key))
        unsubscribe()
        self.assertEqual(len(seen), 1 + 2 + 1190 + 1)
        self.assertEqual(seen[-1].binding, make_binding(1))
        self.assertTrue(seen[-1].removed)
        store.keep_history()
        clock.advance(1)
        store.put(make_binding(4))
        found = self.successResultOf(store.changes_since(1))
        assert found is not None
        self.assertEqual([c.binding for c in found], [make_binding(4)])


class ExpirySweepTests(SynchronousTestCase):
    """L{ExpirySweep}: bindings whose last lease runs out with no store write are
    published as removals (RFC 7653 section 9.3: expired bindings are changes)."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(DEFAULT_CLTT)
        self.store = MemoryBindingStore(clock=self.clock)
        self.seen: list[BindingChange] = []
        self.addCleanup(self.store.subscribe(self.seen.append))
        self.sweep = ExpirySweep(self.store, self.clock, interval=1.0)
        self.addCleanup(self.sweep.stop)

    def expiring(self, client: int, seconds: int) -> Any:
        """A binding whose last lease expires C{seconds} from now."""
        now = int(self.clock.seconds())
        return make_binding(client, cltt=now - 100, valid_lifetime=100 + seconds)

    def removals(self) -> list[tuple[bytes, float]]:
        """(client DUID, time) of every removal published."""
        return [(c.binding.client_id.raw, c.time) for c in self.seen if c.removed]

    def test_expiry_published_as_removal(self) -> None:
        """RFC 7653 section 9.3: a binding that expires with no write is published as
        removed within one sweep interval; the store still holds it."""
        binding = self.expiring(1, 10)
        expiry = binding.expires_at()
        self.store.put_many([binding, self.expiring(2, 1000)])
        self.sweep.start()
        self.clock.pump([1.0] * 9)
        self.assertEqual(self.removals(), [])
        self.clock.pump([1.0] * 2)
        self.assertEqual(self.removals(), [(binding.client_id.raw, expiry)])
        self.assertEqual(self.sweep.published, 1)
        self.assertIs(self.store.get(binding.key), binding)
        self.clock.pump([1.0] * 5)
        self.assertEqual(len(self.removals()), 1, "published once")

    def test_expiry_in_catch_up(self) -> None:
        """RFC 7653 section 8.4.1: a catch-up from before an expiry includes the binding as
        removed."""
        self.store.keep_history()
        binding = self.expiring(1, 5)
        self.store.put(binding)
        start = self.clock.seconds()
        self.sweep.start()
        self.clock.pump([1.0] * 6)
        found = self.successResultOf(self.store.changes_since(start))
        assert found is not None
        self.assertEqual([(c.binding, c.removed) for c in found], [(binding, True)])

    def test_written_after_start(self) -> None:
        """A binding put after the sweep started is watched too; a renewal before its
        expiry replaces the old expiry time."""
        self.sweep.start()
        self.store.put(self.expiring(1, 5))
        self.clock.advance(3)
        renewed = self.expiring(1, 5)
        self.store.put(renewed)
        self.clock.pump([1.0] * 4)
        self.assertEqual(self.removals(), [], "the renewal moved the expiry")
        self.clock.pump([1.0] * 2)
        self.assertEqual(len(self.removals()), 1)
        self.assertEqual(len(self.sweep), 0)

    def test_removed_not_published_again(self) -> None:
        """A binding removed before it expires is published once, by the removal."""
        self.sweep.start()
        binding = self.expiring(1, 5)
        self.store.put(binding)
        self.store.put(binding)
        self.store.remove(binding.key)
        self.clock.pump([1.0] * 10)
        self.assertEqual(len(self.removals()), 1)

    def test_same_expiry_written_twice(self) -> None:
        """The same binding written twice with the same expiry is published once."""
        self.sweep.start()
        binding = self.expiring(1, 5)
        self.store.put(binding)
        self.store.put(binding)
        self.assertEqual(len(self.sweep), 2)
        self.clock.pump([1.0] * 10)
        self.assertEqual(len(self.removals()), 1)

    def test_expired_before_start_skipped(self) -> None:
        """Bindings already expired when the sweep starts expired before the history began:
        not published."""
        self.store.put(self.expiring(1, -5))
        self.sweep.start()
        self.clock.pump([1.0] * 10)
        self.assertEqual(self.removals(), [])

    def test_heap_rebuilt_when_stale(self) -> None:
        """Renewals leave stale entries; past twice the store's size plus 1024 the heap is
        rebuilt from the store, so it does not grow with the number of writes."""
        self.sweep.start()
        for _ in range(2000):
            self.store.put(self.expiring(1, 50))
        self.assertLessEqual(len(self.sweep), 2 * len(self.store) + 1024)
        self.clock.pump([1.0] * 60)
        self.assertEqual(len(self.removals()), 1)

    def test_stop(self) -> None:
        """After stop nothing is published and no timer is left."""
        self.sweep.start()
        self.assertTrue(self.sweep.running)
        self.store.put(self.expiring(1, 5))
        self.sweep.stop()
        self.sweep.stop()
        self.assertFalse(self.sweep.running)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(10)
        self.assertEqual(self.removals(), [])

    def test_bad_interval(self) -> None:
        """A non-positive interval is refused."""
        self.assertRaises(ValueError, ExpirySweep, self.store, self.clock, 0)

    def test_memory_store_is_sweepable(self) -> None:
        """The memory store offers what the sweep needs."""
        self.assertIsInstance(self.store, SweepableStore)
