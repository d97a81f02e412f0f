"""
The adversarial harness shared by the C{test_hardening_*} suites and C{bench/torture.py}.

It builds a server (L{BulkLeasequeryFactory} over a L{MemoryBindingStore}) on a
L{MemoryReactorClock}, connects protocols to it over L{StringTransport}s with the peer
address a test chooses, generates junk (random frames and mutations of real queries), and
judges what the server did with each input against what the RFCs say, independently of
L{bulklq.query}: L{expected_outcome} and L{check_single_frame}.

The tests at the bottom check the harness itself (the oracle must be able to fail).
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Iterator, Sequence
from ipaddress import IPv6Address
from typing import Any

import attrs
from twisted.internet import address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from bulklq.config import ServerConfig, parse_access_rule
from bulklq.model import Binding, Link
from bulklq.server import BulkLeasequeryFactory, BulkLeasequeryProtocol
from bulklq.stores.memory import MemoryBindingStore
from bulklq.testing import make_binding, make_duid, make_link, make_relay_data
from bulklq.wire import (
    ClientId,
    Duid,
    IAAddress,
    LQQuery,
    Message,
    MessageType,
    OptionRequest,
    QueryType,
    RelayId,
    RelayMessage,
    RelayMessageOption,
    RemoteId,
    ServerId,
    StatusCode,
    StatusCodeOption,
    WireError,
    decode_message,
)

SERVER_DUID = Duid.llt(1, 700000000, bytes.fromhex("020000000001"))
OTHER_SERVER_DUID = Duid.llt(1, 700000000, bytes.fromhex("020000000002"))
REQUESTOR_DUID = Duid.en(32473, b"requestor-1")
RELAY_DUID = Duid.en(32473, b"relay-1")
REMOTE = RemoteId(32473, b"circuit-1")
LINK = make_link("link-1", ("2001:db8:1::/64",))
#: The Unix time the harness clock shows.
NOW = 1_700_000_100
#: The largest frame the server reads (L{BulkLeasequeryProtocol.MAX_LENGTH}).
MAX_QUERY = BulkLeasequeryProtocol.MAX_LENGTH


def frame(message: bytes) -> bytes:
    """C{message} with its 2-octet size prefix (S1)."""
    return struct.pack("!H", len(message)) + message


def harness_bindings(count: int, link: Link = LINK, cltt: int = NOW - 60) -> list[Binding]:
    """
    C{count} bindings on C{link}, relayed by L{RELAY_DUID} with L{REMOTE}, last seen at
    C{cltt} (valid for an hour after).
    """
    relay = make_relay_data(link_address=link.address + 1, relay_id=RELAY_DUID, remote_id=REMOTE)
    return [
        make_binding(
            number,
            link.link_id,
            cltt=cltt,
            addresses=(link.prefixes[0].network_address + number,),
            relay_data=relay,
        )
        for number in range(1, count + 1)
    ]


def harness_config(**changes: Any) -> ServerConfig:
    """A server config allowing every address, short page size; C{changes} override."""
    values: dict[str, Any] = {
        "allow": (parse_access_rule("::/0"), parse_access_rule("0.0.0.0/0")),
        "page_size": 2,
        "max_connections": 1_000_000,
        "max_connections_per_requestor": 1_000_000,
    }
    values.update(changes)
    return ServerConfig(SERVER_DUID, **values)


class FullTransport(StringTransport):
    """
    A transport whose buffer is full after every write: it pauses its producer each time,
    as a TCP transport does when the peer stops reading. C{resumeProducing} on the producer
    lets one more page out.
    """

    def write(self, data: bytes) -> None:
        """Take the octets, then tell the producer to pause."""
        super().write(data)
        if self.producer is not None and not self.disconnecting:
            self.producer.pauseProducing()


class Harness:
    """
    A server on a L{MemoryReactorClock} and helpers to connect to it in memory.

    @ivar clock: the reactor and clock of the factory (shows L{NOW} at first).
    @ivar store: the memory store (L{harness_bindings} of C{bindings}).
    @ivar factory: the server factory.
    """

    def __init__(
        self, bindings: int = 5, config: ServerConfig | None = None, store: Any = None
    ) -> None:
        self.clock = MemoryReactorClock()
        self.clock.advance(NOW)
        if store is None:
            store = MemoryBindingStore([LINK], clock=self.clock)
            store.put_many(harness_bindings(bindings))
        self.store = store
        self.config = config or harness_config()
        self.factory = BulkLeasequeryFactory(store, self.config, self.clock)
        self._port = 40000

    def connect(
        self, peer: str = "2001:db8::100", full: bool = False
    ) -> tuple[BulkLeasequeryProtocol | None, Any]:
        """
        A connection from C{peer} (IPv4 or IPv6 text): C{(protocol, transport)}, or
        C{(None, None)} when the factory refuses it. C{full}: a L{FullTransport}.
        """
        self._port = self._port + 1 if self._port < 65000 else 40000
        kind = address.IPv6Address if ":" in peer else address.IPv4Address
        peer_address = kind("TCP", peer, self._port)
        protocol = self.factory.buildProtocol(peer_address)
        if protocol is None:
            return None, None
        transport = (FullTransport if full else StringTransport)(peerAddress=peer_address)
        protocol.makeConnection(transport)
        return protocol, transport

    def lose(self, protocol: BulkLeasequeryProtocol, transport: StringTransport) -> None:
        """Deliver C{connectionLost}, as a real transport does after closing."""
        if not getattr(protocol, "_lost", False):
            protocol.connectionLost(Failure(ConnectionDone()))


def written_frames(data: bytes) -> list[bytes]:
    """
    Split what the server wrote into messages.

    @raise AssertionError: if the octets do not split into whole frames.
    """
    messages = []
    offset = 0
    while offset < len(data):
        if offset + 2 > len(data):
            raise AssertionError(f"a dangling octet after {len(messages)} frames")
        (size,) = struct.unpack_from("!H", data, offset)
        if offset + 2 + size > len(data):
            raise AssertionError(f"frame {len(messages)} is cut short")
        messages.append(data[offset + 2 : offset + 2 + size])
        offset += 2 + size
    return messages


# -- seeds and junk ------------------------------------------------------------------------


def seed_messages() -> list[bytes]:
    """
    Real messages to mutate: every query type (with and without link, ORO, our SERVERID),
    each kind of malformed LEASEQUERY the RFC names, and the other message types.
    """
    client = ClientId(REQUESTOR_DUID)
    oro = OptionRequest((47, 46))
    link = LINK.address + 1
    queries: list[tuple[int, IPv6Address, tuple[Any, ...]]] = [
        (QueryType.QUERY_BY_ADDRESS, IPv6Address(0), (IAAddress(LINK.address + 1, 0, 0),)),
        (QueryType.QUERY_BY_ADDRESS, link, (IAAddress(LINK.address + 3, 0, 0), oro)),
        (QueryType.QUERY_BY_CLIENTID, IPv6Address(0), (ClientId(make_duid(2)),)),
        (QueryType.QUERY_BY_RELAY_ID, IPv6Address(0), (RelayId(RELAY_DUID), oro)),
        (QueryType.QUERY_BY_RELAY_ID, link, (RelayId(RELAY_DUID),)),
        (QueryType.QUERY_BY_LINK_ADDRESS, link, ()),
        (QueryType.QUERY_BY_LINK_ADDRESS, IPv6Address(0), ()),
        (QueryType.QUERY_BY_REMOTE_ID, IPv6Address(0), (REMOTE, oro)),
        (QueryType.QUERY_BY_REMOTE_ID, IPv6Address("2001:db8:99::1"), (REMOTE,)),
        (QueryType.QUERY_BY_RELAY_ID, IPv6Address(0), ()),
        (9, IPv6Address(0), ()),
    ]
    seeds = []
    for number, (query_type, link_address, options) in enumerate(queries):
        lq = LQQuery(query_type, link_address, options)
        seeds.append(Message(MessageType.LEASEQUERY, 0x100 + number, (client, lq)).encode())
        seeds.append(
            Message(
                MessageType.LEASEQUERY, 0x200 + number, (client, ServerId(SERVER_DUID), lq)
            ).encode()
        )
    lq = LQQuery(QueryType.QUERY_BY_LINK_ADDRESS, link, ())
    seeds += [
        Message(MessageType.LEASEQUERY, 0x301, (lq,)).encode(),
        Message(MessageType.LEASEQUERY, 0x302, (client,)).encode(),
        Message(MessageType.LEASEQUERY, 0x303, (client, ServerId(OTHER_SERVER_DUID), lq)).encode(),
        Message(MessageType.LEASEQUERY_REPLY, 0x304, (client, ServerId(SERVER_DUID))).encode(),
        Message(MessageType.ACTIVELEASEQUERY, 0x305, (client,)).encode(),
        Message(MessageType.STARTTLS, 0x306, (client,)).encode(),
        Message(MessageType.LEASEQUERY_DONE, 0x307, ()).encode(),
        Message(MessageType.LEASEQUERY_DATA, 0x308, ()).encode(),
        Message(
            MessageType.LEASEQUERY_REPLY,
            0x309,
            (client, StatusCodeOption(StatusCode.Success, "ok")),
        ).encode(),
        RelayMessage(
            MessageType.RELAY_FORW,
            0,
            link,
            IPv6Address("fe80::1"),
            (RelayMessageOption(Message(MessageType.LEASEQUERY, 0x30A, (client, lq)).encode()),),
        ).encode(),
    ]
    return seeds


def _option_spans(message: bytes, start: int) -> list[tuple[int, int]]:
    """(offset of the length field, length) of each option from C{start}, as far as they parse."""
    spans = []
    offset = start
    while offset + 4 <= len(message):
        (length,) = struct.unpack_from("!H", message, offset + 2)
        spans.append((offset + 2, length))
        offset += 4 + length
    return spans


def mutate(rng: random.Random, message: bytes, seeds: Sequence[bytes]) -> bytes:
    """One mutation of C{message} (no size prefix): what a careless or hostile peer sends."""
    data = bytearray(message)
    choice = rng.randrange(10)
    if choice == 0 and data:  # flip bits
        for _ in range(rng.randint(1, 4)):
            position = rng.randrange(len(data))
            data[position] ^= 1 << rng.randrange(8)
    elif choice == 1 and data:  # set octets to interesting values
        for _ in range(rng.randint(1, 3)):
            value = rng.choice((0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)))
            data[rng.randrange(len(data))] = value
    elif choice == 2 and data:  # truncate
        del data[rng.randrange(len(data)) :]
    elif choice == 3:  # insert random octets
        position = rng.randint(0, len(data))
        data[position:position] = rng.randbytes(rng.randint(1, 16))
    elif choice == 4 and data:  # delete a run
        position = rng.randrange(len(data))
        del data[position : position + rng.randint(1, 8)]
    elif choice in (5, 6):  # change an option length (top level or nested in LQ_QUERY)
        spans = _option_spans(bytes(data), 4)
        nested = [
            span
            for offset, length in spans
            if offset >= 2 and data[offset - 2 : offset] == b"\x00\x2c"
            for span in _option_spans(bytes(data[: offset + 2 + length]), offset + 2 + 17)
        ]
        candidates = spans + nested
        if candidates:
            offset, length = rng.choice(candidates)
            new = rng.choice((0, 1, length - 1, length + 1, 0xFFFF, rng.randrange(0x10000)))
            struct.pack_into("!H", data, offset, max(0, min(new, 0xFFFF)))
    elif choice == 7:  # splice with another seed
        other = rng.choice(seeds)
        cut = rng.randint(0, len(data))
        data = data[:cut] + other[rng.randint(0, len(other)) :]
    elif choice == 8 and data:  # another message type
        data[0] = rng.choice((1, 7, 12, 13, 14, 15, 16, 17, 22, 23, 255))
    else:  # duplicate an option
        spans = _option_spans(bytes(data), 4)
        if spans:
            offset, length = rng.choice(spans)
            chunk = data[offset - 2 : offset + 2 + length]
            data[offset - 2 : offset - 2] = chunk
    return bytes(data[: MAX_QUERY + 64])


def junk_messages(rng: random.Random, count: int) -> Iterator[bytes]:
    """
    C{count} junk messages (without size prefix): one in four random octets (often with a
    Leasequery message type first), the others one to three mutations of a real message.
    """
    seeds = seed_messages()
    for _ in range(count):
        if rng.randrange(4) == 0:
            message = rng.randbytes(rng.choice((0, 1, 3, 4, 5, 8, 20, 60, rng.randrange(300))))
            if message and rng.randrange(2):
                message = bytes((rng.choice((14, 15, 16, 17, 22, 23)),)) + message[1:]
        else:
            message = rng.choice(seeds)
            for _ in range(rng.randint(1, 3)):
                message = mutate(rng, message, seeds)
        yield message


# -- the oracle ----------------------------------------------------------------------------


@attrs.frozen
class Expected:
    """
    What the RFCs say a fresh connection does with one whole message.

    @ivar answer: C{None} (no answer), C{"reply"} (a LEASEQUERY-REPLY, possibly followed by
        DATA and one DONE), C{"notsupported"} (REPLY with NotSupported) or C{"starttls"}
        (a REPLY, type 7, with TLSConnectionRefused).
    @ivar close: whether the server closes after it.
    @ivar xid: the transaction-id every answer must carry (S28).
    @ivar client_id: the query's CLIENTID, which a REPLY copies (S29).
    """

    answer: str | None
    close: bool
    xid: int = 0
    client_id: ClientId | None = None


def expected_outcome(message: bytes, server_duid: Duid = SERVER_DUID) -> Expected:
    """
    The RFC's answer to C{message} arriving alone on a fresh connection (S2-S6, S52, S53),
    derived from the codec and RFC 5007 section 4.2.1, not from L{bulklq.query}.
    """
    if len(message) > MAX_QUERY:
        return Expected(None, True)
    try:
        decoded = decode_message(message)
    except WireError:
        return Expected(None, True)
    if isinstance(decoded, RelayMessage):
        return Expected(None, True)
    xid = decoded.transaction_id
    kind = decoded.msg_type
    client_id = decoded.option(ClientId)
    if kind == MessageType.LEASEQUERY_REPLY:
        return Expected(None, False, xid)
    if kind == MessageType.ACTIVELEASEQUERY:
        return Expected("notsupported", True, xid, client_id)
    if kind == MessageType.STARTTLS:
        return Expected("starttls", False, xid, client_id)
    if kind != MessageType.LEASEQUERY:
        return Expected(None, True, xid)
    server_id = decoded.option(ServerId)
    if (
        decoded.option(ClientId) is None
        or decoded.option(LQQuery) is None
        or (server_id is not None and server_id.duid != server_duid)
    ):
        return Expected(None, False, xid)
    return Expected("reply", False, xid, client_id)


def check_answer(expected: Expected, written: bytes, closed: bool) -> str | None:
    """
    Whether what a connection wrote and whether it closed match C{expected}; a one-line
    description of the first problem, or C{None}.
    """
    try:
        frames = written_frames(written)
    except AssertionError as error:
        return str(error)
    messages = []
    for raw in frames:
        try:
            decoded = decode_message(raw)
        except WireError as error:
            return f"the server wrote an undecodable message: {error}"
        if not isinstance(decoded, Message):
            return "the server wrote a relay message"
        if decoded.transaction_id != expected.xid:
            return f"xid {decoded.transaction_id:#x} instead of {expected.xid:#x} (S28)"
        messages.append(decoded)
    if expected.answer is None:
        if messages:
            return f"answered {[m.msg_type.name for m in messages]} to a message that gets none"
        if closed != expected.close:
            return "closed" if closed else "left open"
        return None
    if not messages:
        return f"no answer, expected {expected.answer}"
    first = messages[0]
    status = first.option(StatusCodeOption)
    if expected.answer == "starttls":
        if first.msg_type != MessageType.REPLY or status is None:
            return "STARTTLS not answered by REPLY with a status (S53)"
        return None if status.status == StatusCode.TLSConnectionRefused else "wrong STARTTLS status"
    if first.msg_type != MessageType.LEASEQUERY_REPLY:
        return f"first answer is {first.msg_type.name}, not LEASEQUERY-REPLY"
    if first.option(ServerId) != ServerId(SERVER_DUID):
        return "REPLY without our SERVERID (S29)"
    if first.option(ClientId) != expected.client_id:
        return "REPLY without a copy of the query's CLIENTID (S29)"
    if expected.answer == "notsupported":
        if status is None or status.status != StatusCode.NotSupported or not closed:
            return "ACTIVELEASEQUERY not answered NotSupported then closed (S52)"
        return None
    rest = messages[1:]
    if rest:
        if status is not None and status.status != StatusCode.Success:
            return "DATA or DONE after an error REPLY (S33)"
        if rest[-1].msg_type != MessageType.LEASEQUERY_DONE:
            return "a stream without its DONE (S35)"
        if any(m.msg_type != MessageType.LEASEQUERY_DATA for m in rest[:-1]):
            return "something other than DATA between REPLY and DONE (S32)"
    if closed:
        return "closed after answering a valid query"
    return None


@implementer(ILogObserver)
class FailureCounter:
    """
    A log observer counting events that carry a failure or are errors or worse; the first
    few are kept in C{examples} (text).
    """

    def __init__(self) -> None:
        self.count = 0
        self.examples: list[str] = []

    def __call__(self, event: LogEvent) -> None:
        level = event.get("log_level")
        failure = event.get("log_failure")
        if failure is None and getattr(level, "name", "") not in ("error", "critical"):
            return
        self.count += 1
        if len(self.examples) < 5:
            text = str(event.get("log_format", ""))
            if failure is not None:
                text += " " + failure.getTraceback()
            self.examples.append(text)

    def __enter__(self) -> FailureCounter:
        globalLogPublisher.addObserver(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        globalLogPublisher.removeObserver(self)


def check_single_frame(harness: Harness, message: bytes) -> str | None:
    """
    Send C{message} alone (framed, in one segment) on a fresh connection, wait the data
    timeout if the server still waits for octets, and judge the outcome. The connection is
    then lost; a timer or query left behind is a problem too.
    """
    protocol, transport = harness.connect()
    assert protocol is not None
    expected = expected_outcome(message)
    try:
        protocol.dataReceived(frame(message))
    except Exception as error:  # the point of the exercise
        return f"dataReceived raised {type(error).__name__}: {error}"
    problem = check_answer(expected, transport.value(), transport.disconnecting)
    if not transport.disconnecting:
        harness.clock.advance(harness.config.idle_timeout + 1)
        if not transport.disconnecting:
            problem = problem or "still open after the idle timeout"
    harness.lose(protocol, transport)
    if harness.factory.connections:
        problem = problem or "the factory still counts the connection"
    if harness.clock.getDelayedCalls():
        problem = problem or "a timer was left behind"
    return problem


def feed_stream(harness: Harness, rng: random.Random, messages: Sequence[bytes]) -> str | None:
    """
    Send several junk messages on one connection, split into random segments (S1), then
    wait out every timer. Checks the invariants that hold whatever the messages: nothing
    raised, every written frame is whole and decodable, the connection ends closed, no
    timer or connection is left behind.
    """
    protocol, transport = harness.connect()
    assert protocol is not None
    stream = b"".join(frame(m) for m in messages)
    if rng.randrange(4) == 0:  # a torn final frame
        stream = stream[: rng.randrange(len(stream) + 1)]
    offset = 0
    try:
        while offset < len(stream) and not transport.disconnecting:
            step = rng.choice((1, 2, 3, 7, 64, len(stream)))
            protocol.dataReceived(stream[offset : offset + step])
            offset += step
    except Exception as error:
        return f"dataReceived raised {type(error).__name__}: {error}"
    try:
        for raw in written_frames(transport.value()):
            decode_message(raw)
    except (AssertionError, WireError) as error:
        return f"bad output: {error}"
    harness.clock.advance(max(harness.config.idle_timeout, harness.config.data_timeout) + 1)
    if not transport.disconnecting:
        return "still open after every timeout"
    harness.lose(protocol, transport)
    if harness.factory.connections:
        return "the factory still counts the connection"
    if harness.clock.getDelayedCalls():
        return "a timer was left behind"
    return None


def run_junk(
    count: int,
    seed: int = 1,
    stream_every: int = 8,
    on_problem: Callable[[str], None] | None = None,
) -> dict[str, int]:
    """
    C{count} junk messages through a fresh in-memory server: most alone on a fresh
    connection (judged by L{check_single_frame}), every C{stream_every}-th batch of a few
    on one connection (L{feed_stream}). Returns counts: messages, connections, problems,
    logged failures, and outcomes by kind.
    """
    rng = random.Random(seed)
    harness = Harness()
    counts = {"messages": 0, "connections": 0, "problems": 0, "failures_logged": 0}
    outcomes: dict[str, int] = {}
    messages = junk_messages(rng, count)
    with FailureCounter() as failures:
        while counts["messages"] < count:
            counts["connections"] += 1
            if counts["connections"] % stream_every == 0:
                batch = [m for _, m in zip(range(rng.randint(2, 6)), messages, strict=False)]
                counts["messages"] += len(batch)
                problem = feed_stream(harness, rng, batch)
                kind = "stream"
            else:
                message = next(messages, None)
                if message is None:
                    break
                counts["messages"] += 1
                expected = expected_outcome(message)
                kind = f"{expected.answer or 'none'}/{'close' if expected.close else 'open'}"
                problem = check_single_frame(harness, message)
            outcomes[kind] = outcomes.get(kind, 0) + 1
            if problem is not None:
                counts["problems"] += 1
                if on_problem is not None:
                    on_problem(problem)
    counts["failures_logged"] = failures.count
    counts.update({f"outcome {k}": v for k, v in sorted(outcomes.items())})
    return counts


class HarnessTests(SynchronousTestCase):
    """The harness must be able to fail: its oracle rejects wrong answers."""

    def test_oracle_rejects_wrong_answers(self) -> None:
        """L{check_answer} flags a missing reply, a wrong xid, an answer to a discard."""
        reply = Expected("reply", False, 7)
        self.assertEqual(check_answer(reply, b"", False), "no answer, expected reply")
        wrong_xid = frame(Message(MessageType.LEASEQUERY_REPLY, 8, ()).encode())
        self.assertIn("xid", check_answer(reply, wrong_xid, False) or "")
        discard = Expected(None, False, 7)
        answer = frame(Message(MessageType.LEASEQUERY_REPLY, 7, ()).encode())
        self.assertIsNotNone(check_answer(discard, answer, False))
        self.assertEqual(check_answer(discard, b"", True), "closed")

    def test_seeds_are_answered_as_expected(self) -> None:
        """
        Every seed message, alone on a fresh connection, gets what the oracle expects
        (S2-S7, S9, S28, S29, S52, S53), and the oracle sees all its outcomes.
        """
        harness = Harness()
        kinds = set()
        for message in seed_messages():
            self.assertIsNone(check_single_frame(harness, message), message.hex())
            expected = expected_outcome(message)
            kinds.add((expected.answer, expected.close))
        self.assertEqual(
            kinds,
            {
                ("reply", False),
                (None, False),
                (None, True),
                ("notsupported", True),
                ("starttls", False),
            },
        )

    def test_junk_is_deterministic(self) -> None:
        """The same seed gives the same junk, so a failure can be replayed."""
        first = list(junk_messages(random.Random(5), 50))
        self.assertEqual(first, list(junk_messages(random.Random(5), 50)))
        self.assertNotEqual(first, list(junk_messages(random.Random(6), 50)))


class DocsExampleTests(SynchronousTestCase):
    """The configuration example of docs/hardening.md runs."""

    def test_example_runs(self) -> None:
        """The page's Python block executes without error (its asserts hold)."""
        import pathlib
        import re

        page = pathlib.Path(__file__).resolve().parent.parent / "docs" / "hardening.md"
        blocks = re.findall(r"```python\n(.*?)```", page.read_text(), re.DOTALL)
        self.assertEqual(len(blocks), 1)
        namespace: dict[str, object] = {}
        exec(compile(blocks[0], str(page), "exec"), namespace)
        self.assertIn("config", namespace)
