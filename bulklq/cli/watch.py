"""
C{bulklq watch}: keep up with a server's binding changes through Active Leasequery
(RFC 7653) and print them, keep a state file, or both.

Exit codes (those of C{bulklq query} where they mean the same): 0 stopped (signal, or
C{--until-synchronised} reached), 2 bad arguments or an unusable state file, 3 the server
refused the active query (NotSupported, NotAllowed, MalformedQuery, ...), 6 TLS refused by
the server or the TLS handshake failed, 141 the output was closed. Connection trouble is
retried, never an exit. See docs/watch.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterable
from ipaddress import IPv6Address, IPv6Network
from typing import IO, Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.task import LoopingCall

from ..client import (
    ACTIVE_LQ_IDLE_TIMEOUT,
    ACTIVE_LQ_RCV_TIMEOUT,
    ActiveQuery,
    ActiveQueryRefused,
    ActiveWatcher,
    BindingChange,
    DirectTLSEndpoint,
    ReplicaKey,
    Requestor,
    RequestorOptions,
    ServerAddress,
    StartTLSEndpoint,
    mutual_tls_options,
    replica_key,
)
from ..client.output import NextHop, RoutesWriter, binding_to_json
from ..model import AddressLease, Binding, PrefixLease
from ..wire import (
    Duid,
    LQRelayData,
    WireError,
    decode_options,
    encode_options,
)
from ._arguments import (
    EXIT_USAGE,
    add_requestor_arguments,
    add_route_arguments,
    one_line_errors,
    positive,
    react_exit_code,
    typed,
)
from .query import (
    EXIT_BROKEN_PIPE,
    EXIT_OK,
    EXIT_SERVER_ERROR,
    add_selector_arguments,
    build_query,
    default_requestor_duid,
)

__all__ = [
    "EXIT_TLS",
    "STATE_VERSION",
    "load_state",
    "register",
    "run",
    "run_watch",
    "save_state",
]

#: STARTTLS was refused (TLSConnectionRefused) or the TLS handshake failed.
EXIT_TLS = 6
#: The state file's format version.
STATE_VERSION = 1


# -- the state file ---------------------------------------------------------------------


def _binding_to_state(binding: Binding) -> dict[str, Any]:
    return {
        "client_id": binding.client_id.raw.hex(),
        "link": binding.link_id,
        "cltt": binding.cltt,
        "addresses": [
            [str(lease.address), lease.preferred_lifetime, lease.valid_lifetime]
            for lease in binding.addresses
        ],
        "prefixes": [
            [str(lease.prefix), lease.preferred_lifetime, lease.valid_lifetime]
            for lease in binding.prefixes
        ],
        "relay_data": None if binding.relay_data is None else binding.relay_data.encode().hex(),
        "options": encode_options(binding.options).hex(),
    }


def _binding_from_state(value: dict[str, Any]) -> Binding:
    relay_data: LQRelayData | None = None
    if value["relay_data"] is not None:
        raw = bytes.fromhex(value["relay_data"])
        (option,) = decode_options(raw, 0, len(raw), 1)
        if not isinstance(option, LQRelayData):
            raise ValueError("relay_data is not OPTION_LQ_RELAY_DATA")
        relay_data = option
    options = bytes.fromhex(value["options"])
    return Binding(
        Duid(bytes.fromhex(value["client_id"])),
        str(value["link"]),
        int(value["cltt"]),
        tuple(AddressLease(IPv6Address(a), int(p), int(v)) for a, p, v in value["addresses"]),
        tuple(PrefixLease(IPv6Network(n), int(p), int(v)) for n, p, v in value["prefixes"]),
        relay_data,
        options=decode_options(options, 0, len(options), 1),
    )


def save_state(
    path: str, server: str, query: str, base_time: int | None, bindings: Iterable[Binding]
) -> None:
    """
    Write the state file atomically (a temporary file in the same directory, flushed to
    disk, then renamed over C{path}): the replica and the base time to resume from.
    """
    document = {
        "version": STATE_VERSION,
        "server": server,
        "query": query,
        "base_time": base_time,
        "bindings": [_binding_to_state(binding) for binding in bindings],
    }
    directory = os.path.dirname(os.path.abspath(path))
    descriptor, temporary = tempfile.mkstemp(prefix=".bulklq-watch-", dir=directory)
    try:
        with os.fdopen(descriptor, "w") as file:
            json.dump(document, file, separators=(",", ":"))
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with _suppress_os_error():
            os.unlink(temporary)
        raise


class _suppress_os_error:  # noqa: N801 - used as a context manager
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, value: Any, traceback: Any) -> bool:
        return kind is not None and issubclass(kind, OSError)


def load_state(path: str) -> tuple[str, str, int | None, dict[ReplicaKey, Binding]]:
    """
    Read a state file: (server, query description, base time, replica).

    @raise ValueError: with a one-line reason when it cannot be used.
    """
    try:
        with open(path) as file:
            document = json.load(file)
        if document.get("version") != STATE_VERSION:
            raise ValueError(f"unknown version {document.get('version')!r}")
        base_time = document["base_time"]
        if base_time is not None and not (isinstance(base_time, int) and base_time >= 0):
            raise ValueError(f"bad base_time {base_time!r}")
        bindings = [_binding_from_state(value) for value in document["bindings"]]
        return (
            str(document["server"]),
            str(document["query"]),
            base_time,
            {replica_key(binding): binding for binding in bindings},
        )
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error.strerror}") from None
    except (KeyError, TypeError, ValueError, WireError) as error:
        raise ValueError(f"{path} is not a bulklq watch state file: {error}") from None


# -- printing changes -------------------------------------------------------------------


class _ChangePrinter:
    """Prints each change as a JSON line or as C{ip -6 route} commands."""

    def __init__(
        self,
        out: IO[str],
        form: str,
        device: str | None,
        choice: NextHop,
        now: Callable[[], float],
    ) -> None:
        self._out = out
        self._form = form
        self._device = device
        self._routes = RoutesWriter(out, device, choice, now)

    def __call__(self, change: BindingChange) -> None:
        if self._form == "jsonl":
            line = {
                "event": "remove" if change.removed else "update",
                "catch_up": change.catch_up,
                "base_time": change.base_time,
                "binding": binding_to_json(change.binding),
            }
            self._out.write(json.dumps(line, separators=(",", ":")) + "\n")
        elif self._form == "routes":
            self._route_lines(change)
        self._out.flush()

    def _route_lines(self, change: BindingChange) -> None:
        kept: set[IPv6Network] = set()
        if not change.removed:
            kept = {lease.prefix for lease in change.binding.prefixes}
            self._routes.binding(change.binding)
        gone: list[IPv6Network] = []
        for binding in (change.previous, change.binding if change.removed else None):
            if binding is not None:
                gone += [lease.prefix for lease in binding.prefixes if lease.prefix not in kept]
        device = f" dev {self._device}" if self._device else ""
        for prefix in dict.fromkeys(gone):
            self._out.write(f"ip -6 route del {prefix}{device}\n")


# -- the command ------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    """Add the C{watch} subcommand."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "watch",
        help="follow a server's binding changes (Active Leasequery, RFC 7653)",
        description=(
            "Open an Active Leasequery to SERVER (over STARTTLS with --tls-*, or TLS from the "
            "first octet with --tls-direct as well), catch up from "
            "the saved base time, print every binding change and keep a state file. "
            "Without a query option every binding is watched. Exit codes: 0 stopped, "
            "2 bad arguments or state file, 3 the server refused the query, 6 TLS refused "
            "or failed, 141 output closed."
        ),
    )
    one_line_errors(parser)
    parser.add_argument("server", metavar="SERVER", help="host, host:port or [IPv6]:port")
    add_selector_arguments(parser)
    seconds = typed(positive, "a number of seconds")
    tls = parser.add_argument_group(
        "TLS (all three for mutual authentication: STARTTLS, or TLS at connect with --tls-direct)"
    )
    tls.add_argument("--tls-cert", metavar="PEM", help="this requestor's certificate")
    tls.add_argument("--tls-key", metavar="PEM", help="this requestor's private key")
    tls.add_argument("--tls-ca", metavar="PEM", help="the CA the server's certificate is from")
    tls.add_argument(
        "--tls-direct", action="store_true",
        help="start TLS at connect, without STARTTLS (a server's ssl: listener)",
    )  # fmt: skip
    tls.add_argument(
        "--tls-name", metavar="NAME",
        help="the name (or address) the server's certificate must match (default: SERVER's)",
    )  # fmt: skip
    parser.add_argument(
        "--state", metavar="FILE",
        help="keep the replica and the base time here (atomic writes); resume from it",
    )  # fmt: skip
    parser.add_argument(
        "--save-interval", type=seconds, default=5.0, metavar="S",
        help="write the state file at most every S seconds (default 5), and at exit",
    )  # fmt: skip
    parser.add_argument(
        "--format", choices=("jsonl", "routes", "none"), default="jsonl",
        help="print each change as a JSON line, as 'ip -6 route replace/del' lines, or not",
    )  # fmt: skip
    add_route_arguments(parser)
    parser.add_argument(
        "--fallback", choices=("window", "full"), default="window",
        help="after DataMissing: bulk query for the missing window (RFC 7653), or take a "
        "full snapshot (also drops bindings deleted meanwhile)",
    )  # fmt: skip
    parser.add_argument(
        "--no-snapshot", action="store_true",
        help="without a saved base time, do not start with a bulk query",
    )  # fmt: skip
    parser.add_argument(
        "--until-synchronised", action="store_true",
        help="exit 0 once the replica is in step (catch-up and fallback done)",
    )  # fmt: skip
    parser.add_argument(
        "--receive-timeout", type=seconds, default=ACTIVE_LQ_RCV_TIMEOUT, metavar="S",
        help="reconnect after S seconds without a message (ACTIVE_LQ_RCV_TIMEOUT, 120)",
    )  # fmt: skip
    parser.add_argument(
        "--retry-interval", type=seconds, default=ACTIVE_LQ_IDLE_TIMEOUT, metavar="S",
        help="wait at least S seconds between connection attempts (default 60)",
    )  # fmt: skip
    add_requestor_arguments(parser)
    parser.set_defaults(run=run, port=547)


