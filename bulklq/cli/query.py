"""
C{bulklq query}: ask one or more Bulk Leasequery servers and print the bindings.

Exit codes: 0 success (also with no bindings), 2 bad arguments, 3 a server answered with an
error status, 4 an incomplete answer (stream cut, QueryTerminated, data timeout), 5 no
connection to a server. With several servers the highest code applies. See
docs/requestor.md.
"""

from __future__ import annotations

import argparse
import gc
import io
import os
import socket
import sys
import uuid
from collections.abc import Callable, Sequence
from ipaddress import IPv6Address
from typing import IO, Any, cast

from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.task import LoopingCall

from ..client import (
    LeaseQuery,
    QueryResult,
    QueryStatus,
    Requestor,
    RequestorOptions,
    ServerAddress,
    StopStreaming,
)
from ..client.output import (
    FORMATS,
    BindingWriter,
    CsvWriter,
    JsonLinesWriter,
    JsonWriter,
    NextHop,
    RoutesWriter,
    TableWriter,
)
from ..model import Binding
from ..wire import BULK_LQ_DATA_TIMEOUT, Duid, RemoteId
from ._arguments import (
    EXIT_USAGE,
    add_requestor_arguments,
    add_route_arguments,
    count,
    one_line_errors,
    port,
    positive,
    react_exit_code,
    typed,
)

__all__ = [
    "EXIT_BROKEN_PIPE",
    "EXIT_CONNECTION_FAILED",
    "EXIT_INCOMPLETE",
    "EXIT_OK",
    "EXIT_SERVER_ERROR",
    "EXIT_USAGE",
    "add_selector_arguments",
    "build_query",
    "default_requestor_duid",
    "exit_code",
    "register",
    "run",
    "run_query",
]

#: Every server answered completely (with or without bindings).
EXIT_OK = 0
#: A server answered with an error status (NotConfigured, NotAllowed, MalformedQuery, ...).
EXIT_SERVER_ERROR = 3
#: An answer is incomplete: the stream stopped before DONE, QueryTerminated, data timeout.
EXIT_INCOMPLETE = 4
#: No connection could be made to a server (after the retries).
EXIT_CONNECTION_FAILED = 5
#: The output was closed before everything was written (C{| head}), as a shell reports
#: a process ended by SIGPIPE.
EXIT_BROKEN_PIPE = 141

#: How many jsonl lines are written at once when the output is not a terminal.
_JSONL_BATCH = 512

_CODES = {
    QueryStatus.SUCCESS: EXIT_OK,
    QueryStatus.SERVER_ERROR: EXIT_SERVER_ERROR,
    QueryStatus.TERMINATED: EXIT_INCOMPLETE,
    QueryStatus.INCOMPLETE: EXIT_INCOMPLETE,
    QueryStatus.TIMEOUT: EXIT_INCOMPLETE,
    QueryStatus.CONNECTION_FAILED: EXIT_CONNECTION_FAILED,
}


def exit_code(result: QueryResult) -> int:
    """The command's exit status for C{result}: the highest of the servers' codes."""
    return max((_CODES[server.status] for server in result.servers), default=EXIT_OK)


def default_requestor_duid() -> Duid:
    """A DUID-UUID derived from this host's name: stable on one host, distinct across hosts."""
    return Duid.uuid(uuid.uuid5(uuid.NAMESPACE_DNS, f"bulklq-requestor.{socket.getfqdn()}").bytes)


