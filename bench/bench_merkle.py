"""Merkle trees: appends/s and inclusion proofs/s vs bare SHA-256 in the same run.

Baselines: one bare SHA-256 per 64-byte leaf (what building a tree cannot beat by much,
since an append costs a leaf hash plus one node hash on average), and SHA-256 called
log2(n) times per proof (the hashing a verifier cannot avoid).
"""

from __future__ import annotations

import hashlib
import math
import random

from bench.common import Result, measure
from shared.merkle import MerkleTree, verify_inclusion

TREE_LEAVES = 100_000
LEAF_BYTES = 64
PROOFS_PER_CALL = 1_000


def run() -> list[Result]:
    """Build a 100,000-leaf tree; generate+verify inclusion proofs against its root."""
    rng = random.Random(6962)
    leaves = [rng.randbytes(LEAF_BYTES) for _ in range(TREE_LEAVES)]

    def build() -> None:
        tree = MerkleTree()
        for leaf in leaves:
            tree.append(leaf)

    def bare_leaf_hashes() -> None:
        for leaf in leaves:
            hashlib.sha256(leaf).digest()

    tree = MerkleTree(leaves)
    size, root = tree.size, tree.root()
    indexes = [rng.randrange(size) for _ in range(PROOFS_PER_CALL)]
    depth = math.ceil(math.log2(size))  # 17 nodes per audit path at 100,000 leaves
    node = bytes(LEAF_BYTES)

    def prove_and_verify() -> None:
        for index in indexes:
            proof = tree.inclusion_proof(index, size)
            verify_inclusion(tree.leaf_hash_at(index), index, size, proof, root)

    def bare_path_hashes() -> None:
        for _ in range(PROOFS_PER_CALL * depth):
            hashlib.sha256(node).digest()

    return [
        Result(
            area="merkle",
            name=f"append ({TREE_LEAVES:,}-leaf tree, {LEAF_BYTES} B leaves)",
            ops_per_s=measure(build, min_time=1.0, batch=TREE_LEAVES),
            baseline=f"bare SHA-256 of {LEAF_BYTES} B",
            baseline_ops_per_s=measure(bare_leaf_hashes, min_time=1.0, batch=TREE_LEAVES),
            extra={"leaves": TREE_LEAVES},
        ),
        Result(
            area="merkle",
            name=f"inclusion proof generate+verify (n={size:,})",
            ops_per_s=measure(prove_and_verify, min_time=1.0, batch=PROOFS_PER_CALL),
            baseline=f"bare SHA-256 x log2(n)={depth}",
            baseline_ops_per_s=measure(bare_path_hashes, min_time=1.0, batch=PROOFS_PER_CALL),
            extra={"path_nodes": depth},
        ),
    ]
