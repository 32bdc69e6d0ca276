"""AWS Nitro attestation documents: encode, decode and verify. Side: any (sans-IO).

The enclave encodes documents (simulator) and clients verify them before trusting any
key. A document is an *untagged* COSE_Sign1 (RFC 9052 §4.2) with protected header
``{1: -35}`` (ES384) whose payload is the AWS attestation map described in
aws-nitro-enclaves-nsm-api ``docs/attestation_process.md`` (§2.2, §3.2).

Flow of ``AttestationVerifier.verify``, each failure an ``AttestationError`` whose
``reason`` is one ``Reason`` value::

    bytes --decode_document--> structure / algorithm
          --root pin---------> root                 cabundle[0] DER SHA-256 == pinned
          --COSE ES384-------> signature            with the leaf key (P-384 only)
          --X.509 path-------> chain                issued-by, CA flags, path length, usage
          --timestamp--------> stale / future
          --dates at now-----> cert-expired / cert-not-yet-valid
          --PCRs-------------> debug-mode / pcr-mismatch
          --nonce echo-------> nonce
          --user_data--------> user-data            {"v": 1, "enc", "sig", "pq"?}

The COSE signature is checked before the X.509 path: every check must pass anyway,
and the signature authenticates the whole payload (cabundle included) with one
ECDSA verification, so tampered documents are refused cheaply.

Decisions:
- A CBOR tag 18 wrapper is refused. The CONTRACT (DESIGN §4) and the NSM produce
  untagged documents; accepting both would give one document two encodings.
- CBOR is decoded strictly: no tags, no indefinite lengths, no duplicate keys, only
  int/text/bytes/bool/null/array/map, and the bytes must be exactly what a minimal
  encoder produces again (which also refuses trailing data). Real AWS documents meet
  this profile (see tests/test_attestation_aws.py).
- Optional fields (public_key, user_data, nonce) may be CBOR null, as the NSM emits,
  although attestation_process.md §3.2.2.1 says "no field content can be null".
- Field sizes follow attestation_process.md §3.2.2.2 (user_data and nonce 0..512).
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import cbor2
from cryptography import x509
from cryptography.exceptions import InternalError as CryptographyInternalError
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.x509.oid import ExtensionOID

from shared.errors import AttestationError

__all__ = [
    "AWS_NITRO_ROOT_G1_DER",
    "AWS_NITRO_ROOT_G1_SHA256",
    "MAX_DOCUMENT_SIZE",
    "AttestationDocument",
    "AttestationVerifier",
    "CoseSign1",
    "EnclaveKeys",
    "Reason",
    "VerifiedAttestation",
    "decode_document",
    "decode_user_data",
    "encode_document",
    "encode_user_data",
    "fingerprint",
    "pcrs_from_json",
    "pcrs_to_json",
]


class Reason(StrEnum):
    """Why a document was refused: the ``reason`` of every ``AttestationError`` here."""

    STRUCTURE = "structure"  # not a well-formed COSE_Sign1 / AWS payload
    ALGORITHM = "algorithm"  # protected header is not exactly {1: -35}
    ROOT = "root"  # cabundle[0] is not the pinned root
    CHAIN = "chain"  # X.509 path: issuance, CA flags, path length, usage, leaf key
    CERT_EXPIRED = "cert-expired"  # a certificate's notAfter is before `now`
    CERT_NOT_YET_VALID = "cert-not-yet-valid"  # a certificate's notBefore is after `now`
    SIGNATURE = "signature"  # COSE ES384 signature does not verify
    STALE = "stale"  # timestamp older than max_age_seconds
    FUTURE = "future"  # timestamp ahead of `now` by more than the allowed skew
    DEBUG_MODE = "debug-mode"  # PCR0, PCR1, PCR2 all zero (enclave ran in debug mode)
    PCR_MISMATCH = "pcr-mismatch"  # an expected PCR is absent or differs
    NONCE = "nonce"  # nonce not echoed exactly
    USER_DATA = "user-data"  # user_data is not the key map CONTRACT


# Hard bound on the input, checked before any parsing. The NSM response buffer is
# 0x3000 bytes (nsm driver), so real documents are < 12 KiB.
MAX_DOCUMENT_SIZE: Final = 16 * 1024

# attestation_process.md §3.1: bstr .size (1..16384) payload.
_MAX_PAYLOAD_SIZE: Final = 16384
_MAX_CERT_SIZE: Final = 1024  # §2.2 cert = bytes .size (1..1024)
_MAX_PUBLIC_KEY_SIZE: Final = 1024  # §3.2.2.2 public_key 1..1024
_MAX_USER_DATA_SIZE: Final = 512  # §3.2.2.2 user_data 0..512
_MAX_NONCE_SIZE: Final = 512  # §3.2.2.2 nonce 0..512
_PCR_SIZES: Final = frozenset({32, 48, 64})  # §3.2.2.2 pcr length ∈ {32, 48, 64}
_PCR_COUNT: Final = 32  # §3.2.2.2 index ∈ [0, 32), 1..32 entries
_DIGEST: Final = "SHA384"  # §3.2.2.2 digest ∈ {"SHA384"}
_ES384_SIGNATURE_SIZE: Final = 96  # RFC 9053 §2.1: r || s, 48 bytes each for P-384
_COSE_ALG: Final = 1  # RFC 9052 §3.1 header label "alg"
_COSE_ES384: Final = -35  # RFC 9053 §2.1 ES384
# RFC 9052 §4.2: protected = bstr .cbor {1: -35}, the only header AWS emits.
_PROTECTED_ES384: Final = cbor2.dumps({_COSE_ALG: _COSE_ES384})
_ES384: Final = ec.ECDSA(hashes.SHA384())
# RFC 6979 nonces: signatures are reproducible (test vectors) and never depend on the RNG.
_ES384_DETERMINISTIC: Final = ec.ECDSA(hashes.SHA384(), deterministic_signing=True)

# The payload keys in the order the NSM serialises them (nsm-api src/api/mod.rs
# AttestationDoc field order; the same order as the real documents).
_PAYLOAD_KEYS: Final = (
    "module_id",
    "digest",
    "timestamp",
    "pcrs",
    "certificate",
    "cabundle",
    "public_key",
    "user_data",
    "nonce",
)
_MANDATORY_KEYS: Final = frozenset(_PAYLOAD_KEYS[:6])  # §3.2.2.1 mandatory fields

_USER_DATA_VERSION: Final = 1
_USER_DATA_KEY_SETS: Final = ({"v", "enc", "sig"}, {"v", "enc", "sig", "pq"})
_KEY_SIZE: Final = 32  # X25519 / Ed25519 raw public keys, SHA-256 digest of the PQ key

AWS_NITRO_ROOT_G1_SHA256: Final = "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b"


def _load_aws_root() -> bytes:
    # Shipped beside this module (package data); read by path so that it also works
    # when ``shared`` is imported as a namespace package (editable installs).
    pem = Path(__file__).with_name("aws_nitro_root_g1.pem").read_bytes()
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    # Fail closed at import: a swapped root file must never become the default anchor.
    if hashlib.sha256(der).hexdigest() != AWS_NITRO_ROOT_G1_SHA256:
        raise RuntimeError("aws_nitro_root_g1.pem does not have the pinned fingerprint")
    return der


AWS_NITRO_ROOT_G1_DER: Final = _load_aws_root()


def fingerprint(der: bytes) -> str:
    """Lowercase hex SHA-256 of a DER certificate (how roots are pinned)."""
    return hashlib.sha256(der).hexdigest()


# --------------------------------------------------------------------------- CBOR


def _reject_tag(*_args: object) -> Any:
    raise ValueError("CBOR tags are not allowed")


# Semantic tags cbor2 decodes natively; overriding them makes every tag an error.
# The plain-type walk and the re-encoding check below are the backstop.
_SEMANTIC_TAGS: Final = (0, 1, 2, 3, 4, 5, 21, 22, 23, 24, 25, 28, 29, 30, 32, 35, 36, 37)
_TAG_REJECTORS: Final = {
    tag: _reject_tag for tag in (*_SEMANTIC_TAGS, 100, 256, 258, 260, 261, 1004, 55799)
}


def _check_plain(value: object, depth: int = 0) -> None:
    if depth > 8:
        raise ValueError("nesting too deep")
    if value is None or isinstance(value, bool | int | str | bytes):
        return
    if isinstance(value, list):
        for item in value:
            _check_plain(item, depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, int | str) or isinstance(key, bool):
                raise ValueError("map keys must be integers or text")
            _check_plain(item, depth + 1)
        return
    raise ValueError("unsupported CBOR type")


def _loads_strict(data: bytes, *, canonical: bool = False) -> object:
    """Decode one CBOR item under the strict profile; ValueError on anything else."""
    try:
        value = cbor2.loads(
            data,
            tag_hook=_reject_tag,
            semantic_decoders=_TAG_REJECTORS,
            max_depth=16,
            allow_indefinite=False,
            allow_duplicate_keys=False,
        )
    except (cbor2.CBORError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise ValueError("malformed CBOR") from exc
    _check_plain(value)
    # One encoding per value: minimal lengths, no trailing bytes (cbor2.loads ignores
    # them), and for user_data the RFC 8949 §4.2.1 deterministic key order.
    if cbor2.dumps(value, canonical=canonical) != data:
        raise ValueError("non-minimal CBOR encoding")
    return value


# ----------------------------------------------------------------------- documents


def _is_uint(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_bytes(value: object, low: int, high: int) -> bytes:
    if not isinstance(value, bytes) or not low <= len(value) <= high:
        raise AttestationError(Reason.STRUCTURE)
    return value


def _check_optional_bytes(value: object, low: int, high: int) -> bytes | None:
    return None if value is None else _check_bytes(value, low, high)


@dataclass(frozen=True, slots=True, kw_only=True)
class AttestationDocument:
    """The AWS attestation payload (attestation_process.md §2.2), validated on creation.

    Constructing one with out-of-spec fields raises ``AttestationError("structure")``,
    so neither the encoder nor the decoder can hold an invalid document.
    """

    module_id: str
    digest: str
    timestamp: int  # milliseconds since the Unix epoch, UTC
    pcrs: Mapping[int, bytes]
    certificate: bytes  # DER of the leaf that signs the document
    cabundle: tuple[bytes, ...]  # DER, root first (§3.2.3)
    public_key: bytes | None = None
    user_data: bytes | None = None
    nonce: bytes | None = None

    def __post_init__(self) -> None:
        # §3.2.2.2 "Check content", one rule per field.
        if not isinstance(self.module_id, str) or not self.module_id:
            raise AttestationError(Reason.STRUCTURE)
        if self.digest != _DIGEST:
            raise AttestationError(Reason.STRUCTURE)
        # uint .size 8 and "$value > 0"
        if not _is_uint(self.timestamp) or not 0 < self.timestamp < 2**64:
            raise AttestationError(Reason.STRUCTURE)
        if not isinstance(self.pcrs, Mapping) or not 1 <= len(self.pcrs) <= _PCR_COUNT:
            raise AttestationError(Reason.STRUCTURE)
        for index, value in self.pcrs.items():
            if not _is_uint(index) or not 0 <= index < _PCR_COUNT:
                raise AttestationError(Reason.STRUCTURE)
            if not isinstance(value, bytes) or len(value) not in _PCR_SIZES:
                raise AttestationError(Reason.STRUCTURE)
        _check_bytes(self.certificate, 1, _MAX_CERT_SIZE)
        if not isinstance(self.cabundle, tuple | list) or not self.cabundle:
            raise AttestationError(Reason.STRUCTURE)  # "$length > 0"
        for cert in self.cabundle:
            _check_bytes(cert, 1, _MAX_CERT_SIZE)
        _check_optional_bytes(self.public_key, 1, _MAX_PUBLIC_KEY_SIZE)
        _check_optional_bytes(self.user_data, 0, _MAX_USER_DATA_SIZE)
        _check_optional_bytes(self.nonce, 0, _MAX_NONCE_SIZE)
        object.__setattr__(self, "pcrs", MappingProxyType(dict(sorted(self.pcrs.items()))))
        object.__setattr__(self, "cabundle", tuple(self.cabundle))


@dataclass(frozen=True, slots=True, kw_only=True)
class CoseSign1:
    """The parts of an untagged COSE_Sign1 (RFC 9052 §4.2) as received."""

    protected: bytes  # serialized protected header (bstr .cbor header_map)
    payload: bytes  # serialized AWS payload map
    signature: bytes  # raw r || s

    def to_be_signed(self) -> bytes:
        """The RFC 9052 §4.4 Sig_structure: ["Signature1", protected, external_aad, payload]."""
        return _sig_structure(self.protected, self.payload)


def _sig_structure(protected: bytes, payload: bytes) -> bytes:
    # RFC 9052 §4.4: context "Signature1", body_protected, external_aad = h'' (AWS
    # uses none), payload.
    return cbor2.dumps(["Signature1", protected, b"", payload])


def _payload_map(doc: AttestationDocument) -> dict[str, object]:
    return {
        "module_id": doc.module_id,
        "digest": doc.digest,
        "timestamp": doc.timestamp,
        "pcrs": dict(doc.pcrs),
        "certificate": doc.certificate,
        "cabundle": list(doc.cabundle),
        # Absent optional fields are CBOR null, as the NSM emits them.
        "public_key": doc.public_key,
        "user_data": doc.user_data,
        "nonce": doc.nonce,
    }


def encode_document(doc: AttestationDocument, signing_key: ec.EllipticCurvePrivateKey) -> bytes:
    """Sign ``doc`` as an untagged COSE_Sign1 with ES384 (deterministic, RFC 6979).

    ``signing_key`` must be the P-384 key of ``doc.certificate``.
    """
    if not isinstance(signing_key.curve, ec.SECP384R1):
        raise ValueError("ES384 needs a P-384 signing key")
    payload = cbor2.dumps(_payload_map(doc))
    if len(payload) > _MAX_PAYLOAD_SIZE:
        raise AttestationError(Reason.STRUCTURE)
    der_signature = signing_key.sign(
        _sig_structure(_PROTECTED_ES384, payload), _ES384_DETERMINISTIC
    )
    r, s = decode_dss_signature(der_signature)
    # RFC 9053 §2.1: the signature is r || s, each left-padded to the 48-byte key size.
    signature = r.to_bytes(48, "big") + s.to_bytes(48, "big")
    # RFC 9052 §4.2: [protected, unprotected, payload, signature]; no tag 18.
    return cbor2.dumps([_PROTECTED_ES384, {}, payload, signature])


def decode_document(data: bytes) -> tuple[AttestationDocument, CoseSign1]:
    """Parse and syntactically validate a document; nothing here is authenticated yet.

    Raises ``AttestationError`` with reason ``structure`` or ``algorithm`` only.
    """
    if not isinstance(data, bytes) or not 0 < len(data) <= MAX_DOCUMENT_SIZE:
        raise AttestationError(Reason.STRUCTURE)
    try:
        outer = _loads_strict(data)
    except ValueError:
        raise AttestationError(Reason.STRUCTURE) from None
    # RFC 9052 §4.2 COSE_Sign1 = [Headers, payload: bstr / nil, signature: bstr];
    # attestation_process.md §3.1 fixes the shapes. A tag 18 wrapper never gets here:
    # tags are refused by the strict decoder.
    if not isinstance(outer, list) or len(outer) != 4:
        raise AttestationError(Reason.STRUCTURE)
    protected, unprotected, payload, signature = outer
    if not isinstance(protected, bytes):
        raise AttestationError(Reason.STRUCTURE)
    # The unprotected bucket is not signed; AWS leaves it empty and so must everyone.
    if unprotected != {}:
        raise AttestationError(Reason.STRUCTURE)
    # §3.1: payload bstr .size (1..16384); a detached (nil) payload is refused.
    if not isinstance(payload, bytes) or not 1 <= len(payload) <= _MAX_PAYLOAD_SIZE:
        raise AttestationError(Reason.STRUCTURE)
    if not isinstance(signature, bytes) or len(signature) != _ES384_SIGNATURE_SIZE:
        raise AttestationError(Reason.STRUCTURE)
    try:
        header = _loads_strict(protected)
    except ValueError:
        raise AttestationError(Reason.STRUCTURE) from None
    if not isinstance(header, dict):
        raise AttestationError(Reason.STRUCTURE)
    # §3.1 {1: -35}: exactly ES384 and nothing else (no kid, no crit, no alg agility).
    if header != {_COSE_ALG: _COSE_ES384} or protected != _PROTECTED_ES384:
        raise AttestationError(Reason.ALGORITHM)
    try:
        body = _loads_strict(payload)
    except ValueError:
        raise AttestationError(Reason.STRUCTURE) from None
    doc = _document_from_map(body)
    return doc, CoseSign1(protected=protected, payload=payload, signature=signature)


def _document_from_map(body: object) -> AttestationDocument:
    # §3.2.2.1: only the allowed fields, every mandatory one present.
    if not isinstance(body, dict) or not set(body) <= set(_PAYLOAD_KEYS):
        raise AttestationError(Reason.STRUCTURE)
    if not set(body) >= _MANDATORY_KEYS:
        raise AttestationError(Reason.STRUCTURE)
    if any(body[key] is None for key in _MANDATORY_KEYS):
        raise AttestationError(Reason.STRUCTURE)
    pcrs, cabundle = body["pcrs"], body["cabundle"]
    if not isinstance(pcrs, dict) or not isinstance(cabundle, list):
        raise AttestationError(Reason.STRUCTURE)
    return AttestationDocument(
        module_id=body["module_id"],
        digest=body["digest"],
        timestamp=body["timestamp"],
        pcrs=pcrs,
        certificate=body["certificate"],
        cabundle=tuple(cabundle),
        public_key=body.get("public_key"),
        user_data=body.get("user_data"),
        nonce=body.get("nonce"),
    )


# ----------------------------------------------------------------------- user_data


@dataclass(frozen=True, slots=True, kw_only=True)
class EnclaveKeys:
    """The enclave's public keys carried in user_data (DESIGN §4 CONTRACT)."""

    x25519_public: bytes  # "enc": credential envelopes are sealed to this key
    ed25519_public: bytes  # "sig": signed results verify against this key
    pq_public_sha256: bytes | None = None  # "pq": SHA-256 of the post-quantum public key

    def __post_init__(self) -> None:
        for value in (self.x25519_public, self.ed25519_public):
            if not isinstance(value, bytes) or len(value) != _KEY_SIZE:
                raise ValueError("enclave public keys are 32 raw bytes")
        pq = self.pq_public_sha256
        if pq is not None and (not isinstance(pq, bytes) or len(pq) != _KEY_SIZE):
            raise ValueError("pq is a 32-byte SHA-256 digest")


