"""The enclave supervisor: unlock, restore and checkpoint sealed state. Side: parent.

A small ``SealingEnclave`` fake stands in for an enclave with KMS sealing, behind a real
``RpcServer`` on the TCP simulator; the parent side is real: ``EnclaveClient``,
``EnclaveSupervisor`` and the ``Store`` on the test PostgreSQL. The fake starts locked,
records every Unlock / Restore / Checkpoint, and shares a ``FakeKms`` with other fakes
so two enclaves with the same measurements can open each other's identity.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from structlog.testing import capture_logs

from enclave.rpc_server import RpcServer
from parent.app import create_app
from parent.config import ParentConfig
from parent.db.errors import StoreUnavailable
from parent.db.store import LeaseHolder, SealedBlob, Store, StoredCredentials
from parent.enclave_client import EnclaveClient, EnclaveRefused, EnclaveUnavailable
from parent.enclave_supervisor import (
    EnclaveSupervisor,
    Phase,
    StaticCredentials,
    credentials_from_config,
)
from parent.leases import LeaseManager
from parent.metrics import ApiMetrics
from shared import protocol as p
from shared.encoding import b64encode
from shared.ids import new_session_id, session_hash
from shared.io.transport import TcpSimTransport, VsockAddress
from shared.sealed_state import REVOCATIONS_MAGIC, STATE_MAGIC, SealedHeader
from tests.support.postgres import PgDatabase, admin_query

ADDRESS = VsockAddress(cid=16, port=5000)
OTHER_ADDRESS = VsockAddress(cid=17, port=5000)
KEY_ID = "alias/perf-aggregator-test"
PCR0 = b"\x01" * 48
CONFIG_ENV = {
    "KMS_KEY_ID": KEY_ID,
    "AWS_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "AKIATESTSUPERVISOR",
    "AWS_SECRET_ACCESS_KEY": "test-secret-supervisor-0001",
}


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sealed(
    session: bytes,
    version: int,
    *,
    body: int = 64,
    magic: bytes = STATE_MAGIC,
    expires_at: datetime | None = None,
) -> bytes:
    """A blob framed as the enclave seals one (header, then random nonce, body and tag)."""
    expiry = expires_at or datetime.now(UTC) + timedelta(hours=1)
    header = SealedHeader(
        magic=magic,
        session_hash=session,
        version=version,
        expires_at=0 if magic == REVOCATIONS_MAGIC else int(expiry.timestamp()),
    )
    return header.encode() + os.urandom(12 + body + 16)


# --------------------------------------------------------------------------- fakes


@dataclass
class FakeKms:
    """The KMS both fakes talk to: issues data keys, releases them to PCR0s it accepts."""

    accepted_pcr0: set[bytes] = field(default_factory=lambda: {PCR0})
    issued: dict[bytes, bytes] = field(default_factory=dict)  # wrapped key -> sealed keys


@dataclass
class SealingEnclave:
    """An enclave with KMS sealing, as the supervisor sees it. Starts locked."""

    kms: FakeKms
    pcr0: bytes = PCR0
    address: VsockAddress = ADDRESS
    locked: bool = True
    wrapped_key: bytes | None = None
    sessions: dict[bytes, int] = field(default_factory=dict)  # session hash -> version
    polling: set[bytes] = field(default_factory=set)  # sessions a Lease acquired
    revocation_lists: int = 0  # revocation lists received
    checkpoint_replies: list[tuple[tuple[bytes, ...], bool]] = field(default_factory=list)
    calls: list[p.Request] = field(default_factory=list)
    unlock_gate: asyncio.Event | None = None  # set: creations proceed (race test)
    restore_gate: asyncio.Event | None = None  # set: restores proceed
    refuse_revocations: bool = False
    server: RpcServer | None = None

    async def start(self, transport: TcpSimTransport) -> None:
        self.server = RpcServer(self.handle)
        await self.server.start(transport, self.address)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.close()
            self.server = None

    def restart(self) -> None:
        """kill -9 and start again: memory is gone, the enclave is locked."""
        self.locked, self.wrapped_key = True, None
        self.sessions = {}
        self.polling = set()

    def calls_of(self, kind: type[p.Request]) -> list[Any]:
        return [call for call in self.calls if isinstance(call, kind)]

    @staticmethod
    def _error(request: p.Request, code: p.ErrorCode, message: str) -> p.ErrorReply:
        return p.ErrorReply(request_id=request.request_id, code=code, message=message)

    async def handle(self, request: p.Request) -> p.Reply:
        self.calls.append(request)
        rid = request.request_id
        if isinstance(request, p.Health):
            return p.HealthReply(
                request_id=rid,
                status="locked" if self.locked else "ok",
                sessions=len(self.sessions),
                uptime_seconds=1,
                pcr0=self.pcr0.hex(),
            )
        if isinstance(request, p.Unlock):
            return await self._unlock(request)
        if self.locked:
            return self._error(request, p.ErrorCode.UNAVAILABLE, "the enclave is locked")
        if isinstance(request, p.Restore):
            if self.restore_gate is not None:
                await self.restore_gate.wait()
            if request.revocations is not None:
                if self.refuse_revocations:
                    return self._error(request, p.ErrorCode.UNDECRYPTABLE, "list does not open")
                self.revocation_lists += 1
            restored = refused = 0
            for blob in request.sealed:
                header = SealedHeader.parse(blob)
                if header.version <= self.sessions.get(header.session_hash, -1):
                    refused += 1
                    continue
                self.sessions[header.session_hash] = header.version
                restored += 1
            return p.RestoreReply(request_id=rid, restored=restored, refused=refused)
        if isinstance(request, p.Lease):
            self.polling |= set(request.acquire)
            self.polling -= set(request.release)
            for digest in request.release:
                self.sessions.pop(digest, None)
            return p.LeaseReply(request_id=rid, polling=len(self.polling))
        if isinstance(request, p.Checkpoint):
            if not self.checkpoint_replies:
                return p.CheckpointReply(request_id=rid, states=(), more=False)
            states, more = self.checkpoint_replies.pop(0)
            return p.CheckpointReply(request_id=rid, states=states, more=more)
        return self._error(request, p.ErrorCode.UNSUPPORTED, "not in the fake")

    async def _unlock(self, request: p.Unlock) -> p.Reply:
        if (
            request.key_id != KEY_ID
            or request.aws_secret_access_key != "test-secret-supervisor-0001"
        ):
            return self._error(request, p.ErrorCode.BAD_REQUEST, "wrong key or credentials")
        if self.pcr0 not in self.kms.accepted_pcr0:
            return self._error(request, p.ErrorCode.FORBIDDEN, "KMS refused the attestation")
        if request.wrapped_key is None:
            if not self.locked:
                return self._error(request, p.ErrorCode.BAD_REQUEST, "already unlocked")
            if self.unlock_gate is not None:
                await self.unlock_gate.wait()
            wrapped, sealed_keys = os.urandom(184), os.urandom(224)
            self.kms.issued[wrapped] = sealed_keys
            self.locked, self.wrapped_key = False, wrapped
            return p.UnlockReply(
                request_id=request.request_id,
                created=True,
                wrapped_key=wrapped,
                sealed_keys=sealed_keys,
            )
        if self.kms.issued.get(request.wrapped_key) != request.sealed_keys:
            return self._error(request, p.ErrorCode.UNDECRYPTABLE, "identity does not open")
        # Adopting the stored identity: after a restart, after a parent restart
        # (idempotent), or after losing the creation race to another replica.
        self.locked, self.wrapped_key = False, request.wrapped_key
        return p.UnlockReply(
            request_id=request.request_id,
            created=False,
            wrapped_key=request.wrapped_key,
            sealed_keys=request.sealed_keys,
        )


# --------------------------------------------------------------------------- harness


async def eventually(check: Callable[[], bool]) -> None:
    """Wait until ``check()`` holds (the supervisor runs on its own task); 10 s at most."""
    deadline = asyncio.get_running_loop().time() + 10.0
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def new_session(store: Store, *, expires_at: datetime | None = None) -> bytes:
    """A stored session (as submit_key leaves it); its hash."""
    digest = session_hash(new_session_id())
    await store.create_session(
        session_hash=digest,
        exchange="binance",
        label="main",
        expires_at=expires_at or datetime.now(UTC) + timedelta(hours=1),
        envelope_digest=os.urandom(32),
        owner_pub=None,
        credentials=StoredCredentials(
            alg="x25519-hkdf-sha256-aes256gcm",
            ephemeral_pub=b64encode(os.urandom(32)),
            nonce=b64encode(os.urandom(12)),
            ciphertext=b64encode(os.urandom(64)),
            tag=b64encode(os.urandom(16)),
            metadata={"exchange": "binance", "label": "main", "ttl": 3600},
        ),
        request_id=f"req-{secrets.token_hex(4)}",
    )
    return digest


@dataclass
class Parent:
    """One parent's supervisor with its enclave client and metrics."""

    supervisor: EnclaveSupervisor
    client: EnclaveClient
    metrics: ApiMetrics

    def metric(self, name: str, labels: str = "") -> float:
        """One sample of the parent's metrics text (0 when absent)."""
        for line in self.metrics.render().decode().splitlines():
            if line.startswith(f"{name}{labels} "):
                return float(line.split()[-1])
        return 0.0


