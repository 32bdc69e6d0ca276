"""The parent's PostgreSQL store. Side: parent.

Sessions, credential ciphertext, signed aggregates, ops logs and sealed records.

This is the adapter behind the store port. It holds ONLY ciphertext and public data:
sessions are keyed by SHA-256 of the session id (the clear id never reaches the
database), credentials are the client's envelope exactly as submitted (base64
ciphertext the parent cannot open), records are sealed by the enclave.

Every query goes through psycopg 3 with server-side bound parameters (the extended
query protocol: values travel apart from the SQL text, so they cannot change it); no
SQL is built from values. Migration 0001 turns statement and parameter logging off for
app_service, so the values do not reach the server log either. Connections come
from an ``AsyncConnectionPool`` in autocommit mode, and every write is a single
statement (data-modifying CTEs where several tables change), so each write is atomic
and costs one round trip.

Error mapping at this boundary (see ``parent.db.errors``): unreachable database, pool
timeout or cancelled statement -> ``StoreUnavailable`` (``raise ... from``); unique
key -> ``Conflict`` / ``ReplayedEnvelope``; any other constraint or type refusal ->
``InvalidData``. The last two are raised with neither cause nor context because
psycopg's DETAIL carries the refused row; messages name only tables and constraints.

Time is passed in (``now=``), never read here, so expiry is deterministic in tests;
datetimes must be timezone-aware.
"""

from __future__ import annotations

import functools
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, ParamSpec, TypeAlias, TypeVar
from uuid import UUID

import psycopg
import psycopg_pool
from psycopg import AsyncConnection
from psycopg.rows import TupleRow
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from parent.db.errors import (
    Conflict,
    InvalidData,
    ReplayedEnvelope,
    SessionNotFound,
    StoreError,
    StoreUnavailable,
)
from shared.ids import session_hash

__all__ = [
    "AggregateRow",
    "JsonObject",
    "LiveCredential",
    "LogBatch",
    "OpsLogRow",
    "RecordMeta",
    "RecordRow",
    "SessionRow",
    "Store",
    "StoredCredentials",
    "hash_session_id",
]

JsonObject = dict[str, Any]

# The unique key whose violation means "this envelope was submitted before".
_REPLAY_CONSTRAINT = "sessions_envelope_digest_key"
# Rows deleted per purge statement: bounds lock time and WAL per transaction.
_PURGE_BATCH = 500


# SHA-256 of the session id: the only form of it the database sees (shared with the
# enclave and clients, so all three agree on it).
hash_session_id = session_hash


@dataclass(frozen=True, slots=True, kw_only=True)
class OpsLogRow:
    """One public entry of a session's operations log."""

    op: str
    at: datetime
    request_id: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class LogBatch:
    """Transparency-log entries from ``start`` on and the signed head that covers them.

    ``entries`` are the enclave's canonical JSON texts (the Merkle leaves), ``ops``
    their operation names; ``head`` is ``{"payload", "signature"}`` for a tree of
    ``tree_size`` entries with root ``root_hash``.
    """

    start: int
    entries: tuple[str, ...]
    ops: tuple[str, ...]
    head: JsonObject
    tree_size: int
    root_hash: bytes

    def params(self, session_hash: bytes) -> dict[str, Any]:
        """The bound parameters of the insert statements below."""
        return {
            "log_hash": session_hash,
            "log_ops": [f"log.{op}" for op in self.ops],
            "log_indexes": list(range(self.start, self.start + len(self.entries))),
            "log_entries": list(self.entries),
            "head": Jsonb(self.head),
            "tree_size": self.tree_size,
            "root_hash": self.root_hash,
        }


