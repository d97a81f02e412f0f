"""
Requestor parse rate: bindings per second decoded into L{Binding} objects by
L{bulklq.client.Requestor} from a loopback server in another process.

  python bench/client_parse.py [--count N] [--server frames|bulklq|both] [--repeat R]

Prints JSON: for each server kind, bindings/s streaming (each binding handed to a counting
callback, nothing kept) and keeping (merged result held), best of R runs. The C{frames}
server replays codec-built frames (so only the requestor is measured); C{bulklq} is the
real server over a memory store (so the figure is bounded by the server too). Rates are
given by the wall clock and by the requestor process's CPU time: on a busy machine the wall
clock also counts waiting for a CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from ipaddress import IPv6Address
from pathlib import Path

from twisted.internet import defer, task

from bulklq.client import LeaseQuery, QueryStatus, Requestor, RequestorOptions
from bulklq.wire import Duid

sys.path.insert(0, str(Path(__file__).parent))
from client_server import start_server  # type: ignore[import-not-found]


async def measure(reactor: object, port: int, count: int, keep: bool) -> tuple[float, float]:
    """
    One query; bindings per second from sending the query to the last binding, by the
    wall clock and by this process's CPU time (the server runs in another process).
    """
    seen = [0]

    def count_binding(binding: object) -> None:
        seen[0] += 1

    requestor = Requestor(
        Duid.en(32473, b"bench"),
        reactor,  # type: ignore[arg-type]
        RequestorOptions(retries=0, keep_bindings=keep),
    )
    protocol = await requestor.connect(f"[::1]:{port}")
    started = time.perf_counter()
    cpu_started = time.process_time()
    result = await protocol.query(
        LeaseQuery.by_link_address(IPv6Address("2001:db8::1")), count_binding, keep
    )
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    protocol.transport.loseConnection()
    assert result.status is QueryStatus.SUCCESS, result.describe()
    assert seen[0] == count, (seen[0], count)
    return count / elapsed, count / cpu


async def run(reactor: object, options: argparse.Namespace) -> None:
    """Measure every asked server kind and print the figures as JSON."""
    figures: dict[str, object] = {"count": options.count, "repeat": options.repeat}
    kinds = ["frames", "bulklq"] if options.server == "both" else [options.server]
    for kind in kinds:
        process, port = start_server(kind, options.count)
        try:
            for keep in (False, True):
                rates = [
                    await measure(reactor, port, options.count, keep) for _ in range(options.repeat)
                ]
                label = f"{kind}_{'keep' if keep else 'stream'}_bindings_per"
                figures[f"{label}_s"] = round(max(rate[0] for rate in rates))
                figures[f"{label}_cpu_s"] = round(max(rate[1] for rate in rates))
        finally:
            process.terminate()
            process.wait()
    print(json.dumps(figures, indent=2))


def main() -> None:
    """Parse the options and run under task.react."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--server", choices=["frames", "bulklq", "both"], default="both")
    parser.add_argument("--repeat", type=int, default=3)
    options = parser.parse_args()
    task.react(lambda reactor: defer.Deferred.fromCoroutine(run(reactor, options)))


if __name__ == "__main__":
    main()
