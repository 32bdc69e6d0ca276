"""The API's OpenAPI 3.1 document and the /docs page rendered from it. Side: parent.

The document describes the handlers in ``parent.api`` exactly: every path and method
the router serves (a test compares the two), every request body, and every response
a handler can produce, errors included. ``render_docs`` turns it into one
self-contained HTML page: no script, no stylesheet link, no CDN, every text escaped.
"""

from __future__ import annotations

import html
import json
from typing import Any, Final

from aiohttp import web

__all__ = ["DOCS_KEY", "OPENAPI_KEY", "build_openapi", "render_docs"]

JsonObject = dict[str, Any]

OPENAPI_KEY = web.AppKey("openapi", dict)
"""The application's OpenAPI document (built once by ``create_app``)."""
DOCS_KEY = web.AppKey("docs_html", str)
"""The application's /docs page (rendered once by ``create_app``)."""

API_VERSION: Final = "1.0.0"

_DESCRIPTION = """\
HTTPS API of the perf-aggregator parent, the untrusted host in front of an AWS Nitro
Enclave. Traders submit exchange API credentials encrypted to a key that only the
attested enclave holds; the enclave computes performance figures and signs them.
The parent stores ciphertext and public data only.

Errors are always `{"error": {"code", "message"}}` with the status listed for each
operation. Every route answers a wrong method with 405 (and an `Allow` header); any
other path answers 404. Every response carries `X-Request-Id`. Requests are limited
per client IP (429 with `Retry-After`, in seconds); /healthz, /readyz and /metrics are
exempt. Request bodies must be `application/json` (415 otherwise) and are limited in
size (413). Session ids are bearer secrets: keep them private. A refusal by the enclave
keeps its code and maps to a status: bad_request 400, forbidden 403, not_found 404,
replayed 409, too_large 413, undecryptable 422, internal 500, unsupported 501,
unavailable 503; each operation lists the ones it can produce.
"""

_B64 = {"type": "string", "contentEncoding": "base64", "description": "standard base64, padded"}
_HEX_HASH = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
_SESSION_ID = {
    "type": "string",
    "pattern": "^[A-Za-z0-9_-]{43}$",
    "description": "session id (a bearer secret: 256 random bits, URL-safe base64)",
}
_TIMESTAMP = {"type": "string", "format": "date-time", "description": "RFC 3339, UTC"}


def _ref(name: str) -> JsonObject:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: JsonObject, description: str) -> JsonObject:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> JsonObject:
    return {str(status): {"$ref": f"#/components/responses/E{status}"} for status in statuses}


_ERROR_RESPONSES: Final[dict[int, str]] = {
    400: "Bad input: malformed JSON, unexpected or missing field, bad base64, bad session id.",
    403: "Forbidden: the owner proof is missing or does not verify (or CORS origin refused).",
    404: "Unknown, expired or revoked session or record.",
    409: "This envelope was submitted before (replay); nothing new was stored.",
    413: "Request body larger than the configured limit.",
    415: "Content-Type is not application/json.",
    422: "The envelope does not open (one generic answer: no decryption oracle).",
    429: "Rate limited; retry after Retry-After seconds.",
    500: "Internal error (the message is always 'internal error').",
    501: "Not available in this build.",
    503: "The enclave or the database is unavailable; nothing was half-stored.",
}


def _session_path_parameter() -> JsonObject:
    return {"$ref": "#/components/parameters/SessionIdPath"}


