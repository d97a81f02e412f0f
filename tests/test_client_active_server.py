"""
The Active Leasequery requestor against bulklq's own server (in memory, iosim): a watcher
keeps an exact replica of a MemoryBindingStore while bindings change at random, and
catches up after a reconnection.
"""

from __future__ import annotations

import random
from ipaddress import IPv6Address

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from bulklq.client import ActiveQuery, ActiveWatcher, LeaseQuery, Requestor, RequestorOptions
from bulklq.config import ServerConfig, parse_access_rule
from bulklq.model import Binding
from bulklq.server import ActiveConfig, BulkLeasequeryFactory
from bulklq.stores.memory import MemoryBindingStore
from bulklq.testing import CONTRACT_NOW, make_binding, make_duid, make_link
from tests.fake_server import REQUESTOR_DUID, SERVER_DUID, InMemoryEndpoint

LINK_ADDRESS = IPv6Address("2001:db8:1::1")


def _summary(bindings: list[Binding]) -> dict[bytes, tuple[list[str], list[str]]]:
    """Client DUID -> (addresses, prefixes): what must agree between store and replica."""
    return {
        binding.client_id.raw: (
            sorted(str(lease.address) for lease in binding.addresses),
            sorted(str(lease.prefix) for lease in binding.prefixes),
        )
        for binding in bindings
    }


class ReplicaEndToEndTests(SynchronousTestCase):
    """A watcher against the real server and memory store."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(CONTRACT_NOW)
        self.store = MemoryBindingStore(
            [make_link("link-1", ["2001:db8:1::/64"])], clock=self.clock
        )
        config = ServerConfig(SERVER_DUID, allow=(parse_access_rule("2001:db8::/32"),))
        self.factory = BulkLeasequeryFactory(
            self.store, config, self.clock, active=ActiveConfig(enabled=True, allow_insecure=True)
        )
        self.endpoint = InMemoryEndpoint(self.factory, self.clock)
        self.requestor = Requestor(
            REQUESTOR_DUID, self.clock, RequestorOptions(retries=0), lambda s: self.endpoint
        )
        self.random = random.Random(2026)

    def _watcher(self, start_time: int | None = None) -> ActiveWatcher:
        watcher = ActiveWatcher(
            self.requestor,
            "[2001:db8::1]:547",
            ActiveQuery(LeaseQuery.by_link_address(LINK_ADDRESS)),
            start_time=start_time,
            endpoint_factory=lambda s: self.endpoint,
            rng=random.Random(1),
        )
        watcher.start()
        self.endpoint.flush()
        return watcher

    def _random_change(self, clients: int) -> None:
        number = self.random.randrange(1, clients + 1)
        if self.random.random() < 0.3:
            self.store.remove(("link-1", make_duid(number).raw))
            return
        cltt = int(self.clock.seconds())
        addresses = [f"2001:db8:1::{number:x}:{self.random.randrange(1, 99):x}"]
        prefixes = [f"2001:db8:{0x100 + number:x}:{self.random.randrange(0, 255):x}00::/56"]
        self.store.put(
            make_binding(number, "link-1", cltt=cltt, addresses=addresses, prefixes=prefixes)
        )

    def _store_bindings(self) -> list[Binding]:
        return [binding for binding, _ in self.store._bindings.values()]

    def test_exact_replica_after_random_changes(self) -> None:
        """
        The replica equals the store after 300 random puts and removals (RFC 7653 section 7:
        removals arrive with zero lifetimes; changes not yet read are coalesced).
        """
        for number in range(1, 11):
            self.store.put(make_binding(number, "link-1", addresses=[f"2001:db8:1::{number:x}"]))
        watcher = self._watcher()
        self.assertTrue(watcher.synchronised)
        self.assertEqual(_summary(list(watcher.replica.values())), _summary(self._store_bindings()))
        for step in range(300):
            self._random_change(20)
            if step % 7 == 0:
                self.clock.advance(1)
                self.endpoint.flush()
        self.endpoint.flush()
        self.assertEqual(_summary(list(watcher.replica.values())), _summary(self._store_bindings()))
        self.assertGreater(watcher.changes, 100)
        stopped = watcher.stop()
        self.endpoint.flush()
        self.successResultOf(stopped)

    def test_catch_up_after_reconnection(self) -> None:
        """8.3 / 8.4.1: a second watcher resumes from the first one's base time and replica,
        and catches up the changes made while nobody watched."""
        watcher = self._watcher()
        for _ in range(50):
            self._random_change(10)
        self.clock.advance(1)
        self.endpoint.flush()
        base_time, replica = watcher.base_time, dict(watcher.replica)
        self.assertIsNotNone(base_time)
        stopped = watcher.stop()
        self.endpoint.flush()
        self.successResultOf(stopped)
        self.clock.advance(5)
        for _ in range(50):
            self._random_change(10)
        again = ActiveWatcher(
            self.requestor,
            "[2001:db8::1]:547",
            ActiveQuery(LeaseQuery.by_link_address(LINK_ADDRESS)),
            start_time=base_time,
            replica=replica,
            endpoint_factory=lambda s: self.endpoint,
        )
        again.start()
        self.endpoint.flush()
        self.assertTrue(again.synchronised)
        self.assertEqual(_summary(list(again.replica.values())), _summary(self._store_bindings()))
        stopped = again.stop()
        self.endpoint.flush()
        self.successResultOf(stopped)
