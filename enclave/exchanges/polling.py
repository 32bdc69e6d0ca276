"""Adaptive polling of exchange histories: scheduler, per-session poller, manager. Side: enclave.

Three layers, from pure to I/O:

``PollScheduler`` (sans-IO, time passed in)
    Outcomes in, the next poll time out. Fast (``fast_interval``) while polls bring
    new trades; each idle poll doubles the interval up to ``max_interval``. Failures:

    ============================  ==========================================  ===============
    failure                       next poll                                   state
    ============================  ==========================================  ===============
    rate limited + Retry-After    exactly ``now + retry_after`` (RFC 9110      backoff
                                  10.2.3; Binance: "the number of seconds
                                  required to wait" on 429/418)
    clock skew, first time        now, after the poller re-measured the        unchanged
                                  exchange clock (Binance -1021)
    auth                          never: a bad key must not be hammered        auth_error
                                  (Binance turns repeated failures into IP
                                  bans, Spot API docs LIMITS)
    egress denied                 ``denied_interval`` (slow: an allowlist      denied
                                  changes by operator action, not by retries)
    unsupported exchange          never                                        stopped
    anything else                 ``error_base * 2**(n-1)``, capped            backoff
    ============================  ==========================================  ===============

    ccxt's own rate limiter (``enableRateLimit``) spaces the calls *within* a poll;
    the scheduler spaces polls.

``SessionPoller`` (one asyncio task per session)
    fetch (``HistoryFetcher.sync``) -> merge into the session's ``TradeLedger`` ->
    ask the scheduler -> sleep. ``status()`` is what the Summary reply shows.

``PollingManager``
    The service's handle: ``start`` on confirm, ``stop`` on revoke, ``prune`` on
    expiry, ``status`` / ``trades`` / ``completeness`` for replies, ``aclose`` at
    shutdown. One ccxt rate limiter per exchange id is shared by all sessions, since
    exchanges limit per IP and every session leaves through the parent's IP.

Nothing here logs or returns exception text: errors are ``ExchangeFailure`` kinds
with fixed messages, and sessions appear in logs as 12 hex chars of their id hash.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import structlog

from enclave.exchanges.client import (
    ClientSettings,
    ErrorKind,
    ExchangeFailure,
    build_exchange,
)
from enclave.exchanges.history import (
    HistoryConfig,
    HistoryFetcher,
    Trade,
    TradeLedger,
    history_fetcher_for,
)
from shared.envelope import Credentials

__all__ = [
    "INTERNAL_ERROR_MESSAGE",
    "Decision",
    "PollPolicy",
    "PollScheduler",
    "PollState",
    "PollingManager",
    "SessionPoller",
]

log = structlog.get_logger("enclave.exchanges.polling")

INTERNAL_ERROR_MESSAGE: Final = "internal error while polling"
"""Status text when the poller itself failed (a bug, not the exchange)."""


class PollState(enum.StrEnum):
    """A session's polling state, as the Summary reply shows it."""

    STARTING = "starting"
    POLLING = "polling"
    IDLE = "idle"
    BACKOFF = "backoff"
    AUTH_ERROR = "auth_error"
    DENIED = "denied"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True, kw_only=True)
class PollPolicy:
    """Polling intervals, in seconds."""

    fast_interval: float = 15.0
    """Between polls while new trades arrive (and the first retry after recovery)."""
    idle_factor: float = 2.0
    """Interval multiplier after a poll that found nothing new."""
    max_interval: float = 300.0
    """Cap of the idle interval: a new trade shows within this long."""
    error_base: float = 5.0
    """First backoff after a transient failure; doubles with each further failure."""
    error_cap: float = 900.0
    """Cap of the failure backoff."""
    denied_interval: float = 900.0
    """Between retries while the egress refuses the exchange host."""
    min_retry_after: float = 1.0
    """Floor under a Retry-After (a "0" repeated would otherwise be a tight loop)."""

    def __post_init__(self) -> None:
        if not 0 < self.fast_interval <= self.max_interval:
            raise ValueError("need 0 < fast_interval <= max_interval")
        if self.idle_factor < 1 or not 0 < self.error_base <= self.error_cap:
            raise ValueError("need idle_factor >= 1 and 0 < error_base <= error_cap")
        if self.denied_interval <= 0 or self.min_retry_after < 0:
            raise ValueError("need denied_interval > 0 and min_retry_after >= 0")


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """What to do after a poll: the state to show and when to poll next."""

    state: PollState
    next_at: float | None  # Unix seconds; None = stop polling
    resync_clock: bool = False  # re-measure the exchange clock before the next poll


