"""The sans-IO CONNECT head codec (shared.connect): vectors, bounds and fuzzing."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared import connect
from shared.connect import (
    MAX_FIELDS,
    MAX_HEAD_SIZE,
    ConnectHeadError,
    ConnectRequest,
    ConnectResponse,
    HeadReader,
    error_response,
    format_connect_request,
    format_connect_response,
    normalize_host,
    parse_authority,
    parse_connect_request,
    parse_connect_response,
)
from shared.errors import LocalProtocolError, RemoteProtocolError

AIOHTTP_HEAD = (
    b"CONNECT api.binance.com:443 HTTP/1.1\r\n"
    b"Host: api.binance.com:443\r\n"
    b"Accept: */*\r\n"
    b"Accept-Encoding: gzip, deflate\r\n"
    b"User-Agent: Python/3.11 aiohttp/3.14.5\r\n"
    b"\r\n"
)
# Python 3.11's http.client (urllib3, boto3) tunnels with HTTP/1.0 and no Host.
URLLIB3_HEAD = b"CONNECT kms.us-east-1.amazonaws.com:443 HTTP/1.0\r\n\r\n"


def head(target: str = "api.binance.com:443", *fields: str, version: str = "HTTP/1.1") -> bytes:
    """A request head with the given target and field lines (Host added for HTTP/1.1)."""
    lines = [f"CONNECT {target} {version}"]
    if version == "HTTP/1.1" and not any(f.lower().startswith("host:") for f in fields):
        lines.append("Host: api.binance.com:443")
    lines += fields
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# --------------------------------------------------------------------------- valid


@pytest.mark.parametrize(
    ("raw", "host", "port"),
    [
        (AIOHTTP_HEAD, "api.binance.com", 443),
        (URLLIB3_HEAD, "kms.us-east-1.amazonaws.com", 443),
        (head("API.Binance.COM:443"), "api.binance.com", 443),
        (head("203.0.113.7:8443"), "203.0.113.7", 8443),
        (head("a-b.example:1"), "a-b.example", 1),
        (head("localhost:65535"), "localhost", 65535),
        (head("api.kraken.com:443", "Content-Length: 0"), "api.kraken.com", 443),
        (head("api.kraken.com:443", "X-Tab:\tvalue\twith tab "), "api.kraken.com", 443),
        (head("api.kraken.com:443", "Host: api.kraken.com"), "api.kraken.com", 443),
        (head("api.kraken.com:443", "Empty:"), "api.kraken.com", 443),
    ],
    ids=[
        "aiohttp",
        "urllib3-http1.0",
        "uppercase-host",
        "ipv4",
        "hyphen",
        "single-label-max-port",
        "content-length-0",
        "tab-in-value",
        "host-without-port",
        "empty-value",
    ],
)
def test_valid_heads_parse_to_a_normalised_target(raw: bytes, host: str, port: int) -> None:
    """Strict but real-world heads (aiohttp, urllib3 on 3.11) give a lowercase host and port."""
    request = parse_connect_request(raw)
    assert request == ConnectRequest(host=host, port=port)
    assert request.authority == f"{host}:{port}"


# --------------------------------------------------------------------------- invalid

INVALID_REQUESTS: list[tuple[str, bytes, int]] = [
    ("missing-port", head("api.binance.com"), 400),
    ("empty-port", head("api.binance.com:"), 400),
    ("port-0", head("api.binance.com:0"), 400),
    ("port-65536", head("api.binance.com:65536"), 400),
    ("port-leading-zero", head("api.binance.com:0443"), 400),
    ("port-sign", head("api.binance.com:+443"), 400),
    ("port-letters", head("api.binance.com:https"), 400),
    ("userinfo", head("user:pw@api.binance.com:443"), 400),
    ("userinfo-no-password", head("user@api.binance.com:443"), 400),
    ("absolute-url", head("https://api.binance.com:443/"), 400),
    ("origin-form", head("/api/v3/time"), 400),
    ("asterisk", head("*"), 400),
    ("path-after-port", head("api.binance.com:443/x"), 400),
    ("ipv6-literal", head("[::1]:443"), 400),
    ("trailing-dot", head("api.binance.com.:443"), 400),
    ("empty-label", head("api..binance.com:443"), 400),
    ("underscore", head("api_x.binance.com:443"), 400),
    ("label-hyphen-edge", head("-api.binance.com:443"), 400),
    ("label-too-long", head("a" * 64 + ".com:443"), 400),
    ("name-too-long", head(".".join(["a" * 50] * 5) + ".com:443"), 400),
    ("numeric-tld", head("1.2.3:443"), 400),
    ("hex-integer-host", head("0x7f000001:443"), 400),
    ("decimal-integer-host", head("2130706433:443"), 400),
    ("octal-ipv4", head("0177.0.0.1:443"), 400),
    ("ipv4-octet-256", head("256.0.0.1:443"), 400),
    ("percent-encoded", head("api%2ebinance.com:443"), 400),
    ("empty-host", head(":443"), 400),
    ("lowercase-method", head().replace(b"CONNECT", b"connect", 1), 405),
    (
        "get-absolute-form",
        b"GET http://api.binance.com/ HTTP/1.1\r\nHost: api.binance.com\r\n\r\n",
        405,
    ),
    ("http-2", head(version="HTTP/2.0"), 400),
    ("http-0.9", head(version="HTTP/0.9"), 400),
    ("lowercase-version", head(version="http/1.1"), 400),
    ("double-space", head().replace(b"CONNECT ", b"CONNECT  ", 1), 400),
    ("tab-separator", head().replace(b"CONNECT ", b"CONNECT\t", 1), 400),
    ("trailing-space", head().replace(b" HTTP/1.1", b" HTTP/1.1 ", 1), 400),
    ("leading-empty-line", b"\r\n" + head(), 400),
    ("crlf-in-host", b"CONNECT api.binance.com\r\n:443 HTTP/1.1\r\nHost: a.b\r\n\r\n", 400),
    ("bare-lf-in-target", b"CONNECT evil.com\n.binance.com:443 HTTP/1.1\r\nHost: a.b\r\n\r\n", 400),
    ("bare-cr-in-field", head("api.binance.com:443", "X: a\rInjected: b"), 400),
    ("bare-lf-line-ending", head().replace(b"\r\nHost", b"\nHost"), 400),
    ("nul-in-field", head("api.binance.com:443", "X: a\x00b"), 400),
    ("del-in-field", head("api.binance.com:443", "X: a\x7fb"), 400),
    ("non-ascii-host", "CONNECT bïnance.com:443 HTTP/1.0\r\n\r\n".encode(), 400),
    ("idn-host", "CONNECT \u0430pi.binance.com:443 HTTP/1.0\r\n\r\n".encode(), 400),  # Cyrillic a
    ("latin1-field", head("api.binance.com:443", "X: caf\xe9"), 400),
    ("missing-host-http1.1", b"CONNECT api.binance.com:443 HTTP/1.1\r\n\r\n", 400),
    ("two-hosts", head("api.binance.com:443", "Host: a.com", "Host: b.com"), 400),
    ("invalid-host-field", head("api.binance.com:443", "Host: a b"), 400),
    ("host-field-userinfo", head("api.binance.com:443", "Host: u@a.com:443"), 400),
    ("transfer-encoding", head("api.binance.com:443", "Transfer-Encoding: chunked"), 400),
    ("content-length", head("api.binance.com:443", "Content-Length: 5"), 400),
    ("obs-fold", head("api.binance.com:443", "X: a", " folded"), 400),
    ("space-before-colon", head("api.binance.com:443", "X : a"), 400),
    ("no-colon", head("api.binance.com:443", "NoColon"), 400),
    ("empty-field-name", head("api.binance.com:443", ": a"), 400),
    ("too-many-fields", head("api.binance.com:443", *["X: y"] * MAX_FIELDS), 400),
    ("not-terminated", head()[:-2], 400),
    ("empty", b"", 400),
    ("oversized", head("api.binance.com:443", "X: " + "a" * MAX_HEAD_SIZE), 431),
]


@pytest.mark.parametrize(
    ("raw", "status"),
    [(raw, status) for _, raw, status in INVALID_REQUESTS],
    ids=[name for name, _, _ in INVALID_REQUESTS],
)
def test_invalid_heads_are_refused_with_their_status(raw: bytes, status: int) -> None:
    """Each malformed, ambiguous or smuggling head raises ConnectHeadError with its status."""
    with pytest.raises(ConnectHeadError) as info:
        parse_connect_request(raw)
    assert info.value.status == status
    assert isinstance(info.value, RemoteProtocolError)


def test_error_messages_never_quote_the_peer() -> None:
    """Refusals are fixed texts: a hostile head's bytes never reach an error or a log."""
    canary = "canary-secret-0123456789"
    for raw in (
        head(f"{canary}@api.binance.com:443"),
        head(f"https://{canary}.example/"),
        head("api.binance.com:443", f"X-{canary} : x"),
        head(f"{canary}.example"),
    ):
        with pytest.raises(ConnectHeadError) as info:
            parse_connect_request(raw)
        assert canary not in str(info.value)
        assert canary.encode() not in error_response(info.value)


