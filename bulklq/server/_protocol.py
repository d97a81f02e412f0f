"""
One Bulk Leasequery connection: framing, validation, streaming replies with backpressure,
timeouts and half-close.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable, Sequence
from itertools import repeat
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.interfaces import (
    IDelayedCall,
    IHalfCloseableProtocol,
    IPushProducer,
)
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.basic import Int16StringReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from ..query import (
    QueryPlan,
    Rejection,
    Resolution,
    Verdict,
    base_time,
    resolve_query,
    validate_query,
)
from ..stats import QueryRecord
from ..wire import (
    ClientId,
    Message,
    MessageType,
    OptionCode,
    QueryType,
    ServerId,
    StatusCode,
    StatusCodeOption,
    WireError,
    decode_message,
)
from ._active import handle_message, is_secure
from ._encode import ClientDataEncoder, OversizeBindingError

if TYPE_CHECKING:
    from ..model import Binding, BindingPage
    from ._active import ActiveQuery
    from ._factory import BulkLeasequeryFactory

__all__ = ["BulkLeasequeryProtocol"]

_HI = struct.Struct("!HI")
_REPLY = MessageType.LEASEQUERY_REPLY << 24
_DATA = MessageType.LEASEQUERY_DATA << 24
_DONE = MessageType.LEASEQUERY_DONE << 24
_FRAME_HEADER = 6
_SIZE = struct.Struct("!H")
_BASE_TIME_OPTION = struct.Struct("!HHI")
#: Bindings asked for in a query's first page (then C{page_size}): the time to the first
#: binding is that of a small page.
FIRST_PAGE_SIZE = 64


class _QueryAbortedError(Exception):
    """The store failed or did not answer in time: the query ends with QueryTerminated."""

    def __init__(self, reason: str, kind: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind


@attrs.define(eq=False)
class _Query:
    """A query in progress on a connection."""

    plan: QueryPlan
    started: float
    deferred: Deferred[None] | None = None
    replied: bool = False
    sent: int = 0
    status: str = "Success"
    #: Whether it has been counted and logged (exactly once).
    recorded: bool = False


@implementer(IPushProducer)
class _ReplyProducer:
    """
    The producer registered on the transport for the connection's replies.

    It is separate from the protocol because the protocol's own pause/resume methods
    (from L{Int16StringReceiver}) pause I{reading}; this one is told when I{writing}
    must pause.
    """

    def __init__(self, protocol: BulkLeasequeryProtocol) -> None:
        self._protocol = protocol

    def pauseProducing(self) -> None:
        """The transport's buffer is full: stop writing until resumed."""
        self._protocol._writesPaused()

    def resumeProducing(self) -> None:
        """The transport drained its buffer: continue the streams."""
        self._protocol._writesResumed()

    def stopProducing(self) -> None:
        """The connection is going away; C{connectionLost} does the cleanup."""
        self._protocol._writesPaused(stopped=True)


