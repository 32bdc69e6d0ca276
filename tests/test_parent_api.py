"""The parent's HTTPS API end to end: real TLS, real PostgreSQL, a fake enclave over RPC.

Each test runs the real aiohttp app on 127.0.0.1 with the dev TLS context, a real
aiohttp client trusting the dev CA, the real Store on the embedded PostgreSQL, and the
real EnclaveClient talking over the TCP simulator to an RpcServer whose handler is the
small ``FakeEnclave`` below (it issues session ids, signs reports with a real Ed25519
key, and refuses with any error code on demand).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import os
import re
import socket
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
import structlog
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID
from multidict import CIMultiDictProxy
from psycopg import sql

from enclave.opslog import OpsLog
from enclave.rpc_server import RpcServer
from parent.app import create_app
from parent.config import ParentConfig
from parent.db.errors import StoreUnavailable
from parent.db.store import SealedBlob, Store
from parent.enclave_client import EnclaveClient
from parent.main import serve
from parent.metrics import ApiMetrics
from parent.tls import TlsFiles, ensure_dev_certificates, server_ssl_context
from shared import protocol as p
from shared.attestation import (
    AttestationDocument,
    EnclaveKeys,
    decode_document,
    encode_document,
    encode_user_data,
)
from shared.encoding import b64decode, b64encode
from shared.envelope import Envelope
from shared.ids import new_session_id, session_hash
from shared.io.transport import TcpSimTransport, VsockAddress
from shared.logsetup import configure_logging
from shared.merkle import TreeHead
from shared.sealed_state import REVOCATIONS_MAGIC, STATE_MAGIC, SealedHeader
from shared.signing import sign_payload, verify_payload
from shared.translog import TransparencyLogError, verify_log
from tests.support.postgres import PgDatabase, admin_query, row_counts

ADDRESS = VsockAddress(cid=16, port=5000)
ORIGIN = "https://app.example"
PCR0 = bytes(range(48))
SESSION_TABLES = ("sessions", "credentials", "aggregates", "records")


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- fake enclave


def _attestation_signer() -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    """A P-384 key and a self-signed certificate standing in for the NSM leaf."""
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake-nsm")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA384())
    )
    return key, cert.public_bytes(serialization.Encoding.DER)


@dataclass
class FakeEnclave:
    """Enclave stand-in behind a real RpcServer: canned replies, real signatures."""

    signing_key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    x25519_public: bytes = field(default_factory=lambda: os.urandom(32))
    refusals: dict[type[p.Request], p.ErrorCode] = field(default_factory=dict)
    refuse_commit: bool = False
    expires_override: int | None = None
    pending: dict[str, bool] = field(default_factory=dict)  # session id -> has owner
    live: dict[str, bool] = field(default_factory=dict)
    seq: dict[str, int] = field(default_factory=dict)
    calls: list[p.Request] = field(default_factory=list)
    logs: dict[str, OpsLog] = field(default_factory=dict)  # the real log code, per session
    forge_log_roots: bool = False  # sign heads whose root matches no entries
    seal: bool = False  # replies carry sealed states, as with KMS sealing on
    seal_as_other: bool = False  # ... naming another session (a confused enclave)
    versions: dict[str, int] = field(default_factory=dict)  # session id -> sealed version
    revocations_version: int = 0
    server: RpcServer | None = None

    def __post_init__(self) -> None:
        self._nsm_key, self._nsm_cert = _attestation_signer()

    @property
    def signing_public(self) -> bytes:
        return self.signing_key.public_key().public_bytes_raw()

    async def start(self, transport: TcpSimTransport) -> None:
        self.server = RpcServer(self.handle)
        await self.server.start(transport, ADDRESS)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.close()
            self.server = None

    def calls_of(self, kind: type[p.Request]) -> list[Any]:
        return [call for call in self.calls if isinstance(call, kind)]

    def _sealed(self, session_id: str) -> bytes | None:
        """The session's next sealed state (shape only: header, random nonce/body/tag)."""
        if not self.seal:
            return None
        version = self.versions.get(session_id, 0) + 1
        self.versions[session_id] = version
        named = os.urandom(32) if self.seal_as_other else session_hash(session_id)
        header = SealedHeader(
            magic=STATE_MAGIC,
            session_hash=named,
            version=version,
            expires_at=int(time.time()) + 3600,
        )
        return header.encode() + os.urandom(12 + 100 + 16)

    def _sealed_revocations(self) -> bytes | None:
        if not self.seal:
            return None
        self.revocations_version += 1
        header = SealedHeader(
            magic=REVOCATIONS_MAGIC,
            session_hash=bytes(32),
            version=self.revocations_version,
            expires_at=0,
        )
        return header.encode() + os.urandom(12 + 40 + 16)

    @staticmethod
    def _error(request: p.Request, code: p.ErrorCode, message: str) -> p.ErrorReply:
        return p.ErrorReply(request_id=request.request_id, code=code, message=message)

    async def handle(self, request: p.Request) -> p.Reply:
        self.calls.append(request)
        rid = request.request_id
        code = self.refusals.get(type(request))
        if code is not None:
            return self._error(request, code, f"fake refusal: {code.value}")
        session_id = getattr(request, "session_id", None)
        if (
            session_id is not None
            and not isinstance(request, p.Confirm)
            and session_id not in self.live
        ):
            return self._error(
                request, p.ErrorCode.NOT_FOUND, "unknown, expired or revoked session"
            )
        match request:
            case p.Attest():
                return p.AttestReply(
                    request_id=rid, document=self._document(request.nonce), pq_public=None
                )
            case p.Submit():
                new_id = new_session_id()
                self.pending[new_id] = request.metadata["label"] == "owned"
                expires = self.expires_override or int(time.time()) + request.metadata["ttl"]
                return p.SubmitReply(
                    request_id=rid,
                    session_id=new_id,
                    expires_at=expires,
                    exchange=request.metadata["exchange"],
                    label=request.metadata["label"],
                )
            case p.Confirm():
                if not request.commit and request.session_id in self.live:
                    # Withdrawal of a just-confirmed session (the enclave allows it
                    # before the first report; this fake does not track reports).
                    del self.live[request.session_id]
                    return p.ConfirmReply(request_id=rid, sealed_state=None)
                if request.session_id not in self.pending:
                    return self._error(request, p.ErrorCode.NOT_FOUND, "unknown pending session")
                if request.commit and self.refuse_commit:
                    return self._error(request, p.ErrorCode.UNAVAILABLE, "cannot confirm now")
                has_owner = self.pending.pop(request.session_id)
                if request.commit:
                    self.live[request.session_id] = has_owner
                    opslog = OpsLog(session_hash(request.session_id))
                    opslog.append("submit", at=int(time.time()), data={"exchange": "binance"})
                    self.logs[request.session_id] = opslog
                    return p.ConfirmReply(
                        request_id=rid, sealed_state=self._sealed(request.session_id)
                    )
                return p.ConfirmReply(request_id=rid, sealed_state=None)
            case p.Aggregates():
                seq = self.seq.get(request.session_id, 0) + 1
                self.seq[request.session_id] = seq
                self.logs[request.session_id].append(
                    "report", at=int(time.time()), data={"seq": seq}
                )
                payload: dict[str, Any] = {"pnl": 12.5, "sharpe": 1.2, "volume": 1000}
                payload |= {"trades": 3, "seq": seq, "from": "2026-01-01", "to": "2026-01-02"}
                return p.AggregatesReply(
                    request_id=rid,
                    payload=payload,
                    signature=sign_payload(self.signing_key, payload),
                    merkle_root=hashlib.sha256(b"").hexdigest(),
                    sealed_state=self._sealed(request.session_id),
                )
            case p.SessionMetrics():
                return p.MetricsReply(request_id=rid, metrics={"totals": {"pnl": 12.5}})
            case p.Summary():
                return p.SummaryReply(request_id=rid, summary={"headline": {"trades": 3}})
            case p.Revoke():
                if self.live[request.session_id] and request.proof_signature is None:
                    return self._error(request, p.ErrorCode.FORBIDDEN, "owner proof required")
                del self.live[request.session_id]
                opslog = self.logs.pop(request.session_id)
                opslog.append("revoke", at=int(time.time()), data={"by": "holder"})
                head = opslog.tree_head(now=int(time.time()))
                return p.RevokeReply(
                    request_id=rid,
                    entries=opslog.since(request.log_start, opslog.size),
                    tree_head=head,
                    signature=sign_payload(self.signing_key, head),
                    revocations=self._sealed_revocations(),
                )
            case p.Logs():
                opslog = self.logs[request.session_id]
                head = opslog.tree_head(now=int(time.time()))
                if self.forge_log_roots:
                    head["root_hash"] = "11" * 32
                return p.LogsReply(
                    request_id=rid,
                    entries=opslog.since(request.start, 2),  # small pages: paging is exercised
                    tree_head=head,
                    signature=sign_payload(self.signing_key, head),
                    sealed_state=self._sealed(request.session_id),
                )
            case p.SealRecord():
                return p.SealRecordReply(
                    request_id=rid,
                    record_id=str(uuid.uuid4()),
                    label=request.metadata["label"],
                    sealed=b"\x01" + os.urandom(60),
                )
            case p.UnsealRecord():
                return p.UnsealRecordReply(request_id=rid, envelope=_envelope(purpose="unsealed"))
            case p.Health():
                return p.HealthReply(
                    request_id=rid, status="ok", sessions=len(self.live), uptime_seconds=1, pcr0=""
                )
        return self._error(request, p.ErrorCode.UNSUPPORTED, "not in the fake")

    def _document(self, nonce: bytes) -> bytes:
        keys = EnclaveKeys(x25519_public=self.x25519_public, ed25519_public=self.signing_public)
        doc = AttestationDocument(
            module_id="i-fake-enc0123",
            digest="SHA384",
            timestamp=int(time.time() * 1000),
            pcrs={0: PCR0, 1: bytes(48), 2: b"\x02" * 48},
            certificate=self._nsm_cert,
            cabundle=(self._nsm_cert,),
            user_data=encode_user_data(keys),
            nonce=nonce,
        )
        return encode_document(doc, self._nsm_key)


