"""Operational endpoints: liveness, readiness, metrics, the spec and its docs. Side: parent.

None of them touches session data. ``/readyz`` names the failing dependency so an
operator knows where to look; it never includes an error's text. With KMS sealing the
enclave counts as ready only once the supervisor (parent/enclave_supervisor.py) has
unlocked it and restored every stored session: ``READINESS`` on the app says so.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from aiohttp import web

from parent.api.errors import ApiError, error_response, json_response
from parent.api.services import SERVICES
from parent.db.errors import StoreError
from parent.enclave_client import EnclaveClientError
from parent.metrics import CONTENT_TYPE_LATEST
from parent.openapi import DOCS_KEY, OPENAPI_KEY
from shared import protocol as p

__all__ = ["READINESS", "Readiness", "docs", "healthz", "metrics", "openapi_json", "readyz"]


class Readiness(Protocol):
    """Whether the enclave may serve sessions yet (``EnclaveSupervisor`` satisfies it)."""

    @property
    def ready(self) -> bool:
        """True once the enclave is unlocked and every stored session restored."""
        ...

    @property
    def state(self) -> str:
        """One word for /readyz while not ready: starting, locked, restoring, unavailable."""
        ...


READINESS = web.AppKey("readiness", Readiness)
"""Set by ``create_app`` when sealing is on; absent, the enclave's health alone decides."""

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

    async def enclave() -> str:
        try:
            reply = await services.enclave_call("health", p.Health(request_id=0), p.HealthReply)
        except EnclaveClientError:
            return "unavailable"
        if reply.status != "ok":
            # "locked": waiting for its sealed state (KMS refused, unreachable, or not yet).
            return "locked" if reply.status == "locked" else "unavailable"
        readiness = request.app.get(READINESS)
        if readiness is not None and not readiness.ready:
            return readiness.state  # unlocked but not yet restored, for instance
        return "ok"

    database_ok, enclave_state = await asyncio.gather(database(), enclave())
    checks = {"database": "ok" if database_ok else "unavailable", "enclave": enclave_state}
    failing = [(name, state) for name, state in checks.items() if state != "ok"]
    if failing:
        if all(state == "unavailable" for _, state in failing):
            detail = f"{', '.join(name for name, _ in failing)} unavailable"
        else:
            detail = ", ".join(f"{name} {state}" for name, state in failing)
        return error_response(ApiError(503, "unavailable", f"not ready: {detail}"))
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
