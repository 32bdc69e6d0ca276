"""Build a session's ccxt exchange and map ccxt failures to fixed-text errors. Side: enclave.

This is the adapter boundary between the enclave and ccxt (STYLE rule 3): the only
module that constructs ``ccxt.async_support`` exchanges or inspects ccxt exceptions.

:func:`build_exchange` makes one exchange per session: the class by ccxt id, the
session's ``Credentials`` as ``apiKey`` / ``secret`` / ``password``, ccxt's rate
limiter on, every request through the enclave's local CONNECT proxy
(``enclave.egress.EgressProxy.url``; aiohttp tunnels HTTPS through it with
``CONNECT host:443``, so TLS stays end to end), certificates checked with the
``ssl.SSLContext`` the composition root passes in (the image's CA bundle in
production, the test CA only in simulator mode), and the per-exchange config in
:data:`EXCHANGE_CONFIG`.

Which proxy setting: ccxt's async ``fetch`` passes ``httpsProxy``/``https_proxy`` (or
the legacy ``aiohttp_proxy``) to ``aiohttp`` as ``proxy=`` for every request, and
aiohttp issues ``CONNECT`` for ``https://`` targets. We set ``https_proxy`` (the
unified name; ccxt refuses to mix it with ``aiohttp_proxy``), and
``aiohttp_trust_env=False`` so no ``HTTPS_PROXY`` environment variable can divert it.

Errors: :func:`classify_exception` turns anything a ccxt call raised into one
:class:`ExchangeFailure` whose message is a fixed string chosen by its
:class:`ErrorKind`. A ccxt exception's own text quotes URLs, query strings and
response bodies, so it is never used: not in a message, not in a log line. Callers
re-raise with ``from None`` so the ccxt text does not ride along as ``__cause__``::

    PerfAggError
    └── ExchangeFailure        kind: ErrorKind, retry_after: float | None,
                               error_type: the ccxt class name (safe to log),
                               permanent: retrying the same request cannot help

Credentials live in the ccxt object only. ccxt logs request headers (Binance's
``X-MBX-APIKEY``) at DEBUG, so every exchange gets a logger pinned at WARNING.
"""

from __future__ import annotations

import asyncio
import copy
import enum
import logging
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp
import ccxt.async_support as ccxt_async
from ccxt.base import errors as ccxt_errors

from shared.envelope import Credentials
from shared.errors import PerfAggError

__all__ = [
    "EXCHANGE_CONFIG",
    "FAILURE_MESSAGES",
    "MAX_RETRY_AFTER_SECONDS",
    "ClientSettings",
    "ErrorKind",
    "ExchangeFailure",
    "build_exchange",
    "classify_exception",
    "exchange_tls_context",
    "parse_retry_after",
    "supported_exchange",
]


class ErrorKind(enum.StrEnum):
    """What went wrong with an exchange call, as far as scheduling and users care."""

    AUTH = "auth"
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"
    TIMEOUT = "timeout"
    DENIED_BY_EGRESS = "denied_by_egress"
    CLOCK_SKEW = "clock_skew"
    TLS = "tls"
    EXCHANGE_ERROR = "exchange_error"
    UNSUPPORTED = "unsupported"


FAILURE_MESSAGES: Final[Mapping[ErrorKind, str]] = MappingProxyType(
    {
        ErrorKind.AUTH: "the exchange rejected the API key (invalid key, signature or permissions)",
        ErrorKind.RATE_LIMITED: "the exchange rate-limited this session",
        ErrorKind.UNAVAILABLE: "the exchange is unreachable or unavailable",
        ErrorKind.TIMEOUT: "the exchange did not answer in time",
        ErrorKind.DENIED_BY_EGRESS: "the exchange host is not on the egress allowlist",
        ErrorKind.CLOCK_SKEW: "the exchange rejected the request timestamp (clock skew)",
        ErrorKind.TLS: "the exchange's TLS certificate could not be verified",
        ErrorKind.EXCHANGE_ERROR: "the exchange returned an error",
        ErrorKind.UNSUPPORTED: "this exchange does not offer a trade history ccxt can read",
    }
)
"""The only texts an exchange failure ever shows: one per kind, no variable part."""

