"""Sealed session states: the authenticated header the parent can read. Side: parent and enclave.

The enclave seals each session's state (credentials, aggregator, trades, report chain,
log) under its KMS data key; the parent stores the blobs and replays them after a
restart. The parent must know which session a blob belongs to, which version is newer
and when it expires without being able to open it, so the blob starts with a clear
header that is also the AES-GCM associated data (a parent that edits it gets a blob
that no longer opens)::

    blob   = header || nonce (12) || AES-256-GCM ciphertext || tag (16)
    header = magic "PAS1" (4) || session_hash (32) || version (8, big-endian)
             || expires_at (8, big-endian Unix seconds)

Versions grow by one per sealing of a session; the parent keeps the highest. The
sealed revocation list has the same framing with magic "PAR1" and an all-zero
session hash.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

__all__ = [
    "HEADER_SIZE",
    "MAX_SEALED_SIZE",
    "REVOCATIONS_MAGIC",
    "STATE_MAGIC",
    "SealedHeader",
    "SealedStateError",
]

STATE_MAGIC: Final = b"PAS1"
REVOCATIONS_MAGIC: Final = b"PAR1"
_HEADER: Final = struct.Struct(">4s32sQQ")
HEADER_SIZE: Final = _HEADER.size  # 52
_NONCE: Final = 12
_TAG: Final = 16
MAX_SEALED_SIZE: Final = 3 * 1024 * 1024
"""A sealed blob travels in one RPC frame (4 MiB cap): states above this are refused."""


class SealedStateError(ValueError):
    """Not a sealed blob of the expected kind (wrong magic, truncated, oversized)."""


@dataclass(frozen=True, slots=True)
class SealedHeader:
    """The clear, authenticated part of a sealed blob."""

    magic: bytes
    session_hash: bytes
    version: int
    expires_at: int

    def encode(self) -> bytes:
        """The 52 header bytes (also the AES-GCM associated data)."""
        return _HEADER.pack(self.magic, self.session_hash, self.version, self.expires_at)

    @classmethod
    def parse(cls, blob: bytes, *, magic: bytes = STATE_MAGIC) -> SealedHeader:
        """Read the header of ``blob``; SealedStateError unless it is a blob of ``magic``."""
        if not isinstance(blob, bytes | bytearray):
            raise SealedStateError("a sealed blob is bytes")
        if not HEADER_SIZE + _NONCE + _TAG <= len(blob) <= MAX_SEALED_SIZE:
            raise SealedStateError("sealed blob has an impossible size")
        found, session_hash, version, expires_at = _HEADER.unpack_from(blob)
        if found != magic:
            raise SealedStateError("not a sealed blob of this kind")
        return cls(magic=found, session_hash=session_hash, version=version, expires_at=expires_at)