# Insert a LogBatch: entries already stored (a concurrent reader got there first) are
# the same bytes from the same enclave, so conflicts are skipped, not errors.
_LOG_INSERT_CTES = """
    log_rows AS (
        INSERT INTO ops_logs (op, session_hash, log_index, entry)
        SELECT op, %(log_hash)s, idx, entry
        FROM unnest(%(log_ops)s::text[], %(log_indexes)s::bigint[], %(log_entries)s::text[])
            AS batch(op, idx, entry)
        ON CONFLICT (session_hash, log_index) WHERE log_index IS NOT NULL DO NOTHING
        RETURNING 1
    ),
    head_row AS (
        INSERT INTO merkle_logs (session_hash, tree_size, root_hash, signed_tree_head)
        VALUES (%(log_hash)s, %(tree_size)s, %(root_hash)s, %(head)s)
        ON CONFLICT (session_hash, tree_size) DO NOTHING
        RETURNING 1
    )"""


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredCredentials:
    """A credential envelope as submitted: base64 fields the parent cannot decrypt.

    ``metadata`` is the envelope's non-secret AAD (``exchange``, ``label``, ``ttl``).
    """

    alg: str
    ephemeral_pub: str
    nonce: str
    ciphertext: str
    tag: str
    metadata: JsonObject


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionRow:
    """Public facts about a live session."""

    session_hash: bytes
    exchange: str
    label: str
    status: str
    created_at: datetime
    expires_at: datetime
    owner_pub: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class AggregateRow:
    """One signed aggregate report (operator-visible by design)."""

    seq: int
    payload: JsonObject
    signature: str
    created_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordMeta:
    """What may be listed about a sealed record: never its body."""

    id: UUID
    label: str
    created_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordRow:
    """A sealed record with its enclave-sealed body (base64)."""

    id: UUID
    label: str
    sealed: str
    created_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class LiveCredential:
    """A stored envelope of an unexpired session, for restoring a restarted enclave."""

    session_hash: bytes
    expires_at: datetime
    credentials: StoredCredentials


_P = ParamSpec("_P")
_R = TypeVar("_R")
_Pool: TypeAlias = AsyncConnectionPool[AsyncConnection[TupleRow]]


def _require_aware(when: datetime) -> datetime:
    # A naive datetime would be read in the server's TimeZone: refuse the ambiguity.
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError("datetime must be timezone-aware")
    return when


def _describe(exc: psycopg.Error) -> str:
    """Name what refused the value (table, constraint or column, error class), never the value."""
    diag = exc.diag
    parts = [diag.table_name, diag.constraint_name or diag.column_name]
    where = ".".join(part for part in parts if part) or "value"
    return f"{where} refused by the database ({type(exc).__name__})"


def _configure_hook(
    statement_timeout_ms: int,
) -> Callable[[AsyncConnection[TupleRow]], Awaitable[None]]:
    async def configure(conn: AsyncConnection[TupleRow]) -> None:
        # Autocommit: every store call is one statement, so an implicit BEGIN/COMMIT
        # would only add round trips and idle-in-transaction connections.
        await conn.set_autocommit(True)
        # UTC so returned timestamptz values do not depend on server configuration;
        # a statement timeout so a stuck query surfaces as StoreUnavailable (503).
        await conn.execute(
            "SELECT set_config('TimeZone', 'UTC', false),"
            " set_config('statement_timeout', %s, false)",
            (f"{statement_timeout_ms}ms",),
        )

    return configure


_IDLE_CHECK_AFTER_S = 2.0
"""A pooled connection idle longer than this is tested before use; busy ones are not."""


