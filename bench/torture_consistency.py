"""
Consistency under writes at full size, for C{bench/torture.py consistency}.

One process, one reactor: the server (listening on 127.0.0.1 only), a writer adding,
updating and removing bindings at a steady rate, and requestors (L{bulklq.client.Requestor})
streaming the whole link over TCP at once. Every write and every query is stamped with the
same sequence counter (L{WriteLog} of tests/test_hardening_consistency.py), which then
judges each query: bindings unchanged for the whole query returned exactly once, none
twice, every returned state one the key had during the query.

C{run_consistency} runs it in a subprocess (a reactor runs once per process) and returns
the JSON it prints.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from ipaddress import IPv6Address
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]


def run_consistency(
    store: str, *, bindings: int, rate: int, requestors: int, seconds_limit: float
) -> dict[str, Any]:
    """Run one store's scenario in a subprocess; its report."""
    command = [
        sys.executable,
        __file__,
        "--store",
        store,
        "--bindings",
        str(bindings),
        "--rate",
        str(rate),
        "--requestors",
        str(requestors),
        "--max-seconds",
        str(seconds_limit),
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds_limit + 600, check=False
    )
    try:
        result: dict[str, Any] = json.loads(done.stdout)
    except ValueError:
        return {"ok": False, "error": done.stderr.strip().splitlines()[-5:]}
    return result


def open_store(kind: str, initial: list[Any], reactor: Any, cleanups: list[Any]) -> Any:
    """
    The store, and a function applying a batch of writes (bindings to put, keys to
    remove): synchronously for the memory store, else in a writer thread of its own with
    its own connection (so writes do not queue behind the server's reads), returning a
    Deferred.
    """
    from twisted.internet.threads import deferToThreadPool
    from twisted.python.threadpool import ThreadPool

    from tests.test_hardening_consistency import LINK

    if kind == "memory":
        from bulklq.stores.memory import MemoryBindingStore

        memory = MemoryBindingStore([LINK], clock=reactor)
        memory.put_many(initial)

        def write_memory(puts: list[Any], removes: list[Any]) -> None:
            for binding in puts:
                memory.put(binding)
            for key in removes:
                memory.remove(key)

        return memory, write_memory
    writer_pool = ThreadPool(1, 1, name="torture writer")
    writer_pool.start()
    cleanups.append(writer_pool.stop)
    local: dict[str, Any] = {}
    if kind == "sqlite":
        from bulklq.stores.sqlite import SQLiteBindingStore, SQLiteDatabase

        directory = tempfile.mkdtemp(prefix="bulklq-torture-")
        path = os.path.join(directory, "bindings.db")
        database = SQLiteDatabase(path)
        database.add_links([LINK])
        database.put_many(initial)
        database.close()
        sqlite = SQLiteBindingStore(path, reactor, threads=4)
        cleanups.append(lambda: local["db"].close() if "db" in local else None)
        cleanups.append(lambda: shutil.rmtree(directory, ignore_errors=True))

        def sqlite_batch(puts: list[Any], removes: list[Any]) -> None:
            if "db" not in local:
                local["db"] = SQLiteDatabase(path)
            writer = local["db"]
            if puts:
                writer.put_many(puts)
            for key in removes:
                writer.remove(key)

        def write_sqlite(puts: list[Any], removes: list[Any]) -> Any:
            return deferToThreadPool(reactor, writer_pool, sqlite_batch, puts, removes)

        return sqlite, write_sqlite
    if kind == "postgresql":
        import psycopg

        from bulklq.stores.postgresql import (
            PostgreSQLBindingStore,
            PostgreSQLSettings,
            subnet_of_link,
        )
        from tests.test_store_postgresql import V17, ScratchDatabase, kea_rows

        scratch = ScratchDatabase(V17)
        cleanups.append(scratch.drop)
        scratch.put(initial)
        postgresql = PostgreSQLBindingStore(
            PostgreSQLSettings(scratch.dsn, pool_size=4), reactor, [LINK]
        )
        cleanups.append(lambda: local["conn"].close() if "conn" in local else None)

        def postgresql_batch(puts: list[Any], removes: list[Any]) -> None:
            # What Kea does, in one transaction: delete the client's leases (and their
            # relay-table rows), insert the new ones (ScratchDatabase.put, schema 17).
            if "conn" not in local:
                local["conn"] = psycopg.connect(scratch.dsn, autocommit=True)
            conn = local["conn"]
            keys = [
                (subnet_of_link(key[0]), key[1])
                for key in [*removes, *(binding.key for binding in puts)]
            ]
            leases, relays, remotes = [], [], []
            for binding in puts:
                for row, relay_ids, remote_ids in kea_rows(binding, V17):
                    packed = IPv6Address(row[0]).packed
                    leases.append((*row, packed))
                    relays += [(relay_id, packed) for relay_id in relay_ids]
                    remotes += [(remote_id, packed) for remote_id in remote_ids]
            with conn.transaction(), conn.cursor() as cursor:
                for table in ("lease6_relay_id", "lease6_remote_id"):
                    cursor.executemany(
                        f"DELETE FROM {table} WHERE lease_addr IN "
                        "(SELECT binaddr FROM lease6 WHERE subnet_id = %s AND duid = %s)",
                        keys,
                    )
                cursor.executemany("DELETE FROM lease6 WHERE subnet_id = %s AND duid = %s", keys)
                cursor.executemany(
                    "INSERT INTO lease6 (address, duid, valid_lifetime, expire, subnet_id, "
                    "pref_lifetime, lease_type, iaid, prefix_len, state, user_context, "
                    "binaddr) VALUES (%s, %s, %s, to_timestamp(%s), %s, %s, %s, %s, %s, 0, "
                    "%s, %s)",
                    leases,
                )
                cursor.executemany(
                    "INSERT INTO lease6_relay_id (relay_id, lease_addr) VALUES (%s, %s)", relays
                )
                cursor.executemany(
                    "INSERT INTO lease6_remote_id (remote_id, lease_addr) VALUES (%s, %s)",
                    remotes,
                )

        def write_postgresql(puts: list[Any], removes: list[Any]) -> Any:
            return deferToThreadPool(reactor, writer_pool, postgresql_batch, puts, removes)

        return postgresql, write_postgresql
    raise SystemExit(f"unknown store {kind!r} (memory, sqlite, postgresql)")


