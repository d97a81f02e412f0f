"""
C{bulklq query --format jsonl} throughput: bindings per second written to stdout (a pipe
drained to nowhere) by the real command, from a loopback server in another process.

  python bench/client_jsonl.py [--count N] [--server frames|bulklq] [--repeat R] [--stream]

Prints JSON: the wall time of the whole command for N bindings and for 0 bindings (start-up:
interpreter, imports, reactor), and bindings/s both including and excluding that start-up,
best of R runs. Without C{--stream} the command merges (keeps every binding, then writes);
with it, it writes each binding as it arrives (the usual LEASEQUERY-DATA straight from its
octets, JsonLinesWriter.frame). The command's CPU time is reported too: on a busy machine the
wall time also counts waiting for a CPU.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from client_server import start_server  # type: ignore[import-not-found]


def run_command(port: int, stream: bool) -> tuple[float, float, int]:
    """One run of the command; wall seconds, CPU seconds and lines written."""
    argv = [
        sys.executable,
        "-m",
        "bulklq.cli.query",
        f"[::1]:{port}",
        "--link",
        "2001:db8::1",
        "--format",
        "jsonl",
        "--retries",
        "0",
        "--requestor-duid",
        "00:02:00:00:7e:d9:62:65:6e:63:68",
    ]
    if stream:
        argv.append("--stream")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, check=False)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode != 0:
        raise SystemExit(f"command failed ({done.returncode}): {done.stderr.decode()}")
    return elapsed, cpu, done.stdout.count(b"\n")


def main() -> None:
    """Measure and print JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--server", choices=["frames", "bulklq"], default="frames")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--stream", action="store_true")
    options = parser.parse_args()
    process, port = start_server(options.server, options.count)
    empty, empty_port = start_server("frames", 1)
    try:
        times = []
        cpus = []
        for _ in range(options.repeat):
            elapsed, cpu, lines = run_command(port, options.stream)
            assert lines == options.count, (lines, options.count)
            times.append(elapsed)
            cpus.append(cpu)
        empties = [run_command(empty_port, options.stream) for _ in range(options.repeat)]
        startup = min(empty[0] for empty in empties)
        startup_cpu = min(empty[1] for empty in empties)
    finally:
        for started in (process, empty):
            started.terminate()
            started.wait()
    best = min(times)
    print(
        json.dumps(
            {
                "count": options.count,
                "server": options.server,
                "stream": options.stream,
                "wall_s": round(best, 3),
                "startup_s": round(startup, 3),
                "jsonl_bindings_per_s": round(options.count / best),
                "jsonl_bindings_per_s_excluding_startup": round(
                    options.count / max(best - startup, 1e-9)
                ),
                # CPU time of the command (not wall): what a quiet machine would approach.
                "cpu_s": round(min(cpus), 3),
                "jsonl_bindings_per_cpu_s": round(options.count / min(cpus)),
                "jsonl_bindings_per_cpu_s_excluding_startup": round(
                    options.count / max(min(cpus) - startup_cpu, 1e-9)
                ),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
