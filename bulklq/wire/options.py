"""
DHCPv6 options as typed, immutable values, and the strict option decoder.

Each option class knows its C{code}, encodes itself with L{Option.encode} and is decoded by
a function registered for its code. Options bulklq does not model are kept as
L{UnknownOption} and re-encode to the same octets. Options that embed messages
(C{OPTION_RELAY_MSG}, C{OPTION_LQ_RELAY_DATA}) live in L{bulklq.wire.messages}.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable, Iterable
from ipaddress import IPv6Address, IPv6Network
from typing import ClassVar, TypeVar

import attrs

from .constants import MAX_MESSAGE_SIZE, OptionCode, QueryType, StatusCode
from .duid import Duid
from .errors import WireError

__all__ = [
    "MAX_NESTING",
    "ClientData",
    "ClientId",
    "CltTime",
    "IAAddress",
    "IAPrefix",
    "InterfaceId",
    "LQBaseTime",
    "LQClientLink",
    "LQEndTime",
    "LQQuery",
    "LQStartTime",
    "Option",
    "OptionContainer",
    "OptionRequest",
    "RelayId",
    "RemoteId",
    "ServerId",
    "StatusCodeOption",
    "UnknownOption",
    "decode_options",
    "encode_options",
    "register_decoder",
]

#: How deeply option containers may nest (CLIENT_DATA, LQ_RELAY_DATA, relay layers ...).
MAX_NESTING = 24

_HEADER = struct.Struct("!HH")
_U32 = struct.Struct("!I")
_IAADDR_FIXED = struct.Struct("!16sII")
_IAPREFIX_FIXED = struct.Struct("!IIB16s")

OptionT = TypeVar("OptionT", bound="Option")

#: A decoder gets the whole buffer, the option data's bounds, the nesting depth and the code.
Decoder = Callable[[bytes, int, int, int], "Option"]
_DECODERS: dict[int, Decoder] = {}


def register_decoder(code: int) -> Callable[[Decoder], Decoder]:
    """Register the function that decodes option C{code}'s data."""

    def register(decoder: Decoder) -> Decoder:
        _DECODERS[code] = decoder
        return decoder

    return register


def option_header(code: int, length: int) -> bytes:
    """The 4-octet code and length header; refuses data over 65535 octets."""
    if length > MAX_MESSAGE_SIZE:
        raise WireError(f"option data of {length} octets exceeds 65535", None, code)
    return _HEADER.pack(code, length)


class Option:
    """
    Base of every option value. Subclasses set C{code} and implement L{encode_data}.
    """

    __slots__ = ()
    code: ClassVar[int]

    def encode_data(self) -> bytes:
        """The option's data field, without the 4-octet header."""
        raise NotImplementedError

    def encode(self) -> bytes:
        """The whole option: code, length and data."""
        data = self.encode_data()
        return option_header(self.code, len(data)) + data


class OptionContainer:
    """Lookup helpers for values that carry a tuple of options."""

    __slots__ = ()
    options: tuple[Option, ...]

    def option(self, option_type: type[OptionT]) -> OptionT | None:
        """The first option of C{option_type}, or C{None}."""
        for option in self.options:
            if type(option) is option_type:
                return option
        return None

    def options_of(self, option_type: type[OptionT]) -> list[OptionT]:
        """Every option of C{option_type}, in order."""
        return [option for option in self.options if type(option) is option_type]


def encode_options(options: Iterable[Option]) -> bytes:
    """Concatenate the encodings of C{options}."""
    return b"".join(option.encode() for option in options)


