"""Schema migrations: applied once, in order, atomically, checksummed, race-free. Side: parent."""

from __future__ import annotations

import hashlib
import shutil
import string
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

import parent.db.migrate as migrate_module
from parent.db.errors import MigrationError, StoreUnavailable
from parent.db.migrate import load_migrations, main, migrate
from shared.encoding import b64decode, b64encode
from tests.support.postgres import PgCluster, PgDatabase

SHIPPED = [migration.name for migration in load_migrations()]


@pytest.fixture
def empty_db(pg_cluster: PgCluster) -> Iterator[str]:
    """Admin conninfo of a brand-new database that no migration has touched."""
    name = f"pa_empty_{int(time.monotonic_ns())}"
    with psycopg.connect(pg_cluster.admin_conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
    try:
        yield pg_cluster.conninfo(name)
    finally:
        with psycopg.connect(pg_cluster.admin_conninfo, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def migrations_dir(tmp_path: Path) -> Path:
    """A writable copy of the shipped migrations."""
    target = tmp_path / "migrations"
    target.mkdir()
    for migration in load_migrations():
        (target / migration.name).write_text(migration.sql)
    return target


def _applied(conninfo: str) -> list[tuple[str, bytes]]:
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute("SELECT name, checksum FROM schema_migrations ORDER BY version")
        return [(str(name), bytes(checksum)) for name, checksum in rows.fetchall()]


def _table_exists(conninfo: str, table: str) -> bool:
    with psycopg.connect(conninfo) as conn:
        row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()
    return bool(row and row[0])


def test_apply_from_scratch(empty_db: str) -> None:
    """A fresh database gets every shipped migration, each recorded with its SHA-256."""
    assert SHIPPED[:1] == ["0001_initial.sql"]
    assert migrate(empty_db) == SHIPPED
    for table in ("users", "sessions", "credentials", "aggregates", "merkle_logs", "ops_logs"):
        assert _table_exists(empty_db, table)
    assert _table_exists(empty_db, "records")
    for table in ("enclave_identity", "sealed_sessions", "sealed_revocations"):
        assert _table_exists(empty_db, table)
    expected = [(m.name, hashlib.sha256(m.sql.encode()).digest()) for m in load_migrations()]
    assert _applied(empty_db) == expected


def test_rerun_is_a_noop(empty_db: str) -> None:
    """Migrating an up-to-date database applies nothing and changes no history."""
    migrate(empty_db)
    before = _applied(empty_db)
    assert migrate(empty_db) == []
    assert _applied(empty_db) == before


def test_changed_applied_migration_is_refused(empty_db: str, migrations_dir: Path) -> None:
    """Editing an already-applied file stops migration before anything new is applied."""
    migrate(empty_db, directory=migrations_dir)
    applied_file = migrations_dir / SHIPPED[0]
    applied_file.write_text(applied_file.read_text() + "\n-- an innocent-looking edit\n")
    (migrations_dir / "0999_new.sql").write_text("CREATE TABLE added_later (id int);")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        migrate(empty_db, directory=migrations_dir)
    assert not _table_exists(empty_db, "added_later")


def test_unknown_applied_migration_is_refused(empty_db: str, migrations_dir: Path) -> None:
    """Code older than the database (an unknown applied migration) refuses to run."""
    (migrations_dir / "0999_newer.sql").write_text("CREATE TABLE newer (id int);")
    migrate(empty_db, directory=migrations_dir)
    with pytest.raises(MigrationError, match="does not know"):
        migrate(empty_db)


def test_failing_migration_leaves_nothing_behind(empty_db: str, migrations_dir: Path) -> None:
    """A migration that fails half-way is rolled back whole and retried whole next time."""
    broken = migrations_dir / "0999_broken.sql"
    broken.write_text("CREATE TABLE half_done (id int);\nTHIS IS NOT SQL;\n")
    with pytest.raises(MigrationError, match=r"0999_broken\.sql failed"):
        migrate(empty_db, directory=migrations_dir)
    assert [name for name, _ in _applied(empty_db)] == SHIPPED
    assert not _table_exists(empty_db, "half_done")
    broken.write_text("CREATE TABLE half_done (id int);\n")
    assert migrate(empty_db, directory=migrations_dir) == ["0999_broken.sql"]
    assert _table_exists(empty_db, "half_done")


def test_concurrent_migrations_apply_once(empty_db: str) -> None:
    """Two migrators racing on one database: one applies everything, the other nothing."""
    key = migrate_module._ADVISORY_LOCK_KEY
    # Hold the lock so both migrators are provably waiting on it at the same time.
    with ThreadPoolExecutor(max_workers=2) as pool:
        with psycopg.connect(empty_db, autocommit=True) as holder:
            holder.execute("SELECT pg_advisory_lock(%s)", (key,))
            futures = [pool.submit(migrate, empty_db) for _ in range(2)]
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                row = holder.execute(
                    """
                    SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database
                    WHERE l.locktype = 'advisory' AND NOT l.granted
                      AND d.datname = current_database()
                    """
                ).fetchone()
                if row and row[0] == 2:
                    break
                time.sleep(0.02)
            else:
                pytest.fail("migrators never waited on the advisory lock")
            holder.execute("SELECT pg_advisory_unlock(%s)", (key,))
        # result() re-raises anything a migrator raised.
        results = [future.result(timeout=30) for future in futures]
    assert sorted(results, key=len) == [[], SHIPPED]
    assert [name for name, _ in _applied(empty_db)] == SHIPPED


def test_lock_wait_is_bounded(empty_db: str) -> None:
    """A migrator that cannot get the lock in time reports StoreUnavailable, not a hang."""
    with psycopg.connect(empty_db, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (migrate_module._ADVISORY_LOCK_KEY,))
        with pytest.raises(StoreUnavailable, match="lock"):
            migrate(empty_db, lock_timeout_s=0.2)


def test_unreachable_database_is_store_unavailable(tmp_path: Path) -> None:
    """Migrating a database that cannot be reached raises StoreUnavailable."""
    with pytest.raises(StoreUnavailable):
        migrate(f"host={tmp_path} dbname=nothing user=nobody connect_timeout=2")


def test_bad_file_names_and_duplicates_refused(tmp_path: Path, migrations_dir: Path) -> None:
    """Files not named NNNN_name.sql, or sharing a version, are refused."""
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "1_short.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=r"NNNN_name\.sql"):
        load_migrations(odd)
    shutil.copy(migrations_dir / SHIPPED[0], migrations_dir / "0001_twin.sql")
    with pytest.raises(MigrationError, match="share version"):
        load_migrations(migrations_dir)


def test_every_session_foreign_key_cascades(pg_db: PgDatabase) -> None:
    """Every table that references sessions is ON DELETE CASCADE, so revoke and purge reach it.

    merkle_logs and the transparency rows of ops_logs are keyed by the session hash
    instead (migration 0003): the signed log outlives its session, by design. The
    sealed state (0004) references the hash too, but cascades: a revoked session must
    leave nothing to restore.
    """
    with psycopg.connect(pg_db.admin_conninfo) as conn:
        rows = conn.execute(
            """
            SELECT conrelid::regclass::text, confdeltype
            FROM pg_constraint
            WHERE contype = 'f' AND confrelid = 'sessions'::regclass
            ORDER BY 1
            """
        ).fetchall()
    assert {table for table, _ in rows} == {
        "aggregates",
        "credentials",
        "ops_logs",
        "records",
        "sealed_sessions",
        "session_leases",
    }
    assert {action for _, action in rows} == {"c"}


def test_app_role_has_statement_and_parameter_logging_off(pg_db: PgDatabase) -> None:
    """app_service sessions start with statement, duration and parameter logging off."""
    with psycopg.connect(pg_db.app_conninfo) as conn:
        settings = {
            name: conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()
            for name in (
                "log_statement",
                "log_min_duration_statement",
                "log_parameter_max_length",
                "log_parameter_max_length_on_error",
                "log_error_verbosity",
            )
        }
    assert settings == {
        "log_statement": ("none",),
        "log_min_duration_statement": ("-1",),
        "log_parameter_max_length": ("0",),
        "log_parameter_max_length_on_error": ("0",),
        "log_error_verbosity": ("terse",),
    }


def test_roles_are_least_privilege(pg_db: PgDatabase) -> None:
    """app_service logs in without superuser/createdb/createrole; the operator cannot log in."""
    with psycopg.connect(pg_db.admin_conninfo) as conn:
        rows = conn.execute(
            """
            SELECT rolname, rolcanlogin, rolsuper, rolcreatedb, rolcreaterole, rolbypassrls
            FROM pg_roles WHERE rolname IN ('app_service', 'operator_readonly') ORDER BY 1
            """
        ).fetchall()
    assert rows == [
        ("app_service", True, False, False, False, False),
        ("operator_readonly", False, False, False, False, False),
    ]


_SEALED_TABLES = {
    "enclave_identity": ("singleton", "key_id", "wrapped_key", "sealed_keys", "created_at"),
    "sealed_sessions": ("session_hash", "version", "expires_at", "sealed", "updated_at"),
    "sealed_revocations": ("singleton", "version", "sealed", "updated_at"),
}


def test_sealed_state_privileges_are_least(pg_db: PgDatabase) -> None:
    """app_service writes the identity once and upserts states; the operator reads no blob."""
    with psycopg.connect(pg_db.admin_conninfo) as conn:

        def table_privileges(role: str, table: str) -> set[str]:
            return {
                privilege
                for privilege in ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES")
                if conn.execute(
                    "SELECT has_table_privilege(%s, %s, %s)", (role, table, privilege)
                ).fetchone()
                == (True,)
            }

        def columns(role: str, table: str, privilege: str) -> set[str]:
            return {
                column
                for column in _SEALED_TABLES[table]
                if conn.execute(
                    "SELECT has_column_privilege(%s, %s, %s, %s)", (role, table, column, privilege)
                ).fetchone()
                == (True,)
            }

        app = {table: table_privileges("app_service", table) for table in _SEALED_TABLES}
        assert app == {
            "enclave_identity": {"SELECT", "INSERT"},  # written once, never replaced
            "sealed_sessions": {"SELECT", "INSERT"},  # deleted only by the cascade
            "sealed_revocations": {"SELECT", "INSERT"},
        }
        assert columns("app_service", "enclave_identity", "UPDATE") == set()
        assert columns("app_service", "sealed_sessions", "UPDATE") == {
            "version",
            "expires_at",
            "sealed",
            "updated_at",
        }
        assert columns("app_service", "sealed_revocations", "UPDATE") == {
            "version",
            "sealed",
            "updated_at",
        }
        operator = {
            table: columns("operator_readonly", table, "SELECT") for table in _SEALED_TABLES
        }
        assert operator == {
            "enclave_identity": {"key_id", "created_at"},
            "sealed_sessions": {"session_hash", "version", "expires_at", "updated_at"},
            "sealed_revocations": {"version", "updated_at"},
        }
        # Whole-table SELECT would include the blobs: the operator has none.
        assert all(table_privileges("operator_readonly", t) == set() for t in _SEALED_TABLES)


def test_lease_privileges_are_least(pg_db: PgDatabase) -> None:
    """app_service takes and renews leases (holder columns only) and reads the replica
    secret; the operator sees every lease column and never the secret."""
    lease_columns = ("session_hash", "holder", "holder_url", "expires_at", "acquired_at")
    with psycopg.connect(pg_db.admin_conninfo) as conn:

        def granted(role: str, table: str, privilege: str, column: str | None = None) -> bool:
            if column is None:
                query, params = "SELECT has_table_privilege(%s, %s, %s)", (role, table, privilege)
            else:
                query = "SELECT has_column_privilege(%s, %s, %s, %s)"
                params = (role, table, column, privilege)  # type: ignore[assignment]
            return conn.execute(query, params).fetchone() == (True,)

        kinds = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES")
        assert {k for k in kinds if granted("app_service", "session_leases", k)} == {
            "SELECT",
            "INSERT",
        }
        assert {
            c for c in lease_columns if granted("app_service", "session_leases", "UPDATE", c)
        } == {
            "holder",
            "holder_url",
            "expires_at",
            "acquired_at",
        }
        assert {k for k in kinds if granted("app_service", "replica_secret", k)} == {"SELECT"}
        assert {k for k in kinds if granted("operator_readonly", "session_leases", k)} == {"SELECT"}
        assert not any(granted("operator_readonly", "replica_secret", k) for k in kinds)
        (size,) = conn.execute("SELECT octet_length(secret) FROM replica_secret").fetchone() or (0,)
        assert size == 32


def test_main_prints_what_it_applied(empty_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m parent migrate` prints each applied file, then "up to date" on a re-run."""
    assert main(["--database-url", empty_db]) == 0
    assert capsys.readouterr().out.splitlines() == [f"applied {name}" for name in SHIPPED]
    assert main([], conninfo=empty_db) == 0
    assert capsys.readouterr().out.strip() == "schema up to date"


def test_main_without_database_fails(capsys: pytest.CaptureFixture[str]) -> None:
    """Without a database to migrate, main() exits 2 with a message."""
    assert main([]) == 2
    assert "no database given" in capsys.readouterr().err


def _accepted_by_shared(value: str) -> bool:
    try:
        b64decode(value)
    except ValueError:
        return False
    return True


# Near-misses of base64 are the interesting inputs: its alphabet plus padding, real
# encodings, and the same with one character changed.
_BASE64_LIKE = st.one_of(
    st.text(alphabet=string.ascii_letters + string.digits + "+/=", max_size=12),
    st.binary(max_size=10).map(b64encode),
    st.tuples(st.binary(min_size=1, max_size=10).map(b64encode), st.integers(0, 15)).map(
        lambda pair: pair[0][: pair[1] % len(pair[0])] + "A" + pair[0][pair[1] % len(pair[0]) + 1 :]
    ),
    st.text(max_size=8),
)


# The database is only read, so sharing one per-test database across examples is safe.
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(values=st.lists(_BASE64_LIKE, min_size=1, max_size=40))
def test_base64_check_agrees_with_shared_decoder(pg_db: PgDatabase, values: list[str]) -> None:
    """The schema's base64 CHECK accepts exactly what shared.encoding.b64decode accepts."""
    values = [value.replace("\x00", "") for value in values]  # text cannot hold NUL
    with psycopg.connect(pg_db.admin_conninfo) as conn:
        rows = conn.execute(
            "SELECT is_canonical_base64(v) FROM unnest(%s::text[]) AS v", (values,)
        ).fetchall()
    assert [bool(row[0]) for row in rows] == [_accepted_by_shared(value) for value in values]
