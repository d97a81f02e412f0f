"""
bulklq: DHCPv6 Bulk Leasequery (RFC 5460) on Twisted.

A server that answers Bulk Leasequery from a binding store (embedded SQLite, ISC Kea's lease
file or PostgreSQL database, memory, or an application's own L{IBindingStore}), a requestor
library and command, and test support for downstream trial suites.
"""

__version__ = "0.1.0"
