"""Fake Binance spot REST API (api.binance.com) for ccxt's ``binance`` class. Side: tests.

Endpoints (what ccxt 4.5.90 calls with the options below, nothing else):

    GET /api/v3/ping, /api/v3/time          public
    GET /api/v3/exchangeInfo                public; spot markets only
    GET /api/v3/account                     SIGNED; balances (omitZeroBalances honoured)
    GET /api/v3/myTrades                    SIGNED; per symbol, see the rules below

ccxt options that keep ccxt on these endpoints (without them load_markets also calls
fapi/dapi exchangeInfo and, with keys, sapi margin pairs and capital/config/getall)::

    {"fetchMarkets": {"types": ["spot"]}, "fetchCurrencies": False, "fetchMargins": False}

SIGNED requests, checked as Binance does (codes are Binance's, JSON ``{"code", "msg"}``):
``X-MBX-APIKEY`` header (missing/malformed -2014, unknown or revoked -2015); ``timestamp``
mandatory (-1102); ``recvWindow`` <= 60000 (-1131); the request is refused with -1021
unless ``timestamp < serverTime + 1000`` and ``serverTime - timestamp <= recvWindow``
(default 5000; ccxt sends 10000); ``signature`` = hex HMAC-SHA256(secret, query string
without the signature parameter), else -1022.

myTrades, per Binance's spot docs: ``symbol`` mandatory (-1102), unknown -1121. Supported
parameter combinations only: none, orderId, startTime, endTime, fromId, startTime+endTime,
orderId+fromId (anything else -1128). ``endTime - startTime`` <= 24 h (-1127).
``limit`` default 500, 1..1000 (else -1130, rather than silently clamping). Ids are PER
SYMBOL (two symbols can share an id) and ascending in time. Results ascending by id:

- fromId: trades with id >= fromId (the first ``limit``);
- startTime (+ endTime): trades in [startTime, endTime], endTime defaulting to
  startTime + 24 h, the OLDEST ``limit`` of them;
- endTime only: [endTime - 24 h, endTime], the NEWEST ``limit``;
- nothing: the newest ``limit``.

(Binance documents the 24 h cap but not which end of an over-full window it returns; this
fake returns the oldest, so a full page means "continue with fromId = last id + 1".)

Rate limit: 429 (or 418 when banned) with ``Retry-After`` and code -1003; every reply
carries ``X-MBX-USED-WEIGHT-1M``.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import re
import time
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from .common import (
    DAY_MS,
    Burst,
    FakeExchange,
    FakeTls,
    History,
    HistorySpec,
    Injection,
    MarketSpec,
    TruthTrade,
    decimal_string,
    generate_history,
    start_of_day_ms,
)

__all__ = ["DEFAULT_MARKETS", "FakeBinance", "binance_history_spec"]

DEFAULT_MARKETS = (
    MarketSpec(base="BTC", quote="USDT", price_decimals=2, qty_decimals=5, weight=4),
    MarketSpec(base="ETH", quote="USDT", price_decimals=2, qty_decimals=4, weight=3),
    MarketSpec(base="ETH", quote="BTC", price_decimals=5, qty_decimals=4, weight=2),
    MarketSpec(base="BNB", quote="USDT", price_decimals=1, qty_decimals=3, weight=1),
    MarketSpec(base="SOL", quote="USDT", price_decimals=2, qty_decimals=3, close_out=True),
    MarketSpec(base="DOGE", quote="USDT", price_decimals=5, qty_decimals=0, close_out=True),
    MarketSpec(base="XRP", quote="USDT", price_decimals=4, qty_decimals=0, weight=0),
)
"""SOL and DOGE are sold off before the end (zero balance, trades in the history); XRP is
listed but never traded."""

_MAX_RECV_WINDOW = 60_000
_DEFAULT_RECV_WINDOW = 5_000
_MY_TRADES_PARAMS = frozenset(
    {"symbol", "orderId", "startTime", "endTime", "fromId", "limit", "recvWindow", "timestamp"}
)
_ACCOUNT_PARAMS = frozenset({"omitZeroBalances", "recvWindow", "timestamp"})
# Binance spot myTrades: "supported combinations of all parameters".
_MY_TRADES_COMBINATIONS = frozenset(
    {
        frozenset(),
        frozenset({"orderId"}),
        frozenset({"startTime"}),
        frozenset({"endTime"}),
        frozenset({"fromId"}),
        frozenset({"startTime", "endTime"}),
        frozenset({"orderId", "fromId"}),
    }
)
_WEIGHTS = {"/api/v3/exchangeInfo": 20, "/api/v3/account": 20, "/api/v3/myTrades": 20}
_KEY_FORMAT = re.compile(r"^[A-Za-z0-9]{1,128}$")


def binance_history_spec(
    *,
    seed: int = 1,
    orders: int = 200,
    days: int = 60,
    start_ms: int | None = None,
    bursts: tuple[Burst, ...] = (),
) -> HistorySpec:
    """A Binance-like history: fees in the asset received or in BNB; ends at last midnight UTC."""
    if start_ms is None:
        start_ms = start_of_day_ms(int(time.time() * 1000)) - days * DAY_MS
    return HistorySpec(
        markets=DEFAULT_MARKETS,
        start_ms=start_ms,
        seed=seed,
        days=days,
        orders=orders,
        fee_policy="received",
        third_fee_asset="BNB",
        third_fee_share=0.3,
        deposits={"USDT": Decimal(3_000_000), "BTC": Decimal("2"), "BNB": Decimal("40")},
        bursts=bursts,
    )


class _Refused(Exception):
    """A request refused with a Binance error body."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class FakeBinance(FakeExchange):
    """Binance spot with one account: the given API key/secret and a generated history."""

    hostname = "api.binance.com"

    def __init__(
        self,
        *,
        tls: FakeTls,
        api_key: str,
        api_secret: str,
        history: HistorySpec | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(tls=tls, clock=clock)
        self.api_key = api_key
        self._secret = api_secret.encode()
        self.history: History = generate_history(history or binance_history_spec())
        self._truth = _render_trades(self.history)
        self._by_symbol: dict[str, list[TruthTrade]] = {}
        for trade in self._truth:
            self._by_symbol.setdefault(trade.market_id, []).append(trade)
        self._markets = {m.base + m.quote: m for m in self.history.spec.markets}
        self._weight_minute = 0
        self._weight_used = 0

    @property
    def ground_truth(self) -> tuple[TruthTrade, ...]:
        """Every trade, as myTrades reports it, in time order."""
        return self._truth

    def routes(self) -> list[web.RouteDef]:
        """Binance spot endpoints ccxt needs."""
        return [
            web.get("/api/v3/ping", self._ping),
            web.get("/api/v3/time", self._time),
            web.get("/api/v3/exchangeInfo", self._exchange_info),
            web.get("/api/v3/account", self._account),
            web.get("/api/v3/myTrades", self._my_trades),
        ]

    def rate_limited(self, injection: Injection) -> web.Response:
        """429 (418 = IP ban) with code -1003, as Binance sends it."""
        status = injection.status or 429
        if status == 418:
            until = self.now_ms() + injection.retry_after_s * 1000
            message = (
                f"Way too much request weight used; IP banned until {until}. "
                "Please use WebSocket Streams for live updates to avoid bans."
            )
        else:
            message = (
                "Too many requests; current limit of IP(127.0.0.1) is 6000 requests per "
                "minute. Please use WebSocket Streams for live updates to avoid polling the API."
            )
        return web.json_response({"code": -1003, "msg": message}, status=status)

    # -- plumbing

    def _reply(self, request: web.Request, body: Any, status: int = 200) -> web.Response:
        minute = self.now_ms() // 60_000
        if minute != self._weight_minute:
            self._weight_minute, self._weight_used = minute, 0
        self._weight_used += _WEIGHTS.get(request.path, 1)
        response = web.json_response(body, status=status)
        response.headers["X-MBX-USED-WEIGHT-1M"] = str(self._weight_used)
        return response

    def _refusal(self, request: web.Request, refused: _Refused) -> web.Response:
        self.note_error(request, str(refused.code))
        return self._reply(request, {"code": refused.code, "msg": refused.message}, refused.status)

    def _authenticate(self, request: web.Request, allowed: frozenset[str]) -> None:
        """Check key, timestamp window and HMAC signature of a SIGNED request."""
        key = request.headers.get("X-MBX-APIKEY", "")
        if not _KEY_FORMAT.match(key):
            raise _Refused(401, -2014, "API-key format invalid.")
        if self.faults.key_revoked or not hmac.compare_digest(key, self.api_key):
            raise _Refused(401, -2015, "Invalid API-key, IP, or permissions for action.")
        query = request.query
        unknown = set(query) - allowed - {"signature"}
        if unknown:
            raise _Refused(
                400,
                -1104,
                f"Not all sent parameters were read; read '{len(query) - len(unknown)}' "
                f"parameter(s) but was sent '{len(query)}'.",
            )
        timestamp = _integer(query, "timestamp", required=True)
        recv_window = _integer(query, "recvWindow") or _DEFAULT_RECV_WINDOW
        if recv_window > _MAX_RECV_WINDOW:
            raise _Refused(400, -1131, "recvWindow must be less than 60000")
        assert timestamp is not None
        server_time = self.now_ms()
        # Binance's rule: timestamp < serverTime + 1000 and serverTime - timestamp <= recvWindow.
        if timestamp >= server_time + 1000:
            raise _Refused(
                400, -1021, "Timestamp for this request was 1000ms ahead of the server's time."
            )
        if server_time - timestamp > recv_window:
            raise _Refused(400, -1021, "Timestamp for this request is outside of the recvWindow.")
        signed, signature = _split_signature(request.rel_url.raw_query_string)
        if signature is None:
            raise _Refused(
                400,
                -1102,
                "Mandatory parameter 'signature' was not sent, was empty/null, or malformed.",
            )
        expected = hmac.new(self._secret, signed.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature.lower()):
            raise _Refused(400, -1022, "Signature for this request is not valid.")

    # -- endpoints

    async def _ping(self, request: web.Request) -> web.Response:
        return self._reply(request, {})

    async def _time(self, request: web.Request) -> web.Response:
        return self._reply(request, {"serverTime": self.now_ms()})

    async def _exchange_info(self, request: web.Request) -> web.Response:
        symbol = request.query.get("symbol")
        markets = list(self._markets.items())
        if symbol is not None:
            if symbol not in self._markets:
                return self._refusal(request, _Refused(400, -1121, "Invalid symbol."))
            markets = [(symbol, self._markets[symbol])]
        return self._reply(
            request,
            {
                "timezone": "UTC",
                "serverTime": self.now_ms(),
                "rateLimits": [
                    {
                        "rateLimitType": "REQUEST_WEIGHT",
                        "interval": "MINUTE",
                        "intervalNum": 1,
                        "limit": 6000,
                    },
                    {
                        "rateLimitType": "ORDERS",
                        "interval": "SECOND",
                        "intervalNum": 10,
                        "limit": 100,
                    },
                    {
                        "rateLimitType": "ORDERS",
                        "interval": "DAY",
                        "intervalNum": 1,
                        "limit": 200000,
                    },
                    {
                        "rateLimitType": "RAW_REQUESTS",
                        "interval": "MINUTE",
                        "intervalNum": 5,
                        "limit": 61000,
                    },
                ],
                "exchangeFilters": [],
                "symbols": [_symbol_info(market_id, market) for market_id, market in markets],
            },
        )

    async def _account(self, request: web.Request) -> web.Response:
        try:
            self._authenticate(request, _ACCOUNT_PARAMS)
        except _Refused as refused:
            return self._refusal(request, refused)
        omit_zero = request.query.get("omitZeroBalances", "false").lower() == "true"
        balances = [
            {"asset": asset, "free": decimal_string(amount, 8), "locked": "0.00000000"}
            for asset, amount in sorted(self.history.balances.items())
            if not (omit_zero and amount == 0)
        ]
        return self._reply(
            request,
            {
                "makerCommission": 10,
                "takerCommission": 10,
                "buyerCommission": 0,
                "sellerCommission": 0,
                "commissionRates": {
                    "maker": "0.00100000",
                    "taker": "0.00100000",
                    "buyer": "0.00000000",
                    "seller": "0.00000000",
                },
                "canTrade": True,
                "canWithdraw": True,
                "canDeposit": True,
                "brokered": False,
                "requireSelfTradePrevention": False,
                "preventSor": False,
                "updateTime": self.history.spec.end_ms,
                "accountType": "SPOT",
                "balances": balances,
                "permissions": ["SPOT"],
                "uid": 354937868,
            },
        )

    async def _my_trades(self, request: web.Request) -> web.Response:
        try:
            self._authenticate(request, _MY_TRADES_PARAMS)
            page = self._select_trades(request.query)
        except _Refused as refused:
            return self._refusal(request, refused)
        return self._reply(request, [dict(trade.raw) for trade in page])

    def _select_trades(self, query: Mapping[str, str]) -> list[TruthTrade]:
        symbol = query.get("symbol")
        if not symbol:
            raise _Refused(
                400,
                -1102,
                "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.",
            )
        if symbol not in self._markets:
            raise _Refused(400, -1121, "Invalid symbol.")
        options = {name for name in ("orderId", "startTime", "endTime", "fromId") if name in query}
        if frozenset(options) not in _MY_TRADES_COMBINATIONS:
            raise _Refused(400, -1128, "Combination of optional parameters invalid.")
        order_id = _integer(query, "orderId")
        from_id = _integer(query, "fromId")
        start = _integer(query, "startTime")
        end = _integer(query, "endTime")
        limit = _integer(query, "limit")
        limit = 500 if limit is None else limit
        if not 1 <= limit <= 1000:
            raise _Refused(400, -1130, "Data sent for parameter 'limit' is not valid.")
        if start is not None and end is not None:
            if start > end:
                raise _Refused(400, -1023, "Start time is greater than end time.")
            if end - start > DAY_MS:
                raise _Refused(400, -1127, "More than 24 hours between startTime and endTime.")
        trades = self.visible(self._by_symbol.get(symbol, []))
        if order_id is not None:
            trades = [t for t in trades if int(t.order_id) == order_id]
        if from_id is not None:
            return [t for t in trades if int(t.trade_id) >= from_id][:limit]
        if start is not None:
            end = start + DAY_MS if end is None else end
            return [t for t in trades if start <= t.time_ms <= end][:limit]
        if end is not None:
            window = [t for t in trades if end - DAY_MS <= t.time_ms <= end]
            return window[-limit:]
        return trades[-limit:]


def _integer(query: Mapping[str, str], name: str, *, required: bool = False) -> int | None:
    value = query.get(name)
    if value is None or value == "":
        if required:
            raise _Refused(
                400,
                -1102,
                f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.",
            )
        return None
    if not re.fullmatch(r"[0-9]{1,20}", value):
        raise _Refused(
            400,
            -1100,
            f"Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'.",
        )
    return int(value)


def _split_signature(raw_query: str) -> tuple[str, str | None]:
    """(the signed payload, the signature): Binance signs the query without ``signature``."""
    signed: list[str] = []
    signature: str | None = None
    for part in raw_query.split("&") if raw_query else []:
        name, _, value = part.partition("=")
        if name == "signature":
            signature = unquote(value)
        else:
            signed.append(part)
    return "&".join(signed), signature


def _symbol_info(market_id: str, market: MarketSpec) -> dict[str, Any]:
    tick = decimal_string(market.price_step, 8)
    step = decimal_string(market.qty_step, 8)
    return {
        "symbol": market_id,
        "status": "TRADING",
        "baseAsset": market.base,
        "baseAssetPrecision": 8,
        "quoteAsset": market.quote,
        "quotePrecision": 8,
        "quoteAssetPrecision": 8,
        "baseCommissionPrecision": 8,
        "quoteCommissionPrecision": 8,
        "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"],
        "icebergAllowed": True,
        "ocoAllowed": True,
        "otoAllowed": True,
        "quoteOrderQtyMarketAllowed": True,
        "allowTrailingStop": True,
        "cancelReplaceAllowed": True,
        "isSpotTradingAllowed": True,
        "isMarginTradingAllowed": False,
        "filters": [
            {
                "filterType": "PRICE_FILTER",
                "minPrice": tick,
                "maxPrice": "1000000.00000000",
                "tickSize": tick,
            },
            {
                "filterType": "LOT_SIZE",
                "minQty": step,
                "maxQty": "9000000.00000000",
                "stepSize": step,
            },
            {
                "filterType": "NOTIONAL",
                "minNotional": "5.00000000",
                "applyMinToMarket": True,
                "maxNotional": "9000000.00000000",
                "applyMaxToMarket": False,
                "avgPriceMins": 5,
            },
        ],
        "permissions": [],
        "permissionSets": [["SPOT"]],
        "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
        "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
    }


