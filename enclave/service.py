"""The enclave's RPC methods: attest, submit, reports, revoke, records. Side: enclave.

``EnclaveService.handle`` takes one typed request from the parent and returns one
typed reply. Everything the parent sends is untrusted: metadata is validated
here again (the parent's checks are for users' convenience, these are the ones
that count), owner proofs are verified here, and every refusal is an
``ErrorReply`` whose message is a fixed string: no secret, no plaintext, no
session id, no exception text ever goes into a reply or a log line.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Collection, Coroutine, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from enclave.aggregator import Aggregator, AggregatorConfig
from enclave.commitments import TradeSource, leaf_fields
from enclave.exchanges.history import Trade
from enclave.keys import KeyRing, keys_from_seed
from enclave.kms import AwsCredentials, KmsError, KmsPort, RecipientKey
from enclave.nsm import NsmClient, NsmError
from enclave.sealing import RevocationList, SealingError, Vault
from enclave.session_state import StateTooLarge, open_session, seal_session
from enclave.sessions import Session, SessionTable
from shared import protocol as p
from shared.attestation import encode_user_data
from shared.disclosure import DISCLOSURE_PURPOSE
from shared.encoding import b64encode, canonical_json
from shared.envelope import (
    Credentials,
    Envelope,
    EnvelopeFormatError,
    EnvelopeOpener,
    envelope_digest,
    open_credentials,
    seal,
)
from shared.errors import EnvelopeError, SignatureError
from shared.ids import is_session_id, new_session_id, session_hash
from shared.merkle import InclusionProof, trade_set_digest
from shared.owner import owner_x25519_public
from shared.signing import OwnerProof, sign_payload, sign_payload_and_hash, verify_owner_proof

__all__ = [
    "METHOD_VERSION",
    "REPORTING_CURRENCIES",
    "EnclaveService",
    "PollingPort",
    "ServiceLimits",
]

log = structlog.get_logger("enclave.service")

METHOD_VERSION = "perf-aggregator/aggregates/v1"
"""Names the computation behind a signed report; bumped whenever a definition changes."""

REPORTING_CURRENCIES: Mapping[str, str] = {
    "coinbase": "USD",
    "coinbaseexchange": "USD",
    "kraken": "USD",
}
"""The reporting currency of a session by ccxt exchange id (docs/metrics.md section 2):
the quote most of that exchange's retail markets use. Any other exchange reports in
USDT. The report states its currency (``reporting_currency``)."""


_EXCHANGE = re.compile(r"\A[a-z][a-z0-9_]{0,31}\Z")  # a ccxt exchange id
_MAX_LABEL = 64
_METADATA_KEYS = frozenset({"exchange", "label", "ttl", "issued_at"})
_RECORD_METADATA_KEYS = frozenset({"purpose", "label"})
_MAX_NONCE = 512  # NSM limit on the nonce field (attestation_process.md)
_RECORD_VERSION = 1
_RECORD_NONCE = 12
_LOG_PAGE = 2000  # log entries per Logs reply (~250 bytes each: far below the frame cap)
_MAX_SYMBOL = 64
_MAX_TRADE_ID = 128


KmsConnector = Callable[[AwsCredentials, str], KmsPort]
"""Builds the KMS adapter from the credentials and region the parent hands over."""

_LOCKED_OK: frozenset[type[p.Request]] = frozenset({p.Unlock, p.Health, p.Stats})
_MAX_CHECKPOINT_BYTES = 3 * 1024 * 1024  # one reply stays under the 4 MiB frame cap


class PollingPort(Protocol):
    """The exchange pollers as the service drives them (enclave.exchanges.PollingManager)."""

    def start(
        self,
        session_hash: bytes,
        exchange_id: str,
        credentials: Credentials,
        trades: Collection[Any] = (),
    ) -> None:
        """Begin polling a confirmed (or restored: ``trades`` read before) session."""
        ...

    def stop(self, session_hash: bytes) -> bool:
        """Stop polling a session (revoke)."""
        ...

    def prune(self, live: Collection[bytes]) -> int:
        """Stop pollers of sessions no longer held (expiry)."""
        ...

    def status(self, session_hash: bytes) -> dict[str, Any] | None:
        """The polling block of the summary."""
        ...

    def trades(self, session_hash: bytes) -> TradeSource | None:
        """The trades read so far, in read order, or None if not polled."""
        ...

    def completeness(self, session_hash: bytes) -> dict[str, Any] | None:
        """The completeness record, JSON-ready."""
        ...


class ServiceLimits:
    """Policy numbers from the enclave configuration."""

    def __init__(
        self,
        *,
        max_ttl_seconds: int,
        pending_ttl_seconds: int,
        max_envelope_age_seconds: int,
        min_ttl_seconds: int = 60,
    ) -> None:
        self.max_ttl_seconds = max_ttl_seconds
        self.pending_ttl_seconds = pending_ttl_seconds
        self.max_envelope_age_seconds = max_envelope_age_seconds
        self.min_ttl_seconds = min_ttl_seconds


class _Refusal(Exception):
    """Internal: becomes an ErrorReply with a fixed, safe message."""

    def __init__(self, code: p.ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _rfc3339(timestamp: float) -> str:
    return datetime.fromtimestamp(int(timestamp), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _envelope_of(request: p.Submit | p.SealRecord) -> Envelope:
    """The envelope a request carries flat; BAD_REQUEST if its shape is wrong."""
    try:
        return Envelope(**{name: getattr(request, name) for name in p.ENVELOPE_FIELDS})
    except EnvelopeFormatError as exc:
        # Structural messages name a field, never a value: safe to return.
        raise _Refusal(p.ErrorCode.BAD_REQUEST, str(exc)) from None


def _short_hash(digest: bytes) -> str:
    """What logs show of a session: 12 hex chars of the id's hash (never the id)."""
    return digest.hex()[:12]


