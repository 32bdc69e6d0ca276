"""Adaptive polling: the sans-IO scheduler, the session poller and the polling manager.

Scheduler tests feed outcomes and times directly. Poller tests run against the
in-memory fake Binance of ``tests.test_exchange_history`` with virtual time: the
poller's ``sleep`` advances a fake clock instantly and records each delay.
"""

from __future__ import annotations

import asyncio
import io
import json
import random
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from ccxt.base import errors as ccxt_errors

from enclave.exchanges import polling as polling_module
from enclave.exchanges.client import FAILURE_MESSAGES, ClientSettings, ErrorKind
from enclave.exchanges.history import BinanceHistory, HistoryConfig
from enclave.exchanges.polling import (
    INTERNAL_ERROR_MESSAGE,
    PollingManager,
    PollPolicy,
    PollScheduler,
    PollState,
    SessionPoller,
)
from shared.envelope import Credentials
from shared.logsetup import configure_logging
from tests.test_exchange_history import (
    CANARY_KEY,
    CANARY_SECRET,
    DAY,
    HOUR,
    NOW,
    ConnectStub,
    FakeBinance,
    binance_raw,
    spread_trades,
)

T0 = NOW / 1000  # virtual "now" in seconds


# ============================================================================ scheduler


def test_idle_polls_double_the_interval_up_to_the_cap() -> None:
    """Each poll without new trades doubles the interval, never beyond max_interval."""
    scheduler = PollScheduler(PollPolicy(fast_interval=10, max_interval=300))
    delays = [scheduler.on_success(now=100.0, new_trades=0).next_at for _ in range(7)]
    assert [d - 100.0 for d in delays if d is not None] == [20, 40, 80, 160, 300, 300, 300]
    assert scheduler.state is PollState.IDLE


def test_new_trades_bring_the_interval_back_to_fast() -> None:
    """After idling, a poll with new trades schedules the next one fast_interval later."""
    scheduler = PollScheduler(PollPolicy(fast_interval=10, max_interval=300))
    for _ in range(5):
        scheduler.on_success(now=0.0, new_trades=0)
    decision = scheduler.on_success(now=50.0, new_trades=3)
    assert (decision.state, decision.next_at) == (PollState.POLLING, 60.0)


def test_retry_after_is_respected_exactly() -> None:
    """A rate limit with Retry-After schedules the next poll exactly that many seconds later."""
    scheduler = PollScheduler()
    decision = scheduler.on_failure(now=1000.0, kind=ErrorKind.RATE_LIMITED, retry_after=7.0)
    assert (decision.state, decision.next_at) == (PollState.BACKOFF, 1007.0)
    long_ban = scheduler.on_failure(now=1000.0, kind=ErrorKind.RATE_LIMITED, retry_after=7200.0)
    assert long_ban.next_at == 8200.0  # not clipped by error_cap: the exchange said so


def test_retry_after_zero_is_floored() -> None:
    """A Retry-After of 0 waits min_retry_after, so it cannot become a tight loop."""
    decision = PollScheduler().on_failure(now=0.0, kind=ErrorKind.RATE_LIMITED, retry_after=0.0)
    assert decision.next_at == PollPolicy().min_retry_after


@pytest.mark.parametrize(
    "kind",
    [ErrorKind.UNAVAILABLE, ErrorKind.TIMEOUT, ErrorKind.EXCHANGE_ERROR, ErrorKind.RATE_LIMITED],
)
def test_failures_back_off_exponentially_to_the_cap(kind: ErrorKind) -> None:
    """Transient failures (and rate limits without Retry-After) double the wait, capped."""
    scheduler = PollScheduler(PollPolicy(error_base=5, error_cap=60))
    delays = [scheduler.on_failure(now=0.0, kind=kind).next_at for _ in range(6)]
    assert delays == [5, 10, 20, 40, 60, 60]
    assert scheduler.state is PollState.BACKOFF


def test_success_after_failures_resets_the_backoff() -> None:
    """Once a poll succeeds, the next failure starts again from error_base."""
    scheduler = PollScheduler(PollPolicy(error_base=5))
    for _ in range(4):
        scheduler.on_failure(now=0.0, kind=ErrorKind.UNAVAILABLE)
    scheduler.on_success(now=0.0, new_trades=0)
    assert scheduler.on_failure(now=0.0, kind=ErrorKind.UNAVAILABLE).next_at == 5


