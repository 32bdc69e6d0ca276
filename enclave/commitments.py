"""The salted Merkle commitment to a session's trades. Side: enclave.

Every trade the pollers read becomes one leaf (shared.merkle.trade_leaf) with its own
32-byte salt, in the order the trades were read, so the tree only ever grows: a
report's ``merkle_root`` is consistent (RFC 6962 2.1.2) with every earlier report's.
With a salt and an inclusion proof the owner can later disclose one trade without
revealing any other, and nobody can confirm a guessed trade from the root alone.

Salts are derived, not stored: each ``TradeCommitments`` draws one 32-byte key from
the CSPRNG, and the salt of leaf ``i`` is HMAC-SHA256(key, i as 8 bytes big-endian)
(RFC 2104). HMAC-SHA256 is a PRF, so without the key the salts are as unguessable as
independent random ones, and disclosing any number of them reveals nothing about the
others. The key is as secret as the salts were: it lives in enclave memory and leaves
it only inside the session's sealed state (enclave/session_state.py), so that a
restored session derives the same salts and roots; it is never logged or sent in
clear. Deriving saves ~90 bytes per trade (a 32-byte bytes object and its list slot),
and lets a sealed session carry one key instead of a salt per trade.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Iterator, Sequence
from typing import Final, Protocol

from shared.merkle import MerkleTree, trade_leaf

__all__ = ["CommittedTrade", "TradeCommitments", "TradeSource", "leaf_fields"]

# RFC 2104 section 3: a key shorter than the hash output (32 bytes) is discouraged and a
# longer one adds no strength.
_SALT_KEY_BYTES: Final = 32


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

    def __init__(self, *, salt_key: bytes | None = None) -> None:
        """A new commitment with a fresh salt key, or a restored one with its sealed key.

        A restored commitment is empty: commit the session's trades again, in read order
        (:meth:`sync_trades`), to rebuild the same tree. ValueError for a key that is not
        32 bytes.
        """
        if salt_key is None:
            salt_key = secrets.token_bytes(_SALT_KEY_BYTES)
        elif not isinstance(salt_key, bytes) or len(salt_key) != _SALT_KEY_BYTES:
            raise ValueError("a salt key is 32 bytes")
        self.tree = MerkleTree()
        # A bytearray so that wipe() can overwrite it when the session ends.
        self._salt_key = bytearray(salt_key)

    def wipe(self) -> None:
        """Overwrite the salt key (revoke / expiry): no salt can be derived afterwards."""
        for index in range(len(self._salt_key)):
            self._salt_key[index] = 0

    @property
    def salt_key(self) -> bytes:
        """The key every salt derives from: secret, for the session's sealed state only."""
        return bytes(self._salt_key)

    @property
    def size(self) -> int:
        """How many trades are committed."""
        return self.tree.size

    def sync(self, source: TradeSource) -> int:
        """Commit the trades beyond those already committed; return how many were added.

        ``source`` grows append-only (the session's ledger, in read order), so each sync
        costs O(new trades).
        """
        return self._append(source.since(self.tree.size))

    def sync_trades(self, trades: Sequence[CommittedTrade]) -> int:
        """As :meth:`sync`, from a plain sequence of the session's trades in read order.

        For a restored session: its sealed trades rebuild the tree it had.
        """
        return self._append(trades[self.tree.size :])

    def _append(self, new: Sequence[CommittedTrade]) -> int:
        tree = self.tree
        for trade in new:
            tree.append(trade_leaf(leaf_fields(trade), self._derive_salt(tree.size)))
        return len(new)

    def root_hex(self) -> str:
        """The current root, lowercase hex (SHA-256 of "" for no trades, RFC 6962 2.1)."""
        return self.tree.root().hex()

    def salt(self, index: int) -> bytes:
        """The salt of leaf ``index`` (for the owner's disclosure of that trade).

        Indexes a committed leaf like a list (negative counts from the end); IndexError
        for any other.
        """
        size = self.tree.size
        position = index + size if index < 0 else index
        if not 0 <= position < size:
            raise IndexError("no committed trade at that index")
        return self._derive_salt(position)

    def _derive_salt(self, index: int) -> bytes:
        # HMAC-SHA256(key, i as 8 bytes big-endian), 32 bytes = TRADE_SALT_BYTES; see the
        # module docstring.
        return hmac.digest(self._salt_key, index.to_bytes(8, "big"), "sha256")
