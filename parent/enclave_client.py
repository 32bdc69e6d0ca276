"""Multiplexed, reconnecting RPC client to the enclave. Side: parent.

One persistent transport connection carries every call; replies are matched to
callers by request id, so many HTTP requests share it concurrently. When the
enclave is down or restarting, calls fail fast with ``EnclaveUnavailable`` (the
API answers 503) and a background task reconnects with capped exponential
backoff; the first call after the enclave is back succeeds without any restart
of the parent.

Exceptions::

    EnclaveClientError
    ├── EnclaveUnavailable    not connected, connection lost, or no reply in time
    └── EnclaveRefused        the enclave answered with an ErrorReply (code, message)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import time
from typing import TypeVar

import structlog

from shared import protocol as p
from shared.errors import PerfAggError, RemoteProtocolError, TransportError
from shared.io.transport import Transport, VsockAddress

__all__ = ["EnclaveClient", "EnclaveClientError", "EnclaveRefused", "EnclaveUnavailable"]

log = structlog.get_logger("parent.enclave_client")

R = TypeVar("R", bound=p.Reply)


class EnclaveClientError(PerfAggError):
    """A call to the enclave did not produce the expected reply."""


class EnclaveUnavailable(EnclaveClientError):
    """The enclave cannot be reached right now; retrying later may succeed."""


class EnclaveRefused(EnclaveClientError):
    """The enclave refused the request with a typed error."""

    def __init__(self, code: p.ErrorCode, message: str) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message


class EnclaveClient:
    """Call enclave methods over one shared connection, reconnecting by itself."""

    def __init__(
        self,
        transport: Transport,
        address: VsockAddress,
        *,
        call_timeout: float = 10.0,
        connect_timeout: float = 2.0,
        max_backoff: float = 2.0,
    ) -> None:
        self._transport = transport
        self._address = address
        self._call_timeout = call_timeout
        self._connect_timeout = connect_timeout
        self._max_backoff = max_backoff
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[p.Reply]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._connect_lock = asyncio.Lock()
        self._reconnect_task: asyncio.Task[None] | None = None
        self._closed = False
        self.connected_since: float | None = None

    @property
    def connected(self) -> bool:
        """True while a connection to the enclave is open."""
        return self._writer is not None

    async def start(self) -> None:
        """Try to connect now; if the enclave is not up yet keep trying in the background."""
        try:
            await self._ensure_connected()
        except EnclaveUnavailable:
            self._schedule_reconnect()

    async def close(self) -> None:
        """Close the connection and fail every pending call."""
        self._closed = True
        if self._reconnect_task is not None:
            self._reconnect_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnect_task
        await self._drop_connection("client closed")

    async def call(self, request: p.Request, reply_type: type[R]) -> R:
        """Send ``request`` (its request_id is replaced) and await its typed reply."""
        expected = p.REPLY_TYPES[type(request)]
        if expected is not reply_type:
            raise TypeError(f"{type(request).__name__} is answered by {expected.__name__}")
        await self._ensure_connected()
        writer = self._writer
        if writer is None:  # lost between the check and now
            raise EnclaveUnavailable("enclave connection lost")
        request_id = next(self._ids)
        future: asyncio.Future[p.Reply] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            writer.write(p.encode_frame(dataclasses.replace(request, request_id=request_id)))
            await writer.drain()
            reply = await asyncio.wait_for(future, self._call_timeout)
        except (ConnectionError, OSError) as exc:
            await self._drop_connection("write failed")
            raise EnclaveUnavailable("enclave connection lost") from exc
        except TimeoutError:
            raise EnclaveUnavailable("enclave did not answer in time") from None
        finally:
            self._pending.pop(request_id, None)
        if isinstance(reply, p.ErrorReply):
            raise EnclaveRefused(reply.code, reply.message)
        if not isinstance(reply, reply_type):
            # A wrong reply type means the stream can no longer be trusted.
            await self._drop_connection("unexpected reply type")
            raise EnclaveUnavailable("enclave sent an unexpected reply")
        return reply

    # ------------------------------------------------------------------ internals

    async def _ensure_connected(self) -> None:
        if self._writer is not None:
            return
        if self._closed:
            raise EnclaveUnavailable("client closed")
        if self._reconnect_task is not None and not self._reconnect_task.done():
            # Already retrying in the background: fail fast instead of piling up connects.
            raise EnclaveUnavailable("enclave is not reachable")
        if not await self._try_connect():
            self._schedule_reconnect()
            raise EnclaveUnavailable("enclave is not reachable")

    async def _try_connect(self) -> bool:
        async with self._connect_lock:
            if self._writer is not None:
                return True
            try:
                reader, writer = await asyncio.wait_for(
                    self._transport.open_connection(self._address), self._connect_timeout
                )
            except (TransportError, TimeoutError, OSError):
                return False
            self._writer = writer
            self.connected_since = time.monotonic()
            self._reader_task = asyncio.create_task(self._read_loop(reader, writer))
            log.info("enclave_connected", address=str(self._address))
            return True

    async def _read_loop(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = p.FrameDecoder()
        reason = "enclave closed the connection"
        try:
            while data := await reader.read(65536):
                for message in decoder.feed(data):
                    future = self._pending.get(message.request_id)
                    if future is not None and not future.done():
                        future.set_result(message)  # type: ignore[arg-type]
        except RemoteProtocolError:
            reason = "protocol error from enclave"
        except (ConnectionError, OSError):
            reason = "connection error"
        if self._writer is writer:
            await self._drop_connection(reason)

    async def _drop_connection(self, reason: str) -> None:
        writer, self._writer = self._writer, None
        self.connected_since = None
        for future in self._pending.values():
            if not future.done():
                future.set_exception(EnclaveUnavailable("enclave connection lost"))
        self._pending.clear()
        if writer is not None:
            log.warning("enclave_disconnected", reason=reason)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
        task, self._reader_task = self._reader_task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        self._schedule_reconnect()  # no-op once closed

    def _schedule_reconnect(self) -> None:
        if self._closed or (self._reconnect_task is not None and not self._reconnect_task.done()):
            return
        self._reconnect_task = asyncio.create_task(self._reconnect_loop())

    async def _reconnect_loop(self) -> None:
        delay = 0.05
        while not self._closed and self._writer is None:
            await asyncio.sleep(delay)
            if await self._try_connect():
                return
            delay = min(delay * 2, self._max_backoff)
