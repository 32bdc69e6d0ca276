"""The parent's aiohttp application factory. Side: parent (untrusted host).

``create_app`` wires the routes of the public API (DESIGN.md section 5, a CONTRACT),
the middleware pipeline and the TTL purge around the ports it is given: a store, an
enclave client and, optionally, a session-log reader and the sealed-state readiness
(``parent.enclave_supervisor``, which ``/readyz`` consults). It picks no adapter and
reads no environment: ``parent.main`` (the composition root) does that. Handlers live in
``parent.api``, one module per job.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

from aiohttp import web

from parent.api import attestation, logs, operations, records, sessions
from parent.api.middlewares import cors, errors, observe, rate_limit
from parent.api.operations import READINESS, Readiness
from parent.api.purge import purge_context
from parent.api.services import (
    SERVICES,
    EnclavePort,
    ReplicaRouter,
    Services,
    SessionLogSource,
)
from parent.config import ParentConfig
from parent.db.store import Store
from parent.metrics import ApiMetrics
from parent.openapi import DOCS_KEY, OPENAPI_KEY, build_openapi, render_docs
from parent.ratelimit import RateLimiter

__all__ = ["create_app"]


def _utc_now() -> datetime:
    return datetime.now(UTC)


def create_app(
    config: ParentConfig,
    *,
    store: Store,
    enclave: EnclavePort,
    metrics: ApiMetrics | None = None,
    session_log: SessionLogSource | None = None,
    clock: Callable[[], datetime] = _utc_now,
    monotonic: Callable[[], float] = time.monotonic,
    run_purge: bool = True,
    readiness: Readiness | None = None,
    router: ReplicaRouter | None = None,
) -> web.Application:
    """Build the HTTPS API application (serve it with an ssl context; it never runs plain HTTP).

    ``clock`` (timezone-aware UTC) decides expiry; ``monotonic`` drives the rate limiter.
    ``run_purge`` starts the TTL purge task with the app. ``readiness`` (sealing on)
    keeps ``/readyz`` at 503 until the enclave is unlocked and restored. ``router``
    (replicas sharing the database) sends session requests to the lease holder.
    """
    app = web.Application(
        # Outermost first: the request id and log line cover everything below, CORS
        # headers are added to error responses too, and 429s are JSON errors.
        middlewares=[observe, cors, errors, rate_limit],
        # aiohttp refuses larger bodies while reading (413), chunked ones included.
        client_max_size=config.max_body_bytes,
    )
    app[SERVICES] = Services(
        config=config,
        store=store,
        enclave=enclave,
        metrics=metrics or ApiMetrics(),
        rate_limiter=RateLimiter(
            limit=config.rate_limit_max, window_seconds=config.rate_limit_window_seconds
        ),
        session_log=session_log if session_log is not None else store,
        clock=clock,
        monotonic=monotonic,
        router=router,
    )
    spec = build_openapi(
        min_ttl_seconds=config.min_ttl_seconds,
        max_ttl_seconds=config.max_ttl_seconds,
        max_body_bytes=config.max_body_bytes,
    )
    if readiness is not None:
        app[READINESS] = readiness
    app[OPENAPI_KEY] = spec
    app[DOCS_KEY] = render_docs(spec)
    # allow_head=False: the API surface is exactly what the OpenAPI document lists.
    app.router.add_get("/attestation/quote", attestation.quote, allow_head=False)
    app.router.add_post("/enclave/submit_key", sessions.submit_key)
    app.router.add_post("/enclave/request_aggregates", sessions.request_aggregates)
    app.router.add_post("/enclave/revoke", sessions.revoke)
    app.router.add_post("/enclave/disclose_trade", sessions.disclose_trade)
    app.router.add_get("/enclave/metrics/{session_id}", sessions.session_metrics, allow_head=False)
    app.router.add_get("/enclave/summary/{session_id}", sessions.session_summary, allow_head=False)
    app.router.add_get("/api/logs/{session_id}", logs.session_logs, allow_head=False)
    app.router.add_post("/api/records", records.seal_record)
    app.router.add_get("/api/records", records.list_records, allow_head=False)
    app.router.add_get("/api/records/{id}", records.get_record, allow_head=False)
    app.router.add_get("/metrics", operations.metrics, allow_head=False)
    app.router.add_get("/healthz", operations.healthz, allow_head=False)
    app.router.add_get("/readyz", operations.readyz, allow_head=False)
    app.router.add_get("/openapi.json", operations.openapi_json, allow_head=False)
    app.router.add_get("/docs", operations.docs, allow_head=False)
    if run_purge:
        app.cleanup_ctx.append(purge_context)
    return app
