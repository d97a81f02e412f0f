"""Tests for L{bulklq.stores.kea_csv}: Kea's memfile lease file as a binding store."""

from __future__ import annotations

import gc
import json
import os
import shutil
from collections.abc import Sequence
from ipaddress import IPv6Address, IPv6Network
from pathlib import Path

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from bulklq.model import Binding, BindingKey, BindingQuery, Link
from bulklq.stores import kea_csv, open_store
from bulklq.stores.kea_csv import KeaCsvError, KeaCsvStore, lease_file_set, open_store_uri
from bulklq.testing import BindingStoreContractMixin
from bulklq.wire import Duid, InterfaceId, RelayId, RelayMessageOption, RemoteId, encode_options

FIXTURES = Path(__file__).parent / "fixtures" / "kea"
HEADER_22 = (
    "address,duid,valid_lifetime,expire,subnet_id,pref_lifetime,lease_type,iaid,prefix_len,"
    "fqdn_fwd,fqdn_rev,hostname,hwaddr,state,user_context,hwtype,hwaddr_source"
)
HEADER_3 = HEADER_22 + ",pool_id"
#: Most fixture rows have this CLTT; their lifetimes are 3600..7200 s.
T = 1_800_000_000
RELAY_A = Duid.en(32473, b"relay-a")
RELAY_B = Duid.en(32473, b"relay-b")


def escape(text: str) -> str:
    """Kea's memfile escaping of a text column."""
    return text.replace("&", "&#x26").replace(",", "&#x2c")


def user_context(binding: Binding, style: str) -> str:
    """The C{user_context} Kea would store for C{binding}'s relay chain, escaped."""
    if binding.relay_data is None:
        return ""
    hops = []
    for layer in binding.relay_data.relay_message.layers():
        options = [o for o in layer.options if not isinstance(o, RelayMessageOption)]
        hop = {
            "hop": layer.hop_count,
            "link": str(layer.link_address),
            "peer": str(layer.peer_address),
            "options": "0x" + encode_options(options).hex().upper(),
        }
        if style == "relay-info":
            for option in options:
                if isinstance(option, RemoteId):
                    hop["remote-id"] = option.encode_data().hex()
                elif isinstance(option, RelayId):
                    hop["relay-id"] = option.duid.raw.hex()
        hops.append(hop)
    return escape(json.dumps({"ISC": {style: hops}}))


def kea_rows(binding: Binding, style: str = "relay-info", pool: bool = True) -> list[str]:
    """The rows Kea writes for C{binding} (one per address and prefix)."""
    subnet = int(binding.link_id.removeprefix("subnet-"))
    duid = ":".join(f"{octet:02x}" for octet in binding.client_id.raw)
    context = user_context(binding, style)
    rows = []
    leases = [(a.address, 128, 0, a) for a in binding.addresses] + [
        (p.prefix.network_address, p.prefix.prefixlen, 2, p) for p in binding.prefixes
    ]
    for address, length, lease_type, lease in leases:
        expire = binding.cltt + lease.valid_lifetime
        row = (
            f"{address},{duid},{lease.valid_lifetime},{expire},{subnet},"
            f"{lease.preferred_lifetime},{lease_type},1,{length},0,0,,,0,{context},1,0"
        )
        rows.append(row + (",0" if pool else ""))
    return rows


def release_rows(binding: Binding, pool: bool = True) -> list[str]:
    """Kea 2.2's release rows (valid lifetime 0) for every lease of C{binding}."""
    rows = []
    for row in kea_rows(binding, pool=pool):
        fields = row.split(",")
        fields[2] = "0"
        rows.append(",".join(fields))
    return rows


def capture_log(case: SynchronousTestCase) -> list[dict[str, object]]:
    """Collect log events for the rest of the test."""
    events: list[dict[str, object]] = []
    globalLogPublisher.addObserver(events.append)
    case.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events


def warnings_of(events: list[dict[str, object]]) -> list[str]:
    """The text of the warning events among C{events}."""
    from twisted.logger import formatEvent

    return [
        formatEvent(event)
        for event in events
        if event.get("log_level") in (LogLevel.warn, LogLevel.error)
    ]


def fetch_all(store: KeaCsvStore, query: BindingQuery, limit: int = 1000) -> list[Binding]:
    """Every binding the store answers to C{query} (it answers synchronously)."""
    found: list[Binding] = []
    resume: BindingKey | None = None
    while True:
        pages = []
        store.fetch(query, resume, limit).addCallback(pages.append)
        found.extend(pages[0].bindings)
        resume = pages[0].resume_after
        if resume is None:
            return found


class _ContractBase(BindingStoreContractMixin):
    """Load the contract's bindings through a lease file Kea could have written."""

    style = "relay-info"
    pool = True

    def make_store(self, links: Sequence[Link], bindings: Sequence[Binding]) -> KeaCsvStore:
        path = Path(self.mktemp())
        path.mkdir()
        self.lease_file = path / "kea-leases6.csv"
        header = HEADER_3 if self.pool else HEADER_22
        rows = [header]
        for binding in bindings:
            rows.extend(kea_rows(binding, self.style, self.pool))
        self.lease_file.write_text("\n".join(rows) + "\n", encoding="ascii")
        configured = {int(link.link_id.removeprefix("subnet-")): link for link in links}
        store = KeaCsvStore(self.lease_file, self.clock, configured)
        store.load()
        self.current = {binding.key: binding for binding in bindings}
        return store

    def mutate_store(
        self, store: KeaCsvStore, put: Sequence[Binding], remove: Sequence[BindingKey]
    ) -> None:
        rows = []
        for key in remove:
            rows.extend(release_rows(self.current.pop(key), self.pool))
        for binding in put:
            old = self.current.get(binding.key)
            if old is not None:
                rows.extend(release_rows(old, self.pool))
            rows.extend(kea_rows(binding, self.style, self.pool))
            self.current[binding.key] = binding
        with open(self.lease_file, "a", encoding="ascii") as handle:
            handle.write("\n".join(rows) + "\n")
        store.poll()

    def comparable(self, binding: Binding) -> object:
        """
        Kea stores each relay's own peer-address, not the address the server received the
        chain from: the store answers the outermost relay's peer-address there.
        """
        relay = binding.relay_data
        if relay is None:
            return binding
        outer = relay.relay_message.peer_address
        return attrs.evolve(binding, relay_data=attrs.evolve(relay, peer_address=outer))


class KeaCsvContractTests(_ContractBase, TestCase):
    """The store passes the store contract reading Kea 2.4+ rows (relay-info, pool_id)."""


class KeaCsv22ContractTests(_ContractBase, TestCase):
    """The store passes the store contract reading Kea 2.2 rows (relays, no pool_id)."""

    style = "relays"
    pool = False


