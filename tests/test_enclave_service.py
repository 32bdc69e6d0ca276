"""The enclave's RPC methods, called directly: sessions, reports, owner proofs, records."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclave.commitments import leaf_fields
from enclave.keys import boot_keys
from enclave.measurement import simulated_pcrs
from enclave.nsm import NsmClient
from enclave.nsm_simulator import NsmSimulator
from enclave.service import METHOD_VERSION, EnclaveService, ServiceLimits
from shared import protocol as p
from shared.attestation import AttestationVerifier
from shared.envelope import (
    ALG_HPKE_MLKEM768X25519,
    Credentials,
    Envelope,
    EnvelopeOpener,
    encrypt_credentials,
    seal,
)
from shared.ids import is_session_id, session_hash
from shared.logsetup import configure_logging
from shared.merkle import EMPTY_ROOT, leaf_hash, trade_leaf, verify_consistency, verify_inclusion
from shared.owner import owner_x25519_private
from shared.signing import report_hash, sign_owner_proof, verify_payload

CANARY_KEY = "canary-apikey-7f3a9c1e"
CANARY_SECRET = "canary-secret-b81d04e2"


class Clock:
    """A settable clock (Unix seconds) so expiry is tested without sleeping."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def log_stream() -> io.StringIO:
    """Capture the structured logs of the service."""
    stream = io.StringIO()
    configure_logging("enclave-test", level="DEBUG", stream=stream)
    return stream


@pytest.fixture
def clock() -> Clock:
    """Now = the real current time (documents are verified at real time)."""
    return Clock(datetime.now(UTC).timestamp())


@pytest.fixture
def simulator(tmp_path: Path) -> NsmSimulator:
    """An NSM simulator measuring this source tree."""
    return NsmSimulator(tmp_path, simulated_pcrs())


@pytest.fixture
def service(simulator: NsmSimulator, clock: Clock, log_stream: io.StringIO) -> EnclaveService:
    """The service with fresh boot keys."""
    nsm = NsmClient(simulator)
    keys = boot_keys(nsm, with_pq=True)
    return EnclaveService(
        nsm=nsm,
        keys=keys,
        pcr0=nsm.describe_pcr(0).data,
        limits=ServiceLimits(
            max_ttl_seconds=86_400, pending_ttl_seconds=60, max_envelope_age_seconds=600
        ),
        clock=clock,
    )


async def call(service: EnclaveService, request: p.Request) -> p.Reply:
    """Round-trip through the wire codec too, as the RPC server does."""
    (decoded,) = p.FrameDecoder().feed(p.encode_frame(request))
    assert isinstance(decoded, p.Request)
    reply = await service.handle(decoded)
    (wire_reply,) = p.FrameDecoder().feed(p.encode_frame(reply))
    return wire_reply  # type: ignore[return-value]


async def attested_keys(
    service: EnclaveService, simulator: NsmSimulator, clock: Clock
) -> tuple[bytes, bytes]:
    """(enc, sig) from a verified attestation document, as a client gets them."""
    reply = await call(service, p.Attest(request_id=1, nonce=b"n" * 32))
    assert isinstance(reply, p.AttestReply)
    pcrs = simulated_pcrs()
    verifier = AttestationVerifier(
        expected_pcrs={i: pcrs[i] for i in (0, 1, 2)}, root_der=simulator.root_der
    )
    verified = verifier.verify(
        reply.document, nonce=b"n" * 32, now=datetime.fromtimestamp(clock.now, UTC)
    )
    assert verified.keys is not None
    return verified.keys.x25519_public, verified.keys.ed25519_public


def submit_request(envelope: Envelope, request_id: int = 2) -> p.Submit:
    """The Submit message the parent builds from a client's envelope."""
    return p.Submit(
        request_id=request_id,
        alg=envelope.alg,
        ephemeral_pub=envelope.ephemeral_pub,
        nonce=envelope.nonce,
        ciphertext=envelope.ciphertext,
        tag=envelope.tag,
        metadata=envelope.metadata,
    )


