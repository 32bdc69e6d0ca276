"""Enclave restart (kill -9) to every sealed session served again, for 50 and 200 sessions.

Side: client, driving the local stack of ``scripts.localstack`` (fake exchanges, the
KMS simulator, the enclave with KMS sealing, the parent and its embedded PostgreSQL).

What is measured. Sessions are registered with ``SecureClient`` and the fake Coinbase
keys, and the bench waits until every one has read the whole fake history (``polling``
complete in its summary) and one checkpoint interval more, so the stored sealed state
is the polled one. Then the enclave process is killed with SIGKILL; once ``/readyz``
says 503 (the parent has seen it go), a new enclave process is started and the clock
starts. The parent's supervisor sees it locked, unlocks it through the KMS simulator
(attested ``Decrypt`` of the stored identity) and replays every sealed state
(``Restore``); until then every session call is 503. Figures, from the start of the new
process:

- ``ready``: ``/readyz`` answers 200 (polled every 50 ms);
- ``served``: every session's ``GET /enclave/summary`` answers 200. One session is
  polled every 50 ms until it answers; then all are read, 16 at a time, and any that
  is not 200 is read again (the supervisor opens the gate only after the whole replay,
  so the first 200 means all are restored; the sweep proves it);
- ``metric``: the parent's own ``enclave_last_recovery_seconds`` (from seeing the
  enclave locked to the last session restored; it does not include the process start
  nor the up-to-1 s wait for the supervisor's next health poll).

``enclave_restored_sessions_total{outcome="restored"}`` must grow by exactly the number
of sessions, and every session's first summary after the restart must show the whole
polled history (``trades_seen``, restored from its sealed state, not polled again), or
the bench fails. (Its ``polling.complete`` is false at that moment: a restored poller
says complete only after its first poll in the new enclave, about 1.5 s later for one
session, longer for many behind the shared Coinbase rate limiter.)

Against what, in the same run and the same stack: the same kill -9 and restart with
no session stored (the process start, the parent's reconnect and health poll, the KMS
unlock; no replay), three times; the run with the median ``ready`` is the baseline.
Each figure is given as restarts per second (1 / seconds) with the seconds in the
extras, so the table's ratio is baseline seconds / measured seconds (1.0: the sessions
cost nothing). The sizes are cumulative: the 200-session restart replays the first 50
too. Each sealed session (379 fake Coinbase trades) is ~59 KB, so 200 of them are four
``Restore`` batches of up to 3 MiB.

Figures (2-core dev machine, Python 3.11; the seconds vary by ~1 s from run to run
because the parent's reconnect backoff, up to 2 s, and its 1 s health poll land
anywhere; four runs): no sessions: ready 1.1-1.2 s (parent's metric 0.2 s); 50
sessions: ready 2.9-3.5 s, all served 3.1-3.7 s, metric 1.3-1.4 s; 200 sessions: ready
5.6-7.4 s, all served 6.0-8.0 s, metric 4.2-5.2 s. The replay costs 20-25 ms per
session (the metric grows linearly with the count), the time the enclave takes to open
and rebuild each state. The table's ops/s column rounds these to 0 or 1: read the
ratio and the seconds in the extras.
Whole module: ~2 min, of which ~100 s is the fake Coinbase polling 200 sessions
through the enclave's shared per-exchange rate limiter.

The simulator's PCR0 measures the ``enclave`` and ``shared`` sources
(``enclave/measurement.py``): editing them while the bench runs gives the restarted
enclave another PCR0, KMS refuses it (fail closed) and the bench fails, naming the
supervisor's ``enclave_recovery_failed`` line.
"""

from __future__ import annotations

import asyncio
import ssl
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from bench.common import Result
from enclave.sessions import WITHDRAW_WINDOW_SECONDS
from scripts.localstack import LocalStack, free_port
from shared.client import SecureClient

__all__ = ["run"]

SIZES = (50, 200)
BASELINE_RUNS = 3  # the no-session restart is cheap: the median of three is the baseline
REGISTER_CONCURRENCY = 8
SWEEP_CONCURRENCY = 16
PROBE_INTERVAL_S = 0.05
POLLING_DEADLINE_S = 120.0
RECOVERY_DEADLINE_S = 60.0
CHECKPOINT_INTERVAL_S = 2.0  # LocalStack's CHECKPOINT_INTERVAL_SECONDS
STACK_ENV = {"RATE_LIMIT_MAX": "1000000", "LOG_LEVEL": "WARNING"}
BASELINE = "same kill -9 + restart, no session stored (same stack)"


@dataclass(frozen=True, slots=True, kw_only=True)
class Recovery:
    """One enclave restart, in seconds from the new process's start."""

    sessions: int
    listening: float  # the new process accepts RPC connections
    ready: float  # /readyz 200
    served: float  # every session's summary 200
    metric: float  # the parent's enclave_last_recovery_seconds
    restored: int  # growth of enclave_restored_sessions_total{outcome="restored"}