class FixtureMixin:
    """Open fixture files in a temporary directory, with a clock at the fixtures' time."""

    def open_fixture(
        self, name: str, now: float = T + 60, config: dict[int, Link] | None = None
    ) -> KeaCsvStore:
        directory = Path(self.mktemp())  # type: ignore[attr-defined]
        directory.mkdir()
        self.lease_file = directory / "kea-leases6.csv"
        shutil.copy(FIXTURES / name, self.lease_file)
        self.clock = Clock()
        self.clock.advance(now)
        store = KeaCsvStore(self.lease_file, self.clock, config)
        store.load()
        self.addCleanup(store.close)  # type: ignore[attr-defined]
        return store


class Kea22FileTests(FixtureMixin, SynchronousTestCase):
    """A Kea 2.2 file: relays in user_context, Remote-/Relay-/Interface-IDs in options."""

    def setUp(self) -> None:
        self.store = self.open_fixture("kea-2.2-relays-leases6.csv")

    def client(self, number: int) -> Duid:
        """The DUID-LLT of fixture client C{number}."""
        return Duid.from_text(f"00:03:00:01:02:00:00:00:00:{number:02x}")

    def test_active_bindings(self) -> None:
        """
        Only active leases are served: the released (lifetime 0), declined (state 1) and
        reclaimed (state 2) ones are not; an address and a prefix of one client on one
        link form one binding.
        """
        keys = sorted((b.link_id, b.client_id) for b in self.store.bindings())
        self.assertEqual(
            keys,
            [
                ("subnet-1", self.client(1)),
                ("subnet-1", self.client(2)),
                ("subnet-2", self.client(3)),
                ("subnet-2", self.client(5)),
                ("subnet-3", self.client(6)),
            ],
        )
        [binding] = fetch_all(self.store, BindingQuery.by_client_id(self.client(1)))
        self.assertEqual([str(a.address) for a in binding.addresses], ["2001:db8:1::100"])
        self.assertEqual([str(p.prefix) for p in binding.prefixes], ["2001:db8:100::/56"])
        self.assertEqual(binding.cltt, T)
        self.assertEqual(binding.addresses[0].valid_lifetime, 3600)
        self.assertEqual(binding.addresses[0].preferred_lifetime, 1800)

    def test_ids_parsed_from_options(self) -> None:
        """Kea 2.2 rows: REMOTE_ID, RELAY_ID and INTERFACE_ID come out of the options hex."""
        [binding] = fetch_all(self.store, BindingQuery.by_client_id(self.client(1)))
        self.assertEqual(binding.relay_ids, (RELAY_A,))
        self.assertEqual(binding.remote_ids, (RemoteId(32473, b"line-1"),))
        assert binding.relay_data is not None
        layer = binding.relay_data.relay_message
        self.assertEqual(layer.option(InterfaceId), InterfaceId(b"ge-0/0/1"))
        self.assertEqual(layer.link_address, IPv6Address("2001:db8:1::1"))
        self.assertEqual(layer.peer_address, IPv6Address("fe80::1:1"))
        self.assertIsNone(layer.option(RelayMessageOption))
        self.assertEqual(binding.relay_data.peer_address, IPv6Address("fe80::1:1"))

    def test_two_relays(self) -> None:
        """
        A two-relay chain (lower-case hex) is rebuilt outermost first, the outer layer
        nesting the inner in RELAY_MSG; the ids of every hop are matched.
        """
        for query in (
            BindingQuery.by_relay_id(RELAY_B, "subnet-1"),
            BindingQuery.by_relay_id(RELAY_A, "subnet-1"),
            BindingQuery.by_remote_id(RemoteId(32473, b"line-2")),
        ):
            self.assertIn(
                self.client(2), [b.client_id for b in fetch_all(self.store, query)], query
            )
        [binding] = fetch_all(self.store, BindingQuery.by_client_id(self.client(2)))
        assert binding.relay_data is not None
        outer, inner = binding.relay_data.relay_message.layers()
        self.assertEqual((outer.hop_count, inner.hop_count), (1, 0))
        self.assertEqual(outer.link_address, IPv6Address("2001:db8:ffff::1"))
        self.assertEqual(outer.options[-1], RelayMessageOption(inner))
        self.assertEqual(inner.option(RelayId), RelayId(RELAY_A))
        self.assertEqual(binding.relay_data.peer_address, IPv6Address("2001:db8:1::2"))
        self.assertEqual(binding.relay_ids, (RELAY_B, RELAY_A))

    def test_last_row_wins(self) -> None:
        """A renewal with a new Remote-ID replaces the earlier row of the address."""
        [binding] = fetch_all(self.store, BindingQuery.by_client_id(self.client(5)))
        self.assertEqual(binding.remote_ids, (RemoteId(32473, b"line-5-new"),))
        self.assertEqual(binding.cltt, T)
        self.assertEqual(
            fetch_all(self.store, BindingQuery.by_remote_id(RemoteId(32473, b"line-5"))), []
        )

    def test_released_address(self) -> None:
        """A row with valid lifetime 0 deletes the lease (Kea 2.2's release)."""
        self.assertEqual(
            fetch_all(self.store, BindingQuery.by_address(IPv6Address("2001:db8:2::104"))), []
        )
        self.assertEqual(fetch_all(self.store, BindingQuery.by_client_id(self.client(4))), [])

    def test_derived_links(self) -> None:
        """
        Without Kea's configuration a subnet's link is found by the link-address Kea used
        (the relay nearest the client that is neither :: nor link-local: the LDRA's :: is
        skipped for the relay outside it) and by the /64 of its addresses; other
        link-addresses are NotConfigured (S9).
        """
        found = self.successResultOf(self.store.find_link(IPv6Address("2001:db8:2::1")))
        assert found is not None
        self.assertEqual(found.link_id, "subnet-2")
        self.assertIn(IPv6Network("2001:db8:2::1/128"), found.prefixes)
        found = self.successResultOf(self.store.find_link(IPv6Address("2001:db8:1::2")))
        assert found is not None
        self.assertEqual(found.link_id, "subnet-1")
        self.assertIn(IPv6Network("2001:db8:1::2/128"), found.prefixes)
        self.assertNotIn(IPv6Network("2001:db8:ffff::1/128"), found.prefixes)
        found = self.successResultOf(self.store.find_link(IPv6Address("2001:db8:3::1")))
        assert found is not None
        self.assertEqual(found.link_id, "subnet-3")
        for unknown in ("2001:db8:ffff::1", "2001:db8:9::1", "::"):
            self.assertIsNone(
                self.successResultOf(self.store.find_link(IPv6Address(unknown))), unknown
            )

    def test_unrelayed_client(self) -> None:
        """A lease stored without user context is served without relay data."""
        [binding] = fetch_all(self.store, BindingQuery.by_client_id(self.client(6)))
        self.assertIsNone(binding.relay_data)
        self.assertEqual((binding.relay_ids, binding.remote_ids), ((), ()))


