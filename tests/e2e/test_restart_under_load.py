"""kill -9 the enclave under a steady submit/aggregate load: nothing acknowledged is lost.

Real processes: fake exchanges, the KMS simulator, the enclave (sealing on) and the
parent. Workers register sessions with the fake Coinbase keys and ask for reports while
the enclave is killed and started again. Afterwards every session whose submit got a
2xx answer is served under the same id, keeps polling to the whole history, and its
report chain continues; the database holds exactly those sessions; every answer during
the outage was a 503 JSON error, never a 500.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from parent.db.embedded import EmbeddedPostgres
from scripts.localstack import LocalStack
from shared.client import SecureClient, ServerRejected
from shared.ids import session_hash
from tests.e2e.conftest import running_stack

pytestmark = pytest.mark.e2e

WORKERS = 3
LOAD_SECONDS = 9.0
KILL_AFTER_SECONDS = 3.0
DOWN_SECONDS = 1.0
MAX_SESSIONS = 36  # every session polls the fake Coinbase: keep the exchange load sane
PAUSE_SECONDS = 0.15  # between one worker's requests: a steady load, not a flood


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """A stack with KMS sealing (the default) and a generous rate limit."""
    yield from running_stack(tmp_path_factory, "restart-under-load")


def new_client(stack: LocalStack) -> SecureClient:
    """The SDK pinned to the stack's simulator root and PCRs."""
    return SecureClient(
        stack.base_url,
        expected_pcrs=stack.expected_pcrs(),
        root_der=stack.nsm_root_der(),
        ca_file=str(stack.ca_file),
    )


class Load:
    """What the workers saw: acknowledged sessions and reports, every refusal."""

    def __init__(self) -> None:
        self.sessions: list[str] = []
        self.reports: dict[str, list[int]] = {}
        self.statuses: Counter[int] = Counter()
        self.bad: list[str] = []


async def worker(stack: LocalStack, load: Load, stop_at: float, seed: int) -> None:
    """Register and read reports until ``stop_at``; record every outcome."""
    rng = random.Random(seed)
    keys = stack.fakes_info()["exchanges"]["coinbase"]["credentials"]
    async with new_client(stack) as client:
        while time.monotonic() < stop_at:
            try:
                if not load.sessions or (len(load.sessions) < MAX_SESSIONS and rng.random() < 0.4):
                    registration = await client.register(
                        exchange="coinbase",
                        api_key=keys["api_key"],
                        api_secret=keys["api_secret"],
                        label=f"load-{seed}",
                    )
                    load.sessions.append(registration.session_id)
                    load.statuses[201] += 1
                else:
                    session_id = rng.choice(load.sessions)
                    report = await client.aggregates(session_id)
                    load.reports.setdefault(session_id, []).append(report.payload["seq"])
                    load.statuses[200] += 1
                await asyncio.sleep(PAUSE_SECONDS)
            except ServerRejected as exc:
                load.statuses[exc.status] += 1
                if exc.status != 503 or exc.code != "unavailable":
                    load.bad.append(f"HTTP {exc.status} {exc.code}: {exc.message}")
                await asyncio.sleep(0.1)


async def test_kill_9_under_load_loses_no_acknowledged_session(stack: LocalStack) -> None:
    """Every 2xx session is served again with the same id and keeps polling; 503s only."""
    load = Load()
    started = time.monotonic()
    stop_at = started + LOAD_SECONDS
    workers = [asyncio.create_task(worker(stack, load, stop_at, seed)) for seed in range(WORKERS)]
    await asyncio.sleep(KILL_AFTER_SECONDS)
    acknowledged_before_kill = len(load.sessions)
    killed_at = time.monotonic()
    stack.kill_enclave()
    await asyncio.sleep(DOWN_SECONDS)
    await asyncio.to_thread(stack.start_enclave)
    await asyncio.to_thread(stack.wait_ready, timeout=60)
    ready_after = time.monotonic() - killed_at
    await asyncio.gather(*workers)

    assert acknowledged_before_kill > 0 and len(load.sessions) > acknowledged_before_kill
    assert load.statuses[503] > 0, load.statuses  # the outage was seen ...
    assert load.bad == [], load.bad  # ... and answered 503 "unavailable" only
    assert len(set(load.sessions)) == len(load.sessions)

    truth = stack.truth("coinbase")
    async with new_client(stack) as client:
        deadline = time.monotonic() + 90
        for session_id in load.sessions:
            while True:
                polling = (await client.summary(session_id))["polling"]
                if polling.get("complete") and polling.get("trades_seen") == len(truth):
                    break
                assert time.monotonic() < deadline, polling
                await asyncio.sleep(0.2)
            report = await client.aggregates(session_id)  # verifies with the same key
            seqs = load.reports.get(session_id, [])
            assert report.payload["seq"] == (max(seqs) + 1 if seqs else 1), (seqs, report.payload)
            assert report.payload["trades"] == len(truth)
        served_after = time.monotonic() - killed_at

    admin = EmbeddedPostgres(stack.state_dir).admin_conninfo()
    with psycopg.connect(admin, autocommit=True) as conn:
        stored = {
            bytes(row[0]) for row in conn.execute("SELECT session_hash FROM sessions").fetchall()
        }
        sealed = conn.execute("SELECT count(*) FROM sealed_sessions").fetchone()
    assert stored == {session_hash(s) for s in load.sessions}  # none lost, none extra
    assert sealed == (len(load.sessions),)
    summary: dict[str, Any] = {
        "sessions": len(load.sessions),
        "statuses": dict(load.statuses),
        "ready_after_kill_s": round(ready_after, 2),
        "all_served_after_kill_s": round(served_after, 2),
    }
    print(f"restart under load: {summary}")
