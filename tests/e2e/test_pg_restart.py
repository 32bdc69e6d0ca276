"""Restart PostgreSQL in immediate mode under load: the parent recovers by itself, nothing
acknowledged is lost.

Real processes: fake exchanges, the KMS simulator, the enclave (sealing on), the parent
and its embedded PostgreSQL (pgserver). Workers register sessions with the fake
Coinbase keys, ask for signed reports and read summaries, over plain HTTPS so that
every error body is seen exactly as sent (the SDK's ``encrypt_credentials`` seals the
envelopes, ``verify_payload`` checks the reports). Meanwhile the database crashes twice:

1. ``pg_ctl restart -m immediate``: every backend is killed without a checkpoint (crash
   recovery on start) and the server is back within a fraction of a second; every
   pooled connection of the parent is dead.
2. ``pg_ctl stop -m immediate``, ``DOWN_SECONDS`` with no server at all, then
   ``pg_ctl start`` with pgserver's own arguments: an outage long enough for the load to
   run into it (connection attempts refused, pool timeouts).

Who brings PostgreSQL back: the test, playing the part of whatever supervises the
database (RDS or systemd in production). The parent never restarts its database: it
starts the embedded server once (``parent.main._database``), and after that its store
only reconnects (psycopg pool, idle-connection check, one retry of read-only queries).
As root, pgserver runs the server as its own system user (``pgserver``, owner of
``pgdata``); ``pg_ctl`` here runs as the data directory's owner in the same way.

Afterwards: ``/readyz`` is 200 again with the same parent process; every submit that got
a 201 is in ``sessions`` with its sealed state in ``sealed_sessions`` (so a later enclave
restart would restore it) and is served (summary 200, polling complete, report verifies
with the attested key); every report that got a 200 is in ``aggregates`` with the same
signature; every refusal was a 503 ``{"error": {"code": "unavailable", "message"}}``
naming no internal detail; never a 500. The test prints its figures; on the 2-core dev
machine: the instant restart costs 0-4 refusals and /readyz is 200 again ~1.1 s after
it began (pg_ctl takes 0.2-0.3 s, the pool's reconnect backoff the rest); in the 7.2 s
outage requests wait up to the pool timeout (5 s) before their 503, and /readyz is 200
0.2-0.7 s after the server accepts connections again (once 5.5 s on a loaded machine:
the connection pool retries with a growing backoff while the server is away).

The second test is the regression test of a bug this module found: a crash that lands
in the write of a new session's first sealed state answered the client 503 "nothing was
kept", yet the owned session stayed live (Revoke needs the owner's proof) and later
checkpoints and restores revived it. The parent now withdraws such a session with
Confirm(commit=False), which the enclave accepts before the first report.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import ssl
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
from pgserver.utils import ensure_prefix_permissions

from parent.db.embedded import EmbeddedPostgres, bundled_bin_dir
from scripts.localstack import LocalStack, free_port
from shared.client import Quote, SecureClient, ServerRejected, encrypt_credentials
from shared.ids import session_hash
from shared.signing import verify_payload

pytestmark = pytest.mark.e2e

# What each concurrent worker sends: its share of submits, reports and summary reads.
WORKERS = ({"submit": 1.0}, {"aggregates": 1.0}, {"aggregates": 0.6, "summary": 0.4})
PACE_SECONDS = 0.2  # each worker's pause between requests (~2 new sessions/s in all)
RESTART_AFTER_SECONDS = 3.0  # load before the instant restart
STOP_AFTER_SECONDS = 3.0  # load between the instant restart and the held-down stop
# No PostgreSQL at all for longer than the store's pool timeout (5 s, Store.open): a
# request first waits for a connection, then gets its 503.
DOWN_SECONDS = 7.0
LOAD_AFTER_READY_SECONDS = 3.0  # load once /readyz is 200 again
READY_WITHIN_SECONDS = 15.0
# What a 503 body must never show: driver and server names, SQL, paths, tracebacks.
INTERNAL_WORDS = (
    "psycopg",
    "postgres",
    "pgserver",
    "sql",
    "pgdata",
    "socket",
    "traceback",
    "exception",
    "operationalerror",
    "pooltimeout",
    "errno",
    "connection refused",
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """A stack with KMS sealing (the default) and a rate limit the load never trips."""
    local = LocalStack(
        tmp_path_factory.mktemp("pg-restart"),
        parent_port=free_port(),
        enclave_tcp_port=free_port(),
        extra_env={"RATE_LIMIT_MAX": "100000"},
    )
    try:
        local.start()  # inside: a start that fails halfway still stops what it started
        yield local
    finally:
        local.stop()
        # pgserver stops the server it started; one started again by pg_ctl below is a
        # process it never saw (it checks the old postmaster's pid), so stop it here.
        if postmaster_running(local):
            pg_ctl(local, "-w", "-m", "fast", "stop")


def admin_conninfo(stack: LocalStack) -> str:
    """Superuser conninfo of the stack's app database (over the unix socket)."""
    return EmbeddedPostgres(stack.state_dir).admin_conninfo()


