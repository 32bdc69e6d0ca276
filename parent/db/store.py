"""The parent's PostgreSQL store. Side: parent.

Sessions, credential ciphertext, signed aggregates, ops logs, sealed records and the
enclave's sealed state (its identity, per-session states, the revocation list).

This is the adapter behind the store port. It holds ONLY ciphertext and public data:
sessions are keyed by SHA-256 of the session id (the clear id never reaches the
database), credentials are the client's envelope exactly as submitted (base64
ciphertext the parent cannot open), records and session states are sealed by the
enclave (the parent reads only a sealed state's clear header: ``SealedBlob``).

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
datetimes must be timezone-aware. Leases (migration 0005) are the exception: they run
on the database's clock (``now()``), the one clock every replica shares.

Replicas (``LeaseHolder``): a Store opened with a holder takes the lease of every
session it creates (same statement), and writes a session's sealed state or a report
only while it holds that session's lease (``LeaseLost`` otherwise): one writer per
session, so two enclaves never fork a session's state.
"""

from __future__ import annotations

import functools
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
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
    LeaseLost,
    ReplayedEnvelope,
    SessionNotFound,
    StoreError,
    StoreUnavailable,
)
from shared.ids import session_hash
from shared.sealed_state import REVOCATIONS_MAGIC, STATE_MAGIC, SealedHeader, SealedStateError

