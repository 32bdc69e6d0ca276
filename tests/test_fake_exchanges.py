"""The fake exchanges, driven by real, unmodified ccxt.async_support over HTTPS.

ccxt keeps its real URLs (api.binance.com, api.kraken.com, api.coinbase.com); the aiohttp
session handed to it resolves those names to the fakes on 127.0.0.1 and verifies TLS
against the test CA. The pagination helpers below are the contract for the pollers: each
walks one exchange's history the way that exchange needs, and the tests show that the
union of what ccxt returns equals the fake's ground truth exactly.
"""

from __future__ import annotations

import base64
import copy
import json
import ssl
import stat
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import aiohttp
import ccxt.async_support as ccxt
import pytest
from aiohttp.test_utils import TestClient, TestServer
from ccxt.base import errors as ccxt_errors
from cryptography import x509
from cryptography.x509.oid import ExtensionOID

from tests.fakes.exchanges.__main__ import _admin_app, _unique_keys
from tests.fakes.exchanges.binance import FakeBinance, binance_history_spec
from tests.fakes.exchanges.coinbase import CoinbaseKey, FakeCoinbase, coinbase_history_spec
from tests.fakes.exchanges.common import (
    DAY_MS,
    Burst,
    FakeExchange,
    FakeTls,
    HistorySpec,
    TruthTrade,
    create_fake_tls,
    fake_client_session,
    generate_history,
)
from tests.fakes.exchanges.kraken import PAGE_SIZE, FakeKraken, kraken_history_spec

EXCHANGES = ("binance", "kraken", "coinbase")

BINANCE_KEY = "fakeBinanceApiKey0000000000000000000000000000000000000000000000A"
BINANCE_SECRET = "fakeBinanceSecret000000000000000000000000000000000000000000000B"
KRAKEN_KEY = "fakeKrakenApiKey+0000000000000000000000000000000000000C="
KRAKEN_SECRET = base64.b64encode(bytes(range(64))).decode()
COINBASE_KEY = CoinbaseKey.generate(key_id="00000000-0000-4000-8000-00000000c0de")

# The ccxt configuration the pollers must use (besides credentials and the session):
# it keeps ccxt on the endpoints the fakes serve and off futures/margin/v2 endpoints.
CCXT_CONFIG: dict[str, dict[str, Any]] = {
    "binance": {
        "options": {
            "fetchMarkets": {"types": ["spot"]},
            "fetchCurrencies": False,
            "fetchMargins": False,
        }
    },
    "kraken": {"enableLastJsonResponse": True},  # TradesHistory's "count"
    "coinbase": {
        "has": {"fetchCurrencies": False},
        "options": {
            "fetchBalance": "v3PrivateGetBrokerageAccounts",
            "fetchTime": "v3PublicGetBrokerageTime",
        },
    },
}


# --------------------------------------------------------------------------- helpers


def credentials(name: str) -> dict[str, str]:
    """What ccxt takes as apiKey/secret for each fake's configured account."""
    if name == "binance":
        return {"apiKey": BINANCE_KEY, "secret": BINANCE_SECRET}
    if name == "kraken":
        return {"apiKey": KRAKEN_KEY, "secret": KRAKEN_SECRET}
    return {"apiKey": COINBASE_KEY.name, "secret": COINBASE_KEY.private_pem}


def new_fake(
    name: str, tls: FakeTls, *, orders: int = 60, bursts: tuple[Burst, ...] = ()
) -> FakeExchange:
    """A fake with a small (or, with ``orders``/``bursts``, large) seeded history."""
    if name == "binance":
        return FakeBinance(
            tls=tls,
            api_key=BINANCE_KEY,
            api_secret=BINANCE_SECRET,
            history=binance_history_spec(orders=orders, bursts=bursts),
        )
    if name == "kraken":
        return FakeKraken(
            tls=tls,
            api_key=KRAKEN_KEY,
            api_secret=KRAKEN_SECRET,
            history=kraken_history_spec(orders=orders, bursts=bursts),
        )
    return FakeCoinbase(
        tls=tls,
        key_name=COINBASE_KEY.name,
        public_key=COINBASE_KEY.public_key,
        history=coinbase_history_spec(orders=orders, bursts=bursts),
    )