# --------------------------------------------------------------------------- helpers


def _envelope(**metadata: Any) -> dict[str, Any]:
    """A well-formed (shape-only) envelope with fresh random bytes."""
    return {
        "ephemeral_pub": b64encode(os.urandom(32)),
        "nonce": b64encode(os.urandom(12)),
        "ciphertext": b64encode(os.urandom(48)),
        "tag": b64encode(os.urandom(16)),
        "metadata": metadata,
    }


def credential_envelope(**overrides: Any) -> dict[str, Any]:
    """A credential envelope with valid metadata (overridable)."""
    return _envelope(**({"exchange": "binance", "label": "main", "ttl": 3600} | overrides))


def record_envelope(label: str = "tax-2025") -> dict[str, Any]:
    """A record envelope for POST /api/records."""
    return _envelope(purpose="record", label=label)


class FakeClock:
    """A settable UTC clock for the app (expiry and purge decisions)."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


@dataclass
class Api:
    """A running parent API and the things around it."""

    url: str
    http: aiohttp.ClientSession
    db: PgDatabase
    fake: FakeEnclave
    transport: TcpSimTransport
    clock: FakeClock
    metrics: ApiMetrics
    app: web.Application

    def counts(self) -> dict[str, int]:
        return row_counts(self.db.admin_conninfo)

    async def call(
        self, method: str, path: str, *, json_body: Any = None, **kwargs: Any
    ) -> tuple[int, Any, CIMultiDictProxy[str]]:
        """One request; returns (status, parsed JSON or text, headers)."""
        if json_body is not None:
            kwargs["json"] = json_body
        async with self.http.request(method, self.url + path, **kwargs) as response:
            text = await response.text()
            try:
                body: Any = json.loads(text)
            except ValueError:
                body = text
            return response.status, body, response.headers

    async def submit(self, envelope: dict[str, Any] | None = None) -> str:
        """Submit a credential envelope; return the new session id."""
        status, body, _ = await self.call(
            "POST", "/enclave/submit_key", json_body=envelope or credential_envelope()
        )
        assert status == 201, body
        return str(body["session_id"])


def assert_error(status: int, body: Any, expected_status: int, code: str | None = None) -> None:
    """The API's error shape with the expected status (and code)."""
    assert status == expected_status, body
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    if code is not None:
        assert body["error"]["code"] == code


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """Dev TLS files shared by the module's servers."""
    return ensure_dev_certificates(tmp_path_factory.mktemp("state") / "tls")


@pytest.fixture
def client_ssl(tls_files: TlsFiles) -> ssl.SSLContext:
    """A client context trusting only the dev CA."""
    assert tls_files.ca_file is not None
    return ssl.create_default_context(cafile=str(tls_files.ca_file))


@pytest.fixture
async def fake_enclave() -> AsyncIterator[tuple[FakeEnclave, TcpSimTransport]]:
    """The fake enclave serving RPC on a free simulated-vsock port."""
    transport = TcpSimTransport({ADDRESS: free_port()})
    fake = FakeEnclave()
    await fake.start(transport)
    yield fake, transport
    await fake.stop()


MakeApi = Callable[..., Awaitable[Api]]


@pytest.fixture
async def make_api(
    pg_db: PgDatabase,
    store: Store,
    fake_enclave: tuple[FakeEnclave, TcpSimTransport],
    tls_files: TlsFiles,
    client_ssl: ssl.SSLContext,
) -> AsyncIterator[MakeApi]:
    """Factory: start the API over HTTPS on 127.0.0.1 with config overrides."""
    fake, transport = fake_enclave
    cleanups: list[Callable[[], Awaitable[None]]] = []

    async def start(
        env: dict[str, str] | None = None,
        *,
        session_log: Any = None,
        use_store: Store | None = None,
        run_purge: bool = False,
    ) -> Api:
        config = ParentConfig.from_env(
            {"RATE_LIMIT_MAX": "10000", "ALLOWED_ORIGINS": ORIGIN, "SEALING": "off"} | (env or {})
        )
        client = EnclaveClient(transport, ADDRESS, call_timeout=2.0, max_backoff=0.1)
        await client.start()
        clock, metrics = FakeClock(), ApiMetrics()
        app = create_app(
            config,
            store=use_store or store,
            enclave=client,
            metrics=metrics,
            session_log=session_log,
            clock=clock,
            run_purge=run_purge,
        )
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ssl_context(tls_files))
        await site.start()
        port = runner.addresses[0][1]
        http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ssl))

        async def cleanup() -> None:
            await http.close()
            await runner.cleanup()
            await client.close()

        cleanups.append(cleanup)
        return Api(
            url=f"https://127.0.0.1:{port}",
            http=http,
            db=pg_db,
            fake=fake,
            transport=transport,
            clock=clock,
            metrics=metrics,
            app=app,
        )

    yield start
    for cleanup in reversed(cleanups):
        await cleanup()


