"""FIFO performance aggregator: hand-computed cases, numpy cross-checks, properties, state.

Every expected number in the hand-computed tests is typed in, worked out by hand
(the derivations are in the comments and in docs/metrics.md), never recomputed by the
code under test. Sharpe, Sortino and drawdown are also recomputed with numpy from the
reported daily series.
"""

from __future__ import annotations

import itertools
import json
import os
import random
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import cbor2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enclave import aggregator as aggregator_module
from enclave.aggregator import (
    STABLECOINS,
    Aggregator,
    AggregatorConfig,
    FixedPrices,
    ReplayError,
    StateError,
)
from enclave.exchanges.history import Trade

DAY = 86_400_000


def at(moment: str) -> int:
    """Milliseconds of a naive ISO time read as UTC."""
    return int(datetime.fromisoformat(moment).replace(tzinfo=UTC).timestamp() * 1000)


def fill(
    ident: int | str,
    moment: str | int,
    symbol: str,
    side: str,
    amount: str,
    price: str,
    cost: str | None = None,
    fee: str | None = None,
    fee_currency: str | None = None,
    order: str | None = None,
) -> Trade:
    """A trade as a poller would produce it (exchange strings)."""
    return Trade(
        symbol=symbol,
        id=str(ident),
        order_id=order if order is not None else f"o{ident}",
        side=side,
        price=price,
        amount=amount,
        cost=cost,
        fee_cost=fee,
        fee_currency=fee_currency,
        timestamp=at(moment) if isinstance(moment, str) else moment,
    )


def report(trades: list[Trade], config: AggregatorConfig | None = None) -> dict[str, Any]:
    """Snapshot after adding ``trades`` in one call."""
    aggregator = Aggregator(config)
    aggregator.add(trades)
    return aggregator.snapshot()


# ---------------------------------------------------------------------------- worked example

EXAMPLE = [
    fill(1, "2024-01-01T09:00", "BTC/USDT", "buy", "1", "40000", "40000", "40", "USDT"),
    fill(2, "2024-01-01T10:00", "BNB/USDT", "buy", "10", "300", "3000", "3", "USDT"),
    fill(3, "2024-01-02T09:00", "BTC/USDT", "sell", "0.4", "42000", "16800", "0.02", "BNB"),
    fill(4, "2024-01-04T09:00", "ETH/BTC", "buy", "4", "0.05", "0.2", "0.004", "ETH"),
    fill(5, "2024-01-05T09:00", "ETH/USDT", "sell", "6", "2000", "12000", "12", "USDT"),
    fill(6, "2024-01-06T09:00", "ETH/USDT", "buy", "2.004", "2050", "4108.2", "4.1082", "USDT"),
]


def test_worked_example_of_the_docs() -> None:
    """The worked example of docs/metrics.md section 13, every figure as computed there."""
    out = report(EXAMPLE)
    assert out["pnl"] == {
        "gross": "700.2",
        "fees": "73.5082",
        "net": "626.6918",
        "fee_asset_pnl": "0",
    }
    assert out["volume"] == "84308.2"
    assert out["trades"] == {"count": 6, "orders": 6, "skipped": {}, "duplicates_ignored": 0}
    assert out["capital_base"] == "43000"
    assert out["return_pct"] == "1.457422790698"
    assert out["sharpe"] == "4.702175082877"
    assert out["sortino"] == "10.4550724517"
    assert out["max_drawdown"] == {
        "amount": "515.9082",
        "pct": "1.168730885811",
        "duration_days": 2,
        "peak": "2024-01-04",
        "trough": "2024-01-06",
        "recovered": None,
    }
    assert out["round_trips"] == {
        "closed": 4,
        "priced": 4,
        "wins": 2,
        "losses": 2,
        "win_rate": "0.5",
        "gross_wins": "1170",
        "gross_losses": "524.3082",
        "profit_factor": "2.231511923712",
        "expectancy": "161.42295",
    }
    assert [(d["date"], d["net_pnl"], d["equity"], d["return"]) for d in out["daily"]] == [
        ("2024-01-01", "-43", "42957", "-0.001"),
        ("2024-01-02", "794", "43751", "0.018465116279"),
        ("2024-01-03", "0", "43751", "0"),
        ("2024-01-04", "391.6", "44142.6", "0.009106976744"),
        ("2024-01-05", "-411.6", "43731", "-0.009572093023"),
        ("2024-01-06", "-104.3082", "43626.6918", "-0.002425772093"),
    ]
    assert {
        a: (p["side"], p["quantity"], p["cost_basis"]) for a, p in out["positions"].items()
    } == {
        "BNB": ("long", "9.98", "2994"),
        "BTC": ("long", "0.4", "16000"),
        "ETH": ("flat", "0", "0"),
    }
    assert out["pricing"]["quote_conversions"] == {"last_trade": 1, "reporting": 5}
    assert out["pricing"]["fee_valuations"] == {"last_trade": 1, "reporting": 4, "trade": 1}
    assert out["pricing"]["oldest_price_used_ms"] == 2 * DAY
    assert out["pricing"]["last_prices"]["ETH"] == {
        "price": "2050",
        "via": "ETH/USDT",
        "at": at("2024-01-06T09:00"),
    }
    assert out["window"]["from_iso"] == "2024-01-01T09:00:00.000Z"
    assert out["window"]["to_iso"] == "2024-01-06T09:00:00.000Z"
    assert out["unpriced"]["fully_priced"] is True
    assert out["arithmetic"] == {"precision": 100, "exact": True}
    assert out["conventions"]["annualization_days"] == 365
    assert out["conventions"]["risk_free_rate"] == "0"
    assert out["conventions"]["std"] == "sample (ddof = 1)"


