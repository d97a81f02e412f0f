"""
Cheap construction of decoded values (private to the codec).

Decoding builds several frozen attrs instances per binding, and a requestor parses hundreds of
thousands of bindings per second: attrs' generated C{__init__} (a bound C{object.__setattr__}
per field) is a large part of that cost. The decoders therefore create instances with
C{object.__new__} and fill their slots through the slot descriptors, which is what
C{__init__} does, minus the per-call overhead. This is only valid for slotted classes whose
fields have no validator, converter or factory default (true of every wire value, and checked
here), so the result is indistinguishable from calling the class: same equality, hash and repr.
"""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv6Address
from typing import Any

import attrs

__all__ = ["ipv6_from_int", "ipv6_from_packed", "new", "slot_setters"]

#: C{new(cls)}: an instance with no field set yet.
new = object.__new__

Setter = Callable[[Any, Any], None]


def slot_setters(cls: type, *names: str) -> tuple[Setter, ...]:
    """
    The slot descriptors' C{__set__} of fields C{names} of the slotted attrs class C{cls}.

    @raise TypeError: if a field is not a plain slot (validator, converter, no slot).
    """
    fields = {field.name: field for field in attrs.fields(cls)}
    if set(fields) != set(names):
        raise TypeError(f"{cls.__name__} has fields {sorted(fields)}, not {sorted(names)}")
    setters = []
    for name in names:
        field = fields[name]
        if field.validator is not None or field.converter is not None:
            raise TypeError(f"{cls.__name__}.{name} has a validator or converter")
        setters.append(_slot_descriptor(cls, name).__set__)
    return tuple(setters)


def _slot_descriptor(cls: type, name: str) -> Any:
    for klass in cls.__mro__:
        descriptor = vars(klass).get(name)
        if descriptor is not None and hasattr(descriptor, "__set__"):
            return descriptor
    raise TypeError(f"{cls.__name__}.{name} is not a slot")


def _make_ipv6_builders() -> tuple[Callable[[bytes], IPv6Address], Callable[[int], IPv6Address]]:
    """
    Functions turning 16 octets, or a 128-bit number, into an C{IPv6Address} without
    C{__init__}'s type dispatch, if this Python's C{IPv6Address} keeps its value in the
    C{_ip}/C{_scope_id} slots (checked against the public constructor); otherwise the public
    constructor itself.
    """
    try:
        set_ip = _slot_descriptor(IPv6Address, "_ip").__set__
        set_scope = _slot_descriptor(IPv6Address, "_scope_id").__set__
    except TypeError:  # pragma: no cover - another Python's ipaddress
        return IPv6Address, IPv6Address
    from_bytes = int.from_bytes

    def ipv6_from_int(number: int) -> IPv6Address:
        address = new(IPv6Address)
        set_ip(address, number)
        set_scope(address, None)
        return address

    def ipv6_from_packed(packed: bytes) -> IPv6Address:
        address = new(IPv6Address)
        set_ip(address, from_bytes(packed, "big"))
        set_scope(address, None)
        return address

    sample = bytes(range(1, 17))
    reference = IPv6Address(sample)
    for built in (ipv6_from_packed(sample), ipv6_from_int(int(reference))):
        if not (
            built == reference
            and hash(built) == hash(reference)
            and str(built) == str(reference)
            and built.packed == sample
        ):  # pragma: no cover - another Python's ipaddress
            return IPv6Address, IPv6Address
    return ipv6_from_packed, ipv6_from_int


#: C{ipv6_from_packed(octets)}: the C{IPv6Address} of exactly 16 octets;
#: C{ipv6_from_int(number)}: the C{IPv6Address} of a number in 0..2**128-1.
ipv6_from_packed, ipv6_from_int = _make_ipv6_builders()