_TERMINAL: Final = frozenset({PollState.AUTH_ERROR, PollState.STOPPED})


class PollScheduler:
    """Sans-IO adaptive schedule: feed it outcomes and ``now``; it never sleeps."""

    def __init__(self, policy: PollPolicy | None = None) -> None:
        self._policy = policy or PollPolicy()
        self.state = PollState.STARTING
        self.interval = self._policy.fast_interval
        self.failures = 0
        self._resynced = False

    def on_success(self, *, now: float, new_trades: int) -> Decision:
        """A poll completed; ``new_trades`` were not in the ledger before."""
        if self.state in _TERMINAL:
            return Decision(state=self.state, next_at=None)
        self.failures = 0
        self._resynced = False
        if new_trades > 0:
            self.interval = self._policy.fast_interval
            self.state = PollState.POLLING
        else:
            grown = self.interval * self._policy.idle_factor
            self.interval = min(max(grown, self._policy.fast_interval), self._policy.max_interval)
            self.state = PollState.IDLE
        return Decision(state=self.state, next_at=now + self.interval)

    def on_failure(
        self,
        *,
        now: float,
        kind: ErrorKind,
        retry_after: float | None = None,
    ) -> Decision:
        """A poll failed with ``kind`` (and the exchange's Retry-After, if it sent one)."""
        policy = self._policy
        if self.state in _TERMINAL:
            return Decision(state=self.state, next_at=None)
        if kind is ErrorKind.CLOCK_SKEW and not self._resynced:
            # One resync and an immediate retry; a second rejection in a row backs off.
            self._resynced = True
            return Decision(state=self.state, next_at=now, resync_clock=True)
        if kind is ErrorKind.AUTH:
            self.state = PollState.AUTH_ERROR
            return Decision(state=self.state, next_at=None)
        if kind is ErrorKind.UNSUPPORTED:
            self.state = PollState.STOPPED
            return Decision(state=self.state, next_at=None)
        self.failures += 1
        # After recovering, start again from the fast interval.
        self.interval = policy.fast_interval
        if kind is ErrorKind.DENIED_BY_EGRESS:
            self.state = PollState.DENIED
            return Decision(state=self.state, next_at=now + policy.denied_interval)
        self.state = PollState.BACKOFF
        if kind is ErrorKind.RATE_LIMITED and retry_after is not None:
            return Decision(
                state=self.state, next_at=now + max(retry_after, policy.min_retry_after)
            )
        delay = min(policy.error_base * 2 ** (self.failures - 1), policy.error_cap)
        return Decision(state=self.state, next_at=now + delay)

    def stop(self) -> Decision:
        """The session ended (revoke, expiry, shutdown)."""
        if self.state is not PollState.AUTH_ERROR:
            self.state = PollState.STOPPED
        return Decision(state=self.state, next_at=None)


