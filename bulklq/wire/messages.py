"""
DHCPv6 messages: client/server messages (LEASEQUERY and its replies) and relay messages,
with the options that embed messages (OPTION_RELAY_MSG, OPTION_LQ_RELAY_DATA).
"""

from __future__ import annotations

import struct
from ipaddress import IPv6Address
from typing import ClassVar

import attrs

from ._fast import ipv6_from_packed, new, slot_setters
from .constants import MAX_MESSAGE_SIZE, MessageType, OptionCode
from .errors import WireError
from .options import (
    NestingOption,
    Option,
    OptionContainer,
    decode_options,
    encode_options,
    ipv6_octets,
    register_decoder,
)

__all__ = [
    "AnyMessage",
    "LQRelayData",
    "Message",
    "RelayMessage",
    "RelayMessageOption",
    "decode_message",
]

_RELAY_HEADER = struct.Struct("!BB16s16s")
_U32 = struct.Struct("!I")
_RELAY_TYPES = frozenset((MessageType.RELAY_FORW, MessageType.RELAY_REPL))
_MESSAGE_TYPES: dict[int, int] = {member.value: member for member in MessageType}


@attrs.frozen
class Message(OptionContainer):
    """
    A client/server message: type, 24-bit transaction-id, options.

    LEASEQUERY, LEASEQUERY-REPLY, -DATA, -DONE, ACTIVELEASEQUERY, STARTTLS and REPLY all have
    this shape (as has any other type but 0, RELAY-FORW and RELAY-REPL). Decoding gives
    C{msg_type} as a L{MessageType} when the type is known, else as the number.
    """

    msg_type: int
    transaction_id: int
    options: tuple[Option, ...] = ()

    def encode(self) -> bytes:
        """
        The message's octets.

        @raise WireError: if a field is out of range, an option cannot be encoded, or the
            message exceeds 65535 octets.
        """
        msg_type = self.msg_type
        if not isinstance(msg_type, int) or not 0 < msg_type <= 255 or msg_type in _RELAY_TYPES:
            raise WireError(f"message type {msg_type!r} is not a client/server type 1..255")
        transaction_id = self.transaction_id
        if not (isinstance(transaction_id, int) and 0 <= transaction_id <= 0xFFFFFF):
            raise WireError(f"transaction-id {transaction_id!r} is not 24 bits")
        data = _U32.pack((msg_type << 24) | transaction_id)
        if self.options:
            data += encode_options(self.options, 1)
        return _checked_size(data)


@attrs.frozen
class RelayMessage(OptionContainer):
    """A RELAY-FORW or RELAY-REPL message: hop-count, link-address, peer-address, options."""

    msg_type: int
    hop_count: int
    link_address: IPv6Address
    peer_address: IPv6Address
    options: tuple[Option, ...] = ()

    def encode(self) -> bytes:
        """
        The message's octets.

        @raise WireError: if a field is out of range, an option cannot be encoded, or the
            message exceeds 65535 octets.
        """
        return self.encode_at(1)

    def encode_at(self, depth: int) -> bytes:
        """
        The message's octets, its options at options-depth C{depth} (1 when the message
        stands alone, deeper when an option carries it).

        @raise WireError: as L{encode}, or if an option would sit deeper than
            L{MAX_NESTING<bulklq.wire.options.MAX_NESTING>}.
        """
        if self.msg_type not in _RELAY_TYPES:
            raise WireError(f"message type {self.msg_type!r} is not a relay message type")
        if not (isinstance(self.hop_count, int) and 0 <= self.hop_count <= 255):
            raise WireError(f"hop-count {self.hop_count!r} is not 0..255")
        data = _RELAY_HEADER.pack(
            self.msg_type,
            self.hop_count,
            ipv6_octets(self.link_address, None, "link-address"),
            ipv6_octets(self.peer_address, None, "peer-address"),
        ) + encode_options(self.options, depth)
        return _checked_size(data)

    @property
    def inner(self) -> AnyMessage | bytes | None:
        """What this layer's OPTION_RELAY_MSG carries, or C{None} if it has none."""
        relay_msg = self.option(RelayMessageOption)
        return None if relay_msg is None else relay_msg.message

    def layers(self) -> list[RelayMessage]:
        """This relay message and the relay messages nested in it, outermost first."""
        layers: list[RelayMessage] = []
        current: AnyMessage | bytes | None = self
        while isinstance(current, RelayMessage):
            layers.append(current)
            current = current.inner
        return layers


#: What L{decode_message} returns.
AnyMessage = Message | RelayMessage

_set_msg_type, _set_transaction_id, _set_msg_options = slot_setters(
    Message, "msg_type", "transaction_id", "options"
)
(
    _set_relay_type,
    _set_relay_hops,
    _set_relay_link,
    _set_relay_peer,
    _set_relay_options,
) = slot_setters(RelayMessage, "msg_type", "hop_count", "link_address", "peer_address", "options")


def _checked_size(data: bytes) -> bytes:
    if len(data) > MAX_MESSAGE_SIZE:
        raise WireError(f"message of {len(data)} octets exceeds {MAX_MESSAGE_SIZE}")
    return data


