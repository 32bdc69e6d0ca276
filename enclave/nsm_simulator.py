"""NSM simulator: an ``NsmDevice`` for development and tests. Side: enclave (dev only).

Speaks the same CBOR request/response encoding as ``/dev/nsm`` (``enclave.nsm``) with
the same limits, and signs attestation documents with the same structure as AWS's,
under a generated P-384 chain that mimics the AWS certificate profiles:

    root  (persisted in state_dir, ~30 years, CA, no path length, keyCertSign|cRLSign)
      └── intermediate  (in memory, 5 days, CA pathlen 0, keyCertSign|cRLSign)
            └── leaf    (in memory, 3 hours like AWS, end entity, digitalSignature;
                         notBefore 60 s before issue, renewed 30 min before expiry)

The root certificate is ``state_dir/nsm-root.pem`` (its key ``nsm-root-key.pem``,
mode 0600) so a restarted simulator keeps the same root and clients can pin it
*explicitly*; it is never trusted by default (``shared.attestation`` pins AWS).

Behaviour (nsm-api ``src/api/mod.rs``, ``nsm-test/src/bin/nsm-check.rs``):
- request > 0x1000 bytes -> ``InputTooLarge``; undecodable request -> ``InvalidArgument``;
- 32 PCRs of 48 bytes (SHA-384); PCR0..15 are set and locked at boot; extending a
  locked PCR -> ``ReadOnlyIndex``; index >= 32 -> ``InvalidIndex``;
  ExtendPCR: PCR = SHA-384(PCR || data); LockPCR on PCR0..15 -> ``ReadOnlyIndex``
  (nsm-check expects an error), on a locked user PCR it is idempotent; LockPCRs(range)
  locks [0, range), range > 32 -> ``InvalidIndex``;
- Attestation: user_data or nonce > 512 bytes, public_key > 1024 -> ``InputTooLarge``
  (the limits of attestation_process.md §3.2.2.2; real hardware is reported to accept
  more, see ``enclave.nsm.NsmClient``), empty public_key -> ``InvalidArgument``;
  documents hold PCR0..15 plus every user PCR (>= 16) that was extended or locked
  (the AWS pcr16 vector shows an extended PCR16);
- GetRandom returns 256 bytes from ``os.urandom``.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from enclave.nsm import (
    NSM_REQUEST_MAX_SIZE,
    NSM_RESPONSE_MAX_SIZE,
    AttestationRequest,
    AttestationResponse,
    DescribeNsmRequest,
    DescribeNsmResponse,
    DescribePcrRequest,
    DescribePcrResponse,
    ErrorCode,
    ErrorResponse,
    ExtendPcrRequest,
    ExtendPcrResponse,
    GetRandomRequest,
    GetRandomResponse,
    LockPcrRequest,
    LockPcrResponse,
    LockPcrsRequest,
    LockPcrsResponse,
    NsmError,
    Request,
    Response,
    decode_request,
    encode_response,
)
from shared.attestation import AttestationDocument, encode_document, fingerprint

__all__ = [
    "INTERMEDIATE_LIFETIME",
    "LEAF_LIFETIME",
    "ROOT_CERT_FILE",
    "ROOT_KEY_FILE",
    "ROOT_LIFETIME",
    "Clock",
    "KeyFactory",
    "NsmSimulator",
    "issue_intermediate",
    "issue_leaf",
    "issue_root",
]

Clock = Callable[[], datetime]
KeyFactory = Callable[[], ec.EllipticCurvePrivateKey]

ROOT_CERT_FILE: Final = "nsm-root.pem"
ROOT_KEY_FILE: Final = "nsm-root-key.pem"
ROOT_LIFETIME: Final = timedelta(days=30 * 365)  # AWS root G1: 30 years
INTERMEDIATE_LIFETIME: Final = timedelta(days=5)  # AWS zonal intermediates: ~5-6 days
LEAF_LIFETIME: Final = timedelta(hours=3)  # AWS enclave leaf: 3 hours
# Re-issue the leaf when less than this is left, so a fresh document stays verifiable.
_LEAF_MIN_REMAINING: Final = timedelta(minutes=30)
_BACKDATE: Final = timedelta(hours=1)  # CA notBefore slack for skewed verifier clocks
# Leaf notBefore slack (AWS uses ~3 s): a verifier whose clock lags by up to the
# default allowed skew (60 s) must not see a fresh leaf as not yet valid.
_LEAF_BACKDATE: Final = timedelta(seconds=60)

_PCR_COUNT: Final = 32
_PCR_SIZE: Final = 48
_BOOT_LOCKED: Final = frozenset(range(16))
_RANDOM_SIZE: Final = 256
_MAX_USER_DATA: Final = 512
_MAX_NONCE: Final = 512
_MAX_PUBLIC_KEY: Final = 1024
_VERSION: Final = (1, 0, 0)
_CERT_HASH: Final = hashes.SHA384()  # AWS chain signatures: ecdsa-with-SHA384


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _new_p384_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


# ------------------------------------------------------------ certificate profiles


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "perf-aggregator"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "NSM simulator"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _serial(public_key: ec.EllipticCurvePublicKey, not_before: datetime) -> int:
    # Positive, < 2**127, unique per key: deterministic so vectors are reproducible.
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    digest = hashlib.sha256(spki + not_before.isoformat().encode()).digest()
    return (int.from_bytes(digest[:16], "big") >> 1) | 1


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def _second(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(microsecond=0)


def issue_root(key: ec.EllipticCurvePrivateKey, *, now: datetime) -> x509.Certificate:
    """Self-signed simulator root: CA without path length, like the AWS root G1."""
    not_before = _second(now) - _BACKDATE
    public_key = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(_name("sim.nitro-enclaves"))
        .issuer_name(_name("sim.nitro-enclaves"))
        .public_key(public_key)
        .serial_number(_serial(public_key, not_before))
        .not_valid_before(not_before)
        .not_valid_after(not_before + ROOT_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(_ca_usage(), critical=True)
        .sign(key, _CERT_HASH, ecdsa_deterministic=True)
    )


def issue_intermediate(
    issuer_key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    *,
    now: datetime,
) -> x509.Certificate:
    """CA directly under the root that may only issue end-entity certificates."""
    not_before = _second(now) - _BACKDATE
    public_key = key.public_key()
    label = fingerprint(
        public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )[:16]
    return (
        x509.CertificateBuilder()
        .subject_name(_name(f"{label}.zonal.sim.nitro-enclaves"))
        .issuer_name(issuer.subject)
        .public_key(public_key)
        .serial_number(_serial(public_key, not_before))
        .not_valid_before(not_before)
        .not_valid_after(not_before + INTERMEDIATE_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(_ca_usage(), critical=True)
        .sign(issuer_key, _CERT_HASH, ecdsa_deterministic=True)
    )


def issue_leaf(
    issuer_key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    *,
    module_id: str,
    not_before: datetime,
    lifetime: timedelta = LEAF_LIFETIME,
) -> x509.Certificate:
    """End-entity certificate that signs documents, profile of the AWS enclave leaf."""
    start = _second(not_before)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(f"{module_id}.sim.nitro-enclaves"))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(_serial(key.public_key(), start))
        .not_valid_before(start)
        .not_valid_after(start + lifetime)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=False,
        )
        .sign(issuer_key, _CERT_HASH, ecdsa_deterministic=True)
    )


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


# ----------------------------------------------------------------------- root store


def _write_private(path: Path, data: bytes) -> None:
    # Written to a fresh 0600 file, then renamed: never world-readable, never partial.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _write_public(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def _same_key(key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> bool:
    encoding, fmt = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return key.public_key().public_bytes(encoding, fmt) == cert.public_key().public_bytes(
        encoding, fmt
    )


def _load_or_create_root(
    state_dir: Path, key_factory: KeyFactory, now: datetime
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_path, cert_path = state_dir / ROOT_KEY_FILE, state_dir / ROOT_CERT_FILE
    if key_path.exists():
        if key_path.stat().st_mode & 0o077:
            raise RuntimeError(f"{key_path} must not be readable by group or others (chmod 600)")
        loaded = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey) or not isinstance(
            loaded.curve, ec.SECP384R1
        ):
            raise RuntimeError(f"{key_path} is not a P-384 private key")
        key = loaded
    elif cert_path.exists():
        raise RuntimeError(f"{cert_path} exists without its key {ROOT_KEY_FILE}")
    else:
        key = key_factory()
        _write_private(
            key_path,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
    if cert_path.exists():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        if not _same_key(key, cert):
            raise RuntimeError(f"{cert_path} does not match {ROOT_KEY_FILE}")
    else:
        # Key written but certificate not (first start, or a crash in between): the
        # certificate was never published, so issuing it now is safe.
        cert = issue_root(key, now=now)
        _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


# ------------------------------------------------------------------------ simulator


def _ms(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


class NsmSimulator:
    """In-process NSM (``NsmDevice``). Thread-safe; never use it in production."""

    def __init__(
        self,
        state_dir: Path,
        pcrs: Mapping[int, bytes],
        *,
        clock: Clock = _utc_now,
        module_id: str | None = None,
        key_factory: KeyFactory = _new_p384_key,
    ) -> None:
        """Boot with PCR0..15 from ``pcrs`` (missing ones zero) and load or create the root.

        ``key_factory`` makes every P-384 key (tests pass a deterministic one);
        ``module_id`` defaults to ``i-0sim<root id>-enc<random>`` like AWS's ids.
        """
        registers = [bytes(_PCR_SIZE)] * _PCR_COUNT
        for index, value in pcrs.items():
            if index not in _BOOT_LOCKED:
                raise ValueError("boot PCRs are 0..15")
            if not isinstance(value, bytes) or len(value) != _PCR_SIZE:
                raise ValueError("PCRs are 48 bytes (SHA-384)")
            registers[index] = value
        self._state_dir = Path(state_dir)
        self._clock = clock
        self._key_factory = key_factory
        self._registers = registers
        self._locked: set[int] = set(_BOOT_LOCKED)
        self._extended: set[int] = set()
        self._mutex = threading.Lock()
        self._root_key, self._root = _load_or_create_root(self._state_dir, key_factory, self._now())
        root_id = fingerprint(_der(self._root))[:13]
        self._module_id = module_id or f"i-0sim{root_id}-enc{os.urandom(8).hex()}"
        self._intermediate: tuple[ec.EllipticCurvePrivateKey, x509.Certificate] | None = None
        self._leaf: tuple[ec.EllipticCurvePrivateKey, x509.Certificate] | None = None

    @property
    def root_pem_path(self) -> Path:
        """The simulator root certificate (PEM) that dev clients pin explicitly."""
        return self._state_dir / ROOT_CERT_FILE

    @property
    def root_der(self) -> bytes:
        """DER of the simulator root (``AttestationVerifier(root_der=...)``)."""
        return _der(self._root)

    @property
    def module_id(self) -> str:
        """The NSM module id reported in documents and DescribeNSM."""
        return self._module_id

    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise ValueError("the simulator clock must return aware datetimes")
        return now.astimezone(UTC)

    def process(self, request: bytes) -> bytes:
        """Handle one CBOR request exactly like ``/dev/nsm`` would."""
        if len(request) > NSM_REQUEST_MAX_SIZE:
            return encode_response(ErrorResponse(code=ErrorCode.INPUT_TOO_LARGE))
        try:
            decoded = decode_request(request)
        except NsmError as exc:
            return encode_response(ErrorResponse(code=exc.code))
        with self._mutex:
            response = self._handle(decoded)
        encoded = encode_response(response)
        if len(encoded) > NSM_RESPONSE_MAX_SIZE:
            return encode_response(ErrorResponse(code=ErrorCode.BUFFER_TOO_SMALL))
        return encoded

    def _handle(self, request: Request) -> Response:
        match request:
            case DescribePcrRequest(index=index):
                if index >= _PCR_COUNT:
                    return ErrorResponse(code=ErrorCode.INVALID_INDEX)
                return DescribePcrResponse(lock=index in self._locked, data=self._registers[index])
            case ExtendPcrRequest(index=index, data=data):
                if index >= _PCR_COUNT:
                    return ErrorResponse(code=ErrorCode.INVALID_INDEX)
                if index in self._locked:
                    return ErrorResponse(code=ErrorCode.READ_ONLY_INDEX)
                value = hashlib.sha384(self._registers[index] + data).digest()
                self._registers[index] = value
                self._extended.add(index)
                return ExtendPcrResponse(data=value)
            case LockPcrRequest(index=index):
                if index >= _PCR_COUNT:
                    return ErrorResponse(code=ErrorCode.INVALID_INDEX)
                if index in _BOOT_LOCKED:
                    return ErrorResponse(code=ErrorCode.READ_ONLY_INDEX)
                self._locked.add(index)
                return LockPcrResponse()
            case LockPcrsRequest(range=range_):
                if range_ > _PCR_COUNT:
                    return ErrorResponse(code=ErrorCode.INVALID_INDEX)
                self._locked.update(range(range_))
                return LockPcrsResponse()
            case DescribeNsmRequest():
                major, minor, patch = _VERSION
                return DescribeNsmResponse(
                    version_major=major,
                    version_minor=minor,
                    version_patch=patch,
                    module_id=self._module_id,
                    max_pcrs=_PCR_COUNT,
                    locked_pcrs=tuple(sorted(self._locked)),
                    digest="SHA384",
                )
            case GetRandomRequest():
                return GetRandomResponse(random=os.urandom(_RANDOM_SIZE))
            case AttestationRequest():
                return self._attest(request)

    def _attest(self, request: AttestationRequest) -> Response:
        user_data, nonce, public_key = request.user_data, request.nonce, request.public_key
        if (user_data is not None and len(user_data) > _MAX_USER_DATA) or (
            nonce is not None and len(nonce) > _MAX_NONCE
        ):
            return ErrorResponse(code=ErrorCode.INPUT_TOO_LARGE)
        if public_key is not None and len(public_key) > _MAX_PUBLIC_KEY:
            return ErrorResponse(code=ErrorCode.INPUT_TOO_LARGE)
        if public_key is not None and not public_key:
            return ErrorResponse(code=ErrorCode.INVALID_ARGUMENT)
        now = self._now()
        leaf_key, leaf, cabundle = self._signing_chain(now)
        pcrs = {
            index: self._registers[index]
            for index in range(_PCR_COUNT)
            if index in _BOOT_LOCKED or index in self._extended or index in self._locked
        }
        document = AttestationDocument(
            module_id=self._module_id,
            digest="SHA384",
            timestamp=_ms(now),
            pcrs=pcrs,
            certificate=_der(leaf),
            cabundle=cabundle,
            public_key=public_key,
            user_data=user_data,
            nonce=nonce,
        )
        return AttestationResponse(document=encode_document(document, leaf_key))

    def _signing_chain(
        self, now: datetime
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, tuple[bytes, ...]]:
        intermediate = self._intermediate
        if (
            intermediate is None
            or now < intermediate[1].not_valid_before_utc
            or now + LEAF_LIFETIME > intermediate[1].not_valid_after_utc
        ):
            key = self._key_factory()
            intermediate = (key, issue_intermediate(self._root_key, self._root, key, now=now))
            self._intermediate = intermediate
            self._leaf = None
        leaf = self._leaf
        if (
            leaf is None
            or now < leaf[1].not_valid_before_utc
            or now + _LEAF_MIN_REMAINING > leaf[1].not_valid_after_utc
        ):
            key = self._key_factory()
            certificate = issue_leaf(
                intermediate[0],
                intermediate[1],
                key,
                module_id=self._module_id,
                not_before=now - _LEAF_BACKDATE,
            )
            leaf = (key, certificate)
            self._leaf = leaf
        return leaf[0], leaf[1], (_der(self._root), _der(intermediate[1]))
