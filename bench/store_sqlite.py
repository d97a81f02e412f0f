"""
SQLite store throughput: stream a Relay-ID query (and a link query) through fetch() pages.

Builds (or reuses) a database of N bindings, every one relayed by the same Relay-ID with its
own Remote-ID and interface, then pulls the whole answer page by page through
SQLiteBindingStore.fetch() on a running reactor (so the thread pool hand-off is included), and
prints JSON (wall-clock rate, and the rate per CPU second of the whole process, which is
steadier on a shared machine). Target (issue 6): >= 100,000 bindings/s for the Relay-ID query
on 1,000,000.

    python bench/store_sqlite.py --bindings 1000000 --path /tmp/bulklq-bench.db
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from ipaddress import IPv6Address

from twisted.internet import defer, task
from twisted.internet.task import Clock

from bulklq.model import AddressLease, Binding, BindingQuery
from bulklq.stores.sqlite import SQLiteBindingStore, SQLiteDatabase
from bulklq.testing import DEFAULT_CLTT, make_duid, make_link, make_relay_data
from bulklq.wire import Duid, RemoteId

RELAY_ID = Duid.en(32473, b"bench-relay")
LINKS = 16


def build(path: str, count: int) -> float:
    """Write C{count} bindings to a new database; returns seconds taken."""
    started = time.perf_counter()
    database = SQLiteDatabase(path)
    database.add_links(make_link(f"link-{n}", [f"2001:db8:{n:x}::/48"]) for n in range(LINKS))

    def bindings():  # type: ignore[no-untyped-def]
        for number in range(count):
            link = number % LINKS
            base = IPv6Address(f"2001:db8:{link:x}::")
            yield Binding(
                make_duid(number + 1),
                f"link-{link}",
                DEFAULT_CLTT,
                (AddressLease(base + number + 1, 1800, 3600),),
                relay_data=make_relay_data(
                    link_address=base + 1,
                    interface_id=b"port-%d" % (number % 48),
                    relay_id=RELAY_ID,
                    remote_id=RemoteId(3561, b"subscriber-%d" % number),
                ),
            )

    database.put_many(bindings(), batch=20_000)
    database.close()
    return time.perf_counter() - started


async def stream(store: SQLiteBindingStore, query: BindingQuery, page: int) -> dict[str, float]:
    """Pull every binding of C{query}; the count, seconds and rate."""
    started = time.perf_counter()
    cpu_started = time.process_time()
    first = None
    count = 0
    resume = None
    while True:
        result = await store.fetch(query, resume, page)
        if first is None:
            first = time.perf_counter() - started
        count += len(result.bindings)
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
