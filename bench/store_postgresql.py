"""
How fast the PostgreSQL store streams a Relay-ID query out of Kea's lease6 table.

Loads N bindings (one IA_NA lease each, Kea 2.4+ relay-info user context, Relay-ID and
Remote-ID rows in Kea's schema 19 extended-info tables) with COPY into a scratch copy of
the test server's C{kea_tpl_v19} template, creates the index bulklq documents
(C{bulklq_lease6_key}), then times queries paged through C{PostgreSQLBindingStore.fetch}
with the server's default page size, building every binding of each page as the server's
encoder does. Prints one JSON object: per query the bindings, seconds, bindings/s, bulklq's
CPU seconds (all its threads) per binding and bindings per CPU second, PostgreSQL's CPU
seconds for bulklq's connections, and the machine's load average at the end. On a shared
machine the wall figure depends on the other jobs; the CPU figures much less.

    eval "$(scripts/postgres-test-server start)"
    python bench/store_postgresql.py --bindings 1000000 --relays 4

C{--keep NAME} keeps (or reuses, when it exists) the loaded database under that name.
C{--query relay-id} (repeatable: C{relay-id}, C{remote-id}, C{link}) times only those
queries; C{--snapshot-first} takes a Relay-ID/Remote-ID query's key snapshot before its
first page (the store's way without the key index) instead of while its first page walks
the key index, for comparisons.
C{--distinct-contexts} gives every client its own user_context (a real database's case:
the relay's Interface-ID differs per port), so the store parses one context per binding
instead of one per relay.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from ipaddress import IPv6Address
from typing import Any

import psycopg
from psycopg import conninfo
from twisted.internet import defer, task

from bulklq.model import BindingQuery
from bulklq.stores.postgresql import PostgreSQLBindingStore, PostgreSQLSettings
from bulklq.wire import Duid, RemoteId

INDEX_SQL = (
    'CREATE INDEX IF NOT EXISTS bulklq_lease6_key ON lease6 ((subnet_id::text COLLATE "C"), duid)'
)


def relay_duid(number: int) -> Duid:
    """The Relay-ID of relay C{number}."""
    return Duid.en(32473, f"relay-{number}".encode())


def remote_id(number: int) -> RemoteId:
    """The Remote-ID of access circuit C{number}."""
    return RemoteId(4491, f"circuit-{number}".encode())


def load_rows(dsn: str, bindings: int, relays: int, subnets: int, distinct: bool = False) -> float:
    """
    Load with COPY (expire given as timestamptz text). With C{distinct}, every client's
    user_context differs (its relay's Interface-ID names the client's port), as in a real
    lease database; else the clients of a relay share one.
    """
    started = time.perf_counter()
    expire = time.strftime("%Y-%m-%d %H:%M:%S+00", time.gmtime(time.time() + 86400))
    contexts = [_context(relay) for relay in range(relays)]
    base = int(IPv6Address("2001:db8:1000::"))
    with psycopg.connect(dsn, autocommit=True) as conn:
        # Kea's statistics triggers cost more than the load itself; this is a scratch copy.
        conn.execute("ALTER TABLE lease6 DISABLE TRIGGER USER")
        with conn.cursor() as cursor:
            for table, columns, row_of in (
                (
                    "lease6",
                    "address, duid, valid_lifetime, expire, subnet_id, pref_lifetime, "
                    "lease_type, iaid, prefix_len, state, user_context",
                    lambda n, a: (
                        f"{a}\t\\\\x00030001{n:012x}\t86400\t{expire}\t{n % subnets + 1}\t"
                        f"43200\t0\t1\t128\t0\t"
                        + (
                            _context((n // subnets) % relays, n)
                            if distinct
                            else contexts[(n // subnets) % relays]
                        )
                        + "\n"
                    ),
                ),
                (
                    "lease6_relay_id",
                    "relay_id, lease_addr",
                    lambda n, a: f"\\\\x{relay_duid((n // subnets) % relays).raw.hex()}\t{a}\n",
                ),
                (
                    "lease6_remote_id",
                    "remote_id, lease_addr",
                    lambda n, a: (
                        f"\\\\x{remote_id((n // subnets) % relays).encode_data().hex()}\t{a}\n"
                    ),
                ),
            ):
                with cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                    chunk: list[str] = []
                    for number in range(bindings):
                        chunk.append(row_of(number, IPv6Address(base + number)))
                        if len(chunk) == 10000:
                            copy.write("".join(chunk))
                            chunk.clear()
                    copy.write("".join(chunk))
        conn.execute("ALTER TABLE lease6 ENABLE TRIGGER USER")
        conn.execute(INDEX_SQL)
        conn.execute("ANALYZE lease6")
        conn.execute("ANALYZE lease6_relay_id")
        conn.execute("ANALYZE lease6_remote_id")
    return time.perf_counter() - started


def _context(relay: int, client: int | None = None) -> str:
    port = b"eth0" if client is None else f"port-{client}".encode()
    relay_octets = relay_duid(relay).raw
    remote_octets = remote_id(relay).encode_data()
    options = (
        f"0012{len(port):04x}"
        + port.hex()
        + f"0025{len(remote_octets):04x}"
        + remote_octets.hex()
        + f"0035{len(relay_octets):04x}"
        + relay_octets.hex()
    ).upper()
    entry = {
        "hop": 0,
        "link": f"2001:db8:{relay:x}::1",
        "peer": "fe80::1",
        "options": "0x" + options,
        "remote-id": remote_octets.hex(),
        "relay-id": relay_octets.hex(),
    }
    return json.dumps({"ISC": {"relay-info": [entry]}})


async def stream(
    store: PostgreSQLBindingStore, query: BindingQuery, page: int
) -> tuple[int, float, float]:
    """Fetch every page of C{query}; (bindings, seconds, seconds until the first page)."""
    count = 0
    resume = None
    started = time.perf_counter()
    first = None
    while True:
        result = await store.fetch(query, resume, page)
        if first is None:
            first = time.perf_counter() - started
        for _binding in result.bindings:  # builds each binding, as the server's encoder does
            count += 1
        if result.resume_after is None:
            return count, time.perf_counter() - started, first
        resume = result.resume_after


def backend_cpu(monitor: Any, dbname: str) -> dict[int, float]:
    """
    CPU seconds used so far by each of bulklq's server processes on C{dbname} (read from
    C{/proc}: the server runs on this machine); parallel workers of a query are not
    counted (they exit with it).
    """
    ticks = os.sysconf("SC_CLK_TCK")
    found = {}
    for (pid,) in monitor.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name = 'bulklq'",
        (dbname,),
    ).fetchall():
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[pid] = (int(fields[11]) + int(fields[12])) / ticks
    return found


def main(reactor: Any, options: argparse.Namespace) -> defer.Deferred[None]:
    """Load (unless kept), then time the queries."""
    base = options.dsn or os.environ.get("BULKLQ_TEST_POSTGRES_DSN")
    if not base:
        sys.exit("set BULKLQ_TEST_POSTGRES_DSN (scripts/postgres-test-server start) or --dsn")
    admin = conninfo.make_conninfo(base, dbname="postgres")
    name = options.keep or f"bulklq_bench_{os.getpid()}"
    dsn = conninfo.make_conninfo(base, dbname=name)
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE kea_tpl_v19')
    load_seconds = None
    if exists:
        with psycopg.connect(dsn) as conn:
            (options.bindings,) = conn.execute("SELECT count(*) FROM lease6").fetchone() or (0,)
            options.distinct_contexts = None  # as loaded, not known here
    else:
        load_seconds = load_rows(
            dsn, options.bindings, options.relays, options.subnets, options.distinct_contexts
        )

    async def run() -> None:
        store = PostgreSQLBindingStore(PostgreSQLSettings(dsn, pool_size=2), reactor)
        store.snapshot_parallel = options.snapshot_parallel
        store.snapshot_in_background = not options.snapshot_first
        monitor = psycopg.connect(admin, autocommit=True)
        results: dict[str, Any] = {
            "bindings": options.bindings,
            "relays": options.relays,
            "subnets": options.subnets,
            "page_size": options.page,
            "snapshot_parallel": options.snapshot_parallel,
            "snapshot_first": options.snapshot_first,
            "distinct_contexts": options.distinct_contexts,
            "load_seconds": None if load_seconds is None else round(load_seconds, 1),
        }
        try:
            for label, query in (
                ("relay_id", BindingQuery.by_relay_id(relay_duid(0))),
                ("remote_id", BindingQuery.by_remote_id(remote_id(1))),
                ("link", BindingQuery.by_link("subnet-1")),
            ):
                if options.query and label.replace("_", "-") not in options.query:
                    continue
                server_before = backend_cpu(monitor, name)
                cpu = time.process_time()
                count, seconds, first = await stream(store, query, options.page)
                cpu = time.process_time() - cpu
                server_after = backend_cpu(monitor, name)
                server = sum(
                    used - server_before.get(pid, 0.0) for pid, used in server_after.items()
                )
                results[label] = {
                    "bindings": count,
                    "seconds": round(seconds, 2),
                    "bindings_per_second": round(count / seconds),
                    # until the first page arrived (a key snapshot is taken before it)
                    "first_page_seconds": round(first, 3),
                    # bulklq's own CPU time (all threads): the rest is PostgreSQL's, or waiting
                    # for a core on a busy machine.
                    "cpu_seconds": round(cpu, 2),
                    "cpu_us_per_binding": round(cpu / count * 1e6, 2) if count else None,
                    "bindings_per_cpu_second": round(count / cpu) if cpu else None,
                    # PostgreSQL's CPU time for bulklq's connections (parallel workers not
                    # counted): with bulklq's, what the query costs the machine.
                    "server_cpu_seconds": round(server, 2),
                }
            results["load_average"] = os.getloadavg()[0]
        finally:
            monitor.close()
            await store.close()
            if not options.keep:
                with psycopg.connect(admin, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        print(json.dumps(results))

    return defer.ensureDeferred(run())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", help="test server DSN (default $BULKLQ_TEST_POSTGRES_DSN)")
    parser.add_argument("--bindings", type=int, default=1_000_000)
    parser.add_argument("--relays", type=int, default=4, help="bindings spread over N relays")
    parser.add_argument("--subnets", type=int, default=16)
    parser.add_argument("--page", type=int, default=1000, help="bindings per fetch")
    parser.add_argument(
        "--snapshot-parallel",
        type=int,
        default=PostgreSQLBindingStore.snapshot_parallel,
        help="pages of a query paged by key snapshot read at once (1: one page ahead)",
    )
    parser.add_argument(
        "--snapshot-first",
        action="store_true",
        default=False,
        help="take a Relay-ID/Remote-ID query's key snapshot before its first page "
        "(the store's behaviour without the key index), not while walking the first page",
    )
    parser.add_argument(
        "--query",
        action="append",
        choices=("relay-id", "remote-id", "link"),
        help="time only this query (repeat for several; default: all three)",
    )
    parser.add_argument("--keep", metavar="NAME", help="keep/reuse the loaded database NAME")
    parser.add_argument(
        "--distinct-contexts",
        action="store_true",
        default=False,
        help="a user_context per client (when loading), not one per relay",
    )
    task.react(main, [parser.parse_args()])
