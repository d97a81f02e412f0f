"""
Load a realistic Kea memfile lease file into the kea-csv store; print JSON figures.

The generated file (Kea 3.x header with pool_id) models an access network: clients behind
1,000 relays, each holding an address (IA_NA) and a delegated prefix (IA_PD) written as two
rows of one transaction with the same relay-info (interface-id, remote-id per subscriber
line, relay-id per relay); 10% of the rows are renewals of an earlier lease and 1% are
releases (valid lifetime 0). One client in five is stored in Kea 2.2's "relays" form.

The load runs in a fresh child process so its peak RSS is the store's alone:

    python bench/kea_csv_load.py --rows 1000000

prints {"rows": ..., "active_leases": ..., "bindings": ..., "load_seconds": ...,
"load_cpu_seconds": ..., "rows_per_second": ..., "rss_mb": ..., "rss_before_mb": ...,
"rss_after_streaming_mb": ..., "stream_bindings_per_second": ...,
"stream_again_bindings_per_second": ..., "stream_bindings_per_cpu_second": ...,
"stream_again_bindings_per_cpu_second": ..., "load_average": ...}: the stream figures are a full
link query paged 1,000 at a time right after the load (each binding built for the first
time), then the same again (bindings already built); the load average is the machine's
(1 minute) at the end, since other jobs skew the figures.

With --warm the store's background build of every binding (what a kea-csv: URI does
unless warm=no) runs to its end after the load, adding "warm_seconds",
"warm_cpu_seconds" and "rss_after_warm_mb"; the first stream then finds every binding
built. --load-only PATH measures an existing file (in this process).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from ipaddress import IPv6Address

HEADER = (
    "address,duid,valid_lifetime,expire,subnet_id,pref_lifetime,lease_type,iaid,prefix_len,"
    "fqdn_fwd,fqdn_rev,hostname,hwaddr,state,user_context,hwtype,hwaddr_source,pool_id\n"
)
NOW = 1_800_000_000


def _relay_context(relay: int, client: int, old_format: bool) -> str:
    interface = f"ge-0/0/{client % 48}".encode().hex().upper()
    remote = f"line-{client}".encode().hex().upper()
    relay_id = f"0002000009BF72656C61792D{relay:06X}"
    link = f"2001:db8:{relay:x}::1"
    peer = f"fe80::{client % 65536:x}"
    options = (
        f"0x0012{len(interface) // 2:04X}{interface}"
        f"0025{4 + len(remote) // 2:04X}000009BF{remote}"
        f"0035{len(relay_id) // 2:04X}{relay_id}"
    )
    if old_format:
        body = (
            f'{{ "ISC": {{ "relays": [ {{ "hop": 0, "link": "{link}", '
            f'"options": "{options}", "peer": "{peer}" }} ] }} }}'
        )
    else:
        body = (
            f'{{ "ISC": {{ "relay-info": [ {{ "hop": 0, "link": "{link}", "peer": "{peer}", '
            f'"remote-id": "000009BF{remote}", "relay-id": "{relay_id}", '
            f'"options": "{options}" }} ] }} }}'
        )
    return body.replace("&", "&#x26").replace(",", "&#x2c")


def generate(path: str, rows: int, seed: int = 5460) -> None:
    """Write a lease file of C{rows} rows to C{path}."""
    rng = random.Random(seed)
    written = 0
    client = 0
    issued: list[str] = []
    with open(path, "w", encoding="ascii", newline="\n") as out:
        out.write(HEADER)
        while written < rows:
            roll = rng.random()
            if issued and roll < 0.10:
                row = issued[rng.randrange(len(issued))]
                fields = row.split(",")
                fields[3] = str(int(fields[3]) + rng.randrange(1, 1800))
                out.write(",".join(fields))
                written += 1
                continue
            if issued and roll < 0.11:
                fields = issued[rng.randrange(len(issued))].split(",")
                fields[2] = "0"
                out.write(",".join(fields))
                written += 1
                continue
            client += 1
            relay = client % 1000
            subnet = 1 + relay % 50
            duid = f"00:03:00:01:02:{(client >> 24) & 255:02x}:{(client >> 16) & 255:02x}:"
            duid += f"{(client >> 8) & 255:02x}:{client & 255:02x}:00"
            context = _relay_context(relay, client, old_format=client % 5 == 0)
            expire = NOW + rng.randrange(600, 3600)
            address = str(IPv6Address((0x20010DB8 << 96) + (relay << 80) + client))
            prefix = str(IPv6Address((0x20010DB9 << 96) + (client << 72)))
            for lease_type, lease_address, length in ((0, address, 128), (2, prefix, 56)):
                row = (
                    f"{lease_address},{duid},3600,{expire},{subnet},1800,{lease_type},1,"
                    f"{length},0,0,,,0,{context},0,0,0\n"
                )
                out.write(row)
                issued.append(row)
                written += 1
            if len(issued) > 4096:
                issued = issued[-2048:]


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load(path: str, warm: bool = False, parallel: bool = True) -> dict[str, float]:
    """
    Load C{path} into a store (in this process) and measure; with C{warm}, run the
    background build of every binding (L{KeaCsvStore.warm}) to its end before streaming;
    C{parallel=False} loads without the child process that parses most rows.
    """
    from twisted.internet.task import Clock

    from bulklq.model import BindingQuery
    from bulklq.stores.kea_csv import KeaCsvStore

    rss_before = _rss_mb()
    clock = Clock()
    clock.advance(NOW)
    store = KeaCsvStore(path, clock, parallel=parallel)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    cpu_started = time.process_time()
    store.load()
    seconds = time.perf_counter() - started
    rss = _rss_mb()
    cpu_seconds = time.process_time() - cpu_started
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    child_cpu = (children_after.ru_utime + children_after.ru_stime) - (
        children.ru_utime + children.ru_stime
    )
    warmed: dict[str, float] = {}
    if warm:
        started = time.perf_counter()
        cpu_started = time.process_time()
        store.warm()
        while store.warming:
            clock.advance(0)
        warmed = {
            "warm_seconds": round(time.perf_counter() - started, 2),
            "warm_cpu_seconds": round(time.process_time() - cpu_started, 2),
            "rss_after_warm_mb": round(_rss_mb()),
        }
    with open(path, "rb") as handle:
        rows = sum(1 for _ in handle) - 1

    def stream() -> tuple[int, float, float]:
        streamed = 0
        started = time.perf_counter()
        cpu_started = time.process_time()
        for link in store.links():
            resume = None
            while True:
                page = []
                query = BindingQuery.by_link(link.link_id)
                store.fetch(query, resume, 1000).addCallback(page.append)
                streamed += len(page[0].bindings)
                resume = page[0].resume_after
                if resume is None:
                    break
        return streamed, time.perf_counter() - started, time.process_time() - cpu_started

    streamed, first_seconds, first_cpu = stream()
    rss_streamed = _rss_mb()
    _, again_seconds, again_cpu = stream()
    store.close()
    return {
        "rows": rows,
        "active_leases": len(store._table),
        "bindings": len(store),
        "load_seconds": round(seconds, 2),
        "load_cpu_seconds": round(cpu_seconds, 2),
        "load_child_cpu_seconds": round(child_cpu, 2),
        "rows_parsed_by_child": store.parsed_by_child,
        "rows_per_second": round(rows / seconds),
        "rss_mb": round(rss),
        "rss_before_mb": round(rss_before),
        **warmed,
        "rss_after_streaming_mb": round(rss_streamed),
        "streamed": streamed,
        "stream_bindings_per_second": round(streamed / first_seconds) if streamed else 0,
        "stream_again_bindings_per_second": round(streamed / again_seconds) if streamed else 0,
        "stream_bindings_per_cpu_second": round(streamed / first_cpu) if streamed else 0,
        "stream_again_bindings_per_cpu_second": round(streamed / again_cpu) if streamed else 0,
        "load_average": os.getloadavg()[0],
    }


def main() -> None:
    """Generate (or reuse) the file, then load it in a child process."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rows", type=int, default=100_000, help="rows to generate (default: 100,000)"
    )
    parser.add_argument("--file", help="lease file to write (default: a temporary file)")
    parser.add_argument("--load-only", metavar="PATH", help="measure an existing lease file")
    parser.add_argument(
        "--warm",
        action="store_true",
        help="build every binding in the background (as kea-csv: does unless warm=no) "
        "before streaming",
    )
    parser.add_argument(
        "--serial",
        action="store_true",
        help="load in this process alone (as kea-csv: does with parallel=no)",
    )
    args = parser.parse_args()
    if args.load_only:
        print(json.dumps(load(args.load_only, args.warm, not args.serial)))
        return
    path = args.file or os.path.join(tempfile.mkdtemp(), "kea-leases6.csv")
    started = time.perf_counter()
    generate(path, args.rows)
    generated = time.perf_counter() - started
    child = subprocess.run(
        [
            sys.executable,
            __file__,
            "--load-only",
            path,
            *(["--warm"] if args.warm else []),
            *(["--serial"] if args.serial else []),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    result = json.loads(child.stdout.strip().splitlines()[-1])
    result["file_mb"] = round(os.path.getsize(path) / 1e6)
    result["generate_seconds"] = round(generated, 1)
    if not args.file:
        os.unlink(path)
        os.rmdir(os.path.dirname(path))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
