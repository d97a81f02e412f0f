"""
TLS server options for STARTTLS and C{ssl:} listeners (RFC 7653 sections 8.2 and 9.1):
mutual authentication against a configured CA, TLS 1.2 or later (RFC 7525).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["tls_options"]


def tls_options(cert: Path | str, key: Path | str, ca: Path | str) -> Any:
    """
    Server TLS options: this server's certificate and key (PEM files), and the CA (PEM)
    whose certificates requestors must present (a client certificate is required).

    @raise ValueError: a file that cannot be read or parsed, named in the message.
    """
    from twisted.internet import ssl  # noqa: PLC0415 - needs pyOpenSSL (the tls extra)

    def read(path: Path | str, what: str) -> bytes:
        try:
            return Path(path).read_bytes()
        except OSError as error:
            raise ValueError(
                f"cannot read the TLS {what} {str(path)!r}: {error.strerror}"
            ) from None

    cert_pem, key_pem, ca_pem = read(cert, "certificate"), read(key, "key"), read(ca, "CA")
    try:
        own = ssl.PrivateCertificate.loadPEM(cert_pem + b"\n" + key_pem)
    except Exception as error:
        raise ValueError(f"bad TLS certificate or key {str(cert)!r}: {error}") from None
    try:
        authority = ssl.Certificate.loadPEM(ca_pem)
    except Exception as error:
        raise ValueError(f"bad TLS CA {str(ca)!r}: {error}") from None
    return ssl.CertificateOptions(
        privateKey=own.privateKey.original,
        certificate=own.original,
        trustRoot=ssl.trustRootFromCertificates([authority]),
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
    )