def session_hashes(stack: LocalStack, table: str) -> set[bytes]:
    """The session hashes ``table`` holds (``sessions`` or ``sealed_sessions``)."""
    assert table in {"sessions", "sealed_sessions"}
    with psycopg.connect(admin_conninfo(stack), autocommit=True) as conn:
        return {bytes(row[0]) for row in conn.execute(f"SELECT session_hash FROM {table}")}


def sealed_hashes(stack: LocalStack) -> set[bytes]:
    """Sessions with a stored sealed state: what the next enclave restore brings back."""
    return session_hashes(stack, "sealed_sessions")


def data_dir(stack: LocalStack) -> Path:
    """The embedded server's data directory (``state_dir/pgdata``)."""
    return EmbeddedPostgres(stack.state_dir).data_dir


def postmaster_running(stack: LocalStack) -> bool:
    """A live postmaster owns the data directory (its pid file names a running process)."""
    pid_file = data_dir(stack) / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def pg_ctl(stack: LocalStack, *args: str) -> float:
    """Run pgserver's bundled ``pg_ctl -D pgdata <args>`` as the data directory's owner;
    return how long it took. As root that owner is pgserver's ``pgserver`` user, and
    PostgreSQL refuses to run as root, so the command switches to it as pgserver does."""
    pgdata = data_dir(stack)
    owner = pgdata.stat()
    switch = owner.st_uid != os.geteuid()
    if switch:
        # As pgserver does before each start: every parent directory traversable by the
        # owner (another pytest run may have made /tmp/pytest-of-<user> 0700 again).
        ensure_prefix_permissions(pgdata)
    started = time.monotonic()
    with tempfile.TemporaryFile() as output:
        # Output to a file, not a pipe: the postmaster pg_ctl starts would inherit a pipe
        # and keep it open, so reading it to the end would never finish.
        result = subprocess.run(
            [str(bundled_bin_dir() / "pg_ctl"), "-D", str(pgdata), *args],
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=pgdata,
            user=owner.st_uid if switch else None,
            group=owner.st_gid if switch else None,
            extra_groups=[] if switch else None,
            timeout=60,
            check=False,
        )
        output.seek(0)
        text = output.read().decode(errors="replace")
    assert result.returncode == 0, f"pg_ctl {' '.join(args)} failed:\n{text}"
    return time.monotonic() - started


def restart_immediate(stack: LocalStack) -> float:
    """``pg_ctl restart -m immediate``: kill every backend, start again (crash recovery).
    The server's own options come back from ``postmaster.opts``; the log file does not,
    so it is named again."""
    log = EmbeddedPostgres(stack.state_dir).log_path
    return pg_ctl(stack, "-w", "-m", "immediate", "-l", str(log), "restart")