def encode_user_data(keys: EnclaveKeys) -> bytes:
    """``{"v": 1, "enc": .., "sig": ..(, "pq": ..)}`` in RFC 8949 §4.2.1 deterministic form."""
    value: dict[str, object] = {
        "v": _USER_DATA_VERSION,
        "enc": keys.x25519_public,
        "sig": keys.ed25519_public,
    }
    if keys.pq_public_sha256 is not None:
        value["pq"] = keys.pq_public_sha256
    return cbor2.dumps(value, canonical=True)


def decode_user_data(data: bytes) -> EnclaveKeys:
    """Strict inverse of ``encode_user_data``; ``AttestationError("user-data")`` otherwise."""
    if not isinstance(data, bytes) or len(data) > _MAX_USER_DATA_SIZE:
        raise AttestationError(Reason.USER_DATA)
    try:
        value = _loads_strict(data, canonical=True)
    except ValueError:
        raise AttestationError(Reason.USER_DATA) from None
    if not isinstance(value, dict) or set(value) not in _USER_DATA_KEY_SETS:
        raise AttestationError(Reason.USER_DATA)
    # A new layout needs a new "v" (CONTRACT); unknown versions are refused, not guessed.
    version = value["v"]
    if isinstance(version, bool) or version != _USER_DATA_VERSION:
        raise AttestationError(Reason.USER_DATA)
    try:
        return EnclaveKeys(
            x25519_public=value["enc"],
            ed25519_public=value["sig"],
            pq_public_sha256=value.get("pq"),
        )
    except ValueError:
        raise AttestationError(Reason.USER_DATA) from None


