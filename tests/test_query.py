"""bulklq.query: validation and resolution without any connection."""

from __future__ import annotations

from ipaddress import IPv6Address

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from bulklq.config import ServerConfig
from bulklq.model import BindingQuery
from bulklq.query import (
    QueryPlan,
    Rejection,
    Resolution,
    Verdict,
    query_type_name,
    resolve_query,
    validate_query,
)
from bulklq.stores.memory import MemoryBindingStore
from bulklq.testing import make_duid, make_link
from bulklq.wire import (
    ClientId,
    IAAddress,
    Message,
    MessageType,
    OptionRequest,
    QueryType,
    RelayId,
    RelayMessage,
    ServerId,
    StatusCode,
)

from .test_server import REQUESTOR, SERVER_DUID, lq

CONFIG = ServerConfig(SERVER_DUID, sensitive_options=frozenset({39}))


class ValidateTests(SynchronousTestCase):
    """validate_query's verdicts."""

    def test_plan(self) -> None:
        """A valid query becomes a plan with its option, the requestor's CLIENTID, and the
        ORO minus sensitive options (S42, S43)."""
        plan = validate_query(
            lq(3, "::", RelayId(make_duid(9)), OptionRequest((47, 39)), xid=5), CONFIG
        )
        assert isinstance(plan, QueryPlan)
        self.assertEqual(plan.transaction_id, 5)
        self.assertEqual(plan.relay_id, make_duid(9))
        self.assertEqual(plan.client_id, REQUESTOR)
        self.assertEqual(plan.requested, frozenset({47}))
        self.assertEqual(plan.binding_query(None), BindingQuery.by_relay_id(make_duid(9)))
        self.assertEqual(plan.type_name, "relay-id")

    def test_discard_and_close(self) -> None:
        """S2-S6: the verdicts without an answer."""
        self.assertIs(validate_query(lq(4, "::1", client_id=None), CONFIG), Verdict.DISCARD)
        foreign = ServerId(make_duid(77))
        self.assertIs(validate_query(lq(4, "::1", extra=[foreign]), CONFIG), Verdict.DISCARD)
        no_query = Message(MessageType.LEASEQUERY, 1, (REQUESTOR,))
        self.assertIs(validate_query(no_query, CONFIG), Verdict.DISCARD)
        reply = Message(MessageType.LEASEQUERY_REPLY, 1, (REQUESTOR,))
        self.assertIs(validate_query(reply, CONFIG), Verdict.DISCARD)
        solicit = Message(MessageType.SOLICIT, 1, (REQUESTOR,))
        self.assertIs(validate_query(solicit, CONFIG), Verdict.CLOSE)
        relay = RelayMessage(MessageType.RELAY_FORW, 0, IPv6Address(0), IPv6Address(0))
        self.assertIs(validate_query(relay, CONFIG), Verdict.CLOSE)

    def test_udp_types(self) -> None:
        """S13 (for the UDP service): allowed types {1, 2} refuse the bulk-only types with
        NotAllowed."""
        udp = frozenset({QueryType.QUERY_BY_ADDRESS, QueryType.QUERY_BY_CLIENTID})
        for query_type in (3, 4, 5):
            verdict = validate_query(lq(query_type, "2001:db8::1"), CONFIG, udp)
            assert isinstance(verdict, Rejection)
            self.assertEqual(verdict.status, StatusCode.NotAllowed)
        self.assertIsInstance(
            validate_query(lq(2, "::", ClientId(make_duid(1))), CONFIG, udp), QueryPlan
        )

    def test_rejection_reply(self) -> None:
        """S37: a rejection's reply: CLIENTID, SERVERID, STATUS_CODE, same xid."""
        verdict = validate_query(lq(42, "::", xid=9), CONFIG)
        assert isinstance(verdict, Rejection)
        reply = verdict.reply(SERVER_DUID)
        self.assertEqual(reply.transaction_id, 9)
        self.assertEqual(reply.msg_type, MessageType.LEASEQUERY_REPLY)
        self.assertEqual([o.code for o in reply.options], [1, 2, 13])
        self.assertEqual(query_type_name(42), "unknown(42)")


class ResolveTests(SynchronousTestCase):
    """resolve_query against a memory store."""

    def resolve(self, message: Message) -> Resolution | Rejection:
        """Validate then resolve synchronously."""
        store = MemoryBindingStore([make_link()])
        plan = validate_query(message, CONFIG)
        assert isinstance(plan, QueryPlan)
        return self.successResultOf(Deferred.fromCoroutine(resolve_query(plan, store)))

    def test_link_resolution(self) -> None:
        """S9, S49: a link-address resolves to its link, or NotConfigured."""
        resolution = self.resolve(lq(4, "2001:db8:1::77"))
        self.assertEqual(resolution, Resolution(BindingQuery.by_link("link-1")))
        rejection = self.resolve(lq(4, "2001:db8:2::77"))
        assert isinstance(rejection, Rejection)
        self.assertEqual(rejection.status, StatusCode.NotConfigured)

    def test_address_resolution(self) -> None:
        """S10: an address on no link may still be in a delegated prefix: NotConfigured
        only if the result is empty."""
        on_link = self.resolve(lq(1, "::", IAAddress(IPv6Address("2001:db8:1::5"), 0, 0)))
        assert isinstance(on_link, Resolution)
        self.assertIsNone(on_link.status_if_empty)
        off_link = self.resolve(lq(1, "::", IAAddress(IPv6Address("2001:db8:9::5"), 0, 0)))
        assert isinstance(off_link, Resolution)
        self.assertEqual(off_link.status_if_empty, StatusCode.NotConfigured)
