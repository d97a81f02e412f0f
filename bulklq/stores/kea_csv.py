"""
L{KeaCsvStore}: serve the bindings in ISC Kea's memfile lease file (C{kea-leases6.csv}).

B{What is read.} Kea's lease state is its lease file plus the products of its lease file
cleanup (LFC); bulklq reads them the way Kea loads them at startup: C{PATH.completed} if it
exists, else C{PATH.2} then C{PATH.1}, then C{PATH} itself. Each file's header names its
columns (Kea 2.2's 17 columns, Kea 2.4 to 3.x's with C{pool_id}); the column count is never
assumed. Text columns are unescaped (C{&#xNN}). For each address the last row wins; a row
with valid lifetime 0, a state other than 0 (declined, expired-reclaimed, Kea 3.2's
released) or an expiry in the past removes the lease. The active leases of one DUID in one
subnet form one binding (see L{bulklq.stores.kea_leases} for the relay chain, CLTT and
lifetimes; on a CLTT tie, the lease whose row came last is the newest). A malformed row
is skipped with a warning naming the file and line; the lease the address had before
stays.

B{Loading.} A lease file of a few megabytes or more is loaded on two cores: a forked child
parses rows (L{bulklq.stores._kea_rows}) while this process applies them in order
(L{bulklq.stores._parallel_load}); the result is that of a load in one process, which
C{parallel=False} (URI C{parallel=no}) asks for.

B{Live follow.} Once loaded, the store polls the lease file every second (a C{LoopingCall}
on the injected reactor): complete rows appended since are applied, so a change Kea writes
is served within a second; a last line without its newline is left until it is complete.
Kea's LFC renames the lease file to C{PATH.1} and starts a new one: bulklq reads the old
file to its end through the handle it holds, then follows the new file from its header, so
no binding is lost or duplicated and nothing is reloaded. A lease file replaced any other
way (new inode with no LFC sibling newer than it, or a file that shrank) is reloaded from
the whole file set; the new state replaces the old at once, and a query in flight resumes
after its last key in it, so it keeps the paging contract of
L{bulklq.interfaces.IBindingStore}.

B{Changes (Active Leasequery, RFC 7653).} The store is an L{IBindingChangeFeed}: once
somebody watches (the server calls L{KeaCsvStore.keep_history} when Active Leasequery is
enabled), each poll publishes, timestamped by the injected clock, the new state of every
binding whose leases the rows read changed, or the binding it was, as removed, when its
last lease went (valid lifetime 0, a state other than 0, an expiry in the past). A row that
leaves a binding's leases as they were (Kea rewriting a lease unchanged) is not a change;
the initial load publishes nothing, and a reload publishes only the bindings that differ
between the old and the new state. A binding whose last lease runs out while no row
changes it is published as removed by the next poll (at most C{interval} late, RFC 7653
section 9.3), from a heap of expiry times built when watching starts; Kea's later
reclamation row (state 2) for it publishes nothing more.

B{Links.} With Kea's configuration (C{kea-config=}), each subnet is a link with the subnet's
prefix (L{bulklq.stores.kea_config}). Without it, a subnet's link is known only through its
leases: the link-address Kea selected the subnet by (the relay nearest the client whose
link-address is neither C{::} nor link-local) as a /128, and the /64 of every address it
leased (IA_NA, IA_TA). A query whose link-address matches none of these is answered
NotConfigured; with a configuration, one outside every configured subnet is.

B{Memory.} Each client (subnet and DUID) has one list: its binding key, its index data, its
built L{Binding} (once built), then four slots per active lease (the address as a number, a
shape tuple of type, length and lifetimes shared by many leases, its expiry, and the
summary of its user context: the relay chain's checked parts, shared by the rows of one
transaction); the leases by address point at their client's list, and the index by link,
client, Relay-ID and Remote-ID holds binding keys only. A L{Binding} is built when a query
first returns it, or ahead by the background build (L{KeaCsvStore.warm}, which
L{open_store_uri} starts unless C{warm=no}), and kept until its client's leases change.
The links alone live in a L{MemoryBindingStore}.
"""

from __future__ import annotations

import csv
import gc
import heapq
import os
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator
from ipaddress import IPv6Address, IPv6Network
from itertools import takewhile
from operator import itemgetter
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qs, unquote, urlsplit

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from .._trusted import set_address_lease, set_binding, set_duid_raw, set_prefix_lease
from ..changes import ChangeHistory, HistoryFeed
from ..interfaces import IBindingChangeFeed, IBindingStore
from ..model import (
    AddressLease,
    Binding,
    BindingKey,
    BindingPage,
    BindingQuery,
    Link,
    PrefixLease,
    QueryKind,
)
from ..wire import Duid
from ..wire._fast import new as _new
from . import _parallel_load
from ._kea_rows import CACHE_SIZE, Columns, ParsedRows, RowParser, split_lines
from ._materialise import ipv6_address, ipv6_network
from ._parallel_load import ParallelLoad
from .kea_config import load_kea_config
from .kea_leases import (
    LEASE_TYPE_PD,
    RelayInfo,
    RelaySummary,
    assemble_binding,
    lease_item,
    subnet_link_id,
)
from .memory import (
    _SMALL,
    MemoryBindingStore,
    _index_add,
    _index_discard,
    _Keys,
    _keys_after,
    _mask,
    _SortedKeys,
)

__all__ = ["KeaCsvError", "KeaCsvStore", "lease_file_set", "open_store_uri"]

log = Logger()

_set_duid_raw = set_duid_raw
_set_address, _set_preferred, _set_valid = set_address_lease
_set_prefix, _set_prefix_preferred, _set_prefix_valid = set_prefix_lease

#: Octets read at a time; rows are parsed one chunk of complete lines at a time.
CHUNK_SIZE = 1 << 20
#: Malformed rows logged one by one per read of a file; the rest are counted.
MAX_ROW_WARNINGS = 20
#: Bindings built per reactor turn by L{KeaCsvStore.warm} (a few tens of milliseconds).
WARM_SLICE = 1000
#: Times the LFC file set is re-read when LFC renamed files during a load.
_LOAD_ATTEMPTS = 5


class KeaCsvError(Exception):
    """The lease file or the store's URI cannot be used (a one-line message)."""


def lease_file_set(path: str | Path) -> list[Path]:
    """
    The files holding Kea's lease state, in the order Kea loads them: C{PATH.completed} if
    it exists, else C{PATH.2} and C{PATH.1} (those that exist); then C{PATH}.
    """
    base = Path(path)
    completed = Path(f"{base}.completed")
    if completed.exists():
        earlier = [completed]
    else:
        earlier = [
            candidate for candidate in (Path(f"{base}.2"), Path(f"{base}.1")) if candidate.exists()
        ]
    return [*earlier, base]


