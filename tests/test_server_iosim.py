"""
Requestor and server connected in memory (iosim), and a hypothesis state machine that runs
random queries and store changes against a simple model.
"""

from __future__ import annotations

from ipaddress import IPv6Address

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from twisted.internet.protocol import Factory
from twisted.protocols.basic import Int16StringReceiver
from twisted.trial.unittest import SynchronousTestCase

from bulklq.model import Binding
from bulklq.testing import CONTRACT_NOW, DEFAULT_CLTT, connect_in_memory, make_binding, make_duid
from bulklq.wire import (
    ClientData,
    ClientId,
    IAAddress,
    Message,
    MessageType,
    RelayId,
    decode_message,
)

from .test_server import RELAY, ServerHarness, lq, status_of


class Collector(Int16StringReceiver):
    """A minimal requestor: sends what it is told, keeps every message received."""

    def __init__(self) -> None:
        self.received: list[Message] = []

    def stringReceived(self, string: bytes) -> None:
        """Keep the decoded message."""
        message = decode_message(string)
        assert isinstance(message, Message)
        self.received.append(message)


def connect(harness: ServerHarness) -> tuple[Collector, object, object]:
    """A Collector connected to the harness's factory through iosim."""
    return connect_in_memory(harness.factory, Factory.forProtocol(Collector))


class InMemoryTests(SynchronousTestCase):
    """The server through iosim: real framing both ways."""

    def test_query_and_pipelined_queries(self) -> None:
        """S1, S22, S23: a requestor pipelines two queries on one connection and gets both
        answers, demultiplexed by xid, and the connection stays open."""
        harness = ServerHarness()
        client, _server, pump = connect(harness)
        client.sendString(lq(4, "2001:db8:1::1", xid=1).encode())
        client.sendString(lq(3, "::", RelayId(RELAY), xid=2).encode())
        pump.flush()  # type: ignore[attr-defined]
        by_xid: dict[int, list[int]] = {}
        for message in client.received:
            by_xid.setdefault(message.transaction_id, []).append(message.msg_type)
        self.assertEqual(by_xid[1], [15, 17, 17, 16])
        self.assertEqual(by_xid[2], [15, 17, 17, 16])
        self.assertFalse(client.transport.disconnecting)
        client.transport.loseConnection()
        pump.flush()  # type: ignore[attr-defined]
        self.assertEqual(harness.factory.stats.connections_open, 0)
        self.assertEqual(harness.clock.getDelayedCalls(), [])