MAX_RETRY_AFTER_SECONDS: Final = 3 * 86_400.0
"""Upper bound on a Retry-After we obey. Binance: IP bans (HTTP 418) "scale in
duration for repeat offenders, from 2 minutes to 3 days" (Spot API docs, LIMITS)."""

_BINANCE_OPTIONS: Final[Mapping[str, Any]] = {
    "defaultType": "spot",
    # Spot only: loading linear/inverse markets would call fapi./dapi. hosts, and
    # margin pairs sapi/ ones, which the egress allowlist does not (need not) hold.
    "fetchMarkets": {"types": ["spot"]},
    "fetchMargins": False,
    # GET /sapi/v1/capital/config/getall needs a key permission a read-only key may
    # lack, and nothing here needs currency metadata.
    "fetchCurrencies": False,
    # The poller resyncs on -1021 itself (polling.py), once, instead of an extra
    # /api/v3/time call on every market load.
    "adjustForTimeDifference": False,
    # Binance default 5000 ms, max 60000 (Spot API docs, "Timing security").
    "recvWindow": 10_000,
}

EXCHANGE_CONFIG: Final[Mapping[str, Mapping[str, Any]]] = MappingProxyType(
    {
        "binance": {"options": _BINANCE_OPTIONS},
        "binanceus": {"options": _BINANCE_OPTIONS},
        "kraken": {
            # Kraken answers a bad signature (wrong secret) with "EAPI:Invalid signature",
            # which ccxt 4.5.90 leaves unmapped (plain ExchangeError): a wrong key must
            # stop polling like "EAPI:Invalid key" does, not back off and retry forever.
            "exceptions": {"exact": {"EAPI:Invalid signature": ccxt_errors.AuthenticationError}},
        },
        "coinbase": {
            # Advanced Trade (v3) only: without these, load_markets, fetch_balance and
            # fetch_time call the v2 Coinbase App endpoints (currencies, exchange-rates,
            # accounts, time).
            "has": {"fetchCurrencies": False},
            "options": {
                "fetchBalance": "v3PrivateGetBrokerageAccounts",
                "fetchTime": "v3PublicGetBrokerageTime",
            },
        },
    }
)
"""Top-level ccxt config per exchange id (``options``, ``has``, ``exceptions``);
``ClientSettings.options`` is merged over the ``options`` part."""

_LOOPBACK_HOSTS: Final = frozenset({"127.0.0.1", "localhost", "::1"})
# ccxt logs "METHOD url, Request: headers body" at DEBUG: headers carry the API key.
_CCXT_LOGGER: Final = logging.getLogger("enclave.exchanges.ccxt")
_CCXT_LOGGER.setLevel(logging.WARNING)
_MAX_CAUSE_DEPTH: Final = 8