@implementer(IHalfCloseableProtocol)
class BulkLeasequeryProtocol(Int16StringReceiver):
    """
    The server side of one Bulk Leasequery TCP connection (RFC 5460).

    Each LEASEQUERY runs as its own coroutine that resolves the query, then pulls pages
    from the store only while the transport accepts data (a L{_ReplyProducer} is
    registered on the transport) and writes each page's messages in one
    C{transport.write}. Up to C{max_queries_per_connection} queries run at once and their
    replies interleave by page; at the limit reading pauses (S20). A connection holds at
    most one page per query plus the transport's buffer, whatever the result size.

    The factory (L{BulkLeasequeryFactory}) is the controller: it is told when the
    connection is made and lost and when a query finishes.

    @ivar peer: the requestor's address, normalised (IPv4-mapped IPv6 becomes IPv4).
    @ivar allowedTypes: the query types this requestor may use, or C{None} for all.
    """

    #: The largest LEASEQUERY accepted. A query is a CLIENTID, maybe a SERVERID and one
    #: LQ_QUERY with a few query-options: a few hundred octets. A bigger frame closes the
    #: connection (L{lengthLimitExceeded}).
    MAX_LENGTH = 4096

    log = Logger()
    #: A TCP-like transport: producer registration, half-close, abortConnection.
    transport: Any

    def __init__(
        self,
        factory: BulkLeasequeryFactory,
        peer: str,
        allowedTypes: frozenset[QueryType] | None = None,
    ) -> None:
        self.factory = factory
        self.peer = peer
        self.allowedTypes = allowedTypes
        self._config = factory.config
        self._store = factory.store
        self._clock = factory.reactor
        self._stats = factory.stats
        self._queries: dict[int, _Query] = {}
        self._producer = _ReplyProducer(self)
        self._writePaused = False
        self._writeWaiters: deque[Deferred[None]] = deque()
        self._dataTimer: IDelayedCall | None = None
        self._idleTimer: IDelayedCall | None = None
        self._writeTimer: IDelayedCall | None = None
        self._inDataReceived = False
        self._readClosed = False
        self._closing = False
        self._lost = False
        self._shuttingDown = False
        self.idleSince = factory.reactor.seconds()
        #: The Active Leasequery running on this connection (RFC 7653), if any.
        self.active: ActiveQuery | None = None
        #: Whether the connection is TLS (an C{ssl:} listener, or after STARTTLS).
        self.secure = False
        #: Messages decoded on this connection (STARTTLS must be the first).
        self.messagesReceived = 0

    # -- connection lifecycle ------------------------------------------------------------

    def connectionMade(self) -> None:
        """Register the reply producer, start the idle timer, tell the factory."""
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            # Writes are already batched per page; Nagle would only delay the last
            # segment of a reply (and a lone empty REPLY) by a delayed-ACK period.
            set_no_delay(True)
        self.transport.registerProducer(self._producer, True)
        self.secure = is_secure(self.transport)
        self.factory.connectionMade(self)
        self.log.info("connection from {peer}", peer=self.peer)
        self._updateTimers()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Cancel every query (the store's Deferreds with them) and every timer."""
        if self._lost:
            return
        self._lost = True
        self._cancelTimers()
        if self.active is not None:
            self.active.stop()
        for query in list(self._queries.values()):
            if query.status == "Success":
                query.status = "ConnectionLost"
            if query.deferred is not None:
                query.deferred.cancel()
        self._queries.clear()
        for waiter in list(self._writeWaiters):
            waiter.cancel()
        self._writeWaiters.clear()
        self.factory.connectionLost(self)
        self.log.info("connection from {peer} closed", peer=self.peer)

    def readConnectionLost(self) -> None:
        """
        The requestor half-closed: finish the outstanding queries, then close (S27).
        """
        self._readClosed = True
        self.paused = True
        if self._unprocessed:
            self.log.info("{peer} half-closed inside a frame; dropping it", peer=self.peer)
            self._unprocessed = b""
        self._updateTimers()
        if self.active is not None:
            self.active.stop()
            self.active = None
        if not self._queries:
            self._close("half-closed by requestor")

    def writeConnectionLost(self) -> None:
        """Our write side is closed: nothing more can be sent."""
        self._abort("write side closed")

    @property
    def idle(self) -> bool:
        """
        No query in progress and not closing: an eviction candidate (S24), idle since
        L{idleSince}: the connection's start or the end of its last query. Octets that
        do not complete a query are no progress, so a frame trickled in slowly
        (slowloris) does not keep its connection from eviction.
        """
        return not (self._queries or self._closing or self._lost or self.active)

    @property
    def queriesInProgress(self) -> int:
        """How many queries run on this connection now."""
        return len(self._queries)

    # -- reading -------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        """Frame the octets (L{Int16StringReceiver}), then re-arm the read timers."""
        if self._closing or self._lost or self._readClosed:
            return
        self._inDataReceived = True
        try:
            super().dataReceived(data)
        finally:
            self._inDataReceived = False
        self._updateTimers()

    def lengthLimitExceeded(self, length: int) -> None:
        """A frame longer than L{MAX_LENGTH} is no LEASEQUERY: close (S6)."""
        self.log.warn(
            "{peer} sent a frame of {length} octets (limit {limit}); closing",
            peer=self.peer,
            length=length,
            limit=self.MAX_LENGTH,
        )
        self._unprocessed = b""
        self._terminateAll("oversized frame")

    def stringReceived(self, string: bytes) -> None:
        """Decode and validate one message; never lets an error escape (S6)."""
        if self._closing or self._lost:
            return
        try:
            self._messageReceived(string)
        except Exception:
            # A bug, not bad input (that is handled below): log it, end this connection
            # cleanly, keep the server running.
            self.log.failure("handling a message from {peer} failed", peer=self.peer)
            self._terminateAll("internal error")

    def _messageReceived(self, string: bytes) -> None:
        try:
            message = decode_message(string)
        except WireError as error:
            self.log.warn(
                "{peer} sent an undecodable message ({error}); closing",
                peer=self.peer,
                error=error,
            )
            self._terminateAll("undecodable message")
            return
        self.messagesReceived += 1
        if isinstance(message, Message) and message.msg_type in _ACTIVE_TYPES:
            handle_message(self, message)
            return
        if (
            self.active is not None
            and isinstance(message, Message)
            and message.msg_type == MessageType.LEASEQUERY
        ):
            self._reject(
                Rejection(
                    message.transaction_id,
                    StatusCode.NotAllowed,
                    "an Active Leasequery is running on this connection",
                    message.option(ClientId),
                )
            )
            return
        verdict = validate_query(message, self._config, self.allowedTypes)
        if verdict is Verdict.DISCARD:
            self.log.debug("discarding a message from {peer}", peer=self.peer)
            return
        if verdict is Verdict.CLOSE:
            self.log.warn(
                "{peer} sent message type {type} on a bulk connection; closing",
                peer=self.peer,
                type=getattr(message, "msg_type", "?"),
            )
            self._terminateAll("unexpected message type")
            return
        assert isinstance(verdict, Rejection | QueryPlan)
        if verdict.transaction_id in self._queries:
            self.log.warn(
                "{peer} reused transaction-id {xid} of a query in progress; closing",
                peer=self.peer,
                xid=verdict.transaction_id,
            )
            self._terminateAll("transaction-id reused while in progress")
            return
        if isinstance(verdict, Rejection):
            self._reject(verdict)
            return
        if self._shuttingDown:
            self._reject(verdict.reject(StatusCode.QueryTerminated, "server shutting down"))
            return
        self._startQuery(verdict)

    def _reject(self, rejection: Rejection) -> None:
        """Answer with an error status, count it, and close if it says so."""
        self._write(_frame(rejection.reply(self._config.server_duid)))
        self._record(
            rejection.transaction_id,
            rejection.kind,
            rejection.status.name,
            0,
            0.0,
        )
        if rejection.close:
            self._terminateAll(rejection.message)

    def _updateReading(self) -> None:
        """
        Pause reading at the per-connection query limit (S20) and while the transport
        cannot take more replies (replies sent at once, such as errors and STARTTLS, would
        otherwise pile up in its buffer for a requestor that never reads); resume when
        neither holds.
        """
        if self._readClosed or self._closing or self._lost:
            return
        full = (
            self._shuttingDown
            or self._writePaused
            or len(self._queries) >= self._config.max_queries_per_connection
        )
        if full and not self.paused:
            self.pauseProducing()
        elif not full and self.paused:
            if self._inDataReceived:
                # The framing loop up the stack re-checks C{paused} for each frame.
                self.paused = False
                self.transport.resumeProducing()
            else:
                self.resumeProducing()

    # -- timers --------------------------------------------------------------------------

    def _updateTimers(self) -> None:
        """
        Data timer while a frame is partly read (S18); idle timer while no query is in
        progress; neither while queries run (the write timer covers a blocked requestor).
        """
        if self._closing or self._lost:
            return
        partial = bool(self._unprocessed) and not self.paused
        if partial:
            if self._dataTimer is None:
                self._dataTimer = self._clock.callLater(
                    self._config.data_timeout, self._timedOut, "data"
                )
        elif self._dataTimer is not None:
            self._dataTimer.cancel()
            self._dataTimer = None
        if not partial and not self._queries and not self._readClosed and self.active is None:
            if self._idleTimer is None:
                self._idleTimer = self._clock.callLater(
                    self._config.idle_timeout, self._timedOut, "idle"
                )
        elif self._idleTimer is not None:
            self._idleTimer.cancel()
            self._idleTimer = None

    def _cancelTimers(self) -> None:
        for name in ("_dataTimer", "_idleTimer", "_writeTimer"):
            timer = getattr(self, name)
            if timer is not None:
                if timer.active():
                    timer.cancel()
                setattr(self, name, None)

    def _timedOut(self, kind: str) -> None:
        """A timer fired: count it and close (S18, S19, idle)."""
        setattr(
            self, {"data": "_dataTimer", "idle": "_idleTimer", "write": "_writeTimer"}[kind], None
        )
        self._stats.timeouts[kind] += 1
        self.log.info("{peer}: {kind} timeout; closing", peer=self.peer, kind=kind)
        if kind == "write":
            self._abort("write timeout")
        elif kind == "data":
            self._terminateAll("data timeout")
        else:
            self._close("idle timeout")

    # -- writing -------------------------------------------------------------------------

    def _writesPaused(self, stopped: bool = False) -> None:
        self._writePaused = True
        if stopped or self._lost:
            return
        if self.active is not None:
            self.active.writesPaused()
        if self._writeTimer is None:
            self._writeTimer = self._clock.callLater(
                self._config.data_timeout, self._timedOut, "write"
            )
        self._updateReading()

    def _writesResumed(self) -> None:
        self._writePaused = False
        if self._writeTimer is not None:
            self._writeTimer.cancel()
            self._writeTimer = None
        waiters = self._writeWaiters
        while waiters and not self._writePaused and not self._lost:
            waiters.popleft().callback(None)
        self._updateReading()
        if self.active is not None and not self._writePaused:
            self.active.writesResumed()

    def _untilWritable(self) -> Deferred[None]:
        waiters = self._writeWaiters

        def cancel(waiter: Deferred[None]) -> None:
            if waiter in waiters:
                waiters.remove(waiter)

        waiter: Deferred[None] = Deferred(cancel)
        waiters.append(waiter)
        return waiter

    def _write(self, data: bytes) -> None:
        if self._lost or self._closing:
            return
        self._stats.bytes_sent += len(data)
        self.transport.write(data)

    # -- queries -------------------------------------------------------------------------

    def _startQuery(self, plan: QueryPlan) -> None:
        query = _Query(plan, self._clock.seconds())
        self._queries[plan.transaction_id] = query
        self.log.debug(
            "{peer} query {xid} ({type})",
            peer=self.peer,
            xid=plan.transaction_id,
            type=plan.type_name,
        )
        self._updateReading()
        self._updateTimers()
        deferred = Deferred.fromCoroutine(self._serve(query))
        query.deferred = deferred
        deferred.addBoth(self._queryEnded, query)

    def _storeCall(self, deferred: Deferred[Any], what: str) -> Deferred[Any]:
        """A store Deferred bounded by C{store_timeout}; failures become L{_QueryAbortedError}."""

        def failed(failure: Failure) -> None:
            if self._lost or self._closing:
                # We cancelled it (the connection is going away): whatever the store's
                # canceller reports, this is a cancellation, not a store failure.
                raise CancelledError()
            if failure.check(CancelledError) and not failure.check(DeferredTimeoutError):
                failure.raiseException()
            if failure.check(DeferredTimeoutError):
                raise _QueryAbortedError(f"the store did not answer {what} in time", "timeout")
            self.log.failure(
                "store {store} failed {what} for {peer}",
                failure,
                store=getattr(self._store, "name", "?"),
                what=what,
                peer=self.peer,
            )
            raise _QueryAbortedError(f"the store failed {what}", "error")

        if not deferred.called:  # a synchronous store needs no timer
            deferred.addTimeout(self._config.store_timeout, self._clock)
        deferred.addErrback(failed)
        return deferred

    async def _serve(self, query: _Query) -> None:
        """Resolve, then stream the pages of one query."""
        plan = query.plan
        resolution: Resolution | Rejection = await self._storeCall(
            Deferred.fromCoroutine(resolve_query(plan, self._store)), "the link lookup"
        )
        if isinstance(resolution, Rejection):
            framed = _frame(resolution.reply(self._config.server_duid))
            if plan.base_time:
                framed = with_base_time([framed], int(self._clock.seconds()))[0]
            self._write(framed)
            query.status = resolution.status.name
            return
        xid = plan.transaction_id
        encode_frame = ClientDataEncoder(plan.requested).encode_frame
        data_type = _DATA | xid
        page_size = self._config.page_size
        # A small first page gets the REPLY (and its first binding) out quickly.
        limit = min(page_size, FIRST_PAGE_SIZE)
        store = self._store
        resume_after = None
        while True:
            while self._writePaused:
                await self._untilWritable()
            if self._closing:
                # Aborted (write timeout): stop pulling; connectionLost follows.
                raise CancelledError()
            page: BindingPage = await self._storeCall(
                store.fetch(resolution.query, resume_after, limit), "a page"
            )
            now = int(self._clock.seconds())
            bindings = page.bindings
            if plan.windowed:
                bindings = [binding for binding in bindings if plan.in_window(binding)]
            try:
                # map/filter iterate in C: the per-binding cost is the encoder alone.
                frames: list[bytes] = list(
                    filter(None, map(encode_frame, bindings, repeat(now), repeat(data_type)))
                )
            except OversizeBindingError:
                frames = self._encodeOneByOne(encode_frame, bindings, now, data_type, xid)
            append = frames.append
            last = page.resume_after is None
            if frames:
                if not query.replied:
                    frames[0] = self._replyFrame(plan, frames[0])
                    query.replied = True
                query.sent += len(frames)
                self._stats.bindings_sent += len(frames)
            elif not query.replied and last:
                if resolution.status_if_empty is not None:
                    rejection = plan.reject(
                        resolution.status_if_empty, f"no link contains {plan.address}"
                    )
                    append(_frame(rejection.reply(self._config.server_duid)))
                    query.status = rejection.status.name
                else:
                    append(_frame(self._emptyReply(plan)))
            if last and query.replied:
                append(_HI.pack(4, _DONE | xid))
            if plan.base_time and frames:
                frames = with_base_time(frames, now)
            if frames:
                self._write(b"".join(frames))
            if last:
                return
            resume_after = page.resume_after
            limit = page_size

    def _encodeOneByOne(
        self,
        encode_frame: Callable[[Binding, int, int], bytes | None],
        bindings: Sequence[Binding],
        now: int,
        data_type: int,
        xid: int,
    ) -> list[bytes]:
        """The slow path of a page holding a binding too big for one message: skip it."""
        frames = []
        for binding in bindings:
            try:
                framed = encode_frame(binding, now, data_type)
            except OversizeBindingError as error:
                self.log.error("{peer} query {xid}: {error}", peer=self.peer, xid=xid, error=error)
                continue
            if framed is not None:
                frames.append(framed)
        return frames

    def _emptyReply(self, plan: QueryPlan) -> Message:
        """A successful REPLY without CLIENT_DATA (S31)."""
        return Message(
            MessageType.LEASEQUERY_REPLY,
            plan.transaction_id,
            (plan.client_id, ServerId(self._config.server_duid)),
        )

    def _replyFrame(self, plan: QueryPlan, data_frame: bytes) -> bytes:
        """Turn the first DATA frame into the REPLY: CLIENTID, SERVERID, CLIENT_DATA (S29)."""
        head: bytes = plan.client_id.encode() + self.factory.serverIdOption
        size = len(data_frame) - 2 + len(head)
        if size > 0xFFFF:
            raise _QueryAbortedError("the first binding does not fit in a REPLY", "internal")
        header: bytes = _HI.pack(size, _REPLY | plan.transaction_id)
        return header + head + data_frame[_FRAME_HEADER:]

    def _queryEnded(self, result: object, query: _Query) -> None:
        """Count and log a finished query; handle an abort; resume reading."""
        xid = query.plan.transaction_id
        if self._queries.get(xid) is query:
            del self._queries[xid]
        abort: _QueryAbortedError | None = None
        if isinstance(result, Failure):
            if result.check(CancelledError):
                if query.status == "Success":
                    query.status = "Cancelled"
            elif isinstance(result.value, _QueryAbortedError):
                abort = result.value
            else:
                self.log.failure("query {xid} from {peer} failed", result, xid=xid, peer=self.peer)
                abort = _QueryAbortedError("internal error", "internal")
        if abort is not None and not query.recorded:
            if abort.kind == "timeout":
                self._stats.timeouts["store"] += 1
            elif abort.kind == "error":
                self._stats.store_errors += 1
            self._sendTerminated(query, abort.reason)
        self._recordQuery(query)
        if not self._queries:
            self.idleSince = self._clock.seconds()
        if abort is not None:
            self._terminateAll(abort.reason)
            return
        if self._lost or self._closing:
            return
        if not self._queries and (self._readClosed or self._shuttingDown):
            self._close("queries finished")
            return
        self._updateReading()
        self._updateTimers()

    def _sendTerminated(self, query: _Query, reason: str) -> None:
        """DONE(QueryTerminated) after a REPLY, else a REPLY with it (S26, S38)."""
        plan = query.plan
        query.status = StatusCode.QueryTerminated.name
        if query.replied:
            message = Message(
                MessageType.LEASEQUERY_DONE,
                plan.transaction_id,
                (StatusCodeOption(StatusCode.QueryTerminated, reason),),
            )
        else:
            message = plan.reject(StatusCode.QueryTerminated, reason).reply(
                self._config.server_duid
            )
        self._write(_frame(message))

    def _record(self, xid: int, kind: str, status: str, count: int, duration: float) -> None:
        record = QueryRecord(self.peer, xid, kind, status, count, duration)
        self.log.info(
            "query {xid} ({type}) from {peer}: {status}, {count} bindings in {duration:.3f} s",
            xid=xid,
            type=kind,
            peer=self.peer,
            status=status,
            count=count,
            duration=duration,
        )
        self.factory.queryFinished(record)

    # -- ending --------------------------------------------------------------------------

    def terminate(self, reason: str) -> None:
        """
        Abort every query in progress: DONE(QueryTerminated) for those that sent their
        REPLY, a REPLY with QueryTerminated for the others; then close (S26).
        """
        self._terminateAll(reason)

    def _terminateAll(self, reason: str) -> None:
        if self.active is not None:
            self.active.terminate(reason)
        for query in list(self._queries.values()):
            if not query.recorded:
                self._sendTerminated(query, reason)
                self._recordQuery(query)
        self._close(reason)
        for query in list(self._queries.values()):
            if query.deferred is not None:
                query.deferred.cancel()
        self._queries.clear()

    def _recordQuery(self, query: _Query) -> None:
        if query.recorded:
            return
        query.recorded = True
        self._record(
            query.plan.transaction_id,
            query.plan.type_name,
            query.status,
            query.sent,
            self._clock.seconds() - query.started,
        )

    def beginShutdown(self) -> None:
        """Take no new query; close once the queries in progress have finished."""
        self._shuttingDown = True
        if self.active is not None:
            self.active.terminate("server shutting down")
            return
        if not self._queries:
            self._close("server shutting down")
        else:
            self._updateReading()

    def evict(self) -> None:
        """Close this idle connection to let another requestor in (S24)."""
        self.log.info("evicting idle connection from {peer}", peer=self.peer)
        self._close("evicted")

    def _close(self, reason: str) -> None:
        """Flush what is written, then close; no more reading or writing."""
        if self._closing or self._lost:
            return
        self._closing = True
        self.log.debug("closing connection from {peer}: {reason}", peer=self.peer, reason=reason)
        self._cancelTimers()
        self.transport.unregisterProducer()
        self.transport.loseConnection()
        # loseConnection waits for the buffer to drain: bound that by the data timeout.
        self._writeTimer = self._clock.callLater(self._config.data_timeout, self._timedOut, "write")

    # -- hooks for Active Leasequery and STARTTLS (L{bulklq.server._active}) ---------------

    @property
    def writesPaused(self) -> bool:
        """Whether the transport asked us to stop writing."""
        return self._writePaused

    def reject(self, rejection: Rejection) -> None:
        """Answer with an error status, count it, and close if it says so."""
        self._reject(rejection)

    def writeMessage(self, message: Message) -> None:
        """Write one message, framed."""
        self._write(_frame(message))

    def writeFrames(self, frames: list[bytes]) -> None:
        """Write framed messages in one C{transport.write}."""
        self._write(b"".join(frames))

    def startTLS(self, options: Any) -> None:
        """Start TLS as the server, after what is written so far (RFC 7653 section 9.1)."""
        self.secure = True
        self.transport.startTLS(options)

    def activeEnded(self, reason: str) -> None:
        """The active query ended (DONE sent): close the connection."""
        self.active = None
        self._close(reason)

    def abortActive(self, reason: str) -> None:
        """The active query's send timeout: abort the connection."""
        self.active = None
        self._abort(reason)

    def abortNow(self) -> None:
        """Abort the connection without flushing (shutdown deadline)."""
        self._abort("shutdown deadline")

    def _abort(self, reason: str) -> None:
        self._closing = True
        self.log.debug("aborting connection from {peer}: {reason}", peer=self.peer, reason=reason)
        self._cancelTimers()
        self.transport.abortConnection()


_ACTIVE_TYPES = frozenset({MessageType.ACTIVELEASEQUERY, MessageType.STARTTLS})


def with_base_time(frames: list[bytes], now: int) -> list[bytes]:
    """
    Each frame with OPTION_LQ_BASE_TIME (Unix time C{now} as RFC 7653 time) appended as its
    last option, the size prefix grown to match (RFC 7653 section 9.3).
    """
    option = _BASE_TIME_OPTION.pack(OptionCode.OPTION_LQ_BASE_TIME, 4, base_time(now))
    return [_SIZE.pack(len(f) - 2 + len(option)) + f[2:] + option for f in frames]


def _frame(message: Message) -> bytes:
    """The message with its 2-octet size prefix (S1)."""
    data = message.encode()
    return struct.pack("!H", len(data)) + data
