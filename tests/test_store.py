"""The PostgreSQL store keeps only ciphertext and public data, atomically. Side: parent."""

from __future__ import annotations

import os
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

import parent.db
from parent.db import (
    AggregateRow,
    Conflict,
    EnclaveIdentity,
    InvalidData,
    LogBatch,
    RecordMeta,
    ReplayedEnvelope,
    SealedBlob,
    SessionNotFound,
    Store,
    StoredCredentials,
    StoreUnavailable,
    hash_session_id,
)
from parent.db.embedded import EmbeddedPostgres
from shared.encoding import b64encode, canonical_json
from shared.sealed_state import (
    REVOCATIONS_MAGIC,
    STATE_MAGIC,
    SealedHeader,
    SealedStateError,
)
from shared.translog import encode_entry
from tests.support.leakscan import LeakScanner
from tests.support.postgres import PgDatabase, admin_query, pg_dump, row_counts

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
HOUR = timedelta(hours=1)


def b64(size: int) -> str:
    return b64encode(os.urandom(size))


def envelope(**changes: Any) -> StoredCredentials:
    """A well-formed x25519-hkdf-sha256-aes256gcm envelope with random bytes."""
    fields: dict[str, Any] = {
        "alg": "x25519-hkdf-sha256-aes256gcm",
        "ephemeral_pub": b64(32),
        "nonce": b64(12),
        "ciphertext": b64(120),
        "tag": b64(16),
        "metadata": {"exchange": "binance", "label": "main", "ttl": 3600},
    }
    fields.update(changes)
    return StoredCredentials(**fields)


async def new_session(
    store: Store,
    *,
    session_id: str | None = None,
    expires_at: datetime = NOW + HOUR,
    envelope_digest: bytes | None = None,
    credentials: StoredCredentials | None = None,
    exchange: str = "binance",
    label: str = "main",
) -> bytes:
    """Create a session; return its hash."""
    session_hash = hash_session_id(session_id or secrets.token_urlsafe(32))
    await store.create_session(
        session_hash=session_hash,
        exchange=exchange,
        label=label,
        expires_at=expires_at,
        envelope_digest=envelope_digest or os.urandom(32),
        owner_pub=b64(32),
        credentials=credentials or envelope(),
        request_id=f"req-{secrets.token_hex(4)}",
    )
    return session_hash


def session_row_counts(db: PgDatabase, session_hash: bytes) -> dict[str, int]:
    """Rows per child table that belong to the session with that hash (via its id)."""
    counts: dict[str, int] = {}
    with psycopg.connect(db.admin_conninfo) as conn:
        ids = [
            row[0]
            for row in conn.execute(
                "SELECT id FROM sessions WHERE session_hash = %s", (session_hash,)
            )
        ]
        counts["sessions"] = len(ids)
        for table in ("credentials", "aggregates", "ops_logs", "records"):
            row = conn.execute(
                sql.SQL("SELECT count(*) FROM {} WHERE session_id = ANY(%s)").format(
                    sql.Identifier(table)
                ),
                (ids,),
            ).fetchone()
            counts[table] = int(row[0]) if row else 0
    return counts


async def fill_session(store: Store, db: PgDatabase, session_hash: bytes) -> None:
    """Give a session a row in every child table."""
    await store.store_aggregate(session_hash, seq=0, payload={"pnl": "1.5"}, signature=b64(64))
    await store.append_op(session_hash, op="poll", request_id="r-1", details={"calls": 3})
    await store.insert_record(session_hash, record_id=uuid.uuid4(), label="notes", sealed=b64(200))
    await store.append_log(session_hash, log_batch(0, 2))


def log_batch(start: int, count: int) -> LogBatch:
    """Transparency entries start..start+count-1 and a (shape-only) head over them."""
    entries = tuple(
        encode_entry(i, "poll", at=1_700_000_000, data={"trades": i}).decode()
        for i in range(start, start + count)
    )
    return LogBatch(
        start=start,
        entries=entries,
        ops=("poll",) * count,
        head={"payload": {"tree_size": start + count}, "signature": b64(64)},
        tree_size=start + count,
        root_hash=os.urandom(32),
    )


def transparency_rows(db: PgDatabase, session_hash: bytes) -> tuple[int, int]:
    """(entries, heads) stored for that session's transparency log."""
    entries = admin_query(
        db, "SELECT count(*) FROM ops_logs WHERE session_hash = %s", (session_hash,)
    )
    heads = admin_query(
        db, "SELECT count(*) FROM merkle_logs WHERE session_hash = %s", (session_hash,)
    )
    return int(entries[0][0]), int(heads[0][0])


def test_public_api_is_exactly_all() -> None:
    """parent.db exports exactly its documented public names."""
    public = {name for name in dir(parent.db) if not name.startswith("_")}
    submodules = {"errors", "store", "migrate", "embedded", "annotations"}
    assert set(parent.db.__all__) == public - submodules


# -- sessions -------------------------------------------------------------------------