def credentials(owner: Ed25519PrivateKey | None = None) -> Credentials:
    """Canary credentials, optionally with an owner key."""
    return Credentials(
        exchange="binance",
        api_key=CANARY_KEY,
        api_secret=CANARY_SECRET,
        owner_pub=None if owner is None else owner.public_key().public_bytes_raw(),
    )


def canary_envelope(enc: bytes, owner: Ed25519PrivateKey | None = None) -> Envelope:
    """Canary credentials sealed to ``enc`` with the usual metadata."""
    return encrypt_credentials(
        credentials(owner),
        metadata={"exchange": "binance", "label": "main", "ttl": 3600},
        recipient_x25519=enc,
    )


async def open_session(
    service: EnclaveService,
    enc: bytes,
    *,
    owner: Ed25519PrivateKey | None = None,
    metadata: dict[str, Any] | None = None,
) -> str:
    """Submit + confirm; return the session id."""
    envelope = encrypt_credentials(
        credentials(owner),
        metadata=metadata or {"exchange": "binance", "label": "main", "ttl": 3600},
        recipient_x25519=enc,
    )
    reply = await call(service, submit_request(envelope))
    assert isinstance(reply, p.SubmitReply), reply
    confirmed = await call(
        service, p.Confirm(request_id=3, session_id=reply.session_id, commit=True)
    )
    assert isinstance(confirmed, p.ConfirmReply)
    return reply.session_id


async def test_attestation_binds_the_service_keys(
    service: EnclaveService, simulator: NsmSimulator, clock: Clock
) -> None:
    """The attestation document verifies and carries the enc/sig/pq keys the service uses."""
    enc, sig = await attested_keys(service, simulator, clock)
    assert len(enc) == 32
    assert len(sig) == 32


async def test_oversized_nonce_is_refused(service: EnclaveService) -> None:
    """A nonce over 512 bytes is TOO_LARGE, as the NSM would refuse it."""
    reply = await call(service, p.Attest(request_id=1, nonce=bytes(513)))
    assert isinstance(reply, p.ErrorReply)
    assert reply.code is p.ErrorCode.TOO_LARGE


async def test_submit_confirm_and_signed_report(
    service: EnclaveService, simulator: NsmSimulator, clock: Clock
) -> None:
    """A confirmed session yields a report signed by the attested key, zero until trades."""
    enc, sig = await attested_keys(service, simulator, clock)
    session_id = await open_session(service, enc)
    assert is_session_id(session_id)
    reply = await call(service, p.Aggregates(request_id=4, session_id=session_id))
    assert isinstance(reply, p.AggregatesReply)
    verify_payload(sig, reply.payload, reply.signature)
    payload = reply.payload
    # The exact figures of an empty history: decimal strings, no ratio without data.
    assert payload["pnl"] == "0" and payload["trades"] == 0 and payload["volume"] == "0"
    assert payload["sharpe"] is None
    assert payload["method"] == METHOD_VERSION
    assert payload["merkle_root"] == EMPTY_ROOT.hex() == reply.merkle_root
    assert payload["pcr0"] == simulated_pcrs()[0].hex()
    assert payload["seq"] == 1 and payload["prev_report_hash"] is None
    assert session_id not in json.dumps(payload)


async def test_reports_form_a_hash_chain(
    service: EnclaveService, simulator: NsmSimulator, clock: Clock
) -> None:
    """Each report's prev_report_hash is the hash of the previous payload; seq increments."""
    enc, _ = await attested_keys(service, simulator, clock)
    session_id = await open_session(service, enc)
    first = await call(service, p.Aggregates(request_id=4, session_id=session_id))
    clock.now += 10
    second = await call(service, p.Aggregates(request_id=5, session_id=session_id))
    assert isinstance(first, p.AggregatesReply) and isinstance(second, p.AggregatesReply)
    assert second.payload["seq"] == 2
    assert second.payload["prev_report_hash"] == report_hash(first.payload)


async def test_pending_session_is_not_served(
    service: EnclaveService, simulator: NsmSimulator, clock: Clock
) -> None:
    """Until the parent confirms, the session does not exist for reads."""
    enc, _ = await attested_keys(service, simulator, clock)
    envelope = canary_envelope(enc)
    reply = await call(service, submit_request(envelope))
    assert isinstance(reply, p.SubmitReply)
    read = await call(service, p.Summary(request_id=5, session_id=reply.session_id))
    assert isinstance(read, p.ErrorReply) and read.code is p.ErrorCode.NOT_FOUND


