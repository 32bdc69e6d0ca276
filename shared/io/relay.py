"""Byte relay between two streams, with backpressure and an idle timeout. Side: enclave, parent.

Used by both ends of the egress tunnel (enclave/egress.py, parent/egress.py): the
same copying rules apply on both sides of the trust boundary, so they live once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["CHUNK", "relay"]

CHUNK = 256 * 1024
"""Largest read per step: bounds memory per direction of a tunnel."""


async def _pump(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    count: Callable[[int], None],
    clock: list[float],
) -> None:
    """Copy until EOF, waiting for the receiver (drain) after every chunk, then half-close."""
    loop = asyncio.get_running_loop()
    while data := await reader.read(CHUNK):
        clock[0] = loop.time()
        count(len(data))
        writer.write(data)
        await writer.drain()  # backpressure: read no more than the other side accepts
    if writer.can_write_eof():
        writer.write_eof()


async def relay(
    a_reader: asyncio.StreamReader,
    a_writer: asyncio.StreamWriter,
    b_reader: asyncio.StreamReader,
    b_writer: asyncio.StreamWriter,
    *,
    idle_timeout: float,
    forward: Callable[[int], None],
    backward: Callable[[int], None],
) -> str:
    """Relay a<->b until both directions end ("closed"), one fails ("error") or no
    byte moved for ``idle_timeout`` ("idle"). The caller closes the writers."""
    loop = asyncio.get_running_loop()
    clock = [loop.time()]
    tasks = {
        asyncio.create_task(_pump(a_reader, b_writer, forward, clock)),
        asyncio.create_task(_pump(b_reader, a_writer, backward, clock)),
    }
    pending = set(tasks)
    try:
        while pending:
            remaining = clock[0] + idle_timeout - loop.time()
            if remaining <= 0:
                return "idle"
            done, pending = await asyncio.wait(
                pending, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
            if any(task.exception() is not None for task in done):
                return "error"
        return "closed"
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
