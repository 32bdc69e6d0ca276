"""Client SDK: attest, encrypt to the attested key, submit, verify results. Side: client.

The secure path is the only path: ``register`` fetches a quote with a fresh nonce,
verifies it against the pinned root and PCRs, and encrypts the credentials to the
X25519 key found *inside the verified document*; keys the server sends beside the
document are only cross-checked, never used. Reports are verified against the
Ed25519 key from the same verified document.

Three ways in:

- :class:`SecureClient`, async (aiohttp): ``async with SecureClient(...) as client``.
- :class:`SyncSecureClient`, the same methods for plain scripts: it runs a private
  event loop on a thread of its own, so it also works where a loop is already running.
- :func:`verify_attestation` and :func:`encrypt_credentials`, the seed's
  ``CryptoHelper.verifyAttestation`` / ``encryptCredentials`` as functions, for callers
  that do their own HTTP.

This module imports no parent or enclave code (no psycopg, no ccxt).

Exceptions::

    ClientError
    ├── AttestationFailed   the quote did not verify (reason says which check)
    ├── ServerRejected      the server answered with an error (status, code, message)
    ├── VerificationFailed  a signed result or an owner-encrypted reply did not verify
    └── Unreachable         no HTTPS answer from the server

Messages never contain credentials, session ids or record contents.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import re
import ssl
import threading
import time
import weakref
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TypeVar

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding

from shared.attestation import AWS_NITRO_ROOT_G1_DER, AttestationVerifier, VerifiedAttestation
from shared.disclosure import DisclosureError, open_disclosure
from shared.encoding import b64decode, b64encode
from shared.envelope import DEFAULT_ALG, Credentials, Envelope, EnvelopeOpener, seal
from shared.envelope import encrypt_credentials as _seal_credentials
from shared.errors import AttestationError, EnvelopeError, PerfAggError, SignatureError
from shared.ids import is_session_id, session_hash
from shared.merkle import TreeHead
from shared.owner import owner_x25519_private
from shared.signing import sign_owner_proof, verify_payload
from shared.translog import TransparencyLogError, VerifiedLog, verify_log

__all__ = [
    "AWS_ROOT",
    "AttestationFailed",
    "ClientError",
    "Quote",
    "RecordInfo",
    "Registration",
    "SecureClient",
    "ServerRejected",
    "SessionLog",
    "SignedReport",
    "SyncSecureClient",
    "UnsealedRecord",
    "Unreachable",
    "VerificationFailed",
    "encrypt_credentials",
    "load_root",
    "verify_attestation",
]

AWS_ROOT: Final = "aws"
"""``root=AWS_ROOT`` names the AWS Nitro root G1 built into ``shared`` (the default)."""

_MAX_QUOTE_B64: Final = 16384
_LOG_ATTEMPTS: Final = 3
_RECORD_ID: Final = re.compile(r"\A[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
_T = TypeVar("_T")


class ClientError(PerfAggError):
    """Base of every error the client SDK raises."""


class AttestationFailed(ClientError):
    """The enclave's attestation did not verify; nothing was encrypted or sent."""

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        # The shared.attestation.Reason value when a verifier check failed, else None.
        self.reason = reason


class ServerRejected(ClientError):
    """The server refused the request with a JSON error."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class VerificationFailed(ClientError):
    """A signed result does not verify against the attested key, or a reply is not ours."""


class Unreachable(ClientError):
    """The server could not be reached over HTTPS (connection, TLS or timeout)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Quote:
    """A verified attestation: the keys clients may use come from here only."""

    verified: VerifiedAttestation
    enc_public: bytes
    sig_public: bytes
    pcr0: str
    # The hybrid ML-KEM-768+X25519 key, present only when its SHA-256 matched user_data "pq".
    pq_public: bytes | None = None
    # The document exactly as verified and the nonce it echoes (for proof bundles).
    document: bytes = field(default=b"", repr=False)
    nonce: bytes | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Registration:
    """A live session. ``session_id`` is a bearer secret; ``owner_key`` signs owner operations."""

    session_id: str = field(repr=False)
    expires_at: str
    owner_key: Ed25519PrivateKey | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionLog:
    """A transparency log whose every entry verified under ``verified.head``."""

    verified: VerifiedLog
    body: dict[str, Any]  # the response (all pages), as a proof bundle keeps it
    live: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class SignedReport:
    """A report whose signature verified against the attested key."""

    payload: dict[str, Any]
    signature: str
    merkle_root: str
    logs_url: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordInfo:
    """Public metadata of a sealed record (what the parent stores beside the blob)."""

    id: str
    label: str
    created_at: str


