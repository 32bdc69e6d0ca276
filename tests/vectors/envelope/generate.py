"""Write the credential-envelope known-answer vectors in this directory.

Run from the repository root:  .venv/bin/python tests/vectors/envelope/generate.py

Deliberately independent of ``shared/envelope.py``: every construction here is written
from the text in docs/crypto.md (DESIGN 4 CONTRACT for the default alg, RFC 9180 for
HPKE) with cryptography primitives and the rfc8785 package, so the vectors check the
implementation instead of echoing it. Every secret is SHA-256/512 of a public label.

- ``x25519-hkdf-sha256-aes256gcm.json``: deterministic (fixed ephemeral key and nonce);
  tests re-seal them byte for byte and open them.
- ``hpke-x25519-sha256-aes256gcm.json``: deterministic via the RFC 9180 section 4.1/5.1
  equations below (cryptography's HPKE API cannot take an injected ephemeral key);
  tests open them only.
- ``hpke-mlkem768x25519-sha256-aes256gcm.json``: OPEN-ONLY and not reproducible: ML-KEM
  encapsulation randomness cannot be injected through cryptography, so the ciphertext
  changes whenever it is regenerated. The file is kept as is unless ``--regenerate-pq``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import sys
from pathlib import Path
from typing import Any

import rfc8785
from cryptography.hazmat.primitives import hashes, hpke
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

HERE = Path(__file__).resolve().parent
INFO = b"perf-aggregator/v1/credentials"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def secret(label: str, size: int = 32) -> bytes:
    """A fixed, nothing-up-my-sleeve secret: SHA-512 of a public label, truncated."""
    return hashlib.sha512(f"perf-aggregator test vector: {label}".encode()).digest()[:size]


def x25519_key(label: str) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(secret(label))


def raw_public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


# --------------------------------------------------------------------------- plaintexts

OWNER_KEY = Ed25519PrivateKey.from_private_bytes(secret("owner ed25519"))
OWNER_PUB = OWNER_KEY.public_key().public_bytes_raw()

CASES: list[dict[str, Any]] = [
    {
        "name": "credentials-basic",
        "metadata": {"exchange": "binance", "label": "main", "ttl": 3600},
        # Key order as a JavaScript client's JSON.stringify writes it (not RFC 8785).
        "plaintext": (
            '{"exchange":"binance","apiKey":"vector-api-key","apiSecret":"vector-api-secret"}'
        ),
        "credentials": {
            "exchange": "binance",
            "api_key": "vector-api-key",
            "api_secret": "vector-api-secret",
            "passphrase": None,
            "owner_pub": None,
        },
    },
    {
        "name": "credentials-passphrase-owner-unicode-metadata",
        # Unsorted keys, non-ASCII text and a float that RFC 8785 writes as an integer.
        "metadata": {
            "ttl": 86400.0,
            "label": "compte principal \u00e9 \U0001f680",
            "exchange": "coinbase",
        },
        "plaintext": json.dumps(
            {
                "exchange": "coinbase",
                "apiKey": "vector-key-2",
                "apiSecret": "vector-secret-2/+==",
                "passphrase": "vector-passphrase",
                "owner_pub": b64(OWNER_PUB),
            },
            separators=(",", ":"),
        ),
        "credentials": {
            "exchange": "coinbase",
            "api_key": "vector-key-2",
            "api_secret": "vector-secret-2/+==",
            "passphrase": "vector-passphrase",
            "owner_pub": b64(OWNER_PUB),
        },
    },
    {
        "name": "opaque-plaintext-nested-metadata",
        "metadata": {
            "exchange": "kraken",
            "label": "nested",
            "ttl": 60,
            "extra": {"z": [1, 2.5, 1e21, True, None], "a": "\u20ac", "\u00e9": {}},
        },
        "plaintext": "not credentials: the envelope layer carries any bytes",
        "credentials": None,
    },
]


# --------------------------------------------------------------------------- default alg


def seal_default(
    plaintext: bytes, metadata: Any, recipient: bytes, ephemeral: X25519PrivateKey, nonce: bytes
) -> tuple[dict[str, Any], dict[str, str]]:
    """DESIGN 4 CONTRACT, word for word."""
    e_pub = raw_public(ephemeral)
    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(recipient))
    assert shared != bytes(32)
    salt = e_pub + recipient
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=INFO).derive(shared)
    aad = rfc8785.dumps(metadata)
    sealed = AESGCM(key).encrypt(nonce, plaintext, aad)
    wire = {
        "alg": "x25519-hkdf-sha256-aes256gcm",
        "ephemeral_pub": b64(e_pub),
        "nonce": b64(nonce),
        "ciphertext": b64(sealed[:-16]),
        "tag": b64(sealed[-16:]),
        "metadata": metadata,
    }
    intermediates = {
        "shared_secret": shared.hex(),
        "hkdf_salt": salt.hex(),
        "hkdf_info": INFO.hex(),
        "key": key.hex(),
        "aad": aad.decode("utf-8"),
    }
    return wire, intermediates


# --------------------------------------------------------------------------- RFC 9180


def _extract(salt: bytes, ikm: bytes) -> bytes:
    # RFC 5869 section 2.2: an empty salt is HashLen zero bytes.
    return hmac.new(salt or bytes(32), ikm, hashlib.sha256).digest()


def _labeled_extract(suite_id: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    return _extract(salt, b"HPKE-v1" + suite_id + label + ikm)  # RFC 9180 section 4


def _labeled_expand(suite_id: bytes, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    labeled_info = length.to_bytes(2, "big") + b"HPKE-v1" + suite_id + label + info
    return HKDFExpand(hashes.SHA256(), length, labeled_info).derive(prk)


def hpke_info(metadata: Any) -> bytes:
    """docs/crypto.md: info = INFO || SHA-256(RFC 8785(metadata))."""
    return INFO + hashlib.sha256(rfc8785.dumps(metadata)).digest()


def hpke_key_schedule(kem_id: int, shared_secret: bytes, info: bytes) -> tuple[bytes, bytes]:
    """RFC 9180 section 5.1, mode_base, KDF HKDF-SHA256 (1), AEAD AES-256-GCM (2)."""
    suite_id = b"HPKE" + kem_id.to_bytes(2, "big") + b"\x00\x01" + b"\x00\x02"
    psk_id_hash = _labeled_extract(suite_id, b"", b"psk_id_hash", b"")
    info_hash = _labeled_extract(suite_id, b"", b"info_hash", info)
    context = b"\x00" + psk_id_hash + info_hash
    secret_ = _labeled_extract(suite_id, shared_secret, b"secret", b"")
    key = _labeled_expand(suite_id, secret_, b"key", context, 32)
    base_nonce = _labeled_expand(suite_id, secret_, b"base_nonce", context, 12)
    return key, base_nonce


def seal_hpke_x25519(
    plaintext: bytes, metadata: Any, recipient: bytes, ephemeral: X25519PrivateKey
) -> tuple[dict[str, Any], dict[str, str]]:
    """RFC 9180 SealBase with DHKEM(X25519, HKDF-SHA256) and a fixed ephemeral key."""
    enc = raw_public(ephemeral)
    dh = ephemeral.exchange(X25519PublicKey.from_public_bytes(recipient))
    kem_suite_id = b"KEM" + (0x0020).to_bytes(2, "big")  # RFC 9180 section 4.1
    eae_prk = _labeled_extract(kem_suite_id, b"", b"eae_prk", dh)
    shared_secret = _labeled_expand(kem_suite_id, eae_prk, b"shared_secret", enc + recipient, 32)
    info = hpke_info(metadata)
    key, base_nonce = hpke_key_schedule(0x0020, shared_secret, info)
    sealed = AESGCM(key).encrypt(base_nonce, plaintext, b"")  # seq 0: nonce = base_nonce
    wire = {
        "alg": "hpke-x25519-sha256-aes256gcm",
        "ephemeral_pub": b64(enc),
        "nonce": "",
        "ciphertext": b64(sealed[:-16]),
        "tag": b64(sealed[-16:]),
        "metadata": metadata,
    }
    intermediates = {
        "info": info.hex(),
        "kem_shared_secret": shared_secret.hex(),
        "key": key.hex(),
        "base_nonce": base_nonce.hex(),
    }
    return wire, intermediates


def seal_hpke_hybrid(plaintext: bytes, metadata: Any, recipient: tuple[Any, Any]) -> dict[str, Any]:
    """Random encapsulation through cryptography's Suite (open-only vector)."""
    suite = hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
    public = hpke.MLKEM768X25519PublicKey(recipient[0].public_key(), recipient[1].public_key())
    sealed = suite.encrypt(plaintext, public, info=hpke_info(metadata))
    return {
        "alg": "hpke-mlkem768x25519-sha256-aes256gcm",
        "ephemeral_pub": b64(sealed[:1120]),
        "nonce": "",
        "ciphertext": b64(sealed[1120:-16]),
        "tag": b64(sealed[-16:]),
        "metadata": metadata,
    }