MakeParent = Callable[..., Awaitable[Parent]]


@pytest.fixture
def transport() -> TcpSimTransport:
    """The simulated vsock both fakes listen on."""
    return TcpSimTransport({ADDRESS: free_port(), OTHER_ADDRESS: free_port()})


@pytest.fixture
async def enclave(transport: TcpSimTransport) -> AsyncIterator[SealingEnclave]:
    """A locked sealing enclave on ADDRESS."""
    fake = SealingEnclave(kms=FakeKms())
    await fake.start(transport)
    yield fake
    await fake.stop()


@pytest.fixture
async def make_parent(transport: TcpSimTransport, store: Store) -> AsyncIterator[MakeParent]:
    """Factory: a running supervisor for an enclave address (fast polling, short backoff)."""
    parents: list[Parent] = []

    async def start(
        address: VsockAddress = ADDRESS, *, use_store: Store | None = None, **options: Any
    ) -> Parent:
        client = EnclaveClient(transport, address, call_timeout=5.0, max_backoff=0.05)
        await client.start()
        metrics = ApiMetrics()
        settings: dict[str, Any] = {
            "checkpoint_interval": 3600.0,
            "poll_interval": 0.02,
            "max_backoff": 0.1,
        } | options
        supervisor = EnclaveSupervisor(
            client,
            use_store or store,
            key_id=KEY_ID,
            region="us-east-1",
            credentials=credentials_from_config(ParentConfig.from_env(CONFIG_ENV)),
            metrics=metrics,
            **settings,
        )
        await supervisor.start()
        parent = Parent(supervisor=supervisor, client=client, metrics=metrics)
        parents.append(parent)
        return parent

    yield start
    for parent in parents:
        await parent.supervisor.close()
        await parent.client.close()


