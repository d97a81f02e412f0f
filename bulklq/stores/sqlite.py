"""
L{SQLiteBindingStore} (C{sqlite:PATH}): bindings in an SQLite database, the embedded default.

The database has a table of bindings keyed by (link id, client DUID), one index table per
query type (addresses, delegated prefixes, Relay-IDs, Remote-IDs; client DUIDs use an index on
the bindings table) keyed so that every query is one index range scan in
L{Binding.key<bulklq.model.Binding.key>} order, and the links with their prefixes. Pages are
keyset queries (C{... AND (link_id, duid) > (?, ?) ORDER BY link_id, duid LIMIT ?}); each is one
statement, hence one read transaction, so a query sees every binding unchanged for its whole
duration exactly once while other connections write (WAL mode lets them).

L{SQLiteDatabase} is the synchronous, thread-confined layer (one per connection), used by the
store's thread pool and by C{bulklq store import/export/stats}. L{SQLiteBindingStore} runs it
in a thread pool the store owns, so a slow query never blocks the reactor; its pages hold the
rows read and build each binding when the server reaches it
(L{LazyBindings<bulklq.stores._materialise.LazyBindings>}), so a binding lives only until it
is encoded and the garbage collector never sees a whole page of them.

The schema is versioned (table C{schema_version}); L{SQLiteDatabase} migrates older databases
forward and refuses one written by a newer bulklq.

Active Leasequery (RFC 7653): L{SQLiteBindingStore} is an
L{IBindingChangeFeed<bulklq.interfaces.IBindingChangeFeed>}. Its writes (C{put}, C{put_many},
C{remove}) run one at a time and publish each binding written, or removed (as it was, read in
the removing transaction), to its L{ChangeHistory<bulklq.changes.ChangeHistory>} once the
transaction has committed, in commit order; a write that rolls back publishes nothing.
An L{SQLiteSweep} (which the service runs) does the rest every interval: the writes other
processes made to the same file (C{bulklq store import}, another application, the
C{sqlite3} shell), logged by triggers into C{change_log} while a server listens
(C{change_listeners}), then the bindings whose last lease ran out, as removals (RFC 7653
section 9.3), found by one range query of the C{bindings_by_expires} index.
"""

from __future__ import annotations

import os
import sqlite3
import struct
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from ipaddress import IPv6Address, IPv6Network
from typing import Any, TypeVar
from uuid import uuid4

from twisted.internet.defer import Deferred, DeferredLock, fail, succeed
from twisted.internet.interfaces import IReactorCore, IReactorThreads, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from .._trusted import (
    set_address_lease,
    set_binding,
    set_duid_raw,
    set_relay_data,
    set_relay_message,
    set_remote_id,
)
from ..changes import DEFAULT_EXPIRY_INTERVAL, ChangeHistory, HistoryFeed
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
    relay_identities,
)
from ..wire import (
    Duid,
    LQRelayData,
    MessageType,
    Option,
    RelayId,
    RelayMessage,
    RelayMessageOption,
    RemoteId,
    decode_options,
    encode_options,
)
from ..wire._fast import ipv6_from_packed, new
from ._materialise import LazyBindings, ipv6_address, ipv6_network

__all__ = [
    "SCHEMA_VERSION",
    "SQLiteBindingStore",
    "SQLiteDatabase",
    "SQLiteStoreError",
    "SQLiteSweep",
    "open_store_uri",
]

_log = Logger()
_T = TypeVar("_T")

#: The schema version this bulklq writes.
SCHEMA_VERSION = 3

#: What brings a database from version N-1 to N, by N: statements, or functions of the
#: connection (run in the same transaction) for data that must be rewritten. Version 2 is
#: added after the column encodings, which it uses.
_MIGRATIONS: dict[int, tuple[str | Callable[[sqlite3.Connection], None], ...]] = {
    1: (
        """CREATE TABLE links (link_id TEXT PRIMARY KEY) WITHOUT ROWID""",
        """CREATE TABLE link_prefixes (
            length INTEGER NOT NULL, network BLOB NOT NULL, link_id TEXT NOT NULL,
            position INTEGER NOT NULL,
            PRIMARY KEY (length, network)) WITHOUT ROWID""",
        """CREATE INDEX link_prefixes_by_link ON link_prefixes (link_id)""",
        """CREATE TABLE bindings (
            link_id TEXT NOT NULL, duid BLOB NOT NULL, cltt INTEGER NOT NULL,
            expires INTEGER NOT NULL, addresses BLOB NOT NULL, prefixes BLOB NOT NULL,
            relay BLOB, relay_ids BLOB, remote_ids BLOB,
            options BLOB NOT NULL,
            PRIMARY KEY (link_id, duid)) WITHOUT ROWID""",
        """CREATE INDEX bindings_by_duid ON bindings (duid, link_id)""",
        """CREATE TABLE addresses (
            address BLOB NOT NULL, link_id TEXT NOT NULL, duid BLOB NOT NULL,
            PRIMARY KEY (address, link_id, duid)) WITHOUT ROWID""",
        """CREATE TABLE prefixes (
            length INTEGER NOT NULL, network BLOB NOT NULL, link_id TEXT NOT NULL,
            duid BLOB NOT NULL,
            PRIMARY KEY (length, network, link_id, duid)) WITHOUT ROWID""",
        """CREATE TABLE relay_ids (
            relay_id BLOB NOT NULL, link_id TEXT NOT NULL, duid BLOB NOT NULL,
            PRIMARY KEY (relay_id, link_id, duid)) WITHOUT ROWID""",
        """CREATE TABLE remote_ids (
            remote_id BLOB NOT NULL, link_id TEXT NOT NULL, duid BLOB NOT NULL,
            PRIMARY KEY (remote_id, link_id, duid)) WITHOUT ROWID""",
    ),
}


class SQLiteStoreError(ValueError):
    """The database cannot be used (unreadable, not bulklq's, or from a newer version)."""


# Column encodings. Everything stored was validated when it was a Binding, so decoding
# builds values directly, sharing the values that repeat across bindings.
#
# A binding's relay chain is stored in two columns. C{relay} is the chain less its
# per-client Remote-ID values: the peer address, then per hop (outermost first) the
# C{_HOP} header (hop-count, link-address, peer-address, the position of its RELAY_MSG among
# its other options or C{_NO_RELAY_MSG}, the length of the options below, how many
# Remote-IDs), the encoding of its options other than RELAY_MSG and REMOTE_ID, and per
# Remote-ID its position and enterprise number (C{_REMOTE_SLOT}). Every client behind one
# relay port has the same C{relay} octets, so the decoder turns them into a plan once and
# caches it. C{relay_remote} holds the Remote-ID values: the value itself when the chain has
# one Remote-ID, each preceded by its 2-octet length when it has several, NULL when none.
# (Schema version 1 kept each Remote-ID, length and enterprise number included, inside
# C{relay}: see L{_split_remote_ids}.)
#
# C{leases} is the cltt (signed 64 bits) and the number of addresses (C{_LEASES_HEADER}),
# then each address (C{_LEASE}) and each delegated prefix (C{_PREFIX}); one address and no
# prefix, the usual binding, is one C{_ONE_ADDRESS} unpack. C{extra} is NULL unless the
# binding has Relay-IDs or Remote-IDs other than its chain's, or client options: then the
# lengths of its packed Relay-IDs and Remote-IDs (C{_EXTRA_HEADER}; C{_FROM_CHAIN}: those of
# the chain), those, and the options' encoding.

_LEASE = struct.Struct("!16sII")
_PREFIX = struct.Struct("!16sBII")
_HOP = struct.Struct("!B16s16sHHB")
_REMOTE_SLOT = struct.Struct("!HI")
_REMOTE_V1 = struct.Struct("!HH")
_HOP_SIZE = _HOP.size
_SLOT_SIZE = _REMOTE_SLOT.size
_LEASE_SIZE = _LEASE.size
_NO_RELAY_MSG = 0xFFFF
_ALL_ONES = (1 << 128) - 1
_LEASES_HEADER = struct.Struct("!qH")
_ONE_ADDRESS = struct.Struct("!qHQQII")  # the usual leases: one address, no prefix
_EXTRA_HEADER = struct.Struct("!II")
_FROM_CHAIN = 0xFFFFFFFF
_COLUMNS = "link_id, duid, leases, relay, relay_remote, extra"
_JOINED_COLUMNS = ", ".join("b." + column for column in _COLUMNS.split(", "))
#: Keys looked up by one statement when many bindings are replaced (two variables each).
_KEYS_PER_SELECT = 400


def _pack_ids(values: Iterable[bytes]) -> bytes:
    return b"".join(len(value).to_bytes(2, "big") + value for value in values)


def _unpack_ids(data: bytes) -> list[bytes]:
    values = []
    offset = 0
    while offset < len(data):
        length = int.from_bytes(data[offset : offset + 2], "big")
        values.append(data[offset + 2 : offset + 2 + length])
        offset += 2 + length
    return values


def _remote_id_bytes(remote_id: RemoteId) -> bytes:
    return remote_id.enterprise_number.to_bytes(4, "big") + remote_id.remote_id


def _encode_relay(relay_data: LQRelayData) -> tuple[bytes, bytes | None]:
    """The C{relay} and C{relay_remote} columns of a chain (see above)."""
    parts = [relay_data.peer_address.packed]
    values: list[bytes] = []
    for layer in relay_data.relay_message.layers():
        position = _NO_RELAY_MSG
        others: list[Option] = []
        slots: list[bytes] = []
        index = 0
        for option in layer.options:
            if isinstance(option, RelayMessageOption) and isinstance(option.message, RelayMessage):
                position = index
                continue
            if isinstance(option, RemoteId):
                slots.append(_REMOTE_SLOT.pack(index, option.enterprise_number))
                values.append(option.remote_id)
            else:
                others.append(option)
            index += 1
        data = encode_options(others)
        parts.append(
            _HOP.pack(
                layer.hop_count,
                layer.link_address.packed,
                layer.peer_address.packed,
                position,
                len(data),
                len(slots),
            )
        )
        parts.append(data)
        parts.extend(slots)
    if not values:
        remote = None
    elif len(values) == 1:
        remote = values[0]
    else:
        remote = _pack_ids(values)
    return b"".join(parts), remote