# ------------------------------------------------------------------------ PCR JSON


def pcrs_to_json(pcrs: Mapping[int, bytes]) -> dict[str, str]:
    """``{index: bytes}`` -> ``{"0": "<lowercase hex>", ...}`` sorted by index."""
    return {str(index): pcrs[index].hex() for index in sorted(pcrs)}


def pcrs_from_json(value: object) -> dict[int, bytes]:
    """Strict inverse of ``pcrs_to_json``; ``ValueError`` on anything else."""
    if not isinstance(value, Mapping):
        raise ValueError("PCRs must be a JSON object")
    pcrs: dict[int, bytes] = {}
    for key, text in value.items():
        # Canonical decimal index only ("7", never "07" or "+7").
        if not isinstance(key, str) or not key.isdigit() or str(int(key)) != key:
            raise ValueError("PCR index must be a decimal string")
        index = int(key)
        if not 0 <= index < _PCR_COUNT:
            raise ValueError("PCR index out of range")
        if not isinstance(text, str) or text != text.lower():
            raise ValueError("PCR value must be lowercase hex")
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raise ValueError("PCR value must be lowercase hex") from None
        if len(raw) not in _PCR_SIZES or raw.hex() != text:
            raise ValueError("PCR value must be 32, 48 or 64 bytes of hex")
        pcrs[index] = raw
    return pcrs


