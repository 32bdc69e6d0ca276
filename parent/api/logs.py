"""The transparency log over HTTP: ``GET /api/logs/{session_id}``. Side: parent.

The enclave writes and signs each session's log (enclave/opslog.py); the parent copies
what it has not stored yet into PostgreSQL (entries in ``ops_logs``, signed heads in
``merkle_logs``), then serves entries with RFC 6962 inclusion proofs against the
signed head, and a consistency proof from a size the client saw before. Clients check
all of it offline with ``shared.translog.verify_log``.

Before storing, the parent checks that the stored entries plus the new ones hash to the
signed root at the signed size: it cannot verify the enclave's signature (it does not
attest), but it refuses to persist a log that would not verify for anyone.

When the session is gone (revoked, expired) or the enclave is unreachable, the stored
log is served as it stands with ``"live": false``: a log outlives its session.

Replies that change a session carry its new sealed state (KMS sealing on);
``parse_sealed_state`` and ``keep_sealed_state`` here are what every handler uses to
store it before answering, refusing a blob that names another session.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Final

import structlog
from aiohttp import web

from parent.api.errors import ApiError, json_response
from parent.api.forwarding import route_session
from parent.api.services import SERVICES, Services
from parent.api.validation import require_session_id
from parent.db.errors import Conflict, InvalidData, SessionNotFound
from parent.db.store import LogBatch, SealedBlob
from parent.enclave_client import EnclaveRefused, EnclaveUnavailable
from shared import protocol as p
from shared.ids import session_hash
from shared.merkle import ConsistencyProof, InclusionProof, MerkleError, MerkleTree, TreeHead
from shared.sealed_state import SealedStateError
from shared.translog import TransparencyLogError, parse_entry

__all__ = [
    "MAX_PAGE",
    "LogMismatch",
    "check_log_batch",
    "keep_sealed_state",
    "parse_sealed_state",
    "session_logs",
]

log = structlog.get_logger("parent.logs")

MAX_PAGE: Final = 1000
_MAX_FETCHES: Final = 64  # pages pulled from the enclave per request (2,000 entries each)


_STATE_NOT_KEPT: Final = "the session's sealed state could not be stored; retry later"


class LogMismatch(Exception):
    """The enclave's entries and head do not form a valid log with what is stored."""


def parse_sealed_state(
    services: Services, digest: bytes, blob: bytes | None, *, source: str
) -> SealedBlob | None:
    """The sealed state in a reply about the session ``digest``, header read; None if none.

    A malformed blob, or one naming another session, is refused: logged, counted and
    answered 503, because the parent must never file one session's state under another.
    """
    if blob is None:
        return None
    try:
        return SealedBlob.parse(blob, session_hash=digest)
    except SealedStateError as exc:
        log.error("sealed_state_refused", source=source, reason=str(exc))
        services.metrics.sealed_states_refused.labels(source=source).inc()
        raise ApiError(503, "unavailable", _STATE_NOT_KEPT) from None


async def keep_sealed_state(
    services: Services, state: SealedBlob | None, *, source: str, required: bool = False
) -> None:
    """Store a session's new sealed state before the reply that carried it is answered.

    Database down -> ``StoreUnavailable`` (503); a refused value -> 503 as well (it is
    the enclave's blob, not the client's input). A session deleted meanwhile (revoked,
    purged) needs no state, unless ``required`` (submit: the row was just written).
    """
    if state is None:
        return
    try:
        written = await services.store.store_sealed_state(state)
    except SessionNotFound:
        if required:
            raise
        log.info("sealed_state_without_session", source=source)
        return
    except (InvalidData, Conflict) as exc:
        # The message names the table and constraint only.
        log.error("sealed_state_not_stored", source=source, reason=str(exc))
        raise ApiError(503, "unavailable", _STATE_NOT_KEPT) from None
    if written:
        services.metrics.sealed_states_stored.labels(source=source).inc()


def check_log_batch(
    stored: Sequence[str],
    *,
    entries: Sequence[bytes],
    tree_head: dict[str, Any],
    signature: str,
) -> LogBatch:
    """Check that stored + new entries hash to the head's root at its size; the batch.

    Raises LogMismatch when an entry is malformed, not canonical or out of place, or
    when the whole does not match the head.
    """
    start = len(stored)
    texts: list[str] = []
    ops: list[str] = []
    tree = MerkleTree(text.encode() for text in stored)
    for offset, raw in enumerate(entries):
        try:
            text = raw.decode("utf-8")
            entry, leaf = parse_entry(json.loads(text), index=start + offset)
        except (UnicodeDecodeError, ValueError, TransparencyLogError):
            raise LogMismatch("malformed log entry") from None
        if leaf != raw:
            raise LogMismatch("log entry is not canonical")
        texts.append(text)
        ops.append(str(entry["op"]))
        tree.append(raw)
    try:
        head = TreeHead.from_payload(tree_head)
    except MerkleError:
        raise LogMismatch("malformed tree head") from None
    if head.size != tree.size or head.root != tree.root():
        raise LogMismatch("tree head does not match the entries")
    return LogBatch(
        start=start,
        entries=tuple(texts),
        ops=tuple(ops),
        head={"payload": tree_head, "signature": signature},
        tree_size=head.size,
        root_hash=head.root,
    )


