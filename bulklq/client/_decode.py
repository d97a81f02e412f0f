"""
CLIENT_DATA to L{Binding}: the generic conversion from decoded options, and a fast path
that reads a LEASEQUERY-DATA frame's octets directly.

The fast path only accepts frames of the usual shape (CLIENT_DATA options holding CLIENTID,
IAADDR and IAPREFIX without sub-options, CLT_TIME and LQ_RELAY_DATA) and answers C{None}
for anything else, so that the caller falls back to the strict codec; on what it accepts it
gives exactly what L{binding_from_client_data} gives after L{decode_message}. The
requestor reads each run of such frames of one stream, as received, with one
L{fast_frames_at} call.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable, Sequence
from ipaddress import IPv6Address, IPv6Network
from typing import Any, Protocol

from ..model import AddressLease, Binding, PrefixLease, relay_identities
from ..wire import (
    ClientData,
    ClientId,
    CltTime,
    Duid,
    IAAddress,
    IAPrefix,
    LQRelayData,
    Message,
    MessageType,
    Option,
    WireError,
    decode_options,
)

__all__ = [
    "INFINITE_LIFETIME",
    "UNKNOWN_LINK",
    "FrameStream",
    "Pausable",
    "binding_from_client_data",
    "fast_data_bindings",
    "fast_frames_at",
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


# Builders for the fast path: a subclass of each frozen value class that adds no slot and
# no behaviour but plain attribute assignment and a no-op __init__. An instance is made
# with a cheap call, filled by ordinary attribute stores (which CPython specialises for
# slots), then becomes the real class by assigning __class__, which CPython allows
# because the layouts are the same. The result is an ordinary instance of the real class
# (its type, equality, hash and repr are the constructor's); it skips what the attrs
# constructor and the slot setters of bulklq._trusted cost per field. Checked below
# against the constructors, with the constructors as the fallback.


def _builder(cls: type) -> type[Any]:
    """A subclass of C{cls} that may be made empty and filled (see above)."""
    return type(
        f"_{cls.__name__}Builder",
        (cls,),
        {
            "__slots__": (),
            "__init__": object.__init__,
            "__setattr__": object.__setattr__,
            "__delattr__": object.__delattr__,
        },
    )


_BindingBuilder = _builder(Binding)
_AddressLeaseBuilder = _builder(AddressLease)
_PrefixLeaseBuilder = _builder(PrefixLease)
_DuidBuilder = _builder(Duid)
_AddressBuilder = _builder(IPv6Address)


# After type and xid: CLIENT_DATA code and length, CLIENTID code and length, DUID type.
# (bulklq.client.output reads the same head.)
_DATA_HEAD = struct.Struct("!HHHHH")
_unpack_data_head = _DATA_HEAD.unpack_from
# The same without the DUID type, each option's code and length as one number.
_unpack_heads = struct.Struct("!II").unpack_from
# Option code and length as one number: CLIENT_DATA (without its length), CLIENTID (without
# its length, then of the shortest and the longest DUID), IAADDR, IAPREFIX, CLT_TIME.
_CLIENT_DATA_HEAD = 45 << 16
_CLIENT_ID_HEAD = 1 << 16
_SHORTEST_CLIENT_ID = _CLIENT_ID_HEAD | 3
_LONGEST_CLIENT_ID = _CLIENT_ID_HEAD | 130
_IAADDR_HEAD = (5 << 16) | 24
_IAPREFIX_HEAD = (26 << 16) | 25
_CLT_TIME_HEAD = (46 << 16) | 4
# The longest message fast_single_binding_at reads (what a 2-octet length allows).
_MAX_FRAME = 0xFFFF

# The usual CLIENT_DATA after its CLIENTID: a addresses, p prefixes, CLT_TIME, nothing else,
# by its size: (kind, a, p). The kinds fast_frames_at builds itself (the others go through
# _shaped_general):
_ADDRESS_AND_PREFIX = 1
_ADDRESS_ONLY = 2
_PREFIX_ONLY = 3
_OTHER_SHAPE = 0
_SHAPES = {
    28 * a + 29 * p + 8: (
        _ADDRESS_AND_PREFIX
        if (a, p) == (1, 1)
        else _ADDRESS_ONLY
        if (a, p) == (1, 0)
        else _PREFIX_ONLY
        if (a, p) == (0, 1)
        else _OTHER_SHAPE,
        a,
        p,
    )
    for a in range(4)
    for p in range(4)
    if a or p
}

# How to read a usual message of one size: the kind and counts of its shape, what its
# CLIENT_DATA and CLIENTID headers must be (as one number), how to check its DUID type
# (_ANY_TYPE: DUID-UUID's length, any type fits; _NOT_UUID: long enough for any type but
# DUID-UUID; _MINIMUM: check the type's minimum length) and the bound unpack_from of the
# whole frame from its length prefix (skipped): type and xid, both headers, the DUID
# octets, then the shape with each option header (code and length as one u32) unpacked
# with the values.
_Layout = tuple[int, int, int, int, int, Callable[[bytes, int], tuple[Any, ...]]]
_ANY_TYPE = 0
_NOT_UUID = 1
_MINIMUM = 2


@functools.lru_cache(maxsize=4096)
def _layout(size: int, duid_length: int) -> _Layout | None:
    """The layout of a message of C{size} octets with a DUID of C{duid_length}, if usual."""
    shape = _SHAPES.get(size - 12 - duid_length)
    if shape is None:
        return None
    kind, addresses, prefixes = shape
    heads = ((_CLIENT_DATA_HEAD | (size - 8)) << 32) | _CLIENT_ID_HEAD | duid_length
    check = _ANY_TYPE if duid_length == 18 else _NOT_UUID if duid_length >= 9 else _MINIMUM
    unpack = struct.Struct(
        f"!2xIQ{duid_length}s" + "IQQII" * addresses + "IIIBQQ" * prefixes + "II"
    ).unpack_from
    return kind, heads, check, addresses, prefixes, unpack


#: The layout last seen for each message size (a message of that size with another DUID
#: length replaces it). Only usual sizes are kept: at most a few hundred.
_LAYOUTS: dict[int, _Layout] = {}


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


class FrameStream(Protocol):
    """Where L{fast_frames_at} hands the bindings of one stream."""

    #: Takes each binding; C{None} once the stream ended (checked before each frame).
    consume: Callable[[Binding], object] | None
    #: Counts the bindings handed to C{consume} (each counted before it is handed).
    received: int


class Pausable(Protocol):
    """What tells L{fast_frames_at} to stop reading (checked before each frame)."""

    paused: bool


def fast_frames_at(  # noqa: PLR0917
    data: bytes,
    offset: int,
    size: int,
    head: int,
    received_at: int,
    link: str,
    stream: FrameStream,
    control: Pausable,
) -> int:
    """
    Decode in place the LEASEQUERY-DATA frames that follow one another from C{offset} in
    C{data[:size]} (each a 2-octet length, then the message) while each is whole, has the
    type and transaction-id C{head} (the first 4 octets of the message, as one number) and
    holds exactly one CLIENT_DATA of the usual shape (L{fast_single_binding}), handing each
    one's binding (on C{link}, received at C{received_at}) to C{stream.consume}. Stops before
    the first frame that is not such a frame and once C{control.paused} or the stream has
    ended (C{stream.consume} is C{None}); returns the offset of the first frame not
    consumed. What C{consume} raises propagates: the frames up to and including the one
    whose binding it was given count as consumed (C{stream.received} counts them).
    """
    ceiling = INFINITE_LIFETIME - 1
    layouts_get = _LAYOUTS.get
    consume = stream.consume
    known = -1  # the size whose layout is unpacked below (usually the previous frame's)
    while consume is not None and not control.paused and size - offset >= 2:
        length = (data[offset] << 8) | data[offset + 1]
        end = offset + 2 + length
        if end > size:
            break
        if length != known:
            layout = layouts_get(length)
            if layout is None:
                layout = _learn_layout(data, offset, length)
                if layout is None:
                    break
            kind, heads, check, count_addresses, count_prefixes, unpack = layout
            known = length
        # The usual shapes are read with one unpack and built here with the builders, no
        # call per object; the headers are checked against the layout's (a message of
        # the same size with another DUID length has its own layout learnt, then read).
        if kind == _ADDRESS_AND_PREFIX:
            (
                frame_head,
                message_heads,
                raw,
                address_head,
                high,
                low,
                preferred,
                valid,
                prefix_head,
                prefix_preferred,
                prefix_valid,
                prefix_length,
                prefix_high,
                prefix_low,
                clt_head,
                clt_time,
            ) = unpack(data, offset)
            if (
                message_heads != heads
                or frame_head != head
                or address_head != _IAADDR_HEAD
                or prefix_head != _IAPREFIX_HEAD
                or clt_head != _CLT_TIME_HEAD
                or prefix_length > 128
            ):
                if _relearn(data, offset, length, frame_head == head, message_heads != heads):
                    known = -1
                    continue
                break
        elif kind == _ADDRESS_ONLY:
            (
                frame_head,
                message_heads,
                raw,
                address_head,
                high,
                low,
                preferred,
                valid,
                clt_head,
                clt_time,
            ) = unpack(data, offset)
            if (
                message_heads != heads
                or frame_head != head
                or address_head != _IAADDR_HEAD
                or clt_head != _CLT_TIME_HEAD
            ):
                if _relearn(data, offset, length, frame_head == head, message_heads != heads):
                    known = -1
                    continue
                break
        elif kind == _PREFIX_ONLY:
            (
                frame_head,
                message_heads,
                raw,
                prefix_head,
                prefix_preferred,
                prefix_valid,
                prefix_length,
                prefix_high,
                prefix_low,
                clt_head,
                clt_time,
            ) = unpack(data, offset)
            if (
                message_heads != heads
                or frame_head != head
                or prefix_head != _IAPREFIX_HEAD
                or clt_head != _CLT_TIME_HEAD
                or prefix_length > 128
            ):
                if _relearn(data, offset, length, frame_head == head, message_heads != heads):
                    known = -1
                    continue
                break
        else:
            frame_head, message_heads, raw, *values = unpack(data, offset)
            if message_heads != heads or frame_head != head:
                if _relearn(data, offset, length, frame_head == head, message_heads != heads):
                    known = -1
                    continue
                break
        if check and raw[1] == 4 and not raw[0]:
            break  # DUID-UUID of another length than 16
        if check == _MINIMUM and len(raw) < _DUID_MINIMUM.get((raw[0] << 8) | raw[1], 3):
            break
        if kind == _OTHER_SHAPE:
            binding = _shaped_general(
                raw, values, count_addresses, count_prefixes, received_at, link
            )
            if binding is None:
                break
            offset = end
            stream.received += 1
            consume(binding)
            consume = stream.consume
            continue
        duid = _DuidBuilder()
        duid.raw = raw
        duid.__class__ = Duid
        binding = _BindingBuilder()
        binding.client_id = duid
        binding.link_id = link
        binding.cltt = received_at - clt_time
        if kind == _PREFIX_ONLY:
            binding.addresses = ()
        else:
            address = _AddressBuilder()
            address._ip = (high << 64) | low
            address._scope_id = None
            address.__class__ = IPv6Address
            lease = _AddressLeaseBuilder()
            lease.address = address
            preferred += clt_time
            lease.preferred_lifetime = (
                preferred if preferred < ceiling else _granted_top(preferred - clt_time)
            )
            valid += clt_time
            lease.valid_lifetime = valid if valid < ceiling else _granted_top(valid - clt_time)
            lease.__class__ = AddressLease
            binding.addresses = (lease,)
        if kind == _ADDRESS_ONLY:
            binding.prefixes = ()
        else:
            value = ((prefix_high << 64) | prefix_low) & _MASKS[prefix_length]
            if prefix_length < 127:
                network = _new(IPv6Network)
                network_address = _AddressBuilder()
                network_address._ip = value
                network_address._scope_id = None
                network_address.__class__ = IPv6Address
                network.network_address = network_address
                network.netmask, network._prefixlen = _NETMASKS[prefix_length]  # type: ignore[attr-defined]
            else:
                network = IPv6Network((value, prefix_length))
            prefix = _PrefixLeaseBuilder()
            prefix.prefix = network
            prefix_preferred += clt_time
            prefix.preferred_lifetime = (
                prefix_preferred
                if prefix_preferred < ceiling
                else _granted_top(prefix_preferred - clt_time)
            )
            prefix_valid += clt_time
            prefix.valid_lifetime = (
                prefix_valid if prefix_valid < ceiling else _granted_top(prefix_valid - clt_time)
            )
            prefix.__class__ = PrefixLease
            binding.prefixes = (prefix,)
        binding.relay_data = None
        binding.relay_ids = ()
        binding.remote_ids = ()
        binding.options = ()
        binding.__class__ = Binding
        offset = end
        stream.received += 1
        consume(binding)
        consume = stream.consume
    return offset


def _learn_layout(data: bytes, offset: int, length: int) -> _Layout | None:
    """
    The layout of the message in the frame at C{offset} (of C{length} octets), learnt as
    its size's layout; C{None} if the message is not of a usual shape.
    """
    if length < 16:
        return None
    data_head, id_head = _unpack_heads(data, offset + 6)
    if (
        data_head != _CLIENT_DATA_HEAD + length - 8
        or not _SHORTEST_CLIENT_ID <= id_head <= _LONGEST_CLIENT_ID
    ):
        return None
    layout = _layout(length, id_head - _CLIENT_ID_HEAD)
    if layout is not None:
        _LAYOUTS[length] = layout
    return layout


def _relearn(data: bytes, offset: int, length: int, same_head: bool, other_heads: bool) -> bool:
    """
    Whether the frame at C{offset}, which its size's layout did not fit, should be read
    again: when it has the stream's type and transaction-id and other headers than the
    layout's (another DUID length), and its own layout was learnt.
    """
    return same_head and other_heads and _learn_layout(data, offset, length) is not None


class _One:
    """The stream and control of L{fast_single_binding_at}: takes one binding."""

    __slots__ = ("binding", "consume", "paused", "received")

    def __init__(self) -> None:
        self.binding: Binding | None = None
        self.consume: Callable[[Binding], object] | None = self._take
        self.paused = False
        self.received = 0

    def _take(self, binding: Binding) -> None:
        self.binding = binding
        self.consume = None


def fast_single_binding_at(
    data: bytes, start: int, end: int, received_at: int, query_link: str | None
) -> Binding | None:
    """
    L{fast_single_binding} of the frame C{data[start:end]} (read by L{fast_frames_at}).
    """
    length = end - start
    if not 16 <= length <= _MAX_FRAME:
        return None
    frame = length.to_bytes(2, "big") + data[start:end]
    one = _One()
    fast_frames_at(
        frame,
        0,
        len(frame),
        int.from_bytes(frame[2:6], "big"),
        received_at,
        UNKNOWN_LINK if query_link is None else query_link,
        one,
        one,
    )
    return one.binding


def _granted_top(remaining: int) -> int:
    """L{granted_lifetime} when the sum reached the ceiling: infinity or the ceiling."""
    return INFINITE_LIFETIME if remaining == INFINITE_LIFETIME else INFINITE_LIFETIME - 1


def _shaped_general(  # noqa: PLR0917
    raw: bytes,
    values: list[int],
    count_addresses: int,
    count_prefixes: int,
    received_at: int,
    link: str,
) -> Binding | None:
    """The binding of a usual shape from its unpacked values, with the constructors."""
    index = 0
    infinite = INFINITE_LIFETIME
    ceiling = INFINITE_LIFETIME - 1
    clt_index = 5 * count_addresses + 6 * count_prefixes
    if values[clt_index] != _CLT_TIME_HEAD:
        return None
    clt_time = values[clt_index + 1]
    addresses = []
    for _ in range(count_addresses):
        head, high, low, preferred, valid = values[index : index + 5]
        if head != _IAADDR_HEAD:
            return None
        addresses.append(
            AddressLease(
                _address((high << 64) | low),
                preferred if preferred == infinite else min(preferred + clt_time, ceiling),
                valid if valid == infinite else min(valid + clt_time, ceiling),
            )
        )
        index += 5
    prefixes = []
    for _ in range(count_prefixes):
        head, preferred, valid, prefix_length, high, low = values[index : index + 6]
        if head != _IAPREFIX_HEAD or prefix_length > 128:
            return None
        prefixes.append(
            PrefixLease(
                _network(((high << 64) | low) & _MASKS[prefix_length], prefix_length),
                preferred if preferred == infinite else min(preferred + clt_time, ceiling),
                valid if valid == infinite else min(valid + clt_time, ceiling),
            )
        )
        index += 6
    return Binding(
        Duid(raw),
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


def _builders_agree() -> bool:
    """
    Whether the builders make what the constructors make on this Python: the usual shapes
    decoded by L{fast_single_binding} against the codec, every value compared by type,
    equality, hash and repr.
    """
    now = 1 << 31
    for raw, lifetimes, items, clt in (
        (b"\x00\x03\x00\x01\x02\x03\x04\x05\x06\x07", (1, 2, 3, 4), "ap", 30),
        (b"\x00\x02\x00\x00\x7e\xd9x", (INFINITE_LIFETIME,) * 4, "a", 0),
        (b"\x00\x04" + bytes(range(16)), (INFINITE_LIFETIME - 9, 0, 7, 8), "p", 5),
    ):
        options: list[Option] = [ClientId(Duid(raw))]
        if "a" in items:
            options.append(IAAddress(IPv6Address((1 << 128) - 2), *lifetimes[:2]))
        if "p" in items:
            options.append(IAPrefix(*lifetimes[2:], 56, IPv6Address(0x20010DB8 << 96)))
        options.append(CltTime(clt))
        client_data = ClientData(tuple(options))
        frame = Message(MessageType.LEASEQUERY_DATA, 1, (client_data,)).encode()
        try:
            built = fast_single_binding(frame, now, None)
        except (TypeError, AttributeError):  # pragma: no cover - another Python or attrs
            return False
        reference = binding_from_client_data(client_data, now, None)
        if built is None or reference is None:  # pragma: no cover - cannot happen
            return False
        values: list[object] = [built, built.client_id, *built.addresses, *built.prefixes]
        values += [lease.address for lease in built.addresses]
        values += [lease.prefix.network_address for lease in built.prefixes]
        wanted: list[object] = [
            reference,
            reference.client_id,
            *reference.addresses,
            *reference.prefixes,
        ]
        wanted += [lease.address for lease in reference.addresses]
        wanted += [lease.prefix.network_address for lease in reference.prefixes]
        if [(type(v), v, hash(v), repr(v)) for v in values] != [
            (type(v), v, hash(v), repr(v)) for v in wanted
        ]:
            return False
    return True


#: Whether L{fast_single_binding_at} builds the usual shapes with the builders (else with
#: the constructors, through L{_shaped_general}).
_INLINE = _IPADDRESS_SHORTCUTS and _builders_agree()
if not _INLINE:  # pragma: no cover - another Python's ipaddress or attrs
    _SHAPES.update([(size, (_OTHER_SHAPE, *shape[1:])) for size, shape in _SHAPES.items()])
    _layout.cache_clear()
_LAYOUTS.clear()