# ---------------------------------------------------------------------------- fees


def test_fee_in_base_is_paid_from_the_position_and_expensed() -> None:
    """A base fee (0.001 BTC at 100 = 0.1) leaves 0.999 BTC; selling them closes it flat."""
    out = report(
        [
            fill(1, "2024-01-01T09:00", "BTC/USDT", "buy", "1", "100", "100", "0.001", "BTC"),
            fill(2, "2024-01-01T10:00", "BTC/USDT", "sell", "0.999", "110", "109.89", "0", "USDT"),
        ]
    )
    # gross 0.999 x (110 - 100) = 9.99; fee 0.001 x 100 = 0.1; the payment realizes 0.
    assert out["pnl"] == {"gross": "9.99", "fees": "0.1", "net": "9.89", "fee_asset_pnl": "0"}
    assert out["volume"] == "209.89"
    assert out["positions"]["BTC"]["side"] == "flat"
    assert out["positions"]["BTC"]["quantity"] == "0"
    assert out["pricing"]["fee_valuations"] == {"trade": 1}
    # The remaining 0.999 carry the whole opening fee: round trip net = 9.99 - 0.1.
    assert out["round_trips"]["expectancy"] == "9.89"
    assert out["round_trips"]["profit_factor"] is None  # no losing round trip
    assert out["capital_base"] == "99.9"  # 100 bought, 0.1 paid away in the same trade
    assert out["return_pct"] == "9.8998998999"  # 9.89 / 99.9 x 100


def test_fee_in_quote_is_expensed_at_face_value() -> None:
    """Quote fees (2 and 2.2 USDT) come straight off the 200 gross."""
    out = report(
        [
            fill(1, "2024-01-01T09:00", "ETH/USDT", "buy", "2", "1000", "2000", "2", "USDT"),
            fill(2, "2024-01-02T09:00", "ETH/USDT", "sell", "2", "1100", "2200", "2.2", "USDT"),
        ]
    )
    assert out["pnl"] == {"gross": "200", "fees": "4.2", "net": "195.8", "fee_asset_pnl": "0"}
    assert out["volume"] == "4200"
    assert out["round_trips"]["win_rate"] == "1"
    assert out["round_trips"]["expectancy"] == "195.8"
    assert out["return_pct"] == "9.79"  # 195.8 / 2000 x 100


def test_fee_in_bnb_is_valued_at_its_last_price_and_realizes_bnb_pnl() -> None:
    """A BNB fee is worth BNB's last trade price (300); paying it sells BNB bought at 200."""
    out = report(
        [
            fill(1, "2024-01-01T01:00", "BNB/USDT", "buy", "1", "200", "200", "0.2", "USDT"),
            fill(2, "2024-01-01T02:00", "BNB/USDT", "buy", "0.5", "300", "150", "0.15", "USDT"),
            fill(3, "2024-01-01T03:00", "BTC/USDT", "buy", "0.01", "30000", "300", "0.002", "BNB"),
            fill(4, "2024-01-01T04:00", "BTC/USDT", "sell", "0.01", "31000", "310", "0.31", "USDT"),
        ]
    )
    # fee 3 = 0.002 x 300 = 0.6; paid from the oldest BNB lot (cost 200): 0.002 x 100 = 0.2.
    # gross = 10 (BTC) + 0.2 (BNB) = 10.2; fees = 0.2 + 0.15 + 0.6 + 0.31 = 1.26.
    assert out["pnl"] == {"gross": "10.2", "fees": "1.26", "net": "8.94", "fee_asset_pnl": "0.2"}
    assert out["volume"] == "960"
    assert out["pricing"]["fee_valuations"] == {"last_trade": 1, "reporting": 3}
    # BNB left: 0.998 @ 200 + 0.5 @ 300.
    assert out["positions"]["BNB"]["quantity"] == "1.498"
    assert out["positions"]["BNB"]["cost_basis"] == "349.6"
    # BTC round trip: 10 - 0.6 (opening fee) - 0.31 (closing fee).
    assert out["round_trips"]["expectancy"] == "9.09"
    # Peak basis after trade 3: 200 + 150 + 300 - 0.002 x 200.
    assert out["capital_base"] == "649.6"


# ---------------------------------------------------------------------------- lots


def test_partial_close_takes_the_oldest_lot_first() -> None:
    """Selling 1.5 of lots 1 @ 100 and 1 @ 120 realizes 30 + 5 and keeps 0.5 @ 120."""
    aggregator = Aggregator()
    aggregator.add(
        [
            fill(1, "2024-01-01T01:00", "SOL/USDT", "buy", "1", "100"),
            fill(2, "2024-01-01T02:00", "SOL/USDT", "buy", "1", "120"),
            fill(3, "2024-01-01T03:00", "SOL/USDT", "sell", "1.5", "130"),
        ]
    )
    middle = aggregator.snapshot()
    assert middle["pnl"]["gross"] == "35"
    assert middle["positions"]["SOL"] == {
        "side": "long",
        "quantity": "0.5",
        "cost_basis": "60",
        "unpriced_quantity": "0",
        "lots": 1,
        "realized_gross_pnl": "35",
    }
    aggregator.add([fill(4, "2024-01-01T04:00", "SOL/USDT", "sell", "0.5", "110")])
    out = aggregator.snapshot()
    assert out["pnl"]["gross"] == "30"  # 35 + 0.5 x (110 - 120)
    assert out["positions"]["SOL"]["side"] == "flat"
    assert (out["round_trips"]["win_rate"], out["round_trips"]["profit_factor"]) == ("0.5", "7")
    assert out["round_trips"]["expectancy"] == "15"  # (35 - 5) / 2
    assert out["capital_base"] == "220"


