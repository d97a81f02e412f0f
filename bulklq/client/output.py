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
import time
from collections.abc import Callable
from functools import lru_cache
from ipaddress import IPv6Address
from typing import IO

from ..model import AddressLease, Binding, PrefixLease
from ._decode import INFINITE_LIFETIME
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


def _address_item(cltt: int, lease: AddressLease) -> str:
    """One element of a jsonl line's C{addresses} list."""
    valid = lease.valid_lifetime
    text = _inet_ntop(_AF_INET6, lease.address._ip.to_bytes(16, "big"))  # type: ignore[attr-defined]
    if "." in text:
        text = str(lease.address)
    return (
        f'{{"address":"{text}","preferred_lifetime":{lease.preferred_lifetime},'
        f'"valid_lifetime":{valid},'
        f'"expires":{"null" if valid == INFINITE_LIFETIME else cltt + valid}}}'
    )


def _prefix_item(cltt: int, lease: PrefixLease) -> str:
    """One element of a jsonl line's C{prefixes} list."""
    valid = lease.valid_lifetime
    network = lease.prefix
    text = _inet_ntop(_AF_INET6, network.network_address._ip.to_bytes(16, "big"))  # type: ignore[attr-defined]
    if "." in text:
        text = str(network.network_address)
    return (
        f'{{"prefix":"{text}/{network.prefixlen}",'
        f'"preferred_lifetime":{lease.preferred_lifetime},"valid_lifetime":{valid},'
        f'"expires":{"null" if valid == INFINITE_LIFETIME else cltt + valid}}}'
    )


def _jsonl_line(binding: Binding) -> str:
    """
    One compact JSON line, built directly: the same text as C{json.dumps} of
    L{binding_to_json} would give. Only the link id can hold arbitrary text: it alone is
    escaped (by C{json.dumps}, cached); DUIDs, addresses and numbers need no escaping.
    """
    if binding.relay_data is not None:
        return json.dumps(binding_to_json(binding), separators=(",", ":")) + "\n"
    cltt = binding.cltt
    addresses = binding.addresses
    prefixes = binding.prefixes
    return (
        f'{{"client_id":"{binding.client_id.raw.hex(":")}",'
        f'"link":{_json_string(binding.link_id)},"cltt":{cltt},"addresses":['
        + (
            _address_item(cltt, addresses[0])
            if len(addresses) == 1
            else ",".join([_address_item(cltt, lease) for lease in addresses])
        )
        + '],"prefixes":['
        + (
            _prefix_item(cltt, prefixes[0])
            if len(prefixes) == 1
            else ",".join([_prefix_item(cltt, lease) for lease in prefixes])
        )
        + "]}\n"
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
        addresses = binding.addresses
        prefixes = binding.prefixes
        if binding.relay_data is None and len(addresses) == 1 and len(prefixes) == 1:
            cltt = binding.cltt
            # The usual binding (one address, one prefix) in one expression: what
            # _address_item and _prefix_item give, without their calls and repeated lookups.
            (lease,) = addresses
            (delegated,) = prefixes
            address = lease.address
            text = _inet_ntop(_AF_INET6, address._ip.to_bytes(16, "big"))  # type: ignore[attr-defined]
            if "." in text:
                text = str(address)
            network = delegated.prefix
            prefix = network.network_address
            length = network._prefixlen  # type: ignore[attr-defined]
            prefix_text = _inet_ntop(_AF_INET6, prefix._ip.to_bytes(16, "big"))  # type: ignore[attr-defined]
            if "." in prefix_text:
                prefix_text = str(prefix)
            valid = lease.valid_lifetime
            prefix_valid = delegated.valid_lifetime
            link = binding.link_id
            if link is not self._link:
                self._link = link
                self._link_text = _json_string(link)
            line = (
                f'{{"client_id":"{binding.client_id.raw.hex(":")}",'
                f'"link":{self._link_text},"cltt":{cltt},"addresses":['
                f'{{"address":"{text}","preferred_lifetime":{lease.preferred_lifetime},'
                f'"valid_lifetime":{valid},'
                f'"expires":{"null" if valid == INFINITE_LIFETIME else cltt + valid}}}'
                f'],"prefixes":[{{"prefix":"{prefix_text}/{length}",'
                f'"preferred_lifetime":{delegated.preferred_lifetime},'
                f'"valid_lifetime":{prefix_valid},"expires":'
                f"{'null' if prefix_valid == INFINITE_LIFETIME else cltt + prefix_valid}}}]}}\n"
            )
        else:
            line = _jsonl_line(binding)
        lines = self._lines
        lines.append(line)
        if len(lines) >= self._batch:
            self._lines = []
            self.out.write("".join(lines))

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
