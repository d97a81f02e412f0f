"""
The Bulk Leasequery server factory: access control, connection limits, eviction,
counters and graceful shutdown.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from ..config import ServerConfig, normalise_peer
from ..interfaces import IBindingChangeFeed, IBindingStore
from ..stats import QueryRecord, ServerStats
from ..wire import ServerId
from ._active import ActiveConfig
from ._protocol import BulkLeasequeryProtocol

__all__ = ["BulkLeasequeryFactory"]


class BulkLeasequeryFactory(Factory):
    """
    Serves Bulk Leasequery (RFC 5460) from an L{IBindingStore}; listen with any stream
    endpoint (C{tcp6:547}).

    The factory is the controller: it decides in L{buildProtocol} who may connect, keeps
    the live connections, and counts everything in L{stats}.

      - A peer matching no rule of C{config.allow} is closed at once (S17); the rule that
        matches gives the query types it may use (NotAllowed otherwise, S14). IPv4-mapped
        peers (C{::ffff:192.0.2.1}) are matched as IPv4.
      - At most C{config.max_connections} connections (S16) and
        C{config.max_connections_per_requestor} from one address. A connection over a
        limit is closed at once, unless an I{idle} connection counted by that limit can
        be evicted (S24): the one idle the longest, provided it has been idle for at
        least L{eviction_min_idle} seconds (so that a requestor that just connected gets
        time to send its query). Idle means no query in progress; idle time counts from the
        connection's start or the end of its last query (octets that do not complete a
        query are no progress), so a connection stuck in, or trickling, a partial frame
        is evictable too.
      - L{shutdown} stops taking connections and queries, lets the queries in progress
        finish within a grace period, then terminates what is left.

    @ivar store: where the bindings come from.
    @ivar config: limits, ACL, timeouts, identity.
    @ivar reactor: the clock and reactor every timer uses.
    @ivar stats: the counters (connections, refusals by reason, evictions, queries by type
        and status, bindings and octets sent, timeouts by kind, store errors).
    @ivar connections: the live connections, oldest first.
    @ivar serverIdOption: the encoded SERVERID option, reused in every REPLY.
    """

    log = Logger()

    #: Seconds a connection must have been idle before it may be evicted (S24).
    eviction_min_idle = 10.0
    #: Seconds after the grace period that a shutdown waits for connections to drain
    #: their buffers before aborting them.
    shutdown_drain = 5.0

    def __init__(
        self,
        store: IBindingStore,
        config: ServerConfig,
        reactor: IReactorTime | None = None,
        active: ActiveConfig | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor  # noqa: PLC0415

            reactor = global_reactor
        assert reactor is not None
        self.store = store
        self.config = config
        self.reactor: IReactorTime = reactor
        self.stats = ServerStats()
        #: Active Leasequery and STARTTLS settings (RFC 7653); disabled by default.
        self.active = ActiveConfig() if active is None else active
        if self.active.enabled and IBindingChangeFeed.providedBy(store):
            store.keep_history()
        self.connections: dict[BulkLeasequeryProtocol, None] = {}
        self.serverIdOption = ServerId(config.server_duid).encode()
        self._accepting = True
        self._shutdownWaiters: list[Deferred[None]] = []
        self._shutdownCalls: list[IDelayedCall] = []

    # -- accepting -----------------------------------------------------------------------

    def buildProtocol(self, addr: IAddress) -> BulkLeasequeryProtocol | None:  # type: ignore[override]
        """
        Accept or refuse a connection from C{addr}; C{None} closes it at once (S17).
        """
        host = getattr(addr, "host", None)
        try:
            peer = normalise_peer(host) if isinstance(host, str) else None
        except ValueError:
            peer = None
        if peer is None:
            self._refuse("acl", str(addr))
            return None
        peer_text = str(peer)
        rule = self.config.rule_for(peer)
        if rule is None:
            self._refuse("acl", peer_text)
            return None
        if not self._accepting:
            self._refuse("shutdown", peer_text)
            return None
        same_peer = [c for c in self.connections if c.peer == peer_text]
        if len(same_peer) >= self.config.max_connections_per_requestor and not self._evict(
            same_peer
        ):
            self._refuse("per-requestor-limit", peer_text)
            return None
        if len(self.connections) >= self.config.max_connections and not self._evict(
            list(self.connections)
        ):
            self._refuse("limit", peer_text)
            return None
        protocol = BulkLeasequeryProtocol(self, peer_text, rule.query_types)
        self.connections[protocol] = None
        self.stats.connections_open = len(self.connections)
        self.stats.connections_accepted += 1
        return protocol

    def _refuse(self, reason: str, peer: str) -> None:
        self.stats.refusals[reason] += 1
        self.log.info("refusing connection from {peer}: {reason}", peer=peer, reason=reason)

    def _evict(self, candidates: list[BulkLeasequeryProtocol]) -> bool:
        """Evict the connection idle the longest, if one has been idle long enough."""
        now = self.reactor.seconds()
        idle = [c for c in candidates if c.idle and now - c.idleSince >= self.eviction_min_idle]
        if not idle:
            return False
        victim = min(idle, key=lambda c: c.idleSince)
        self.connections.pop(victim, None)
        self.stats.connections_open = len(self.connections)
        self.stats.evictions += 1
        victim.evict()
        return True

    def stopAccepting(self) -> None:
        """Refuse new connections from now on (refusal reason C{"shutdown"})."""
        self._accepting = False

    # -- controller callbacks from the protocol ------------------------------------------

    def connectionMade(self, protocol: BulkLeasequeryProtocol) -> None:
        """A connection built by L{buildProtocol} is up."""
        if protocol not in self.connections:
            # Built outside buildProtocol (tests, wrappers): count it anyway.
            self.connections[protocol] = None
            self.stats.connections_open = len(self.connections)

    def connectionLost(self, protocol: BulkLeasequeryProtocol) -> None:
        """A connection is gone; fire the shutdown Deferreds after the last one."""
        self.connections.pop(protocol, None)
        self.stats.connections_open = len(self.connections)
        if not self.connections and self._shutdownWaiters:
            self._shutdownComplete()

    def queryFinished(self, record: QueryRecord) -> None:
        """A query ended (any status): count it and tell the listeners."""
        self.stats.query_finished(record)

    # -- shutdown ------------------------------------------------------------------------

    def shutdown(self, grace: float | None = None) -> Deferred[None]:
        """
        Stop gracefully: refuse new connections, stop reading queries (a LEASEQUERY
        already read gets a REPLY with QueryTerminated), close idle connections, let queries in
        progress run for C{grace} seconds (default C{config.shutdown_grace}), then end
        what is left with DONE(QueryTerminated) (or a REPLY with it when nothing was sent
        yet) and close. Connections that still cannot drain their buffers are aborted
        L{shutdown_drain} seconds later.

        @return: a Deferred that fires when every connection is gone.
        """
        self.stopAccepting()
        if grace is None:
            grace = self.config.shutdown_grace
        if not self.connections:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._shutdownWaiters.append(waiter)
        if not self._shutdownCalls:
            self._shutdownCalls = [
                self.reactor.callLater(grace, self._graceExpired),
                self.reactor.callLater(grace + self.shutdown_drain, self._abortAll),
            ]
        for protocol in list(self.connections):
            protocol.beginShutdown()
        return waiter

    def _graceExpired(self) -> None:
        for protocol in list(self.connections):
            protocol.terminate("server shutting down")

    def _abortAll(self) -> None:
        for protocol in list(self.connections):
            protocol.abortNow()

    def _shutdownComplete(self) -> None:
        for call in self._shutdownCalls:
            if call.active():
                call.cancel()
        self._shutdownCalls = []
        waiters, self._shutdownWaiters = self._shutdownWaiters, []
        for waiter in waiters:
            waiter.callback(None)
