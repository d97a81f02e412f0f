"""
STARTTLS for a requestor (RFC 7653 sections 8.2 and 6.2.2): an endpoint wrapper.

L{StartTLSEndpoint} connects the wrapped endpoint, sends STARTTLS as the first message,
and on a REPLY without a status code starts a mutually authenticated TLS session; only
once the handshake has completed is the caller's protocol connected, over TLS. Both the
Active Leasequery watcher and a Bulk Leasequery L{Requestor} (through its
C{endpoint_factory}) use it, so a fallback bulk query travels the same secure path.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.protocols.basic import Int16StringReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from ..wire import (
    BULK_LQ_CONN_TIMEOUT,
    MAX_MESSAGE_SIZE,
    Message,
    MessageType,
    StatusCode,
    StatusCodeOption,
    WireError,
    decode_message,
    rfc_name,
)
from ._connection import BuildingFactory, abort_connection

__all__ = [
    "DirectTLSEndpoint",
    "StartTLSEndpoint",
    "StartTLSError",
    "TLSConnectionRefused",
    "mutual_tls_options",
]


class StartTLSError(Exception):
    """
    STARTTLS did not give a TLS connection: no answer, the connection closed, or the TLS
    handshake failed (RFC 7653 section 8.2: the requestor then closes the connection).
    """


class TLSConnectionRefused(StartTLSError):  # noqa: N818 - the RFC's status name
    """The server answered STARTTLS with a REPLY carrying a status code (TLSConnectionRefused)."""


def mutual_tls_options(
    hostname: str, ca_pem: bytes, cert_pem: bytes, key_pem: bytes
) -> IOpenSSLClientConnectionCreator:
    """
    Client TLS options for mutual authentication (RFC 7653 section 8.2, RFC 7525): the
    server's certificate must chain to C{ca_pem} and match C{hostname} (a name or an IP
    address); this requestor presents C{cert_pem}/C{key_pem} (intermediate CA certificates
    may follow its own in C{cert_pem}); TLS 1.2 at least. The key and certificates are
    given to Twisted as C{cryptography} objects (pyOpenSSL's are deprecated there).

    @raise ValueError: if a PEM text cannot be loaded, or the key is not the
        certificate's (one-line message).
    """
    from cryptography import x509  # noqa: PLC0415 - the tls extra
    from cryptography.exceptions import UnsupportedAlgorithm  # noqa: PLC0415
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from OpenSSL.SSL import Error as OpenSSLError  # noqa: PLC0415
    from twisted.internet import ssl  # noqa: PLC0415

    try:
        authority = ssl.Certificate.loadPEM(ca_pem)
        own, *chain = x509.load_pem_x509_certificates(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (OpenSSLError, ValueError, TypeError, UnsupportedAlgorithm) as error:
        raise ValueError(f"cannot load the TLS certificate or key: {error}") from None
    public = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*public) != own.public_key().public_bytes(*public):
        raise ValueError("the TLS key does not match the certificate")
    # Not clientCertificate=: optionsForClientTLS would pass pyOpenSSL objects on.
    return ssl.optionsForClientTLS(
        hostname,
        trustRoot=authority,
        extraCertificateOptions={
            "privateKey": key,
            "certificate": own,
            "extraCertChain": chain,
            "raiseMinimumTo": ssl.TLSVersion.TLSv1_2,
        },
    )


@implementer(IHandshakeListener)
class _StartTLSProtocol(Int16StringReceiver):
    """
    Sends STARTTLS, waits for the REPLY, starts TLS, then hands over to the inner protocol.
    With C{direct}, starts TLS at once instead (an C{ssl:} listener).
    """

    MAX_LENGTH = MAX_MESSAGE_SIZE

    def __init__(
        self,
        wrapped: IProtocolFactory,
        tls: IOpenSSLClientConnectionCreator,
        clock: IReactorTime,
        *,
        timeout: float,
        ready: Deferred[IProtocol],
        rng: random.Random,
        direct: bool = False,
    ) -> None:
        self._direct = direct
        self._wrapped = wrapped
        self._tls = tls
        self._clock = clock
        self._timeout = timeout
        self._ready = ready
        self._xid = rng.getrandbits(24)
        self._timer: IDelayedCall | None = None
        self._tls_started = False
        self._inner: IProtocol | None = None
        self._error: StartTLSError | None = None
        self._address: IAddress | None = None

    def connectionMade(self) -> None:
        """RFC 7653 8.2: STARTTLS, without options, is the first message on the connection."""
        assert self.transport is not None
        self._address = self.transport.getPeer()
        self._timer = self._clock.callLater(self._timeout, self._no_answer)
        if self._direct:
            self._tls_started = True
            self.transport.startTLS(self._tls)  # type: ignore[attr-defined]
            return
        self.sendString(Message(MessageType.STARTTLS, self._xid).encode())

    def _no_answer(self) -> None:
        self._timer = None
        what = "TLS handshake" if self._tls_started else "answer to STARTTLS"
        self._fail(StartTLSError(f"no {what} within {self._timeout:g} s"))

    def _fail(self, error: StartTLSError) -> None:
        """RFC 7653 8.2: in every failure case the requestor closes the TCP connection."""
        if self._error is None:
            self._error = error
        abort_connection(self.transport)

    def cancel(self) -> None:
        """The caller gave up before TLS was up: stop the timer, close the connection."""
        self._stop_timer()
        self._fail(StartTLSError("cancelled"))

    def _stop_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def dataReceived(self, data: bytes) -> None:
        """Frames until TLS is up; after the handshake, everything goes to the inner protocol."""
        if self._inner is not None:
            self._inner.dataReceived(data)
        elif not self._tls_started:
            super().dataReceived(data)

    def lengthLimitExceeded(self, length: int) -> None:
        """A 2-octet size cannot exceed the limit; close should it happen."""
        self._fail(StartTLSError(f"frame of {length} octets"))

    def stringReceived(self, frame: bytes) -> None:
        """The answer to STARTTLS: a REPLY (7) with our transaction-id."""
        if self._tls_started or self._error is not None:
            return
        try:
            message = decode_message(frame)
        except WireError as error:
            self._fail(StartTLSError(f"undecodable answer to STARTTLS: {error}"))
            return
        if (
            not isinstance(message, Message)
            or message.msg_type != MessageType.REPLY
            or message.transaction_id != self._xid
        ):
            self._fail(StartTLSError("the server did not answer STARTTLS with a REPLY"))
            return
        status = message.option(StatusCodeOption)
        if status is not None and status.status != StatusCode.Success:
            name = rfc_name(status.status, StatusCode)
            detail = f": {status.message}" if status.message else ""
            self._fail(TLSConnectionRefused(f"the server refused STARTTLS ({name}{detail})"))
            return
        # A REPLY without a status code: negotiate TLS on this connection.
        self._tls_started = True
        assert self.transport is not None
        self.transport.startTLS(self._tls)  # type: ignore[attr-defined]

    def handshakeCompleted(self) -> None:
        """TLS is up: connect the caller's protocol over it."""
        self._stop_timer()
        if self._error is not None:
            return
        inner = self._wrapped.buildProtocol(self._address)  # type: ignore[arg-type]
        if inner is None:
            self._fail(StartTLSError("the protocol factory refused the connection"))
            return
        self._inner = inner
        inner.makeConnection(self.transport)  # type: ignore[arg-type]
        ready, self._ready = self._ready, Deferred()
        ready.callback(inner)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        """Report a failure to the connect Deferred, or pass the loss to the inner protocol."""
        self._stop_timer()
        if self._inner is not None:
            self._inner.connectionLost(reason)
            return
        error = self._error
        if error is None:
            cause = reason.getErrorMessage() or type(reason.value).__name__
            if self._tls_started:
                error = StartTLSError(f"the TLS handshake failed: {cause}")
            else:
                error = StartTLSError(f"the server closed the connection after STARTTLS: {cause}")
        if not self._ready.called:
            self._ready.errback(error)


@implementer(IStreamClientEndpoint)
class StartTLSEndpoint:
    """
    An endpoint that connects C{wrapped}, negotiates TLS with STARTTLS (RFC 7653 8.2) and
    only then connects the caller's protocol, over TLS.

    The connect Deferred fails with L{TLSConnectionRefused} when the server answers with a
    status code, and with L{StartTLSError} when it does not answer within C{timeout}, closes
    the connection, or the handshake fails (a bad certificate on either side); the TCP
    connection is then closed.
    """

    #: Start TLS at connect instead of sending STARTTLS (L{DirectTLSEndpoint}).
    _direct = False

    def __init__(
        self,
        wrapped: IStreamClientEndpoint,
        tls: IOpenSSLClientConnectionCreator,
        clock: IReactorTime,
        timeout: float = BULK_LQ_CONN_TIMEOUT,
        rng: random.Random | None = None,
    ) -> None:
        self._wrapped = wrapped
        self._tls = tls
        self._clock = clock
        self._timeout = timeout
        self._random = rng or random.Random()

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        """
        Connect, STARTTLS, handshake; fires with the caller's protocol. Cancelling it
        (a connect timeout, a requestor stopping) before then closes the connection and
        stops the STARTTLS timer.
        """
        built: list[_StartTLSProtocol] = []

        def cancel(ready: Deferred[IProtocol]) -> None:
            for protocol in built:
                protocol.cancel()

        ready: Deferred[IProtocol] = Deferred(cancel)

        def build() -> _StartTLSProtocol:
            protocol = _StartTLSProtocol(
                protocolFactory,
                self._tls,
                self._clock,
                timeout=self._timeout,
                ready=ready,
                rng=self._random,
                direct=self._direct,
            )
            built.append(protocol)
            return protocol

        factory = BuildingFactory(build)
        connecting: Deferred[Any] = self._wrapped.connect(factory)

        def connected(protocol: Any) -> Deferred[IProtocol]:
            return ready

        return connecting.addCallback(connected)


@implementer(IStreamClientEndpoint)
class DirectTLSEndpoint(StartTLSEndpoint):
    """
    An endpoint for a server's C{ssl:} listener: connects C{wrapped} and starts TLS at
    once (no STARTTLS); the caller's protocol is connected only once the handshake has
    completed, so the connect Deferred fails with L{StartTLSError} when the handshake does
    not complete within C{timeout} or fails (a plain port, a bad certificate), as with
    L{StartTLSEndpoint}. Unlike C{wrapClientTLS}, a failed handshake is then told apart
    from a connection lost later.
    """

    _direct = True
