"""Regenerate the parser-fuzzing corpus seeds in this directory (tests/fuzz loads them).

    PYTHONPATH=. .venv/bin/python tests/vectors/fuzz/generate.py [OUT_DIR]

Each ``<target>/seeds.json`` holds a few small valid inputs and tricky ones (boundary
sizes, lying length headers, non-canonical forms) as ``{"name", "hex"}`` or
``{"name", "json"}`` (``"text"`` for raw JSON bodies), plus the regression seeds of the
bugs the fuzzers found (``"regression": "<what it reproduced>"``). ``world.json`` holds
the deterministic test keys that sign the genuine documents, reports and logs, so the
fuzzers can re-sign what they mutate and reach the checks behind the signatures.

Everything is deterministic (keys from labels, a fixed clock, RFC 6979 ECDSA, Ed25519,
a fixed ephemeral key and nonce for the default envelope alg) except the RSA-OAEP and
HPKE ciphertexts (cms, envelope HPKE seeds), whose libraries take no injected randomness.
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from enclave.nsm import NsmClient
from enclave.nsm_simulator import NsmSimulator
from shared import protocol as p
from shared.attestation import EnclaveKeys, encode_user_data, pcrs_to_json
from shared.encoding import b64encode
from shared.envelope import (
    ALG_HPKE_MLKEM768X25519,
    ALG_HPKE_X25519,
    HybridPrivateKey,
    _seal_default,
    seal,
)
from shared.merkle import (
    InclusionProof,
    MerkleTree,
    TreeHead,
    trade_leaf,
    tree_head_payload,
)
from shared.sealed_state import REVOCATIONS_MAGIC, STATE_MAGIC, SealedHeader
from shared.signing import report_hash, sign_payload
from shared.translog import encode_entry, log_id_for
from tests.fakes.kms.cms_writer import Overrides, build_enveloped_data

HERE = Path(__file__).resolve().parent
T0 = datetime(2025, 6, 1, 8, 0, 0, tzinfo=UTC)
MODULE_ID = "i-0fuzzvector0001-enc0123456789abcdef"
NONCE = b"fuzz-corpus-nonce-0123456789abcd"
P384_ORDER = int(
    "ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf"
    "581a0db248b0a77aecec196accc52973",
    16,
)


def _seed(label: str, size: int = 32) -> bytes:
    return hashlib.shake_256(f"perf-aggregator/fuzz-vectors/{label}".encode()).digest(size)


def _pcr(label: str) -> bytes:
    return hashlib.sha384(bytes(48) + hashlib.sha384(label.encode()).digest()).digest()


BOOT_PCRS = {index: bytes(48) for index in range(16)}
BOOT_PCRS.update({0: _pcr("fuzz image"), 1: _pcr("fuzz kernel"), 2: _pcr("fuzz app")})
EXPECTED_PCRS = {index: BOOT_PCRS[index] for index in (0, 1, 2)}


class DeterministicKeys:
    """P-384 keys derived from (label, counter); remembers them to find a cert's key."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.issued: list[ec.EllipticCurvePrivateKey] = []

    def __call__(self) -> ec.EllipticCurvePrivateKey:
        scalar = int.from_bytes(_seed(f"{self.label}/{len(self.issued)}", 64), "big")
        key = ec.derive_private_key(scalar % (P384_ORDER - 1) + 1, ec.SECP384R1())
        self.issued.append(key)
        return key

    def owner_of(self, cert_der: bytes) -> ec.EllipticCurvePrivateKey:
        public = x509.load_der_x509_certificate(cert_der).public_key()
        return next(key for key in self.issued if key.public_key() == public)


def _hex(name: str, data: bytes, **extra: str) -> dict[str, Any]:
    return {"name": name, "hex": data.hex(), **extra}


def _json(name: str, value: Any, **extra: str) -> dict[str, Any]:
    return {"name": name, "json": value, **extra}


def _write(
    out: Path,
    target: str,
    description: str,
    seeds: list[dict[str, Any]],
    context: dict[str, Any] | None = None,
) -> None:
    (out / target).mkdir(parents=True, exist_ok=True)
    document: dict[str, Any] = {"description": description, "seeds": seeds}
    if context is not None:
        document["context"] = context
    (out / target / "seeds.json").write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")


