"""
The codec's strictness rules (issue 2 section 3), one by one: what decoding refuses and where
the error says it is, what encoding refuses, and the human forms (DUID text, RFC names).
"""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address

from twisted.trial.unittest import SynchronousTestCase

from bulklq.wire import (
    MAX_NESTING,
    ClientData,
    ClientId,
    CltTime,
    Duid,
    DuidType,
    IAAddress,
    IAPrefix,
    InterfaceId,
    LQBaseTime,
    LQClientLink,
    LQEndTime,
    LQQuery,
    LQRelayData,
    LQStartTime,
    Message,
    MessageType,
    OptionCode,
    OptionRequest,
    QueryType,
    RelayId,
    RelayMessage,
    RelayMessageOption,
    RemoteId,
    ServerId,
    StatusCode,
    StatusCodeOption,
    UnknownOption,
    WireError,
    decode_message,
    encode_options,
    rfc_name,
)

DUID_LL = bytes.fromhex("00030001020000000abc")
LINK = IPv6Address("2001:db8:1::1")
PEER = IPv6Address("fe80::1")


def option(code: int, data: bytes) -> bytes:
    """One option's octets, the length computed."""
    return struct.pack("!HH", code, len(data)) + data


def message(*options: bytes, msg_type: int = 17) -> bytes:
    """A client/server message (xid 0x123456) holding C{options}."""
    return bytes((msg_type,)) + b"\x12\x34\x56" + b"".join(options)


def relay(*options: bytes, msg_type: int = 12) -> bytes:
    """A relay message (hop 0, link 2001:db8:1::1, peer fe80::1) holding C{options}."""
    return bytes((msg_type, 0)) + LINK.packed + PEER.packed + b"".join(options)


class ErrorLocationMixin:
    """Assertions on where a WireError says the problem is."""

    def assertRejected(
        self,
        octets: bytes,
        offset: int | None,
        option_code: int | None,
        reason: str,
    ) -> WireError:
        """Decoding C{octets} raises WireError at C{offset}, in C{option_code}, for C{reason}."""
        testcase: SynchronousTestCase = self  # type: ignore[assignment]
        error = testcase.assertRaises(WireError, decode_message, octets)
        testcase.assertEqual((error.offset, error.option_code), (offset, option_code), str(error))
        testcase.assertIn(reason, str(error))
        where = [f"option {option_code}"] if option_code is not None else []
        if offset is not None:
            where.append(f"offset {offset}")
        testcase.assertTrue(str(error).endswith(f"({', '.join(where)})"), str(error))
        return error


