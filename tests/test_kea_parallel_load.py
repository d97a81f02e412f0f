"""
Tests for the Kea memfile store's parallel load (L{bulklq.stores._parallel_load}): a forked
child parses most rows, the store applies them, and the result is exactly a serial load's.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from bulklq.model import Binding, BindingKey
from bulklq.stores import _parallel_load
from bulklq.stores._kea_rows import Columns, ParsedRows, RowParser
from bulklq.stores.kea_csv import KeaCsvStore, open_store_uri

from .test_kea_csv import (
    HEADER_3,
    HEADER_22,
    NOW_EQ,
    T,
    _bulk_rows,
    _reference,
    _rows,
    capture_log,
    warnings_of,
)

#: Rows no lease file should hold: each is skipped with a warning.
MALFORMED = [
    "not,a,row",
    f"2001:db8:1::zz,00:03:00:01:02:00:00:00:01:00,3600,{T + 3600},1,1800,0,1,128,0,0,,,0,,1,0",
    f"2001:db8:1::9,00:01,3600,{T + 3600},1,1800,0,1,128,0,0,,,0,,1,0",
    f"2001:db8:1::9,00:03:00:01:02:00:00:00:01:00,3600,{T + 3600},1,1800,0,1,128,0,0,,,0,"
    '{ "ISC": { "relays": 7 } },1,0',
]


def force_parallel(case: SynchronousTestCase, window: int = 300) -> None:
    """Make every load of the rest of the test fork its child, with windows of C{window}
    octets (so that a small file has many, parsed by both processes)."""
    case.patch(_parallel_load, "MIN_OCTETS", 0)
    case.patch(_parallel_load, "WINDOW_OCTETS", window)
    case.patch(_parallel_load, "_single_threaded", lambda: True)


def write_file(case: SynchronousTestCase, header: str, rows: list[str]) -> Path:
    """A lease file of C{header} and C{rows} in a new directory."""
    directory = Path(case.mktemp())
    directory.mkdir()
    path = directory / "kea-leases6.csv"
    path.write_bytes(("\n".join([header, *rows]) + "\n").encode())
    return path


def loaded(path: Path, parallel: bool) -> KeaCsvStore:
    """A store (clock at C{NOW_EQ}) that loaded C{path}, in parallel or not."""
    clock = Clock()
    clock.advance(NOW_EQ)
    store = KeaCsvStore(path, clock, parallel=parallel)
    store.load()
    return store


def by_key(store: KeaCsvStore) -> dict[BindingKey, Binding]:
    """The store's bindings by key."""
    return {binding.key: binding for binding in store.bindings()}


def pool_of(header: str) -> bool:
    """Whether C{header} has Kea 2.4's pool_id column."""
    return header.endswith("pool_id")