#: An index of values that mostly have one key (a client's DUID, a Remote-ID): the key
#: itself, else the keys as in L{MemoryBindingStore}'s indexes.
_Sparse = dict[Any, "BindingKey | _Keys"]


def _unindex(index: _Sparse, values: Iterable[Any], key: BindingKey) -> None:
    for value in values:
        found = index.get(value)
        if found is None:
            continue
        if type(found) is tuple:
            if found == key:
                del index[value]
        else:
            _index_discard(index, value, key)  # type: ignore[arg-type]


def _index(index: _Sparse, values: Iterable[Any], key: BindingKey) -> None:
    for value in values:
        found = index.get(value)
        if found is None:
            index[value] = key
        elif type(found) is tuple:
            if found != key:
                index[value] = [found, key] if found < key else [key, found]
        else:
            _index_add(index, value, key)  # type: ignore[arg-type]


def _append(index: _Sparse, value: Any, key: BindingKey) -> None:
    """Add C{key}, above every key of C{value} so far, to a sparse index being built."""
    found = index.get(value)
    if found is None:
        index[value] = key
    elif type(found) is tuple:
        index[value] = [found, key]
    else:
        found.append(key)  # type: ignore[union-attr]


def _chunk_long(index: _Sparse, values: Iterable[Any]) -> None:
    """
    Turn the long sorted lists of C{values} (every value with more than one key, maybe
    more) in a sparse index just built into chunked collections.
    """
    for value in values:
        keys = index[value]
        if type(keys) is list and len(keys) > _SMALL:
            index[value] = _SortedKeys(keys, ordered=True)


