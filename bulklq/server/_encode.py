"""
Turning bindings into CLIENT_DATA octets and TCP frames, fast.

Two encoders that must agree octet for octet (a test checks it, with hypothesis):

  - L{client_data}: the reference, built from the codec's option values;
  - L{ClientDataEncoder}: the one the server uses, which packs the octets directly with
    C{struct} and never builds option objects, so that a page of bindings costs a few
    microseconds per binding.

At send time a lease's lifetimes are the remaining ones, C{lifetime - (now - cltt)}
(infinity, 0xffffffff, stays infinite); a lease with no valid lifetime left is omitted and
a binding with no lease left is skipped (S40); CLT_TIME is C{now - cltt} (S41).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence

from ..model import Binding
from ..wire import (
    ClientData,
    ClientId,
    CltTime,
    IAAddress,
    IAPrefix,
    MessageType,
    Option,
    OptionCode,
)

__all__ = [
    "INFINITY",
    "STRUCTURAL_OPTIONS",
    "ClientDataEncoder",
    "OversizeBindingError",
    "client_data",
    "client_data_options",
    "frame",
]

#: A lifetime that never ends (RFC 8415 section 7.7).
INFINITY = 0xFFFFFFFF

#: Options the server builds itself; a stored option with one of these codes is never
#: copied into CLIENT_DATA, whatever the ORO asks (LQ_CLIENT_LINK: S12).
STRUCTURAL_OPTIONS = frozenset(
    {
        OptionCode.OPTION_CLIENTID,
        OptionCode.OPTION_SERVERID,
        OptionCode.OPTION_IAADDR,
        OptionCode.OPTION_IAPREFIX,
        OptionCode.OPTION_STATUS_CODE,
        OptionCode.OPTION_CLIENT_DATA,
        OptionCode.OPTION_CLT_TIME,
        OptionCode.OPTION_LQ_RELAY_DATA,
        OptionCode.OPTION_LQ_CLIENT_LINK,
    }
)

_HH = struct.Struct("!HH")
_HI = struct.Struct("!HI")
_IAADDR = struct.Struct("!HH16sII")
_IAPREFIX = struct.Struct("!HHIIB16s")
_CLT = struct.Struct("!HHI")
_CLIENT_DATA = OptionCode.OPTION_CLIENT_DATA
_IAADDR_CODE = OptionCode.OPTION_IAADDR
_IAPREFIX_CODE = OptionCode.OPTION_IAPREFIX
_CLT_CODE = OptionCode.OPTION_CLT_TIME
_RELAY_DATA_CODE = OptionCode.OPTION_LQ_RELAY_DATA


def _remaining(lifetime: int, elapsed: int) -> int:
    if lifetime == INFINITY:
        return INFINITY
    left = lifetime - elapsed
    return left if left > 0 else 0


def client_data_options(
    binding: Binding, now: int, requested: frozenset[int] = frozenset()
) -> tuple[Option, ...] | None:
    """
    The options of the binding's CLIENT_DATA at Unix time C{now}, as codec values, or
    C{None} when no lease has valid lifetime left.

    Order: CLIENTID, IAADDRs, IAPREFIXes, CLT_TIME, LQ_RELAY_DATA (when 47 is in
    C{requested} and the binding has relay data), then the binding's stored options whose
    codes are in C{requested}, in stored order.
    """
    elapsed = max(now - binding.cltt, 0)
    leases: list[Option] = []
    for address in binding.addresses:
        valid = _remaining(address.valid_lifetime, elapsed)
        if valid:
            leases.append(
                IAAddress(address.address, _remaining(address.preferred_lifetime, elapsed), valid)
            )
    for prefix in binding.prefixes:
        valid = _remaining(prefix.valid_lifetime, elapsed)
        if valid:
            leases.append(
                IAPrefix(
                    _remaining(prefix.preferred_lifetime, elapsed),
                    valid,
                    prefix.prefix.prefixlen,
                    prefix.prefix.network_address,
                )
            )
    if not leases:
        return None
    options: list[Option] = [ClientId(binding.client_id), *leases]
    options.append(CltTime(min(elapsed, INFINITY)))
    if _RELAY_DATA_CODE in requested and binding.relay_data is not None:
        options.append(binding.relay_data)
    options.extend(
        option
        for option in binding.options
        if option.code in requested and option.code not in STRUCTURAL_OPTIONS
    )
    return tuple(options)


def client_data(
    binding: Binding, now: int, requested: frozenset[int] = frozenset()
) -> ClientData | None:
    """The reference CLIENT_DATA option for C{binding} at C{now}, or C{None}."""
    options = client_data_options(binding, now, requested)
    return None if options is None else ClientData(options)


class OversizeBindingError(ValueError):
    """A binding whose CLIENT_DATA does not fit in one message (65535 octets)."""


_SHAPES: dict[tuple[int, int, int], struct.Struct] = {}
_MAX_SHAPES = 4096


def _shape(duid_length: int, addresses: int, prefixes: int) -> struct.Struct:
    key = (duid_length, addresses, prefixes)
    shape = _SHAPES.get(key)
    if shape is None:
        shape = struct.Struct(
            f"!HIHHHH{duid_length}s" + "HH16sII" * addresses + "HHIIB16s" * prefixes + "HHI"
        )
        if len(_SHAPES) < _MAX_SHAPES:
            _SHAPES[key] = shape
    return shape


def _plain_frame_encoder(
    general: Callable[[Binding, int, int], bytes | None],
) -> Callable[[Binding, int, int], bytes | None]:
    """
    The frame encoder for an empty ORO: a binding of one address, or of one address and one
    delegated prefix (a typical CPE), whose leases are finite and unexpired takes a short
    path; anything else the general one.
    """
    shapes: dict[tuple[int, int], struct.Struct] = {}

    def encode_frame(binding: Binding, now: int, type_xid: int) -> bytes | None:
        addresses = binding.addresses
        prefixes = binding.prefixes
        if len(addresses) != 1 or len(prefixes) > 1:
            return general(binding, now, type_xid)
        lease = addresses[0]
        elapsed = now - binding.cltt
        valid = lease.valid_lifetime
        preferred = lease.preferred_lifetime
        if elapsed < 0 or INFINITY in (valid, preferred) or valid <= elapsed:
            return general(binding, now, type_xid)
        raw = binding.client_id.raw
        n = len(raw)
        preferred -= elapsed
        # IPv6Address.packed is this, less a property call and a function call.
        packed = lease.address._ip.to_bytes(16, "big")  # type: ignore[attr-defined]
        if not prefixes:
            shape = shapes.get((n, 0))
            if shape is None:
                shape = shapes[n, 0] = _shape(n, 1, 0)
            return shape.pack(
                n + 48,
                type_xid,
                _CLIENT_DATA,
                n + 40,
                1,
                n,
                raw,
                _IAADDR_CODE,
                24,
                packed,
                preferred if preferred > 0 else 0,
                valid - elapsed,
                _CLT_CODE,
                4,
                elapsed,
            )
        prefix_lease = prefixes[0]
        prefix_valid = prefix_lease.valid_lifetime
        prefix_preferred = prefix_lease.preferred_lifetime
        if INFINITY in (prefix_valid, prefix_preferred) or prefix_valid <= elapsed:
            return general(binding, now, type_xid)
        network = prefix_lease.prefix
        shape = shapes.get((n, 1))
        if shape is None:
            shape = shapes[n, 1] = _shape(n, 1, 1)
        prefix_preferred -= elapsed
        return shape.pack(
            n + 77,
            type_xid,
            _CLIENT_DATA,
            n + 69,
            1,
            n,
            raw,
            _IAADDR_CODE,
            24,
            packed,
            preferred if preferred > 0 else 0,
            valid - elapsed,
            _IAPREFIX_CODE,
            25,
            prefix_preferred if prefix_preferred > 0 else 0,
            prefix_valid - elapsed,
            network._prefixlen,  # type: ignore[attr-defined]
            network.network_address._ip.to_bytes(16, "big"),  # type: ignore[attr-defined]
            _CLT_CODE,
            4,
            elapsed,
        )

    return encode_frame


class ClientDataEncoder:
    """
    Encodes a binding as one framed message holding its CLIENT_DATA, equal to
    C{frame(msg_type, xid, [client_data(binding, now, requested).encode()])}.

    The fixed part of the frame (size prefix, message header, CLIENT_DATA header, CLIENTID,
    IAADDRs, IAPREFIXes, CLT_TIME) is packed by one precompiled C{struct.Struct} per shape
    (DUID length, number of addresses, number of prefixes), so a binding costs about one
    C{pack} call. Octets that do not depend on the time (relay data, stored options) are the
    only ones the generic codec encodes, and only when the ORO asked for them.

    One encoder serves one query: C{requested} is fixed for it.
    """

    __slots__ = ("_extras", "_relay", "encode_frame", "requested")

    def __init__(self, requested: frozenset[int] = frozenset()) -> None:
        self.requested = requested
        self._relay = _RELAY_DATA_CODE in requested
        self._extras = frozenset(requested - STRUCTURAL_OPTIONS)
        #: C{encode_frame(binding, now, type_xid)}: see L{_encode_frame}; a closure with
        #: the common case (one address, nothing asked for) inlined when the ORO is empty.
        self.encode_frame: Callable[[Binding, int, int], bytes | None] = (
            self._encode_frame
            if self._relay or self._extras
            else _plain_frame_encoder(self._encode_frame)
        )

    def _encode_frame(self, binding: Binding, now: int, type_xid: int) -> bytes | None:
        """
        The framed message (C{type_xid} is C{msg_type << 24 | transaction_id}) with the
        binding's CLIENT_DATA at Unix time C{now}, or C{None} when no lease is left.

        @raise OversizeBindingError: if the message would exceed 65535 octets.
        """
        elapsed = now - binding.cltt
        elapsed = max(elapsed, 0)
        raw = binding.client_id.raw
        addresses = binding.addresses
        prefixes = binding.prefixes
        args: list[object] = [0, type_xid, _CLIENT_DATA, 0, 1, len(raw), raw]
        extend = args.extend
        n_addresses = n_prefixes = 0
        for lease in addresses:
            valid = lease.valid_lifetime
            if valid != INFINITY:
                valid -= elapsed
                if valid <= 0:
                    continue
            preferred = lease.preferred_lifetime
            if preferred != INFINITY:
                preferred -= elapsed
                preferred = max(preferred, 0)
            extend((_IAADDR_CODE, 24, lease.address.packed, preferred, valid))
            n_addresses += 1
        for prefix_lease in prefixes:
            valid = prefix_lease.valid_lifetime
            if valid != INFINITY:
                valid -= elapsed
                if valid <= 0:
                    continue
            preferred = prefix_lease.preferred_lifetime
            if preferred != INFINITY:
                preferred -= elapsed
                preferred = max(preferred, 0)
            network = prefix_lease.prefix
            extend(
                (
                    _IAPREFIX_CODE,
                    25,
                    preferred,
                    valid,
                    network.prefixlen,
                    network.network_address.packed,
                )
            )
            n_prefixes += 1
        if not (n_addresses or n_prefixes):
            return None
        extend((_CLT_CODE, 4, elapsed if elapsed < INFINITY else INFINITY))
        extra = b""
        if self._relay and binding.relay_data is not None:
            extra = binding.relay_data.encode()
        if self._extras and binding.options:
            wanted = self._extras
            extra += b"".join(
                option.encode() for option in binding.options if option.code in wanted
            )
        shape = _shape(len(raw), n_addresses, n_prefixes)
        cd_length = shape.size - 10 + len(extra)
        if cd_length + 8 > 0xFFFF:
            raise OversizeBindingError(
                f"CLIENT_DATA of {cd_length} octets for {binding.client_id} does not fit"
            )
        args[0] = cd_length + 8
        args[3] = cd_length
        packed = shape.pack(*args)
        return packed + extra if extra else packed

    def encode(self, binding: Binding, now: int) -> bytes | None:
        """The CLIENT_DATA data octets alone (no option header), or C{None}."""
        framed = self._encode_frame(binding, now, 0)
        return None if framed is None else framed[10:]


def frame(msg_type: MessageType, transaction_id: int, options: Sequence[bytes]) -> bytes:
    """
    A framed message (size prefix, type, transaction-id) around already encoded options.

    @raise ValueError: if the message exceeds 65535 octets.
    """
    body = b"".join(options)
    size = 4 + len(body)
    if size > 0xFFFF:
        raise ValueError(f"message of {size} octets exceeds 65535")
    return _HI.pack(size, (msg_type << 24) | transaction_id) + body
