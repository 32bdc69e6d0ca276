"""Session endpoints: submit, aggregates, revoke, metrics, summary, log. Side: parent.

Submitting credentials never leaves anything half-stored::

    client --submit_key--> parent --Submit--> enclave      pending session (memory)
                           parent --create_session--> DB   one statement: session,
                                                           ciphertext, ops entry
                           parent --Confirm(commit)--> enclave   session goes live
                           parent --store_sealed_state--> DB     its first sealed state
                                                                 (KMS sealing on)
    DB refuses (replay 409, constraint 400, down 503) -> Confirm(commit=False), nothing stored
    Confirm fails                                     -> DB rows deleted, 503
    sealed state refused or not stored                -> Revoke in the enclave (best
                                                         effort), DB rows deleted, 503

Replies that change a session carry its new sealed state; it is stored before the
answer (with the report itself for aggregates, with the delete for revoke's new
revocation list), so an enclave restart never loses what a client was told.

The parent stores only the envelope exactly as submitted (ciphertext it cannot
open) and SHA-256 of the session id; the clear id goes back to the client only.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final

import structlog
from aiohttp import web

from parent.api.errors import ApiError, json_response
from parent.api.forwarding import route_session
from parent.api.logs import LogMismatch, check_log_batch, keep_sealed_state, parse_sealed_state
from parent.api.services import REQUEST_ID, SERVICES, Services
from parent.api.validation import (
    check_session_metadata,
    only_fields,
    owner_proof_from_body,
    parse_envelope,
    read_json_object,
    require_session_id,
)
from parent.db.errors import StoreError
from parent.db.store import LogBatch, SealedBlob, StoredCredentials
from parent.enclave_client import EnclaveClientError, EnclaveRefused
from shared import protocol as p
from shared.envelope import envelope_digest
from shared.ids import is_session_id, session_hash
from shared.sealed_state import REVOCATIONS_MAGIC, SealedStateError

__all__ = [
    "REVOKED_MESSAGE",
    "disclose_trade",
    "request_aggregates",
    "revoke",
    "rfc3339",
    "session_metrics",
    "session_summary",
    "submit_key",
]

log = structlog.get_logger("parent.sessions")

_SESSION_FIELDS: Final = frozenset({"session_id"})
_REVOKE_FIELDS: Final = frozenset({"session_id", "timestamp", "signature"})
_DISCLOSE_FIELDS: Final = frozenset(
    {"session_id", "symbol", "trade_id", "tree_size", "timestamp", "signature"}
)
_MAX_SYMBOL: Final = 64
_MAX_TRADE_ID: Final = 128
REVOKED_MESSAGE: Final = "Session revoked and data purged"


def rfc3339(when: datetime) -> str:
    """``2026-01-02T03:04:05Z``: RFC 3339, UTC, whole seconds."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def _discard_pending(services: Services, session_id: str) -> None:
    """Best effort: tell the enclave to drop a pending session we did not store.

    If this fails too, the enclave drops the pending session by itself when its
    pending deadline passes, so nothing secret outlives the failed request for long.
    """
    try:
        await services.enclave_call(
            "confirm", p.Confirm(request_id=0, session_id=session_id, commit=False), p.ConfirmReply
        )
    except EnclaveClientError as exc:
        log.warning("discard_pending_failed", error_type=type(exc).__name__)


def _revocation_list(services: Services, blob: bytes | None) -> SealedBlob | None:
    """The enclave's new sealed revocation list from a revoke reply, header read.

    A malformed list is logged and not kept; the revoke itself stands (the enclave has
    already forgotten the session, and its stored state goes with the session rows).
    """
    if blob is None:
        return None
    try:
        return SealedBlob.parse(blob, magic=REVOCATIONS_MAGIC)
    except SealedStateError as exc:
        log.error("revocation_list_refused", reason=str(exc))
        services.metrics.sealed_states_refused.labels(source="revoke").inc()
        return None


