"""DHCP Unique Identifiers (RFC 8415 section 11, RFC 6355)."""

from __future__ import annotations

import re
import struct

import attrs

from .constants import DuidType
from .errors import WireError

__all__ = ["MAX_DUID_LENGTH", "Duid"]

#: A DUID is a 2-octet type and at most 128 octets of identifier (RFC 8415 section 11.1).
MAX_DUID_LENGTH = 130

# Shortest valid encoding of each known type: the fixed fields and at least one octet of the
# variable part, except UUID which is exactly 16 octets.
_MIN_LENGTH = {DuidType.DUID_LLT: 9, DuidType.DUID_EN: 7, DuidType.DUID_LL: 5}
_UUID_LENGTH = 18
_HEX_CHARS = re.compile(r"^[0-9a-fA-F]*$")


@attrs.frozen(order=True, repr=False)
class Duid:
    """
    A DUID, held as its exact octets so that it round-trips and compares cheaply.

    Build one with L{from_bytes} (validated), L{from_text}, or the typed constructors
    L{llt}, L{en}, L{ll} and L{uuid}; read its fields through the typed properties. DUIDs of
    unknown types are kept as they are. C{str()} gives Kea's colon-hex form.
    """

    raw: bytes

    @classmethod
    def from_bytes(cls, data: bytes, offset: int = 0) -> Duid:
        """
        Validate and wrap C{data}; C{offset} only locates errors in an enclosing buffer.

        @raise WireError: if C{data} is shorter than 3 octets, longer than 130, or shorter
            than its type's fixed fields.
        """
        length = len(data)
        if length < 3:
            raise WireError(f"DUID of {length} octets is too short", offset)
        if length > MAX_DUID_LENGTH:
            raise WireError(f"DUID of {length} octets exceeds {MAX_DUID_LENGTH}", offset)
        duid_type = (data[0] << 8) | data[1]
        minimum = _MIN_LENGTH.get(duid_type)  # type: ignore[call-overload]
        if minimum is not None and length < minimum:
            raise WireError(
                f"{DuidType(duid_type).name} of {length} octets is shorter than {minimum}",
                offset,
            )
        if duid_type == DuidType.DUID_UUID and length != _UUID_LENGTH:
            raise WireError(f"DUID_UUID must be {_UUID_LENGTH} octets, not {length}", offset)
        return cls(bytes(data))

    @classmethod
    def from_text(cls, text: str) -> Duid:
        """
        Parse colon-hex (C{00:01:00:01:...}, as Kea writes), dash-hex, or plain hex.

        @raise WireError: if the text is not hex or is not a valid DUID.
        """
        cleaned = text.strip()
        if cleaned.lower().startswith("0x"):
            cleaned = cleaned[2:]
        if ":" in cleaned or "-" in cleaned:
            parts = re.split(r"[:-]", cleaned)
            if any(len(part) not in (1, 2) for part in parts):
                raise WireError(f"{text!r} is not a colon-separated hex DUID")
            cleaned = "".join(part.rjust(2, "0") for part in parts)
        if not cleaned or len(cleaned) % 2 or not _HEX_CHARS.match(cleaned):
            raise WireError(f"{text!r} is not a hex DUID")
        return cls.from_bytes(bytes.fromhex(cleaned))

    @classmethod
    def llt(cls, hardware_type: int, time: int, link_layer_address: bytes) -> Duid:
        """A DUID-LLT; C{time} counts seconds since 2000-01-01 00:00 UTC."""
        return cls.from_bytes(
            struct.pack("!HHI", DuidType.DUID_LLT, hardware_type, time) + link_layer_address
        )

    @classmethod
    def en(cls, enterprise_number: int, identifier: bytes) -> Duid:
        """A DUID-EN: a vendor's enterprise number and its identifier."""
        return cls.from_bytes(struct.pack("!HI", DuidType.DUID_EN, enterprise_number) + identifier)

    @classmethod
    def ll(cls, hardware_type: int, link_layer_address: bytes) -> Duid:
        """A DUID-LL: hardware type and link-layer address."""
        return cls.from_bytes(
            struct.pack("!HH", DuidType.DUID_LL, hardware_type) + link_layer_address
        )

    @classmethod
    def uuid(cls, value: bytes) -> Duid:
        """A DUID-UUID (RFC 6355) from the 16 octets of a UUID."""
        return cls.from_bytes(struct.pack("!H", DuidType.DUID_UUID) + value)

    @property
    def duid_type(self) -> int:
        """The type field: a L{DuidType} when known, else the number."""
        value = (self.raw[0] << 8) | self.raw[1]
        try:
            return DuidType(value)
        except ValueError:
            return value

    @property
    def hardware_type(self) -> int | None:
        """Hardware type of a DUID-LLT or DUID-LL, else C{None}."""
        if self.duid_type in (DuidType.DUID_LLT, DuidType.DUID_LL):
            return int.from_bytes(self.raw[2:4], "big")
        return None

    @property
    def time(self) -> int | None:
        """Time field of a DUID-LLT (seconds since 2000), else C{None}."""
        if self.duid_type == DuidType.DUID_LLT:
            return int.from_bytes(self.raw[4:8], "big")
        return None

    @property
    def link_layer_address(self) -> bytes | None:
        """Link-layer address of a DUID-LLT or DUID-LL, else C{None}."""
        if self.duid_type == DuidType.DUID_LLT:
            return self.raw[8:]
        if self.duid_type == DuidType.DUID_LL:
            return self.raw[4:]
        return None

    @property
    def enterprise_number(self) -> int | None:
        """Enterprise number of a DUID-EN, else C{None}."""
        if self.duid_type == DuidType.DUID_EN:
            return int.from_bytes(self.raw[2:6], "big")
        return None

    @property
    def identifier(self) -> bytes | None:
        """Identifier of a DUID-EN, else C{None}."""
        if self.duid_type == DuidType.DUID_EN:
            return self.raw[6:]
        return None

    @property
    def uuid_bytes(self) -> bytes | None:
        """The 16 UUID octets of a DUID-UUID, else C{None}."""
        if self.duid_type == DuidType.DUID_UUID:
            return self.raw[2:]
        return None

    def hex(self) -> str:
        """Plain lower-case hex, as PostgreSQL and JSON outputs use."""
        return self.raw.hex()

    def __str__(self) -> str:
        return self.raw.hex(":")

    def __repr__(self) -> str:
        return f"Duid({str(self)!r})"
