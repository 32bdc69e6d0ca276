"""The parent's egress proxy: the enclave's tunnels out to allow-listed hosts. Side: parent.

Listens on the transport (vsock, or the TCP simulator) at (PARENT_CID 3,
EGRESS_VSOCK_PORT). Each stream the enclave opens carries one CONNECT head
(``shared.connect``) and then one tunnel. For each stream the parent:

1. reads the head with a deadline and a size bound; 400/405/408/431 otherwise;
2. checks host:port against the operator's allowlist; 403 when it is not there;
3. resolves the host and keeps only public (``is_global``) addresses, so an
   allow-listed name that resolves into the VPC, the loopback or the instance
   metadata service (169.254.169.254) is refused with 403;
4. connects within ``connect_timeout`` (502 refused/unreachable/unresolvable, 504
   timed out), answers 200 and relays bytes both ways with backpressure until
   either side closes or nothing moved for ``idle_timeout``.

The parent is untrusted and sees only TLS records: TLS runs end to end between the
enclave's client and the exchange, and the enclave verifies the certificate. What
the parent enforces here protects the operator (where its instance connects, how
many tunnels it holds), not the user.

Development only: ``host_overrides`` (EGRESS_HOST_OVERRIDES,
``"api.binance.com:443=127.0.0.1:18443,..."``) changes where the parent connects
for an allow-listed target and nothing else: the enclave still verifies TLS for
the real name, so fake exchanges with real host names work in simulator mode.
Override targets skip the public-address check (they are loopback by design), so
production refuses overrides outright.

Prometheus series, on the registry passed in (the parent's ``ApiMetrics.registry``)
or on a private one: ``egress_connections_total{host, outcome}``,
``egress_bytes_total{direction}``, ``egress_active_tunnels``. The ``host`` label is
an allowlist entry, ``denied`` for a target outside the allowlist, or ``invalid``
for a head that did not parse: never a value the enclave chose.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Mapping

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge

from shared.allowlist import Allowlist
from shared.connect import (
    ConnectHeadError,
    ConnectRequest,
    HeadReader,
    error_response,
    format_connect_response,
    parse_authority,
    parse_connect_request,
)
from shared.io.relay import CHUNK, relay
from shared.io.server import ConnectionHandlers
from shared.io.transport import Transport, VsockAddress

__all__ = [
    "DENIED_LABEL",
    "INVALID_LABEL",
    "EgressMetrics",
    "Outcome",
    "ParentEgress",
    "Resolver",
    "parse_host_overrides",
    "system_resolver",
]

log = structlog.get_logger("parent.egress")

DENIED_LABEL = "denied"
"""The ``host`` label of targets outside the allowlist (the target itself is never a label)."""

INVALID_LABEL = "invalid"
"""The ``host`` label of streams whose head did not parse or did not arrive."""

Resolver = Callable[[str, int], Awaitable[list[str]]]
"""host, port -> IP addresses to try, in order. Raises OSError when the name does not resolve."""

_WRITE_TIMEOUT = 2.0


class Outcome(enum.StrEnum):
    """The ``outcome`` label of ``egress_connections_total``."""

    OK = "ok"  # 200, tunnel relayed
    DENIED = "denied"  # 403, not in the allowlist
    BLOCKED = "blocked"  # 403, resolves only to non-public addresses
    BAD_REQUEST = "bad_request"  # 400/405/408/431
    BUSY = "busy"  # 503, max_tunnels reached
    UNREACHABLE = "unreachable"  # 502, unresolvable, refused, unreachable
    TIMEOUT = "timeout"  # 504, connect timed out


class EgressMetrics:
    """The egress series, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.connections = Counter(
            "egress_connections",
            "Egress tunnel requests by allowlist entry ('denied', 'invalid') and outcome.",
            ("host", "outcome"),
            registry=registry,
        )
        self.bytes = Counter(
            "egress_bytes",
            "Tunnel payload bytes: outbound = enclave to remote, inbound = remote to enclave.",
            ("direction",),
            registry=registry,
        )
        self.active_tunnels = Gauge(
            "egress_active_tunnels", "Egress tunnels currently open.", registry=registry
        )