class _LeaseTable:
    """
    The active leases in a compact form, one list per client (subnet and DUID), and the
    index of the clients' bindings, whose L{Binding} objects are built when a query first
    returns them (and kept until the client's leases change).

    A client's list (its I{entry}) is C{[key, expiry, relay ids, remote ids, binding]} (the
    first four as indexed at the last flush; C{None} ids before the first) followed by
    four slots per active lease, in the order of their last rows: address (a number), shape
    (type, prefix length, lifetimes: a tuple shared by many leases), expiry and relay
    summary (shared by the rows of one transaction). The leases by address point at their
    client's entry.
    """

    def __init__(self, derive_links: bool, link_id: Callable[[int], str]) -> None:
        #: address (a number) -> the entry of the client leasing it
        self.leases: dict[int, list[Any]] = {}
        #: binding key -> entry: every client with a lease or still indexed
        self.entries: dict[BindingKey, list[Any]] = {}
        #: keys of the entries changed since the last flush (unused until the first)
        self.dirty: set[BindingKey] = set()
        #: whether nothing was indexed yet: the first flush indexes every entry at once
        self.fresh = True
        #: parses rows, remembering what consecutive rows repeat
        self.parser = RowParser()
        self.derive_links = derive_links
        self.link_id = link_id
        #: subnet id -> link id
        self.link_ids: dict[int, str] = {}
        #: subnet id -> prefixes derived from its leases (when there is no configuration)
        self.derived: dict[int, dict[IPv6Network, None]] = {}
        self.seen_links: set[tuple[int, Any]] = set()
        self.links_dirty: set[int] = set()
        self.keys = _SortedKeys()
        self.by_client: _Sparse = {}
        self.by_relay: _Sparse = {}
        self.by_remote: _Sparse = {}
        #: While changes are published: each key touched since the last flush -> its lease
        #: slots as they were at that flush; else C{None}.
        self.before: dict[BindingKey, list[Any]] | None = None

    def __len__(self) -> int:
        return len(self.leases)

    def _touch(self, entry: list[Any]) -> None:
        """Remember C{entry}'s leases as they were at the last flush (first touch only)."""
        before = self.before
        if before is not None and entry[0] not in before:
            before[entry[0]] = entry[_LEASES:]

    def _link(self, subnet: int) -> str:
        link = self.link_ids[subnet] = self.link_id(subnet)
        return link

    def read(
        self, lines: list[str], columns: Columns, now: float, returns: bool = True
    ) -> list[tuple[int, str]]:
        """
        Apply C{lines} (complete rows, header excluded) in order; return (index, reason) for
        each malformed one. C{returns=False} says that no line holds a carriage return.
        """
        rows = self.parser.parse(lines, columns, now, returns)
        self.apply(rows)
        return rows.problems

    def apply(self, rows: ParsedRows) -> None:
        """Apply parsed rows (L{RowParser.parse}), in order."""
        leases = self.leases
        entries = self.entries
        mark = None if self.fresh else self.dirty.add
        link_ids = self.link_ids
        derive = self._derive if self.derive_links else None
        seen = self.seen_links
        touch = self._touch if self.before is not None else None
        remove = self._remove
        derived_subnet = -1
        derived_relay = None
        entry: list[Any] = []
        for address, shape, expire, subnet, duid, parsed_relay in zip(
            rows.addresses,
            rows.shapes,
            rows.expires,
            rows.subnets,
            rows.duids,
            rows.relays,
            strict=True,
        ):
            if shape is None:
                remove(address)
                continue
            if duid is not None:
                # A new client (else that of the lease row before).
                link = link_ids.get(subnet) or self._link(subnet)
                key: BindingKey = (link, duid)
                found_entry = entries.get(key)
                if found_entry is None:
                    found_entry = entries[key] = [key, 0, None, None, None]
                entry = found_entry
            relay = parsed_relay
            if len(entry) > _LEASES:
                # A renewal whose context was parsed apart (by the other process of a
                # parallel load, or past the parser's cache) shares its summary again.
                last = entry[-1]
                if relay is not last and relay == last:
                    relay = last
            old = leases.get(address)
            if touch is not None:
                touch(entry)
                if old is not None and old is not entry:
                    touch(old)
            if old is None:
                entry += (address, shape, expire, relay)
                leases[address] = entry
            else:
                slot = _slot(old, address)
                if old is entry and slot == len(entry) - _STRIDE:
                    entry[slot + 1 : slot + _STRIDE] = (shape, expire, relay)
                else:
                    # Leases stay in the order of their last rows: on a CLTT tie, the
                    # lease written last gives the binding its relay chain.
                    del old[slot : slot + _STRIDE]
                    entry += (address, shape, expire, relay)
                    if old is not entry:
                        leases[address] = entry
                        if mark is not None:
                            mark(old[0])
            if mark is not None:
                mark(entry[0])
            if derive is not None:
                link_address = relay[3]  # RelaySummary.link_address
                pd = shape[0] == LEASE_TYPE_PD
                if (
                    link_address is not None
                    and (relay is not derived_relay or subnet != derived_subnet)
                    and (subnet, link_address) not in seen
                ) or (not pd and (subnet, address >> 64) not in seen):
                    derive(subnet, link_address, None if pd else address)
                derived_relay = relay
                derived_subnet = subnet

    def _remove(self, address: int) -> None:
        entry = self.leases.pop(address, None)
        if entry is not None:
            self._touch(entry)
            slot = _slot(entry, address)
            del entry[slot : slot + _STRIDE]
            if not self.fresh:
                self.dirty.add(entry[0])

    def _derive(self, subnet: int, link_address: int | None, address: int | None) -> None:
        seen = self.seen_links
        if link_address is not None and (subnet, link_address) not in seen:
            seen.add((subnet, link_address))
            self.derived.setdefault(subnet, {})[IPv6Network((link_address, 128))] = None
            self.links_dirty.add(subnet)
        if address is not None:
            block = address >> 64
            if (subnet, block) not in seen:
                seen.add((subnet, block))
                network = IPv6Network((block << 64, 64))
                self.derived.setdefault(subnet, {})[network] = None
                self.links_dirty.add(subnet)

    # The index

    def flush(
        self, links: MemoryBindingStore, now: float | None = None
    ) -> list[tuple[Binding, bool]]:
        """
        Bring the index up to date with the changed entries; add the derived links that
        changed to C{links}.

        @return: while L{before} is kept, the binding changes since the last flush, in the
            order their entries were first touched: (the new binding, C{False}) for a client
            whose leases differ, (the binding it had, C{True}) for one left with none,
            unless that binding had expired by C{now} (its expiry was published when it
            came).
        """
        before = self.before
        pending: list[tuple[BindingKey, Binding | None]] = []
        entries = self.entries
        if before:
            for key, old in before.items():
                entry = entries.get(key)
                new = [] if entry is None else entry[_LEASES:]
                if _same_leases(old, new) and (
                    new == old or self._build(key, old) == self._build(key, new)
                ):
                    continue
                if new:
                    pending.append((key, None))
                    continue
                if entry is not None and entry[2] is not None and (now is None or entry[1] > now):
                    gone = entry[4] or self._build(key, old)
                    pending.append((key, gone))
            self.before = {}
        if self.fresh:
            self._bulk_index()
            self.fresh = False
        else:
            for key in self.dirty:
                self._reindex(key)
        self.dirty.clear()
        for subnet in self.links_dirty:
            links.add_link(Link(self.link_id(subnet), tuple(sorted(self.derived[subnet]))))
        self.links_dirty.clear()
        return [
            (self.binding(key, entries[key]), False) if gone is None else (gone, True)
            for key, gone in pending
        ]

    def _reindex(self, key: BindingKey) -> None:
        entry = self.entries.get(key)
        if entry is None:
            return
        indexed = entry[2] is not None
        if len(entry) == _LEASES:
            del self.entries[key]
            if indexed:
                self.keys.discard(key)
                _unindex(self.by_client, (key[1],), key)
                _unindex(self.by_relay, entry[2], key)
                _unindex(self.by_remote, entry[3], key)
            return
        expires, relay_ids, remote_ids = _summary(entry)
        if not indexed:
            self.keys.add(key)
            _index(self.by_client, (key[1],), key)
            _index(self.by_relay, relay_ids, key)
            _index(self.by_remote, remote_ids, key)
        else:
            if entry[2] != relay_ids:
                _unindex(self.by_relay, entry[2], key)
                _index(self.by_relay, relay_ids, key)
            if entry[3] != remote_ids:
                _unindex(self.by_remote, entry[3], key)
                _index(self.by_remote, remote_ids, key)
        entry[1:_LEASES] = (expires, relay_ids, remote_ids, None)

    def _bulk_index(self) -> None:
        """
        Index every entry of a table never indexed: the keys are sorted once (each link's
        DUIDs apart, cheaper than comparing tuples), then every index is filled in key
        order, so its lists come out sorted.
        """
        entries = self.entries
        by_link: dict[str, list[BindingKey]] = {}
        empty: list[BindingKey] = []
        for key, entry in entries.items():
            count = len(entry)
            if count == _LEASES + _STRIDE:
                # One lease, or two with one user context (the common cases), inline.
                relay = entry[8]
                entry[1] = entry[7]
                entry[2] = relay[1]  # RelaySummary.relay_ids
                entry[3] = relay[2]  # RelaySummary.remote_ids
            elif count == _LEASES + 2 * _STRIDE and entry[8] is entry[12]:
                relay = entry[8]
                entry[1] = entry[7] if entry[7] >= entry[11] else entry[11]
                entry[2] = relay[1]
                entry[3] = relay[2]
            elif count == _LEASES:
                empty.append(key)
                continue
            else:
                entry[1:4] = _summary(entry)
            link = key[0]
            keys = by_link.get(link)
            if keys is None:
                by_link[link] = [key]
            else:
                keys.append(key)
        for key in empty:
            del entries[key]
        ordered: list[BindingKey] = []
        add_key = ordered.append
        by_client: _Sparse = {}
        by_relay: _Sparse = {}
        by_remote: _Sparse = {}
        first_client = by_client.setdefault
        first_remote = by_remote.setdefault
        relay_get = by_relay.get
        # The DUIDs and Remote-IDs of more than one key (few): only they may need chunking.
        shared_clients: list[Any] = []
        shared_remotes: list[Any] = []
        for link in sorted(by_link):
            keys = by_link[link]
            keys.sort(key=itemgetter(1))  # each link's DUIDs apart: cheaper than tuples
            for key in keys:
                add_key(key)
                duid = key[1]
                entry = entries[key]
                # Most DUIDs and Remote-IDs have one key: setdefault stores it at once.
                if first_client(duid, key) is not key:
                    _append(by_client, duid, key)
                    shared_clients.append(duid)
                for relay_id in entry[2]:
                    # Many keys per Relay-ID: _append, inline.
                    found = relay_get(relay_id)
                    if found is None:
                        by_relay[relay_id] = key
                    elif type(found) is tuple:
                        by_relay[relay_id] = [found, key]
                    else:
                        found.append(key)  # type: ignore[union-attr]
                for remote_id in entry[3]:
                    if first_remote(remote_id, key) is not key:
                        _append(by_remote, remote_id, key)
                        shared_remotes.append(remote_id)
        self.keys = _SortedKeys(ordered, ordered=True)
        _chunk_long(by_client, shared_clients)
        _chunk_long(by_relay, list(by_relay))
        _chunk_long(by_remote, shared_remotes)
        self.by_client = by_client
        self.by_relay = by_relay
        self.by_remote = by_remote

    def binding(self, key: BindingKey, entry: list[Any]) -> Binding:
        """The binding of an index entry, built on first use and kept in the entry."""
        binding: Binding | None = entry[4]
        if binding is None:
            binding = entry[4] = self._build(key, entry[_LEASES:])
        return binding

    def _build(self, key: BindingKey, slots: list[Any]) -> Binding:
        """The binding of a client's lease slots (not empty)."""
        relay = slots[3]
        shape = slots[1]
        cltt = slots[2] - shape[3]
        if len(slots) == _STRIDE:
            return _one_transaction(key, cltt, relay, slots)
        for start in range(_STRIDE, len(slots), _STRIDE):
            if slots[start + 3] is not relay or slots[start + 2] - slots[start + 1][3] != cltt:
                break
        else:
            return _one_transaction(key, cltt, relay, slots)
        built = assemble_binding(
            _duid(key[1]),
            key[0],
            [
                (
                    lease_item(ipv6_address(slots[start]), *slots[start + 1]),
                    slots[start + 2] - slots[start + 1][3],
                    _relay_info(slots[start + 3]),
                )
                for start in range(0, len(slots), _STRIDE)
            ],
        )
        assert built is not None
        return built

    def candidates(self, query: BindingQuery, lower: BindingKey | None) -> Iterator[BindingKey]:
        """The keys that may answer C{query}, ascending, above C{lower}."""
        kind = query.kind
        keys: BindingKey | _Keys | None
        if kind is QueryKind.LINK:
            return self.keys.after(lower)
        if kind is QueryKind.ADDRESS:
            found = sorted(set(self._holding(query.address))) if query.address else []
            return iter(found[bisect_right(found, lower) if lower is not None else 0 :])
        if kind is QueryKind.CLIENT_ID:
            keys = None if query.client_id is None else self.by_client.get(query.client_id.raw)
        elif kind is QueryKind.RELAY_ID:
            keys = None if query.relay_id is None else self.by_relay.get(query.relay_id.raw)
        else:
            remote = query.remote_id
            keys = (
                None
                if remote is None
                else self.by_remote.get(
                    remote.enterprise_number.to_bytes(4, "big") + remote.remote_id
                )
            )
        if keys is None:
            return iter(())
        if type(keys) is tuple:
            return iter((keys,) if lower is None or keys > lower else ())
        return _keys_after(keys, lower)  # type: ignore[arg-type]

    def _holding(self, address: IPv6Address) -> Iterator[BindingKey]:
        """Keys of the clients leasing C{address} or a delegated prefix containing it."""
        value = int(address)
        leases = self.leases
        for length in range(128, -1, -1):
            network = value & _mask(length)
            entry = leases.get(network)
            if entry is None:
                continue
            lease_type, prefix_len = entry[_slot(entry, network) + 1][:2]
            if lease_type == LEASE_TYPE_PD:
                if prefix_len != length:
                    continue
            elif length != 128:
                continue
            yield entry[0]

    def page(
        self, query: BindingQuery, resume_after: BindingKey | None, limit: int, now: float
    ) -> BindingPage:
        """
        The next page of C{query}: as L{MemoryBindingStore.fetch}, at most
        C{max(4 * limit, 4096)} keys are skipped per call.
        """
        lower = resume_after
        link_id = query.link_id
        if link_id is not None and (lower is None or lower < (link_id, b"")):
            lower = (link_id, b"")
        candidates = self.candidates(query, lower)
        if link_id is not None:
            candidates = takewhile((link_id + "\x00", b"").__gt__, candidates)
        check = query.matches if query.kind is QueryKind.ADDRESS else None
        entries = self.entries
        build = self._build
        page: list[Binding] = []
        budget = max(4 * limit, 4096)
        last: BindingKey | None = None
        # Building a page's bindings allocates thousands of long-lived objects: without
        # this pause the collector rescans every binding built so far again and again (the
        # first stream after a load spent more time collecting than building).
        collecting = gc.isenabled()
        gc.disable()
        try:
            for key in candidates:
                entry = entries.get(key)
                if entry is not None and entry[1] > now:
                    binding = entry[4]
                    if binding is None:
                        binding = entry[4] = build(key, entry[_LEASES:])
                    if check is None or check(binding):
                        page.append(binding)
                        if len(page) == limit:
                            last = key
                            break
                budget -= 1
                if not budget:
                    last = key
                    break
        finally:
            if collecting:
                gc.enable()
        if last is None or next(candidates, None) is None:
            return BindingPage(page, None)
        return BindingPage(page, last)

    def bindings(self) -> Iterator[Binding]:
        """Every binding, expired ones included, in key order."""
        entries = self.entries
        for key in self.keys:
            yield self.binding(key, entries[key])

    def differences(self, old: _LeaseTable, now: float) -> list[tuple[Binding, bool]]:
        """
        The binding changes from C{old} (flushed) to this table (a reload): as L{flush}
        returns them, in key order, the removals last. A binding whose leases are the same
        in both is not a change, so rewriting a file without changing it publishes nothing.
        """
        changes: list[tuple[Binding, bool]] = []
        entries, old_entries = self.entries, old.entries
        for key in self.keys:
            entry = entries[key]
            previous = old_entries.get(key)
            if previous is not None:
                slots, old_slots = entry[_LEASES:], previous[_LEASES:]
                if slots == old_slots or (
                    _same_leases(old_slots, slots)
                    and self.binding(key, entry) == old.binding(key, previous)
                ):
                    continue
            changes.append((self.binding(key, entry), False))
        for key in old.keys:
            previous = old_entries[key]
            if key not in entries and previous[1] > now:
                changes.append((old.binding(key, previous), True))
        return changes


