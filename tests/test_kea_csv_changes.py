"""
The kea-csv store as a change feed for Active Leasequery (RFC 7653): the rows Kea appends
to its lease file publish binding changes, timestamped by the injected clock; the initial
load and an LFC rewrite that changes nothing publish nothing; a binding whose last lease
runs out is published once as removed; and a watcher connected to the server (iosim) keeps
an exact replica of the lease file's bindings.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import re
from ipaddress import IPv6Address, IPv6Network
from pathlib import Path

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from bulklq.changes import BindingChange, SweepableStore
from bulklq.client import ActiveQuery, ActiveWatcher, LeaseQuery, Requestor, RequestorOptions
from bulklq.config import ServerConfig, parse_access_rule
from bulklq.interfaces import IBindingChangeFeed, IBindingStore
from bulklq.model import Binding, BindingQuery, Link
from bulklq.server import ActiveConfig, BulkLeasequeryFactory
from bulklq.service import BulkLeasequeryService
from bulklq.stores.kea_csv import KeaCsvStore
from bulklq.testing import make_binding, make_relay_data
from bulklq.wire import RemoteId
from tests.fake_server import REQUESTOR_DUID, SERVER_DUID, InMemoryEndpoint

from .test_kea_csv import HEADER_3, RELAY_A, T, fetch_all, kea_rows, release_rows

#: Index of the C{state} column in L{HEADER_3}.
STATE = 13
LINK = Link("subnet-1", (IPv6Network("2001:db8:1::/64"),))


def client(
    number: int,
    cltt: int = T,
    remote: bytes = b"r",
    valid: int = 3600,
    address: int | None = None,
) -> Binding:
    """Client C{number}'s binding on subnet 1: an address and a /56, relayed."""
    return make_binding(
        number,
        "subnet-1",
        cltt=cltt,
        addresses=(f"2001:db8:1::{address or number:x}",),
        prefixes=(f"2001:db8:{0x100 + number:x}::/56",),
        preferred_lifetime=valid // 2,
        valid_lifetime=valid,
        relay_data=make_relay_data(relay_id=RELAY_A, remote_id=RemoteId(32473, remote)),
    )


def with_state(rows: list[str], state: int) -> list[str]:
    """C{rows} with their C{state} column set to C{state}."""
    changed = []
    for row in rows:
        fields = row.split(",")
        fields[STATE] = str(state)
        changed.append(",".join(fields))
    return changed


class _LeaseFileCase(SynchronousTestCase):
    """A lease file of five clients, a store that loaded it, and the changes it publishes."""

    follow = True

    def setUp(self) -> None:
        directory = Path(self.mktemp())
        directory.mkdir()
        self.path = directory / "kea-leases6.csv"
        self.clock = Clock()
        self.clock.advance(T + 10)
        self.rows = [HEADER_3]
        for number in range(1, 6):
            self.rows.extend(kea_rows(client(number)))
        self.path.write_text("\n".join(self.rows) + "\n", encoding="ascii")
        self.store = KeaCsvStore(self.path, self.clock, {1: LINK})
        self.published: list[BindingChange] = []
        self.store.subscribe(self.published.append)
        self.store.load()
        if self.follow:
            self.store.start()
        self.addCleanup(self.store.close)

    def append(self, rows: list[str]) -> None:
        """Append C{rows} to the lease file, as Kea's writes do."""
        with open(self.path, "a", encoding="ascii") as handle:
            handle.write("\n".join(rows) + "\n")

    def served(self, number: int) -> Binding:
        """The binding the store serves for client C{number}."""
        [binding] = fetch_all(
            self.store, BindingQuery.by_client_id(client(number).client_id, "subnet-1")
        )
        return binding

    def changes(self) -> list[tuple[int, bool, float]]:
        """The changes published so far as (client number, removed, time); then forgets them."""
        found = [
            (int.from_bytes(c.binding.client_id.raw[-6:]), c.removed, c.time)
            for c in self.published
        ]
        self.published.clear()
        return found