def stop_immediate(stack: LocalStack) -> float:
    """``pg_ctl stop -m immediate``: the server is gone, no checkpoint written."""
    return pg_ctl(stack, "-w", "-m", "immediate", "stop")


def start_like_pgserver(stack: LocalStack) -> float:
    """``pg_ctl start`` with the arguments pgserver 0.1.4 uses: no TCP listener, the unix
    socket in the data directory, the log in ``pgdata/log``."""
    embedded = EmbeddedPostgres(stack.state_dir)
    return pg_ctl(
        stack,
        "-w",
        "-o", '-h ""',
        "-o", f"-k {embedded.socket_dir}",
        "-l", str(embedded.log_path),
        "start",
    )  # fmt: skip


@dataclass
class Answer:
    """One answer (status 0: none) as the client saw it, with when it was sent and came."""

    sent: float
    answered: float
    op: str
    status: int
    content_type: str
    body: str


@dataclass
class Load:
    """What the workers saw: acknowledged sessions and reports, every refusal."""

    sessions: list[str] = field(default_factory=list)
    reports: dict[str, dict[int, str]] = field(default_factory=dict)  # id -> seq -> signature
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    refusals: list[Answer] = field(default_factory=list)
    successes: list[tuple[float, str]] = field(default_factory=list)  # (sent, op)
    readyz: list[Answer] = field(default_factory=list)  # every probe, 200s included

    def record(self, sent: float, op: str, status: int, content_type: str, body: str) -> None:
        """Count an answer; keep the body of every refusal."""
        self.statuses[(op, status)] += 1
        if 200 <= status < 300:
            self.successes.append((sent, op))
        else:
            self.refusals.append(Answer(sent, time.monotonic(), op, status, content_type, body))


def https(stack: LocalStack) -> aiohttp.ClientSession:
    """A keep-alive HTTPS session to the parent, trusting the stack's dev CA."""
    context = ssl.create_default_context(cafile=str(stack.ca_file))
    return aiohttp.ClientSession(
        base_url=stack.base_url,
        connector=aiohttp.TCPConnector(ssl=context),
        timeout=aiohttp.ClientTimeout(total=30),
    )


async def call(
    http: aiohttp.ClientSession, load: Load, op: str, method: str, path: str, body: Any = None
) -> Any:
    """One request; the JSON body of a 2xx answer, else None (the refusal is recorded)."""
    sent = time.monotonic()
    try:
        async with http.request(method, path, json=body) as response:
            text = await response.text()
            load.record(sent, op, response.status, response.content_type, text)
            return json.loads(text) if 200 <= response.status < 300 else None
    except (aiohttp.ClientError, TimeoutError) as exc:
        load.record(sent, op, 0, "", type(exc).__name__)  # no answer at all: a failure too
        return None


async def worker(
    stack: LocalStack, quote: Quote, load: Load, stop: asyncio.Event, mix: dict[str, float]
) -> None:
    """Send requests drawn from ``mix`` until ``stop``; record every outcome."""
    rng = random.Random(repr(mix))
    keys = stack.fakes_info()["exchanges"]["coinbase"]["credentials"]
    async with https(stack) as http:
        while not stop.is_set():
            await asyncio.sleep(PACE_SECONDS)
            (op,) = rng.choices(list(mix), weights=list(mix.values()))
            if op == "submit":
                envelope = encrypt_credentials(
                    quote,
                    exchange="coinbase",
                    api_key=keys["api_key"],
                    api_secret=keys["api_secret"],
                    label="pg-restart",
                    ttl=3600,
                )
                reply = await call(
                    http, load, op, "POST", "/enclave/submit_key", envelope.to_wire()
                )
                if reply is not None:
                    load.sessions.append(reply["session_id"])
                continue
            if not load.sessions:
                continue
            session_id = rng.choice(load.sessions)
            if op == "summary":
                await call(http, load, op, "GET", f"/enclave/summary/{session_id}")
                continue
            reply = await call(
                http, load, op, "POST", "/enclave/request_aggregates", {"session_id": session_id}
            )
            if reply is not None:
                signed = reply["aggregates_signed"]
                payload, signature = signed["payload"], signed["signature"]
                # An acknowledged report verifies with the attested key, for this session.
                verify_payload(quote.sig_public, payload, signature)
                assert payload["session_hash"] == session_hash(session_id).hex()
                load.reports.setdefault(session_id, {})[payload["seq"]] = signature


