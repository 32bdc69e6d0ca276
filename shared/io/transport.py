"""The trust-boundary transport: one port, two adapters. Side: parent and enclave.

``Transport`` opens and accepts byte streams between the parent (CID 3) and the
enclave over AF_VSOCK. Two adapters implement it:

* ``VsockTransport``: real AF_VSOCK sockets, for Nitro hosts. Never opened in tests.
* ``TcpSimTransport``: the dev simulator. Each (CID, port) pair is mapped to a TCP
  port on 127.0.0.1 by an explicit table, so both processes agree on addresses
  without any guessing.

Which adapter runs is chosen by explicit configuration in the composition root
(``transport_from_config``); nothing probes for /dev/vsock or falls back from one
adapter to the other (fail closed: a misconfigured production host must not end
up on TCP silently).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from shared.errors import TransportError

__all__ = [
    "DEFAULT_EGRESS_VSOCK_PORT",
    "PARENT_CID",
    "VMADDR_CID_ANY",
    "ConnectionHandler",
    "TcpSimTransport",
    "Transport",
    "VsockAddress",
    "VsockTransport",
    "parse_port_map",
    "transport_from_config",
]

PARENT_CID = 3
"""The parent instance's CID as seen from inside a Nitro Enclave."""

VMADDR_CID_ANY = 0xFFFFFFFF
"""Listen on every CID (linux/vm_sockets.h)."""

DEFAULT_EGRESS_VSOCK_PORT = 8001
"""vsock port of the parent's egress proxy (EGRESS_VSOCK_PORT), dialled at PARENT_CID."""

ConnectionHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

_LOOPBACK = "127.0.0.1"


@dataclass(frozen=True, slots=True, kw_only=True)
class VsockAddress:
    """A vsock endpoint: context id and port."""

    cid: int
    port: int

    def __post_init__(self) -> None:
        if not 0 <= self.cid <= 0xFFFFFFFF or not 0 <= self.port <= 0xFFFFFFFF:
            raise ValueError("vsock cid and port are 32-bit unsigned integers")

    def __str__(self) -> str:
        return f"vsock:{self.cid}:{self.port}"


class Transport(Protocol):
    """Open and accept byte streams to and from vsock addresses."""

    async def open_connection(
        self, address: VsockAddress
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Connect to ``address``; raise ``TransportError`` when it cannot be reached."""
        ...

    async def start_server(
        self, handler: ConnectionHandler, address: VsockAddress
    ) -> asyncio.Server:
        """Listen on ``address`` and run ``handler`` for each accepted stream."""
        ...


class TcpSimTransport:
    """vsock simulated over TCP on 127.0.0.1 through a fixed (cid, port) -> TCP port map."""

    def __init__(self, port_map: Mapping[VsockAddress, int]) -> None:
        for address, tcp_port in port_map.items():
            if not 0 <= tcp_port <= 65535:
                raise ValueError(f"TCP port for {address} out of range")
        self._map = dict(port_map)

    def tcp_port(self, address: VsockAddress) -> int:
        """The TCP port standing in for ``address``."""
        try:
            return self._map[address]
        except KeyError:
            raise TransportError(f"no TCP port mapped for {address}") from None

    async def open_connection(
        self, address: VsockAddress
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        port = self.tcp_port(address)
        try:
            return await asyncio.open_connection(_LOOPBACK, port)
        except OSError as exc:
            raise TransportError(f"cannot connect to {address}: {exc.strerror}") from exc

    async def start_server(
        self, handler: ConnectionHandler, address: VsockAddress
    ) -> asyncio.Server:
        port = self.tcp_port(address)
        try:
            # Loopback only: the simulator must never be reachable from the network.
            return await asyncio.start_server(handler, _LOOPBACK, port, reuse_address=True)
        except OSError as exc:
            raise TransportError(f"cannot listen on {address}: {exc.strerror}") from exc


class VsockTransport:
    """Real AF_VSOCK sockets (Linux, Nitro parent and enclave)."""

    def __init__(self) -> None:
        if not hasattr(socket, "AF_VSOCK"):
            raise TransportError("this platform has no AF_VSOCK support")

    async def open_connection(
        self, address: VsockAddress
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        try:
            await loop.sock_connect(sock, (address.cid, address.port))
        except OSError as exc:
            sock.close()
            raise TransportError(f"cannot connect to {address}: {exc.strerror}") from exc
        return await asyncio.open_connection(sock=sock)

    async def start_server(
        self, handler: ConnectionHandler, address: VsockAddress
    ) -> asyncio.Server:
        sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        try:
            sock.bind((address.cid, address.port))
            sock.listen(128)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise TransportError(f"cannot listen on {address}: {exc.strerror}") from exc
        return await asyncio.start_server(handler, sock=sock)


def parse_port_map(text: str) -> dict[VsockAddress, int]:
    """Parse ``"CID:PORT=TCPPORT,..."`` (e.g. ``"16:5000=15000,3:8001=15001"``)."""
    result: dict[VsockAddress, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            left, tcp = item.split("=")
            cid, port = left.split(":")
            address = VsockAddress(cid=int(cid), port=int(port))
            tcp_port = int(tcp)
        except ValueError:
            raise ValueError(f"bad port map entry {item!r}: expected CID:PORT=TCPPORT") from None
        if not 1 <= tcp_port <= 65535:
            raise ValueError(f"bad port map entry {item!r}: TCP port out of range")
        if address in result:
            raise ValueError(f"duplicate port map entry for {address}")
        result[address] = tcp_port
    return result


def transport_from_config(
    kind: Literal["vsock", "tcp-sim"], port_map: Mapping[VsockAddress, int] | None = None
) -> Transport:
    """Build the configured adapter. No auto-detection and no fallback."""
    if kind == "vsock":
        if port_map:
            raise ValueError("a port map only applies to the tcp-sim transport")
        return VsockTransport()
    if kind == "tcp-sim":
        if not port_map:
            raise ValueError("the tcp-sim transport needs a port map")
        return TcpSimTransport(port_map)
    raise ValueError(f"unknown transport {kind!r}")