@asynccontextmanager
async def ccxt_client(
    fake: FakeExchange,
    *,
    ssl_context: ssl.SSLContext | None = None,
    **config: Any,
) -> AsyncIterator[Any]:
    """Unmodified ccxt for ``fake``'s exchange, through a session that reaches only fakes."""
    name = {
        "api.binance.com": "binance",
        "api.kraken.com": "kraken",
        "api.coinbase.com": "coinbase",
    }[fake.hostname]
    session = fake_client_session(fake, ssl_context=ssl_context)
    settings: dict[str, Any] = {
        **credentials(name),
        **copy.deepcopy(CCXT_CONFIG[name]),
        "session": session,
        # The pollers run ccxt's limiter; here it would only slow the suite down.
        "enableRateLimit": False,
        "timeout_on_exit": 0,
        **config,
    }
    exchange = getattr(ccxt, name)(settings)
    try:
        yield exchange
    finally:
        await exchange.close()
        await session.close()


async def binance_windows(
    exchange: Any, since: int, until: int, *, limit: int = 1000
) -> list[dict[str, Any]]:
    """Binance: every symbol, 24 h windows [start, start + 24 h - 1]; a full page
    continues with fromId = last id + 1 (no time parameters) up to the window end."""
    trades: list[dict[str, Any]] = []
    for symbol in exchange.symbols:
        window = since
        while window < until:
            window_end = min(window + DAY_MS - 1, until)
            page = await exchange.fetch_my_trades(symbol, window, limit, {"endTime": window_end})
            trades += page
            while len(page) == limit:
                next_id = max(int(t["id"]) for t in page) + 1
                page = await exchange.fetch_my_trades(symbol, None, limit, {"fromId": next_id})
                inside = [t for t in page if t["timestamp"] <= window_end]
                trades += inside
                if len(inside) < len(page):
                    break
            window += DAY_MS
    return trades


async def binance_from_id(exchange: Any, *, limit: int = 1000) -> list[dict[str, Any]]:
    """Binance: every symbol from fromId 0 upwards until a short page."""
    trades: list[dict[str, Any]] = []
    for symbol in exchange.symbols:
        next_id = 0
        while True:
            page = await exchange.fetch_my_trades(symbol, None, limit, {"fromId": next_id})
            trades += page
            if len(page) < limit:
                break
            next_id = max(int(t["id"]) for t in page) + 1
    return trades


async def kraken_offsets(exchange: Any) -> list[dict[str, Any]]:
    """Kraken: all pairs at once, ofs += page length until ofs reaches the reply's count."""
    trades: list[dict[str, Any]] = []
    offset = 0
    while True:
        page = await exchange.fetch_my_trades(None, None, None, {"ofs": offset})
        count = exchange.last_json_response["result"]["count"]
        trades += page
        offset += len(page)
        if not page or offset >= count:
            return trades


def coinbase_cursor(page: Iterable[dict[str, Any]]) -> str | None:
    """ccxt hides the next cursor in ``info['cursor']`` of one (unsorted: any) trade."""
    return next((t["info"]["cursor"] for t in page if "cursor" in t["info"]), None)


async def coinbase_cursors(exchange: Any, *, limit: int = 250) -> list[dict[str, Any]]:
    """Coinbase: all products at once, following cursor until it is empty."""
    trades: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params = {"cursor": cursor} if cursor else {}
        page = await exchange.fetch_my_trades(None, None, limit, params)
        trades += page
        cursor = coinbase_cursor(page)
        if not cursor:
            return trades


async def fetch_everything(name: str, exchange: Any, fake: FakeExchange) -> list[dict[str, Any]]:
    """The full history of ``fake`` through ccxt, the way each exchange needs it."""
    await exchange.load_markets()
    if name == "binance":
        assert isinstance(fake, FakeBinance)
        return await binance_windows(exchange, fake.history.spec.start_ms, fake.now_ms())
    if name == "kraken":
        return await kraken_offsets(exchange)
    return await coinbase_cursors(exchange)


def raw_as_served(name: str, trade: dict[str, Any]) -> dict[str, Any]:
    """The exchange's JSON for a ccxt trade: ccxt injects 'id' (Kraken), 'cursor' (Coinbase)."""
    injected = {"kraken": {"id"}, "coinbase": {"cursor"}}.get(name, set())
    return {k: v for k, v in trade["info"].items() if k not in injected}


def assert_exact(name: str, trades: list[dict[str, Any]], truth: Iterable[TruthTrade]) -> None:
    """ccxt returned each ground-truth trade once (none missing, none doubled), raw intact."""
    by_key = {t.key: t for t in truth}
    keys = [(t["symbol"], t["id"]) for t in trades]
    assert len(keys) == len(set(keys)), "a trade was returned twice"
    assert set(keys) == set(by_key)
    for trade in trades:
        assert raw_as_served(name, trade) == by_key[(trade["symbol"], trade["id"])].raw


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> FakeTls:
    """One test CA and server certificate for the whole module."""
    return create_fake_tls(tmp_path_factory.mktemp("fake-exchange-tls"))