def add_selector_arguments(parser: argparse.ArgumentParser) -> None:
    """
    The query selectors (C{--relay-id}, C{--remote-id}, C{--client-id}, C{--address},
    C{--link}, C{--relay-data}) that L{build_query} reads; shared with C{bulklq watch}.
    """
    kind = parser.add_argument_group("what to ask (one of these; --link alone asks by link)")
    exclusive = kind.add_mutually_exclusive_group()
    exclusive.add_argument(
        "--relay-id", type=typed(Duid.from_text, "a DUID"), metavar="DUID",
        help="QUERY_BY_RELAY_ID: bindings relayed by this relay DUID (hex)",
    )  # fmt: skip
    exclusive.add_argument(
        "--remote-id", type=typed(RemoteId.from_text, "ENTERPRISE:HEX"),
        metavar="ENTERPRISE:HEX",
        help="QUERY_BY_REMOTE_ID: bindings relayed with this Remote-ID",
    )  # fmt: skip
    exclusive.add_argument(
        "--client-id", type=typed(Duid.from_text, "a DUID"), metavar="DUID",
        help="QUERY_BY_CLIENTID: this client's bindings",
    )  # fmt: skip
    exclusive.add_argument(
        "--address", type=typed(IPv6Address, "an IPv6 address"), metavar="ADDR",
        help="QUERY_BY_ADDRESS: the binding holding this address or a prefix containing it",
    )  # fmt: skip
    kind.add_argument(
        "--link", type=typed(IPv6Address, "an IPv6 address"), metavar="ADDR",
        help="alone: QUERY_BY_LINK_ADDRESS; with another query: only bindings on that link",
    )  # fmt: skip
    parser.add_argument(
        "--relay-data", action="store_true",
        help="ask for each client's relay data (LQ_RELAY_DATA)",
    )  # fmt: skip