class AppendedRowTests(_LeaseFileCase):
    """Rows Kea appends publish the bindings they change (RFC 7653 sections 2 and 3)."""

    def test_initial_load_publishes_nothing(self) -> None:
        """
        RFC 7653 section 9.3 (history is binding activity): the bindings the initial load
        found are the starting state, not changes, even with a subscriber already there.
        """
        self.assertEqual(len(self.store), 5)
        self.clock.advance(1)
        self.assertEqual(self.published, [])

    def test_new_binding_published_at_poll_time(self) -> None:
        """
        RFC 7653 sections 2 and 3 (every change of binding state is sent): an appended
        client's binding is published by the next poll, timestamped with the injected
        clock, equal to the binding the store then serves.
        """
        self.append(kea_rows(client(7, cltt=T + 10)))
        self.clock.advance(0.5)
        self.assertEqual(self.published, [])
        self.clock.advance(0.5)
        [change] = self.published
        self.assertEqual((change.removed, change.time), (False, T + 11))
        self.assertEqual(change.binding, self.served(7))
        self.assertEqual(change.binding.cltt, T + 10)

    def test_renewal_published(self) -> None:
        """
        RFC 7653 section 7 (the current state of the binding): a renewal with a new
        Remote-ID publishes the renewed binding, with its CLTT and Remote-ID.
        """
        self.append(kea_rows(client(2, cltt=T + 8, remote=b"moved")))
        self.clock.advance(1)
        [change] = self.published
        self.assertFalse(change.removed)
        self.assertEqual(change.binding.cltt, T + 8)
        self.assertEqual(change.binding.remote_ids, (RemoteId(32473, b"moved"),))

    def test_release_published_as_removal(self) -> None:
        """
        RFC 7653 section 2 (deletion is a binding change): release rows (valid lifetime 0)
        for every lease of a client publish its binding, as it was, removed.
        """
        before = self.served(3)
        self.append(release_rows(client(3)))
        self.clock.advance(1)
        [change] = self.published
        self.assertTrue(change.removed)
        self.assertEqual(change.binding, before)
        self.assertEqual(fetch_all(self.store, BindingQuery.by_client_id(before.client_id)), [])

    def test_state_rows_remove(self) -> None:
        """
        RFC 7653 section 2: a row with a state other than 0 (declined, expired-reclaimed,
        released) for the last lease of a client publishes the binding removed.
        """
        self.append(with_state(kea_rows(client(4)), 1))
        self.append(with_state(kea_rows(client(5)), 3))
        self.clock.advance(1)
        self.assertEqual(self.changes(), [(4, True, T + 11), (5, True, T + 11)])

    def test_partial_release_publishes_the_rest(self) -> None:
        """
        RFC 7653 section 7: releasing one of a client's two leases publishes the binding
        with the lease left, not a removal.
        """
        address_row, _prefix_row = release_rows(client(1))
        self.append([address_row])
        self.clock.advance(1)
        [change] = self.published
        self.assertFalse(change.removed)
        self.assertEqual(change.binding.addresses, ())
        self.assertEqual([str(p.prefix) for p in change.binding.prefixes], ["2001:db8:101::/56"])

    def test_unchanged_rows_publish_nothing(self) -> None:
        """
        RFC 7653 section 7 (only changes of binding state): Kea rewriting rows exactly as
        they were, or releasing a lease nobody holds, is not a change.
        """
        self.append(kea_rows(client(1)) + kea_rows(client(2)))
        self.append(release_rows(client(9)))
        self.clock.advance(1)
        self.assertEqual(self.published, [])

    def test_address_moved_to_another_client(self) -> None:
        """
        RFC 7653 section 2: an address leased to another client changes two bindings: the
        old holder's (it keeps its prefix) and the new holder's.
        """
        moved = client(8, cltt=T + 10, address=1)
        self.append(kea_rows(moved))
        self.clock.advance(1)
        changes = {c.binding.client_id: c for c in self.published}
        self.assertEqual(len(self.published), 2)
        old = changes[client(1).client_id]
        self.assertFalse(old.removed)
        self.assertEqual(old.binding.addresses, ())
        self.assertEqual(changes[moved.client_id].binding, self.served(8))

    def test_restated_lease_on_a_tie(self) -> None:
        """
        RFC 7653 section 7: two leases of one client with the same CLTT and different relay
        chains; the binding carries the chain of the lease written last, so restating the
        other lease unchanged changes the binding (published), and restating it again does
        not (nothing published).
        """
        address_row = kea_rows(client(9, remote=b"a"))[0]
        prefix_row = kea_rows(client(9, remote=b"b"))[1]
        self.append([address_row, prefix_row])
        self.clock.advance(1)
        [first] = self.published
        self.assertIn(RemoteId(32473, b"b"), self.chain_options(first.binding))
        self.published.clear()
        self.append([address_row])
        self.clock.advance(1)
        [second] = self.published
        self.assertIn(RemoteId(32473, b"a"), self.chain_options(second.binding))
        self.assertEqual(second.binding, self.served(9))
        self.published.clear()
        self.append([address_row])
        self.clock.advance(1)
        self.assertEqual(self.published, [])

    def chain_options(self, binding: Binding) -> tuple[object, ...]:
        """The options of the outermost relay of C{binding}'s LQ_RELAY_DATA."""
        assert binding.relay_data is not None
        return binding.relay_data.relay_message.options

    def test_rows_of_one_poll_coalesce_per_binding(self) -> None:
        """
        RFC 7653 section 7 (the current state is sent): a client written several times
        between two polls is published once, in its last state.
        """
        for step in range(1, 4):
            self.append(kea_rows(client(2, cltt=T + step, remote=b"r%d" % step)))
        self.clock.advance(1)
        [change] = self.published
        self.assertEqual(change.binding.remote_ids, (RemoteId(32473, b"r3"),))

    def test_catch_up_history(self) -> None:
        """
        RFC 7653 section 9.3 (binding activity kept for OPTION_LQ_START_TIME): with history
        kept, changes_since answers the latest change of each binding changed since then.
        """
        self.store.keep_history()
        self.clock.advance(5)
        self.append(kea_rows(client(2, cltt=T + 15, remote=b"later")))
        self.clock.advance(1)
        found = self.successResultOf(self.store.changes_since(T + 15))
        assert found is not None
        self.assertEqual([c.binding.cltt for c in found], [T + 15])
        self.assertEqual(self.successResultOf(self.store.changes_since(T + 17)), [])
        self.assertIsNone(self.successResultOf(self.store.changes_since(T)))

    def test_feed_and_not_sweepable(self) -> None:
        """
        The store provides both interfaces, and is not a C{SweepableStore} (whose generic
        expiry sweep would build every binding): it sweeps its own expiry index.
        """
        verifyObject(IBindingStore, self.store)
        verifyObject(IBindingChangeFeed, self.store)
        self.assertNotIsInstance(self.store, SweepableStore)


