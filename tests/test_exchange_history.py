"""Exchange history fetchers and the ccxt client adapter, against in-memory fake exchanges.

The fakes below implement exactly the ccxt calls each fetcher makes (listed in the
fetchers' docstrings) over an in-memory history, with the exchange's documented rules
(Binance's 24 h window and parameter combinations, Kraken's 50-per-page newest-first
offsets, Coinbase's cursors). They record every call so tests can count them.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import io
import json
import pickle
import random
import ssl
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import ccxt.async_support as ccxt_async
import pytest
import trustme
from ccxt.base import errors as ccxt_errors
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enclave.exchanges import client as client_module
from enclave.exchanges import history as history_module
from enclave.exchanges.client import (
    FAILURE_MESSAGES,
    ClientSettings,
    ErrorKind,
    ExchangeFailure,
    build_exchange,
    classify_exception,
    parse_retry_after,
)
from enclave.exchanges.history import (
    ACCOUNT_SCOPE,
    BinanceHistory,
    CoinbaseHistory,
    Completeness,
    Gap,
    GapReason,
    GenericHistory,
    HistoryConfig,
    HistoryFetcher,
    KrakenHistory,
    Trade,
    TradeLedger,
    history_fetcher_for,
)
from shared.envelope import Credentials
from shared.logsetup import configure_logging

DAY = 86_400_000
HOUR = 3_600_000
NOW = 1_700_000_000_000  # a fixed "now" (ms): the fakes and fetchers share it
CANARY_KEY = "canaryKEY7f3a9c1e5d"
CANARY_SECRET = "canarySECRETb81d04e2aa"


# ============================================================================ fakes


class FakeCcxt:
    """What every fake shares: markets, a call log, a fault hook, ``close``."""

    def __init__(self, symbols: Iterable[str]) -> None:
        self.markets: dict[str, dict[str, Any]] = {}
        for symbol in symbols:
            base, quote = symbol.split("/")
            self.markets[symbol] = {
                "symbol": symbol,
                "id": base + quote,
                "base": base,
                "quote": quote,
                "spot": True,
            }
        self.calls: list[tuple[Any, ...]] = []
        self.violations: list[str] = []
        self.fault: Callable[[str, int], BaseException | None] | None = None
        self.last_response_headers: dict[str, str] = {}
        self.closed = False

    def _record(self, *call: Any) -> None:
        self.calls.append(call)
        if self.fault is not None:
            error = self.fault(call[0], len(self.calls))
            if error is not None:
                raise error

    def count(self, method: str) -> int:
        """How many times ``method`` was called."""
        return sum(1 for call in self.calls if call[0] == method)

    async def load_markets(self, reload: bool = False) -> dict[str, Any]:
        self._record("load_markets", reload)
        return self.markets

    async def close(self) -> None:
        self.closed = True


def binance_raw(symbol: str, trade_id: int, time_ms: int, rng: random.Random) -> dict[str, Any]:
    """A Binance myTrades record (strings for decimals, as Binance sends them)."""
    price = f"{rng.uniform(1, 50_000):.8f}"
    qty = f"{rng.uniform(0.001, 5):.8f}"
    return {
        "symbol": symbol.replace("/", ""),
        "id": trade_id,
        "orderId": trade_id * 10 + rng.randint(0, 9),
        "orderListId": -1,
        "price": price,
        "qty": qty,
        "quoteQty": f"{float(price) * float(qty):.8f}",
        "commission": f"{rng.uniform(0, 0.01):.8f}",
        "commissionAsset": rng.choice(["BNB", symbol.split("/")[0], symbol.split("/")[1]]),
        "time": time_ms,
        "isBuyer": rng.random() < 0.5,
        "isMaker": rng.random() < 0.5,
        "isBestMatch": True,
    }


def spread_trades(
    rng: random.Random, symbol: str, count: int, start: int, end: int, first_id: int = 1
) -> list[dict[str, Any]]:
    """``count`` Binance records in [start, end), ids ascending in time (with gaps)."""
    times = sorted(rng.randrange(start, end) for _ in range(count))
    records, trade_id = [], first_id
    for time_ms in times:
        trade_id += rng.randint(1, 50)  # ids are market-wide: others trade in between
        records.append(binance_raw(symbol, trade_id, time_ms, rng))
    return records


class FakeBinance(FakeCcxt):
    """Binance spot myTrades semantics (Spot API docs, Account Trade List) in memory.

    ``cap`` silently shortens every page (a misbehaving exchange or proxy);
    ``newest_first`` answers an over-full window with its newest trades.
    """

    def __init__(
        self,
        trades: dict[str, list[dict[str, Any]]],
        *,
        balances: dict[str, float],
        extra_symbols: Iterable[str] = (),
        cap: int | None = None,
        newest_first: bool = False,
        balances_follow_trades: bool = False,
        now: int = NOW,
    ) -> None:
        super().__init__([*trades, *extra_symbols])
        self.balances_follow_trades = balances_follow_trades
        self.trades = {s: sorted(rows, key=lambda r: r["id"]) for s, rows in trades.items()}
        self.balances = balances
        self.cap = cap
        self.newest_first = newest_first
        self.now = now
        self.resyncs = 0

    def truth(self) -> set[tuple[str, str]]:
        """The (symbol, id) keys of every trade visible now."""
        return {
            (s, str(r["id"]))
            for s, rows in self.trades.items()
            for r in rows
            if r["time"] <= self.now
        }

    async def fetch_balance(self) -> dict[str, Any]:
        self._record("fetch_balance")
        totals = dict(self.balances)
        if self.balances_follow_trades:
            # As on a real account: every fill moves its base and quote balances.
            for symbol, rows in self.trades.items():
                base, quote = symbol.split("/")
                for row in (r for r in rows if r["time"] <= self.now):
                    sign = 1 if row["isBuyer"] else -1
                    totals[base] = totals.get(base, 0.0) + sign * float(row["qty"])
                    totals[quote] = totals.get(quote, 0.0) - sign * float(row["quoteQty"])
        return {"total": totals}

    async def fetch_my_trades(
        self, symbol: str, since: int | None, limit: int | None, params: dict[str, Any]
    ) -> list[dict[str, Any]]:
        self._record("fetch_my_trades", symbol, since, limit, dict(params))
        if limit is None or not 1 <= limit <= 1000:
            self.violations.append("limit outside 1..1000 (-1130)")
            raise ccxt_errors.BadRequest("binance -1130")
        rows = [r for r in self.trades.get(symbol, []) if r["time"] <= self.now]
        size = min(limit, self.cap or limit)
        if "fromId" in params:
            if since is not None or "endTime" in params:
                self.violations.append("fromId with startTime/endTime (-1128)")
                raise ccxt_errors.BadRequest("binance -1128")
            page = [r for r in rows if r["id"] >= params["fromId"]][:size]
        else:
            end = params.get("endTime")
            if since is None or end is None or end - since > DAY:
                self.violations.append("window longer than 24 h (-1127)")
                raise ccxt_errors.BadRequest("binance -1127")
            inside = [r for r in rows if since <= r["time"] <= end]
            page = inside[-size:] if self.newest_first else inside[:size]
        return [self.parse(r, symbol) for r in page]

    @staticmethod
    def parse(raw: dict[str, Any], symbol: str) -> dict[str, Any]:
        """What ccxt's binance.parse_trade returns (floats for numbers, raw in info)."""
        return {
            "info": raw,
            "id": str(raw["id"]),
            "order": str(raw["orderId"]),
            "symbol": symbol,
            "timestamp": raw["time"],
            "side": "buy" if raw["isBuyer"] else "sell",
            "price": float(raw["price"]),
            "amount": float(raw["qty"]),
            "cost": float(raw["quoteQty"]),
            "fee": {"cost": float(raw["commission"]), "currency": raw["commissionAsset"]},
        }

    async def load_time_difference(self) -> int:
        self._record("load_time_difference")
        self.resyncs += 1
        return 0