@dataclass(frozen=True, slots=True, kw_only=True)
class UnsealedRecord:
    """A record decrypted with the owner key; ``data`` is the plaintext that was sealed."""

    id: str
    label: str
    data: bytes = field(repr=False)


# --------------------------------------------------------------------------- CryptoHelper


def load_root(root: str | os.PathLike[str]) -> bytes:
    """DER of the attestation root named by ``root``: ``"aws"`` (built in) or a PEM/DER file.

    Raises ValueError naming the file when it cannot be read or is not a certificate.
    """
    if isinstance(root, str) and root == AWS_ROOT:
        return AWS_NITRO_ROOT_G1_DER
    path = Path(root)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read the root certificate {path}: {exc.strerror}") from None
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data).public_bytes(Encoding.DER)
        return x509.load_der_x509_certificate(data).public_bytes(Encoding.DER)
    except ValueError:
        raise ValueError(f"{path} is not a PEM or DER X.509 certificate") from None


def _verifier(
    expected_pcrs: Mapping[int, bytes], root_der: bytes | None, allow_debug: bool
) -> AttestationVerifier:
    # AttestationVerifier refuses empty expected PCRs: no client without a pin.
    return AttestationVerifier(
        expected_pcrs=expected_pcrs, root_der=root_der, allow_debug=allow_debug
    )


def _checked(
    verifier: AttestationVerifier,
    document: bytes,
    *,
    nonce: bytes | None,
    now: datetime,
    pq_pubkey: object,
) -> Quote:
    try:
        verified = verifier.verify(document, nonce=nonce, now=now)
    except AttestationError as exc:
        raise AttestationFailed(
            f"attestation rejected: {exc.reason}", reason=str(exc.reason)
        ) from None
    keys = verified.keys
    assert keys is not None  # require_keys=True
    return Quote(
        verified=verified,
        enc_public=keys.x25519_public,
        sig_public=keys.ed25519_public,
        pcr0=verified.pcrs[0].hex(),
        pq_public=_checked_pq_key(pq_pubkey, keys.pq_public_sha256),
        document=document,
        nonce=nonce,
    )


def verify_attestation(
    document: bytes | str,
    nonce: bytes | None,
    expected_pcrs: Mapping[int, bytes],
    *,
    root_der: bytes | None = None,
    allow_debug: bool = False,
    now: datetime | None = None,
    pq_pubkey: str | None = None,
) -> Quote:
    """Verify an attestation document (seed ``CryptoHelper.verifyAttestation``).

    ``document`` is the COSE_Sign1 bytes or the ``quote`` field (base64) of
    ``GET /attestation/quote``. Checks the chain to ``root_der`` (default: AWS Nitro root
    G1), the ES384 signature, dates and freshness at ``now`` (default: the current time),
    ``expected_pcrs`` (required, never empty), the nonce echo (``nonce=None`` skips it, for
    documents verified later than they were fetched) and the key map in user_data.
    ``pq_pubkey`` is the quote's optional ``pq_pubkey``, kept only if it matches the hash
    inside the document. Returns the :class:`Quote` whose keys may be used; raises
    :class:`AttestationFailed` (``reason`` names the failed check) otherwise.
    """
    if isinstance(document, str):
        try:
            document = b64decode(document, max_len=_MAX_QUOTE_B64)
        except ValueError:
            raise AttestationFailed("the quote is not valid base64", reason="structure") from None
    verifier = _verifier(expected_pcrs, root_der, allow_debug)
    return _checked(
        verifier,
        document,
        nonce=nonce,
        now=datetime.now(UTC) if now is None else now,
        pq_pubkey=pq_pubkey,
    )


