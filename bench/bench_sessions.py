"""Enclave memory for 1,000 sessions of 1,000 trades vs bare tuples. Side: enclave.

What is measured: the resident set of a fresh process holding what the enclave keeps
per session (``SESSIONS`` sessions of ``TRADES_PER_SESSION`` trades, 1,000,000 in all):

- the poller's ``TradeLedger``, filled with ``add`` from one Binance ``myTrades`` page
  per symbol (the order of a first sync);
- a ``TradeCommitments`` synced from that ledger (salted Merkle tree);
- an ``Aggregator`` fed ``ledger.since(0)``, as the service feeds it.

The trades are ``bench_aggregator.synthetic_trades`` (seed = session number), written
as Binance records (the fields and types of the tests' fake Binance: integer ids, the
decimal strings, booleans), serialised to JSON and read back through
``BinanceHistory``'s own parser, so every ``Trade`` holds the strings a real sync
holds, shared where a real sync shares them, with its ``raw`` record.

Against what, in the same run: a second fresh process that builds the same trades the
same way and keeps each one as a bare tuple of its strings (the ten fields, the
timestamp as text, then the raw record's names and values): the same information with
no index, no commitment and no aggregate. Both processes import the same modules first;
``import_mib`` is what that costs before any trade exists. Figures: ``VmRSS`` from
/proc/self/status once everything is built (the steady state a session table lives
in), and ``ru_maxrss`` (the peak, which includes the garbage of building). The enclave
process also reports ``VmRSS`` after each stage (all ledgers, then all commitments,
then all aggregators), so the growth per stage says what each part costs per trade.
The goal (issue 5) is an enclave RSS of at most ``GOAL_MIB`` MiB.

Figures (development machine, Python 3.11). Before issue 5's memory pass the enclave
process held 2,345 MiB: the ledgers ~2,050 bytes per trade (the raw record alone, as 14
tuples and a dozen strings, ~1.4 KB), the commitments 157 (a stored 32-byte salt per
trade), the aggregators 139; bare tuples took 1,265 MiB. After it: 704 MiB, with the
ledgers at ~480 bytes per trade (raw record packed in one short str, often shared; no
key tuple in the index; an order's id and price shared by its fills), the commitments at
65 (the tree's two hashes per leaf; salts derived from one key) and the aggregators at
83 (order digests in an array); bare tuples 1,072 MiB (they shrank too: they hold the
same, now shared, strings).

The goal, 300 MiB (``GOAL_MIB``), is not met. Importing the enclave's modules alone
takes ~105 MiB (``import_mib``; an empty interpreter takes ~11), ~95 of them with ccxt
and what it imports: ``import ccxt.async_support`` first runs ``ccxt/__init__``, which
loads every synchronous exchange class (the enclave uses none), then loads every
asynchronous one. That leaves ~195 bytes per trade, less than one fill's own data as
Python objects: a 128-byte Trade, a 32-byte int timestamp and about five distinct
strings of ~50 bytes each before their text. Going further needs a columnar store (a
session's trades packed in one buffer, Trade objects built on access, the aggregator's
log as indexes), which changes how the aggregator reads trades and costs it throughput,
and an enclave that imports only the ccxt exchange classes it polls.
"""

from __future__ import annotations

import gc
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.bench_aggregator import synthetic_trades
from bench.common import Result
from enclave.aggregator import Aggregator
from enclave.commitments import TradeCommitments
from enclave.exchanges.history import (
    _BINANCE_KEYS,
    BinanceHistory,
    HistoryConfig,
    Trade,
    TradeLedger,
)

SESSIONS = 1_000
TRADES_PER_SESSION = 1_000
GOAL_MIB = 300
_REPO = Path(__file__).resolve().parent.parent
_FIRST_TRADE_ID = 180_000_000  # Binance-sized ids, as the tests' fake Binance numbers them
_FIRST_ORDER_ID = 3_100_000_000


def _binance_record(trade: Trade, rng: random.Random) -> dict[str, Any]:
    """The myTrades record Binance would send for ``trade`` (types as on the wire)."""
    return {
        "symbol": trade.symbol.replace("/", ""),
        "id": _FIRST_TRADE_ID + int(trade.id),
        "orderId": _FIRST_ORDER_ID + int(trade.order_id or 0),
        "orderListId": -1,
        "price": trade.price,
        "qty": trade.amount,
        "quoteQty": trade.cost,
        "commission": trade.fee_cost,
        "commissionAsset": trade.fee_currency,
        "time": trade.timestamp,
        "isBuyer": trade.side == "buy",
        "isMaker": rng.random() < 0.5,
        "isBestMatch": True,
    }