def _http(stack: LocalStack) -> aiohttp.ClientSession:
    context = ssl.create_default_context(cafile=str(stack.ca_file))
    return aiohttp.ClientSession(
        base_url=stack.base_url,
        connector=aiohttp.TCPConnector(ssl=context, limit=SWEEP_CONCURRENCY),
        timeout=aiohttp.ClientTimeout(total=30),
    )


async def _register(stack: LocalStack, client: SecureClient, count: int) -> list[str]:
    """``count`` new sessions with the fake Coinbase keys, ``REGISTER_CONCURRENCY`` at a time."""
    keys = stack.fakes_info()["exchanges"]["coinbase"]["credentials"]
    gate = asyncio.Semaphore(REGISTER_CONCURRENCY)

    async def one() -> str:
        async with gate:
            registration = await client.register(
                exchange="coinbase",
                api_key=keys["api_key"],
                api_secret=keys["api_secret"],
                label="bench-recovery",
                ttl=3600,
            )
            return registration.session_id

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def _wait_polled(client: SecureClient, sessions: list[str], trades: int) -> None:
    """Until every session has read the whole fake history.

    Sessions finish roughly in the order they were registered (one rate limiter per
    exchange in the enclave), so each round reads on only until the first unfinished
    one: the bench's reads stay off the CPU the polling needs.
    """
    pending = list(sessions)
    deadline = time.monotonic() + POLLING_DEADLINE_S
    while True:
        while pending:
            polling = (await client.summary(pending[0]))["polling"]
            if not (polling.get("complete") and polling.get("trades_seen") == trades):
                break
            pending.pop(0)
        if not pending:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(pending)} sessions not polled within {POLLING_DEADLINE_S} s")
        await asyncio.sleep(0.5)


