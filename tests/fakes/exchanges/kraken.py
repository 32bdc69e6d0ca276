"""Fake Kraken spot REST API (api.kraken.com) for ccxt's ``kraken`` class. Side: tests.

Endpoints (what ccxt 4.5.90 calls for markets, time, balances and trades)::

    GET|POST /0/public/Time, /0/public/Assets, /0/public/AssetPairs, /0/public/SystemStatus
    POST     /0/private/Balance, /0/private/BalanceEx (ccxt's fetch_balance)
    POST     /0/private/TradesHistory

No special ccxt options are needed: load_markets calls Assets then AssetPairs.

Every reply is Kraken's envelope ``{"error": [...], "result": ...}``, HTTP 200 even for
errors, as Kraken does. Private requests are checked as Kraken does:

- ``API-Key`` header unknown, missing or revoked: ``EAPI:Invalid key``;
- ``API-Sign`` = base64(HMAC-SHA512(base64decode(secret), uri_path + SHA256(nonce +
  POST body))), else ``EAPI:Invalid signature`` (ccxt 4.5.90 has no mapping for this
  string: it raises a plain ExchangeError, not AuthenticationError);
- ``nonce`` must be greater than every nonce accepted before for the key, else
  ``EAPI:Invalid nonce`` (ccxt: InvalidNonce). Only a correctly signed request advances
  the stored nonce, so forged requests cannot burn nonces.

TradesHistory: 50 trades per page, NEWEST first, ``ofs`` offset into the filtered list,
``count`` = size of the filtered list (omitted with ``without_count``); ``start``
(exclusive) and ``end`` (inclusive) are unix seconds or a trade txid. Fees are in the
quote currency (Kraken's ``fee``); ``pair`` is the pair key (``XXBTZUSD``). Trade ids
are txids (``THVRQM-33VKH-UCI7BS``), unique across pairs.

Rate limit: ``EAPI:Rate limit exceeded`` (ccxt: DDoSProtection), HTTP 200 unless the
injection says otherwise, plus the injected Retry-After header.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import random
import time
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

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

__all__ = ["DEFAULT_MARKETS", "FakeKraken", "kraken_history_spec"]

DEFAULT_MARKETS = (
    MarketSpec(base="BTC", quote="USD", price_decimals=1, qty_decimals=8, weight=4),
    MarketSpec(base="ETH", quote="USD", price_decimals=2, qty_decimals=8, weight=3),
    MarketSpec(base="ETH", quote="BTC", price_decimals=5, qty_decimals=8, weight=2),
    MarketSpec(base="SOL", quote="USD", price_decimals=2, qty_decimals=8, close_out=True),
    MarketSpec(base="DOT", quote="EUR", price_decimals=4, qty_decimals=8, weight=1),
    MarketSpec(base="ADA", quote="USD", price_decimals=6, qty_decimals=8, weight=0),
)

PAGE_SIZE = 50
"""TradesHistory returns 50 results at a time (Kraken docs)."""

# Kraken asset ids: (id, altname, decimals, display_decimals). X/Z-prefixed ids are the
# legacy four-letter codes; ccxt maps XXBT -> XBT -> BTC.
_ASSETS: Mapping[str, tuple[str, str, int, int]] = {
    "BTC": ("XXBT", "XBT", 10, 5),
    "ETH": ("XETH", "ETH", 10, 5),
    "USD": ("ZUSD", "USD", 4, 2),
    "EUR": ("ZEUR", "EUR", 4, 2),
    "SOL": ("SOL", "SOL", 10, 5),
    "DOT": ("DOT", "DOT", 10, 8),
    "ADA": ("ADA", "ADA", 8, 6),
    "USDT": ("USDT", "USDT", 8, 4),
}
_TXID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


def kraken_history_spec(
    *,
    seed: int = 1,
    orders: int = 200,
    days: int = 60,
    start_ms: int | None = None,
    bursts: tuple[Burst, ...] = (),
) -> HistorySpec:
    """A Kraken-like history: fees in the quote currency; ends at last midnight UTC."""
    if start_ms is None:
        start_ms = start_of_day_ms(int(time.time() * 1000)) - days * DAY_MS
    return HistorySpec(
        markets=DEFAULT_MARKETS,
        start_ms=start_ms,
        seed=seed,
        days=days,
        orders=orders,
        fee_policy="quote",
        fee_rate=Decimal("0.0026"),
        fee_decimals=5,
        deposits={"USD": Decimal(2_000_000), "EUR": Decimal(300_000), "BTC": Decimal("1")},
        bursts=bursts,
    )


def pair_key(market: MarketSpec) -> str:
    """Kraken's pair id: legacy X/Z assets concatenate ids (XXBTZUSD), others the altname."""
    base_id, base_alt = _ASSETS[market.base][:2]
    quote_id, quote_alt = _ASSETS[market.quote][:2]
    legacy = len(base_id) == 4 and base_id[0] in "XZ" and len(quote_id) == 4 and quote_id[0] in "XZ"
    return base_id + quote_id if legacy else base_alt + quote_alt


