"""
Independent decoders read what bulklq encodes: Wireshark's tshark (a C dissector nobody here
wrote) and dhcpkit 1.0.7 (a strict Python implementation of RFC 5007/5460).

Both are fed the golden vectors as bulklq re-encodes them, a few messages freshly built with
the codec, and realistic generated Bulk Leasequery messages (tests/wire_strategies.py,
derandomized so every run checks the same ones).

Each test skips with the reason when its tool is missing, unless BULKLQ_REQUIRE_SERVICES=1
(CI, after .ci/setup.d/20-tshark.sh and the C{interop} extra): then it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from ipaddress import IPv6Address
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from twisted.trial.unittest import SkipTest, SynchronousTestCase

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
    Option,
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
    decode_message,
)

from .vectors import valid_vectors, vector_hex
from .wire_strategies import bulk_messages

REQUIRE_SERVICES = os.environ.get("BULKLQ_REQUIRE_SERVICES") == "1"
GENERATED_COUNT = 60
#: Expert-info severities (epan/proto.h): PI_WARN and above count as a complaint.
PI_WARN = 0x00600000


def unavailable(testcase: SynchronousTestCase, reason: str) -> None:
    """Skip with C{reason}, or fail when the environment requires every service."""
    if REQUIRE_SERVICES:
        testcase.fail(f"{reason} (BULKLQ_REQUIRE_SERVICES=1)")
    raise SkipTest(reason)


def vector_messages() -> list[tuple[str, Message | RelayMessage]]:
    """Every valid golden vector, decoded (its encoding is bulklq's)."""
    return [(name, decode_message(octets)) for name, octets in valid_vectors()]


def fresh_messages() -> list[tuple[str, Message | RelayMessage]]:
    """LEASEQUERY, REPLY, DATA and DONE built with the codec (xids using all 24 bits)."""
    link = IPv6Address("2001:db8:7::1")
    requestor = ClientId(Duid.en(32473, b"bulklq-test"))
    server = ServerId(Duid.llt(1, 123456789, bytes.fromhex("020000000042")))
    relay = RelayMessage(
        MessageType.RELAY_FORW,
        1,
        link,
        IPv6Address("fe80::7"),
        (
            InterfaceId(b"ge-0/0/1"),
            RemoteId(4491, b"\x01\x02\x03"),
            RelayId(Duid.uuid(bytes(range(16, 32)))),
            RelayMessageOption(
                RelayMessage(
                    MessageType.RELAY_FORW,
                    0,
                    IPv6Address("::"),
                    IPv6Address("fe80::8"),
                    (InterfaceId(b"ldra-1"),),
                )
            ),
        ),
    )
    client = ClientData(
        (
            ClientId(Duid.llt(1, 1000, bytes.fromhex("0200000000aa"))),
            IAAddress(IPv6Address("2001:db8:7::10"), 1800, 3600),
            IAAddress(IPv6Address("2001:db8:7::11"), 0, 60),
            IAPrefix(1800, 3600, 48, IPv6Address("2001:db8:7700::")),
            CltTime(7),
            LQRelayData(link, relay),
        )
    )
    return [
        (
            "fresh-leasequery",
            Message(
                MessageType.LEASEQUERY,
                0xABCDEF,
                (
                    requestor,
                    LQQuery(
                        QueryType.QUERY_BY_LINK_ADDRESS,
                        link,
                        (OptionRequest((47, 46)),),
                    ),
                ),
            ),
        ),
        (
            "fresh-reply",
            Message(MessageType.LEASEQUERY_REPLY, 0xABCDEF, (requestor, server, client)),
        ),
        (
            "fresh-data",
            Message(
                MessageType.LEASEQUERY_DATA,
                0xABCDEF,
                (ClientData((ClientId(Duid.ll(1, b"\x02\x00\x00\x00\x00\xbb")), CltTime(0))),),
            ),
        ),
        (
            "fresh-data-unknown-option",
            Message(
                MessageType.LEASEQUERY_DATA,
                0x000001,
                (ClientData((client.options[0], UnknownOption(65001, b"opaque"))),),
            ),
        ),
        ("fresh-done", Message(MessageType.LEASEQUERY_DONE, 0xFFFFFF, ())),
        (
            "fresh-done-status",
            Message(
                MessageType.LEASEQUERY_DONE,
                0x800000,
                (StatusCodeOption(StatusCode.Success, "done"),),
            ),
        ),
    ]


def generated_messages(count: int = GENERATED_COUNT) -> list[tuple[str, Message]]:
    """C{count} realistic Bulk Leasequery messages, the same ones on every run."""
    found: list[Message] = []

    @settings(
        max_examples=count,
        database=None,
        derandomize=True,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(bulk_messages)
    def collect(message: Message) -> None:
        found.append(message)

    collect()
    return [(f"generated-{index}", message) for index, message in enumerate(found)]


def is_container(option: Option) -> bool:
    """Options whose sub-options every decoder here dissects."""
    return isinstance(option, ClientData | IAAddress | IAPrefix | LQQuery)


def option_codes(options: Sequence[Option], relays: bool) -> list[int | str]:
    """
    The option codes in depth-first order, C{"("}/C{")"} around each container's content;
    with C{relays}, the options of relay messages inside LQ_RELAY_DATA and RELAY_MSG too.
    """
    codes: list[int | str] = []
    for option in options:
        codes.append(option.code)
        inner: Sequence[Option] | None = None
        if isinstance(option, ClientData | IAAddress | IAPrefix | LQQuery):
            inner = option.options
        elif relays and isinstance(option, LQRelayData):
            inner = option.relay_message.options
        elif (
            relays
            and isinstance(option, RelayMessageOption)
            and isinstance(option.message, RelayMessage)
        ):
            inner = option.message.options
        if inner is not None:
            codes += ["(", *option_codes(inner, relays), ")"]
    return codes


def has_relay_data(options: Sequence[Option]) -> bool:
    """Whether LQ_RELAY_DATA appears anywhere in C{options}."""
    return any(
        isinstance(option, LQRelayData) or (is_container(option) and has_relay_data(option.options))  # type: ignore[attr-defined]
        for option in options
    )


def collect_values(options: Sequence[Option], kind: type[Option]) -> list[Option]:
    """Every option of C{kind}, depth first, outside relay messages."""
    found: list[Option] = []
    for option in options:
        if isinstance(option, kind):
            found.append(option)
        if is_container(option):
            found += collect_values(option.options, kind)  # type: ignore[attr-defined]
    return found


TSHARK_FIELDS = (
    "frame.number",
    "dhcpv6.bulk_leasequery.size",
    "dhcpv6.bulk_leasequery.msgtype",
    "dhcpv6.bulk_leasequery.reserved",
    "dhcpv6.bulk_leasequery.trans_id",
    "dhcpv6.option.type",
    "dhcpv6.duid.bytes",
    "dhcpv6.iaaddr.ip",
    "dhcpv6.clt_time",
    "dhcpv6.status_code",
    "_ws.malformed",
    "_ws.expert.message",
    "_ws.expert.severity",
)


class TsharkTests(SynchronousTestCase):
    """Wireshark's Bulk Leasequery dissector (tshark 4.0) reads bulklq's TCP frames."""

    def setUp(self) -> None:
        """Find tshark and text2pcap (Debian package tshark)."""
        self.tshark = shutil.which("tshark")
        self.text2pcap = shutil.which("text2pcap")
        if self.tshark is None or self.text2pcap is None:
            unavailable(
                self, "tshark/text2pcap not installed (Debian tshark; .ci/setup.d/20-tshark.sh)"
            )

    def dissect(self, messages: Sequence[Message | RelayMessage]) -> list[dict[str, list[str]]]:
        """
        Write each message as one TCP segment from port 547 (2-octet size prefix, as on the
        wire), convert with text2pcap, and return tshark's fields, one dict per frame.
        """
        directory = Path(self.mktemp())
        directory.mkdir()
        dump = directory / "frames.txt"
        lines = []
        for message in messages:
            octets = message.encode()
            framed = len(octets).to_bytes(2, "big") + octets
            for offset in range(0, len(framed), 16):
                chunk = framed[offset : offset + 16]
                lines.append(f"{offset:06x} {chunk.hex(' ')}")
        dump.write_text("\n".join(lines) + "\n")
        capture = directory / "frames.pcap"
        assert self.text2pcap is not None and self.tshark is not None
        subprocess.run(
            [self.text2pcap, "-q", "-T", "547,40000", str(dump), str(capture)],
            check=True,
            capture_output=True,
            timeout=60,
        )
        command = [self.tshark, "-n", "-r", str(capture), "-T", "fields"]
        command += ["-E", "separator=/t", "-E", "occurrence=a", "-E", "aggregator=|"]
        for field in TSHARK_FIELDS:
            command += ["-e", field]
        result = subprocess.run(command, check=True, capture_output=True, text=True, timeout=120)
        frames = []
        for line in result.stdout.splitlines():
            values = line.split("\t")
            self.assertEqual(len(values), len(TSHARK_FIELDS), line)
            frames.append(
                {
                    field: [item for item in value.split("|") if item]
                    for field, value in zip(TSHARK_FIELDS, values, strict=True)
                }
            )
        self.assertEqual(len(frames), len(messages), result.stderr)
        return frames

    def check(self, named: Sequence[tuple[str, Message | RelayMessage]]) -> None:
        """tshark sees each message's type, xid, size, options and values, no complaint."""
        frames = self.dissect([message for _, message in named])
        for (name, message), frame in zip(named, frames, strict=True):
            assert isinstance(message, Message), name
            self.assertEqual(frame["dhcpv6.bulk_leasequery.msgtype"], [str(message.msg_type)], name)
            # tshark 4.0 splits the xid: the high octet shows as "reserved".
            self.assertEqual(
                frame["dhcpv6.bulk_leasequery.reserved"], [str(message.transaction_id >> 16)], name
            )
            self.assertEqual(
                frame["dhcpv6.bulk_leasequery.trans_id"],
                [str(message.transaction_id & 0xFFFF)],
                name,
            )
            self.assertEqual(
                frame["dhcpv6.bulk_leasequery.size"], [str(len(message.encode()))], name
            )
            codes = [code for code in option_codes(message.options, False) if isinstance(code, int)]
            self.assertEqual(frame["dhcpv6.option.type"], [str(code) for code in codes], name)
            duids = [
                option.duid.hex()  # type: ignore[attr-defined]
                for option in collect_values(message.options, ClientId)
                + collect_values(message.options, ServerId)
                + collect_values(message.options, RelayId)
            ]
            self.assertEqual(
                sorted(value.replace(":", "") for value in frame["dhcpv6.duid.bytes"]),
                sorted(duids),
                name,
            )
            self.assertEqual(
                frame["dhcpv6.iaaddr.ip"],
                [str(option.address) for option in collect_values(message.options, IAAddress)],  # type: ignore[attr-defined]
                name,
            )
            self.assertEqual(
                frame["dhcpv6.clt_time"],
                [str(option.seconds) for option in collect_values(message.options, CltTime)],  # type: ignore[attr-defined]
                name,
            )
            self.assertEqual(
                frame["dhcpv6.status_code"],
                [
                    str(option.status)  # type: ignore[attr-defined]
                    for option in collect_values(message.options, StatusCodeOption)
                ],
                name,
            )
            self.assertNoComplaint(name, message, frame)

    def assertNoComplaint(self, name: str, message: Message, frame: dict[str, list[str]]) -> None:
        """
        No malformed packet and no expert warning or error, but for tshark 4.0's known
        quirks: an option-less message (message-size 4: a bare LEASEQUERY-DONE, also a bare
        REPLY or DATA) is flagged malformed although valid, and an LQ_RELAY_DATA's relay
        message is read as a string ("Trailing stray characters").
        """
        quirk_empty = not message.options
        if not quirk_empty:
            self.assertEqual(frame["_ws.malformed"], [], name)
        expected: set[str] = set()
        if quirk_empty:
            expected.add("Malformed Packet (Exception occurred)")
        if has_relay_data(message.options):
            expected.add("Trailing stray characters")
        complaints = {
            text
            for text, severity in zip(
                frame["_ws.expert.message"], frame["_ws.expert.severity"], strict=False
            )
            if int(severity) >= PI_WARN
        }
        self.assertLessEqual(complaints, expected, name)

    def test_vectors(self) -> None:
        """Every golden vector, as bulklq encodes it, is read with the right fields."""
        self.check(vector_messages())

    def test_fresh(self) -> None:
        """Freshly encoded LEASEQUERY, REPLY (relay chain of two layers), DATA and DONE."""
        self.check(fresh_messages())

    def test_generated(self) -> None:
        """Realistic generated Bulk Leasequery messages are read with the right fields."""
        self.check(generated_messages())


#: Runs in a child process: dhcpkit replaces sys.modules["typing"] with its own module when
#: imported, which would break later imports in the test process (dataclasses, hypothesis).
DHCPKIT_SCRIPT = r"""
import json, sys, warnings
warnings.simplefilter("ignore")
from dhcpkit.ipv6.messages import Message

def codes(options):
    out = []
    for option in options:
        out.append(option.option_type)
        inner = None
        if isinstance(getattr(option, "options", None), list):
            inner = option.options
        elif hasattr(option, "relay_message"):
            inner = option.relay_message.options
        elif hasattr(option, "relayed_message"):
            if option.relayed_message.message_type in (12, 13):
                inner = option.relayed_message.options
        if inner is not None:
            out += ["(", *codes(inner), ")"]
    return out

results = []
for octets in json.load(sys.stdin):
    data = bytes.fromhex(octets)
    try:
        length, message = Message.parse(data)
        results.append({
            "length": length,
            "saved": bytes(message.save()).hex(),
            "type": message.message_type,
            "class": type(message).__name__,
            "xid": getattr(message, "transaction_id", b"").hex(),
            "codes": codes(message.options),
        })
    except Exception as error:
        results.append({"error": f"{type(error).__name__}: {error}"})
json.dump(results, sys.stdout)
"""


def dhcpkit_readings(hex_messages: Sequence[str]) -> list[dict[str, object]]:
    """dhcpkit's reading of each message (hex), from L{DHCPKIT_SCRIPT} in a child process."""
    result = subprocess.run(
        [sys.executable, "-c", DHCPKIT_SCRIPT],
        input=json.dumps(list(hex_messages)),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    readings: list[dict[str, object]] = json.loads(result.stdout)
    return readings


class DhcpkitTests(SynchronousTestCase):
    """dhcpkit 1.0.7 parses bulklq's messages strictly and re-encodes them byte for byte."""

    def setUp(self) -> None:
        """Check that dhcpkit imports (the C{interop} extra: dhcpkit, setuptools<82)."""
        probe = subprocess.run(
            [sys.executable, "-W", "ignore", "-c", "import dhcpkit.ipv6.messages"],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if probe.returncode:
            last = (probe.stderr.strip().splitlines() or ["?"])[-1]
            unavailable(self, f"dhcpkit 1.0.7 not importable (pip install .[interop]): {last}")

    def parse(self, messages: Sequence[Message | RelayMessage]) -> list[dict[str, object]]:
        """dhcpkit's reading of each message (in a child process)."""
        parsed = dhcpkit_readings([message.encode().hex() for message in messages])
        self.assertEqual(len(parsed), len(messages))
        return parsed

    def check(self, named: Sequence[tuple[str, Message | RelayMessage]]) -> None:
        """Each message parses whole, re-encodes identically, with the same structure."""
        parsed = self.parse([message for _, message in named])
        for (name, message), reading in zip(named, parsed, strict=True):
            self.assertNotIn("error", reading, name)
            octets = message.encode()
            self.assertEqual(reading["length"], len(octets), name)
            self.assertEqual(reading["saved"], octets.hex(), name)
            self.assertEqual(reading["type"], message.msg_type, name)
            if isinstance(message, Message):
                self.assertEqual(reading["xid"], message.transaction_id.to_bytes(3, "big").hex())
            self.assertEqual(reading["codes"], option_codes(message.options, True), name)

    def test_vectors(self) -> None:
        """Every golden vector, as bulklq encodes it."""
        self.check(vector_messages())

    def test_fresh(self) -> None:
        """Freshly encoded LEASEQUERY, REPLY, DATA and DONE, and a relay chain alone."""
        fresh = fresh_messages()
        reply = fresh[1][1]
        assert isinstance(reply, Message)
        client_data = reply.option(ClientData)
        assert client_data is not None
        relay_data = client_data.option(LQRelayData)
        assert relay_data is not None
        self.check([*fresh, ("fresh-relay-chain", relay_data.relay_message)])

    def test_generated(self) -> None:
        """Realistic generated Bulk Leasequery messages."""
        self.check(generated_messages())

    def test_rejects_invalid_vectors(self) -> None:
        """dhcpkit refuses the two invalid vectors too (the codec's verdict agrees)."""
        readings = dhcpkit_readings(
            [vector_hex(name) for name in ("invalid-clt-time-length", "invalid-truncated-option")]
        )
        self.assertEqual([("error" in reading) for reading in readings], [True, True])