class FixedLengthTests(ErrorLocationMixin, SynchronousTestCase):
    """Options of a fixed or minimum length."""

    def test_clt_time(self) -> None:
        """CLT_TIME must be exactly 4 octets: 3 and 5 are refused; 4 decodes."""
        for data in (b"\x00" * 3, b"\x00" * 5, b""):
            octets = message(option(45, option(46, data)))
            error = self.assertRejected(
                octets, 12, 46, f"CLT_TIME must be 4 octets, not {len(data)}"
            )
            self.assertEqual(
                str(error), f"CLT_TIME must be 4 octets, not {len(data)} (option 46, offset 12)"
            )
        decoded = decode_message(message(option(46, b"\x00\x00\x00\x2a")))
        self.assertEqual(decoded.options, (CltTime(42),))

    def test_lq_times(self) -> None:
        """LQ_BASE_TIME, LQ_START_TIME and LQ_END_TIME (RFC 7653) must be 4 octets."""
        for code, cls in ((100, LQBaseTime), (101, LQStartTime), (102, LQEndTime)):
            self.assertRejected(message(option(code, b"\x00" * 3)), 8, code, "must be 4 octets")
            self.assertRejected(message(option(code, b"\x00" * 8)), 8, code, "not 8")
            decoded = decode_message(message(option(code, b"\x00\x00\x01\x00")))
            self.assertEqual(decoded.options, (cls(256),))

    def test_iaaddr_short(self) -> None:
        """IAADDR shorter than 24 octets is refused; exactly 24 decodes."""
        fixed = LINK.packed + struct.pack("!II", 1, 2)
        self.assertRejected(
            message(option(5, fixed[:23])), 8, 5, "IAADDR of 23 octets is shorter than 24"
        )
        self.assertRejected(message(option(5, b"")), 8, 5, "shorter than 24")
        self.assertEqual(
            decode_message(message(option(5, fixed))).options, (IAAddress(LINK, 1, 2),)
        )

    def test_iaprefix_short(self) -> None:
        """IAPREFIX shorter than 25 octets is refused."""
        fixed = struct.pack("!IIB", 1, 2, 56) + LINK.packed
        self.assertRejected(
            message(option(26, fixed[:24])), 8, 26, "IAPREFIX of 24 octets is shorter than 25"
        )
        self.assertEqual(
            decode_message(message(option(26, fixed))).options, (IAPrefix(1, 2, 56, LINK),)
        )

    def test_prefix_length_over_128(self) -> None:
        """A prefix-length over 128 is refused, pointing at the prefix-length octet."""
        for length in (129, 255):
            data = struct.pack("!IIB", 1, 2, length) + LINK.packed
            self.assertRejected(
                message(option(26, data)), 16, 26, f"prefix length {length} exceeds 128"
            )
        data = struct.pack("!IIB", 1, 2, 128) + LINK.packed
        self.assertEqual(
            decode_message(message(option(26, data))).options[0], IAPrefix(1, 2, 128, LINK)
        )

    def test_lq_query_short(self) -> None:
        """LQ_QUERY shorter than 17 octets (query-type + link-address) is refused."""
        self.assertRejected(
            message(option(44, b"\x04" + LINK.packed[:15]), msg_type=14),
            8,
            44,
            "LQ_QUERY of 16 octets is shorter than 17",
        )
        decoded = decode_message(message(option(44, b"\x04" + LINK.packed), msg_type=14))
        self.assertEqual(decoded.options, (LQQuery(QueryType.QUERY_BY_LINK_ADDRESS, LINK),))

    def test_oro_odd(self) -> None:
        """An ORO of odd length is refused; an empty ORO decodes."""
        self.assertRejected(message(option(6, b"\x00\x2f\x00")), 8, 6, "ORO length 3 is odd")
        self.assertEqual(decode_message(message(option(6, b""))).options, (OptionRequest(()),))

    def test_lq_client_link(self) -> None:
        """LQ_CLIENT_LINK must be a positive multiple of 16 octets."""
        for length in (0, 15, 17, 31):
            self.assertRejected(
                message(option(48, bytes(length)), msg_type=15),
                8,
                48,
                f"LQ_CLIENT_LINK length {length} is not a positive multiple of 16",
            )
        decoded = decode_message(message(option(48, LINK.packed + PEER.packed), msg_type=15))
        self.assertEqual(decoded.options, (LQClientLink((LINK, PEER)),))

    def test_lq_relay_data_short(self) -> None:
        """LQ_RELAY_DATA shorter than peer-address plus a relay header (50) is refused."""
        data = PEER.packed + relay()[:33]
        self.assertRejected(
            message(option(47, data)), 8, 47, "LQ_RELAY_DATA of 49 octets is shorter than 50"
        )

    def test_lq_relay_data_not_relay(self) -> None:
        """LQ_RELAY_DATA holding a client message (not RELAY-FORW/REPL) is refused."""
        data = PEER.packed + message(msg_type=1) + bytes(30)
        self.assertRejected(
            message(option(47, data)), 24, 47, "LQ_RELAY_DATA holds message type 1, not a relay"
        )

    def test_remote_id_short(self) -> None:
        """REMOTE_ID shorter than 5 octets (enterprise number + 1) is refused."""
        for data in (b"", b"\x00\x00\x7e\xd9"):
            self.assertRejected(
                message(option(37, data)),
                8,
                37,
                f"REMOTE_ID of {len(data)} octets is shorter than 5",
            )
        decoded = decode_message(message(option(37, b"\x00\x00\x7e\xd9x")))
        self.assertEqual(decoded.options, (RemoteId(32473, b"x"),))

    def test_status_code_short(self) -> None:
        """STATUS_CODE shorter than its 2-octet code is refused."""
        self.assertRejected(message(option(13, b"\x00")), 8, 13, "shorter than 2")