def _split_remote_ids(relay: bytes) -> tuple[bytes, bytes | None]:
    """
    The version 2 C{relay} and C{relay_remote} columns of a version 1 C{relay} column (the
    same, except that each hop's Remote-IDs followed its options as C{_REMOTE_V1} (position,
    length) and the option's value, enterprise number included).
    """
    parts = [relay[:16]]
    values: list[bytes] = []
    offset = 16
    while offset < len(relay):
        header = relay[offset : offset + _HOP_SIZE]
        length, count = _HOP.unpack(header)[4:]
        offset += _HOP_SIZE
        parts.append(header)
        parts.append(relay[offset : offset + length])
        offset += length
        for _ in range(count):
            index, size = _REMOTE_V1.unpack_from(relay, offset)
            offset += _REMOTE_V1.size
            payload = relay[offset : offset + size]
            offset += size
            parts.append(_REMOTE_SLOT.pack(index, int.from_bytes(payload[:4], "big")))
            values.append(payload[4:])
    if not values:
        return b"".join(parts), None
    return b"".join(parts), values[0] if len(values) == 1 else _pack_ids(values)


def _leases_column(cltt: int, addresses: bytes, prefixes: bytes) -> bytes:
    return _LEASES_HEADER.pack(cltt, len(addresses) // _LEASE_SIZE) + addresses + prefixes


def _extra_column(
    relay_ids: bytes | None, remote_ids: bytes | None, options: bytes
) -> bytes | None:
    if relay_ids is None and remote_ids is None and not options:
        return None
    return (
        _EXTRA_HEADER.pack(
            _FROM_CHAIN if relay_ids is None else len(relay_ids),
            _FROM_CHAIN if remote_ids is None else len(remote_ids),
        )
        + (relay_ids or b"")
        + (remote_ids or b"")
        + options
    )


def _rebuild_bindings_v2(connection: sqlite3.Connection) -> None:
    """
    Schema version 2: the bindings table holds fewer, denser columns (each column read
    costs), and each chain's Remote-ID values leave C{relay} for C{relay_remote}.
    """
    connection.execute(
        """CREATE TABLE bindings_v2 (
            link_id TEXT NOT NULL, duid BLOB NOT NULL, expires INTEGER NOT NULL,
            leases BLOB NOT NULL, relay BLOB, relay_remote BLOB, extra BLOB,
            PRIMARY KEY (link_id, duid)) WITHOUT ROWID"""
    )
    after: tuple[Any, ...] = ("", b"")
    while True:
        rows = connection.execute(
            "SELECT link_id, duid, cltt, expires, addresses, prefixes, relay, relay_ids, "
            "remote_ids, options FROM bindings WHERE (link_id, duid) > (?, ?) "
            "ORDER BY link_id, duid LIMIT 10000",
            after,
        ).fetchall()
        if not rows:
            break
        connection.executemany(
            "INSERT INTO bindings_v2 VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    link_id,
                    duid,
                    expires,
                    _leases_column(cltt, addresses, prefixes),
                    *((None, None) if relay is None else _split_remote_ids(relay)),
                    _extra_column(relay_ids, remote_ids, options),
                )
                for (
                    link_id,
                    duid,
                    cltt,
                    expires,
                    addresses,
                    prefixes,
                    relay,
                    relay_ids,
                    remote_ids,
                    options,
                ) in rows
            ],
        )
        after = rows[-1][:2]
    connection.execute("DROP TABLE bindings")
    connection.execute("ALTER TABLE bindings_v2 RENAME TO bindings")
    connection.execute("CREATE INDEX bindings_by_duid ON bindings (duid, link_id)")


_MIGRATIONS[2] = (_rebuild_bindings_v2,)
#: Entries kept in C{change_log}: every 1024th entry deletes those this far behind it (the
#: figure is written in the trigger of schema version 3).
CHANGE_LOG_KEPT = 200_000
#: Seconds after which a listener that stopped refreshing its C{change_listeners} row (a
#: server that crashed) is forgotten, so that writes stop being logged for it (likewise).
LISTENER_STALE = 600
#: The database's Unix time, in SQL (the triggers' clock, whichever process writes).
_NOW = "CAST(strftime('%s', 'now') AS INTEGER)"

#: Version 3, for Active Leasequery (RFC 7653):
#:  - bindings by expiry time (the rows' primary key comes with each entry), so that the
#:    expiry sweep finds the bindings that ran out since its previous run with one index
#:    range scan;
#:  - C{change_log}, written by triggers on C{bindings} while C{change_listeners} has a row
#:    (a server with Active Leasequery runs), whoever writes (another process, the
#:    C{sqlite3} shell): the key of each row inserted, or deleted with its columns as they
#:    were; bounded to about C{CHANGE_LOG_KEPT} entries by a trigger that also forgets
#:    stale listeners. When nobody listens each write costs one lookup in an empty table.
_MIGRATIONS[3] = (
    """CREATE INDEX bindings_by_expires ON bindings (expires)""",
    """CREATE TABLE change_listeners (
        listener TEXT PRIMARY KEY, seen INTEGER NOT NULL) WITHOUT ROWID""",
    """CREATE TABLE change_log (
        serial INTEGER PRIMARY KEY AUTOINCREMENT, link_id TEXT NOT NULL, duid BLOB NOT NULL,
        old_leases BLOB, old_relay BLOB, old_relay_remote BLOB, old_extra BLOB)""",
    """CREATE TRIGGER bindings_log_insert AFTER INSERT ON bindings
        WHEN EXISTS (SELECT 1 FROM change_listeners)
        BEGIN
            INSERT INTO change_log (link_id, duid) VALUES (NEW.link_id, NEW.duid);
        END""",
    """CREATE TRIGGER bindings_log_delete AFTER DELETE ON bindings
        WHEN EXISTS (SELECT 1 FROM change_listeners)
        BEGIN
            INSERT INTO change_log (link_id, duid, old_leases, old_relay, old_relay_remote,
                old_extra)
            VALUES (OLD.link_id, OLD.duid, OLD.leases, OLD.relay, OLD.relay_remote,
                OLD.extra);
        END""",
    """CREATE TRIGGER bindings_log_update AFTER UPDATE ON bindings
        WHEN EXISTS (SELECT 1 FROM change_listeners)
        BEGIN
            INSERT INTO change_log (link_id, duid, old_leases, old_relay, old_relay_remote,
                old_extra)
            SELECT OLD.link_id, OLD.duid, OLD.leases, OLD.relay, OLD.relay_remote, OLD.extra
            WHERE OLD.link_id IS NOT NEW.link_id OR OLD.duid IS NOT NEW.duid;
            INSERT INTO change_log (link_id, duid) VALUES (NEW.link_id, NEW.duid);
        END""",
    """CREATE TRIGGER change_log_pruned AFTER INSERT ON change_log
        WHEN NEW.serial % 1024 = 0
        BEGIN
            DELETE FROM change_log WHERE serial <= NEW.serial - 200000;
            DELETE FROM change_listeners
            WHERE seen < CAST(strftime('%s', 'now') AS INTEGER) - 600;
        END""",
)

#: Bindings read per expiry query: a sweep that finds more reads them page by page.
EXPIRY_BATCH = 10_000
#: Entries of C{change_log} read per query.
CHANGE_LOG_BATCH = 10_000


def _row_of(binding: Binding) -> tuple[Any, ...]:
    chain_relay_ids, chain_remote_ids = relay_identities(binding.relay_data)
    relay, relay_remote = (
        (None, None) if binding.relay_data is None else _encode_relay(binding.relay_data)
    )
    return (
        binding.link_id,
        binding.client_id.raw,
        binding.expires_at(),
        _leases_column(
            binding.cltt,
            b"".join(
                _LEASE.pack(a.address.packed, a.preferred_lifetime, a.valid_lifetime)
                for a in binding.addresses
            ),
            b"".join(
                _PREFIX.pack(
                    p.prefix.network_address.packed,
                    p.prefix.prefixlen,
                    p.preferred_lifetime,
                    p.valid_lifetime,
                )
                for p in binding.prefixes
            ),
        ),
        relay,
        relay_remote,
        _extra_column(
            # None: the ids are those found in the chain (the usual case).
            None
            if binding.relay_ids == chain_relay_ids
            else _pack_ids(duid.raw for duid in binding.relay_ids),
            None
            if binding.remote_ids == chain_remote_ids
            else _pack_ids(_remote_id_bytes(remote_id) for remote_id in binding.remote_ids),
            encode_options(binding.options),
        ),
    )


_set_binding = set_binding
_set_address_lease = set_address_lease
_set_relay = set_relay_message
_set_relay_data = set_relay_data
_set_duid_raw = set_duid_raw
_set_remote = set_remote_id
_REMOTE_ID_CODE = RemoteId.code
_RELAY_ID_CODE = RelayId.code
_RELAY_FORW = MessageType.RELAY_FORW


def _duid(raw: bytes) -> Duid:
    duid = new(Duid)
    _set_duid_raw(duid, raw)
    return duid


def _remote_id(enterprise_number: int, value: bytes) -> RemoteId:
    remote_id = new(RemoteId)
    set_enterprise, set_value = _set_remote
    set_enterprise(remote_id, enterprise_number)
    set_value(remote_id, value)
    return remote_id


