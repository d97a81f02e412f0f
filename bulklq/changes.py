"""
Binding changes with timestamps, and a bounded in-memory history of them: what a store
needs to offer L{IBindingChangeFeed<bulklq.interfaces.IBindingChangeFeed>} for Active
Leasequery (RFC 7653).

A store calls L{ChangeHistory.publish} from its write path (the memory store does it in
C{put}, C{put_many} and C{remove}); subscribers are called at once, and the change is kept
for catch-up (L{ChangeHistory.changes_since}) while it is younger than the window and among
the last C{max_changes}. The history is kept per binding key: only the latest change of a
binding is needed to bring a requestor up to date (RFC 7653 section 8.4.1), so a binding
rewritten a thousand times costs one entry.

A binding whose last lease simply runs out is not a write, so no store publishes it by
itself; L{ExpirySweep} does, for stores that keep their bindings in memory (RFC 7653
section 9.3: an expired binding is a change the requestor must learn about).
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from .interfaces import IBindingChangeFeed
from .model import Binding, BindingKey

__all__ = [
    "DEFAULT_EXPIRY_INTERVAL",
    "DEFAULT_HISTORY_WINDOW",
    "BindingChange",
    "ChangeHistory",
    "ExpiryPublisher",
    "ExpirySweep",
    "HistoryFeed",
    "PublishesExpiry",
    "SweepableStore",
]

#: Seconds of change history kept for catch-up by default.
DEFAULT_HISTORY_WINDOW = 3600.0
#: Distinct bindings kept in the history by default.
DEFAULT_MAX_CHANGES = 100_000
#: Seconds between two expiry sweeps by default: an expiry is published at most this late.
DEFAULT_EXPIRY_INTERVAL = 1.0


@attrs.frozen
class BindingChange:
    """
    One binding change.

    @ivar binding: the binding after the change; for a removal, the binding removed.
    @ivar removed: whether the binding is gone (deleted, released, expired and reclaimed).
    @ivar time: Unix time of the change, in the server's clock.
    @ivar serial: grows by one with every change published by one history.
    """

    binding: Binding
    removed: bool
    time: float
    serial: int

    @property
    def key(self) -> BindingKey:
        """The changed binding's key."""
        return self.binding.key


@implementer(IBindingChangeFeed)
class ChangeHistory:
    """
    Publishes changes to subscribers and keeps the latest change per binding for
    C{window} seconds (at most C{max_changes} bindings), for catch-up.

    Until L{keep_history} is called, nothing is kept (publishing with no subscriber costs
    one attribute test), and L{changes_since} answers C{None}: RFC 7653 section 9.3 lets a
    server keep history only once Active Leasequery is in use.

    @param clock: the time source, or a function returning it (the global reactor is
        looked up lazily by the memory store).
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime | Callable[[], IReactorTime],
        window: float = DEFAULT_HISTORY_WINDOW,
        max_changes: int = DEFAULT_MAX_CHANGES,
    ) -> None:
        if window <= 0 or max_changes < 1:
            raise ValueError("the history window and size must be positive")
        self._clock_source = clock
        self.window = window
        self.max_changes = max_changes
        self._subscribers: dict[int, Callable[[BindingChange], None]] = {}
        self._next_subscriber = 0
        self._serial = 0
        self._history: OrderedDict[BindingKey, BindingChange] = OrderedDict()
        #: Unix time from which the history is complete (C{None}: not keeping history).
        self._complete_from: float | None = None
        #: Whether anybody listens or history is kept: publish does nothing otherwise.
        self.active = False

    def _now(self) -> float:
        source: Any = self._clock_source
        clock = source if hasattr(source, "seconds") else source()
        return float(clock.seconds())

    # IBindingChangeFeed

    def keep_history(self) -> None:
        """Start keeping history (idempotent); it is complete from now on."""
        if self._complete_from is None:
            self._complete_from = self._now()
            self.active = True

    def subscribe(self, callback: Callable[[BindingChange], None]) -> Callable[[], None]:
        """Call C{callback} with every change from now on; returns the unsubscriber."""
        token = self._next_subscriber
        self._next_subscriber += 1
        self._subscribers[token] = callback
        self.active = True

        def unsubscribe() -> None:
            self._subscribers.pop(token, None)
            self.active = bool(self._subscribers) or self._complete_from is not None

        return unsubscribe

    def changes_since(self, time: float) -> Deferred[Sequence[BindingChange] | None]:
        """
        The latest change of every binding changed at C{time} or later, oldest first; or
        C{None} if the history is not complete back to C{time}.
        """
        self._trim(self._now())
        if self._complete_from is None or time < self._complete_from:
            return defer.succeed(None)
        found = [change for change in self._history.values() if change.time >= time]
        return defer.succeed(found)

    # Publishing

    @property
    def complete_from(self) -> float | None:
        """Unix time from which L{changes_since} has every change, or C{None}."""
        return self._complete_from

    def publish(self, binding: Binding, removed: bool = False) -> BindingChange | None:
        """
        Record that C{binding} was written (or removed) now, tell the subscribers.

        @return: the change, or C{None} when nobody listens and no history is kept.
        """
        if not self.active:
            return None
        now = self._now()
        self._serial += 1
        change = BindingChange(binding, removed, now, self._serial)
        if self._complete_from is not None:
            history = self._history
            key = binding.key
            history.pop(key, None)
            history[key] = change
            self._trim(now)
        for callback in list(self._subscribers.values()):
            try:
                callback(change)
            except Exception:
                self.log.failure("a change subscriber failed")
        return change

    def publish_many(self, bindings: Sequence[Binding]) -> None:
        """L{publish} each of C{bindings} (a bulk load); nothing when nobody listens."""
        if not self.active:
            return
        for binding in bindings:
            self.publish(binding)

    def _trim(self, now: float) -> None:
        """Forget changes older than the window or beyond C{max_changes}."""
        history = self._history
        horizon = now - self.window
        complete_from = self._complete_from
        if complete_from is None:
            return
        while history:
            oldest = next(iter(history.values()))
            if oldest.time >= horizon and len(history) <= self.max_changes:
                break
            history.popitem(last=False)
            # Changes at or before the one forgotten may be missing from now on.
            complete_from = max(complete_from, oldest.time + 1e-6)
        # Nothing older than the window is promised, even when nothing changed.
        complete_from = max(complete_from, horizon)
        self._complete_from = complete_from

    def __len__(self) -> int:
        return len(self._history)


class HistoryFeed:
    """
    L{IBindingChangeFeed} for a store whose changes go through a L{ChangeHistory} in its
    C{changes} attribute: the three methods delegate to it. A store that must start
    something when changes are first wanted (a file watcher, a listening connection)
    overrides L{_changes_wanted}, called after every C{subscribe} and C{keep_history}.
    """

    changes: ChangeHistory

    def subscribe(self, callback: Callable[[BindingChange], None]) -> Callable[[], None]:
        """Call C{callback} with every change from now on; returns the unsubscriber."""
        unsubscribe = self.changes.subscribe(callback)
        self._changes_wanted()
        return unsubscribe

    def changes_since(self, time: float) -> Deferred[Sequence[BindingChange] | None]:
        """The latest change per binding since C{time}, or C{None} (history too short:
        DataMissing, RFC 7653 section 8.4.1)."""
        return self.changes.changes_since(time)

    def keep_history(self) -> None:
        """Start keeping change history for catch-up (RFC 7653 section 9.3)."""
        self.changes.keep_history()
        self._changes_wanted()

    def _changes_wanted(self) -> None:
        """Somebody wants changes (idempotent hook; nothing by default)."""


@runtime_checkable
class SweepableStore(Protocol):
    """
    What L{ExpirySweep} needs from a store: its L{ChangeHistory} as C{changes}, every
    binding it holds (expired ones included) and the current binding of a key.
    L{MemoryBindingStore<bulklq.stores.memory.MemoryBindingStore>} is one.
    """

    changes: ChangeHistory

    def bindings(self) -> Iterable[Binding]:
        """Every binding held, expired ones included."""

    def get(self, key: BindingKey) -> Binding | None:
        """The binding held under C{key}, or C{None}."""

    def __len__(self) -> int:
        """How many bindings are held."""


@runtime_checkable
class ExpiryPublisher(Protocol):
    """
    Something that publishes expiries as removals while started (RFC 7653 section 9.3):
    L{ExpirySweep} for stores that keep their bindings in memory, or a store's own (see
    L{PublishesExpiry}). L{BulkLeasequeryService<bulklq.service.BulkLeasequeryService>}
    starts and stops it with the service.
    """

    #: Expiries published so far.
    published: int

    @property
    def running(self) -> bool:
        """Whether it is started."""

    def start(self) -> None:
        """Start publishing expiries (idempotent)."""

    def stop(self) -> None:
        """Stop publishing expiries (idempotent); leaves no timer."""


@runtime_checkable
class PublishesExpiry(Protocol):
    """
    A store that finds its expired bindings itself (with an indexed query, say) instead of
    being swept in memory by L{ExpirySweep}; L{SQLiteBindingStore
    <bulklq.stores.sqlite.SQLiteBindingStore>} is one.
    """

    def expiry_publisher(self, interval: float) -> ExpiryPublisher:
        """
        A publisher, not started, that publishes every C{interval} seconds the bindings
        whose last lease ran out since the previous time as removals on the store's feed.
        """


class ExpirySweep:
    """
    Publishes, as a removal, every binding whose last lease runs out while nothing writes
    it (RFC 7653 section 9.3: an expired binding is sent to active requestors like a
    removed one), every C{interval} seconds of the injected clock.

    It keeps a heap of C{(expiry time, binding key)}: filled once from the store when
    started (bindings already expired then are not published: they expired before the
    history began), and pushed to by every change the store publishes. A sweep pops the
    entries whose time has come and publishes the binding if the store still holds it with
    that expiry time (a binding rewritten or removed since has its own entry or is gone).

    Cost: one heap entry (a 2-tuple and an int, about 90 bytes) per binding plus one per
    write whose old expiry time has not come yet; the heap is rebuilt from the store when
    it grows past twice the store's size (plus 1024). Starting costs one pass over the
    store; a sweep costs O(log n) per entry due, and nothing else when none is due. An
    expiry is published at most C{interval} seconds late (its change time is the sweep's).
    """

    log = Logger()

    def __init__(
        self,
        store: SweepableStore,
        clock: IReactorTime,
        interval: float = DEFAULT_EXPIRY_INTERVAL,
    ) -> None:
        if not interval > 0:
            raise ValueError("the expiry sweep interval must be positive")
        self.store = store
        self.clock = clock
        self.interval = interval
        self._heap: list[tuple[int, BindingKey]] = []
        self._unsubscribe: Callable[[], None] | None = None
        self._loop: LoopingCall | None = None
        #: Expiries published so far.
        self.published = 0

    @property
    def running(self) -> bool:
        """Whether the sweep is started."""
        return self._loop is not None

    def __len__(self) -> int:
        """Entries in the heap (bindings and stale writes waiting for their time)."""
        return len(self._heap)

    def start(self) -> None:
        """Subscribe to the store's changes, index every binding, sweep periodically."""
        if self._loop is not None:
            return
        self._unsubscribe = self.store.changes.subscribe(self._changed)
        self._rebuild()
        loop = LoopingCall(self.sweep)
        loop.clock = self.clock
        self._loop = loop
        loop.start(self.interval, now=False).addErrback(
            lambda failure: self.log.failure("the expiry sweep failed", failure)
        )

    def stop(self) -> None:
        """Stop sweeping and unsubscribe; idempotent."""
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self._heap = []

    def _rebuild(self) -> None:
        now = self.clock.seconds()
        heap = [(b.expires_at(), b.key) for b in self.store.bindings()]
        heap = [entry for entry in heap if entry[0] > now]
        heapq.heapify(heap)
        self._heap = heap

    def _changed(self, change: BindingChange) -> None:
        """A write: remember when the binding written expires (unless it already has)."""
        if change.removed:
            return
        expires = change.binding.expires_at()
        if expires > change.time:
            heapq.heappush(self._heap, (expires, change.key))
            if len(self._heap) > 2 * len(self.store) + 1024:
                self._rebuild()

    def sweep(self) -> int:
        """Publish every binding that expired since the last sweep; how many there were."""
        now = self.clock.seconds()
        heap = self._heap
        store = self.store
        published = 0
        previous: tuple[int, BindingKey] | None = None
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            if entry == previous:
                continue  # the same binding written twice with the same expiry
            previous = entry
            binding = store.get(entry[1])
            if binding is None or binding.expires_at() != entry[0]:
                continue  # removed (published then) or rewritten (has its own entry)
            store.changes.publish(binding, removed=True)
            published += 1
        self.published += published
        return published