class EnclaveService:
    """Dispatches parent requests to the enclave's state: keys, sessions, NSM."""

    def __init__(
        self,
        *,
        nsm: NsmClient,
        keys: KeyRing,
        pcr0: bytes,
        limits: ServiceLimits,
        polling: PollingPort | None = None,
        clock: Callable[[], float] = time.time,
        kms: KmsConnector | None = None,
        kms_key_id: str | None = None,
    ) -> None:
        """``kms`` None: no sealing (sessions die with the process). Otherwise the
        service starts locked and serves nothing but health until an Unlock succeeded
        (a KMS data key obtained with this enclave's attestation)."""
        self._nsm = nsm
        self._keys = keys
        self._pcr0_hex = pcr0.hex()
        self._limits = limits
        self._polling = polling
        self._clock = clock
        self._sessions = SessionTable()
        self._started = clock()
        self._user_data = encode_user_data(keys.public())
        self._kms_connector = kms
        self._kms_key_id = kms_key_id
        self._vault: Vault | None = None
        self._revocations = RevocationList()
        # Restored sessions this replica does not poll (yet): the trades read before,
        # kept until a Lease acquires the session (polling resumes from them) or
        # releases it. Sealing such a session seals these trades.
        self._parked: dict[bytes, list[Trade]] = {}
        self.counters: Counter[str] = Counter()
        self._handlers: Mapping[
            type[p.Request], Callable[[Any], p.Reply | Coroutine[Any, Any, p.Reply]]
        ] = {
            p.Attest: self._attest,
            p.Submit: self._submit,
            p.Confirm: self._confirm,
            p.Aggregates: self._aggregates,
            p.SessionMetrics: self._metrics,
            p.Summary: self._summary,
            p.Revoke: self._revoke,
            p.Logs: self._logs,
            p.DiscloseTrade: self._disclose_trade,
            p.Restore: self._restore,
            p.Lease: self._lease,
            p.Unlock: self._unlock,
            p.Checkpoint: self._checkpoint,
            p.SealRecord: self._seal_record,
            p.UnsealRecord: self._unseal_record,
            p.Health: self._health,
            p.Stats: self._stats,
        }

    @property
    def sessions(self) -> SessionTable:
        """The live session table (for the purge task and tests)."""
        return self._sessions

    def close(self) -> None:
        """Overwrite the data key, the key seed and every session's salt key (shutdown)."""
        if self._vault is not None:
            self._vault.wipe()
        for index in range(len(self._keys.seed)):
            self._keys.seed[index] = 0
        self._sessions.wipe_all()

    @property
    def locked(self) -> bool:
        """True while sealing is configured and no Unlock has succeeded yet."""
        return self._kms_connector is not None and self._vault is None

    async def handle(self, request: p.Request) -> p.Reply:
        """Answer one request; refusals become ErrorReply, never an exception."""
        handler = self._handlers[type(request)]
        try:
            if self.locked and type(request) not in _LOCKED_OK:
                raise _Refusal(
                    p.ErrorCode.UNAVAILABLE, "the enclave is locked: waiting for its sealed state"
                )
            result = handler(request)
            reply = await result if inspect.isawaitable(result) else result
        except _Refusal as refusal:
            self.counters[f"{request.TYPE}.{refusal.code.value}"] += 1
            log.info("request_refused", method=request.TYPE, code=refusal.code.value)
            return p.ErrorReply(
                request_id=request.request_id, code=refusal.code, message=refusal.message
            )
        self.counters[f"{request.TYPE}.ok"] += 1
        return reply

    def purge_expired(self) -> int:
        """Forget expired and abandoned sessions (credentials included); log polling.

        The periodic sweep is also when polling progress reaches the sessions'
        transparency logs if nobody asked about them in between (enclave.opslog).
        """
        purged = self._sessions.purge(now=self._clock())
        for session in self._sessions.active(now=self._clock()):
            self._observe_polling(session)
        held = self._sessions.hashes()
        if self._polling is not None:
            # Also catches sessions get_active dropped lazily on expiry.
            self._polling.prune(held)
        for gone in [digest for digest in self._parked if digest not in held]:
            del self._parked[gone]
        if purged:
            self.counters["ttl.purged"] += purged
            log.info("sessions_purged", count=purged)
        return purged

    # ------------------------------------------------------------------ attestation

    def _attest(self, request: p.Attest) -> p.AttestReply:
        if len(request.nonce) > _MAX_NONCE:
            raise _Refusal(p.ErrorCode.TOO_LARGE, f"nonce longer than {_MAX_NONCE} bytes")
        try:
            document = self._nsm.attestation(user_data=self._user_data, nonce=request.nonce)
        except NsmError as exc:
            log.error("nsm_attestation_failed", nsm_error=str(exc.code))
            raise _Refusal(p.ErrorCode.UNAVAILABLE, "attestation unavailable") from None
        return p.AttestReply(
            request_id=request.request_id, document=document, pq_public=self._keys.pq_public()
        )

    # ------------------------------------------------------------------ sessions

    def _submit(self, request: p.Submit) -> p.SubmitReply:
        now = self._clock()
        envelope = _envelope_of(request)
        exchange, label, ttl = self._check_metadata(envelope.metadata, now=now)
        digest = envelope_digest(envelope)
        if self._sessions.seen(digest):
            raise _Refusal(p.ErrorCode.REPLAYED, "this envelope was already submitted")
        try:
            credentials = open_credentials(self._keys.opener, envelope)
        except EnvelopeError:
            raise _Refusal(p.ErrorCode.UNDECRYPTABLE, "envelope could not be opened") from None
        session_id = new_session_id()
        digest_of_id = session_hash(session_id)
        self._sessions.add_pending(
            Session(
                session_hash=digest_of_id,
                exchange=exchange,
                label=label,
                credentials=credentials,
                created_at=now,
                expires_at=now + ttl,
                pending_deadline=now + self._limits.pending_ttl_seconds,
                envelope_digest=digest,
                aggregator=Aggregator(
                    AggregatorConfig(reporting_currency=REPORTING_CURRENCIES.get(exchange, "USDT"))
                ),
            )
        )
        log.info(
            "session_opened",
            session=_short_hash(digest_of_id),
            exchange=exchange,
            ttl=ttl,
            owner=credentials.owner_pub is not None,
        )
        return p.SubmitReply(
            request_id=request.request_id,
            session_id=session_id,
            expires_at=int(now + ttl),
            exchange=exchange,
            label=label,
        )

    def _check_metadata(self, metadata: Mapping[str, Any], *, now: float) -> tuple[str, str, int]:
        """The enclave's own check of the metadata the client bound into the AAD."""
        if not set(metadata) <= _METADATA_KEYS or not {"exchange", "label", "ttl"} <= set(metadata):
            raise _Refusal(
                p.ErrorCode.BAD_REQUEST, "metadata must have exchange, label, ttl (and issued_at)"
            )
        exchange, label, ttl = metadata["exchange"], metadata["label"], metadata["ttl"]
        if not isinstance(exchange, str) or not _EXCHANGE.match(exchange):
            raise _Refusal(p.ErrorCode.BAD_REQUEST, "metadata.exchange is not an exchange id")
        if not isinstance(label, str) or not 1 <= len(label) <= _MAX_LABEL:
            raise _Refusal(p.ErrorCode.BAD_REQUEST, f"metadata.label must be 1..{_MAX_LABEL} chars")
        if isinstance(ttl, float) and ttl.is_integer():
            ttl = int(ttl)
        if (
            not isinstance(ttl, int)
            or isinstance(ttl, bool)
            or not self._limits.min_ttl_seconds <= ttl <= self._limits.max_ttl_seconds
        ):
            raise _Refusal(
                p.ErrorCode.BAD_REQUEST,
                f"metadata.ttl must be an integer from {self._limits.min_ttl_seconds} "
                f"to {self._limits.max_ttl_seconds} seconds",
            )
        issued_at = metadata.get("issued_at")
        if issued_at is not None:
            if not isinstance(issued_at, int) or isinstance(issued_at, bool):
                raise _Refusal(p.ErrorCode.BAD_REQUEST, "metadata.issued_at must be Unix seconds")
            if abs(now - issued_at) > self._limits.max_envelope_age_seconds:
                raise _Refusal(p.ErrorCode.BAD_REQUEST, "metadata.issued_at is too old or ahead")
        return exchange, label, ttl

    def _confirm(self, request: p.Confirm) -> p.ConfirmReply:
        digest = self._hash_of(request.session_id)
        session: Session | None = None
        if request.commit:
            ok = self._sessions.confirm(digest, now=self._clock())
            session = self._sessions.get_active(digest, now=self._clock()) if ok else None
            if session is not None and self._polling is not None:
                # Polling starts only once the parent has stored the ciphertext.
                self._polling.start(digest, session.exchange, session.credentials)
        else:
            # A pending session, or one confirmed moments ago whose sealed state the
            # parent could not store (withdrawn: no owner proof, its client got an error).
            ok = self._sessions.discard(digest) or self._sessions.withdraw(
                digest, now=self._clock()
            )
            if ok and self._polling is not None:
                self._polling.stop(digest)
        if not ok:
            raise _Refusal(p.ErrorCode.NOT_FOUND, "unknown or expired pending session")
        sealed_state = None
        if request.commit and session is not None:
            session.opslog.append(
                "submit",
                at=int(self._clock()),
                data={
                    "exchange": session.exchange,
                    "label": session.label,
                    "expires_at": _rfc3339(session.expires_at),
                    "envelope_sha256": session.envelope_digest.hex(),
                    "owner": session.owner_pub is not None,
                },
            )
            sealed_state = self._sealed(session)
        log.info("session_confirmed" if request.commit else "session_discarded",
                 session=_short_hash(digest))  # fmt: skip
        return p.ConfirmReply(request_id=request.request_id, sealed_state=sealed_state)

    def _active(self, session_id: str) -> Session:
        session = self._sessions.get_active(self._hash_of(session_id), now=self._clock())
        if session is None:
            raise _Refusal(p.ErrorCode.NOT_FOUND, "unknown, expired or revoked session")
        return session

    @staticmethod
    def _hash_of(session_id: str) -> bytes:
        if not is_session_id(session_id):
            # Same answer as an unknown id: the format is public, the ids are not.
            raise _Refusal(p.ErrorCode.NOT_FOUND, "unknown, expired or revoked session")
        return session_hash(session_id)

    def _check_owner(
        self,
        session: Session,
        *,
        method: str,
        session_id: str,
        timestamp: int | None,
        signature: str | None,
        required: bool,
    ) -> None:
        """Verify the owner proof when the session has an owner (or when one is required)."""
        owner_pub = session.owner_pub
        if owner_pub is None:
            if required:
                raise _Refusal(p.ErrorCode.FORBIDDEN, "this session has no owner key")
            return
        if timestamp is None or signature is None:
            raise _Refusal(p.ErrorCode.FORBIDDEN, "owner proof required")
        try:
            proof = OwnerProof(timestamp=timestamp, signature=signature)
            verify_owner_proof(
                owner_pub, proof, method=method, session_id=session_id, now=int(self._clock())
            )
        except (SignatureError, ValueError):
            raise _Refusal(p.ErrorCode.FORBIDDEN, "owner proof invalid or expired") from None

    def _revoke(self, request: p.Revoke) -> p.RevokeReply:
        session = self._active(request.session_id)
        self._check_owner(
            session,
            method="revoke",
            session_id=request.session_id,
            timestamp=request.proof_timestamp,
            signature=request.proof_signature,
            required=False,
        )
        opslog = session.opslog
        if not 0 <= request.log_start <= opslog.size:
            raise _Refusal(p.ErrorCode.BAD_REQUEST, "log_start is beyond the log")
        self._observe_polling(session)
        opslog.append(
            "revoke",
            at=int(self._clock()),
            data={"by": "holder" if session.owner_pub is None else "owner"},
        )
        # The revoke entry and the final head go back in this reply: after it the
        # session is gone and nothing can sign for its log any more.
        entries = opslog.since(request.log_start, opslog.size)
        tree_head, signature = self._signed_head(session)
        revocations = None
        if self._vault is not None:
            self._revocations.add(
                session.session_hash, int(session.expires_at), now=int(self._clock())
            )
            revocations = self._revocations.seal(self._vault)
        self._sessions.remove(session.session_hash)
        self._parked.pop(session.session_hash, None)
        if self._polling is not None:
            self._polling.stop(session.session_hash)
        log.info("session_revoked", session=_short_hash(session.session_hash))
        return p.RevokeReply(
            request_id=request.request_id,
            entries=entries,
            tree_head=tree_head,
            signature=signature,
            revocations=revocations,
        )

    # ------------------------------------------------------------------ sealing

    def _require_vault(self) -> Vault:
        if self._vault is None:
            raise _Refusal(p.ErrorCode.UNSUPPORTED, "KMS sealing is not enabled")
        return self._vault

    async def _unlock(self, request: p.Unlock) -> p.UnlockReply:
        """Get the KMS data key with this enclave's attestation; create or adopt the identity."""
        connector, key_id = self._kms_connector, self._kms_key_id or request.key_id
        if connector is None:
            raise _Refusal(p.ErrorCode.UNSUPPORTED, "KMS sealing is not enabled")
        if key_id != request.key_id:
            raise _Refusal(p.ErrorCode.BAD_REQUEST, "key_id differs from the enclave's KMS key")
        if self._vault is not None:
            if request.wrapped_key is None or request.wrapped_key == self._vault.wrapped_key:
                # A parent that lost track (it restarted, or never stored the identity it
                # asked for): the identity in use, to store if it has none.
                return p.UnlockReply(
                    request_id=request.request_id,
                    created=request.wrapped_key is None,
                    wrapped_key=self._vault.wrapped_key,
                    sealed_keys=self._vault.seal_identity(self._keys.seed),
                )
            if len(self._sessions):
                # Sessions are bound to the identity in use (envelopes, signatures).
                raise _Refusal(
                    p.ErrorCode.BAD_REQUEST, "already serving sessions under another identity"
                )
            # A parent that lost the race to store a new identity: adopt the winner's.
            self._vault.wipe()
            self._vault = None
        credentials = AwsCredentials(
            access_key_id=request.aws_access_key_id,
            secret_access_key=request.aws_secret_access_key,
            session_token=request.aws_session_token,
        )
        recipient = RecipientKey.generate()
        try:
            document = self._nsm.attestation(public_key=recipient.public_der())
        except NsmError as exc:
            log.error("nsm_attestation_failed", nsm_error=str(exc.code))
            raise _Refusal(p.ErrorCode.UNAVAILABLE, "attestation unavailable") from None
        kms = connector(credentials, request.region)
        try:
            if request.wrapped_key is None:
                generated = await asyncio.to_thread(
                    kms.generate_data_key, key_id=key_id, attestation_document=document
                )
                wrapped, for_recipient = (
                    generated.ciphertext_blob,
                    generated.ciphertext_for_recipient,
                )
            else:
                wrapped = request.wrapped_key
                for_recipient = await asyncio.to_thread(
                    kms.decrypt,
                    key_id=key_id,
                    ciphertext_blob=wrapped,
                    attestation_document=document,
                )
            data_key = recipient.unwrap(for_recipient)
        except KmsError as exc:
            log.error("kms_refused", reason=exc.reason)
            if exc.reason == "access_denied":
                raise _Refusal(
                    p.ErrorCode.FORBIDDEN, "KMS refused this enclave's attestation"
                ) from None
            raise _Refusal(p.ErrorCode.UNAVAILABLE, "KMS unavailable") from None
        vault = Vault(data_key, wrapped_key=wrapped)
        if request.wrapped_key is None:
            sealed_keys = vault.seal_identity(self._keys.seed)
            created = True
        else:
            if request.sealed_keys is None:
                raise _Refusal(p.ErrorCode.BAD_REQUEST, "sealed_keys missing")
            try:
                seed = vault.open_identity(request.sealed_keys)
            except SealingError:
                vault.wipe()
                raise _Refusal(
                    p.ErrorCode.UNDECRYPTABLE, "the sealed identity does not open"
                ) from None
            self._keys = keys_from_seed(seed, with_pq=self._keys.with_pq)
            self._user_data = encode_user_data(self._keys.public())
            sealed_keys, created = request.sealed_keys, False
        self._vault = vault
        log.info("enclave_unlocked", created=created)
        return p.UnlockReply(
            request_id=request.request_id,
            created=created,
            wrapped_key=wrapped,
            sealed_keys=sealed_keys,
        )

    def _sealed(self, session: Session) -> bytes | None:
        """The session's state sealed as its next version (None without sealing)."""
        if self._vault is None:
            return None
        ledger = None if self._polling is None else self._polling.trades(session.session_hash)
        # Not polled here: the trades it was restored with (never an empty list that
        # would drop them from the next sealed version).
        trades = self._parked.get(session.session_hash, []) if ledger is None else list(ledger)
        try:
            return seal_session(self._vault, session, trades)
        except StateTooLarge:
            log.error("session_state_too_large", session=_short_hash(session.session_hash))
            return None

    def _restore(self, request: p.Restore) -> p.RestoreReply:
        """Install sealed sessions (not revoked, not expired, not older than held ones).

        Restored sessions are served but not polled until a ``Lease`` acquires them.
        """
        vault = self._require_vault()
        if request.revocations is not None:
            try:
                self._revocations.merge_sealed(vault, request.revocations)
            except SealingError:
                raise _Refusal(
                    p.ErrorCode.UNDECRYPTABLE, "the revocation list does not open"
                ) from None
        now = self._clock()
        restored = refused = 0
        for blob in request.sealed:
            try:
                rebuilt = open_session(vault, blob)
            except SealingError:
                refused += 1
                continue
            session = rebuilt.session
            if session.session_hash in self._revocations or now >= session.expires_at:
                refused += 1
                continue
            if not self._sessions.restore(session):
                refused += 1
                continue
            # An older copy that was polled here goes on polling from the newer state;
            # any other restored session waits for a Lease to acquire it, so that only
            # the replica holding its lease polls it.
            if self._polling is not None and self._polling.stop(session.session_hash):
                self._parked.pop(session.session_hash, None)
                self._polling.start(
                    session.session_hash, session.exchange, session.credentials, rebuilt.trades
                )
            else:
                self._parked[session.session_hash] = rebuilt.trades
            restored += 1
        if restored or refused:
            log.info("sessions_restored", restored=restored, refused=refused)
        self.counters["restore.sessions"] += restored
        return p.RestoreReply(request_id=request.request_id, restored=restored, refused=refused)

    def _lease(self, request: p.Lease) -> p.LeaseReply:
        """Poll the acquired sessions; stop polling and forget the released ones.

        A released session is served by the replica that took its lease over, from
        the stored state: this copy would go stale, so it is dropped (no checkpoint of
        it is stored either: the store writes only the lease holder's states).
        """
        self._require_vault()
        released = 0
        for digest in request.release:
            self._parked.pop(digest, None)
            if self._polling is not None:
                self._polling.stop(digest)
            released += self._sessions.remove(digest)
        now = self._clock()
        acquired = 0
        for digest in request.acquire:
            session = self._sessions.get_active(digest, now=now)
            if session is None or self._polling is None:
                continue
            trades = self._parked.pop(digest, None)
            if trades is None:
                if self._polling.status(digest) is not None:
                    continue  # polled already (it was opened here)
                trades = []
            self._polling.start(digest, session.exchange, session.credentials, trades)
            acquired += 1
        if acquired or released:
            log.info("leases_changed", acquired=acquired, released=released)
        self.counters["lease.acquired"] += acquired
        self.counters["lease.released"] += released
        polling = 0
        if self._polling is not None:
            polling = sum(
                1 for digest in self._sessions.hashes() if self._polling.status(digest) is not None
            )
        return p.LeaseReply(request_id=request.request_id, polling=polling)

    def _checkpoint(self, request: p.Checkpoint) -> p.CheckpointReply:
        """Seal the sessions that changed (polling progress included) since last time."""
        self._require_vault()
        if request.max_sessions < 1:
            raise _Refusal(p.ErrorCode.BAD_REQUEST, "max_sessions must be positive")
        now = self._clock()
        for session in self._sessions.active(now=now):
            self._observe_polling(session)
        # A session the parent may still withdraw (confirmed moments ago, no report) is
        # not checkpointed: if its first state could not be stored, nothing of it must
        # reach the database by another path. Its progress is re-read after a restart.
        dirty = [
            s
            for s in self._sessions.active(now=now)
            if s.dirty and (s.report_seq > 0 or now > s.withdrawable_until)
        ]
        states: list[bytes] = []
        size = 0
        for session in dirty[: request.max_sessions]:
            blob = self._sealed(session)
            if blob is None:
                continue
            if states and size + len(blob) > _MAX_CHECKPOINT_BYTES:
                session.dirty = True  # sealed but not sent: send it next call
                break
            states.append(blob)
            size += len(blob)
        more = any(s.dirty for s in dirty)
        return p.CheckpointReply(request_id=request.request_id, states=tuple(states), more=more)

    # ------------------------------------------------------------------ reports

    def _aggregates(self, request: p.Aggregates) -> p.AggregatesReply:
        session = self._active(request.session_id)
        now = self._clock()
        self._observe_polling(session)
        session.report_seq += 1
        figures = self._figures(session)
        payload: dict[str, Any] = {
            "v": 1,
            "method": METHOD_VERSION,
            "session_hash": session.session_hash.hex(),
            "exchange": session.exchange,
            "label": session.label,
            **figures,
            # What was read from the exchange, and how completely (issue 4's record).
            "completeness": None
            if self._polling is None
            else self._polling.completeness(session.session_hash),
            "trades_digest": self._trades_digest(session),
            "from": _rfc3339(session.created_at),
            "to": _rfc3339(now),
            "merkle_root": session.commitments.root_hex(),
            # The tree the root is for: inclusion proofs of disclosed trades use this size.
            "merkle_tree_size": session.commitments.size,
            "pcr0": self._pcr0_hex,
            "issued_at": _rfc3339(now),
            "seq": session.report_seq,
            "prev_report_hash": session.prev_report_hash,
            # The transparency log as it stood before this report's own entry.
            "log_size": session.opslog.size,
        }
        signature, session.prev_report_hash = sign_payload_and_hash(self._keys.signing_key, payload)
        session.opslog.append(
            "report",
            at=int(now),
            data={
                "seq": session.report_seq,
                "report_hash": session.prev_report_hash,
                "trades": payload["merkle_tree_size"],
                "merkle_root": payload["merkle_root"],
            },
        )
        # The report and the state that issued it are stored together by the parent:
        # a restart can never reuse this seq.
        sealed_state = self._sealed(session)
        return p.AggregatesReply(
            request_id=request.request_id,
            payload=payload,
            signature=signature,
            merkle_root=payload["merkle_root"],
            sealed_state=sealed_state,
        )

    def _commit_trades(self, session: Session) -> int:
        """Bring the session's Merkle commitment up to date; return the trade count."""
        ledger = None if self._polling is None else self._polling.trades(session.session_hash)
        if ledger is not None:
            new = ledger.since(session.commitments.size)
            session.commitments.sync(ledger)
            # The aggregator takes each trade once, in read order: O(new trades).
            session.aggregator.add(new)  # type: ignore[arg-type]
        return session.commitments.size

    def _observe_polling(self, session: Session) -> None:
        """Write a ``poll`` log entry if polling changed something since the last one."""
        if self._polling is None:
            return
        status = self._polling.status(session.session_hash)
        if status is None:
            return
        size = self._commit_trades(session)
        key = (size, status.get("state"), status.get("complete"), status.get("last_error"))
        if key == session.opslog.last_poll_key:
            return
        session.opslog.last_poll_key = key
        session.dirty = True
        session.opslog.append(
            "poll",
            at=int(self._clock()),
            data={
                "state": status.get("state"),
                "calls": status.get("calls"),
                "complete": status.get("complete"),
                "last_error": status.get("last_error"),
                "trades": size,
                "merkle_root": session.commitments.root_hex(),
            },
        )

    def _signed_head(self, session: Session) -> tuple[dict[str, Any], str]:
        """A tree head over the session's whole log, signed with the attested key."""
        payload = session.opslog.tree_head(now=int(self._clock()))
        return payload, sign_payload(self._keys.signing_key, payload)

    def _logs(self, request: p.Logs) -> p.LogsReply:
        session = self._active(request.session_id)
        self._observe_polling(session)
        opslog = session.opslog
        if not 0 <= request.start <= opslog.size:
            raise _Refusal(p.ErrorCode.BAD_REQUEST, "start is beyond the log")
        tree_head, signature = self._signed_head(session)
        return p.LogsReply(
            request_id=request.request_id,
            entries=opslog.since(request.start, _LOG_PAGE),
            tree_head=tree_head,
            signature=signature,
            # Entries the parent is about to publish must survive a restart.
            sealed_state=self._sealed(session) if session.dirty else None,
        )

    def _disclose_trade(self, request: p.DiscloseTrade) -> p.DiscloseTradeReply:
        session = self._active(request.session_id)
        self._check_owner(
            session,
            method="disclose_trade",
            session_id=request.session_id,
            timestamp=request.proof_timestamp,
            signature=request.proof_signature,
            required=True,
        )
        owner_pub = session.owner_pub
        assert owner_pub is not None  # _check_owner(required=True) guarantees it
        if not 1 <= len(request.symbol) <= _MAX_SYMBOL or not (
            1 <= len(request.trade_id) <= _MAX_TRADE_ID
        ):
            raise _Refusal(p.ErrorCode.BAD_REQUEST, "symbol or trade_id has a bad length")
        self._observe_polling(session)
        size = self._commit_trades(session)
        ledger = None if self._polling is None else self._polling.trades(session.session_hash)
        found = None
        if ledger is not None:
            wanted = (request.symbol, request.trade_id)
            # Read order = leaf order; a rare owner operation, so a scan is fine.
            for index, trade in enumerate(ledger):
                if index >= size:
                    break
                if (trade.symbol, trade.id) == wanted:
                    found = (index, trade)
                    break
        if found is None:
            raise _Refusal(p.ErrorCode.NOT_FOUND, "no such committed trade")
        index, trade = found
        tree_size = size if request.tree_size is None else request.tree_size
        if not index < tree_size <= size:
            raise _Refusal(
                p.ErrorCode.BAD_REQUEST, "tree_size must include the trade and not exceed the tree"
            )
        tree = session.commitments.tree
        proof = InclusionProof.from_hashes(index, tree_size, tree.inclusion_proof(index, tree_size))
        disclosure = {
            "v": 1,
            "purpose": DISCLOSURE_PURPOSE,
            "session_hash": session.session_hash.hex(),
            "fields": leaf_fields(trade),
            "salt": b64encode(session.commitments.salt(index)),
            "inclusion_proof": proof.to_json(),
            "merkle_root": tree.root_at(tree_size).hex(),
        }
        reply = seal(
            canonical_json(disclosure),
            metadata={"purpose": "trade-disclosure", "index": index, "tree_size": tree_size},
            recipient_x25519=owner_x25519_public(owner_pub),
        )
        session.opslog.append(
            "disclose", at=int(self._clock()), data={"index": index, "tree_size": tree_size}
        )
        log.info("trade_disclosed", session=_short_hash(session.session_hash))
        return p.DiscloseTradeReply(
            request_id=request.request_id,
            envelope=reply.to_wire(),
            sealed_state=self._sealed(session),
        )

    def _figures(self, session: Session) -> dict[str, Any]:
        """Headline figures from the FIFO aggregator (docs/metrics.md), decimals as strings."""
        self._commit_trades(session)
        metrics = session.aggregator.snapshot()
        round_trips = metrics["round_trips"]
        return {
            "trades": metrics["trades"]["count"],
            "orders": metrics["trades"]["orders"],
            "pnl": metrics["pnl"]["net"],
            "pnl_gross": metrics["pnl"]["gross"],
            "fees": metrics["pnl"]["fees"],
            "volume": metrics["volume"],
            "return_pct": metrics["return_pct"],
            "sharpe": metrics["sharpe"],
            "sortino": metrics["sortino"],
            "max_drawdown": metrics["max_drawdown"],
            "win_rate": round_trips["win_rate"],
            "profit_factor": round_trips["profit_factor"],
            "expectancy": round_trips["expectancy"],
            "reporting_currency": metrics["reporting_currency"],
            "fully_priced": metrics["unpriced"]["fully_priced"],
            "metrics_method": metrics["method"],
        }

    def _trades_digest(self, session: Session) -> str | None:
        """The unsalted commitment to which trades are held (shared.merkle.trade_set_digest)."""
        ledger = None if self._polling is None else self._polling.trades(session.session_hash)
        return None if ledger is None else trade_set_digest((t.symbol, t.id) for t in ledger)

    def _polling_status(self, session: Session) -> dict[str, Any]:
        status = None if self._polling is None else self._polling.status(session.session_hash)
        if status is not None:
            return {**status, "trades_digest": self._trades_digest(session)}
        return {
            "state": "not_started",
            "last_poll": None,
            "next_poll": None,
            "trades_seen": 0,
            "calls": 0,
            "last_error": None,
        }

    def _metrics(self, request: p.SessionMetrics) -> p.MetricsReply:
        session = self._active(request.session_id)
        self._observe_polling(session)
        metrics: dict[str, Any] = {
            "exchange": session.exchange,
            "label": session.label,
            "window": {"from": _rfc3339(session.created_at), "to": _rfc3339(self._clock())},
            "totals": self._figures(session),
        }
        detail = session.aggregator.snapshot()
        for key in ("symbols", "daily", "positions", "pricing", "unpriced", "conventions"):
            metrics[key] = detail[key]
        return p.MetricsReply(request_id=request.request_id, metrics=metrics)

    def _summary(self, request: p.Summary) -> p.SummaryReply:
        session = self._active(request.session_id)
        self._observe_polling(session)
        summary = {
            "exchange": session.exchange,
            "label": session.label,
            "status": "active",
            "created_at": _rfc3339(session.created_at),
            "expires_at": _rfc3339(session.expires_at),
            "reports_issued": session.report_seq,
            "log_size": session.opslog.size,
            "headline": self._figures(session),
            "polling": self._polling_status(session),
            "completeness": None
            if self._polling is None
            else self._polling.completeness(session.session_hash),
        }
        return p.SummaryReply(request_id=request.request_id, summary=summary)

    # ------------------------------------------------------------------ records

    def _record_aad(self, *, record_id: str, session: Session, label: str) -> bytes:
        return canonical_json(
            {
                "v": _RECORD_VERSION,
                "purpose": "perf-aggregator/record",
                "record_id": record_id,
                "session_hash": session.session_hash.hex(),
                "label": label,
            }
        )

    def _seal_record(self, request: p.SealRecord) -> p.SealRecordReply:
        session = self._active(request.session_id)
        self._check_owner(
            session,
            method="seal_record",
            session_id=request.session_id,
            timestamp=request.proof_timestamp,
            signature=request.proof_signature,
            required=False,
        )
        metadata = request.metadata
        label = metadata.get("label")
        if (
            set(metadata) != _RECORD_METADATA_KEYS
            or metadata.get("purpose") != "record"
            or not isinstance(label, str)
            or not 1 <= len(label) <= _MAX_LABEL
        ):
            raise _Refusal(
                p.ErrorCode.BAD_REQUEST,
                f'record metadata must be {{"purpose": "record", "label": 1..{_MAX_LABEL} chars}}',
            )
        envelope = _envelope_of(request)
        opener: EnvelopeOpener = self._keys.opener
        try:
            plaintext = opener.open(envelope)
        except EnvelopeError:
            raise _Refusal(p.ErrorCode.UNDECRYPTABLE, "envelope could not be opened") from None
        record_id = str(uuid.uuid4())
        nonce = os.urandom(_RECORD_NONCE)
        aad = self._record_aad(record_id=record_id, session=session, label=label)
        sealed = (
            bytes([_RECORD_VERSION])
            + nonce
            + AESGCM(self._keys.record_key).encrypt(nonce, plaintext, aad)
        )
        log.info("record_sealed", session=_short_hash(session.session_hash))
        return p.SealRecordReply(
            request_id=request.request_id, record_id=record_id, label=label, sealed=sealed
        )

    def _unseal_record(self, request: p.UnsealRecord) -> p.UnsealRecordReply:
        session = self._active(request.session_id)
        self._check_owner(
            session,
            method=f"unseal_record:{request.record_id}",
            session_id=request.session_id,
            timestamp=request.proof_timestamp,
            signature=request.proof_signature,
            required=True,
        )
        owner_pub = session.owner_pub
        assert owner_pub is not None  # _check_owner(required=True) guarantees it
        sealed = request.sealed
        if len(sealed) < 1 + _RECORD_NONCE + 16 or sealed[0] != _RECORD_VERSION:
            raise _Refusal(p.ErrorCode.UNDECRYPTABLE, "record could not be unsealed")
        nonce, ciphertext = sealed[1 : 1 + _RECORD_NONCE], sealed[1 + _RECORD_NONCE :]
        aad = self._record_aad(record_id=request.record_id, session=session, label=request.label)
        try:
            plaintext = AESGCM(self._keys.record_key).decrypt(nonce, ciphertext, aad)
        except InvalidTag:
            raise _Refusal(p.ErrorCode.UNDECRYPTABLE, "record could not be unsealed") from None
        label = request.label
        reply = seal(
            plaintext,
            metadata={"purpose": "record-unseal", "record_id": request.record_id, "label": label},
            recipient_x25519=owner_x25519_public(owner_pub),
        )
        log.info("record_unsealed", session=_short_hash(session.session_hash))
        return p.UnsealRecordReply(request_id=request.request_id, envelope=reply.to_wire())

    # ------------------------------------------------------------------ operations

    def _health(self, request: p.Health) -> p.HealthReply:
        return p.HealthReply(
            request_id=request.request_id,
            status="locked" if self.locked else "ok",
            sessions=self._sessions.active_count(),
            uptime_seconds=int(self._clock() - self._started),
            pcr0=self._pcr0_hex,
        )

    def _stats(self, request: p.Stats) -> p.StatsReply:
        counters: dict[str, Any] = dict(sorted(self.counters.items()))
        counters["sessions.active"] = self._sessions.active_count()
        return p.StatsReply(request_id=request.request_id, counters=counters)