def build_openapi(*, min_ttl_seconds: int, max_ttl_seconds: int, max_body_bytes: int) -> JsonObject:
    """The OpenAPI 3.1 document for an app configured with these limits."""
    envelope_props: JsonObject = {
        "alg": {
            "type": "string",
            "enum": [
                "x25519-hkdf-sha256-aes256gcm",
                "hpke-x25519-sha256-aes256gcm",
                "hpke-mlkem768x25519-sha256-aes256gcm",
            ],
            "default": "x25519-hkdf-sha256-aes256gcm",
        },
        "ephemeral_pub": _B64,
        "nonce": _B64,
        "ciphertext": _B64,
        "tag": _B64,
    }
    schemas: JsonObject = {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {
                        "code": {"type": "string", "examples": ["bad_request", "not_found"]},
                        "message": {"type": "string"},
                    },
                }
            },
        },
        "SessionMetadata": {
            "type": "object",
            "description": "Bound into the envelope as AAD (RFC 8785 canonical JSON).",
            "required": ["exchange", "label", "ttl"],
            "additionalProperties": False,
            "properties": {
                "exchange": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_.-]{0,31}$"},
                "label": {"type": "string", "minLength": 1, "maxLength": 64},
                "ttl": {
                    "type": "integer",
                    "minimum": min_ttl_seconds,
                    "maximum": max_ttl_seconds,
                    "description": "session lifetime in seconds",
                },
                "issued_at": {"type": "integer", "minimum": 0, "description": "Unix seconds"},
            },
        },
        "SubmitKeyRequest": {
            "type": "object",
            "description": "A credential envelope (DESIGN.md section 4 CONTRACT).",
            "required": ["ephemeral_pub", "nonce", "ciphertext", "tag", "metadata"],
            "additionalProperties": False,
            "properties": {**envelope_props, "metadata": _ref("SessionMetadata")},
        },
        "SubmitKeyResponse": {
            "type": "object",
            "required": ["session_id", "expires_at"],
            "properties": {"session_id": _SESSION_ID, "expires_at": _TIMESTAMP},
        },
        "SessionRequest": {
            "type": "object",
            "required": ["session_id"],
            "additionalProperties": False,
            "properties": {"session_id": _SESSION_ID},
        },
        "AggregatesResponse": {
            "type": "object",
            "required": ["aggregates_signed", "merkle_root", "logs_url"],
            "properties": {
                "aggregates_signed": {
                    "type": "object",
                    "required": ["signature", "payload"],
                    "properties": {
                        "signature": {
                            **_B64,
                            "description": "Ed25519 over RFC 8785 canonical JSON of payload",
                        },
                        "payload": {
                            "type": "object",
                            "description": "pnl, sharpe, volume, trades, from, to, seq, "
                            "prev_report_hash, merkle_root, pcr0, issued_at, ...",
                        },
                    },
                },
                "merkle_root": {"type": "string"},
                "logs_url": {"type": "string", "examples": ["/api/logs/<session_id>"]},
            },
        },
        "RevokeRequest": {
            "type": "object",
            "required": ["session_id"],
            "additionalProperties": False,
            "description": "timestamp and signature (an owner proof over 'revoke', the "
            "session id and the timestamp) are required when the session has an owner.",
            "properties": {
                "session_id": _SESSION_ID,
                "timestamp": {"type": "integer", "minimum": 0, "description": "Unix seconds"},
                "signature": {**_B64, "description": "Ed25519 owner proof, base64"},
            },
        },
        "RevokeResponse": {
            "type": "object",
            "required": ["success", "message"],
            "properties": {
                "success": {"const": True},
                "message": {"type": "string", "examples": ["Session revoked and data purged"]},
            },
        },
        "QuoteResponse": {
            "type": "object",
            "required": [
                "quote",
                "enclave_pubkey",
                "signing_pubkey",
                "image_hash",
                "pcrs",
                "nonce",
                "pq_pubkey",
            ],
            "properties": {
                "quote": {**_B64, "description": "the COSE_Sign1 attestation document"},
                "enclave_pubkey": {**_B64, "description": "X25519 key (user_data 'enc')"},
                "signing_pubkey": {**_B64, "description": "Ed25519 key (user_data 'sig')"},
                "image_hash": {"type": "string", "description": "PCR0, lowercase hex"},
                "pcrs": {
                    "type": "object",
                    "additionalProperties": {"type": "string"},
                    "description": 'PCR index -> lowercase hex, e.g. {"0": "..."}',
                },
                "nonce": {"type": "string", "description": "the nonce echoed, lowercase hex"},
                "pq_pubkey": {
                    "oneOf": [_B64, {"type": "null"}],
                    "description": "ML-KEM-768+X25519 public key (1216 bytes); its SHA-256 "
                    "is user_data 'pq'. Check the hash before use.",
                },
            },
        },
        "EnclaveReport": {
            "type": "object",
            "description": "The enclave's JSON object, relayed unchanged.",
        },
        "SessionLog": {
            "type": "object",
            "required": [
                "log_id",
                "tree_head",
                "entries",
                "consistency_proof",
                "live",
                "access_log",
            ],
            "description": "The enclave-signed transparency log (shared/translog.py): "
            "check it with shared.translog.verify_log and the attested signing key.",
            "properties": {
                "log_id": {"type": "string", "examples": ["perf-aggregator:ops:<sha256 hex>"]},
                "tree_head": {
                    "type": "object",
                    "required": ["payload", "signature"],
                    "properties": {
                        "payload": {
                            "type": "object",
                            "required": [
                                "v",
                                "purpose",
                                "log_id",
                                "tree_size",
                                "root_hash",
                                "timestamp",
                            ],
                            "properties": {
                                "v": {"const": 1},
                                "purpose": {"const": "perf-aggregator/tree-head"},
                                "log_id": {"type": "string"},
                                "tree_size": {"type": "integer", "minimum": 0},
                                "root_hash": _HEX_HASH,
                                "timestamp": {"type": "integer", "minimum": 0},
                            },
                        },
                        "signature": {
                            **_B64,
                            "description": "Ed25519 over RFC 8785 of payload (attested key)",
                        },
                    },
                },
                "entries": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["index", "entry", "inclusion_proof"],
                        "properties": {
                            "index": {"type": "integer", "minimum": 0},
                            "entry": {
                                "type": "object",
                                "required": ["v", "index", "op", "at", "data"],
                                "properties": {
                                    "op": {
                                        "enum": ["submit", "poll", "report", "disclose", "revoke"]
                                    },
                                    "at": {"type": "string"},
                                    "data": {"type": "object"},
                                },
                            },
                            "inclusion_proof": _ref("InclusionProof"),
                        },
                    },
                },
                "consistency_proof": {
                    "oneOf": [
                        {"type": "null"},
                        {
                            "type": "object",
                            "required": ["old_size", "new_size", "path"],
                            "properties": {
                                "old_size": {"type": "integer", "minimum": 0},
                                "new_size": {"type": "integer", "minimum": 0},
                                "path": {"type": "array", "items": _HEX_HASH},
                            },
                        },
                    ],
                    "description": "RFC 6962 consistency proof from since_size to tree_size.",
                },
                "live": {
                    "type": "boolean",
                    "description": "false when served from storage only (session gone or "
                    "enclave unreachable)",
                },
                "access_log": {
                    "type": "array",
                    "description": "The parent's own unsigned audit rows for the session.",
                    "items": {
                        "type": "object",
                        "required": ["op", "at", "request_id"],
                        "properties": {
                            "op": {"type": "string"},
                            "at": {"type": "string", "format": "date-time"},
                            "request_id": {"type": ["string", "null"]},
                        },
                    },
                },
            },
        },
        "InclusionProof": {
            "type": "object",
            "required": ["index", "size", "path"],
            "properties": {
                "index": {"type": "integer", "minimum": 0},
                "size": {"type": "integer", "minimum": 1},
                "path": {"type": "array", "items": _HEX_HASH},
            },
        },
        "DiscloseTradeRequest": {
            "type": "object",
            "required": ["session_id", "symbol", "trade_id", "timestamp", "signature"],
            "additionalProperties": False,
            "description": "Owner only: timestamp and signature are an owner proof over "
            "'disclose_trade', the session id and the timestamp.",
            "properties": {
                "session_id": _SESSION_ID,
                "symbol": {"type": "string", "minLength": 1, "maxLength": 64},
                "trade_id": {"type": "string", "minLength": 1, "maxLength": 128},
                "tree_size": {
                    "type": ["integer", "null"],
                    "minimum": 1,
                    "description": "a signed report's merkle_tree_size (default: current tree)",
                },
                "timestamp": {"type": "integer", "minimum": 0, "description": "Unix seconds"},
                "signature": {**_B64, "description": "Ed25519 owner proof, base64"},
            },
        },
        "DiscloseTradeResponse": {
            "type": "object",
            "required": ["envelope"],
            "properties": {
                "envelope": {
                    "type": "object",
                    "description": "The disclosure sealed to the owner's key "
                    "(shared.disclosure.open_disclosure).",
                },
            },
        },
        "RecordMetadata": {
            "type": "object",
            "required": ["purpose", "label"],
            "additionalProperties": False,
            "properties": {
                "purpose": {"const": "record"},
                "label": {"type": "string", "minLength": 1, "maxLength": 64},
            },
        },
        "RecordEnvelope": {
            "type": "object",
            "required": ["ephemeral_pub", "nonce", "ciphertext", "tag", "metadata"],
            "additionalProperties": False,
            "properties": {**envelope_props, "metadata": _ref("RecordMetadata")},
        },
        "SealRecordRequest": {
            "type": "object",
            "required": ["session_id", "envelope"],
            "additionalProperties": False,
            "properties": {
                "session_id": _SESSION_ID,
                "envelope": _ref("RecordEnvelope"),
                "timestamp": {"type": "integer", "minimum": 0},
                "signature": {**_B64, "description": "owner proof over 'seal_record'"},
            },
        },
        "RecordMeta": {
            "type": "object",
            "required": ["id", "label", "created_at"],
            "properties": {
                "id": {"type": "string", "format": "uuid"},
                "label": {"type": "string"},
                "created_at": _TIMESTAMP,
            },
        },
        "RecordList": {
            "type": "object",
            "required": ["records"],
            "properties": {"records": {"type": "array", "items": _ref("RecordMeta")}},
        },
        "UnsealedRecord": {
            "type": "object",
            "required": ["id", "label", "envelope"],
            "properties": {
                "id": {"type": "string", "format": "uuid"},
                "label": {"type": "string"},
                "envelope": {
                    "type": "object",
                    "description": "The record encrypted to the owner's key (envelope wire form).",
                },
            },
        },
        "Health": {
            "type": "object",
            "required": ["status"],
            "properties": {"status": {"const": "ok"}},
        },
        "Ready": {
            "type": "object",
            "required": ["status", "checks"],
            "properties": {
                "status": {"const": "ready"},
                "checks": {
                    "type": "object",
                    "properties": {
                        "database": {"type": "string"},
                        "enclave": {"type": "string"},
                    },
                },
            },
        },
    }
    responses: JsonObject = {
        f"E{status}": _json(_ref("Error"), description)
        for status, description in _ERROR_RESPONSES.items()
    }
    responses["E429"]["headers"] = {
        "Retry-After": {
            "description": "Seconds to wait before retrying.",
            "schema": {"type": "integer", "minimum": 1},
        }
    }
    parameters: JsonObject = {
        "SessionIdPath": {
            "name": "session_id",
            "in": "path",
            "required": True,
            "schema": _SESSION_ID,
        },
        "XSessionId": {
            "name": "X-Session-Id",
            "in": "header",
            "required": True,
            "schema": _SESSION_ID,
        },
    }

    def body(name: str) -> JsonObject:
        return {
            "required": True,
            "description": f"JSON, at most {max_body_bytes} bytes.",
            "content": {"application/json": {"schema": _ref(name)}},
        }

    paths: JsonObject = {
        "/attestation/quote": {
            "get": {
                "operationId": "getAttestationQuote",
                "tags": ["attestation"],
                "summary": "The enclave's attestation document, echoing a nonce",
                "description": "Verify `quote` yourself (chain to the AWS Nitro root, PCRs, "
                "nonce, freshness) and use only keys found inside it; the other fields are "
                "conveniences decoded by the untrusted parent.",
                "parameters": [
                    {
                        "name": "nonce",
                        "in": "query",
                        "required": False,
                        "description": "hex, 1..512 bytes; 32 random bytes when absent",
                        "schema": {"type": "string", "pattern": "^([0-9a-fA-F]{2}){1,512}$"},
                    }
                ],
                "responses": {
                    "200": _json(_ref("QuoteResponse"), "The attestation document."),
                    **_errors(400, 429, 500, 503),
                },
            }
        },
        "/enclave/submit_key": {
            "post": {
                "operationId": "submitKey",
                "tags": ["sessions"],
                "summary": "Submit encrypted exchange credentials; opens a session",
                "requestBody": body("SubmitKeyRequest"),
                "responses": {
                    "201": _json(_ref("SubmitKeyResponse"), "Session created."),
                    **_errors(400, 409, 413, 415, 422, 429, 500, 503),
                },
            }
        },
        "/enclave/request_aggregates": {
            "post": {
                "operationId": "requestAggregates",
                "tags": ["sessions"],
                "summary": "A newly signed performance report",
                "requestBody": body("SessionRequest"),
                "responses": {
                    "200": _json(_ref("AggregatesResponse"), "The signed report."),
                    **_errors(400, 404, 409, 413, 415, 429, 500, 503),
                },
            }
        },
        "/enclave/revoke": {
            "post": {
                "operationId": "revokeSession",
                "tags": ["sessions"],
                "summary": "End the session and delete all its data",
                "requestBody": body("RevokeRequest"),
                "responses": {
                    "200": _json(_ref("RevokeResponse"), "Revoked and purged."),
                    **_errors(400, 403, 404, 413, 415, 429, 500, 503),
                },
            }
        },
        "/enclave/metrics/{session_id}": {
            "get": {
                "operationId": "getSessionMetrics",
                "tags": ["sessions"],
                "summary": "Detailed metrics of a session",
                "parameters": [_session_path_parameter()],
                "responses": {
                    "200": _json(_ref("EnclaveReport"), "Detailed metrics."),
                    **_errors(400, 404, 429, 500, 503),
                },
            }
        },
        "/enclave/summary/{session_id}": {
            "get": {
                "operationId": "getSessionSummary",
                "tags": ["sessions"],
                "summary": "Headline figures and polling state of a session",
                "parameters": [_session_path_parameter()],
                "responses": {
                    "200": _json(_ref("EnclaveReport"), "Summary."),
                    **_errors(400, 404, 429, 500, 503),
                },
            }
        },
        "/enclave/disclose_trade": {
            "post": {
                "operationId": "discloseTrade",
                "tags": ["sessions"],
                "summary": "Owner only: one committed trade with its inclusion proof",
                "description": "The reply is sealed to the owner's key; the owner verifies "
                "it against a signed report with shared.disclosure.verify_disclosure.",
                "requestBody": body("DiscloseTradeRequest"),
                "responses": {
                    "200": _json(_ref("DiscloseTradeResponse"), "The sealed disclosure."),
                    **_errors(400, 403, 404, 413, 415, 429, 500, 503),
                },
            }
        },
        "/api/logs/{session_id}": {
            "get": {
                "operationId": "getSessionLog",
                "tags": ["sessions"],
                "summary": "The session's transparency log",
                "description": "Entries signed by the enclave (submit, poll, report, "
                "disclose, revoke) with RFC 6962 inclusion proofs, the signed tree head, and "
                "a consistency proof from since_size. Still served after revoke or expiry.",
                "parameters": [
                    _session_path_parameter(),
                    {
                        "name": "start",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 0, "default": 0},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                    },
                    {
                        "name": "since_size",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 0},
                        "description": "a tree size seen before: adds a consistency proof",
                    },
                ],
                "responses": {
                    "200": _json(_ref("SessionLog"), "The session log."),
                    **_errors(400, 404, 429, 500, 503),
                },
            }
        },
        "/api/records": {
            "post": {
                "operationId": "sealRecord",
                "tags": ["records"],
                "summary": "Seal a record encrypted to the enclave",
                "requestBody": body("SealRecordRequest"),
                "responses": {
                    "201": _json(_ref("RecordMeta"), "Record sealed and stored."),
                    **_errors(400, 403, 404, 413, 415, 422, 429, 500, 503),
                },
            },
            "get": {
                "operationId": "listRecords",
                "tags": ["records"],
                "summary": "Metadata of the session's records (never their content)",
                "parameters": [{"$ref": "#/components/parameters/XSessionId"}],
                "responses": {
                    "200": _json(_ref("RecordList"), "Record metadata, oldest first."),
                    **_errors(400, 404, 429, 500, 503),
                },
            },
        },
        "/api/records/{id}": {
            "get": {
                "operationId": "unsealRecord",
                "tags": ["records"],
                "summary": "A record, re-encrypted to the session owner's key",
                "parameters": [
                    {
                        "name": "id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "format": "uuid"},
                    },
                    {"$ref": "#/components/parameters/XSessionId"},
                    {
                        "name": "X-Owner-Timestamp",
                        "in": "header",
                        "required": True,
                        "description": "Unix seconds of the owner proof",
                        "schema": {"type": "string", "pattern": "^[0-9]{1,16}$"},
                    },
                    {
                        "name": "X-Owner-Signature",
                        "in": "header",
                        "required": True,
                        "description": "owner proof over 'unseal_record:<id>', base64",
                        "schema": _B64,
                    },
                ],
                "responses": {
                    "200": _json(_ref("UnsealedRecord"), "The record, encrypted to the owner."),
                    **_errors(400, 403, 404, 422, 429, 500, 503),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "getMetrics",
                "tags": ["operations"],
                "summary": "Prometheus metrics (text exposition format)",
                "responses": {
                    "200": {
                        "description": "Metrics.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/healthz": {
            "get": {
                "operationId": "getHealth",
                "tags": ["operations"],
                "summary": "Liveness",
                "responses": {"200": _json(_ref("Health"), "The process is alive.")},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "getReadiness",
                "tags": ["operations"],
                "summary": "Readiness: database and enclave reachable",
                "responses": {
                    "200": _json(_ref("Ready"), "Ready."),
                    **_errors(503),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "getOpenApi",
                "tags": ["operations"],
                "summary": "This document",
                "responses": {
                    "200": _json({"type": "object"}, "OpenAPI 3.1 document."),
                    **_errors(429),
                },
            }
        },
        "/docs": {
            "get": {
                "operationId": "getDocs",
                "tags": ["operations"],
                "summary": "Human-readable documentation of this API",
                "responses": {
                    "200": {
                        "description": "HTML page.",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    },
                    **_errors(429),
                },
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "perf-aggregator parent API",
            "version": API_VERSION,
            "description": _DESCRIPTION,
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {"schemas": schemas, "responses": responses, "parameters": parameters},
    }


# --------------------------------------------------------------------------- /docs

_STYLE = """
body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
h2{border-bottom:1px solid #ccc;margin-top:2.5rem}
.op{border:1px solid #ddd;border-radius:6px;padding:.5rem 1rem;margin:1rem 0}
.method{font-weight:700;text-transform:uppercase;margin-right:.5rem}
code,pre{font-family:ui-monospace,monospace;font-size:13px}
pre{background:#f6f6f6;padding:.5rem;overflow:auto}
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:.2rem .5rem;text-align:left}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _resolve(spec: JsonObject, item: JsonObject) -> JsonObject:
    """Follow one local ``$ref`` (``#/components/...``)."""
    ref = item.get("$ref")
    if not isinstance(ref, str):
        return item
    node: Any = spec
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return dict(node)


def _schema_block(schema: JsonObject) -> str:
    return f"<pre>{_e(json.dumps(schema, indent=2, ensure_ascii=False))}</pre>"


def _operation(spec: JsonObject, path: str, method: str, op: JsonObject) -> str:
    parts = [
        f'<div class="op" id="{_e(op.get("operationId", ""))}">',
        f'<p><span class="method">{_e(method)}</span><code>{_e(path)}</code>'
        f" &mdash; {_e(op.get('summary', ''))}</p>",
    ]
    if "description" in op:
        parts.append(f"<p>{_e(op['description'])}</p>")
    parameters = [_resolve(spec, item) for item in op.get("parameters", [])]
    if parameters:
        parts.append(
            "<table><tr><th>parameter</th><th>in</th><th>required</th><th>schema</th></tr>"
        )
        for parameter in parameters:
            parts.append(
                f"<tr><td><code>{_e(parameter['name'])}</code></td><td>{_e(parameter['in'])}</td>"
                f"<td>{'yes' if parameter.get('required') else 'no'}</td>"
                f"<td><code>{_e(json.dumps(parameter.get('schema', {})))}</code></td></tr>"
            )
        parts.append("</table>")
    if "requestBody" in op:
        content = op["requestBody"]["content"]["application/json"]["schema"]
        parts.append(f"<p>Request body (application/json): {_schema_name(content)}</p>")
    parts.append("<table><tr><th>status</th><th>meaning</th><th>body</th></tr>")
    for status, response in op["responses"].items():
        resolved = _resolve(spec, response)
        content = resolved.get("content", {})
        bodies = ", ".join(
            f"{_e(media)} {_schema_name(media_type.get('schema', {}))}"
            for media, media_type in content.items()
        )
        parts.append(
            f"<tr><td>{_e(status)}</td><td>{_e(resolved.get('description', ''))}</td>"
            f"<td>{bodies}</td></tr>"
        )
    parts.append("</table></div>")
    return "\n".join(parts)


def _schema_name(schema: JsonObject) -> str:
    ref = schema.get("$ref")
    if isinstance(ref, str):
        name = ref.rsplit("/", 1)[-1]
        return f'<a href="#schema-{_e(name)}"><code>{_e(name)}</code></a>'
    return f"<code>{_e(json.dumps(schema))}</code>"


def render_docs(spec: JsonObject) -> str:
    """One self-contained HTML page documenting ``spec`` (no external assets)."""
    info = spec["info"]
    out = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(info['title'])}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{_e(info['title'])} <small>{_e(info['version'])}</small></h1>",
        "".join(f"<p>{_e(paragraph)}</p>" for paragraph in info["description"].split("\n\n")),
        '<p>Machine-readable: <a href="/openapi.json">/openapi.json</a> (OpenAPI '
        f"{_e(spec['openapi'])}).</p>",
        "<h2>Operations</h2>",
    ]
    for path, item in spec["paths"].items():
        for method, op in item.items():
            out.append(_operation(spec, path, method, op))
    out.append("<h2>Schemas</h2>")
    for name, schema in spec["components"]["schemas"].items():
        out.append(f'<h3 id="schema-{_e(name)}">{_e(name)}</h3>{_schema_block(schema)}')
    out.append("</body></html>")
    return "\n".join(out)