def decode_message(data: bytes) -> AnyMessage:
    """
    Decode one DHCPv6 message (no TCP size prefix), strictly and totally.

    C{bytearray} and C{memoryview} are accepted too (copied to C{bytes} first).

    @raise WireError: for any input that is not exactly one valid message of at most 65535
        octets; nothing else, whatever the octets.
    @raise TypeError: if C{data} is not bytes-like.
    """
    if type(data) is not bytes:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"decode_message needs bytes, not {type(data).__name__}")
        data = bytes(data)
    end = len(data)
    if end > MAX_MESSAGE_SIZE:
        raise WireError(f"message of {end} octets exceeds {MAX_MESSAGE_SIZE}", 0)
    if end < 4 or data[0] in _RELAY_TYPES or data[0] == 0:
        return _decode_message_at(data, 0, end, 1)
    # A client/server message (every message of a Bulk Leasequery conversation), inline.
    message = new(Message)
    _set_msg_type(message, _MESSAGE_TYPES.get(data[0], data[0]))
    _set_transaction_id(message, _U32.unpack_from(data)[0] & 0xFFFFFF)
    _set_msg_options(message, decode_options(data, 4, end, 1))
    return message


def _decode_message_at(data: bytes, start: int, end: int, depth: int) -> AnyMessage:
    """The message in C{data[start:end]}, its options at options-depth C{depth}."""
    if end - start < 4:
        raise WireError(f"message of {end - start} octets is shorter than 4", start)
    msg_type = data[start]
    if msg_type in _RELAY_TYPES:
        if end - start < 34:
            raise WireError(f"relay message of {end - start} octets is shorter than 34", start)
        _, hop_count, link, peer = _RELAY_HEADER.unpack_from(data, start)
        relay = new(RelayMessage)
        _set_relay_type(relay, _MESSAGE_TYPES[msg_type])
        _set_relay_hops(relay, hop_count)
        _set_relay_link(relay, ipv6_from_packed(link))
        _set_relay_peer(relay, ipv6_from_packed(peer))
        _set_relay_options(relay, decode_options(data, start + 34, end, depth))
        return relay
    if msg_type == 0:
        raise WireError("message type 0 is reserved", start)
    message = new(Message)
    _set_msg_type(message, _MESSAGE_TYPES.get(msg_type, msg_type))
    _set_transaction_id(message, _U32.unpack_from(data, start)[0] & 0xFFFFFF)
    _set_msg_options(message, decode_options(data, start + 4, end, depth))
    return message


@attrs.frozen
class RelayMessageOption(NestingOption):
    """
    OPTION_RELAY_MSG (9): the message a relay forwards.

    A nested relay message is decoded (so relay chains are visible); a client's own message
    is kept as raw octets. Raw octets that start like a relay message (type 12 or 13) are
    refused at encoding: give that message as a L{RelayMessage}.
    """

    code: ClassVar[int] = OptionCode.OPTION_RELAY_MSG
    message: RelayMessage | bytes

    def encode_data_at(self, depth: int) -> bytes:
        """The relayed message: raw octets, or the nested relay message (options at C{depth})."""
        message = self.message
        if isinstance(message, RelayMessage):
            return message.encode_at(depth)
        if not isinstance(message, bytes):
            raise WireError(
                f"relayed message {type(message).__name__} is neither bytes nor a RelayMessage",
                None,
                self.code,
            )
        if message and message[0] in _RELAY_TYPES:
            raise WireError(
                "raw relayed octets start like a relay message: give a RelayMessage",
                None,
                self.code,
            )
        return message


(_set_relay_msg_message,) = slot_setters(RelayMessageOption, "message")


@register_decoder(OptionCode.OPTION_RELAY_MSG)
def _decode_relay_msg(data: bytes, start: int, end: int, depth: int) -> Option:
    option = new(RelayMessageOption)
    if end > start and data[start] in _RELAY_TYPES:
        try:
            relayed = _decode_message_at(data, start, end, depth)
        except WireError as error:
            raise WireError(
                f"relayed message: {error.reason}",
                error.offset,
                OptionCode.OPTION_RELAY_MSG if error.option_code is None else error.option_code,
            ) from None
        _set_relay_msg_message(option, relayed)
    else:
        _set_relay_msg_message(option, data[start:end])
    return option


@attrs.frozen
class LQRelayData(NestingOption):
    """
    OPTION_LQ_RELAY_DATA (47, RFC 5007 section 4.1.2.4): the peer-address and the most
    recent relay chain (outermost RELAY-FORW first; the innermost RELAY_MSG removed).
    """

    code: ClassVar[int] = OptionCode.OPTION_LQ_RELAY_DATA
    peer_address: IPv6Address
    relay_message: RelayMessage

    def encode_data_at(self, depth: int) -> bytes:
        """Peer-address and the relay message (its options at C{depth})."""
        if not isinstance(self.relay_message, RelayMessage):
            raise WireError(
                f"relay-message {type(self.relay_message).__name__} is not a RelayMessage",
                None,
                self.code,
            )
        return ipv6_octets(
            self.peer_address, self.code, "peer-address"
        ) + self.relay_message.encode_at(depth)


_set_relay_data_peer, _set_relay_data_message = slot_setters(
    LQRelayData, "peer_address", "relay_message"
)


@register_decoder(OptionCode.OPTION_LQ_RELAY_DATA)
def _decode_lq_relay_data(data: bytes, start: int, end: int, depth: int) -> Option:
    code = OptionCode.OPTION_LQ_RELAY_DATA
    if end - start < 16 + 34:
        raise WireError(f"LQ_RELAY_DATA of {end - start} octets is shorter than 50", start, code)
    if data[start + 16] not in _RELAY_TYPES:
        raise WireError(
            f"LQ_RELAY_DATA holds message type {data[start + 16]}, not a relay message",
            start + 16,
            code,
        )
    option = new(LQRelayData)
    _set_relay_data_peer(option, ipv6_from_packed(data[start : start + 16]))
    _set_relay_data_message(option, _decode_message_at(data, start + 16, end, depth))
    return option
