"""The transport port: the TCP simulator on loopback and explicit adapter selection."""

from __future__ import annotations

import asyncio
import socket

import pytest

from shared import protocol as p
from shared.errors import TransportError
from shared.io.transport import (
    TcpSimTransport,
    VsockAddress,
    VsockTransport,
    parse_port_map,
    transport_from_config,
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_sim_transport_carries_frames_both_ways() -> None:
    """Frames written on one side of the simulated vsock arrive intact on the other."""
    enclave = VsockAddress(cid=16, port=5000)
    transport = TcpSimTransport({enclave: free_port()})

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = p.FrameDecoder()
        while data := await reader.read(65536):
            for message in decoder.feed(data):
                assert isinstance(message, p.Health)
                reply = p.HealthReply(
                    request_id=message.request_id,
                    status="ok",
                    sessions=0,
                    uptime_seconds=1,
                    pcr0="",
                )
                writer.write(p.encode_frame(reply))
        writer.close()

    server = await transport.start_server(echo, enclave)
    try:
        sockname = server.sockets[0].getsockname()
        assert sockname[0] == "127.0.0.1"
        reader, writer = await transport.open_connection(enclave)
        writer.write(b"".join(p.encode_frame(p.Health(request_id=i)) for i in range(50)))
        await writer.drain()
        decoder = p.FrameDecoder()
        replies: list[p.Message] = []
        while len(replies) < 50:
            replies += decoder.feed(await reader.read(65536))
        assert [r.request_id for r in replies] == list(range(50))
        writer.close()
        await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()


async def test_sim_transport_unmapped_address_is_refused() -> None:
    """An address missing from the port map is a TransportError, not a guess."""
    transport = TcpSimTransport({VsockAddress(cid=16, port=5000): free_port()})
    with pytest.raises(TransportError, match="no TCP port mapped"):
        await transport.open_connection(VsockAddress(cid=16, port=5001))


async def test_sim_transport_connection_refused_is_transport_error() -> None:
    """Nobody listening gives a TransportError naming the vsock address."""
    address = VsockAddress(cid=16, port=5000)
    transport = TcpSimTransport({address: free_port()})
    with pytest.raises(TransportError, match="vsock:16:5000"):
        await transport.open_connection(address)


def test_parse_port_map() -> None:
    """The port map text form parses into (cid, port) -> TCP port."""
    assert parse_port_map("16:5000=15000, 3:8001=15001") == {
        VsockAddress(cid=16, port=5000): 15000,
        VsockAddress(cid=3, port=8001): 15001,
    }


@pytest.mark.parametrize(
    "text", ["16:5000", "16=1", "a:1=2", "16:5000=70000", "16:5000=1,16:5000=2", "-1:5=6"]
)
def test_parse_port_map_rejects_bad_entries(text: str) -> None:
    """Malformed, out-of-range or duplicate entries are refused with a clear message."""
    with pytest.raises(ValueError, match=r"port map|32-bit"):
        parse_port_map(text)


def test_transport_from_config_is_explicit() -> None:
    """The adapter is chosen by name only; tcp-sim needs a map, vsock refuses one."""
    sim = transport_from_config("tcp-sim", {VsockAddress(cid=16, port=1): 2})
    assert isinstance(sim, TcpSimTransport)
    with pytest.raises(ValueError, match="needs a port map"):
        transport_from_config("tcp-sim", {})
    with pytest.raises(ValueError, match="only applies"):
        transport_from_config("vsock", {VsockAddress(cid=16, port=1): 2})
    with pytest.raises(ValueError, match="unknown transport"):
        transport_from_config("auto", None)  # type: ignore[arg-type]


def test_vsock_adapter_builds_without_touching_a_device() -> None:
    """Constructing the real adapter opens no socket (it is only used when configured)."""
    if not hasattr(socket, "AF_VSOCK"):
        with pytest.raises(TransportError):
            VsockTransport()
    else:
        assert isinstance(transport_from_config("vsock"), VsockTransport)