# --------------------------------------------------------------------------- unlock


async def test_first_boot_creates_the_identity_and_a_restart_restores_everything(
    enclave: SealingEnclave, make_parent: MakeParent, store: Store, pg_db: PgDatabase
) -> None:
    """Boot 1 creates and stores the identity once; boot 2 unlocks with it and replays all."""
    assert isinstance(credentials_from_config(ParentConfig.from_env(CONFIG_ENV)), StaticCredentials)
    parent = await make_parent(restore_batch_bytes=1000)
    await eventually(lambda: parent.supervisor.ready)
    [created] = enclave.calls_of(p.Unlock)
    assert created.wrapped_key is None and created.sealed_keys is None
    identity = await store.get_enclave_identity()
    assert identity is not None and identity.key_id == KEY_ID
    assert identity.wrapped_key == enclave.wrapped_key
    assert enclave.calls_of(p.Restore) == []  # nothing stored yet: nothing to replay

    # Sessions come and go while it runs; their states and the revocation list are stored.
    sizes = [40, 300, 700, 120, 890, 10, 500, 60]
    hashes = [await new_session(store) for _ in sizes]
    for n, (digest, size) in enumerate(zip(hashes, sizes, strict=True)):
        await store.store_sealed_state(SealedBlob.parse(sealed(digest, n + 1, body=size)))
    gone = datetime.now(UTC) - timedelta(minutes=1)
    expired = await new_session(store, expires_at=gone)
    await store.store_sealed_state(SealedBlob.parse(sealed(expired, 1, expires_at=gone)))
    await store.store_revocations(
        SealedBlob.parse(sealed(bytes(32), 3, magic=REVOCATIONS_MAGIC), magic=REVOCATIONS_MAGIC)
    )

    enclave.restart()
    await eventually(lambda: len(enclave.calls_of(p.Unlock)) == 2)
    await eventually(lambda: parent.supervisor.ready)

    unlocks = enclave.calls_of(p.Unlock)
    assert len(unlocks) == 2
    assert (unlocks[1].wrapped_key, unlocks[1].sealed_keys) == (
        identity.wrapped_key,
        identity.sealed_keys,
    )
    assert unlocks[1].aws_access_key_id == "AKIATESTSUPERVISOR"
    assert admin_query(pg_db, "SELECT count(*) FROM enclave_identity") == [(1,)]
    restores = enclave.calls_of(p.Restore)
    # The revocation list goes first, on its own, so every state is checked against it.
    assert restores[0].sealed == () and restores[0].revocations is not None
    assert all(r.revocations is None for r in restores[1:])
    replayed = [blob for r in restores[1:] for blob in r.sealed]
    assert sorted(SealedHeader.parse(b).session_hash for b in replayed) == sorted(hashes)
    assert len(restores) > 2  # several batches
    for r in restores[1:]:
        assert sum(len(blob) for blob in r.sealed) < 1000 or len(r.sealed) == 1
    assert enclave.sessions == {digest: n + 1 for n, digest in enumerate(hashes)}
    assert enclave.revocation_lists == 1
    assert parent.metric("enclave_recovery_seconds_count") == 2
    assert parent.metric("enclave_restored_sessions_total", '{outcome="restored"}') == len(hashes)
    assert parent.metric("enclave_ready") == 1


