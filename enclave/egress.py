"""The enclave's local HTTP CONNECT proxy: the only way out of the enclave. Side: enclave.

The enclave has no network. Its HTTP clients (ccxt on aiohttp, boto3) are pointed
at ``EgressProxy.url`` (``http://127.0.0.1:<port>``) and ask for a tunnel with
``CONNECT host:port``. For each request the proxy:

1. reads the head with a deadline and a size bound (``shared.connect``), and
   answers 400/405/408/431 to anything else than a strict CONNECT;
2. checks host:port against *its own* allowlist and answers 403 naming the target
   when it is not allowed: a denied host never leaves the enclave (the parent
   checks too, but that check is the operator's, this one is the user's);
3. opens one transport stream (vsock, or the TCP simulator) to the parent's egress
   proxy and sends a fresh CONNECT head that carries host:port only, none of the
   client's fields;
4. maps the parent's answer to a short, fixed reason (the parent is untrusted: its
   reason text is not passed on) - 403 refused, 502 unreachable, 504 timed out,
   503 busy - or, on 200, answers 200 and relays bytes both ways until either
   side closes or the tunnel is idle for ``idle_timeout``.

Every wait has a deadline, so a client sees a prompt error status, never a hang.
TLS stays end to end between the client and the exchange: this proxy and the
parent only ever carry TLS records (plain ``http://`` proxying is refused, 405).

``stats()`` returns counters (connections by outcome, active tunnels, bytes each
way) the enclave reports through its Stats RPC. Logs carry host:port, the outcome,
byte counts and durations; never a URL, a header or a byte of the tunnel.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import Callable

import structlog

from shared.allowlist import Allowlist
from shared.connect import (
    ConnectHeadError,
    ConnectRequest,
    HeadReader,
    error_response,
    format_connect_request,
    format_connect_response,
    parse_connect_request,
    parse_connect_response,
)
from shared.errors import TransportError
from shared.io.relay import CHUNK, relay
from shared.io.server import ConnectionHandlers
from shared.io.transport import (
    DEFAULT_EGRESS_VSOCK_PORT,
    PARENT_CID,
    Transport,
    VsockAddress,
)

__all__ = ["DEFAULT_EGRESS_VSOCK_PORT", "EgressProxy", "parent_egress_address"]

log = structlog.get_logger("enclave.egress")


_WRITE_TIMEOUT = 2.0  # for the short error answers: a client that does not read is dropped

# The parent's status -> what our client is told. Fixed texts: the parent is
# untrusted and its reason phrase is not repeated inside the enclave.
_PARENT_ANSWERS = {
    400: (502, "Parent egress refused the request", "failed"),
    403: (403, "Refused by the parent egress allowlist", "refused_by_parent"),
    503: (503, "Parent egress busy", "busy"),
    504: (504, "Parent egress timed out connecting", "timeouts"),
}

_COUNTERS = (
    "connections",  # accepted client connections
    "opened",  # tunnels established (200 sent)
    "denied",  # refused by this proxy's allowlist (403), never sent to the parent
    "refused_by_parent",  # the parent answered 403
    "failed",  # parent unreachable, destination unreachable, bad answer (502)
    "timeouts",  # no answer or connect timeout (504)
    "busy",  # too many tunnels here or at the parent (503)
    "bad_requests",  # malformed, oversized, late or non-CONNECT heads (4xx)
    "bytes_sent",  # client -> parent, tunnel payload only
    "bytes_received",  # parent -> client, tunnel payload only
)


def parent_egress_address(port: int = DEFAULT_EGRESS_VSOCK_PORT) -> VsockAddress:
    """The parent's egress proxy as seen from the enclave: (PARENT_CID 3, ``port``)."""
    return VsockAddress(cid=PARENT_CID, port=port)


class _Refusal(Exception):
    """Answer the client with ``head`` (an error response) and count ``outcome``."""

    def __init__(self, head: bytes, outcome: str) -> None:
        super().__init__(outcome)
        self.head = head
        self.outcome = outcome

    @classmethod
    def status(cls, status: int, reason: str, outcome: str) -> _Refusal:
        """A refusal with a status code and a fixed reason phrase."""
        return cls(format_connect_response(status, reason), outcome)


