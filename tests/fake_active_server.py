"""
A scripted Active Leasequery server (RFC 7653) for the requestor's tests.

L{FakeActiveServerFactory} records every message each connection receives and answers
nothing by itself beyond what its C{on_message} behaviour does; a test then drives the
stream with the builders (L{active_reply}, L{change}, L{removal}, L{keepalive},
L{catch_up_complete}, L{done_terminated}) through L{FakeActiveServerProtocol.send}. Bulk
LEASEQUERYs (the DataMissing fallback) are answered by C{on_bulk}. The shapes follow
docs/active-leasequery.md ("Wire behaviour").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.protocol import Factory
from twisted.protocols.basic import Int16StringReceiver

from bulklq.wire import (
    ClientData,
    ClientId,
    LQBaseTime,
    Message,
    MessageType,
    Option,
    ServerId,
    StatusCode,
    StatusCodeOption,
    decode_message,
)
from tests.fake_server import SERVER_DUID, client_data, frame, requestor_of

__all__ = [
    "FakeActiveServerFactory",
    "FakeActiveServerProtocol",
    "accept",
    "active_reply",
    "catch_up_complete",
    "change",
    "data_missing_reply",
    "done_terminated",
    "keepalive",
    "refuse_active",
    "removal",
]


def active_reply(query: Message, *options: Option, base_time: int | None = 1000) -> Message:
    """The LEASEQUERY-REPLY accepting C{query}: CLIENTID, SERVERID, options, base time."""
    extra: tuple[Option, ...] = () if base_time is None else (LQBaseTime(base_time),)
    return Message(
        MessageType.LEASEQUERY_REPLY,
        query.transaction_id,
        (ClientId(requestor_of(query)), ServerId(SERVER_DUID), *options, *extra),
    )


def data_missing_reply(query: Message, base_time: int) -> Message:
    """The REPLY for a catch-up the server has no history for (RFC 7653 8.4.1)."""
    return active_reply(
        query, StatusCodeOption(StatusCode.DataMissing, "history too short"), base_time=base_time
    )


def change(xid: int, data: ClientData, base_time: int | None = 1001) -> Message:
    """One LEASEQUERY-DATA with one CLIENT_DATA and the base time (last option)."""
    extra: tuple[Option, ...] = () if base_time is None else (LQBaseTime(base_time),)
    return Message(MessageType.LEASEQUERY_DATA, xid, (data, *extra))


def removal(
    client: int, addresses: Sequence[str] = (), prefixes: Sequence[str] = (), clt_time: int = 0
) -> ClientData:
    """A removed or expired binding: every lease with lifetimes 0, and CLT_TIME."""
    return client_data(client, addresses, prefixes, clt_time=clt_time, preferred=0, valid=0)


def keepalive(xid: int, base_time: int = 1002) -> Message:
    """A keep-alive: LEASEQUERY-DATA with only the base time (RFC 7653 8.4)."""
    return Message(MessageType.LEASEQUERY_DATA, xid, (LQBaseTime(base_time),))


def catch_up_complete(xid: int, base_time: int) -> Message:
    """LEASEQUERY-DATA with STATUS_CODE CatchUpComplete and the base time."""
    return Message(
        MessageType.LEASEQUERY_DATA,
        xid,
        (StatusCodeOption(StatusCode.CatchUpComplete), LQBaseTime(base_time)),
    )


def done_terminated(xid: int, base_time: int) -> Message:
    """LEASEQUERY-DONE with QueryTerminated and the base time (server shutdown)."""
    return Message(
        MessageType.LEASEQUERY_DONE,
        xid,
        (StatusCodeOption(StatusCode.QueryTerminated, "shutting down"), LQBaseTime(base_time)),
    )


class FakeActiveServerProtocol(Int16StringReceiver):
    """Records messages in C{received}; runs the factory's behaviour for each."""

    MAX_LENGTH = 65535

    def __init__(self, factory: FakeActiveServerFactory) -> None:
        self.server = factory
        self.received: list[Message] = []
        self.active: Message | None = None
        self.closed = False

    def stringReceived(self, string: bytes) -> None:
        """Decode, record, dispatch by type."""
        message = decode_message(string)
        assert isinstance(message, Message)
        self.received.append(message)
        if message.msg_type == MessageType.ACTIVELEASEQUERY:
            self.active = message
            self.server.on_active(self, message)
        elif message.msg_type == MessageType.LEASEQUERY:
            self.server.on_bulk(self, message)

    def connectionLost(self, reason: Any = None) -> None:
        """Note the close."""
        self.closed = True

    def send(self, *messages: Message | bytes) -> None:
        """Write messages with their size prefix."""
        self.transport.write(frame(*messages))

    @property
    def xid(self) -> int:
        """The transaction-id of the active query on this connection."""
        assert self.active is not None
        return self.active.transaction_id


Behaviour = Callable[[FakeActiveServerProtocol, Message], None]


def accept(base_time: int = 1000) -> Behaviour:
    """Accept every active query with a REPLY (no CLIENT_DATA) carrying C{base_time}."""

    def behave(protocol: FakeActiveServerProtocol, query: Message) -> None:
        protocol.send(active_reply(query, base_time=base_time))

    return behave


def refuse_active(code: int) -> Behaviour:
    """Answer with a REPLY carrying an error STATUS_CODE, then close."""

    def behave(protocol: FakeActiveServerProtocol, query: Message) -> None:
        protocol.send(active_reply(query, StatusCodeOption(code, "no")))
        protocol.transport.loseConnection()

    return behave


def _no_bulk(protocol: FakeActiveServerProtocol, query: Message) -> None:
    protocol.send(
        Message(
            MessageType.LEASEQUERY_REPLY,
            query.transaction_id,
            (
                ClientId(requestor_of(query)),
                ServerId(SERVER_DUID),
                StatusCodeOption(StatusCode.NotConfigured),
            ),
        )
    )


class FakeActiveServerFactory(Factory):
    """Builds L{FakeActiveServerProtocol}s; keeps them in C{protocols}."""

    def __init__(self, on_active: Behaviour | None = None, on_bulk: Behaviour | None = None):
        self.on_active = on_active or accept()
        self.on_bulk = on_bulk or _no_bulk
        self.protocols: list[FakeActiveServerProtocol] = []

    def buildProtocol(self, addr: Any) -> FakeActiveServerProtocol:
        """A new scripted connection."""
        protocol = FakeActiveServerProtocol(self)
        protocol.factory = self
        self.protocols.append(protocol)
        return protocol

    @property
    def last(self) -> FakeActiveServerProtocol:
        """The most recent connection."""
        return self.protocols[-1]

    def active_queries(self) -> list[Message]:
        """Every ACTIVELEASEQUERY received, across connections."""
        return [p.active for p in self.protocols if p.active is not None]
