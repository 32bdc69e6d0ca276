"""RFC 6962 Merkle trees: reference vectors, a naive reference, proofs, wire forms, trade leaves."""

from __future__ import annotations

import ast
import base64
import functools
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import shared.merkle as merkle_module
from shared.encoding import canonical_json
from shared.errors import PerfAggError
from shared.merkle import (
    EMPTY_ROOT,
    MAX_PROOF_LENGTH,
    MAX_TREE_SIZE,
    TREE_HEAD_PURPOSE,
    ConsistencyProof,
    InclusionProof,
    MerkleError,
    MerkleTree,
    TreeHead,
    leaf_hash,
    trade_leaf,
    tree_head_payload,
    verify_consistency,
    verify_inclusion,
)
from shared.signing import sign_payload, verify_payload

VECTORS = Path(__file__).parent / "vectors" / "merkle"
RFC = json.loads((VECTORS / "rfc6962.json").read_text())
TRADE_LEAVES = json.loads((VECTORS / "trade_leaf.json").read_text())

CT_LEAVES = [bytes.fromhex(leaf) for leaf in RFC["leaves"]]
CT_ROOTS = [bytes.fromhex(root) for root in RFC["roots"]]
CT_TREE = MerkleTree(CT_LEAVES)
SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")

# Leaves for the reference comparison and the property tests: distinct, varied lengths.
REFERENCE_SIZE = 300
PROPERTY_SIZE = 3000
LEAVES = [i.to_bytes(4, "big") * (1 + i % 3) for i in range(PROPERTY_SIZE)]
TREE = MerkleTree(LEAVES)
ROOTS = {size: TREE.root_at(size) for size in range(PROPERTY_SIZE + 1)}
# Known-good wire forms that the negative cases mutate.
GOOD_INCLUSION = InclusionProof.from_hashes(3, 5, TREE.inclusion_proof(3, 5)).to_json()
GOOD_CONSISTENCY = ConsistencyProof.from_hashes(3, 5, TREE.consistency_proof(3, 5)).to_json()
HEX = "ab" * 32


def untyped(value: object) -> Any:
    """``value`` typed as Any: a deliberately mistyped argument, as an untrusted caller sends."""
    return value


