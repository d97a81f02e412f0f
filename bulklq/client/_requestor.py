"""
Connecting, retrying and asking several servers: L{Requestor}.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred, TimeoutError, gatherResults
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IReactorTCP, IReactorTime, IStreamClientEndpoint
from twisted.internet.task import deferLater
from twisted.logger import Logger

from ..wire import (
    BULK_LQ_CONN_TIMEOUT,
    BULK_LQ_DATA_TIMEOUT,
    BULK_LQ_MAX_RETRY,
    LEASEQUERY_PORT,
    Duid,
)
from ._connection import BuildingFactory, host_port_text
from ._protocol import BindingCallback, BulkLeasequeryClientProtocol, FrameCallback
from ._query import LeaseQuery
from ._result import BindingMerger, QueryResult, QueryStatus, ServerResult

__all__ = ["Requestor", "RequestorOptions", "ServerAddress"]


@attrs.frozen
class ServerAddress:
    """
    A Bulk Leasequery server: host name or address, and TCP port (R4: 547 by default).
    """

    host: str
    port: int = LEASEQUERY_PORT

    @classmethod
    def parse(cls, text: str, default_port: int = LEASEQUERY_PORT) -> ServerAddress:
        """
        Parse C{host}, C{host:port}, C{2001:db8::1} (a bare IPv6 address) or
        C{[2001:db8::1]:port}.

        @raise ValueError: with a one-line explanation.
        """
        text = text.strip()
        host, port_text = text, ""
        if text.startswith("["):
            host, bracket, rest = text[1:].partition("]")
            if not bracket or (rest and not rest.startswith(":")):
                raise ValueError(f"{text!r} is not [ADDRESS] or [ADDRESS]:PORT")
            port_text = rest[1:]
            if rest and not port_text:
                raise ValueError(f"{text!r} has an empty port")
            try:
                ipaddress.IPv6Address(host.split("%", 1)[0])
            except ValueError:
                raise ValueError(f"{host!r} in {text!r} is not an IPv6 address") from None
        elif text.count(":") == 1:
            host, _, port_text = text.partition(":")
        if not host:
            raise ValueError(f"{text!r} has no host")
        port = default_port
        if port_text:
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise ValueError(f"{port_text!r} in {text!r} is not a port number")
            port = int(port_text)
        return cls(host, port)

    def endpoint(self, reactor: Any, timeout: float) -> IStreamClientEndpoint:
        """An endpoint connecting to this server (an address needs no name resolution)."""
        try:
            address = ipaddress.ip_address(self.host.split("%", 1)[0])
        except ValueError:
            return HostnameEndpoint(reactor, self.host.encode("idna"), self.port, timeout)
        if address.version == 6:
            return TCP6ClientEndpoint(reactor, self.host, self.port, timeout)
        return TCP4ClientEndpoint(reactor, self.host, self.port, timeout)

    def __str__(self) -> str:
        return host_port_text(self.host, self.port)


def _positive(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be above 0, not {value!r}")


@attrs.frozen
class RequestorOptions:
    """
    How a L{Requestor} connects, waits and retries. Defaults follow RFC 5460 section 5.6
    and the draft's BULK_LQ_CONN_TIMEOUT / BULK_LQ_MAX_RETRY.

    @ivar data_timeout: seconds without any data, while a query is outstanding, before the
        connection is aborted (R14).
    @ivar connect_timeout: seconds a connection attempt may take (R17).
    @ivar retries: further attempts after a failed one (0: a single attempt). A query is
        retried after a connection failure, a timeout, an incomplete stream, and
        QueryTerminated; never after another error status from the server.
    @ivar initial_backoff: the first wait before retrying; each further wait doubles, up to
        C{max_backoff} (R17), and is then drawn at random between half and all of that
        (jitter), so that requestors restarting together spread out.
    @ivar max_backoff: the ceiling of the wait between attempts.
    @ivar terminated_backoff: the shortest wait after QueryTerminated (R18).
    @ivar keep_bindings: keep the bindings in the result; without it only the streaming
        callback sees them and memory stays flat however large the answer.
    @ivar max_bindings: with C{keep_bindings}, give up (incomplete) beyond this many.
    """

    data_timeout: float = attrs.field(default=BULK_LQ_DATA_TIMEOUT, validator=_positive)
    connect_timeout: float = attrs.field(default=BULK_LQ_CONN_TIMEOUT, validator=_positive)
    retries: int = attrs.field(default=3, validator=attrs.validators.ge(0))
    initial_backoff: float = attrs.field(default=1.0, validator=_positive)
    max_backoff: float = attrs.field(default=BULK_LQ_MAX_RETRY, validator=_positive)
    terminated_backoff: float = attrs.field(default=5.0, validator=attrs.validators.ge(0))
    keep_bindings: bool = True
    max_bindings: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.ge(1))
    )


class Requestor:
    """
    A Bulk Leasequery requestor: connects to servers, sends queries, retries, merges.

    @param requestor_duid: the DUID sent in every query's CLIENTID (R1).
    @param reactor: provides C{IReactorTCP} and C{IReactorTime}; the global reactor when
        C{None}.
    @param endpoint_factory: makes the endpoint for a server (default
        L{ServerAddress.endpoint}); use it for TLS, Unix sockets or tests.
    @param rng: the source of transaction-ids and back-off jitter.
    """

    _log = Logger()

    def __init__(
        self,
        requestor_duid: Duid,
        reactor: IReactorTime | None = None,
        options: RequestorOptions | None = None,
        endpoint_factory: Callable[[ServerAddress], IStreamClientEndpoint] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor  # noqa: PLC0415

            reactor = global_reactor
        assert reactor is not None
        self.requestor_duid = requestor_duid
        self.options = options or RequestorOptions()
        self._reactor = reactor
        self._endpoint_factory = endpoint_factory
        self._random = rng or random.Random()

    def _endpoint(self, server: ServerAddress) -> IStreamClientEndpoint:
        if self._endpoint_factory is not None:
            return self._endpoint_factory(server)
        reactor: IReactorTCP = self._reactor  # type: ignore[assignment]
        return server.endpoint(reactor, self.options.connect_timeout)

    def connect(self, server: ServerAddress | str) -> Deferred[BulkLeasequeryClientProtocol]:
        """
        One connection attempt, abandoned after the connect timeout (R17). Use the
        protocol's C{query} to pipeline several queries on it (R13); close it when done.
        """
        address = server if isinstance(server, ServerAddress) else ServerAddress.parse(server)
        factory = BuildingFactory(
            lambda: BulkLeasequeryClientProtocol(
                self.requestor_duid, self._reactor, self.options.data_timeout, self._random
            )
        )
        connecting: Deferred[BulkLeasequeryClientProtocol] = self._endpoint(address).connect(
            factory
        )  # type: ignore[assignment]
        connecting.addTimeout(self.options.connect_timeout, self._reactor)
        return connecting

    def backoff(self, attempt: int) -> float:
        """The wait after failed attempt number C{attempt} (1, 2, ...), jitter included."""
        options = self.options
        ceiling = min(options.max_backoff, options.initial_backoff * 2 ** (attempt - 1))
        return self._random.uniform(ceiling / 2, ceiling)

    def query(
        self,
        server: ServerAddress | str,
        query: LeaseQuery,
        on_binding: BindingCallback | None = None,
        *,
        on_frame: FrameCallback | None = None,
    ) -> Deferred[ServerResult]:
        """
        Ask one server, retrying as L{RequestorOptions} says; fires with the last attempt's
        L{ServerResult} (never errbacks for network or server trouble).

        C{on_binding} sees every binding as it arrives. After a retry the answer starts
        again from the beginning, so the callback may see a binding more than once; the
        result only holds the last attempt's bindings. C{on_frame} is offered each
        LEASEQUERY-DATA message first when the bindings are not kept (see
        L{BulkLeasequeryClientProtocol.query}).
        """
        address = server if isinstance(server, ServerAddress) else ServerAddress.parse(server)
        return Deferred.fromCoroutine(self._query(address, query, on_binding, on_frame))

    async def _query(
        self,
        server: ServerAddress,
        query: LeaseQuery,
        on_binding: BindingCallback | None,
        on_frame: FrameCallback | None,
    ) -> ServerResult:
        attempt = 0
        while True:
            attempt += 1
            result = attrs.evolve(
                await self._attempt(server, query, on_binding, on_frame),
                server=str(server),
                attempts=attempt,
            )
            if not result.retryable or attempt > self.options.retries:
                return result
            delay = self.backoff(attempt)
            if result.terminated:
                delay = max(delay, self.options.terminated_backoff)
            self._log.info(
                "{result}; retrying in {delay:.1f} s", result=result.describe(), delay=delay
            )
            await deferLater(self._reactor, delay)

    async def _attempt(
        self,
        server: ServerAddress,
        query: LeaseQuery,
        on_binding: BindingCallback | None,
        on_frame: FrameCallback | None,
    ) -> ServerResult:
        try:
            protocol = await self.connect(server)
        except TimeoutError:
            return ServerResult(
                str(server),
                QueryStatus.CONNECTION_FAILED,
                error=f"no connection within {self.options.connect_timeout:g} s",
            )
        except Exception as error:
            return ServerResult(str(server), QueryStatus.CONNECTION_FAILED, error=_one_line(error))
        try:
            return await protocol.query(
                query,
                on_binding,
                self.options.keep_bindings,
                self.options.max_bindings,
                on_frame,
            )
        finally:
            # R15: one query per connection here; close after its DONE.
            if protocol.transport is not None:
                protocol.transport.loseConnection()

    def query_all(
        self,
        servers: Sequence[ServerAddress | str],
        query: LeaseQuery,
        on_binding: BindingCallback | None = None,
        *,
        on_frame: FrameCallback | None = None,
    ) -> Deferred[QueryResult]:
        """
        Ask every server in parallel (RFC 5460 section 6.4) and merge their bindings by
        (link, client DUID), the most recent CLT_TIME winning (R16). A server that fails is
        reported in C{result.servers}; the others' data is kept. C{on_binding} and
        C{on_frame} are as for L{query}.
        """
        queries = [self.query(server, query, on_binding, on_frame=on_frame) for server in servers]
        merged: Deferred[list[ServerResult]] = gatherResults(queries)
        return merged.addCallback(_merge_results)


def _merge_results(results: list[ServerResult]) -> QueryResult:
    merger = BindingMerger()
    for result in results:
        merger.add_all(result.bindings)
    return QueryResult(merger.bindings(), tuple(results))


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
