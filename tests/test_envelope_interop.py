"""Interop: independent constructions written from the spec text, in both directions.

Nothing here imports the construction under test: the default alg is rebuilt word for
word from the DESIGN 4 CONTRACT with cryptography's X25519, HKDF and AESGCM and the
rfc8785 package; the HPKE algs from RFC 9180 (sections 4, 4.1, 5.1) and, for the hybrid
KEM, the X-Wing / MLKEM768-X25519 combiner. Only ``Envelope``, ``seal`` and the opener
are used, as black boxes, on the other side of each exchange.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Callable
from typing import Any

import pytest
import rfc8785
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey, MLKEM768PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

from shared.envelope import (
    ALG_HPKE_MLKEM768X25519,
    ALG_HPKE_X25519,
    ALG_X25519_HKDF,
    Envelope,
    EnvelopeOpener,
    HybridPrivateKey,
    open_credentials,
    seal,
)
from shared.errors import EnvelopeError

INFO = b"perf-aggregator/v1/credentials"
METADATA: dict[str, Any] = {"exchange": "binance", "label": "main", "ttl": 3600}
PLAINTEXT = b'{"exchange":"binance","apiKey":"interop-key","apiSecret":"interop-secret"}'

ENCLAVE_X25519 = X25519PrivateKey.generate()
ENCLAVE_HYBRID = HybridPrivateKey.generate()
OPENER = EnvelopeOpener(ENCLAVE_X25519, pq_private=ENCLAVE_HYBRID)
E_PUB = ENCLAVE_X25519.public_key().public_bytes_raw()
PQ_PUB = ENCLAVE_HYBRID.public_bytes()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


# --------------------------------------------------------------------------- CONTRACT text


def independent_seal_default(
    plaintext: bytes, metadata: dict[str, Any], enclave_pub: bytes
) -> dict[str, Any]:
    """client ephemeral X25519 key e; shared = X25519(e, E); key = HKDF-SHA256(salt = e_pub || E,
    ikm = shared, info = b"perf-aggregator/v1/credentials", L = 32); random 12-byte nonce;
    aad = RFC 8785 canonical JSON of metadata; AES-256-GCM -> ciphertext || 16-byte tag."""
    e = X25519PrivateKey.generate()
    e_pub = e.public_key().public_bytes_raw()
    shared = e.exchange(X25519PublicKey.from_public_bytes(enclave_pub))
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=e_pub + enclave_pub, info=INFO).derive(
        shared
    )
    nonce = os.urandom(12)
    aad = rfc8785.dumps(metadata)
    out = AESGCM(key).encrypt(nonce, plaintext, aad)
    ciphertext, tag = out[:-16], out[-16:]
    # Seed clients send no "alg": absent means the default.
    return {
        "ephemeral_pub": b64(e_pub),
        "nonce": b64(nonce),
        "ciphertext": b64(ciphertext),
        "tag": b64(tag),
        "metadata": metadata,
    }


def independent_open_default(wire: dict[str, Any], enclave: X25519PrivateKey) -> bytes:
    e_pub = unb64(wire["ephemeral_pub"])
    enclave_pub = enclave.public_key().public_bytes_raw()
    shared = enclave.exchange(X25519PublicKey.from_public_bytes(e_pub))
    assert shared != bytes(32)
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=e_pub + enclave_pub, info=INFO).derive(
        shared
    )
    aad = rfc8785.dumps(wire["metadata"])
    return AESGCM(key).decrypt(
        unb64(wire["nonce"]), unb64(wire["ciphertext"]) + unb64(wire["tag"]), aad
    )


# --------------------------------------------------------------------------- RFC 9180


def labeled_extract(suite_id: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    """RFC 9180 section 4 with HKDF-SHA256 (an empty salt is 32 zero bytes, RFC 5869)."""
    return hmac.new(salt or bytes(32), b"HPKE-v1" + suite_id + label + ikm, hashlib.sha256).digest()


def labeled_expand(suite_id: bytes, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    full_info = length.to_bytes(2, "big") + b"HPKE-v1" + suite_id + label + info
    return HKDFExpand(hashes.SHA256(), length, full_info).derive(prk)


def key_schedule_base(kem_id: int, shared_secret: bytes, info: bytes) -> tuple[bytes, bytes]:
    """RFC 9180 section 5.1, mode_base; KDF id 0x0001 (HKDF-SHA256), AEAD id 0x0002."""
    suite_id = b"HPKE" + kem_id.to_bytes(2, "big") + (1).to_bytes(2, "big") + (2).to_bytes(2, "big")
    context = (
        b"\x00"
        + labeled_extract(suite_id, b"", b"psk_id_hash", b"")
        + labeled_extract(suite_id, b"", b"info_hash", info)
    )
    secret = labeled_extract(suite_id, shared_secret, b"secret", b"")
    return (
        labeled_expand(suite_id, secret, b"key", context, 32),
        labeled_expand(suite_id, secret, b"base_nonce", context, 12),
    )


def documented_info(metadata: dict[str, Any]) -> bytes:
    """docs/crypto.md: info = b"perf-aggregator/v1/credentials" || SHA-256(RFC 8785(metadata))."""
    return INFO + hashlib.sha256(rfc8785.dumps(metadata)).digest()


def dhkem_x25519_shared_secret(dh: bytes, enc: bytes, pk_r: bytes) -> bytes:
    """RFC 9180 section 4.1 ExtractAndExpand, suite_id = "KEM" || I2OSP(0x0020, 2)."""
    kem_suite_id = b"KEM\x00\x20"
    eae_prk = labeled_extract(kem_suite_id, b"", b"eae_prk", dh)
    return labeled_expand(kem_suite_id, eae_prk, b"shared_secret", enc + pk_r, 32)


def xwing_combiner(ss_m: bytes, ss_x: bytes, ct_x: bytes, pk_x: bytes) -> bytes:
    """X-Wing: SHA3-256(ss_M || ss_X || ct_X || pk_X || XWingLabel), label = \\.//^\\ ."""
    return hashlib.sha3_256(ss_m + ss_x + ct_x + pk_x + b"\\.//^\\").digest()


