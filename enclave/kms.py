"""AWS KMS with Recipient attestation: port, boto3 adapter, recipient key. Side: enclave.

The enclave seals its state under a data key that only an enclave with the measured
PCRs can obtain (DESIGN §8). Both KMS calls carry ``Recipient = {KeyEncryptionAlgorithm:
RSAES_OAEP_SHA_256, AttestationDocument}``; KMS checks the document against the key
policy (``scripts/kms_policy.py``) and answers with ``CiphertextForRecipient``, the key
encrypted to the RSA public key inside the document (``enclave.cms``), never in clear::

    RecipientKey.generate()                       RSA-2048, once per enclave boot
    NsmClient.attestation(public_key=key.public_der())  -> document
    KmsPort.generate_data_key(key_id, document)   -> GeneratedKey(ciphertext_blob,
                                                                  ciphertext_for_recipient)
    KmsPort.decrypt(key_id, ciphertext_blob, document) -> ciphertext_for_recipient
    RecipientKey.unwrap(ciphertext_for_recipient) -> bytearray data key (wipe after use)

- ``KmsPort``: the two calls, synchronous like boto3 (callers run them in a thread).
  Adapters: ``Boto3Kms`` here; the KMS simulator (``tests/fakes/kms``) speaks the KMS
  JSON protocol, so dev and tests run this very adapter against it via ``endpoint_url``
  or the egress host override.
- ``Boto3Kms`` is built from explicit values only: AWS credentials handed over by the
  parent, region, endpoint, the enclave's loopback CONNECT proxy and, in simulator mode
  only, a test CA file. botocore's configuration chain (environment variables, config
  files, ``AWS_ENDPOINT_URL``, ``HTTPS_PROXY``, ``AWS_CA_BUNDLE``) is cut off.
- ``RecipientKey`` holds the RSA private key that never leaves the enclave.

Security notes:
- ``CiphertextForRecipient`` is CMS EnvelopedData, which is *not* authenticated: anyone
  holding the public key (the parent sees every document) could forge one carrying a key
  of their choice. Its integrity rests on TLS to KMS being verified and terminated
  inside the enclave (the parent only relays bytes through the CONNECT proxy). So TLS
  verification is never switched off: ``ca_file`` replaces the trust store, it cannot
  disable it.
- The parent chooses the credentials, so it chooses the AWS account; ``key_id`` must
  therefore come from the enclave's measured configuration as a full key ARN, and the
  key policy is what binds the key to the PCRs.
- botocore still honours ``SSLKEYLOGFILE`` in the process environment; the enclave's
  environment is part of the measured image and must not set it.

Errors::

    PerfAggError
    └── KmsError(reason: KmsReason)   a KMS call failed; never carries AWS's message
                                      (it may quote the request) nor key material
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, Protocol

import botocore.exceptions
import botocore.session
from botocore.config import Config
from botocore.configprovider import BOTOCORE_DEFAUT_SESSION_VARIABLES, ConstantProvider
from botocore.exceptions import NoCredentialsError, PartialCredentialsError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from enclave.cms import CmsError, open_enveloped_data
from shared.errors import PerfAggError

__all__ = [
    "KEY_ENCRYPTION_ALGORITHM",
    "RECIPIENT_KEY_SIZE",
    "AwsCredentials",
    "Boto3Kms",
    "GeneratedKey",
    "KmsError",
    "KmsPort",
    "KmsReason",
    "RecipientKey",
]

KEY_ENCRYPTION_ALGORITHM: Final = "RSAES_OAEP_SHA_256"
"""The only ``Recipient.KeyEncryptionAlgorithm`` KMS accepts (KMS API reference)."""
RECIPIENT_KEY_SIZE: Final = 2048
"""KMS wants an RSA-2048 SubjectPublicKeyInfo in the document (nitro-enclaves-sdk-c
``docs/kms-apis/RecipientRequest.md``)."""
_PUBLIC_EXPONENT: Final = 65537
_MAX_KEY_ID: Final = 2048  # KMS KeyIdType: 1..2048 characters
_MAX_BLOB: Final = 6144  # KMS CiphertextType: 1..6144 bytes
_REGION: Final = re.compile(r"[a-z]{2}(-[a-z0-9]+)+-[0-9]+")


class KmsReason(StrEnum):
    """Why a KMS call failed: the ``reason`` of every ``KmsError``."""

    ACCESS_DENIED = "access_denied"  # key policy / IAM refused (e.g. PCRs differ)
    NOT_FOUND = "not_found"  # no such key
    INVALID_CIPHERTEXT = "invalid_ciphertext"  # blob tampered, or under another key
    KEY_UNUSABLE = "key_unusable"  # key disabled, pending deletion, wrong usage
    CREDENTIALS = "credentials"  # AWS rejected or is missing the credentials
    THROTTLED = "throttled"  # request rate exceeded; retry later
    UNAVAILABLE = "unavailable"  # network, proxy, timeout or KMS-side failure
    TLS = "tls"  # the KMS endpoint's certificate did not verify
    REJECTED = "rejected"  # KMS refused the request for another reason
    MALFORMED = "malformed"  # the answer is unusable (missing field, bad CMS)


_TRANSIENT: Final = frozenset({KmsReason.THROTTLED, KmsReason.UNAVAILABLE})


class KmsError(PerfAggError):
    """A KMS call failed; ``reason`` says why, ``transient`` whether a retry may help."""

    def __init__(self, reason: KmsReason, operation: str) -> None:
        super().__init__(f"KMS {operation} failed: {reason.value}")
        self.reason = reason
        self.operation = operation

    @property
    def transient(self) -> bool:
        """True for throttling and unavailability: the same call may succeed later."""
        return self.reason in _TRANSIENT


# AWS error codes (the JSON ``__type``) -> reason. Codes not listed map to REJECTED
# (4xx) or UNAVAILABLE (5xx).
_ERROR_CODES: Final[Mapping[str, KmsReason]] = {
    "AccessDeniedException": KmsReason.ACCESS_DENIED,
    "NotFoundException": KmsReason.NOT_FOUND,
    "InvalidCiphertextException": KmsReason.INVALID_CIPHERTEXT,
    "IncorrectKeyException": KmsReason.INVALID_CIPHERTEXT,
    "DisabledException": KmsReason.KEY_UNUSABLE,
    "KMSInvalidStateException": KmsReason.KEY_UNUSABLE,
    "KeyUnavailableException": KmsReason.KEY_UNUSABLE,
    "InvalidKeyUsageException": KmsReason.KEY_UNUSABLE,
    "UnrecognizedClientException": KmsReason.CREDENTIALS,
    "InvalidSignatureException": KmsReason.CREDENTIALS,
    "IncompleteSignature": KmsReason.CREDENTIALS,
    "MissingAuthenticationTokenException": KmsReason.CREDENTIALS,
    "ExpiredTokenException": KmsReason.CREDENTIALS,
    "InvalidClientTokenId": KmsReason.CREDENTIALS,
    "ThrottlingException": KmsReason.THROTTLED,
    "LimitExceededException": KmsReason.THROTTLED,
    "RequestLimitExceeded": KmsReason.THROTTLED,
    "KMSInternalException": KmsReason.UNAVAILABLE,
    "DependencyTimeoutException": KmsReason.UNAVAILABLE,
    "ServiceUnavailableException": KmsReason.UNAVAILABLE,
    "InternalFailure": KmsReason.UNAVAILABLE,
}


# ------------------------------------------------------------------------------ data


@dataclass(frozen=True, slots=True, kw_only=True)
class AwsCredentials:
    """AWS credentials the parent hands to the enclave (instance role, usually temporary)."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for value in (self.access_key_id, self.secret_access_key, self.session_token):
            if value is None:
                continue
            # Printable ASCII without spaces: what AWS issues, and safe in HTTP headers.
            if not isinstance(value, str) or not value or not value.isascii():
                raise ValueError("AWS credentials must be non-empty ASCII strings")
            if not value.isprintable() or any(ch.isspace() for ch in value):
                raise ValueError("AWS credentials must not contain spaces or controls")


