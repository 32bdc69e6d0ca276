"""The enclave process configuration, read once from the environment. Side: enclave.

Only the composition root (``enclave.main``) builds it; nothing else reads the
environment. Every field says what it does and its security note.
"""

from __future__ import annotations

import dataclasses
import enum
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from shared.allowlist import Allowlist, default_allowlist
from shared.io.transport import (
    DEFAULT_EGRESS_VSOCK_PORT,
    PARENT_CID,
    VsockAddress,
    parse_port_map,
)

__all__ = ["DEFAULT_SIM_EGRESS_TCP_PORT", "DEFAULT_SIM_TCP_PORT", "EnclaveConfig", "Mode"]

DEFAULT_SIM_TCP_PORT = 15000
"""TCP port standing in for the enclave's RPC address when VSOCK_PORT_MAP is unset."""
DEFAULT_SIM_EGRESS_TCP_PORT = 15001
"""TCP port standing in for the parent's egress proxy when VSOCK_PORT_MAP is unset."""


class Mode(enum.StrEnum):
    """Production runs on Nitro hardware only; simulator is for dev and tests."""

    PRODUCTION = "production"
    SIMULATOR = "simulator"


@dataclass(frozen=True, slots=True, kw_only=True)
class EnclaveConfig:
    """Validated settings of the enclave process."""

    # ENCLAVE_MODE (default "simulator" for the dev stack). Production refuses every
    # simulator adapter (NSM simulator, TCP transport): fail closed, never guess.
    mode: Mode = Mode.SIMULATOR
    # ENCLAVE_TRANSPORT: "vsock" or "tcp-sim". Chosen explicitly, never probed.
    transport: str = "tcp-sim"
    # VSOCK_PORT_MAP: "CID:PORT=TCPPORT,..." for tcp-sim (loopback only); default
    # "ENCLAVE_CID:ENCLAVE_RPC_PORT=15000", as in the parent.
    port_map: Mapping[VsockAddress, int] = field(default_factory=dict)
    # ENCLAVE_CID (16) / ENCLAVE_RPC_PORT (5000): where the RPC server listens.
    cid: int = 16
    rpc_port: int = 5000
    # STATE_DIR (.run): simulator only, where the NSM simulator keeps its root key
    # and writes its root certificate for clients to pin. Unused in production.
    state_dir: Path = Path(".run")
    # MAX_TTL_SECONDS (604800 = 7 days, the seed default): longest session lifetime a
    # client may ask for. Credentials are forgotten at expiry.
    max_ttl_seconds: int = 604_800
    # MIN_TTL_SECONDS (60): shortest session lifetime. Lowered only by tests that
    # watch expiry happen; production keeps the default.
    min_ttl_seconds: int = 60
    # PENDING_TTL_SECONDS (60): a submitted session not confirmed by the parent (its
    # database write failed) is discarded after this long.
    pending_ttl_seconds: int = 60
    # MAX_ENVELOPE_AGE_SECONDS (600): when metadata carries issued_at, envelopes older
    # (or further in the future) than this are refused, limiting replays.
    max_envelope_age_seconds: int = 600
    # ENABLE_PQ (1): also generate the ML-KEM-768+X25519 hybrid envelope key.
    enable_pq: bool = True
    # PURGE_INTERVAL_SECONDS (5): how often expired sessions are wiped from memory.
    purge_interval_seconds: float = 5.0
    # LOG_LEVEL (INFO). Logs never carry secrets at any level.
    log_level: str = "INFO"
    # EGRESS_ALLOWLIST (default: api.binance.com:443, api.kraken.com:443,
    # api.coinbase.com:443): hosts the enclave's own CONNECT proxy lets through.
    # Security: the user's control. In production it comes from the measured image
    # (its environment is part of the EIF), never from the parent at run time.
    egress_allowlist: Allowlist = field(default_factory=default_allowlist)
    # EGRESS_VSOCK_PORT (8001): the parent's egress proxy, dialled at CID 3.
    egress_vsock_port: int = DEFAULT_EGRESS_VSOCK_PORT
    # ENCLAVE_PROXY_PORT (0 = any free port): loopback port of the enclave-local
    # CONNECT proxy that the exchange clients use.
    proxy_port: int = 0
    # EXCHANGE_CA_FILE (simulator only, default unset): an extra CA trusted for exchange
    # TLS (the fake exchanges' test CA). Security: refused in production, where only
    # the CA bundle baked into the image is trusted.
    exchange_ca_file: Path | None = None
    # SEALING (production: kms, simulator: off): "kms" seals the identity and every
    # session under an AWS KMS data key released only to this measurement, so restarts
    # and replicas lose nothing; the enclave then serves nothing until unlocked.
    # Security: production refuses "off" (sessions would die with the process).
    sealing: str = "off"
    # KMS_KEY_ID (required with SEALING=kms): the only key the enclave unlocks with,
    # pinned in the measured image (a full key ARN in production) so a parent cannot
    # point it at a key in another account.
    kms_key_id: str | None = None
    # KMS_CA_FILE (simulator only, default unset): the KMS simulator's test CA. Security:
    # refused in production, where KMS TLS is verified against the image's CA bundle.
    kms_ca_file: Path | None = None

    @property
    def egress_address(self) -> VsockAddress:
        """The parent's egress proxy as the enclave dials it."""
        return VsockAddress(cid=PARENT_CID, port=self.egress_vsock_port)

    @property
    def rpc_address(self) -> VsockAddress:
        """The vsock address the RPC server listens on."""
        return VsockAddress(cid=self.cid, port=self.rpc_port)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> EnclaveConfig:
        """Build and validate from environment variables; ValueError names the bad one."""
        env = os.environ if environ is None else environ

        def integer(name: str, default: int, low: int, high: int) -> int:
            raw = env.get(name)
            if raw is None or raw == "":
                return default
            try:
                value = int(raw)
            except ValueError:
                raise ValueError(f"{name} must be an integer") from None
            if not low <= value <= high:
                raise ValueError(f"{name} must be between {low} and {high}")
            return value

        try:
            mode = Mode(env.get("ENCLAVE_MODE", Mode.SIMULATOR.value))
        except ValueError:
            raise ValueError("ENCLAVE_MODE must be 'production' or 'simulator'") from None
        transport = env.get("ENCLAVE_TRANSPORT", "tcp-sim")
        if transport not in ("vsock", "tcp-sim"):
            raise ValueError("ENCLAVE_TRANSPORT must be 'vsock' or 'tcp-sim'")
        if mode is Mode.PRODUCTION and transport != "vsock":
            raise ValueError("production mode requires ENCLAVE_TRANSPORT=vsock")
        port_map = parse_port_map(env.get("VSOCK_PORT_MAP", ""))
        if transport == "vsock" and port_map:
            raise ValueError("VSOCK_PORT_MAP only applies to ENCLAVE_TRANSPORT=tcp-sim")
        enable_pq = env.get("ENABLE_PQ", "1")
        if enable_pq not in ("0", "1"):
            raise ValueError("ENABLE_PQ must be 0 or 1")
        config = cls(
            mode=mode,
            transport=transport,
            port_map=port_map,
            cid=integer("ENCLAVE_CID", 16, 3, 0xFFFFFFFE),
            rpc_port=integer("ENCLAVE_RPC_PORT", 5000, 1, 0xFFFFFFFE),
            state_dir=Path(env.get("STATE_DIR", ".run")),
            max_ttl_seconds=integer("MAX_TTL_SECONDS", 604_800, 60, 366 * 86_400),
            min_ttl_seconds=integer("MIN_TTL_SECONDS", 60, 1, 86_400),
            pending_ttl_seconds=integer("PENDING_TTL_SECONDS", 60, 1, 3600),
            max_envelope_age_seconds=integer("MAX_ENVELOPE_AGE_SECONDS", 600, 10, 86_400),
            enable_pq=enable_pq == "1",
            purge_interval_seconds=float(integer("PURGE_INTERVAL_SECONDS", 5, 1, 3600)),
            log_level=env.get("LOG_LEVEL", "INFO"),
            egress_vsock_port=integer(
                "EGRESS_VSOCK_PORT", DEFAULT_EGRESS_VSOCK_PORT, 1, 0xFFFFFFFE
            ),
            proxy_port=integer("ENCLAVE_PROXY_PORT", 0, 0, 65535),
            egress_allowlist=_allowlist(env.get("EGRESS_ALLOWLIST")),
            exchange_ca_file=_exchange_ca(env.get("EXCHANGE_CA_FILE"), mode),
            sealing=_sealing(env.get("SEALING"), mode),
            kms_key_id=env.get("KMS_KEY_ID") or None,
            kms_ca_file=_exchange_ca(env.get("KMS_CA_FILE"), mode, name="KMS_CA_FILE"),
        )
        if config.sealing == "kms" and not config.kms_key_id:
            raise ValueError("SEALING=kms needs KMS_KEY_ID")
        if config.min_ttl_seconds > config.max_ttl_seconds:
            raise ValueError("MIN_TTL_SECONDS must not exceed MAX_TTL_SECONDS")
        if transport == "tcp-sim" and not port_map:
            # The same default the parent uses, so `python -m enclave` and
            # `python -m parent run` find each other with no environment at all.
            port_map = {
                config.rpc_address: DEFAULT_SIM_TCP_PORT,
                config.egress_address: DEFAULT_SIM_EGRESS_TCP_PORT,
            }
            config = dataclasses.replace(config, port_map=port_map)
        if transport == "tcp-sim":
            for address in (config.rpc_address, config.egress_address):
                if address not in port_map:
                    raise ValueError(f"VSOCK_PORT_MAP has no entry for {address}")
        return config


def _allowlist(value: str | None) -> Allowlist:
    if value is None or not value.strip():
        return default_allowlist()
    try:
        return Allowlist.parse(value)
    except ValueError as exc:
        raise ValueError(f"EGRESS_ALLOWLIST: {exc}") from None


def _exchange_ca(value: str | None, mode: Mode, *, name: str = "EXCHANGE_CA_FILE") -> Path | None:
    if value is None or not value.strip():
        return None
    if mode is Mode.PRODUCTION:
        raise ValueError(f"{name} is a simulator setting; refused in production")
    path = Path(value)
    if not path.is_file():
        raise ValueError(f"{name} does not name a file")
    return path


def _sealing(value: str | None, mode: Mode) -> str:
    sealing = value or ("kms" if mode is Mode.PRODUCTION else "off")
    if sealing not in ("kms", "off"):
        raise ValueError("SEALING must be 'kms' or 'off'")
    if mode is Mode.PRODUCTION and sealing != "kms":
        raise ValueError("production requires SEALING=kms: sessions must survive a restart")
    return sealing
