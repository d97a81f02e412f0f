"""
Memory store throughput: bulk load, then stream a Relay-ID query and a link query through
fetch() pages (synchronous Deferreds), and time single put/remove calls. Prints JSON.

The server's target (issue 3) is 250,000 bindings/s end to end, so a 1000-binding page must
cost well under a millisecond here.

    python bench/store_memory.py --bindings 1000000
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import time
from ipaddress import IPv6Address

from twisted.internet.task import Clock

from bulklq.model import AddressLease, Binding, BindingPage, BindingQuery
from bulklq.stores.memory import MemoryBindingStore
from bulklq.testing import DEFAULT_CLTT, make_duid, make_link, make_relay_data
from bulklq.wire import Duid

RELAY_ID = Duid.en(32473, b"bench-relay")
LINKS = 16


def bindings(count: int) -> list[Binding]:
    """C{count} bindings on 16 links, all relayed by one Relay-ID (shared chain per link)."""
    chains = [
        make_relay_data(link_address=IPv6Address(f"2001:db8:{n:x}::1"), relay_id=RELAY_ID)
        for n in range(LINKS)
    ]
    return [
        Binding(
            make_duid(number + 1),
            f"link-{number % LINKS}",
            DEFAULT_CLTT,
            (AddressLease(IPv6Address(f"2001:db8:{number % LINKS:x}::") + number + 1, 1800, 3600),),
            relay_data=chains[number % LINKS],
        )
        for number in range(count)
    ]


def stream(store: MemoryBindingStore, query: BindingQuery, page: int) -> dict[str, float]:
    """Pull the whole answer; count, seconds, rate and the cost of one page."""
    started = time.perf_counter()
    count = pages = 0
    resume = None
    while True:
        result: list[BindingPage] = []
        store.fetch(query, resume, page).addCallback(result.append)
        count += len(result[0].bindings)
        pages += 1
        resume = result[0].resume_after
        if resume is None:
            break
    elapsed = time.perf_counter() - started
    return {
        "bindings": count,
        "seconds": round(elapsed, 3),
        "bindings_per_second": round(count / elapsed) if elapsed else 0,
        "ms_per_page": round(elapsed / pages * 1000, 3),
    }


def main() -> None:
    """Run the benchmark and print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--bindings", type=int, default=1_000_000)
    parser.add_argument("--page", type=int, default=1000)
    arguments = parser.parse_args()
    clock = Clock()
    clock.advance(DEFAULT_CLTT + 60)
    gc.disable()  # building and loading allocate millions of objects and free none
    items = bindings(arguments.bindings)
    store = MemoryBindingStore(
        [make_link(f"link-{n}", [f"2001:db8:{n:x}::/48"]) for n in range(LINKS)], clock
    )
    started = time.perf_counter()
    store.put_many(items)
    load = time.perf_counter() - started
    gc.enable()
    results: dict[str, object] = {
        "benchmark": "store_memory",
        "bindings": arguments.bindings,
        "page": arguments.page,
        "put_many_seconds": round(load, 2),
        "relay_id": stream(store, BindingQuery.by_relay_id(RELAY_ID), arguments.page),
        "link": stream(store, BindingQuery.by_link("link-1"), arguments.page),
    }
    extra = bindings(1)[0]
    rounds = 10_000
    started = time.perf_counter()
    for number in range(rounds):
        store.put(Binding(make_duid(10**9 + number), "link-1", DEFAULT_CLTT, extra.addresses))
    results["put_us"] = round((time.perf_counter() - started) / rounds * 1e6, 1)
    started = time.perf_counter()
    for number in range(rounds):
        store.remove(("link-1", make_duid(10**9 + number).raw))
    results["remove_us"] = round((time.perf_counter() - started) / rounds * 1e6, 1)
    results["max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
