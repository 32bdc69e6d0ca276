"""The client SDK without a full stack: CryptoHelper functions, roots, and SyncSecureClient.

Attestation documents come from the real NSM simulator (``enclave.nsm_simulator``).
Where HTTP is needed, ``FakeParent`` stands in for the *untrusted* parent: a real aiohttp
HTTPS server (trustme certificate) that serves simulator quotes and records what it
receives, so a test can prove that nothing reached it. The SDK against the real parent
and enclave is in tests/e2e/test_cli_e2e.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding

from enclave.nsm import NsmClient
from enclave.nsm_simulator import NsmSimulator
from shared import client as client_module
from shared.attestation import (
    AWS_NITRO_ROOT_G1_DER,
    EnclaveKeys,
    encode_user_data,
    pcrs_to_json,
)
from shared.client import (
    AttestationFailed,
    ClientError,
    Quote,
    SecureClient,
    SyncSecureClient,
    Unreachable,
    encrypt_credentials,
    load_root,
    verify_attestation,
)
from shared.encoding import b64encode
from shared.envelope import Envelope, EnvelopeOpener, open_credentials
from shared.ids import new_session_id

PCRS = {index: hashlib.sha384(f"test pcr {index}".encode()).digest() for index in (0, 1, 2)}
OTHER_PCRS = {0: hashlib.sha384(b"some other enclave image").digest()}
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class FakeParent:
    """An HTTPS stand-in for the untrusted parent: simulator quotes, every request logged."""

    base_url: str
    ca_file: Path
    root_pem: Path
    root_der: bytes
    pcrs_file: Path
    opener: EnvelopeOpener
    requests: list[str] = field(default_factory=list)
    opened: list[dict[str, Any]] = field(default_factory=list)


@contextlib.contextmanager
def running_fake_parent(directory: Path) -> Iterator[FakeParent]:
    """Start a FakeParent on 127.0.0.1 in a thread of its own; stop it on exit."""
    device = NsmSimulator(directory / "nsm", PCRS)
    nsm = NsmClient(device)
    opener = EnvelopeOpener.generate()
    signing_key = Ed25519PrivateKey.generate()
    keys = EnclaveKeys(
        x25519_public=opener.public_keys().x25519,
        ed25519_public=signing_key.public_key().public_bytes_raw(),
    )
    ca = trustme.CA()
    ca_file = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    pcrs_file = directory / "pcrs.json"
    pcrs_file.write_text(json.dumps(pcrs_to_json(PCRS)))
    fake = FakeParent(
        base_url="",
        ca_file=ca_file,
        root_pem=device.root_pem_path,
        root_der=device.root_der,
        pcrs_file=pcrs_file,
        opener=opener,
    )

    @web.middleware
    async def log(request: web.Request, handler: Any) -> web.StreamResponse:
        fake.requests.append(f"{request.method} {request.path}")
        return await handler(request)

    async def quote(request: web.Request) -> web.Response:
        nonce = bytes.fromhex(request.query["nonce"])
        document = nsm.attestation(user_data=encode_user_data(keys), nonce=nonce)
        return web.json_response(
            {
                "quote": b64encode(document),
                "enclave_pubkey": b64encode(keys.x25519_public),
                "signing_pubkey": b64encode(keys.ed25519_public),
                "image_hash": PCRS[0].hex(),
                "pcrs": pcrs_to_json(PCRS),
                "nonce": nonce.hex(),
                "pq_pubkey": None,
            }
        )

    async def submit(request: web.Request) -> web.Response:
        envelope = Envelope.from_wire(await request.json())
        credentials = open_credentials(opener, envelope)
        fake.opened.append({"exchange": credentials.exchange, "metadata": dict(envelope.metadata)})
        expires = datetime.now(UTC) + timedelta(hours=1)
        return web.json_response(
            {"session_id": new_session_id(), "expires_at": expires.isoformat()}, status=201
        )

    app = web.Application(middlewares=[log])
    app.router.add_get("/attestation/quote", quote)
    app.router.add_post("/enclave/submit_key", submit)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, access_log=None)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    loop.run_until_complete(site.start())
    fake.base_url = f"https://127.0.0.1:{runner.addresses[0][1]}"
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.run_until_complete(runner.cleanup())
        loop.close()


@pytest.fixture
def parent(tmp_path: Path) -> Iterator[FakeParent]:
    """A running FakeParent."""
    with running_fake_parent(tmp_path) as fake:
        yield fake


@pytest.fixture(scope="module")
def simulator(tmp_path_factory: pytest.TempPathFactory) -> tuple[NsmClient, bytes]:
    """An NSM simulator with PCRS and the DER of its root."""
    directory = tmp_path_factory.mktemp("nsm")
    device = NsmSimulator(directory, PCRS)
    return NsmClient(device), device.root_der


def user_data() -> tuple[bytes, EnclaveKeys]:
    """user_data for fresh enclave keys, and the keys."""
    keys = EnclaveKeys(
        x25519_public=EnvelopeOpener.generate().public_keys().x25519,
        ed25519_public=Ed25519PrivateKey.generate().public_key().public_bytes_raw(),
    )
    return encode_user_data(keys), keys


# --------------------------------------------------------------------------- CryptoHelper


def test_verify_attestation_returns_the_keys_inside_the_document(
    simulator: tuple[NsmClient, bytes],
) -> None:
    """A simulator document with the pinned PCRs verifies; its keys are the ones in user_data."""
    nsm, root_der = simulator
    data, keys = user_data()
    nonce = os.urandom(32)
    document = nsm.attestation(user_data=data, nonce=nonce)
    quote = verify_attestation(document, nonce, PCRS, root_der=root_der)
    assert quote.enc_public == keys.x25519_public
    assert quote.sig_public == keys.ed25519_public
    assert quote.pcr0 == PCRS[0].hex()
    # The quote's base64 form (as GET /attestation/quote serves it) verifies the same way.
    again = verify_attestation(b64encode(document), nonce, PCRS, root_der=root_der)
    assert again.enc_public == keys.x25519_public


@pytest.mark.parametrize(
    ("change", "reason", "message"),
    [
        ("pcrs", "pcr-mismatch", "pcr-mismatch"),
        ("nonce", "nonce", "nonce"),
        ("root", "root", "root"),
        ("late", "stale", "stale"),
        ("base64", "structure", "not valid base64"),
    ],
)
def test_verify_attestation_refuses_with_the_reason(
    simulator: tuple[NsmClient, bytes], change: str, reason: str, message: str
) -> None:
    """Wrong PCRs, nonce, root, a stale document or bad base64 each fail with their reason."""
    nsm, root_der = simulator
    nonce = os.urandom(32)
    document: bytes | str = nsm.attestation(user_data=user_data()[0], nonce=nonce)
    kwargs: dict[str, Any] = {"root_der": root_der}
    expected, checked_nonce = PCRS, nonce
    if change == "pcrs":
        expected = OTHER_PCRS
    elif change == "nonce":
        checked_nonce = os.urandom(32)
    elif change == "root":
        kwargs = {}  # the default root: AWS Nitro root G1
    elif change == "late":
        kwargs["now"] = datetime.now(UTC) + timedelta(minutes=10)
    else:
        document = "not base64!"
    with pytest.raises(AttestationFailed) as info:
        verify_attestation(document, checked_nonce, expected, **kwargs)
    assert info.value.reason == reason
    assert message in str(info.value)


def test_verify_attestation_needs_expected_pcrs(simulator: tuple[NsmClient, bytes]) -> None:
    """There is no way to verify without pinned PCRs (fail closed)."""
    nsm, root_der = simulator
    document = nsm.attestation(user_data=user_data()[0], nonce=b"n")
    with pytest.raises(ValueError, match="expected PCRs"):
        verify_attestation(document, b"n", {}, root_der=root_der)


def test_encrypt_credentials_opens_in_the_enclave_only(simulator: tuple[NsmClient, bytes]) -> None:
    """The envelope opens with the attested key to the same credentials, and not with another."""
    nsm, root_der = simulator
    opener = EnvelopeOpener.generate()
    keys = EnclaveKeys(
        x25519_public=opener.public_keys().x25519,
        ed25519_public=Ed25519PrivateKey.generate().public_key().public_bytes_raw(),
    )
    nonce = os.urandom(16)
    document = nsm.attestation(user_data=encode_user_data(keys), nonce=nonce)
    quote = verify_attestation(document, nonce, PCRS, root_der=root_der)
    envelope = encrypt_credentials(
        quote, exchange="kraken", api_key="k-123", api_secret="s-456", label="desk", ttl=600
    )
    wire = envelope.to_wire()
    assert "s-456" not in json.dumps(wire)
    credentials = open_credentials(opener, Envelope.from_wire(wire))
    assert (credentials.exchange, credentials.api_key, credentials.api_secret) == (
        "kraken",
        "k-123",
        "s-456",
    )
    assert {k: wire["metadata"][k] for k in ("exchange", "label", "ttl")} == {
        "exchange": "kraken",
        "label": "desk",
        "ttl": 600,
    }
    with pytest.raises(Exception, match="could not be opened"):
        open_credentials(EnvelopeOpener.generate(), Envelope.from_wire(wire))


def test_encrypt_credentials_takes_only_a_verified_quote() -> None:
    """A bare key is refused: only keys from a verified document can be used."""
    with pytest.raises(TypeError, match="verified Quote"):
        encrypt_credentials(
            os.urandom(32),  # type: ignore[arg-type]
            exchange="binance",
            api_key="k",
            api_secret="s",
        )


# --------------------------------------------------------------------------- roots


def test_load_root_reads_pem_der_and_the_builtin(tmp_path: Path) -> None:
    """root= accepts 'aws', a PEM file and a DER file; other files are refused by name."""
    assert load_root("aws") == AWS_NITRO_ROOT_G1_DER
    certificate = x509.load_der_x509_certificate(AWS_NITRO_ROOT_G1_DER)
    pem, der, junk = tmp_path / "root.pem", tmp_path / "root.der", tmp_path / "junk.pem"
    pem.write_bytes(certificate.public_bytes(Encoding.PEM))
    der.write_bytes(AWS_NITRO_ROOT_G1_DER)
    junk.write_text("hello")
    assert load_root(pem) == load_root(der) == AWS_NITRO_ROOT_G1_DER
    with pytest.raises(ValueError, match=r"junk\.pem is not a PEM or DER"):
        load_root(junk)
    with pytest.raises(ValueError, match="cannot read"):
        load_root(tmp_path / "missing.pem")


def test_secure_client_refuses_ambiguous_or_unsafe_configuration() -> None:
    """root and root_der together, plain http, and a missing CA file are refused up front."""
    with pytest.raises(ValueError, match="not both"):
        SecureClient("https://x", expected_pcrs=PCRS, root="aws", root_der=AWS_NITRO_ROOT_G1_DER)
    with pytest.raises(ValueError, match="https://"):
        SecureClient("http://x", expected_pcrs=PCRS)
    with pytest.raises(ValueError, match="CA file"):
        SecureClient("https://x", expected_pcrs=PCRS, ca_file="/nonexistent/ca.pem")


# --------------------------------------------------------------------------- sync client


def sync_client(parent: FakeParent, pcrs: dict[int, bytes] = PCRS) -> SyncSecureClient:
    """A SyncSecureClient pinned to the fake parent's simulator root (root= as a PEM path)."""
    return SyncSecureClient(
        parent.base_url, expected_pcrs=pcrs, root=parent.root_pem, ca_file=parent.ca_file
    )


