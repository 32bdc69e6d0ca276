"""Serve any session from any replica: forward to the lease holder. Side: parent.

Replicas share one PostgreSQL; each session is held (polled, written, served) by one of
them (``parent.leases``). A session-scoped request reaching another replica goes to
the holder::

    client --HTTPS--> parent A: rate limit (counted here, once), validation
      get_lease(session) --> DB
        ours and loaded                 -> the handler runs here (audit here)
        free, expired, or ours but not loaded yet
                                        -> take it on the spot (restore + poll), run here
        valid, another replica's        -> forward the request as is to its holder_url
          parent A --HTTPS (CA-verified), X-Replica-Forward--> parent B: no rate limit,
              never forwarded again, handler + audit there; status, JSON body and
              Retry-After relayed back
          B does not answer             -> wait for its lease to expire, take it over;
                                           503 + Retry-After if that would outlast the
                                           request's time budget

``X-Replica-Forward`` carries a token derived from the deployment's replica secret
(migration 0005, shared through the database), so a client cannot pass for a parent to
dodge the rate limit or the routing; a request that carries it is never forwarded again
(no loops): if its receiver does not hold the lease either, it answers 503.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import ssl
import time
from collections.abc import Callable
from typing import Final

import aiohttp
import structlog
from aiohttp import web
from yarl import URL

from parent.api.errors import ApiError
from parent.api.services import SERVICES
from parent.db.store import Lease, Store
from parent.leases import LeaseManager

__all__ = ["FORWARD_HEADER", "SessionRouter", "forward_token", "route_session"]

log = structlog.get_logger("parent.forwarding")

FORWARD_HEADER: Final = "X-Replica-Forward"
# Request headers a handler may read besides the body: relayed to the holder as they came.
_FORWARDED_REQUEST_HEADERS: Final = (
    "Content-Type",
    "Accept",
    "X-Session-Id",
    "X-Owner-Timestamp",
    "X-Owner-Signature",
)
# Response headers relayed back (our own middlewares add the security headers).
_RELAYED_RESPONSE_HEADERS: Final = ("Content-Type", "Retry-After", "Allow")
_MAX_RELAYED_BYTES: Final = 32 * 1024 * 1024
_CONNECT_TIMEOUT_S: Final = 2.0
_FORWARD_TIMEOUT_S: Final = 30.0


class _HolderSilent(Exception):
    """The lease holder did not answer (refused, reset, timed out, bad TLS)."""


def forward_token(secret: bytes) -> str:
    """The X-Replica-Forward value: HMAC of a fixed label under the replica secret."""
    return hmac.new(secret, b"perf-aggregator/replica-forward/v1", hashlib.sha256).hexdigest()


def _unavailable(retry_after: float) -> ApiError:
    return ApiError(
        503,
        "unavailable",
        "the replica serving this session is not reachable; retry later",
        headers={"Retry-After": str(max(1, math.ceil(retry_after)))},
    )


class SessionRouter:
    """Decides where a session's request runs, and forwards it when that is elsewhere."""

    def __init__(
        self,
        store: Store,
        leases: LeaseManager,
        *,
        secret: bytes,
        ssl_context: ssl.SSLContext,
        budget_seconds: float | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """``budget_seconds``: how long a request may wait for a silent holder's lease
        to expire (default: one lease period and a sweep)."""
        self._store = store
        self._leases = leases
        self._token = forward_token(secret)
        self._ssl_context = ssl_context
        self._budget = (
            budget_seconds if budget_seconds is not None else leases.lease_seconds * 4 / 3 + 1
        )
        self._monotonic = monotonic
        self._http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Open the HTTPS client the forwards use (one connection pool per replica)."""
        if self._http is None:
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl_context, limit=256),
                timeout=aiohttp.ClientTimeout(
                    total=_FORWARD_TIMEOUT_S, sock_connect=_CONNECT_TIMEOUT_S
                ),
                auto_decompress=False,
            )

    async def close(self) -> None:
        """Close the client."""
        http, self._http = self._http, None
        if http is not None:
            await http.close()

    def created(self, digest: bytes) -> None:
        """A session created here (its lease was taken with it): ours, already polled."""
        self._leases.adopt(digest)

    def is_forwarded(self, request: web.Request) -> bool:
        """The request comes from another parent of this deployment (valid token)."""
        value = request.headers.get(FORWARD_HEADER)
        return value is not None and hmac.compare_digest(value.encode(), self._token.encode())

    async def route(self, request: web.Request, digest: bytes) -> web.Response | None:
        """None: run the handler here. Otherwise the holder's answer to relay."""
        forwarded = self.is_forwarded(request)
        deadline = self._monotonic() + self._budget
        while True:
            lease = await self._store.get_lease(digest)
            if lease is None:
                return None  # no such live session: the handler answers (404, stored log)
            if lease.holder == self._leases.replica_id or not lease.valid:
                # Ours (maybe still loading), free or expired: serve it here.
                if self._leases.holds(digest) or await self._leases.take(digest):
                    return None
                lease = await self._store.get_lease(digest)
                if lease is None:
                    return None
                if not lease.valid or lease.holder == self._leases.replica_id:
                    # Our enclave is not ready to take it (restoring): come back soon.
                    raise _unavailable(1)
                # Another replica took it in between: forward below.
            if forwarded:
                # Never forward twice: the forwarder saw another holder (or a stale one).
                raise _unavailable(1)
            if lease.holder_url is not None and lease.holder_url != self._leases.url:
                try:
                    return await self._forward(request, lease.holder_url)
                except _HolderSilent:
                    log.warning("lease_holder_silent", remaining=round(lease.remaining, 2))
            # else: a previous incarnation of this replica holds it: it is gone.
            await self._wait_for_expiry(lease, deadline)

    async def _wait_for_expiry(self, lease: Lease, deadline: float) -> None:
        wait = max(0.0, lease.remaining) + 0.05
        if self._monotonic() + wait > deadline:
            raise _unavailable(lease.remaining)
        await asyncio.sleep(wait)

    async def _forward(self, request: web.Request, holder_url: str) -> web.Response:
        http = self._http
        if http is None:
            raise _HolderSilent
        headers = {
            name: request.headers[name]
            for name in _FORWARDED_REQUEST_HEADERS
            if name in request.headers
        }
        headers[FORWARD_HEADER] = self._token
        # Handlers read the body before routing; read() returns the cached bytes.
        body = await request.read() if request.body_exists else None
        # The path and query exactly as the client sent them (already percent-encoded).
        target = URL(holder_url + request.raw_path, encoded=True)
        try:
            async with http.request(
                request.method, target, headers=headers, data=body, allow_redirects=False
            ) as response:
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.content.iter_chunked(64 * 1024):
                    size += len(chunk)
                    if size > _MAX_RELAYED_BYTES:
                        raise _HolderSilent
                    chunks.append(chunk)
                payload = b"".join(chunks)
                relayed = {
                    name: response.headers[name]
                    for name in _RELAYED_RESPONSE_HEADERS
                    if name in response.headers
                }
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.info("forward_failed", error_type=type(exc).__name__)
            raise _HolderSilent from None
        return web.Response(status=status, body=payload, headers=relayed)


async def route_session(request: web.Request, digest: bytes) -> web.Response | None:
    """For handlers: the holder's answer if another replica serves the session, else None."""
    router = request.app[SERVICES].router
    if router is None:
        return None
    return await router.route(request, digest)