# --------------------------------------------------------------------------- HeadReader


def test_head_reader_finds_a_head_fed_byte_by_byte() -> None:
    """The end of the head is found across reads, and pipelined bytes stay in rest."""
    reader = HeadReader()
    stream = AIOHTTP_HEAD + b"\x16\x03\x01client-hello"
    results = [reader.feed(stream[i : i + 1]) for i in range(len(AIOHTTP_HEAD))]
    assert results[:-1] == [None] * (len(AIOHTTP_HEAD) - 1)
    assert results[-1] == AIOHTTP_HEAD
    assert reader.rest == b""
    reader2 = HeadReader()
    assert reader2.feed(stream) == AIOHTTP_HEAD
    assert reader2.rest == b"\x16\x03\x01client-hello"


def test_head_reader_accepts_exactly_max_size_and_refuses_one_more() -> None:
    """A head of MAX_HEAD_SIZE bytes is read; one byte more is 431 before parsing."""
    base = head("api.binance.com:443", "X: ")
    filler = MAX_HEAD_SIZE - len(base)
    exact = head("api.binance.com:443", "X: " + "a" * filler)
    assert len(exact) == MAX_HEAD_SIZE
    assert HeadReader().feed(exact) == exact
    assert parse_connect_request(exact).host == "api.binance.com"
    too_big = head("api.binance.com:443", "X: " + "a" * (filler + 1))
    with pytest.raises(ConnectHeadError) as info:
        HeadReader().feed(too_big)
    assert info.value.status == 431


