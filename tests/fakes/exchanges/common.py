"""What the fake exchanges share: trade history, faults, call log, TLS, server runner. Side: tests.

Pieces, in the order a test meets them:

- ``create_fake_tls(directory)``: a throw-away test CA and ONE server certificate valid
  for the real API hostnames ccxt uses (``api.binance.com``, ``api.kraken.com``,
  ``api.coinbase.com``) plus ``127.0.0.1`` and ``localhost``. ``ca.pem`` is written for
  clients; clients verify the REAL hostname, so the same files work when an egress proxy
  later maps ``api.binance.com:443`` to ``127.0.0.1:PORT``.
- ``HistorySpec`` -> ``generate_history(spec)``: a deterministic, seedable account
  history (pure: no I/O, no clock). Orders with one or more fills (partial fills), fees in
  the base asset, the quote asset or a third asset (BNB), markets whose base asset is sold
  off completely before the end (no longer in the balances), optional bursts (many fills
  in one day, to overflow one 24 h page). Final balances follow from deposits and fills.
  Each fake renders the generic ``Fill`` records into its exchange's exact JSON and
  exposes the result as ``ground_truth`` (``TruthTrade``: the id ccxt reports, the unified
  symbol, and ``raw``, the object exactly as the exchange serves it).
- ``Faults``: switchable at run time: 429/418 with Retry-After, 5xx bursts, slow
  responses, a revoked key, clock skew. Injections apply to the next N matching requests.
- ``Call``: one entry per request in ``fake.calls`` (method, path, params without the
  signature, status, exchange error code, fault injected).
- ``FakeExchange``: the aiohttp HTTPS server base class, bound to 127.0.0.1 only.
- ``LoopbackResolver`` / ``fake_client_session``: an aiohttp client session whose DNS maps
  each fake's real hostname to 127.0.0.1 and its port, refuses every other name (so a
  test can never reach the Internet), and verifies TLS against ``ca.pem``. Hand it to
  ccxt as ``session=`` and ccxt runs unmodified against the fakes, real URLs included.
"""

from __future__ import annotations

import abc
import asyncio
import dataclasses
import datetime as dt
import os
import random
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

import aiohttp
import trustme
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

__all__ = [
    "DAY_MS",
    "EXCHANGE_HOSTNAMES",
    "USD_PRICES",
    "Burst",
    "Call",
    "FakeExchange",
    "FakeTls",
    "Faults",
    "Fill",
    "History",
    "HistorySpec",
    "Injection",
    "LoopbackResolver",
    "MarketSpec",
    "TruthTrade",
    "create_fake_tls",
    "decimal_string",
    "fake_client_session",
    "generate_history",
    "start_of_day_ms",
    "utc_iso",
]

DAY_MS = 86_400_000

EXCHANGE_HOSTNAMES = ("api.binance.com", "api.kraken.com", "api.coinbase.com")
"""The hosts ccxt 4.5.90 talks to for the endpoints the fakes serve (``urls['api']``)."""

# Rough USD prices: only the starting point of each market's random walk and of fee
# conversions, so that amounts look plausible.
USD_PRICES: Mapping[str, Decimal] = {
    "BTC": Decimal("60000"),
    "ETH": Decimal("3000"),
    "BNB": Decimal("550"),
    "SOL": Decimal("150"),
    "DOGE": Decimal("0.15"),
    "XRP": Decimal("0.5"),
    "DOT": Decimal("7"),
    "ADA": Decimal("0.45"),
    "USDT": Decimal("1"),
    "USDC": Decimal("1"),
    "USD": Decimal("1"),
    "EUR": Decimal("1.08"),
}


def decimal_string(value: Decimal, places: int) -> str:
    """``value`` with exactly ``places`` decimals, plain notation (``"0.00100000"``)."""
    return f"{value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP):f}"


def start_of_day_ms(now_ms: int) -> int:
    """Midnight UTC at or before ``now_ms``."""
    return now_ms - now_ms % DAY_MS


# --------------------------------------------------------------------------- TLS