@dataclass(frozen=True, slots=True, kw_only=True)
class GeneratedKey:
    """A new data key: wrapped under the KMS key, and encrypted to the enclave's RSA key."""

    ciphertext_blob: bytes  # store it (parent, PostgreSQL); Decrypt turns it back into a key
    ciphertext_for_recipient: bytes = field(repr=False)  # CMS; RecipientKey.unwrap opens it


# ------------------------------------------------------------------------------ port


class KmsPort(Protocol):
    """The two KMS calls the enclave makes, always with Recipient attestation.

    Synchronous like boto3: callers run them in a worker thread. Failures raise
    ``KmsError``.
    """

    def generate_data_key(self, *, key_id: str, attestation_document: bytes) -> GeneratedKey:
        """GenerateDataKey(KeySpec=AES_256) for the enclave attested by ``attestation_document``."""
        ...

    def decrypt(self, *, key_id: str, ciphertext_blob: bytes, attestation_document: bytes) -> bytes:
        """Decrypt ``ciphertext_blob`` under ``key_id``: the ``CiphertextForRecipient``."""
        ...


# ---------------------------------------------------------------------- recipient key


class RecipientKey:
    """The enclave's RSA-2048 key for KMS Recipient calls; the private half never leaves.

    One per enclave boot (DESIGN §4: "RSA-2048 only for KMS Recipient calls"). Its
    public half goes into the attestation document's ``public_key`` field.
    """

    __slots__ = ("_private_key", "_public_der")

    def __init__(self, private_key: rsa.RSAPrivateKey) -> None:
        """Wrap an existing key (tests); the enclave uses ``generate()``."""
        if not isinstance(private_key, rsa.RSAPrivateKey):
            raise TypeError("a RecipientKey is an RSA private key")
        numbers = private_key.public_key().public_numbers()
        if private_key.key_size != RECIPIENT_KEY_SIZE or numbers.e != _PUBLIC_EXPONENT:
            raise ValueError("the recipient key is RSA-2048 with e = 65537")
        self._private_key = private_key
        self._public_der = private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @classmethod
    def generate(cls) -> RecipientKey:
        """A fresh RSA-2048 key from the OS CSPRNG (seeded from NSM entropy at boot)."""
        return cls(
            rsa.generate_private_key(public_exponent=_PUBLIC_EXPONENT, key_size=RECIPIENT_KEY_SIZE)
        )

    def public_der(self) -> bytes:
        """DER SubjectPublicKeyInfo (RFC 5280 §4.1.2.7): the document's ``public_key``."""
        return self._public_der

    def unwrap(self, ciphertext_for_recipient: bytes) -> bytearray:
        """Open a ``CiphertextForRecipient``: the plaintext (data key) in a wipeable bytearray.

        ``KmsError(MALFORMED)`` for anything that does not open, whatever the cause.
        """
        try:
            return open_enveloped_data(ciphertext_for_recipient, self._private_key)
        except CmsError:
            raise KmsError(KmsReason.MALFORMED, "unwrap") from None

    def __repr__(self) -> str:
        return "RecipientKey(RSA-2048)"