def _query(arguments: argparse.Namespace) -> ActiveQuery:
    try:
        return ActiveQuery(build_query(arguments))
    except ValueError:
        return ActiveQuery(None, relay_data=True)


def _tls_endpoint_factory(
    arguments: argparse.Namespace, clock: IReactorTime, server: ServerAddress
) -> Callable[[ServerAddress], IStreamClientEndpoint] | None:
    paths = (arguments.tls_cert, arguments.tls_key, arguments.tls_ca)
    if not any(paths):
        if arguments.tls_direct:
            raise ValueError("--tls-direct needs --tls-cert, --tls-key and --tls-ca")
        return None
    if not all(paths):
        raise ValueError("give all of --tls-cert, --tls-key and --tls-ca")
    try:
        pems = []
        for path in paths:
            with open(path, "rb") as file:
                pems.append(file.read())
    except OSError as error:
        raise ValueError(f"cannot read {error.filename}: {error.strerror}") from None
    cert, key, ca = pems
    options = mutual_tls_options(arguments.tls_name or server.host, ca, cert, key)

    # --tls-direct: a server's ssl: listener, TLS from the first octet (no STARTTLS).
    kind = DirectTLSEndpoint if arguments.tls_direct else StartTLSEndpoint

    def factory(address: ServerAddress) -> IStreamClientEndpoint:
        return kind(
            address.endpoint(clock, arguments.connect_timeout),
            options,
            clock,
            arguments.connect_timeout,
        )

    return factory