#: Where an entry's lease slots start, and how many slots a lease takes.
_LEASES = 5
_STRIDE = 4


def _slot(entry: list[Any], address: int) -> int:
    """Where C{address}'s slots start in C{entry} (it holds them)."""
    for start in range(_LEASES, len(entry), _STRIDE):
        if entry[start] == address:
            return start
    raise KeyError(address)  # pragma: no cover - the leases by address point at holders


def _same_leases(old: list[Any], new: list[Any]) -> bool:
    """Whether two lists of lease slots hold the same leases, in any order."""
    if len(old) != len(new):
        return False
    if old == new:
        return True
    return _by_address_slots(old) == _by_address_slots(new)


def _by_address_slots(slots: list[Any]) -> dict[int, tuple[Any, ...]]:
    return {
        slots[start]: tuple(slots[start + 1 : start + _STRIDE])
        for start in range(0, len(slots), _STRIDE)
    }


def _summary(entry: list[Any]) -> tuple[int, tuple[bytes, ...], tuple[Any, ...]]:
    """An entry's expiry, Relay-IDs and Remote-IDs (it has a lease)."""
    expires = max(entry[_LEASES + 2 :: _STRIDE])
    relays = {id(relay): relay for relay in entry[_LEASES + 3 :: _STRIDE]}
    if len(relays) == 1:
        relay = entry[_LEASES + 3]
        return expires, relay.relay_ids, relay.remote_ids
    return (
        expires,
        tuple(dict.fromkeys(value for relay in relays.values() for value in relay.relay_ids)),
        tuple(dict.fromkeys(value for relay in relays.values() for value in relay.remote_ids)),
    )


