"""
Bindings and links as JSON lines: one JSON object per line, UTF-8.

The C{memory:PATH} store loads this format, C{bulklq store import} reads it and
C{bulklq store export} writes it (docs/stores.md has the reference). Two kinds of line::

    {"type": "link", "id": "subnet-1", "prefixes": ["2001:db8:1::/64"]}
    {"type": "binding", "duid": "00:03:00:01:02:00:00:00:00:01", "link": "subnet-1",
     "cltt": 1700000000,
     "addresses": [{"address": "2001:db8:1::5", "preferred": 1800, "valid": 3600}],
     "prefixes": [{"prefix": "2001:db8:8000::/48", "preferred": 1800, "valid": 3600}],
     "relay": {"peer": "2001:db8:1::1",
               "hops": [{"link": "2001:db8:1::1", "peer": "fe80::1", "hop-count": 0,
                         "options": "0012000465746830..."}]},
     "options": "..."}

(a binding is one line; it is wrapped here). C{relay}, C{addresses}, C{prefixes} and
C{options} are optional; C{hops} lists the relay chain outermost first and each hop's
C{options} is the hex of its options without RELAY_MSG, as Kea stores them. C{relay-ids}
(DUID hex) and C{remote-ids} (C{ENTERPRISE:HEX}) are written only when they differ from
what the chain holds. Blank lines are ignored; anything else that is not a valid record is
an error naming the line.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from ipaddress import IPv6Address, IPv6Network
from typing import Any, TextIO, TypeVar

from ..model import AddressLease, Binding, Link, PrefixLease, relay_identities
from ..wire import (
    Duid,
    LQRelayData,
    MessageType,
    Option,
    RelayMessage,
    RelayMessageOption,
    RemoteId,
    WireError,
    decode_options,
    encode_options,
)

__all__ = [
    "MAX_LINE_LENGTH",
    "JsonlError",
    "decode_record",
    "encode_binding",
    "encode_link",
    "read_records",
    "write_records",
]

#: The longest line accepted, in characters: far above any real binding.
MAX_LINE_LENGTH = 1 << 20
_U32 = (1 << 32) - 1
_MAX_HOPS = 32


_T = TypeVar("_T")


class JsonlError(ValueError):
    """A line is not a valid record; the message names the source and line when known."""


def _hex(data: bytes) -> str:
    return data.hex()


def encode_link(link: Link) -> str:
    """One line (no newline) describing C{link}."""
    return json.dumps(
        {"type": "link", "id": link.link_id, "prefixes": [str(p) for p in link.prefixes]},
        separators=(",", ":"),
    )


def _encode_relay(relay_data: LQRelayData) -> dict[str, Any]:
    hops = []
    for layer in relay_data.relay_message.layers():
        options = [o for o in layer.options if not isinstance(o, RelayMessageOption)]
        hops.append(
            {
                "link": str(layer.link_address),
                "peer": str(layer.peer_address),
                "hop-count": layer.hop_count,
                "options": _hex(encode_options(options)),
            }
        )
    return {"peer": str(relay_data.peer_address), "hops": hops}


def encode_binding(binding: Binding) -> str:
    """One line (no newline) describing C{binding}."""
    record: dict[str, Any] = {
        "type": "binding",
        "duid": _hex(binding.client_id.raw),
        "link": binding.link_id,
        "cltt": binding.cltt,
    }
    if binding.addresses:
        record["addresses"] = [
            {
                "address": str(a.address),
                "preferred": a.preferred_lifetime,
                "valid": a.valid_lifetime,
            }
            for a in binding.addresses
        ]
    if binding.prefixes:
        record["prefixes"] = [
            {"prefix": str(p.prefix), "preferred": p.preferred_lifetime, "valid": p.valid_lifetime}
            for p in binding.prefixes
        ]
    if binding.relay_data is not None:
        record["relay"] = _encode_relay(binding.relay_data)
    relay_ids, remote_ids = relay_identities(binding.relay_data)
    if binding.relay_ids != relay_ids:
        record["relay-ids"] = [_hex(duid.raw) for duid in binding.relay_ids]
    if binding.remote_ids != remote_ids:
        record["remote-ids"] = [str(remote_id) for remote_id in binding.remote_ids]
    if binding.options:
        record["options"] = _hex(encode_options(binding.options))
    return json.dumps(record, separators=(",", ":"))


# Decoding


def _field(record: dict[str, Any], name: str, kind: type | tuple[type, ...], where: str) -> Any:
    if name not in record:
        raise JsonlError(f"{where}: missing {name!r}")
    value = record[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        expected = (
            kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        )
        raise JsonlError(f"{where}: {name!r} must be a {expected}")
    return value


def _lifetime(record: dict[str, Any], name: str, where: str) -> int:
    value: int = _field(record, name, int, where)
    if not 0 <= value <= _U32:
        raise JsonlError(f"{where}: {name!r} {value} is not 0..{_U32}")
    return value


def _only(record: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(record) - allowed
    if unknown:
        raise JsonlError(f"{where}: unknown field {sorted(unknown)[0]!r}")


def _options(text: str, where: str) -> tuple[Option, ...]:
    try:
        data = bytes.fromhex(text)
        return decode_options(data, 0, len(data), 0)
    except ValueError:
        raise JsonlError(f"{where}: options {text[:40]!r} is not hex") from None
    except WireError as error:
        raise JsonlError(f"{where}: options: {error}") from None


def _decode_link(record: dict[str, Any]) -> Link:
    _only(record, {"type", "id", "prefixes"}, "link")
    link_id: str = _field(record, "id", str, "link")
    if not link_id:
        raise JsonlError("link: 'id' is empty")
    prefixes = _field(record, "prefixes", list, f"link {link_id!r}")
    try:
        networks = tuple(IPv6Network(prefix) for prefix in prefixes)
    except (ValueError, TypeError) as error:
        raise JsonlError(f"link {link_id!r}: {error}") from None
    return Link(link_id, networks)


def _decode_relay(value: Any, where: str) -> LQRelayData:
    if not isinstance(value, dict):
        raise JsonlError(f"{where}: 'relay' must be an object")
    _only(value, {"peer", "hops"}, f"{where} relay")
    hops = _field(value, "hops", list, f"{where} relay")
    if not 1 <= len(hops) <= _MAX_HOPS:
        raise JsonlError(f"{where}: relay needs 1..{_MAX_HOPS} hops, not {len(hops)}")
    chain: RelayMessage | None = None
    try:
        peer = IPv6Address(_field(value, "peer", str, f"{where} relay"))
        for number, hop in enumerate(reversed(hops)):
            hop_where = f"{where} relay hop {len(hops) - 1 - number}"
            if not isinstance(hop, dict):
                raise JsonlError(f"{hop_where}: must be an object")
            _only(hop, {"link", "peer", "hop-count", "options"}, hop_where)
            hop_count = hop.get("hop-count", number)
            if not isinstance(hop_count, int) or not 0 <= hop_count <= 255:
                raise JsonlError(f"{hop_where}: 'hop-count' must be 0..255")
            options = _options(hop.get("options", ""), hop_where)
            if chain is not None:
                options += (RelayMessageOption(chain),)
            chain = RelayMessage(
                MessageType.RELAY_FORW,
                hop_count,
                IPv6Address(_field(hop, "link", str, hop_where)),
                IPv6Address(_field(hop, "peer", str, hop_where)),
                options,
            )
    except ValueError as error:
        if isinstance(error, JsonlError):
            raise
        raise JsonlError(f"{where}: relay: {error}") from None
    assert chain is not None
    return LQRelayData(peer, chain)


_BINDING_FIELDS = {
    "type",
    "duid",
    "link",
    "cltt",
    "addresses",
    "prefixes",
    "relay",
    "relay-ids",
    "remote-ids",
    "options",
}


def _leases(
    record: dict[str, Any], key: str, field: str, parse: Callable[[str], _T], where: str
) -> list[tuple[_T, int, int]]:
    """
    The C{key} list of a binding record (C{addresses} or C{prefixes}): each item an object
    holding C{field} (read with C{parse}), C{preferred} and C{valid}.
    """
    leases = []
    for item in _field(record, key, list, where) if key in record else []:
        if not isinstance(item, dict):
            raise JsonlError(f"{where}: each {field} must be an object")
        _only(item, {field, "preferred", "valid"}, where)
        try:
            value = parse(_field(item, field, str, where))
        except ValueError as error:
            raise JsonlError(f"{where}: {error}") from None
        leases.append((value, _lifetime(item, "preferred", where), _lifetime(item, "valid", where)))
    return leases


def _decode_binding(record: dict[str, Any]) -> Binding:
    try:
        duid = Duid.from_text(_field(record, "duid", str, "binding"))
    except WireError as error:
        raise JsonlError(f"binding: 'duid': {error}") from None
    where = f"binding {duid}"
    _only(record, _BINDING_FIELDS, where)
    link_id: str = _field(record, "link", str, where)
    cltt: int = _field(record, "cltt", int, where)
    if cltt < 0:
        raise JsonlError(f"{where}: 'cltt' must not be negative")
    addresses = [
        AddressLease(*lease)
        for lease in _leases(record, "addresses", "address", IPv6Address, where)
    ]
    prefixes = [
        PrefixLease(*lease) for lease in _leases(record, "prefixes", "prefix", IPv6Network, where)
    ]
    relay_data = None if record.get("relay") is None else _decode_relay(record["relay"], where)
    relay_ids, remote_ids = relay_identities(relay_data)
    try:
        if "relay-ids" in record:
            relay_ids = tuple(
                Duid.from_text(text) for text in _field(record, "relay-ids", list, where)
            )
        if "remote-ids" in record:
            remote_ids = tuple(
                RemoteId.from_text(text) for text in _field(record, "remote-ids", list, where)
            )
    except (WireError, AttributeError) as error:
        raise JsonlError(f"{where}: relay or remote id: {error}") from None
    options = _options(_field(record, "options", str, where), where) if "options" in record else ()
    return Binding(
        duid,
        link_id,
        cltt,
        tuple(addresses),
        tuple(prefixes),
        relay_data,
        relay_ids,
        remote_ids,
        options,
    )


def decode_record(text: str) -> Link | Binding:
    """
    The link or binding on one line.

    @raise JsonlError: if the line is not one valid record.
    """
    if len(text) > MAX_LINE_LENGTH:
        raise JsonlError(f"line of {len(text)} characters exceeds {MAX_LINE_LENGTH}")
    try:
        record = json.loads(text)
    except ValueError as error:
        raise JsonlError(f"not JSON: {error}") from None
    if not isinstance(record, dict):
        raise JsonlError("a record must be a JSON object")
    kind = record.get("type")
    if kind == "binding":
        return _decode_binding(record)
    if kind == "link":
        return _decode_link(record)
    raise JsonlError(f'\'type\' must be "binding" or "link", not {kind!r}')


def read_records(lines: Iterable[str], source: str = "<input>") -> Iterator[Link | Binding]:
    """
    Decode every non-blank line of C{lines}.

    @raise JsonlError: at the first invalid line, as C{SOURCE:LINE: reason}.
    """
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield decode_record(line)
        except JsonlError as error:
            raise JsonlError(f"{source}:{number}: {error}") from None


def write_records(out: TextIO, links: Iterable[Link], bindings: Iterable[Binding]) -> int:
    """Write C{links}, then C{bindings}, one per line; returns the number of bindings."""
    for link in links:
        out.write(encode_link(link) + "\n")
    count = 0
    for binding in bindings:
        out.write(encode_binding(binding) + "\n")
        count += 1
    return count