async def system_resolver(host: str, port: int) -> list[str]:
    """The host's resolver (getaddrinfo), addresses in its order, duplicates removed."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def parse_host_overrides(text: str) -> dict[tuple[str, int], tuple[str, int]]:
    """Parse ``"host:port=host:port,..."`` (EGRESS_HOST_OVERRIDES, development only)."""
    result: dict[tuple[str, int], tuple[str, int]] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        left, sep, right = item.partition("=")
        try:
            if not sep:
                raise ConnectHeadError("expected host:port=host:port")
            target, destination = parse_authority(left.strip()), parse_authority(right.strip())
        except ConnectHeadError as exc:
            raise ValueError(f"bad host override {item!r}: {exc}") from None
        if target in result:
            raise ValueError(f"duplicate host override for {left.strip()!r}")
        result[target] = destination
    return result


class _Refusal(Exception):
    """Answer the enclave with ``head`` and count (``label``, ``outcome``)."""

    def __init__(self, head: bytes, label: str, outcome: Outcome) -> None:
        super().__init__(outcome.value)
        self.head = head
        self.label = label
        self.outcome = outcome

    @classmethod
    def status(cls, status: int, reason: str, label: str, outcome: Outcome) -> _Refusal:
        """A refusal with a status code and a fixed reason phrase."""
        return cls(format_connect_response(status, reason), label, outcome)


class ParentEgress:
    """Serve the enclave's CONNECT tunnels on a transport address."""

    def __init__(
        self,
        transport: Transport,
        *,
        address: VsockAddress,
        allowlist: Allowlist,
        host_overrides: Mapping[tuple[str, int], tuple[str, int]] | None = None,
        production: bool = False,
        registry: CollectorRegistry | None = None,
        resolver: Resolver | None = None,
        head_timeout: float = 5.0,
        connect_timeout: float = 10.0,
        idle_timeout: float = 300.0,
        max_tunnels: int = 256,
    ) -> None:
        overrides = dict(host_overrides or {})
        if production and overrides:
            # Overrides bypass DNS and the public-address check: a dev shortcut only.
            raise ValueError("EGRESS_HOST_OVERRIDES is refused in production")
        for host, port in overrides:
            if not allowlist.is_allowed(host, port):
                raise ValueError(f"host override for {host}:{port}, which is not allow-listed")
        if min(head_timeout, connect_timeout, idle_timeout) <= 0 or max_tunnels < 1:
            raise ValueError("timeouts and max_tunnels must be positive")
        self._transport = transport
        self._address = address
        self._allowlist = allowlist
        self._overrides = overrides
        self._resolver = resolver or system_resolver
        self._head_timeout = head_timeout
        self._connect_timeout = connect_timeout
        self._idle_timeout = idle_timeout
        self._max_tunnels = max_tunnels
        self._active = 0
        self.metrics = EgressMetrics(registry or CollectorRegistry(auto_describe=True))
        self._outbound = self.metrics.bytes.labels("outbound")
        self._inbound = self.metrics.bytes.labels("inbound")
        self._server: asyncio.Server | None = None
        self._handlers = ConnectionHandlers()

    @property
    def registry(self) -> CollectorRegistry:
        """The registry holding the egress series."""
        return self.metrics.registry

    @property
    def active_tunnels(self) -> int:
        """Tunnels open right now."""
        return self._active

    async def start(self) -> None:
        """Listen on the transport address."""
        self._server = await self._transport.start_server(
            self._handlers.tracked(self._handle), self._address
        )
        log.info(
            "egress_listening",
            address=str(self._address),
            allowlist=str(self._allowlist),
            overrides=len(self._overrides),
        )

    async def close(self) -> None:
        """Stop accepting and close every open tunnel."""
        await self._handlers.close(self._server)
        self._server = None

    # ------------------------------------------------------------------ per stream

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._tunnel(reader, writer)
        except _Refusal as refusal:
            self.metrics.connections.labels(refusal.label, refusal.outcome.value).inc()
            await _answer(writer, refusal.head)
        except (ConnectionError, OSError):
            pass  # the enclave went away
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _tunnel(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request, early = await self._read_request(reader)
        target = request.authority
        entry = self._allowlist.match(request.host, request.port)
        if entry is None:
            log.warning("egress_denied", target=target, by="parent")
            raise _Refusal.status(403, f"Host not allowed: {target}", DENIED_LABEL, Outcome.DENIED)
        if self._active >= self._max_tunnels:
            log.warning("egress_busy", target=target, active=self._active)
            raise _Refusal.status(503, "Too many tunnels", entry, Outcome.BUSY)
        self._active += 1
        self.metrics.active_tunnels.inc()
        upstream_writer: asyncio.StreamWriter | None = None
        started = asyncio.get_running_loop().time()
        try:
            upstream_reader, upstream_writer = await self._connect(request, entry)
            self.metrics.connections.labels(entry, Outcome.OK.value).inc()
            writer.write(format_connect_response(200))
            if early:
                self._outbound.inc(len(early))
                upstream_writer.write(early)
            ended = await relay(
                reader,
                writer,
                upstream_reader,
                upstream_writer,
                idle_timeout=self._idle_timeout,
                forward=self._outbound.inc,
                backward=self._inbound.inc,
            )
            log.info(
                "egress_tunnel_closed",
                target=target,
                ended=ended,
                seconds=round(asyncio.get_running_loop().time() - started, 3),
            )
        finally:
            self._active -= 1
            self.metrics.active_tunnels.dec()
            if upstream_writer is not None:
                upstream_writer.close()
                with contextlib.suppress(ConnectionError, OSError):
                    await upstream_writer.wait_closed()

    async def _read_request(self, reader: asyncio.StreamReader) -> tuple[ConnectRequest, bytes]:
        head_reader = HeadReader()
        try:
            async with asyncio.timeout(self._head_timeout):
                while (head := head_reader.feed(await reader.read(CHUNK))) is None:
                    if reader.at_eof():
                        raise ConnectHeadError("stream closed inside the head")
            return parse_connect_request(head), head_reader.rest
        except TimeoutError:
            raise _Refusal.status(
                408, "Request head timeout", INVALID_LABEL, Outcome.BAD_REQUEST
            ) from None
        except ConnectHeadError as exc:
            log.info("egress_bad_request", error=str(exc), status=exc.status)
            raise _Refusal(error_response(exc), INVALID_LABEL, Outcome.BAD_REQUEST) from None

    async def _connect(
        self, request: ConnectRequest, entry: str
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Resolve and connect within ``connect_timeout``; ``_Refusal`` otherwise."""
        target = request.authority
        override = self._overrides.get((request.host, request.port))
        try:
            async with asyncio.timeout(self._connect_timeout):
                if override is not None:
                    # Dev only (refused in production): where to connect, not what to verify.
                    candidates = [override]
                else:
                    candidates = await self._public_addresses(request, entry)
                error: OSError | None = None
                for host, port in candidates:
                    try:
                        return await asyncio.open_connection(host, port)
                    except OSError as exc:
                        error = exc
                log.warning("egress_unreachable", target=target, error_type=type(error).__name__)
                raise _Refusal.status(502, "Destination unreachable", entry, Outcome.UNREACHABLE)
        except TimeoutError:
            log.warning("egress_connect_timeout", target=target)
            raise _Refusal.status(
                504, "Destination connect timeout", entry, Outcome.TIMEOUT
            ) from None

    async def _public_addresses(self, request: ConnectRequest, entry: str) -> list[tuple[str, int]]:
        try:
            addresses = await self._resolver(request.host, request.port)
        except OSError:
            log.warning("egress_unresolvable", target=request.authority)
            raise _Refusal.status(
                502, "Destination does not resolve", entry, Outcome.UNREACHABLE
            ) from None
        public = [(address, request.port) for address in addresses if _is_public(address)]
        if not public:
            # An allow-listed name pointing into the VPC, at loopback or at the
            # instance metadata service must not become a way in.
            log.warning("egress_blocked_address", target=request.authority)
            raise _Refusal.status(403, "Destination address not allowed", entry, Outcome.BLOCKED)
        return public


def _is_public(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_global
    except ValueError:  # e.g. a scoped IPv6 address "fe80::1%eth0"
        return False


async def _answer(writer: asyncio.StreamWriter, head: bytes) -> None:
    """Send a short error head; give up after a moment if the enclave does not read."""
    with contextlib.suppress(ConnectionError, OSError, TimeoutError):
        writer.write(head)
        async with asyncio.timeout(_WRITE_TIMEOUT):
            await writer.drain()


# The byte relay. enclave/egress.py carries the same function: the enclave image
# must not import parent code; both copies belong in shared/io once it hosts them.