def encrypt_credentials(
    quote: Quote,
    *,
    exchange: str,
    api_key: str,
    api_secret: str,
    passphrase: str | None = None,
    owner_pub: bytes | None = None,
    label: str = "main",
    ttl: int = 86_400,
    alg: str = DEFAULT_ALG,
    issued_at: int | None = None,
) -> Envelope:
    """Encrypt credentials to a verified enclave (seed ``CryptoHelper.encryptCredentials``).

    Takes a :class:`Quote` (from :func:`verify_attestation` or ``SecureClient.attest``),
    never a bare key, so only keys from a verified document can be used. Returns the
    envelope; ``envelope.to_wire()`` is the body of ``POST /enclave/submit_key``.
    Raises ValueError naming a bad field (never its value).
    """
    if not isinstance(quote, Quote):
        raise TypeError("quote must be a verified Quote")
    credentials = Credentials(
        exchange=exchange,
        api_key=api_key,
        api_secret=api_secret,
        passphrase=passphrase,
        owner_pub=owner_pub,
    )
    metadata = {
        "exchange": exchange,
        "label": label,
        "ttl": ttl,
        "issued_at": int(time.time()) if issued_at is None else issued_at,
    }
    try:
        return _seal_credentials(
            credentials,
            metadata=metadata,
            alg=alg,
            recipient_x25519=quote.enc_public,
            recipient_pq=quote.pq_public,
        )
    except EnvelopeError as exc:
        raise ValueError(str(exc)) from None


def _checked_pq_key(unverified_b64: object, attested_sha256: bytes | None) -> bytes | None:
    """The hybrid key sent beside the document, accepted only if it hashes to user_data "pq"."""
    if attested_sha256 is None or not isinstance(unverified_b64, str):
        return None
    try:
        unverified = b64decode(unverified_b64, max_len=4096)
    except ValueError:
        raise AttestationFailed("pq_pubkey is not valid base64", reason="user-data") from None
    if not hmac.compare_digest(hashlib.sha256(unverified).digest(), attested_sha256):
        raise AttestationFailed("pq_pubkey does not match the attested hash", reason="user-data")
    return unverified


def _malformed(what: str) -> ServerRejected:
    # A 2xx whose body is not what the CONTRACT says: reported like a refusal.
    return ServerRejected(502, "bad_response", f"the server's {what} response is malformed")


def _owner_headers(registration: Registration, method: str) -> dict[str, str]:
    if registration.owner_key is None:
        return {}
    proof = sign_owner_proof(
        registration.owner_key,
        method=method,
        session_id=registration.session_id,
        timestamp=int(time.time()),
    )
    return {"X-Owner-Timestamp": str(proof.timestamp), "X-Owner-Signature": proof.signature}


def _session_id(value: str) -> str:
    # Checked before it goes into a URL path; the message never repeats the value.
    if not is_session_id(value):
        raise ValueError("not a session id (43 characters of URL-safe base64)")
    return value


def _record_id(value: str) -> str:
    if not isinstance(value, str) or not _RECORD_ID.match(value):
        raise ValueError("a record id is a lowercase UUID")
    return value


def _record_info(value: object) -> RecordInfo:
    if not isinstance(value, dict) or not all(
        isinstance(value.get(key), str) for key in ("id", "label", "created_at")
    ):
        raise _malformed("record")
    return RecordInfo(id=value["id"], label=value["label"], created_at=value["created_at"])


# --------------------------------------------------------------------------- async client


