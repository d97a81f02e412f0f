"""
Consistency under writes at full size, for C{bench/torture.py consistency}.

Three parties, as in a deployment:

  - the server (this process): the store and L{BulkLeasequeryFactory} on 127.0.0.1;
  - the writer (Kea's part): for SQLite and PostgreSQL a process of its own writing the
    database on a connection of its own (SQLite's WAL lets it write the file the server
    reads; for PostgreSQL it is one more client, writing Kea's C{lease6} with SQL); for the
    memory store, which lives in the server, a loop in the server's reactor;
  - the requestors (L{bulklq.client.Requestor}): a process of their own, streaming the
    whole link at once over TCP.

The writer adds, updates and removes bindings at a steady rate, one transaction per tick
(at least 10 ms and at most 50 ms of writes: L{WriteLoop}), and logs each batch with the
clock read just before its transaction began and just after it committed. The requestors
read the same clock (C{time.time()}: one wall clock for every process on the host) before
sending a query and after its DONE. L{WriteLog} (tests/test_hardening_consistency.py) then
judges each query against those intervals: every binding present and unchanged for the
whole query returned exactly once, none twice, every returned state one the key had at
some moment of the query. A step of the wall clock during the run (the parent compares it
with the monotonic clock) voids the verdict.

The write rate reported is the rate achieved: writes committed per second, over the
writer's whole run and over the queries' span.

C{run_consistency} runs one store's scenario in a subprocess (a reactor runs once per
process) and returns the JSON it prints.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from ipaddress import IPv6Address
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

#: The clock every process stamps writes and queries with.
clock = time.time


def run_consistency(
    store: str,
    *,
    bindings: int,
    rate: int,
    requestors: int,
    seconds_limit: float,
    writer_nice: int = 0,
    database_nice: int | None = None,
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
        "--writer-nice",
        str(writer_nice),
    ]
    if database_nice is not None:
        command += ["--database-nice", str(database_nice)]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds_limit + 600, check=False
    )
    try:
        result: dict[str, Any] = json.loads(done.stdout)
    except ValueError:
        return {"ok": False, "error": done.stderr.strip().splitlines()[-5:]}
    return result


class WriteLoop:
    """
    Paces a L{Writer<tests.test_hardening_consistency.Writer>} at C{rate} writes per second
    from L{start}: each L{step} applies one batch in one call of C{apply(puts, removes)}
    (one transaction) once at least C{min_seconds} of writes are owed, at most
    C{max_seconds} of them, and logs it as (clock before, clock after, writes).
    """

    def __init__(
        self,
        writer: Any,
        apply: Callable[[list[Any], list[Any]], None],
        rate: int,
        *,
        min_seconds: float = 0.01,
        max_seconds: float = 0.05,
    ) -> None:
        self.writer = writer
        self.apply = apply
        self.rate = rate
        self.smallest = max(1, round(rate * min_seconds))
        self.largest = max(1, round(rate * max_seconds))
        self.batches: list[tuple[float, float, list[tuple[int, int]]]] = []
        self.started = 0.0
        self.stopped = 0.0

    def start(self) -> None:
        """Writes are owed from now."""
        self.started = clock()

    def step(self) -> float:
        """Apply one batch if one is due; the seconds until the next is due (0: behind)."""
        owed = int((clock() - self.started) * self.rate) - self.writer.operations
        if owed < self.smallest:
            return (self.smallest - owed) / self.rate
        writes = self.writer.batch(min(owed, self.largest))
        puts, removes = batch_changes(writes, self.writer.base_time)
        began = clock()
        self.apply(puts, removes)
        committed = clock()
        self.batches.append((began, committed, writes))
        self.writer.operations += len(writes)
        return 0.0

    def stop(self) -> None:
        """Writes are no longer owed."""
        self.stopped = clock()

    def summary(self) -> dict[str, Any]:
        """What the loop achieved: writes committed, their rate, transactions."""
        writes = sum(len(batch[2]) for batch in self.batches)
        seconds = max(self.stopped - self.started, 1e-9)
        busy = [batch[1] - batch[0] for batch in self.batches]
        return {
            "writes": writes,
            "write_seconds": round(seconds, 2),
            "write_rate_achieved": round(writes / seconds),
            "transactions": len(self.batches),
            "writes_per_transaction_mean": round(writes / max(len(self.batches), 1), 1),
            "transaction_ms_mean": round(1000 * sum(busy) / max(len(busy), 1), 2),
            "transaction_ms_max": round(1000 * max(busy, default=0.0), 2),
            "writer_busy_fraction": round(sum(busy) / seconds, 3),
        }


def batch_changes(writes: list[tuple[int, int]], base_time: int) -> tuple[list[Any], list[Any]]:
    """The bindings to put and the keys to remove for a batch of (client, version) writes."""
    from tests.test_hardening_consistency import write_of

    puts: list[Any] = []
    removes: list[Any] = []
    for client, version in writes:
        key, binding = write_of(client, version, base_time)
        if binding is None:
            removes.append(key)
        else:
            puts.append(binding)
    return puts, removes


def new_writer(bindings: int, base_time: int, seed: int = 1) -> Any:
    """The random writer over clients 1..C{bindings}, all present at version 0."""
    from tests.test_hardening_consistency import WriteLog, Writer

    return Writer(
        WriteLog(),
        present=dict.fromkeys(range(1, bindings + 1), 0),
        put=None,
        remove=None,
        base_time=base_time,
        seed=seed,
    )


def writer_process(args: argparse.Namespace) -> None:
    """
    The writer's process: writes C{args.target} (an SQLite path or a PostgreSQL DSN) at
    C{args.rate} until its stdin ends (or says anything), then pickles its batches and
    summary to C{args.output}. Prints one JSON line when it starts writing.
    """
    from tests.test_hardening_consistency import KeaBatchWriter, SQLiteBatchWriter

    sink: Any = (
        SQLiteBatchWriter(args.target) if args.writer == "sqlite" else KeaBatchWriter(args.target)
    )
    loop = WriteLoop(new_writer(args.bindings, args.base_time), sink.apply, args.rate)
    watch = selectors.DefaultSelector()
    watch.register(sys.stdin, selectors.EVENT_READ)
    # The CPU the writes cost: this process's, and its PostgreSQL backend's (same host).
    backend = None
    if args.writer == "postgresql":
        backend = sink.connection.execute("SELECT pg_backend_pid()").fetchone()[0]
    cpu = [process_cpu_seconds(None), process_cpu_seconds(backend)]
    niceness: dict[str, int | None] = {"writer": renice(None, args.writer_nice)}
    database_was: int | None = None
    if backend is not None:
        niceness["writer_backend"] = renice(backend, args.writer_nice)
        if args.database_nice is not None:
            database_was = autogroup_nice(backend, args.database_nice)
        niceness["database_autogroup"] = autogroup_nice(backend, None)
    try:
        loop.start()
        print(json.dumps({"started": loop.started, "pid": os.getpid()}), flush=True)
        while not watch.select(loop.step()):
            pass
        loop.stop()
    finally:
        if backend is not None and database_was is not None:
            autogroup_nice(backend, database_was)
    summary = loop.summary()
    summary["writer_nice"] = niceness
    summary["writer_cpu_seconds"] = round(process_cpu_seconds(None) - cpu[0], 1)
    if backend is not None:
        summary["writer_backend_cpu_seconds"] = round(process_cpu_seconds(backend) - cpu[1], 1)
    sink.close()
    with open(args.output, "wb") as output:
        pickle.dump({"batches": loop.batches, "summary": summary}, output)


def renice(pid: int | None, niceness: int) -> int:
    """
    Set process C{pid}'s (C{None}: this one's) niceness to C{niceness} if allowed; the
    niceness it has.
    """
    target = 0 if pid is None else pid
    with contextlib.suppress(OSError):  # not allowed: it keeps the niceness it has
        os.setpriority(os.PRIO_PROCESS, target, niceness)
    return os.getpriority(os.PRIO_PROCESS, target)


def autogroup_nice(pid: int, niceness: int | None) -> int | None:
    """
    Set the niceness of process C{pid}'s scheduling autogroup (Linux: every process of its
    session, so for a PostgreSQL backend the whole cluster) to C{niceness} if it is not
    C{None} and allowed; the niceness the group had before (C{None}: no autogroups here).
    """
    path = f"/proc/{pid}/autogroup"
    try:
        with open(path) as group:
            was = int(group.read().split()[-1])  # "/autogroup-123 nice 0"
        if niceness is not None:
            with open(path, "w") as group:
                group.write(str(niceness))
    except (OSError, ValueError, IndexError):
        return None
    return was


def backends_cpu_seconds(dsn: str) -> float:
    """
    CPU seconds used so far by the other PostgreSQL backends connected to C{dsn}'s
    database (once the writer has gone: the store's pool, which serves the queries).
    """
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as connection:
        pids = connection.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        ).fetchall()
    return round(sum(process_cpu_seconds(pid) for (pid,) in pids), 1)


def process_cpu_seconds(pid: int | None) -> float:
    """CPU seconds (user and system) used so far by process C{pid} (C{None}: this one)."""
    if pid is None:
        return time.process_time()
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def prepare_store(kind: str, initial: list[Any], reactor: Any, cleanups: list[Any]) -> Any:
    """
    The store holding C{initial}, and what the writer writes: C{None} for the memory store
    (the writer runs in this reactor), else the SQLite path or PostgreSQL DSN.
    """
    from tests.test_hardening_consistency import LINK, KeaBatchWriter

    if kind == "memory":
        from bulklq.stores.memory import MemoryBindingStore

        memory = MemoryBindingStore([LINK], clock=reactor)
        memory.put_many(initial)
        return memory, None
    if kind == "sqlite":
        from bulklq.stores.sqlite import SQLiteBindingStore, SQLiteDatabase

        directory = tempfile.mkdtemp(prefix="bulklq-torture-")
        cleanups.append(lambda: shutil.rmtree(directory, ignore_errors=True))
        path = os.path.join(directory, "bindings.db")
        database = SQLiteDatabase(path)
        database.add_links([LINK])
        database.put_many(initial)
        database.close()
        return SQLiteBindingStore(path, reactor, threads=4), path
    if kind == "postgresql":
        from bulklq.stores.postgresql import PostgreSQLBindingStore, PostgreSQLSettings
        from tests.test_store_postgresql import V17, ScratchDatabase

        scratch = ScratchDatabase(V17)
        cleanups.append(scratch.drop)
        loader = KeaBatchWriter(scratch.dsn)
        for at in range(0, len(initial), 10_000):
            loader.apply(initial[at : at + 10_000], [])
        loader.connection.execute("ANALYZE")  # as autovacuum would have, in a deployment
        loader.close()
        store = PostgreSQLBindingStore(
            PostgreSQLSettings(scratch.dsn, pool_size=4), reactor, [LINK]
        )
        return store, scratch.dsn
    raise SystemExit(f"unknown store {kind!r} (memory, sqlite, postgresql)")


def memory_writes(memory: Any) -> Callable[[list[Any], list[Any]], None]:
    """Applies a batch to the memory store, synchronously (in the server's reactor)."""

    def apply(puts: list[Any], removes: list[Any]) -> None:
        for binding in puts:
            memory.put(binding)
        for key in removes:
            memory.remove(key)

    return apply


def _child_protocol() -> Any:
    """
    A process protocol collecting a child's output, with Deferreds for its first line of
    stdout (empty if it ended without one) and its end (the exit code).
    """
    from twisted.internet.defer import Deferred
    from twisted.internet.protocol import ProcessProtocol

    class Child(ProcessProtocol):
        def __init__(self) -> None:
            self.first_line: Deferred[bytes] = Deferred()
            self.ended: Deferred[int | None] = Deferred()
            self.out = b""
            self.err = b""

        def outReceived(self, data: bytes) -> None:
            self.out += data
            if b"\n" in self.out and not self.first_line.called:
                self.first_line.callback(self.out.split(b"\n", 1)[0])

        def errReceived(self, data: bytes) -> None:
            self.err = (self.err + data)[-4000:]

        def processEnded(self, reason: Any) -> None:
            if not self.first_line.called:
                self.first_line.callback(b"")  # ended without a line
            self.ended.callback(reason.value.exitCode)

    return Child()


def scenario(args: argparse.Namespace) -> dict[str, Any]:
    """Run the scenario under the global reactor; the report."""
    from twisted.internet import reactor
    from twisted.internet.defer import ensureDeferred
    from twisted.internet.task import deferLater

    from bulklq.config import ServerConfig, parse_access_rule
    from bulklq.server import BulkLeasequeryFactory
    from bulklq.wire import Duid
    from tests.test_hardening_consistency import state

    offset_before = time.time() - time.monotonic()
    load_before = os.getloadavg()[0]
    base_time = int(clock())
    initial = [state(n, 0, base_time) for n in range(1, args.bindings + 1)]
    cleanups: list[Any] = []
    setup = time.monotonic()
    store, target = prepare_store(args.store, initial, reactor, cleanups)
    setup_seconds = time.monotonic() - setup
    config = ServerConfig(
        Duid.from_text("00:01:00:01:29:b9:4d:80:02:00:00:00:00:01"),
        allow=(parse_access_rule("127.0.0.1/32"),),
        max_connections=args.requestors + 2,
        max_connections_per_requestor=args.requestors + 2,
        store_timeout=120.0,
    )
    factory = BulkLeasequeryFactory(store, config, reactor)  # type: ignore[arg-type]
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
    report: dict[str, Any] = {
        "store": args.store,
        "bindings": args.bindings,
        "requestors": args.requestors,
        "writer_runs_in": "the server's reactor" if target is None else "a process of its own",
        "requestors_run_in": "a process of their own",
        "write_rate_asked": args.rate,
    }
    scratch = tempfile.mkdtemp(prefix="bulklq-torture-")
    cleanups.append(lambda: shutil.rmtree(scratch, ignore_errors=True))

    def spawn(arguments: list[str]) -> Any:
        child = _child_protocol()
        command = [sys.executable, __file__, *arguments]
        reactor.spawnProcess(  # type: ignore[attr-defined]
            child, sys.executable, command, env=os.environ.copy()
        )
        return child

    async def in_reactor_writer(loop: WriteLoop, stopping: list[bool]) -> None:
        loop.start()
        while not stopping:
            await deferLater(reactor, loop.step())  # type: ignore[arg-type]
        loop.stop()

    async def main() -> None:
        stopping: list[bool] = []
        if target is None:
            # No transactions here: a batch is writes made in one turn of the reactor, and
            # a turn may take longer than 50 ms while it serves the streams, so a writer
            # behind catches up with up to 250 ms of writes a turn.
            loop = WriteLoop(
                new_writer(args.bindings, base_time),
                memory_writes(store),
                args.rate,
                max_seconds=0.25,
            )
            writing = ensureDeferred(in_reactor_writer(loop, stopping))
        else:
            writer_output = os.path.join(scratch, "writes.pickle")
            writer = spawn(
                [
                    "--writer",
                    args.store,
                    "--target",
                    target,
                    "--bindings",
                    str(args.bindings),
                    "--base-time",
                    str(base_time),
                    "--rate",
                    str(args.rate),
                    "--output",
                    writer_output,
                    "--writer-nice",
                    str(args.writer_nice),
                    *(
                        []
                        if args.database_nice is None
                        else ["--database-nice", str(args.database_nice)]
                    ),
                ]
            )
            if not await writer.first_line:
                raise RuntimeError(
                    "the writer failed: " + writer.err.decode(errors="replace")[-1000:]
                )
        await deferLater(reactor, 0.5)  # type: ignore[arg-type]
        cpu_before = process_cpu_seconds(None)
        answers_output = os.path.join(scratch, "answers.pickle")
        requestors = spawn(
            [
                "--requestors-for",
                str(port.getHost().port),
                "--requestors",
                str(args.requestors),
                "--output",
                answers_output,
            ]
        )
        timeout = reactor.callLater(  # type: ignore[attr-defined]
            args.max_seconds, requestors.transport.signalProcess, "KILL"
        )
        try:
            await requestors.ended
        finally:
            if timeout.active():
                timeout.cancel()
        report["server_cpu_seconds_during_queries"] = round(
            process_cpu_seconds(None) - cpu_before, 1
        )
        if target is None:
            stopping.append(True)
            await writing
            batches, summary = loop.batches, loop.summary()
        else:
            writer.transport.closeStdin()
            if await writer.ended != 0 or not os.path.exists(writer_output):
                raise RuntimeError(
                    "the writer failed: " + writer.err.decode(errors="replace")[-1000:]
                )
            with open(writer_output, "rb") as written:
                result = pickle.load(written)
            batches, summary = result["batches"], result["summary"]
            if args.store == "postgresql":
                summary["store_backends_cpu_seconds"] = backends_cpu_seconds(target)
        if not os.path.exists(answers_output):
            raise RuntimeError(
                f"the requestors did not finish in {args.max_seconds} s: "
                + requestors.err.decode(errors="replace")[-500:]
            )
        with open(answers_output, "rb") as answered:
            answers, report["requestors_cpu_seconds"] = pickle.load(answered)
        report.update(summary)
        judging = time.monotonic()
        report.update(judge(initial, batches, base_time, answers, args.rate))
        report["judge_seconds"] = round(time.monotonic() - judging, 1)

    def run() -> None:
        done = ensureDeferred(main())

        def finish(result: object) -> None:
            if result is not None:
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
    report["setup_seconds"] = round(setup_seconds, 1)
    report["load_average_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    with contextlib.suppress(OSError, ValueError, IndexError):
        # The share of the last minute some runnable task waited for a CPU (Linux PSI).
        with open("/proc/pressure/cpu") as pressure:
            some = pressure.readline().split()
        report["cpu_pressure_avg60_percent"] = float(some[2].split("=")[1])
    stepped = abs((time.time() - time.monotonic()) - offset_before)
    if stepped > 0.05:
        report["clock_stepped_seconds"] = round(stepped, 3)
        report["ok"] = False
    return report


def judge(
    initial: list[Any],
    batches: list[tuple[float, float, list[tuple[int, int]]]],
    base_time: int,
    answers: list[dict[str, Any]],
    rate: int,
) -> dict[str, Any]:
    """The verdict on every query, against the log of C{batches}; totals and rates."""
    from tests.test_hardening_consistency import LINK, WriteLog

    log = WriteLog()
    log.initial(initial)
    log.record_batches(batches, base_time)
    verdicts = []
    for answer in answers:
        returned = [
            ((LINK.link_id, raw), frozenset(IPv6Address(a) for a in addresses))
            for raw, addresses in answer["returned"]
        ]
        start, end = answer["start"], answer["end"]
        verdict = log.check(start, end, returned)
        during = sum(len(b[2]) for b in batches if not (b[1] < start or b[0] > end))
        seconds = end - start
        verdict.update(
            {
                "status": answer["status"],
                "seconds": round(seconds, 2),
                "writes_during": during,
                "write_rate_during": round(during / max(seconds, 1e-9)),
            }
        )
        verdicts.append(verdict)
    first = min((a["start"] for a in answers), default=0.0)
    last = max((a["end"] for a in answers), default=0.0)
    committed = sum(len(b[2]) for b in batches if first <= b[1] <= last)
    during_queries = round(committed / max(last - first, 1e-9))
    consistent = bool(verdicts) and all(
        v["status"] == "success" and not v["problems"] and v["unchanged"] > 0 for v in verdicts
    )
    rate_met = during_queries >= 0.95 * rate
    return {
        "write_rate_during_queries": during_queries,
        "queries_seconds": round(last - first, 1),
        "queries_completed": sum(v["status"] == "success" for v in verdicts),
        "queries": verdicts,
        "bindings_checked_total": sum(v["returned"] for v in verdicts),
        "unchanged_total": sum(v["unchanged"] for v in verdicts),
        "twice_total": sum(v["twice"] for v in verdicts),
        "missing_total": sum(v["missing"] for v in verdicts),
        "wrong_state_total": sum(v["wrong_state"] for v in verdicts),
        "consistent": consistent,
        "rate_met": rate_met,
        "ok": consistent and rate_met,
    }


def requestors_for(port: int, requestors: int, output: str) -> None:
    """
    The requestor process: C{requestors} link queries at once against 127.0.0.1:C{port},
    each answer (start and end on L{clock}, status, (DUID, packed addresses) per binding)
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

        start = clock()
        result = await requestor.query(
            f"127.0.0.1:{port}", LeaseQuery.by_link_address(LINK.address + 1), collect
        )
        return {"start": start, "end": clock(), "status": result.status.value, "returned": returned}

    async def run() -> None:
        answers = await gatherResults([ensureDeferred(one()) for _ in range(requestors)])
        with open(output, "wb") as results:
            pickle.dump((answers, round(time.process_time(), 1)), results)

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
    parser.add_argument("--requestors-for", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--writer", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--base-time", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    parser.add_argument(
        "--writer-nice",
        type=int,
        default=0,
        help="niceness of the writer process and its PostgreSQL backend (below 0 needs root)",
    )
    parser.add_argument(
        "--database-nice",
        type=int,
        default=None,
        help="PostgreSQL: the database cluster's autogroup niceness during the writes "
        "(restored after; below 0 needs root)",
    )
    args = parser.parse_args()
    if args.requestors_for:
        requestors_for(args.requestors_for, args.requestors, args.output)
        return
    if args.writer:
        writer_process(args)
        return
    print(json.dumps(scenario(args), indent=2))


if __name__ == "__main__":
    main()
