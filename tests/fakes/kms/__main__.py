"""Run the KMS simulator as a process (local stack, e2e and fault tests). Side: test fake.

    python -m tests.fakes.kms serve --root NSM_ROOT_PEM --policy POLICY [--policy ...]
        (--cert CERT --key KEY | --tls-dir DIR) [--port 0] [--host 127.0.0.1]
        [--state DIR] [--region us-east-1] [--account 111122223333] [--credentials FILE]

- ``--root``: the NSM simulator root certificate (``nsm-root.pem`` in the NSM
  simulator's state directory, ``LocalStack.nsm_root_file``); documents must chain to it.
- ``--policy``: a key policy, as a file or inline JSON: ``{"key_id": ..., "pcrs": {"0":
  hex, "1"?: .., "2"?: .., "8"?: ..}, "aliases"?: ["alias/..."]}`` (or a list of them).
  ``pcrs`` has the form of the local stack's ``expected-pcrs.json``.
- TLS: ``--cert``/``--key`` PEM files, or ``--tls-dir DIR`` to make a throw-away test CA
  (``DIR/ca.pem``) and a certificate for ``kms.<region>.amazonaws.com``, ``localhost`` and
  ``127.0.0.1``, the same way the fake exchanges get theirs (clients verify the real host
  name, so the egress proxy can map ``kms.<region>.amazonaws.com:443`` here).
- ``--state DIR``: master keys persist in ``DIR/kms-keys.json`` (0600); a restarted
  simulator still decrypts old blobs. Without it keys live in memory only.
- ``--credentials FILE``: JSON ``{"access_key_id", "secret_access_key", "session_token"?}``
  (or a list); SigV4 signatures are then verified. Without it any well-formed SigV4
  signature is accepted.

When it is listening it prints one JSON line on stdout and flushes it::

    {"event": "ready", "port": 40123, "endpoint_url": "https://127.0.0.1:40123",
     "host": "kms.us-east-1.amazonaws.com", "region": "us-east-1", "ca_file": "DIR/ca.pem",
     "keys": {"<key_id>": "arn:aws:kms:us-east-1:111122223333:key/<key_id>"},
     "sigv4": "verified" | "any"}

(``ca_file`` is null with ``--cert``.) It serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.fakes.exchanges.common import create_fake_tls

from .server import KeyPolicy, KmsSimulator, server_ssl_context, start_server
from .sigv4 import TestCredentials


def _json_argument(value: str) -> Any:
    text = value if value.lstrip()[:1] in ("{", "[") else Path(value).read_text()
    return json.loads(text)


def _policies(values: list[str]) -> list[KeyPolicy]:
    policies: list[KeyPolicy] = []
    for value in values:
        loaded = _json_argument(value)
        for item in loaded if isinstance(loaded, list) else [loaded]:
            policies.append(KeyPolicy.from_json(item))
    return policies


def _credentials(path: Path | None) -> list[TestCredentials] | None:
    if path is None:
        return None
    loaded = json.loads(path.read_text())
    return [
        TestCredentials(
            access_key_id=item["access_key_id"],
            secret_access_key=item["secret_access_key"],
            session_token=item.get("session_token"),
        )
        for item in (loaded if isinstance(loaded, list) else [loaded])
    ]


async def _serve(args: argparse.Namespace) -> None:
    root = x509.load_pem_x509_certificate(args.root.read_bytes())
    credentials = _credentials(args.credentials)
    simulator = KmsSimulator(
        policies=_policies(args.policy),
        root_der=root.public_bytes(serialization.Encoding.DER),
        state_dir=args.state,
        region=args.region,
        account_id=args.account,
        credentials=credentials,
    )
    host_name = f"kms.{args.region}.amazonaws.com"
    ca_file: str | None = None
    if args.tls_dir is not None:
        tls = create_fake_tls(args.tls_dir, hostnames=(host_name,))
        context = tls.server_context()
        ca_file = str(tls.ca_file)
    else:
        context = server_ssl_context(args.cert, args.key)
    runner, port = await start_server(simulator, context, host=args.host, port=args.port)
    try:
        ready = {
            "event": "ready",
            "port": port,
            "endpoint_url": f"https://{args.host}:{port}",
            "host": host_name,
            "region": args.region,
            "ca_file": ca_file,
            "keys": {key_id: simulator.key_arn(key_id) for key_id in simulator.key_ids},
            "sigv4": "any" if credentials is None else "verified",
        }
        sys.stdout.write(json.dumps(ready) + "\n")
        sys.stdout.flush()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.fakes.kms",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--policy", action="append", required=True)
    parser.add_argument("--cert", type=Path)
    parser.add_argument("--key", type=Path)
    parser.add_argument("--tls-dir", type=Path)
    parser.add_argument("--state", type=Path)
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--account", default="111122223333")
    parser.add_argument("--credentials", type=Path)
    args = parser.parse_args(argv)
    if (args.tls_dir is None) == (args.cert is None):
        parser.error("give either --cert/--key or --tls-dir")
    if args.cert is not None and args.key is None:
        parser.error("--cert needs --key")
    asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