class SecureClient:
    """Talk to a perf-aggregator parent; verify everything the enclave signs.

    ``root`` names the attestation root: ``"aws"`` (AWS Nitro root G1, the default) or a
    PEM/DER file, such as the local stack's ``.run/nsm-root.pem``; ``root_der`` passes the
    DER bytes instead (give one or the other). ``ca_file`` is the CA bundle for the
    server's HTTPS certificate (default: the system's).
    """

    def __init__(
        self,
        base_url: str,
        *,
        expected_pcrs: Mapping[int, bytes],
        root: str | os.PathLike[str] | None = None,
        root_der: bytes | None = None,
        ca_file: str | os.PathLike[str] | None = None,
        allow_debug: bool = False,
        timeout: float = 30.0,
    ) -> None:
        if root is not None and root_der is not None:
            raise ValueError("give root or root_der, not both")
        if root is not None:
            root_der = load_root(root)
        if not base_url.startswith("https://"):
            raise ValueError("base_url must be an https:// URL")
        self._verifier = _verifier(expected_pcrs, root_der, allow_debug)
        self._base = base_url.rstrip("/")
        try:
            self._ssl = ssl.create_default_context(
                cafile=None if ca_file is None else os.fspath(ca_file)
            )
        except (OSError, ssl.SSLError):
            raise ValueError(f"cannot load the CA file {ca_file}") from None
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._http: aiohttp.ClientSession | None = None
        self._quote: Quote | None = None

    @property
    def base_url(self) -> str:
        """The server this client talks to."""
        return self._base

    @property
    def quote(self) -> Quote | None:
        """The last quote this client verified (None before the first ``attest``)."""
        return self._quote

    async def __aenter__(self) -> SecureClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP connection pool."""
        if self._http is not None:
            await self._http.close()
            self._http = None

    # ------------------------------------------------------------------ HTTP

    async def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._http.request(
                method, self._base + path, ssl=self._ssl, **kwargs
            ) as response:
                try:
                    body = await response.json(content_type=None)
                except ValueError:
                    body = None
                if response.status >= 400:
                    error = body.get("error", {}) if isinstance(body, dict) else {}
                    if not isinstance(error, dict):
                        error = {}
                    raise ServerRejected(
                        response.status,
                        str(error.get("code", "unknown")),
                        str(error.get("message", response.reason)),
                    )
                return body
        except aiohttp.ClientConnectorCertificateError:
            raise Unreachable(
                f"the TLS certificate of {self._base} is not trusted "
                "(pass the server's CA bundle as ca_file)"
            ) from None
        except aiohttp.ClientConnectorError as exc:
            reason = exc.os_error.strerror or type(exc.os_error).__name__
            raise Unreachable(f"cannot connect to {self._base}: {reason}") from None
        except TimeoutError:
            raise Unreachable(
                f"no answer from {self._base} within {self._timeout.total:g} s"
            ) from None
        except aiohttp.ClientError as exc:
            raise Unreachable(f"cannot reach {self._base}: {type(exc).__name__}") from None

    # ------------------------------------------------------------------ attestation

    async def attest(self) -> Quote:
        """Fetch a quote for a fresh nonce and verify it (chain, PCRs, nonce, freshness)."""
        nonce = os.urandom(32)
        body = await self._request("GET", "/attestation/quote", params={"nonce": nonce.hex()})
        if not isinstance(body, dict) or not isinstance(body.get("quote"), str):
            raise AttestationFailed("the server's quote response is malformed", reason="structure")
        try:
            document = b64decode(body["quote"], max_len=_MAX_QUOTE_B64)
        except ValueError:
            raise AttestationFailed("the quote is not valid base64", reason="structure") from None
        quote = _checked(
            self._verifier,
            document,
            nonce=nonce,
            now=datetime.now(UTC),
            pq_pubkey=body.get("pq_pubkey"),
        )
        # The convenience fields must agree with the verified document; a server that
        # sends other keys beside the document is lying, and we never use them anyway.
        if (
            body.get("enclave_pubkey") != b64encode(quote.enc_public)
            or body.get("image_hash") != quote.pcr0
        ):
            raise AttestationFailed(
                "quote fields disagree with the attested document", reason="structure"
            )
        self._quote = quote
        return quote

    async def _current_quote(self) -> Quote:
        return self._quote or await self.attest()

    # ------------------------------------------------------------------ sessions

    async def register(
        self,
        *,
        exchange: str,
        api_key: str,
        api_secret: str,
        passphrase: str | None = None,
        label: str = "main",
        ttl: int = 86_400,
        with_owner_key: bool = True,
        alg: str = DEFAULT_ALG,
    ) -> Registration:
        """Attest, encrypt the credentials to the attested key, submit; return the session.

        A fresh quote is fetched and verified first; a failed attestation raises
        :class:`AttestationFailed` before the credentials are encrypted or sent.
        """
        quote = await self.attest()
        owner_key = Ed25519PrivateKey.generate() if with_owner_key else None
        envelope = encrypt_credentials(
            quote,
            exchange=exchange,
            api_key=api_key,
            api_secret=api_secret,
            passphrase=passphrase,
            owner_pub=None if owner_key is None else owner_key.public_key().public_bytes_raw(),
            label=label,
            ttl=ttl,
            alg=alg,
        )
        body = await self._request("POST", "/enclave/submit_key", json=envelope.to_wire())
        if not isinstance(body, dict) or not all(
            isinstance(body.get(key), str) for key in ("session_id", "expires_at")
        ):
            raise _malformed("submit_key")
        return Registration(
            session_id=body["session_id"], expires_at=body["expires_at"], owner_key=owner_key
        )

    async def aggregates(self, session_id: str) -> SignedReport:
        """Request a signed report and verify it against the attested signing key."""
        quote = await self._current_quote()
        body = await self._request(
            "POST", "/enclave/request_aggregates", json={"session_id": session_id}
        )
        try:
            signed = body["aggregates_signed"]
            payload, signature = signed["payload"], signed["signature"]
        except (KeyError, TypeError):
            raise VerificationFailed("the report response is malformed") from None
        if not isinstance(payload, dict) or not isinstance(signature, str):
            raise VerificationFailed("the report response is malformed")
        try:
            verify_payload(quote.sig_public, payload, signature)
        except SignatureError:
            raise VerificationFailed("the report signature does not verify") from None
        if payload.get("pcr0") != quote.pcr0:
            raise VerificationFailed("the report names another enclave measurement")
        # A validly signed report of *another* session must not pass for ours.
        if payload.get("session_hash") != session_hash(session_id).hex():
            raise VerificationFailed("the report is for another session")
        return SignedReport(
            payload=payload,
            signature=signature,
            merkle_root=str(body.get("merkle_root")),
            logs_url=str(body.get("logs_url")),
        )

    async def summary(self, session_id: str) -> dict[str, Any]:
        """Headline figures and polling state (not signed: use ``aggregates`` for proof)."""
        result = await self._request("GET", f"/enclave/summary/{_session_id(session_id)}")
        if not isinstance(result, dict):
            raise _malformed("summary")
        return result

    async def metrics(self, session_id: str) -> dict[str, Any]:
        """Detailed metrics (not signed: use ``aggregates`` for proof)."""
        result = await self._request("GET", f"/enclave/metrics/{_session_id(session_id)}")
        if not isinstance(result, dict):
            raise _malformed("metrics")
        return result

    async def revoke(self, registration: Registration) -> dict[str, Any]:
        """Revoke the session, signing an owner proof when the session has an owner key."""
        body: dict[str, Any] = {"session_id": registration.session_id}
        if registration.owner_key is not None:
            proof = sign_owner_proof(
                registration.owner_key,
                method="revoke",
                session_id=registration.session_id,
                timestamp=int(time.time()),
            )
            body |= proof.to_wire()
        result = await self._request("POST", "/enclave/revoke", json=body)
        if not isinstance(result, dict):
            raise _malformed("revoke")
        return result

    # ------------------------------------------------------------------ records

    async def seal_record(
        self, registration: Registration, data: bytes, *, label: str
    ) -> RecordInfo:
        """Encrypt ``data`` (1..16384 bytes) to the attested enclave and have it sealed.

        The parent stores only the enclave-sealed blob; the owner proof is signed when the
        session has an owner key (the enclave requires it then).
        """
        quote = await self._current_quote()
        try:
            envelope = seal(
                data,
                metadata={"purpose": "record", "label": label},
                recipient_x25519=quote.enc_public,
            )
        except EnvelopeError as exc:
            raise ValueError(str(exc)) from None
        body: dict[str, Any] = {
            "session_id": registration.session_id,
            "envelope": envelope.to_wire(),
        }
        if registration.owner_key is not None:
            proof = sign_owner_proof(
                registration.owner_key,
                method="seal_record",
                session_id=registration.session_id,
                timestamp=int(time.time()),
            )
            body |= proof.to_wire()
        return _record_info(await self._request("POST", "/api/records", json=body))

    async def unseal_record(self, registration: Registration, record_id: str) -> UnsealedRecord:
        """Fetch a record re-encrypted to the owner and decrypt it with the owner key.

        Needs ``registration.owner_key``. Raises :class:`VerificationFailed` when the reply
        does not open with the owner key or names another record.
        """
        if registration.owner_key is None:
            raise ClientError("unsealing a record needs the session's owner key")
        _record_id(record_id)
        headers = {"X-Session-Id": registration.session_id}
        headers |= _owner_headers(registration, f"unseal_record:{record_id}")
        body = await self._request("GET", f"/api/records/{record_id}", headers=headers)
        if not isinstance(body, dict) or not isinstance(body.get("label"), str):
            raise _malformed("record")
        try:
            envelope = Envelope.from_wire(body.get("envelope"))
        except ValueError:
            raise VerificationFailed("the unsealed record is not an envelope") from None
        expected = {"purpose": "record-unseal", "record_id": record_id, "label": body["label"]}
        opener = EnvelopeOpener(owner_x25519_private(registration.owner_key))
        try:
            data = opener.open(envelope)
        except EnvelopeError:
            raise VerificationFailed(
                "the unsealed record does not open with the owner key"
            ) from None
        # The metadata is the AEAD's associated data: authenticated by the open above.
        if dict(envelope.metadata) != expected:
            raise VerificationFailed("the unsealed record names another record")
        return UnsealedRecord(id=record_id, label=body["label"], data=data)

    async def list_records(self, session_id: str) -> list[RecordInfo]:
        """Metadata (id, label, created_at) of the session's sealed records."""
        body = await self._request("GET", "/api/records", headers={"X-Session-Id": session_id})
        if not isinstance(body, dict) or not isinstance(body.get("records"), list):
            raise _malformed("records")
        return [_record_info(item) for item in body["records"]]

    # ------------------------------------------------------------------ commitments

    async def logs(self, session_id: str, *, trusted_head: TreeHead | None = None) -> SessionLog:
        """The session's whole transparency log, verified (shared.translog.verify_log).

        Every entry is proven under a tree head signed by the attested key; with
        ``trusted_head`` (a head from an earlier call) the log is also proven to extend
        it. Pages of up to 1000 entries are fetched and checked under one head (the
        fetch restarts if the log grew in between). Raises VerificationFailed.
        """
        quote = await self._current_quote()
        path = f"/api/logs/{_session_id(session_id)}"
        digest = session_hash(session_id)
        for _attempt in range(_LOG_ATTEMPTS):
            params = {} if trusted_head is None else {"since_size": str(trusted_head.size)}
            first = await self._request("GET", path, params=params)
            head = self._verified_log(first, quote, digest, trusted_head).head
            entries = list(first["entries"])
            while len(entries) < head.size:
                page = await self._request("GET", path, params={"start": str(len(entries))})
                if page.get("tree_head") != first["tree_head"] or not page.get("entries"):
                    break  # the log grew meanwhile: start again under the newer head
                entries.extend(page["entries"])
            else:
                body = {**first, "entries": entries}
                verified = self._verified_log(body, quote, digest, trusted_head, complete=True)
                return SessionLog(verified=verified, body=body, live=bool(first.get("live")))
        raise VerificationFailed("the log kept changing while it was read; try again")

    @staticmethod
    def _verified_log(
        body: Any,
        quote: Quote,
        digest: bytes,
        trusted_head: TreeHead | None,
        *,
        complete: bool = False,
    ) -> VerifiedLog:
        if not isinstance(body, dict) or not isinstance(body.get("entries"), list):
            raise _malformed("log")
        try:
            return verify_log(
                body,
                signing_public=quote.sig_public,
                session_hash=digest,
                trusted_head=trusted_head,
                require_complete=complete,
            )
        except TransparencyLogError as exc:
            raise VerificationFailed(
                f"the transparency log does not verify: {exc.reason}"
            ) from None

    async def disclose_trade(
        self,
        registration: Registration,
        *,
        symbol: str,
        trade_id: str,
        tree_size: int | None = None,
    ) -> dict[str, Any]:
        """One trade with its salt and inclusion proof, opened with the owner key.

        ``tree_size`` should be the ``merkle_tree_size`` of the report the disclosure will
        be shown with; check it with ``shared.disclosure.verify_disclosure``. Needs the
        owner key (the reply is sealed to it). Raises VerificationFailed if it does not open.
        """
        if registration.owner_key is None:
            raise ClientError("disclosing a trade needs the session's owner key")
        proof = sign_owner_proof(
            registration.owner_key,
            method="disclose_trade",
            session_id=registration.session_id,
            timestamp=int(time.time()),
        )
        body = {
            "session_id": _session_id(registration.session_id),
            "symbol": symbol,
            "trade_id": trade_id,
            "tree_size": tree_size,
        } | proof.to_wire()
        reply = await self._request("POST", "/enclave/disclose_trade", json=body)
        if not isinstance(reply, dict) or not isinstance(reply.get("envelope"), dict):
            raise _malformed("disclosure")
        try:
            return open_disclosure(reply["envelope"], registration.owner_key)
        except DisclosureError as exc:
            raise VerificationFailed(f"the disclosure is not for us: {exc.reason}") from None


