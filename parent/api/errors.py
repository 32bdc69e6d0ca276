"""The API's one error shape and the mapping of every failure to it. Side: parent.

Every error leaves as ``{"error": {"code": <word>, "message": <text>}}`` with its
HTTP status. ``api_error_for`` is the single table from exceptions to that shape:
the error middleware and the audit log both use it, so a status and the audited
outcome can never disagree. Anything it does not know is a bug and becomes a 500
with a fixed message; the exception's text never reaches a client, because library
messages can quote request data.

    exception                                   status  code
    ApiError                                    its own
    EnclaveRefused(code)                        400 403 404 409 413 422 500 501 503 (by code)
    EnclaveUnavailable                          503     unavailable
    StoreUnavailable                            503     unavailable
    SessionNotFound                             404     not_found
    ReplayedEnvelope                            409     replayed
    Conflict                                    409     conflict
    InvalidData                                 400     bad_request
    aiohttp HTTPException (404, 405, 413, ...)  its own status
    anything else                               500     internal
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from parent.db.errors import (
    Conflict,
    InvalidData,
    ReplayedEnvelope,
    SessionNotFound,
    StoreUnavailable,
)
from parent.enclave_client import EnclaveRefused, EnclaveUnavailable
from shared.protocol import ErrorCode

__all__ = ["INTERNAL", "ApiError", "api_error_for", "error_response", "json_response"]


class ApiError(Exception):
    """A failure with its HTTP status, error code and client-safe message."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


INTERNAL = ApiError(500, "internal", "internal error")
"""The answer to every unexpected failure: nothing about its cause."""

# The enclave's ErrorCode -> HTTP status (shared.protocol documents the same table).
_ENCLAVE_STATUS: Mapping[ErrorCode, int] = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.REPLAYED: 409,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.UNDECRYPTABLE: 422,
    ErrorCode.INTERNAL: 500,
    ErrorCode.UNSUPPORTED: 501,
    ErrorCode.UNAVAILABLE: 503,
}

_HTTP_CODES: Mapping[int, tuple[str, str]] = {
    400: ("bad_request", "malformed request"),
    404: ("not_found", "no such route"),
    405: ("method_not_allowed", "method not allowed on this route"),
    413: ("too_large", "request body is too large"),
    415: ("unsupported_media_type", "unsupported content type"),
}


def api_error_for(exc: BaseException) -> ApiError | None:
    """The client-facing error for ``exc``; None when it is unexpected (a bug: 500)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, EnclaveRefused):
        if exc.code is ErrorCode.INTERNAL:
            return INTERNAL
        # ErrorReply messages are fixed strings chosen by the enclave to be safe to show.
        return ApiError(_ENCLAVE_STATUS[exc.code], exc.code.value, exc.message)
    if isinstance(exc, EnclaveUnavailable):
        return ApiError(503, "unavailable", "enclave unavailable, retry later")
    if isinstance(exc, StoreUnavailable):
        return ApiError(503, "unavailable", "database unavailable, retry later")
    if isinstance(exc, SessionNotFound):
        return ApiError(404, "not_found", "unknown, expired or revoked session")
    if isinstance(exc, ReplayedEnvelope):
        return ApiError(409, "replayed", "this envelope was already submitted")
    if isinstance(exc, Conflict):
        return ApiError(409, "conflict", "this item already exists")
    if isinstance(exc, InvalidData):
        # The store's message names a table and constraint: useful in our logs, not to clients.
        return ApiError(400, "bad_request", "a value was refused by the storage constraints")
    if isinstance(exc, web.HTTPException) and exc.status >= 400:
        code, message = _HTTP_CODES.get(exc.status, (f"http_{exc.status}", exc.reason))
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return ApiError(exc.status, code, message, headers=headers)
    return None


def json_response(
    body: Any, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """A compact UTF-8 JSON response."""
    return web.Response(
        body=json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8"),
        status=status,
        headers=headers,
        content_type="application/json",
        charset="utf-8",
    )


def error_response(error: ApiError) -> web.Response:
    """``error`` in the API's JSON error shape."""
    return json_response(
        {"error": {"code": error.code, "message": error.message}},
        status=error.status,
        headers=error.headers,
    )