def flip_bit(data: bytes, bit: int) -> bytes:
    """``data`` with one bit inverted (bit counted over the whole byte string)."""
    out = bytearray(data)
    out[(bit // 8) % len(out)] ^= 1 << (bit % 8)
    return bytes(out)


# --------------------------------------------------------------------------- naive reference
# RFC 6962 section 2.1 / 2.1.1 / 2.1.2, transcribed literally over LEAVES[lo:hi]. The
# cache only avoids recomputing identical subtrees across the 300 sizes.


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


@functools.cache
def reference_mth(lo: int, hi: int) -> bytes:
    """MTH(D[lo:hi]) by the RFC's recursive definition."""
    n = hi - lo
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + LEAVES[lo]).digest()
    k = _k(n)
    return hashlib.sha256(b"\x01" + reference_mth(lo, lo + k) + reference_mth(lo + k, hi)).digest()


def reference_path(m: int, lo: int, hi: int) -> list[bytes]:
    """PATH(m, D[lo:hi]) by the RFC's recursive definition."""
    n = hi - lo
    if n == 1:
        return []
    k = _k(n)
    if m < k:
        return [*reference_path(m, lo, lo + k), reference_mth(lo + k, hi)]
    return [*reference_path(m - k, lo + k, hi), reference_mth(lo, lo + k)]


def reference_subproof(m: int, lo: int, hi: int, complete: bool) -> list[bytes]:
    """SUBPROOF(m, D[lo:hi], b) by the RFC's recursive definition."""
    n = hi - lo
    if m == n:
        return [] if complete else [reference_mth(lo, hi)]
    k = _k(n)
    if m <= k:
        return [*reference_subproof(m, lo, lo + k, complete), reference_mth(lo + k, hi)]
    return [*reference_subproof(m - k, lo + k, hi, False), reference_mth(lo, lo + k)]


# --------------------------------------------------------------------------- module shape


def test_all_is_exactly_the_public_api() -> None:
    """__all__ lists the module's public names and nothing else."""
    assert set(merkle_module.__all__) == {
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
    }
    defined = {name for name in vars(merkle_module) if not name.startswith("_")}
    assert set(merkle_module.__all__) <= defined


def test_module_is_sans_io() -> None:
    """shared.merkle imports no asyncio, socket, psycopg or aiohttp (STYLE rule 2)."""
    tree = ast.parse(Path(merkle_module.__file__).read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module
    }
    assert not {"asyncio", "socket", "psycopg", "aiohttp"} & imported


def test_merkle_error_is_a_project_error() -> None:
    """Callers catching PerfAggError also catch every Merkle failure."""
    assert issubclass(MerkleError, PerfAggError)


# --------------------------------------------------------------------------- reference vectors


def test_hasher_vectors() -> None:
    """Empty tree, empty leaf, a leaf and a node hash equal the RFC 6962 known answers."""
    hashes = RFC["hashes"]
    assert EMPTY_ROOT.hex() == hashes["empty_tree"] == MerkleTree().root().hex()
    assert leaf_hash(b"").hex() == hashes["empty_leaf"]
    assert leaf_hash(bytes.fromhex(hashes["leaf"]["data"])).hex() == hashes["leaf"]["hash"]
    node = hashes["node"]
    got = merkle_module._node_hash(bytes.fromhex(node["left"]), bytes.fromhex(node["right"]))
    assert got.hex() == node["hash"]


def test_empty_tree_root_differs_from_empty_leaf() -> None:
    """MTH({}) is SHA-256() while a tree of one empty leaf hashes 0x00 first."""
    assert MerkleTree().root() != MerkleTree([b""]).root() == leaf_hash(b"")


def test_vector_roots_at_every_size() -> None:
    """Appending the 8 CT leaves one by one gives the published root at each size 1..8."""
    tree = MerkleTree()
    for size, (leaf, expected) in enumerate(zip(CT_LEAVES, CT_ROOTS, strict=True), start=1):
        assert tree.append(leaf) == size - 1
        assert tree.root() == expected
        assert CT_TREE.root_at(size) == expected


@pytest.mark.parametrize("case", RFC["inclusion"], ids=lambda c: f"{c['index']}-of-{c['size']}")
def test_vector_inclusion_proofs(case: dict[str, Any]) -> None:
    """The tree produces the published audit paths and they verify (RFC 6962 2.1.1)."""
    index, size = case["index"], case["size"]
    proof = CT_TREE.inclusion_proof(index, size)
    assert [node.hex() for node in proof] == case["path"]
    verify_inclusion(leaf_hash(CT_LEAVES[index]), index, size, proof, CT_ROOTS[size - 1])


@pytest.mark.parametrize(
    "case", RFC["consistency"], ids=lambda c: f"{c['old_size']}-{c['new_size']}"
)
def test_vector_consistency_proofs(case: dict[str, Any]) -> None:
    """The tree produces the published consistency proofs and they verify (RFC 6962 2.1.2)."""
    old, new = case["old_size"], case["new_size"]
    proof = CT_TREE.consistency_proof(old, new)
    assert [node.hex() for node in proof] == case["path"]
    verify_consistency(old, new, CT_ROOTS[old - 1], CT_ROOTS[new - 1], proof)


def inclusion_probes(
    index: int, size: int, proof: list[bytes], root: bytes, leaf: bytes
) -> dict[str, tuple[bytes, int, int, list[bytes], bytes]]:
    """The corruptions transparency-dev/merkle applies to every known-good audit path."""
    probes = {
        "index-1": (leaf, index - 1, size, proof, root),
        "index+1": (leaf, index + 1, size, proof, root),
        "index^2": (leaf, index ^ 2, size, proof, root),
        "size*2": (leaf, index, size * 2, proof, root),
        "size/2": (leaf, index, size // 2, proof, root),
        "wrong-leaf": (leaf_hash(b"WrongLeaf"), index, size, proof, root),
        "empty-root": (leaf, index, size, proof, EMPTY_ROOT),
        "random-root": (leaf, index, size, proof, SOME_HASH),
        "trailing-root": (leaf, index, size, [*proof, root], root),
        "preceding-root": (leaf, index, size, [root, *proof], root),
        "trailing-garbage": (leaf, index, size, [*proof, b""], root),
    }
    for i in range(len(proof)):
        probes[f"flipped-proof[{i}]"] = (
            leaf,
            index,
            size,
            [*proof[:i], flip_bit(proof[i], 3), *proof[i + 1 :]],
            root,
        )
    if proof:
        probes["removed-component"] = (leaf, index, size, proof[:-1], root)
    if len(proof) > 1:
        probes["inserted-component"] = (leaf, index, size, [proof[0], SOME_HASH, *proof[1:]], root)
    return probes


INCLUSION_PROBES = [
    pytest.param(*args, id=f"{case['index']}-of-{case['size']}:{name}")
    for case in RFC["inclusion"]
    for name, args in inclusion_probes(
        case["index"],
        case["size"],
        [bytes.fromhex(node) for node in case["path"]],
        CT_ROOTS[case["size"] - 1],
        leaf_hash(CT_LEAVES[case["index"]]),
    ).items()
]


@pytest.mark.parametrize(("leaf", "index", "size", "proof", "root"), INCLUSION_PROBES)
def test_corrupted_vector_inclusion_proofs_fail(
    leaf: bytes, index: int, size: int, proof: list[bytes], root: bytes
) -> None:
    """Each transparency-dev corruption of a known-good audit path raises MerkleError."""
    with pytest.raises(MerkleError):
        verify_inclusion(leaf, index, size, proof, root)


def consistency_probes(
    old: int, new: int, root1: bytes, root2: bytes, proof: list[bytes]
) -> dict[str, tuple[int, int, bytes, bytes, list[bytes]]]:
    """The corruptions transparency-dev/merkle applies to every known-good consistency proof."""
    wrong_root = leaf_hash(b"WrongRoot")
    probes = {
        "old-1": (old - 1, new, root1, root2, proof),
        "old+1": (old + 1, new, root1, root2, proof),
        "old^2": (old ^ 2, new, root1, root2, proof),
        "new*2": (old, new * 2, root1, root2, proof),
        "new/2": (old, new // 2, root1, root2, proof),
        "wrong-root1": (old, new, wrong_root, root2, proof),
        "wrong-root2": (old, new, root1, wrong_root, proof),
        "swapped-roots": (old, new, root2, root1, proof),
        "empty-proof": (old, new, root1, root2, []),
        "trailing-garbage": (old, new, root1, root2, [*proof, b""]),
        "trailing-root1": (old, new, root1, root2, [*proof, root1]),
        "trailing-root2": (old, new, root1, root2, [*proof, root2]),
        "preceding-root1": (old, new, root1, root2, [root1, *proof]),
        "preceding-root2": (old, new, root1, root2, [root2, *proof]),
        "preceding-proof[0]": (old, new, root1, root2, [proof[0], *proof]),
        "truncated": (old, new, root1, root2, proof[:-1]),
    }
    for i in range(len(proof)):
        probes[f"flipped-proof[{i}]"] = (
            old,
            new,
            root1,
            root2,
            [*proof[:i], flip_bit(proof[i], 4), *proof[i + 1 :]],
        )
    return probes


CONSISTENCY_PROBES = [
    pytest.param(*args, id=f"{case['old_size']}-{case['new_size']}:{name}")
    for case in RFC["consistency"]
    if case["path"]  # as in transparency-dev: only non-trivial proofs are corrupted
    for name, args in consistency_probes(
        case["old_size"],
        case["new_size"],
        CT_ROOTS[case["old_size"] - 1],
        CT_ROOTS[case["new_size"] - 1],
        [bytes.fromhex(node) for node in case["path"]],
    ).items()
]


@pytest.mark.parametrize(("old", "new", "root1", "root2", "proof"), CONSISTENCY_PROBES)
def test_corrupted_vector_consistency_proofs_fail(
    old: int, new: int, root1: bytes, root2: bytes, proof: list[bytes]
) -> None:
    """Each transparency-dev corruption of a known-good consistency proof raises MerkleError."""
    with pytest.raises(MerkleError):
        verify_consistency(old, new, root1, root2, proof)


A, B = leaf_hash(b"a"), leaf_hash(b"b")


@pytest.mark.parametrize(
    ("old", "new", "root1", "root2", "proof", "ok"),
    [
        pytest.param(0, 0, EMPTY_ROOT, EMPTY_ROOT, [], True, id="empty-to-empty"),
        pytest.param(0, 5, EMPTY_ROOT, A, [], True, id="empty-to-any"),
        pytest.param(0, 0, A, A, [], False, id="size-0-but-not-the-empty-root"),
        pytest.param(0, 1, EMPTY_ROOT, A, [EMPTY_ROOT], False, id="size-0-with-a-proof"),
        pytest.param(1, 1, A, A, [], True, id="same-size-same-root"),
        pytest.param(1, 1, A, B, [], False, id="same-size-other-root"),
        pytest.param(1, 1, A, A, [A], False, id="same-size-with-a-proof"),
        pytest.param(1, 0, A, EMPTY_ROOT, [], False, id="time-travel-to-empty"),
        pytest.param(2, 1, A, B, [], False, id="time-travel"),
        pytest.param(1, 2, A, B, [], False, id="growth-with-empty-proof"),
    ],
)
def test_consistency_edge_cases(
    old: int, new: int, root1: bytes, root2: bytes, proof: list[bytes], ok: bool
) -> None:
    """Zero and equal sizes need an empty proof and the expected roots; shrinking fails."""
    if ok:
        verify_consistency(old, new, root1, root2, proof)
    else:
        with pytest.raises(MerkleError):
            verify_consistency(old, new, root1, root2, proof)


# --------------------------------------------------------------------------- naive reference


def test_roots_match_the_reference_for_every_size() -> None:
    """Incremental roots and root_at equal the recursive MTH for every size 0..300."""
    tree = MerkleTree()
    assert tree.root() == reference_mth(0, 0)
    for size in range(1, REFERENCE_SIZE + 1):
        tree.append(LEAVES[size - 1])
        assert tree.root() == reference_mth(0, size) == TREE.root_at(size)
    assert all(tree.root_at(size) == reference_mth(0, size) for size in range(REFERENCE_SIZE + 1))


def test_inclusion_proofs_match_the_reference_for_every_size() -> None:
    """For every size 1..300 and every index, the audit path equals PATH(m, D[n]) and verifies."""
    for size in range(1, REFERENCE_SIZE + 1):
        root = ROOTS[size]
        for index in range(size):
            proof = TREE.inclusion_proof(index, size)
            assert proof == reference_path(index, 0, size)
            verify_inclusion(TREE.leaf_hash_at(index), index, size, proof, root)


def test_consistency_proofs_match_the_reference_for_every_size() -> None:
    """For every 0 < m < n <= 300, the proof equals PROOF(m, D[n]) and verifies."""
    for new in range(2, REFERENCE_SIZE + 1):
        for old in range(1, new):
            proof = TREE.consistency_proof(old, new)
            assert proof == reference_subproof(old, 0, new, True)
            verify_consistency(old, new, ROOTS[old], ROOTS[new], proof)


def test_append_leaf_hash_rebuilds_the_same_tree() -> None:
    """A tree rebuilt from stored leaf hashes has the same root as one built from leaves."""
    rebuilt = MerkleTree()
    for index in range(100):
        assert rebuilt.append_leaf_hash(TREE.leaf_hash_at(index)) == index
    assert rebuilt.root() == ROOTS[100]


# --------------------------------------------------------------------------- properties

sizes_and_indexes = st.integers(min_value=1, max_value=PROPERTY_SIZE).flatmap(
    lambda size: st.tuples(st.just(size), st.integers(min_value=0, max_value=size - 1))
)
fast = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@fast
@given(sizes_and_indexes)
def test_every_inclusion_proof_verifies(size_index: tuple[int, int]) -> None:
    """Any (index, size) audit path verifies against the root at that size."""
    size, index = size_index
    proof = TREE.inclusion_proof(index, size)
    verify_inclusion(leaf_hash(LEAVES[index]), index, size, proof, ROOTS[size])
    InclusionProof.from_hashes(index, size, proof).verify(leaf_hash(LEAVES[index]), ROOTS[size])


@fast
@given(sizes_and_indexes, st.sampled_from(["leaf", "root", "path"]), st.integers(0, 10_000))
def test_inclusion_fails_on_any_flipped_bit(
    size_index: tuple[int, int], where: str, bit: int
) -> None:
    """One flipped bit in the leaf hash, the root or any path node fails verification."""
    size, index = size_index
    leaf, root = leaf_hash(LEAVES[index]), ROOTS[size]
    proof = TREE.inclusion_proof(index, size)
    if where == "leaf":
        leaf = flip_bit(leaf, bit)
    elif where == "root":
        root = flip_bit(root, bit)
    elif proof:
        node = bit % len(proof)
        proof[node] = flip_bit(proof[node], bit // len(proof))
    else:
        leaf = flip_bit(leaf, bit)  # size 1: no path to corrupt
    with pytest.raises(MerkleError):
        verify_inclusion(leaf, index, size, proof, root)


@fast
@given(sizes_and_indexes, st.integers(min_value=1, max_value=PROPERTY_SIZE))
def test_inclusion_fails_at_a_wrong_index(size_index: tuple[int, int], shift: int) -> None:
    """A path presented for any other index of the same tree fails."""
    size, index = size_index
    wrong = (index + shift) % (size + 1)  # may also be == size (out of range)
    if wrong == index:
        wrong = size
    proof = TREE.inclusion_proof(index, size)
    with pytest.raises(MerkleError):
        verify_inclusion(leaf_hash(LEAVES[index]), wrong, size, proof, ROOTS[size])


@fast
@given(sizes_and_indexes, st.integers(min_value=1, max_value=PROPERTY_SIZE))
def test_inclusion_fails_against_another_tree_head(size_index: tuple[int, int], other: int) -> None:
    """A path for one size fails against the (size, root) of any other tree head."""
    size, index = size_index
    if other == size:
        other = size + 1 if size < PROPERTY_SIZE else size - 1
    proof = TREE.inclusion_proof(index, size)
    with pytest.raises(MerkleError):
        verify_inclusion(leaf_hash(LEAVES[index]), index, other, proof, ROOTS[other])


@fast
@given(sizes_and_indexes, st.data())
def test_inclusion_fails_on_a_truncated_or_extended_path(
    size_index: tuple[int, int], data: st.DataObject
) -> None:
    """Removing any node from the path, or adding one anywhere, fails."""
    size, index = size_index
    proof = TREE.inclusion_proof(index, size)
    extra = data.draw(st.sampled_from([SOME_HASH, ROOTS[size], leaf_hash(LEAVES[index])]))
    at = data.draw(st.integers(min_value=0, max_value=len(proof)))
    with pytest.raises(MerkleError):
        verify_inclusion(
            leaf_hash(LEAVES[index]), index, size, [*proof[:at], extra, *proof[at:]], ROOTS[size]
        )
    if proof:
        drop = data.draw(st.integers(min_value=0, max_value=len(proof) - 1))
        with pytest.raises(MerkleError):
            verify_inclusion(
                leaf_hash(LEAVES[index]), index, size, proof[:drop] + proof[drop + 1 :], ROOTS[size]
            )


size_pairs = st.integers(min_value=0, max_value=PROPERTY_SIZE).flatmap(
    lambda new: st.tuples(st.integers(min_value=0, max_value=new), st.just(new))
)


@fast
@given(size_pairs)
def test_every_consistency_proof_verifies(sizes: tuple[int, int]) -> None:
    """Any (old, new) consistency proof verifies between the roots at those sizes."""
    old, new = sizes
    proof = TREE.consistency_proof(old, new)
    verify_consistency(old, new, ROOTS[old], ROOTS[new], proof)
    ConsistencyProof.from_hashes(old, new, proof).verify(ROOTS[old], ROOTS[new])


@fast
@given(size_pairs, st.sampled_from(["old", "new"]), st.integers(0, 255))
def test_consistency_fails_when_a_root_is_altered(
    sizes: tuple[int, int], which: str, bit: int
) -> None:
    """Flipping a bit of either root fails (the new root is free only after the empty tree)."""
    old, new = sizes
    assume(which == "old" or old > 0)
    old_root, new_root = ROOTS[old], ROOTS[new]
    if which == "old":
        old_root = flip_bit(old_root, bit)
    else:
        new_root = flip_bit(new_root, bit)
    with pytest.raises(MerkleError):
        verify_consistency(old, new, old_root, new_root, TREE.consistency_proof(old, new))


@fast
@given(size_pairs, st.data())
def test_consistency_fails_on_a_corrupted_path(sizes: tuple[int, int], data: st.DataObject) -> None:
    """A flipped bit, a removed node or an added node in the proof fails."""
    old, new = sizes
    proof = TREE.consistency_proof(old, new)
    at = data.draw(st.integers(min_value=0, max_value=len(proof)))
    extended = [*proof[:at], SOME_HASH, *proof[at:]]
    with pytest.raises(MerkleError):
        verify_consistency(old, new, ROOTS[old], ROOTS[new], extended)
    if proof:
        node = data.draw(st.integers(min_value=0, max_value=len(proof) - 1))
        flipped = [
            *proof[:node],
            flip_bit(proof[node], data.draw(st.integers(0, 255))),
            *proof[node + 1 :],
        ]
        with pytest.raises(MerkleError):
            verify_consistency(old, new, ROOTS[old], ROOTS[new], flipped)
        with pytest.raises(MerkleError):
            verify_consistency(old, new, ROOTS[old], ROOTS[new], proof[:node] + proof[node + 1 :])


# --------------------------------------------------------------------------- argument bounds


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda: TREE.inclusion_proof(5, 5), id="index-equals-size"),
        pytest.param(lambda: TREE.inclusion_proof(0, 0), id="empty-tree"),
        pytest.param(lambda: TREE.inclusion_proof(-1, 5), id="negative-index"),
        pytest.param(lambda: TREE.inclusion_proof(True, 5), id="bool-index"),
        pytest.param(lambda: TREE.inclusion_proof(0, PROPERTY_SIZE + 1), id="size-beyond-tree"),
        pytest.param(lambda: TREE.consistency_proof(6, 5), id="old-after-new"),
        pytest.param(lambda: TREE.consistency_proof(1, PROPERTY_SIZE + 1), id="new-beyond-tree"),
        pytest.param(lambda: TREE.root_at(PROPERTY_SIZE + 1), id="root-beyond-tree"),
        pytest.param(lambda: TREE.root_at(-1), id="negative-root-size"),
        pytest.param(lambda: TREE.leaf_hash_at(PROPERTY_SIZE), id="leaf-beyond-tree"),
        pytest.param(lambda: MerkleTree().append(untyped("text")), id="append-str"),
        pytest.param(lambda: MerkleTree().append_leaf_hash(bytes(31)), id="append-short-hash"),
        pytest.param(lambda: leaf_hash(untyped(bytearray(b"x"))), id="leaf-hash-bytearray"),
    ],
)
def test_tree_refuses_bad_arguments(call: Callable[[], object]) -> None:
    """Out-of-range or mistyped tree arguments raise MerkleError, not IndexError or TypeError."""
    with pytest.raises(MerkleError):
        call()


LEAF0 = leaf_hash(LEAVES[0])


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda: verify_inclusion(LEAF0, 1, 1, [], LEAF0), id="index-equals-size"),
        pytest.param(lambda: verify_inclusion(LEAF0, 0, 0, [], EMPTY_ROOT), id="empty-tree"),
        pytest.param(
            lambda: verify_inclusion(LEAF0, 0, MAX_TREE_SIZE + 1, [], LEAF0), id="size-2**63"
        ),
        pytest.param(lambda: verify_inclusion(LEAF0, -1, 1, [], LEAF0), id="negative-index"),
        pytest.param(lambda: verify_inclusion(LEAF0, False, True, [], LEAF0), id="bool-numbers"),
        pytest.param(lambda: verify_inclusion(LEAF0, 0, 1, [A] * 65, LEAF0), id="proof-65-long"),
        pytest.param(
            lambda: verify_inclusion(LEAF0, 0, 1, untyped(LEAF0), LEAF0), id="proof-is-bytes"
        ),
        pytest.param(lambda: verify_inclusion(LEAF0, 0, 2, [bytes(33)], LEAF0), id="node-33-bytes"),
        pytest.param(
            lambda: verify_inclusion(LEAF0, 0, 2, [untyped("ab" * 32)], LEAF0), id="node-hex"
        ),
        pytest.param(lambda: verify_inclusion(LEAF0[:31], 0, 1, [], LEAF0), id="short-leaf"),
        pytest.param(
            lambda: verify_inclusion(LEAF0, 0, 1, [], untyped(LEAF0.hex())), id="hex-root"
        ),
        pytest.param(lambda: verify_consistency(1, MAX_TREE_SIZE + 1, A, B, [A]), id="new-2**63"),
        pytest.param(lambda: verify_consistency(1, 2, A, B, [A] * 65), id="consistency-65-long"),
        pytest.param(lambda: verify_consistency(1, 2, A, b"", [A]), id="empty-new-root"),
        pytest.param(
            lambda: verify_consistency(1, 2, A, B, untyped(A for _ in "x")), id="generator-proof"
        ),
    ],
)
def test_verifiers_refuse_malformed_input(call: Callable[[], None]) -> None:
    """Bad sizes, indexes, hash lengths, types and proof lengths raise MerkleError."""
    with pytest.raises(MerkleError):
        call()


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda: verify_inclusion(LEAF0, 0, 2**40, [A] * 65, LEAF0), id="inclusion"),
        pytest.param(lambda: verify_consistency(1, 2**40, A, B, [A] * 65), id="consistency"),
        pytest.param(
            lambda: InclusionProof.from_json({**GOOD_INCLUSION, "path": [HEX] * 65}), id="json"
        ),
    ],
)
def test_proofs_longer_than_64_nodes_are_refused_before_hashing(call: Callable[[], object]) -> None:
    """More than 64 nodes is refused as too long, whatever the sizes claim."""
    with pytest.raises(MerkleError, match="too long"):
        call()


