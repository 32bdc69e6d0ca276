"""The parent process configuration, read once from the environment. Side: parent.

``ParentConfig.from_env`` is the only place in the parent that reads environment
variables; the composition root (``parent.main``) builds one config and hands its
fields to whatever needs them. Validation happens here, at start, and every refusal
is a ``ConfigError`` naming the variable (never echoing a value that could be a
secret, such as a DATABASE_URL with a password).

Variable names follow the seeds (000/001: ENCLAVE_PORT is the HTTPS port,
RATE_LIMIT_WINDOW is in milliseconds).
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import os
import re
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from psycopg import ProgrammingError
from psycopg.conninfo import conninfo_to_dict

from parent.egress import parse_host_overrides
from shared.allowlist import Allowlist, default_allowlist
from shared.errors import PerfAggError
from shared.io.transport import (
    DEFAULT_EGRESS_VSOCK_PORT,
    PARENT_CID,
    VsockAddress,
    parse_port_map,
)

__all__ = [
    "DEFAULT_SIM_EGRESS_TCP_PORT",
    "DEFAULT_SIM_TCP_PORT",
    "ConfigError",
    "Mode",
    "ParentConfig",
]

DEFAULT_SIM_TCP_PORT = 15000
DEFAULT_SIM_EGRESS_TCP_PORT = 15001
"""TCP port standing in for the enclave's RPC address when VSOCK_PORT_MAP is unset (tcp-sim)."""

_LOG_LEVELS = frozenset({"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"})
# scheme://host[:port], nothing else: an Origin header never carries a path.
_ORIGIN = re.compile(r"\A(https?)://([a-z0-9.-]+|\[[0-9a-f:.]+\])(:[0-9]{1,5})?\Z")


class ConfigError(PerfAggError, ValueError):
    """A configuration value is missing or invalid; the message names the variable."""


class Mode(enum.StrEnum):
    """Production refuses every development shortcut; development is the default."""

    DEVELOPMENT = "development"
    PRODUCTION = "production"


