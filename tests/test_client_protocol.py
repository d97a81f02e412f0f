"""
Tests for L{bulklq.client.BulkLeasequeryClientProtocol}: the requestor's connection,
driven byte by byte with a StringTransport and a Clock. Each test names the R item of
the protocol checklist it covers.
"""

from __future__ import annotations

import random
from ipaddress import IPv6Address

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from bulklq.client import BulkLeasequeryClientProtocol, LeaseQuery, QueryStatus, ServerResult
from bulklq.model import Binding
from bulklq.wire import (
    ClientData,
    ClientId,
    Duid,
    LQQuery,
    Message,
    MessageType,
    OptionRequest,
    QueryType,
    RelayId,
    StatusCode,
    decode_message,
)

from .fake_server import (
    OTHER_SERVER_DUID,
    REQUESTOR_DUID,
    SERVER_DUID,
    client_data,
    client_duid,
    data,
    done,
    frame,
    reply,
    status,
    stream,
)

NOW = 1_700_000_000
RELAY = Duid.uuid(bytes(range(16)))


class ProtocolTestCase(SynchronousTestCase):
    """A connected protocol on a StringTransport, with helpers to read what it sent."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.protocol = BulkLeasequeryClientProtocol(
            REQUESTOR_DUID, self.clock, 300, random.Random(5)
        )
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    def sent(self) -> list[Message]:
        """The messages written so far (and clear the transport)."""
        octets = self.transport.value()
        self.transport.clear()
        messages = []
        while octets:
            size = int.from_bytes(octets[:2], "big")
            message = decode_message(octets[2 : 2 + size])
            assert isinstance(message, Message)
            messages.append(message)
            octets = octets[2 + size :]
        return messages

    def ask(
        self, query: LeaseQuery | None = None, **kwargs: object
    ) -> tuple[int, list[ServerResult], list[Binding]]:
        """Send a query; return its xid, a list its result lands in, and a list of bindings."""
        results: list[ServerResult] = []
        streamed: list[Binding] = []
        deferred = self.protocol.query(
            query or LeaseQuery.by_relay_id(RELAY), streamed.append, **kwargs
        )
        deferred.addCallback(results.append)
        (message,) = self.sent()
        return message.transaction_id, results, streamed

    def feed(self, *messages: Message | bytes) -> None:
        """Deliver messages in one segment."""
        self.protocol.dataReceived(frame(*messages))

    def tearDown(self) -> None:
        if self.protocol.outstanding:
            self.protocol.connectionLost()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class QueryFormTests(ProtocolTestCase):
    """What the protocol sends."""

    def test_clientid_and_one_lq_query(self) -> None:
        """R1: the LEASEQUERY holds the requestor's DUID in CLIENTID and exactly one LQ_QUERY."""
        self.protocol.query(LeaseQuery.by_link_address(IPv6Address("2001:db8:1::1")))
        (message,) = self.sent()
        self.assertEqual(message.msg_type, MessageType.LEASEQUERY)
        self.assertEqual(message.options_of(ClientId), [ClientId(REQUESTOR_DUID)])
        self.assertEqual(len(message.options_of(LQQuery)), 1)
        self.assertEqual(len(message.options), 2)

    def test_query_options_fit_the_type(self) -> None:
        """R2: each query type carries exactly its query-option (none for by-link)."""
        cases = [
            (LeaseQuery.by_address(IPv6Address("2001:db8::5")), QueryType.QUERY_BY_ADDRESS, 5),
            (LeaseQuery.by_client_id(client_duid(1)), QueryType.QUERY_BY_CLIENTID, 1),
            (LeaseQuery.by_relay_id(RELAY), QueryType.QUERY_BY_RELAY_ID, 53),
            (
                LeaseQuery.by_link_address(IPv6Address("2001:db8::1")),
                QueryType.QUERY_BY_LINK_ADDRESS,
                None,
            ),
        ]
        from bulklq.wire import RemoteId

        cases.append((LeaseQuery.by_remote_id(RemoteId(9, b"x")), QueryType.QUERY_BY_REMOTE_ID, 37))
        for query, query_type, code in cases:
            self.protocol.query(query)
            (message,) = self.sent()
            lq_query = message.option(LQQuery)
            assert lq_query is not None
            self.assertEqual(lq_query.query_type, query_type)
            self.assertEqual([option.code for option in lq_query.options], [code] if code else [])
        self.protocol.connectionLost()

    def test_relay_data_asked_in_lq_query_oro(self) -> None:
        """
        S44/R2: --relay-data puts an ORO for option 47 inside LQ_QUERY, after the
        query-option.
        """
        self.protocol.query(LeaseQuery.by_relay_id(RELAY, relay_data=True))
        (message,) = self.sent()
        lq_query = message.option(LQQuery)
        assert lq_query is not None
        self.assertEqual(lq_query.options, (RelayId(RELAY), OptionRequest((47,))))
        self.assertIsNone(message.option(OptionRequest))

    def test_unique_transaction_ids(self) -> None:
        """R5: outstanding queries on one connection never share a transaction-id."""
        # A random source that repeats itself must not produce a duplicate.
        repeating = random.Random(1)
        protocol = BulkLeasequeryClientProtocol(REQUESTOR_DUID, self.clock, 300, repeating)
        transport = StringTransport()
        protocol.makeConnection(transport)
        state = repeating.getstate()
        protocol.query(LeaseQuery.by_relay_id(RELAY))
        repeating.setstate(state)
        protocol.query(LeaseQuery.by_relay_id(RELAY))
        for _ in range(50):
            protocol.query(LeaseQuery.by_relay_id(RELAY))
        self.transport = transport
        xids = [message.transaction_id for message in self.sent()]
        self.assertEqual(len(xids), 52)
        self.assertEqual(len(set(xids)), 52)
        protocol.connectionLost()

    def test_not_connected(self) -> None:
        """A query on a closed connection fires at once as incomplete."""
        self.protocol.connectionLost()
        results: list[ServerResult] = []
        self.protocol.query(LeaseQuery.by_relay_id(RELAY)).addCallback(results.append)
        self.assertEqual(results[0].status, QueryStatus.INCOMPLETE)