def test_verifiers_accept_sizes_up_to_2_to_the_63() -> None:
    """The largest sizes are in range: the proof is checked, and fails only as a proof."""
    proof = [SOME_HASH] * 63
    with pytest.raises(MerkleError, match="does not verify"):
        verify_inclusion(LEAF0, MAX_TREE_SIZE - 1, MAX_TREE_SIZE, proof, SOME_HASH)
    with pytest.raises(MerkleError, match="does not verify"):
        verify_consistency(MAX_TREE_SIZE - 1, MAX_TREE_SIZE, A, B, [SOME_HASH] * MAX_PROOF_LENGTH)


# --------------------------------------------------------------------------- wire forms


def test_proofs_round_trip_through_json() -> None:
    """to_json -> JSON text -> from_json gives an equal proof that still verifies."""
    inclusion = InclusionProof.from_hashes(1234, 2999, TREE.inclusion_proof(1234, 2999))
    parsed = InclusionProof.from_json(json.loads(json.dumps(inclusion.to_json())))
    assert parsed == inclusion
    parsed.verify(leaf_hash(LEAVES[1234]), ROOTS[2999])
    consistency = ConsistencyProof.from_hashes(1000, 2999, TREE.consistency_proof(1000, 2999))
    parsed_consistency = ConsistencyProof.from_json(json.loads(json.dumps(consistency.to_json())))
    assert parsed_consistency == consistency
    parsed_consistency.verify(ROOTS[1000], ROOTS[2999])
    assert canonical_json(inclusion.to_json()).startswith(b'{"index":1234,"path":["')