def _one_transaction(
    key: BindingKey,
    cltt: int,
    relay: RelaySummary,
    slots: list[Any],
) -> Binding:
    """
    The binding of leases with one CLTT and one relay summary (the rows of one
    transaction, the common case): no lifetime to shorten, one chain; built with slot
    setters from values checked when the rows were read.
    """
    addresses: list[AddressLease] = []
    prefixes: list[PrefixLease] = []
    for start in range(0, len(slots), _STRIDE):
        lease_type, prefix_len, pref, valid = slots[start + 1]
        if lease_type == LEASE_TYPE_PD:
            prefix = _new(PrefixLease)
            _set_prefix(prefix, ipv6_network(slots[start], prefix_len))
            _set_prefix_preferred(prefix, pref)
            _set_prefix_valid(prefix, valid)
            prefixes.append(prefix)
        else:
            lease = _new(AddressLease)
            _set_address(lease, ipv6_address(slots[start]))
            _set_preferred(lease, pref)
            _set_valid(lease, valid)
            addresses.append(lease)
    if len(addresses) > 1:
        addresses.sort(key=_address_number)
    if len(prefixes) > 1:
        prefixes.sort(key=_prefix_order)
    relay_data, relay_ids, remote_ids = relay.binding_parts()
    binding = _new(Binding)
    duid = _new(Duid)
    _set_duid_raw(duid, key[1])
    _set_client(binding, duid)
    _set_link(binding, key[0])
    # Clients renewed in the same second share one number object.
    shared = _CLTTS.get(cltt)
    if shared is None:
        if len(_CLTTS) >= 65536:
            _CLTTS.clear()
        shared = _CLTTS[cltt] = cltt
    _set_cltt(binding, shared)
    _set_addresses(binding, tuple(addresses))
    _set_prefixes(binding, tuple(prefixes))
    _set_relay(binding, relay_data)
    _set_ids(binding, relay_ids)
    _set_remotes(binding, remote_ids)
    _set_options(binding, ())
    return binding


(
    _set_client,
    _set_link,
    _set_cltt,
    _set_addresses,
    _set_prefixes,
    _set_relay,
    _set_ids,
    _set_remotes,
    _set_options,
) = set_binding


#: CLTT -> one number object for the bindings built with it.
_CLTTS: dict[int, int] = {}


def _address_number(lease: AddressLease) -> int:
    return int(lease.address)


def _prefix_order(lease: PrefixLease) -> tuple[int, int]:
    return int(lease.prefix.network_address), lease.prefix.prefixlen


def _duid(raw: bytes) -> Duid:
    duid = _new(Duid)
    _set_duid_raw(duid, raw)
    return duid


#: id(summary) -> (summary, its relay information): the leases of a client, and the
#: clients of a relay that adds no per-client option, share one summary object.
_RELAY_INFOS: dict[int, tuple[RelaySummary, RelayInfo]] = {}


def _relay_info(summary: RelaySummary) -> RelayInfo:
    found = _RELAY_INFOS.get(id(summary))
    if found is not None and found[0] is summary:
        return found[1]
    # Checked when the row was read (relay_summary): it cannot fail here.
    info = summary.lazy_info()
    if len(_RELAY_INFOS) >= CACHE_SIZE:
        _RELAY_INFOS.clear()
    _RELAY_INFOS[id(summary)] = (summary, info)
    return info


class _FollowedFile:
    """An open lease file: its handle, identity, read position and header."""

    def __init__(self, path: Path, handle: IO[bytes]) -> None:
        self.path = path
        self.handle = handle
        stat = os.fstat(handle.fileno())
        self.identity = (stat.st_dev, stat.st_ino)
        self.offset = 0
        self.line = 0
        self.columns: Columns | None = None

    def close(self) -> None:
        self.handle.close()

    def chunks(self, final: bool) -> Iterator[tuple[int, list[str], bool]]:
        """
        Complete lines from the read position on, in chunks, with the line number of each
        chunk's first line and whether a line may hold a carriage return; C{final} also
        yields a last line without its newline.
        """
        handle = self.handle
        handle.seek(self.offset)
        pending = b""
        while True:
            data = handle.read(CHUNK_SIZE)
            if not data:
                break
            data = pending + data
            end = data.rfind(b"\n")
            if end < 0:
                pending = data
                continue
            pending = data[end + 1 :]
            yield from self._lines(data[:end])
            self.offset += end + 1
        if final and pending.strip():
            yield from self._lines(pending)
            self.offset += len(pending)

    def _lines(self, data: bytes) -> Iterator[tuple[int, list[str], bool]]:
        lines, returns = split_lines(data)
        first = self.line + 1
        self.line += len(lines)
        yield first, lines, returns


