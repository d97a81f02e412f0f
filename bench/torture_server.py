"""
The server side of C{bench/torture.py}, and the plain-socket helpers its attackers use.

C{python bench/torture_server.py --bindings N [limits]} builds a memory store of N bindings
(one link, one shared Relay-ID), listens on 127.0.0.1 and ::1 (ephemeral ports; loopback
only, never anything else), prints one JSON line with its pid and ports, then serves. A
line C{stats} on its stdin prints the factory's counters and open descriptors as a JSON
line; C{quit} stops it.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
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
    rss_kib,
)
from raw_leasequery import relay_id_query as _relay_id_query

__all__ = [
    "DATA",
    "DONE",
    "LOOPBACK",
    "REPLY",
    "ServerProcess",
    "count_answer",
    "encode_query",
    "fd_count",
    "frames_in",
    "has_client_data",
    "legit_query",
    "peak_rss_kib",
    "relay_id_query",
    "rss_kib",
]

LINK_PREFIX = IPv6Network("2001:db8:1::/64")
LOOPBACK = ("127.0.0.1", "::1")


# -- wire helpers for attackers and counters -------------------------------------------


def relay_id_query(xid: int) -> bytes:
    """QUERY_BY_RELAY_ID for the shared relay DUID over every link: every binding."""
    return _relay_id_query(xid, requestor=b"torture")


def frames_in(buffer: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """The whole frames at the start of C{buffer} as (type, message), and the rest."""
    found = []
    offset = 0
    while offset + 2 <= len(buffer):
        (size,) = struct.unpack_from("!H", buffer, offset)
        if offset + 2 + size > len(buffer):
            break
        message = buffer[offset + 2 : offset + 2 + size]
        found.append((message[0] if message else -1, message))
        offset += 2 + size
    return found, buffer[offset:]


def count_answer(sock: socket.socket, deadline: float) -> dict[str, Any]:
    """Read one query's answer: bindings counted, how it ended (done/empty/closed/timeout)."""
    buffer = b""
    bindings = 0
    sock.settimeout(1.0)
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(1 << 20)
        except TimeoutError:
            continue
        except OSError as error:
            return {"bindings": bindings, "end": f"error: {error}"}
        if not chunk:
            return {"bindings": bindings, "end": "closed"}
        frames, buffer = frames_in(buffer + chunk)
        for kind, message in frames:
            if kind == DATA or (kind == REPLY and has_client_data(message)):
                bindings += 1
            elif kind == REPLY:
                return {"bindings": bindings, "end": "empty reply"}
            elif kind == DONE:
                return {"bindings": bindings, "end": "done", "done": message.hex()}
    return {"bindings": bindings, "end": "timeout"}


def legit_query(host: str, port: int, timeout: float = 60.0) -> dict[str, Any]:
    """Connect, ask for every binding, count the answer; with the time it took."""
    started = time.monotonic()
    try:
        sock = socket.create_connection((host, port), timeout=10)
    except OSError as error:
        return {"end": f"connect failed: {error}", "seconds": 0.0}
    with sock:
        sock.sendall(relay_id_query(0x1E617))
        result = count_answer(sock, started + timeout)
    result["seconds"] = round(time.monotonic() - started, 3)
    result["from"] = host
    return result


def peak_rss_kib(pid: int) -> int:
    """The peak resident set size (VmHWM) of process C{pid}, KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def fd_count(pid: int) -> int:
    """How many file descriptors process C{pid} has open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


# -- the server process ---------------------------------------------------------------------


def build_store(total: int, clock: Any) -> Any:
    """A memory store of C{total} bindings on one /64, all relayed by L{RELAY_DUID}."""
    from bulklq.model import AddressLease, Binding, Link
    from bulklq.stores.memory import MemoryBindingStore
    from bulklq.testing import make_relay_data
    from bulklq.wire import Duid

    now = int(time.time())
    relay = make_relay_data(relay_id=Duid(RELAY_DUID))
    store = MemoryBindingStore([Link("link-1", (LINK_PREFIX,))], clock=clock)
    base = LINK_PREFIX.network_address
    store.put_many(
        Binding(
            Duid(b"\x00\x03\x00\x01" + n.to_bytes(6, "big")),
            "link-1",
            now - 60,
            (AddressLease(base + 0x100 + n, 3600, 7200),),
            relay_data=relay,
        )
        for n in range(total)
    )
    return store