class StatusTextTests(ErrorLocationMixin, SynchronousTestCase):
    """STATUS_CODE's message is UTF-8 with no NUL."""

    def test_not_utf8(self) -> None:
        """A status message that is not UTF-8 is refused at the offending octet."""
        self.assertRejected(
            message(option(13, b"\x00\x0bab\xffc")), 12, 13, "status message is not UTF-8"
        )

    def test_surrogate_refused(self) -> None:
        """An encoded surrogate (not valid UTF-8) is refused."""
        self.assertRejected(message(option(13, b"\x00\x01\xed\xa0\x80")), 10, 13, "not UTF-8")

    def test_nul(self) -> None:
        """A status message containing NUL is refused at the NUL."""
        self.assertRejected(
            message(option(13, b"\x00\x0babc\x00")), 13, 13, "status message contains NUL"
        )

    def test_utf8_kept(self) -> None:
        """Non-ASCII UTF-8 text decodes and re-encodes to the same octets."""
        octets = message(option(13, b"\x00\x0b" + "arrêté ✓".encode()))
        decoded = decode_message(octets)
        self.assertEqual(
            decoded.options, (StatusCodeOption(StatusCode.QueryTerminated, "arrêté ✓"),)
        )
        self.assertEqual(decoded.encode(), octets)

    def test_unknown_status_kept(self) -> None:
        """A status code bulklq does not know decodes to its number and re-encodes."""
        decoded = decode_message(message(option(13, b"\x01\x00")))
        self.assertEqual(decoded.options, (StatusCodeOption(256, ""),))


class FramingTests(ErrorLocationMixin, SynchronousTestCase):
    """Message headers, option headers, overruns and trailing octets."""

    def test_short_message(self) -> None:
        """A message shorter than its 4-octet header is refused."""
        for octets in (b"", b"\x10", b"\x10\x12\x34"):
            self.assertRejected(
                octets, 0, None, f"message of {len(octets)} octets is shorter than 4"
            )

    def test_type_zero(self) -> None:
        """Message type 0 is reserved."""
        self.assertRejected(b"\x00\x00\x00\x00", 0, None, "message type 0 is reserved")

    def test_short_relay(self) -> None:
        """A relay message shorter than its 34-octet header is refused."""
        self.assertRejected(relay()[:33], 0, None, "relay message of 33 octets is shorter than 34")

    def test_overrun(self) -> None:
        """An option whose length runs past the message is refused at its header."""
        octets = message(option(46, b"\x00\x00\x00\x01"))[:-1]
        self.assertRejected(octets, 4, 46, "option length 4 overruns its container by 1 octets")

    def test_nested_overrun(self) -> None:
        """A sub-option running past its container (not past the message) is refused."""
        inner = option(1, DUID_LL)
        # CLIENT_DATA says 8 octets: the CLIENTID header fits, its data does not.
        octets = message(struct.pack("!HH", 45, 8) + inner)
        self.assertRejected(octets, 8, 1, "option length 10 overruns its container by 6 octets")

    def test_trailing_octets(self) -> None:
        """One to three octets after the last option are refused."""
        for extra in (b"\x00", b"\x00\x01", b"\x00\x01\x00"):
            octets = message(option(46, b"\x00\x00\x00\x01")) + extra
            self.assertRejected(
                octets, 12, None, f"{len(extra)} trailing octets are not an option header"
            )

    def test_trailing_inside_container(self) -> None:
        """Trailing octets inside CLIENT_DATA are refused at their offset."""
        octets = message(option(45, option(46, b"\x00\x00\x00\x01") + b"\xff"))
        self.assertRejected(octets, 16, None, "1 trailing octets")

    def test_too_long(self) -> None:
        """A message over 65535 octets is refused before anything else."""
        self.assertRejected(b"\x11" + bytes(65535), 0, None, "exceeds 65535")

    def test_relay_message_in_relay_msg(self) -> None:
        """A malformed relay message inside RELAY_MSG is refused, not kept raw."""
        inner = relay(option(9, relay()[:20]))
        error = self.assertRaises(WireError, decode_message, inner)
        self.assertIn("relayed message: relay message of 20 octets is shorter than 34", str(error))
        self.assertEqual((error.offset, error.option_code), (38, 9))

    def test_client_message_in_relay_msg_kept_raw(self) -> None:
        """A client's own message inside RELAY_MSG is kept as raw octets, even malformed."""
        decoded = decode_message(relay(option(9, b"\x01\x02")))
        assert isinstance(decoded, RelayMessage)
        self.assertEqual(decoded.inner, b"\x01\x02")

    def test_bytes_like(self) -> None:
        """bytearray and memoryview are accepted; other types are a TypeError."""
        octets = message(option(46, b"\x00\x00\x00\x01"))
        expected = decode_message(octets)
        self.assertEqual(decode_message(bytearray(octets)), expected)
        self.assertEqual(decode_message(memoryview(octets)), expected)
        self.assertRaises(TypeError, decode_message, octets.hex())
        self.assertRaises(TypeError, decode_message, 5)

    def test_unknown_message_type(self) -> None:
        """An unassigned message type decodes as a plain number and re-encodes."""
        octets = message(msg_type=200)
        decoded = decode_message(octets)
        self.assertEqual(decoded, Message(200, 0x123456))
        self.assertEqual(decoded.encode(), octets)