@pytest.fixture
async def api(make_api: MakeApi) -> Api:
    """The API with default test settings."""
    return await make_api()


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Undo configure_logging after the test (it binds the root logger to a stream)."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    yield
    structlog.reset_defaults()
    root.handlers, root.level = saved[0], saved[1]


@pytest.fixture
def log_lines(restore_logging: None) -> Callable[[], list[dict[str, Any]]]:
    """JSON log lines the app writes (the production pipeline, into a buffer, not stderr)."""
    stream = io.StringIO()
    configure_logging("parent", stream=stream)
    return lambda: [json.loads(line) for line in stream.getvalue().splitlines() if line]


# --------------------------------------------------------------------------- attestation


async def test_quote_describes_the_enclave_document(api: Api) -> None:
    """GET /attestation/quote returns the document and the CONTRACT convenience fields."""
    status, body, _ = await api.call("GET", "/attestation/quote?nonce=00FFab12")
    assert status == 200, body
    assert set(body) == {
        "quote",
        "enclave_pubkey",
        "signing_pubkey",
        "image_hash",
        "pcrs",
        "nonce",
        "pq_pubkey",
    }
    assert body["pq_pubkey"] is None  # the fake enclave offers no post-quantum key
    document, _ = decode_document(b64decode(body["quote"]))
    assert document.nonce == bytes.fromhex("00ffab12")
    assert body["nonce"] == "00ffab12"
    assert b64decode(body["enclave_pubkey"]) == api.fake.x25519_public
    assert b64decode(body["signing_pubkey"]) == api.fake.signing_public
    assert body["image_hash"] == PCR0.hex()
    assert body["pcrs"] == {"0": PCR0.hex(), "1": "00" * 48, "2": "02" * 48}


async def test_quote_draws_a_nonce_when_none_is_given(api: Api) -> None:
    """Without ?nonce the parent sends 32 random bytes and reports them."""
    _, first, _ = await api.call("GET", "/attestation/quote")
    _, second, _ = await api.call("GET", "/attestation/quote")
    assert re.fullmatch(r"[0-9a-f]{64}", first["nonce"])
    assert first["nonce"] != second["nonce"]
    assert api.fake.calls_of(p.Attest)[0].nonce.hex() == first["nonce"]


@pytest.mark.parametrize("nonce", ["zz", "abc", "", "0 1", "ab" * 513, "ab&nonce=cd"])
async def test_quote_refuses_a_bad_nonce(api: Api, nonce: str) -> None:
    """A nonce that is not 1..512 bytes of hex (or is repeated) is a 400 before any enclave call."""
    status, body, _ = await api.call("GET", f"/attestation/quote?nonce={nonce}")
    assert_error(status, body, 400, "bad_request")
    assert api.fake.calls_of(p.Attest) == []


# --------------------------------------------------------------------------- submit


async def test_submit_key_creates_a_session(api: Api) -> None:
    """201 with id and RFC 3339 expiry; the DB holds the ciphertext and the id's hash only."""
    envelope = credential_envelope(ttl=7200)
    status, body, headers = await api.call("POST", "/enclave/submit_key", json_body=envelope)
    assert status == 201, body
    assert set(body) == {"session_id", "expires_at"}
    expires = datetime.strptime(body["expires_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert abs((expires - datetime.now(UTC)).total_seconds() - 7200) < 5
    assert headers["Cache-Control"] == "no-store"
    assert {t: api.counts()[t] for t in ("sessions", "credentials", "ops_logs")} == {
        "sessions": 1,
        "credentials": 1,
        "ops_logs": 1,
    }
    with psycopg.connect(api.db.admin_conninfo) as conn:
        row = conn.execute(
            "SELECT s.session_hash, c.ciphertext FROM sessions s JOIN credentials c"
            " ON c.session_id = s.id"
        ).fetchone()
    assert row is not None
    assert bytes(row[0]) == session_hash(body["session_id"])
    assert row[1] == envelope["ciphertext"]
    confirms = api.fake.calls_of(p.Confirm)
    assert [(c.session_id, c.commit) for c in confirms] == [(body["session_id"], True)]


@pytest.mark.parametrize(
    "envelope",
    [
        credential_envelope(issued_at=int(time.time())),
        credential_envelope()
        | {"alg": "hpke-x25519-sha256-aes256gcm", "nonce": ""},  # HPKE: no wire nonce
    ],
)
async def test_submit_key_accepts_optional_fields_and_hpke(
    api: Api, envelope: dict[str, Any]
) -> None:
    """metadata.issued_at and the HPKE envelope shape are accepted and stored as sent."""
    session_id = await api.submit(envelope)
    with psycopg.connect(api.db.admin_conninfo) as conn:
        row = conn.execute("SELECT alg, nonce, metadata FROM credentials").fetchone()
    assert row is not None
    assert row[0] == envelope.get("alg", "x25519-hkdf-sha256-aes256gcm")
    assert (row[1], row[2]) == (envelope["nonce"], envelope["metadata"])
    assert session_id in api.fake.live


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ("{not json", "not valid JSON"),
        ('["a", "list"]', "must be a JSON object"),
        ('{"a": NaN}', "not valid JSON"),
        ('{"ttl": 1, "ttl": 2}', "not valid JSON"),
        (
            credential_envelope() | {"ciphertext": "!!notbase64!!"},
            "'ciphertext' is not valid base64",
        ),
        (credential_envelope() | {"nonce": b64encode(b"short")}, "'nonce' has the wrong length"),
        ({k: v for k, v in credential_envelope().items() if k != "tag"}, "missing field 'tag'"),
        (credential_envelope() | {"extra": 1}, "unexpected field"),
        (credential_envelope() | {"alg": "rot13"}, "'alg'"),
        (credential_envelope(ttl=59), "metadata.ttl must be an integer from 60 to 604800"),
        (credential_envelope(ttl=604801), "from 60 to 604800"),
        (credential_envelope(ttl="3600"), "metadata.ttl"),
        (credential_envelope(ttl=3600.5), "metadata.ttl"),
        (credential_envelope(ttl=True), "metadata.ttl"),
        (credential_envelope(exchange="Binance"), "metadata.exchange"),
        (credential_envelope(exchange="a" * 33), "metadata.exchange"),
        (credential_envelope(label=""), "metadata.label"),
        (credential_envelope(label="x" * 65), "metadata.label"),
        (credential_envelope(label="tab\there"), "printable"),
        (credential_envelope(secret="shh"), "metadata has an unexpected field"),
        (credential_envelope(issued_at=-5), "metadata.issued_at"),
        ({**credential_envelope(), "metadata": {"label": "x", "ttl": 60}}, "metadata.exchange"),
    ],
)
async def test_submit_key_refuses_bad_input(api: Api, payload: Any, fragment: str) -> None:
    """Bad JSON, base64, fields or ttl: a 400 naming the problem, nothing stored."""
    before = api.counts()
    data = payload if isinstance(payload, str) else json.dumps(payload)
    status, body, _ = await api.call(
        "POST",
        "/enclave/submit_key",
        data=data,
        headers={"Content-Type": "application/json"},
    )
    assert_error(status, body, 400, "bad_request")
    assert fragment in body["error"]["message"]
    assert api.counts() == before
    assert api.fake.calls_of(p.Submit) == []


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (p.ErrorCode.BAD_REQUEST, 400),
        (p.ErrorCode.FORBIDDEN, 403),
        (p.ErrorCode.REPLAYED, 409),
        (p.ErrorCode.TOO_LARGE, 413),
        (p.ErrorCode.UNDECRYPTABLE, 422),
        (p.ErrorCode.INTERNAL, 500),
        (p.ErrorCode.UNSUPPORTED, 501),
        (p.ErrorCode.UNAVAILABLE, 503),
    ],
)
async def test_enclave_refusals_map_to_statuses(api: Api, code: p.ErrorCode, status: int) -> None:
    """Each enclave error code becomes its HTTP status; nothing is stored."""
    before = api.counts()
    api.fake.refusals[p.Submit] = code
    got, body, _ = await api.call("POST", "/enclave/submit_key", json_body=credential_envelope())
    assert_error(got, body, status, code.value)
    if code is p.ErrorCode.INTERNAL:
        assert body["error"]["message"] == "internal error"
    assert api.counts() == before