async def _withdraw_confirmed(
    services: Services, session_id: str, digest: bytes, request_id: str
) -> None:
    """Best effort: end a just-confirmed session whose sealed state could not be kept.

    The client gets a 503 and never learns the id, so the session must not go on
    polling in the enclave nor stay in the database. The enclave lets the parent
    withdraw a session confirmed moments ago (``Confirm(commit=False)``, before its first
    report; no owner proof, since nobody but this request knows the id), so no
    checkpoint can store it later and no restore can revive it. Rows the database could
    not delete (it is down) hold ciphertext only and go with the TTL purge.
    """
    revocations: SealedBlob | None = None
    try:
        await services.enclave_call(
            "confirm", p.Confirm(request_id=0, session_id=session_id, commit=False), p.ConfirmReply
        )
    except EnclaveClientError as exc:
        log.warning("withdraw_session_failed", error_type=type(exc).__name__)
    try:
        await services.store.revoke_session(digest, request_id=request_id, revocations=revocations)
    except StoreError as cleanup:
        # Rows stay until the TTL purge; they hold ciphertext only.
        log.error("submit_rollback_failed", error_type=type(cleanup).__name__)


async def submit_key(request: web.Request) -> web.Response:
    """POST /enclave/submit_key: open a session from a credential envelope (201)."""
    services = request.app[SERVICES]
    request_id = request[REQUEST_ID]
    body = await read_json_object(request, max_bytes=services.config.max_body_bytes)
    envelope = parse_envelope(body, where="body")  # refuses unknown fields too
    check_session_metadata(
        envelope.metadata,
        min_ttl=services.config.min_ttl_seconds,
        max_ttl=services.config.max_ttl_seconds,
    )
    with services.audit("credentials.submit") as audit:
        reply = await services.enclave_call(
            "submit",
            p.Submit(
                request_id=0,
                **{name: getattr(envelope, name) for name in p.ENVELOPE_FIELDS},
            ),
            p.SubmitReply,
        )
        if not is_session_id(reply.session_id):
            # Not an id we could ever look up again: refuse to store anything.
            log.error("enclave_bad_session_id")
            raise ApiError(500, "internal", "internal error")
        audit.session_id = reply.session_id
        digest = session_hash(reply.session_id)
        wire = envelope.to_wire()
        try:
            expires_at = datetime.fromtimestamp(reply.expires_at, UTC)
            await services.store.create_session(
                session_hash=digest,
                exchange=reply.exchange,
                label=reply.label,
                expires_at=expires_at,
                envelope_digest=envelope_digest(envelope),
                # The owner key travels inside the ciphertext; only the enclave knows it.
                owner_pub=None,
                credentials=StoredCredentials(
                    alg=wire["alg"],
                    ephemeral_pub=wire["ephemeral_pub"],
                    nonce=wire["nonce"],
                    ciphertext=wire["ciphertext"],
                    tag=wire["tag"],
                    metadata=wire["metadata"],
                ),
                request_id=request_id,
            )
        except BaseException:
            # Replay (409), constraint (400), database down (503), a bad expiry from the
            # enclave (500) or cancellation: nothing was stored, so drop the pending session.
            await _discard_pending(services, reply.session_id)
            raise
        try:
            confirmed = await services.enclave_call(
                "confirm",
                p.Confirm(request_id=0, session_id=reply.session_id, commit=True),
                p.ConfirmReply,
            )
        except EnclaveClientError as exc:
            # The enclave will never serve this session: take back what we stored.
            try:
                await services.store.revoke_session(digest, request_id=request_id)
            except StoreError as cleanup:
                # Rows stay until the TTL purge; they hold ciphertext only.
                log.error("submit_rollback_failed", error_type=type(cleanup).__name__)
            raise ApiError(
                503, "unavailable", "the enclave did not confirm the session; nothing was kept"
            ) from exc
        try:
            # Stored before the 201: a session the client was given survives a restart.
            state = parse_sealed_state(services, digest, confirmed.sealed_state, source="confirm")
            await keep_sealed_state(services, state, source="confirm", required=True)
        except (ApiError, StoreError) as exc:
            await _withdraw_confirmed(services, reply.session_id, digest, request_id)
            raise ApiError(
                503,
                "unavailable",
                "the session's sealed state could not be stored; nothing was kept",
            ) from exc
        services.metrics.active_sessions.inc()
        if services.router is not None:
            services.router.created(digest)
    # The session id is a bearer secret: return it once, never store or log it.
    return json_response(
        {"session_id": reply.session_id, "expires_at": rfc3339(expires_at)}, status=201
    )