def nested_client_data(depth: int) -> bytes:
    """A message whose CLIENT_DATA nest so that the innermost CLT_TIME sits at C{depth}."""
    octets = option(46, b"\x00\x00\x00\x01")
    for _ in range(depth - 1):
        octets = option(45, octets)
    return message(octets)


def nested_value(depth: int) -> Message:
    """The value of L{nested_client_data}."""
    value: CltTime | ClientData = CltTime(1)
    for _ in range(depth - 1):
        value = ClientData((value,))
    return Message(MessageType.LEASEQUERY_DATA, 0x123456, (value,))


def relay_chain(layers: int) -> RelayMessage:
    """A RELAY-FORW chain of C{layers} layers, each carrying an INTERFACE_ID."""
    chain = RelayMessage(MessageType.RELAY_FORW, 0, LINK, PEER, (InterfaceId(b"if0"),))
    for hop in range(1, layers):
        chain = RelayMessage(
            MessageType.RELAY_FORW, hop, LINK, PEER, (InterfaceId(b"if"), RelayMessageOption(chain))
        )
    return chain


class NestingTests(SynchronousTestCase):
    """Nesting is bounded by MAX_NESTING, decoding and encoding alike."""

    def test_deepest_allowed(self) -> None:
        """Options at depth MAX_NESTING decode and round-trip."""
        octets = nested_client_data(MAX_NESTING)
        self.assertEqual(decode_message(octets), nested_value(MAX_NESTING))
        self.assertEqual(nested_value(MAX_NESTING).encode(), octets)

    def test_too_deep_decode(self) -> None:
        """An option at depth MAX_NESTING + 1 is refused at its offset."""
        octets = nested_client_data(MAX_NESTING + 1)
        error = self.assertRaises(WireError, decode_message, octets)
        self.assertIn(f"options nested deeper than {MAX_NESTING} levels", str(error))
        self.assertEqual(error.offset, 4 + 4 * MAX_NESTING)

    def test_empty_container_at_bound(self) -> None:
        """An empty CLIENT_DATA at depth MAX_NESTING holds no option deeper: accepted."""
        octets = option(45, b"")
        for _ in range(MAX_NESTING - 1):
            octets = option(45, octets)
        decoded = decode_message(message(octets))
        self.assertEqual(decoded.encode(), message(octets))

    def test_too_deep_encode(self) -> None:
        """Encoding a value nested deeper than MAX_NESTING is refused, as decoding would."""
        error = self.assertRaises(WireError, nested_value(MAX_NESTING + 1).encode)
        self.assertIn("nested deeper", str(error))
        self.assertEqual(error.option_code, 46)

    def test_hostile_depth(self) -> None:
        """Thousands of nested headers are refused with WireError, not RecursionError."""
        octets = b"".join(struct.pack("!HH", 45, 4 * (5000 - n)) for n in range(1, 5001))
        self.assertRaises(WireError, decode_message, message(octets))

    def test_relay_chain_depth(self) -> None:
        """
        Each relay layer carried by an option counts one level: a chain in LQ_RELAY_DATA
        inside CLIENT_DATA fits up to MAX_NESTING - 2 layers.
        """

        def reply(layers: int) -> Message:
            relay_data = LQRelayData(PEER, relay_chain(layers))
            return Message(MessageType.LEASEQUERY_DATA, 1, (ClientData((relay_data,)),))

        fits = reply(MAX_NESTING - 2)
        octets = fits.encode()
        self.assertEqual(decode_message(octets), fits)
        client_data = fits.option(ClientData)
        assert client_data is not None
        relay_data = client_data.option(LQRelayData)
        assert relay_data is not None
        self.assertEqual(len(relay_data.relay_message.layers()), MAX_NESTING - 2)
        self.assertRaises(WireError, reply(MAX_NESTING - 1).encode)

        def reply_octets(layers: int) -> bytes:
            chain = relay(option(18, b"if0"))
            for _ in range(layers - 1):
                chain = relay(option(18, b"if"), option(9, chain))
            return message(option(45, option(47, PEER.packed + chain)))

        decoded = decode_message(reply_octets(MAX_NESTING - 2))
        self.assertEqual(decoded.encode(), reply_octets(MAX_NESTING - 2))
        error = self.assertRaises(WireError, decode_message, reply_octets(MAX_NESTING - 1))
        self.assertIn("nested deeper", str(error))