# --------------------------------------------------------------------------- world


def _world(out: Path) -> dict[str, Any]:
    """The simulator document and keys every signed seed hangs from."""
    signing = Ed25519PrivateKey.from_private_bytes(_seed("ed25519"))
    x25519 = X25519PrivateKey.from_private_bytes(_seed("x25519"))
    keys = DeterministicKeys("nsm")
    with tempfile.TemporaryDirectory() as scratch:
        simulator = NsmSimulator(
            Path(scratch) / "nsm",
            BOOT_PCRS,
            clock=lambda: T0,
            module_id=MODULE_ID,
            key_factory=keys,
        )
        user_data = encode_user_data(
            EnclaveKeys(
                x25519_public=x25519.public_key().public_bytes_raw(),
                ed25519_public=signing.public_key().public_bytes_raw(),
            )
        )
        document = NsmClient(simulator).attestation(user_data=user_data, nonce=NONCE)
        root_der = simulator.root_der
    leaf_der = cbor2.loads(cbor2.loads(document)[2])["certificate"]
    leaf_key = keys.owner_of(leaf_der)
    world = {
        "description": "Test-only keys of the fuzz corpus: the simulator root, the leaf key "
        "that signed document_hex (to re-sign mutated payloads), the enclave's Ed25519 and "
        "X25519 keys (in user_data) and the expected PCRs. Verify at verify_at.",
        "verify_at": T0.isoformat(),
        "nonce_hex": NONCE.hex(),
        "root_der_hex": root_der.hex(),
        "leaf_key_pem": leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode(),
        "ed25519_seed_hex": _seed("ed25519").hex(),
        "x25519_private_hex": _seed("x25519").hex(),
        "expected_pcrs": pcrs_to_json(EXPECTED_PCRS),
        "session_hash_hex": hashlib.sha256(b"fuzz session").hexdigest(),
        "document_hex": document.hex(),
    }
    (out / "world.json").write_text(json.dumps(world, indent=1, sort_keys=True) + "\n")
    return world


# --------------------------------------------------------------------------- targets


