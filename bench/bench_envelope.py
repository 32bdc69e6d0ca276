"""Envelope and signing throughput against bare-primitive baselines measured in the same run.

Figures: envelope open/s (default alg) vs X25519 + HKDF + AES-GCM done inline; seal/s vs
the same inline; credential opening (envelope + JSON checks) vs envelope open; HPKE and
hybrid-KEM open/s vs cryptography's bare ``Suite.decrypt``; ``sign_payload`` /
``verify_payload`` on a ~20-field result payload vs bare Ed25519 over the same bytes.
The ratio is the cost of parsing, validation, canonical JSON and the no-oracle wrapping.
"""

from __future__ import annotations

import hashlib
import os
from functools import partial
from typing import Any

from cryptography.hazmat.primitives import hashes, hpke
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from bench.common import Result, measure
from shared.encoding import canonical_json
from shared.envelope import (
    ALG_HPKE_MLKEM768X25519,
    ALG_HPKE_X25519,
    ALG_X25519_HKDF,
    ENVELOPE_INFO,
    Credentials,
    EnvelopeOpener,
    HybridPrivateKey,
    encrypt_credentials,
    open_credentials,
    seal,
)
from shared.signing import sign_payload, verify_payload

__all__ = ["run"]

AREA = "envelope"
MIN_TIME = 0.5
METADATA = {"exchange": "binance", "label": "main", "ttl": 3600}
CREDENTIALS = Credentials(
    exchange="binance",
    api_key="bench-" + "k" * 58,
    api_secret="bench-" + "s" * 58,
    owner_pub=bytes(32),
)
PLAINTEXT = CREDENTIALS.to_plaintext()
PAYLOAD: dict[str, Any] = {
    "v": 1,
    "method_version": "fifo-v1",
    "pnl": "1234.56",
    "pnl_gross": "1300.01",
    "return_pct": "12.34",
    "sharpe": 1.23,
    "sortino": 1.9,
    "max_drawdown": "-0.0812",
    "max_drawdown_days": 12,
    "volume": "1000000.00",
    "trades": 150,
    "orders": 161,
    "win_rate": 0.58,
    "profit_factor": 1.7,
    "from": "2024-01-01T00:00:00Z",
    "to": "2024-01-02T00:00:00Z",
    "merkle_root": "ab" * 32,
    "pcr0": "cd" * 48,
    "issued_at": 1704153600,
    "sequence": 7,
    "previous_report_hash": "ef" * 32,
}