def _render_trades(history: History) -> tuple[TruthTrade, ...]:
    """Binance ids (per symbol, ascending, with gaps for other users' trades) and JSON."""
    rng = random.Random(f"binance:{history.spec.seed}")
    # Ids start close together on purpose: ids of different symbols collide, as they can
    # on Binance, so only (symbol, id) identifies a trade.
    next_trade: dict[str, int] = {}
    next_order: dict[str, int] = {}
    order_ids: dict[int, int] = {}
    truth: list[TruthTrade] = []
    for fill in history.fills:
        market_id = fill.market.base + fill.market.quote
        next_trade.setdefault(market_id, 180_000_000 + rng.randrange(50))
        next_order.setdefault(market_id, 3_100_000_000 + rng.randrange(50))
        next_trade[market_id] += rng.randint(1, 40)
        trade_id = next_trade[market_id]
        if fill.order_number not in order_ids:
            next_order[market_id] += rng.randint(1, 90)
            order_ids[fill.order_number] = next_order[market_id]
        order_id = order_ids[fill.order_number]
        raw = {
            "symbol": market_id,
            "id": trade_id,
            "orderId": order_id,
            "orderListId": -1,
            "price": decimal_string(fill.price, 8),
            "qty": decimal_string(fill.qty, 8),
            "quoteQty": decimal_string(fill.quote_qty, 8),
            "commission": decimal_string(fill.fee, 8),
            "commissionAsset": fill.fee_asset,
            "time": fill.time_ms,
            "isBuyer": fill.side == "buy",
            "isMaker": fill.is_maker,
            "isBestMatch": True,
        }
        truth.append(
            TruthTrade(
                trade_id=str(trade_id),
                symbol=fill.market.symbol,
                market_id=market_id,
                order_id=str(order_id),
                time_ms=fill.time_ms,
                fill=fill,
                raw=raw,
            )
        )
    return tuple(truth)
