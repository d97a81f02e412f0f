"""
The Bulk Leasequery requestor (RFC 5460 section 6): what a relay, or its operator, runs to
get bindings back from DHCPv6 servers.

    requestor = Requestor(Duid.en(32473, b"relay-7"), reactor)
    result = await requestor.query("[2001:db8::547]:547", LeaseQuery.by_relay_id(relay_duid))
    for binding in result.bindings: ...

L{Requestor.query} asks one server (connect timeout, data timeout, retries with back-off);
L{Requestor.query_all} asks several and merges (R16). Both can stream bindings to a
callback as they arrive. L{BulkLeasequeryClientProtocol} is the connection itself, for
pipelining several queries on one connection. See C{docs/requestor.md}.

L{ActiveWatcher} keeps a replica of a server's bindings with Active Leasequery (RFC 7653),
over STARTTLS with L{StartTLSEndpoint}; see C{docs/watch.md}.
"""

from ._active import (
    ACTIVE_LQ_IDLE_TIMEOUT,
    ACTIVE_LQ_RCV_TIMEOUT,
    ActiveEnd,
    ActiveLeasequeryClientProtocol,
    ActiveQuery,
    ActiveQueryRefused,
    ActiveWatcher,
    BindingChange,
    ReplicaKey,
    WindowQuery,
    is_removal,
    replica_from_bindings,
    replica_key,
)
from ._decode import (
    INFINITE_LIFETIME,
    UNKNOWN_LINK,
    binding_from_client_data,
    fast_data_bindings,
    fast_single_binding,
    granted_lifetime,
    link_from_relay_data,
)
from ._protocol import BindingCallback, BulkLeasequeryClientProtocol, StopStreaming
from ._query import UNSPECIFIED, LeaseQuery
from ._requestor import Requestor, RequestorOptions, ServerAddress
from ._result import (
    MAX_LEASES_PER_BINDING,
    BindingMerger,
    QueryResult,
    QueryStatus,
    ServerResult,
    TooManyBindingsError,
    merge_bindings,
)
from ._starttls import (
    DirectTLSEndpoint,
    StartTLSEndpoint,
    StartTLSError,
    TLSConnectionRefused,
    mutual_tls_options,
)

__all__ = [
    "ACTIVE_LQ_IDLE_TIMEOUT",
    "ACTIVE_LQ_RCV_TIMEOUT",
    "INFINITE_LIFETIME",
    "MAX_LEASES_PER_BINDING",
    "UNKNOWN_LINK",
    "UNSPECIFIED",
    "ActiveEnd",
    "ActiveLeasequeryClientProtocol",
    "ActiveQuery",
    "ActiveQueryRefused",
    "ActiveWatcher",
    "BindingCallback",
    "BindingChange",
    "BindingMerger",
    "BulkLeasequeryClientProtocol",
    "DirectTLSEndpoint",
    "LeaseQuery",
    "QueryResult",
    "QueryStatus",
    "ReplicaKey",
    "Requestor",
    "RequestorOptions",
    "ServerAddress",
    "ServerResult",
    "StartTLSEndpoint",
    "StartTLSError",
    "StopStreaming",
    "TLSConnectionRefused",
    "TooManyBindingsError",
    "WindowQuery",
    "binding_from_client_data",
    "fast_data_bindings",
    "fast_single_binding",
    "granted_lifetime",
    "is_removal",
    "link_from_relay_data",
    "merge_bindings",
    "mutual_tls_options",
    "replica_from_bindings",
    "replica_key",
]