def test_head_reader_bounds_a_head_that_never_ends() -> None:
    """Endless header bytes are refused once MAX_HEAD_SIZE is buffered, not kept growing."""
    reader = HeadReader()
    assert reader.feed(b"CONNECT a.com:443 HTTP/1.1\r\n") is None
    line = b"X-Long: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n"
    while reader.buffered + len(line) < MAX_HEAD_SIZE:
        assert reader.feed(line) is None
    with pytest.raises(ConnectHeadError):
        reader.feed(line)
    assert reader.buffered == 0
    with pytest.raises(LocalProtocolError):
        reader.feed(b"more")


# --------------------------------------------------------------------------- responses


@pytest.mark.parametrize(
    ("raw", "status", "reason"),
    [
        (b"HTTP/1.1 200 Connection established\r\n\r\n", 200, "Connection established"),
        (b"HTTP/1.0 200 OK\r\nProxy-Agent: x\r\n\r\n", 200, "OK"),
        (b"HTTP/1.1 200 \r\n\r\n", 200, ""),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", 200, "OK"),
        (
            format_connect_response(403, "Host not allowed: a.com:443"),
            403,
            "Host not allowed: a.com:443",
        ),
        (format_connect_response(502), 502, "Bad Gateway"),
    ],
)
def test_response_heads_parse(raw: bytes, status: int, reason: str) -> None:
    """Status lines with their reason parse; fields are checked and ignored."""
    response = parse_connect_response(raw)
    assert response == ConnectResponse(status=status, reason=reason)
    assert response.ok is (status == 200)


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200\r\n\r\n",
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/1.1 600 Odd\r\n\r\n",
        b"HTTP/2 200 OK\r\n\r\n",
        b"ICY 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n",
        b"HTTP/1.1 200 OK\nX: y\r\n\r\n",
        b"HTTP/1.1 403 caf\xc3\xa9\r\n\r\n",
        b"HTTP/1.1 403 " + b"a" * 300 + b"\r\n\r\n",
    ],
)
def test_invalid_response_heads_are_refused(raw: bytes) -> None:
    """A status line that is not HTTP/1.x, 3 digits and a short ASCII reason is refused."""
    with pytest.raises(ConnectHeadError):
        parse_connect_response(raw)


def test_formatted_heads_are_minimal_and_standard() -> None:
    """The enclave's request carries target and Host only; 2xx has no framing fields."""
    request = ConnectRequest(host="api.kraken.com", port=443)
    assert format_connect_request(request) == (
        b"CONNECT api.kraken.com:443 HTTP/1.1\r\nHost: api.kraken.com:443\r\n\r\n"
    )
    assert parse_connect_request(format_connect_request(request)) == request
    assert format_connect_response(200) == b"HTTP/1.1 200 Connection established\r\n\r\n"
    refused = format_connect_response(403, "Host not allowed: x.com:443")
    assert refused.startswith(b"HTTP/1.1 403 Host not allowed: x.com:443\r\n")
    assert b"Content-Length: 0\r\n" in refused
    assert b"Connection: close\r\n" in refused
    assert b"Allow: CONNECT\r\n" in format_connect_response(405)


