"""
What to answer to a Leasequery: validation of a decoded message into a query plan or an
error status, and resolution of the plan's link against a store.

Nothing here does I/O on a connection, so the Bulk Leasequery server (TCP, RFC 5460) and a
UDP Leasequery server (RFC 5007) share it: L{validate_query} is synchronous and pure;
L{resolve_query} only asks the store which link an address is on.

Decisions taken here (RFC 5007 section 4.2.1 and 4.4.1, RFC 5460 sections 5.3 and 7.2):

  - A LEASEQUERY without CLIENTID, with a SERVERID that is not ours, or without LQ_QUERY
    is discarded (S2-S4); so is a LEASEQUERY-REPLY (S5).
  - Any other message type closes a bulk connection (S6), except ACTIVELEASEQUERY
    (LEASEQUERY-REPLY with NotSupported, then close; S52) and STARTTLS (REPLY, type 7, with
    TLSConnectionRefused; the requestor closes; S53).
  - Unknown query-type: UnknownQueryType (S7); a type the requestor may not use:
    NotAllowed (S14); a missing query-option: MalformedQuery (S8).
  - QUERY_BY_LINK_ADDRESS with link-address C{::}: MalformedQuery. The link-address is that
    query's only parameter and C{::} names no link; answering with every binding of every
    link would turn a typo into a full dump (S49).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from ipaddress import IPv6Address
from typing import Any

import attrs

from .config import QUERY_TYPE_NAMES, ServerConfig
from .interfaces import IBindingStore
from .model import Binding, BindingQuery
from .wire import (
    AnyMessage,
    ClientId,
    Duid,
    IAAddress,
    LQBaseTime,
    LQEndTime,
    LQQuery,
    LQStartTime,
    Message,
    MessageType,
    Option,
    OptionRequest,
    QueryType,
    RelayId,
    RemoteId,
    ServerId,
    StatusCode,
    StatusCodeOption,
)

__all__ = [
    "RFC7653_EPOCH",
    "QueryPlan",
    "Rejection",
    "Resolution",
    "Verdict",
    "base_time",
    "query_type_name",
    "resolve_query",
    "time_window",
    "validate_query",
]

_UNSPECIFIED = IPv6Address(0)
#: Unix time of 2000-01-01 00:00 UTC: RFC 7653 absolute times count seconds from it.
RFC7653_EPOCH = 946684800
_TYPE_NAMES = {qt: name for name, qt in QUERY_TYPE_NAMES.items()}


def query_type_name(query_type: int | None) -> str:
    """The short name of a query type (C{"relay-id"}), as logs and metrics use it."""
    if query_type is None:
        return "none"
    try:
        return _TYPE_NAMES[QueryType(query_type)]
    except ValueError:
        return f"unknown({query_type})"


class Verdict(enum.Enum):
    """A message that gets no answer."""

    #: Ignore the message; the connection stays open (S2-S5).
    DISCARD = "discard"
    #: Close the connection without a reply (S6).
    CLOSE = "close"


@attrs.frozen
class Rejection:
    """
    An answer carrying only an error status (S37, S52, S53).

    @ivar reply_type: LEASEQUERY-REPLY, or REPLY for STARTTLS.
    @ivar client_id: the query's CLIENTID option, copied into the reply when present.
    @ivar close: whether the server closes the connection after sending it.
    @ivar query_type: the query-type asked for, when there was one (for logs and metrics).
    """

    transaction_id: int
    status: StatusCode
    message: str
    client_id: ClientId | None = None
    reply_type: MessageType = MessageType.LEASEQUERY_REPLY
    close: bool = False
    query_type: int | None = None

    def reply(self, server_duid: Duid) -> Message:
        """The reply message: CLIENTID (if any), SERVERID and STATUS_CODE."""
        options = (
            (self.client_id,) if self.client_id is not None else ()
        ) + (  # keep the vector order: CLIENTID, SERVERID, ...
            ServerId(server_duid),
            StatusCodeOption(self.status, self.message),
        )
        return Message(self.reply_type, self.transaction_id, options)

    @property
    def kind(self) -> str:
        """What was asked, for logs and metrics: a query type name or the message type."""
        if self.reply_type == MessageType.REPLY:
            return "starttls"
        if self.close and self.query_type is None:
            return "activeleasequery"
        return query_type_name(self.query_type)


@attrs.frozen
class QueryPlan:
    """
    A valid Bulk Leasequery, not yet resolved against a store.

    @ivar client_id: the requestor's CLIENTID option (copied into the REPLY, S29).
    @ivar link_address: the LQ_QUERY's link-address (C{::} when not given).
    @ivar address: QUERY_BY_ADDRESS's address.
    @ivar client_duid: QUERY_BY_CLIENTID's client DUID.
    @ivar relay_id: QUERY_BY_RELAY_ID's relay DUID.
    @ivar remote_id: QUERY_BY_REMOTE_ID's Remote-ID.
    @ivar requested: option codes asked for by the ORO inside LQ_QUERY, minus the sensitive
        options (S42, S43).
    @ivar base_time: whether an ORO (inside LQ_QUERY or at message level) asked for
        OPTION_LQ_BASE_TIME: every reply then carries it (RFC 7653 section 9.3).
    @ivar start_time: OPTION_LQ_START_TIME as Unix seconds, or C{None}: only bindings
        changed (CLTT) at or after it are returned (RFC 7653 section 6.3.2).
    @ivar end_time: OPTION_LQ_END_TIME as Unix seconds, or C{None}: only bindings changed
        at or before it (RFC 7653 section 6.3.3).
    """

    transaction_id: int
    query_type: QueryType
    client_id: ClientId
    link_address: IPv6Address = _UNSPECIFIED
    address: IPv6Address | None = None
    client_duid: Duid | None = None
    relay_id: Duid | None = None
    remote_id: RemoteId | None = None
    requested: frozenset[int] = frozenset()
    base_time: bool = False
    start_time: int | None = None
    end_time: int | None = None

    def in_window(self, binding: Binding) -> bool:
        """Whether C{binding} changed (its CLTT) inside the plan's time window."""
        start, end = self.start_time, self.end_time
        return (start is None or binding.cltt >= start) and (end is None or binding.cltt <= end)

    @property
    def windowed(self) -> bool:
        """Whether the plan restricts bindings by change time."""
        return self.start_time is not None or self.end_time is not None

    @property
    def type_name(self) -> str:
        """The query type's short name (C{"link"}, C{"remote-id"} ...)."""
        return query_type_name(self.query_type)

    def reject(self, status: StatusCode, message: str, close: bool = False) -> Rejection:
        """A L{Rejection} answering this query."""
        return Rejection(
            self.transaction_id,
            status,
            message,
            self.client_id,
            close=close,
            query_type=self.query_type,
        )

    def binding_query(self, link_id: str | None) -> BindingQuery:
        """The store query, restricted to C{link_id} when given."""
        qt = self.query_type
        if qt is QueryType.QUERY_BY_ADDRESS:
            assert self.address is not None
            return BindingQuery.by_address(self.address, link_id)
        if qt is QueryType.QUERY_BY_CLIENTID:
            assert self.client_duid is not None
            return BindingQuery.by_client_id(self.client_duid, link_id)
        if qt is QueryType.QUERY_BY_RELAY_ID:
            assert self.relay_id is not None
            return BindingQuery.by_relay_id(self.relay_id, link_id)
        if qt is QueryType.QUERY_BY_REMOTE_ID:
            assert self.remote_id is not None
            return BindingQuery.by_remote_id(self.remote_id, link_id)
        assert link_id is not None
        return BindingQuery.by_link(link_id)


