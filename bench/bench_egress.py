"""Egress tunnel throughput and connection rate vs direct loopback TCP. Side: enclave + parent.

What is measured (loopback only, one process, one event loop): a client connects to
the enclave's ``EgressProxy`` on 127.0.0.1, asks ``CONNECT api.binance.com:443``,
and the tunnel runs over the TCP simulator transport to ``ParentEgress``, whose
dev host override sends it to a local server. So every byte crosses three sockets
and two relays, all of them sharing the one core the loop runs on.

- **stream**: ``STREAM_BYTES`` (64 MiB) written by the client in 256 KiB chunks
  with drain() after each, into a sink that counts them and answers the count
  after EOF; MB/s = 10^6 bytes per second from the first byte written to the
  count received. Best of ``STREAM_RUNS``.
- **connect**: CONNECT + 200, then one 16-byte round trip to an echo server, then
  close; sequential, connections per second over ``CONNECT_S`` seconds.

Against what, in the same run: the same client loop talking to the same sink or
echo server directly (one loopback TCP connection, no proxy). Egress logs are
raised to WARNING for the run (one info line per tunnel would be measured too).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator

import structlog

from bench.common import Result
from enclave.egress import EgressProxy
from parent.egress import ParentEgress
from shared.allowlist import Allowlist
from shared.io.transport import PARENT_CID, TcpSimTransport, VsockAddress

__all__ = ["run"]

STREAM_BYTES = 64 * 1024 * 1024
STREAM_RUNS = 3
CHUNK = 256 * 1024
CONNECT_S = 1.5
TARGET = "api.binance.com:443"
ADDRESS = VsockAddress(cid=PARENT_CID, port=8001)
_CONNECT_HEAD = f"CONNECT {TARGET} HTTP/1.1\r\nHost: {TARGET}\r\n\r\n".encode()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Count bytes until EOF, answer the count (8 bytes, big-endian), close."""
    total = 0
    while data := await reader.read(CHUNK):
        total += len(data)
    writer.write(total.to_bytes(8, "big"))
    await writer.drain()
    writer.close()


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


@contextlib.asynccontextmanager
async def _tunnel_to(server_port: int) -> AsyncIterator[int]:
    """Parent egress + enclave proxy, TARGET overridden to ``server_port``; yields its port."""
    transport = TcpSimTransport({ADDRESS: _free_port()})
    parent = ParentEgress(
        transport,
        address=ADDRESS,
        allowlist=Allowlist.parse(TARGET),
        host_overrides={("api.binance.com", 443): ("127.0.0.1", server_port)},
        max_tunnels=1024,
    )
    proxy = EgressProxy(transport, allowlist=Allowlist.parse(TARGET), max_tunnels=1024)
    await parent.start()
    await proxy.start()
    try:
        yield proxy.port
    finally:
        await proxy.close()
        await parent.close()


async def _open(port: int, *, tunnel: bool) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if tunnel:
        writer.write(_CONNECT_HEAD)
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200 "):
            raise RuntimeError(f"tunnel refused: {head[:40]!r}")
    return reader, writer


async def _stream_once(port: int, *, tunnel: bool, size: int) -> float:
    """Seconds to push ``size`` bytes and get the sink's count back."""
    chunk = bytes(CHUNK)
    reader, writer = await _open(port, tunnel=tunnel)
    started = time.perf_counter()
    for _ in range(size // CHUNK):
        writer.write(chunk)
        await writer.drain()
    writer.write_eof()
    counted = int.from_bytes(await reader.readexactly(8), "big")
    elapsed = time.perf_counter() - started
    writer.close()
    if counted != size:
        raise RuntimeError(f"sink counted {counted} bytes, sent {size}")
    return elapsed


async def _stream_mb_s(port: int, *, tunnel: bool) -> float:
    await _stream_once(port, tunnel=tunnel, size=8 * CHUNK)  # warm-up
    best = min(
        [await _stream_once(port, tunnel=tunnel, size=STREAM_BYTES) for _ in range(STREAM_RUNS)]
    )
    return STREAM_BYTES / best / 1e6


async def _connects_per_s(port: int, *, tunnel: bool) -> float:
    payload = b"0123456789abcdef"

    async def once() -> None:
        reader, writer = await _open(port, tunnel=tunnel)
        writer.write(payload)
        if await reader.readexactly(len(payload)) != payload:
            raise RuntimeError("echo mismatch")
        writer.close()
        await writer.wait_closed()

    for _ in range(20):  # warm-up
        await once()
    count = 0
    started = time.perf_counter()
    deadline = started + CONNECT_S
    while time.perf_counter() < deadline:
        await once()
        count += 1
    return count / (time.perf_counter() - started)


async def _main() -> list[Result]:
    sink = await asyncio.start_server(_sink, "127.0.0.1", 0)
    echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
    sink_port = int(sink.sockets[0].getsockname()[1])
    echo_port = int(echo.sockets[0].getsockname()[1])
    try:
        async with _tunnel_to(sink_port) as proxy_port:
            direct_mb = await _stream_mb_s(sink_port, tunnel=False)
            tunnel_mb = await _stream_mb_s(proxy_port, tunnel=True)
        async with _tunnel_to(echo_port) as proxy_port:
            direct_cps = await _connects_per_s(echo_port, tunnel=False)
            tunnel_cps = await _connects_per_s(proxy_port, tunnel=True)
    finally:
        sink.close()
        echo.close()
    return [
        Result(
            area="egress",
            name="stream MB/s via enclave proxy -> transport -> parent egress",
            ops_per_s=tunnel_mb,
            baseline="direct loopback TCP copy (same bytes)",
            baseline_ops_per_s=direct_mb,
            extra={"mib": STREAM_BYTES // (1024 * 1024), "runs": STREAM_RUNS},
        ),
        Result(
            area="egress",
            name="connections/s: CONNECT + 16 B round trip, sequential",
            ops_per_s=tunnel_cps,
            baseline="direct loopback connect + round trip",
            baseline_ops_per_s=direct_cps,
            extra={"window_s": CONNECT_S},
        ),
    ]


def run() -> list[Result]:
    """Tunnel MB/s and connections/s, each next to direct loopback TCP in the same run."""
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))  # WARNING
    try:
        return asyncio.run(_main())
    finally:
        structlog.configure(**saved)


if __name__ == "__main__":
    for r in run():
        print(f"{r.name}: {r.ops_per_s:,.1f} vs {r.baseline_ops_per_s:,.1f} ({r.ratio:.3f})")
