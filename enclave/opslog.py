"""A session's transparency log, kept and signed by the enclave. Side: enclave.

The enclave is the only writer: it appends an entry (shared.translog.encode_entry)
for each thing it does with a session, and signs tree heads over the log with the
attested Ed25519 key. The parent copies entries and heads into PostgreSQL and serves
them, but cannot add, drop or reorder an entry without breaking a signed root.

Poll entries are coalesced: the pollers run on their own schedule, and an entry is
written when the service observes that polling changed something visible (new trades,
state, completeness, error) since the previous poll entry, not for every exchange call.
Observations happen on every request touching the session and on the periodic sweep,
so the log's time resolution is the sweep interval.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from shared.merkle import MerkleTree, tree_head_payload
from shared.translog import encode_entry, log_id_for, parse_entry

__all__ = ["OpsLog"]


class OpsLog:
    """Append-only entries of one session and the RFC 6962 tree over them."""

    __slots__ = ("_leaves", "_tree", "last_poll_key", "log_id")

    def __init__(self, session_hash: bytes) -> None:
        self.log_id = log_id_for(session_hash)
        self._tree = MerkleTree()
        self._leaves: list[bytes] = []
        # What the last poll entry recorded (service-defined), to coalesce polls.
        self.last_poll_key: tuple[Any, ...] | None = None

    @property
    def size(self) -> int:
        """Entries appended so far."""
        return len(self._leaves)

    def append(self, op: str, *, at: int, data: Mapping[str, Any]) -> int:
        """Append one entry; return its index."""
        index = len(self._leaves)
        leaf = encode_entry(index, op, at=at, data=data)
        self._tree.append(leaf)
        self._leaves.append(leaf)
        return index

    def restore_entry(self, leaf: bytes) -> None:
        """Re-append an entry from sealed state (checked to sit at its own index)."""
        _entry, canonical = parse_entry(json.loads(leaf), index=len(self._leaves))
        if canonical != leaf:
            raise ValueError("log entry is not canonical")
        self._tree.append(leaf)
        self._leaves.append(leaf)

    def since(self, start: int, limit: int) -> tuple[bytes, ...]:
        """Up to ``limit`` entries (canonical bytes) from index ``start``."""
        return tuple(self._leaves[start : start + limit])

    def tree_head(self, *, now: int) -> dict[str, Any]:
        """The payload of a tree head over the whole log, to be signed."""
        return tree_head_payload(self.log_id, self.size, self._tree.root().hex(), now)
