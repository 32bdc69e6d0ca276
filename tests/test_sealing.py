"""KMS sealing in the enclave service: unlock, sealed states, restore, revocation, refusal.

Real parts: the NSM simulator makes the attestation documents, the KMS simulator (over
HTTPS, SigV4 checked) enforces the key policy and answers with CMS, boto3 talks to it
through the enclave's adapter. A "restart" is a new EnclaveService with new boot keys
on the same simulated NSM, as a new enclave process would be.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclave.keys import boot_keys
from enclave.kms import AwsCredentials, Boto3Kms
from enclave.measurement import simulated_pcrs
from enclave.nsm import NsmClient
from enclave.nsm_simulator import NsmSimulator
from enclave.service import EnclaveService, ServiceLimits
from shared import protocol as p
from shared.attestation import AttestationVerifier
from shared.envelope import Credentials, encrypt_credentials
from shared.ids import session_hash
from shared.merkle import verify_consistency
from shared.sealed_state import SealedHeader
from shared.signing import report_hash, verify_payload
from tests.fakes.exchanges.common import create_fake_tls
from tests.fakes.kms import KeyPolicy, KmsSimulator, TestCredentials, serve_in_thread
from tests.test_enclave_service import FakePolling, FakeTrade, submit_request

REGION = "us-east-1"
KMS_HOST = f"kms.{REGION}.amazonaws.com"
PCRS = simulated_pcrs()
KEY_ID = "sealing"


@dataclass
class World:
    """A KMS simulator over HTTPS that trusts one NSM simulator's root."""

    state: Path
    port: int
    ca_file: Path
    nsm: NsmSimulator
    credentials: TestCredentials

    def unlock(self, *, wrapped: bytes | None = None, sealed: bytes | None = None) -> p.Unlock:
        return p.Unlock(
            request_id=1,
            aws_access_key_id=self.credentials.access_key_id,
            aws_secret_access_key=self.credentials.secret_access_key,
            aws_session_token=self.credentials.session_token,
            region=REGION,
            key_id=KEY_ID,
            wrapped_key=wrapped,
            sealed_keys=sealed,
        )

    def service(self, nsm: NsmSimulator | None = None) -> tuple[EnclaveService, FakePolling]:
        """A freshly booted enclave (new boot keys) with sealing through the simulator."""
        client = NsmClient(nsm or self.nsm)
        polling = FakePolling()

        def connector(credentials: AwsCredentials, region: str) -> Boto3Kms:
            return Boto3Kms(
                credentials=credentials,
                region=region,
                endpoint_url=f"https://localhost:{self.port}",
                ca_file=self.ca_file,
                max_attempts=1,
            )

        service = EnclaveService(
            nsm=client,
            keys=boot_keys(client, with_pq=False),
            pcr0=client.describe_pcr(0).data,
            limits=ServiceLimits(
                max_ttl_seconds=86_400, pending_ttl_seconds=60, max_envelope_age_seconds=600
            ),
            polling=polling,
            kms=connector,
            kms_key_id=KEY_ID,
        )
        return service, polling


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """One KMS simulator (policy on PCR0-2 of this source tree) for the module."""
    state = tmp_path_factory.mktemp("sealing")
    nsm = NsmSimulator(state / "nsm", PCRS)
    tls = create_fake_tls(state / "tls", hostnames=(KMS_HOST,))
    credentials = TestCredentials(
        access_key_id="AKIATESTSEALING00001",
        secret_access_key="test-secret-" + os.urandom(8).hex(),
        session_token=None,
    )
    simulator = KmsSimulator(
        policies=[KeyPolicy(key_id=KEY_ID, pcrs={i: PCRS[i] for i in (0, 1, 2)})],
        root_der=nsm.root_der,
        state_dir=state / "kms",
        region=REGION,
        credentials=[credentials],
    )
    with serve_in_thread(simulator, tls.server_context()) as port:
        yield World(state=state, port=port, ca_file=tls.ca_file, nsm=nsm, credentials=credentials)


async def call(service: EnclaveService, request: p.Request) -> Any:
    """Through the wire codec, as the RPC server does."""
    (decoded,) = p.FrameDecoder().feed(p.encode_frame(request))
    reply = await service.handle(decoded)  # type: ignore[arg-type]
    (wire,) = p.FrameDecoder().feed(p.encode_frame(reply))
    return wire


async def attested(service: EnclaveService, world: World) -> tuple[bytes, bytes]:
    """(enc, sig) from a verified attestation document of ``service``."""
    reply = await call(service, p.Attest(request_id=2, nonce=b"n" * 32))
    assert isinstance(reply, p.AttestReply), reply
    verifier = AttestationVerifier(
        expected_pcrs={i: PCRS[i] for i in (0, 1, 2)}, root_der=world.nsm.root_der
    )
    keys = verifier.verify(reply.document, nonce=b"n" * 32, now=datetime.now(UTC)).keys
    assert keys is not None
    return keys.x25519_public, keys.ed25519_public