async def test_replayed_envelope_is_409_and_stores_nothing_new(api: Api) -> None:
    """The same envelope twice: 201 then 409; the second pending session is discarded."""
    envelope = credential_envelope()
    await api.submit(envelope)
    after_first = api.counts()
    status, body, _ = await api.call("POST", "/enclave/submit_key", json_body=envelope)
    assert_error(status, body, 409, "replayed")
    assert api.counts() == after_first
    second = api.fake.calls_of(p.Confirm)[-1]
    assert second.commit is False
    assert api.fake.pending == {}
    assert len(api.fake.live) == 1


async def test_failed_confirm_takes_the_stored_rows_back(api: Api) -> None:
    """If the enclave cannot confirm, the stored session and ciphertext are deleted: 503."""
    api.fake.refuse_commit = True
    status, body, _ = await api.call("POST", "/enclave/submit_key", json_body=credential_envelope())
    assert_error(status, body, 503, "unavailable")
    counts = api.counts()
    assert counts["sessions"] == counts["credentials"] == 0
    assert api.fake.live == {}


async def test_unexpected_failure_is_a_generic_500(
    api: Api, log_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    """A bug (an absurd expiry from the enclave) is 500 'internal error', logged by type only."""
    api.fake.expires_override = 2**62
    status, body, _ = await api.call("POST", "/enclave/submit_key", json_body=credential_envelope())
    assert status == 500
    assert body == {"error": {"code": "internal", "message": "internal error"}}
    assert api.counts()["sessions"] == 0
    assert api.fake.calls_of(p.Confirm)[-1].commit is False
    crash = [line for line in log_lines() if line["event"] == "unhandled_exception"]
    assert len(crash) == 1 and set(crash[0]) >= {"error_type", "request_id"}
    assert "2305843009213693952" not in json.dumps(crash)


# --------------------------------------------------------------------------- aggregates


async def test_request_aggregates_returns_a_verifiable_signed_report(api: Api) -> None:
    """The signed payload verifies with the attested key; the report is stored with its seq."""
    session_id = await api.submit()
    for expected_seq in (1, 2):
        status, body, _ = await api.call(
            "POST", "/enclave/request_aggregates", json_body={"session_id": session_id}
        )
        assert status == 200, body
        assert set(body) == {"aggregates_signed", "merkle_root", "logs_url"}
        signed = body["aggregates_signed"]
        verify_payload(api.fake.signing_public, signed["payload"], signed["signature"])
        assert signed["payload"]["seq"] == expected_seq
        assert body["logs_url"] == f"/api/logs/{session_id}"
    counts = api.counts()
    assert counts["aggregates"] == 2
    assert counts["ops_logs"] == 3  # submit + two aggregates


@pytest.mark.parametrize(
    "body",
    [{}, {"session_id": "short"}, {"session_id": 42}, {"session_id": "a" * 43, "more": 1}],
)
async def test_session_id_is_checked_before_any_lookup(api: Api, body: dict[str, Any]) -> None:
    """A missing or malformed session id is a 400 and the enclave is never asked."""
    status, reply, _ = await api.call("POST", "/enclave/request_aggregates", json_body=body)
    assert_error(status, reply, 400, "bad_request")
    assert api.fake.calls_of(p.Aggregates) == []


async def test_unknown_session_is_404(api: Api) -> None:
    """A well-formed id nobody issued is 404 for aggregates, metrics, summary and revoke."""
    unknown = new_session_id()
    before = api.counts()
    for method, path, body in [
        ("POST", "/enclave/request_aggregates", {"session_id": unknown}),
        ("GET", f"/enclave/metrics/{unknown}", None),
        ("GET", f"/enclave/summary/{unknown}", None),
        ("POST", "/enclave/revoke", {"session_id": unknown}),
        ("GET", f"/api/logs/{unknown}", None),
    ]:
        status, reply, _ = await api.call(method, path, json_body=body)
        assert_error(status, reply, 404, "not_found")
    assert api.counts() == before


# --------------------------------------------------------------------------- metrics / summary


async def test_metrics_and_summary_relay_the_enclave_objects(api: Api) -> None:
    """GET /enclave/metrics|summary/{id} return the enclave's JSON; a bad id is 400."""
    session_id = await api.submit()
    status, body, _ = await api.call("GET", f"/enclave/metrics/{session_id}")
    assert (status, body) == (200, {"totals": {"pnl": 12.5}})
    status, body, _ = await api.call("GET", f"/enclave/summary/{session_id}")
    assert (status, body) == (200, {"headline": {"trades": 3}})
    status, body, _ = await api.call("GET", "/enclave/metrics/not-a-session")
    assert_error(status, body, 400, "bad_request")


# --------------------------------------------------------------------------- revoke


async def test_revoke_deletes_every_row(api: Api) -> None:
    """Revoke answers the seed's message and deletes session, ciphertext, reports, records."""
    session_id = await api.submit()
    await api.call("POST", "/enclave/request_aggregates", json_body={"session_id": session_id})
    await api.call(
        "POST", "/api/records", json_body={"session_id": session_id, "envelope": record_envelope()}
    )
    assert all(api.counts()[t] == 1 for t in SESSION_TABLES)
    status, body, _ = await api.call(
        "POST", "/enclave/revoke", json_body={"session_id": session_id}
    )
    assert (status, body) == (200, {"success": True, "message": "Session revoked and data purged"})
    assert all(api.counts()[t] == 0 for t in SESSION_TABLES)
    status, body, _ = await api.call(
        "POST", "/enclave/revoke", json_body={"session_id": session_id}
    )
    assert_error(status, body, 404, "not_found")


async def test_revoke_of_an_owned_session_needs_the_owner_proof(api: Api) -> None:
    """Without a proof the enclave refuses (403) and the database keeps the session."""
    session_id = await api.submit(credential_envelope(label="owned"))
    before = api.counts()
    status, body, _ = await api.call(
        "POST", "/enclave/revoke", json_body={"session_id": session_id}
    )
    assert_error(status, body, 403, "forbidden")
    assert api.counts() == before
    status, body, _ = await api.call(
        "POST", "/enclave/revoke", json_body={"session_id": session_id, "timestamp": 1}
    )
    assert_error(status, body, 400, "bad_request")  # half a proof
    proof = {"timestamp": int(time.time()), "signature": b64encode(b"\x00" * 64)}
    status, body, _ = await api.call(
        "POST", "/enclave/revoke", json_body={"session_id": session_id, **proof}
    )
    assert status == 200, body
    revoke = api.fake.calls_of(p.Revoke)[-1]
    assert (revoke.proof_timestamp, revoke.proof_signature) == (
        proof["timestamp"],
        proof["signature"],
    )


async def test_revoke_purges_rows_the_enclave_no_longer_knows(api: Api) -> None:
    """When the enclave has lost the session (restart, expiry), the stored rows go anyway: 200."""
    session_id = await api.submit()
    api.fake.live.clear()
    status, body, _ = await api.call(
        "POST", "/enclave/revoke", json_body={"session_id": session_id}
    )
    assert status == 200, body
    assert api.counts()["sessions"] == 0


async def test_one_session_cannot_touch_another(api: Api) -> None:
    """Session B's id neither reads A's records nor revokes A."""
    a, b = await api.submit(), await api.submit()
    _, record, _ = await api.call(
        "POST", "/api/records", json_body={"session_id": a, "envelope": record_envelope()}
    )
    headers = {
        "X-Session-Id": b,
        "X-Owner-Timestamp": str(int(time.time())),
        "X-Owner-Signature": b64encode(b"\x01" * 64),
    }
    status, body, _ = await api.call("GET", f"/api/records/{record['id']}", headers=headers)
    assert_error(status, body, 404, "not_found")
    _, listing, _ = await api.call("GET", "/api/records", headers={"X-Session-Id": b})
    assert listing == {"records": []}
    await api.call("POST", "/enclave/revoke", json_body={"session_id": b})
    status, _, _ = await api.call(
        "POST", "/enclave/request_aggregates", json_body={"session_id": a}
    )
    assert status == 200
    assert api.counts()["records"] == 1


# --------------------------------------------------------------------------- logs


async def test_session_log_is_a_verifiable_transparency_log(api: Api) -> None:
    """GET /api/logs/{id}: enclave-signed entries with inclusion proofs, stored on the way."""
    session_id = await api.submit()
    for _ in range(2):
        await api.call("POST", "/enclave/request_aggregates", json_body={"session_id": session_id})
    status, body, _ = await api.call("GET", f"/api/logs/{session_id}")
    assert status == 200, body
    verified = verify_log(
        body,
        signing_public=api.fake.signing_public,
        session_hash=session_hash(session_id),
        require_complete=True,
    )
    assert verified.ops() == ["submit", "report", "report"]
    assert body["live"] is True and body["consistency_proof"] is None
    # The parent's own (unsigned) access log rides along, read as app_service.
    assert [e["op"] for e in body["access_log"]] == ["submit", "aggregates", "aggregates"]
    assert all(re.fullmatch(r"[0-9a-f]{32}", e["request_id"]) for e in body["access_log"])
    rows = admin_query(
        api.db,
        "SELECT log_index, op FROM ops_logs WHERE log_index IS NOT NULL ORDER BY log_index",
    )
    assert rows == [(0, "log.submit"), (1, "log.report"), (2, "log.report")]
    assert admin_query(api.db, "SELECT tree_size FROM merkle_logs") == [(3,)]


async def test_session_log_proves_it_only_grew(api: Api) -> None:
    """since_size gives a consistency proof from a head the client kept; tampering fails."""
    session_id = await api.submit()
    digest = session_hash(session_id)
    _, first, _ = await api.call("GET", f"/api/logs/{session_id}")
    old = verify_log(first, signing_public=api.fake.signing_public, session_hash=digest).head
    await api.call("POST", "/enclave/request_aggregates", json_body={"session_id": session_id})
    status, body, _ = await api.call("GET", f"/api/logs/{session_id}?since_size={old.size}")
    assert status == 200, body
    grown = verify_log(
        body, signing_public=api.fake.signing_public, session_hash=digest, trusted_head=old
    )
    assert (old.size, grown.head.size) == (1, 2)
    forged = TreeHead(log_id=old.log_id, size=1, root_hash="00" * 32, timestamp=old.timestamp)
    with pytest.raises(TransparencyLogError, match="rewritten"):
        verify_log(body, signing_public=api.fake.signing_public, session_hash=digest,
                   trusted_head=forged)  # fmt: skip
    tampered = json.loads(json.dumps(body))
    tampered["entries"][1]["entry"]["data"]["seq"] = 7
    with pytest.raises(TransparencyLogError, match="not in the signed tree"):
        verify_log(tampered, signing_public=api.fake.signing_public, session_hash=digest)
    tampered = json.loads(json.dumps(body))
    tampered["tree_head"]["payload"]["tree_size"] = 1
    with pytest.raises(TransparencyLogError, match="signature"):
        verify_log(tampered, signing_public=api.fake.signing_public, session_hash=digest)
    with pytest.raises(TransparencyLogError, match="another log"):
        verify_log(body, signing_public=api.fake.signing_public, session_hash=bytes(32))


async def test_session_log_outlives_a_revoke(api: Api) -> None:
    """After revoke the stored log still answers, ending with the signed revoke entry."""
    session_id = await api.submit()
    await api.call("POST", "/enclave/request_aggregates", json_body={"session_id": session_id})
    await api.call("GET", f"/api/logs/{session_id}")  # stores entries 0..1
    status, _, _ = await api.call("POST", "/enclave/revoke", json_body={"session_id": session_id})
    assert status == 200
    status, body, _ = await api.call("GET", f"/api/logs/{session_id}")
    assert status == 200, body
    verified = verify_log(
        body,
        signing_public=api.fake.signing_public,
        session_hash=session_hash(session_id),
        require_complete=True,
    )
    assert verified.ops() == ["submit", "report", "revoke"]
    assert body["live"] is False and body["access_log"] == []
    revoke = api.fake.calls_of(p.Revoke)[-1]
    assert revoke.log_start == 2  # the parent asked only for what it lacked
    assert api.counts()["sessions"] == 0


async def test_session_log_pages_and_bad_queries(api: Api) -> None:
    """start/limit page the entries (proofs still verify); out-of-range queries are 400."""
    session_id = await api.submit()
    for _ in range(4):
        await api.call("POST", "/enclave/request_aggregates", json_body={"session_id": session_id})
    status, body, _ = await api.call("GET", f"/api/logs/{session_id}?start=2&limit=2")
    assert status == 200, body
    verified = verify_log(
        body, signing_public=api.fake.signing_public, session_hash=session_hash(session_id)
    )
    assert [e["index"] for e in verified.entries] == [2, 3] and verified.head.size == 5
    for query in ("limit=0", "limit=1001", "start=-1", "start=x", "since_size=6"):
        status, body, _ = await api.call("GET", f"/api/logs/{session_id}?{query}")
        assert_error(status, body, 400, "bad_request")


async def test_session_log_served_from_storage_when_the_enclave_is_down(api: Api) -> None:
    """Enclave unreachable: the stored log and head are served, marked not live."""
    session_id = await api.submit()
    await api.call("GET", f"/api/logs/{session_id}")
    await api.fake.stop()
    status, body, _ = await api.call("GET", f"/api/logs/{session_id}")
    assert status == 200, body
    assert body["live"] is False
    verified = verify_log(
        body, signing_public=api.fake.signing_public, session_hash=session_hash(session_id)
    )
    assert verified.ops() == ["submit"]


async def test_parent_refuses_to_store_a_log_that_does_not_verify(api: Api) -> None:
    """An enclave reply whose entries do not hash to its head: 503, nothing stored."""
    session_id = await api.submit()
    api.fake.forge_log_roots = True
    status, body, _ = await api.call("GET", f"/api/logs/{session_id}")
    assert_error(status, body, 503, "unavailable")
    assert admin_query(api.db, "SELECT count(*) FROM merkle_logs") == [(0,)]
    assert admin_query(api.db, "SELECT count(*) FROM ops_logs WHERE log_index IS NOT NULL") == [
        (0,)
    ]


async def test_session_log_of_unknown_session_is_404(api: Api) -> None:
    """A well-formed but unknown session id has no log: 404."""
    status, body, _ = await api.call("GET", f"/api/logs/{'A' * 43}")
    assert_error(status, body, 404, "not_found")


# --------------------------------------------------------------------------- records


async def test_records_seal_list_and_unseal(
    api: Api, log_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    """Seal (201), list metadata, unseal to the owner; each access is audited without the data."""
    session_id = await api.submit(credential_envelope(label="owned"))
    status, created, _ = await api.call(
        "POST",
        "/api/records",
        json_body={"session_id": session_id, "envelope": record_envelope("tax-2025")},
    )
    assert status == 201, created
    assert set(created) == {"id", "label", "created_at"} and created["label"] == "tax-2025"
    status, listing, _ = await api.call("GET", "/api/records", headers={"X-Session-Id": session_id})
    assert (status, listing) == (200, {"records": [created]})
    headers = {
        "X-Session-Id": session_id,
        "X-Owner-Timestamp": str(int(time.time())),
        "X-Owner-Signature": b64encode(b"\x02" * 64),
    }
    status, unsealed, _ = await api.call("GET", f"/api/records/{created['id']}", headers=headers)
    assert status == 200, unsealed
    assert unsealed["id"] == created["id"] and unsealed["label"] == "tax-2025"
    Envelope.from_wire(unsealed["envelope"])  # ciphertext for the owner, not the record
    unseal = api.fake.calls_of(p.UnsealRecord)[0]
    with psycopg.connect(api.db.admin_conninfo) as conn:
        row = conn.execute("SELECT sealed FROM records").fetchone()
    assert row is not None and unseal.sealed == b64decode(row[0])
    assert unseal.label == "tax-2025"
    audits = [line for line in log_lines() if line["event"] == "audit"]
    assert [(a["operation"], a["outcome"]) for a in audits] == [
        ("credentials.submit", "ok"),
        ("records.seal", "ok"),
        ("records.list", "ok"),
        ("records.unseal", "ok"),
    ]
    digest = session_hash(session_id).hex()
    for audit in audits:
        assert set(audit) >= {"timestamp", "request_id", "operation", "session", "outcome"}
        assert digest.startswith(audit["session"])
    assert session_id not in json.dumps(audits)


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 400),  # no session id
        ({"X-Session-Id": "nope"}, 400),
        ({"X-Session-Id": "SESSION"}, 403),  # no owner proof
        ({"X-Session-Id": "SESSION", "X-Owner-Timestamp": "soon", "X-Owner-Signature": "x"}, 400),
        ({"X-Session-Id": "SESSION", "X-Owner-Timestamp": "1"}, 400),  # half a proof
    ],
)
async def test_unseal_checks_headers(api: Api, headers: dict[str, str], status: int) -> None:
    """GET /api/records/{id} needs a session id and a well-formed owner proof."""
    session_id = await api.submit()
    _, created, _ = await api.call(
        "POST", "/api/records", json_body={"session_id": session_id, "envelope": record_envelope()}
    )
    headers = {k: v.replace("SESSION", session_id) for k, v in headers.items()}
    got, body, _ = await api.call("GET", f"/api/records/{created['id']}", headers=headers)
    assert_error(got, body, status)
    assert api.fake.calls_of(p.UnsealRecord) == []


