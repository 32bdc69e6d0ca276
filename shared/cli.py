"""The ``perf-agg`` command line: register with an attested enclave, fetch verified reports.

Side: client. Built on :class:`shared.client.SyncSecureClient` (every quote verified
against pinned PCRs and root, every report's signature checked) and
:mod:`shared.keystore` (owner key and session id kept under a local name, 0600).

Secrets never come from the command line, where they would leak to process lists and
shell history: exchange credentials come from ``PERF_AGG_API_KEY``,
``PERF_AGG_API_SECRET``, ``PERF_AGG_PASSPHRASE`` or a prompt that does not echo, and
sessions are named, never typed. An argument that looks like a secret flag
(``--api-secret``, ``--session-id``, ...) is refused before anything else happens.

Output: rich tables for people; ``--json`` prints one JSON document on stdout and
nothing else there (messages and progress go to stderr). docs/client.md is the reference.

Adding a subcommand: write ``cmd_<name>(ctx) -> int`` and add one ``_command(...)`` entry
in :func:`build_parser`.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import getpass
import json
import os
import stat
import sys
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum
from pathlib import Path
from typing import Any, Final, NoReturn

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from shared.attestation import fingerprint, pcrs_from_json, pcrs_to_json
from shared.bundle import MAX_BUNDLE_BYTES, build_bundle, verify_bundle
from shared.client import (
    AWS_ROOT,
    AttestationFailed,
    ClientError,
    Registration,
    ServerRejected,
    SyncSecureClient,
    Unreachable,
    VerificationFailed,
    load_root,
)
from shared.disclosure import DisclosureError, verify_disclosure
from shared.encoding import b64encode
from shared.ids import is_session_id
from shared.keystore import KeyStore, KeyStoreError, StoredSession, default_home
from shared.merkle import MerkleError, TreeHead
from shared.signing import report_hash

__all__ = ["ExitCode", "build_parser", "main"]


class ExitCode(IntEnum):
    """What ``perf-agg`` returns; documented in ``--help`` and docs/client.md."""

    OK = 0
    USAGE = 1  # bad arguments, config, keystore or input; a secret given as an argument
    ATTESTATION_FAILED = 2  # the enclave's attestation did not verify: nothing was sent
    SERVER_REJECTED = 3  # the server refused (HTTP 4xx/5xx), or the exchange refused the keys
    VERIFICATION_FAILED = 4  # a signed report or an owner reply did not verify
    UNREACHABLE = 5  # no HTTPS answer (connection, TLS trust, timeout)
    TIMED_OUT = 6  # register --wait: no complete first poll before --wait-timeout
    INTERRUPTED = 130  # Ctrl-C


ENV_API_KEY: Final = "PERF_AGG_API_KEY"
ENV_API_SECRET: Final = "PERF_AGG_API_SECRET"  # noqa: S105 - a variable name, not a secret
ENV_PASSPHRASE: Final = "PERF_AGG_PASSPHRASE"  # noqa: S105 - a variable name, not a secret
ENV_CONFIG: Final = "PERF_AGG_CONFIG"
ENV_SESSION: Final = "PERF_AGG_SESSION"
ENV_SESSION_ID: Final = "PERF_AGG_SESSION_ID"

DEFAULT_TTL: Final = 86_400
DEFAULT_WAIT_TIMEOUT: Final = 150.0
DEFAULT_TIMEOUT: Final = 30.0
# register --wait polls the summary every 1 s at first, then backs off to 10 s, so that a
# long first poll stays well inside the server's per-IP rate limit.
_POLL_INTERVAL: Final = 1.0
_POLL_INTERVAL_MAX: Final = 10.0
_MAX_RECORD_BYTES: Final = 16 * 1024
# Polling states after which the enclave stops trying (enclave.exchanges.polling.PollState).
_TERMINAL_POLL_STATES: Final = frozenset({"auth_error", "denied", "stopped"})

# Option names that would carry a secret, compared without dashes/underscores and case:
# --api-secret, --api_secret, --apiSecret, -Secret (the seed's PowerShell), ...
_SECRET_OPTIONS: Final = frozenset(
    {
        "apikey",
        "apisecret",
        "secret",
        "secretkey",
        "key",
        "passphrase",
        "password",
        "sessionid",
        "ownerkey",
        "token",
    }
)
_CONFIG_KEYS: Final = frozenset({"url", "pcrs", "pcrs_file", "root", "ca_file", "timeout"})

_EPILOG: Final = f"""\
Secrets are never command-line arguments (they would leak to process lists and shell
history). Credentials come from {ENV_API_KEY}, {ENV_API_SECRET} and {ENV_PASSPHRASE},
or from a prompt that does not echo. Sessions are referred to by a local name.

environment:
  {ENV_API_KEY}, {ENV_API_SECRET}, {ENV_PASSPHRASE}
                       exchange credentials for `register` (else a no-echo prompt)
  PERF_AGG_HOME        holds config.toml and sessions/ (default ~/.config/perf-agg)
  {ENV_CONFIG}      config file (default $PERF_AGG_HOME/config.toml)
  {ENV_SESSION}     session name to use when --session is not given
  {ENV_SESSION_ID}  a raw session id instead of a name (no owner key: read-only)
  PERF_AGG_KEYRING=0   keep secrets in the 0600 session files even if `keyring` is installed

exit codes:
  0  ok
  1  usage, config, keystore or input error (also: a secret passed as an argument)
  2  attestation failed: the enclave is not the pinned one; nothing was encrypted or sent
  3  the server refused the request (or, with register --wait, the exchange refused the keys)
  4  verification failed: a signed report (or an owner reply) did not verify
  5  server unreachable (connection refused, untrusted TLS certificate, timeout)
  6  register --wait gave up before the first complete poll (the session exists)
     (verify: 0 verified, 4 not verified; the table names the failed check)
  130 interrupted

