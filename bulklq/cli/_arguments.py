"""
What the subcommands share: argument types with one-line messages, the one-line usage error,
the arguments C{query} and C{watch} both take, and running a command on the global reactor.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, NoReturn

from twisted.internet.task import react

from ..client.output import NextHop
from ..wire import BULK_LQ_CONN_TIMEOUT, Duid, WireError

__all__ = [
    "EXIT_USAGE",
    "add_requestor_arguments",
    "add_route_arguments",
    "count",
    "one_line_errors",
    "port",
    "positive",
    "react_exit_code",
    "typed",
]

#: Bad arguments (argparse's convention).
EXIT_USAGE = 2


def typed(parse: Callable[[str], Any], what: str) -> Callable[[str], Any]:
    """
    An argparse C{type=} that calls C{parse} and reports a C{ValueError} or C{WireError} as
    "'TEXT' is not WHAT: REASON".
    """

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except (ValueError, WireError) as error:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}: {error}") from None

    convert.__name__ = what
    return convert


def positive(text: str) -> float:
    """A number above 0."""
    value = float(text)
    if not value > 0:
        raise ValueError("must be above 0")
    return value


def count(text: str) -> int:
    """An integer, 0 or more."""
    value = int(text)
    if value < 0:
        raise ValueError("must be 0 or more")
    return value


def port(text: str) -> int:
    """A TCP port, 1..65535."""
    value = int(text)
    if not 0 < value < 65536:
        raise ValueError("must be 1..65535")
    return value


def one_line_errors(parser: argparse.ArgumentParser) -> None:
    """Make C{parser} report a usage error in one line and exit with L{EXIT_USAGE}."""

    def error(message: str) -> NoReturn:
        parser.exit(EXIT_USAGE, f"{parser.prog}: error: {message} (see --help)\n")

    parser.error = error  # type: ignore[method-assign]


def add_requestor_arguments(parser: argparse.ArgumentParser) -> None:
    """C{--connect-timeout} and C{--requestor-duid}, as every requestor command takes them."""
    parser.add_argument(
        "--connect-timeout", type=typed(positive, "a number of seconds"),
        default=float(BULK_LQ_CONN_TIMEOUT), metavar="S",
        help="give up a connection attempt after S seconds (default 30)",
    )  # fmt: skip
    parser.add_argument(
        "--requestor-duid", type=typed(Duid.from_text, "a DUID"), metavar="DUID",
        help="the DUID sent as CLIENTID (default: a DUID-UUID derived from the host name)",
    )  # fmt: skip


def add_route_arguments(parser: argparse.ArgumentParser) -> None:
    """C{--dev} and C{--next-hop}, which the C{routes} format reads."""
    parser.add_argument("--dev", metavar="IF", help="routes: add 'dev IF' to each route")
    parser.add_argument(
        "--next-hop", choices=[choice.value for choice in NextHop], default="auto",
        help="routes: take the next hop from the client's address, the relay data, "
        "or the address if any else the relay data (auto, the default)",
    )  # fmt: skip


def react_exit_code(start: Callable[[Any], Any]) -> int:
    """
    Run C{start(reactor)} under C{task.react} (the global reactor) and return the exit
    status it ends with (its C{SystemExit} code), instead of leaving the process.
    """
    try:
        react(start)
    except SystemExit as done:
        return int(done.code or 0)
    return 0  # pragma: no cover - react always exits
