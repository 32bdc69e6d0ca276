"""End to end with two replicas: two enclave+parent pairs sharing one PostgreSQL.

Issue 7 item 4: both serve any session (a request reaching the replica that does not
hold the session's lease is forwarded to the one that does); polling is leased, so each
session is polled by one replica at a time; kill -9 one pair's enclave AND parent
mid-poll and the other takes its sessions over within one lease period (+ one sweep),
restored from their sealed state. No trade is counted twice: every session ends with
the fake exchange's whole history (the trade set, count and Merkle tree size of a
single-replica run over the same deterministic history: tests/e2e/test_exchanges.py
checks that run against the same ground truth), and the Merkle tree a report signed
before the kill is a prefix of the tree after the takeover (a trade disclosed after it
verifies against that report's root).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Iterator

import psycopg
import pytest

from parent.db.embedded import EmbeddedPostgres
from scripts.localstack import LocalStack, free_port
from shared.client import Registration, SecureClient, ServerRejected
from shared.disclosure import verify_disclosure
from shared.encoding import canonical_json
from shared.ids import session_hash

pytestmark = pytest.mark.e2e

LEASE_SECONDS = 3
SWEEP_SECONDS = LEASE_SECONDS / 3
POLL_DEADLINE_S = 60


@pytest.fixture(scope="module")
def stacks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalStack, LocalStack]]:
    """Replica r1 (owns the embedded PostgreSQL, KMS simulator, fakes) and replica r2."""
    env = {"RATE_LIMIT_MAX": "100000", "LEASE_SECONDS": str(LEASE_SECONDS)}
    first = LocalStack(
        tmp_path_factory.mktemp("replicas"),
        parent_port=free_port(),
        enclave_tcp_port=free_port(),
        extra_env={**env, "REPLICA_ID": "r1"},
    )
    first.start()
    second: LocalStack | None = None
    try:
        second = first.start_replica(
            parent_port=free_port(), enclave_tcp_port=free_port(), extra_env={"REPLICA_ID": "r2"}
        )
        yield first, second
    finally:
        if second is not None:
            second.stop()
        first.stop()


def client_for(stack: LocalStack, pcrs_from: LocalStack) -> SecureClient:
    return SecureClient(
        stack.base_url,
        expected_pcrs=pcrs_from.expected_pcrs(),
        root_der=pcrs_from.nsm_root_der(),
        ca_file=str(pcrs_from.ca_file),
    )


def truth_digest(keys: set[tuple[str, str]]) -> str:
    """The enclave's trades_digest computed independently from the fake's ground truth."""
    return hashlib.sha256(canonical_json(sorted([s, i] for s, i in keys))).hexdigest()


def lease_holders(stack: LocalStack) -> dict[bytes, str]:
    """session hash -> holder, read with the admin role."""
    admin = EmbeddedPostgres(stack.state_dir).admin_conninfo()
    with psycopg.connect(admin, autocommit=True) as conn:
        rows = conn.execute("SELECT session_hash, holder FROM session_leases").fetchall()
    return {bytes(digest): holder for digest, holder in rows}


async def register(client: SecureClient, stack: LocalStack, exchange: str) -> Registration:
    fake = stack.fakes_info()["exchanges"][exchange]
    return await client.register(
        exchange=exchange,
        api_key=fake["credentials"]["api_key"],
        api_secret=fake["credentials"]["api_secret"],
        passphrase=fake["credentials"].get("passphrase"),
        label=f"replica-{exchange}",
        ttl=3600,
    )


async def find_committed_trade(
    client: SecureClient, registration: Registration, truth: set[tuple[str, str]], size: int
) -> tuple[str, str] | None:
    """A trade of the ground truth that sits in the first ``size`` leaves of the tree."""
    for symbol, trade_id in sorted(truth):
        try:
            disclosure = await client.disclose_trade(registration, symbol=symbol, trade_id=trade_id)
        except ServerRejected:
            continue  # not read yet
        if int(disclosure["inclusion_proof"]["index"]) < size:
            return symbol, trade_id
    return None


async def test_two_replicas_serve_all_and_take_over_a_dead_one(
    stacks: tuple[LocalStack, LocalStack],
) -> None:
    """Sessions of both replicas are served by both; after kill -9 of r2's pair, r1 holds
    and polls r2's sessions within a lease period, and every count equals the truth."""
    r1, r2 = stacks
    async with client_for(r1, r1) as c1, client_for(r2, r1) as c2:
        # Coinbase's fake history is read in about 15 s: the whole test stays short.
        sessions: list[tuple[Registration, str, str]] = []
        for _ in range(2):
            sessions.append((await register(c1, r1, "coinbase"), "coinbase", "r1"))
            sessions.append((await register(c2, r1, "coinbase"), "coinbase", "r2"))
        holders = lease_holders(r1)
        for registration, _, replica in sessions:
            assert holders[session_hash(registration.session_id)] == replica

        # Every session answers through both parents (forwarded to its holder).
        for registration, _, _ in sessions:
            for client in (c1, c2):
                summary = await client.summary(registration.session_id)
                assert summary["status"] == "active"

        # Mid-poll: throttle the fake's fills so trades arrive in steps, then catch one of
        # r2's sessions with some trades read but not all, and have it sign a report.
        truth = r1.truth("coinbase")
        r1.fake_admin(
            "POST",
            "/faults/coinbase",
            {"kind": "rate_limit", "times": 8, "retry_after_s": 2},
        )
        r2_registrations = [r for r, _, rep in sessions if rep == "r2"]
        victim: Registration | None = None
        deadline = time.monotonic() + POLL_DEADLINE_S
        while victim is None:
            assert time.monotonic() < deadline, "no r2 session caught mid-poll"
            for registration in r2_registrations:
                polling = (await c1.summary(registration.session_id))["polling"]
                if 0 < polling.get("trades_seen", 0) < len(truth):
                    victim = registration
                    break
            else:
                await asyncio.sleep(0.05)
        # Hold every further page (429s) so the victim stays mid-poll until the kill,
        # however busy the machine is; cleared once r1 has taken over.
        r1.fake_admin(
            "POST", "/faults/coinbase", {"kind": "rate_limit", "times": 100_000, "retry_after_s": 1}
        )
        before = await c1.aggregates(victim.session_id)  # forwarded to r2, signed there
        size_before = int(before.payload["merkle_tree_size"])
        log_before = await c1.logs(victim.session_id)
        print(f"\nkilling r2 with {size_before} of {len(truth)} trades committed")
        assert 0 < size_before < len(truth)  # mid-poll

        # kill -9 r2's enclave AND parent.
        killed_at = time.monotonic()
        r2.kill_enclave()
        r2.kill_parent()
        r2_sessions = {session_hash(r.session_id) for r, _, rep in sessions if rep == "r2"}
        while True:
            holders = lease_holders(r1)
            if all(holders.get(digest) == "r1" for digest in r2_sessions):
                break
            assert time.monotonic() - killed_at < LEASE_SECONDS + SWEEP_SECONDS + 5, holders
            await asyncio.sleep(0.05)
        takeover = time.monotonic() - killed_at
        print(f"\ntakeover of {len(r2_sessions)} sessions: {takeover:.2f} s after kill -9")
        # One lease period plus one sweep, and a margin for the restore itself.
        assert takeover <= LEASE_SECONDS + SWEEP_SECONDS + 1.5

        r1.fake_admin("POST", "/faults/coinbase", {"kind": "clear"})
        # Every session completes on r1 with the fake's whole history, nothing doubled.
        for registration, exchange, _ in sessions:
            expected = r1.truth(exchange)  # the single-replica result (test_exchanges.py)
            deadline = time.monotonic() + POLL_DEADLINE_S
            while True:
                polling = (await c1.summary(registration.session_id))["polling"]
                if polling.get("complete"):
                    break
                # Rate-limited (the fault held above) is transient: the poller backs off
                # and resumes; a terminal state (bad keys, refused) fails at once.
                assert polling.get("state") not in ("auth_error", "denied", "stopped"), polling
                assert time.monotonic() < deadline, polling
                await asyncio.sleep(0.5)
            assert polling["trades_digest"] == truth_digest(expected)
            report = await c1.aggregates(registration.session_id)
            assert report.payload["trades"] == len(expected)
            assert report.payload["merkle_tree_size"] == len(expected)
            assert report.payload["trades_digest"] == truth_digest(expected)

        # The victim's history continues the one signed before the kill.
        after = await c1.aggregates(victim.session_id)
        assert after.payload["seq"] > before.payload["seq"]
        assert after.payload["prev_report_hash"] is not None
        log_after = await c1.logs(victim.session_id, trusted_head=log_before.verified.head)
        assert log_after.verified.head.size > log_before.verified.head.size
        # The tree after the takeover extends the one signed before the kill: a trade
        # committed before it is proven, by the new holder, under the old report's root.
        committed = await find_committed_trade(c1, victim, truth, size_before)
        assert committed is not None
        symbol, trade_id = committed
        disclosure = await c1.disclose_trade(
            victim, symbol=symbol, trade_id=trade_id, tree_size=size_before
        )
        verify_disclosure(disclosure, report_payload=before.payload)
        assert after.payload["merkle_tree_size"] == len(truth)