def _bench_envelopes() -> list[Result]:
    enclave = X25519PrivateKey.generate()
    hybrid = HybridPrivateKey.generate()
    opener = EnvelopeOpener(enclave)
    pq_opener = EnvelopeOpener(enclave, pq_private=hybrid)
    enclave_pub = opener.public_keys().x25519
    aad = canonical_json(METADATA)

    envelope = seal(PLAINTEXT, metadata=METADATA, recipient_x25519=enclave_pub)
    ephemeral_pub, nonce, sealed = (
        envelope.ephemeral_pub,
        envelope.nonce,
        envelope.ciphertext + envelope.tag,
    )

    def bare_open() -> bytes:
        shared = enclave.exchange(X25519PublicKey.from_public_bytes(ephemeral_pub))
        key = HKDF(hashes.SHA256(), 32, ephemeral_pub + enclave_pub, ENVELOPE_INFO).derive(shared)
        return AESGCM(key).decrypt(nonce, sealed, aad)

    def bare_seal() -> bytes:
        ephemeral = X25519PrivateKey.generate()
        e_pub = ephemeral.public_key().public_bytes_raw()
        shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(enclave_pub))
        key = HKDF(hashes.SHA256(), 32, e_pub + enclave_pub, ENVELOPE_INFO).derive(shared)
        return AESGCM(key).encrypt(os.urandom(12), PLAINTEXT, aad)

    assert bare_open() == opener.open(envelope) == PLAINTEXT
    open_rate = measure(lambda: opener.open(envelope), min_time=MIN_TIME)
    results = [
        Result(
            area=AREA,
            name=f"open {ALG_X25519_HKDF}",
            ops_per_s=open_rate,
            baseline="inline X25519 + HKDF-SHA256 + AES-256-GCM decrypt",
            baseline_ops_per_s=measure(bare_open, min_time=MIN_TIME),
            extra={"plaintext_bytes": len(PLAINTEXT)},
        ),
        Result(
            area=AREA,
            name=f"seal {ALG_X25519_HKDF}",
            ops_per_s=measure(
                lambda: seal(PLAINTEXT, metadata=METADATA, recipient_x25519=enclave_pub),
                min_time=MIN_TIME,
            ),
            baseline="inline X25519 keygen + exchange + HKDF + AES-256-GCM encrypt",
            baseline_ops_per_s=measure(bare_seal, min_time=MIN_TIME),
        ),
    ]
    credentials_envelope = encrypt_credentials(
        CREDENTIALS, metadata=METADATA, recipient_x25519=enclave_pub
    )
    results.append(
        Result(
            area=AREA,
            name="open_credentials (default alg)",
            ops_per_s=measure(
                lambda: open_credentials(opener, credentials_envelope), min_time=MIN_TIME
            ),
            baseline=f"EnvelopeOpener.open {ALG_X25519_HKDF}",
            baseline_ops_per_s=open_rate,
        )
    )

    pq_keys = pq_opener.public_keys()
    for alg, suite, private_key in (
        (
            ALG_HPKE_X25519,
            hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM),
            enclave,
        ),
        (
            ALG_HPKE_MLKEM768X25519,
            hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM),
            hpke.MLKEM768X25519PrivateKey(hybrid.mlkem, hybrid.x25519),
        ),
    ):
        hpke_envelope = seal(
            PLAINTEXT,
            metadata=METADATA,
            alg=alg,
            recipient_x25519=pq_keys.x25519,
            recipient_pq=pq_keys.pq,
        )
        info = ENVELOPE_INFO + hashlib.sha256(aad).digest()  # docs/crypto.md HPKE info
        blob = hpke_envelope.ephemeral_pub + hpke_envelope.ciphertext + hpke_envelope.tag

        def bare_hpke(
            suite: hpke.Suite = suite,
            blob: bytes = blob,
            key: Any = private_key,
            info: bytes = info,
        ) -> bytes:
            return suite.decrypt(blob, key, info=info)

        assert bare_hpke() == pq_opener.open(hpke_envelope) == PLAINTEXT
        results.append(
            Result(
                area=AREA,
                name=f"open {alg}",
                ops_per_s=measure(partial(pq_opener.open, hpke_envelope), min_time=MIN_TIME),
                baseline="bare hpke.Suite.decrypt",
                baseline_ops_per_s=measure(bare_hpke, min_time=MIN_TIME),
            )
        )
    return results


def _bench_signing() -> list[Result]:
    key = Ed25519PrivateKey.generate()
    public_raw = key.public_key().public_bytes_raw()
    public_key = key.public_key()
    message = canonical_json(PAYLOAD)
    signature_b64 = sign_payload(key, PAYLOAD)
    raw_signature = key.sign(message)
    verify_payload(public_raw, PAYLOAD, signature_b64)
    return [
        Result(
            area=AREA,
            name=f"sign_payload ({len(PAYLOAD)}-field payload)",
            ops_per_s=measure(lambda: sign_payload(key, PAYLOAD), min_time=MIN_TIME),
            baseline="bare Ed25519 sign of the same canonical bytes",
            baseline_ops_per_s=measure(lambda: key.sign(message), min_time=MIN_TIME),
            extra={"canonical_bytes": len(message)},
        ),
        Result(
            area=AREA,
            name=f"verify_payload ({len(PAYLOAD)}-field payload)",
            ops_per_s=measure(
                lambda: verify_payload(public_raw, PAYLOAD, signature_b64), min_time=MIN_TIME
            ),
            baseline="bare Ed25519 verify of the same canonical bytes",
            baseline_ops_per_s=measure(
                lambda: public_key.verify(raw_signature, message), min_time=MIN_TIME
            ),
        ),
    ]


def run() -> list[Result]:
    """Measure every figure above; about 6 s on a laptop."""
    return _bench_envelopes() + _bench_signing()


if __name__ == "__main__":
    for result in run():
        print(
            f"{result.name:48} {result.ops_per_s:10.0f}/s  vs {result.baseline_ops_per_s:10.0f}/s"
            f"  ratio {result.ratio:5.2f}  ({result.baseline})"
        )
