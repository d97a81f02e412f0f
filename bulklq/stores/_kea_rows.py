"""
Kea memfile lease rows parsed into the compact columns the Kea store applies.

L{RowParser.parse} turns a chunk of complete rows of a lease file into L{ParsedRows}: per
row that is not malformed, the address as a number and either the lease (its shape, expiry,
subnet, client DUID and relay summary) or its removal; per malformed row, its reason. It
depends on nothing but the text (and "now"), so the same parse runs in the store's process
or, during a load, in a child process (L{bulklq.stores._parallel_load}), whose L{ParsedRows}
travel back as plain values (L{ParsedRows.plain}, L{ParsedRows.from_plain}).
"""

from __future__ import annotations

import csv
from socket import AF_INET6, inet_pton
from typing import Any

import attrs

from ..wire.duid import duid_problem
from .kea_leases import (
    LEASE_TYPE_PD,
    NO_RELAY_SUMMARY,
    STATE_DEFAULT,
    KeaLeaseError,
    RelaySummary,
    client_duid,
    escaped_relay_summary,
    lease_item,
    parse_address,
    shared_summary,
)

__all__ = ["REQUIRED_COLUMNS", "Columns", "ParsedRows", "RowParser", "split_lines"]

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
#: Distinct user contexts, DUID texts and shape texts remembered while parsing (the rows of
#: one transaction repeat them).
CACHE_SIZE = 4096

#: What many leases share: (lease type, prefix length, preferred and valid lifetimes).
Shape = tuple[int, int, int, int]


@attrs.frozen
class Columns:
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
    def from_header(cls, fields: list[str]) -> Columns:
        """
        The columns named by a header's fields.

        @raise ValueError: if a required column is missing.
        """
        names = [field.strip() for field in fields]
        missing = [name for name in REQUIRED_COLUMNS if name not in names]
        if missing:
            raise ValueError(f"header lacks {', '.join(missing)}: not a Kea DHCPv6 lease file")
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


def split_lines(data: bytes) -> tuple[list[str], bool]:
    """
    The lines of C{data} (complete lines without their newlines, or a last line without
    one), carriage returns at their ends removed, and whether any line had one.
    """
    text = data.decode("utf-8", "replace")
    lines = text.split("\n")
    returns = "\r" in text
    if returns:
        lines = [line.rstrip("\r") for line in lines]
    return lines, returns


def _row_problem(fields: list[str], c: Columns) -> str:
    """Why the address, lifetime, expiry, subnet or state column of a row is malformed."""
    try:
        parse_address(fields[c.address].strip())
        for position in (c.valid, c.expire, c.subnet, c.state):
            if position >= 0:
                int(fields[position])
    except ValueError as error:
        return str(error)
    return "malformed row"  # pragma: no cover - the fast path and this one agree


@attrs.define
class ParsedRows:
    """
    The rows of a chunk, parsed: one item in each list per row that is not malformed, in
    the order of the rows.

    @ivar addresses: the lease's address (or prefix) as a number.
    @ivar shapes: the lease's (type, prefix length, preferred, valid) tuple, shared by the
        leases with the same values; C{None} when the row removes the address's lease.
    @ivar expires: its expiry (Unix seconds).
    @ivar subnets: its subnet id.
    @ivar duids: its client's DUID octets; C{None} when the client is that of the lease
        row before in the chunk.
    @ivar relays: its relay summary, one object for the rows of one user context.
    @ivar problems: (index of the line, reason) of each malformed row.
    """

    addresses: list[int] = attrs.Factory(list)
    shapes: list[Shape | None] = attrs.Factory(list)
    expires: list[int] = attrs.Factory(list)
    subnets: list[int] = attrs.Factory(list)
    duids: list[bytes | None] = attrs.Factory(list)
    relays: list[RelaySummary] = attrs.Factory(list)
    problems: list[tuple[int, str]] = attrs.Factory(list)

    def plain(self) -> tuple[Any, ...]:
        """These rows as plain values (for C{marshal}): relays as indexes into a table."""
        table: list[tuple[Any, ...]] = []
        positions: dict[int, int] = {}
        indexes: list[int] = []
        add = indexes.append
        last = None
        position = 0
        for relay in self.relays:
            if relay is not last:
                last = relay
                found = positions.get(id(relay))
                if found is None:
                    found = positions[id(relay)] = len(table)
                    table.append(tuple(relay))
                position = found
            add(position)
        return (
            self.addresses,
            self.shapes,
            self.expires,
            self.subnets,
            self.duids,
            table,
            indexes,
            self.problems,
        )

    @classmethod
    def from_plain(cls, value: Any) -> ParsedRows:
        """
        The rows L{plain} gave.

        @raise ValueError: if C{value} is not such a value.
        """
        try:
            addresses, shapes, expires, subnets, duids, table, indexes, problems = value
            relays_of = list(map(shared_summary, table))
            relays = list(map(relays_of.__getitem__, indexes))
        except (TypeError, ValueError, IndexError) as error:
            raise ValueError(f"malformed parsed rows: {error}") from None
        count = len(addresses)
        if (
            not all(
                type(column) is list and len(column) == count
                for column in (addresses, shapes, expires, subnets, duids, relays)
            )
            or type(problems) is not list
        ):
            raise ValueError("malformed parsed rows: columns of different lengths")
        return cls(addresses, shapes, expires, subnets, duids, relays, problems)