@dataclass(frozen=True, slots=True, kw_only=True)
class FakeTls:
    """Where the test CA and the fakes' server certificate are; builds the SSL contexts."""

    ca_file: Path
    """PEM of the test CA: clients (ccxt via its aiohttp session, curl, the enclave in
    simulator mode) trust this file and nothing else."""
    server_file: Path
    """PEM of the server key, certificate and chain; 0600. Tests only: never a real key."""
    hostnames: tuple[str, ...]
    """Names the server certificate is valid for."""

    def server_context(self) -> ssl.SSLContext:
        """TLS 1.2+ server context presenting the fakes' certificate."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.server_file)
        return context

    def client_context(self) -> ssl.SSLContext:
        """Verifying client context (hostname check on) that trusts only ``ca_file``."""
        return ssl.create_default_context(cafile=str(self.ca_file))


def create_fake_tls(directory: Path, *, hostnames: Iterable[str] = EXCHANGE_HOSTNAMES) -> FakeTls:
    """Write a test CA and a certificate for ``hostnames`` + loopback into ``directory``."""
    names = (*hostnames, "127.0.0.1", "localhost")
    directory.mkdir(parents=True, exist_ok=True)
    authority = trustme.CA(organization_name="perf-aggregator fake exchanges (tests only)")
    leaf = authority.issue_cert(*names)
    ca_file = directory / "ca.pem"
    server_file = directory / "fake-exchanges.pem"
    authority.cert_pem.write_to_path(str(ca_file))
    # Create 0600 before writing the key so it is never world-readable, even briefly.
    server_file.touch(mode=0o600)
    os.chmod(server_file, 0o600)
    leaf.private_key_and_cert_chain_pem.write_to_path(str(server_file))
    return FakeTls(ca_file=ca_file, server_file=server_file, hostnames=names)


# --------------------------------------------------------------------------- history


@dataclass(frozen=True, slots=True, kw_only=True)
class MarketSpec:
    """One spot market of a generated history."""

    base: str
    quote: str
    price_decimals: int
    qty_decimals: int
    weight: int = 1
    """Relative share of the orders; 0 = listed but never traded."""
    close_out: bool = False
    """Sell the whole base holding at the end, so the asset is no longer held. Buy fees in
    this market are then never taken in the base asset (the holding stays exact)."""

    @property
    def symbol(self) -> str:
        """ccxt's unified symbol, ``BASE/QUOTE``."""
        return f"{self.base}/{self.quote}"

    @property
    def qty_step(self) -> Decimal:
        """Smallest quantity increment (the lot step)."""
        return Decimal(1).scaleb(-self.qty_decimals)

    @property
    def price_step(self) -> Decimal:
        """Smallest price increment (the tick)."""
        return Decimal(1).scaleb(-self.price_decimals)


@dataclass(frozen=True, slots=True, kw_only=True)
class Burst:
    """Extra orders packed into one day of one market (to overflow a 1000-trade page)."""

    symbol: str
    day: int
    orders: int


@dataclass(frozen=True, slots=True, kw_only=True)
class HistorySpec:
    """Everything that determines a generated history: same spec, same history."""

    markets: tuple[MarketSpec, ...]
    start_ms: int
    seed: int = 1
    days: int = 60
    orders: int = 200
    max_fills_per_order: int = 4
    fee_rate: Decimal = Decimal("0.001")
    fee_decimals: int = 8
    """Fees are rounded to this many decimals (half up) and are never zero."""
    fee_policy: Literal["received", "quote"] = "quote"
    """``received``: fee in the asset received (base on a buy, quote on a sell), as Binance
    charges it; ``quote``: always the quote asset (Kraken's and Coinbase's fills)."""
    third_fee_asset: str | None = None
    """Asset some orders pay their fees in (Binance: BNB), at a 25 % discount."""
    third_fee_share: float = 0.0
    deposits: Mapping[str, Decimal] = field(default_factory=dict)
    """Holdings before the first order. Orders never spend more than is held."""
    bursts: tuple[Burst, ...] = ()

    @property
    def end_ms(self) -> int:
        """End of the history window (exclusive)."""
        return self.start_ms + self.days * DAY_MS

    def market(self, symbol: str) -> MarketSpec:
        """The market with unified symbol ``symbol``."""
        for market in self.markets:
            if market.symbol == symbol:
                return market
        raise KeyError(symbol)