async def request_aggregates(request: web.Request) -> web.Response:
    """POST /enclave/request_aggregates: a newly signed report for the session."""
    services = request.app[SERVICES]
    request_id = request[REQUEST_ID]
    body = await read_json_object(request, max_bytes=services.config.max_body_bytes)
    only_fields(body, _SESSION_FIELDS)
    session_id = require_session_id(body.get("session_id"))
    digest = session_hash(session_id)
    if (elsewhere := await route_session(request, digest)) is not None:
        return elsewhere
    with services.audit("aggregates.request", session_id):
        reply = await services.enclave_call(
            "aggregates", p.Aggregates(request_id=0, session_id=session_id), p.AggregatesReply
        )
        # Refused (503, nothing stored) when it names another session.
        state = parse_sealed_state(services, digest, reply.sealed_state, source="aggregates")
        seq = reply.payload.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            # The enclave numbers its reports; without a number, continue our own.
            latest = await services.store.latest_aggregate(digest)
            seq = 0 if latest is None else latest.seq + 1
        # One statement: the report and the state that issued it, or neither.
        await services.store.store_aggregate(
            digest,
            seq=seq,
            payload=reply.payload,
            signature=reply.signature,
            request_id=request_id,
            sealed_state=state,
        )
        if state is not None:
            services.metrics.sealed_states_stored.labels(source="aggregates").inc()
    return json_response(
        {
            "aggregates_signed": {"signature": reply.signature, "payload": reply.payload},
            "merkle_root": reply.merkle_root,
            "logs_url": f"/api/logs/{session_id}",
        }
    )


async def revoke(request: web.Request) -> web.Response:
    """POST /enclave/revoke: end the session in the enclave, then delete every row of it."""
    services = request.app[SERVICES]
    request_id = request[REQUEST_ID]
    body = await read_json_object(request, max_bytes=services.config.max_body_bytes)
    only_fields(body, _REVOKE_FIELDS)
    session_id = require_session_id(body.get("session_id"))
    proof = owner_proof_from_body(body)
    digest = session_hash(session_id)
    if (elsewhere := await route_session(request, digest)) is not None:
        return elsewhere
    with services.audit("session.revoke", session_id):
        enclave_knew = True
        final_log: LogBatch | None = None
        revocations: SealedBlob | None = None
        stored = await services.store.log_entries(digest)
        try:
            reply = await services.enclave_call(
                "revoke",
                p.Revoke(
                    request_id=0,
                    session_id=session_id,
                    proof_timestamp=proof.timestamp,
                    proof_signature=proof.signature,
                    log_start=len(stored),
                ),
                p.RevokeReply,
            )
            revocations = _revocation_list(services, reply.revocations)
            try:
                final_log = check_log_batch(
                    stored, entries=reply.entries, tree_head=reply.tree_head,
                    signature=reply.signature,
                )  # fmt: skip
            except LogMismatch as exc:
                # The revoke stands (the enclave already forgot the session); only
                # its last log entries are not kept.
                log.error("enclave_log_mismatch", reason=str(exc))
        except EnclaveRefused as exc:
            if exc.code is not p.ErrorCode.NOT_FOUND:
                raise  # forbidden (owner proof), unavailable, ...: the database is untouched
            # Expired or lost in an enclave restart: the stored ciphertext goes anyway.
            enclave_knew = False
        # One statement: the rows (sealed state included) go, the log's end and the new
        # revocation list stay.
        existed = await services.store.revoke_session(
            digest, request_id=request_id, log=final_log, revocations=revocations
        )
        if not existed and not enclave_knew:
            raise ApiError(404, "not_found", "unknown, expired or revoked session")
        if existed:
            services.metrics.active_sessions.dec()
    return json_response({"success": True, "message": REVOKED_MESSAGE})


