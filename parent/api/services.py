"""What the API handlers share: ports, settings, metrics and the audit log. Side: parent.

Ports (the composition root picks the adapters):

- ``EnclavePort``: ``call(request, ReplyType)``; ``parent.enclave_client.EnclaveClient``
  in production, the same client against a fake enclave in tests.
- ``Store`` (``parent.db.store``): PostgreSQL, ciphertext and public data only.
- ``SessionLogSource``: the ops-log entries of one session, for ``GET /api/logs``.
  Optional: the store does not offer it yet (see ``parent.api.sessions``).
- ``ReplicaRouter``: with replicas, sends a session's request to the replica holding
  its lease (``parent.api.forwarding``). Optional: None for a parent on its own.

``Services.enclave_call`` wraps every enclave call with its metrics; ``Services.audit``
opens an audit scope that writes one log line per access to a session's sealed data.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Protocol, TypeVar

import structlog
from aiohttp import web

from parent.api.errors import api_error_for
from parent.config import ParentConfig
from parent.db.store import Store
from parent.enclave_client import EnclaveRefused, EnclaveUnavailable
from parent.metrics import ApiMetrics
from parent.ratelimit import RateLimiter
from shared import protocol as p
from shared.ids import session_hash

__all__ = [
    "REQUEST_ID",
    "SERVICES",
    "AuditScope",
    "EnclavePort",
    "ReplicaRouter",
    "Services",
    "SessionLogEntry",
    "SessionLogSource",
]

R = TypeVar("R", bound=p.Reply)

audit_log = structlog.get_logger("parent.audit")

# Hex characters of SHA-256(session id) shown in audit lines: enough to correlate
# lines, useless to an attacker (the id is 256 random bits, the hash one-way).
_AUDIT_HASH_CHARS = 16


class EnclavePort(Protocol):
    """Typed calls to the enclave (``EnclaveClient`` satisfies it)."""

    async def call(self, request: p.Request, reply_type: type[R]) -> R:
        """Send ``request`` and return its reply, or raise EnclaveRefused / EnclaveUnavailable."""
        ...


class ReplicaRouter(Protocol):
    """Where a session's request runs when replicas share the database
    (``parent.api.forwarding.SessionRouter``)."""

    def is_forwarded(self, request: web.Request) -> bool:
        """The request was forwarded by another parent of this deployment."""
        ...

    def created(self, digest: bytes) -> None:
        """A session was created (and leased) here."""
        ...

    async def route(self, request: web.Request, digest: bytes) -> web.Response | None:
        """None to run the handler here, else the lease holder's answer to relay."""
        ...


class SessionLogEntry(Protocol):
    """One ops-log row of a session: what happened, when, in which request."""

    @property
    def op(self) -> str: ...

    @property
    def at(self) -> datetime: ...

    @property
    def request_id(self) -> str | None: ...


class SessionLogSource(Protocol):
    """Reads a session's ops-log entries, oldest first."""

    def list_session_ops(self, session_hash: bytes) -> Awaitable[Sequence[SessionLogEntry]]:
        """The entries linked to the session with that hash (empty if none)."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Services:
    """Everything a handler needs, stored once on the application."""

    config: ParentConfig
    store: Store
    enclave: EnclavePort
    metrics: ApiMetrics
    rate_limiter: RateLimiter
    session_log: SessionLogSource
    clock: Callable[[], datetime]
    monotonic: Callable[[], float]
    # Replicas: forwards requests about sessions another replica holds (None: alone).
    router: ReplicaRouter | None = None

    async def enclave_call(self, op: str, request: p.Request, reply_type: type[R]) -> R:
        """Call the enclave, counting the outcome and timing the call under ``op``."""
        started = time.perf_counter()
        outcome = "ok"
        try:
            return await self.enclave.call(request, reply_type)
        except EnclaveRefused as exc:
            outcome = exc.code.value
            raise
        except EnclaveUnavailable:
            outcome = "unavailable"
            raise
        except BaseException:
            outcome = "error"
            raise
        finally:
            self.metrics.enclave_operations.labels(op=op, outcome=outcome).inc()
            self.metrics.enclave_duration.labels(op=op).observe(time.perf_counter() - started)

    def audit(self, operation: str, session_id: str | None = None) -> AuditScope:
        """An audit scope for ``operation``: use ``with``; set ``session_id`` once known."""
        return AuditScope(operation, session_id)


class AuditScope:
    """Writes one audit line when the block ends: operation, hashed session, outcome.

    The request id and time come from the logging context. Never the data itself,
    never the session id in clear, never an exception's text.
    """

    def __init__(self, operation: str, session_id: str | None) -> None:
        self.operation = operation
        self.session_id = session_id

    def __enter__(self) -> AuditScope:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc is None:
            outcome = "ok"
        else:
            error = api_error_for(exc)
            outcome = "internal" if error is None else error.code
        session = (
            None
            if self.session_id is None
            else session_hash(self.session_id).hex()[:_AUDIT_HASH_CHARS]
        )
        audit_log.info("audit", operation=self.operation, session=session, outcome=outcome)


SERVICES = web.AppKey("services", Services)
"""Where ``create_app`` stores the ``Services`` of an application."""

REQUEST_ID = web.RequestKey("request_id", str)
"""The request's id (uuid4 hex), set by the ``observe`` middleware; also X-Request-Id."""
