"""
IANA numbers for DHCPv6 Leasequery, Bulk Leasequery and Active Leasequery.

Every enum member is named after the RFC's own name; L{rfc_name} gives the spelling the
RFCs use (C{LEASEQUERY-REPLY}, C{OPTION_LQ_QUERY}, C{QueryTerminated}).
"""

from __future__ import annotations

import enum

__all__ = [
    "ALL_RELAY_AGENTS_AND_SERVERS",
    "BULK_LQ_CONN_TIMEOUT",
    "BULK_LQ_DATA_TIMEOUT",
    "BULK_LQ_MAX_CONNS",
    "BULK_LQ_MAX_RETRY",
    "LEASEQUERY_PORT",
    "MAX_MESSAGE_SIZE",
    "DuidType",
    "MessageType",
    "OptionCode",
    "QueryType",
    "StatusCode",
    "rfc_name",
]

#: TCP and UDP port of DHCPv6 servers and relays (RFC 8415 section 7.2, RFC 5460 section 5.2).
LEASEQUERY_PORT = 547
#: Seconds a Bulk Leasequery peer waits for data before giving up (RFC 5460 section 5.6).
BULK_LQ_DATA_TIMEOUT = 300
#: Default number of Bulk Leasequery connections a server accepts (RFC 5460 section 5.6).
BULK_LQ_MAX_CONNS = 10
#: Seconds a requestor waits for a connection (draft-stapp-dhc-dhcpv6-bulk-leasequery-00).
BULK_LQ_CONN_TIMEOUT = 30
#: Upper bound in seconds of the requestor's connect back-off (same draft).
BULK_LQ_MAX_RETRY = 60
#: A message's size field is two octets (RFC 5460 section 5.1).
MAX_MESSAGE_SIZE = 65535
#: Not used on TCP; kept for UDP Leasequery documentation.
ALL_RELAY_AGENTS_AND_SERVERS = "ff02::1:2"


class MessageType(enum.IntEnum):
    """DHCPv6 message types (RFC 8415, 5007, 5460, 7653)."""

    SOLICIT = 1
    ADVERTISE = 2
    REQUEST = 3
    CONFIRM = 4
    RENEW = 5
    REBIND = 6
    REPLY = 7
    RELEASE = 8
    DECLINE = 9
    RECONFIGURE = 10
    INFORMATION_REQUEST = 11
    RELAY_FORW = 12
    RELAY_REPL = 13
    LEASEQUERY = 14
    LEASEQUERY_REPLY = 15
    LEASEQUERY_DONE = 16
    LEASEQUERY_DATA = 17
    ACTIVELEASEQUERY = 22
    STARTTLS = 23


class OptionCode(enum.IntEnum):
    """DHCPv6 option codes that bulklq knows (RFC 8415, 4649, 5007, 5460, 7653)."""

    OPTION_CLIENTID = 1
    OPTION_SERVERID = 2
    OPTION_IA_NA = 3
    OPTION_IA_TA = 4
    OPTION_IAADDR = 5
    OPTION_ORO = 6
    OPTION_RELAY_MSG = 9
    OPTION_STATUS_CODE = 13
    OPTION_INTERFACE_ID = 18
    OPTION_IA_PD = 25
    OPTION_IAPREFIX = 26
    OPTION_REMOTE_ID = 37
    OPTION_LQ_QUERY = 44
    OPTION_CLIENT_DATA = 45
    OPTION_CLT_TIME = 46
    OPTION_LQ_RELAY_DATA = 47
    OPTION_LQ_CLIENT_LINK = 48
    OPTION_RELAY_ID = 53
    OPTION_LQ_BASE_TIME = 100
    OPTION_LQ_START_TIME = 101
    OPTION_LQ_END_TIME = 102


class StatusCode(enum.IntEnum):
    """Status codes used by Leasequery (RFC 8415, 5007, 5460, 7653)."""

    Success = 0
    UnspecFail = 1
    NoAddrsAvail = 2
    NoBinding = 3
    NotOnLink = 4
    UseMulticast = 5
    NoPrefixAvail = 6
    UnknownQueryType = 7
    MalformedQuery = 8
    NotConfigured = 9
    NotAllowed = 10
    QueryTerminated = 11
    DataMissing = 12
    CatchUpComplete = 13
    NotSupported = 14
    TLSConnectionRefused = 15


class QueryType(enum.IntEnum):
    """The query-type octet of OPTION_LQ_QUERY (RFC 5007, 5460)."""

    QUERY_BY_ADDRESS = 1
    QUERY_BY_CLIENTID = 2
    QUERY_BY_RELAY_ID = 3
    QUERY_BY_LINK_ADDRESS = 4
    QUERY_BY_REMOTE_ID = 5


class DuidType(enum.IntEnum):
    """DUID types (RFC 8415 section 11, RFC 6355)."""

    DUID_LLT = 1
    DUID_EN = 2
    DUID_LL = 3
    DUID_UUID = 4


def rfc_name(value: int, enum_type: type[enum.IntEnum]) -> str:
    """
    The RFC's spelling of C{value} in C{enum_type}, or C{"unknown(N)"}.

    Message types are written with dashes (C{LEASEQUERY-REPLY}); options, status codes and
    query types keep their enum names, which are the RFC's.
    """
    try:
        member = enum_type(value)
    except ValueError:
        return f"unknown({value})"
    if enum_type is MessageType:
        return member.name.replace("_", "-")
    return member.name
