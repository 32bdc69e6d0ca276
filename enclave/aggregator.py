"""Exact, incremental performance aggregation of one session's trades. Side: enclave.

One ``Aggregator`` per session turns the pollers' ``Trade`` records into the figures a
trader proves (docs/metrics.md defines every one of them, with a worked example):

- **Exact money.** Every number is a ``Decimal`` parsed from the exchange's own string,
  computed in a 100-digit context; the output says whether any money figure was rounded
  (``arithmetic.exact``). Ratios (Sharpe, return %, ...) are rounded half-even to 12
  decimal places, and only when reported.
- **FIFO lots per asset**, valued in one reporting currency (default USDT). A trade on
  ``BASE/QUOTE`` has two legs: BASE comes in (buy) or goes out (sell) at
  ``price x value(QUOTE)``, and QUOTE goes the other way at ``value(QUOTE)``, unless the
  asset is cash: the reporting currency, or an asset configured at par (stablecoins are
  1:1 only if configured). A leg against the position closes lots oldest first and
  realizes PnL; the rest opens a lot, so an oversized sell closes the long and opens a
  short (and symmetrically).
- **Fees** are expensed at their value at trade time (base: the trade's price; quote:
  the quote's value; any other asset: the last trade price seen for it, else the
  configured ``PriceSource``). Paying fee units of a non-cash asset disposes of them at
  that value, like a sell leg: its long lots close FIFO (realizing their gain or loss),
  or its short grows.
- **Unpriced, never zero.** When no value is known for a quote or fee asset, the trade
  is still counted, but what cannot be valued is left out of the money figures and
  counted under ``unpriced`` in the output.
- **Incremental.** ``add`` costs O(new trades) for trades newer than the last one
  processed (the ``(timestamp, symbol, id)`` order; numeric ids compare as numbers).
  An older trade (per-symbol history walks deliver them routinely) rewinds to the last
  checkpoint before it and replays the merged tail, so the result always equals one
  pass over all trades in time order. Checkpoints are encoded states taken every
  ``checkpoint_every`` trades; the log keeps references to the trades (shared with the
  session's ``TradeLedger``), not copies.
- **Sealable.** ``to_state`` is a compact CBOR value without the log;
  ``Aggregator.from_state(state, config, history=ledger)`` resumes it, with the
  session's trades as ``history`` so that late older trades can still be replayed.

Errors: ``AggregatorError`` (base) > ``StateError`` (a state value that is malformed,
of another version, or made under another configuration) and ``ReplayError`` (a trade
older than a state restored without ``history``). Bad trades never raise: they are
skipped and counted by reason.
"""

from __future__ import annotations

import gc
import hashlib
import heapq
import sys
from array import array
from bisect import bisect_left
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import (
    MAX_EMAX,
    MIN_EMIN,
    ROUND_HALF_EVEN,
    Context,
    Decimal,
    DivisionByZero,
    Inexact,
    InvalidOperation,
    Overflow,
    localcontext,
)
from itertools import groupby
from operator import itemgetter
from typing import Any, Final, Protocol, TypeAlias, TypeVar

import cbor2

from enclave.exchanges.history import Trade
from shared.cbor import CborError, strict_loads

__all__ = [
    "METHOD_VERSION",
    "STABLECOINS",
    "Aggregator",
    "AggregatorConfig",
    "AggregatorError",
    "FixedPrices",
    "PriceSource",
    "ReplayError",
    "StateError",
]

METHOD_VERSION: Final = "perf-aggregator/metrics/v1"
"""Names the definitions in docs/metrics.md; a change of any definition bumps it."""

STABLECOINS: Final = frozenset({"USDT", "USDC", "USD", "BUSD"})
"""A convenient ``par_assets`` value; never applied unless configured."""

PRECISION: Final = 100
"""Significant digits of money arithmetic (sums and products of exchange strings)."""

ANNUALIZATION_DAYS: Final = 365
RATIO_PLACES: Final = 12

_STATE_VERSION: Final = 1
_DAY_MS: Final = 86_400_000
_EPOCH_ORDINAL: Final = date(1970, 1, 1).toordinal()
_MAX_EXPONENT: Final = 40  # |adjusted exponent| of any number read from a trade
_ZERO: Final = Decimal(0)
_ONE: Final = Decimal(1)
_RATIO_QUANTUM: Final = Decimal(1).scaleb(-RATIO_PLACES)
# Bounds of a readable nonzero magnitude: 1E-40 <= |x| < 1E41 is exactly a finite,
# nonzero x with |x.adjusted()| <= _MAX_EXPONENT (two comparisons instead of five calls).
_LOW: Final = Decimal(1).scaleb(-_MAX_EXPONENT)
_HIGH: Final = Decimal(1).scaleb(_MAX_EXPONENT + 1)
_NEG_LOW: Final = -_LOW
_NEG_HIGH: Final = -_HIGH


def _context(precision: int) -> Context:
    return Context(
        prec=precision,
        rounding=ROUND_HALF_EVEN,
        Emin=MIN_EMIN,
        Emax=MAX_EMAX,
        traps=[InvalidOperation, DivisionByZero, Overflow],
    )


_MONEY: Final = _context(PRECISION)
# Pro-rata fee shares (round-trip attribution only), derived rates and ratios: 34
# digits, as IEEE decimal128. Fee shares never reach a money total; a rounded derived
# rate marks the output inexact.
_RATIO: Final = _context(34)

_Key: TypeAlias = tuple[int, str, int, str]


def _order_key(trade: Trade) -> _Key:
    """Processing order: time, then symbol, then id (numeric ids as numbers)."""
    return (trade.timestamp, trade.symbol, len(trade.id), trade.id)


_first = itemgetter(0)


# ---------------------------------------------------------------------------- errors


class AggregatorError(Exception):
    """Base of the aggregator's errors."""


class StateError(AggregatorError):
    """A state value that cannot be restored (malformed, other version or config)."""


class ReplayError(AggregatorError):
    """A trade older than a state restored without history: it cannot be replayed."""


# ---------------------------------------------------------------------------- config


class PriceSource(Protocol):
    """A deterministic fallback value of an asset in the reporting currency.

    Consulted only when no trade of the session prices the asset. It must answer the
    same for the same ``(asset, timestamp)``, or replays would differ.
    """

    @property
    def name(self) -> str:
        """Recorded in the output as the source of every value it gave."""
        ...

    def price(self, asset: str, timestamp: int) -> Decimal | None:
        """Value of one unit of ``asset`` at ``timestamp`` (ms), or None if unknown."""
        ...