def decode_options(data: bytes, start: int, end: int, depth: int) -> tuple[Option, ...]:
    """
    Decode the options in C{data[start:end]}, strictly.

    @raise WireError: on a truncated header, an option overrunning C{end}, nesting deeper
        than L{MAX_NESTING}, or any option whose data is invalid.
    """
    if depth > MAX_NESTING:
        raise WireError(f"options nested deeper than {MAX_NESTING}", start)
    options: list[Option] = []
    append = options.append
    unpack_header = _HEADER.unpack_from
    decoders = _DECODERS
    offset = start
    while offset < end:
        if end - offset < 4:
            raise WireError(f"{end - offset} trailing octets are not an option header", offset)
        code, length = unpack_header(data, offset)
        data_start = offset + 4
        data_end = data_start + length
        if data_end > end:
            raise WireError(
                f"option length {length} overruns its container by {data_end - end} octets",
                offset,
                code,
            )
        decoder = decoders.get(code)
        if decoder is None:
            append(UnknownOption(code, data[data_start:data_end]))
        else:
            append(decoder(data, data_start, data_end, depth + 1))
        offset = data_end
    return tuple(options)


def _fixed_length(code: int, expected: int, start: int, end: int) -> None:
    if end - start != expected:
        raise WireError(
            f"{OptionCode(code).name} must be {expected} octets, not {end - start}", start, code
        )


def _minimum_length(code: int, minimum: int, start: int, end: int) -> None:
    if end - start < minimum:
        raise WireError(
            f"{OptionCode(code).name} of {end - start} octets is shorter than {minimum}",
            start,
            code,
        )


def _duid_at(code: int, data: bytes, start: int, end: int) -> Duid:
    try:
        return Duid.from_bytes(data[start:end], start)
    except WireError as error:
        raise WireError(error.reason, start, code) from None


@attrs.frozen(order=False)
class UnknownOption(Option):
    """An option bulklq does not model: kept as its code and raw data."""

    code: int  # type: ignore[misc]
    data: bytes

    def encode_data(self) -> bytes:
        return self.data


@attrs.frozen
class ClientId(Option):
    """OPTION_CLIENTID (1): the client's DUID (or the requestor's, in a LEASEQUERY)."""

    code: ClassVar[int] = OptionCode.OPTION_CLIENTID
    duid: Duid

    def encode_data(self) -> bytes:
        return self.duid.raw


@attrs.frozen
class ServerId(Option):
    """OPTION_SERVERID (2): the server's DUID."""

    code: ClassVar[int] = OptionCode.OPTION_SERVERID
    duid: Duid

    def encode_data(self) -> bytes:
        return self.duid.raw


@attrs.frozen
class RelayId(Option):
    """OPTION_RELAY_ID (53, RFC 5460 section 5.4.1): a relay agent's DUID."""

    code: ClassVar[int] = OptionCode.OPTION_RELAY_ID
    duid: Duid

    def encode_data(self) -> bytes:
        return self.duid.raw


@register_decoder(OptionCode.OPTION_CLIENTID)
def _decode_client_id(data: bytes, start: int, end: int, depth: int) -> Option:
    return ClientId(_duid_at(OptionCode.OPTION_CLIENTID, data, start, end))


@register_decoder(OptionCode.OPTION_SERVERID)
def _decode_server_id(data: bytes, start: int, end: int, depth: int) -> Option:
    return ServerId(_duid_at(OptionCode.OPTION_SERVERID, data, start, end))


@register_decoder(OptionCode.OPTION_RELAY_ID)
def _decode_relay_id(data: bytes, start: int, end: int, depth: int) -> Option:
    return RelayId(_duid_at(OptionCode.OPTION_RELAY_ID, data, start, end))


@attrs.frozen
class IAAddress(OptionContainer, Option):
    """OPTION_IAADDR (5): an address with its preferred and valid lifetimes (seconds)."""

    code: ClassVar[int] = OptionCode.OPTION_IAADDR
    address: IPv6Address
    preferred_lifetime: int
    valid_lifetime: int
    options: tuple[Option, ...] = ()

    def encode_data(self) -> bytes:
        try:
            fixed = _IAADDR_FIXED.pack(
                self.address.packed, self.preferred_lifetime, self.valid_lifetime
            )
        except struct.error as error:
            raise WireError(f"cannot encode IAADDR: {error}", None, self.code) from None
        return fixed + encode_options(self.options)


