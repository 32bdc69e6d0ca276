"""Signed results (CONTRACT), report hash chain and owner proofs."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from typing import Any

import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

import shared.signing as signing_module
from shared.errors import PerfAggError, SignatureError
from shared.signing import (
    DEFAULT_MAX_SKEW_SECONDS,
    OwnerProof,
    OwnerProofFormatError,
    owner_proof_message,
    report_hash,
    sign_owner_proof,
    sign_payload,
    sign_payload_and_hash,
    verify_owner_proof,
    verify_payload,
)

# RFC 8032 section 7.1, TEST 1 secret key: a fixed key makes signatures known answers.
RFC8032_SECRET = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC8032_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
ENCLAVE_KEY = Ed25519PrivateKey.from_private_bytes(RFC8032_SECRET)
ENCLAVE_PUB = ENCLAVE_KEY.public_key().public_bytes_raw()
OWNER_KEY = Ed25519PrivateKey.generate()
OWNER_PUB = OWNER_KEY.public_key().public_bytes_raw()
OTHER_PUB = Ed25519PrivateKey.generate().public_key().public_bytes_raw()

SESSION_ID = "sess-CANARY-4c1d9b7e0f2a"
NOW = 1_750_000_000

# A realistic signed-result payload (DESIGN 4): metrics, window, counts, chain fields.
PAYLOAD: dict[str, Any] = {
    "v": 1,
    "method_version": "fifo-v1",
    "pnl": "1234.56",
    "pnl_gross": "1300.01",
    "sharpe": 1.23,
    "sortino": 1.9,
    "max_drawdown": "-0.0812",
    "volume": "1000000.00",
    "trades": 150,
    "orders": 161,
    "win_rate": 0.58,
    "from": "2024-01-01T00:00:00Z",
    "to": "2024-01-02T00:00:00Z",
    "merkle_root": "ab" * 32,
    "pcr0": "cd" * 48,
    "issued_at": 1704153600,
    "sequence": 7,
    "previous_report_hash": "ef" * 32,
    "exchange": "binance",
    "completeness": {"symbols": ["BTCUSDT", "ETHUSDT"], "gaps": []},
}


def test_all_is_exactly_the_public_api() -> None:
    """__all__ lists the module's public names and nothing else."""
    assert set(signing_module.__all__) == {
        "DEFAULT_MAX_SKEW_SECONDS",
        "OWNER_PROOF_PURPOSE",
        "OWNER_PROOF_VERSION",
        "OwnerProof",
        "OwnerProofFormatError",
        "owner_proof_message",
        "report_hash",
        "sign_owner_proof",
        "sign_payload",
        "sign_payload_and_hash",
        "verify_owner_proof",
        "verify_payload",
    }
    assert issubclass(OwnerProofFormatError, ValueError)
    assert issubclass(OwnerProofFormatError, PerfAggError)


# --------------------------------------------------------------------------- signed results


def test_rfc8032_key_is_the_published_test_key() -> None:
    """Sanity: the fixed key really is RFC 8032 TEST 1, so vectors below are reproducible."""
    assert ENCLAVE_PUB == RFC8032_PUBLIC


def test_signature_is_ed25519_over_rfc8785_bytes() -> None:
    """CONTRACT: signature = base64(Ed25519(RFC 8785 canonical JSON of payload))."""
    payload: dict[str, Any] = {
        "b": 1,
        "a": [1.0, "\u00e9", None, True],
        "c": {"z": 1e21, "y": -0.0},
    }
    canonical = b'{"a":[1,"\xc3\xa9",null,true],"b":1,"c":{"y":0,"z":1e+21}}'
    assert rfc8785.dumps(payload) == canonical
    signature = sign_payload(ENCLAVE_KEY, payload)
    # Ed25519 is deterministic: an independent signer over the same bytes gives the same value.
    assert signature == base64.b64encode(ENCLAVE_KEY.sign(canonical)).decode()
    Ed25519PublicKey.from_public_bytes(RFC8032_PUBLIC).verify(
        base64.b64decode(signature), canonical
    )
    verify_payload(ENCLAVE_PUB, payload, signature)


def test_sign_verify_round_trip_realistic_payload() -> None:
    """A ~20-field result payload signs and verifies; the signature is 64 bytes, padded base64."""
    signature = sign_payload(ENCLAVE_KEY, PAYLOAD)
    assert len(base64.b64decode(signature, validate=True)) == 64
    assert signature.endswith("==")
    verify_payload(ENCLAVE_PUB, PAYLOAD, signature)


