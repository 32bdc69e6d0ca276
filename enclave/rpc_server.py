"""RPC server: frames in from the parent, handler calls, replies out. Side: enclave.

Each connection gets a sans-IO ``FrameDecoder``; every complete request is run as
its own task (bounded per connection) so a slow call never blocks the others,
and its reply carries the same request id. A protocol violation closes the
connection: after one bad frame nothing later on that stream can be trusted.

An exception escaping a handler becomes ``ErrorReply(INTERNAL, "internal error")``
and is logged by type name only: library exceptions (an exchange client's, say)
may quote request data, and nothing that could hold a secret leaves the enclave.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

from shared import protocol as p
from shared.errors import LocalProtocolError, RemoteProtocolError
from shared.io.server import ConnectionHandlers
from shared.io.transport import Transport, VsockAddress

__all__ = ["Handler", "RpcServer"]

log = structlog.get_logger("enclave.rpc")

Handler = Callable[[p.Request], Awaitable[p.Reply]]


class RpcServer:
    """Serve ``handler`` on a transport address."""

    def __init__(self, handler: Handler, *, max_in_flight: int = 256) -> None:
        self._handler = handler
        self._max_in_flight = max_in_flight
        self._server: asyncio.Server | None = None
        self._handlers = ConnectionHandlers()

    async def start(self, transport: Transport, address: VsockAddress) -> None:
        """Listen on ``address``."""
        self._server = await transport.start_server(
            self._handlers.tracked(self._serve_connection), address
        )
        log.info("rpc_listening", address=str(address))

    async def close(self) -> None:
        """Stop accepting and close every open connection."""
        await self._handlers.close(self._server)
        self._server = None

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        decoder = p.FrameDecoder()
        slots = asyncio.Semaphore(self._max_in_flight)
        calls: set[asyncio.Task[None]] = set()
        try:
            while data := await reader.read(65536):
                for message in decoder.feed(data):
                    if not isinstance(message, p.Request):
                        raise RemoteProtocolError("parent sent a reply, not a request")
                    await slots.acquire()  # backpressure: stop reading when saturated
                    task = asyncio.create_task(self._answer(message, writer, slots))
                    calls.add(task)
                    task.add_done_callback(calls.discard)
            decoder.close()
        except RemoteProtocolError as exc:
            log.warning("rpc_protocol_error", error=str(exc))
        except (ConnectionError, OSError):
            log.info("rpc_connection_lost")
        finally:
            for task in calls:
                task.cancel()
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _answer(
        self, request: p.Request, writer: asyncio.StreamWriter, slots: asyncio.Semaphore
    ) -> None:
        try:
            try:
                reply = await self._handler(request)
            except Exception as exc:  # noqa: BLE001 - last line of defence, see module doc
                log.error("rpc_handler_failed", method=request.TYPE, error_type=type(exc).__name__)
                reply = p.ErrorReply(
                    request_id=request.request_id,
                    code=p.ErrorCode.INTERNAL,
                    message="internal error",
                )
            frame = _encode_reply(request, reply)
            if writer.is_closing():
                return
            writer.write(frame)
            with contextlib.suppress(ConnectionError, OSError):
                await writer.drain()
        finally:
            slots.release()


def _encode_reply(request: p.Request, reply: p.Reply) -> bytes:
    """Frame ``reply``; a handler bug (wrong id, unencodable value) becomes INTERNAL."""
    try:
        if reply.request_id != request.request_id:
            raise LocalProtocolError("reply carries another request id")
        return p.encode_frame(reply)
    except LocalProtocolError as exc:
        log.error("rpc_reply_unencodable", method=request.TYPE, error=str(exc))
        return p.encode_frame(
            p.ErrorReply(
                request_id=request.request_id, code=p.ErrorCode.INTERNAL, message="internal error"
            )
        )