@dataclass(frozen=True, slots=True, kw_only=True)
class ParentConfig:
    """Validated settings of the parent process (one per process)."""

    # MODE (default "development"). Production refuses the tcp-sim transport and
    # generated TLS certificates. Security: fail closed, nothing is guessed from the host.
    mode: Mode = Mode.DEVELOPMENT
    # HOST (default 127.0.0.1): IP address the HTTPS API binds to. Security: loopback
    # by default; exposing the API is an explicit decision (an IP literal, no names).
    host: str = "127.0.0.1"
    # ENCLAVE_PORT (default 3000, the seed's name): TCP port of the HTTPS API.
    port: int = 3000
    # DATABASE_URL (default unset = embedded PostgreSQL under STATE_DIR/pgdata). The
    # app_service role's conninfo; migrations are run separately with an admin URL.
    # Security: may hold a password, so it is never logged or echoed in errors.
    database_url: str | None = field(default=None, repr=False)
    # MAX_TTL_SECONDS (default 604800 = 7 days): longest session a client may ask for.
    # Security: bounds how long credential ciphertext is kept.
    max_ttl_seconds: int = 604_800
    # MIN_TTL_SECONDS (default 60): shortest session a client may ask for; the same
    # variable the enclave reads. Lowered only by tests that watch expiry happen.
    min_ttl_seconds: int = 60
    # RATE_LIMIT_MAX (default 100) requests per RATE_LIMIT_WINDOW per client IP.
    rate_limit_max: int = 100
    # RATE_LIMIT_WINDOW (default 900000 ms = 15 min, in milliseconds as in the seed).
    rate_limit_window_ms: int = 900_000
    # ALLOWED_ORIGINS (default empty = no cross-origin access): comma-separated origins
    # (scheme://host[:port]). Security: '*' and 'null' are refused; production
    # requires https origins.
    allowed_origins: frozenset[str] = frozenset()
    # STATE_DIR (default .run): dev TLS files (tls/) and the embedded PostgreSQL
    # (pgdata/). Security: created 0700.
    state_dir: Path = Path(".run")
    # TLS_CERT_FILE / TLS_KEY_FILE (default unset = generate a dev CA and certificate
    # in STATE_DIR/tls). Security: required in production; both or neither.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # TRANSPORT (default "tcp-sim"): "vsock" (Nitro hosts) or "tcp-sim" (vsock
    # simulated over 127.0.0.1). Security: chosen explicitly, never probed;
    # production refuses tcp-sim.
    transport: Literal["vsock", "tcp-sim"] = "tcp-sim"
    # VSOCK_PORT_MAP (tcp-sim only; default "ENCLAVE_CID:ENCLAVE_RPC_PORT=15000"):
    # "CID:PORT=TCPPORT,...", the same table the enclave process is given. Must map
    # the enclave's RPC address. Security: the simulator only ever uses 127.0.0.1.
    vsock_port_map: Mapping[VsockAddress, int] = field(default_factory=dict)
    # ENCLAVE_CID (default 16): the enclave's vsock context id (>= 4; 0-3 are reserved
    # for the hypervisor, loopback, host and the parent).
    enclave_cid: int = 16
    # ENCLAVE_RPC_PORT (default 5000): vsock port of the enclave's RPC server.
    enclave_rpc_port: int = 5000
    # MAX_BODY_BYTES (default 65536): largest request body accepted (413 above).
    # Security: bounds memory per request; the largest envelope is about 23 KB.
    max_body_bytes: int = 65_536
    # PURGE_INTERVAL_SECONDS (default 60): how often expired sessions are deleted.
    # Security: upper bound on how long expired ciphertext outlives its TTL.
    purge_interval_seconds: int = 60
    # LOG_LEVEL (default INFO). Logs never carry bodies, paths or session ids.
    log_level: str = "INFO"
    # EGRESS_ALLOWLIST (default: api.binance.com:443, api.kraken.com:443,
    # api.coinbase.com:443): the hosts the enclave may reach through the parent's egress
    # proxy. Security: the operator's control; the enclave enforces its own list too.
    egress_allowlist: Allowlist = field(default_factory=default_allowlist)
    # EGRESS_VSOCK_PORT (default 8001): vsock port the egress proxy listens on.
    egress_vsock_port: int = DEFAULT_EGRESS_VSOCK_PORT
    # EGRESS_HOST_OVERRIDES (development only, default empty): "host:port=ip:port,...";
    # where the egress connects for an allow-listed name (fake exchanges on loopback).
    # The enclave still verifies TLS for the real name. Security: refused in production.
    egress_host_overrides: Mapping[tuple[str, int], tuple[str, int]] = field(default_factory=dict)
    # SEALING (default "kms"): "kms" = the enclave seals its identity and every session's
    # state under a KMS data key; the parent unlocks a (re)started enclave, replays the
    # stored state and checkpoints it (parent/enclave_supervisor.py). "off" = no sealing:
    # an enclave restart loses every session. Security: "off" is refused in production;
    # with "kms" no session is served until the enclave is unlocked and restored, and a
    # KMS refusal keeps the API at 503 rather than running unsealed (fail closed).
    sealing: Literal["kms", "off"] = "kms"
    # KMS_KEY_ID (required with SEALING=kms): id, ARN or alias of the KMS key whose policy
    # releases data keys only to the measured enclave (PCR0). Security: public; the key
    # policy, not this value, protects the key. Changing it orphans the stored identity.
    kms_key_id: str | None = None
    # AWS_REGION (required with SEALING=kms): the KMS key's region, handed to the enclave.
    aws_region: str | None = None
    # AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN (development only;
    # default unset = boto3's default credential chain, i.e. the instance role through
    # IMDS on EC2): the credentials the parent hands the enclave for its KMS calls
    # (the KMS simulator's in development). Security: never logged, not in the repr;
    # refused in production, where short-lived role credentials are fetched afresh for
    # every unlock. They grant only what the key policy allows, and KMS answers only an
    # attested enclave.
    aws_access_key_id: str | None = field(default=None, repr=False)
    aws_secret_access_key: str | None = field(default=None, repr=False)
    aws_session_token: str | None = field(default=None, repr=False)
    # CHECKPOINT_INTERVAL_SECONDS (default 10): how often the parent asks the enclave for
    # the sealed states of sessions that changed and stores them. Security: bounds the
    # polling progress an enclave crash can lose (a report's state is stored with it).
    checkpoint_interval_seconds: int = 10
    # REPLICA_ID (default: this host's name + "-" + 8 random hex digits, new at each
    # start): the name this parent holds session leases under in the shared database
    # (parent/leases.py). Must differ between the parents sharing one database; the
    # random default guarantees it. Security: public (the operator sees the leases).
    replica_id: str = field(default_factory=lambda: _default_replica_id())
    # REPLICA_URL (default https://HOST:ENCLAVE_PORT, the host's name when HOST is a
    # wildcard address): how the other parents reach this one over HTTPS to forward
    # requests for sessions whose lease it holds. Security: TLS is verified against
    # REPLICA_CA_FILE; forwarded requests carry the deployment's replica secret.
    replica_url: str = ""
    # REPLICA_CA_FILE (default: the dev CA in STATE_DIR/tls when certificates are
    # generated, else the system trust store): the CA the other parents' certificates
    # are verified against when forwarding. Security: never unverified TLS.
    replica_ca_file: Path | None = None
    # LEASE_SECONDS (default 15; 1..600): how long a session lease lasts without renewal.
    # Renewals and takeovers run every LEASE_SECONDS/3; a dead replica's sessions are
    # taken over within one lease period plus one sweep. Security: shorter means faster
    # failover and more database writes; one replica polls and writes each session.
    lease_seconds: int = 15

    @property
    def egress_address(self) -> VsockAddress:
        """Where the egress proxy listens: (parent CID, port) as the enclave dials it."""
        return VsockAddress(cid=PARENT_CID, port=self.egress_vsock_port)

    @property
    def enclave_address(self) -> VsockAddress:
        """The vsock address of the enclave's RPC server."""
        return VsockAddress(cid=self.enclave_cid, port=self.enclave_rpc_port)

    @property
    def rate_limit_window_seconds(self) -> float:
        """RATE_LIMIT_WINDOW in seconds."""
        return self.rate_limit_window_ms / 1000

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ParentConfig:
        """Build and validate from environment variables; ``ConfigError`` names the bad one."""
        env = os.environ if environ is None else environ

        def text(name: str) -> str | None:
            raw = env.get(name)
            return None if raw is None or raw.strip() == "" else raw.strip()

        def integer(name: str, default: int, low: int, high: int) -> int:
            raw = text(name)
            if raw is None:
                return default
            if not re.fullmatch(r"[0-9]+", raw):
                raise ConfigError(f"{name} must be a whole number from {low} to {high}")
            value = int(raw)
            if not low <= value <= high:
                raise ConfigError(f"{name} must be from {low} to {high}")
            return value

        try:
            mode = Mode(text("MODE") or Mode.DEVELOPMENT.value)
        except ValueError:
            raise ConfigError("MODE must be 'development' or 'production'") from None
        production = mode is Mode.PRODUCTION

        transport = text("TRANSPORT") or "tcp-sim"
        if transport not in ("vsock", "tcp-sim"):
            raise ConfigError("TRANSPORT must be 'vsock' or 'tcp-sim'")
        if production and transport != "vsock":
            raise ConfigError("MODE=production refuses TRANSPORT=tcp-sim; set TRANSPORT=vsock")
        try:
            port_map = parse_port_map(text("VSOCK_PORT_MAP") or "")
        except ValueError as exc:
            raise ConfigError(f"VSOCK_PORT_MAP: {exc}") from None
        if transport == "vsock" and port_map:
            raise ConfigError("VSOCK_PORT_MAP only applies to TRANSPORT=tcp-sim")

        cert, key = text("TLS_CERT_FILE"), text("TLS_KEY_FILE")
        if (cert is None) != (key is None):
            raise ConfigError("TLS_CERT_FILE and TLS_KEY_FILE must be set together")
        if production and cert is None:
            raise ConfigError(
                "MODE=production refuses generated certificates; set TLS_CERT_FILE and TLS_KEY_FILE"
            )

        sealing = text("SEALING") or "kms"
        if sealing not in ("kms", "off"):
            raise ConfigError("SEALING must be 'kms' or 'off'")
        if production and sealing == "off":
            raise ConfigError("MODE=production refuses SEALING=off; set SEALING=kms and KMS_KEY_ID")
        kms_key_id = _kms_key_id(text("KMS_KEY_ID"))
        aws_region = _aws_region(text("AWS_REGION"))
        if sealing == "kms" and kms_key_id is None:
            raise ConfigError(
                "SEALING=kms needs KMS_KEY_ID (SEALING=off is allowed in development only)"
            )
        if sealing == "kms" and aws_region is None:
            raise ConfigError("SEALING=kms needs AWS_REGION (the KMS key's region)")
        access_key_id, secret_access_key, session_token = _aws_credentials(
            text("AWS_ACCESS_KEY_ID"),
            text("AWS_SECRET_ACCESS_KEY"),
            text("AWS_SESSION_TOKEN"),
            production=production,
        )

        config = cls(
            mode=mode,
            host=_host(text("HOST") or "127.0.0.1"),
            port=integer("ENCLAVE_PORT", 3000, 1, 65535),
            database_url=_database_url(text("DATABASE_URL")),
            max_ttl_seconds=integer("MAX_TTL_SECONDS", 604_800, 1, 366 * 86_400),
            min_ttl_seconds=integer("MIN_TTL_SECONDS", 60, 1, 86_400),
            rate_limit_max=integer("RATE_LIMIT_MAX", 100, 1, 1_000_000),
            rate_limit_window_ms=integer("RATE_LIMIT_WINDOW", 900_000, 1000, 86_400_000),
            allowed_origins=_origins(text("ALLOWED_ORIGINS") or "", production=production),
            state_dir=Path(text("STATE_DIR") or ".run"),
            tls_cert_file=None if cert is None else Path(cert),
            tls_key_file=None if key is None else Path(key),
            transport="vsock" if transport == "vsock" else "tcp-sim",
            vsock_port_map=port_map,
            enclave_cid=integer("ENCLAVE_CID", 16, 4, 0xFFFFFFFE),
            enclave_rpc_port=integer("ENCLAVE_RPC_PORT", 5000, 1, 0xFFFFFFFE),
            max_body_bytes=integer("MAX_BODY_BYTES", 65_536, 4096, 8 * 1024 * 1024),
            purge_interval_seconds=integer("PURGE_INTERVAL_SECONDS", 60, 1, 86_400),
            log_level=_log_level(text("LOG_LEVEL") or "INFO"),
            egress_vsock_port=integer(
                "EGRESS_VSOCK_PORT", DEFAULT_EGRESS_VSOCK_PORT, 1, 0xFFFFFFFE
            ),
            egress_allowlist=_allowlist(text("EGRESS_ALLOWLIST")),
            egress_host_overrides=_overrides(text("EGRESS_HOST_OVERRIDES"), production=production),
            sealing="kms" if sealing == "kms" else "off",
            kms_key_id=kms_key_id,
            aws_region=aws_region,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            aws_session_token=session_token,
            checkpoint_interval_seconds=integer("CHECKPOINT_INTERVAL_SECONDS", 10, 1, 3600),
            replica_id=_replica_id(text("REPLICA_ID")),
            replica_ca_file=_optional_path(text("REPLICA_CA_FILE")),
            lease_seconds=integer("LEASE_SECONDS", 15, 1, 600),
        )
        config = dataclasses.replace(
            config,
            replica_url=_replica_url(text("REPLICA_URL"), host=config.host, port=config.port),
        )
        if config.replica_ca_file is None and config.tls_cert_file is None:
            # Generated certificates: the other parents' certificates come from the
            # same dev CA (they share STATE_DIR in the local stack).
            config = dataclasses.replace(
                config, replica_ca_file=config.state_dir / "tls" / "ca.pem"
            )
        for target in config.egress_host_overrides:
            if not config.egress_allowlist.is_allowed(*target):
                raise ConfigError(
                    f"EGRESS_HOST_OVERRIDES names {target[0]}:{target[1]}, "
                    "which EGRESS_ALLOWLIST does not allow"
                )
        if config.min_ttl_seconds > config.max_ttl_seconds:
            raise ConfigError("MIN_TTL_SECONDS must not exceed MAX_TTL_SECONDS")
        if config.transport == "tcp-sim":
            if not port_map:
                config = dataclasses.replace(
                    config,
                    vsock_port_map={
                        config.enclave_address: DEFAULT_SIM_TCP_PORT,
                        config.egress_address: DEFAULT_SIM_EGRESS_TCP_PORT,
                    },
                )
            for name, address in (
                ("enclave", config.enclave_address),
                ("egress", config.egress_address),
            ):
                if address not in config.vsock_port_map:
                    raise ConfigError(
                        f"VSOCK_PORT_MAP has no entry for the {name} address {address}"
                    )
        return config


