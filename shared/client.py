"""Client SDK core: attest, encrypt to the attested key, submit, verify results. Side: client.

The secure path is the only path: ``register`` fetches a quote with a fresh nonce,
verifies it against the pinned root and PCRs, and encrypts the credentials to the
X25519 key found *inside the verified document*; keys the server sends beside the
document are only cross-checked, never used. Reports are verified against the
Ed25519 key from the same verified document.

This module imports no parent or enclave code (no psycopg, no ccxt).

Exceptions::

    ClientError
    ├── AttestationFailed   the quote did not verify (reason says which check)
    ├── ServerRejected      the server answered with an error (status, code, message)
    ├── VerificationFailed  a signed result did not verify
    └── Unreachable         no HTTPS answer from the server
"""

from __future__ import annotations

import hashlib
import hmac
import os
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared.attestation import AttestationVerifier, VerifiedAttestation
from shared.encoding import b64decode, b64encode
from shared.envelope import DEFAULT_ALG, Credentials, encrypt_credentials
from shared.errors import AttestationError, PerfAggError, SignatureError
from shared.signing import sign_owner_proof, verify_payload

__all__ = [
    "AttestationFailed",
    "ClientError",
    "Quote",
    "Registration",
    "SecureClient",
    "ServerRejected",
    "SignedReport",
    "Unreachable",
    "VerificationFailed",
]


class ClientError(PerfAggError):
    """Base of every error the client SDK raises."""


class AttestationFailed(ClientError):
    """The enclave's attestation did not verify; nothing was encrypted or sent."""


class ServerRejected(ClientError):
    """The server refused the request with a JSON error."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class VerificationFailed(ClientError):
    """A signed result does not verify against the attested signing key."""


class Unreachable(ClientError):
    """The server could not be reached over HTTPS."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Quote:
    """A verified attestation: the keys clients may use come from here only."""

    verified: VerifiedAttestation
    enc_public: bytes
    sig_public: bytes
    pcr0: str
    # The hybrid ML-KEM-768+X25519 key, present only when its SHA-256 matched user_data "pq".
    pq_public: bytes | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Registration:
    """A live session. ``session_id`` is a bearer secret; ``owner_key`` signs owner operations."""

    session_id: str = field(repr=False)
    expires_at: str
    owner_key: Ed25519PrivateKey | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class SignedReport:
    """A report whose signature verified against the attested key."""

    payload: dict[str, Any]
    signature: str
    merkle_root: str
    logs_url: str


