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

from .._trusted import set_address_lease, set_binding, set_duid_raw, set_prefix_lease
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
    "fast_single_binding",
    "fast_single_binding_at",
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
_new = object.__new__
_NETMASKS = [IPv6Network._make_netmask(length) for length in range(129)]  # type: ignore[attr-defined]
_MASKS = [_MAX_ADDRESS ^ (_MAX_ADDRESS >> length) for length in range(129)]


def _address(value: int) -> IPv6Address:
    """C{IPv6Address(value)} for an int known to be in range, without the checks."""
    address = _new(IPv6Address)
    address._ip = value  # type: ignore[attr-defined]
    address._scope_id = None  # type: ignore[attr-defined]
    return address


def _network(value: int, length: int) -> IPv6Network:
    """C{IPv6Network((value, length))} for a value with no host bits, without the parsing."""
    if length >= 127:
        return IPv6Network((value, length))
    network = _new(IPv6Network)
    network.network_address = _address(value)
    network.netmask, network._prefixlen = _NETMASKS[length]  # type: ignore[attr-defined]
    return network


def _same_as_ipaddress() -> bool:
    """Whether the shortcuts build what C{ipaddress} builds on this Python."""
    for value, length in ((0x20010DB8 << 96, 56), (0, 0), (1 << 127, 1), (5 << 64, 64)):
        real = IPv6Network((value, length))
        fast = _network(value, length)
        if vars(real) != vars(fast) or str(real) != str(fast) or hash(real) != hash(fast):
            return False
        address = IPv6Address(value + 1)
        quick = _address(value + 1)
        if (address, str(address), hash(address)) != (quick, str(quick), hash(quick)):
            return False
    return True


#: Whether L{_address} and L{_network} may build objects field by field on this Python.
_IPADDRESS_SHORTCUTS = _same_as_ipaddress()
if not _IPADDRESS_SHORTCUTS:  # pragma: no cover - another Python's ipaddress internals
    _address = IPv6Address  # type: ignore[assignment]

    def _network(value: int, length: int) -> IPv6Network:
        return IPv6Network((value, length))


# The slot setters every fast path shares (bulklq._trusted): the attrs constructors minus
# their per-call overhead.
_BINDING_SETTERS = set_binding
_LEASE_SETTERS = set_address_lease
_PREFIX_SETTERS = set_prefix_lease
_DUID_SETTERS = (set_duid_raw,)


def _plain_binding(
    client_id: Duid,
    link_id: str,
    cltt: int,
    addresses: tuple[AddressLease, ...],
    prefixes: tuple[PrefixLease, ...],
) -> Binding:
    """C{Binding(client_id, link_id, cltt, addresses, prefixes)} without relay data."""
    return Binding(client_id, link_id, cltt, addresses, prefixes, None, (), (), ())


#: Whether L{fast_single_binding_at} may build the usual shapes field by field (what
#: _quick_binding does, inlined); set below once the shortcuts are checked.
_INLINE = False

if _BINDING_SETTERS and _LEASE_SETTERS and _PREFIX_SETTERS and _DUID_SETTERS:
    # What the attrs constructors do, minus their per-call overhead; checked just below.
    _b0, _b1, _b2, _b3, _b4, _b5, _b6, _b7, _b8 = _BINDING_SETTERS
    _l0, _l1, _l2 = _LEASE_SETTERS
    _p0, _p1, _p2 = _PREFIX_SETTERS
    (_d0,) = _DUID_SETTERS

    def _quick_binding(
        client_id: Duid,
        link_id: str,
        cltt: int,
        addresses: tuple[AddressLease, ...],
        prefixes: tuple[PrefixLease, ...],
    ) -> Binding:
        binding = _new(Binding)
        _b0(binding, client_id)
        _b1(binding, link_id)
        _b2(binding, cltt)
        _b3(binding, addresses)
        _b4(binding, prefixes)
        _b5(binding, None)
        _b6(binding, ())
        _b7(binding, ())
        _b8(binding, ())
        return binding

    def _quick_lease(address: IPv6Address, preferred: int, valid: int) -> AddressLease:
        lease = _new(AddressLease)
        _l0(lease, address)
        _l1(lease, preferred)
        _l2(lease, valid)
        return lease

    def _quick_prefix(prefix: IPv6Network, preferred: int, valid: int) -> PrefixLease:
        lease = _new(PrefixLease)
        _p0(lease, prefix)
        _p1(lease, preferred)
        _p2(lease, valid)
        return lease

    def _quick_duid(raw: bytes) -> Duid:
        duid = _new(Duid)
        _d0(duid, raw)
        return duid

    _sample = (
        _quick_duid(b"\x00\x03\x00\x01\x02"),
        "link",
        5,
        (_quick_lease(IPv6Address(1), 2, 3),),
        (_quick_prefix(IPv6Network("2001:db8::/56"), 4, 5),),
    )
    _reference = _plain_binding(
        Duid(b"\x00\x03\x00\x01\x02"),
        "link",
        5,
        (AddressLease(IPv6Address(1), 2, 3),),
        (PrefixLease(IPv6Network("2001:db8::/56"), 4, 5),),
    )
    _built = _quick_binding(*_sample)
    if (_built, hash(_built), repr(_built)) == (_reference, hash(_reference), repr(_reference)):
        _INLINE = _IPADDRESS_SHORTCUTS