class ParallelLoadTests(SynchronousTestCase):
    """A load with the child's help gives exactly what a serial load gives."""

    def setUp(self) -> None:
        force_parallel(self)

    @given(st.data())
    @settings(max_examples=60, deadline=None)
    def test_same_as_serial(self, data: st.DataObject) -> None:
        """
        R-Kea memfile load: for random rows (Kea 2.2 and 2.4+ contexts, escapes, deletes,
        states, moved addresses) and malformed rows between them, a load whose windows are
        parsed by the child and by the store serves exactly the reference bindings, and
        warns about the same lines with the same reasons as a serial load.
        """
        header = data.draw(st.sampled_from([HEADER_3, HEADER_22]))
        pool = pool_of(header)
        good = data.draw(st.lists(_rows(pool), min_size=1, max_size=40))
        rows = list(good)
        for bad in data.draw(st.lists(st.sampled_from(MALFORMED), max_size=3)):
            rows.insert(data.draw(st.integers(0, len(rows))), bad)
        path = write_file(self, header, rows)
        events = capture_log(self)
        serial = loaded(path, parallel=False)
        serial_warnings = warnings_of(events)
        del events[:]
        parallel = loaded(path, parallel=True)
        self.assertEqual(warnings_of(events), serial_warnings)
        self.assertEqual(by_key(parallel), _reference(good, pool))
        self.assertEqual(by_key(parallel), by_key(serial))
        self.assertEqual(parallel._followed.offset, serial._followed.offset)  # type: ignore[union-attr]
        self.assertEqual(parallel._followed.line, serial._followed.line)  # type: ignore[union-attr]

    def test_both_parse(self) -> None:
        """
        In a file of many windows, the child and the store each parse some of them, and
        the store serves what a serial load serves.
        """
        rows = _bulk_rows()
        path = write_file(self, HEADER_3, rows)
        parallel = loaded(path, parallel=True)
        serial = loaded(path, parallel=False)
        self.assertEqual(by_key(parallel), by_key(serial))
        self.assertEqual(serial.parsed_by_child, 0)
        self.assertTrue(0 < parallel.parsed_by_child < len(rows), parallel.parsed_by_child)

    def test_carriage_returns(self) -> None:
        """
        A file with CRLF line ends, and a row with a carriage return inside, loads as it
        does serially: the row is skipped with the same warning.
        """
        rows = _bulk_rows()[:200]
        rows[50] = rows[50].replace(",1,0,0", ",1,\r0,0")
        path = write_file(self, HEADER_3, [row + "\r" for row in rows])
        events = capture_log(self)
        serial = loaded(path, parallel=False)
        serial_warnings = warnings_of(events)
        del events[:]
        parallel = loaded(path, parallel=True)
        self.assertEqual(len(serial_warnings), 1)
        self.assertEqual(warnings_of(events), serial_warnings)
        self.assertEqual(by_key(parallel), by_key(serial))
        self.assertGreater(parallel.parsed_by_child, 0)

    def test_renewals_share_summaries(self) -> None:
        """
        A client's leases whose user contexts are equal hold one relay summary object,
        whichever process parsed their rows: the rows written again later (renewals)
        share the summary of the leases before (memory, and the one-transaction build).
        """
        rows = []
        for number, row in enumerate(_bulk_rows()[:300]):
            # Each client also gets a /56 with the same user context, as Kea writes them.
            fields = row.split(",")
            fields[0], fields[6], fields[8] = f"2001:db9:{number:x}::", "2", "56"
            rows += [row, ",".join(fields)]
        rows += rows[:300]
        path = write_file(self, HEADER_3, rows)
        store = loaded(path, parallel=True)
        self.assertGreater(store.parsed_by_child, 0)
        compared = 0
        for entry in store._table.entries.values():
            summaries = entry[8::4]
            for summary in summaries[1:]:
                if summary == summaries[0]:
                    self.assertIs(summary, summaries[0])
                    compared += 1
        self.assertGreater(compared, 100)
        self.assertEqual(by_key(store), _reference(rows, pool=True))

    def test_followed_after_load(self) -> None:
        """
        Rows appended after a parallel load are read from where it stopped: the store then
        serves the reference bindings of every row, and a malformed appended row is
        reported at its own line number.
        """
        rows = _bulk_rows()[:300]
        path = write_file(self, HEADER_3, rows[:200])
        store = loaded(path, parallel=True)
        self.assertGreater(store.parsed_by_child, 0)
        events = capture_log(self)
        with open(path, "a", encoding="ascii") as handle:
            handle.write("".join(row + "\n" for row in [*rows[200:250], "bad", *rows[250:]]))
        store.poll()
        self.assertEqual(by_key(store), _reference(rows, pool=True))
        [warning] = warnings_of(events)
        self.assertIn(f"{path}:252: malformed lease row skipped", warning)

    def test_grown_during_load(self) -> None:
        """
        Rows appended while the child runs (after it took the file's size) are read by
        the store once the child's windows are applied.
        """
        rows = _bulk_rows()[:300]
        path = write_file(self, HEADER_3, rows[:200])
        start = _parallel_load.ParallelLoad.start

        def start_then_append(*args: Any, **kwargs: Any) -> _parallel_load.ParallelLoad | None:
            load = start(*args, **kwargs)
            with open(path, "a", encoding="ascii") as handle:
                handle.write("".join(row + "\n" for row in rows[200:]))
            return load

        self.patch(_parallel_load.ParallelLoad, "start", start_then_append)
        store = loaded(path, parallel=True)
        self.assertGreater(store.parsed_by_child, 0)
        self.assertEqual(by_key(store), _reference(rows, pool=True))


