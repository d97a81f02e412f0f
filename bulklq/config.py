"""
The server's configuration: identity, access control, limits and timeouts.

L{ServerConfig} is what L{bulklq.server.BulkLeasequeryFactory} takes; C{twistd bulklq}
builds one from its options and config file. Defaults follow RFC 5460 section 5.6.
"""

from __future__ import annotations

import ipaddress
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

import attrs

from .wire import BULK_LQ_DATA_TIMEOUT, BULK_LQ_MAX_CONNS, Duid, QueryType

__all__ = [
    "LOOPBACK_ONLY",
    "QUERY_TYPE_NAMES",
    "AccessRule",
    "ConfigError",
    "ServerConfig",
    "normalise_peer",
    "parse_access_rule",
    "parse_query_types",
]


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the value and says why."""


#: Names accepted for query types in ACLs and on the command line.
QUERY_TYPE_NAMES: dict[str, QueryType] = {
    "address": QueryType.QUERY_BY_ADDRESS,
    "client-id": QueryType.QUERY_BY_CLIENTID,
    "relay-id": QueryType.QUERY_BY_RELAY_ID,
    "link": QueryType.QUERY_BY_LINK_ADDRESS,
    "remote-id": QueryType.QUERY_BY_REMOTE_ID,
}


def normalise_peer(address: str) -> IPv4Address | IPv6Address:
    """
    The peer's address, with an IPv4-mapped IPv6 address (C{::ffff:192.0.2.1}, as a
    dual-stack listener reports IPv4 peers) turned into plain IPv4. A scope id is dropped.

    @raise ValueError: if C{address} is not an IP address.
    """
    parsed = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(parsed, IPv6Address) and parsed.ipv4_mapped is not None:
        return parsed.ipv4_mapped
    return parsed


@attrs.frozen
class AccessRule:
    """
    Requestors in C{network} may connect; C{query_types} limits what they may ask
    (C{None}: every type).
    """

    network: IPv4Network | IPv6Network
    query_types: frozenset[QueryType] | None = None

    def covers(self, peer: IPv4Address | IPv6Address) -> bool:
        """Whether C{peer} (already normalised) is in this rule's network."""
        return peer.version == self.network.version and peer in self.network

    def __str__(self) -> str:
        if self.query_types is None:
            return str(self.network)
        names = [name for name, qt in QUERY_TYPE_NAMES.items() if qt in self.query_types]
        return f"{self.network}:{','.join(names)}"


def parse_query_types(text: str) -> frozenset[QueryType]:
    """
    Parse a comma-separated list of query types: names (C{relay-id,link}) or numbers 1-5.

    @raise ConfigError: naming the first unknown entry.
    """
    types: set[QueryType] = set()
    for raw_item in text.split(","):
        item = raw_item.strip().lower()
        if item in QUERY_TYPE_NAMES:
            types.add(QUERY_TYPE_NAMES[item])
            continue
        try:
            types.add(QueryType(int(item)))
        except ValueError:
            known = ", ".join(QUERY_TYPE_NAMES)
            raise ConfigError(f"unknown query type {item!r} (known: {known}, or 1-5)") from None
    return frozenset(types)


def parse_access_rule(text: str) -> AccessRule:
    """
    Parse C{CIDR} or C{CIDR:query-types} (C{2001:db8::/32:relay-id,link},
    C{192.0.2.0/24:4}). A bare address means that one host.

    @raise ConfigError: if the network or a query type is invalid.
    """
    network_text, types_text = text.strip(), ""
    if "/" in network_text:
        head, _, tail = network_text.partition("/")
        length, _, types_text = tail.partition(":")
        network_text = f"{head}/{length}"
    try:
        network = ipaddress.ip_network(network_text, strict=False)
    except ValueError:
        raise ConfigError(f"{text!r} is not CIDR[:query-types]") from None
    if isinstance(network, IPv6Network) and network.network_address.ipv4_mapped is not None:
        mapped = network.network_address.ipv4_mapped
        network = IPv4Network((mapped, max(network.prefixlen - 96, 0)), strict=False)
    return AccessRule(network, parse_query_types(types_text) if types_text else None)


#: The default ACL: only this host may query until the operator allows more.
LOOPBACK_ONLY = (
    AccessRule(IPv6Network("::1/128")),
    AccessRule(IPv4Network("127.0.0.0/8")),
)


def _positive(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{attribute.name.replace('_', '-')} must be positive, not {value}")


@attrs.frozen
class ServerConfig:
    """
    Everything the Bulk Leasequery server needs besides its store and reactor.

    @ivar server_duid: this server's DUID (SERVERID in replies; S3).
    @ivar allow: requestor ACL; a peer matching no rule is closed at once (S14, S17).
    @ivar max_connections: accepted connections at once (RFC 5460 BULK_LQ_MAX_CONNS, S16).
    @ivar max_connections_per_requestor: connections at once from one address.
    @ivar max_queries_per_connection: queries in progress on one connection; reading pauses
        at the limit (S20, S21).
    @ivar data_timeout: seconds a partial query or a blocked write may last
        (BULK_LQ_DATA_TIMEOUT, S18, S19).
    @ivar idle_timeout: seconds a connection with no query in progress is kept.
    @ivar store_timeout: seconds the store may take to answer one page before the query is
        terminated.
    @ivar page_size: bindings fetched from the store per page.
    @ivar sensitive_options: option codes never returned, whatever the ORO asks (S43).
    @ivar shutdown_grace: seconds in-flight queries get to finish at shutdown.
    """

    server_duid: Duid
    allow: tuple[AccessRule, ...] = LOOPBACK_ONLY
    max_connections: int = attrs.field(default=BULK_LQ_MAX_CONNS, validator=_positive)
    max_connections_per_requestor: int = attrs.field(default=4, validator=_positive)
    max_queries_per_connection: int = attrs.field(default=4, validator=_positive)
    data_timeout: float = attrs.field(default=BULK_LQ_DATA_TIMEOUT, validator=_positive)
    idle_timeout: float = attrs.field(default=300.0, validator=_positive)
    store_timeout: float = attrs.field(default=30.0, validator=_positive)
    page_size: int = attrs.field(default=1000, validator=_positive)
    sensitive_options: frozenset[int] = frozenset()
    shutdown_grace: float = attrs.field(default=10.0, validator=_positive)

    def rule_for(self, peer: IPv4Address | IPv6Address) -> AccessRule | None:
        """The most specific rule covering C{peer} (normalised), or C{None}."""
        best: AccessRule | None = None
        for rule in self.allow:
            if not rule.covers(peer):
                continue
            if best is None or rule.network.prefixlen > best.network.prefixlen:
                best = rule
        return best
