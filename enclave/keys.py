"""The enclave's boot-time keys, derived from NSM entropy mixed with the OS CSPRNG. Side: enclave.

At boot the enclave asks the NSM for random bytes (GetRandom) *first*, then mixes
them with ``os.urandom`` through HKDF: the keys are sound if either source is.
Inside a real enclave the kernel RNG may be poorly seeded early on; the NSM is the
hardware source. The keys live only in this process's memory:

* X25519 ``enc``: credential envelopes are sealed to it (user_data "enc");
* Ed25519 ``sig``: signs results and is bound into attestation (user_data "sig");
* ML-KEM-768+X25519 hybrid (optional): post-quantum envelopes (user_data "pq" = SHA-256);
* AES-256 record key: seals records whose blobs the parent stores.

Every key derives from one 192-byte seed (:func:`keys_from_seed`). With KMS sealing
(enclave/sealing.py) the seed is sealed under the KMS data key and stored by the parent,
so a restarted enclave, or a replica with the same measurements, adopts the same
identity: old envelopes, sealed records and the signing key stay valid. Without
sealing the keys die with the process.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from enclave.nsm import NsmClient
from shared.attestation import EnclaveKeys
from shared.envelope import EnvelopeOpener, HybridPrivateKey

__all__ = ["SEED_BYTES", "KeyRing", "MIN_NSM_ENTROPY", "boot_keys", "keys_from_seed"]

MIN_NSM_ENTROPY = 32
"""Refuse to boot with fewer NSM random bytes than this (a broken device)."""

_INFO = b"perf-aggregator/v1/boot-keys"
# x25519 32 | ed25519 32 | record 32 | ml-kem seed 64 | hybrid x25519 32
SEED_BYTES = 32 + 32 + 32 + 64 + 32


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyRing:
    """Private keys held for the life of the process. Its repr shows public parts only."""

    opener: EnvelopeOpener = field(repr=False)
    signing_key: Ed25519PrivateKey = field(repr=False)
    record_key: bytes = field(repr=False)
    # Everything above derives from it; sealed (never sent in clear) to persist the identity.
    seed: bytearray = field(repr=False)
    with_pq: bool = False

    def public(self) -> EnclaveKeys:
        """The public keys that go into user_data of every attestation document."""
        published = self.opener.public_keys()
        return EnclaveKeys(
            x25519_public=published.x25519,
            ed25519_public=self.signing_key.public_key().public_bytes_raw(),
            pq_public_sha256=None
            if published.pq is None
            else hashlib.sha256(published.pq).digest(),
        )

    def pq_public(self) -> bytes | None:
        """The full hybrid public key (clients check it against user_data "pq")."""
        return self.opener.public_keys().pq


def boot_keys(nsm: NsmClient, *, with_pq: bool) -> KeyRing:
    """Draw NSM entropy, mix it with the OS RNG and derive every boot key."""
    nsm_entropy = nsm.get_random()
    if len(nsm_entropy) < MIN_NSM_ENTROPY:
        raise RuntimeError("NSM returned too little entropy; refusing to generate keys")
    seed = HKDF(algorithm=hashes.SHA512(), length=SEED_BYTES, salt=None, info=_INFO).derive(
        nsm_entropy + os.urandom(64)
    )
    return keys_from_seed(bytearray(seed), with_pq=with_pq)


def keys_from_seed(seed: bytearray, *, with_pq: bool) -> KeyRing:
    """Every service key from one seed (a fresh one, or one restored from sealed state)."""
    if len(seed) != SEED_BYTES:
        raise ValueError("a key seed is 192 bytes")
    x25519 = X25519PrivateKey.from_private_bytes(bytes(seed[0:32]))
    signing = Ed25519PrivateKey.from_private_bytes(bytes(seed[32:64]))
    record_key = seed[64:96]
    hybrid = None
    if with_pq:
        hybrid = HybridPrivateKey(
            mlkem=MLKEM768PrivateKey.from_seed_bytes(bytes(seed[96:160])),
            x25519=X25519PrivateKey.from_private_bytes(bytes(seed[160:192])),
        )
    return KeyRing(
        opener=EnvelopeOpener(x25519, pq_private=hybrid),
        signing_key=signing,
        record_key=bytes(record_key),
        seed=seed,
        with_pq=with_pq,
    )