def register(subparsers: Any) -> None:
    """Add the C{query} subcommand."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "query",
        help="ask Bulk Leasequery servers for bindings",
        description=(
            "Ask one or more DHCPv6 Bulk Leasequery (RFC 5460) servers for bindings and print "
            "them. Exit codes: 0 success, 2 bad arguments, 3 server error status, "
            "4 incomplete answer or timeout, 5 connection failure."
        ),
    )
    one_line_errors(parser)
    parser.add_argument(
        "servers",
        nargs="+",
        metavar="SERVER",
        help="host, host:port, IPv6 address or [IPv6]:port",
    )
    add_selector_arguments(parser)
    parser.add_argument(
        "--port", type=typed(port, "a port"), default=547,
        help="server port when SERVER does not give one (default 547)",
    )  # fmt: skip
    parser.add_argument(
        "--timeout", type=typed(positive, "a number of seconds"),
        default=float(BULK_LQ_DATA_TIMEOUT), metavar="S",
        help="data timeout: give up after S seconds without data (default 300)",
    )  # fmt: skip
    parser.add_argument(
        "--retries", type=typed(count, "a count"), default=3, metavar="N",
        help="retry a failed server N times with back-off (default 3)",
    )  # fmt: skip
    add_requestor_arguments(parser)
    parser.add_argument(
        "--format", choices=FORMATS, default="table",
        help="output format (default table)",
    )  # fmt: skip
    parser.add_argument(
        "--stream", action="store_true",
        help="print bindings as they arrive, unmerged, in constant memory (not with json)",
    )  # fmt: skip
    add_route_arguments(parser)
    parser.set_defaults(run=run)


def build_query(arguments: argparse.Namespace) -> LeaseQuery:
    """
    The L{LeaseQuery} the arguments ask for.

    @raise ValueError: if no query is given.
    """
    link = arguments.link or IPv6Address(0)
    relay_data = arguments.relay_data
    if arguments.relay_id is not None:
        return LeaseQuery.by_relay_id(arguments.relay_id, link, relay_data)
    if arguments.remote_id is not None:
        return LeaseQuery.by_remote_id(arguments.remote_id, link, relay_data)
    if arguments.client_id is not None:
        return LeaseQuery.by_client_id(arguments.client_id, link, relay_data)
    if arguments.address is not None:
        return LeaseQuery.by_address(arguments.address, link, relay_data)
    if arguments.link is not None:
        return LeaseQuery.by_link_address(arguments.link, relay_data)
    raise ValueError("give one of --relay-id, --link, --remote-id, --client-id, --address")


def _writer(arguments: argparse.Namespace, out: IO[str], now: Callable[[], float]) -> BindingWriter:
    name = arguments.format
    if name == "json":
        return JsonWriter(out)
    if name == "jsonl":
        # Lines to a pipe or a file are buffered anyway: write them many at a time.
        return JsonLinesWriter(out, 1 if _isatty(out) else _JSONL_BATCH)
    if name == "csv":
        return CsvWriter(out)
    if name == "routes":
        return RoutesWriter(out, arguments.dev, NextHop(arguments.next_hop), now)
    return TableWriter(out, now)


class _Progress:
    """Bindings received and the rate, rewritten in place on a terminal every second."""

    def __init__(self, clock: IReactorTime, err: IO[str], enabled: bool) -> None:
        self.count = 0
        self._clock = clock
        self._err = err
        self._start = clock.seconds()
        self._loop: LoopingCall | None = None
        if enabled:
            self._loop = LoopingCall(self._show)
            self._loop.clock = clock
            self._loop.start(1.0, now=False)

    def binding(self, binding: Binding) -> None:
        self.count += 1

    def counting(self, write: Callable[[Binding], object]) -> Callable[[Binding], None]:
        """C{write}, counting each binding for the progress line."""

        def counted(binding: Binding) -> None:
            self.count += 1
            write(binding)

        return counted

    def counting_frames(
        self, write: Callable[[bytes, int, int, int, str], bool]
    ) -> Callable[[bytes, int, int, int, str], bool]:
        """An C{on_frame} C{write}, counting each frame it takes for the progress line."""

        def counted(data: bytes, start: int, end: int, received_at: int, link: str) -> bool:
            if write(data, start, end, received_at, link):
                self.count += 1
                return True
            return False

        return counted

    def _show(self) -> None:
        elapsed = max(self._clock.seconds() - self._start, 1e-9)
        self._err.write(f"\r{self.count} bindings, {self.count / elapsed:,.0f}/s ")
        self._err.flush()

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.stop()
            self._err.write("\r\x1b[K")
            self._err.flush()


async def run_query(
    clock: IReactorTime,
    arguments: argparse.Namespace,
    out: IO[str],
    err: IO[str],
    *,
    endpoint_factory: Callable[[ServerAddress], IStreamClientEndpoint] | None = None,
    now: Callable[[], float] | None = None,
) -> int:
    """
    Run C{bulklq query} on a reactor (C{clock}) and return the exit status; L{run} wraps
    it in C{task.react}. Tests pass a Clock and an C{endpoint_factory}.
    """
    prog = "bulklq query"
    try:
        query = build_query(arguments)
        servers = [ServerAddress.parse(text, arguments.port) for text in arguments.servers]
    except ValueError as error:
        err.write(f"{prog}: error: {error}\n")
        return EXIT_USAGE
    if arguments.stream and arguments.format == "json":
        err.write(f"{prog}: error: --stream cannot be used with --format json\n")
        return EXIT_USAGE
    clock_now = now or clock.seconds
    # While streaming, bindings are written as the query runs: a closed output must stop it.
    guard = _StreamingOutput(out) if arguments.stream else None
    writer = _writer(arguments, out if guard is None else cast(IO[str], guard), clock_now)
    requestor = Requestor(
        arguments.requestor_duid or default_requestor_duid(),
        clock,
        RequestorOptions(
            data_timeout=arguments.timeout,
            connect_timeout=arguments.connect_timeout,
            retries=arguments.retries,
            keep_bindings=not arguments.stream,
        ),
        endpoint_factory,
    )
    show_progress = _isatty(err)
    progress = _Progress(clock, err, show_progress)

    on_frame: Callable[[bytes, int, int, int, str], bool] | None = None
    if arguments.stream:
        write_binding = writer.binding
        if isinstance(writer, JsonLinesWriter):
            # jsonl writes the usual LEASEQUERY-DATA straight from its octets.
            on_frame = writer.frame
        if show_progress:
            on_binding: Callable[[Binding], object] | None = progress.counting(write_binding)
            if on_frame is not None:
                on_frame = progress.counting_frames(on_frame)
        else:
            on_binding = write_binding
    else:
        on_binding = progress.binding if show_progress else None
    try:
        writer.start()
    except (BrokenPipeError, StopStreaming):
        progress.stop()
        _discard_output(out)
        return EXIT_BROKEN_PIPE
    try:
        result = await requestor.query_all(servers, query, on_binding, on_frame=on_frame)
    finally:
        progress.stop()
    try:
        if guard is not None and guard.closed_early:
            raise BrokenPipeError
        if not arguments.stream:
            for binding in result.bindings:
                writer.binding(binding)
        writer.finish(result)
        out.flush()
    except (BrokenPipeError, StopStreaming):
        _discard_output(out)
        return EXIT_BROKEN_PIPE
    for server in result.servers:
        if not server.complete or server.discarded:
            err.write(f"{prog}: {server.describe()}\n")
    return exit_code(result)


class _StreamingOutput(io.TextIOBase):
    """
    The output while bindings are written as they arrive: a write to a closed pipe
    (C{| head}) raises L{StopStreaming}, which ends the query, instead of
    C{BrokenPipeError}, which the requestor would take for a failing consumer.
    """

    def __init__(self, out: IO[str]) -> None:
        super().__init__()
        self._out = out
        self.closed_early = False

    def write(self, text: str) -> int:
        """Write C{text} to the output."""
        try:
            return self._out.write(text)
        except BrokenPipeError:
            self.closed_early = True
            raise StopStreaming("the output was closed") from None

    def isatty(self) -> bool:
        """Whether the output is a terminal."""
        return _isatty(self._out)


def _discard_output(out: IO[str]) -> None:
    """After a broken pipe: send what is still buffered nowhere, so exit is quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, out.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):
        pass


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _block_buffered(stream: IO[str]) -> IO[str]:
    """
    C{stream} with a large buffer when it is a pipe or a file (a terminal is left as it
    is): written line by line in 8 KiB pieces, a pipe costs more system time than the
    bindings cost to format.
    """
    if _isatty(stream):
        return stream
    try:
        descriptor = stream.fileno()
    except (AttributeError, ValueError, io.UnsupportedOperation):
        return stream
    stream.flush()
    raw = io.FileIO(descriptor, "w", closefd=False)
    return io.TextIOWrapper(
        io.BufferedWriter(raw, buffer_size=1 << 18),
        encoding=getattr(stream, "encoding", None) or "utf-8",
        errors=getattr(stream, "errors", None) or "strict",
    )


def run(arguments: argparse.Namespace) -> int:
    """The subcommand's entry point: run L{run_query} on the global reactor."""

    out = _block_buffered(sys.stdout)

    async def main(reactor: Any) -> None:
        code = await run_query(reactor, arguments, out, sys.stderr)
        raise SystemExit(code)

    def start(reactor: Any) -> Any:
        from twisted.internet.defer import Deferred  # noqa: PLC0415

        return Deferred.fromCoroutine(main(reactor))

    # The command may hold millions of long-lived objects that form no cycles; the default
    # generational thresholds would rescan them over and over while they arrive.
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
    return react_exit_code(start)


def main(argv: Sequence[str] | None = None) -> int:
    """C{python -m bulklq.cli.query ...}: the subcommand on its own."""
    parser = argparse.ArgumentParser(prog="bulklq")
    register(parser.add_subparsers(dest="command", required=True))
    arguments = parser.parse_args(["query", *(sys.argv[1:] if argv is None else argv)])
    result: int = arguments.run(arguments)
    return result


if __name__ == "__main__":
    sys.exit(main())
