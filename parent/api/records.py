"""Sealed records (seed 003): seal, unseal, list. Side: parent.

The parent never sees a record: the owner encrypts it to the enclave (an envelope
with metadata ``{"purpose": "record", "label"}``), the enclave seals it under a key
only it holds, and the parent stores the sealed blob. Unsealing returns the record
re-encrypted to the session owner's key, so it crosses the parent as ciphertext
again. Every access writes an audit line (``parent.api.services.AuditScope``).
"""

from __future__ import annotations

from typing import Final

from aiohttp import web

from parent.api.errors import ApiError, json_response
from parent.api.forwarding import route_session
from parent.api.services import SERVICES
from parent.api.sessions import rfc3339
from parent.api.validation import (
    check_record_metadata,
    only_fields,
    owner_proof_from_body,
    owner_proof_from_headers,
    parse_envelope,
    parse_record_id,
    read_json_object,
    require_session_id,
)
from shared import protocol as p
from shared.encoding import b64decode, b64encode
from shared.ids import session_hash

__all__ = ["get_record", "list_records", "seal_record"]

_SEAL_FIELDS: Final = frozenset({"session_id", "envelope", "timestamp", "signature"})
_SESSION_HEADER: Final = "X-Session-Id"


def _header_session_id(request: web.Request) -> str:
    return require_session_id(
        request.headers.get(_SESSION_HEADER), where=f"header {_SESSION_HEADER}"
    )


async def seal_record(request: web.Request) -> web.Response:
    """POST /api/records: have the enclave seal a record, store the blob (201)."""
    services = request.app[SERVICES]
    body = await read_json_object(request, max_bytes=services.config.max_body_bytes)
    only_fields(body, _SEAL_FIELDS)
    session_id = require_session_id(body.get("session_id"))
    if "envelope" not in body:
        raise ApiError(400, "bad_request", "field 'envelope' is required")
    envelope = parse_envelope(body["envelope"])
    check_record_metadata(envelope.metadata)
    proof = owner_proof_from_body(body)
    digest = session_hash(session_id)
    if (elsewhere := await route_session(request, digest)) is not None:
        return elsewhere
    with services.audit("records.seal", session_id):
        reply = await services.enclave_call(
            "seal_record",
            p.SealRecord(
                request_id=0,
                session_id=session_id,
                **{name: getattr(envelope, name) for name in p.ENVELOPE_FIELDS},
                proof_timestamp=proof.timestamp,
                proof_signature=proof.signature,
            ),
            p.SealRecordReply,
        )
        try:
            record_id = parse_record_id(reply.record_id)
        except ApiError:
            raise ApiError(500, "internal", "internal error") from None
        await services.store.insert_record(
            digest, record_id=record_id, label=reply.label, sealed=b64encode(reply.sealed)
        )
        # insert_record does not return the row; read it back for the database's created_at.
        row = await services.store.get_record(record_id, digest)
        if row is None:  # revoked between the two statements
            raise ApiError(404, "not_found", "unknown, expired or revoked session")
    return json_response(
        {"id": str(row.id), "label": row.label, "created_at": rfc3339(row.created_at)},
        status=201,
    )


async def get_record(request: web.Request) -> web.Response:
    """GET /api/records/{id}: the record re-encrypted to the owner (owner proof required)."""
    services = request.app[SERVICES]
    session_id = _header_session_id(request)
    record_id = parse_record_id(request.match_info["id"])
    proof = owner_proof_from_headers(request)
    if (elsewhere := await route_session(request, session_hash(session_id))) is not None:
        return elsewhere
    with services.audit("records.unseal", session_id):
        if proof.timestamp is None or proof.signature is None:
            raise ApiError(
                403, "forbidden", "owner proof required (X-Owner-Timestamp, X-Owner-Signature)"
            )
        # The lookup is by (record, session): another session's record is simply not found.
        row = await services.store.get_record(record_id, session_hash(session_id))
        if row is None:
            raise ApiError(404, "not_found", "unknown record")
        reply = await services.enclave_call(
            "unseal_record",
            p.UnsealRecord(
                request_id=0,
                session_id=session_id,
                record_id=str(record_id),
                label=row.label,
                sealed=b64decode(row.sealed),
                proof_timestamp=proof.timestamp,
                proof_signature=proof.signature,
            ),
            p.UnsealRecordReply,
        )
    return json_response({"id": str(record_id), "label": row.label, "envelope": reply.envelope})


async def list_records(request: web.Request) -> web.Response:
    """GET /api/records: metadata (id, label, created_at) of the session's records."""
    services = request.app[SERVICES]
    session_id = _header_session_id(request)
    digest = session_hash(session_id)
    with services.audit("records.list", session_id):
        if await services.store.get_session(digest, now=services.clock()) is None:
            raise ApiError(404, "not_found", "unknown, expired or revoked session")
        records = await services.store.list_records(digest)
    return json_response(
        {
            "records": [
                {"id": str(r.id), "label": r.label, "created_at": rfc3339(r.created_at)}
                for r in records
            ]
        }
    )
