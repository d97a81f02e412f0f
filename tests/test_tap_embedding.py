"""Tests for the embedding example (examples/embedding.py, docs/embedding.md)."""

from __future__ import annotations

import importlib.util
import struct
from ipaddress import IPv6Address
from pathlib import Path
from types import ModuleType

from twisted.internet.address import IPv6Address as TwistedIPv6Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from bulklq.interfaces import IBindingStore
from bulklq.service import BulkLeasequeryService
from bulklq.wire import ClientData, ClientId, Duid, LQQuery, Message, MessageType, decode_message

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "embedding.py"


def load_example() -> ModuleType:
    """Import examples/embedding.py as a module."""
    spec = importlib.util.spec_from_file_location("bulklq_embedding_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class EmbeddingExampleTests(SynchronousTestCase):
    """The documented embedding example works as documented."""

    def test_store_provides_interface(self) -> None:
        """The application's store provides IBindingStore."""
        example = load_example()
        self.assertTrue(verifyObject(IBindingStore, example.AppBindingStore(MemoryReactorClock())))

    def test_serves_link_query(self) -> None:
        """
        The example's service tree listens where it says and answers a
        QUERY_BY_LINK_ADDRESS (S49) with the application's three bindings.
        """
        example = load_example()
        reactor = MemoryReactorClock()
        reactor.advance(1_700_000_000)
        services = example.make_service(reactor)
        services.startService()
        self.addCleanup(services.stopService)
        (server,) = [s for s in services if isinstance(s, BulkLeasequeryService)]
        self.assertEqual(reactor.tcpServers[0][0], 15547)
        address = TwistedIPv6Address("TCP", "::1", 40000)
        protocol = server.factory.buildProtocol(address)
        assert protocol is not None
        transport = StringTransport(peerAddress=address)
        protocol.makeConnection(transport)
        query = Message(
            MessageType.LEASEQUERY,
            5,
            (
                ClientId(Duid.en(32473, b"test")),
                LQQuery(4, IPv6Address("2001:db8:5::1")),
            ),
        ).encode()
        protocol.dataReceived(struct.pack("!H", len(query)) + query)
        data, messages = transport.value(), []
        while data:
            (length,) = struct.unpack("!H", data[:2])
            messages.append(decode_message(data[2 : 2 + length]))
            data = data[2 + length :]
        self.assertEqual(messages[-1].msg_type, MessageType.LEASEQUERY_DONE)
        self.assertEqual(sum(1 for m in messages if m.option(ClientData)), 3)  # type: ignore[union-attr]
        transport.loseConnection()
        protocol.connectionLost(None)