def _relay_message(
    hop_count: int, link: IPv6Address, peer: IPv6Address, options: tuple[Option, ...]
) -> RelayMessage:
    set_type, set_hops, set_link, set_peer, set_options = _set_relay
    message = new(RelayMessage)
    set_type(message, _RELAY_FORW)
    set_hops(message, hop_count)
    set_link(message, link)
    set_peer(message, peer)
    set_options(message, options)
    return message


def _lq_relay_data(peer: IPv6Address, message: RelayMessage) -> LQRelayData:
    set_peer, set_message = _set_relay_data
    relay_data = new(LQRelayData)
    set_peer(relay_data, peer)
    set_message(relay_data, message)
    return relay_data


#: A hop of a relay plan: hop-count, link-address, peer-address, RELAY_MSG position, its
#: options other than RELAY_MSG and REMOTE_ID, and its Remote-IDs' (position, enterprise).
_PlanHop = tuple[int, IPv6Address, IPv6Address, int, tuple[Option, ...], list[tuple[int, int]]]

# Plan kinds (the first item of a plan tuple).
#: (_SHARED, relay_data, relay_ids): no Remote-ID, so every binding shares one value.
_SHARED = 0
#: (_ONE_REMOTE, relay_ids, enterprise, options before, options after, hop-count, link,
#: peer, peer address): one hop with one Remote-ID (the usual chain).
_ONE_REMOTE = 1
#: (_GENERAL, relay_ids, peer address, hops): anything else.
_GENERAL = 2


class _Decoder:
    """
    Rebuilds L{Binding}s from rows. Everything stored was validated when it was a Binding,
    so values are built without re-validation (as the codec's own decoders do), and the
    values that repeat across bindings (relay addresses, options, Relay-IDs, whole relay
    chains but their Remote-IDs) are decoded once and shared through bounded caches.
    """

    _LIMIT = 65536

    def __init__(self) -> None:
        self._addresses: dict[bytes, IPv6Address] = {}
        self._tlvs: dict[bytes, Option] = {}
        self._options: dict[bytes, tuple[tuple[Option, ...], tuple[Duid, ...]]] = {}
        self._plans: dict[bytes, tuple[Any, ...]] = {}
        self._ids: dict[bytes, tuple[Duid, ...]] = {}

    @staticmethod
    def _cached(cache: dict[bytes, _T], key: bytes, make: Callable[[bytes], _T]) -> _T:
        found = cache.get(key)
        if found is None:
            if len(cache) >= _Decoder._LIMIT:
                cache.clear()
            found = cache[key] = make(key)
        return found

    def _address(self, packed: bytes) -> IPv6Address:
        return self._cached(self._addresses, packed, ipv6_from_packed)

    def _decode_option(self, tlv: bytes) -> Option:
        if (tlv[0] << 8) | tlv[1] == _REMOTE_ID_CODE:  # no validation: stored values
            return _remote_id(int.from_bytes(tlv[4:8], "big"), tlv[8:])
        return decode_options(tlv, 0, len(tlv), 0)[0]

    def _split(self, data: bytes) -> tuple[tuple[Option, ...], tuple[Duid, ...]]:
        options: list[Option] = []
        relay_ids: list[Duid] = []
        offset = 0
        while offset < len(data):
            stop = offset + 4 + ((data[offset + 2] << 8) | data[offset + 3])
            option = self._cached(self._tlvs, data[offset:stop], self._decode_option)
            if isinstance(option, RelayId):
                relay_ids.append(option.duid)
            options.append(option)
            offset = stop
        return tuple(options), tuple(relay_ids)

    def options(self, data: bytes) -> tuple[Option, ...]:
        """Decoded options, each shared between equal encodings."""
        if not data:
            return ()
        return self._cached(self._options, data, self._split)[0]

    def _plan(self, relay: bytes) -> tuple[Any, ...]:
        """The plan for building the chains of a C{relay} column (see the plan kinds)."""
        hops: list[_PlanHop] = []
        relay_ids: tuple[Duid, ...] = ()
        offset = 16
        while offset < len(relay):
            hop_count, link, peer, position, length, count = _HOP.unpack_from(relay, offset)
            offset += _HOP_SIZE
            options, hop_relay_ids = (
                self._cached(self._options, relay[offset : offset + length], self._split)
                if length
                else ((), ())
            )
            offset += length
            slots = [_REMOTE_SLOT.unpack_from(relay, offset + n * _SLOT_SIZE) for n in range(count)]
            offset += count * _SLOT_SIZE
            relay_ids += hop_relay_ids
            hops.append(
                (hop_count, self._address(link), self._address(peer), position, options, slots)
            )
        peer_address = self._address(relay[:16])
        if not any(hop[5] for hop in hops):
            relay_data, _ = self._build(peer_address, hops, [])
            return (_SHARED, relay_data, relay_ids)
        if len(hops) == 1 and len(hops[0][5]) == 1:
            hop_count, link_address, peer, _, options, ((index, enterprise),) = hops[0]
            return (
                _ONE_REMOTE,
                relay_ids,
                enterprise,
                options[:index],
                options[index:],
                hop_count,
                link_address,
                peer,
                peer_address,
            )
        return (_GENERAL, relay_ids, peer_address, hops)

    @staticmethod
    def _build(
        peer_address: IPv6Address, hops: list[_PlanHop], values: list[bytes]
    ) -> tuple[LQRelayData, tuple[RemoteId, ...]]:
        """The chain of C{hops} with the Remote-ID C{values} (outermost first) put back."""
        remote_ids: list[RemoteId] = []
        per_hop: list[list[RemoteId]] = []
        taken = 0
        for hop in hops:
            slots = hop[5]
            found = [
                _remote_id(enterprise, value)
                for (_, enterprise), value in zip(
                    slots, values[taken : taken + len(slots)], strict=True
                )
            ]
            taken += len(slots)
            per_hop.append(found)
            remote_ids.extend(found)
        chain: RelayMessage | None = None
        for (hop_count, link, peer, position, options, slots), found in zip(
            reversed(hops), reversed(per_hop), strict=True
        ):
            merged = list(options)
            for (index, _), remote_id in zip(slots, found, strict=True):
                merged.insert(index, remote_id)
            if chain is not None and position != _NO_RELAY_MSG:
                merged.insert(position, RelayMessageOption(chain))
            chain = _relay_message(hop_count, link, peer, tuple(merged))
        assert chain is not None  # a stored chain has at least one hop
        return _lq_relay_data(peer_address, chain), tuple(remote_ids)

    def _general(
        self, plan: tuple[Any, ...], remote: bytes | None
    ) -> tuple[LQRelayData, tuple[Duid, ...], tuple[RemoteId, ...]]:
        _, relay_ids, peer_address, hops = plan
        count = sum(len(hop[5]) for hop in hops)
        if remote is None:
            values = []
        elif count == 1:
            values = [remote]
        else:
            values = _unpack_ids(remote)
        relay_data, remote_ids = self._build(peer_address, hops, values)
        return relay_data, relay_ids, remote_ids

    def _relay_ids(self, data: bytes) -> tuple[Duid, ...]:
        return self._cached(
            self._ids, data, lambda key: tuple(_duid(raw) for raw in _unpack_ids(key))
        )

    @staticmethod
    def _leases(data: bytes) -> tuple[int, tuple[AddressLease, ...], tuple[PrefixLease, ...]]:
        """The cltt, addresses and prefixes of a C{leases} column, any shape."""
        cltt, count = _LEASES_HEADER.unpack_from(data)
        middle = _LEASES_HEADER.size + count * _LEASE_SIZE
        return (
            cltt,
            tuple(
                AddressLease(ipv6_address(int.from_bytes(packed, "big")), preferred, valid)
                for packed, preferred, valid in _LEASE.iter_unpack(
                    data[_LEASES_HEADER.size : middle]
                )
            ),
            tuple(
                PrefixLease(ipv6_network(int.from_bytes(packed, "big"), length), preferred, valid)
                for packed, length, preferred, valid in _PREFIX.iter_unpack(data[middle:])
            ),
        )

    def _extra(
        self, data: bytes, relay_ids: tuple[Duid, ...], remote_ids: tuple[RemoteId, ...]
    ) -> tuple[tuple[Duid, ...], tuple[RemoteId, ...], tuple[Option, ...]]:
        """
        The Relay-IDs, Remote-IDs and client options of an C{extra} column; C{relay_ids}
        and C{remote_ids} (the chain's) unless it holds others.
        """
        relay_length, remote_length = _EXTRA_HEADER.unpack_from(data)
        offset = _EXTRA_HEADER.size
        if relay_length != _FROM_CHAIN:
            relay_ids = self._relay_ids(data[offset : offset + relay_length])
            offset += relay_length
        if remote_length != _FROM_CHAIN:
            remote_ids = tuple(
                _remote_id(int.from_bytes(raw[:4], "big"), raw[4:])
                for raw in _unpack_ids(data[offset : offset + remote_length])
            )
            offset += remote_length
        return relay_ids, remote_ids, self.options(data[offset:])

    def binding(self, row: Sequence[Any]) -> Binding:
        """The L{Binding} of a row of C{_COLUMNS}."""
        return next(self.iterate((row,)))

    def bindings(self, rows: Iterable[Sequence[Any]]) -> list[Binding]:
        """The L{Binding}s of rows of C{_COLUMNS}, in order."""
        return list(self.iterate(rows))

    def iterate(self, rows: Iterable[Sequence[Any]]) -> Iterator[Binding]:
        """
        The L{Binding}s of rows of C{_COLUMNS}, in order, each built when it is reached.
        One loop with everything it uses in local variables: this is where a streamed query
        spends its time.
        """
        plans = self._plans
        plan_of = self._plan
        cached = self._cached
        new_ = new
        ipv6 = ipv6_address
        one_address = _ONE_ADDRESS.unpack
        one_address_size = _ONE_ADDRESS.size
        set_client, set_link, set_cltt, set_addresses, set_prefixes = _set_binding[:5]
        set_relay_data, set_relay_ids, set_remote_ids, set_options = _set_binding[5:]
        set_address, set_preferred, set_valid = _set_address_lease
        set_raw = _set_duid_raw
        set_enterprise, set_value = _set_remote
        set_type, set_hops, set_link_address, set_peer_address, set_hop_options = _set_relay
        set_data_peer, set_data_message = _set_relay_data
        relay_forw = _RELAY_FORW
        one_remote = _ONE_REMOTE
        shared = _SHARED
        binding_type, lease_type, duid_type = Binding, AddressLease, Duid
        remote_type, message_type, data_type = RemoteId, RelayMessage, LQRelayData
        for link_id, duid, leases, relay, remote, extra in rows:
            binding = new_(binding_type)
            if len(leases) == one_address_size:  # the usual: one address, no prefix
                cltt, _, high, low, preferred, valid = one_address(leases)
                lease = new_(lease_type)
                set_address(lease, ipv6((high << 64) | low))
                set_preferred(lease, preferred)
                set_valid(lease, valid)
                set_addresses(binding, (lease,))
                set_prefixes(binding, ())
            else:
                cltt, addresses, prefixes = self._leases(leases)
                set_addresses(binding, addresses)
                set_prefixes(binding, prefixes)
            if relay is None:
                set_relay_data(binding, None)
                relay_ids: tuple[Duid, ...] = ()
                remote_ids: tuple[RemoteId, ...] = ()
            else:
                plan = plans.get(relay)
                if plan is None:
                    plan = cached(plans, relay, plan_of)
                kind = plan[0]
                if kind == one_remote:
                    (
                        _,
                        relay_ids,
                        enterprise,
                        before,
                        after,
                        hop_count,
                        link_address,
                        peer_address,
                        data_peer,
                    ) = plan
                    remote_id = new_(remote_type)
                    set_enterprise(remote_id, enterprise)
                    set_value(remote_id, remote)
                    message = new_(message_type)
                    set_type(message, relay_forw)
                    set_hops(message, hop_count)
                    set_link_address(message, link_address)
                    set_peer_address(message, peer_address)
                    set_hop_options(message, (*before, remote_id, *after))
                    relay_data = new_(data_type)
                    set_data_peer(relay_data, data_peer)
                    set_data_message(relay_data, message)
                    set_relay_data(binding, relay_data)
                    remote_ids = (remote_id,)
                elif kind == shared:
                    set_relay_data(binding, plan[1])
                    relay_ids = plan[2]
                    remote_ids = ()
                else:
                    relay_data, relay_ids, remote_ids = self._general(plan, remote)
                    set_relay_data(binding, relay_data)
            client_id = new_(duid_type)
            set_raw(client_id, duid)
            set_client(binding, client_id)
            set_link(binding, link_id)
            set_cltt(binding, cltt)
            if extra is None:
                set_relay_ids(binding, relay_ids)
                set_remote_ids(binding, remote_ids)
                set_options(binding, ())
            else:
                relay_ids, remote_ids, options = self._extra(extra, relay_ids, remote_ids)
                set_relay_ids(binding, relay_ids)
                set_remote_ids(binding, remote_ids)
                set_options(binding, options)
            yield binding


