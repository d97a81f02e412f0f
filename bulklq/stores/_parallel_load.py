"""
Loading a large Kea lease file on two cores: a forked child parses most of its rows.

Parsing a row (splitting it, its numbers, its DUID and above all its user context's relay
chain) is most of what loading a Kea memfile costs, and it depends on nothing but the text;
applying the parsed rows to the store's table must be done in order, by the process that
serves. So L{ParallelLoad.start} forks a child that reads the same file (through the
parent's descriptor, with C{pread}, leaving the parent's position alone) in windows of
complete lines; it parses most windows itself and sends the L{ParsedRows} back over a pipe,
and leaves one window in L{EVERY} to the parent, which parses it while the child works on
the next ones. The parent applies every window in order (L{ParallelLoad.windows}).

The child never logs, touches nothing but its own memory and the pipe, and always leaves
through C{os._exit}. If it stops early, stalls or sends something malformed, the parent
reads the rest of the file itself, from the first window it has not applied. A fork is only
made where it is safe and pays: a platform with C{os.fork}, a process running no other
thread (a child of a threaded process may inherit locks held by the other threads), and a
file of at least L{MIN_OCTETS} left to read.
"""

from __future__ import annotations

import marshal
import os
import select
import signal
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import suppress
from typing import Any, NamedTuple

from ._kea_rows import ParsedRows, split_lines

__all__ = ["EVERY", "MIN_OCTETS", "ParallelLoad", "Window"]

#: Files with less than this left to read are loaded by the parent alone (a fork costs a
#: few milliseconds; 4 MiB is about 10,000 rows, parsed in about a tenth of a second).
MIN_OCTETS = 4 << 20
#: Octets the child reads at a time: one window of complete lines.
WINDOW_OCTETS = 1 << 20
#: One window in this many is left to the parent to parse: the parent also applies every
#: row, and builds the index once the child is done.
EVERY = 3
#: The pipe's capacity asked for (Linux allows unprivileged processes up to 1 MiB).
PIPE_OCTETS = 1 << 20
#: A message's header: its length in octets.
_FRAME = struct.Struct(">I")
#: Seconds without a word from the child after which the parent reads the rest itself.
STALL_SECONDS = 10.0

#: C{parse(lines, returns)}: the rows of complete lines (see L{RowParser.parse}).
Parse = Callable[[list[str], bool], ParsedRows]


class Window(NamedTuple):
    """
    Complete lines of the file, from octet C{start} to C{end} (just after a newline),
    beginning with line number C{first_line}; C{rows} are their parsed rows, or C{None} when
    the parent is to parse them.
    """

    first_line: int
    lines: int
    start: int
    end: int
    rows: ParsedRows | None


