"""Lifecycle of a stream server's connection handlers. Side: enclave, parent.

Each server of the project (the enclave's RPC server, the enclave's CONNECT proxy, the
parent's egress relay) must be able to stop accepting *and* end every connection still
open, so that a shutdown never leaves a tunnel or a half-answered call behind.
``ConnectionHandlers`` wraps a handler so its task is tracked, and closes them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools

from shared.io.transport import ConnectionHandler

__all__ = ["ConnectionHandlers"]


class ConnectionHandlers:
    """The running handler tasks of one server; ``close`` ends the server and all of them."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def tracked(self, handler: ConnectionHandler) -> ConnectionHandler:
        """``handler`` wrapped so its task is known until it ends.

        A handler cancelled by ``close`` ends normally: on Python 3.11 the done-callback
        of ``asyncio.start_server`` logs a cancelled handler task as an unhandled error.
        """

        @functools.wraps(handler)
        async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            current = asyncio.current_task()
            assert current is not None
            self._tasks.add(current)
            try:
                await handler(reader, writer)
            except asyncio.CancelledError:
                pass
            finally:
                self._tasks.discard(current)

        return run

    async def close(self, server: asyncio.Server | None) -> None:
        """Stop accepting on ``server`` (if any), then cancel and await every handler."""
        if server is not None:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if server is not None:
            await server.wait_closed()
