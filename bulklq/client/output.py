"""
Writing bindings for people and programs: the formats of C{bulklq query --format}.

Every format is a L{BindingWriter}: C{start()}, then C{binding()} for each binding (as it
arrives, or merged at the end), then C{finish(result)}. Machine formats (C{json},
C{jsonl}, C{csv}) carry the model's values: C{cltt} (Unix seconds) and the lifetimes
granted at C{cltt}, plus each lease's expiry time (C{null} when infinite). The C{table}
shows what is left of each lifetime at the time it is printed. C{routes} prints the
C{ip -6 route replace} commands that restore delegated-prefix routes on a relay.
"""

from __future__ import annotations

import csv
import enum
import json
import socket
import struct
import time
from collections.abc import Callable
from functools import lru_cache
from ipaddress import IPv6Address
from typing import IO

from ..model import AddressLease, Binding, PrefixLease
from ._decode import (
    _DUID_MINIMUM,
    _MASKS,
    INFINITE_LIFETIME,
    _granted_top,
    _unpack_data_head,
)
from ._result import QueryResult

__all__ = [
    "FORMATS",
    "BindingWriter",
    "CsvWriter",
    "JsonLinesWriter",
    "JsonWriter",
    "NextHop",
    "RoutesWriter",
    "TableWriter",
    "binding_to_json",
    "format_address",
    "next_hop",
]

_AF_INET6 = socket.AF_INET6
_inet_ntop = socket.inet_ntop


def format_address(address: IPv6Address) -> str:
    """C{str(address)} (RFC 5952 text), computed faster for the common case."""
    text = _inet_ntop(_AF_INET6, address._ip.to_bytes(16, "big"))  # type: ignore[attr-defined]
    return text if "." not in text else str(address)


# The usual CLIENT_DATA after its CLIENTID (see JsonLinesWriter.frame): IAADDR and IAPREFIX,
# IAADDR alone or IAPREFIX alone, then CLT_TIME; each option's code and length as one u32.
_unpack_address_prefix = struct.Struct("!I16sIIIIIB16sII").unpack_from
_unpack_address = struct.Struct("!I16sIIII").unpack_from
_unpack_prefix = struct.Struct("!IIIB16sII").unpack_from
_ADDRESS_PREFIX_SIZE = 28 + 29 + 8
_ADDRESS_SIZE = 28 + 8
_PREFIX_SIZE = 29 + 8
_IAADDR_HEAD = (5 << 16) | 24
_IAPREFIX_HEAD = (26 << 16) | 25
_CLT_TIME_HEAD = (46 << 16) | 4


@lru_cache(maxsize=256)
def _json_string(text: str) -> str:
    return json.dumps(text)


def _expiry(cltt: int, lifetime: int) -> int | None:
    return None if lifetime == INFINITE_LIFETIME else cltt + lifetime


def binding_to_json(binding: Binding) -> dict[str, object]:
    """A binding as JSON-ready values (the C{json} format's element; C{jsonl}'s line)."""
    cltt = binding.cltt
    value: dict[str, object] = {
        "client_id": str(binding.client_id),
        "link": binding.link_id,
        "cltt": cltt,
        "addresses": [
            {
                "address": format_address(lease.address),
                "preferred_lifetime": lease.preferred_lifetime,
                "valid_lifetime": lease.valid_lifetime,
                "expires": _expiry(cltt, lease.valid_lifetime),
            }
            for lease in binding.addresses
        ],
        "prefixes": [
            {
                "prefix": f"{format_address(lease.prefix.network_address)}/"
                f"{lease.prefix.prefixlen}",
                "preferred_lifetime": lease.preferred_lifetime,
                "valid_lifetime": lease.valid_lifetime,
                "expires": _expiry(cltt, lease.valid_lifetime),
            }
            for lease in binding.prefixes
        ],
    }
    if binding.relay_data is not None:
        value["relay_ids"] = [str(duid) for duid in binding.relay_ids]
        value["remote_ids"] = [str(remote) for remote in binding.remote_ids]
        value["relay_data"] = binding.relay_data.encode_data().hex()
    return value


# The jsonl line, as text. Three builders hold the layout (json.dumps of binding_to_json,
# compact, in its key order) and every jsonl line is made by them, whether from a Binding
# (JsonLinesWriter.binding) or straight from a frame's octets (JsonLinesWriter.frame):
# _line around _address_json/_prefix_json items, and _usual_line, the same for the usual
# binding (one address, one prefix) in one expression. Only the link id can hold arbitrary
# text: it alone is escaped (by json.dumps, cached); DUIDs, addresses and numbers need none.


