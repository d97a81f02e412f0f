"""
What the PostgreSQL change feed (L{bulklq.stores.postgresql_changes}) costs and how fast
it is.

In a scratch copy of the test server's C{kea_tpl_v19} template:

  1. the trigger's cost to the writer: N single-row INSERT transactions (as Kea writes a
     new lease) without the trigger, then N with it while the feed listens;
  2. change-to-publish latency: a writer process inserts leases at C{--rate} transactions a
     second while a L{PostgreSQLChangeFeedStore} listens; for each lease the time from its
     COMMIT returning to the subscriber's callback on the reactor thread.

Prints one JSON object (inserts/s without and with the trigger, latency median/p99/max in
ms, and the machine's load average at the end).

    eval "$(scripts/postgres-test-server start)"
    python bench/postgresql_changes.py --inserts 3000 --changes 3000 --rate 500
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import time
import uuid
from ipaddress import IPv6Address
from typing import Any

import psycopg
from psycopg import conninfo
from twisted.internet import defer, task

from bulklq.changes import BindingChange
from bulklq.stores.postgresql import PostgreSQLBindingStore, PostgreSQLSettings
from bulklq.stores.postgresql_changes import PostgreSQLChangeFeedStore, install_notify

INSERT = (
    "INSERT INTO lease6 (address, duid, valid_lifetime, expire, subnet_id, pref_lifetime, "
    "lease_type, iaid, prefix_len, state, user_context) VALUES (%s, %s, 3600, "
    "now() + interval '1 hour', 1, 1800, 0, 1, 128, 0, %s)"
)
CONTEXT = (
    '{"ISC": {"relay-info": [{"hop": 0, "link": "2001:db8:1::1", "peer": "fe80::1", '
    '"options": "0x0025000A000011A9636972632D31", "remote-id": "000011a9636972632d31"}]}}'
)


def duid(number: int) -> bytes:
    """A DUID-LL for client C{number}."""
    return bytes.fromhex("00030001") + number.to_bytes(6, "big")


def address(prefix: int, number: int) -> str:
    """Lease address C{number} under C{2001:db8:PREFIX::}."""
    return str(IPv6Address(f"2001:db8:{prefix:x}::{number >> 16:x}:{number & 0xFFFF:x}"))


def insert_rate(dsn: str, count: int, prefix: int) -> float:
    """Single-row INSERT transactions per second, one connection."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        started = time.perf_counter()
        for number in range(count):
            conn.execute(INSERT, (address(prefix, number), duid(prefix << 24 | number), CONTEXT))
        return count / (time.perf_counter() - started)


def write_at_rate(
    dsn: str, changes: int, rate: float, results: multiprocessing.Queue[dict[str, float]]
) -> None:
    """Insert C{changes} leases at C{rate} a second; put each one's commit time in C{results}."""
    committed: dict[str, float] = {}
    interval = 1.0 / rate
    with psycopg.connect(dsn, autocommit=True) as conn:
        start = time.perf_counter()
        for number in range(changes):
            pause = start + number * interval - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            text = address(0x30, number)
            conn.execute(INSERT, (text, duid(0x30 << 24 | number), CONTEXT))
            committed[text] = time.time()
    results.put(committed)


async def measure(reactor: Any, dsn: str, arguments: argparse.Namespace) -> dict[str, Any]:
    """Both measurements; the feed listens from the trigger's installation on."""
    store = PostgreSQLBindingStore(PostgreSQLSettings(dsn, pool_size=1), reactor)
    feed = PostgreSQLChangeFeedStore(store, dsn, reactor)
    received: dict[str, float] = {}

    def seen(change: BindingChange) -> None:
        now = time.time()
        for lease in change.binding.addresses:
            received.setdefault(str(lease.address), now)

    plain = await _in_thread(reactor, insert_rate, dsn, arguments.inserts, 0x10)
    install_notify(dsn)
    feed.keep_history()
    feed.subscribe(seen)
    await feed.listening()
    with_trigger = await _in_thread(reactor, insert_rate, dsn, arguments.inserts, 0x20)
    await _until(reactor, lambda: len(received) >= arguments.inserts)
    received.clear()

    # The writer is another process, as Kea is: it does not compete for this one's GIL.
    results: multiprocessing.Queue[dict[str, float]] = multiprocessing.Queue()
    writer = multiprocessing.Process(
        target=write_at_rate, args=(dsn, arguments.changes, arguments.rate, results)
    )
    writer.start()
    await _until(reactor, lambda: len(received) >= arguments.changes)
    committed = results.get()  # before join: the writer exits once its queue is read
    writer.join()
    latencies = sorted(1000 * (received[key] - committed[key]) for key in committed)
    await feed.close()
    quantiles = statistics.quantiles(latencies, n=100)
    return {
        "inserts": arguments.inserts,
        "inserts_per_s_without_trigger": round(plain),
        "inserts_per_s_with_trigger": round(with_trigger),
        "changes": arguments.changes,
        "rate_per_s": arguments.rate,
        "latency_ms_median": round(statistics.median(latencies), 2),
        "latency_ms_p99": round(quantiles[98], 2),
        "latency_ms_max": round(latencies[-1], 2),
        "published": feed.published,
    }


async def _in_thread(reactor: Any, function: Any, *args: Any) -> Any:
    from twisted.internet.threads import deferToThread

    return await deferToThread(function, *args)


async def _until(reactor: Any, condition: Any, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        await task.deferLater(reactor, 0.005, lambda: None)


def main() -> None:
    """Run the bench and print the JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inserts", type=int, default=3000)
    parser.add_argument("--changes", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=500.0)
    arguments = parser.parse_args()
    base = os.environ.get("BULKLQ_TEST_POSTGRES_DSN")
    if not base:
        sys.exit("BULKLQ_TEST_POSTGRES_DSN is not set: eval $(scripts/postgres-test-server start)")
    admin = conninfo.make_conninfo(base, dbname="postgres")
    name = f"bulklq_bench_changes_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE kea_tpl_v19')
    dsn = conninfo.make_conninfo(base, dbname=name)
    try:

        def run(reactor: Any) -> defer.Deferred[None]:
            async def go() -> None:
                result = await measure(reactor, dsn, arguments)
                result["loadavg"] = [round(value, 2) for value in os.getloadavg()]
                print(json.dumps(result))

            return defer.Deferred.fromCoroutine(go())

        task.react(run)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
