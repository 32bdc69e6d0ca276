"""The owner's key pair: Ed25519 for proofs, its X25519 twin for replies. Side: client, enclave.

An envelope's plaintext may carry ``owner_pub`` (Ed25519). The enclave checks owner
proofs with it, and encrypts replies meant for the owner only (unsealed records) to
the same key converted to X25519 (the birational map of RFC 7748 section 4.1, as
libsodium's crypto_sign_ed25519_pk_to_curve25519). The owner holds one secret.
"""

from __future__ import annotations

import nacl.bindings
import nacl.exceptions
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

__all__ = ["owner_x25519_private", "owner_x25519_public"]


def owner_x25519_public(owner_pub: bytes) -> bytes:
    """Ed25519 public key (32 bytes) -> X25519 public key; ValueError if not a valid point."""
    if not isinstance(owner_pub, bytes) or len(owner_pub) != 32:
        raise ValueError("owner public key must be 32 bytes")
    try:
        return bytes(nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(owner_pub))
    except (nacl.exceptions.RuntimeError, nacl.exceptions.ValueError):
        raise ValueError("owner public key is not a valid Ed25519 point") from None


def owner_x25519_private(owner_key: Ed25519PrivateKey) -> X25519PrivateKey:
    """The X25519 private key matching ``owner_x25519_public(owner_key.public_key())``."""
    seed = owner_key.private_bytes_raw()
    public = owner_key.public_key().public_bytes_raw()
    converted = nacl.bindings.crypto_sign_ed25519_sk_to_curve25519(seed + public)
    return X25519PrivateKey.from_private_bytes(bytes(converted))
