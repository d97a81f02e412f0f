"""
Fuzz the wire codec: N random and mutated inputs through decode_message.

Every input must either raise WireError or decode to a value that re-encodes to exactly the
input (and decodes back to an equal value). Anything else (another exception, a round-trip
mismatch) is counted, the first few are printed to stderr, and the exit status is 1.

Inputs: random octets (often starting with a Leasequery message type), and mutations of the
golden vectors and of freshly encoded messages: bit flips, octet changes, truncations,
insertions, deletions, option-length changes (nested ones included) and splices. Mutants
that still decode join a bounded corpus, so that later mutations go deeper.

Usage: python bench/fuzz_codec.py [--count 1000000] [--seed 1]
Prints one JSON object: count, decoded, rejected, crashes, mismatches, seconds, rate.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import struct
import sys
import time
import traceback
from collections.abc import Callable
from ipaddress import IPv6Address
from pathlib import Path

from bulklq.wire import (
    ClientData,
    ClientId,
    CltTime,
    Duid,
    IAAddress,
    IAPrefix,
    InterfaceId,
    LQQuery,
    LQRelayData,
    Message,
    MessageType,
    OptionRequest,
    QueryType,
    RelayId,
    RelayMessage,
    RelayMessageOption,
    RemoteId,
    ServerId,
    StatusCode,
    StatusCodeOption,
    WireError,
    decode_message,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.vectors import all_vectors

CORPUS_LIMIT = 512
MESSAGE_TYPES = (14, 15, 16, 17, 12, 13, 22, 23, 7)
# Containers and the offset of their sub-options in the option data; 47 holds a message
# after 16 octets, 9 a message at 0 when it starts with a relay type.
NESTED = {45: 0, 5: 24, 26: 25, 44: 17}


def fresh_messages() -> list[bytes]:
    """A few messages built with the codec: LEASEQUERY, REPLY, DATA (relay chain), DONE."""
    link = IPv6Address("2001:db8:1::1")
    peer = IPv6Address("fe80::1")
    requestor = ClientId(Duid.en(32473, b"requestor-1"))
    inner = RelayMessage(
        MessageType.RELAY_FORW,
        0,
        IPv6Address("::"),
        peer,
        (InterfaceId(b"ldra"), RelayMessageOption(b"\x03\x00\x00\x01")),
    )
    chain = RelayMessage(
        MessageType.RELAY_FORW,
        1,
        link,
        peer,
        (
            InterfaceId(b"eth0/1"),
            RemoteId(32473, b"circuit-7"),
            RelayId(Duid.uuid(bytes(range(16)))),
            RelayMessageOption(inner),
        ),
    )
    client = ClientData(
        (
            ClientId(Duid.ll(1, bytes.fromhex("020000000abc"))),
            IAAddress(IPv6Address("2001:db8:1::5"), 3600, 7200),
            IAPrefix(3600, 7200, 56, IPv6Address("2001:db8:ff05::"), (StatusCodeOption(0, "ok"),)),
            CltTime(42),
            LQRelayData(link, chain),
        )
    )
    return [
        Message(
            MessageType.LEASEQUERY,
            0xABCDEF,
            (
                requestor,
                LQQuery(
                    QueryType.QUERY_BY_RELAY_ID,
                    IPv6Address("::"),
                    (RelayId(Duid.uuid(bytes(16))), OptionRequest((47, 46))),
                ),
            ),
        ).encode(),
        Message(
            MessageType.LEASEQUERY_REPLY,
            0xABCDEF,
            (requestor, ServerId(Duid.llt(1, 700000000, b"\x02\x00\x00\x00\x00\x01")), client),
        ).encode(),
        Message(MessageType.LEASEQUERY_DATA, 0xABCDEF, (client,)).encode(),
        Message(
            MessageType.LEASEQUERY_DONE,
            0xABCDEF,
            (StatusCodeOption(StatusCode.QueryTerminated, "aborted"),),
        ).encode(),
        chain.encode(),
    ]


def seeds() -> list[bytes]:
    """The golden vectors (valid and invalid) and the fresh messages."""
    return [octets for _, octets in all_vectors()] + fresh_messages()


def length_fields(octets: bytes) -> list[int]:
    """Offsets of the option-length fields of C{octets}, nested ones too (best effort)."""
    found: list[int] = []

    def options(start: int, end: int, depth: int) -> None:
        offset = start
        while offset + 4 <= end and depth < 30:
            code, length = struct.unpack_from("!HH", octets, offset)
            found.append(offset + 2)
            data_start, data_end = offset + 4, min(offset + 4 + length, end)
            if code in NESTED:
                options(data_start + NESTED[code], data_end, depth + 1)
            elif code == 47 and data_end - data_start > 16:
                message(data_start + 16, data_end, depth + 1)
            elif code == 9 and data_end > data_start and octets[data_start] in (12, 13):
                message(data_start, data_end, depth + 1)
            offset = offset + 4 + length

    def message(start: int, end: int, depth: int) -> None:
        if start < end:
            options(start + (34 if octets[start] in (12, 13) else 4), end, depth)

    message(0, len(octets), 0)
    return found


class Mutator:
    """Draws fuzz inputs from a seeded random generator and a growing corpus."""

    def __init__(self, rng: random.Random, corpus: list[bytes]) -> None:
        self.rng = rng
        self.corpus = list(corpus)
        self.lengths: dict[bytes, list[int]] = {}
        self.kinds: list[Callable[[bytes], bytes]] = [
            self.flip_bits,
            self.set_octet,
            self.truncate,
            self.insert,
            self.delete,
            self.change_length,
            self.change_length,
            self.splice,
            self.wrap,
        ]
        self.seeds = list(corpus)

    def draw(self) -> bytes:
        """One input: random octets one time in eight, else a mutated corpus entry."""
        rng = self.rng
        if rng.random() < 0.125:
            size = rng.randrange(0, 256)
            octets = rng.randbytes(size)
            if size and rng.random() < 0.7:
                octets = bytes((rng.choice(MESSAGE_TYPES),)) + octets[1:]
            return octets
        octets = rng.choice(self.seeds if rng.random() < 0.25 else self.corpus)
        for _ in range(1 + (rng.random() < 0.3)):
            octets = rng.choice(self.kinds)(octets)
        return octets

    def keep(self, octets: bytes) -> None:
        """Remember a mutant that still decodes and has options (bounded corpus)."""
        if len(octets) <= 8:
            return
        if len(self.corpus) < CORPUS_LIMIT:
            self.corpus.append(octets)
        else:
            self.corpus[self.rng.randrange(CORPUS_LIMIT)] = octets

    def flip_bits(self, octets: bytes) -> bytes:
        """Flip one to three bits."""
        if not octets:
            return octets
        mutated = bytearray(octets)
        for _ in range(self.rng.randrange(1, 4)):
            mutated[self.rng.randrange(len(mutated))] ^= 1 << self.rng.randrange(8)
        return bytes(mutated)

    def set_octet(self, octets: bytes) -> bytes:
        """Replace one octet by an interesting or random value."""
        if not octets:
            return octets
        mutated = bytearray(octets)
        value = self.rng.choice(
            (0, 1, 4, 12, 13, 16, 24, 25, 0x7F, 0x80, 0xFF, self.rng.randrange(256))
        )
        mutated[self.rng.randrange(len(mutated))] = value
        return bytes(mutated)

    def truncate(self, octets: bytes) -> bytes:
        """Cut the octets short."""
        return octets[: self.rng.randrange(len(octets) + 1)]

    def insert(self, octets: bytes) -> bytes:
        """Insert one to eight random octets anywhere."""
        index = self.rng.randrange(len(octets) + 1)
        return octets[:index] + self.rng.randbytes(self.rng.randrange(1, 9)) + octets[index:]

    def delete(self, octets: bytes) -> bytes:
        """Delete one to eight octets."""
        index = self.rng.randrange(len(octets) + 1)
        return octets[:index] + octets[index + self.rng.randrange(1, 9) :]

    def change_length(self, octets: bytes) -> bytes:
        """Change one option-length field, by a little or to anything."""
        offsets = self.lengths.get(octets)
        if offsets is None:
            offsets = length_fields(octets)
            if len(self.lengths) > 4 * CORPUS_LIMIT:
                self.lengths.clear()
            self.lengths[octets] = offsets
        if not offsets:
            return self.set_octet(octets)
        offset = self.rng.choice(offsets)
        (length,) = struct.unpack_from("!H", octets, offset)
        if self.rng.random() < 0.7:
            length = max(0, min(0xFFFF, length + self.rng.randrange(-4, 5)))
        else:
            length = self.rng.randrange(0x10000)
        return octets[:offset] + struct.pack("!H", length) + octets[offset + 2 :]

    def wrap(self, octets: bytes) -> bytes:
        """Wrap the message's options in CLIENT_DATA, 1 to 24 times (towards the depth bound)."""
        header = 34 if octets[:1] in (b"\x0c", b"\x0d") else 4
        if len(octets) < header:
            return octets
        body = octets[header:]
        for _ in range(self.rng.choice((1, 1, 2, 4, 12, 23, 24))):
            if len(body) > 0xFFFF - 4 - header:
                break
            body = struct.pack("!HH", 45, len(body)) + body
        return octets[:header] + body

    def splice(self, octets: bytes) -> bytes:
        """The head of these octets and the tail of another corpus entry."""
        other = self.rng.choice(self.corpus)
        return (
            octets[: self.rng.randrange(len(octets) + 1)]
            + other[self.rng.randrange(len(other) + 1) :]
        )


