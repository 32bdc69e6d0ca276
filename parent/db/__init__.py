"""PostgreSQL storage for the untrusted parent. Side: parent.

Schema migrations, the async store and an embedded server for development.

Holds only ciphertext and public data (DESIGN.md section 6). ``Store`` is the async
adapter the API uses; ``migrate`` applies ``migrations/NNNN_*.sql``; ``embedded``
runs a local PostgreSQL through pgserver when no ``DATABASE_URL`` is configured
(imported on demand, not here, because importing pgserver has side effects).
``migrate`` is not re-exported: the name would shadow the ``parent.db.migrate`` module.
"""

from __future__ import annotations

from parent.db.errors import (
    Conflict,
    InvalidData,
    LeaseLost,
    MigrationError,
    ReplayedEnvelope,
    SessionNotFound,
    StoreError,
    StoreUnavailable,
)
from parent.db.store import (
    AggregateRow,
    EnclaveIdentity,
    LiveCredential,
    LogBatch,
    RecordMeta,
    RecordRow,
    SealedBlob,
    SessionRow,
    Store,
    StoredCredentials,
    hash_session_id,
)

__all__ = [
    "AggregateRow",
    "Conflict",
    "EnclaveIdentity",
    "InvalidData",
    "LeaseLost",
    "LiveCredential",
    "LogBatch",
    "MigrationError",
    "RecordMeta",
    "RecordRow",
    "ReplayedEnvelope",
    "SealedBlob",
    "SessionNotFound",
    "SessionRow",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "StoredCredentials",
    "hash_session_id",
]