class ReplyTests(ProtocolTestCase):
    """Processing REPLY, DATA and DONE."""

    def test_success_without_bindings(self) -> None:
        """
        R9 (case 1)/R10: a REPLY without CLIENT_DATA and without STATUS_CODE completes the
        query.
        """
        xid, results, streamed = self.ask()
        self.feed(reply(xid))
        (result,) = results
        self.assertEqual(result.status, QueryStatus.SUCCESS)
        self.assertTrue(result.complete)
        self.assertEqual(result.server_duid, SERVER_DUID)
        self.assertEqual((result.bindings, streamed), ((), []))

    def test_success_status_is_success(self) -> None:
        """R10: a REPLY with STATUS_CODE Success is a success (Kea sends it)."""
        xid, results, _ = self.ask()
        self.feed(reply(xid, status(StatusCode.Success)))
        self.assertEqual(results[0].status, QueryStatus.SUCCESS)
        self.assertEqual(results[0].status_code, StatusCode.Success)

    def test_error_status(self) -> None:
        """R10/S37: a REPLY with an error STATUS_CODE ends the query as a server error."""
        xid, results, _ = self.ask()
        self.feed(reply(xid, status(StatusCode.NotConfigured, "no such link")))
        (result,) = results
        self.assertEqual(result.status, QueryStatus.SERVER_ERROR)
        self.assertEqual((result.status_code, result.status_message), (9, "no such link"))
        self.assertFalse(result.complete)
        self.assertIn("NotConfigured", result.describe())

    def test_stream_until_done(self) -> None:
        """R8/R9 (case 2): any number of DATA are accepted; the query completes on DONE."""
        xid, results, streamed = self.ask()
        datas = [client_data(n, addresses=[f"2001:db8:1::{n}"]) for n in range(1, 40)]
        messages = stream(xid, datas)
        self.feed(*messages[:-1])
        self.assertEqual(results, [])
        self.assertEqual(len(streamed), 39)
        self.feed(messages[-1])
        (result,) = results
        self.assertEqual(result.status, QueryStatus.SUCCESS)
        self.assertEqual(result.received, 39)
        self.assertEqual(len(result.bindings), 39)

    def test_done_with_success_status(self) -> None:
        """R10: a DONE with STATUS_CODE Success (as dhcpkit sends) completes the query."""
        xid, results, _ = self.ask()
        self.feed(*stream(xid, [client_data(1, ["2001:db8::1"])], status(StatusCode.Success)))
        self.assertEqual(results[0].status, QueryStatus.SUCCESS)

    def test_done_query_terminated(self) -> None:
        """S38/R18: DONE with QueryTerminated ends the query as terminated, keeping the data."""
        xid, results, _ = self.ask()
        self.feed(*stream(xid, [client_data(1, ["2001:db8::1"])], status(11, "shutting down")))
        (result,) = results
        self.assertEqual(result.status, QueryStatus.TERMINATED)
        self.assertTrue(result.terminated)
        self.assertTrue(result.retryable)
        self.assertEqual(len(result.bindings), 1)

    def test_data_without_client_data(self) -> None:
        """R7: a DATA without CLIENT_DATA is discarded, and the stream goes on."""
        xid, results, streamed = self.ask()
        self.feed(reply(xid, client_data(1, ["2001:db8::1"])), data(xid), data(xid, status(0)))
        self.feed(data(xid, client_data(2, ["2001:db8::2"])), done(xid))
        (result,) = results
        self.assertEqual(result.status, QueryStatus.SUCCESS)
        self.assertEqual((result.received, result.discarded, len(streamed)), (2, 2, 2))

    def test_client_data_without_clt_time(self) -> None:
        """R12: a CLIENT_DATA without CLT_TIME is discarded; one without CLIENTID too."""
        xid, results, streamed = self.ask()
        self.feed(
            reply(xid, client_data(1, ["2001:db8::1"], clt_time=None)),
            data(xid, client_data(2, ["2001:db8::2"])),
            data(xid, client_data(3, ["2001:db8::3"], with_client_id=False)),
            done(xid),
        )
        (result,) = results
        self.assertEqual([b.client_id for b in streamed], [client_duid(2)])
        self.assertEqual(result.discarded, 2)

    def test_reply_validation(self) -> None:
        """
        R11: a REPLY for an unknown xid, without SERVERID, or with another CLIENTID is
        discarded.
        """
        xid, results, _ = self.ask()
        self.feed(
            reply(xid ^ 1),
            reply(xid, server=None),
            reply(xid, requestor=None),
            reply(xid, requestor=client_duid(77)),
        )
        self.assertEqual(results, [])
        self.assertEqual(self.transport.disconnecting, False)
        self.feed(reply(xid, server=OTHER_SERVER_DUID))
        self.assertEqual(results[0].server_duid, OTHER_SERVER_DUID)
        self.assertEqual(results[0].discarded, 3)

    def test_done_unknown_xid_closes(self) -> None:
        """R6: a DONE whose xid matches no outstanding query closes the connection."""
        xid, results, _ = self.ask()
        self.feed(reply(xid, client_data(1, ["2001:db8::1"])), done(xid ^ 0x10))
        self.assertTrue(self.transport.disconnecting)
        # Nothing after the bad DONE is processed.
        self.feed(done(xid))
        self.assertEqual(results, [])
        self.protocol.connectionLost()
        (result,) = results
        self.assertEqual(result.status, QueryStatus.INCOMPLETE)
        self.assertIn("unknown transaction-id", result.error or "")

    def test_done_after_complete_reply_closes(self) -> None:
        """R6: a DONE after a REPLY without CLIENT_DATA (the query already complete) closes."""
        xid, results, _ = self.ask()
        self.feed(reply(xid), done(xid))
        self.assertEqual(results[0].status, QueryStatus.SUCCESS)
        self.assertTrue(self.transport.disconnecting)

    def test_close_before_done_is_incomplete(self) -> None:
        """R9: the connection closing before DONE is an incomplete result, never a success."""
        xid, results, _ = self.ask()
        self.feed(reply(xid, client_data(1, ["2001:db8::1"])), data(xid, client_data(2)))
        self.protocol.connectionLost()
        (result,) = results
        self.assertEqual(result.status, QueryStatus.INCOMPLETE)
        self.assertFalse(result.complete)
        self.assertEqual(len(result.bindings), 2)

    def test_interleaved_queries(self) -> None:
        """
        R13/S22: replies to two pipelined queries, interleaved message by message, are
        demultiplexed by xid.
        """
        first, first_results, first_stream = self.ask()
        second, second_results, second_stream = self.ask(
            LeaseQuery.by_link_address(IPv6Address("2001:db8:2::1"))
        )
        self.assertNotEqual(first, second)
        one = stream(first, [client_data(n, [f"2001:db8:1::{n}"]) for n in range(1, 4)])
        two = stream(second, [client_data(n, [f"2001:db8:2::{n}"]) for n in range(11, 15)])
        order = [two[0], one[0], two[1], one[1], one[2], two[2], one[3], two[3], two[4]]
        # Several messages in one segment, and one message split over segments (S1).
        octets = frame(*order)
        self.protocol.dataReceived(octets[:7])
        self.protocol.dataReceived(octets[7:200])
        self.protocol.dataReceived(octets[200:])
        self.assertEqual(len(first_results[0].bindings), 3)
        self.assertEqual(len(second_results[0].bindings), 4)
        self.assertEqual({b.link_id for b in second_stream}, {"2001:db8:2::1"})
        self.assertEqual(len(first_stream), 3)
        self.assertFalse(self.transport.disconnecting)

    def test_data_for_unknown_xid_discarded(self) -> None:
        """R13: DATA for a transaction-id that is not outstanding is ignored (only DONE closes)."""
        xid, results, streamed = self.ask()
        self.feed(data(xid ^ 5, client_data(1)), reply(xid), data(xid, client_data(2)))
        self.assertEqual(streamed, [])
        self.assertFalse(self.transport.disconnecting)
        self.assertEqual(results[0].status, QueryStatus.SUCCESS)

    def test_data_before_reply_discarded(self) -> None:
        """S33: DATA before the query's REPLY is discarded."""
        xid, results, streamed = self.ask()
        self.feed(data(xid, client_data(1)), reply(xid, client_data(2)), done(xid))
        self.assertEqual([b.client_id for b in streamed], [client_duid(2)])
        self.assertEqual(results[0].discarded, 1)

    def test_done_before_reply(self) -> None:
        """R9: a DONE before any REPLY does not make the query a success."""
        xid, results, _ = self.ask()
        self.feed(done(xid))
        self.assertEqual(results[0].status, QueryStatus.INCOMPLETE)

    def test_undecodable_frames_discarded(self) -> None:
        """Parsing is strict: undecodable messages are discarded and counted, never raised."""
        xid, results, _ = self.ask()
        bad_clt = (
            bytes.fromhex("11") + xid.to_bytes(3, "big") + bytes.fromhex("002d0007002e0003000000")
        )
        self.feed(reply(xid, client_data(1)), bad_clt, b"", b"\x11\x00", bad_clt, done(xid))
        self.assertEqual(results[0].status, QueryStatus.SUCCESS)
        self.assertEqual(results[0].discarded, 2)

    def test_unexpected_message_types(self) -> None:
        """Messages other than REPLY/DATA/DONE are discarded without closing."""
        xid, results, _ = self.ask()
        self.feed(Message(MessageType.REPLY, xid, ()), reply(xid))
        self.assertEqual(results[0].status, QueryStatus.SUCCESS)
        self.assertEqual(results[0].discarded, 1)


