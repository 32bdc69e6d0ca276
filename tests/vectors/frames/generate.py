"""Regenerate frames.json: one sample of every message type and its exact frame bytes.

Run: .venv/bin/python tests/vectors/frames/generate.py
The file is committed; tests check the codec still produces exactly these bytes, so
a change here is a wire-format change and needs a PROTOCOL_VERSION bump.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

from shared import protocol as p

SAMPLES: list[p.Message] = [
    p.Attest(request_id=1, nonce=bytes.fromhex("00112233445566778899aabbccddeeff")),
    p.Submit(
        request_id=2,
        alg="x25519-hkdf-sha256-aes256gcm",
        ephemeral_pub=bytes(range(32)),
        nonce=bytes(range(12)),
        ciphertext=b"\xde\xad\xbe\xef" * 4,
        tag=bytes(range(16, 32)),
        metadata={"exchange": "binance", "label": "main", "ttl": 3600},
    ),
    p.Confirm(request_id=3, session_id="s" * 43, commit=True),
    p.Aggregates(request_id=4, session_id="s" * 43),
    p.SessionMetrics(request_id=5, session_id="s" * 43),
    p.Summary(request_id=6, session_id="s" * 43),
    p.Revoke(
        request_id=7,
        session_id="s" * 43,
        proof_timestamp=1700000000,
        proof_signature="c2ln",
        log_start=3,
    ),
    p.Revoke(
        request_id=8, session_id="s" * 43, proof_timestamp=None, proof_signature=None, log_start=0
    ),
    p.Logs(request_id=14, session_id="s" * 43, start=2),
    p.DiscloseTrade(
        request_id=15,
        session_id="s" * 43,
        symbol="BTC/USDT",
        trade_id="12345",
        tree_size=None,
        proof_timestamp=1700000000,
        proof_signature="c2ln",
    ),
    p.Restore(request_id=9, sealed=(b"a", b"bc"), revocations=None),
    p.Unlock(
        request_id=16,
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="c2VjcmV0",
        aws_session_token=None,
        region="us-east-1",
        key_id="alias/perf-aggregator",
        wrapped_key=b"\x01\x02",
        sealed_keys=b"\x03",
    ),
    p.Checkpoint(request_id=17, max_sessions=100),
    p.Lease(request_id=18, acquire=(bytes(range(32)),), release=(bytes(32), b"\xff" * 32)),
    p.SealRecord(
        request_id=10,
        session_id="s" * 43,
        alg="x25519-hkdf-sha256-aes256gcm",
        ephemeral_pub=bytes(32),
        nonce=bytes(12),
        ciphertext=b"x",
        tag=bytes(16),
        metadata={"purpose": "record", "label": "note"},
        proof_timestamp=1700000000,
        proof_signature="c2ln",
    ),
    p.UnsealRecord(
        request_id=11,
        session_id="s" * 43,
        record_id="7d8c1a1e-0000-4000-8000-000000000000",
        label="note",
        sealed=b"sealed",
        proof_timestamp=1700000000,
        proof_signature="c2ln",
    ),
    p.Health(request_id=12),
    p.Stats(request_id=13),
    p.AttestReply(request_id=1, document=b"\x84\x44\xa1\x01\x38\x22", pq_public=None),
    p.SubmitReply(
        request_id=2, session_id="s" * 43, expires_at=1700003600, exchange="binance", label="main"
    ),
    p.ConfirmReply(request_id=3, sealed_state=b"PAS1"),
    p.AggregatesReply(
        request_id=4,
        payload={"pnl": "0", "sharpe": None, "trades": 0, "ratio": 0.5, "nested": {"a": [1, True]}},
        signature="c2ln",
        merkle_root="00" * 32,
        sealed_state=None,
    ),
    p.MetricsReply(request_id=5, metrics={"symbols": []}),
    p.SummaryReply(request_id=6, summary={"trades": 0}),
    p.RevokeReply(
        request_id=7,
        entries=(b'{"at":"2023-11-14T22:13:20Z","data":{},"index":3,"op":"revoke","v":1}',),
        tree_head={"v": 1, "tree_size": 4},
        signature="c2ln",
        revocations=b"PAR1",
    ),
    p.LogsReply(
        request_id=14,
        entries=(),
        tree_head={"v": 1, "tree_size": 2},
        signature="c2ln",
        sealed_state=None,
    ),
    p.DiscloseTradeReply(request_id=15, envelope={"alg": "x", "metadata": {}}, sealed_state=None),
    p.RestoreReply(request_id=9, restored=2, refused=1),
    p.UnlockReply(request_id=16, created=True, wrapped_key=b"\x01\x02", sealed_keys=b"\x03"),
    p.CheckpointReply(request_id=17, states=(b"PAS1",), more=False),
    p.LeaseReply(request_id=18, polling=3),
    p.SealRecordReply(request_id=10, record_id="r", label="note", sealed=b"blob"),
    p.UnsealRecordReply(request_id=11, envelope={"alg": "x25519-hkdf-sha256-aes256gcm"}),
    p.HealthReply(request_id=12, status="ok", sessions=3, uptime_seconds=60, pcr0="ab" * 48),
    p.StatsReply(request_id=13, counters={"submit.ok": 1}),
    p.ErrorReply(request_id=2**63 - 1, code=p.ErrorCode.NOT_FOUND, message="unknown session"),
]


def to_jsonable(value: Any) -> Any:
    """bytes -> {"$bytes": hex}; tuples -> lists; everything else as is."""
    if isinstance(value, bytes):
        return {"$bytes": value.hex()}
    if isinstance(value, tuple):
        return [to_jsonable(item) for item in value]
    return value


def main() -> None:
    vectors = [
        {
            "type": message.TYPE,
            "fields": {f.name: to_jsonable(getattr(message, f.name)) for f in fields(message)},
            "frame": p.encode_frame(message).hex(),
        }
        for message in SAMPLES
    ]
    path = Path(__file__).with_name("frames.json")
    path.write_text(json.dumps(vectors, indent=1) + "\n")
    print(f"wrote {len(vectors)} vectors to {path}")


if __name__ == "__main__":
    main()