@dataclass(frozen=True, slots=True)
class FixedPrices:
    """A ``PriceSource`` of constant values, e.g. ``{"BNB": "300"}`` (config, tests)."""

    name: str
    prices: Mapping[str, str] = field(hash=False)  # a dict: the config stays hashable
    _values: dict[str, Decimal] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        values = {asset: Decimal(text) for asset, text in self.prices.items()}
        if not all(value.is_finite() and value > 0 for value in values.values()):
            raise ValueError("fixed prices must be finite and positive")
        object.__setattr__(self, "_values", values)

    def price(self, asset: str, timestamp: int) -> Decimal | None:
        """The configured value, whatever the time."""
        return self._values.get(asset)


@dataclass(frozen=True, slots=True, kw_only=True)
class AggregatorConfig:
    """How a session's trades are valued; part of every state (a restore must match)."""

    reporting_currency: str = "USDT"
    """Every money figure is in this asset; it is cash (no lots)."""
    par_assets: frozenset[str] = frozenset()
    """Assets valued at exactly one reporting unit and treated as cash. Empty by default:
    stablecoins are 1:1 only when configured (``STABLECOINS``); stated in the output."""
    max_price_age_ms: int | None = None
    """A last trade price older than this is not used (then the price source, else
    unpriced). None: any age; the oldest age used is reported."""
    price_source: PriceSource | None = None
    """Fallback values for assets no trade prices (its ``name`` is in the output)."""
    checkpoint_every: int = 10_000
    """Trades between replay checkpoints: memory (one encoded state each) against the
    cost of a late trade (at most this many trades replayed before its position)."""

    def __post_init__(self) -> None:
        currency = self.reporting_currency
        if not currency or "/" in currency or ":" in currency:
            raise ValueError("reporting_currency must be an asset code")
        par = frozenset(self.par_assets)
        if not all(isinstance(a, str) and a and "/" not in a for a in par):
            raise ValueError("par_assets must be asset codes")
        object.__setattr__(self, "par_assets", par - {currency})
        if self.max_price_age_ms is not None and self.max_price_age_ms < 0:
            raise ValueError("max_price_age_ms must not be negative")
        if self.checkpoint_every < 1:
            raise ValueError("checkpoint_every must be positive")

    def fingerprint(self) -> dict[str, Any]:
        """The settings that change results (a state restores only under the same)."""
        return {
            "reporting_currency": self.reporting_currency,
            "par_assets": sorted(self.par_assets),
            "max_price_age_ms": self.max_price_age_ms,
            "price_source": None if self.price_source is None else self.price_source.name,
        }


# ---------------------------------------------------------------------------- book


# One lot of open units: [quantity, unit cost or None (unpriced), opening fee of these
# units or None (fee not valued)], money in the reporting currency. A partial close moves
# the pro-rata share of the fee (rounded to 34 digits: only round-trip attribution, the
# fee total is untouched). A list, not a class: lots are created and consumed on the
# hot path, and a list is several times cheaper.
_Lot: TypeAlias = list[Any]
_QTY, _FEE = 0, 2


class _Position:
    """FIFO lots of one asset, all on one side (+1 long, -1 short, 0 flat)."""

    __slots__ = ("lots", "realized", "sign")

    def __init__(self) -> None:
        self.sign = 0
        self.lots: deque[_Lot] = deque()
        self.realized = _ZERO


class _Day:
    """One UTC day's sums."""

    __slots__ = ("fees", "gross", "trades", "volume")

    def __init__(self) -> None:
        self.trades = 0
        self.volume = _ZERO
        self.gross = _ZERO
        self.fees = _ZERO


class _Symbol:
    """One symbol's sums (realizations attributed to the trade that caused them)."""

    __slots__ = ("base_volume", "buys", "fees", "gross", "sells", "trades", "unpriced", "volume")

    def __init__(self) -> None:
        self.trades = 0
        self.buys = 0
        self.sells = 0
        self.volume = _ZERO
        self.base_volume = _ZERO
        self.gross = _ZERO
        self.fees = _ZERO
        self.unpriced = 0


# The realized result of one run of closing fills of one order on one asset:
# [symbol, order id (or "\x1e" + trade id), gross, fees, priced]. A list, like a lot:
# one is created for about every other closing fill.
_RoundTrip: TypeAlias = list[Any]
_RT_SYMBOL, _RT_ORDER, _RT_GROSS, _RT_FEES, _RT_PRICED = range(5)


# (base, quote, base is cash, quote is cash, valuation source of a cash quote)
_Market: TypeAlias = tuple[str, str, bool, bool, str]


class _Env:
    """Configuration facts the book consults per trade, and a market-name cache."""

    def __init__(self, config: AggregatorConfig) -> None:
        self.reporting = config.reporting_currency
        self.par = config.par_assets
        self.cash = config.par_assets | {config.reporting_currency}
        self.max_age = config.max_price_age_ms
        self.source = config.price_source
        self.markets: dict[str, _Market | None] = {}
        # Valuation source of each cash asset (one lookup for "is it cash, and how").
        self.cash_sources = {asset: self.cash_source(asset) for asset in self.cash}

    def market(self, symbol: str) -> _Market | None:
        """The parsed symbol, or None if it is not a spot pair."""
        base, slash, quote = symbol.partition("/")
        found: _Market | None = None
        if slash and base and quote and "/" not in quote and ":" not in quote and base != quote:
            quote_source = self.cash_source(quote) if quote in self.cash else ""
            found = (base, quote, base in self.cash, quote in self.cash, quote_source)
        self.markets[symbol] = found
        return found

    def cash_source(self, asset: str) -> str:
        return "reporting" if asset == self.reporting else "par"


def _add(sums: dict[str, Decimal], name: str, value: Decimal) -> None:
    sums[name] = sums.get(name, _ZERO) + value


