"""A session as sealed for a restart, and back. Side: enclave.

What a restarted enclave (or a replica with the same measurements) needs to carry on a
session exactly where it was: its credentials, metadata, the trades read so far in read
order (so the Merkle tree and the aggregator continue, nothing counted twice), the
commitment salt key, the aggregator's compact state, the report chain (seq and previous
hash) and the transparency log's entries. Encoded as CBOR, compressed with zlib, sealed
by enclave/sealing.py under the KMS data key with the shared/sealed_state.py framing.

The completeness record and the exchange cursors are not kept: after a restore the
pollers scan the history again (deduplicated by trade id), which costs calls, not
correctness.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import cbor2

from enclave.aggregator import Aggregator, AggregatorConfig, StateError
from enclave.commitments import CommittedTrade, TradeCommitments
from enclave.exchanges.history import Trade
from enclave.sealing import SealingError, Vault
from enclave.sessions import Session, SessionState
from shared.cbor import CborError, strict_loads
from shared.envelope import Credentials
from shared.sealed_state import MAX_SEALED_SIZE, STATE_MAGIC, SealedHeader

__all__ = ["RestoredSession", "StateTooLarge", "open_session", "seal_session"]

STATE_VERSION: Final = 1
_MAX_INFLATED: Final = 256 * 1024 * 1024  # a zip bomb from a lying parent stops here
_TRADE_FIELDS: Final = (
    "symbol",
    "id",
    "order_id",
    "side",
    "price",
    "amount",
    "cost",
    "fee_cost",
    "fee_currency",
    "timestamp",
)


class StateTooLarge(Exception):
    """The sealed state would not fit one RPC frame (a very long trade history)."""


@dataclass(frozen=True, slots=True)
class RestoredSession:
    """A session rebuilt from sealed state, and the trades its poller starts from."""

    session: Session
    trades: list[Trade]


def _encode_trade(trade: CommittedTrade) -> list[Any]:
    raw = getattr(trade, "raw", ())  # the ledger's Trade keeps the exchange's record
    return [getattr(trade, name) for name in _TRADE_FIELDS] + [[list(pair) for pair in raw]]


def _decode_trade(item: Any) -> Trade:
    if not isinstance(item, list) or len(item) != len(_TRADE_FIELDS) + 1:
        raise ValueError("malformed trade")
    values = dict(zip(_TRADE_FIELDS, item[:-1], strict=True))
    raw = tuple((str(k), str(v)) for k, v in item[-1])
    return Trade(**values, raw=raw)


def seal_session(vault: Vault, session: Session, trades: Sequence[CommittedTrade]) -> bytes:
    """Seal the session's whole state as its next version (``session.state_version``)."""
    credentials = session.credentials
    document = {
        "v": STATE_VERSION,
        "exchange": session.exchange,
        "label": session.label,
        "created_at": session.created_at,
        "expires_at": session.expires_at,
        "envelope_digest": session.envelope_digest,
        "credentials": [
            credentials.exchange,
            credentials.api_key,
            credentials.api_secret,
            credentials.passphrase,
            credentials.owner_pub,
        ],
        "reporting_currency": session.aggregator.config.reporting_currency,
        "report_seq": session.report_seq,
        "prev_report_hash": session.prev_report_hash,
        "salt_key": session.commitments.salt_key,
        "trades": [_encode_trade(trade) for trade in trades],
        "aggregator": session.aggregator.to_state(),
        "log": list(session.opslog.since(0, session.opslog.size)),
        "last_poll_key": None
        if session.opslog.last_poll_key is None
        else list(session.opslog.last_poll_key),
    }
    body = zlib.compress(cbor2.dumps(document), 6)
    if len(body) > MAX_SEALED_SIZE - 128:
        raise StateTooLarge
    session.state_version += 1
    header = SealedHeader(
        magic=STATE_MAGIC,
        session_hash=session.session_hash,
        version=session.state_version,
        expires_at=int(session.expires_at),
    )
    session.dirty = False
    return vault.seal(header, body)


def open_session(vault: Vault, blob: bytes) -> RestoredSession:
    """Rebuild a session from :func:`seal_session` output; SealingError if anything is off."""
    header, body = vault.open(blob, magic=STATE_MAGIC)
    try:
        inflater = zlib.decompressobj()
        encoded = inflater.decompress(body, _MAX_INFLATED)
        if inflater.unconsumed_tail or not inflater.eof:
            raise SealingError
        document = strict_loads(encoded, max_depth=8)
        return _rebuild(header, document)
    except (zlib.error, CborError, StateError, KeyError, TypeError, ValueError):
        raise SealingError from None


def _rebuild(header: SealedHeader, document: Any) -> RestoredSession:
    if not isinstance(document, dict) or document.get("v") != STATE_VERSION:
        raise ValueError("unsupported session state")
    exchange, api_key, api_secret, passphrase, owner_pub = document["credentials"]
    credentials = Credentials(
        exchange=exchange,
        api_key=api_key,
        api_secret=api_secret,
        passphrase=passphrase,
        owner_pub=owner_pub,
    )
    trades = [_decode_trade(item) for item in document["trades"]]
    config = AggregatorConfig(reporting_currency=str(document["reporting_currency"]))
    session = Session(
        session_hash=header.session_hash,
        exchange=str(document["exchange"]),
        label=str(document["label"]),
        credentials=credentials,
        created_at=float(document["created_at"]),
        expires_at=float(document["expires_at"]),
        pending_deadline=float(document["created_at"]),
        envelope_digest=bytes(document["envelope_digest"]),
        state=SessionState.ACTIVE,
        report_seq=int(document["report_seq"]),
        prev_report_hash=document["prev_report_hash"],
        commitments=TradeCommitments(salt_key=bytes(document["salt_key"])),
        aggregator=Aggregator.from_state(document["aggregator"], config, history=trades),
    )
    session.state_version = header.version
    for leaf in document["log"]:
        session.opslog.restore_entry(bytes(leaf))
    poll_key = document["last_poll_key"]
    session.opslog.last_poll_key = None if poll_key is None else tuple(poll_key)
    # The tree over the trades read so far: same order, same derived salts, same roots.
    session.commitments.sync_trades(trades)
    return RestoredSession(session=session, trades=trades)
