"""The codec's single error type."""

from __future__ import annotations

__all__ = ["WireError"]


class WireError(ValueError):
    """
    A byte string is not a valid DHCPv6 Leasequery message, or a value cannot be encoded.

    Every decoding failure raises this type, whatever the input; its message says what is
    wrong and where: the offset in the outermost buffer and, inside an option, its code.

    @ivar offset: octet offset into the decoded buffer where the problem was found, or
        C{None} when encoding.
    @ivar option_code: the code of the option being decoded, or C{None} at message level.
    """

    def __init__(
        self, reason: str, offset: int | None = None, option_code: int | None = None
    ) -> None:
        self.reason = reason
        self.offset = offset
        self.option_code = option_code
        where = []
        if option_code is not None:
            where.append(f"option {option_code}")
        if offset is not None:
            where.append(f"offset {offset}")
        text = f"{reason} ({', '.join(where)})" if where else reason
        super().__init__(text)
