"""
What a query gives back: per-server L{ServerResult}, the merged L{QueryResult}, and the
merge rule (RFC 5007 section 4.3.4, R16) in L{merge_bindings} and L{BindingMerger}.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

import attrs

from ..model import AddressLease, Binding, BindingKey, PrefixLease
from ..wire import Duid, StatusCode, rfc_name
from ._decode import INFINITE_LIFETIME

__all__ = [
    "MAX_LEASES_PER_BINDING",
    "BindingMerger",
    "QueryResult",
    "QueryStatus",
    "ServerResult",
    "TooManyBindingsError",
    "merge_bindings",
]


class QueryStatus(enum.Enum):
    """How a query to one server ended."""

    #: The reply is complete: a REPLY without CLIENT_DATA, or every message up to a DONE
    #: with no STATUS_CODE or Success (R9, R10).
    SUCCESS = "success"
    #: The server answered with an error STATUS_CODE in its REPLY (NotConfigured,
    #: NotAllowed, MalformedQuery, ...): no data.
    SERVER_ERROR = "server-error"
    #: The server ended the stream with a DONE carrying an error status (QueryTerminated):
    #: the data received is incomplete.
    TERMINATED = "terminated"
    #: The stream stopped before its end: the connection closed, the server broke the
    #: protocol, the result exceeded the caller's limit, or the consumer failed.
    INCOMPLETE = "incomplete"
    #: Nothing was received for the data timeout (R14); the connection was aborted.
    TIMEOUT = "timeout"
    #: No connection could be made (refused, unreachable, or the connect timeout, R17).
    CONNECTION_FAILED = "connection-failed"


@attrs.frozen
class ServerResult:
    """
    The outcome of one query to one server.

    @ivar server: the server, as text (C{[2001:db8::1]:547}).
    @ivar status: how the query ended.
    @ivar status_code: the STATUS_CODE the server sent (REPLY or DONE), if any.
    @ivar status_message: the STATUS_CODE's message text.
    @ivar server_duid: the SERVERID of the REPLY, once one was accepted.
    @ivar bindings: the bindings kept (merged by client and link), in key order; empty when
        the caller asked not to keep them. When the query did not complete, these are the
        ones that arrived before it stopped: true bindings, but not all of them.
    @ivar received: how many CLIENT_DATA options were accepted (kept or not).
    @ivar discarded: how many messages or CLIENT_DATA options were discarded as invalid
        (R7, R11, R12, undecodable frames) while this query was outstanding.
    @ivar attempts: connection attempts made (1 without retries).
    @ivar error: a one-line explanation when the status is not a success.
    @ivar local: the requestor itself ended the query (a limit was reached, or the binding
        callback raised L{StopStreaming<bulklq.client.StopStreaming>} or failed): asking
        again would end the same way, so it is not retried.
    """

    server: str
    status: QueryStatus
    status_code: int | None = None
    status_message: str = ""
    server_duid: Duid | None = None
    bindings: tuple[Binding, ...] = ()
    received: int = 0
    discarded: int = 0
    attempts: int = 1
    error: str | None = None
    local: bool = False

    @property
    def complete(self) -> bool:
        """Whether the server's answer arrived whole and successful (R9, R10)."""
        return self.status is QueryStatus.SUCCESS

    @property
    def retryable(self) -> bool:
        """Whether asking again may help: anything but success and a definite refusal."""
        if self.local:
            return False
        if self.status is QueryStatus.SERVER_ERROR:
            return self.status_code == StatusCode.QueryTerminated
        return self.status is not QueryStatus.SUCCESS

    @property
    def terminated(self) -> bool:
        """Whether the server said QueryTerminated (in a REPLY or a DONE), R18."""
        return self.status_code == StatusCode.QueryTerminated

    def describe(self) -> str:
        """One line for people: C{[::1]:547: success, 12 bindings}."""
        if self.status is QueryStatus.SUCCESS:
            text = f"{self.server}: success, {self.received} client data"
        else:
            text = f"{self.server}: {self.status.value}"
            if self.status_code is not None:
                text += f" ({rfc_name(self.status_code, StatusCode)}"
                text += f": {self.status_message})" if self.status_message else ")"
            if self.error and self.status not in (
                QueryStatus.SERVER_ERROR,
                QueryStatus.TERMINATED,
            ):
                text += f": {self.error}"
        if self.discarded:
            text += f", {self.discarded} discarded"
        return text


@attrs.frozen
class QueryResult:
    """
    The outcome of one query sent to several servers (R16).

    @ivar bindings: every server's bindings merged by (link, client DUID) with
        L{merge_bindings}, in key order.
    @ivar servers: each server's own result, in the order the servers were given.
    """

    bindings: tuple[Binding, ...]
    servers: tuple[ServerResult, ...]

    @property
    def complete(self) -> bool:
        """Whether every server answered completely."""
        return all(result.complete for result in self.servers)

    @property
    def failures(self) -> tuple[ServerResult, ...]:
        """The servers whose answer is not complete."""
        return tuple(result for result in self.servers if not result.complete)