class Kea3FileTests(FixtureMixin, SynchronousTestCase):
    """
    A Kea 2.4+/3.x file: relay-info with decoded ids, pool_id, Kea's own test row,
    Kea 3.2 releases (state 3, state 2), escapes and malformed rows.
    """

    def setUp(self) -> None:
        self.events = capture_log(self)
        self.store = self.open_fixture("kea-3.x-relay-info-leases6.csv")

    def test_real_row(self) -> None:
        """
        The row from Kea's test data is read: declined and long expired, it is not served;
        the same row active is, with its relay-info decoded.
        """
        real = Duid.from_text("02:02:02:02:02:02:02:02:02:02:02:02:02")
        [binding] = fetch_all(self.store, BindingQuery.by_client_id(real))
        self.assertEqual(binding.link_id, "subnet-8")
        self.assertEqual(binding.relay_ids, (Duid(b"d" * 8),))
        self.assertEqual(binding.remote_ids, (RemoteId.from_bytes(bytes.fromhex("010203040506")),))
        assert binding.relay_data is not None
        self.assertEqual(binding.relay_data.relay_message.hop_count, 44)
        self.assertEqual(binding.relay_data.peer_address, IPv6Address("2001:db8::5"))

    def test_state_3_and_2_release(self) -> None:
        """Kea 3.2's released (state 3) and reclaimed (state 2) rows remove the lease."""
        gone = Duid.from_text("00:01:00:01:29:b9:27:01:aa:bb:cc:00:00:03")
        self.assertEqual(fetch_all(self.store, BindingQuery.by_client_id(gone)), [])
        partly = Duid.from_text("00:01:00:01:29:b9:27:01:aa:bb:cc:00:00:04")
        [binding] = fetch_all(self.store, BindingQuery.by_client_id(partly))
        self.assertEqual([str(a.address) for a in binding.addresses], ["2001:db8:8::4000"])
        self.assertEqual(binding.prefixes, ())

    def test_temporary_address_and_escapes(self) -> None:
        """An IA_TA lease is an address; &#xNN escapes of any octet are undone."""
        client = Duid.from_text("00:01:00:01:29:b9:27:01:aa:bb:cc:00:00:02")
        [binding] = fetch_all(self.store, BindingQuery.by_client_id(client))
        self.assertEqual([str(a.address) for a in binding.addresses], ["2001:db8:8::2000"])
        self.assertEqual(binding.remote_ids, (RemoteId(32473, b"sub-2"),))

    def test_malformed_rows_skipped(self) -> None:
        """
        Each malformed row is skipped with a warning naming the file and line; the lease
        the address had before stays, and the rest of the file is read.
        """
        messages = warnings_of(self.events)
        self.assertEqual(len(messages), 7, messages)
        for line, message in zip(range(13, 20), messages, strict=True):
            self.assertIn(f"{self.lease_file}:{line}: malformed lease row skipped", message)
        self.assertIn("fields", messages[0])
        client = Duid.from_text("00:01:00:01:29:b9:27:01:aa:bb:cc:00:00:01")
        [binding] = fetch_all(self.store, BindingQuery.by_client_id(client))
        self.assertEqual([str(a.address) for a in binding.addresses], ["2001:db8:8::1000"])
        self.assertEqual([str(p.prefix) for p in binding.prefixes], ["2001:db8:8800::/56"])
        self.assertEqual(binding.remote_ids, (RemoteId(32473, b"sub-1"),))

    def test_every_query_type(self) -> None:
        """Each query type finds the bindings the file holds."""
        client = Duid.from_text("00:01:00:01:29:b9:27:01:aa:bb:cc:00:00:01")
        for query in (
            BindingQuery.by_address(IPv6Address("2001:db8:8::1000")),
            BindingQuery.by_address(IPv6Address("2001:db8:8800::77")),
            BindingQuery.by_remote_id(RemoteId(32473, b"sub-1")),
            BindingQuery.by_client_id(client, "subnet-8"),
        ):
            self.assertEqual([b.client_id for b in fetch_all(self.store, query)], [client], query)
        relayed = fetch_all(self.store, BindingQuery.by_relay_id(RELAY_A))
        self.assertEqual(len(relayed), 3)
        self.assertEqual(len(fetch_all(self.store, BindingQuery.by_link("subnet-8"))), 4)


class ConvertedFileTests(FixtureMixin, SynchronousTestCase):
    """A file Kea 3.2 converted from 2.2: the format is decided per row, not by header."""

    def test_mixed_rows(self) -> None:
        """2.2-style rows under a 3.2 header are read; a later relay-info row wins."""
        store = self.open_fixture("kea-3.2-converted-leases6.csv")
        old = fetch_all(store, BindingQuery.by_remote_id(RemoteId(32473, b"old-1")))
        self.assertEqual([str(a.address) for b in old for a in b.addresses], ["2001:db8:9::100"])
        self.assertEqual(fetch_all(store, BindingQuery.by_remote_id(RemoteId(32473, b"old-2"))), [])
        [new] = fetch_all(store, BindingQuery.by_remote_id(RemoteId(32473, b"new-2")))
        self.assertEqual(len(new.addresses) + len(new.prefixes), 2)
        self.assertEqual(len(fetch_all(store, BindingQuery.by_relay_id(RELAY_B))), 2)