async def test_discarded_submit_can_be_retried(
    service: EnclaveService, simulator: NsmSimulator, clock: Clock
) -> None:
    """commit=False drops the pending session and frees the envelope for a retry."""
    enc, _ = await attested_keys(service, simulator, clock)
    envelope = canary_envelope(enc)
    first = await call(service, submit_request(envelope))
    assert isinstance(first, p.SubmitReply)
    dropped = await call(
        service, p.Confirm(request_id=3, session_id=first.session_id, commit=False)
    )
    assert isinstance(dropped, p.ConfirmReply)
    again = await call(service, submit_request(envelope))
    assert isinstance(again, p.SubmitReply)
    assert again.session_id != first.session_id


async def test_replayed_envelope_is_refused(
    service: EnclaveService, simulator: NsmSimulator, clock: Clock
) -> None:
    """The same envelope submitted twice is REPLAYED, before and after it is confirmed."""
    enc, _ = await attested_keys(service, simulator, clock)
    envelope = canary_envelope(enc)
    first = await call(service, submit_request(envelope))
    assert isinstance(first, p.SubmitReply)
    replay = await call(service, submit_request(envelope))
    assert isinstance(replay, p.ErrorReply) and replay.code is p.ErrorCode.REPLAYED
    await call(service, p.Confirm(request_id=3, session_id=first.session_id, commit=True))
    replay = await call(service, submit_request(envelope))
    assert isinstance(replay, p.ErrorReply) and replay.code is p.ErrorCode.REPLAYED


async def test_undecryptable_envelope(service: EnclaveService) -> None:
    """An envelope sealed to another key is UNDECRYPTABLE with the generic message."""
    other = EnvelopeOpener.generate()
    envelope = encrypt_credentials(
        credentials(),
        metadata={"exchange": "binance", "label": "main", "ttl": 3600},
        recipient_x25519=other.public_keys().x25519,
    )
    reply = await call(service, submit_request(envelope))
    assert isinstance(reply, p.ErrorReply)
    assert reply.code is p.ErrorCode.UNDECRYPTABLE
    assert reply.message == "envelope could not be opened"


async def test_post_quantum_envelope_opens(
    service: EnclaveService, simulator: NsmSimulator, clock: Clock
) -> None:
    """The ML-KEM-768+X25519 hybrid alg works end to end through the service."""
    await attested_keys(service, simulator, clock)
    pq_public = service._keys.pq_public()
    assert pq_public is not None
    envelope = encrypt_credentials(
        credentials(),
        metadata={"exchange": "binance", "label": "pq", "ttl": 3600},
        alg=ALG_HPKE_MLKEM768X25519,
        recipient_pq=pq_public,
    )
    reply = await call(service, submit_request(envelope))
    assert isinstance(reply, p.SubmitReply)


@pytest.mark.parametrize(
    ("metadata", "fragment"),
    [
        ({"exchange": "binance", "label": "main", "ttl": 10**9}, "ttl"),
        ({"exchange": "binance", "label": "main", "ttl": 5}, "ttl"),
        ({"exchange": "binance", "label": "main", "ttl": "3600"}, "ttl"),
        ({"exchange": "Binance!", "label": "main", "ttl": 3600}, "exchange"),
        ({"exchange": "binance", "label": "", "ttl": 3600}, "label"),
        ({"exchange": "binance", "label": "main"}, "metadata must have"),
        ({"exchange": "binance", "label": "main", "ttl": 3600, "admin": True}, "metadata must"),
        ({"exchange": "binance", "label": "m", "ttl": 3600, "issued_at": 1}, "issued_at"),
    ],
)
async def test_bad_metadata_is_refused_before_opening(
    service: EnclaveService, metadata: dict[str, Any], fragment: str
) -> None:
    """The enclave validates metadata itself (BAD_REQUEST naming the field)."""
    opener = EnvelopeOpener.generate()
    envelope = seal(b"{}", metadata=metadata, recipient_x25519=opener.public_keys().x25519)
    reply = await call(service, submit_request(envelope))
    assert isinstance(reply, p.ErrorReply)
    assert reply.code is p.ErrorCode.BAD_REQUEST
    assert fragment in reply.message