def test_sync_client_registers_through_a_verified_quote(parent: FakeParent) -> None:
    """register() attests then submits an envelope that the attested key opens."""
    with sync_client(parent) as client:
        quote = client.attest()
        registration = client.register(
            exchange="binance", api_key="key", api_secret="secret", label="sync", ttl=120
        )
    assert isinstance(quote, Quote)
    assert client.quote is not None
    assert registration.owner_key is not None
    [opened] = parent.opened
    assert opened["exchange"] == "binance"
    assert (opened["metadata"]["label"], opened["metadata"]["ttl"]) == ("sync", 120)
    assert parent.requests.count("POST /enclave/submit_key") == 1


def test_sync_client_sends_nothing_when_the_pcrs_differ(parent: FakeParent) -> None:
    """An enclave with other PCRs is refused before any credential is encrypted or sent."""
    with sync_client(parent, OTHER_PCRS) as client, pytest.raises(AttestationFailed) as info:
        client.register(exchange="binance", api_key="key", api_secret="secret")
    assert info.value.reason == "pcr-mismatch"
    assert parent.requests == ["GET /attestation/quote"]
    assert parent.opened == []


def test_sync_client_works_inside_a_running_event_loop(parent: FakeParent) -> None:
    """Called from async code (a notebook, a GUI), the sync client still answers."""

    async def inside() -> str:
        with sync_client(parent) as client:
            return client.attest().pcr0

    assert asyncio.run(inside()) == PCRS[0].hex()