async def test_create_and_get_session(store: Store, pg_db: PgDatabase) -> None:
    """A created session reads back with its public fields, envelope and a submit ops entry."""
    credentials = envelope()
    owner_pub = b64(32)
    session_hash = hash_session_id("a-session-id-of-enough-entropy")
    await store.create_session(
        session_hash=session_hash,
        exchange="kraken",
        label="main account",
        expires_at=NOW + HOUR,
        envelope_digest=os.urandom(32),
        owner_pub=owner_pub,
        credentials=credentials,
        request_id="req-create-1",
    )
    row = await store.get_session(session_hash, now=NOW)
    assert row is not None
    assert (row.session_hash, row.exchange, row.label, row.status, row.owner_pub) == (
        session_hash,
        "kraken",
        "main account",
        "active",
        owner_pub,
    )
    assert row.expires_at == NOW + HOUR
    [live] = await store.list_live_credentials(now=NOW)
    assert live.credentials == credentials
    assert live.session_hash == session_hash
    ops = admin_query(pg_db, "SELECT op, request_id, details FROM ops_logs")
    assert ops == [("submit", "req-create-1", {"exchange": "kraken"})]


async def test_get_session_none_when_missing_or_expired(store: Store) -> None:
    """Unknown hashes and sessions past their expiry read as None."""
    session_hash = await new_session(store, expires_at=NOW + HOUR)
    assert await store.get_session(hash_session_id("never-created-id"), now=NOW) is None
    assert await store.get_session(session_hash, now=NOW + HOUR) is None
    assert await store.get_session(session_hash, now=NOW + HOUR - timedelta(seconds=1))


async def test_replayed_envelope_is_refused_and_nothing_half_stored(
    store: Store, pg_db: PgDatabase
) -> None:
    """A second session with the same envelope digest raises ReplayedEnvelope and stores nothing."""
    digest = os.urandom(32)
    await new_session(store, envelope_digest=digest)
    before = row_counts(pg_db.admin_conninfo)
    replay_hash = hash_session_id(secrets.token_urlsafe(32))
    with pytest.raises(ReplayedEnvelope) as caught:
        await store.create_session(
            session_hash=replay_hash,
            exchange="binance",
            label="main",
            expires_at=NOW + HOUR,
            envelope_digest=digest,
            owner_pub=None,
            credentials=envelope(),
            request_id="req-replay",
        )
    assert isinstance(caught.value, Conflict)
    assert caught.value.__context__ is None
    assert digest.hex() not in str(caught.value)
    assert row_counts(pg_db.admin_conninfo) == before
    assert await store.get_session(replay_hash, now=NOW) is None


BAD_BASE64 = [
    pytest.param("not base64!", id="bad-characters"),
    pytest.param("QUJD\nREVG", id="newline"),
    pytest.param("QUI", id="missing-padding"),
    pytest.param("QUJ=", id="nonzero-trailing-bits"),
    pytest.param("QUJDRA", id="unpadded"),
    pytest.param("", id="empty"),
    pytest.param("A" * 30_000, id="oversized"),
]
# HPKE algs carry an empty nonce (RFC 9180 derives it), so "" is valid there only.
BAD_FIELD_VALUES = [
    pytest.param(field, bad.values[0], id=f"{field}-{bad.id}")
    for field in ("ephemeral_pub", "nonce", "ciphertext", "tag")
    for bad in BAD_BASE64
    if not (field == "nonce" and bad.values[0] == "")
]


@pytest.mark.parametrize(("field", "bad"), BAD_FIELD_VALUES)
async def test_invalid_base64_is_refused_and_nothing_stored(
    store: Store, pg_db: PgDatabase, field: str, bad: str
) -> None:
    """A non-canonical or oversized base64 field raises InvalidData and no table changes."""
    await new_session(store)
    before = row_counts(pg_db.admin_conninfo)
    session_id = secrets.token_urlsafe(32)
    with pytest.raises(InvalidData) as caught:
        await new_session(store, session_id=session_id, credentials=envelope(**{field: bad}))
    # No chained psycopg error: its DETAIL would carry the refused row into tracebacks.
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None
    assert f"credentials_{field}_base64" in str(caught.value)
    assert row_counts(pg_db.admin_conninfo) == before
    assert await store.get_session(hash_session_id(session_id), now=NOW) is None


async def test_hpke_envelope_with_empty_nonce_is_stored(store: Store) -> None:
    """An HPKE envelope (empty nonce, issued_at in metadata) is accepted as ciphertext."""
    session_id = secrets.token_urlsafe(32)
    credentials = envelope(
        alg="hpke-x25519-sha256-aes256gcm",
        nonce="",
        metadata={"exchange": "binance", "label": "main", "ttl": 3600, "issued_at": 1},
    )
    await new_session(store, session_id=session_id, credentials=credentials)
    assert await store.get_session(hash_session_id(session_id), now=NOW) is not None


@pytest.mark.parametrize(
    ("changes", "constraint"),
    [
        pytest.param({"exchange": "Binance Pro"}, "sessions_exchange_format", id="exchange"),
        pytest.param({"label": "x" * 65}, "sessions_label_format", id="long-label"),
        pytest.param({"label": "a\nb"}, "sessions_label_format", id="control-in-label"),
        pytest.param(
            {"credentials": envelope(metadata={"exchange": "binance", "apiKey": "LEAKME-1234"})},
            "credentials_metadata_shape",
            id="secret-in-metadata",
        ),
        pytest.param(
            {"credentials": envelope(alg="X25519 HKDF")}, "credentials_alg_format", id="alg"
        ),
    ],
)
async def test_invalid_values_refused_without_echoing_them(
    store: Store, pg_db: PgDatabase, changes: dict[str, Any], constraint: str
) -> None:
    """Constraint failures name the constraint, never the refused value, and store nothing."""
    with pytest.raises(InvalidData) as caught:
        await new_session(store, **changes)
    message = str(caught.value)
    assert constraint in message
    for value in ("Binance Pro", "xxxxxxxx", "LEAKME", "X25519 HKDF"):
        assert value not in message
    assert row_counts(pg_db.admin_conninfo)["sessions"] == 0