class TimeoutTests(ProtocolTestCase):
    """R14: the data timeout."""

    def test_waiting_for_reply(self) -> None:
        """R14: no data at all for the data timeout aborts the connection; the query times out."""
        _, results, _ = self.ask()
        self.clock.advance(299)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(self.transport.disconnecting)
        self.protocol.connectionLost()
        self.assertEqual(results[0].status, QueryStatus.TIMEOUT)

    def test_data_resets_the_timeout(self) -> None:
        """R14: the timeout counts from the last data received, not from the query."""
        xid, results, _ = self.ask()
        self.clock.advance(200)
        self.feed(reply(xid, client_data(1)))
        self.clock.advance(200)
        self.protocol.dataReceived(frame(data(xid, client_data(2)))[:3])
        self.clock.advance(299)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(self.transport.disconnecting)
        self.protocol.connectionLost()
        self.assertEqual(results[0].status, QueryStatus.TIMEOUT)
        self.assertEqual(results[0].received, 1)

    def test_no_timer_when_idle(self) -> None:
        """R15: with no query outstanding no timer runs; the connection may stay open."""
        xid, _, _ = self.ask()
        self.feed(reply(xid))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(1000)
        self.assertFalse(self.transport.disconnecting)


class MemoryTests(ProtocolTestCase):
    """The requestor keeps only what the caller asked for."""

    def test_counting_only_keeps_nothing(self) -> None:
        """A caller that only counts holds no bindings however many arrive."""
        count = [0]
        results: list[ServerResult] = []
        self.protocol.query(
            LeaseQuery.by_relay_id(RELAY), lambda b: count.__setitem__(0, count[0] + 1), keep=False
        ).addCallback(results.append)
        (query,) = self.sent()
        xid = query.transaction_id
        self.feed(reply(xid, client_data(1, ["2001:db8::1"])))
        chunk = frame(*[data(xid, client_data(n, [f"2001:db8::{n:x}"])) for n in range(2, 1002)])
        pending = self.protocol._pending[xid]
        for _ in range(20):
            self.protocol.dataReceived(chunk)
            self.assertIsNone(pending.merger)
            self.assertEqual(self.protocol._unprocessed, b"")
        self.feed(done(xid))
        self.assertEqual(count[0], 20001)
        self.assertEqual((results[0].received, results[0].bindings), (20001, ()))

    def test_max_bindings(self) -> None:
        """
        A kept result stops at max_bindings: the query ends incomplete and the connection
        closes.
        """
        xid, results, _ = self.ask(max_bindings=3)
        self.feed(*stream(xid, [client_data(n) for n in range(1, 10)])[:-1])
        self.assertTrue(self.transport.disconnecting)
        (result,) = results
        self.assertEqual(result.status, QueryStatus.INCOMPLETE)
        self.assertEqual(len(result.bindings), 3)
        self.assertIn("more than 3", result.error or "")

    def test_consumer_failure(self) -> None:
        """A failing binding callback ends the query as incomplete instead of raising."""

        def explode(binding: Binding) -> None:
            raise RuntimeError("disk full")

        results: list[ServerResult] = []
        self.protocol.query(LeaseQuery.by_relay_id(RELAY), explode).addCallback(results.append)
        (query,) = self.sent()
        self.feed(reply(query.transaction_id, client_data(1)))
        self.assertEqual(results[0].status, QueryStatus.INCOMPLETE)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_stop_streaming(self) -> None:
        """A callback raising StopStreaming ends the query quietly as incomplete."""
        from bulklq.client import StopStreaming

        def stop(binding: Binding) -> None:
            raise StopStreaming("enough")

        for keep in (False, True):
            transport = StringTransport()
            protocol = BulkLeasequeryClientProtocol(REQUESTOR_DUID, self.clock, 300)
            protocol.makeConnection(transport)
            results: list[ServerResult] = []
            protocol.query(LeaseQuery.by_relay_id(RELAY), stop, keep).addCallback(results.append)
            xid = decode_message(transport.value()[2:]).transaction_id  # type: ignore[union-attr]
            protocol.dataReceived(frame(reply(xid, client_data(1)), data(xid, client_data(2))))
            self.assertEqual(
                (results[0].status, results[0].error), (QueryStatus.INCOMPLETE, "enough")
            )
            self.assertTrue(transport.disconnecting)
            protocol.connectionLost()
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_cancel_aborts(self) -> None:
        """Cancelling a query's Deferred aborts the connection (the server would go on sending)."""
        deferred = self.protocol.query(LeaseQuery.by_relay_id(RELAY))
        deferred.cancel()
        self.failureResultOf(deferred)
        self.assertTrue(self.transport.disconnecting)
        self.protocol.connectionLost()