async def test_ttl_expiry_forgets_the_session(
    service: EnclaveService, simulator: NsmSimulator, clock: Clock
) -> None:
    """After its TTL a session answers NOT_FOUND and the purge drops it from memory."""
    enc, _ = await attested_keys(service, simulator, clock)
    session_id = await open_session(
        service, enc, metadata={"exchange": "binance", "label": "main", "ttl": 120}
    )
    assert len(service.sessions) == 1
    clock.now += 121
    assert service.purge_expired() == 1
    assert len(service.sessions) == 0
    reply = await call(service, p.Summary(request_id=9, session_id=session_id))
    assert isinstance(reply, p.ErrorReply) and reply.code is p.ErrorCode.NOT_FOUND


async def test_unconfirmed_pending_session_times_out(
    service: EnclaveService, simulator: NsmSimulator, clock: Clock
) -> None:
    """A pending session the parent never confirms is dropped after the pending TTL."""
    enc, _ = await attested_keys(service, simulator, clock)
    envelope = canary_envelope(enc)
    reply = await call(service, submit_request(envelope))
    assert isinstance(reply, p.SubmitReply)
    clock.now += 61
    late = await call(service, p.Confirm(request_id=3, session_id=reply.session_id, commit=True))
    assert isinstance(late, p.ErrorReply) and late.code is p.ErrorCode.NOT_FOUND
    assert len(service.sessions) == 0


async def test_revoke_without_owner_key(
    service: EnclaveService, simulator: NsmSimulator, clock: Clock
) -> None:
    """A session without owner_pub is revoked by its id alone (seed behaviour), once."""
    enc, _ = await attested_keys(service, simulator, clock)
    session_id = await open_session(service, enc)
    reply = await call(
        service,
        p.Revoke(
            request_id=6,
            session_id=session_id,
            proof_timestamp=None,
            proof_signature=None,
            log_start=0,
        ),
    )
    assert isinstance(reply, p.RevokeReply)
    again = await call(service, p.Aggregates(request_id=7, session_id=session_id))
    assert isinstance(again, p.ErrorReply) and again.code is p.ErrorCode.NOT_FOUND


async def test_revoke_with_owner_requires_valid_proof(
    service: EnclaveService, simulator: NsmSimulator, clock: Clock
) -> None:
    """With owner_pub, revoke needs the owner's fresh signature over (revoke, session)."""
    enc, _ = await attested_keys(service, simulator, clock)
    owner = Ed25519PrivateKey.generate()
    session_id = await open_session(service, enc, owner=owner)
    no_proof = await call(
        service,
        p.Revoke(
            request_id=6,
            session_id=session_id,
            proof_timestamp=None,
            proof_signature=None,
            log_start=0,
        ),
    )
    assert isinstance(no_proof, p.ErrorReply) and no_proof.code is p.ErrorCode.FORBIDDEN
    stranger = sign_owner_proof(
        Ed25519PrivateKey.generate(), method="revoke", session_id=session_id,
        timestamp=int(clock.now),
    )  # fmt: skip
    wrong_method = sign_owner_proof(
        owner, method="seal_record", session_id=session_id, timestamp=int(clock.now)
    )
    stale = sign_owner_proof(
        owner, method="revoke", session_id=session_id, timestamp=int(clock.now) - 3600
    )
    for proof in (stranger, wrong_method, stale):
        refused = await call(
            service,
            p.Revoke(
                request_id=6,
                session_id=session_id,
                proof_timestamp=proof.timestamp,
                proof_signature=proof.signature,
                log_start=0,
            ),
        )
        assert isinstance(refused, p.ErrorReply) and refused.code is p.ErrorCode.FORBIDDEN
    good = sign_owner_proof(owner, method="revoke", session_id=session_id, timestamp=int(clock.now))
    reply = await call(
        service,
        p.Revoke(
            request_id=6,
            session_id=session_id,
            proof_timestamp=good.timestamp,
            proof_signature=good.signature,
            log_start=0,
        ),
    )
    assert isinstance(reply, p.RevokeReply)


