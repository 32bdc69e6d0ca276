"""Ed25519 over RFC 8785 canonical JSON: signed results and owner proofs. Sans-IO.

Side: any. The enclave signs result payloads with its attested Ed25519 key
(:func:`sign_payload`); clients verify them offline (:func:`verify_payload`) and chain
reports with :func:`report_hash`. A trader signs owner proofs with the key whose public
half (``owner_pub``) travelled inside the credential envelope (:func:`sign_owner_proof`);
the enclave checks them (:func:`verify_owner_proof`) before revoke, unseal or record access.

Errors::

    SignatureError                     a signature or owner proof does not verify
    OwnerProofFormatError(ValueError)  an owner proof's wire form is malformed (names the field)

Time is always passed in (``now``), never read here, so verification is deterministic.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from shared.encoding import b64decode, b64encode, canonical_json
from shared.errors import PerfAggError, SignatureError

__all__ = [
    "DEFAULT_MAX_SKEW_SECONDS",
    "OWNER_PROOF_PURPOSE",
    "OWNER_PROOF_VERSION",
    "OwnerProof",
    "OwnerProofFormatError",
    "owner_proof_message",
    "report_hash",
    "sign_owner_proof",
    "sign_payload",
    "sign_payload_and_hash",
    "verify_owner_proof",
    "verify_payload",
]

OWNER_PROOF_VERSION: Final = 1
# Domain separation: an owner-proof message can never be mistaken for another signed object.
OWNER_PROOF_PURPOSE: Final = "perf-aggregator/owner-proof"
DEFAULT_MAX_SKEW_SECONDS: Final = 300

_SIGNATURE_BYTES: Final = 64  # RFC 8032 section 5.1.6
_PUBLIC_KEY_BYTES: Final = 32
_MAX_SAFE_INTEGER: Final = 2**53 - 1  # RFC 8785 section 3.2.2.3 / I-JSON integer range
_MAX_METHOD_CHARS: Final = 64
_MAX_SESSION_ID_CHARS: Final = 256
_PROOF_FIELDS: Final = frozenset({"timestamp", "signature"})

_BAD_SIGNATURE: Final = "signature does not verify"
_BAD_OWNER_PROOF: Final = "owner proof does not verify"
_STALE_OWNER_PROOF: Final = "owner proof timestamp is outside the accepted window"


class OwnerProofFormatError(PerfAggError, ValueError):
    """An owner proof's wire form is malformed; the message names the field, not its value."""


def _canonical_payload(payload: Mapping[str, Any]) -> bytes:
    if not isinstance(payload, Mapping):
        raise ValueError("payload must be a JSON object")
    try:
        return canonical_json(dict(payload))
    except (ValueError, RecursionError):
        # UnicodeEncodeError (a ValueError) covers lone surrogates RFC 8785 cannot encode.
        raise ValueError("payload cannot be canonicalised (RFC 8785)") from None


def _load_public_key(public_key_raw: bytes) -> Ed25519PublicKey | None:
    if not isinstance(public_key_raw, bytes) or len(public_key_raw) != _PUBLIC_KEY_BYTES:
        return None
    try:
        return Ed25519PublicKey.from_public_bytes(public_key_raw)
    except ValueError:
        return None


def _decode_signature(signature_b64: object) -> bytes | None:
    if not isinstance(signature_b64, str):
        return None
    try:
        signature = b64decode(signature_b64, max_len=_SIGNATURE_BYTES)
    except ValueError:
        return None
    return signature if len(signature) == _SIGNATURE_BYTES else None


def _verifies(public_key: Ed25519PublicKey | None, signature: bytes | None, message: bytes) -> bool:
    if public_key is None or signature is None:
        return False
    try:
        public_key.verify(signature, message)
    except InvalidSignature:
        return False
    return True


# --------------------------------------------------------------------------- signed results


def sign_payload(private_key: Ed25519PrivateKey, payload: Mapping[str, Any]) -> str:
    """CONTRACT: base64(Ed25519(RFC 8785 canonical JSON of payload)). Side: enclave.

    Raises ValueError if ``payload`` is not representable in RFC 8785 (NaN, huge int, ...).
    """
    return b64encode(private_key.sign(_canonical_payload(payload)))


def sign_payload_and_hash(
    private_key: Ed25519PrivateKey, payload: Mapping[str, Any]
) -> tuple[str, str]:
    """``(sign_payload(...), report_hash(...))`` from one canonicalisation. Side: enclave.

    RFC 8785 serialisation is the costly part of issuing a report; the signature and
    the chain hash cover the very same bytes, so they are computed once.
    """
    message = _canonical_payload(payload)
    return b64encode(private_key.sign(message)), hashlib.sha256(message).hexdigest()


def verify_payload(public_key_raw: bytes, payload: Mapping[str, Any], signature_b64: str) -> None:
    """Check a CONTRACT signed result. Side: client.

    ``public_key_raw`` is user_data ``sig`` from a verified attestation document. Every
    failure (bad key, base64, length, payload, signature) raises the same SignatureError.
    """
    try:
        message: bytes | None = _canonical_payload(payload)
    except ValueError:
        message = None
    public_key = _load_public_key(public_key_raw)
    signature = _decode_signature(signature_b64)
    if message is None or not _verifies(public_key, signature, message):
        raise SignatureError(_BAD_SIGNATURE)


