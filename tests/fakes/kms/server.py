"""KMS simulator: GenerateDataKey / Decrypt with Recipient attestation over HTTPS. Side: test fake.

A working stand-in for AWS KMS that unmodified boto3 talks to (``endpoint_url``, or the
real host name ``kms.<region>.amazonaws.com`` through the egress host override). It
speaks the KMS JSON protocol (awsJson1_1): ``POST /`` with ``X-Amz-Target:
TrentService.<Operation>``, ``Content-Type: application/x-amz-json-1.1``, blobs as
base64 strings; errors are HTTP 400 (500 for internal ones) with ``{"__type": <code>,
"message": <text>}``.

Operations: ``GenerateDataKey``, ``Decrypt`` and ``CreateKey``. Behaviour, the way KMS
does it for a key whose policy conditions on ``kms:RecipientAttestation:PCR<n>``:

- Every request is SigV4-signed (``sigv4.py``); with configured test credentials the
  signature is verified, otherwise any well-formed signature is accepted.
- Each key has a ``KeyPolicy`` (key id, optional aliases, expected PCRs with PCR0
  required). A request without ``Recipient`` is refused (AccessDeniedException): the
  policy allows key material only to an attested enclave, so plaintext never leaves.
- The ``AttestationDocument`` is verified with ``shared.attestation.AttestationVerifier``
  against the NSM simulator root and the key's PCRs: a document that does not verify
  (signature, chain, root, older than 5 minutes or more than 60 s ahead, debug mode),
  whose PCRs differ, or without ``public_key`` is refused with AccessDeniedException. The
  ``public_key`` must be an RSA SubjectPublicKeyInfo (2048, 3072 or 4096 bits).
- The answer is ``CiphertextForRecipient``: real CMS EnvelopedData (RSAES-OAEP-SHA256,
  AES-256-CBC) in the indefinite-length BER form KMS emits (``cms_writer.py``);
  ``Plaintext`` is never returned.
- ``CiphertextBlob`` is the simulator's own versioned envelope, AES-256-GCM under the
  key's master key, binding the key id and the encryption context::

      "PASK" || 0x01 || u8 len(key_id) || key_id || nonce(12) || ciphertext || tag(16)
      AAD = everything before the nonce || canonical JSON of EncryptionContext

  A blob under another key than ``KeyId`` is IncorrectKeyException; a tampered one, or
  one with another encryption context, InvalidCiphertextException.
- Master keys (and keys made by CreateKey, with their policies) are kept in
  ``state_dir/kms-keys.json`` (0600), so a restarted simulator still decrypts old blobs.

``calls`` records every request (operation, key id, outcome, reason) for tests.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import os
import re
import secrets
import ssl
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from aiohttp import web
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shared.attestation import AttestationVerifier, pcrs_from_json, pcrs_to_json
from shared.errors import AttestationError

from .cms_writer import build_enveloped_data
from .sigv4 import SigV4Error, TestCredentials, verify_sigv4

__all__ = [
    "BLOB_MAGIC",
    "KEY_STATE_FILE",
    "Call",
    "KeyPolicy",
    "KmsFault",
    "KmsSimulator",
    "TestCredentials",
    "create_app",
    "random_test_credentials",
    "serve_in_thread",
    "server_ssl_context",
    "start_server",
]

Clock = Callable[[], datetime]

BLOB_MAGIC: Final = b"PASK"
_BLOB_VERSION: Final = 1
_NONCE_SIZE: Final = 12
_TAG_SIZE: Final = 16
KEY_STATE_FILE: Final = "kms-keys.json"
_JSON_TYPE: Final = "application/x-amz-json-1.1"
_TARGET_PREFIX: Final = "TrentService."
_MAX_BODY: Final = 64 * 1024
_MAX_BLOB: Final = 6144  # KMS CiphertextType
_MAX_DOCUMENT_AGE_S: Final = 300
_MAX_DOCUMENT_SKEW_S: Final = 60
_RSA_SIZES: Final = frozenset({2048, 3072, 4096})
_KEY_SPECS: Final = {"AES_256": 32, "AES_128": 16}
_DEFAULT_ACCOUNT: Final = "111122223333"
_KEY_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,128}")


def _utc_now() -> datetime:
    return datetime.now(UTC)


class KmsFault(Exception):
    """A KMS error answer: ``{"__type": code, "message": message}`` with ``status``."""

    def __init__(self, code: str, message: str, *, status: int = 400, reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.reason = reason or code  # finer cause for the call log (not sent)


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyPolicy:
    """Who may use one key: an enclave whose attested PCRs equal ``pcrs`` (PCR0 required).

    JSON form: ``{"key_id": "...", "pcrs": {"0": "<hex>", "1": ..., "2": ..., "8": ...},
    "aliases": ["alias/..."]}`` (aliases optional).
    """

    key_id: str
    pcrs: Mapping[int, bytes]
    aliases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Key ids like KMS's (a UUID, "mrk-...") or any short name of that alphabet.
        if not isinstance(self.key_id, str) or not _KEY_ID.fullmatch(self.key_id):
            raise ValueError("key_id must be 1..128 of [A-Za-z0-9_-]")
        if 0 not in self.pcrs:
            raise ValueError("a key policy needs PCR0")
        for alias in self.aliases:
            if not isinstance(alias, str) or not alias.startswith("alias/"):
                raise ValueError("aliases start with 'alias/'")

    @classmethod
    def from_json(cls, value: object) -> KeyPolicy:
        """Parse the JSON form (see the class docstring); ``ValueError`` if invalid."""
        if not isinstance(value, Mapping) or not set(value) <= {"key_id", "pcrs", "aliases"}:
            raise ValueError("a key policy is {key_id, pcrs, aliases?}")
        aliases = value.get("aliases", [])
        if not isinstance(aliases, list):
            raise ValueError("aliases must be a list")
        return cls(
            key_id=value.get("key_id"),  # type: ignore[arg-type]  # checked in __post_init__
            pcrs=pcrs_from_json(value.get("pcrs")),
            aliases=tuple(aliases),
        )

    def to_json(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            "key_id": self.key_id,
            "pcrs": pcrs_to_json(self.pcrs),
            "aliases": list(self.aliases),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Call:
    """One request the simulator answered."""

    operation: str
    key_id: str | None  # the resolved key, when it got that far
    outcome: str  # "ok" or the KMS error code sent back
    reason: str  # finer cause of a refusal (e.g. "pcr-mismatch"); "" when ok


@dataclass(slots=True)
class _Key:
    policy: KeyPolicy
    material: bytearray = field(repr=False)
    created: float


def _write_private(path: Path, data: bytes) -> None:
    # Fresh 0600 file then rename: never world-readable, never half-written.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _b64decode(value: object, field_name: str) -> bytes:
    if not isinstance(value, str):
        raise KmsFault("SerializationException", f"{field_name} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise KmsFault("SerializationException", f"{field_name} is not valid base64") from None


def _encryption_context(params: Mapping[str, Any]) -> bytes:
    context = params.get("EncryptionContext", {})
    if not isinstance(context, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in context.items()
    ):
        raise KmsFault("ValidationException", "EncryptionContext must map strings to strings")
    return json.dumps(context, sort_keys=True, separators=(",", ":")).encode()


class KmsSimulator:
    """The KMS logic behind the HTTP app: keys, policies, attestation checks. Thread-safe."""

    def __init__(
        self,
        *,
        policies: list[KeyPolicy] | tuple[KeyPolicy, ...],
        root_der: bytes,
        state_dir: Path | None = None,
        region: str = "us-east-1",
        account_id: str = _DEFAULT_ACCOUNT,
        credentials: list[TestCredentials] | tuple[TestCredentials, ...] | None = None,
        clock: Clock = _utc_now,
    ) -> None:
        """Load or create the master key of every policy (``state_dir`` keeps them).

        ``root_der``: the NSM simulator root that documents must chain to.
        ``credentials``: verify SigV4 against these; ``None`` accepts any signature.
        """
        self._root_der = root_der
        self._state_dir = Path(state_dir) if state_dir is not None else None
        self._region = region
        self._account_id = account_id
        self._credentials = (
            None if credentials is None else {c.access_key_id: c for c in credentials}
        )
        self._clock = clock
        self._mutex = threading.Lock()
        self._keys: dict[str, _Key] = {}
        self.calls: list[Call] = []
        self._load()
        for policy in policies:
            existing = self._keys.get(policy.key_id)
            if existing is None:
                self._keys[policy.key_id] = _Key(
                    policy=policy, material=bytearray(os.urandom(32)), created=self._now_s()
                )
            else:
                existing.policy = policy  # the command line wins over the stored policy
        self._save()

    # ----------------------------------------------------------------- key store

    @property
    def region(self) -> str:
        """The region in ARNs and in the SigV4 scope."""
        return self._region

    def key_arn(self, key_id: str) -> str:
        """``arn:aws:kms:<region>:<account>:key/<key_id>``."""
        return f"arn:aws:kms:{self._region}:{self._account_id}:key/{key_id}"

    @property
    def key_ids(self) -> list[str]:
        """Every key the simulator holds."""
        with self._mutex:
            return sorted(self._keys)

    def _now_s(self) -> float:
        return self._clock().timestamp()

    def _state_file(self) -> Path | None:
        return None if self._state_dir is None else self._state_dir / KEY_STATE_FILE

    def _load(self) -> None:
        path = self._state_file()
        if path is None or not path.exists():
            return
        if path.stat().st_mode & 0o077:
            raise RuntimeError(f"{path} must not be readable by group or others (chmod 600)")
        stored = json.loads(path.read_text())
        if stored.get("v") != 1 or not isinstance(stored.get("keys"), dict):
            raise RuntimeError(f"{path} is not a KMS simulator key file")
        for key_id, entry in stored["keys"].items():
            material = base64.b64decode(entry["material"], validate=True)
            if len(material) != 32:
                raise RuntimeError(f"{path}: key {key_id} is not 32 bytes")
            self._keys[key_id] = _Key(
                policy=KeyPolicy.from_json(entry["policy"]),
                material=bytearray(material),
                created=float(entry["created"]),
            )

    def _save(self) -> None:
        path = self._state_file()
        if path is None:
            return
        assert self._state_dir is not None
        self._state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        document = {
            "v": 1,
            "keys": {
                key_id: {
                    "material": base64.b64encode(bytes(key.material)).decode(),
                    "policy": key.policy.to_json(),
                    "created": key.created,
                }
                for key_id, key in sorted(self._keys.items())
            },
        }
        _write_private(path, json.dumps(document, indent=1).encode() + b"\n")

    def _resolve(self, key_ref: object) -> tuple[str, _Key]:
        # KMS KeyId: key id, key ARN, alias name or alias ARN.
        if not isinstance(key_ref, str) or not 1 <= len(key_ref) <= 2048:
            raise KmsFault("ValidationException", "KeyId is required")
        arn_prefix = f"arn:aws:kms:{self._region}:{self._account_id}:"
        name = key_ref.removeprefix(arn_prefix)
        if name.startswith("key/"):
            name = name.removeprefix("key/")
        with self._mutex:
            if name.startswith("alias/"):
                for key_id, key in self._keys.items():
                    if name in key.policy.aliases:
                        return key_id, key
            elif name in self._keys:
                return name, self._keys[name]
        # KMS does not echo the requested id in this message.
        raise KmsFault("NotFoundException", "Key does not exist", reason="unknown-key")

    # -------------------------------------------------------------- attestation

    def _recipient_key(self, params: Mapping[str, Any], policy: KeyPolicy) -> rsa.RSAPublicKey:
        recipient = params.get("Recipient")
        if recipient is None:
            # The key policy only allows attested use: no plaintext, ever.
            raise KmsFault(
                "AccessDeniedException",
                "The key policy requires a Recipient attestation document",
                reason="no-recipient",
            )
        if not isinstance(recipient, dict) or not set(recipient) <= {
            "KeyEncryptionAlgorithm",
            "AttestationDocument",
        }:
            raise KmsFault("ValidationException", "Recipient is malformed")
        if recipient.get("KeyEncryptionAlgorithm") != "RSAES_OAEP_SHA_256":
            raise KmsFault(
                "ValidationException", "KeyEncryptionAlgorithm must be RSAES_OAEP_SHA_256"
            )
        document = _b64decode(recipient.get("AttestationDocument"), "AttestationDocument")
        verifier = AttestationVerifier(
            expected_pcrs=policy.pcrs,
            root_der=self._root_der,
            max_age_seconds=_MAX_DOCUMENT_AGE_S,
            max_clock_skew_seconds=_MAX_DOCUMENT_SKEW_S,
            require_keys=False,  # KMS reads only PCRs and public_key, not user_data
        )
        try:
            verified = verifier.verify(document, nonce=None, now=self._clock())
        except AttestationError as exc:
            raise KmsFault(
                "AccessDeniedException",
                "The attestation document does not satisfy the key policy",
                reason=f"attestation:{exc.reason}",
            ) from None
        public_der = verified.doc.public_key
        if public_der is None:
            raise KmsFault(
                "AccessDeniedException",
                "The attestation document carries no public key",
                reason="no-public-key",
            )
        try:
            public_key = serialization.load_der_public_key(public_der)
        except (ValueError, TypeError):
            public_key = None
        if not isinstance(public_key, rsa.RSAPublicKey) or public_key.key_size not in _RSA_SIZES:
            raise KmsFault(
                "ValidationException",
                "The attestation document's public key is not an RSA key",
                reason="bad-public-key",
            )
        return public_key

    # --------------------------------------------------------------- operations

    def _seal(self, key_id: str, key: _Key, plaintext: bytes, context: bytes) -> bytes:
        encoded_id = key_id.encode()
        header = BLOB_MAGIC + bytes([_BLOB_VERSION, len(encoded_id)]) + encoded_id
        nonce = os.urandom(_NONCE_SIZE)
        return (
            header + nonce + AESGCM(bytes(key.material)).encrypt(nonce, plaintext, header + context)
        )

    def _blob_key_id(self, blob: bytes) -> tuple[str, bytes, bytes, bytes]:
        """Split a blob into (key id, header, nonce, sealed); no authentication yet."""
        invalid = KmsFault("InvalidCiphertextException", "", reason="malformed-blob")
        if len(blob) < len(BLOB_MAGIC) + 2 or not blob.startswith(BLOB_MAGIC):
            raise invalid
        version, length = blob[4], blob[5]
        header_end = 6 + length
        if version != _BLOB_VERSION or len(blob) < header_end + _NONCE_SIZE + _TAG_SIZE:
            raise invalid
        try:
            unverified_key_id = blob[6:header_end].decode()
        except UnicodeDecodeError:
            raise invalid from None
        nonce = blob[header_end : header_end + _NONCE_SIZE]
        return unverified_key_id, blob[:header_end], nonce, blob[header_end + _NONCE_SIZE :]

    def generate_data_key(self, params: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        """GenerateDataKey with Recipient: (key id, response)."""
        key_id, key = self._resolve(params.get("KeyId"))
        spec, count = params.get("KeySpec"), params.get("NumberOfBytes")
        if (spec is None) == (count is None):
            raise KmsFault(
                "ValidationException", "Specify exactly one of KeySpec and NumberOfBytes"
            )
        if spec is not None:
            if spec not in _KEY_SPECS:
                raise KmsFault("ValidationException", "KeySpec must be AES_256 or AES_128")
            size = _KEY_SPECS[spec]
        elif isinstance(count, int) and not isinstance(count, bool) and 1 <= count <= 1024:
            size = count
        else:
            raise KmsFault("ValidationException", "NumberOfBytes must be 1..1024")
        context = _encryption_context(params)
        public_key = self._recipient_key(params, key.policy)
        if params.get("DryRun") is True:
            raise KmsFault("DryRunOperationException", "The request would have succeeded")
        data_key = os.urandom(size)
        blob = self._seal(key_id, key, data_key, context)
        for_recipient = build_enveloped_data(data_key, public_key)
        return key_id, {
            "CiphertextBlob": base64.b64encode(blob).decode(),
            "KeyId": self.key_arn(key_id),
            "CiphertextForRecipient": base64.b64encode(for_recipient).decode(),
        }

    def decrypt(self, params: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        """Decrypt with Recipient: (key id, response)."""
        blob = _b64decode(params.get("CiphertextBlob"), "CiphertextBlob")
        if not 1 <= len(blob) <= _MAX_BLOB:
            raise KmsFault("ValidationException", "CiphertextBlob must be 1..6144 bytes")
        algorithm = params.get("EncryptionAlgorithm", "SYMMETRIC_DEFAULT")
        if algorithm != "SYMMETRIC_DEFAULT":
            raise KmsFault("InvalidKeyUsageException", "Symmetric keys use SYMMETRIC_DEFAULT")
        context = _encryption_context(params)
        unverified_key_id, header, nonce, sealed = self._blob_key_id(blob)
        if params.get("KeyId") is not None:
            requested_id, _ = self._resolve(params.get("KeyId"))
            if requested_id != unverified_key_id:
                raise KmsFault(
                    "IncorrectKeyException",
                    "The key ID in the request does not identify a KMS key that can "
                    "perform this operation.",
                    reason="other-key",
                )
        with self._mutex:
            key = self._keys.get(unverified_key_id)
        if key is None:
            raise KmsFault("InvalidCiphertextException", "", reason="unknown-blob-key")
        # Authorise before decrypting, as KMS evaluates the key policy first.
        public_key = self._recipient_key(params, key.policy)
        try:
            plaintext = AESGCM(bytes(key.material)).decrypt(nonce, sealed, header + context)
        except (InvalidTag, ValueError):
            raise KmsFault("InvalidCiphertextException", "", reason="tampered-blob") from None
        if params.get("DryRun") is True:
            raise KmsFault("DryRunOperationException", "The request would have succeeded")
        return unverified_key_id, {
            "KeyId": self.key_arn(unverified_key_id),
            "EncryptionAlgorithm": "SYMMETRIC_DEFAULT",
            "CiphertextForRecipient": base64.b64encode(
                build_enveloped_data(plaintext, public_key)
            ).decode(),
        }

    def create_key(self, params: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        """CreateKey; ``Policy`` is a JSON string ``{"pcrs": {...}, "aliases"?: [...]}``.

        (Not AWS's IAM policy language: the simulator only models the PCR conditions.
        A key without PCR0 would allow unattested use, so it is refused.)
        """
        text = params.get("Policy")
        try:
            body = json.loads(text) if isinstance(text, str) else None
            if not isinstance(body, dict):
                raise ValueError("policy")
            key_id = str(uuid.uuid4())
            policy = KeyPolicy.from_json({"key_id": key_id, **body})
        except ValueError:
            raise KmsFault(
                "MalformedPolicyDocumentException", "Policy must be {pcrs, aliases?} with PCR0"
            ) from None
        if (
            params.get("KeySpec", "SYMMETRIC_DEFAULT") != "SYMMETRIC_DEFAULT"
            or params.get("KeyUsage", "ENCRYPT_DECRYPT") != "ENCRYPT_DECRYPT"
        ):
            raise KmsFault("UnsupportedOperationException", "Only symmetric encryption keys")
        created = self._now_s()
        with self._mutex:
            self._keys[key_id] = _Key(
                policy=policy, material=bytearray(os.urandom(32)), created=created
            )
            self._save()
        description = params.get("Description", "")
        return key_id, {
            "KeyMetadata": {
                "AWSAccountId": self._account_id,
                "KeyId": key_id,
                "Arn": self.key_arn(key_id),
                "CreationDate": created,
                "Enabled": True,
                "Description": description if isinstance(description, str) else "",
                "KeyUsage": "ENCRYPT_DECRYPT",
                "KeyState": "Enabled",
                "Origin": "AWS_KMS",
                "KeyManager": "CUSTOMER",
                "CustomerMasterKeySpec": "SYMMETRIC_DEFAULT",
                "KeySpec": "SYMMETRIC_DEFAULT",
                "EncryptionAlgorithms": ["SYMMETRIC_DEFAULT"],
                "MultiRegion": False,
            }
        }

    # ------------------------------------------------------------------- request

    def handle(
        self,
        *,
        method: str,
        path: str,
        query: str,
        headers: Callable[[str], list[str]],
        body: bytes,
    ) -> tuple[int, dict[str, Any]]:
        """Answer one HTTP request: (status, JSON body). Records a ``Call``."""
        operation = "?"
        key_id: str | None = None
        try:
            targets = headers("x-amz-target")
            if method != "POST" or path != "/" or query or len(targets) != 1:
                raise KmsFault("UnknownOperationException", "POST / with X-Amz-Target")
            operation = targets[0].removeprefix(_TARGET_PREFIX)
            handler = {
                "GenerateDataKey": self.generate_data_key,
                "Decrypt": self.decrypt,
                "CreateKey": self.create_key,
            }.get(operation)
            if not targets[0].startswith(_TARGET_PREFIX) or handler is None:
                raise KmsFault("UnknownOperationException", "Unknown operation")
            content_types = headers("content-type")
            if [c.split(";")[0].strip() for c in content_types] != [_JSON_TYPE]:
                raise KmsFault("SerializationException", f"Content-Type must be {_JSON_TYPE}")
            try:
                verify_sigv4(
                    method=method,
                    path=path,
                    query=query,
                    headers=headers,
                    body=body,
                    region=self._region,
                    credentials=self._credentials,
                    now=self._clock(),
                )
            except SigV4Error as exc:
                raise KmsFault(exc.code, exc.message, reason="sigv4") from None
            try:
                params = json.loads(body or b"{}")
            except ValueError:
                raise KmsFault("SerializationException", "Body is not JSON") from None
            if not isinstance(params, dict):
                raise KmsFault("SerializationException", "Body must be a JSON object")
            key_id, response = handler(params)
        except KmsFault as fault:
            self._record(
                Call(operation=operation, key_id=key_id, outcome=fault.code, reason=fault.reason)
            )
            return fault.status, {"__type": fault.code, "message": fault.message}
        self._record(Call(operation=operation, key_id=key_id, outcome="ok", reason=""))
        return 200, response

    def _record(self, call: Call) -> None:
        with self._mutex:
            self.calls.append(call)


# ---------------------------------------------------------------------- HTTP app


def create_app(simulator: KmsSimulator) -> web.Application:
    """The aiohttp app: every request goes to ``simulator.handle`` (in a worker thread,
    since RSA and attestation checks are CPU work)."""

    async def endpoint(request: web.Request) -> web.Response:
        body = await request.read()

        def headers(name: str) -> list[str]:
            return list(request.headers.getall(name, []))

        status, answer = await asyncio.to_thread(
            simulator.handle,
            method=request.method,
            path=request.path,
            query=request.query_string,
            headers=headers,
            body=body,
        )
        return web.Response(
            status=status,
            body=json.dumps(answer).encode(),
            headers={"Content-Type": _JSON_TYPE, "x-amzn-RequestId": str(uuid.uuid4())},
        )

    app = web.Application(client_max_size=_MAX_BODY)
    app.router.add_route("*", "/{tail:.*}", endpoint)
    return app


def server_ssl_context(cert_file: Path, key_file: Path | None = None) -> ssl.SSLContext:
    """TLS 1.2+ server context from a certificate (chain) and its key (or one combined PEM)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert_file), str(key_file) if key_file is not None else None)
    return context