def _address_json(cltt: int, text: str, preferred: int, valid: int) -> str:
    """One element of a jsonl line's C{addresses} list."""
    return (
        f'{{"address":"{text}","preferred_lifetime":{preferred},"valid_lifetime":{valid},'
        f'"expires":{"null" if valid == INFINITE_LIFETIME else cltt + valid}}}'
    )


def _prefix_json(cltt: int, text: str, length: int, preferred: int, valid: int) -> str:
    """One element of a jsonl line's C{prefixes} list."""
    return (
        f'{{"prefix":"{text}/{length}","preferred_lifetime":{preferred},'
        f'"valid_lifetime":{valid},'
        f'"expires":{"null" if valid == INFINITE_LIFETIME else cltt + valid}}}'
    )


def _line(client: str, link: str, cltt: int, addresses: str, prefixes: str) -> str:
    """A jsonl line from the client's hex DUID, the link's JSON text and the list items."""
    return (
        f'{{"client_id":"{client}","link":{link},"cltt":{cltt},'
        f'"addresses":[{addresses}],"prefixes":[{prefixes}]}}\n'
    )


def _usual_line(  # noqa: PLR0917
    client: str,
    link: str,
    cltt: int,
    address: str,
    preferred: int,
    valid: int,
    prefix: str,
    length: int,
    prefix_preferred: int,
    prefix_valid: int,
) -> str:
    """
    C{_line(client, link, cltt, _address_json(...), _prefix_json(...))} in one expression:
    the line of the usual binding, one address and one delegated prefix.
    """
    return (
        f'{{"client_id":"{client}","link":{link},"cltt":{cltt},"addresses":['
        f'{{"address":"{address}","preferred_lifetime":{preferred},"valid_lifetime":{valid},'
        f'"expires":{"null" if valid == INFINITE_LIFETIME else cltt + valid}}}'
        f'],"prefixes":[{{"prefix":"{prefix}/{length}","preferred_lifetime":{prefix_preferred},'
        f'"valid_lifetime":{prefix_valid},'
        f'"expires":{"null" if prefix_valid == INFINITE_LIFETIME else cltt + prefix_valid}}}'
        "]}\n"
    )


def _address_item(cltt: int, lease: AddressLease) -> str:
    return _address_json(
        cltt, format_address(lease.address), lease.preferred_lifetime, lease.valid_lifetime
    )


def _prefix_item(cltt: int, lease: PrefixLease) -> str:
    network = lease.prefix
    return _prefix_json(
        cltt,
        format_address(network.network_address),
        network.prefixlen,
        lease.preferred_lifetime,
        lease.valid_lifetime,
    )


def _jsonl_line(binding: Binding, link: str) -> str:
    """
    The jsonl line of any binding (C{link}: the link id's JSON text): the same text as
    C{json.dumps} of L{binding_to_json} gives.
    """
    if binding.relay_data is not None:
        return json.dumps(binding_to_json(binding), separators=(",", ":")) + "\n"
    cltt = binding.cltt
    return _line(
        binding.client_id.raw.hex(":"),
        link,
        cltt,
        ",".join([_address_item(cltt, lease) for lease in binding.addresses]),
        ",".join([_prefix_item(cltt, lease) for lease in binding.prefixes]),
    )


def _servers_json(result: QueryResult) -> list[dict[str, object]]:
    return [
        {
            "server": server.server,
            "status": server.status.value,
            "status_code": server.status_code,
            "status_message": server.status_message,
            "server_duid": None if server.server_duid is None else str(server.server_duid),
            "received": server.received,
            "discarded": server.discarded,
            "attempts": server.attempts,
            "error": server.error,
        }
        for server in result.servers
    ]


class BindingWriter:
    """
    Base of the output formats: writes to C{out} (a text stream).

    @cvar streams: whether bindings can be written as they arrive (C{json} cannot).
    """

    streams = True

    def __init__(self, out: IO[str]) -> None:
        self.out = out

    def start(self) -> None:
        """Write what comes before the first binding."""

    def binding(self, binding: Binding) -> None:
        """Write one binding."""
        raise NotImplementedError

    def finish(self, result: QueryResult | None) -> None:
        """Write what comes after the last binding (C{result} when the query ended)."""


