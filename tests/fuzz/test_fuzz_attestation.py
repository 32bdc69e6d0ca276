"""Fuzz shared.attestation: decode_document and AttestationVerifier.verify raise only
AttestationError.

Seeds: the real AWS documents (tests/vectors/attestation/aws), the simulator vectors
and their single-defect copies (tests/vectors/attestation), and the fuzz world's
document (tests/vectors/fuzz/world.json), whose leaf key lets the fuzzer re-sign a
mutated payload so that the checks behind the COSE signature (chain, dates, PCRs,
nonce, user_data) see hostile values too.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import event, example, given
from hypothesis import strategies as st

import shared.attestation as attestation
from shared.attestation import (
    MAX_DOCUMENT_SIZE,
    AttestationDocument,
    AttestationVerifier,
    EnclaveKeys,
    Reason,
    VerifiedAttestation,
    decode_document,
    decode_user_data,
    pcrs_from_json,
)
from shared.errors import AttestationError
from tests.fuzz import world
from tests.fuzz.mutations import Draw, mutated_bytes
from tests.fuzz.support import VECTORS, attempt, counted, fuzz_settings, load_seeds

WORLD_VERIFIER = AttestationVerifier(expected_pcrs=world.EXPECTED_PCRS, root_der=world.ROOT_DER)
WORLD_DOCUMENT, WORLD_AT, WORLD_NONCE = world.DOCUMENT, world.VERIFY_AT, world.NONCE

ATTESTATION = VECTORS / "attestation"
AWS = {path.name: path.read_bytes() for path in sorted((ATTESTATION / "aws").glob("*.cbor"))}
SIM = {path.name: path.read_bytes() for path in sorted(ATTESTATION.glob("*.cbor"))}
SEEDS = load_seeds("attestation")
CORPUS: list[bytes] = [WORLD_DOCUMENT, *AWS.values(), *SIM.values(), *SEEDS.values()]


def _aws_target(document: bytes) -> tuple[AttestationVerifier, datetime, bytes | None]:
    doc, _ = decode_document(document)
    verifier = AttestationVerifier(expected_pcrs=doc.pcrs, require_keys=False)
    return verifier, datetime.fromtimestamp(doc.timestamp / 1000, UTC), None


def _sim_target() -> tuple[AttestationVerifier, datetime, bytes | None]:
    manifest = json.loads((ATTESTATION / "manifest.json").read_text())
    case = next(case for case in manifest["cases"] if case["name"] == "valid")
    root_pem = (ATTESTATION / manifest["root"]).read_bytes()
    root = x509.load_pem_x509_certificate(root_pem).public_bytes(serialization.Encoding.DER)
    verifier = AttestationVerifier(
        expected_pcrs=pcrs_from_json(manifest["expected_pcrs"]), root_der=root
    )
    return verifier, datetime.fromisoformat(case["verify_at"]), bytes.fromhex(case["nonce"])


# Genuine documents and how each verifies: (verifier, now, nonce).
TARGETS: dict[bytes, tuple[AttestationVerifier, datetime, bytes | None]] = {
    WORLD_DOCUMENT: (WORLD_VERIFIER, WORLD_AT, WORLD_NONCE),
    SIM["valid.cbor"]: _sim_target(),
    **{document: _aws_target(document) for document in AWS.values()},
}
GENUINE = list(TARGETS)


def _check_document(doc: AttestationDocument) -> None:
    assert isinstance(doc.module_id, str) and doc.module_id
    assert doc.digest == "SHA384" and 0 < doc.timestamp < 2**64
    assert all(0 <= index < 32 and len(value) in (32, 48, 64) for index, value in doc.pcrs.items())
    assert doc.cabundle and all(isinstance(cert, bytes) for cert in doc.cabundle)


@fuzz_settings(deadline_ms=1000)
@given(data=mutated_bytes(CORPUS) | st.binary(max_size=64))
@example(data=SEEDS["payload-claims-2-32"])
@example(data=SEEDS["tag-18-wrapped"])
@counted("shared.attestation.decode_document")
def test_decode_document_raises_only_structure_or_algorithm(data: bytes) -> None:
    """Any bytes: a validated document, or AttestationError(structure | algorithm)."""
    decoded, error = attempt(lambda: decode_document(data), AttestationError)
    if decoded is None:
        assert error is not None and error.reason in (Reason.STRUCTURE, Reason.ALGORITHM)
        return
    doc, cose = decoded
    _check_document(doc)
    assert len(cose.signature) == 96


@st.composite
def _mutated_genuine(draw: Draw) -> tuple[bytes, bytes]:
    original = draw(st.sampled_from(GENUINE))
    return original, draw(mutated_bytes([original], max_mutations=2))


@fuzz_settings(deadline_ms=2000, scale=0.5)
@given(case=_mutated_genuine())
@counted("shared.attestation.AttestationVerifier.verify")
def test_verify_refuses_every_byte_level_change(case: tuple[bytes, bytes]) -> None:
    """A changed real or simulator document fails with AttestationError, nothing else;
    only byte-identical genuine documents verify."""
    original, data = case
    verifier, now, nonce = TARGETS[original]
    try:
        verified = verifier.verify(data, nonce=nonce, now=now)
    except AttestationError as error:
        event(f"refused: {error.reason}")
        return
    assert data in TARGETS
    assert isinstance(verified, VerifiedAttestation)


# --------------------------------------------------------------------------- re-signed

_BASE_PAYLOAD: dict[str, Any] = cbor2.loads(cbor2.loads(WORLD_DOCUMENT)[2])
_CBOR_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**64), 2**64 - 1),
    st.sampled_from((0, 1, 2**63, 2**64 - 1, -1, 1.5, "", "SHA384", b"", [], {})),
    st.text(max_size=8),
    st.binary(max_size=600).map(bytes),
    st.lists(st.binary(max_size=8), max_size=3),
)


@st.composite
def _resigned(draw: Draw) -> bytes:
    """The world payload with one to three fields changed, re-signed by the real leaf."""
    payload = dict(_BASE_PAYLOAD)
    for _ in range(draw(st.integers(1, 3))):
        field = draw(st.sampled_from([*sorted(payload), "extra"]))
        action = draw(st.integers(0, 4))
        if action == 0 and field in payload:
            del payload[field]
        elif field == "pcrs" and action in (1, 2):
            current = payload.get("pcrs")
            pcrs = dict(current) if isinstance(current, dict) else {}
            index = draw(st.sampled_from((0, 1, 2, 8, 31, 32, -1)) | st.integers(0, 40))
            pcrs[index] = draw(
                st.sampled_from((bytes(48), bytes(32), bytes(47), b"")) | st.binary(max_size=64)
            )
            payload["pcrs"] = pcrs
        elif field == "cabundle" and action in (1, 2):
            current = payload.get("cabundle")
            bundle = list(current) if isinstance(current, list) else []
            order = draw(st.permutations(bundle)) if bundle else []
            payload["cabundle"] = draw(
                st.sampled_from(
                    (order, order[:1], [*order, *order], [payload.get("certificate", b"")])
                )
            )
        elif field in ("certificate", "user_data", "nonce", "public_key") and action in (1, 2):
            value = payload.get(field)
            if isinstance(value, bytes) and value and action == 1:
                raw = bytearray(value)
                raw[draw(st.integers(0, len(raw) - 1))] ^= 1 << draw(st.integers(0, 7))
                payload[field] = bytes(raw)
            else:
                payload[field] = draw(
                    st.sampled_from((bytes(512), bytes(513), b"")) | st.binary(max_size=40)
                )
        elif field == "timestamp":
            payload[field] = draw(
                st.sampled_from((0, 1, 2**63, 2**64 - 1, -1))
                | st.integers(0, 2**64 - 1)
                | st.just(_BASE_PAYLOAD["timestamp"] + draw(st.integers(-(10**7), 10**7)))
            )
        else:
            payload[field] = draw(_CBOR_VALUES)
    return world.sign_document(payload)


@fuzz_settings(deadline_ms=2000, scale=0.5)
@given(
    document=_resigned(),
    now=st.just(WORLD_AT) | st.datetimes(timezones=st.just(UTC)),
    nonce=st.sampled_from((WORLD_NONCE, None, b"")),
)
@counted("shared.attestation.AttestationVerifier.verify")
def test_verify_raises_only_attestation_error_on_re_signed_payloads(
    document: bytes, now: datetime, nonce: bytes | None
) -> None:
    """Hostile fields behind a valid signature still fail as AttestationError only."""
    try:
        verified = WORLD_VERIFIER.verify(document, nonce=nonce, now=now)
    except AttestationError as error:
        event(f"refused: {error.reason}")
        return
    event("verified")
    _check_document(verified.doc)
    assert isinstance(verified.keys, EnclaveKeys)


_USER_DATA: bytes = _BASE_PAYLOAD["user_data"]


@fuzz_settings(deadline_ms=500)
@given(data=mutated_bytes([_USER_DATA, bytes(cbor2.dumps({"v": 1, "enc": b"", "sig": b""}))]))
@counted("shared.attestation.decode_user_data")
def test_decode_user_data_raises_only_user_data(data: bytes) -> None:
    """Mutated user_data: the key map or AttestationError(user-data)."""
    keys, error = attempt(lambda: decode_user_data(data), AttestationError)
    if keys is None:
        assert error is not None and error.reason == Reason.USER_DATA
        return
    assert len(keys.x25519_public) == 32 and len(keys.ed25519_public) == 32


def test_oversized_documents_are_refused_before_any_decoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Above MAX_DOCUMENT_SIZE the bytes are not handed to the CBOR decoder at all."""

    def must_not_decode(*_args: object, **_kwargs: object) -> object:
        raise AssertionError("an oversized document reached the CBOR decoder")

    monkeypatch.setattr(attestation, "_loads_strict", must_not_decode)
    for data in (WORLD_DOCUMENT + bytes(MAX_DOCUMENT_SIZE), bytes(MAX_DOCUMENT_SIZE + 1)):
        with pytest.raises(AttestationError) as caught:
            decode_document(data)
        assert caught.value.reason == Reason.STRUCTURE
        with pytest.raises(AttestationError):
            WORLD_VERIFIER.verify(data, nonce=None, now=WORLD_AT)


def test_world_document_verifies() -> None:
    """The world seed is genuine: the re-signing fuzzer starts from a passing document."""
    verified = WORLD_VERIFIER.verify(WORLD_DOCUMENT, nonce=WORLD_NONCE, now=WORLD_AT)
    assert verified.keys is not None
    assert world.sign_document(cbor2.loads(WORLD_DOCUMENT)[2]) == WORLD_DOCUMENT
