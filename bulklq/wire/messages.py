"""
DHCPv6 messages: client/server messages (LEASEQUERY and its replies) and relay messages,
with the options that embed messages (OPTION_RELAY_MSG, OPTION_LQ_RELAY_DATA).
"""

from __future__ import annotations

import struct
from ipaddress import IPv6Address
from typing import ClassVar

import attrs

from .constants import MAX_MESSAGE_SIZE, MessageType, OptionCode
from .errors import WireError
from .options import (
    Option,
    OptionContainer,
    decode_options,
    encode_options,
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
_RELAY_TYPES = frozenset((MessageType.RELAY_FORW, MessageType.RELAY_REPL))
_MESSAGE_TYPES = {member.value: member for member in MessageType}


@attrs.frozen
class Message(OptionContainer):
    """
    A client/server message: type, 24-bit transaction-id, options.

    LEASEQUERY, LEASEQUERY-REPLY, -DATA, -DONE, ACTIVELEASEQUERY, STARTTLS and REPLY all have
    this shape.
    """

    msg_type: int
    transaction_id: int
    options: tuple[Option, ...] = ()

    def encode(self) -> bytes:
        """
        The message's octets.

        @raise WireError: if a field is out of range or the message exceeds 65535 octets.
        """
        if not 0 <= self.msg_type <= 255 or self.msg_type in _RELAY_TYPES or self.msg_type == 0:
            raise WireError(f"message type {self.msg_type} is not a client/server type")
        if not 0 <= self.transaction_id <= 0xFFFFFF:
            raise WireError(f"transaction-id {self.transaction_id} is not 24 bits")
        data = ((self.msg_type << 24) | self.transaction_id).to_bytes(4, "big") + encode_options(
            self.options
        )
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

        @raise WireError: if a field is out of range or the message exceeds 65535 octets.
        """
        if self.msg_type not in _RELAY_TYPES:
            raise WireError(f"message type {self.msg_type} is not a relay message type")
        if not 0 <= self.hop_count <= 255:
            raise WireError(f"hop-count {self.hop_count} is not 0..255")
        data = _RELAY_HEADER.pack(
            self.msg_type, self.hop_count, self.link_address.packed, self.peer_address.packed
        ) + encode_options(self.options)
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


AnyMessage = Message | RelayMessage


def _checked_size(data: bytes) -> bytes:
    if len(data) > MAX_MESSAGE_SIZE:
        raise WireError(f"message of {len(data)} octets exceeds {MAX_MESSAGE_SIZE}")
    return data


def decode_message(data: bytes) -> AnyMessage:
    """
    Decode one DHCPv6 message (no TCP size prefix), strictly and totally.

    @raise WireError: for any input that is not exactly one valid message.
    """
    if not isinstance(data, bytes):
        data = bytes(data)
    if len(data) > MAX_MESSAGE_SIZE:
        raise WireError(f"message of {len(data)} octets exceeds {MAX_MESSAGE_SIZE}", 0)
    return _decode_message_at(data, 0, len(data), 0)


def _decode_message_at(data: bytes, start: int, end: int, depth: int) -> AnyMessage:
    if end - start < 4:
        raise WireError(f"message of {end - start} octets is shorter than 4", start)
    msg_type = data[start]
    if msg_type == 0:
        raise WireError("message type 0 is reserved", start)
    if msg_type in _RELAY_TYPES:
        if end - start < 34:
            raise WireError(f"relay message of {end - start} octets is shorter than 34", start)
        _, hop_count, link, peer = _RELAY_HEADER.unpack_from(data, start)
        return RelayMessage(
            _MESSAGE_TYPES[msg_type],
            hop_count,
            IPv6Address(link),
            IPv6Address(peer),
            decode_options(data, start + 34, end, depth + 1),
        )
    return Message(
        _MESSAGE_TYPES.get(msg_type, msg_type),
        int.from_bytes(data[start + 1 : start + 4], "big"),
        decode_options(data, start + 4, end, depth + 1),
    )


@attrs.frozen
class RelayMessageOption(Option):
    """
    OPTION_RELAY_MSG (9): the message a relay forwards.

    A nested relay message is decoded (so relay chains are visible); a client's own message
    is kept as raw octets.
    """

    code: ClassVar[int] = OptionCode.OPTION_RELAY_MSG
    message: RelayMessage | bytes

    def encode_data(self) -> bytes:
        if isinstance(self.message, bytes):
            return self.message
        return self.message.encode()


@register_decoder(OptionCode.OPTION_RELAY_MSG)
def _decode_relay_msg(data: bytes, start: int, end: int, depth: int) -> Option:
    if end > start and data[start] in _RELAY_TYPES:
        try:
            relayed = _decode_message_at(data, start, end, depth)
        except WireError as error:
            raise WireError(
                f"relayed message: {error.reason}",
                error.offset,
                error.option_code or OptionCode.OPTION_RELAY_MSG,
            ) from None
        assert isinstance(relayed, RelayMessage)
        return RelayMessageOption(relayed)
    return RelayMessageOption(data[start:end])


@attrs.frozen
class LQRelayData(Option):
    """
    OPTION_LQ_RELAY_DATA (47, RFC 5007 section 4.1.2.4): the peer-address and the most
    recent relay chain (outermost RELAY-FORW first; the innermost RELAY_MSG removed).
    """

    code: ClassVar[int] = OptionCode.OPTION_LQ_RELAY_DATA
    peer_address: IPv6Address
    relay_message: RelayMessage

    def encode_data(self) -> bytes:
        return self.peer_address.packed + self.relay_message.encode()


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
    relayed = _decode_message_at(data, start + 16, end, depth)
    assert isinstance(relayed, RelayMessage)
    return LQRelayData(IPv6Address(data[start : start + 16]), relayed)