def test_reversal_long_to_short_and_back() -> None:
    """A sell of 3 against a long of 1 opens a short of 2; a buy of 3 reverses it again."""
    aggregator = Aggregator()
    aggregator.add(
        [
            fill(1, "2024-01-01T01:00", "ETH/USDT", "buy", "1", "1000", "1000", "1", "USDT"),
            fill(2, "2024-01-01T02:00", "ETH/USDT", "sell", "3", "1100", "3300", "3.3", "USDT"),
        ]
    )
    short = aggregator.snapshot()
    assert short["pnl"]["gross"] == "100"
    assert (short["positions"]["ETH"]["side"], short["positions"]["ETH"]["quantity"]) == (
        "short",
        "2",
    )
    assert short["positions"]["ETH"]["cost_basis"] == "2200"
    # Round trip 1: 100 - 1 (opening fee) - 3.3 x 1/3 (closing share) = 97.9.
    assert short["round_trips"]["expectancy"] == "97.9"
    aggregator.add(
        [fill(3, "2024-01-01T03:00", "ETH/USDT", "buy", "3", "1000", "3000", "3", "USDT")]
    )
    out = aggregator.snapshot()
    # Closing the short: 2 x (1100 - 1000) = 200; then a long of 1 @ 1000.
    assert out["pnl"] == {"gross": "300", "fees": "7.3", "net": "292.7", "fee_asset_pnl": "0"}
    assert (out["positions"]["ETH"]["side"], out["positions"]["ETH"]["quantity"]) == ("long", "1")
    assert out["positions"]["ETH"]["cost_basis"] == "1000"
    # Round trip 2: 200 - 2.2 (the short's fee) - 3 x 2/3 = 195.8; mean (97.9 + 195.8) / 2.
    assert out["round_trips"]["expectancy"] == "146.85"
    assert out["round_trips"]["wins"] == 2
    assert out["volume"] == "7300"
    assert out["capital_base"] == "2200"


# ---------------------------------------------------------------------------- daily series


def _two_days_apart() -> list[Trade]:
    return [
        fill(1, "2024-01-01T09:00", "BTC/USDT", "buy", "1", "100"),
        fill(2, "2024-01-01T10:00", "BTC/USDT", "sell", "1", "110"),
        fill(3, "2024-01-03T09:00", "BTC/USDT", "buy", "1", "100"),
        fill(4, "2024-01-03T10:00", "BTC/USDT", "sell", "1", "95"),
    ]


def test_a_day_without_trades_is_a_zero_return() -> None:
    """Days +10, (none), -5 on C = 100: returns 0.1, 0, -0.05 and the ratios over three days."""
    out = report(_two_days_apart())
    assert [(d["date"], d["trades"], d["net_pnl"], d["return"]) for d in out["daily"]] == [
        ("2024-01-01", 2, "10", "0.1"),
        ("2024-01-02", 0, "0", "0"),
        ("2024-01-03", 2, "-5", "-0.05"),
    ]
    # mean 1/60; sample variance 7/1200; downside (0.05^2 / 2) = 1/800.
    # Sharpe = (1/60) / sqrt(7/1200) x sqrt(365); Sortino = (1/60) / sqrt(1/800) x sqrt(365).
    assert out["sharpe"] == "4.169046939164"
    assert out["sortino"] == "9.006170724071"
    # Equity 100, 110, 110, 105: the tie moves the peak to 01-02; 5 / 110.
    assert out["max_drawdown"] == {
        "amount": "5",
        "pct": "4.545454545455",
        "duration_days": 1,
        "peak": "2024-01-02",
        "trough": "2024-01-03",
        "recovered": None,
    }


def test_losing_streak() -> None:
    """Three losing round trips (-10, -20, -5): no wins, profit factor 0, drawdown 35 %."""
    out = report(
        [
            fill(1, "2024-01-01T09:00", "BTC/USDT", "buy", "1", "100"),
            fill(2, "2024-01-01T10:00", "BTC/USDT", "sell", "1", "90"),
            fill(3, "2024-01-02T09:00", "BTC/USDT", "buy", "1", "100"),
            fill(4, "2024-01-02T10:00", "BTC/USDT", "sell", "1", "80"),
            fill(5, "2024-01-03T09:00", "BTC/USDT", "buy", "1", "100"),
            fill(6, "2024-01-03T10:00", "BTC/USDT", "sell", "1", "95"),
        ]
    )
    assert out["round_trips"] == {
        "closed": 3,
        "priced": 3,
        "wins": 0,
        "losses": 3,
        "win_rate": "0",
        "gross_wins": "0",
        "gross_losses": "35",
        "profit_factor": "0",
        "expectancy": "-11.666666666667",
    }
    assert out["max_drawdown"] == {
        "amount": "35",
        "pct": "35",
        "duration_days": 3,
        "peak": "2023-12-31",
        "trough": "2024-01-03",
        "recovered": None,
    }
    # Returns -0.1, -0.2, -0.05: mean -7/60, sample variance 7/1200, downside 0.02625.
    assert out["sharpe"] == "-29.183328574148"
    assert out["sortino"] == "-13.757153021583"


