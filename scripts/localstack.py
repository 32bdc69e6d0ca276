"""The local stack: embedded PostgreSQL, simulated enclave, parent over HTTPS. Side: dev tooling.

``python -m scripts.localstack run``  starts everything in the foreground (Ctrl-C stops it);
``python -m scripts.localstack demo`` starts it, runs the seed's client flow with every
check printed (polling progress, then the verified report as a metric/value table),
stops it, and exits 0 only if every check passed.

The enclave and the parent are real separate processes talking over the
vsock-over-TCP simulator on 127.0.0.1; the parent starts its embedded PostgreSQL
itself (DATABASE_URL unset). Everything lands in the state directory: the dev TLS
CA (``tls/ca.pem``), the NSM simulator root (``nsm-root.pem``), the expected PCRs
(``expected-pcrs.json``), both processes' logs (``logs/``) and, after ``demo``, the
first signed report with the attested key that verified it (``demo-report.json``).
``LocalStack`` is also what the end-to-end tests drive.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from rich.console import Console
from rich.table import Table

from shared.attestation import pcrs_from_json
from shared.client import SecureClient, ServerRejected
from shared.encoding import b64encode
from shared.merkle import trade_set_digest

__all__ = ["LocalStack", "StackError", "main", "report_rows"]

ENCLAVE_CID = 16
KMS_REGION = "us-east-1"
KMS_HOST = f"kms.{KMS_REGION}.amazonaws.com"
KMS_KEY_ID = "perf-aggregator-local-sealing"
ENCLAVE_RPC_PORT = 5000
PARENT_CID = 3
FIRST_POLL_DEADLINE_S = 150.0
EGRESS_VSOCK_PORT = 8001
REPORT_FILE = "demo-report.json"
"""Where ``demo`` saves the first signed report (payload, signature, attested key)."""


class StackError(RuntimeError):
    """A process of the stack failed to start or died."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalStack:
    """Start, stop and kill the enclave and parent processes of a local stack."""

    def __init__(
        self,
        state_dir: Path,
        *,
        parent_port: int = 3000,
        enclave_tcp_port: int = 15000,
        egress_tcp_port: int | None = None,
        extra_env: Mapping[str, str] | None = None,
        enclave_extra_allow: tuple[str, ...] = (),
        sealing: bool = True,
        log_prefix: str = "",
    ) -> None:
        """``enclave_extra_allow``: allowlist entries the enclave has and the parent does
        not, for tests of the parent's own refusal. ``sealing``: run the KMS simulator and
        seal enclave state under it (the product's default; off only for tests that
        need an enclave without KMS). ``log_prefix``: prepended to the process log names
        (a second replica's logs sit beside the first one's)."""
        self.state_dir = state_dir.resolve()
        self.parent_port = parent_port
        self.enclave_tcp_port = enclave_tcp_port
        # The simulated vsock port of the parent's egress proxy (the enclave dials it).
        self.egress_tcp_port = egress_tcp_port if egress_tcp_port is not None else free_port()
        self.extra_env = dict(extra_env or {})
        self.enclave_extra_allow = enclave_extra_allow
        self.log_dir = self.state_dir / "logs"
        self.fakes_dir = self.state_dir / "fakes"
        self.fakes: subprocess.Popen[bytes] | None = None
        self.sealing = sealing
        self.kms_dir = self.state_dir / "kms"
        self.kms: subprocess.Popen[bytes] | None = None
        self.kms_port: int | None = None
        self.enclave: subprocess.Popen[bytes] | None = None
        self.parent: subprocess.Popen[bytes] | None = None
        self.log_prefix = log_prefix
        self._logs: list[IO[bytes]] = []

    # ------------------------------------------------------------------ paths

    @property
    def base_url(self) -> str:
        """Where the parent serves HTTPS."""
        return f"https://127.0.0.1:{self.parent_port}"

    @property
    def ca_file(self) -> Path:
        """The dev TLS CA the parent generated (clients trust it)."""
        return self.state_dir / "tls" / "ca.pem"

    @property
    def nsm_root_file(self) -> Path:
        """The NSM simulator root certificate (clients pin it explicitly)."""
        return self.state_dir / "nsm-root.pem"

    @property
    def pcrs_file(self) -> Path:
        """PCR0/1/2 the simulated enclave measures."""
        return self.state_dir / "expected-pcrs.json"

    def fakes_info(self) -> dict[str, Any]:
        """fakes.json: host, port, accepted credentials and trade count per fake exchange."""
        info: dict[str, Any] = json.loads((self.fakes_dir / "fakes.json").read_text())
        return info

    def fake_admin(self, method: str, path: str, body: Any = None) -> Any:
        """Call the fake exchanges' control API (faults, call logs); see tests.fakes."""
        port = self.fakes_info()["admin_port"]
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return json.loads(response.read())

    def truth(self, exchange: str) -> set[tuple[str, str]]:
        """The (symbol, trade id) keys of a fake exchange's whole history."""
        rows = json.loads((self.fakes_dir / f"truth-{exchange}.json").read_text())
        return {(symbol, trade_id) for symbol, trade_id in rows}

    def expected_pcrs(self) -> dict[int, bytes]:
        """The PCRs to pin, read from the state directory."""
        return pcrs_from_json(json.loads(self.pcrs_file.read_text()))

    def nsm_root_der(self) -> bytes:
        """DER of the simulator root, for ``AttestationVerifier(root_der=...)``."""
        return x509.load_pem_x509_certificate(self.nsm_root_file.read_bytes()).public_bytes(
            Encoding.DER
        )

    # ------------------------------------------------------------------ processes

    def _env(self, process: str = "") -> dict[str, str]:
        """The environment of one process of the stack (``process``: its module name)."""
        env = dict(os.environ)
        if "DATABASE_URL" not in self.extra_env:
            env.pop("DATABASE_URL", None)  # the stack always uses its embedded database
        env.update(
            {
                "STATE_DIR": str(self.state_dir),
                "VSOCK_PORT_MAP": (
                    f"{ENCLAVE_CID}:{ENCLAVE_RPC_PORT}={self.enclave_tcp_port},"
                    f"{PARENT_CID}:{EGRESS_VSOCK_PORT}={self.egress_tcp_port}"
                ),
                "ENCLAVE_CID": str(ENCLAVE_CID),
                "ENCLAVE_RPC_PORT": str(ENCLAVE_RPC_PORT),
                "ENCLAVE_MODE": "simulator",
                "ENCLAVE_TRANSPORT": "tcp-sim",
                "TRANSPORT": "tcp-sim",
                "MODE": "development",
                "HOST": "127.0.0.1",
                "ENCLAVE_PORT": str(self.parent_port),
                "PYTHONUNBUFFERED": "1",
            }
        )
        if (self.fakes_dir / "fakes.json").exists():
            # Every exchange host is served by a local fake: the egress maps the real
            # names to loopback (TLS still verifies the real name against the test CA),
            # so nothing the stack does ever leaves this machine.
            exchanges = self.fakes_info()["exchanges"]
            env["EGRESS_ALLOWLIST"] = ",".join(f"{e['host']}:443" for e in exchanges.values())
            env["EGRESS_HOST_OVERRIDES"] = ",".join(
                f"{e['host']}:443=127.0.0.1:{e['port']}" for e in exchanges.values()
            )
            env["EXCHANGE_CA_FILE"] = str(self.fakes_info()["ca_file"])
        if self.sealing:
            # KMS is reached like an exchange: allow-listed on both sides, its real name
            # mapped to the local simulator by the parent's egress, TLS checked against
            # the simulator's test CA inside the enclave.
            env |= {
                "SEALING": "kms",
                "KMS_KEY_ID": KMS_KEY_ID,
                "AWS_REGION": KMS_REGION,
                "KMS_CA_FILE": str(self.kms_dir / "tls" / "ca.pem"),
                "CHECKPOINT_INTERVAL_SECONDS": "2",
            }
            env["EGRESS_ALLOWLIST"] = ",".join(
                filter(None, [env.get("EGRESS_ALLOWLIST", ""), f"{KMS_HOST}:443"])
            )
            if self.kms_port is not None:
                env["EGRESS_HOST_OVERRIDES"] = ",".join(
                    filter(
                        None,
                        [
                            env.get("EGRESS_HOST_OVERRIDES", ""),
                            f"{KMS_HOST}:443=127.0.0.1:{self.kms_port}",
                        ],
                    )
                )
            if process == "parent":
                credentials = json.loads((self.kms_dir / "credentials.json").read_text())
                env["AWS_ACCESS_KEY_ID"] = credentials["access_key_id"]
                env["AWS_SECRET_ACCESS_KEY"] = credentials["secret_access_key"]
            if process != "enclave":
                env.pop("KMS_CA_FILE")
        else:
            env["SEALING"] = "off"
        env.update(self.extra_env)
        if process == "enclave" and self.enclave_extra_allow:
            env["EGRESS_ALLOWLIST"] = ",".join(
                filter(None, [env.get("EGRESS_ALLOWLIST", ""), *self.enclave_extra_allow])
            )
        return env

    def _spawn(self, name: str) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = (self.log_dir / f"{self.log_prefix}{name}.log").open("ab")
        self._logs.append(log)
        args = [sys.executable, "-m", name] + (
            ["run"]
            if name == "parent"
            else ["serve", "--dir", str(self.fakes_dir)]
            if name == "tests.fakes.exchanges"
            else []
        )
        return subprocess.Popen(  # noqa: S603 - our own interpreter and module
            args, env=self._env(name), stdout=log, stderr=subprocess.STDOUT, cwd=Path.cwd()
        )

    def start_fakes(self) -> None:
        """Start the fake Binance/Kraken/Coinbase process; wait for its fakes.json."""
        self.fakes = self._spawn("tests.fakes.exchanges")
        deadline = time.monotonic() + 60
        while not (self.fakes_dir / "fakes.json").exists():
            if self.fakes.poll() is not None:
                raise StackError(
                    f"fake exchanges exited:\n{self.log_tail('tests.fakes.exchanges')}"
                )
            if time.monotonic() > deadline:
                raise StackError("fake exchanges not ready within 60 s")
            time.sleep(0.05)

    def prepare_kms(self) -> None:
        """The KMS simulator's test CA and SigV4 credentials (before the enclave starts:
        its configuration names the CA file)."""
        if (self.kms_dir / "credentials.json").exists():
            return
        from tests.fakes.exchanges.common import create_fake_tls  # test fakes, dev only

        create_fake_tls(self.kms_dir / "tls", hostnames=(KMS_HOST,))
        credentials = {
            "access_key_id": "AKIALOCALSTACK" + secrets.token_hex(3).upper(),
            "secret_access_key": secrets.token_urlsafe(30),
        }
        path = self.kms_dir / "credentials.json"
        path.touch(mode=0o600)
        path.write_text(json.dumps(credentials))

    def start_kms(self) -> None:
        """Start the KMS simulator with a key policy on the enclave's PCR0-2 (after the
        enclave wrote its NSM root and expected PCRs); wait for its ready line."""
        policy = {"key_id": KMS_KEY_ID, "pcrs": json.loads(self.pcrs_file.read_text())}
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = (self.log_dir / "kms.log").open("ab")
        self._logs.append(log)
        self.kms = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [
                sys.executable, "-m", "tests.fakes.kms", "serve",
                "--root", str(self.nsm_root_file),
                "--policy", json.dumps(policy),
                "--cert", str(self.kms_dir / "tls" / "fake-exchanges.pem"),
                "--key", str(self.kms_dir / "tls" / "fake-exchanges.pem"),
                "--state", str(self.kms_dir),
                "--region", KMS_REGION,
                "--credentials", str(self.kms_dir / "credentials.json"),
            ],
            env=self._env("kms"),
            stdout=subprocess.PIPE,
            stderr=log,
            cwd=Path.cwd(),
        )  # fmt: skip
        assert self.kms.stdout is not None
        line = self.kms.stdout.readline()
        if not line:
            raise StackError(f"KMS simulator exited:\n{self.log_tail('kms')}")
        self.kms_port = int(json.loads(line)["port"])

    def start_enclave(self) -> None:
        """Start the enclave process and wait until its RPC port accepts connections."""
        self.enclave = self._spawn("enclave")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.enclave.poll() is not None:
                raise StackError(
                    f"enclave exited ({self.enclave.returncode}):\n{self.log_tail('enclave')}"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.enclave_tcp_port), timeout=0.2),
            ):
                return
            time.sleep(0.05)
        raise StackError("enclave did not start listening within 30 s")

    def start_parent(self, *, timeout: float = 90.0) -> None:
        """Start the parent and wait until /readyz answers 200."""
        self.parent = self._spawn("parent")
        self.wait_ready(timeout=timeout)

    def start(self) -> None:
        """Fakes, enclave, KMS simulator, then the parent (it unlocks the enclave).

        A start that fails stops whatever it had started: no process is left behind.
        """
        self.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.start_fakes()
            if self.sealing:
                self.prepare_kms()
            self.start_enclave()
            if self.sealing:
                self.start_kms()
            self.start_parent()
        except BaseException:
            self.stop()
            raise

    def wait_ready(self, *, timeout: float = 90.0) -> None:
        """Poll /readyz until it says 200 (parent, database and enclave all up)."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.parent is not None and self.parent.poll() is not None:
                raise StackError(
                    f"parent exited ({self.parent.returncode}):\n{self.log_tail('parent')}"
                )
            if self.ca_file.exists():
                try:
                    context = ssl.create_default_context(cafile=str(self.ca_file))
                    with urllib.request.urlopen(  # noqa: S310 - https to our own loopback server
                        f"{self.base_url}/readyz", context=context, timeout=2
                    ) as response:
                        if response.status == 200:
                            return
                except urllib.error.HTTPError as exc:
                    last = f"HTTP {exc.code}"
                except (urllib.error.URLError, OSError, ssl.SSLError) as exc:
                    last = type(exc).__name__
            time.sleep(0.1)
        raise StackError(f"parent not ready within {timeout:.0f} s (last: {last})")

    def app_database_url(self) -> str:
        """The app_service conninfo of this stack's embedded PostgreSQL (the parent
        started it; a second replica shares it)."""
        from parent.db.embedded import EmbeddedPostgres  # importing pgserver has side effects

        return EmbeddedPostgres(self.state_dir).app_conninfo()

    def start_replica(
        self,
        *,
        parent_port: int,
        enclave_tcp_port: int,
        extra_env: Mapping[str, str] | None = None,
        name: str = "replica2",
    ) -> LocalStack:
        """Start a second enclave + parent pair beside this running stack; return it.

        It shares this stack's embedded PostgreSQL (``DATABASE_URL``: the app role's
        conninfo), KMS simulator, fake exchanges and state directory (dev TLS CA, NSM
        simulator root: both enclaves run the same code, so they measure the same PCRs
        and KMS releases the same data key to both). Its own processes log to
        ``logs/<name>-*.log``; ``stop`` on it stops only them.
        """
        replica = LocalStack(
            self.state_dir,
            parent_port=parent_port,
            enclave_tcp_port=enclave_tcp_port,
            extra_env={
                **self.extra_env,
                **(extra_env or {}),
                "DATABASE_URL": self.app_database_url(),
            },
            enclave_extra_allow=self.enclave_extra_allow,
            sealing=self.sealing,
            log_prefix=f"{name}-",
        )
        replica.kms_port = self.kms_port
        replica.start_enclave()
        replica.start_parent()
        return replica

    def kill_parent(self, sig: int = signal.SIGKILL) -> None:
        """Kill the parent process (fault tests)."""
        if self.parent is not None and self.parent.poll() is None:
            self.parent.send_signal(sig)
            self.parent.wait(timeout=10)

    def kill_enclave(self, sig: int = signal.SIGKILL) -> None:
        """Kill the enclave process (fault tests)."""
        if self.enclave is not None and self.enclave.poll() is None:
            self.enclave.send_signal(sig)
            self.enclave.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM both processes (parent first), then SIGKILL what is left after 15 s."""
        for proc in (self.parent, self.enclave, self.kms, self.fakes):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in (self.parent, self.enclave, self.kms, self.fakes):
            if proc is None:
                continue
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        for log in self._logs:
            log.close()
        self._logs.clear()

    def log_tail(self, name: str, lines: int = 30) -> str:
        """The last lines of a process log (for error messages)."""
        path = self.log_dir / f"{self.log_prefix}{name}.log"
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# ---------------------------------------------------------------------- demo


