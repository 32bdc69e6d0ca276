"""Fuzz shared.cbor.strict_loads: CborError only, never more permissive than cbor2 itself.

Seeds: tests/vectors/fuzz/cbor, the RPC payloads of tests/vectors/frames and the
simulator attestation document; byte mutations plus CBOR-aware ones (a head's
additional information rewritten to claim a huge length, a tag or indefinite item
wrapped around a valid one).
"""

from __future__ import annotations

import json
import math
import tracemalloc
from collections.abc import Sequence
from typing import Any

import cbor2
from hypothesis import example, given
from hypothesis import strategies as st

from shared.cbor import CborError, strict_loads
from tests.fuzz.mutations import Draw, mutated_bytes
from tests.fuzz.support import VECTORS, counted, fuzz_settings, load_seeds, load_world

SEEDS = load_seeds("cbor")
CORPUS: list[bytes] = [
    *SEEDS.values(),
    *(
        bytes.fromhex(v["frame"])[4:]
        for v in json.loads((VECTORS / "frames/frames.json").read_text())
    ),
    bytes.fromhex(load_world()["document_hex"]),
]
_PLAIN = (type(None), bool, int, float, str, bytes, list, dict, tuple, cbor2.frozendict,
          cbor2.CBORSimpleValue, type(cbor2.undefined))  # fmt: skip


def _claim_huge_length(draw: Draw, data: bytearray, _seeds: Sequence[bytes]) -> bytearray:
    """Rewrite one byte into a string/array/map head announcing a 4- or 8-byte length."""
    if data:
        position = draw(st.integers(0, len(data) - 1))
        major = draw(st.sampled_from((0x40, 0x60, 0x80, 0xA0)))
        width = draw(st.sampled_from((0x1A, 0x1B)))
        size = 4 if width == 0x1A else 8
        value = draw(st.sampled_from((2**31, 2**32 - 1, 2**63, 2**64 - 1)) | st.integers(0, 2**32))
        head = bytes([major | width]) + (value % 2 ** (8 * size)).to_bytes(size, "big")
        data[position : position + 1] = head
    return data


def _wrap(draw: Draw, data: bytearray, _seeds: Sequence[bytes]) -> bytearray:
    """Put a tag, an indefinite array or a nesting level around the item."""
    prefix, suffix = draw(
        st.sampled_from(
            (
                (b"\xc0", b""),
                (b"\xd8\x18", b""),
                (b"\xd9\xd9\xf7", b""),
                (b"\x9f", b"\xff"),
                (b"\x81", b""),
                (b"\x81" * 20, b""),
                (b"\xa1\x00", b""),
            )
        )
    )
    return bytearray(prefix) + data + bytearray(suffix)


def _check_plain(value: Any, depth: int = 0) -> None:
    assert depth <= 17
    assert isinstance(value, _PLAIN), type(value)
    if isinstance(value, list | tuple):
        for item in value:
            _check_plain(item, depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_plain(key, depth + 1)
            _check_plain(item, depth + 1)


def _same(left: Any, right: Any) -> bool:
    # NaN != NaN: compare the canonical re-encodings instead of the values.
    return bool(cbor2.dumps(left, canonical=True) == cbor2.dumps(right, canonical=True))


@fuzz_settings(deadline_ms=500)
@given(data=mutated_bytes(CORPUS, extra=[_claim_huge_length, _wrap]) | st.binary(max_size=64))
@example(data=SEEDS["map-claims-2-64-1"])
@example(data=SEEDS["tag-28-shareable"])
@counted("shared.cbor.strict_loads")
def test_strict_loads_raises_only_cbor_error(data: bytes) -> None:
    """Any bytes: CborError, or plain values that cbor2's permissive decoder agrees on,
    from input with no trailing byte and no tag (a tag in front is refused)."""
    try:
        value = strict_loads(data)
    except CborError:
        return
    _check_plain(value)
    assert _same(value, cbor2.loads(data))
    for extended in (data + b"\x00", b"\xc1" + data, b"\xd8\x20" + data):
        try:
            strict_loads(extended)
        except CborError:
            continue
        raise AssertionError("a trailing byte or a tag was accepted")


@fuzz_settings(deadline_ms=500)
@given(
    levels=st.integers(0, 40),
    max_depth=st.integers(1, 40),
    kind=st.sampled_from((b"\x81", b"\xa1\x00", b"\x82\x00")),
    leaf=st.sampled_from((b"\x00", b"\x80", b"\xa0", b"\x41\x00")),
)
@counted("shared.cbor.strict_loads")
def test_nesting_is_refused_exactly_beyond_max_depth(
    levels: int, max_depth: int, kind: bytes, leaf: bytes
) -> None:
    """Arrays or maps nested ``levels`` deep are accepted iff levels <= max_depth."""
    try:
        strict_loads(kind * levels + leaf, max_depth=max_depth)
    except CborError:
        assert levels > max_depth
    else:
        assert levels <= max_depth


_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=6) | st.integers(-5, 5), children, max_size=4)
    ),
    max_leaves=10,
)


@fuzz_settings(deadline_ms=500)
@given(value=_VALUES)
@counted("shared.cbor.strict_loads")
def test_plain_values_round_trip(value: Any) -> None:
    """Every plain value cbor2 encodes comes back equal (strict is not lossy)."""
    decoded = strict_loads(cbor2.dumps(value))
    assert _same(decoded, value)


@fuzz_settings(deadline_ms=1000)
@given(
    major=st.sampled_from((0x40, 0x60, 0x80, 0xA0)),
    length=st.integers(2**16, 2**64 - 1),
    body=st.binary(max_size=64),
)
@counted("shared.cbor.strict_loads")
def test_lying_lengths_cost_what_was_sent(major: int, length: int, body: bytes) -> None:
    """A head announcing up to 2**64-1 bytes or items with a short body is refused
    without allocating anything near the announced size."""
    data = bytes([major | 0x1B]) + length.to_bytes(8, "big") + body
    tracemalloc.start()
    try:
        try:
            strict_loads(data)
            raise AssertionError("a truncated item was accepted")
        except CborError:
            pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024


def test_every_seed_is_refused_or_plain() -> None:
    """The named seeds behave as their names say (refused unless plain and strict)."""
    accepted = {name for name, data in SEEDS.items() if _accepts(data)}
    assert accepted == {"map", "nested", "deep-16", "half-float-nan", "simple-undefined"}
    assert math.isnan(strict_loads(SEEDS["half-float-nan"]))


def _accepts(data: bytes) -> bool:
    try:
        strict_loads(data)
    except CborError:
        return False
    return True