@pytest.mark.parametrize(
    ("status", "reason"),
    [(403, "a\r\nSet-Cookie: x"), (403, "caf\xe9"), (403, "x" * 201), (99, None), (600, None)],
)
def test_formatting_refuses_injection_and_bad_status(status: int, reason: str | None) -> None:
    """A reason with CR/LF or non-ASCII, or a status out of range, is a local bug, not output."""
    with pytest.raises(LocalProtocolError):
        format_connect_response(status, reason)


@pytest.mark.parametrize(
    ("host", "port"), [("API.binance.com", 443), ("a.com.", 443), ("a.com", 0), ("::1", 443)]
)
def test_connect_request_refuses_unnormalised_values(host: str, port: int) -> None:
    """ConnectRequest can only hold a normalised host and a port in 1..65535."""
    with pytest.raises(LocalProtocolError):
        ConnectRequest(host=host, port=port)


def test_authority_and_host_helpers() -> None:
    """parse_authority and normalize_host apply the same grammar as the parser."""
    assert parse_authority("Api.Kraken.com:443") == ("api.kraken.com", 443)
    assert normalize_host("10.0.0.1") == "10.0.0.1"
    for bad in ("a.com", "a.com:", "@a.com:1", "a.com:99999"):
        with pytest.raises(ConnectHeadError):
            parse_authority(bad)


# --------------------------------------------------------------------------- properties

_LABELS = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
_TLD = st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True)
_HOSTS = st.one_of(
    st.builds(lambda labels, tld: ".".join([*labels, tld]), st.lists(_LABELS, max_size=4), _TLD),
    st.builds(lambda *octets: ".".join(map(str, octets)), *[st.integers(0, 255)] * 4),
)


@given(host=_HOSTS, port=st.integers(1, 65535))
def test_formatted_requests_round_trip(host: str, port: int) -> None:
    """Every valid target survives format -> HeadReader -> parse unchanged."""
    request = ConnectRequest(host=host, port=port)
    raw = format_connect_request(request)
    assert parse_connect_request(HeadReader().feed(raw) or b"") == request


@settings(max_examples=500)
@given(data=st.binary(max_size=MAX_HEAD_SIZE + 64), chunk=st.integers(1, 4096))
def test_arbitrary_bytes_raise_only_the_documented_error(data: bytes, chunk: int) -> None:
    """Any byte string fed in any chunking gives a head, None, or ConnectHeadError only."""
    reader = HeadReader()
    statuses: set[int] = set()
    try:
        for i in range(0, len(data), chunk):
            got = reader.feed(data[i : i + chunk])
            if got is not None:
                parse_connect_request(got)
                parse_connect_response(got)
                break
    except ConnectHeadError as exc:
        statuses.add(exc.status)
    assert statuses <= {400, 405, 431}


@settings(max_examples=500)
@given(
    position=st.integers(0, len(AIOHTTP_HEAD) - 1),
    inserted=st.binary(min_size=1, max_size=3),
)
def test_mutated_heads_raise_only_the_documented_error(position: int, inserted: bytes) -> None:
    """A valid head with bytes inserted anywhere parses to a valid target or is refused cleanly."""
    raw = AIOHTTP_HEAD[:position] + inserted + AIOHTTP_HEAD[position:]
    try:
        request = parse_connect_request(raw)
    except ConnectHeadError:
        return
    assert normalize_host(request.host) == request.host
    assert 1 <= request.port <= 65535


# --------------------------------------------------------------------------- module hygiene


def test_public_api_is_exactly_all() -> None:
    """__all__ lists every public name of shared.connect and nothing else."""
    public = {
        name
        for name, value in vars(connect).items()
        if not name.startswith("_")
        and getattr(value, "__module__", connect.__name__) == connect.__name__
        and name not in {"annotations", "re", "dataclass"}
    }
    assert public == set(connect.__all__)


@pytest.mark.parametrize("module", ["shared.connect", "shared.allowlist"])
def test_egress_policy_modules_are_sans_io(module: str) -> None:
    """The CONNECT codec and the allowlist load no asyncio, socket or aiohttp (STYLE rule 2)."""
    code = f"import sys, {module}; print('\\n'.join(sorted(sys.modules)))"
    loaded = set(
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.split()
    )
    assert not {"asyncio", "socket", "aiohttp", "ssl"} & loaded