def _frames(out: Path) -> None:
    def frame(payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + payload

    attest = p.encode_frame(p.Attest(request_id=7, nonce=b"n" * 16))
    body = cbor2.loads(attest[4:])
    seeds = [
        _hex("attest", attest),
        _hex("two-frames", attest + p.encode_frame(p.Health(request_id=8))),
        _hex(
            "error-reply",
            p.encode_frame(p.ErrorReply(request_id=9, code=p.ErrorCode.NOT_FOUND, message="gone")),
        ),
        _hex("zero-length-header", b"\x00\x00\x00\x00"),
        _hex("length-max-plus-one", struct.pack(">I", p.MAX_FRAME_SIZE + 1) + b"\xa0"),
        _hex("length-all-ones", b"\xff\xff\xff\xff"),
        _hex("length-claims-more", struct.pack(">I", len(attest) + 100) + attest[4:]),
        _hex("header-only-partial", attest[:3]),
        _hex("version-as-float", frame(cbor2.dumps({**body, "v": 2.0}))),
        _hex("version-as-true", frame(cbor2.dumps({**body, "v": True}))),
        _hex("negative-request-id", frame(cbor2.dumps({**body, "id": -1}))),
        _hex("tagged-payload", frame(b"\xd8\x18" + cbor2.dumps(body))),
        _hex("indefinite-map", frame(b"\xbf" + cbor2.dumps(body)[1:] + b"\xff")),
    ]
    _write(
        out,
        "frames",
        "Length-prefixed RPC frames (shared.protocol); tests/vectors/frames "
        "frames.json is loaded beside these.",
        seeds,
    )


def _cbor(out: Path) -> None:
    seeds = [
        _hex("map", cbor2.dumps({"v": 2, "t": "health", "id": 1})),
        _hex("nested", cbor2.dumps([1, [2, [3, {"a": b"\x00"}]], -(2**64), 1.5, None, True])),
        _hex("deep-16", b"\x81" * 16 + b"\x00"),
        _hex("deep-17", b"\x81" * 17 + b"\x00"),
        _hex("duplicate-key", b"\xa2\x61a\x01\x61a\x02"),
        _hex("tag-0-datetime", b"\xc0\x74" + b"2025-01-01T00:00:00Z"),
        _hex("tag-28-shareable", b"\xd8\x1c\x80"),
        _hex("indefinite-bytes", b"\x5f\x41\x00\xff"),
        _hex("trailing-byte", b"\x01\x00"),
        _hex("bstr-claims-2-63", b"\x5b" + (2**63).to_bytes(8, "big") + b"ab"),
        _hex("array-claims-2-32", b"\x9a\xff\xff\xff\xff\x00"),
        _hex("map-claims-2-64-1", b"\xbb" + b"\xff" * 8 + b"\x00\x00"),
        _hex("invalid-utf8", b"\x62\xc3\x28"),
        _hex("reserved-ai-28", b"\x1c"),
        _hex("break-alone", b"\xff"),
        _hex("half-float-nan", b"\xf9\x7e\x00"),
        _hex("simple-undefined", b"\xf7"),
    ]
    _write(out, "cbor", "Single CBOR items for shared.cbor.strict_loads.", seeds)


def _envelope(out: Path) -> dict[str, Any]:
    """Write the envelope seeds; return the genuine default-alg wire envelope."""
    x25519 = X25519PrivateKey.from_private_bytes(_seed("envelope/x25519"))
    hybrid = HybridPrivateKey(
        mlkem=MLKEM768PrivateKey.from_seed_bytes(_seed("envelope/mlkem", 64)),
        x25519=X25519PrivateKey.from_private_bytes(_seed("envelope/hybrid-x25519")),
    )
    recipient = x25519.public_key().public_bytes_raw()
    metadata = {"exchange": "binance", "label": "main", "ttl": 3600, "issued_at": 1748764800}
    plaintext = json.dumps(
        {"exchange": "binance", "apiKey": "fuzz-key", "apiSecret": "fuzz-secret"},
        separators=(",", ":"),
    ).encode()
    default = _seal_default(
        plaintext,
        recipient_x25519=recipient,
        metadata=metadata,
        ephemeral_private=X25519PrivateKey.from_private_bytes(_seed("envelope/ephemeral")),
        nonce=_seed("envelope/nonce", 12),
    ).to_wire()
    hpke = seal(plaintext, metadata=metadata, alg=ALG_HPKE_X25519, recipient_x25519=recipient)
    hybrid_env = seal(
        b"a record",
        metadata={"purpose": "record", "label": "note"},
        alg=ALG_HPKE_MLKEM768X25519,
        recipient_pq=hybrid.public_bytes(),
    )
    no_alg = {k: v for k, v in default.items() if k != "alg"}
    low_order = dict(default, ephemeral_pub=b64encode(bytes(32)))
    seeds = [
        _json("default-alg", default, opens="true"),
        _json("default-alg-implicit", no_alg, opens="true"),
        _json("hpke-x25519", hpke.to_wire(), opens="true"),
        _json("hpke-mlkem768x25519", hybrid_env.to_wire(), opens="true"),
        _json("low-order-point-zero", low_order),
        _json("low-order-point-one", dict(default, ephemeral_pub=b64encode(b"\x01" + bytes(31)))),
        _json("non-canonical-base64", dict(default, tag=default["tag"][:-2] + "B=")),
        _json("metadata-float-ttl", dict(default, metadata=dict(metadata, ttl=3600.0))),
        _json("metadata-deep", dict(default, metadata={"a": [[[[[[[[[1]]]]]]]]]})),
        _json("metadata-huge-int", dict(default, metadata={"n": 2**60})),
        _json("unknown-field", dict(default, extra="x")),
        _json("hpke-with-nonce", dict(hpke.to_wire(), nonce=default["nonce"])),
    ]
    context = {
        "x25519_private_hex": _seed("envelope/x25519").hex(),
        "mlkem_seed_hex": _seed("envelope/mlkem", 64).hex(),
        "hybrid_x25519_private_hex": _seed("envelope/hybrid-x25519").hex(),
    }
    _write(
        out,
        "envelope",
        "Credential and record envelopes in their JSON wire form "
        "(shared.envelope); 'opens' marks the genuine ones, context holds the keys.",
        seeds,
        context,
    )
    return default


def _attestation(out: Path, world: dict[str, Any]) -> None:
    document = bytes.fromhex(world["document_hex"])
    outer = cbor2.loads(document)
    seeds = [
        _hex("world-document", document),
        _hex("tag-18-wrapped", b"\xd2" + document),
        _hex("indefinite-outer", b"\x9f" + document[1:] + b"\xff"),
        _hex("detached-payload", cbor2.dumps([outer[0], {}, None, outer[3]])),
        _hex("empty-array", b"\x80"),
        _hex(
            "payload-claims-2-32", b"\x84" + cbor2.dumps(outer[0]) + b"\xa0\x5a\xff\xff\xff\xffab"
        ),
    ]
    _write(
        out,
        "attestation",
        "COSE_Sign1 documents; world-document verifies with world.json "
        "(tests also load tests/vectors/attestation and its aws/ copies).",
        seeds,
    )


def _b64(out: Path) -> None:
    cases = [
        ("empty", "", None),
        ("one-byte", "AA==", None),
        ("non-zero-pad-bits", "AB==", None),
        ("missing-padding", "QQ", None),
        ("three-bytes", "QUJD", None),
        ("newline", "QUJD\n", None),
        ("leading-space", " QUJD", None),
        ("inner-space", "QU JD", None),
        ("url-safe-alphabet", "-_8=", None),
        ("standard-alphabet", "+/8=", None),
        ("padding-only", "====", None),
        ("padding-inside", "QUI=QUI=", None),
        ("fullwidth-letters", "\uff21\uff21==", None),
        ("nul", "QUJD\x00", None),
        ("extra-padding", "QQ===", None),
        ("at-cap", "AAAA", 3),
        ("over-cap-by-one-char", "AAAAAA==", 3),
    ]
    seeds = [_json(name, {"text": text, "max_len": cap}) for name, text, cap in cases]
    seeds.append(
        _json(
            "decoded-over-cap",
            {"text": "AAAA", "max_len": 1},
            regression="b64decode returned 3 bytes for max_len=1: the length pre-check "
            "bounds the encoded form, not the decoded size it documents",
        )
    )
    _write(
        out,
        "base64",
        "{text, max_len} for shared.encoding.b64decode (canonical padded "
        "base64 only; max_len bounds the decoded size).",
        seeds,
    )


def _json_body(out: Path, envelope: dict[str, Any]) -> None:
    bodies = [
        ("object", '{"a":1}'),
        ("submit", json.dumps({"envelope": envelope})),
        ("duplicate-key", '{"a":1,"a":2}'),
        ("nested-duplicate", '{"a":{"b":1,"b":1}}'),
        ("nan", '{"a":NaN}'),
        ("minus-infinity", '{"a":-Infinity}'),
        ("float-overflow", '{"a":1e400}'),
        ("array", "[1,2]"),
        ("bom", "\ufeff{}"),
        ("lone-surrogate", '{"a":"\\ud800"}'),
        ("deep", "[" * 3000 + "]" * 3000),
        ("huge-int", '{"a":' + "9" * 5000 + "}"),
        ("trailing-garbage", '{"a":1} x'),
        ("empty", ""),
    ]
    _write(
        out,
        "json_body",
        "Raw request bodies for parent.api.validation.read_json_object.",
        [{"name": name, "text": text} for name, text in bodies],
    )


def _cms(out: Path) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    data_key = _seed("cms/data-key")
    seeds = [
        _hex("ber", build_enveloped_data(data_key, private.public_key())),
        _hex("der", build_enveloped_data(data_key, private.public_key(), form="der")),
        _hex(
            "ber-small-segments",
            build_enveloped_data(
                data_key, private.public_key(), overrides=Overrides(segment_size=7)
            ),
        ),
        _hex("nesting-bomb", b"\x30\x80" * 12 + b"\x00\x00" * 12),
        _hex("long-form-length-4-octets", b"\x30\x84\x00\x00\x00\x05\x02\x01\x02\x05\x00"),
        _hex("high-tag-number", b"\x1f\x81\x00\x00"),
    ]
    context = {
        "private_key_pem": private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode(),
        "data_key_hex": data_key.hex(),
    }
    _write(
        out,
        "cms",
        "KMS CiphertextForRecipient answers (enclave.cms); context "
        "private_key_pem opens ber, der and ber-small-segments to data_key_hex "
        "(tests also load tests/vectors/kms/kms-answer.ber.hex).",
        seeds,
        context,
    )


def _merkle(out: Path) -> None:
    leaves = [f"leaf-{i}".encode() for i in range(13)]
    tree = MerkleTree(leaves)
    seeds = [
        _json(
            "inclusion-0-of-13",
            InclusionProof.from_hashes(0, 13, tree.inclusion_proof(0, 13)).to_json(),
        ),
        _json(
            "inclusion-12-of-13",
            InclusionProof.from_hashes(12, 13, tree.inclusion_proof(12, 13)).to_json(),
        ),
        _json(
            "inclusion-5-of-8",
            InclusionProof.from_hashes(5, 8, tree.inclusion_proof(5, 8)).to_json(),
        ),
        _json("inclusion-index-equals-size", {"index": 3, "size": 3, "path": []}),
        _json("inclusion-bool-size", {"index": 0, "size": True, "path": []}),
        _json("inclusion-2-53", {"index": 0, "size": 2**53, "path": []}),
        _json("inclusion-65-nodes", {"index": 0, "size": 2, "path": ["00" * 32] * 65}),
        _json("inclusion-uppercase", {"index": 0, "size": 2, "path": ["AB" * 32]}),
        _json(
            "consistency-5-13",
            {
                "old_size": 5,
                "new_size": 13,
                "path": [h.hex() for h in tree.consistency_proof(5, 13)],
            },
        ),
        _json(
            "consistency-8-13",
            {
                "old_size": 8,
                "new_size": 13,
                "path": [h.hex() for h in tree.consistency_proof(8, 13)],
            },
        ),
        _json("consistency-0-13", {"old_size": 0, "new_size": 13, "path": []}),
        _json("consistency-old-larger", {"old_size": 14, "new_size": 13, "path": []}),
        _json(
            "tree-head",
            tree_head_payload(
                "perf-aggregator:ops:" + "ab" * 32, 13, tree.root().hex(), 1748764800
            ),
        ),
        _json(
            "tree-head-v-float",
            dict(
                TreeHead(log_id="x", size=1, root_hash="00" * 32, timestamp=0).to_payload(), v=1.0
            ),
        ),
        _json(
            "tree-head-log-id-newline",
            dict(
                TreeHead(log_id="x", size=1, root_hash="00" * 32, timestamp=0).to_payload(),
                log_id="x\n",
            ),
        ),
    ]
    _write(
        out,
        "merkle",
        "RFC 6962 proofs and tree heads in their JSON wire forms "
        "(shared.merkle); the genuine ones are over leaves b'leaf-0'..b'leaf-12'.",
        seeds,
    )


def _signed_log(
    world: dict[str, Any], reports: list[dict[str, Any]], *, drop_seq: bool = False
) -> dict[str, Any]:
    """The whole log of the reports, signed; ``drop_seq`` leaves seq out of report entries."""
    signing = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(world["ed25519_seed_hex"]))
    entries = [encode_entry(0, "submit", at=1748764800, data={"exchange": "binance"})]
    entries.append(encode_entry(1, "poll", at=1748764860, data={"trades": 5}))
    for report in reports:
        data: dict[str, Any] = {"seq": report["seq"], "report_hash": report_hash(report)}
        if drop_seq:
            del data["seq"]
        entries.append(
            encode_entry(len(entries), "report", at=1748764900 + len(entries), data=data)
        )
    tree = MerkleTree(entries)
    log_id = log_id_for(bytes.fromhex(world["session_hash_hex"]))
    head = tree_head_payload(log_id, tree.size, tree.root().hex(), 1748765000)
    return {
        "tree_head": {"payload": head, "signature": sign_payload(signing, head)},
        "entries": [
            {
                "index": i,
                "entry": json.loads(leaf),
                "inclusion_proof": InclusionProof.from_hashes(
                    i, tree.size, tree.inclusion_proof(i, tree.size)
                ).to_json(),
            }
            for i, leaf in enumerate(entries)
        ],
    }


