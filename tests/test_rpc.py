"""Enclave RPC server and the parent's multiplexed, reconnecting client, over the TCP simulator."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

from enclave.rpc_server import RpcServer
from parent.enclave_client import EnclaveClient, EnclaveRefused, EnclaveUnavailable
from shared import protocol as p
from shared.io.transport import TcpSimTransport, VsockAddress

ADDRESS = VsockAddress(cid=16, port=5000)


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def fake_enclave(request: p.Request) -> p.Reply:
    """A small fake enclave: summary echoes, 'slow' sleeps, 'boom' raises, 'gone' is 404."""
    if isinstance(request, p.Summary):
        if request.session_id == "slow":
            await asyncio.sleep(0.5)
        if request.session_id == "boom":
            raise RuntimeError("secret-canary-in-exception")
        if request.session_id == "gone":
            return p.ErrorReply(
                request_id=request.request_id, code=p.ErrorCode.NOT_FOUND, message="unknown session"
            )
        if request.session_id == "wrong-type":
            return p.SummaryReply(request_id=request.request_id, summary={"x": b"bytes"})
        return p.SummaryReply(request_id=request.request_id, summary={"id": request.session_id})
    return p.HealthReply(
        request_id=request.request_id, status="ok", sessions=0, uptime_seconds=0, pcr0=""
    )


@pytest.fixture
def transport() -> TcpSimTransport:
    """A simulator transport with the enclave address mapped to a free port."""
    return TcpSimTransport({ADDRESS: free_port()})


@pytest.fixture
async def server(transport: TcpSimTransport) -> AsyncIterator[RpcServer]:
    """The RPC server running the fake enclave."""
    srv = RpcServer(fake_enclave)
    await srv.start(transport, ADDRESS)
    yield srv
    await srv.close()


@pytest.fixture
async def client(transport: TcpSimTransport) -> AsyncIterator[EnclaveClient]:
    """A started client (closed at teardown)."""
    c = EnclaveClient(transport, ADDRESS, call_timeout=2.0, max_backoff=0.1)
    await c.start()
    yield c
    await c.close()


async def test_concurrent_calls_are_multiplexed(server: RpcServer, client: EnclaveClient) -> None:
    """200 concurrent calls on one connection each get their own reply."""
    ids = [f"s{i}" for i in range(200)]
    replies = await asyncio.gather(
        *(client.call(p.Summary(request_id=0, session_id=i), p.SummaryReply) for i in ids)
    )
    assert [r.summary["id"] for r in replies] == ids


async def test_slow_call_does_not_block_others(server: RpcServer, client: EnclaveClient) -> None:
    """A slow request in flight does not delay a fast one on the same connection."""
    slow = asyncio.create_task(
        client.call(p.Summary(request_id=0, session_id="slow"), p.SummaryReply)
    )
    await asyncio.sleep(0.05)
    fast = await asyncio.wait_for(
        client.call(p.Summary(request_id=0, session_id="fast"), p.SummaryReply), 0.3
    )
    assert fast.summary == {"id": "fast"}
    assert not slow.done()
    assert (await slow).summary == {"id": "slow"}


async def test_error_reply_is_typed(server: RpcServer, client: EnclaveClient) -> None:
    """An ErrorReply becomes EnclaveRefused with its code and message."""
    with pytest.raises(EnclaveRefused) as info:
        await client.call(p.Summary(request_id=0, session_id="gone"), p.SummaryReply)
    assert info.value.code is p.ErrorCode.NOT_FOUND
    assert info.value.message == "unknown session"


async def test_handler_exception_is_generic_internal_error(
    server: RpcServer, client: EnclaveClient, capsys: pytest.CaptureFixture[str]
) -> None:
    """A crashing handler gives INTERNAL with a fixed message; its text is not sent or logged."""
    with pytest.raises(EnclaveRefused) as info:
        await client.call(p.Summary(request_id=0, session_id="boom"), p.SummaryReply)
    assert info.value.code is p.ErrorCode.INTERNAL
    assert info.value.message == "internal error"
    captured = capsys.readouterr()
    assert "secret-canary" not in captured.out + captured.err
    # The connection survives a handler failure.
    ok = await client.call(p.Summary(request_id=0, session_id="after"), p.SummaryReply)
    assert ok.summary == {"id": "after"}


async def test_unencodable_reply_becomes_internal(server: RpcServer, client: EnclaveClient) -> None:
    """A handler returning a mistyped reply yields INTERNAL instead of a broken frame."""
    with pytest.raises(EnclaveRefused) as info:
        await client.call(p.Summary(request_id=0, session_id="wrong-type"), p.SummaryReply)
    assert info.value.code is p.ErrorCode.INTERNAL


async def test_reply_type_is_checked_at_the_call_site(client: EnclaveClient) -> None:
    """Asking for the wrong reply type for a request is a programming error."""
    with pytest.raises(TypeError):
        await client.call(p.Summary(request_id=0, session_id="x"), p.HealthReply)


async def test_enclave_down_fails_fast_then_recovers(transport: TcpSimTransport) -> None:
    """With no enclave, calls raise EnclaveUnavailable quickly; once it starts, calls succeed."""
    client = EnclaveClient(transport, ADDRESS, call_timeout=2.0, max_backoff=0.1)
    await client.start()
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(EnclaveUnavailable):
            await client.call(p.Health(request_id=0), p.HealthReply)
        assert loop.time() - started < 1.0
        srv = RpcServer(fake_enclave)
        await srv.start(transport, ADDRESS)
        try:
            for _ in range(50):
                if client.connected:
                    break
                await asyncio.sleep(0.05)
            reply = await client.call(p.Health(request_id=0), p.HealthReply)
            assert reply.status == "ok"
        finally:
            await srv.close()
    finally:
        await client.close()


async def test_enclave_restart_mid_flight(transport: TcpSimTransport) -> None:
    """Calls in flight when the enclave dies fail as unavailable; after restart calls work again."""
    srv = RpcServer(fake_enclave)
    await srv.start(transport, ADDRESS)
    client = EnclaveClient(transport, ADDRESS, call_timeout=2.0, max_backoff=0.1)
    await client.start()
    try:
        in_flight = asyncio.create_task(
            client.call(p.Summary(request_id=0, session_id="slow"), p.SummaryReply)
        )
        await asyncio.sleep(0.05)
        await srv.close()
        with pytest.raises(EnclaveUnavailable):
            await in_flight
        srv = RpcServer(fake_enclave)
        await srv.start(transport, ADDRESS)
        for _ in range(60):
            try:
                reply = await client.call(
                    p.Summary(request_id=0, session_id="back"), p.SummaryReply
                )
                break
            except EnclaveUnavailable:
                await asyncio.sleep(0.05)
        assert reply.summary == {"id": "back"}
    finally:
        await client.close()
        await srv.close()


async def test_garbage_from_enclave_drops_connection(transport: TcpSimTransport) -> None:
    """A peer that answers with a broken frame is disconnected; pending calls get Unavailable."""

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(b"\xff\xff\xff\xff")
        await writer.drain()
        await asyncio.sleep(1)

    srv = await transport.start_server(garbage, ADDRESS)
    client = EnclaveClient(transport, ADDRESS, call_timeout=2.0, max_backoff=0.1)
    try:
        await client.start()
        with pytest.raises(EnclaveUnavailable):
            await client.call(p.Health(request_id=0), p.HealthReply)
    finally:
        await client.close()
        srv.close()
        await srv.wait_closed()


async def test_server_closes_connection_on_protocol_violation(
    server: RpcServer, transport: TcpSimTransport
) -> None:
    """A parent sending a bad frame is disconnected by the enclave."""
    reader, writer = await transport.open_connection(ADDRESS)
    writer.write(b"\x00\x00\x00\x00")
    await writer.drain()
    assert await asyncio.wait_for(reader.read(100), 2.0) == b""
    writer.close()