def test_sync_client_works_from_a_plain_script(parent: FakeParent) -> None:
    """A script with no event loop of its own attests and exits cleanly (no thread left)."""
    script = (
        "import json, sys, threading\n"
        "from shared.attestation import pcrs_from_json\n"
        "from shared.client import SyncSecureClient\n"
        "url, pcrs, root, ca = sys.argv[1:]\n"
        "client = SyncSecureClient(url, expected_pcrs=pcrs_from_json(json.load(open(pcrs))),\n"
        "                          root=root, ca_file=ca)\n"
        "print(client.attest().pcr0)\n"
        "client.close()\n"
        "print(threading.active_count())\n"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            parent.base_url,
            str(parent.pcrs_file),
            str(parent.root_pem),
            str(parent.ca_file),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [PCRS[0].hex(), "1"]


def test_sync_client_reports_an_unreachable_server() -> None:
    """Nothing listening: Unreachable, with the URL and the reason."""
    url = f"https://127.0.0.1:{free_port()}"
    with SyncSecureClient(url, expected_pcrs=PCRS) as client, pytest.raises(Unreachable) as info:
        client.attest()
    assert url in str(info.value)
    assert "cannot connect" in str(info.value)


def test_sync_client_refuses_an_untrusted_certificate(parent: FakeParent) -> None:
    """Without the server's CA the TLS handshake fails as Unreachable, naming ca_file."""
    client = SyncSecureClient(parent.base_url, expected_pcrs=PCRS, root=parent.root_pem)
    with client, pytest.raises(Unreachable, match="not trusted"):
        client.attest()
    assert parent.requests == []


def test_sync_client_after_close_says_so(parent: FakeParent) -> None:
    """close() is idempotent; a call after it raises ClientError instead of hanging."""
    client = sync_client(parent)
    client.close()
    client.close()
    with pytest.raises(ClientError, match="closed"):
        client.attest()


def test_sdk_modules_import_no_server_dependencies() -> None:
    """shared.client, shared.keystore and shared.cli load no psycopg, ccxt, parent or enclave."""
    code = (
        "import sys, shared.client, shared.keystore, shared.cli\n"
        "print('\\n'.join(sorted(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    loaded = {name.split(".")[0] for name in result.stdout.split()}
    assert not loaded & {"psycopg", "ccxt", "parent", "enclave", "pgserver", "boto3"}


def test_public_api_is_exactly_all() -> None:
    """``shared.client.__all__`` lists every public name of the module and nothing else."""
    public = {
        name
        for name, value in vars(client_module).items()
        if not name.startswith("_") and getattr(value, "__module__", None) == client_module.__name__
    }
    assert public <= set(client_module.__all__)
    assert all(hasattr(client_module, name) for name in client_module.__all__)