async def test_session_hash_and_digest_must_be_sha256(store: Store) -> None:
    """A session hash or envelope digest that is not 32 bytes is refused."""
    with pytest.raises(InvalidData, match="sessions_session_hash_sha256"):
        await store.create_session(
            session_hash=b"clear-session-id-not-a-hash",
            exchange="binance",
            label="",
            expires_at=NOW + HOUR,
            envelope_digest=os.urandom(32),
            owner_pub=None,
            credentials=envelope(),
            request_id="r",
        )
    with pytest.raises(InvalidData, match="sessions_envelope_digest_sha256"):
        await new_session(store, envelope_digest=b"\x01" * 31)


async def test_naive_datetimes_are_refused(store: Store) -> None:
    """Times without a timezone are refused rather than read in the server's zone."""
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.get_session(os.urandom(32), now=datetime(2030, 1, 1))


# -- revoke and purge -----------------------------------------------------------------


async def test_revoke_removes_every_row_of_that_session_only(
    store: Store, pg_db: PgDatabase
) -> None:
    """Revoke deletes the session's rows in every table and leaves another session intact."""
    revoked = await new_session(store)
    kept = await new_session(store)
    await fill_session(store, pg_db, revoked)
    await fill_session(store, pg_db, kept)
    kept_before = session_row_counts(pg_db, kept)
    assert all(count > 0 for count in session_row_counts(pg_db, revoked).values())

    final = log_batch(2, 1)
    assert await store.revoke_session(revoked, request_id="req-revoke", log=final) is True

    assert set(session_row_counts(pg_db, revoked).values()) == {0}
    # The transparency log outlives the session, with the final batch written alongside.
    assert transparency_rows(pg_db, revoked) == (3, 2)
    assert len(await store.log_entries(revoked)) == 3
    latest = await store.latest_tree_head(revoked)
    assert latest is not None and latest[0] == 3
    assert session_row_counts(pg_db, kept) == kept_before
    assert await store.get_session(revoked, now=NOW) is None
    assert await store.latest_aggregate(revoked) is None
    assert await store.list_records(revoked) == []
    # The audit trail keeps that a revoke happened, unlinked from the session.
    audit = admin_query(pg_db, "SELECT session_id, request_id FROM ops_logs WHERE op = 'revoke'")
    assert audit == [(None, "req-revoke")]
    assert await store.revoke_session(revoked, request_id="req-again") is False


async def test_purge_expired_removes_only_expired(store: Store, pg_db: PgDatabase) -> None:
    """purge_expired deletes sessions expired at `now`, with their rows, and keeps the rest."""
    expired = [await new_session(store, expires_at=NOW + n * HOUR) for n in (1, 2)]
    live = [await new_session(store, expires_at=NOW + n * HOUR) for n in (3, 4)]
    for session_hash in expired + live:
        await fill_session(store, pg_db, session_hash)

    assert await store.purge_expired(now=NOW + 2 * HOUR) == 2

    for session_hash in expired:
        assert set(session_row_counts(pg_db, session_hash).values()) == {0}
    for session_hash in live:
        assert session_row_counts(pg_db, session_hash)["credentials"] == 1
    assert await store.count_active_sessions(now=NOW) == 2
    assert await store.purge_expired(now=NOW + 2 * HOUR) == 0
    purge_logs = admin_query(pg_db, "SELECT details FROM ops_logs WHERE op = 'purge'")
    assert purge_logs == [({"sessions": 2},)]


async def test_purge_drains_more_than_one_batch(store: Store, pg_db: PgDatabase) -> None:
    """A backlog larger than one purge batch is removed completely in one call."""
    admin_query(
        pg_db,
        """
        INSERT INTO sessions (session_hash, exchange, label, expires_at, envelope_digest)
        SELECT sha256(('s' || n)::bytea), 'binance', '', %s, sha256(('e' || n)::bytea)
        FROM generate_series(1, 1234) AS n
        RETURNING 1
        """,
        (NOW,),
    )
    await new_session(store, expires_at=NOW + HOUR)
    assert await store.purge_expired(now=NOW) == 1234
    assert await store.count_active_sessions(now=NOW) == 1


async def test_count_active_sessions_and_ping(store: Store) -> None:
    """count_active_sessions counts unexpired sessions at `now`; ping succeeds."""
    await store.ping()
    assert await store.count_active_sessions(now=NOW) == 0
    await new_session(store, expires_at=NOW + HOUR)
    await new_session(store, expires_at=NOW + 2 * HOUR)
    assert await store.count_active_sessions(now=NOW) == 2
    assert await store.count_active_sessions(now=NOW + HOUR) == 1


async def test_list_live_credentials_skips_expired(store: Store) -> None:
    """Only unexpired sessions' envelopes are listed, soonest expiry first."""
    late = await new_session(store, expires_at=NOW + 3 * HOUR)
    await new_session(store, expires_at=NOW - HOUR)
    soon = await new_session(store, expires_at=NOW + HOUR)
    live = await store.list_live_credentials(now=NOW)
    assert [entry.session_hash for entry in live] == [soon, late]
    assert [entry.expires_at for entry in live] == [NOW + HOUR, NOW + 3 * HOUR]