class DuidTests(ErrorLocationMixin, SynchronousTestCase):
    """DUID validation when decoding CLIENTID, SERVERID and RELAY_ID."""

    def test_empty_and_short(self) -> None:
        """Empty DUIDs and DUIDs under 3 octets are refused in all three options."""
        for code in (1, 2, 53):
            for raw in (b"", b"\x00", b"\x00\x03"):
                self.assertRejected(
                    message(option(code, raw)),
                    8,
                    code,
                    f"DUID of {len(raw)} octets is shorter than 3",
                )

    def test_known_types_too_short(self) -> None:
        """LLT, EN and LL DUIDs need their fixed fields and one more octet."""
        cases = (
            (bytes.fromhex("0001000100000001"), "DUID_LLT of 8 octets is shorter than 9"),
            (bytes.fromhex("000200007ed9"), "DUID_EN of 6 octets is shorter than 7"),
            (bytes.fromhex("00030001"), "DUID_LL of 4 octets is shorter than 5"),
        )
        for raw, reason in cases:
            self.assertRejected(message(option(1, raw)), 8, 1, reason)
            self.assertEqual(
                decode_message(message(option(1, raw + b"\x01"))).options,
                (ClientId(Duid(raw + b"\x01")),),
            )

    def test_uuid_length(self) -> None:
        """A DUID-UUID must be exactly 18 octets (type + 16)."""
        for size in (15, 17):
            raw = b"\x00\x04" + bytes(size)
            self.assertRejected(
                message(option(53, raw)), 8, 53, f"DUID_UUID must be 18 octets, not {size + 2}"
            )
        decoded = decode_message(message(option(53, b"\x00\x04" + bytes(16))))
        self.assertEqual(decoded.options, (RelayId(Duid.uuid(bytes(16))),))

    def test_too_long(self) -> None:
        """A DUID over 130 octets (type + 128) is refused; 130 is accepted."""
        self.assertRejected(
            message(option(2, b"\x00\x02" + bytes(129))), 8, 2, "DUID of 131 octets exceeds 130"
        )
        raw = b"\x00\x02" + bytes(128)
        self.assertEqual(decode_message(message(option(2, raw))).options, (ServerId(Duid(raw)),))

    def test_unknown_type_kept(self) -> None:
        """A DUID of an unknown type is kept raw (3 octets suffice) and re-encoded."""
        octets = message(option(1, b"\xff\xffx"))
        decoded = decode_message(octets)
        client_id = decoded.option(ClientId)
        assert client_id is not None
        self.assertEqual(client_id.duid.duid_type, 0xFFFF)
        self.assertIsNone(client_id.duid.link_layer_address)
        self.assertEqual(decoded.encode(), octets)

    def test_from_bytes(self) -> None:
        """Duid.from_bytes applies the same rules and reports the given offset."""
        error = self.assertRaises(WireError, Duid.from_bytes, b"\x00\x04\x00", 7)
        self.assertEqual(error.offset, 7)
        self.assertIn("DUID_UUID must be 18 octets, not 3", str(error))


