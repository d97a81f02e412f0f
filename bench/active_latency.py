"""
Active Leasequery change-to-delivery latency: a bulklq server over a memory store on
loopback, N watchers (bulklq.client.ActiveWatcher, insecure mode), and a writer putting
bindings at a fixed rate. Each put carries a sequence number in its address; a watcher's
change callback looks it up to get put-to-delivery time. Prints JSON (median, p99, max in
milliseconds; changes delivered; achieved rate). Everything runs in one process and one
reactor (server, writer and watchers share a CPU): the figure is an upper bound.

    python bench/active_latency.py --rate 1000 --watchers 10 --seconds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from ipaddress import IPv6Address
from typing import Any

from twisted.internet import endpoints, task
from twisted.internet.defer import Deferred

from bulklq.client import (
    ActiveQuery,
    ActiveWatcher,
    BindingChange,
    LeaseQuery,
    Requestor,
    RequestorOptions,
)
from bulklq.config import ServerConfig, parse_access_rule
from bulklq.model import AddressLease, Binding
from bulklq.server import ActiveConfig, BulkLeasequeryFactory
from bulklq.stores.memory import MemoryBindingStore
from bulklq.testing import make_duid, make_link
from bulklq.wire import Duid

SERVER_DUID = Duid.en(32473, b"bench-server")
BASE = int(IPv6Address("2001:db8:1::"))


async def main(reactor: Any, options: argparse.Namespace) -> None:
    """Run the measurement and print the JSON report."""
    store = MemoryBindingStore([make_link("link-1", ["2001:db8:1::/64"])], clock=reactor)
    config = ServerConfig(
        SERVER_DUID,
        allow=(parse_access_rule("127.0.0.1/32"),),
        max_connections=options.watchers + 4,
        max_connections_per_requestor=options.watchers + 4,
    )
    factory = BulkLeasequeryFactory(
        store, config, reactor, active=ActiveConfig(enabled=True, allow_insecure=True)
    )
    port = await endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    address = f"127.0.0.1:{port.getHost().port}"
    put_at: dict[int, float] = {}
    latencies: list[float] = []

    def delivered(change: BindingChange) -> None:
        if change.removed or not change.binding.addresses:
            return
        sequence = int(change.binding.addresses[0].address) - BASE
        sent = put_at.get(sequence)
        if sent is not None:
            latencies.append(time.perf_counter() - sent)

    watchers = []
    for number in range(options.watchers):
        requestor = Requestor(
            Duid.en(32473, f"watcher-{number}".encode()), reactor, RequestorOptions()
        )
        watcher = ActiveWatcher(
            requestor,
            address,
            ActiveQuery(LeaseQuery.by_link_address(IPv6Address("2001:db8:1::1"))),
            on_change=delivered,
            snapshot=False,
        )
        watcher.start()
        watchers.append(watcher)
    deadline = time.perf_counter() + 10
    while not all(watcher.synchronised for watcher in watchers):
        if time.perf_counter() > deadline:
            raise SystemExit("the watchers did not all connect within 10 s")
        await task.deferLater(reactor, 0.05)

    tick = 0.01
    per_tick = max(1, round(options.rate * tick))
    sequence = 0
    started = time.perf_counter()

    def write() -> None:
        nonlocal sequence
        # Catch up with the target rate when ticks come late (a busy CPU).
        due = int((time.perf_counter() - started) * options.rate) - sequence
        for _ in range(max(per_tick, due) if due > 0 else 0):
            sequence += 1
            client = sequence % options.clients + 1
            put_at[sequence] = time.perf_counter()
            store.put(
                Binding(
                    make_duid(client),
                    "link-1",
                    int(reactor.seconds()),
                    (AddressLease(IPv6Address(BASE + sequence), 1800, 3600),),
                )
            )

    writer = task.LoopingCall(write)
    writer.clock = reactor
    writer.start(tick)
    await task.deferLater(reactor, options.seconds)
    writer.stop()
    elapsed = time.perf_counter() - started
    await task.deferLater(reactor, 1.0)  # let the last changes arrive
    for watcher in watchers:
        await watcher.stop()
    await port.stopListening()
    ordered = sorted(latencies)
    report = {
        "benchmark": "active_latency",
        "watchers": options.watchers,
        "target_rate": options.rate,
        "achieved_rate": round(sequence / elapsed, 1),
        "changes_put": sequence,
        "deliveries": len(ordered),
        "deliveries_expected": sequence * options.watchers,
        "latency_ms": {
            "median": round(statistics.median(ordered) * 1000, 3) if ordered else None,
            "p99": round(ordered[int(len(ordered) * 0.99) - 1] * 1000, 3) if ordered else None,
            "max": round(ordered[-1] * 1000, 3) if ordered else None,
        },
        "note": "server, writer and watchers in one process and reactor; coalesced changes "
        "are delivered once (their latest put is what is timed)",
    }
    print(json.dumps(report, indent=2))


def run() -> None:
    """Parse arguments and run on the global reactor."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=1000, help="changes per second (1000)")
    parser.add_argument("--watchers", type=int, default=10, help="active watchers (10)")
    parser.add_argument("--clients", type=int, default=5000, help="distinct clients (5000)")
    parser.add_argument("--seconds", type=float, default=5.0, help="writing time (5 s)")
    options = parser.parse_args()
    task.react(lambda reactor: Deferred.fromCoroutine(main(reactor, options)))


if __name__ == "__main__":
    run()
