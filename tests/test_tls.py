"""Dev TLS files (generated once, reused, key 0600, valid for 127.0.0.1) and the SSL context."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509

from parent.tls import TlsError, TlsFiles, ensure_dev_certificates, server_ssl_context


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_files_are_generated_once_and_reused(tmp_path: Path) -> None:
    """The first start writes ca.pem, server.pem, server.key; the next start reuses them."""
    first = ensure_dev_certificates(tmp_path / "tls")
    assert first.ca_file is not None
    names = sorted(p.name for p in (tmp_path / "tls").iterdir())
    assert names == ["ca.pem", "server.key", "server.pem"]  # no CA key, no temp files
    before = {p: p.read_bytes() for p in (first.cert_file, first.key_file, first.ca_file)}
    second = ensure_dev_certificates(tmp_path / "tls")
    assert second == first
    assert {p: p.read_bytes() for p in before} == before


def test_key_file_is_private(tmp_path: Path) -> None:
    """The server key is mode 0600 and the directory 0700."""
    files = ensure_dev_certificates(tmp_path / "tls")
    assert stat.S_IMODE(files.key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "tls").stat().st_mode) == 0o700


def test_certificate_is_valid_for_loopback(tmp_path: Path) -> None:
    """The server certificate names 127.0.0.1, ::1 and localhost and is issued by ca.pem."""
    files = ensure_dev_certificates(tmp_path / "tls")
    assert files.ca_file is not None
    cert, ca = _cert(files.cert_file), _cert(files.ca_file)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    assert ipaddress.ip_address("::1") in san.get_values_for_type(x509.IPAddress)
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    cert.verify_directly_issued_by(ca)
    now = dt.datetime.now(dt.UTC)
    assert cert.not_valid_before_utc <= now < cert.not_valid_after_utc


def test_expired_certificate_is_regenerated(tmp_path: Path) -> None:
    """A certificate past its lifetime is replaced (new CA too) at the next start."""
    files = ensure_dev_certificates(tmp_path / "tls")
    old = files.cert_file.read_bytes()
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=400)
    renewed = ensure_dev_certificates(tmp_path / "tls", now=later)
    assert renewed.cert_file.read_bytes() != old
    assert _cert(renewed.cert_file).not_valid_after_utc > later


def test_damaged_files_are_regenerated(tmp_path: Path) -> None:
    """A truncated key makes the next start regenerate a consistent set."""
    files = ensure_dev_certificates(tmp_path / "tls")
    files.key_file.write_bytes(b"-----BEGIN PRIVATE KEY-----\n")
    repaired = ensure_dev_certificates(tmp_path / "tls")
    server_ssl_context(repaired)  # loads: certificate and key match again


async def test_a_tls_client_trusting_the_dev_ca_connects(tmp_path: Path) -> None:
    """A client trusting only ca.pem completes a TLS 1.2+ handshake with 127.0.0.1."""
    files = ensure_dev_certificates(tmp_path / "tls")
    assert files.ca_file is not None
    server = await asyncio.start_server(
        lambda r, w: w.close(), "127.0.0.1", 0, ssl=server_ssl_context(files)
    )
    port = server.sockets[0].getsockname()[1]
    client_ctx = ssl.create_default_context(cafile=str(files.ca_file))
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx)
        tls = writer.get_extra_info("ssl_object")
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
        writer.close()
    finally:
        server.close()
        await server.wait_closed()


def test_server_context_has_a_tls_1_2_floor(tmp_path: Path) -> None:
    """The server context has a TLS 1.2 floor."""
    context = server_ssl_context(ensure_dev_certificates(tmp_path / "tls"))
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2


def test_missing_or_world_readable_files_are_refused(tmp_path: Path) -> None:
    """Configured files that are absent, or a key readable by others, stop the start."""
    files = ensure_dev_certificates(tmp_path / "tls")
    with pytest.raises(TlsError, match="not found"):
        server_ssl_context(TlsFiles(cert_file=tmp_path / "nope.pem", key_file=files.key_file))
    files.key_file.chmod(0o644)
    with pytest.raises(TlsError, match="readable by other users"):
        server_ssl_context(files)


def test_mismatched_key_is_refused(tmp_path: Path) -> None:
    """A certificate with another certificate's key is a clear TlsError, not a crash."""
    one = ensure_dev_certificates(tmp_path / "one")
    two = ensure_dev_certificates(tmp_path / "two")
    with pytest.raises(TlsError, match="cannot load"):
        server_ssl_context(TlsFiles(cert_file=one.cert_file, key_file=two.key_file))
