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
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from .interfaces import IBindingChangeFeed
from .model import Binding, BindingKey

__all__ = ["DEFAULT_HISTORY_WINDOW", "BindingChange", "ChangeHistory"]

#: Seconds of change history kept for catch-up by default.
DEFAULT_HISTORY_WINDOW = 3600.0
#: Distinct bindings kept in the history by default.
DEFAULT_MAX_CHANGES = 100_000


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