__all__ = [
    "AggregateRow",
    "EnclaveIdentity",
    "JsonObject",
    "Lease",
    "LeaseHolder",
    "LiveCredential",
    "LogBatch",
    "OpsLogRow",
    "RecordMeta",
    "RecordRow",
    "SealedBlob",
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
# Rows read per page while listing sealed states: bounds one page's memory (with the
# byte budget) and keeps each read short.
_SEALED_PAGE_ROWS = 1000
_MAX_BIGINT = 2**63 - 1
_NO_SESSION = bytes(32)


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


@dataclass(frozen=True, slots=True, kw_only=True)
class SealedBlob:
    """A blob the enclave sealed, with its clear header read; the rest only the enclave opens.

    Session states carry the session's hash; the revocation list carries 32 zero
    bytes there and ``expires_at`` 1970-01-01 (it does not expire).
    """

    session_hash: bytes
    version: int
    expires_at: datetime
    sealed: bytes = field(repr=False)

    @classmethod
    def parse(
        cls, blob: bytes, *, magic: bytes = STATE_MAGIC, session_hash: bytes | None = None
    ) -> SealedBlob:
        """Read ``blob``'s header; ``SealedStateError`` unless it is a storable blob of ``magic``.

        With ``session_hash`` the blob must name that session: a reply about one
        session never files a state under another.
        """
        header = SealedHeader.parse(blob, magic=magic)
        if header.version > _MAX_BIGINT:
            raise SealedStateError("sealed blob version out of range")
        if magic == REVOCATIONS_MAGIC and header.session_hash != _NO_SESSION:
            raise SealedStateError("a revocation list names no session")
        if session_hash is not None and header.session_hash != session_hash:
            raise SealedStateError("sealed state belongs to another session")
        try:
            expires_at = datetime.fromtimestamp(header.expires_at, UTC)
        except (OverflowError, OSError, ValueError):
            raise SealedStateError("sealed blob expiry out of range") from None
        return cls(
            session_hash=header.session_hash,
            version=header.version,
            expires_at=expires_at,
            sealed=bytes(blob),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class EnclaveIdentity:
    """The enclave identity every replica unlocks with: the KMS-wrapped data key and the
    service keys sealed under it (both opaque to the parent)."""

    key_id: str
    wrapped_key: bytes = field(repr=False)
    sealed_keys: bytes = field(repr=False)
    created_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaseHolder:
    """This replica as the lease table names it (REPLICA_ID, REPLICA_URL, LEASE_SECONDS)."""

    replica_id: str
    url: str
    lease_seconds: float

    def __post_init__(self) -> None:
        if not 0 < self.lease_seconds <= 600:
            raise ValueError("lease_seconds must be in (0, 600]")


@dataclass(frozen=True, slots=True, kw_only=True)
class Lease:
    """Who holds a live session's lease, as the database sees it right now.

    ``holder`` is None when the session has no lease row yet (created before leases,
    or by a parent without a holder). ``remaining`` is the seconds until it expires
    (zero or negative: expired, anyone may take it over).
    """

    holder: str | None
    holder_url: str | None
    remaining: float

    @property
    def valid(self) -> bool:
        """Held and not expired."""
        return self.holder is not None and self.remaining > 0


# Fence of the writes only the lease holder may do; %(fence)s NULL = no leases in use.
# ``target_hash`` names the session_hash column of the row being written.
def _fence(target_hash: str) -> str:
    # Only constant column names from this module are interpolated, never values.
    return f"""(%(fence)s::text IS NULL OR EXISTS (
        SELECT 1 FROM session_leases l
        WHERE l.session_hash = {target_hash} AND l.holder = %(fence)s))"""  # noqa: S608


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


# Keep the newest sealed state of a session: an older or equal version never replaces
# a newer one (two writers racing, or a checkpoint that overtook a report's state).
# Fed by ``target``, a CTE of one sessions row or none: a state is never stored
# without its session.
_SEALED_STATE_CTE = """
    state_row AS (
        INSERT INTO sealed_sessions (session_hash, version, expires_at, sealed)
        SELECT session_hash, %(state_version)s, %(state_expires_at)s, %(state_sealed)s
        FROM target
        ON CONFLICT (session_hash) DO UPDATE
            SET version = excluded.version, expires_at = excluded.expires_at,
                sealed = excluded.sealed, updated_at = now()
            WHERE excluded.version > sealed_sessions.version
        RETURNING 1
    )"""

_REVOCATIONS_CTE = """
    revocations_row AS (
        INSERT INTO sealed_revocations (version, sealed)
        VALUES (%(revocations_version)s, %(revocations_sealed)s)
        ON CONFLICT (singleton) DO UPDATE
            SET version = excluded.version, sealed = excluded.sealed, updated_at = now()
            WHERE excluded.version > sealed_revocations.version
        RETURNING 1
    )"""


def _state_params(state: SealedBlob) -> dict[str, Any]:
    return {
        "state_version": state.version,
        "state_expires_at": state.expires_at,
        "state_sealed": state.sealed,
    }


def _revocations_params(revocations: SealedBlob) -> dict[str, Any]:
    if revocations.session_hash != _NO_SESSION:
        raise ValueError("not a sealed revocation list")
    return {"revocations_version": revocations.version, "revocations_sealed": revocations.sealed}


class Store:
    """Async PostgreSQL store over a connection pool. Safe to share between tasks."""

    def __init__(self, pool: _Pool, *, holder: LeaseHolder | None = None) -> None:
        self._pool = pool
        self._holder = holder

    @property
    def holder(self) -> LeaseHolder | None:
        """The replica this store takes and checks leases for (None: no leases)."""
        return self._holder

    def _fence_params(self) -> dict[str, Any]:
        return {"fence": None if self._holder is None else self._holder.replica_id}

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
        holder: LeaseHolder | None = None,
    ) -> Store:
        """Open a pool on ``conninfo`` (the app_service role) and return a Store.

        ``timeout_s`` bounds waiting for a connection (and, with ``wait``, for the pool's
        first ``min_size`` connections). ``check_connections`` tests a connection on checkout
        when it sat idle (see ``_IdleCheck``) so a database restart costs no failed read.
        Raises ``StoreUnavailable`` if ``wait`` and the database cannot be reached.
        ``holder``: this replica, when sessions are leased (see the module docstring).
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
        return cls(pool, holder=holder)

    async def logging_leaks(self) -> list[str]:
        """Server settings under which this role's statements or parameters reach the log.

        Migration 0001 turns them off for app_service; a server or role configured
        otherwise (``log_statement = 'all'``, a duration threshold, parameters on error)
        would write ciphertext and session hashes next to their SQL. Empty when safe.
        """
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                """
                SELECT current_setting('log_statement'),
                       current_setting('log_min_duration_statement'),
                       current_setting('log_parameter_max_length'),
                       current_setting('log_parameter_max_length_on_error'),
                       current_setting('log_duration')
                """
            )
            row = await cur.fetchone()
        assert row is not None
        statement, duration_min, parameters, parameters_on_error, duration = row
        leaks = []
        if statement != "none":
            leaks.append(f"log_statement = {statement}")
        if duration_min != "-1":
            leaks.append(f"log_min_duration_statement = {duration_min}")
        if parameters != "0":
            leaks.append(f"log_parameter_max_length = {parameters}")
        if parameters_on_error != "0":
            leaks.append(f"log_parameter_max_length_on_error = {parameters_on_error}")
        if duration != "off":
            leaks.append(f"log_duration = {duration}")
        return leaks

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

        With a ``LeaseHolder`` the same statement takes the session's lease for this
        replica: its enclave, which just opened the session, polls it.

        Raises ``ReplayedEnvelope`` if ``envelope_digest`` was stored before and
        ``InvalidData`` if a constraint refuses a value; in both cases nothing is stored.
        """
        lease_cte = ""
        lease_params: dict[str, Any] = {}
        if self._holder is not None:
            lease_cte = """, new_lease AS (
                    INSERT INTO session_leases (session_hash, holder, holder_url, expires_at)
                    SELECT %(session_hash)s, %(holder)s, %(holder_url)s,
                           now() + make_interval(secs => %(lease_seconds)s)
                    FROM new_session
                )"""
            lease_params = {
                "holder": self._holder.replica_id,
                "holder_url": self._holder.url,
                "lease_seconds": self._holder.lease_seconds,
            }
        # One statement: its CTEs succeed or fail together, so there is never a session
        # without its credentials (foreign keys are checked at the statement's end).
        async with self._pool.connection() as conn:
            await conn.execute(
                f"""
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
                ){lease_cte}
                INSERT INTO ops_logs (session_id, op, request_id, details)
                SELECT id, 'submit', %(request_id)s, %(details)s FROM new_session
                """,  # noqa: S608 - only constant SQL text is interpolated
                {
                    **lease_params,
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
        self,
        session_hash: bytes,
        *,
        request_id: str,
        log: LogBatch | None = None,
        revocations: SealedBlob | None = None,
    ) -> bool:
        """Delete the session and every row of it; True if it existed.

        Credentials, aggregates, audit rows, records and the sealed state go with it
        through ``ON DELETE CASCADE``, in the same statement. A ``revoke`` audit row is
        kept, deliberately not linked to the session (no session id, hash or label). The
        transparency log stays (it is keyed by the hash, not the row); ``log``, the
        enclave's final entries and head, is written by the same statement, and so is
        ``revocations``, the enclave's new sealed revocation list (kept only if newer
        than the stored one; written even when the session row was already gone).
        """
        params: dict[str, Any] = {"session_hash": session_hash, "request_id": request_id}
        extra_ctes = ""
        if log is not None:
            params |= log.params(session_hash)
            extra_ctes += "," + _LOG_INSERT_CTES
        if revocations is not None:
            params |= _revocations_params(revocations)
            extra_ctes += "," + _REVOCATIONS_CTE
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                f"""
                WITH gone AS (
                    DELETE FROM sessions WHERE session_hash = %(session_hash)s RETURNING id
                ){extra_ctes}
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
        sealed_state: SealedBlob | None = None,
    ) -> None:
        """Store a signed report for the session and its 'aggregates' ops-log entry.

        One statement writes both, so a report never lacks its log entry and the
        request costs one round trip. ``sealed_state``, the session's state as of this
        report, is written by the same statement (kept only if newer than the stored
        one): a restored enclave then never reissues this ``seq``. ``SessionNotFound``
        if there is no such session, ``Conflict`` if ``seq`` exists; nothing is stored
        in either case.

        ``payload`` is stored as jsonb: key order and whitespace are not kept, so
        verifiers re-canonicalise it (RFC 8785) before checking ``signature``.
        """
        params: dict[str, Any] = {
            "seq": seq,
            "payload": Jsonb(payload),
            "signature": signature,
            "session_hash": session_hash,
            "request_id": request_id,
            "details": Jsonb({"seq": seq}),
        }
        state_cte = ""
        if sealed_state is not None:
            if sealed_state.session_hash != session_hash:
                raise ValueError("sealed state belongs to another session")
            params |= _state_params(sealed_state)
            # The state is written only alongside the report (FROM report).
            state_cte = f""",
                target AS (SELECT %(session_hash)s::bytea AS session_hash FROM report),
                {_SEALED_STATE_CTE}"""  # noqa: S608 - only constant SQL text is interpolated
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                f"""
                WITH report AS (
                    INSERT INTO aggregates (session_id, seq, payload, signature)
                    SELECT id, %(seq)s, %(payload)s, %(signature)s
                    FROM sessions s WHERE s.session_hash = %(session_hash)s
                        AND {_fence("s.session_hash")}
                    RETURNING session_id
                ){state_cte}
                INSERT INTO ops_logs (session_id, op, request_id, details)
                SELECT session_id, 'aggregates', %(request_id)s, %(details)s FROM report
                """,  # noqa: S608 - only constant SQL text is interpolated
                params | self._fence_params(),
            )
            if cur.rowcount == 0:
                await self._raise_missing_or_lost(conn, session_hash)

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

    # -- enclave identity -----------------------------------------------------------

    @_database_errors
    @_retry_lost_connection
    async def get_enclave_identity(self) -> EnclaveIdentity | None:
        """The stored enclave identity, or None before the first enclave created one."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT key_id, wrapped_key, sealed_keys, created_at FROM enclave_identity"
            )
            row = await cur.fetchone()
        if row is None:
            return None
        return EnclaveIdentity(
            key_id=row[0], wrapped_key=bytes(row[1]), sealed_keys=bytes(row[2]), created_at=row[3]
        )

    @_database_errors
    async def insert_enclave_identity(
        self, *, key_id: str, wrapped_key: bytes, sealed_keys: bytes
    ) -> bool:
        """Store the enclave identity if none is stored yet; True if this call stored it.

        False means another parent stored one first (its enclave won the creation race):
        the caller must unlock with that one (``get_enclave_identity``). Never replaces.
        """
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                """
                INSERT INTO enclave_identity (key_id, wrapped_key, sealed_keys)
                VALUES (%s, %s, %s)
                ON CONFLICT (singleton) DO NOTHING
                """,
                (key_id, wrapped_key, sealed_keys),
            )
            return cur.rowcount == 1

    # -- sealed session states ------------------------------------------------------

    @_database_errors
    async def store_sealed_state(self, state: SealedBlob) -> bool:
        """Keep ``state`` as its session's sealed state unless a newer version is stored.

        True if written; False if the stored version is the same or newer (nothing
        changes). ``SessionNotFound`` if the session is not stored (never was, revoked
        or purged): a state is never kept without its session. ``LeaseLost`` if this
        replica does not hold the session's lease (leases in use).
        """
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                f"""
                WITH found AS (
                    SELECT session_hash FROM sessions WHERE session_hash = %(session_hash)s
                ), target AS (
                    SELECT session_hash FROM found WHERE {_fence("found.session_hash")}
                ),{_SEALED_STATE_CTE}
                SELECT (SELECT count(*) FROM found), (SELECT count(*) FROM target),
                       (SELECT count(*) FROM state_row)
                """,  # noqa: S608 - only constant SQL text is interpolated
                {
                    "session_hash": state.session_hash,
                    **_state_params(state),
                    **self._fence_params(),
                },
            )
            row = await cur.fetchone()
        found, held, written = (0, 0, 0) if row is None else (int(row[0]), int(row[1]), int(row[2]))
        if not found:
            raise SessionNotFound("no such session")
        if not held:
            raise LeaseLost("another replica holds this session's lease")
        return written > 0

    @_database_errors
    async def store_sealed_states(self, states: Sequence[SealedBlob]) -> int:
        """Keep a batch of sealed states (a checkpoint) in one statement; how many were written.

        Per session the highest version of the batch is considered and kept unless a
        newer one is stored. States of sessions that are not stored (revoked or purged
        since the enclave sealed them), or whose lease another replica holds now, are
        skipped, not errors.
        """
        if not states:
            return 0
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                f"""
                INSERT INTO sealed_sessions (session_hash, version, expires_at, sealed)
                SELECT DISTINCT ON (batch.session_hash)
                       batch.session_hash, batch.version, batch.expires_at, batch.sealed
                FROM unnest(%(hashes)s::bytea[], %(versions)s::bigint[],
                            %(expiries)s::timestamptz[], %(blobs)s::bytea[])
                     AS batch(session_hash, version, expires_at, sealed)
                JOIN sessions s ON s.session_hash = batch.session_hash
                WHERE {_fence("s.session_hash")}
                ORDER BY batch.session_hash, batch.version DESC
                ON CONFLICT (session_hash) DO UPDATE
                    SET version = excluded.version, expires_at = excluded.expires_at,
                        sealed = excluded.sealed, updated_at = now()
                    WHERE excluded.version > sealed_sessions.version
                """,  # noqa: S608 - only constant SQL text is interpolated
                {
                    "hashes": [state.session_hash for state in states],
                    "versions": [state.version for state in states],
                    "expiries": [state.expires_at for state in states],
                    "blobs": [state.sealed for state in states],
                    **self._fence_params(),
                },
            )
            return max(cur.rowcount, 0)

    @_database_errors
    @_retry_lost_connection
    async def list_sealed_states(
        self,
        *,
        now: datetime,
        after: bytes | None = None,
        max_bytes: int,
        max_rows: int = 1000,
        held_only: bool = False,
    ) -> list[SealedBlob]:
        """One page of unexpired sealed states, by session hash after ``after``.

        The page's blobs add up to at most ``max_bytes``, except that it always holds at
        least one state when any is left (a single state is at most 3 MiB, one frame).
        Page on with ``after`` = the last hash returned; an empty page is the end.
        ``held_only``: only sessions whose lease this replica holds (leases in use).
        """
        if max_bytes < 1 or max_rows < 1:
            raise ValueError("max_bytes and max_rows must be positive")
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                f"""
                SELECT session_hash, version, expires_at, sealed FROM (
                    SELECT session_hash, version, expires_at, sealed,
                           sum(octet_length(sealed)) OVER (ORDER BY session_hash) AS running,
                           row_number() OVER (ORDER BY session_hash) AS position
                    FROM sealed_sessions
                    -- The empty bytea sorts before every hash: the first page.
                    WHERE expires_at > %(now)s AND session_hash > %(after)s
                        AND (NOT %(held_only)s OR {_fence("sealed_sessions.session_hash")})
                    ORDER BY session_hash
                    LIMIT %(max_rows)s
                ) AS page
                WHERE running <= %(max_bytes)s OR position = 1
                ORDER BY session_hash
                """,  # noqa: S608 - only constant SQL text is interpolated
                {
                    **self._fence_params(),
                    "held_only": held_only,
                    "now": _require_aware(now),
                    "after": b"" if after is None else after,
                    "max_rows": max_rows,
                    "max_bytes": max_bytes,
                },
            )
            rows = await cur.fetchall()
        return [
            SealedBlob(
                session_hash=bytes(row[0]), version=row[1], expires_at=row[2], sealed=bytes(row[3])
            )
            for row in rows
        ]

    async def sealed_state_batches(
        self, *, now: datetime, max_batch_bytes: int, held_only: bool = False
    ) -> AsyncIterator[list[SealedBlob]]:
        """Every unexpired sealed state, in batches whose blobs add up to < ``max_batch_bytes``.

        A state alone larger than that forms a batch of its own. Each batch is read on
        its own connection checkout, so none is held while the caller uses a batch.
        """
        after: bytes | None = None
        while True:
            page = await self.list_sealed_states(
                now=now,
                after=after,
                max_bytes=max_batch_bytes - 1,
                max_rows=_SEALED_PAGE_ROWS,
                held_only=held_only,
            )
            if not page:
                return
            yield page
            after = page[-1].session_hash

    @_database_errors
    @_retry_lost_connection
    async def get_sealed_state(self, session_hash: bytes) -> SealedBlob | None:
        """The stored sealed state of that session, or None."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT session_hash, version, expires_at, sealed FROM sealed_sessions"
                " WHERE session_hash = %s",
                (session_hash,),
            )
            row = await cur.fetchone()
        if row is None:
            return None
        return SealedBlob(
            session_hash=bytes(row[0]), version=row[1], expires_at=row[2], sealed=bytes(row[3])
        )

    # -- sealed revocation list -----------------------------------------------------

    @_database_errors
    async def store_revocations(self, revocations: SealedBlob) -> bool:
        """Keep the sealed revocation list unless a newer version is stored; True if written."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                f"WITH{_REVOCATIONS_CTE} SELECT count(*) FROM revocations_row",  # noqa: S608
                _revocations_params(revocations),
            )
            row = await cur.fetchone()
        return bool(row and row[0])

    @_database_errors
    @_retry_lost_connection
    async def get_revocations(self) -> SealedBlob | None:
        """The stored sealed revocation list, or None before the first revoke."""
        async with self._pool.connection() as conn:
            cur = await conn.execute("SELECT version, sealed FROM sealed_revocations")
            row = await cur.fetchone()
        if row is None:
            return None
        return SealedBlob(
            session_hash=_NO_SESSION,
            version=row[0],
            expires_at=datetime.fromtimestamp(0, UTC),
            sealed=bytes(row[1]),
        )

    # -- session leases (replicas) ---------------------------------------------------

    def _require_holder(self) -> LeaseHolder:
        if self._holder is None:
            raise ValueError("this store was opened without a LeaseHolder")
        return self._holder

    def _holder_params(self) -> dict[str, Any]:
        holder = self._require_holder()
        return {
            "holder": holder.replica_id,
            "holder_url": holder.url,
            "lease_seconds": holder.lease_seconds,
        }

    async def _raise_missing_or_lost(
        self, conn: AsyncConnection[TupleRow], session_hash: bytes
    ) -> None:
        """After a fenced write wrote nothing: ``SessionNotFound`` or ``LeaseLost``."""
        cur = await conn.execute("SELECT 1 FROM sessions WHERE session_hash = %s", (session_hash,))
        if await cur.fetchone() is None or self._holder is None:
            raise SessionNotFound("no such session")
        raise LeaseLost("another replica holds this session's lease")

    @_database_errors
    async def renew_leases(self) -> frozenset[bytes]:
        """Extend every lease this replica holds by one lease period; the hashes held.

        One statement. A lease that expired but was not taken over is still ours and
        is renewed; one another replica took over is not ours any more (not returned).
        """
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                """
                UPDATE session_leases
                SET expires_at = now() + make_interval(secs => %(lease_seconds)s),
                    holder_url = %(holder_url)s
                WHERE holder = %(holder)s
                RETURNING session_hash
                """,
                self._holder_params(),
            )
            rows = await cur.fetchall()
        return frozenset(bytes(row[0]) for row in rows)

    @_database_errors
    async def acquire_leases(self, *, limit: int) -> list[bytes]:
        """Take up to ``limit`` leases that are free (no row) or expired; the hashes taken.

        Expired rows are locked with ``FOR UPDATE SKIP LOCKED``: a row another replica
        is taking right now is skipped, not waited for, so concurrent sweeps split the
        work and never take the same lease. A free session (no lease row) is inserted
        with ``ON CONFLICT DO NOTHING``: of two replicas inserting it, one wins. Only
        unexpired sessions are taken; a valid lease is never stolen.
        """
        if limit < 1:
            raise ValueError("limit must be positive")
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                """
                WITH expired AS (
                    SELECT l.session_hash FROM session_leases l
                    JOIN sessions s ON s.session_hash = l.session_hash
                    WHERE l.expires_at <= now() AND s.expires_at > now()
                    ORDER BY l.expires_at
                    LIMIT %(limit)s
                    FOR UPDATE OF l SKIP LOCKED
                ), taken AS (
                    UPDATE session_leases l
                    SET holder = %(holder)s, holder_url = %(holder_url)s,
                        expires_at = now() + make_interval(secs => %(lease_seconds)s),
                        acquired_at = now()
                    FROM expired WHERE l.session_hash = expired.session_hash
                    RETURNING l.session_hash
                ), free AS (
                    INSERT INTO session_leases (session_hash, holder, holder_url, expires_at)
                    SELECT s.session_hash, %(holder)s, %(holder_url)s,
                           now() + make_interval(secs => %(lease_seconds)s)
                    FROM sessions s
                    WHERE s.expires_at > now() AND NOT EXISTS (
                        SELECT 1 FROM session_leases l WHERE l.session_hash = s.session_hash
                    )
                    ORDER BY s.expires_at
                    LIMIT greatest(%(limit)s - (SELECT count(*) FROM expired), 0)
                    ON CONFLICT (session_hash) DO NOTHING
                    RETURNING session_hash
                )
                SELECT session_hash FROM taken UNION ALL SELECT session_hash FROM free
                """,
                {**self._holder_params(), "limit": limit},
            )
            rows = await cur.fetchall()
        return [bytes(row[0]) for row in rows]

    @_database_errors
    async def acquire_lease(self, session_hash: bytes) -> bool:
        """Take one live session's lease now if it is free, expired or already ours.

        True if this replica holds it afterwards. A valid lease of another replica is
        never taken (False), nor is the lease of an unknown or expired session.
        """
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                """
                INSERT INTO session_leases (session_hash, holder, holder_url, expires_at)
                SELECT session_hash, %(holder)s, %(holder_url)s,
                       now() + make_interval(secs => %(lease_seconds)s)
                FROM sessions WHERE session_hash = %(session_hash)s AND expires_at > now()
                ON CONFLICT (session_hash) DO UPDATE
                    SET holder = excluded.holder, holder_url = excluded.holder_url,
                        expires_at = excluded.expires_at,
                        acquired_at = CASE WHEN session_leases.holder = excluded.holder
                                           THEN session_leases.acquired_at ELSE now() END
                    WHERE session_leases.holder = excluded.holder
                       OR session_leases.expires_at <= now()
                RETURNING 1
                """,
                {**self._holder_params(), "session_hash": session_hash},
            )
            return cur.rowcount == 1

    @_database_errors
    async def release_leases(self, session_hashes: Sequence[bytes] | None = None) -> int:
        """Let this replica's leases (all, or those named) expire now; how many.

        A replica shutting down calls it so the others take its sessions over at their
        next sweep instead of after a whole lease period.
        """
        holder = self._require_holder()
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                """
                UPDATE session_leases SET expires_at = least(expires_at, now())
                WHERE holder = %(holder)s
                  AND (%(all)s OR session_hash = ANY(%(hashes)s::bytea[]))
                """,
                {
                    "holder": holder.replica_id,
                    "all": session_hashes is None,
                    "hashes": list(session_hashes or ()),
                },
            )
            return max(cur.rowcount, 0)

    @_database_errors
    @_retry_lost_connection
    async def get_lease(self, session_hash: bytes) -> Lease | None:
        """The lease of a live session (holder None if it has none); None if no such session."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                """
                SELECT l.holder, l.holder_url,
                       coalesce(extract(epoch FROM l.expires_at - now()), 0)::float8
                FROM sessions s
                LEFT JOIN session_leases l ON l.session_hash = s.session_hash
                WHERE s.session_hash = %s AND s.expires_at > now()
                """,
                (session_hash,),
            )
            row = await cur.fetchone()
        if row is None:
            return None
        return Lease(holder=row[0], holder_url=row[1], remaining=float(row[2]))

    @_database_errors
    @_retry_lost_connection
    async def replica_secret(self) -> bytes:
        """The 32-byte secret parents authenticate forwarded requests with (migration 0005)."""
        async with self._pool.connection() as conn:
            cur = await conn.execute("SELECT secret FROM replica_secret")
            row = await cur.fetchone()
        if row is None:  # inserted by the migration, never deleted
            raise StoreUnavailable("the replica secret is missing")
        return bytes(row[0])

    # -- health ---------------------------------------------------------------------

    @_database_errors
    @_retry_lost_connection
    async def ping(self) -> None:
        """Round-trip to the database; ``StoreUnavailable`` if it cannot be reached."""
        async with self._pool.connection() as conn:
            await conn.execute("SELECT 1")
