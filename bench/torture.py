"""
The long half of bulklq's adversarial suite (issue 7), printing one JSON report.

Every scenario runs against loopback only (127.0.0.1 and ::1), bounded in count and time;
the server runs in its own process (bench/torture_server.py) so its descriptors and memory
can be counted from outside, except C{junk} (in memory) and C{consistency}
(bench/torture_consistency.py: the server, a writer process and a requestor process).

Scenarios (run one, several, or C{all}):

  junk            1,000,000 random and mutated frames through the protocol in memory, each
                  judged against the RFC (tests/test_hardening_harness.py)
  tcp-junk        50 connections of 5,000 random octets, then legitimate requestors
  slowloris       500 connections sending half a frame, a requestor served during the
                  attack, every attacker closed at once or at the data timeout
  flood           connections over the limit closed at once; 10,000 connect/close cycles;
                  server descriptors before and after
  slow-reader     a requestor reading 1 KiB/s, then the rest, of 1,000,000 bindings; server
                  RSS sampled throughout
  stalled-reader  a requestor that stops reading: time until the server aborts it
  no-read-flood   a requestor sends queries answered at once (STARTTLS, unknown query
                  type) as fast as it can and never reads: server RSS, and whether the
                  server stops reading (the sender blocks) instead of buffering replies
  consistency     100,000 bindings, writes at 5,000/s (achieved rate reported), 10
                  requestors streaming; every query checked against the log of writes
                  and their transactions' intervals (memory, sqlite, postgresql with
                  BULKLQ_TEST_POSTGRES_DSN)

Usage:
  python bench/torture.py all
  python bench/torture.py junk --count 100000
  python bench/torture.py slowloris --connections 500 --data-timeout 10
  python bench/torture.py consistency --store sqlite --bindings 20000
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import selectors
import socket
import sys
import threading
import time
from ipaddress import IPv6Address
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from torture_server import (  # noqa: E402
    LOOPBACK,
    ServerProcess,
    legit_query,
    peak_rss_kib,
    relay_id_query,
    rss_kib,
)

SCENARIOS = (
    "junk",
    "tcp-junk",
    "slowloris",
    "flood",
    "slow-reader",
    "stalled-reader",
    "no-read-flood",
    "consistency",
)


def own_fds() -> int:
    """Descriptors open in this (the attacking) process."""
    return len(os.listdir("/proc/self/fd"))


# -- junk -----------------------------------------------------------------------------------


def junk(args: argparse.Namespace) -> dict[str, Any]:
    """Random and mutated frames in memory, judged one by one."""
    from tests.test_hardening_harness import run_junk

    problems: dict[str, int] = {}

    def problem(text: str) -> None:
        problems[text] = problems.get(text, 0) + 1

    started = time.monotonic()
    counts = run_junk(args.count, seed=args.seed, on_problem=problem)
    elapsed = time.monotonic() - started
    return {
        "seed": args.seed,
        **counts,
        "problem_kinds": problems,
        "seconds": round(elapsed, 1),
        "messages_per_second": round(counts["messages"] / elapsed),
        "ok": counts["problems"] == 0 and counts["failures_logged"] == 0,
    }


# -- helpers for socket attackers -----------------------------------------------------------


def wait_closed(
    sockets: list[socket.socket], opened: list[float], deadline: float
) -> list[float | None]:
    """
    Wait until the server closes each socket (EOF or reset) or C{deadline}; the seconds
    from each socket's C{opened} time to its close, C{None} if still open. Any octets the
    server sends are read and dropped.
    """
    closed: list[float | None] = [None] * len(sockets)
    selector = selectors.DefaultSelector()
    for index, sock in enumerate(sockets):
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, index)
    remaining = len(sockets)
    while remaining and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=0.2):
            index = key.data
            sock = sockets[index]
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                closed[index] = time.monotonic() - opened[index]
                selector.unregister(sock)
                remaining -= 1
    selector.close()
    return closed


def summarise(closed: list[float | None], data_timeout: float) -> dict[str, Any]:
    """How many closed at once (< 1 s), around the data timeout, later, or never."""
    at_once = sum(1 for c in closed if c is not None and c < 1.0)
    at_timeout = sum(
        1 for c in closed if c is not None and data_timeout - 1 <= c <= data_timeout + 5
    )
    done = [c for c in closed if c is not None]
    return {
        "closed_at_once": at_once,
        "closed_at_data_timeout": at_timeout,
        "closed_other": len(done) - at_once - at_timeout,
        "still_open": len(closed) - len(done),
        "slowest_close_seconds": round(max(done), 2) if done else None,
    }


def connect(host: str, port: int) -> socket.socket:
    """A blocking TCP connection to a loopback server."""
    assert host in LOOPBACK
    return socket.create_connection((host, port), timeout=10)


# -- tcp-junk -------------------------------------------------------------------------------


def tcp_junk(args: argparse.Namespace) -> dict[str, Any]:
    """Random octets on many connections at once, then legitimate requestors."""
    server = ServerProcess(
        bindings=1000,
        max_connections=args.connections + 10,
        per_requestor=args.connections + 10,
        data_timeout=args.data_timeout,
    )
    try:
        port = server.ports["127.0.0.1"]
        before = server.stats()
        rng = random.Random(args.seed)
        sockets, opened = [], []
        started = time.monotonic()
        for _ in range(args.connections):
            sock = connect("127.0.0.1", port)
            opened.append(time.monotonic())
            with contextlib.suppress(OSError):  # the server may have closed it already
                sock.sendall(rng.randbytes(args.bytes))
            sockets.append(sock)
        closed = wait_closed(sockets, opened, time.monotonic() + args.data_timeout + 15)
        for sock in sockets:
            sock.close()
        legit = [legit_query(host, server.ports[host]) for host in LOOPBACK]
        time.sleep(0.5)
        after = server.stats()
        return {
            "connections": args.connections,
            "octets_each": args.bytes,
            "data_timeout": args.data_timeout,
            **summarise(closed, args.data_timeout),
            "attack_seconds": round(time.monotonic() - started, 2),
            "legitimate": legit,
            "server_before": before,
            "server_after": after,
            "ok": all(r["end"] == "done" and r["bindings"] == 1000 for r in legit)
            and all(c is not None for c in closed),
        }
    finally:
        server.stop()


# -- slowloris ------------------------------------------------------------------------------


def slowloris(args: argparse.Namespace) -> dict[str, Any]:
    """Half a frame on many connections from 127.0.0.1; requestors during the attack."""
    server = ServerProcess(bindings=1000, data_timeout=args.data_timeout)
    try:
        port = server.ports["127.0.0.1"]
        half = relay_id_query(1)[:9]
        before = server.stats()
        sockets, opened = [], []
        started = time.monotonic()
        for _ in range(args.connections):
            sock = connect("127.0.0.1", port)
            opened.append(time.monotonic())
            with contextlib.suppress(OSError):
                sock.sendall(half)
            sockets.append(sock)
        during = server.stats()
        legit_other = legit_query("::1", server.ports["::1"], timeout=30)
        legit_same = legit_query("127.0.0.1", port, timeout=5)
        closed = wait_closed(sockets, opened, time.monotonic() + args.data_timeout + 20)
        for sock in sockets:
            sock.close()
        time.sleep(0.5)
        after = server.stats()
        summary = summarise(closed, args.data_timeout)
        return {
            "connections": args.connections,
            "data_timeout": args.data_timeout,
            "limits": {"max_connections": 10, "per_requestor": 4},
            **summary,
            "attack_seconds": round(time.monotonic() - started, 2),
            "requestor_from_other_address_during_attack": legit_other,
            "requestor_from_attacker_address_during_attack": legit_same,
            "server_before": before,
            "server_during": during,
            "server_after": after,
            "ok": legit_other["end"] == "done"
            and summary["still_open"] == 0
            and summary["closed_other"] == 0,
        }
    finally:
        server.stop()


# -- flood ----------------------------------------------------------------------------------


def flood(args: argparse.Namespace) -> dict[str, Any]:
    """Over-limit connections, then many connect/close cycles; descriptors counted."""
    server = ServerProcess(bindings=100, per_requestor=10)
    try:
        port = server.ports["127.0.0.1"]
        legit_query("127.0.0.1", port)  # warm up
        time.sleep(0.3)
        before = server.stats()
        own_before = own_fds()
        held = [connect("127.0.0.1", port) for _ in range(10)]
        time.sleep(0.3)
        over, opened = [], []
        for _ in range(args.over):
            over.append(connect("127.0.0.1", port))
            opened.append(time.monotonic())
        closed = wait_closed(over, opened, time.monotonic() + 10)
        over_stats = server.stats()
        for sock in over + held:
            sock.close()
        over_summary = summarise(closed, 300)
        deadline = time.monotonic() + 10
        while server.stats()["connections_open"] and time.monotonic() < deadline:
            time.sleep(0.1)
        started = time.monotonic()
        failures = 0
        lock = threading.Lock()

        def cycles(count: int) -> None:
            nonlocal failures
            for _ in range(count):
                try:
                    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                    sock.close()
                except OSError:
                    with lock:
                        failures += 1

        threads = [
            threading.Thread(target=cycles, args=(args.cycles // args.threads,))
            for _ in range(args.threads)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        cycle_seconds = time.monotonic() - started
        deadline = time.monotonic() + 30
        after = server.stats()
        while (after["connections_open"] or after["fds"] > before["fds"]) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.2)
            after = server.stats()
        legit = legit_query("127.0.0.1", port)
        return {
            "held_connections": 10,
            "over_limit_connections": args.over,
            "over_limit_closed_at_once": over_summary["closed_at_once"],
            "over_limit_slowest_close_seconds": over_summary["slowest_close_seconds"],
            "cycles": args.threads * (args.cycles // args.threads),
            "cycle_threads": args.threads,
            "cycle_connect_failures": failures,
            "cycle_seconds": round(cycle_seconds, 2),
            "server_fds_before": before["fds"],
            "server_fds_after": after["fds"],
            "bench_fds_before": own_before,
            "bench_fds_after": own_fds(),
            "server_before": before,
            "server_after_over_limit": over_stats,
            "server_after": after,
            "requestor_after": legit,
            "ok": after["fds"] <= before["fds"]
            and over_summary["closed_at_once"] == args.over
            and legit["end"] == "done",
        }
    finally:
        server.stop()


# -- slow and stalled readers ---------------------------------------------------------------


def slow_reader(args: argparse.Namespace) -> dict[str, Any]:
    """Read slowly for a while, then fast to the end; the server's RSS all along."""
    from torture_server import DATA, DONE, REPLY, frames_in, has_client_data

    setup = time.monotonic()
    server = ServerProcess(bindings=args.bindings)
    try:
        setup_seconds = time.monotonic() - setup
        time.sleep(1)
        before = rss_kib(server.pid)
        sock = connect("127.0.0.1", server.ports["127.0.0.1"])
        sock.sendall(relay_id_query(7))
        samples: list[int] = []
        buffer = b""
        bindings = 0
        finished = False
        started = time.monotonic()
        slow_until = started + args.slow_seconds
        next_sample = started
        slow_octets = 0
        while not finished:
            now = time.monotonic()
            slow = now < slow_until
            if now >= next_sample:
                samples.append(rss_kib(server.pid))
                next_sample = now + 0.5
            if slow:
                chunk = sock.recv(args.rate // 4)
                slow_octets += len(chunk)
                time.sleep(0.25)
            else:
                chunk = sock.recv(1 << 20)
            if not chunk:
                break
            frames, buffer = frames_in(buffer + chunk)
            for kind, message in frames:
                if kind == DATA or (kind == REPLY and has_client_data(message)):
                    bindings += 1
                elif kind == DONE:
                    finished = True
        samples.append(rss_kib(server.pid))
        sock.close()
        slow_samples = samples[: max(1, int(args.slow_seconds * 2))]
        return {
            "bindings": args.bindings,
            "server_setup_seconds": round(setup_seconds, 1),
            "slow_seconds": args.slow_seconds,
            "slow_rate_octets_per_second": args.rate,
            "slow_octets_read": slow_octets,
            "bindings_received": bindings,
            "completed": finished,
            "total_seconds": round(time.monotonic() - started, 1),
            "server_rss_before_mib": round(before / 1024, 1),
            "server_rss_peak_while_slow_mib": round(max(slow_samples) / 1024, 1),
            "server_rss_peak_mib": round(max(samples) / 1024, 1),
            "server_rss_growth_mib": round((max(samples) - before) / 1024, 1),
            "server_vmhwm_mib": round(peak_rss_kib(server.pid) / 1024, 1),
            "ok": finished and bindings == args.bindings,
        }
    finally:
        server.stop()


def stalled_reader(args: argparse.Namespace) -> dict[str, Any]:
    """Ask for every binding, never read: the server must abort within the data timeout."""
    server = ServerProcess(bindings=args.bindings, data_timeout=args.data_timeout)
    try:
        sock = connect("127.0.0.1", server.ports["127.0.0.1"])
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        started = time.monotonic()
        sock.sendall(relay_id_query(9))
        closed_after = None
        note = None
        while time.monotonic() < started + args.data_timeout + 60:
            time.sleep(0.1)
            try:
                sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                continue
            except OSError:
                closed_after = time.monotonic() - started
                break
            # Data waiting is normal (we do not read it); only a reset ends the wait,
            # unless the whole answer fit in the socket buffers (too few bindings).
            stats = server.stats()
            if stats["connections_open"] == 0:
                closed_after = time.monotonic() - started
                break
            if any(key.endswith("/Success") for key in stats["queries"]):
                note = "the whole answer fit in the socket buffers: use more --bindings"
                break
        sock.close()
        stats = server.stats()
        return {
            "bindings": args.bindings,
            "data_timeout": args.data_timeout,
            "closed_after_seconds": None if closed_after is None else round(closed_after, 2),
            "note": note,
            "server_write_timeouts": stats["timeouts"].get("write", 0),
            "server_after": stats,
            "ok": closed_after is not None and closed_after <= args.data_timeout + 10,
        }
    finally:
        server.stop()


def no_read_flood(args: argparse.Namespace) -> dict[str, Any]:
    """Cheap queries as fast as possible, never reading the replies."""
    server = ServerProcess(bindings=100, data_timeout=args.data_timeout)
    try:
        from torture_server import encode_query

        from bulklq.wire import ClientId, Duid, Message, MessageType

        client = ClientId(Duid.en(32473, b"flood"))
        starttls = Message(MessageType.STARTTLS, 5, (client,)).encode()
        unknown = encode_query(6, 77, IPv6Address(0))
        pair = len(starttls).to_bytes(2, "big") + starttls + unknown
        burst = pair * 2000
        before = rss_kib(server.pid)
        sock = connect("127.0.0.1", server.ports["127.0.0.1"])
        sock.settimeout(2.0)
        sent = 0
        blocked = False
        peak = before
        started = next_sample = time.monotonic()
        while time.monotonic() < started + args.flood_seconds:
            try:
                sent += sock.send(burst)
            except TimeoutError:
                blocked = True
                break
            except OSError:
                break
            if time.monotonic() >= next_sample:
                peak = max(peak, rss_kib(server.pid))
                next_sample = time.monotonic() + 0.25
        elapsed = time.monotonic() - started
        peak = max(peak, rss_kib(server.pid))
        sock.close()
        return {
            "seconds": round(elapsed, 1),
            "octets_sent": sent,
            "queries_sent": sent * 2 // len(pair),
            "sender_blocked": blocked,
            "server_rss_before_mib": round(before / 1024, 1),
            "server_rss_peak_mib": round(peak / 1024, 1),
            "server_rss_growth_mib": round((peak - before) / 1024, 1),
            "ok": blocked and (peak - before) < 50 * 1024,
        }
    finally:
        server.stop()


# -- consistency ----------------------------------------------------------------------------


def consistency(args: argparse.Namespace) -> dict[str, Any]:
    """
    A writer (its own process, or the server's reactor for the memory store) and
    requestors (their own process) at once; the log of writes judges every query.
    """
    from torture_consistency import run_consistency

    stores = args.store.split(",")
    report: dict[str, Any] = {}
    for store in stores:
        if store == "postgresql" and not os.environ.get("BULKLQ_TEST_POSTGRES_DSN"):
            report[store] = {"skipped": "BULKLQ_TEST_POSTGRES_DSN is not set"}
            continue
        report[store] = run_consistency(
            store,
            bindings=args.bindings,
            rate=args.rate,
            requestors=args.requestors,
            seconds_limit=args.max_seconds,
            writer_nice=args.writer_nice,
            database_nice=args.database_nice,
        )
    report["ok"] = all(r.get("ok", True) for r in report.values() if isinstance(r, dict))
    return report


RUNNERS = {
    "junk": junk,
    "tcp-junk": tcp_junk,
    "slowloris": slowloris,
    "flood": flood,
    "slow-reader": slow_reader,
    "stalled-reader": stalled_reader,
    "no-read-flood": no_read_flood,
    "consistency": consistency,
}


def main() -> None:
    """Parse the arguments, run the scenarios, print the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("scenarios", nargs="+", choices=[*SCENARIOS, "all"])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--count", type=int, default=1_000_000, help="junk: messages")
    parser.add_argument("--connections", type=int, default=None, help="tcp-junk 50, slowloris 500")
    parser.add_argument("--bytes", type=int, default=5000, help="tcp-junk: octets each")
    parser.add_argument("--data-timeout", type=float, default=10.0)
    parser.add_argument("--over", type=int, default=200, help="flood: over-limit connections")
    parser.add_argument("--cycles", type=int, default=10_000, help="flood: connect/close cycles")
    parser.add_argument("--threads", type=int, default=4, help="flood: cycling threads")
    parser.add_argument("--bindings", type=int, default=None, help="slow-reader 1M, others less")
    parser.add_argument("--rate", type=int, default=None, help="slow-reader B/s; writes/s")
    parser.add_argument("--slow-seconds", type=float, default=60.0)
    parser.add_argument("--flood-seconds", type=float, default=20.0, help="no-read-flood")
    parser.add_argument("--requestors", type=int, default=10)
    parser.add_argument("--store", default="memory,sqlite,postgresql")
    parser.add_argument("--max-seconds", type=float, default=240.0, help="consistency bound")
    parser.add_argument(
        "--writer-nice",
        type=int,
        default=-10,
        help="consistency: the writer's niceness (and its PostgreSQL backend's); root only below 0",
    )
    parser.add_argument(
        "--database-nice",
        type=int,
        default=None,
        help="consistency, PostgreSQL: the database cluster's autogroup niceness during the "
        "run, restored after (root only below 0)",
    )
    args = parser.parse_args()
    chosen = list(SCENARIOS) if "all" in args.scenarios else args.scenarios
    report: dict[str, Any] = {
        "command": " ".join([sys.executable, *sys.argv]),
        "cpus": os.cpu_count(),
        "loopback_only": list(LOOPBACK),
    }
    for name in chosen:
        scenario_args = argparse.Namespace(**vars(args))
        defaults = {
            "tcp-junk": {"connections": 50},
            "slowloris": {"connections": 500},
            "slow-reader": {"bindings": 1_000_000, "rate": 1024},
            "stalled-reader": {"bindings": 200_000},
            "consistency": {"bindings": 100_000, "rate": 5000},
        }.get(name, {})
        for key, value in defaults.items():
            if getattr(scenario_args, key) is None:
                setattr(scenario_args, key, value)
        started = time.monotonic()
        try:
            result = RUNNERS[name](scenario_args)
        except Exception as error:  # a broken scenario is reported, the others still run
            result = {"error": f"{type(error).__name__}: {error}", "ok": False}
        result["scenario_seconds"] = round(time.monotonic() - started, 1)
        report[name] = result
        print(f"torture: {name} done in {result['scenario_seconds']} s", file=sys.stderr)
    report["ok"] = all(report[name].get("ok") for name in chosen)
    print(json.dumps(report, indent=2))
    sys.exit(0 if report["ok"] else 1)


if __name__ == "__main__":
    main()