class RealKeaFileTests(FixtureMixin, SynchronousTestCase):
    """
    The lease file a real Kea 2.2 wrote (tests/kea_harness.py): every query type returns
    exactly the leases Kea granted and did not take back.
    """

    def setUp(self) -> None:
        from bulklq.stores.kea_config import load_kea_config

        self.expected = json.loads(
            (FIXTURES / "real-kea-2.2-expected.json").read_text(encoding="utf-8")
        )
        config = load_kea_config(FIXTURES / "real-kea-2.2-dhcp6.json")
        now = self.expected["exchanged_between"][1] + 10
        self.store = self.open_fixture("real-kea-2.2-leases6.csv", now, config)

    def test_every_binding(self) -> None:
        """By client, address, prefix, Relay-ID, Remote-ID and link: exactly Kea's leases."""
        wanted = {}
        for entry in self.expected["bindings"]:
            if not entry["addresses"] and not entry["prefixes"]:
                continue
            wanted[(f"subnet-{entry['subnet_id']}", Duid.from_text(entry["duid"]).raw)] = entry
        served = {b.key: b for b in self.store.bindings()}
        self.assertEqual(sorted(served), sorted(wanted))
        for key, entry in wanted.items():
            binding = served[key]
            self.assertEqual(
                sorted(str(a.address) for a in binding.addresses),
                sorted(a["address"] for a in entry["addresses"]),
            )
            self.assertEqual(
                sorted(str(p.prefix) for p in binding.prefixes),
                sorted(p["prefix"] for p in entry["prefixes"]),
            )
            for item in entry["addresses"]:
                found = fetch_all(self.store, BindingQuery.by_address(IPv6Address(item["address"])))
                self.assertEqual([b.key for b in found], [binding.key])
            for item in entry["prefixes"]:
                inside = IPv6Network(item["prefix"]).network_address + 1
                found = fetch_all(self.store, BindingQuery.by_address(inside))
                self.assertEqual([b.key for b in found], [binding.key])
            self.assertEqual(
                [r.raw.hex() for r in binding.relay_ids], entry["relay_ids"], entry["client"]
            )
            self.assertEqual(
                [r.encode_data().hex() for r in binding.remote_ids], entry["remote_ids"]
            )
            assert binding.relay_data is not None
            layers = binding.relay_data.relay_message.layers()
            self.assertEqual(len(layers), len(entry["relay_chain"]))
            for layer, hop in zip(layers, entry["relay_chain"], strict=True):
                self.assertEqual(layer.hop_count, hop["hop_count"])
                self.assertEqual(str(layer.link_address), hop["link_address"])
                self.assertEqual(str(layer.peer_address), hop["peer_address"])
                own = [o for o in layer.options if not isinstance(o, RelayMessageOption)]
                self.assertEqual(encode_options(own).hex(), hop["options_hex"])
        for link in ("subnet-101", "subnet-202", "subnet-303"):
            self.assertEqual(
                sorted(b.key for b in fetch_all(self.store, BindingQuery.by_link(link))),
                sorted(k for k in wanted if k[0] == link),
            )
        for relay_id in {r for b in served.values() for r in b.relay_ids}:
            self.assertEqual(
                sorted(b.key for b in fetch_all(self.store, BindingQuery.by_relay_id(relay_id))),
                sorted(k for k, b in served.items() if relay_id in b.relay_ids),
            )
        for remote_id in {r for b in served.values() for r in b.remote_ids}:
            query = BindingQuery.by_remote_id(remote_id)
            self.assertEqual(
                sorted(b.key for b in fetch_all(self.store, query)),
                sorted(k for k, b in served.items() if remote_id in b.remote_ids),
            )

    def test_configured_links(self) -> None:
        """With Kea's configuration, links are its subnets' prefixes (S9 for the others)."""
        link = self.successResultOf(self.store.find_link(IPv6Address("2001:db8:2::1234")))
        assert link is not None
        self.assertEqual(link.link_id, "subnet-202")
        self.assertIsNone(self.successResultOf(self.store.find_link(IPv6Address("2001:db8:4::1"))))


def _binding_rows(number: int, cltt: int = T, remote: bytes = b"r") -> tuple[Duid, list[str]]:
    from bulklq.testing import make_binding, make_relay_data

    binding = make_binding(
        number,
        "subnet-1",
        cltt=cltt,
        prefixes=(f"2001:db8:{0x100 + number:x}::/56",),
        relay_data=make_relay_data(relay_id=RELAY_A, remote_id=RemoteId(32473, remote)),
    )
    return binding.client_id, kea_rows(binding)


