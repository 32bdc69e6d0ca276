"""End to end through the egress: ccxt in the enclave -> enclave CONNECT proxy -> transport ->
parent egress (allowlist, host override) -> fake exchange over TLS verified for the real name.

Real processes: the fake exchanges, the enclave and the parent each run on their own;
the test only talks HTTPS to the parent, like a user, and reads the fakes' ground truth.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from scripts.localstack import LocalStack, free_port
from shared.client import SecureClient
from shared.disclosure import open_disclosure, verify_disclosure
from shared.encoding import canonical_json
from shared.ids import session_hash
from shared.signing import report_hash, sign_owner_proof
from shared.translog import verify_log

pytestmark = pytest.mark.e2e

POLL_DEADLINE_S = 150


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """A stack whose exchange hosts are the local fakes (nothing leaves the machine)."""
    local = LocalStack(
        tmp_path_factory.mktemp("exchanges"),
        parent_port=free_port(),
        enclave_tcp_port=free_port(),
        extra_env={"RATE_LIMIT_MAX": "100000"},
        # The enclave lets this one through; the parent's allowlist does not.
        enclave_extra_allow=("www.bitstamp.net:443",),
    )
    local.start()
    try:
        yield local
    finally:
        local.stop()


def truth_digest(keys: set[tuple[str, str]]) -> str:
    """The same commitment the enclave reports, computed from the fake's ground truth.

    Written out here on purpose instead of calling shared.merkle.trade_set_digest: an
    independent computation catches a bug there too.
    """
    return hashlib.sha256(canonical_json(sorted([s, i] for s, i in keys))).hexdigest()


async def wait_for_polling(
    client: SecureClient, session_id: str, done: Any, deadline_s: float = POLL_DEADLINE_S
) -> dict[str, Any]:
    """Poll the summary until ``done(polling)`` holds; return that polling block."""
    deadline = time.monotonic() + deadline_s
    polling: dict[str, Any] = {}
    while time.monotonic() < deadline:
        polling = (await client.summary(session_id))["polling"]
        if done(polling):
            return polling
        await asyncio.sleep(0.5)
    raise AssertionError(f"polling did not finish in time: {polling}")


async def metrics_text(stack: LocalStack) -> str:
    """The parent's Prometheus exposition."""
    context = ssl.create_default_context(cafile=str(stack.ca_file))
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as http,
        http.get(stack.base_url + "/metrics") as response,
    ):
        return await response.text()


