"""GET /attestation/quote: the enclave's attestation document. Side: parent.

The parent relays the document verbatim as ``quote`` and decodes it *without
trusting it* (no signature, chain or PCR check) only to fill the convenience fields
of the CONTRACT (DESIGN.md section 5). Clients must verify ``quote`` themselves and
take keys from the verified document only, never from these fields: the parent is
untrusted and could lie about them, but not about a document it cannot sign.
"""

from __future__ import annotations

import secrets

from aiohttp import web

from parent.api.errors import ApiError, json_response
from parent.api.services import SERVICES
from parent.api.validation import parse_nonce
from shared import protocol as p
from shared.attestation import decode_document, decode_user_data, pcrs_to_json
from shared.encoding import b64encode
from shared.errors import AttestationError

__all__ = ["DEFAULT_NONCE_BYTES", "quote"]

DEFAULT_NONCE_BYTES = 32
"""Size of the nonce the parent draws when the client sends none (as in the seed)."""


async def quote(request: web.Request) -> web.Response:
    """Ask the enclave for a document echoing ``nonce`` and describe it."""
    services = request.app[SERVICES]
    values = request.query.getall("nonce", [])
    if len(values) > 1:
        raise ApiError(400, "bad_request", "query parameter 'nonce' given more than once")
    nonce = parse_nonce(values[0] if values else None)
    if nonce is None:
        nonce = secrets.token_bytes(DEFAULT_NONCE_BYTES)
    reply = await services.enclave_call(
        "attest", p.Attest(request_id=0, nonce=nonce), p.AttestReply
    )
    try:
        document, _ = decode_document(reply.document)
        if document.user_data is None:
            raise AttestationError("user-data")
        keys = decode_user_data(document.user_data)
        pcr0 = document.pcrs[0]
    except (AttestationError, KeyError):
        # A trusted enclave never sends this; say so without quoting the bytes.
        raise ApiError(
            503, "unavailable", "the enclave returned an unusable attestation document"
        ) from None
    return json_response(
        {
            "quote": b64encode(reply.document),
            "enclave_pubkey": b64encode(keys.x25519_public),
            "signing_pubkey": b64encode(keys.ed25519_public),
            "image_hash": pcr0.hex(),
            "pcrs": pcrs_to_json(document.pcrs),
            "nonce": nonce.hex(),
            # Unverified convenience copy; clients check SHA-256(pq_pubkey) == user_data "pq".
            "pq_pubkey": None if reply.pq_public is None else b64encode(reply.pq_public),
        }
    )