class RewriteTests(_LeaseFileCase):
    """Kea's lease file cleanup and other rewrites publish only real differences."""

    def test_lfc_rotation_publishes_nothing(self) -> None:
        """
        RFC 7653 section 7: Kea's LFC (lease file renamed to .1, a new file started, the
        merged .completed renamed .2) changes no binding, so nothing is published, even
        when the new file starts with rows restating leases unchanged.
        """
        os.rename(self.path, f"{self.path}.1")
        self.path.write_text("\n".join([HEADER_3, *kea_rows(client(1))]) + "\n", encoding="ascii")
        self.clock.advance(1)
        Path(f"{self.path}.completed").write_text("\n".join(self.rows) + "\n")
        os.rename(f"{self.path}.1", f"{self.path}.2")
        os.rename(f"{self.path}.completed", f"{self.path}.2")
        self.clock.advance(1)
        self.assertEqual((self.store.reloads, self.published), (0, []))
        self.append(kea_rows(client(6, cltt=T + 11)))
        self.clock.advance(1)
        self.assertEqual(self.changes(), [(6, False, T + 13)])

    def test_rewrite_with_same_leases_publishes_nothing(self) -> None:
        """
        RFC 7653 section 7: a lease file replaced by a compacted copy of the same leases
        (rows reordered) is reloaded and publishes nothing: watchers are not flooded.
        """
        replacement = self.path.with_name("compacted.csv")
        replacement.write_text(
            "\n".join([HEADER_3, *reversed(self.rows[1:])]) + "\n", encoding="ascii"
        )
        os.replace(replacement, self.path)
        self.clock.advance(1)
        self.assertEqual((self.store.reloads, self.published), (1, []))

    def test_rewrite_publishes_differences(self) -> None:
        """
        RFC 7653 sections 2 and 7: a replaced lease file where one client renewed, one is
        gone and one is new publishes exactly those three changes; the rows read from the
        old file before it was found replaced are published too.
        """
        self.append(kea_rows(client(6, cltt=T + 10)))  # in the old file, not polled yet
        rows = [HEADER_3, *kea_rows(client(6, cltt=T + 10))]
        for number in (1, 2, 3, 4):
            rows.extend(kea_rows(client(number, cltt=T + (5 if number == 2 else 0))))
        rows.extend(kea_rows(client(7, cltt=T + 10)))
        replacement = self.path.with_name("compacted.csv")
        replacement.write_text("\n".join(rows) + "\n", encoding="ascii")
        os.replace(replacement, self.path)
        self.clock.advance(1)
        self.assertEqual(self.store.reloads, 1)
        self.assertEqual(
            self.changes(),
            [(6, False, T + 11), (2, False, T + 11), (7, False, T + 11), (5, True, T + 11)],
        )
        self.assertEqual(self.served(2).cltt, T + 5)