# ------------------------------------------------------------------------ verifier


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifiedAttestation:
    """A document that passed every check of ``AttestationVerifier.verify``."""

    doc: AttestationDocument
    keys: EnclaveKeys | None  # None only when the verifier has require_keys=False
    pcrs: Mapping[int, bytes] = field(default_factory=dict)  # every PCR in the document


def _ms_since_epoch(now: datetime) -> int:
    return (now - datetime.fromtimestamp(0, now.tzinfo)) // timedelta(milliseconds=1)


def _check_ca(cert: x509.Certificate, following_cas: int) -> None:
    # attestation_process.md §3.2.3.2 / RFC 5280 §4.2.1.9: basicConstraints critical,
    # cA true, and no more CAs below it than pathLenConstraint allows.
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        raise AttestationError(Reason.CHAIN) from None
    if not constraints.critical or not constraints.value.ca:
        raise AttestationError(Reason.CHAIN)
    path_length = constraints.value.path_length
    if path_length is not None and following_cas > path_length:
        raise AttestationError(Reason.CHAIN)
    # §3.2.3.3: CA certificates carry keyCertSign.
    if not usage.key_cert_sign:
        raise AttestationError(Reason.CHAIN)


def _check_leaf(cert: x509.Certificate) -> None:
    # §3.2.3.3: the target certificate is an end entity ("pathLenConstraint must be
    # undefined") used for digitalSignature.
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        pass
    else:
        if constraints.ca:
            raise AttestationError(Reason.CHAIN)
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        pass
    else:
        if not usage.digital_signature:
            raise AttestationError(Reason.CHAIN)