@dataclass(frozen=True, slots=True, kw_only=True)
class Fill:
    """One execution of one of the account's orders, exchange-neutral."""

    market: MarketSpec
    order_number: int
    """Global order sequence number, in placement order."""
    fill_number: int
    """0 for an order's first fill, 1 for the second (a partial fill), ..."""
    time_ms: int
    side: Literal["buy", "sell"]
    order_type: Literal["limit", "market"]
    is_maker: bool
    price: Decimal
    qty: Decimal
    fee: Decimal
    fee_asset: str

    @property
    def quote_qty(self) -> Decimal:
        """price x qty, exact."""
        return self.price * self.qty


@dataclass(frozen=True, slots=True, kw_only=True)
class History:
    """A generated history: fills in time order and the holdings they leave."""

    spec: HistorySpec
    fills: tuple[Fill, ...]
    balances: Mapping[str, Decimal]
    """Final holdings of every asset deposited or traded (zero included)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TruthTrade:
    """One trade of a fake's ground truth, as the exchange reports it."""

    trade_id: str
    """What ccxt reports as ``trade['id']``. Binance ids are per symbol: key on
    ``(symbol, trade_id)``, never the id alone."""
    symbol: str
    market_id: str
    order_id: str
    time_ms: int
    fill: Fill
    raw: Mapping[str, Any]
    """The trade object exactly as served (JSON types, price/qty/fee strings)."""

    @property
    def key(self) -> tuple[str, str]:
        """``(symbol, trade_id)``: unique on every exchange."""
        return (self.symbol, self.trade_id)


def generate_history(spec: HistorySpec) -> History:
    """Play ``spec``'s orders against its deposits; pure and deterministic in ``spec``."""
    rng = random.Random(spec.seed)
    span = spec.days * DAY_MS
    tradable = [m for m in spec.markets if m.weight > 0]
    weights = [m.weight for m in tradable]
    placements: list[tuple[int, MarketSpec]] = []
    for _ in range(spec.orders):
        market = rng.choices(tradable, weights)[0]
        placements.append((spec.start_ms + rng.randrange(span - 3_600_000), market))
    for burst in spec.bursts:
        day_start = spec.start_ms + burst.day * DAY_MS
        market = spec.market(burst.symbol)
        placements.extend(
            (day_start + rng.randrange(DAY_MS - 3_600_000), market) for _ in range(burst.orders)
        )
    placements.sort(key=lambda placement: placement[0])

    holdings: dict[str, Decimal] = {
        asset: Decimal(amount) for asset, amount in spec.deposits.items()
    }
    for market in spec.markets:
        holdings.setdefault(market.base, Decimal(0))
        holdings.setdefault(market.quote, Decimal(0))
    prices = {m.symbol: USD_PRICES[m.base] / USD_PRICES[m.quote] for m in spec.markets}
    fills: list[Fill] = []
    order_number = 0

    def play(
        at_ms: int,
        market: MarketSpec,
        side: Literal["buy", "sell"],
        qty: Decimal,
        order_type: Literal["limit", "market"],
        parts: int,
    ) -> None:
        nonlocal order_number
        price = prices[market.symbol].quantize(market.price_step, rounding=ROUND_HALF_UP)
        units = int(qty / market.qty_step)
        parts = max(1, min(parts, units))
        cuts = sorted(rng.sample(range(1, units), parts - 1)) if parts > 1 else []
        bounds = [0, *cuts, units]
        use_third = (
            spec.third_fee_asset is not None
            and spec.third_fee_asset in holdings
            and rng.random() < spec.third_fee_share
        )
        fill_time = at_ms
        for number in range(parts):
            part = (bounds[number + 1] - bounds[number]) * market.qty_step
            fill_price = price
            if order_type == "market" and number > 0:
                # A market order walks the book: each further fill a few ticks worse.
                ticks = market.price_step * number * rng.randint(1, 3)
                fill_price = (
                    price + ticks if side == "buy" else max(price - ticks, market.price_step)
                )
            quote_qty = fill_price * part
            fee_asset, fee = _fee(spec, market, side, part, quote_qty, use_third, holdings)
            if side == "buy":
                holdings[market.base] += part
                holdings[market.quote] -= quote_qty
            else:
                holdings[market.base] -= part
                holdings[market.quote] += quote_qty
            holdings[fee_asset] -= fee
            fills.append(
                Fill(
                    market=market,
                    order_number=order_number,
                    fill_number=number,
                    time_ms=fill_time,
                    side=side,
                    order_type=order_type,
                    is_maker=order_type == "limit" and rng.random() < 0.8,
                    price=fill_price,
                    qty=part,
                    fee=fee,
                    fee_asset=fee_asset,
                )
            )
            # Fills of one order share a millisecond or follow within a few.
            fill_time += rng.choice((0, 0, 1, 2, 15, 140))
        order_number += 1

    for at_ms, market in placements:
        prices[market.symbol] *= Decimal(str(round(1 + rng.gauss(0, 0.004), 6)))
        price = prices[market.symbol]
        notional_usd = Decimal(str(round(rng.lognormvariate(5.5, 0.8), 2)))
        qty = (notional_usd / USD_PRICES[market.base]).quantize(
            market.qty_step, rounding=ROUND_DOWN
        )
        qty = max(qty, market.qty_step)
        held = holdings[market.base].quantize(market.qty_step, rounding=ROUND_DOWN)
        # Sell when holding enough and the coin says so, else buy if the quote (plus a
        # fee margin) is there, else sell what is held; never go negative.
        side: Literal["buy", "sell"]
        if held >= qty and rng.random() < 0.45:
            side = "sell"
        elif holdings[market.quote] >= qty * price * Decimal("1.05"):
            side = "buy"
        elif held > 0:
            side, qty = "sell", min(qty, held)
        else:
            continue
        order_type: Literal["limit", "market"] = "limit" if rng.random() < 0.6 else "market"
        play(at_ms, market, side, qty, order_type, rng.randint(1, spec.max_fills_per_order))

    # Close-out: sell everything held of the base of markets marked close_out, shortly
    # before the end, so the asset shows a zero balance but still has a trade history.
    close_at = spec.end_ms - 1_800_000
    for market in spec.markets:
        held = holdings[market.base].quantize(market.qty_step, rounding=ROUND_DOWN)
        if market.close_out and held > 0:
            play(close_at, market, "sell", held, "market", 2)
            close_at += 60_000

    fills.sort(key=lambda f: (f.time_ms, f.order_number, f.fill_number))
    return History(spec=spec, fills=tuple(fills), balances=dict(holdings))