def _head_size(tree_head: dict[str, Any]) -> int:
    size = tree_head.get("tree_size")
    if type(size) is not int:
        raise LogMismatch("malformed tree head")
    return size


async def _sync_from_enclave(
    services: Services, session_id: str, digest: bytes, stored: list[str]
) -> dict[str, Any] | None:
    """Pull the entries the database lacks, store them with the head; the fresh head.

    None when the enclave no longer holds the session or cannot be reached (the
    stored log is then served as it is). Pages are gathered until they reach the
    head's size; everything is stored in one statement.
    """
    new: list[bytes] = []
    state: SealedBlob | None = None
    try:
        for _ in range(_MAX_FETCHES):
            try:
                reply = await services.enclave_call(
                    "logs",
                    p.Logs(request_id=0, session_id=session_id, start=len(stored) + len(new)),
                    p.LogsReply,
                )
            except EnclaveRefused as exc:
                if exc.code is p.ErrorCode.NOT_FOUND:
                    return None
                raise
            except EnclaveUnavailable:
                return None
            new.extend(reply.entries)
            page_state = parse_sealed_state(services, digest, reply.sealed_state, source="logs")
            if page_state is not None and (state is None or page_state.version > state.version):
                state = page_state
            if len(stored) + len(new) < _head_size(reply.tree_head) and reply.entries:
                continue  # a page: fetch the rest
            batch = check_log_batch(
                stored, entries=new, tree_head=reply.tree_head, signature=reply.signature
            )
            if batch.entries or await services.store.latest_tree_head(digest) is None:
                await services.store.append_log(digest, batch)
            # Before answering: the entries just stored are part of that state.
            await keep_sealed_state(services, state, source="logs")
            stored.extend(batch.entries)
            return batch.head
    except LogMismatch as exc:
        log.error("enclave_log_mismatch", reason=str(exc))
        raise ApiError(503, "unavailable", "the enclave's log could not be stored") from None
    raise ApiError(503, "unavailable", "the enclave's log is too long to fetch now")


def _int_query(request: web.Request, name: str, *, default: int | None, upper: int) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > 15 or int(raw) > upper:
        raise ApiError(
            400, "bad_request", f"query parameter '{name}' must be an integer 0..{upper}"
        )
    return int(raw)


async def session_logs(request: web.Request) -> web.Response:
    """GET /api/logs/{session_id}: entries with inclusion proofs and the signed tree head."""
    services = request.app[SERVICES]
    session_id = require_session_id(
        request.match_info["session_id"], where="path parameter 'session_id'"
    )
    start = _int_query(request, "start", default=0, upper=2**53 - 1)
    limit = _int_query(request, "limit", default=MAX_PAGE, upper=MAX_PAGE)
    since_size = _int_query(request, "since_size", default=None, upper=2**53 - 1)
    assert start is not None  # both have integer defaults
    assert limit is not None
    if limit == 0:
        raise ApiError(400, "bad_request", f"query parameter 'limit' must be 1..{MAX_PAGE}")
    digest = session_hash(session_id)
    if (elsewhere := await route_session(request, digest)) is not None:
        return elsewhere
    with services.audit("logs.read", session_id):
        stored = await services.store.log_entries(digest)
        head: dict[str, Any] | None = None
        live = await services.store.get_session(digest, now=services.clock()) is not None
        if live:
            head = await _sync_from_enclave(services, session_id, digest, stored)
            live = head is not None
        if head is None:
            latest = await services.store.latest_tree_head(digest)
            if latest is None:
                raise ApiError(404, "not_found", "unknown, expired or revoked session")
            head = latest[1]
        access = await services.session_log.list_session_ops(digest) if live else []
    size = int(head["payload"]["tree_size"])
    tree = MerkleTree(text.encode() for text in stored[:size])
    if since_size is not None and since_size > size:
        raise ApiError(400, "bad_request", "query parameter 'since_size' exceeds the log size")
    entries = [
        {
            "index": index,
            "entry": json.loads(stored[index]),
            "inclusion_proof": InclusionProof.from_hashes(
                index, size, tree.inclusion_proof(index, size)
            ).to_json(),
        }
        for index in range(start, min(size, start + limit))
    ]
    consistency = None
    if since_size is not None:
        consistency = ConsistencyProof.from_hashes(
            since_size, size, tree.consistency_proof(since_size, size)
        ).to_json()
    return json_response(
        {
            "log_id": head["payload"]["log_id"],
            "tree_head": head,
            "entries": entries,
            "consistency_proof": consistency,
            "live": live,
            "access_log": [
                {"op": e.op, "at": e.at.isoformat(), "request_id": e.request_id} for e in access
            ],
        }
    )
