"""
The Active Leasequery requestor (RFC 7653 section 8): keep a replica of a server's bindings.

L{ActiveQuery} is what to ask (every binding, or those an L{LeaseQuery} selects);
L{ActiveLeasequeryClientProtocol} is one connection (ACTIVELEASEQUERY, then REPLY and a
LEASEQUERY-DATA per change, keep-alives, catch-up, DataMissing, DONE);
L{ActiveWatcher} reconnects with back-off, catches up from the highest saved base time,
falls back to a Bulk Leasequery for the missing window, and keeps the replica, a dict
keyed by (client DUID, link), telling callers of each L{BindingChange}.

    watcher = ActiveWatcher(requestor, "[2001:db8::547]", ActiveQuery(), on_change=print)
    done = watcher.start()      # fires when stop() is called, errbacks on a refusal
    watcher.replica             # {(Duid, link): Binding}
    watcher.base_time           # save it; pass it as start_time next time
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs
from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.protocols.basic import Int16StringReceiver
from twisted.python.failure import Failure

from ..model import Binding
from ..wire import (
    MAX_MESSAGE_SIZE,
    ClientData,
    ClientId,
    Duid,
    LQBaseTime,
    LQEndTime,
    LQQuery,
    LQStartTime,
    Message,
    MessageType,
    Option,
    OptionCode,
    OptionRequest,
    ServerId,
    StatusCode,
    StatusCodeOption,
    WireError,
    decode_message,
    rfc_name,
)
from ._connection import BuildingFactory, abort_connection, peer_text
from ._decode import binding_from_client_data
from ._query import UNSPECIFIED, LeaseQuery
from ._requestor import Requestor, ServerAddress
from ._starttls import StartTLSError, TLSConnectionRefused

__all__ = [
    "ACTIVE_LQ_IDLE_TIMEOUT",
    "ACTIVE_LQ_RCV_TIMEOUT",
    "ActiveEnd",
    "ActiveLeasequeryClientProtocol",
    "ActiveQuery",
    "ActiveQueryRefused",
    "ActiveWatcher",
    "BindingChange",
    "ReplicaKey",
    "WindowQuery",
    "is_removal",
    "replica_from_bindings",
    "replica_key",
]

#: RFC 7653 section 6.4: how long a requestor waits for any message before giving up.
ACTIVE_LQ_RCV_TIMEOUT = 120.0
#: RFC 7653 section 6.4: the server's keep-alive interval; retries are no more frequent.
ACTIVE_LQ_IDLE_TIMEOUT = 60.0

#: The replica's key: the client's DUID and its link.
ReplicaKey = tuple[Duid, str]

_REPLY = MessageType.LEASEQUERY_REPLY
_DATA = MessageType.LEASEQUERY_DATA
_DONE = MessageType.LEASEQUERY_DONE


def replica_key(binding: Binding) -> ReplicaKey:
    """The replica key of C{binding}: (client DUID, link)."""
    return (binding.client_id, binding.link_id)


def is_removal(binding: Binding, received_at: int) -> bool:
    """
    Whether a received binding says the client's binding is gone: every lease has a zero
    valid lifetime left (RFC 7653: a binding change includes expiry and deletion, sent as
    CLIENT_DATA with zero lifetimes, RFC 5007), or it has no lease at all.
    """
    return binding.expires_at() <= received_at


@attrs.frozen
class ActiveQuery:
    """
    What an ACTIVELEASEQUERY asks for (RFC 7653 section 6.2.1).

    @ivar filter: C{None} for every binding update (then no LQ_QUERY is sent, a MUST), or
        the L{LeaseQuery} whose LQ_QUERY selects the updates wanted.
    @ivar relay_data: without a filter, ask for LQ_RELAY_DATA in the top-level ORO (so the
        client's link is known); with one, the filter's own C{relay_data} counts.
    """

    filter: LeaseQuery | None = None
    relay_data: bool = True

    def to_message(
        self, transaction_id: int, requestor_duid: Duid, start_time: int | None
    ) -> Message:
        """
        The ACTIVELEASEQUERY: CLIENTID, an ORO asking for OPTION_LQ_BASE_TIME (so every
        reply carries it), the LQ_QUERY if filtered, and OPTION_LQ_START_TIME for catch-up;
        never OPTION_LQ_END_TIME (a MUST NOT, section 6.3.3).
        """
        wanted = [OptionCode.OPTION_LQ_BASE_TIME]
        if self.filter is None and self.relay_data:
            wanted.append(OptionCode.OPTION_LQ_RELAY_DATA)
        options: list[Option] = [ClientId(requestor_duid), OptionRequest(tuple(wanted))]
        if self.filter is not None:
            lq_query = self.filter.to_message(transaction_id, requestor_duid).option(LQQuery)
            assert lq_query is not None
            options.append(lq_query)
        if start_time is not None:
            options.append(LQStartTime(start_time))
        return Message(MessageType.ACTIVELEASEQUERY, transaction_id, tuple(options))

    def describe(self) -> str:
        """A short text for logs: C{every binding} or the filter's description."""
        return "every binding" if self.filter is None else self.filter.describe()


@attrs.frozen
class WindowQuery(LeaseQuery):
    """
    A Bulk Leasequery restricted to bindings changed in a window (RFC 7653 sections 6.3.2,
    6.3.3 and 8.4.1): the fallback after DataMissing. Either bound may be left out. The
    ORO asks for OPTION_LQ_BASE_TIME as well.
    """

    start_time: int | None = None
    end_time: int | None = None

    @classmethod
    def of(cls, query: LeaseQuery, start_time: int | None, end_time: int | None) -> WindowQuery:
        """C{query} restricted to the window [C{start_time}, C{end_time}]."""
        return cls(
            query.query_type,
            query.link_address,
            query.query_option,
            query.relay_data,
            start_time,
            end_time,
        )

    def to_message(self, transaction_id: int, requestor_duid: Duid) -> Message:
        """The LEASEQUERY with the window's time options and an ORO for the base time."""
        message = super().to_message(transaction_id, requestor_duid)
        extra: list[Option] = [OptionRequest((OptionCode.OPTION_LQ_BASE_TIME,))]
        if self.start_time is not None:
            extra.append(LQStartTime(self.start_time))
        if self.end_time is not None:
            extra.append(LQEndTime(self.end_time))
        return attrs.evolve(message, options=(*message.options, *extra))


@attrs.frozen
class BindingChange:
    """
    One change the replica took: C{binding} is the new state (or the last one sent, with
    zero lifetimes, when C{removed}); C{previous} what the replica held before.

    @ivar catch_up: received during a catch-up phase or a bulk fallback.
    @ivar base_time: the server's OPTION_LQ_BASE_TIME on the message, if any.
    """

    binding: Binding
    removed: bool
    previous: Binding | None
    catch_up: bool = False
    base_time: int | None = None

    @property
    def key(self) -> ReplicaKey:
        """The replica key."""
        return replica_key(self.binding)


class ActiveEnd(enum.Enum):
    """How an active connection ended."""

    #: The connection closed (or failed); worth retrying (RFC 7653 section 8.1).
    LOST = "lost"
    #: Nothing arrived for ACTIVE_LQ_RCV_TIMEOUT (section 8.4); retry.
    TIMEOUT = "timeout"
    #: LEASEQUERY-DONE with QueryTerminated (section 8.4); retry.
    TERMINATED = "terminated"
    #: The REPLY carried an error status, or DONE another error: not retried.
    REFUSED = "refused"
    #: STARTTLS was refused, or the TLS handshake failed (section 8.2): not retried.
    TLS = "tls"
    #: The requestor closed it (stop, or a failed fallback).
    CLOSED = "closed"


class ActiveQueryRefused(Exception):  # noqa: N818 - it is what the server did
    """
    The server refused the active query (an error status), or TLS was refused or failed
    (then C{tls} is true).
    """

    def __init__(self, message: str, tls: bool = False) -> None:
        super().__init__(message)
        self.tls = tls


class ActiveLeasequeryClientProtocol(Int16StringReceiver):
    """
    One Active Leasequery connection. Sends the ACTIVELEASEQUERY on connection (after
    STARTTLS when the endpoint is a L{StartTLSEndpoint}) and reports what arrives to its
    C{watcher}; C{ended} fires with an (L{ActiveEnd}, text) pair when the connection is
    gone.
    """

    MAX_LENGTH = MAX_MESSAGE_SIZE
    _log = Logger()

    def __init__(
        self,
        watcher: ActiveWatcher,
        start_time: int | None,
        clock: IReactorTime,
        receive_timeout: float = ACTIVE_LQ_RCV_TIMEOUT,
        rng: random.Random | None = None,
    ) -> None:
        self._watcher = watcher
        self.start_time = start_time
        self._clock = clock
        self._receive_timeout = receive_timeout
        self._random = rng or random.Random()
        self.xid = self._random.getrandbits(24)
        self.replied = False
        self.server_duid: Duid | None = None
        self.ended: Deferred[tuple[ActiveEnd, str]] = Deferred()
        self._end: tuple[ActiveEnd, str] | None = None
        self._timer: IDelayedCall | None = None
        self._last = 0.0
        self._received_at = 0
        self.peer = "server"

    # -- connection -------------------------------------------------------------------

    def connectionMade(self) -> None:
        """RFC 7653 8.2: in insecure mode (or once TLS is up) send the ACTIVELEASEQUERY."""
        assert self.transport is not None
        self.peer = peer_text(self.transport) or self.peer
        message = self._watcher.query.to_message(
            self.xid, self._watcher.requestor_duid, self.start_time
        )
        self.sendString(message.encode())
        self._last = self._clock.seconds()
        self._timer = self._clock.callLater(self._receive_timeout, self._check_timeout)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        """Fire C{ended}: the reason recorded, else the connection was lost."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        end = self._end
        if end is None and not self.replied and _is_tls_error(reason):
            # With TLS 1.3 the server checks our certificate after our side of the
            # handshake is done: its refusal arrives as an alert before any REPLY.
            end = (ActiveEnd.TLS, f"the TLS session failed: {reason.getErrorMessage()}")
        if end is None:
            end = (ActiveEnd.LOST, f"connection lost: {reason.getErrorMessage()}")
        if not self.ended.called:
            self.ended.callback(end)

    def close(self, why: ActiveEnd, text: str) -> None:
        """End the connection now, for C{why}."""
        if self._end is None:
            self._end = (why, text)
        abort_connection(self.transport)

    # -- receive timeout (RFC 7653 8.4) -----------------------------------------------

    def _check_timeout(self) -> None:
        self._timer = None
        idle = self._clock.seconds() - self._last
        if idle < self._receive_timeout:
            self._timer = self._clock.callLater(self._receive_timeout - idle, self._check_timeout)
            return
        self.close(ActiveEnd.TIMEOUT, f"nothing received for {self._receive_timeout:g} s")

    # -- receiving --------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        """Any octet resets the receive timer (a keep-alive DATA does so too)."""
        now = self._clock.seconds()
        self._last = now
        self._received_at = int(now)
        super().dataReceived(data)

    def lengthLimitExceeded(self, length: int) -> None:
        """Cannot happen with a 2-octet size; close rather than buffer should it."""
        self.close(ActiveEnd.LOST, f"frame of {length} octets")

    def stringReceived(self, frame: bytes) -> None:
        """Dispatch one message of our transaction (RFC 7653 8.1: same transaction-id)."""
        if self._end is not None:
            return
        try:
            message = decode_message(frame)
        except WireError as error:
            self._log.warn(
                "Discarding an undecodable message from {peer}: {error}",
                peer=self.peer,
                error=str(error),
            )
            return
        if not isinstance(message, Message) or message.transaction_id != self.xid:
            self._log.info(
                "Discarding a message for another transaction from {peer}", peer=self.peer
            )
            return
        kind = message.msg_type
        if kind == _REPLY:
            self._reply(message)
        elif not self.replied:
            self._log.warn(
                "Discarding {kind} before LEASEQUERY-REPLY from {peer}",
                kind=rfc_name(kind, MessageType),
                peer=self.peer,
            )
        elif kind == _DATA:
            self._data(message)
        elif kind == _DONE:
            self._done(message)
        else:
            self._log.info(
                "Discarding unexpected {kind} from {peer}",
                kind=rfc_name(kind, MessageType),
                peer=self.peer,
            )

    def _reply(self, message: Message) -> None:
        server_id = message.option(ServerId)
        client_id = message.option(ClientId)
        if self.replied:
            self._log.warn("Discarding a second LEASEQUERY-REPLY from {peer}", peer=self.peer)
            return
        if server_id is None or client_id is None or client_id.duid != self._watcher.requestor_duid:
            # R11: a REPLY without SERVERID, or not for us, is discarded.
            self._log.warn(
                "Discarding a LEASEQUERY-REPLY from {peer}: no SERVERID, or CLIENTID not ours",
                peer=self.peer,
            )
            return
        self.replied = True
        self.server_duid = server_id.duid
        base_time = _base_time(message)
        status = message.option(StatusCodeOption)
        code = StatusCode.Success if status is None else status.status
        if code == StatusCode.DataMissing:
            # 8.4.1: the catch-up phase is over before it started; live updates follow.
            self._watcher.replied(self, base_time)
            self._watcher.data_missing(self, base_time)
        elif code != StatusCode.Success:
            detail = f": {status.message}" if status is not None and status.message else ""
            self.close(
                ActiveEnd.REFUSED,
                f"the server refused the active query ({rfc_name(code, StatusCode)}{detail})",
            )
            return
        else:
            self._watcher.replied(self, base_time)
        self._client_data(message, base_time)

    def _data(self, message: Message) -> None:
        base_time = _base_time(message)
        status = message.option(StatusCodeOption)
        had_data = self._client_data(message, base_time)
        code = None if status is None else status.status
        if code == StatusCode.CatchUpComplete:
            self._watcher.catch_up_complete(self, base_time)
        elif code == StatusCode.DataMissing:
            self._watcher.data_missing(self, base_time)
        elif not had_data:
            # 8.4: a DATA without CLIENT_DATA is the server's keep-alive.
            self._watcher.keepalive(self, base_time)

    def _done(self, message: Message) -> None:
        status = message.option(StatusCodeOption)
        base_time = _base_time(message)
        code = StatusCode.Success if status is None else status.status
        self._watcher.done(self, base_time)
        if code == StatusCode.QueryTerminated:
            self.close(ActiveEnd.TERMINATED, "the server ended the active query (QueryTerminated)")
        else:
            self.close(
                ActiveEnd.REFUSED if code != StatusCode.Success else ActiveEnd.LOST,
                f"the server ended the active query ({rfc_name(code, StatusCode)})",
            )

    def _client_data(self, message: Message, base_time: int | None) -> bool:
        found = False
        query = self._watcher.query.filter
        link = None
        if query is not None and query.link_address != UNSPECIFIED:
            link = str(query.link_address)
        for option in message.options_of(ClientData):
            found = True
            binding = binding_from_client_data(option, self._received_at, link)
            if binding is None:
                # R12: CLIENT_DATA without CLIENTID or CLT_TIME is discarded.
                self._log.info("Discarding CLIENT_DATA without CLIENTID or CLT_TIME")
                continue
            self._watcher.changed(self, binding, is_removal(binding, self._received_at), base_time)
        return found


def _is_tls_error(reason: Failure) -> bool:
    """Whether a connection ended with a TLS error (an alert from the server)."""
    try:
        from OpenSSL.SSL import Error as OpenSSLError  # noqa: PLC0415 - the tls extra
    except ImportError:  # pragma: no cover - no TLS without pyOpenSSL anyway
        return False
    return reason.check(OpenSSLError) is not None


def _base_time(message: Message) -> int | None:
    option = message.option(LQBaseTime)
    return None if option is None else option.seconds


#: Called with each change the replica takes.
ChangeCallback = Callable[[BindingChange], object]


class ActiveWatcher:
    """
    Keeps C{replica} in step with a server through Active Leasequery (RFC 7653 section 8).

    - Connects (through C{endpoint_factory}: a L{StartTLSEndpoint} for secure mode), sends
      the ACTIVELEASEQUERY with OPTION_LQ_START_TIME set to the highest base time saved
      (8.3), and applies every change: a binding with zero lifetimes left is removed.
    - Saves the base time of each message only after catch-up is complete (8.3, 8.4.1):
      C{base_time} is what to pass as C{start_time} next time.
    - On DataMissing, runs a Bulk Leasequery for the window [start time, DataMissing's base
      time] with C{requestor} (8.4.1) for each of C{resync_queries} (the filter by default),
      holding live changes until it is done. A window query cannot report deletions (see
      docs/active-leasequery.md); C{fallback="full"} takes a full snapshot instead, which
      also drops what the server no longer has. Without a saved base time and with
      C{snapshot}, the first connection takes a full bulk snapshot the same way.
    - A watch of every binding (no filter, no C{resync_queries}) has no bulk query for
      either: RFC 5460 has no query for every binding. It starts from the live stream
      and, after DataMissing, goes on with it; C{on_note} is called once with a one-line
      text for each of these (and the same is logged).
    - Reconnects after a lost connection, a receive timeout or QueryTerminated, waiting
      C{requestor.backoff(n)} but never less than C{retry_interval} (8.1: no more than one
      retry per ACTIVE_LQ_IDLE_TIMEOUT). An error status or a TLS refusal ends the watch:
      the L{start} Deferred errbacks with L{ActiveQueryRefused}.
    """

    _log = Logger()

    def __init__(
        self,
        requestor: Requestor,
        server: ServerAddress | str,
        query: ActiveQuery | None = None,
        *,
        on_change: ChangeCallback | None = None,
        start_time: int | None = None,
        replica: Mapping[ReplicaKey, Binding] | None = None,
        endpoint_factory: Callable[[ServerAddress], IStreamClientEndpoint] | None = None,
        receive_timeout: float = ACTIVE_LQ_RCV_TIMEOUT,
        retry_interval: float = ACTIVE_LQ_IDLE_TIMEOUT,
        resync_queries: Sequence[LeaseQuery] | None = None,
        snapshot: bool = True,
        fallback: str = "window",
        rng: random.Random | None = None,
        on_note: Callable[[str], object] | None = None,
    ) -> None:
        self.requestor = requestor
        self.requestor_duid = requestor.requestor_duid
        self.server = server if isinstance(server, ServerAddress) else ServerAddress.parse(server)
        self.query = query or ActiveQuery()
        self.base_time = start_time
        self.replica: dict[ReplicaKey, Binding] = dict(replica or {})
        self._on_change: list[ChangeCallback] = [] if on_change is None else [on_change]
        self._endpoint_factory = endpoint_factory
        self._clock: IReactorTime = requestor._reactor
        self._receive_timeout = receive_timeout
        self._retry_interval = retry_interval
        if resync_queries is None:
            resync_queries = () if self.query.filter is None else (self.query.filter,)
        self._resync_queries = tuple(resync_queries)
        self._snapshot = snapshot
        if fallback not in {"window", "full"}:
            raise ValueError(f"fallback must be 'window' or 'full', not {fallback!r}")
        self._fallback = fallback
        self._random = rng or random.Random()
        self._on_note = on_note
        self._noted: set[str] = set()
        self._protocol: ActiveLeasequeryClientProtocol | None = None
        self._stopping = False
        self._waiting: Deferred[Any] | None = None
        self._running: Deferred[None] | None = None
        self._resync: Deferred[Any] | None = None
        # Per connection: catching up (base times not saved), the highest base time seen
        # since, and live changes held back while a bulk fallback runs.
        self._catching_up = False
        self._candidate: int | None = None
        self._held: list[tuple[Binding, bool, int | None]] | None = None
        #: Connections made, changes applied, DataMissing fallbacks run (for tests, bench).
        self.connections = 0
        self.changes = 0
        self.fallbacks = 0
        self.last_error: str | None = None
        #: Whether the replica is in step: catch-up and any fallback done on a connection.
        self.synchronised = False

    # -- the API ----------------------------------------------------------------------

    def subscribe(self, callback: ChangeCallback) -> None:
        """Call C{callback} with every L{BindingChange} from now on."""
        self._on_change.append(callback)

    def start(self) -> Deferred[None]:
        """
        Start watching; the Deferred fires (with C{None}) after L{stop}, and errbacks with
        L{ActiveQueryRefused} when the server refuses the query or TLS.
        """
        if self._running is None:
            self._running = Deferred.fromCoroutine(self._run())
        return self._running

    def stop(self) -> Deferred[None]:
        """Close the connection, stop retrying; fires when the watch has ended."""
        self._stopping = True
        if self._resync is not None:
            self._resync.cancel()
        if self._waiting is not None:
            self._waiting.cancel()
        if self._protocol is not None:
            self._protocol.close(ActiveEnd.CLOSED, "stopped")
        running = self._running
        if running is None:
            done: Deferred[None] = Deferred()
            done.callback(None)
            return done
        finished: Deferred[None] = Deferred()
        running.addBoth(lambda result: finished.callback(None))
        return finished

    # -- the loop ---------------------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        while not self._stopping:
            end, text, replied = await self._connect_once()
            if self._stopping:
                return
            self.last_error = text
            if end is ActiveEnd.REFUSED or end is ActiveEnd.TLS:
                raise ActiveQueryRefused(text, tls=end is ActiveEnd.TLS)
            attempt = 1 if replied else attempt + 1
            delay = max(self.requestor.backoff(attempt), self._retry_interval)
            if end is ActiveEnd.TERMINATED:
                delay = max(delay, self.requestor.options.terminated_backoff)
            self._log.info(
                "Active query to {server}: {text}; reconnecting in {delay:.1f} s",
                server=str(self.server),
                text=text,
                delay=delay,
            )
            self._waiting = deferLater(self._clock, delay)
            try:
                await self._waiting
            except CancelledError:
                return
            finally:
                self._waiting = None

    def _endpoint(self) -> IStreamClientEndpoint:
        if self._endpoint_factory is not None:
            return self._endpoint_factory(self.server)
        return self.server.endpoint(self._clock, self.requestor.options.connect_timeout)

    async def _connect_once(self) -> tuple[ActiveEnd, str, bool]:
        start_time = self.base_time

        def build() -> ActiveLeasequeryClientProtocol:
            # Per connection: catching up (base times not saved) when a start time is sent,
            # the highest base time seen since, and live changes held during a fallback.
            self._catching_up = start_time is not None
            self._candidate = None
            self._held = None
            self.synchronised = False
            return ActiveLeasequeryClientProtocol(
                self, start_time, self._clock, self._receive_timeout, self._random
            )

        factory = BuildingFactory(build)
        timeout = self.requestor.options.connect_timeout
        try:
            connecting: Deferred[Any] = self._endpoint().connect(factory)
            connecting.addTimeout(timeout, self._clock)
            self._waiting = connecting
            protocol: ActiveLeasequeryClientProtocol = await connecting
        except TLSConnectionRefused as error:
            # RFC 7653 8.2: the server does not support TLS; the connection is closed.
            return ActiveEnd.TLS, str(error), False
        except StartTLSError as error:
            return ActiveEnd.TLS, str(error), False
        except CancelledError:
            return ActiveEnd.CLOSED, "stopped", False
        except TimeoutError:
            return ActiveEnd.LOST, f"no connection within {timeout:g} s", False
        except Exception as error:
            return ActiveEnd.LOST, f"connection failed: {_one_line(error)}", False
        finally:
            self._waiting = None
        self.connections += 1
        self._protocol = protocol
        if self._stopping:
            protocol.close(ActiveEnd.CLOSED, "stopped")
        end, text = await protocol.ended
        self._protocol = None
        self.synchronised = False
        return end, text, protocol.replied

    # -- what the protocol reports ----------------------------------------------------

    def replied(self, protocol: ActiveLeasequeryClientProtocol, base_time: int | None) -> None:
        """The REPLY arrived (success, or DataMissing which L{data_missing} handles)."""
        self._log.info(
            "Active query to {server} ({what}) accepted{since}",
            server=str(self.server),
            what=self.query.describe(),
            since=""
            if protocol.start_time is None
            else f", catching up from {protocol.start_time}",
        )
        if protocol.start_time is None and self._snapshot and self._resync_queries:
            # 8.4 / section 4: a requestor with no saved base time starts from a bulk query;
            # the active stream is already running, so nothing is missed in between.
            self._start_resync(protocol, None, None, full=True)
        else:
            if protocol.start_time is None and self._snapshot:
                # Every binding is watched: RFC 5460 has no bulk query for that (a link
                # query for :: is MalformedQuery), so the replica fills from changes only.
                self._note(
                    "snapshot",
                    "no initial snapshot: a watch of every binding has no bulk query to "
                    "start from (RFC 5460 has none); the replica fills from live changes",
                )
            self._note_base_time(base_time)
            if not self._catching_up:
                self.synchronised = True

    def changed(
        self,
        protocol: ActiveLeasequeryClientProtocol,
        binding: Binding,
        removed: bool,
        base_time: int | None,
    ) -> None:
        """A CLIENT_DATA: apply it now, or hold it while a fallback bulk query runs."""
        if self._held is not None:
            self._held.append((binding, removed, base_time))
        else:
            self._apply(binding, removed, base_time, catch_up=self._catching_up)
        self._note_base_time(base_time)

    def keepalive(self, protocol: ActiveLeasequeryClientProtocol, base_time: int | None) -> None:
        """A DATA without CLIENT_DATA: the connection is alive (timer reset on receipt)."""
        self._note_base_time(base_time)

    def catch_up_complete(
        self, protocol: ActiveLeasequeryClientProtocol, base_time: int | None
    ) -> None:
        """8.4.1: CatchUpComplete; base times may be saved from here on."""
        self._catching_up = False
        self._note_base_time(base_time)
        if self._held is None:
            self.synchronised = True

    def data_missing(self, protocol: ActiveLeasequeryClientProtocol, base_time: int | None) -> None:
        """8.4.1: the server lacks history back to our start time: bulk query the window."""
        start = protocol.start_time
        self._log.warn(
            "Server {server} is missing data since {start}: bulk query for the window",
            server=str(self.server),
            start=start,
        )
        if not self._resync_queries:
            # Nothing a bulk query can ask for (an unfiltered watch): carry on, but say so.
            self.last_error = "DataMissing: changes in the gap may be missing from the replica"
            self._note(
                "data-missing",
                f"DataMissing: the server's history does not reach back to {start}, and a "
                "watch of every binding has no bulk query to recover the gap with; changes "
                "made meanwhile may be missing from the replica",
            )
            self._catching_up = False
            self.synchronised = True
            self._note_base_time(base_time)
            return
        self._catching_up = True  # hold the base time until the fallback is applied
        self._start_resync(protocol, start, base_time, full=self._fallback == "full")

    def done(self, protocol: ActiveLeasequeryClientProtocol, base_time: int | None) -> None:
        """8.4: DONE (QueryTerminated carries the base time): save it if caught up."""
        self._note_base_time(base_time)

    def _note(self, kind: str, text: str) -> None:
        """Log C{text} and tell C{on_note}, once per kind of note for this watcher."""
        if kind in self._noted:
            return
        self._noted.add(kind)
        self._log.warn("Active query to {server}: {text}", server=str(self.server), text=text)
        if self._on_note is not None:
            self._on_note(text)

    # -- base time (RFC 7653 8.3, 8.4, 8.4.1) -----------------------------------------

    def _note_base_time(self, base_time: int | None) -> None:
        if base_time is None:
            return
        if self._candidate is None or base_time > self._candidate:
            self._candidate = base_time
        if not self._catching_up and self._held is None:
            self._commit_base_time()

    def _commit_base_time(self) -> None:
        candidate = self._candidate
        if candidate is not None and (self.base_time is None or candidate > self.base_time):
            self.base_time = candidate

    # -- the replica ------------------------------------------------------------------

    def _apply(
        self, binding: Binding, removed: bool, base_time: int | None, catch_up: bool
    ) -> None:
        key = replica_key(binding)
        if removed:
            previous = self.replica.pop(key, None)
        else:
            previous = self.replica.get(key)
            self.replica[key] = binding
        self.changes += 1
        if self._on_change:
            change = BindingChange(binding, removed, previous, catch_up, base_time)
            for callback in self._on_change:
                try:
                    callback(change)
                except Exception:
                    self._log.failure("A change callback failed")

    def _start_resync(
        self,
        protocol: ActiveLeasequeryClientProtocol,
        start: int | None,
        end: int | None,
        full: bool,
    ) -> None:
        self._held = []
        self.synchronised = False
        self.fallbacks += 0 if end is None else 1
        resync = Deferred.fromCoroutine(self._bulk(protocol, start, end, full))
        self._resync = resync

        def failed(failure: Failure) -> None:
            self._resync = None
            if failure.check(CancelledError):
                return
            self._log.failure("Bulk fallback failed", failure)
            protocol.close(ActiveEnd.LOST, "bulk fallback failed")

        resync.addCallback(lambda _: setattr(self, "_resync", None))
        resync.addErrback(failed)
        resync.addErrback(lambda _: None)

    async def _bulk(
        self,
        protocol: ActiveLeasequeryClientProtocol,
        start: int | None,
        end: int | None,
        full: bool,
    ) -> None:
        fetched: dict[ReplicaKey, Binding] = {}
        for query in self._resync_queries:
            asked: LeaseQuery = query if full else WindowQuery.of(query, start, end)
            result = await self.requestor.query(self.server, asked)
            if not result.complete:
                self._log.warn(
                    "Bulk fallback to {server}: {what}",
                    server=str(self.server),
                    what=result.describe(),
                )
                self.last_error = f"bulk fallback failed: {result.describe()}"
                protocol.close(ActiveEnd.LOST, self.last_error)
                self._held = None
                return
            for binding in result.bindings:
                fetched[replica_key(binding)] = binding
        now = int(self._clock.seconds())
        if full:
            for key in [key for key in self.replica if key not in fetched]:
                self._apply(self.replica[key], True, None, catch_up=True)
        for binding in fetched.values():
            self._apply(binding, is_removal(binding, now), None, catch_up=True)
        held, self._held = self._held or [], None
        for binding, removed, base_time in held:
            self._apply(binding, removed, base_time, catch_up=False)
        if protocol.ended.called:
            # The connection went meanwhile: what was applied is right, but the next
            # connection starts from the old base time (8.4.1) and catches up again.
            return
        # The snapshot or fallback stands in for the catch-up phase.
        self._catching_up = False
        self._commit_base_time()
        self.synchronised = True


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def replica_from_bindings(bindings: Iterable[Binding]) -> dict[ReplicaKey, Binding]:
    """A replica dict from bindings (the last one for a key wins)."""
    return {replica_key(binding): binding for binding in bindings}