class _RowWarnings:
    """The warnings for the malformed rows of one read of a file (L{MAX_ROW_WARNINGS})."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0

    def report(self, line: int, reason: str) -> None:
        """Warn about the malformed row at line C{line} (or only count it)."""
        self.count += 1
        if self.count <= MAX_ROW_WARNINGS:
            log.warn(
                "{path}:{line}: malformed lease row skipped: {reason}",
                path=str(self.path),
                line=line,
                reason=reason,
            )

    def finish(self) -> None:
        """Say how many more malformed rows were skipped than were warned about."""
        if self.count > MAX_ROW_WARNINGS:
            log.warn(
                "{path}: {count} more malformed lease rows skipped",
                path=str(self.path),
                count=self.count - MAX_ROW_WARNINGS,
            )


@implementer(IBindingStore, IBindingChangeFeed)
class KeaCsvStore(HistoryFeed):
    """
    Bindings from Kea's memfile lease file, kept in a L{MemoryBindingStore} and followed
    live (see the module docstring for the rules).

    Call L{load} once, then L{start} to follow the file and L{warm} to build every binding
    ahead; L{open_store_uri} does all three (unless told not to).

    It is an L{IBindingChangeFeed} (Active Leasequery, RFC 7653): each poll publishes to
    L{changes} every binding that the rows read changed, and every binding whose last
    lease ran out since the last poll, as a removal (see the module docstring). It is
    deliberately not a L{SweepableStore<bulklq.changes.SweepableStore>}: that sweep would
    build every binding; the store sweeps its own index of expiry times.

    @param path: Kea's lease file (C{kea-leases6.csv}); it may not exist yet.
    @param reactor: the clock for the poll and for "now" (Unix seconds).
    @param links: links by subnet id from Kea's configuration, or C{None} to derive them.
    @param interval: seconds between polls of the lease file (at most 1 to serve changes
        within a second).
    @param parallel: whether a load may fork a child process to parse most rows while this
        process applies them (L{bulklq.stores._parallel_load}: only for a file of a few
        megabytes or more, in a process running no other thread).
    """

    def __init__(
        self,
        path: str | Path,
        reactor: IReactorTime,
        links: dict[int, Link] | None = None,
        interval: float = 1.0,
        parallel: bool = True,
    ) -> None:
        self.path = Path(path)
        self.name = f"kea-csv:{self.path}"
        self._reactor = reactor
        self._configured = links
        self._interval = interval
        self._parallel = parallel
        #: Rows a child process parsed during loads (see C{parallel}).
        self.parsed_by_child = 0
        #: The links (only): bindings live in the lease table's index.
        self._links = MemoryBindingStore(clock=reactor)
        self._link_ids: dict[int, str] = {}
        if links is not None:
            for subnet_id, link in links.items():
                self._links.add_link(link)
                self._link_ids[subnet_id] = link.link_id
        self._table = _LeaseTable(links is None, self._link_id)
        self._followed: _FollowedFile | None = None
        self._poller: LoopingCall | None = None
        self._closed = False
        self._warned_subnets: set[int] = set()
        #: Number of full reloads done since L{load} (LFC rotations do not count).
        self.reloads = 0
        #: The change history (Active Leasequery); see L{IBindingChangeFeed}.
        self.changes = ChangeHistory(reactor)
        #: Whether L{start} asked to follow the file (the timer may also only sweep).
        self._following = False
        self._loaded = False
        #: (expiry, key) of the bindings held, a heap; C{None} until changes are watched.
        self._expiries: list[tuple[int, BindingKey]] | None = None
        #: Bindings published as expired so far.
        self.expired = 0
        #: The background build (L{warm}): whether asked for, its next call, the table it
        #: builds and the last key it built.
        self._warm_wanted = False
        self._warm_call: IDelayedCall | None = None
        self._warm_table: _LeaseTable | None = None
        self._warm_after: BindingKey | None = None
        #: Whether the collector ran before the build paused it (C{None}: not paused).
        self._warm_collecting: bool | None = None

    # Loading and following

    def _link_id(self, subnet_id: int) -> str:
        link = self._link_ids.get(subnet_id)
        if link is None:
            link = self._link_ids[subnet_id] = subnet_link_id(subnet_id)
            if self._configured is not None and subnet_id not in self._warned_subnets:
                self._warned_subnets.add(subnet_id)
                log.warn(
                    "{path}: subnet id {subnet_id} is not in Kea's configuration; its "
                    "bindings are served on link {link_id} with no prefix",
                    path=str(self.path),
                    subnet_id=subnet_id,
                    link_id=link,
                )
        return link

    def _now(self) -> float:
        return self._reactor.seconds()

    def _read_file(
        self, table: _LeaseTable, followed: _FollowedFile, now: float, final: bool
    ) -> None:
        warnings = _RowWarnings(followed.path)
        if self._parallel and not followed.offset:
            self._read_parallel(table, followed, now, warnings)
        self._read_rows(table, followed, now, final, warnings)
        warnings.finish()

    def _read_parallel(
        self, table: _LeaseTable, followed: _FollowedFile, now: float, warnings: _RowWarnings
    ) -> None:
        """
        Read a file from its start with a child process parsing rows alongside this one
        (L{bulklq.stores._parallel_load}), when that is worth it; C{followed} is left at the
        first line not read (the end of the last complete line when the load began).
        """
        fd = followed.handle.fileno()
        size = os.fstat(fd).st_size
        if size < _parallel_load.MIN_OCTETS:
            return
        head = os.pread(fd, 1 << 16, 0)
        end = head.find(b"\n")
        if end < 0:
            return
        try:
            header, _ = split_lines(head[:end])
            columns = Columns.from_header(next(csv.reader(header, quoting=csv.QUOTE_NONE)))
        except (ValueError, csv.Error):
            return  # _read_rows reports it
        parser = table.parser

        def parse(lines: list[str], returns: bool) -> ParsedRows:
            return parser.parse(lines, columns, now, returns)

        load = ParallelLoad.start(fd, end + 1, size, 2, parse)
        if load is None:
            return
        followed.columns = columns
        followed.offset = end + 1
        followed.line = 1
        try:
            # If the file was cut short, _read_rows reads what is left from where it stops.
            for window in load.windows():
                table.apply(window.rows)
                for index, reason in window.rows.problems:
                    warnings.report(window.first_line + index, reason)
                followed.offset = window.end
                followed.line = window.first_line + window.lines - 1
        finally:
            self.parsed_by_child += load.parsed
            load.close()

    def _read_rows(
        self,
        table: _LeaseTable,
        followed: _FollowedFile,
        now: float,
        final: bool,
        warnings: _RowWarnings,
    ) -> None:
        for first, lines, returns in followed.chunks(final):
            rows = lines
            number = first
            if followed.columns is None:
                if not lines:
                    continue
                header = next(csv.reader(lines[:1], quoting=csv.QUOTE_NONE))
                try:
                    followed.columns = Columns.from_header(header)
                except ValueError as error:
                    log.error(
                        "{path}:1: {reason}; the file is ignored",
                        path=str(followed.path),
                        reason=str(error),
                    )
                    followed.offset = os.fstat(followed.handle.fileno()).st_size
                    return
                rows = lines[1:]
                number += 1
            for index, reason in table.read(rows, followed.columns, now, returns):
                warnings.report(number + index, reason)

    def _open(self, path: Path) -> _FollowedFile | None:
        try:
            return _FollowedFile(path, open(path, "rb"))
        except FileNotFoundError:
            return None
        except OSError as error:
            raise KeaCsvError(f"cannot read {path}: {error.strerror}") from None

    def _load_set(self, table: _LeaseTable) -> _FollowedFile | None:
        """Read the whole LFC file set into C{table}; return the open lease file."""
        for _ in range(_LOAD_ATTEMPTS):
            paths = lease_file_set(self.path)
            opened = [(path, self._open(path)) for path in paths]
            if any(handle is None for path, handle in opened[:-1]):
                for _path, handle in opened:
                    if handle is not None:
                        handle.close()
                continue  # LFC renamed a file between listing and opening
            if lease_file_set(self.path) != paths:
                for _path, handle in opened:
                    if handle is not None:
                        handle.close()
                continue
            now = self._now()
            for _path, handle in opened[:-1]:
                assert handle is not None
                try:
                    self._read_file(table, handle, now, final=True)
                finally:
                    handle.close()
            current = opened[-1][1]
            if current is not None:
                self._read_file(table, current, now, final=False)
            return current
        raise KeaCsvError(f"{self.path}: the lease files kept changing while being read")

    def load(self) -> None:
        """
        Read Kea's lease files (see L{lease_file_set}) into the index. A missing lease file
        is an empty one (Kea creates it when it starts).

        @raise KeaCsvError: if a file exists but cannot be read.
        """
        if self._followed is not None:
            self._followed.close()
        table = _LeaseTable(self._configured is None, self._link_id)
        parsed_before = self.parsed_by_child
        # A bulk load allocates millions of objects and frees none: the cyclic garbage
        # collector would rescan the growing heap again and again (quadratic time).
        collecting = gc.isenabled()
        gc.disable()
        try:
            self._followed = self._load_set(table)
            previous = self._table
            table.flush(self._links)
            for subnet in set(previous.derived) - set(table.derived):
                self._links.remove_link(self._link_id(subnet))
            # Swapped whole: a query in flight resumes after its last key in the new state.
            self._table = table
            if self._loaded and self.changes.active:
                # A reload: only what differs is a change (never the initial load).
                self._publish(table.differences(previous, self._now()))
            self._loaded = True
            if self._expiries is not None:
                self._index_expiries()
            if self._warm_wanted:
                self._schedule_warm()
        finally:
            if collecting:
                gc.enable()
        # The table is millions of long-lived containers: without this, every full
        # collection (triggered by the objects queries allocate) would walk all of them.
        gc.freeze()
        if self._followed is None:
            log.warn("{path} does not exist yet; waiting for Kea to create it", path=str(self.path))
        log.info(
            "{name}: {leases} active leases, {bindings} bindings ({parsed} rows parsed by a "
            "second process)",
            name=self.name,
            leases=len(table),
            bindings=len(table.entries),
            parsed=self.parsed_by_child - parsed_before,
        )

    def warm(self) -> None:
        """
        Build every binding's objects in the background, L{WARM_SLICE} keys per reactor
        turn, now and after each full reload, so that queries then stream bindings already
        built (as fast as the memory store) instead of building each one the first time it
        is returned. Memory grows to what serving every binding once takes. A binding whose
        leases change afterwards is built again by the first query that returns it.
        """
        self._warm_wanted = True
        self._schedule_warm()

    @property
    def warming(self) -> bool:
        """Whether the background build of L{warm} is under way."""
        return self._warm_call is not None

    def _schedule_warm(self) -> None:
        if self._warm_call is None and not self._closed:
            self._warm_call = self._reactor.callLater(0, self._warm_slice)

    def _warm_slice(self) -> None:
        self._warm_call = None
        table = self._table
        if table is not self._warm_table:
            self._warm_table = table
            self._warm_after = None
        if self._warm_collecting is None:
            # The collector stays paused until the build ends (as during a load): else
            # every slice's objects, long-lived, would make it rescan those of the slices
            # before (about 40% of the build's time).
            self._warm_collecting = gc.isenabled()
            gc.disable()
        now = self._now()
        entries = table.entries
        built = 0
        last = None
        try:
            for key in table.keys.after(self._warm_after):
                entry = entries[key]
                if entry[4] is None and entry[1] > now:
                    table.binding(key, entry)
                last = key
                built += 1
                if built == WARM_SLICE:
                    break
        except BaseException:
            self._warm_done()
            raise
        if built == WARM_SLICE:
            self._warm_after = last
            self._schedule_warm()
            if self._warm_call is not None:
                return
        self._warm_done()
        if built < WARM_SLICE:
            log.info("{name}: every binding built", name=self.name)

    def _warm_done(self) -> None:
        """The background build ended or stopped: the collector runs again."""
        self._warm_table = self._warm_after = None
        collecting, self._warm_collecting = self._warm_collecting, None
        # What was built lives as long as its leases: keep the collector off it.
        gc.freeze()
        if collecting:
            gc.enable()

    def start(self) -> None:
        """Poll the lease file every C{interval} seconds until L{close}."""
        self._following = True
        self._run_timer()

    def _run_timer(self) -> None:
        """Run L{_tick} every C{interval} seconds until L{close} (if not running yet)."""
        if self._poller is None and not self._closed:
            self._poller = LoopingCall(self._tick)
            self._poller.clock = self._reactor
            self._poller.start(self._interval, now=False).addErrback(
                lambda failure: log.failure("{name}: following stopped", failure, name=self.name)
            )

    def _tick(self) -> None:
        # One failed poll (an unreadable file, a disk error) must not stop the following.
        try:
            if self._following:
                self.poll()
            else:
                self.sweep()
        except Exception:
            log.failure("{name}: reading the lease file failed; retrying", name=self.name)

    def _rotated(self, old: _FollowedFile) -> bool:
        """Whether the lease file was replaced by Kea's LFC (the old file kept as a sibling)."""
        base = str(self.path)
        try:
            stat = os.stat(f"{base}.1")
            if (stat.st_dev, stat.st_ino) == old.identity:
                return True
        except OSError:
            pass
        try:
            last_write = os.fstat(old.handle.fileno()).st_mtime_ns
        except OSError:
            return False
        for suffix in (".2", ".completed"):
            try:
                if os.stat(base + suffix).st_ctime_ns >= last_write:
                    return True
            except OSError:
                continue
        return False

    def poll(self) -> None:
        """
        Apply what changed in the lease file since the last poll (the live follow); while
        changes are watched, publish the expiries due (L{sweep}), then the changes.
        """
        if self._closed:
            return
        self.sweep()
        self._table.before = {} if self.changes.active else None
        try:
            self._apply_changes()
        finally:
            # Even after a read error: the index must agree with the rows applied.
            self._publish(self._table.flush(self._links, self._now()))

    # Changes (Active Leasequery)

    def _publish(self, changes: list[tuple[Binding, bool]]) -> None:
        """Publish C{changes}; remember when each binding written expires."""
        history = self.changes
        heap = self._expiries
        entries = self._table.entries
        for binding, removed in changes:
            history.publish(binding, removed)
            if heap is not None and not removed:
                key = binding.key
                entry = entries.get(key)
                if entry is not None:
                    heapq.heappush(heap, (entry[1], key))
        if heap is not None and len(heap) > 2 * len(entries) + 1024:
            self._index_expiries()

    def _index_expiries(self) -> None:
        """The expiry heap, from every binding held that has not expired yet."""
        now = self._now()
        heap = [(entry[1], key) for key, entry in self._table.entries.items() if entry[1] > now]
        heapq.heapify(heap)
        self._expiries = heap

    def _watch(self) -> None:
        """Changes are watched from now on: index the expiries and run the timer."""
        if self._expiries is None:
            self._index_expiries()
        self._run_timer()

    def sweep(self) -> int:
        """
        Publish, as a removal, every binding whose last lease ran out since the last sweep
        while no row changed it (RFC 7653 section 9.3: an expired binding is a change);
        return how many. Bindings that had expired before changes were watched are not
        published. Called by every poll, and by the timer of a store not following its file.
        """
        heap = self._expiries
        if not heap:
            return 0
        now = self._now()
        table = self._table
        entries = table.entries
        published = 0
        previous: tuple[int, BindingKey] | None = None
        while heap and heap[0][0] <= now:
            due = heapq.heappop(heap)
            if due == previous:
                continue  # the same binding written twice with the same expiry
            previous = due
            expiry, key = due
            entry = entries.get(key)
            if entry is None or entry[1] != expiry:
                continue  # removed (published then) or rewritten (has its own entry)
            self.changes.publish(table.binding(key, entry), removed=True)
            published += 1
        self.expired += published
        return published

    def _changes_wanted(self) -> None:
        """Changes are wanted: watch the file and sweep expiries from now on."""
        self._watch()

    def _apply_changes(self) -> None:
        table = self._table
        now = self._now()
        followed = self._followed
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            # Kea is between renaming its lease file and creating the next one.
            if followed is not None:
                self._read_file(table, followed, now, final=False)
            return
        if followed is None:
            self._followed = self._open(self.path)
            if self._followed is not None:
                self._read_file(table, self._followed, now, final=False)
        elif (stat.st_dev, stat.st_ino) != followed.identity:
            self._read_file(table, followed, now, final=True)
            if self._rotated(followed):
                followed.close()
                self._followed = self._open(self.path)
                if self._followed is not None:
                    self._read_file(table, self._followed, now, final=False)
            else:
                self._reload()
                return
        elif stat.st_size < followed.offset:
            self._reload()
            return
        elif stat.st_size > followed.offset:
            self._read_file(table, followed, now, final=False)

    def _reload(self) -> None:
        # Rows read from the old file before it was found replaced are changes too.
        self._publish(self._table.flush(self._links, self._now()))
        self.reloads += 1
        log.info("{path} was replaced or rewritten: reloading", path=str(self.path))
        self.load()

    # IBindingStore

    def fetch(
        self, query: BindingQuery, resume_after: BindingKey | None, limit: int
    ) -> Deferred[BindingPage]:
        """The next page of matching active bindings (see L{IBindingStore.fetch})."""
        if limit < 1:
            return defer.fail(ValueError(f"page limit must be at least 1, not {limit}"))
        return defer.succeed(self._table.page(query, resume_after, limit, self._now()))

    def find_link(self, address: IPv6Address) -> Deferred[Link | None]:
        """The link whose prefixes contain C{address} (see the module docstring)."""
        return self._links.find_link(address)

    def get_link(self, link_id: str) -> Deferred[Link | None]:
        """The link with id C{link_id}, or C{None}."""
        return self._links.get_link(link_id)

    def links(self) -> list[Link]:
        """The links known, ordered by id."""
        return self._links.links()

    def bindings(self) -> Iterator[Binding]:
        """Every binding held (expired ones included), in key order."""
        return self._table.bindings()

    def __len__(self) -> int:
        return len(self._table.entries)

    def close(self) -> Deferred[None]:
        """Stop following and close the lease file; the bindings stay readable."""
        self._closed = True
        if self._warm_call is not None:
            self._warm_call.cancel()
            self._warm_call = None
            self._warm_done()
        if self._poller is not None and self._poller.running:
            self._poller.stop()
        self._poller = None
        if self._followed is not None:
            self._followed.close()
            self._followed = None
        return defer.succeed(None)