# --------------------------------------------------------------------------- sync client


def _shutdown(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    if loop.is_closed():
        return
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
    loop.close()


class SyncSecureClient:
    """:class:`SecureClient` for synchronous code: same arguments, same methods, same errors.

    Calls run on a private event loop in a daemon thread, so they work from plain
    scripts and from code that already runs an event loop (notebooks, GUIs). Use it as a
    context manager or call :meth:`close`. One call at a time per client.
    """

    def __init__(
        self,
        base_url: str,
        *,
        expected_pcrs: Mapping[int, bytes],
        root: str | os.PathLike[str] | None = None,
        root_der: bytes | None = None,
        ca_file: str | os.PathLike[str] | None = None,
        allow_debug: bool = False,
        timeout: float = 30.0,
    ) -> None:
        self._client = SecureClient(
            base_url,
            expected_pcrs=expected_pcrs,
            root=root,
            root_der=root_der,
            ca_file=ca_file,
            allow_debug=allow_debug,
            timeout=timeout,
        )
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="perf-agg-client", daemon=True
        )
        self._thread.start()
        # A client never closed still stops its thread when collected or at exit.
        self._finalizer = weakref.finalize(self, _shutdown, self._loop, self._thread)

    @property
    def base_url(self) -> str:
        """The server this client talks to."""
        return self._client.base_url

    @property
    def quote(self) -> Quote | None:
        """The last quote this client verified (None before the first ``attest``)."""
        return self._client.quote

    def __enter__(self) -> SyncSecureClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _run(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        if self._loop.is_closed():
            coroutine.close()
            raise ClientError("this client is closed")
        if threading.current_thread() is self._thread:
            coroutine.close()
            raise RuntimeError("SyncSecureClient cannot be called from its own loop thread")
        with self._lock:
            future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
            try:
                return future.result()
            except BaseException:
                # KeyboardInterrupt while waiting: stop the request too.
                future.cancel()
                raise

    def close(self) -> None:
        """Close the connection pool and stop the loop thread (idempotent)."""
        if self._loop.is_closed():
            return
        try:
            self._run(self._client.close())
        finally:
            self._finalizer()

    def attest(self) -> Quote:
        """See :meth:`SecureClient.attest`."""
        return self._run(self._client.attest())

    def register(
        self,
        *,
        exchange: str,
        api_key: str,
        api_secret: str,
        passphrase: str | None = None,
        label: str = "main",
        ttl: int = 86_400,
        with_owner_key: bool = True,
        alg: str = DEFAULT_ALG,
    ) -> Registration:
        """See :meth:`SecureClient.register`."""
        return self._run(
            self._client.register(
                exchange=exchange,
                api_key=api_key,
                api_secret=api_secret,
                passphrase=passphrase,
                label=label,
                ttl=ttl,
                with_owner_key=with_owner_key,
                alg=alg,
            )
        )

    def aggregates(self, session_id: str) -> SignedReport:
        """See :meth:`SecureClient.aggregates`."""
        return self._run(self._client.aggregates(session_id))

    def summary(self, session_id: str) -> dict[str, Any]:
        """See :meth:`SecureClient.summary`."""
        return self._run(self._client.summary(session_id))

    def metrics(self, session_id: str) -> dict[str, Any]:
        """See :meth:`SecureClient.metrics`."""
        return self._run(self._client.metrics(session_id))

    def revoke(self, registration: Registration) -> dict[str, Any]:
        """See :meth:`SecureClient.revoke`."""
        return self._run(self._client.revoke(registration))

    def logs(self, session_id: str, *, trusted_head: TreeHead | None = None) -> SessionLog:
        """See :meth:`SecureClient.logs`."""
        return self._run(self._client.logs(session_id, trusted_head=trusted_head))

    def disclose_trade(
        self,
        registration: Registration,
        *,
        symbol: str,
        trade_id: str,
        tree_size: int | None = None,
    ) -> dict[str, Any]:
        """See :meth:`SecureClient.disclose_trade`."""
        return self._run(
            self._client.disclose_trade(
                registration, symbol=symbol, trade_id=trade_id, tree_size=tree_size
            )
        )

    def seal_record(self, registration: Registration, data: bytes, *, label: str) -> RecordInfo:
        """See :meth:`SecureClient.seal_record`."""
        return self._run(self._client.seal_record(registration, data, label=label))

    def unseal_record(self, registration: Registration, record_id: str) -> UnsealedRecord:
        """See :meth:`SecureClient.unseal_record`."""
        return self._run(self._client.unseal_record(registration, record_id))

    def list_records(self, session_id: str) -> list[RecordInfo]:
        """See :meth:`SecureClient.list_records`."""
        return self._run(self._client.list_records(session_id))
