"""Wire protocol: frames encoded+decoded per second vs bare cbor2 on the same body."""

from __future__ import annotations

import cbor2

from bench.common import Result, measure
from shared import protocol as p

BATCH = 100


def run() -> list[Result]:
    """Encode and decode a typical Submit frame; baseline: cbor2.dumps+loads of its body."""
    message = p.Submit(
        request_id=12345,
        alg="x25519-hkdf-sha256-aes256gcm",
        ephemeral_pub=bytes(32),
        nonce=bytes(12),
        ciphertext=bytes(180),
        tag=bytes(16),
        metadata={"exchange": "binance", "label": "main", "ttl": 86400},
    )
    frames = p.encode_frame(message) * BATCH
    body = cbor2.loads(p.encode_message(message))

    def codec() -> None:
        for _ in range(BATCH):
            p.encode_frame(message)
        p.FrameDecoder().feed(frames)

    def bare() -> None:
        for _ in range(BATCH):
            cbor2.loads(cbor2.dumps(body))

    return [
        Result(
            area="protocol",
            name="frame encode+decode (Submit)",
            ops_per_s=measure(codec, batch=BATCH),
            baseline="bare cbor2 dumps+loads",
            baseline_ops_per_s=measure(bare, batch=BATCH),
            extra={"frame_bytes": len(frames) // BATCH},
        )
    ]
