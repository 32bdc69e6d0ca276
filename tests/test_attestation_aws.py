"""The verifier against real AWS Nitro attestation documents (tests/vectors/attestation/aws).

Each document verifies with the built-in AWS Nitro root G1 at its own timestamp, with
the PCRs read from it, and every single flipped byte makes it fail.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from shared.attestation import (
    AWS_NITRO_ROOT_G1_DER,
    AttestationVerifier,
    Reason,
    decode_document,
    encode_document,
)
from shared.errors import AttestationError

AWS_VECTORS = Path(__file__).parent / "vectors" / "attestation" / "aws"
# SHA-256 of the handout's files (../shared/vectors/nitro-attestation/), checked when
# the copies were made: the tests below run on exactly those bytes.
HANDOUT_SHA256 = {
    "aws-2024-08-07.cbor": "883f54f947d1f8074e980163cb5daa2a4f5449beaddbcea59ac16a80689e9cd1",
    "aws-2024-12-13.cbor": "f7db70c9196856abd6c8c8bf7f1fc6cd3ab5dd6575bb5d3aa14bc21b2d6404fa",
    "aws-2025-04-29-pcr16.cbor": "7b0ca130a8e2332b6544d60d0724b1e9e8bceba66ee5019385d1b6b16cabf2af",
}
NAMES = ["aws-2024-08-07.cbor", "aws-2024-12-13.cbor", "aws-2025-04-29-pcr16.cbor"]


def _load(name: str) -> bytes:
    return (AWS_VECTORS / name).read_bytes()


def _issued_at(document: bytes) -> datetime:
    doc, _ = decode_document(document)
    return datetime.fromtimestamp(doc.timestamp / 1000, UTC)


def _verifier(document: bytes, **options: object) -> AttestationVerifier:
    doc, _ = decode_document(document)
    return AttestationVerifier(expected_pcrs=doc.pcrs, require_keys=False, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", NAMES)
def test_copies_match_the_handout(name: str) -> None:
    """The repo copies are byte-identical to the handout vectors (pinned by SHA-256)."""
    assert hashlib.sha256(_load(name)).hexdigest() == HANDOUT_SHA256[name]


@pytest.mark.parametrize("name", NAMES)
def test_real_document_verifies_with_the_builtin_aws_root(name: str) -> None:
    """A real Nitro document verifies at its own timestamp against AWS root G1."""
    document = _load(name)
    result = _verifier(document).verify(document, nonce=None, now=_issued_at(document))
    assert result.doc.cabundle[0] == AWS_NITRO_ROOT_G1_DER
    assert result.doc.digest == "SHA384"
    assert result.keys is None
    assert set(range(16)) <= set(result.pcrs)
    assert all(len(value) == 48 for value in result.pcrs.values())


def test_pcr16_document_carries_the_extended_user_pcr() -> None:
    """The app-extended PCR16 is part of the document beside PCR0..15."""
    doc, _ = decode_document(_load("aws-2025-04-29-pcr16.cbor"))
    assert sorted(doc.pcrs) == list(range(17))
    assert any(doc.pcrs[16])


@pytest.mark.parametrize("name", NAMES)
def test_our_encoder_writes_the_aws_payload_byte_for_byte(name: str) -> None:
    """Re-encoding a real document's fields gives exactly the payload AWS signed."""
    doc, cose = decode_document(_load(name))
    ours = encode_document(doc, ec.generate_private_key(ec.SECP384R1()))
    assert cbor2.loads(ours)[2] == cose.payload
    assert cbor2.loads(ours)[0] == cose.protected


@pytest.mark.parametrize(
    ("shift", "options", "reason"),
    [
        (timedelta(seconds=301), {}, Reason.STALE),
        (timedelta(seconds=-61), {}, Reason.FUTURE),
        (timedelta(hours=3, seconds=5), {"max_age_seconds": 86_400}, Reason.CERT_EXPIRED),
        (timedelta(hours=-3), {"max_clock_skew_seconds": 86_400}, Reason.CERT_NOT_YET_VALID),
    ],
    ids=["stale", "future", "leaf-expired", "leaf-not-yet-valid"],
)
def test_real_document_time_checks(
    shift: timedelta, options: dict[str, int], reason: Reason
) -> None:
    """Age, skew and the 3-hour leaf validity are enforced on real documents."""
    document = _load("aws-2024-08-07.cbor")
    verifier = _verifier(document, **options)
    with pytest.raises(AttestationError) as caught:
        verifier.verify(document, nonce=None, now=_issued_at(document) + shift)
    assert caught.value.reason == reason


def test_real_document_with_a_different_pcr0_is_refused() -> None:
    """A verifier expecting another image measurement refuses the document."""
    document = _load("aws-2024-12-13.cbor")
    doc, _ = decode_document(document)
    expected = dict(doc.pcrs)
    expected[0] = bytes(48)
    verifier = AttestationVerifier(expected_pcrs=expected, require_keys=False)
    with pytest.raises(AttestationError) as caught:
        verifier.verify(document, nonce=None, now=_issued_at(document))
    assert caught.value.reason == Reason.PCR_MISMATCH


def test_real_document_without_nonce_fails_a_nonce_check() -> None:
    """A caller that sends a nonce gets a refusal when the document echoes none."""
    document = _load("aws-2024-08-07.cbor")
    with pytest.raises(AttestationError) as caught:
        _verifier(document).verify(document, nonce=b"\x00" * 16, now=_issued_at(document))
    assert caught.value.reason == Reason.NONCE


def test_real_document_without_key_map_fails_when_keys_are_required() -> None:
    """AWS documents carry no perf-aggregator user_data, so require_keys refuses them."""
    document = _load("aws-2025-04-29-pcr16.cbor")
    doc, _ = decode_document(document)
    verifier = AttestationVerifier(expected_pcrs=doc.pcrs)
    with pytest.raises(AttestationError) as caught:
        verifier.verify(document, nonce=None, now=_issued_at(document))
    assert caught.value.reason == Reason.USER_DATA


def test_real_document_is_refused_under_another_pinned_root() -> None:
    """Pinning any other root (e.g. the simulator's) refuses real AWS documents."""
    document = _load("aws-2024-08-07.cbor")
    doc, _ = decode_document(document)
    other_root = doc.cabundle[1]  # a real certificate, but not the pinned root
    verifier = AttestationVerifier(expected_pcrs=doc.pcrs, root_der=other_root, require_keys=False)
    with pytest.raises(AttestationError) as caught:
        verifier.verify(document, nonce=None, now=_issued_at(document))
    assert caught.value.reason == Reason.ROOT


@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
@pytest.mark.parametrize("name", NAMES)
def test_every_flipped_byte_fails(name: str) -> None:
    """Flipping the low bit of any single byte of a real document makes it fail."""
    document = _load(name)
    verifier = _verifier(document)
    now = _issued_at(document)
    accepted = []
    for position in range(len(document)):
        mutated = bytearray(document)
        mutated[position] ^= 0x01
        try:
            verifier.verify(bytes(mutated), nonce=None, now=now)
        except AttestationError:
            continue
        accepted.append(position)
    assert accepted == []
