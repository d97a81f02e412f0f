"""
CLIENT_DATA to L{Binding}: the generic conversion from decoded options, and a fast path
that reads a LEASEQUERY-DATA frame's octets directly.

The fast path only accepts frames of the usual shape (CLIENT_DATA options holding CLIENTID,
IAADDR and IAPREFIX without sub-options, CLT_TIME and LQ_RELAY_DATA) and answers C{None}
for anything else, so that the caller falls back to the strict codec; on what it accepts it
gives exactly what L{binding_from_client_data} gives after L{decode_message}.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from ipaddress import IPv6Address, IPv6Network

from ..model import AddressLease, Binding, PrefixLease, relay_identities
from ..wire import (
    ClientData,
    ClientId,
    CltTime,
    Duid,
    IAAddress,
    IAPrefix,
    LQRelayData,
    Option,
    WireError,
    decode_options,
)

__all__ = [
    "INFINITE_LIFETIME",
    "UNKNOWN_LINK",
    "binding_from_client_data",
    "fast_data_bindings",
    "granted_lifetime",
    "link_from_relay_data",
]

#: The lifetime value meaning "infinity" (RFC 8415 section 7.7).
INFINITE_LIFETIME = 0xFFFFFFFF
#: The link id of a binding whose link the requestor cannot tell (no link-address in the
#: query and no usable link-address in the relay data).
UNKNOWN_LINK = "unknown"

_HEADER = struct.Struct("!HH")
_IAADDR = struct.Struct("!QQII")
_IAPREFIX = struct.Struct("!IIBQQ")
_U32 = struct.Struct("!I")
_MAX_ADDRESS = (1 << 128) - 1
_DUID_MINIMUM = {1: 9, 2: 7, 3: 5}


def granted_lifetime(remaining: int, clt_time: int) -> int:
    """
    The lifetime granted at the client's last transaction, from the remaining lifetime a
    server sends (RFC 5460 sends what is left, S40) and CLT_TIME: C{remaining + clt_time},
    with infinity kept infinite and a finite sum kept below infinity.
    """
    if remaining == INFINITE_LIFETIME:
        return INFINITE_LIFETIME
    return min(remaining + clt_time, INFINITE_LIFETIME - 1)


def link_from_relay_data(relay_data: LQRelayData | None) -> str | None:
    """
    The client's link as the relay chain shows it: the link-address of the relay nearest
    the client that is neither C{::} nor link-local (as Kea selects the subnet), or C{None}.
    """
    if relay_data is None:
        return None
    for layer in reversed(relay_data.relay_message.layers()):
        address = layer.link_address
        if not (address.is_unspecified or address.is_link_local):
            return str(address)
    return None


def _make_binding(  # noqa: PLR0917
    client_id: Duid,
    query_link: str | None,
    received_at: int,
    clt_time: int,
    addresses: Sequence[AddressLease],
    prefixes: Sequence[PrefixLease],
    relay_data: LQRelayData | None,
    options: Sequence[Option],
) -> Binding:
    link_id = query_link
    if relay_data is None:
        relay_ids: tuple[Duid, ...] = ()
        remote_ids: tuple[object, ...] = ()
        if link_id is None:
            link_id = UNKNOWN_LINK
    else:
        relay_ids, remote_ids = relay_identities(relay_data)
        if link_id is None:
            link_id = link_from_relay_data(relay_data) or UNKNOWN_LINK
    return Binding(
        client_id,
        link_id,
        received_at - clt_time,
        tuple(addresses),
        tuple(prefixes),
        relay_data,
        relay_ids,
        remote_ids,  # type: ignore[arg-type]
        tuple(options),
    )


def binding_from_client_data(
    client_data: ClientData, received_at: int, query_link: str | None
) -> Binding | None:
    """
    The binding one CLIENT_DATA describes, or C{None} when it lacks CLIENTID or CLT_TIME
    (R12: such a CLIENT_DATA is discarded).

    C{cltt} is C{received_at - CLT_TIME}; lifetimes are turned back into the ones granted at
    C{cltt} (L{granted_lifetime}), so C{binding.expires_at()} is the time the server's
    remaining lifetime runs out. The link id is C{query_link} when the query named a link,
    else L{link_from_relay_data}, else L{UNKNOWN_LINK}. The first CLIENTID, CLT_TIME and
    LQ_RELAY_DATA count; options other than these, IAADDR and IAPREFIX go to
    C{binding.options}.
    """
    client_id: Duid | None = None
    clt_time: int | None = None
    relay_data: LQRelayData | None = None
    addresses: list[IAAddress] = []
    prefixes: list[IAPrefix] = []
    others: list[Option] = []
    for option in client_data.options:
        kind = type(option)
        if kind is IAAddress:
            addresses.append(option)  # type: ignore[arg-type]
        elif kind is IAPrefix:
            prefixes.append(option)  # type: ignore[arg-type]
        elif kind is ClientId:
            if client_id is None:
                client_id = option.duid  # type: ignore[attr-defined]
        elif kind is CltTime:
            if clt_time is None:
                clt_time = option.seconds  # type: ignore[attr-defined]
        elif kind is LQRelayData:
            if relay_data is None:
                relay_data = option  # type: ignore[assignment]
        else:
            others.append(option)
    if client_id is None or clt_time is None:
        return None
    return _make_binding(
        client_id,
        query_link,
        received_at,
        clt_time,
        [
            AddressLease(
                lease.address,
                granted_lifetime(lease.preferred_lifetime, clt_time),
                granted_lifetime(lease.valid_lifetime, clt_time),
            )
            for lease in addresses
        ],
        [
            PrefixLease(
                lease.network,
                granted_lifetime(lease.preferred_lifetime, clt_time),
                granted_lifetime(lease.valid_lifetime, clt_time),
            )
            for lease in prefixes
        ],
        relay_data,
        others,
    )


def _fast_client_data(
    frame: bytes, start: int, end: int, received_at: int, query_link: str | None
) -> Binding | None:
    unpack_header = _HEADER.unpack_from
    client_id: Duid | None = None
    clt_time = -1
    relay_data: LQRelayData | None = None
    raw_addresses: list[tuple[int, int, int]] = []
    raw_prefixes: list[tuple[int, int, int, int]] = []
    offset = start
    while offset < end:
        if end - offset < 4:
            return None
        code, length = unpack_header(frame, offset)
        data_start = offset + 4
        data_end = data_start + length
        if data_end > end:
            return None
        if code == 5:
            if length != 24:
                return None
            high, low, preferred, valid = _IAADDR.unpack_from(frame, data_start)
            raw_addresses.append(((high << 64) | low, preferred, valid))
        elif code == 26:
            if length != 25:
                return None
            preferred, valid, prefix_length, high, low = _IAPREFIX.unpack_from(frame, data_start)
            if prefix_length > 128:
                return None
            raw_prefixes.append((preferred, valid, prefix_length, (high << 64) | low))
        elif code == 1:
            if client_id is not None or not 3 <= length <= 130:
                return None
            duid_type = (frame[data_start] << 8) | frame[data_start + 1]
            if duid_type == 4:
                if length != 18:
                    return None
            elif length < _DUID_MINIMUM.get(duid_type, 3):
                return None
            client_id = Duid(frame[data_start:data_end])
        elif code == 46:
            if length != 4 or clt_time >= 0:
                return None
            clt_time = _U32.unpack_from(frame, data_start)[0]
        elif code == 47:
            if relay_data is not None:
                return None
            try:
                (decoded,) = decode_options(frame, offset, data_end, 2)
            except WireError:
                return None
            relay_data = decoded  # type: ignore[assignment]
        else:
            return None
        offset = data_end
    if client_id is None or clt_time < 0:
        return None
    infinite = INFINITE_LIFETIME
    ceiling = INFINITE_LIFETIME - 1
    addresses = [
        AddressLease(
            IPv6Address(address),
            preferred if preferred == infinite else min(preferred + clt_time, ceiling),
            valid if valid == infinite else min(valid + clt_time, ceiling),
        )
        for address, preferred, valid in raw_addresses
    ]
    prefixes = [
        PrefixLease(
            IPv6Network((prefix & (_MAX_ADDRESS ^ (_MAX_ADDRESS >> length)), length)),
            preferred if preferred == infinite else min(preferred + clt_time, ceiling),
            valid if valid == infinite else min(valid + clt_time, ceiling),
        )
        for preferred, valid, length, prefix in raw_prefixes
    ]
    return _make_binding(
        client_id, query_link, received_at, clt_time, addresses, prefixes, relay_data, ()
    )


def fast_data_bindings(
    frame: bytes, received_at: int, query_link: str | None
) -> list[Binding] | None:
    """
    The bindings of a LEASEQUERY-DATA frame read straight from its octets, or C{None} when
    the frame is not of the usual shape (every top-level option a CLIENT_DATA holding
    CLIENTID and CLT_TIME; see the module docstring). C{None} means "decode it with the
    codec", never "invalid".
    """
    end = len(frame)
    offset = 4
    bindings: list[Binding] = []
    while offset < end:
        if end - offset < 4:
            return None
        code, length = _HEADER.unpack_from(frame, offset)
        data_end = offset + 4 + length
        if code != 45 or data_end > end:
            return None
        binding = _fast_client_data(frame, offset + 4, data_end, received_at, query_link)
        if binding is None:
            return None
        bindings.append(binding)
        offset = data_end
    return bindings or None
