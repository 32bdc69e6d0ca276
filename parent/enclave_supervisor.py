"""Keeps the enclave unlocked, restored and checkpointed (KMS sealing on). Side: parent.

An enclave starts *locked*: it serves nothing but health until the parent hands it AWS
credentials and its sealed identity (``Unlock``), and it holds no session until the
parent replays the sealed states (``Restore``). The supervisor does both, every time
it sees the enclave locked (first start, or a restart), then checkpoints::

    supervisor --Health--> enclave                      every second
      "locked" (or "ok" but never unlocked by this parent):
    supervisor --get_enclave_identity--> DB
    supervisor --Unlock(credentials, identity | None)--> enclave --KMS (attested)-->
      created:   --insert_enclave_identity--> DB (once: a parent that loses the race
                 to store its new identity unlocks again with the winner's)
    supervisor --get_revocations, sealed_state_batches--> DB
      (with leases: renew_leases first, and only the sessions this replica holds)
    supervisor --Restore(revocation list), Restore(batch < 3 MiB)...--> enclave
      (with leases: --Lease(acquire=held)--> enclave: polling resumes; parent/leases.py
      takes free and expired leases from then on)
      ready: the gate opens, /readyz answers 200, recovery time is recorded
    every CHECKPOINT_INTERVAL_SECONDS while ready:
    supervisor --Checkpoint--> enclave --states--> store_sealed_states --> DB, while more

Until recovery completes, ``GatedEnclave`` answers every API call but health with
``EnclaveUnavailable`` (HTTP 503) and ``/readyz`` is 503, so no client sees a session
missing because it is not restored yet. Failures (KMS refused the attestation because
another PCR0 is running, KMS unreachable, database down, enclave gone) are logged by
reason and retried with capped exponential backoff. The parent never falls back to
serving an enclave without its sealed state (fail closed).

AWS credentials for the enclave's KMS calls come from a ``CredentialSource``: boto3's
default chain (the instance role through IMDS) in production, fetched afresh for each
unlock, or static keys from the config in development (the KMS simulator).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, Protocol, TypeVar

import structlog

from parent.api.services import EnclavePort
from parent.config import ParentConfig
from parent.db.errors import StoreError
from parent.db.store import EnclaveIdentity, SealedBlob, Store
from parent.enclave_client import EnclaveClientError, EnclaveRefused, EnclaveUnavailable
from parent.leases import LeaseManager
from parent.metrics import ApiMetrics
from shared import protocol as p
from shared.errors import PerfAggError
from shared.sealed_state import MAX_SEALED_SIZE, SealedStateError

__all__ = [
    "RESTORE_BATCH_BYTES",
    "AwsCredentials",
    "Boto3Credentials",
    "CredentialSource",
    "CredentialsUnavailable",
    "EnclaveSupervisor",
    "GatedEnclave",
    "Phase",
    "RecoveryError",
    "StaticCredentials",
    "credentials_from_config",
]

log = structlog.get_logger("parent.enclave_supervisor")

R = TypeVar("R", bound=p.Reply)

RESTORE_BATCH_BYTES: Final = MAX_SEALED_SIZE
"""A Restore batch's blobs add up to less than this (3 MiB), so with CBOR framing the
message stays well inside one 4 MiB RPC frame. A state is at most 3 MiB itself."""

_CHECKPOINT_CALLS_PER_ROUND: Final = 64  # Checkpoint calls per tick while ``more``
_CHECKPOINT_MAX_SESSIONS: Final = 256  # sessions per Checkpoint reply


def _utc_now() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------- credentials


@dataclass(frozen=True, slots=True)
class AwsCredentials:
    """AWS credentials for the enclave's KMS calls; never logged (not in the repr)."""

    access_key_id: str = field(repr=False)
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)


class CredentialsUnavailable(PerfAggError):
    """No AWS credentials could be resolved right now (no role, IMDS unreachable, ...)."""


