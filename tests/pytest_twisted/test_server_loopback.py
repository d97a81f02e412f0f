"""The server on a real loopback socket, pytest-twisted style."""

from __future__ import annotations

import struct
from typing import Any

import pytest_twisted
from twisted.internet import defer, endpoints, protocol, reactor, task
from twisted.protocols.basic import Int16StringReceiver

from bulklq.config import ServerConfig, parse_access_rule
from bulklq.server import BulkLeasequeryFactory
from bulklq.stores.memory import MemoryBindingStore
from bulklq.testing import make_binding, make_link
from bulklq.wire import ClientData, Duid, Message, MessageType, decode_message

SERVER_DUID = Duid.llt(1, 700000000, bytes.fromhex("020000000001"))
QUERY = bytes.fromhex(
    # LEASEQUERY xid 0x000001, CLIENTID DUID-EN 32473 "bench", LQ_QUERY type 4 link 2001:db8:1::1
    "0e0000010001000b000200007ed962656e6368002c00110420010db8000100000000000000000001"
)


class Requestor(Int16StringReceiver):
    """Collects messages until a DONE, then half-closes."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.finished: defer.Deferred[list[Message]] = defer.Deferred()

    def connectionMade(self) -> None:
        """Send the query."""
        self.transport.write(struct.pack("!H", len(QUERY)) + QUERY)

    def stringReceived(self, string: bytes) -> None:
        """Keep each message; DONE ends the exchange."""
        message = decode_message(string)
        assert isinstance(message, Message)
        self.messages.append(message)
        if message.msg_type == MessageType.LEASEQUERY_DONE:
            self.transport.loseConnection()
            self.finished.callback(self.messages)


class SlowStore:
    """A memory store whose pages arrive 10 ms late, so the stream outlives the EOF."""

    name = "slow"

    def __init__(self, inner: MemoryBindingStore) -> None:
        self.inner = inner

    def fetch(self, query: Any, resume_after: Any, limit: int) -> defer.Deferred[Any]:
        """The inner store's page, 10 ms later."""
        page = self.inner.fetch(query, resume_after, limit)
        return task.deferLater(reactor, 0.01, lambda: page)

    def find_link(self, address: Any) -> defer.Deferred[Any]:
        """As the inner store."""
        return self.inner.find_link(address)

    def get_link(self, link_id: str) -> defer.Deferred[Any]:
        """As the inner store."""
        return self.inner.get_link(link_id)

    def close(self) -> defer.Deferred[None]:
        """As the inner store."""
        return self.inner.close()


class HalfClosingRequestor(Int16StringReceiver):
    """Sends the query, half-closes at once, and reads until the server closes."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.closed: defer.Deferred[list[Message]] = defer.Deferred()

    def connectionMade(self) -> None:
        """Send the query, then shut down our sending side."""
        self.transport.write(struct.pack("!H", len(QUERY)) + QUERY)
        self.transport.loseWriteConnection()

    def stringReceived(self, string: bytes) -> None:
        """Keep each message."""
        message = decode_message(string)
        assert isinstance(message, Message)
        self.messages.append(message)

    def connectionLost(self, reason: object = None) -> None:
        """The server closed: report what came."""
        self.closed.callback(self.messages)


@pytest_twisted.ensureDeferred
async def test_loopback_half_close() -> None:
    """S27: the requestor half-closes right after its query; the server finishes the
    query (REPLY, DATA..., DONE), then closes its end."""
    store = MemoryBindingStore([make_link()])
    for number in range(1, 301):
        store.put(make_binding(number, cltt=int(reactor.seconds()) - 10))
    config = ServerConfig(SERVER_DUID, allow=(parse_access_rule("127.0.0.0/8"),), page_size=50)
    factory = BulkLeasequeryFactory(SlowStore(store), config, reactor)  # type: ignore[arg-type]
    port = await endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    try:
        client = await endpoints.TCP4ClientEndpoint(
            reactor, "127.0.0.1", port.getHost().port
        ).connect(protocol.Factory.forProtocol(HalfClosingRequestor))
        messages = await client.closed
        assert messages[-1].msg_type == MessageType.LEASEQUERY_DONE
        assert sum(len(m.options_of(ClientData)) for m in messages) == 300
        assert factory.stats.queries[("link", "Success")] == 1
    finally:
        await factory.shutdown(grace=1)
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_loopback_link_query() -> None:
    """S1, S32, S35: 2,500 bindings over TCP on ::1-or-127.0.0.1: one REPLY, DATA for the
    rest, one DONE, every client once (several pages, real backpressure)."""
    store = MemoryBindingStore([make_link()])
    for number in range(1, 2501):
        store.put(make_binding(number, cltt=int(reactor.seconds()) - 10))
    config = ServerConfig(SERVER_DUID, allow=(parse_access_rule("127.0.0.0/8"),), page_size=100)
    factory = BulkLeasequeryFactory(store, config, reactor)
    port = await endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    try:
        client = await endpoints.TCP4ClientEndpoint(
            reactor, "127.0.0.1", port.getHost().port
        ).connect(protocol.Factory.forProtocol(Requestor))
        messages = await client.finished
        types = [m.msg_type for m in messages]
        assert types[0] == MessageType.LEASEQUERY_REPLY
        assert types[1:-1] == [MessageType.LEASEQUERY_DATA] * 2499
        assert types[-1] == MessageType.LEASEQUERY_DONE
        assert sum(len(m.options_of(ClientData)) for m in messages) == 2500
        assert factory.stats.bindings_sent == 2500
    finally:
        await factory.shutdown(grace=1)
        await port.stopListening()