def validate_query(
    message: AnyMessage,
    config: ServerConfig,
    allowed_types: frozenset[QueryType] | None = None,
) -> Verdict | Rejection | QueryPlan:
    """
    Decide what a decoded message on a Leasequery server gets.

    @param allowed_types: the query types this requestor may use (its ACL rule's), or
        C{None} for all. A UDP server passes C{{QUERY_BY_ADDRESS, QUERY_BY_CLIENTID}} to
        refuse the bulk-only types with NotAllowed (S13).
    @return: L{Verdict.DISCARD} or L{Verdict.CLOSE} (no answer), a L{Rejection} (answer with
        an error status), or a L{QueryPlan} to resolve with L{resolve_query}.
    """
    if not isinstance(message, Message):
        return Verdict.CLOSE
    msg_type = message.msg_type
    xid = message.transaction_id
    if msg_type == MessageType.LEASEQUERY_REPLY:
        return Verdict.DISCARD
    if msg_type == MessageType.ACTIVELEASEQUERY:
        return Rejection(
            xid,
            StatusCode.NotSupported,
            "Active Leasequery is not supported",
            message.option(ClientId),
            close=True,
        )
    if msg_type == MessageType.STARTTLS:
        return Rejection(
            xid,
            StatusCode.TLSConnectionRefused,
            "TLS is not supported",
            message.option(ClientId),
            reply_type=MessageType.REPLY,
        )
    if msg_type != MessageType.LEASEQUERY:
        return Verdict.CLOSE

    client_id = message.option(ClientId)
    if client_id is None:
        return Verdict.DISCARD
    server_id = message.option(ServerId)
    if server_id is not None and server_id.duid != config.server_duid:
        return Verdict.DISCARD
    lq_query = message.option(LQQuery)
    if lq_query is None:
        return Verdict.DISCARD

    raw_type = lq_query.query_type
    rejection = Rejection(xid, StatusCode.Success, "", client_id, query_type=raw_type)
    try:
        query_type = QueryType(raw_type)
    except ValueError:
        return attrs.evolve(
            rejection,
            status=StatusCode.UnknownQueryType,
            message=f"query-type {raw_type} is not known",
        )
    if allowed_types is not None and query_type not in allowed_types:
        return attrs.evolve(
            rejection,
            status=StatusCode.NotAllowed,
            message=f"{query_type_name(query_type)} queries are not allowed",
        )

    requested: set[int] = set()
    for oro in lq_query.options_of(OptionRequest):
        requested.update(oro.codes)
    window = time_window(message)
    if isinstance(window, str):
        return attrs.evolve(rejection, status=StatusCode.MalformedQuery, message=window)
    wants_base_time = _BASE_TIME in requested or any(
        _BASE_TIME in oro.codes for oro in message.options_of(OptionRequest)
    )
    plan = QueryPlan(
        xid,
        query_type,
        client_id,
        lq_query.link_address,
        requested=frozenset(requested - config.sensitive_options - {_BASE_TIME}),
        base_time=wants_base_time,
        start_time=window[0],
        end_time=window[1],
    )
    selector = _SELECTORS.get(query_type)
    if selector is not None:
        option_type, option_name, field, value = selector
        option = lq_query.option(option_type)
        if option is None:
            return plan.reject(
                StatusCode.MalformedQuery,
                f"{query_type.name} needs an {option_name} query-option",
            )
        return attrs.evolve(plan, **{field: value(option)})
    if lq_query.link_address == _UNSPECIFIED:  # QUERY_BY_LINK_ADDRESS
        return plan.reject(
            StatusCode.MalformedQuery, "QUERY_BY_LINK_ADDRESS needs a link-address, not ::"
        )
    return plan


