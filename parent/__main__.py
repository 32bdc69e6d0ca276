"""Command line of the parent process. Side: parent.

    python -m parent run                       serve the HTTPS API (config from the environment)
    python -m parent migrate [--state-dir DIR] [--database-url URL]
                                               apply database migrations

``migrate`` targets ``--database-url``, else DATABASE_URL (both must be an admin role
that may create roles), else the embedded PostgreSQL under ``--state-dir`` / STATE_DIR.
Exit status: 0 ok, 1 failure, 2 bad configuration or usage.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from parent.config import ConfigError, ParentConfig
from parent.db import migrate as migrations
from parent.db.embedded import EmbeddedPostgres
from parent.db.errors import MigrationError, StoreUnavailable
from parent.main import serve
from shared.errors import PerfAggError


async def _run_until_signalled(config: ParentConfig) -> None:
    task = asyncio.create_task(serve(config))
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _run(config: ParentConfig) -> int:
    try:
        asyncio.run(_run_until_signalled(config))
    except (PerfAggError, ValueError, OSError) as exc:
        # TLS files, database, transport or bind failures at start. Messages in this
        # codebase name the failing thing, never a secret value.
        print(f"parent: {exc}", file=sys.stderr)
        return 1
    return 0


def _migrate(config: ParentConfig, database_url: str | None) -> int:
    target = database_url or config.database_url
    if target is not None:
        # Never print the URL: it may carry a password.
        return migrations.main([], conninfo=target)
    embedded = EmbeddedPostgres(config.state_dir)
    try:
        embedded.start()  # starts the server, creates the database, migrates
    except (StoreUnavailable, MigrationError, ValueError) as exc:
        print(f"migrate: {exc}", file=sys.stderr)
        return 1
    finally:
        embedded.stop()
    print(f"embedded PostgreSQL in {embedded.data_dir}: schema up to date")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, build the config from the environment and run."""
    parser = argparse.ArgumentParser(
        prog="python -m parent", description="perf-aggregator parent (untrusted host)"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="serve the HTTPS API")
    migrate_parser = commands.add_parser("migrate", help="apply database migrations")
    migrate_parser.add_argument("--state-dir", type=Path, help="overrides STATE_DIR")
    migrate_parser.add_argument("--database-url", help="admin URL; overrides DATABASE_URL")
    args = parser.parse_args(argv)
    try:
        config = ParentConfig.from_env(os.environ)
    except ConfigError as exc:
        print(f"config: {exc}", file=sys.stderr)
        return 2
    if args.command == "run":
        return _run(config)
    if args.state_dir is not None:
        config = dataclasses.replace(config, state_dir=args.state_dir)
    return _migrate(config, args.database_url)


if __name__ == "__main__":
    sys.exit(main())