def _fee(
    spec: HistorySpec,
    market: MarketSpec,
    side: Literal["buy", "sell"],
    qty: Decimal,
    quote_qty: Decimal,
    use_third: bool,
    holdings: Mapping[str, Decimal],
) -> tuple[str, Decimal]:
    """(asset, amount) of one fill's fee, rounded to ``spec.fee_decimals``, never zero."""
    step = Decimal(1).scaleb(-spec.fee_decimals)
    if use_third and spec.third_fee_asset is not None:
        third = spec.third_fee_asset
        value_usd = quote_qty * USD_PRICES[market.quote]
        fee = (value_usd * spec.fee_rate * Decimal("0.75") / USD_PRICES[third]).quantize(step)
        fee = max(fee, step)
        if holdings[third] >= fee * 2:
            return third, fee
    in_base = spec.fee_policy == "received" and side == "buy" and not market.close_out
    if in_base:
        return market.base, max((qty * spec.fee_rate).quantize(step), step)
    return market.quote, max((quote_qty * spec.fee_rate).quantize(step), step)


# --------------------------------------------------------------------------- faults


@dataclass(slots=True, kw_only=True)
class Injection:
    """One armed fault: fires on the next ``remaining`` requests whose path contains ``path``."""

    kind: Literal["rate_limit", "server_error", "slow"]
    remaining: int
    path: str | None = None
    retry_after_s: int = 1
    status: int | None = None
    delay_s: float = 0.0


