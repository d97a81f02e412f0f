"""
SQLite store throughput: stream a Relay-ID query (and a link query) through fetch() pages.

Builds (or reuses) a database of N bindings, every one relayed by the same Relay-ID with its
own Remote-ID and one of 48 interfaces per link, then pulls the whole answer page by page
through SQLiteBindingStore.fetch() on a running reactor (so the thread pool hand-off is
included) and builds every binding of every page, as the server does when it encodes them.
Prints JSON: the wall-clock rate, the rate per CPU second of the whole process (steadier on a
shared machine), the load average. Target (issue 6): >= 100,000 bindings/s for the Relay-ID
query on 1,000,000.

    python bench/store_sqlite.py --bindings 1000000 --path /tmp/bulklq-bench.db

The database is built the fast way for a benchmark only: rows are made from one binding
encoded by the store per relay port (the per-client values spliced in), inserted in key
order with the journal and syncing off and the DUID index built after the load; a sample of
bindings is then read back and compared with the same bindings built and encoded normally.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sqlite3
import struct
import tempfile
import time
from collections.abc import Iterator
from ipaddress import IPv6Address
from typing import Any

from twisted.internet import defer, task
from twisted.internet.task import Clock

from bulklq.model import AddressLease, Binding, BindingQuery
from bulklq.stores.sqlite import SQLiteBindingStore, SQLiteDatabase, _row_of
from bulklq.testing import DEFAULT_CLTT, make_duid, make_link, make_relay_data
from bulklq.wire import Duid, RemoteId

RELAY_ID = Duid.en(32473, b"bench-relay")
ENTERPRISE = 3561
LINKS = 16
PORTS = 48
_LEASE = struct.Struct("!16sII")


def make_binding(number: int) -> Binding:
    """Binding C{number} (from 0) of the benchmark database, built the ordinary way."""
    link = number % LINKS
    base = IPv6Address(f"2001:db8:{link:x}::")
    return Binding(
        make_duid(number + 1),
        f"link-{link}",
        DEFAULT_CLTT,
        (AddressLease(base + number + 1, 1800, 3600),),
        relay_data=make_relay_data(
            link_address=base + 1,
            interface_id=b"port-%d" % (number % PORTS),
            relay_id=RELAY_ID,
            remote_id=RemoteId(ENTERPRISE, b"subscriber-%d" % number),
        ),
    )


def _rows(count: int) -> Iterator[tuple[Any, ...]]:
    """The C{bindings} rows of bindings 0..count-1, in key order (link id, then DUID)."""
    templates: dict[int, tuple[Any, ...]] = {}
    for link in sorted(range(LINKS), key=lambda n: f"link-{n}"):
        for number in range(link, count, LINKS):
            port = number % PORTS
            template = templates.get(port * LINKS + link)
            if template is None:
                template = templates[port * LINKS + link] = _row_of(make_binding(number))
            link_id, _, expires, leases, relay, _, extra = template
            base = int(IPv6Address(f"2001:db8:{link:x}::"))
            yield (
                link_id,
                make_duid(number + 1).raw,
                expires,
                leases[:10] + _LEASE.pack((base + number + 1).to_bytes(16, "big"), 1800, 3600),
                relay,
                b"subscriber-%d" % number,
                extra,
            )


def build(path: str, count: int) -> float:
    """Write C{count} bindings to a new database; returns seconds taken."""
    started = time.perf_counter()
    database = SQLiteDatabase(path)
    database.add_links(make_link(f"link-{n}", [f"2001:db8:{n:x}::/48"]) for n in range(LINKS))
    database.close()
    connection = sqlite3.connect(path, isolation_level=None)
    execute = connection.execute
    execute("PRAGMA journal_mode=OFF")
    execute("PRAGMA synchronous=OFF")
    execute("PRAGMA cache_size=-500000")
    execute("BEGIN")
    execute("DROP INDEX bindings_by_duid")
    batch: list[tuple[Any, ...]] = []
    relay_id = RELAY_ID.raw
    addresses: list[tuple[bytes, str, bytes]] = []
    remote_ids: list[tuple[bytes, str, bytes]] = []
    enterprise = ENTERPRISE.to_bytes(4, "big")

    def flush() -> None:
        connection.executemany("INSERT INTO bindings VALUES (?, ?, ?, ?, ?, ?, ?)", batch)
        connection.executemany(
            "INSERT INTO relay_ids VALUES (?, ?, ?)", [(relay_id, r[0], r[1]) for r in batch]
        )
        batch.clear()

    for row in _rows(count):
        batch.append(row)
        addresses.append((row[3][10:26], row[0], row[1]))
        remote_ids.append((enterprise + row[5], row[0], row[1]))
        if len(batch) == 50_000:
            flush()
    flush()
    addresses.sort()
    connection.executemany("INSERT INTO addresses VALUES (?, ?, ?)", addresses)
    del addresses
    remote_ids.sort()
    connection.executemany("INSERT INTO remote_ids VALUES (?, ?, ?)", remote_ids)
    del remote_ids
    execute("CREATE INDEX bindings_by_duid ON bindings (duid, link_id)")
    execute("COMMIT")
    execute("PRAGMA journal_mode=WAL")
    connection.close()
    check(path, count)
    return time.perf_counter() - started


def check(path: str, count: int) -> None:
    """Compare a sample of the stored bindings with the same ones built the ordinary way."""
    database = SQLiteDatabase(path)
    try:
        for number in {0, 1, 47, 48, 1000, count // 2, count - 1}:
            if 0 <= number < count:
                expected = make_binding(number)
                if database.get(expected.key) != expected:
                    raise SystemExit(f"bench database: binding {number} does not read back")
    finally:
        database.close()


async def stream(store: SQLiteBindingStore, query: BindingQuery, page: int) -> dict[str, float]:
    """Pull and build every binding of C{query}; the count, seconds and rates."""
    started = time.perf_counter()
    cpu_started = time.process_time()
    first = None
    count = 0
    resume = None
    while True:
        result = await store.fetch(query, resume, page)
        if first is None:
            first = time.perf_counter() - started
        for _binding in result.bindings:  # builds each binding, as the server's encoder does
            count += 1
        resume = result.resume_after
        if resume is None:
            break
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    return {
        "cpu_seconds": round(cpu, 3),
        "bindings_per_cpu_second": round(count / cpu) if cpu else 0,
        "bindings": count,
        "seconds": round(elapsed, 3),
        "bindings_per_second": round(count / elapsed) if elapsed else 0,
        "first_page_ms": round((first or 0) * 1000, 2),
    }


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--bindings", type=int, default=1_000_000)
    parser.add_argument("--page", type=int, default=1000)
    parser.add_argument("--path", help="database file (kept; reused if it has the bindings)")
    arguments = parser.parse_args(argv)
    path = arguments.path or os.path.join(tempfile.mkdtemp(), "bench.db")
    build_seconds = None
    if not os.path.exists(path) or SQLiteDatabase(path).stats()["bindings"] != arguments.bindings:
        if os.path.exists(path):
            os.remove(path)
        build_seconds = round(build(path, arguments.bindings), 1)
    results: dict[str, object] = {
        "benchmark": "store_sqlite",
        "bindings": arguments.bindings,
        "page": arguments.page,
        "build_seconds": build_seconds,
        "database_mb": round(os.path.getsize(path) / 1e6, 1),
        "load_average": [round(load, 2) for load in os.getloadavg()],
    }

    async def run(reactor) -> None:  # type: ignore[no-untyped-def]
        clock = Clock()
        clock.advance(DEFAULT_CLTT + 60)
        store = SQLiteBindingStore(path, reactor, clock)
        try:
            results["relay_id"] = await stream(
                store, BindingQuery.by_relay_id(RELAY_ID), arguments.page
            )
            results["link"] = await stream(store, BindingQuery.by_link("link-1"), arguments.page)
        finally:
            await store.close()
        results["max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        print(json.dumps(results))

    task.react(lambda reactor: defer.ensureDeferred(run(reactor)), [])


if __name__ == "__main__":
    main()