_REPLICA_ID = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._:-]{0,127}\Z")


def _optional_path(value: str | None) -> Path | None:
    return None if value is None else Path(value)


def _default_replica_id() -> str:
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:100] or "parent"
    return f"{host}-{secrets.token_hex(4)}"


def _replica_id(value: str | None) -> str:
    if value is None:
        return _default_replica_id()
    if not _REPLICA_ID.match(value):
        raise ConfigError("REPLICA_ID must be 1..128 of A-Z a-z 0-9 . _ : - (no spaces)")
    return value


def _replica_url(value: str | None, *, host: str, port: int) -> str:
    if value is None:
        address = ipaddress.ip_address(host)
        if address.is_unspecified:
            name = socket.gethostname()
        else:
            name = f"[{address}]" if address.version == 6 else str(address)
        return f"https://{name}:{port}"
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ConfigError("REPLICA_URL must be https://host[:port]") from None
    if (
        parts.scheme != "https"
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username is not None
        or len(value) > 512
        or not value.isprintable()
        or " " in value
    ):
        raise ConfigError("REPLICA_URL must be https://host[:port] (no path, no credentials)")
    return value.rstrip("/")


def _allowlist(value: str | None) -> Allowlist:
    if value is None:
        return default_allowlist()
    try:
        return Allowlist.parse(value)
    except ValueError as exc:
        raise ConfigError(f"EGRESS_ALLOWLIST: {exc}") from None


