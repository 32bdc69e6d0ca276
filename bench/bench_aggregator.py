"""FIFO aggregator throughput and memory vs a bare Decimal pass. Side: enclave.

What is measured, on one core, over the same synthetic history (``N`` trades: six
symbols with random-walk prices, orders of 1 to 3 fills, fees in quote, base or BNB,
one trade every ~30 s, so N = 1,000,000 spans about a year):

- **incremental**: a fresh ``Aggregator`` fed batches of ``BATCH`` (100) trades in time
  order, as polls deliver them (checkpoints included);
- **full recompute**: a fresh ``Aggregator`` fed all N trades in one call;
- **first sync, symbol by symbol**: the shape of a Binance first sync, where each
  symbol's whole history arrives in turn, so every symbol after the first is older than
  what was processed and rewinds (on ``SYNC_N`` trades: it replays O(symbols x N));
- **snapshot**: building the full report after N trades (daily series included).

Against what, in the same run: a bare Python loop over the same ``Trade`` objects
summing ``Decimal(price) * Decimal(amount)``: the floor for anything that reads the
exchange's strings exactly. Memory: ``ru_maxrss`` deltas around the full recompute (the
trades themselves are allocated before), and tracemalloc's peak for a ``TRACE_N`` run,
per trade (the aggregator's own allocations: checkpoints, log, order set).

Where the time goes (development machine, 2 shared cores: ~7.2 us per trade in
increments of 100 over 100,000 trades; an A/B run over 1,000,000 gave 125k trades/s
incremental and 117k full, against 112k and 112k for the code before issue 5's pass, and
the 200k goal): the legs ~3.8 us (``_Book.move``: closing lots FIFO, pro-rata fee
shares, the round-trip run; ``pay_fee``: fee units disposed of; opening lots);
valuation, day and symbol sums and the fee ~1.1 us; parsing and validating the decimal
strings ~1.1 us (the floor parses two and multiplies, ~0.45 us); the order digest
(BLAKE2b, once per new order) ~0.55 us; ``add``'s key, sort, loop and log ~0.4 us; price
book and peak basis ~0.3 us. That pass kept every output bit for bit (the tests of
tests/test_aggregator.py pass unchanged) and took ~10%: two bound comparisons instead of
five calls per number, one parse per order's price, the leg that closes nothing inlined,
a leg of its own for fee payments, round trips as lists, counters without ``get``, order
digests appended to an array and deduplicated in batches. What is left is CPython
bytecode and about forty Decimal operations spread over every feature, not one hot spot:
200k/s (5 us a trade) needs fewer features per trade or native code, neither of which
the issue allows.
"""

from __future__ import annotations

import gc
import random
import resource
import time
import tracemalloc
from decimal import Decimal

from bench.common import Result
from enclave.aggregator import Aggregator
from enclave.exchanges.history import Trade

N = 1_000_000
BATCH = 100
SYNC_N = 100_000
TRACE_N = 100_000
START_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
SYMBOLS = {  # symbol -> (start price, price decimals, amount decimals)
    "BTC/USDT": (Decimal("42000"), 2, 5),
    "ETH/USDT": (Decimal("2300"), 2, 4),
    "SOL/USDT": (Decimal("100"), 2, 2),
    "BNB/USDT": (Decimal("300"), 1, 3),
    "XRP/USDT": (Decimal("0.6"), 4, 0),
    "ETH/BTC": (Decimal("0.055"), 5, 4),
}


