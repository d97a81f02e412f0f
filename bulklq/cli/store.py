"""
C{bulklq store}: fill, dump and inspect binding stores.

  - C{bulklq store import --store sqlite:PATH FILE [--format jsonl|kea-csv]
    [--kea-config KEA_DHCP6_CONF]}: insert or replace the bindings (and links) of a JSON
    lines file (docs/stores.md) or of an ISC Kea memfile lease file (its active leases) in
    an SQLite store, creating the database if needed. C{-} reads JSON lines from stdin.
  - C{bulklq store export --store URI [--output FILE]}: every binding (expired ones
    included) and link of a store as JSON lines, to stdout by default. Works for
    C{sqlite:}, C{memory:} and C{kea-csv:} stores.
  - C{bulklq store stats --store URI [--json]}: counts of bindings, links and index rows.
  - C{bulklq store install-notify --store postgresql://... [--remove | --sql]}: install (or
    remove) the C{lease6} trigger through which a PostgreSQL store publishes changes for
    Active Leasequery (L{bulklq.stores.postgresql_changes}); C{--sql} prints the SQL for a
    DBA to run instead, without connecting.

Exit codes: 0 success, 1 the store or input could not be used (one line on stderr naming the
file and, for bad input, the line), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

from ..model import Binding, Link
from ._arguments import EXIT_USAGE, one_line_errors

__all__ = ["EXIT_FAILURE", "EXIT_OK", "EXIT_USAGE", "register"]

#: Success.
EXIT_OK = 0
#: The store or the input could not be used.
EXIT_FAILURE = 1


class _CommandError(Exception):
    """A one-line reason the command failed (exit status 1)."""


def register(subparsers: Any) -> None:
    """
    Add the C{store} subcommand and its C{import}, C{export}, C{stats} and
    C{install-notify} actions.
    """
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "store",
        help="import, export and inspect binding stores",
        description=(
            "Import bindings into an SQLite store, export a store as JSON lines, or show its "
            "counts. Exit codes: 0 success, 1 store or input unusable, 2 bad arguments."
        ),
    )
    one_line_errors(parser)
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    importer = actions.add_parser(
        "import",
        help="insert or replace bindings from JSON lines or a Kea lease file",
        description="Insert or replace bindings (and links) in an SQLite store.",
    )
    one_line_errors(importer)
    importer.add_argument("--store", required=True, metavar="sqlite:PATH", help="the store")
    importer.add_argument("file", metavar="FILE", help="the input file; - for stdin (jsonl)")
    importer.add_argument(
        "--format",
        choices=("jsonl", "kea-csv"),
        default="jsonl",
        help="JSON lines (docs/stores.md, the default) or a Kea memfile lease file",
    )
    importer.add_argument(
        "--kea-config",
        metavar="KEA_DHCP6_CONF",
        help="with --format kea-csv: Kea's configuration, for the subnets' prefixes",
    )
    importer.set_defaults(run=_run_import)

    exporter = actions.add_parser(
        "export",
        help="write a store's links and bindings as JSON lines",
        description="Write every link and binding (expired included) as JSON lines.",
    )
    one_line_errors(exporter)
    exporter.add_argument("--store", required=True, metavar="URI", help="the store")
    exporter.add_argument("--output", "-o", metavar="FILE", help="write here, not to stdout")
    exporter.set_defaults(run=_run_export)

    stats = actions.add_parser(
        "stats",
        help="count a store's bindings, links and index rows",
        description="Count a store's bindings, links and (SQLite) index rows.",
    )
    one_line_errors(stats)
    stats.add_argument("--store", required=True, metavar="URI", help="the store")
    stats.add_argument("--json", action="store_true", help="one JSON object")
    stats.set_defaults(run=_run_stats)

    notify = actions.add_parser(
        "install-notify",
        help="install the lease6 trigger a PostgreSQL store's change feed needs",
        description=(
            "Install (or with --remove, remove) the trigger on Kea's lease6 table that "
            "notifies bulklq of every lease written, for Active Leasequery. Needs a role "
            "that may create triggers on lease6; --sql prints the SQL instead."
        ),
    )
    one_line_errors(notify)
    notify.add_argument(
        "--store", metavar="postgresql://...", help="the lease database (not with --sql)"
    )
    what = notify.add_mutually_exclusive_group()
    what.add_argument("--remove", action="store_true", help="remove the trigger instead")
    what.add_argument("--sql", action="store_true", help="print the SQL, connect nowhere")
    notify.set_defaults(run=_run_install_notify)


def _guarded(action: Callable[[argparse.Namespace], None], arguments: argparse.Namespace) -> int:
    try:
        action(arguments)
    except _CommandError as error:
        print(f"bulklq store {arguments.action}: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except (ValueError, OSError) as error:
        text = str(error) if not isinstance(error, OSError) else _os_error(error)
        print(f"bulklq store {arguments.action}: {text}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _os_error(error: OSError) -> str:
    if error.filename is not None and error.strerror:
        return f"{error.filename}: {error.strerror}"
    return str(error)


def _sqlite_path(uri: str) -> str:
    from ..stores import split_store_uri, store_scheme  # noqa: PLC0415

    if store_scheme(uri) != "sqlite":
        raise _CommandError(f"{uri!r}: only an sqlite: store can be written")
    path, _ = split_store_uri(uri, "sqlite", {"threads"})
    if not path:
        raise _CommandError("sqlite: needs the database's path")
    return path


def _global_reactor() -> Any:
    from twisted.internet import reactor  # noqa: PLC0415

    return reactor


# import


def _jsonl_records(name: str) -> Iterator[Link | Binding]:
    from ..stores.jsonl import read_records  # noqa: PLC0415

    if name == "-":
        yield from read_records(sys.stdin, "<stdin>")
        return
    with open(name, encoding="utf-8") as lines:
        yield from read_records(lines, name)


def _kea_records(name: str, kea_config: str | None) -> Iterator[Link | Binding]:
    try:
        from ..stores.kea_csv import open_store_uri  # noqa: PLC0415
    except ImportError:  # pragma: no cover - the kea-csv store ships with bulklq
        raise _CommandError("the kea-csv reader is not available") from None
    if name == "-":
        raise _CommandError("--format kea-csv needs a file, not stdin")
    with open(name, "rb"):
        pass  # a clear error for a missing or unreadable file
    uri = f"kea-csv:{quote(name)}?follow=no"
    if kea_config is not None:
        uri += f"&kea-config={quote(kea_config)}"
    try:
        store = open_store_uri(uri, _global_reactor())
    except Exception as error:  # KeaCsvError and friends: one line
        raise _CommandError(str(error)) from None
    try:
        yield from store.links()
        yield from store.bindings()
    finally:
        store.close()


def _import(arguments: argparse.Namespace) -> None:
    from ..stores.sqlite import SQLiteDatabase  # noqa: PLC0415

    path = _sqlite_path(arguments.store)
    if arguments.kea_config is not None and arguments.format != "kea-csv":
        raise _CommandError("--kea-config goes with --format kea-csv")
    if arguments.format == "kea-csv":
        records = _kea_records(arguments.file, arguments.kea_config)
    else:
        records = _jsonl_records(arguments.file)
    # Like twistd's --state-dir, the database's folder is made when missing, so that a first
    # import into a fresh state directory works.
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    database = SQLiteDatabase(path)
    try:
        links = 0

        def bindings() -> Iterator[Binding]:
            nonlocal links
            for record in records:
                if isinstance(record, Link):
                    database.add_links([record])
                    links += 1
                else:
                    yield record

        count = database.put_many(bindings())
    finally:
        database.close()
    print(f"imported {count} bindings and {links} links into {path}", file=sys.stderr)


def _run_import(arguments: argparse.Namespace) -> int:
    return _guarded(_import, arguments)


# export and stats


def _open_readable(
    uri: str,
) -> tuple[Callable[[], list[Link]], Callable[[], Iterable[Binding]], Callable[[], Any], Any]:
    """The store's links and bindings readers, a closer, and the store (or database)."""
    from ..stores import open_store, store_scheme  # noqa: PLC0415

    if store_scheme(uri) == "sqlite":
        from ..stores.sqlite import SQLiteDatabase  # noqa: PLC0415

        path = _sqlite_path(uri)
        with open(path, "rb"):
            pass  # do not create a database just to export or count it
        database = SQLiteDatabase(path)
        return database.links, database.bindings, database.close, database
    if store_scheme(uri) == "kea-csv" and "follow=" not in uri:
        uri += ("&" if "?" in uri else "?") + "follow=no"
    try:
        store = open_store(uri, _global_reactor())
    except (ValueError, OSError):
        raise
    except Exception as error:  # a store's own error type (KeaCsvError): one line
        raise _CommandError(str(error)) from None
    links = getattr(store, "links", None)
    bindings = getattr(store, "bindings", None)
    if not callable(links) or not callable(bindings):
        store.close()
        raise _CommandError(f"the {store.name} store cannot list its bindings")
    return links, bindings, store.close, store