See docs/client.md for the config file and every subcommand.
"""


class UsageError(Exception):
    """A problem the user can fix locally (arguments, config, input): exit 1."""


class WaitTimedOut(Exception):
    """``register --wait`` ran out of time."""


class ExchangeRefused(Exception):
    """``register --wait``: the enclave stopped polling (bad keys, denied host)."""


class _Parser(argparse.ArgumentParser):
    """argparse with exit code 1 for usage errors (argparse's own is 2, our 'attestation')."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message}\n{self.format_usage().rstrip()}")


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Where to connect and what to pin, after flags > config file > defaults."""

    url: str | None
    expected_pcrs: dict[int, bytes] | None
    pcrs_source: str | None
    root: str  # "aws" or a file path
    ca_file: str | None
    timeout: float
    config_file: Path | None


def read_pcrs_file(path: Path) -> dict[int, bytes]:
    """Pinned PCRs: JSON ``{"0": hex, ...}`` or nitro-cli's ``{"Measurements": {"PCR0": ...}}``."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read the PCR file {path}: {exc.strerror}") from None
    except ValueError:
        raise UsageError(f"the PCR file {path} is not JSON") from None
    if isinstance(document, dict) and isinstance(document.get("Measurements"), dict):
        # `nitro-cli build-enclave` / `describe-eif` output.
        measured = document["Measurements"]
        document = {
            key[3:]: value
            for key, value in measured.items()
            if isinstance(key, str) and key.startswith("PCR")
        }
    try:
        pcrs = pcrs_from_json(document)
    except ValueError as exc:
        raise UsageError(f"the PCR file {path} is invalid: {exc}") from None
    if not pcrs:
        raise UsageError(f"the PCR file {path} pins no PCR")
    return pcrs


def _config_path(args: argparse.Namespace, env: Mapping[str, str]) -> tuple[Path, bool]:
    """The config file and whether it was named explicitly (then it must exist)."""
    explicit = _opt(args, "config", None)
    if explicit is not None:
        return Path(explicit).expanduser(), True
    if env.get(ENV_CONFIG):
        return Path(env[ENV_CONFIG]).expanduser(), True
    return default_home(env) / "config.toml", False


def load_config(path: Path, *, required: bool) -> dict[str, Any]:
    """Parse and check the TOML config; paths in it are relative to its directory."""
    try:
        with path.open("rb") as file:
            document = tomllib.load(file)
    except FileNotFoundError:
        if required:
            raise UsageError(f"the config file {path} does not exist") from None
        return {}
    except OSError as exc:
        raise UsageError(f"cannot read the config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"the config file {path} is not valid TOML: {exc}") from None
    unknown = sorted(set(document) - _CONFIG_KEYS)
    if unknown:
        raise UsageError(
            f"the config file {path} has unknown keys: {', '.join(unknown)} "
            f"(known: {', '.join(sorted(_CONFIG_KEYS))})"
        )
    for key in ("url", "pcrs_file", "root", "ca_file"):
        if key in document and not isinstance(document[key], str):
            raise UsageError(f"config {path}: '{key}' must be a string")
    if "timeout" in document and (
        isinstance(document["timeout"], bool)
        or not isinstance(document["timeout"], int | float)
        or document["timeout"] <= 0
    ):
        raise UsageError(f"config {path}: 'timeout' must be a positive number of seconds")
    if "pcrs" in document and "pcrs_file" in document:
        raise UsageError(f"config {path}: give 'pcrs' or 'pcrs_file', not both")
    base = path.parent
    for key in ("pcrs_file", "ca_file"):
        if key in document:
            document[key] = str(base / Path(document[key]).expanduser())
    if "root" in document and document["root"] != AWS_ROOT:
        document["root"] = str(base / Path(document["root"]).expanduser())
    if "pcrs" in document:
        try:
            document["pcrs"] = pcrs_from_json(document["pcrs"])
        except ValueError as exc:
            raise UsageError(f"config {path}: 'pcrs' is invalid: {exc}") from None
    return document


def resolve_settings(args: argparse.Namespace, env: Mapping[str, str]) -> Settings:
    """Command-line flags override the config file, which overrides the defaults."""
    path, required = _config_path(args, env)
    config = load_config(path, required=required)
    pcrs: dict[int, bytes] | None = None
    source: str | None = None
    if _opt(args, "pcrs", None) is not None:
        source = str(Path(args.pcrs).expanduser())
        pcrs = read_pcrs_file(Path(source))
    elif "pcrs_file" in config:
        source = config["pcrs_file"]
        pcrs = read_pcrs_file(Path(config["pcrs_file"]))
    elif "pcrs" in config:
        source = f"{path} [pcrs]"
        pcrs = config["pcrs"]
    root = _opt(args, "root", None)
    if root is not None and root != AWS_ROOT:
        root = str(Path(root).expanduser())
    ca_file = _opt(args, "ca_file", None)
    if ca_file is not None:
        ca_file = str(Path(ca_file).expanduser())
    timeout = _opt(args, "timeout", None)
    if timeout is not None and not timeout > 0:
        raise UsageError("--timeout must be a positive number of seconds")
    return Settings(
        url=_opt(args, "url", None) or config.get("url"),
        expected_pcrs=pcrs,
        pcrs_source=source,
        root=root or config.get("root", AWS_ROOT),
        ca_file=ca_file or config.get("ca_file"),
        timeout=float(timeout or config.get("timeout", DEFAULT_TIMEOUT)),
        config_file=path if config else None,
    )


def _opt(args: argparse.Namespace, name: str, default: Any) -> Any:
    # Common options default to SUPPRESS so they work before and after the subcommand.
    return getattr(args, name, default)


def refuse_secret_arguments(argv: Sequence[str]) -> None:
    """Raise UsageError if an argument looks like a secret-carrying option."""
    for argument in argv:
        if argument == "--":
            break
        if not argument.startswith("-") or argument == "-":
            continue
        name = argument.split("=", 1)[0].lstrip("-")
        normalised = name.replace("-", "").replace("_", "").lower()
        if normalised in _SECRET_OPTIONS:
            raise UsageError(
                f"refusing -{'-' if argument.startswith('--') else ''}{name}: secrets are never "
                "command-line arguments (they leak to process lists and shell history). "
                f"Set {ENV_API_KEY} / {ENV_API_SECRET} / {ENV_PASSPHRASE} in the environment, "
                "or let `perf-agg register` prompt for them; refer to sessions with "
                f"--session NAME (or {ENV_SESSION_ID})."
            )


# --------------------------------------------------------------------------- context


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionRef:
    """The session a command acts on: stored under a name, or a bare id from the environment."""

    name: str | None
    registration: Registration
    stored: StoredSession | None
    base_url: str | None


class Context:
    """What a subcommand needs: arguments, environment, consoles, keystore, client."""

    def __init__(
        self, args: argparse.Namespace, env: Mapping[str, str], out: Console, err: Console
    ) -> None:
        self.args = args
        self.env = env
        self.out = out
        self.err = err
        self.json = bool(_opt(args, "json", False))
        self._settings: Settings | None = None
        self._keystore: KeyStore | None = None

    @property
    def settings(self) -> Settings:
        """Flags + config file, resolved once."""
        if self._settings is None:
            self._settings = resolve_settings(self.args, self.env)
        return self._settings

    @property
    def keystore(self) -> KeyStore:
        """The user's keystore (``$PERF_AGG_HOME/sessions``)."""
        if self._keystore is None:
            self._keystore = KeyStore.default(self.env)
        return self._keystore

    def base_url(self, session_url: str | None = None) -> str:
        """--url > the session's own URL > config; a session never goes to another server."""
        flag = _opt(self.args, "url", None)
        if session_url is not None:
            if flag is not None and flag.rstrip("/") != session_url.rstrip("/"):
                raise UsageError(
                    f"this session belongs to {session_url}; refusing to send it to {flag}"
                )
            return session_url
        url = self.settings.url
        if not url:
            raise UsageError("no server URL: pass --url or set `url` in the config file")
        return str(url)

    @contextlib.contextmanager
    def client(self, session_url: str | None = None) -> Iterator[SyncSecureClient]:
        """A verifying client pinned to the configured PCRs and root (fails closed)."""
        url = self.base_url(session_url)
        settings = self.settings
        if not settings.expected_pcrs:
            raise UsageError(
                "no pinned PCRs: pass --pcrs FILE or set `pcrs_file` (or a [pcrs] table) in the "
                "config file; perf-agg never talks to an enclave it cannot check"
            )
        if settings.ca_file is not None and not Path(settings.ca_file).is_file():
            raise UsageError(f"the CA file {settings.ca_file} does not exist")
        try:
            root_der = load_root(settings.root)
            client = SyncSecureClient(
                url,
                expected_pcrs=settings.expected_pcrs,
                root_der=root_der,
                ca_file=settings.ca_file,
                timeout=settings.timeout,
            )
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        try:
            yield client
        finally:
            client.close()

    def session(self) -> SessionRef:
        """--session NAME, else $PERF_AGG_SESSION, else $PERF_AGG_SESSION_ID, else the only one."""
        name = _opt(self.args, "session", None) or self.env.get(ENV_SESSION)
        if not name and self.env.get(ENV_SESSION_ID):
            session_id = self.env[ENV_SESSION_ID]
            if not is_session_id(session_id):
                raise UsageError(f"{ENV_SESSION_ID} is not a session id (43 URL-safe characters)")
            return SessionRef(
                name=None,
                registration=Registration(session_id=session_id, expires_at=""),
                stored=None,
                base_url=None,
            )
        if not name:
            names = self.keystore.names()
            if len(names) != 1:
                listed = ", ".join(names) if names else "none stored"
                raise UsageError(
                    f"which session? pass --session NAME ({listed}; see `perf-agg sessions`)"
                )
            name = names[0]
        stored = self.keystore.load(name)
        return SessionRef(
            name=stored.name,
            registration=stored.registration(),
            stored=stored,
            base_url=stored.base_url,
        )

    # ------------------------------------------------------------------ output

    def emit(self, data: Any, render: Callable[[], None]) -> None:
        """``--json``: ``data`` as JSON on stdout; otherwise call ``render`` (rich)."""
        if self.json:
            sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
            sys.stdout.flush()
        else:
            render()

    def note(self, message: str) -> None:
        """A human message on stderr (never on stdout, which --json keeps for JSON)."""
        self.err.print(message)


def _table(title: str, rows: Mapping[str, Any], *, ordered: bool = False) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    keys = list(rows)
    if ordered:
        # Known report fields in their usual order, then the rest alphabetically.
        known = [key for key in _REPORT_FIELDS if key in rows]
        keys = known + sorted(key for key in rows if key not in known)
    for key in keys:
        table.add_row(escape(str(key)), escape(_show(rows[key])))
    return table


def _show(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _rfc3339_ms(milliseconds: int) -> str:
    return datetime.fromtimestamp(milliseconds / 1000, UTC).isoformat().replace("+00:00", "Z")


# --------------------------------------------------------------------------- commands


def cmd_attest(ctx: Context) -> int:
    """Fetch a quote with a fresh nonce and verify it against the pinned root and PCRs."""
    with ctx.client() as client:
        quote = client.attest()
    settings = ctx.settings
    doc = quote.verified.doc
    data: dict[str, Any] = {
        "verified": True,
        "url": client.base_url,
        "module_id": doc.module_id,
        "timestamp": _rfc3339_ms(doc.timestamp),
        # PCR0-2 (image, kernel, application), the pinned ones, and any other that is set.
        "pcrs": pcrs_to_json(
            {
                index: value
                for index, value in quote.verified.pcrs.items()
                if index in (0, 1, 2) or index in (settings.expected_pcrs or {}) or any(value)
            }
        ),
        "pinned": sorted(str(i) for i in settings.expected_pcrs or {}),
        "pcrs_source": settings.pcrs_source,
        "root_sha256": fingerprint(load_root(settings.root)),
        "enclave_pubkey": b64encode(quote.enc_public),
        "signing_pubkey": b64encode(quote.sig_public),
        "post_quantum": quote.pq_public is not None,
    }

    def render() -> None:
        ctx.out.print(
            f"[green]attestation verified[/green]: {escape(client.base_url)} runs the pinned "
            f"enclave (PCR {', '.join(data['pinned'])} from {escape(str(settings.pcrs_source))})"
        )
        rows = {
            "module": data["module_id"],
            "document time": data["timestamp"],
            **{f"PCR{i}": v for i, v in data["pcrs"].items()},
            "root (SHA-256)": data["root_sha256"],
            "credential key (X25519)": data["enclave_pubkey"],
            "signing key (Ed25519)": data["signing_pubkey"],
            "post-quantum envelope": "offered" if data["post_quantum"] else "not offered",
        }
        ctx.out.print(_table("Attestation", rows))

    ctx.emit(data, render)
    return ExitCode.OK


def _secret(ctx: Context, variable: str, prompt: str, *, required: bool) -> str | None:
    value = ctx.env.get(variable)
    if value:
        return value
    if not required:
        return None
    if not sys.stdin.isatty():
        raise UsageError(f"set {variable} (stdin is not a terminal, so perf-agg cannot prompt)")
    value = getpass.getpass(prompt)
    if not value:
        raise UsageError(f"{variable}: an empty value is not a credential")
    return value


def _wait_for_first_poll(
    ctx: Context, client: SyncSecureClient, session_id: str, name: str, timeout: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    progress = (
        contextlib.nullcontext(None)
        if ctx.json
        else ctx.err.status("waiting for the enclave's first poll of the exchange ...")
    )
    interval = _POLL_INTERVAL
    with progress as status:
        while True:
            polling = client.summary(session_id).get("polling") or {}
            if status is not None:
                status.update(
                    f"enclave polling: {escape(str(polling.get('state')))}, "
                    f"{polling.get('trades_seen', 0)} trades, {polling.get('calls', 0)} calls"
                )
            if polling.get("complete"):
                return dict(polling)
            if polling.get("state") in _TERMINAL_POLL_STATES:
                raise ExchangeRefused(
                    "the enclave stopped polling the exchange "
                    f"({polling.get('error_kind') or polling.get('state')}): "
                    f"{polling.get('last_error') or 'no detail'}; the session is registered: "
                    f"revoke it with `perf-agg revoke --session {name}`"
                )
            if time.monotonic() >= deadline:
                raise WaitTimedOut(
                    f"no complete poll within {timeout:g} s; the session is registered: "
                    f"check it later with `perf-agg summary --session {name}`"
                )
            time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
            interval = min(interval * 1.5, _POLL_INTERVAL_MAX)


def cmd_register(ctx: Context) -> int:
    """Attest, encrypt the exchange credentials to the attested key, submit, store the owner key."""
    args = ctx.args
    name = args.name or args.label
    if args.ttl <= 0:
        raise UsageError("--ttl must be a positive number of seconds")
    keystore = ctx.keystore
    with ctx.client() as client:
        # Config and pins are checked (client built), then the keystore, and only then
        # are the secrets read: a mistake shows before anything is typed or sent.
        try:
            keystore.ensure_writable(name)
        except KeyStoreError as exc:
            if args.name is None:
                raise UsageError(f"{exc} (the name defaults to --label; pass --name)") from None
            raise
        api_key = _secret(ctx, ENV_API_KEY, "Exchange API key (not echoed): ", required=True)
        api_secret = _secret(
            ctx, ENV_API_SECRET, "Exchange API secret (not echoed): ", required=True
        )
        passphrase = _secret(
            ctx,
            ENV_PASSPHRASE,
            "Exchange API passphrase (not echoed): ",
            required=args.ask_passphrase,
        )
        assert api_key is not None
        assert api_secret is not None
        try:
            registration = client.register(
                exchange=args.exchange,
                api_key=api_key,
                api_secret=api_secret,
                passphrase=passphrase,
                label=args.label,
                ttl=args.ttl,
            )
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        finally:
            del api_key, api_secret, passphrase
        quote = client.quote
        assert quote is not None  # register() verified one
        stored = StoredSession(
            name=name,
            base_url=client.base_url,
            exchange=args.exchange,
            label=args.label,
            expires_at=registration.expires_at,
            created_at=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            pcr0=quote.pcr0,
            session_id=registration.session_id,
            owner_key=registration.owner_key,
        )
        try:
            path = keystore.save(stored)
        except (KeyStoreError, OSError):
            # Without its owner key the session could not be revoked: take it back now.
            with contextlib.suppress(ClientError):
                client.revoke(registration)
            raise
        polling = (
            _wait_for_first_poll(ctx, client, registration.session_id, name, args.wait_timeout)
            if args.wait
            else None
        )
    data = {
        "name": name,
        "url": stored.base_url,
        "exchange": stored.exchange,
        "label": stored.label,
        "expires_at": stored.expires_at,
        "pcr0": stored.pcr0,
        "keystore": str(path),
        "polling": polling,
    }

    def render() -> None:
        ctx.out.print(
            f"[green]registered[/green] session [bold]{escape(name)}[/bold]: credentials "
            "encrypted to the attested enclave key"
        )
        rows: dict[str, Any] = {
            "exchange": stored.exchange,
            "label": stored.label,
            "expires": stored.expires_at,
            "enclave PCR0": stored.pcr0,
            "owner key": f"{path} (0600)",
        }
        if polling is not None:
            rows["first poll"] = (
                f"complete: {polling.get('trades_seen')} trades in {polling.get('calls')} calls"
            )
        ctx.out.print(_table("Session", rows))
        ctx.out.print(f"Next: perf-agg status --session {escape(name)}")

    ctx.emit(data, render)
    return ExitCode.OK


def _check_chain(stored: StoredSession, payload: Mapping[str, Any]) -> None:
    """A report older than, or not chained to, the last one verified here is refused."""
    if stored.last_seq is None:
        return
    seq = payload.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq <= stored.last_seq:
        raise VerificationFailed(
            f"report seq {seq} is not newer than the last verified report ({stored.last_seq}): "
            "an old report was replayed"
        )
    if seq == stored.last_seq + 1 and payload.get("prev_report_hash") != stored.last_report_hash:
        raise VerificationFailed("the report does not chain to the last verified report")


_REPORT_FIELDS: Final = (
    "exchange",
    "label",
    "trades",
    "pnl",
    "pnl_gross",
    "fees",
    "volume",
    "return_pct",
    "sharpe",
    "sortino",
    "max_drawdown",
    "win_rate",
    "profit_factor",
    "reporting_currency",
    "from",
    "to",
    "seq",
    "issued_at",
    "merkle_root",
    "pcr0",
)


def cmd_status(ctx: Context) -> int:
    """Fetch a signed report and verify it (attested key, PCR0, session, report chain)."""
    ref = ctx.session()
    with ctx.client(ref.base_url) as client:
        report = client.aggregates(ref.registration.session_id)
    payload = report.payload
    digest = report_hash(payload)
    if ref.stored is not None:
        _check_chain(ref.stored, payload)
        seq = payload.get("seq")
        if isinstance(seq, int) and not isinstance(seq, bool):
            ctx.keystore.with_report(ref.stored, seq=seq, report_hash=digest)
            ctx.keystore.add_report(ref.stored.name, payload, report.signature)
    data = {
        "verified": True,
        "session": ref.name,
        "payload": payload,
        "signature": report.signature,
        "report_hash": digest,
    }

    def render() -> None:
        ctx.out.print(
            "[green]signature verified[/green] with the enclave's attested Ed25519 key "
            f"(PCR0 {escape(str(payload.get('pcr0', ''))[:16])}...)"
        )
        rows: dict[str, Any] = {key: payload.get(key) for key in _REPORT_FIELDS if key in payload}
        completeness = payload.get("completeness")
        if isinstance(completeness, dict):
            rows["complete"] = completeness.get("complete")
        ctx.out.print(_table(f"Signed report of {ref.name or 'session'}", rows))

    ctx.emit(data, render)
    return ExitCode.OK


def cmd_summary(ctx: Context) -> int:
    """Headline figures and polling state (not signed; `status` gives the signed report)."""
    ref = ctx.session()
    with ctx.client(ref.base_url) as client:
        summary = client.summary(ref.registration.session_id)

    def render() -> None:
        headline = summary.get("headline") or {}
        polling = summary.get("polling") or {}
        rows = {
            key: summary.get(key)
            for key in ("exchange", "label", "status", "created_at", "expires_at", "reports_issued")
        }
        ctx.out.print(_table(f"Summary of {ref.name or 'session'} (unsigned)", rows))
        ctx.out.print(_table("Headline", headline, ordered=True))
        ctx.out.print(_table("Polling", {k: v for k, v in polling.items() if k != "trades_digest"}))

    ctx.emit(summary, render)
    return ExitCode.OK


def cmd_metrics(ctx: Context) -> int:
    """Detailed metrics (not signed); --json has the per-symbol and daily detail."""
    ref = ctx.session()
    with ctx.client(ref.base_url) as client:
        metrics = client.metrics(ref.registration.session_id)

    def render() -> None:
        window = metrics.get("window") or {}
        ctx.out.print(
            _table(
                f"Metrics of {ref.name or 'session'} (unsigned), "
                f"{window.get('from')} .. {window.get('to')}",
                metrics.get("totals") or {},
                ordered=True,
            )
        )
        symbols = metrics.get("symbols")
        if isinstance(symbols, dict) and symbols:
            ctx.out.print(f"{len(symbols)} symbols; use --json for the per-symbol and daily detail")

    ctx.emit(metrics, render)
    return ExitCode.OK


def cmd_revoke(ctx: Context) -> int:
    """Revoke the session (owner-signed); the enclave forgets the credentials."""
    ref = ctx.session()
    if not ctx.args.yes:
        if not sys.stdin.isatty():
            raise UsageError("revoke needs --yes when stdin is not a terminal")
        answer = input(f"Revoke session {ref.name or '(from environment)'}? [y/N] ")
        if answer.strip().lower() not in {"y", "yes"}:
            ctx.note("not revoked")
            return ExitCode.USAGE
    with ctx.client(ref.base_url) as client:
        result = client.revoke(ref.registration)
    if ref.name is not None:
        ctx.keystore.delete(ref.name)
    data = {"revoked": True, "session": ref.name, "message": result.get("message")}
    ctx.emit(
        data,
        lambda: ctx.out.print(
            f"[green]revoked[/green] {escape(ref.name or 'session')}: "
            f"{escape(str(result.get('message')))}"
        ),
    )
    return ExitCode.OK


def cmd_sessions(ctx: Context) -> int:
    """List the sessions stored on this machine (no secrets shown); --forget one."""
    keystore = ctx.keystore
    if ctx.args.forget:
        keystore.delete(ctx.args.forget)
        ctx.emit(
            {"forgotten": ctx.args.forget},
            lambda: ctx.out.print(
                f"forgot {escape(ctx.args.forget)} here (the server keeps it until it expires)"
            ),
        )
        return ExitCode.OK
    sessions = [keystore.load(name).public() for name in keystore.names()]

    def render() -> None:
        if not sessions:
            ctx.out.print(f"no sessions in {escape(str(keystore.directory))}")
            return
        table = Table(title=f"Sessions in {keystore.directory}", title_justify="left")
        for column in ("name", "exchange", "label", "expires_at", "base_url", "last_seq"):
            table.add_column(column, overflow="fold")
        for session in sessions:
            table.add_row(
                *(escape(_show(session[c])) for c in ("name", "exchange", "label", "expires_at")),
                escape(session["base_url"]),
                _show(session["last_seq"]),
            )
        ctx.out.print(table)

    ctx.emit({"directory": str(keystore.directory), "sessions": sessions}, render)
    return ExitCode.OK


def _read_record(ctx: Context) -> bytes:
    source = ctx.args.file
    if source is None or source == "-":
        if source is None and sys.stdin.isatty():
            raise UsageError("give the record with --file PATH or pipe it on stdin")
        data = sys.stdin.buffer.read(_MAX_RECORD_BYTES + 1)
    else:
        try:
            with open(source, "rb") as file:
                data = file.read(_MAX_RECORD_BYTES + 1)
        except OSError as exc:
            raise UsageError(f"cannot read {source}: {exc.strerror}") from None
    if not 1 <= len(data) <= _MAX_RECORD_BYTES:
        raise UsageError(f"a record is 1..{_MAX_RECORD_BYTES} bytes")
    return data


def _write_private(path: Path, data: bytes) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, stat.S_IRUSR | stat.S_IWUSR)
    except FileExistsError:
        raise UsageError(f"{path} exists; refusing to overwrite it") from None
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as file:
        file.write(data)


def cmd_records_seal(ctx: Context) -> int:
    """Encrypt a record to the attested enclave and have it sealed (the parent sees ciphertext)."""
    data = _read_record(ctx)
    ref = ctx.session()
    with ctx.client(ref.base_url) as client:
        try:
            info = client.seal_record(ref.registration, data, label=ctx.args.label)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    result = {"id": info.id, "label": info.label, "created_at": info.created_at}
    ctx.emit(result, lambda: ctx.out.print(_table("Sealed record", result)))
    return ExitCode.OK


def cmd_records_unseal(ctx: Context) -> int:
    """Fetch a record re-encrypted to your owner key and decrypt it locally."""
    ref = ctx.session()
    if ref.registration.owner_key is None:
        raise UsageError("unsealing needs the session's owner key: use a stored --session")
    with ctx.client(ref.base_url) as client:
        try:
            record = client.unseal_record(ref.registration, ctx.args.record_id)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    output = ctx.args.output
    if output is not None:
        _write_private(Path(output), record.data)
    if ctx.json:
        data: dict[str, Any] = {"id": record.id, "label": record.label}
        if output is None:
            data["data_b64"] = base64.b64encode(record.data).decode("ascii")
        else:
            data["output"] = str(output)
        ctx.emit(data, lambda: None)
    elif output is None:
        sys.stdout.buffer.write(record.data)
        sys.stdout.buffer.flush()
    else:
        ctx.out.print(f"record {escape(record.id)} written to {escape(str(output))} (0600)")
    return ExitCode.OK


def cmd_records_list(ctx: Context) -> int:
    """List the session's sealed records (id, label, creation time)."""
    ref = ctx.session()
    with ctx.client(ref.base_url) as client:
        records = client.list_records(ref.registration.session_id)
    rows = [{"id": r.id, "label": r.label, "created_at": r.created_at} for r in records]

    def render() -> None:
        table = Table(title=f"Records of {ref.name or 'session'}", title_justify="left")
        for column in ("id", "label", "created_at"):
            table.add_column(column)
        for row in rows:
            table.add_row(*(escape(row[c]) for c in ("id", "label", "created_at")))
        ctx.out.print(table)

    ctx.emit({"records": rows}, render)
    return ExitCode.OK


# --------------------------------------------------------------------------- commitments


def _trusted_head(stored: StoredSession | None) -> TreeHead | None:
    if stored is None or stored.log_head is None:
        return None
    try:
        return TreeHead.from_payload(stored.log_head)
    except MerkleError:
        raise UsageError(f"session {stored.name!r} keeps a malformed log head") from None


def _entry_summary(entry: Mapping[str, Any]) -> str:
    data = entry.get("data")
    if not isinstance(data, Mapping):
        return ""
    return ", ".join(f"{key}={_show(value)}" for key, value in sorted(data.items()))


def cmd_logs(ctx: Context) -> int:
    """The session's transparency log, verified: signed head, every entry, and growth only."""
    ref = ctx.session()
    trusted = _trusted_head(ref.stored)
    with ctx.client(ref.base_url) as client:
        log = client.logs(ref.registration.session_id, trusted_head=trusted)
    verified = log.verified
    if ref.stored is not None:
        ctx.keystore.with_log_head(ref.stored, verified.head.to_payload())
    data = {
        "verified": True,
        "consistent_with_previous": trusted is not None,
        "live": log.live,
        "tree_head": verified.signed_head.to_json(),
        "entries": list(verified.entries),
    }

    def render() -> None:
        extends = (
            f"; extends the head of size {trusted.size} seen before" if trusted is not None else ""
        )
        ctx.out.print(
            f"[green]log verified[/green]: {verified.head.size} entries under a tree head "
            f"signed by the attested key{extends}"
            + ("" if log.live else " [yellow](stored copy: session gone or enclave away)[/yellow]")
        )
        table = Table(title=f"Transparency log of {ref.name or 'session'}", title_justify="left")
        for column in ("#", "at", "op", "data"):
            table.add_column(column, overflow="fold")
        for entry in verified.entries:
            table.add_row(
                str(entry["index"]),
                escape(str(entry["at"])),
                escape(str(entry["op"])),
                escape(_entry_summary(entry)),
            )
        ctx.out.print(table)

    ctx.emit(data, render)
    return ExitCode.OK


def _trade_refs(values: Sequence[str]) -> list[tuple[str, str]]:
    refs = []
    for value in values:
        symbol, sep, trade_id = value.rpartition(":")
        if not sep or not symbol or not trade_id:
            raise UsageError(
                f"--disclose takes SYMBOL:TRADE_ID (e.g. BTC/USDT:12345), not {value!r}"
            )
        refs.append((symbol, trade_id))
    return refs


def cmd_disclose(ctx: Context) -> int:
    """Owner only: reveal one trade with its Merkle proof under a fresh signed report."""
    ref = ctx.session()
    (symbol, trade_id), *_ = _trade_refs([ctx.args.trade])
    with ctx.client(ref.base_url) as client:
        report = client.aggregates(ref.registration.session_id)
        disclosure = client.disclose_trade(
            ref.registration,
            symbol=symbol,
            trade_id=trade_id,
            tree_size=report.payload.get("merkle_tree_size"),
        )
    try:
        trade = verify_disclosure(disclosure, report_payload=report.payload)
    except DisclosureError as exc:
        raise VerificationFailed(f"the disclosure does not verify: {exc.reason}") from None
    if ref.stored is not None:  # a verified report like any other: kept for export
        _check_chain(ref.stored, report.payload)
        ctx.keystore.with_report(
            ref.stored, seq=report.payload["seq"], report_hash=report_hash(report.payload)
        )
        ctx.keystore.add_report(ref.stored.name, report.payload, report.signature)
    output = _opt(ctx.args, "output", None)
    if output is not None:
        _write_new_file(Path(output), json.dumps(disclosure, indent=2, sort_keys=True) + "\n")
    data = {"verified": True, "trade": trade.fields, "index": trade.index,
            "tree_size": trade.tree_size, "disclosure": disclosure}  # fmt: skip
    ctx.emit(
        data,
        lambda: ctx.out.print(
            _table(
                f"Trade {trade.index} of {trade.tree_size}, proven in the signed Merkle root",
                trade.fields,
            )
        ),
    )
    return ExitCode.OK


def _write_new_file(path: Path, text: str) -> None:
    """Write ``text`` to a new file (never overwrite), readable by its owner only."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UsageError(f"{path} exists; refusing to overwrite it") from None
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)


def cmd_export(ctx: Context) -> int:
    """Write a proof bundle: fresh attestation, signed report, log, optional disclosures."""
    ref = ctx.session()
    refs = _trade_refs(ctx.args.disclose or [])
    settings = ctx.settings
    with ctx.client(ref.base_url) as client:
        quote = client.attest()
        report = client.aggregates(ref.registration.session_id)
        if ref.stored is not None:
            _check_chain(ref.stored, report.payload)
        log = client.logs(ref.registration.session_id, trusted_head=_trusted_head(ref.stored))
        disclosures = [
            client.disclose_trade(
                ref.registration,
                symbol=symbol,
                trade_id=trade_id,
                tree_size=report.payload.get("merkle_tree_size"),
            )
            for symbol, trade_id in refs
        ]
    assert quote.nonce is not None  # attest() always sends one
    fresh = {"payload": report.payload, "signature": report.signature}
    chain = [fresh]
    if ref.stored is not None:
        ctx.keystore.with_report(
            ref.stored, seq=report.payload["seq"], report_hash=report_hash(report.payload)
        )
        ctx.keystore.add_report(ref.stored.name, report.payload, report.signature)
        chain = _kept_chain(ctx.keystore.reports(ref.stored.name), fresh)
    bundle = build_bundle(
        document=quote.document,
        nonce=quote.nonce,
        reports=chain,
        pcrs=settings.expected_pcrs or {},
        pcrs_description=str(settings.pcrs_source),
        disclosures=disclosures,
        log=log.body,
    )
    # What the reader will run, run here first: never hand out a bundle that fails.
    verdict = verify_bundle(
        bundle, expected_pcrs=settings.expected_pcrs or {}, root_der=load_root(settings.root)
    )
    if not verdict.ok:
        raise VerificationFailed(f"the bundle does not verify: {verdict.reason}")
    path = Path(ctx.args.output)
    _write_new_file(path, json.dumps(bundle, indent=2, sort_keys=True) + "\n")
    data = {"written": str(path), "verdict": verdict.to_json()}
    ctx.emit(
        data,
        lambda: ctx.out.print(
            f"[green]wrote[/green] {escape(str(path))}: report seq {report.payload.get('seq')}, "
            f"{log.verified.head.size} log entries, {len(disclosures)} disclosed trade(s); "
            "it verifies with `perf-agg verify`"
        ),
    )
    return ExitCode.OK


def _kept_chain(kept: Sequence[Mapping[str, Any]], last: Mapping[str, Any]) -> list[Any]:
    """The kept reports that chain, by seq and hash, up to ``last``: the bundle's claim."""
    by_seq = {r["payload"].get("seq"): r for r in kept}
    chain = [last]
    while True:
        payload = chain[0]["payload"]
        previous = by_seq.get(payload.get("seq", 0) - 1)
        if previous is None or report_hash(previous["payload"]) != payload.get("prev_report_hash"):
            return chain
        chain.insert(0, previous)


def _parse_at(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"--at takes an ISO 8601 time such as 2026-01-31T12:00:00Z, not {value!r}"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def cmd_verify(ctx: Context) -> int:
    """Check a proof bundle offline against your pinned PCRs and root; print the verdict."""
    settings = ctx.settings
    if not settings.expected_pcrs:
        raise UsageError(
            "verify needs the PCRs you trust: --pcrs FILE (the published measurements), "
            "never the ones inside the bundle"
        )
    path = Path(ctx.args.bundle)
    try:
        if path.stat().st_size > MAX_BUNDLE_BYTES:
            raise UsageError(f"{path} is larger than {MAX_BUNDLE_BYTES} bytes")
        bundle = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{path} does not exist") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UsageError(f"{path} is not a JSON file") from None
    verdict = verify_bundle(
        bundle,
        expected_pcrs=settings.expected_pcrs,
        root_der=load_root(settings.root),
        at=_parse_at(_opt(ctx.args, "at", None)),
    )

    def render() -> None:
        table = Table(title=f"Proof bundle {path.name}", title_justify="left")
        for column in ("check", "result", "detail"):
            table.add_column(column, overflow="fold")
        for check in verdict.checks:
            mark = "[green]ok[/green]" if check.ok else "[red]FAILED[/red]"
            table.add_row(escape(check.name), mark, escape(check.detail))
        ctx.out.print(table)
        if verdict.ok and verdict.report is not None:
            claimed = verdict.report
            ctx.out.print(_table("Verified report", {k: claimed.get(k) for k in _REPORT_FIELDS
                                                    if k in claimed}))  # fmt: skip
            ctx.out.print("[bold green]VERIFIED[/bold green]")
        else:
            ctx.out.print(f"[bold red]NOT VERIFIED[/bold red]: {escape(str(verdict.reason))}")

    ctx.emit({**verdict.to_json(), "report": verdict.report}, render)
    return ExitCode.OK if verdict.ok else ExitCode.VERIFICATION_FAILED


# --------------------------------------------------------------------------- parser


def _records_without_action(_ctx: Context) -> int:
    raise UsageError("`perf-agg records` needs an action: seal, unseal or list")


def _common_options() -> argparse.ArgumentParser:
    # SUPPRESS defaults: given before or after the subcommand, the option is seen once.
    common = _Parser(add_help=False)
    group = common.add_argument_group("connection and output (may also follow the subcommand)")
    add = group.add_argument
    add("--config", metavar="FILE", default=argparse.SUPPRESS, help="TOML config file")
    add("--url", metavar="URL", default=argparse.SUPPRESS, help="server, e.g. https://host:3000")
    add(
        "--pcrs",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help='pinned PCRs: JSON {"0": hex, ...} or nitro-cli measurements',
    )
    add(
        "--root",
        metavar="FILE|aws",
        default=argparse.SUPPRESS,
        help="attestation root: PEM/DER file, or 'aws' (built-in AWS Nitro root, the default)",
    )
    add(
        "--ca-file",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="CA bundle for the server's TLS certificate (default: the system's)",
    )
    add(
        "--timeout",
        metavar="SECONDS",
        type=float,
        default=argparse.SUPPRESS,
        help="HTTP timeout per request (default 30)",
    )
    add(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print one JSON document on stdout (messages go to stderr)",
    )
    return common


def _session_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--session",
        metavar="NAME",
        help=f"local session name (default: ${ENV_SESSION}, ${ENV_SESSION_ID}, or the only one)",
    )


def _command(
    subparsers: Any,
    name: str,
    handler: Callable[[Context], int],
    common: argparse.ArgumentParser,
    *,
    aliases: Sequence[str] = (),
    session: bool = True,
) -> argparse.ArgumentParser:
    doc = (handler.__doc__ or "").strip()
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name, aliases=list(aliases), help=doc, description=doc, parents=[common]
    )
    parser.set_defaults(handler=handler)
    if session:
        _session_option(parser)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The ``perf-agg`` argument parser (one ``_command`` entry per subcommand)."""
    common = _common_options()
    parser = _Parser(
        prog="perf-agg",
        description=(
            "Prove trading performance without handing over exchange API keys: register "
            "with an attested perf-aggregator enclave and fetch reports it signed."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
        allow_abbrev=False,
    )
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")

    _command(subparsers, "attest", cmd_attest, common, session=False)

    register = _command(subparsers, "register", cmd_register, common, session=False)
    register.epilog = (
        f"The exchange API key and secret are read from {ENV_API_KEY} and {ENV_API_SECRET} "
        f"({ENV_PASSPHRASE} for a passphrase), or asked for without echo; never from "
        "arguments. The owner key and session id are stored under --name in "
        "$PERF_AGG_HOME/sessions/ (mode 0600). Example: "
        "perf-agg register --exchange binance --label main --wait"
    )
    register.add_argument("--exchange", required=True, help="ccxt id: binance, kraken, coinbase")
    register.add_argument("--label", default="main", help="label stored with the session")
    register.add_argument(
        "--name", help="local name to refer to this session later (default: the label)"
    )
    register.add_argument(
        "--ttl", type=int, default=DEFAULT_TTL, help="session lifetime in seconds (default 1 day)"
    )
    register.add_argument(
        "--ask-passphrase",
        action="store_true",
        help=f"prompt for an API passphrase when {ENV_PASSPHRASE} is not set",
    )
    register.add_argument(
        "--wait", action="store_true", help="wait until the enclave has read the whole history"
    )
    register.add_argument(
        "--wait-timeout",
        type=float,
        default=DEFAULT_WAIT_TIMEOUT,
        metavar="SECONDS",
        help="give up waiting after this long (default 150, exit code 6)",
    )

    _command(subparsers, "status", cmd_status, common, aliases=["aggregates"])
    _command(subparsers, "summary", cmd_summary, common)
    _command(subparsers, "metrics", cmd_metrics, common)

    revoke = _command(subparsers, "revoke", cmd_revoke, common)
    revoke.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    sessions = _command(subparsers, "sessions", cmd_sessions, common, session=False)
    sessions.add_argument(
        "--forget", metavar="NAME", help="delete a stored session here (does not revoke it)"
    )

    records = subparsers.add_parser(
        "records",
        help="sealed records: seal, unseal, list",
        description="Records encrypted to the enclave, sealed under its key; only you unseal.",
    )
    records.set_defaults(handler=_records_without_action)
    record_commands = records.add_subparsers(title="records commands", metavar="ACTION")
    seal = _command(record_commands, "seal", cmd_records_seal, common)
    seal.add_argument("--label", required=True, help="label of the record (1..64 characters)")
    seal.add_argument("--file", metavar="PATH", help="read the record from PATH (default: stdin)")
    unseal = _command(record_commands, "unseal", cmd_records_unseal, common)
    unseal.add_argument("record_id", metavar="RECORD_ID", help="id printed by `records seal`")
    unseal.add_argument(
        "--output", metavar="PATH", help="write the record to a new 0600 file (default: stdout)"
    )
    _command(record_commands, "list", cmd_records_list, common)

    _command(subparsers, "logs", cmd_logs, common)
    disclose = _command(subparsers, "disclose", cmd_disclose, common)
    disclose.add_argument("trade", metavar="SYMBOL:TRADE_ID", help="e.g. BTC/USDT:12345")
    disclose.add_argument("--output", metavar="PATH", help="also write the disclosure JSON here")
    export = _command(subparsers, "export", cmd_export, common)
    export.add_argument("--output", required=True, metavar="PATH", help="bundle file to create")
    export.add_argument(
        "--disclose",
        action="append",
        metavar="SYMBOL:TRADE_ID",
        help="include this trade with its inclusion proof (repeatable)",
    )
    verify = _command(subparsers, "verify", cmd_verify, common, session=False)
    verify.add_argument("bundle", metavar="BUNDLE", help="a file written by `perf-agg export`")
    verify.add_argument(
        "--at",
        metavar="TIME",
        help="check certificate validity at TIME (ISO 8601; default: the attestation's time)",
    )
    return parser


# --------------------------------------------------------------------------- main

_HINTS: Final = {
    "pcr-mismatch": "the enclave's measurements differ from the pinned PCRs: it runs other code",
    "root": "the document does not chain to the pinned root (--root, or `root` in the config)",
    "debug-mode": "the enclave runs in debug mode, where its memory is readable by the host",
    "stale": "the document is too old (check this machine's clock)",
    "future": "the document is from the future (check this machine's clock)",
}


def _failure(error: BaseException) -> tuple[ExitCode, str, str]:
    """(exit code, kind, message) for an error; messages never hold secrets."""
    match error:
        case UsageError() | KeyStoreError():
            return ExitCode.USAGE, "usage", str(error)
        case AttestationFailed():
            hint = _HINTS.get(error.reason or "", "")
            message = f"{error}{'; ' + hint if hint else ''}. Nothing was encrypted or sent."
            return ExitCode.ATTESTATION_FAILED, "attestation_failed", message
        case ServerRejected():
            return ExitCode.SERVER_REJECTED, "server_rejected", str(error)
        case VerificationFailed():
            return ExitCode.VERIFICATION_FAILED, "verification_failed", str(error)
        case Unreachable():
            message = f"{error}; is the server running, and are --url and --ca-file right?"
            return ExitCode.UNREACHABLE, "unreachable", message
        case ExchangeRefused():
            return ExitCode.SERVER_REJECTED, "exchange_refused", str(error)
        case WaitTimedOut():
            return ExitCode.TIMED_OUT, "timed_out", str(error)
        case KeyboardInterrupt():
            return ExitCode.INTERRUPTED, "interrupted", "interrupted"
        case OSError():
            return ExitCode.USAGE, "error", f"{error.strerror or error}: {error.filename or ''}"
        case _:
            return ExitCode.USAGE, "error", str(error)


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Run ``perf-agg``; return the exit code (see :class:`ExitCode`)."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    environment = os.environ if env is None else env
    out = Console(file=sys.stdout, highlight=False)
    # Messages are not wrapped, so that they stay greppable in logs and scripts.
    err = Console(file=sys.stderr, stderr=True, highlight=False, soft_wrap=True)
    want_json = "--json" in arguments
    try:
        refuse_secret_arguments(arguments)
        parser = build_parser()
        try:
            args = parser.parse_args(arguments)
        except SystemExit as exit_:  # --help
            return int(exit_.code or 0)
        handler = getattr(args, "handler", None)
        if handler is None:
            parser.print_help(sys.stderr)
            return ExitCode.USAGE
        want_json = bool(_opt(args, "json", False))
        return int(handler(Context(args, environment, out, err)))
    except (
        UsageError,
        ClientError,
        WaitTimedOut,
        ExchangeRefused,
        ValueError,
        OSError,
        KeyboardInterrupt,
    ) as exc:
        code, kind, message = _failure(exc)
    if want_json:
        sys.stdout.write(
            json.dumps({"error": {"kind": kind, "message": message, "exit_code": int(code)}}) + "\n"
        )
    err.print(f"[red]perf-agg: {kind.replace('_', ' ')}:[/red] {escape(message)}")
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