class CredentialSource(Protocol):
    """Where the credentials handed to the enclave at each unlock come from."""

    async def credentials(self) -> AwsCredentials:
        """Current credentials, or ``CredentialsUnavailable``."""
        ...


class StaticCredentials:
    """Fixed credentials from the config (development: the KMS simulator)."""

    def __init__(self, credentials: AwsCredentials) -> None:
        self._credentials = credentials

    async def credentials(self) -> AwsCredentials:
        return self._credentials


class Boto3Credentials:
    """boto3's default credential chain, resolved in a worker thread at each call.

    On EC2 that is the instance role through IMDS: short-lived credentials that boto3
    refreshes, so every unlock hands the enclave fresh ones.
    """

    async def credentials(self) -> AwsCredentials:
        return await asyncio.to_thread(self._resolve)

    @staticmethod
    def _resolve() -> AwsCredentials:
        # Imported here: boto3 is only needed by a parent that unlocks with the chain.
        import boto3
        import botocore.exceptions

        try:
            found = boto3.Session().get_credentials()
            frozen = None if found is None else found.get_frozen_credentials()
        except botocore.exceptions.BotoCoreError as exc:
            raise CredentialsUnavailable(
                f"AWS credential chain failed ({type(exc).__name__})"
            ) from None
        if frozen is None or not frozen.access_key or not frozen.secret_key:
            raise CredentialsUnavailable("boto3's default credential chain found no credentials")
        return AwsCredentials(
            access_key_id=frozen.access_key,
            secret_access_key=frozen.secret_key,
            session_token=frozen.token or None,
        )


def credentials_from_config(config: ParentConfig) -> CredentialSource:
    """Static keys when the (development) config has them, else boto3's default chain."""
    if config.aws_access_key_id is not None and config.aws_secret_access_key is not None:
        return StaticCredentials(
            AwsCredentials(
                access_key_id=config.aws_access_key_id,
                secret_access_key=config.aws_secret_access_key,
                session_token=config.aws_session_token,
            )
        )
    return Boto3Credentials()


# --------------------------------------------------------------------------- supervisor


class Phase(enum.StrEnum):
    """Where the supervisor stands with the enclave (``/readyz`` shows it while not ready)."""

    STARTING = "starting"  # no health answer yet
    UNAVAILABLE = "unavailable"  # the enclave does not answer health, or is unhealthy
    LOCKED = "locked"  # locked: unlocking, or waiting to retry
    RESTORING = "restoring"  # unlocked, replaying the stored sessions
    READY = "ready"  # unlocked and restored: sessions are served


