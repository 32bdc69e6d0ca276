"""Fake Coinbase Advanced Trade REST API (api.coinbase.com) for ccxt's ``coinbase``. Side: tests.

Endpoints (what ccxt 4.5.90 calls with the options below)::

    GET /api/v3/brokerage/time                      public
    GET /api/v3/brokerage/market/products           public; product_type=FUTURE -> none
    GET /api/v3/brokerage/products                  JWT (ccxt's usePrivate variant)
    GET /api/v3/brokerage/transaction_summary       JWT; fee tier (load_markets with keys)
    GET /api/v3/brokerage/accounts                  JWT; limit <= 250, cursor pages
    GET /api/v3/brokerage/orders/historical/fills   JWT; limit <= 1000, cursor pages

ccxt config that keeps ccxt off the v2 (Coinbase App) endpoints::

    {"has": {"fetchCurrencies": False},   # else load_markets calls v2 currencies/exchange-rates
     "options": {"fetchBalance": "v3PrivateGetBrokerageAccounts",   # default is v2 accounts
                 "fetchTime": "v3PublicGetBrokerageTime"}}          # default is v2 time

Authentication is a CDP API key: key name ``organizations/{org}/apiKeys/{id}`` and an EC
P-256 private key (SEC1 PEM). Each request carries ``Authorization: Bearer <JWT>``, checked
here as Coinbase does: ES256 signature by the configured public key, ``kid`` and ``sub``
= key name, ``iss`` ``cdp`` (or ccxt's ``coinbase-cloud``), ``nbf`` <= now (5 s leeway),
``exp`` > now and at most 120 s after ``nbf``, ``uri`` = ``"{METHOD} api.coinbase.com{path}"``
(path without the query). Any failure: 401 with the bare body ``Unauthorized`` (ccxt:
AuthenticationError); the reason goes to the call log (``jwt:expired``, ...).

Fills come newest first; ``cursor`` is an opaque keyset cursor (stable while new fills
arrive), ``""`` on the last page. Commission is in the quote currency; some market buys
have ``size_in_quote: true`` (``size`` is then the quote amount), as Coinbase reports them.
Bad parameters: 400 ``{"error": "INVALID_ARGUMENT", ...}`` (ccxt: BadRequest). Rate limit:
429 with a non-JSON body and Retry-After (ccxt: RateLimitExceeded).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from multidict import MultiMapping

from .common import (
    DAY_MS,
    USD_PRICES,
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
    utc_iso,
)

__all__ = ["DEFAULT_MARKETS", "CoinbaseKey", "FakeCoinbase", "coinbase_history_spec"]

DEFAULT_MARKETS = (
    MarketSpec(base="BTC", quote="USD", price_decimals=2, qty_decimals=8, weight=4),
    MarketSpec(base="ETH", quote="USD", price_decimals=2, qty_decimals=8, weight=3),
    MarketSpec(base="ETH", quote="BTC", price_decimals=5, qty_decimals=8, weight=2),
    MarketSpec(base="SOL", quote="USD", price_decimals=2, qty_decimals=8, close_out=True),
    MarketSpec(base="DOGE", quote="USD", price_decimals=5, qty_decimals=1, weight=1),
    MarketSpec(base="XRP", quote="USD", price_decimals=4, qty_decimals=6, weight=0),
)

_JWT_LEEWAY_S = 5
_JWT_MAX_LIFETIME_S = 120
_ISSUERS = frozenset({"cdp", "coinbase-cloud"})
_FIAT = frozenset({"USD", "EUR", "GBP"})


def coinbase_history_spec(
    *,
    seed: int = 1,
    orders: int = 200,
    days: int = 60,
    start_ms: int | None = None,
    bursts: tuple[Burst, ...] = (),
) -> HistorySpec:
    """A Coinbase-like history: commission in the quote currency; ends at last midnight UTC."""
    if start_ms is None:
        start_ms = start_of_day_ms(int(time.time() * 1000)) - days * DAY_MS
    return HistorySpec(
        markets=DEFAULT_MARKETS,
        start_ms=start_ms,
        seed=seed,
        days=days,
        orders=orders,
        fee_policy="quote",
        fee_rate=Decimal("0.006"),
        fee_decimals=10,
        deposits={"USD": Decimal(2_000_000), "BTC": Decimal("1")},
        bursts=bursts,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class CoinbaseKey:
    """A CDP API key as Coinbase hands it out: key name + EC private key PEM."""

    name: str
    private_pem: str
    """SEC1 ``-----BEGIN EC PRIVATE KEY-----`` PEM: ccxt's ``secret``."""

    @classmethod
    def generate(
        cls, *, organization: str = "f4c6e1d2-fake-org", key_id: str | None = None
    ) -> CoinbaseKey:
        """A fresh P-256 key pair with a key name in Coinbase's format."""
        private = ec.generate_private_key(ec.SECP256R1())
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        ).decode()
        return cls(
            name=f"organizations/{organization}/apiKeys/{key_id or uuid.uuid4()}",
            private_pem=pem,
        )

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        """The public half, what the exchange stores."""
        private = serialization.load_pem_private_key(self.private_pem.encode(), password=None)
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        return private.public_key()


