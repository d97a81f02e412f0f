"""
Bulk Leasequery server throughput on loopback, printed as JSON.

The server (BulkLeasequeryFactory over a MemoryBindingStore) runs in its own process;
requestors are minimal frame counters on plain sockets in other processes (they parse the
2-octet size prefixes and message types, nothing more), so the server is what is measured.

Scenarios:
  - ``single``: one requestor pulls every binding (QUERY_BY_RELAY_ID, all bindings share
    one relay chain): bindings/s and time to the first binding (the REPLY holds it);
  - ``slow``: one requestor that reads slowly pulls every binding while the server's RSS is
    sampled: growth over the RSS before the query;
  - ``parallel``: N requestors at once, each pulling one link (QUERY_BY_LINK_ADDRESS):
    aggregate bindings/s;
  - ``plain``: a plain socket sending the same pre-encoded frames to the same counter:
    the ceiling this machine and the counter allow, for the ratio.

Usage:
  python bench/server_throughput.py                        # 1,000,000 bindings, 10 links
  python bench/server_throughput.py --bindings 100000      # quicker
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import socket
import struct
import subprocess
import sys
import time
from ipaddress import IPv6Network
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from raw_leasequery import (
    DATA,
    DONE,
    RELAY_DUID,
    REPLY,
    encode_query,
    has_client_data,
    relay_id_query,
    rss_kib,
)


def link_prefix(index: int) -> IPv6Network:
    """The /64 of link C{index}."""
    return IPv6Network(f"2001:db8:{index + 1:x}::/64")


def link_query(xid: int, index: int) -> bytes:
    """QUERY_BY_LINK_ADDRESS for link C{index}."""
    return encode_query(xid, 4, link_prefix(index).network_address + 1)


# -- the frame-counting requestor ----------------------------------------------------------


def count_frames(
    sock: socket.socket, xid: int, slow: bool = False, recv_size: int = 1 << 20
) -> dict[str, float]:
    """
    Read frames until the DONE (or an empty REPLY) for C{xid}; count CLIENT_DATA-bearing
    messages. Returns counts and timestamps (perf_counter).
    """
    buffer = b""
    bindings = 0
    first = 0.0
    size_reader = struct.Struct("!H").unpack_from
    if slow:
        recv_size = 16384
    while True:
        chunk = sock.recv(recv_size)
        if not chunk:
            raise RuntimeError("server closed the connection")
        if not first:
            first = time.perf_counter()
        buffer = buffer + chunk if buffer else chunk
        offset = 0
        end = len(buffer)
        done = False
        while offset + 2 <= end:
            (size,) = size_reader(buffer, offset)
            if offset + 2 + size > end:
                break
            msg_type = buffer[offset + 2]
            if msg_type == DATA:
                bindings += 1
            elif msg_type == REPLY:
                # A REPLY with CLIENT_DATA holds the first binding; an empty one ends it.
                if has_client_data(buffer[offset + 2 : offset + 2 + size]):
                    bindings += 1
                else:
                    done = True
            elif msg_type == DONE:
                done = True
            offset += 2 + size
        buffer = buffer[offset:]
        if done:
            return {"bindings": bindings, "first": first, "end": time.perf_counter()}
        if slow:
            time.sleep(0.002)


def requestor(
    port: int,
    query: bytes,
    xid: int,
    slow: bool,
    result: multiprocessing.Queue,  # type: ignore[type-arg]
    *,
    go: Any = None,
) -> None:
    """
    Connect, wait for C{go} (a multiprocessing Event) if given, send one query, count the
    answer; put a dict on C{result}.
    """
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if go is not None:
        result.put({"ready": 1.0})
        go.wait()
    start = time.perf_counter()
    sock.sendall(query)
    counts = count_frames(sock, xid, slow)
    sock.close()
    counts["start"] = start
    result.put(counts)


# -- the server process --------------------------------------------------------------------


def build_store(total: int, links: int) -> object:
    """A MemoryBindingStore with C{total} bindings over C{links} links."""
    from bulklq.model import AddressLease, Binding, Link
    from bulklq.stores.memory import MemoryBindingStore
    from bulklq.testing import make_relay_data
    from bulklq.wire import Duid

    now = int(time.time())
    relay = make_relay_data(relay_id=Duid(RELAY_DUID))
    store = MemoryBindingStore([Link(f"link-{i}", (link_prefix(i),)) for i in range(links)])
    per_link = total // links

    def bindings():  # type: ignore[no-untyped-def]
        for i in range(links):
            base = link_prefix(i).network_address
            link_id = f"link-{i}"
            for n in range(per_link):
                number = i * per_link + n
                yield Binding(
                    Duid(b"\x00\x03\x00\x01" + number.to_bytes(6, "big")),
                    link_id,
                    now - 60,
                    (AddressLease(base + 0x100 + n, 3600, 7200),),
                    relay_data=relay,
                )

    store.put_many(bindings())
    return store


def serve(total: int, links: int, page_size: int) -> None:
    """Run the server; print its port and setup time on stdout, then serve forever."""
    from twisted.internet import reactor

    from bulklq.config import ServerConfig, parse_access_rule
    from bulklq.server import BulkLeasequeryFactory
    from bulklq.wire import Duid

    started = time.perf_counter()
    store = build_store(total, links)
    # Steady state: a server that has been up a while has done this collection already.
    gc.collect()
    config = ServerConfig(
        Duid.from_text("00:01:00:01:29:b9:4d:80:02:00:00:00:00:01"),
        allow=(parse_access_rule("127.0.0.0/8"),),
        max_connections=64,
        max_connections_per_requestor=64,
        page_size=page_size,
    )
    factory = BulkLeasequeryFactory(store, config, reactor)  # type: ignore[arg-type]
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
    print(
        json.dumps({"port": port.getHost().port, "setup_seconds": time.perf_counter() - started}),
        flush=True,
    )
    reactor.run()  # type: ignore[attr-defined]


# -- the plain-socket ceiling --------------------------------------------------------------


def plain_sender(total: int, ready: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    """Listen, pre-encode C{total} frames like the server's, send them all, then DONE."""
    from bulklq.model import AddressLease, Binding
    from bulklq.server import ClientDataEncoder
    from bulklq.wire import Duid

    now = int(time.time())
    encode = ClientDataEncoder().encode_frame
    base = link_prefix(0).network_address
    frames = [
        encode(
            Binding(
                Duid(b"\x00\x03\x00\x01" + n.to_bytes(6, "big")),
                "link-0",
                now - 60,
                (AddressLease(base + 0x100 + n, 3600, 7200),),
            ),
            now,
            (DATA << 24) | 1,
        )
        for n in range(total)
    ]
    chunk = 1000
    chunks = [b"".join(frames[i : i + chunk]) for i in range(0, total, chunk)]  # type: ignore[arg-type]
    del frames
    chunks.append(struct.pack("!HI", 4, (DONE << 24) | 1))
    listener = socket.create_server(("127.0.0.1", 0))
    ready.put(listener.getsockname()[1])
    conn, _ = listener.accept()
    conn.recv(4096)
    for data in chunks:
        conn.sendall(data)
    conn.close()
    listener.close()


