"""Strict CBOR decoding for untrusted input. Side: any (sans-IO).

cbor2 is permissive by default: it silently ignores trailing bytes, accepts
duplicate map keys, indefinite-length items, and turns semantic tags into Python
objects (datetimes, regexes, shared references that can make cycles). Every
decoder in this project that reads bytes from across the trust boundary goes
through ``strict_loads`` instead, which refuses all of that.
"""

from __future__ import annotations

import io
from typing import Any

import cbor2

__all__ = ["CborError", "strict_loads"]

# Tags cbor2 decodes into objects (RFC 8949 section 3.4 and the IANA registry
# entries cbor2 implements). Each is overridden to refuse; any other tag reaches
# ``tag_hook``, which refuses too.
_SEMANTIC_TAGS = (
    0, 1, 2, 3, 4, 5, 21, 22, 23, 24, 25, 28, 29, 30, 32, 33, 34, 35, 36, 37,
    52, 54, 100, 256, 258, 260, 261, 1004, 55799,
)  # fmt: skip


class CborError(ValueError):
    """The bytes are not one strict, untagged, definite-length CBOR item."""


def _refuse_semantic(*_args: object) -> Any:
    raise CborError("CBOR tags are not allowed")


def _refuse_tag(_decoder: object, _tag: object) -> Any:
    raise CborError("CBOR tags are not allowed")


_REFUSE_ALL = {tag: _refuse_semantic for tag in _SEMANTIC_TAGS}


def strict_loads(data: bytes, *, max_depth: int = 16) -> Any:
    """Decode exactly one CBOR data item from ``data``.

    Refuses tags, duplicate map keys, indefinite lengths, nesting deeper than
    ``max_depth`` and trailing bytes. Raises only ``CborError``.
    """
    stream = io.BytesIO(data)
    decoder = cbor2.CBORDecoder(
        stream,
        tag_hook=_refuse_tag,
        semantic_decoders=_REFUSE_ALL,
        max_depth=max_depth,
        allow_indefinite=False,
        allow_duplicate_keys=False,
    )
    try:
        value = decoder.decode()
    except CborError:
        raise
    except Exception:  # noqa: BLE001 - cbor2 raises many types on hostile input
        raise CborError("malformed CBOR") from None
    if stream.tell() != len(data):
        raise CborError("trailing bytes after the CBOR item")
    return value
