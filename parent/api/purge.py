"""The TTL purge: delete expired sessions with every row of them. Side: parent.

Runs once at start and then every PURGE_INTERVAL_SECONDS for the life of the app
(``create_app`` registers it as a cleanup context, so it stops with the app). Each
run also resynchronises the ``active_sessions`` gauge with the database, which
corrects the increments and decrements the handlers make between runs.
A failed run (database down) is logged by type and retried at the next tick.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from parent.api.services import SERVICES, Services
from parent.db.errors import StoreError

__all__ = ["purge_context", "purge_once"]

log = structlog.get_logger("parent.purge")


async def purge_once(services: Services) -> int:
    """One purge run: delete expired sessions, count them, refresh the gauge."""
    purged = await services.store.purge_expired(now=services.clock())
    if purged:
        services.metrics.ttl_purged_sessions.inc(purged)
        log.info("ttl_purge", sessions=purged)
    services.metrics.active_sessions.set(
        await services.store.count_active_sessions(now=services.clock())
    )
    return purged


async def _loop(services: Services) -> None:
    while True:
        try:
            await purge_once(services)
        except StoreError as exc:
            log.warning("ttl_purge_failed", error_type=type(exc).__name__)
        await asyncio.sleep(services.config.purge_interval_seconds)


async def purge_context(app: web.Application) -> AsyncIterator[None]:
    """aiohttp cleanup context: the purge loop runs while the app does."""
    task = asyncio.create_task(_loop(app[SERVICES]), name="ttl-purge")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