@pytest.fixture(params=EXCHANGES)
async def any_fake(request: pytest.FixtureRequest, tls: FakeTls) -> AsyncIterator[FakeExchange]:
    """Each fake in turn, running, with a small history."""
    async with new_fake(request.param, tls) as fake:
        yield fake


@pytest.fixture
async def binance(tls: FakeTls) -> AsyncIterator[FakeBinance]:
    """A running fake Binance with a small history."""
    fake = new_fake("binance", tls)
    assert isinstance(fake, FakeBinance)
    async with fake:
        yield fake


@pytest.fixture
async def kraken(tls: FakeTls) -> AsyncIterator[FakeKraken]:
    """A running fake Kraken with a small history."""
    fake = new_fake("kraken", tls)
    assert isinstance(fake, FakeKraken)
    async with fake:
        yield fake


@pytest.fixture
async def coinbase(tls: FakeTls) -> AsyncIterator[FakeCoinbase]:
    """A running fake Coinbase with a small history."""
    fake = new_fake("coinbase", tls)
    assert isinstance(fake, FakeCoinbase)
    async with fake:
        yield fake


def exchange_name(fake: FakeExchange) -> str:
    """ccxt's id for the fake's exchange."""
    return fake.hostname.split(".")[1]


# --------------------------------------------------------------------------- TLS and isolation


