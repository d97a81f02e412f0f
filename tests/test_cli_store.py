"""Tests for C{bulklq store} (L{bulklq.cli.store})."""

from __future__ import annotations

import io
import json
import os
import sys

from twisted.trial.unittest import SynchronousTestCase

from bulklq.cli import main
from bulklq.cli.store import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from bulklq.model import Binding
from bulklq.stores.jsonl import read_records, write_records
from bulklq.stores.sqlite import SQLiteDatabase
from bulklq.testing import contract_dataset, make_binding, make_link

_KEA_HEADER = (
    "address,duid,valid_lifetime,expire,subnet_id,pref_lifetime,lease_type,iaid,prefix_len,"
    "fqdn_fwd,fqdn_rev,hostname,hwaddr,state,user_context,hwtype,hwaddr_source\n"
)
_KEA_OPTIONS = "0x0012000467652D300025000A00007ED96C696E652D310035000D000200007ED972656C61792D61"
_KEA_ROW = (
    "2001:db8:1::{n},00:03:00:01:02:00:00:00:00:0{n},3600,4000003600,1,1800,0,1,128,0,0,,,0,"
    '{{ "ISC": {{ "relays": [ {{ "hop": 0&#x2c "link": "2001:db8:1::1"&#x2c '
    '"options": "' + _KEA_OPTIONS + '"&#x2c "peer": "fe80::1" }} ] }} }},1,0\n'
)