async def open_owned_session(service: EnclaveService, enc: bytes, owner: Ed25519PrivateKey) -> Any:
    """Submit + confirm; (session id, the ConfirmReply)."""
    envelope = encrypt_credentials(
        Credentials(
            exchange="binance",
            api_key="sealing-canary-key",
            api_secret="sealing-canary-secret",
            owner_pub=owner.public_key().public_bytes_raw(),
        ),
        metadata={"exchange": "binance", "label": "sealed", "ttl": 3600},
        recipient_x25519=enc,
    )
    submitted = await call(service, submit_request(envelope))
    assert isinstance(submitted, p.SubmitReply), submitted
    confirmed = await call(
        service, p.Confirm(request_id=3, session_id=submitted.session_id, commit=True)
    )
    assert isinstance(confirmed, p.ConfirmReply)
    return submitted.session_id, confirmed


async def test_locked_until_unlocked(world: World) -> None:
    """Before Unlock only health answers: attestation and submits are 'unavailable'."""
    service, _ = world.service()
    health = await call(service, p.Health(request_id=1))
    assert isinstance(health, p.HealthReply) and health.status == "locked"
    reply = await call(service, p.Attest(request_id=2, nonce=b"n"))
    assert isinstance(reply, p.ErrorReply) and reply.code is p.ErrorCode.UNAVAILABLE
    unlocked = await call(service, world.unlock())
    assert isinstance(unlocked, p.UnlockReply) and unlocked.created
    health = await call(service, p.Health(request_id=1))
    assert health.status == "ok"


async def test_a_restarted_enclave_continues_every_session(world: World) -> None:
    """Same identity after restart; the session comes back with its trades, chain and log."""
    first, polling = world.service()
    identity = await call(first, world.unlock())
    enc, sig = await attested(first, world)
    owner = Ed25519PrivateKey.generate()
    session_id, confirmed = await open_owned_session(first, enc, owner)
    header = SealedHeader.parse(confirmed.sealed_state)
    assert header.session_hash == session_hash(session_id) and header.version == 1
    assert b"sealing-canary-secret" not in confirmed.sealed_state
    polling.trade_list.extend([FakeTrade("BTC/USDT", "1"), FakeTrade("BTC/USDT", "2")])
    report = await call(first, p.Aggregates(request_id=4, session_id=session_id))
    assert isinstance(report, p.AggregatesReply) and report.sealed_state is not None
    first_log = await call(first, p.Logs(request_id=5, session_id=session_id, start=0))

    # kill -9: a new process, new boot keys, the parent replays what it stored.
    second, polling2 = world.service()
    again = await call(
        second, world.unlock(wrapped=identity.wrapped_key, sealed=identity.sealed_keys)
    )
    assert isinstance(again, p.UnlockReply) and not again.created
    assert await attested(second, world) == (enc, sig)  # same attested keys
    restored = await call(
        second, p.Restore(request_id=6, sealed=(report.sealed_state,), revocations=None)
    )
    assert (restored.restored, restored.refused) == (1, 0)
    assert polling2.trade_list == []  # restored, not polled: no lease yet
    leased = await call(
        second, p.Lease(request_id=9, acquire=(session_hash(session_id),), release=())
    )
    assert isinstance(leased, p.LeaseReply) and leased.polling == 1
    assert [t.id for t in polling2.trade_list] == ["1", "2"]  # polling resumes from them
    polling2.trade_list.append(FakeTrade("ETH/USDT", "3", side="sell"))
    later = await call(second, p.Aggregates(request_id=7, session_id=session_id))
    assert isinstance(later, p.AggregatesReply), later
    verify_payload(sig, later.payload, later.signature)
    assert later.payload["seq"] == 2
    assert later.payload["prev_report_hash"] == report_hash(report.payload)
    assert later.payload["trades"] == 3
    tree = second.sessions.get_active(session_hash(session_id), now=datetime.now(UTC).timestamp())
    assert tree is not None
    verify_consistency(
        2,
        3,
        bytes.fromhex(report.payload["merkle_root"]),
        bytes.fromhex(later.payload["merkle_root"]),
        tree.commitments.tree.consistency_proof(2, 3),
    )
    second_log = await call(second, p.Logs(request_id=8, session_id=session_id, start=0))
    assert second_log.entries[: len(first_log.entries)] == first_log.entries