class LiveFollowTests(SynchronousTestCase):
    """The store follows the lease file: appends, partial lines, Kea's LFC, rewrites."""

    def setUp(self) -> None:
        directory = Path(self.mktemp())
        directory.mkdir()
        self.path = directory / "kea-leases6.csv"
        self.clock = Clock()
        self.clock.advance(T + 10)
        self.rows = [HEADER_3]
        for number in range(1, 6):
            self.rows.extend(_binding_rows(number)[1])
        self.path.write_text("\n".join(self.rows) + "\n", encoding="ascii")
        self.store = KeaCsvStore(self.path, self.clock)
        self.store.load()
        self.store.start()
        self.addCleanup(self.store.close)

    def append(self, text: str) -> None:
        """Append raw text to the lease file, as Kea's writes do."""
        with open(self.path, "a", encoding="ascii") as handle:
            handle.write(text)

    def clients(self) -> list[Duid]:
        """The clients the store serves on subnet-1, in key order."""
        return [b.client_id for b in fetch_all(self.store, BindingQuery.by_link("subnet-1"))]

    def test_appended_rows_within_a_second(self) -> None:
        """An appended row is served after the next poll, at most one second later."""
        client, rows = _binding_rows(7)
        self.append("\n".join(rows) + "\n")
        self.assertNotIn(client, self.clients())
        self.clock.advance(1)
        self.assertIn(client, self.clients())

    def test_partial_line_waits(self) -> None:
        """A last line without its newline is not parsed until it is complete."""
        client, rows = _binding_rows(8)
        line = rows[0]
        self.append(line[:40])
        self.clock.advance(1)
        self.assertNotIn(client, self.clients())
        self.append(line[40:] + "\n")
        self.clock.advance(1)
        self.assertIn(client, self.clients())

    def test_release_and_renew(self) -> None:
        """Appended releases remove a binding; a renewal with a new Remote-ID updates it."""
        client, rows = _binding_rows(2)
        released = [row.replace(",3600,", ",0,", 1) for row in rows]
        self.append("\n".join(released) + "\n")
        _, renewed = _binding_rows(3, cltt=T + 5, remote=b"new")
        self.append("\n".join(renewed) + "\n")
        self.clock.advance(1)
        self.assertNotIn(client, self.clients())
        found = fetch_all(self.store, BindingQuery.by_remote_id(RemoteId(32473, b"new")))
        self.assertEqual([b.cltt for b in found], [T + 5])

    def test_served_binding_rebuilt_after_change(self) -> None:
        """
        A binding already served (so built and kept) is served as it is after an appended
        renewal changes it, and the index follows: its old Remote-ID finds nothing.
        """
        client, _ = _binding_rows(3)
        [before] = fetch_all(self.store, BindingQuery.by_client_id(client))
        self.assertEqual(before.remote_ids, (RemoteId(32473, b"r"),))
        _, renewed = _binding_rows(3, cltt=T + 5, remote=b"changed")
        self.append("\n".join(renewed) + "\n")
        self.clock.advance(1)
        [after] = fetch_all(self.store, BindingQuery.by_client_id(client))
        self.assertEqual((after.cltt, after.remote_ids), (T + 5, (RemoteId(32473, b"changed"),)))
        self.assertEqual(
            [
                b.client_id
                for b in fetch_all(
                    self.store, BindingQuery.by_remote_id(RemoteId(32473, b"changed"))
                )
            ],
            [client],
        )
        self.assertNotIn(
            client,
            [
                b.client_id
                for b in fetch_all(self.store, BindingQuery.by_remote_id(RemoteId(32473, b"r")))
            ],
        )

    def test_lfc_rotation_keeps_every_binding(self) -> None:
        """
        Kea's LFC renames the lease file to .1 and starts a new one; then kea-lfc merges
        into .completed and renames it .2. Nothing is lost, duplicated or reloaded.
        """
        before = self.clients()
        client, rows = _binding_rows(9)
        self.append(rows[0] + "\n")  # written just before the rotation, not yet polled
        os.rename(self.path, f"{self.path}.1")
        self.path.write_text(HEADER_3 + "\n" + rows[1] + "\n", encoding="ascii")
        self.clock.advance(1)
        self.assertEqual(self.clients(), sorted([*before, client]))
        [binding] = fetch_all(self.store, BindingQuery.by_client_id(client))
        self.assertEqual((len(binding.addresses), len(binding.prefixes)), (1, 1))
        os.rename(f"{self.path}.1", f"{self.path}.completed")
        self.clock.advance(1)
        os.rename(f"{self.path}.completed", f"{self.path}.2")
        newer, rows = _binding_rows(10)
        self.append("\n".join(rows) + "\n")
        self.clock.advance(1)
        self.assertEqual(self.clients(), sorted([*before, client, newer]))
        self.assertEqual(self.store.reloads, 0)
        reopened = KeaCsvStore(self.path, self.clock)
        reopened.load()
        self.assertEqual(list(reopened.bindings()), list(self.store.bindings()))

    def test_rewrite_reloads_consistently(self) -> None:
        """
        A lease file replaced other than by LFC is reloaded; a query in flight still gets
        every unchanged binding exactly once.
        """
        pages = []
        self.store.fetch(BindingQuery.by_link("subnet-1"), None, 2).addCallback(pages.append)
        first = pages[0]
        kept = [
            HEADER_3,
            *(r for r in self.rows[1:] if not r.startswith(("2001:db8:1::2,", "2001:db8:102::,"))),
        ]
        replacement = self.path.with_name("new.csv")
        replacement.write_text("\n".join(kept) + "\n", encoding="ascii")
        os.replace(replacement, self.path)
        self.clock.advance(1)
        self.assertEqual(self.store.reloads, 1)
        rest = []
        resume = first.resume_after
        while resume is not None:
            more = []
            self.store.fetch(BindingQuery.by_link("subnet-1"), resume, 2).addCallback(more.append)
            rest.extend(more[0].bindings)
            resume = more[0].resume_after
        keys = [b.key for b in [*first.bindings, *rest]]
        self.assertEqual(len(keys), len(set(keys)))
        self.assertEqual(len(keys), 5)
        self.assertEqual(len(self.clients()), 4)

    def test_shrunk_file_reloads(self) -> None:
        """
        A lease file truncated in place is reloaded; links derived from leases that are
        gone are recomputed.
        """
        link = self.successResultOf(self.store.find_link(IPv6Address("2001:db8:1::1")))
        self.assertIsNotNone(link)
        other = (
            f"2001:db8:2::9,00:03:00:01:02:00:00:00:00:99,60,{T + 60},2,30,0,1,128,0,0,,,0,,1,0,0"
        )
        self.append(other + "\n")
        self.clock.advance(1)
        self.assertIsNotNone(
            self.successResultOf(self.store.find_link(IPv6Address("2001:db8:2::1")))
        )
        with open(self.path, "w", encoding="ascii") as handle:
            handle.write(HEADER_3 + "\n" + "\n".join(self.rows[1:3]) + "\n")
        self.clock.advance(1)
        self.assertEqual(self.store.reloads, 1)
        self.assertEqual(len(self.clients()), 1)
        self.assertIsNone(self.successResultOf(self.store.find_link(IPv6Address("2001:db8:2::1"))))

    def test_close_stops_polling(self) -> None:
        """After close, no poll is scheduled and appended rows are not read."""
        self.successResultOf(self.store.close())
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.successResultOf(self.store.close())


class MissingFileTests(SynchronousTestCase):
    """A lease file that does not exist yet is an empty one, followed once created."""

    def test_created_later(self) -> None:
        """The store starts empty and serves the file once Kea creates it."""
        directory = Path(self.mktemp())
        directory.mkdir()
        path = directory / "kea-leases6.csv"
        clock = Clock()
        clock.advance(T)
        events = capture_log(self)
        store = KeaCsvStore(path, clock)
        store.load()
        store.start()
        self.addCleanup(store.close)
        self.assertEqual(len(store), 0)
        self.assertTrue(any("does not exist yet" in text for text in warnings_of(events)))
        client, rows = _binding_rows(1)
        path.write_text(HEADER_22 + "\n" + "\n".join(r[:-2] for r in rows) + "\n")
        clock.advance(1)
        self.assertEqual([b.client_id for b in store.bindings()], [client])


class HeaderTests(SynchronousTestCase):
    """The header decides the columns."""

    def write(self, text: str) -> Path:
        """A lease file holding C{text}."""
        directory = Path(self.mktemp())
        directory.mkdir()
        path = directory / "kea-leases6.csv"
        path.write_text(text, encoding="ascii")
        return path

    def test_not_a_lease_file(self) -> None:
        """A header without Kea's columns: the file is ignored with an error, no crash."""
        events = capture_log(self)
        path = self.write("a,b,c\n1,2,3\n")
        store = KeaCsvStore(path, Clock())
        store.load()
        self.assertEqual(len(store), 0)
        [message] = warnings_of(events)
        self.assertIn(f"{path}:1: header lacks address", message)

    def test_columns_in_any_order(self) -> None:
        """Columns are found by name; extra unknown columns are allowed."""
        path = self.write(
            "duid,address,extra,valid_lifetime,expire,subnet_id,pref_lifetime,lease_type,"
            "prefix_len\n00:03:00:01:02:00:00:00:00:01,2001:db8:1::9,x,60,"
            f"{T + 60},4,30,0,128\n"
        )
        clock = Clock()
        clock.advance(T)
        store = KeaCsvStore(path, clock)
        store.load()
        [binding] = store.bindings()
        self.assertEqual(
            (binding.link_id, str(binding.addresses[0].address)), ("subnet-4", "2001:db8:1::9")
        )

    def test_expired_rows_not_served(self) -> None:
        """A row whose expire time has passed is not an active lease."""
        path = self.write(
            f"{HEADER_22}\n2001:db8:1::9,00:03:00:01:02:00:00:00:00:01,60,{T},4,30,0,1,128,0,0,,,0,,1,0\n"
        )
        clock = Clock()
        clock.advance(T)
        store = KeaCsvStore(path, clock)
        store.load()
        self.assertEqual(len(store), 0)


