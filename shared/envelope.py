"""Credential envelopes: seal (client side) and open (enclave side). Sans-IO.

Side: any. Clients call :func:`seal` / :func:`encrypt_credentials` with keys taken from a
*verified* attestation document; the enclave holds an :class:`EnvelopeOpener`; the parent
only parses (:meth:`Envelope.from_wire`) and digests (:func:`envelope_digest`) envelopes,
which it can do without any key.

Algorithms (``alg`` on the wire; absent means the default, which never changes silently):

``x25519-hkdf-sha256-aes256gcm`` (DESIGN 4 CONTRACT, the default)
    ``shared = X25519(e, E)``;
    ``key = HKDF-SHA256(salt = e_pub || E, ikm = shared, info = INFO, L = 32)``;
    ``AES-256-GCM(key, random 12-byte nonce, aad = RFC 8785(metadata))``.
``hpke-x25519-sha256-aes256gcm``
    RFC 9180 base mode, DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 / AES-256-GCM.
``hpke-mlkem768x25519-sha256-aes256gcm``
    the same with the MLKEM768-X25519 hybrid KEM (X-Wing, HPKE KEM id 0x647a).

For both HPKE algs ``info = INFO || SHA-256(RFC 8785(metadata))`` and the AEAD aad is
empty: cryptography's single-shot HPKE API takes no aad (RFC 9180 section 8.1 says
single-shot users put auxiliary authenticated data in ``info``). Wire mapping:
``ephemeral_pub = enc``, ``nonce = b""`` (HPKE derives its nonce, RFC 9180 section 5.2),
``ciphertext || tag`` = the HPKE ciphertext. docs/crypto.md has the details.

Errors::

    EnvelopeFormatError(PerfAggError, ValueError)  public structure is wrong; names the field
    EnvelopeError                                  sealing refused (precise message), or
                                                   opening failed (always OPEN_FAILED_MESSAGE)
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hpke
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey, MLKEM768PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shared.encoding import b64decode, b64encode, canonical_json
from shared.errors import EnvelopeError, PerfAggError

__all__ = [
    "ALG_HPKE_MLKEM768X25519",
    "ALG_HPKE_X25519",
    "ALG_X25519_HKDF",
    "DEFAULT_ALG",
    "ENVELOPE_INFO",
    "HYBRID_PUBLIC_BYTES",
    "MAX_CIPHERTEXT_BYTES",
    "MAX_METADATA_BYTES",
    "OPEN_FAILED_MESSAGE",
    "SUPPORTED_ALGS",
    "Credentials",
    "Envelope",
    "EnvelopeFormatError",
    "EnvelopeOpener",
    "EnvelopePublicKeys",
    "HybridPrivateKey",
    "encrypt_credentials",
    "envelope_digest",
    "open_credentials",
    "seal",
]

ALG_X25519_HKDF: Final = "x25519-hkdf-sha256-aes256gcm"
ALG_HPKE_X25519: Final = "hpke-x25519-sha256-aes256gcm"
ALG_HPKE_MLKEM768X25519: Final = "hpke-mlkem768x25519-sha256-aes256gcm"
# CONTRACT (DESIGN 4): an envelope without ``alg`` is this one, forever.
DEFAULT_ALG: Final = ALG_X25519_HKDF
SUPPORTED_ALGS: Final = frozenset({ALG_X25519_HKDF, ALG_HPKE_X25519, ALG_HPKE_MLKEM768X25519})

# CONTRACT: the HKDF info string of the default alg, also the prefix of the HPKE info.
ENVELOPE_INFO: Final = b"perf-aggregator/v1/credentials"
# The one message of every opening failure (no decryption oracle).
OPEN_FAILED_MESSAGE: Final = "envelope could not be opened"

MAX_CIPHERTEXT_BYTES: Final = 16 * 1024
MAX_METADATA_BYTES: Final = 4 * 1024  # canonical (RFC 8785) size
_MAX_METADATA_DEPTH: Final = 8
_X25519_KEY_BYTES: Final = 32
_AESGCM_NONCE_BYTES: Final = 12
_TAG_BYTES: Final = 16  # AES-GCM tag, also the HPKE AES-256-GCM Nt (RFC 9180 section 7.3)
_MLKEM768_PUBLIC_BYTES: Final = 1184
# MLKEM768-X25519 public key = ML-KEM-768 encapsulation key || X25519 key (X-Wing order).
HYBRID_PUBLIC_BYTES: Final = _MLKEM768_PUBLIC_BYTES + _X25519_KEY_BYTES

_HPKE_X25519_SUITE: Final = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
_HPKE_HYBRID_SUITE: Final = hpke.Suite(
    hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM
)

# alg -> (ephemeral_pub length, nonce length). HPKE enc lengths: RFC 9180 section 7.1
# (Nenc = 32 for DHKEM(X25519)); 1120 = ML-KEM-768 ciphertext (1088) + X25519 share (32).
_SHAPES: Final[Mapping[str, tuple[int, int]]] = {
    ALG_X25519_HKDF: (_X25519_KEY_BYTES, _AESGCM_NONCE_BYTES),
    ALG_HPKE_X25519: (hpke.KEM.X25519.enc_length(), 0),
    ALG_HPKE_MLKEM768X25519: (hpke.KEM.MLKEM768_X25519.enc_length(), 0),
}
_WIRE_FIELDS: Final = frozenset({"alg", "ephemeral_pub", "nonce", "ciphertext", "tag", "metadata"})
_BYTES_FIELDS: Final = ("ephemeral_pub", "nonce", "ciphertext", "tag")


class EnvelopeFormatError(PerfAggError, ValueError):
    """An envelope's public structure is invalid (wrong type, base64, length, alg).

    The message names the offending field, never its value. Structure is public, so a
    precise message is no oracle; decryption failures use :class:`EnvelopeError`.
    """


class _OpenFailed(Exception):
    """Internal: an opening step failed; mapped to the one public EnvelopeError."""


# --------------------------------------------------------------------------- metadata


def _copy_json(value: object, *, depth: int, budget: list[int]) -> Any:
    """Deep-copy a JSON-like value, refusing non-JSON types, deep nesting and huge sizes.

    ``budget`` holds a lower bound on the remaining canonical bytes so an oversized value
    is refused before RFC 8785 serialisation spends time on it.
    """
    if depth > _MAX_METADATA_DEPTH:
        raise EnvelopeFormatError("field 'metadata' is nested too deeply")
    budget[0] -= 1
    if budget[0] < 0:
        raise EnvelopeFormatError("field 'metadata' is too large")
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        budget[0] -= len(value) + 1
        if budget[0] < 0:
            raise EnvelopeFormatError("field 'metadata' is too large")
        _require_utf8(value)
        return value
    if isinstance(value, list | tuple):
        return [_copy_json(item, depth=depth + 1, budget=budget) for item in value]
    if isinstance(value, Mapping):
        result: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise EnvelopeFormatError("field 'metadata' has a non-string key")
            budget[0] -= len(key) + 3
            if budget[0] < 0:
                raise EnvelopeFormatError("field 'metadata' is too large")
            _require_utf8(key)
            result[key] = _copy_json(item, depth=depth + 1, budget=budget)
        return result
    raise EnvelopeFormatError("field 'metadata' holds a non-JSON value")


def _require_utf8(text: str) -> None:
    # RFC 8785 section 3.2.2.2: strings are serialised as UTF-8; lone surrogates cannot be.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise EnvelopeFormatError("field 'metadata' holds a string that is not UTF-8") from None


def _validated_metadata(value: object) -> tuple[dict[str, Any], bytes]:
    """Return (a private deep copy, its RFC 8785 canonical bytes) or raise EnvelopeFormatError."""
    if not isinstance(value, Mapping):
        raise EnvelopeFormatError("field 'metadata' must be a JSON object")
    copied: dict[str, Any] = _copy_json(value, depth=0, budget=[MAX_METADATA_BYTES])
    try:
        canonical = canonical_json(copied)
    except ValueError:
        # e.g. NaN or an integer outside the I-JSON range (RFC 8785 section 3.2.2.3).
        raise EnvelopeFormatError("field 'metadata' is not representable in RFC 8785") from None
    if len(canonical) > MAX_METADATA_BYTES:
        raise EnvelopeFormatError("field 'metadata' is too large")
    return copied, canonical


# --------------------------------------------------------------------------- envelope


@dataclass(frozen=True, slots=True, kw_only=True)
class Envelope:
    """One sealed message as it travels on the wire. Construction validates the shape.

    Lengths per alg: ``ephemeral_pub`` 32 (x25519 algs) or 1120 (hybrid); ``nonce`` 12
    (default alg) or 0 (HPKE algs); ``tag`` 16; ``ciphertext`` 1..16 KiB; ``metadata`` a
    JSON object of at most 4 KiB in RFC 8785 form. ``metadata`` is copied on construction
    so the envelope cannot change after it was checked.
    """

    alg: str
    ephemeral_pub: bytes
    nonce: bytes
    ciphertext: bytes
    tag: bytes
    metadata: dict[str, Any]

    def __post_init__(self) -> None:
        if not isinstance(self.alg, str) or self.alg not in SUPPORTED_ALGS:
            raise EnvelopeFormatError("field 'alg' names an unsupported algorithm")
        ephemeral_len, nonce_len = _SHAPES[self.alg]
        for name in _BYTES_FIELDS:
            if not isinstance(getattr(self, name), bytes):
                raise EnvelopeFormatError(f"field {name!r} must be bytes")
        if len(self.ephemeral_pub) != ephemeral_len:
            raise EnvelopeFormatError("field 'ephemeral_pub' has the wrong length for alg")
        if len(self.nonce) != nonce_len:
            raise EnvelopeFormatError("field 'nonce' has the wrong length for alg")
        if len(self.tag) != _TAG_BYTES:
            raise EnvelopeFormatError("field 'tag' has the wrong length")
        if not 1 <= len(self.ciphertext) <= MAX_CIPHERTEXT_BYTES:
            raise EnvelopeFormatError("field 'ciphertext' has the wrong length")
        copied, _ = _validated_metadata(self.metadata)
        object.__setattr__(self, "metadata", copied)

    def to_wire(self) -> dict[str, Any]:
        """JSON-ready dict: standard padded base64 for bytes, ``alg`` always explicit."""
        return {
            "alg": self.alg,
            "ephemeral_pub": b64encode(self.ephemeral_pub),
            "nonce": b64encode(self.nonce),
            "ciphertext": b64encode(self.ciphertext),
            "tag": b64encode(self.tag),
            "metadata": copy.deepcopy(self.metadata),
        }

    @classmethod
    def from_wire(cls, obj: object) -> Envelope:
        """Parse a decoded JSON object strictly; raise EnvelopeFormatError naming the field."""
        if not isinstance(obj, Mapping):
            raise EnvelopeFormatError("envelope must be a JSON object")
        if not all(isinstance(key, str) for key in obj):
            raise EnvelopeFormatError("envelope has a non-string key")
        if not set(obj) <= _WIRE_FIELDS:
            # Unknown names are not echoed: they are attacker-chosen text.
            raise EnvelopeFormatError("envelope has an unexpected field")
        # CONTRACT: an absent alg is the default alg.
        unverified_alg = obj.get("alg", DEFAULT_ALG)
        if not isinstance(unverified_alg, str) or unverified_alg not in SUPPORTED_ALGS:
            raise EnvelopeFormatError("field 'alg' names an unsupported algorithm")
        ephemeral_len, nonce_len = _SHAPES[unverified_alg]
        limits = {
            "ephemeral_pub": ephemeral_len,
            "nonce": nonce_len,
            "ciphertext": MAX_CIPHERTEXT_BYTES,
            "tag": _TAG_BYTES,
        }
        decoded: dict[str, bytes] = {}
        for name in _BYTES_FIELDS:
            if name not in obj:
                raise EnvelopeFormatError(f"missing field {name!r}")
            if not isinstance(obj[name], str):
                raise EnvelopeFormatError(f"field {name!r} must be a base64 string")
            try:
                # CONTRACT: standard base64 with padding; canonical form only.
                decoded[name] = b64decode(obj[name], max_len=limits[name])
            except ValueError:
                raise EnvelopeFormatError(f"field {name!r} is not valid base64") from None
        if "metadata" not in obj:
            raise EnvelopeFormatError("missing field 'metadata'")
        return cls(
            alg=unverified_alg,
            ephemeral_pub=decoded["ephemeral_pub"],
            nonce=decoded["nonce"],
            ciphertext=decoded["ciphertext"],
            tag=decoded["tag"],
            metadata=obj["metadata"],
        )


def envelope_digest(envelope: Envelope) -> bytes:
    """SHA-256 of the RFC 8785 form of ``envelope.to_wire()``, for replay detection.

    Every wire spelling that opens to the same message has the same digest: base64 is
    canonical-only, ``alg`` is made explicit and metadata is canonicalised, exactly as the
    AAD / HPKE info is, so a replay cannot dodge the check by re-encoding.
    """
    return hashlib.sha256(canonical_json(envelope.to_wire())).digest()


# --------------------------------------------------------------------------- keys


@dataclass(frozen=True, slots=True, kw_only=True)
class HybridPrivateKey:
    """The enclave's MLKEM768-X25519 (X-Wing) private key: both halves. Side: enclave.

    Its X25519 half is a key of its own, not the enclave's ``enc`` key, so no X25519
    key is shared between the hybrid KEM and the classical algs.
    """

    mlkem: MLKEM768PrivateKey = field(repr=False)
    x25519: X25519PrivateKey = field(repr=False)

    @classmethod
    def generate(cls) -> HybridPrivateKey:
        """Fresh key pair from the OS CSPRNG (seeded from NSM in the enclave)."""
        return cls(mlkem=MLKEM768PrivateKey.generate(), x25519=X25519PrivateKey.generate())

    def public_bytes(self) -> bytes:
        """1216 bytes: ML-KEM-768 encapsulation key (1184) || X25519 public key (32)."""
        return (
            self.mlkem.public_key().public_bytes_raw() + self.x25519.public_key().public_bytes_raw()
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class EnvelopePublicKeys:
    """What the enclave publishes in its attestation: ``enc`` and, optionally, ``pq``.

    ``x25519`` is user_data ``enc``; ``pq`` is the 1216-byte hybrid key whose SHA-256
    is user_data ``pq`` (DESIGN 4).
    """

    x25519: bytes
    pq: bytes | None


def _parse_hybrid_public(raw: bytes) -> hpke.MLKEM768X25519PublicKey:
    """Raw 1216-byte hybrid public key -> cryptography object (ValueError if invalid)."""
    if len(raw) != HYBRID_PUBLIC_BYTES:
        raise ValueError("wrong length")
    return hpke.MLKEM768X25519PublicKey(
        MLKEM768PublicKey.from_public_bytes(raw[:_MLKEM768_PUBLIC_BYTES]),
        X25519PublicKey.from_public_bytes(raw[_MLKEM768_PUBLIC_BYTES:]),
    )


def _hpke_info(canonical_metadata: bytes) -> bytes:
    # RFC 9180 section 8.1: single-shot callers bind auxiliary data through info. The hash
    # keeps info at 62 bytes, inside the 64-byte length RFC 9180 section 7.2.1 recommends
    # implementations support; ENVELOPE_INFO has a fixed length, so the split is unambiguous.
    return ENVELOPE_INFO + hashlib.sha256(canonical_metadata).digest()


def _derive_default_key(shared: bytes, ephemeral_pub: bytes, recipient_pub: bytes) -> bytes:
    # CONTRACT: reject the all-zero X25519 output (low-order point, RFC 7748 section 6.1).
    if hmac.compare_digest(shared, bytes(_X25519_KEY_BYTES)):
        raise _OpenFailed
    # CONTRACT: HKDF-SHA256(salt = e_pub || E, ikm = shared, info = INFO, L = 32).
    return HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=ephemeral_pub + recipient_pub,
        info=ENVELOPE_INFO,
    ).derive(shared)


class EnvelopeOpener:
    """Holds the enclave's envelope private keys and opens envelopes. Side: enclave.

    Every failure of :meth:`open` (wrong key, bad tag, changed metadata, alg this opener
    cannot open, low-order point) raises ``EnvelopeError(OPEN_FAILED_MESSAGE)`` with no
    cause and no context.
    """

    __slots__ = ("_hybrid", "_hybrid_public", "_x25519", "_x25519_public")

    def __init__(
        self, x25519_private: X25519PrivateKey, *, pq_private: HybridPrivateKey | None = None
    ) -> None:
        if not isinstance(x25519_private, X25519PrivateKey):
            raise TypeError("x25519_private must be an X25519PrivateKey")
        if pq_private is not None and not isinstance(pq_private, HybridPrivateKey):
            raise TypeError("pq_private must be a HybridPrivateKey")
        self._x25519 = x25519_private
        self._x25519_public = x25519_private.public_key().public_bytes_raw()
        self._hybrid: hpke.MLKEM768X25519PrivateKey | None = None
        self._hybrid_public: bytes | None = None
        if pq_private is not None:
            self._hybrid = hpke.MLKEM768X25519PrivateKey(pq_private.mlkem, pq_private.x25519)
            self._hybrid_public = pq_private.public_bytes()

    def __repr__(self) -> str:
        return f"EnvelopeOpener(pq={self._hybrid is not None})"

    @classmethod
    def generate(cls, *, with_pq: bool = False) -> EnvelopeOpener:
        """Fresh keys (enclave boot): X25519, and the hybrid key when ``with_pq``."""
        return cls(
            X25519PrivateKey.generate(),
            pq_private=HybridPrivateKey.generate() if with_pq else None,
        )

    def public_keys(self) -> EnvelopePublicKeys:
        """Raw public keys to place in the attestation document."""
        return EnvelopePublicKeys(x25519=self._x25519_public, pq=self._hybrid_public)

    def supported_algs(self) -> frozenset[str]:
        """The algs this opener holds keys for."""
        if self._hybrid is None:
            return frozenset({ALG_X25519_HKDF, ALG_HPKE_X25519})
        return SUPPORTED_ALGS

    def open(self, envelope: Envelope) -> bytes:
        """Authenticate and decrypt; the one EnvelopeError for every failure."""
        try:
            return self._open(envelope)
        except (_OpenFailed, InvalidTag, ValueError, TypeError):
            pass
        # Raised outside the handler so neither __cause__ nor __context__ carries anything.
        raise EnvelopeError(OPEN_FAILED_MESSAGE) from None

    def _open(self, envelope: Envelope) -> bytes:
        if not isinstance(envelope, Envelope):
            raise _OpenFailed
        # Recomputed from the (validated, copied) metadata: the AAD is what we authenticate.
        _, canonical_metadata = _validated_metadata(envelope.metadata)
        if envelope.alg == ALG_X25519_HKDF:
            shared = self._x25519.exchange(
                X25519PublicKey.from_public_bytes(envelope.ephemeral_pub)
            )
            key = _derive_default_key(shared, envelope.ephemeral_pub, self._x25519_public)
            # CONTRACT: aad = RFC 8785 canonical JSON of metadata; ciphertext || tag.
            return AESGCM(key).decrypt(
                envelope.nonce, envelope.ciphertext + envelope.tag, canonical_metadata
            )
        hpke_ciphertext = envelope.ephemeral_pub + envelope.ciphertext + envelope.tag
        info = _hpke_info(canonical_metadata)
        if envelope.alg == ALG_HPKE_X25519:
            # RFC 9180 section 7.1.4: the library rejects an all-zero DH output.
            return _HPKE_X25519_SUITE.decrypt(hpke_ciphertext, self._x25519, info=info)
        if envelope.alg == ALG_HPKE_MLKEM768X25519 and self._hybrid is not None:
            return _HPKE_HYBRID_SUITE.decrypt(hpke_ciphertext, self._hybrid, info=info)
        raise _OpenFailed


# --------------------------------------------------------------------------- sealing


def _check_plaintext(plaintext: bytes) -> None:
    if not isinstance(plaintext, bytes):
        raise EnvelopeError("plaintext must be bytes")
    if not 1 <= len(plaintext) <= MAX_CIPHERTEXT_BYTES:
        raise EnvelopeError("plaintext must be 1..16384 bytes")


def _seal_default(
    plaintext: bytes,
    *,
    recipient_x25519: bytes,
    metadata: Mapping[str, Any],
    ephemeral_private: X25519PrivateKey,
    nonce: bytes,
) -> Envelope:
    """The default alg with the ephemeral key and nonce injected (tests and vectors only)."""
    _check_plaintext(plaintext)
    if not isinstance(recipient_x25519, bytes) or len(recipient_x25519) != _X25519_KEY_BYTES:
        raise EnvelopeError("recipient_x25519 must be 32 bytes")
    if len(nonce) != _AESGCM_NONCE_BYTES:
        raise EnvelopeError("nonce must be 12 bytes")
    try:
        copied, aad = _validated_metadata(metadata)
    except EnvelopeFormatError as exc:
        raise EnvelopeError(str(exc)) from None
    ephemeral_pub = ephemeral_private.public_key().public_bytes_raw()
    try:
        shared = ephemeral_private.exchange(X25519PublicKey.from_public_bytes(recipient_x25519))
        key = _derive_default_key(shared, ephemeral_pub, recipient_x25519)
    except (ValueError, _OpenFailed):
        raise EnvelopeError("recipient_x25519 is not a usable X25519 public key") from None
    sealed = AESGCM(key).encrypt(nonce, plaintext, aad)
    return Envelope(
        alg=ALG_X25519_HKDF,
        ephemeral_pub=ephemeral_pub,
        nonce=nonce,
        ciphertext=sealed[:-_TAG_BYTES],
        tag=sealed[-_TAG_BYTES:],
        metadata=copied,
    )


def _seal_hpke(
    plaintext: bytes,
    *,
    alg: str,
    suite: hpke.Suite,
    public_key: X25519PublicKey | hpke.MLKEM768X25519PublicKey,
    metadata: Mapping[str, Any],
) -> Envelope:
    try:
        copied, canonical_metadata = _validated_metadata(metadata)
    except EnvelopeFormatError as exc:
        raise EnvelopeError(str(exc)) from None
    try:
        sealed = suite.encrypt(plaintext, public_key, info=_hpke_info(canonical_metadata))
    except ValueError:
        raise EnvelopeError("recipient key is not usable") from None
    enc_len = _SHAPES[alg][0]
    # Wire mapping: enc || ct || tag  ->  ephemeral_pub, ciphertext, tag; nonce empty.
    return Envelope(
        alg=alg,
        ephemeral_pub=sealed[:enc_len],
        nonce=b"",
        ciphertext=sealed[enc_len:-_TAG_BYTES],
        tag=sealed[-_TAG_BYTES:],
        metadata=copied,
    )


def seal(
    plaintext: bytes,
    *,
    metadata: Mapping[str, Any],
    alg: str = DEFAULT_ALG,
    recipient_x25519: bytes | None = None,
    recipient_pq: bytes | None = None,
) -> Envelope:
    """Encrypt ``plaintext`` to the enclave. Side: client.

    ``recipient_x25519`` (user_data ``enc``) is required by the two X25519 algs and
    ``recipient_pq`` (the 1216-byte hybrid key hashed into user_data ``pq``) by the hybrid
    alg; the other may be passed and is then unused. Both must come from a verified
    attestation document. Raises EnvelopeError with a precise message on bad input.
    """
    _check_plaintext(plaintext)
    if alg == ALG_X25519_HKDF:
        if recipient_x25519 is None:
            raise EnvelopeError("recipient_x25519 is required for this alg")
        return _seal_default(
            plaintext,
            recipient_x25519=recipient_x25519,
            metadata=metadata,
            ephemeral_private=X25519PrivateKey.generate(),
            nonce=os.urandom(_AESGCM_NONCE_BYTES),
        )
    if alg == ALG_HPKE_X25519:
        if not isinstance(recipient_x25519, bytes) or len(recipient_x25519) != _X25519_KEY_BYTES:
            raise EnvelopeError("recipient_x25519 must be 32 bytes")
        return _seal_hpke(
            plaintext,
            alg=alg,
            suite=_HPKE_X25519_SUITE,
            public_key=X25519PublicKey.from_public_bytes(recipient_x25519),
            metadata=metadata,
        )
    if alg == ALG_HPKE_MLKEM768X25519:
        if not isinstance(recipient_pq, bytes):
            raise EnvelopeError("recipient_pq is required for this alg")
        try:
            public_key = _parse_hybrid_public(recipient_pq)
        except ValueError:
            raise EnvelopeError("recipient_pq is not an MLKEM768-X25519 public key") from None
        return _seal_hpke(
            plaintext, alg=alg, suite=_HPKE_HYBRID_SUITE, public_key=public_key, metadata=metadata
        )
    raise EnvelopeError("unsupported alg")


# --------------------------------------------------------------------------- credentials

_MAX_EXCHANGE_CHARS: Final = 64
_MAX_API_KEY_CHARS: Final = 1024
_MAX_API_SECRET_CHARS: Final = 8192
_MAX_PASSPHRASE_CHARS: Final = 1024
_ED25519_PUBLIC_BYTES: Final = 32
# CONTRACT plaintext keys (DESIGN 4):
# {"exchange", "apiKey", "apiSecret", "passphrase"?, "owner_pub"?}
_PLAINTEXT_REQUIRED: Final = frozenset({"exchange", "apiKey", "apiSecret"})
_PLAINTEXT_ALLOWED: Final = _PLAINTEXT_REQUIRED | {"passphrase", "owner_pub"}


def _check_text(value: object, name: str, max_chars: int) -> None:
    if not isinstance(value, str) or not 1 <= len(value) <= max_chars:
        raise ValueError(f"{name} must be a string of 1..{max_chars} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{name} must be valid UTF-8 text") from None


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Credentials:
    """Exchange API credentials, alive only in client and enclave memory. Side: any.

    The repr never shows ``api_key``, ``api_secret`` or ``passphrase``. ``owner_pub`` is
    the raw 32-byte Ed25519 key that must sign owner operations (revoke, unseal, record
    access). Construction raises ValueError naming the bad field, never its value.
    """

    exchange: str
    api_key: str = field(repr=False)
    api_secret: str = field(repr=False)
    passphrase: str | None = field(default=None, repr=False)
    owner_pub: bytes | None = None

    def __post_init__(self) -> None:
        _check_text(self.exchange, "exchange", _MAX_EXCHANGE_CHARS)
        _check_text(self.api_key, "api_key", _MAX_API_KEY_CHARS)
        _check_text(self.api_secret, "api_secret", _MAX_API_SECRET_CHARS)
        if self.passphrase is not None:
            _check_text(self.passphrase, "passphrase", _MAX_PASSPHRASE_CHARS)
        if self.owner_pub is not None and (
            not isinstance(self.owner_pub, bytes) or len(self.owner_pub) != _ED25519_PUBLIC_BYTES
        ):
            raise ValueError("owner_pub must be 32 raw bytes")

    def __repr__(self) -> str:
        owner = "None" if self.owner_pub is None else repr(b64encode(self.owner_pub))
        passphrase = "None" if self.passphrase is None else "'<redacted>'"
        return (
            f"Credentials(exchange={self.exchange!r}, api_key='<redacted>', "
            f"api_secret='<redacted>', passphrase={passphrase}, owner_pub={owner})"
        )

    __str__ = __repr__

    def to_plaintext(self) -> bytes:
        """The CONTRACT plaintext: UTF-8 JSON (RFC 8785 form) with the wire key names."""
        document: dict[str, str] = {
            "exchange": self.exchange,
            "apiKey": self.api_key,
            "apiSecret": self.api_secret,
        }
        if self.passphrase is not None:
            document["passphrase"] = self.passphrase
        if self.owner_pub is not None:
            document["owner_pub"] = b64encode(self.owner_pub)
        return canonical_json(document)


def _reject_constant(_name: str) -> Any:
    raise ValueError("non-standard JSON constant")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate key")
    return result


def _parse_credentials(plaintext: bytes) -> Credentials:
    """Authenticated plaintext -> Credentials; ValueError (any message) if invalid."""
    document = json.loads(
        plaintext.decode("utf-8"),  # strict UTF-8; json.loads(bytes) would sniff UTF-16/32
        object_pairs_hook=_no_duplicate_keys,
        parse_constant=_reject_constant,
    )
    if not isinstance(document, dict):
        raise ValueError("not an object")
    keys = set(document)
    if not _PLAINTEXT_REQUIRED <= keys <= _PLAINTEXT_ALLOWED:
        raise ValueError("wrong keys")
    owner_b64 = document.get("owner_pub")
    owner_pub = None if owner_b64 is None else b64decode(owner_b64, max_len=_ED25519_PUBLIC_BYTES)
    return Credentials(
        exchange=document["exchange"],
        api_key=document["apiKey"],
        api_secret=document["apiSecret"],
        passphrase=document.get("passphrase"),
        owner_pub=owner_pub,
    )


def encrypt_credentials(
    credentials: Credentials,
    *,
    metadata: Mapping[str, Any],
    alg: str = DEFAULT_ALG,
    recipient_x25519: bytes | None = None,
    recipient_pq: bytes | None = None,
) -> Envelope:
    """Seal ``credentials`` for the enclave. Side: client.

    ``metadata["exchange"]`` must equal ``credentials.exchange`` (the enclave refuses a
    mismatch), so a mismatch is refused here, before anything is sent.
    """
    if not isinstance(credentials, Credentials):
        raise EnvelopeError("credentials must be a Credentials instance")
    if not isinstance(metadata, Mapping) or metadata.get("exchange") != credentials.exchange:
        raise EnvelopeError("metadata 'exchange' must equal the credentials' exchange")
    return seal(
        credentials.to_plaintext(),
        metadata=metadata,
        alg=alg,
        recipient_x25519=recipient_x25519,
        recipient_pq=recipient_pq,
    )


def open_credentials(opener: EnvelopeOpener, envelope: Envelope) -> Credentials:
    """Open ``envelope`` and parse the credentials inside. Side: enclave.

    A plaintext that decrypts but is not the CONTRACT JSON, or whose exchange differs
    from ``metadata["exchange"]``, fails with the same EnvelopeError as a bad tag.
    """
    plaintext = opener.open(envelope)
    credentials: Credentials | None
    try:
        credentials = _parse_credentials(plaintext)
    except (ValueError, TypeError, KeyError, RecursionError):
        credentials = None
    # CONTRACT: the plaintext exchange must equal metadata.exchange (metadata is the AAD).
    if credentials is None or envelope.metadata.get("exchange") != credentials.exchange:
        raise EnvelopeError(OPEN_FAILED_MESSAGE) from None
    return credentials