class RowParser:
    """
    Parses lease rows (L{parse}), remembering what consecutive rows repeat: user contexts,
    DUIDs and shapes.
    """

    def __init__(self) -> None:
        #: escaped user_context -> its summary (the rows of one transaction repeat it)
        self.relay_cache: dict[str, RelaySummary] = {}
        #: DUID text -> octets, for valid DUIDs (a client's rows repeat it)
        self.duid_cache: dict[str, bytes] = {}
        #: one shape object per distinct (type, length, lifetimes), shared by the leases
        self.shapes: dict[Shape, Shape] = {}
        #: the texts of a shape's columns (type, length, preferred, valid) -> the shape
        self.shapes_by_text: dict[tuple[str, str, str, str], Shape] = {}

    def parse(
        self, lines: list[str], columns: Columns, now: float, returns: bool = True
    ) -> ParsedRows:
        """
        Parse C{lines} (complete rows, header excluded). A row with valid lifetime 0, a
        state other than 0 or an expiry not after C{now} removes its address's lease.
        C{returns=False} says that no line holds a carriage return.
        """
        c = columns
        count = c.count
        i_address, i_duid, i_valid, i_expire = c.address, c.duid, c.valid, c.expire
        i_subnet, i_pref, i_type, i_plen = c.subnet, c.pref, c.lease_type, c.prefix_len
        i_state, i_context = c.state, c.user_context
        relay_cache = self.relay_cache
        duid_cache = self.duid_cache
        shape_of = self.shapes.setdefault
        shapes_by_text = self.shapes_by_text
        shape_by_text = shapes_by_text.get
        pton = inet_pton
        from_bytes = int.from_bytes
        rows = ParsedRows()
        add_address = rows.addresses.append
        add_shape = rows.shapes.append
        add_expire = rows.expires.append
        add_subnet = rows.subnets.append
        add_duid = rows.duids.append
        add_relay = rows.relays.append
        problem = rows.problems.append
        # The rows of one transaction follow each other: their client and user context
        # are those of the row before.
        last_duid = last_context = None
        last_subnet = last_expire = -1
        relay = NO_RELAY_SUMMARY
        for number, line in enumerate(lines):
            if not line:
                continue
            if returns and "\r" in line:
                # csv refuses a carriage return inside a row: keep its verdict.
                try:
                    fields = next(csv.reader([line], quoting=csv.QUOTE_NONE, strict=False))
                except csv.Error as error:
                    problem((number, f"not CSV: {error}"))
                    continue
            else:
                fields = line.split(",")
            if len(fields) != count:
                problem((number, f"{len(fields)} fields where the header has {count}"))
                continue
            try:
                address = from_bytes(pton(AF_INET6, fields[i_address].strip()))
                valid = int(fields[i_valid])
                expire = int(fields[i_expire])
                subnet = int(fields[i_subnet])
                state = int(fields[i_state]) if i_state >= 0 else STATE_DEFAULT
            except (OSError, ValueError):
                problem((number, _row_problem(fields, c)))
                continue
            if valid <= 0 or state != STATE_DEFAULT or expire <= now:
                add_address(address)
                add_shape(None)
                add_expire(0)
                add_subnet(0)
                add_duid(None)
                add_relay(NO_RELAY_SUMMARY)
                continue
            if expire == last_expire:
                expire = last_expire  # one number object for the leases of a transaction
            else:
                last_expire = expire
            duid_text = fields[i_duid]
            try:
                # Few distinct shapes: found by their text, parsed once.
                shape_text = (fields[i_type], fields[i_plen], fields[i_pref], fields[i_valid])
                shape = shape_by_text(shape_text)
                if shape is None:
                    pref = int(fields[i_pref])
                    lease_type = int(fields[i_type])
                    prefix_len = int(fields[i_plen])
                    shape = (lease_type, prefix_len, pref, valid)
                    shape = shape_of(shape, shape)
                    if len(shapes_by_text) >= CACHE_SIZE:
                        shapes_by_text.clear()
                    shapes_by_text[shape_text] = shape
                lease_type, prefix_len = shape[0], shape[1]
                if duid_text != last_duid or subnet != last_subnet:
                    duid = duid_cache.get(duid_text)
                    if duid is None:
                        duid = bytes.fromhex(duid_text.replace(":", ""))
                        if duid_problem(duid) is not None:
                            client_duid(duid)  # raises, with its message
                        if len(duid_cache) >= CACHE_SIZE:
                            duid_cache.clear()
                        duid_cache[duid_text] = duid
                    client: bytes | None = duid
                else:
                    client = None
                if lease_type and (
                    lease_type != LEASE_TYPE_PD
                    or not 0 <= prefix_len <= 128
                    or address & ((1 << (128 - prefix_len)) - 1)
                ):
                    lease_item(
                        parse_address(fields[i_address].strip()), lease_type, prefix_len, 0, 0
                    )
            except ValueError as error:  # KeaLeaseError included
                problem((number, str(error)))
                continue
            text = fields[i_context] if i_context >= 0 else ""
            if text != last_context:
                found = relay_cache.get(text)
                if found is None:
                    try:
                        found = escaped_relay_summary(text)
                    except KeaLeaseError as error:
                        problem((number, str(error)))
                        continue
                    if len(relay_cache) >= CACHE_SIZE:
                        relay_cache.clear()
                    relay_cache[text] = found
                relay = found
                last_context = text
            if client is not None:
                last_duid = duid_text
                last_subnet = subnet
            add_address(address)
            add_shape(shape)
            add_expire(expire)
            add_subnet(subnet)
            add_duid(client)
            add_relay(relay)
        return rows
