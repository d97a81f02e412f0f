"""
L{BulkLeasequeryService}: the Bulk Leasequery server as a Twisted service.

C{twistd bulklq} runs one; an application embeds one with C{setServiceParent}::

    service = BulkLeasequeryService(my_store, ServerConfig(server_duid=duid),
                                    listen=["tcp6:547:interface=\\\\:\\\\:"])
    service.setServiceParent(application)

With C{active=ActiveConfig(enabled=True, tls=...)} it also serves Active Leasequery
(RFC 7653) and STARTTLS; C{ssl:} endpoints without their own C{privateKey} then run TLS
with the same options (mutual authentication), and the expiry of bindings is published as a
change: by an L{ExpirySweep<bulklq.changes.ExpirySweep>} for a store that keeps its
bindings in memory (L{MemoryBindingStore<bulklq.stores.memory.MemoryBindingStore>}), by the
store's own publisher for one that finds them itself
(L{PublishesExpiry<bulklq.changes.PublishesExpiry>}: the SQLite store).

Starting it listens on every endpoint (and UDP and the metrics endpoint when asked);
stopping it is graceful: stop accepting, let the queries in progress finish within
C{config.shutdown_grace} seconds, end the rest with LEASEQUERY-DONE(QueryTerminated), close
the store, then fire the Deferred C{stopService} returned (RFC 5460 section 7.4).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, fail, gatherResults, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure

from .changes import (
    DEFAULT_EXPIRY_INTERVAL,
    ChangeHistory,
    ExpiryPublisher,
    ExpirySweep,
    PublishesExpiry,
    SweepableStore,
)
from .config import ConfigError, ServerConfig
from .interfaces import IBindingChangeFeed, IBindingStore
from .server import ActiveConfig, BulkLeasequeryFactory
from .settings import DEFAULT_LISTEN, tcp_endpoint_address, tls_listen_description
from .udp import UDPLeasequeryProtocol

__all__ = ["BulkLeasequeryService"]


class BulkLeasequeryService(MultiService):
    """
    Serves Bulk Leasequery from C{store} on C{listen} endpoints while running.

    @ivar factory: the L{BulkLeasequeryFactory}; its C{stats} feed logs and metrics.
    @ivar listening: fires with the listening ports once every endpoint listens, or fails
        with the first endpoint that could not (set by C{startService}).
    @ivar ports: the ports listening now (TCP, UDP, metrics).
    @ivar expiry: what publishes expiries while the service runs (Active Leasequery): an
        L{ExpirySweep} for a store that keeps its bindings in memory, the store's own
        publisher for a L{PublishesExpiry} store; or C{None}.
    """

    _log = Logger()

    def __init__(
        self,
        store: IBindingStore,
        config: ServerConfig,
        listen: Sequence[str] = (DEFAULT_LISTEN,),
        *,
        udp: bool = False,
        metrics: str | None = None,
        reactor: Any = None,
        close_store: bool = True,
        active: ActiveConfig | None = None,
        history_window: float | None = None,
        history_size: int | None = None,
        expiry_interval: float = DEFAULT_EXPIRY_INTERVAL,
    ) -> None:
        """
        @param store: where bindings come from.
        @param config: identity, ACL, limits and timeouts.
        @param listen: server endpoint strings (C{tcp6:547:interface=\\\\:\\\\:},
            C{systemd:domain=INET6:index=0} ...).
        @param udp: also answer UDP Leasequery (RFC 5007) on the address and port of every
            C{tcp}/C{tcp6} endpoint.
        @param metrics: a server endpoint string for Prometheus metrics (needs the
            C{metrics} extra), or C{None}.
        @param reactor: the reactor; the global one if C{None}.
        @param close_store: whether stopping the service closes the store.
        @param active: Active Leasequery and TLS settings (RFC 7653); off when C{None}.
            C{active.tls} also serves C{ssl:} endpoints that name no key of their own.
        @param history_window: seconds of change history kept for catch-up, for a store
            whose change feed is a L{ChangeHistory} (its C{changes}); its default otherwise.
        @param history_size: distinct bindings kept in that history at most (the oldest
            changes are dropped first, and a catch-up from before them gets DataMissing).
        @param expiry_interval: seconds between expiry sweeps (see L{ExpirySweep} and
            L{PublishesExpiry}).
        @raise ValueError: Active Leasequery enabled on a store without a change feed.
        """
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as global_reactor  # noqa: PLC0415

            reactor = global_reactor
        self._reactor = reactor
        self.store = store
        self.config = config
        self.listen = tuple(listen)
        self.udp = udp
        self.metrics = metrics
        self._close_store = close_store
        self.active = ActiveConfig() if active is None else active
        self.expiry: ExpiryPublisher | None = None
        if self.active.enabled:
            if not IBindingChangeFeed.providedBy(store):
                raise ValueError(
                    f"Active Leasequery needs a store that publishes its binding changes; "
                    f"the {store.name} store does not"
                )
            history = getattr(store, "changes", None)
            if isinstance(history, ChangeHistory):
                if history_window is not None:
                    history.window = history_window
                if history_size is not None:
                    history.max_changes = history_size
            if isinstance(store, SweepableStore):
                self.expiry = ExpirySweep(store, reactor, expiry_interval)
            elif isinstance(store, PublishesExpiry):
                self.expiry = store.expiry_publisher(expiry_interval)
        self.factory = BulkLeasequeryFactory(store, config, reactor=reactor, active=self.active)
        self.ports: list[IListeningPort] = []
        self.listening: Deferred[list[IListeningPort]] = fail(RuntimeError("not started"))
        self.listening.addErrback(lambda failure: None)
        self._exporter: Any = None

    def startService(self) -> None:
        """Listen on every endpoint; see L{listening} for the outcome."""
        super().startService()
        if self.expiry is not None:
            self.expiry.start()
        attempts: list[Deferred[IListeningPort]] = []
        for description in self.listen:
            attempts.append(self._listen_stream(description, self.factory))
        if self.udp:
            for description in self.listen:
                address = tcp_endpoint_address(description)
                if address is not None:
                    attempts.append(self._listen_udp(*address))
        if self.metrics is not None:
            from .metrics import MetricsExporter  # noqa: PLC0415 - optional dependency

            self._exporter = MetricsExporter(self.factory.stats)
            attempts.append(self._listen_stream(self.metrics, self._exporter.site()))
        self.listening = gatherResults(attempts, consumeErrors=True)

    def _listen_stream(self, description: str, factory: Any) -> Deferred[IListeningPort]:
        try:
            endpoint, factory = self._endpoint(description, factory)
        except Exception as error:  # e.g. systemd: without socket activation
            return fail(ValueError(f"cannot use endpoint {description!r}: {error}"))
        listening: Deferred[IListeningPort] = endpoint.listen(factory)

        def listened(port: IListeningPort) -> IListeningPort:
            self.ports.append(port)
            self._log.info(
                "listening on {endpoint} ({address})",
                endpoint=description,
                address=port.getHost(),
            )
            return port

        def failed(failure: Failure) -> Failure:
            return Failure(OSError(f"cannot listen on {description!r}: {failure.value}"))

        return listening.addCallbacks(listened, failed)

    def _endpoint(self, description: str, factory: Any) -> tuple[Any, Any]:
        """
        The endpoint for C{description}, and the factory to listen with: an C{ssl:}
        description naming no key of its own, with TLS configured, listens on the same
        port and interface with C{tcp:} and runs TLS over it with C{active.tls} (the
        requestor's certificate required and checked against the CA).
        """
        tls = self.active.tls
        if tls is not None and description.lower().startswith("ssl:"):
            try:
                plain = tls_listen_description(description)
            except ConfigError:
                plain = None  # brings its own certificate: Twisted's ssl: endpoint
            if plain is not None:
                from twisted.protocols.tls import TLSMemoryBIOFactory  # noqa: PLC0415

                endpoint = serverFromString(self._reactor, plain)
                return endpoint, TLSMemoryBIOFactory(tls, False, factory)
        return serverFromString(self._reactor, description), factory

    def _listen_udp(self, interface: str, port_number: int) -> Deferred[IListeningPort]:
        protocol = UDPLeasequeryProtocol(
            self.store, self.config, self.factory.stats, reactor=self._reactor
        )
        try:
            port: IListeningPort = self._reactor.listenUDP(
                port_number, protocol, interface=interface
            )
        except Exception as error:
            where = (
                f"[{interface}]:{port_number}" if ":" in interface else f"{interface}:{port_number}"
            )
            return fail(OSError(f"cannot listen on UDP {where}: {error}"))
        self.ports.append(port)
        self._log.info("answering UDP Leasequery on {address}", address=port.getHost())
        return succeed(port)

    def stopService(self) -> Deferred[None]:
        """
        Stop listening, let queries in progress finish (within C{config.shutdown_grace}),
        terminate the rest with DONE(QueryTerminated), then close the store.
        """
        super().stopService()
        if self.expiry is not None:
            self.expiry.stop()
        ports, self.ports = self.ports, []
        self.factory.stopAccepting()
        stopped: list[Deferred[Any]] = []
        for port in ports:
            result = port.stopListening()
            if isinstance(result, Deferred):
                stopped.append(result)
        if self._exporter is not None:
            self._exporter.close()
            self._exporter = None
        self._log.info(
            "shutting down: {count} connection(s) get {grace}s to finish their queries",
            count=len(self.factory.connections),
            grace=self.config.shutdown_grace,
        )
        drained = DeferredList(stopped, consumeErrors=True).addCallback(
            lambda _: self.factory.shutdown()
        )
        if self._close_store:
            drained.addCallback(lambda _: self.store.close())
        done: Deferred[None] = drained.addCallback(lambda _: None)
        return done
