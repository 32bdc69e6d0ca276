"""The salted Merkle commitment to a session's trades. Side: enclave.

Every trade the pollers read becomes one leaf (shared.merkle.trade_leaf) with a fresh
32-byte salt, in the order the trades were read, so the tree only ever grows: a
report's ``merkle_root`` is consistent (RFC 6962 2.1.2) with every earlier report's.
The salts stay in enclave memory; with a salt and an inclusion proof the owner can
later disclose one trade without revealing any other, and nobody can confirm a
guessed trade from the root alone.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

from shared.merkle import MerkleTree, new_trade_salt, trade_leaf

__all__ = ["CommittedTrade", "TradeCommitments", "TradeSource", "leaf_fields"]


class CommittedTrade(Protocol):
    """The trade fields committed to (the exchange's own strings; see enclave.exchanges)."""

    @property
    def symbol(self) -> str: ...
    @property
    def id(self) -> str: ...
    @property
    def order_id(self) -> str | None: ...
    @property
    def side(self) -> str: ...
    @property
    def price(self) -> str: ...
    @property
    def amount(self) -> str: ...
    @property
    def cost(self) -> str | None: ...
    @property
    def fee_cost(self) -> str | None: ...
    @property
    def fee_currency(self) -> str | None: ...
    @property
    def timestamp(self) -> int: ...


class TradeSource(Protocol):
    """An append-only sequence of trades in the order they were read (TradeLedger)."""

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[CommittedTrade]: ...

    def since(self, index: int) -> Sequence[CommittedTrade]:
        """The trades after the first ``index`` ones."""
        ...


def leaf_fields(trade: CommittedTrade) -> dict[str, str]:
    """The committed fields: the normalised trade, numbers as the exchange wrote them.

    Absent values are left out rather than written as empty strings, so a leaf says
    exactly what the exchange reported.
    """
    values = {
        "symbol": trade.symbol,
        "id": trade.id,
        "order_id": trade.order_id,
        "side": trade.side,
        "price": trade.price,
        "amount": trade.amount,
        "cost": trade.cost,
        "fee_cost": trade.fee_cost,
        "fee_currency": trade.fee_currency,
        "timestamp": str(trade.timestamp),
    }
    return {name: value for name, value in values.items() if value}


class TradeCommitments:
    """Append-only salted Merkle tree over one session's trades."""

    def __init__(self) -> None:
        self.tree = MerkleTree()
        self._salts: list[bytes] = []

    @property
    def size(self) -> int:
        """How many trades are committed."""
        return self.tree.size

    def sync(self, source: TradeSource) -> int:
        """Commit the trades beyond those already committed; return how many were added.

        ``source`` grows append-only (the session's ledger, in read order), so each sync
        costs O(new trades).
        """
        new = source.since(self.tree.size)
        for trade in new:
            salt = new_trade_salt()
            self.tree.append(trade_leaf(leaf_fields(trade), salt))
            self._salts.append(salt)
        return len(new)

    def root_hex(self) -> str:
        """The current root, lowercase hex (SHA-256 of "" for no trades, RFC 6962 2.1)."""
        return self.tree.root().hex()

    def salt(self, index: int) -> bytes:
        """The salt of leaf ``index`` (for the owner's disclosure of that trade)."""
        return self._salts[index]