# -- driver --------------------------------------------------------------------------------


def run_requestors(
    port: int, queries: list[tuple[bytes, int]], slow: bool = False
) -> list[dict[str, float]]:
    """
    Run one requestor process per query; all connect first, then send at the same moment.
    """
    results: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
    go = multiprocessing.Event()
    processes = [
        multiprocessing.Process(
            target=requestor, args=(port, query, xid, slow, results), kwargs={"go": go}
        )
        for query, xid in queries
    ]
    for process in processes:
        process.start()
    for _ in processes:
        results.get(timeout=300)
    go.set()
    collected = [results.get(timeout=300) for _ in processes]
    for process in processes:
        process.join()
    return collected


def main() -> None:
    """Parse arguments, run the scenarios, print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--bindings", type=int, default=1_000_000)
    parser.add_argument("--links", type=int, default=10, help="also the parallel requestors")
    parser.add_argument("--page-size", type=int, default=1000)
    parser.add_argument(
        "--scenarios", default="single,parallel,slow,plain", help="comma-separated subset"
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.bindings, args.links, args.page_size)
        return
    scenarios = args.scenarios.split(",")
    report: dict[str, object] = {
        "bindings": args.bindings,
        "links": args.links,
        "page_size": args.page_size,
        "cpus": os.cpu_count(),
        "command": " ".join([sys.executable, *sys.argv]),
    }
    server = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--serve",
            "--bindings",
            str(args.bindings),
            "--links",
            str(args.links),
            "--page-size",
            str(args.page_size),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        hello = json.loads(server.stdout.readline())
        port = hello["port"]
        report["server_setup_seconds"] = round(hello["setup_seconds"], 2)
        # Warm up (imports, first-time allocations) with one link.
        run_requestors(port, [(link_query(9, 0), 9)])
        if "single" in scenarios:
            (result,) = run_requestors(port, [(relay_id_query(1), 1)])
            elapsed = result["end"] - result["start"]
            report["single"] = {
                "bindings": result["bindings"],
                "seconds": round(elapsed, 3),
                "bindings_per_second": round(result["bindings"] / elapsed),
                "first_binding_ms": round((result["first"] - result["start"]) * 1000, 2),
            }
        if "parallel" in scenarios:
            results = run_requestors(
                port, [(link_query(100 + i, i), 100 + i) for i in range(args.links)]
            )
            start = min(r["start"] for r in results)
            end = max(r["end"] for r in results)
            total = sum(r["bindings"] for r in results)
            report["parallel"] = {
                "requestors": len(results),
                "bindings": total,
                "seconds": round(end - start, 3),
                "bindings_per_second": round(total / (end - start)),
                "first_binding_ms_max": round(
                    max(r["first"] - r["start"] for r in results) * 1000, 2
                ),
            }
        if "slow" in scenarios:
            before = rss_kib(server.pid)
            results_queue: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
            process = multiprocessing.Process(
                target=requestor, args=(port, relay_id_query(2), 2, True, results_queue)
            )
            process.start()
            peak = before
            while process.is_alive() and results_queue.empty():
                peak = max(peak, rss_kib(server.pid))
                time.sleep(0.05)
            result = results_queue.get(timeout=300)
            process.join()
            report["slow"] = {
                "bindings": result["bindings"],
                "seconds": round(result["end"] - result["start"], 3),
                "rss_before_mib": round(before / 1024, 1),
                "rss_peak_mib": round(peak / 1024, 1),
                "rss_growth_mib": round((peak - before) / 1024, 1),
            }
    finally:
        server.terminate()
        server.wait()
    if "plain" in scenarios:
        ready: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
        sender = multiprocessing.Process(target=plain_sender, args=(args.bindings, ready))
        sender.start()
        plain_port = ready.get(timeout=300)
        (result,) = run_requestors(plain_port, [(link_query(1, 0), 1)])
        sender.join()
        elapsed = result["end"] - result["start"]
        report["plain"] = {
            "bindings": result["bindings"],
            "seconds": round(elapsed, 3),
            "bindings_per_second": round(result["bindings"] / elapsed),
        }
        if "single" in report:
            single = report["single"]
            assert isinstance(single, dict)
            report["single_to_plain_ratio"] = round(
                single["bindings_per_second"] / report["plain"]["bindings_per_second"],
                3,  # type: ignore[index]
            )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