class TooManyBindingsError(Exception):
    """A result grew beyond the number of bindings (or leases per binding) allowed."""


#: The most addresses and prefixes the requestor keeps for one client on one link. No real
#: client holds that many; a server reporting more is broken or hostile.
MAX_LEASES_PER_BINDING = 1024


def _rebase(lifetime: int, shift: int) -> int:
    if lifetime == INFINITE_LIFETIME:
        return lifetime
    return max(lifetime - shift, 0)


def merge_bindings(first: Binding, second: Binding) -> Binding:
    """
    One binding from two reports of the same client on the same link (RFC 5007 section
    4.3.4): disjoint data is merged (Kea sends one lease per CLIENT_DATA), and where both
    report the same address or prefix, the report with the most recent CLT_TIME (the later
    C{cltt}) wins (R16). The result's C{cltt}, relay data and other options are the most
    recent report's (the older one's relay data when the newer has none); lifetimes are
    re-expressed from the new C{cltt} so that every lease keeps its expiry time. On equal
    C{cltt} the first report wins.
    """
    newer, older = (second, first) if second.cltt > first.cltt else (first, second)
    shift = newer.cltt - older.cltt
    addresses: dict[object, AddressLease] = {}
    for lease in older.addresses:
        addresses[lease.address] = AddressLease(
            lease.address,
            _rebase(lease.preferred_lifetime, shift),
            _rebase(lease.valid_lifetime, shift),
        )
    for lease in newer.addresses:
        addresses[lease.address] = lease
    prefixes: dict[object, PrefixLease] = {}
    for prefix in older.prefixes:
        prefixes[prefix.prefix] = PrefixLease(
            prefix.prefix,
            _rebase(prefix.preferred_lifetime, shift),
            _rebase(prefix.valid_lifetime, shift),
        )
    for prefix in newer.prefixes:
        prefixes[prefix.prefix] = prefix
    # Keep the order in which leases were first reported.
    address_order = [lease.address for lease in first.addresses] + [
        lease.address for lease in second.addresses
    ]
    prefix_order = [lease.prefix for lease in first.prefixes] + [
        lease.prefix for lease in second.prefixes
    ]
    relay_source = newer if newer.relay_data is not None or older.relay_data is None else older
    return Binding(
        newer.client_id,
        newer.link_id,
        newer.cltt,
        tuple(addresses.pop(key) for key in address_order if key in addresses),
        tuple(prefixes.pop(key) for key in prefix_order if key in prefixes),
        relay_source.relay_data,
        relay_source.relay_ids,
        relay_source.remote_ids,
        newer.options or older.options,
    )


class BindingMerger:
    """
    Collects bindings, one per (link, client DUID), merging reports of the same key with
    L{merge_bindings}. Holds at most C{max_bindings} keys (C{None}: no limit); one more
    raises L{TooManyBindingsError}. With C{max_leases}, a merged binding may hold at most
    that many addresses and prefixes together: a server that keeps reporting new leases
    for one client cannot grow one binding (nor the cost of merging into it) without bound.
    """

    def __init__(self, max_bindings: int | None = None, max_leases: int | None = None) -> None:
        self._bindings: dict[BindingKey, Binding] = {}
        self._max_bindings = max_bindings
        self._max_leases = max_leases
        # Servers usually send in key order: then no sort is needed at the end.
        self._last: BindingKey | None = None
        self._ordered = True

    def add(self, binding: Binding) -> None:
        """Add one report."""
        key = (binding.link_id, binding.client_id.raw)
        bindings = self._bindings
        existing = bindings.setdefault(key, binding)
        if existing is binding:
            if self._max_bindings is not None and len(bindings) > self._max_bindings:
                del bindings[key]
                raise TooManyBindingsError(f"more than {self._max_bindings} bindings")
            if self._ordered:
                if self._last is not None and key < self._last:
                    self._ordered = False
                self._last = key
            merged = binding
        else:
            merged = bindings[key] = merge_bindings(existing, binding)
        if (
            self._max_leases is not None
            and len(merged.addresses) + len(merged.prefixes) > self._max_leases
        ):
            bindings[key] = existing
            if existing is binding:
                del bindings[key]
            raise TooManyBindingsError(f"a binding with more than {self._max_leases} leases")

    def add_all(self, bindings: Iterable[Binding]) -> None:
        """Add several reports."""
        for binding in bindings:
            self.add(binding)

    def __len__(self) -> int:
        return len(self._bindings)

    def bindings(self) -> tuple[Binding, ...]:
        """The merged bindings in key order (link id, then client DUID octets)."""
        if self._ordered:
            return tuple(self._bindings.values())
        return tuple(self._bindings[key] for key in sorted(self._bindings))