async def test_one_session_cannot_touch_another(
    service: EnclaveService, simulator: NsmSimulator, clock: Clock
) -> None:
    """Ids are looked up by hash only: a malformed or foreign id is NOT_FOUND."""
    enc, _ = await attested_keys(service, simulator, clock)
    await open_session(service, enc)
    for bogus in ("x", "A" * 43, "../" * 15):
        reply = await call(service, p.Aggregates(request_id=8, session_id=bogus))
        assert isinstance(reply, p.ErrorReply) and reply.code is p.ErrorCode.NOT_FOUND


async def test_records_seal_and_unseal_to_the_owner(
    service: EnclaveService, simulator: NsmSimulator, clock: Clock
) -> None:
    """A record sealed by the enclave comes back encrypted to the owner's key only."""
    enc, _ = await attested_keys(service, simulator, clock)
    owner = Ed25519PrivateKey.generate()
    session_id = await open_session(service, enc, owner=owner)
    secret_note = b"canary-record-5e1f: strategy notes"
    record_env = seal(secret_note, metadata={"purpose": "record", "label": "notes"},
                      recipient_x25519=enc)  # fmt: skip
    proof = sign_owner_proof(
        owner, method="seal_record", session_id=session_id, timestamp=int(clock.now)
    )
    sealed = await call(
        service,
        p.SealRecord(
            request_id=10,
            session_id=session_id,
            alg=record_env.alg,
            ephemeral_pub=record_env.ephemeral_pub,
            nonce=record_env.nonce,
            ciphertext=record_env.ciphertext,
            tag=record_env.tag,
            metadata=record_env.metadata,
            proof_timestamp=proof.timestamp,
            proof_signature=proof.signature,
        ),
    )
    assert isinstance(sealed, p.SealRecordReply)
    assert secret_note not in sealed.sealed
    unseal_proof = sign_owner_proof(
        owner,
        method=f"unseal_record:{sealed.record_id}",
        session_id=session_id,
        timestamp=int(clock.now),
    )

    def unseal(label: str, blob: bytes) -> p.UnsealRecord:
        return p.UnsealRecord(
            request_id=11,
            session_id=session_id,
            record_id=sealed.record_id,
            label=label,
            sealed=blob,
            proof_timestamp=unseal_proof.timestamp,
            proof_signature=unseal_proof.signature,
        )

    reply = await call(service, unseal("notes", sealed.sealed))
    assert isinstance(reply, p.UnsealRecordReply)
    owner_opener = EnvelopeOpener(owner_x25519_private(owner))
    assert owner_opener.open(Envelope.from_wire(reply.envelope)) == secret_note
    # The enclave itself cannot read the reply: it is sealed to the owner.
    with pytest.raises(Exception, match="could not be opened"):
        service._keys.opener.open(Envelope.from_wire(reply.envelope))
    # A parent that swaps the label or flips a bit of the blob gets UNDECRYPTABLE.
    swapped = await call(service, unseal("other", sealed.sealed))
    assert isinstance(swapped, p.ErrorReply) and swapped.code is p.ErrorCode.UNDECRYPTABLE
    flipped = bytearray(sealed.sealed)
    flipped[-1] ^= 1
    tampered = await call(service, unseal("notes", bytes(flipped)))
    assert isinstance(tampered, p.ErrorReply) and tampered.code is p.ErrorCode.UNDECRYPTABLE


async def test_unseal_needs_an_owner(
    service: EnclaveService, simulator: NsmSimulator, clock: Clock
) -> None:
    """A session without an owner key cannot unseal (nobody to encrypt the reply to)."""
    enc, _ = await attested_keys(service, simulator, clock)
    session_id = await open_session(service, enc)
    reply = await call(
        service,
        p.UnsealRecord(
            request_id=11,
            session_id=session_id,
            record_id="r",
            label="l",
            sealed=b"\x01" + bytes(40),
            proof_timestamp=int(clock.now),
            proof_signature="A" * 86 + "==",
        ),
    )
    assert isinstance(reply, p.ErrorReply) and reply.code is p.ErrorCode.FORBIDDEN


