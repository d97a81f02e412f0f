"""
A scripted, misbehaving Bulk Leasequery server for the requestor's tests.

Builders (L{client_data}, L{reply}, L{data}, L{done}, L{frame}) make the messages a test
feeds to a requestor; L{FakeServerFactory} runs a I{behaviour} per LEASEQUERY received
(interleaving, Kea-style one-lease-per-message, DONE with or without STATUS_CODE, DATA
without CLIENT_DATA, DONE with an unknown xid, closing mid-stream, stalling, an over-long
length). L{InMemoryEndpoint} connects a requestor to such a server (or the real one) through
iosim, so L{bulklq.client.Requestor} can be tested without sockets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from ipaddress import IPv6Address, IPv6Network
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.protocols.basic import Int16StringReceiver
from twisted.test import iosim
from zope.interface import implementer

from bulklq.testing import connect_in_memory
from bulklq.wire import (
    ClientData,
    ClientId,
    CltTime,
    Duid,
    IAAddress,
    IAPrefix,
    LQQuery,
    LQRelayData,
    Message,
    MessageType,
    Option,
    ServerId,
    StatusCode,
    StatusCodeOption,
    decode_message,
)

from .vectors import REQUESTOR_DUID, SERVER_DUID

OTHER_SERVER_DUID = Duid.llt(1, 700000000, bytes.fromhex("020000000002"))


def client_duid(number: int) -> Duid:
    """A DUID-LL for client C{number}."""
    return Duid.ll(1, number.to_bytes(6, "big"))


def client_data(  # noqa: PLR0917
    client: int | Duid,
    addresses: Iterable[str] = (),
    prefixes: Iterable[str] = (),
    clt_time: int | None = 10,
    preferred: int = 1800,
    valid: int = 3600,
    relay_data: LQRelayData | None = None,
    extra: Sequence[Option] = (),
    with_client_id: bool = True,
) -> ClientData:
    """One CLIENT_DATA; C{clt_time=None} leaves CLT_TIME out (R12)."""
    duid = client_duid(client) if isinstance(client, int) else client
    options: list[Option] = [ClientId(duid)] if with_client_id else []
    options += [IAAddress(IPv6Address(text), preferred, valid) for text in addresses]
    for text in prefixes:
        network = IPv6Network(text)
        options.append(IAPrefix(preferred, valid, network.prefixlen, network.network_address))
    if clt_time is not None:
        options.append(CltTime(clt_time))
    if relay_data is not None:
        options.append(relay_data)
    options.extend(extra)
    return ClientData(tuple(options))


def status(code: int, text: str = "") -> StatusCodeOption:
    """A STATUS_CODE option."""
    return StatusCodeOption(code, text)


def reply(
    xid: int,
    *options: Option,
    requestor: Duid | None = REQUESTOR_DUID,
    server: Duid | None = SERVER_DUID,
) -> Message:
    """A LEASEQUERY-REPLY with CLIENTID and SERVERID (either left out when C{None})."""
    head: list[Option] = []
    if requestor is not None:
        head.append(ClientId(requestor))
    if server is not None:
        head.append(ServerId(server))
    return Message(MessageType.LEASEQUERY_REPLY, xid, (*head, *options))


def data(xid: int, *options: Option) -> Message:
    """A LEASEQUERY-DATA."""
    return Message(MessageType.LEASEQUERY_DATA, xid, options)


def done(xid: int, *options: Option) -> Message:
    """A LEASEQUERY-DONE."""
    return Message(MessageType.LEASEQUERY_DONE, xid, options)


def frame(*messages: Message | bytes) -> bytes:
    """The messages with their 2-octet size prefixes, concatenated (S1)."""
    out = b""
    for message in messages:
        octets = message if isinstance(message, bytes) else message.encode()
        out += len(octets).to_bytes(2, "big") + octets
    return out


def stream(xid: int, datas: Sequence[ClientData], *done_options: Option) -> list[Message]:
    """A whole successful answer: REPLY (first CLIENT_DATA), DATA for the rest, DONE."""
    if not datas:
        return [reply(xid)]
    return [
        reply(xid, datas[0]),
        *(data(xid, item) for item in datas[1:]),
        done(xid, *done_options),
    ]


#: What the fake server does with each LEASEQUERY: gets the server protocol and the query.
Behaviour = Callable[["FakeServerProtocol", Message], None]


class FakeServerProtocol(Int16StringReceiver):
    """A server that records each LEASEQUERY and runs its factory's behaviour on it."""

    MAX_LENGTH = 65535

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.queries: list[Message] = []

    def stringReceived(self, string: bytes) -> None:
        """Decode the query, record it, run the behaviour."""
        message = decode_message(string)
        assert isinstance(message, Message)
        self.queries.append(message)
        self.behaviour(self, message)

    def send(self, *messages: Message | bytes) -> None:
        """Write messages with their size prefix."""
        self.transport.write(frame(*messages))

    def send_raw(self, octets: bytes) -> None:
        """Write octets as they are (broken framing)."""
        self.transport.write(octets)