async def start_server(
    simulator: KmsSimulator, ssl_context: ssl.SSLContext, *, host: str = "127.0.0.1", port: int = 0
) -> tuple[web.AppRunner, int]:
    """Start serving; (runner to clean up, bound port)."""
    runner = web.AppRunner(create_app(simulator), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    await site.start()
    server = site._server  # aiohttp exposes the bound port only through the server
    assert server is not None
    sockets = server.sockets  # type: ignore[attr-defined]
    return runner, int(sockets[0].getsockname()[1])


@contextlib.contextmanager
def serve_in_thread(
    simulator: KmsSimulator, ssl_context: ssl.SSLContext, *, host: str = "127.0.0.1"
) -> Iterator[int]:
    """Serve ``simulator`` from a background event loop (for synchronous tests); yields the port."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict[str, Any] = {}

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            holder["runner"], holder["port"] = loop.run_until_complete(
                start_server(simulator, ssl_context, host=host)
            )
        except BaseException as exc:  # noqa: BLE001  # reported to the caller below
            holder["error"] = exc
            started.set()
            return
        started.set()
        loop.run_forever()
        loop.run_until_complete(holder["runner"].cleanup())
        loop.close()

    thread = threading.Thread(target=run, name="kms-simulator", daemon=True)
    thread.start()
    started.wait(30)
    if "error" in holder:
        raise RuntimeError("KMS simulator failed to start") from holder["error"]
    if "port" not in holder:
        raise RuntimeError("KMS simulator did not start in time")
    try:
        yield int(holder["port"])
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)


def random_test_credentials() -> TestCredentials:
    """Fresh random credentials shaped like AWS's (tests only)."""
    return TestCredentials(
        access_key_id="AKIA" + secrets.token_hex(8).upper(),
        secret_access_key=secrets.token_urlsafe(30),
    )