async def probe_readyz(stack: LocalStack, load: Load, stop: asyncio.Event) -> None:
    """Poll /readyz every 100 ms; keep every answer."""
    async with https(stack) as http:
        while not stop.is_set():
            sent = time.monotonic()
            try:
                async with http.get("/readyz") as response:
                    text = await response.text()
                    load.readyz.append(
                        Answer(sent, time.monotonic(), "readyz", response.status,
                                response.content_type, text)
                    )  # fmt: skip
            except (aiohttp.ClientError, TimeoutError) as exc:
                load.readyz.append(
                    Answer(sent, time.monotonic(), "readyz", 0, "", type(exc).__name__)
                )
            await asyncio.sleep(0.1)


async def wait_readyz_200(load: Load, since: float) -> float:
    """When the first /readyz probe sent after ``since`` answered 200."""
    deadline = time.monotonic() + READY_WITHIN_SECONDS
    while time.monotonic() < deadline:
        for probe in load.readyz:
            if probe.sent >= since and probe.status == 200:
                return probe.answered
        await asyncio.sleep(0.05)
    raise AssertionError(f"/readyz not 200 within {READY_WITHIN_SECONDS} s: {load.readyz[-3:]}")


def check_refusal(refusal: Answer, stack: LocalStack, sessions: list[str]) -> str | None:
    """What is wrong with a refusal, or None if it is a clean 503 'unavailable'."""
    if refusal.status != 503:
        return f"{refusal.op}: HTTP {refusal.status} {refusal.body[:200]!r}"
    if refusal.content_type != "application/json":
        return f"{refusal.op}: 503 as {refusal.content_type!r}"
    body = json.loads(refusal.body)
    if set(body) != {"error"} or set(body["error"]) != {"code", "message"}:
        return f"{refusal.op}: 503 body of another shape {refusal.body[:200]!r}"
    if body["error"]["code"] != "unavailable":
        return f"{refusal.op}: 503 with code {body['error']['code']!r}"
    text = refusal.body.lower()
    leaked = [word for word in INTERNAL_WORDS if word in text]
    leaked += ["state dir"] if str(stack.state_dir).lower() in text else []
    leaked += ["a session id"] if any(s.lower() in text for s in sessions) else []
    if leaked:
        return f"{refusal.op}: 503 body names {leaked}: {refusal.body[:200]!r}"
    return None