async def test_restore_is_refused_until_kms_sealing(service: EnclaveService) -> None:
    """Restore answers UNSUPPORTED: there is no data key to open sealed state with yet."""
    reply = await call(service, p.Restore(request_id=1, sealed=(), revocations=None))
    assert isinstance(reply, p.ErrorReply) and reply.code is p.ErrorCode.UNSUPPORTED


async def test_health_and_stats(
    service: EnclaveService, simulator: NsmSimulator, clock: Clock
) -> None:
    """Health reports live sessions and PCR0; stats count outcomes per method."""
    enc, _ = await attested_keys(service, simulator, clock)
    await open_session(service, enc)
    health = await call(service, p.Health(request_id=1))
    assert isinstance(health, p.HealthReply)
    assert health.sessions == 1 and health.pcr0 == simulated_pcrs()[0].hex()
    stats = await call(service, p.Stats(request_id=2))
    assert isinstance(stats, p.StatsReply)
    assert stats.counters["submit.ok"] == 1 and stats.counters["sessions.active"] == 1


async def test_no_secret_in_replies_or_logs(
    service: EnclaveService, simulator: NsmSimulator, clock: Clock, log_stream: io.StringIO
) -> None:
    """Canary credentials appear in no reply and no log line across a whole session."""
    enc, _ = await attested_keys(service, simulator, clock)
    owner = Ed25519PrivateKey.generate()
    session_id = await open_session(service, enc, owner=owner)
    replies = [
        await call(service, p.Aggregates(request_id=1, session_id=session_id)),
        await call(service, p.Summary(request_id=2, session_id=session_id)),
        await call(service, p.SessionMetrics(request_id=3, session_id=session_id)),
        await call(service, p.Stats(request_id=4)),
        await call(
            service,
            p.Revoke(
                request_id=5,
                session_id=session_id,
                proof_timestamp=1,
                proof_signature="x",
                log_start=0,
            ),
        ),
    ]
    blob = repr(replies) + log_stream.getvalue() + repr(service.sessions._sessions)
    assert log_stream.getvalue()  # the scan looked at real log output
    for canary in (CANARY_KEY, CANARY_SECRET, session_id):
        assert canary not in blob


@dataclass(frozen=True)
class FakeTrade:
    """A polled trade as the service sees it (numbers as exchange strings)."""

    symbol: str
    id: str
    order_id: str | None = "o-1"
    side: str = "buy"
    price: str = "100.5"
    amount: str = "0.25"
    cost: str | None = "25.125"
    fee_cost: str | None = "0.01"
    fee_currency: str | None = "USDT"
    timestamp: int = 1_700_000_000_000


class FakeLedger(list[FakeTrade]):
    """An append-only trade list with the ledger's ``since``."""

    def since(self, index: int) -> list[FakeTrade]:
        return self[index:]


class FakePolling:
    """A small fake of the exchange pollers: records calls, serves canned trades."""

    def __init__(self) -> None:
        self.started: dict[bytes, tuple[str, Credentials]] = {}
        self.stopped: list[bytes] = []
        self.trade_list = FakeLedger()

    def start(
        self,
        session_hash: bytes,
        exchange_id: str,
        credentials: Credentials,
        trades: Collection[Any] = (),
    ) -> None:
        self.started[session_hash] = (exchange_id, credentials)
        if trades and not self.trade_list:  # a restored session starts from its trades
            self.trade_list.extend(trades)

    def stop(self, session_hash: bytes) -> bool:
        self.stopped.append(session_hash)
        return self.started.pop(session_hash, None) is not None

    def prune(self, live: Collection[bytes]) -> int:
        doomed = [h for h in self.started if h not in live]
        for digest in doomed:
            self.stop(digest)
        return len(doomed)

    def status(self, session_hash: bytes) -> dict[str, Any] | None:
        if session_hash not in self.started:
            return None
        return {"state": "polling", "trades_seen": len(self.trade_list), "calls": 3}

    def trades(self, session_hash: bytes) -> FakeLedger | None:
        return self.trade_list if session_hash in self.started else None

    def completeness(self, session_hash: bytes) -> dict[str, Any] | None:
        return {"complete": True, "calls": 3} if session_hash in self.started else None