@pytest.mark.parametrize(
    "obj",
    [
        pytest.param(None, id="null"),
        pytest.param([3, 5, []], id="array"),
        pytest.param(json.dumps(GOOD_INCLUSION), id="json-text"),
        pytest.param({"index": 3, "size": 5}, id="missing-path"),
        pytest.param({**GOOD_INCLUSION, "root": HEX}, id="extra-field"),
        pytest.param({**GOOD_INCLUSION, "index": True}, id="bool-index"),
        pytest.param({**GOOD_INCLUSION, "index": 3.0}, id="float-index"),
        pytest.param({**GOOD_INCLUSION, "index": "3"}, id="string-index"),
        pytest.param({**GOOD_INCLUSION, "index": -1}, id="negative-index"),
        pytest.param({**GOOD_INCLUSION, "index": 5}, id="index-equals-size"),
        pytest.param({**GOOD_INCLUSION, "size": 2**53}, id="size-beyond-2**53"),
        pytest.param({**GOOD_INCLUSION, "path": HEX}, id="path-string"),
        pytest.param({**GOOD_INCLUSION, "path": [HEX.upper()]}, id="uppercase-hex"),
        pytest.param({**GOOD_INCLUSION, "path": [HEX[:-2]]}, id="63-byte-hex"),
        pytest.param({**GOOD_INCLUSION, "path": [HEX + "ab"]}, id="33-byte-hex"),
        pytest.param({**GOOD_INCLUSION, "path": [HEX[:-1] + "g"]}, id="non-hex"),
        pytest.param({**GOOD_INCLUSION, "path": [HEX[:-2] + " a"]}, id="space-in-hex"),
        pytest.param({**GOOD_INCLUSION, "path": [HEX + "\n"]}, id="trailing-newline"),
        pytest.param({**GOOD_INCLUSION, "path": [None]}, id="null-node"),
        pytest.param({**GOOD_INCLUSION, "path": [HEX] * 65}, id="65-nodes"),
        pytest.param({1: 3, "size": 5, "path": []}, id="non-string-key"),
    ],
)
def test_inclusion_from_json_refuses_malformed_input(obj: object) -> None:
    """Anything but exactly {index, size, path} with sane values raises MerkleError."""
    with pytest.raises(MerkleError):
        InclusionProof.from_json(obj)