@pytest.mark.parametrize("exchange", ["binance", "kraken", "coinbase"])
async def test_full_history_through_the_egress(
    client: SecureClient, stack: LocalStack, exchange: str
) -> None:
    """The enclave fetches the fake's whole seeded history: same trade set, none doubled."""
    fake = stack.fakes_info()["exchanges"][exchange]
    truth = stack.truth(exchange)
    assert len(truth) == fake["trades"] > 100
    registration = await client.register(
        exchange=exchange,
        api_key=fake["credentials"]["api_key"],
        api_secret=fake["credentials"]["api_secret"],
        label=f"e2e-{exchange}",
    )
    polling = await wait_for_polling(
        client,
        registration.session_id,
        lambda p: p.get("complete") or p.get("error_kind") == "auth",
    )
    assert polling["error_kind"] is None, polling
    assert polling["trades_seen"] == len(truth)
    assert polling["trades_digest"] == truth_digest(truth)
    summary = await client.summary(registration.session_id)
    assert summary["completeness"]["calls"] >= 1
    report = await client.aggregates(registration.session_id)  # signature verified by the SDK
    assert report.payload["trades"] == len(truth)
    assert report.payload["completeness"]["complete"] is True
    assert report.payload["trades_digest"] == truth_digest(truth)
    assert report.merkle_root == report.payload["merkle_root"] != hashlib.sha256(b"").hexdigest()
    # The tunnel was used: the parent counted allow-listed connections to this host.
    assert f'egress_connections_total{{host="{fake["host"]}:443",outcome="ok"}}' in (
        await metrics_text(stack)
    )
    # The owner discloses one real trade; it verifies against the signed report offline.
    symbol, trade_id = sorted(truth)[len(truth) // 2]
    quote = await client.attest()
    proof = sign_owner_proof(
        registration.owner_key,  # type: ignore[arg-type]
        method="disclose_trade",
        session_id=registration.session_id,
        timestamp=int(time.time()),
    )
    status, body = await call_parent(
        stack,
        "POST",
        "/enclave/disclose_trade",
        {
            "session_id": registration.session_id,
            "symbol": symbol,
            "trade_id": trade_id,
            "tree_size": report.payload["merkle_tree_size"],
        }
        | proof.to_wire(),
    )
    assert status == 200, body
    assert registration.owner_key is not None
    disclosure = open_disclosure(body["envelope"], registration.owner_key)
    trade = verify_disclosure(disclosure, report_payload=report.payload)
    assert (trade.fields["symbol"], trade.fields["id"]) == (symbol, trade_id)
    # The transparency log shows all of it, signed by the attested key.
    digest = session_hash(registration.session_id)
    status, body = await call_parent(stack, "GET", f"/api/logs/{registration.session_id}")
    assert status == 200, body
    live = verify_log(
        body, signing_public=quote.sig_public, session_hash=digest, require_complete=True
    )
    assert live.ops()[0] == "submit" and {"poll", "report", "disclose"} <= set(live.ops())
    assert report_hash(report.payload) in live.reports().values()
    await client.revoke(registration)
    status, body = await call_parent(
        stack, "GET", f"/api/logs/{registration.session_id}?since_size={live.head.size}"
    )
    assert status == 200, body
    final = verify_log(
        body,
        signing_public=quote.sig_public,
        session_hash=digest,
        trusted_head=live.head,
        require_complete=True,
    )
    assert final.ops()[-1] == "revoke" and body["live"] is False


async def call_parent(
    stack: LocalStack, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    """One HTTPS request to the parent, as any HTTP client would make it."""
    context = ssl.create_default_context(cafile=str(stack.ca_file))
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as http,
        http.request(method, stack.base_url + path, json=body) as response,
    ):
        return response.status, await response.json()


async def test_rate_limit_and_5xx_burst_are_ridden_out(
    client: SecureClient, stack: LocalStack
) -> None:
    """429s with Retry-After and a 5xx burst: the poller waits as told, then reads everything."""
    fake = stack.fakes_info()["exchanges"]["coinbase"]
    calls_before = len(stack.fake_admin("GET", "/calls/coinbase"))
    stack.fake_admin(
        "POST", "/faults/coinbase", {"kind": "rate_limit", "times": 2, "retry_after_s": 2}
    )
    stack.fake_admin(
        "POST", "/faults/coinbase", {"kind": "server_error", "times": 2, "status": 503}
    )
    registration = await client.register(
        exchange="coinbase",
        api_key=fake["credentials"]["api_key"],
        api_secret=fake["credentials"]["api_secret"],
        label="e2e-faults",
    )
    polling = await wait_for_polling(
        client,
        registration.session_id,
        lambda p: p.get("complete") or p.get("error_kind") == "auth",
    )
    assert polling["trades_digest"] == truth_digest(stack.truth("coinbase"))
    calls = stack.fake_admin("GET", "/calls/coinbase")[calls_before:]
    faults = [c for c in calls if c["fault"] is not None]
    assert [c["fault"] for c in faults].count("rate_limit") == 2
    assert [c["fault"] for c in faults].count("server_error") == 2
    last_rate_limited = max(c["at"] for c in faults if c["fault"] == "rate_limit")
    first_after = min(c["at"] for c in calls if c["at"] > last_rate_limited and c["fault"] is None)
    # Retry-After: 2 was honoured (ccxt's limiter and the scheduler both wait).
    assert first_after - last_rate_limited >= 1.8
    await client.revoke(registration)


async def test_host_refused_by_the_parent(client: SecureClient, stack: LocalStack) -> None:
    """A host the enclave allows but the parent does not: the parent refuses it (403)."""
    before = await metrics_text(stack)
    registration = await client.register(exchange="bitstamp", api_key="k", api_secret="s")
    polling = await wait_for_polling(
        client, registration.session_id, lambda p: p.get("error_kind") is not None, 60
    )
    assert polling["error_kind"] == "denied_by_egress", polling
    denied = 'egress_connections_total{host="denied",outcome="denied"}'
    after = await metrics_text(stack)
    assert denied in after
    assert _counter(after, denied) > _counter(before, denied)
    assert "bitstamp" not in after  # a denied name never becomes a metric label
    await client.revoke(registration)


def _counter(exposition: str, series: str) -> float:
    """The value of one series in a Prometheus text exposition (0 if absent)."""
    for line in exposition.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


async def test_invalid_key_stops_polling_without_retry_storm(
    client: SecureClient, stack: LocalStack
) -> None:
    """Wrong credentials: the session shows an auth error and polling stops (no retries)."""
    registration = await client.register(
        exchange="binance", api_key="not-the-key", api_secret="not-the-secret"
    )
    polling = await wait_for_polling(
        client, registration.session_id, lambda p: p.get("error_kind") == "auth", 60
    )
    assert polling["state"] == "auth_error"
    assert "not-the-secret" not in str(polling)
    calls = polling["calls"]
    at_fake = len(stack.fake_admin("GET", "/calls/binance"))
    await asyncio.sleep(2)
    again = (await client.summary(registration.session_id))["polling"]
    assert again["calls"] == calls
    assert again["state"] == "auth_error"
    # The exchange saw no further request either.
    assert len(stack.fake_admin("GET", "/calls/binance")) == at_fake
    await client.revoke(registration)


async def test_host_outside_the_allowlist_is_refused_in_the_enclave(
    client: SecureClient, stack: LocalStack
) -> None:
    """An exchange not on the enclave's allowlist never reaches the parent's egress."""
    before = await metrics_text(stack)
    registration = await client.register(exchange="bitfinex", api_key="k", api_secret="s")
    polling = await wait_for_polling(
        client, registration.session_id, lambda p: p.get("error_kind") is not None, 60
    )
    assert polling["error_kind"] == "denied_by_egress", polling
    after = await metrics_text(stack)
    denied_line = 'egress_connections_total{host="denied",outcome="denied"}'
    assert (denied_line in before) == (denied_line in after)
    assert "bitfinex" not in after
    await client.revoke(registration)
