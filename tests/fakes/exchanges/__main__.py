"""Run the three fake exchanges as one process (local stack, demo, e2e tests). Side: tests.

    python -m tests.fakes.exchanges serve --dir DIR [--seed N] [--orders N] [--days N]

Writes into DIR, then serves until SIGTERM/SIGINT:

- ``tls/ca.pem``: the test CA (the enclave trusts it in simulator mode only);
- ``fakes.json``: for each exchange its real API host name, the 127.0.0.1 port it
  listens on, the credentials it accepts (fresh random test keys, never real ones) and
  the number of trades in its history;
- ``truth-<exchange>.json``: the ground truth, the sorted ``[symbol, trade_id]`` keys.

A control API on plain HTTP, 127.0.0.1 only (its port is ``admin_port`` in fakes.json),
lets tests in another process drive the faults and read the call logs:

- ``POST /faults/{exchange}`` with ``{"kind": "rate_limit", "times": n, "retry_after_s": s}``,
  ``{"kind": "server_error", "times": n, "status": 503}`` or ``{"kind": "clear"}``;
- ``GET /calls/{exchange}``: ``[{"method", "path", "status", "error", "fault", "at"}]``;
- ``GET /trades/{exchange}``: the seeded trades, in time order, for tests that recompute
  the figures themselves: ``[{"symbol", "id", "order_id", "timestamp", "side", "price",
  "amount", "fee", "fee_currency", "raw"}]``. ``id`` is the unique fill id of the truth
  file; ``price``, ``amount`` (base units) and ``fee`` are the generated values as exact
  decimal strings, ``fee_currency`` the asset the fee was charged in, ``timestamp`` ms;
  ``raw`` is the object exactly as the exchange serves it (its own strings, e.g. the
  exchange's rounded quote amount).

``fakes.json`` is written last (atomically), so its presence means "ready".
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import secrets
import signal
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

from .binance import FakeBinance, binance_history_spec
from .coinbase import CoinbaseKey, FakeCoinbase, coinbase_history_spec
from .common import FakeExchange, FakeTls, TruthTrade, create_fake_tls
from .kraken import FakeKraken, kraken_history_spec

HOSTS = {"binance": "api.binance.com", "kraken": "api.kraken.com", "coinbase": "api.coinbase.com"}


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=1, sort_keys=True) + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _admin_app(fakes: dict[str, FakeExchange]) -> web.Application:
    """The control API described in the module docstring."""

    def fake_of(request: web.Request) -> FakeExchange:
        name = request.match_info["exchange"]
        if name not in fakes:
            raise web.HTTPNotFound(text="unknown exchange")
        return fakes[name]

    async def set_fault(request: web.Request) -> web.Response:
        fake = fake_of(request)
        body = await request.json()
        kind = body.get("kind")
        if kind == "rate_limit":
            fake.faults.rate_limit(
                times=int(body.get("times", 1)), retry_after_s=int(body.get("retry_after_s", 1))
            )
        elif kind == "server_error":
            fake.faults.server_error(
                times=int(body.get("times", 1)), status=int(body.get("status", 503))
            )
        elif kind == "clear":
            fake.faults.clear()
        else:
            raise web.HTTPBadRequest(text="unknown fault kind")
        return web.json_response({"pending": fake.faults.pending})

    async def calls(request: web.Request) -> web.Response:
        fake = fake_of(request)
        return web.json_response(
            [
                {
                    "method": call.method,
                    "path": call.path,
                    "status": call.status,
                    "error": call.error,
                    "fault": call.fault,
                    "at": call.at,
                }
                for call in fake.calls
            ]
        )

    async def trades(request: web.Request) -> web.Response:
        name = request.match_info["exchange"]
        fake = fake_of(request)
        return web.json_response(
            [
                {
                    "symbol": trade.symbol,
                    "id": _unique_id(name, trade),
                    "order_id": trade.order_id,
                    "timestamp": trade.time_ms,
                    "side": trade.fill.side,
                    "price": f"{trade.fill.price:f}",
                    "amount": f"{trade.fill.qty:f}",
                    "fee": f"{trade.fill.fee:f}",
                    "fee_currency": trade.fill.fee_asset,
                    "raw": dict(trade.raw),
                }
                for trade in fake.ground_truth
            ]
        )

    app = web.Application()
    app.router.add_post("/faults/{exchange}", set_fault)
    app.router.add_get("/calls/{exchange}", calls)
    app.router.add_get("/trades/{exchange}", trades)
    return app


def _unique_id(name: str, trade: TruthTrade) -> str:
    """The id that names one fill uniquely on that exchange.

    Coinbase gives both sides of a self-match the same ``trade_id``; its per-fill
    ``entry_id`` is the unique one (and what the enclave keys fills by).
    """
    return str(trade.raw["entry_id"]) if name == "coinbase" else trade.trade_id


def _unique_keys(name: str, fake: FakeExchange) -> list[list[str]]:
    """Sorted ``[symbol, fill id]`` of every trade currently served (see ``_unique_id``)."""
    if name == "coinbase":
        return sorted([t.symbol, _unique_id(name, t)] for t in fake.ground_truth)
    return sorted([symbol, trade_id] for symbol, trade_id in fake.truth_keys())


async def serve(directory: Path, tls: FakeTls, *, seed: int, orders: int, days: int) -> None:
    """Start the three fakes, describe them in ``directory``, serve until signalled."""
    binance_key, binance_secret = secrets.token_hex(16), secrets.token_hex(32)
    kraken_key = secrets.token_hex(16)
    kraken_secret = base64.b64encode(secrets.token_bytes(64)).decode()
    coinbase_key = CoinbaseKey.generate()
    fakes: dict[str, tuple[FakeExchange, dict[str, str]]] = {
        "binance": (
            FakeBinance(
                tls=tls,
                api_key=binance_key,
                api_secret=binance_secret,
                history=binance_history_spec(seed=seed, orders=orders, days=days),
            ),
            {"api_key": binance_key, "api_secret": binance_secret},
        ),
        "kraken": (
            FakeKraken(
                tls=tls,
                api_key=kraken_key,
                api_secret=kraken_secret,
                history=kraken_history_spec(seed=seed, orders=orders, days=days),
            ),
            {"api_key": kraken_key, "api_secret": kraken_secret},
        ),
        "coinbase": (
            FakeCoinbase(
                tls=tls,
                key_name=coinbase_key.name,
                public_key=coinbase_key.public_key,
                history=coinbase_history_spec(seed=seed, orders=orders, days=days),
            ),
            {"api_key": coinbase_key.name, "api_secret": coinbase_key.private_pem},
        ),
    }
    for fake, _ in fakes.values():
        await fake.start()
    admin = web.AppRunner(_admin_app({name: fake for name, (fake, _) in fakes.items()}))
    await admin.setup()
    admin_site = web.TCPSite(admin, "127.0.0.1", 0)
    await admin_site.start()
    admin_port = admin_site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        for name, (fake, _) in fakes.items():
            _write_json(directory / f"truth-{name}.json", _unique_keys(name, fake))
        _write_json(
            directory / "fakes.json",
            {
                "ca_file": str(tls.ca_file),
                "admin_port": admin_port,
                "exchanges": {
                    name: {
                        "host": HOSTS[name],
                        "port": fake.port,
                        "credentials": credentials,
                        "trades": len(fake.ground_truth),
                    }
                    for name, (fake, credentials) in fakes.items()
                },
            },
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    finally:
        await admin.cleanup()
        for fake, _ in fakes.values():
            await fake.stop()


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.exchanges", description=__doc__)
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--orders", type=int, default=150)
    parser.add_argument("--days", type=int, default=30)
    args = parser.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    (args.dir / "fakes.json").unlink(missing_ok=True)
    tls = create_fake_tls(args.dir / "tls")
    asyncio.run(serve(args.dir, tls, seed=args.seed, orders=args.orders, days=args.days))
    return 0


if __name__ == "__main__":
    sys.exit(main())
