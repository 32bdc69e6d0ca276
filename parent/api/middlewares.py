"""Request pipeline: observe -> CORS -> errors -> rate limit -> handler. Side: parent.

- ``observe`` gives each request an id (``X-Request-Id``, uuid4 hex, bound in the
  structlog context), writes one log line and the HTTP metrics, and adds the
  security headers. Logs and metrics carry the route *template*, never the concrete
  path: paths hold session ids, which are bearer secrets. No body, header or query
  value is ever logged.
- ``cors`` answers preflights for allowed origins only and echoes an allowed
  ``Origin``; never ``*``. It wraps the error middleware so that error responses
  are readable by the allowed browser origins too.
- ``errors`` turns every exception into the JSON error shape (``parent.api.errors``);
  an unexpected one is a 500 with a fixed message, logged by exception type only.
- ``rate_limit`` applies the per-client-IP limit (``parent.ratelimit``); health,
  readiness and metrics are exempt so that probes and scrapers never trip it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from parent.api.errors import INTERNAL, ApiError, api_error_for, error_response
from parent.api.services import REQUEST_ID, SERVICES
from parent.config import Mode
from parent.db.errors import InvalidData
from parent.metrics import UNMATCHED_ROUTE

__all__ = ["RATE_LIMIT_EXEMPT", "cors", "errors", "observe", "rate_limit"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

log = structlog.get_logger("parent.http")

RATE_LIMIT_EXEMPT = frozenset({"/healthz", "/readyz", "/metrics"})
"""Paths probes and scrapers poll; never rate limited."""

# Headers a browser client may send cross-origin (owner proofs and record access).
_CORS_ALLOW_HEADERS = "Content-Type, X-Session-Id, X-Owner-Timestamp, X-Owner-Signature"
_CORS_EXPOSE_HEADERS = "X-Request-Id, Retry-After"
_CORS_MAX_AGE = "600"
# JSON never needs to load anything; /docs sets its own policy (inline styles only).
_DEFAULT_CSP = "default-src 'none'; frame-ancestors 'none'"


def route_template(request: web.Request) -> str:
    """The matched route's template (``/enclave/metrics/{session_id}``), or a fixed label."""
    match_info = request.match_info
    if match_info.http_exception is not None:
        return UNMATCHED_ROUTE
    resource = match_info.route.resource
    return UNMATCHED_ROUTE if resource is None else resource.canonical


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id, one log line, metrics and security headers for every request."""
    services = request.app[SERVICES]
    request_id = uuid.uuid4().hex
    request[REQUEST_ID] = request_id
    started = time.perf_counter()
    route = route_template(request)
    # bound_contextvars restores the previous context: a keep-alive connection serves
    # several requests in one task, and ids must not leak from one to the next.
    with structlog.contextvars.bound_contextvars(request_id=request_id):
        try:
            response = await handler(request)
        except Exception as exc:  # noqa: BLE001 - last line of defence; errors() maps first
            log.error("unhandled_exception", error_type=type(exc).__name__)
            response = error_response(INTERNAL)
        duration = time.perf_counter() - started
        response.headers["X-Request-Id"] = request_id
        response.headers.setdefault("Content-Security-Policy", _DEFAULT_CSP)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Server"] = "perf-aggregator"  # not the library and Python versions
        # Responses carry session ids and attestation nonces: no cache may keep them.
        response.headers.setdefault("Cache-Control", "no-store")
        if services.config.mode is Mode.PRODUCTION:
            response.headers["Strict-Transport-Security"] = "max-age=31536000"
        status = response.status
        services.metrics.http_requests.labels(
            method=request.method, route=route, status=str(status)
        ).inc()
        services.metrics.http_duration.labels(route=route).observe(duration)
        log.info(
            "http_request",
            method=request.method,
            route=route,
            status=status,
            duration_ms=round(duration * 1000, 3),
        )
    return response


@web.middleware
async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """CORS for ALLOWED_ORIGINS only: echo an allowed Origin, answer its preflights."""
    allowed = request.app[SERVICES].config.allowed_origins
    origin = request.headers.get("Origin")
    origin_allowed = origin is not None and origin.lower() in allowed
    is_preflight = (
        request.method == "OPTIONS"
        and origin is not None
        and "Access-Control-Request-Method" in request.headers
        # A preflight to a real path finds no OPTIONS route (405); unknown paths stay 404.
        and isinstance(request.match_info.http_exception, web.HTTPMethodNotAllowed)
    )
    if is_preflight:
        if not origin_allowed:
            response: web.StreamResponse = error_response(
                ApiError(403, "forbidden", "origin not allowed")
            )
        else:
            assert origin is not None
            http_exception = request.match_info.http_exception
            assert isinstance(http_exception, web.HTTPMethodNotAllowed)
            response = web.Response(status=204)
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Allow-Methods"] = ", ".join(
                sorted(http_exception.allowed_methods)
            )
            response.headers["Access-Control-Allow-Headers"] = _CORS_ALLOW_HEADERS
            response.headers["Access-Control-Max-Age"] = _CORS_MAX_AGE
    else:
        response = await handler(request)
        if origin_allowed:
            assert origin is not None
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = _CORS_EXPOSE_HEADERS
    # Every answer depends on Origin: shared caches must not mix them up.
    response.headers["Vary"] = "Origin"
    return response


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure as ``{"error": {"code", "message"}}`` with its status."""
    try:
        return await handler(request)
    except Exception as exc:  # noqa: BLE001 - every failure must become the JSON shape
        error = api_error_for(exc)
        if error is None:
            # Type only: an exception's text can quote request data or a secret.
            log.error("unhandled_exception", error_type=type(exc).__name__)
            error = INTERNAL
        elif error.status >= 500 or isinstance(exc, InvalidData):
            # InvalidData names the refusing table and constraint (never a value): the
            # client gets a generic 400, the operator the detail.
            detail = str(exc) if isinstance(exc, InvalidData) else None
            log.warning(
                "request_failed", code=error.code, error_type=type(exc).__name__, detail=detail
            )
        return error_response(error)


@web.middleware
async def rate_limit(request: web.Request, handler: Handler) -> web.StreamResponse:
    """At most RATE_LIMIT_MAX requests per RATE_LIMIT_WINDOW per client IP (429 beyond)."""
    services = request.app[SERVICES]
    if request.path in RATE_LIMIT_EXEMPT or (
        # Counted once, by the replica the client reached (parent.api.forwarding); the
        # peer address here is that replica's, not the client's.
        services.router is not None and services.router.is_forwarded(request)
    ):
        return await handler(request)
    # The parent terminates TLS itself, so the peer address is the client's; no
    # X-Forwarded-For is trusted (any client could forge it to dodge the limit).
    decision = services.rate_limiter.check(request.remote or "unknown", now=services.monotonic())
    if not decision.allowed:
        services.metrics.rate_limited_requests.inc()
        raise ApiError(
            429,
            "rate_limited",
            f"too many requests; retry after {decision.retry_after} s",
            headers={"Retry-After": str(decision.retry_after)},
        )
    return await handler(request)
