"""Attestation: documents created and verified per second vs bare ES384 / X.509 work.

- create: a full NSM CBOR Attestation request through ``NsmClient`` into the
  simulator (request codec, PCR map, payload CBOR, COSE ES384 signature, response
  codec) vs one bare P-384 ECDSA-SHA384 signature over a message of the same size.
- verify: ``AttestationVerifier.verify`` (strict decode, root pin, COSE ES384, chain
  signatures and constraints, dates, PCRs, nonce, user_data) vs the bare public-key work
  it cannot avoid: one ES384 verification plus one signature check per chain link.
- verify (AWS): the same on a real AWS document (4 CAs + leaf) at its own timestamp.
"""

from __future__ import annotations

import itertools
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from bench.common import Result, measure
from enclave.measurement import simulated_pcrs
from enclave.nsm import NsmClient
from enclave.nsm_simulator import NsmSimulator
from shared.attestation import (
    AttestationVerifier,
    EnclaveKeys,
    decode_document,
    encode_user_data,
)

AREA = "attestation"
NOW = datetime(2026, 1, 1, tzinfo=UTC)
AWS_DOCUMENT = (
    Path(__file__).resolve().parents[1]
    / "tests"
    / "vectors"
    / "attestation"
    / "aws"
    / "aws-2024-08-07.cbor"
)
_ES384 = ec.ECDSA(hashes.SHA384())


def _baseline_verify(document: bytes) -> float:
    """One ES384 COSE verification plus one signature check per chain link, per second."""
    doc, cose = decode_document(document)
    path = [x509.load_der_x509_certificate(der) for der in (*doc.cabundle, doc.certificate)]
    to_be_signed = cose.to_be_signed()
    leaf_key = path[-1].public_key()
    assert isinstance(leaf_key, ec.EllipticCurvePublicKey)
    signature = encode_dss_signature(
        int.from_bytes(cose.signature[:48], "big"), int.from_bytes(cose.signature[48:], "big")
    )

    def bare() -> None:
        leaf_key.verify(signature, to_be_signed, _ES384)
        for issuer, subject in itertools.pairwise(path):
            subject.verify_directly_issued_by(issuer)

    return measure(bare, min_time=0.5)


def run() -> list[Result]:
    """Measure document creation and verification against same-run baselines."""
    pcrs = simulated_pcrs()
    keys = EnclaveKeys(x25519_public=bytes(32), ed25519_public=bytes(range(32)))
    user_data = encode_user_data(keys)
    nonce = bytes(32)
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as state:
        simulator = NsmSimulator(Path(state), pcrs, clock=lambda: NOW)
        client = NsmClient(simulator)
        document = client.attestation(user_data=user_data, nonce=nonce)
        _, cose = decode_document(document)
        signing_key = ec.generate_private_key(ec.SECP384R1())
        message = cose.to_be_signed()

        results.append(
            Result(
                area=AREA,
                name="document created (NsmClient -> simulator, CBOR + ES384)",
                ops_per_s=measure(
                    lambda: client.attestation(user_data=user_data, nonce=nonce), min_time=0.5
                ),
                baseline="bare P-384 ECDSA-SHA384 sign, same size",
                baseline_ops_per_s=measure(lambda: signing_key.sign(message, _ES384), min_time=0.5),
                extra={"document_bytes": len(document), "signed_bytes": len(message)},
            )
        )

        verifier = AttestationVerifier(
            expected_pcrs={0: pcrs[0], 1: pcrs[1], 2: pcrs[2]}, root_der=simulator.root_der
        )
        verifier.verify(document, nonce=nonce, now=NOW)
        results.append(
            Result(
                area=AREA,
                name="simulator document verified",
                ops_per_s=measure(
                    lambda: verifier.verify(document, nonce=nonce, now=NOW), min_time=0.5
                ),
                baseline="bare ES384 verify + X.509 link signatures (2)",
                baseline_ops_per_s=_baseline_verify(document),
                extra={"chain_links": 2},
            )
        )

    if AWS_DOCUMENT.is_file():
        aws = AWS_DOCUMENT.read_bytes()
        aws_doc, _ = decode_document(aws)
        issued = datetime.fromtimestamp(aws_doc.timestamp / 1000, UTC)
        aws_verifier = AttestationVerifier(expected_pcrs=aws_doc.pcrs, require_keys=False)
        aws_verifier.verify(aws, nonce=None, now=issued)
        links = len(aws_doc.cabundle)
        results.append(
            Result(
                area=AREA,
                name="AWS document verified (real, 4 CAs)",
                ops_per_s=measure(
                    lambda: aws_verifier.verify(aws, nonce=None, now=issued), min_time=0.5
                ),
                baseline=f"bare ES384 verify + X.509 link signatures ({links})",
                baseline_ops_per_s=_baseline_verify(aws),
                extra={"chain_links": links, "document_bytes": len(aws)},
            )
        )
    return results