class FakeKraken(FakeCcxt):
    """Kraken TradesHistory: 50 per page, newest first, ``ofs``, ``count``, start/end."""

    PAIRS: ClassVar[dict[str, str]] = {
        "XXBTZUSD": "BTC/USD",
        "XETHZUSD": "ETH/USD",
        "XETHXXBT": "ETH/BTC",
    }

    def __init__(
        self,
        trades: list[dict[str, Any]],
        *,
        page: int = 50,
        count_bonus: int = 0,
        with_count: bool = True,
        now: int = NOW,
    ) -> None:
        super().__init__(self.PAIRS.values())
        self.trades = trades
        self.page = page
        self.count_bonus = count_bonus
        self.with_count = with_count
        self.now = now

    def truth(self) -> set[tuple[str, str]]:
        return {
            (self.PAIRS[t["pair"]], t["txid"]) for t in self.trades if t["time"] * 1000 <= self.now
        }

    async def privatePostTradesHistory(self, params: dict[str, Any]) -> dict[str, Any]:
        self._record("privatePostTradesHistory", dict(params))
        rows = [t for t in self.trades if t["time"] * 1000 <= self.now]
        if "start" in params:
            rows = [t for t in rows if t["time"] > params["start"]]  # exclusive
        if "end" in params:
            rows = [t for t in rows if t["time"] <= params["end"]]  # inclusive
        rows.sort(key=lambda t: (t["time"], t["txid"]), reverse=True)
        offset = int(params.get("ofs", 0))
        page = rows[offset : offset + self.page]
        result: dict[str, Any] = {
            "trades": {t["txid"]: {k: v for k, v in t.items() if k != "txid"} for t in page}
        }
        if self.with_count:
            result["count"] = len(rows) + self.count_bonus
        return {"error": [], "result": result}

    def parse_trade(self, raw: dict[str, Any]) -> dict[str, Any]:
        symbol = self.PAIRS[raw["pair"]]
        return {
            "info": raw,
            "id": raw["id"],
            "order": raw["ordertxid"],
            "symbol": symbol,
            "timestamp": int(raw["time"] * 1000),
            "side": raw["type"],
            "price": float(raw["price"]),
            "amount": float(raw["vol"]),
            "cost": float(raw["cost"]),
            "fee": {"cost": float(raw["fee"]), "currency": symbol.split("/")[1]},
        }


def kraken_trades(rng: random.Random, count: int, start_s: int, end_s: int) -> list[dict[str, Any]]:
    """Kraken TradesHistory records with txids and float-second times."""
    trades = []
    for index in range(count):
        price, vol = rng.uniform(1, 50_000), rng.uniform(0.01, 3)
        trades.append(
            {
                "txid": f"T{index:05d}-{rng.randrange(16**5):05X}-{rng.randrange(16**6):06X}",
                "ordertxid": f"O{rng.randrange(10**6):06d}",
                "postxid": "TKH2SE-M7IF5-CFI7LT",
                "pair": rng.choice(list(FakeKraken.PAIRS)),
                "time": round(rng.uniform(start_s, end_s), 4),
                "type": rng.choice(["buy", "sell"]),
                "ordertype": "limit",
                "price": f"{price:.5f}",
                "cost": f"{price * vol:.5f}",
                "fee": f"{price * vol * 0.0026:.5f}",
                "vol": f"{vol:.8f}",
                "margin": "0.00000",
                "misc": "",
                "trade_id": index,
                "maker": rng.random() < 0.5,
            }
        )
    return trades


