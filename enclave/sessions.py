"""Live sessions and their credentials, in enclave memory only. Side: enclave.

A session is keyed by the SHA-256 of its id; the clear id is never stored, even
here (requests carry it and owner proofs sign it). Its lifecycle:

    submit -> PENDING --confirm--> ACTIVE --revoke / TTL--> gone
                  \\--discard / pending timeout--> gone

Replay protection: the digest of every envelope accepted while this enclave's
envelope key lives is remembered (32 bytes each). A discarded pending session
releases its digest, so a client whose submit failed on the parent's side can
retry with the same envelope; an expired or revoked one does not.

Time is passed in (``now``) so expiry is tested without sleeping.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from enclave.aggregator import Aggregator
from enclave.commitments import TradeCommitments
from enclave.opslog import OpsLog
from shared.envelope import Credentials

__all__ = ["WITHDRAW_WINDOW_SECONDS", "Session", "SessionState", "SessionTable"]

WITHDRAW_WINDOW_SECONDS = 20.0
"""How long after confirmation the parent may withdraw a session whose first sealed state
it could not store: longer than its store attempt (pool 5 s + statement 10 s), short
enough that checkpoints, which skip withdrawable sessions, soon cover it."""


class SessionState(enum.Enum):
    """Pending sessions exist only until the parent confirms its database write."""

    PENDING = "pending"
    ACTIVE = "active"


@dataclass(slots=True, kw_only=True)
class Session:
    """One trader's session. ``credentials`` never leave this object in clear."""

    session_hash: bytes
    exchange: str
    label: str
    credentials: Credentials = field(repr=False)
    created_at: float
    expires_at: float
    pending_deadline: float
    envelope_digest: bytes
    state: SessionState = SessionState.PENDING
    report_seq: int = 0
    prev_report_hash: str | None = None
    commitments: TradeCommitments = field(default_factory=TradeCommitments)
    aggregator: Aggregator = field(default_factory=Aggregator, repr=False)
    opslog: OpsLog = field(init=False, repr=False)
    # Sealing (enclave/session_state.py): the version of the last sealed state, and
    # whether anything worth keeping changed since.
    state_version: int = field(default=0, init=False)
    dirty: bool = field(default=False, init=False)
    withdrawable_until: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        self.opslog = OpsLog(self.session_hash)

    def wipe(self) -> None:
        """Overwrite what this session holds in wipeable memory (revoke / expiry).

        The salt key is a bytearray and is zeroed. The exchange credentials are Python
        strings (ccxt needs them so), which cannot be overwritten: they are dropped with
        the session and the poller, and never copied elsewhere.
        """
        self.commitments.wipe()

    @property
    def owner_pub(self) -> bytes | None:
        """The owner's Ed25519 key from the envelope, if the client set one."""
        return self.credentials.owner_pub


class SessionTable:
    """Sessions by id hash, plus the replay set of accepted envelope digests."""

    def __init__(self) -> None:
        self._sessions: dict[bytes, Session] = {}
        self._seen_digests: set[bytes] = set()

    def __len__(self) -> int:
        return len(self._sessions)

    def hashes(self) -> frozenset[bytes]:
        """Id hashes of every session still held (pending or active)."""
        return frozenset(self._sessions)

    def active_count(self) -> int:
        """Sessions confirmed by the parent and not yet expired or revoked."""
        return sum(1 for s in self._sessions.values() if s.state is SessionState.ACTIVE)

    def wipe_all(self) -> None:
        """Overwrite every held session's wipeable secrets (shutdown)."""
        for session in self._sessions.values():
            session.wipe()

    def active(self, *, now: float) -> list[Session]:
        """The ACTIVE, unexpired sessions (a snapshot list: safe to mutate the table after)."""
        return [
            s
            for s in self._sessions.values()
            if s.state is SessionState.ACTIVE and now < s.expires_at
        ]

    def seen(self, envelope_digest: bytes) -> bool:
        """Was this envelope accepted before (replay)?"""
        return envelope_digest in self._seen_digests

    def add_pending(self, session: Session) -> None:
        """Register a freshly opened session, waiting for the parent's confirmation."""
        if session.session_hash in self._sessions or session.envelope_digest in self._seen_digests:
            raise ValueError("duplicate session or envelope")  # callers check seen() first
        self._seen_digests.add(session.envelope_digest)
        self._sessions[session.session_hash] = session

    def confirm(self, session_hash: bytes, *, now: float) -> bool:
        """PENDING -> ACTIVE; False if unknown, already active, or the pending time ran out."""
        session = self._sessions.get(session_hash)
        if session is None or session.state is not SessionState.PENDING:
            return False
        if now > session.pending_deadline:
            self._discard(session)
            return False
        session.state = SessionState.ACTIVE
        # The parent may still withdraw it until then, if it cannot store its first
        # sealed state (its client got an error and never learnt the id).
        session.withdrawable_until = now + WITHDRAW_WINDOW_SECONDS
        return True

    def withdraw(self, session_hash: bytes, *, now: float) -> bool:
        """Drop a just-confirmed session the parent could not store (no owner proof needed:
        its client was told nothing was kept). Only before its first report and within
        the pending time after confirmation; the envelope may be submitted again."""
        session = self._sessions.get(session_hash)
        if (
            session is None
            or session.state is not SessionState.ACTIVE
            or session.report_seq != 0
            or now > session.withdrawable_until
        ):
            return False
        self._discard(session)
        return True

    def restore(self, session: Session) -> bool:
        """Install an ACTIVE session from sealed state unless a newer one is held.

        Its envelope digest joins the replay set (the envelope was accepted once).
        """
        held = self._sessions.get(session.session_hash)
        if held is not None and held.state_version >= session.state_version:
            return False
        self._sessions[session.session_hash] = session
        self._seen_digests.add(session.envelope_digest)
        return True

    def discard(self, session_hash: bytes) -> bool:
        """Drop a PENDING session and release its envelope digest for a retry."""
        session = self._sessions.get(session_hash)
        if session is None or session.state is not SessionState.PENDING:
            return False
        self._discard(session)
        return True

    def get_active(self, session_hash: bytes, *, now: float) -> Session | None:
        """The ACTIVE, unexpired session, or None (an expired one is removed on the way)."""
        session = self._sessions.get(session_hash)
        if session is None or session.state is not SessionState.ACTIVE:
            return None
        if now >= session.expires_at:
            del self._sessions[session_hash]
            session.wipe()
            return None
        return session

    def remove(self, session_hash: bytes) -> bool:
        """Forget an ACTIVE session now (revoke). Its envelope stays in the replay set."""
        session = self._sessions.get(session_hash)
        if session is None or session.state is not SessionState.ACTIVE:
            return False
        del self._sessions[session_hash]
        session.wipe()
        return True

    def purge(self, *, now: float) -> int:
        """Remove expired ACTIVE sessions and timed-out PENDING ones; return how many."""
        doomed = [
            s
            for s in self._sessions.values()
            if (s.state is SessionState.ACTIVE and now >= s.expires_at)
            or (s.state is SessionState.PENDING and now > s.pending_deadline)
        ]
        for session in doomed:
            if session.state is SessionState.PENDING:
                self._discard(session)
            else:
                del self._sessions[session.session_hash]
            session.wipe()
        return len(doomed)

    def _discard(self, session: Session) -> None:
        del self._sessions[session.session_hash]
        self._seen_digests.discard(session.envelope_digest)
        session.wipe()