class FakeServerFactory(Factory):
    """Builds L{FakeServerProtocol}s running C{behaviour}; keeps them in C{protocols}."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.protocols: list[FakeServerProtocol] = []

    def buildProtocol(self, addr: Any) -> FakeServerProtocol:
        """A new scripted server connection."""
        protocol = FakeServerProtocol(self.behaviour)
        protocol.factory = self
        self.protocols.append(protocol)
        return protocol


def requestor_of(query: Message) -> Duid:
    """The CLIENTID DUID of a LEASEQUERY (what a server copies into its REPLY)."""
    client_id = query.option(ClientId)
    assert client_id is not None
    return client_id.duid


def query_link(query: Message) -> IPv6Address:
    """The link-address of a LEASEQUERY's LQ_QUERY."""
    lq_query = query.option(LQQuery)
    assert lq_query is not None
    return lq_query.link_address


# Behaviours


def answer(
    datas: Sequence[ClientData],
    *done_options: Option,
    server: Duid = SERVER_DUID,
    reply_options: Sequence[Option] = (),
) -> Behaviour:
    """Answer every query with C{datas} (REPLY, DATA..., DONE)."""

    def behave(protocol: FakeServerProtocol, query: Message) -> None:
        xid = query.transaction_id
        if not datas:
            protocol.send(reply(xid, *reply_options, server=server, requestor=requestor_of(query)))
            return
        protocol.send(
            reply(xid, *reply_options, datas[0], server=server, requestor=requestor_of(query)),
            *(data(xid, item) for item in datas[1:]),
            done(xid, *done_options),
        )

    return behave


def kea_style(clients: int) -> Behaviour:
    """
    Answer as Kea does: one lease per CLIENT_DATA (a client with an address and a prefix
    comes twice, its prefix after everyone's addresses), STATUS_CODE Success in the REPLY,
    an option-less DONE.
    """
    addresses = [client_data(n, addresses=[f"2001:db8:1::{n:x}"]) for n in range(1, clients + 1)]
    prefixes = [
        client_data(n, prefixes=[f"2001:db8:ff{n:02x}::/56"]) for n in range(1, clients + 1)
    ]
    return answer(addresses + prefixes, reply_options=[status(StatusCode.Success)])


def refuse(code: int, text: str = "") -> Behaviour:
    """Answer every query with a REPLY carrying an error STATUS_CODE."""

    def behave(protocol: FakeServerProtocol, query: Message) -> None:
        protocol.send(
            reply(query.transaction_id, status(code, text), requestor=requestor_of(query))
        )

    return behave