def iso(ms: int) -> str:
    """Coinbase timestamp text, with microseconds as Coinbase sends them."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class FakeCoinbase(FakeCcxt):
    """Coinbase List Fills: newest first, opaque cursor, "" on the last page."""

    PRODUCTS: ClassVar[dict[str, str]] = {
        "BTC-USD": "BTC/USD",
        "ETH-USD": "ETH/USD",
        "SOL-USDC": "SOL/USDC",
    }

    def __init__(
        self, fills: list[dict[str, Any]], *, cap: int | None = None, stuck_cursor: bool = False
    ) -> None:
        super().__init__(self.PRODUCTS.values())
        self.fills = fills
        self.cap = cap
        self.stuck_cursor = stuck_cursor
        self.now = NOW

    def truth(self) -> set[tuple[str, str]]:
        return {(self.PRODUCTS[f["product_id"]], f["entry_id"]) for f in self.fills}

    async def v3PrivateGetBrokerageOrdersHistoricalFills(
        self, params: dict[str, Any]
    ) -> dict[str, Any]:
        self._record("fills", dict(params))
        rows = sorted(self.fills, key=lambda f: (f["_ms"], f["entry_id"]), reverse=True)
        if "start_sequence_timestamp" in params:
            start = iso_to_ms(params["start_sequence_timestamp"])
            rows = [f for f in rows if f["_ms"] >= start]
        if "end_sequence_timestamp" in params:
            end = iso_to_ms(params["end_sequence_timestamp"])
            rows = [f for f in rows if f["_ms"] <= end]
        offset = int(params.get("cursor", "0"))
        size = min(params["limit"], self.cap or params["limit"])
        page = rows[offset : offset + size]
        following = offset + size
        cursor = "1" if self.stuck_cursor else (str(following) if following < len(rows) else "")
        return {
            "fills": [{k: v for k, v in f.items() if k != "_ms"} for f in page],
            "cursor": cursor,
        }

    def parse_trade(self, raw: dict[str, Any]) -> dict[str, Any]:
        symbol = self.PRODUCTS[raw["product_id"]]
        return {
            "info": raw,
            "id": raw["trade_id"],
            "order": raw["order_id"],
            "symbol": symbol,
            "timestamp": iso_to_ms(raw["trade_time"]),
            "side": raw["side"].lower(),
            "price": float(raw["price"]),
            "amount": float(raw["size"]),
            "cost": None,
            "fee": {"cost": float(raw["commission"]), "currency": symbol.split("/")[1]},
        }


def iso_to_ms(text: str) -> int:
    """Parse the ISO 8601 forms used here (to the millisecond)."""
    head = text.rstrip("Z")
    if "." in head:
        seconds, fraction = head.split(".")
        head = f"{seconds}.{fraction[:6]}"
    return int(datetime.fromisoformat(head + "+00:00").timestamp() * 1000)


def coinbase_fills(rng: random.Random, count: int, start: int, end: int) -> list[dict[str, Any]]:
    """Coinbase fills; every 10th is a market buy reported with ``size_in_quote``."""
    fills = []
    for index in range(count):
        ms = rng.randrange(start, end)
        price, size = rng.uniform(1, 50_000), rng.uniform(0.001, 2)
        in_quote = index % 10 == 0
        fills.append(
            {
                "_ms": ms,
                "entry_id": f"{rng.getrandbits(128):032x}",
                "trade_id": f"trade-{index // 2}",  # pairs share a trade id (self-match)
                "order_id": f"order-{rng.randrange(10**6)}",
                "trade_time": iso(ms),
                "trade_type": "FILL",
                "price": f"{price:.2f}",
                "size": f"{price * size:.2f}" if in_quote else f"{size:.8f}",
                "commission": f"{price * size * 0.006:.8f}",
                "product_id": rng.choice(list(FakeCoinbase.PRODUCTS)),
                "sequence_timestamp": iso(ms),
                "liquidity_indicator": "TAKER",
                "size_in_quote": in_quote,
                "user_id": "user-1",
                "side": "BUY" if index % 2 else "SELL",
            }
        )
    return fills


class FakeGeneric(FakeCcxt):
    """A ccxt exchange with only unified ``fetch_my_trades(symbol, since, limit)``."""

    def __init__(
        self,
        trades: list[dict[str, Any]],
        *,
        needs_symbol: bool = False,
        cap: int | None = None,
        ignores_since: bool = False,
        balances: dict[str, float] | None = None,
    ) -> None:
        super().__init__(sorted({t["symbol"] for t in trades} | {"XRP/USDT"}))
        self.has = {"fetchMyTrades": True}
        self.trades = sorted(trades, key=lambda t: (t["timestamp"], t["id"]))
        self.needs_symbol = needs_symbol
        self.cap = cap
        self.ignores_since = ignores_since
        self.balances = balances or {}

    def truth(self) -> set[tuple[str, str]]:
        return {(t["symbol"], t["id"]) for t in self.trades}

    async def fetch_balance(self) -> dict[str, Any]:
        self._record("fetch_balance")
        return {"total": dict(self.balances)}

    async def fetch_my_trades(
        self, symbol: str | None = None, since: int | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        self._record("fetch_my_trades", symbol, since, limit)
        if self.needs_symbol and symbol is None:
            raise ccxt_errors.ArgumentsRequired("fakeex fetchMyTrades() requires a symbol")
        rows = [t for t in self.trades if symbol is None or t["symbol"] == symbol]
        if since is not None and not self.ignores_since:
            rows = [t for t in rows if t["timestamp"] >= since]
        size = min(limit or 100, self.cap or limit or 100)
        return rows[-size:] if self.ignores_since else rows[:size]


def generic_trades(
    rng: random.Random, count: int, start: int, end: int, *, same_ms_bursts: int = 0
) -> list[dict[str, Any]]:
    """Unified ccxt trades; optional bursts of many trades in one millisecond."""
    symbols = ["BTC/USDT", "ETH/USDT"]
    times = [rng.randrange(start, end) for _ in range(count)]
    for _ in range(same_ms_bursts):
        burst_ms = rng.randrange(start, end)
        times += [burst_ms] * 25
    trades = []
    for index, ms in enumerate(times):
        trades.append(
            {
                "info": {"id": f"g{index}", "px": "1.5"},
                "id": f"g{index}",
                "order": None,
                "symbol": rng.choice(symbols),
                "timestamp": ms,
                "side": "buy",
                "price": 1.5,
                "amount": 0.1 * (index + 1),
                "cost": 0.15 * (index + 1),
                "fee": None,
            }
        )
    return trades


async def sync(fetcher: Any, ledger: TradeLedger, now: int = NOW) -> int:
    added: int = await fetcher.sync(ledger, now_ms=now)
    return added


# ============================================================================ Binance


def sixty_day_binance(rng: random.Random) -> FakeBinance:
    """60 days of BTC/USDT with two over-full days, sparse ETH/USDT, closed-out SOL/USDT."""
    start = NOW - 60 * DAY
    btc = spread_trades(rng, "BTC/USDT", 400, start, NOW)
    btc += spread_trades(rng, "BTC/USDT", 2500, start + 10 * DAY, start + 11 * DAY, 10**7)
    btc += spread_trades(rng, "BTC/USDT", 1200, start + 30 * DAY, start + 31 * DAY, 10**8)
    # Ids must ascend in time across the whole symbol: renumber in time order.
    btc.sort(key=lambda r: r["time"])
    for number, record in enumerate(btc, start=1):
        record["id"] = number * 3
    return FakeBinance(
        {
            "BTC/USDT": btc,
            "ETH/USDT": spread_trades(rng, "ETH/USDT", 30, start + 5 * DAY, NOW),
            "SOL/USDT": spread_trades(rng, "SOL/USDT", 40, start, start + 20 * DAY),
        },
        balances={"BTC": 0.5, "USDT": 1000.0},
        extra_symbols=["XRP/BTC"],
    )


async def test_binance_windows_cover_sixty_days_with_fromid_continuation() -> None:
    """60 days are read in 24 h windows; days with > 1000 trades continue with fromId."""
    fake = sixty_day_binance(random.Random(1))
    fetcher = BinanceHistory(fake, exchange_id="binance", config=HistoryConfig())
    ledger = TradeLedger()
    added = await sync(fetcher, ledger)
    assert fake.violations == []
    assert ledger.keys() == fake.truth()
    assert added == len(ledger) == len(fake.truth())  # nothing doubled
    walks = [c for c in fake.calls if c[0] == "fetch_my_trades" and "fromId" in c[4]]
    assert any(c[4]["fromId"] > 0 for c in walks)  # continuation beyond the probe
    first_btc = min(r["time"] for r in fake.trades["BTC/USDT"])
    record = fetcher.completeness
    assert record.coverage["BTC/USDT"] == [[0, NOW + 1]]
    assert record.windows["BTC/USDT"] == -(-(NOW + 1 - first_btc) // DAY)
    assert record.complete
    assert record.calls == len(fake.calls)


async def test_binance_scans_symbols_known_only_from_history() -> None:
    """A symbol whose assets are no longer held is found through traded symbols."""
    rng = random.Random(2)
    start = NOW - 10 * DAY
    fake = FakeBinance(
        {
            "ETH/BTC": spread_trades(rng, "ETH/BTC", 20, start, NOW),
            "LINK/BTC": spread_trades(rng, "LINK/BTC", 15, start, NOW),  # LINK, BTC: zero
            "DOT/LINK": spread_trades(rng, "DOT/LINK", 5, start, NOW),  # two hops away
        },
        balances={"ETH": 2.0},
        extra_symbols=["XRP/USDT"],
    )
    fetcher = BinanceHistory(fake, exchange_id="binance", config=HistoryConfig())
    ledger = TradeLedger()
    await sync(fetcher, ledger)
    assert ledger.keys() == fake.truth()
    assert {"ETH/BTC", "LINK/BTC", "DOT/LINK"} <= fetcher.completeness.symbols_scanned
    assert "XRP/USDT" not in fetcher.completeness.symbols_scanned  # nothing links to it


async def test_binance_newest_first_windows_are_still_complete() -> None:
    """An over-full window answered with its newest trades loses nothing."""
    fake = sixty_day_binance(random.Random(3))
    fake.newest_first = True
    ledger = TradeLedger()
    await sync(BinanceHistory(fake, exchange_id="binance", config=HistoryConfig()), ledger)
    assert ledger.keys() == fake.truth()


async def test_binance_silent_page_cap_does_not_truncate() -> None:
    """Pages silently capped at 300 (< limit 1000) still yield the whole history."""
    fake = sixty_day_binance(random.Random(4))
    fake.cap = 300
    fetcher = BinanceHistory(fake, exchange_id="binance", config=HistoryConfig())
    ledger = TradeLedger()
    await sync(fetcher, ledger)
    assert ledger.keys() == fake.truth()
    assert fetcher.completeness.complete


async def test_binance_incremental_poll_reads_only_the_recent_window() -> None:
    """After the first sync, a poll costs one call per traded symbol plus balances."""
    rng = random.Random(5)
    fake = FakeBinance(
        {"BTC/USDT": spread_trades(rng, "BTC/USDT", 300, NOW - 30 * DAY, NOW - HOUR)},
        balances={"BTC": 1.0},
        extra_symbols=["ETH/USDT"],
    )
    fetcher = BinanceHistory(fake, exchange_id="binance", config=HistoryConfig())
    ledger = TradeLedger()
    await sync(fetcher, ledger)
    before = len(fake.calls)
    last_id = fake.trades["BTC/USDT"][-1]["id"]
    fake.trades["BTC/USDT"].append(binance_raw("BTC/USDT", last_id + 5, NOW + 30_000, rng))
    fake.now = NOW + 60_000
    assert await sync(fetcher, ledger, now=NOW + 60_000) == 1
    new_calls = fake.calls[before:]
    # balances + one window of BTC/USDT; ETH/USDT was empty and no balance moved.
    assert [c[0] for c in new_calls] == ["fetch_balance", "fetch_my_trades"]
    assert new_calls[1][2] == NOW + 1 - HistoryConfig().overlap_ms


async def test_binance_reprobes_an_empty_symbol_when_its_balance_moves() -> None:
    """A never-traded candidate is probed again only after a balance of its assets changed."""
    rng = random.Random(6)
    fake = FakeBinance({"ETH/USDT": []}, balances={"USDT": 10.0})
    fetcher = BinanceHistory(fake, exchange_id="binance", config=HistoryConfig())
    ledger = TradeLedger()
    await sync(fetcher, ledger)
    await sync(fetcher, ledger)
    assert fake.count("fetch_my_trades") == 1  # the second poll skipped the probe
    fake.trades["ETH/USDT"] = [binance_raw("ETH/USDT", 7, NOW - 1000, rng)]
    fake.balances = {"USDT": 4.0, "ETH": 0.002}
    await sync(fetcher, ledger)
    assert ledger.keys() == fake.truth()


async def test_binance_refused_symbol_is_a_gap_not_a_stall() -> None:
    """A symbol the exchange refuses becomes a recorded gap; other symbols are still read."""
    rng = random.Random(7)
    fake = FakeBinance(
        {
            "BTC/USDT": spread_trades(rng, "BTC/USDT", 50, NOW - 3 * DAY, NOW),
            "DEAD/USDT": [],
        },
        balances={"USDT": 1.0},
    )

    def refuse(method: str, _n: int) -> BaseException | None:
        last = fake.calls[-1]
        if method == "fetch_my_trades" and last[1] == "DEAD/USDT":
            return ccxt_errors.BadSymbol("binance -1121 Invalid symbol DEADUSDT")
        return None

    fake.fault = refuse
    fetcher = BinanceHistory(fake, exchange_id="binance", config=HistoryConfig())
    ledger = TradeLedger()
    await sync(fetcher, ledger)
    assert ledger.keys() == fake.truth()
    assert fetcher.completeness.gaps == [Gap("DEAD/USDT", None, None, GapReason.SYMBOL_REFUSED)]
    assert not fetcher.completeness.complete


async def test_binance_resumes_after_a_failure_without_restarting() -> None:
    """A 429 mid-history fails the sync; the next sync continues from the last full window."""
    fake = sixty_day_binance(random.Random(8))
    fake.fault = lambda method, n: (
        ccxt_errors.DDoSProtection("binance 429 Too Many Requests {}") if n == 20 else None
    )
    fake.last_response_headers = {"Retry-After": "7"}
    fetcher = BinanceHistory(fake, exchange_id="binance", config=HistoryConfig())
    ledger = TradeLedger()
    with pytest.raises(ExchangeFailure) as failure:
        await sync(fetcher, ledger)
    assert failure.value.kind is ErrorKind.RATE_LIMITED
    assert failure.value.retry_after == 7.0
    assert fetcher.completeness.last_error == FAILURE_MESSAGES[ErrorKind.RATE_LIMITED]
    calls_before = len(fake.calls)
    await sync(fetcher, ledger)
    assert ledger.keys() == fake.truth()
    assert fetcher.completeness.last_error is None
    full_run = BinanceHistory(sixty_day_binance(random.Random(8)), exchange_id="binance",
                              config=HistoryConfig())  # fmt: skip
    fresh = TradeLedger()
    await sync(full_run, fresh)
    # Resuming redid at most one window's worth of calls, not the first 20.
    assert len(fake.calls) - calls_before <= full_run.completeness.calls - 20 + 4


async def test_binance_respects_configured_start() -> None:
    """Trades before HistoryConfig.start_ms are neither kept nor scanned by window."""
    rng = random.Random(9)
    fake = FakeBinance(
        {"BTC/USDT": spread_trades(rng, "BTC/USDT", 200, NOW - 20 * DAY, NOW)},
        balances={"BTC": 1.0},
    )
    start = NOW - 5 * DAY
    fetcher = BinanceHistory(fake, exchange_id="binance", config=HistoryConfig(start_ms=start))
    ledger = TradeLedger()
    await sync(fetcher, ledger)
    expected = {("BTC/USDT", str(r["id"])) for r in fake.trades["BTC/USDT"] if r["time"] >= start}
    assert ledger.keys() == expected
    assert fetcher.completeness.windows["BTC/USDT"] == 6


# ============================================================================ Kraken


async def test_kraken_offsets_read_the_whole_history() -> None:
    """TradesHistory is walked by ofs in pages of 50 until count, within a fixed end."""
    rng = random.Random(10)
    fake = FakeKraken(kraken_trades(rng, 1234, (NOW - 90 * DAY) // 1000, NOW // 1000))
    fetcher = KrakenHistory(fake, exchange_id="kraken", config=HistoryConfig())
    ledger = TradeLedger()
    await sync(fetcher, ledger)
    assert ledger.keys() == fake.truth()
    pages = [c[1] for c in fake.calls if c[0] == "privatePostTradesHistory"]
    assert [p["ofs"] for p in pages] == list(range(0, 1234, 50))
    assert {p["end"] for p in pages} == {NOW // 1000}
    assert fetcher.completeness.complete
    assert fetcher.completeness.coverage[ACCOUNT_SCOPE] == [[0, (NOW // 1000 + 1) * 1000]]


async def test_kraken_incremental_pass_starts_before_the_newest_trade() -> None:
    """A later pass asks only for trades after (newest - overlap) and finds the new ones."""
    rng = random.Random(11)
    fake = FakeKraken(kraken_trades(rng, 120, (NOW - DAY) // 1000, (NOW - HOUR) // 1000))
    fetcher = KrakenHistory(fake, exchange_id="kraken", config=HistoryConfig())
    ledger = TradeLedger()
    await sync(fetcher, ledger)
    fake.trades += kraken_trades(random.Random(99), 3, NOW // 1000 + 1, NOW // 1000 + 50)
    for trade in fake.trades[-3:]:
        trade["txid"] = "N" + trade["txid"][1:]
    fake.now = NOW + 60_000
    before = len(fake.calls)
    assert await sync(fetcher, ledger, now=NOW + 60_000) == 3
    (call,) = [c for c in fake.calls[before:] if c[0] == "privatePostTradesHistory"]
    newest = max(t["time"] for t in fake.trades[:120])
    # Kraken's start is exclusive: one second earlier than newest - overlap.
    assert call[1]["start"] == (int(newest * 1000) - HistoryConfig().overlap_ms) // 1000 - 1
    assert ledger.keys() == fake.truth()


async def test_kraken_count_mismatch_is_a_recorded_gap() -> None:
    """Fewer trades than Kraken's count shows as a count_mismatch gap, never as complete."""
    rng = random.Random(12)
    fake = FakeKraken(kraken_trades(rng, 75, (NOW - DAY) // 1000, NOW // 1000), count_bonus=5)
    fetcher = KrakenHistory(fake, exchange_id="kraken", config=HistoryConfig())
    await sync(fetcher, TradeLedger())
    (gap,) = fetcher.completeness.gaps
    assert gap.reason is GapReason.COUNT_MISMATCH and gap.symbol == ACCOUNT_SCOPE
    assert not fetcher.completeness.complete


async def test_kraken_short_pages_do_not_truncate() -> None:
    """Pages shorter than 50 advance ofs by what came back, so nothing is skipped."""
    rng = random.Random(13)
    fake = FakeKraken(kraken_trades(rng, 333, (NOW - DAY) // 1000, NOW // 1000), page=17)
    ledger = TradeLedger()
    fetcher = KrakenHistory(fake, exchange_id="kraken", config=HistoryConfig())
    await sync(fetcher, ledger)
    assert ledger.keys() == fake.truth() and fetcher.completeness.complete


async def test_kraken_without_count_walks_to_an_empty_page() -> None:
    """A reply without count (Kraken's without_count) is paged until a page comes back empty."""
    fake = FakeKraken(
        kraken_trades(random.Random(25), 120, (NOW - DAY) // 1000, NOW // 1000), with_count=False
    )
    ledger = TradeLedger()
    await sync(KrakenHistory(fake, exchange_id="kraken", config=HistoryConfig()), ledger)
    assert ledger.keys() == fake.truth()
    assert fake.count("privatePostTradesHistory") == 4  # 50 + 50 + 20 + an empty page


async def test_kraken_resumes_a_pass_at_its_offset() -> None:
    """A failure mid-pass resumes at the same ofs and end on the next sync."""
    rng = random.Random(14)
    fake = FakeKraken(kraken_trades(rng, 400, (NOW - DAY) // 1000, NOW // 1000))
    fake.fault = lambda method, n: (
        ccxt_errors.RequestTimeout("kraken POST https://api.kraken.com/0/private/TradesHistory")
        if n == 5
        else None
    )
    fetcher = KrakenHistory(fake, exchange_id="kraken", config=HistoryConfig())
    ledger = TradeLedger()
    with pytest.raises(ExchangeFailure) as failure:
        await sync(fetcher, ledger)
    assert failure.value.kind is ErrorKind.TIMEOUT
    await sync(fetcher, ledger, now=NOW + 5000)
    offsets = [c[1]["ofs"] for c in fake.calls if c[0] == "privatePostTradesHistory"]
    assert offsets == [0, 50, 100, 150, 150, 200, 250, 300, 350]
    assert ledger.keys() == fake.truth()


# ============================================================================ Coinbase


async def test_coinbase_cursor_pages_read_every_fill() -> None:
    """Fills are followed by cursor to the empty one; self-match pairs are both kept."""
    rng = random.Random(15)
    fake = FakeCoinbase(coinbase_fills(rng, 777, NOW - 50 * DAY, NOW))
    fetcher = CoinbaseHistory(fake, exchange_id="coinbase", config=HistoryConfig())
    ledger = TradeLedger()
    await sync(fetcher, ledger)
    assert ledger.keys() == fake.truth()
    assert len(ledger) == 777  # trade ids are shared in pairs; entry ids are not
    assert fake.count("fills") == -(-777 // 250)
    assert fetcher.completeness.complete


async def test_coinbase_size_in_quote_is_converted_exactly() -> None:
    """A fill with size_in_quote keeps the quote size as cost and derives the base amount."""
    fill = coinbase_fills(random.Random(16), 1, NOW - DAY, NOW)[0]
    assert fill["size_in_quote"] is True
    fill.update(price="20000.00", size="100.00")
    fake = FakeCoinbase([fill])
    ledger = TradeLedger()
    await sync(CoinbaseHistory(fake, exchange_id="coinbase", config=HistoryConfig()), ledger)
    (trade,) = list(ledger)
    assert (trade.cost, trade.amount, trade.price) == ("100.00", "0.005", "20000.00")
    assert trade.id == fill["entry_id"]
    assert dict(trade.raw)["size_in_quote"] == "true"


async def test_coinbase_repeating_cursor_is_a_gap_not_a_loop() -> None:
    """A cursor that comes back again ends the pass with a cursor_stalled gap."""
    fake = FakeCoinbase(coinbase_fills(random.Random(17), 600, NOW - DAY, NOW), stuck_cursor=True)
    fetcher = CoinbaseHistory(fake, exchange_id="coinbase", config=HistoryConfig())
    await sync(fetcher, TradeLedger())
    assert fake.count("fills") == 2
    assert [g.reason for g in fetcher.completeness.gaps] == [GapReason.CURSOR_STALLED]


async def test_coinbase_capped_pages_follow_the_cursor() -> None:
    """Pages shorter than the limit do not end the walk: only an empty cursor does."""
    fake = FakeCoinbase(coinbase_fills(random.Random(18), 500, NOW - DAY, NOW), cap=40)
    ledger = TradeLedger()
    await sync(CoinbaseHistory(fake, exchange_id="coinbase", config=HistoryConfig()), ledger)
    assert ledger.keys() == fake.truth()


# ============================================================================ generic


async def test_generic_since_pagination_dedupes_overlapping_pages() -> None:
    """since moves to each page's newest time (inclusive); repeats are dropped, not doubled."""
    rng = random.Random(19)
    fake = FakeGeneric(generic_trades(rng, 700, NOW - 10 * DAY, NOW, same_ms_bursts=3))
    fetcher = GenericHistory(fake, exchange_id="fakeex", config=HistoryConfig())
    ledger = TradeLedger()
    added = await sync(fetcher, ledger)
    assert ledger.keys() == fake.truth()
    assert added == len(fake.trades)
    assert fetcher.completeness.complete


async def test_generic_capped_pages_still_reach_the_end() -> None:
    """A silent cap below the limit does not stop the since walk early."""
    fake = FakeGeneric(generic_trades(random.Random(20), 500, NOW - DAY, NOW), cap=30)
    ledger = TradeLedger()
    await sync(GenericHistory(fake, exchange_id="fakeex", config=HistoryConfig()), ledger)
    assert ledger.keys() == fake.truth()


async def test_generic_full_page_in_one_millisecond_is_a_gap() -> None:
    """More same-millisecond trades than a page holds are reported as a gap."""
    trades = generic_trades(random.Random(21), 0, NOW - DAY, NOW, same_ms_bursts=1)
    fake = FakeGeneric(trades, cap=10)
    fetcher = GenericHistory(fake, exchange_id="fakeex", config=HistoryConfig(generic_limit=10))
    await sync(fetcher, TradeLedger())
    assert [g.reason for g in fetcher.completeness.gaps] == [GapReason.TIMESTAMP_OVERFLOW]


async def test_generic_falls_back_to_symbols_when_required() -> None:
    """An exchange that needs a symbol is scanned per symbol, found through balances."""
    fake = FakeGeneric(
        generic_trades(random.Random(22), 200, NOW - DAY, NOW),
        needs_symbol=True,
        balances={"USDT": 5.0},
    )
    fetcher = GenericHistory(fake, exchange_id="fakeex", config=HistoryConfig())
    ledger = TradeLedger()
    await sync(fetcher, ledger)
    assert ledger.keys() == fake.truth()
    assert fetcher.completeness.symbols_scanned == {"BTC/USDT", "ETH/USDT", "XRP/USDT"}


async def test_generic_exchange_ignoring_since_is_a_gap() -> None:
    """Trades older than the asked since are flagged, not silently taken as everything."""
    fake = FakeGeneric(generic_trades(random.Random(23), 300, NOW - DAY, NOW), ignores_since=True)
    fetcher = GenericHistory(
        fake, exchange_id="fakeex", config=HistoryConfig(start_ms=NOW - HOUR // 2)
    )
    await sync(fetcher, TradeLedger())
    assert GapReason.SINCE_IGNORED in {g.reason for g in fetcher.completeness.gaps}


async def test_generic_without_fetch_my_trades_is_unsupported() -> None:
    """An exchange ccxt cannot list trades for fails with the fixed 'unsupported' error."""
    fake = FakeGeneric([])
    fake.has = {"fetchMyTrades": False}
    with pytest.raises(ExchangeFailure) as failure:
        await sync(
            GenericHistory(fake, exchange_id="fakeex", config=HistoryConfig()), TradeLedger()
        )
    assert failure.value.kind is ErrorKind.UNSUPPORTED and failure.value.permanent


# ============================================================================ properties


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    count=st.integers(0, 400),
    limit=st.integers(1, 60),
    window_hours=st.integers(1, 24),
    split=st.floats(0.0, 1.0),
    newest_first=st.booleans(),
)
def test_binance_union_equals_history(
    seed: int, count: int, limit: int, window_hours: int, split: float, newest_first: bool
) -> None:
    """For any page size, window length and poll split, Binance's fetched set is the history."""
    rng = random.Random(seed)
    start = NOW - 4 * DAY
    trades = {
        "BTC/USDT": spread_trades(rng, "BTC/USDT", count, start, NOW),
        "ETH/BTC": spread_trades(rng, "ETH/BTC", count // 3, start, NOW),
    }
    fake = FakeBinance(
        trades,
        balances={"USDT": 1.0, "ETH": 1.0},
        newest_first=newest_first,
        balances_follow_trades=True,
    )
    config = HistoryConfig(binance_limit=limit, window_ms=window_hours * HOUR, suspicious_page=1)
    fetcher = BinanceHistory(fake, exchange_id="binance", config=config)
    ledger = TradeLedger()
    middle = start + int(split * 4 * DAY)
    fake.now = middle
    _run(fetcher.sync(ledger, now_ms=middle))
    fake.now = NOW
    _run(fetcher.sync(ledger, now_ms=NOW))
    assert fake.violations == []
    assert ledger.keys() == fake.truth()
    assert len(ledger) == len(fake.truth())


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    count=st.integers(0, 300),
    page=st.integers(1, 60),
    split=st.floats(0.0, 1.0),
)
def test_kraken_union_equals_history(seed: int, count: int, page: int, split: float) -> None:
    """For any page size and poll split, Kraken's fetched set is the history."""
    rng = random.Random(seed)
    fake = FakeKraken(kraken_trades(rng, count, (NOW - 3 * DAY) // 1000, NOW // 1000), page=page)
    fetcher = KrakenHistory(fake, exchange_id="kraken", config=HistoryConfig())
    ledger = TradeLedger()
    fake.now = NOW - 3 * DAY + int(split * 3 * DAY)
    _run(fetcher.sync(ledger, now_ms=fake.now))
    fake.now = NOW
    _run(fetcher.sync(ledger, now_ms=NOW))
    assert ledger.keys() == fake.truth()
    assert fetcher.completeness.complete


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    count=st.integers(0, 300),
    limit=st.integers(1, 80),
    cap=st.none() | st.integers(1, 80),
)
def test_coinbase_and_generic_union_equals_history(
    seed: int, count: int, limit: int, cap: int | None
) -> None:
    """For any limit and silent cap, Coinbase cursors and generic since walks read everything."""
    rng = random.Random(seed)
    coinbase = FakeCoinbase(coinbase_fills(rng, count, NOW - 2 * DAY, NOW), cap=cap)
    ledger = TradeLedger()
    config = HistoryConfig(coinbase_limit=limit, generic_limit=limit)
    _run(CoinbaseHistory(coinbase, exchange_id="coinbase", config=config).sync(ledger, now_ms=NOW))
    assert ledger.keys() == coinbase.truth()
    generic = FakeGeneric(generic_trades(rng, count, NOW - 2 * DAY, NOW), cap=cap)
    ledger = TradeLedger()
    fetcher = GenericHistory(generic, exchange_id="fakeex", config=config)
    _run(fetcher.sync(ledger, now_ms=NOW))
    assert ledger.keys() == generic.truth()


# ============================================================================ ledger, record


def test_ledger_dedupes_and_counts_conflicting_duplicates() -> None:
    """A repeated (symbol, id) is dropped; a repeat with different fields is counted."""
    trade = Trade(symbol="BTC/USDT", id="1", order_id=None, side="buy", price="1",
                  amount="2", cost="2", fee_cost=None, fee_currency=None, timestamp=5)  # fmt: skip
    ledger = TradeLedger()
    assert ledger.add(trade) and not ledger.add(trade)
    changed = Trade(**{**trade.to_json(), "price": "9", "raw": ()})
    assert not ledger.add(changed)
    assert (len(ledger), ledger.conflicts) == (1, 1)
    assert list(ledger.since(0)) == [trade] and list(ledger.since(1)) == []


def test_ledger_index_is_per_symbol() -> None:
    """The same id in two symbols is two trades; membership takes (symbol, id) only."""
    ledger = TradeLedger()
    for symbol in ("BTC/USDT", "ETH/USDT"):
        assert ledger.add(
            Trade(symbol=symbol, id="1", order_id="7", side="sell", price="2", amount="1",
                  cost="2", fee_cost=None, fee_currency=None, timestamp=9)
        )  # fmt: skip
    assert len(ledger) == 2 and ledger.conflicts == 0
    assert ledger.keys() == {("BTC/USDT", "1"), ("ETH/USDT", "1")}
    assert ("ETH/USDT", "1") in ledger
    assert ("ETH/USDT", "2") not in ledger and ("SOL/USDT", "1") not in ledger
    for other in ("ETH/USDT", ("ETH/USDT",), ("ETH/USDT", "1", "x"), None):
        assert other not in ledger


@dataclass(frozen=True, slots=True, kw_only=True)
class ReferenceTrade:
    """``Trade`` as the frozen dataclass it was: the value semantics it must keep."""

    symbol: str
    id: str
    order_id: str | None
    side: str
    price: str
    amount: str
    cost: str | None
    fee_cost: str | None
    fee_currency: str | None
    timestamp: int
    raw: tuple[tuple[str, str], ...] = ()


# Texts made to collide with the packing of raw records: its separator (\x1f), its
# one-character field references (\x01..\x0a, \n among them), empty strings.
PACKING_TEXT = st.text(alphabet=st.sampled_from(list("a1.-\x1f\x01\x02\n\x0b\xe9")), max_size=4)


@st.composite
def trade_fields(draw: st.DrawFn) -> dict[str, Any]:
    """Constructor arguments; raw values often repeat a field, as exchanges' do."""
    optional = st.none() | PACKING_TEXT
    fields: dict[str, Any] = {
        "symbol": draw(PACKING_TEXT),
        "id": draw(PACKING_TEXT),
        "order_id": draw(optional),
        "side": draw(st.sampled_from(["buy", "sell", ""])),
        "price": draw(PACKING_TEXT),
        "amount": draw(PACKING_TEXT),
        "cost": draw(optional),
        "fee_cost": draw(optional),
        "fee_currency": draw(optional),
        "timestamp": draw(st.integers(-(2**63), 2**63)),
    }
    texts = [v for v in fields.values() if isinstance(v, str)] + [str(fields["timestamp"])]
    value = PACKING_TEXT | st.sampled_from(texts)
    names = draw(st.lists(PACKING_TEXT, max_size=8, unique=True))
    fields["raw"] = tuple((name, draw(value)) for name in sorted(names))
    return fields


@settings(max_examples=300, deadline=None)
@given(fields=trade_fields())
def test_trade_keeps_the_values_of_its_dataclass(fields: dict[str, Any]) -> None:
    """Fields, raw record, repr, equality, hash, JSON and copies are the dataclass's."""
    trade, reference = Trade(**fields), ReferenceTrade(**fields)
    assert {name: getattr(trade, name) for name in Trade.__slots__} == {
        name: getattr(reference, name) for name in ReferenceTrade.__slots__
    }
    assert trade.raw == reference.raw
    assert repr(trade) == repr(reference).replace("ReferenceTrade(", "Trade(", 1)
    again = Trade(**fields)
    assert again == trade and hash(again) == hash(trade)
    assert trade.to_json() == {**dataclasses.asdict(reference), "raw": dict(reference.raw)}
    assert pickle.loads(pickle.dumps(trade)) == trade == copy.deepcopy(trade)
    assert Trade(**{**fields, "raw": ()}) != trade or not fields["raw"]


def test_trade_is_a_frozen_value() -> None:
    """Fields cannot be set or deleted; any differing field makes another trade."""
    fields: dict[str, Any] = {
        "symbol": "BTC/USDT", "id": "1", "order_id": "7", "side": "buy", "price": "2",
        "amount": "1", "cost": "2", "fee_cost": "0.1", "fee_currency": "BNB",
        "timestamp": 9, "raw": (("id", "1"), ("isMaker", "true")),
    }  # fmt: skip
    trade = Trade(**fields)
    assert Trade.__slots__ == tuple(f.name for f in dataclasses.fields(ReferenceTrade))
    with pytest.raises(dataclasses.FrozenInstanceError):
        trade.price = "3"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del trade.raw  # type: ignore[misc]
    for name, other in [*((n, "x") for n in fields if n not in ("timestamp", "raw")),
                        ("timestamp", 10), ("raw", (("id", "1"),))]:  # fmt: skip
        assert Trade(**{**fields, name: other}) != trade
    assert trade != ReferenceTrade(**fields) and trade != fields


def test_a_binance_record_is_stored_packed() -> None:
    """Fills of one layout share its names; values that repeat a field cost one character."""
    rng = random.Random(5)
    trades = [
        HistoryFetcher(None, exchange_id="binance", config=HistoryConfig())._trade(
            {
                "info": record,
                "symbol": "BTC/USDT",
                "side": "buy",
                "timestamp": record["time"],
                "fee": {"cost": None, "currency": record["commissionAsset"]},
            },
            history_module._BINANCE_KEYS,
        )
        for record in spread_trades(rng, "BTC/USDT", 50, NOW - DAY, NOW)
    ]
    assert all(isinstance(t, Trade) for t in trades)
    first = trades[0]
    assert first is not None and len(first.raw) == 13
    assert all(t is not None and t._raw_names is first._raw_names for t in trades)
    # 9 of the 13 values are the trade's own fields (ids, numbers, time, fee asset): one
    # short str instead of 14 tuples (about 1 KB).
    packed = history_module._RAW_SLOT.__get__(first, Trade)
    assert isinstance(packed, str) and len(packed) < 48
    assert sys.getsizeof(packed) * 8 < sum(map(sys.getsizeof, (first.raw, *first.raw)))
    assert dict(first.raw)["time"] == str(first.timestamp)


async def test_trades_keep_the_exchange_strings() -> None:
    """Price, amount, cost and fee are Binance's own strings, not ccxt floats."""
    raw = binance_raw("BTC/USDT", 42, NOW - 1000, random.Random(24))
    raw.update(price="0.00000100", qty="12.00000000", quoteQty="0.00001200", commission="1E-8")
    fake = FakeBinance({"BTC/USDT": [raw]}, balances={"BTC": 1.0})
    ledger = TradeLedger()
    await sync(BinanceHistory(fake, exchange_id="binance", config=HistoryConfig()), ledger)
    (trade,) = list(ledger)
    assert (trade.price, trade.amount, trade.cost, trade.fee_cost) == (
        "0.00000100",
        "12.00000000",
        "0.00001200",
        "1E-8",
    )
    assert dict(trade.raw)["isBuyer"] in ("true", "false")
    assert dict(trade.raw)["id"] == "42"


def test_completeness_is_json_with_merged_coverage() -> None:
    """The record serialises to JSON; adjacent windows merge into one interval."""
    record = Completeness(exchange="binance", strategy="binance-symbol-windows")
    record.cover("BTC/USDT", 0, 10)
    record.cover("BTC/USDT", 10, 20)
    record.cover("BTC/USDT", 30, 40)
    record.add_gap(Gap("ETH/USDT", 1, 2, GapReason.ID_STALLED))
    record.add_gap(Gap("ETH/USDT", 1, 2, GapReason.ID_STALLED))
    document = json.loads(json.dumps(record.to_json()))
    assert document["coverage"] == {"BTC/USDT": [[0, 20], [30, 40]]}
    assert len(document["gaps"]) == 1
    assert document["gaps"][0]["description"] == GapReason.ID_STALLED.description
    assert document["complete"] is False


def test_history_fetcher_for_picks_the_strategy() -> None:
    """Binance, Kraken and Coinbase get their own strategies; any other id the generic one."""
    picks = {name: history_fetcher_for(name, object()).strategy
             for name in ("binance", "binanceus", "kraken", "coinbase", "bybit")}  # fmt: skip
    assert picks == {
        "binance": "binance-symbol-windows",
        "binanceus": "binance-symbol-windows",
        "kraken": "kraken-offsets",
        "coinbase": "coinbase-cursor",
        "bybit": "ccxt-since",
    }


# ============================================================================ client


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (ccxt_errors.AuthenticationError("binance {'code':-2015}"), ErrorKind.AUTH),
        (ccxt_errors.PermissionDenied("kraken EGeneral:Permission denied"), ErrorKind.AUTH),
        (ccxt_errors.AccountSuspended("x"), ErrorKind.AUTH),
        (ccxt_errors.InvalidNonce("binance -1021"), ErrorKind.CLOCK_SKEW),
        (ccxt_errors.RateLimitExceeded("429"), ErrorKind.RATE_LIMITED),
        (ccxt_errors.DDoSProtection("418"), ErrorKind.RATE_LIMITED),
        (ccxt_errors.RequestTimeout("GET https://x"), ErrorKind.TIMEOUT),
        (ccxt_errors.ExchangeNotAvailable("502"), ErrorKind.UNAVAILABLE),
        (ccxt_errors.OnMaintenance("x"), ErrorKind.UNAVAILABLE),
        (ccxt_errors.NetworkError("x"), ErrorKind.UNAVAILABLE),
        (ccxt_errors.NotSupported("x"), ErrorKind.UNSUPPORTED),
        (ccxt_errors.BadSymbol("x"), ErrorKind.EXCHANGE_ERROR),
        (ccxt_errors.ExchangeError("x"), ErrorKind.EXCHANGE_ERROR),
        (TimeoutError(), ErrorKind.TIMEOUT),
        (ConnectionResetError(), ErrorKind.UNAVAILABLE),
        (KeyError("fills"), ErrorKind.EXCHANGE_ERROR),
    ],
)
def test_classify_maps_ccxt_errors_to_fixed_kinds(error: BaseException, kind: ErrorKind) -> None:
    """Each ccxt error class lands in its kind, with that kind's fixed message."""
    failure = classify_exception(error, now=0)
    assert failure.kind is kind
    assert str(failure) == failure.message == FAILURE_MESSAGES[kind]
    assert failure.error_type == type(error).__name__


def test_failure_text_never_quotes_the_ccxt_error() -> None:
    """Credentials or URLs in a ccxt error's text never reach the failure's str or repr."""
    error = ccxt_errors.AuthenticationError(
        f"binance GET https://api.binance.com/api/v3/account?apiKey={CANARY_KEY}&s={CANARY_SECRET}"
    )
    failure = classify_exception(error, now=0)
    for text in (str(failure), repr(failure), failure.message, str(failure.args)):
        assert CANARY_KEY not in text and CANARY_SECRET not in text


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("7", 7.0),
        (" 120 ", 120.0),
        ("Thu, 01 Jan 1970 00:01:40 GMT", 60.0),  # 100 s after epoch, now = 40
        ("Thu, 01 Jan 1970 00:00:00 GMT", 0.0),  # in the past
        ("99999999", client_module.MAX_RETRY_AFTER_SECONDS),
        ("soon", None),
        ("-5", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_retry_after_both_forms(value: str | None, seconds: float | None) -> None:
    """Retry-After is read as delay-seconds or an HTTP-date (RFC 9110 10.2.3), clamped."""
    assert parse_retry_after(value, now=40.0) == seconds


def test_retry_after_header_is_read_case_insensitively() -> None:
    """A rate-limit failure carries the response's Retry-After, whatever its case."""
    failure = classify_exception(
        ccxt_errors.DDoSProtection("x"), headers={"retry-after": "30"}, now=0
    )
    assert failure.retry_after == 30.0


def _settings(proxy: str | None = "http://127.0.0.1:8080") -> ClientSettings:
    return ClientSettings(ssl_context=ssl.create_default_context(), proxy_url=proxy)


async def test_build_exchange_wires_credentials_proxy_tls_and_options() -> None:
    """The ccxt object gets the keys, the egress proxy, our SSL context, rate limiting, options."""
    settings_ = _settings()
    credentials = Credentials(
        exchange="binance", api_key=CANARY_KEY, api_secret=CANARY_SECRET, passphrase="pass-phrase"
    )
    exchange = build_exchange(credentials, settings_)
    try:
        assert (exchange.apiKey, exchange.secret, exchange.password) == (
            CANARY_KEY,
            CANARY_SECRET,
            "pass-phrase",
        )
        assert exchange.check_proxy_settings("https://api.binance.com/api/v3/time") == [
            None,
            "http://127.0.0.1:8080",
            None,
        ]
        assert exchange.ssl_context is settings_.ssl_context
        assert exchange.enableRateLimit is True and exchange.aiohttp_trust_env is False
        assert exchange.options["fetchMarkets"]["types"] == ["spot"]
        assert exchange.options["fetchCurrencies"] is False
        assert CANARY_KEY not in repr(exchange) and CANARY_KEY not in str(exchange)
        other = build_exchange(credentials, settings_)
        other.options["fetchMarkets"]["types"].append("option")
        assert exchange.options["fetchMarkets"]["types"] == ["spot"]  # not shared
    finally:
        exchange.session = None  # never opened: nothing to close


def test_build_exchange_per_exchange_config() -> None:
    """Kraken maps a bad signature to auth; Coinbase stays on v3 endpoints."""
    kraken = build_exchange(
        Credentials(exchange="kraken", api_key="k", api_secret="s"), _settings()
    )
    assert kraken.exceptions["exact"]["EAPI:Invalid signature"] is ccxt_errors.AuthenticationError
    coinbase = build_exchange(
        Credentials(exchange="coinbase", api_key="k", api_secret="s"), _settings()
    )
    assert coinbase.has["fetchCurrencies"] is False
    assert coinbase.options["fetchBalance"] == "v3PrivateGetBrokerageAccounts"


def test_build_exchange_refuses_ids_not_enabled() -> None:
    """With allowed_exchanges set, any other ccxt id is 'unsupported' before any call."""
    settings_ = ClientSettings(
        ssl_context=ssl.create_default_context(),
        proxy_url=None,
        allowed_exchanges=frozenset({"binance"}),
    )
    with pytest.raises(ExchangeFailure) as failure:
        build_exchange(Credentials(exchange="kraken", api_key="k", api_secret="s"), settings_)
    assert failure.value.kind is ErrorKind.UNSUPPORTED


def test_exchange_tls_context_trusts_only_the_bundle(tmp_path: Path) -> None:
    """The context from a CA bundle holds that CA alone, verifies hostnames, TLS >= 1.2."""
    authority = trustme.CA()
    bundle = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(bundle))
    context = client_module.exchange_tls_context(bundle)
    assert len(context.get_ca_certs()) == 1
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2


def test_build_exchange_refuses_unknown_ids() -> None:
    """An id ccxt does not know is the fixed 'unsupported' failure."""
    with pytest.raises(ExchangeFailure) as failure:
        build_exchange(Credentials(exchange="nosuchex", api_key="k", api_secret="s"), _settings())
    assert failure.value.kind is ErrorKind.UNSUPPORTED


@pytest.mark.parametrize(
    "proxy", ["https://127.0.0.1:8080", "http://10.0.0.1:8080", "http://127.0.0.1", "socks5://x:1"]
)
def test_client_settings_require_a_loopback_http_proxy(proxy: str) -> None:
    """The egress proxy URL must be http://<loopback>:<port>."""
    with pytest.raises(ValueError, match="proxy_url"):
        _settings(proxy)


# ---------------------------------------------------------------------------- real ccxt


class ConnectStub:
    """A loopback CONNECT proxy: refuses with ``status``, or tunnels to ``upstream``."""

    def __init__(self, status: int, upstream: tuple[str, int] | None = None) -> None:
        self.status = status
        self.upstream = upstream
        self.targets: list[str] = []
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> ConnectStub:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        self.targets.append(head.split(b" ")[1].decode())
        if self.upstream is None:
            writer.write(f"HTTP/1.1 {self.status} Refused\r\nContent-Length: 0\r\n\r\n".encode())
            await writer.drain()
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))


async def _sync_real(exchange_id: str, settings_: ClientSettings) -> ExchangeFailure:
    credentials = Credentials(exchange=exchange_id, api_key=CANARY_KEY, api_secret=CANARY_SECRET)
    exchange = build_exchange(credentials, settings_)
    exchange.timeout_on_exit = 0
    try:
        fetcher = history_fetcher_for(exchange_id, exchange)
        with pytest.raises(ExchangeFailure) as failure:
            await fetcher.sync(TradeLedger(), now_ms=NOW)
        return failure.value
    finally:
        await exchange.close()


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (403, ErrorKind.DENIED_BY_EGRESS),
        (502, ErrorKind.UNAVAILABLE),
        (503, ErrorKind.UNAVAILABLE),
        (504, ErrorKind.TIMEOUT),
    ],
)
async def test_real_ccxt_goes_through_the_egress_proxy(status: int, kind: ErrorKind) -> None:
    """Real ccxt asks our proxy for CONNECT api.binance.com:443; its refusals map by status."""
    async with ConnectStub(status) as proxy:
        failure = await _sync_real("binance", _settings(proxy.url))
    assert proxy.targets == ["api.binance.com:443"]
    assert failure.kind is kind


async def test_real_ccxt_untrusted_certificate_is_a_tls_failure(tmp_path: Path) -> None:
    """A tunnel to a server with a certificate from an untrusted CA fails as 'tls'."""
    rogue = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    rogue.issue_cert("api.kraken.com").configure_cert(server_context)

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    trusted = trustme.CA()  # the client trusts a different CA only
    client_context = ssl.create_default_context()
    trusted.configure_trust(client_context)
    try:
        async with ConnectStub(200, upstream=("127.0.0.1", port)) as proxy:
            settings_ = ClientSettings(ssl_context=client_context, proxy_url=proxy.url)
            failure = await _sync_real("kraken", settings_)
    finally:
        server.close()
    assert failure.kind is ErrorKind.TLS


async def test_real_ccxt_logs_no_credentials_even_at_debug() -> None:
    """At DEBUG, ccxt's request log (with the API key header) stays out of our log stream."""
    stream = io.StringIO()
    configure_logging("enclave-test", level="DEBUG", stream=stream)
    credentials = Credentials(exchange="binance", api_key=CANARY_KEY, api_secret=CANARY_SECRET)
    async with ConnectStub(403) as proxy:
        ours = build_exchange(credentials, _settings(proxy.url))
        # Control: a ccxt exchange with its default logger, to show the test can see a leak.
        plain = ccxt_async.binance(
            {"apiKey": CANARY_KEY, "secret": CANARY_SECRET, "https_proxy": proxy.url}
        )
        ours.timeout_on_exit = plain.timeout_on_exit = 0
        try:
            with pytest.raises(ccxt_errors.BaseError):
                await ours.privateGetAccount()  # signed: X-MBX-APIKEY header
            ours_log = stream.getvalue()
            with pytest.raises(ccxt_errors.BaseError):
                await plain.privateGetAccount()
        finally:
            await ours.close()
            await plain.close()
    assert CANARY_KEY not in ours_log and CANARY_SECRET not in ours_log
    assert CANARY_KEY in stream.getvalue()  # the control did leak it


def test_all_lists_the_public_api() -> None:
    """__all__ of each module names exactly its public classes and functions."""
    for module in (client_module, history_module):
        public = {
            name
            for name, value in vars(module).items()
            if not name.startswith("_")
            and getattr(value, "__module__", None) == module.__name__
            and callable(value)
        }
        assert public <= set(module.__all__), module.__name__
        assert all(hasattr(module, name) for name in module.__all__)


# ============================================================================ fake servers
#
# Real, unmodified ccxt built by build_exchange (our options, our SSL context trusting
# only the test CA), against the HTTPS fake exchanges of tests/fakes/exchanges, which
# check real request signatures. No egress here: ccxt keeps the real hostnames and a
# test-only aiohttp session resolves them to the fake on 127.0.0.1 (the e2e tests go
# through the egress proxy instead). ccxt's limiter is switched off to keep the suite
# fast; it spaces calls, it does not change which calls are made.


async def _fetch_from_fake(fake: Any, credentials: Credentials) -> tuple[TradeLedger, Any]:
    from tests.fakes.exchanges.common import fake_client_session

    async with fake:
        settings_ = ClientSettings(ssl_context=fake.tls.client_context(), proxy_url=None)
        exchange = build_exchange(credentials, settings_)
        session = fake_client_session(fake, ssl_context=settings_.ssl_context)
        exchange.session, exchange.own_session = session, False
        exchange.enableRateLimit = False
        exchange.timeout_on_exit = 0
        fetcher = history_fetcher_for(credentials.exchange, exchange, HistoryConfig())
        ledger = TradeLedger()
        try:
            await fetcher.sync(ledger, now_ms=int(datetime.now(UTC).timestamp() * 1000))
        finally:
            await exchange.close()
            await session.close()
    return ledger, fetcher


async def test_fake_binance_full_history_through_real_ccxt(tmp_path: Path) -> None:
    """Real ccxt + BinanceHistory read the fake's whole 60-day history, burst day included."""
    from tests.fakes.exchanges.binance import FakeBinance as ServerBinance
    from tests.fakes.exchanges.binance import binance_history_spec
    from tests.fakes.exchanges.common import Burst, create_fake_tls

    key, secret = "itestBinanceKey" + "0" * 49, "itestBinanceSecret" + "1" * 46
    fake = ServerBinance(
        tls=create_fake_tls(tmp_path),
        api_key=key,
        api_secret=secret,
        history=binance_history_spec(
            orders=150, bursts=(Burst(symbol="BTC/USDT", day=12, orders=600),)
        ),
    )
    ledger, fetcher = await _fetch_from_fake(
        fake, Credentials(exchange="binance", api_key=key, api_secret=secret)
    )
    truth = {t.key: t for t in fake.ground_truth}
    assert ledger.keys() == set(truth)
    assert len(ledger) == len(truth)
    assert max(fetcher.completeness.windows.values()) >= 55
    per_day = Counter((t.symbol, t.time_ms // DAY) for t in fake.ground_truth)
    assert max(per_day.values()) > 1000  # the burst overflows one 24 h page
    continuations = [c for c in fake.calls if c.params.get("fromId", "0") != "0"]
    assert continuations and all(c.status == 200 for c in fake.calls)
    for trade in ledger:
        raw = truth[trade.key].raw
        assert (trade.price, trade.amount, trade.fee_cost) == (
            raw["price"],
            raw["qty"],
            raw["commission"],
        )
    # Closed-out markets (zero balance at the end) were found and read.
    closed = {m.symbol for m in fake.history.spec.markets if m.close_out}
    assert closed <= {t.symbol for t in ledger}
    assert fetcher.completeness.complete


async def test_fake_kraken_full_history_through_real_ccxt(tmp_path: Path) -> None:
    """Real ccxt + KrakenHistory read every page of the fake's TradesHistory by ofs."""
    import base64

    from tests.fakes.exchanges.common import create_fake_tls
    from tests.fakes.exchanges.kraken import FakeKraken as ServerKraken
    from tests.fakes.exchanges.kraken import kraken_history_spec

    key, secret = "itestKrakenKey+" + "0" * 40 + "=", base64.b64encode(bytes(range(64))).decode()
    fake = ServerKraken(
        tls=create_fake_tls(tmp_path),
        api_key=key,
        api_secret=secret,
        history=kraken_history_spec(orders=300),
    )
    ledger, fetcher = await _fetch_from_fake(
        fake, Credentials(exchange="kraken", api_key=key, api_secret=secret)
    )
    assert ledger.keys() == fake.truth_keys()
    assert len(ledger) == len(fake.ground_truth) > 50
    truth = {t.key: t for t in fake.ground_truth}
    for trade in ledger:
        raw = truth[trade.key].raw
        assert (trade.price, trade.amount, trade.cost, trade.fee_cost) == (
            raw["price"],
            raw["vol"],
            raw["cost"],
            raw["fee"],
        )
    assert fetcher.completeness.complete


async def test_fake_coinbase_full_history_through_real_ccxt(tmp_path: Path) -> None:
    """Real ccxt + CoinbaseHistory follow the fake's fill cursors to the end (JWT-signed)."""
    from tests.fakes.exchanges.coinbase import CoinbaseKey, coinbase_history_spec
    from tests.fakes.exchanges.coinbase import FakeCoinbase as ServerCoinbase
    from tests.fakes.exchanges.common import create_fake_tls

    key = CoinbaseKey.generate()
    fake = ServerCoinbase(
        tls=create_fake_tls(tmp_path),
        key_name=key.name,
        public_key=key.public_key,
        history=coinbase_history_spec(orders=400),
    )
    ledger, fetcher = await _fetch_from_fake(
        fake, Credentials(exchange="coinbase", api_key=key.name, api_secret=key.private_pem)
    )
    assert {(t.symbol, dict(t.raw)["trade_id"]) for t in ledger} == fake.truth_keys()
    assert ledger.keys() == {(t.symbol, t.raw["entry_id"]) for t in fake.ground_truth}
    assert len(ledger) == len(fake.ground_truth) > 250
    assert any(dict(t.raw)["size_in_quote"] == "true" for t in ledger)
    assert fetcher.completeness.complete
