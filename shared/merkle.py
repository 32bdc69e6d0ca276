"""RFC 6962 Merkle trees over SHA-256: build, prove, verify offline. Sans-IO. Side: any.

The enclave builds a :class:`MerkleTree` over each session's salted trade leaves (the
root goes into every signed report) and over each session's operations log (the
transparency log behind ``GET /api/logs/{session_id}``). The parent stores and serves
proofs. Clients run :func:`verify_inclusion` and :func:`verify_consistency` offline.

Hashing is RFC 6962 section 2.1 (the same as RFC 9162 section 2.1.1)::

    MTH({})        = SHA-256()                          the empty tree
    MTH({d(0)})    = SHA-256(0x00 || d(0))              leaf hash
    MTH(D[n])      = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n]))
                     k = the largest power of two smaller than n

Proofs are RFC 6962 section 2.1.1 audit paths and section 2.1.2 consistency proofs,
checked with the RFC 9162 section 2.1.3.2 and 2.1.4.2 algorithms.

Trade leaves are salted (:func:`trade_leaf`): a trade has little entropy (symbol, side,
a price near the market, a round amount, a timestamp), so an unsalted leaf hash could
be confirmed by guessing. Each trade gets its own 32-byte salt, derived in the enclave
from a per-session secret key (enclave/commitments.py) and revealed only when the owner
discloses that one trade; the leaf hash and every sibling hash in a proof then hide
the other trades.

Errors::

    PerfAggError
    └── MerkleError      any malformed input, out-of-range size or index, or a proof
                         that does not verify (messages carry no hashes, salts or fields)

Tree sizes are bounded by 2**63 - 1 (PostgreSQL ``bigint``); sizes in JSON wire forms
and signed tree heads by 2**53 - 1, the integer range RFC 8785 can represent exactly.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring
from typing import Any, Final

from shared.encoding import b64encode, canonical_json
from shared.errors import PerfAggError

__all__ = [
    "EMPTY_ROOT",
    "HASH_BYTES",
    "MAX_PROOF_LENGTH",
    "MAX_TREE_SIZE",
    "TRADE_SALT_BYTES",
    "TREE_HEAD_PURPOSE",
    "TREE_HEAD_VERSION",
    "ConsistencyProof",
    "InclusionProof",
    "MerkleError",
    "MerkleTree",
    "TreeHead",
    "leaf_hash",
    "trade_leaf",
    "trade_set_digest",
    "tree_head_payload",
    "verify_consistency",
    "verify_inclusion",
]

HASH_BYTES: Final = 32  # SHA-256 output
# RFC 6962 section 2.1: "The hash of an empty list is the hash of an empty string".
EMPTY_ROOT: Final = hashlib.sha256(b"").digest()
# Sizes fit a signed 64-bit integer (PostgreSQL bigint, merkle_logs.tree_size).
MAX_TREE_SIZE: Final = 2**63 - 1
# An audit path has at most ceil(log2(size)) <= 63 nodes; a consistency proof one more.
MAX_PROOF_LENGTH: Final = 64
TRADE_SALT_BYTES: Final = 32
TREE_HEAD_VERSION: Final = 1
# Domain separation: the enclave's Ed25519 key also signs reports; a tree head payload
# can never be read as one (nor as an owner proof).
TREE_HEAD_PURPOSE: Final = "perf-aggregator/tree-head"

# RFC 6962 section 2.1: domain-separation prefixes for leaf and interior-node hashes,
# so a leaf can never be passed off as an interior node (second-preimage resistance).
_LEAF_PREFIX: Final = b"\x00"
_NODE_PREFIX: Final = b"\x01"
_MAX_JSON_INT: Final = 2**53 - 1  # RFC 8785 section 3.2.2.3 / I-JSON safe integers
_HEX_HASH: Final = re.compile(r"[0-9a-f]{64}")
_LOG_ID: Final = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_INCLUSION_FIELDS: Final = frozenset({"index", "size", "path"})
_CONSISTENCY_FIELDS: Final = frozenset({"old_size", "new_size", "path"})
_TREE_HEAD_FIELDS: Final = frozenset(
    {"v", "purpose", "log_id", "tree_size", "root_hash", "timestamp"}
)

_BAD_INCLUSION: Final = "inclusion proof does not verify"
_BAD_CONSISTENCY: Final = "consistency proof does not verify"


class MerkleError(PerfAggError):
    """A Merkle input is malformed or out of range, or a proof does not verify.

    One type for every failure; messages name the check, never a hash, salt or field.
    """


# --------------------------------------------------------------------------- hashing


def leaf_hash(leaf: bytes) -> bytes:
    """RFC 6962 section 2.1 leaf hash: SHA-256(0x00 || leaf)."""
    if not isinstance(leaf, bytes):
        raise MerkleError("a leaf must be bytes")
    return hashlib.sha256(_LEAF_PREFIX + leaf).digest()


def _node_hash(left: bytes, right: bytes) -> bytes:
    # RFC 6962 section 2.1: MTH(D[n]) = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n])).
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def _split(n: int) -> int:
    """RFC 6962 section 2.1: the largest power of two smaller than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