def serve(args: argparse.Namespace) -> None:
    """Run the server until C{quit} or EOF on stdin."""
    from twisted.internet import reactor, stdio
    from twisted.protocols.basic import LineReceiver

    from bulklq.config import ServerConfig, parse_access_rule
    from bulklq.server import BulkLeasequeryFactory
    from bulklq.wire import Duid

    store = build_store(args.bindings, reactor)
    config = ServerConfig(
        Duid.from_text("00:01:00:01:29:b9:4d:80:02:00:00:00:00:01"),
        allow=(parse_access_rule("127.0.0.1/32"), parse_access_rule("::1/128")),
        max_connections=args.max_connections,
        max_connections_per_requestor=args.per_requestor,
        data_timeout=args.data_timeout,
        idle_timeout=args.idle_timeout,
        page_size=args.page_size,
    )
    factory = BulkLeasequeryFactory(store, config, reactor)  # type: ignore[arg-type]
    ports = {
        host: reactor.listenTCP(0, factory, interface=host, backlog=1024)  # type: ignore[attr-defined]
        for host in LOOPBACK
    }

    class Control(LineReceiver):
        delimiter = b"\n"

        def lineReceived(self, line: bytes) -> None:
            command = line.strip().decode()
            if command == "stats":
                stats = factory.stats
                self.sendLine(
                    json.dumps(
                        {
                            "connections_open": stats.connections_open,
                            "connections_accepted": stats.connections_accepted,
                            "refusals": dict(stats.refusals),
                            "evictions": stats.evictions,
                            "timeouts": dict(stats.timeouts),
                            "queries": {f"{k[0]}/{k[1]}": v for k, v in stats.queries.items()},
                            "bindings_sent": stats.bindings_sent,
                            "fds": fd_count(os.getpid()),
                            "rss_kib": rss_kib(os.getpid()),
                            "peak_rss_kib": peak_rss_kib(os.getpid()),
                        }
                    ).encode()
                )
            elif command == "quit":
                reactor.stop()  # type: ignore[attr-defined]

        def connectionLost(self, reason: object = None) -> None:
            if reactor.running:  # type: ignore[attr-defined]
                reactor.stop()  # type: ignore[attr-defined]

    stdio.StandardIO(Control())
    print(
        json.dumps(
            {
                "pid": os.getpid(),
                "ports": {host: port.getHost().port for host, port in ports.items()},
            }
        ),
        flush=True,
    )
    reactor.run()  # type: ignore[attr-defined]


class ServerProcess:
    """A torture server in a subprocess; C{stats()} asks it for its counters."""

    def __init__(self, **options: Any) -> None:
        import subprocess

        command = [sys.executable, __file__]
        for name, value in options.items():
            command += [f"--{name.replace('_', '-')}", str(value)]
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        hello = json.loads(self.process.stdout.readline())
        self.pid: int = hello["pid"]
        self.ports: dict[str, int] = hello["ports"]

    def stats(self) -> dict[str, Any]:
        """The server's counters, descriptors and memory now."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("stats\n")
        self.process.stdin.flush()
        result: dict[str, Any] = json.loads(self.process.stdout.readline())
        return result

    def stop(self) -> None:
        """Stop the server and wait for it."""
        if self.process.poll() is None:
            assert self.process.stdin is not None
            try:
                self.process.stdin.write("quit\n")
                self.process.stdin.close()
            except OSError:
                pass
            try:
                self.process.wait(timeout=20)
            except Exception:
                self.process.kill()
                self.process.wait()


def main() -> None:
    """Serve with the limits given on the command line."""
    parser = argparse.ArgumentParser(description="bulklq torture server (loopback only)")
    parser.add_argument("--bindings", type=int, default=1000)
    parser.add_argument("--max-connections", type=int, default=10)
    parser.add_argument("--per-requestor", type=int, default=4)
    parser.add_argument("--data-timeout", type=float, default=300.0)
    parser.add_argument("--idle-timeout", type=float, default=300.0)
    parser.add_argument("--page-size", type=int, default=1000)
    serve(parser.parse_args())


if __name__ == "__main__":
    main()