async def test_records_refuse_bad_input(api: Api) -> None:
    """Wrong record metadata, a bad record id and an unknown session are refused."""
    session_id = await api.submit()
    before = api.counts()
    bad = _envelope(purpose="credentials", label="x")
    status, body, _ = await api.call(
        "POST", "/api/records", json_body={"session_id": session_id, "envelope": bad}
    )
    assert_error(status, body, 400, "bad_request")
    status, body, _ = await api.call(
        "GET", "/api/records/not-a-uuid", headers={"X-Session-Id": session_id}
    )
    assert_error(status, body, 400, "bad_request")
    status, body, _ = await api.call(
        "GET", "/api/records", headers={"X-Session-Id": new_session_id()}
    )
    assert_error(status, body, 404, "not_found")
    api.fake.refusals[p.SealRecord] = p.ErrorCode.UNDECRYPTABLE
    status, body, _ = await api.call(
        "POST", "/api/records", json_body={"session_id": session_id, "envelope": record_envelope()}
    )
    assert_error(status, body, 422, "undecryptable")
    assert api.counts() == before


# --------------------------------------------------------------------------- HTTP errors


async def test_unknown_route_and_wrong_method_use_the_json_shape(api: Api) -> None:
    """404 for an unknown path, 405 (with Allow) for a wrong method, both JSON errors."""
    status, body, _ = await api.call("GET", "/nope")
    assert_error(status, body, 404, "not_found")
    status, body, headers = await api.call("GET", "/enclave/submit_key")
    assert_error(status, body, 405, "method_not_allowed")
    assert headers["Allow"] == "POST"
    status, body, _ = await api.call("DELETE", "/healthz")
    assert_error(status, body, 405)


