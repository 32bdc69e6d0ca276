"""End to end under faults: enclave killed and restarted, rate limiting, TTL expiry.

Real processes again; this module gets its own stack because it kills the enclave
and configures short TTLs and a small rate limit.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import psycopg
import pytest

from parent.db.embedded import EmbeddedPostgres
from scripts.localstack import LocalStack, StackError, free_port
from shared.client import SecureClient, ServerRejected
from shared.ids import session_hash

pytestmark = pytest.mark.e2e

RATE_LIMIT = 25


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """A stack with 1 s TTL floor, 1 s purges and a small per-IP rate limit."""
    local = LocalStack(
        tmp_path_factory.mktemp("faults"),
        parent_port=free_port(),
        enclave_tcp_port=free_port(),
        extra_env={
            "RATE_LIMIT_MAX": str(RATE_LIMIT),
            "RATE_LIMIT_WINDOW": "60000",
            "MIN_TTL_SECONDS": "1",
            "PURGE_INTERVAL_SECONDS": "1",
        },
    )
    local.start()
    try:
        yield local
    finally:
        local.stop()


def connector(stack: LocalStack, source_ip: str) -> aiohttp.TCPConnector:
    """HTTPS from a chosen loopback source address (the rate limit is per client IP)."""
    context = ssl.create_default_context(cafile=str(stack.ca_file))
    return aiohttp.TCPConnector(ssl=context, local_addr=(source_ip, 0))


def rows_of(stack: LocalStack, session_id: str) -> int:
    """Rows referring to this session in sessions (credentials cascade from it)."""
    admin = EmbeddedPostgres(stack.state_dir).admin_conninfo()
    with psycopg.connect(admin, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM sessions WHERE session_hash = %s", (session_hash(session_id),)
        ).fetchone()
        creds = conn.execute(
            "SELECT count(*) FROM credentials c JOIN sessions s ON s.id = c.session_id "
            "WHERE s.session_hash = %s",
            (session_hash(session_id),),
        ).fetchone()
    assert row is not None and creds is not None
    return int(row[0]) + int(creds[0])


async def test_rate_limit_gives_429_with_retry_after(stack: LocalStack) -> None:
    """Past RATE_LIMIT_MAX requests in the window one IP gets 429 + Retry-After; others don't."""
    async with aiohttp.ClientSession(
        base_url=stack.base_url, connector=connector(stack, "127.0.0.7")
    ) as session:
        statuses = []
        retry_after = None
        for _ in range(RATE_LIMIT + 10):
            async with session.get("/enclave/summary/" + "A" * 43) as resp:
                statuses.append(resp.status)
                if resp.status == 429:
                    retry_after = resp.headers.get("Retry-After")
                    assert (await resp.json())["error"]["code"] == "rate_limited"
        assert statuses[:RATE_LIMIT] == [404] * RATE_LIMIT
        assert statuses[RATE_LIMIT:] == [429] * 10
        assert retry_after is not None and int(retry_after) >= 1
    async with (
        aiohttp.ClientSession(
            base_url=stack.base_url, connector=connector(stack, "127.0.0.8")
        ) as other,
        other.get("/enclave/summary/" + "A" * 43) as resp,
    ):
        assert resp.status == 404


async def test_ttl_expiry_purges_database_and_enclave(
    client: SecureClient, stack: LocalStack
) -> None:
    """After its TTL the session is gone from the enclave and from sessions/credentials."""
    registration = await client.register(
        exchange="binance", api_key="ttl-key", api_secret="ttl-secret", ttl=2
    )
    assert rows_of(stack, registration.session_id) == 2
    await asyncio.sleep(2.5)
    with pytest.raises(ServerRejected) as info:
        await client.summary(registration.session_id)
    assert info.value.status == 404
    for _ in range(25):  # the parent's purge runs every second
        if rows_of(stack, registration.session_id) == 0:
            break
        await asyncio.sleep(0.2)
    assert rows_of(stack, registration.session_id) == 0


async def test_enclave_outage_is_503_and_recovers(client: SecureClient, stack: LocalStack) -> None:
    """kill -9 the enclave: 503 JSON (nothing stored), then the parent unlocks and restores
    the new enclave by itself and the earlier session is served again."""
    before = await client.register(exchange="binance", api_key="k", api_secret="s")
    keys_before = await client.attest()
    stack.kill_enclave()
    context = ssl.create_default_context(cafile=str(stack.ca_file))
    async with aiohttp.ClientSession(
        base_url=stack.base_url, connector=aiohttp.TCPConnector(ssl=context)
    ) as http:
        async with http.get("/attestation/quote") as resp:
            assert resp.status == 503
            body = await resp.json()
            assert body["error"]["code"] == "unavailable"
        async with http.get("/readyz") as resp:
            assert resp.status == 503
        admin = EmbeddedPostgres(stack.state_dir).admin_conninfo()
        with psycopg.connect(admin, autocommit=True) as conn:
            count_before = conn.execute("SELECT count(*) FROM sessions").fetchone()
        async with http.post(
            "/enclave/submit_key",
            json={
                "ephemeral_pub": "A" * 43 + "=",
                "nonce": "A" * 16,
                "ciphertext": "QUJD",
                "tag": "A" * 22 + "==",
                "metadata": {"exchange": "binance", "label": "x", "ttl": 3600},
            },
        ) as resp:
            assert resp.status == 503
        with psycopg.connect(admin, autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM sessions").fetchone() == count_before
        stack.start_enclave()
        stack.wait_ready(timeout=30)
    # KMS sealing: the restarted enclave adopts the same identity and the parent replays
    # every session, so the old session is served again under the same id and key.
    keys_after = await client.attest()
    assert (keys_after.sig_public, keys_after.enc_public) == (
        keys_before.sig_public,
        keys_before.enc_public,
    )
    summary = await client.summary(before.session_id)
    assert summary["status"] == "active"
    report = await client.aggregates(before.session_id)  # same attested key verifies it
    assert report.payload["seq"] == 1
    after = await client.register(exchange="binance", api_key="k2", api_secret="s2")
    assert (await client.aggregates(after.session_id)).payload["seq"] == 1


def test_a_stack_that_fails_to_start_leaves_no_process(tmp_path: Path) -> None:
    """A parent refusing its configuration fails start() and stops fakes, KMS and enclave."""
    local = LocalStack(
        tmp_path / "broken",
        parent_port=free_port(),
        enclave_tcp_port=free_port(),
        extra_env={"RATE_LIMIT_MAX": "not-a-number"},
    )
    with pytest.raises(StackError, match="parent exited"):
        local.start()
    started = [local.fakes, local.enclave, local.kms, local.parent]
    assert all(proc is not None for proc in started)
    assert all(proc.poll() is not None for proc in started if proc is not None)
