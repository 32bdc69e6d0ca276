"""Canonical JSON (RFC 8785) and strict base64 helpers. Side: any (sans-IO)."""

from __future__ import annotations

import base64
import binascii
from typing import Any

import rfc8785

__all__ = ["b64decode", "b64encode", "canonical_json"]


def canonical_json(value: Any) -> bytes:
    """Serialise ``value`` as RFC 8785 (JCS) canonical JSON bytes.

    Raises ``ValueError`` for values JCS cannot represent (NaN, non-str keys, ...).
    """
    try:
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, TypeError) as exc:
        raise ValueError(f"value cannot be canonicalised: {type(exc).__name__}") from None


def b64encode(data: bytes) -> str:
    """Standard base64 with padding (the CONTRACT wire form)."""
    return base64.b64encode(data).decode("ascii")


def b64decode(text: str, *, max_len: int | None = None) -> bytes:
    """Decode standard padded base64, refusing anything non-canonical.

    ``max_len`` bounds the decoded size; the check runs before decoding so a huge
    input costs nothing. Raises ``ValueError`` with a message free of the input.
    """
    if not isinstance(text, str):
        raise ValueError("expected a base64 string")
    if max_len is not None and len(text) > 4 * ((max_len + 2) // 3):
        raise ValueError("base64 value too long")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise ValueError("invalid base64") from None
    # validate=True still accepts non-zero trailing bits; require the canonical form.
    if base64.b64encode(raw).decode("ascii") != text:
        raise ValueError("invalid base64")
    # The length pre-check bounds the encoded form (up to 2 bytes over the cap decode
    # within it, e.g. "AAAA" with max_len=1); this one bounds what is returned.
    if max_len is not None and len(raw) > max_len:
        raise ValueError("base64 value too long")
    return raw