class LeaseFileSetTests(SynchronousTestCase):
    """L{lease_file_set} reads the LFC products the way Kea loads them."""

    def test_order(self) -> None:
        """.completed alone if present, else .2 then .1; the lease file last."""
        directory = Path(self.mktemp())
        directory.mkdir()
        base = directory / "l.csv"
        self.assertEqual(lease_file_set(base), [base])
        for suffix in (".1", ".2"):
            Path(f"{base}{suffix}").write_text("")
        self.assertEqual(lease_file_set(base), [Path(f"{base}.2"), Path(f"{base}.1"), base])
        Path(f"{base}.completed").write_text("")
        self.assertEqual(lease_file_set(base), [Path(f"{base}.completed"), base])


class OpenerTests(SynchronousTestCase):
    """C{kea-csv:} URIs."""

    def test_open_with_config(self) -> None:
        """The registry opens kea-csv: with Kea's configuration and follows the file."""
        clock = Clock()
        clock.advance(1795694800)
        uri = (
            f"kea-csv:{FIXTURES / 'real-kea-2.2-leases6.csv'}"
            f"?kea-config={FIXTURES / 'real-kea-2.2-dhcp6.json'}&interval=0.5&warm=no"
        )
        store = open_store(uri, clock)
        self.addCleanup(store.close)
        assert isinstance(store, KeaCsvStore)
        self.assertEqual(
            [link.link_id for link in store.links()], ["subnet-101", "subnet-202", "subnet-303"]
        )
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        self.assertEqual(clock.getDelayedCalls()[0].getTime(), 1795694800.5)

    def test_no_follow(self) -> None:
        """follow=no and warm=no load once and schedule nothing."""
        clock = Clock()
        store = open_store_uri(
            f"kea-csv:{FIXTURES / 'kea-2.2-relays-leases6.csv'}?follow=no&warm=no", clock
        )
        self.assertEqual(clock.getDelayedCalls(), [])
        store.close()

    def test_warm_by_default(self) -> None:
        """
        Unless warm=no, every active binding is built in the background, one slice of keys
        per delayed call, and the bindings then served are those built; close cancels it.
        """
        slices: list[int] = []
        build_slice = KeaCsvStore._warm_slice

        def counted(store: KeaCsvStore) -> None:
            slices.append(sum(entry[4] is not None for entry in store._table.entries.values()))
            build_slice(store)

        self.patch(KeaCsvStore, "_warm_slice", counted)
        self.patch(kea_csv, "WARM_SLICE", 2)
        collecting = gc.isenabled()
        clock = Clock()
        clock.advance(1795694800)
        store = open_store_uri(f"kea-csv:{FIXTURES / 'real-kea-2.2-leases6.csv'}?follow=no", clock)
        self.assertTrue(store.warming)
        entries = store._table.entries
        self.assertTrue(all(entry[4] is None for entry in entries.values()))
        clock.advance(0)
        self.assertFalse(store.warming)
        self.assertEqual(gc.isenabled(), collecting)
        self.assertEqual(slices, list(range(0, len(entries) + 1, 2)))
        built = {key: entry[4] for key, entry in entries.items()}
        self.assertTrue(all(built.values()))
        served = fetch_all(store, BindingQuery.by_link("subnet-101"), limit=100)
        self.assertTrue(served)
        for binding in served:
            self.assertIs(binding, built[binding.key])
        store.warm()
        self.assertTrue(store.warming)
        store.close()
        self.assertFalse(store.warming)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_warm_closed_midway(self) -> None:
        """
        Closing the store while the background build is under way stops it and lets the
        garbage collector run again, as it did before the build paused it.
        """
        self.patch(kea_csv, "WARM_SLICE", 2)
        collecting = gc.isenabled()
        clock = Clock()
        clock.advance(1795694800)
        store = open_store_uri(f"kea-csv:{FIXTURES / 'real-kea-2.2-leases6.csv'}?follow=no", clock)
        [first] = clock.getDelayedCalls()
        clock.calls.remove(first)
        first.func(*first.args, **first.kw)
        self.assertTrue(store.warming)
        self.assertFalse(gc.isenabled())
        store.close()
        self.assertFalse(store.warming)
        self.assertEqual(gc.isenabled(), collecting)
        self.assertEqual(clock.getDelayedCalls(), [])
        built = [entry[4] is not None for entry in store._table.entries.values()]
        self.assertEqual(sum(built), 2)

    def test_warm_after_reload(self) -> None:
        """A full reload builds the new state in the background again."""
        directory = Path(self.mktemp())
        directory.mkdir()
        path = directory / "kea-leases6.csv"
        rows = (FIXTURES / "real-kea-2.2-leases6.csv").read_text(encoding="ascii")
        path.write_text(rows, encoding="ascii")
        clock = Clock()
        clock.advance(1795694800)
        store = open_store_uri(f"kea-csv:{path}", clock)
        self.addCleanup(store.close)
        clock.advance(0)
        self.assertFalse(store.warming)
        replacement = directory / "new.csv"
        replacement.write_text(rows, encoding="ascii")
        replacement.rename(path)
        clock.advance(1)
        self.assertEqual(store.reloads, 1)
        while store.warming:
            clock.advance(0)
        entries = store._table.entries
        self.assertTrue(entries)
        self.assertTrue(all(entry[4] is not None for entry in entries.values()))

    def test_bad_uris(self) -> None:
        """Bad URIs are refused with one line naming the problem."""
        clock = Clock()
        for uri, text in (
            ("kea-csv:", "needs the lease file"),
            ("kea-csv:/x.csv?nope=1", "unknown parameter"),
            ("kea-csv:/x.csv?interval=5", "interval"),
            ("kea-csv:/x.csv?follow=maybe", "follow"),
            ("kea-csv:/x.csv?warm=maybe", "warm"),
            ("kea-csv:/x.csv?parallel=maybe", "parallel"),
            ("kea-csv:/x.csv?kea-config=/nonexistent/kea.conf", "cannot read Kea configuration"),
            ("sqlite:/x.db", "not a kea-csv"),
        ):
            error = self.assertRaises(KeaCsvError, open_store_uri, uri, clock)
            self.assertIn(text, str(error), uri)
            self.assertNotIn("\n", str(error))