# --------------------------------------------------------------------------- negatives


def flip_b64(value: str, byte_index: int, mask: int) -> str:
    raw = bytearray(base64.b64decode(value))
    raw[byte_index] ^= mask
    return b64(bytes(raw))


def negatives(wire: dict[str, Any], *, x25519: bool) -> list[dict[str, Any]]:
    """Wire forms that parse but must fail to open with the one generic error."""
    out = [
        {"name": "tag-bit-flipped", "wire": {**wire, "tag": flip_b64(wire["tag"], 0, 0x01)}},
        {
            "name": "ciphertext-bit-flipped",
            "wire": {**wire, "ciphertext": flip_b64(wire["ciphertext"], 0, 0x80)},
        },
        {
            "name": "metadata-label-changed",
            "wire": {**wire, "metadata": {**wire["metadata"], "label": "other"}},
        },
        {
            "name": "metadata-key-added",
            "wire": {**wire, "metadata": {**wire["metadata"], "extra": 1}},
        },
    ]
    if x25519:
        out += [
            {
                # RFC 7748 masks bit 255, so X25519 gives the same shared secret; the salt
                # (CONTRACT) / kem_context (RFC 9180) still bind the exact bytes sent.
                "name": "ephemeral-pub-high-bit-alias",
                "wire": {**wire, "ephemeral_pub": flip_b64(wire["ephemeral_pub"], 31, 0x80)},
            },
            {
                "name": "ephemeral-pub-all-zero-low-order",
                "wire": {**wire, "ephemeral_pub": b64(bytes(32))},
            },
        ]
    else:
        out.append(
            {
                "name": "enc-mlkem-part-bit-flipped",
                "wire": {**wire, "ephemeral_pub": flip_b64(wire["ephemeral_pub"], 0, 0x01)},
            }
        )
    return out


