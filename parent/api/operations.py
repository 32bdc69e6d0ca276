"""Operational endpoints: liveness, readiness, metrics, the spec and its docs. Side: parent.

None of them touches session data. ``/readyz`` names the failing dependency so an
operator knows where to look; it never includes an error's text.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from parent.api.errors import ApiError, error_response, json_response
from parent.api.services import SERVICES
from parent.db.errors import StoreError
from parent.enclave_client import EnclaveClientError
from parent.metrics import CONTENT_TYPE_LATEST
from parent.openapi import DOCS_KEY, OPENAPI_KEY
from shared import protocol as p

__all__ = ["docs", "healthz", "metrics", "openapi_json", "readyz"]

# /docs is one self-contained page: inline styles, no scripts, nothing loaded.
_DOCS_CSP = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"


async def healthz(request: web.Request) -> web.Response:
    """GET /healthz: the process is alive and serving."""
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """GET /readyz: the database answers and the enclave reports healthy."""
    services = request.app[SERVICES]

    async def database() -> bool:
        try:
            await services.store.ping()
        except StoreError:
            return False
        return True

    async def enclave() -> bool:
        try:
            reply = await services.enclave_call("health", p.Health(request_id=0), p.HealthReply)
        except EnclaveClientError:
            return False
        return reply.status == "ok"

    database_ok, enclave_ok = await asyncio.gather(database(), enclave())
    checks = {
        "database": "ok" if database_ok else "unavailable",
        "enclave": "ok" if enclave_ok else "unavailable",
    }
    failing = [name for name, state in checks.items() if state != "ok"]
    if failing:
        return error_response(
            ApiError(503, "unavailable", f"not ready: {', '.join(failing)} unavailable")
        )
    return json_response({"status": "ready", "checks": checks})


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics: Prometheus text exposition of this app's registry."""
    body = request.app[SERVICES].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi_json(request: web.Request) -> web.Response:
    """GET /openapi.json: the OpenAPI 3.1 document of this API."""
    return json_response(request.app[OPENAPI_KEY])


async def docs(request: web.Request) -> web.Response:
    """GET /docs: human-readable documentation rendered from the OpenAPI document."""
    return web.Response(
        text=request.app[DOCS_KEY],
        content_type="text/html",
        charset="utf-8",
        headers={"Content-Security-Policy": _DOCS_CSP},
    )
