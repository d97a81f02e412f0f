"""
Loading a large Kea lease file on two cores: a forked child parses rows alongside the store.

Parsing a row (splitting it, its numbers, its DUID and above all its user context's relay
chain) is most of what loading a Kea memfile costs, and it depends on nothing but the text;
applying the parsed rows to the store's table must be done in order, by the process that
serves. So L{ParallelLoad.start} cuts the file into windows of L{WINDOW_OCTETS} (window
M{k} holds the lines that begin in its octets) and forks a child. Both processes take the
next window from a shared queue (a pipe filled with the windows' numbers before the fork:
a read of four octets takes one number, atomically) and parse it; the child sends its
L{ParsedRows} back over another pipe, and the store applies every window in order
(L{ParallelLoad.windows}), parsing a window itself whenever the next one to apply is not
ready. So the two processes share the parsing whatever their speeds.

The child never logs, touches nothing but its own memory and the pipes, and always leaves
through C{os._exit}. If it stops early, stalls or sends something malformed, the store
reads the rest of the file itself, from the first window it has not applied. A fork is
only made where it is safe and pays: a platform with C{os.fork}, a process running no other
thread (a child of a threaded process may inherit locks held by the other threads), and at
least L{MIN_OCTETS} of complete lines to read.
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

__all__ = ["MIN_OCTETS", "WINDOW_OCTETS", "ParallelLoad", "Window"]

#: Files with less than this to read are loaded by the store alone (a fork costs a few
#: milliseconds; 4 MiB is about 10,000 rows, parsed in about a tenth of a second).
MIN_OCTETS = 4 << 20
#: The octets of a window: small enough for the two processes to end together, large
#: enough that a window's message costs little.
WINDOW_OCTETS = 256 << 10
#: The capacity asked for the pipe of parsed windows (Linux allows unprivileged processes
#: up to 1 MiB): room for a few windows, so the child rarely waits for the store.
PIPE_OCTETS = 1 << 20
#: Seconds without a word from the child after which the store parses the rest itself.
STALL_SECONDS = 10.0
#: A window number in the queue; a message's length before it.
_NUMBER = struct.Struct(">I")
#: Octets read at a time when looking for the newline that ends a window.
_SCAN_OCTETS = 4096

#: C{parse(lines, returns)}: the rows of complete lines (see L{RowParser.parse}).
Parse = Callable[[list[str], bool], ParsedRows]


class Window(NamedTuple):
    """
    The C{lines} complete lines of the file from octet C{start} to C{end} (just after a
    newline), the first being line number C{first_line}, and their parsed C{rows}.
    """

    first_line: int
    lines: int
    start: int
    end: int
    rows: ParsedRows


class _Region:
    """The complete lines of an open file from octet C{start} to C{end}, in windows."""

    def __init__(self, fd: int, start: int, end: int) -> None:
        self.fd = fd
        self.start = start
        self.end = end
        self.count = -(-(end - start) // WINDOW_OCTETS)

    @classmethod
    def of(cls, fd: int, start: int, size: int) -> _Region:
        """The complete lines from octet C{start} (a line's start) to the file's C{size}."""
        end = size
        while end > start:
            low = max(start, end - _SCAN_OCTETS)
            found = os.pread(fd, end - low, low).rfind(b"\n")
            if found >= 0:
                return cls(fd, start, low + found + 1)
            end = low
        return cls(fd, start, start)

    def _line_start(self, position: int) -> int:
        """The first line beginning at or after C{position} (C{end} if none)."""
        if position <= self.start:
            return self.start
        if position >= self.end:
            return self.end
        offset = position - 1  # a line begins at position if the octet before is "\n"
        while offset < self.end:
            data = os.pread(self.fd, min(_SCAN_OCTETS, self.end - offset), offset)
            if not data:
                return self.end
            found = data.find(b"\n")
            if found >= 0:
                return offset + found + 1
            offset += len(data)
        return self.end

    def bounds(self, number: int) -> tuple[int, int]:
        """The octets of window C{number}: from its first line's start to its end."""
        low = self.start + number * WINDOW_OCTETS
        return self._line_start(low), self._line_start(low + WINDOW_OCTETS)

    def lines(self, number: int) -> tuple[int, int, list[str], bool] | None:
        """
        Window C{number}: its bounds, its lines and whether one had a carriage return;
        C{None} if the file no longer holds it (it was cut short).
        """
        start, end = self.bounds(number)
        if start >= end:
            return start, end, [], False
        data = os.pread(self.fd, end - start, start)
        if len(data) != end - start or data[-1:] != b"\n":
            return None
        lines, returns = split_lines(data[:-1])
        return start, end, lines, returns


class ParallelLoad:
    """
    A forked child parsing a lease file's windows alongside the store; see the module
    docstring. Create it with L{start}, take its L{windows} in order, then L{close} it.
    """

    def __init__(
        self, region: _Region, first_line: int, parse: Parse, *, pid: int, queue: int, reader: int
    ) -> None:
        self._region = region
        self._first_line = first_line
        self._parse = parse
        self._pid = pid
        self._queue = queue
        self._reader = reader
        os.set_blocking(reader, False)
        #: What the child sent and was not taken yet; whether it closed its pipe.
        self._buffer = bytearray()
        self._ended = False
        #: Windows parsed (by either process) and not yet yielded: number -> (start, end,
        #: lines, rows).
        self._ready: dict[int, tuple[int, int, int, ParsedRows]] = {}
        #: Rows the child parsed (for tests and benchmarks).
        self.parsed = 0

    @classmethod
    def start(
        cls, fd: int, start: int, end: int, first_line: int, parse: Parse
    ) -> ParallelLoad | None:
        """
        Fork a child to parse, with C{parse}, the complete lines of the file open as C{fd}
        from octet C{start} (the beginning of line C{first_line}) to octet C{end} (the
        file's size: a last line without its newline is left out), alongside this process;
        C{None} when no child is started (see the module docstring for when).
        """
        if not hasattr(os, "fork") or end - start < MIN_OCTETS or not _single_threaded():
            return None
        region = _Region.of(fd, start, end)
        try:
            queue, filler = os.pipe()
        except OSError:
            return None
        try:
            with suppress(ImportError, AttributeError, OSError):
                import fcntl  # noqa: PLC0415 - POSIX only

                fcntl.fcntl(queue, fcntl.F_SETPIPE_SZ, PIPE_OCTETS)
            numbers = b"".join(_NUMBER.pack(number) for number in range(region.count))
            os.set_blocking(filler, False)  # a queue too small for them refuses, never waits
            if os.write(filler, numbers) != len(numbers):
                raise OSError("the window queue is too small")
        except OSError:
            os.close(queue)
            return None
        finally:
            os.close(filler)
        try:
            reader, writer = os.pipe()
        except OSError:
            os.close(queue)
            return None
        try:
            pid = os.fork()
        except OSError:
            for descriptor in (queue, reader, writer):
                os.close(descriptor)
            return None
        if pid == 0:  # pragma: no cover - the child; the store checks what it sends
            status = 1
            try:
                os.close(reader)
                _child(region, queue, parse, writer)
                status = 0
            finally:
                os._exit(status)
        os.close(writer)
        with suppress(ImportError, AttributeError, OSError):
            import fcntl  # noqa: PLC0415 - POSIX only

            fcntl.fcntl(reader, fcntl.F_SETPIPE_SZ, PIPE_OCTETS)
        return cls(region, first_line, parse, pid=pid, queue=queue, reader=reader)

    def windows(self) -> Iterator[Window]:
        """
        Every window in order, parsed by the child or by this process; they stop early if
        the child stops early, stalls or sends something malformed, or if the file was cut
        short (the caller then reads the rest of the file itself).
        """
        ready = self._ready
        line = self._first_line
        for number in range(self._region.count):
            while number not in ready:
                self._receive()
                if number in ready:
                    break
                taken = self._take()
                if taken is None:
                    # Every window is taken: the one wanted is the child's.
                    if not self._wait():
                        return  # it is gone: the caller reads the rest itself
                elif not self._parse_here(taken):
                    return
            start, end, lines, rows = ready.pop(number)
            yield Window(line, lines, start, end, rows)
            line += lines

    def _take(self) -> int | None:
        """The next window of the queue, or C{None} once it is empty."""
        try:
            data = os.read(self._queue, _NUMBER.size)
        except OSError:
            return None
        if len(data) != _NUMBER.size:
            return None
        return int(_NUMBER.unpack(data)[0])

    def _parse_here(self, number: int) -> bool:
        """Parse window C{number} in this process; C{False} if the file was cut short."""
        window = self._region.lines(number)
        if window is None:
            return False
        start, end, lines, returns = window
        self._ready[number] = (start, end, len(lines), self._parse(lines, returns))
        return True

    def _receive(self) -> None:
        """Take the windows the child has sent so far."""
        buffer = self._buffer
        self._drain()
        while len(buffer) >= _NUMBER.size:
            (length,) = _NUMBER.unpack_from(buffer)
            stop = _NUMBER.size + length
            if len(buffer) < stop:
                return
            body = bytes(buffer[_NUMBER.size : stop])
            del buffer[:stop]
            try:
                # From the child this process forked (checked here and by from_plain).
                number, lines, plain = marshal.loads(body)  # noqa: S302
                rows = ParsedRows.from_plain(plain)
                if type(number) is not int or type(lines) is not int:
                    raise TypeError("not numbers")
                start, end = self._region.bounds(number)
            except (EOFError, ValueError, TypeError, OSError):
                self._stop()  # nothing more from it is used
                return
            self.parsed += len(rows.addresses) + len(rows.problems)
            self._ready.setdefault(number, (start, end, lines, rows))

    def _drain(self) -> None:
        """Read what the child's pipe holds, without waiting; note when it is closed."""
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

    def _wait(self) -> bool:
        """Wait for the child to send more; C{False} if it ended, stopped or stalled."""
        if self._ended:
            return False
        ready, _, _ = select.select([self._reader], [], [], STALL_SECONDS)
        if not ready:
            self._stop()
            return False
        return True

    def _stop(self) -> None:
        """Stop the child: this process parses what it was missing."""
        self._ended = True
        self._buffer.clear()
        with suppress(OSError):  # it may have ended (then the kill is harmless)
            os.kill(self._pid, signal.SIGKILL)

    def close(self) -> None:
        """Stop the child (if it still runs) and reap it."""
        if self._reader < 0:
            return
        for descriptor in (self._reader, self._queue):
            os.close(descriptor)
        self._reader = self._queue = -1
        self._ready.clear()
        with suppress(OSError):  # it may have ended (then the kill is harmless)
            os.kill(self._pid, signal.SIGKILL)
        with suppress(ChildProcessError):  # reaped by somebody else
            os.waitpid(self._pid, 0)


def _single_threaded() -> bool:
    """Whether this process runs no thread but the main one (forking is then safe)."""
    return threading.active_count() == 1


def _child(  # pragma: no cover - runs in the forked child
    region: _Region, queue: int, parse: Parse, writer: int
) -> None:
    """Parse the windows taken from C{queue}; send each to C{writer}."""
    while True:
        data = os.read(queue, _NUMBER.size)
        if len(data) != _NUMBER.size:
            break
        (number,) = _NUMBER.unpack(data)
        window = region.lines(number)
        if window is None:
            break
        _, _, lines, returns = window
        _send(writer, (number, len(lines), parse(lines, returns).plain()))
    os.close(writer)


def _send(writer: int, message: tuple[Any, ...]) -> None:  # pragma: no cover - in the child
    data = marshal.dumps(message)
    view = memoryview(_NUMBER.pack(len(data)) + data)
    while view:
        view = view[os.write(writer, view) :]
