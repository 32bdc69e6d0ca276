"""The salted Merkle commitment to a session's trades: derived salts, leaves, proofs."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from enclave import commitments as commitments_module
from enclave.commitments import TradeCommitments, leaf_fields
from enclave.exchanges.history import Trade, TradeLedger
from shared.merkle import (
    EMPTY_ROOT,
    MerkleTree,
    leaf_hash,
    trade_leaf,
    verify_consistency,
    verify_inclusion,
)


def trade(ident: int, symbol: str = "BTC/USDT", side: str = "buy") -> Trade:
    """A fill with exchange strings; ``ident`` makes it distinct."""
    return Trade(
        symbol=symbol,
        id=str(ident),
        order_id=f"o{ident // 2}",
        side=side,
        price="42000.01",
        amount="0.001",
        cost="42.00001",
        fee_cost="0.042",
        fee_currency="USDT",
        timestamp=1_700_000_000_000 + ident,
        raw=(("id", str(ident)), ("isMaker", "true")),
    )


def ledger_of(count: int, start: int = 0) -> TradeLedger:
    """A ledger holding ``count`` distinct trades."""
    ledger = TradeLedger()
    for ident in range(start, start + count):
        ledger.add(trade(ident))
    return ledger


def test_public_api() -> None:
    """``__all__`` is exactly the public API."""
    assert set(commitments_module.__all__) == {
        "CommittedTrade",
        "TradeCommitments",
        "TradeSource",
        "leaf_fields",
    }


def test_each_leaf_is_the_salted_trade_and_proves_inclusion() -> None:
    """Leaf i is trade_leaf(fields, salt(i)): a disclosed trade verifies against the root."""
    ledger = ledger_of(37)
    commitments = TradeCommitments()
    assert commitments.sync(ledger) == 37
    root = bytes.fromhex(commitments.root_hex())
    expected = MerkleTree(
        trade_leaf(leaf_fields(t), commitments.salt(i)) for i, t in enumerate(ledger)
    )
    assert expected.root() == root
    for index in (0, 17, 36):
        leaf = trade_leaf(leaf_fields(list(ledger)[index]), commitments.salt(index))
        proof = commitments.tree.inclusion_proof(index, 37)
        verify_inclusion(leaf_hash(leaf), index, 37, proof, root)


def test_salts_are_distinct_per_index_and_per_session() -> None:
    """No two leaves share a salt, nor do two sessions committing the same trades."""
    ledger = ledger_of(500)
    first, second = TradeCommitments(), TradeCommitments()
    first.sync(ledger)
    second.sync(ledger)
    salts = [first.salt(i) for i in range(500)]
    others = [second.salt(i) for i in range(500)]
    assert {len(salt) for salt in salts} == {32}
    assert len(set(salts)) == 500
    assert not set(salts) & set(others)
    # Same trades, different salts: the roots reveal nothing shared.
    assert first.root_hex() != second.root_hex()


def test_salts_are_hmac_sha256_of_the_index_under_a_random_key() -> None:
    """salt(i) = HMAC-SHA256(session key, i as 8 bytes big-endian); keys differ per session."""
    first, second = TradeCommitments(), TradeCommitments()
    first.sync(ledger_of(300))
    key = first._salt_key
    assert len(key) == 32 and key != second._salt_key
    for index in (0, 1, 255, 256, 299):
        expected = hmac.new(key, index.to_bytes(8, "big"), hashlib.sha256).digest()
        assert first.salt(index) == expected


def test_a_salt_stays_the_same_as_the_tree_grows() -> None:
    """Salts are a function of the index: later syncs never change a disclosed salt."""
    ledger = ledger_of(10)
    commitments = TradeCommitments()
    commitments.sync(ledger)
    before = [commitments.salt(i) for i in range(10)]
    old_root = bytes.fromhex(commitments.root_hex())
    for ident in range(10, 25):
        ledger.add(trade(ident, symbol="ETH/USDT", side="sell"))
    assert commitments.sync(ledger) == 15
    assert commitments.sync(ledger) == 0
    assert [commitments.salt(i) for i in range(10)] == before
    new_root = bytes.fromhex(commitments.root_hex())
    verify_consistency(10, 25, old_root, new_root, commitments.tree.consistency_proof(10, 25))


def test_salt_indexes_committed_leaves_like_a_list() -> None:
    """Negative indexes count from the end; anything outside the tree is an IndexError."""
    commitments = TradeCommitments()
    assert commitments.root_hex() == EMPTY_ROOT.hex()
    with pytest.raises(IndexError):
        commitments.salt(0)
    commitments.sync(ledger_of(3))
    assert commitments.salt(-1) == commitments.salt(2)
    assert commitments.salt(-3) == commitments.salt(0)
    for outside in (3, 4, -4, 2**70):
        with pytest.raises(IndexError):
            commitments.salt(outside)


def test_no_salt_is_stored_per_trade() -> None:
    """The commitment keeps its tree and one key, whatever the number of trades."""
    commitments = TradeCommitments()
    commitments.sync(ledger_of(200))
    assert set(vars(commitments)) == {"tree", "_salt_key"}
    assert commitments.size == 200


def test_a_restored_commitment_rebuilds_the_same_tree_from_its_key() -> None:
    """The sealed key and the trades in read order give back the same salts and roots."""
    ledger = ledger_of(120)
    original = TradeCommitments()
    original.sync(ledger)
    restored = TradeCommitments(salt_key=original.salt_key)
    trades = list(ledger)
    assert restored.sync_trades(trades[:50]) == 50
    assert restored.sync_trades(trades) == 70  # only what is beyond the committed ones
    assert restored.sync_trades(trades) == 0
    assert restored.root_hex() == original.root_hex()
    assert [restored.salt(i) for i in range(120)] == [original.salt(i) for i in range(120)]
    assert TradeCommitments().salt_key != original.salt_key


@pytest.mark.parametrize("key", [b"", bytes(31), bytes(33), "00" * 32, bytearray(32)])
def test_a_salt_key_of_the_wrong_shape_is_refused(key: object) -> None:
    """Only 32 bytes restore a commitment (a corrupt sealed state fails closed)."""
    with pytest.raises(ValueError, match="32 bytes"):
        TradeCommitments(salt_key=key)  # type: ignore[arg-type]


def test_wipe_zeroes_the_salt_key() -> None:
    """After wipe (revoke/expiry) the key is zeros: no salt of the session can be derived."""
    commitments = TradeCommitments()
    assert commitments.salt_key != bytes(32)
    commitments.wipe()
    assert commitments.salt_key == bytes(32)