def _send_then_exit(count: int) -> Any:
    """A child that sends its first C{count} windows as the real one does, then exits
    having taken one more (which it never sends)."""
    real = _parallel_load._child
    real_send = _parallel_load._send

    def child(*args: Any, **kwargs: Any) -> None:
        sent = [0]

        def send(writer: int, message: tuple[Any, ...]) -> None:
            if sent[0] == count:
                os._exit(0)
            sent[0] += 1
            real_send(writer, message)

        _parallel_load._send = send  # the child's own copy of the module
        real(*args, **kwargs)

    return child


class ChildFailureTests(SynchronousTestCase):
    """Whatever the child does, the store loads every row (it reads what is left itself)."""

    def setUp(self) -> None:
        force_parallel(self)
        self.rows = _bulk_rows()[:400]
        self.path = write_file(self, HEADER_3, self.rows)

    def assertLoadsEverything(self) -> KeaCsvStore:
        """The store loads exactly the reference bindings; the child was reaped."""
        started: list[_parallel_load.ParallelLoad] = []
        start = _parallel_load.ParallelLoad.start

        def recorded(*args: Any, **kwargs: Any) -> _parallel_load.ParallelLoad | None:
            load = start(*args, **kwargs)
            assert load is not None
            started.append(load)
            return load

        self.patch(_parallel_load.ParallelLoad, "start", recorded)
        store = loaded(self.path, parallel=True)
        self.assertEqual(by_key(store), _reference(self.rows, pool=True))
        [load] = started
        with self.assertRaises(ChildProcessError):
            os.waitpid(load._pid, os.WNOHANG)
        return store

    def test_child_exits_early(self) -> None:
        """A child that stops after three windows, one more taken and never sent: the
        store reads the rest of the file itself, from the first window it lacks."""
        self.patch(_parallel_load, "_child", _send_then_exit(3))
        store = self.assertLoadsEverything()
        self.assertGreater(store.parsed_by_child, 0)

    def test_child_fails_at_once(self) -> None:
        """A child that raises before sending anything: the store reads the whole file."""

        def failing(*args: Any, **kwargs: Any) -> None:
            raise RuntimeError("boom")

        self.patch(_parallel_load, "_child", failing)
        store = self.assertLoadsEverything()
        self.assertEqual(store.parsed_by_child, 0)

    def test_child_sends_garbage(self) -> None:
        """A message that is not a window ends the child's part; nothing of it is used."""

        def garbage(region: object, queue: int, parse: object, writer: int) -> None:
            os.read(queue, 4)
            for body in (b"\x00\x00\x00\x03abc", b"\x00\x00\x00\x02N."):
                os.write(writer, body)

        self.patch(_parallel_load, "_child", garbage)
        store = self.assertLoadsEverything()
        self.assertEqual(store.parsed_by_child, 0)

    def test_child_stalls(self) -> None:
        """
        A child that takes a window, then is silent for longer than STALL_SECONDS: the
        store reads the rest of the file itself, and the child is killed and reaped.
        """
        self.patch(_parallel_load, "STALL_SECONDS", 0.05)

        def stalling(region: object, queue: int, parse: object, writer: int) -> None:
            os.read(queue, 4)
            time.sleep(30)

        self.patch(_parallel_load, "_child", stalling)
        started = time.monotonic()
        self.assertLoadsEverything()
        self.assertLess(time.monotonic() - started, 20)