def _trades_and_reports(world: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Three chained signed reports over a growing salted trade tree, and one disclosure."""
    trades = [
        {
            "symbol": "BTC/USDT",
            "id": str(i),
            "side": "buy" if i % 2 else "sell",
            "price": f"10{i}.5",
        }
        for i in range(1, 6)
    ]
    salts = [_seed(f"salt/{i}") for i in range(len(trades))]
    leaves = [trade_leaf(trade, salt) for trade, salt in zip(trades, salts, strict=True)]
    tree = MerkleTree(leaves)
    pcr0 = world["expected_pcrs"]["0"]
    reports: list[dict[str, Any]] = []
    for seq, size in ((1, 2), (2, 3), (3, 5)):
        payload: dict[str, Any] = {
            "v": 1,
            "session_hash": world["session_hash_hex"],
            "seq": seq,
            "prev_report_hash": report_hash(reports[-1]) if reports else None,
            "pcr0": pcr0,
            "exchange": "binance",
            "merkle_root": tree.root_at(size).hex(),
            "merkle_tree_size": size,
            "metrics": {
                "pnl": "12.5",
                "trades": size,
                "daily": [{"day": "2025-05-31", "pnl": "1"}],
            },
        }
        reports.append(payload)
    disclosure = {
        "v": 1,
        "purpose": "perf-aggregator/trade-disclosure",
        "session_hash": world["session_hash_hex"],
        "fields": trades[1],
        "salt": b64encode(salts[1]),
        "inclusion_proof": InclusionProof.from_hashes(1, 2, tree.inclusion_proof(1, 2)).to_json(),
        "merkle_root": tree.root_at(2).hex(),
    }
    return reports, [disclosure]


def _signed_targets(out: Path, world: dict[str, Any]) -> None:
    signing = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(world["ed25519_seed_hex"]))
    reports, disclosures = _trades_and_reports(world)
    log = _signed_log(world, reports)
    unsequenced_log = _signed_log(world, reports, drop_seq=True)
    _write(
        out,
        "translog",
        "GET /api/logs bodies (shared.translog.verify_log) signed by the world.json Ed25519 "
        "key for session_hash_hex; {patch_of, set: [[path, value]...]} seeds are the named "
        "seed with those values set.",
        [
            _json("genuine-log", log),
            _patch(
                "genuine-log",
                "regression-op-is-a-list",
                [(["entries", 0, "entry", "op"], [])],
                "verify_log raised TypeError (unhashable list) instead of TransparencyLogError",
            ),
            _json(
                "regression-report-without-seq",
                unsequenced_log,
                regression="VerifiedLog.reports() raised KeyError on a signed report entry "
                "without seq",
            ),
        ],
    )
    _write(
        out,
        "disclosure",
        "Trade disclosures (shared.disclosure.verify_disclosure) and the "
        "report payload they prove against.",
        [_json("genuine", {"disclosure": disclosures[0], "report_payload": reports[0]})],
    )
    bundle = {
        "format": "perf-aggregator/proof-bundle",
        "v": 1,
        "created_at": "2025-06-01T08:30:00Z",
        "attestation": {
            "document": b64encode(bytes.fromhex(world["document_hex"])),
            "nonce": world["nonce_hex"],
        },
        "pcrs_source": {"description": "fuzz world", "pcrs": world["expected_pcrs"]},
        "reports": [{"payload": r, "signature": sign_payload(signing, r)} for r in reports],
        "disclosures": disclosures,
        "log": log,
    }
    _write(
        out,
        "bundle",
        "Proof bundles (shared.bundle.verify_bundle); genuine verifies with world.json "
        "(root, expected PCRs; 'pcrs' lists the indexes a seed pins, default 0, 1, 2); "
        "{patch_of, set: [[path, value]...]} seeds are the named seed with those values set.",
        [_json("genuine", bundle), *_bundle_regressions(world, reports, signing)],
    )


def _patch(
    base: str, name: str, sets: list[tuple[list[Any], Any]], regression: str, **extra: Any
) -> dict[str, Any]:
    """A seed that is ``base`` with the values at ``sets``' paths replaced."""
    patch = {"patch_of": base, "set": [[path, value] for path, value in sets], **extra}
    return {"name": name, "json": patch, "regression": regression}


def _document_with(world: dict[str, Any], change: dict[str, Any], *, resign: bool) -> str:
    """The world document with payload fields changed, re-signed or with its old signature."""
    document = bytes.fromhex(world["document_hex"])
    protected, _, payload, signature = cbor2.loads(document)
    fields = cbor2.loads(payload)
    fields.update(change)
    payload = cbor2.dumps(fields)
    if resign:
        key = serialization.load_pem_private_key(world["leaf_key_pem"].encode(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        r, s = decode_dss_signature(
            key.sign(
                cbor2.dumps(["Signature1", protected, b"", payload]),
                ec.ECDSA(hashes.SHA384(), deterministic_signing=True),
            )
        )
        signature = r.to_bytes(48, "big") + s.to_bytes(48, "big")
    return b64encode(cbor2.dumps([protected, {}, payload, signature]))


def _bundle_regressions(
    world: dict[str, Any], reports: list[dict[str, Any]], signing: Ed25519PrivateKey
) -> list[dict[str, Any]]:
    """Each input that made verify_bundle raise instead of returning a verdict."""

    def resigned(index: int, field: str, value: Any) -> list[tuple[list[Any], Any]]:
        payload = dict(reports[index], **{field: value})
        return [
            (["reports", index, "payload", field], value),
            (["reports", index, "signature"], sign_payload(signing, payload)),
        ]

    pcrs = cbor2.loads(cbor2.loads(bytes.fromhex(world["document_hex"]))[2])["pcrs"]
    without_pcr0 = {index: value for index, value in pcrs.items() if index != 0}
    return [
        _patch(
            "genuine",
            "regression-timestamp-out-of-range",
            [
                (
                    ["attestation", "document"],
                    _document_with(world, {"timestamp": 2**64 - 1}, resign=False),
                )
            ],
            "ValueError (year out of range) from the unauthenticated document timestamp",
        ),
        _patch(
            "genuine",
            "regression-disclosure-size-list",
            [(["disclosures", 0, "inclusion_proof", "size"], [])],
            "TypeError (unhashable list) looking up the report by an unsigned tree size",
        ),
        _patch(
            "genuine",
            "regression-log-op-list",
            [(["log", "entries", 0, "entry", "op"], [])],
            "TypeError (unhashable list) from shared.translog.parse_entry",
        ),
        _patch(
            "genuine",
            "regression-prev-hash-non-ascii",
            resigned(1, "prev_report_hash", "\u00e9"),
            "TypeError from hmac.compare_digest on non-ASCII text (signed report)",
        ),
        _patch(
            "genuine",
            "regression-session-hash-list",
            resigned(1, "session_hash", ["x"]),
            "TypeError (unhashable list) collecting session hashes (signed report)",
        ),
        _patch(
            "genuine",
            "regression-report-entry-without-seq",
            [(["log"], _signed_log(world, reports, drop_seq=True))],
            "KeyError from VerifiedLog.reports() on a signed report entry without seq",
        ),
        _patch(
            "genuine",
            "regression-no-pcr0",
            [
                (
                    ["attestation", "document"],
                    _document_with(world, {"pcrs": without_pcr0}, resign=True),
                )
            ],
            "KeyError (PCR 0) when the verifier pins PCR1 and PCR2 only",
            pcrs=[1, 2],
        ),
    ]


def _sealed_state(out: Path) -> None:
    header = SealedHeader(
        magic=STATE_MAGIC, session_hash=_seed("sealed/session"), version=3, expires_at=1748800000
    )
    body = _seed("sealed/nonce", 12) + _seed("sealed/ciphertext", 40) + _seed("sealed/tag", 16)
    revocations = SealedHeader(
        magic=REVOCATIONS_MAGIC, session_hash=bytes(32), version=1, expires_at=0
    )
    seeds = [
        _hex("state", header.encode() + body),
        _hex("revocations", revocations.encode() + body),
        _hex("minimum-size", header.encode() + bytes(28)),
        _hex("one-short", header.encode() + bytes(27)),
        _hex("wrong-magic", b"PAS2" + header.encode()[4:] + body),
    ]
    _write(out, "sealed_state", "Sealed blobs (shared.sealed_state.SealedHeader.parse).", seeds)


def generate(out: Path) -> None:
    """Write world.json and every <target>/seeds.json into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    world = _world(out)
    _frames(out)
    _cbor(out)
    envelope = _envelope(out)
    _attestation(out, world)
    _b64(out)
    _json_body(out, envelope)
    _cms(out)
    _merkle(out)
    _signed_targets(out, world)
    _sealed_state(out)


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