@pytest.mark.parametrize(
    "obj",
    [
        pytest.param({**GOOD_CONSISTENCY, "old_size": 6}, id="old-after-new"),
        pytest.param({**GOOD_CONSISTENCY, "new_size": False}, id="bool-size"),
        pytest.param({**GOOD_CONSISTENCY, "new_size": 2**53}, id="size-beyond-2**53"),
        pytest.param({"old_size": 3, "path": []}, id="missing-new-size"),
        pytest.param({**GOOD_CONSISTENCY, "path": [HEX] * 65}, id="65-nodes"),
        pytest.param({**GOOD_CONSISTENCY, "path": [b"\xab" * 32]}, id="raw-bytes-node"),
        pytest.param(GOOD_INCLUSION, id="an-inclusion-proof"),
    ],
)
def test_consistency_from_json_refuses_malformed_input(obj: object) -> None:
    """Anything but exactly {old_size, new_size, path} with sane values raises MerkleError."""
    with pytest.raises(MerkleError):
        ConsistencyProof.from_json(obj)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats()
    | st.text(max_size=70)
    | st.sampled_from([HEX, HEX.upper(), "00" * 32]),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([InclusionProof.from_json, ConsistencyProof.from_json]),
    st.sampled_from(["index", "size", "old_size", "new_size", "path", "extra"]),
    json_values,
    json_values,
)
def test_from_json_fuzz_raises_only_merkle_error(
    parse: Callable[[object], InclusionProof | ConsistencyProof],
    field: str,
    value: object,
    whole: object,
) -> None:
    """Arbitrary JSON, or a valid proof with one field replaced, parses or raises MerkleError."""
    good = GOOD_INCLUSION if parse == InclusionProof.from_json else GOOD_CONSISTENCY
    for candidate in (whole, {**good, field: value}):
        try:
            parsed = parse(candidate)
        except MerkleError:
            continue
        # Whatever parses serialises back to exactly what came in.
        assert parsed.to_json() == candidate