class FakeKraken(FakeExchange):
    """Kraken spot with one account: the given API key/secret and a generated history."""

    hostname = "api.kraken.com"

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
        self._secret = base64.b64decode(api_secret)
        self.last_nonce = 0
        """Highest nonce accepted so far for the key."""
        self.history: History = generate_history(history or kraken_history_spec())
        self._truth = _render_trades(self.history)
        self._newest_first = sorted(self._truth, key=lambda t: t.time_ms, reverse=True)
        self._by_txid = {t.trade_id: t for t in self._truth}

    @property
    def ground_truth(self) -> tuple[TruthTrade, ...]:
        """Every trade, as TradesHistory reports it (without the txid key), in time order."""
        return self._truth

    def routes(self) -> list[web.RouteDef]:
        """Kraken spot endpoints ccxt needs."""
        public = {
            "Time": self._time,
            "Assets": self._assets,
            "AssetPairs": self._asset_pairs,
            "SystemStatus": self._system_status,
        }
        private = {
            "Balance": self._balance,
            "BalanceEx": self._balance_ex,
            "TradesHistory": self._trades_history,
        }
        routes = [web.get(f"/0/public/{name}", handler) for name, handler in public.items()]
        routes += [web.post(f"/0/public/{name}", handler) for name, handler in public.items()]
        routes += [
            web.post(f"/0/private/{name}", self._private(handler))
            for name, handler in private.items()
        ]
        return routes

    def rate_limited(self, injection: Injection) -> web.Response:
        """Kraken's rate-limit error in its envelope."""
        return web.json_response(
            {"error": ["EAPI:Rate limit exceeded"]}, status=injection.status or 200
        )

    # -- plumbing

    def _fail(self, request: web.Request, error: str) -> web.Response:
        self.note_error(request, error)
        return web.json_response({"error": [error]})

    @staticmethod
    def _ok(result: Any) -> web.Response:
        return web.json_response({"error": [], "result": result})

    def _private(
        self, handler: Callable[[web.Request, Mapping[str, str]], web.Response]
    ) -> Callable[[web.Request], Any]:
        async def checked(request: web.Request) -> web.Response:
            body = await request.text()
            key = request.headers.get("API-Key", "")
            if self.faults.key_revoked or not hmac.compare_digest(key, self.api_key):
                return self._fail(request, "EAPI:Invalid key")
            form = dict(parse_qsl(body, keep_blank_values=True))
            nonce_text = form.get("nonce", "")
            if not nonce_text.isdigit():
                return self._fail(request, "EAPI:Invalid nonce")
            digest = hashlib.sha256((nonce_text + body).encode()).digest()
            expected = hmac.new(
                self._secret, request.path.encode() + digest, hashlib.sha512
            ).digest()
            try:
                signature = base64.b64decode(request.headers.get("API-Sign", ""), validate=True)
            except binascii.Error:
                signature = b""
            if not hmac.compare_digest(expected, signature):
                return self._fail(request, "EAPI:Invalid signature")
            nonce = int(nonce_text)
            if nonce <= self.last_nonce:
                return self._fail(request, "EAPI:Invalid nonce")
            self.last_nonce = nonce
            return handler(request, form)

        return checked

    # -- public

    async def _time(self, request: web.Request) -> web.Response:
        now = dt.datetime.fromtimestamp(self.now_ms() / 1000, dt.UTC)
        return self._ok(
            {
                "unixtime": int(now.timestamp()),
                "rfc1123": now.strftime("%a, %d %b %y %H:%M:%S +0000"),
            }
        )

    async def _system_status(self, request: web.Request) -> web.Response:
        now = dt.datetime.fromtimestamp(self.now_ms() / 1000, dt.UTC)
        return self._ok({"status": "online", "timestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ")})

    async def _assets(self, request: web.Request) -> web.Response:
        used = {m.base for m in self.history.spec.markets} | {
            m.quote for m in self.history.spec.markets
        }
        result = {}
        for code in sorted(used):
            asset_id, altname, decimals, display = _ASSETS[code]
            result[asset_id] = {
                "aclass": "currency",
                "altname": altname,
                "decimals": decimals,
                "display_decimals": display,
                "collateral_value": 1.0 if code in {"USD", "EUR", "USDT"} else 0.9,
                "status": "enabled",
            }
        return self._ok(result)

    async def _asset_pairs(self, request: web.Request) -> web.Response:
        return self._ok({pair_key(m): _pair_info(m) for m in self.history.spec.markets})

    # -- private

    def _balances(self) -> dict[str, str]:
        result = {}
        for code, amount in sorted(self.history.balances.items()):
            asset_id, _, decimals, _ = _ASSETS[code]
            result[asset_id] = decimal_string(amount, decimals)
        return result

    def _balance(self, request: web.Request, form: Mapping[str, str]) -> web.Response:
        return self._ok(self._balances())

    def _balance_ex(self, request: web.Request, form: Mapping[str, str]) -> web.Response:
        return self._ok(
            {
                asset: {
                    "balance": amount,
                    "credit": "0.0000",
                    "credit_used": "0.0000",
                    "hold_trade": "0.0000",
                }
                for asset, amount in self._balances().items()
            }
        )

    def _trades_history(self, request: web.Request, form: Mapping[str, str]) -> web.Response:
        try:
            start = self._time_bound(form.get("start"))
            end = self._time_bound(form.get("end"))
            offset = int(form.get("ofs", "0") or "0")
        except ValueError:
            return self._fail(request, "EGeneral:Invalid arguments")
        if offset < 0:
            return self._fail(request, "EGeneral:Invalid arguments")
        selected = [
            t
            for t in self.visible(self._newest_first)
            if (start is None or t.time_ms > start) and (end is None or t.time_ms <= end)
        ]
        page = selected[offset : offset + PAGE_SIZE]
        result: dict[str, Any] = {"trades": {t.trade_id: dict(t.raw) for t in page}}
        if form.get("without_count", "false").lower() != "true":
            result["count"] = len(selected)
        return self._ok(result)

    def _time_bound(self, value: str | None) -> int | None:
        """A start/end bound in ms: unix seconds (may be fractional) or a trade txid."""
        if value is None or value == "":
            return None
        if value in self._by_txid:
            return self._by_txid[value].time_ms
        return int(Decimal(value) * 1000)


