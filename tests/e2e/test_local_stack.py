"""End to end: real parent process over HTTPS, real enclave process over the TCP transport,
real embedded PostgreSQL. Nothing is faked between the client and the enclave."""

from __future__ import annotations

import asyncio
import json
import secrets
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import psycopg
import pytest

from parent.db.embedded import EmbeddedPostgres, bundled_bin_dir
from scripts.localstack import LocalStack, free_port
from shared.client import SecureClient, ServerRejected
from shared.envelope import (
    ALG_HPKE_MLKEM768X25519,
    ALG_HPKE_X25519,
    Credentials,
    Envelope,
    EnvelopeOpener,
    encrypt_credentials,
    seal,
)
from shared.owner import owner_x25519_private
from shared.signing import sign_owner_proof
from tests.support.leakscan import LeakScanner

pytestmark = pytest.mark.e2e

# pgserver ships pg_dump of the same major version as its server.
PG_DUMP = bundled_bin_dir() / "pg_dump"
CANARY_KEY = "e2e-canary-key-" + secrets.token_hex(6)
CANARY_SECRET = "e2e-canary-secret-" + secrets.token_hex(6)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """One local stack for the module (a few seconds to start)."""
    state = tmp_path_factory.mktemp("stack")
    local = LocalStack(
        state,
        parent_port=free_port(),
        enclave_tcp_port=free_port(),
        extra_env={"RATE_LIMIT_MAX": "100000", "LOG_LEVEL": "DEBUG"},
    )
    local.start()
    try:
        yield local
    finally:
        local.stop()


@pytest.fixture
async def http(stack: LocalStack) -> AsyncIterator[aiohttp.ClientSession]:
    """A raw HTTPS client trusting the dev CA (for error cases the SDK would not send)."""
    context = ssl.create_default_context(cafile=str(stack.ca_file))
    async with aiohttp.ClientSession(
        base_url=stack.base_url, connector=aiohttp.TCPConnector(ssl=context)
    ) as session:
        yield session


def admin_conninfo(stack: LocalStack) -> str:
    """Superuser access to the stack's embedded database (the test plays the DBA)."""
    return EmbeddedPostgres(stack.state_dir).admin_conninfo()


def table_counts(stack: LocalStack) -> dict[str, int]:
    """Rows per table, to prove failed requests change nothing."""
    with psycopg.connect(admin_conninfo(stack), autocommit=True) as conn:
        return {
            table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # type: ignore[index]
            for table in ("sessions", "credentials", "aggregates", "records")
        }


async def fresh_envelope(client: SecureClient, **metadata: Any) -> dict[str, Any]:
    """An envelope sealed to the attested key, in wire form."""
    quote = await client.attest()
    meta = {"exchange": "binance", "label": "e2e", "ttl": 3600} | metadata
    envelope = encrypt_credentials(
        Credentials(exchange="binance", api_key=CANARY_KEY, api_secret=CANARY_SECRET),
        metadata=meta,
        recipient_x25519=quote.enc_public,
    )
    return envelope.to_wire()


async def test_seed_flow_end_to_end(client: SecureClient, stack: LocalStack) -> None:
    """Attest, register, verified signed report, summary, metrics, owner revoke, then 404."""
    quote = await client.attest()
    assert quote.pcr0 == stack.expected_pcrs()[0].hex()
    registration = await client.register(
        exchange="binance", api_key=CANARY_KEY, api_secret=CANARY_SECRET, label="e2e", ttl=600
    )
    report = await client.aggregates(registration.session_id)
    assert report.payload["trades"] == 0
    assert report.payload["seq"] == 1
    assert report.logs_url == f"/api/logs/{registration.session_id}"
    second = await client.aggregates(registration.session_id)
    assert second.payload["seq"] == 2
    summary = await client.summary(registration.session_id)
    assert summary["status"] == "active"
    metrics = await client.metrics(registration.session_id)
    assert metrics["exchange"] == "binance"
    revoked = await client.revoke(registration)
    assert revoked == {"success": True, "message": "Session revoked and data purged"}
    with pytest.raises(ServerRejected) as info:
        await client.aggregates(registration.session_id)
    assert info.value.status == 404
    with pytest.raises(ServerRejected) as info:
        await client.summary(registration.session_id)
    assert info.value.status == 404