# After type and xid: CLIENT_DATA code and length, CLIENTID code and length, DUID type.
_DATA_HEAD = struct.Struct("!HHHHH")
_unpack_data_head = _DATA_HEAD.unpack_from

# The usual CLIENT_DATA after its CLIENTID: a addresses, p prefixes, CLT_TIME, nothing else.
# The option headers are unpacked with the values and checked afterwards. Each shape holds
# its struct's bound unpack_from (one lookup less per frame).
_SHAPES = {
    28 * a + 29 * p + 8: (
        a,
        p,
        struct.Struct("!" + "HHQQII" * a + "HHIIBQQ" * p + "HHI").unpack_from,
    )
    for a in range(4)
    for p in range(4)
    if a or p
}


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
            _address(address),
            preferred if preferred == infinite else min(preferred + clt_time, ceiling),
            valid if valid == infinite else min(valid + clt_time, ceiling),
        )
        for address, preferred, valid in raw_addresses
    ]
    prefixes = [
        PrefixLease(
            _network(prefix & _MASKS[length], length),
            preferred if preferred == infinite else min(preferred + clt_time, ceiling),
            valid if valid == infinite else min(valid + clt_time, ceiling),
        )
        for preferred, valid, length, prefix in raw_prefixes
    ]
    return _make_binding(
        client_id, query_link, received_at, clt_time, addresses, prefixes, relay_data, ()
    )


def fast_single_binding(frame: bytes, received_at: int, query_link: str | None) -> Binding | None:
    """
    The binding of a LEASEQUERY-DATA frame that holds exactly one CLIENT_DATA of the usual
    shape (CLIENTID first, then up to 3 IAADDR and 3 IAPREFIX without sub-options, then
    CLT_TIME, nothing else), read with one C{unpack}; C{None} for any other frame (which
    means "try L{fast_data_bindings}", never "invalid").
    """
    return fast_single_binding_at(frame, 0, len(frame), received_at, query_link)