def to_wire(alg: str, enc: bytes, sealed: bytes, metadata: dict[str, Any]) -> dict[str, Any]:
    """docs/crypto.md mapping: ephemeral_pub = enc, nonce empty, ciphertext || tag = ct."""
    return {
        "alg": alg,
        "ephemeral_pub": b64(enc),
        "nonce": "",
        "ciphertext": b64(sealed[:-16]),
        "tag": b64(sealed[-16:]),
        "metadata": metadata,
    }


def independent_seal_hpke_x25519(
    plaintext: bytes, metadata: dict[str, Any], pk_r: bytes
) -> dict[str, Any]:
    ephemeral = X25519PrivateKey.generate()
    enc = ephemeral.public_key().public_bytes_raw()
    dh = ephemeral.exchange(X25519PublicKey.from_public_bytes(pk_r))
    key, nonce = key_schedule_base(
        0x0020, dhkem_x25519_shared_secret(dh, enc, pk_r), documented_info(metadata)
    )
    return to_wire(ALG_HPKE_X25519, enc, AESGCM(key).encrypt(nonce, plaintext, b""), metadata)


def independent_open_hpke_x25519(wire: dict[str, Any], sk_r: X25519PrivateKey) -> bytes:
    enc = unb64(wire["ephemeral_pub"])
    pk_r = sk_r.public_key().public_bytes_raw()
    dh = sk_r.exchange(X25519PublicKey.from_public_bytes(enc))
    key, nonce = key_schedule_base(
        0x0020, dhkem_x25519_shared_secret(dh, enc, pk_r), documented_info(wire["metadata"])
    )
    assert wire["nonce"] == ""
    return AESGCM(key).decrypt(nonce, unb64(wire["ciphertext"]) + unb64(wire["tag"]), b"")


def independent_seal_hybrid(
    plaintext: bytes, metadata: dict[str, Any], public: bytes
) -> dict[str, Any]:
    """MLKEM768-X25519 (KEM id 0x647a): pk = pk_M (1184) || pk_X (32); enc = ct_M || ct_X."""
    pk_m, pk_x = public[:1184], public[1184:]
    ss_m, ct_m = MLKEM768PublicKey.from_public_bytes(pk_m).encapsulate()
    ephemeral = X25519PrivateKey.generate()
    ct_x = ephemeral.public_key().public_bytes_raw()
    ss_x = ephemeral.exchange(X25519PublicKey.from_public_bytes(pk_x))
    shared_secret = xwing_combiner(ss_m, ss_x, ct_x, pk_x)
    key, nonce = key_schedule_base(0x647A, shared_secret, documented_info(metadata))
    sealed = AESGCM(key).encrypt(nonce, plaintext, b"")
    return to_wire(ALG_HPKE_MLKEM768X25519, ct_m + ct_x, sealed, metadata)


