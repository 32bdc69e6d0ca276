"""TLS for the parent's HTTPS API: dev certificates and the server SSL context. Side: parent.

Development: on first start a dev CA and a server certificate for 127.0.0.1,
::1 and localhost are generated (ECDSA P-256) into ``STATE_DIR/tls``::

    tls/ca.pem        the dev CA certificate: clients (SDK, CLI, tests) trust this file
    tls/server.pem    the server certificate followed by the CA certificate (the chain)
    tls/server.key    the server private key, mode 0600

Later starts reuse the files while the server certificate is valid; when it has
expired, or a file is missing or unreadable, all three are generated again. The dev
CA's private key is never written anywhere: it signs the one server certificate and
is dropped, so nobody who later reads the state directory can mint certificates that
clients trusting ``ca.pem`` would accept.

Production: ``TLS_CERT_FILE`` / ``TLS_KEY_FILE`` are required (``parent.config``
refuses generated certificates in production).

The server context speaks TLS 1.2 and 1.3 only, with Python's default (forward-secret,
AEAD) cipher selection.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shared.errors import PerfAggError

__all__ = [
    "DEV_HOSTNAMES",
    "TlsError",
    "TlsFiles",
    "ensure_dev_certificates",
    "server_ssl_context",
]

DEV_HOSTNAMES = ("localhost", "127.0.0.1", "::1")
"""Names the dev server certificate is valid for."""

_CA_LIFETIME = dt.timedelta(days=3650)
# 397 days: the longest lifetime browsers accept for a server certificate.
_SERVER_LIFETIME = dt.timedelta(days=397)
# Regenerate a little before expiry so a start never hands out an almost-dead cert.
_RENEW_MARGIN = dt.timedelta(days=7)


class TlsError(PerfAggError):
    """TLS files are missing, unreadable or unusable; the message names the file."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsFiles:
    """Where the certificate chain and key are; ``ca_file`` only for generated dev files."""

    cert_file: Path
    key_file: Path
    ca_file: Path | None = None


def ensure_dev_certificates(tls_dir: Path, *, now: dt.datetime | None = None) -> TlsFiles:
    """Return the dev TLS files in ``tls_dir``, generating them if absent or expired."""
    now = now or dt.datetime.now(dt.UTC)
    files = TlsFiles(
        cert_file=tls_dir / "server.pem",
        key_file=tls_dir / "server.key",
        ca_file=tls_dir / "ca.pem",
    )
    if _reusable(files, now):
        return files
    tls_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca_pem, cert_pem, key_pem = _generate(now)
    # The key first and the CA last: a crash in between leaves an incomplete set,
    # which _reusable refuses, so the next start regenerates everything.
    _write_atomic(files.key_file, key_pem, mode=0o600)
    _write_atomic(files.cert_file, cert_pem + ca_pem, mode=0o644)
    assert files.ca_file is not None
    _write_atomic(files.ca_file, ca_pem, mode=0o644)
    return files


def server_ssl_context(files: TlsFiles) -> ssl.SSLContext:
    """An SSL context serving ``files``: TLS 1.2+ only, no client certificates."""
    for path in (files.cert_file, files.key_file):
        if not path.is_file():
            raise TlsError(f"TLS file not found: {path}")
    mode = files.key_file.stat().st_mode
    if mode & (stat.S_IROTH | stat.S_IWOTH):
        # Fail closed: a world-readable private key is already compromised.
        raise TlsError(f"TLS key file {files.key_file} is readable by other users")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(files.cert_file, files.key_file)
    except (ssl.SSLError, OSError, ValueError) as exc:
        # The file contents are not echoed; the library reason names the problem.
        raise TlsError(
            f"cannot load TLS certificate {files.cert_file} / key {files.key_file} "
            f"({type(exc).__name__})"
        ) from None
    return context


def _reusable(files: TlsFiles, now: dt.datetime) -> bool:
    paths = (files.cert_file, files.key_file, files.ca_file)
    if not all(path is not None and path.is_file() for path in paths):
        return False
    try:
        cert = x509.load_pem_x509_certificate(files.cert_file.read_bytes())
        key = serialization.load_pem_private_key(files.key_file.read_bytes(), password=None)
    except (ValueError, OSError, TypeError):
        return False
    if cert.public_key() != key.public_key():
        return False
    return cert.not_valid_before_utc <= now < cert.not_valid_after_utc - _RENEW_MARGIN


def _generate(now: dt.datetime) -> tuple[bytes, bytes, bytes]:
    """A fresh dev CA and server certificate; returns (ca PEM, server cert PEM, key PEM)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "perf-aggregator development"),
            x509.NameAttribute(NameOID.COMMON_NAME, "perf-aggregator dev CA"),
        ]
    )
    start = now - dt.timedelta(minutes=5)  # tolerate small clock skew between processes
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(now + _CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ("127.0.0.1", "::1")]
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(now + _SERVER_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = server_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return ca_cert.public_bytes(pem), server_cert.public_bytes(pem), key_pem


def _write_atomic(path: Path, data: bytes, *, mode: int) -> None:
    """Write ``data`` to a new file created with ``mode``, then rename it over ``path``."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    # O_EXCL + mode at creation: the key is never readable by others, not even briefly.
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, mode)  # umask may have removed bits we asked for
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise
