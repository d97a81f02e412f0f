"""
Active Leasequery (RFC 7653) on a Bulk Leasequery connection: STARTTLS, validation of
ACTIVELEASEQUERY, and the live stream of binding changes with catch-up, keep-alives, a
send timeout and a bounded backlog.

The protocol (L{BulkLeasequeryProtocol<bulklq.server._protocol.BulkLeasequeryProtocol>})
hands STARTTLS and ACTIVELEASEQUERY messages to L{handle_message}; an accepted active query
is an L{ActiveQuery} attached to the protocol, which tells it when writing pauses and
resumes and when the connection goes. The wire behaviour is in C{docs/active-leasequery.md}.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, ISSLTransport
from twisted.logger import Logger

from ..changes import BindingChange
from ..interfaces import IBindingChangeFeed
from ..model import BindingKey, BindingQuery
from ..query import (
    QueryPlan,
    Rejection,
    Verdict,
    resolve_query,
    validate_query,
)
from ..wire import (
    ClientData,
    ClientId,
    CltTime,
    IAAddress,
    IAPrefix,
    LQBaseTime,
    LQEndTime,
    LQQuery,
    LQStartTime,
    Message,
    MessageType,
    OptionRequest,
    ServerId,
    StatusCode,
    StatusCodeOption,
)
from ._encode import ClientDataEncoder, OversizeBindingError

if TYPE_CHECKING:
    from ._protocol import BulkLeasequeryProtocol

__all__ = [
    "ACTIVE_LQ_IDLE_TIMEOUT",
    "ACTIVE_LQ_SEND_TIMEOUT",
    "ActiveConfig",
    "ActiveQuery",
    "handle_message",
]

#: RFC 7653 section 6.4: seconds without a message before a keep-alive DATA.
ACTIVE_LQ_IDLE_TIMEOUT = 60.0
#: RFC 7653 section 6.4: seconds a blocked connection is kept before it is dropped.
ACTIVE_LQ_SEND_TIMEOUT = 120.0

_BASE_TIME = int(LQBaseTime.code)
_log = Logger()


@attrs.frozen
class ActiveConfig:
    """
    Active Leasequery and TLS settings of a server (RFC 7653 sections 6.4 and 9.1).

    @ivar enabled: serve ACTIVELEASEQUERY (off by default, RFC 7653 section 9.1).
    @ivar allow_insecure: serve it on connections without TLS too (a separate explicit
        step, RFC 7653 section 9.1).
    @ivar idle_timeout: ACTIVE_LQ_IDLE_TIMEOUT, seconds between keep-alives.
    @ivar send_timeout: ACTIVE_LQ_SEND_TIMEOUT, seconds a blocked connection is kept.
    @ivar max_backlog: distinct bindings waiting to be sent on one connection before the
        requestor is told it cannot keep up and dropped.
    @ivar tls: TLS server options for STARTTLS (an C{IOpenSSLServerConnectionCreator}, see
        L{bulklq.server.tls_options}), or C{None}: STARTTLS gets TLSConnectionRefused.
    """

    enabled: bool = False
    allow_insecure: bool = False
    idle_timeout: float = ACTIVE_LQ_IDLE_TIMEOUT
    send_timeout: float = ACTIVE_LQ_SEND_TIMEOUT
    max_backlog: int = 10_000
    tls: Any = None


def _reply(xid: int, client_id: ClientId | None, server_duid: Any, *more: Any) -> Message:
    head = () if client_id is None else (client_id,)
    return Message(MessageType.LEASEQUERY_REPLY, xid, (*head, ServerId(server_duid), *more))


def handle_message(protocol: BulkLeasequeryProtocol, message: Message) -> None:
    """Answer a STARTTLS or an ACTIVELEASEQUERY received on C{protocol}."""
    if message.msg_type == MessageType.STARTTLS:
        _starttls(protocol, message)
    else:
        _active(protocol, message)


def _starttls(protocol: BulkLeasequeryProtocol, message: Message) -> None:
    """RFC 7653 section 9.1: REPLY without status, then TLS; else TLSConnectionRefused."""
    config = protocol.factory.active
    server_duid = protocol.factory.config.server_duid
    client_id = message.option(ClientId)
    xid = message.transaction_id
    tls = config.tls
    if tls is None or protocol.secure or protocol.messagesReceived > 1:
        reason = (
            "TLS is not supported"
            if tls is None
            else "TLS is already on"
            if protocol.secure
            else "STARTTLS must be the first message"
        )
        protocol.reject(
            Rejection(
                xid,
                StatusCode.TLSConnectionRefused,
                reason,
                client_id,
                reply_type=MessageType.REPLY,
            )
        )
        return
    head = () if client_id is None else (client_id,)
    protocol.writeMessage(Message(MessageType.REPLY, xid, (*head, ServerId(server_duid))))
    protocol.startTLS(tls)


def _active(protocol: BulkLeasequeryProtocol, message: Message) -> None:
    """Validate an ACTIVELEASEQUERY and start it, or reject it."""
    factory = protocol.factory
    config = factory.active
    server_config = factory.config
    xid = message.transaction_id
    client_id = message.option(ClientId)

    def reject(status: StatusCode, reason: str, close: bool = True) -> None:
        protocol.reject(Rejection(xid, status, reason, client_id, close=close))

    feed = factory.store
    if not config.enabled or not IBindingChangeFeed.providedBy(feed):
        reject(StatusCode.NotSupported, "Active Leasequery is not supported")
        return
    if client_id is None:
        return  # discarded, as a LEASEQUERY without CLIENTID (S2)
    server_id = message.option(ServerId)
    if server_id is not None and server_id.duid != server_config.server_duid:
        return  # not for us (S3)
    if not (protocol.secure or config.allow_insecure):
        reject(StatusCode.NotAllowed, "Active Leasequery needs TLS: send STARTTLS first")
        return
    if protocol.active is not None or protocol.queriesInProgress:
        reject(StatusCode.NotAllowed, "another query is running on this connection", False)
        return
    lq_query = message.option(LQQuery)
    places: list[Any] = [message] if lq_query is None else [message, lq_query]
    if any(place.options_of(LQEndTime) for place in places):
        reject(StatusCode.MalformedQuery, "OPTION_LQ_END_TIME is not allowed here")
        return
    starts = [o.seconds for place in places for o in place.options_of(LQStartTime)]
    if len(starts) > 1:
        reject(StatusCode.MalformedQuery, "OPTION_LQ_START_TIME given more than once")
        return
    requested: set[int] = set()
    for place in places:
        for oro in place.options_of(OptionRequest):
            requested.update(oro.codes)
    requested -= server_config.sensitive_options | {_BASE_TIME}
    plan: QueryPlan | None = None
    if lq_query is not None:
        as_bulk = Message(MessageType.LEASEQUERY, xid, message.options)
        verdict = validate_query(as_bulk, server_config, protocol.allowedTypes)
        if verdict is Verdict.DISCARD:
            return
        if isinstance(verdict, Rejection):
            reject(verdict.status, verdict.message)
            return
        assert isinstance(verdict, QueryPlan)
        plan = verdict
    query = ActiveQuery(
        protocol,
        xid,
        client_id,
        requested=frozenset(requested),
        feed=feed,
        start_time=None if not starts else starts[0],
    )
    protocol.active = query
    query.start(plan)


@attrs.define(eq=False)
class _Stream:
    """What is waiting to be sent: live changes, catch-up changes (coalesced by key)."""

    live: OrderedDict[BindingKey, BindingChange] = attrs.field(factory=OrderedDict)
    catch_up: OrderedDict[BindingKey, BindingChange] = attrs.field(factory=OrderedDict)
    #: Keys changed live while the catch-up was being fetched (their catch-up is stale).
    seen_live: set[BindingKey] | None = None
    #: Whether a CatchUpComplete is owed once C{catch_up} is empty.
    catch_up_pending: bool = False


class ActiveQuery:
    """
    One ACTIVELEASEQUERY in progress on a connection (RFC 7653 section 9.3).

    It subscribes to the store's change feed; every change that matches the query waits
    in a per-binding, coalescing queue (the latest state wins, RFC 7653 section 7) and is
    written while the transport accepts data. More than C{max_backlog} bindings waiting
    ends the query with DONE(QueryTerminated); a connection blocked for C{send_timeout}
    is aborted (RFC 7653 section 9.3); after C{idle_timeout} with nothing sent, a
    keep-alive DATA without CLIENT_DATA goes out (RFC 7653 section 8.4).
    """

    def __init__(
        self,
        protocol: BulkLeasequeryProtocol,
        xid: int,
        client_id: ClientId,
        *,
        requested: frozenset[int],
        feed: Any,
        start_time: int | None,
    ) -> None:
        self.protocol = protocol
        self.xid = xid
        self.client_id = client_id
        self.start_time = start_time
        self._feed = feed
        self._config: ActiveConfig = protocol.factory.active
        self._clock = protocol.factory.reactor
        self._encode = ClientDataEncoder(requested).encode_frame
        self._filter: BindingQuery | None = None
        self._stream = _Stream()
        self._unsubscribe: Callable[[], None] | None = None
        self._keepAlive: IDelayedCall | None = None
        self._sendTimer: IDelayedCall | None = None
        self._pending: Deferred[Any] | None = None
        self._started = False
        self._done = False
        #: Changes sent (bindings), for logs.
        self.sent = 0

    # -- starting ------------------------------------------------------------------------

    def start(self, plan: QueryPlan | None) -> None:
        """Resolve the filter (if any), subscribe, REPLY, then catch up."""
        if plan is None:
            self._subscribed(None)
            return
        resolving = Deferred.fromCoroutine(resolve_query(plan, self.protocol.factory.store))
        self._pending = resolving

        def resolved(resolution: Any) -> None:
            self._pending = None
            if isinstance(resolution, Rejection):
                self.protocol.reject(
                    Rejection(
                        self.xid,
                        resolution.status,
                        resolution.message,
                        self.client_id,
                        close=True,
                    )
                )
                return
            self._subscribed(resolution.query)

        def failed(failure: Any) -> None:
            self._pending = None
            if self._done:
                return
            _log.failure("resolving an active query failed", failure)
            self.protocol.reject(
                Rejection(
                    self.xid,
                    StatusCode.UnspecFail,
                    "the store failed the link lookup",
                    self.client_id,
                    close=True,
                )
            )

        resolving.addCallbacks(resolved, failed)

    def _subscribed(self, query: BindingQuery | None) -> None:
        if self._done:
            return
        self._filter = query
        self._unsubscribe = self._feed.subscribe(self._changed)
        self._started = True
        if self.start_time is None:
            self._write([self._message(MessageType.LEASEQUERY_REPLY)])
            self._flush()
            return
        stream = self._stream
        stream.seen_live = set()
        fetching: Deferred[Any] = self._feed.changes_since(self.start_time + _EPOCH)
        self._pending = fetching
        fetching.addCallbacks(self._caughtUp, self._catchUpFailed)

    def _caughtUp(self, changes: Any) -> None:
        self._pending = None
        if self._done:
            return
        stream = self._stream
        seen = stream.seen_live or set()
        stream.seen_live = None
        if changes is None:
            # RFC 7653 section 8.4.1: DataMissing in the REPLY, live updates follow.
            self._write(
                [
                    self._message(
                        MessageType.LEASEQUERY_REPLY,
                        StatusCodeOption(
                            StatusCode.DataMissing, "history does not reach back that far"
                        ),
                    )
                ]
            )
            self._flush()
            return
        catch_up = stream.catch_up
        for change in changes:
            key = change.key
            if key in seen or key in stream.live or not self._matches(change):
                continue
            catch_up.pop(key, None)
            catch_up[key] = change
        stream.catch_up_pending = True
        self._write([self._message(MessageType.LEASEQUERY_REPLY)])
        self._flush()

    def _catchUpFailed(self, failure: Any) -> None:
        self._pending = None
        if self._done:
            return
        _log.failure("the store failed the catch-up", failure)
        self._write(
            [
                self._message(
                    MessageType.LEASEQUERY_REPLY,
                    StatusCodeOption(StatusCode.DataMissing, "the store failed the catch-up"),
                )
            ]
        )
        self._flush()

    # -- changes -------------------------------------------------------------------------

    def _matches(self, change: BindingChange) -> bool:
        query = self._filter
        return query is None or query.matches(change.binding)

    def _changed(self, change: BindingChange) -> None:
        """A change from the feed: queue it (coalesced), then send what can be sent."""
        if self._done or not self._matches(change):
            return
        stream = self._stream
        key = change.key
        if stream.seen_live is not None:
            stream.seen_live.add(key)
        stream.catch_up.pop(key, None)
        live = stream.live
        live.pop(key, None)
        live[key] = change
        if len(live) > self._config.max_backlog:
            self.terminate("requestor cannot keep up")
            return
        if self._pending is None:
            self._flush()

    def _flush(self) -> None:
        """Write waiting changes while the transport accepts them."""
        protocol = self.protocol
        stream = self._stream
        while not self._done and not protocol.writesPaused:
            frames: list[bytes] = []
            now = int(self._clock.seconds())
            for queue in (stream.live, stream.catch_up):
                while queue and len(frames) < 64:
                    _, change = queue.popitem(last=False)
                    frame = self._changeFrame(change, now)
                    if frame is not None:
                        frames.append(frame)
            if not frames:
                if stream.catch_up_pending and not stream.catch_up:
                    stream.catch_up_pending = False
                    self._write(
                        [
                            self._message(
                                MessageType.LEASEQUERY_DATA,
                                StatusCodeOption(StatusCode.CatchUpComplete, "catch-up complete"),
                            )
                        ]
                    )
                    continue
                break
            self.sent += len(frames)
            protocol.factory.stats.bindings_sent += len(frames)
            self._write(frames, now)

    def _changeFrame(self, change: BindingChange, now: int) -> bytes | None:
        """One DATA frame for a change; a removed or expired binding has lifetimes 0."""
        type_xid = (MessageType.LEASEQUERY_DATA << 24) | self.xid
        binding = change.binding
        try:
            frame = None if change.removed else self._encode(binding, now, type_xid)
        except OversizeBindingError as error:
            _log.error("active query {xid}: {error}", xid=self.xid, error=error)
            return None
        if frame is not None:
            return frame
        leases: list[Any] = [IAAddress(a.address, 0, 0) for a in binding.addresses]
        leases.extend(
            IAPrefix(0, 0, p.prefix.prefixlen, p.prefix.network_address) for p in binding.prefixes
        )
        clt = max(0, min(now - binding.cltt, 0xFFFFFFFF))
        data = ClientData((ClientId(binding.client_id), *leases, CltTime(clt)))
        return _frame(Message(MessageType.LEASEQUERY_DATA, self.xid, (data,)))

    def _message(self, msg_type: MessageType, *options: Any) -> bytes:
        """A REPLY (CLIENTID, SERVERID) or DATA/DONE frame; base time is added on write."""
        if msg_type == MessageType.LEASEQUERY_REPLY:
            message = _reply(
                self.xid, self.client_id, self.protocol.factory.config.server_duid, *options
            )
        else:
            message = Message(msg_type, self.xid, tuple(options))
        return _frame(message)

    def _write(self, frames: list[bytes], now: int | None = None) -> None:
        """Write frames, each with OPTION_LQ_BASE_TIME; re-arm the keep-alive."""
        from ._protocol import with_base_time  # noqa: PLC0415 - circular

        if now is None:
            now = int(self._clock.seconds())
        self.protocol.writeFrames(with_base_time(frames, now))
        self._armKeepAlive()

    # -- timers --------------------------------------------------------------------------

    def _armKeepAlive(self) -> None:
        if self._done or not self._started:
            return
        if self._keepAlive is not None and self._keepAlive.active():
            self._keepAlive.reset(self._config.idle_timeout)
        else:
            self._keepAlive = self._clock.callLater(self._config.idle_timeout, self._idle)

    def _idle(self) -> None:
        """RFC 7653 section 8.4: a DATA without CLIENT_DATA when nothing was sent."""
        self._keepAlive = None
        if self._done:
            return
        if self.protocol.writesPaused:
            self._armKeepAlive()
            return
        self._write([self._message(MessageType.LEASEQUERY_DATA)])

    def writesPaused(self) -> None:
        """The transport is full: drop the connection if it stays so (send timeout)."""
        if self._done or self._sendTimer is not None:
            return
        self._sendTimer = self._clock.callLater(self._config.send_timeout, self._sendTimedOut)

    def writesResumed(self) -> None:
        """The transport drained: cancel the send timer, send what waits."""
        if self._sendTimer is not None:
            if self._sendTimer.active():
                self._sendTimer.cancel()
            self._sendTimer = None
        if not self._done and self._pending is None:
            self._flush()

    def _sendTimedOut(self) -> None:
        self._sendTimer = None
        if self._done:
            return
        self.protocol.factory.stats.timeouts["active-send"] += 1
        _log.info("{peer}: active query blocked too long; aborting", peer=self.protocol.peer)
        self.stop()
        self.protocol.abortActive("active send timeout")

    # -- ending --------------------------------------------------------------------------

    def terminate(self, reason: str) -> None:
        """
        DONE(QueryTerminated) with base time as the last message, then close (RFC 7653
        section 8.4: server shutdown; also a requestor that cannot keep up).
        """
        if self._done:
            return
        self._write(
            [
                self._message(
                    MessageType.LEASEQUERY_DONE,
                    StatusCodeOption(StatusCode.QueryTerminated, reason),
                )
            ]
        )
        self.stop()
        self.protocol.activeEnded(reason)

    def stop(self) -> None:
        """Unsubscribe and cancel every timer; nothing more is sent. Idempotent."""
        if self._done:
            return
        self._done = True
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        for timer in (self._keepAlive, self._sendTimer):
            if timer is not None and timer.active():
                timer.cancel()
        self._keepAlive = self._sendTimer = None
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()
        self._stream = _Stream()


def is_secure(transport: Any) -> bool:
    """Whether C{transport} is TLS (an C{ssl:} listener)."""
    return ISSLTransport.providedBy(transport)


_EPOCH = 946684800


def _frame(message: Message) -> bytes:
    data = message.encode()
    return len(data).to_bytes(2, "big") + data