class DecodedBindingTests(ProtocolTestCase):
    """What a binding looks like."""

    def test_binding_fields(self) -> None:
        """
        cltt is receive time minus CLT_TIME; lifetimes are re-based to cltt; the link is the
        query's link-address.
        """
        xid, results, _ = self.ask(LeaseQuery.by_link_address(IPv6Address("2001:db8:1::1")))
        self.feed(
            reply(
                xid,
                client_data(4, ["2001:db8:1::4"], ["2001:db8:ff04::/56"], clt_time=100, valid=3500),
            )
        )
        self.feed(done(xid))
        (binding,) = results[0].bindings
        self.assertEqual(binding.client_id, client_duid(4))
        self.assertEqual(binding.link_id, "2001:db8:1::1")
        self.assertEqual(binding.cltt, NOW - 100)
        self.assertEqual(binding.addresses[0].valid_lifetime, 3600)
        self.assertEqual(binding.addresses[0].preferred_lifetime, 1900)
        self.assertEqual(str(binding.prefixes[0].prefix), "2001:db8:ff04::/56")
        self.assertEqual(binding.expires_at(), NOW + 3500)

    def test_kea_split_merged(self) -> None:
        """R16: Kea's one lease per CLIENT_DATA is merged into one binding per client and link."""
        xid, results, streamed = self.ask()
        datas = [client_data(n, [f"2001:db8::{n}"]) for n in (1, 2)] + [
            client_data(n, prefixes=[f"2001:db8:f{n}::/48"]) for n in (1, 2)
        ]
        self.feed(*stream(xid, datas))
        self.assertEqual(len(streamed), 4)
        bindings = results[0].bindings
        self.assertEqual(len(bindings), 2)
        for binding in bindings:
            self.assertEqual((len(binding.addresses), len(binding.prefixes)), (1, 1))
        self.assertIsInstance(results[0].bindings[0].client_id, Duid)
        self.assertIsInstance(ClientData(()), ClientData)


