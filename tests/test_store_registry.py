"""Tests for the store URI registry, L{bulklq.stores}."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from bulklq import stores
from bulklq.interfaces import IBindingStore
from bulklq.model import BindingQuery
from bulklq.stores import (
    SCHEMES,
    StoreURIError,
    open_store,
    register_store_scheme,
    split_store_uri,
    store_scheme,
)
from bulklq.stores.jsonl import write_records
from bulklq.stores.memory import MemoryBindingStore
from bulklq.testing import DEFAULT_CLTT, make_binding, make_link


class RegistryTests(SynchronousTestCase):
    """open_store dispatches on the scheme; errors are one clear line."""

    def setUp(self) -> None:
        self.patch(stores, "SCHEMES", dict(SCHEMES))
        self.clock = Clock()
        self.clock.advance(DEFAULT_CLTT)

    def test_scheme(self) -> None:
        """The scheme is the text before the first colon, lower-cased."""
        self.assertEqual(store_scheme("SQLite:/tmp/x.db"), "sqlite")
        self.assertEqual(store_scheme("postgresql://user@host/kea"), "postgresql")

    def test_no_scheme(self) -> None:
        """A URI without a scheme is refused, listing the known schemes."""
        error = self.assertRaises(StoreURIError, open_store, "/var/lib/leases.db", self.clock)
        self.assertIn("has no scheme", str(error))
        self.assertIn("sqlite:", str(error))

    def test_unknown_scheme(self) -> None:
        """An unknown scheme is refused with one line naming it."""
        error = self.assertRaises(StoreURIError, open_store, "mysql://x", self.clock)
        self.assertIn("unknown store scheme 'mysql'", str(error))
        self.assertNotIn("\n", str(error))

    def test_builtin_schemes(self) -> None:
        """The built-in schemes name their modules' openers."""
        self.assertEqual(SCHEMES["kea-csv"], "bulklq.stores.kea_csv:open_store_uri")
        self.assertEqual(SCHEMES["postgres"], SCHEMES["postgresql"])
        self.assertEqual(SCHEMES["sqlite"], "bulklq.stores.sqlite:open_store_uri")

    def test_register_function(self) -> None:
        """A registered function receives the whole URI and the reactor."""
        calls: list[tuple[str, object]] = []
        made = MemoryBindingStore()

        def opener(uri: str, reactor: object) -> MemoryBindingStore:
            calls.append((uri, reactor))
            return made

        register_store_scheme("Mine", opener)
        self.assertIs(open_store(" mine:thing?x=1 ", self.clock), made)
        self.assertEqual(calls, [("mine:thing?x=1", self.clock)])

    def test_register_text_target(self) -> None:
        """A C{module:function} target is imported on first use."""
        register_store_scheme("mem2", "bulklq.stores.memory:open_store_uri")
        self.assertTrue(IBindingStore.providedBy(open_store("mem2:", self.clock)))

    def test_register_malformed(self) -> None:
        """Malformed scheme names and targets are refused."""
        self.assertRaises(StoreURIError, register_store_scheme, "1x", "a:b")
        self.assertRaises(StoreURIError, register_store_scheme, "ok", "no-colon")

    def test_missing_module(self) -> None:
        """A scheme whose module cannot be imported says the store is unavailable."""
        register_store_scheme("gone", "bulklq.stores.no_such_module:open_store_uri")
        error = self.assertRaises(StoreURIError, open_store, "gone:x", self.clock)
        self.assertIn("the gone: store is unavailable", str(error))

    def test_missing_function(self) -> None:
        """A target naming no function is refused."""
        register_store_scheme("gone", "bulklq.stores.memory:no_such_function")
        error = self.assertRaises(StoreURIError, open_store, "gone:x", self.clock)
        self.assertIn("does not exist", str(error))

    def test_not_a_store(self) -> None:
        """An opener returning something that is not an IBindingStore is refused."""
        register_store_scheme("odd", lambda uri, reactor: object())
        error = self.assertRaises(StoreURIError, open_store, "odd:", self.clock)
        self.assertIn("not an IBindingStore", str(error))


class SplitTests(SynchronousTestCase):
    """split_store_uri gives openers the path and options."""

    def test_path_forms(self) -> None:
        """Absolute, relative, triple-slash and percent-encoded paths."""
        self.assertEqual(split_store_uri("sqlite:/var/x.db", "sqlite"), ("/var/x.db", {}))
        self.assertEqual(split_store_uri("sqlite:x.db", "sqlite"), ("x.db", {}))
        self.assertEqual(split_store_uri("sqlite:///var/x.db", "sqlite"), ("/var/x.db", {}))
        self.assertEqual(split_store_uri("sqlite:/a%20b.db", "sqlite"), ("/a b.db", {}))

    def test_options(self) -> None:
        """Options come from the query string; the last of a repeated one wins."""
        self.assertEqual(
            split_store_uri(
                "kea-csv:/l.csv?kea-config=/k.conf&a=1&a=2", "kea-csv", {"kea-config", "a"}
            ),
            ("/l.csv", {"kea-config": "/k.conf", "a": "2"}),
        )

    def test_unknown_option(self) -> None:
        """An option the scheme does not accept is refused, listing those it does."""
        error = self.assertRaises(
            StoreURIError, split_store_uri, "sqlite:x?foo=1", "sqlite", {"bar"}
        )
        self.assertEqual(str(error), "sqlite: unknown option 'foo' (accepted: bar)")

    def test_malformed_options(self) -> None:
        """A query string that is not name=value pairs is refused."""
        self.assertRaises(StoreURIError, split_store_uri, "sqlite:x?foo", "sqlite", {"foo"})


class MemoryURITests(SynchronousTestCase):
    """C{memory:} and C{memory:PATH}."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(DEFAULT_CLTT)

    def test_empty(self) -> None:
        """C{memory:} opens an empty memory store."""
        store = open_store("memory:", self.clock)
        self.assertIsInstance(store, MemoryBindingStore)
        self.assertEqual(len(store), 0)  # type: ignore[arg-type]

    def test_load_file(self) -> None:
        """C{memory:PATH} loads links and bindings from a JSON lines file."""
        path = self.mktemp()
        bindings = [make_binding(n, "subnet-1") for n in (3, 1, 2)]
        with open(path, "w", encoding="utf-8") as out:
            write_records(out, [make_link("subnet-1")], bindings)
        store = open_store(f"memory:{path}", self.clock)
        page = self.successResultOf(store.fetch(BindingQuery.by_link("subnet-1"), None, 10))
        self.assertEqual(list(page.bindings), sorted(bindings, key=lambda b: b.key))
        self.assertEqual(self.successResultOf(store.get_link("subnet-1")), make_link("subnet-1"))

    def test_bad_file(self) -> None:
        """A bad line fails the open with a ValueError naming file and line."""
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as out:
            out.write("\n{bad\n")
        error = self.assertRaises(ValueError, open_store, f"memory:{path}", self.clock)
        self.assertTrue(str(error).startswith(f"{path}:2: not JSON"), str(error))

    def test_missing_file(self) -> None:
        """A missing file fails the open with OSError."""
        self.assertRaises(OSError, open_store, "memory:/nonexistent/bulklq.jsonl", self.clock)

    def test_example_file(self) -> None:
        """The example bindings shipped in examples/bindings.jsonl load into a memory store."""
        import os

        path = os.path.join(os.path.dirname(__file__), "..", "examples", "bindings.jsonl")
        store = open_store(f"memory:{path}", self.clock)
        self.assertGreater(len(store), 0)  # type: ignore[arg-type]
        self.assertGreater(len(store.links()), 0)  # type: ignore[attr-defined]