def test_verification_is_independent_of_key_order_and_number_spelling() -> None:
    """Clients may rebuild the payload in any key order or with 7 vs 7.0: same canonical bytes."""
    signature = sign_payload(ENCLAVE_KEY, {"trades": 7, "pnl": "1.5"})
    verify_payload(ENCLAVE_PUB, {"pnl": "1.5", "trades": 7.0}, signature)


PAYLOAD_MUTATIONS: list[tuple[str, Callable[[dict[str, Any]], dict[str, Any]]]] = [
    ("value-pnl", lambda p: {**p, "pnl": "1234.57"}),
    ("value-trades", lambda p: {**p, "trades": 151}),
    ("value-type", lambda p: {**p, "trades": "150"}),
    ("nested-value", lambda p: {**p, "completeness": {"symbols": ["BTCUSDT"], "gaps": []}}),
    ("key-renamed", lambda p: {("PNL" if k == "pnl" else k): v for k, v in p.items()}),
    ("key-added", lambda p: {**p, "note": ""}),
    ("key-removed", lambda p: {k: v for k, v in p.items() if k != "merkle_root"}),
    ("sequence-replayed", lambda p: {**p, "sequence": 6}),
]


@pytest.mark.parametrize(
    "mutate", [m for _, m in PAYLOAD_MUTATIONS], ids=[n for n, _ in PAYLOAD_MUTATIONS]
)
def test_mutated_payload_fails(mutate: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """Any change to a signed payload makes verification fail."""
    signature = sign_payload(ENCLAVE_KEY, PAYLOAD)
    with pytest.raises(SignatureError, match=r"^signature does not verify$"):
        verify_payload(ENCLAVE_PUB, mutate(PAYLOAD), signature)


GOOD_SIGNATURE = sign_payload(ENCLAVE_KEY, PAYLOAD)
RAW_SIGNATURE = base64.b64decode(GOOD_SIGNATURE)
BAD_VERIFY_INPUTS: list[tuple[str, Any, Any, Any]] = [
    ("wrong-key", OTHER_PUB, PAYLOAD, GOOD_SIGNATURE),
    ("key-31-bytes", ENCLAVE_PUB[:31], PAYLOAD, GOOD_SIGNATURE),
    ("key-33-bytes", ENCLAVE_PUB + b"\x00", PAYLOAD, GOOD_SIGNATURE),
    ("key-not-bytes", ENCLAVE_PUB.hex(), PAYLOAD, GOOD_SIGNATURE),
    ("signature-63-bytes", ENCLAVE_PUB, PAYLOAD, base64.b64encode(RAW_SIGNATURE[:63]).decode()),
    ("signature-65-bytes", ENCLAVE_PUB, PAYLOAD, base64.b64encode(RAW_SIGNATURE + b"\0").decode()),
    ("signature-empty", ENCLAVE_PUB, PAYLOAD, ""),
    ("signature-not-base64", ENCLAVE_PUB, PAYLOAD, "!" * 88),
    ("signature-unpadded", ENCLAVE_PUB, PAYLOAD, GOOD_SIGNATURE.rstrip("=")),
    ("signature-urlsafe", ENCLAVE_PUB, PAYLOAD, GOOD_SIGNATURE.replace("+", "-").replace("/", "_")),
    ("signature-bytes", ENCLAVE_PUB, PAYLOAD, RAW_SIGNATURE),
    ("signature-none", ENCLAVE_PUB, PAYLOAD, None),
    ("signature-huge", ENCLAVE_PUB, PAYLOAD, "A" * 1_000_000),
    ("payload-nan", ENCLAVE_PUB, {**PAYLOAD, "sharpe": float("nan")}, GOOD_SIGNATURE),
    ("payload-unsafe-int", ENCLAVE_PUB, {**PAYLOAD, "trades": 2**60}, GOOD_SIGNATURE),
    ("payload-list", ENCLAVE_PUB, [PAYLOAD], GOOD_SIGNATURE),
    ("payload-surrogate", ENCLAVE_PUB, {**PAYLOAD, "exchange": "\ud800"}, GOOD_SIGNATURE),
    *[
        (
            f"signature-bit-{i}",
            ENCLAVE_PUB,
            PAYLOAD,
            base64.b64encode(
                RAW_SIGNATURE[: i // 8]
                + bytes([RAW_SIGNATURE[i // 8] ^ (1 << (i % 8))])
                + RAW_SIGNATURE[i // 8 + 1 :]
            ).decode(),
        )
        for i in (0, 7, 255, 256, 503, 511)
    ],
]


@pytest.mark.parametrize(
    ("public_key", "payload", "signature"),
    [(k, p, s) for _, k, p, s in BAD_VERIFY_INPUTS],
    ids=[n for n, _, _, _ in BAD_VERIFY_INPUTS],
)
def test_bad_verification_inputs_raise_one_signature_error(
    public_key: Any, payload: Any, signature: Any
) -> None:
    """Wrong key, bad base64, wrong length, flipped bit, bad payload: one SignatureError."""
    with pytest.raises(SignatureError) as info:
        verify_payload(public_key, payload, signature)
    assert str(info.value) == "signature does not verify"
    assert info.value.__cause__ is None


def test_sign_payload_refuses_non_canonicalisable_payload() -> None:
    """The enclave cannot sign something RFC 8785 cannot represent."""
    with pytest.raises(ValueError, match="RFC 8785"):
        sign_payload(ENCLAVE_KEY, {"sharpe": float("inf")})


def test_report_hash_is_hex_sha256_of_canonical_json() -> None:
    """report_hash = lowercase hex SHA-256 of the RFC 8785 bytes, independent of key order."""
    expected = hashlib.sha256(rfc8785.dumps(PAYLOAD)).hexdigest()
    assert report_hash(PAYLOAD) == expected
    assert report_hash(dict(reversed(PAYLOAD.items()))) == expected
    assert report_hash({**PAYLOAD, "sequence": 8}) != expected
    assert expected == expected.lower()
    assert len(expected) == 64


# --------------------------------------------------------------------------- owner proofs


def test_owner_proof_message_is_canonical_and_domain_separated() -> None:
    """The signed bytes are exactly RFC 8785 of {method, purpose, session_id, timestamp, v}."""
    assert owner_proof_message("revoke", "abc", 1700000000) == (
        b'{"method":"revoke","purpose":"perf-aggregator/owner-proof",'
        b'"session_id":"abc","timestamp":1700000000,"v":1}'
    )


def test_owner_proof_round_trip() -> None:
    """A fresh proof verifies for its method and session; wire form round-trips."""
    proof = sign_owner_proof(OWNER_KEY, method="revoke", session_id=SESSION_ID, timestamp=NOW)
    assert proof.to_wire() == {"timestamp": NOW, "signature": proof.signature}
    assert OwnerProof.from_wire(proof.to_wire()) == proof
    verify_owner_proof(OWNER_PUB, proof, method="revoke", session_id=SESSION_ID, now=NOW)


@pytest.mark.parametrize("skew", [-DEFAULT_MAX_SKEW_SECONDS, -1, 0, 1, DEFAULT_MAX_SKEW_SECONDS])
def test_owner_proof_accepted_inside_window(skew: int) -> None:
    """Clock skew up to max_skew_seconds either way is accepted (inclusive bounds)."""
    proof = sign_owner_proof(OWNER_KEY, method="unseal", session_id=SESSION_ID, timestamp=NOW)
    verify_owner_proof(OWNER_PUB, proof, method="unseal", session_id=SESSION_ID, now=NOW + skew)


@pytest.mark.parametrize(
    "skew", [-DEFAULT_MAX_SKEW_SECONDS - 1, DEFAULT_MAX_SKEW_SECONDS + 1, 10**6]
)
def test_owner_proof_refused_outside_window(skew: int) -> None:
    """A proof older or newer than the window is refused even though its signature is good."""
    proof = sign_owner_proof(OWNER_KEY, method="revoke", session_id=SESSION_ID, timestamp=NOW)
    with pytest.raises(SignatureError, match="window"):
        verify_owner_proof(OWNER_PUB, proof, method="revoke", session_id=SESSION_ID, now=NOW + skew)


def test_owner_proof_custom_window() -> None:
    """max_skew_seconds is honoured, including zero."""
    proof = sign_owner_proof(OWNER_KEY, method="revoke", session_id=SESSION_ID, timestamp=NOW)
    verify_owner_proof(
        OWNER_PUB, proof, method="revoke", session_id=SESSION_ID, now=NOW, max_skew_seconds=0
    )
    with pytest.raises(SignatureError):
        verify_owner_proof(
            OWNER_PUB,
            proof,
            method="revoke",
            session_id=SESSION_ID,
            now=NOW + 1,
            max_skew_seconds=0,
        )


VALID_PROOF = sign_owner_proof(OWNER_KEY, method="revoke", session_id=SESSION_ID, timestamp=NOW)
PROOF_FAILURES: list[tuple[str, dict[str, Any]]] = [
    ("wrong-method", {"method": "unseal"}),
    ("wrong-session", {"session_id": SESSION_ID + "x"}),
    ("wrong-key", {"owner_pub_raw": OTHER_PUB}),
    ("enclave-key", {"owner_pub_raw": ENCLAVE_PUB}),
    ("short-key", {"owner_pub_raw": OWNER_PUB[:16]}),
    ("timestamp-moved", {"proof": OwnerProof(timestamp=NOW + 1, signature=VALID_PROOF.signature)}),
    (
        "result-signature-reused",
        {
            "proof": OwnerProof(
                timestamp=NOW, signature=sign_payload(OWNER_KEY, {"method": "revoke"})
            )
        },
    ),
    ("empty-method", {"method": ""}),
    ("not-a-proof", {"proof": VALID_PROOF.to_wire()}),
]


@pytest.mark.parametrize(
    "overrides", [o for _, o in PROOF_FAILURES], ids=[n for n, _ in PROOF_FAILURES]
)
def test_owner_proof_failures(overrides: dict[str, Any]) -> None:
    """Wrong method, session or key, a moved timestamp or a foreign signature: SignatureError."""
    arguments: dict[str, Any] = {
        "owner_pub_raw": OWNER_PUB,
        "proof": VALID_PROOF,
        "method": "revoke",
        "session_id": SESSION_ID,
        "now": NOW,
    }
    arguments.update(overrides)
    with pytest.raises(SignatureError) as info:
        verify_owner_proof(arguments.pop("owner_pub_raw"), arguments.pop("proof"), **arguments)
    assert str(info.value) == "owner proof does not verify"
    assert SESSION_ID not in repr(info.value)


def test_owner_proof_verifier_requires_integer_time() -> None:
    """now and max_skew_seconds are integers; a negative window is a programming error."""
    with pytest.raises(TypeError):
        verify_owner_proof(OWNER_PUB, VALID_PROOF, method="revoke", session_id=SESSION_ID, now=True)
    with pytest.raises(TypeError):
        verify_owner_proof(
            OWNER_PUB,
            VALID_PROOF,
            method="revoke",
            session_id=SESSION_ID,
            now=float(NOW),  # type: ignore[arg-type]
        )
    with pytest.raises(ValueError):
        verify_owner_proof(
            OWNER_PUB,
            VALID_PROOF,
            method="revoke",
            session_id=SESSION_ID,
            now=NOW,
            max_skew_seconds=-1,
        )


PROOF_WIRE_ERRORS: list[tuple[str, Any, str]] = [
    ("not-object", [VALID_PROOF.to_wire()], "object"),
    ("missing-signature", {"timestamp": NOW}, "exactly"),
    ("missing-timestamp", {"signature": VALID_PROOF.signature}, "exactly"),
    ("extra-field", {**VALID_PROOF.to_wire(), "session_id": SESSION_ID}, "exactly"),
    ("timestamp-bool", {**VALID_PROOF.to_wire(), "timestamp": True}, "'timestamp'"),
    ("timestamp-float", {**VALID_PROOF.to_wire(), "timestamp": float(NOW)}, "'timestamp'"),
    ("timestamp-string", {**VALID_PROOF.to_wire(), "timestamp": str(NOW)}, "'timestamp'"),
    ("timestamp-negative", {**VALID_PROOF.to_wire(), "timestamp": -1}, "'timestamp'"),
    ("timestamp-huge", {**VALID_PROOF.to_wire(), "timestamp": 2**53}, "'timestamp'"),
    ("signature-int", {**VALID_PROOF.to_wire(), "signature": 5}, "'signature'"),
    ("signature-bad-b64", {**VALID_PROOF.to_wire(), "signature": "?" * 88}, "'signature'"),
    ("signature-short", {**VALID_PROOF.to_wire(), "signature": "AAAA"}, "'signature'"),
]


@pytest.mark.parametrize(
    ("obj", "hint"),
    [(o, h) for _, o, h in PROOF_WIRE_ERRORS],
    ids=[n for n, _, _ in PROOF_WIRE_ERRORS],
)
def test_owner_proof_from_wire_is_strict(obj: Any, hint: str) -> None:
    """Malformed proofs raise OwnerProofFormatError naming the field, never its value."""
    with pytest.raises(OwnerProofFormatError) as info:
        OwnerProof.from_wire(obj)
    assert hint in str(info.value)
    assert SESSION_ID not in str(info.value)


def test_owner_proof_message_refuses_bad_inputs() -> None:
    """Empty or oversized method/session id and bad timestamps cannot be signed."""
    for method, session_id, timestamp in [
        ("", "s", NOW),
        ("m" * 65, "s", NOW),
        ("revoke", "", NOW),
        ("revoke", "s" * 257, NOW),
        ("revoke", "s", -5),
        ("revoke", "s", True),
    ]:
        with pytest.raises(ValueError) as info:
            owner_proof_message(method, session_id, timestamp)
        assert "s" * 257 not in str(info.value)


# --------------------------------------------------------------------------- property tests

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
PAYLOADS = st.dictionaries(st.text(max_size=12), JSON_VALUES, max_size=8)


@settings(max_examples=200, deadline=None)
@given(PAYLOADS)
def test_any_payload_signs_and_verifies(payload: dict[str, Any]) -> None:
    """Every RFC 8785-representable payload round-trips through sign/verify."""
    verify_payload(ENCLAVE_PUB, payload, sign_payload(ENCLAVE_KEY, payload))


@settings(max_examples=200, deadline=None)
@given(PAYLOADS, st.text(max_size=12), JSON_VALUES)
def test_any_mutated_payload_fails(payload: dict[str, Any], key: str, value: Any) -> None:
    """Setting any key to a value with different canonical bytes breaks the signature."""
    signature = sign_payload(ENCLAVE_KEY, payload)
    mutated = {**payload, key: value}
    if rfc8785.dumps(mutated) == rfc8785.dumps(payload):
        return  # same canonical bytes: same signed message, nothing changed
    with pytest.raises(SignatureError):
        verify_payload(ENCLAVE_PUB, mutated, signature)


@settings(max_examples=100, deadline=None)
@given(PAYLOADS, st.integers(0, 511))
def test_any_flipped_signature_bit_fails(payload: dict[str, Any], bit: int) -> None:
    """Flipping any one of the 512 signature bits breaks verification."""
    raw = bytearray(base64.b64decode(sign_payload(ENCLAVE_KEY, payload)))
    raw[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(SignatureError):
        verify_payload(ENCLAVE_PUB, payload, base64.b64encode(bytes(raw)).decode())


@settings(max_examples=100, deadline=None)
@given(
    st.integers(0, 2**53 - 1), st.text(min_size=1, max_size=64), st.text(min_size=1, max_size=64)
)
def test_owner_proofs_bind_method_and_session(timestamp: int, method: str, session_id: str) -> None:
    """A proof verifies for its own (method, session) and not for a different method."""
    proof = sign_owner_proof(OWNER_KEY, method=method, session_id=session_id, timestamp=timestamp)
    verify_owner_proof(OWNER_PUB, proof, method=method, session_id=session_id, now=timestamp)
    other_method = ("y" if method[0] == "x" else "x") + method[1:]
    with pytest.raises(SignatureError, match="does not verify"):
        verify_owner_proof(
            OWNER_PUB, proof, method=other_method, session_id=session_id, now=timestamp
        )


def test_sign_payload_and_hash_equals_the_separate_calls() -> None:
    """The one-pass helper gives exactly sign_payload's signature and report_hash's hash."""
    key = Ed25519PrivateKey.generate()
    payload = {"pnl": "12.5", "trades": 3, "seq": 2, "prev_report_hash": None, "b": [1, 2]}
    signature, digest = sign_payload_and_hash(key, payload)
    assert signature == sign_payload(key, payload)  # Ed25519 is deterministic (RFC 8032)
    assert digest == report_hash(payload)
    verify_payload(key.public_key().public_bytes_raw(), payload, signature)