class SecureClient:
    """Talk to a perf-aggregator parent; verify everything the enclave signs."""

    def __init__(
        self,
        base_url: str,
        *,
        expected_pcrs: Mapping[int, bytes],
        root_der: bytes | None = None,
        ca_file: str | None = None,
        allow_debug: bool = False,
        timeout: float = 30.0,
    ) -> None:
        # AttestationVerifier refuses empty expected PCRs: no client without a pin.
        self._verifier = AttestationVerifier(
            expected_pcrs=expected_pcrs, root_der=root_der, allow_debug=allow_debug
        )
        self._base = base_url.rstrip("/")
        self._ssl = ssl.create_default_context(cafile=ca_file)
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._http: aiohttp.ClientSession | None = None
        self._quote: Quote | None = None

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
                    raise ServerRejected(
                        response.status,
                        str(error.get("code", "unknown")),
                        str(error.get("message", response.reason)),
                    )
                return body
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise Unreachable(f"cannot reach {self._base}: {type(exc).__name__}") from exc

    # ------------------------------------------------------------------ attestation

    async def attest(self) -> Quote:
        """Fetch a quote for a fresh nonce and verify it (chain, PCRs, nonce, freshness)."""
        nonce = os.urandom(32)
        body = await self._request("GET", "/attestation/quote", params={"nonce": nonce.hex()})
        if not isinstance(body, dict) or not isinstance(body.get("quote"), str):
            raise AttestationFailed("the server's quote response is malformed")
        try:
            document = b64decode(body["quote"], max_len=16384)
        except ValueError:
            raise AttestationFailed("the quote is not valid base64") from None
        try:
            verified = self._verifier.verify(document, nonce=nonce, now=datetime.now(UTC))
        except AttestationError as exc:
            raise AttestationFailed(f"attestation rejected: {exc.reason}") from None
        keys = verified.keys
        assert keys is not None  # require_keys=True
        quote = Quote(
            verified=verified,
            enc_public=keys.x25519_public,
            sig_public=keys.ed25519_public,
            pcr0=verified.pcrs[0].hex(),
            pq_public=_checked_pq_key(body.get("pq_pubkey"), keys.pq_public_sha256),
        )
        # The convenience fields must agree with the verified document; a server that
        # sends other keys beside the document is lying, and we never use them anyway.
        if (
            body.get("enclave_pubkey") != b64encode(quote.enc_public)
            or body.get("image_hash") != quote.pcr0
        ):
            raise AttestationFailed("quote fields disagree with the attested document")
        self._quote = quote
        return quote

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
        """Attest, encrypt the credentials to the attested key, submit; return the session."""
        quote = await self.attest()
        owner_key = Ed25519PrivateKey.generate() if with_owner_key else None
        credentials = Credentials(
            exchange=exchange,
            api_key=api_key,
            api_secret=api_secret,
            passphrase=passphrase,
            owner_pub=None if owner_key is None else owner_key.public_key().public_bytes_raw(),
        )
        envelope = encrypt_credentials(
            credentials,
            metadata={
                "exchange": exchange,
                "label": label,
                "ttl": ttl,
                "issued_at": int(time.time()),
            },
            alg=alg,
            recipient_x25519=quote.enc_public,
            recipient_pq=quote.pq_public,
        )
        body = await self._request("POST", "/enclave/submit_key", json=envelope.to_wire())
        return Registration(
            session_id=body["session_id"], expires_at=body["expires_at"], owner_key=owner_key
        )

    async def aggregates(self, session_id: str) -> SignedReport:
        """Request a signed report and verify it against the attested signing key."""
        quote = self._quote or await self.attest()
        body = await self._request(
            "POST", "/enclave/request_aggregates", json={"session_id": session_id}
        )
        try:
            signed = body["aggregates_signed"]
            payload, signature = signed["payload"], signed["signature"]
        except (KeyError, TypeError):
            raise VerificationFailed("the report response is malformed") from None
        try:
            verify_payload(quote.sig_public, payload, signature)
        except SignatureError:
            raise VerificationFailed("the report signature does not verify") from None
        if payload.get("pcr0") != quote.pcr0:
            raise VerificationFailed("the report names another enclave measurement")
        return SignedReport(
            payload=payload,
            signature=signature,
            merkle_root=str(body.get("merkle_root")),
            logs_url=str(body.get("logs_url")),
        )

    async def summary(self, session_id: str) -> dict[str, Any]:
        """Headline figures and polling state."""
        result: dict[str, Any] = await self._request("GET", f"/enclave/summary/{session_id}")
        return result

    async def metrics(self, session_id: str) -> dict[str, Any]:
        """Detailed metrics."""
        result: dict[str, Any] = await self._request("GET", f"/enclave/metrics/{session_id}")
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
        result: dict[str, Any] = await self._request("POST", "/enclave/revoke", json=body)
        return result


def _checked_pq_key(unverified_b64: object, attested_sha256: bytes | None) -> bytes | None:
    """The hybrid key sent beside the document, accepted only if it hashes to user_data "pq"."""
    if attested_sha256 is None or not isinstance(unverified_b64, str):
        return None
    try:
        unverified = b64decode(unverified_b64, max_len=4096)
    except ValueError:
        raise AttestationFailed("pq_pubkey is not valid base64") from None
    if not hmac.compare_digest(hashlib.sha256(unverified).digest(), attested_sha256):
        raise AttestationFailed("pq_pubkey does not match the attested hash")
    return unverified