class _Book:
    """Everything that depends on processing order: the state replays rebuild.

    ``apply`` must run inside the money context and never raises for any ``Trade``.
    """

    def __init__(self, env: _Env) -> None:
        self.env = env
        self.processed = 0  # log entries applied (valid or skipped)
        self.last_key: _Key | None = None
        self.trades = 0
        self.skipped: dict[str, int] = {}
        self.positions: dict[str, _Position] = {}
        self.prices: dict[str, tuple[Decimal, str, int]] = {}  # value, via symbol, ms
        # Total gross PnL, fees and volume are sums of ``days`` (one add per trade less).
        self.fee_asset_pnl = _ZERO
        self.basis = _ZERO
        self.peak_basis = _ZERO
        self.days: dict[int, _Day] = {}
        self.symbols: dict[str, _Symbol] = {}
        self.conversions: dict[str, int] = {}
        self.fee_sources: dict[str, int] = {}
        self.max_price_age = 0
        self.unpriced_trades = 0
        self.unpriced_realizations = 0
        self.unpriced_fees = 0
        self.unpriced_quantity: dict[str, Decimal] = {}
        self.unpriced_fee_amounts: dict[str, Decimal] = {}
        self.rt_closed = 0
        self.rt_unpriced = 0
        self.rt_wins = 0
        self.rt_losses = 0
        self.rt_win_sum = _ZERO
        self.rt_loss_sum = _ZERO
        self.rt_net_sum = _ZERO
        self.pending: dict[str, _RoundTrip] = {}
        self.rounded = False
        # The last valid price read, text and value (a parse cache, not state).
        self.price_text: object = None
        self.price_value = _ZERO

    # ------------------------------------------------------------------ valuation

    def value(self, asset: str, timestamp: int) -> tuple[Decimal | None, str]:
        """Value of a non-cash asset at ``timestamp``, and where it came from."""
        entry = self.prices.get(asset)
        if entry is not None:
            age = timestamp - entry[2]
            if self.env.max_age is None or age <= self.env.max_age:
                if age > self.max_price_age:
                    self.max_price_age = age
                return entry[0], "last_trade"
        source = self.env.source
        if source is not None:
            try:
                found = source.price(asset, timestamp)
            except Exception:  # noqa: BLE001 - a failing source prices nothing (fail closed)
                found = None
            if isinstance(found, Decimal) and found.is_finite() and found > 0:
                return found, "price_source"
        return None, "unpriced"

    # ------------------------------------------------------------------ one trade

    def skip(self, reason: str) -> bool:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        return False

    def apply(self, trade: Trade) -> bool:
        """Process one trade (False: skipped as unreadable, counted by reason).

        The hot path: written for speed (locals, no helper calls on the common path).
        The caller counts ``processed``.
        """
        env = self.env
        symbol = trade.symbol
        try:
            market = env.markets[symbol]
        except KeyError:
            market = env.market(symbol)
        if market is None:
            return self.skip("unsupported_symbol")
        side = trade.side
        if side == "buy":
            direction = 1
        elif side == "sell":
            direction = -1
        else:
            return self.skip("bad_side")
        try:
            # Fills of one order arrive together with one price: the last valid price
            # read is reused for the same text (the value is the same; one parse less).
            price_text = trade.price
            if price_text == self.price_text:
                price, known_price = self.price_value, True
            else:
                price, known_price = Decimal(price_text), False
            amount = Decimal(trade.amount)
            cost_text = trade.cost
            cost = price * amount if cost_text is None else Decimal(cost_text)
            fee_text = trade.fee_cost
            fee = None if fee_text is None else Decimal(fee_text)
            # Positive, finite and |adjusted exponent| <= 40, as bounds: the exponent
            # bound keeps absurd magnitudes ("1e999999999") out of the output, and
            # _LOW <= x < _HIGH is exactly x > 0, finite, -40 <= x.adjusted() <= 40.
            # NaN fails the comparisons (InvalidOperation); infinities miss the bounds.
            # A zero's adjusted() is its exponent, so zeros check it directly.
            if not (
                (known_price or _LOW <= price < _HIGH)
                and _LOW <= amount < _HIGH
                and _ZERO <= cost < _HIGH
                and (cost or cost.adjusted() <= _MAX_EXPONENT)
                and (
                    fee is None
                    or _LOW <= fee < _HIGH
                    or _NEG_HIGH < fee <= _NEG_LOW
                    or (not fee and -_MAX_EXPONENT <= fee.adjusted() <= _MAX_EXPONENT)
                )
            ):
                return self.skip("bad_number")
        except (InvalidOperation, ValueError, TypeError):
            return self.skip("bad_number")
        self.price_text, self.price_value = price_text, price
        base, quote, base_cash, quote_cash, cash_quote_source = market
        timestamp = trade.timestamp
        self.trades += 1

        # Value of one QUOTE unit in the reporting currency, at this trade.
        quote_value: Decimal | None
        if quote_cash:
            quote_value, quote_source = _ONE, cash_quote_source
        elif base_cash:
            # The trade itself is the rate (e.g. USDT/TRY when reporting in USDT).
            quote_value, quote_source = _RATIO.divide(_ONE, price), "trade"
            if quote_value * price != _ONE:
                self.rounded = True
        else:
            quote_value, quote_source = self.value(quote, timestamp)
        conversions = self.conversions
        try:
            conversions[quote_source] += 1
        except KeyError:
            conversions[quote_source] = 1

        day_index = timestamp // _DAY_MS
        try:
            day = self.days[day_index]
        except KeyError:
            day = self.days[day_index] = _Day()
        try:
            stats = self.symbols[symbol]
        except KeyError:
            stats = self.symbols[symbol] = _Symbol()
        day.trades += 1
        stats.trades += 1
        if direction > 0:
            stats.buys += 1
        else:
            stats.sells += 1
        stats.base_volume += amount

        unit: Decimal | None  # value of one BASE unit
        if quote_cash:  # the common case: no conversion
            unit = _ONE if base_cash else price
            day.volume += cost
            stats.volume += cost
        elif quote_value is None:
            unit = None
            self.unpriced_trades += 1
            stats.unpriced += 1
        else:
            unit = _ONE if base_cash else price * quote_value
            notional = cost * quote_value
            day.volume += notional
            stats.volume += notional

        # Fee: expensed at its value now, and carried by the base leg's lots.
        fee_value: Decimal | None = _ZERO
        fee_asset: str | None = None
        fee_value_unit: Decimal | None = None
        # A positive fee in a non-cash asset disposes of its units (a leg of its own).
        pays_fee_units = False
        paid_asset = ""
        paid = _ZERO
        if fee:
            fee_asset = trade.fee_currency
            fee_source: str | None
            if fee_asset is None:
                fee_value_unit, fee_source = None, "unknown_currency"
            elif (fee_source := env.cash_sources.get(fee_asset)) is not None:
                fee_value_unit = _ONE
            else:
                if fee > _ZERO:
                    pays_fee_units, paid_asset, paid = True, fee_asset, fee
                if fee_asset == base:
                    fee_value_unit, fee_source = unit, "trade"
                elif fee_asset == quote:
                    fee_value_unit, fee_source = quote_value, quote_source
                else:
                    fee_value_unit, fee_source = self.value(fee_asset, timestamp)
            if fee_value_unit is None:
                fee_value = None
                if fee_asset is not None:
                    fee_source = "unpriced"
                self.unpriced_fees += 1
                _add(self.unpriced_fee_amounts, fee_asset or "?", fee)
            else:
                fee_value = fee if fee_value_unit is _ONE else fee * fee_value_unit
                day.fees += fee_value
                stats.fees += fee_value
            sources = self.fee_sources
            try:
                sources[fee_source] += 1
            except KeyError:
                sources[fee_source] = 1

        if not base_cash:
            # Inlined ``move`` for a leg that closes nothing (flat, or the same side).
            positions = self.positions
            position = positions.get(base)
            if position is None:
                position = positions[base] = _Position()
            if position.sign != -direction:
                position.lots.append([amount, unit, fee_value])
                position.sign = direction
                if unit is not None:
                    self.basis += amount * unit
            else:
                self.move(base, amount, direction, unit, fee_value, trade, day, stats)
        if not quote_cash:
            # The trade's fee belongs to its base leg, unless the base is cash.
            quote_fee = fee_value if base_cash else _ZERO
            self.move(quote, cost, -direction, quote_value, quote_fee, trade, day, stats)
        if pays_fee_units:
            # Paying a fee disposes of its units at the fee's value, like a sell leg.
            self.pay_fee(paid_asset, paid, fee_value_unit, day, stats)

        if not base_cash:
            if unit is not None:
                self.prices[base] = (unit, symbol, timestamp)
        elif not quote_cash and quote_value is not None:
            self.prices[quote] = (quote_value, symbol, timestamp)
        if self.basis > self.peak_basis:
            self.peak_basis = self.basis
        return True

    def move(
        self, asset: str, qty: Decimal, direction: int, unit: Decimal | None,
        fee: Decimal | None, trade: Trade, day: _Day, stats: _Symbol,
    ) -> None:  # fmt: skip
        """One leg: ``qty`` units of ``asset`` in (+1) or out (-1) at ``unit`` each.

        ``fee`` is the fee value this leg carries (None: not valued). Against the
        position the leg closes lots FIFO and adds to the asset's current round trip;
        the rest opens a lot.
        """
        position = self.positions.get(asset)
        if position is None:
            position = self.positions[asset] = _Position()
        if position.sign == -direction:
            lots = position.lots
            long = direction < 0
            left = qty
            gross = basis_out = unpriced = _ZERO
            fees: Decimal | None = _ZERO
            while left and lots:
                lot = lots[0]
                lot_qty, cost, lot_fee = lot
                if lot_qty <= left:
                    take = lot_qty
                    lots.popleft()
                    share = lot_fee
                else:
                    take = left
                    lot[_QTY] = lot_qty - left
                    share = lot_fee and _RATIO.divide(lot_fee * take, lot_qty)
                    if share:
                        lot[_FEE] = lot_fee - share
                left -= take
                if cost is None:
                    unpriced += take
                else:
                    basis_out += take * cost
                    if unit is None:
                        unpriced += take
                    else:
                        gross += take * (unit - cost) if long else take * (cost - unit)
                if fees is not None:
                    fees = None if share is None else fees + share
            if not lots:
                position.sign = 0
            self.basis -= basis_out
            day.gross += gross
            stats.gross += gross
            position.realized += gross
            # The closing part's share of this leg's fee; the rest goes to the new lot.
            closing_fee: Decimal | None = fee
            if fee and left:
                closing_fee = _RATIO.divide(fee * (qty - left), qty)
                fee -= closing_fee
            elif fee is not None:
                fee = _ZERO
            priced = True
            if unpriced:
                self.unpriced_realizations += 1
                _add(self.unpriced_quantity, asset, unpriced)
                priced, fees = False, _ZERO
            elif fees is None or closing_fee is None:
                priced, fees = False, _ZERO
            else:
                fees += closing_fee
            symbol = trade.symbol
            order = trade.order_id or "\x1e" + trade.id
            pending = self.pending.get(asset)
            if pending and pending[_RT_ORDER] == order and pending[_RT_SYMBOL] == symbol:
                pending[_RT_GROSS] += gross
                pending[_RT_FEES] += fees
                pending[_RT_PRICED] = pending[_RT_PRICED] and priced
            else:
                if pending is not None:
                    self.finish(pending)
                self.pending[asset] = [symbol, order, gross, fees, priced]
            qty = left
        if qty:
            position.lots.append([qty, unit, fee])
            position.sign = direction
            if unit is not None:
                self.basis += qty * unit

    def pay_fee(
        self, asset: str, qty: Decimal, unit: Decimal | None, day: _Day, stats: _Symbol
    ) -> None:
        """Fee units paid: ``qty`` (> 0) of ``asset`` out at ``unit`` each, like a sell leg.

        Long lots close FIFO and their PnL goes to ``fee_asset_pnl``, in no round trip;
        a lot partly closed keeps its whole opening fee on what remains (the fee was
        paid for the position). What no lot covers opens or grows a short.
        """
        position = self.positions.get(asset)
        if position is None:
            position = self.positions[asset] = _Position()
        lots = position.lots
        left = qty
        if position.sign > 0:
            gross = basis_out = unpriced = _ZERO
            fees: Decimal | None = _ZERO  # unused, but summed as ``move`` sums it (flags)
            while left and lots:
                lot = lots[0]
                lot_qty, cost, lot_fee = lot
                if lot_qty <= left:
                    take = lot_qty
                    lots.popleft()
                    share = lot_fee
                else:
                    take = left
                    lot[_QTY] = lot_qty - left
                    share = _ZERO
                left -= take
                if cost is None:
                    unpriced += take
                else:
                    basis_out += take * cost
                    if unit is None:
                        unpriced += take
                    else:
                        gross += take * (unit - cost)
                if fees is not None:
                    fees = None if share is None else fees + share
            if not lots:
                position.sign = 0
            self.basis -= basis_out
            day.gross += gross
            stats.gross += gross
            position.realized += gross
            self.fee_asset_pnl += gross
            if unpriced:
                self.unpriced_realizations += 1
                _add(self.unpriced_quantity, asset, unpriced)
        if left:
            lots.append([left, unit, _ZERO])
            position.sign = -1
            if unit is not None:
                self.basis += left * unit

    def finish(self, trip: _RoundTrip) -> None:
        """Count a round trip that a later order's fill ended."""
        self.rt_closed += 1
        _symbol, _order, gross, fees, priced = trip
        if not priced:
            self.rt_unpriced += 1
            return
        net = gross - fees
        self.rt_net_sum += net
        if net > 0:
            self.rt_wins += 1
            self.rt_win_sum += net
        elif net < 0:
            self.rt_losses += 1
            self.rt_loss_sum -= net

    # ------------------------------------------------------------------ state

    def encode(self) -> dict[str, Any]:
        """Plain CBOR-ready form; decimals as exact strings."""
        return {
            "last_key": None if self.last_key is None else list(self.last_key),
            "ints": {name: getattr(self, name) for name in _BOOK_INTS},
            "decimals": {name: str(getattr(self, name)) for name in _BOOK_DECIMALS},
            "counters": {name: dict(getattr(self, name)) for name in _BOOK_COUNTERS},
            "sums": {
                name: {a: str(v) for a, v in getattr(self, name).items()} for name in _BOOK_SUMS
            },
            "positions": {
                asset: [
                    p.sign,
                    str(p.realized),
                    [[str(q), _text(u), _text(f)] for q, u, f in p.lots],
                ]
                for asset, p in self.positions.items()
            },
            "prices": {a: [str(v), via, at] for a, (v, via, at) in self.prices.items()},
            "days": {d: _record(x, _DAY_FIELDS) for d, x in self.days.items()},
            "symbols": {s: _record(x, _SYMBOL_FIELDS) for s, x in self.symbols.items()},
            "pending": {
                a: [symbol, order, str(gross), str(fees), priced]
                for a, (symbol, order, gross, fees, priced) in self.pending.items()
            },
            "rounded": self.rounded,
        }

    @classmethod
    def decode(cls, env: _Env, data: Any) -> _Book:
        """Inverse of ``encode``; raises StateError on anything malformed."""
        try:
            return cls._decode(env, data)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise StateError("malformed aggregator state") from exc

    @classmethod
    def _decode(cls, env: _Env, data: Any) -> _Book:
        book = cls(env)
        key = data["last_key"]
        if key is not None:
            ts, symbol, length, ident = key
            book.last_key = (_int(ts), _str(symbol), _int(length), _str(ident))
        for name in _BOOK_INTS:
            setattr(book, name, _int(data["ints"][name]))
        for name in _BOOK_DECIMALS:
            setattr(book, name, _dec(data["decimals"][name]))
        for name in _BOOK_COUNTERS:
            setattr(book, name, {_str(k): _int(v) for k, v in data["counters"][name].items()})
        for name in _BOOK_SUMS:
            setattr(book, name, {_str(k): _dec(v) for k, v in data["sums"][name].items()})
        for asset, (sign, realized, lots) in data["positions"].items():
            position = _Position()
            position.sign = _int(sign)
            position.realized = _dec(realized)
            position.lots = deque([_dec(q), _opt(u), _opt(f)] for q, u, f in lots)
            if position.sign not in (-1, 0, 1) or bool(position.lots) != bool(position.sign):
                raise ValueError("inconsistent position")
            book.positions[_str(asset)] = position
        book.prices = {
            _str(a): (_dec(v), _str(via), _int(at)) for a, (v, via, at) in data["prices"].items()
        }
        book.days = {_int(d): _restore(_Day(), r, _DAY_FIELDS) for d, r in data["days"].items()}
        book.symbols = {
            _str(s): _restore(_Symbol(), r, _SYMBOL_FIELDS) for s, r in data["symbols"].items()
        }
        for asset, (symbol, order, gross, fees, priced) in data["pending"].items():
            trip = [_str(symbol), _str(order), _dec(gross), _dec(fees), priced]
            book.pending[_str(asset)] = trip
        book.rounded = data["rounded"]
        flags = (book.rounded, *(trip[_RT_PRICED] for trip in book.pending.values()))
        if not all(isinstance(v, bool) for v in flags):
            raise TypeError("boolean expected")
        return book