# ---------------------------------------------------------------------------- conversions


def test_third_asset_quote_is_converted_through_its_last_price() -> None:
    """ETH/BTC trades are valued through BTC's last BTC/USDT price, and sell BTC lots."""
    out = report(
        [
            fill(1, "2024-01-01T01:00", "BTC/USDT", "buy", "1", "20000", "20000"),
            fill(2, "2024-01-01T02:00", "ETH/BTC", "buy", "10", "0.06", "0.6"),
            fill(3, "2024-01-01T03:00", "BTC/USDT", "sell", "0.4", "25000", "10000"),
            fill(4, "2024-01-01T04:00", "ETH/BTC", "sell", "10", "0.05", "0.5"),
        ]
    )
    # 2: ETH 10 @ 0.06 x 20000 = 1200, BTC sold 0.6 at cost: 0.  3: 0.4 x 5000 = 2000.
    # 4: BTC now 25000: ETH sold at 0.05 x 25000 = 1250: 10 x 50 = 500; BTC 0.5 @ 25000.
    assert out["pnl"]["gross"] == "2500"
    assert out["volume"] == "54500"  # 20000 + 12000 + 10000 + 12500
    assert out["pricing"]["quote_conversions"] == {"last_trade": 2, "reporting": 2}
    assert out["pricing"]["last_prices"]["ETH"]["price"] == "1250"
    assert out["pricing"]["last_prices"]["ETH"]["via"] == "ETH/BTC"
    assert out["positions"]["BTC"]["quantity"] == "0.5"
    assert out["positions"]["BTC"]["cost_basis"] == "12500"
    assert out["symbols"]["ETH/BTC"]["gross_pnl"] == "500"
    assert out["symbols"]["BTC/USDT"]["gross_pnl"] == "2000"
    assert out["capital_base"] == "20000"
    # BTC#2 nets 0 (neither), BTC#3 +2000, ETH#4 +500.
    assert (out["round_trips"]["closed"], out["round_trips"]["wins"]) == (3, 2)
    assert out["round_trips"]["win_rate"] == "0.666666666667"


UNPRICED = [
    fill(1, "2024-01-01T01:00", "ALT/XYZ", "buy", "100", "2", "200", "0.2", "XYZ"),
    fill(2, "2024-01-01T02:00", "ALT/USDT", "sell", "100", "3", "300"),
]


def test_unpriced_quote_is_counted_and_marked_never_zero() -> None:
    """With no value for XYZ the trade counts, but its volume, fee and PnL are marked."""
    out = report(UNPRICED)
    assert (out["trades"]["count"], out["trades"]["orders"]) == (2, 2)
    assert out["volume"] == "300"
    assert out["pnl"]["gross"] == "0"
    assert out["unpriced"] == {
        "fully_priced": False,
        "trades": 1,
        "realizations": 1,
        "quantity": {"ALT": "100"},
        "fees": 1,
        "fee_amounts": {"XYZ": "0.2"},
        "round_trips": 1,
    }
    assert out["round_trips"]["priced"] == 0
    assert out["round_trips"]["win_rate"] is None
    assert out["pricing"]["quote_conversions"] == {"reporting": 1, "unpriced": 1}
    assert out["positions"]["XYZ"]["unpriced_quantity"] == "200.2"  # sold for ALT + fee


def test_price_source_fills_the_gap_and_is_recorded() -> None:
    """A configured price source (XYZ = 1.5) values what no trade prices, and is named."""
    config = AggregatorConfig(price_source=FixedPrices("fixed-test", {"XYZ": "1.5"}))
    out = report(UNPRICED, config)
    # ALT bought at 2 x 1.5 = 3, sold at 3: gross 0; fee 0.2 x 1.5 = 0.3.
    assert out["pnl"] == {"gross": "0", "fees": "0.3", "net": "-0.3", "fee_asset_pnl": "0"}
    assert out["volume"] == "600"
    assert out["pricing"]["price_source"] == "fixed-test"
    assert out["pricing"]["quote_conversions"] == {"price_source": 1, "reporting": 1}
    assert out["pricing"]["fee_valuations"] == {"price_source": 1}
    assert out["unpriced"]["fully_priced"] is True
    assert out["round_trips"]["losses"] == 1


def test_stablecoins_are_at_par_only_when_configured() -> None:
    """BTC/USDC is worth USDT 1:1 only with par assets configured; else it is unpriced."""
    trades = [
        fill(1, "2024-01-01T01:00", "BTC/USDC", "buy", "1", "100", "100"),
        fill(2, "2024-01-01T02:00", "BTC/USDT", "sell", "1", "110", "110"),
    ]
    at_par = report(trades, AggregatorConfig(par_assets=STABLECOINS))
    assert at_par["pnl"]["gross"] == "10"
    assert at_par["pricing"]["quote_conversions"] == {"par": 1, "reporting": 1}
    assert "USDC" not in at_par["positions"]
    assert at_par["conventions"]["par_assets"] == ["BUSD", "USD", "USDC"]
    assert at_par["conventions"]["stablecoins_at_par"] is True
    strict = report(trades)
    assert strict["pnl"]["gross"] == "0"
    assert strict["unpriced"]["realizations"] == 1
    assert strict["conventions"]["stablecoins_at_par"] is False


