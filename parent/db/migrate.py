"""Apply the versioned SQL migrations in ``parent/db/migrations``. Side: parent.

Rules, all enforced here:

- files are named ``NNNN_name.sql`` and applied in numeric order, each inside its own
  transaction together with its ``schema_migrations`` row, so a failing file leaves
  nothing behind and is retried whole next time;
- the SHA-256 of every applied file is stored; if an applied file has changed since, or
  the database holds a migration this code does not know (an older build started
  against a newer schema), nothing is applied and ``MigrationError`` is raised;
- a session-level advisory lock serialises concurrent runs (two parents starting at
  once): the second waits, then finds nothing left to do;
- re-running is a no-op that returns an empty list.

Migrations run as an administrative role (they create roles and set role options);
the app itself connects as ``app_service``, which cannot run DDL.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import psycopg
from psycopg.rows import TupleRow

from parent.db.errors import MigrationError, StoreUnavailable

__all__ = ["Migration", "load_migrations", "main", "migrate"]

# Arbitrary constant naming "perf-aggregator schema migration" in the advisory lock
# space (ASCII "perfmigr"); advisory locks are per database.
_ADVISORY_LOCK_KEY = 0x706572666D696772

_NAME = re.compile(r"^(?P<version>\d{4})_[a-z0-9_]+\.sql$")

_BOOTSTRAP = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    checksum    bytea NOT NULL CHECK (octet_length(checksum) = 32),
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class Migration:
    """One SQL file: its version number, file name, text and SHA-256 of its bytes."""

    version: int
    name: str
    sql: str
    checksum: bytes


def load_migrations(directory: Path | None = None) -> list[Migration]:
    """Read every ``NNNN_*.sql`` file, sorted by version; refuse odd names and duplicates.

    ``directory`` defaults to the migrations shipped in this package.
    """
    if directory is None:
        files = [
            (entry.name, entry.read_bytes())
            for entry in resources.files("parent.db").joinpath("migrations").iterdir()
            if entry.name.endswith(".sql")
        ]
    else:
        files = [(path.name, path.read_bytes()) for path in directory.glob("*.sql")]
    migrations: dict[int, Migration] = {}
    for name, data in files:
        match = _NAME.match(name)
        if match is None:
            raise MigrationError(f"migration file name not of the form NNNN_name.sql: {name}")
        version = int(match["version"])
        if version in migrations:
            raise MigrationError(f"two migration files share version {version:04d}")
        migrations[version] = Migration(
            version=version,
            name=name,
            sql=data.decode("utf-8"),
            checksum=hashlib.sha256(data).digest(),
        )
    return [migrations[version] for version in sorted(migrations)]


def migrate(
    conninfo: str,
    *,
    directory: Path | None = None,
    lock_timeout_s: float = 60.0,
) -> list[str]:
    """Apply pending migrations to the database at ``conninfo``; return the applied names.

    Raises ``MigrationError`` when the recorded history does not match the files, and
    ``StoreUnavailable`` when the database cannot be reached or the lock not taken in
    ``lock_timeout_s``.
    """
    migrations = load_migrations(directory)
    try:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            # lock_timeout bounds the wait for the advisory lock held by another migrator.
            conn.execute(
                "SELECT set_config('lock_timeout', %s, false)",
                (f"{int(lock_timeout_s * 1000)}ms",),
            )
            conn.execute("SELECT pg_advisory_lock(%s)", (_ADVISORY_LOCK_KEY,))
            # Back to no limit: a migration may legitimately wait on table locks.
            conn.execute("SELECT set_config('lock_timeout', '0', false)")
            try:
                return _apply_locked(conn, migrations)
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (_ADVISORY_LOCK_KEY,))
    except psycopg.errors.LockNotAvailable as exc:
        raise StoreUnavailable("another migration holds the lock; timed out waiting") from exc
    except psycopg.OperationalError as exc:
        raise StoreUnavailable("database unavailable for migration") from exc


def _apply_locked(conn: psycopg.Connection[TupleRow], migrations: list[Migration]) -> list[str]:
    conn.execute(_BOOTSTRAP)
    applied: dict[int, tuple[str, bytes]] = {
        int(version): (str(name), bytes(checksum))
        for version, name, checksum in conn.execute(
            "SELECT version, name, checksum FROM schema_migrations ORDER BY version"
        ).fetchall()
    }
    known = {migration.version: migration for migration in migrations}
    # Check the whole history before applying anything: fail closed on any mismatch.
    for version, (name, checksum) in applied.items():
        migration = known.get(version)
        if migration is None:
            raise MigrationError(
                f"database has migration {name} that this code does not know; "
                "refusing to run an older schema"
            )
        if migration.name != name or migration.checksum != checksum:
            raise MigrationError(
                f"migration {migration.name} changed after it was applied; "
                "add a new migration instead of editing an applied one"
            )
    done: list[str] = []
    for migration in migrations:
        if migration.version in applied:
            continue
        try:
            with conn.transaction():
                # No parameters, so psycopg sends the file with the simple query
                # protocol, which accepts several statements in one call.
                conn.execute(migration.sql.encode("utf-8"))
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                    (migration.version, migration.name, migration.checksum),
                )
        except psycopg.OperationalError:
            raise  # connection lost: StoreUnavailable in migrate()
        except psycopg.Error as exc:
            # Migration errors are about our own SQL text, never about user data.
            raise MigrationError(
                f"migration {migration.name} failed ({exc.sqlstate}: "
                f"{exc.diag.message_primary}); nothing of it was applied"
            ) from exc
        done.append(migration.name)
    return done


def main(argv: Sequence[str] | None = None, *, conninfo: str | None = None) -> int:
    """``python -m parent migrate``: apply pending migrations and print their names.

    The composition root passes ``conninfo`` from its config (``DATABASE_URL``, or the
    embedded server's admin conninfo); ``--database-url`` overrides it. Returns the
    process exit status. The conninfo is never printed: it may carry a password.
    """
    parser = argparse.ArgumentParser(
        prog="python -m parent migrate", description="Apply pending database migrations."
    )
    parser.add_argument(
        "--database-url",
        help="admin conninfo or postgresql:// URL (must be allowed to create roles)",
    )
    args = parser.parse_args(argv)
    target = args.database_url or conninfo
    if not target:
        print("migrate: no database given (--database-url or DATABASE_URL)", file=sys.stderr)
        return 2
    try:
        applied = migrate(target)
    except (MigrationError, StoreUnavailable) as exc:
        print(f"migrate: {exc}", file=sys.stderr)
        return 1
    for name in applied:
        print(f"applied {name}")
    if not applied:
        print("schema up to date")
    return 0