def test_certificate_names_the_real_hosts_and_loopback(tls: FakeTls) -> None:
    """The server certificate is issued by ca.pem for the real API hosts and 127.0.0.1."""
    pem = tls.server_file.read_bytes()
    leaf = x509.load_pem_x509_certificate(pem)
    ca = x509.load_pem_x509_certificate(tls.ca_file.read_bytes())
    leaf.verify_directly_issued_by(ca)
    san = leaf.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    assert isinstance(san, x509.SubjectAlternativeName)
    dns = set(san.get_values_for_type(x509.DNSName))
    assert {"api.binance.com", "api.kraken.com", "api.coinbase.com"} <= dns
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert stat.S_IMODE(tls.server_file.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" not in tls.ca_file.read_bytes()


async def test_client_without_the_test_ca_is_refused(binance: FakeBinance) -> None:
    """A client trusting only the system CAs cannot talk to the fake: TLS really verifies."""
    async with ccxt_client(binance, ssl_context=ssl.create_default_context()) as exchange:
        with pytest.raises(ccxt_errors.ExchangeNotAvailable):
            await exchange.fetch_time()
    assert binance.calls == []


async def test_the_real_hostname_is_verified_not_the_address(
    tls: FakeTls, binance: FakeBinance
) -> None:
    """TLS checks the name, not the address: a name off the certificate is refused."""
    context = tls.client_context()
    connector = aiohttp.TCPConnector(ssl=context)
    async with aiohttp.ClientSession(connector=connector) as session:
        url = f"https://127.0.0.1:{binance.port}/api/v3/time"
        async with session.get(url, server_hostname="api.kraken.com") as response:
            assert response.status == 200  # api.kraken.com is on the shared certificate
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await session.get(url, server_hostname="api.example.com")


async def test_hosts_without_a_fake_are_unreachable(binance: FakeBinance) -> None:
    """Without fetchMarkets=spot ccxt calls the fapi/dapi hosts, which the session refuses."""
    options = {"fetchMargins": False, "fetchCurrencies": False}
    async with ccxt_client(binance, options=options) as exchange:
        with pytest.raises(ccxt_errors.ExchangeNotAvailable, match=r"(fapi|dapi)\.binance\.com"):
            await exchange.load_markets()


# --------------------------------------------------------------------------- history


def test_history_is_deterministic_per_seed(tls: FakeTls) -> None:
    """The same spec gives the same trades, ids and JSON; another seed gives another history."""
    spec = binance_history_spec(orders=40, start_ms=1_700_000_000_000)
    assert generate_history(spec) == generate_history(spec)
    # Ground truth needs no running server.
    first = FakeBinance(tls=tls, api_key="k", api_secret="s", history=spec)
    again = FakeBinance(tls=tls, api_key="k", api_secret="s", history=spec)
    assert first.ground_truth == again.ground_truth
    other = generate_history(binance_history_spec(orders=40, start_ms=1_700_000_000_000, seed=2))
    assert other.fills != generate_history(spec).fills


def test_history_has_partial_fills_fee_assets_and_sold_off_markets() -> None:
    """Orders fill in parts, fees come in base, quote and BNB, and SOL/DOGE are sold off."""
    history = generate_history(binance_history_spec(orders=150, start_ms=1_700_000_000_000))
    fills_per_order: dict[int, int] = {}
    for fill in history.fills:
        fills_per_order[fill.order_number] = fills_per_order.get(fill.order_number, 0) + 1
    assert max(fills_per_order.values()) > 1
    kinds = {
        "base"
        if f.fee_asset == f.market.base
        else "quote"
        if f.fee_asset == f.market.quote
        else f.fee_asset
        for f in history.fills
        if f.market.symbol != "BNB/USDT"
    }
    assert kinds == {"base", "quote", "BNB"}
    traded = {f.market.symbol for f in history.fills}
    assert {"SOL/USDT", "DOGE/USDT"} <= traded and "XRP/USDT" not in traded
    assert history.balances["SOL"] == history.balances["DOGE"] == 0
    days = {(f.time_ms - history.spec.start_ms) // DAY_MS for f in history.fills}
    assert len(days) > 40


@pytest.mark.parametrize("spec", [binance_history_spec, kraken_history_spec, coinbase_history_spec])
def test_balances_follow_from_deposits_and_fills(spec: Any) -> None:
    """Final balances = deposits + fills - fees, and never negative."""
    history_spec: HistorySpec = spec(orders=120, start_ms=1_700_000_000_000)
    history = generate_history(history_spec)
    expected: dict[str, Decimal] = {asset: Decimal(v) for asset, v in history_spec.deposits.items()}
    for fill in history.fills:
        sign = 1 if fill.side == "buy" else -1
        market = fill.market
        expected[market.base] = expected.get(market.base, Decimal(0)) + sign * fill.qty
        expected[market.quote] = expected.get(market.quote, Decimal(0)) - sign * fill.quote_qty
        expected[fill.fee_asset] -= fill.fee
    assert {k: v for k, v in expected.items()} == {
        k: v for k, v in history.balances.items() if k in expected
    }
    assert min(history.balances.values()) >= 0


def test_binance_ids_are_per_symbol(tls: FakeTls) -> None:
    """Binance trade ids repeat across symbols; only (symbol, id) is unique."""
    fake = FakeBinance(
        tls=tls,
        api_key="k",
        api_secret="s",
        history=binance_history_spec(orders=300, start_ms=1_700_000_000_000),
    )
    ids = [t.trade_id for t in fake.ground_truth]
    keys = {t.key for t in fake.ground_truth}
    assert len(set(ids)) < len(ids) == len(keys)


# --------------------------------------------------------------------------- what ccxt calls

DOCUMENTED_CALLS = {
    "binance": {
        ("GET", "/api/v3/exchangeInfo"),
        ("GET", "/api/v3/account"),
        ("GET", "/api/v3/time"),
    },
    "kraken": {
        ("GET", "/0/public/Assets"),
        ("GET", "/0/public/AssetPairs"),
        ("POST", "/0/private/BalanceEx"),
        ("GET", "/0/public/Time"),
    },
    "coinbase": {
        ("GET", "/api/v3/brokerage/market/products"),
        ("GET", "/api/v3/brokerage/transaction_summary"),
        ("GET", "/api/v3/brokerage/accounts"),
        ("GET", "/api/v3/brokerage/time"),
    },
}


async def test_ccxt_calls_only_the_documented_endpoints(any_fake: FakeExchange) -> None:
    """load_markets, fetch_balance and fetch_time hit only the served endpoints, all 200."""
    name = exchange_name(any_fake)
    async with ccxt_client(any_fake) as exchange:
        await exchange.load_markets()
        balance = await exchange.fetch_balance()
        server_time = await exchange.fetch_time()
    assert abs(server_time - time.time() * 1000) < 5_000
    assert {(c.method, c.path) for c in any_fake.calls} == DOCUMENTED_CALLS[name]
    assert all(c.status == 200 for c in any_fake.calls)
    logged = json.dumps([dict(c.params) for c in any_fake.calls])
    for secret in credentials(name).values():
        assert secret not in logged
    assert "signature" not in logged
    for asset, amount in any_fake.history.balances.items():
        # Exchanges round balances to the asset's display precision (Coinbase fiat: cents).
        assert balance["total"].get(asset, 0.0) == pytest.approx(float(amount), rel=1e-9, abs=0.01)


async def test_coinbase_balance_pages_through_accounts(coinbase: FakeCoinbase) -> None:
    """ccxt follows the accounts cursor: 260+ wallets take two pages of 250."""
    async with ccxt_client(coinbase) as exchange:
        balance = await exchange.fetch_balance()
    pages = [c for c in coinbase.calls if c.path.endswith("/accounts")]
    assert len(pages) == 2 and "cursor" in pages[1].params
    assert balance["total"]["TKN259"] == 0


# --------------------------------------------------------------------------- full histories


async def test_binance_windows_and_from_id_fetch_the_exact_history(binance: FakeBinance) -> None:
    """24 h windows per symbol, continued by fromId when a page is full, miss and double nothing."""
    async with ccxt_client(binance) as exchange:
        await exchange.load_markets()
        trades = await binance_windows(
            exchange, binance.history.spec.start_ms, binance.now_ms(), limit=3
        )
    assert_exact("binance", trades, binance.ground_truth)
    continued = [c for c in binance.calls if "fromId" in c.params]
    assert continued, "no window overflowed a page: the test lost its point"


async def test_binance_from_id_walk_fetches_the_exact_history(binance: FakeBinance) -> None:
    """Walking each symbol from fromId 0 with small pages returns the exact history."""
    async with ccxt_client(binance) as exchange:
        await exchange.load_markets()
        trades = await binance_from_id(exchange, limit=7)
    assert_exact("binance", trades, binance.ground_truth)


async def test_kraken_offsets_fetch_the_exact_history(kraken: FakeKraken) -> None:
    """ofs pages of 50 over all pairs, newest first, return the exact history."""
    async with ccxt_client(kraken) as exchange:
        await exchange.load_markets()
        trades = await kraken_offsets(exchange)
    assert_exact("kraken", trades, kraken.ground_truth)
    offsets = [int(c.params["ofs"]) for c in kraken.calls if c.path.endswith("TradesHistory")]
    assert offsets == list(range(0, len(kraken.ground_truth), PAGE_SIZE))


async def test_coinbase_cursors_fetch_the_exact_history(coinbase: FakeCoinbase) -> None:
    """Following cursors with small pages returns the exact history, size_in_quote included."""
    async with ccxt_client(coinbase) as exchange:
        await exchange.load_markets()
        trades = await coinbase_cursors(exchange, limit=25)
    assert_exact("coinbase", trades, coinbase.ground_truth)
    by_id = {t.trade_id: t for t in coinbase.ground_truth}
    in_quote = [t for t in trades if t["info"]["size_in_quote"]]
    assert in_quote, "no size_in_quote fill in the history"
    for trade in in_quote:
        assert Decimal(str(trade["amount"])) == by_id[trade["id"]].fill.qty


@pytest.mark.parametrize("name", EXCHANGES)
async def test_a_large_history_is_fetched_exactly(name: str, tls: FakeTls) -> None:
    """Thousands of trades over 60 days, a day with more than 1000 fills included."""
    burst_symbol = {"binance": "BTC/USDT", "kraken": "BTC/USD", "coinbase": "BTC/USD"}[name]
    burst = (Burst(symbol=burst_symbol, day=30, orders=600),)
    async with new_fake(name, tls, orders=1200, bursts=burst) as fake:
        async with ccxt_client(fake) as exchange:
            trades = await fetch_everything(name, exchange, fake)
        assert len(fake.ground_truth) > 3000
        busiest = max(
            sum(
                1
                for t in fake.ground_truth
                if t.symbol == burst_symbol and t.time_ms // DAY_MS == day
            )
            for day in {t.time_ms // DAY_MS for t in fake.ground_truth}
        )
        assert busiest > 1000
        assert_exact(name, trades, fake.ground_truth)
        if name == "binance":  # the busy day overflowed a 1000-trade page
            assert any("fromId" in c.params for c in fake.calls)


async def test_ccxt_paginate_option_silently_stops_after_ten_calls(coinbase: FakeCoinbase) -> None:
    """ccxt's own paginate=True makes at most 10 calls and returns a truncated history."""
    async with ccxt_client(coinbase) as exchange:
        trades = await exchange.fetch_my_trades(
            None,
            coinbase.history.spec.start_ms,
            None,
            {"paginate": True, "maxEntriesPerRequest": 10},
        )
    fills_calls = [c for c in coinbase.calls if c.path.endswith("/fills")]
    assert len(fills_calls) == 10
    assert len(trades) == 100 < len(coinbase.ground_truth)


async def test_binance_incremental_poll_fetches_only_new_trades(binance: FakeBinance) -> None:
    """After a full fetch, fromId = last id + 1 per symbol returns exactly the newer trades."""
    cut = binance.ground_truth[len(binance.ground_truth) * 2 // 3].time_ms
    binance.visible_until_ms = cut
    async with ccxt_client(binance) as exchange:
        await exchange.load_markets()
        first = await binance_from_id(exchange)
        assert {(t["symbol"], t["id"]) for t in first} == binance.truth_keys()
        last_ids = {
            s: max((int(t["id"]) for t in first if t["symbol"] == s), default=-1)
            for s in exchange.symbols
        }
        binance.visible_until_ms = None
        new: list[dict[str, Any]] = []
        for symbol, last_id in last_ids.items():
            new += await exchange.fetch_my_trades(symbol, None, 1000, {"fromId": last_id + 1})
    expected = {t.key for t in binance.ground_truth if t.time_ms > cut}
    assert {(t["symbol"], t["id"]) for t in new} == expected


# --------------------------------------------------------------------------- signatures: Binance


async def test_binance_wrong_secret_is_refused(binance: FakeBinance) -> None:
    """A request signed with another secret gets -1022 and ccxt raises AuthenticationError."""
    async with ccxt_client(binance, secret="another" + BINANCE_SECRET[7:]) as exchange:
        await exchange.load_markets()
        with pytest.raises(ccxt_errors.AuthenticationError, match="-1022"):
            await exchange.fetch_balance()
    assert binance.calls[-1].error == "-1022"


async def test_binance_unknown_key_is_refused(binance: FakeBinance) -> None:
    """An API key the exchange does not know gets -2015 (AuthenticationError)."""
    async with ccxt_client(binance, apiKey="unknownKey" + BINANCE_KEY[10:]) as exchange:
        with pytest.raises(ccxt_errors.AuthenticationError, match="-2015"):
            await exchange.fetch_my_trades("BTC/USDT", None, 10, {"fromId": 0})


async def test_binance_parameter_changed_after_signing_is_refused(binance: FakeBinance) -> None:
    """Changing one signed parameter (limit) invalidates the HMAC: -1022."""
    async with ccxt_client(binance) as exchange:
        await exchange.load_markets()
        await exchange.fetch_my_trades("BTC/USDT", None, 5, {"fromId": 0})
        url, headers = exchange.last_request_url, exchange.last_request_headers
        tampered = url.replace("limit=5", "limit=6")
        assert tampered != url
        async with exchange.session.get(tampered, headers=headers) as response:
            body = await response.json()
    assert body["code"] == -1022


@pytest.mark.parametrize(
    ("skew_ms", "message"),
    [(30_000, "outside of the recvWindow"), (-5_000, "ahead of the server")],
)
async def test_binance_timestamp_outside_recv_window_is_refused(
    binance: FakeBinance, skew_ms: int, message: str
) -> None:
    """A clock off by more than recvWindow (or 1 s ahead) gets -1021 until ccxt loads the offset."""
    binance.faults.clock_skew_ms = skew_ms
    async with ccxt_client(binance) as exchange:
        await exchange.load_markets()
        with pytest.raises(ccxt_errors.InvalidNonce, match=message):
            await exchange.fetch_balance()
        await exchange.load_time_difference()
        await exchange.fetch_balance()
    assert [c.error for c in binance.calls if c.path.endswith("/account")] == ["-1021", None]


@pytest.mark.parametrize(
    ("since_offset", "limit", "params", "code"),
    [
        (0, 10, {"endTime": "window+25h"}, "-1127"),
        (0, 1001, {}, "-1130"),
        (0, 10, {"fromId": 1}, "-1128"),
    ],
)
async def test_binance_enforces_my_trades_limits(
    binance: FakeBinance, since_offset: int, limit: int, params: dict[str, Any], code: str
) -> None:
    """Windows over 24 h, limit over 1000 and fromId with startTime are refused as Binance does."""
    since = binance.history.spec.start_ms + since_offset
    if params.get("endTime") == "window+25h":
        params = {"endTime": since + 25 * 3_600_000}
    async with ccxt_client(binance) as exchange:
        await exchange.load_markets()
        with pytest.raises(ccxt_errors.BadRequest, match=code):
            await exchange.fetch_my_trades("BTC/USDT", since, limit, params)
    assert binance.calls[-1].error == code


# --------------------------------------------------------------------------- signatures: Kraken


async def test_kraken_wrong_secret_is_refused(kraken: FakeKraken) -> None:
    """A wrong secret gets EAPI:Invalid signature; ccxt has no mapping and raises ExchangeError."""
    wrong = base64.b64encode(bytes(64)).decode()
    async with ccxt_client(kraken, secret=wrong) as exchange:
        await exchange.load_markets()
        with pytest.raises(ccxt_errors.ExchangeError, match="EAPI:Invalid signature") as raised:
            await exchange.fetch_balance()
    assert not isinstance(raised.value, ccxt_errors.AuthenticationError)
    assert kraken.last_nonce == 0, "a forged request must not advance the nonce"


async def test_kraken_unknown_key_is_refused(kraken: FakeKraken) -> None:
    """An unknown API key gets EAPI:Invalid key (AuthenticationError)."""
    async with ccxt_client(kraken, apiKey="unknown" + KRAKEN_KEY[7:]) as exchange:
        with pytest.raises(ccxt_errors.AuthenticationError, match="EAPI:Invalid key"):
            await exchange.fetch_my_trades()


async def test_kraken_replayed_nonce_is_refused(kraken: FakeKraken) -> None:
    """A byte-identical replay, and a client whose nonce went backwards, get EAPI:Invalid nonce."""
    async with ccxt_client(kraken) as exchange:
        await exchange.fetch_my_trades()
        url, headers, body = (
            exchange.last_request_url,
            exchange.last_request_headers,
            exchange.last_request_body,
        )
        async with exchange.session.post(url, headers=headers, data=body) as response:
            assert (await response.json())["error"] == ["EAPI:Invalid nonce"]
    async with ccxt_client(kraken, options={"timeDifference": 60_000}) as behind:
        with pytest.raises(ccxt_errors.InvalidNonce):
            await behind.fetch_my_trades()
    assert [c.error for c in kraken.calls if c.path.endswith("TradesHistory")] == [
        None,
        "EAPI:Invalid nonce",
        "EAPI:Invalid nonce",
    ]


# --------------------------------------------------------------------------- signatures: Coinbase


async def test_coinbase_forged_jwt_is_refused(coinbase: FakeCoinbase) -> None:
    """A JWT with the right key name but signed by another key gets 401 (AuthenticationError).

    ccxt's coinbase load_markets already makes a private call (transaction_summary), so a
    bad key fails there, before any trade request.
    """
    forger = CoinbaseKey.generate()
    async with ccxt_client(coinbase, secret=forger.private_pem) as exchange:
        with pytest.raises(ccxt_errors.AuthenticationError):
            await exchange.load_markets()
    refused = [c for c in coinbase.calls if c.status == 401]
    assert [(c.path, c.error) for c in refused] == [
        ("/api/v3/brokerage/transaction_summary", "jwt:signature")
    ]


async def test_coinbase_expired_jwt_is_refused_and_time_difference_does_not_help(
    coinbase: FakeCoinbase,
) -> None:
    """With the server 3 min ahead every JWT is expired; ccxt signs JWTs with its raw clock."""
    async with ccxt_client(coinbase) as exchange:
        await exchange.load_markets()
        coinbase.faults.clock_skew_ms = 180_000
        with pytest.raises(ccxt_errors.AuthenticationError):
            await exchange.fetch_my_trades()
        await exchange.load_time_difference()
        with pytest.raises(ccxt_errors.AuthenticationError):
            await exchange.fetch_my_trades()
    assert [c.error for c in coinbase.calls if c.path.endswith("/fills")] == ["jwt:expired"] * 2


async def test_coinbase_jwt_is_bound_to_method_and_path(coinbase: FakeCoinbase) -> None:
    """A valid JWT replayed on another path, or an unsigned alg=none token, gets 401."""
    async with ccxt_client(coinbase) as exchange:
        await exchange.fetch_balance()
        headers = dict(exchange.last_request_headers)
        fills = "https://api.coinbase.com/api/v3/brokerage/orders/historical/fills"
        async with exchange.session.get(fills, headers=headers) as response:
            assert response.status == 401
            assert await response.text() == "Unauthorized"
        token = headers["Authorization"].removeprefix("Bearer ")
        claims = token.split(".")[1]
        none_header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').decode().rstrip("=")
        headers["Authorization"] = f"Bearer {none_header}.{claims}."
        async with exchange.session.get(fills, headers=headers) as response:
            assert response.status == 401
    assert [c.error for c in coinbase.calls if c.path.endswith("/fills")] == [
        "jwt:uri",
        "jwt:algorithm",
    ]


# --------------------------------------------------------------------------- faults

RATE_LIMIT_ERROR = {
    "binance": ccxt_errors.DDoSProtection,  # ccxt maps 418/429 before reading -1003
    "kraken": ccxt_errors.DDoSProtection,  # EAPI:Rate limit exceeded
    "coinbase": ccxt_errors.RateLimitExceeded,  # plain 429
}


async def trade_call(name: str, exchange: Any) -> Any:
    """One private trade-history request, the call the pollers repeat most."""
    if name == "binance":
        return await exchange.fetch_my_trades("BTC/USDT", None, 10, {"fromId": 0})
    return await exchange.fetch_my_trades(None, None, 10)


async def load_and_trade(name: str, exchange: Any) -> Any:
    """load_markets (Coinbase's already signs a request) and one trade request."""
    await exchange.load_markets()
    return await trade_call(name, exchange)


async def test_rate_limit_is_raised_with_retry_after(any_fake: FakeExchange) -> None:
    """A 429-style reply is ccxt's rate-limit error, Retry-After readable; the next call works."""
    name = exchange_name(any_fake)
    async with ccxt_client(any_fake) as exchange:
        await exchange.load_markets()
        any_fake.faults.rate_limit(times=1, retry_after_s=7)
        with pytest.raises(RATE_LIMIT_ERROR[name]):
            await trade_call(name, exchange)
        assert exchange.last_response_headers["Retry-After"] == "7"
        await trade_call(name, exchange)
    assert [c.fault for c in any_fake.calls[-2:]] == ["rate_limit", None]


async def test_binance_ip_ban_is_418_with_retry_after(binance: FakeBinance) -> None:
    """Binance's ban (418, -1003 'IP banned until') is a DDoSProtection with Retry-After."""
    async with ccxt_client(binance) as exchange:
        binance.faults.rate_limit(status=418, retry_after_s=120)
        with pytest.raises(ccxt_errors.DDoSProtection, match=r"418.*IP banned until"):
            await exchange.fetch_time()
        assert exchange.last_response_headers["Retry-After"] == "120"


async def test_server_error_burst_then_recovery(any_fake: FakeExchange) -> None:
    """Three 5xx replies raise ExchangeNotAvailable three times; the fourth call succeeds."""
    name = exchange_name(any_fake)
    async with ccxt_client(any_fake) as exchange:
        await exchange.load_markets()
        any_fake.faults.server_error(times=3, status=502)
        for _ in range(3):
            with pytest.raises(ccxt_errors.ExchangeNotAvailable):
                await trade_call(name, exchange)
        await trade_call(name, exchange)
    assert [(c.status, c.fault) for c in any_fake.calls[-4:]] == [(502, "server_error")] * 3 + [
        (200, None)
    ]


async def test_slow_response_times_out(any_fake: FakeExchange) -> None:
    """A reply slower than ccxt's timeout raises RequestTimeout; the next call succeeds."""
    name = exchange_name(any_fake)
    async with ccxt_client(any_fake, timeout=300) as exchange:
        await exchange.load_markets()
        any_fake.faults.slow(delay_s=1.0)
        with pytest.raises(ccxt_errors.RequestTimeout):
            await trade_call(name, exchange)
        await trade_call(name, exchange)


async def test_revoked_key_is_refused(any_fake: FakeExchange) -> None:
    """A key revoked mid-session is refused; ccxt turns Binance's -2015 into DDoSProtection
    once the instance has authenticated before, AuthenticationError elsewhere."""
    name = exchange_name(any_fake)
    async with ccxt_client(any_fake) as exchange:
        await exchange.load_markets()
        await trade_call(name, exchange)
        any_fake.faults.revoke_key()
        expected = (
            ccxt_errors.DDoSProtection if name == "binance" else ccxt_errors.AuthenticationError
        )
        with pytest.raises(expected):
            await trade_call(name, exchange)
    async with ccxt_client(any_fake) as fresh:
        with pytest.raises(ccxt_errors.AuthenticationError):
            await load_and_trade(name, fresh)


# --------------------------------------------------------------------------- control API


async def test_control_api_lists_the_seeded_trades_with_their_raw_fields(
    any_fake: FakeExchange,
) -> None:
    """GET /trades/{exchange} lists every seeded trade once, in time order, as served."""
    name = exchange_name(any_fake)
    server = TestServer(_admin_app({name: any_fake}))
    async with TestClient(server) as http:
        response = await http.get(f"/trades/{name}")
        assert response.status == 200
        listed = await response.json()
        assert (await http.get("/trades/nowhere")).status == 404
    truth = any_fake.ground_truth
    assert len(listed) == len(truth) > 0
    assert sorted([t["symbol"], t["id"]] for t in listed) == _unique_keys(name, any_fake)
    assert [t["timestamp"] for t in listed] == sorted(t["timestamp"] for t in listed)
    for row, trade in zip(listed, truth, strict=True):
        fill = trade.fill
        assert row["raw"] == json.loads(json.dumps(dict(trade.raw)))
        assert (row["symbol"], row["order_id"], row["timestamp"], row["side"]) == (
            trade.symbol,
            trade.order_id,
            trade.time_ms,
            fill.side,
        )
        assert Decimal(row["price"]) == fill.price
        assert Decimal(row["amount"]) == fill.qty
        assert Decimal(row["fee"]) == fill.fee > 0
        assert row["fee_currency"] == fill.fee_asset
