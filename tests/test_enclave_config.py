"""Enclave configuration: explicit adapters, fail-closed production mode, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from enclave.config import EnclaveConfig, Mode
from shared.io.transport import VsockAddress

SIM = {"ENCLAVE_TRANSPORT": "tcp-sim", "VSOCK_PORT_MAP": "16:5000=15000,3:8001=15001"}


def test_simulator_defaults() -> None:
    """With only the port map, the enclave runs in simulator mode with the seed's defaults."""
    config = EnclaveConfig.from_env(SIM)
    assert config.mode is Mode.SIMULATOR
    assert config.rpc_address == VsockAddress(cid=16, port=5000)
    assert config.max_ttl_seconds == 604_800
    assert config.min_ttl_seconds == 60
    assert config.enable_pq is True


def test_default_port_map_matches_the_parent() -> None:
    """With no environment the enclave listens where the parent looks by default."""
    config = EnclaveConfig.from_env({})
    assert config.port_map == {
        VsockAddress(cid=16, port=5000): 15000,
        VsockAddress(cid=3, port=8001): 15001,
    }


def test_production_refuses_the_tcp_simulator() -> None:
    """Production mode with the TCP transport is a configuration error, not a fallback."""
    with pytest.raises(ValueError, match="production mode requires ENCLAVE_TRANSPORT=vsock"):
        EnclaveConfig.from_env({**SIM, "ENCLAVE_MODE": "production"})


KEY_ARN = "arn:aws:kms:us-east-1:111122223333:key/00000000-0000-0000-0000-000000000000"


def test_production_with_vsock_is_accepted() -> None:
    """Production + vsock + a pinned KMS key is the Nitro configuration (sealing on)."""
    config = EnclaveConfig.from_env(
        {"ENCLAVE_MODE": "production", "ENCLAVE_TRANSPORT": "vsock", "KMS_KEY_ID": KEY_ARN}
    )
    assert config.mode is Mode.PRODUCTION
    assert config.transport == "vsock"
    assert (config.sealing, config.kms_key_id) == ("kms", KEY_ARN)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ENCLAVE_MODE": "production", "ENCLAVE_TRANSPORT": "vsock"}, "needs KMS_KEY_ID"),
        (
            {"ENCLAVE_MODE": "production", "ENCLAVE_TRANSPORT": "vsock", "SEALING": "off"},
            "production requires SEALING=kms",
        ),
        ({"SEALING": "maybe"}, "SEALING must be"),
        (
            {"ENCLAVE_MODE": "production", "ENCLAVE_TRANSPORT": "vsock", "KMS_KEY_ID": KEY_ARN,
             "KMS_CA_FILE": "/etc/hosts"},
            "KMS_CA_FILE is a simulator setting",
        ),
    ],
)  # fmt: skip
def test_sealing_settings_fail_closed(env: dict[str, str], message: str) -> None:
    """Production cannot run unsealed or trust a test CA for KMS; a bad value is named."""
    with pytest.raises(ValueError, match=message):
        EnclaveConfig.from_env(env)


def test_simulator_defaults_to_no_sealing() -> None:
    """Without SEALING the simulator runs unsealed (the local stack turns it on)."""
    assert EnclaveConfig.from_env({}).sealing == "off"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ENCLAVE_MODE": "auto"}, "ENCLAVE_MODE"),
        ({"ENCLAVE_TRANSPORT": "tcp"}, "ENCLAVE_TRANSPORT"),
        ({"ENCLAVE_TRANSPORT": "vsock"}, "only applies to ENCLAVE_TRANSPORT=tcp-sim"),
        ({"VSOCK_PORT_MAP": "16:5001=15000,3:8001=1"}, "no entry for vsock:16:5000"),
        ({"VSOCK_PORT_MAP": "16:5000=15000"}, "no entry for vsock:3:8001"),
        ({"EGRESS_ALLOWLIST": "api.binance.com"}, "EGRESS_ALLOWLIST"),
        ({"EXCHANGE_CA_FILE": "/no/such/file"}, "EXCHANGE_CA_FILE"),
        ({"MAX_TTL_SECONDS": "ten"}, "MAX_TTL_SECONDS must be an integer"),
        ({"MAX_TTL_SECONDS": "5"}, "MAX_TTL_SECONDS must be between"),
        ({"MIN_TTL_SECONDS": "0"}, "MIN_TTL_SECONDS must be between"),
        ({"MIN_TTL_SECONDS": "86400", "MAX_TTL_SECONDS": "3600"}, "must not exceed"),
        ({"ENABLE_PQ": "yes"}, "ENABLE_PQ"),
    ],
)
def test_invalid_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    """Each invalid value fails at start with a message naming the variable."""
    with pytest.raises(ValueError, match=message):
        EnclaveConfig.from_env({**SIM, **env})


def test_test_ca_is_refused_in_production(tmp_path: Path) -> None:
    """The fake exchanges' CA may only be trusted in simulator mode."""
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    with pytest.raises(ValueError, match="refused in production"):
        EnclaveConfig.from_env(
            {
                "ENCLAVE_MODE": "production",
                "ENCLAVE_TRANSPORT": "vsock",
                "EXCHANGE_CA_FILE": str(ca),
            }
        )
    assert EnclaveConfig.from_env({**SIM, "EXCHANGE_CA_FILE": str(ca)}).exchange_ca_file == ca