class SQLiteDatabase:
    """
    One connection to a bulklq SQLite database, synchronous; use it from one thread at a
    time. Opening creates or migrates the schema.

    @raise SQLiteStoreError: if the file cannot be opened, is not a bulklq database, or
        has a newer schema version.
    """

    def __init__(self, path: str, *, timeout: float = 30.0) -> None:
        self.path = path
        try:
            self._connection = sqlite3.connect(
                path, timeout=timeout, isolation_level=None, check_same_thread=False
            )
            self._connection.execute("PRAGMA journal_mode=WAL")
            self._connection.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
        except sqlite3.Error as error:
            raise SQLiteStoreError(f"sqlite database {path}: {error}") from None
        self._decoder = _Decoder()
        #: Whether write transactions note the C{change_log} serials they produce.
        self.track_serials = False
        self._own_serials: list[tuple[int, int]] = []

    # Schema

    def _version(self) -> int:
        execute = self._connection.execute
        tables = {row[0] for row in execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "schema_version" not in tables:
            if tables:
                raise SQLiteStoreError(
                    f"sqlite database {self.path} is not a bulklq database (it has tables "
                    "but no schema_version)"
                )
            return 0
        row = execute("SELECT MAX(version) FROM schema_version").fetchone()
        return int(row[0] or 0)

    def _migrate(self) -> None:
        execute = self._connection.execute
        version = self._version()
        if version > SCHEMA_VERSION:
            raise SQLiteStoreError(
                f"sqlite database {self.path} has schema version {version}, newer than this "
                f"bulklq supports ({SCHEMA_VERSION}); upgrade bulklq"
            )
        if version == SCHEMA_VERSION:
            return
        execute("BEGIN IMMEDIATE")
        try:
            version = self._version()  # another process may have migrated meanwhile
            if version == 0:
                execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for step in _MIGRATIONS[target]:
                    if isinstance(step, str):
                        execute(step)
                    else:
                        step(self._connection)
                execute("INSERT INTO schema_version (version) VALUES (?)", (target,))
            execute("COMMIT")
        except BaseException:
            execute("ROLLBACK")
            raise

    def schema_version(self) -> int:
        """The database's schema version."""
        return self._version()

    def close(self) -> None:
        """Close the connection."""
        self._connection.close()

    # Writes

    def _transaction(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        connection = self._connection
        connection.execute("BEGIN IMMEDIATE")
        track = self.track_serials
        try:
            before = self._log_serial() if track else 0
            result = work(connection)
            after = self._log_serial() if track else 0
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")
        if after > before:
            self._own_serials.append((before, after))
        return result

    # The change log (Active Leasequery: writes by other processes)

    def _log_serial(self) -> int:
        """The last serial C{change_log} gave (0 if none)."""
        row = self._connection.execute(
            "SELECT seq FROM sqlite_sequence WHERE name = 'change_log'"
        ).fetchone()
        return 0 if row is None else int(row[0])

    def take_own_serials(self) -> list[tuple[int, int]]:
        """
        The C{change_log} serials this connection's committed writes produced since the
        previous call, as ranges (after, last] (only while L{track_serials} is set).
        """
        found, self._own_serials = self._own_serials, []
        return found

    def listen(self, listener: str) -> int:
        """
        Register (or refresh) C{listener} in C{change_listeners}, so that every write to
        the bindings is logged from now on; the last serial logged before.
        """

        def work(connection: sqlite3.Connection) -> int:
            connection.execute(
                f"INSERT OR REPLACE INTO change_listeners (listener, seen) VALUES (?, {_NOW})",  # noqa: S608
                (listener,),
            )
            return self._log_serial()

        return self._transaction(work)

    def unlisten(self, listener: str) -> None:
        """
        Forget C{listener}: with no listener left, writes are no longer logged (and the
        log is emptied: a listener starts from the last serial when it registers).
        """

        def work(connection: sqlite3.Connection) -> None:
            connection.execute("DELETE FROM change_listeners WHERE listener = ?", (listener,))
            if connection.execute("SELECT 1 FROM change_listeners LIMIT 1").fetchone() is None:
                connection.execute("DELETE FROM change_log")

        self._transaction(work)

    def logged_changes(
        self, after: int, limit: int = CHANGE_LOG_BATCH
    ) -> tuple[list[tuple[int, BindingKey, Binding | None, Binding | None]], int | None]:
        """
        The C{change_log} entries after serial C{after} (at most C{limit}), in order: each
        its serial, key, the binding deleted (C{None} for an insertion) and the binding now
        under the key (C{None} if none), read in one statement (one snapshot); and the
        first serial still logged when entries after C{after} were pruned before being
        read (C{None} otherwise).
        """
        connection = self._connection
        rows = connection.execute(
            "SELECT c.serial, c.link_id, c.duid, c.old_leases, c.old_relay, "
            "c.old_relay_remote, c.old_extra, b.leases, b.relay, b.relay_remote, b.extra "
            "FROM change_log c LEFT JOIN bindings b "
            "ON b.link_id = c.link_id AND b.duid = c.duid "
            "WHERE c.serial > ? ORDER BY c.serial LIMIT ?",
            (after, limit),
        ).fetchall()
        missing: int | None = None
        if rows and rows[0][0] > after + 1:
            # Serials are consecutive unless entries were pruned (or a statement failed
            # after the trigger ran, which rolls the serial back too): check the head.
            head = connection.execute("SELECT MIN(serial) FROM change_log").fetchone()[0]
            if head is not None and head > after + 1 and after < self._log_serial():
                missing = int(head)
        binding = self._decoder.binding
        found: list[tuple[int, BindingKey, Binding | None, Binding | None]] = []
        for serial, link_id, duid, o_leases, o_relay, o_remote, o_extra, *now in rows:
            old = (
                None
                if o_leases is None
                else binding((link_id, duid, o_leases, o_relay, o_remote, o_extra))
            )
            current = None if now[0] is None else binding((link_id, duid, *now))
            found.append((serial, (link_id, duid), old, current))
        return found, missing

    def add_links(self, links: Iterable[Link]) -> None:
        """Insert or replace C{links} (and their prefixes)."""

        def work(connection: sqlite3.Connection) -> None:
            for link in links:
                connection.execute("DELETE FROM link_prefixes WHERE link_id = ?", (link.link_id,))
                connection.execute(
                    "INSERT OR IGNORE INTO links (link_id) VALUES (?)", (link.link_id,)
                )
                connection.executemany(
                    "INSERT OR REPLACE INTO link_prefixes (length, network, link_id, position) "
                    "VALUES (?, ?, ?, ?)",
                    [
                        (p.prefixlen, p.network_address.packed, link.link_id, position)
                        for position, p in enumerate(link.prefixes)
                    ],
                )

        self._transaction(work)

    def remove_link(self, link_id: str) -> bool:
        """Delete a link (its bindings stay); whether it existed."""

        def work(connection: sqlite3.Connection) -> bool:
            connection.execute("DELETE FROM link_prefixes WHERE link_id = ?", (link_id,))
            return (
                connection.execute("DELETE FROM links WHERE link_id = ?", (link_id,)).rowcount > 0
            )

        return self._transaction(work)

    def _unindex(self, connection: sqlite3.Connection, key: BindingKey) -> Binding | None:
        """Delete the binding with C{key} and its index rows; the binding deleted, or C{None}."""
        row = connection.execute(
            f"SELECT {_COLUMNS} FROM bindings WHERE link_id = ? AND duid = ?",  # noqa: S608
            key,
        ).fetchone()
        if row is None:
            return None
        old = self._decoder.binding(row)
        link_id, duid = key
        connection.executemany(
            "DELETE FROM addresses WHERE address = ? AND link_id = ? AND duid = ?",
            [(lease.address.packed, link_id, duid) for lease in old.addresses],
        )
        connection.executemany(
            "DELETE FROM prefixes WHERE length = ? AND network = ? AND link_id = ? AND duid = ?",
            [
                (p.prefix.prefixlen, p.prefix.network_address.packed, link_id, duid)
                for p in old.prefixes
            ],
        )
        connection.executemany(
            "DELETE FROM relay_ids WHERE relay_id = ? AND link_id = ? AND duid = ?",
            [(relay_id.raw, link_id, duid) for relay_id in set(old.relay_ids)],
        )
        connection.executemany(
            "DELETE FROM remote_ids WHERE remote_id = ? AND link_id = ? AND duid = ?",
            [(_remote_id_bytes(remote_id), link_id, duid) for remote_id in set(old.remote_ids)],
        )
        connection.execute("DELETE FROM bindings WHERE link_id = ? AND duid = ?", key)
        return old

    def _unindex_many(self, connection: sqlite3.Connection, keys: Sequence[BindingKey]) -> None:
        """
        L{_unindex} for many keys with a few statements: the old rows read by one join per
        C{_KEYS_PER_SELECT} keys, each index table's rows deleted by one C{executemany}.
        """
        if len(keys) == 1:
            self._unindex(connection, keys[0])
            return
        rows: list[Any] = []
        for start in range(0, len(keys), _KEYS_PER_SELECT):
            chunk = keys[start : start + _KEYS_PER_SELECT]
            rows.extend(
                connection.execute(
                    f"SELECT {_JOINED_COLUMNS} FROM (VALUES "  # noqa: S608 - constants and placeholders only
                    + ", ".join(["(?, ?)"] * len(chunk))
                    + ") AS k CROSS JOIN bindings b "
                    "ON b.link_id = k.column1 AND b.duid = k.column2",
                    [value for key in chunk for value in key],
                ).fetchall()
            )
        if not rows:
            return
        addresses: list[tuple[Any, ...]] = []
        prefixes: list[tuple[Any, ...]] = []
        relay_ids: list[tuple[Any, ...]] = []
        remote_ids: list[tuple[Any, ...]] = []
        found: list[BindingKey] = []
        for old in self._decoder.iterate(rows):
            key = old.key
            found.append(key)
            addresses.extend((lease.address.packed, *key) for lease in old.addresses)
            prefixes.extend(
                (p.prefix.prefixlen, p.prefix.network_address.packed, *key) for p in old.prefixes
            )
            relay_ids.extend((relay_id.raw, *key) for relay_id in set(old.relay_ids))
            remote_ids.extend(
                (_remote_id_bytes(remote_id), *key) for remote_id in set(old.remote_ids)
            )
        executemany = connection.executemany
        executemany(
            "DELETE FROM addresses WHERE address = ? AND link_id = ? AND duid = ?", addresses
        )
        executemany(
            "DELETE FROM prefixes WHERE length = ? AND network = ? AND link_id = ? AND duid = ?",
            prefixes,
        )
        executemany(
            "DELETE FROM relay_ids WHERE relay_id = ? AND link_id = ? AND duid = ?", relay_ids
        )
        executemany(
            "DELETE FROM remote_ids WHERE remote_id = ? AND link_id = ? AND duid = ?",
            remote_ids,
        )
        executemany("DELETE FROM bindings WHERE link_id = ? AND duid = ?", found)

    @staticmethod
    def _insert(connection: sqlite3.Connection, bindings: Iterable[Binding]) -> int:
        rows = []
        addresses: list[tuple[Any, ...]] = []
        prefixes: list[tuple[Any, ...]] = []
        relay_ids: list[tuple[Any, ...]] = []
        remote_ids: list[tuple[Any, ...]] = []
        for binding in bindings:
            key = binding.key
            rows.append(_row_of(binding))
            addresses.extend((a.address.packed, *key) for a in binding.addresses)
            prefixes.extend(
                (p.prefix.prefixlen, p.prefix.network_address.packed, *key)
                for p in binding.prefixes
            )
            relay_ids.extend((relay_id.raw, *key) for relay_id in set(binding.relay_ids))
            remote_ids.extend(
                (_remote_id_bytes(remote_id), *key) for remote_id in set(binding.remote_ids)
            )
        connection.executemany(
            "INSERT INTO bindings (link_id, duid, expires, leases, relay, relay_remote, extra) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        connection.executemany(
            "INSERT OR IGNORE INTO addresses (address, link_id, duid) VALUES (?, ?, ?)",
            addresses,
        )
        connection.executemany(
            "INSERT OR IGNORE INTO prefixes (length, network, link_id, duid) VALUES (?, ?, ?, ?)",
            prefixes,
        )
        connection.executemany(
            "INSERT OR IGNORE INTO relay_ids (relay_id, link_id, duid) VALUES (?, ?, ?)",
            relay_ids,
        )
        connection.executemany(
            "INSERT OR IGNORE INTO remote_ids (remote_id, link_id, duid) VALUES (?, ?, ?)",
            remote_ids,
        )
        return len(rows)

    def put_many(
        self,
        bindings: Iterable[Binding],
        batch: int = 10_000,
        committed: Callable[[list[Binding]], object] | None = None,
    ) -> int:
        """
        Insert or replace each binding (the last wins for a repeated key), committing every
        C{batch} bindings; returns how many were written.

        @param committed: called with the bindings of each transaction once it committed
            (so, if a later batch fails, with those that were written).
        """
        total = 0
        pending: dict[BindingKey, Binding] = {}

        def flush(connection: sqlite3.Connection) -> int:
            self._unindex_many(connection, list(pending))
            return self._insert(connection, pending.values())

        for binding in bindings:
            pending[binding.key] = binding
            if len(pending) >= batch:
                total += self._transaction(flush)
                if committed is not None:
                    committed(list(pending.values()))
                pending = {}
        if pending:
            total += self._transaction(flush)
            if committed is not None:
                committed(list(pending.values()))
        return total

    def put(self, binding: Binding) -> None:
        """Insert C{binding}, or replace the binding with its key."""
        self.put_many([binding])

    def apply(self, writes: Sequence[tuple[bool, Any]]) -> list[Any]:
        """
        Several writes in one transaction, in order: C{(True, bindings)} inserts or replaces
        the bindings (the last wins for a repeated key; its result is how many distinct
        keys), C{(False, key)} deletes a binding (its result is the binding deleted, or
        C{None}). Consecutive insertions are written together. All or nothing.
        """

        def work(connection: sqlite3.Connection) -> list[Any]:
            results: list[Any] = []
            pending: dict[BindingKey, Binding] = {}

            def flush() -> None:
                self._unindex_many(connection, list(pending))
                self._insert(connection, pending.values())
                pending.clear()

            for insert, value in writes:
                if insert:
                    keys = {binding.key: binding for binding in value}
                    pending.update(keys)
                    results.append(len(keys))
                else:
                    if pending:
                        flush()
                    results.append(self._unindex(connection, value))
            if pending:
                flush()
            return results

        return self._transaction(work)

    def remove(self, key: BindingKey) -> bool:
        """Delete the binding with C{key}; whether there was one."""
        return self.pop(key) is not None

    def pop(self, key: BindingKey) -> Binding | None:
        """
        Delete the binding with C{key}; the binding deleted (read in the deleting
        transaction), or C{None} if there was none.
        """
        return self._transaction(lambda connection: self._unindex(connection, key))

    def expired(
        self,
        after: int,
        until: int,
        limit: int = EXPIRY_BATCH,
        resume: tuple[int, str, bytes] | None = None,
    ) -> tuple[list[Binding], tuple[int, str, bytes] | None]:
        """
        The bindings whose last lease ends in (C{after}, C{until}] (Unix seconds), ordered
        by that time then key: one page of at most C{limit}, read by one range scan of the
        C{bindings_by_expires} index, and where the next page starts (pass it as
        C{resume}), or C{None} after the last.
        """
        start = (after + 1, "", b"") if resume is None else resume
        rows = self._connection.execute(
            f"SELECT expires, {_COLUMNS} FROM bindings "  # noqa: S608 - module constants only
            "WHERE (expires, link_id, duid) > (?, ?, ?) AND expires <= ? "
            "ORDER BY expires, link_id, duid LIMIT ?",
            (*start, until, limit),
        ).fetchall()
        found = self._decoder.bindings([row[1:] for row in rows])
        if len(rows) < limit:
            return found, None
        last = rows[-1]
        return found, (last[0], last[1], last[2])

    # Reads

    def get(self, key: BindingKey) -> Binding | None:
        """The binding with C{key}, or C{None}."""
        row = self._connection.execute(
            f"SELECT {_COLUMNS} FROM bindings WHERE link_id = ? AND duid = ?",  # noqa: S608
            key,
        ).fetchone()
        return None if row is None else self._decoder.binding(row)

    def bindings(self, batch: int = 1000) -> Iterator[Binding]:
        """Every binding, expired ones included, in key order (keyset-paged)."""
        after: BindingKey = ("", b"")
        while True:
            rows = self._connection.execute(
                f"SELECT {_COLUMNS} FROM bindings WHERE (link_id, duid) > (?, ?) "  # noqa: S608 - only module constants are interpolated
                "ORDER BY link_id, duid LIMIT ?",
                (*after, batch),
            ).fetchall()
            yield from self._decoder.iterate(rows)
            if len(rows) < batch:
                return
            after = (rows[-1][0], rows[-1][1])

    def links(self) -> list[Link]:
        """Every link, ordered by id."""
        rows = self._connection.execute(
            "SELECT l.link_id, p.length, p.network FROM links l "
            "LEFT JOIN link_prefixes p ON p.link_id = l.link_id "
            "ORDER BY l.link_id, p.position"
        ).fetchall()
        prefixes: dict[str, list[IPv6Network]] = {}
        for link_id, length, network in rows:
            found = prefixes.setdefault(link_id, [])
            if network is not None:
                found.append(IPv6Network((int.from_bytes(network, "big"), length)))
        return [Link(link_id, tuple(found)) for link_id, found in prefixes.items()]

    def get_link(self, link_id: str) -> Link | None:
        """The link with id C{link_id}, or C{None}."""
        execute = self._connection.execute
        if execute("SELECT 1 FROM links WHERE link_id = ?", (link_id,)).fetchone() is None:
            return None
        rows = execute(
            "SELECT length, network FROM link_prefixes WHERE link_id = ? ORDER BY position",
            (link_id,),
        ).fetchall()
        return Link(
            link_id,
            tuple(
                IPv6Network((int.from_bytes(network, "big"), length)) for length, network in rows
            ),
        )

    def find_link(self, address: IPv6Address) -> Link | None:
        """The link with the longest prefix containing C{address}, or C{None}."""
        execute = self._connection.execute
        value = int(address)
        lengths = [row[0] for row in execute("SELECT DISTINCT length FROM link_prefixes")]
        for length in sorted(lengths, reverse=True):
            network = (value & (_ALL_ONES ^ ((1 << (128 - length)) - 1))).to_bytes(16, "big")
            row = execute(
                "SELECT link_id FROM link_prefixes WHERE length = ? AND network = ?",
                (length, network),
            ).fetchone()
            if row is not None:
                return self.get_link(row[0])
        return None

    def stats(self) -> dict[str, int]:
        """Counts: bindings, links, addresses, prefixes, relay ids, remote ids, schema."""
        execute = self._connection.execute
        counts = {
            name: int(execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])  # noqa: S608
            for name, table in (
                ("bindings", "bindings"),
                ("links", "links"),
                ("addresses", "addresses"),
                ("prefixes", "prefixes"),
                ("relay_ids", "relay_ids"),
                ("remote_ids", "remote_ids"),
            )
        }
        counts["schema_version"] = self._version()
        return counts

    def fetch(
        self, query: BindingQuery, resume_after: BindingKey | None, limit: int, now: float
    ) -> BindingPage:
        """One page of L{IBindingStore.fetch}, with C{now} as the time."""
        rows, resume = self.fetch_rows(query, resume_after, limit, now)
        return BindingPage(self._decoder.bindings(rows), resume)

    def fetch_rows(
        self, query: BindingQuery, resume_after: BindingKey | None, limit: int, now: float
    ) -> tuple[list[Any], BindingKey | None]:
        """
        The rows (C{_COLUMNS}) of the page L{fetch} returns, and its C{resume_after}: one
        statement, so one read transaction. L{SQLiteBindingStore} builds the bindings
        later, when the server reaches them (see L{LazyBindings}).
        """
        if limit < 1:
            raise ValueError(f"page limit must be at least 1, not {limit}")
        after: BindingKey = ("", b"") if resume_after is None else resume_after
        link_id = query.link_id
        if link_id is not None:
            if after[0] > link_id:
                return [], None
            if after[0] < link_id:
                after = (link_id, b"")
        rows = self._select(query, after, limit + 1, int(now))
        if len(rows) <= limit:
            return rows, None
        del rows[limit:]
        last = rows[-1]
        return rows, (last[0], last[1])

    def _select(self, query: BindingQuery, after: BindingKey, count: int, now: int) -> list[Any]:
        execute = self._connection.execute
        link_id = query.link_id
        kind = query.kind
        if kind is QueryKind.LINK:
            return execute(
                f"SELECT {_COLUMNS} FROM bindings WHERE link_id = ? AND duid > ? "  # noqa: S608 - only module constants are interpolated
                "AND expires > ? ORDER BY link_id, duid LIMIT ?",
                (link_id, after[1], now, count),
            ).fetchall()
        if kind is QueryKind.CLIENT_ID:
            if query.client_id is None:
                return []
            restrict = "" if link_id is None else " AND link_id = :link"
            return execute(
                f"SELECT {_COLUMNS} FROM bindings WHERE duid = :value "  # noqa: S608 - only module constants are interpolated
                f"AND (link_id, duid) > (:after_link, :after_duid){restrict} AND expires > :now "
                "ORDER BY link_id, duid LIMIT :count",
                {
                    "value": query.client_id.raw,
                    "after_link": after[0],
                    "after_duid": after[1],
                    "link": link_id,
                    "now": now,
                    "count": count,
                },
            ).fetchall()
        if kind is QueryKind.ADDRESS:
            return self._select_address(query, after, count, now)
        if kind is QueryKind.RELAY_ID:
            if query.relay_id is None:
                return []
            table, column, value = "relay_ids", "relay_id", query.relay_id.raw
        else:
            if query.remote_id is None:
                return []
            table, column, value = "remote_ids", "remote_id", _remote_id_bytes(query.remote_id)
        restrict = "" if link_id is None else " AND i.link_id = :link"
        return execute(
            f"SELECT {', '.join('b.' + c for c in _COLUMNS.split(', '))} "  # noqa: S608
            f"FROM {table} i JOIN bindings b ON b.link_id = i.link_id AND b.duid = i.duid "
            f"WHERE i.{column} = :value AND (i.link_id, i.duid) > (:after_link, :after_duid)"
            f"{restrict} AND b.expires > :now ORDER BY i.link_id, i.duid LIMIT :count",
            {
                "value": value,
                "after_link": after[0],
                "after_duid": after[1],
                "link": link_id,
                "now": now,
                "count": count,
            },
        ).fetchall()

    def _select_address(
        self, query: BindingQuery, after: BindingKey, count: int, now: int
    ) -> list[Any]:
        if query.address is None:
            return []
        execute = self._connection.execute
        value = int(query.address)
        keys = set(
            execute(
                "SELECT link_id, duid FROM addresses WHERE address = ?", (query.address.packed,)
            ).fetchall()
        )
        for (length,) in execute("SELECT DISTINCT length FROM prefixes").fetchall():
            network = (value & (_ALL_ONES ^ ((1 << (128 - length)) - 1))).to_bytes(16, "big")
            keys.update(
                execute(
                    "SELECT link_id, duid FROM prefixes WHERE length = ? AND network = ?",
                    (length, network),
                ).fetchall()
            )
        rows = []
        for key in sorted(keys):
            if key <= after or (query.link_id is not None and key[0] != query.link_id):
                continue
            row = execute(
                f"SELECT {_COLUMNS} FROM bindings WHERE link_id = ? AND duid = ? AND expires > ?",  # noqa: S608 - only module constants are interpolated
                (*key, now),
            ).fetchone()
            if row is not None:
                rows.append(row)
                if len(rows) == count:
                    break
        return rows


#: A write queued by L{SQLiteBindingStore}: C{(True, bindings, committed)} inserts or
#: replaces bindings (C{committed} gets those whose transaction committed), C{(False, key,
#: unused)} deletes one.
_Write = tuple[bool, Any, list[Binding]]


@implementer(IBindingStore, IBindingChangeFeed)
class SQLiteBindingStore(HistoryFeed):
    """
    An L{IBindingStore} over an SQLite database, every statement run in a thread pool the
    store owns (each pool thread has its own connection), so the reactor never waits on the
    disk. The write methods (C{put}, C{put_many}, C{remove}, C{add_link}, C{remove_link})
    also run in the pool and return Deferreds; the binding writes (C{put}, C{put_many},
    C{remove}) run one at a time (SQLite has one writer at a time anyway), in the order they
    were called, while queries run beside them.

    It is also an L{IBindingChangeFeed} (Active Leasequery, RFC 7653): C{put}, C{put_many}
    and C{remove} publish every binding written, or removed (as it was), to L{changes} after
    the transaction committed and before the write's Deferred fires; a write that fails
    publishes only the transactions that committed (C{put_many} commits in batches). The
    time of a change is the clock's when it is published. Publishing costs nothing until
    somebody subscribes or history is kept. Expiries, and the writes other processes make
    to the file, are published by the L{SQLiteSweep} of L{expiry_publisher}, which the
    service runs (see L{listen} and L{publish_logged}).

    @param path: the database file (created with the schema if missing).
    @param reactor: runs the thread pool's results back on the reactor thread.
    @param clock: the time source for the active-binding filter (Unix seconds); the reactor
        when C{None}.
    @param threads: the most threads (connections) used at once.
    @raise SQLiteStoreError: if the database cannot be used.

    @ivar changes: the change history (L{ChangeHistory}); set its C{window} /
        C{max_changes} to configure it.
    """

    name = "sqlite"

    def __init__(
        self,
        path: str,
        reactor: IReactorThreads,
        clock: IReactorTime | None = None,
        threads: int = 4,
    ) -> None:
        self.path = path
        SQLiteDatabase(path).close()  # create or migrate now, and fail early
        self._reactor = reactor
        self._clock: IReactorTime = clock if clock is not None else reactor  # type: ignore[assignment]
        self._local = threading.local()
        self._lock = threading.Lock()
        self._databases: list[SQLiteDatabase] = []
        self._pool = ThreadPool(minthreads=0, maxthreads=threads, name=f"bulklq-sqlite {path}")
        self._pool.start()
        self._closed = False
        self.changes = ChangeHistory(self._clock)
        # Writes (and expiry sweeps) one at a time: changes are published in commit order.
        self._writes = DeferredLock()
        # Writes waiting for the pool (see _write), and whether a drain is queued.
        self._pending: list[tuple[_Write, Any, Deferred[Any]]] = []
        self._drain_queued = False
        # The change log (writes by other processes): this store's listener id while it
        # listens, the last serial read, and the serials of its own writes not yet read.
        self._listener: str | None = None
        self._log_after = 0
        self._own_serials: list[tuple[int, int]] = []
        # Builds the bindings of the pages handed out, in the thread that reads them (the
        # reactor's): the pool threads' connections have their own decoders.
        self._decoder = _Decoder()
        # Pool threads are not daemons: stop them when the reactor stops, even unclosed.
        self._trigger = None
        if IReactorCore.providedBy(reactor):
            self._trigger = reactor.addSystemEventTrigger("during", "shutdown", self._atShutdown)

    def _database(self) -> SQLiteDatabase:
        database: SQLiteDatabase | None = getattr(self._local, "database", None)
        if database is None:
            database = self._local.database = SQLiteDatabase(self.path)
            with self._lock:
                self._databases.append(database)
        return database

    def _run(self, work: Callable[[SQLiteDatabase], _T]) -> Deferred[_T]:
        if self._closed:
            from twisted.internet import defer  # noqa: PLC0415

            return defer.fail(SQLiteStoreError(f"sqlite store {self.path} is closed"))
        return deferToThreadPool(self._reactor, self._pool, lambda: work(self._database()))

    def _write(self, write: _Write, publish: Callable[[bool, Any], object]) -> Deferred[Any]:
        """
        Queue C{write}; it runs in the pool after the writes queued before it, and
        C{publish(succeeded, result or failure)} is called on the reactor thread after it
        committed (or failed), before its Deferred fires and before any later write or sweep
        is published.

        The writes queued while others run go to the pool together and, up to
        C{GROUP_COMMIT} bindings, commit as one transaction (L{SQLiteDatabase.apply}):
        under load, a burst of writes costs one thread hand-off and one commit. If that
        transaction fails, they are run again one by one, so that only the failing write
        fails.
        """
        if self._closed:
            return fail(SQLiteStoreError(f"sqlite store {self.path} is closed"))
        done: Deferred[Any] = Deferred()
        self._pending.append((write, publish, done))
        if not self._drain_queued:
            self._drain_queued = True
            self._writes.run(self._drain)
        return done

    #: The most bindings the writes queued together may hold to commit as one transaction.
    GROUP_COMMIT = 10_000

    def _drain(self) -> Deferred[None]:
        """Run the writes queued so far as one pool job (holding the write lock)."""
        batch, self._pending = self._pending, []
        self._drain_queued = False
        writes = [write for write, _, _ in batch]

        def one(database: SQLiteDatabase, write: _Write) -> Any:
            insert, value, committed = write
            if not insert:
                return database.pop(value)
            return database.put_many(value, committed=committed.extend)

        def together(database: SQLiteDatabase) -> list[tuple[bool, Any]] | None:
            """The writes as one transaction; C{None} if it failed (rolled back)."""
            try:
                results = database.apply([(insert, value) for insert, value, _ in writes])
            except Exception as error:
                _log.debug("grouped writes failed ({error}): one by one", error=error)
                return None
            for insert, value, committed in writes:
                if insert:
                    committed.extend({binding.key: binding for binding in value}.values())
            return [(True, result) for result in results]

        def job(database: SQLiteDatabase) -> list[tuple[bool, Any]]:
            database.track_serials = self._listener is not None
            try:
                size = sum(len(value) if insert else 1 for insert, value, _ in writes)
                if len(writes) > 1 and size <= self.GROUP_COMMIT:
                    grouped = together(database)
                    if grouped is not None:
                        return grouped
                found: list[tuple[bool, Any]] = []
                for write in writes:
                    try:
                        found.append((True, one(database, write)))
                    except Exception:
                        found.append((False, Failure()))
                return found
            finally:
                # Noted under the write lock, which the log's poll holds too.
                self._own_serials.extend(database.take_own_serials())

        def finished(results: list[tuple[bool, Any]]) -> None:
            for (_, publish, done), (succeeded, value) in zip(batch, results, strict=True):
                try:
                    publish(succeeded, value)
                except Exception:
                    _log.failure("sqlite store {path}: publishing a change failed", path=self.path)
                if succeeded:
                    done.callback(value)
                else:
                    done.errback(value)

        def failed(failure: Failure) -> None:  # the job never ran (the store was closed)
            for _, _, done in batch:
                done.errback(failure)

        return self._run(job).addCallbacks(finished, failed)

    @property
    def closed(self) -> bool:
        """Whether L{close} was called."""
        return self._closed

    # IBindingStore

    def fetch(
        self, query: BindingQuery, resume_after: BindingKey | None, limit: int
    ) -> Deferred[BindingPage]:
        """The next page, read in a pool thread (see L{IBindingStore.fetch})."""
        now = self._clock.seconds()
        iterate = self._decoder.iterate

        def page(result: tuple[list[Any], BindingKey | None]) -> BindingPage:
            rows, resume = result
            return BindingPage(LazyBindings(rows, iterate), resume)

        return self._run(
            lambda database: database.fetch_rows(query, resume_after, limit, now)
        ).addCallback(page)

    def find_link(self, address: IPv6Address) -> Deferred[Link | None]:
        """The link with the longest prefix containing C{address}, or C{None}."""
        return self._run(lambda database: database.find_link(address))

    def get_link(self, link_id: str) -> Deferred[Link | None]:
        """The link with id C{link_id}, or C{None}."""
        return self._run(lambda database: database.get_link(link_id))

    def _atShutdown(self) -> Deferred[None]:
        # The reactor removed the trigger to call it: removing it again would raise.
        self._trigger = None
        return self.close()

    def close(self) -> Deferred[None]:
        """
        Stop accepting work, let queued statements finish, stop the pool and close every
        connection. Idempotent.
        """
        from twisted.internet import defer  # noqa: PLC0415

        if self._closed:
            return defer.succeed(None)
        self._closed = True
        if self._trigger is not None:
            self._reactor.removeSystemEventTrigger(self._trigger)  # type: ignore[attr-defined]
            self._trigger = None
        listener, self._listener = self._listener, None
        if listener is not None:  # other processes' writes need no longer be logged
            self._pool.callInThread(self._unlisten_now, listener)
        self._pool.stop()
        with self._lock:
            for database in self._databases:
                database.close()
            self._databases.clear()
        return defer.succeed(None)

    # Writes

    def put(self, binding: Binding) -> Deferred[None]:
        """Insert C{binding} or replace the binding with its key; published once committed."""
        changes = self.changes

        def publish(succeeded: bool, _: object) -> None:
            if succeeded and changes.active:
                changes.publish(binding)

        return self._write((True, [binding], []), publish).addCallback(lambda _: None)

    def put_many(self, bindings: Iterable[Binding]) -> Deferred[int]:
        """
        Insert or replace every binding (the last wins for a repeated key); fires with how
        many were written. Each binding written is published once its batch committed,
        those of the batches that committed even when a later one fails.
        """
        changes = self.changes
        # Filled in the pool thread, read on the reactor thread once the work is done.
        committed: list[Binding] = []

        def publish(succeeded: bool, _: object) -> None:
            if changes.active:
                changes.publish_many(committed)
            committed.clear()

        return self._write((True, list(bindings), committed), publish)

    def remove(self, key: BindingKey) -> Deferred[bool]:
        """
        Delete the binding with C{key}; fires with whether there was one. The binding
        removed, as it was, is published once the deletion committed.
        """
        changes = self.changes

        def publish(succeeded: bool, old: Binding | None) -> None:
            if succeeded and old is not None and changes.active:
                changes.publish(old, removed=True)

        return self._write((False, key, []), publish).addCallback(lambda old: old is not None)

    # Writes by other processes (the change log)

    @property
    def listening(self) -> bool:
        """Whether writes to the file are logged for this store (L{listen})."""
        return self._listener is not None

    def listen(self) -> Deferred[None]:
        """
        Have every write to the file logged (by the triggers of C{change_log}), whichever
        process makes it, from now on, for L{publish_logged}; idempotent. Other processes'
        writes are published only while listening.
        """

        def locked() -> Deferred[None]:
            if self._listener is not None:
                return succeed(None)
            listener = f"{os.getpid()}-{uuid4().hex[:12]}"

            def listening(serial: int) -> None:
                self._listener = listener
                self._log_after = serial
                self._own_serials = []

            return self._run(lambda database: database.listen(listener)).addCallback(listening)

        return self._writes.run(locked)

    def refresh(self) -> Deferred[None]:
        """
        Tell other processes this store still listens (a listener not refreshed for
        C{LISTENER_STALE} seconds is forgotten); re-register if it was forgotten.
        """

        def locked() -> Deferred[None]:
            listener = self._listener
            if listener is None or self._closed:
                return succeed(None)
            return self._run(lambda database: database.listen(listener)).addCallback(lambda _: None)

        return self._writes.run(locked)

    def unlisten(self) -> Deferred[None]:
        """Stop having writes logged for this store (L{listen}); idempotent."""

        def locked() -> Deferred[None]:
            listener, self._listener = self._listener, None
            self._own_serials = []
            if listener is None or self._closed:
                return succeed(None)
            return self._run(lambda database: self._unlisten_now(listener, database))

        return self._writes.run(locked)

    def _unlisten_now(self, listener: str, database: SQLiteDatabase | None = None) -> None:
        try:
            (database or self._database()).unlisten(listener)
        except sqlite3.Error as error:
            _log.warn(
                "sqlite store {path}: cannot remove change listener {listener}: {error}",
                path=self.path,
                listener=listener,
                error=error,
            )

    def publish_logged(self, batch: int = CHANGE_LOG_BATCH) -> Deferred[int]:
        """
        Publish the writes other processes made since the previous call (read from
        C{change_log}, C{batch} entries a query, with this store's writes held off): for
        each binding they wrote, its state now (written, or removed as it was); fires with
        how many changes were published. Nothing while not L{listening}.

        Entries of this store's own writes are skipped (published when they committed).
        A binding written by both is published as it is now, after this store's change:
        the last change a requestor sees is the binding's state.
        """
        changes = self.changes

        async def poll() -> int:
            published = 0
            while self._listener is not None:
                after = self._log_after
                found, missing = await self._run(
                    partial(SQLiteDatabase.logged_changes, after=after, limit=batch)
                )
                if missing is not None:
                    _log.error(
                        "sqlite store {path}: change log entries {first} to {last} were "
                        "pruned before they were read; those writes by other processes "
                        "were not published to active requestors",
                        path=self.path,
                        first=after + 1,
                        last=missing - 1,
                    )
                if not found:
                    return published
                own = self._own_serials
                latest: dict[BindingKey, tuple[int, Binding | None, Binding | None]] = {}
                for serial, key, old, current in found:
                    while own and own[0][1] < serial:
                        own.pop(0)
                    if own and own[0][0] < serial:
                        continue  # this store's write: published already
                    previous = latest.pop(key, None)
                    removed = old if old is not None or previous is None else previous[1]
                    latest[key] = (serial, removed, current)
                self._log_after = found[-1][0]
                if changes.active:
                    for _, old, current in latest.values():
                        if current is not None:
                            changes.publish(current)
                            published += 1
                        elif old is not None:
                            changes.publish(old, removed=True)
                            published += 1
                if len(found) < batch:
                    return published
            return published

        return self._writes.run(lambda: Deferred.fromCoroutine(poll()))

    # Expiry (RFC 7653 section 9.3)

    def expiry_publisher(self, interval: float = DEFAULT_EXPIRY_INTERVAL) -> SQLiteSweep:
        """
        An L{SQLiteSweep} (not started) publishing, every C{interval} seconds of the
        store's clock, the writes of other processes and the bindings that expired since
        its previous sweep (as removals).
        """
        return SQLiteSweep(self, self._clock, interval)

    def publish_expired(self, after: int, until: int, batch: int = EXPIRY_BATCH) -> Deferred[int]:
        """
        Publish as removals the bindings whose last lease ends in (C{after}, C{until}] (Unix
        seconds), read page by page (C{batch} a page) with the writes held off, so that a
        write and an expiry of one binding are published in the order they happened; fires
        with how many were published.
        """
        changes = self.changes

        async def sweep() -> int:
            count = 0
            resume: tuple[int, str, bytes] | None = None
            while True:
                found, resume = await self._run(
                    partial(
                        SQLiteDatabase.expired, after=after, until=until, limit=batch, resume=resume
                    )
                )
                if changes.active:
                    for binding in found:
                        changes.publish(binding, removed=True)
                count += len(found)
                if resume is None:
                    return count

        return self._writes.run(lambda: Deferred.fromCoroutine(sweep()))

    def add_link(self, link: Link) -> Deferred[None]:
        """Insert C{link} or replace the link with its id."""
        return self._run(lambda database: database.add_links([link]))

    def remove_link(self, link_id: str) -> Deferred[bool]:
        """Delete the link C{link_id} (its bindings stay)."""
        return self._run(lambda database: database.remove_link(link_id))


class SQLiteSweep:
    """
    The periodic half of an L{SQLiteBindingStore}'s change feed, every C{interval} seconds
    of C{clock}: publishes the writes other processes made to the file (from the change
    log, L{SQLiteBindingStore.publish_logged}), then, as removals, the bindings whose last
    lease ran out while nothing wrote them (RFC 7653 section 9.3: an expired binding is
    sent to active requestors like a removed one).

    The expiry part asks the database for the bindings whose expiry time (whole seconds)
    fell in (previous sweep, now]: one range scan of the C{bindings_by_expires} index in a
    pool thread, nothing held in memory between sweeps, nothing read when nobody listens.
    The first sweep covers the time since L{start} (bindings expired before were not in the
    history either). A change is published at most C{interval} seconds (plus the query)
    late; its time is the sweep's. A sweep that fails is logged and what it should have
    published is tried again by the next one.

    It satisfies L{ExpiryPublisher<bulklq.changes.ExpiryPublisher>}:
    L{BulkLeasequeryService<bulklq.service.BulkLeasequeryService>} starts and stops it
    (starting registers the store as a listener of the change log, stopping removes it).

    @param other_writers: whether to publish the writes of other processes too.
    """

    log = Logger()

    #: Seconds between two refreshes of the store's C{change_listeners} row.
    REFRESH = 60.0

    def __init__(
        self,
        store: SQLiteBindingStore,
        clock: IReactorTime,
        interval: float = DEFAULT_EXPIRY_INTERVAL,
        batch: int = EXPIRY_BATCH,
        *,
        other_writers: bool = True,
    ) -> None:
        if not interval > 0:
            raise ValueError("the expiry sweep interval must be positive")
        self.store = store
        self.clock = clock
        self.interval = interval
        self.batch = batch
        self.other_writers = other_writers
        self._loop: LoopingCall | None = None
        self._refreshed = 0.0
        #: Unix second up to which expiries were published (set by L{start}).
        self.swept_until: int | None = None
        #: Expiries published so far.
        self.published = 0
        #: Changes made by other processes published so far.
        self.published_logged = 0

    @property
    def running(self) -> bool:
        """Whether the sweep is started."""
        return self._loop is not None

    def start(self) -> None:
        """Listen to the change log, sweep every C{interval} seconds from now on; idempotent."""
        if self._loop is not None:
            return
        self.swept_until = int(self.clock.seconds())
        if self.other_writers:
            self._refreshed = self.clock.seconds()
            self.store.listen().addErrback(self._failed, "listening to the change log")
        loop = LoopingCall(self.sweep)
        loop.clock = self.clock
        self._loop = loop
        loop.start(self.interval, now=False).addErrback(self._failed, "the sweep")

    def stop(self) -> None:
        """
        Stop sweeping (a sweep under way still publishes what it reads) and stop listening
        to the change log; idempotent.
        """
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()
        if loop is not None and self.other_writers:
            self.store.unlisten().addErrback(self._failed, "leaving the change log")

    def _failed(self, failure: Any, what: str) -> None:
        self.log.failure(
            "sqlite store {path}: {what} failed", failure, path=self.store.path, what=what
        )

    def sweep(self) -> Deferred[int]:
        """
        Publish the other processes' writes, then the bindings that expired since the
        previous sweep; fires with how many changes were published.
        """
        store = self.store
        if store.closed:
            return succeed(0)
        if not self.other_writers or not store.listening:
            return self._expire()
        if self.clock.seconds() - self._refreshed >= self.REFRESH:
            self._refreshed = self.clock.seconds()
            store.refresh().addErrback(self._failed, "refreshing the change listener")

        def logged(count: int) -> Deferred[int]:
            self.published_logged += count
            return self._expire().addCallback(lambda expired: count + expired)

        def failed(failure: Any) -> Deferred[int]:
            self._failed(failure, "reading the change log")
            return self._expire()

        return store.publish_logged().addCallbacks(logged, failed)

    def _expire(self) -> Deferred[int]:
        """Publish the bindings that expired since the previous sweep; how many."""
        now = int(self.clock.seconds())
        after = self.swept_until
        if after is None:  # never started: nothing before now is promised
            self.swept_until = now
            return succeed(0)
        if now <= after or self.store.closed:
            return succeed(0)
        self.swept_until = now
        if not self.store.changes.active:
            return succeed(0)  # nobody listens and no history is kept

        def done(count: int) -> int:
            self.published += count
            return count

        def failed(failure: Any) -> int:
            self._failed(failure, "the expiry sweep")
            if self.swept_until == now:
                self.swept_until = after  # the next sweep tries this window again
            return 0

        return self.store.publish_expired(after, now, self.batch).addCallbacks(done, failed)


def open_store_uri(uri: str, reactor: Any) -> SQLiteBindingStore:
    """
    Open C{sqlite:PATH[?threads=N]}: the database at C{PATH}, created if missing.

    @raise ValueError: for a malformed URI, or a database that cannot be used.
    """
    from . import StoreURIError, split_store_uri  # noqa: PLC0415

    path, options = split_store_uri(uri, "sqlite", {"threads"})
    if not path:
        raise StoreURIError(
            "sqlite: needs the database's path (sqlite:/var/lib/bulklq/bindings.db)"
        )
    threads = 4
    if "threads" in options:
        text = options["threads"]
        if not text.isdigit() or not 1 <= int(text) <= 64:
            raise StoreURIError("sqlite: threads must be a whole number from 1 to 64")
        threads = int(text)
    return SQLiteBindingStore(path, reactor, threads=threads)