def open_store_uri(uri: str, reactor: IReactorTime) -> KeaCsvStore:
    """
    Open C{kea-csv:PATH[?kea-config=KEA_DHCP6_CONF][&interval=SECONDS][&follow=no][&warm=no]
    [&parallel=no]}: load the lease files (with a child process's help unless
    C{parallel=no}), unless C{follow=no} follow them, and unless C{warm=no} build every
    binding in the background (L{KeaCsvStore.warm}).

    @raise KeaCsvError: for a malformed URI, an unreadable lease file or Kea configuration.
    """
    parts = urlsplit(uri)
    if parts.scheme != "kea-csv":
        raise KeaCsvError(f"{uri!r} is not a kea-csv: URI")
    path = unquote(parts.netloc + parts.path)
    if not path:
        raise KeaCsvError("kea-csv: needs the lease file's path (kea-csv:/var/lib/kea/...)")
    try:
        params = parse_qs(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise KeaCsvError(f"kea-csv: malformed parameters {parts.query!r}") from None
    unknown = set(params) - {"kea-config", "interval", "follow", "warm", "parallel"}
    if unknown:
        raise KeaCsvError(f"kea-csv: unknown parameter {sorted(unknown)[0]!r}")
    links = None
    if "kea-config" in params:
        try:
            links = load_kea_config(params["kea-config"][-1])
        except ValueError as error:
            raise KeaCsvError(str(error)) from None
    interval = 1.0
    if "interval" in params:
        try:
            interval = float(params["interval"][-1])
        except ValueError:
            interval = -1.0
        if not 0 < interval <= 1:
            raise KeaCsvError("kea-csv: interval must be a number of seconds in (0, 1]")
    follow = _yes(params, "follow")
    warm = _yes(params, "warm")
    store = KeaCsvStore(path, reactor, links, interval, parallel=_yes(params, "parallel"))
    store.load()
    if follow:
        store.start()
    if warm:
        store.warm()
    return store


def _yes(params: dict[str, list[str]], name: str) -> bool:
    """
    Whether the URI's yes-or-no parameter C{name} (yes when absent) is yes.

    @raise KeaCsvError: if it is neither.
    """
    value = params.get(name, ["yes"])[-1].lower()
    if value not in ("yes", "no", "true", "false", "1", "0"):
        raise KeaCsvError(f"kea-csv: {name} must be yes or no")
    return value in ("yes", "true", "1")