async def _metrics(http: aiohttp.ClientSession) -> dict[str, float]:
    """The parent's recovery series: last recovery seconds, restored sessions so far."""
    async with http.get("/metrics") as response:
        text = await response.text()
    figures = {"last": float("nan"), "restored": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "enclave_last_recovery_seconds":
                figures["last"] = sample.value
            elif (
                sample.name == "enclave_restored_sessions_total"
                and sample.labels.get("outcome") == "restored"
            ):
                figures["restored"] = sample.value
    return figures


async def _readyz(http: aiohttp.ClientSession) -> int:
    try:
        async with http.get("/readyz") as response:
            return response.status
    except (aiohttp.ClientError, TimeoutError):
        return 0


async def _until_ready(http: aiohttp.ClientSession, started: float) -> float:
    deadline = started + RECOVERY_DEADLINE_S
    while time.monotonic() < deadline:
        if await _readyz(http) == 200:
            return time.monotonic() - started
        await asyncio.sleep(PROBE_INTERVAL_S)
    raise RuntimeError(f"/readyz not 200 within {RECOVERY_DEADLINE_S} s of the restart")


async def _summary(http: aiohttp.ClientSession, session_id: str) -> tuple[int, int]:
    """(status, trades seen) of one session's summary."""
    try:
        async with http.get(f"/enclave/summary/{session_id}") as response:
            if response.status != 200:
                return response.status, -1
            polling = (await response.json())["polling"]
            return 200, int(polling.get("trades_seen", -1))
    except (aiohttp.ClientError, TimeoutError):
        return 0, -1


async def _until_served(
    http: aiohttp.ClientSession, sessions: list[str], trades: int, started: float
) -> float:
    """Seconds until every session's summary is 200 with the whole history restored."""
    deadline = started + RECOVERY_DEADLINE_S
    if sessions:
        while (await _summary(http, sessions[0]))[0] != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("no session served within the deadline")
            await asyncio.sleep(PROBE_INTERVAL_S)
    pending = list(sessions)
    gate = asyncio.Semaphore(SWEEP_CONCURRENCY)

    async def read(session_id: str) -> tuple[str, int, int]:
        async with gate:
            return (session_id, *await _summary(http, session_id))

    while pending:
        answers = await asyncio.gather(*(read(s) for s in pending))
        if any(status == 200 and seen != trades for _, status, seen in answers):
            raise RuntimeError("a session came back without its polled history")
        pending = [s for s, status, _ in answers if status != 200]
        if pending and time.monotonic() > deadline:
            raise RuntimeError(f"{len(pending)} sessions not served within the deadline")
    return time.monotonic() - started


async def _restart(
    stack: LocalStack, http: aiohttp.ClientSession, sessions: list[str], trades: int
) -> Recovery:
    """kill -9 the enclave, wait for the parent to see it, start a new one; time the rest."""
    before = await _metrics(http)
    stack.kill_enclave()
    for _ in range(int(RECOVERY_DEADLINE_S / PROBE_INTERVAL_S)):
        if await _readyz(http) == 503:
            break
        await asyncio.sleep(PROBE_INTERVAL_S)
    else:
        raise RuntimeError("the parent did not notice the enclave was killed")
    listening: list[float] = []
    started = time.monotonic()
    spawn = asyncio.create_task(asyncio.to_thread(stack.start_enclave))
    spawn.add_done_callback(lambda _: listening.append(time.monotonic() - started))
    ready, served = await asyncio.gather(
        _until_ready(http, started), _until_served(http, sessions, trades, started)
    )
    await spawn
    after = await _metrics(http)
    restored = int(after["restored"] - before["restored"])
    if restored != len(sessions):
        raise RuntimeError(f"restored {restored} sessions, expected {len(sessions)}")
    return Recovery(
        sessions=len(sessions),
        listening=listening[0],
        ready=ready,
        served=served,
        metric=after["last"],
        restored=restored,
    )


async def _measure(stack: LocalStack) -> tuple[Recovery, list[Recovery]]:
    async with (
        SecureClient(
            stack.base_url,
            expected_pcrs=stack.expected_pcrs(),
            root_der=stack.nsm_root_der(),
            ca_file=str(stack.ca_file),
        ) as client,
        _http(stack) as http,
    ):
        trades = len(stack.truth("coinbase"))
        baselines = []
        for _ in range(BASELINE_RUNS):
            baselines.append(await _restart(stack, http, [], trades))
            print(f"  recovery: no sessions: {_describe(baselines[-1])}")
        baseline = sorted(baselines, key=lambda r: r.ready)[BASELINE_RUNS // 2]
        sessions: list[str] = []
        measured = []
        for size in SIZES:
            started = time.monotonic()
            sessions += await _register(stack, client, size - len(sessions))
            registered = time.monotonic() - started
            await _wait_polled(client, sessions, trades)
            polled = time.monotonic() - started - registered
            # Checkpoints skip sessions still withdrawable (enclave.sessions): wait until
            # the newest is past that window, then one checkpoint interval more, so the
            # stored states are the polled ones.
            past_window = started + registered + WITHDRAW_WINDOW_SECONDS - time.monotonic()
            await asyncio.sleep(max(0.0, past_window) + CHECKPOINT_INTERVAL_S + 0.5)
            print(
                f"  recovery: {size} sessions registered in {registered:.1f} s, "
                f"polled in {polled:.1f} s more"
            )
            recovery = await _restart(stack, http, sessions, trades)
            print(f"  recovery: {size} sessions: {_describe(recovery)}")
            print(f"  recovery: {size} sessions vs none: {_ratios(recovery, baseline)}")
            measured.append(recovery)
    return baseline, measured


def _describe(recovery: Recovery) -> str:
    return (
        f"listening {recovery.listening:.2f} s, ready {recovery.ready:.2f} s, "
        f"all served {recovery.served:.2f} s, parent's metric {recovery.metric:.2f} s"
    )


def _ratios(recovery: Recovery, baseline: Recovery) -> str:
    return (
        f"x{recovery.ready / baseline.ready:.2f} ready, "
        f"x{recovery.served / baseline.ready:.2f} served, "
        f"x{recovery.metric / baseline.metric:.2f} metric vs no sessions"
    )


def _results(baseline: Recovery, measured: list[Recovery]) -> list[Result]:
    results: list[Result] = []
    for recovery in measured:
        n = recovery.sessions
        common: dict[str, float | int | str] = {
            "sessions": n,
            "baseline_s": round(baseline.ready, 3),
        }
        results += [
            Result(
                area="recovery",
                name=f"enclave kill -9 + restart -> /readyz 200, {n} sessions (1/s)",
                ops_per_s=1 / recovery.ready,
                baseline=BASELINE,
                baseline_ops_per_s=1 / baseline.ready,
                extra=common
                | {
                    "seconds": round(recovery.ready, 3),
                    "listening_s": round(recovery.listening, 3),
                },
            ),
            Result(
                area="recovery",
                name=f"enclave kill -9 + restart -> all {n} sessions served (1/s)",
                ops_per_s=1 / recovery.served,
                baseline=BASELINE + ", to /readyz 200",
                baseline_ops_per_s=1 / baseline.ready,
                extra=common | {"seconds": round(recovery.served, 3)},
            ),
            Result(
                area="recovery",
                name=f"parent's enclave_last_recovery_seconds, {n} sessions (1/s)",
                ops_per_s=1 / recovery.metric,
                baseline=BASELINE + ", its metric",
                baseline_ops_per_s=1 / baseline.metric,
                extra={
                    "seconds": round(recovery.metric, 3),
                    "baseline_s": round(baseline.metric, 3),
                    "per_session_ms": round(1000 * (recovery.metric - baseline.metric) / n, 2),
                    "sessions": n,
                },
            ),
        ]
    return results


def run() -> list[Result]:
    """Start a stack, measure the restarts, and always stop it."""
    with tempfile.TemporaryDirectory(prefix="bench-recovery-") as temp:
        stack = LocalStack(
            Path(temp) / "stack",
            parent_port=free_port(),
            enclave_tcp_port=free_port(),
            extra_env=STACK_ENV,
        )
        try:
            started = time.perf_counter()
            stack.start()
            print(f"  recovery: stack ready in {time.perf_counter() - started:.1f} s")
            try:
                baseline, measured = asyncio.run(_measure(stack))
            except RuntimeError as exc:
                # The supervisor logs why a recovery failed (at WARNING and above).
                raise RuntimeError(f"{exc}; parent log:\n{stack.log_tail('parent', 5)}") from exc
        finally:
            stack.stop()
    return _results(baseline, measured)