def _pair_info(market: MarketSpec) -> dict[str, Any]:
    base_id, base_alt = _ASSETS[market.base][:2]
    quote_id, quote_alt = _ASSETS[market.quote][:2]
    return {
        "altname": base_alt + quote_alt,
        "wsname": f"{base_alt}/{quote_alt}",
        "aclass_base": "currency",
        "base": base_id,
        "aclass_quote": "currency",
        "quote": quote_id,
        "lot": "unit",
        "cost_decimals": _cost_decimals(market),
        "pair_decimals": market.price_decimals,
        "lot_decimals": market.qty_decimals,
        "lot_multiplier": 1,
        "leverage_buy": [],
        "leverage_sell": [],
        "fees": [[0, 0.26], [50000, 0.24], [100000, 0.22], [250000, 0.2], [500000, 0.18]],
        "fees_maker": [[0, 0.16], [50000, 0.14], [100000, 0.12], [250000, 0.1], [500000, 0.08]],
        "fee_volume_currency": "ZUSD",
        "margin_call": 80,
        "margin_stop": 40,
        "ordermin": decimal_string(market.qty_step * 1000, market.qty_decimals),
        "costmin": "0.5",
        "tick_size": decimal_string(market.price_step, market.price_decimals),
        "status": "online",
    }


def _cost_decimals(market: MarketSpec) -> int:
    return 5 if market.quote in {"USD", "EUR"} else 10


def _txid(rng: random.Random, prefix: str) -> str:
    chars = [rng.choice(_TXID_ALPHABET) for _ in range(16)]
    return f"{prefix}{''.join(chars[:5])}-{''.join(chars[5:10])}-{''.join(chars[10:])}"


def _render_trades(history: History) -> tuple[TruthTrade, ...]:
    """Kraken txids, per-pair trade_id counters and TradesHistory JSON objects."""
    rng = random.Random(f"kraken:{history.spec.seed}")
    order_txids: dict[int, str] = {}
    next_trade_id: dict[str, int] = {}
    seen: set[str] = set()
    truth: list[TruthTrade] = []
    for fill in history.fills:
        market = fill.market
        key = pair_key(market)
        txid = _txid(rng, "T")
        while txid in seen:
            txid = _txid(rng, "T")
        seen.add(txid)
        if fill.order_number not in order_txids:
            order_txids[fill.order_number] = _txid(rng, "O")
        next_trade_id.setdefault(key, 40_000_000 + rng.randrange(1_000_000))
        next_trade_id[key] += rng.randint(1, 500)
        cost_decimals = _cost_decimals(market)
        raw = {
            "ordertxid": order_txids[fill.order_number],
            "postxid": _txid(rng, "T"),
            "pair": key,
            "time": fill.time_ms / 1000,
            "type": fill.side,
            "ordertype": fill.order_type,
            "price": decimal_string(fill.price, market.price_decimals),
            "cost": decimal_string(fill.quote_qty, cost_decimals),
            "fee": decimal_string(fill.fee, cost_decimals),
            "vol": decimal_string(fill.qty, market.qty_decimals),
            "margin": decimal_string(Decimal(0), cost_decimals),
            "misc": "",
            "trade_id": next_trade_id[key],
            "maker": fill.is_maker,
        }
        truth.append(
            TruthTrade(
                trade_id=txid,
                symbol=market.symbol,
                market_id=key,
                order_id=order_txids[fill.order_number],
                time_ms=fill.time_ms,
                fill=fill,
                raw=raw,
            )
        )
    return tuple(truth)