def _rfc3339(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(int(timestamp), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class SessionPoller:
    """Poll one session's exchange until stopped: fetch -> merge -> schedule -> sleep."""

    def __init__(
        self,
        fetcher: HistoryFetcher,
        *,
        ledger: TradeLedger | None = None,
        policy: PollPolicy | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        tag: str = "",
    ) -> None:
        self._fetcher = fetcher
        self.ledger = ledger if ledger is not None else TradeLedger()
        self._scheduler = PollScheduler(policy)
        self._clock = clock
        self._sleep = sleep
        self._tag = tag
        self._last_poll: float | None = None
        self._next_poll: float | None = None
        self._last_error: str | None = None
        self._error_kind: ErrorKind | None = None

    @property
    def state(self) -> PollState:
        """The current polling state."""
        return self._scheduler.state

    def status(self) -> dict[str, Any]:
        """The session's polling status (fixed texts only, times in RFC 3339)."""
        completeness = self._fetcher.completeness
        return {
            "state": self._scheduler.state.value,
            "last_poll": _rfc3339(self._last_poll),
            "next_poll": _rfc3339(self._next_poll),
            "trades_seen": len(self.ledger),
            "calls": completeness.calls,
            "last_error": self._last_error,
            "error_kind": None if self._error_kind is None else self._error_kind.value,
            "complete": completeness.complete and self._last_poll is not None,
        }

    def completeness(self) -> dict[str, Any]:
        """The fetcher's completeness record, JSON-ready."""
        return self._fetcher.completeness.to_json()

    async def run(self) -> None:
        """Poll until a terminal state or cancellation."""
        try:
            while True:
                decision = await self._poll_once()
                self._next_poll = decision.next_at
                if decision.next_at is None:
                    return
                delay = decision.next_at - self._clock()
                if delay > 0:
                    await self._sleep(delay)
        except asyncio.CancelledError:
            self._stop()
            raise
        except Exception as exc:  # noqa: BLE001 - a bug must end in a status, not a dead task
            log.error("poller_failed", session=self._tag, error_type=type(exc).__name__)
            self._last_error = INTERNAL_ERROR_MESSAGE
            self._stop()

    def _stop(self) -> None:
        self._scheduler.stop()
        self._next_poll = None

    async def _poll_once(self) -> Decision:
        previous = self._scheduler.state
        self._last_poll = self._clock()
        try:
            added = await self._fetcher.sync(self.ledger, now_ms=int(self._last_poll * 1000))
        except ExchangeFailure as failure:
            decision = self._failed(failure)
            if decision.resync_clock:
                try:
                    await self._fetcher.resync_clock()
                except ExchangeFailure as again:
                    decision = self._failed(again)
        else:
            self._last_error = None
            self._error_kind = None
            decision = self._scheduler.on_success(now=self._clock(), new_trades=added)
        if decision.state is not previous:
            log.info("poll_state", session=self._tag, state=decision.state.value)
        return decision

    def _failed(self, failure: ExchangeFailure) -> Decision:
        self._last_error = failure.message
        self._error_kind = failure.kind
        log.warning(
            "poll_failed",
            session=self._tag,
            kind=failure.kind.value,
            error_type=failure.error_type,
            retry_after=failure.retry_after,
        )
        return self._scheduler.on_failure(
            now=self._clock(), kind=failure.kind, retry_after=failure.retry_after
        )


@dataclass(slots=True)
class _Entry:
    poller: SessionPoller | None
    task: asyncio.Task[None] | None
    exchange: Any
    refused: dict[str, Any] | None = None  # status of a session that could not start
    exchange_closed: bool = False


class PollingManager:
    """Starts, stops and reports the pollers of all sessions. Call from the event loop."""

    def __init__(
        self,
        *,
        settings: ClientSettings | None,
        policy: PollPolicy | None = None,
        history: HistoryConfig | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        exchange_factory: Callable[[Credentials], Any] | None = None,
    ) -> None:
        """``settings`` builds real ccxt clients; ``exchange_factory`` replaces that (tests)."""
        if settings is None and exchange_factory is None:
            raise ValueError("PollingManager needs ClientSettings or an exchange_factory")
        self._settings = settings
        self._policy = policy or PollPolicy()
        self._history = history or HistoryConfig()
        self._clock = clock
        self._sleep = sleep
        self._factory = exchange_factory
        self._entries: dict[bytes, _Entry] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._throttlers: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def _build(self, credentials: Credentials) -> Any:
        if self._factory is not None:
            return self._factory(credentials)
        assert self._settings is not None  # checked in __init__
        exchange_id = credentials.exchange
        exchange = build_exchange(
            credentials, self._settings, throttler=self._throttlers.get(exchange_id)
        )
        self._throttlers.setdefault(exchange_id, getattr(exchange, "throttler", None))
        return exchange

    def start(
        self,
        session_hash: bytes,
        exchange_id: str,
        credentials: Credentials,
        trades: Iterable[Trade] = (),
    ) -> None:
        """Begin polling a confirmed session (no-op if it is already polled).

        ``trades`` are those read before a restart (restored from sealed state), in read
        order: the ledger starts with them, so nothing is counted twice and the Merkle
        tree continues in the same order.
        """
        if session_hash in self._entries:
            return
        if exchange_id != credentials.exchange:
            # The service checks this at submit; a mismatch here is a wiring bug.
            raise ValueError("exchange id does not match the credentials")
        tag = session_hash.hex()[:12]
        try:
            exchange = self._build(credentials)
        except ExchangeFailure as failure:
            log.warning("poller_refused", session=tag, kind=failure.kind.value)
            self._entries[session_hash] = _Entry(
                poller=None,
                task=None,
                exchange=None,
                refused={
                    "state": PollState.STOPPED.value,
                    "last_poll": None,
                    "next_poll": None,
                    "trades_seen": 0,
                    "calls": 0,
                    "last_error": failure.message,
                    "error_kind": failure.kind.value,
                    "complete": False,
                },
            )
            return
        fetcher = history_fetcher_for(exchange_id, exchange, self._history)
        ledger = TradeLedger()
        for trade in trades:
            ledger.add(trade)
        poller = SessionPoller(
            fetcher,
            policy=self._policy,
            clock=self._clock,
            sleep=self._sleep,
            tag=tag,
            ledger=ledger,
        )
        entry = _Entry(poller=poller, task=None, exchange=exchange)
        entry.task = asyncio.get_running_loop().create_task(self._run(entry), name=f"poller-{tag}")
        self._entries[session_hash] = entry
        log.info("poller_started", session=tag, exchange=exchange_id)

    async def _run(self, entry: _Entry) -> None:
        assert entry.poller is not None
        try:
            await entry.poller.run()
        finally:
            # Polling ended (auth error, unsupported): release the HTTP session now.
            await self._close_exchange(entry)

    @staticmethod
    async def _close_exchange(entry: _Entry) -> None:
        if entry.exchange_closed or entry.exchange is None:
            return
        entry.exchange_closed = True
        close = getattr(entry.exchange, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                await close()

    async def _retire(self, entry: _Entry) -> None:
        # A task cancelled before its first step never runs its ``finally``: close the
        # exchange here too (idempotent), after the task has really finished.
        if entry.task is not None:
            await asyncio.wait({entry.task})
        await self._close_exchange(entry)

    def stop(self, session_hash: bytes) -> bool:
        """Stop polling a session (revoke / expiry) and forget it; False if unknown."""
        entry = self._entries.pop(session_hash, None)
        if entry is None:
            return False
        if entry.task is not None:
            entry.task.cancel()
        if entry.exchange is not None:
            closer = asyncio.get_running_loop().create_task(self._retire(entry))
            self._closing.add(closer)
            closer.add_done_callback(self._closing.discard)
        log.info("poller_stopped", session=session_hash.hex()[:12])
        return True

    def prune(self, live: Collection[bytes]) -> int:
        """Stop every poller whose session is not in ``live``; return how many."""
        doomed = [h for h in self._entries if h not in live]
        for session_hash in doomed:
            self.stop(session_hash)
        return len(doomed)

    def status(self, session_hash: bytes) -> dict[str, Any] | None:
        """The Summary "polling" block of a session, or None if it is not polled."""
        entry = self._entries.get(session_hash)
        if entry is None:
            return None
        if entry.poller is None:
            return dict(entry.refused or {})
        return entry.poller.status()

    def trades(self, session_hash: bytes) -> TradeLedger | None:
        """The session's trade ledger (live object: read, do not modify)."""
        entry = self._entries.get(session_hash)
        return None if entry is None or entry.poller is None else entry.poller.ledger

    def completeness(self, session_hash: bytes) -> dict[str, Any] | None:
        """The session's completeness record, JSON-ready."""
        entry = self._entries.get(session_hash)
        return None if entry is None or entry.poller is None else entry.poller.completeness()

    async def aclose(self) -> None:
        """Stop every poller and wait until their exchanges are closed."""
        for session_hash in list(self._entries):
            self.stop(session_hash)
        pending = list(self._closing)
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
