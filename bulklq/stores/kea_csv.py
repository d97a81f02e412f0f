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

B{Memory.} Per active lease the store keeps its 16 address octets and a small tuple (its
client's group, a lifetimes tuple shared by many leases, its expiry, and the summary of its
user context: the relay chain's checked parts, shared by the rows of one transaction); the
index by link, client, Relay-ID and Remote-ID holds binding keys only. A L{Binding} is built
when a query first returns it and kept until its client's leases change. The links alone
live in a L{MemoryBindingStore}.
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
from socket import AF_INET6, inet_pton
from typing import IO, Any
from urllib.parse import parse_qs, unquote, urlsplit

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
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
from ..wire._fast import ipv6_from_packed
from ..wire._fast import new as _new
from ..wire.duid import duid_problem
from ._materialise import ipv6_network
from .kea_config import load_kea_config
from .kea_leases import (
    LEASE_TYPE_PD,
    STATE_DEFAULT,
    KeaLeaseError,
    RelayInfo,
    RelaySummary,
    assemble_binding,
    client_duid,
    lease_item,
    parse_address,
    relay_summary,
    subnet_link_id,
    unescape,
)
from .memory import (
    _BULK,
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

#: Columns a lease file must have; the others (state, user_context, pool_id ...) are optional.
REQUIRED_COLUMNS = (
    "address",
    "duid",
    "valid_lifetime",
    "expire",
    "subnet_id",
    "pref_lifetime",
    "lease_type",
    "prefix_len",
)
#: Octets read at a time; rows are parsed one chunk of complete lines at a time.
CHUNK_SIZE = 1 << 20
#: Malformed rows logged one by one per read of a file; the rest are counted.
MAX_ROW_WARNINGS = 20
#: Distinct user contexts and DUID texts remembered while reading (the rows of one
#: transaction repeat them).
_CACHE_SIZE = 4096
#: Times the LFC file set is re-read when LFC renamed files during a load.
_LOAD_ATTEMPTS = 5

#: A client's group: (subnet id, DUID octets).
_Group = tuple[int, bytes]
#: What many leases share: (lease type, prefix length, preferred and valid lifetimes).
_Shape = tuple[int, int, int, int]
#: An active lease: (group, shape, expiry, relay summary).
_Record = tuple[_Group, _Shape, int, RelaySummary]


class KeaCsvError(Exception):
    """The lease file or the store's URI cannot be used (a one-line message)."""


class _MalformedRowError(Exception):
    pass


@attrs.frozen
class _Columns:
    """Positions of the columns bulklq reads, from a file's header."""

    count: int
    address: int
    duid: int
    valid: int
    expire: int
    subnet: int
    pref: int
    lease_type: int
    prefix_len: int
    state: int
    user_context: int

    @classmethod
    def from_header(cls, fields: list[str]) -> _Columns:
        names = [field.strip() for field in fields]
        missing = [name for name in REQUIRED_COLUMNS if name not in names]
        if missing:
            raise KeaCsvError(f"header lacks {', '.join(missing)}: not a Kea DHCPv6 lease file")
        position = {name: index for index, name in reversed(list(enumerate(names)))}
        return cls(
            len(names),
            position["address"],
            position["duid"],
            position["valid_lifetime"],
            position["expire"],
            position["subnet_id"],
            position["pref_lifetime"],
            position["lease_type"],
            position["prefix_len"],
            position.get("state", -1),
            position.get("user_context", -1),
        )


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


def _row_problem(fields: list[str], c: _Columns) -> str:
    """Why the address, lifetime, expiry, subnet or state column of a row is malformed."""
    try:
        parse_address(fields[c.address].strip())
        for position in (c.valid, c.expire, c.subnet, c.state):
            if position >= 0:
                int(fields[position])
    except ValueError as error:
        return str(error)
    return "malformed row"  # pragma: no cover - the fast path and this one agree


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


def _chunk_long(index: _Sparse) -> None:
    """Turn the long sorted lists of a sparse index just built into chunked collections."""
    for value, keys in index.items():
        if type(keys) is list and len(keys) > _SMALL:
            index[value] = _SortedKeys(keys, ordered=True)


class _LeaseTable:
    """
    The active leases by address (16 octets) in a compact form, grouped by client, and the
    index of the clients' bindings, whose L{Binding} objects are built when a query first
    returns them (and kept until the client's leases change).
    """

    def __init__(self, derive_links: bool, link_id: Callable[[int], str]) -> None:
        self.leases: dict[bytes, _Record] = {}
        #: group -> [the group's key tuple (shared by its records), lease keys ...]
        self.members: dict[_Group, list[Any]] = {}
        self.dirty: set[_Group] = set()
        #: escaped user_context -> its summary (the rows of one transaction repeat it)
        self.relay_cache: dict[str, RelaySummary] = {}
        #: DUID text -> octets (a client's rows repeat it)
        self.duid_cache: dict[str, bytes] = {}
        #: one shape object per distinct (type, length, lifetimes), shared by the records
        self.shapes: dict[_Shape, _Shape] = {}
        self.derive_links = derive_links
        self.link_id = link_id
        #: subnet id -> prefixes derived from its leases (when there is no configuration)
        self.derived: dict[int, dict[IPv6Network, None]] = {}
        self.seen_links: set[tuple[int, Any]] = set()
        self.links_dirty: set[int] = set()
        # The bindings' index: key -> [group, expiry, relay ids, remote ids, Binding|None]
        self.entries: dict[BindingKey, list[Any]] = {}
        self.keys = _SortedKeys()
        self.by_client: _Sparse = {}
        self.by_relay: _Sparse = {}
        self.by_remote: _Sparse = {}
        #: While changes are published: each group touched since the last flush -> its
        #: leases (address -> record) as they were at that flush; else C{None}.
        self.before: dict[_Group, dict[bytes, _Record]] | None = None

    def __len__(self) -> int:
        return len(self.leases)

    def _touch(self, group: _Group) -> None:
        """Remember C{group}'s leases as they were at the last flush (first touch only)."""
        before = self.before
        if before is not None and group not in before:
            members = self.members.get(group)
            leases = self.leases
            before[group] = {} if members is None else {a: leases[a] for a in members[1:]}

    def read(self, lines: list[str], columns: _Columns, now: float) -> Iterator[tuple[int, str]]:
        """
        Apply C{lines} (complete rows, header excluded) in order; yield (index, reason) for
        each malformed one.
        """
        c = columns
        count = c.count
        i_address, i_duid, i_valid, i_expire = c.address, c.duid, c.valid, c.expire
        i_subnet, i_pref, i_type, i_plen = c.subnet, c.pref, c.lease_type, c.prefix_len
        i_state, i_context = c.state, c.user_context
        leases = self.leases
        members_of = self.members
        mark = self.dirty.add
        relay_cache = self.relay_cache
        duid_cache = self.duid_cache
        shape_of = self.shapes.setdefault
        derive = self._derive if self.derive_links else None
        seen = self.seen_links
        pton = inet_pton
        touch = self._touch if self.before is not None else None
        for number, line in enumerate(lines):
            if not line:
                continue
            if "\r" in line:
                # csv refuses a carriage return inside a row: keep its verdict.
                try:
                    fields = next(csv.reader([line], quoting=csv.QUOTE_NONE, strict=False))
                except csv.Error as error:
                    yield number, f"not CSV: {error}"
                    continue
            else:
                fields = line.split(",")
            if len(fields) != count:
                yield number, f"{len(fields)} fields where the header has {count}"
                continue
            try:
                key = pton(AF_INET6, fields[i_address].strip())
                valid = int(fields[i_valid])
                expire = int(fields[i_expire])
                subnet = int(fields[i_subnet])
                state = int(fields[i_state]) if i_state >= 0 else STATE_DEFAULT
            except (OSError, ValueError):
                yield number, _row_problem(fields, c)
                continue
            if valid <= 0 or state != STATE_DEFAULT or expire <= now:
                self._remove(key)
                continue
            try:
                pref = int(fields[i_pref])
                lease_type = int(fields[i_type])
                prefix_len = int(fields[i_plen])
                duid_text = fields[i_duid]
                duid = duid_cache.get(duid_text)
                if duid is None:
                    duid = bytes.fromhex(duid_text.replace(":", ""))
                    if len(duid_cache) >= _CACHE_SIZE:
                        duid_cache.clear()
                    duid_cache[duid_text] = duid
                if lease_type and (
                    lease_type != LEASE_TYPE_PD
                    or not 0 <= prefix_len <= 128
                    or int.from_bytes(key) & ((1 << (128 - prefix_len)) - 1)
                ):
                    lease_item(
                        parse_address(fields[i_address].strip()), lease_type, prefix_len, 0, 0
                    )
            except ValueError as error:  # KeaLeaseError included
                yield number, str(error)
                continue
            text = fields[i_context] if i_context >= 0 else ""
            relay = relay_cache.get(text)
            if relay is None:
                try:
                    relay = relay_summary(unescape(text))
                except KeaLeaseError as error:
                    yield number, str(error)
                    continue
                if len(relay_cache) >= _CACHE_SIZE:
                    relay_cache.clear()
                relay_cache[text] = relay
            members = members_of.get((subnet, duid))
            if members is None:
                if duid_problem(duid) is not None:
                    try:
                        client_duid(duid)  # for its message
                    except KeaLeaseError as error:
                        yield number, str(error)
                        continue
                group: _Group = (subnet, duid)
                members = members_of[group] = [group]
            else:
                group = members[0]
            old = leases.get(key)
            if touch is not None:
                touch(group)
                if old is not None:
                    touch(old[0])
            shape = (lease_type, prefix_len, pref, valid)
            leases[key] = (group, shape_of(shape, shape), expire, relay)
            if old is None:
                members.append(key)
            elif old[0] is not group:
                members_of[old[0]].remove(key)
                mark(old[0])
                members.append(key)
            elif members[-1] != key:
                # Members stay in the order of their last rows: on a CLTT tie, the lease
                # written last gives the binding its relay chain.
                members.remove(key)
                members.append(key)
            mark(group)
            if derive is not None and (
                (relay.link_address is not None and (subnet, relay.link_address) not in seen)
                or (lease_type != LEASE_TYPE_PD and (subnet, key[:8]) not in seen)
            ):
                derive(subnet, relay.link_address, key if lease_type != LEASE_TYPE_PD else None)

    def _remove(self, key: bytes) -> None:
        old = self.leases.get(key)
        if old is not None:
            group = old[0]
            self._touch(group)
            del self.leases[key]
            self.members[group].remove(key)
            self.dirty.add(group)

    def _derive(self, subnet: int, link_address: int | None, address: bytes | None) -> None:
        seen = self.seen_links
        if link_address is not None and (subnet, link_address) not in seen:
            seen.add((subnet, link_address))
            self.derived.setdefault(subnet, {})[IPv6Network((link_address, 128))] = None
            self.links_dirty.add(subnet)
        if address is not None:
            block = address[:8]
            if (subnet, block) not in seen:
                seen.add((subnet, block))
                network = IPv6Network((int.from_bytes(block) << 64, 64))
                self.derived.setdefault(subnet, {})[network] = None
                self.links_dirty.add(subnet)

    # The index

    def _summary(self, group: _Group) -> tuple[int, tuple[bytes, ...], tuple[Any, ...]] | None:
        """A group's expiry, Relay-IDs and Remote-IDs, or C{None} when it has no lease."""
        members = self.members.get(group)
        if members is None or len(members) < 2:
            return None
        leases = self.leases
        if len(members) == 2:
            record = leases[members[1]]
            relay = record[3]
            return record[2], relay.relay_ids, relay.remote_ids
        records = [leases[key] for key in members[1:]]
        relays = {id(record[3]): record[3] for record in records}
        expires = max(record[2] for record in records)
        if len(relays) == 1:
            relay = records[0][3]
            return expires, relay.relay_ids, relay.remote_ids
        return (
            expires,
            tuple(dict.fromkeys(value for relay in relays.values() for value in relay.relay_ids)),
            tuple(dict.fromkeys(value for relay in relays.values() for value in relay.remote_ids)),
        )

    def flush(
        self, links: MemoryBindingStore, now: float | None = None
    ) -> list[tuple[Binding, bool]]:
        """
        Bring the index up to date with the changed groups; add the derived links that
        changed to C{links}.

        @return: while L{before} is kept, the binding changes since the last flush, in the
            order their groups were first touched: (the new binding, C{False}) for a group
            whose leases differ, (the binding it had, C{True}) for one left with none, unless
            that binding had expired by C{now} (its expiry was published when it came).
        """
        before = self.before
        pending: list[tuple[BindingKey, Binding | None]] = []
        if before:
            leases = self.leases
            entries = self.entries
            for group, old in before.items():
                members = self.members.get(group)
                new = {} if members is None else {a: leases[a] for a in members[1:]}
                key: BindingKey = (self.link_id(group[0]), group[1])
                if new == old and (list(new) == list(old) or self._same_binding(key, old, new)):
                    continue
                if new:
                    pending.append((key, None))
                    continue
                entry = entries.get(key)
                if entry is not None and (now is None or entry[1] > now):
                    gone = entry[4] or self._build(key, list(old), list(old.values()))
                    pending.append((key, gone))
            self.before = {}
        if not self.entries and len(self.dirty) >= _BULK:
            self._bulk_index()
        else:
            for group in self.dirty:
                self._reindex(group)
        self.dirty.clear()
        for subnet in self.links_dirty:
            links.add_link(Link(self.link_id(subnet), tuple(sorted(self.derived[subnet]))))
        self.links_dirty.clear()
        entries = self.entries
        return [
            (self.binding(key, entries[key]), False) if gone is None else (gone, True)
            for key, gone in pending
        ]

    def _reindex(self, group: _Group) -> None:
        key: BindingKey = (self.link_id(group[0]), group[1])
        old = self.entries.get(key)
        summary = self._summary(group)
        if summary is None:
            self.members.pop(group, None)
            if old is not None:
                del self.entries[key]
                self.keys.discard(key)
                _unindex(self.by_client, (key[1],), key)
                _unindex(self.by_relay, old[2], key)
                _unindex(self.by_remote, old[3], key)
            return
        expires, relay_ids, remote_ids = summary
        if old is None:
            self.keys.add(key)
            _index(self.by_client, (key[1],), key)
        else:
            if old[2] != relay_ids:
                _unindex(self.by_relay, old[2], key)
            if old[3] != remote_ids:
                _unindex(self.by_remote, old[3], key)
        if old is None or old[2] != relay_ids:
            _index(self.by_relay, relay_ids, key)
        if old is None or old[3] != remote_ids:
            _index(self.by_remote, remote_ids, key)
        self.entries[key] = [group, expires, relay_ids, remote_ids, None]

    def _bulk_index(self) -> None:
        """
        Index every dirty group of an empty index at once: the keys are sorted once (each
        link's DUIDs apart, cheaper than comparing tuples), then every index is filled in
        key order, so its lists come out sorted.
        """
        entries = self.entries
        link_id = self.link_id
        members_of = self.members
        leases = self.leases
        by_link: dict[str, list[BindingKey]] = {}
        links: dict[int, str] = {}
        empty: list[_Group] = []
        # With an empty index every group is dirty (a flush leaves only indexed groups):
        # the groups' own items then save a lookup each.
        dirty = self.dirty
        groups: Iterable[tuple[_Group, list[Any]]] = (
            members_of.items()
            if len(dirty) == len(members_of)
            else [(group, members_of[group]) for group in dirty if group in members_of]
        )
        for group, members in groups:
            count = len(members)
            if count == 2 or (count == 3 and leases[members[1]][3] is leases[members[2]][3]):
                # One lease, or two with one user context (the common cases), inline.
                _, _, expires, relay = leases[members[1]]
                if count == 3:
                    expires = max(expires, leases[members[2]][2])
                relay_ids, remote_ids = relay.relay_ids, relay.remote_ids
            else:
                summary = self._summary(group)
                if summary is None:
                    empty.append(group)
                    continue
                expires, relay_ids, remote_ids = summary
            subnet, duid = group
            link = links.get(subnet)
            if link is None:
                link = links[subnet] = link_id(subnet)
            key: BindingKey = (link, duid)
            entries[key] = [group, expires, relay_ids, remote_ids, None]
            keys = by_link.get(link)
            if keys is None:
                by_link[link] = [key]
            else:
                keys.append(key)
        for group in empty:
            del members_of[group]
        ordered: list[BindingKey] = []
        add_key = ordered.append
        by_client: _Sparse = {}
        by_relay: _Sparse = {}
        by_remote: _Sparse = {}
        first_client = by_client.setdefault
        first_remote = by_remote.setdefault
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
                for relay_id in entry[2]:
                    _append(by_relay, relay_id, key)
                for remote_id in entry[3]:
                    if first_remote(remote_id, key) is not key:
                        _append(by_remote, remote_id, key)
        self.keys = _SortedKeys(ordered, ordered=True)
        for index in (by_client, by_relay, by_remote):
            _chunk_long(index)
        self.by_client = by_client
        self.by_relay = by_relay
        self.by_remote = by_remote

    def binding(self, key: BindingKey, entry: list[Any]) -> Binding:
        """The binding of an index entry, built on first use and kept in the entry."""
        binding: Binding | None = entry[4]
        if binding is not None:
            return binding
        leases = self.leases
        addresses = self.members[entry[0]][1:]
        built = self._build(key, addresses, [leases[address] for address in addresses])
        entry[4] = built
        return built

    def _same_binding(
        self, key: BindingKey, old: dict[bytes, _Record], new: dict[bytes, _Record]
    ) -> bool:
        """Whether the same leases in another order (a CLTT tie) make the same binding."""
        return self._build(key, list(old), list(old.values())) == self._build(
            key, list(new), list(new.values())
        )

    def _build(self, key: BindingKey, addresses: list[bytes], records: list[_Record]) -> Binding:
        """The binding of a group's leases (C{addresses} and their records; not empty)."""
        first = records[0]
        cltt = first[2] - first[1][3]
        relay = first[3]
        built: Binding | None
        if len(records) == 1 or all(
            record[3] is relay and record[2] - record[1][3] == cltt for record in records
        ):
            return _one_transaction(key, cltt, relay, addresses, records)
        built = assemble_binding(
            _duid(key[1]),
            key[0],
            [
                (
                    lease_item(ipv6_from_packed(address), *record[1]),
                    record[2] - record[1][3],
                    _relay_info(record[3]),
                )
                for address, record in zip(addresses, records, strict=True)
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
            record = leases.get((value & _mask(length)).to_bytes(16))
            if record is None:
                continue
            if record[1][0] == LEASE_TYPE_PD:
                if record[1][1] != length:
                    continue
            elif length != 128:
                continue
            group = record[0]
            yield (self.link_id(group[0]), group[1])

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
                    binding = entry[4] or self.binding(key, entry)
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
        leases, old_leases = self.leases, old.leases
        members_of, old_members_of = self.members, old.members
        for key in self.keys:
            entry = entries[key]
            previous = old_entries.get(key)
            if previous is not None:
                members = members_of[entry[0]]
                old_members = old_members_of[previous[0]]
                if (
                    len(members) == len(old_members)
                    and all(leases[address] == old_leases.get(address) for address in members[1:])
                    and (
                        members[1:] == old_members[1:]
                        or self.binding(key, entry) == old.binding(key, previous)
                    )
                ):
                    continue
            changes.append((self.binding(key, entry), False))
        for key in old.keys:
            previous = old_entries[key]
            if key not in entries and previous[1] > now:
                changes.append((old.binding(key, previous), True))
        return changes


def _one_transaction(
    key: BindingKey,
    cltt: int,
    relay: RelaySummary,
    addresses: list[bytes],
    records: list[_Record],
) -> Binding:
    """
    The binding of leases with one CLTT and one relay summary (the rows of one
    transaction, the common case): no lifetime to shorten, one chain; built with slot
    setters from values checked when the rows were read.
    """
    found: list[AddressLease] = []
    delegated: list[tuple[bytes, int, PrefixLease]] = []
    for address, record in zip(addresses, records, strict=True):
        lease_type, prefix_len, pref, valid = record[1]
        if lease_type == LEASE_TYPE_PD:
            prefix = _new(PrefixLease)
            _set_prefix(prefix, ipv6_network(int.from_bytes(address), prefix_len))
            _set_prefix_preferred(prefix, pref)
            _set_prefix_valid(prefix, valid)
            delegated.append((address, prefix_len, prefix))
        else:
            lease = _new(AddressLease)
            _set_address(lease, ipv6_from_packed(address))
            _set_preferred(lease, pref)
            _set_valid(lease, valid)
            found.append(lease)
    if len(found) > 1:
        found.sort(key=_by_address)
    if len(delegated) > 1:
        delegated.sort(key=_by_prefix)
    relay_data, relay_ids, remote_ids = relay.binding_parts()
    binding = _new(Binding)
    (
        set_client,
        set_link,
        set_cltt,
        set_addresses,
        set_prefixes,
        set_relay,
        set_ids,
        set_remotes,
        set_options,
    ) = set_binding
    duid = _new(Duid)
    _set_duid_raw(duid, key[1])
    set_client(binding, duid)
    set_link(binding, key[0])
    set_cltt(binding, cltt)
    set_addresses(binding, tuple(found))
    set_prefixes(binding, tuple(item for _, _, item in delegated) if delegated else ())
    set_relay(binding, relay_data)
    set_ids(binding, relay_ids)
    set_remotes(binding, remote_ids)
    set_options(binding, ())
    return binding


def _by_address(lease: AddressLease) -> IPv6Address:
    return lease.address


def _by_prefix(item: tuple[bytes, int, PrefixLease]) -> tuple[bytes, int]:
    return item[0], item[1]


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
    if len(_RELAY_INFOS) >= _CACHE_SIZE:
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
        self.columns: _Columns | None = None

    def close(self) -> None:
        self.handle.close()

    def chunks(self, final: bool) -> Iterator[tuple[int, list[str]]]:
        """
        Complete lines from the read position on, in chunks, with the line number of each
        chunk's first line; C{final} also yields a last line without its newline.
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

    def _lines(self, data: bytes) -> Iterator[tuple[int, list[str]]]:
        text = data.decode("utf-8", "replace")
        lines = text.split("\n")
        if "\r" in text:
            lines = [line.rstrip("\r") for line in lines]
        first = self.line + 1
        self.line += len(lines)
        yield first, lines


@implementer(IBindingStore, IBindingChangeFeed)
class KeaCsvStore(HistoryFeed):
    """
    Bindings from Kea's memfile lease file, kept in a L{MemoryBindingStore} and followed
    live (see the module docstring for the rules).

    Call L{load} once, then L{start} to follow the file; L{open_store_uri} does both.

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
    """

    def __init__(
        self,
        path: str | Path,
        reactor: IReactorTime,
        links: dict[int, Link] | None = None,
        interval: float = 1.0,
    ) -> None:
        self.path = Path(path)
        self.name = f"kea-csv:{self.path}"
        self._reactor = reactor
        self._configured = links
        self._interval = interval
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
        warnings = 0
        for first, lines in followed.chunks(final):
            rows = lines
            number = first
            if followed.columns is None:
                if not lines:
                    continue
                header = next(csv.reader(lines[:1], quoting=csv.QUOTE_NONE))
                try:
                    followed.columns = _Columns.from_header(header)
                except KeaCsvError as error:
                    log.error(
                        "{path}:1: {reason}; the file is ignored",
                        path=str(followed.path),
                        reason=str(error),
                    )
                    followed.offset = os.fstat(followed.handle.fileno()).st_size
                    return
                rows = lines[1:]
                number += 1
            for index, reason in table.read(rows, followed.columns, now):
                warnings += 1
                if warnings <= MAX_ROW_WARNINGS:
                    log.warn(
                        "{path}:{line}: malformed lease row skipped: {reason}",
                        path=str(followed.path),
                        line=number + index,
                        reason=reason,
                    )
        if warnings > MAX_ROW_WARNINGS:
            log.warn(
                "{path}: {count} more malformed lease rows skipped",
                path=str(followed.path),
                count=warnings - MAX_ROW_WARNINGS,
            )

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
        finally:
            if collecting:
                gc.enable()
        # The table is millions of long-lived containers: without this, every full
        # collection (triggered by the objects queries allocate) would walk all of them.
        gc.freeze()
        if self._followed is None:
            log.warn("{path} does not exist yet; waiting for Kea to create it", path=str(self.path))
        log.info(
            "{name}: {leases} active leases, {bindings} bindings",
            name=self.name,
            leases=len(table),
            bindings=len(table.entries),
        )

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
        if self._poller is not None and self._poller.running:
            self._poller.stop()
        self._poller = None
        if self._followed is not None:
            self._followed.close()
            self._followed = None
        return defer.succeed(None)


def open_store_uri(uri: str, reactor: IReactorTime) -> KeaCsvStore:
    """
    Open C{kea-csv:PATH[?kea-config=KEA_DHCP6_CONF][&interval=SECONDS][&follow=no]}: load
    the lease files and, unless C{follow=no}, follow them.

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
    unknown = set(params) - {"kea-config", "interval", "follow"}
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
    follow = params.get("follow", ["yes"])[-1].lower()
    if follow not in ("yes", "no", "true", "false", "1", "0"):
        raise KeaCsvError("kea-csv: follow must be yes or no")
    store = KeaCsvStore(path, reactor, links, interval)
    store.load()
    if follow in ("yes", "true", "1"):
        store.start()
    return store