def scenario(args: argparse.Namespace) -> dict[str, Any]:
    """Run the scenario under the global reactor; the report."""
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred, ensureDeferred, gatherResults
    from twisted.internet.task import deferLater

    from bulklq.client import LeaseQuery, Requestor, RequestorOptions
    from bulklq.config import ServerConfig, parse_access_rule
    from bulklq.server import BulkLeasequeryFactory
    from bulklq.wire import Duid
    from tests.test_hardening_consistency import LINK, WriteLog, Writer, state

    base_time = int(time.time())
    initial = [state(n, 0, base_time) for n in range(1, args.bindings + 1)]
    cleanups: list[Any] = []
    setup = time.monotonic()
    store, write_batch = open_store(args.store, initial, reactor, cleanups)
    setup_seconds = time.monotonic() - setup
    log = WriteLog(clock=time.monotonic if args.separate else None)
    log.initial(initial)
    present = dict.fromkeys(range(1, args.bindings + 1), 0)
    writer = Writer(log, present=present, put=None, remove=None, base_time=base_time)
    del initial
    config = ServerConfig(
        Duid.from_text("00:01:00:01:29:b9:4d:80:02:00:00:00:00:01"),
        allow=(parse_access_rule("127.0.0.1/32"),),
        max_connections=args.requestors + 2,
        max_connections_per_requestor=args.requestors + 2,
        store_timeout=120.0,
    )
    factory = BulkLeasequeryFactory(store, config, reactor)  # type: ignore[arg-type]
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
    requestor = Requestor(
        Duid.en(32473, b"torture"),
        reactor,  # type: ignore[arg-type]
        RequestorOptions(retries=0, keep_bindings=False, data_timeout=120),
    )
    report: dict[str, Any] = {"store": args.store, "bindings": args.bindings}
    stop = False
    writer_started = [time.monotonic()]

    async def write_loop() -> None:
        started = writer_started[0] = time.monotonic()
        while not stop:
            owed = int((time.monotonic() - started) * args.rate) - writer.operations
            if owed <= 0:
                await deferLater(reactor, 0.005)  # type: ignore[arg-type]
                continue
            batch: list[tuple[Any, Any]] = []
            keys: set[Any] = set()
            for _ in range(min(owed, 5000)):
                key, binding = writer.choose()
                if key in keys:
                    # Never two writes to one key in a batch (their order would be unknown):
                    # drop this one. The log records only writes made, so it stays true.
                    break
                keys.add(key)
                batch.append((key, binding))
            entries = [log.issue(key, binding) for key, binding in batch]
            result = write_batch(
                [binding for _, binding in batch if binding is not None],
                [key for key, binding in batch if binding is None],
            )
            if isinstance(result, Deferred):
                await result
            for entry in entries:
                log.done(entry)
            writer.operations += len(batch)
            await deferLater(reactor, 0)  # type: ignore[arg-type]

    async def one_query(number: int) -> dict[str, Any]:
        returned: list[Any] = []

        def collect(binding: Any) -> None:
            returned.append(
                (
                    (LINK.link_id, binding.client_id.raw),
                    frozenset(a.address for a in binding.addresses),
                )
            )

        start = log.seq
        began = time.monotonic()
        result = await requestor.query(
            f"127.0.0.1:{port.getHost().port}",
            LeaseQuery.by_link_address(LINK.address + 1),
            collect,
        )
        end = log.seq
        seconds = time.monotonic() - began
        verdict = log.check(start, end, returned)
        verdict.update(
            {
                "status": result.status.value,
                "seconds": round(seconds, 2),
                "writes_during": (end - start) // 2,
            }
        )
        return verdict

    async def separate_queries() -> list[dict[str, Any]]:
        # The requestors in a process of their own: stamps from the shared monotonic clock.
        output = tempfile.mktemp(prefix="bulklq-torture-", suffix=".pickle")
        child = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--requestors-for",
                str(port.getHost().port),
                "--requestors",
                str(args.requestors),
                "--output",
                output,
            ]
        )
        deadline = time.monotonic() + args.max_seconds
        while child.poll() is None and time.monotonic() < deadline:
            await deferLater(reactor, 0.2)  # type: ignore[arg-type]
        if child.poll() is None:
            child.kill()
            child.wait()
            raise RuntimeError(f"the requestors did not finish in {args.max_seconds} s")
        with open(output, "rb") as results:
            answers = pickle.load(results)
        os.remove(output)
        verdicts = []
        for answer in answers:
            returned = [
                ((LINK.link_id, raw), frozenset(IPv6Address(a) for a in addresses))
                for raw, addresses in answer["returned"]
            ]
            verdict = log.check(answer["start"], answer["end"], returned)
            verdict.update(
                {
                    "status": answer["status"],
                    "seconds": round(answer["end"] - answer["start"], 2),
                    "writes_during": sum(
                        1
                        for writes in log.history.values()
                        for w in writes
                        if answer["start"] <= w[0] <= answer["end"]
                    ),
                }
            )
            verdicts.append(verdict)
        return verdicts

    async def main() -> None:
        nonlocal stop
        writing = ensureDeferred(write_loop())
        await deferLater(reactor, 0.5)  # type: ignore[arg-type]
        began = time.monotonic()
        if args.separate:
            verdicts = await separate_queries()
        else:
            queries = [ensureDeferred(one_query(n)) for n in range(args.requestors)]
            timeout = reactor.callLater(  # type: ignore[attr-defined]
                args.max_seconds, lambda: [q.cancel() for q in queries]
            )
            try:
                verdicts = await gatherResults(queries)
            finally:
                if timeout.active():
                    timeout.cancel()
        elapsed = time.monotonic() - began
        stop = True
        await writing
        report.update(
            {
                "setup_seconds": round(setup_seconds, 1),
                "requestors": args.requestors,
                "requestors_run_in": "their own process" if args.separate else "the server's",
                "write_rate_asked": args.rate,
                "writes": writer.operations,
                "write_rate_achieved": round(
                    writer.operations / (time.monotonic() - writer_started[0])
                ),
                "write_rate_during_queries": round(
                    sum(v["writes_during"] for v in verdicts)
                    / max(sum(v["seconds"] for v in verdicts), 0.001)
                ),
                "query_seconds": round(elapsed, 1),
                "queries": verdicts,
                "returned_total": sum(v["returned"] for v in verdicts),
                "unchanged_total": sum(v["unchanged"] for v in verdicts),
                "twice_total": sum(v["twice"] for v in verdicts),
                "missing_total": sum(v["missing"] for v in verdicts),
                "wrong_state_total": sum(v["wrong_state"] for v in verdicts),
                "ok": all(
                    v["status"] == "success" and not v["problems"] and v["unchanged"] > 0
                    for v in verdicts
                ),
            }
        )

    def run() -> None:
        done = ensureDeferred(main())

        def finish(result: object) -> None:
            if not isinstance(result, type(None)):
                report["error"] = str(result)
                report["ok"] = False
            port.stopListening()
            store.close()
            reactor.callLater(0.2, reactor.stop)  # type: ignore[attr-defined]

        done.addBoth(finish)

    reactor.callWhenRunning(run)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    for cleanup in cleanups:
        try:
            cleanup()
        except Exception as error:
            report.setdefault("cleanup_errors", []).append(str(error))
    return report


