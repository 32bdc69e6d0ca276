"""Session leases: which replica polls, writes and serves each session. Side: parent.

N parent+enclave pairs share one PostgreSQL (DESIGN.md section 8). Each live session
has a lease row (migration 0005); its holder's enclave polls the session and its parent
alone stores the session's sealed state (the store fences those writes on the lease),
so no trade is ever read, counted or sealed by two enclaves at once. Every
LEASE_SECONDS/3, while the enclave is ready, the manager::

    renew_leases (one UPDATE) --> held now
      held before, not now (taken over, revoked, purged) --Lease(release)--> enclave:
          stop polling, forget the session (it is served elsewhere)
    acquire_leases (free or expired rows, FOR UPDATE SKIP LOCKED, at most BATCH)
      for each new one: get_sealed_state --Restore--> enclave --Lease(acquire)--> polling

A session created here is leased here by the same statement that stores it, and its
enclave already polls it. The supervisor, when it (re)unlocks the enclave, restores the
sessions this replica holds and hands them over (``synced``). A replica whose enclave
is not ready stops renewing, so its sessions move to another replica within one lease
period; a replica shutting down lets its leases expire at once (``close``). The API
takes a lease on the spot (``take``) for a request about a session whose lease is free
or expired (parent/api/forwarding.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Collection, Iterable
from typing import Final

import structlog

from parent.api.services import EnclavePort
from parent.db.errors import StoreError
from parent.db.store import Store
from parent.enclave_client import EnclaveClientError
from shared import protocol as p
from shared.sealed_state import MAX_SEALED_SIZE

__all__ = ["DEFAULT_BATCH", "LeaseManager"]

log = structlog.get_logger("parent.leases")

DEFAULT_BATCH: Final = 64
"""Leases taken per sweep at most: replicas sweeping together split the free sessions."""


class LeaseManager:
    """Renews this replica's leases, takes free or expired ones, tells the enclave."""

    def __init__(
        self,
        enclave: EnclavePort,
        store: Store,
        *,
        ready: Callable[[], bool],
        lease_seconds: float,
        batch: int = DEFAULT_BATCH,
        restore_batch_bytes: int = MAX_SEALED_SIZE,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """``enclave``: the raw client (not the API's gate). ``ready``: the supervisor's
        word that the enclave is unlocked, restored and answering."""
        if store.holder is None:
            raise ValueError("the store must be opened with a LeaseHolder")
        if batch < 1:
            raise ValueError("batch must be positive")
        self._enclave = enclave
        self._store = store
        self._ready = ready
        self._lease_seconds = lease_seconds
        self._batch = batch
        self._restore_batch_bytes = restore_batch_bytes
        self._monotonic = monotonic
        self._held: set[bytes] = set()  # leased to us AND restored + polled in our enclave
        self._synced = False  # the current enclave incarnation got its sessions
        self._lock = asyncio.Lock()  # one change of the enclave's leases at a time
        self._task: asyncio.Task[None] | None = None
        self._last_renewal: float | None = None

    # ------------------------------------------------------------------ state

    @property
    def replica_id(self) -> str:
        """This replica's name in the lease table."""
        holder = self._store.holder
        assert holder is not None  # checked in __init__
        return holder.replica_id

    @property
    def url(self) -> str:
        """This replica's HTTPS URL, as the lease table gives it to the other parents."""
        holder = self._store.holder
        assert holder is not None
        return holder.url

    @property
    def lease_seconds(self) -> float:
        """How long a lease lasts without renewal."""
        return self._lease_seconds

    @property
    def interval(self) -> float:
        """Seconds between sweeps (a third of a lease: two renewals may fail in a row)."""
        return self._lease_seconds / 3

    @property
    def lock(self) -> asyncio.Lock:
        """Held while the enclave's set of leased sessions changes (the supervisor's
        restore takes it too)."""
        return self._lock

    def holds(self, session_hash: bytes) -> bool:
        """The lease is ours and the session is restored and polled in our enclave."""
        return self._synced and session_hash in self._held

    def synced(self, held: Collection[bytes]) -> None:
        """The supervisor restored ``held`` into a (re)unlocked enclave and acquired them."""
        self._held = set(held)
        self._synced = True
        self._last_renewal = self._monotonic()

    def adopt(self, session_hash: bytes) -> None:
        """A session this replica just created: leased with it, polled by our enclave."""
        if self._synced:
            self._held.add(session_hash)

    def reset(self) -> None:
        """The enclave restarted (it is locked): it holds nothing until ``synced``."""
        self._held.clear()
        self._synced = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Run the sweeps in the background."""
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="lease-manager")

    async def close(self, *, release: bool = True) -> None:
        """Stop sweeping; with ``release`` let every lease of ours expire now."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if release:
            try:
                released = await self._store.release_leases()
            except StoreError as exc:
                log.warning("lease_release_failed", error_type=type(exc).__name__)
            else:
                log.info("leases_released", count=released)
        self.reset()

    async def run(self) -> None:
        """Sweep every ``interval`` until cancelled."""
        while True:
            started = self._monotonic()
            try:
                await self.tick()
            except (StoreError, EnclaveClientError) as exc:
                log.warning("lease_sweep_failed", error_type=type(exc).__name__)
            except Exception as exc:  # noqa: BLE001 - a bug must not end the sweeps
                log.error("lease_sweep_error", error_type=type(exc).__name__)
            await asyncio.sleep(max(0.05, self.interval - (self._monotonic() - started)))

    # ------------------------------------------------------------------ sweeps

    async def tick(self) -> None:
        """One sweep: renew, release what was lost, take and restore free/expired leases."""
        async with self._lock:
            if not (self._synced and self._ready()):
                # An enclave that is not serving must not keep its sessions: not
                # renewing hands them to another replica within one lease period.
                return
            held_now = await self._store.renew_leases()
            self._last_renewal = self._monotonic()
            lost = self._held - held_now
            if lost:
                await self._tell_enclave(acquire=(), release=lost)
                self._held -= lost
                log.info("leases_lost", count=len(lost))
            # Ours in the database but not in the enclave (an on-the-spot take that
            # failed half-way): restore them now.
            pending = set(held_now - self._held)
            pending.update(await self._store.acquire_leases(limit=self._batch))
            if pending:
                loaded = await self._load(pending)
                log.info("leases_acquired", count=len(pending), restored=loaded)

    async def take(self, session_hash: bytes) -> bool:
        """Take one session's lease now (free, expired or ours) and load it; True if held.

        For the API: a request about a session nobody serves. Never takes a valid lease
        of another replica.
        """
        async with self._lock:
            if not (self._synced and self._ready()):
                return False
            if session_hash in self._held:
                return True
            if not await self._store.acquire_lease(session_hash):
                return False
            await self._load({session_hash})
            log.info("lease_taken_on_request")
            return True

    async def _load(self, hashes: set[bytes]) -> int:
        """Restore the stored states of newly leased sessions, then start polling them."""
        restored = 0
        batch: list[bytes] = []
        size = 0
        for digest in sorted(hashes):
            state = await self._store.get_sealed_state(digest)
            if state is None:
                continue  # no state stored (yet): nothing to serve, nothing to poll
            if batch and size + len(state.sealed) >= self._restore_batch_bytes:
                restored += await self._restore(batch)
                batch, size = [], 0
            batch.append(state.sealed)
            size += len(state.sealed)
        if batch:
            restored += await self._restore(batch)
        await self._tell_enclave(acquire=hashes, release=())
        self._held |= hashes
        return restored

    async def _restore(self, blobs: list[bytes]) -> int:
        reply = await self._enclave.call(
            p.Restore(request_id=0, sealed=tuple(blobs), revocations=None), p.RestoreReply
        )
        if reply.refused:
            # Older than a copy the enclave holds, revoked, expired or not openable.
            log.warning("lease_restore_refused", refused=reply.refused)
        return reply.restored

    async def _tell_enclave(self, *, acquire: Iterable[bytes], release: Iterable[bytes]) -> None:
        await self._enclave.call(
            p.Lease(request_id=0, acquire=tuple(sorted(acquire)), release=tuple(sorted(release))),
            p.LeaseReply,
        )
