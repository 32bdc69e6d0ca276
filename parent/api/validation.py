"""Parsing and checking of everything a request carries. Side: parent.

Every function either returns typed values or raises ``ApiError`` (400, 413 or 415)
whose message names the field and the rule, never the value: values are attacker
text and may be secrets (a session id is a bearer token).

These checks are for clients' convenience and to keep junk away from the enclave and
the database; the enclave validates everything again, and its checks are the ones
that count.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from uuid import UUID

from aiohttp import web

from parent.api.errors import ApiError
from shared.envelope import Envelope, EnvelopeFormatError
from shared.ids import is_session_id
from shared.signing import OwnerProof, OwnerProofFormatError

__all__ = [
    "MAX_LABEL_CHARS",
    "MAX_NONCE_BYTES",
    "OwnerProofFields",
    "check_record_metadata",
    "check_session_metadata",
    "only_fields",
    "owner_proof_from_body",
    "owner_proof_from_headers",
    "parse_envelope",
    "parse_nonce",
    "parse_record_id",
    "read_json_object",
    "require_session_id",
]

MAX_LABEL_CHARS: Final = 64
# attestation_process.md section 3.2.2.2: the NSM accepts a nonce of at most 512 bytes.
MAX_NONCE_BYTES: Final = 512

# The seed's exchange ids (ccxt ids) and the enclave's rule: lowercase, bounded.
_EXCHANGE: Final = re.compile(r"\A[a-z][a-z0-9_]{0,31}\Z")
_HEX: Final = re.compile(r"\A(?:[0-9a-fA-F]{2})*\Z")
_UUID: Final = re.compile(r"\A[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
_DIGITS: Final = re.compile(r"\A[0-9]{1,16}\Z")
_SESSION_METADATA_REQUIRED: Final = frozenset({"exchange", "label", "ttl"})
# issued_at (Unix seconds) lets the enclave refuse stale envelopes (replay window).
_SESSION_METADATA_OPTIONAL: Final = frozenset({"issued_at"})
_RECORD_METADATA: Final = frozenset({"purpose", "label"})


@dataclass(frozen=True, slots=True, kw_only=True)
class OwnerProofFields:
    """An owner proof as the RPC carries it: both fields, or neither."""

    timestamp: int | None
    signature: str | None


def _bad(message: str) -> ApiError:
    return ApiError(400, "bad_request", message)


def _reject_constant(_name: str) -> Any:
    raise ValueError("NaN and Infinity are not JSON")


def _finite_float(text: str) -> float:
    # 1e400 parses to inf: the same refusal as the NaN / Infinity literals.
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Duplicate keys are read differently by different parsers; refuse the ambiguity.
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate key")
    return result


async def read_json_object(request: web.Request, *, max_bytes: int) -> dict[str, Any]:
    """The request body as a JSON object: 415 unless JSON, 413 when too large, else 400."""
    if request.content_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "Content-Type must be application/json")
    charset = request.charset
    if charset is not None and charset.lower() not in ("utf-8", "utf8"):
        raise ApiError(415, "unsupported_media_type", "JSON bodies must be UTF-8")
    if request.content_length is not None and request.content_length > max_bytes:
        # Refused before reading a byte; chunked bodies are cut by client_max_size.
        raise ApiError(413, "too_large", f"request body exceeds {max_bytes} bytes")
    raw = await request.read()
    try:
        body = json.loads(
            raw.decode("utf-8"),
            object_pairs_hook=_no_duplicate_keys,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
        )
    except (ValueError, RecursionError):
        raise _bad("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise _bad("request body must be a JSON object")
    return body


def only_fields(body: Mapping[str, Any], allowed: frozenset[str], where: str = "body") -> None:
    """Refuse unknown fields (their names are not echoed: attacker-chosen text)."""
    if not set(body) <= allowed:
        raise _bad(f"{where} has an unexpected field; allowed: {', '.join(sorted(allowed))}")


def require_session_id(value: object, *, where: str = "field 'session_id'") -> str:
    """A well-formed session id, checked before any lookup (400 otherwise)."""
    if value is None:
        raise _bad(f"{where} is required")
    if not is_session_id(value):
        raise _bad(f"{where} is not a session id (43 characters of URL-safe base64)")
    assert isinstance(value, str)
    return value


def parse_nonce(value: str | None) -> bytes | None:
    """A client nonce in hex: 1..512 bytes; None when absent."""
    if value is None:
        return None
    # bytes.fromhex would accept spaces; the regex accepts pairs of hex digits only.
    if not value or not _HEX.match(value):
        raise _bad("query parameter 'nonce' must be an even number of hex digits")
    nonce = bytes.fromhex(value)
    if len(nonce) > MAX_NONCE_BYTES:
        raise _bad(f"query parameter 'nonce' must be at most {MAX_NONCE_BYTES} bytes")
    return nonce


def parse_envelope(value: object, *, where: str = "envelope") -> Envelope:
    """An envelope in its CONTRACT wire form; the 400 names the offending field."""
    try:
        return Envelope.from_wire(value)
    except EnvelopeFormatError as exc:
        # Envelope messages name a field, never its value.
        raise _bad(f"{where}: {exc}") from None


def _label(value: object, where: str) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_LABEL_CHARS:
        raise _bad(f"{where} must be a string of 1..{MAX_LABEL_CHARS} characters")
    if not value.isprintable():
        raise _bad(f"{where} must be printable text")
    return value


def _integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_session_metadata(metadata: Mapping[str, Any], *, min_ttl: int, max_ttl: int) -> None:
    """Check ``{exchange, label, ttl, issued_at?}`` of a credential envelope."""
    keys = set(metadata)
    missing = sorted(_SESSION_METADATA_REQUIRED - keys)
    if missing:
        raise _bad(f"metadata.{missing[0]} is required")
    if not keys <= _SESSION_METADATA_REQUIRED | _SESSION_METADATA_OPTIONAL:
        raise _bad("metadata has an unexpected field; allowed: exchange, label, ttl, issued_at")
    exchange = metadata["exchange"]
    if not isinstance(exchange, str) or not _EXCHANGE.match(exchange):
        raise _bad("metadata.exchange must match ^[a-z][a-z0-9_]{0,31}$")
    _label(metadata["label"], "metadata.label")
    ttl = metadata["ttl"]
    if not _integer(ttl) or not min_ttl <= ttl <= max_ttl:
        raise _bad(f"metadata.ttl must be an integer from {min_ttl} to {max_ttl} seconds")
    if "issued_at" in metadata and not (
        _integer(metadata["issued_at"]) and metadata["issued_at"] >= 0
    ):
        raise _bad("metadata.issued_at must be an integer (Unix seconds)")


def check_record_metadata(metadata: Mapping[str, Any]) -> str:
    """Check ``{purpose: "record", label}`` of a record envelope; return the label."""
    if set(metadata) != _RECORD_METADATA or metadata.get("purpose") != "record":
        raise _bad('envelope.metadata must be exactly {"purpose": "record", "label": ...}')
    return _label(metadata["label"], "envelope.metadata.label")


def _owner_proof(timestamp: object, signature: object) -> OwnerProofFields:
    if timestamp is None and signature is None:
        return OwnerProofFields(timestamp=None, signature=None)
    if timestamp is None or signature is None:
        raise _bad("owner proof needs both timestamp and signature")
    try:
        proof = OwnerProof.from_wire({"timestamp": timestamp, "signature": signature})
    except OwnerProofFormatError as exc:
        raise _bad(f"owner proof: {exc}") from None
    return OwnerProofFields(timestamp=proof.timestamp, signature=proof.signature)


def owner_proof_from_body(body: Mapping[str, Any]) -> OwnerProofFields:
    """The optional ``timestamp`` / ``signature`` fields of a request body."""
    return _owner_proof(body.get("timestamp"), body.get("signature"))


def owner_proof_from_headers(request: web.Request) -> OwnerProofFields:
    """``X-Owner-Timestamp`` (Unix seconds) and ``X-Owner-Signature`` (base64)."""
    raw_timestamp = request.headers.get("X-Owner-Timestamp")
    timestamp: int | None = None
    if raw_timestamp is not None:
        if not _DIGITS.match(raw_timestamp):
            raise _bad("header X-Owner-Timestamp must be Unix seconds")
        timestamp = int(raw_timestamp)
    return _owner_proof(timestamp, request.headers.get("X-Owner-Signature"))


def parse_record_id(value: str) -> UUID:
    """A record id: a UUID in its canonical lowercase form."""
    if not _UUID.match(value):
        raise _bad("record id must be a lowercase UUID")
    return UUID(value)