@pytest.fixture
def polled(simulator: NsmSimulator, clock: Clock) -> tuple[EnclaveService, FakePolling]:
    """A service driving a fake poller."""
    nsm = NsmClient(simulator)
    polling = FakePolling()
    service = EnclaveService(
        nsm=nsm,
        keys=boot_keys(nsm, with_pq=False),
        pcr0=nsm.describe_pcr(0).data,
        limits=ServiceLimits(
            max_ttl_seconds=86_400, pending_ttl_seconds=60, max_envelope_age_seconds=600
        ),
        polling=polling,
        clock=clock,
    )
    return service, polling


async def test_polling_follows_the_session_lifecycle(
    polled: tuple[EnclaveService, FakePolling], simulator: NsmSimulator, clock: Clock
) -> None:
    """Confirm starts the poller, reports carry its trades and completeness, revoke stops it."""
    service, polling = polled
    enc, sig = await attested_keys(service, simulator, clock)
    session_id = await open_session(service, enc)
    digest = session_hash(session_id)
    assert polling.started[digest][0] == "binance"
    assert polling.started[digest][1].api_secret == CANARY_SECRET
    empty = await call(service, p.Aggregates(request_id=1, session_id=session_id))
    assert isinstance(empty, p.AggregatesReply)
    assert empty.payload["pnl"] == "0"
    assert empty.payload["trades"] == 0
    polling.trade_list.extend([FakeTrade("BTC/USDT", "2"), FakeTrade("BTC/USDT", "1")])
    report = await call(service, p.Aggregates(request_id=2, session_id=session_id))
    assert isinstance(report, p.AggregatesReply)
    verify_payload(sig, report.payload, report.signature)
    assert report.payload["trades"] == 2
    # Two buys of 0.25 at 100.5 (cost 25.125, fee 0.01 USDT each): nothing realized yet.
    assert report.payload["pnl_gross"] == "0"
    assert report.payload["fees"] == "0.02"
    assert report.payload["pnl"] == "-0.02"
    assert report.payload["volume"] == "50.25"
    assert report.payload["completeness"] == {"complete": True, "calls": 3}
    expected = hashlib.sha256(b'[["BTC/USDT","1"],["BTC/USDT","2"]]').hexdigest()
    assert report.payload["trades_digest"] == expected
    # The Merkle root commits to the two salted trade leaves; it only grows.
    assert report.payload["merkle_root"] == report.merkle_root != EMPTY_ROOT.hex()
    first_root = bytes.fromhex(report.merkle_root)
    polling.trade_list.append(FakeTrade("ETH/USDT", "9", side="sell"))
    later = await call(service, p.Aggregates(request_id=5, session_id=session_id))
    assert isinstance(later, p.AggregatesReply)
    assert later.payload["trades"] == 3
    tree = service.sessions.get_active(session_hash(session_id), now=clock.now)
    assert tree is not None
    verify_consistency(
        2,
        3,
        first_root,
        bytes.fromhex(later.merkle_root),
        tree.commitments.tree.consistency_proof(2, 3),
    )
    # A disclosed trade (fields + salt) is provably in the signed root.
    leaf = trade_leaf(
        leaf_fields(FakeTrade("ETH/USDT", "9", side="sell")), tree.commitments.salt(2)
    )
    verify_inclusion(
        leaf_hash(leaf),
        2,
        3,
        tree.commitments.tree.inclusion_proof(2, 3),
        bytes.fromhex(later.merkle_root),
    )
    summary = await call(service, p.Summary(request_id=3, session_id=session_id))
    assert isinstance(summary, p.SummaryReply)
    assert summary.summary["polling"]["trades_digest"] != expected
    await call(
        service,
        p.Revoke(
            request_id=4,
            session_id=session_id,
            proof_timestamp=None,
            proof_signature=None,
            log_start=0,
        ),
    )
    assert polling.stopped == [digest]