@register_decoder(OptionCode.OPTION_IAADDR)
def _decode_iaaddr(data: bytes, start: int, end: int, depth: int) -> Option:
    _minimum_length(OptionCode.OPTION_IAADDR, 24, start, end)
    address, preferred, valid = _IAADDR_FIXED.unpack_from(data, start)
    return IAAddress(
        IPv6Address(address), preferred, valid, decode_options(data, start + 24, end, depth)
    )


@attrs.frozen
class IAPrefix(OptionContainer, Option):
    """
    OPTION_IAPREFIX (26): a delegated prefix with its lifetimes (seconds).

    The prefix is kept as address and length, exactly as on the wire (host bits included);
    L{network} gives it as an C{IPv6Network}.
    """

    code: ClassVar[int] = OptionCode.OPTION_IAPREFIX
    preferred_lifetime: int
    valid_lifetime: int
    prefix_length: int
    prefix: IPv6Address
    options: tuple[Option, ...] = ()

    @property
    def network(self) -> IPv6Network:
        """The prefix as a network (host bits cleared)."""
        return IPv6Network((self.prefix, self.prefix_length), strict=False)

    def encode_data(self) -> bytes:
        if not 0 <= self.prefix_length <= 128:
            raise WireError(f"prefix length {self.prefix_length} is not 0..128", None, self.code)
        try:
            fixed = _IAPREFIX_FIXED.pack(
                self.preferred_lifetime,
                self.valid_lifetime,
                self.prefix_length,
                self.prefix.packed,
            )
        except struct.error as error:
            raise WireError(f"cannot encode IAPREFIX: {error}", None, self.code) from None
        return fixed + encode_options(self.options)


@register_decoder(OptionCode.OPTION_IAPREFIX)
def _decode_iaprefix(data: bytes, start: int, end: int, depth: int) -> Option:
    _minimum_length(OptionCode.OPTION_IAPREFIX, 25, start, end)
    preferred, valid, length, prefix = _IAPREFIX_FIXED.unpack_from(data, start)
    if length > 128:
        raise WireError(
            f"prefix length {length} exceeds 128", start + 8, OptionCode.OPTION_IAPREFIX
        )
    return IAPrefix(
        preferred, valid, length, IPv6Address(prefix), decode_options(data, start + 25, end, depth)
    )


@attrs.frozen
class OptionRequest(Option):
    """OPTION_ORO (6): the option codes asked for."""

    code: ClassVar[int] = OptionCode.OPTION_ORO
    codes: tuple[int, ...]

    def encode_data(self) -> bytes:
        try:
            return struct.pack(f"!{len(self.codes)}H", *self.codes)
        except struct.error as error:
            raise WireError(f"cannot encode ORO: {error}", None, self.code) from None


@register_decoder(OptionCode.OPTION_ORO)
def _decode_oro(data: bytes, start: int, end: int, depth: int) -> Option:
    length = end - start
    if length % 2:
        raise WireError(f"ORO length {length} is odd", start, OptionCode.OPTION_ORO)
    return OptionRequest(struct.unpack_from(f"!{length // 2}H", data, start))


@attrs.frozen
class StatusCodeOption(Option):
    """OPTION_STATUS_CODE (13): a status code and a UTF-8 message (no NUL)."""

    code: ClassVar[int] = OptionCode.OPTION_STATUS_CODE
    status: int
    message: str = ""

    def encode_data(self) -> bytes:
        if "\x00" in self.message:
            raise WireError("status message contains NUL", None, self.code)
        if not 0 <= self.status <= 0xFFFF:
            raise WireError(f"status code {self.status} is not 0..65535", None, self.code)
        return self.status.to_bytes(2, "big") + self.message.encode("utf-8")


