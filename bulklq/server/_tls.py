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

    The certificate file may hold intermediate CA certificates after the server's own;
    they are sent in the handshake. The key and certificates are given to Twisted as
    C{cryptography} objects (pyOpenSSL's own objects are deprecated there).

    @raise ValueError: a file that cannot be read or parsed, or a key that is not the
        certificate's, named in a one-line message.
    """
    from cryptography import x509  # noqa: PLC0415 - needs the tls extra
    from cryptography.exceptions import UnsupportedAlgorithm  # noqa: PLC0415
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
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
        own, *chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise ValueError(f"bad TLS certificate {str(cert)!r}: not a PEM certificate") from None
    try:
        private_key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise ValueError(
            f"bad TLS key {str(key)!r}: encrypted (give it without a passphrase)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError(f"bad TLS key {str(key)!r}: not a PEM private key") from None
    public = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if private_key.public_key().public_bytes(*public) != own.public_key().public_bytes(*public):
        raise ValueError(f"bad TLS key {str(key)!r}: does not match the certificate {str(cert)!r}")
    try:
        authority = ssl.Certificate.loadPEM(ca_pem)
    except Exception as error:
        raise ValueError(f"bad TLS CA {str(ca)!r}: {error}") from None
    return ssl.CertificateOptions(
        # pyOpenSSL (and so Twisted) takes cryptography objects; Twisted's hints still
        # name the deprecated pyOpenSSL types.
        privateKey=private_key,  # type: ignore[arg-type]
        certificate=own,  # type: ignore[arg-type]
        extraCertChain=chain,  # type: ignore[arg-type]
        trustRoot=ssl.trustRootFromCertificates([authority]),
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
    )