class JsonLinesWriter(BindingWriter):
    """
    C{jsonl}: one JSON object per binding per line (L{binding_to_json}).

    With C{batch} above 1, lines are collected and written C{batch} at a time (one
    C{write} instead of one per binding), and the rest by L{finish}: for output that is
    buffered anyway (a pipe, a file), not for a terminal someone watches.

    Besides L{binding}, L{frame} writes the line of a LEASEQUERY-DATA frame of the usual
    shape straight from its octets, without building a L{Binding}: a streaming requestor
    offers it each frame first (C{on_frame}, see L{BulkLeasequeryClientProtocol.query}).
    Both write the same text for the same binding.
    """

    def __init__(self, out: IO[str], batch: int = 1) -> None:
        super().__init__(out)
        self._batch = batch
        self._lines: list[str] = []
        # The last link id and its JSON text: a query's bindings share one link id object.
        self._link: str | None = None
        self._link_text = ""

    def binding(self, binding: Binding) -> None:
        """Write the binding's line (or add it to the batch)."""
        link = binding.link_id
        if link is not self._link:
            self._link = link
            self._link_text = _json_string(link)
        addresses = binding.addresses
        prefixes = binding.prefixes
        if binding.relay_data is None and len(addresses) == 1 and len(prefixes) == 1:
            (lease,) = addresses
            (delegated,) = prefixes
            address = lease.address
            text = _inet_ntop(_AF_INET6, address._ip.to_bytes(16, "big"))  # type: ignore[attr-defined]
            if "." in text:
                text = str(address)
            network = delegated.prefix
            prefix = network.network_address
            prefix_text = _inet_ntop(_AF_INET6, prefix._ip.to_bytes(16, "big"))  # type: ignore[attr-defined]
            if "." in prefix_text:
                prefix_text = str(prefix)
            line = _usual_line(
                binding.client_id.raw.hex(":"),
                self._link_text,
                binding.cltt,
                text,
                lease.preferred_lifetime,
                lease.valid_lifetime,
                prefix_text,
                network._prefixlen,  # type: ignore[attr-defined]
                delegated.preferred_lifetime,
                delegated.valid_lifetime,
            )
        else:
            line = _jsonl_line(binding, self._link_text)
        lines = self._lines
        lines.append(line)
        if len(lines) >= self._batch:
            self._lines = []
            self.out.write("".join(lines))

    def frame(self, data: bytes, start: int, end: int, received_at: int, link: str) -> bool:
        """
        Write the line of the LEASEQUERY-DATA message C{data[start:end]} (type and
        transaction-id already matched to a query by the caller) when it holds exactly one
        CLIENT_DATA of the usual shape: a valid CLIENTID, then one IAADDR and at most one
        IAPREFIX without sub-options, or one IAPREFIX alone, then CLT_TIME, nothing else.

        The line is what L{binding} writes for the binding the requestor would decode from
        the frame received at C{received_at} (Unix seconds) for a query whose bindings are
        on C{link} (the link id). C{False} (nothing written) for any other frame: the caller
        then decodes it as usual, which applies every check (R12) to it.
        """
        if end - start < 16:
            return False
        data_code, data_length, id_code, length, duid_type = _unpack_data_head(data, start + 4)
        if (
            data_code != 45
            or data_length != end - start - 8
            or id_code != 1
            or not 3 <= length <= 130
        ):
            return False
        if duid_type == 4:
            if length != 18:
                return False
        elif length < _DUID_MINIMUM.get(duid_type, 3):
            return False
        rest = start + 12 + length
        size = end - rest
        if size == _ADDRESS_PREFIX_SIZE:
            (
                address_head,
                address,
                preferred,
                valid,
                prefix_head,
                prefix_preferred,
                prefix_valid,
                prefix_length,
                prefix,
                clt_head,
                clt_time,
            ) = _unpack_address_prefix(data, rest)
            if (
                address_head != _IAADDR_HEAD
                or prefix_head != _IAPREFIX_HEAD
                or clt_head != _CLT_TIME_HEAD
                or prefix_length > 128
            ):
                return False
        elif size == _ADDRESS_SIZE:
            address_head, address, preferred, valid, clt_head, clt_time = _unpack_address(
                data, rest
            )
            if address_head != _IAADDR_HEAD or clt_head != _CLT_TIME_HEAD:
                return False
            prefix = b""
        elif size == _PREFIX_SIZE:
            (
                prefix_head,
                prefix_preferred,
                prefix_valid,
                prefix_length,
                prefix,
                clt_head,
                clt_time,
            ) = _unpack_prefix(data, rest)
            if prefix_head != _IAPREFIX_HEAD or clt_head != _CLT_TIME_HEAD or prefix_length > 128:
                return False
            address = b""
        else:
            return False
        if link is not self._link:
            self._link = link
            self._link_text = _json_string(link)
        cltt = received_at - clt_time
        ceiling = INFINITE_LIFETIME - 1
        if address:
            text = _inet_ntop(_AF_INET6, address)
            if "." in text:
                text = str(IPv6Address(address))
            preferred += clt_time
            if preferred >= ceiling:
                preferred = _granted_top(preferred - clt_time)
            valid += clt_time
            if valid >= ceiling:
                valid = _granted_top(valid - clt_time)
        if prefix:
            value = int.from_bytes(prefix, "big")
            masked = value & _MASKS[prefix_length]
            if masked != value:
                prefix = masked.to_bytes(16, "big")
            prefix_text = _inet_ntop(_AF_INET6, prefix)
            if "." in prefix_text:
                prefix_text = str(IPv6Address(prefix))
            prefix_preferred += clt_time
            if prefix_preferred >= ceiling:
                prefix_preferred = _granted_top(prefix_preferred - clt_time)
            prefix_valid += clt_time
            if prefix_valid >= ceiling:
                prefix_valid = _granted_top(prefix_valid - clt_time)
            if address:
                line = _usual_line(
                    data[start + 12 : rest].hex(":"),
                    self._link_text,
                    cltt,
                    text,
                    preferred,
                    valid,
                    prefix_text,
                    prefix_length,
                    prefix_preferred,
                    prefix_valid,
                )
            else:
                line = _line(
                    data[start + 12 : rest].hex(":"),
                    self._link_text,
                    cltt,
                    "",
                    _prefix_json(cltt, prefix_text, prefix_length, prefix_preferred, prefix_valid),
                )
        else:
            line = _line(
                data[start + 12 : rest].hex(":"),
                self._link_text,
                cltt,
                _address_json(cltt, text, preferred, valid),
                "",
            )
        lines = self._lines
        lines.append(line)
        if len(lines) >= self._batch:
            self._lines = []
            self.out.write("".join(lines))
        return True

    def finish(self, result: QueryResult | None) -> None:
        """Write the lines still in the batch."""
        if self._lines:
            lines, self._lines = self._lines, []
            self.out.write("".join(lines))