async def test_pg_immediate_restart_under_load_loses_nothing_acknowledged(
    stack: LocalStack, client: SecureClient
) -> None:
    """Two immediate-mode PostgreSQL crashes under load: the same parent is ready again by
    itself, every 201 session and 200 report is stored and served, refusals are clean 503s."""
    assert stack.parent is not None
    parent_pid = stack.parent.pid
    quote = await client.attest()
    stored_before, sealed_before = session_hashes(stack, "sessions"), sealed_hashes(stack)
    load = Load()
    stop = asyncio.Event()
    tasks = [asyncio.create_task(probe_readyz(stack, load, stop))] + [
        asyncio.create_task(worker(stack, quote, load, stop, mix)) for mix in WORKERS
    ]
    try:
        await asyncio.sleep(RESTART_AFTER_SECONDS)
        before_faults = len(load.sessions)
        restart_at = time.monotonic()
        restart_s = await asyncio.to_thread(restart_immediate, stack)
        after_restart_ready = await wait_readyz_200(load, restart_at + restart_s)
        await asyncio.sleep(STOP_AFTER_SECONDS)

        stopped_at = time.monotonic()
        await asyncio.to_thread(stop_immediate, stack)
        down_at = time.monotonic()
        await asyncio.sleep(DOWN_SECONDS)
        starting_at = time.monotonic()
        start_s = await asyncio.to_thread(start_like_pgserver, stack)
        back_at = time.monotonic()
        ready_at = await wait_readyz_200(load, back_at)
        await asyncio.sleep(LOAD_AFTER_READY_SECONDS)
    finally:
        stop.set()
        await asyncio.gather(*tasks)

    # The same parent process came back by itself.
    assert stack.parent.poll() is None and stack.parent.pid == parent_pid
    # While no server ran, /readyz said 503 and why, and both writes got 503s ...
    # (A probe waits up to the pool timeout, so "answered while no server ran" is the test.)
    down = [r for r in load.readyz if down_at <= r.answered < starting_at]
    assert down and all(r.status == 503 for r in down), down
    assert all("database unavailable" in r.body for r in down), down
    assert {r.op for r in load.refusals if r.answered >= stopped_at} >= {"submit", "aggregates"}
    # ... and every refusal, in either outage, was a clean 503 (never a 500, no detail).
    probes = [r for r in load.readyz if r.status != 200]
    problems = [check_refusal(r, stack, load.sessions) for r in load.refusals + probes]
    assert [p for p in problems if p is not None] == []
    assert all(r.answered >= restart_at for r in load.refusals + probes), "refused before a fault"
    # Submits and reports succeed again after the outage, not just /readyz.
    assert {op for sent, op in load.successes if sent > ready_at} >= {"submit", "aggregates"}
    assert 0 < before_faults < len(load.sessions)
    assert len(set(load.sessions)) == len(load.sessions)

    # Every acknowledged session is served: polling reaches the whole history and a new
    # report verifies with the attested key and continues the acknowledged chain.
    truth = stack.truth("coinbase")
    deadline = time.monotonic() + 30
    for session_id in load.sessions:
        while True:
            summary = await client.summary(session_id)
            polling = summary["polling"]
            if polling.get("complete") and polling.get("trades_seen") == len(truth):
                break
            assert time.monotonic() < deadline, polling
            await asyncio.sleep(0.2)
        assert summary["status"] == "active"
        report = await client.aggregates(session_id)
        assert report.payload["trades"] == len(truth)
        assert report.payload["seq"] > max(load.reports.get(session_id, {}), default=0)

    # Every acknowledged write is in the database.
    stored = session_hashes(stack, "sessions") - stored_before
    sealed = sealed_hashes(stack) - sealed_before
    with psycopg.connect(admin_conninfo(stack), autocommit=True) as conn:
        reports = {
            (bytes(r[0]), int(r[1])): str(r[2])
            for r in conn.execute(
                "SELECT s.session_hash, a.seq, a.signature"
                " FROM aggregates a JOIN sessions s ON s.id = a.session_id"
            )
        }
    acknowledged = {session_hash(s) for s in load.sessions}
    assert acknowledged <= stored
    assert acknowledged <= sealed  # an enclave restart now would restore every one
    assert sealed <= acknowledged  # a refused submit left nothing a restore could revive
    acknowledged_reports = {
        (session_hash(s), seq): signature
        for s, seqs in load.reports.items()
        for seq, signature in seqs.items()
    }
    assert acknowledged_reports
    assert {key: reports.get(key) for key in acknowledged_reports} == acknowledged_reports

    outage = [r.answered for r in load.refusals if r.answered >= stopped_at]
    first_write = min(sent for sent, op in load.successes if sent >= back_at and op != "summary")
    figures = {
        "sessions": len(load.sessions),
        "reports": len(acknowledged_reports),
        "statuses": {f"{op} {status}": n for (op, status), n in sorted(load.statuses.items())},
        "unacknowledged_rows": len(stored - acknowledged),
        "restart_immediate_s": round(restart_s, 2),
        "restart_refusals": sum(1 for r in load.refusals if r.answered < stopped_at),
        "restart_readyz_503": sum(1 for r in probes if r.answered < stopped_at),
        "restart_to_ready_s": round(after_restart_ready - restart_at, 2),
        "outage_s": round(back_at - stopped_at, 2),
        "pg_start_s": round(start_s, 2),
        "first_to_last_503_s": round(max(outage) - min(outage), 2),
        "recovery_s": round(ready_at - back_at, 2),
        "first_write_after_s": round(first_write - back_at, 2),
        "messages": sorted({json.loads(r.body)["error"]["message"] for r in load.refusals}),
    }
    print(f"postgres immediate restart under load: {figures}")