def _overrides(value: str | None, *, production: bool) -> dict[tuple[str, int], tuple[str, int]]:
    if value is None:
        return {}
    if production:
        raise ConfigError("EGRESS_HOST_OVERRIDES is a development setting; refused in production")
    try:
        return parse_host_overrides(value)
    except ValueError as exc:
        raise ConfigError(f"EGRESS_HOST_OVERRIDES: {exc}") from None


# KMS KeyId forms: key id (uuid or mrk-...), key ARN, alias name or alias ARN (KMS API
# reference, "KeyId"); at most 2048 characters.
_KMS_KEY_ID = re.compile(r"\A[A-Za-z0-9:/_.+=@-]{1,2048}\Z")
_AWS_REGION = re.compile(r"\A[a-z]{2}(-[a-z0-9]+)+\Z")
# Printable ASCII without spaces: access key ids, secrets and session tokens all are.
_AWS_TOKEN = re.compile(r"\A[!-~]+\Z")


def _kms_key_id(value: str | None) -> str | None:
    if value is not None and not _KMS_KEY_ID.match(value):
        raise ConfigError("KMS_KEY_ID must be a KMS key id, key ARN, alias or alias ARN")
    return value


def _aws_region(value: str | None) -> str | None:
    if value is not None and (len(value) > 32 or not _AWS_REGION.match(value)):
        raise ConfigError("AWS_REGION must be an AWS region name (e.g. eu-west-1)")
    return value