def requestors_for(port: int, requestors: int, output: str) -> None:
    """
    The requestor process: C{requestors} link queries at once against 127.0.0.1:C{port},
    each answer (monotonic start and end, status, (DUID, packed addresses) per binding)
    pickled to C{output}.
    """
    from twisted.internet import reactor
    from twisted.internet.defer import ensureDeferred, gatherResults

    from bulklq.client import LeaseQuery, Requestor, RequestorOptions
    from bulklq.wire import Duid
    from tests.test_hardening_consistency import LINK

    requestor = Requestor(
        Duid.en(32473, b"torture"),
        reactor,  # type: ignore[arg-type]
        RequestorOptions(retries=0, keep_bindings=False, data_timeout=120),
    )

    async def one() -> dict[str, Any]:
        returned: list[tuple[bytes, tuple[bytes, ...]]] = []

        def collect(binding: Any) -> None:
            returned.append(
                (binding.client_id.raw, tuple(a.address.packed for a in binding.addresses))
            )

        start = time.monotonic()
        result = await requestor.query(
            f"127.0.0.1:{port}", LeaseQuery.by_link_address(LINK.address + 1), collect
        )
        return {
            "start": start,
            "end": time.monotonic(),
            "status": result.status.value,
            "returned": returned,
        }

    async def run() -> None:
        answers = await gatherResults([ensureDeferred(one()) for _ in range(requestors)])
        with open(output, "wb") as results:
            pickle.dump(answers, results)

    def go() -> None:
        ensureDeferred(run()).addBoth(lambda _: reactor.stop())  # type: ignore[attr-defined]

    reactor.callWhenRunning(go)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


def main() -> None:
    """Run one store's scenario; print its JSON report."""
    parser = argparse.ArgumentParser(description="consistency under writes (one store)")
    parser.add_argument("--store", default="memory")
    parser.add_argument("--bindings", type=int, default=100_000)
    parser.add_argument("--rate", type=int, default=5000)
    parser.add_argument("--requestors", type=int, default=10)
    parser.add_argument("--max-seconds", type=float, default=240.0)
    parser.add_argument(
        "--same-process",
        dest="separate",
        action="store_false",
        help="run the requestors in the server's reactor (one sequence counter)",
    )
    parser.add_argument("--requestors-for", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.requestors_for:
        requestors_for(args.requestors_for, args.requestors, args.output)
        return
    print(json.dumps(scenario(args), indent=2))


if __name__ == "__main__":
    main()
