"""
The requestor's side of a Bulk Leasequery TCP connection (RFC 5460 section 6).

L{BulkLeasequeryClientProtocol} sends LEASEQUERY messages and demultiplexes the replies by
transaction-id, so several queries may be outstanding on one connection (R5, R13). It
validates what arrives (R6-R12), turns CLIENT_DATA into L{Binding}s for a streaming
callback and, if asked, an in-memory merged result, and aborts the connection when nothing
arrives for the data timeout while a query is outstanding (R14).
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.protocols.basic import Int16StringReceiver
from twisted.python.failure import Failure

from ..model import Binding
from ..wire import (
    BULK_LQ_DATA_TIMEOUT,
    MAX_MESSAGE_SIZE,
    ClientData,
    ClientId,
    Duid,
    Message,
    MessageType,
    ServerId,
    StatusCode,
    StatusCodeOption,
    WireError,
    decode_message,
    rfc_name,
)
from ._connection import abort_connection, peer_text
from ._decode import (
    UNKNOWN_LINK,
    binding_from_client_data,
    fast_data_bindings,
    fast_frames_at,
)
from ._query import UNSPECIFIED, LeaseQuery
from ._result import (
    MAX_LEASES_PER_BINDING,
    BindingMerger,
    QueryStatus,
    ServerResult,
    TooManyBindingsError,
)

__all__ = ["BindingCallback", "BulkLeasequeryClientProtocol", "FrameCallback", "StopStreaming"]

#: Called with each binding as it arrives (one per accepted CLIENT_DATA).
BindingCallback = Callable[[Binding], object]

#: Offered each LEASEQUERY-DATA message of a streaming query before it is decoded, in place:
#: C{(data, start, end, received_at, link_id) -> taken}. See L{BulkLeasequeryClientProtocol.query}.
FrameCallback = Callable[[bytes, int, int, int, str], bool]

_REPLY = MessageType.LEASEQUERY_REPLY
_DATA = MessageType.LEASEQUERY_DATA
_DONE = MessageType.LEASEQUERY_DONE

# A frame's length prefix, and its message type and transaction-id as one number.
_unpack_frame_head = struct.Struct("!HI").unpack_from


def _frames_end(data: bytes, offset: int, count: int) -> int:
    """The offset after the C{count} whole frames that start at C{offset}."""
    for _ in range(count):
        offset += 2 + ((data[offset] << 8) | data[offset + 1])
    return offset


def _data_head(xid: int) -> int:
    """The message type and transaction-id of a LEASEQUERY-DATA for C{xid}, as one number."""
    return (_DATA << 24) | xid


class StopStreaming(Exception):  # noqa: N818 - a signal, not an error
    """
    Raised by a binding callback to end its query early: the query ends as incomplete with
    this exception's text, the connection is aborted, and nothing is logged as a failure.
    """


class _Pending:
    """One outstanding query on a connection."""

    __slots__ = (
        "consume",
        "deferred",
        "discarded",
        "link",
        "link_id",
        "merger",
        "on_binding",
        "on_frame",
        "query",
        "received",
        "replied",
        "server_duid",
        "xid",
    )

    def __init__(
        self,
        xid: int,
        query: LeaseQuery,
        deferred: Deferred[ServerResult],
        on_binding: BindingCallback | None,
        merger: BindingMerger | None,
        *,
        on_frame: FrameCallback | None = None,
    ) -> None:
        self.xid = xid
        self.query = query
        self.deferred = deferred
        self.on_binding = on_binding
        self.merger = merger
        self.on_frame = on_frame
        # What takes each binding decoded in place (fast_frames_at) while the stream is
        # open: the callback when nothing is kept, the merger (then the callback) when the
        # result is kept; None when a frame callback comes first, and once the query ended.
        self.consume: BindingCallback | None = None
        if on_frame is None:
            self.consume = self.keep if merger is not None else on_binding or _ignore
        self.link: str | None = (
            None if query.link_address == UNSPECIFIED else str(query.link_address)
        )
        # The link id of a binding without relay data (what on_frame is told).
        self.link_id = UNKNOWN_LINK if self.link is None else self.link
        self.replied = False
        self.server_duid: Duid | None = None
        self.received = 0
        self.discarded = 0

    def keep(self, binding: Binding) -> None:
        """Merge one binding into the kept result, then hand it to the callback."""
        if self.merger is not None:
            self.merger.add(binding)
        if self.on_binding is not None:
            self.on_binding(binding)


def _ignore(binding: Binding) -> None:
    """The consumer of a query that neither keeps nor streams its bindings (counts them)."""


class BulkLeasequeryClientProtocol(Int16StringReceiver):
    """
    A Bulk Leasequery requestor connection.

    Call L{query} once connected, as often as wanted: each query gets a unique
    transaction-id and its own Deferred, and replies may interleave (R5, R13). Closing is
    the caller's choice (R15): L{query} does not close the connection.

    @ivar peer: the server's address as text, for results and logs.
    """

    MAX_LENGTH = MAX_MESSAGE_SIZE
    _log = Logger()

    def __init__(
        self,
        requestor_duid: Duid,
        clock: IReactorTime,
        data_timeout: float = BULK_LQ_DATA_TIMEOUT,
        rng: random.Random | None = None,
    ) -> None:
        self._requestor_duid = requestor_duid
        self._clock = clock
        self._data_timeout = data_timeout
        self._random = rng or random.Random()
        self._pending: dict[int, _Pending] = {}
        # The replied queries, by the type-and-xid head of their LEASEQUERY-DATA frames.
        self._streams: dict[int, _Pending] = {}
        self._timer: IDelayedCall | None = None
        self._last_activity = 0.0
        self._received_at = 0
        self._closing_reason: tuple[QueryStatus, str] | None = None
        self._connected = False
        self.peer = "server"

    # -- connection events -------------------------------------------------------------

    def connectionMade(self) -> None:
        """Remember the peer's address for results."""
        self._connected = True
        self.peer = peer_text(self.transport) or self.peer

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        """Fail every outstanding query: its data is incomplete (R9)."""
        self._connected = False
        self._stop_timer()
        status, text = self._closing_reason or (
            QueryStatus.INCOMPLETE,
            "the connection closed before the reply was complete",
        )
        pending, self._pending = self._pending, {}
        self._streams.clear()  # in place: a dataReceived under way holds its lookup
        # (and _finish ends each stream: a fast_frames_at under way stops.)
        for query in pending.values():
            self._finish(query, status, error=text)

    # -- the API ------------------------------------------------------------------------

    @property
    def outstanding(self) -> int:
        """How many queries are waiting for their reply to complete."""
        return len(self._pending)

    def query(
        self,
        query: LeaseQuery,
        on_binding: BindingCallback | None = None,
        keep: bool = True,
        max_bindings: int | None = None,
        on_frame: FrameCallback | None = None,
    ) -> Deferred[ServerResult]:
        """
        Send C{query}; the Deferred fires with its L{ServerResult} (it never errbacks for
        anything the server does).

        @param on_binding: called with each binding as it arrives, before the result.
        @param keep: keep the bindings (merged by client and link) in the result; without
            it memory does not grow with the size of the answer.
        @param max_bindings: with C{keep}, end the query as incomplete (and close the
            connection) when the result would hold more bindings than this. Whatever
            the limit, a kept binding holds at most C{MAX_LEASES_PER_BINDING} leases.
        @param on_frame: with C{on_binding} and without C{keep}, a shortcut for consumers
            that can use a binding's octets without a L{Binding} (such as
            L{JsonLinesWriter.frame<bulklq.client.output.JsonLinesWriter.frame>}): each
            LEASEQUERY-DATA message of this query, once its REPLY was accepted (R11) and
            matched by transaction-id (R13), is first offered as
            C{on_frame(data, start, end, received_at, link_id)}, the message being
            C{data[start:end]}. Returning C{True} takes it as one binding, which
            C{on_binding} then does not see: C{on_frame} must only take a message that
            holds exactly one valid CLIENT_DATA with CLIENTID and CLT_TIME and no
            LQ_RELAY_DATA, and use it as the binding the requestor would decode (received
            at C{received_at}, on link C{link_id}). C{False} has the message decoded and
            checked as usual (R7, R12). C{on_frame} may raise L{StopStreaming}.

        Cancelling the Deferred aborts the connection: the server would go on sending.
        """
        deferred: Deferred[ServerResult] = Deferred(self._cancel)
        if not self._connected:
            deferred.callback(
                ServerResult(self.peer, QueryStatus.INCOMPLETE, error="not connected")
            )
            return deferred
        xid = self._random.getrandbits(24)
        while xid in self._pending:
            xid = self._random.getrandbits(24)
        pending = _Pending(
            xid,
            query,
            deferred,
            on_binding,
            BindingMerger(max_bindings, MAX_LEASES_PER_BINDING) if keep else None,
            on_frame=on_frame if on_binding is not None and not keep else None,
        )
        self._pending[xid] = pending
        self.sendString(query.to_message(xid, self._requestor_duid).encode())
        self._touch()
        self._start_timer()
        return deferred

    def _cancel(self, deferred: Deferred[ServerResult]) -> None:
        for xid, pending in list(self._pending.items()):
            if pending.deferred is deferred:
                del self._pending[xid]
                self._streams.pop(_data_head(xid), None)
                pending.consume = None
        self._closing(QueryStatus.INCOMPLETE, "another query was cancelled")
        self._abort()

    def _closing(self, status: QueryStatus, reason: str) -> None:
        """
        Note why the connection is being closed (for the queries still outstanding when it
        is lost) and stop reading replies: every frame is then ignored (L{stringReceived}),
        none is decoded in place (the replied-query table is emptied, in place, for a
        L{dataReceived} under way holds its lookup).
        """
        self._closing_reason = (status, reason)
        for pending in self._streams.values():
            pending.consume = None
        self._streams.clear()

    def _abort(self) -> None:
        abort_connection(self.transport)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.loseConnection()

    # -- the data timeout (R14) ---------------------------------------------------------

    def _touch(self) -> None:
        self._last_activity = self._clock.seconds()

    def _start_timer(self) -> None:
        if self._timer is None:
            self._timer = self._clock.callLater(self._data_timeout, self._check_timeout)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def _check_timeout(self) -> None:
        self._timer = None
        if not self._pending:
            return
        idle = self._clock.seconds() - self._last_activity
        if idle < self._data_timeout:
            self._timer = self._clock.callLater(self._data_timeout - idle, self._check_timeout)
            return
        self._log.warn(
            "No data from {peer} for {timeout} s: aborting the connection",
            peer=self.peer,
            timeout=self._data_timeout,
        )
        self._closing(QueryStatus.TIMEOUT, f"no data for {self._data_timeout:g} s (data timeout)")
        self._abort()

    # -- receiving ----------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        """
        Note the activity for the data timeout, then split frames (S1) as
        C{Int16StringReceiver} does (C{MAX_LENGTH}, C{paused}), handing each to
        L{stringReceived}. The LEASEQUERY-DATA frames of a replied query are handled in
        place, without copying them out of the received data first: offered one by one to
        the query's C{on_frame}, else decoded while they are of the usual shape (every run
        of them by one L{fast_frames_at}), else decoded one by one.
        """
        now = self._clock.seconds()
        self._last_activity = now
        self._received_at = received_at = int(now)
        buffer = self._unprocessed + data
        size = len(buffer)
        offset = 0
        streams_get = self._streams.get
        limit = self.MAX_LENGTH
        # fast_frames_at does not check MAX_LENGTH: it runs only when no frame exceeds it.
        in_runs = limit >= MAX_MESSAGE_SIZE
        while not self.paused:
            if size - offset >= 6:
                length, head = _unpack_frame_head(buffer, offset)
            elif size - offset >= 2:
                length = (buffer[offset] << 8) | buffer[offset + 1]
                head = -1
            else:
                break
            if length > limit:
                self._unprocessed = buffer[offset:]
                self._compatibilityOffset = 0
                self.lengthLimitExceeded(length)
                return
            start = offset + 2
            end = start + length
            if end > size:
                break
            # A frame shorter than its type and xid has a meaningless head here: it finds
            # no query, or one whose decoding rejects it as stringReceived would.
            pending = streams_get(head)
            if in_runs and pending is not None and pending.consume is not None:
                received = pending.received
                try:
                    after = fast_frames_at(
                        buffer, offset, size, head, received_at, pending.link_id, pending, self
                    )
                except TooManyBindingsError as error:
                    offset = _frames_end(buffer, offset, pending.received - received)
                    self._abort_query(pending, str(error))
                    continue
                except Exception as error:
                    offset = _frames_end(buffer, offset, pending.received - received)
                    self._consumer_failed(pending, error)
                    continue
                if after != offset:
                    offset = after
                    continue
            offset = end
            if pending is None:
                self.stringReceived(buffer[start:end])
            elif pending.on_frame is not None and length >= 16:
                try:
                    taken = pending.on_frame(buffer, start, end, received_at, pending.link_id)
                except Exception as error:
                    self._consumer_failed(pending, error)
                    continue
                if taken:
                    pending.received += 1
                else:
                    self._data_frame(pending, buffer[start:end])
            else:
                self._data_frame(pending, buffer[start:end])
        self._unprocessed = buffer[offset:]
        self._compatibilityOffset = 0

    def _consumer_failed(self, pending: _Pending, error: Exception) -> None:
        """
        End C{pending} because its consumer raised C{error} (in an C{except} block):
        L{StopStreaming} quietly, anything else logged as a failure.
        """
        if isinstance(error, StopStreaming):
            self._abort_query(pending, str(error) or "the consumer stopped")
        else:
            self._log.failure("The binding consumer failed")
            self._abort_query(pending, "the binding consumer failed")

    def lengthLimitExceeded(self, length: int) -> None:
        """Cannot happen with a 2-octet size; close rather than buffer, should it."""
        self._closing(QueryStatus.INCOMPLETE, f"frame of {length} octets")
        self._abort()

    def stringReceived(self, frame: bytes) -> None:
        """Dispatch one message by type and transaction-id."""
        if self._closing_reason is not None:
            return
        if len(frame) >= 4 and frame[0] == _DATA:
            pending = self._pending.get(int.from_bytes(frame[1:4], "big"))
            if pending is not None and pending.replied:
                on_frame = pending.on_frame
                if on_frame is not None and len(frame) >= 16:
                    try:
                        taken = on_frame(frame, 0, len(frame), self._received_at, pending.link_id)
                    except Exception as error:
                        self._consumer_failed(pending, error)
                        return
                    if taken:
                        pending.received += 1
                        return
                self._data_frame(pending, frame)
                return
        try:
            message = decode_message(frame)
        except WireError as error:
            self._discard_frame(frame, str(error))
            return
        if not isinstance(message, Message):
            self._log.info("Discarding a relay message from {peer}", peer=self.peer)
            return
        pending = self._pending.get(message.transaction_id)
        kind = message.msg_type
        if kind == _DONE:
            self._done(message, pending)
        elif pending is None:
            self._log.debug(
                "Discarding {kind} for unknown transaction-id {xid} from {peer}",
                kind=rfc_name(kind, MessageType),
                xid=message.transaction_id,
                peer=self.peer,
            )
        elif kind == _DATA:
            self._data(message, pending)
        elif kind == _REPLY:
            self._reply(message, pending)
        else:
            pending.discarded += 1
            self._log.info(
                "Discarding unexpected {kind} from {peer}",
                kind=rfc_name(kind, MessageType),
                peer=self.peer,
            )

    def _data_frame(self, pending: _Pending, frame: bytes) -> None:
        """
        A LEASEQUERY-DATA frame of C{pending} (replied) that the in-place paths left: the
        fast decode of several CLIENT_DATA, else the codec and every check (R7, R12).
        """
        bindings = fast_data_bindings(frame, self._received_at, pending.link)
        if bindings is not None:
            for binding in bindings:
                if not self._accept(pending, binding):
                    return
            return
        try:
            message = decode_message(frame)
        except WireError as error:
            self._discard_frame(frame, str(error))
            return
        if isinstance(message, Message):  # always: the type octet is DATA's
            self._data(message, pending)

    def _discard_frame(self, frame: bytes, reason: str) -> None:
        pending = self._pending.get(int.from_bytes(frame[1:4], "big")) if len(frame) >= 4 else None
        if pending is not None:
            pending.discarded += 1
            if pending.discarded > 1:
                return
        self._log.warn(
            "Discarding an undecodable message from {peer}: {reason}",
            peer=self.peer,
            reason=reason,
        )

    def _reply(self, message: Message, pending: _Pending) -> None:
        server_id = message.option(ServerId)
        client_id = message.option(ClientId)
        if pending.replied or server_id is None or client_id is None:
            pending.discarded += 1
            self._log.warn(
                "Discarding a LEASEQUERY-REPLY from {peer}: {why}",
                peer=self.peer,
                why="a second REPLY" if pending.replied else "no SERVERID or CLIENTID",
            )
            return
        if client_id.duid != self._requestor_duid:
            pending.discarded += 1
            self._log.warn(
                "Discarding a LEASEQUERY-REPLY from {peer}: CLIENTID {duid} is not ours",
                peer=self.peer,
                duid=str(client_id.duid),
            )
            return
        pending.replied = True
        pending.server_duid = server_id.duid
        self._streams[_data_head(pending.xid)] = pending
        status = message.option(StatusCodeOption)
        if status is not None and status.status != StatusCode.Success:
            self._finish_pending(
                pending,
                QueryStatus.SERVER_ERROR,
                status,
                f"the server answered {rfc_name(status.status, StatusCode)}",
            )
            return
        client_data = message.options_of(ClientData)
        if not client_data:
            self._finish_pending(pending, QueryStatus.SUCCESS, status)
            return
        for option in client_data:
            if not self._client_data(pending, option):
                return

    def _data(self, message: Message, pending: _Pending) -> None:
        if not pending.replied:
            pending.discarded += 1
            self._log.warn("Discarding LEASEQUERY-DATA before REPLY from {peer}", peer=self.peer)
            return
        client_data = message.options_of(ClientData)
        if not client_data:
            pending.discarded += 1
            self._log.info(
                "Discarding LEASEQUERY-DATA without CLIENT_DATA from {peer}", peer=self.peer
            )
            return
        for option in client_data:
            if not self._client_data(pending, option):
                return

    def _client_data(self, pending: _Pending, option: ClientData) -> bool:
        binding = binding_from_client_data(option, self._received_at, pending.link)
        if binding is None:
            pending.discarded += 1
            self._log.info(
                "Discarding CLIENT_DATA without CLIENTID or CLT_TIME from {peer}", peer=self.peer
            )
            return True
        return self._accept(pending, binding)

    def _accept(self, pending: _Pending, binding: Binding) -> bool:
        """Hand one binding on; C{False} when the query had to end."""
        pending.received += 1
        try:
            if pending.merger is not None:
                pending.merger.add(binding)
            if pending.on_binding is not None:
                pending.on_binding(binding)
        except TooManyBindingsError as error:
            self._abort_query(pending, str(error))
            return False
        except Exception as error:
            self._consumer_failed(pending, error)
            return False
        return True

    def _abort_query(self, pending: _Pending, reason: str) -> None:
        """End one query for a reason of ours (limit, consumer): not worth retrying."""
        self._finish_pending(pending, QueryStatus.INCOMPLETE, None, reason, local=True)
        self._closing(QueryStatus.INCOMPLETE, f"another query failed: {reason}")
        self._abort()

    def _done(self, message: Message, pending: _Pending | None) -> None:
        if pending is None or not pending.replied:
            if pending is not None:
                # DONE before any REPLY: not the end of a stream this query started.
                self._finish_pending(
                    pending, QueryStatus.INCOMPLETE, None, "LEASEQUERY-DONE before REPLY"
                )
                return
            # R6: a DONE for no outstanding query means the streams are confused.
            self._log.warn(
                "LEASEQUERY-DONE for unknown transaction-id {xid} from {peer}: closing",
                xid=message.transaction_id,
                peer=self.peer,
            )
            self._closing(
                QueryStatus.INCOMPLETE,
                f"LEASEQUERY-DONE for unknown transaction-id {message.transaction_id:#08x}",
            )
            self._close()
            return
        status = message.option(StatusCodeOption)
        if status is None or status.status == StatusCode.Success:
            self._finish_pending(pending, QueryStatus.SUCCESS, status)
        else:
            self._finish_pending(
                pending,
                QueryStatus.TERMINATED,
                status,
                f"the server ended the stream with {rfc_name(status.status, StatusCode)}",
            )

    # -- ending queries -----------------------------------------------------------------

    def _finish_pending(
        self,
        pending: _Pending,
        status: QueryStatus,
        code: StatusCodeOption | None,
        error: str | None = None,
        local: bool = False,
    ) -> None:
        if self._pending.pop(pending.xid, None) is None:
            return
        self._streams.pop(_data_head(pending.xid), None)
        if not self._pending:
            self._stop_timer()
        self._finish(pending, status, code, error, local)

    def _finish(
        self,
        pending: _Pending,
        status: QueryStatus,
        code: StatusCodeOption | None = None,
        error: str | None = None,
        local: bool = False,
    ) -> None:
        result = ServerResult(
            self.peer,
            status,
            None if code is None else int(code.status),
            "" if code is None else code.message,
            pending.server_duid,
            () if pending.merger is None else pending.merger.bindings(),
            pending.received,
            pending.discarded,
            error=error,
            local=local,
        )
        pending.merger = None
        pending.consume = None
        if not pending.deferred.called:
            pending.deferred.callback(result)