# ---------------------------------------------------------------------- boto3 adapter


def _isolated_session() -> botocore.session.Session:
    """A botocore session whose configuration ignores environment and config files.

    Every session variable (region, endpoint URLs, CA bundle, retry mode, FIPS/dual-stack
    endpoints, profile, ...) becomes its built-in default, so only the explicit values
    given to ``Boto3Kms`` take effect.
    """
    session = botocore.session.Session()
    store = session.get_component("config_store")
    # (config file key, environment variable, default, converter); botocore's spelling.
    for name, variable in BOTOCORE_DEFAUT_SESSION_VARIABLES.items():
        store.set_config_provider(name, ConstantProvider(variable[2]))
    # AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_KMS and the config file's endpoint_url.
    store.set_config_provider("ignore_configured_endpoint_urls", ConstantProvider(True))
    store.set_config_provider("proxies_config", ConstantProvider({}))
    return session


class Boto3Kms:
    """``KmsPort`` on a botocore KMS client built from explicit settings only.

    Thread-safe (botocore clients are). AWS error messages are dropped at this boundary:
    they may quote the request; only the mapped ``KmsReason`` goes up.
    """

    __slots__ = ("_client",)

    def __init__(
        self,
        *,
        credentials: AwsCredentials,
        region: str,
        endpoint_url: str | None = None,
        proxy_url: str | None = None,
        ca_file: Path | None = None,
        connect_timeout_seconds: float = 5.0,
        read_timeout_seconds: float = 10.0,
        max_attempts: int = 3,
    ) -> None:
        """Build the client; nothing is sent until the first call.

        ``endpoint_url``: default ``https://kms.<region>.amazonaws.com`` (must be https).
        ``proxy_url``: the enclave's loopback CONNECT proxy (``http://127.0.0.1:PORT``);
        TLS still runs end to end, from here to KMS. ``ca_file``: PEM trust store that
        replaces the default one (simulator mode only). ``max_attempts``: botocore
        "standard" retries, first attempt included, on throttling and transient errors.
        """
        if not isinstance(credentials, AwsCredentials):
            raise TypeError("credentials must be AwsCredentials")
        if not isinstance(region, str) or not _REGION.fullmatch(region):
            raise ValueError("region must look like us-east-1")
        if endpoint_url is not None and not endpoint_url.startswith("https://"):
            raise ValueError("the KMS endpoint must be https")
        if proxy_url is not None and not proxy_url.startswith("http://"):
            raise ValueError("proxy_url is an http:// CONNECT proxy")
        if ca_file is not None and not Path(ca_file).is_file():
            raise ValueError("ca_file does not exist")
        if not 1 <= max_attempts <= 10:
            raise ValueError("max_attempts must be 1..10")
        config = Config(
            region_name=region,
            signature_version="v4",
            # Explicit proxies (empty when none): botocore would otherwise read
            # HTTPS_PROXY / NO_PROXY from the environment.
            proxies={"https": proxy_url} if proxy_url is not None else {},
            connect_timeout=connect_timeout_seconds,
            read_timeout=read_timeout_seconds,
            retries={"mode": "standard", "total_max_attempts": max_attempts},
            use_fips_endpoint=False,
            use_dualstack_endpoint=False,
            tcp_keepalive=True,
        )
        self._client: Any = _isolated_session().create_client(
            "kms",
            region_name=region,
            endpoint_url=endpoint_url,
            # Never False: a Path replaces the trust store, True is botocore's bundle.
            verify=str(ca_file) if ca_file is not None else True,
            aws_access_key_id=credentials.access_key_id,
            aws_secret_access_key=credentials.secret_access_key,
            aws_session_token=credentials.session_token,
            config=config,
        )

    def close(self) -> None:
        """Close the client's connection pool."""
        self._client.close()

    def generate_data_key(self, *, key_id: str, attestation_document: bytes) -> GeneratedKey:
        """GenerateDataKey(KeySpec=AES_256, Recipient); see ``KmsPort``."""
        _check_key_id(key_id)
        response = self._call(
            "GenerateDataKey",
            KeyId=key_id,
            KeySpec="AES_256",
            Recipient=_recipient(attestation_document),
        )
        blob = response.get("CiphertextBlob")
        for_recipient = response.get("CiphertextForRecipient")
        # With a Recipient, KMS leaves Plaintext empty. A plaintext key would mean the
        # attestation was ignored somewhere: refuse it rather than use it.
        if (
            response.get("Plaintext")
            or not isinstance(blob, bytes)
            or not isinstance(for_recipient, bytes)
            or not _is_blob(blob)
            or not _is_blob(for_recipient)
        ):
            raise KmsError(KmsReason.MALFORMED, "GenerateDataKey")
        return GeneratedKey(ciphertext_blob=blob, ciphertext_for_recipient=for_recipient)

    def decrypt(self, *, key_id: str, ciphertext_blob: bytes, attestation_document: bytes) -> bytes:
        """Decrypt(CiphertextBlob, KeyId, SYMMETRIC_DEFAULT, Recipient); see ``KmsPort``."""
        _check_key_id(key_id)
        if not _is_blob(ciphertext_blob):
            raise KmsError(KmsReason.INVALID_CIPHERTEXT, "Decrypt")
        response = self._call(
            "Decrypt",
            CiphertextBlob=bytes(ciphertext_blob),
            KeyId=key_id,
            EncryptionAlgorithm="SYMMETRIC_DEFAULT",
            Recipient=_recipient(attestation_document),
        )
        for_recipient = response.get("CiphertextForRecipient")
        if (
            response.get("Plaintext")
            or not isinstance(for_recipient, bytes)
            or not _is_blob(for_recipient)
        ):
            raise KmsError(KmsReason.MALFORMED, "Decrypt")
        return for_recipient

    def _call(self, operation: str, **params: object) -> Mapping[str, object]:
        method = {
            "GenerateDataKey": self._client.generate_data_key,
            "Decrypt": self._client.decrypt,
        }
        try:
            response = method[operation](**params)
        except botocore.exceptions.ClientError as exc:
            raise KmsError(_client_error_reason(exc), operation) from None
        except botocore.exceptions.BotoCoreError as exc:
            raise KmsError(_botocore_error_reason(exc), operation) from None
        if not isinstance(response, Mapping):
            raise KmsError(KmsReason.MALFORMED, operation)
        return response