class PollFailureTests(SynchronousTestCase):
    """A failing poll is logged and the following goes on."""

    def test_failure_logged_and_retried(self) -> None:
        """An error while reading is logged; the next poll runs and applies new rows."""
        directory = Path(self.mktemp())
        directory.mkdir()
        path = directory / "kea-leases6.csv"
        path.write_text(HEADER_3 + "\n")
        clock = Clock()
        clock.advance(T)
        store = KeaCsvStore(path, clock)
        store.load()
        store.start()
        self.addCleanup(store.close)
        calls = []

        def broken() -> None:
            calls.append(1)
            raise OSError("disk on fire")

        original = store.poll
        store.poll = broken  # type: ignore[method-assign]
        clock.advance(1)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.assertEqual(len(calls), 1)
        store.poll = original  # type: ignore[method-assign]
        client, rows = _binding_rows(1)
        with open(path, "a", encoding="ascii") as handle:
            handle.write("\n".join(rows) + "\n")
        clock.advance(1)
        self.assertEqual([b.client_id for b in store.bindings()], [client])


# Equivalence of the store's fast paths with the reference semantics

#: The instant the equivalence rows are read at.
NOW_EQ = T + 100
_RELAY_IDS = [Duid.en(32473, b"relay-%d" % n) for n in range(3)]


def _options_hex(interface: bytes | None, remote: RemoteId | None, relay: Duid | None) -> str:
    options: list[object] = []
    if interface is not None:
        options.append(InterfaceId(interface))
    if remote is not None:
        options.append(remote)
    if relay is not None:
        options.append(RelayId(relay))
    return "0x" + encode_options(options).hex().upper()  # type: ignore[arg-type]