# -- aggregates, ops, records ---------------------------------------------------------


async def test_store_and_latest_aggregate(store: Store) -> None:
    """The latest aggregate is the highest seq, and its payload canonicalises as signed."""
    session_hash = await new_session(store)
    assert await store.latest_aggregate(session_hash) is None
    payloads = [
        {"seq": n, "pnl": f"{n}.25", "sharpe": 1.5 + n, "trades": 10 * n, "from": "2030-01-01"}
        for n in range(3)
    ]
    signatures = [b64(64) for _ in payloads]
    for n, (payload, signature) in enumerate(zip(payloads, signatures, strict=True)):
        await store.store_aggregate(session_hash, seq=n, payload=payload, signature=signature)
    latest = await store.latest_aggregate(session_hash)
    assert isinstance(latest, AggregateRow)
    assert (latest.seq, latest.signature) == (2, signatures[2])
    assert canonical_json(latest.payload) == canonical_json(payloads[2])


async def test_aggregate_errors(store: Store) -> None:
    """Duplicate seq is a Conflict, unknown session SessionNotFound, bad signature InvalidData."""
    session_hash = await new_session(store)
    await store.store_aggregate(session_hash, seq=0, payload={}, signature=b64(64))
    with pytest.raises(Conflict, match="aggregates_session_seq_key"):
        await store.store_aggregate(session_hash, seq=0, payload={}, signature=b64(64))
    with pytest.raises(SessionNotFound):
        await store.store_aggregate(os.urandom(32), seq=1, payload={}, signature=b64(64))
    with pytest.raises(InvalidData, match="aggregates_signature_base64"):
        await store.store_aggregate(session_hash, seq=1, payload={}, signature="sig!")


async def test_append_op(store: Store, pg_db: PgDatabase) -> None:
    """Ops entries are stored linked or unlinked; an unknown session is SessionNotFound."""
    session_hash = await new_session(store)
    await store.append_op(session_hash, op="aggregate", request_id="r-2", details={"ms": 12})
    await store.append_op(None, op="startup", request_id=None, details={})
    with pytest.raises(SessionNotFound):
        await store.append_op(os.urandom(32), op="poll", request_id="r", details={})
    with pytest.raises(InvalidData, match="ops_logs_request_id_format"):
        await store.append_op(None, op="poll", request_id="has space", details={})
    rows = admin_query(
        pg_db, "SELECT session_id IS NOT NULL, op, request_id, details FROM ops_logs ORDER BY id"
    )
    assert rows[1:] == [(True, "aggregate", "r-2", {"ms": 12}), (False, "startup", None, {})]


async def test_records(store: Store) -> None:
    """Records are stored, fetched only by their own session, and listed as metadata."""
    owner = await new_session(store)
    other = await new_session(store)
    first, second = uuid.uuid4(), uuid.uuid4()
    sealed = b64(96 * 1024)
    await store.insert_record(owner, record_id=first, label="a", sealed=sealed)
    await store.insert_record(owner, record_id=second, label="b", sealed=b64(10))

    record = await store.get_record(first, owner)
    assert record is not None
    assert (record.id, record.label, record.sealed) == (first, "a", sealed)
    assert await store.get_record(first, other) is None
    listed = await store.list_records(owner)
    assert {meta.id for meta in listed} == {first, second}
    assert all(isinstance(meta, RecordMeta) and not hasattr(meta, "sealed") for meta in listed)
    assert await store.list_records(other) == []

    with pytest.raises(Conflict, match="records_pkey"):
        await store.insert_record(owner, record_id=first, label="a", sealed=b64(10))
    with pytest.raises(InvalidData, match="records_sealed_base64"):
        await store.insert_record(
            owner, record_id=uuid.uuid4(), label="big", sealed=b64(96 * 1024 + 3)
        )
    with pytest.raises(SessionNotFound):
        await store.insert_record(os.urandom(32), record_id=uuid.uuid4(), label="x", sealed=b64(9))


async def test_report_and_its_log_entry_are_one_write(store: Store, pg_db: PgDatabase) -> None:
    """store_aggregate writes the report and its 'aggregates' ops entry together."""
    session_hash = await new_session(store)
    await store.store_aggregate(
        session_hash, seq=7, payload={"pnl": "0"}, signature=b64(64), request_id="req-7"
    )
    rows = admin_query(
        pg_db, "SELECT op, request_id, details FROM ops_logs WHERE op = 'aggregates'"
    )
    assert rows == [("aggregates", "req-7", {"seq": 7})]
    with pytest.raises(Conflict):
        await store.store_aggregate(
            session_hash, seq=7, payload={}, signature=b64(64), request_id="req-8"
        )
    assert len(admin_query(pg_db, "SELECT 1 FROM ops_logs WHERE op = 'aggregates'")) == 1


# -- sealed enclave state -------------------------------------------------------------


def sealed(
    session_hash: bytes,
    version: int,
    *,
    expires_at: datetime = NOW + HOUR,
    body: int = 64,
    magic: bytes = STATE_MAGIC,
) -> bytes:
    """A blob framed as the enclave seals one: header || nonce || ciphertext || tag."""
    header = SealedHeader(
        magic=magic,
        session_hash=session_hash,
        version=version,
        expires_at=int(expires_at.timestamp()),
    )
    return header.encode() + os.urandom(12 + body + 16)