class ServerModel(RuleBasedStateMachine):
    """
    Random store changes and queries against a dictionary model: every answer holds each
    matching active binding exactly once, in key order, with the right message sequence
    (REPLY, DATA..., DONE; or one empty REPLY) and no error status.
    """

    def __init__(self) -> None:
        super().__init__()
        self.harness = ServerHarness(bindings=[], idle_timeout=10**7)
        self.model: dict[tuple[str, bytes], Binding] = {}
        self.client, self.server, self.pump = connect(self.harness)
        self.xid = 0
        self.now = CONTRACT_NOW

    @rule(
        client=st.integers(1, 6),
        link=st.sampled_from(["link-1", "link-2"]),
        relayed=st.booleans(),
        expired=st.booleans(),
    )
    def put(self, client: int, link: str, relayed: bool, expired: bool) -> None:
        """Insert or replace a binding (maybe already expired, maybe relayed)."""
        prefix = "2001:db8:1::" if link == "link-1" else "2001:db8:2::"
        binding = make_binding(
            client,
            link,
            addresses=[IPv6Address(prefix) + client],
            valid_lifetime=(CONTRACT_NOW - DEFAULT_CLTT) if expired else 3600,
            relay_id=RELAY if relayed else None,
        )
        self.harness.memory.put(binding)
        self.model[binding.key] = binding

    @rule(client=st.integers(1, 6), link=st.sampled_from(["link-1", "link-2"]))
    def remove(self, client: int, link: str) -> None:
        """Remove a binding (maybe absent)."""
        key = (link, make_duid(client).raw)
        assert self.harness.memory.remove(key) == (key in self.model)
        self.model.pop(key, None)

    def _ask(self, message: Message, expected: list[Binding]) -> None:
        self.client.received.clear()
        self.client.sendString(message.encode())
        self.pump.flush()  # type: ignore[attr-defined]
        received = self.client.received
        assert {m.transaction_id for m in received} == {message.transaction_id}
        types = [m.msg_type for m in received]
        if not expected:
            assert types == [MessageType.LEASEQUERY_REPLY], types
            assert received[0].options_of(ClientData) == []
        else:
            expected_types = [
                MessageType.LEASEQUERY_REPLY,
                *[MessageType.LEASEQUERY_DATA] * (len(expected) - 1),
                MessageType.LEASEQUERY_DONE,
            ]
            assert types == expected_types, types
        assert all(status_of(m) is None for m in received)
        got = []
        for m in received:
            for cd in m.options_of(ClientData):
                cid = cd.option(ClientId)
                assert cid is not None
                got.append(cid.duid.raw)
                for iaaddr in cd.options_of(IAAddress):
                    assert iaaddr.valid_lifetime > 0, iaaddr
        assert got == [b.client_id.raw for b in expected], (got, expected)

    def _active(self, keep: object) -> list[Binding]:
        return [
            binding
            for key, binding in sorted(self.model.items())
            if binding.is_active(self.now) and keep(binding)  # type: ignore[operator]
        ]

    @rule(seconds=st.integers(0, 2000))
    def tick(self, seconds: int) -> None:
        """Time passes: leases run out (S40)."""
        self.harness.clock.advance(seconds)
        self.now += seconds

    @rule(client=st.integers(1, 6), link=st.sampled_from(["link-1", "link-2"]))
    def query_address(self, client: int, link: str) -> None:
        """QUERY_BY_ADDRESS with link :: (the link is found from the address)."""
        self.xid += 1
        address = IPv6Address("2001:db8:1::" if link == "link-1" else "2001:db8:2::") + client
        self._ask(
            lq(1, "::", IAAddress(address, 0, 0), xid=self.xid),
            self._active(lambda b: b.contains(address)),
        )

    @rule(link=st.sampled_from(["link-1", "link-2"]))
    def query_link(self, link: str) -> None:
        """QUERY_BY_LINK_ADDRESS."""
        self.xid += 1
        address = "2001:db8:1::1" if link == "link-1" else "2001:db8:2::1"
        self._ask(lq(4, address, xid=self.xid), self._active(lambda b: b.link_id == link))

    @rule(client=st.integers(1, 6))
    def query_client(self, client: int) -> None:
        """QUERY_BY_CLIENTID over every link."""
        self.xid += 1
        duid = make_duid(client)
        self._ask(
            lq(2, "::", ClientId(duid), xid=self.xid),
            self._active(lambda b: b.client_id == duid),
        )

    @rule()
    def query_relay(self) -> None:
        """QUERY_BY_RELAY_ID over every link."""
        self.xid += 1
        self._ask(
            lq(3, "::", RelayId(RELAY), xid=self.xid),
            self._active(lambda b: RELAY in b.relay_ids),
        )

    @invariant()
    def connection_open(self) -> None:
        """S23: the connection stays open between queries."""
        assert not self.server.transport.disconnecting  # type: ignore[attr-defined]

    def teardown(self) -> None:
        """Close the connection; no timer may be left."""
        self.client.transport.loseConnection()
        self.pump.flush()  # type: ignore[attr-defined]
        assert self.harness.clock.getDelayedCalls() == []


class ServerModelTests(SynchronousTestCase):
    """The state machine, run under trial."""

    def test_model(self) -> None:
        """S30-S35, S51: random store changes and queries match the model (exactly once,
        key order, message sequence, status)."""
        run_state_machine_as_test(
            ServerModel, settings=settings(max_examples=40, stateful_step_count=25, deadline=None)
        )
