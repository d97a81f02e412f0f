"""
Connection plumbing every requestor protocol shares (bulk, active, STARTTLS): a factory
that builds each connection's protocol from a callable, the peer's address as text, and
ending a connection at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from twisted.internet.interfaces import IAddress, ITransport
from twisted.internet.protocol import Factory, Protocol

__all__ = ["BuildingFactory", "abort_connection", "host_port_text", "peer_text"]

_P = TypeVar("_P", bound=Protocol)


class BuildingFactory(Factory, Generic[_P]):
    """Builds each connection's protocol by calling C{build} (a closure holding its arguments)."""

    def __init__(self, build: Callable[[], _P]) -> None:
        self._build = build

    def buildProtocol(self, addr: IAddress | None) -> _P:
        """A new protocol from C{build}, its C{factory} set to this one."""
        protocol = self._build()
        protocol.factory = self
        return protocol


def host_port_text(host: str, port: int) -> str:
    """C{host:port}, an IPv6 host in brackets (C{[2001:db8::1]:547})."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def peer_text(transport: ITransport | None) -> str | None:
    """The transport's peer as C{host:port}, or None when it has no host and port."""
    if transport is None:
        return None
    peer = transport.getPeer()
    host, port = getattr(peer, "host", None), getattr(peer, "port", None)
    if host is None or port is None:
        return None
    return host_port_text(host, port)


def abort_connection(transport: ITransport | None) -> None:
    """End the connection now: abort it (nothing buffered is sent), or close it otherwise."""
    if transport is None:
        return
    abort = getattr(transport, "abortConnection", None)
    if abort is not None:
        abort()
    else:
        transport.loseConnection()