async def test_revoked_sessions_stay_revoked_after_a_restore(world: World) -> None:
    """An old backup of a revoked session is refused once the revocation list is replayed."""
    first, _ = world.service()
    identity = await call(first, world.unlock())
    enc, _ = await attested(first, world)
    owner = Ed25519PrivateKey.generate()
    session_id, confirmed = await open_owned_session(first, enc, owner)
    from shared.signing import sign_owner_proof

    proof = sign_owner_proof(
        owner, method="revoke", session_id=session_id, timestamp=int(datetime.now(UTC).timestamp())
    )
    revoked = await call(
        first,
        p.Revoke(
            request_id=9,
            session_id=session_id,
            proof_timestamp=proof.timestamp,
            proof_signature=proof.signature,
            log_start=0,
        ),
    )
    assert isinstance(revoked, p.RevokeReply) and revoked.revocations is not None
    second, _ = world.service()
    await call(second, world.unlock(wrapped=identity.wrapped_key, sealed=identity.sealed_keys))
    replay = await call(
        second,
        p.Restore(request_id=10, sealed=(confirmed.sealed_state,), revocations=revoked.revocations),
    )
    assert (replay.restored, replay.refused) == (0, 1)
    gone = await call(second, p.Summary(request_id=11, session_id=session_id))
    assert isinstance(gone, p.ErrorReply) and gone.code is p.ErrorCode.NOT_FOUND


async def test_edited_or_older_states_are_refused(world: World) -> None:
    """A flipped byte, a swapped header or an older version never replaces what is held."""
    first, polling = world.service()
    identity = await call(first, world.unlock())
    enc, _ = await attested(first, world)
    session_id, confirmed = await open_owned_session(first, enc, Ed25519PrivateKey.generate())
    polling.trade_list.append(FakeTrade("BTC/USDT", "1"))
    newer = await call(first, p.Aggregates(request_id=4, session_id=session_id))
    second, _ = world.service()
    await call(second, world.unlock(wrapped=identity.wrapped_key, sealed=identity.sealed_keys))
    flipped = bytearray(newer.sealed_state)
    flipped[-20] ^= 1
    other_header = bytearray(newer.sealed_state)
    other_header[10] ^= 1  # the session hash inside the authenticated header
    reply = await call(
        second,
        p.Restore(
            request_id=5, sealed=(bytes(flipped), bytes(other_header), b"junk"), revocations=None
        ),
    )
    assert (reply.restored, reply.refused) == (0, 3)
    reply = await call(
        second, p.Restore(request_id=6, sealed=(newer.sealed_state,), revocations=None)
    )
    assert reply.restored == 1
    reply = await call(
        second, p.Restore(request_id=7, sealed=(confirmed.sealed_state,), revocations=None)
    )
    assert (reply.restored, reply.refused) == (0, 1)  # version 1 < version 2 held


async def test_another_measurement_gets_no_key_and_serves_nothing(world: World) -> None:
    """KMS refuses a document with another PCR0: the enclave stays locked (no unsealed mode)."""
    first, _ = world.service()
    identity = await call(first, world.unlock())
    # Same root as the KMS trusts (same state dir), other code measured.
    other_nsm = NsmSimulator(world.state / "nsm", {**PCRS, 0: bytes(47) + b"\x07"})
    assert other_nsm.root_der == world.nsm.root_der
    impostor, _ = world.service(nsm=other_nsm)
    for request in (
        world.unlock(),
        world.unlock(wrapped=identity.wrapped_key, sealed=identity.sealed_keys),
    ):
        reply = await call(impostor, request)
        assert isinstance(reply, p.ErrorReply)
        assert reply.code is p.ErrorCode.FORBIDDEN, reply
    assert impostor.locked
    reply = await call(impostor, p.Restore(request_id=3, sealed=(), revocations=None))
    assert isinstance(reply, p.ErrorReply) and reply.code is p.ErrorCode.UNAVAILABLE


async def test_checkpoint_returns_changed_sessions_once(world: World) -> None:
    """Polling progress makes a session dirty; a checkpoint seals it, the next has nothing."""
    service, polling = world.service()
    await call(service, world.unlock())
    enc, _ = await attested(service, world)
    session_id, _confirmed = await open_owned_session(service, enc, Ed25519PrivateKey.generate())
    polling.trade_list.append(FakeTrade("BTC/USDT", "1"))
    # Confirmed moments ago and never reported: still withdrawable, so not checkpointed.
    early = await call(service, p.Checkpoint(request_id=1, max_sessions=10))
    assert early.states == ()
    await call(service, p.Aggregates(request_id=2, session_id=session_id))  # seals v2
    polling.trade_list.append(FakeTrade("BTC/USDT", "2"))
    first = await call(service, p.Checkpoint(request_id=3, max_sessions=10))
    assert isinstance(first, p.CheckpointReply) and len(first.states) == 1 and not first.more
    header = SealedHeader.parse(first.states[0])
    assert header.session_hash == session_hash(session_id) and header.version == 3
    second = await call(service, p.Checkpoint(request_id=4, max_sessions=10))
    assert second.states == ()