class _Refused(Exception):
    """A request refused with an ``INVALID_ARGUMENT`` body."""


class FakeCoinbase(FakeExchange):
    """Coinbase Advanced Trade with one account: the given CDP key and a generated history."""

    hostname = "api.coinbase.com"

    def __init__(
        self,
        *,
        tls: FakeTls,
        key_name: str,
        public_key: ec.EllipticCurvePublicKey,
        history: HistorySpec | None = None,
        extra_wallets: int = 260,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``extra_wallets``: zero-balance wallets beyond the traded assets (Coinbase lists a
        wallet per listed asset), so the accounts list spans more than one 250-entry page."""
        super().__init__(tls=tls, clock=clock)
        self.key_name = key_name
        self._public_key = public_key
        self.history: History = generate_history(history or coinbase_history_spec())
        self._truth = _render_trades(self.history)
        self._newest_first = sorted(
            self._truth, key=lambda t: (t.time_ms, t.trade_id), reverse=True
        )
        self._accounts = _accounts(self.history, extra_wallets)
        self._last_price = {
            m.symbol: USD_PRICES[m.base] / USD_PRICES[m.quote] for m in self.history.spec.markets
        }
        for trade in self._truth:
            self._last_price[trade.symbol] = trade.fill.price

    @property
    def ground_truth(self) -> tuple[TruthTrade, ...]:
        """Every fill, as historical/fills reports it, in time order."""
        return self._truth

    def routes(self) -> list[web.RouteDef]:
        """Advanced Trade endpoints ccxt needs."""
        base = "/api/v3/brokerage"
        return [
            web.get(f"{base}/time", self._time),
            web.get(f"{base}/market/products", self._products),
            web.get(f"{base}/products", self._private(self._products)),
            web.get(f"{base}/transaction_summary", self._private(self._transaction_summary)),
            web.get(f"{base}/accounts", self._private(self._list_accounts)),
            web.get(f"{base}/orders/historical/fills", self._private(self._fills)),
        ]

    def rate_limited(self, injection: Injection) -> web.Response:
        """429 from the gateway, not JSON (Coinbase sends text or an HTML page here)."""
        return web.Response(status=injection.status or 429, text="Too Many Requests")

    # -- plumbing

    def _private(self, handler: Callable[[web.Request], Any]) -> Callable[[web.Request], Any]:
        async def checked(request: web.Request) -> web.StreamResponse:
            reason = self._jwt_failure(request)
            if reason is not None:
                self.note_error(request, reason)
                return web.Response(status=401, text="Unauthorized")
            response: web.StreamResponse = await handler(request)
            return response

        return checked

    def _jwt_failure(self, request: web.Request) -> str | None:
        """Why the request's bearer JWT is not acceptable, or None if it is."""
        if self.faults.key_revoked:
            return "key:revoked"
        authorization = request.headers.get("Authorization", "")
        if not authorization.startswith("Bearer "):
            return "jwt:missing"
        parts = authorization.removeprefix("Bearer ").split(".")
        if len(parts) != 3:
            return "jwt:malformed"
        try:
            header = json.loads(_b64url_decode(parts[0]))
            claims = json.loads(_b64url_decode(parts[1]))
            signature = _b64url_decode(parts[2])
        except (ValueError, binascii.Error):
            return "jwt:malformed"
        if not isinstance(header, dict) or not isinstance(claims, dict):
            return "jwt:malformed"
        # Check the algorithm before anything else: never let the token pick it (alg=none).
        if header.get("alg") != "ES256" or len(signature) != 64:
            return "jwt:algorithm"
        if header.get("kid") != self.key_name:
            return "jwt:kid"
        der = encode_dss_signature(
            int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        )
        try:
            self._public_key.verify(
                der, f"{parts[0]}.{parts[1]}".encode(), ec.ECDSA(hashes.SHA256())
            )
        except InvalidSignature:
            return "jwt:signature"
        if claims.get("sub") != self.key_name or claims.get("iss") not in _ISSUERS:
            return "jwt:subject"
        not_before, expires = claims.get("nbf"), claims.get("exp")
        if not isinstance(not_before, int) or not isinstance(expires, int):
            return "jwt:times"
        now = self.now_ms() / 1000
        if not_before > now + _JWT_LEEWAY_S:
            return "jwt:not-yet-valid"
        if expires <= now or expires - not_before > _JWT_MAX_LIFETIME_S:
            return "jwt:expired"
        uris = claims.get("uris")
        uri = claims.get("uri", uris[0] if isinstance(uris, list) and uris else None)
        if uri != f"{request.method} {self.hostname}{request.path}":
            return "jwt:uri"
        return None

    def _invalid(self, request: web.Request, message: str) -> web.Response:
        self.note_error(request, "INVALID_ARGUMENT")
        return web.json_response(
            {"error": "INVALID_ARGUMENT", "error_details": message, "message": message}, status=400
        )

    # -- endpoints

    async def _time(self, request: web.Request) -> web.Response:
        now_ms = self.now_ms()
        return web.json_response(
            {
                "iso": utc_iso(now_ms, digits=0),
                "epochSeconds": str(now_ms // 1000),
                "epochMillis": str(now_ms),
            }
        )

    async def _products(self, request: web.Request) -> web.Response:
        if request.query.get("product_type", "SPOT") != "SPOT":
            return web.json_response({"products": [], "num_products": 0})
        products = [self._product(m) for m in self.history.spec.markets]
        return web.json_response({"products": products, "num_products": len(products)})

    def _product(self, market: MarketSpec) -> dict[str, Any]:
        price = decimal_string(self._last_price[market.symbol], market.price_decimals)
        product_id = f"{market.base}-{market.quote}"
        return {
            "product_id": product_id,
            "price": price,
            "price_percentage_change_24h": "0.52",
            "volume_24h": "10967.87426597",
            "volume_percentage_change_24h": "3.1",
            "base_increment": decimal_string(market.qty_step, market.qty_decimals),
            "quote_increment": decimal_string(market.price_step, market.price_decimals),
            "quote_min_size": "1",
            "quote_max_size": "150000000",
            "base_min_size": decimal_string(market.qty_step, market.qty_decimals),
            "base_max_size": "3400",
            "base_name": market.base,
            "quote_name": market.quote,
            "watched": False,
            "is_disabled": False,
            "new": False,
            "status": "online",
            "cancel_only": False,
            "limit_only": False,
            "post_only": False,
            "trading_disabled": False,
            "auction_mode": False,
            "product_type": "SPOT",
            "quote_currency_id": market.quote,
            "base_currency_id": market.base,
            "fcm_trading_session_details": None,
            "mid_market_price": "",
            "alias": "",
            "alias_to": [],
            "base_display_symbol": market.base,
            "quote_display_symbol": market.quote,
            "view_only": False,
            "price_increment": decimal_string(market.price_step, market.price_decimals),
            "display_name": product_id,
            "product_venue": "CBE",
        }

    async def _transaction_summary(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "total_volume": 0,
                "total_fees": 0,
                "fee_tier": {
                    "pricing_tier": "Advanced 1",
                    "usd_from": "0",
                    "usd_to": "10000",
                    "taker_fee_rate": "0.006",
                    "maker_fee_rate": "0.004",
                    "aop_from": "",
                    "aop_to": "",
                },
                "margin_rate": None,
                "goods_and_services_tax": None,
                "advanced_trade_only_volume": 0,
                "advanced_trade_only_fees": 0,
                "coinbase_pro_volume": 0,
                "coinbase_pro_fees": 0,
                "total_balance": "",
                "has_promo_fee": False,
            }
        )

    async def _list_accounts(self, request: web.Request) -> web.Response:
        try:
            limit = _bounded_int(request.query, "limit", default=49, maximum=250)
            start = int(_decode_cursor(request.query.get("cursor", "")) or "0")
        except (_Refused, ValueError) as exc:
            return self._invalid(request, str(exc) or "invalid cursor")
        page = self._accounts[start : start + limit]
        has_next = start + limit < len(self._accounts)
        return web.json_response(
            {
                "accounts": page,
                "has_next": has_next,
                "cursor": _encode_cursor(str(start + limit)) if has_next else "",
                "size": len(page),
            }
        )

    async def _fills(self, request: web.Request) -> web.Response:
        query = request.query
        try:
            limit = _bounded_int(query, "limit", default=100, maximum=1000)
            start = _timestamp_ms(query.get("start_sequence_timestamp"))
            end = _timestamp_ms(query.get("end_sequence_timestamp"))
            after = _decode_cursor(query.get("cursor", ""))
        except (_Refused, ValueError) as exc:
            return self._invalid(request, str(exc) or "invalid argument")
        products = set(query.getall("product_ids", [])) | set(query.getall("product_id", []))
        orders = set(query.getall("order_ids", [])) | set(query.getall("order_id", []))
        trade_ids = set(query.getall("trade_ids", []))
        key_after: tuple[int, str] | None = None
        if after:
            at, _, trade_id = after.partition(":")
            key_after = (int(at), trade_id)
        selected = [
            t
            for t in self.visible(self._newest_first)
            if (not products or t.market_id in products)
            and (not orders or t.order_id in orders)
            and (not trade_ids or t.trade_id in trade_ids)
            and (start is None or t.time_ms >= start)
            and (end is None or t.time_ms < end)
            and (key_after is None or (t.time_ms, t.trade_id) < key_after)
        ]
        page = selected[:limit]
        cursor = ""
        if len(selected) > limit:
            last = page[-1]
            cursor = _encode_cursor(f"{last.time_ms}:{last.trade_id}")
        return web.json_response({"fills": [dict(t.raw) for t in page], "cursor": cursor})


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _encode_cursor(position: str) -> str:
    return base64.urlsafe_b64encode(position.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> str:
    if not cursor:
        return ""
    try:
        return _b64url_decode(cursor).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise _Refused("invalid cursor") from exc


def _bounded_int(query: MultiMapping[str], name: str, *, default: int, maximum: int) -> int:
    text = query.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError as exc:
        raise _Refused(f"invalid {name}") from exc
    if not 1 <= value <= maximum:
        raise _Refused(f"{name} must be between 1 and {maximum}")
    return value


def _timestamp_ms(text: str | None) -> int | None:
    if not text:
        return None
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise _Refused(f"invalid timestamp {text!r}") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return int(moment.timestamp() * 1000)


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _accounts(history: History, extra_wallets: int) -> list[dict[str, Any]]:
    rng = random.Random(f"coinbase-accounts:{history.spec.seed}")
    portfolio = _uuid(rng)
    balances = dict(history.balances)
    for number in range(extra_wallets):
        balances.setdefault(f"TKN{number:03d}", Decimal(0))
    accounts = []
    for code in sorted(balances):
        amount = decimal_string(balances[code], 10 if code not in _FIAT else 2)
        created = utc_iso(history.spec.start_ms - 400 * DAY_MS, digits=3)
        accounts.append(
            {
                "uuid": _uuid(rng),
                "name": f"{code} Wallet",
                "currency": code,
                "available_balance": {"value": amount, "currency": code},
                "default": code == "USD",
                "active": True,
                "created_at": created,
                "updated_at": created,
                "deleted_at": None,
                "type": "ACCOUNT_TYPE_FIAT" if code in _FIAT else "ACCOUNT_TYPE_CRYPTO",
                "ready": True,
                "hold": {"value": "0", "currency": code},
                "retail_portfolio_id": portfolio,
                "platform": "ACCOUNT_PLATFORM_CONSUMER",
            }
        )
    return accounts


def _render_trades(history: History) -> tuple[TruthTrade, ...]:
    """Coinbase uuids, entry ids and historical/fills JSON objects."""
    rng = random.Random(f"coinbase:{history.spec.seed}")
    user_id = _uuid(rng)
    portfolio = _uuid(rng)
    order_ids: dict[int, str] = {}
    in_quote: dict[int, bool] = {}
    truth: list[TruthTrade] = []
    for fill in history.fills:
        market = fill.market
        product_id = f"{market.base}-{market.quote}"
        trade_id = _uuid(rng)
        if fill.order_number not in order_ids:
            order_ids[fill.order_number] = _uuid(rng)
            # Market buys placed by quote amount report their size in the quote currency.
            in_quote[fill.order_number] = (
                fill.order_type == "market" and fill.side == "buy" and rng.random() < 0.5
            )
        size_in_quote = in_quote[fill.order_number]
        size = (
            f"{fill.quote_qty:f}"
            if size_in_quote
            else decimal_string(fill.qty, market.qty_decimals)
        )
        raw = {
            "entry_id": hashlib.sha256(trade_id.encode()).hexdigest(),
            "trade_id": trade_id,
            "order_id": order_ids[fill.order_number],
            "trade_time": utc_iso(fill.time_ms, digits=9),
            "trade_type": "FILL",
            "price": decimal_string(fill.price, market.price_decimals),
            "size": size,
            "commission": decimal_string(fill.fee, history.spec.fee_decimals),
            "product_id": product_id,
            "sequence_timestamp": utc_iso(fill.time_ms, digits=6),
            "liquidity_indicator": "MAKER" if fill.is_maker else "TAKER",
            "size_in_quote": size_in_quote,
            "user_id": user_id,
            "side": fill.side.upper(),
            "retail_portfolio_id": portfolio,
        }
        truth.append(
            TruthTrade(
                trade_id=trade_id,
                symbol=market.symbol,
                market_id=product_id,
                order_id=order_ids[fill.order_number],
                time_ms=fill.time_ms,
                fill=fill,
                raw=raw,
            )
        )
    return tuple(truth)
