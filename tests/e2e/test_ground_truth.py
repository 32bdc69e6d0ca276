"""End to end: the signed report's figures equal a FIFO the test computes itself.

The stack polls the fake Binance and Kraken accounts through the egress, like a user's
session would. The test reads the very same seeded trades from the fakes' control API
(``GET /trades/{exchange}``: the exchange's own JSON) and recomputes the figures of
docs/metrics.md with the small FIFO below, written here on purpose and never importing
``enclave.aggregator``: a bug on either side shows as a mismatch, not as agreement.

The enclave runs with its defaults: the exchange's reporting currency (USDT on Binance,
USD on Kraken), no par assets, no price source, no price age limit. So on Binance
ETH/BTC trades are valued through BTC's last BTC/USDT price and BNB fees through BNB's
last BNB/USDT price (unpriced before the first one); on Kraken the USD markets are
priced and the EUR ones are not (no EUR/USD market to value EUR).

Money figures must be exactly equal; ratios are reported rounded half-even to 12 decimal
places, so they must agree to within one unit in the 12th place.
"""

from __future__ import annotations

import asyncio
import base64
import calendar
import copy
import hashlib
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Context, Decimal, localcontext
from typing import Any

import pytest

from scripts.localstack import LocalStack
from shared.client import SecureClient, SignedReport
from shared.encoding import canonical_json
from shared.errors import SignatureError
from shared.signing import report_hash, verify_payload
from tests.e2e.conftest import running_stack

pytestmark = pytest.mark.e2e

EXCHANGES = ("binance", "kraken")
POLL_DEADLINE_S = 150
DAY_MS = 86_400_000
REPORTING = {"binance": "USDT", "kraken": "USD"}
"""The enclave's reporting currency per exchange (docs/metrics.md section 2), written out
here rather than imported; no par assets."""
MONEY = Context(prec=100)
"""docs/metrics.md section 12: money arithmetic with 100 significant digits."""
SHARE = Context(prec=34)
"""Pro-rata fee shares (round-trip attribution only) use 34 significant digits."""
RATIO = Context(prec=60)
"""Ratios here are computed with more digits than reported, then compared to 1e-12."""
RATIO_TOLERANCE = Decimal("1e-12")
ZERO, ONE = Decimal(0), Decimal(1)

SIGNED_FIELDS = (
    "trades", "orders", "pnl", "pnl_gross", "fees", "volume", "return_pct", "sharpe",
    "sortino", "max_drawdown", "win_rate", "profit_factor", "expectancy",
    "reporting_currency", "fully_priced", "completeness", "trades_digest", "merkle_root",
    "from", "to", "pcr0", "issued_at", "seq", "prev_report_hash",
)  # fmt: skip
"""The payload fields clients rely on (DESIGN section 4 and the SDK)."""


# --------------------------------------------------------------------------- seeded trades


@dataclass(frozen=True, slots=True, kw_only=True)
class SeededTrade:
    """One trade of the fake's account, read from the exchange's own JSON."""

    symbol: str
    id: str
    order_id: str
    side: str
    price: Decimal
    amount: Decimal
    cost: Decimal
    fee: Decimal
    fee_currency: str
    timestamp: int


def from_binance(row: dict[str, Any]) -> SeededTrade:
    """A myTrades object: cost is Binance's quoteQty (rounded to 8 decimals by Binance)."""
    raw = row["raw"]
    return SeededTrade(
        symbol=row["symbol"],
        id=str(raw["id"]),
        order_id=str(raw["orderId"]),
        side="buy" if raw["isBuyer"] else "sell",
        price=Decimal(raw["price"]),
        amount=Decimal(raw["qty"]),
        cost=Decimal(raw["quoteQty"]),
        fee=Decimal(raw["commission"]),
        fee_currency=raw["commissionAsset"],
        timestamp=raw["time"],
    )


