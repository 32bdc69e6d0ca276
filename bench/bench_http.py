"""HTTPS API under 64 concurrent clients, against an aiohttp hello-world. Side: client.

What is measured, end to end as a client sees it (loopback only): the local stack of
``scripts.localstack`` (the parent process serving HTTPS, the enclave process behind
the vsock-over-TCP simulator, the embedded PostgreSQL), driven by one aiohttp client
with 64 concurrent workers over a keep-alive ``TCPConnector(limit=64)`` that trusts
the stack's dev CA:

- ``POST /enclave/request_aggregates`` spread over 64 sessions registered first with
  ``SecureClient``: the enclave signs a report, the parent stores it and an ops entry
  in PostgreSQL. Success is 200.
- ``POST /enclave/submit_key`` with a fresh envelope per request (a replay is 409),
  all sealed before the clock starts to the X25519 key of one verified attestation.
  Success is 201 only.

Against what: a plain aiohttp ``web.Response(text="hello")`` handler in its own
process (the parent is a process of its own too), served with the parent's TLS setup
(``parent.tls``: a throwaway ECDSA P-256 dev CA and server chain, TLS 1.2+, default
ciphers, same event loop), hit by the same client loop with a body of the same size.

Each measurement runs for ``WARMUP_S`` (connections and TLS handshakes, not counted)
then ``DURATION_S``; only requests that complete inside that window count. The
baseline runs before and after the stack's two runs and is reported pooled.
Throughput is successful requests per second; latencies are per request, on the
client's clock, failures included. The rate limit is raised to its ceiling so it
never trips; logs are at WARNING so the request log line does not dominate.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

from bench.common import Result
from scripts.localstack import LocalStack, free_port
from shared.client import Registration, SecureClient
from shared.envelope import Credentials, encrypt_credentials

__all__ = ["run"]

CONCURRENCY = 64
SESSIONS = 64
WARMUP_S = 1.0
DURATION_S = 5.0
# Envelopes sealed ahead of the submit_key run (about 0.2 ms each): enough for 1,600
# submits/s over warm-up + window; if they run out, the window ends at the last
# completion and the result says so (extra "window_s").
ENVELOPES = 10_000
BASELINE = "aiohttp hello-world over HTTPS (same client)"
# RATE_LIMIT_MAX is capped at 1,000,000 by parent.config; per 15-minute window and one
# client IP that is far more than this module sends.
STACK_ENV = {"RATE_LIMIT_MAX": "1000000", "LOG_LEVEL": "WARNING"}
_JSON = {"Content-Type": "application/json"}


@dataclass(frozen=True, slots=True, kw_only=True)
class _Load:
    """What one fixed-duration run saw."""

    requests: int
    successes: int
    elapsed: float
    latencies_ms: list[float]  # sorted
    exhausted: bool

    @property
    def throughput(self) -> float:
        """Successful requests per second."""
        return self.successes / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def success_ratio(self) -> float:
        return self.successes / self.requests if self.requests else 0.0

    def merged(self, other: _Load) -> _Load:
        """Both runs as one: requests and time added, latencies pooled."""
        return _Load(
            requests=self.requests + other.requests,
            successes=self.successes + other.successes,
            elapsed=self.elapsed + other.elapsed,
            latencies_ms=sorted(self.latencies_ms + other.latencies_ms),
            exhausted=self.exhausted or other.exhausted,
        )

    def percentile_ms(self, q: float) -> float:
        """Nearest-rank percentile of the latencies (q in 0..1)."""
        if not self.latencies_ms:
            return math.nan
        rank = max(1, math.ceil(q * len(self.latencies_ms)))
        return self.latencies_ms[rank - 1]


def _client_session(ca_file: Path) -> aiohttp.ClientSession:
    context = ssl.create_default_context(cafile=str(ca_file))
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=CONCURRENCY, ssl=context),
        timeout=aiohttp.ClientTimeout(total=30),
    )


async def _drive(
    ca_file: Path, url: str, bodies: Callable[[], bytes | None], success: int
) -> _Load:
    """64 workers POST ``bodies()`` to ``url`` until the window closes (None: run out)."""
    latencies: list[float] = []
    requests = successes = 0
    last_done = 0.0
    exhausted = False
    start = time.perf_counter()
    window_from = start + WARMUP_S
    window_to = window_from + DURATION_S

    async def worker(http: aiohttp.ClientSession) -> None:
        nonlocal requests, successes, last_done, exhausted
        while (sent := time.perf_counter()) < window_to:
            body = bodies()
            if body is None:
                exhausted = True
                return
            try:
                async with http.post(url, data=body, headers=_JSON) as response:
                    await response.read()
                    status = response.status
            except (aiohttp.ClientError, TimeoutError):
                status = 0
            done = time.perf_counter()
            if window_from <= done <= window_to:
                requests += 1
                successes += status == success
                latencies.append((done - sent) * 1000)
                last_done = done

    async with _client_session(ca_file) as http:
        await asyncio.gather(*(worker(http) for _ in range(CONCURRENCY)))
    elapsed = (last_done - window_from) if exhausted else DURATION_S
    latencies.sort()
    return _Load(
        requests=requests,
        successes=successes,
        elapsed=elapsed,
        latencies_ms=latencies,
        exhausted=exhausted,
    )


# ---------------------------------------------------------------------- baseline server


async def _hello(_request: web.Request) -> web.Response:
    return web.Response(text="hello")


async def _serve_hello(port: int, tls_dir: Path) -> None:
    from parent.tls import ensure_dev_certificates, server_ssl_context

    context = server_ssl_context(ensure_dev_certificates(tls_dir))
    app = web.Application()
    app.router.add_post("/", _hello)
    runner = web.AppRunner(app, access_log=None)  # the parent runs without one too
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    await asyncio.Event().wait()  # until the bench terminates the process


def _start_hello(port: int, tls_dir: Path) -> subprocess.Popen[bytes]:
    """Start the hello-world server process; return once it accepts connections."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.bench_http", "hello", str(port), str(tls_dir)],
        cwd=Path(__file__).resolve().parent.parent,
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the hello-world server exited ({process.returncode})")
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=0.2),
        ):
            return process
        time.sleep(0.05)
    _stop(process)
    raise RuntimeError("the hello-world server did not listen within 30 s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


# ---------------------------------------------------------------------- stack set-up


async def _prepare(stack: LocalStack) -> tuple[list[Registration], list[bytes]]:
    """Register the sessions and seal the submit_key envelopes (none of it timed)."""
    async with SecureClient(
        stack.base_url,
        expected_pcrs=stack.expected_pcrs(),
        root_der=stack.nsm_root_der(),
        ca_file=str(stack.ca_file),
    ) as client:
        registrations = await asyncio.gather(
            *(
                client.register(
                    exchange="binance",
                    api_key=f"bench-key-{i}",
                    api_secret=f"bench-secret-{i}",
                    label="bench",
                    ttl=3600,
                    with_owner_key=False,
                )
                for i in range(SESSIONS)
            )
        )
        quote = await client.attest()
    envelopes = [
        json.dumps(
            encrypt_credentials(
                Credentials(exchange="binance", api_key=f"k-{i}", api_secret=f"s-{i}"),
                metadata={"exchange": "binance", "label": "bench", "ttl": 3600},
                recipient_x25519=quote.enc_public,
            ).to_wire()
        ).encode()
        for i in range(ENVELOPES)
    ]
    return list(registrations), envelopes


def _round_robin(bodies: list[bytes]) -> Callable[[], bytes]:
    cycle = itertools.cycle(bodies)
    return lambda: next(cycle)


def _once_each(bodies: list[bytes]) -> Callable[[], bytes | None]:
    remaining: Iterator[bytes] = iter(bodies)
    return lambda: next(remaining, None)


async def _measure_all(
    stack: LocalStack, hello_url: str, hello_ca: Path
) -> tuple[_Load, _Load, _Load]:
    registrations, envelopes = await _prepare(stack)
    aggregate_bodies = [json.dumps({"session_id": r.session_id}).encode() for r in registrations]
    print(f"  http: {len(registrations)} sessions, {len(envelopes)} envelopes ready")
    # The baseline gets bodies of the same size, so the client and TLS work per request
    # match; it runs before and after the stack so that drift in machine speed (shared
    # hosts vary by tens of percent) biases neither side of the ratio.
    before = await _drive(hello_ca, hello_url, _round_robin(aggregate_bodies), 200)
    aggregates = await _drive(
        stack.ca_file,
        f"{stack.base_url}/enclave/request_aggregates",
        _round_robin(aggregate_bodies),
        200,
    )
    submits = await _drive(
        stack.ca_file, f"{stack.base_url}/enclave/submit_key", _once_each(envelopes), 201
    )
    after = await _drive(hello_ca, hello_url, _round_robin(aggregate_bodies), 200)
    return before.merged(after), aggregates, submits


def _result(name: str, load: _Load, baseline: _Load) -> Result:
    extra: dict[str, float | int | str] = {
        "p50_ms": round(load.percentile_ms(0.50), 2),
        "p99_ms": round(load.percentile_ms(0.99), 2),
        "p99_baseline_ms": round(baseline.percentile_ms(0.99), 2),
        "success_ratio": round(load.success_ratio, 4),
        "requests": load.requests,
        "concurrency": CONCURRENCY,
    }
    if load.exhausted:
        extra["window_s"] = round(load.elapsed, 2)  # ran out of envelopes early
    return Result(
        area="http",
        name=name,
        ops_per_s=load.throughput,
        baseline=BASELINE,
        baseline_ops_per_s=baseline.throughput,
        extra=extra,
    )


def run() -> list[Result]:
    """Start the stack and the hello-world server, measure, and always stop both."""
    with tempfile.TemporaryDirectory(prefix="bench-http-") as temp:
        root = Path(temp)
        hello_port = free_port()
        hello: subprocess.Popen[bytes] | None = None
        stack = LocalStack(
            root / "stack",
            parent_port=free_port(),
            enclave_tcp_port=free_port(),
            extra_env=STACK_ENV,
        )
        try:
            hello = _start_hello(hello_port, root / "hello-tls")
            started = time.perf_counter()
            stack.start()
            print(f"  http: stack ready in {time.perf_counter() - started:.1f} s")
            baseline, aggregates, submits = asyncio.run(
                _measure_all(
                    stack, f"https://127.0.0.1:{hello_port}/", root / "hello-tls" / "ca.pem"
                )
            )
        finally:
            stack.stop()
            if hello is not None:
                _stop(hello)
    return [
        _result(f"POST /enclave/request_aggregates ({CONCURRENCY} clients)", aggregates, baseline),
        _result(f"POST /enclave/submit_key ({CONCURRENCY} clients)", submits, baseline),
    ]


if __name__ == "__main__":
    # ``python -m bench.bench_http hello PORT TLS_DIR``: the baseline server, run by run().
    if len(sys.argv) != 4 or sys.argv[1] != "hello":
        sys.exit("usage: python -m bench.bench_http hello PORT TLS_DIR")
    asyncio.run(_serve_hello(int(sys.argv[2]), Path(sys.argv[3])))