def close_mid_stream(datas: Sequence[ClientData]) -> Behaviour:
    """Send REPLY and DATA, then close without DONE (as Kea and dhcpkit do on failure)."""

    send = stall(datas)

    def behave(protocol: FakeServerProtocol, query: Message) -> None:
        send(protocol, query)
        protocol.transport.loseConnection()

    return behave


def stall(datas: Sequence[ClientData]) -> Behaviour:
    """Send REPLY and DATA, then nothing more, keeping the connection open."""

    def behave(protocol: FakeServerProtocol, query: Message) -> None:
        xid = query.transaction_id
        protocol.send(
            reply(xid, datas[0], requestor=requestor_of(query)),
            *(data(xid, item) for item in datas[1:]),
        )

    return behave


def overlong_length(datas: Sequence[ClientData]) -> Behaviour:
    """Send REPLY, then a size prefix of 65535 followed by too few octets, then close."""

    def behave(protocol: FakeServerProtocol, query: Message) -> None:
        xid = query.transaction_id
        protocol.send(reply(xid, datas[0], requestor=requestor_of(query)))
        protocol.send_raw(b"\xff\xff" + data(xid, datas[1]).encode())
        protocol.transport.loseConnection()

    return behave


def terminated_then(behaviours: Sequence[Behaviour]) -> Behaviour:
    """Run C{behaviours[n]} for the n-th query the factory sees (across connections)."""
    count = [0]

    def behave(protocol: FakeServerProtocol, query: Message) -> None:
        index = min(count[0], len(behaviours) - 1)
        count[0] += 1
        behaviours[index](protocol, query)

    return behave


def interleave_pairs(datas: Sequence[ClientData], done_status: int | None = None) -> Behaviour:
    """
    Hold each first query; when a second arrives, answer both with C{datas}, their
    messages interleaved one by one (as RFC 5460 section 6.5.1 shows). DONE carries
    STATUS_CODE C{done_status} when given (dhcpkit style), else nothing (Kea style).
    """
    held: list[Message] = []

    def behave(protocol: FakeServerProtocol, query: Message) -> None:
        if not held:
            held.append(query)
            return
        first = held.pop()
        done_options = () if done_status is None else (status(done_status),)
        streams = [
            [
                reply(item.transaction_id, datas[0], requestor=requestor_of(item)),
                *(data(item.transaction_id, client) for client in datas[1:]),
                done(item.transaction_id, *done_options),
            ]
            for item in (query, first)
        ]
        for one, two in zip(*streams, strict=True):
            protocol.send(one, two)

    return behave


def silent(protocol: FakeServerProtocol, query: Message) -> None:
    """Never answer."""


# Connecting a requestor in memory


@implementer(IStreamClientEndpoint)
class InMemoryEndpoint:
    """
    A client endpoint that connects, through iosim, to C{server_factory}; C{refuse} first
    attempts fail with ConnectionRefusedError, and C{hang} attempts after those never
    complete (for the connect timeout). Keeps every pump in C{pumps}.
    """

    def __init__(
        self,
        server_factory: IProtocolFactory,
        clock: Clock | None = None,
        refuse: int = 0,
        hang: int = 0,
    ) -> None:
        self.server_factory = server_factory
        self.clock = clock
        self.refuse = refuse
        self.hang = hang
        self.attempts = 0
        self.pumps: list[iosim.IOPump] = []
        self.hanging: list[Deferred[Any]] = []

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[Any]:
        """Connect now (or refuse, or hang)."""
        self.attempts += 1
        if self.attempts <= self.refuse:
            return fail(ConnectionRefusedError("refused by the test"))
        if self.attempts <= self.refuse + self.hang:
            pending: Deferred[Any] = Deferred()
            self.hanging.append(pending)
            return pending
        client, _server, pump = connect_in_memory(self.server_factory, protocolFactory)
        self.pumps.append(pump)
        return succeed(client)

    def flush(self) -> None:
        """Move bytes on every connection until all are quiet."""
        for pump in self.pumps:
            pump.flush()