def _aws_credentials(
    access_key_id: str | None,
    secret_access_key: str | None,
    session_token: str | None,
    *,
    production: bool,
) -> tuple[str | None, str | None, str | None]:
    values = {
        "AWS_ACCESS_KEY_ID": access_key_id,
        "AWS_SECRET_ACCESS_KEY": secret_access_key,
        "AWS_SESSION_TOKEN": session_token,
    }
    given = [name for name, value in values.items() if value is not None]
    if not given:
        return None, None, None
    if production:
        raise ConfigError(
            f"MODE=production takes AWS credentials from the instance role; {given[0]} is refused"
        )
    if access_key_id is None or secret_access_key is None:
        raise ConfigError("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set together")
    # Values are never echoed: the secret and the token are credentials.
    for name, value, limit in (
        ("AWS_ACCESS_KEY_ID", access_key_id, 128),
        ("AWS_SECRET_ACCESS_KEY", secret_access_key, 256),
        ("AWS_SESSION_TOKEN", session_token, 8192),
    ):
        if value is not None and (len(value) > limit or not _AWS_TOKEN.match(value)):
            raise ConfigError(f"{name} must be 1..{limit} printable characters without spaces")
    return access_key_id, secret_access_key, session_token


def _host(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ConfigError("HOST must be an IP address (e.g. 127.0.0.1)") from None


def _database_url(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        conninfo_to_dict(value)
    except ProgrammingError:
        # The value is not echoed: it may carry a password.
        raise ConfigError("DATABASE_URL is not a valid PostgreSQL URL or conninfo") from None
    return value


def _origins(value: str, *, production: bool) -> frozenset[str]:
    origins: set[str] = set()
    for item in filter(None, (part.strip() for part in value.split(","))):
        if item == "*":
            # A wildcard would let any web page drive the API from a victim's browser.
            raise ConfigError("ALLOWED_ORIGINS must list origins; '*' is refused")
        lowered = item.lower()
        match = _ORIGIN.match(lowered)
        if match is None:
            raise ConfigError(
                f"ALLOWED_ORIGINS entry {item!r} is not an origin (scheme://host[:port])"
            )
        port = int(match.group(3)[1:]) if match.group(3) else None
        if port is not None and not 1 <= port <= 65535:
            raise ConfigError(f"ALLOWED_ORIGINS entry {item!r} has a port out of range")
        if production and match.group(1) != "https":
            raise ConfigError(f"ALLOWED_ORIGINS entry {item!r}: production requires https")
        origins.add(lowered)
    return frozenset(origins)


def _log_level(value: str) -> str:
    level = value.upper()
    if level not in _LOG_LEVELS:
        raise ConfigError(f"LOG_LEVEL must be one of {', '.join(sorted(_LOG_LEVELS))}")
    return level