# Field tables of the state encoding: one list per kind, so encode and decode agree.
_BOOK_INTS: Final = (
    "processed", "trades", "max_price_age", "unpriced_trades", "unpriced_realizations",
    "unpriced_fees", "rt_closed", "rt_unpriced", "rt_wins", "rt_losses",
)  # fmt: skip
_BOOK_DECIMALS: Final = (
    "fee_asset_pnl", "basis", "peak_basis", "rt_win_sum",
    "rt_loss_sum", "rt_net_sum",
)  # fmt: skip
_BOOK_COUNTERS: Final = ("skipped", "conversions", "fee_sources")
_BOOK_SUMS: Final = ("unpriced_quantity", "unpriced_fee_amounts")
_DAY_FIELDS: Final = (("trades", False), ("volume", True), ("gross", True), ("fees", True))
_SYMBOL_FIELDS: Final = (
    ("trades", False), ("buys", False), ("sells", False), ("volume", True),
    ("base_volume", True), ("gross", True), ("fees", True), ("unpriced", False),
)  # fmt: skip

_Record = TypeVar("_Record", _Day, _Symbol)


def _text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _record(obj: _Day | _Symbol, fields: tuple[tuple[str, bool], ...]) -> list[int | str]:
    return [str(getattr(obj, n)) if is_decimal else getattr(obj, n) for n, is_decimal in fields]


