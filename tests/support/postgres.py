"""Pytest fixtures for one real PostgreSQL per test run. Side: tests of the parent.

- ``pg_cluster`` (session): ONE server for the whole run. With ``DATABASE_URL`` set it
  must be an admin (superuser) URL of a disposable server; otherwise an embedded
  pgserver PostgreSQL is started in a temporary directory and removed afterwards. A
  template database is migrated once per run.
- ``pg_db`` (function): a fresh database cloned from that template (tens of ms), with
  admin and app_service conninfos; dropped after the test.
- ``store`` (function): a connected ``Store`` on ``pg_db`` as app_service; its pool is
  closed at teardown.

Helpers run ``pg_dump`` with a binary matching the server's major version and locate
the data directory and server log, so tests can scan what PostgreSQL wrote to disk.

With ``DATABASE_URL``, app_service gets a random password for the run (``ALTER ROLE``),
because the server's authentication is unknown; never point it at a shared server.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import pytest_asyncio
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from parent.db.embedded import APP_USER, EmbeddedPostgres, bundled_bin_dir
from parent.db.migrate import migrate
from parent.db.store import Store

__all__ = [
    "PgCluster",
    "PgDatabase",
    "PgToolMissing",
    "admin_query",
    "find_pg_dump",
    "pg_cluster",
    "pg_db",
    "pg_dump",
    "row_counts",
    "store",
]

# Every table of the schema, for "nothing half-stored" assertions.
TABLES = (
    "users",
    "sessions",
    "credentials",
    "aggregates",
    "merkle_logs",
    "ops_logs",
    "records",
    "enclave_identity",
    "sealed_sessions",
    "sealed_revocations",
)


class PgToolMissing(RuntimeError):
    """No PostgreSQL client binary matching the server's major version was found."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PgCluster:
    """The run's PostgreSQL server."""

    admin_conninfo: str  # superuser, maintenance database
    server_major: int
    template: str  # migrated template database
    data_dir: Path | None  # None when the server is not on this machine
    log_path: Path | None  # None when unknown (external server)
    embedded: EmbeddedPostgres | None
    app_password: str | None  # set for an external server, None for embedded (trust)

    def conninfo(self, dbname: str, *, user: str | None = None) -> str:
        """Conninfo for ``dbname`` as the admin, or as ``user`` (app_service gets its password)."""
        if user is None:
            return _replace(self.admin_conninfo, dbname=dbname)
        password = self.app_password if user == APP_USER else None
        return _replace(self.admin_conninfo, dbname=dbname, user=user, password=password)


@dataclass(frozen=True, slots=True, kw_only=True)
class PgDatabase:
    """A fresh migrated database for one test."""

    name: str
    admin_conninfo: str
    app_conninfo: str
    cluster: PgCluster


def _replace(conninfo: str, **changes: str | None) -> str:
    """``conninfo`` with some parameters changed (None removes one)."""
    params = conninfo_to_dict(conninfo)
    for key, value in changes.items():
        if value is None:
            params.pop(key, None)
        else:
            params[key] = value
    return make_conninfo("", **params)


def _server_major(conninfo: str) -> int:
    with psycopg.connect(conninfo) as conn:
        row = conn.execute("SELECT current_setting('server_version_num')::int").fetchone()
    assert row is not None
    return int(row[0]) // 10000


def _external_data_dir(conninfo: str) -> Path | None:
    # Readable only by superusers, and only useful if the server runs on this machine.
    try:
        with psycopg.connect(conninfo) as conn:
            row = conn.execute("SELECT current_setting('data_directory')").fetchone()
    except psycopg.Error:
        return None
    path = Path(str(row[0])) if row else None
    return path if path is not None and path.is_dir() else None


def _create_template(admin: str, name: str) -> None:
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    migrate(_replace(admin, dbname=name))