def test_stale_prices_are_not_used_beyond_the_configured_age() -> None:
    """With max_price_age_ms = 1 day, a 3-day-old BTC price leaves an ETH/BTC trade unpriced."""
    trades = [
        fill(1, "2024-01-01T01:00", "BTC/USDT", "buy", "1", "20000", "20000"),
        fill(2, "2024-01-04T01:00", "ETH/BTC", "buy", "1", "0.05", "0.05"),
    ]
    assert report(trades)["pricing"]["oldest_price_used_ms"] == 3 * DAY
    strict = report(trades, AggregatorConfig(max_price_age_ms=DAY))
    assert strict["unpriced"]["trades"] == 1
    assert strict["volume"] == "20000"


def test_a_rate_that_does_not_terminate_marks_the_output_inexact() -> None:
    """USDT/TRY at 3 values TRY at 1/3 USDT, which 34 digits cannot hold exactly."""
    out = report([fill(1, "2024-01-01T01:00", "USDT/TRY", "buy", "3", "3", "9")])
    assert out["arithmetic"]["exact"] is False
    assert out["pricing"]["quote_conversions"] == {"trade": 1}
    assert out["positions"]["TRY"]["side"] == "short"


# ---------------------------------------------------------------------------- robustness


def test_exactness_is_not_inherited_from_an_earlier_report() -> None:
    """A report's rounded ratios do not mark a later, exact aggregation inexact."""
    report(_two_days_apart())  # rounds Sharpe and friends
    assert report(EXAMPLE)["arithmetic"]["exact"] is True


def test_unreadable_trades_are_skipped_and_counted() -> None:
    """Bad sides, numbers and symbols never raise: they are skipped by reason."""
    when = "2024-01-01T01:00"
    out = report(
        [
            fill(1, when, "BTC/USDT", "short", "1", "100"),
            fill(2, when, "BTC/USDT", "buy", "1", "abc"),
            fill(3, when, "BTC/USDT", "buy", "1", "NaN"),
            fill(4, when, "BTC/USDT", "buy", "0", "100"),
            fill(5, when, "BTC/USDT", "buy", "1", "Infinity"),
            fill(6, when, "BTC/USDT", "buy", "1", "1e999"),
            fill(7, when, "BTC/USDT", "buy", "1", "100", fee="x", fee_currency="USDT"),
            fill(8, when, "BTCUSDT", "buy", "1", "100"),
            fill(9, when, "BTC/USDT:USDT", "buy", "1", "100"),
        ]
    )
    assert out["trades"]["skipped"] == {"bad_number": 6, "bad_side": 1, "unsupported_symbol": 2}
    assert out["trades"]["count"] == 0
    assert out["daily"] == []
    assert out["sharpe"] is None


def test_repeated_trades_are_ignored() -> None:
    """Feeding the same trades again changes nothing but the duplicate counter."""
    aggregator = Aggregator()
    aggregator.add(EXAMPLE)
    before = aggregator.snapshot()
    assert aggregator.add(EXAMPLE[2:]) == 0
    after = aggregator.snapshot()
    assert after["trades"]["duplicates_ignored"] == 4
    after["trades"]["duplicates_ignored"] = 0
    assert after == before


def test_out_of_order_symbols_equal_the_time_ordered_pass() -> None:
    """Whole symbol histories one after the other (a Binance first sync) rewind and replay."""
    aggregator = Aggregator(AggregatorConfig(checkpoint_every=2))
    for symbol in ("ETH/USDT", "ETH/BTC", "BTC/USDT", "BNB/USDT"):
        aggregator.add([t for t in EXAMPLE if t.symbol == symbol])
    assert aggregator.replays == 3
    assert aggregator.snapshot() == report(EXAMPLE)


def test_snapshot_is_json_ready() -> None:
    """The snapshot serializes as JSON with decimals as strings."""
    out = report(EXAMPLE)
    text = json.dumps(out)
    assert "Decimal" not in text
    assert isinstance(out["pnl"]["net"], str)


def test_public_api() -> None:
    """``__all__`` is exactly the public API."""
    assert set(aggregator_module.__all__) == {
        "METHOD_VERSION",
        "STABLECOINS",
        "Aggregator",
        "AggregatorConfig",
        "AggregatorError",
        "FixedPrices",
        "PriceSource",
        "ReplayError",
        "StateError",
    }


# ---------------------------------------------------------------------------- numpy cross-check


