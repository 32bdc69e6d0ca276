"""Fuzz the parent's JSON body parsing (parent.api.validation.read_json_object).

Driven through aiohttp's own request factory (aiohttp.test_utils.make_mocked_request)
with a real StreamReader holding the body: the function sees what the server gives it.
Seeds: tests/vectors/fuzz/json_body (duplicate keys, NaN, 1e400, BOM, deep nesting...).
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any
from uuid import UUID

import pytest
from aiohttp import web
from aiohttp.streams import StreamReader
from aiohttp.test_utils import make_mocked_request
from hypothesis import example, given
from hypothesis import strategies as st

from parent.api.errors import ApiError
from parent.api.validation import (
    OwnerProofFields,
    check_record_metadata,
    check_session_metadata,
    owner_proof_from_body,
    parse_envelope,
    parse_nonce,
    parse_record_id,
    read_json_object,
    require_session_id,
)
from shared.envelope import Envelope
from tests.fuzz.mutations import Draw, json_values, mutated_bytes, mutated_json
from tests.fuzz.support import attempt, counted, fuzz_settings, load_seeds

SEEDS: dict[str, str] = load_seeds("json_body")
BODIES = [text.encode("utf-8", "surrogatepass") for text in SEEDS.values()]
MAX_BYTES = 64 * 1024
JSON = "application/json"


class _FlowControl:
    """The two calls StreamReader makes on its protocol for back-pressure."""

    def pause_reading(self) -> None:
        """Nothing to pause: the whole body is already in the buffer."""

    def resume_reading(self, *, resume_parser: bool = True) -> None:
        """Nothing to resume."""


async def _read(body: bytes, content_type: str, declared_length: int | None) -> dict[str, Any]:
    payload = StreamReader(_FlowControl(), 2**16, loop=asyncio.get_running_loop())  # type: ignore[arg-type]
    payload.feed_data(body)
    payload.feed_eof()
    headers = {"Content-Type": content_type}
    if declared_length is not None:
        headers["Content-Length"] = str(declared_length)
    request = make_mocked_request(
        "POST", "/api/sessions", headers=headers, payload=payload, client_max_size=MAX_BYTES
    )
    result = await read_json_object(request, max_bytes=MAX_BYTES)
    assert payload.at_eof()  # accepted bodies were read to the end
    return result


def _pairs_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    assert len({key for key, _ in pairs}) == len(pairs), "a duplicate key was accepted"
    return dict(pairs)


def _reference(body: bytes) -> Any:
    """What the standard library reads from an accepted body (and no duplicate keys)."""
    return json.loads(body.decode("utf-8"), object_pairs_hook=_pairs_without_duplicates)


def _bodies() -> st.SearchStrategy[bytes]:
    dumped = json_values(max_leaves=12).map(
        lambda value: json.dumps(value).encode("utf-8", "surrogatepass")
    )
    as_objects = mutated_json([json.loads(BODIES[1])]).map(
        lambda value: json.dumps({"envelope": value}).encode("utf-8", "surrogatepass")
    )
    return mutated_bytes(BODIES) | dumped | as_objects | st.binary(max_size=64)


@fuzz_settings(deadline_ms=1000)
@given(
    body=_bodies(),
    content_type=st.sampled_from(
        (JSON, JSON, f"{JSON}; charset=utf-8", f"{JSON}; charset=latin-1", "text/plain", "")
    ),
    honest_length=st.booleans(),
)
@example(body=SEEDS["deep"].encode(), content_type=JSON, honest_length=True)
@example(body=SEEDS["huge-int"].encode(), content_type=JSON, honest_length=True)
@counted("parent.api.validation.read_json_object")
def test_read_json_object_answers_a_dict_or_a_4xx(
    body: bytes, content_type: str, honest_length: bool
) -> None:
    """Any body: a dict equal to the stdlib reading without duplicate keys or NaN /
    Infinity literals, or ApiError 400 / 413 / 415 (aiohttp's own 413 past its cap)."""
    length = len(body) if honest_length else None
    result, error = attempt(lambda: asyncio.run(_read(body, content_type, length)), Exception)
    if result is None:
        if isinstance(error, web.HTTPRequestEntityTooLarge):
            assert len(body) > MAX_BYTES
            return
        assert isinstance(error, ApiError), repr(error)
        assert error.status in (400, 413, 415)
        return
    assert isinstance(result, dict)
    assert content_type.startswith(JSON) and "latin-1" not in content_type
    assert _same(result, _reference(body))
    for literal in (b"NaN", b"Infinity"):
        assert literal not in body or literal in json.dumps(result).encode()


def _same(left: Any, right: Any) -> bool:
    return json.dumps(left, sort_keys=True) == json.dumps(right, sort_keys=True)


@fuzz_settings(deadline_ms=1000)
@given(excess=st.integers(1, 2**40), body=st.sampled_from(BODIES))
@counted("parent.api.validation.read_json_object")
def test_a_declared_oversize_is_refused_before_reading(excess: int, body: bytes) -> None:
    """Content-Length above the cap: 413 and not a byte of the body consumed."""

    async def run() -> tuple[int, bytes]:
        payload = StreamReader(_FlowControl(), 2**16, loop=asyncio.get_running_loop())  # type: ignore[arg-type]
        payload.feed_data(body or b" ")
        payload.feed_eof()
        request = make_mocked_request(
            "POST",
            "/api/sessions",
            headers={"Content-Type": JSON, "Content-Length": str(MAX_BYTES + excess)},
            payload=payload,
        )
        with pytest.raises(ApiError) as caught:
            await read_json_object(request, max_bytes=MAX_BYTES)
        return caught.value.status, await payload.read()

    status, unread = asyncio.run(run())
    assert status == 413
    assert unread == (body or b" ")


def test_an_overflowing_number_is_not_smuggled_in_as_infinity() -> None:
    """'NaN and Infinity are not JSON': 1e400 must not become an infinite float either."""
    body = SEEDS["float-overflow"].encode()
    result, error = attempt(lambda: asyncio.run(_read(body, JSON, None)), ApiError)
    if result is None:
        assert error is not None and error.status == 400
        return
    assert all(math.isfinite(v) for v in result.values() if isinstance(v, float))


SUBMIT: dict[str, Any] = json.loads(BODIES[1])
_FIELD_CHECKS = {
    "envelope": lambda value: parse_envelope(value),
    "session_metadata": lambda value: check_session_metadata(value, min_ttl=60, max_ttl=604800),
    "record_metadata": lambda value: check_record_metadata(value),
    "owner_proof": lambda value: owner_proof_from_body(value),
    "nonce": lambda value: parse_nonce(value),
    "record_id": lambda value: parse_record_id(value),
    "session_id": lambda value: require_session_id(value),
}


@st.composite
def _field_inputs(draw: Draw) -> tuple[str, Any]:
    check = draw(st.sampled_from(sorted(_FIELD_CHECKS)))
    envelope = SUBMIT["envelope"]
    seeds: dict[str, list[Any]] = {
        "envelope": [envelope],
        "session_metadata": [envelope["metadata"]],
        "record_metadata": [{"purpose": "record", "label": "note"}],
        "owner_proof": [{"timestamp": 1748764800, "signature": "A" * 86 + "=="}],
        "nonce": ["00ff" * 16],
        "record_id": ["0f8fad5b-d9cb-469f-a165-70867728950e"],
        "session_id": ["s" * 43],
    }
    value = draw(mutated_json(seeds[check]))
    if check in ("nonce", "record_id") and not isinstance(value, str):
        value = json.dumps(value)  # these come from the URL: always text
    if check in ("session_metadata", "record_metadata", "owner_proof") and not isinstance(
        value, dict
    ):
        value = {"value": value}  # these get the body object (already a dict)
    return check, value


@fuzz_settings(deadline_ms=1000)
@given(case=_field_inputs())
@counted("parent.api.validation (field checks)")
def test_field_checks_answer_a_value_or_a_400(case: tuple[str, Any]) -> None:
    """Every field check of a parsed body returns or raises ApiError 400, nothing else."""
    check, value = case
    result, error = attempt(lambda: _FIELD_CHECKS[check](value), ApiError)
    if error is not None:
        assert error.status == 400 and error.code == "bad_request"
        assert not isinstance(value, str) or len(value) < 8 or value not in error.message
        return
    assert isinstance(result, _RETURNS[check])


_RETURNS: dict[str, type | tuple[type, ...]] = {
    "envelope": Envelope,
    "session_metadata": type(None),
    "record_metadata": str,
    "owner_proof": OwnerProofFields,
    "nonce": (bytes, type(None)),
    "record_id": UUID,
    "session_id": str,
}
