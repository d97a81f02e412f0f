"""
The Bulk Leasequery server (RFC 5460): a Twisted factory to listen with, and its protocol.

Embedding::

    from twisted.internet import endpoints, reactor
    from bulklq.server import BulkLeasequeryFactory

    factory = BulkLeasequeryFactory(store, config)
    endpoints.serverFromString(reactor, "tcp6:547").listen(factory)

See C{docs/server.md}.
"""

from ._active import ActiveConfig
from ._encode import ClientDataEncoder, client_data
from ._factory import BulkLeasequeryFactory
from ._protocol import BulkLeasequeryProtocol
from ._tls import RequestorAllowList, TLSFileError, TLSFiles, load_tls_files, tls_options

__all__ = [
    "ActiveConfig",
    "BulkLeasequeryFactory",
    "BulkLeasequeryProtocol",
    "ClientDataEncoder",
    "RequestorAllowList",
    "TLSFileError",
    "TLSFiles",
    "client_data",
    "load_tls_files",
    "tls_options",
]