def _export(arguments: argparse.Namespace) -> None:
    from ..stores.jsonl import write_records  # noqa: PLC0415

    links, bindings, close, _ = _open_readable(arguments.store)
    try:
        out: IO[str]
        if arguments.output is None:
            count = write_records(sys.stdout, links(), bindings())
            sys.stdout.flush()
        else:
            with open(arguments.output, "w", encoding="utf-8") as out:
                count = write_records(out, links(), bindings())
    finally:
        close()
    print(f"exported {count} bindings", file=sys.stderr)


def _run_export(arguments: argparse.Namespace) -> int:
    return _guarded(_export, arguments)


def _stats(arguments: argparse.Namespace) -> None:
    from ..stores.sqlite import SQLiteDatabase  # noqa: PLC0415

    links, bindings, close, source = _open_readable(arguments.store)
    try:
        if isinstance(source, SQLiteDatabase):
            counts: dict[str, int] = source.stats()
        else:
            counts = {
                "bindings": sum(1 for _ in bindings()),
                "links": len(links()),
            }
    finally:
        close()
    if arguments.json:
        print(json.dumps(counts))
    else:
        for name, value in counts.items():
            print(f"{name}: {value}")


def _run_stats(arguments: argparse.Namespace) -> int:
    return _guarded(_stats, arguments)