# --------------------------------------------------------------------------- signed tree heads

ENCLAVE_KEY = Ed25519PrivateKey.generate()
LOG_ID = hashlib.sha256(b"session-hash").hexdigest()


def test_tree_head_payload_shape() -> None:
    """The STH payload carries version, purpose, log id, size, root and timestamp only."""
    payload = tree_head_payload(LOG_ID, 2999, ROOTS[2999].hex(), 1_750_000_000)
    assert payload == {
        "v": 1,
        "purpose": TREE_HEAD_PURPOSE,
        "log_id": LOG_ID,
        "tree_size": 2999,
        "root_hash": ROOTS[2999].hex(),
        "timestamp": 1_750_000_000,
    }


def test_signed_tree_head_verifies_and_binds_proofs() -> None:
    """A client checks the STH signature, parses it and verifies a proof against it."""
    payload = tree_head_payload(LOG_ID, 2999, ROOTS[2999].hex(), 1_750_000_000)
    signature = sign_payload(ENCLAVE_KEY, payload)
    verify_payload(ENCLAVE_KEY.public_key().public_bytes_raw(), payload, signature)
    head = TreeHead.from_payload(json.loads(json.dumps(payload)))
    assert head.to_payload() == payload
    proof = InclusionProof.from_hashes(42, head.size, TREE.inclusion_proof(42, head.size))
    proof.verify(leaf_hash(LEAVES[42]), head.root)


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(("", 1, HEX, 0), id="empty-log-id"),
        pytest.param(("a" * 129, 1, HEX, 0), id="long-log-id"),
        pytest.param(("sess id", 1, HEX, 0), id="space-in-log-id"),
        pytest.param((LOG_ID, -1, HEX, 0), id="negative-size"),
        pytest.param((LOG_ID, 2**53, HEX, 0), id="size-beyond-2**53"),
        pytest.param((LOG_ID, 1, HEX.upper(), 0), id="uppercase-root"),
        pytest.param((LOG_ID, 1, bytes(32), 0), id="raw-root"),
        pytest.param((LOG_ID, 1, HEX, True), id="bool-timestamp"),
        pytest.param((LOG_ID, 1, HEX, 1.5), id="float-timestamp"),
    ],
)
def test_tree_head_payload_refuses_bad_arguments(args: tuple[Any, ...]) -> None:
    """A malformed log id, size, root or timestamp raises MerkleError."""
    with pytest.raises(MerkleError):
        tree_head_payload(*args)