def _check_key_id(key_id: str) -> None:
    if not isinstance(key_id, str) or not 1 <= len(key_id) <= _MAX_KEY_ID:
        raise ValueError("key_id must be a KMS key id, ARN or alias")


def _recipient(attestation_document: bytes) -> dict[str, object]:
    if not isinstance(attestation_document, bytes | bytearray) or not attestation_document:
        raise ValueError("an attestation document is required")
    return {
        "KeyEncryptionAlgorithm": KEY_ENCRYPTION_ALGORITHM,
        "AttestationDocument": bytes(attestation_document),
    }


def _is_blob(value: object) -> bool:
    return isinstance(value, bytes | bytearray) and 0 < len(value) <= _MAX_BLOB


def _client_error_reason(exc: botocore.exceptions.ClientError) -> KmsReason:
    response: Mapping[str, Any] = getattr(exc, "response", None) or {}
    error = response.get("Error") or {}
    code = error.get("Code") if isinstance(error, Mapping) else None
    if isinstance(code, str) and code in _ERROR_CODES:
        return _ERROR_CODES[code]
    metadata = response.get("ResponseMetadata") or {}
    status = metadata.get("HTTPStatusCode") if isinstance(metadata, Mapping) else None
    if isinstance(status, int) and status >= 500:
        return KmsReason.UNAVAILABLE
    return KmsReason.REJECTED


def _botocore_error_reason(exc: botocore.exceptions.BotoCoreError) -> KmsReason:
    if isinstance(exc, botocore.exceptions.SSLError):
        return KmsReason.TLS
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return KmsReason.CREDENTIALS
    if isinstance(exc, botocore.exceptions.ParamValidationError):
        return KmsReason.REJECTED
    # EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ProxyConnectionError,
    # ConnectionClosedError and the rest of the transport failures.
    return KmsReason.UNAVAILABLE