def _drop_database(admin: str, name: str) -> None:
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """One PostgreSQL for the whole run (``DATABASE_URL`` or embedded), with a migrated template."""
    template = f"pa_template_{secrets.token_hex(4)}"
    # The product reads DATABASE_URL through its config object; tests read it here.
    url = os.environ.get("DATABASE_URL")
    state_dir: Path | None = None
    embedded: EmbeddedPostgres | None = None
    app_password: str | None = None
    if url:
        admin = url
        data_dir = _external_data_dir(admin)
        log_path = None
    else:
        # mkdtemp: short path (the unix socket lives in the data directory) and 0700.
        state_dir = Path(tempfile.mkdtemp(prefix="pa-pg-"))
        embedded = EmbeddedPostgres(state_dir)
        admin = embedded.start_server()
        data_dir = embedded.data_dir
        log_path = embedded.log_path
    try:
        _create_template(admin, template)
        if url:
            app_password = secrets.token_urlsafe(24)
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                        sql.Identifier(APP_USER), sql.Literal(app_password)
                    )
                )
        yield PgCluster(
            admin_conninfo=admin,
            server_major=_server_major(admin),
            template=template,
            data_dir=data_dir,
            log_path=log_path,
            embedded=embedded,
            app_password=app_password,
        )
    finally:
        try:
            _drop_database(admin, template)
        finally:
            if embedded is not None:
                embedded.stop()
            if state_dir is not None:
                shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture
def pg_db(pg_cluster: PgCluster) -> Iterator[PgDatabase]:
    """A fresh database cloned from the migrated template, dropped after the test."""
    name = f"pa_test_{secrets.token_hex(6)}"
    with psycopg.connect(pg_cluster.admin_conninfo, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(pg_cluster.template)
            )
        )
    try:
        yield PgDatabase(
            name=name,
            admin_conninfo=pg_cluster.conninfo(name),
            app_conninfo=pg_cluster.conninfo(name, user=APP_USER),
            cluster=pg_cluster,
        )
    finally:
        _drop_database(pg_cluster.admin_conninfo, name)


@pytest_asyncio.fixture
async def store(pg_db: PgDatabase) -> AsyncIterator[Store]:
    """A Store connected to ``pg_db`` as app_service; the pool is closed at teardown."""
    opened = await Store.open(pg_db.app_conninfo, min_size=1, max_size=4, timeout_s=5.0)
    try:
        yield opened
    finally:
        await opened.close()


def admin_query(db: PgDatabase, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run one query as the admin role (tests read what the app role may not)."""
    with psycopg.connect(db.admin_conninfo) as conn:
        return conn.execute(query.encode(), params).fetchall()


def row_counts(conninfo: str) -> dict[str, int]:
    """Rows in every table of the schema (read as the admin)."""
    with psycopg.connect(conninfo) as conn:
        counts: dict[str, int] = {}
        for table in TABLES:
            row = conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
            ).fetchone()
            counts[table] = int(row[0]) if row else 0
        return counts


def _binary_major(binary: Path) -> int | None:
    try:
        out = subprocess.run(
            [str(binary), "--version"], check=True, capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"\(PostgreSQL\)\s+(\d+)", out)
    return int(match.group(1)) if match else None


def find_pg_dump(cluster: PgCluster) -> Path:
    """A pg_dump whose major version equals the server's: pgserver's bundled one, else PATH."""
    candidates = [bundled_bin_dir() / "pg_dump"]
    on_path = shutil.which("pg_dump")
    if on_path:
        candidates.append(Path(on_path))
    for candidate in candidates:
        if candidate.is_file() and _binary_major(candidate) == cluster.server_major:
            return candidate
    raise PgToolMissing(
        f"no pg_dump for PostgreSQL {cluster.server_major} (looked in pgserver and on PATH)"
    )


def pg_dump(db: PgDatabase) -> bytes:
    """Plain-SQL dump (schema and data) of ``db``; skips the test if no matching pg_dump."""
    try:
        binary = find_pg_dump(db.cluster)
    except PgToolMissing as exc:
        pytest.skip(str(exc))
    result = subprocess.run(
        [str(binary), "--format=plain", "--no-password", f"--dbname={db.admin_conninfo}"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return result.stdout