async def test_a_restarted_parent_unlocks_idempotently_and_replays(
    enclave: SealingEnclave, make_parent: MakeParent, store: Store
) -> None:
    """A parent that starts beside an unlocked enclave re-sends the stored identity and replays."""
    first = await make_parent()
    await eventually(lambda: first.supervisor.ready)
    digest = await new_session(store)
    await store.store_sealed_state(SealedBlob.parse(sealed(digest, 4)))
    await first.supervisor.close()

    second = await make_parent()
    await eventually(lambda: second.supervisor.ready)
    assert not enclave.locked
    unlocks = enclave.calls_of(p.Unlock)
    assert len(unlocks) == 2 and unlocks[1].wrapped_key == enclave.wrapped_key
    assert enclave.sessions == {digest: 4}


async def test_forbidden_unlock_keeps_the_api_at_503_and_retries(
    enclave: SealingEnclave, make_parent: MakeParent, store: Store
) -> None:
    """KMS refusing the attestation (another PCR0): /readyz and session calls 503, retried."""
    enclave.kms.accepted_pcr0 = {b"\x02" * 48}
    with capture_logs() as logs:
        parent = await make_parent()
        app = create_app(
            ParentConfig.from_env(CONFIG_ENV),
            store=store,
            enclave=parent.supervisor.gate(parent.client),
            metrics=parent.metrics,
            readiness=parent.supervisor,
            run_purge=False,
        )
        async with TestClient(TestServer(app)) as http:
            await eventually(lambda: len(enclave.calls_of(p.Unlock)) >= 3)
            response = await http.get("/readyz")
            assert response.status == 503
            body = await response.json()
            assert body["error"]["message"] == "not ready: enclave locked"
            response = await http.post(
                "/enclave/request_aggregates", json={"session_id": new_session_id()}
            )
            assert response.status == 503
            assert (await response.json())["error"]["code"] == "unavailable"

            assert not parent.supervisor.ready
            assert await store.get_enclave_identity() is None  # never runs unsealed
            failures = [e for e in logs if e["event"] == "enclave_recovery_failed"]
            assert failures and failures[0]["reason"] == "unlock_forbidden"
            assert "PCR0" in failures[0]["detail"] and failures[0]["log_level"] == "error"
            assert all("test-secret" not in repr(e) for e in logs)
            assert (
                parent.metric("enclave_recovery_failures_total", '{reason="unlock_forbidden"}') >= 2
            )

            # The right image runs (the key policy names it): the next retry succeeds.
            enclave.kms.accepted_pcr0 = {PCR0}
            await eventually(lambda: parent.supervisor.ready)
            assert (await http.get("/readyz")).status == 200


async def test_session_calls_wait_for_the_restore(
    enclave: SealingEnclave, make_parent: MakeParent, store: Store
) -> None:
    """Unlocked but not restored: the gate answers 503 and /readyz says restoring."""
    digest = await new_session(store)
    await store.store_sealed_state(SealedBlob.parse(sealed(digest, 1)))
    enclave.restore_gate = asyncio.Event()
    parent = await make_parent()
    gate = parent.supervisor.gate(parent.client)
    await eventually(lambda: parent.supervisor.phase is Phase.RESTORING)
    with pytest.raises(EnclaveUnavailable):
        await gate.call(p.Summary(request_id=0, session_id=new_session_id()), p.SummaryReply)
    health = await gate.call(p.Health(request_id=0), p.HealthReply)
    assert health.status == "ok"  # health passes the gate
    assert parent.supervisor.state == "restoring" and not parent.supervisor.serving
    enclave.restore_gate.set()
    await eventually(lambda: parent.supervisor.ready)
    # Through the gate now: the enclave itself answers (this fake refuses summaries).
    with pytest.raises(EnclaveRefused) as refused:
        await gate.call(p.Summary(request_id=0, session_id=new_session_id()), p.SummaryReply)
    assert refused.value.code is p.ErrorCode.UNSUPPORTED


