"""
L{MemoryBindingStore}: every binding in memory, indexed for every query type.

It is the store the tests use, the store an application embedding bulklq feeds from its own
DHCP server (L{MemoryBindingStore.put}, L{MemoryBindingStore.remove}), and the engine behind
stores that load a file into memory.

Every index keeps binding keys in ascending order, maintained incrementally on each change,
so a lookup costs O(log n) and a page of M bindings O(log n + M); nothing is sorted per query.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Hashable, Iterable, Iterator
from ipaddress import IPv6Address
from itertools import takewhile
from typing import Any, TypeAlias, TypeVar

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from ..changes import ChangeHistory, HistoryFeed
from ..interfaces import IBindingChangeFeed, IBindingStore
from ..model import Binding, BindingKey, BindingPage, BindingQuery, Link, QueryKind

__all__ = ["MemoryBindingStore"]

#: Chunk size of L{_SortedKeys}: lists of about this many keys, split at twice as many.
_LOAD = 512
#: A plain sorted list in an index turns into a L{_SortedKeys} above this size.
_SMALL = 2 * _LOAD
#: L{MemoryBindingStore.put_many} merges index runs when it adds at least this many bindings.
_BULK = 1000
_V = TypeVar("_V", bound=Hashable)
_ALL_ONES = (1 << 128) - 1


class _SortedKeys:
    """
    A sorted set of binding keys as a list of sorted chunks (the sortedcontainers layout).

    Insertion and removal cost O(log n) comparisons plus a move within one chunk of at most
    C{2 * _LOAD} keys; iteration from any key costs O(log n) to find the start.
    """

    __slots__ = ("_chunks", "_len", "_maxes")

    def __init__(self, keys: Iterable[BindingKey] = (), *, ordered: bool = False) -> None:
        """
        @param keys: the keys, in any order, repeats allowed.
        @param ordered: C{keys} is a list already sorted without repeats (not checked).
        """
        chosen = keys if ordered and isinstance(keys, list) else sorted(set(keys))
        self._chunks = [chosen[i : i + _LOAD] for i in range(0, len(chosen), _LOAD)]
        self._maxes = [chunk[-1] for chunk in self._chunks]
        self._len = len(chosen)

    def __len__(self) -> int:
        return self._len

    def add(self, key: BindingKey) -> None:
        """Insert C{key} unless present."""
        maxes = self._maxes
        if not maxes:
            self._chunks.append([key])
            maxes.append(key)
            self._len = 1
            return
        position = bisect_left(maxes, key)
        if position == len(maxes):
            position -= 1
            self._chunks[position].append(key)
            maxes[position] = key
        else:
            chunk = self._chunks[position]
            index = bisect_left(chunk, key)
            if chunk[index] == key:
                return
            chunk.insert(index, key)
        self._len += 1
        chunk = self._chunks[position]
        if len(chunk) > 2 * _LOAD:
            half = chunk[_LOAD:]
            del chunk[_LOAD:]
            self._chunks.insert(position + 1, half)
            maxes[position] = chunk[-1]
            maxes.insert(position + 1, half[-1])

    def discard(self, key: BindingKey) -> None:
        """Remove C{key} if present."""
        maxes = self._maxes
        position = bisect_left(maxes, key)
        if position == len(maxes):
            return
        chunk = self._chunks[position]
        index = bisect_left(chunk, key)
        if chunk[index] != key:
            return
        del chunk[index]
        self._len -= 1
        if not chunk:
            del self._chunks[position]
            del maxes[position]
        else:
            maxes[position] = chunk[-1]

    def after(self, lower: BindingKey | None) -> Iterator[BindingKey]:
        """The keys above C{lower} (all when C{None}), ascending."""
        chunks = self._chunks
        if not chunks:
            return
        if lower is None:
            position, index = 0, 0
        else:
            position = bisect_right(self._maxes, lower)
            if position == len(chunks):
                return
            index = bisect_right(chunks[position], lower)
        yield from chunks[position][index:]
        for chunk in chunks[position + 1 :]:
            yield from chunk

    def __iter__(self) -> Iterator[BindingKey]:
        return self.after(None)


#: An index entry: a small sorted list of keys, or a chunked sorted collection.
_Keys: TypeAlias = "list[BindingKey] | _SortedKeys"


def _keys_after(keys: _Keys, lower: BindingKey | None) -> Iterator[BindingKey]:
    """The keys of an index entry above C{lower}, ascending."""
    if isinstance(keys, _SortedKeys):
        return keys.after(lower)
    start = 0 if lower is None else bisect_right(keys, lower)
    return iter(keys[start:])


def _index_add(index: dict[_V, _Keys], value: _V, key: BindingKey) -> None:
    keys = index.get(value)
    if keys is None:
        index[value] = [key]
    elif isinstance(keys, _SortedKeys):
        keys.add(key)
    else:
        position = bisect_left(keys, key)
        if position < len(keys) and keys[position] == key:
            return
        keys.insert(position, key)
        if len(keys) > _SMALL:
            index[value] = _SortedKeys(keys)


def _index_discard(index: dict[_V, _Keys], value: _V, key: BindingKey) -> None:
    keys = index.get(value)
    if keys is None:
        return
    if isinstance(keys, _SortedKeys):
        keys.discard(key)
    else:
        position = bisect_left(keys, key)
        if position < len(keys) and keys[position] == key:
            del keys[position]
    if not keys:
        del index[value]


def index_from_lists(pending: dict[_V, list[BindingKey]]) -> dict[_V, _Keys]:
    """
    An index built at once from unsorted lists of keys per value (a bulk load): each
    value's keys sorted once, without repeats. The lists are reused.
    """
    index: dict[_V, _Keys] = {}
    for value, keys in pending.items():
        if len(keys) > _SMALL:
            index[value] = _SortedKeys(keys)
        elif len(keys) == 1:
            index[value] = keys
        else:
            index[value] = sorted(set(keys))
    return index


def _mask(length: int) -> int:
    return _ALL_ONES ^ ((1 << (128 - length)) - 1)


class _PrefixIndex:
    """
    Values keyed by IPv6 prefix, answering "which prefixes contain this address" with one
    dictionary lookup per prefix length in use (at most 129).
    """

    __slots__ = ("_by_length",)

    def __init__(self) -> None:
        self._by_length: dict[int, dict[int, _Keys]] = {}

    def add(self, network: int, length: int, key: BindingKey) -> None:
        _index_add(self._by_length.setdefault(length, {}), network, key)

    def discard(self, network: int, length: int, key: BindingKey) -> None:
        table = self._by_length.get(length)
        if table is None:
            return
        _index_discard(table, network, key)
        if not table:
            del self._by_length[length]

    def containing(self, address: int) -> list[BindingKey]:
        """Keys stored under every prefix that contains C{address}."""
        found: list[BindingKey] = []
        for length, table in self._by_length.items():
            keys = table.get(address & _mask(length))
            if keys is not None:
                found.extend(keys)
        return found


@implementer(IBindingStore, IBindingChangeFeed)
class MemoryBindingStore(HistoryFeed):
    """
    Bindings held in memory with an index per query type; answers synchronously.

    C{put} inserts or replaces a binding (by L{Binding.key}); C{remove} deletes one. A binding
    may name a link the store does not know: it is still served, and L{get_link} answers
    C{None} for it. The active-binding filter uses C{clock.seconds()} as Unix time.

    @param links: the links to serve (L{find_link} answers from their prefixes).
    @param clock: the time source; the global reactor when C{None}.

    It is also an L{IBindingChangeFeed}: C{put}, C{put_many} and C{remove} publish to
    L{changes} (a L{ChangeHistory}; cost only once somebody subscribes or history is kept).
    Expiry is a change only when the application removes (or rewrites) the binding.

    @ivar changes: the change history; set its C{window} / C{max_changes} to configure it.
    """

    name = "memory"

    def __init__(self, links: Iterable[Link] = (), clock: IReactorTime | None = None) -> None:
        self._clock = clock
        self._links: dict[str, Link] = {}
        self._link_prefixes: dict[int, dict[int, str]] = {}
        # key -> (binding, Unix time its last lease expires)
        self._bindings: dict[BindingKey, tuple[Binding, int]] = {}
        self._keys = _SortedKeys()
        self._by_address: dict[int, _Keys] = {}
        self._by_prefix = _PrefixIndex()
        self._by_client: dict[bytes, _Keys] = {}
        self._by_relay: dict[bytes, _Keys] = {}
        self._by_remote: dict[tuple[int, bytes], _Keys] = {}
        for link in links:
            self.add_link(link)
        self.changes = ChangeHistory(self._time_source)

    # Links

    def add_link(self, link: Link) -> None:
        """Serve C{link}, replacing a link of the same id."""
        self.remove_link(link.link_id)
        self._links[link.link_id] = link
        for prefix in link.prefixes:
            table = self._link_prefixes.setdefault(prefix.prefixlen, {})
            table[int(prefix.network_address)] = link.link_id

    def remove_link(self, link_id: str) -> None:
        """Stop serving the link C{link_id}; its bindings stay. Unknown ids are ignored."""
        link = self._links.pop(link_id, None)
        if link is None:
            return
        for prefix in link.prefixes:
            table = self._link_prefixes.get(prefix.prefixlen, {})
            if table.get(int(prefix.network_address)) == link_id:
                del table[int(prefix.network_address)]
            if not table:
                self._link_prefixes.pop(prefix.prefixlen, None)

    def links(self) -> list[Link]:
        """The links served, ordered by id."""
        return [self._links[link_id] for link_id in sorted(self._links)]

    # Bindings

    def put(self, binding: Binding) -> None:
        """Insert C{binding}, or replace the binding with the same key."""
        key = binding.key
        old = self._bindings.get(key)
        if old is not None:
            self._unindex(old[0])
        else:
            self._keys.add(key)
        self._bindings[key] = (binding, binding.expires_at())
        self._index(binding)
        if self.changes.active:
            self.changes.publish(binding)

    def put_many(self, bindings: Iterable[Binding]) -> None:
        """
        C{put} each of C{bindings} (the last wins for a repeated key): a bulk load.

        Many new bindings are added by merging sorted runs into the indexes, which is much
        faster per binding than one C{put} each, at a cost of the store's size once.
        """
        batch = {binding.key: binding for binding in bindings}
        fresh = [(key, binding) for key, binding in batch.items() if key not in self._bindings]
        if len(fresh) < _BULK:
            for binding in batch.values():
                self.put(binding)
            return
        for key, binding in batch.items():
            if key in self._bindings:
                self.put(binding)
        additions: list[tuple[dict[Any, _Keys], dict[Any, list[BindingKey]]]] = [
            (self._by_address, {}),
            (self._by_client, {}),
            (self._by_relay, {}),
            (self._by_remote, {}),
        ]
        by_address, by_client, by_relay, by_remote = (pending for _, pending in additions)
        stored = self._bindings
        for key, binding in fresh:
            stored[key] = (binding, binding.expires_at())
            for lease in binding.addresses:
                by_address.setdefault(int(lease.address), []).append(key)
            for prefix_lease in binding.prefixes:
                network = prefix_lease.prefix
                self._by_prefix.add(int(network.network_address), network.prefixlen, key)
            by_client.setdefault(binding.client_id.raw, []).append(key)
            for relay_id in binding.relay_ids:
                by_relay.setdefault(relay_id.raw, []).append(key)
            for remote_id in binding.remote_ids:
                by_remote.setdefault((remote_id.enterprise_number, remote_id.remote_id), []).append(
                    key
                )
        self._keys = _SortedKeys([*self._keys, *(key for key, _ in fresh)])
        for index, pending in additions:
            for value, keys in pending.items():
                existing = index.get(value)
                if existing is not None:
                    keys.extend(existing)
            index.update(index_from_lists(pending))
        if self.changes.active:
            self.changes.publish_many([binding for _, binding in fresh])

    def remove(self, key: BindingKey) -> bool:
        """Delete the binding with C{key}; whether there was one."""
        old = self._bindings.pop(key, None)
        if old is None:
            return False
        self._keys.discard(key)
        self._unindex(old[0])
        if self.changes.active:
            self.changes.publish(old[0], removed=True)
        return True

    def get(self, key: BindingKey) -> Binding | None:
        """The binding with C{key}, or C{None}."""
        entry = self._bindings.get(key)
        return None if entry is None else entry[0]

    def bindings(self) -> Iterator[Binding]:
        """Every binding held, expired ones included, in key order."""
        bindings = self._bindings
        for key in self._keys:
            yield bindings[key][0]

    def __len__(self) -> int:
        return len(self._bindings)

    def _index(self, binding: Binding) -> None:
        key = binding.key
        for lease in binding.addresses:
            _index_add(self._by_address, int(lease.address), key)
        for prefix_lease in binding.prefixes:
            network = prefix_lease.prefix
            self._by_prefix.add(int(network.network_address), network.prefixlen, key)
        _index_add(self._by_client, binding.client_id.raw, key)
        for relay_id in binding.relay_ids:
            _index_add(self._by_relay, relay_id.raw, key)
        for remote_id in binding.remote_ids:
            _index_add(self._by_remote, (remote_id.enterprise_number, remote_id.remote_id), key)

    def _unindex(self, binding: Binding) -> None:
        key = binding.key
        for lease in binding.addresses:
            _index_discard(self._by_address, int(lease.address), key)
        for prefix_lease in binding.prefixes:
            network = prefix_lease.prefix
            self._by_prefix.discard(int(network.network_address), network.prefixlen, key)
        _index_discard(self._by_client, binding.client_id.raw, key)
        for relay_id in binding.relay_ids:
            _index_discard(self._by_relay, relay_id.raw, key)
        for remote_id in binding.remote_ids:
            _index_discard(self._by_remote, (remote_id.enterprise_number, remote_id.remote_id), key)

    # IBindingStore

    def _time_source(self) -> IReactorTime:
        self._now()
        assert self._clock is not None
        return self._clock

    def _now(self) -> float:
        clock = self._clock
        if clock is None:
            from twisted.internet import reactor  # noqa: PLC0415

            clock = self._clock = reactor
        return clock.seconds()

    def _candidates(self, query: BindingQuery, lower: BindingKey | None) -> Iterator[BindingKey]:
        kind = query.kind
        keys: _Keys | None
        if kind is QueryKind.LINK:
            return self._keys.after(lower)
        if kind is QueryKind.ADDRESS:
            if query.address is None:
                return iter(())
            address = int(query.address)
            found = list(self._by_address.get(address, ()))
            found.extend(self._by_prefix.containing(address))
            found = sorted(set(found))
            start = 0 if lower is None else bisect_right(found, lower)
            return iter(found[start:])
        if kind is QueryKind.CLIENT_ID:
            keys = None if query.client_id is None else self._by_client.get(query.client_id.raw)
        elif kind is QueryKind.RELAY_ID:
            keys = None if query.relay_id is None else self._by_relay.get(query.relay_id.raw)
        else:
            remote = query.remote_id
            keys = (
                None
                if remote is None
                else self._by_remote.get((remote.enterprise_number, remote.remote_id))
            )
        return iter(()) if keys is None else _keys_after(keys, lower)

    def fetch(
        self, query: BindingQuery, resume_after: BindingKey | None, limit: int
    ) -> Deferred[BindingPage]:
        """
        The next page in key order. At most C{max(4 * limit, 4096)} expired bindings are
        skipped per call, so a page can hold fewer than C{limit} bindings (or none) and still
        have a C{resume_after}.
        """
        if limit < 1:
            return defer.fail(ValueError(f"page limit must be at least 1, not {limit}"))
        lower = resume_after
        link_id = query.link_id
        if link_id is not None:
            floor = (link_id, b"")
            if lower is None or lower < floor:
                lower = floor
        now = self._now()
        bindings = self._bindings
        page: list[Binding] = []
        append = page.append
        budget = max(4 * limit, 4096)
        candidates = self._candidates(query, lower)
        if link_id is not None:
            upper = (link_id + "\x00", b"")
            candidates = takewhile(upper.__gt__, candidates)
        last: BindingKey | None = None
        for key in candidates:
            entry = bindings[key]
            if entry[1] > now:
                append(entry[0])
                if len(page) == limit:
                    last = key
                    break
            budget -= 1
            if not budget:
                last = key
                break
        if last is None or next(candidates, None) is None:
            return defer.succeed(BindingPage(page, None))
        return defer.succeed(BindingPage(page, last))

    def find_link(self, address: IPv6Address) -> Deferred[Link | None]:
        """The link with the longest prefix containing C{address}, or C{None}."""
        value = int(address)
        for length in sorted(self._link_prefixes, reverse=True):
            link_id = self._link_prefixes[length].get(value & _mask(length))
            if link_id is not None:
                return defer.succeed(self._links[link_id])
        return defer.succeed(None)

    def get_link(self, link_id: str) -> Deferred[Link | None]:
        """The link with id C{link_id}, or C{None}."""
        return defer.succeed(self._links.get(link_id))

    def close(self) -> Deferred[None]:
        """Nothing to release; the store stays usable."""
        return defer.succeed(None)


def open_store_uri(uri: str, reactor: IReactorTime) -> MemoryBindingStore:
    """
    Open C{memory:} (an empty store) or C{memory:PATH}: a store loaded from a JSON lines
    file of links and bindings (L{bulklq.stores.jsonl}).

    @raise ValueError: for a malformed URI or file (naming the line).
    @raise OSError: if the file cannot be read.
    """
    from . import split_store_uri  # noqa: PLC0415 - the registry imports this module lazily
    from .jsonl import read_records  # noqa: PLC0415

    path, _ = split_store_uri(uri, "memory")
    store = MemoryBindingStore(clock=reactor)
    if not path:
        return store
    bindings: list[Binding] = []
    with open(path, encoding="utf-8") as lines:
        for record in read_records(lines, path):
            if isinstance(record, Link):
                store.add_link(record)
            else:
                bindings.append(record)
    store.put_many(bindings)
    return store