class JsonWriter(BindingWriter):
    """
    C{json}: one document C{{"servers": [...], "bindings": [...]}} with each server's
    status and the merged bindings.
    """

    streams = False

    def __init__(self, out: IO[str]) -> None:
        super().__init__(out)
        self._bindings: list[dict[str, object]] = []

    def binding(self, binding: Binding) -> None:
        """Collect one binding."""
        self._bindings.append(binding_to_json(binding))

    def finish(self, result: QueryResult | None) -> None:
        """Write the document."""
        document = {
            "servers": [] if result is None else _servers_json(result),
            "bindings": self._bindings,
        }
        json.dump(document, self.out, indent=2)
        self.out.write("\n")


class CsvWriter(BindingWriter):
    """C{csv}: a header, then one row per address or prefix."""

    HEADER = (
        "client_id",
        "link",
        "cltt",
        "type",
        "lease",
        "preferred_lifetime",
        "valid_lifetime",
        "expires",
    )

    def __init__(self, out: IO[str]) -> None:
        super().__init__(out)
        self._writer = csv.writer(out, lineterminator="\n")

    def start(self) -> None:
        """Write the header."""
        self._writer.writerow(self.HEADER)

    def binding(self, binding: Binding) -> None:
        """Write the binding's rows."""
        duid = str(binding.client_id)
        cltt = binding.cltt
        rows = [
            (
                duid,
                binding.link_id,
                cltt,
                "address",
                format_address(lease.address),
                lease.preferred_lifetime,
                lease.valid_lifetime,
                _expiry(cltt, lease.valid_lifetime) or "",
            )
            for lease in binding.addresses
        ] + [
            (
                duid,
                binding.link_id,
                cltt,
                "prefix",
                f"{format_address(lease.prefix.network_address)}/{lease.prefix.prefixlen}",
                lease.preferred_lifetime,
                lease.valid_lifetime,
                _expiry(cltt, lease.valid_lifetime) or "",
            )
            for lease in binding.prefixes
        ]
        self._writer.writerows(rows)


