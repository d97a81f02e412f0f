"""
TLS server options for STARTTLS and C{ssl:} listeners (RFC 7653 sections 8.2 and 9.1):
mutual authentication against a configured CA, TLS 1.2 or later (RFC 7525).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

__all__ = ["TLSFileError", "TLSFiles", "load_tls_files", "tls_options"]


class TLSFileError(ValueError):
    """
    One of the three TLS files is unusable.

    @ivar which: C{"cert"}, C{"key"} or C{"ca"}: the file at fault.
    @ivar problem: what is wrong with it, naming its path (one line).
    """

    def __init__(self, which: str, problem: str) -> None:
        self.which = which
        self.problem = problem
        super().__init__(f"TLS {which}: {problem}")


class TLSFiles(NamedTuple):
    """The parsed TLS material (C{cryptography} objects)."""

    certificate: Any
    chain: list[Any]
    private_key: Any
    authority: Any


def _read(path: Path, which: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise TLSFileError(which, f"{str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise TLSFileError(which, f"{str(path)!r} is a directory, not a PEM file") from None
    except OSError as error:
        raise TLSFileError(which, f"cannot read {str(path)!r}: {error.strerror}") from None


def load_tls_files(cert: Path | str, key: Path | str, ca: Path | str) -> TLSFiles:
    """
    Read and check the server's certificate (its own first, then any intermediates), its
    private key (unencrypted, matching the certificate) and the one CA certificate that
    signs the requestors' certificates.

    @raise TLSFileError: naming the file at fault and the problem.
    @raise ImportError: without C{cryptography} (the C{tls} extra).
    """
    from cryptography import x509  # noqa: PLC0415 - needs the tls extra
    from cryptography.exceptions import UnsupportedAlgorithm  # noqa: PLC0415
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    cert, key, ca = Path(cert), Path(key), Path(ca)
    cert_pem, key_pem, ca_pem = _read(cert, "cert"), _read(key, "key"), _read(ca, "ca")
    try:
        own, *chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise TLSFileError("cert", f"{str(cert)!r} is not a PEM certificate") from None
    try:
        private_key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise TLSFileError(
            "key", f"{str(key)!r} is encrypted; give the key without a passphrase"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise TLSFileError("key", f"{str(key)!r} is not a PEM private key") from None
    public = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if private_key.public_key().public_bytes(*public) != own.public_key().public_bytes(*public):
        raise TLSFileError("key", f"{str(key)!r} does not match the certificate {str(cert)!r}")
    try:
        authorities = x509.load_pem_x509_certificates(ca_pem)
    except ValueError:
        raise TLSFileError("ca", f"{str(ca)!r} is not a PEM certificate") from None
    if len(authorities) != 1:
        # Twisted's loader would silently trust only the first one.
        raise TLSFileError(
            "ca",
            f"{str(ca)!r} holds {len(authorities)} certificates; give the one CA "
            f"that signs the requestors' certificates",
        )
    return TLSFiles(own, chain, private_key, authorities[0])


def tls_options(cert: Path | str, key: Path | str, ca: Path | str) -> Any:
    """
    Server TLS options: this server's certificate and key (PEM files), and the CA (PEM)
    whose certificates requestors must present (a client certificate is required).

    The certificate file may hold intermediate CA certificates after the server's own;
    they are sent in the handshake. The key and certificates are given to Twisted as
    C{cryptography} objects (pyOpenSSL's own objects are deprecated there).

    @raise TLSFileError: (a C{ValueError}) a file that cannot be read or parsed, or a key
        that is not the certificate's, named in a one-line message.
    """
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from twisted.internet import ssl  # noqa: PLC0415 - needs pyOpenSSL (the tls extra)

    files = load_tls_files(cert, key, ca)
    authority = ssl.Certificate.loadPEM(files.authority.public_bytes(serialization.Encoding.PEM))
    own, chain, private_key = files.certificate, files.chain, files.private_key
    return ssl.CertificateOptions(
        # pyOpenSSL (and so Twisted) takes cryptography objects; Twisted's hints still
        # name the deprecated pyOpenSSL types (TLSFiles holds them as Any).
        privateKey=private_key,
        certificate=own,
        extraCertChain=chain,
        trustRoot=ssl.trustRootFromCertificates([authority]),
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
    )