async def test_two_parents_racing_store_one_identity(
    transport: TcpSimTransport, make_parent: MakeParent, store: Store, pg_db: PgDatabase
) -> None:
    """Two enclaves create identities at once: one is stored, the loser adopts the winner's."""
    kms = FakeKms()
    both_asked = asyncio.Event()
    enclaves = [
        SealingEnclave(kms=kms, address=ADDRESS, unlock_gate=both_asked),
        SealingEnclave(kms=kms, address=OTHER_ADDRESS, unlock_gate=both_asked),
    ]
    other_store = await Store.open(pg_db.app_conninfo, min_size=1, max_size=2)
    try:
        for fake in enclaves:
            await fake.start(transport)
        parents = [
            await make_parent(ADDRESS),
            await make_parent(OTHER_ADDRESS, use_store=other_store),
        ]
        # Both creations are under way before either parent can store its identity.
        await eventually(lambda: all(f.calls_of(p.Unlock) for f in enclaves))
        both_asked.set()
        await eventually(lambda: all(parent.supervisor.ready for parent in parents))

        identity = await store.get_enclave_identity()
        assert identity is not None
        assert admin_query(pg_db, "SELECT count(*) FROM enclave_identity") == [(1,)]
        assert [fake.wrapped_key for fake in enclaves] == [identity.wrapped_key] * 2
        unlocks = sorted((f.calls_of(p.Unlock) for f in enclaves), key=len)
        assert [call.wrapped_key for call in unlocks[0]] == [None]  # the winner
        assert [call.wrapped_key for call in unlocks[1]] == [None, identity.wrapped_key]
    finally:
        await other_store.close()
        for fake in enclaves:
            await fake.stop()


async def test_an_identity_under_another_key_is_not_used(
    enclave: SealingEnclave, make_parent: MakeParent, store: Store
) -> None:
    """A stored identity made under another KMS key: no unlock, not ready, reason logged."""
    await store.insert_enclave_identity(
        key_id="alias/another-key", wrapped_key=os.urandom(64), sealed_keys=os.urandom(224)
    )
    parent = await make_parent()
    await eventually(
        lambda: (
            parent.metric("enclave_recovery_failures_total", '{reason="identity_key_mismatch"}')
            >= 2
        )
    )
    assert enclave.calls_of(p.Unlock) == [] and not parent.supervisor.ready


async def test_a_revocation_list_that_does_not_open_stops_the_restore(
    enclave: SealingEnclave, make_parent: MakeParent, store: Store
) -> None:
    """Without its revocation list no session is replayed (a revoked one could come back)."""
    digest = await new_session(store)
    await store.store_sealed_state(SealedBlob.parse(sealed(digest, 1)))
    await store.store_revocations(
        SealedBlob.parse(sealed(bytes(32), 1, magic=REVOCATIONS_MAGIC), magic=REVOCATIONS_MAGIC)
    )
    enclave.refuse_revocations = True
    parent = await make_parent()
    await eventually(lambda: len(enclave.calls_of(p.Restore)) >= 3)
    assert all(call.sealed == () for call in enclave.calls_of(p.Restore))
    assert enclave.sessions == {} and not parent.supervisor.ready
    assert parent.supervisor.phase is Phase.RESTORING
    enclave.refuse_revocations = False
    await eventually(lambda: parent.supervisor.ready)
    assert enclave.sessions == {digest: 1}


# --------------------------------------------------------------------------- checkpoints


