"""Per-session transparency log: entry format, signed tree heads, offline checks. Side: any.

Every session has an append-only log of what the enclave did with it (``submit``,
``poll``, ``report``, ``disclose``, ``revoke``). The enclave appends the entries and
signs RFC 6962 tree heads over them with its attested Ed25519 key; the parent stores
entries and heads (``ops_logs`` / ``merkle_logs``) and serves them with inclusion
proofs at ``GET /api/logs/{session_id}``; clients check everything here, offline.

An entry is the RFC 8785 canonical JSON of::

    {"v": 1, "index": <position in the log>, "op": <one of OPS>,
     "at": <RFC 3339 UTC, seconds>, "data": {<op-specific, public facts only>}}

and its leaf hash is ``SHA-256(0x00 || entry bytes)`` (RFC 6962 section 2.1). The
index inside the entry makes every leaf distinct and pins its position; the tree head
(``shared.merkle.TreeHead``, purpose ``perf-aggregator/tree-head``) names the log by
``perf-aggregator:ops:<hex SHA-256 of the session id>``, so a head of one session's
log can never be passed off as another's.

What a client can conclude from :func:`verify_log`: the enclave whose key it attested
signed a head over exactly these entries at these positions; with a head it saw before
(``trusted_head``), that the log only grew in between (consistency proof), so the
operator cannot drop or rewrite history it already showed.

Errors::

    PerfAggError
    └── TransparencyLogError    reason says which check failed (never a secret)
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from shared.encoding import canonical_json
from shared.errors import PerfAggError, SignatureError
from shared.merkle import (
    ConsistencyProof,
    InclusionProof,
    MerkleError,
    TreeHead,
    leaf_hash,
)
from shared.signing import verify_payload

__all__ = [
    "ENTRY_VERSION",
    "LOG_ID_PREFIX",
    "OPS",
    "SignedTreeHead",
    "TransparencyLogError",
    "VerifiedLog",
    "encode_entry",
    "log_id_for",
    "parse_entry",
    "verify_log",
]

ENTRY_VERSION: Final = 1
LOG_ID_PREFIX: Final = "perf-aggregator:ops:"
OPS: Final = frozenset({"submit", "poll", "report", "disclose", "revoke"})
MAX_ENTRY_BYTES: Final = 4096  # ops_logs.entry is bounded the same way
_MAX_DATA_DEPTH: Final = 16  # entry data nests two or three levels; anything deeper is hostile
_ENTRY_FIELDS: Final = frozenset({"v", "index", "op", "at", "data"})
_RFC3339: Final = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
_HEAD_FIELDS: Final = frozenset({"payload", "signature"})
_ENTRY_ROW_FIELDS: Final = frozenset({"index", "entry", "inclusion_proof"})


class TransparencyLogError(PerfAggError):
    """A log, entry or tree head failed a check; ``reason`` names the check."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def log_id_for(session_hash: bytes) -> str:
    """The public name of a session's log: prefix + hex SHA-256 of the session id."""
    if len(session_hash) != 32:
        raise ValueError("a session hash is 32 bytes")
    return LOG_ID_PREFIX + session_hash.hex()


def _rfc3339(timestamp: int) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def encode_entry(index: int, op: str, *, at: int, data: Mapping[str, Any]) -> bytes:
    """The canonical bytes of one entry (the Merkle leaf). Side: enclave.

    ``data`` must be JSON made of strings, integers, booleans and nulls: these are the
    values RFC 8785 writes one way only, so a client re-canonicalising the parsed entry
    gets the same bytes back.
    """
    if op not in OPS:
        raise ValueError(f"unknown log operation {op!r}")
    entry = {"v": ENTRY_VERSION, "index": index, "op": op, "at": _rfc3339(at), "data": dict(data)}
    encoded = canonical_json(entry)
    if len(encoded) > MAX_ENTRY_BYTES:
        raise ValueError("log entry too large")
    return encoded