def from_kraken(row: dict[str, Any]) -> SeededTrade:
    """A TradesHistory object; Kraken's JSON names no fee currency (it is the quote)."""
    raw = row["raw"]
    return SeededTrade(
        symbol=row["symbol"],
        id=row["id"],
        order_id=raw["ordertxid"],
        side=raw["type"],
        price=Decimal(raw["price"]),
        amount=Decimal(raw["vol"]),
        cost=Decimal(raw["cost"]),
        fee=Decimal(raw["fee"]),
        fee_currency=row["fee_currency"],
        timestamp=row["timestamp"],
    )


READERS = {"binance": from_binance, "kraken": from_kraken}


# --------------------------------------------------------------------------- the FIFO


@dataclass(slots=True)
class Lot:
    """Open units of one asset: quantity, unit cost in R (None: unpriced), carried fee."""

    quantity: Decimal
    cost: Decimal | None
    fee: Decimal | None


@dataclass(slots=True)
class Position:
    """FIFO lots, all long (+1) or all short (-1); 0 when flat."""

    side: int = 0
    lots: list[Lot] = field(default_factory=list)


@dataclass(slots=True)
class RoundTrip:
    """What consecutive closing legs of one order realized on one asset."""

    order: tuple[str, str]
    gross: Decimal = ZERO
    fees: Decimal = ZERO
    priced: bool = True


@dataclass(slots=True)
class Totals:
    """Sums over a set of trades (one day or one symbol)."""

    trades: int = 0
    buys: int = 0
    sells: int = 0
    volume: Decimal = ZERO
    base_volume: Decimal = ZERO
    gross: Decimal = ZERO
    fees: Decimal = ZERO
    unpriced_trades: int = 0