GOOD_HEAD = tree_head_payload(LOG_ID, 5, HEX, 1_750_000_000)


@pytest.mark.parametrize(
    "obj",
    [
        pytest.param({**GOOD_HEAD, "v": 2}, id="version-2"),
        pytest.param({**GOOD_HEAD, "v": 1.0}, id="version-float"),
        pytest.param({**GOOD_HEAD, "v": True}, id="version-bool"),
        pytest.param({**GOOD_HEAD, "purpose": "perf-aggregator/owner-proof"}, id="other-purpose"),
        pytest.param({**GOOD_HEAD, "merkle_root": HEX}, id="extra-field"),
        pytest.param({k: v for k, v in GOOD_HEAD.items() if k != "timestamp"}, id="no-timestamp"),
        pytest.param({"v": 1, "merkle_root": HEX, "trades": 5}, id="a-report-payload"),
        pytest.param({**GOOD_HEAD, "tree_size": "5"}, id="string-size"),
        pytest.param(None, id="null"),
    ],
)
def test_tree_head_from_payload_refuses_other_objects(obj: object) -> None:
    """Only a version-1 tree head with exactly its fields parses; reports do not."""
    with pytest.raises(MerkleError):
        TreeHead.from_payload(obj)


# --------------------------------------------------------------------------- trade leaves