def _printable(value: object, *, where: str, max_chars: int) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= max_chars or not value.isprintable():
        raise ApiError(400, "bad_request", f"{where} must be 1..{max_chars} printable characters")
    return value


async def disclose_trade(request: web.Request) -> web.Response:
    """POST /enclave/disclose_trade: owner only; one committed trade, sealed to the owner.

    The reply is an envelope only the owner's key opens (shared.disclosure): the
    parent relays it and learns nothing about the trade.
    """
    services = request.app[SERVICES]
    body = await read_json_object(request, max_bytes=services.config.max_body_bytes)
    only_fields(body, _DISCLOSE_FIELDS)
    session_id = require_session_id(body.get("session_id"))
    symbol = _printable(body.get("symbol"), where="field 'symbol'", max_chars=_MAX_SYMBOL)
    trade_id = _printable(body.get("trade_id"), where="field 'trade_id'", max_chars=_MAX_TRADE_ID)
    tree_size = body.get("tree_size")
    if tree_size is not None and (type(tree_size) is not int or not 1 <= tree_size <= 2**53 - 1):
        raise ApiError(400, "bad_request", "field 'tree_size' must be a positive integer")
    proof = owner_proof_from_body(body)
    if proof.timestamp is None or proof.signature is None:
        raise ApiError(403, "forbidden", "owner proof required (timestamp, signature)")
    if (elsewhere := await route_session(request, session_hash(session_id))) is not None:
        return elsewhere
    with services.audit("trade.disclose", session_id):
        reply = await services.enclave_call(
            "disclose_trade",
            p.DiscloseTrade(
                request_id=0,
                session_id=session_id,
                symbol=symbol,
                trade_id=trade_id,
                tree_size=tree_size,
                proof_timestamp=proof.timestamp,
                proof_signature=proof.signature,
            ),
            p.DiscloseTradeReply,
        )
        state = parse_sealed_state(
            services, session_hash(session_id), reply.sealed_state, source="disclose"
        )
        await keep_sealed_state(services, state, source="disclose")
    return json_response({"envelope": reply.envelope})


def _path_session_id(request: web.Request) -> str:
    return require_session_id(request.match_info["session_id"], where="path parameter 'session_id'")


async def session_metrics(request: web.Request) -> web.Response:
    """GET /enclave/metrics/{session_id}: the enclave's detailed metrics."""
    services = request.app[SERVICES]
    session_id = _path_session_id(request)
    if (elsewhere := await route_session(request, session_hash(session_id))) is not None:
        return elsewhere
    with services.audit("metrics.read", session_id):
        reply = await services.enclave_call(
            "metrics", p.SessionMetrics(request_id=0, session_id=session_id), p.MetricsReply
        )
    return json_response(reply.metrics)


async def session_summary(request: web.Request) -> web.Response:
    """GET /enclave/summary/{session_id}: headline figures and polling state."""
    services = request.app[SERVICES]
    session_id = _path_session_id(request)
    if (elsewhere := await route_session(request, session_hash(session_id))) is not None:
        return elsewhere
    with services.audit("summary.read", session_id):
        reply = await services.enclave_call(
            "summary", p.Summary(request_id=0, session_id=session_id), p.SummaryReply
        )
    return json_response(reply.summary)