@register_decoder(OptionCode.OPTION_STATUS_CODE)
def _decode_status(data: bytes, start: int, end: int, depth: int) -> Option:
    code = OptionCode.OPTION_STATUS_CODE
    _minimum_length(code, 2, start, end)
    status = (data[start] << 8) | data[start + 1]
    raw = data[start + 2 : end]
    try:
        message = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise WireError(f"status message is not UTF-8: {error.reason}", start + 2, code) from None
    if "\x00" in message:
        raise WireError("status message contains NUL", start + 2, code)
    with contextlib.suppress(ValueError):
        status = StatusCode(status)
    return StatusCodeOption(status, message)


@attrs.frozen
class InterfaceId(Option):
    """OPTION_INTERFACE_ID (18): the relay's opaque interface identifier."""

    code: ClassVar[int] = OptionCode.OPTION_INTERFACE_ID
    value: bytes

    def encode_data(self) -> bytes:
        return self.value


@register_decoder(OptionCode.OPTION_INTERFACE_ID)
def _decode_interface_id(data: bytes, start: int, end: int, depth: int) -> Option:
    return InterfaceId(data[start:end])


@attrs.frozen(order=True)
class RemoteId(Option):
    """
    OPTION_REMOTE_ID (37, RFC 4649): enterprise number and a remote-id of at least 1 octet.

    Matching uses the whole value, enterprise number included (RFC 5460, as Kea does).
    """

    code: ClassVar[int] = OptionCode.OPTION_REMOTE_ID
    enterprise_number: int
    remote_id: bytes

    def encode_data(self) -> bytes:
        if not self.remote_id:
            raise WireError("REMOTE_ID needs at least one octet of remote-id", None, self.code)
        try:
            return _U32.pack(self.enterprise_number) + self.remote_id
        except struct.error as error:
            raise WireError(f"cannot encode REMOTE_ID: {error}", None, self.code) from None

    @classmethod
    def from_text(cls, text: str) -> RemoteId:
        """
        Parse C{ENTERPRISE:HEX} (C{32473:636972637569742d37}) or the hex of the whole value.

        @raise WireError: if the text is not of either form.
        """
        enterprise, separator, hexdata = text.strip().partition(":")
        try:
            if separator:
                raw = int(enterprise).to_bytes(4, "big") + bytes.fromhex(hexdata.replace(":", ""))
            else:
                raw = bytes.fromhex(text.strip().removeprefix("0x"))
        except (ValueError, OverflowError):
            raise WireError(f"{text!r} is not ENTERPRISE:HEX or hex") from None
        return cls.from_bytes(raw)

    @classmethod
    def from_bytes(cls, raw: bytes, offset: int = 0) -> RemoteId:
        """Decode the option data (enterprise number and remote-id)."""
        if len(raw) < 5:
            raise WireError(f"REMOTE_ID of {len(raw)} octets is shorter than 5", offset, cls.code)
        return cls(int.from_bytes(raw[:4], "big"), bytes(raw[4:]))

    def __str__(self) -> str:
        return f"{self.enterprise_number}:{self.remote_id.hex()}"


@register_decoder(OptionCode.OPTION_REMOTE_ID)
def _decode_remote_id(data: bytes, start: int, end: int, depth: int) -> Option:
    return RemoteId.from_bytes(data[start:end], start)


@attrs.frozen
class LQQuery(OptionContainer, Option):
    """OPTION_LQ_QUERY (44): query-type, link-address and the query-options."""

    code: ClassVar[int] = OptionCode.OPTION_LQ_QUERY
    query_type: int
    link_address: IPv6Address
    options: tuple[Option, ...] = ()

    def encode_data(self) -> bytes:
        if not 0 <= self.query_type <= 255:
            raise WireError(f"query-type {self.query_type} is not 0..255", None, self.code)
        return bytes((self.query_type,)) + self.link_address.packed + encode_options(self.options)