class _IdleCheck:
    """Pool check/reset hooks: test a connection on checkout only after it sat idle.

    Testing every checkout costs a round trip (and event-loop turns) on every query;
    under load that doubled request latency. A connection used within the last
    ``_IDLE_CHECK_AFTER_S`` is trusted; one idle for longer (the case after a database
    restart) is tested, and read-only methods retry once on a lost connection.
    """

    def __init__(self) -> None:
        self._returned: weakref.WeakKeyDictionary[psycopg.AsyncConnection[Any], float] = (
            weakref.WeakKeyDictionary()
        )

    async def check(self, conn: psycopg.AsyncConnection[Any]) -> None:
        returned = self._returned.get(conn)
        if returned is None or time.monotonic() - returned > _IDLE_CHECK_AFTER_S:
            await AsyncConnectionPool.check_connection(conn)

    async def reset(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._returned[conn] = time.monotonic()


def _retry_lost_connection(method: Callable[_P, Awaitable[_R]]) -> Callable[_P, Awaitable[_R]]:
    """Run a read-only method once more if its connection turned out to be dead.

    Only for methods that change nothing: a write whose connection died mid-flight
    may or may not have committed, so it surfaces as StoreUnavailable instead.
    """

    @functools.wraps(method)
    async def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return await method(*args, **kwargs)
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            if isinstance(exc, psycopg_pool.PoolTimeout):
                raise
        return await method(*args, **kwargs)

    return wrapper


def _database_errors(method: Callable[_P, Awaitable[_R]]) -> Callable[_P, Awaitable[_R]]:
    """Map psycopg exceptions raised by a store method to StoreError subclasses."""

    @functools.wraps(method)
    async def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return await method(*args, **kwargs)
        except StoreError:
            raise
        except psycopg.errors.UniqueViolation as exc:
            if exc.diag.constraint_name == _REPLAY_CONSTRAINT:
                error: StoreError = ReplayedEnvelope("envelope already submitted")
            else:
                error = Conflict(_describe(exc))
        except (psycopg.IntegrityError, psycopg.DataError) as exc:
            error = InvalidData(_describe(exc))
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            # OperationalError covers PoolTimeout, TooManyRequests, lost connections,
            # admin shutdown and statement timeouts: all "try again later".
            raise StoreUnavailable(f"database unavailable ({type(exc).__name__})") from exc
        # Raised outside the except clauses on purpose: the psycopg error's DETAIL holds
        # the refused row, so it must be neither __cause__ nor __context__ of ours.
        raise error from None

    return wrapper


class Store:
    """Async PostgreSQL store over a connection pool. Safe to share between tasks."""

    def __init__(self, pool: _Pool) -> None:
        self._pool = pool

    @classmethod
    async def open(
        cls,
        conninfo: str,
        *,
        min_size: int = 2,
        max_size: int = 32,
        timeout_s: float = 5.0,
        statement_timeout_s: float = 10.0,
        check_connections: bool = True,
        wait: bool = True,
    ) -> Store:
        """Open a pool on ``conninfo`` (the app_service role) and return a Store.

        ``timeout_s`` bounds waiting for a connection (and, with ``wait``, for the pool's
        first ``min_size`` connections). ``check_connections`` tests a connection on checkout
        when it sat idle (see ``_IdleCheck``) so a database restart costs no failed read.
        Raises ``StoreUnavailable`` if ``wait`` and the database cannot be reached.
        """
        idle_check = _IdleCheck()
        pool: _Pool = AsyncConnectionPool(
            conninfo,
            min_size=min_size,
            max_size=max_size,
            timeout=timeout_s,
            open=False,
            name="perf-aggregator-store",
            configure=_configure_hook(int(statement_timeout_s * 1000)),
            check=idle_check.check if check_connections else None,
            reset=idle_check.reset,
            kwargs={
                "application_name": "perf-aggregator-parent",
                "connect_timeout": max(1, int(timeout_s)),
            },
        )
        try:
            await pool.open(wait=wait, timeout=timeout_s)
        except psycopg.Error as exc:
            await pool.close()
            raise StoreUnavailable("database unavailable: could not open the pool") from exc
        return cls(pool)

    async def close(self) -> None:
        """Close the pool and every connection in it."""
        await self._pool.close()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    # -- sessions -------------------------------------------------------------------

    @_database_errors
    async def create_session(
        self,
        *,
        session_hash: bytes,
        exchange: str,
        label: str,
        expires_at: datetime,
        envelope_digest: bytes,
        owner_pub: str | None,
        credentials: StoredCredentials,
        request_id: str,
    ) -> None:
        """Store a session, its envelope and a ``submit`` ops entry, atomically.

        Raises ``ReplayedEnvelope`` if ``envelope_digest`` was stored before and
        ``InvalidData`` if a constraint refuses a value; in both cases nothing is stored.
        """
        # One statement: its CTEs succeed or fail together, so there is never a session
        # without its credentials (foreign keys are checked at the statement's end).
        async with self._pool.connection() as conn:
            await conn.execute(
                """
                WITH new_session AS (
                    INSERT INTO sessions
                        (session_hash, exchange, label, expires_at, envelope_digest, owner_pub)
                    VALUES
                        (%(session_hash)s, %(exchange)s, %(label)s, %(expires_at)s,
                         %(envelope_digest)s, %(owner_pub)s)
                    RETURNING id
                ), new_credentials AS (
                    INSERT INTO credentials
                        (session_id, alg, ephemeral_pub, nonce, ciphertext, tag, metadata)
                    SELECT id, %(alg)s, %(ephemeral_pub)s, %(nonce)s, %(ciphertext)s, %(tag)s,
                           %(metadata)s
                    FROM new_session
                )
                INSERT INTO ops_logs (session_id, op, request_id, details)
                SELECT id, 'submit', %(request_id)s, %(details)s FROM new_session
                """,
                {
                    "session_hash": session_hash,
                    "exchange": exchange,
                    "label": label,
                    "expires_at": _require_aware(expires_at),
                    "envelope_digest": envelope_digest,
                    "owner_pub": owner_pub,
                    "alg": credentials.alg,
                    "ephemeral_pub": credentials.ephemeral_pub,
                    "nonce": credentials.nonce,
                    "ciphertext": credentials.ciphertext,
                    "tag": credentials.tag,
                    "metadata": Jsonb(credentials.metadata),
                    "request_id": request_id,
                    "details": Jsonb({"exchange": exchange}),
                },
            )

    @_database_errors
    @_retry_lost_connection
    async def get_session(self, session_hash: bytes, *, now: datetime) -> SessionRow | None:
        """The session with that hash, or None if it does not exist or has expired at ``now``."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                """
                SELECT session_hash, exchange, label, status, created_at, expires_at, owner_pub
                FROM sessions
                WHERE session_hash = %s AND expires_at > %s
                """,
                (session_hash, _require_aware(now)),
            )
            row = await cur.fetchone()
        if row is None:
            return None
        return SessionRow(
            session_hash=bytes(row[0]),
            exchange=row[1],
            label=row[2],
            status=row[3],
            created_at=row[4],
            expires_at=row[5],
            owner_pub=row[6],
        )

    @_database_errors
    async def revoke_session(
        self, session_hash: bytes, *, request_id: str, log: LogBatch | None = None
    ) -> bool:
        """Delete the session and every row of it; True if it existed.

        Credentials, aggregates, audit rows and records go with it through
        ``ON DELETE CASCADE``, in the same statement. A ``revoke`` audit row is kept,
        deliberately not linked to the session (no session id, hash or label). The
        transparency log stays (it is keyed by the hash, not the row); ``log``, the
        enclave's final entries and head, is written by the same statement.
        """
        params: dict[str, Any] = {"session_hash": session_hash, "request_id": request_id}
        log_ctes = ""
        if log is not None:
            params |= log.params(session_hash)
            log_ctes = "," + _LOG_INSERT_CTES
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                f"""
                WITH gone AS (
                    DELETE FROM sessions WHERE session_hash = %(session_hash)s RETURNING id
                ){log_ctes}
                INSERT INTO ops_logs (op, request_id, details)
                SELECT 'revoke', %(request_id)s, '{{}}'::jsonb FROM gone
                """,  # noqa: S608 - only constant SQL text is interpolated
                params,
            )
            # One audit row is inserted per deleted session, so rowcount says whether
            # the session existed.
            return cur.rowcount > 0

    @_database_errors
    async def purge_expired(self, *, now: datetime) -> int:
        """Delete every session expired at ``now`` with all its rows; return how many."""
        now = _require_aware(now)
        total = 0
        async with self._pool.connection() as conn:
            while True:
                # Batches keep each transaction short while a big backlog drains.
                cur = await conn.execute(
                    """
                    WITH gone AS (
                        DELETE FROM sessions WHERE id IN (
                            SELECT id FROM sessions WHERE expires_at <= %(now)s
                            ORDER BY expires_at LIMIT %(batch)s
                        )
                        RETURNING id
                    ), logged AS (
                        INSERT INTO ops_logs (op, details)
                        SELECT 'purge', jsonb_build_object('sessions', count(*))
                        FROM gone HAVING count(*) > 0
                    )
                    SELECT count(*) FROM gone
                    """,
                    {"now": now, "batch": _PURGE_BATCH},
                )
                row = await cur.fetchone()
                deleted = int(row[0]) if row else 0
                total += deleted
                if deleted < _PURGE_BATCH:
                    return total

    @_database_errors
    @_retry_lost_connection
    async def count_active_sessions(self, *, now: datetime) -> int:
        """How many sessions are unexpired at ``now``."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT count(*) FROM sessions WHERE expires_at > %s", (_require_aware(now),)
            )
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    @_database_errors
    @_retry_lost_connection
    async def list_live_credentials(self, *, now: datetime) -> list[LiveCredential]:
        """Every unexpired session's stored envelope, soonest expiry first (enclave restore)."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                """
                SELECT s.session_hash, s.expires_at,
                       c.alg, c.ephemeral_pub, c.nonce, c.ciphertext, c.tag, c.metadata
                FROM sessions s JOIN credentials c ON c.session_id = s.id
                WHERE s.expires_at > %s
                ORDER BY s.expires_at, s.id
                """,
                (_require_aware(now),),
            )
            rows = await cur.fetchall()
        return [
            LiveCredential(
                session_hash=bytes(row[0]),
                expires_at=row[1],
                credentials=StoredCredentials(
                    alg=row[2],
                    ephemeral_pub=row[3],
                    nonce=row[4],
                    ciphertext=row[5],
                    tag=row[6],
                    metadata=row[7],
                ),
            )
            for row in rows
        ]

    # -- aggregates -----------------------------------------------------------------

    @_database_errors
    async def store_aggregate(
        self,
        session_hash: bytes,
        *,
        seq: int,
        payload: JsonObject,
        signature: str,
        request_id: str | None = None,
    ) -> None:
        """Store a signed report for the session and its 'aggregates' ops-log entry.

        One statement writes both, so a report never lacks its log entry and the
        request costs one round trip. ``SessionNotFound`` if there is no such session,
        ``Conflict`` if ``seq`` exists.

        ``payload`` is stored as jsonb: key order and whitespace are not kept, so
        verifiers re-canonicalise it (RFC 8785) before checking ``signature``.
        """
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                """
                WITH report AS (
                    INSERT INTO aggregates (session_id, seq, payload, signature)
                    SELECT id, %(seq)s, %(payload)s, %(signature)s
                    FROM sessions WHERE session_hash = %(session_hash)s
                    RETURNING session_id
                )
                INSERT INTO ops_logs (session_id, op, request_id, details)
                SELECT session_id, 'aggregates', %(request_id)s, %(details)s FROM report
                """,
                {
                    "seq": seq,
                    "payload": Jsonb(payload),
                    "signature": signature,
                    "session_hash": session_hash,
                    "request_id": request_id,
                    "details": Jsonb({"seq": seq}),
                },
            )
            if cur.rowcount == 0:
                raise SessionNotFound("no such session")

    @_database_errors
    @_retry_lost_connection
    async def latest_aggregate(self, session_hash: bytes) -> AggregateRow | None:
        """The report with the highest seq for that session, or None."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                """
                SELECT a.seq, a.payload, a.signature, a.created_at
                FROM aggregates a JOIN sessions s ON s.id = a.session_id
                WHERE s.session_hash = %s
                ORDER BY a.seq DESC LIMIT 1
                """,
                (session_hash,),
            )
            row = await cur.fetchone()
        if row is None:
            return None
        return AggregateRow(seq=row[0], payload=row[1], signature=row[2], created_at=row[3])

    # -- ops log --------------------------------------------------------------------

    @_database_errors
    async def append_op(
        self,
        session_hash: bytes | None,
        *,
        op: str,
        request_id: str | None,
        details: JsonObject,
    ) -> None:
        """Append a non-sensitive ops entry, linked to a session unless ``session_hash`` is None.

        ``details`` must hold no secrets: the operator can read ops logs.
        ``SessionNotFound`` if a hash is given and no such session exists.
        """
        params = {"op": op, "request_id": request_id, "details": Jsonb(details)}
        async with self._pool.connection() as conn:
            if session_hash is None:
                await conn.execute(
                    "INSERT INTO ops_logs (op, request_id, details)"
                    " VALUES (%(op)s, %(request_id)s, %(details)s)",
                    params,
                )
                return
            cur = await conn.execute(
                """
                INSERT INTO ops_logs (session_id, op, request_id, details)
                SELECT id, %(op)s, %(request_id)s, %(details)s
                FROM sessions WHERE session_hash = %(session_hash)s
                """,
                {**params, "session_hash": session_hash},
            )
            if cur.rowcount == 0:
                raise SessionNotFound("no such session")

    @_database_errors
    @_retry_lost_connection
    async def list_session_ops(self, session_hash: bytes, *, limit: int = 1000) -> list[OpsLogRow]:
        """The session's operations log, oldest first (public columns only)."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                """
                SELECT o.op, o.at, o.request_id
                FROM ops_logs o JOIN sessions s ON s.id = o.session_id
                WHERE s.session_hash = %(session_hash)s
                ORDER BY o.id
                LIMIT %(limit)s
                """,
                {"session_hash": session_hash, "limit": limit},
            )
            rows = await cur.fetchall()
        return [OpsLogRow(op=op, at=at, request_id=request_id) for op, at, request_id in rows]

    # -- transparency log -----------------------------------------------------------

    @_database_errors
    @_retry_lost_connection
    async def log_entries(self, session_hash: bytes) -> list[str]:
        """The stored transparency-log entries of a session, by index (canonical texts)."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                """
                SELECT log_index, entry FROM ops_logs
                WHERE session_hash = %s AND log_index IS NOT NULL
                ORDER BY log_index
                """,
                (session_hash,),
            )
            rows = await cur.fetchall()
        entries: list[str] = []
        for index, entry in rows:
            if index != len(entries):
                break  # a hole (cannot happen: batches are written whole); serve the prefix
            entries.append(entry)
        return entries

    @_database_errors
    @_retry_lost_connection
    async def latest_tree_head(self, session_hash: bytes) -> tuple[int, JsonObject] | None:
        """The stored signed head of the largest tree for that session, with its size."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                """
                SELECT tree_size, signed_tree_head FROM merkle_logs
                WHERE session_hash = %s ORDER BY tree_size DESC LIMIT 1
                """,
                (session_hash,),
            )
            row = await cur.fetchone()
        return None if row is None else (int(row[0]), row[1])

    @_database_errors
    async def append_log(self, session_hash: bytes, batch: LogBatch) -> None:
        """Store new transparency entries and their signed head in one statement."""
        async with self._pool.connection() as conn:
            await conn.execute("WITH" + _LOG_INSERT_CTES + " SELECT 1", batch.params(session_hash))

    # -- sealed records -------------------------------------------------------------

    @_database_errors
    async def insert_record(
        self, session_hash: bytes, *, record_id: UUID, label: str, sealed: str
    ) -> None:
        """Store an enclave-sealed record (base64) for the session.

        ``SessionNotFound`` if there is no such session, ``Conflict`` if the id exists.
        """
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                """
                INSERT INTO records (id, session_id, label, sealed)
                SELECT %(record_id)s, id, %(label)s, %(sealed)s
                FROM sessions WHERE session_hash = %(session_hash)s
                """,
                {
                    "record_id": record_id,
                    "label": label,
                    "sealed": sealed,
                    "session_hash": session_hash,
                },
            )
            if cur.rowcount == 0:
                raise SessionNotFound("no such session")

    @_database_errors
    @_retry_lost_connection
    async def get_record(self, record_id: UUID, session_hash: bytes) -> RecordRow | None:
        """The record if it exists AND belongs to that session, else None."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                """
                SELECT r.id, r.label, r.sealed, r.created_at
                FROM records r JOIN sessions s ON s.id = r.session_id
                WHERE r.id = %s AND s.session_hash = %s
                """,
                (record_id, session_hash),
            )
            row = await cur.fetchone()
        if row is None:
            return None
        return RecordRow(id=row[0], label=row[1], sealed=row[2], created_at=row[3])

    @_database_errors
    @_retry_lost_connection
    async def list_records(self, session_hash: bytes, *, limit: int = 1000) -> list[RecordMeta]:
        """Metadata of the session's records, oldest first, at most ``limit``."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                """
                SELECT r.id, r.label, r.created_at
                FROM records r JOIN sessions s ON s.id = r.session_id
                WHERE s.session_hash = %s
                ORDER BY r.created_at, r.id
                LIMIT %s
                """,
                (session_hash, limit),
            )
            rows = await cur.fetchall()
        return [RecordMeta(id=row[0], label=row[1], created_at=row[2]) for row in rows]

    # -- health ---------------------------------------------------------------------

    @_database_errors
    @_retry_lost_connection
    async def ping(self) -> None:
        """Round-trip to the database; ``StoreUnavailable`` if it cannot be reached."""
        async with self._pool.connection() as conn:
            await conn.execute("SELECT 1")