class RecoveryError(PerfAggError):
    """An unlock or restore attempt failed; ``reason`` is a fixed word for logs and metrics."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# What an Unlock refusal means for the operator (the enclave's own message is logged too).
_UNLOCK_HINTS: Final = {
    p.ErrorCode.FORBIDDEN: (
        "KMS refused this enclave's attestation: its measurements (PCR0) are not the ones"
        " the key policy names. Sessions stay unserved until an enclave KMS accepts runs."
    ),
    p.ErrorCode.UNAVAILABLE: "KMS or the enclave's attestation is unreachable; retrying",
    p.ErrorCode.UNDECRYPTABLE: "the stored sealed identity does not open in this enclave",
    p.ErrorCode.BAD_REQUEST: (
        "the enclave refused the unlock (already unlocked with another identity, or"
        " another KMS key); restart the enclave so it unlocks with the stored identity"
    ),
    p.ErrorCode.UNSUPPORTED: "the enclave has no KMS sealing; run it with sealing or SEALING=off",
}


class EnclaveSupervisor:
    """Health-polls the enclave; unlocks and restores it when locked; checkpoints it.

    ``ready`` (for ``/readyz``) and ``serving`` (for ``GatedEnclave``) say whether the
    current enclave has been unlocked and every stored session replayed into it.
    """

    def __init__(
        self,
        enclave: EnclavePort,
        store: Store,
        *,
        key_id: str,
        region: str,
        credentials: CredentialSource,
        metrics: ApiMetrics,
        checkpoint_interval: float = 10.0,
        poll_interval: float = 1.0,
        max_backoff: float = 60.0,
        restore_batch_bytes: int = RESTORE_BATCH_BYTES,
        checkpoint_max_sessions: int = _CHECKPOINT_MAX_SESSIONS,
        clock: Callable[[], datetime] = _utc_now,
        monotonic: Callable[[], float] = time.monotonic,
        leases: LeaseManager | None = None,
    ) -> None:
        """``leases``: replicas share the database; restore only what this one holds."""
        if not 0 < restore_batch_bytes <= RESTORE_BATCH_BYTES:
            raise ValueError("restore_batch_bytes must be 1..3 MiB")
        self._enclave = enclave
        self._store = store
        self._key_id = key_id
        self._region = region
        self._credentials = credentials
        self._metrics = metrics
        self._checkpoint_interval = checkpoint_interval
        self._poll_interval = poll_interval
        self._max_backoff = max_backoff
        self._restore_batch_bytes = restore_batch_bytes
        self._checkpoint_max_sessions = checkpoint_max_sessions
        self._clock = clock
        self._monotonic = monotonic
        self._leases = leases
        self._phase = Phase.STARTING
        self._unlocked = False  # this enclave incarnation was unlocked by us
        self._restored = False  # ... and every stored session replayed into it
        self._created: p.UnlockReply | None = None  # a new identity not stored yet
        self._pending: dict[bytes, SealedBlob] = {}  # checkpoint states not stored yet
        self._recovery_started: float | None = None
        self._failures = 0
        self._retry_at = 0.0
        self._next_checkpoint = 0.0
        self._task: asyncio.Task[None] | None = None
        metrics.enclave_ready.set(0)

    # ------------------------------------------------------------------ readiness

    @property
    def phase(self) -> Phase:
        """The current phase."""
        return self._phase

    @property
    def state(self) -> str:
        """The phase as one word (``Readiness``)."""
        return self._phase.value

    @property
    def ready(self) -> bool:
        """Unlocked, restored and answering health: ``/readyz`` may say ready."""
        return self._phase is Phase.READY

    @property
    def serving(self) -> bool:
        """Session calls may go through: the enclave was unlocked and restored.

        Stays true through a lost connection (calls fail by themselves then, and a
        restarted enclave answers locked, hence 503); false from the moment the
        enclave is seen locked until its sessions are back.
        """
        return self._restored

    def gate(self, enclave: EnclavePort) -> GatedEnclave:
        """``enclave`` behind this supervisor's gate: what the API handlers get."""
        return GatedEnclave(enclave, self)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Run the supervision loop in the background."""
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="enclave-supervisor")

    async def close(self) -> None:
        """Stop the loop (a call in flight is cancelled; nothing is half-stored)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def run(self) -> None:
        """Poll and act until cancelled."""
        while True:
            try:
                delay = await self.poll_once()
            except Exception as exc:  # noqa: BLE001 - a bug must not end supervision
                log.error("supervisor_error", error_type=type(exc).__name__)
                delay = self._schedule_retry()
            await asyncio.sleep(delay)

    async def poll_once(self) -> float:
        """One health check and whatever it calls for; the delay until the next one."""
        now = self._monotonic()
        try:
            health = await self._enclave.call(p.Health(request_id=0), p.HealthReply)
        except EnclaveClientError as exc:
            if self._phase is not Phase.UNAVAILABLE:
                log.warning("enclave_unreachable", error_type=type(exc).__name__)
            self._set_phase(Phase.UNAVAILABLE)
            return self._poll_interval
        if health.status == "locked":
            self._on_locked(now)
        elif health.status != "ok":
            if self._phase is not Phase.UNAVAILABLE:
                log.warning("enclave_unhealthy", status=health.status[:32])
            self._set_phase(Phase.UNAVAILABLE)
            return self._poll_interval
        if self._restored:
            self._set_phase(Phase.READY)
            if now >= self._next_checkpoint:
                self._next_checkpoint = now + self._checkpoint_interval
                await self._checkpoint_logged()
            return self._poll_interval
        if self._recovery_started is None:
            # "ok" but not unlocked by us: this parent (re)started beside a running
            # enclave. Unlocking with the stored identity is idempotent, and the
            # replay restores whatever an earlier parent did not get to.
            self._recovery_started = now
        if now < self._retry_at:
            if self._phase is Phase.STARTING:
                self._set_phase(Phase.LOCKED)
            return min(self._poll_interval, self._retry_at - now)
        try:
            await self._recover()
        except RecoveryError as exc:
            self._metrics.enclave_recovery_failures.labels(reason=exc.reason).inc()
            delay = self._schedule_retry()
            log.error(
                "enclave_recovery_failed",
                reason=exc.reason,
                detail=str(exc),
                phase=self._phase.value,
                retry_in_seconds=round(delay, 2),
            )
            return min(self._poll_interval, delay)
        return self._poll_interval

    # ------------------------------------------------------------------ recovery

    def _set_phase(self, phase: Phase) -> None:
        if phase is not self._phase:
            log.info("enclave_phase", phase=phase.value, previous=self._phase.value)
            self._phase = phase
        self._metrics.enclave_ready.set(1 if phase is Phase.READY else 0)

    def _on_locked(self, now: float) -> None:
        if self._unlocked or self._restored or self._recovery_started is None:
            # First start, or the enclave restarted (it comes back locked): its
            # sessions are gone from memory until they are restored.
            log.warning("enclave_locked", restarted=self._unlocked or self._restored)
            self._recovery_started = now
        self._unlocked = self._restored = False
        self._created = None  # that enclave and its unstored identity are gone
        if self._leases is not None:
            self._leases.reset()
        if self._phase is not Phase.LOCKED:
            self._set_phase(Phase.LOCKED)

    def _schedule_retry(self) -> float:
        """Capped exponential backoff with jitter (replicas do not retry in step)."""
        self._failures += 1
        growth = 2.0 ** min(self._failures - 1, 16)
        base = min(self._max_backoff, self._poll_interval * growth)
        delay: float = base * random.uniform(0.8, 1.0)
        self._retry_at = self._monotonic() + delay
        return delay

    async def _recover(self) -> None:
        started = self._recovery_started
        if not self._unlocked:
            self._set_phase(Phase.LOCKED)
            await self._unlock()
            self._unlocked = True
        self._set_phase(Phase.RESTORING)
        restored, refused = await self._restore()
        self._restored = True
        self._failures = 0
        self._retry_at = 0.0
        self._recovery_started = None
        now = self._monotonic()
        self._next_checkpoint = now + self._checkpoint_interval
        self._set_phase(Phase.READY)
        elapsed = 0.0 if started is None else now - started
        self._metrics.enclave_recovery_seconds.observe(elapsed)
        self._metrics.enclave_last_recovery_seconds.set(elapsed)
        log.info(
            "enclave_recovered",
            sessions_restored=restored,
            sessions_refused=refused,
            recovery_seconds=round(elapsed, 3),
        )

    async def _unlock(self) -> None:
        """Unlock with the stored identity, or create one and store it exactly once."""
        if self._created is not None:
            # The enclave made an identity that we failed to store: store it now
            # (asking again would be refused: it is already unlocked).
            await self._keep_created(self._created)
            return
        identity = await self._stored_identity()
        reply = await self._call_unlock(identity)
        if identity is not None:
            self._check_adopted(identity, reply)
            return
        if not reply.created:
            raise RecoveryError("unexpected_reply", "the enclave did not create an identity")
        self._created = reply
        await self._keep_created(reply)

    async def _stored_identity(self) -> EnclaveIdentity | None:
        try:
            identity = await self._store.get_enclave_identity()
        except StoreError as exc:
            raise RecoveryError(
                "database", f"identity not readable ({type(exc).__name__})"
            ) from exc
        if identity is not None and identity.key_id != self._key_id:
            raise RecoveryError(
                "identity_key_mismatch",
                "the stored enclave identity was created under another KMS key than"
                " KMS_KEY_ID; the key must not change while sealed state exists",
            )
        return identity

    async def _keep_created(self, reply: p.UnlockReply) -> None:
        try:
            won = await self._store.insert_enclave_identity(
                key_id=self._key_id, wrapped_key=reply.wrapped_key, sealed_keys=reply.sealed_keys
            )
        except StoreError as exc:
            raise RecoveryError(
                "database", f"new identity not stored ({type(exc).__name__})"
            ) from exc
        self._created = None
        if won:
            log.info("enclave_identity_created", key_id=self._key_id)
            return
        # Another parent's enclave created one first. This enclave must adopt it: the
        # replicas share one identity, and the other's sealed states open only under it.
        log.warning("enclave_identity_race_lost")
        winner = await self._stored_identity()
        if winner is None:  # the row is never deleted; a vanished one is a broken database
            raise RecoveryError("database", "the stored identity disappeared")
        self._check_adopted(winner, await self._call_unlock(winner))

    @staticmethod
    def _check_adopted(identity: EnclaveIdentity, reply: p.UnlockReply) -> None:
        if reply.created or reply.wrapped_key != identity.wrapped_key:
            raise RecoveryError(
                "identity_mismatch", "the enclave did not adopt the stored identity"
            )

    async def _call_unlock(self, identity: EnclaveIdentity | None) -> p.UnlockReply:
        try:
            credentials = await self._credentials.credentials()
        except CredentialsUnavailable as exc:
            raise RecoveryError("aws_credentials", str(exc)) from None
        request = p.Unlock(
            request_id=0,
            aws_access_key_id=credentials.access_key_id,
            aws_secret_access_key=credentials.secret_access_key,
            aws_session_token=credentials.session_token,
            region=self._region,
            key_id=self._key_id,
            wrapped_key=None if identity is None else identity.wrapped_key,
            sealed_keys=None if identity is None else identity.sealed_keys,
        )
        try:
            return await self._enclave.call(request, p.UnlockReply)
        except EnclaveRefused as exc:
            hint = _UNLOCK_HINTS.get(exc.code, "the enclave refused the unlock")
            # The enclave's messages are fixed strings, safe to log.
            raise RecoveryError(f"unlock_{exc.code.value}", f"{hint} ({exc.message})") from None
        except EnclaveUnavailable:
            raise RecoveryError("enclave_unreachable", "the enclave did not answer") from None

    async def _restore(self) -> tuple[int, int]:
        """Replay the revocation list, then every unexpired stored state, in batches.

        With leases: only the states of sessions this replica holds, then a Lease that
        starts polling them, all under the lease manager's lock.
        """
        if self._leases is None:
            return await self._restore_states(held=None)
        async with self._leases.lock:
            try:
                held = await self._store.renew_leases()
            except StoreError as exc:
                raise RecoveryError(
                    "database", f"leases not renewed ({type(exc).__name__})"
                ) from exc
            counts = await self._restore_states(held=held)
            try:
                await self._enclave.call(
                    p.Lease(request_id=0, acquire=tuple(sorted(held)), release=()), p.LeaseReply
                )
            except EnclaveRefused as exc:
                raise RecoveryError(f"lease_{exc.code.value}", exc.message) from None
            except EnclaveUnavailable:
                raise RecoveryError("enclave_unreachable", "the enclave did not answer") from None
            self._leases.synced(held)
            return counts

    async def _restore_states(self, *, held: frozenset[bytes] | None) -> tuple[int, int]:
        try:
            await self._flush_pending()  # checkpoint states a failed write left behind
            revocations = await self._store.get_revocations()
            restored = refused = 0
            if revocations is not None:
                # First and on its own: every state after it is checked against it.
                await self._call_restore((), revocations.sealed)
            batches = self._store.sealed_state_batches(
                now=self._clock(),
                max_batch_bytes=self._restore_batch_bytes,
                held_only=held is not None,
            )
            async for batch in batches:
                reply = await self._call_restore(tuple(s.sealed for s in batch), None)
                restored += reply.restored
                refused += reply.refused
                self._metrics.enclave_restored_sessions.labels(outcome="restored").inc(
                    reply.restored
                )
                self._metrics.enclave_restored_sessions.labels(outcome="refused").inc(reply.refused)
        except StoreError as exc:
            raise RecoveryError("database", f"restore interrupted ({type(exc).__name__})") from exc
        return restored, refused

    async def _call_restore(
        self, sealed: tuple[bytes, ...], revocations: bytes | None
    ) -> p.RestoreReply:
        request = p.Restore(request_id=0, sealed=sealed, revocations=revocations)
        try:
            return await self._enclave.call(request, p.RestoreReply)
        except EnclaveRefused as exc:
            # UNDECRYPTABLE revocation list, or UNAVAILABLE (locked again): never go on
            # without the list, a revoked session could come back.
            raise RecoveryError(f"restore_{exc.code.value}", exc.message) from None
        except EnclaveUnavailable:
            raise RecoveryError("enclave_unreachable", "the enclave did not answer") from None

    # ------------------------------------------------------------------ checkpoints

    async def _checkpoint_logged(self) -> None:
        try:
            await self.checkpoint()
        except (EnclaveClientError, StoreError) as exc:
            # Kept for the next round: states not stored stay pending here, and the
            # enclave is not asked for more until they are.
            log.warning("checkpoint_failed", error_type=type(exc).__name__)

    async def checkpoint(self) -> int:
        """Store the sealed states of sessions that changed; how many rows were written.

        States from a reply that could not be stored are held and written first next
        time; until then the enclave is not asked for more, so nothing is dropped.
        """
        written = await self._flush_pending()
        for _ in range(_CHECKPOINT_CALLS_PER_ROUND):
            reply = await self._enclave.call(
                p.Checkpoint(request_id=0, max_sessions=self._checkpoint_max_sessions),
                p.CheckpointReply,
            )
            for blob in reply.states:
                try:
                    state = SealedBlob.parse(blob)
                except SealedStateError as exc:
                    log.error("sealed_state_refused", source="checkpoint", reason=str(exc))
                    self._metrics.sealed_states_refused.labels(source="checkpoint").inc()
                    continue
                held = self._pending.get(state.session_hash)
                if held is None or state.version > held.version:
                    self._pending[state.session_hash] = state
            written += await self._flush_pending()
            if not reply.more:
                break
        return written

    async def _flush_pending(self) -> int:
        if not self._pending:
            return 0
        written = await self._store.store_sealed_states(list(self._pending.values()))
        self._pending.clear()
        self._metrics.sealed_states_stored.labels(source="checkpoint").inc(written)
        return written


class GatedEnclave:
    """The API's enclave port: session calls wait for the supervisor's restore (503).

    Health passes always (``/readyz`` reports the enclave's own word). Everything else
    is refused with ``EnclaveUnavailable`` until the enclave is unlocked and restored:
    a session that is stored but not replayed yet must answer 503, not 404, and a
    quote must not show keys the enclave is about to replace with its sealed identity.
    """

    def __init__(self, enclave: EnclavePort, supervisor: EnclaveSupervisor) -> None:
        self._enclave = enclave
        self._supervisor = supervisor

    async def call(self, request: p.Request, reply_type: type[R]) -> R:
        if not isinstance(request, p.Health) and not self._supervisor.serving:
            raise EnclaveUnavailable("the enclave is restoring its sealed state")
        return await self._enclave.call(request, reply_type)
