"""
Requestor parse rate: bindings per second decoded into L{Binding} objects by
L{bulklq.client.Requestor} from a loopback server in another process, and the CPU time
each binding costs.

  python bench/client_parse.py [--count N] [--server frames|bulklq|both|replay|all]
                               [--repeat R]

Prints JSON: for each server kind, bindings/s streaming (each binding handed to a counting
callback, nothing kept) and keeping (merged result held), best of R runs, by the wall
clock (C{..._per_s}) and by the requestor process's CPU time (C{..._per_cpu_s}, and
its inverse C{..._cpu_us_per_binding}): on a busy machine the wall clock also counts
waiting for a CPU. The C{frames} server replays codec-built frames (so only the requestor
is measured); C{bulklq} is the real server over a memory store (so the figure is bounded
by the server too). C{replay} uses no socket: the C{frames} answer is fed to the
requestor's protocol in this process in 64 KiB segments (what a TCP read gives at most),
so only the library's own work is timed (framing, checks, decoding, building the
bindings, the callback).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from ipaddress import IPv6Address
from pathlib import Path

from twisted.internet import defer, task
from twisted.internet.testing import StringTransport

from bulklq.client import (
    BulkLeasequeryClientProtocol,
    LeaseQuery,
    QueryStatus,
    Requestor,
    RequestorOptions,
    ServerResult,
)
from bulklq.wire import ClientId, Duid, Message, decode_message

sys.path.insert(0, str(Path(__file__).parent))
from client_server import frames_stream, start_server  # type: ignore[import-not-found]

REQUESTOR = Duid.en(32473, b"bench")
QUERY = LeaseQuery.by_link_address(IPv6Address("2001:db8::1"))


async def measure(reactor: object, port: int, count: int, keep: bool) -> tuple[float, float]:
    """
    One query; bindings per second from sending the query to the last binding, by the
    wall clock and by this process's CPU time (the server runs in another process).
    """
    seen = [0]

    def count_binding(binding: object) -> None:
        seen[0] += 1

    requestor = Requestor(
        REQUESTOR,
        reactor,  # type: ignore[arg-type]
        RequestorOptions(retries=0, keep_bindings=keep),
    )
    protocol = await requestor.connect(f"[::1]:{port}")
    started = time.perf_counter()
    cpu_started = time.process_time()
    result = await protocol.query(QUERY, count_binding, keep)
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    assert protocol.transport is not None
    protocol.transport.loseConnection()
    assert result.status is QueryStatus.SUCCESS, result.describe()
    assert seen[0] == count, (seen[0], count)
    return count / elapsed, count / cpu


class _FixedXid(random.Random):
    """Draws the transaction-id the replayed answer carries."""

    def getrandbits(self, k: int) -> int:
        return 0x123456


def replay_answer(count: int) -> bytes:
    """The C{frames} server's answer to the bench query, for transaction-id 0x123456."""
    stream, offsets = frames_stream(count)
    answer = bytearray(stream)
    for offset in offsets:
        answer[offset : offset + 3] = (0x123456).to_bytes(3, "big")
    first_size = int.from_bytes(answer[:2], "big")
    first = decode_message(bytes(answer[2 : 2 + first_size]))
    assert isinstance(first, Message)
    reply = Message(first.msg_type, first.transaction_id, (ClientId(REQUESTOR), *first.options))
    octets = reply.encode()
    return len(octets).to_bytes(2, "big") + octets + bytes(answer[2 + first_size :])


def measure_replay(
    reactor: object, segments: list[bytes], count: int, keep: bool
) -> tuple[float, float]:
    """
    One query answered by C{segments} in this process; bindings per second by the wall
    clock and by CPU time, from the first segment to the result.
    """
    seen = [0]

    def count_binding(binding: object) -> None:
        seen[0] += 1

    protocol = BulkLeasequeryClientProtocol(REQUESTOR, reactor, rng=_FixedXid())  # type: ignore[arg-type]
    protocol.makeConnection(StringTransport())
    results: list[ServerResult] = []
    protocol.query(QUERY, count_binding, keep).addCallback(results.append)
    received = protocol.dataReceived
    started = time.perf_counter()
    cpu_started = time.process_time()
    for segment in segments:
        received(segment)
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    (result,) = results
    assert result.status is QueryStatus.SUCCESS, result.describe()
    assert seen[0] == count, (seen[0], count)
    return count / elapsed, count / cpu


def record(figures: dict[str, object], label: str, rates: list[tuple[float, float]]) -> None:
    """Store the best of C{rates} (wall, CPU) under C{label}: rates and CPU us per binding."""
    best_cpu = max(rate[1] for rate in rates)
    figures[f"{label}_bindings_per_s"] = round(max(rate[0] for rate in rates))
    figures[f"{label}_bindings_per_cpu_s"] = round(best_cpu)
    figures[f"{label}_cpu_us_per_binding"] = round(1e6 / best_cpu, 2)


async def run(reactor: object, options: argparse.Namespace) -> None:
    """Measure every asked server kind and print the figures as JSON."""
    figures: dict[str, object] = {"count": options.count, "repeat": options.repeat}
    kinds = {
        "both": ["frames", "bulklq"],
        "all": ["replay", "frames", "bulklq"],
    }.get(options.server, [options.server])
    for kind in kinds:
        if kind == "replay":
            answer = replay_answer(options.count)
            segments = [answer[i : i + 65536] for i in range(0, len(answer), 65536)]
            for keep in (False, True):
                rates = [
                    measure_replay(reactor, segments, options.count, keep)
                    for _ in range(options.repeat)
                ]
                record(figures, f"replay_{'keep' if keep else 'stream'}", rates)
            continue
        process, port = start_server(kind, options.count)
        try:
            for keep in (False, True):
                rates = [
                    await measure(reactor, port, options.count, keep) for _ in range(options.repeat)
                ]
                record(figures, f"{kind}_{'keep' if keep else 'stream'}", rates)
        finally:
            process.terminate()
            process.wait()
    print(json.dumps(figures, indent=2))


def main() -> None:
    """Parse the options and run under task.react."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument(
        "--server", choices=["frames", "bulklq", "both", "replay", "all"], default="both"
    )
    parser.add_argument("--repeat", type=int, default=3)
    options = parser.parse_args()
    task.react(lambda reactor: defer.Deferred.fromCoroutine(run(reactor, options)))


if __name__ == "__main__":
    main()