def test_auth_error_is_terminal() -> None:
    """An auth failure stops polling for good: no next poll, whatever happens after."""
    scheduler = PollScheduler()
    decision = scheduler.on_failure(now=0.0, kind=ErrorKind.AUTH)
    assert (decision.state, decision.next_at) == (PollState.AUTH_ERROR, None)
    assert scheduler.on_success(now=1.0, new_trades=5).next_at is None
    assert scheduler.on_failure(now=1.0, kind=ErrorKind.TIMEOUT).next_at is None
    assert scheduler.stop().state is PollState.AUTH_ERROR


def test_clock_skew_resyncs_once_then_backs_off() -> None:
    """A first timestamp rejection asks for a resync and an immediate retry; the next backs off."""
    scheduler = PollScheduler(PollPolicy(error_base=5))
    first = scheduler.on_failure(now=10.0, kind=ErrorKind.CLOCK_SKEW)
    assert (first.resync_clock, first.next_at) == (True, 10.0)
    second = scheduler.on_failure(now=11.0, kind=ErrorKind.CLOCK_SKEW)
    assert (second.resync_clock, second.next_at, second.state) == (False, 16.0, PollState.BACKOFF)
    scheduler.on_success(now=20.0, new_trades=0)
    assert scheduler.on_failure(now=30.0, kind=ErrorKind.CLOCK_SKEW).resync_clock


def test_egress_denial_retries_slowly() -> None:
    """A host refused by the egress allowlist is retried only every denied_interval."""
    scheduler = PollScheduler(PollPolicy(denied_interval=900))
    decision = scheduler.on_failure(now=0.0, kind=ErrorKind.DENIED_BY_EGRESS)
    assert (decision.state, decision.next_at) == (PollState.DENIED, 900.0)
    assert scheduler.on_success(now=900.0, new_trades=1).state is PollState.POLLING


def test_unsupported_exchange_stops() -> None:
    """An exchange without a readable trade history stops polling."""
    decision = PollScheduler().on_failure(now=0.0, kind=ErrorKind.UNSUPPORTED)
    assert (decision.state, decision.next_at) == (PollState.STOPPED, None)


@pytest.mark.parametrize(
    "arguments",
    [
        {"fast_interval": 0},
        {"fast_interval": 10, "max_interval": 5},
        {"idle_factor": 0.5},
        {"error_base": 10, "error_cap": 5},
        {"denied_interval": 0},
        {"min_retry_after": -1},
    ],
)
def test_policy_rejects_nonsense(arguments: dict[str, float]) -> None:
    """Intervals that would poll in a loop or never back off are refused at construction."""
    with pytest.raises(ValueError, match="need"):
        PollPolicy(**arguments)


# ============================================================================ poller


