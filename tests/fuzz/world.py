"""The fuzz world (tests/vectors/fuzz/world.json): test keys that re-sign mutated input.

A fuzzer that only flips bits in signed data never gets past the signature check. With
the world's keys it re-signs what it mutated, so the code behind the signatures (chain
and PCR checks, report chains, log entries) sees hostile values too, as it would if the
enclave had a bug or its key leaked. Test keys only: nothing here is a secret.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

import cbor2
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from shared.attestation import pcrs_from_json
from shared.encoding import canonical_json
from shared.merkle import InclusionProof, MerkleTree, tree_head_payload
from shared.signing import sign_payload
from shared.translog import log_id_for
from tests.fuzz.support import load_world

__all__ = [
    "DOCUMENT",
    "EXPECTED_PCRS",
    "LOG_ID",
    "NONCE",
    "ROOT_DER",
    "SESSION_HASH",
    "SIGNING_PUBLIC",
    "VERIFY_AT",
    "resign_payload",
    "sign_document",
    "signed_log_body",
]

_WORLD: Final = load_world()
DOCUMENT: Final = bytes.fromhex(_WORLD["document_hex"])
VERIFY_AT: Final = datetime.fromisoformat(_WORLD["verify_at"])
NONCE: Final = bytes.fromhex(_WORLD["nonce_hex"])
ROOT_DER: Final = bytes.fromhex(_WORLD["root_der_hex"])
EXPECTED_PCRS: Final = pcrs_from_json(_WORLD["expected_pcrs"])
SESSION_HASH: Final = bytes.fromhex(_WORLD["session_hash_hex"])
LOG_ID: Final = log_id_for(SESSION_HASH)
_SIGNING: Final = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(_WORLD["ed25519_seed_hex"]))
SIGNING_PUBLIC: Final = _SIGNING.public_key().public_bytes_raw()
_LEAF = serialization.load_pem_private_key(_WORLD["leaf_key_pem"].encode(), None)
assert isinstance(_LEAF, ec.EllipticCurvePrivateKey)
_LEAF_KEY: Final[ec.EllipticCurvePrivateKey] = _LEAF
_PROTECTED: Final = cbor2.loads(DOCUMENT)[0]


def sign_document(payload: Mapping[Any, Any] | bytes, protected: bytes = _PROTECTED) -> bytes:
    """An untagged COSE_Sign1 (RFC 9052 section 4.4) by the world's leaf key, r || s."""
    encoded = payload if isinstance(payload, bytes) else cbor2.dumps(payload)
    der = _LEAF_KEY.sign(
        cbor2.dumps(["Signature1", protected, b"", encoded]),
        ec.ECDSA(hashes.SHA384(), deterministic_signing=True),
    )
    r, s = decode_dss_signature(der)
    return bytes(
        cbor2.dumps([protected, {}, encoded, r.to_bytes(48, "big") + s.to_bytes(48, "big")])
    )


def resign_payload(payload: object) -> str | None:
    """The enclave's signature over ``payload``, or None when RFC 8785 cannot write it."""
    if not isinstance(payload, Mapping):
        return None
    try:
        return sign_payload(_SIGNING, payload)
    except (ValueError, TypeError):
        return None


def signed_log_body(
    entries: list[Any], *, size_shift: int = 0, log_id: str = LOG_ID
) -> dict[str, Any]:
    """A GET /api/logs body over ``entries`` with fresh proofs and a head signed by the
    enclave key (an entry RFC 8785 cannot write gets a placeholder leaf)."""
    leaves = []
    for index, entry in enumerate(entries):
        try:
            leaves.append(canonical_json(entry))
        except (TypeError, ValueError, RecursionError):
            leaves.append(b"not canonicalisable %d" % index)  # the entry check refuses it
    tree = MerkleTree(leaves)
    head = tree_head_payload(log_id, max(0, tree.size + size_shift), tree.root().hex(), 1748765000)
    signature = resign_payload(head)
    assert signature is not None
    rows = [
        {
            "index": index,
            "entry": entry,
            "inclusion_proof": InclusionProof.from_hashes(
                index, tree.size, tree.inclusion_proof(index, tree.size)
            ).to_json(),
        }
        for index, entry in enumerate(entries)
    ]
    return {"tree_head": {"payload": head, "signature": signature}, "entries": rows}
