"""DHCP Unique Identifiers (RFC 8415 section 11, RFC 6355)."""

from __future__ import annotations

import re
import struct

import attrs

from .constants import DuidType
from .errors import WireError

__all__ = ["MAX_DUID_LENGTH", "Duid", "duid_problem"]

#: A DUID is a 2-octet type and at most 128 octets of identifier (RFC 8415 section 11.1).
MAX_DUID_LENGTH = 130

# Allowed total lengths (type included) of each known type: the fixed fields and at least one
# octet of the variable part; a UUID is exactly 16 octets (RFC 6355).
_LENGTHS = {
    DuidType.DUID_LLT.value: (9, MAX_DUID_LENGTH),
    DuidType.DUID_EN.value: (7, MAX_DUID_LENGTH),
    DuidType.DUID_LL.value: (5, MAX_DUID_LENGTH),
    DuidType.DUID_UUID.value: (18, 18),
}
_HEX_CHARS = re.compile(r"[0-9a-fA-F]*")


def duid_problem(raw: bytes) -> str | None:
    """
    What makes C{raw} an invalid DUID, or C{None} if it is valid.

    A DUID is a 2-octet type and 1 to 128 octets (RFC 8415 section 11.1); a known type must
    also hold its fixed fields and, except DUID-UUID (exactly 16 octets), at least one octet
    of link-layer address or identifier.
    """
    length = len(raw)
    if length < 3:
        return f"DUID of {length} octets is shorter than 3"
    if length > MAX_DUID_LENGTH:
        return f"DUID of {length} octets exceeds {MAX_DUID_LENGTH}"
    bounds = _LENGTHS.get((raw[0] << 8) | raw[1])
    if bounds is None or bounds[0] <= length <= bounds[1]:
        return None
    name = DuidType((raw[0] << 8) | raw[1]).name
    if bounds[0] == bounds[1]:
        return f"{name} must be {bounds[0]} octets, not {length}"
    return f"{name} of {length} octets is shorter than {bounds[0]}"


def _pack(layout: str, *fields: int) -> bytes:
    try:
        return struct.pack(layout, *fields)
    except struct.error as error:
        raise WireError(f"cannot encode DUID fields {fields}: {error}") from None


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

        @raise WireError: if C{data} is not a valid DUID (see L{duid_problem}).
        """
        problem = duid_problem(data)
        if problem is not None:
            raise WireError(problem, offset)
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
        if not cleaned or len(cleaned) % 2 or not _HEX_CHARS.fullmatch(cleaned):
            raise WireError(f"{text!r} is not a hex DUID")
        return cls.from_bytes(bytes.fromhex(cleaned))

    @classmethod
    def llt(cls, hardware_type: int, time: int, link_layer_address: bytes) -> Duid:
        """A DUID-LLT; C{time} counts seconds since 2000-01-01 00:00 UTC."""
        return cls.from_bytes(
            _pack("!HHI", DuidType.DUID_LLT, hardware_type, time) + link_layer_address
        )

    @classmethod
    def en(cls, enterprise_number: int, identifier: bytes) -> Duid:
        """A DUID-EN: a vendor's enterprise number and its identifier."""
        return cls.from_bytes(_pack("!HI", DuidType.DUID_EN, enterprise_number) + identifier)

    @classmethod
    def ll(cls, hardware_type: int, link_layer_address: bytes) -> Duid:
        """A DUID-LL: hardware type and link-layer address."""
        return cls.from_bytes(_pack("!HH", DuidType.DUID_LL, hardware_type) + link_layer_address)

    @classmethod
    def uuid(cls, value: bytes) -> Duid:
        """A DUID-UUID (RFC 6355) from the 16 octets of a UUID."""
        return cls.from_bytes(_pack("!H", DuidType.DUID_UUID) + value)

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
