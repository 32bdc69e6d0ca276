"""Session leases on a real PostgreSQL: split, exclusive, handed over on expiry, renewed,
and fencing every write of a session's state to its holder (parent/db/store.py,
parent/leases.py, migration 0005)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import TypeVar

import psycopg
import pytest

from parent.db import LeaseLost
from parent.db.store import LeaseHolder, Store
from parent.leases import LeaseManager
from shared import protocol as p
from tests.support.postgres import PgDatabase
from tests.test_store import new_session, state

R = TypeVar("R", bound=p.Reply)


def holder(name: str, lease_seconds: float = 30.0) -> LeaseHolder:
    return LeaseHolder(
        replica_id=name, url=f"https://{name}.internal:3000", lease_seconds=lease_seconds
    )


@pytest.fixture
async def replicas(pg_db: PgDatabase) -> AsyncIterator[tuple[Store, Store, Store]]:
    """A store without leases (sessions created before leases) and two replicas."""
    plain = await Store.open(pg_db.app_conninfo, min_size=1, max_size=4)
    a = await Store.open(pg_db.app_conninfo, min_size=1, max_size=8, holder=holder("a", 1.0))
    b = await Store.open(pg_db.app_conninfo, min_size=1, max_size=8, holder=holder("b", 1.0))
    try:
        yield plain, a, b
    finally:
        for store in (plain, a, b):
            await store.close()


async def sweep(store: Store, into: set[bytes]) -> None:
    for _ in range(12):
        into.update(await store.acquire_leases(limit=3))


def expire_all(db: PgDatabase) -> None:
    with psycopg.connect(db.admin_conninfo, autocommit=True) as conn:
        conn.execute("UPDATE session_leases SET expires_at = now() - interval '1 second'")


async def test_a_created_session_is_leased_to_its_creator(
    replicas: tuple[Store, Store, Store],
) -> None:
    """create_session takes the lease in the same statement; others see a valid lease."""
    _, a, b = replicas
    digest = await new_session(a)
    lease = await b.get_lease(digest)
    assert lease is not None and lease.valid
    assert (lease.holder, lease.holder_url) == ("a", "https://a.internal:3000")
    assert 0 < lease.remaining <= 1.0
    assert not await b.acquire_lease(digest)  # a valid lease is never stolen
    assert await b.acquire_leases(limit=10) == []
    assert await a.renew_leases() == {digest}


async def test_two_replicas_split_free_sessions(replicas: tuple[Store, Store, Store]) -> None:
    """Sweeps are bounded: two replicas sweeping in turn share the unleased sessions."""
    plain, a, b = replicas
    sessions = {await new_session(plain) for _ in range(6)}
    assert (await a.get_lease(next(iter(sessions)))) is not None  # live, holder None
    taken_a = set(await a.acquire_leases(limit=2))
    taken_b = set(await b.acquire_leases(limit=2))
    taken_a |= set(await a.acquire_leases(limit=2))
    taken_b |= set(await b.acquire_leases(limit=2))
    assert len(taken_a) == 4 and len(taken_b) == 2
    assert taken_a | taken_b == sessions and not taken_a & taken_b
    assert await a.renew_leases() == taken_a
    assert await b.renew_leases() == taken_b


async def test_concurrent_sweeps_never_lease_a_session_twice(
    pg_db: PgDatabase, replicas: tuple[Store, Store, Store]
) -> None:
    """Racing sweeps (free rows, then expired rows) hand every session to exactly one."""
    plain, a, b = replicas
    sessions = {await new_session(plain) for _ in range(40)}
    for _ in range(2):  # first free (no rows), then all expired
        got: dict[str, set[bytes]] = {"a": set(), "b": set()}

        await asyncio.gather(*(sweep(s, got[n]) for s, n in ((a, "a"), (b, "b")) * 2))
        assert not got["a"] & got["b"]
        assert got["a"] | got["b"] == sessions
        assert await a.renew_leases() | await b.renew_leases() == sessions
        expire_all(pg_db)


async def test_an_expired_lease_is_handed_over(replicas: tuple[Store, Store, Store]) -> None:
    """A holder that stops renewing loses the session after one lease period."""
    _, a, b = replicas
    digest = await new_session(a)
    await asyncio.sleep(1.1)
    lease = await b.get_lease(digest)
    assert lease is not None and not lease.valid and lease.holder == "a"
    assert await b.acquire_leases(limit=10) == [digest]
    assert await a.renew_leases() == frozenset()  # a learns it lost it
    assert await b.renew_leases() == {digest}
    assert not await a.acquire_lease(digest)


async def test_renewal_keeps_leases(replicas: tuple[Store, Store, Store]) -> None:
    """Renewing every third of a lease keeps it through several periods."""
    _, a, b = replicas
    digest = await new_session(a)
    for _ in range(6):
        await asyncio.sleep(0.33)
        assert await a.renew_leases() == {digest}
        assert await b.acquire_leases(limit=10) == []
        assert not await b.acquire_lease(digest)


async def test_released_leases_are_taken_at_once(replicas: tuple[Store, Store, Store]) -> None:
    """A replica shutting down lets its leases expire now."""
    _, a, b = replicas
    digests = {await new_session(a) for _ in range(3)}
    assert await a.release_leases() == 3
    assert set(await b.acquire_leases(limit=10)) == digests


async def test_only_the_holder_writes_a_sessions_state(
    replicas: tuple[Store, Store, Store],
) -> None:
    """Sealed states and reports of a session are stored by its lease holder only."""
    _, a, b = replicas
    digest = await new_session(a)
    assert await a.store_sealed_state(state(digest, 1))
    with pytest.raises(LeaseLost):
        await b.store_sealed_state(state(digest, 2))
    assert await b.store_sealed_states([state(digest, 3)]) == 0  # a checkpoint skips it
    with pytest.raises(LeaseLost):
        await b.store_aggregate(
            digest, seq=0, payload={"v": 1}, signature="c2ln", sealed_state=state(digest, 4)
        )
    stored = await a.get_sealed_state(digest)
    assert stored is not None and stored.version == 1
    assert await a.store_sealed_states([state(digest, 5)]) == 1
    now = datetime.now(UTC)
    held = await a.list_sealed_states(now=now, max_bytes=10**6, held_only=True)
    assert [s.session_hash for s in held] == [digest]
    assert await b.list_sealed_states(now=now, max_bytes=10**6, held_only=True) == []


# --------------------------------------------------------------------------- manager


class FakeEnclave:
    """Answers Restore and Lease like the enclave, recording what it was told."""

    def __init__(self) -> None:
        self.restored: list[bytes] = []
        self.polling: set[bytes] = set()
        self.released: list[bytes] = []

    async def call(self, request: p.Request, reply_type: type[R]) -> R:
        if isinstance(request, p.Restore):
            self.restored.extend(request.sealed)
            reply: p.Reply = p.RestoreReply(request_id=0, restored=len(request.sealed), refused=0)
        elif isinstance(request, p.Lease):
            self.polling |= set(request.acquire)
            self.polling -= set(request.release)
            self.released.extend(request.release)
            reply = p.LeaseReply(request_id=0, polling=len(self.polling))
        else:
            raise AssertionError(f"unexpected {request.TYPE}")
        assert isinstance(reply, reply_type)
        return reply


async def test_the_manager_restores_what_it_takes_and_releases_what_it_loses(
    pg_db: PgDatabase, replicas: tuple[Store, Store, Store]
) -> None:
    """A sweep restores taken sessions' states and polls them; a lost lease is released."""
    plain, a, b = replicas
    digests = [await new_session(plain) for _ in range(3)]
    # States written before leases existed (no holder: no fence).
    for digest in digests:
        assert await plain.store_sealed_state(state(digest, 1))
    enclave_a, enclave_b = FakeEnclave(), FakeEnclave()
    manager_a = LeaseManager(enclave_a, a, ready=lambda: True, lease_seconds=1.0, batch=2)
    manager_b = LeaseManager(enclave_b, b, ready=lambda: True, lease_seconds=1.0, batch=2)
    manager_a.synced(())
    manager_b.synced(())
    await manager_a.tick()
    await manager_b.tick()
    assert len(enclave_a.polling) == 2 and len(enclave_b.polling) == 1
    assert len(enclave_a.restored) == 2 and len(enclave_b.restored) == 1
    assert enclave_a.polling | enclave_b.polling == set(digests)
    # a does not sweep (it stopped renewing): b takes over after one lease period.
    stolen = set(enclave_a.polling)
    await asyncio.sleep(1.1)
    await manager_b.tick()
    assert enclave_b.polling == set(digests)
    await manager_a.tick()
    assert set(enclave_a.released) == stolen and enclave_a.polling == set()
    assert not any(manager_a.holds(d) for d in digests)
    assert all(manager_b.holds(d) for d in digests)
    await manager_b.close(release=True)
    assert await a.acquire_leases(limit=10) != []
