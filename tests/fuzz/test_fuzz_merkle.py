"""Fuzz shared.merkle's wire forms and verifiers: MerkleError only, exact round trips,
and no tampered audit or consistency path ever verifies.

Seeds: tests/vectors/fuzz/merkle (genuine proofs over b'leaf-0'..b'leaf-12', tree
heads, and tricky forms: index == size, true as a size, 2**53, 65 nodes, uppercase).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from shared.merkle import (
    MAX_PROOF_LENGTH,
    ConsistencyProof,
    InclusionProof,
    MerkleError,
    MerkleTree,
    TreeHead,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)
from tests.fuzz.mutations import Draw, json_values, mutated_json
from tests.fuzz.support import counted, fuzz_settings, load_seeds

SEEDS = load_seeds("merkle")
INCLUSION = [seed for name, seed in SEEDS.items() if name.startswith("inclusion")]
CONSISTENCY = [seed for name, seed in SEEDS.items() if name.startswith("consistency")]
HEADS = [seed for name, seed in SEEDS.items() if name.startswith("tree-head")]
LEAVES = [f"leaf-{i}".encode() for i in range(13)]
TREE = MerkleTree(LEAVES)


@fuzz_settings(deadline_ms=500)
@given(obj=mutated_json(INCLUSION) | json_values())
@example(obj=SEEDS["inclusion-bool-size"])
@example(obj=SEEDS["inclusion-65-nodes"])
@counted("shared.merkle.InclusionProof.from_json")
def test_inclusion_from_json_raises_only_merkle_error(obj: Any) -> None:
    """Any JSON value: a proof that writes back exactly the object read, or MerkleError;
    a parsed proof over the genuine tree verifies only if it is the genuine one."""
    try:
        proof = InclusionProof.from_json(obj)
    except MerkleError:
        return
    assert proof.to_json() == obj
    assert InclusionProof.from_json(proof.to_json()) == proof
    if proof.size == TREE.size:
        try:
            proof.verify(leaf_hash(LEAVES[proof.index]), TREE.root())
        except MerkleError:
            return
        assert list(proof.path) == [h.hex() for h in TREE.inclusion_proof(proof.index, TREE.size)]


@fuzz_settings(deadline_ms=500)
@given(obj=mutated_json(CONSISTENCY) | json_values())
@example(obj=SEEDS["consistency-old-larger"])
@counted("shared.merkle.ConsistencyProof.from_json")
def test_consistency_from_json_raises_only_merkle_error(obj: Any) -> None:
    """Any JSON value: a proof that writes back exactly the object read, or MerkleError;
    against the genuine roots only the genuine path verifies."""
    try:
        proof = ConsistencyProof.from_json(obj)
    except MerkleError:
        return
    assert proof.to_json() == obj
    if proof.new_size == TREE.size and proof.old_size <= TREE.size:
        try:
            proof.verify(TREE.root_at(proof.old_size), TREE.root())
        except MerkleError:
            return
        genuine = TREE.consistency_proof(proof.old_size, TREE.size)
        assert list(proof.path) == [h.hex() for h in genuine]


@fuzz_settings(deadline_ms=500)
@given(obj=mutated_json(HEADS) | json_values())
@example(obj=SEEDS["tree-head-v-float"])
@example(obj=SEEDS["tree-head-log-id-newline"])
@counted("shared.merkle.TreeHead.from_payload")
def test_tree_head_from_payload_raises_only_merkle_error(obj: Any) -> None:
    """Any JSON value: a head whose payload is exactly the object read, or MerkleError."""
    try:
        head = TreeHead.from_payload(obj)
    except MerkleError:
        return
    assert head.to_payload() == obj
    assert type(obj["v"]) is int and type(obj["tree_size"]) is int


def _tamper(draw: Draw, path: list[bytes]) -> list[bytes]:
    """One change to an audit path: a flipped bit, a node dropped, added, repeated or moved."""
    tampered = list(path)
    kind = draw(st.integers(0, 3))
    if kind == 0 and tampered:
        position = draw(st.integers(0, len(tampered) - 1))
        node = bytearray(tampered[position])
        node[draw(st.integers(0, 31))] ^= 1 << draw(st.integers(0, 7))
        tampered[position] = bytes(node)
    elif kind == 1 and tampered:
        del tampered[draw(st.integers(0, len(tampered) - 1))]
    elif kind == 2 or not tampered:
        tampered.insert(
            draw(st.integers(0, len(tampered))), draw(st.binary(min_size=32, max_size=32))
        )
    elif len(tampered) > 1:
        i, j = draw(st.permutations(range(len(tampered))))[:2]
        if tampered[i] == tampered[j]:
            tampered.append(bytes(32))
        tampered[i], tampered[j] = tampered[j], tampered[i]
    else:
        tampered.append(tampered[0])
    return tampered


@fuzz_settings(deadline_ms=500)
@given(size=st.integers(1, 70), data=st.data())
@counted("shared.merkle.verify_inclusion")
def test_no_tampered_audit_path_verifies(size: int, data: st.DataObject) -> None:
    """For every tree and leaf, the genuine path verifies and any changed path fails
    with MerkleError; so does any other leaf with the genuine path."""
    tree = MerkleTree(i.to_bytes(4, "big") for i in range(size))
    index = data.draw(st.integers(0, size - 1))
    path = tree.inclusion_proof(index, size)
    leaf = tree.leaf_hash_at(index)
    verify_inclusion(leaf, index, size, path, tree.root())
    tampered = data.draw(_tampered_path(path))
    other_index = data.draw(st.integers(0, size - 1))
    for candidate_leaf, candidate_path in (
        (leaf, tampered),
        (tree.leaf_hash_at(other_index), path),
    ):
        if candidate_path == path and candidate_leaf == leaf:
            continue
        try:
            verify_inclusion(candidate_leaf, index, size, candidate_path, tree.root())
        except MerkleError:
            continue
        raise AssertionError("a tampered inclusion proof verified")


def _tampered_path(path: list[bytes]) -> st.SearchStrategy[list[bytes]]:
    return st.composite(lambda draw: _tamper(draw, path))()


@fuzz_settings(deadline_ms=500)
@given(new_size=st.integers(2, 70), data=st.data())
@counted("shared.merkle.verify_consistency")
def test_no_tampered_consistency_path_verifies(new_size: int, data: st.DataObject) -> None:
    """The genuine consistency proof verifies; any changed path fails with MerkleError."""
    tree = MerkleTree(i.to_bytes(4, "big") for i in range(new_size))
    old_size = data.draw(st.integers(1, new_size - 1))
    path = tree.consistency_proof(old_size, new_size)
    old_root, new_root = tree.root_at(old_size), tree.root()
    verify_consistency(old_size, new_size, old_root, new_root, path)
    tampered = data.draw(_tampered_path(path))
    try:
        verify_consistency(old_size, new_size, old_root, new_root, tampered)
    except MerkleError:
        return
    assert tampered == path, "a tampered consistency proof verified"


class _Untouchable(list[Any]):
    """A list whose elements must not be read (the length cap comes first)."""

    def __iter__(self) -> Any:
        raise AssertionError("a path over the cap was walked")

    def __getitem__(self, index: Any) -> Any:
        raise AssertionError("a path over the cap was indexed")


@fuzz_settings(deadline_ms=500)
@given(extra=st.integers(1, 10**6))
@counted("shared.merkle.InclusionProof.from_json")
def test_paths_over_the_cap_are_refused_before_their_nodes(extra: int) -> None:
    """More than 64 nodes is refused from the length alone, whatever the nodes hold."""
    path = _Untouchable([None] * (MAX_PROOF_LENGTH + min(extra, 1000)))
    for parse, obj in (
        (InclusionProof.from_json, {"index": 0, "size": 1, "path": path}),
        (ConsistencyProof.from_json, {"old_size": 0, "new_size": 1, "path": path}),
    ):
        with pytest.raises(MerkleError, match="too long"):
            parse(obj)