class SegmentTests(ProtocolTestCase):
    """Frames split across segments or packed into one are read the same (S1)."""

    def _answer(self, xid: int) -> bytes:
        datas = [
            client_data(n, [f"2001:db8:1::{n:x}"], [f"2001:db8:{n:x}::/56"]) for n in range(1, 30)
        ]
        datas.append(client_data(30, ["2001:db8:1::30"]))
        datas.append(client_data(31, ["2001:db8:1::31"], clt_time=None))  # R12: discarded
        datas.append(client_data(32, ["2001:db8:1::32", "2001:db8:1::33"], ["2001:db8:ff::/48"]))
        return frame(*stream(xid, datas))

    def test_any_segmentation(self) -> None:
        """
        S1/R8: the bindings, kept or streamed, do not depend on how the stream is cut
        into segments: whole, octet by octet, or in uneven pieces.
        """
        outcomes = []
        for keep in (False, True):
            for sizes in ([1 << 20], [1], [7, 3, 250, 1, 90]):
                protocol = BulkLeasequeryClientProtocol(
                    REQUESTOR_DUID, self.clock, 300, random.Random(5)
                )
                transport = StringTransport()
                protocol.makeConnection(transport)
                results: list[ServerResult] = []
                streamed: list[Binding] = []
                protocol.query(LeaseQuery.by_relay_id(RELAY), streamed.append, keep).addCallback(
                    results.append
                )
                xid = decode_message(transport.value()[2:]).transaction_id  # type: ignore[union-attr]
                octets = self._answer(xid)
                position = 0
                turn = 0
                while position < len(octets):
                    size = sizes[turn % len(sizes)]
                    protocol.dataReceived(octets[position : position + size])
                    position += size
                    turn += 1
                (result,) = results
                self.assertEqual(result.status, QueryStatus.SUCCESS)
                self.assertEqual((result.received, result.discarded), (31, 1))
                self.assertEqual(protocol._unprocessed, b"")
                outcomes.append((keep, streamed, result.bindings))
        for keep, streamed, kept in outcomes:
            self.assertEqual(streamed, outcomes[0][1])
            self.assertEqual(len(streamed), 31)
            self.assertEqual(kept, tuple(streamed) if keep else ())

    def test_jsonl_frames_any_segmentation(self) -> None:
        """
        S1/R12: jsonl written through on_frame (JsonLinesWriter.frame) is the text written
        from decoded bindings alone, however the stream is cut, with the same counts.
        """
        import io

        from bulklq.client.output import JsonLinesWriter

        outcomes = []
        for use_frames in (False, True):
            for sizes in ([1 << 20], [1], [7, 3, 250, 1, 90]):
                protocol = BulkLeasequeryClientProtocol(
                    REQUESTOR_DUID, self.clock, 300, random.Random(5)
                )
                transport = StringTransport()
                protocol.makeConnection(transport)
                out = io.StringIO()
                writer = JsonLinesWriter(out, 3)
                taken: list[bool] = []

                def on_frame(
                    *args: object, writer: JsonLinesWriter = writer, taken: list[bool] = taken
                ) -> bool:
                    taken.append(writer.frame(*args))  # type: ignore[arg-type]
                    return taken[-1]

                results: list[ServerResult] = []
                protocol.query(
                    LeaseQuery.by_link_address(IPv6Address("2001:db8:1::1")),
                    writer.binding,
                    False,
                    on_frame=on_frame if use_frames else None,
                ).addCallback(results.append)
                xid = decode_message(transport.value()[2:]).transaction_id  # type: ignore[union-attr]
                octets = self._answer(xid)
                position = 0
                turn = 0
                while position < len(octets):
                    size = sizes[turn % len(sizes)]
                    protocol.dataReceived(octets[position : position + size])
                    position += size
                    turn += 1
                writer.finish(None)
                (result,) = results
                self.assertEqual(result.status, QueryStatus.SUCCESS)
                self.assertEqual((result.received, result.discarded), (31, 1))
                if use_frames:
                    # Taken: the 29 usual DATA and client 30's; declined: R12's, client 32's.
                    self.assertEqual((taken.count(True), taken.count(False)), (29, 2))
                outcomes.append(out.getvalue())
        self.assertEqual(len(outcomes[0].splitlines()), 31)
        self.assertEqual(set(outcomes), {outcomes[0]})

    def test_stop_mid_segment(self) -> None:
        """
        R13: once a streaming callback stops the query, the frames after it in the same
        segment are not delivered.
        """
        from bulklq.client import StopStreaming

        seen: list[Binding] = []

        def stop_at_third(binding: Binding) -> None:
            seen.append(binding)
            if len(seen) == 3:
                raise StopStreaming("three is enough")

        results: list[ServerResult] = []
        self.protocol.query(LeaseQuery.by_relay_id(RELAY), stop_at_third, False).addCallback(
            results.append
        )
        (query,) = self.sent()
        self.protocol.dataReceived(self._answer(query.transaction_id))
        self.assertEqual(len(seen), 3)
        self.assertEqual(
            (results[0].status, results[0].error), (QueryStatus.INCOMPLETE, "three is enough")
        )
        self.assertTrue(self.transport.disconnecting)