async def _wait_for_first_poll(
    client: SecureClient, session_id: str, console: Console
) -> dict[str, Any]:
    """Show polling progress until the first full pass is done (or fails, or 150 s pass).

    A terminal gets a live status line; other outputs (CI logs, ``make demo | tee``)
    get a line whenever the count of trades read changes, at most every 2 s.
    """
    started = time.monotonic()
    deadline = started + FIRST_POLL_DEADLINE_S
    polling: dict[str, Any] = {}
    printed: tuple[Any, ...] | None = None
    printed_at = 0.0
    with console.status("waiting for the first poll ...") as status:
        while time.monotonic() < deadline:
            polling = (await client.summary(session_id))["polling"]
            progress = (
                f"polling: state {polling.get('state')}, {polling.get('trades_seen', 0)} trades, "
                f"{polling.get('calls', 0)} calls"
            )
            status.update(progress)
            done = bool(polling.get("complete") or polling.get("error_kind"))
            seen = (polling.get("state"), polling.get("trades_seen"))
            now = time.monotonic()
            if not console.is_terminal and seen != printed and (done or now - printed_at >= 2):
                console.print(f"  [dim]{now - started:5.1f} s  {progress}[/dim]")
                printed, printed_at = seen, now
            if done:
                break
            await asyncio.sleep(0.5)
    return polling


