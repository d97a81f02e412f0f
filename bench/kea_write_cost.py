"""
What one write of the consistency torture's PostgreSQL writer costs the database.

The writer (C{KeaBatchWriter}, standing in for Kea) writes Kea's C{lease6} and relay
tables, one transaction per batch. Kea's schema fires its own triggers on every C{lease6}
row (lease statistics by subnet and by client class); this script measures the CPU time
of the writer's PostgreSQL backend per write (a third adds, a third updates, a third
removes, as in the torture) in three variants of a scratch copy of Kea's schema:

  - C{kea}: the schema as C{kea-admin} creates it;
  - C{json-check-once}: Kea's C{isJsonSupported()} replaced by one answering at once (in
    Kea's schema it looks up a session setting under a name it never sets, so every call
    raises and catches an error and queries C{pg_proc});
  - C{no-triggers}: Kea's triggers on C{lease6} disabled.

Only the first is what a Kea deployment runs; the others say where the time goes.
Needs C{BULKLQ_TEST_POSTGRES_DSN} (C{eval "$(scripts/postgres-test-server start)"}):

    python bench/kea_write_cost.py --bindings 100000 --writes 10000

prints {"kea": {"backend_us_per_write": ..., "writer_us_per_write": ...,
"wall_us_per_write": ...}, "json-check-once": {...}, "no-triggers": {...}}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

VARIANTS = {
    "kea": [],
    "json-check-once": [
        "CREATE OR REPLACE FUNCTION isJsonSupported() RETURNS boolean LANGUAGE sql AS 'SELECT true'"
    ],
    "no-triggers": ["ALTER TABLE lease6 DISABLE TRIGGER USER"],
}


def measure(variant: str, bindings: int, writes: int, batch: int) -> dict[str, Any]:
    """Load C{bindings} into a scratch database, apply C{writes}; the costs per write."""
    from torture_consistency import batch_changes, new_writer, process_cpu_seconds

    from tests.test_hardening_consistency import KeaBatchWriter, state
    from tests.test_store_postgresql import V17, ScratchDatabase

    base_time = int(time.time())
    database = ScratchDatabase(V17)
    try:
        sink = KeaBatchWriter(database.dsn)
        initial = [state(client, 0, base_time) for client in range(1, bindings + 1)]
        for at in range(0, bindings, 10_000):
            sink.apply(initial[at : at + 10_000], [])
        sink.connection.execute("ANALYZE")
        for statement in VARIANTS[variant]:
            sink.connection.execute(statement)
        backend = sink.connection.execute("SELECT pg_backend_pid()").fetchone()[0]
        writer = new_writer(bindings, base_time)
        backend_before = process_cpu_seconds(backend)
        writer_before = time.process_time()
        wall_before = time.monotonic()
        done = 0
        while done < writes:
            chosen = writer.batch(min(batch, writes - done))
            sink.apply(*batch_changes(chosen, base_time))
            writer.operations += len(chosen)
            done += len(chosen)
        micro = 1e6 / done
        result = {
            "writes": done,
            "backend_us_per_write": round((process_cpu_seconds(backend) - backend_before) * micro),
            "writer_us_per_write": round((time.process_time() - writer_before) * micro),
            "wall_us_per_write": round((time.monotonic() - wall_before) * micro),
        }
        sink.close()
        return result
    finally:
        database.drop()


def main() -> None:
    """Measure each variant asked; print the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--bindings", type=int, default=100_000)
    parser.add_argument("--writes", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=250, help="writes per transaction")
    parser.add_argument("--variant", action="append", choices=list(VARIANTS))
    args = parser.parse_args()
    report = {
        variant: measure(variant, args.bindings, args.writes, args.batch)
        for variant in args.variant or list(VARIANTS)
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