# --------------------------------------------------------------------------- argument checks


def _check_int(value: object, *, upper: int, what: str) -> int:
    # bool is an int subclass; a JSON true is not a size.
    if isinstance(value, bool) or not isinstance(value, int):
        raise MerkleError(f"{what} must be an integer")
    if not 0 <= value <= upper:
        raise MerkleError(f"{what} is out of range")
    return value


def _check_hash(value: object, what: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != HASH_BYTES:
        raise MerkleError(f"{what} must be {HASH_BYTES} bytes")
    return value


def _check_path(proof: object) -> list[bytes]:
    if not isinstance(proof, list | tuple):
        raise MerkleError("a proof must be a list of hashes")
    # Bound the work before touching the elements.
    if len(proof) > MAX_PROOF_LENGTH:
        raise MerkleError("proof is too long")
    return [_check_hash(node, "a proof node") for node in proof]


# --------------------------------------------------------------------------- the tree


class MerkleTree:
    """An append-only RFC 6962 tree that keeps every full subtree hash.

    ``_levels[h]`` holds, packed 32 bytes each, the hashes of the complete subtrees of
    2**h leaves in order (level 0: the leaf hashes). An append hashes one new node per
    level it completes: O(1) amortised, O(log n) at worst. Every node any RFC 6962 root,
    audit path or consistency proof needs, for the current or any earlier size, is one
    of those subtrees or a right edge folded from O(log n) of them, so roots and proofs
    cost O(log n) hashes. Memory: about 64 bytes per leaf.
    """

    __slots__ = ("_levels", "_size")

    def __init__(self, leaves: Iterable[bytes] = ()) -> None:
        self._levels: list[bytearray] = []
        self._size = 0
        for leaf in leaves:
            self.append(leaf)

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return self._size

    def append(self, leaf: bytes) -> int:
        """Append a leaf (raw bytes, hashed here per RFC 6962); return its index."""
        return self.append_leaf_hash(leaf_hash(leaf))

    def append_leaf_hash(self, hash_: bytes) -> int:
        """Append a leaf by its RFC 6962 leaf hash (e.g. when rebuilding from storage)."""
        node = _check_hash(hash_, "a leaf hash")
        if self._size >= MAX_TREE_SIZE:
            raise MerkleError("the tree is full")
        index = self._size
        levels = self._levels
        height = 0
        while True:
            if height == len(levels):
                levels.append(bytearray())
            level = levels[height]
            level += node
            # An odd count means this node waits for its right sibling.
            if (len(level) // HASH_BYTES) & 1:
                break
            # RFC 6962 section 2.1 node hash of the last two nodes, which sit side by side.
            node = hashlib.sha256(_NODE_PREFIX + level[-2 * HASH_BYTES :]).digest()
            height += 1
        self._size = index + 1
        return index

    def leaf_hash_at(self, index: int) -> bytes:
        """The stored leaf hash at ``index``."""
        _check_int(index, upper=self._size - 1, what="leaf index")
        return self._node(0, index)

    def root(self) -> bytes:
        """MTH of the whole tree (RFC 6962 section 2.1)."""
        return self._range_hash(0, self._size)

    def root_at(self, size: int) -> bytes:
        """MTH of the first ``size`` leaves: the root this tree had at that size."""
        _check_int(size, upper=self._size, what="tree size")
        return self._range_hash(0, size)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """RFC 6962 section 2.1.1 audit path PATH(index, D[size]), leaf end first."""
        _check_int(size, upper=self._size, what="tree size")
        _check_int(index, upper=size - 1, what="leaf index")
        path: list[bytes] = []
        lo, hi = 0, size
        # PATH(m, D[n]) = PATH(m, D[0:k]) : MTH(D[k:n])        if m < k
        #               = PATH(m - k, D[k:n]) : MTH(D[0:k])    if m >= k
        # Walked root to leaf, so the siblings come out in reverse order.
        while hi - lo > 1:
            k = _split(hi - lo)
            if index < lo + k:
                path.append(self._range_hash(lo + k, hi))
                hi = lo + k
            else:
                path.append(self._range_hash(lo, lo + k))
                lo += k
        path.reverse()
        return path

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """RFC 6962 section 2.1.2 PROOF(old_size, D[new_size]).

        Empty when ``old_size`` is 0 or equals ``new_size``: RFC 6962 defines proofs for
        0 < m < n only, and those two cases need none (see :func:`verify_consistency`).
        """
        _check_int(new_size, upper=self._size, what="new tree size")
        _check_int(old_size, upper=new_size, what="old tree size")
        path: list[bytes] = []
        if old_size in (0, new_size):
            return path
        lo, hi = 0, new_size
        complete = True  # SUBPROOF's flag b: is D[lo:old_size] still the whole old tree?
        while True:
            if old_size == hi:
                # SUBPROOF(m, D[m], true) = {}; SUBPROOF(m, D[m], false) = {MTH(D[m])}.
                if not complete:
                    path.append(self._range_hash(lo, hi))
                break
            k = _split(hi - lo)
            if old_size - lo <= k:
                # m <= k: SUBPROOF(m, D[0:k], b) : MTH(D[k:n])
                path.append(self._range_hash(lo + k, hi))
                hi = lo + k
            else:
                # m > k: SUBPROOF(m - k, D[k:n], false) : MTH(D[0:k])
                path.append(self._range_hash(lo, lo + k))
                lo += k
                complete = False
        path.reverse()
        return path

    def _node(self, height: int, index: int) -> bytes:
        start = index * HASH_BYTES
        return bytes(self._levels[height][start : start + HASH_BYTES])

    def _range_hash(self, lo: int, hi: int) -> bytes:
        """MTH(D[lo:hi]) for a range the RFC 6962 recursion produces.

        Such a range starts at a multiple of the smallest power of two >= its length, so
        it splits into the complete subtrees named by the binary digits of its length
        (largest first), and its MTH folds them from the right.
        """
        if lo == hi:
            return EMPTY_ROOT
        peaks: list[bytes] = []
        position = lo
        remaining = hi - lo
        while remaining:
            height = remaining.bit_length() - 1
            peaks.append(self._node(height, position >> height))
            position += 1 << height
            remaining -= 1 << height
        root = peaks.pop()
        while peaks:
            root = _node_hash(peaks.pop(), root)
        return root


# --------------------------------------------------------------------------- verification


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree of ``size`` with ``root``.

    RFC 9162 section 2.1.3.2. Raises MerkleError on any failure. ``size`` and ``root``
    must come from the same verified (signed) tree head: the proof binds the leaf to the
    root, and the size only shapes the walk.
    """
    hash_ = _check_hash(leaf_hash, "the leaf hash")
    expected_root = _check_hash(root, "the root")
    _check_int(size, upper=MAX_TREE_SIZE, what="tree size")
    _check_int(index, upper=MAX_TREE_SIZE, what="leaf index")
    path = _check_path(proof)
    # RFC 9162 2.1.3.2 step 1: "If leaf_index >= tree_size, then fail".
    if index >= size:
        raise MerkleError("leaf index is out of range")
    # Step 2: fn = leaf_index, sn = tree_size - 1. Step 3: r = hash.
    fn, sn = index, size - 1
    computed = hash_
    for node in path:
        # Step 4a: a proof longer than the tree is deep fails.
        if sn == 0:
            raise MerkleError(_BAD_INCLUSION)
        # Step 4b: a right child, or the last node of its level, hashes on the right.
        if fn & 1 or fn == sn:
            computed = _node_hash(node, computed)
            # Skip the levels where this node had no right sibling (right edge).
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            computed = _node_hash(computed, node)
        # Step 4c.
        fn >>= 1
        sn >>= 1
    # Step 5: sn == 0 (the proof was not too short) and r == root_hash.
    if sn != 0 or not hmac.compare_digest(computed, expected_root):
        raise MerkleError(_BAD_INCLUSION)


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree (``new_size``, ``new_root``) extends (``old_size``, ``old_root``).

    RFC 9162 section 2.1.4.2 for 0 < old_size < new_size. Edge cases, failing closed:
    equal sizes need an empty proof and equal roots; ``old_size == 0`` needs an empty
    proof and ``old_root`` equal to the empty-tree hash (every tree extends it).
    Raises MerkleError on any failure.
    """
    first_hash = _check_hash(old_root, "the old root")
    second_hash = _check_hash(new_root, "the new root")
    _check_int(new_size, upper=MAX_TREE_SIZE, what="new tree size")
    _check_int(old_size, upper=MAX_TREE_SIZE, what="old tree size")
    path = _check_path(proof)
    if old_size > new_size:
        raise MerkleError("old tree size is larger than the new one")
    if old_size == 0:
        # RFC 6962 section 2.1: MTH({}) = SHA-256(); nothing to prove beyond that.
        if path or not hmac.compare_digest(first_hash, EMPTY_ROOT):
            raise MerkleError(_BAD_CONSISTENCY)
        return
    if old_size == new_size:
        # RFC 6962 section 2.1.2: PROOF(n, D[n]) is empty; the roots must agree.
        if path or not hmac.compare_digest(first_hash, second_hash):
            raise MerkleError(_BAD_CONSISTENCY)
        return
    # RFC 9162 2.1.4.2 step 1: an empty consistency_path fails.
    if not path:
        raise MerkleError(_BAD_CONSISTENCY)
    # Step 2: if first is an exact power of 2, prepend first_hash.
    if old_size & (old_size - 1) == 0:
        path.insert(0, first_hash)
    # Step 3: fn = first - 1, sn = second - 1.
    fn, sn = old_size - 1, new_size - 1
    # Step 4: if LSB(fn) is set, right-shift both until it is not.
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # Step 5: fr = sr = the first value of consistency_path.
    first_computed = second_computed = path[0]
    # Step 6: for each subsequent value c.
    for node in path[1:]:
        # Step 6a: a proof longer than the tree is deep fails.
        if sn == 0:
            raise MerkleError(_BAD_CONSISTENCY)
        # Step 6b.
        if fn & 1 or fn == sn:
            first_computed = _node_hash(node, first_computed)
            second_computed = _node_hash(node, second_computed)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            second_computed = _node_hash(second_computed, node)
        # Step 6c.
        fn >>= 1
        sn >>= 1
    # Step 7: fr == first_hash, sr == second_hash and sn == 0. Both comparisons run
    # (no short circuit) so the failure is the same whichever root is wrong.
    first_ok = hmac.compare_digest(first_computed, first_hash)
    second_ok = hmac.compare_digest(second_computed, second_hash)
    if sn != 0 or not (first_ok and second_ok):
        raise MerkleError(_BAD_CONSISTENCY)


# --------------------------------------------------------------------------- salted trade leaves


def trade_set_digest(keys: Iterable[tuple[str, str]]) -> str:
    """SHA-256 (hex) of RFC 8785 of the sorted ``[symbol, trade id]`` keys.

    An unsalted commitment to *which* trades a session holds (not their contents):
    the owner compares it with the same digest of the exchange's own history to check
    completeness. The salted Merkle root commits to the contents.
    """
    return hashlib.sha256(canonical_json(sorted([s, i] for s, i in keys))).hexdigest()


def trade_leaf(fields: Mapping[str, str], salt: bytes) -> bytes:
    """The leaf committing to one trade: RFC 8785 of ``{"salt", "fields"}``.

    ``fields`` are the exchange's raw strings (no number parsing, so the commitment is
    to exactly what the exchange returned); ``salt`` is the trade's own 32-byte salt
    (enclave/commitments.py), base64 with padding in the leaf. Without the salt a leaf
    hash could be brute-forced from guessed trade values; with it, the leaf reveals
    nothing until the owner discloses ``fields`` and ``salt`` together with an inclusion
    proof, and a verifier recomputes ``leaf_hash(trade_leaf(fields, salt))``.
    """
    if not isinstance(salt, bytes) or len(salt) != TRADE_SALT_BYTES:
        raise MerkleError(f"a trade salt must be {TRADE_SALT_BYTES} bytes")
    if not isinstance(fields, Mapping) or not fields:
        raise MerkleError("trade fields must be a non-empty mapping")
    if not all(isinstance(key, str) and isinstance(value, str) for key, value in fields.items()):
        raise MerkleError("trade fields must map strings to strings")
    try:
        return _trade_leaf_jcs(fields, b64encode(salt))
    except ValueError:
        # Lone surrogates: RFC 8785 section 3.2.2.2 needs valid Unicode.
        raise MerkleError("trade fields cannot be canonicalised (RFC 8785)") from None


def _utf16_order(item: tuple[str, str]) -> bytes:
    # RFC 8785 section 3.2.3: properties sorted by their names' UTF-16 code units.
    return item[0].encode("utf-16-be")


def _trade_leaf_jcs(fields: Mapping[str, str], salt_text: str) -> bytes:
    """RFC 8785 of ``{"fields": fields, "salt": salt_text}``, fields of str to str.

    The bytes ``canonical_json`` gives for this shape (tests compare the two on
    generated fields), written directly: one commitment per trade read, and the
    general serializer is about five times slower. "fields" sorts before "salt"; the
    salt is base64, which needs no escaping. Strings follow RFC 8785 section 3.2.2.2
    (ECMAScript JSON.stringify), which ``json``'s ``encode_basestring`` implements
    exactly: two-character escapes for backspace, tab, newline, form feed, carriage
    return, quote and backslash, a lowercase \\u00xx escape for the other controls,
    everything else as is; a lone surrogate fails the UTF-8 encoding (ValueError), as
    it fails ``canonical_json``.
    """
    quote = encode_basestring
    members = ",".join(
        f"{quote(name)}:{quote(value)}" for name, value in sorted(fields.items(), key=_utf16_order)
    )
    return f'{{"fields":{{{members}}},"salt":"{salt_text}"}}'.encode()


# --------------------------------------------------------------------------- wire forms


def _check_json_object(obj: object, fields: frozenset[str], what: str) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise MerkleError(f"{what} must be a JSON object")
    if not all(isinstance(key, str) for key in obj) or set(obj) != fields:
        raise MerkleError(f"{what} must have exactly the fields {', '.join(sorted(fields))}")
    return obj


def _check_hex_hash(value: object, what: str) -> str:
    # Lowercase only: one spelling per hash, so equal proofs are equal strings.
    if not isinstance(value, str) or not _HEX_HASH.fullmatch(value):
        raise MerkleError(f"{what} must be 64 lowercase hex characters")
    return value


def _check_hex_path(path: object) -> tuple[str, ...]:
    if not isinstance(path, list | tuple):
        raise MerkleError("field 'path' must be a list")
    if len(path) > MAX_PROOF_LENGTH:
        raise MerkleError("field 'path' is too long")
    return tuple(_check_hex_hash(node, "a path node") for node in path)


@dataclass(frozen=True, slots=True, kw_only=True)
class InclusionProof:
    """An audit path on the wire: ``{"index", "size", "path": [hex, ...]}``."""

    index: int
    size: int
    path: tuple[str, ...]

    def __post_init__(self) -> None:
        _check_int(self.size, upper=_MAX_JSON_INT, what="field 'size'")
        _check_int(self.index, upper=_MAX_JSON_INT, what="field 'index'")
        if self.index >= self.size:
            raise MerkleError("field 'index' must be smaller than field 'size'")
        # A frozen dataclass: store the path as a tuple whatever sequence came in.
        object.__setattr__(self, "path", _check_hex_path(self.path))

    @classmethod
    def from_hashes(cls, index: int, size: int, path: Sequence[bytes]) -> InclusionProof:
        """Wrap a :meth:`MerkleTree.inclusion_proof` result."""
        return cls(index=index, size=size, path=tuple(node.hex() for node in _check_path(path)))

    def hashes(self) -> list[bytes]:
        """The path as raw hashes, for :func:`verify_inclusion`."""
        return [bytes.fromhex(node) for node in self.path]

    def verify(self, leaf_hash: bytes, root: bytes) -> None:
        """:func:`verify_inclusion` with this proof; ``root`` from a verified tree head."""
        verify_inclusion(leaf_hash, self.index, self.size, self.hashes(), root)

    def to_json(self) -> dict[str, Any]:
        """The JSON-ready object."""
        return {"index": self.index, "size": self.size, "path": list(self.path)}

    @classmethod
    def from_json(cls, obj: object) -> InclusionProof:
        """Parse exactly ``{"index", "size", "path"}`` (a decoded JSON object).

        Raises MerkleError on anything else: extra or missing fields, non-integer or
        out-of-range numbers, ``index >= size``, more than 64 nodes, non-lowercase hex.
        """
        unverified = _check_json_object(obj, _INCLUSION_FIELDS, "an inclusion proof")
        return cls(
            index=_check_int(unverified["index"], upper=_MAX_JSON_INT, what="field 'index'"),
            size=_check_int(unverified["size"], upper=_MAX_JSON_INT, what="field 'size'"),
            path=_check_hex_path(unverified["path"]),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsistencyProof:
    """A consistency proof on the wire: ``{"old_size", "new_size", "path": [hex, ...]}``."""

    old_size: int
    new_size: int
    path: tuple[str, ...]

    def __post_init__(self) -> None:
        _check_int(self.new_size, upper=_MAX_JSON_INT, what="field 'new_size'")
        _check_int(self.old_size, upper=_MAX_JSON_INT, what="field 'old_size'")
        if self.old_size > self.new_size:
            raise MerkleError("field 'old_size' must not exceed field 'new_size'")
        object.__setattr__(self, "path", _check_hex_path(self.path))

    @classmethod
    def from_hashes(cls, old_size: int, new_size: int, path: Sequence[bytes]) -> ConsistencyProof:
        """Wrap a :meth:`MerkleTree.consistency_proof` result."""
        hex_path = tuple(node.hex() for node in _check_path(path))
        return cls(old_size=old_size, new_size=new_size, path=hex_path)

    def hashes(self) -> list[bytes]:
        """The path as raw hashes, for :func:`verify_consistency`."""
        return [bytes.fromhex(node) for node in self.path]

    def verify(self, old_root: bytes, new_root: bytes) -> None:
        """:func:`verify_consistency` with this proof; roots from verified tree heads."""
        verify_consistency(self.old_size, self.new_size, old_root, new_root, self.hashes())

    def to_json(self) -> dict[str, Any]:
        """The JSON-ready object."""
        return {"old_size": self.old_size, "new_size": self.new_size, "path": list(self.path)}

    @classmethod
    def from_json(cls, obj: object) -> ConsistencyProof:
        """Parse exactly ``{"old_size", "new_size", "path"}`` (a decoded JSON object).

        Raises MerkleError on anything else, including ``old_size > new_size``.
        """
        unverified = _check_json_object(obj, _CONSISTENCY_FIELDS, "a consistency proof")
        return cls(
            old_size=_check_int(
                unverified["old_size"], upper=_MAX_JSON_INT, what="field 'old_size'"
            ),
            new_size=_check_int(
                unverified["new_size"], upper=_MAX_JSON_INT, what="field 'new_size'"
            ),
            path=_check_hex_path(unverified["path"]),
        )


# --------------------------------------------------------------------------- signed tree heads


@dataclass(frozen=True, slots=True, kw_only=True)
class TreeHead:
    """The facts a signed tree head (STH) vouches for: log, size, root, time.

    ``log_id`` names the log publicly (e.g. the hash the database keeps of a session
    id), never a session id in clear. ``timestamp`` is Unix seconds, passed in.
    """

    log_id: str
    size: int
    root_hash: str
    timestamp: int

    def __post_init__(self) -> None:
        if not isinstance(self.log_id, str) or not _LOG_ID.fullmatch(self.log_id):
            raise MerkleError("field 'log_id' must be 1..128 characters of [A-Za-z0-9._:-]")
        _check_int(self.size, upper=_MAX_JSON_INT, what="field 'tree_size'")
        _check_hex_hash(self.root_hash, "field 'root_hash'")
        _check_int(self.timestamp, upper=_MAX_JSON_INT, what="field 'timestamp'")

    @property
    def root(self) -> bytes:
        """The root as raw bytes, for the verifiers."""
        return bytes.fromhex(self.root_hash)

    def to_payload(self) -> dict[str, Any]:
        """The dict the enclave signs with ``shared.signing.sign_payload``."""
        return {
            "v": TREE_HEAD_VERSION,
            "purpose": TREE_HEAD_PURPOSE,
            "log_id": self.log_id,
            "tree_size": self.size,
            "root_hash": self.root_hash,
            "timestamp": self.timestamp,
        }

    @classmethod
    def from_payload(cls, obj: object) -> TreeHead:
        """Parse a tree head payload (after its signature verified); MerkleError otherwise."""
        unverified = _check_json_object(obj, _TREE_HEAD_FIELDS, "a tree head")
        version = unverified["v"]
        # type() not isinstance(): neither true nor 1.0 is version 1.
        if type(version) is not int or version != TREE_HEAD_VERSION:
            raise MerkleError("unsupported tree head version")
        if unverified["purpose"] != TREE_HEAD_PURPOSE:
            raise MerkleError("field 'purpose' is not a tree head")
        return cls(
            log_id=unverified["log_id"],
            size=unverified["tree_size"],
            root_hash=unverified["root_hash"],
            timestamp=unverified["timestamp"],
        )


def tree_head_payload(log_id: str, size: int, root_hex: str, timestamp: int) -> dict[str, Any]:
    """The STH payload the enclave signs (signing happens in the enclave, not here).

    ``{"v": 1, "purpose": "perf-aggregator/tree-head", "log_id", "tree_size",
    "root_hash", "timestamp"}``; raises MerkleError for a malformed argument.
    """
    return TreeHead(log_id=log_id, size=size, root_hash=root_hex, timestamp=timestamp).to_payload()