def session_trades(session: int, parser: BinanceHistory) -> list[Trade]:
    """One session's trades as the Binance poller stores them, in first-sync order.

    One JSON page per symbol goes through ``json.loads`` and the poller's parser (the
    unified fields ccxt's ``parse_trade`` would add are given as ccxt gives them:
    market symbol, side, timestamp, fee currency; the parser reads the numbers from
    the raw record).
    """
    rng = random.Random(session)
    trades = synthetic_trades(TRADES_PER_SESSION, seed=session)
    pages: dict[str, list[Trade]] = {}
    for trade in trades:
        pages.setdefault(trade.symbol, []).append(trade)
    stored: list[Trade] = []
    for symbol, page in pages.items():
        wire = json.dumps([_binance_record(t, rng) for t in page])
        parsed = [
            {
                "info": record,
                "symbol": symbol,
                "side": "buy" if record["isBuyer"] else "sell",
                "timestamp": record["time"],
                "fee": {"cost": None, "currency": trade.fee_currency},
            }
            for record, trade in zip(json.loads(wire), page, strict=True)
        ]
        stored.extend(parser._trades(parsed, _BINANCE_KEYS, symbol))
    return stored


def _as_tuple(trade: Trade) -> tuple[str | None, ...]:
    """The trade's strings in one flat tuple; a raw value equal to a field is that str."""
    fields = (
        trade.symbol, trade.id, trade.order_id, trade.side, trade.price, trade.amount,
        trade.cost, trade.fee_cost, trade.fee_currency, str(trade.timestamp),
    )  # fmt: skip
    same = {text: text for text in fields if text is not None}
    raw = (same.get(text, text) for pair in trade.raw for text in pair)
    return (*fields, *raw)


def _rss_mib() -> float:
    """VmRSS of this process (current resident set)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(mode: str) -> dict[str, float]:
    """Build everything in this (fresh) process; return the memory figures."""
    gc.collect()
    figures = {"import_mib": _rss_mib()}
    parser = BinanceHistory(None, exchange_id="binance", config=HistoryConfig())
    started = time.perf_counter()
    if mode == "baseline":
        held = [[_as_tuple(t) for t in session_trades(s, parser)] for s in range(SESSIONS)]
        count = sum(len(trades) for trades in held)
    else:
        ledgers = []
        for session in range(SESSIONS):
            ledger = TradeLedger()
            for trade in session_trades(session, parser):
                ledger.add(trade)
            ledgers.append(ledger)
        gc.collect()
        figures["ledgers_mib"] = _rss_mib()
        commitments = []
        for ledger in ledgers:
            commitment = TradeCommitments()
            commitment.sync(ledger)
            commitments.append(commitment)
        gc.collect()
        figures["commitments_mib"] = _rss_mib()
        aggregators = []
        for ledger in ledgers:
            aggregator = Aggregator()
            aggregator.add(ledger.since(0))
            aggregators.append(aggregator)
        count = sum(len(ledger) for ledger in ledgers)
    gc.collect()
    figures["build_s"] = time.perf_counter() - started
    figures["rss_mib"] = _rss_mib()
    figures["max_rss_mib"] = _max_rss_mib()
    figures["trades"] = count
    return figures


def _start(mode: str) -> subprocess.Popen[str]:
    """``_child(mode)`` in a fresh interpreter (a clean, comparable RSS)."""
    return subprocess.Popen(
        [sys.executable, "-m", "bench.bench_sessions", "--child", mode],
        cwd=_REPO,
        stdout=subprocess.PIPE,
        text=True,
    )


def _figures(child: subprocess.Popen[str]) -> dict[str, float]:
    out, _err = child.communicate()
    if child.returncode:
        raise RuntimeError(f"bench child failed with exit code {child.returncode}")
    figures: dict[str, float] = json.loads(out)
    return figures


def run() -> list[Result]:
    """Both processes side by side: they compete for cores, not for memory."""
    children = [_start("enclave"), _start("baseline")]
    enclave, baseline = (_figures(child) for child in children)
    trades = int(enclave["trades"])
    if trades != SESSIONS * TRADES_PER_SESSION or baseline["trades"] != trades:
        raise RuntimeError("the two processes did not hold the same trades")
    per_trade = 1024 * 1024 / trades  # bytes per trade of one MiB
    ledgers = enclave["ledgers_mib"] - enclave["import_mib"]
    commitments = enclave["commitments_mib"] - enclave["ledgers_mib"]
    aggregators = enclave["rss_mib"] - enclave["commitments_mib"]
    return [
        Result(
            area="sessions",
            name=f"{SESSIONS:,} sessions x {TRADES_PER_SESSION:,} trades held (trades/MiB RSS)",
            ops_per_s=trades / enclave["rss_mib"],
            baseline="bare tuples of the same strings",
            baseline_ops_per_s=trades / baseline["rss_mib"],
            extra={
                "rss_mib": round(enclave["rss_mib"], 1),
                "max_rss_mib": round(enclave["max_rss_mib"], 1),
                "goal_mib": GOAL_MIB,
                "baseline_rss_mib": round(baseline["rss_mib"], 1),
                "baseline_max_rss_mib": round(baseline["max_rss_mib"], 1),
                "import_mib": round(enclave["import_mib"], 1),
                "ledger_bytes_per_trade": round(ledgers * per_trade),
                "commitment_bytes_per_trade": round(commitments * per_trade),
                "aggregator_bytes_per_trade": round(aggregators * per_trade),
                "build_s": round(enclave["build_s"], 1),
            },
        )
    ]


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        print(json.dumps(_child(sys.argv[2])))
    else:
        for result in run():
            print(result, f"ratio={result.ratio:.3f}")