class DuidTextTests(SynchronousTestCase):
    """DUIDs in text: Kea's colon-hex and plain hex."""

    def test_colon_hex_round_trip(self) -> None:
        """str() gives Kea's colon-hex; from_text parses it back."""
        duid = Duid.llt(1, 700000000, bytes.fromhex("020000000001"))
        text = str(duid)
        self.assertEqual(text, "00:01:00:01:29:b9:27:00:02:00:00:00:00:01")
        self.assertEqual(Duid.from_text(text), duid)
        self.assertEqual(Duid.from_text(text.upper()), duid)

    def test_plain_hex_round_trip(self) -> None:
        """hex() gives plain hex; from_text parses it, also with 0x and spaces around."""
        duid = Duid.en(32473, b"requestor-1")
        self.assertEqual(duid.hex(), "000200007ed9726571756573746f722d31")
        self.assertEqual(Duid.from_text(duid.hex()), duid)
        self.assertEqual(Duid.from_text(f"  0x{duid.hex()}\n"), duid)

    def test_dash_and_short_parts(self) -> None:
        """Dash-separated and single-digit parts (0:3:0:1:...) are accepted."""
        expected = Duid(DUID_LL)
        self.assertEqual(Duid.from_text("00-03-00-01-02-00-00-00-0a-bc"), expected)
        self.assertEqual(Duid.from_text("0:3:0:1:2:0:0:0:a:bc"), expected)

    def test_bad_text(self) -> None:
        """Non-hex, odd-length, empty-part and invalid DUID text is a WireError."""
        for text in (
            "",
            "zz",
            "0001000",
            "00:01::02:03",
            "00:01:002:03",
            "00 01 00 01",
            "0x",
            "00:0g:00:01:02",
            "0003",
            "00:04:00:01",
            "٠٠٠٣٠٠٠١٠٢",
        ):
            self.assertRaises(WireError, Duid.from_text, text)

    def test_typed_constructors_refuse_out_of_range(self) -> None:
        """Duid.llt/en/ll refuse fields out of range with WireError."""
        self.assertRaises(WireError, Duid.llt, 70000, 0, b"\x01")
        self.assertRaises(WireError, Duid.llt, 1, -1, b"\x01")
        self.assertRaises(WireError, Duid.en, 2**32, b"x")
        self.assertRaises(WireError, Duid.ll, -1, b"\x01")
        self.assertRaises(WireError, Duid.ll, 1, b"")
        self.assertRaises(WireError, Duid.uuid, bytes(15))
        self.assertEqual(Duid.ll(1, b"\x01").duid_type, DuidType.DUID_LL)

    def test_remote_id_text(self) -> None:
        """RemoteId.from_text reads ENTERPRISE:HEX and whole-value hex; refuses the rest."""
        expected = RemoteId(32473, b"circuit-7")
        self.assertEqual(RemoteId.from_text("32473:636972637569742d37"), expected)
        self.assertEqual(RemoteId.from_text("00007ed9636972637569742d37"), expected)
        for text in ("x:00", "32473:", "-1:00", "4294967296:00", "00007ed9", "zz"):
            self.assertRaises(WireError, RemoteId.from_text, text)