class ExchangeFailure(PerfAggError):
    """An exchange call failed; ``str()`` is ``FAILURE_MESSAGES[kind]`` and nothing else."""

    def __init__(
        self,
        kind: ErrorKind,
        *,
        retry_after: float | None = None,
        error_type: str = "",
        permanent: bool = False,
    ) -> None:
        super().__init__(FAILURE_MESSAGES[kind])
        self.kind = kind
        self.retry_after = retry_after
        self.error_type = error_type
        self.permanent = permanent

    @property
    def message(self) -> str:
        """The fixed, user-facing text of this failure."""
        return FAILURE_MESSAGES[self.kind]

    def __repr__(self) -> str:
        return (
            f"ExchangeFailure(kind={self.kind.value!r}, retry_after={self.retry_after!r}, "
            f"error_type={self.error_type!r}, permanent={self.permanent!r})"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientSettings:
    """How the enclave reaches exchanges; built once by the composition root."""

    ssl_context: ssl.SSLContext
    """Trust roots for exchange certificates. Production: the CA bundle baked into the
    image. Simulator mode: the test CA only (never both: a test CA in production
    would let whoever holds its key impersonate an exchange)."""
    proxy_url: str | None
    """The enclave's egress proxy, ``http://127.0.0.1:<port>``. Must be set in
    production (the enclave has no other way out); ``None`` only for tests that talk
    to loopback fake exchanges directly."""
    timeout_ms: int = 10_000
    """Per-request timeout (connect, read and total), ccxt's ``timeout``."""
    urls: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Per exchange id, replacement ccxt ``urls['api']``. Simulator only (the fake
    exchanges' base URLs); production leaves ccxt's real hosts, which the egress
    allowlist names."""
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Per exchange id, ccxt options merged over those of :data:`EXCHANGE_CONFIG`."""
    allowed_exchanges: frozenset[str] | None = None
    """ccxt ids sessions may use (None: any ccxt id). Others fail as UNSUPPORTED at
    start, with a clear status, instead of later as an egress denial."""

    def __post_init__(self) -> None:
        if self.proxy_url is not None:
            parts = urlsplit(self.proxy_url)
            # The egress proxy is local by construction: anything else would send
            # CONNECT heads (exchange hostnames) somewhere we do not control.
            if parts.scheme != "http" or parts.hostname not in _LOOPBACK_HOSTS or not parts.port:
                raise ValueError("proxy_url must be http://<loopback>:<port>")
        if self.timeout_ms <= 0:
            raise ValueError("timeout_ms must be positive")


def exchange_tls_context(ca_file: str | Path) -> ssl.SSLContext:
    """A client context that trusts ``ca_file`` and nothing else (no system store).

    Production: the CA bundle baked into the enclave image. Simulator: the fake
    exchanges' test CA. ``ssl.create_default_context(cafile=...)`` loads only the given
    file (it skips ``load_default_certs`` when a CA is passed), keeps hostname checks.
    """
    context = ssl.create_default_context(cafile=str(ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def supported_exchange(exchange_id: str) -> bool:
    """Is ``exchange_id`` a ccxt exchange id (the only ones we can build)?"""
    return exchange_id in ccxt_async.exchanges


def build_exchange(
    credentials: Credentials, settings: ClientSettings, *, throttler: Any = None
) -> Any:
    """A ``ccxt.async_support`` exchange for ``credentials.exchange``, not yet opened.

    ``throttler``: a ccxt ``Throttler`` to share between the sessions of one exchange:
    exchanges rate-limit per IP (Binance: "limits are based on IPs, not API keys",
    Spot API docs, LIMITS) and every session leaves through the same parent IP.
    Raises ``ExchangeFailure(UNSUPPORTED)`` for an id ccxt does not know.
    """
    exchange_id = credentials.exchange
    allowed = settings.allowed_exchanges
    if not supported_exchange(exchange_id) or (allowed is not None and exchange_id not in allowed):
        raise ExchangeFailure(
            ErrorKind.UNSUPPORTED, error_type="ExchangeNotEnabled", permanent=True
        )
    exchange_class = getattr(ccxt_async, exchange_id)
    # Deep copies: ccxt mutates option structures in place (e.g. appends to
    # options["fetchMarkets"]["types"]); sessions must not share them.
    defaults = copy.deepcopy(dict(EXCHANGE_CONFIG.get(exchange_id, {})))
    options: dict[str, Any] = {
        **dict(defaults.pop("options", {})),
        **copy.deepcopy(dict(settings.options.get(exchange_id, {}))),
    }
    config: dict[str, Any] = {
        **defaults,
        "apiKey": credentials.api_key,
        "secret": credentials.api_secret,
        "enableRateLimit": True,
        "timeout": settings.timeout_ms,
        "ssl_context": settings.ssl_context,
        "aiohttp_trust_env": False,
        "verbose": False,
        "logger": _CCXT_LOGGER,
        "options": options,
    }
    if credentials.passphrase is not None:
        config["password"] = credentials.passphrase
    if settings.proxy_url is not None:
        config["https_proxy"] = settings.proxy_url
    exchange = exchange_class(config)
    api_urls = settings.urls.get(exchange_id)
    if api_urls is not None:
        exchange.urls["api"] = dict(api_urls)
    if throttler is not None:
        exchange.throttler = throttler
    return exchange


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Seconds to wait from a Retry-After value (RFC 9110 section 10.2.3), or None.

    Both forms: ``delay-seconds`` (1*DIGIT) and an HTTP-date, relative to ``now``.
    Clamped to ``[0, MAX_RETRY_AFTER_SECONDS]``.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.isascii() and text.isdigit():
        seconds = float(int(text))
    else:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - now
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


def _retry_after_of(headers: Mapping[str, Any] | None, *, now: float) -> float | None:
    if not headers:
        return None
    for name, value in headers.items():
        if isinstance(name, str) and name.lower() == "retry-after" and isinstance(value, str):
            return parse_retry_after(value, now=now)
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and its causes/contexts, bounded (ccxt wraps aiohttp errors ``from e``)."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(seen) < _MAX_CAUSE_DEPTH and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _from_transport(exc: BaseException) -> ExchangeFailure | None:
    """Failures of the tunnel or of TLS, found anywhere in the cause chain."""
    for link in _chain(exc):
        name = type(link).__name__
        if isinstance(link, aiohttp.ClientHttpProxyError):
            # Our egress proxy's CONNECT answers (shared/connect.py): 403 host not in
            # the allowlist (enclave's or parent's), 502 unreachable, 503 too many
            # tunnels, 504 connect timed out.
            if link.status in (403, 407):
                return ExchangeFailure(ErrorKind.DENIED_BY_EGRESS, error_type=name)
            if link.status == 504:
                return ExchangeFailure(ErrorKind.TIMEOUT, error_type=name)
            return ExchangeFailure(ErrorKind.UNAVAILABLE, error_type=name)
        if isinstance(link, ssl.SSLCertVerificationError | aiohttp.ServerFingerprintMismatch):
            return ExchangeFailure(ErrorKind.TLS, error_type=name)
        if isinstance(link, aiohttp.ClientConnectorCertificateError):
            return ExchangeFailure(ErrorKind.TLS, error_type=name)
    return None


def classify_exception(
    exc: BaseException, *, headers: Mapping[str, Any] | None = None, now: float
) -> ExchangeFailure:
    """Map whatever an exchange call raised to an :class:`ExchangeFailure`.

    ``headers``: the failing response's headers (ccxt's ``last_response_headers``),
    read only for a Retry-After on rate-limit errors. Never reads ``str(exc)``.
    """
    if isinstance(exc, ExchangeFailure):
        return exc
    transport = _from_transport(exc)
    if transport is not None:
        return transport
    name = type(exc).__name__
    # Order matters: ccxt's tree has InvalidNonce under NetworkError and
    # PermissionDenied under AuthenticationError (ccxt/base/errors.py).
    if isinstance(exc, ccxt_errors.InvalidNonce):
        # Binance -1021 "Timestamp for this request is outside of the recvWindow";
        # Kraken "EAPI:Invalid nonce".
        return ExchangeFailure(ErrorKind.CLOCK_SKEW, error_type=name)
    if isinstance(exc, ccxt_errors.AuthenticationError):  # incl. PermissionDenied, suspended
        return ExchangeFailure(ErrorKind.AUTH, error_type=name, permanent=True)
    if isinstance(exc, ccxt_errors.RateLimitExceeded | ccxt_errors.DDoSProtection):
        # Binance sends Retry-After with 429 and 418 "the number of seconds required
        # to wait" (Spot API docs, LIMITS); other exchanges may not.
        return ExchangeFailure(
            ErrorKind.RATE_LIMITED,
            retry_after=_retry_after_of(headers, now=now),
            error_type=name,
        )
    if isinstance(exc, ccxt_errors.RequestTimeout):
        return ExchangeFailure(ErrorKind.TIMEOUT, error_type=name)
    if isinstance(exc, ccxt_errors.NetworkError):
        return ExchangeFailure(ErrorKind.UNAVAILABLE, error_type=name)
    if isinstance(exc, ccxt_errors.NotSupported):
        return ExchangeFailure(ErrorKind.UNSUPPORTED, error_type=name, permanent=True)
    if isinstance(exc, ccxt_errors.BadRequest | ccxt_errors.ArgumentsRequired):
        return ExchangeFailure(ErrorKind.EXCHANGE_ERROR, error_type=name, permanent=True)
    if isinstance(exc, ccxt_errors.BaseError):
        return ExchangeFailure(ErrorKind.EXCHANGE_ERROR, error_type=name)
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return ExchangeFailure(ErrorKind.TIMEOUT, error_type=name)
    if isinstance(exc, aiohttp.ClientConnectionError | ConnectionError):
        return ExchangeFailure(ErrorKind.UNAVAILABLE, error_type=name)
    # A response ccxt could not parse (KeyError, TypeError, ...): the exchange's fault
    # as far as the session can tell, and its text may quote the response.
    return ExchangeFailure(ErrorKind.EXCHANGE_ERROR, error_type=name)
