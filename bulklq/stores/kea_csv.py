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
lifetimes). A malformed row is skipped with a warning naming the file and line; the lease
the address had before stays.

B{Live follow.} Once loaded, the store polls the lease file every second (a C{LoopingCall}
on the injected reactor): complete rows appended since are applied, so a change Kea writes
is served within a second; a last line without its newline is left until it is complete.
Kea's LFC renames the lease file to C{PATH.1} and starts a new one: bulklq reads the old
file to its end through the handle it holds, then follows the new file from its header, so
no binding is lost or duplicated and nothing is reloaded. A lease file replaced any other
way (new inode with no LFC sibling newer than it, or a file that shrank) is reloaded from
the whole file set; the new state is merged into the index binding by binding, so queries
in flight keep the paging contract of L{bulklq.interfaces.IBindingStore}.

B{Links.} With Kea's configuration (C{kea-config=}), each subnet is a link with the subnet's
prefix (L{bulklq.stores.kea_config}). Without it, a subnet's link is known only through its
leases: the link-address Kea selected the subnet by (the relay nearest the client whose
link-address is neither C{::} nor link-local) as a /128, and the /64 of every address it
leased (IA_NA, IA_TA). A query whose link-address matches none of these is answered
NotConfigured; with a configuration, one outside every configured subnet is.

