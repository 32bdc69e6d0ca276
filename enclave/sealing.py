"""Sealing under the KMS data key: identity, session states, revocation list. Side: enclave.

The data key comes from AWS KMS with the enclave's attestation as Recipient
(enclave/kms.py): only an enclave with the measurements the key policy names gets it
in clear, and only inside that enclave. Everything the parent stores for a restart is
AES-256-GCM under it:

- the **identity**: the 192-byte key seed (enclave/keys.py), so every restart and
  every replica with the same PCRs holds the same envelope, signing and record keys;
- each **session state** (shared/sealed_state.py framing: the clear header, with the
  session hash, version and expiry, is the associated data);
- the **revocation list**: hashes of revoked sessions with their expiry, so a restore
  from an old backup cannot bring a revoked session back.

Every failure to open is one error (``SealingError``) with no detail: no oracle for
a parent that feeds edited blobs. The data key is held in a bytearray and wiped by
:meth:`Vault.wipe`.
"""

from __future__ import annotations

import os
from typing import Final

import cbor2
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shared.cbor import CborError, strict_loads
from shared.errors import PerfAggError
from shared.sealed_state import (
    HEADER_SIZE,
    REVOCATIONS_MAGIC,
    SealedHeader,
    SealedStateError,
)

__all__ = ["RevocationList", "SealingError", "Vault"]

_NONCE: Final = 12
_IDENTITY_MAGIC: Final = b"PAI1"
_IDENTITY_AAD: Final = b"perf-aggregator/v1/identity"
_NO_SESSION: Final = bytes(32)


class SealingError(PerfAggError):
    """A sealed blob did not open (wrong key, edited, truncated, wrong kind)."""

    def __init__(self) -> None:
        super().__init__("sealed data could not be opened")


class Vault:
    """The data key and the AES-GCM seal/open built on it."""

    __slots__ = ("_aead", "_key", "wrapped_key")

    def __init__(self, data_key: bytearray, *, wrapped_key: bytes) -> None:
        if len(data_key) != 32:
            raise ValueError("the data key is 32 bytes (AES-256)")
        self._key = data_key
        self._aead = AESGCM(bytes(data_key))
        self.wrapped_key = wrapped_key  # KMS CiphertextBlob: what the parent keeps

    def wipe(self) -> None:
        """Overwrite the data key in place (the AESGCM object's copy is OpenSSL's)."""
        for index in range(len(self._key)):
            self._key[index] = 0

    # ------------------------------------------------------------------ identity

    def seal_identity(self, seed: bytes | bytearray) -> bytes:
        """The key seed sealed: magic || nonce || AES-GCM(seed)."""
        nonce = os.urandom(_NONCE)
        return _IDENTITY_MAGIC + nonce + self._aead.encrypt(nonce, bytes(seed), _IDENTITY_AAD)

    def open_identity(self, blob: bytes) -> bytearray:
        """The key seed from :meth:`seal_identity`; SealingError otherwise."""
        if len(blob) < 4 + _NONCE + 16 or blob[:4] != _IDENTITY_MAGIC:
            raise SealingError
        try:
            return bytearray(
                self._aead.decrypt(blob[4 : 4 + _NONCE], blob[4 + _NONCE :], _IDENTITY_AAD)
            )
        except InvalidTag:
            raise SealingError from None

    # ------------------------------------------------------------------ framed blobs

    def seal(self, header: SealedHeader, plaintext: bytes) -> bytes:
        """header || nonce || AES-GCM(plaintext, aad=header)."""
        encoded = header.encode()
        nonce = os.urandom(_NONCE)
        return encoded + nonce + self._aead.encrypt(nonce, plaintext, encoded)

    def open(self, blob: bytes, *, magic: bytes) -> tuple[SealedHeader, bytes]:
        """The header and plaintext of a framed blob of kind ``magic``; SealingError otherwise."""
        try:
            header = SealedHeader.parse(blob, magic=magic)
        except SealedStateError:
            raise SealingError from None
        nonce = blob[HEADER_SIZE : HEADER_SIZE + _NONCE]
        try:
            plaintext = self._aead.decrypt(nonce, blob[HEADER_SIZE + _NONCE :], blob[:HEADER_SIZE])
        except InvalidTag:
            raise SealingError from None
        return header, plaintext


class RevocationList:
    """Revoked session hashes with their expiry; an entry is dropped once expired.

    A revoked session can never be restored, so a parent that replays a backup taken
    before the revoke gets it refused. The list itself is versioned: the enclave keeps
    the highest version it has seen and refuses an older list.
    """

    __slots__ = ("_entries", "version")

    def __init__(self) -> None:
        self._entries: dict[bytes, int] = {}
        self.version = 0

    def __contains__(self, session_hash: object) -> bool:
        return session_hash in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, session_hash: bytes, expires_at: int, *, now: int) -> None:
        """Record a revoke (and drop entries whose session would have expired anyway)."""
        self._entries = {h: e for h, e in self._entries.items() if e > now}
        self._entries[session_hash] = expires_at
        self.version += 1

    def seal(self, vault: Vault) -> bytes:
        """The list sealed under the vault (framed, all-zero session hash)."""
        body = cbor2.dumps([[h, e] for h, e in sorted(self._entries.items())], canonical=True)
        header = SealedHeader(
            magic=REVOCATIONS_MAGIC, session_hash=_NO_SESSION, version=self.version, expires_at=0
        )
        return vault.seal(header, body)

    def merge_sealed(self, vault: Vault, blob: bytes) -> None:
        """Adopt a sealed list if it is not older than the one held; SealingError otherwise."""
        header, body = vault.open(blob, magic=REVOCATIONS_MAGIC)
        try:
            entries = strict_loads(body, max_depth=3)
        except CborError:
            raise SealingError from None
        if not isinstance(entries, list) or not all(
            isinstance(item, list)
            and len(item) == 2
            and isinstance(item[0], bytes)
            and len(item[0]) == 32
            and type(item[1]) is int
            for item in entries
        ):
            raise SealingError
        for session_hash, expires_at in entries:
            self._entries[session_hash] = max(expires_at, self._entries.get(session_hash, 0))
        self.version = max(self.version, header.version)
