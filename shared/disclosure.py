"""Single-trade disclosure: open the enclave's sealed disclosure, check it offline. Side: client.

A signed report commits to every trade read for the session through ``merkle_root``
(RFC 6962 over salted leaves, shared.merkle.trade_leaf) at ``merkle_tree_size``. The
owner may reveal one trade to someone: the enclave (``POST /enclave/disclose_trade``,
owner proof required) returns that trade's committed fields, its salt and an inclusion
proof, sealed to the owner's key so the parent never sees them. The owner passes the
opened disclosure on; anyone holding it and the signed report checks, with
:func:`verify_disclosure`, that this exact trade is one of those the report counted,
while learning nothing about the others (their leaves stay salted).

A disclosure (RFC 8785 JSON inside the envelope)::

    {"v": 1, "purpose": "perf-aggregator/trade-disclosure", "session_hash": hex,
     "fields": {committed trade fields, the exchange's strings}, "salt": base64(32 bytes),
     "inclusion_proof": {"index", "size", "path"}, "merkle_root": hex}

Errors::

    PerfAggError
    └── DisclosureError     reason names the failed check (no trade values in it)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared.encoding import b64decode
from shared.envelope import Envelope, EnvelopeFormatError, EnvelopeOpener
from shared.errors import EnvelopeError, PerfAggError
from shared.merkle import TRADE_SALT_BYTES, InclusionProof, MerkleError, leaf_hash, trade_leaf
from shared.owner import owner_x25519_private

__all__ = [
    "DISCLOSURE_PURPOSE",
    "DisclosedTrade",
    "DisclosureError",
    "open_disclosure",
    "verify_disclosure",
]

DISCLOSURE_PURPOSE: Final = "perf-aggregator/trade-disclosure"
_FIELDS: Final = frozenset(
    {"v", "purpose", "session_hash", "fields", "salt", "inclusion_proof", "merkle_root"}
)
_MAX_DISCLOSURE: Final = 65536


class DisclosureError(PerfAggError):
    """A disclosure did not open or does not match the signed report."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True, kw_only=True)
class DisclosedTrade:
    """A trade proven to be leaf ``index`` of the report's ``merkle_root``."""

    fields: dict[str, str]
    index: int
    tree_size: int


def open_disclosure(
    envelope_wire: Mapping[str, Any], owner_key: Ed25519PrivateKey
) -> dict[str, Any]:
    """Decrypt the enclave's reply with the owner's key; the disclosure object, unverified."""
    try:
        envelope = Envelope.from_wire(envelope_wire)
    except (EnvelopeFormatError, TypeError, ValueError):
        raise DisclosureError("the disclosure envelope is malformed") from None
    if envelope.metadata.get("purpose") != "trade-disclosure":
        raise DisclosureError("the envelope is not a trade disclosure")
    try:
        plaintext = EnvelopeOpener(owner_x25519_private(owner_key)).open(envelope)
    except EnvelopeError:
        raise DisclosureError("the disclosure does not open with this owner key") from None
    if len(plaintext) > _MAX_DISCLOSURE:
        raise DisclosureError("the disclosure is too large")
    try:
        disclosure = json.loads(plaintext)
    except ValueError:
        raise DisclosureError("the disclosure is not JSON") from None
    if not isinstance(disclosure, dict):
        raise DisclosureError("the disclosure is not a JSON object")
    return disclosure


def verify_disclosure(
    disclosure: Mapping[str, Any], *, report_payload: Mapping[str, Any]
) -> DisclosedTrade:
    """Check that ``disclosure`` proves one trade under a report's Merkle root.

    ``report_payload`` must be a payload whose signature the caller verified
    (shared.signing.verify_payload with the attested key); this checks the session,
    the tree size, the root and the inclusion of ``trade_leaf(fields, salt)``.
    """
    if not isinstance(disclosure, Mapping) or set(disclosure) != _FIELDS:
        raise DisclosureError("not a disclosure object")
    if type(disclosure["v"]) is not int or disclosure["v"] != 1:
        raise DisclosureError("unsupported disclosure version")
    if disclosure["purpose"] != DISCLOSURE_PURPOSE:
        raise DisclosureError("not a trade disclosure")
    if disclosure["session_hash"] != report_payload.get("session_hash"):
        raise DisclosureError("the disclosure is for another session")
    fields = disclosure["fields"]
    if not isinstance(fields, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in fields.items()
    ):
        raise DisclosureError("fields must map strings to strings")
    try:
        salt = b64decode(disclosure["salt"], max_len=64)
    except (TypeError, ValueError):
        raise DisclosureError("salt is not base64") from None
    if len(salt) != TRADE_SALT_BYTES:
        raise DisclosureError("salt has the wrong length")
    try:
        proof = InclusionProof.from_json(disclosure["inclusion_proof"])
    except MerkleError as exc:
        raise DisclosureError(f"inclusion proof: {exc}") from None
    root_hex = report_payload.get("merkle_root")
    if proof.size != report_payload.get("merkle_tree_size"):
        raise DisclosureError("the proof is for another tree size than the report's")
    if disclosure["merkle_root"] != root_hex or not isinstance(root_hex, str):
        raise DisclosureError("the disclosure names another Merkle root than the report")
    try:
        leaf = trade_leaf(dict(fields), salt)
        proof.verify(leaf_hash(leaf), bytes.fromhex(root_hex))
    except (MerkleError, ValueError):
        raise DisclosureError("the trade is not in the report's Merkle tree") from None
    return DisclosedTrade(fields=dict(fields), index=proof.index, tree_size=proof.size)
