"""
What the SQLite store's change log costs writers: put_many of N bindings (with a one-hop
relay chain) into a fresh file, inserting then replacing them, with no Active Leasequery
server listening and with one (every write then logged by the triggers), and how fast a
server reads the log back. Prints JSON (bindings/s). Change-to-delivery latency over the
SQLite store is bench/active_latency.py --store sqlite.

    python bench/sqlite_changes.py --bindings 50000
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

from bulklq.stores.sqlite import SQLiteDatabase
from bulklq.testing import make_binding, make_duid
from bulklq.wire import RemoteId


def write_costs(count: int) -> dict[str, float]:
    """put_many rates (bindings/s) into a fresh file, inserting then replacing, with no
    listener and with one (every write then logged)."""
    found: dict[str, float] = {}
    bindings = [
        make_binding(n, relay_id=make_duid(900), remote_id=RemoteId(9, b"p%d" % n))
        for n in range(1, count + 1)
    ]
    for name, listen in (("no_listener", False), ("listener", True)):
        directory = tempfile.mkdtemp(prefix="bulklq-bench-")
        database = SQLiteDatabase(os.path.join(directory, "b.db"))
        if listen:
            database.listen("bench")
        for step in ("insert", "replace"):
            started = time.perf_counter()
            database.put_many(bindings)
            found[f"{name}_{step}_per_s"] = round(count / (time.perf_counter() - started))
        if listen:
            started = time.perf_counter()
            read, after = 0, 0
            while True:
                entries, _ = database.logged_changes(after)
                if not entries:
                    break
                read += len(entries)
                after = entries[-1][0]
            found["log_read_entries"] = read
            found["log_read_per_s"] = round(read / (time.perf_counter() - started))
        database.close()
    return found


def run() -> None:
    """Parse arguments, measure, print the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bindings", type=int, default=50_000, help="bindings (50,000)")
    options = parser.parse_args()
    report = {
        "benchmark": "sqlite_changes",
        "bindings": options.bindings,
        **write_costs(options.bindings),
        "load_average": os.getloadavg()[0],
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    run()