async def test_revoke_leaves_nothing_in_the_database(
    client: SecureClient, stack: LocalStack
) -> None:
    """After revoke no row of the session remains in sessions/credentials/aggregates."""
    before = table_counts(stack)
    registration = await client.register(
        exchange="binance", api_key=CANARY_KEY, api_secret=CANARY_SECRET
    )
    await client.aggregates(registration.session_id)
    during = table_counts(stack)
    assert during["sessions"] == before["sessions"] + 1
    assert during["credentials"] == before["credentials"] + 1
    assert during["aggregates"] == before["aggregates"] + 1
    await client.revoke(registration)
    assert table_counts(stack) == before


async def test_sessions_are_isolated(client: SecureClient, http: aiohttp.ClientSession) -> None:
    """Revoking one session leaves another intact; unknown ids are 404, bad ones 400."""
    first = await client.register(exchange="binance", api_key="k1", api_secret="s1")
    second = await client.register(exchange="binance", api_key="k2", api_secret="s2")
    await client.revoke(first)
    report = await client.aggregates(second.session_id)
    assert report.payload["seq"] == 1
    unknown = secrets.token_urlsafe(32)
    async with http.post("/enclave/request_aggregates", json={"session_id": unknown}) as resp:
        assert resp.status == 404
    async with http.post("/enclave/revoke", json={"session_id": unknown}) as resp:
        assert resp.status == 404
    async with http.post("/enclave/request_aggregates", json={"session_id": "../etc"}) as resp:
        assert resp.status == 400
        body = await resp.json()
        assert set(body["error"]) == {"code", "message"}
    # second's owner key is needed to revoke it: its id alone is not enough.
    async with http.post("/enclave/revoke", json={"session_id": second.session_id}) as resp:
        assert resp.status == 403
    await client.revoke(second)


async def test_replayed_envelope_is_409_and_stores_nothing(
    client: SecureClient, http: aiohttp.ClientSession, stack: LocalStack
) -> None:
    """The same envelope twice: 201 then 409, and the second changes no table."""
    wire = await fresh_envelope(client)
    async with http.post("/enclave/submit_key", json=wire) as resp:
        assert resp.status == 201
        session_id = (await resp.json())["session_id"]
    before = table_counts(stack)
    async with http.post("/enclave/submit_key", json=wire) as resp:
        assert resp.status == 409
        assert (await resp.json())["error"]["code"] == "replayed"
    assert table_counts(stack) == before
    async with http.post("/enclave/revoke", json={"session_id": session_id}) as resp:
        assert resp.status == 200


async def test_undecryptable_envelope_is_422(
    client: SecureClient, http: aiohttp.ClientSession, stack: LocalStack
) -> None:
    """An envelope sealed to another key is 422 with the generic message; nothing stored."""
    other = EnvelopeOpener.generate()
    wire = encrypt_credentials(
        Credentials(exchange="binance", api_key=CANARY_KEY, api_secret=CANARY_SECRET),
        metadata={"exchange": "binance", "label": "x", "ttl": 3600},
        recipient_x25519=other.public_keys().x25519,
    ).to_wire()
    before = table_counts(stack)
    async with http.post("/enclave/submit_key", json=wire) as resp:
        assert resp.status == 422
        assert (await resp.json())["error"]["message"] == "envelope could not be opened"
    assert table_counts(stack) == before


async def test_altered_metadata_is_422(client: SecureClient, http: aiohttp.ClientSession) -> None:
    """Changing the metadata (the AAD) after sealing makes the envelope undecryptable."""
    wire = await fresh_envelope(client)
    wire["metadata"]["label"] = "tampered"
    async with http.post("/enclave/submit_key", json=wire) as resp:
        assert resp.status == 422


