"""
Property tests of the codec (hypothesis): exact round trips over generated values of every
message kind and option, and totality over random and mutated octets (nothing but WireError
ever escapes, and whatever decodes re-encodes to the same octets).
"""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from bulklq.wire import (
    ClientData,
    LQRelayData,
    Message,
    RelayMessage,
    WireError,
    decode_message,
    encode_options,
)
from bulklq.wire.options import decode_options

from .vectors import all_vectors, valid_vectors
from .wire_strategies import (
    any_messages,
    client_data,
    duids,
    lq_queries,
    lq_relay_data,
    messages,
    relay_messages,
)

VALID_VECTORS = tuple(octets for _, octets in valid_vectors())
ALL_VECTORS = tuple(octets for _, octets in all_vectors())

#: Moderate example counts: the whole suite must stay quick on two shared cores.
ROUND_TRIP = settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
#: For the strategies that build CLIENT_DATA with relay chains (slow to generate).
HEAVY = settings(ROUND_TRIP, max_examples=40)
FUZZ = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def length_fields(octets: bytes) -> list[int]:
    """
    Offsets of every option-length field in the valid message C{octets}, nested ones
    included (CLIENT_DATA, IAADDR, IAPREFIX, LQ_QUERY, LQ_RELAY_DATA, RELAY_MSG).
    """
    found: list[int] = []
    nested = {45: 0, 5: 24, 26: 25, 44: 17}

    def options(start: int, end: int) -> None:
        offset = start
        while offset + 4 <= end:
            code, length = struct.unpack_from("!HH", octets, offset)
            found.append(offset + 2)
            data_start, data_end = offset + 4, offset + 4 + length
            if code in nested:
                options(data_start + nested[code], data_end)
            elif code == 47:
                message(data_start + 16, data_end)
            elif code == 9 and data_end > data_start and octets[data_start] in (12, 13):
                message(data_start, data_end)
            offset = data_end

    def message(start: int, end: int) -> None:
        options(start + (34 if octets[start] in (12, 13) else 4), end)

    message(0, len(octets))
    return found


def assert_total(testcase: SynchronousTestCase, octets: bytes) -> None:
    """
    Decoding C{octets} either raises WireError or gives a value that re-encodes to exactly
    C{octets} and decodes back to itself. Any other exception fails the test.
    """
    try:
        decoded = decode_message(octets)
    except WireError as error:
        testcase.assertTrue(str(error))
        return
    encoded = decoded.encode()
    testcase.assertEqual(encoded, octets)
    testcase.assertEqual(decode_message(encoded), decoded)


class RoundTripTests(SynchronousTestCase):
    """decode(encode(v)) == v and encode(decode(b)) == b over generated values."""

    @ROUND_TRIP
    @given(any_messages)
    def test_messages(self, value: Message | RelayMessage) -> None:
        """Every generated message (any kind, any option) round-trips exactly."""
        octets = value.encode()
        decoded = decode_message(octets)
        self.assertEqual(decoded, value)
        self.assertEqual(decoded.encode(), octets)

    @HEAVY
    @given(st.lists(client_data, min_size=1, max_size=3))
    def test_leasequery_data(self, options: list[ClientData]) -> None:
        """LEASEQUERY-DATA with CLIENT_DATA (IAADDR, IAPREFIX, relay chains ...) round-trips."""
        value = Message(17, 0x123456, tuple(options))
        self.assertEqual(decode_message(value.encode()), value)

    @ROUND_TRIP
    @given(relay_messages)
    def test_relay_chains(self, value: RelayMessage) -> None:
        """Relay chains round-trip, standalone and inside LQ_RELAY_DATA, layers preserved."""
        decoded = decode_message(value.encode())
        self.assertEqual(decoded, value)
        assert isinstance(decoded, RelayMessage)
        self.assertEqual(len(decoded.layers()), len(value.layers()))
        carried = Message(15, 1, (ClientData((LQRelayData(value.link_address, value),)),))
        self.assertEqual(decode_message(carried.encode()), carried)

    @HEAVY
    @given(st.lists(st.one_of(lq_queries, lq_relay_data, client_data), max_size=4))
    def test_options(self, options: list[object]) -> None:
        """encode_options and decode_options are inverse on generated option lists."""
        octets = encode_options(options)  # type: ignore[arg-type]
        self.assertEqual(decode_options(octets, 0, len(octets), 1), tuple(options))

    @ROUND_TRIP
    @given(duids)
    def test_duid_text(self, duid: object) -> None:
        """Every valid DUID survives colon-hex and plain-hex text."""
        from bulklq.wire import Duid

        assert isinstance(duid, Duid)
        self.assertEqual(Duid.from_text(str(duid)), duid)
        self.assertEqual(Duid.from_text(duid.hex()), duid)
        self.assertEqual(Duid.from_bytes(duid.raw), duid)


