"""
Generic codec speed for one binding: encode and decode a LEASEQUERY-DATA holding one
realistic CLIENT_DATA, printed as JSON.

The CLIENT_DATA is what a server sends per binding: CLIENTID (DUID-LL), IAADDR, IAPREFIX,
CLT_TIME and, in the ``relay`` variants, LQ_RELAY_DATA (one RELAY-FORW with INTERFACE_ID,
REMOTE_ID and RELAY_ID). Every message has its own DUID, address and prefix (as in a bulk
reply), built before timing. ``encode`` times ``Message.encode()`` on ready values (the
server has its own faster path; this is the generic codec). ``decode`` times
``decode_message()`` on the encoded octets: what a requestor pays per binding.

Rates are messages (= bindings) per second, best of ``--repeat`` runs, wall-clock and CPU
time (the machine may be shared: CPU time is the steadier figure).

Usage: python bench/codec_encode.py [--count 50000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from ipaddress import IPv6Address

from bulklq.wire import (
    ClientData,
    ClientId,
    CltTime,
    Duid,
    IAAddress,
    IAPrefix,
    InterfaceId,
    LQRelayData,
    Message,
    MessageType,
    Option,
    RelayId,
    RelayMessage,
    RemoteId,
    decode_message,
)

LINK = IPv6Address("2001:db8:1::1")
RELAY = RelayMessage(
    MessageType.RELAY_FORW,
    0,
    LINK,
    IPv6Address("fe80::1"),
    (
        InterfaceId(b"eth0/1"),
        RemoteId(32473, b"circuit-7"),
        RelayId(Duid.uuid(bytes(range(16)))),
    ),
)
ADDRESS_BASE = int(IPv6Address("2001:db8:1::"))
PREFIX_BASE = int(IPv6Address("2001:db8:ff00::"))


def binding_message(index: int, relay: bool) -> Message:
    """The LEASEQUERY-DATA of binding C{index}."""
    options: list[Option] = [
        ClientId(Duid.ll(1, index.to_bytes(6, "big"))),
        IAAddress(IPv6Address(ADDRESS_BASE + index), 3600, 7200),
        IAPrefix(3600, 7200, 56, IPv6Address(PREFIX_BASE + (index << 72))),
        CltTime(42),
    ]
    if relay:
        options.append(LQRelayData(LINK, RELAY))
    return Message(MessageType.LEASEQUERY_DATA, 0x123456, (ClientData(tuple(options)),))


def measure(work: Callable[[], object], count: int, repeat: int) -> dict[str, float]:
    """Best wall-clock and CPU rates of C{repeat} runs of C{work} (C{count} items each)."""
    wall = cpu = 0.0
    for _ in range(repeat):
        wall_start, cpu_start = time.perf_counter(), time.process_time()
        work()
        wall_seconds = time.perf_counter() - wall_start
        cpu_seconds = time.process_time() - cpu_start
        wall = max(wall, count / wall_seconds)
        cpu = max(cpu, count / cpu_seconds) if cpu_seconds else cpu
    return {"per_second": round(wall), "per_cpu_second": round(cpu)}


def run(count: int, repeat: int) -> dict[str, object]:
    """Measure encode and decode, with and without LQ_RELAY_DATA."""
    results: dict[str, object] = {}
    for relay in (False, True):
        values = [binding_message(index, relay) for index in range(count)]
        octets = [value.encode() for value in values]
        assert all(
            decode_message(data) == value for data, value in zip(octets, values, strict=True)
        )
        name = "relay" if relay else "plain"

        def encode(values: list[Message] = values) -> None:
            for value in values:
                value.encode()

        def decode(octets: list[bytes] = octets) -> None:
            for data in octets:
                decode_message(data)

        results[name] = {
            "message_octets": len(octets[0]),
            "encode": measure(encode, count, repeat),
            "decode": measure(decode, count, repeat),
        }
    return {
        "benchmark": "codec_encode",
        "unit": "LEASEQUERY-DATA messages (one CLIENT_DATA = one binding)",
        "count": count,
        "repeat": repeat,
        "python": platform.python_version(),
        **results,
    }


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, measure, print JSON."""
    parser = argparse.ArgumentParser(description="Generic codec encode/decode rate per binding.")
    parser.add_argument("--count", type=int, default=50_000, help="messages per run")
    parser.add_argument("--repeat", type=int, default=5, help="runs; the best is reported")
    options = parser.parse_args(argv)
    print(json.dumps(run(options.count, options.repeat)))


if __name__ == "__main__":
    main()
