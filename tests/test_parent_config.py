"""The parent's configuration: defaults, validation at start, production refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from parent.config import (
    DEFAULT_SIM_EGRESS_TCP_PORT,
    DEFAULT_SIM_TCP_PORT,
    ConfigError,
    Mode,
    ParentConfig,
)
from shared.io.transport import VsockAddress

PRODUCTION = {
    "MODE": "production",
    "TRANSPORT": "vsock",
    "TLS_CERT_FILE": "/etc/pa/cert.pem",
    "TLS_KEY_FILE": "/etc/pa/key.pem",
    "KMS_KEY_ID": "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
    "AWS_REGION": "eu-west-1",
}
# Development without KMS: what the tests that do not exercise sealing run with.
DEV = {"SEALING": "off"}


def test_defaults_follow_the_seed() -> None:
    """An empty environment gives the seed's defaults and a loopback-only dev setup."""
    config = ParentConfig.from_env(DEV)
    assert config.mode is Mode.DEVELOPMENT
    assert config.host == "127.0.0.1"
    assert config.port == 3000
    assert config.database_url is None
    assert config.max_ttl_seconds == 604_800
    assert config.min_ttl_seconds == 60
    assert config.rate_limit_max == 100
    assert config.rate_limit_window_ms == 900_000
    assert config.rate_limit_window_seconds == 900.0
    assert config.allowed_origins == frozenset()
    assert config.state_dir == Path(".run")
    assert config.tls_cert_file is None and config.tls_key_file is None
    assert config.transport == "tcp-sim"
    assert config.enclave_address == VsockAddress(cid=16, port=5000)
    assert config.vsock_port_map == {
        VsockAddress(cid=16, port=5000): DEFAULT_SIM_TCP_PORT,
        VsockAddress(cid=3, port=8001): DEFAULT_SIM_EGRESS_TCP_PORT,
    }
    assert config.egress_allowlist.is_allowed("api.binance.com", 443)
    assert not config.egress_allowlist.is_allowed("example.com", 443)
    assert config.egress_host_overrides == {}
    assert config.max_body_bytes == 65_536
    assert config.purge_interval_seconds == 60
    assert config.log_level == "INFO"
    assert config.sealing == "off"
    assert config.checkpoint_interval_seconds == 10
    assert config.kms_key_id is None and config.aws_access_key_id is None


def test_values_are_read_from_the_environment() -> None:
    """Every variable is read and normalised (origins lowercased, levels uppercased)."""
    config = ParentConfig.from_env(
        {
            **DEV,
            "ENCLAVE_PORT": "8443",
            "HOST": "::1",
            "DATABASE_URL": "postgresql://app_service:pw@db.internal:5432/pa",
            "MAX_TTL_SECONDS": "3600",
            "RATE_LIMIT_MAX": "5",
            "RATE_LIMIT_WINDOW": "60000",
            "ALLOWED_ORIGINS": "https://App.example.com, http://localhost:5173",
            "STATE_DIR": "/tmp/pa",
            "VSOCK_PORT_MAP": "17:6000=16000,3:8001=16001",
            "ENCLAVE_CID": "17",
            "ENCLAVE_RPC_PORT": "6000",
            "MAX_BODY_BYTES": "32768",
            "PURGE_INTERVAL_SECONDS": "5",
            "LOG_LEVEL": "debug",
        }
    )
    assert config.port == 8443
    assert config.host == "::1"
    assert config.max_ttl_seconds == 3600
    assert config.rate_limit_window_seconds == 60.0
    assert config.allowed_origins == {"https://app.example.com", "http://localhost:5173"}
    assert config.vsock_port_map[VsockAddress(cid=17, port=6000)] == 16000
    assert config.log_level == "DEBUG"