def numpy_figures(daily: list[dict[str, Any]], capital: float) -> dict[str, float]:
    """Sharpe, Sortino and max drawdown from the daily net PnL, with numpy only."""
    pnl = np.array([float(d["net_pnl"]) for d in daily])
    returns = pnl / capital
    n = len(returns)
    sharpe = returns.mean() / returns.std(ddof=1) * np.sqrt(365)
    downside = np.sqrt(np.sum(np.minimum(returns, 0.0) ** 2) / (n - 1))
    sortino = returns.mean() / downside * np.sqrt(365)
    equity = capital + np.concatenate([[0.0], np.cumsum(pnl)])
    high = np.maximum.accumulate(equity)
    drawdown = high - equity
    trough = int(np.argmax(drawdown))
    peak = int(np.flatnonzero(equity[: trough + 1] >= high[trough])[-1])
    later = np.flatnonzero(equity[trough + 1 :] >= high[trough])
    end = trough + 1 + int(later[0]) if len(later) else len(equity) - 1
    return {
        "sharpe": float(sharpe),
        "sortino": float(sortino),
        "drawdown": float(drawdown[trough]),
        "drawdown_pct": float(drawdown[trough] / high[trough] * 100),
        "duration": float(end - peak),
    }


def random_history(seed: int, n: int = 400) -> list[Trade]:
    """A seeded history over two months: 3 symbols, random sides, some quiet days."""
    rng = random.Random(seed)
    prices = {"BTC/USDT": 30000.0, "ETH/USDT": 2000.0, "SOL/USDT": 50.0}
    timestamp = at("2024-03-01T00:00")
    trades = []
    for i in range(n):
        symbol = rng.choice(list(prices))
        prices[symbol] *= 1 + rng.gauss(0, 0.02)
        timestamp += rng.randint(1, 4 * 3_600_000) * (8 if rng.random() < 0.02 else 1)
        price = f"{prices[symbol]:.2f}"
        amount = f"{rng.uniform(0.1, 2) * 100 / prices[symbol]:.5f}"
        cost = str(Decimal(price) * Decimal(amount))
        fee = str((Decimal(cost) * Decimal("0.001")).quantize(Decimal("1e-8")))
        side = rng.choice(("buy", "sell"))
        trades.append(fill(i, timestamp, symbol, side, amount, price, cost, fee, "USDT"))
    return trades


@pytest.mark.parametrize("trades", [EXAMPLE, random_history(1), random_history(2)])
def test_ratios_and_drawdown_match_numpy(trades: list[Trade]) -> None:
    """Sharpe, Sortino and max drawdown equal a numpy computation over the same series."""
    out = report(trades)
    expected = numpy_figures(out["daily"], float(out["capital_base"]))
    assert len(out["daily"]) >= 6
    assert float(out["sharpe"]) == pytest.approx(expected["sharpe"], rel=1e-9, abs=1e-11)
    assert float(out["sortino"]) == pytest.approx(expected["sortino"], rel=1e-9, abs=1e-11)
    drawdown = out["max_drawdown"]
    assert float(drawdown["amount"]) == pytest.approx(expected["drawdown"], rel=1e-9)
    assert float(drawdown["pct"]) == pytest.approx(expected["drawdown_pct"], rel=1e-9)
    assert drawdown["duration_days"] == expected["duration"]


# ---------------------------------------------------------------------------- properties

SYMBOLS = ["BTC/USDT", "ETH/USDT", "ETH/BTC", "BNB/USDT", "SOL/BNB", "ALT/XYZ"]
START = at("2024-01-01T00:00")


