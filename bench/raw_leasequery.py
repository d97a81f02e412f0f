"""
Bulk Leasequery on plain sockets, for benchmark requestors that must cost the server's
side nothing: LEASEQUERY frames built with C{struct} (no bulklq import), a CLIENT_DATA
test on a raw message, the shared relay DUID every benchmark binding is relayed by, and
a process's resident set size.

Shared by C{bench/server_throughput.py} and (for the lead to switch over)
C{bench/torture_server.py}.
"""

from __future__ import annotations

import struct
from ipaddress import IPv6Address

__all__ = [
    "DATA",
    "DONE",
    "RELAY_DUID",
    "REPLY",
    "encode_query",
    "has_client_data",
    "relay_id_query",
    "rss_kib",
]

#: LEASEQUERY-REPLY, -DONE and -DATA message types.
REPLY, DONE, DATA = 15, 16, 17
#: The DUID-UUID of the relay every benchmark binding is relayed by.
RELAY_DUID = bytes.fromhex("0004000102030405060708090a0b0c0d0e0f")


def encode_query(
    xid: int,
    query_type: int,
    link: IPv6Address,
    options: bytes = b"",
    requestor: bytes = b"bench",
) -> bytes:
    """A framed LEASEQUERY: CLIENTID (DUID-EN 32473 with C{requestor}) and LQ_QUERY."""
    duid = struct.pack("!HI", 2, 32473) + requestor
    body = struct.pack("!HH", 1, len(duid)) + duid
    lq = bytes((query_type,)) + link.packed + options
    body += struct.pack("!HH", 44, len(lq)) + lq
    message = struct.pack("!I", (14 << 24) | xid) + body
    return struct.pack("!H", len(message)) + message


def relay_id_query(xid: int, requestor: bytes = b"bench") -> bytes:
    """QUERY_BY_RELAY_ID for L{RELAY_DUID} over every link (link ::): every binding."""
    option = struct.pack("!HH", 53, len(RELAY_DUID)) + RELAY_DUID
    return encode_query(xid, 3, IPv6Address(0), option, requestor)


def has_client_data(message: bytes) -> bool:
    """Whether a client/server message holds a CLIENT_DATA option (45) at top level."""
    offset = 4
    while offset + 4 <= len(message):
        code, length = struct.unpack_from("!HH", message, offset)
        if code == 45:
            return True
        offset += 4 + length
    return False


def rss_kib(pid: int) -> int:
    """The resident set size of process C{pid}, KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0