class EgressProxy:
    """A CONNECT proxy on loopback that tunnels allow-listed targets to the parent."""

    def __init__(
        self,
        transport: Transport,
        *,
        allowlist: Allowlist,
        parent_address: VsockAddress | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        head_timeout: float = 5.0,
        connect_timeout: float = 15.0,
        idle_timeout: float = 300.0,
        max_tunnels: int = 256,
    ) -> None:
        """``connect_timeout`` covers opening the stream *and* the parent's answer, so
        it should exceed the parent's own connect timeout (10 s by default) for the
        parent's 504 to arrive first."""
        # Loopback only: anywhere else this would be an open proxy into the tunnel.
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError("the egress proxy listens on a loopback address only")
        if not 0 <= port <= 65535:
            raise ValueError("port out of range")
        if min(head_timeout, connect_timeout, idle_timeout) <= 0 or max_tunnels < 1:
            raise ValueError("timeouts and max_tunnels must be positive")
        self._transport = transport
        self._allowlist = allowlist
        self._parent = parent_address or parent_egress_address()
        self._host = host
        self._port = port
        self._head_timeout = head_timeout
        self._connect_timeout = connect_timeout
        self._idle_timeout = idle_timeout
        self._max_tunnels = max_tunnels
        self._active = 0
        self._counts = dict.fromkeys(_COUNTERS, 0)
        self._server: asyncio.Server | None = None
        self._handlers = ConnectionHandlers()

    async def start(self) -> None:
        """Listen on host:port (port 0: the system picks one; read ``port`` after)."""
        self._server = await asyncio.start_server(
            self._handlers.tracked(self._serve_connection),
            self._host,
            self._port,
            reuse_address=True,
        )
        self._port = int(self._server.sockets[0].getsockname()[1])
        log.info("egress_proxy_listening", port=self._port, parent=str(self._parent))

    @property
    def port(self) -> int:
        """The bound TCP port (after ``start``)."""
        return self._port

    @property
    def url(self) -> str:
        """The proxy URL for HTTP clients, e.g. aiohttp's ``proxy=`` argument."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    def stats(self) -> dict[str, int]:
        """Connection counters by outcome, active tunnels, and payload bytes each way."""
        return {**self._counts, "active": self._active}

    async def close(self) -> None:
        """Stop accepting and close every open tunnel."""
        await self._handlers.close(self._server)
        self._server = None

    # ------------------------------------------------------------------ per connection

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._counts["connections"] += 1
        await self._handle(reader, writer)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._tunnel(reader, writer)
        except _Refusal as refusal:
            self._counts[refusal.outcome] += 1
            await _answer(writer, refusal.head)
        except (ConnectionError, OSError):
            pass  # the client went away; nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _tunnel(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request, early = await self._read_request(reader)
        target = request.authority
        if not self._allowlist.is_allowed(request.host, request.port):
            log.warning("egress_denied", target=target, by="enclave")
            raise _Refusal.status(403, f"Host not allowed: {target}", "denied")
        if self._active >= self._max_tunnels:
            log.warning("egress_busy", target=target, active=self._active)
            raise _Refusal.status(503, "Too many tunnels", "busy")
        self._active += 1
        started = asyncio.get_running_loop().time()
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            upstream_reader, upstream_writer, late = await self._open(request)
            self._counts["opened"] += 1
            writer.write(format_connect_response(200))
            # Bytes the client sent before our 200 (an eager ClientHello) and bytes
            # the destination sent along with the parent's 200 are tunnel data.
            if early:
                self._counts["bytes_sent"] += len(early)
                upstream_writer.write(early)
            if late:
                self._counts["bytes_received"] += len(late)
                writer.write(late)
            ended = await relay(
                reader,
                writer,
                upstream_reader,
                upstream_writer,
                idle_timeout=self._idle_timeout,
                forward=self._count("bytes_sent"),
                backward=self._count("bytes_received"),
            )
            log.info(
                "egress_tunnel_closed",
                target=target,
                ended=ended,
                seconds=round(asyncio.get_running_loop().time() - started, 3),
            )
        finally:
            self._active -= 1
            if upstream_writer is not None:
                upstream_writer.close()
                with contextlib.suppress(ConnectionError, OSError):
                    await upstream_writer.wait_closed()

    def _count(self, key: str) -> Callable[[int], None]:
        counts = self._counts

        def add(size: int) -> None:
            counts[key] += size

        return add

    async def _read_request(self, reader: asyncio.StreamReader) -> tuple[ConnectRequest, bytes]:
        """The client's CONNECT head, within ``head_timeout``; 4xx refusals otherwise."""
        head_reader = HeadReader()
        try:
            async with asyncio.timeout(self._head_timeout):
                while (head := head_reader.feed(await reader.read(CHUNK))) is None:
                    if reader.at_eof():
                        raise ConnectHeadError("stream closed inside the head")
            return parse_connect_request(head), head_reader.rest
        except TimeoutError:
            raise _Refusal.status(408, "Request head timeout", "bad_requests") from None
        except ConnectHeadError as exc:
            log.info("egress_bad_request", error=str(exc), status=exc.status)
            raise _Refusal(error_response(exc), "bad_requests") from None

    async def _open(
        self, request: ConnectRequest
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
        """A transport stream to the parent with its 200 received; ``_Refusal`` otherwise."""
        target = request.authority
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(self._connect_timeout):
                try:
                    reader, writer = await self._transport.open_connection(self._parent)
                except TransportError:
                    log.warning("egress_parent_unavailable", target=target)
                    raise _Refusal.status(502, "Parent egress unavailable", "failed") from None
                writer.write(format_connect_request(request))
                await writer.drain()
                head_reader = HeadReader()
                while (head := head_reader.feed(await reader.read(CHUNK))) is None:
                    if reader.at_eof():
                        raise ConnectHeadError("stream closed inside the head")
                response = parse_connect_response(head)
        except TimeoutError:
            _close(writer)
            log.warning("egress_parent_timeout", target=target)
            raise _Refusal.status(504, "Parent egress did not answer in time", "timeouts") from None
        except (ConnectHeadError, ConnectionError, OSError):
            _close(writer)
            log.warning("egress_parent_bad_answer", target=target)
            raise _Refusal.status(502, "Parent egress closed or answered badly", "failed") from None
        except BaseException:
            _close(writer)
            raise
        if not response.ok:
            _close(writer)
            status, reason, outcome = _PARENT_ANSWERS.get(
                response.status, (502, "Destination unreachable via parent egress", "failed")
            )
            log.warning("egress_refused_by_parent", target=target, status=response.status)
            if status == 403:
                reason = f"{reason}: {target}"
            raise _Refusal.status(status, reason, outcome)
        return reader, writer, head_reader.rest


def _close(writer: asyncio.StreamWriter | None) -> None:
    if writer is not None:
        writer.close()


async def _answer(writer: asyncio.StreamWriter, head: bytes) -> None:
    """Send a short error head; give up after a moment if the client does not read."""
    with contextlib.suppress(ConnectionError, OSError, TimeoutError):
        writer.write(head)
        async with asyncio.timeout(_WRITE_TIMEOUT):
            await writer.drain()


# The byte relay. parent/egress.py carries the same function: the enclave image
# must not import parent code; both copies belong in shared/io once it hosts them.