def run(count: int, seed: int) -> dict[str, object]:
    """Fuzz C{count} inputs; return the JSON-able summary."""
    rng = random.Random(seed)
    mutator = Mutator(rng, seeds())
    decoded = rejected = crashes = mismatches = 0
    reported = 0
    start = time.perf_counter()
    for _ in range(count):
        octets = mutator.draw()
        try:
            value = decode_message(octets)
        except WireError:
            rejected += 1
            continue
        except Exception:
            crashes += 1
            if reported < 5:
                reported += 1
                print(f"CRASH on {octets.hex()}:\n{traceback.format_exc()}", file=sys.stderr)
            continue
        decoded += 1
        try:
            again = value.encode()
            same = again == octets and decode_message(again) == value
        except Exception:
            same = False
            if reported < 5:
                print(
                    f"RE-ENCODE FAILED on {octets.hex()}:\n{traceback.format_exc()}",
                    file=sys.stderr,
                )
        if not same:
            mismatches += 1
            if reported < 5:
                reported += 1
                print(f"ROUND TRIP MISMATCH on {octets.hex()}", file=sys.stderr)
            continue
        if octets not in mutator.corpus:
            mutator.keep(octets)
    seconds = time.perf_counter() - start
    return {
        "benchmark": "fuzz_codec",
        "count": count,
        "decoded": decoded,
        "rejected": rejected,
        "crashes": crashes,
        "mismatches": mismatches,
        "seconds": round(seconds, 3),
        "rate": round(count / seconds) if seconds else None,
        "seed": seed,
        "python": platform.python_version(),
    }


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, fuzz, print JSON; exit 1 on any crash or round-trip mismatch."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--count", type=int, default=1_000_000, help="inputs to try")
    parser.add_argument("--seed", type=int, default=1, help="random seed (reproducible runs)")
    options = parser.parse_args(argv)
    result = run(options.count, options.seed)
    print(json.dumps(result))
    return 1 if result["crashes"] or result["mismatches"] else 0


if __name__ == "__main__":
    sys.exit(main())