def independent_open_hybrid(wire: dict[str, Any], hybrid: HybridPrivateKey) -> bytes:
    enc = unb64(wire["ephemeral_pub"])
    ct_m, ct_x = enc[:1088], enc[1088:]
    mlkem: MLKEM768PrivateKey = hybrid.mlkem
    ss_m = mlkem.decapsulate(ct_m)
    ss_x = hybrid.x25519.exchange(X25519PublicKey.from_public_bytes(ct_x))
    pk_x = hybrid.x25519.public_key().public_bytes_raw()
    key, nonce = key_schedule_base(
        0x647A, xwing_combiner(ss_m, ss_x, ct_x, pk_x), documented_info(wire["metadata"])
    )
    return AESGCM(key).decrypt(nonce, unb64(wire["ciphertext"]) + unb64(wire["tag"]), b"")


# --------------------------------------------------------------------------- both directions

Sealer = Callable[[bytes, dict[str, Any]], dict[str, Any]]
Opener = Callable[[dict[str, Any]], bytes]

INDEPENDENT: dict[str, tuple[Sealer, Opener]] = {
    ALG_X25519_HKDF: (
        lambda p, m: independent_seal_default(p, m, E_PUB),
        lambda w: independent_open_default(w, ENCLAVE_X25519),
    ),
    ALG_HPKE_X25519: (
        lambda p, m: independent_seal_hpke_x25519(p, m, E_PUB),
        lambda w: independent_open_hpke_x25519(w, ENCLAVE_X25519),
    ),
    ALG_HPKE_MLKEM768X25519: (
        lambda p, m: independent_seal_hybrid(p, m, PQ_PUB),
        lambda w: independent_open_hybrid(w, ENCLAVE_HYBRID),
    ),
}
ALGS = sorted(INDEPENDENT)


@pytest.mark.parametrize("alg", ALGS)
def test_independent_seal_opens_with_our_opener(alg: str) -> None:
    """A client written from the spec text is understood by the enclave."""
    wire = INDEPENDENT[alg][0](PLAINTEXT, METADATA)
    envelope = Envelope.from_wire(wire)
    assert envelope.alg == alg
    assert OPENER.open(envelope) == PLAINTEXT
    assert open_credentials(OPENER, envelope).api_secret == "interop-secret"


@pytest.mark.parametrize("alg", ALGS)
def test_our_seal_opens_with_independent_opener(alg: str) -> None:
    """What our client seals, an enclave written from the spec text can open."""
    envelope = seal(
        PLAINTEXT, metadata=METADATA, alg=alg, recipient_x25519=E_PUB, recipient_pq=PQ_PUB
    )
    assert INDEPENDENT[alg][1](envelope.to_wire()) == PLAINTEXT


def test_seed_style_metadata_is_canonicalised_like_rfc8785() -> None:
    """Out-of-order keys, non-ASCII and 3600.0 authenticate through the RFC 8785 form only."""
    metadata = {"ttl": 3600.0, "label": "caf\u00e9 \U0001f680", "exchange": "binance"}
    wire = independent_seal_default(PLAINTEXT, metadata, E_PUB)
    assert OPENER.open(Envelope.from_wire(wire)) == PLAINTEXT
    assert OPENER.open(Envelope.from_wire({**wire, "metadata": dict(reversed(metadata.items()))}))


def single_changes(metadata: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every key renamed, every value changed, one key added, each key removed."""
    out: list[tuple[str, dict[str, Any]]] = []
    for key in metadata:
        renamed = {(key + "_" if k == key else k): v for k, v in metadata.items()}
        out.append((f"rename-{key}", renamed))
        changed_value = (
            str(metadata[key]) + "x" if isinstance(metadata[key], str) else 1 + metadata[key]
        )
        out.append((f"value-{key}", {**metadata, key: changed_value}))
        out.append((f"remove-{key}", {k: v for k, v in metadata.items() if k != key}))
    out.append(("add-key", {**metadata, "added": True}))
    out.append(("add-null-key", {**metadata, "": None}))
    return out


CHANGES = single_changes(METADATA)


@pytest.mark.parametrize("alg", ALGS)
@pytest.mark.parametrize("changed", [c for _, c in CHANGES], ids=[n for n, _ in CHANGES])
def test_any_single_metadata_change_fails(alg: str, changed: dict[str, Any]) -> None:
    """Changing one key, one value or adding a key stops both openers."""
    wire = INDEPENDENT[alg][0](PLAINTEXT, METADATA)
    tampered = {**wire, "metadata": changed}
    with pytest.raises(EnvelopeError, match=r"^envelope could not be opened$"):
        OPENER.open(Envelope.from_wire(tampered))
    ours = seal(PLAINTEXT, metadata=METADATA, alg=alg, recipient_x25519=E_PUB, recipient_pq=PQ_PUB)
    with pytest.raises(InvalidTag):
        INDEPENDENT[alg][1]({**ours.to_wire(), "metadata": changed})
