"""Errors raised by the parent's PostgreSQL storage layer. Side: parent.

    PerfAggError                       (shared.errors)
    └── StoreError
        ├── StoreUnavailable           database unreachable, pool exhausted or timed out (API: 503)
        │   └── LeaseLost              another replica holds the session's lease now (API: 503)
        ├── InvalidData                a constraint refused the values (API: 400)
        ├── Conflict                   a unique key already exists (API: 409)
        │   └── ReplayedEnvelope       this credential envelope was submitted before (API: 409)
        ├── SessionNotFound            no session with that hash (API: 404)
        └── MigrationError             the schema cannot be migrated safely

psycopg exceptions are mapped to these at the adapter boundary (``parent.db.store``).
Messages name tables and constraints, never values: a psycopg error's DETAIL repeats
the offending row, so constraint errors carry no ``__cause__`` or ``__context__`` and
the row stays out of tracebacks and logs. ``StoreUnavailable`` keeps its cause.
"""

from __future__ import annotations

from shared.errors import PerfAggError

__all__ = [
    "Conflict",
    "InvalidData",
    "LeaseLost",
    "MigrationError",
    "ReplayedEnvelope",
    "SessionNotFound",
    "StoreError",
    "StoreUnavailable",
]


class StoreError(PerfAggError):
    """Root of the storage layer's errors."""


class StoreUnavailable(StoreError):
    """The database cannot be reached right now; retrying later may succeed."""


class LeaseLost(StoreUnavailable):
    """This replica no longer holds the session's lease: another one writes it now.

    Nothing was stored; a retry reaches the new holder (the API forwards it there).
    """


class InvalidData(StoreError):
    """The database refused the values (constraint, type or size). Nothing was stored."""


class Conflict(StoreError):
    """A row with the same unique key already exists. Nothing was stored."""


class ReplayedEnvelope(Conflict):
    """An envelope with the same digest was stored before: a replayed submission."""


class SessionNotFound(StoreError):
    """No session with the given hash exists (never created, revoked or purged)."""


class MigrationError(StoreError):
    """Migrations cannot be applied: a file changed after it was applied, or similar."""