def state(session_hash: bytes, version: int, **kwargs: Any) -> SealedBlob:
    """The parsed form the store takes."""
    return SealedBlob.parse(sealed(session_hash, version, **kwargs))


def revocation_list(version: int) -> SealedBlob:
    """A sealed revocation list (all-zero session hash, no expiry)."""
    return SealedBlob.parse(
        sealed(bytes(32), version, expires_at=datetime.fromtimestamp(0, UTC), magic=b"PAR1"),
        magic=REVOCATIONS_MAGIC,
    )


def test_sealed_blob_reads_the_clear_header() -> None:
    """SealedBlob.parse reads session, version and expiry, and checks the session when asked."""
    session_hash = os.urandom(32)
    blob = sealed(session_hash, 7)
    parsed = SealedBlob.parse(blob, session_hash=session_hash)
    assert (parsed.session_hash, parsed.version, parsed.expires_at) == (session_hash, 7, NOW + HOUR)
    assert parsed.sealed == blob
    assert blob.hex() not in repr(parsed)


@pytest.mark.parametrize(
    ("blob", "kwargs", "reason"),
    [
        pytest.param(b"PAS1" + bytes(40), {}, "impossible size", id="truncated"),
        pytest.param(
            sealed(bytes(32), 1, body=3 * 1024 * 1024), {}, "impossible size", id="oversized"
        ),
        pytest.param(
            sealed(b"\x01" * 32, 1, magic=b"PAR1"), {}, "not a sealed blob", id="wrong-magic"
        ),
        pytest.param(
            sealed(b"\x01" * 32, 1), {"session_hash": b"\x02" * 32}, "another", id="other-session"
        ),
        pytest.param(
            sealed(b"\x01" * 32, 1),
            {"magic": REVOCATIONS_MAGIC},
            "not a sealed",
            id="state-as-list",
        ),
        pytest.param(
            sealed(b"\x01" * 32, 1, magic=b"PAR1"),
            {"magic": REVOCATIONS_MAGIC},
            "names no session",
            id="list-naming-a-session",
        ),
        pytest.param(
            SealedHeader(
                magic=STATE_MAGIC, session_hash=bytes(32), version=2**63, expires_at=0
            ).encode()
            + bytes(28),
            {},
            "version out of range",
            id="version-beyond-bigint",
        ),
        pytest.param(
            SealedHeader(
                magic=STATE_MAGIC, session_hash=bytes(32), version=1, expires_at=2**63
            ).encode()
            + bytes(28),
            {},
            "expiry out of range",
            id="expiry-beyond-datetime",
        ),
    ],
)
def test_sealed_blob_refuses_what_it_cannot_store(
    blob: bytes, kwargs: dict[str, Any], reason: str
) -> None:
    """Truncated, oversized, wrong kind, other session or out-of-range headers are refused."""
    with pytest.raises(SealedStateError, match=reason):
        SealedBlob.parse(blob, **kwargs)