def _plain_data(data: object) -> bool:
    """True when ``data`` is a JSON object of strings, integers, booleans and nulls.

    Walked with an explicit stack and bounded: entries are at most MAX_ENTRY_BYTES
    long, and every value costs at least one byte of the canonical form, so more
    values than that (or nesting deeper than _MAX_DATA_DEPTH) cannot be a real entry.
    A hostile entry never reaches the recursive RFC 8785 serialiser deep or huge.
    """
    if not isinstance(data, Mapping):
        return False
    budget = MAX_ENTRY_BYTES
    stack: list[tuple[object, int]] = [(data, 0)]
    while stack:
        value, depth = stack.pop()
        budget -= 1
        if budget < 0 or depth > _MAX_DATA_DEPTH:
            return False
        if isinstance(value, Mapping):
            if not all(isinstance(key, str) for key in value):
                return False
            stack.extend((item, depth + 1) for item in value.values())
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value)
        elif not (value is None or isinstance(value, str | int)):  # bool is an int
            return False
    return True


def parse_entry(entry: object, *, index: int) -> tuple[dict[str, Any], bytes]:
    """Check a decoded entry object at ``index``; return it with its leaf bytes."""
    if not isinstance(entry, Mapping) or set(entry) != _ENTRY_FIELDS:
        raise TransparencyLogError(f"entry {index} is not a log entry object")
    version, position = entry["v"], entry["index"]
    if type(version) is not int or version != ENTRY_VERSION:
        raise TransparencyLogError(f"entry {index} has an unsupported version")
    if type(position) is not int or position != index:
        raise TransparencyLogError(f"entry {index} claims another position")
    # isinstance first: an unhashable op (a list) must not reach the set lookup.
    if not isinstance(entry["op"], str) or entry["op"] not in OPS:
        raise TransparencyLogError(f"entry {index} has an unknown operation")
    if not isinstance(entry["at"], str) or not _RFC3339.fullmatch(entry["at"]):
        raise TransparencyLogError(f"entry {index} has a malformed time")
    if not _plain_data(entry["data"]):
        raise TransparencyLogError(f"entry {index} has malformed data")
    try:
        leaf = canonical_json(entry)
    except (TypeError, ValueError):
        raise TransparencyLogError(f"entry {index} cannot be canonicalised") from None
    if len(leaf) > MAX_ENTRY_BYTES:
        raise TransparencyLogError(f"entry {index} is too large")
    return dict(entry), leaf


@dataclass(frozen=True, slots=True, kw_only=True)
class SignedTreeHead:
    """A tree head payload and the enclave's base64 Ed25519 signature over it."""

    payload: dict[str, Any]
    signature: str

    def to_json(self) -> dict[str, Any]:
        """The wire form ``{"payload", "signature"}``."""
        return {"payload": self.payload, "signature": self.signature}

    @classmethod
    def from_json(cls, obj: object) -> SignedTreeHead:
        """Parse ``{"payload": {...}, "signature": "..."}`` (not yet verified)."""
        if not isinstance(obj, Mapping) or set(obj) != _HEAD_FIELDS:
            raise TransparencyLogError("tree head must be {payload, signature}")
        payload, signature = obj["payload"], obj["signature"]
        if not isinstance(payload, Mapping) or not isinstance(signature, str):
            raise TransparencyLogError("tree head must be {payload, signature}")
        return cls(payload=dict(payload), signature=signature)

    def verify(self, signing_public: bytes, *, log_id: str | None = None) -> TreeHead:
        """Check the signature (attested key) and the payload; return the head."""
        try:
            verify_payload(signing_public, self.payload, self.signature)
        except SignatureError:
            raise TransparencyLogError("tree head signature does not verify") from None
        try:
            head = TreeHead.from_payload(self.payload)
        except MerkleError as exc:
            raise TransparencyLogError(f"tree head is malformed: {exc}") from None
        if log_id is not None and head.log_id != log_id:
            raise TransparencyLogError("tree head belongs to another log")
        return head


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifiedLog:
    """What :func:`verify_log` vouches for: a signed head and entries proven under it."""

    head: TreeHead
    signed_head: SignedTreeHead
    entries: tuple[dict[str, Any], ...]

    def reports(self) -> dict[int, str]:
        """``seq -> report_hash`` of the report entries shown.

        Raises TransparencyLogError when a report entry lacks an integer ``seq`` or a
        string ``report_hash`` (a signed log is well formed, not necessarily sensible).
        """
        logged: dict[int, str] = {}
        for entry in self.entries:
            if entry["op"] != "report":
                continue
            seq, digest = entry["data"].get("seq"), entry["data"].get("report_hash")
            if type(seq) is not int or not isinstance(digest, str):
                raise TransparencyLogError(f"entry {entry['index']} is a malformed report entry")
            logged[seq] = digest
        return logged

    def ops(self) -> list[str]:
        """The operations shown, in log order."""
        return [str(e["op"]) for e in self.entries]