class RunTests(ProtocolTestCase):
    """Runs of usual DATA frames, decoded in place by one fast_frames_at call each."""

    def _datas(self, xid: int, numbers: range) -> list[Message]:
        """A REPLY holding client 0, then one usual DATA per client number."""
        return [
            reply(xid, client_data(0, ["2001:db8::ff"])),
            *[
                data(xid, client_data(n, [f"2001:db8:1::{n:x}"], [f"2001:db8:{n:x}::/56"]))
                for n in numbers
            ],
        ]

    def test_pause_inside_callback(self) -> None:
        """
        S1: a callback that pauses the protocol gets no binding after it until
        resumeProducing, which reads the rest of what had arrived; none is lost or repeated.
        """
        seen: list[Binding] = []

        def take(binding: Binding) -> None:
            seen.append(binding)
            if len(seen) in (3, 6):
                self.protocol.pauseProducing()

        results: list[ServerResult] = []
        self.protocol.query(LeaseQuery.by_relay_id(RELAY), take, False).addCallback(results.append)
        (query,) = self.sent()
        xid = query.transaction_id
        self.feed(*self._datas(xid, range(1, 9)), done(xid))
        self.assertEqual((len(seen), results), (3, []))
        self.protocol.resumeProducing()
        self.assertEqual((len(seen), results), (6, []))
        self.protocol.resumeProducing()
        self.assertEqual([b.client_id for b in seen], [client_duid(n) for n in range(9)])
        self.assertEqual((results[0].status, results[0].received), (QueryStatus.SUCCESS, 9))

    def test_cancel_inside_callback(self) -> None:
        """R13: a callback that cancels its query gets no binding after that one."""
        seen: list[Binding] = []

        def take(binding: Binding) -> None:
            seen.append(binding)
            if len(seen) == 4:
                deferred.cancel()

        deferred = self.protocol.query(LeaseQuery.by_relay_id(RELAY), take, False)
        deferred.addErrback(lambda failure: None)
        (query,) = self.sent()
        xid = query.transaction_id
        self.feed(*self._datas(xid, range(1, 9)))
        self.assertEqual(len(seen), 4)
        self.assertTrue(self.transport.disconnecting)
        self.protocol.connectionLost()

    def test_failure_mid_run_keeps_framing(self) -> None:
        """
        S1/R13: after a callback fails in the middle of a run, the frames after it are
        skipped as whole frames: what stays unprocessed is the partial frame at the end,
        and the query counts the bindings handed over (the failing one included).
        """
        from bulklq.client import StopStreaming

        def stop(binding: Binding) -> None:
            if binding.client_id == client_duid(3):
                raise StopStreaming("three")

        results: list[ServerResult] = []
        self.protocol.query(LeaseQuery.by_relay_id(RELAY), stop, False).addCallback(results.append)
        (query,) = self.sent()
        xid = query.transaction_id
        octets = frame(*self._datas(xid, range(1, 7)))
        self.protocol.dataReceived(octets + octets[:5])
        self.assertEqual(self.protocol._unprocessed, octets[:5])
        self.assertEqual(
            (results[0].status, results[0].received, results[0].error),
            (QueryStatus.INCOMPLETE, 4, "three"),
        )

    def test_interleaved_runs(self) -> None:
        """
        R13: runs of several DATA frames of two queries, alternating in one segment, each
        go to their own query, kept or streamed.
        """
        first, first_results, first_stream = self.ask(keep=False)
        second, second_results, second_stream = self.ask()
        one = self._datas(first, range(1, 10))
        two = self._datas(second, range(20, 29))
        order = [*one[:4], *two[:2], *one[4:5], *two[2:], *one[5:], done(first), done(second)]
        self.feed(*order)
        self.assertEqual([b.client_id for b in first_stream], [client_duid(n) for n in range(10)])
        self.assertEqual(
            [b.client_id for b in second_stream], [client_duid(n) for n in [0, *range(20, 29)]]
        )
        self.assertEqual(second_results[0].bindings, tuple(second_stream))
        self.assertEqual((first_results[0].received, first_results[0].bindings), (10, ()))

    def test_max_bindings_mid_run(self) -> None:
        """
        A kept result that reaches max_bindings in the middle of a run ends the query
        there, the frames after it skipped whole.
        """
        xid, results, streamed = self.ask(max_bindings=4)
        octets = frame(*self._datas(xid, range(1, 9)))
        self.protocol.dataReceived(octets + octets[:3])
        self.assertEqual(self.protocol._unprocessed, octets[:3])
        self.assertEqual(len(streamed), 4)
        self.assertEqual((results[0].received, len(results[0].bindings)), (5, 4))
        self.assertTrue(self.transport.disconnecting)
        self.assertIn("more than 4", results[0].error or "")