@st.composite
def histories(draw: st.DrawFn, max_size: int = 30) -> list[Trade]:
    """Time-ordered fills with multi-fill orders, reversals and fees in every asset."""
    trades: list[Trade] = []
    timestamp = START
    for index in range(draw(st.integers(1, max_size))):
        previous = trades[-1] if trades else None
        if previous is not None and draw(st.integers(0, 3)) == 0:
            symbol, side, order = previous.symbol, previous.side, previous.order_id
        else:
            symbol = draw(st.sampled_from(SYMBOLS))
            side, order = draw(st.sampled_from(["buy", "sell"])), f"o{index}"
        base, quote = symbol.split("/")
        timestamp += draw(st.integers(1, DAY // 2))
        price = Decimal(draw(st.integers(1, 400))).scaleb(-1)
        amount = Decimal(draw(st.integers(1, 300))).scaleb(-2)
        fee_currency = draw(st.sampled_from([None, quote, base, "BNB", "USDT"]))
        fee = None if fee_currency is None else Decimal(draw(st.integers(0, 30))).scaleb(-4)
        trades.append(
            Trade(
                symbol=symbol,
                id=str(index + 1),
                order_id=order,
                side=side,
                price=str(price),
                amount=str(amount),
                cost=str(price * amount),
                fee_cost=None if fee is None else str(fee),
                fee_currency=fee_currency,
                timestamp=timestamp,
            )
        )
    return trades


def pages(draw: st.DrawFn, trades: list[Trade]) -> list[list[Trade]]:
    """``trades`` shuffled and cut into random pages."""
    shuffled = draw(st.permutations(trades))
    cuts = sorted(draw(st.lists(st.integers(0, len(trades)), max_size=6)))
    bounds = [0, *cuts, len(trades)]
    return [list(shuffled[a:b]) for a, b in itertools.pairwise(bounds)]


# AGGREGATOR_EXAMPLES raises the count for a longer local hunt (default: about 1 s each).
PROPERTY = settings(
    max_examples=int(os.environ.get("AGGREGATOR_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@PROPERTY
@given(data=st.data(), trades=histories())
def test_any_pages_in_any_order_give_the_time_ordered_result(
    data: st.DataObject, trades: list[Trade]
) -> None:
    """Every figure is invariant to how trades are paged, batched and ordered on arrival."""
    expected = report(trades)
    aggregator = Aggregator(AggregatorConfig(checkpoint_every=3))
    for page in pages(data.draw, trades):
        aggregator.add(page)
    assert aggregator.snapshot() == expected


@PROPERTY
@given(data=st.data(), trades=histories())
def test_splitting_a_fill_leaves_realized_pnl_unchanged(
    data: st.DataObject, trades: list[Trade]
) -> None:
    """One fill split into several fills (same order, price, time, totals) realizes the same."""
    index = data.draw(st.integers(0, len(trades) - 1))
    original = trades[index]
    units = int(Decimal(original.amount).scaleb(2))
    parts = data.draw(st.integers(2, 4))
    cut_lists = st.lists(st.integers(0, units), min_size=parts - 1, max_size=parts - 1)
    amount_cuts = sorted(data.draw(cut_lists))
    amounts = [b - a for a, b in zip([0, *amount_cuts], [*amount_cuts, units], strict=True)]
    fee_units = int(Decimal(original.fee_cost or "0").scaleb(4))
    fee_lists = st.lists(st.integers(0, fee_units), min_size=parts - 1, max_size=parts - 1)
    fee_cuts = sorted(data.draw(fee_lists))
    fees = [b - a for a, b in zip([0, *fee_cuts], [*fee_cuts, fee_units], strict=True)]
    price = Decimal(original.price)
    split = [
        Trade(
            symbol=original.symbol,
            id=f"{original.id}{chr(ord('a') + k)}",
            order_id=original.order_id,
            side=original.side,
            price=original.price,
            amount=str(Decimal(units_k).scaleb(-2)),
            cost=str(price * Decimal(units_k).scaleb(-2)),
            fee_cost=None if original.fee_cost is None else str(Decimal(fees[k]).scaleb(-4)),
            fee_currency=original.fee_currency,
            timestamp=original.timestamp,
        )
        for k, units_k in enumerate(amounts)
        if units_k  # a zero-amount fill is no fill (it would be skipped)
    ]
    dropped_fee = sum(f for f, u in zip(fees, amounts, strict=True) if not u)
    if dropped_fee:  # keep the fee total on the first real part
        first = split[0]
        total = Decimal(first.fee_cost or "0") + Decimal(dropped_fee).scaleb(-4)
        split[0] = Trade(**{**_fields(first), "fee_cost": str(total)})
    expected = report(trades)
    out = report([*trades[:index], *split, *trades[index + 1 :]])
    # fee_asset_pnl is left out: which FIFO units a fee pays with depends on the split
    # (the units after each part's own), only their total with the legs' does not.
    for figure in ("gross", "fees", "net"):
        assert out["pnl"][figure] == expected["pnl"][figure]
    assert out["volume"] == expected["volume"]


def _fields(trade: Trade) -> dict[str, Any]:
    return {name: getattr(trade, name) for name in Trade.__slots__}


@PROPERTY
@given(data=st.data(), trades=histories())
def test_state_round_trip_continues_identically(data: st.DataObject, trades: list[Trade]) -> None:
    """from_state(to_state()) with the history continues exactly, late older trades included."""
    expected = report(trades)
    first = data.draw(st.lists(st.sampled_from(trades), unique_by=lambda t: t.key))
    rest = [t for t in trades if t not in first]
    before = Aggregator()
    before.add(first)
    restored = Aggregator.from_state(before.to_state(), history=first)
    assert restored.snapshot() == before.snapshot()
    for page in pages(data.draw, rest):
        restored.add(page)
    assert restored.snapshot() == expected


def test_state_without_history_continues_in_order_and_refuses_older_trades() -> None:
    """Without history, newer trades continue the state; an older one raises, changing nothing."""
    aggregator = Aggregator()
    aggregator.add(EXAMPLE[:4])
    state = aggregator.to_state()
    restored = Aggregator.from_state(state)
    with pytest.raises(ReplayError):
        restored.add([EXAMPLE[1]])
    assert restored.add([EXAMPLE[3]]) == 0  # the last trade before the state, again
    restored.add(EXAMPLE[4:])
    out = restored.snapshot()
    assert out["trades"]["duplicates_ignored"] == 1
    out["trades"]["duplicates_ignored"] = 0
    assert out == report(EXAMPLE)
    assert len(state) < 2000  # compact: no log, no checkpoints


def test_state_with_a_mismatched_history_is_recomputed() -> None:
    """A history that does not match the state (a late older trade) is recomputed from."""
    aggregator = Aggregator()
    aggregator.add([t for t in EXAMPLE if t.id != "2"])
    restored = Aggregator.from_state(aggregator.to_state(), history=EXAMPLE)
    assert restored.snapshot() == report(EXAMPLE)


@pytest.mark.parametrize(
    "state",
    [b"", b"\xff", b"not cbor at all", bytes.fromhex("a0"), bytes.fromhex("a1617602")],
    ids=["empty", "truncated", "garbage", "empty-map", "other-version"],
)
def test_malformed_state_is_refused(state: bytes) -> None:
    """Anything but a state of this version is a StateError."""
    with pytest.raises(StateError):
        Aggregator.from_state(state)


def test_state_under_another_configuration_is_refused() -> None:
    """A state made for another reporting currency cannot be restored under this one."""
    aggregator = Aggregator(AggregatorConfig(reporting_currency="USDC"))
    aggregator.add(EXAMPLE)
    with pytest.raises(StateError):
        Aggregator.from_state(aggregator.to_state())
    restored = Aggregator.from_state(
        aggregator.to_state(), AggregatorConfig(reporting_currency="USDC")
    )
    assert restored.snapshot() == aggregator.snapshot()


# ---------------------------------------------------------------------------- readable numbers


def readable(text: str | None, *, sign: str) -> bool:
    """Whether the aggregator may read ``text``, by Decimal's own predicates.

    The documented rule: finite, |adjusted exponent| <= 40 and positive (price, amount);
    finite, not negative, adjusted exponent <= 40 (cost); finite, |adjusted| <= 40 (fee).
    """
    if text is None:
        return sign != "positive"
    try:
        value = Decimal(text)
    except ArithmeticError:
        return False
    if not value.is_finite():
        return False
    if sign == "positive":
        return value > 0 and -40 <= value.adjusted() <= 40
    if sign == "non-negative":
        return value >= 0 and value.adjusted() <= 40
    return -40 <= value.adjusted() <= 40


# Both sides of every bound: 1E-40 and 1E+41 in magnitude, zeros by exponent, specials.
EDGE_NUMBERS = [
    "1E-40", "1.000E-40", "9.99E-41", "9.999999E+40", "9" * 41, "1" + "0" * 41, "1E+41",
    "0.5", "0", "-0", "0E-41", "0E-40", "0E+40", "0E+41", "-1E-40", "-9.9E-41", "-9.9E+40",
    "-1E+41", "Infinity", "-Infinity", "NaN", "sNaN", "1_000", " 1", "abc", "",
]  # fmt: skip


@pytest.mark.parametrize("field", ["price", "amount", "cost", "fee_cost"])
def test_numbers_are_read_exactly_within_the_documented_bounds(field: str) -> None:
    """Each edge number is counted or skipped as bad_number exactly as the rule says."""
    sign = {"cost": "non-negative", "fee_cost": "any"}.get(field, "positive")
    trades = [
        Trade(**{**_fields(fill(i, START + i, "BTC/USDT", "buy", "2", "3", "6")), field: text})
        for i, text in enumerate(EDGE_NUMBERS)
    ]
    out = report(trades)
    expected_bad = sum(not readable(text, sign=sign) for text in EDGE_NUMBERS)
    assert out["trades"]["skipped"].get("bad_number", 0) == expected_bad
    assert out["trades"]["count"] == len(EDGE_NUMBERS) - expected_bad


def test_a_repeated_price_does_not_excuse_the_other_numbers() -> None:
    """A fill at the previous fill's price is still skipped if its amount is unreadable."""
    out = report(
        [
            fill(1, START, "BTC/USDT", "buy", "1", "100", order="o"),
            fill(2, START + 1, "BTC/USDT", "buy", "1e999", "100", order="o"),
            fill(3, START + 2, "BTC/USDT", "buy", "2", "100", order="o"),
        ]
    )
    assert out["trades"]["skipped"] == {"bad_number": 1}
    assert (out["trades"]["count"], out["volume"]) == (2, "300")


# ---------------------------------------------------------------------------- distinct orders


def test_orders_are_counted_once_however_their_fills_interleave() -> None:
    """Fills of an order split across batches and other orders count one order, in state too."""
    rng = random.Random(11)
    orders = [(rng.choice(["BTC/USDT", "ETH/USDT"]), f"o{rng.randrange(700)}") for _ in range(3000)]
    trades = [
        fill(i, START + i * 1000, symbol, rng.choice(["buy", "sell"]), "1", "10", order=order)
        for i, (symbol, order) in enumerate(orders)
    ]
    trades.append(fill(3000, START + 3_000_000, "BTC/USDT", "buy", "1", "10", order=None))
    distinct = len(set(orders)) + 1  # a fill without an order id is an order of its own
    aggregator = Aggregator()
    start = 0
    for size in itertools.cycle([13, 97, 500]):  # small and large batches between reports
        aggregator.add(trades[start : start + size])
        start += size
        seen = {(t.symbol, t.order_id or t.id) for t in trades[:start]}
        assert aggregator.snapshot()["trades"]["orders"] == len(seen)
        if start >= len(trades):
            break
    assert aggregator.snapshot()["trades"]["orders"] == distinct
    restored = Aggregator.from_state(aggregator.to_state())
    assert restored.snapshot()["trades"]["orders"] == distinct
    restored.add([fill(3001, START + 4_000_000, *orders[0], "sell", "1", "10", order=orders[0][1])])
    assert restored.snapshot()["trades"]["orders"] == distinct


def test_state_orders_are_sorted_digests_and_repeats_are_refused() -> None:
    """The state holds each order once, as sorted 8-byte digests; a repeat is a StateError."""
    aggregator = Aggregator()
    aggregator.add(EXAMPLE)
    state = cbor2.loads(aggregator.to_state())
    digests = [state["orders"][i : i + 8] for i in range(0, len(state["orders"]), 8)]
    assert len(digests) == 6 and digests == sorted(digests)
    for bad in (state["orders"] + digests[0], state["orders"][:-1]):
        with pytest.raises(StateError):
            Aggregator.from_state(cbor2.dumps({**state, "orders": bad}))
    shuffled = b"".join(reversed(digests))  # any order reads: the set is what counts
    restored = Aggregator.from_state(cbor2.dumps({**state, "orders": shuffled}))
    assert restored.to_state() == aggregator.to_state()