class Faults:
    """Faults a fake injects, switchable while it runs. Pure state: the server consults it."""

    def __init__(self) -> None:
        self._armed: list[Injection] = []
        self.key_revoked = False
        """True: every private request is refused as with a deleted/unknown API key."""
        self.clock_skew_ms = 0
        """Added to the fake's clock (server time, recvWindow and JWT checks)."""

    def rate_limit(
        self,
        *,
        times: int = 1,
        retry_after_s: int = 1,
        status: int | None = None,
        path: str | None = None,
    ) -> None:
        """Answer the next ``times`` requests with the exchange's rate-limit reply + Retry-After.

        ``status``: None = the exchange's usual one (Binance 429, Kraken 200 with
        ``EAPI:Rate limit exceeded``, Coinbase 429); Binance's IP ban is ``status=418``.
        """
        self._armed.append(
            Injection(
                kind="rate_limit",
                remaining=times,
                path=path,
                retry_after_s=retry_after_s,
                status=status,
            )
        )

    def server_error(self, *, times: int = 1, status: int = 503, path: str | None = None) -> None:
        """Answer the next ``times`` requests with a bare 5xx from the edge (not JSON)."""
        self._armed.append(
            Injection(kind="server_error", remaining=times, path=path, status=status)
        )

    def slow(self, *, delay_s: float, times: int = 1, path: str | None = None) -> None:
        """Delay the next ``times`` requests by ``delay_s`` before answering them normally."""
        self._armed.append(Injection(kind="slow", remaining=times, path=path, delay_s=delay_s))

    def revoke_key(self) -> None:
        """Refuse the configured key from now on (as if deleted on the exchange)."""
        self.key_revoked = True

    def restore_key(self) -> None:
        """Accept the configured key again."""
        self.key_revoked = False

    def clear(self) -> None:
        """Disarm everything: no injections, key valid, no clock skew."""
        self._armed.clear()
        self.key_revoked = False
        self.clock_skew_ms = 0

    @property
    def pending(self) -> int:
        """Requests still to be hit by armed injections."""
        return sum(injection.remaining for injection in self._armed)

    def take(self, path: str) -> Injection | None:
        """The injection for a request to ``path`` (consuming one use), or None."""
        for injection in self._armed:
            if injection.path is None or injection.path in path:
                injection.remaining -= 1
                if injection.remaining <= 0:
                    self._armed.remove(injection)
                return dataclasses.replace(injection)
        return None


# --------------------------------------------------------------------------- call log


@dataclass(frozen=True, slots=True, kw_only=True)
class Call:
    """One request a fake received."""

    method: str
    path: str
    params: Mapping[str, str]
    """Query and form parameters, without ``signature`` (Binance). Headers (API key,
    signatures, bearer tokens) are never recorded."""
    status: int
    error: str | None = None
    """The exchange's error code or string (``-1021``, ``EAPI:Invalid nonce``, ...)."""
    fault: str | None = None
    """The injected fault that answered, if any."""
    at: float = field(default_factory=time.time)
    """When the request was answered (Unix seconds), to check backoff timing."""


# --------------------------------------------------------------------------- server

_ERROR_KEY = web.RequestKey("fake_error", str)


