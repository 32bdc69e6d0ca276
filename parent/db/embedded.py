"""Embedded PostgreSQL for development, the demo and tests (``DATABASE_URL`` unset). Side: parent.

Wraps ``pgserver`` 0.1.4, which ships PostgreSQL 16.2 binaries (``postgres``,
``initdb``, ``pg_ctl``, ``psql``, ``pg_dump``, ``pg_dumpall``, ``pg_restore``, ...) in
``site-packages/pgserver/pginstall/bin``. What it does, read from its source and
checked on this machine:

- ``get_server(pgdata)`` runs ``initdb --auth=trust --auth-local=trust -U postgres``
  when ``pgdata/PG_VERSION`` is missing, then ``pg_ctl -w -o '-h ""' -o '-k <dir>' -l
  pgdata/log start`` unless ``pgdata/postmaster.pid`` names a live server, which it
  reuses. ``-h ""`` means no TCP listener at all: the only way in is the unix socket
  ``<dir>/.s.PGSQL.5432``. Authentication is ``trust``, so whoever can reach the socket
  is any role; the socket is therefore kept inside the data directory (mode 0700).
- The socket directory is the data directory unless that path is too long for a unix
  socket (108 bytes); then pgserver falls back to ``$XDG_RUNTIME_DIR/python_PostgresServer/
  <hash>`` and, when running as root, makes it world-writable (0777). With trust auth
  that would let every local user in, so :meth:`EmbeddedPostgres.start_server` refuses
  such a path instead (fail closed), and checks after start that the server listens on
  no TCP address other than loopback.
- The server log (postgres stderr; ``logging_collector`` is off) is the file
  ``pgdata/log`` (:attr:`EmbeddedPostgres.log_path`), appended to across restarts.
- As root, pgserver runs PostgreSQL as a system user ``pgserver`` (created with
  ``useradd`` on first use), chowns the data directory to it, and adds o+rx to every
  parent directory of the data directory and to its own install tree so that user
  can reach them. The data directory itself stays 0700.
- ``cleanup_mode="stop"`` (used here) records the pid of each process holding a handle
  in ``pgdata/.handle_pids.json``; the server is stopped (``pg_ctl -w stop``, fast
  mode) when the last holder calls ``cleanup()`` or exits (``atexit``). ``"delete"``
  would also remove the data directory; ``None`` leaves the server running.
- A cross-process lock file lives in ``$XDG_RUNTIME_DIR/python_PostgresServer``
  (``/tmp/runtime-<uid>`` when unset). ``pg_ctl`` start is given 10 s.
- Timings on the dev machine: 0.5-0.6 s for ``initdb`` + start on a fresh directory,
  about 0.15 s to restart an existing one, 0.1 s to stop; creating the database and
  applying the migrations adds about 0.1 s.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from parent.db.errors import StoreUnavailable
from parent.db.migrate import migrate

__all__ = ["ADMIN_USER", "APP_USER", "EmbeddedConninfo", "EmbeddedPostgres", "bundled_bin_dir"]

ADMIN_USER = "postgres"  # the superuser initdb creates (pgserver passes -U postgres)
APP_USER = "app_service"  # created by migration 0001

# sun_path is 108 bytes on Linux, including the terminating NUL.
_MAX_SOCKET_PATH = 107
_SOCKET_NAME = ".s.PGSQL.5432"
_LOOPBACK = {"", "127.0.0.1", "localhost", "::1"}


def _pgserver() -> Any:
    """Import pgserver lazily: importing it creates its runtime directory and lock file."""
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset; the /tmp fallback is fine.
        warnings.simplefilter("ignore")
        import pgserver

    return pgserver


def bundled_bin_dir() -> Path:
    """Directory of the PostgreSQL binaries shipped inside pgserver (pg_dump included)."""
    pgserver = _pgserver()

    return Path(pgserver._commands.POSTGRES_BIN_PATH)


@dataclass(frozen=True, slots=True, kw_only=True)
class EmbeddedConninfo:
    """Conninfo strings for the app database: ``admin`` is the superuser, ``app`` is app_service."""

    admin: str
    app: str


class EmbeddedPostgres:
    """A pgserver-managed PostgreSQL whose data directory is ``state_dir/pgdata``.

    ``start()`` starts (or reuses) the server, creates the ``perf_aggregator`` database,
    applies migrations and returns conninfos; ``stop()`` stops the server if this
    process was the last one using it.
    """

    def __init__(self, state_dir: Path, *, database: str = "perf_aggregator") -> None:
        self.state_dir = state_dir
        self.database = database
        self._server: Any = None

    @property
    def data_dir(self) -> Path:
        """The PostgreSQL data directory (``state_dir/pgdata``)."""
        return self.state_dir.resolve() / "pgdata"

    @property
    def log_path(self) -> Path:
        """The server log: everything postgres writes to stderr."""
        return self.data_dir / "log"

    @property
    def socket_dir(self) -> Path:
        """Directory holding the unix socket (the data directory; see module docstring)."""
        return self.data_dir

    def admin_conninfo(self, database: str | None = None) -> str:
        """Superuser conninfo for ``database`` (default: the app database)."""
        return self._conninfo(ADMIN_USER, database or self.database)

    def app_conninfo(self) -> str:
        """app_service conninfo for the app database."""
        return self._conninfo(APP_USER, self.database)

    def _conninfo(self, user: str, database: str) -> str:
        return make_conninfo(host=str(self.socket_dir), port=5432, user=user, dbname=database)

    def start_server(self) -> str:
        """Start or reuse the server; return a superuser conninfo for the ``postgres`` database."""
        socket_path = self.data_dir / _SOCKET_NAME
        if len(os.fsencode(socket_path)) > _MAX_SOCKET_PATH:
            raise ValueError(
                "state directory path too long for a unix socket; pgserver would fall back "
                "to a world-writable socket directory"
            )
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            self._server = _pgserver().get_server(self.data_dir, cleanup_mode="stop")
        except Exception as exc:  # subprocess / psutil / OS errors from pgserver
            raise StoreUnavailable(
                f"embedded PostgreSQL failed to start; see {self.log_path}"
            ) from exc
        info = self._server.get_postmaster_info()
        if info.socket_dir is None or Path(info.socket_dir).resolve() != self.data_dir:
            self.stop()
            raise StoreUnavailable("embedded PostgreSQL socket is outside its data directory")
        admin = self.admin_conninfo("postgres")
        with psycopg.connect(admin, autocommit=True) as conn:
            row = conn.execute("SELECT current_setting('listen_addresses')").fetchone()
        listen = {part.strip() for part in str(row[0] if row else "").split(",")}
        if not listen <= _LOOPBACK:
            # A reused server started by something else: stop serving our data over TCP.
            self.stop()
            raise StoreUnavailable("embedded PostgreSQL listens on a non-loopback address")
        return admin

    def start(self) -> EmbeddedConninfo:
        """Start the server, create the app database if missing, migrate; return conninfos."""
        admin = self.start_server()
        with psycopg.connect(admin, autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)
            ).fetchone()
            if exists is None:
                # Another process starting at the same moment may have created it.
                with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                    conn.execute(
                        sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database))
                    )
        migrate(self.admin_conninfo())
        return EmbeddedConninfo(admin=self.admin_conninfo(), app=self.app_conninfo())

    def stop(self) -> None:
        """Stop the server unless another process still holds a handle on it."""
        server, self._server = self._server, None
        if server is not None:
            server.cleanup()

    def __enter__(self) -> EmbeddedConninfo:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