@pytest.mark.parametrize(
    ("mutate", "status"),
    [
        (lambda w: w.pop("ciphertext"), 400),
        (lambda w: w.__setitem__("nonce", "!!!"), 400),
        (lambda w: w.__setitem__("tag", "QUJD"), 400),
        (lambda w: w["metadata"].__setitem__("ttl", 10**9), 400),
        (lambda w: w["metadata"].__setitem__("exchange", "Not An Id"), 400),
        (lambda w: w.__setitem__("alg", "rot13"), 400),
    ],
)
async def test_bad_submissions_are_400(
    client: SecureClient, http: aiohttp.ClientSession, stack: LocalStack, mutate: Any, status: int
) -> None:
    """Malformed envelopes and metadata are refused at the boundary; nothing stored."""
    wire = await fresh_envelope(client)
    mutate(wire)
    before = table_counts(stack)
    async with http.post("/enclave/submit_key", json=wire) as resp:
        assert resp.status == status
        body = await resp.json()
        assert body["error"]["code"] == "bad_request"
    assert table_counts(stack) == before


async def test_oversized_and_non_json_bodies(http: aiohttp.ClientSession) -> None:
    """A body over the limit is 413; a non-JSON body is 400 or 415; unknown routes 404."""
    async with http.post(
        "/enclave/submit_key",
        data=b'{"x": "' + b"A" * 200_000 + b'"}',
        headers={"Content-Type": "application/json"},
    ) as resp:
        assert resp.status == 413
    async with http.post(
        "/enclave/submit_key", data=b"{not json", headers={"Content-Type": "application/json"}
    ) as resp:
        assert resp.status == 400
    async with http.post(
        "/enclave/submit_key", data=b"a=b", headers={"Content-Type": "text/plain"}
    ) as resp:
        assert resp.status == 415
    async with http.get("/no/such/route") as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "not_found"


async def test_operational_endpoints(http: aiohttp.ClientSession) -> None:
    """healthz, readyz, metrics, openapi.json and docs answer."""
    async with http.get("/healthz") as resp:
        assert resp.status == 200
    async with http.get("/readyz") as resp:
        assert resp.status == 200
    async with http.get("/metrics") as resp:
        text = await resp.text()
        assert "http_requests_total" in text
        assert "enclave_operations_total" in text
    async with http.get("/openapi.json") as resp:
        spec = await resp.json()
        assert "/enclave/submit_key" in spec["paths"]
    async with http.get("/docs") as resp:
        assert resp.status == 200
        assert "submit_key" in await resp.text()


async def test_canary_never_leaves_the_enclave(
    client: SecureClient, http: aiohttp.ClientSession, stack: LocalStack
) -> None:
    """The canary appears in no pg_dump, no data file (WAL included), no server or process log."""
    registration = await client.register(
        exchange="binance", api_key=CANARY_KEY, api_secret=CANARY_SECRET, label="canary"
    )
    await client.aggregates(registration.session_id)
    # Failing submits with the same canary inside: bad metadata, undecryptable, replay.
    wire = await fresh_envelope(client)
    async with http.post("/enclave/submit_key", json=wire) as resp:
        assert resp.status == 201
    async with http.post("/enclave/submit_key", json=wire) as resp:
        assert resp.status == 409
    with psycopg.connect(admin_conninfo(stack), autocommit=True) as conn:
        conn.execute("CHECKPOINT")  # flush WAL and heap pages to disk
    dump = await asyncio.to_thread(
        lambda: (
            subprocess.run(
                [str(PG_DUMP), "--format=plain", f"--dbname={admin_conninfo(stack)}"],
                capture_output=True,
                check=True,
                timeout=60,
            ).stdout
        )
    )
    canaries = [CANARY_KEY.encode(), CANARY_SECRET.encode(), registration.session_id.encode()]
    scanner = LeakScanner(canaries)
    assert b"CREATE TABLE" in dump  # the dump is real
    assert scanner.scan_bytes(dump, where="pg_dump") == []
    assert scanner.scan_tree(stack.state_dir) == []
    # Positive control: the same scanner finds a planted copy in the same places.
    planted = stack.state_dir / "logs" / "planted-control.bin"
    planted.write_bytes(b"\x00noise" + CANARY_SECRET.encode("utf-16-le") + b"noise")
    try:
        findings = scanner.scan_tree(stack.state_dir)
        assert len(findings) >= 1
    finally:
        planted.unlink()
    await client.revoke(registration)