class TotalityTests(SynchronousTestCase):
    """Random and mutated octets never raise anything but WireError."""

    @FUZZ
    @given(st.binary(max_size=200))
    def test_random_bytes(self, octets: bytes) -> None:
        """Arbitrary octets decode exactly or raise WireError."""
        assert_total(self, octets)

    @FUZZ
    @given(
        st.sampled_from([14, 15, 16, 17, 12]),
        st.lists(
            st.tuples(
                st.sampled_from([1, 5, 9, 13, 26, 37, 44, 45, 46, 47, 48, 53, 6]),
                st.binary(max_size=40),
            ),
            max_size=4,
        ),
    )
    def test_random_options(self, msg_type: int, options: list[tuple[int, bytes]]) -> None:
        """Well-framed options of modelled codes with random data: WireError or exact."""
        header = bytes((msg_type,)) + (bytes(33) if msg_type == 12 else b"\x00\x00\x01")
        body = b"".join(struct.pack("!HH", code, len(data)) + data for code, data in options)
        assert_total(self, header + body)

    @FUZZ
    @given(st.sampled_from(ALL_VECTORS), st.data())
    def test_bit_flips(self, octets: bytes, data: st.DataObject) -> None:
        """Vectors with one to three flipped bits: WireError or exact."""
        mutated = bytearray(octets)
        for _ in range(data.draw(st.integers(1, 3))):
            index = data.draw(st.integers(0, len(mutated) - 1))
            mutated[index] ^= 1 << data.draw(st.integers(0, 7))
        assert_total(self, bytes(mutated))

    @FUZZ
    @given(st.sampled_from(ALL_VECTORS), st.data())
    def test_truncations_and_insertions(self, octets: bytes, data: st.DataObject) -> None:
        """Vectors cut short, or with octets inserted or deleted: WireError or exact."""
        index = data.draw(st.integers(0, len(octets)))
        kind = data.draw(st.sampled_from(["truncate", "insert", "delete"]))
        if kind == "truncate":
            mutated = octets[:index]
        elif kind == "insert":
            mutated = octets[:index] + data.draw(st.binary(min_size=1, max_size=8)) + octets[index:]
        else:
            mutated = octets[:index] + octets[index + data.draw(st.integers(1, 8)) :]
        assert_total(self, mutated)

    @FUZZ
    @given(st.sampled_from([octets for octets in VALID_VECTORS if len(octets) > 4]), st.data())
    def test_length_fields(self, octets: bytes, data: st.DataObject) -> None:
        """A vector with one option-length field changed (by a little, or to anything)."""
        offsets = length_fields(octets)
        offset = data.draw(st.sampled_from(offsets))
        (length,) = struct.unpack_from("!H", octets, offset)
        new_length = data.draw(
            st.one_of(
                st.integers(max(0, length - 4), min(0xFFFF, length + 4)), st.integers(0, 0xFFFF)
            )
        )
        mutated = octets[:offset] + struct.pack("!H", new_length) + octets[offset + 2 :]
        assert_total(self, mutated)

    @settings(FUZZ, max_examples=80)
    @given(messages, st.data())
    def test_mutated_generated(self, value: Message, data: st.DataObject) -> None:
        """Generated messages with a random length field or octet changed."""
        octets = value.encode()
        mutated = bytearray(octets)
        offsets = length_fields(octets)
        if offsets and data.draw(st.booleans()):
            offset = data.draw(st.sampled_from(offsets))
            mutated[offset : offset + 2] = struct.pack("!H", data.draw(st.integers(0, 0xFFFF)))
        else:
            mutated[data.draw(st.integers(0, len(mutated) - 1))] = data.draw(st.integers(0, 255))
        assert_total(self, bytes(mutated))


class LengthFieldsTests(SynchronousTestCase):
    """The helper the mutation tests rely on."""

    def test_finds_nested_lengths(self) -> None:
        """length_fields finds the options inside CLIENT_DATA and the relay chain."""
        octets = VALID_VECTORS[0]  # data-second-client
        offsets = length_fields(octets)
        # CLIENT_DATA, CLIENTID, IAADDR, IAPREFIX, CLT_TIME, LQ_RELAY_DATA and the relay's
        # INTERFACE_ID, REMOTE_ID, RELAY_ID.
        self.assertEqual(len(offsets), 9)
        self.assertEqual(offsets[0], 6)