#: For each query type that selects by a query-option: that option's class, its RFC name,
#: the L{QueryPlan} field it fills and how to read the value from it.
_SELECTORS: dict[QueryType, tuple[type[Option], str, str, Callable[[Any], Any]]] = {
    QueryType.QUERY_BY_ADDRESS: (IAAddress, "IAADDR", "address", lambda o: o.address),
    QueryType.QUERY_BY_CLIENTID: (ClientId, "CLIENTID", "client_duid", lambda o: o.duid),
    QueryType.QUERY_BY_RELAY_ID: (RelayId, "RELAY_ID", "relay_id", lambda o: o.duid),
    QueryType.QUERY_BY_REMOTE_ID: (RemoteId, "REMOTE_ID", "remote_id", lambda o: o),
}
_BASE_TIME = int(LQBaseTime.code)


def time_window(message: Message) -> tuple[int | None, int | None] | str:
    """
    The RFC 7653 time window of a query as Unix seconds C{(start, end)}, either C{None}
    when not given; or the reason it is malformed (an option given twice, or start after
    end). The options are looked for at message level and inside LQ_QUERY.
    """
    lq_query = message.option(LQQuery)
    places: list[Message | LQQuery] = [message] if lq_query is None else [message, lq_query]
    found: list[int | None] = []
    for option_type in (LQStartTime, LQEndTime):
        values = [o.seconds for place in places for o in place.options_of(option_type)]
        if len(values) > 1:
            name = "OPTION_LQ_START_TIME" if option_type is LQStartTime else "OPTION_LQ_END_TIME"
            return f"{name} given {len(values)} times"
        found.append(values[0] + RFC7653_EPOCH if values else None)
    start, end = found
    if start is not None and end is not None and start > end:
        return "OPTION_LQ_START_TIME is after OPTION_LQ_END_TIME"
    return start, end


def base_time(now: float) -> int:
    """The RFC 7653 absolute time (seconds since 2000, modulo 2^32) of Unix time C{now}."""
    return (int(now) - RFC7653_EPOCH) % (1 << 32)


@attrs.frozen
class Resolution:
    """
    A plan resolved against a store.

    @ivar query: what to fetch.
    @ivar status_if_empty: the error to answer with when the result is empty (NotConfigured
        for an address that is on no link and in no delegated prefix, S10), else C{None}.
    """

    query: BindingQuery
    status_if_empty: StatusCode | None = None


async def resolve_query(plan: QueryPlan, store: IBindingStore) -> Resolution | Rejection:
    """
    Find the link a plan names, if any.

    A non-zero link-address must be inside a configured link, else NotConfigured (S9, S48);
    the query is then restricted to that link (QUERY_BY_LINK_ADDRESS: every binding on it,
    S49). QUERY_BY_ADDRESS with link C{::} searches every link: the address is on the link
    whose prefixes contain it, or inside a delegated prefix of a binding on any link; if
    neither, the answer is NotConfigured (S10).
    """
    if plan.link_address != _UNSPECIFIED:
        link = await store.find_link(plan.link_address)
        if link is None:
            return plan.reject(StatusCode.NotConfigured, f"no link contains {plan.link_address}")
        return Resolution(plan.binding_query(link.link_id))
    if plan.query_type is QueryType.QUERY_BY_ADDRESS:
        assert plan.address is not None
        link = await store.find_link(plan.address)
        return Resolution(
            plan.binding_query(None),
            StatusCode.NotConfigured if link is None else None,
        )
    return Resolution(plan.binding_query(None))
