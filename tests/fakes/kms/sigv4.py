"""AWS Signature Version 4 checking for the KMS simulator. Side: test fake.

Recomputes the signature of an incoming request the way AWS does (AWS General
Reference, "Create a signed AWS API request": canonical request, string to sign,
derived signing key), written from the specification rather than with botocore's
signer, so that a signing bug in the client would show up here.

With known credentials the simulator checks everything KMS checks: the access key,
the credential scope (date, region, service ``kms``), the request time (5 minutes, as
AWS), the session token, and the signature over the signed headers and the body. With
no credentials configured it only requires a well-formed SigV4 ``Authorization``
header ("any signed request"), for setups where the enclave's credentials are not
known in advance.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final

__all__ = ["SigV4Error", "TestCredentials", "verify_sigv4"]

_ALGORITHM: Final = "AWS4-HMAC-SHA256"
_SERVICE: Final = "kms"
_MAX_SKEW: Final = timedelta(minutes=5)
_AUTHORIZATION: Final = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<credential>[^,\s]+),\s*"
    r"SignedHeaders=(?P<signed>[a-z0-9;\-]+),\s*Signature=(?P<signature>[0-9a-f]{64})"
)


class SigV4Error(Exception):
    """The request is not acceptably signed; ``code`` is the KMS error type to answer."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True, kw_only=True)
class TestCredentials:
    """Credentials the simulator accepts (tests only; never real ones)."""

    __test__ = False  # not a pytest test class

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


def _canonical_value(values: list[str]) -> str:
    # Trim, collapse inner runs of spaces, join repeated headers with commas.
    return ",".join(" ".join(value.split()) for value in values)


def verify_sigv4(
    *,
    method: str,
    path: str,
    query: str,
    headers: Callable[[str], list[str]],
    body: bytes,
    region: str,
    credentials: Mapping[str, TestCredentials] | None,
    now: datetime,
) -> str | None:
    """Check the request's SigV4 signature; the access key id, or ``SigV4Error``.

    ``headers(name)`` returns every value of a header (case-insensitive name).
    ``credentials`` maps access key ids to accepted credentials; ``None`` accepts any
    well-formed signature and returns ``None``.
    """
    authorization = headers("authorization")
    if len(authorization) != 1:
        raise SigV4Error("MissingAuthenticationTokenException", "Missing Authentication Token")
    match = _AUTHORIZATION.fullmatch(authorization[0].strip())
    if match is None:
        raise SigV4Error("IncompleteSignatureException", "Authorization header is not SigV4")
    parts = match["credential"].split("/")
    if len(parts) != 5 or parts[4] != "aws4_request":
        raise SigV4Error("IncompleteSignatureException", "malformed credential scope")
    access_key_id, scope_date, scope_region, scope_service, _ = parts
    amz_dates = headers("x-amz-date")
    if len(amz_dates) != 1:
        raise SigV4Error("IncompleteSignatureException", "X-Amz-Date is required")
    try:
        signed_at = datetime.strptime(amz_dates[0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise SigV4Error("IncompleteSignatureException", "malformed X-Amz-Date") from None
    if scope_date != amz_dates[0][:8] or scope_service != _SERVICE or scope_region != region:
        raise SigV4Error("InvalidSignatureException", "credential scope does not match")
    if abs(now - signed_at) > _MAX_SKEW:
        raise SigV4Error("InvalidSignatureException", "Signature expired")
    signed_headers = match["signed"].split(";")
    if signed_headers != sorted(set(signed_headers)) or "host" not in signed_headers:
        raise SigV4Error(
            "InvalidSignatureException", "SignedHeaders must be sorted and include host"
        )
    if "x-amz-date" not in signed_headers:
        raise SigV4Error("InvalidSignatureException", "X-Amz-Date must be signed")
    if credentials is None:
        return None

    known = credentials.get(access_key_id)
    if known is None:
        raise SigV4Error(
            "UnrecognizedClientException", "The security token included in the request is invalid."
        )
    tokens = headers("x-amz-security-token")
    if known.session_token is not None:
        if tokens != [known.session_token] or "x-amz-security-token" not in signed_headers:
            raise SigV4Error(
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
            )
    elif tokens:
        raise SigV4Error(
            "UnrecognizedClientException", "The security token included in the request is invalid."
        )

    canonical_headers = ""
    for name in signed_headers:
        values = headers(name)
        if not values:
            raise SigV4Error("InvalidSignatureException", "a signed header is missing")
        canonical_headers += f"{name}:{_canonical_value(values)}\n"
    canonical_request = "\n".join(
        [
            method,
            path or "/",
            query,
            canonical_headers,
            match["signed"],
            hashlib.sha256(body).hexdigest(),
        ]
    )
    scope = f"{scope_date}/{region}/{_SERVICE}/aws4_request"
    string_to_sign = "\n".join(
        [
            _ALGORITHM,
            amz_dates[0],
            scope,
            hashlib.sha256(canonical_request.encode()).hexdigest(),
        ]
    )
    key = _hmac(("AWS4" + known.secret_access_key).encode(), scope_date)
    for part in (region, _SERVICE, "aws4_request"):
        key = _hmac(key, part)
    expected = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, match["signature"]):
        raise SigV4Error(
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided.",
        )
    return access_key_id