async def test_enclave_identity_is_stored_once(store: Store, pg_db: PgDatabase) -> None:
    """The first identity wins; a second insert reports the lost race and changes nothing."""
    assert await store.get_enclave_identity() is None
    first = {
        "key_id": "alias/perf-aggregator",
        "wrapped_key": os.urandom(200),
        "sealed_keys": os.urandom(224),
    }
    assert await store.insert_enclave_identity(**first) is True
    assert (
        await store.insert_enclave_identity(
            key_id="alias/perf-aggregator", wrapped_key=os.urandom(200), sealed_keys=os.urandom(224)
        )
        is False
    )
    identity = await store.get_enclave_identity()
    assert isinstance(identity, EnclaveIdentity)
    assert (identity.key_id, identity.wrapped_key, identity.sealed_keys) == (
        first["key_id"],
        first["wrapped_key"],
        first["sealed_keys"],
    )
    assert first["wrapped_key"].hex() not in repr(identity)
    assert admin_query(pg_db, "SELECT count(*) FROM enclave_identity") == [(1,)]
    with (
        psycopg.connect(pg_db.app_conninfo, autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute("UPDATE enclave_identity SET sealed_keys = 'x'::bytea")


@pytest.mark.parametrize(
    ("changes", "constraint"),
    [
        ({"key_id": "has space"}, "enclave_identity_key_id_format"),
        ({"wrapped_key": b""}, "enclave_identity_wrapped_key_size"),
        ({"wrapped_key": bytes(6145)}, "enclave_identity_wrapped_key_size"),
        ({"sealed_keys": bytes(8)}, "enclave_identity_sealed_keys_size"),
    ],
)
async def test_enclave_identity_bounds(
    store: Store, changes: dict[str, Any], constraint: str
) -> None:
    """An identity outside the schema's bounds is InvalidData, and nothing is stored."""
    fields: dict[str, Any] = {"key_id": "k", "wrapped_key": bytes(100), "sealed_keys": bytes(224)}
    with pytest.raises(InvalidData, match=constraint):
        await store.insert_enclave_identity(**(fields | changes))
    assert await store.get_enclave_identity() is None


async def test_sealed_state_keeps_the_highest_version(store: Store, pg_db: PgDatabase) -> None:
    """A newer version replaces the stored state; an older or equal one never does."""
    session_hash = await new_session(store)
    assert await store.get_sealed_state(session_hash) is None
    assert await store.store_sealed_state(state(session_hash, 1)) is True
    newest = state(session_hash, 3)
    assert await store.store_sealed_state(newest) is True
    assert await store.store_sealed_state(state(session_hash, 2)) is False
    assert await store.store_sealed_state(state(session_hash, 3)) is False
    assert await store.get_sealed_state(session_hash) == newest
    with pytest.raises(SessionNotFound):
        await store.store_sealed_state(state(os.urandom(32), 1))
    assert admin_query(pg_db, "SELECT count(*) FROM sealed_sessions") == [(1,)]


async def test_a_mislabelled_state_is_refused_by_the_schema(store: Store) -> None:
    """Columns that disagree with the blob's own header fail the schema CHECK: InvalidData."""
    session_hash = await new_session(store)
    other = await new_session(store)
    good = state(other, 4)
    for wrong in (
        SealedBlob(session_hash=session_hash, version=4, expires_at=NOW + HOUR, sealed=good.sealed),
        SealedBlob(session_hash=other, version=5, expires_at=NOW + HOUR, sealed=good.sealed),
        SealedBlob(session_hash=other, version=4, expires_at=NOW, sealed=good.sealed),
    ):
        with pytest.raises(InvalidData, match="sealed_sessions_header_matches"):
            await store.store_sealed_state(wrong)
    assert await store.get_sealed_state(session_hash) is None
    assert await store.get_sealed_state(other) is None


async def test_checkpoint_batch_is_one_statement(store: Store) -> None:
    """A batch keeps each session's newest state, skips unknown sessions, never downgrades."""
    first, second = await new_session(store), await new_session(store)
    await store.store_sealed_state(state(second, 9))
    unknown = os.urandom(32)
    batch = [
        state(first, 2),
        state(first, 5),  # the newer of two in one batch wins
        state(first, 4),
        state(second, 8),  # older than what is stored
        state(unknown, 1),  # revoked or purged since: skipped
    ]
    assert await store.store_sealed_states(batch) == 1
    stored_first = await store.get_sealed_state(first)
    stored_second = await store.get_sealed_state(second)
    assert stored_first is not None and stored_first.version == 5
    assert stored_second is not None and stored_second.version == 9
    assert await store.get_sealed_state(unknown) is None
    assert await store.store_sealed_states([]) == 0


async def test_sealed_state_batches_cover_every_live_state_within_the_budget(
    store: Store,
) -> None:
    """Batches hold every unexpired state once, each under the byte budget (big ones alone)."""
    budget = 2000
    sizes = [100, 700, 900, 50, 1990, 300, 400, 10, 2500, 600] * 3
    live: dict[bytes, int] = {}
    for n, size in enumerate(sizes):
        session_hash = await new_session(store, expires_at=NOW + (n + 1) * HOUR)
        blob = state(session_hash, n, expires_at=NOW + (n + 1) * HOUR, body=size)
        await store.store_sealed_state(blob)
        live[session_hash] = len(blob.sealed)
    expired = await new_session(store, expires_at=NOW - HOUR)
    await store.store_sealed_state(state(expired, 1, expires_at=NOW - HOUR))

    batches = [batch async for batch in store.sealed_state_batches(now=NOW, max_batch_bytes=budget)]
    seen = [blob.session_hash for batch in batches for blob in batch]
    assert sorted(seen) == sorted(live)  # each live state exactly once, the expired one not
    for batch in batches:
        total = sum(len(blob.sealed) for blob in batch)
        assert total < budget or len(batch) == 1
    assert any(len(batch) > 1 for batch in batches)
    # Fewer live states after expiry: the later ones only.
    later = [
        blob
        async for batch in store.sealed_state_batches(now=NOW + 10 * HOUR, max_batch_bytes=budget)
        for blob in batch
    ]
    assert len(later) == len(sizes) - 10


async def test_revoke_and_purge_take_the_sealed_state_with_them(
    store: Store, pg_db: PgDatabase
) -> None:
    """Revoke deletes the state and stores the newer revocation list in the same statement."""
    revoked, purged, kept = (
        await new_session(store),
        await new_session(store, expires_at=NOW - HOUR),
        await new_session(store),
    )
    for session_hash in (revoked, purged, kept):
        await store.store_sealed_state(state(session_hash, 1))
    assert await store.get_revocations() is None

    newer = revocation_list(3)
    assert await store.revoke_session(revoked, request_id="r-1", revocations=newer) is True
    assert await store.get_sealed_state(revoked) is None
    assert await store.get_revocations() == newer
    # An older list (a delayed reply) never replaces a newer one; a revoke of a session
    # already gone from the database still keeps the enclave's list.
    assert (
        await store.revoke_session(revoked, request_id="r-2", revocations=revocation_list(2))
        is False
    )
    assert await store.get_revocations() == newer
    newest = revocation_list(4)
    assert await store.revoke_session(os.urandom(32), request_id="r-3", revocations=newest) is False
    assert await store.get_revocations() == newest
    assert await store.store_revocations(revocation_list(1)) is False
    assert await store.store_revocations(revocation_list(5)) is True

    assert await store.purge_expired(now=NOW) == 1
    assert await store.get_sealed_state(purged) is None
    assert await store.get_sealed_state(kept) is not None
    assert admin_query(pg_db, "SELECT count(*) FROM sealed_revocations") == [(1,)]
    with pytest.raises(ValueError, match="revocation"):
        await store.store_revocations(state(kept, 9))


async def test_report_and_its_state_are_one_write(store: Store, pg_db: PgDatabase) -> None:
    """store_aggregate writes the sealed state with the report, or neither of them."""
    session_hash = await new_session(store)
    await store.store_aggregate(
        session_hash, seq=1, payload={}, signature=b64(64), sealed_state=state(session_hash, 2)
    )
    stored = await store.get_sealed_state(session_hash)
    assert stored is not None and stored.version == 2
    # The report is refused (seq exists): its state is not stored either.
    with pytest.raises(Conflict):
        await store.store_aggregate(
            session_hash, seq=1, payload={}, signature=b64(64), sealed_state=state(session_hash, 3)
        )
    stored = await store.get_sealed_state(session_hash)
    assert stored is not None and stored.version == 2
    # A state that fails its CHECK takes the report down with it.
    bad = state(session_hash, 4)
    with pytest.raises(InvalidData, match="sealed_sessions_header_matches"):
        await store.store_aggregate(
            session_hash,
            seq=2,
            payload={},
            signature=b64(64),
            sealed_state=SealedBlob(
                session_hash=session_hash, version=5, expires_at=bad.expires_at, sealed=bad.sealed
            ),
        )
    latest = await store.latest_aggregate(session_hash)
    assert latest is not None and latest.seq == 1
    with pytest.raises(ValueError, match="another session"):
        await store.store_aggregate(
            session_hash,
            seq=3,
            payload={},
            signature=b64(64),
            sealed_state=state(os.urandom(32), 1),
        )
    unknown = os.urandom(32)
    with pytest.raises(SessionNotFound):
        await store.store_aggregate(
            unknown, seq=0, payload={}, signature=b64(64), sealed_state=state(unknown, 9)
        )
    assert await store.get_sealed_state(unknown) is None
    stored = await store.get_sealed_state(session_hash)
    assert stored is not None and stored.version == 2
    assert admin_query(pg_db, "SELECT count(*) FROM aggregates") == [(1,)]


# -- roles ----------------------------------------------------------------------------


async def test_operator_cannot_read_credentials_but_reads_sessions(
    store: Store, pg_db: PgDatabase
) -> None:
    """operator_readonly is denied credentials and sealed bodies, and reads public tables."""
    session_hash = await new_session(store)
    await fill_session(store, pg_db, session_hash)
    with psycopg.connect(pg_db.admin_conninfo, autocommit=True) as conn:
        conn.execute("SET ROLE operator_readonly")
        for denied in (
            "SELECT * FROM credentials",
            "SELECT sealed FROM records",
            "SELECT * FROM records",
            "INSERT INTO ops_logs (op) VALUES ('x')",
            "DELETE FROM sessions",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(denied.encode())
        assert conn.execute("SELECT count(*) FROM sessions").fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM aggregates").fetchone() == (1,)
        assert conn.execute("SELECT label FROM records").fetchone() == ("notes",)
        # submit, aggregates (written with the report) and poll; two transparency entries
        assert conn.execute("SELECT count(*) FROM ops_logs").fetchone() == (5,)
        assert conn.execute("SELECT count(*) FROM merkle_logs").fetchone() == (1,)


async def test_operator_reads_sealed_state_metadata_but_no_blob(
    store: Store, pg_db: PgDatabase
) -> None:
    """operator_readonly sees versions and expiries of sealed state, never a blob or key."""
    session_hash = await new_session(store)
    await store.store_sealed_state(state(session_hash, 3))
    await store.store_revocations(revocation_list(2))
    await store.insert_enclave_identity(key_id="k", wrapped_key=bytes(64), sealed_keys=bytes(224))
    with psycopg.connect(pg_db.admin_conninfo, autocommit=True) as conn:
        conn.execute("SET ROLE operator_readonly")
        for denied in (
            "SELECT sealed FROM sealed_sessions",
            "SELECT * FROM sealed_sessions",
            "SELECT sealed FROM sealed_revocations",
            "SELECT wrapped_key FROM enclave_identity",
            "SELECT sealed_keys FROM enclave_identity",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(denied.encode())
        assert conn.execute("SELECT version FROM sealed_sessions").fetchone() == (3,)
        assert conn.execute("SELECT version FROM sealed_revocations").fetchone() == (2,)
        assert conn.execute("SELECT key_id FROM enclave_identity").fetchone() == ("k",)


@pytest.mark.parametrize(
    "statement",
    [
        "DROP TABLE sessions",
        "ALTER TABLE sessions DROP CONSTRAINT sessions_exchange_format",
        "CREATE TABLE public.exfil (data text)",
        "TRUNCATE credentials",
        "UPDATE sessions SET expires_at = now()",
        "DELETE FROM credentials",
        "SELECT * FROM ops_logs",
        "SET log_statement = 'all'",
        "SET log_min_duration_statement = 0",
        "ALTER ROLE app_service SET log_statement = 'all'",
        "ALTER ROLE app_service SUPERUSER",
        "CREATE ROLE intruder LOGIN",
    ],
)
def test_app_service_cannot_run_ddl_or_escalate(pg_db: PgDatabase, statement: str) -> None:
    """app_service is refused DDL, bulk rewrites, reading the ops log and re-enabling logging."""
    with (
        psycopg.connect(pg_db.app_conninfo, autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute(statement.encode())


# -- secrets never reach the database -------------------------------------------------


async def test_clear_session_id_never_reaches_the_database(store: Store, pg_db: PgDatabase) -> None:
    """Only the session hash is stored: the clear id is absent from pg_dump, data files and log."""
    session_id = secrets.token_urlsafe(32)
    session_hash = await new_session(store, session_id=session_id)
    await fill_session(store, pg_db, session_hash)
    dump = pg_dump(pg_db)

    assert LeakScanner([session_id.encode()]).scan(dump, label="pg_dump") == []
    # Positive control: the same scan does find what IS stored (the hash, as bytea hex).
    assert LeakScanner([session_hash]).scan(dump, label="pg_dump")

    data_dir = pg_db.cluster.data_dir
    if data_dir is None:
        pytest.skip("server data directory not on this machine")
    with psycopg.connect(pg_db.admin_conninfo, autocommit=True) as conn:
        conn.execute("CHECKPOINT")  # push the rows into the table files too, not just WAL
    assert LeakScanner([session_id.encode()]).scan(data_dir) == []
    assert {f.form for f in LeakScanner([session_hash]).scan(data_dir)} >= {"raw"}


async def test_refused_values_stay_out_of_the_server_log(store: Store, pg_db: PgDatabase) -> None:
    """A refused row is not echoed into the server log (app_service logs errors tersely)."""
    log_path = pg_db.cluster.log_path
    if log_path is None:
        pytest.skip("server log location unknown")
    canary = "Q0FOQVJZ" + secrets.token_hex(8) + "!"  # invalid base64: the "!" at the end
    with pytest.raises(InvalidData):
        await new_session(store, credentials=envelope(ciphertext=canary))
    log = log_path.read_bytes()
    # Positive control: the error itself was logged, so the scan looks at the right file.
    assert b"credentials_ciphertext_base64" in log
    assert LeakScanner([canary.encode()]).scan(log, label="server log") == []


# -- availability ---------------------------------------------------------------------


async def test_open_fails_with_store_unavailable(tmp_path: Path) -> None:
    """Opening a store on an unreachable database raises StoreUnavailable from the psycopg error."""
    conninfo = f"host={tmp_path} dbname=perf_aggregator user=app_service"
    with pytest.raises(StoreUnavailable) as caught:
        await Store.open(conninfo, min_size=1, timeout_s=0.5)
    assert isinstance(caught.value.__cause__, psycopg.OperationalError)


async def test_calls_fail_with_store_unavailable_when_pool_cannot_connect(tmp_path: Path) -> None:
    """A store whose pool cannot connect raises StoreUnavailable on use, chained to PoolTimeout."""
    conninfo = f"host={tmp_path} dbname=perf_aggregator user=app_service"
    store = await Store.open(conninfo, min_size=1, timeout_s=0.5, wait=False)
    try:
        with pytest.raises(StoreUnavailable) as caught:
            await store.ping()
        assert isinstance(caught.value.__cause__, psycopg.OperationalError)
        with pytest.raises(StoreUnavailable):
            await new_session(store)
    finally:
        await store.close()


async def test_store_survives_killed_connections(store: Store, pg_db: PgDatabase) -> None:
    """After the server drops every app connection, the next call reconnects and succeeds."""
    await store.ping()
    admin_query(
        pg_db,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = current_database() AND usename = 'app_service'",
    )
    await store.ping()
    assert await store.count_active_sessions(now=NOW) == 0


async def test_embedded_server_lifecycle(tmp_path: Path) -> None:
    """EmbeddedPostgres starts without TCP, migrates, serves app_service; stopped, it is a 503."""
    embedded = EmbeddedPostgres(tmp_path / "state")
    conninfo = embedded.start()
    try:
        with psycopg.connect(conninfo.admin) as conn:
            assert conn.execute("SHOW listen_addresses").fetchone() == ("",)
            assert conn.execute("SELECT current_database()").fetchone() == ("perf_aggregator",)
        assert (embedded.data_dir / ".s.PGSQL.5432").is_socket()
        assert b"listening on Unix socket" in embedded.log_path.read_bytes()
        store = await Store.open(conninfo.app, min_size=1, timeout_s=1.0)
        try:
            await new_session(store)
            assert await store.count_active_sessions(now=NOW) == 1
            # start() again is idempotent: same server, same conninfo, nothing to migrate.
            assert embedded.start() == conninfo
            embedded.stop()
            with pytest.raises(StoreUnavailable):
                await store.ping()
        finally:
            await store.close()
    finally:
        embedded.stop()
    assert not (embedded.data_dir / "postmaster.pid").exists()


async def test_logging_leaks_names_unsafe_server_settings(pg_db: PgDatabase) -> None:
    """Migrated role: nothing logged. A role that logs statements is named (the parent
    refuses to start with it in production)."""
    store = await Store.open(pg_db.app_conninfo, min_size=1, max_size=1)
    try:
        assert await store.logging_leaks() == []
    finally:
        await store.close()
    # Scoped to this test's own database: the cluster is shared with other tests.
    database = sql.Identifier(pg_db.name)
    with psycopg.connect(pg_db.admin_conninfo, autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER ROLE app_service IN DATABASE {} SET log_statement = 'all'").format(
                database
            )
        )
    try:
        store = await Store.open(pg_db.app_conninfo, min_size=1, max_size=1)
        try:
            assert await store.logging_leaks() == ["log_statement = all"]
        finally:
            await store.close()
    finally:
        with psycopg.connect(pg_db.admin_conninfo, autocommit=True) as conn:
            conn.execute(
                sql.SQL("ALTER ROLE app_service IN DATABASE {} RESET log_statement").format(
                    database
                )
            )
