"""
The golden wire vectors (tests/fixtures/vectors/NAME.hex), read one way for every test module
and benchmark: hex text, surrounding white space ignored. A name starting with C{invalid-}
marks a vector the codec must refuse.
"""

from __future__ import annotations

from pathlib import Path

from bulklq.wire import Duid

__all__ = [
    "CLIENT_DUID",
    "RELAY_DUID",
    "REQUESTOR_DUID",
    "SERVER_DUID",
    "VECTORS",
    "all_vectors",
    "invalid_vector_names",
    "valid_vector_names",
    "valid_vectors",
    "vector",
    "vector_hex",
]

#: The folder holding the vectors.
VECTORS = Path(__file__).resolve().parent / "fixtures" / "vectors"

#: The DUIDs the vectors hold: the requestor's CLIENTID, the server's SERVERID, the
#: client's CLIENTID in CLIENT_DATA and the relay's RELAY_ID.
REQUESTOR_DUID = Duid.en(32473, b"requestor-1")
SERVER_DUID = Duid.llt(1, 700000000, bytes.fromhex("020000000001"))
CLIENT_DUID = Duid.ll(1, bytes.fromhex("020000000abc"))
RELAY_DUID = Duid.uuid(bytes(range(16)))


def vector_hex(name: str) -> str:
    """The hex text of vector C{name}, white space stripped."""
    return (VECTORS / f"{name}.hex").read_text().strip()


def vector(name: str) -> bytes:
    """The octets of vector C{name}."""
    return bytes.fromhex(vector_hex(name))


def _names() -> list[str]:
    """Every vector's name, sorted."""
    return sorted(path.stem for path in VECTORS.glob("*.hex"))


def valid_vector_names() -> list[str]:
    """Every valid vector's name, sorted."""
    return [name for name in _names() if not name.startswith("invalid-")]


def invalid_vector_names() -> list[str]:
    """Every C{invalid-*} vector's name, sorted."""
    return [name for name in _names() if name.startswith("invalid-")]


def valid_vectors() -> list[tuple[str, bytes]]:
    """Every valid vector as (name, octets), sorted by name."""
    return [(name, vector(name)) for name in valid_vector_names()]


def all_vectors() -> list[tuple[str, bytes]]:
    """Every vector, valid and invalid, as (name, octets), sorted by name."""
    return [(name, vector(name)) for name in _names()]