class GroundTruth:
    """docs/metrics.md over a list of trades, one trade at a time in processing order."""

    def __init__(self, trades: list[SeededTrade], reporting: str = "USDT") -> None:
        self.reporting = reporting
        self.count = 0
        self.orders: set[tuple[str, str]] = set()
        self.prices: dict[str, Decimal] = {}
        self.positions: dict[str, Position] = defaultdict(Position)
        self.days: dict[int, Totals] = defaultdict(Totals)
        self.symbols: dict[str, Totals] = defaultdict(Totals)
        self.trips: list[RoundTrip] = []
        self.open_trips: dict[str, RoundTrip] = {}
        self.capital = ZERO
        self.fee_asset_pnl = ZERO
        self.unpriced_fees = 0
        self.unpriced_realizations = 0
        with localcontext(MONEY):
            # Section 1: time, then symbol, then id with numeric ids compared as numbers.
            for trade in sorted(trades, key=lambda t: (t.timestamp, t.symbol, len(t.id), t.id)):
                self.add(trade)
            self.summarize()

    # -- one trade (sections 3 to 8)

    def add(self, trade: SeededTrade) -> None:
        base, quote = trade.symbol.split("/")
        assert base != self.reporting, "no fake market has the reporting currency as its base"
        direction = 1 if trade.side == "buy" else -1
        order = (trade.symbol, trade.order_id)
        self.count += 1
        self.orders.add(order)
        day, symbol = self.days[trade.timestamp // DAY_MS], self.symbols[trade.symbol]
        for totals in (day, symbol):
            totals.trades += 1
            totals.buys += direction > 0
            totals.sells += direction < 0
            totals.base_volume += trade.amount

        quote_value = ONE if quote == self.reporting else self.prices.get(quote)
        unit = None if quote_value is None else trade.price * quote_value
        if quote_value is None:
            symbol.unpriced_trades += 1
        else:
            day.volume += trade.cost * quote_value
            symbol.volume += trade.cost * quote_value

        # Section 5: a fee is valued at trade time by the table of its asset.
        fee_asset = trade.fee_currency
        fee_unit: Decimal | None = (
            ONE
            if fee_asset == self.reporting
            else unit
            if fee_asset == base
            else quote_value
            if fee_asset == quote
            else self.prices.get(fee_asset)
        )
        fee_value = ZERO if not trade.fee else None if fee_unit is None else trade.fee * fee_unit
        if fee_value is None:
            self.unpriced_fees += 1
        else:
            day.fees += fee_value
            symbol.fees += fee_value

        gross = self.leg(base, trade.amount, direction, unit, fee_value, order)
        if quote != self.reporting:
            gross += self.leg(quote, trade.cost, -direction, quote_value, ZERO, order)
        if trade.fee > 0 and fee_asset != self.reporting:
            paid = self.pay_fee(fee_asset, trade.fee, fee_unit)
            self.fee_asset_pnl += paid
            gross += paid
        day.gross += gross
        symbol.gross += gross

        if unit is not None:
            self.prices[base] = unit  # chained through the quote's value when not cash
        deployed = sum(
            (
                lot.quantity * lot.cost
                for position in self.positions.values()
                for lot in position.lots
                if lot.cost is not None
            ),
            ZERO,
        )
        self.capital = max(self.capital, deployed)

    def close(
        self, position: Position, quantity: Decimal, value: Decimal | None, *, fee_payment: bool
    ) -> tuple[Decimal, Decimal, Decimal | None, bool]:
        """Close up to ``quantity`` oldest first: (closed, gross, fee shares moved, priced)."""
        left, gross, priced = quantity, ZERO, True
        shares: Decimal | None = ZERO
        while left and position.lots:
            lot = position.lots[0]
            take = min(left, lot.quantity)
            if lot.cost is None or value is None:
                priced = False
            else:
                gross += take * (value - lot.cost) * position.side
            share: Decimal | None
            if take == lot.quantity:
                share = lot.fee
                position.lots.pop(0)
            else:
                # A fee payment leaves the whole opening fee on the units still held.
                share = (
                    ZERO
                    if fee_payment
                    else None
                    if lot.fee is None
                    else SHARE.divide(lot.fee * take, lot.quantity)
                )
                lot.quantity -= take
                if lot.fee is not None and share is not None:
                    lot.fee -= share
            shares = None if shares is None or share is None else shares + share
            left -= take
        if not position.lots:
            position.side = 0
        return quantity - left, gross, shares, priced

    def leg(
        self,
        asset: str,
        quantity: Decimal,
        direction: int,
        value: Decimal | None,
        fee: Decimal | None,
        order: tuple[str, str],
    ) -> Decimal:
        """Section 4: ``quantity`` in (+1) or out (-1) at ``value``; returns realized gross."""
        position = self.positions[asset]
        closed, gross = ZERO, ZERO
        open_fee = fee
        if position.side == -direction:
            closed, gross, shares, priced = self.close(position, quantity, value, fee_payment=False)
            if not priced:
                self.unpriced_realizations += 1
            closing_fee: Decimal | None = fee
            if fee is not None:
                closing_fee = fee if closed == quantity else SHARE.divide(fee * closed, quantity)
                open_fee = fee - closing_fee
            trip_fees = None if shares is None or closing_fee is None else shares + closing_fee
            self.round_trip(asset, order, gross, trip_fees, priced)
        if quantity > closed:
            position.lots.append(Lot(quantity - closed, value, open_fee))
            position.side = direction
        return gross

    def pay_fee(self, asset: str, quantity: Decimal, value: Decimal | None) -> Decimal:
        """Section 5: paying a fee in a non-cash asset disposes of its units, no round trip."""
        position = self.positions[asset]
        closed, gross = ZERO, ZERO
        if position.side == 1:
            closed, gross, _shares, priced = self.close(position, quantity, value, fee_payment=True)
            if not priced:
                self.unpriced_realizations += 1
        if quantity > closed:
            position.lots.append(Lot(quantity - closed, value, ZERO))
            position.side = -1
        return gross

    def round_trip(
        self,
        asset: str,
        order: tuple[str, str],
        gross: Decimal,
        fees: Decimal | None,
        priced: bool,
    ) -> None:
        """Section 10: consecutive closing legs of one order on one asset are one trip."""
        trip = self.open_trips.get(asset)
        if trip is None or trip.order != order:
            trip = self.open_trips[asset] = RoundTrip(order)
            self.trips.append(trip)
        trip.gross += gross
        if fees is None or not priced:
            trip.priced = False
        else:
            trip.fees += fees

    # -- totals and ratios (sections 6 to 10), computed once all trades are in

    def summarize(self) -> None:
        """Totals, round-trip ratios, daily series, Sharpe, Sortino, drawdown, return %."""
        days = self.days.values()
        self.gross = sum((d.gross for d in days), ZERO)
        self.fees = sum((d.fees for d in days), ZERO)
        self.net = self.gross - self.fees
        self.volume = sum((d.volume for d in days), ZERO)
        unpriced_trades = sum(s.unpriced_trades for s in self.symbols.values())
        unpriced_trips = sum(not t.priced for t in self.trips)
        self.fully_priced = not (
            unpriced_trades or self.unpriced_fees or self.unpriced_realizations or unpriced_trips
        )
        self.symbol_net = {name: s.gross - s.fees for name, s in self.symbols.items()}
        first, last = min(self.days), max(self.days)
        self.daily = [
            (d, self.days[d].gross - self.days[d].fees if d in self.days else ZERO)
            for d in range(first, last + 1)
        ]
        self.drawdown = self._drawdown()
        nets = [t.gross - t.fees for t in self.trips if t.priced]
        wins = sum((n for n in nets if n > 0), ZERO)
        losses = -sum((n for n in nets if n < 0), ZERO)
        self.ratios: dict[str, Decimal | None] = {
            "win_rate": RATIO.divide(sum(n > 0 for n in nets), len(nets)) if nets else None,
            "profit_factor": RATIO.divide(wins, losses) if losses else None,
            "expectancy": RATIO.divide(sum(nets, ZERO), len(nets)) if nets else None,
        }
        self.return_pct = RATIO.divide(self.net * 100, self.capital) if self.capital else None
        with localcontext(RATIO):
            self.sharpe, self.sortino = self._sharpe_sortino()

    def _sharpe_sortino(self) -> tuple[Decimal | None, Decimal | None]:
        """Section 9: daily returns on C, sample denominators, 365-day annualisation."""
        if not self.capital or len(self.daily) < 2:
            return None, None
        returns = [pnl / self.capital for _day, pnl in self.daily]
        n = len(returns)
        mean = sum(returns, ZERO) / n
        variance = sum(((r - mean) ** 2 for r in returns), ZERO) / (n - 1)
        downside = sum((r**2 for r in returns if r < 0), ZERO) / (n - 1)
        annual = Decimal(365).sqrt()
        sharpe = mean / variance.sqrt() * annual if variance else None
        sortino = mean / downside.sqrt() * annual if downside else None
        return sharpe, sortino

    def _drawdown(self) -> dict[str, Any]:
        """Section 9: the largest fall of equity from its high-water mark, in R."""
        equity = [(self.daily[0][0] - 1, self.capital)]
        for day, pnl in self.daily:
            equity.append((day, equity[-1][1] + pnl))
        high, high_day = equity[0][1], equity[0][0]
        worst: tuple[Decimal, Decimal, int, int] = (ZERO, high, high_day, high_day)
        for day, value in equity:
            if value >= high:  # ties move the peak forward
                high, high_day = value, day
            if high - value > worst[0]:  # the first of equal falls
                worst = (high - value, high, high_day, day)
        amount, peak_value, peak, trough = worst
        if not amount:
            no_drawdown: dict[str, Any] = {"amount": ZERO, "duration_days": 0}
            return no_drawdown | {"peak": None, "trough": None, "recovered": None}
        recovered = next(
            (day for day, value in equity if day > trough and value >= peak_value), None
        )
        end = recovered if recovered is not None else equity[-1][0]
        return {
            "amount": amount,
            "pct": RATIO.divide(amount * 100, peak_value),
            "peak": day_text(peak),
            "trough": day_text(trough),
            "recovered": None if recovered is None else day_text(recovered),
            "duration_days": end - peak,
        }


def day_text(day: int) -> str:
    """ISO date of a day number (days since 1970-01-01)."""
    return time.strftime("%Y-%m-%d", time.gmtime(day * 86_400))


# --------------------------------------------------------------------------- the stack


@dataclass(frozen=True, slots=True, kw_only=True)
class Session:
    """What one registered account yields: its seeded trades and what the enclave said."""

    session_id: str
    seeded: list[SeededTrade]
    truth: GroundTruth
    report: SignedReport
    metrics: dict[str, Any]
    sig_public: bytes


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """A stack whose exchange hosts are the local fakes (nothing leaves the machine)."""
    yield from running_stack(tmp_path_factory, "ground-truth")


def new_client(stack: LocalStack) -> SecureClient:
    """The SDK pinned to the stack's simulator root and PCRs."""
    return SecureClient(
        stack.base_url,
        expected_pcrs=stack.expected_pcrs(),
        root_der=stack.nsm_root_der(),
        ca_file=str(stack.ca_file),
    )


async def observe(stack: LocalStack) -> dict[str, Session]:
    """Register every account at once, wait for complete polls, fetch report and metrics."""
    async with new_client(stack) as client:
        quote = await client.attest()
        fakes = stack.fakes_info()["exchanges"]
        registrations = {
            name: await client.register(
                exchange=name,
                api_key=fakes[name]["credentials"]["api_key"],
                api_secret=fakes[name]["credentials"]["api_secret"],
                label=f"ground-truth-{name}",
            )
            for name in EXCHANGES
        }
        sessions: dict[str, Session] = {}
        deadline = time.monotonic() + POLL_DEADLINE_S
        for name, registration in registrations.items():
            expected = fakes[name]["trades"]
            while True:
                polling = (await client.summary(registration.session_id))["polling"]
                assert polling.get("error_kind") is None, polling
                if polling.get("complete") and polling.get("trades_seen") == expected:
                    break
                assert time.monotonic() < deadline, f"{name} polling unfinished: {polling}"
                await asyncio.sleep(0.5)
            seeded = [READERS[name](row) for row in stack.fake_admin("GET", f"/trades/{name}")]
            assert {(t.symbol, t.id) for t in seeded} == stack.truth(name)
            sessions[name] = Session(
                session_id=registration.session_id,
                seeded=seeded,
                truth=GroundTruth(seeded, REPORTING[name]),
                report=await client.aggregates(registration.session_id),  # SDK verifies
                metrics=await client.metrics(registration.session_id),
                sig_public=quote.sig_public,
            )
        return sessions


@pytest.fixture(scope="module")
def sessions(stack: LocalStack) -> dict[str, Session]:
    """Both accounts polled to completion, each with its first signed report."""
    return asyncio.run(observe(stack))


@pytest.fixture(params=EXCHANGES)
def session(request: pytest.FixtureRequest, sessions: dict[str, Session]) -> Session:
    """Each account in turn."""
    return sessions[request.param]


def assert_ratio(reported: str | None, expected: Decimal | None, what: str) -> None:
    """A reported ratio (12 decimal places) equals ours to within one unit in the 12th."""
    if expected is None:
        assert reported is None, f"{what}: reported {reported}, expected null"
        return
    assert reported is not None, f"{what}: reported null, expected {expected}"
    assert abs(Decimal(reported) - expected) <= RATIO_TOLERANCE, (
        f"{what}: reported {reported}, expected {expected}"
    )


# --------------------------------------------------------------------------- figures


def test_counts_equal_the_seeded_trades(session: Session) -> None:
    """The signed trade and order counts equal the fake's trades and distinct orders."""
    payload = session.report.payload
    assert payload["trades"] == len(session.seeded) == session.truth.count
    assert payload["orders"] == len({(t.symbol, t.order_id) for t in session.seeded})
    assert payload["completeness"]["complete"] is True


def test_money_figures_equal_an_independent_fifo(session: Session) -> None:
    """Volume, fees and realized PnL gross and net equal the test's FIFO, exactly."""
    payload, truth = session.report.payload, session.truth
    assert payload["reporting_currency"] == session.truth.reporting
    reported = {k: Decimal(payload[k]) for k in ("volume", "fees", "pnl_gross", "pnl")}
    assert reported == {
        "volume": truth.volume,
        "fees": truth.fees,
        "pnl_gross": truth.gross,
        "pnl": truth.net,
    }
    assert payload["fully_priced"] is truth.fully_priced


def test_round_trip_ratios_equal_an_independent_fifo(session: Session) -> None:
    """Win rate, profit factor and expectancy equal the test's own round trips."""
    payload = session.report.payload
    for name, expected in session.truth.ratios.items():
        assert_ratio(payload[name], expected, name)


def test_return_sharpe_sortino_and_drawdown_equal_an_independent_fifo(session: Session) -> None:
    """Return %, Sharpe, Sortino and max drawdown follow from our daily series and C."""
    payload, truth = session.report.payload, session.truth
    assert_ratio(payload["return_pct"], truth.return_pct, "return_pct")
    assert_ratio(payload["sharpe"], truth.sharpe, "sharpe")
    assert_ratio(payload["sortino"], truth.sortino, "sortino")
    expected = dict(truth.drawdown)
    reported = payload["max_drawdown"]
    assert Decimal(reported["amount"]) == expected.pop("amount")
    if "pct" in expected:
        assert_ratio(reported["pct"], expected.pop("pct"), "max_drawdown.pct")
    assert {k: reported[k] for k in expected} == expected


def test_per_symbol_figures_equal_an_independent_fifo(session: Session) -> None:
    """/enclave/metrics per symbol: trades, sides, volumes, fees and gross PnL, exactly."""
    reported = session.metrics["symbols"]
    assert set(reported) == set(session.truth.symbols)
    for symbol, mine in session.truth.symbols.items():
        theirs = reported[symbol]
        assert (theirs["trades"], theirs["buys"], theirs["sells"]) == (
            mine.trades,
            mine.buys,
            mine.sells,
        ), symbol
        assert theirs["unpriced_trades"] == mine.unpriced_trades, symbol
        money = ("volume", "base_volume", "gross_pnl", "fees", "net_pnl")
        assert {k: Decimal(theirs[k]) for k in money} == {
            "volume": mine.volume,
            "base_volume": mine.base_volume,
            "gross_pnl": mine.gross,
            "fees": mine.fees,
            "net_pnl": session.truth.symbol_net[symbol],
        }, symbol


def test_daily_series_equals_an_independent_fifo(session: Session) -> None:
    """/enclave/metrics daily: one row per UTC day, trades and net PnL as recomputed."""
    daily = session.metrics["daily"]
    expected = session.truth.daily
    assert [row["date"] for row in daily] == [day_text(day) for day, _pnl in expected]
    assert [Decimal(row["net_pnl"]) for row in daily] == [pnl for _day, pnl in expected]
    assert [row["trades"] for row in daily] == [
        session.truth.days[day].trades if day in session.truth.days else 0 for day, _ in expected
    ]


def test_the_binance_account_exercises_every_path(sessions: dict[str, Session]) -> None:
    """The comparison is not vacuous: the seeded Binance history hits every FIFO rule."""
    truth = sessions["binance"].truth
    seeded = sessions["binance"].seeded
    assert truth.gross != 0 and truth.fees > 0 and truth.capital > 0
    assert sum(t.priced for t in truth.trips) > 20  # many priced round trips
    assert any(t.gross - t.fees > 0 for t in truth.trips if t.priced)
    assert any(t.gross - t.fees < 0 for t in truth.trips if t.priced)
    assert truth.fee_asset_pnl != 0  # fees paid in BTC/ETH/BNB realize PnL
    assert {t.fee_currency for t in seeded} >= {"USDT", "BTC", "ETH", "BNB"}
    assert any(t.symbol == "ETH/BTC" for t in seeded)  # chained valuation through BTC
    assert len({t.order_id for t in seeded}) < len(seeded)  # partial fills
    assert not truth.fully_priced  # BNB fees and ETH/BTC before their first USDT price
    kraken = sessions["kraken"].truth
    assert kraken.volume > 0 and not kraken.fully_priced  # USD markets priced, EUR ones not


# --------------------------------------------------------------------------- signature


def tampered(value: Any) -> Any:
    """A different JSON value of the same kind (a nested one changed in one leaf)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, str):
        return value[:-1] + ("0" if value[-1:] != "0" else "1") if value else "x"
    if value is None:
        return "0"
    if isinstance(value, dict):
        changed = copy.deepcopy(value)
        if not changed:
            return {"x": 1}
        key = sorted(changed)[0]
        changed[key] = tampered(changed[key])
        return changed
    if isinstance(value, list):
        return [*value, 0] if not value else [tampered(value[0]), *value[1:]]
    raise TypeError(type(value))


def leaves(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Paths of every scalar in a JSON value."""
    if isinstance(value, dict) and value:
        for key in value:
            yield from leaves(value[key], (*path, key))
    elif isinstance(value, list) and value:
        for index, item in enumerate(value):
            yield from leaves(item, (*path, index))
    else:
        yield path


def assert_refused(public_key: bytes, payload: dict[str, Any], signature: str) -> None:
    with pytest.raises(SignatureError):
        verify_payload(public_key, payload, signature)


@pytest.mark.parametrize("name", SIGNED_FIELDS)
def test_tampering_with_a_signed_field_fails_verification(
    sessions: dict[str, Session], name: str
) -> None:
    """Changing any one payload field makes verify_payload refuse the report."""
    observed = sessions["binance"]
    payload, signature = observed.report.payload, observed.report.signature
    verify_payload(observed.sig_public, payload, signature)  # the untouched report verifies
    assert name in payload
    assert_refused(observed.sig_public, {**payload, name: tampered(payload[name])}, signature)
    assert_refused(observed.sig_public, {k: v for k, v in payload.items() if k != name}, signature)


def test_tampering_with_any_nested_value_fails_verification(
    sessions: dict[str, Session],
) -> None:
    """Every scalar anywhere in the payload is covered; an added field is refused too."""
    observed = sessions["binance"]
    payload, signature = observed.report.payload, observed.report.signature
    paths = list(leaves(payload))
    assert len(paths) > len(payload)  # nested objects (completeness, max_drawdown) included
    for path in paths:
        changed = copy.deepcopy(payload)
        holder = changed
        for step in path[:-1]:
            holder = holder[step]
        holder[path[-1]] = tampered(holder[path[-1]])
        assert_refused(observed.sig_public, changed, signature)
    assert_refused(observed.sig_public, {**payload, "bonus": "1"}, signature)


def test_a_flipped_signature_bit_fails_verification(sessions: dict[str, Session]) -> None:
    """Each of the 512 signature bits flipped in turn: the report no longer verifies."""
    observed = sessions["binance"]
    payload, signature = observed.report.payload, observed.report.signature
    raw = base64.b64decode(signature)
    assert len(raw) == 64
    for bit in range(len(raw) * 8):
        flipped = bytearray(raw)
        flipped[bit // 8] ^= 1 << (bit % 8)
        assert_refused(observed.sig_public, payload, base64.b64encode(flipped).decode())


# --------------------------------------------------------------------------- chain


async def test_reports_form_a_hash_chain(
    client: SecureClient, sessions: dict[str, Session]
) -> None:
    """Each report has seq + 1 and prev_report_hash = SHA-256 of the previous payload."""
    observed = sessions["binance"]
    first = observed.report.payload
    assert first["seq"] == 1 and first["prev_report_hash"] is None
    previous = first
    for _ in range(2):
        report = await client.aggregates(observed.session_id)  # the SDK verifies it
        payload = report.payload
        assert payload["seq"] == previous["seq"] + 1
        assert payload["prev_report_hash"] == report_hash(previous)
        # The hash is plain SHA-256 over the RFC 8785 form, which a client recomputes.
        assert report_hash(previous) == hashlib.sha256(canonical_json(previous)).hexdigest()
        for name in ("trades", "pnl", "pnl_gross", "fees", "volume", "merkle_root"):
            assert payload[name] == first[name]  # same trades, same figures
        previous = payload


# --------------------------------------------------------------------------- the oracle


def test_the_test_fifo_reproduces_the_worked_example_of_the_docs() -> None:
    """The FIFO above gives docs/metrics.md section 13's hand-computed figures."""
    rows = (
        ("01 09", "BTC/USDT", "buy", "1", "40000", "40000", "40", "USDT"),
        ("01 10", "BNB/USDT", "buy", "10", "300", "3000", "3", "USDT"),
        ("02 09", "BTC/USDT", "sell", "0.4", "42000", "16800", "0.02", "BNB"),
        ("04 09", "ETH/BTC", "buy", "4", "0.05", "0.2", "0.004", "ETH"),
        ("05 09", "ETH/USDT", "sell", "6", "2000", "12000", "12", "USDT"),
        ("06 09", "ETH/USDT", "buy", "2.004", "2050", "4108.2", "4.1082", "USDT"),
    )
    trades = [
        SeededTrade(
            symbol=symbol,
            id=str(number),
            order_id=str(number),
            side=side,
            amount=Decimal(amount),
            price=Decimal(price),
            cost=Decimal(cost),
            fee=Decimal(fee),
            fee_currency=fee_currency,
            timestamp=calendar.timegm(time.strptime(f"2024-01-{when}", "%Y-%m-%d %H")) * 1000,
        )
        for number, (when, symbol, side, amount, price, cost, fee, fee_currency) in enumerate(
            rows, 1
        )
    ]
    truth = GroundTruth(trades)
    assert (truth.gross, truth.fees, truth.net) == (
        Decimal("700.2"),
        Decimal("73.5082"),
        Decimal("626.6918"),
    )
    assert (truth.volume, truth.capital) == (Decimal("84308.2"), Decimal(43000))
    assert [t.gross - t.fees for t in truth.trips] == [
        Decimal("778"),
        Decimal("392"),
        Decimal("-415.992"),
        Decimal("-108.3162"),
    ]
    assert_ratio("1.457422790698", truth.return_pct, "return_pct")
    assert_ratio("4.702175082877", truth.sharpe, "sharpe")
    assert_ratio("10.455072451700", truth.sortino, "sortino")
    assert_ratio("0.5", truth.ratios["win_rate"], "win_rate")
    assert_ratio("2.231511923712", truth.ratios["profit_factor"], "profit_factor")
    assert_ratio("161.42295", truth.ratios["expectancy"], "expectancy")
    assert truth.drawdown["amount"] == Decimal("515.9082")
    assert_ratio("1.168730885811", truth.drawdown["pct"], "max_drawdown.pct")
    assert (truth.drawdown["peak"], truth.drawdown["trough"]) == ("2024-01-04", "2024-01-06")
    assert (truth.drawdown["recovered"], truth.drawdown["duration_days"]) == (None, 2)
    assert truth.fully_priced and truth.fee_asset_pnl == 0
