"""
L{PostgreSQLBindingStore}: bindings read live from ISC Kea's PostgreSQL lease database.

Kea keeps one row per lease in C{lease6}; a bulklq binding is every active lease (state 0,
C{expire} in the future) of one DUID in one subnet, so the store pages over distinct
C{(subnet_id, duid)} clients in L{Binding.key<bulklq.model.Binding.key>} order (link id
C{"subnet-N"} as text, then DUID octets) with keyset queries: no cursor lives between pages.
Rows become bindings through L{bulklq.stores.kea_leases}, shared with the memfile store.

B{Driver.} psycopg 3 on a Twisted thread pool, with a bounded C{psycopg_pool.ConnectionPool}
of the same size: it works under every reactor, keeps row decoding in psycopg's C code, and a
slow query occupies one worker thread, never the reactor. See C{docs/postgresql.md}.

B{Schemas.} The store reads the catalog once per connection pool generation: C{lease6.address}
is VARCHAR (Kea schema up to 17) or INET (18 and newer); C{lease6_relay_id} and
C{lease6_remote_id} (schema 17 and newer, C{lease_addr} BYTEA in 17-18, INET from 19) are used
for Relay-ID and Remote-ID queries when they exist and hold rows, else C{user_context} is
searched. The store only ever runs C{SELECT}.

B{Speed.} A Relay-ID or Remote-ID carried by many leases is answered from the matching
clients' sorted keys, read once when the query starts and kept for its next pages (see
L{SPARSE_THRESHOLD}). A worker thread only reads a page's rows: the page is a
L{LazyBindings<bulklq.stores._materialise.LazyBindings>} whose bindings are built when the
consumer (the server's encoder) reaches them, so each dies young. As soon as the worker
knows where its page ends it hands the next page's query to the thread pool
(L{READ_AHEAD}), so the database reads that page while this one is built and sent. A
query paged by key snapshot knows where each of its pages ends before reading it, so its
next L{SNAPSHOT_PARALLEL} pages are read at once on as many connections. With the key index
(C{bulklq_lease6_key}), such a query's first page does not wait for the snapshot: another
worker takes it while the first page is read by walking the index (L{_walk_sql}).
"""

from __future__ import annotations

import math
import threading
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import lru_cache, partial
from ipaddress import IPv6Address, IPv6Network
from socket import AF_INET6, inet_pton
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import attrs
import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolTimeout
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from .._trusted import set_address_lease, set_binding, set_duid_raw
from ..interfaces import IBindingStore
from ..model import AddressLease, Binding, BindingKey, BindingPage, BindingQuery, Link, QueryKind
from ..wire import Duid
from ..wire._fast import ipv6_from_packed, new
from ..wire.duid import duid_problem
from ._materialise import LazyBindings
from .kea_config import load_kea_config
from .kea_leases import (
    KeaLease6,
    KeaLeaseError,
    LeasePart,
    RelayInfo,
    assemble_binding,
    cached_relay_info,
    client_duid,
    client_link_address,
    lease_item,
    lease_relay_hops,
    relay_summary,
    subnet_link_id,
)

__all__ = [
    "LINK_PREFIX",
    "PostgreSQLBindingStore",
    "PostgreSQLSettings",
    "PostgreSQLStoreError",
    "open_store_uri",
    "parse_postgresql_uri",
]

_log = Logger()

#: Link ids of this store are C{LINK_PREFIX} followed by Kea's subnet id.
LINK_PREFIX = "subnet-"

#: The Relay-ID/Remote-ID tables are walked candidate-first when a value has fewer rows than
#: this; above it the store reads the matching clients' sorted keys once per query (kept in
#: a snapshot for the next pages) and each page reads its clients' leases.
SPARSE_THRESHOLD = 5000

#: Queries with many matches whose sorted client keys are kept between pages (each costs
#: about 100 octets per matching client).
SNAPSHOTS = 8

#: Pages read ahead at most at a time (over all the queries being streamed).
READ_AHEAD = 16
#: Pages of a query paged by key snapshot read ahead at a time, each on a connection of its
#: own (other queries read one page ahead): the database reads them in parallel while the
#: consumer builds the page before them. Pages are always served in order.
SNAPSHOT_PARALLEL = 2
#: Seconds after which a page read ahead is no longer served (it is read again).
AHEAD_MAX_AGE = 5.0
#: A page read by walking the key index while a key snapshot is taken walks at most this
#: many times its limit of leases.
WALK_MAX = 16

# Parameters of a postgresql:// URI that bulklq consumes; the rest go to libpq.
_OWN_PARAMETERS = frozenset(
    {"kea-config", "pool-size", "relay-tables", "statement-timeout", "connect-timeout"}
)


class PostgreSQLStoreError(Exception):
    """The lease database cannot answer (unreachable, schema not Kea's, permission denied)."""