def fast_single_binding_at(
    data: bytes, start: int, end: int, received_at: int, query_link: str | None
) -> Binding | None:
    """
    L{fast_single_binding} of the frame C{data[start:end]}, read in place: a requestor
    reading a stream of frames need not copy each one out first.
    """
    if end - start < 16:
        return None
    data_code, data_length, id_code, length, duid_type = _unpack_data_head(data, start + 4)
    if data_code != 45 or data_length != end - start - 8 or id_code != 1 or not 3 <= length <= 130:
        return None
    if duid_type == 4:
        if length != 18:
            return None
    elif length < _DUID_MINIMUM.get(duid_type, 3):
        return None
    rest = start + 12 + length
    shape = _SHAPES.get(end - rest)
    if shape is None:
        return None
    count_addresses, count_prefixes, unpack = shape
    values = unpack(data, rest)
    link = UNKNOWN_LINK if query_link is None else query_link
    if _INLINE and count_addresses == 1 and count_prefixes <= 1:
        # The usual shapes, built in one place: no call per object (see _quick_binding).
        ceiling = INFINITE_LIFETIME - 1
        if count_prefixes:
            (
                code,
                size,
                high,
                low,
                preferred,
                valid,
                prefix_code,
                prefix_size,
                prefix_preferred,
                prefix_valid,
                prefix_length,
                prefix_high,
                prefix_low,
                clt_code,
                clt_size,
                clt_time,
            ) = values
            if prefix_code != 26 or prefix_size != 25 or prefix_length > 128:
                return None
        else:
            code, size, high, low, preferred, valid, clt_code, clt_size, clt_time = values
        if code != 5 or size != 24 or clt_code != 46 or clt_size != 4:
            return None
        duid = _new(Duid)
        _d0(duid, data[start + 12 : rest])
        address = _new(IPv6Address)
        address._ip = (high << 64) | low  # type: ignore[attr-defined]
        address._scope_id = None  # type: ignore[attr-defined]
        lease = _new(AddressLease)
        _l0(lease, address)
        preferred += clt_time
        _l1(lease, preferred if preferred < ceiling else _granted_top(preferred - clt_time))
        valid += clt_time
        _l2(lease, valid if valid < ceiling else _granted_top(valid - clt_time))
        binding = _new(Binding)
        _b0(binding, duid)
        _b1(binding, link)
        _b2(binding, received_at - clt_time)
        _b3(binding, (lease,))
        if count_prefixes:
            value = ((prefix_high << 64) | prefix_low) & _MASKS[prefix_length]
            if prefix_length < 127:
                network = _new(IPv6Network)
                network_address = _new(IPv6Address)
                network_address._ip = value  # type: ignore[attr-defined]
                network_address._scope_id = None  # type: ignore[attr-defined]
                network.network_address = network_address
                network.netmask, network._prefixlen = _NETMASKS[prefix_length]  # type: ignore[attr-defined]
            else:
                network = IPv6Network((value, prefix_length))
            prefix = _new(PrefixLease)
            _p0(prefix, network)
            prefix_preferred += clt_time
            _p1(
                prefix,
                prefix_preferred
                if prefix_preferred < ceiling
                else _granted_top(prefix_preferred - clt_time),
            )
            prefix_valid += clt_time
            _p2(
                prefix,
                prefix_valid if prefix_valid < ceiling else _granted_top(prefix_valid - clt_time),
            )
            _b4(binding, (prefix,))
        else:
            _b4(binding, ())
        _b5(binding, None)
        _b6(binding, ())
        _b7(binding, ())
        _b8(binding, ())
        return binding
    return _shaped_general(
        data, start + 12, rest, values, count_addresses, count_prefixes, received_at, link
    )


def _granted_top(remaining: int) -> int:
    """L{granted_lifetime} when the sum reached the ceiling: infinity or the ceiling."""
    return INFINITE_LIFETIME if remaining == INFINITE_LIFETIME else INFINITE_LIFETIME - 1


def _shaped_general(  # noqa: PLR0917
    frame: bytes,
    duid_start: int,
    rest: int,
    values: tuple[int, ...],
    count_addresses: int,
    count_prefixes: int,
    received_at: int,
    link: str,
) -> Binding | None:
    index = 0
    infinite = INFINITE_LIFETIME
    ceiling = INFINITE_LIFETIME - 1
    clt_index = 6 * count_addresses + 7 * count_prefixes
    if values[clt_index] != 46 or values[clt_index + 1] != 4:
        return None
    clt_time = values[clt_index + 2]
    addresses = []
    for _ in range(count_addresses):
        code, size, high, low, preferred, valid = values[index : index + 6]
        if code != 5 or size != 24:
            return None
        addresses.append(
            AddressLease(
                _address((high << 64) | low),
                preferred if preferred == infinite else min(preferred + clt_time, ceiling),
                valid if valid == infinite else min(valid + clt_time, ceiling),
            )
        )
        index += 6
    prefixes = []
    for _ in range(count_prefixes):
        code, size, preferred, valid, prefix_length, high, low = values[index : index + 7]
        if code != 26 or size != 25 or prefix_length > 128:
            return None
        prefixes.append(
            PrefixLease(
                _network(((high << 64) | low) & _MASKS[prefix_length], prefix_length),
                preferred if preferred == infinite else min(preferred + clt_time, ceiling),
                valid if valid == infinite else min(valid + clt_time, ceiling),
            )
        )
        index += 7
    return Binding(
        Duid(frame[duid_start:rest]),
        link,
        received_at - clt_time,
        tuple(addresses),
        tuple(prefixes),
        None,
        (),
        (),
        (),
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
    binding = fast_single_binding(frame, received_at, query_link)
    if binding is not None:
        return [binding]
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
