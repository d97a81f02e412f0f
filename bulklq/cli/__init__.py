"""
The C{bulklq} command: C{bulklq query} (the requestor), C{bulklq watch} (Active
Leasequery) and C{bulklq store} (store tools).

Each subcommand lives in its own module with a C{register(subparsers)} function that adds its
parser and sets C{run} (a callable taking the parsed arguments and returning the exit code).
Bad arguments print one line and exit with status 2 (argparse's convention); no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["main"]

#: Subcommand modules, in the order C{--help} lists them.
SUBCOMMANDS = ("bulklq.cli.query", "bulklq.cli.watch", "bulklq.cli.store")


def build_parser() -> argparse.ArgumentParser:
    """The C{bulklq} argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="bulklq", description="DHCPv6 Bulk Leasequery (RFC 5460) requestor and tools."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in SUBCOMMANDS:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the C{bulklq} command; returns the exit status."""
    parser = build_parser()
    arguments = parser.parse_args(argv)
    try:
        status: int = arguments.run(arguments)
    except KeyboardInterrupt:
        print("bulklq: interrupted", file=sys.stderr)
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
