"""
Tests for L{bulklq.service.BulkLeasequeryService} and the twistd glue in L{bulklq.tap}:
listening, graceful shutdown mid-stream, listening failures.
"""

from __future__ import annotations

import struct
from ipaddress import IPv6Address
from typing import Any

from twisted.internet.address import IPv6Address as TwistedIPv6Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import CannotListenError, ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from bulklq.config import ServerConfig
from bulklq.interfaces import IBindingStore
from bulklq.model import BindingPage, BindingQuery, Link
from bulklq.service import BulkLeasequeryService
from bulklq.tap import _TwistdService
from bulklq.testing import DEFAULT_CLTT, make_binding, make_duid, make_link
from bulklq.wire import (
    ClientData,
    ClientId,
    LQQuery,
    Message,
    MessageType,
    QueryType,
    RelayId,
    StatusCode,
    StatusCodeOption,
    decode_message,
)

SERVER = make_duid(1000)
REQUESTOR = make_duid(2000)
RELAY = make_duid(900)


@implementer(IBindingStore)
class TwoPageStore:
    """First page: two bindings and more to come; the second page waits for the test."""

    name = "two-page"

    def __init__(self) -> None:
        self.second: Deferred[BindingPage] | None = None
        self.closed = 0

    def fetch(self, query: BindingQuery, resume_after: Any, limit: int) -> Deferred[BindingPage]:
        """Answer the first page now, the second when the test says."""
        if resume_after is None:
            bindings = [make_binding(1, relay_id=RELAY), make_binding(2, relay_id=RELAY)]
            return succeed(BindingPage(bindings, bindings[-1].key))
        self.second = Deferred()
        return self.second

    def find_link(self, address: IPv6Address) -> Deferred[Link | None]:
        """Everything is on link-1."""
        return succeed(make_link())

    def get_link(self, link_id: str) -> Deferred[Link | None]:
        """link-1."""
        return succeed(make_link())

    def close(self) -> Deferred[None]:
        """Count closes."""
        self.closed += 1
        return succeed(None)


def frames(data: bytes) -> list[Message]:
    """Decode the 2-octet-length-framed messages in C{data}."""
    messages = []
    while data:
        (length,) = struct.unpack("!H", data[:2])
        message = decode_message(data[2 : 2 + length])
        assert isinstance(message, Message)
        messages.append(message)
        data = data[2 + length :]
    return messages


def relay_query(xid: int = 7) -> bytes:
    """A framed QUERY_BY_RELAY_ID."""
    message = Message(
        MessageType.LEASEQUERY,
        xid,
        (
            ClientId(REQUESTOR),
            LQQuery(QueryType.QUERY_BY_RELAY_ID, IPv6Address(0), (RelayId(RELAY),)),
        ),
    ).encode()
    return struct.pack("!H", len(message)) + message