class ParallelLoad:
    """
    A forked child parsing a lease file's rows ahead of the parent; see the module
    docstring. Create it with L{start}, take its L{windows} in order, then L{close} it.
    """

    def __init__(self, pid: int, reader: int) -> None:
        self._pid = pid
        self._reader = reader
        os.set_blocking(reader, False)
        #: What the child sent and was not taken yet; whether it closed the pipe.
        self._buffer = bytearray()
        self._ended = False
        #: Rows the child parsed (for tests and benchmarks).
        self.parsed = 0

    @classmethod
    def start(
        cls, fd: int, start: int, end: int, first_line: int, parse: Parse
    ) -> ParallelLoad | None:
        """
        Fork a child parsing, with C{parse}, the lines of the file open as C{fd} from octet
        C{start} (the beginning of line C{first_line}) to octet C{end}; C{None} when no
        child is started (see the module docstring for when).
        """
        if not hasattr(os, "fork") or end - start < MIN_OCTETS or not _single_threaded():
            return None
        try:
            reader, writer = os.pipe()
        except OSError:
            return None
        try:
            pid = os.fork()
        except OSError:
            os.close(reader)
            os.close(writer)
            return None
        if pid == 0:  # pragma: no cover - the child; the parent checks what it sends
            status = 1
            try:
                os.close(reader)
                _child(fd, start, end, first_line, parse=parse, writer=writer)
                status = 0
            finally:
                os._exit(status)
        os.close(writer)
        with suppress(ImportError, AttributeError, OSError):  # Linux: room for a few windows
            import fcntl  # noqa: PLC0415 - POSIX only

            fcntl.fcntl(reader, fcntl.F_SETPIPE_SZ, PIPE_OCTETS)
        return cls(pid, reader)

    def windows(self) -> Iterator[Window]:
        """
        The windows the child went through, in order, until it ends (or stops early,
        stalls or sends something malformed: the caller then reads the rest itself).
        """
        while True:
            body = self._message()
            if body is None:
                return
            try:
                # From the child this process forked (checked here and by from_plain).
                first_line, lines, start, end, plain = marshal.loads(body)  # noqa: S302
                rows = None if plain is None else ParsedRows.from_plain(plain)
            except (EOFError, ValueError, TypeError):
                return
            if not all(type(value) is int for value in (first_line, lines, start, end)):
                return
            if rows is not None:
                self.parsed += len(rows.addresses) + len(rows.problems)
            yield Window(first_line, lines, start, end, rows)

    def _message(self) -> bytes | None:
        """The child's next message, or C{None} if it ended, stopped or stalled."""
        buffer = self._buffer
        while True:
            # Whatever has come, taken at once: the child never waits on a full pipe
            # while this process parses or applies a window.
            self._drain()
            if len(buffer) >= _FRAME.size:
                (length,) = _FRAME.unpack_from(buffer)
                end = _FRAME.size + length
                if len(buffer) >= end:
                    body = bytes(buffer[_FRAME.size : end])
                    del buffer[:end]
                    return body
            if self._ended:
                return None
            ready, _, _ = select.select([self._reader], [], [], STALL_SECONDS)
            if not ready:
                return None

    def _drain(self) -> None:
        """Read what the pipe holds, without waiting; note when the child closed it."""
        while not self._ended:
            try:
                data = os.read(self._reader, 1 << 20)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._ended = True
                return
            self._buffer += data

    def close(self) -> None:
        """Stop the child (if it still runs) and reap it."""
        if self._reader < 0:
            return
        os.close(self._reader)
        self._reader = -1
        with suppress(OSError):  # it may have ended (then the kill is harmless)
            os.kill(self._pid, signal.SIGKILL)
        with suppress(ChildProcessError):  # reaped by somebody else
            os.waitpid(self._pid, 0)


def _single_threaded() -> bool:
    """Whether this process runs no thread but the main one (forking is then safe)."""
    return threading.active_count() == 1


def _child(  # pragma: no cover - runs in the forked child
    fd: int, start: int, end: int, first_line: int, *, parse: Parse, writer: int
) -> None:
    """Parse the windows of C{[start, end)} and send them to C{writer}."""
    offset = start
    line = first_line
    pending = b""
    window = 0
    while offset < end:
        data = os.pread(fd, min(WINDOW_OCTETS, end - offset), offset)
        if not data:
            break
        begin = offset - len(pending)
        offset += len(data)
        data = pending + data
        last = data.rfind(b"\n")
        if last < 0:
            pending = data
            continue
        pending = data[last + 1 :]
        chunk = data[:last]
        count = chunk.count(b"\n") + 1
        plain: Any = None
        if window % EVERY:
            lines, returns = split_lines(chunk)
            plain = parse(lines, returns).plain()
        _send(writer, (line, count, begin, begin + last + 1, plain))
        line += count
        window += 1
    os.close(writer)


def _send(writer: int, message: tuple[Any, ...]) -> None:  # pragma: no cover - in the child
    data = marshal.dumps(message)
    view = memoryview(_FRAME.pack(len(data)) + data)
    while view:
        view = view[os.write(writer, view) :]
