"""
Active Leasequery change-to-delivery latency: a bulklq server on loopback over a memory or
SQLite store, N watchers (bulklq.client.ActiveWatcher, insecure mode), and a writer putting
bindings at a fixed rate. Each put carries a sequence number in its address; a watcher's
change callback looks it up to get put-to-delivery time. Prints JSON (median, p99, max in
milliseconds; changes delivered; achieved rate).

The watchers run in a process of their own (C{--same-process}: in the server's), as
relays would: the two processes compare C{time.monotonic()}, one clock for the machine.

Writers: C{--writer store} puts through the store's own write API (timed from the put
call, queueing included); with C{--store sqlite}, C{--writer other} writes the same file
through another connection, as another process would (published from the change log by
the store's sweep, every C{--interval} seconds; timed from that connection's commit).
The server and the store writer share one process and one reactor.

    python bench/active_latency.py --rate 1000 --watchers 10 --seconds 5
    python bench/active_latency.py --store sqlite --rate 1000 --watchers 10 --seconds 5
    python bench/active_latency.py --store sqlite --writer other --rate 300
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from ipaddress import IPv6Address
from typing import Any

from twisted.internet import protocol, stdio, task
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

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
from bulklq.stores.memory import MemoryBindingStore
from bulklq.testing import make_duid, make_link
from bulklq.wire import Duid

SERVER_DUID = Duid.en(32473, b"bench-server")
BASE = int(IPv6Address("2001:db8:1::"))
LINK = make_link("link-1", ["2001:db8:1::/64"])


def numbered_binding(sequence: int, clients: int, now: int) -> Binding:
    """The binding of put number C{sequence}: its address carries the number."""
    return Binding(
        make_duid(sequence % clients + 1),
        "link-1",
        now,
        (AddressLease(IPv6Address(BASE + sequence), 1800, 3600),),
    )


async def open_store(reactor: Any, options: argparse.Namespace) -> tuple[Any, str | None]:
    """The store to serve, and its file (SQLite) or C{None}."""
    if options.store == "memory":
        return MemoryBindingStore([LINK], clock=reactor), None
    from bulklq.stores.sqlite import SQLiteBindingStore

    path = os.path.join(tempfile.mkdtemp(prefix="bulklq-bench-"), "bindings.sqlite3")
    store = SQLiteBindingStore(path, reactor)
    await store.add_link(LINK)
    return store, path


async def start_watchers(
    reactor: Any, address: str, count: int, on_change: Callable[[BindingChange], None]
) -> list[ActiveWatcher]:
    """C{count} watchers of link-1, all synchronised (or exit after 10 s)."""
    watchers = []
    for number in range(count):
        requestor = Requestor(
            Duid.en(32473, f"watcher-{number}".encode()), reactor, RequestorOptions()
        )
        watcher = ActiveWatcher(
            requestor,
            address,
            ActiveQuery(LeaseQuery.by_link_address(IPv6Address("2001:db8:1::1"))),
            on_change=on_change,
            snapshot=False,
        )
        watcher.start()
        watchers.append(watcher)
    deadline = time.monotonic() + 10
    while not all(watcher.synchronised for watcher in watchers):
        if time.monotonic() > deadline:
            raise SystemExit("the watchers did not all connect within 10 s")
        await task.deferLater(reactor, 0.05)
    return watchers


class _UntilStdinCloses(protocol.Protocol):
    """Fires C{closed} when the parent closes this process's standard input."""

    def __init__(self) -> None:
        self.closed: Deferred[None] = Deferred()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.closed.callback(None)


async def watch_only(reactor: Any, options: argparse.Namespace) -> None:
    """The watcher process: C{--watchers} watchers of C{--watch-only ADDRESS}; prints
    C{ready} once all are synchronised, then, when standard input closes, the arrival time
    (C{time.monotonic()}) of every delivered change as JSON C{[[sequence, time], ...]}."""
    arrivals: list[tuple[int, float]] = []

    def delivered(change: BindingChange) -> None:
        if not change.removed and change.binding.addresses:
            arrivals.append((int(change.binding.addresses[0].address) - BASE, time.monotonic()))

    watchers = await start_watchers(reactor, options.watch_only, options.watchers, delivered)
    until = _UntilStdinCloses()
    stdio.StandardIO(until, reactor=reactor)
    print("ready", flush=True)
    await until.closed
    for watcher in watchers:
        await watcher.stop()
    sys.stdout.write(json.dumps(arrivals) + "\n")
    sys.stdout.flush()


class _WatcherProcess(protocol.ProcessProtocol):
    """The parent's side of the watcher process."""

    def __init__(self) -> None:
        self.ready: Deferred[None] = Deferred()
        self.ended: Deferred[list[tuple[int, float]]] = Deferred()
        self._output = b""

    def outReceived(self, data: bytes) -> None:
        self._output += data
        if not self.ready.called and b"ready\n" in self._output:
            self._output = self._output.split(b"ready\n", 1)[1]
            self.ready.callback(None)

    def errReceived(self, data: bytes) -> None:
        sys.stderr.write(data.decode(errors="replace"))

    def processEnded(self, reason: Failure) -> None:
        if not self.ready.called:
            self.ready.errback(RuntimeError("the watcher process ended before it was ready"))
            return
        self.ended.callback([tuple(pair) for pair in json.loads(self._output or b"[]")])