class VirtualTime:
    """A clock in seconds and a sleep that advances it instantly, recording the delays."""

    def __init__(self, *, max_sleeps: int | None = None) -> None:
        self.now = T0
        self.sleeps: list[float] = []
        self.max_sleeps = max_sleeps
        self.on_sleep: Callable[[], None] | None = None

    def __call__(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        if self.on_sleep is not None:
            self.on_sleep()
        self.now += delay
        if self.max_sleeps is not None and len(self.sleeps) >= self.max_sleeps:
            raise asyncio.CancelledError
        await asyncio.sleep(0)


def small_binance(seed: int = 1) -> FakeBinance:
    """A week of BTC/USDT trades, and ETH/USDT listed but never traded."""
    rng = random.Random(seed)
    return FakeBinance(
        {"BTC/USDT": spread_trades(rng, "BTC/USDT", 120, NOW - 7 * DAY, NOW - HOUR)},
        balances={"BTC": 1.0},
        extra_symbols=["ETH/USDT"],
        now=NOW + 30 * DAY,  # everything the tests add later is visible
    )


def poller_for(fake: FakeBinance, time: VirtualTime, **policy: float) -> SessionPoller:
    fetcher = BinanceHistory(fake, exchange_id="binance", config=HistoryConfig())
    return SessionPoller(
        fetcher, policy=PollPolicy(**policy), clock=time, sleep=time.sleep, tag="0123456789ab"
    )


async def run_until_cancelled(poller: SessionPoller) -> None:
    with pytest.raises(asyncio.CancelledError):
        await poller.run()


async def test_auth_error_stops_the_poller_without_retries() -> None:
    """A rejected key ends the poll loop at once: no sleep, no further call, ever."""
    fake = small_binance()
    fake.fault = lambda method, _n: (
        ccxt_errors.AuthenticationError("binance -2015") if method == "fetch_balance" else None
    )
    time = VirtualTime()
    poller = poller_for(fake, time)
    await poller.run()  # returns by itself
    assert [c[0] for c in fake.calls] == ["load_markets", "fetch_balance"]
    assert time.sleeps == []
    status = poller.status()
    assert status["state"] == "auth_error"
    assert status["last_error"] == FAILURE_MESSAGES[ErrorKind.AUTH]
    assert status["next_poll"] is None and status["error_kind"] == "auth"


async def test_clock_skew_triggers_exactly_one_resync_then_succeeds() -> None:
    """Binance -1021 makes the poller resync the server time once and retry at once."""
    fake = small_binance()
    fake.fault = lambda method, _n: (
        ccxt_errors.InvalidNonce("binance -1021 Timestamp outside recvWindow")
        if method == "fetch_balance" and fake.resyncs == 0
        else None
    )
    time = VirtualTime(max_sleeps=1)
    poller = poller_for(fake, time)
    await run_until_cancelled(poller)
    assert fake.resyncs == 1
    assert fake.count("fetch_balance") == 2  # the failed one and the immediate retry
    assert len(poller.ledger) == 120
    assert poller.status()["last_error"] is None


async def test_persistent_clock_skew_resyncs_once_then_backs_off() -> None:
    """If the retry after a resync is rejected again, the poller backs off instead of looping."""
    fake = small_binance()
    fake.fault = lambda method, _n: (
        ccxt_errors.InvalidNonce("binance -1021") if method == "fetch_balance" else None
    )
    time = VirtualTime(max_sleeps=1)
    poller = poller_for(fake, time, error_base=5)
    statuses: list[dict[str, Any]] = []
    time.on_sleep = lambda: statuses.append(poller.status())
    await run_until_cancelled(poller)
    assert fake.resyncs == 1 and time.sleeps == [5.0]
    assert statuses[0]["state"] == "backoff"
    assert statuses[0]["last_error"] == FAILURE_MESSAGES[ErrorKind.CLOCK_SKEW]


async def test_poller_waits_exactly_the_retry_after() -> None:
    """A 429 with Retry-After: 7 makes the next poll start exactly 7 s later."""
    fake = small_binance()
    fake.last_response_headers = {"Retry-After": "7"}
    fake.fault = lambda method, n: (
        ccxt_errors.DDoSProtection("binance 429 Too Many Requests") if n == 2 else None
    )
    time = VirtualTime(max_sleeps=2)
    poller = poller_for(fake, time)
    statuses: list[dict[str, Any]] = []
    time.on_sleep = lambda: statuses.append(poller.status())
    await run_until_cancelled(poller)
    assert time.sleeps[0] == 7.0
    assert statuses[0]["state"] == "backoff"
    assert statuses[0]["next_poll"] == _rfc3339(T0 + 7)
    assert statuses[1]["state"] == "polling" and statuses[1]["last_error"] is None
    assert len(poller.ledger) == 120


async def test_poller_is_fast_while_trades_arrive_then_idles() -> None:
    """Polls stay fast_interval apart while new trades come, then back off to max_interval."""
    fake = small_binance()
    time = VirtualTime(max_sleeps=9)
    arrivals = iter(range(3))

    def trade_arrives() -> None:
        if next(arrivals, None) is not None:
            last = fake.trades["BTC/USDT"][-1]["id"]
            at = int((time.now + 1) * 1000)
            fake.trades["BTC/USDT"].append(binance_raw("BTC/USDT", last + 1, at, random.Random()))

    time.on_sleep = trade_arrives
    poller = poller_for(fake, time, fast_interval=15, max_interval=300)
    await run_until_cancelled(poller)
    assert time.sleeps == [15, 15, 15, 15, 30, 60, 120, 240, 300]
    assert len(poller.ledger) == 123


async def test_a_bug_in_the_poller_ends_in_a_status_not_a_dead_task() -> None:
    """An unexpected exception stops the poller with a fixed internal-error status."""

    class Broken(BinanceHistory):
        async def _sync(self, ledger: Any) -> int:
            raise RuntimeError(f"bug quoting {CANARY_KEY}")

    time = VirtualTime()
    poller = SessionPoller(
        Broken(small_binance(), exchange_id="binance", config=HistoryConfig()),
        clock=time,
        sleep=time.sleep,
    )
    await poller.run()
    status = poller.status()
    assert (status["state"], status["last_error"]) == ("stopped", INTERNAL_ERROR_MESSAGE)
    assert CANARY_KEY not in json.dumps(status)


def _rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(int(seconds), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ============================================================================ manager


async def eventually(predicate: Callable[[], bool]) -> None:
    """Wait (real time, at most 5 s) until ``predicate()`` holds."""
    for _ in range(1000):
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached within 5 s")


async def instant(_delay: float) -> None:
    """A sleep that only yields: pollers run back to back."""
    await asyncio.sleep(0)


def credentials(tag: str, exchange: str = "binance") -> Credentials:
    return Credentials(
        exchange=exchange, api_key=f"{CANARY_KEY}{tag}", api_secret=f"{CANARY_SECRET}{tag}"
    )


class Factory:
    """Builds fake exchanges for the manager and remembers them."""

    def __init__(self, make: Callable[[Credentials], FakeBinance] | None = None) -> None:
        self.built: list[FakeBinance] = []
        self.make = make or (lambda _c: small_binance())

    def __call__(self, creds: Credentials) -> FakeBinance:
        exchange = self.make(creds)
        self.built.append(exchange)
        return exchange


async def test_manager_polls_reports_and_stops_a_session() -> None:
    """start -> polling/idle with the full ledger; stop closes the exchange and forgets it."""
    factory = Factory()
    manager = PollingManager(settings=None, exchange_factory=factory, sleep=instant)
    session = bytes(range(32))
    manager.start(session, "binance", credentials("a"))
    manager.start(session, "binance", credentials("a"))  # a repeated confirm: no second poller
    await eventually(lambda: (manager.status(session) or {}).get("state") == "idle")
    assert len(factory.built) == 1
    ledger = manager.trades(session)
    assert ledger is not None and len(ledger) == 120
    status = manager.status(session)
    assert status is not None
    assert status["trades_seen"] == 120 and status["calls"] == len(factory.built[0].calls)
    assert status["complete"] is True
    record = manager.completeness(session)
    assert record is not None and record["strategy"] == "binance-symbol-windows"
    assert manager.stop(session) is True
    assert manager.status(session) is None and manager.trades(session) is None
    await eventually(lambda: factory.built[0].closed)
    assert manager.stop(session) is False
    await manager.aclose()


async def test_manager_prune_and_aclose_close_every_exchange() -> None:
    """prune stops sessions that are gone; aclose stops the rest and waits for closing."""
    factory = Factory()
    manager = PollingManager(settings=None, exchange_factory=factory, sleep=instant)
    sessions = [bytes([n]) * 32 for n in range(3)]
    for number, session in enumerate(sessions):
        manager.start(session, "binance", credentials(str(number)))
    assert manager.prune({sessions[0]}) == 2
    assert len(manager) == 1
    await manager.aclose()
    assert len(manager) == 0
    assert all(exchange.closed for exchange in factory.built)


async def test_manager_refuses_an_exchange_mismatch() -> None:
    """Credentials for one exchange cannot be polled as another (a wiring bug, fail closed)."""
    manager = PollingManager(settings=None, exchange_factory=Factory(), sleep=instant)
    with pytest.raises(ValueError, match="does not match"):
        manager.start(b"\x01" * 32, "kraken", credentials("x"))
    assert len(manager) == 0


async def test_manager_auth_error_session_stays_quiet() -> None:
    """After an auth error the session's exchange gets no further call, however long we wait."""

    def bad_key(_c: Credentials) -> FakeBinance:
        fake = small_binance()
        fake.fault = lambda method, _n: (
            ccxt_errors.AuthenticationError("binance -2015") if method == "fetch_balance" else None
        )
        return fake

    factory = Factory(bad_key)
    manager = PollingManager(settings=None, exchange_factory=factory, sleep=instant)
    session = b"\x02" * 32
    manager.start(session, "binance", credentials("b"))
    await eventually(lambda: (manager.status(session) or {}).get("state") == "auth_error")
    await asyncio.sleep(0.05)
    assert len(factory.built[0].calls) == 2
    await eventually(lambda: factory.built[0].closed)  # released as soon as polling ended
    await manager.aclose()


async def test_status_logs_and_records_never_contain_credentials() -> None:
    """Errors quoting the key or secret never reach status, completeness, repr or logs."""
    stream = io.StringIO()
    configure_logging("enclave-test", level="DEBUG", stream=stream)
    errors: list[Callable[[str], BaseException]] = [
        lambda key: ccxt_errors.AuthenticationError(f"binance {{'X-MBX-APIKEY': '{key}'}}"),
        lambda key: ccxt_errors.ExchangeError(f"binance GET /api/v3/account?apiKey={key}"),
        lambda key: ccxt_errors.RateLimitExceeded(f"429 for key {key}"),
        lambda key: ccxt_errors.InvalidNonce(f"-1021 {key}"),
        lambda key: RuntimeError(f"parser choked on {key}"),
    ]

    def leaky(creds: Credentials) -> FakeBinance:
        fake = small_binance()
        make = errors[int(creds.api_key[-1])]
        text = f"{creds.api_key} {creds.api_secret}"
        fake.fault = lambda method, _n: make(text) if method == "fetch_balance" else None
        return fake

    manager = PollingManager(settings=None, exchange_factory=Factory(leaky), sleep=instant)
    sessions = [bytes([n + 10]) * 32 for n in range(len(errors))]
    for number, session in enumerate(sessions):
        manager.start(session, "binance", credentials(str(number)))
    await eventually(
        lambda: all((manager.status(s) or {}).get("last_error") is not None for s in sessions)
    )
    seen = json.dumps([[manager.status(s), manager.completeness(s)] for s in sessions], default=str)
    seen += repr(manager) + repr(vars(manager)) + stream.getvalue()
    await manager.aclose()
    seen += stream.getvalue()
    assert CANARY_KEY not in seen and CANARY_SECRET not in seen


async def test_manager_with_real_ccxt_shows_egress_denial_promptly() -> None:
    """A real ccxt client refused by the egress shows 'denied' with the fixed text, no hang."""
    import ssl

    async with ConnectStub(403) as proxy:
        settings = ClientSettings(ssl_context=ssl.create_default_context(), proxy_url=proxy.url)
        manager = PollingManager(settings=settings)
        session = b"\x03" * 32
        manager.start(session, "binance", credentials("d"))
        await eventually(lambda: (manager.status(session) or {}).get("state") == "denied")
        status = manager.status(session)
        assert status is not None
        assert status["last_error"] == FAILURE_MESSAGES[ErrorKind.DENIED_BY_EGRESS]
        assert status["next_poll"] is not None
        await manager.aclose()
    assert proxy.targets == ["api.binance.com:443"]


async def test_manager_unknown_exchange_id_is_a_stopped_status() -> None:
    """A session for an id ccxt does not know gets a 'stopped' status and no task."""
    import ssl

    settings = ClientSettings(ssl_context=ssl.create_default_context(), proxy_url=None)
    manager = PollingManager(settings=settings)
    session = b"\x04" * 32
    manager.start(session, "nosuchex", credentials("u", exchange="nosuchex"))
    status = manager.status(session)
    assert status is not None
    assert (status["state"], status["error_kind"]) == ("stopped", "unsupported")
    assert manager.trades(session) is None
    await manager.aclose()


def test_manager_needs_a_way_to_build_exchanges() -> None:
    """Without ClientSettings or a factory there is nothing to poll with."""
    with pytest.raises(ValueError, match="ClientSettings"):
        PollingManager(settings=None)


def test_all_lists_the_public_api() -> None:
    """__all__ of enclave.exchanges.polling names exactly its public classes."""
    public = {
        name
        for name, value in vars(polling_module).items()
        if not name.startswith("_")
        and getattr(value, "__module__", None) == polling_module.__name__
        and callable(value)
    }
    assert public == set(polling_module.__all__) - {"INTERNAL_ERROR_MESSAGE"}