def _left(cltt: int, lifetime: int, now: float) -> str:
    if lifetime == INFINITE_LIFETIME:
        return "infinite"
    return str(max(int(cltt + lifetime - now), 0))


class TableWriter(BindingWriter):
    """
    C{table}: one line per address or prefix, with the lifetimes left now (seconds) and
    the client's last transaction time in UTC.
    """

    def __init__(self, out: IO[str], now: Callable[[], float] = time.time) -> None:
        super().__init__(out)
        self._now = now
        self._count = 0

    _LINE = "{:<42} {:<22} {:<8} {:<44} {:>10} {:>10} {}\n"

    def start(self) -> None:
        """Write the column titles."""
        self.out.write(
            self._LINE.format(
                "CLIENT-DUID", "LINK", "TYPE", "LEASE", "PREF-LEFT", "VALID-LEFT", "LAST-SEEN"
            )
        )

    def binding(self, binding: Binding) -> None:
        """Write the binding's lines."""
        self._count += 1
        now = self._now()
        seen = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(binding.cltt))
        duid = str(binding.client_id)
        for lease in binding.addresses:
            self.out.write(
                self._LINE.format(
                    duid,
                    binding.link_id,
                    "address",
                    format_address(lease.address),
                    _left(binding.cltt, lease.preferred_lifetime, now),
                    _left(binding.cltt, lease.valid_lifetime, now),
                    seen,
                )
            )
        for prefix in binding.prefixes:
            self.out.write(
                self._LINE.format(
                    duid,
                    binding.link_id,
                    "prefix",
                    str(prefix.prefix),
                    _left(binding.cltt, prefix.preferred_lifetime, now),
                    _left(binding.cltt, prefix.valid_lifetime, now),
                    seen,
                )
            )

    def finish(self, result: QueryResult | None) -> None:
        """Write the number of bindings."""
        self.out.write(f"{self._count} binding{'' if self._count == 1 else 's'}\n")


class NextHop(enum.Enum):
    """Where C{routes} takes a delegated prefix's next hop from."""

    #: The client's address (IA_NA) on the link; the relay data when it has none.
    AUTO = "auto"
    #: Only the client's address (IA_NA).
    ADDRESS = "address"
    #: Only the relay data: the peer-address of the relay hop nearest the client, i.e. the
    #: address the client sent from (usually link-local; needs C{dev}).
    RELAY = "relay"


def next_hop(binding: Binding, choice: NextHop = NextHop.AUTO) -> IPv6Address | None:
    """The next hop for C{binding}'s delegated prefixes, or C{None} (see L{NextHop})."""
    if choice is not NextHop.RELAY:
        for lease in binding.addresses:
            if lease.valid_lifetime > 0:
                return lease.address
        if choice is NextHop.ADDRESS:
            return None
    if binding.relay_data is not None:
        return binding.relay_data.relay_message.layers()[-1].peer_address
    return None


class RoutesWriter(BindingWriter):
    """
    C{routes}: C{ip -6 route replace PREFIX via NEXTHOP [dev IF]} per delegated prefix with
    valid lifetime left; anything that cannot become a route is a C{#} comment line, so the
    output can be piped to C{sh}.
    """

    def __init__(
        self,
        out: IO[str],
        device: str | None = None,
        choice: NextHop = NextHop.AUTO,
        now: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(out)
        self._device = device
        self._choice = choice
        self._now = now

    def binding(self, binding: Binding) -> None:
        """Write the binding's route lines."""
        if not binding.prefixes:
            return
        now = self._now()
        hop = next_hop(binding, self._choice)
        for lease in binding.prefixes:
            prefix = str(lease.prefix)
            if (
                lease.valid_lifetime != INFINITE_LIFETIME
                and binding.cltt + lease.valid_lifetime <= now
            ):
                self.out.write(f"# {prefix}: expired (client {binding.client_id})\n")
            elif hop is None:
                self.out.write(
                    f"# {prefix}: no next hop for client {binding.client_id} "
                    "(no address; ask for --relay-data)\n"
                )
            elif hop.is_link_local and self._device is None:
                self.out.write(f"# {prefix}: next hop {hop} is link-local: give --dev\n")
            else:
                device = f" dev {self._device}" if self._device else ""
                self.out.write(f"ip -6 route replace {prefix} via {hop}{device}\n")


#: The C{--format} names.
FORMATS = ("table", "json", "jsonl", "csv", "routes")