class StoreWriter:
    """Puts through the store's write API on the reactor, C{rate} a second."""

    def __init__(self, store: Any, reactor: Any, rate: int, clients: int) -> None:
        self.store, self.reactor, self.rate, self.clients = store, reactor, rate, clients
        self.put_at: dict[int, float] = {}
        self.sequence = 0
        self._loop = task.LoopingCall(self._write)
        self._loop.clock = reactor
        self._per_tick = max(1, round(rate * 0.01))

    def start(self) -> None:
        """Start writing."""
        self.started = time.monotonic()
        self._loop.start(0.01)

    def _write(self) -> None:
        # Catch up with the target rate when ticks come late (a busy CPU).
        due = int((time.monotonic() - self.started) * self.rate) - self.sequence
        now = int(self.reactor.seconds())
        for _ in range(max(self._per_tick, due) if due > 0 else 0):
            self.sequence += 1
            self.put_at[self.sequence] = time.monotonic()
            self.store.put(numbered_binding(self.sequence, self.clients, now))

    def stop(self) -> None:
        """Stop writing."""
        self._loop.stop()


class OtherConnectionWriter:
    """Writes the SQLite file through a connection of its own, in a thread, C{rate} a
    second, in one transaction per batch due; timed from each commit."""

    def __init__(self, path: str, rate: int, clients: int) -> None:
        self.path, self.rate, self.clients = path, rate, clients
        self.put_at: dict[int, float] = {}
        self.sequence = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def start(self) -> None:
        """Start writing."""
        self.started = time.monotonic()
        self._thread.start()

    def _run(self) -> None:
        from bulklq.stores.sqlite import SQLiteDatabase

        database = SQLiteDatabase(self.path)
        now = int(time.time())
        while not self._stop.is_set():
            due = int((time.monotonic() - self.started) * self.rate) - self.sequence
            if due <= 0:
                time.sleep(0.001)
                continue
            first = self.sequence + 1
            database.put_many([numbered_binding(first + n, self.clients, now) for n in range(due)])
            committed = time.monotonic()
            for n in range(due):
                self.put_at[first + n] = committed
            self.sequence += due
        database.close()

    def stop(self) -> None:
        """Stop writing (waits for the batch in progress)."""
        self._stop.set()
        self._thread.join()


async def main(reactor: Any, options: argparse.Namespace) -> None:
    """Run the measurement and print the JSON report."""
    store, path = await open_store(reactor, options)
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
    writer: StoreWriter | OtherConnectionWriter
    if options.writer == "other":
        assert path is not None
        writer = OtherConnectionWriter(path, options.rate, options.clients)
    else:
        writer = StoreWriter(store, reactor, options.rate, options.clients)
    arrivals: list[tuple[int, float]] = []
    watchers: list[ActiveWatcher] = []
    child: _WatcherProcess | None = None
    if options.same_process:

        def delivered(change: BindingChange) -> None:
            if not change.removed and change.binding.addresses:
                arrivals.append((int(change.binding.addresses[0].address) - BASE, time.monotonic()))

        watchers = await start_watchers(reactor, address, options.watchers, delivered)
    else:
        child = _WatcherProcess()
        argv = [sys.executable, __file__, "--watch-only", address]
        argv += ["--watchers", str(options.watchers)]
        reactor.spawnProcess(child, sys.executable, argv, env=os.environ)
        await child.ready
    writer.start()
    await task.deferLater(reactor, options.seconds)
    writer.stop()
    elapsed = time.monotonic() - writer.started
    await task.deferLater(reactor, options.interval + 1.0)  # let the last changes arrive
    for watcher in watchers:
        await watcher.stop()
    if child is not None:
        child.transport.closeStdin()  # type: ignore[union-attr]
        arrivals = await child.ended
    await service.stopService()
    put_at = writer.put_at
    ordered = sorted(at - put_at[sequence] for sequence, at in arrivals if sequence in put_at)
    report = {
        "benchmark": "active_latency",
        "store": options.store,
        "writer": options.writer,
        "watchers": options.watchers,
        "target_rate": options.rate,
        "achieved_rate": round(writer.sequence / elapsed, 1),
        "changes_put": writer.sequence,
        "deliveries": len(ordered),
        "deliveries_expected": writer.sequence * options.watchers,
        "latency_ms": {
            "median": round(statistics.median(ordered) * 1000, 3) if ordered else None,
            "p99": round(ordered[int(len(ordered) * 0.99) - 1] * 1000, 3) if ordered else None,
            "max": round(ordered[-1] * 1000, 3) if ordered else None,
        },
        "load_average": os.getloadavg()[0],
        "watchers_process": "the server's" if options.same_process else "their own",
        "note": "server and store writer in one process and reactor; coalesced changes "
        "are delivered once (their latest put is what is timed)",
    }
    print(json.dumps(report, indent=2))


def run() -> None:
    """Parse arguments and run on the global reactor."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", choices=("memory", "sqlite"), default="memory")
    parser.add_argument(
        "--writer",
        choices=("store", "other"),
        default="store",
        help="the store's put (default), or another connection to the SQLite file",
    )
    parser.add_argument("--rate", type=int, default=1000, help="changes per second (1000)")
    parser.add_argument("--watchers", type=int, default=10, help="active watchers (10)")
    parser.add_argument("--clients", type=int, default=5000, help="distinct clients (5000)")
    parser.add_argument("--seconds", type=float, default=5.0, help="writing time (5 s)")
    parser.add_argument(
        "--interval", type=float, default=1.0, help="the expiry/change-log sweep interval (1 s)"
    )
    parser.add_argument(
        "--same-process",
        action="store_true",
        help="run the watchers in the server's process and reactor (default: their own)",
    )
    parser.add_argument("--watch-only", metavar="ADDRESS", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.watch_only:
        task.react(lambda reactor: Deferred.fromCoroutine(watch_only(reactor, options)))
    if options.writer == "other" and options.store != "sqlite":
        parser.error("--writer other needs --store sqlite")
    task.react(lambda reactor: Deferred.fromCoroutine(main(reactor, options)))


if __name__ == "__main__":
    run()
