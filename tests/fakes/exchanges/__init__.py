"""Fake Binance, Kraken and Coinbase REST APIs over HTTPS for ccxt-driven tests. Side: tests.

Typical use::

    tls = create_fake_tls(tmp_path / "tls")              # ca.pem for clients
    async with FakeBinance(tls=tls, api_key=k, api_secret=s) as fake:
        session = fake_client_session(fake)              # real hostnames -> 127.0.0.1
        exchange = ccxt.async_support.binance({"apiKey": k, "secret": s, "session": session, ...})
        ...                                              # compare with fake.ground_truth
"""

from __future__ import annotations

from .binance import FakeBinance, binance_history_spec
from .coinbase import CoinbaseKey, FakeCoinbase, coinbase_history_spec
from .common import (
    Burst,
    Call,
    FakeExchange,
    FakeTls,
    Faults,
    HistorySpec,
    MarketSpec,
    TruthTrade,
    create_fake_tls,
    fake_client_session,
    generate_history,
)
from .kraken import FakeKraken, kraken_history_spec

__all__ = [
    "Burst",
    "Call",
    "CoinbaseKey",
    "FakeBinance",
    "FakeCoinbase",
    "FakeExchange",
    "FakeKraken",
    "FakeTls",
    "Faults",
    "HistorySpec",
    "MarketSpec",
    "TruthTrade",
    "binance_history_spec",
    "coinbase_history_spec",
    "create_fake_tls",
    "fake_client_session",
    "generate_history",
    "kraken_history_spec",
]