class EncodeRefusalTests(SynchronousTestCase):
    """Encoding refuses what decoding would reject, with WireError."""

    def assertRefused(self, value: Message | RelayMessage, reason: str) -> WireError:
        """Encoding C{value} raises WireError mentioning C{reason}."""
        error = self.assertRaises(WireError, value.encode)
        self.assertIn(reason, str(error))
        self.assertIsNone(error.offset)
        return error

    def data(self, *options: object) -> Message:
        """A LEASEQUERY-DATA holding C{options}."""
        return Message(MessageType.LEASEQUERY_DATA, 1, tuple(options))  # type: ignore[arg-type]

    def test_message_fields(self) -> None:
        """Transaction-ids over 24 bits and non-client/server types are refused."""
        self.assertRefused(Message(MessageType.LEASEQUERY, 2**24), "transaction-id 16777216")
        self.assertRefused(Message(MessageType.LEASEQUERY, -1), "is not 24 bits")
        for msg_type in (0, 256, -1, MessageType.RELAY_FORW, MessageType.RELAY_REPL):
            self.assertRefused(Message(msg_type, 1), "is not a client/server type")

    def test_relay_fields(self) -> None:
        """Relay messages need a relay type, hop-count 0..255 and plain IPv6 addresses."""
        self.assertRefused(RelayMessage(14, 0, LINK, PEER), "not a relay message type")
        self.assertRefused(RelayMessage(12, 256, LINK, PEER), "hop-count 256")
        self.assertRefused(
            RelayMessage(12, 0, IPv4Address("192.0.2.1"), PEER),  # type: ignore[arg-type]
            "link-address",
        )
        self.assertRefused(RelayMessage(12, 0, LINK, IPv6Address("fe80::1%eth0")), "without scope")

    def test_message_too_big(self) -> None:
        """A message over 65535 octets is refused at encoding; 65535 is accepted."""
        big = UnknownOption(999, bytes(65535 - 8))
        self.assertEqual(len(self.data(big).encode()), 65535)
        error = self.assertRefused(
            self.data(big, CltTime(1)), "message of 65543 octets exceeds 65535"
        )
        self.assertIsNone(error.option_code)
        self.assertRefused(self.data(UnknownOption(999, bytes(65536))), "exceeds 65535")

    def test_option_data_too_big(self) -> None:
        """An option whose data exceeds 65535 octets is refused, naming its code."""
        error = self.assertRaises(WireError, UnknownOption(999, bytes(65536)).encode)
        self.assertEqual(error.option_code, 999)

    def test_lifetimes_and_prefix_length(self) -> None:
        """IAADDR/IAPREFIX lifetimes must be u32; prefix-length 0..128; addresses IPv6."""
        self.assertRefused(self.data(IAAddress(LINK, -1, 2)), "lifetimes -1/2")
        self.assertRefused(self.data(IAAddress(LINK, 1, 2**32)), "are not both 0..4294967295")
        self.assertRefused(self.data(IAPrefix(1, 2, 129, LINK)), "prefix length 129")
        self.assertRefused(self.data(IAPrefix(1, 2, -1, LINK)), "prefix length -1")
        self.assertRefused(self.data(IAPrefix(2**32, 2, 64, LINK)), "lifetimes")
        self.assertRefused(
            self.data(IAAddress(IPv4Address("192.0.2.1"), 1, 2)),  # type: ignore[arg-type]
            "is not an IPv6Address",
        )
        self.assertRefused(self.data(IAPrefix(1, 2, 64, "2001:db8::")), "prefix")  # type: ignore[arg-type]

    def test_numbers(self) -> None:
        """Times, status codes, ORO codes, query-types, enterprise numbers out of range."""
        self.assertRefused(self.data(CltTime(-1)), "-1 seconds")
        self.assertRefused(self.data(LQEndTime(2**32)), "is not 0..4294967295")
        self.assertRefused(self.data(StatusCodeOption(65536)), "status code 65536")
        self.assertRefused(self.data(OptionRequest((70000,))), "cannot encode ORO")
        self.assertRefused(self.data(LQQuery(256, LINK)), "query-type 256")
        self.assertRefused(self.data(RemoteId(2**32, b"x")), "enterprise number 4294967296")
        self.assertRefused(self.data(UnknownOption(65536, b"")), "option code 65536")

    def test_status_text(self) -> None:
        """Status text with NUL or a lone surrogate is refused."""
        self.assertRefused(self.data(StatusCodeOption(0, "a\x00b")), "contains NUL")
        self.assertRefused(self.data(StatusCodeOption(0, "\ud800")), "not encodable as UTF-8")

    def test_empty_values(self) -> None:
        """An empty remote-id and an empty LQ_CLIENT_LINK are refused."""
        self.assertRefused(self.data(RemoteId(1, b"")), "at least one octet")
        self.assertRefused(self.data(LQClientLink(())), "at least one link-address")

    def test_invalid_duid(self) -> None:
        """A hand-built invalid Duid is refused in CLIENTID, SERVERID and RELAY_ID."""
        for cls in (ClientId, ServerId, RelayId):
            error = self.assertRefused(self.data(cls(Duid(b""))), "DUID of 0 octets")
            self.assertEqual(error.option_code, cls.code)
        self.assertRefused(self.data(RelayId(Duid(b"\x00\x04" + bytes(15)))), "DUID_UUID")

    def test_relay_message_option(self) -> None:
        """Raw relayed octets that look like a relay message, or a Message, are refused."""
        raw = RelayMessageOption(relay())
        self.assertRefused(RelayMessage(12, 1, LINK, PEER, (raw,)), "give a RelayMessage")
        wrong = RelayMessageOption(Message(1, 1))  # type: ignore[arg-type]
        self.assertRefused(RelayMessage(12, 1, LINK, PEER, (wrong,)), "neither bytes nor")

    def test_lq_relay_data(self) -> None:
        """LQ_RELAY_DATA must carry a RelayMessage and a plain IPv6 peer-address."""
        self.assertRefused(
            self.data(LQRelayData(PEER, Message(1, 1))),  # type: ignore[arg-type]
            "is not a RelayMessage",
        )
        self.assertRefused(
            self.data(LQRelayData(PEER, RelayMessage(13 + 1, 0, LINK, PEER))),
            "not a relay message type",
        )

    def test_unknown_option_with_modelled_code(self) -> None:
        """
        An UnknownOption with a modelled code encodes only if its data is valid for that
        code (it then decodes as the typed option).
        """
        self.assertRefused(
            self.data(UnknownOption(OptionCode.OPTION_CLT_TIME, b"\x00")),
            "raw data is not a valid CLT_TIME: CLT_TIME must be 4 octets, not 1",
        )
        valid = self.data(UnknownOption(OptionCode.OPTION_CLT_TIME, b"\x00\x00\x00\x07"))
        self.assertEqual(decode_message(valid.encode()), self.data(CltTime(7)))
        self.assertEqual(
            encode_options([UnknownOption(OptionCode.OPTION_CLT_TIME, b"\x00\x00\x00\x07")]),
            CltTime(7).encode(),
        )


