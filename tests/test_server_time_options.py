"""
RFC 7653 time options on Bulk Leasequery: OPTION_LQ_BASE_TIME in every reply when asked
for, OPTION_LQ_START_TIME / OPTION_LQ_END_TIME restricting a query to bindings changed
(CLTT) inside the window.
"""

from __future__ import annotations

from bulklq.query import RFC7653_EPOCH, base_time
from bulklq.testing import CONTRACT_NOW, DEFAULT_CLTT, make_binding
from bulklq.wire import (
    LQBaseTime,
    LQEndTime,
    LQStartTime,
    MessageType,
    OptionRequest,
    QueryType,
    StatusCode,
)

from .test_server import ServerTestCase, clients, lq, status_of

BASE = CONTRACT_NOW - RFC7653_EPOCH


def _bindings() -> list:  # type: ignore[type-arg]
    """Three clients on link-1 whose CLTTs are 100 s apart."""
    return [
        make_binding(1, "link-1", cltt=DEFAULT_CLTT - 200),
        make_binding(2, "link-1", cltt=DEFAULT_CLTT - 100),
        make_binding(3, "link-1", cltt=DEFAULT_CLTT),
    ]


def _rfc(unix: int) -> int:
    return unix - RFC7653_EPOCH


class BaseTimeTests(ServerTestCase):
    """RFC 7653 section 9.3: OPTION_LQ_BASE_TIME when the ORO asks for it."""

    def test_every_reply_carries_base_time(self) -> None:
        """RFC 7653 section 9.3 (MUST): with code 100 in the LQ_QUERY's ORO, the REPLY,
        every DATA and the DONE carry OPTION_LQ_BASE_TIME, the server's current time in
        seconds since 2000 (section 6.3.1)."""
        harness = self.harness(bindings=_bindings())
        _, _, replies = harness.ask(
            lq(QueryType.QUERY_BY_LINK_ADDRESS, "2001:db8:1::1", OptionRequest((100,)))
        )
        types = [m.msg_type for m in replies]
        self.assertEqual(
            types,
            [
                MessageType.LEASEQUERY_REPLY,
                MessageType.LEASEQUERY_DATA,
                MessageType.LEASEQUERY_DATA,
                MessageType.LEASEQUERY_DONE,
            ],
        )
        for message in replies:
            self.assertEqual(message.option(LQBaseTime), LQBaseTime(BASE))
        self.assertEqual(len(clients(replies)), 3)

    def test_message_level_oro(self) -> None:
        """RFC 7653 section 9.3: a message-level ORO asking for 100 also gets base time,
        on an empty REPLY too."""
        harness = self.harness(bindings=[])
        _, _, (reply,) = harness.ask(
            lq(QueryType.QUERY_BY_LINK_ADDRESS, "2001:db8:1::1", extra=[OptionRequest((100,))])
        )
        self.assertEqual(reply.option(LQBaseTime), LQBaseTime(BASE))

    def test_not_asked_not_sent(self) -> None:
        """RFC 7653 section 5: base time only when the requestor asked for it."""
        harness = self.harness(bindings=_bindings())
        _, _, replies = harness.ask(lq(QueryType.QUERY_BY_LINK_ADDRESS, "2001:db8:1::1"))
        self.assertTrue(replies)
        for message in replies:
            self.assertIsNone(message.option(LQBaseTime))

    def test_base_time_value(self) -> None:
        """RFC 7653 section 2: absolute time counts seconds since 2000-01-01 UTC, mod 2^32."""
        self.assertEqual(base_time(946684800), 0)
        self.assertEqual(base_time(946684800 + 86400.9), 86400)
        self.assertEqual(base_time(946684800 + (1 << 32) + 5), 5)


class WindowTests(ServerTestCase):
    """RFC 7653 sections 6.3.2 and 6.3.3: bulk queries restricted to a change window."""

    def query(self, *window: object, inside: bool = False) -> list:  # type: ignore[type-arg]
        harness = self.harness(bindings=_bindings())
        options = list(window)
        if inside:
            message = lq(QueryType.QUERY_BY_LINK_ADDRESS, "2001:db8:1::1", *options)  # type: ignore[arg-type]
        else:
            message = lq(QueryType.QUERY_BY_LINK_ADDRESS, "2001:db8:1::1", extra=options)  # type: ignore[arg-type]
        _, transport, replies = harness.ask(message)
        self.assertFalse(transport.disconnecting)
        return replies

    def test_start_time(self) -> None:
        """RFC 7653 section 6.3.2: only bindings changed on or after the start time."""
        replies = self.query(LQStartTime(_rfc(DEFAULT_CLTT - 100)))
        self.assertEqual([c[0][-1] for c in clients(replies)], [2, 3])

    def test_end_time(self) -> None:
        """RFC 7653 section 6.3.3: only bindings changed on or before the end time."""
        replies = self.query(LQEndTime(_rfc(DEFAULT_CLTT - 100)))
        self.assertEqual([c[0][-1] for c in clients(replies)], [1, 2])

    def test_both_inside_lq_query(self) -> None:
        """RFC 7653 section 6.3: the window options are also read inside LQ_QUERY."""
        replies = self.query(
            LQStartTime(_rfc(DEFAULT_CLTT - 100)),
            LQEndTime(_rfc(DEFAULT_CLTT - 100)),
            inside=True,
        )
        self.assertEqual([c[0][-1] for c in clients(replies)], [2])

    def test_empty_window(self) -> None:
        """RFC 7653 section 6.3.2: a window no binding changed in gives an empty REPLY
        (S31) and no DONE."""
        replies = self.query(LQStartTime(_rfc(DEFAULT_CLTT + 1)))
        self.assertEqual([m.msg_type for m in replies], [MessageType.LEASEQUERY_REPLY])
        self.assertIsNone(status_of(replies[0]))
        self.assertEqual(clients(replies), [])

    def test_start_after_end(self) -> None:
        """RFC 7653 section 6.3: start after end is malformed: MalformedQuery."""
        (reply,) = self.query(LQStartTime(10), LQEndTime(9))
        self.assertEqual(status_of(reply), StatusCode.MalformedQuery)

    def test_repeated_option(self) -> None:
        """RFC 7653 section 6.3: a window option given twice is malformed: MalformedQuery."""
        (reply,) = self.query(LQStartTime(10), LQStartTime(11))
        self.assertEqual(status_of(reply), StatusCode.MalformedQuery)