# --------------------------------------------------------------------------- main


def build_x25519_file(alg: str) -> dict[str, Any]:
    recipient_key = x25519_key(f"{alg} recipient")
    recipient = raw_public(recipient_key)
    vectors = []
    for case in CASES:
        ephemeral = x25519_key(f"{alg} {case['name']} ephemeral")
        entry: dict[str, Any] = {
            "name": case["name"],
            "ephemeral_private": ephemeral.private_bytes_raw().hex(),
            "metadata_canonical": rfc8785.dumps(case["metadata"]).decode("utf-8"),
            "plaintext": case["plaintext"],
            "credentials": case["credentials"],
        }
        if alg == "x25519-hkdf-sha256-aes256gcm":
            nonce = secret(f"{alg} {case['name']} nonce", 12)
            entry["nonce"] = nonce.hex()
            wire, intermediates = seal_default(
                case["plaintext"].encode(), case["metadata"], recipient, ephemeral, nonce
            )
        else:
            wire, intermediates = seal_hpke_x25519(
                case["plaintext"].encode(), case["metadata"], recipient, ephemeral
            )
        entry["intermediates"] = intermediates
        entry["wire"] = wire
        vectors.append(entry)
    return {
        "description": (
            f"Known-answer vectors for alg {alg}. Deterministic: fixed keys, "
            "ephemeral keys and nonces derived from public labels."
        ),
        "alg": alg,
        "reproducible": True,
        "recipient": {
            "x25519_private": recipient_key.private_bytes_raw().hex(),
            "x25519_public": b64(recipient),
        },
        "vectors": vectors,
        "invalid": negatives(vectors[0]["wire"], x25519=True),
    }


def build_hybrid_file() -> dict[str, Any]:
    alg = "hpke-mlkem768x25519-sha256-aes256gcm"
    mlkem_seed = secret(f"{alg} recipient mlkem seed", 64)
    mlkem_key = MLKEM768PrivateKey.from_seed_bytes(mlkem_seed)
    x_key = x25519_key(f"{alg} recipient x25519")
    public = mlkem_key.public_key().public_bytes_raw() + raw_public(x_key)
    vectors = []
    for case in CASES[:2]:
        vectors.append(
            {
                "name": case["name"],
                "metadata_canonical": rfc8785.dumps(case["metadata"]).decode("utf-8"),
                "plaintext": case["plaintext"],
                "credentials": case["credentials"],
                "intermediates": {"info": hpke_info(case["metadata"]).hex()},
                "wire": seal_hpke_hybrid(
                    case["plaintext"].encode(), case["metadata"], (mlkem_key, x_key)
                ),
            }
        )
    return {
        "description": (
            f"Open-only vectors for alg {alg}: the ML-KEM encapsulation randomness cannot be "
            "injected through cryptography's HPKE API, so regenerating changes enc and "
            "ciphertext. Keys are fixed."
        ),
        "alg": alg,
        "reproducible": False,
        "recipient": {
            "mlkem768_seed": mlkem_seed.hex(),
            "x25519_private": x_key.private_bytes_raw().hex(),
            "public": b64(public),
        },
        "vectors": vectors,
        "invalid": negatives(vectors[0]["wire"], x25519=False),
    }


def write(name: str, document: dict[str, Any]) -> None:
    path = HERE / f"{name}.json"
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--regenerate-pq",
        action="store_true",
        help="rewrite the (non-reproducible) hybrid-KEM vectors too",
    )
    args = parser.parse_args(argv)
    for alg in ("x25519-hkdf-sha256-aes256gcm", "hpke-x25519-sha256-aes256gcm"):
        write(alg, build_x25519_file(alg))
    hybrid = "hpke-mlkem768x25519-sha256-aes256gcm"
    if args.regenerate_pq or not (HERE / f"{hybrid}.json").exists():
        write(hybrid, build_hybrid_file())
    else:
        print(f"kept {hybrid}.json (use --regenerate-pq to rewrite it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