async def run_watch(
    clock: IReactorTime,
    arguments: argparse.Namespace,
    out: IO[str],
    err: IO[str],
    *,
    endpoint_factory: Callable[[ServerAddress], IStreamClientEndpoint] | None = None,
    stop: Deferred[None] | None = None,
    now: Callable[[], float] | None = None,
) -> int:
    """
    Run C{bulklq watch} on a reactor (C{clock}) until C{stop} fires, the server refuses,
    or (with C{--until-synchronised}) the replica is in step; returns the exit status.
    Tests pass a Clock and an C{endpoint_factory} (which then replaces TCP and TLS).
    """
    prog = "bulklq watch"
    query = _query(arguments)
    try:
        server = ServerAddress.parse(arguments.server)
        tls_factory = _tls_endpoint_factory(arguments, clock, server)
        state: tuple[str, str, int | None, dict[ReplicaKey, Binding]] | None = None
        if arguments.state and os.path.exists(arguments.state):
            state = load_state(arguments.state)
            if state[0] != str(server) or state[1] != query.describe():
                raise ValueError(
                    f"{arguments.state} is for {state[1]} on {state[0]}, "
                    f"not {query.describe()} on {server}"
                )
    except ValueError as error:
        err.write(f"{prog}: error: {error}\n")
        return EXIT_USAGE
    endpoint_factory = endpoint_factory or tls_factory
    requestor = Requestor(
        arguments.requestor_duid or default_requestor_duid(),
        clock,
        RequestorOptions(connect_timeout=arguments.connect_timeout, retries=3),
        endpoint_factory,
    )
    watcher = ActiveWatcher(
        requestor,
        server,
        query,
        start_time=None if state is None else state[2],
        replica=None if state is None else state[3],
        endpoint_factory=endpoint_factory,
        receive_timeout=arguments.receive_timeout,
        retry_interval=arguments.retry_interval,
        snapshot=not arguments.no_snapshot,
        fallback=arguments.fallback,
        on_note=lambda text: err.write(f"{prog}: note: {text}\n"),
    )
    broken: list[bool] = []
    if arguments.format != "none":
        printer = _ChangePrinter(
            out, arguments.format, arguments.dev, NextHop(arguments.next_hop), now or clock.seconds
        )

        def show(change: BindingChange) -> None:
            if broken:
                return
            try:
                printer(change)
            except BrokenPipeError:
                broken.append(True)
                watcher.stop()

        watcher.subscribe(show)

    def save() -> None:
        if arguments.state:
            try:
                save_state(
                    arguments.state,
                    str(server),
                    query.describe(),
                    watcher.base_time,
                    list(watcher.replica.values()),
                )
            except OSError as error:
                err.write(f"{prog}: cannot write {arguments.state}: {error.strerror}\n")

    saver = LoopingCall(save)
    saver.clock = clock
    if arguments.state:
        saver.start(arguments.save_interval, now=False)
    checker: LoopingCall | None = None
    if arguments.until_synchronised:

        def check() -> None:
            if watcher.synchronised:
                watcher.stop()

        checker = LoopingCall(check)
        checker.clock = clock
        checker.start(0.05, now=False)
    if stop is not None:

        def stopping(_: object) -> None:
            save()  # at once: during a reactor shutdown there may be no later turn
            watcher.stop()

        stop.addCallback(stopping)
    code = EXIT_OK
    try:
        await watcher.start()
    except ActiveQueryRefused as error:
        err.write(f"{prog}: {error}\n")
        code = EXIT_TLS if error.tls else EXIT_SERVER_ERROR
    finally:
        if saver.running:
            saver.stop()
        if checker is not None and checker.running:
            checker.stop()
    save()
    if broken:
        return EXIT_BROKEN_PIPE
    return code


def run(arguments: argparse.Namespace) -> int:
    """The subcommand's entry point: L{run_watch} on the global reactor until a signal."""

    def start(reactor: Any) -> Any:
        stop: Deferred[None] = Deferred()
        reactor.addSystemEventTrigger(
            "before", "shutdown", lambda: None if stop.called else stop.callback(None)
        )

        async def main() -> None:
            code = await run_watch(reactor, arguments, sys.stdout, sys.stderr, stop=stop)
            raise SystemExit(code)

        return Deferred.fromCoroutine(main())

    return react_exit_code(start)