# install-notify


def _install_notify(arguments: argparse.Namespace) -> None:
    from ..stores import postgresql_changes as changes  # noqa: PLC0415
    from ..stores import store_scheme  # noqa: PLC0415

    if arguments.sql:
        if arguments.store is not None:
            raise _CommandError("--sql prints the SQL and takes no --store")
        sys.stdout.write(changes.INSTALL_SQL.lstrip())
        return
    uri = arguments.store
    if store_scheme(uri) not in ("postgresql", "postgres"):
        raise _CommandError(f"{uri!r}: only a postgresql:// store has a trigger to install")
    from ..stores.postgresql import parse_postgresql_uri  # noqa: PLC0415

    # Where the listener connects: the primary (a standby cannot have triggers created).
    stripped, options = changes.split_changes_options(uri)
    conninfo = options.listener_conninfo(parse_postgresql_uri(stripped).conninfo)
    import psycopg  # noqa: PLC0415

    try:
        if arguments.remove:
            changes.uninstall_notify(conninfo)
        else:
            changes.install_notify(conninfo)
    except psycopg.Error as error:
        text = " ".join(str(error).split()) or type(error).__name__
        raise _CommandError(f"database error: {text}") from None
    done = "removed from" if arguments.remove else "installed on"
    print(f"trigger {changes.TRIGGER} {done} lease6", file=sys.stderr)


def _run_install_notify(arguments: argparse.Namespace) -> int:
    if arguments.store is None and not arguments.sql:
        print("bulklq store install-notify: --store postgresql://... or --sql", file=sys.stderr)
        return EXIT_USAGE
    return _guarded(_install_notify, arguments)
