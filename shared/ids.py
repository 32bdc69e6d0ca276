"""Session identifiers: generation, format check and the hash the parent stores. Side: any.

A session id is the client's bearer secret for its session: 32 bytes from the
CSPRNG (256 bits, DESIGN.md section 4 asks for at least 128), URL-safe base64
without padding (43 characters). The parent's database keeps only its SHA-256,
so a database dump cannot be replayed against the API.
"""

from __future__ import annotations

import hashlib
import re
import secrets

__all__ = ["SESSION_ID_LENGTH", "is_session_id", "new_session_id", "session_hash"]

SESSION_ID_LENGTH = 43
_SESSION_ID = re.compile(r"\A[A-Za-z0-9_-]{43}\Z")


def new_session_id() -> str:
    """A fresh unguessable session id (256 bits)."""
    return secrets.token_urlsafe(32)


def is_session_id(value: object) -> bool:
    """True when ``value`` has the session id format (checked before any lookup)."""
    return isinstance(value, str) and _SESSION_ID.match(value) is not None


def session_hash(session_id: str) -> bytes:
    """SHA-256 of the session id: what the parent stores and logs, never the id itself."""
    return hashlib.sha256(session_id.encode("utf-8")).digest()