async def test_non_json_content_type_is_415(api: Api) -> None:
    """A body that is not application/json is refused with 415; nothing reaches the enclave."""
    before = api.counts()
    status, body, _ = await api.call(
        "POST", "/enclave/submit_key", data="a=1", headers={"Content-Type": "text/plain"}
    )
    assert_error(status, body, 415, "unsupported_media_type")
    assert api.counts() == before
    assert api.fake.calls_of(p.Submit) == []


async def test_oversized_body_is_413(make_api: MakeApi) -> None:
    """Bodies over MAX_BODY_BYTES are 413, with or without Content-Length; nothing stored."""
    api = await make_api({"MAX_BODY_BYTES": "4096"})
    before = api.counts()
    big = credential_envelope(label="x" * 60) | {"ciphertext": b64encode(os.urandom(6000))}
    status, body, _ = await api.call("POST", "/enclave/submit_key", json_body=big)
    assert_error(status, body, 413, "too_large")

    async def chunks() -> AsyncIterator[bytes]:
        yield json.dumps(big).encode()

    status, body, _ = await api.call(
        "POST", "/enclave/submit_key", data=chunks(), headers={"Content-Type": "application/json"}
    )
    assert_error(status, body, 413, "too_large")
    assert api.counts() == before
    assert api.fake.calls_of(p.Submit) == []


async def test_rate_limit_is_429_with_retry_after(make_api: MakeApi) -> None:
    """After RATE_LIMIT_MAX requests a client gets 429 + Retry-After; probes stay exempt."""
    api = await make_api({"RATE_LIMIT_MAX": "3", "RATE_LIMIT_WINDOW": "60000"})
    for _ in range(3):
        status, _, _ = await api.call("GET", "/attestation/quote")
        assert status == 200
    status, body, headers = await api.call("GET", "/attestation/quote")
    assert_error(status, body, 429, "rate_limited")
    assert 1 <= int(headers["Retry-After"]) <= 120
    before = api.counts()
    status, body, _ = await api.call("POST", "/enclave/submit_key", json_body=credential_envelope())
    assert_error(status, body, 429)
    assert api.counts() == before
    for path in ("/healthz", "/readyz", "/metrics"):
        status, _, _ = await api.call("GET", path)
        assert status == 200
    _, metrics, _ = await api.call("GET", "/metrics")
    assert "rate_limited_requests_total 2.0" in metrics