class ShutdownTests(SynchronousTestCase):
    """Stopping the service is graceful (RFC 5460 section 7.4, S26)."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.reactor.advance(DEFAULT_CLTT + 10)
        self.store = TwoPageStore()
        self.config = ServerConfig(server_duid=SERVER, shutdown_grace=5)
        self.service = BulkLeasequeryService(
            self.store, self.config, ["tcp6:5547:interface=\\:\\:"], reactor=self.reactor
        )
        self.service.startService()
        self.assertEqual(len(self.reactor.tcpServers), 1)
        self.assertEqual(self.reactor.tcpServers[0][0], 5547)
        self.successResultOf(self.service.listening)

    def connect(self) -> tuple[Any, StringTransport]:
        """A connection from ::1 with a query streaming (first page sent, second pending)."""
        address = TwistedIPv6Address("TCP", "::1", 40000)
        protocol = self.service.factory.buildProtocol(address)
        assert protocol is not None
        transport = StringTransport(peerAddress=address)
        protocol.makeConnection(transport)
        protocol.dataReceived(relay_query())
        self.assertIsNotNone(self.store.second)
        return protocol, transport

    def test_terminated_after_grace(self) -> None:
        """
        S26, S38: a query still streaming when the grace period ends gets
        DONE(QueryTerminated), the connection is closed, and stopService's Deferred fires
        once it is gone, after the store is closed.
        """
        protocol, transport = self.connect()
        stopped = self.service.stopService()
        self.assertNoResult(stopped)
        self.reactor.advance(4.9)
        self.assertFalse(transport.disconnecting)
        self.reactor.advance(0.2)
        messages = frames(transport.value())
        self.assertEqual(
            [m.msg_type for m in messages],
            [
                MessageType.LEASEQUERY_REPLY,
                MessageType.LEASEQUERY_DATA,
                MessageType.LEASEQUERY_DONE,
            ],
        )
        done_status = messages[-1].option(StatusCodeOption)
        assert done_status is not None
        self.assertEqual(done_status.status, StatusCode.QueryTerminated)
        self.assertTrue(transport.disconnecting)
        self.assertNoResult(stopped)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(stopped)
        self.assertEqual(self.store.closed, 1)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_finishes_within_grace(self) -> None:
        """A query that finishes within the grace period ends normally with DONE."""
        protocol, transport = self.connect()
        stopped = self.service.stopService()
        assert self.store.second is not None
        self.store.second.callback(BindingPage([make_binding(3, relay_id=RELAY)], None))
        messages = frames(transport.value())
        self.assertEqual(messages[-1].msg_type, MessageType.LEASEQUERY_DONE)
        self.assertIsNone(messages[-1].option(StatusCodeOption))
        self.assertEqual(sum(1 for m in messages if m.option(ClientData)), 3)
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(stopped)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_no_connections(self) -> None:
        """With nothing in progress, stopService fires at once and closes the store."""
        self.successResultOf(self.service.stopService())
        self.assertEqual(self.store.closed, 1)

    def test_new_connections_refused(self) -> None:
        """After stopService begins, new connections are refused."""
        self.connect()
        self.service.stopService()
        address = TwistedIPv6Address("TCP", "::1", 40001)
        self.assertIsNone(self.service.factory.buildProtocol(address))
        self.assertEqual(self.service.factory.stats.refusals["shutdown"], 1)
        self.reactor.advance(100)


class FailingReactor(MemoryReactorClock):
    """A reactor on which every port is taken."""

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        """Fail like a port in use."""
        raise CannotListenError(interface, port, OSError(98, "Address already in use"))


class ListenFailureTests(SynchronousTestCase):
    """A port that cannot be bound."""

    def test_service_reports(self) -> None:
        """The service's listening Deferred fails naming the endpoint."""
        service = BulkLeasequeryService(
            TwoPageStore(), ServerConfig(server_duid=SERVER), ["tcp:5547"], reactor=FailingReactor()
        )
        service.startService()
        failure = self.failureResultOf(service.listening)
        self.assertIn("'tcp:5547'", str(failure.value.subFailure.value))

    def test_twistd_exits_with_one_line(self) -> None:
        """Under twistd, the process exits with one line on stderr and status 1."""
        reactor = FailingReactor()
        server = BulkLeasequeryService(
            TwoPageStore(), ServerConfig(server_duid=SERVER), ["tcp:5547"], reactor=reactor
        )
        wrapper = _TwistdService(server, None, reactor)
        error = self.assertRaises(SystemExit, wrapper.startService)
        message = str(error.code)
        self.assertTrue(message.startswith("twistd bulklq: cannot listen on 'tcp:5547'"), message)
        self.assertNotIn("\n", message)

    def test_udp_port_taken(self) -> None:
        """A UDP port that cannot be bound fails the listening Deferred too."""

        class NoUDP(MemoryReactorClock):
            def listenUDP(self, port: int, protocol: Any, interface: str = "", **kw: Any) -> Any:
                raise CannotListenError(interface, port, OSError(13, "Permission denied"))

        service = BulkLeasequeryService(
            TwoPageStore(),
            ServerConfig(server_duid=SERVER),
            ["tcp6:547:interface=\\:\\:"],
            udp=True,
            reactor=NoUDP(),
        )
        service.startService()
        failure = self.failureResultOf(service.listening)
        self.assertIn("UDP [::]:547", str(failure.value.subFailure.value))