def verify_log(
    body: Mapping[str, Any],
    *,
    signing_public: bytes,
    session_hash: bytes,
    trusted_head: TreeHead | None = None,
    require_complete: bool = False,
) -> VerifiedLog:
    """Check a ``GET /api/logs/{session_id}`` body offline.

    - the tree head is signed by ``signing_public`` (from a verified attestation) and
      names this session's log;
    - every entry shown is well formed, sits at its claimed index and has an inclusion
      proof to the signed root at the signed size;
    - with ``trusted_head`` (a head verified earlier), the body's consistency proof
      shows the new head extends it (RFC 6962 2.1.2): history was not rewritten;
    - with ``require_complete``, the entries shown are the whole log, 0..size-1.
    """
    if not isinstance(body, Mapping):
        raise TransparencyLogError("log body must be a JSON object")
    signed = SignedTreeHead.from_json(body.get("tree_head"))
    head = signed.verify(signing_public, log_id=log_id_for(session_hash))
    rows = body.get("entries")
    if not isinstance(rows, Sequence) or isinstance(rows, str | bytes):
        raise TransparencyLogError("entries must be a list")
    entries: list[dict[str, Any]] = []
    previous: int | None = None
    for row in rows:
        if not isinstance(row, Mapping) or set(row) != _ENTRY_ROW_FIELDS:
            raise TransparencyLogError("each entry must be {index, entry, inclusion_proof}")
        index = row["index"]
        if type(index) is not int or not 0 <= index < head.size:
            raise TransparencyLogError("entry index outside the signed tree")
        if previous is not None and index != previous + 1:
            raise TransparencyLogError("entries are not consecutive")
        previous = index
        entry, leaf = parse_entry(row["entry"], index=index)
        try:
            proof = InclusionProof.from_json(row["inclusion_proof"])
        except MerkleError as exc:
            raise TransparencyLogError(f"entry {index}: {exc}") from None
        if proof.index != index or proof.size != head.size:
            raise TransparencyLogError(f"entry {index}: proof is not for the signed tree")
        try:
            proof.verify(leaf_hash(leaf), head.root)
        except MerkleError:
            raise TransparencyLogError(f"entry {index} is not in the signed tree") from None
        entries.append(entry)
    if require_complete and (len(entries) != head.size or (entries and entries[0]["index"] != 0)):
        raise TransparencyLogError("the log shown is not complete")
    if trusted_head is not None:
        _check_consistency(body.get("consistency_proof"), trusted_head, head)
    return VerifiedLog(head=head, signed_head=signed, entries=tuple(entries))


def _check_consistency(raw: object, old: TreeHead, new: TreeHead) -> None:
    if old.log_id != new.log_id:
        raise TransparencyLogError("trusted head belongs to another log")
    if new.size < old.size:
        raise TransparencyLogError("the log shrank since the trusted head")
    if raw is None:
        raise TransparencyLogError("consistency proof missing")
    try:
        proof = ConsistencyProof.from_json(raw)
    except MerkleError as exc:
        raise TransparencyLogError(f"consistency proof: {exc}") from None
    if proof.old_size != old.size or proof.new_size != new.size:
        raise TransparencyLogError("consistency proof is for other tree sizes")
    try:
        proof.verify(old.root, new.root)
    except MerkleError:
        raise TransparencyLogError("the log was rewritten since the trusted head") from None