async def test_expiry_prunes_the_poller(
    polled: tuple[EnclaveService, FakePolling], simulator: NsmSimulator, clock: Clock
) -> None:
    """When a session expires the purge stops its poller too."""
    service, polling = polled
    enc, _ = await attested_keys(service, simulator, clock)
    session_id = await open_session(
        service, enc, metadata={"exchange": "binance", "label": "main", "ttl": 60}
    )
    clock.now += 61
    service.purge_expired()
    assert polling.stopped == [session_hash(session_id)]


@pytest.mark.parametrize(
    ("exchange", "currency"),
    [("coinbase", "USD"), ("kraken", "USD"), ("binance", "USDT"), ("okx", "USDT")],
)
async def test_reporting_currency_follows_the_exchange(
    polled: tuple[EnclaveService, FakePolling],
    simulator: NsmSimulator,
    clock: Clock,
    exchange: str,
    currency: str,
) -> None:
    """A USD exchange reports in USD (its BTC/USD trades priced), others in USDT."""
    service, polling = polled
    enc, _ = await attested_keys(service, simulator, clock)
    owner = Ed25519PrivateKey.generate()
    envelope = encrypt_credentials(
        Credentials(
            exchange=exchange,
            api_key=CANARY_KEY,
            api_secret=CANARY_SECRET,
            owner_pub=owner.public_key().public_bytes_raw(),
        ),
        metadata={"exchange": exchange, "label": "main", "ttl": 3600},
        recipient_x25519=enc,
    )
    submitted = await call(service, submit_request(envelope))
    assert isinstance(submitted, p.SubmitReply)
    await call(service, p.Confirm(request_id=3, session_id=submitted.session_id, commit=True))
    polling.trade_list.append(FakeTrade("BTC/USD", "1", fee_currency="USD"))
    report = await call(service, p.Aggregates(request_id=4, session_id=submitted.session_id))
    assert isinstance(report, p.AggregatesReply)
    assert report.payload["reporting_currency"] == currency
    assert report.payload["volume"] == ("25.125" if currency == "USD" else "0")


async def test_a_just_confirmed_session_can_be_withdrawn_once_not_later(
    polled: tuple[EnclaveService, FakePolling], simulator: NsmSimulator, clock: Clock
) -> None:
    """Confirm(commit=False) drops a session confirmed moments ago (the parent could not
    store it): polling stops, the envelope may come again. Not after a report, not later."""
    service, polling = polled
    enc, _ = await attested_keys(service, simulator, clock)
    owner = Ed25519PrivateKey.generate()
    envelope = canary_envelope(enc, owner)
    submitted = await call(service, submit_request(envelope))
    assert isinstance(submitted, p.SubmitReply)
    sid = submitted.session_id
    await call(service, p.Confirm(request_id=3, session_id=sid, commit=True))
    withdrawn = await call(service, p.Confirm(request_id=4, session_id=sid, commit=False))
    assert isinstance(withdrawn, p.ConfirmReply)
    assert polling.stopped == [session_hash(sid)]
    gone = await call(service, p.Summary(request_id=5, session_id=sid))
    assert isinstance(gone, p.ErrorReply) and gone.code is p.ErrorCode.NOT_FOUND
    again = await call(service, submit_request(envelope))  # not a replay: nothing was kept
    assert isinstance(again, p.SubmitReply)
    await call(service, p.Confirm(request_id=6, session_id=again.session_id, commit=True))
    await call(service, p.Aggregates(request_id=7, session_id=again.session_id))
    late = await call(service, p.Confirm(request_id=8, session_id=again.session_id, commit=False))
    assert isinstance(late, p.ErrorReply) and late.code is p.ErrorCode.NOT_FOUND  # reported
    third = await call(service, submit_request(canary_envelope(enc, owner)))
    await call(service, p.Confirm(request_id=9, session_id=third.session_id, commit=True))
    clock.now += 21  # past the withdrawal window after confirmation
    late = await call(service, p.Confirm(request_id=10, session_id=third.session_id, commit=False))
    assert isinstance(late, p.ErrorReply) and late.code is p.ErrorCode.NOT_FOUND