def _restore(obj: _Record, row: Any, fields: tuple[tuple[str, bool], ...]) -> _Record:
    if len(row) != len(fields):
        raise ValueError("wrong record length")
    for (name, is_decimal), value in zip(fields, row, strict=True):
        setattr(obj, name, _dec(value) if is_decimal else _int(value))
    return obj


def _dec(text: Any) -> Decimal:
    """A finite decimal from its exact string (state decoding)."""
    if not isinstance(text, str):
        raise TypeError("decimal string expected")
    try:
        value = Decimal(text)
    except InvalidOperation as exc:
        raise ValueError("decimal string expected") from exc
    if not value.is_finite():
        raise ValueError("finite decimal expected")
    return value


def _opt(text: Any) -> Decimal | None:
    return None if text is None else _dec(text)


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError("integer expected")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("string expected")
    return value


# ---------------------------------------------------------------------------- orders


class _OrderSet:
    """Distinct orders as 64-bit BLAKE2b digests of ``(symbol, order id)``.

    Digests, not the strings, so the state stays compact and is the same across
    processes (``hash()`` of a str is salted per process). Two distinct orders share a
    digest with probability 2^-64 per pair.

    Memory: a set of ints costs about 100 bytes per order (a 36-byte int in a sparse
    table), as much as the rest of a session's aggregate. So the digests live in one
    array, 8 bytes each: a sorted, duplicate-free prefix of ``unique`` digests, then
    whatever ``digests.append`` added since (the hot path appends, nothing more).
    ``compact`` sorts and deduplicates; the caller runs it when the appended part
    outgrows the prefix, so the array stays under twice the distinct count and the
    sort, one sorted run plus a tail, costs O(log n) per order amortised.
    """

    __slots__ = ("digests", "unique")

    def __init__(self, packed: bytes = b"") -> None:
        if len(packed) % 8:
            raise StateError("malformed aggregator state")
        self.digests = array("Q", packed)
        if sys.byteorder == "little":
            self.digests.byteswap()
        self.unique = 0
        self.compact()
        if self.unique != len(packed) // 8:
            raise StateError("malformed aggregator state")

    def __len__(self) -> int:
        self.compact()
        return self.unique

    def compact(self) -> None:
        """Sort the digests and drop repeats (in place: ``digests`` stays the same array).

        A few new digests (a poll's worth, before a snapshot) are inserted by bisection;
        more are merged by one sort of the whole array.
        """
        digests = self.digests
        unique = self.unique
        if len(digests) == unique:
            return
        if len(digests) - unique <= _INSERT_AT_MOST:
            new = set(digests[unique:])
            del digests[unique:]
            for digest in sorted(new):
                at = bisect_left(digests, digest)
                if at == len(digests) or digests[at] != digest:
                    digests.insert(at, digest)
        else:
            digests[:] = array("Q", [digest for digest, _run in groupby(sorted(digests))])
        self.unique = len(digests)

    def pack(self) -> bytes:
        """Sorted big-endian digests."""
        self.compact()
        digests = array("Q", self.digests)
        if sys.byteorder == "little":
            digests.byteswap()
        return digests.tobytes()


