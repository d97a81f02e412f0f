"""
UDP Leasequery (RFC 5007): one LEASEQUERY datagram in, at most one LEASEQUERY-REPLY out.

It shares query validation and link resolution with the Bulk Leasequery server
(L{bulklq.query}) and the CLIENT_DATA encoding (L{bulklq.server}); only what differs on UDP
lives here:

  - Only QUERY_BY_ADDRESS and QUERY_BY_CLIENTID are served; the bulk query types (3-5) get
    NotAllowed (RFC 5460 section 4, S13).
  - A QUERY_BY_CLIENTID with link-address C{::} that finds the client on several links
    answers with OPTION_LQ_CLIENT_LINK listing them and no client data (RFC 5007 section
    4.4.1); otherwise the reply has at most one CLIENT_DATA.
  - A reply must fit in one datagram. RFC 5007 makes the options a query's ORO asks for a
    SHOULD (section 4.4.2) while CLIENTID, the leases and CLT_TIME are a MUST, so a reply
    that does not fit is rebuilt without the requested options; if it still does not fit it
    becomes an UnspecFail status telling the requestor to use Bulk Leasequery over TCP,
    which has no such limit (RFC 5460 section 1).
  - Requestors that the ACL does not allow, messages that are not LEASEQUERY, relayed
    LEASEQUERYs and undecodable datagrams are dropped without an answer (RFC 5007 section
    4.4.1 allows discarding; a UDP server that answers strangers is an amplifier).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from .config import ServerConfig, normalise_peer
from .interfaces import IBindingStore
from .model import Binding, Link
from .query import QueryPlan, Rejection, Resolution, resolve_query, validate_query
from .server import client_data
from .stats import QueryRecord, ServerStats
from .wire import (
    ClientData,
    LQClientLink,
    Message,
    MessageType,
    Option,
    QueryType,
    ServerId,
    StatusCode,
    WireError,
    decode_message,
)

__all__ = ["MAX_UDP_MESSAGE", "UDP_QUERY_TYPES", "UDPLeasequeryProtocol"]

#: The largest DHCPv6 message one UDP datagram over IPv6 carries (65535 minus the UDP header).
MAX_UDP_MESSAGE = 65527
#: The query types UDP Leasequery serves (RFC 5460 section 4).
UDP_QUERY_TYPES = frozenset({QueryType.QUERY_BY_ADDRESS, QueryType.QUERY_BY_CLIENTID})
#: Links listed at most in one LQ_CLIENT_LINK (a client on more links than this is odd).
_MAX_LINKS = 256


class UDPLeasequeryProtocol(DatagramProtocol):
    """
    Answers UDP LEASEQUERY datagrams from a store.

    @ivar stats: where finished queries are counted (shared with the TCP server).
    """

    _log = Logger()

    def __init__(
        self,
        store: IBindingStore,
        config: ServerConfig,
        stats: ServerStats,
        reactor: IReactorTime | None = None,
        *,
        max_in_flight: int = 64,
        max_reply_size: int = MAX_UDP_MESSAGE,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor  # noqa: PLC0415

            reactor = global_reactor
        assert reactor is not None
        self._store = store
        self._config = config
        self.stats = stats
        self._reactor = reactor
        self._max_in_flight = max_in_flight
        self._max_reply_size = max_reply_size
        self._in_flight: set[Deferred[None]] = set()

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        """Validate a datagram and start answering it; drop it when there is no answer."""
        host, port = addr[0], addr[1]
        try:
            peer = normalise_peer(host)
        except ValueError:
            return
        rule = self._config.rule_for(peer)
        if rule is None:
            self._log.debug("UDP datagram from {peer} dropped: not allowed", peer=host)
            return
        if len(self._in_flight) >= self._max_in_flight:
            self._log.warn(
                "UDP query from {peer} dropped: {n} queries in progress",
                peer=host,
                n=len(self._in_flight),
            )
            return
        try:
            message = decode_message(datagram)
        except WireError as error:
            self._log.info("UDP datagram from {peer} dropped: {error}", peer=host, error=error)
            return
        verdict = validate_query(message, self._config, rule.query_types)
        if not isinstance(verdict, Rejection | QueryPlan):
            return
        if isinstance(verdict, Rejection) and verdict.reply_type != MessageType.LEASEQUERY_REPLY:
            return  # STARTTLS means nothing on UDP
        if isinstance(verdict, Rejection) and verdict.close and verdict.query_type is None:
            return  # ACTIVELEASEQUERY is TCP only
        started = self._reactor.seconds()
        if isinstance(verdict, QueryPlan) and verdict.query_type not in UDP_QUERY_TYPES:
            verdict = verdict.reject(
                StatusCode.NotAllowed,
                f"{verdict.type_name} queries are only served over TCP (RFC 5460 section 4)",
            )
        if isinstance(verdict, Rejection):
            self._send(verdict.reply(self._config.server_duid), (host, port))
            self._finished((host, port), verdict, verdict.status, 0, started)
            return
        handling = Deferred.fromCoroutine(self._handle(verdict, (host, port), started))
        if not handling.called:
            self._in_flight.add(handling)
            handling.addBoth(self._forget, handling)

    def _forget(self, result: object, handling: Deferred[None]) -> None:
        self._in_flight.discard(handling)

    async def _handle(self, plan: QueryPlan, address: tuple[str, int], started: float) -> None:
        """Answer one valid query; store failures become UnspecFail, timeouts silence."""
        answer = Deferred.fromCoroutine(self._answer(plan))
        answer.addTimeout(self._config.store_timeout, self._reactor)
        try:
            result = await answer
        except CancelledError:
            return  # the port is closing
        except TimeoutError:
            self.stats.timeouts["store"] += 1
            self._log.warn(
                "UDP {type} query {xid} from {peer}: the store did not answer in time",
                type=plan.type_name,
                xid=plan.transaction_id,
                peer=address[0],
            )
            return
        except Exception:
            self.stats.store_errors += 1
            self._log.failure(
                "UDP {type} query {xid} from {peer} failed",
                type=plan.type_name,
                xid=plan.transaction_id,
                peer=address[0],
            )
            result = plan.reject(StatusCode.UnspecFail, "the binding store failed")
        if isinstance(result, Rejection):
            self._send(result.reply(self._config.server_duid), address)
            self._finished(address, plan, result.status, 0, started)
            return
        self._send(result, address)
        bindings = len(result.options_of(ClientData))
        self.stats.bindings_sent += bindings
        self._finished(address, plan, StatusCode.Success, bindings, started)

    async def _answer(self, plan: QueryPlan) -> Message | Rejection:
        resolved = await resolve_query(plan, self._store)
        if isinstance(resolved, Rejection):
            return resolved
        return await self._reply(plan, resolved)

    async def _reply(self, plan: QueryPlan, resolution: Resolution) -> Message | Rejection:
        page = await self._store.fetch(resolution.query, None, _MAX_LINKS)
        now = int(self._reactor.seconds())
        found = [
            (binding, data)
            for binding in page.bindings
            if (data := client_data(binding, now, plan.requested)) is not None
        ]
        if not found and resolution.status_if_empty is not None:
            return plan.reject(resolution.status_if_empty, "no link or binding has this address")
        header: list[Option] = [plan.client_id, ServerId(self._config.server_duid)]
        if not found:
            return Message(MessageType.LEASEQUERY_REPLY, plan.transaction_id, tuple(header))
        link_ids = sorted({binding.link_id for binding, _ in found})
        if plan.query_type is QueryType.QUERY_BY_CLIENTID and len(link_ids) > 1:
            links = [await self._store.get_link(link_id) for link_id in link_ids]
            addresses = tuple(link.address for link in links if isinstance(link, Link))
            return Message(
                MessageType.LEASEQUERY_REPLY,
                plan.transaction_id,
                (*header, LQClientLink(addresses)),
            )
        binding, data = max(found, key=_most_recent)
        reply = Message(MessageType.LEASEQUERY_REPLY, plan.transaction_id, (*header, data))
        if len(_encoded_or_empty(reply)) <= self._max_reply_size:
            return reply
        minimal = client_data(binding, now)
        assert minimal is not None
        reply = Message(MessageType.LEASEQUERY_REPLY, plan.transaction_id, (*header, minimal))
        if len(_encoded_or_empty(reply)) <= self._max_reply_size:
            return reply
        return plan.reject(
            StatusCode.UnspecFail,
            "the reply does not fit in a UDP datagram; use Bulk Leasequery over TCP",
        )

    def _send(self, message: Message, address: tuple[str, int]) -> None:
        try:
            octets = message.encode()
        except WireError as error:
            self._log.error("UDP reply to {peer} not sent: {error}", peer=address[0], error=error)
            return
        if self.transport is None:
            return
        self.transport.write(octets, address)
        self.stats.bytes_sent += len(octets)

    def _finished(
        self,
        address: tuple[str, int],
        query: QueryPlan | Rejection,
        status: int,
        bindings: int,
        started: float,
    ) -> None:
        peer, transaction_id = address[0], query.transaction_id
        query_type = query.type_name if isinstance(query, QueryPlan) else query.kind
        status_name = _status_name(status)
        duration = self._reactor.seconds() - started
        self.stats.query_finished(
            QueryRecord(peer, transaction_id, query_type, status_name, bindings, duration)
        )
        self._log.info(
            "UDP {type} query {xid} from {peer}: {status}, {count} binding(s) in {duration:.3f}s",
            type=query_type,
            xid=transaction_id,
            peer=peer,
            status=status_name,
            count=bindings,
            duration=duration,
        )

    def stopProtocol(self) -> None:
        """Cancel the queries still waiting for the store (the port is closing)."""
        for answer in list(self._in_flight):
            answer.cancel()


def _status_name(status: int) -> str:
    try:
        return StatusCode(status).name
    except ValueError:
        return str(status)


def _most_recent(item: tuple[Binding, Option]) -> tuple[int, bytes]:
    return (item[0].cltt, item[0].client_id.raw)


def _encoded_or_empty(message: Message) -> bytes:
    try:
        return message.encode()
    except WireError:
        return b"\x00" * (MAX_UDP_MESSAGE + 1)
