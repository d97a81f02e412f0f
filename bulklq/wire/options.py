"""
DHCPv6 options as typed, immutable values, and the strict option decoder.

Each option class knows its C{code}, encodes itself with L{Option.encode} and is decoded by
a function registered for its code. Options bulklq does not model are kept as
L{UnknownOption} and re-encode to the same octets. Options that embed messages
(C{OPTION_RELAY_MSG}, C{OPTION_LQ_RELAY_DATA}) live in L{bulklq.wire.messages}.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from ipaddress import IPv6Address, IPv6Network
from typing import ClassVar, TypeVar

import attrs

from ._fast import ipv6_from_int, ipv6_from_packed, new, slot_setters
from .constants import MAX_MESSAGE_SIZE, OptionCode, QueryType, StatusCode, rfc_name
from .duid import Duid, duid_problem
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
    "NestingOption",
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
    "ipv6_octets",
    "is_modelled",
    "option_header",
    "register_decoder",
]

#: How deeply options may nest: the options of a message are at depth 1, those inside an option
#: (CLIENT_DATA, IAADDR, LQ_QUERY, ...) or inside a relay message carried by an option
#: (LQ_RELAY_DATA, RELAY_MSG) one deeper. An option deeper than this is refused, decoding and
#: encoding alike.
MAX_NESTING = 24

_HEADER = struct.Struct("!HH")
_U32 = struct.Struct("!I")
_IAADDR_FIXED = struct.Struct("!16sII")
_IAPREFIX_FIXED = struct.Struct("!IIB16s")
# The same layouts with the address as two 64-bit halves: no 16-octet slice to convert.
_IAADDR_NUMBERS = struct.Struct("!QQII")
_IAPREFIX_NUMBERS = struct.Struct("!IIBQQ")
_unpack_header = _HEADER.unpack_from
_pack_header = _HEADER.pack
_unpack_u32 = _U32.unpack_from
_unpack_iaaddr = _IAADDR_NUMBERS.unpack_from
_unpack_iaprefix = _IAPREFIX_NUMBERS.unpack_from

OptionT = TypeVar("OptionT", bound="Option")

#: A decoder gets the whole buffer, the option data's bounds and the depth of its own
#: sub-options (or of the options of the message it carries).
Decoder = Callable[[bytes, int, int, int], "Option"]
_DECODERS: dict[int, Decoder] = {}

#: Codes that L{decode_options} decodes itself (the options of every binding and of relay
#: chains), for speed.
_BUILT_IN = frozenset(
    (
        OptionCode.OPTION_CLIENTID,
        OptionCode.OPTION_IAADDR,
        OptionCode.OPTION_IAPREFIX,
        OptionCode.OPTION_CLIENT_DATA,
        OptionCode.OPTION_CLT_TIME,
        OptionCode.OPTION_INTERFACE_ID,
        OptionCode.OPTION_REMOTE_ID,
        OptionCode.OPTION_RELAY_ID,
    )
)


def register_decoder(code: int) -> Callable[[Decoder], Decoder]:
    """
    Register the function that decodes option C{code}'s data.

    The options of a binding (CLIENTID, IAADDR, IAPREFIX, CLIENT_DATA, CLT_TIME) and of relay
    chains (INTERFACE_ID, REMOTE_ID, RELAY_ID) are decoded inline by L{decode_options} and
    cannot be replaced.
    """

    def register(decoder: Decoder) -> Decoder:
        if code in _BUILT_IN:
            raise ValueError(f"option {code} is decoded by decode_options itself")
        _DECODERS[code] = decoder
        return decoder

    return register


def is_modelled(code: int) -> bool:
    """Whether option C{code} decodes to a typed class (not to L{UnknownOption})."""
    return code in _BUILT_IN or code in _DECODERS


def option_header(code: int, length: int) -> bytes:
    """
    The 4-octet code and length header.

    @raise WireError: if C{code} is not 0..65535 or C{length} exceeds 65535.
    """
    try:
        return _pack_header(code, length)
    except (struct.error, TypeError):
        if isinstance(length, int) and length > MAX_MESSAGE_SIZE:
            raise WireError(
                f"option data of {length} octets exceeds {MAX_MESSAGE_SIZE}", None, code
            ) from None
        raise WireError(f"option code {code!r} is not 0..65535", None, None) from None


class Option:
    """
    Base of every option value. Subclasses set C{code} and implement L{encode_data}.

    Options that contain options (or a relay message) derive from L{NestingOption}, which
    carries the nesting depth through the encoding so that it refuses what the decoder would.
    """

    __slots__ = ()
    code: ClassVar[int]

    def encode_data(self) -> bytes:
        """
        The option's data field, without the 4-octet header.

        @raise WireError: if a field is out of range or the option cannot be encoded.
        """
        raise NotImplementedError

    def encode(self) -> bytes:
        """
        The whole option: code, length and data.

        @raise WireError: if a field is out of range or the option cannot be encoded.
        """
        data = self.encode_data()
        return option_header(self.code, len(data)) + data

    def encode_at(self, depth: int) -> bytes:
        """
        The whole option, placed at options-depth C{depth} (1: a message's own options).

        @raise WireError: as L{encode}, or if a sub-option would sit deeper than
            L{MAX_NESTING}.
        """
        return self.encode()


class NestingOption(Option):
    """An option whose data holds options or a relay message: it knows its nesting depth."""

    __slots__ = ()

    def encode_data_at(self, depth: int) -> bytes:
        """The data field, its sub-options (or relayed message's options) at C{depth}."""
        raise NotImplementedError

    def encode_data(self) -> bytes:
        """The data field, this option taken as one of a message's own options."""
        return self.encode_data_at(2)

    def encode_at(self, depth: int) -> bytes:
        """The whole option at options-depth C{depth}; its sub-options at C{depth + 1}."""
        data = self.encode_data_at(depth + 1)
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


def encode_options(options: Iterable[Option], depth: int = 1) -> bytes:
    """
    Concatenate the encodings of C{options}, placed at options-depth C{depth}.

    @raise WireError: if an option cannot be encoded or would sit deeper than L{MAX_NESTING}.
    """
    if not isinstance(options, tuple):
        options = tuple(options)
    if not options:
        return b""
    if depth > MAX_NESTING:
        raise WireError(f"options nested deeper than {MAX_NESTING} levels", None, options[0].code)
    return b"".join([option.encode_at(depth) for option in options])


def decode_options(data: bytes, start: int, end: int, depth: int) -> tuple[Option, ...]:
    """
    Decode the options in C{data[start:end]}, strictly; they sit at options-depth C{depth}.

    @raise WireError: on a truncated header, an option overrunning C{end}, an option deeper
        than L{MAX_NESTING}, or any option whose data is invalid.
    """
    if start >= end:
        return ()
    if depth > MAX_NESTING:
        raise WireError(f"options nested deeper than {MAX_NESTING} levels", start)
    options: list[Option] = []
    append = options.append
    offset = start
    option: Option
    # The options of every binding are decoded here rather than through _DECODERS: a function
    # call and an attrs __init__ less per option (see _fast). Same checks, same values.
    while offset < end:
        if end - offset < 4:
            raise WireError(f"{end - offset} trailing octets are not an option header", offset)
        code, length = _unpack_header(data, offset)
        begin = offset + 4
        offset = begin + length
        if offset > end:
            raise WireError(
                f"option length {length} overruns its container by {offset - end} octets",
                begin - 4,
                code,
            )
        if code == 45:  # OPTION_CLIENT_DATA
            option = new(ClientData)
            _set_client_data_options(option, decode_options(data, begin, offset, depth + 1))
        elif code == 1:  # OPTION_CLIENTID
            raw = data[begin:offset]
            # Any DUID of 9..130 octets is valid unless it is a DUID-UUID (exactly 18).
            if length < 9 or length > 130 or (data[begin] == 0 and data[begin + 1] == 4):
                problem = duid_problem(raw)
                if problem is not None:
                    raise WireError(problem, begin, code)
            duid = new(Duid)
            _set_duid_raw(duid, raw)
            option = new(ClientId)
            _set_client_id_duid(option, duid)
        elif code == 5:  # OPTION_IAADDR
            if length < 24:
                raise _too_short(code, 24, begin, length)
            high, low, preferred, valid = _unpack_iaaddr(data, begin)
            option = new(IAAddress)
            _set_iaaddr_address(option, ipv6_from_int((high << 64) | low))
            _set_iaaddr_preferred(option, preferred)
            _set_iaaddr_valid(option, valid)
            _set_iaaddr_options(
                option, decode_options(data, begin + 24, offset, depth + 1) if length > 24 else ()
            )
        elif code == 46:  # OPTION_CLT_TIME
            if length != 4:
                raise _wrong_length(code, 4, begin, length)
            option = new(CltTime)
            _set_seconds(option, _unpack_u32(data, begin)[0])
        elif code == 26:  # OPTION_IAPREFIX
            if length < 25:
                raise _too_short(code, 25, begin, length)
            preferred, valid, prefix_length, high, low = _unpack_iaprefix(data, begin)
            if prefix_length > 128:
                raise WireError(f"prefix length {prefix_length} exceeds 128", begin + 8, code)
            option = new(IAPrefix)
            _set_iaprefix_preferred(option, preferred)
            _set_iaprefix_valid(option, valid)
            _set_iaprefix_length(option, prefix_length)
            _set_iaprefix_prefix(option, ipv6_from_int((high << 64) | low))
            _set_iaprefix_options(
                option, decode_options(data, begin + 25, offset, depth + 1) if length > 25 else ()
            )
        elif code == 53:  # OPTION_RELAY_ID (in every relay chain and relay-id query)
            option = new(RelayId)
            _set_relay_id_duid(option, _duid_at(code, data, begin, offset))
        elif code == 18:  # OPTION_INTERFACE_ID
            option = new(InterfaceId)
            _set_interface_id_value(option, data[begin:offset])
        elif code == 37:  # OPTION_REMOTE_ID
            if length < 5:
                raise _too_short(code, 5, begin, length)
            option = new(RemoteId)
            _set_remote_enterprise(option, _unpack_u32(data, begin)[0])
            _set_remote_id(option, data[begin + 4 : offset])
        else:
            decoder = _DECODERS.get(code)
            if decoder is None:
                option = new(UnknownOption)
                _set_unknown_code(option, code)
                _set_unknown_data(option, data[begin:offset])
            else:
                option = decoder(data, begin, offset, depth + 1)
        append(option)
    return tuple(options)


def _name(code: int) -> str:
    return rfc_name(code, OptionCode).removeprefix("OPTION_")


def _wrong_length(code: int, expected: int, start: int, length: int) -> WireError:
    return WireError(f"{_name(code)} must be {expected} octets, not {length}", start, code)


def _too_short(code: int, minimum: int, start: int, length: int) -> WireError:
    return WireError(f"{_name(code)} of {length} octets is shorter than {minimum}", start, code)


def _fixed_length(code: int, expected: int, start: int, end: int) -> None:
    if end - start != expected:
        raise _wrong_length(code, expected, start, end - start)


def _minimum_length(code: int, minimum: int, start: int, end: int) -> None:
    if end - start < minimum:
        raise _too_short(code, minimum, start, end - start)


def _duid_at(code: int, data: bytes, start: int, end: int) -> Duid:
    raw = data[start:end]
    problem = duid_problem(raw)
    if problem is not None:
        raise WireError(problem, start, code)
    duid = new(Duid)
    _set_duid_raw(duid, raw)
    return duid


def _encode_duid(code: int, duid: Duid) -> bytes:
    raw = duid.raw
    problem = duid_problem(raw)
    if problem is not None:
        raise WireError(problem, None, code)
    return raw


(_set_duid_raw,) = slot_setters(Duid, "raw")


@attrs.frozen(order=False)
class UnknownOption(Option):
    """
    An option bulklq does not model: kept as its code and raw data, re-encoded unchanged.

    Decoding gives one only for codes without a typed class (L{is_modelled} is false). One
    built by hand with a modelled code is encoded only if its data is valid for that code
    (it then decodes as the typed option).
    """

    code: int  # type: ignore[misc]
    data: bytes

    def encode_data(self) -> bytes:
        """The raw data."""
        return self.data

    def encode_at(self, depth: int) -> bytes:
        """The option; with a modelled code, only if its data decodes as that option."""
        encoded = option_header(self.code, len(self.data)) + self.data
        if is_modelled(self.code):
            try:
                decode_options(encoded, 0, len(encoded), depth)
            except WireError as error:
                raise WireError(
                    f"raw data is not a valid {_name(self.code)}: {error.reason}",
                    None,
                    self.code,
                ) from None
        return encoded

    def encode(self) -> bytes:
        """The option; with a modelled code, only if its data decodes as that option."""
        return self.encode_at(1)


_set_unknown_code, _set_unknown_data = slot_setters(UnknownOption, "code", "data")


@attrs.frozen
class ClientId(Option):
    """OPTION_CLIENTID (1): the client's DUID (or the requestor's, in a LEASEQUERY)."""

    code: ClassVar[int] = OptionCode.OPTION_CLIENTID
    duid: Duid

    def encode_data(self) -> bytes:
        """The DUID's octets (checked: a hand-built L{Duid} may be invalid)."""
        return _encode_duid(self.code, self.duid)


@attrs.frozen
class ServerId(Option):
    """OPTION_SERVERID (2): the server's DUID."""

    code: ClassVar[int] = OptionCode.OPTION_SERVERID
    duid: Duid

    def encode_data(self) -> bytes:
        """The DUID's octets (checked)."""
        return _encode_duid(self.code, self.duid)


@attrs.frozen
class RelayId(Option):
    """OPTION_RELAY_ID (53, RFC 5460 section 5.4.1): a relay agent's DUID."""

    code: ClassVar[int] = OptionCode.OPTION_RELAY_ID
    duid: Duid

    def encode_data(self) -> bytes:
        """The DUID's octets (checked)."""
        return _encode_duid(self.code, self.duid)


(_set_client_id_duid,) = slot_setters(ClientId, "duid")
(_set_server_id_duid,) = slot_setters(ServerId, "duid")
(_set_relay_id_duid,) = slot_setters(RelayId, "duid")


@register_decoder(OptionCode.OPTION_SERVERID)
def _decode_server_id(data: bytes, start: int, end: int, depth: int) -> Option:
    option = new(ServerId)
    _set_server_id_duid(option, _duid_at(OptionCode.OPTION_SERVERID, data, start, end))
    return option


def ipv6_octets(address: IPv6Address, code: int | None, what: str) -> bytes:
    """
    The 16 octets of C{address}.

    @raise WireError: if it is not an C{IPv6Address}, or has a scope (which the wire cannot
        carry, so it would not come back).
    """
    if isinstance(address, IPv6Address) and address.scope_id is None:
        return address.packed
    raise WireError(f"{what} {address!r} is not an IPv6Address without scope", None, code)


def _lifetimes_error(code: int, preferred: int, valid: int) -> WireError:
    return WireError(f"lifetimes {preferred!r}/{valid!r} are not both 0..4294967295", None, code)


@attrs.frozen
class IAAddress(OptionContainer, NestingOption):
    """OPTION_IAADDR (5): an address with its preferred and valid lifetimes (seconds)."""

    code: ClassVar[int] = OptionCode.OPTION_IAADDR
    address: IPv6Address
    preferred_lifetime: int
    valid_lifetime: int
    options: tuple[Option, ...] = ()

    def encode_data_at(self, depth: int) -> bytes:
        """Address, lifetimes and sub-options (at C{depth})."""
        try:
            fixed = _IAADDR_FIXED.pack(
                ipv6_octets(self.address, self.code, "address"),
                self.preferred_lifetime,
                self.valid_lifetime,
            )
        except struct.error:
            raise _lifetimes_error(
                self.code, self.preferred_lifetime, self.valid_lifetime
            ) from None
        return fixed + encode_options(self.options, depth) if self.options else fixed


(
    _set_iaaddr_address,
    _set_iaaddr_preferred,
    _set_iaaddr_valid,
    _set_iaaddr_options,
) = slot_setters(IAAddress, "address", "preferred_lifetime", "valid_lifetime", "options")


@attrs.frozen
class IAPrefix(OptionContainer, NestingOption):
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

    def encode_data_at(self, depth: int) -> bytes:
        """Lifetimes, prefix-length, prefix and sub-options (at C{depth})."""
        if not (isinstance(self.prefix_length, int) and 0 <= self.prefix_length <= 128):
            raise WireError(f"prefix length {self.prefix_length!r} is not 0..128", None, self.code)
        try:
            fixed = _IAPREFIX_FIXED.pack(
                self.preferred_lifetime,
                self.valid_lifetime,
                self.prefix_length,
                ipv6_octets(self.prefix, self.code, "prefix"),
            )
        except struct.error:
            raise _lifetimes_error(
                self.code, self.preferred_lifetime, self.valid_lifetime
            ) from None
        return fixed + encode_options(self.options, depth) if self.options else fixed


(
    _set_iaprefix_preferred,
    _set_iaprefix_valid,
    _set_iaprefix_length,
    _set_iaprefix_prefix,
    _set_iaprefix_options,
) = slot_setters(
    IAPrefix, "preferred_lifetime", "valid_lifetime", "prefix_length", "prefix", "options"
)


@attrs.frozen
class OptionRequest(Option):
    """OPTION_ORO (6): the option codes asked for."""

    code: ClassVar[int] = OptionCode.OPTION_ORO
    codes: tuple[int, ...]

    def encode_data(self) -> bytes:
        """The codes, two octets each."""
        try:
            return struct.pack(f"!{len(self.codes)}H", *self.codes)
        except struct.error as error:
            raise WireError(f"cannot encode ORO {self.codes!r}: {error}", None, self.code) from None


@register_decoder(OptionCode.OPTION_ORO)
def _decode_oro(data: bytes, start: int, end: int, depth: int) -> Option:
    length = end - start
    if length % 2:
        raise WireError(f"ORO length {length} is odd", start, OptionCode.OPTION_ORO)
    return OptionRequest(struct.unpack_from(f"!{length // 2}H", data, start))


_STATUS_CODES: dict[int, int] = {member.value: member for member in StatusCode}
_QUERY_TYPES: dict[int, int] = {member.value: member for member in QueryType}


@attrs.frozen
class StatusCodeOption(Option):
    """OPTION_STATUS_CODE (13): a status code and a UTF-8 message (no NUL)."""

    code: ClassVar[int] = OptionCode.OPTION_STATUS_CODE
    status: int
    message: str = ""

    def encode_data(self) -> bytes:
        """The status code and the UTF-8 message."""
        if not (isinstance(self.status, int) and 0 <= self.status <= 0xFFFF):
            raise WireError(f"status code {self.status!r} is not 0..65535", None, self.code)
        if "\x00" in self.message:
            raise WireError("status message contains NUL", None, self.code)
        try:
            text = self.message.encode("utf-8")
        except UnicodeEncodeError as error:
            raise WireError(
                f"status message is not encodable as UTF-8: {error.reason}", None, self.code
            ) from None
        return self.status.to_bytes(2, "big") + text


@register_decoder(OptionCode.OPTION_STATUS_CODE)
def _decode_status(data: bytes, start: int, end: int, depth: int) -> Option:
    code = OptionCode.OPTION_STATUS_CODE
    _minimum_length(code, 2, start, end)
    status = (data[start] << 8) | data[start + 1]
    raw = data[start + 2 : end]
    try:
        message = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise WireError(
            f"status message is not UTF-8: {error.reason} at octet {error.start}",
            start + 2 + error.start,
            code,
        ) from None
    if "\x00" in message:
        raise WireError("status message contains NUL", start + 2 + raw.index(0), code)
    return StatusCodeOption(_STATUS_CODES.get(status, status), message)


@attrs.frozen
class InterfaceId(Option):
    """OPTION_INTERFACE_ID (18): the relay's opaque interface identifier."""

    code: ClassVar[int] = OptionCode.OPTION_INTERFACE_ID
    value: bytes

    def encode_data(self) -> bytes:
        """The identifier's octets."""
        return self.value


(_set_interface_id_value,) = slot_setters(InterfaceId, "value")


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
        """Enterprise number and remote-id."""
        if not self.remote_id:
            raise WireError("REMOTE_ID needs at least one octet of remote-id", None, self.code)
        try:
            return _U32.pack(self.enterprise_number) + self.remote_id
        except struct.error:
            raise WireError(
                f"enterprise number {self.enterprise_number!r} is not 0..4294967295",
                None,
                self.code,
            ) from None

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
        """
        Decode the option data (enterprise number and remote-id).

        @raise WireError: if C{raw} is shorter than 5 octets.
        """
        if len(raw) < 5:
            raise WireError(f"REMOTE_ID of {len(raw)} octets is shorter than 5", offset, cls.code)
        option = new(cls)
        _set_remote_enterprise(option, (raw[0] << 24) | (raw[1] << 16) | (raw[2] << 8) | raw[3])
        _set_remote_id(option, bytes(raw[4:]))
        return option

    def __str__(self) -> str:
        return f"{self.enterprise_number}:{self.remote_id.hex()}"


_set_remote_enterprise, _set_remote_id = slot_setters(RemoteId, "enterprise_number", "remote_id")


@attrs.frozen
class LQQuery(OptionContainer, NestingOption):
    """OPTION_LQ_QUERY (44): query-type, link-address and the query-options."""

    code: ClassVar[int] = OptionCode.OPTION_LQ_QUERY
    query_type: int
    link_address: IPv6Address
    options: tuple[Option, ...] = ()

    def encode_data_at(self, depth: int) -> bytes:
        """Query-type, link-address and query-options (at C{depth})."""
        if not (isinstance(self.query_type, int) and 0 <= self.query_type <= 255):
            raise WireError(f"query-type {self.query_type!r} is not 0..255", None, self.code)
        link = ipv6_octets(self.link_address, self.code, "link-address")
        return bytes((self.query_type,)) + link + encode_options(self.options, depth)


@register_decoder(OptionCode.OPTION_LQ_QUERY)
def _decode_lq_query(data: bytes, start: int, end: int, depth: int) -> Option:
    _minimum_length(OptionCode.OPTION_LQ_QUERY, 17, start, end)
    query_type = data[start]
    return LQQuery(
        _QUERY_TYPES.get(query_type, query_type),
        ipv6_from_packed(data[start + 1 : start + 17]),
        decode_options(data, start + 17, end, depth),
    )


@attrs.frozen
class ClientData(OptionContainer, NestingOption):
    """OPTION_CLIENT_DATA (45): everything about one client on one link."""

    code: ClassVar[int] = OptionCode.OPTION_CLIENT_DATA
    options: tuple[Option, ...]

    def encode_data_at(self, depth: int) -> bytes:
        """The client's options (at C{depth})."""
        return encode_options(self.options, depth)


(_set_client_data_options,) = slot_setters(ClientData, "options")


@attrs.frozen
class _TimeOption(Option):
    """A 4-octet unsigned number of seconds."""

    seconds: int

    def encode_data(self) -> bytes:
        """The seconds, as an unsigned 32-bit number."""
        try:
            return _U32.pack(self.seconds)
        except struct.error:
            raise WireError(
                f"{self.seconds!r} seconds is not 0..4294967295", None, self.code
            ) from None


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


(_set_seconds,) = slot_setters(CltTime, "seconds")


def _time_decoder(option_type: type[_TimeOption]) -> Decoder:
    def decode(data: bytes, start: int, end: int, depth: int) -> Option:
        _fixed_length(option_type.code, 4, start, end)
        option = new(option_type)
        _set_seconds(option, _unpack_u32(data, start)[0])
        return option

    return decode


for _time_type in (LQBaseTime, LQStartTime, LQEndTime):
    register_decoder(_time_type.code)(_time_decoder(_time_type))


@attrs.frozen
class LQClientLink(Option):
    """OPTION_LQ_CLIENT_LINK (48, RFC 5007): the links a client has bindings on."""

    code: ClassVar[int] = OptionCode.OPTION_LQ_CLIENT_LINK
    link_addresses: tuple[IPv6Address, ...]

    def encode_data(self) -> bytes:
        """The link-addresses, 16 octets each."""
        if not self.link_addresses:
            raise WireError("LQ_CLIENT_LINK needs at least one link-address", None, self.code)
        return b"".join(
            [ipv6_octets(address, self.code, "link-address") for address in self.link_addresses]
        )


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
        tuple(ipv6_from_packed(data[offset : offset + 16]) for offset in range(start, end, 16))
    )