class _Offers:
    """An C{on_frame} that records what it is offered and takes nothing (or everything)."""

    def __init__(self, take: bool = False) -> None:
        self.take = take
        self.offered: list[tuple[bytes, int, str]] = []

    def __call__(self, data: bytes, start: int, end: int, received_at: int, link: str) -> bool:
        self.offered.append((data[start:end], received_at, link))
        return self.take


class FrameCallbackTests(ProtocolTestCase):
    """C{on_frame}: DATA frames offered in place before they are decoded."""

    def _mixed(self, xid: int) -> list[Message | bytes]:
        """An answer with every kind of DATA the checks must see, and strangers around it."""
        return [
            data(xid ^ 5, client_data(90, ["2001:db8::90"])),  # R13: not this query
            data(xid, client_data(91, ["2001:db8::91"])),  # before the REPLY: discarded
            reply(xid, client_data(1, ["2001:db8::1"]), requestor=client_duid(77)),  # R11
            reply(xid, client_data(1, ["2001:db8::1"], ["2001:db8:f1::/48"])),
            data(xid),  # R7
            data(xid, status(0, "no client here")),  # R7, long enough to be offered
            data(xid, client_data(2, ["2001:db8::2"], clt_time=None)),  # R12
            data(xid, client_data(3, ["2001:db8::3"], with_client_id=False)),  # R12
            data(xid, client_data(4, ["2001:db8::4"], ["2001:db8:f4::/48"])),
            data(xid, client_data(5, ["2001:db8::5"]), client_data(6, ["2001:db8::6"])),
            done(xid),
            data(xid, client_data(7, ["2001:db8::7"])),  # after DONE: no query any more
        ]

    def test_checks_apply_before_and_after(self) -> None:
        """
        R7/R11/R12/R13: only DATA of this query after its accepted REPLY is offered; a frame
        on_frame declines goes through every usual check, so the outcome is the same as
        without on_frame.
        """
        outcomes = []
        for on_frame in (None, _Offers()):
            protocol = BulkLeasequeryClientProtocol(REQUESTOR_DUID, self.clock, 300)
            transport = StringTransport()
            protocol.makeConnection(transport)
            results: list[ServerResult] = []
            streamed: list[Binding] = []
            protocol.query(
                LeaseQuery.by_relay_id(RELAY), streamed.append, False, on_frame=on_frame
            ).addCallback(results.append)
            xid = decode_message(transport.value()[2:]).transaction_id  # type: ignore[union-attr]
            protocol.dataReceived(frame(*self._mixed(xid)))
            (result,) = results
            outcomes.append((result.status, result.received, result.discarded, streamed))
            if on_frame is not None:
                offered = [decode_message(octets) for octets, _, _ in on_frame.offered]
                self.assertEqual(
                    [(m.transaction_id, len(m.options)) for m in offered],  # type: ignore[union-attr]
                    [(xid, 1)] * 4 + [(xid, 2)],
                )
                self.assertEqual(
                    {(at, link) for _, at, link in on_frame.offered}, {(NOW, "unknown")}
                )
        self.assertEqual(outcomes[0], outcomes[1])
        self.assertEqual(outcomes[0][:3], (QueryStatus.SUCCESS, 4, 6))
        self.assertEqual(
            [b.client_id for b in outcomes[0][3]], [client_duid(n) for n in (1, 4, 5, 6)]
        )

    def test_taken_frames_counted_not_decoded(self) -> None:
        """A frame on_frame takes is one binding received, which on_binding does not see."""
        offers = _Offers(take=True)
        xid, results, streamed = self.ask(
            LeaseQuery.by_link_address(IPv6Address("2001:db8:1::1")), keep=False, on_frame=offers
        )
        self.feed(*stream(xid, [client_data(n, [f"2001:db8:1::{n}"]) for n in range(1, 5)]))
        self.assertEqual(len(offers.offered), 3)
        self.assertEqual({link for _, _, link in offers.offered}, {"2001:db8:1::1"})
        self.assertEqual([b.client_id for b in streamed], [client_duid(1)])  # in the REPLY
        self.assertEqual((results[0].status, results[0].received), (QueryStatus.SUCCESS, 4))

    def test_only_when_streaming(self) -> None:
        """on_frame is not used when the bindings are kept, or when there is no on_binding."""
        offers = _Offers(take=True)
        xid, results, streamed = self.ask(keep=True, on_frame=offers)
        self.feed(*stream(xid, [client_data(n, [f"2001:db8::{n}"]) for n in range(1, 4)]))
        self.assertEqual((offers.offered, len(streamed), len(results[0].bindings)), ([], 3, 3))
        kept: list[ServerResult] = []
        self.protocol.query(
            LeaseQuery.by_relay_id(RELAY), None, False, on_frame=offers
        ).addCallback(kept.append)
        (query,) = self.sent()
        xid = query.transaction_id
        self.feed(*stream(xid, [client_data(n, [f"2001:db8::{n}"]) for n in range(1, 4)]))
        self.assertEqual((offers.offered, kept[0].received), ([], 3))

    def test_stop_and_failure(self) -> None:
        """
        on_frame raising StopStreaming ends the query quietly as incomplete; raising anything
        else is logged and ends it too; either way the rest of the segment is not delivered.
        """
        from bulklq.client import StopStreaming

        for error, logged in ((StopStreaming("enough"), 0), (RuntimeError("disk full"), 1)):
            calls: list[int] = []

            def fail(*args: object, error: Exception = error, calls: list[int] = calls) -> bool:
                calls.append(1)
                raise error

            transport = StringTransport()
            protocol = BulkLeasequeryClientProtocol(REQUESTOR_DUID, self.clock, 300)
            protocol.makeConnection(transport)
            results: list[ServerResult] = []
            streamed: list[Binding] = []
            protocol.query(
                LeaseQuery.by_relay_id(RELAY), streamed.append, False, on_frame=fail
            ).addCallback(results.append)
            xid = decode_message(transport.value()[2:]).transaction_id  # type: ignore[union-attr]
            protocol.dataReceived(
                frame(*stream(xid, [client_data(n, [f"2001:db8::{n}"]) for n in range(1, 5)]))
            )
            self.assertEqual((len(calls), len(streamed)), (1, 1))
            self.assertEqual(results[0].status, QueryStatus.INCOMPLETE)
            self.assertEqual(
                results[0].error, "enough" if logged == 0 else "the binding consumer failed"
            )
            self.assertTrue(transport.disconnecting)
            protocol.connectionLost()
            self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), logged)

    def test_string_received_offers_too(self) -> None:
        """A frame handed to stringReceived directly is offered like one from dataReceived."""
        offers = _Offers(take=True)
        xid, results, _ = self.ask(keep=False, on_frame=offers)
        self.feed(reply(xid))
        self.assertEqual(results[0].status, QueryStatus.SUCCESS)
        xid, results, _ = self.ask(keep=False, on_frame=offers)
        self.feed(reply(xid, client_data(1, ["2001:db8::1"])))
        self.protocol.stringReceived(data(xid, client_data(2, ["2001:db8::2"])).encode())
        self.protocol.stringReceived(data(xid).encode())  # R7: too short to offer
        self.feed(done(xid))
        self.assertEqual(len(offers.offered), 1)
        self.assertEqual((results[0].received, results[0].discarded), (2, 1))

    def test_cancelled_query_not_offered(self) -> None:
        """DATA arriving for a cancelled query is not offered (nor decoded)."""
        offers = _Offers()
        results: list[ServerResult] = []
        deferred = self.protocol.query(
            LeaseQuery.by_relay_id(RELAY), lambda b: None, False, on_frame=offers
        )
        deferred.addErrback(lambda failure: None)
        (query,) = self.sent()
        xid = query.transaction_id
        self.feed(reply(xid, client_data(1, ["2001:db8::1"])))
        deferred.cancel()
        self.feed(data(xid, client_data(2, ["2001:db8::2"])))
        self.assertEqual((offers.offered, results), ([], []))
        self.protocol.connectionLost()

    def test_connection_lost_mid_segment(self) -> None:
        """
        R9: once the connection is lost (here from inside on_frame), the frames after it in
        the same segment are not offered: the query already ended incomplete.
        """
        offered: list[int] = []

        def lose(*args: object) -> bool:
            offered.append(1)
            self.protocol.connectionLost()
            return True

        xid, results, _ = self.ask(keep=False, on_frame=lose)
        self.feed(*stream(xid, [client_data(n, [f"2001:db8::{n}"]) for n in range(1, 6)]))
        self.assertEqual(len(offered), 1)
        self.assertEqual(results[0].status, QueryStatus.INCOMPLETE)

    def test_length_limit(self) -> None:
        """
        S1: as with Int16StringReceiver, a frame longer than MAX_LENGTH goes to
        lengthLimitExceeded, which aborts the connection: the query is incomplete.
        """
        xid, results, streamed = self.ask(keep=False, on_frame=_Offers())
        self.protocol.MAX_LENGTH = 200
        long_data = data(xid, *[client_data(n, [f"2001:db8::{n}"]) for n in range(1, 9)])
        self.feed(reply(xid, client_data(1, ["2001:db8::1"])), long_data, done(xid))
        self.assertTrue(self.transport.disconnecting)
        self.protocol.connectionLost()
        self.assertEqual(len(streamed), 1)
        self.assertEqual(results[0].status, QueryStatus.INCOMPLETE)
        self.assertEqual(results[0].error, f"frame of {len(long_data.encode())} octets")