class WhenNotParallelTests(SynchronousTestCase):
    """No child is forked where it is unsafe or would not pay."""

    def test_small_file(self) -> None:
        """A file under MIN_OCTETS is loaded by the store alone."""
        path = write_file(self, HEADER_3, _bulk_rows()[:100])
        self.patch(_parallel_load, "_single_threaded", lambda: True)
        self.assertLess(path.stat().st_size, _parallel_load.MIN_OCTETS)
        self.assertEqual(loaded(path, parallel=True).parsed_by_child, 0)

    def test_other_threads(self) -> None:
        """A process running other threads does not fork."""
        self.patch(_parallel_load, "MIN_OCTETS", 0)
        self.patch(_parallel_load, "_single_threaded", lambda: False)
        path = write_file(self, HEADER_3, _bulk_rows()[:100])
        self.assertEqual(loaded(path, parallel=True).parsed_by_child, 0)

    def test_single_threaded(self) -> None:
        """The thread check counts the threads running."""
        import threading

        self.assertEqual(_parallel_load._single_threaded(), threading.active_count() == 1)

    def test_turned_off(self) -> None:
        """C{parallel=False} never forks."""
        force_parallel(self)
        path = write_file(self, HEADER_3, _bulk_rows()[:100])
        self.assertEqual(loaded(path, parallel=False).parsed_by_child, 0)

    def test_uri(self) -> None:
        """A C{kea-csv:} URI loads in parallel unless it says C{parallel=no}."""
        force_parallel(self)
        path = write_file(self, HEADER_3, _bulk_rows()[:100])
        clock = Clock()
        clock.advance(NOW_EQ)
        for query, parallel in (("", True), ("&parallel=no", False), ("&parallel=yes", True)):
            store = open_store_uri(f"kea-csv:{path}?follow=no&warm=no{query}", clock)
            self.assertEqual(store.parsed_by_child > 0, parallel, query)
            self.assertEqual(len(by_key(store)), len(_reference(_bulk_rows()[:100], True)))


class ParsedRowsTests(SynchronousTestCase):
    """Parsed rows travel between processes as plain values."""

    def test_round_trip(self) -> None:
        """
        Rows parsed, made plain and rebuilt are equal to the parsed ones, and rows of one
        user context share one relay summary object again.
        """
        header = HEADER_3.split(",")
        rows = [*_bulk_rows()[:60], "bad"]
        parsed = RowParser().parse(rows, Columns.from_header(header), NOW_EQ, False)
        rebuilt = ParsedRows.from_plain(parsed.plain())
        self.assertEqual(rebuilt, parsed)
        self.assertEqual(len(parsed.problems), 1)
        distinct = {id(relay) for relay in rebuilt.relays}
        self.assertEqual(len(distinct), len({id(relay) for relay in parsed.relays}))

    def test_windows_share_relay_values(self) -> None:
        """
        Summaries rebuilt from two windows' messages (each marshalled on its own) share
        their Relay-ID tuples and link-address numbers, as the summaries of one serial
        parse do: memory does not grow with the number of windows.
        """
        import marshal

        header = Columns.from_header(HEADER_3.split(","))
        rows = _bulk_rows()[:40]
        rebuilt = [
            ParsedRows.from_plain(
                marshal.loads(marshal.dumps(RowParser().parse(part, header, NOW_EQ).plain()))
            )
            for part in (rows[:20], rows[20:])
        ]
        first, second = (window.relays[0] for window in rebuilt)
        self.assertEqual(first.relay_ids, second.relay_ids)
        self.assertIs(first.relay_ids, second.relay_ids)
        self.assertIsNotNone(first.link_address)
        self.assertIs(first.link_address, second.link_address)

    def test_malformed_refused(self) -> None:
        """Values that are not parsed rows raise ValueError, never anything else."""
        header = HEADER_3.split(",")
        parsed = RowParser().parse(_bulk_rows()[:5], Columns.from_header(header), NOW_EQ)
        good = list(parsed.plain())
        cases: list[object] = [
            None,
            (),
            "text",
            tuple(good[:7]),
            (*good[:6], [99] * len(good[6]), good[7]),
            (*good[:5], [(1, 2)], good[6], good[7]),
            (*good[:5], [[b"x", [1], (), None]], [0], good[7]),
            (good[0][:-1], *good[1:]),
            (*good[:7], "problems"),
        ]
        for value in cases:
            with self.assertRaises(ValueError, msg=repr(value)):
                ParsedRows.from_plain(value)