def report_hash(payload: Mapping[str, Any]) -> str:
    """Lowercase hex SHA-256 of the RFC 8785 form of ``payload`` (previous-report chain)."""
    return hashlib.sha256(_canonical_payload(payload)).hexdigest()


# --------------------------------------------------------------------------- owner proofs


def _check_timestamp(timestamp: object) -> int:
    # bool is an int subclass; refuse it. Range: non-negative I-JSON integers.
    if isinstance(timestamp, bool) or not isinstance(timestamp, int):
        raise OwnerProofFormatError("field 'timestamp' must be an integer")
    if not 0 <= timestamp <= _MAX_SAFE_INTEGER:
        raise OwnerProofFormatError("field 'timestamp' is out of range")
    return timestamp


def owner_proof_message(method: str, session_id: str, timestamp: int) -> bytes:
    """The bytes an owner signs: RFC 8785 of {v, purpose, method, session_id, timestamp}.

    ``timestamp`` is Unix seconds. Raises ValueError for an empty/oversized method or
    session id and OwnerProofFormatError (a ValueError) for a bad timestamp.
    """
    if not isinstance(method, str) or not 1 <= len(method) <= _MAX_METHOD_CHARS:
        raise ValueError(f"method must be a string of 1..{_MAX_METHOD_CHARS} characters")
    if not isinstance(session_id, str) or not 1 <= len(session_id) <= _MAX_SESSION_ID_CHARS:
        raise ValueError(f"session_id must be a string of 1..{_MAX_SESSION_ID_CHARS} characters")
    return _canonical_payload(
        {
            "v": OWNER_PROOF_VERSION,
            "purpose": OWNER_PROOF_PURPOSE,
            "method": method,
            "session_id": session_id,
            "timestamp": _check_timestamp(timestamp),
        }
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class OwnerProof:
    """An owner's signature over (method, session id, timestamp); wire: two JSON fields."""

    timestamp: int
    signature: str

    def __post_init__(self) -> None:
        _check_timestamp(self.timestamp)
        if _decode_signature(self.signature) is None:
            raise OwnerProofFormatError("field 'signature' must be base64 of 64 bytes")

    def to_wire(self) -> dict[str, Any]:
        """``{"timestamp": int, "signature": base64}``."""
        return {"timestamp": self.timestamp, "signature": self.signature}

    @classmethod
    def from_wire(cls, obj: object) -> OwnerProof:
        """Parse exactly ``{"timestamp", "signature"}``; OwnerProofFormatError otherwise."""
        if not isinstance(obj, Mapping):
            raise OwnerProofFormatError("owner proof must be a JSON object")
        if not all(isinstance(key, str) for key in obj) or set(obj) != _PROOF_FIELDS:
            raise OwnerProofFormatError("owner proof must have exactly 'timestamp', 'signature'")
        unverified_signature = obj["signature"]
        if not isinstance(unverified_signature, str):
            raise OwnerProofFormatError("field 'signature' must be a base64 string")
        return cls(timestamp=_check_timestamp(obj["timestamp"]), signature=unverified_signature)


def sign_owner_proof(
    private_key: Ed25519PrivateKey, *, method: str, session_id: str, timestamp: int
) -> OwnerProof:
    """Sign an owner operation. Side: client. ``timestamp`` is the caller's Unix seconds."""
    message = owner_proof_message(method, session_id, timestamp)
    return OwnerProof(timestamp=timestamp, signature=b64encode(private_key.sign(message)))


def verify_owner_proof(
    owner_pub_raw: bytes,
    proof: OwnerProof,
    *,
    method: str,
    session_id: str,
    now: int,
    max_skew_seconds: int = DEFAULT_MAX_SKEW_SECONDS,
) -> None:
    """Check an owner proof for ``method`` on ``session_id`` at time ``now``. Side: enclave.

    Raises SignatureError when ``|now - proof.timestamp| > max_skew_seconds`` or when the
    signature does not verify under ``owner_pub_raw`` over the message rebuilt from the
    *expected* method and session id (so a proof for another method or session fails).
    A proof can be replayed inside the window: operations must be idempotent or the
    caller must remember (session, method, timestamp) triples it has accepted.
    """
    if isinstance(now, bool) or not isinstance(now, int):
        raise TypeError("now must be an integer (Unix seconds)")
    if isinstance(max_skew_seconds, bool) or not isinstance(max_skew_seconds, int):
        raise TypeError("max_skew_seconds must be an integer")
    if max_skew_seconds < 0:
        raise ValueError("max_skew_seconds must not be negative")
    if not isinstance(proof, OwnerProof):
        raise SignatureError(_BAD_OWNER_PROOF)
    # The window check uses public values only, so a distinct message leaks nothing.
    if abs(now - proof.timestamp) > max_skew_seconds:
        raise SignatureError(_STALE_OWNER_PROOF)
    try:
        message: bytes | None = owner_proof_message(method, session_id, proof.timestamp)
    except ValueError:
        message = None
    public_key = _load_public_key(owner_pub_raw)
    signature = _decode_signature(proof.signature)
    if message is None or not _verifies(public_key, signature, message):
        raise SignatureError(_BAD_OWNER_PROOF)