_UNDERSTOOD_CRITICAL: Final = frozenset({ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.KEY_USAGE})


# Everything cryptography raises on hostile certificates (parse, key, signature).
_X509_ERRORS: Final = (
    ValueError,
    TypeError,
    UnsupportedAlgorithm,
    InvalidSignature,
    CryptographyInternalError,
    x509.DuplicateExtension,
    x509.InvalidVersion,
    x509.UnsupportedGeneralNameType,
)


def _parse_path(
    doc: AttestationDocument,
) -> tuple[list[x509.Certificate], ec.EllipticCurvePublicKey]:
    """[root, intermediates..., leaf] parsed, plus the leaf's P-384 key, or ``chain``."""
    try:
        path = [x509.load_der_x509_certificate(der) for der in (*doc.cabundle, doc.certificate)]
        for cert in path:
            # RFC 5280 §4.1.2.2: serial numbers are positive.
            if cert.serial_number <= 0:
                raise AttestationError(Reason.CHAIN)
            # RFC 5280 §4.2: a critical extension we do not process means reject.
            for extension in cert.extensions:
                if extension.critical and extension.oid not in _UNDERSTOOD_CRITICAL:
                    raise AttestationError(Reason.CHAIN)
        leaf_key = path[-1].public_key()
    except _X509_ERRORS:
        raise AttestationError(Reason.CHAIN) from None
    # ES384 is P-384 with SHA-384 (RFC 9053 §2.1); any other leaf key is refused.
    if not isinstance(leaf_key, ec.EllipticCurvePublicKey) or not isinstance(
        leaf_key.curve, ec.SECP384R1
    ):
        raise AttestationError(Reason.CHAIN)
    return path, leaf_key