@pytest.mark.parametrize("case", TRADE_LEAVES["cases"], ids=lambda c: c["name"])
def test_trade_leaf_vector(case: dict[str, Any]) -> None:
    """The leaf is the hand-written RFC 8785 form and its hash the known answer."""
    leaf = trade_leaf(case["fields"], bytes.fromhex(case["salt"]))
    assert leaf == case["leaf"].encode()
    assert leaf_hash(leaf).hex() == case["leaf_hash"]


def test_trade_leaf_ignores_field_order_and_depends_on_salt() -> None:
    """Field order does not change the leaf; a different salt or value does."""
    fields = TRADE_LEAVES["cases"][0]["fields"]
    salt = bytes(range(32))
    reordered = dict(reversed(list(fields.items())))
    assert trade_leaf(reordered, salt) == trade_leaf(fields, salt)
    assert trade_leaf(fields, bytes(32)) != trade_leaf(fields, salt)
    assert trade_leaf({**fields, "qty": "12.0"}, salt) != trade_leaf(fields, salt)


# Text that exercises every RFC 8785 string rule: controls (short and \u00xx escapes),
# quote, backslash, DEL, non-ASCII, U+2028, BMP private use (U+E000, after the UTF-16
# surrogates) and astral characters (before it in UTF-16 order, after it by code point).
JCS_TEXT = st.text(
    alphabet=st.sampled_from(
        [chr(c) for c in range(0x20)]
        + list('"\\/ az09.-+E\x7f\xe9\u2028\ue000\uffff')
        + ["\U0001f600", "\U00010000"]
    ),
    max_size=6,
)


@settings(max_examples=400, deadline=None)
@given(
    fields=st.dictionaries(JCS_TEXT, JCS_TEXT, min_size=1, max_size=8),
    salt=st.binary(min_size=32, max_size=32),
)
def test_trade_leaf_is_the_general_rfc8785_serialisation(
    fields: dict[str, str], salt: bytes
) -> None:
    """The leaf is byte for byte what canonical_json makes of {"salt", "fields"}."""
    expected = canonical_json({"salt": base64.b64encode(salt).decode(), "fields": fields})
    assert trade_leaf(fields, salt) == expected


def test_trade_leaf_orders_names_by_utf16_code_units() -> None:
    """An astral name sorts before U+E000 (UTF-16 surrogates are 0xD800..0xDFFF)."""
    leaf = trade_leaf({"\ue000": "a", "\U0001f600": "b", "z": "c"}, bytes(32))
    assert leaf.startswith('{"fields":{"z":"c","\U0001f600":"b","\ue000":"a"}'.encode())


SECRET_FIELDS = {"price": "CANARY-PRICE-31337", "qty": "CANARY-\ud800"}


@pytest.mark.parametrize(
    ("fields", "salt"),
    [
        pytest.param({"price": "1"}, bytes(31), id="salt-31-bytes"),
        pytest.param({"price": "1"}, bytes(33), id="salt-33-bytes"),
        pytest.param({"price": "1"}, "00" * 32, id="salt-hex-string"),
        pytest.param({}, bytes(32), id="no-fields"),
        pytest.param({"price": 1.5}, bytes(32), id="float-value"),
        pytest.param({"price": None}, bytes(32), id="null-value"),
        pytest.param({1: "1"}, bytes(32), id="int-key"),
        pytest.param([("price", "1")], bytes(32), id="pairs-not-mapping"),
        pytest.param(SECRET_FIELDS, bytes(32), id="lone-surrogate"),
    ],
)
def test_trade_leaf_refuses_bad_input_without_echoing_it(fields: Any, salt: Any) -> None:
    """Bad salts or fields raise MerkleError whose message holds no field value."""
    with pytest.raises(MerkleError) as caught:
        trade_leaf(fields, salt)
    error = caught.value
    assert "CANARY" not in str(error)
    # Nothing chained either: a traceback shows no inner exception about the input.
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__


def test_trade_set_digest_is_order_free_and_exact() -> None:
    """The set digest ignores arrival order and changes with any added or changed key."""
    keys = [("BTC/USDT", "2"), ("ETH/USDT", "1"), ("BTC/USDT", "1")]
    digest = merkle_module.trade_set_digest(keys)
    assert (
        digest
        == hashlib.sha256(b'[["BTC/USDT","1"],["BTC/USDT","2"],["ETH/USDT","1"]]').hexdigest()
    )
    assert merkle_module.trade_set_digest(reversed(keys)) == digest
    assert merkle_module.trade_set_digest([*keys, ("ETH/USDT", "2")]) != digest
    assert merkle_module.trade_set_digest([("BTC/USDT", "3"), *keys[1:]]) != digest