def _or_na(value: Any, suffix: str = "") -> str:
    """A signed figure as printed: the exact string, or n/a for null."""
    return "n/a" if value is None else f"{value}{suffix}"


def _yes_no(value: Any) -> str:
    """The fully-priced flag in words (docs/metrics.md section 3)."""
    if value is None:
        return "n/a"
    return "yes" if value is True else "no (unpriced amounts: see /enclave/metrics)"


def report_rows(payload: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The verified report as (metric, value) rows: the signed strings, verbatim, with units."""
    currency = payload.get("reporting_currency")
    money = f" {currency}"
    drawdown = payload.get("max_drawdown") or {}
    completeness = payload.get("completeness")
    if isinstance(completeness, Mapping):
        coverage = (
            f"{'complete' if completeness.get('complete') else 'INCOMPLETE'}: "
            f"{len(completeness.get('symbols_seen') or [])} symbols traded of "
            f"{len(completeness.get('symbols_scanned') or [])} scanned, "
            f"{completeness.get('calls')} calls, {len(completeness.get('gaps') or [])} gaps"
        )
    else:
        coverage = "not recorded"
    return [
        ("trades", _or_na(payload.get("trades"))),
        ("orders", _or_na(payload.get("orders"))),
        ("volume", _or_na(payload.get("volume"), money)),
        ("PnL net (realized)", _or_na(payload.get("pnl"), money)),
        ("PnL gross (realized)", _or_na(payload.get("pnl_gross"), money)),
        ("fees", _or_na(payload.get("fees"), money)),
        ("return %", _or_na(payload.get("return_pct"), " %")),
        ("Sharpe (daily, x sqrt 365, rf 0)", _or_na(payload.get("sharpe"))),
        ("Sortino (daily, x sqrt 365)", _or_na(payload.get("sortino"))),
        (
            "max drawdown",
            f"{_or_na(drawdown.get('amount'), money)} ({_or_na(drawdown.get('pct'), ' %')}, "
            f"{_or_na(drawdown.get('duration_days'), ' days')})",
        ),
        ("win rate (round trips)", _or_na(payload.get("win_rate"))),
        ("profit factor", _or_na(payload.get("profit_factor"))),
        ("expectancy (per round trip)", _or_na(payload.get("expectancy"), money)),
        ("reporting currency", _or_na(currency)),
        ("fully priced", _yes_no(payload.get("fully_priced"))),
        ("completeness", coverage),
        ("merkle root", _or_na(payload.get("merkle_root"))),
        ("report seq", _or_na(payload.get("seq"))),
    ]


def _report_table(payload: Mapping[str, Any]) -> Table:
    """The verified figures as a two-column table."""
    table = Table(
        title="Verified report (Ed25519 signature checked against the attested key)",
        title_justify="left",
    )
    table.add_column("metric", no_wrap=True)
    table.add_column("value", overflow="fold")
    for metric, value in report_rows(payload):
        table.add_row(metric, value)
    return table


async def run_demo(stack: LocalStack, console: Console) -> bool:
    """The seed's flow against the running stack; print each check; True if all passed."""
    passed = True

    def check(ok: bool, what: str, detail: str = "") -> None:
        nonlocal passed
        passed &= ok
        mark = "[green]PASS[/green]" if ok else "[red]FAIL[/red]"
        console.print(f"  {mark}  {what}" + (f"  [dim]{detail}[/dim]" if detail else ""))

    pcrs = stack.expected_pcrs()
    console.print(f"[bold]Pinned[/bold] PCR0 {pcrs[0].hex()[:32]}... and the NSM simulator root")
    async with SecureClient(
        stack.base_url,
        expected_pcrs=pcrs,
        root_der=stack.nsm_root_der(),
        ca_file=str(stack.ca_file),
    ) as client:
        console.print("[bold]1. Attestation[/bold] (fresh nonce, chain to pinned root, PCRs)")
        quote = await client.attest()
        check(True, "attestation document verified", f"module {quote.verified.doc.module_id}")
        check(quote.pcr0 == pcrs[0].hex(), "PCR0 matches the pinned measurement")

        console.print("[bold]2. Register[/bold] (credentials encrypted to the attested key)")
        fake = stack.fakes_info()["exchanges"]["binance"]
        registration = await client.register(
            exchange="binance",
            # The keys the local fake Binance accepts (random test keys, see fakes.json).
            api_key=fake["credentials"]["api_key"],
            api_secret=fake["credentials"]["api_secret"],
            label="demo",
            ttl=3600,
        )
        check(
            bool(registration.session_id), "session created", f"expires {registration.expires_at}"
        )

        console.print(
            "[bold]3. Polling[/bold] (enclave -> CONNECT proxy -> vsock -> parent egress -> "
            f"fake {fake['host']}, TLS verified for the real name)"
        )
        polling = await _wait_for_first_poll(client, registration.session_id, console)
        truth = stack.truth("binance")
        check(
            polling.get("complete") is True and polling.get("error_kind") is None,
            "full history read",
            f"{polling.get('trades_seen')} trades in {polling.get('calls')} exchange calls",
        )
        check(
            polling.get("trades_digest") == trade_set_digest(truth),
            "the trade set equals the fake exchange's ground truth",
            f"{len(truth)} trades, none missing, none doubled",
        )

        console.print("[bold]4. Signed aggregates[/bold]")
        report = await client.aggregates(registration.session_id)
        check(True, "signature verified with the attested Ed25519 key")
        check(
            report.payload.get("trades") == len(truth),
            "the signed report counts every trade",
            f"FIFO metrics in {report.payload.get('reporting_currency')} (docs/metrics.md)",
        )
        console.print(_report_table(report.payload))
        # Kept for offline checks: anyone can re-verify it with the attested key.
        saved = stack.state_dir / REPORT_FILE
        saved.write_text(
            json.dumps(
                {
                    "payload": report.payload,
                    "signature": report.signature,
                    "signing_public_key": b64encode(quote.sig_public),
                },
                indent=1,
                sort_keys=True,
            )
            + "\n"
        )
        console.print(f"  [dim]signed report saved to {saved}[/dim]")
        summary = await client.summary(registration.session_id)
        check(summary.get("status") == "active", "summary says the session is active")

        console.print("[bold]5. Revoke[/bold] (owner-signed)")
        result = await client.revoke(registration)
        check(result.get("success") is True, "revoked", str(result.get("message")))
        try:
            await client.aggregates(registration.session_id)
            check(False, "aggregates after revoke must be 404")
        except ServerRejected as exc:
            check(exc.status == 404, "aggregates after revoke answer 404", exc.code)
    return passed


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``make run`` / ``make demo``."""
    parser = argparse.ArgumentParser(prog="python -m scripts.localstack", description=__doc__)
    parser.add_argument("command", choices=["run", "demo"])
    parser.add_argument("--state-dir", type=Path, default=Path(".run"))
    parser.add_argument("--port", type=int, default=3000, help="parent HTTPS port")
    parser.add_argument("--enclave-port", type=int, default=15000, help="simulated vsock TCP port")
    parser.add_argument(
        "--egress-port", type=int, default=15001, help="simulated vsock TCP port of the egress"
    )
    args = parser.parse_args(argv)
    console = Console()
    stack = LocalStack(
        args.state_dir,
        parent_port=args.port,
        enclave_tcp_port=args.enclave_port,
        egress_tcp_port=args.egress_port,
    )
    started = time.monotonic()

    def terminate(_signum: int, _frame: object) -> None:
        # `kill` / systemd stop: leave through ``finally`` so every child is stopped too.
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, terminate)
    try:
        console.print(f"Starting the local stack in {stack.state_dir} ...")
        stack.start()
        console.print(
            f"[green]ready[/green] in {time.monotonic() - started:.1f} s: {stack.base_url} "
            f"(CA {stack.ca_file}, NSM root {stack.nsm_root_file}, PCRs {stack.pcrs_file})"
        )
        if args.command == "run":
            console.print("Ctrl-C stops everything.")
            with contextlib.suppress(KeyboardInterrupt):
                while stack.parent is not None and stack.parent.poll() is None:
                    time.sleep(0.5)
            return 0
        ok = asyncio.run(run_demo(stack, console))
        console.print(
            "[bold green]demo passed[/bold green]" if ok else "[bold red]demo FAILED[/bold red]"
        )
        return 0 if ok else 1
    except StackError as exc:
        console.print(f"[red]stack error:[/red] {exc}")
        return 1
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