async def test_unlock_again_settles_on_one_identity(world: World) -> None:
    """Re-unlock: 'create' returns the identity in use; another identity is adopted only
    while no session exists (the parent that lost the race to store its own)."""
    winner, _ = world.service()
    stored = await call(winner, world.unlock())
    loser, _ = world.service()
    own = await call(loser, world.unlock())
    assert own.wrapped_key != stored.wrapped_key
    again = await call(loser, world.unlock())  # the parent never stored it
    assert again.created and again.wrapped_key == own.wrapped_key
    adopted = await call(loser, world.unlock(wrapped=stored.wrapped_key, sealed=stored.sealed_keys))
    assert isinstance(adopted, p.UnlockReply) and not adopted.created
    assert await attested(loser, world) == await attested(winner, world)
    enc, _ = await attested(loser, world)
    await open_owned_session(loser, enc, Ed25519PrivateKey.generate())
    other = await call(winner, world.unlock())
    assert other.wrapped_key == stored.wrapped_key
    refused = await call(loser, world.unlock(wrapped=own.wrapped_key, sealed=own.sealed_keys))
    assert isinstance(refused, p.ErrorReply) and refused.code is p.ErrorCode.BAD_REQUEST


async def test_a_restored_session_is_polled_only_under_a_lease_and_dropped_on_release(
    world: World,
) -> None:
    """Restore parks a session (served, sealed with its trades, not polled); Lease(acquire)
    starts polling it; Lease(release) stops polling and forgets it."""
    first, polling = world.service()
    identity = await call(first, world.unlock())
    enc, _ = await attested(first, world)
    session_id, _ = await open_owned_session(first, enc, Ed25519PrivateKey.generate())
    polling.trade_list.extend([FakeTrade("BTC/USDT", "1"), FakeTrade("BTC/USDT", "2")])
    report = await call(first, p.Aggregates(request_id=4, session_id=session_id))
    assert isinstance(report, p.AggregatesReply) and report.sealed_state is not None

    replica, polling2 = world.service()
    await call(replica, world.unlock(wrapped=identity.wrapped_key, sealed=identity.sealed_keys))
    await call(replica, p.Restore(request_id=5, sealed=(report.sealed_state,), revocations=None))
    digest = session_hash(session_id)
    assert polling2.trade_list == []
    # A state sealed while parked still carries every trade (nothing dropped).
    parked = await call(replica, p.Aggregates(request_id=6, session_id=session_id))
    assert isinstance(parked, p.AggregatesReply) and parked.payload["trades"] == 2
    assert parked.merkle_root == report.merkle_root
    third, _ = world.service()
    await call(third, world.unlock(wrapped=identity.wrapped_key, sealed=identity.sealed_keys))
    again = await call(
        third, p.Restore(request_id=7, sealed=(parked.sealed_state,), revocations=None)
    )
    assert again.restored == 1
    summary = await call(third, p.Summary(request_id=8, session_id=session_id))
    assert isinstance(summary, p.SummaryReply) and summary.summary["headline"]["trades"] == 2

    unknown = bytes(32)
    leased = await call(replica, p.Lease(request_id=9, acquire=(digest, unknown), release=()))
    assert isinstance(leased, p.LeaseReply) and leased.polling == 1
    released = await call(replica, p.Lease(request_id=10, acquire=(), release=(digest,)))
    assert isinstance(released, p.LeaseReply) and released.polling == 0
    gone = await call(replica, p.Summary(request_id=11, session_id=session_id))
    assert isinstance(gone, p.ErrorReply) and gone.code is p.ErrorCode.NOT_FOUND


async def test_close_wipes_the_data_key_seed_and_salt_keys(world: World) -> None:
    """Shutdown overwrites what Python can overwrite: data key, key seed, salt keys."""
    service, _ = world.service()
    await call(service, world.unlock())
    enc, _ = await attested(service, world)
    session_id, _confirmed = await open_owned_session(service, enc, Ed25519PrivateKey.generate())
    held = service.sessions.get_active(session_hash(session_id), now=datetime.now(UTC).timestamp())
    assert held is not None
    service.close()
    assert held.commitments.salt_key == bytes(32)
    assert bytes(service._keys.seed) == bytes(len(service._keys.seed))
    assert bytes(service._vault._key) == bytes(32)  # type: ignore[union-attr]
