"""The egress allowlist (shared.allowlist): parsing, exact and one-label wildcard matches."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.allowlist import DEFAULT_EXCHANGE_HOSTS, Allowlist, default_allowlist, kms_host

LIST = Allowlist.parse(" api.binance.com:443, API.Kraken.com:443 ,*.binance.com:443,,10.1.2.3:8443")


@pytest.mark.parametrize(
    ("host", "port", "entry"),
    [
        ("api.binance.com", 443, "api.binance.com:443"),
        ("API.BINANCE.COM", 443, "api.binance.com:443"),
        ("api.kraken.com", 443, "api.kraken.com:443"),
        ("fapi.binance.com", 443, "*.binance.com:443"),
        ("10.1.2.3", 8443, "10.1.2.3:8443"),
    ],
)
def test_allowed_targets_match_their_entry(host: str, port: int, entry: str) -> None:
    """Exact entries match case-insensitively; a wildcard matches one extra label."""
    assert LIST.match(host, port) == entry
    assert LIST.is_allowed(host, port)


@pytest.mark.parametrize(
    ("host", "port"),
    [
        ("api.binance.com", 80),  # right host, wrong port
        ("api.kraken.com", 8443),
        ("binance.com", 443),  # the wildcard needs exactly one more label
        ("a.b.binance.com", 443),  # ... not two
        ("api.binance.com.", 443),  # trailing dot: a different spelling is not a match
        ("api.binance.com.evil.example", 443),
        ("evilbinance.com", 443),
        ("api.binance.co", 443),
        ("10.1.2.4", 8443),
        ("", 443),
        ("api.binance.com:443", 443),
        ("user@api.binance.com", 443),
        ("api.kraken.com\r\nX: y", 443),
    ],
)
def test_other_targets_are_denied(host: str, port: int) -> None:
    """Wrong port, extra or missing labels, look-alikes and junk are all denied."""
    assert LIST.match(host, port) is None
    assert not LIST.is_allowed(host, port)


@pytest.mark.parametrize(
    "text",
    [
        "api.binance.com",  # no port: there is no "any port"
        "api.binance.com:0",
        "api.binance.com:65536",
        "https://api.binance.com:443",
        "user@api.binance.com:443",
        "*:443",
        "*.com:443",  # a wildcard needs a two-label suffix
        "*.*.binance.com:443",
        "api.*.com:443",
        "*.1.2.3:443",
        "[::1]:443",
        "api.binance.com.:443",
        "good.example:443,bad entry:443",
    ],
)
def test_bad_entries_are_refused_naming_the_entry(text: str) -> None:
    """A malformed entry refuses the whole list with a ValueError that names it."""
    with pytest.raises(ValueError, match="bad allowlist entry"):
        Allowlist.parse(text)


def test_empty_list_denies_everything() -> None:
    """An empty or blank allowlist is falsy and allows nothing (fail closed)."""
    for text in ("", " , ,"):
        empty = Allowlist.parse(text)
        assert not empty
        assert not empty.is_allowed("api.binance.com", 443)
        assert str(empty) == ""


def test_text_form_is_canonical_and_round_trips() -> None:
    """entries/str are sorted, lowercase and parse back to the same list."""
    assert LIST.entries == (
        "*.binance.com:443",
        "10.1.2.3:8443",
        "api.binance.com:443",
        "api.kraken.com:443",
    )
    assert Allowlist.parse(str(LIST)) == LIST


def test_default_list_is_the_three_exchanges_and_regional_kms() -> None:
    """The production default: Binance, Kraken, Coinbase on 443, plus KMS in the given region."""
    assert default_allowlist().entries == tuple(sorted(DEFAULT_EXCHANGE_HOSTS))
    with_kms = default_allowlist("eu-central-1")
    assert with_kms.is_allowed("kms.eu-central-1.amazonaws.com", 443)
    assert not with_kms.is_allowed("kms.us-east-1.amazonaws.com", 443)
    assert not with_kms.is_allowed("api.binance.com", 80)
    assert kms_host("us-gov-west-1") == "kms.us-gov-west-1.amazonaws.com:443"


@pytest.mark.parametrize("region", ["", "us", "us-east", "US-EAST-1", "us-east-1.evil.com", "x:1"])
def test_kms_region_is_validated(region: str) -> None:
    """Only AWS region names make a KMS entry: no way to smuggle another host in."""
    with pytest.raises(ValueError, match="region"):
        kms_host(region)


@given(st.text(max_size=80), st.integers(-5, 70000))
def test_match_never_raises(host: str, port: int) -> None:
    """Any host string and port gives an entry or None, never an exception."""
    entry = LIST.match(host, port)
    assert entry is None or entry in LIST.entries