# --------------------------------------------------------------------------- availability


async def test_enclave_down_is_503_then_recovers(api: Api) -> None:
    """Enclave stopped: every enclave call is 503, nothing stored; it recovers on restart."""
    session_id = await api.submit()
    await api.fake.stop()
    before = api.counts()
    for method, path, body in [
        ("GET", "/attestation/quote", None),
        ("POST", "/enclave/submit_key", credential_envelope()),
        ("POST", "/enclave/request_aggregates", {"session_id": session_id}),
        ("POST", "/enclave/revoke", {"session_id": session_id}),
    ]:
        status, reply, _ = await api.call(method, path, json_body=body)
        assert_error(status, reply, 503, "unavailable")
    assert api.counts() == before
    status, reply, _ = await api.call("GET", "/readyz")
    assert_error(status, reply, 503)
    assert reply["error"]["message"] == "not ready: enclave unavailable"
    await api.fake.start(api.transport)
    for _ in range(60):
        status, _, _ = await api.call("GET", "/attestation/quote")
        if status == 200:
            break
        await asyncio.sleep(0.05)
    assert status == 200
    status, _, _ = await api.call("GET", "/readyz")
    assert status == 200


async def test_database_down_is_503_then_recovers(make_api: MakeApi, pg_db: PgDatabase) -> None:
    """With the database refusing connections, submit is 503, the pending session is discarded."""
    short = await Store.open(pg_db.app_conninfo, min_size=1, max_size=2, timeout_s=1.0)
    try:
        api = await make_api(use_store=short)
        admin = pg_db.cluster.admin_conninfo
        name = sql.Identifier(pg_db.name)
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(name))
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (pg_db.name,),
            )
        try:
            status, body, _ = await api.call(
                "POST", "/enclave/submit_key", json_body=credential_envelope()
            )
            assert_error(status, body, 503, "unavailable")
            assert api.fake.calls_of(p.Confirm)[-1].commit is False
            assert api.fake.live == {}
            status, body, _ = await api.call("GET", "/readyz")
            assert_error(status, body, 503)
            assert body["error"]["message"] == "not ready: database unavailable"
        finally:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(name))
        assert api.counts()["sessions"] == 0
        # The pool reconnects with backoff: the service comes back without a restart.
        for _ in range(50):
            status, body, _ = await api.call(
                "POST", "/enclave/submit_key", json_body=credential_envelope()
            )
            if status == 201:
                break
            await asyncio.sleep(0.1)
        assert status == 201, body
        assert api.counts()["sessions"] == 1
    finally:
        await short.close()


async def test_health_and_readiness(api: Api) -> None:
    """/healthz is alive; /readyz reports both dependencies ok."""
    assert (await api.call("GET", "/healthz"))[:2] == (200, {"status": "ok"})
    status, body, _ = await api.call("GET", "/readyz")
    assert (status, body) == (
        200,
        {"status": "ready", "checks": {"database": "ok", "enclave": "ok"}},
    )


async def test_ttl_purge_deletes_expired_sessions(make_api: MakeApi) -> None:
    """The background purge deletes sessions past their TTL and counts them."""
    api = await make_api({"PURGE_INTERVAL_SECONDS": "1"}, run_purge=True)
    session_id = await api.submit(credential_envelope(ttl=60))
    _, metrics, _ = await api.call("GET", "/metrics")
    assert "active_sessions 1.0" in metrics
    api.clock.offset = timedelta(seconds=120)
    for _ in range(60):  # the loop runs every second
        _, metrics, _ = await api.call("GET", "/metrics")
        if "active_sessions 0.0" in metrics:
            break
        await asyncio.sleep(0.05)
    assert "ttl_purged_sessions_total 1.0" in metrics
    assert "active_sessions 0.0" in metrics
    assert api.counts()["sessions"] == api.counts()["credentials"] == 0
    status, _, _ = await api.call("GET", "/api/records", headers={"X-Session-Id": session_id})
    assert status == 404


# --------------------------------------------------------------------------- CORS