B{Memory.} The index is a L{MemoryBindingStore}; beside it the store keeps, per active lease,
its address text, the lease value shared with its binding, and the client's group.
"""

from __future__ import annotations

import csv
import gc
import os
from collections.abc import Callable, Iterable, Iterator
from ipaddress import IPv6Address, IPv6Network
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qs, unquote, urlsplit

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
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
)
from ..wire import Duid
from .kea_config import load_kea_config
from .kea_leases import (
    LEASE_TYPE_PD,
    STATE_DEFAULT,
    KeaLeaseError,
    RelayInfo,
    assemble_binding,
    client_duid,
    lease_item,
    parse_address,
    relay_info,
    subnet_link_id,
    unescape,
)
from .memory import MemoryBindingStore

__all__ = ["KeaCsvError", "KeaCsvStore", "lease_file_set", "open_store_uri"]

log = Logger()

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
#: Distinct user contexts remembered (the rows of one transaction repeat it).
_RELAY_CACHE_SIZE = 4096
#: Times the LFC file set is re-read when LFC renamed files during a load.
_LOAD_ATTEMPTS = 5

#: A client's group: (subnet id, DUID octets).
_Group = tuple[int, bytes]
#: An active lease: its part of the binding (lease, CLTT, relay information), and its group.
_Record = tuple[AddressLease | PrefixLease, int, RelayInfo, _Group]


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


class _LeaseTable:
    """
    The active leases by address, grouped by client, with the groups changed since the
    last L{flush} into the index.
    """

    def __init__(self, derive_links: bool) -> None:
        self.leases: dict[int, _Record] = {}
        #: group -> [the group's key tuple (shared by its records), lease keys ...]
        self.members: dict[_Group, list[_Group | int]] = {}
        self.dirty: set[_Group] = set()
        self.relay_cache: dict[str, RelayInfo] = {}
        self.derive_links = derive_links
        #: subnet id -> prefixes derived from its leases (when there is no configuration)
        self.derived: dict[int, dict[IPv6Network, None]] = {}
        self.seen_links: set[tuple[int, Any]] = set()
        self.links_dirty: set[int] = set()

    def __len__(self) -> int:
        return len(self.leases)

    def read(self, lines: list[str], columns: _Columns, now: float) -> Iterator[tuple[int, str]]:
        """
        Apply C{lines} (complete rows, header excluded) in order; yield (index, reason) for
        each malformed one.
        """
        reader = csv.reader(lines, quoting=csv.QUOTE_NONE, strict=False)
        apply = self._apply
        while True:
            try:
                for fields in reader:
                    if not fields:
                        continue
                    try:
                        apply(fields, columns, now)
                    except _MalformedRowError as error:
                        yield reader.line_num - 1, str(error)
                break
            except csv.Error as error:
                yield reader.line_num - 1, f"not CSV: {error}"

    def _remove(self, key: int) -> None:
        old = self.leases.pop(key, None)
        if old is not None:
            group = old[3]
            self.members[group].remove(key)
            self.dirty.add(group)

    def _apply(self, fields: list[str], c: _Columns, now: float) -> None:
        if len(fields) != c.count:
            raise _MalformedRowError(f"{len(fields)} fields where the header has {c.count}")
        try:
            address = parse_address(fields[c.address].strip())
            valid = int(fields[c.valid])
            expire = int(fields[c.expire])
            subnet = int(fields[c.subnet])
            state = int(fields[c.state]) if c.state >= 0 else STATE_DEFAULT
        except ValueError as error:
            raise _MalformedRowError(str(error)) from None
        key = int(address)
        if valid <= 0 or state != STATE_DEFAULT or expire <= now:
            self._remove(key)
            return
        try:
            pref = int(fields[c.pref])
            lease_type = int(fields[c.lease_type])
            prefix_len = int(fields[c.prefix_len])
            duid = bytes.fromhex(fields[c.duid].replace(":", ""))
            item = lease_item(address, lease_type, prefix_len, pref, valid)
        except ValueError as error:  # KeaLeaseError included
            raise _MalformedRowError(str(error)) from None
        text = fields[c.user_context] if c.user_context >= 0 else ""
        cache = self.relay_cache
        info = cache.get(text)
        if info is None:
            try:
                info = relay_info(unescape(text))
            except KeaLeaseError as error:
                raise _MalformedRowError(str(error)) from None
            if len(cache) >= _RELAY_CACHE_SIZE:
                cache.clear()
            cache[text] = info
        members = self.members.get((subnet, duid))
        if members is None:
            try:
                client_duid(duid)
            except KeaLeaseError as error:
                raise _MalformedRowError(str(error)) from None
            group: _Group = (subnet, duid)
            members = self.members[group] = [group]
        else:
            group = members[0]  # type: ignore[assignment]
        leases = self.leases
        old = leases.get(key)
        leases[key] = (item, expire - valid, info, group)
        if old is None:
            members.append(key)
        elif old[3] != group:
            self.members[old[3]].remove(key)
            self.dirty.add(old[3])
            members.append(key)
        self.dirty.add(group)
        if self.derive_links:
            self._derive(subnet, info, address if lease_type != LEASE_TYPE_PD else None)

    def _derive(self, subnet: int, info: RelayInfo, address: IPv6Address | None) -> None:
        seen = self.seen_links
        link_address = info.link_address
        if link_address is not None and (subnet, link_address) not in seen:
            seen.add((subnet, link_address))
            self.derived.setdefault(subnet, {})[IPv6Network(link_address)] = None
            self.links_dirty.add(subnet)
        if address is not None:
            block = int(address) >> 64
            if (subnet, block) not in seen:
                seen.add((subnet, block))
                network = IPv6Network((block << 64, 64))
                self.derived.setdefault(subnet, {})[network] = None
                self.links_dirty.add(subnet)

    def flush(
        self,
        index: MemoryBindingStore,
        link_id: Callable[[int], str],
        gone: Iterable[_Group] = (),
    ) -> None:
        """
        Rebuild the changed groups' bindings into C{index}; also remove the bindings of the
        groups in C{gone} that this table does not hold.
        """
        leases = self.leases
        members = self.members
        for group in gone:
            if group not in members:
                self.dirty.add(group)
        for group in self.dirty:
            subnet, duid_octets = group
            link = link_id(subnet)
            key: BindingKey = (link, duid_octets)
            keys = members.get(group)
            old = index.get(key)
            if keys is None or len(keys) < 2:
                members.pop(group, None)
                if old is not None:
                    index.remove(key)
                continue
            duid = old.client_id if old is not None else Duid(duid_octets)
            binding = assemble_binding(
                duid,
                link,
                [leases[address][:3] for address in keys[1:]],  # type: ignore[index]
            )
            if binding is None:
                index.remove(key)
            elif binding != old:
                index.put(binding)
        self.dirty.clear()
        for subnet in self.links_dirty:
            index.add_link(Link(link_id(subnet), tuple(sorted(self.derived[subnet]))))
        self.links_dirty.clear()


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


@implementer(IBindingStore)
class KeaCsvStore:
    """
    Bindings from Kea's memfile lease file, kept in a L{MemoryBindingStore} and followed
    live (see the module docstring for the rules).

    Call L{load} once, then L{start} to follow the file; L{open_store_uri} does both.

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
        self._index = MemoryBindingStore(clock=reactor)
        self._link_ids: dict[int, str] = {}
        if links is not None:
            for subnet_id, link in links.items():
                self._index.add_link(link)
                self._link_ids[subnet_id] = link.link_id
        self._table = _LeaseTable(derive_links=links is None)
        self._followed: _FollowedFile | None = None
        self._poller: LoopingCall | None = None
        self._closed = False
        self._warned_subnets: set[int] = set()
        #: Number of full reloads done since L{load} (LFC rotations do not count).
        self.reloads = 0

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
        table = _LeaseTable(derive_links=self._configured is None)
        # A bulk load allocates millions of objects and frees none: the cyclic garbage
        # collector would rescan the growing heap again and again (quadratic time).
        collecting = gc.isenabled()
        gc.disable()
        try:
            self._followed = self._load_set(table)
            previous = self._table
            table.flush(self._index, self._link_id, gone=previous.members)
            for subnet in set(previous.derived) - set(table.derived):
                self._index.remove_link(self._link_id(subnet))
            self._table = table
        finally:
            if collecting:
                gc.enable()
        if self._followed is None:
            log.warn("{path} does not exist yet; waiting for Kea to create it", path=str(self.path))
        log.info(
            "{name}: {leases} active leases, {bindings} bindings",
            name=self.name,
            leases=len(table),
            bindings=len(self._index),
        )

    def start(self) -> None:
        """Poll the lease file every C{interval} seconds until L{close}."""
        if self._poller is None and not self._closed:
            self._poller = LoopingCall(self._poll_logged)
            self._poller.clock = self._reactor
            self._poller.start(self._interval, now=False).addErrback(
                lambda failure: log.failure("{name}: following stopped", failure, name=self.name)
            )

    def _poll_logged(self) -> None:
        # One failed poll (an unreadable file, a disk error) must not stop the following.
        try:
            self.poll()
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
        """Apply what changed in the lease file since the last poll (the live follow)."""
        if self._closed:
            return
        table = self._table
        now = self._now()
        followed = self._followed
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            # Kea is between renaming its lease file and creating the next one.
            if followed is not None:
                self._read_file(table, followed, now, final=False)
            table.flush(self._index, self._link_id)
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
        table.flush(self._index, self._link_id)

    def _reload(self) -> None:
        self.reloads += 1
        log.info("{path} was replaced or rewritten: reloading", path=str(self.path))
        self.load()

    # IBindingStore

    def fetch(
        self, query: BindingQuery, resume_after: BindingKey | None, limit: int
    ) -> Deferred[BindingPage]:
        """The next page of matching active bindings (see L{IBindingStore.fetch})."""
        return self._index.fetch(query, resume_after, limit)

    def find_link(self, address: IPv6Address) -> Deferred[Link | None]:
        """The link whose prefixes contain C{address} (see the module docstring)."""
        return self._index.find_link(address)

    def get_link(self, link_id: str) -> Deferred[Link | None]:
        """The link with id C{link_id}, or C{None}."""
        return self._index.get_link(link_id)

    def links(self) -> list[Link]:
        """The links known, ordered by id."""
        return self._index.links()

    def bindings(self) -> Iterator[Binding]:
        """Every binding held (expired ones included), in key order."""
        return self._index.bindings()

    def __len__(self) -> int:
        return len(self._index)

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
