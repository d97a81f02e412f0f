"""
Active Leasequery over the SQLite store: change-to-delivery latency with N watchers, for
the store's own writes (SQLiteBindingStore.put, published at commit) or another
connection's (as another process would write: published from the change log by the
store's sweep, once a second by default), and the cost of the change log for writers.

A bulklq server over an SQLite store on loopback, N watchers (bulklq.client.ActiveWatcher,
insecure mode), and a writer putting bindings at a fixed rate; each put carries a sequence
number in its address, and a watcher's change callback looks it up to get put-to-delivery
time (for --writer store, from the put call, queueing included; for --writer other, from
the other connection's commit). Prints JSON: median, p99 and max in milliseconds, changes
delivered, achieved rate, and put_many rates into a fresh file with and without a
listener registered. Everything but the other writer runs in one process and reactor: the
figures are upper bounds.

    python bench/sqlite_changes.py --rate 1000 --watchers 10 --seconds 5
    python bench/sqlite_changes.py --rate 1000 --watchers 10 --seconds 5 --writer other
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from ipaddress import IPv6Address
from typing import Any

from twisted.internet import task
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
from bulklq.server import ActiveConfig
from bulklq.service import BulkLeasequeryService
from bulklq.stores.sqlite import SQLiteBindingStore, SQLiteDatabase
from bulklq.testing import make_binding, make_duid, make_link
from bulklq.wire import Duid, RemoteId

SERVER_DUID = Duid.en(32473, b"bench-server")
BASE = int(IPv6Address("2001:db8:1::"))


def _binding(sequence: int, clients: int, now: int) -> Binding:
    client = sequence % clients + 1
    return Binding(
        make_duid(client),
        "link-1",
        now,
        (AddressLease(IPv6Address(BASE + sequence), 1800, 3600),),
    )


def write_costs(count: int) -> dict[str, float]:
    """put_many rates (bindings/s) into a fresh file, inserting then replacing, with no
    listener and with one (every write then logged)."""
    found: dict[str, float] = {}
    bindings = [
        make_binding(n, relay_id=make_duid(900), remote_id=RemoteId(9, b"p%d" % n))
        for n in range(1, count + 1)
    ]
    for name, listen in (("no_listener", False), ("listener", True)):
        directory = tempfile.mkdtemp(prefix="bulklq-bench-")
        database = SQLiteDatabase(os.path.join(directory, "b.db"))
        if listen:
            database.listen("bench")
        for step in ("insert", "replace"):
            started = time.perf_counter()
            database.put_many(bindings)
            found[f"{name}_{step}_per_s"] = round(count / (time.perf_counter() - started))
        if listen:
            started = time.perf_counter()
            read, after = 0, 0
            while True:
                entries, _ = database.logged_changes(after)
                if not entries:
                    break
                read += len(entries)
                after = entries[-1][0]
            found["log_read_entries"] = read
            found["log_read_per_s"] = round(read / (time.perf_counter() - started))
        database.close()
    return found


async def main(reactor: Any, options: argparse.Namespace) -> None:
    """Run the measurement and print the JSON report."""
    directory = tempfile.mkdtemp(prefix="bulklq-bench-")
    path = os.path.join(directory, "bindings.sqlite3")
    store = SQLiteBindingStore(path, reactor)
    await store.add_link(make_link("link-1", ["2001:db8:1::/64"]))
    config = ServerConfig(
        SERVER_DUID,
        allow=(parse_access_rule("127.0.0.1/32"),),
        max_connections=options.watchers + 4,
        max_connections_per_requestor=options.watchers + 4,
    )
    service = BulkLeasequeryService(
        store,
        config,
        ["tcp:0:interface=127.0.0.1"],
        reactor=reactor,
        active=ActiveConfig(enabled=True, allow_insecure=True),
        expiry_interval=options.interval,
    )
    service.startService()
    await service.listening
    address = f"127.0.0.1:{service.ports[0].getHost().port}"
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

    sequence = 0
    started = time.perf_counter()
    now = int(time.time())
    if options.writer == "store":
        tick = 0.01
        per_tick = max(1, round(options.rate * tick))

        def write() -> None:
            nonlocal sequence
            due = int((time.perf_counter() - started) * options.rate) - sequence
            for _ in range(max(per_tick, due) if due > 0 else 0):
                sequence += 1
                put_at[sequence] = time.perf_counter()
                store.put(_binding(sequence, options.clients, now))

        writer = task.LoopingCall(write)
        writer.clock = reactor
        writer.start(tick)
        await task.deferLater(reactor, options.seconds)
        writer.stop()
    else:
        stop = threading.Event()

        def other() -> None:
            nonlocal sequence
            database = SQLiteDatabase(path)
            while not stop.is_set():
                due = int((time.perf_counter() - started) * options.rate) - sequence
                if due <= 0:
                    time.sleep(0.001)
                    continue
                batch = [_binding(sequence + n + 1, options.clients, now) for n in range(due)]
                database.put_many(batch)
                committed = time.perf_counter()
                for n in range(due):
                    put_at[sequence + n + 1] = committed
                sequence += due
            database.close()

        thread = threading.Thread(target=other)
        thread.start()
        await task.deferLater(reactor, options.seconds)
        stop.set()
        thread.join()
    elapsed = time.perf_counter() - started
    await task.deferLater(reactor, options.interval + 1.0)  # let the last changes arrive
    for watcher in watchers:
        await watcher.stop()
    await service.stopService()
    ordered = sorted(latencies)
    report = {
        "benchmark": "sqlite_changes",
        "writer": options.writer,
        "sweep_interval_s": options.interval,
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
        "write_costs": write_costs(options.cost_bindings) if options.cost_bindings else None,
        "load_average": os.getloadavg()[0],
        "note": "server, watchers (and the store writer) in one process and reactor; "
        "coalesced changes are delivered once (their latest put is what is timed)",
    }
    print(json.dumps(report, indent=2))


def run() -> None:
    """Parse arguments and run on the global reactor."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=1000, help="changes per second (1000)")
    parser.add_argument("--watchers", type=int, default=10, help="active watchers (10)")
    parser.add_argument("--clients", type=int, default=5000, help="distinct clients (5000)")
    parser.add_argument("--seconds", type=float, default=5.0, help="writing time (5 s)")
    parser.add_argument(
        "--writer",
        choices=("store", "other"),
        default="store",
        help="who writes: the store's put (default), or another connection to the file",
    )
    parser.add_argument(
        "--interval", type=float, default=1.0, help="the store's sweep interval (1 s)"
    )
    parser.add_argument(
        "--cost-bindings",
        type=int,
        default=50_000,
        help="bindings for the write-cost figures (50,000; 0: skip)",
    )
    options = parser.parse_args()
    task.react(lambda reactor: Deferred.fromCoroutine(main(reactor, options)))


if __name__ == "__main__":
    run()