class ExpiryTests(_LeaseFileCase):
    """A binding whose last lease runs out is published once as removed (RFC 7653 s. 2)."""

    def setUp(self) -> None:
        super().setUp()
        self.append(kea_rows(client(7, cltt=T + 10, valid=100)))
        self.clock.advance(1)
        self.assertEqual(self.changes(), [(7, False, T + 11)])

    def test_expiry_published_once(self) -> None:
        """
        RFC 7653 section 2 (expiration is a binding change): the binding is published as
        removed by the first poll at or after its expiry (T + 110), once; Kea's later
        reclamation row (state 2) publishes nothing more.
        """
        expired = self.served(7)
        self.clock.pump([1.0] * 98)
        self.assertEqual(self.published, [])
        self.clock.advance(1)
        [change] = self.published
        self.assertEqual((change.removed, change.time, change.binding), (True, T + 110, expired))
        self.published.clear()
        self.append(with_state(kea_rows(client(7, cltt=T + 10, valid=100)), 2))
        self.clock.pump([1.0] * 3)
        self.assertEqual(self.published, [])
        self.assertEqual(self.store.expired, 1)

    def test_renewed_before_expiry(self) -> None:
        """
        RFC 7653 section 7: a binding renewed before it runs out is not published as
        expired at its old expiry time, and is at its new one.
        """
        self.clock.pump([1.0] * 50)
        self.append(kea_rows(client(7, cltt=T + 61, valid=100)))
        self.clock.advance(1)
        self.assertEqual(self.changes(), [(7, False, T + 62)])
        self.clock.pump([1.0] * 98)
        self.assertEqual(self.published, [])
        self.clock.advance(1)
        self.assertEqual(self.changes(), [(7, True, T + 161)])

    def test_reclaimed_between_polls(self) -> None:
        """
        RFC 7653 section 2: when Kea reclaims the lease (state 2) before the poll that
        would have found it expired, the binding is still published once, as removed.
        """
        self.clock.pump([1.0] * 98)
        self.append(with_state(kea_rows(client(7, cltt=T + 10, valid=100)), 2))
        self.clock.pump([1.0] * 3)
        self.assertEqual(self.changes(), [(7, True, T + 110)])


class NotFollowingTests(_LeaseFileCase):
    """A store that does not follow its file (C{follow=no}) still publishes expiries."""

    follow = False

    def test_expiry_without_following(self) -> None:
        """
        RFC 7653 section 2: with changes watched, the store's timer sweeps expiries even
        when it does not poll the file; close() stops it.
        """
        self.clock.advance(3600 - 10)
        self.assertEqual(sorted(self.changes()), [(n, True, T + 3600) for n in range(1, 6)])
        self.successResultOf(self.store.close())
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ServiceTests(SynchronousTestCase):
    """The service accepts the store for Active Leasequery without a generic sweep."""

    def test_service_accepts_store(self) -> None:
        """
        RFC 7653 section 9.3: enabling Active Leasequery over kea-csv keeps history from the
        start and uses the store's own expiry sweep, not L{ExpirySweep}.
        """
        directory = Path(self.mktemp())
        directory.mkdir()
        clock = Clock()
        clock.advance(T)
        store = KeaCsvStore(directory / "kea-leases6.csv", clock)
        store.load()
        service = BulkLeasequeryService(
            store,
            ServerConfig(SERVER_DUID, allow=(parse_access_rule("::1"),)),
            ["tcp6:5547"],
            reactor=clock,
            active=ActiveConfig(enabled=True, allow_insecure=True),
            history_window=120,
        )
        self.assertIsNone(service.expiry)
        self.assertEqual((store.changes.window, store.changes.complete_from), (120, T))
        self.successResultOf(store.close())
        self.assertEqual(clock.getDelayedCalls(), [])