async def test_cors_echoes_only_allowed_origins(api: Api) -> None:
    """An allowed Origin is echoed (never '*'); another gets no CORS header; both Vary: Origin."""
    _, _, headers = await api.call("GET", "/healthz", headers={"Origin": ORIGIN})
    assert headers["Access-Control-Allow-Origin"] == ORIGIN
    assert headers["Vary"] == "Origin"
    _, _, headers = await api.call("GET", "/healthz", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in headers
    assert headers["Vary"] == "Origin"
    status, _, headers = await api.call("GET", "/nope", headers={"Origin": ORIGIN})
    assert status == 404 and headers["Access-Control-Allow-Origin"] == ORIGIN


async def test_cors_preflight_only_for_allowed_origins(api: Api) -> None:
    """OPTIONS preflight: 204 with the route's methods for an allowed origin, 403 otherwise."""
    preflight = {"Access-Control-Request-Method": "POST"}
    status, _, headers = await api.call(
        "OPTIONS", "/enclave/submit_key", headers=preflight | {"Origin": ORIGIN}
    )
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == ORIGIN
    assert headers["Access-Control-Allow-Methods"] == "POST"
    assert "Content-Type" in headers["Access-Control-Allow-Headers"]
    status, body, headers = await api.call(
        "OPTIONS", "/enclave/submit_key", headers=preflight | {"Origin": "https://evil.example"}
    )
    assert_error(status, body, 403, "forbidden")
    assert "Access-Control-Allow-Origin" not in headers


# --------------------------------------------------------------------------- observability


async def test_metrics_expose_the_named_series_without_session_ids(api: Api) -> None:
    """/metrics has every named series, labelled by route template, with no session id in it."""
    session_id = await api.submit()
    await api.call("GET", f"/enclave/summary/{session_id}")
    await api.call("POST", "/enclave/request_aggregates", json_body={"session_id": session_id})
    await api.call("GET", "/nope")
    status, text, headers = await api.call("GET", "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    for series in (
        "http_requests_total",
        "http_request_duration_seconds_bucket",
        "enclave_operations_total",
        "enclave_operation_duration_seconds_bucket",
        "active_sessions",
        "ttl_purged_sessions_total",
        "rate_limited_requests_total",
    ):
        assert series in text
    assert 'route="/enclave/summary/{session_id}"' in text
    assert 'route="<unmatched>",status="404"' in text
    assert 'enclave_operations_total{op="submit",outcome="ok"} 1.0' in text
    assert "active_sessions 1.0" in text
    assert session_id not in text
    assert session_hash(session_id).hex()[:16] not in text


async def test_request_logs_carry_no_session_id_and_no_body(
    api: Api, log_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    """One JSON line per request (method, route template, status, duration, id), no secrets."""
    envelope = credential_envelope(label="my-secret-label")
    session_id = await api.submit(envelope)
    await api.call("GET", f"/enclave/metrics/{session_id}")
    await api.call("POST", "/enclave/revoke", json_body={"session_id": session_id})
    lines = log_lines()
    requests = [line for line in lines if line["event"] == "http_request"]
    assert [(r["method"], r["route"], r["status"]) for r in requests] == [
        ("POST", "/enclave/submit_key", 201),
        ("GET", "/enclave/metrics/{session_id}", 200),
        ("POST", "/enclave/revoke", 200),
    ]
    for line in requests:
        assert set(line) >= {"duration_ms", "request_id", "timestamp"}
    everything = json.dumps(lines)
    for secret in (
        session_id,
        envelope["ciphertext"],
        envelope["ephemeral_pub"],
        "my-secret-label",
    ):
        assert secret not in everything


async def test_every_response_has_a_request_id_and_security_headers(api: Api) -> None:
    """X-Request-Id (uuid4 hex, fresh each time), nosniff and a no-load CSP on every response."""
    ids = set()
    for path in ("/healthz", "/nope", "/openapi.json"):
        _, _, headers = await api.call("GET", path)
        assert re.fullmatch(r"[0-9a-f]{32}", headers["X-Request-Id"])
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert "default-src 'none'" in headers["Content-Security-Policy"]
        ids.add(headers["X-Request-Id"])
    assert len(ids) == 3


# --------------------------------------------------------------------------- spec and docs


async def test_openapi_lists_every_route_the_app_serves(api: Api) -> None:
    """The OpenAPI 3.1 document has exactly the router's (method, path) pairs, errors included."""
    status, spec, _ = await api.call("GET", "/openapi.json")
    assert status == 200 and spec["openapi"] == "3.1.0"
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in api.app.router.routes()
        if route.resource is not None
    }
    documented = {(method, path) for path, item in spec["paths"].items() for method in item}
    assert documented == served
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if path not in ("/metrics", "/healthz"):
                assert any(code >= "4" for code in op["responses"]), (method, path)
            if method == "post":
                assert "requestBody" in op
    refs = re.findall(r'"#/components/(\w+)/(\w+)"', json.dumps(spec))
    for section, name in refs:
        assert name in spec["components"][section]


async def test_docs_render_the_spec_without_external_assets(api: Api) -> None:
    """/docs is one HTML page naming every path, loading nothing from elsewhere."""
    status, page, headers = await api.call("GET", "/docs")
    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    _, spec, _ = await api.call("GET", "/openapi.json")
    for path in spec["paths"]:
        assert path in page
    assert "<script" not in page and "<link" not in page and "src=" not in page
    assert "style-src 'unsafe-inline'" in headers["Content-Security-Policy"]


# --------------------------------------------------------------------------- sealed state


def stored_version(api: Api, session_id: str) -> int | None:
    """The version of the session's stored sealed state, None if none is stored."""
    rows = admin_query(
        api.db,
        "SELECT version FROM sealed_sessions WHERE session_hash = %s",
        (session_hash(session_id),),
    )
    return None if not rows else int(rows[0][0])


class SealingStoreDown(Store):
    """The real store, except that a session's sealed state cannot be written."""

    async def store_sealed_state(self, state: SealedBlob) -> bool:
        raise StoreUnavailable("database unavailable (test)")


async def test_sealed_states_are_stored_before_each_answer(api: Api) -> None:
    """With sealing, submit, aggregates and logs store the newest state first; revoke the list."""
    api.fake.seal = True
    session_id = await api.submit()
    assert stored_version(api, session_id) == 1  # stored before the 201 went out
    status, body, _ = await api.call(
        "POST", "/enclave/request_aggregates", json_body={"session_id": session_id}
    )
    assert status == 200, body
    assert stored_version(api, session_id) == 2
    assert api.counts()["aggregates"] == 1
    status, body, _ = await api.call("GET", f"/api/logs/{session_id}")
    assert status == 200, body
    assert stored_version(api, session_id) == api.fake.versions[session_id] > 2
    _, metrics, _ = await api.call("GET", "/metrics")
    for source in ("confirm", "aggregates", "logs"):
        assert f'sealed_states_stored_total{{source="{source}"}}' in metrics

    status, body, _ = await api.call(
        "POST", "/enclave/revoke", json_body={"session_id": session_id}
    )
    assert status == 200, body
    assert stored_version(api, session_id) is None  # gone with the session rows
    assert admin_query(api.db, "SELECT version FROM sealed_revocations") == [(1,)]


async def test_a_state_naming_another_session_is_refused(api: Api) -> None:
    """A reply whose sealed state names another session is a 503 and none of it is stored."""
    api.fake.seal = True
    session_id = await api.submit()
    before = api.counts()
    api.fake.seal_as_other = True
    status, body, _ = await api.call(
        "POST", "/enclave/request_aggregates", json_body={"session_id": session_id}
    )
    assert_error(status, body, 503, "unavailable")
    assert api.counts() == before  # no report, no ops entry, no state
    assert stored_version(api, session_id) == 1

    # At submit the session is taken back whole: ended in the enclave, rows deleted.
    status, body, _ = await api.call("POST", "/enclave/submit_key", json_body=credential_envelope())
    assert_error(status, body, 503, "unavailable")
    withdrawn = next(c for c in reversed(api.fake.calls_of(p.Confirm)) if not c.commit).session_id
    assert withdrawn not in api.fake.live and withdrawn != session_id
    after = api.counts()
    for table in ("sessions", "credentials", "aggregates", "sealed_sessions"):
        assert after[table] == before[table], table
    _, metrics, _ = await api.call("GET", "/metrics")
    assert 'sealed_states_refused_total{source="aggregates"} 1.0' in metrics
    assert 'sealed_states_refused_total{source="confirm"} 1.0' in metrics


async def test_submit_fails_whole_when_its_state_cannot_be_stored(
    make_api: MakeApi, pg_db: PgDatabase
) -> None:
    """The state of a confirmed session cannot be stored: 503, session ended, nothing kept."""
    failing = await SealingStoreDown.open(pg_db.app_conninfo, min_size=1, max_size=2)
    try:
        api = await make_api(use_store=failing)
        api.fake.seal = True
        status, body, _ = await api.call(
            "POST", "/enclave/submit_key", json_body=credential_envelope()
        )
        assert_error(status, body, 503, "unavailable")
        counts = api.counts()
        assert counts["sessions"] == counts["credentials"] == counts["sealed_sessions"] == 0
        assert api.fake.live == {}
        assert [c.commit for c in api.fake.calls_of(p.Confirm)][-1] is False  # withdrawn
    finally:
        await failing.close()


# --------------------------------------------------------------------------- composition root


async def test_serve_runs_the_whole_parent_over_https(
    tmp_path: Path,
    pg_db: PgDatabase,
    fake_enclave: tuple[FakeEnclave, TcpSimTransport],
    restore_logging: None,
) -> None:
    """serve(config) generates dev TLS, connects DB and enclave, serves HTTPS, stops on cancel."""
    _, transport = fake_enclave
    port = free_port()
    config = ParentConfig.from_env(
        {
            "ENCLAVE_PORT": str(port),
            "STATE_DIR": str(tmp_path),
            "DATABASE_URL": pg_db.app_conninfo,
            "VSOCK_PORT_MAP": f"16:5000={transport.tcp_port(ADDRESS)},3:8001={free_port()}",
            "PURGE_INTERVAL_SECONDS": "1",
            "SEALING": "off",  # the fake enclave does not seal
        }
    )
    task = asyncio.create_task(serve(config))
    try:
        for _ in range(100):
            if (tmp_path / "tls" / "ca.pem").exists():
                break
            await asyncio.sleep(0.02)
        context = ssl.create_default_context(cafile=str(tmp_path / "tls" / "ca.pem"))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as http:
            status = 0
            for _ in range(100):
                try:
                    async with http.get(f"https://127.0.0.1:{port}/readyz") as response:
                        status = response.status
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
            assert status == 200
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0  # the listener is gone