class StoreCommandTests(SynchronousTestCase):
    """C{bulklq store import/export/stats}."""

    def setUp(self) -> None:
        self.stdout = io.StringIO()
        self.stderr = io.StringIO()
        self.patch(sys, "stdout", self.stdout)
        self.patch(sys, "stderr", self.stderr)
        self.database = self.mktemp()
        self.store = f"sqlite:{self.database}"

    def run_command(self, *argv: str) -> int:
        """Run C{bulklq ARGV}; a usage error's SystemExit becomes its status."""
        try:
            return main(list(argv))
        except SystemExit as exit_:
            return int(exit_.code or 0)

    def write_jsonl(self) -> tuple[str, tuple[object, ...], tuple[object, ...]]:
        """A JSON lines file of the contract dataset; its path, links and bindings."""
        links, bindings = contract_dataset()
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as out:
            write_records(out, links, bindings)
        return path, links, bindings

    def test_import_export_round_trip(self) -> None:
        """
        Importing JSON lines into SQLite and exporting them again gives the same links and
        bindings (in key order), to stdout or to a file.
        """
        path, links, bindings = self.write_jsonl()
        self.assertEqual(self.run_command("store", "import", "--store", self.store, path), EXIT_OK)
        self.assertIn(
            f"imported {len(bindings)} bindings and {len(links)} links", self.stderr.getvalue()
        )
        self.assertEqual(self.run_command("store", "export", "--store", self.store), EXIT_OK)
        exported = list(read_records(io.StringIO(self.stdout.getvalue())))
        ordered = sorted(bindings, key=lambda b: b.key)  # type: ignore[attr-defined]
        self.assertEqual(exported, [*links, *ordered])
        output = self.mktemp()
        self.assertEqual(
            self.run_command("store", "export", "--store", self.store, "-o", output), EXIT_OK
        )
        with open(output, encoding="utf-8") as lines:
            self.assertEqual(list(read_records(lines)), exported)

    def test_import_makes_the_database_folder(self) -> None:
        """
        A first import into a state directory that does not exist yet creates it, as the
        README's quick start does with C{.bulklq-state/bindings.sqlite3}.
        """
        path, _, bindings = self.write_jsonl()
        database = os.path.join(self.mktemp(), "state", "bindings.sqlite3")
        store = f"sqlite:{database}"
        self.assertEqual(self.run_command("store", "import", "--store", store, path), EXIT_OK)
        self.assertTrue(os.path.isfile(database))
        self.assertEqual(self.run_command("store", "export", "--store", store), EXIT_OK)
        exported = list(read_records(io.StringIO(self.stdout.getvalue())))
        self.assertEqual(len([r for r in exported if isinstance(r, Binding)]), len(bindings))

    def test_import_replaces(self) -> None:
        """Importing a binding again replaces it (last wins), not duplicates it."""
        first = self.mktemp()
        with open(first, "w", encoding="utf-8") as out:
            write_records(out, [], [make_binding(1, cltt=5)])
            write_records(out, [], [make_binding(1, cltt=6)])
        self.run_command("store", "import", "--store", self.store, first)
        self.run_command("store", "import", "--store", self.store, first)
        database = SQLiteDatabase(self.database)
        self.addCleanup(database.close)
        self.assertEqual(list(database.bindings()), [make_binding(1, cltt=6)])

    def test_import_stdin(self) -> None:
        """C{-} reads JSON lines from stdin."""
        text = io.StringIO()
        write_records(text, [make_link()], [make_binding(1)])
        self.patch(sys, "stdin", io.StringIO(text.getvalue()))
        self.assertEqual(self.run_command("store", "import", "--store", self.store, "-"), EXIT_OK)
        self.assertIn("imported 1 bindings and 1 links", self.stderr.getvalue())

    def test_import_bad_line(self) -> None:
        """A bad line stops the import with exit 1 and one line naming file and line."""
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as out:
            out.write('{"type":"link","id":"a","prefixes":[]}\n{"type":"binding"}\n')
        status = self.run_command("store", "import", "--store", self.store, path)
        self.assertEqual(status, EXIT_FAILURE)
        message = self.stderr.getvalue()
        self.assertEqual(message.count("\n"), 1)
        self.assertIn(f"bulklq store import: {path}:2: binding: missing 'duid'", message)

    def test_import_kea_csv(self) -> None:
        """
        C{--format kea-csv} imports a Kea memfile lease file's active leases, with their
        relay chains (the Relay-ID is found by query).
        """
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as out:
            out.write(_KEA_HEADER + _KEA_ROW.format(n=1) + _KEA_ROW.format(n=2))
        status = self.run_command(
            "store", "import", "--store", self.store, "--format", "kea-csv", path
        )
        self.assertEqual(status, EXIT_OK, self.stderr.getvalue())
        database = SQLiteDatabase(self.database)
        self.addCleanup(database.close)
        bindings = list(database.bindings())
        self.assertEqual(len(bindings), 2)
        self.assertTrue(all(binding.relay_ids for binding in bindings))

    def test_import_kea_csv_missing(self) -> None:
        """A missing Kea lease file is exit 1 with one line."""
        status = self.run_command(
            "store", "import", "--store", self.store, "--format", "kea-csv", "/nonexistent.csv"
        )
        self.assertEqual(status, EXIT_FAILURE)
        self.assertIn("/nonexistent.csv: No such file or directory", self.stderr.getvalue())

    def test_import_needs_sqlite(self) -> None:
        """Only an sqlite: store can be imported into."""
        path, _, _ = self.write_jsonl()
        self.assertEqual(
            self.run_command("store", "import", "--store", "memory:", path), EXIT_FAILURE
        )
        self.assertIn("only an sqlite: store can be written", self.stderr.getvalue())

    def test_kea_config_needs_kea_format(self) -> None:
        """--kea-config without --format kea-csv is refused."""
        path, _, _ = self.write_jsonl()
        status = self.run_command(
            "store", "import", "--store", self.store, "--kea-config", "/x", path
        )
        self.assertEqual(status, EXIT_FAILURE)

    def test_stats(self) -> None:
        """C{stats} counts bindings, links and index rows, as text or JSON."""
        path, links, bindings = self.write_jsonl()
        self.run_command("store", "import", "--store", self.store, path)
        self.assertEqual(
            self.run_command("store", "stats", "--store", self.store, "--json"), EXIT_OK
        )
        counts = json.loads(self.stdout.getvalue())
        self.assertEqual(counts["bindings"], len(bindings))
        self.assertEqual(counts["links"], len(links))
        self.stdout.truncate(0)
        self.stdout.seek(0)
        self.run_command("store", "stats", "--store", self.store)
        self.assertIn(f"bindings: {len(bindings)}\n", self.stdout.getvalue())

    def test_stats_memory_store(self) -> None:
        """C{stats} and C{export} work on a C{memory:PATH} store too."""
        path, links, bindings = self.write_jsonl()
        self.assertEqual(
            self.run_command("store", "stats", "--store", f"memory:{path}", "--json"), EXIT_OK
        )
        self.assertEqual(
            json.loads(self.stdout.getvalue()), {"bindings": len(bindings), "links": len(links)}
        )

    def test_missing_database(self) -> None:
        """Exporting or counting a database that does not exist fails and creates nothing."""
        self.assertEqual(self.run_command("store", "export", "--store", self.store), EXIT_FAILURE)
        self.assertIn("No such file or directory", self.stderr.getvalue())
        import os

        self.assertFalse(os.path.exists(self.database))

    def test_bad_store_uri(self) -> None:
        """An unknown scheme is exit 1 with one line."""
        self.assertEqual(self.run_command("store", "stats", "--store", "nope:x"), EXIT_FAILURE)
        self.assertIn("unknown store scheme 'nope'", self.stderr.getvalue())
        self.assertEqual(self.stderr.getvalue().count("\n"), 1)

    def test_newer_database(self) -> None:
        """A database from a newer bulklq is exit 1 with the reason."""
        import sqlite3

        SQLiteDatabase(self.database).close()
        connection = sqlite3.connect(self.database)
        connection.execute("INSERT INTO schema_version (version) VALUES (999)")
        connection.commit()
        connection.close()
        self.assertEqual(self.run_command("store", "stats", "--store", self.store), EXIT_FAILURE)
        self.assertIn("newer than this bulklq", self.stderr.getvalue())

    def test_usage_errors(self) -> None:
        """Missing arguments or an unknown action exit 2 with one line."""
        self.assertEqual(self.run_command("store", "import", "x.jsonl"), EXIT_USAGE)
        self.assertEqual(self.run_command("store", "frobnicate"), EXIT_USAGE)
        self.assertEqual(
            self.run_command("store", "import", "--store", self.store, "--format", "xml", "f"),
            EXIT_USAGE,
        )
        for line in self.stderr.getvalue().splitlines():
            self.assertIn("error:", line)