def kea_json(value: object) -> str:
    """C{value} as Kea's C{Element::toJSON} writes it: C{{ "k": v, ... }}, C{[ a, b ]}."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)}: {kea_json(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[ " + ", ".join(kea_json(v) for v in value) + " ]"
    return json.dumps(value)


@st.composite
def _contexts(draw: st.DrawFn) -> str:
    """An escaped user_context: none, Kea 2.2 relays, or Kea 2.4+ relay-info (ids in the
    options, only decoded, or both), one or two hops, sometimes with other keys."""
    style = draw(st.sampled_from(["", "relays", "relay-info", "other"]))
    if not style:
        return ""
    if style == "other":
        return escape(json.dumps({"comment": draw(st.sampled_from(["a,b", "x&y", ""]))}))
    hops = []
    count = draw(st.integers(1, 2))
    for index in range(count):
        remote = draw(
            st.none() | st.builds(RemoteId, st.just(32473), st.sampled_from([b"a", b"b,c", b"d"]))
        )
        relay = draw(st.none() | st.sampled_from(_RELAY_IDS))
        interface = draw(st.none() | st.sampled_from([b"eth0", b"ge-0/0/1"]))
        decoded_only = style == "relay-info" and draw(st.booleans())
        hop: dict[str, object] = {
            "hop": count - 1 - index,
            "link": draw(st.sampled_from(["2001:db8:1::1", "::", "fe80::1", "2001:db8:2::1"])),
            "peer": draw(st.sampled_from(["fe80::a", "2001:db8::9"])),
            "options": _options_hex(
                interface, None if decoded_only else remote, None if decoded_only else relay
            ),
        }
        if style == "relay-info":
            if remote is not None:
                hop["remote-id"] = remote.encode_data().hex()
            if relay is not None:
                hop["relay-id"] = relay.raw.hex()
        hops.append(hop)
    dump = draw(st.sampled_from([kea_json, json.dumps]))
    return escape(dump({"ISC": {style: hops}}))


@st.composite
def _rows(draw: st.DrawFn, pool: bool) -> str:
    """One well-formed lease row: addresses, clients and subnets from small pools (so rows
    replace, move and delete leases), any lifetime, expiry and state."""
    lease_type = draw(st.sampled_from([0, 0, 1, 2]))
    number = draw(st.integers(1, 6))
    if lease_type == 2:
        length = draw(st.sampled_from([48, 56, 64, 128]))
        address = str(
            IPv6Network(
                (0x20010DB8_0100_0000 << 64 | number << (128 - length), length)
            ).network_address
        )
    else:
        length = 128
        address = f"2001:db8:1::{number:x}"
    client = draw(st.integers(1, 4))
    duid = ":".join(f"{octet:02x}" for octet in Duid.ll(1, client.to_bytes(6, "big")).raw)
    valid = draw(st.sampled_from([0, 60, 3600]))
    cltt = draw(st.sampled_from([T, T + 50, T + 90]))
    state = draw(st.sampled_from([0, 0, 0, 1, 2, 3]))
    subnet = draw(st.sampled_from([1, 1, 2]))
    pref = draw(st.sampled_from([0, 30, 1800, 7200]))
    row = (
        f"{address},{duid},{valid},{cltt + valid},{subnet},{pref},{lease_type},1,{length},"
        f"0,0,host&#x2cname,,{state},{draw(_contexts())},1,0"
    )
    return row + (",0" if pool else "")


def _reference(rows: list[str], pool: bool) -> dict[BindingKey, Binding]:
    """The bindings of C{rows} by the reference semantics: the last row of each address,
    given to L{bindings_from_leases} (at L{NOW_EQ}) in the order of those rows, so that on
    a CLTT tie the lease written last gives the binding its relay chain."""
    from bulklq.stores.kea_leases import KeaLease6, bindings_from_leases, unescape

    last: dict[IPv6Address, KeaLease6] = {}
    for row in rows:
        fields = row.split(",")
        lease = KeaLease6(
            IPv6Address(fields[0]),
            bytes.fromhex(fields[1].replace(":", "")),
            int(fields[2]),
            int(fields[3]),
            int(fields[4]),
            int(fields[5]),
            int(fields[6]),
            int(fields[7]),
            int(fields[8]),
            int(fields[13]),
            unescape(fields[14]) or None,
            pool_id=int(fields[17]) if pool else None,
        )
        last.pop(lease.address, None)  # in the order of their last rows (CLTT ties)
        last[lease.address] = lease
    return {b.key: b for b in bindings_from_leases(last.values(), NOW_EQ)}


def loaded_then_followed(
    case: SynchronousTestCase, header: str, loaded: list[str], appended: list[str]
) -> KeaCsvStore:
    """
    A store (clock at C{NOW_EQ}) that loaded a lease file of C{header} and C{loaded}, then
    read the rows C{appended} to it (when there are any).
    """
    directory = Path(case.mktemp())
    directory.mkdir()
    path = directory / "kea-leases6.csv"
    path.write_text("\n".join([header, *loaded]) + "\n", encoding="ascii")
    clock = Clock()
    clock.advance(NOW_EQ)
    store = KeaCsvStore(path, clock)
    store.load()
    if appended:
        with open(path, "a", encoding="ascii") as handle:
            handle.write("".join(row + "\n" for row in appended))
        store.poll()
    return store


class FastPathEquivalenceTests(SynchronousTestCase):
    """The store's compact table and binding construction give exactly the bindings of the
    reference semantics (L{bulklq.stores.kea_leases.bindings_from_leases})."""

    def store_of(self, header: str, rows: list[str], follow_rows: list[str]) -> KeaCsvStore:
        """A store that loaded C{rows}, then read C{follow_rows} appended."""
        return loaded_then_followed(self, header, rows, follow_rows)

    @given(st.data())
    @settings(max_examples=300, deadline=None)
    def test_same_bindings(self, data: st.DataObject) -> None:
        """
        For rows of Kea 2.2 (relays) and 2.4+ (relay-info, decoded ids) with escapes,
        deletes, states and moved addresses, with and without pool_id, loaded at once or
        partly appended after the load, the store serves exactly the reference bindings,
        built through the fast one-transaction path or the general one.
        """
        pool = data.draw(st.booleans())
        rows = data.draw(st.lists(_rows(pool), min_size=1, max_size=25))
        split = data.draw(st.integers(0, len(rows)))
        store = self.store_of(HEADER_3 if pool else HEADER_22, rows[:split], rows[split:])
        expected = _reference(rows, pool)
        served = {binding.key: binding for binding in store.bindings()}
        self.assertEqual(served, expected)
        for binding in served.values():
            relay = expected[binding.key].relay_data
            self.assertEqual(binding.relay_data, relay)
            if relay is not None:
                self.assertEqual(binding.relay_data.relay_message, relay.relay_message)  # type: ignore[union-attr]
        # Every query type answers what the reference bindings match, in key order.
        ordered = [expected[key] for key in sorted(expected)]
        queries = [BindingQuery.by_relay_id(relay_id) for relay_id in _RELAY_IDS]
        queries += [BindingQuery.by_link(f"subnet-{subnet}") for subnet in (1, 2, 3)]
        for binding in ordered:
            queries.append(BindingQuery.by_client_id(binding.client_id))
            queries += [BindingQuery.by_remote_id(remote) for remote in binding.remote_ids]
            queries += [BindingQuery.by_address(lease.address) for lease in binding.addresses]
            queries += [
                BindingQuery.by_address(prefix.prefix.network_address + 1)
                for prefix in binding.prefixes
            ]
        for query in queries:
            self.assertEqual(
                fetch_all(store, query, limit=2),
                [binding for binding in ordered if query.matches(binding)],
                query,
            )


def _bulk_rows() -> list[str]:
    """Rows of more clients than the store indexes one by one (L{_BULK}): DUIDs on two
    subnets, Remote-IDs shared by two clients, Relay-IDs shared by hundreds, clients with
    two chains, and clients whose leases were all released."""
    rows = []
    for number in range(1, 1301):
        duid = ":".join(f"{octet:02x}" for octet in Duid.ll(1, number.to_bytes(6, "big")).raw)
        remote = RemoteId(32473, b"line-%d" % (number // 2))
        relay = _RELAY_IDS[number % 3]
        context = escape(
            kea_json(
                {
                    "ISC": {
                        "relay-info": [
                            {
                                "hop": 0,
                                "link": "2001:db8:1::1",
                                "peer": "fe80::a",
                                "options": _options_hex(b"eth0", remote, relay),
                            }
                        ]
                    }
                }
            )
        )
        subnets = (1, 2) if number % 7 == 0 else (1 + number % 2,)
        for subnet in subnets:
            address = f"2001:db8:{subnet}::{number:x}"
            valid = 0 if number % 11 == 0 else 3600
            rows.append(
                f"{address},{duid},{valid},{T + valid},{subnet},1800,0,1,128,"
                f"0,0,,,0,{context},1,0,0"
            )
            if number % 5 == 0:
                eth0, eth1 = b"eth0".hex().upper(), b"eth1".hex().upper()
                other = "" if number % 10 else context.replace(eth0, eth1)
                rows.append(
                    f"2001:db8:{subnet}:1::{number:x},{duid},3600,{T + 3600},{subnet},1800,0,2,"
                    f"128,0,0,,,0,{other},1,0,0"
                )
    return rows


class BulkIndexTests(SynchronousTestCase):
    """The index built at once for a large load answers as the one built row by row."""

    def store_of(self, loaded: list[str], appended: list[str]) -> KeaCsvStore:
        """A store that loaded C{loaded}, then read C{appended}."""
        return loaded_then_followed(self, HEADER_3, loaded, appended)

    def test_same_answers(self) -> None:
        """
        Every client-id, relay-id, remote-id and link query gets the same bindings, in the
        same order, from a store that indexed 1,300 clients at once and from one that
        indexed them one by one (the rows appended after a load of one row).
        """
        rows = _bulk_rows()
        at_once = self.store_of(rows, [])
        one_by_one = self.store_of(rows[:1], rows[1:])
        self.assertGreater(len(at_once._table.entries), 1000)
        queries = [BindingQuery.by_link(f"subnet-{subnet}") for subnet in (1, 2)]
        queries += [BindingQuery.by_relay_id(relay) for relay in _RELAY_IDS]
        queries += [
            BindingQuery.by_remote_id(RemoteId(32473, b"line-%d" % n)) for n in range(0, 660, 7)
        ]
        queries += [
            BindingQuery.by_client_id(Duid.ll(1, number.to_bytes(6, "big")))
            for number in range(1, 1301, 3)
        ]
        answered = 0
        for query in queries:
            expected = fetch_all(one_by_one, query, limit=97)
            self.assertEqual(fetch_all(at_once, query, limit=97), expected, query)
            answered += len(expected)
        self.assertGreater(answered, 3000)


class InvalidDuidTests(SynchronousTestCase):
    """A row whose DUID column is hex but not a valid DUID is malformed."""

    def test_skipped_with_reason(self) -> None:
        """
        The row of a DUID of 2 octets is skipped with a warning naming the file, the line
        and the DUID's problem; a valid client's row after it is read.
        """
        events = capture_log(self)
        directory = Path(self.mktemp())
        directory.mkdir()
        path = directory / "kea-leases6.csv"
        good = "00:03:00:01:02:00:00:00:01:00"
        rows = [
            f"2001:db8:1::1,00:01,3600,{T + 3600},1,1800,0,1,128,0,0,,,0,,1,0,0",
            f"2001:db8:1::2,{good},3600,{T + 3600},1,1800,0,1,128,0,0,,,0,,1,0,0",
        ]
        path.write_text("\n".join([HEADER_3, *rows]) + "\n", encoding="ascii")
        clock = Clock()
        clock.advance(NOW_EQ)
        store = KeaCsvStore(path, clock)
        store.load()
        [message] = warnings_of(events)
        self.assertIn(f"{path}:2: malformed lease row skipped: duid:", message)
        self.assertIn("shorter than 3", message)
        [binding] = store.bindings()
        self.assertEqual(binding.client_id, Duid.from_text(good))