async def test_logs_hold_no_session_ids_or_bodies(client: SecureClient, stack: LocalStack) -> None:
    """Neither process logs a session id (clear) or any request body."""
    registration = await client.register(exchange="binance", api_key="k", api_secret="s")
    await client.aggregates(registration.session_id)
    await client.revoke(registration)
    logs = "".join(
        (stack.log_dir / f"{name}.log").read_text(errors="replace")
        for name in ("parent", "enclave")
    )
    assert logs
    assert registration.session_id not in logs
    for line in logs.splitlines():
        if line.startswith("{"):
            json.loads(line)  # every structured line is JSON


@pytest.mark.parametrize("alg", [ALG_HPKE_X25519, ALG_HPKE_MLKEM768X25519])
async def test_other_envelope_algs_end_to_end(client: SecureClient, alg: str) -> None:
    """RFC 9180 HPKE and the ML-KEM-768+X25519 hybrid register and report like the default."""
    registration = await client.register(
        exchange="kraken", api_key="pq-key", api_secret="pq-secret", alg=alg
    )
    quote = await client.attest()
    assert quote.pq_public is not None  # checked against user_data "pq" by the SDK
    report = await client.aggregates(registration.session_id)
    assert report.payload["exchange"] == "kraken"
    await client.revoke(registration)


async def test_records_and_session_log_end_to_end(
    client: SecureClient, http: aiohttp.ClientSession, stack: LocalStack
) -> None:
    """Seal a record, list it, unseal it to the owner only; the ops log lists the session's ops."""
    registration = await client.register(exchange="binance", api_key="rk", api_secret="rs")
    assert registration.owner_key is not None
    quote = await client.attest()
    note = b"record-canary-" + secrets.token_hex(8).encode()
    sealed_to_enclave = seal(
        note, metadata={"purpose": "record", "label": "notes"}, recipient_x25519=quote.enc_public
    )
    now = int(time.time())
    proof = sign_owner_proof(
        registration.owner_key, method="seal_record", session_id=registration.session_id,
        timestamp=now,
    )  # fmt: skip
    async with http.post(
        "/api/records",
        json={
            "session_id": registration.session_id,
            "envelope": sealed_to_enclave.to_wire(),
            **proof.to_wire(),
        },
    ) as resp:
        assert resp.status == 201, await resp.text()
        record = await resp.json()
    headers = {"X-Session-Id": registration.session_id}
    async with http.get("/api/records", headers=headers) as resp:
        listing = await resp.json()
    assert [r["id"] for r in listing["records"]] == [record["id"]]
    unseal_proof = sign_owner_proof(
        registration.owner_key,
        method=f"unseal_record:{record['id']}",
        session_id=registration.session_id,
        timestamp=now,
    )
    async with http.get(f"/api/records/{record['id']}", headers=headers) as resp:
        assert resp.status == 403  # no owner proof
    async with http.get(
        f"/api/records/{record['id']}",
        headers=headers
        | {
            "X-Owner-Timestamp": str(unseal_proof.timestamp),
            "X-Owner-Signature": unseal_proof.signature,
        },
    ) as resp:
        assert resp.status == 200
        unsealed = await resp.json()
    assert note not in json.dumps(unsealed).encode()  # encrypted to the owner
    owner_opener = EnvelopeOpener(owner_x25519_private(registration.owner_key))
    assert owner_opener.open(Envelope.from_wire(unsealed["envelope"])) == note
    # The sealed body in the database is not the note either.
    with psycopg.connect(admin_conninfo(stack), autocommit=True) as conn:
        rows = conn.execute("SELECT sealed FROM records").fetchall()
    assert rows
    assert all(note not in row[0].encode() for row in rows)
    async with http.get(f"/api/logs/{registration.session_id}") as resp:
        log = await resp.json()
    assert [entry["op"] for entry in log["access_log"]][:1] == ["submit"]
    assert [entry["entry"]["op"] for entry in log["entries"]][:1] == ["submit"]
    await client.revoke(registration)
    async with http.get("/api/records", headers=headers) as resp:
        assert resp.status == 404