class FakeExchange(abc.ABC):
    """An HTTPS fake of one exchange's REST API on 127.0.0.1. Subclasses add the routes."""

    hostname: ClassVar[str]
    """The real API host ccxt uses for this exchange."""
    history: History
    """The generated account history this fake serves (subclasses set it)."""

    def __init__(self, *, tls: FakeTls, clock: Callable[[], float] = time.time) -> None:
        if self.hostname not in tls.hostnames:
            raise ValueError(f"the fake TLS certificate does not cover {self.hostname}")
        self.tls = tls
        self.faults = Faults()
        self.calls: list[Call] = []
        self.visible_until_ms: int | None = None
        """Serve only trades at or before this time (None: all): reveal history over time."""
        self._clock = clock
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    # -- lifecycle

    async def start(self, port: int = 0) -> None:
        """Listen on 127.0.0.1:``port`` (0: any free port) with TLS."""
        app = web.Application(middlewares=[self._middleware])
        app.add_routes(self.routes())
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port, ssl_context=self.tls.server_context())
        await site.start()
        address = self._runner.addresses[0]
        self._port = int(address[1])

    async def stop(self) -> None:
        """Close the listener and all connections."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        """The TCP port the fake listens on (after ``start``)."""
        if self._port is None:
            raise RuntimeError("fake exchange not started")
        return self._port

    # -- what subclasses provide

    @abc.abstractmethod
    def routes(self) -> list[web.RouteDef]:
        """The REST endpoints."""

    @abc.abstractmethod
    def rate_limited(self, injection: Injection) -> web.Response:
        """This exchange's reply to a client over its rate limit."""

    @property
    @abc.abstractmethod
    def ground_truth(self) -> tuple[TruthTrade, ...]:
        """Every trade of the account, as this exchange reports it, in time order."""

    def truth_keys(self) -> set[tuple[str, str]]:
        """``(symbol, trade_id)`` of every trade currently served (honours visible_until_ms)."""
        return {t.key for t in self.visible(self.ground_truth)}

    # -- helpers for subclasses

    def now_ms(self) -> int:
        """The fake's clock in ms, including the injected skew."""
        return int(self._clock() * 1000) + self.faults.clock_skew_ms

    def visible(self, trades: Iterable[TruthTrade]) -> list[TruthTrade]:
        """``trades`` without those after ``visible_until_ms``."""
        limit = self.visible_until_ms
        return [t for t in trades if limit is None or t.time_ms <= limit]

    @staticmethod
    def note_error(request: web.Request, error: str) -> None:
        """Record the exchange error code of this request for the call log."""
        request[_ERROR_KEY] = error

    @web.middleware
    async def _middleware(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        params = dict(request.query)
        if request.method == "POST" and request.content_type == "application/x-www-form-urlencoded":
            params.update({k: str(v) for k, v in (await request.post()).items()})
        params.pop("signature", None)
        injection = self.faults.take(request.path)
        fault: str | None = None
        response: web.StreamResponse
        if injection is not None and injection.kind == "slow":
            fault = "slow"
            await asyncio.sleep(injection.delay_s)
            injection = None
        if injection is not None and injection.kind == "rate_limit":
            fault = "rate_limit"
            response = self.rate_limited(injection)
            response.headers["Retry-After"] = str(injection.retry_after_s)
        elif injection is not None and injection.kind == "server_error":
            fault = "server_error"
            status = injection.status or 503
            response = web.Response(
                status=status,
                text=f"<html><body><h1>{status}</h1>upstream unavailable</body></html>",
                content_type="text/html",
            )
        else:
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                response = exc
        self.calls.append(
            Call(
                method=request.method,
                path=request.path,
                params=params,
                status=response.status,
                error=request.get(_ERROR_KEY),
                fault=fault,
            )
        )
        if isinstance(response, web.HTTPException):
            raise response
        return response


# --------------------------------------------------------------------------- client side


class LoopbackResolver(AbstractResolver):
    """DNS for tests: each fake's real hostname -> 127.0.0.1:its port; anything else fails."""

    def __init__(self, ports: Mapping[str, int]) -> None:
        self._ports = dict(ports)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Resolve a fake's hostname; refuse every other name (no network beyond loopback)."""
        if host not in self._ports:
            raise OSError(f"{host} is not served by a fake exchange")
        return [
            ResolveResult(
                hostname=host,
                host="127.0.0.1",
                port=self._ports[host],
                family=socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
        ]

    async def close(self) -> None:
        """Nothing to release."""


def fake_client_session(
    *fakes: FakeExchange, ssl_context: ssl.SSLContext | None = None
) -> aiohttp.ClientSession:
    """A client session reaching ``fakes`` under their real hostnames, TLS-verified.

    Pass it to ccxt as ``session=``; ccxt then leaves it open on ``close()``: the caller
    closes it. ``ssl_context`` defaults to the first fake's test-CA client context.
    """
    if not fakes:
        raise ValueError("at least one fake exchange")
    context = ssl_context if ssl_context is not None else fakes[0].tls.client_context()
    resolver = LoopbackResolver({fake.hostname: fake.port for fake in fakes})
    connector = aiohttp.TCPConnector(ssl=context, resolver=resolver)
    return aiohttp.ClientSession(connector=connector, trust_env=False)


def utc_iso(ms: int, *, digits: int = 6) -> str:
    """RFC 3339 UTC time with ``digits`` fractional digits and a ``Z``."""
    moment = dt.datetime.fromtimestamp(ms / 1000, dt.UTC)
    fraction = f"{ms % 1000:03d}".ljust(digits, "0")[:digits]
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + (f".{fraction}" if digits else "") + "Z"