async def test_checkpoints_keep_the_newest_state_of_each_session(
    enclave: SealingEnclave, make_parent: MakeParent, store: Store
) -> None:
    """Checkpoint states are stored; an older version never overwrites a newer one."""
    first, second = await new_session(store), await new_session(store)
    await store.store_sealed_state(SealedBlob.parse(sealed(second, 7)))  # with a report
    unknown = session_hash(new_session_id())  # revoked since it was sealed
    enclave.checkpoint_replies = [
        ((sealed(first, 2), sealed(first, 5), sealed(second, 6)), True),
        ((sealed(unknown, 1), sealed(first, 4), sealed(second, 3, magic=REVOCATIONS_MAGIC)), False),
    ]
    with capture_logs() as logs:
        parent = await make_parent(checkpoint_interval=0.05)
        await eventually(lambda: not enclave.checkpoint_replies)
        await eventually(
            lambda: parent.metric("sealed_states_stored_total", '{source="checkpoint"}') >= 1
        )
    stored_first = await store.get_sealed_state(first)
    stored_second = await store.get_sealed_state(second)
    assert stored_first is not None and stored_first.version == 5
    assert stored_second is not None and stored_second.version == 7
    assert await store.get_sealed_state(unknown) is None
    assert parent.metric("sealed_states_refused_total", '{source="checkpoint"}') == 1
    assert any(e["event"] == "sealed_state_refused" for e in logs)


class StatesStoreDown(Store):
    """The real store whose checkpoint writes fail while ``down`` is set."""

    down = True

    async def store_sealed_states(self, states: Any) -> int:
        if self.down:
            raise StoreUnavailable("database unavailable (test)")
        return await super().store_sealed_states(states)


async def test_checkpoint_states_wait_for_the_database(
    enclave: SealingEnclave, make_parent: MakeParent, pg_db: PgDatabase, store: Store
) -> None:
    """States that could not be stored are written first next time; nothing more is asked."""
    digest = await new_session(store)
    flaky = await StatesStoreDown.open(pg_db.app_conninfo, min_size=1, max_size=2)
    try:
        enclave.checkpoint_replies = [((sealed(digest, 3),), False)]
        parent = await make_parent(use_store=flaky, checkpoint_interval=0.05)
        await eventually(lambda: len(enclave.calls_of(p.Checkpoint)) == 1)
        await asyncio.sleep(0.3)  # several checkpoint rounds while the database is down
        assert len(enclave.calls_of(p.Checkpoint)) == 1
        assert await store.get_sealed_state(digest) is None
        flaky.down = False
        await eventually(lambda: len(enclave.calls_of(p.Checkpoint)) > 1)
        stored = await store.get_sealed_state(digest)
        assert stored is not None and stored.version == 3
        assert parent.supervisor.ready
    finally:
        await flaky.close()


async def test_with_leases_only_the_held_sessions_are_restored_and_polled(
    enclave: SealingEnclave, transport: TcpSimTransport, pg_db: PgDatabase
) -> None:
    """Replicas: at unlock a parent restores the sessions whose lease it holds, then tells
    the enclave to poll them; another replica's sessions are left to it."""
    mine = await Store.open(
        pg_db.app_conninfo,
        min_size=1,
        max_size=4,
        holder=LeaseHolder(replica_id="r1", url="https://r1.internal", lease_seconds=30),
    )
    theirs = await Store.open(
        pg_db.app_conninfo,
        min_size=1,
        max_size=4,
        holder=LeaseHolder(replica_id="r2", url="https://r2.internal", lease_seconds=30),
    )
    client = EnclaveClient(transport, ADDRESS, call_timeout=5.0, max_backoff=0.05)
    await client.start()
    supervisor: EnclaveSupervisor | None = None
    leases = LeaseManager(
        client,
        mine,
        ready=lambda: supervisor is not None and supervisor.ready,
        lease_seconds=30,
    )
    supervisor = EnclaveSupervisor(
        client,
        mine,
        key_id=KEY_ID,
        region="us-east-1",
        credentials=credentials_from_config(ParentConfig.from_env(CONFIG_ENV)),
        metrics=ApiMetrics(),
        checkpoint_interval=3600.0,
        poll_interval=0.02,
        max_backoff=0.1,
        leases=leases,
    )
    try:
        held = [await new_session(mine) for _ in range(2)]
        other = await new_session(theirs)
        for n, digest in enumerate(held):
            await mine.store_sealed_state(SealedBlob.parse(sealed(digest, n + 1)))
        await theirs.store_sealed_state(SealedBlob.parse(sealed(other, 1)))
        await supervisor.start()
        await eventually(lambda: supervisor is not None and supervisor.ready)
        assert enclave.sessions == {held[0]: 1, held[1]: 2}
        assert enclave.polling == set(held)
        assert leases.holds(held[0]) and leases.holds(held[1]) and not leases.holds(other)
        await leases.tick()  # r2's lease is valid: never taken
        assert enclave.polling == set(held)
    finally:
        await supervisor.close()
        await leases.close(release=False)
        await client.close()
        await mine.close()
        await theirs.close()