# Fault injection for the test below: the first sealed state of a new session (the one
# submit_key stores after Confirm) waits inside PostgreSQL, so the crash lands exactly
# in that write. Checkpoints of existing sessions update rows that exist: no wait.
SLOW_FIRST_SEAL = """
CREATE FUNCTION test_slow_first_seal() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM sealed_sessions WHERE session_hash = NEW.session_hash) THEN
        PERFORM pg_sleep(30);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER test_slow_first_seal BEFORE INSERT ON sealed_sessions
    FOR EACH ROW EXECUTE FUNCTION test_slow_first_seal();
"""
DROP_SLOW_FIRST_SEAL = """
DROP TRIGGER IF EXISTS test_slow_first_seal ON sealed_sessions;
DROP FUNCTION IF EXISTS test_slow_first_seal();
"""
CHECKPOINTS_WAIT_SECONDS = 5.0  # LocalStack checkpoints every 2 s


def wait_for_sleeping_seal(stack: LocalStack) -> None:
    """Until an app_service backend waits in the slow sealed-state insert."""
    deadline = time.monotonic() + 15
    with psycopg.connect(admin_conninfo(stack), autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE usename = 'app_service' AND wait_event = 'PgSleep'"
            ).fetchone()
            if row is not None and row[0] > 0:
                return
            time.sleep(0.02)
    pytest.fail("the submit never reached the sealed-state insert")


async def test_submit_refused_in_a_crash_mid_seal_is_never_restored(
    stack: LocalStack, client: SecureClient
) -> None:
    """A submit answered 503 because PostgreSQL crashed while storing the new session's
    sealed state leaves no sealed state behind: no later restore revives that session."""
    keys = stack.fakes_info()["exchanges"]["coinbase"]["credentials"]
    sealed_before = sealed_hashes(stack)
    with psycopg.connect(admin_conninfo(stack), autocommit=True) as conn:
        conn.execute(SLOW_FIRST_SEAL)
    # The SDK's default: the session gets an owner key.
    submit = asyncio.create_task(
        client.register(exchange="coinbase", api_key=keys["api_key"], api_secret=keys["api_secret"])
    )
    try:
        await asyncio.to_thread(wait_for_sleeping_seal, stack)
        await asyncio.to_thread(stop_immediate, stack)
        try:
            await submit
        except ServerRejected as exc:
            if (exc.status, exc.code) != (503, "unavailable"):
                pytest.fail(f"the submit got {exc.status} {exc.code}, not 503 unavailable")
        else:
            pytest.fail("the submit got a session although its sealed state was not stored")
    finally:
        submit.cancel()
        if not postmaster_running(stack):
            await asyncio.to_thread(start_like_pgserver, stack)
        with psycopg.connect(admin_conninfo(stack), autocommit=True) as conn:
            conn.execute(DROP_SLOW_FIRST_SEAL)
    await asyncio.to_thread(stack.wait_ready, timeout=READY_WITHIN_SECONDS)
    await asyncio.sleep(CHECKPOINTS_WAIT_SECONDS)
    assert sealed_hashes(stack) == sealed_before