def _positive_int(name: str, text: str, maximum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not an integer") from None
    if not 1 <= value <= maximum:
        raise ValueError(f"{name}={value} is not in 1..{maximum}")
    return value


@attrs.frozen
class PostgreSQLSettings:
    """
    How to reach and read Kea's lease database.

    @ivar conninfo: the libpq connection string (a C{postgresql://} URI without bulklq's own
        parameters).
    @ivar pool_size: connections (and worker threads) at most.
    @ivar relay_tables: C{"auto"} (use C{lease6_relay_id}/C{lease6_remote_id} when they exist
        and hold rows), C{"yes"} (when they exist) or C{"no"} (always search C{user_context}).
    @ivar statement_timeout: seconds one SQL statement may run before PostgreSQL cancels it.
    @ivar connect_timeout: seconds to wait for a connection from the pool.
    @ivar kea_config: path of Kea's DHCPv6 configuration file, for the subnets' prefixes.
    """

    conninfo: str
    pool_size: int = 4
    relay_tables: str = attrs.field(
        default="auto", validator=attrs.validators.in_(("auto", "yes", "no"))
    )
    statement_timeout: int = 30
    connect_timeout: int = 5
    kea_config: str | None = None


def parse_postgresql_uri(uri: str) -> PostgreSQLSettings:
    """
    Split a C{postgresql://} (or C{postgres://}) store URI into L{PostgreSQLSettings}.

    bulklq's parameters (C{kea-config}, C{pool-size}, C{relay-tables}, C{statement-timeout},
    C{connect-timeout}) are taken out; everything else (host, port, dbname, user, sslmode,
    ...) is libpq's.

    @raise ValueError: for another scheme or a bad parameter value.
    """
    parts = urlsplit(uri)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError(f"{uri!r} is not a postgresql:// URI")
    own: dict[str, str] = {}
    rest: list[tuple[str, str]] = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in _OWN_PARAMETERS:
            own[name] = value
        else:
            rest.append((name, value))
    # Built by hand: urlunsplit drops the empty authority of postgresql:///dbname.
    query = urlencode(rest)
    conninfo = f"postgresql://{parts.netloc}{parts.path}" + (f"?{query}" if query else "")
    kwargs: dict[str, Any] = {}
    if "pool-size" in own:
        kwargs["pool_size"] = _positive_int("pool-size", own["pool-size"], 64)
    if "statement-timeout" in own:
        kwargs["statement_timeout"] = _positive_int(
            "statement-timeout", own["statement-timeout"], 86400
        )
    if "connect-timeout" in own:
        kwargs["connect_timeout"] = _positive_int("connect-timeout", own["connect-timeout"], 600)
    if "relay-tables" in own:
        if own["relay-tables"] not in ("auto", "yes", "no"):
            raise ValueError(f"relay-tables={own['relay-tables']!r} is not auto, yes or no")
        kwargs["relay_tables"] = own["relay-tables"]
    if own.get("kea-config"):
        kwargs["kea_config"] = own["kea-config"]
    return PostgreSQLSettings(conninfo, **kwargs)


@attrs.frozen
class _Schema:
    """What the catalog says about Kea's tables (see the module docstring)."""

    address_inet: bool
    has_binaddr: bool
    relay_addr_type: str | None  # "inet", "bytea" or None (no table)
    remote_addr_type: str | None
    #: Whether C{lease6} has the index bulklq documents (C{bulklq_lease6_key}, any name):
    #: a walk in key order is then an index scan, else a sort of the table.
    key_index: bool = False

    def lease_address(self, alias: str) -> str:
        """SQL for the lease's address as text."""
        return f"host({alias}.address)" if self.address_inet else f"{alias}.address"

    def columns(self, alias: str) -> str:
        """SQL of the lease columns L{_row_lease} reads, from lease C{alias}."""
        a = alias
        # date_part, not EXTRACT: EXTRACT computes in numeric (PostgreSQL 14+), which costs
        # the server about a tenth of a page; Kea's expire times are whole seconds.
        return (
            f"{a}.subnet_id, {a}.duid, {self.lease_address(a)}, {a}.valid_lifetime, "
            f"date_part('epoch', {a}.expire)::bigint, {a}.pref_lifetime, {a}.lease_type, "
            f"{a}.iaid, {a}.prefix_len, {a}.state, {a}.user_context"
        )

    def address_array(self) -> str:
        """SQL type of an array parameter compared with C{lease6.address}."""
        return "inet[]" if self.address_inet else "varchar[]"

    def table_join(self, table: str, lease_alias: str) -> str:
        """SQL condition joining an extended-info table row C{t} to lease C{lease_alias}."""
        addr_type = self.relay_addr_type if table == "lease6_relay_id" else self.remote_addr_type
        if addr_type == "bytea" and self.has_binaddr:
            return f"t.lease_addr = {lease_alias}.binaddr"
        if addr_type == "bytea":
            # Schema 18: 16 octets against an INET (or VARCHAR) address.
            as_inet = (
                "regexp_replace(encode(t.lease_addr, 'hex'), '(.{4})(?!$)', '\\1:', 'g')::inet"
            )
        else:
            as_inet = "t.lease_addr"
        if self.address_inet:
            return f"{lease_alias}.address = {as_inet}"
        return f"{lease_alias}.address = host({as_inet})"


_SCHEMA_SQL = """
SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod)
FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
WHERE c.oid IN (to_regclass('lease6'), to_regclass('lease6_relay_id'),
                to_regclass('lease6_remote_id'))
  AND a.attnum > 0 AND NOT a.attisdropped
"""

# Whether lease6 has a valid index on the binding key (the one docs/postgresql.md gives).
_KEY_INDEX_SQL = """
SELECT EXISTS (
    SELECT 1 FROM pg_catalog.pg_index i
    WHERE i.indrelid = to_regclass('lease6') AND i.indisvalid AND i.indpred IS NULL
      AND strpos(pg_get_indexdef(i.indexrelid),
                 'USING btree (((subnet_id)::text) COLLATE "C", duid') > 0
)
"""


def _sk(a: str) -> str:
    """SQL for the sort key's first part: link id "subnet-N" orders as N's decimal text."""
    return f'({a}.subnet_id::text COLLATE "C")'


def _active(a: str) -> str:
    """SQL: lease C{a} is in use (state 0, valid lifetime left at the parameter C{now})."""
    return f"{a}.state = 0 AND {a}.valid_lifetime > 0 AND {a}.expire > to_timestamp(%(now)s)"


def _after(a: str) -> str:
    """SQL: lease C{a}'s client key comes after the resume key."""
    return f"({_sk(a)}, {a}.duid) > (%(rsk)s, %(rduid)s)"


def _order(a: str) -> str:
    """SQL: the binding key order (rows of one client come together)."""
    return f"ORDER BY {_sk(a)}, {a}.duid"


def _link_filter(a: str) -> str:
    """SQL: lease C{a} is on the link named by the parameter C{lsk} (subnet id text)."""
    return f" AND {_sk(a)} = %(lsk)s"


def _parse_address(text: str) -> IPv6Address:
    """An address column's text (VARCHAR, or INET through host()) as an address, fast."""
    try:
        return IPv6Address(int.from_bytes(inet_pton(AF_INET6, text), "big"))
    except OSError:
        raise KeaLeaseError(f"address {text!r} is not an IPv6 address") from None


def _row_lease(row: Sequence[Any]) -> KeaLease6:
    """
    The lease of one result row.

    @raise KeaLeaseError: for an address column that is not an IPv6 address.
    """
    # The first 11 columns are L{_Schema.columns}; a scan adds its C{hit} flag after them.
    (subnet_id, duid, address, valid, expire, preferred, lease_type, iaid, plen, state, ctx) = row[
        :11
    ]
    return KeaLease6(
        address=_parse_address(address),
        duid=bytes(duid) if duid is not None else b"",
        valid_lifetime=int(valid or 0),
        expire=int(expire or 0),
        subnet_id=int(subnet_id),
        pref_lifetime=int(preferred or 0),
        lease_type=int(lease_type or 0),
        iaid=int(iaid or 0),
        prefix_len=int(plen) if plen is not None else 128,
        state=int(state or 0),
        user_context=ctx,
    )


def _row_leases(rows: Iterable[Sequence[Any]]) -> list[KeaLease6]:
    """The leases of C{rows}; a row whose address is malformed is skipped with a warning."""
    leases = []
    for row in rows:
        try:
            leases.append(_row_lease(row))
        except KeaLeaseError as error:
            _log.warn("lease6 row skipped (subnet {subnet}): {error}", subnet=row[0], error=error)
    return leases


def _row_bindings(rows: Iterable[Sequence[Any]], now: float) -> tuple[list[Binding], int]:
    """
    The bindings of C{rows} (L{_Schema.columns} first), in no particular order, and how many
    active leases they hold: C{bindings_from_leases(_row_leases(rows), now)} without the
    intermediate lease objects. A malformed row is skipped with a warning.
    """
    groups: dict[tuple[int, bytes], list[LeasePart]] = {}
    duids: dict[bytes, Duid] = {}
    count = 0
    for row in rows:
        subnet_id, duid, address, valid, expire, preferred, lease_type, _, plen, state, ctx = row[
            :11
        ]
        if state or not valid or valid <= 0 or expire is None or expire <= now:
            continue
        try:
            packed = inet_pton(AF_INET6, address)
        except (OSError, TypeError, ValueError):
            _log.warn(
                "lease6 row skipped (subnet {subnet}): {error}",
                subnet=subnet_id,
                error=KeaLeaseError(f"address {address!r} is not an IPv6 address"),
            )
            continue
        octets = duid if type(duid) is bytes else bytes(duid or b"")
        try:
            if octets not in duids:
                duids[octets] = client_duid(octets)
            info = cached_relay_info(ctx)
            item = lease_item(
                ipv6_from_packed(packed),
                lease_type or 0,
                128 if plen is None else plen,
                preferred or 0,
                valid,
            )
        except KeaLeaseError as error:
            _log.warn(
                "lease6 row {address} (subnet {subnet}) skipped: {error}",
                address=address,
                subnet=subnet_id,
                error=str(error),
            )
            continue
        count += 1
        key = (subnet_id, octets)
        part = (item, expire - valid, info)
        group = groups.get(key)
        if group is None:
            groups[key] = [part]
        else:
            group.append(part)
    bindings = []
    links: dict[int, str] = {}
    for (subnet_id, octets), parts in groups.items():
        link_id = links.get(subnet_id)
        if link_id is None:
            link_id = links[subnet_id] = subnet_link_id(subnet_id)
        binding = assemble_binding(duids[octets], link_id, parts)
        if binding is not None:
            bindings.append(binding)
    return bindings, count


def _group_binding(rows: Sequence[Sequence[Any]], now: float) -> Binding | None:
    """The binding of the rows of one client (L{_row_bindings}), or C{None} if none is left."""
    bindings, _ = _row_bindings(rows, now)
    return bindings[0] if bindings else None


@lru_cache(maxsize=4096)
def _lazy_relay_info(user_context: str | None) -> RelayInfo:
    """
    L{cached_relay_info}'s value, computed by the faster L{relay_summary} (same checks,
    same errors) with the LQ_RELAY_DATA built only if something reads it: the server does
    only for a query whose ORO asks for it. Equal to L{cached_relay_info}'s either way.

    @raise KeaLeaseError: as L{cached_relay_info}.
    """
    return relay_summary(user_context).lazy_info()


def _info_filter(query: BindingQuery | None) -> Callable[[RelayInfo], bool] | None:
    """
    For a Relay-ID or Remote-ID query: whether a one-lease binding with this relay
    information matches (its ids are the information's), else C{None}.
    """
    if query is None:
        return None
    if query.kind is QueryKind.RELAY_ID:
        relay_id = query.relay_id
        return lambda info: relay_id in info.relay_ids
    if query.kind is QueryKind.REMOTE_ID:
        remote_id = query.remote_id
        return lambda info: remote_id in info.remote_ids
    return None


def _iterate_bindings(
    groups: Iterable[Sequence[Sequence[Any]]],
    now: float,
    query: BindingQuery | None,
) -> Iterator[Binding]:
    """
    The bindings of C{groups} (each the rows of one client, L{_Schema.columns} first), in
    order, each built when reached (a L{LazyBindings} page's C{iterate}): exactly what
    L{_row_bindings} builds, less those C{query} does not match (none left out for a link
    query, whose SQL selects exactly the link's clients, or without C{query}).

    The usual row, one active address lease, is built here without the intermediate
    objects, and for a Relay-ID or Remote-ID query checked once per distinct relay
    information; every other group (several leases, a prefix, a malformed row to skip with
    a warning) goes through L{_row_bindings} and L{BindingQuery.matches}.
    """
    check = None if query is None or query.kind is QueryKind.LINK else query.matches
    by_info = _info_filter(query)
    wanted_link = None if query is None else query.link_id
    # subnet id -> (link id, whether the query's link)
    links: dict[int, tuple[str, bool]] = {}
    # user_context -> (relay information, whether it matches): most clients share a few
    # contexts, and each text is hashed once here (the cache below hashes it again).
    infos: dict[str | None, tuple[RelayInfo, bool]] = {}
    relay_info = _lazy_relay_info
    pton = inet_pton
    family = AF_INET6
    from_packed = ipv6_from_packed
    problem = duid_problem
    new_ = new
    set_client, set_link, set_cltt, set_addresses, set_prefixes = set_binding[:5]
    set_relay_data, set_relay_ids, set_remote_ids, set_options = set_binding[5:]
    set_address, set_preferred, set_valid = set_address_lease
    set_raw = set_duid_raw
    for group in groups:
        if len(group) == 1:
            row = group[0]
            subnet_id, duid, address, valid, expire, preferred, lease_type, _, _, state, ctx = row[
                :11
            ]
            if (
                lease_type == 0
                and state == 0
                and type(valid) is int
                and valid > 0
                and type(expire) is int
                and expire > now
                and type(duid) is bytes
                and type(address) is str
                and problem(duid) is None
            ):
                known = infos.get(ctx)
                try:
                    packed = pton(family, address)
                    if known is None:
                        info = relay_info(ctx)
                        known = infos[ctx] = (info, by_info is None or by_info(info))
                except (OSError, ValueError):  # KeaLeaseError is a ValueError
                    pass  # the general path warns and skips
                else:
                    info, matching = known
                    link = links.get(subnet_id)
                    if link is None:
                        link_id = subnet_link_id(subnet_id)
                        link = links[subnet_id] = (
                            link_id,
                            wanted_link is None or link_id == wanted_link,
                        )
                    if by_info is not None and not (matching and link[1]):
                        continue
                    lease = new_(AddressLease)
                    set_address(lease, from_packed(packed))
                    set_preferred(lease, preferred or 0)
                    set_valid(lease, valid)
                    client = new_(Duid)
                    set_raw(client, duid)
                    binding = new_(Binding)
                    set_client(binding, client)
                    set_link(binding, link[0])
                    set_cltt(binding, expire - valid)
                    set_addresses(binding, (lease,))
                    set_prefixes(binding, ())
                    set_relay_data(binding, info.relay_data)
                    set_relay_ids(binding, info.relay_ids)
                    set_remote_ids(binding, info.remote_ids)
                    set_options(binding, ())
                    if by_info is not None or check is None or check(binding):
                        yield binding
                    continue
        found = _group_binding(group, now)
        if found is not None and (check is None or check(found)):
            yield found


def _lazy_page(
    groups: Sequence[Sequence[Sequence[Any]]],
    query: BindingQuery,
    now: float,
) -> LazyBindings:
    """
    The bindings of C{groups} (one client's rows each, in key order) that C{query} matches,
    as a lazy page: the worker thread only reads the rows, and the thread that consumes the
    page builds each binding when it reaches it (while the next page is being read).
    """
    return LazyBindings(groups, partial(_iterate_bindings, now=now, query=query), filtered=True)


def subnet_of_link(link_id: str) -> int | None:
    """Kea's subnet id for link id C{"subnet-N"}, or C{None} for another link id."""
    if not link_id.startswith(LINK_PREFIX):
        return None
    digits = link_id[len(LINK_PREFIX) :]
    if not digits.isdigit() or (len(digits) > 1 and digits[0] == "0") or len(digits) > 19:
        return None
    return int(digits)


def _resume_text(resume_after: BindingKey | None) -> tuple[str, bytes] | None:
    """
    The resume key as (subnet id text, DUID) for SQL's row comparison, C{None} to start at
    the first binding; raises L{StopIteration} when no key of this store comes after it.
    """
    if resume_after is None:
        return None
    link_id, duid = resume_after
    if link_id.startswith(LINK_PREFIX):
        return link_id[len(LINK_PREFIX) :], bytes(duid)
    if link_id < LINK_PREFIX:
        return None
    raise StopIteration


def _hex(octets: bytes) -> str:
    return octets.hex()


@attrs.define
class _Ahead:
    """A page being read (or read) ahead of its request."""

    query: BindingQuery
    limit: int
    resume_after: BindingKey
    started: float
    resume: tuple[str, bytes] | None = None  # resume_after as the SQL takes it
    requested: int | None = None  # the limit of the fetch that took it (under the lock)
    done: bool = False
    result: object = None
    waiters: list[Deferred[BindingPage]] = attrs.Factory(list)

    def take(self, store: PostgreSQLBindingStore) -> Deferred[BindingPage]:
        """The page for its requester; the page after it is read ahead in turn."""
        waiter: Deferred[BindingPage] = Deferred()
        if self.done:
            _deliver(waiter, self.result)
            self._read_on(store)
        else:
            self.waiters.append(waiter)
        return waiter

    def finished(self, result: object, store: PostgreSQLBindingStore) -> None:
        """
        The read ended with C{result}, a page or a failure (kept for a requester, and
        dropped with this object if none comes).
        """
        self.done = True
        self.result = result
        waiters, self.waiters = self.waiters, []
        if waiters:
            # Before the page is delivered: its consumer may take the next page at once
            # (in the callback), and that page must not be read a second time.
            self._read_on(store)
        for waiter in waiters:
            _deliver(waiter, result)

    def _read_on(self, store: PostgreSQLBindingStore) -> None:
        page = self.result
        if isinstance(page, BindingPage) and page.resume_after is not None:
            store._read_ahead(self.query, page.resume_after, self.requested or self.limit)


def _snapshot_next(keys: list[str], resume_after: BindingKey, limit: int) -> BindingKey | None:
    """
    Where the page of at most C{limit} clients after C{resume_after} ends in the snapshot
    C{keys} (the C{resume_after} of that page, as L{PostgreSQLBindingStore._snapshot_page}
    answers it), or C{None} if it is the last page.
    """
    try:
        resume = _resume_text(resume_after)
    except StopIteration:
        return None
    start = 0 if resume is None else bisect_right(keys, f"{resume[0]},{resume[1].hex()}")
    if start + limit >= len(keys):
        return None
    subnet_text, duid_hex = keys[start + limit - 1].split(",")
    return (LINK_PREFIX + subnet_text, bytes.fromhex(duid_hex))


def _deliver(waiter: Deferred[BindingPage], result: object) -> None:
    if waiter.called:
        return  # cancelled by its requester
    if isinstance(result, Failure):
        waiter.errback(result)
    else:
        waiter.callback(result)  # type: ignore[arg-type]


@implementer(IBindingStore)
class PostgreSQLBindingStore:
    """
    Kea's C{lease6} table as an L{IBindingStore}, read through a bounded connection pool.

    @ivar name: C{"postgresql"} followed by the database name, for logs and metrics.
    @ivar sparse_threshold: see L{SPARSE_THRESHOLD}.
    @ivar snapshots: see L{SNAPSHOTS}.
    @ivar read_ahead: see L{READ_AHEAD}.
    @ivar snapshot_parallel: see L{SNAPSHOT_PARALLEL}.
    @ivar snapshot_in_background: whether a query's key snapshot is taken by another
        worker while its first page walks the key index (when the database has that index
        and the pool more than one connection); else before the first page.
    """

    sparse_threshold = SPARSE_THRESHOLD
    snapshots = SNAPSHOTS
    read_ahead = READ_AHEAD
    snapshot_parallel = SNAPSHOT_PARALLEL
    snapshot_in_background = True

    def __init__(
        self,
        settings: PostgreSQLSettings,
        reactor: Any = None,
        links: Iterable[Link] | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        """
        @param settings: the database and options (see L{parse_postgresql_uri}).
        @param reactor: provides L{IReactorThreads}, L{IReactorTime} and L{IReactorCore};
            the global reactor when C{None}.
        @param links: the configured links (from Kea's configuration file), or C{None} to
            derive links from the subnet ids found in C{lease6}.
        @param clock: where "now" comes from (which leases are active); C{reactor} when
            C{None}.
        """
        if reactor is None:
            from twisted.internet import reactor as global_reactor  # noqa: PLC0415

            reactor = global_reactor
        self._reactor = reactor
        self._clock: IReactorTime = reactor if clock is None else clock
        self._settings = settings
        self._links = None if links is None else {link.link_id: link for link in links}
        dbname = _database_name(settings.conninfo)
        self.name = f"postgresql:{dbname}" if dbname else "postgresql"
        self._threads = ThreadPool(0, settings.pool_size, name="bulklq-postgresql")
        self._pool = ConnectionPool(
            settings.conninfo,
            min_size=1,
            max_size=settings.pool_size,
            open=False,
            kwargs={
                "autocommit": True,
                # JIT compiling costs a big query (a key snapshot) more than it saves.
                "options": f"-c statement_timeout={settings.statement_timeout * 1000} -c jit=off",
                "application_name": "bulklq",
            },
            check=ConnectionPool.check_connection,
            timeout=settings.connect_timeout,
            reconnect_timeout=0,
            name="bulklq-postgresql",
        )
        self._schema: _Schema | None = None
        self._schema_lock = threading.Lock()
        # Leases per binding seen so far: sizes the row LIMIT of the next page.
        self._leases_per_binding = 1.5
        # Sorted client keys of the queries with many matches, least recently used first.
        self._snapshots: dict[BindingQuery, list[str]] = {}
        self._snapshot_lock = threading.Lock()
        # Queries whose key snapshot is being taken in a worker of its own, or failed
        # there (see L{_start_snapshot}). Under the snapshot lock.
        self._taking: dict[BindingQuery, _SnapshotJob] = {}
        # Leases walked per matching client on walk pages: sizes the next walk.
        self._walk_ratio = 4.0
        # The pages read ahead for each query being streamed, in order, under its lock
        # (the workers start them, the reactor thread takes them, the first first).
        self._ahead: dict[BindingQuery, list[_Ahead]] = {}
        self._ahead_lock = threading.Lock()
        self._closed = False
        self._shutdown_trigger = reactor.addSystemEventTrigger(
            "during", "shutdown", self._stop_threads
        )

    # -- the thread side ---------------------------------------------------------------

    def _run(self, work: Callable[[Any], Any]) -> Deferred[Any]:
        if self._closed:
            return defer.fail(PostgreSQLStoreError("the store is closed"))
        self._start_threads()
        return deferToThreadPool(self._reactor, self._threads, self._with_connection, work)

    def _with_connection(self, work: Callable[[Any], Any]) -> Any:
        try:
            with self._pool.connection() as conn:
                return work((conn, self._current_schema(conn)))
        except (PoolTimeout, psycopg.Error) as error:
            raise self._store_error(error) from error

    def _current_schema(self, conn: Any) -> _Schema:
        schema = self._schema
        if schema is None:
            with self._schema_lock:
                schema = self._schema = self._read_schema(conn)
        return schema

    def _store_error(self, error: PoolTimeout | psycopg.Error) -> PostgreSQLStoreError:
        """The L{PostgreSQLStoreError} a failed database call ends in."""
        if isinstance(error, PoolTimeout):
            return PostgreSQLStoreError(f"no database connection: {error}")
        # The schema may have changed (a Kea upgrade) or the server restarted: read the
        # catalog again on the next call.
        self._schema = None
        if isinstance(error, psycopg.errors.UndefinedTable):
            return PostgreSQLStoreError(f"not a Kea lease database: {error}")
        return PostgreSQLStoreError(f"database error: {error}".strip())

    def _read_pages(
        self,
        query: BindingQuery,
        resume: tuple[str, bytes] | None,
        limit: int,
        now: float,
        deliver: Callable[[object], object],
    ) -> None:
        """
        Read a page in this worker thread and hand it (or the failure) to C{deliver} in the
        reactor thread; then, if that page is being waited for (no page of the query is
        read ahead yet), read the next one at once in this same thread, on the same
        connection (and, for a query paged by key snapshot, the one after it in another
        worker: L{SNAPSHOT_PARALLEL}). Reading ahead from here, not from the reactor
        thread, is what makes the database work while the consumer builds and sends a
        page: a job started through the reactor thread would wait for the consumer to let
        go of Python's interpreter lock, that is until the page was consumed.
        """
        call = self._reactor.callFromThread
        try:
            with self._pool.connection() as conn:
                handover: _Once | None = None
                current: _Ahead | None = None  # the page being read, if read ahead
                while True:
                    try:
                        try:
                            page = self._fetch_page(
                                conn,
                                self._current_schema(conn),
                                query,
                                resume=resume,
                                limit=limit,
                                now=now,
                                handover=handover,
                            )
                        finally:
                            if handover is not None:
                                handover()  # if the page ended without its main query
                    except psycopg.Error as error:
                        call(deliver, Failure(self._store_error(error)))
                        return
                    claimed = []
                    if page.resume_after is not None:
                        claimed = self._claim_ahead(query, page.resume_after, limit, current)
                    if not claimed:
                        call(deliver, page)
                        return
                    ahead = claimed[0]
                    self._start_reads(claimed[1:])  # on other connections, at once
                    # This page goes to the reactor thread once the next page's query is
                    # sent: handing it over first would let the consumer take the
                    # interpreter lock before the query leaves.
                    handover = _Once(partial(call, deliver, page))
                    resume, now, limit = ahead.resume, ahead.started, ahead.limit
                    deliver = partial(ahead.finished, store=self)
                    current = ahead
        except PoolTimeout as error:
            call(deliver, Failure(self._store_error(error)))
        except Exception:  # anything else: the requester sees it, the worker lives on
            call(deliver, Failure())

    @staticmethod
    def _read_schema(conn: Any) -> _Schema:
        columns: dict[str, dict[str, str]] = {}
        for table, column, type_name in conn.execute(_SCHEMA_SQL).fetchall():
            columns.setdefault(table, {})[column] = type_name
        lease6 = columns.get("lease6")
        if not lease6 or "address" not in lease6 or "duid" not in lease6:
            raise PostgreSQLStoreError("not a Kea lease database: no lease6 table")

        def addr_type(table: str) -> str | None:
            found = columns.get(table, {}).get("lease_addr")
            if found is None:
                return None
            return "inet" if found == "inet" else "bytea"

        return _Schema(
            address_inet=lease6["address"] == "inet",
            has_binaddr="binaddr" in lease6,
            relay_addr_type=addr_type("lease6_relay_id"),
            remote_addr_type=addr_type("lease6_remote_id"),
            key_index=bool(conn.execute(_KEY_INDEX_SQL).fetchone()[0]),
        )

    # -- IBindingStore ------------------------------------------------------------------

    def fetch(
        self, query: BindingQuery, resume_after: BindingKey | None, limit: int
    ) -> Deferred[BindingPage]:
        """See L{IBindingStore.fetch}."""
        if limit < 1:
            return defer.fail(ValueError(f"limit {limit} is below 1"))
        try:
            resume = _resume_text(resume_after)
        except StopIteration:
            return defer.succeed(BindingPage((), None))
        if self._closed:
            return defer.fail(PostgreSQLStoreError("the store is closed"))
        now = self._clock.seconds()
        with self._ahead_lock:
            ahead = None
            chain = self._ahead.get(query)
            if chain:
                # A page read ahead with a smaller limit serves too (a page may hold fewer
                # bindings than asked for): the server's first page is small, its next
                # ones not. Any other page read ahead is of no use: the consumer is
                # elsewhere.
                if chain[0].resume_after == resume_after and chain[0].limit <= limit:
                    ahead = chain.pop(0)
                    ahead.requested = limit
                if ahead is None or not chain:
                    del self._ahead[query]
        if ahead is not None and now - ahead.started <= AHEAD_MAX_AGE:
            return ahead.take(self)
        return self._page_deferred(query, resume, limit, now)

    def _page_deferred(
        self, query: BindingQuery, resume: tuple[str, bytes] | None, limit: int, now: float
    ) -> Deferred[BindingPage]:
        if self._closed:
            return defer.fail(PostgreSQLStoreError("the store is closed"))
        self._start_threads()
        waiter: Deferred[BindingPage] = Deferred()
        self._threads.callInThread(
            self._read_pages, query, resume, limit, now, partial(_deliver, waiter)
        )
        return waiter

    def _start_threads(self) -> None:
        if not self._threads.started:
            # Threads start on first use, not in the constructor: twistd builds the store
            # before it daemonizes, and a fork keeps no threads.
            self._threads.start()
            self._pool.open(wait=False)

    def _claim_ahead(
        self,
        query: BindingQuery,
        resume_after: BindingKey,
        limit: int,
        after: _Ahead | None = None,
    ) -> list[_Ahead]:
        """
        The pages to read now (any thread), registered as read ahead, in order: the page
        after C{resume_after} (which ends a page just read or taken) if none of the query
        is read ahead yet; for a query paged by key snapshot, also the pages after those
        read ahead already, up to L{snapshot_parallel} in all (their ends are known from
        the snapshot). None when too many pages are read ahead (L{read_ahead}), or the
        store is closed. Their limit is that of the fetch that took C{after} (the page just
        read, if it was read ahead), else C{limit}.
        """
        now = self._clock.seconds()
        if after is not None and after.requested is not None:
            limit = after.requested
        keys = None
        if query.kind in (QueryKind.RELAY_ID, QueryKind.REMOTE_ID) and self.snapshot_parallel > 1:
            with self._snapshot_lock:
                keys = self._snapshots.get(query)
        claimed: list[_Ahead] = []
        with self._ahead_lock:
            if self._closed:
                return claimed
            for key, chain in list(self._ahead.items()):
                if now - chain[0].started > AHEAD_MAX_AGE:
                    del self._ahead[key]
            chain = self._ahead.get(query, [])
            if chain and (keys is None or chain[0].resume_after != resume_after):
                return claimed  # read ahead already, or from elsewhere than this page
            wanted = 1 if keys is None else self.snapshot_parallel
            count = sum(map(len, self._ahead.values()))
            following: BindingKey | None = resume_after
            while len(chain) < wanted and count < self.read_ahead:
                if chain:
                    assert keys is not None
                    following = _snapshot_next(keys, chain[-1].resume_after, chain[-1].limit)
                if following is None:
                    break
                try:
                    resume = _resume_text(following)
                except StopIteration:
                    break
                ahead = _Ahead(query, limit, following, now, resume)
                chain.append(ahead)
                claimed.append(ahead)
                count += 1
            if chain:
                self._ahead[query] = chain
        return claimed

    def _start_reads(self, claimed: Iterable[_Ahead]) -> None:
        """Read the pages C{claimed} (any thread), each in a worker of its own."""
        for ahead in claimed:
            self._threads.callInThread(
                self._read_pages,
                ahead.query,
                ahead.resume,
                ahead.limit,
                ahead.started,
                partial(ahead.finished, store=self),
            )
            if self._threads.joined:  # closed meanwhile: the page will not be read
                self._reactor.callFromThread(
                    ahead.finished, Failure(PostgreSQLStoreError("the store is closed")), self
                )

    def _read_ahead(self, query: BindingQuery, resume_after: BindingKey, limit: int) -> None:
        """
        Start reading the page after C{resume_after} (reactor thread), and for a query paged
        by key snapshot the pages after it: a page read ahead has been taken, so the next
        ones may be read. (A worker that finishes a page that is already waited for reads
        the next one itself: see L{_read_pages}.)
        """
        if not self._threads.started:
            return
        self._start_reads(self._claim_ahead(query, resume_after, limit))

    def find_link(self, address: IPv6Address) -> Deferred[Link | None]:
        """
        See L{IBindingStore.find_link}: with Kea's configuration, the subnet whose prefix
        contains C{address}; without it, the subnet of an active lease holding C{address}
        (or a delegated prefix containing it), else of an active lease relayed from a link
        whose link-address is C{address}.
        """
        if self._links is not None:
            for link in self._links.values():
                if link.contains(address):
                    return defer.succeed(link)
            return defer.succeed(None)
        now = self._clock.seconds()

        def work(context: tuple[Any, _Schema]) -> Link | None:
            conn, schema = context
            return self._find_link_in_leases(conn, schema, address, now)

        return self._run(work)

    def get_link(self, link_id: str) -> Deferred[Link | None]:
        """See L{IBindingStore.get_link}: a configured link, or a subnet with leases."""
        if self._links is not None:
            return defer.succeed(self._links.get(link_id))
        subnet_id = subnet_of_link(link_id)
        if subnet_id is None:
            return defer.succeed(None)

        def work(context: tuple[Any, _Schema]) -> Link | None:
            conn, _ = context
            row = conn.execute(
                "SELECT 1 FROM lease6 WHERE subnet_id = %s LIMIT 1", (subnet_id,)
            ).fetchone()
            return Link(link_id, ()) if row else None

        return self._run(work)

    def close(self) -> Deferred[None]:
        """See L{IBindingStore.close}: close the connections, then stop the threads."""
        if self._closed:
            return defer.succeed(None)
        self._closed = True
        self._reactor.removeSystemEventTrigger(self._shutdown_trigger)
        if not self._threads.started:
            self._pool.close()  # never opened: nothing to wait for
            return defer.succeed(None)
        closing: Deferred[None] = deferToThreadPool(self._reactor, self._threads, self._pool.close)

        def stopped(result: object) -> None:
            self._stop_threads()

        closing.addBoth(stopped)
        return closing

    def _stop_threads(self) -> None:
        if self._threads.started:
            self._threads.stop()
        if not self._pool.closed:
            self._pool.close(timeout=1)

    # -- queries ------------------------------------------------------------------------

    def _fetch_page(
        self,
        conn: Any,
        schema: _Schema,
        query: BindingQuery,
        *,
        resume: tuple[str, bytes] | None,
        limit: int,
        now: float,
        handover: Callable[[], object] | None = None,
    ) -> BindingPage:
        """
        One page. C{handover}, if given, is called once the page's main query is on its way
        to the server, before this thread waits for its rows (see L{_read_pages}).
        """
        rows_wanted = math.ceil(limit * self._leases_per_binding) + 1
        params: dict[str, Any] = {
            "now": now,
            "rsk": resume[0] if resume else "",
            "rduid": resume[1] if resume else b"",
            "rows": rows_wanted,
        }
        keys = None
        if resume is not None and query.kind in (QueryKind.RELAY_ID, QueryKind.REMOTE_ID):
            # A query paged by key snapshot goes on with it: no planning queries again.
            keys = self._awaited_snapshot(query, handover)
        if keys is None:
            sql = self._page_sql(conn, schema, query, params, first=resume is None)
            if sql is None:
                return BindingPage((), None)
            if isinstance(sql, _Walk):
                return self._walk_page(conn, schema, query, sql, params, limit, now, handover)
            if sql is _SNAPSHOT:
                keys = _snapshot_keys(conn, params.pop("keys_sql"), params)
                with self._snapshot_lock:
                    self._keep_snapshot(query, keys)
        if keys is not None:
            return self._snapshot_page(conn, schema, query, keys, resume, limit, now, handover)
        assert isinstance(sql, str)  # a plan, not a snapshot, without keys
        rows = _read_rows(conn, sql, params, handover)
        groups = _group(rows)
        more = len(rows) >= rows_wanted
        if more and groups:
            if len(groups) > 1:
                groups.pop()  # may be cut short by the row limit: the next page re-reads it
            else:
                groups = [self._whole_client(conn, schema, groups[0][0], now)]
        if len(groups) > limit:
            del groups[limit:]
            more = True
        resume_after = None
        if more and groups:
            subnet_id, duid = groups[-1][0]
            resume_after = (subnet_link_id(subnet_id), bytes(duid))
        members = [rows for _, rows in groups]
        if members:
            ratio = sum(map(len, members)) / len(members)
            self._leases_per_binding = min(
                8.0, max(1.0, 0.8 * self._leases_per_binding + 0.2 * ratio)
            )
        return BindingPage(_lazy_page(members, query, now), resume_after)

    def _keep_snapshot(self, query: BindingQuery, keys: list[str]) -> None:
        """Keep C{keys} as C{query}'s snapshot, most recently used (under the lock)."""
        self._snapshots.pop(query, None)
        self._snapshots[query] = keys
        while len(self._snapshots) > self.snapshots:
            del self._snapshots[next(iter(self._snapshots))]

    def _start_snapshot(self, query: BindingQuery, keys_sql: str, params: dict[str, Any]) -> bool:
        """
        Take C{query}'s key snapshot in another worker, on a connection of its own (any
        thread), so that the query's first page can be read (walked) meanwhile; its next
        pages wait for the snapshot. C{False} if it cannot be (the store is closing).
        """
        job = _SnapshotJob()
        with self._snapshot_lock:
            running = self._taking.get(query)
            if running is not None and not running.ended.is_set():
                return True  # another stream of the same query started it
            self._taking.pop(query, None)
            self._taking[query] = job
            while len(self._taking) > max(self.snapshots, 1):
                oldest = next(iter(self._taking))
                if not self._taking[oldest].ended.is_set():
                    break  # a snapshot being taken leaves on its own
                del self._taking[oldest]
        self._threads.callInThread(self._take_snapshot, query, job, keys_sql, dict(params))
        if self._threads.joined:  # closed meanwhile: the job will not run
            with self._snapshot_lock:
                if self._taking.get(query) is job:
                    del self._taking[query]
            job.ended.set()
            return False
        return True

    def _take_snapshot(
        self, query: BindingQuery, job: _SnapshotJob, keys_sql: str, params: dict[str, Any]
    ) -> None:
        """
        The worker of L{_start_snapshot}: keep the snapshot; if it fails, the query's pages
        walk the key index instead (L{_walk_page}) until a new stream of it starts.
        """
        job.started = True
        if self._closed:  # nothing is read after a close
            job.failed = True
            job.ended.set()
            return
        try:
            with self._pool.connection() as conn:
                keys = _snapshot_keys(conn, keys_sql, params)
        except Exception as error:
            _log.warn(
                "the key snapshot of a {kind} query failed, its pages walk lease6 instead: {error}",
                kind=query.kind.name,
                error=str(error).strip(),
            )
            job.failed = True
            job.ended.set()
            return
        with self._snapshot_lock:
            if self._taking.get(query) is job:
                del self._taking[query]
            self._keep_snapshot(query, keys)
        job.ended.set()

    def _awaited_snapshot(
        self, query: BindingQuery, handover: Callable[[], object] | None
    ) -> list[str] | None:
        """
        For a page after the first of a Relay-ID/Remote-ID query: its key snapshot, waiting
        for it if a worker is taking it (after handing the page before over, so that its
        consumer is not kept waiting too); C{None} if there is none, if it failed, or if
        no worker took it up yet (the page then walks: waiting for a job still queued
        could block every worker).
        """
        with self._snapshot_lock:
            keys = self._snapshots.pop(query, None)
            if keys is not None:
                self._snapshots[query] = keys  # most recently used last
                return keys
            job = self._taking.get(query)
        if job is None or job.failed or not job.started:
            # Not waited for before a worker runs it: every worker could be waiting.
            return None
        if handover is not None:
            handover()
        job.ended.wait(self._settings.statement_timeout + self._settings.connect_timeout + 1)
        with self._snapshot_lock:
            keys = self._snapshots.get(query)
        return keys

    def _walk_page(  # noqa: PLR0917 - private, called once
        self,
        conn: Any,
        schema: _Schema,
        query: BindingQuery,
        walk: _Walk,
        params: dict[str, Any],
        limit: int,
        now: float,
        handover: Callable[[], object] | None,
    ) -> BindingPage:
        """
        A page of a Relay-ID/Remote-ID query with many matches read without its key
        snapshot (while it is taken): walk the next leases in key order (the key index),
        at most about C{limit} times the leases walked per matching client so far, and
        keep every client with an active lease carrying the id. The walk ends at a client
        boundary (the last client walked is read whole), which is where the next page
        starts; a page may hold fewer than C{limit} bindings, or none.
        """
        with_link = "lsk" in params
        params["skip"] = min(WALK_MAX * limit, max(limit, math.ceil(limit * self._walk_ratio))) - 1
        bound = conn.execute(_walk_bound_sql(with_link), params).fetchone()
        if bound is not None:
            params["bsk"], params["bduid"] = bound[0], bytes(bound[1])
        rows = _read_rows(
            conn, _walk_sql(schema, walk, with_link, bound is not None), params, handover
        )
        groups = _group(rows)
        if bound is not None:  # a whole walk: how many leases it took per matching client
            ratio = (params["skip"] + 1) / max(len(groups), 1)
            self._walk_ratio = min(float(WALK_MAX), max(1.0, 0.5 * self._walk_ratio + 0.5 * ratio))
        resume_after: BindingKey | None = None
        if len(groups) > limit:
            del groups[limit:]
            subnet_id, duid = groups[-1][0]
            resume_after = (subnet_link_id(subnet_id), bytes(duid))
        elif bound is not None:
            resume_after = (LINK_PREFIX + bound[0], bytes(bound[1]))
        members = [rows for _, rows in groups]
        return BindingPage(_lazy_page(members, query, now), resume_after)

    def _snapshot_page(  # noqa: PLR0917 - private, called once
        self,
        conn: Any,
        schema: _Schema,
        query: BindingQuery,
        keys: list[str],
        resume: tuple[str, bytes] | None,
        limit: int,
        now: float,
        handover: Callable[[], object] | None,
    ) -> BindingPage:
        """
        A page of a query with many matches: C{keys} are the sorted keys of the matching
        clients (L{_snapshot_sql}), read when the query started (or when they were no
        longer kept); the page reads the active leases of the next C{limit} clients after
        C{resume}.
        """
        start = 0 if resume is None else bisect_right(keys, f"{resume[0]},{resume[1].hex()}")
        chosen = keys[start : start + limit]
        if not chosen:
            return BindingPage((), None)
        # The keys as one text: PostgreSQL splits it faster than the driver dumps an array
        # of a thousand values. With the key index, each client is looked up in it: a
        # page's clients are neighbours there (in Kea's index on the DUID they are spread
        # over the whole index), so the index pages a page reads stay in the cache.
        if schema.key_index:
            subnet = f"{_sk('l')} = split_part(c.k, ',', 1)"
        else:
            subnet = "l.subnet_id = split_part(c.k, ',', 1)::bigint"
        rows = _read_rows(
            conn,
            f"SELECT {schema.columns('l')} FROM unnest("  # noqa: S608
            "string_to_array(%(keys)s, ' ')) WITH ORDINALITY c(k, n) "
            f"JOIN lease6 l ON {subnet} "
            "AND l.duid = decode(split_part(c.k, ',', 2), 'hex') "
            f"WHERE {_active('l')} ORDER BY c.n",
            {"keys": " ".join(chosen), "now": now},
            handover,
        )
        resume_after = None
        if start + limit < len(keys):
            subnet_text, duid_hex = chosen[-1].split(",")
            resume_after = (LINK_PREFIX + subnet_text, bytes.fromhex(duid_hex))
        members = [rows for _, rows in _group(rows)]
        return BindingPage(_lazy_page(members, query, now), resume_after)

    def _whole_client(
        self, conn: Any, schema: _Schema, client: tuple[int, bytes], now: float
    ) -> tuple[tuple[int, bytes], list[Sequence[Any]]]:
        rows = conn.execute(
            f"SELECT {schema.columns('l')} FROM lease6 l WHERE l.subnet_id = %(subnet)s "  # noqa: S608
            f"AND l.duid = %(duid)s AND {_active('l')}",
            {"subnet": client[0], "duid": client[1], "now": now},
        ).fetchall()
        return client, rows

    def _page_sql(
        self,
        conn: Any,
        schema: _Schema,
        query: BindingQuery,
        params: dict[str, Any],
        first: bool = False,
    ) -> str | _Walk | None:
        """
        The SQL of one page (parameters added to C{params}), or C{None} for no match; for a
        Relay-ID/Remote-ID query with many matches, L{_SNAPSHOT} (take the key snapshot
        now) or a L{_Walk} (read this page by walking the key index while the snapshot is
        taken in another worker: started here for the C{first} page of a query).
        """
        with_link = False
        if query.link_id is not None:
            subnet_id = subnet_of_link(query.link_id)
            if subnet_id is None:
                return None
            params["lsk"] = str(subnet_id)
            with_link = True
        kind = query.kind
        if kind is QueryKind.LINK:
            return _scan_sql(schema, None, with_link)
        if kind is QueryKind.CLIENT_ID:
            assert query.client_id is not None
            params["duid"] = query.client_id.raw
            return _candidates_sql(
                schema,
                f"SELECT m.subnet_id, m.duid FROM lease6 m WHERE m.duid = %(duid)s "  # noqa: S608
                f"AND {_active('m')}",
                with_link,
            )
        if kind is QueryKind.ADDRESS:
            assert query.address is not None
            params["addrs"] = _covering_networks(query.address)
            return _candidates_sql(
                schema,
                "SELECT m.subnet_id, m.duid FROM lease6 m WHERE m.address = "  # noqa: S608
                f"ANY(%(addrs)s::{schema.address_array()}) AND {_active('m')}",
                with_link,
            )
        if kind is QueryKind.RELAY_ID:
            assert query.relay_id is not None
            table, column, value = "lease6_relay_id", "relay_id", query.relay_id.raw
        else:
            assert query.remote_id is not None
            table, column = "lease6_remote_id", "remote_id"
            value = query.remote_id.encode_data()
        params["id"] = value
        if self._use_table(conn, schema, table):
            walk = _Walk(table, column)
            with self._snapshot_lock:
                job = self._taking.get(query)
            if job is not None and (not job.ended.is_set() or (job.failed and not first)):
                return walk  # being taken (a first page), or failed: this page walks
            count = conn.execute(
                f"SELECT count(*) FROM (SELECT 1 FROM {table} t WHERE t.{column} = %(id)s "  # noqa: S608
                f"LIMIT {int(self.sparse_threshold)}) x",
                params,
            ).fetchone()[0]
            candidates = (
                f"SELECT m.subnet_id, m.duid FROM {table} t JOIN lease6 m "  # noqa: S608
                f"ON {schema.table_join(table, 'm')} "
                f"WHERE t.{column} = %(id)s AND {_active('m')}"
            )
            if count < self.sparse_threshold:
                # Few leases carry this id: start from them.
                return _candidates_sql(schema, candidates, with_link)
            # Many: the matching clients' keys once per query, then their leases per page.
            params["keys_sql"] = _snapshot_sql(candidates, with_link)
            if (
                first
                and self.snapshot_in_background
                and schema.key_index
                and self.snapshots > 0
                and self._settings.pool_size > 1
                and self._start_snapshot(query, params["keys_sql"], params)
            ):
                del params["keys_sql"]
                return walk
            return _SNAPSHOT
        else:
            # Kea's user_context holds the id as hex: in "relay-id"/"remote-id" (Kea 2.3.2+)
            # and inside the relay's "options" (every version, upper-case in real files).
            params["pattern"] = f"%{value.hex()}%"
            hit = "l.user_context ILIKE %(pattern)s"
        return _scan_sql(schema, hit, with_link)

    def _use_table(self, conn: Any, schema: _Schema, table: str) -> bool:
        present = schema.relay_addr_type if table == "lease6_relay_id" else schema.remote_addr_type
        mode = self._settings.relay_tables
        if present is None or mode == "no":
            return False
        if mode == "yes":
            return True
        return bool(conn.execute(f"SELECT EXISTS (SELECT 1 FROM {table})").fetchone()[0])  # noqa: S608

    def _find_link_in_leases(
        self, conn: Any, schema: _Schema, address: IPv6Address, now: float
    ) -> Link | None:
        row = conn.execute(
            "SELECT m.subnet_id FROM lease6 m WHERE m.address = "  # noqa: S608
            f"ANY(%(addrs)s::{schema.address_array()}) AND {_active('m')} "
            "ORDER BY m.subnet_id LIMIT 1",
            {"addrs": _covering_networks(address), "now": now},
        ).fetchone()
        if row is not None:
            return Link(subnet_link_id(int(row[0])), ())
        # A relay's link-address: Kea's user_context spells it as text.
        rows = conn.execute(
            f"SELECT {schema.columns('l')} FROM lease6 l WHERE {_active('l')} "  # noqa: S608
            "AND l.user_context LIKE %(pattern)s ORDER BY l.subnet_id LIMIT 100",
            {"pattern": f'%"{address}"%', "now": now},
        ).fetchall()
        for lease in _row_leases(rows):
            try:
                if client_link_address(lease_relay_hops(lease)) == address:
                    return Link(subnet_link_id(lease.subnet_id), (IPv6Network(address),))
            except KeaLeaseError:
                continue
        return None


class _Once:
    """Calls a function the first time it is called, and does nothing after."""

    __slots__ = ("_function",)

    def __init__(self, function: Callable[[], object]) -> None:
        self._function: Callable[[], object] | None = function

    def __call__(self) -> None:
        function, self._function = self._function, None
        if function is not None:
            function()


def _read_rows(
    conn: Any, sql: str, params: dict[str, Any], handover: Callable[[], object] | None
) -> list[Any]:
    """
    The rows of a page's main query (binary results). With C{handover}, the query goes in
    pipeline mode, so that it leaves for the server at once and C{handover} runs while the
    server works on it; this thread then waits for the rows.
    """
    if handover is None or not _PIPELINE:
        if handover is not None:
            handover()
        return conn.execute(sql, params, binary=True).fetchall()  # type: ignore[no-any-return]
    with conn.pipeline():
        cursor = conn.execute(sql, params, binary=True)
        handover()
        return cursor.fetchall()  # type: ignore[no-any-return]


#: Whether this libpq has pipeline mode (14 and newer).
_PIPELINE = psycopg.Pipeline.is_supported()

#: What L{PostgreSQLBindingStore._page_sql} answers for a query paged by key snapshot.
_SNAPSHOT = "snapshot"


class _SnapshotJob:
    """A key snapshot taken in a worker of its own (L{PostgreSQLBindingStore._start_snapshot})."""

    __slots__ = ("ended", "failed", "started")

    def __init__(self) -> None:
        self.started = False  # a worker runs it (it ends within the statement timeout)
        self.ended = threading.Event()
        self.failed = False


@attrs.frozen
class _Walk:
    """A page read by walking the key index, probing the extended-info C{table}."""

    table: str
    column: str


def _snapshot_keys(conn: Any, keys_sql: str, params: dict[str, Any]) -> list[str]:
    """Take a key snapshot (L{_snapshot_sql}): the sorted keys."""
    text = conn.execute(keys_sql, params).fetchone()[0]
    keys: list[str] = text.split(" ") if text else []
    keys.sort()  # already sorted by the server (timsort checks it in one pass)
    return keys


def _walk_bound_sql(with_link: bool) -> str:
    """
    SQL: the key of the lease C{skip} leases after the resume key, in key order (active or
    not: an index-only scan of C{bulklq_lease6_key}), where a walk stops; no row when fewer
    are left.
    """
    link = _link_filter("l") if with_link else ""
    return (
        f"SELECT {_sk('l')}, l.duid FROM lease6 l WHERE {_after('l')}{link} "  # noqa: S608
        f"{_order('l')} OFFSET %(skip)s LIMIT 1"
    )


def _walk_sql(schema: _Schema, walk: _Walk, with_link: bool, bounded: bool) -> str:
    """
    SQL of a walk page: the active leases after the resume key (up to the bound key,
    included, if C{bounded}) of every client one of whose active leases is in
    C{walk.table} with the id, in key order; one index probe per lease (a LATERAL with
    LIMIT 1: an EXISTS may be planned as a hash of every row of the id).
    """
    table, column = walk.table, walk.column
    probe = (
        f"LEFT JOIN LATERAL (SELECT true AS found FROM {table} t "  # noqa: S608
        f"WHERE t.{column} = %(id)s AND {schema.table_join(table, 'l')} LIMIT 1) p ON true"
    )
    upper = f" AND ({_sk('l')}, l.duid) <= (%(bsk)s, %(bduid)s)" if bounded else ""
    link = _link_filter("l") if with_link else ""
    return (
        f"SELECT * FROM (SELECT {schema.columns('l')}, bool_or(p.found IS NOT NULL) OVER "  # noqa: S608
        f"(PARTITION BY {_sk('l')}, l.duid) AS hit FROM lease6 l {probe} "
        f"WHERE {_active('l')} AND {_after('l')}{upper}{link} {_order('l')}) s WHERE s.hit"
    )


def _snapshot_sql(candidates: str, with_link: bool) -> str:
    """
    SQL of the sorted keys of every client that C{candidates} selects (with an active
    lease on the queried link, if any), as one text: each key is the subnet id, a comma and
    the DUID in lower-case hex, and the keys are separated by spaces. These texts sort (as
    octets) in binding key order: the comma sorts below every digit, and hex keeps the
    order of the octets it spells. One text costs the driver one object, not a row of two
    for each client, and keeps in a third of the memory.
    """
    link = _link_filter("x") if with_link else ""
    return (
        "SELECT string_agg(k, ' ') FROM (SELECT DISTINCT "  # noqa: S608
        "x.subnet_id::text || ',' || encode(x.duid, 'hex') COLLATE \"C\" AS k "
        f"FROM ({candidates}) x WHERE true{link} ORDER BY 1) y"
    )


def _candidates_sql(schema: _Schema, candidates: str, with_link: bool) -> str:
    """
    SQL of a page when few clients match: the matching clients first (C{candidates}
    selects their C{subnet_id, duid}), then all their active leases, in key order.
    """
    link = _link_filter("l") if with_link else ""
    return (
        f"WITH c AS (SELECT DISTINCT x.subnet_id, x.duid FROM ({candidates}) x) "  # noqa: S608
        f"SELECT {schema.columns('l')} FROM c JOIN lease6 l ON l.subnet_id = c.subnet_id "
        f"AND l.duid = c.duid WHERE {_active('l')} AND {_after('l')}{link} "
        f"{_order('l')} LIMIT %(rows)s"
    )


def _scan_sql(schema: _Schema, hit: str | None, with_link: bool, join: str = "") -> str:
    """
    SQL of a page when many clients may match: walk C{lease6} in key order (the
    C{bulklq_lease6_key} index) and keep every active lease of a client one of whose active
    leases is a C{hit} (every client when C{None}).
    """
    link = _link_filter("l") if with_link else ""
    scan = f"FROM lease6 l {join} WHERE {_active('l')} AND {_after('l')}{link} {_order('l')}"
    if hit is None:
        return f"SELECT {schema.columns('l')} {scan} LIMIT %(rows)s"
    # The window keeps the scan's order; the outer filter and LIMIT stop it early.
    return (
        f"SELECT * FROM (SELECT {schema.columns('l')}, bool_or({hit}) OVER "  # noqa: S608
        f"(PARTITION BY {_sk('l')}, l.duid) AS hit {scan}) s WHERE s.hit LIMIT %(rows)s"
    )


def _group(rows: Sequence[Sequence[Any]]) -> list[tuple[tuple[int, bytes], list[Sequence[Any]]]]:
    """Consecutive rows of one (subnet_id, duid), in order."""
    groups: list[tuple[tuple[int, bytes], list[Sequence[Any]]]] = []
    append = groups.append
    current: tuple[int, bytes] | None = None
    members: list[Sequence[Any]] = []
    for row in rows:
        key = (row[0], row[1])
        if key != current:
            members = [row]
            append((key, members))
            current = key
        else:
            members.append(row)
    return groups


def _covering_networks(address: IPv6Address) -> list[str]:
    """The address and every network address of a prefix containing it, as Kea's text."""
    value = int(address)
    texts = {str(address)}
    for length in range(128):
        mask = ((1 << length) - 1) << (128 - length)
        texts.add(str(IPv6Address(value & mask)))
    return sorted(texts)


def _database_name(conninfo: str) -> str:
    try:
        return str(conninfo_to_dict(conninfo).get("dbname") or "")
    except psycopg.Error:
        return ""


def open_store_uri(uri: str, reactor: Any = None) -> PostgreSQLBindingStore:
    """
    Open a C{postgresql://} store URI (the C{--store} registry's opener).

    @raise ValueError: for a malformed URI or an unreadable Kea configuration file.
    """
    settings = parse_postgresql_uri(uri)
    links = None
    if settings.kea_config is not None:
        links = _links_from_kea_config(settings.kea_config)
    return PostgreSQLBindingStore(settings, reactor, links)


def _links_from_kea_config(path: str) -> list[Link]:
    # KeaConfigError is a ValueError naming the file and the problem.
    return list(load_kea_config(path).values())
