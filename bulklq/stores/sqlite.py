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
in a thread pool the store owns, so a slow query never blocks the reactor.

The schema is versioned (table C{schema_version}); L{SQLiteDatabase} migrates older databases
forward and refuses one written by a newer bulklq.
"""

from __future__ import annotations

import sqlite3
import struct
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from ipaddress import IPv6Address, IPv6Network
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorCore, IReactorThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from ..interfaces import IBindingStore
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
from ..wire._fast import ipv6_from_packed, new, slot_setters

__all__ = [
    "SCHEMA_VERSION",
    "SQLiteBindingStore",
    "SQLiteDatabase",
    "SQLiteStoreError",
    "open_store_uri",
]

_log = Logger()
_T = TypeVar("_T")

#: The schema version this bulklq writes.
SCHEMA_VERSION = 1

#: Statements that bring a database from version N-1 to N, by N.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
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
# builds values directly, caching the small values that repeat across bindings.

_LEASE = struct.Struct("!16sII")
_PREFIX = struct.Struct("!16sBII")
_HOP = struct.Struct("!B16s16sHHB")
_REMOTE = struct.Struct("!HH")
_HOP_SIZE = _HOP.size
_LEASE_SIZE = _LEASE.size
_unpack_lease = _LEASE.unpack
_unpack_hop = _HOP.unpack_from
_unpack_remote = _REMOTE.unpack_from
_NO_RELAY_MSG = 0xFFFF
_ALL_ONES = (1 << 128) - 1
_COLUMNS = "link_id, duid, cltt, addresses, prefixes, relay, relay_ids, remote_ids, options"


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


def _encode_relay(relay_data: LQRelayData) -> bytes:
    """
    The relay column: the peer address, then per hop (outermost first) its header, the
    position of its RELAY_MSG, its options other than REMOTE_ID and RELAY_MSG as one
    encoding (shared by every client behind the same relay port, so decoding caches it),
    and its REMOTE_IDs (per client) with their positions.
    """
    parts = [relay_data.peer_address.packed]
    for layer in relay_data.relay_message.layers():
        position = _NO_RELAY_MSG
        others: list[Option] = []
        remote_ids: list[tuple[int, RemoteId]] = []
        index = 0
        for option in layer.options:
            if isinstance(option, RelayMessageOption) and isinstance(option.message, RelayMessage):
                position = index
                continue
            if isinstance(option, RemoteId):
                remote_ids.append((index, option))
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
                len(remote_ids),
            )
        )
        parts.append(data)
        for index, remote_id in remote_ids:
            payload = _remote_id_bytes(remote_id)
            parts.append(_REMOTE.pack(index, len(payload)))
            parts.append(payload)
    return b"".join(parts)


def _row_of(binding: Binding) -> tuple[Any, ...]:
    chain_relay_ids, chain_remote_ids = relay_identities(binding.relay_data)
    return (
        binding.link_id,
        binding.client_id.raw,
        binding.cltt,
        binding.expires_at(),
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
        None if binding.relay_data is None else _encode_relay(binding.relay_data),
        # NULL: the ids are those found in the chain (the usual case).
        None
        if binding.relay_ids == chain_relay_ids
        else _pack_ids(duid.raw for duid in binding.relay_ids),
        None
        if binding.remote_ids == chain_remote_ids
        else _pack_ids(_remote_id_bytes(remote_id) for remote_id in binding.remote_ids),
        encode_options(binding.options),
    )


_set_binding = slot_setters(
    Binding,
    "client_id",
    "link_id",
    "cltt",
    "addresses",
    "prefixes",
    "relay_data",
    "relay_ids",
    "remote_ids",
    "options",
)
_set_address_lease = slot_setters(AddressLease, "address", "preferred_lifetime", "valid_lifetime")
_set_prefix_lease = slot_setters(PrefixLease, "prefix", "preferred_lifetime", "valid_lifetime")
_set_relay = slot_setters(
    RelayMessage, "msg_type", "hop_count", "link_address", "peer_address", "options"
)
_set_relay_data = slot_setters(LQRelayData, "peer_address", "relay_message")
_set_data_peer, _set_data_message = _set_relay_data
_new = new
(_set_duid_raw,) = slot_setters(Duid, "raw")
_set_remote = slot_setters(RemoteId, "enterprise_number", "remote_id")
_REMOTE_ID_CODE = RemoteId.code
_RELAY_ID_CODE = RelayId.code
_RELAY_FORW = MessageType.RELAY_FORW


def _duid(raw: bytes) -> Duid:
    duid = new(Duid)
    _set_duid_raw(duid, raw)
    return duid


def _remote_id(data: bytes) -> RemoteId:
    remote_id = new(RemoteId)
    set_enterprise, set_value = _set_remote
    set_enterprise(remote_id, int.from_bytes(data[:4], "big"))
    set_value(remote_id, data[4:])
    return remote_id


_HopOptions = tuple[tuple[Option, ...], tuple[Duid, ...], tuple[RemoteId, ...]]
_NO_OPTIONS: _HopOptions = ((), (), ())


class _Decoder:
    """
    Rebuilds L{Binding}s from rows. Everything stored was validated when it was a Binding,
    so values are built without re-validation (as the codec's own decoders do), and the
    values that repeat across bindings (relay addresses, options, Relay-IDs, Remote-IDs) are
    shared through bounded caches.
    """

    _LIMIT = 65536

    def __init__(self) -> None:
        self._addresses: dict[bytes, IPv6Address] = {}
        self._hops: dict[bytes, _HopOptions] = {}
        self._tlvs: dict[bytes, Option] = {}
        self._options: dict[bytes, tuple[Option, ...]] = {}
        self._ids: dict[bytes, tuple[Duid, ...]] = {}

    def _address(self, packed: bytes) -> IPv6Address:
        address = self._addresses.get(packed)
        if address is None:
            if len(self._addresses) >= self._LIMIT:
                self._addresses.clear()
            address = self._addresses[packed] = ipv6_from_packed(packed)
        return address

    def _split(self, data: bytes) -> _HopOptions:
        tlvs = self._tlvs
        if len(tlvs) >= self._LIMIT:
            tlvs.clear()
        options: list[Option] = []
        relay_ids: list[Duid] = []
        remote_ids: list[RemoteId] = []
        offset = 0
        end = len(data)
        while offset < end:
            code = (data[offset] << 8) | data[offset + 1]
            stop = offset + 4 + ((data[offset + 2] << 8) | data[offset + 3])
            tlv = data[offset:stop]
            option = tlvs.get(tlv)
            if option is None:
                if code == _REMOTE_ID_CODE:
                    option = _remote_id(data[offset + 4 : stop])
                else:
                    option = decode_options(tlv, 0, len(tlv), 0)[0]
                tlvs[tlv] = option
            if code == _REMOTE_ID_CODE:
                remote_ids.append(option)  # type: ignore[arg-type]
            elif code == _RELAY_ID_CODE:
                relay_ids.append(option.duid)  # type: ignore[attr-defined]
            options.append(option)
            offset = stop
        return tuple(options), tuple(relay_ids), tuple(remote_ids)

    def _hop(self, data: bytes) -> _HopOptions:
        found = self._hops.get(data)
        if found is None:
            if len(self._hops) >= self._LIMIT:
                self._hops.clear()
            found = self._hops[data] = self._split(data)
        return found

    def options(self, data: bytes) -> tuple[Option, ...]:
        """Decoded options, each shared between equal encodings."""
        if not data:
            return ()
        return self._hop(data)[0]

    def relay(self, data: bytes) -> tuple[LQRelayData, tuple[Duid, ...], tuple[RemoteId, ...]]:
        """
        The LQ_RELAY_DATA value of an encoded relay column, with the Relay-IDs and
        Remote-IDs of every hop, outermost first.
        """
        # The usual chain, one hop, takes a straight path.
        hop_count, link, peer, _, length, remote_count = _unpack_hop(data, 16)
        start = 16 + _HOP_SIZE
        offset = start + length
        if remote_count == 1:
            index, remote_length = _unpack_remote(data, offset)
            offset += 4 + remote_length
            if offset != len(data):
                return self._relay_chain(data)
            remote_id = _remote_id(data[offset - remote_length : offset])
            remote_ids: tuple[RemoteId, ...] = (remote_id,)
        elif remote_count == 0:
            if offset != len(data):
                return self._relay_chain(data)
            remote_ids = ()
        else:
            return self._relay_chain(data)
        if length:
            others = data[start : offset - (4 + remote_length if remote_count else 0)]
            found = self._hops.get(others)
            if found is None:
                found = self._hop(others)
            options, relay_ids, _ = found
        else:
            options, relay_ids, _ = _NO_OPTIONS
        if remote_ids:
            options = (*options[:index], remote_id, *options[index:])
        addresses = self._addresses
        chain = _new(RelayMessage)
        set_type, set_hops, set_link, set_peer, set_options = _set_relay
        set_type(chain, _RELAY_FORW)
        set_hops(chain, hop_count)
        set_link(chain, addresses.get(link) or self._address(link))
        set_peer(chain, addresses.get(peer) or self._address(peer))
        set_options(chain, options)
        relay_data = _new(LQRelayData)
        peer_address = data[:16]
        _set_data_peer(relay_data, addresses.get(peer_address) or self._address(peer_address))
        _set_data_message(relay_data, chain)
        return relay_data, relay_ids, remote_ids

    def _relay_chain(
        self, data: bytes
    ) -> tuple[LQRelayData, tuple[Duid, ...], tuple[RemoteId, ...]]:
        hops = []
        offset = 16
        size = _HOP.size
        end = len(data)
        unpack_hop = _HOP.unpack_from
        unpack_remote = _REMOTE.unpack_from
        while offset < end:
            hop_count, link, peer, position, length, remote_count = unpack_hop(data, offset)
            offset += size
            others = data[offset : offset + length]
            offset += length
            remotes = []
            for _ in range(remote_count):
                index, remote_length = unpack_remote(data, offset)
                offset += 4
                remotes.append((index, data[offset : offset + remote_length]))
                offset += remote_length
            hops.append((hop_count, link, peer, position, others, remotes))
        set_type, set_hops, set_link, set_peer, set_options = _set_relay
        address = self._address
        remote = _remote_id
        chain: RelayMessage | None = None
        relay_ids: tuple[Duid, ...] = ()
        remote_ids: tuple[RemoteId, ...] = ()
        for hop_count, link, peer, position, others, remotes in reversed(hops):
            options, hop_relay_ids, _ = self._hop(others) if others else _NO_OPTIONS
            if hop_relay_ids:
                relay_ids = hop_relay_ids + relay_ids
            if remotes:
                hop_remote_ids = []
                merged = list(options)
                for index, payload in remotes:
                    remote_id = remote(payload)
                    merged.insert(index, remote_id)
                    hop_remote_ids.append(remote_id)
                remote_ids = (*hop_remote_ids, *remote_ids)
                if chain is not None and position != _NO_RELAY_MSG:
                    merged.insert(position, RelayMessageOption(chain))
                options = tuple(merged)
            elif chain is not None and position != _NO_RELAY_MSG:
                options = (*options[:position], RelayMessageOption(chain), *options[position:])
            chain = new(RelayMessage)
            set_type(chain, _RELAY_FORW)
            set_hops(chain, hop_count)
            set_link(chain, address(link))
            set_peer(chain, address(peer))
            set_options(chain, options)
        relay_data = new(LQRelayData)
        set_data_peer, set_data_message = _set_relay_data
        set_data_peer(relay_data, address(data[:16]))
        set_data_message(relay_data, chain)
        return relay_data, relay_ids, remote_ids

    def _relay_ids(self, data: bytes) -> tuple[Duid, ...]:
        found = self._ids.get(data)
        if found is None:
            if len(self._ids) >= self._LIMIT:
                self._ids.clear()
            found = self._ids[data] = tuple(_duid(raw) for raw in _unpack_ids(data))
        return found

    def binding(self, row: Sequence[Any]) -> Binding:
        """The L{Binding} of a row of C{_COLUMNS}."""
        link_id, duid, cltt, addresses, prefixes, relay, relay_ids, remote_ids, options = row
        set_address, set_preferred, set_valid = _set_address_lease
        leases: tuple[AddressLease, ...] | list[AddressLease]
        if len(addresses) == _LEASE_SIZE:  # the usual: one address
            packed, preferred, valid = _unpack_lease(addresses)
            lease = _new(AddressLease)
            set_address(lease, ipv6_from_packed(packed))
            set_preferred(lease, preferred)
            set_valid(lease, valid)
            leases = (lease,)
        else:
            leases = []
            for packed, preferred, valid in _LEASE.iter_unpack(addresses):
                lease = _new(AddressLease)
                set_address(lease, ipv6_from_packed(packed))
                set_preferred(lease, preferred)
                set_valid(lease, valid)
                leases.append(lease)
        delegated = (
            tuple(
                PrefixLease(IPv6Network((int.from_bytes(packed, "big"), length)), preferred, valid)
                for packed, length, preferred, valid in _PREFIX.iter_unpack(prefixes)
            )
            if prefixes
            else ()
        )
        if relay is None:
            relay_data = None
            chain_relay_ids: tuple[Duid, ...] = ()
            chain_remote_ids: tuple[RemoteId, ...] = ()
        else:
            relay_data, chain_relay_ids, chain_remote_ids = self.relay(relay)
        binding = _new(Binding)
        (
            set_client,
            set_link,
            set_cltt,
            set_addresses,
            set_prefixes,
            set_relay_data,
            set_relay_ids,
            set_remote_ids,
            set_options,
        ) = _set_binding
        client_id = _new(Duid)
        _set_duid_raw(client_id, duid)
        set_client(binding, client_id)
        set_link(binding, link_id)
        set_cltt(binding, cltt)
        set_addresses(binding, leases if type(leases) is tuple else tuple(leases))
        set_prefixes(binding, delegated)
        set_relay_data(binding, relay_data)
        set_relay_ids(binding, chain_relay_ids if relay_ids is None else self._relay_ids(relay_ids))
        set_remote_ids(
            binding,
            chain_remote_ids
            if remote_ids is None
            else tuple(_remote_id(raw) for raw in _unpack_ids(remote_ids)),
        )
        set_options(binding, self.options(options) if options else ())
        return binding


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
                for statement in _MIGRATIONS[target]:
                    execute(statement)
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
        try:
            result = work(connection)
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")
        return result

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

    def _unindex(self, connection: sqlite3.Connection, key: BindingKey) -> bool:
        row = connection.execute(
            f"SELECT {_COLUMNS} FROM bindings WHERE link_id = ? AND duid = ?",  # noqa: S608
            key,
        ).fetchone()
        if row is None:
            return False
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
        return True

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
            "INSERT INTO bindings (link_id, duid, cltt, expires, addresses, prefixes, relay, "
            "relay_ids, remote_ids, options) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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

    def put_many(self, bindings: Iterable[Binding], batch: int = 10_000) -> int:
        """
        Insert or replace each binding (the last wins for a repeated key), committing every
        C{batch} bindings; returns how many were written.
        """
        total = 0
        pending: dict[BindingKey, Binding] = {}

        def flush(connection: sqlite3.Connection) -> int:
            for key in pending:
                self._unindex(connection, key)
            return self._insert(connection, pending.values())

        for binding in bindings:
            pending[binding.key] = binding
            if len(pending) >= batch:
                total += self._transaction(flush)
                pending = {}
        if pending:
            total += self._transaction(flush)
        return total

    def put(self, binding: Binding) -> None:
        """Insert C{binding}, or replace the binding with its key."""
        self.put_many([binding])

    def remove(self, key: BindingKey) -> bool:
        """Delete the binding with C{key}; whether there was one."""
        return self._transaction(lambda connection: self._unindex(connection, key))

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
            for row in rows:
                yield self._decoder.binding(row)
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
        if limit < 1:
            raise ValueError(f"page limit must be at least 1, not {limit}")
        after: BindingKey = ("", b"") if resume_after is None else resume_after
        link_id = query.link_id
        if link_id is not None:
            if after[0] > link_id:
                return BindingPage([], None)
            if after[0] < link_id:
                after = (link_id, b"")
        rows = self._select(query, after, limit + 1, int(now))
        decode = self._decoder.binding
        page = [decode(row) for row in rows[:limit]]
        more = len(rows) > limit
        return BindingPage(page, page[-1].key if more else None)

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


@implementer(IBindingStore)
class SQLiteBindingStore:
    """
    An L{IBindingStore} over an SQLite database, every statement run in a thread pool the
    store owns (each pool thread has its own connection), so the reactor never waits on the
    disk. The write methods (C{put}, C{put_many}, C{remove}, C{add_link}, C{remove_link})
    also run in the pool and return Deferreds.

    @param path: the database file (created with the schema if missing).
    @param reactor: runs the thread pool's results back on the reactor thread.
    @param clock: the time source for the active-binding filter (Unix seconds); the reactor
        when C{None}.
    @param threads: the most threads (connections) used at once.
    @raise SQLiteStoreError: if the database cannot be used.
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
        # Pool threads are not daemons: stop them when the reactor stops, even unclosed.
        self._trigger = None
        if IReactorCore.providedBy(reactor):
            self._trigger = reactor.addSystemEventTrigger("during", "shutdown", self.close)

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

    # IBindingStore

    def fetch(
        self, query: BindingQuery, resume_after: BindingKey | None, limit: int
    ) -> Deferred[BindingPage]:
        """The next page, read in a pool thread (see L{IBindingStore.fetch})."""
        now = self._clock.seconds()
        return self._run(lambda database: database.fetch(query, resume_after, limit, now))

    def find_link(self, address: IPv6Address) -> Deferred[Link | None]:
        """The link with the longest prefix containing C{address}, or C{None}."""
        return self._run(lambda database: database.find_link(address))

    def get_link(self, link_id: str) -> Deferred[Link | None]:
        """The link with id C{link_id}, or C{None}."""
        return self._run(lambda database: database.get_link(link_id))

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
        self._pool.stop()
        with self._lock:
            for database in self._databases:
                database.close()
            self._databases.clear()
        return defer.succeed(None)

    # Writes

    def put(self, binding: Binding) -> Deferred[None]:
        """Insert C{binding} or replace the binding with its key."""
        return self._run(lambda database: database.put(binding))

    def put_many(self, bindings: Iterable[Binding]) -> Deferred[int]:
        """Insert or replace every binding; fires with how many were written."""
        items = list(bindings)
        return self._run(lambda database: database.put_many(items))

    def remove(self, key: BindingKey) -> Deferred[bool]:
        """Delete the binding with C{key}; fires with whether there was one."""
        return self._run(lambda database: database.remove(key))

    def add_link(self, link: Link) -> Deferred[None]:
        """Insert C{link} or replace the link with its id."""
        return self._run(lambda database: database.add_links([link]))

    def remove_link(self, link_id: str) -> Deferred[bool]:
        """Delete the link C{link_id} (its bindings stay)."""
        return self._run(lambda database: database.remove_link(link_id))


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