def synthetic_trades(n: int, seed: int = 7) -> list[Trade]:
    """``n`` plausible spot fills in time order, deterministic for ``seed``."""
    rng = random.Random(seed)
    names = list(SYMBOLS)
    prices = {s: float(p) for s, (p, _pd, _ad) in SYMBOLS.items()}
    notional = {"BTC/USDT": 500.0, "ETH/BTC": 0.01}
    trades: list[Trade] = []
    timestamp = START_MS
    order = 0
    while len(trades) < n:
        symbol = rng.choice(names)
        _start, price_places, amount_places = SYMBOLS[symbol]
        prices[symbol] *= 1 + rng.gauss(0, 0.002)
        price = f"{prices[symbol]:.{price_places}f}"
        base, quote = symbol.split("/")
        side = "buy" if rng.random() < 0.5 else "sell"
        order += 1
        fee_currency = rng.choice((quote, quote, base, "BNB"))
        for _fill in range(rng.randint(1, 3)):
            timestamp += rng.randint(1, 60_000)
            size = notional.get(symbol, 200.0) * rng.uniform(0.2, 2) / prices[symbol]
            amount = f"{max(size, 10.0**-amount_places):.{amount_places}f}"
            cost = Decimal(price) * Decimal(amount)
            fee = {quote: cost, base: Decimal(amount), "BNB": cost / 300}[fee_currency]
            trades.append(
                Trade(
                    symbol=symbol,
                    id=str(len(trades) + 1),
                    order_id=str(order),
                    side=side,
                    price=price,
                    amount=amount,
                    cost=str(cost),
                    fee_cost=f"{fee * Decimal('0.001'):.8f}",
                    fee_currency=fee_currency,
                    timestamp=timestamp,
                )
            )
            if len(trades) == n:
                break
    return trades


def _rate(fn: object, count: int) -> tuple[float, float]:
    """(ops/s, seconds) of one call."""
    assert callable(fn)
    gc.collect()
    start = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - start
    return count / elapsed, elapsed


def _max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run() -> list[Result]:
    """Incremental, full recompute, per-symbol first sync and snapshot vs the floor."""
    trades = synthetic_trades(N)

    def bare() -> None:
        total = Decimal(0)
        for trade in trades:
            total += Decimal(trade.price) * Decimal(trade.amount)

    floor, _ = _rate(bare, N)

    def batches() -> None:
        incremental = Aggregator()
        for i in range(0, N, BATCH):
            incremental.add(trades[i : i + BATCH])

    incremental_rate, incremental_s = _rate(batches, N)

    rss_before = _max_rss_mib()
    full = Aggregator()
    full_rate, full_s = _rate(lambda: full.add(trades), N)
    rss_after = _max_rss_mib()
    state = full.to_state()
    snapshot_start = time.perf_counter()
    report = full.snapshot()
    snapshot_s = time.perf_counter() - snapshot_start
    full = Aggregator()  # let the full run's memory go before the next measurement

    sync_trades = trades[:SYNC_N]
    by_symbol = [[t for t in sync_trades if t.symbol == s] for s in SYMBOLS]
    synced = Aggregator()

    def first_sync() -> None:
        for history in by_symbol:
            synced.add(history)

    sync_rate, sync_s = _rate(first_sync, SYNC_N)
    sync_floor, _ = _rate(
        lambda: [Decimal(t.price) * Decimal(t.amount) for t in sync_trades], SYNC_N
    )

    traced = Aggregator()
    subset = trades[:TRACE_N]
    gc.collect()
    tracemalloc.start()
    traced.add(subset)
    _current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    common = {"trades": N, "symbols": len(SYMBOLS), "days": len(report["daily"])}
    return [
        Result(
            area="aggregator",
            name=f"incremental add, batches of {BATCH}",
            ops_per_s=incremental_rate,
            baseline="bare Decimal(price)*Decimal(amount) loop",
            baseline_ops_per_s=floor,
            extra=common | {"seconds": round(incremental_s, 2)},
        ),
        Result(
            area="aggregator",
            name="full recompute, one add",
            ops_per_s=full_rate,
            baseline="bare Decimal(price)*Decimal(amount) loop",
            baseline_ops_per_s=floor,
            extra=common
            | {
                "seconds": round(full_s, 2),
                "peak_rss_mib": round(rss_after, 1),
                "rss_growth_mib": round(rss_after - rss_before, 1),
                "tracemalloc_peak_bytes_per_trade": round(peak / TRACE_N, 1),
                "state_bytes": len(state),
                "snapshot_ms": round(snapshot_s * 1000, 1),
                "net_pnl": report["pnl"]["net"],
            },
        ),
        Result(
            area="aggregator",
            name="first sync symbol by symbol (rewinds)",
            ops_per_s=sync_rate,
            baseline="bare Decimal(price)*Decimal(amount) loop",
            baseline_ops_per_s=sync_floor,
            extra={
                "trades": SYNC_N,
                "seconds": round(sync_s, 2),
                "replays": synced.replays,
                "replayed": synced.replayed,
            },
        ),
    ]


if __name__ == "__main__":
    for result in run():
        print(result, f"ratio={result.ratio:.3f}")
