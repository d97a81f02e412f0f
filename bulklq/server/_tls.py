"""
TLS server options for STARTTLS and C{ssl:} listeners (RFC 7653 sections 8.2 and 9.1):
mutual authentication against a configured CA, TLS 1.2 or later (RFC 7525), and optionally
an allow-list of the requestor certificates accepted (RFC 7653 section 9.1: "DHCPv6 servers
MUST be configurable with regard to which requestors they will communicate").
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from typing import Any, NamedTuple

import attrs
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from zope.interface import implementer

__all__ = [
    "RequestorAllowList",
    "TLSFileError",
    "TLSFiles",
    "load_tls_files",
    "tls_options",
]


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


_FINGERPRINT = re.compile(r"sha256:((?:[0-9a-f]{2}:?){31}[0-9a-f]{2})", re.IGNORECASE)
_DNS_NAME = re.compile(r"[A-Za-z0-9_*](?:[A-Za-z0-9_.*-]{0,251}[A-Za-z0-9_])?")


@attrs.frozen
class RequestorAllowList:
    """
    Which requestor certificates are accepted, beyond being signed by the configured CA.

    A certificate is accepted when one of its identities is listed: its SHA-256
    fingerprint (of the DER certificate), an IP address in its subjectAltName, or a DNS
    name in its subjectAltName or the common name of its subject (names compare without
    regard to case; no wildcards). An empty list accepts every certificate from the CA.

    @ivar fingerprints: SHA-256 digests of accepted certificates.
    @ivar addresses: accepted subjectAltName IP addresses.
    @ivar names: accepted DNS names and common names, lower case.
    """

    fingerprints: frozenset[bytes] = frozenset()
    addresses: frozenset[IPv4Address | IPv6Address] = frozenset()
    names: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, patterns: Iterable[str]) -> RequestorAllowList:
        """
        Read C{sha256:HEX} fingerprints (colons between octets allowed), IP addresses and
        DNS or common names.

        @raise ValueError: a pattern that is none of those, named in one line.
        """
        fingerprints: set[bytes] = set()
        addresses: set[IPv4Address | IPv6Address] = set()
        names: set[str] = set()
        for raw in patterns:
            pattern = raw.strip()
            if pattern.lower().startswith("sha256:"):
                match = _FINGERPRINT.fullmatch(pattern)
                if match is None:
                    raise ValueError(
                        f"{raw!r}: a fingerprint is sha256: and 32 octets in hex "
                        f"(openssl x509 -noout -fingerprint -sha256)"
                    )
                fingerprints.add(bytes.fromhex(match.group(1).replace(":", "")))
                continue
            try:
                addresses.add(ip_address(pattern))
                continue
            except ValueError:
                pass
            if not _DNS_NAME.fullmatch(pattern) or "*" in pattern:
                raise ValueError(
                    f"{raw!r} is not a sha256: fingerprint, an IP address or a DNS name "
                    f"(wildcards are not accepted)"
                )
            names.add(pattern.lower())
        return cls(frozenset(fingerprints), frozenset(addresses), frozenset(names))

    def __bool__(self) -> bool:
        return bool(self.fingerprints or self.addresses or self.names)

    def allows(self, certificate: Any) -> bool:
        """Whether the C{cryptography} certificate C{certificate} is listed."""
        from cryptography import x509  # noqa: PLC0415 - needs the tls extra
        from cryptography.hazmat.primitives import hashes  # noqa: PLC0415
        from cryptography.x509.oid import NameOID  # noqa: PLC0415

        if certificate.fingerprint(hashes.SHA256()) in self.fingerprints:
            return True
        names = {
            str(attribute.value).lower()
            for attribute in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        }
        addresses: set[Any] = set()
        try:
            extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        except x509.ExtensionNotFound:
            pass
        else:
            names.update(name.lower() for name in extension.value.get_values_for_type(x509.DNSName))
            addresses.update(extension.value.get_values_for_type(x509.IPAddress))
        return not names.isdisjoint(self.names) or not addresses.isdisjoint(self.addresses)


def describe_certificate(certificate: Any) -> str:
    """The subject and SHA-256 fingerprint of a C{cryptography} certificate, for logs."""
    from cryptography.hazmat.primitives import hashes  # noqa: PLC0415

    digest = certificate.fingerprint(hashes.SHA256()).hex(":")
    return f"subject {certificate.subject.rfc4514_string()!r}, sha256:{digest}"


@implementer(IOpenSSLServerConnectionCreator)
class _AllowListedServerOptions:
    """
    Server TLS options that, on top of the CA check of C{options}, refuse during the
    handshake a requestor certificate that C{allow} does not list (RFC 7653 section 9.1:
    the server MUST abort the creation of the TLS connection).
    """

    log = Logger()

    def __init__(self, options: Any, allow: RequestorAllowList) -> None:
        self._options = options
        self.allow = allow

    def serverConnectionForTLS(self, protocol: Any) -> Any:
        """The OpenSSL connection, checking the requestor's certificate against C{allow}."""
        from OpenSSL import SSL  # noqa: PLC0415 - needs the tls extra

        connection = self._options.serverConnectionForTLS(protocol)
        connection.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, self._verify)
        return connection

    def _verify(self, connection: Any, certificate: Any, error: int, depth: int, ok: int) -> bool:
        if not ok:
            return False  # OpenSSL's own chain check against the CA failed
        if depth != 0:
            return True  # the CA and any intermediates: the allow-list names the requestor
        try:
            peer = certificate.to_cryptography()
            if self.allow.allows(peer):
                return True
            described = describe_certificate(peer)
        except Exception as failure:  # an exception must not escape into OpenSSL
            described = f"unreadable certificate ({failure})"
        self.log.warn(
            "TLS: refused requestor certificate not in --tls-requestor: {certificate}",
            certificate=described,
        )
        return False


def tls_options(
    cert: Path | str,
    key: Path | str,
    ca: Path | str,
    requestors: RequestorAllowList | Iterable[str] = (),
) -> Any:
    """
    Server TLS options: this server's certificate and key (PEM files), and the CA (PEM)
    whose certificates requestors must present (a client certificate is required); with
    C{requestors} (a L{RequestorAllowList} or its patterns), only the certificates it lists.

    The certificate file may hold intermediate CA certificates after the server's own;
    they are sent in the handshake. The key and certificates are given to Twisted as
    C{cryptography} objects (pyOpenSSL's own objects are deprecated there).

    @raise TLSFileError: (a C{ValueError}) a file that cannot be read or parsed, or a key
        that is not the certificate's, named in a one-line message.
    @raise ValueError: a requestor pattern that cannot be read.
    """
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from twisted.internet import ssl  # noqa: PLC0415 - needs pyOpenSSL (the tls extra)

    allow = (
        requestors
        if isinstance(requestors, RequestorAllowList)
        else RequestorAllowList.parse(requestors)
    )
    files = load_tls_files(cert, key, ca)
    authority = ssl.Certificate.loadPEM(files.authority.public_bytes(serialization.Encoding.PEM))
    own, chain, private_key = files.certificate, files.chain, files.private_key
    options = ssl.CertificateOptions(
        # pyOpenSSL (and so Twisted) takes cryptography objects; Twisted's hints still
        # name the deprecated pyOpenSSL types (TLSFiles holds them as Any).
        privateKey=private_key,
        certificate=own,
        extraCertChain=chain,
        trustRoot=ssl.trustRootFromCertificates([authority]),
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
    )
    return _AllowListedServerOptions(options, allow) if allow else options