def test_database_url_is_not_in_the_repr() -> None:
    """DATABASE_URL may hold a password, so the config's repr never shows it."""
    config = ParentConfig.from_env({**DEV, "DATABASE_URL": "postgresql://u:hunter2-secret@h/db"})
    assert "hunter2-secret" not in repr(config)


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"ENCLAVE_PORT": "0"}, "ENCLAVE_PORT"),
        ({"ENCLAVE_PORT": "70000"}, "ENCLAVE_PORT"),
        ({"ENCLAVE_PORT": "3k"}, "ENCLAVE_PORT"),
        ({"HOST": "example.com"}, "HOST"),
        ({"MAX_TTL_SECONDS": "59"}, "MIN_TTL_SECONDS must not exceed MAX_TTL_SECONDS"),
        ({"MAX_TTL_SECONDS": "-1"}, "MAX_TTL_SECONDS"),
        ({"MIN_TTL_SECONDS": "0"}, "MIN_TTL_SECONDS"),
        ({"RATE_LIMIT_MAX": "0"}, "RATE_LIMIT_MAX"),
        ({"RATE_LIMIT_WINDOW": "10"}, "RATE_LIMIT_WINDOW"),
        ({"ALLOWED_ORIGINS": "https://ok.example, *"}, "ALLOWED_ORIGINS"),
        ({"ALLOWED_ORIGINS": "null"}, "ALLOWED_ORIGINS"),
        ({"ALLOWED_ORIGINS": "https://example.com/path"}, "ALLOWED_ORIGINS"),
        ({"ALLOWED_ORIGINS": "ftp://example.com"}, "ALLOWED_ORIGINS"),
        ({"ALLOWED_ORIGINS": "https://example.com:99999"}, "ALLOWED_ORIGINS"),
        ({"MODE": "staging"}, "MODE"),
        ({"TRANSPORT": "tcp"}, "TRANSPORT"),
        ({"VSOCK_PORT_MAP": "16:5000"}, "VSOCK_PORT_MAP"),
        ({"VSOCK_PORT_MAP": "3:8001=15001"}, "VSOCK_PORT_MAP"),
        ({"TRANSPORT": "vsock", "VSOCK_PORT_MAP": "16:5000=15000"}, "VSOCK_PORT_MAP"),
        ({"ENCLAVE_CID": "2"}, "ENCLAVE_CID"),
        ({"ENCLAVE_RPC_PORT": "0"}, "ENCLAVE_RPC_PORT"),
        ({"MAX_BODY_BYTES": "100"}, "MAX_BODY_BYTES"),
        ({"PURGE_INTERVAL_SECONDS": "0"}, "PURGE_INTERVAL_SECONDS"),
        ({"LOG_LEVEL": "chatty"}, "LOG_LEVEL"),
        ({"TLS_CERT_FILE": "/c.pem"}, "TLS_CERT_FILE and TLS_KEY_FILE"),
        ({"DATABASE_URL": "host=x port=not-a-port dbname"}, "DATABASE_URL"),
    ],
)
def test_each_invalid_value_is_refused_by_name(env: dict[str, str], names: str) -> None:
    """A bad value stops the start with a ConfigError naming the variable."""
    with pytest.raises(ConfigError) as info:
        ParentConfig.from_env({**DEV, **env})
    assert names in str(info.value)


def test_wildcard_origin_is_refused() -> None:
    """ALLOWED_ORIGINS='*' is refused outright, never turned into a wildcard CORS policy."""
    with pytest.raises(ConfigError, match=r"'\*' is refused"):
        ParentConfig.from_env({**DEV, "ALLOWED_ORIGINS": "*"})


def test_bad_database_url_is_not_echoed() -> None:
    """The DATABASE_URL error names the variable but never repeats its (secret) value."""
    with pytest.raises(ConfigError) as info:
        ParentConfig.from_env({**DEV, "DATABASE_URL": "password=sekrit-value host= = ="})
    assert "sekrit-value" not in str(info.value)


def test_production_refuses_the_tcp_simulator() -> None:
    """MODE=production with TRANSPORT=tcp-sim (explicit or by default) does not start."""
    for transport in ("tcp-sim", ""):
        env = {**PRODUCTION, "TRANSPORT": transport}
        with pytest.raises(ConfigError, match="production refuses TRANSPORT=tcp-sim"):
            ParentConfig.from_env(env)


def test_production_refuses_generated_certificates() -> None:
    """MODE=production without TLS_CERT_FILE/TLS_KEY_FILE does not start."""
    env = {key: value for key, value in PRODUCTION.items() if not key.startswith("TLS_")}
    with pytest.raises(ConfigError, match="refuses generated certificates"):
        ParentConfig.from_env(env)


def test_production_refuses_plain_http_origins() -> None:
    """Production only lets https origins use the API cross-origin."""
    with pytest.raises(ConfigError, match="production requires https"):
        ParentConfig.from_env({**PRODUCTION, "ALLOWED_ORIGINS": "http://app.example.com"})


def test_production_configuration_is_accepted() -> None:
    """A complete production environment builds: vsock, given certificates, no port map."""
    config = ParentConfig.from_env({**PRODUCTION, "ALLOWED_ORIGINS": "https://app.example.com"})
    assert config.mode is Mode.PRODUCTION
    assert config.transport == "vsock"
    assert config.vsock_port_map == {}
    assert config.tls_cert_file == Path("/etc/pa/cert.pem")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"EGRESS_ALLOWLIST": "api.binance.com"}, "EGRESS_ALLOWLIST"),
        ({"EGRESS_HOST_OVERRIDES": "nonsense"}, "EGRESS_HOST_OVERRIDES"),
        ({"EGRESS_HOST_OVERRIDES": "evil.example:443=127.0.0.1:1"}, "does not allow"),
        ({"EGRESS_VSOCK_PORT": "0"}, "EGRESS_VSOCK_PORT"),
        ({"VSOCK_PORT_MAP": "16:5000=15000"}, "egress address"),
    ],
)
def test_egress_settings_are_validated(env: dict[str, str], message: str) -> None:
    """Bad egress settings fail at start with the variable named."""
    with pytest.raises(ConfigError, match=message):
        ParentConfig.from_env({**DEV, **env})