@register_decoder(OptionCode.OPTION_LQ_QUERY)
def _decode_lq_query(data: bytes, start: int, end: int, depth: int) -> Option:
    _minimum_length(OptionCode.OPTION_LQ_QUERY, 17, start, end)
    query_type: int = data[start]
    with contextlib.suppress(ValueError):
        query_type = QueryType(query_type)
    return LQQuery(
        query_type,
        IPv6Address(data[start + 1 : start + 17]),
        decode_options(data, start + 17, end, depth),
    )


@attrs.frozen
class ClientData(OptionContainer, Option):
    """OPTION_CLIENT_DATA (45): everything about one client on one link."""

    code: ClassVar[int] = OptionCode.OPTION_CLIENT_DATA
    options: tuple[Option, ...]

    def encode_data(self) -> bytes:
        return encode_options(self.options)


@register_decoder(OptionCode.OPTION_CLIENT_DATA)
def _decode_client_data(data: bytes, start: int, end: int, depth: int) -> Option:
    return ClientData(decode_options(data, start, end, depth))


@attrs.frozen
class _TimeOption(Option):
    """A 4-octet unsigned number of seconds."""

    seconds: int

    def encode_data(self) -> bytes:
        try:
            return _U32.pack(self.seconds)
        except struct.error as error:
            raise WireError(f"cannot encode time: {error}", None, self.code) from None


@attrs.frozen
class CltTime(_TimeOption):
    """OPTION_CLT_TIME (46): seconds since the server last talked to the client."""

    code: ClassVar[int] = OptionCode.OPTION_CLT_TIME


@attrs.frozen
class LQBaseTime(_TimeOption):
    """OPTION_LQ_BASE_TIME (100, RFC 7653): the server's time, seconds since 2000."""

    code: ClassVar[int] = OptionCode.OPTION_LQ_BASE_TIME


@attrs.frozen
class LQStartTime(_TimeOption):
    """OPTION_LQ_START_TIME (101, RFC 7653): window start, seconds since 2000."""

    code: ClassVar[int] = OptionCode.OPTION_LQ_START_TIME


@attrs.frozen
class LQEndTime(_TimeOption):
    """OPTION_LQ_END_TIME (102, RFC 7653): window end, seconds since 2000."""

    code: ClassVar[int] = OptionCode.OPTION_LQ_END_TIME


def _time_decoder(option_type: type[_TimeOption]) -> Decoder:
    def decode(data: bytes, start: int, end: int, depth: int) -> Option:
        _fixed_length(option_type.code, 4, start, end)
        return option_type(_U32.unpack_from(data, start)[0])

    return decode


for _time_type in (CltTime, LQBaseTime, LQStartTime, LQEndTime):
    register_decoder(_time_type.code)(_time_decoder(_time_type))


@attrs.frozen
class LQClientLink(Option):
    """OPTION_LQ_CLIENT_LINK (48, RFC 5007): the links a client has bindings on."""

    code: ClassVar[int] = OptionCode.OPTION_LQ_CLIENT_LINK
    link_addresses: tuple[IPv6Address, ...]

    def encode_data(self) -> bytes:
        if not self.link_addresses:
            raise WireError("LQ_CLIENT_LINK needs at least one link-address", None, self.code)
        return b"".join(address.packed for address in self.link_addresses)


@register_decoder(OptionCode.OPTION_LQ_CLIENT_LINK)
def _decode_lq_client_link(data: bytes, start: int, end: int, depth: int) -> Option:
    length = end - start
    if length == 0 or length % 16:
        raise WireError(
            f"LQ_CLIENT_LINK length {length} is not a positive multiple of 16",
            start,
            OptionCode.OPTION_LQ_CLIENT_LINK,
        )
    return LQClientLink(
        tuple(IPv6Address(data[offset : offset + 16]) for offset in range(start, end, 16))
    )