class AttestationVerifier:
    """Verifies documents against a pinned root and expected PCRs. Fails closed.

    There is no verifier without expected PCRs. The default root is the AWS Nitro
    root G1; a simulator root must be passed explicitly as ``root_der``.
    """

    __slots__ = (
        "_allow_debug",
        "_expected_pcrs",
        "_max_age_ms",
        "_max_skew_ms",
        "_require_keys",
        "_root_sha256",
    )

    def __init__(
        self,
        *,
        expected_pcrs: Mapping[int, bytes],
        root_der: bytes | None = None,
        allow_debug: bool = False,
        max_age_seconds: int = 300,
        max_clock_skew_seconds: int = 60,
        require_keys: bool = True,
    ) -> None:
        if not isinstance(expected_pcrs, Mapping) or not expected_pcrs:
            raise ValueError("a verifier needs expected PCRs")
        for index, value in expected_pcrs.items():
            if not _is_uint(index) or not 0 <= index < _PCR_COUNT:
                raise ValueError("expected PCR index must be in 0..31")
            if not isinstance(value, bytes) or len(value) not in _PCR_SIZES:
                raise ValueError("expected PCR value must be 32, 48 or 64 bytes")
        if max_age_seconds < 0 or max_clock_skew_seconds < 0:
            raise ValueError("freshness bounds must be non-negative")
        if root_der is None:
            root_der = AWS_NITRO_ROOT_G1_DER
        else:
            try:
                x509.load_der_x509_certificate(root_der)
            except ValueError:
                raise ValueError("root_der is not a DER certificate") from None
        self._expected_pcrs = dict(expected_pcrs)
        self._root_sha256 = hashlib.sha256(root_der).digest()
        self._allow_debug = allow_debug
        self._max_age_ms = max_age_seconds * 1000
        self._max_skew_ms = max_clock_skew_seconds * 1000
        self._require_keys = require_keys

    def verify(self, document: bytes, *, nonce: bytes | None, now: datetime) -> VerifiedAttestation:
        """Check ``document`` at time ``now``; ``nonce=None`` explicitly skips the echo check.

        ``now`` must be timezone-aware. Raises ``AttestationError(reason)``.
        """
        if now.tzinfo is None or now.utcoffset() is None:
            raise ValueError("now must be timezone-aware")
        doc, cose = decode_document(document)

        # §3.2.3: the bundle starts at the root; pin it by the SHA-256 of its DER.
        if not hmac.compare_digest(hashlib.sha256(doc.cabundle[0]).digest(), self._root_sha256):
            raise AttestationError(Reason.ROOT)
        path, leaf_key = _parse_path(doc)

        # RFC 9052 §4.4: verify ES384 over the Sig_structure with the leaf key.
        self._check_signature(leaf_key, cose)

        # §3.2.3 / §3.2.4: [root, interm_1..n, target], each issued by the previous
        # one; CA constraints on all but the target, end-entity rules on the target.
        try:
            for issuer, subject in itertools.pairwise(path):
                subject.verify_directly_issued_by(issuer)
            for position, ca in enumerate(path[:-1]):
                _check_ca(ca, following_cas=len(path) - 2 - position)
            _check_leaf(path[-1])
        except _X509_ERRORS:
            raise AttestationError(Reason.CHAIN) from None

        # Freshness (not in attestation_process.md; it bounds replay of old documents).
        # Checked before certificate dates so an old or future-dated document reports
        # stale/future rather than the dates of a leaf issued around its timestamp.
        age_ms = _ms_since_epoch(now) - doc.timestamp
        if age_ms > self._max_age_ms:
            raise AttestationError(Reason.STALE)
        if -age_ms > self._max_skew_ms:
            raise AttestationError(Reason.FUTURE)

        # §3.2.3.1: every certificate, root included, valid at `now`.
        for cert in path:
            if now < cert.not_valid_before_utc:
                raise AttestationError(Reason.CERT_NOT_YET_VALID)
            if now > cert.not_valid_after_utc:
                raise AttestationError(Reason.CERT_EXPIRED)

        # Debug-mode enclaves report PCR0..2 as zeros (AWS docs); a missing one counts
        # as zero so that a stripped document cannot dodge the check.
        if not self._allow_debug and all(not any(doc.pcrs.get(index, b"")) for index in (0, 1, 2)):
            raise AttestationError(Reason.DEBUG_MODE)
        for index, expected in self._expected_pcrs.items():
            actual = doc.pcrs.get(index)
            if actual is None or not hmac.compare_digest(actual, expected):
                raise AttestationError(Reason.PCR_MISMATCH)

        if nonce is not None and (doc.nonce is None or not hmac.compare_digest(doc.nonce, nonce)):
            raise AttestationError(Reason.NONCE)

        keys: EnclaveKeys | None = None
        if self._require_keys:
            if doc.user_data is None:
                raise AttestationError(Reason.USER_DATA)
            keys = decode_user_data(doc.user_data)
        return VerifiedAttestation(doc=doc, keys=keys, pcrs=doc.pcrs)

    @staticmethod
    def _check_signature(key: ec.EllipticCurvePublicKey, cose: CoseSign1) -> None:
        r = int.from_bytes(cose.signature[:48], "big")
        s = int.from_bytes(cose.signature[48:], "big")
        try:
            key.verify(encode_dss_signature(r, s), cose.to_be_signed(), _ES384)
        except InvalidSignature:
            raise AttestationError(Reason.SIGNATURE) from None