class WatcherEndToEndTests(_LeaseFileCase):
    """A watcher connected to bulklq's server (iosim) over the kea-csv store."""

    def test_replica_follows_lease_file(self) -> None:
        """
        RFC 7653 sections 8.4 and 9.3: a watcher of link 2001:db8:1::1 keeps an exact
        replica of the store's active bindings while Kea appends renewals, releases,
        state changes and new clients, and while leases expire.
        """
        config = ServerConfig(SERVER_DUID, allow=(parse_access_rule("2001:db8::/32"),))
        factory = BulkLeasequeryFactory(
            self.store, config, self.clock, active=ActiveConfig(enabled=True, allow_insecure=True)
        )
        endpoint = InMemoryEndpoint(factory, self.clock)
        requestor = Requestor(
            REQUESTOR_DUID, self.clock, RequestorOptions(retries=0), lambda s: endpoint
        )
        watcher = ActiveWatcher(
            requestor,
            "[2001:db8::1]:547",
            ActiveQuery(LeaseQuery.by_link_address(IPv6Address("2001:db8:1::1"))),
            endpoint_factory=lambda s: endpoint,
            rng=random.Random(1),
        )
        watcher.start()
        endpoint.flush()
        self.assertTrue(watcher.synchronised)
        self.assertEqual(self.summary(watcher.replica.values()), self.expected())
        current = {number: client(number) for number in range(1, 6)}
        rng = random.Random(7653)
        for step in range(200):
            number = rng.randrange(1, 16)
            now = int(self.clock.seconds())
            old = current.pop(number, None)
            roll = rng.random()
            if old is not None and roll < 0.2:
                self.append(release_rows(old))
            elif old is not None and roll < 0.3:
                self.append(with_state(kea_rows(old), rng.choice((1, 2, 3))))
            else:
                if old is not None and rng.random() < 0.5:
                    self.append(release_rows(old))  # a new address: the old one goes
                    address = rng.randrange(1, 1000)
                else:
                    address = None if old is None else int(old.addresses[0].address) & 0xFFFF
                valid = rng.choice((30, 300, 3600))
                renewed = client(number, now, b"%d" % rng.randrange(5), valid, address)
                self.append(kea_rows(renewed))
                current[number] = renewed
            if step % 5 == 0:
                self.clock.advance(rng.choice((1, 7, 20)))
                endpoint.flush()
        self.clock.advance(1)
        endpoint.flush()
        self.assertGreater(watcher.changes, 100)
        self.assertGreater(self.store.expired, 0)
        self.assertEqual(self.summary(watcher.replica.values()), self.expected())
        stopped = watcher.stop()
        endpoint.flush()
        self.successResultOf(stopped)

    def summary(self, bindings: object) -> dict[bytes, tuple[int, list[str], list[str]]]:
        """Client DUID -> (CLTT, addresses, prefixes) of C{bindings}."""
        found = {}
        for binding in bindings:  # type: ignore[attr-defined]
            found[binding.client_id.raw] = (
                binding.cltt,
                sorted(str(lease.address) for lease in binding.addresses),
                sorted(str(lease.prefix) for lease in binding.prefixes),
            )
        return found

    def expected(self) -> dict[bytes, tuple[int, list[str], list[str]]]:
        """The summary of what the store serves on subnet-1 now."""
        return self.summary(fetch_all(self.store, BindingQuery.by_link("subnet-1")))


class DocsExampleTests(SynchronousTestCase):
    """docs/kea.md's examples run as written, from the source checkout."""

    def test_examples_run(self) -> None:
        """Every python block of docs/kea.md runs; the change feed example prints one
        removal per binding of the real Kea file once every lease ran out."""
        root = Path(__file__).resolve().parent.parent
        blocks = re.findall(r"```python\n(.*?)```", (root / "docs" / "kea.md").read_text(), re.S)
        self.assertEqual(len(blocks), 2)
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(root)
        outputs = []
        for block in blocks:
            output = io.StringIO()
            with contextlib.redirect_stdout(output):
                exec(block, {})
            outputs.append(output.getvalue().splitlines())
        removals = outputs[0]
        self.assertEqual(len(removals), 11)
        self.assertTrue(all(line.endswith(" removed") for line in removals))