class RfcNameTests(SynchronousTestCase):
    """Enums carry the RFC's names; rfc_name spells them as the RFCs do."""

    def test_message_types(self) -> None:
        """Message types are spelled with dashes."""
        self.assertEqual(rfc_name(14, MessageType), "LEASEQUERY")
        self.assertEqual(rfc_name(15, MessageType), "LEASEQUERY-REPLY")
        self.assertEqual(rfc_name(16, MessageType), "LEASEQUERY-DONE")
        self.assertEqual(rfc_name(17, MessageType), "LEASEQUERY-DATA")
        self.assertEqual(rfc_name(22, MessageType), "ACTIVELEASEQUERY")
        self.assertEqual(rfc_name(23, MessageType), "STARTTLS")
        self.assertEqual(rfc_name(12, MessageType), "RELAY-FORW")
        self.assertEqual(rfc_name(11, MessageType), "INFORMATION-REQUEST")

    def test_options_status_query_types(self) -> None:
        """Options, status codes and query types keep their enum (RFC) names."""
        self.assertEqual(rfc_name(44, OptionCode), "OPTION_LQ_QUERY")
        self.assertEqual(rfc_name(47, OptionCode), "OPTION_LQ_RELAY_DATA")
        self.assertEqual(rfc_name(53, OptionCode), "OPTION_RELAY_ID")
        self.assertEqual(rfc_name(11, StatusCode), "QueryTerminated")
        self.assertEqual(rfc_name(9, StatusCode), "NotConfigured")
        self.assertEqual(rfc_name(5, QueryType), "QUERY_BY_REMOTE_ID")
        self.assertEqual(rfc_name(1, DuidType), "DUID_LLT")

    def test_unknown(self) -> None:
        """Values no enum member has are spelled unknown(N)."""
        self.assertEqual(rfc_name(99, MessageType), "unknown(99)")
        self.assertEqual(rfc_name(999, OptionCode), "unknown(999)")

    def test_decoded_enums(self) -> None:
        """Decoding gives enum members for known numbers (so their names print)."""
        decoded = decode_message(message(option(13, b"\x00\x0b"), msg_type=16))
        self.assertIs(decoded.msg_type, MessageType.LEASEQUERY_DONE)
        status = decoded.option(StatusCodeOption)
        assert status is not None
        self.assertIs(status.status, StatusCode.QueryTerminated)