_ORDER_SLACK: Final = 256  # appended digests tolerated beyond twice the distinct ones
_INSERT_AT_MOST: Final = 64  # new digests that compaction inserts rather than sorts


def _order_digest(symbol: str, order_id: str, _blake2b: Any = hashlib.blake2b) -> int:
    """The 64-bit BLAKE2b digest of one order (the state format: keep it stable)."""
    digest = _blake2b(f"{symbol}\x1f{order_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


# ---------------------------------------------------------------------------- aggregator


class Aggregator:
    """One session's incremental FIFO aggregation (see the module docstring)."""

    def __init__(self, config: AggregatorConfig | None = None) -> None:
        self._config = config or AggregatorConfig()
        self._env = _Env(self._config)
        self._book = _Book(self._env)
        self._log: list[Trade] = []  # processed trades in order, after ``_floor``
        # The earliest point a replay may restart from: (log entries before it, its last
        # key, its encoded book). A fresh aggregator starts from nothing.
        self._floor: tuple[int, _Key | None, dict[str, Any] | None] = (0, None, None)
        self._checkpoints: list[tuple[int, _Key, bytes]] = []
        self._checkpoint_keys: list[_Key] = []
        self._orders = _OrderSet()
        self._last_order: tuple[str, str] | None = None
        self._first: int | None = None
        self._last: int | None = None
        self.duplicates = 0
        """Trades ignored because one with the same order key was already processed."""
        self.replays = 0
        """Rewinds caused by trades older than the last one processed."""
        self.replayed = 0
        """Trades re-applied by those rewinds (the price of late arrivals)."""

    @property
    def config(self) -> AggregatorConfig:
        """The valuation settings."""
        return self._config

    @property
    def trade_count(self) -> int:
        """Trades aggregated (skipped ones excluded)."""
        return self._book.trades

    # ------------------------------------------------------------------ adding

    def add(self, trades: Iterable[Trade]) -> int:
        """Aggregate new trades in any order; return how many were new.

        Each trade should be given once (feed ``TradeLedger.since``); a trade equal in
        ``(timestamp, symbol, id)`` to one already processed is ignored and counted in
        ``duplicates``. Raises ReplayError, before changing anything, for a trade older
        than a state restored without history.
        """
        # add() is synchronous and creates no reference cycles, but allocates enough
        # containers to trigger repeated full-heap cyclic collections (which scan every
        # Trade the session holds): pausing the collector saves ~20% (bench).
        collecting = gc.isenabled()
        gc.disable()
        try:
            # The key inlined (see ``_order_key``): one call less per trade.
            keyed = [((t.timestamp, t.symbol, len(t.id), t.id), t) for t in trades]
            return self._add(keyed) if keyed else 0
        finally:
            if collecting:
                gc.enable()

    def _add(self, keyed: list[tuple[_Key, Trade]]) -> int:
        keyed.sort(key=_first)
        book = self._book
        with localcontext(_MONEY) as ctx:
            ctx.clear_flags()  # the copy inherits _MONEY's sticky flags (set by reports)
            if book.last_key is None or keyed[0][0] > book.last_key:
                added = self._process(keyed)
            else:
                added = self._rewind_and_merge(keyed)
            if ctx.flags[Inexact]:
                self._book.rounded = True
        return added

    def _rewind_and_merge(self, keyed: list[tuple[_Key, Trade]]) -> int:
        floor_index, floor_key, floor_book = self._floor
        if floor_key is not None:
            if keyed[0][0] < floor_key:
                raise ReplayError("a trade predates the restored state and no history was given")
            repeats = sum(1 for key, _trade in keyed if key == floor_key)
            if repeats:  # the last trade before the restored state, given again
                self.duplicates += repeats
                del keyed[:repeats]
                if not keyed:
                    return 0
                if keyed[0][0] > self._book.last_key:  # type: ignore[operator]
                    return self._process(keyed)
        first_key = keyed[0][0]
        position = bisect_left(self._checkpoint_keys, first_key) - 1
        if position >= 0:
            index, _key, blob = self._checkpoints[position]
            book = _Book.decode(self._env, strict_loads(blob))
        else:
            index = floor_index
            book = _Book(self._env) if floor_book is None else _Book.decode(self._env, floor_book)
        del self._checkpoints[position + 1 :]
        del self._checkpoint_keys[position + 1 :]
        cut = index - floor_index
        tail = self._log[cut:]
        del self._log[cut:]
        self._book = book
        self.replays += 1
        self.replayed += len(tail)
        old = [(_order_key(t), t) for t in tail]
        merged = heapq.merge(old, keyed, key=_first)  # stable: a log trade before its repeat
        return self._process(merged, replayed={id(t) for t in tail})

    def _process(
        self, stream: Iterable[tuple[_Key, Trade]], replayed: set[int] | None = None
    ) -> int:
        """Apply trades in key order; ``replayed`` holds the ids of log trades among them."""
        book = self._book
        apply = book.apply
        append = self._log.append
        every = self._config.checkpoint_every
        orders = self._orders
        add_order = orders.digests.append
        last_symbol, last_order = self._last_order or ("", None)
        first, last = self._first, self._last
        previous = book.last_key
        processed = book.processed
        added = 0
        try:
            for key, trade in stream:
                if key == previous:
                    self.duplicates += 1  # only a new trade repeats a key (merge is stable)
                    continue
                valid = apply(trade)
                processed += 1
                previous = key
                append(trade)
                if replayed is None or id(trade) not in replayed:
                    added += 1
                    if valid:  # order-independent facts: replays skip them
                        symbol = trade.symbol
                        order = trade.order_id or f"\x1e{trade.id}"
                        # Fills of one order arrive together: one digest per run of them.
                        if order != last_order or symbol != last_symbol:
                            add_order(_order_digest(symbol, order))
                            last_symbol, last_order = symbol, order
                        timestamp = key[0]
                        if first is None or timestamp < first:
                            first = timestamp
                        if last is None or timestamp > last:
                            last = timestamp
                if not processed % every:
                    book.processed, book.last_key = processed, key
                    self._checkpoints.append((processed, key, cbor2.dumps(book.encode())))
                    self._checkpoint_keys.append(key)
        finally:
            if len(orders.digests) > 2 * orders.unique + _ORDER_SLACK:
                orders.compact()
            book.processed, book.last_key = processed, previous
            self._last_order = None if last_order is None else (last_symbol, last_order)
            self._first, self._last = first, last
        return added

    # ------------------------------------------------------------------ state

    def to_state(self) -> bytes:
        """Compact CBOR of everything but the log and checkpoints (for sealing)."""
        with localcontext(_MONEY):
            return cbor2.dumps(
                {
                    "v": _STATE_VERSION,
                    "method": METHOD_VERSION,
                    "config": self._config.fingerprint(),
                    "book": self._book.encode(),
                    "orders": self._orders.pack(),
                    "first": self._first,
                    "last": self._last,
                    "duplicates": self.duplicates,
                }
            )

    @classmethod
    def from_state(
        cls,
        state: bytes,
        config: AggregatorConfig | None = None,
        *,
        history: Iterable[Trade] | None = None,
    ) -> Aggregator:
        """Resume from ``to_state`` under the same ``config``.

        ``history`` (the session's trades, e.g. the restored ``TradeLedger``) rebuilds the
        replay log so later trades older than the state are still handled exactly; trades
        in it newer than the state are added. If its older part does not match the state
        (count or last key), everything is recomputed from ``history``.
        """
        aggregator = cls(config)
        try:
            data = strict_loads(state)
        except CborError as exc:
            raise StateError("malformed aggregator state") from exc
        if not isinstance(data, dict) or data.get("v") != _STATE_VERSION:
            raise StateError("unsupported aggregator state version")
        if data.get("method") != METHOD_VERSION:
            raise StateError("aggregator state of another method version")
        if data.get("config") != aggregator._config.fingerprint():
            raise StateError("aggregator state made under another configuration")
        book = _Book.decode(aggregator._env, data.get("book"))
        orders = data.get("orders")
        first, last, duplicates = data.get("first"), data.get("last"), data.get("duplicates")
        if not isinstance(orders, bytes) or not isinstance(duplicates, int):
            raise StateError("malformed aggregator state")
        if not all(v is None or isinstance(v, int) for v in (first, last)):
            raise StateError("malformed aggregator state")
        aggregator._book = book
        aggregator._orders = _OrderSet(orders)
        aggregator._first, aggregator._last = first, last
        aggregator.duplicates = duplicates
        encoded = data["book"]
        if history is None:
            aggregator._floor = (book.processed, book.last_key, encoded)
            return aggregator
        keyed = sorted(((_order_key(t), t) for t in history), key=_first)
        horizon = book.last_key
        cut = 0 if horizon is None else bisect_left(keyed, horizon, key=_first)
        if cut < len(keyed) and horizon is not None and keyed[cut][0] == horizon:
            cut += 1
        if cut != book.processed or (cut and keyed[cut - 1][0] != horizon):
            fresh = cls(config)
            fresh.add(t for _key, t in keyed)
            return fresh
        aggregator._log = [t for _key, t in keyed[:cut]]
        if horizon is not None:
            aggregator._checkpoints.append((book.processed, horizon, cbor2.dumps(encoded)))
            aggregator._checkpoint_keys.append(horizon)
        aggregator.add(t for _key, t in keyed[cut:])
        return aggregator

    # ------------------------------------------------------------------ reporting

    def snapshot(self) -> dict[str, Any]:
        """Every figure, JSON-ready (decimals as strings, times in ms and ISO 8601)."""
        with localcontext(_MONEY):
            return _report(self)


# ---------------------------------------------------------------------------- report


def _money(value: Decimal) -> str:
    """Exact plain notation without trailing zeros."""
    if not value:
        return "0"
    text = format(value.normalize(_MONEY), "f")
    return text


def _ratio(value: Decimal | None) -> str | None:
    if value is None:
        return None
    rounded = value.quantize(_RATIO_QUANTUM, context=_MONEY)
    return _money(rounded)


def _iso_ms(ms: int | None) -> str | None:
    if ms is None:
        return None
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def _day_text(index: int) -> str:
    return date.fromordinal(_EPOCH_ORDINAL + index).isoformat()


@dataclass(frozen=True, slots=True)
class _Drawdown:
    amount: Decimal
    pct: Decimal | None
    peak: int | None
    trough: int | None
    recovered: int | None
    duration_days: int


def _drawdown(capital: Decimal, start: int, cumulative: list[Decimal]) -> _Drawdown:
    """Largest fall of equity = capital + cumulative net PnL from a previous high.

    Point 0 is the day before ``start`` (equity = capital); point k is the end of day
    ``start + k - 1``. The high-water mark moves on ties, so a duration counts from the
    last day at the high.
    """
    equity = [capital, *(capital + c for c in cumulative)]
    peak_value, peak_at = equity[0], 0
    best = _ZERO
    best_peak_at = best_trough_at = 0
    best_peak_value = peak_value
    for index, value in enumerate(equity):
        if value >= peak_value:
            peak_value, peak_at = value, index
        fall = peak_value - value
        if fall > best:
            best, best_peak_at, best_trough_at, best_peak_value = fall, peak_at, index, peak_value
    if not best:
        return _Drawdown(_ZERO, _ZERO if capital > 0 else None, None, None, None, 0)
    recovered = next(
        (i for i in range(best_trough_at + 1, len(equity)) if equity[i] >= best_peak_value),
        None,
    )
    end = recovered if recovered is not None else len(equity) - 1
    pct = (
        _RATIO.multiply(_RATIO.divide(best, best_peak_value), 100) if best_peak_value > 0 else None
    )
    return _Drawdown(
        amount=best,
        pct=pct,
        peak=start - 1 + best_peak_at,
        trough=start - 1 + best_trough_at,
        recovered=None if recovered is None else start - 1 + recovered,
        duration_days=end - best_peak_at,
    )


def _sharpe_sortino(returns: list[Decimal]) -> tuple[Decimal | None, Decimal | None]:
    """Annualized daily Sharpe and Sortino, rf = 0, sample (n - 1) denominators."""
    n = len(returns)
    if n < 2:
        return None, None
    ctx = _RATIO
    mean = ctx.divide(sum(returns, _ZERO), n)
    variance = ctx.divide(sum((ctx.power(r - mean, 2) for r in returns), _ZERO), n - 1)
    downside = ctx.divide(sum((ctx.power(r, 2) for r in returns if r < 0), _ZERO), n - 1)
    annual = ctx.sqrt(Decimal(ANNUALIZATION_DAYS))
    sharpe = ctx.multiply(ctx.divide(mean, ctx.sqrt(variance)), annual) if variance else None
    sortino = ctx.multiply(ctx.divide(mean, ctx.sqrt(downside)), annual) if downside else None
    return sharpe, sortino


def _report(aggregator: Aggregator) -> dict[str, Any]:
    book = aggregator._book
    config = aggregator._config
    capital = book.peak_basis
    gross = sum((d.gross for d in book.days.values()), _ZERO)
    fees = sum((d.fees for d in book.days.values()), _ZERO)
    volume = sum((d.volume for d in book.days.values()), _ZERO)
    net = gross - fees

    # Round trips: finished ones plus each asset's open run (its fills are realized).
    closed, unpriced_rt = book.rt_closed, book.rt_unpriced
    wins, losses = book.rt_wins, book.rt_losses
    win_sum, loss_sum, net_sum = book.rt_win_sum, book.rt_loss_sum, book.rt_net_sum
    for _symbol, _order, trip_gross, trip_fees, trip_priced in book.pending.values():
        closed += 1
        if not trip_priced:
            unpriced_rt += 1
            continue
        trip_net = trip_gross - trip_fees
        net_sum += trip_net
        if trip_net > 0:
            wins, win_sum = wins + 1, win_sum + trip_net
        elif trip_net < 0:
            losses, loss_sum = losses + 1, loss_sum - trip_net
    priced_rt = closed - unpriced_rt

    # Daily series from the first to the last trade day; missing days are zero.
    daily: list[dict[str, Any]] = []
    returns: list[Decimal] = []
    cumulative: list[Decimal] = []
    start = min(book.days) if book.days else 0
    if book.days:
        running = _ZERO
        empty = _Day()
        for index in range(start, max(book.days) + 1):
            day = book.days.get(index, empty)
            pnl = day.gross - day.fees
            running += pnl
            cumulative.append(running)
            day_return = _RATIO.divide(pnl, capital) if capital > 0 else None
            if day_return is not None:
                returns.append(day_return)
            daily.append(
                {
                    "date": _day_text(index),
                    "trades": day.trades,
                    "volume": _money(day.volume),
                    "gross_pnl": _money(day.gross),
                    "fees": _money(day.fees),
                    "net_pnl": _money(pnl),
                    "cumulative_net_pnl": _money(running),
                    "equity": _money(capital + running),
                    "return": _ratio(day_return),
                }
            )
    sharpe, sortino = _sharpe_sortino(returns) if capital > 0 else (None, None)
    drawdown = _drawdown(capital, start, cumulative)

    def per(numerator: Decimal | int, denominator: Decimal | int) -> Decimal | None:
        return _RATIO.divide(Decimal(numerator), Decimal(denominator)) if denominator else None

    return_pct = per(net, capital)
    positions = {}
    for asset in sorted(book.positions):
        position = book.positions[asset]
        quantity = sum((q for q, _u, _f in position.lots), _ZERO)
        basis = sum((q * u for q, u, _f in position.lots if u is not None), _ZERO)
        unpriced_qty = sum((q for q, u, _f in position.lots if u is None), _ZERO)
        positions[asset] = {
            "side": {1: "long", -1: "short", 0: "flat"}[position.sign],
            "quantity": _money(quantity),
            "cost_basis": _money(basis),
            "unpriced_quantity": _money(unpriced_qty),
            "lots": len(position.lots),
            "realized_gross_pnl": _money(position.realized),
        }
    symbols = {
        s: {
            "trades": x.trades,
            "buys": x.buys,
            "sells": x.sells,
            "volume": _money(x.volume),
            "base_volume": _money(x.base_volume),
            "gross_pnl": _money(x.gross),
            "fees": _money(x.fees),
            "net_pnl": _money(x.gross - x.fees),
            "unpriced_trades": x.unpriced,
        }
        for s, x in sorted(book.symbols.items())
    }
    fully_priced = not (
        book.unpriced_trades or book.unpriced_realizations or book.unpriced_fees or unpriced_rt
    )
    return {
        "method": METHOD_VERSION,
        "reporting_currency": config.reporting_currency,
        "conventions": {
            "cost_method": "FIFO lots per asset; trades have a base and a quote leg",
            "par_assets": sorted(config.par_assets),
            "stablecoins_at_par": bool(config.par_assets),
            "pnl": "realized; net = gross - fees, fees valued at trade time",
            "capital_base": "peak cost basis deployed (open lots at cost)",
            "day": "UTC calendar day; days without trades between first and last are 0",
            "daily_return": "daily net PnL / capital base",
            "annualization_days": ANNUALIZATION_DAYS,
            "risk_free_rate": "0",
            "std": "sample (ddof = 1)",
            "sortino_downside": "sqrt(sum(min(r, 0)^2) / (n - 1)), target 0",
            "ratio_rounding": f"half-even to {RATIO_PLACES} decimal places",
        },
        "window": {
            "from": aggregator._first,
            "to": aggregator._last,
            "from_iso": _iso_ms(aggregator._first),
            "to_iso": _iso_ms(aggregator._last),
        },
        "trades": {
            "count": book.trades,
            "orders": len(aggregator._orders),
            "skipped": dict(sorted(book.skipped.items())),
            "duplicates_ignored": aggregator.duplicates,
        },
        "volume": _money(volume),
        "pnl": {
            "gross": _money(gross),
            "fees": _money(fees),
            "net": _money(net),
            "fee_asset_pnl": _money(book.fee_asset_pnl),
        },
        "capital_base": _money(capital),
        "return_pct": _ratio(None if return_pct is None else return_pct * 100),
        "sharpe": _ratio(sharpe),
        "sortino": _ratio(sortino),
        "max_drawdown": {
            "amount": _money(drawdown.amount),
            "pct": _ratio(drawdown.pct),
            "duration_days": drawdown.duration_days,
            "peak": None if drawdown.peak is None else _day_text(drawdown.peak),
            "trough": None if drawdown.trough is None else _day_text(drawdown.trough),
            "recovered": None if drawdown.recovered is None else _day_text(drawdown.recovered),
        },
        "round_trips": {
            "closed": closed,
            "priced": priced_rt,
            "wins": wins,
            "losses": losses,
            "win_rate": _ratio(per(wins, priced_rt)),
            "gross_wins": _money(win_sum),
            "gross_losses": _money(loss_sum),
            "profit_factor": _ratio(per(win_sum, loss_sum)),
            "expectancy": _ratio(per(net_sum, priced_rt)),
        },
        "pricing": {
            "rule": "quote and fee assets: reporting/par = 1, else the last trade price "
            "seen against the reporting currency (chained through quotes), else the "
            "price source, else unpriced",
            "price_source": None if config.price_source is None else config.price_source.name,
            "max_price_age_ms": config.max_price_age_ms,
            "oldest_price_used_ms": book.max_price_age,
            "quote_conversions": dict(sorted(book.conversions.items())),
            "fee_valuations": dict(sorted(book.fee_sources.items())),
            "last_prices": {
                a: {"price": _money(v), "via": via, "at": at}
                for a, (v, via, at) in sorted(book.prices.items())
            },
        },
        "unpriced": {
            "fully_priced": fully_priced,
            "trades": book.unpriced_trades,
            "realizations": book.unpriced_realizations,
            "quantity": {a: _money(v) for a, v in sorted(book.unpriced_quantity.items())},
            "fees": book.unpriced_fees,
            "fee_amounts": {a: _money(v) for a, v in sorted(book.unpriced_fee_amounts.items())},
            "round_trips": unpriced_rt,
        },
        "positions": positions,
        "symbols": symbols,
        "daily": daily,
        "arithmetic": {"precision": PRECISION, "exact": not book.rounded},
    }