def test_egress_overrides_are_refused_in_production() -> None:
    """Host overrides bypass DNS and the public-address check: development only."""
    with pytest.raises(ConfigError, match="refused in production"):
        ParentConfig.from_env(
            {**PRODUCTION, "EGRESS_HOST_OVERRIDES": "api.binance.com:443=127.0.0.1:1"}
        )


def test_egress_overrides_for_fake_exchanges() -> None:
    """In development an allow-listed name can be pointed at a loopback fake."""
    config = ParentConfig.from_env(
        {**DEV, "EGRESS_HOST_OVERRIDES": "api.binance.com:443=127.0.0.1:18443"}
    )
    assert config.egress_host_overrides == {("api.binance.com", 443): ("127.0.0.1", 18443)}


# --------------------------------------------------------------------------- sealing

SIMULATOR_KMS = {
    "KMS_KEY_ID": "alias/perf-aggregator",
    "AWS_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "AKIASIMULATOR0001",
    "AWS_SECRET_ACCESS_KEY": "simulator-secret-access-key-0001",
}


def test_sealing_is_on_by_default_and_needs_a_key() -> None:
    """Without SEALING the parent seals (fail closed): KMS_KEY_ID and AWS_REGION are required."""
    assert ParentConfig().sealing == "kms"
    with pytest.raises(ConfigError, match="SEALING=kms needs KMS_KEY_ID"):
        ParentConfig.from_env({})
    with pytest.raises(ConfigError, match="AWS_REGION"):
        ParentConfig.from_env({"KMS_KEY_ID": "alias/perf-aggregator"})


def test_sealing_with_the_simulator_credentials() -> None:
    """Development with the KMS simulator: static credentials, read and kept out of the repr."""
    config = ParentConfig.from_env(
        {**SIMULATOR_KMS, "AWS_SESSION_TOKEN": "token-0001", "CHECKPOINT_INTERVAL_SECONDS": "3"}
    )
    assert config.sealing == "kms"
    assert (config.kms_key_id, config.aws_region) == ("alias/perf-aggregator", "us-east-1")
    assert config.aws_access_key_id == "AKIASIMULATOR0001"
    assert config.aws_secret_access_key == "simulator-secret-access-key-0001"
    assert config.aws_session_token == "token-0001"
    assert config.checkpoint_interval_seconds == 3
    shown = repr(config)
    for secret in ("AKIASIMULATOR0001", "simulator-secret-access-key-0001", "token-0001"):
        assert secret not in shown


def test_production_seals_with_the_instance_role() -> None:
    """Production needs KMS, refuses SEALING=off and static keys (the role's are used)."""
    config = ParentConfig.from_env(PRODUCTION)
    assert config.sealing == "kms"
    assert config.aws_access_key_id is None
    with pytest.raises(ConfigError, match="production refuses SEALING=off"):
        ParentConfig.from_env({**PRODUCTION, "SEALING": "off"})
    without_key = {k: v for k, v in PRODUCTION.items() if k != "KMS_KEY_ID"}
    with pytest.raises(ConfigError, match="KMS_KEY_ID"):
        ParentConfig.from_env(without_key)
    with pytest.raises(ConfigError, match="instance role; AWS_ACCESS_KEY_ID is refused"):
        ParentConfig.from_env(
            {**PRODUCTION, "AWS_ACCESS_KEY_ID": "AKIA0001", "AWS_SECRET_ACCESS_KEY": "secret-1"}
        )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SEALING": "maybe"}, "SEALING must be"),
        ({"KMS_KEY_ID": "alias/has space"}, "KMS_KEY_ID"),
        ({"KMS_KEY_ID": "k" * 2049}, "KMS_KEY_ID"),
        ({"AWS_REGION": "Europe"}, "AWS_REGION"),
        ({"AWS_SECRET_ACCESS_KEY": ""}, "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
        ({"AWS_ACCESS_KEY_ID": "", "AWS_SESSION_TOKEN": "t"}, "set together"),
        ({"AWS_SECRET_ACCESS_KEY": "has a space"}, "AWS_SECRET_ACCESS_KEY must be"),
        ({"CHECKPOINT_INTERVAL_SECONDS": "0"}, "CHECKPOINT_INTERVAL_SECONDS"),
        ({"CHECKPOINT_INTERVAL_SECONDS": "3601"}, "CHECKPOINT_INTERVAL_SECONDS"),
    ],
)
def test_sealing_settings_are_validated(env: dict[str, str], message: str) -> None:
    """Bad sealing settings fail at start, named, never echoing a credential."""
    with pytest.raises(ConfigError, match=message) as info:
        ParentConfig.from_env({**SIMULATOR_KMS, **env})
    assert "simulator-secret-access-key-0001" not in str(info.value)
    assert "has a space" not in str(info.value)
