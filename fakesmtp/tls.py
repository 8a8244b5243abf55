"""Server TLS contexts: from the certificate and key given, or a self-signed one made in memory."""

from __future__ import annotations

import datetime
import os
import ssl
from functools import lru_cache


def server_context(
    hostname: str, cert: str | None = None, key: str | None = None
) -> ssl.SSLContext:
    """An SSLContext for STARTTLS and implicit TLS. Clients are not asked for certificates."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert and key:
        context.load_cert_chain(cert, key)
    else:
        cert_pem, key_pem = _self_signed(hostname)
        _load_from_memory(context, cert_pem, key_pem)
    return context


def _load_from_memory(context: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    # ssl only loads chains from files: write them to a private temporary file, load, delete,
    # so nothing is left behind.
    import tempfile  # (only TLS needs it: a server without TLS starts without it)

    fd, path = tempfile.mkstemp(prefix="fakesmtp-", suffix=".pem")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(cert_pem + key_pem)
        context.load_cert_chain(path)
    finally:
        os.unlink(path)


@lru_cache(maxsize=8)
def _self_signed(hostname: str) -> tuple[bytes, bytes]:
    """A self-signed certificate for ``hostname`` (and localhost, 127.0.0.1), valid for a year."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    alt_names = x509.SubjectAlternativeName(
        [
            x509.DNSName(hostname),
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]
    )
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(alt_names, critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = certificate.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert_pem, key_pem
