"""Fuzz shared.encoding.b64decode: ValueError only, canonical form only, size cap kept.

Seeds: tests/vectors/fuzz/base64 ({text, max_len}); mutations: one character changed,
cut, extended, case-flipped, or the bytes behind it bit-flipped and re-encoded.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import shared.encoding as encoding
from shared.encoding import b64decode, b64encode
from tests.fuzz.mutations import Draw, _mutate_string
from tests.fuzz.support import attempt, counted, fuzz_settings, load_seeds

SEEDS = load_seeds("base64")
TEXTS = [seed["text"] for seed in SEEDS.values()]
CAPS = st.none() | st.integers(0, 40)


@st.composite
def _texts(draw: Draw) -> str:
    text = draw(st.sampled_from(TEXTS) | st.binary(max_size=40).map(b64encode))
    for _ in range(draw(st.integers(0, 3))):
        text = _mutate_string(draw, text)
    return text


def _check(text: Any, max_len: int | None) -> None:
    raw, error = attempt(lambda: b64decode(text, max_len=max_len), ValueError)
    if raw is None:
        # The message never echoes the input (it may be a secret).
        assert not isinstance(text, str) or len(text) < 4 or text not in str(error)
        return
    assert isinstance(raw, bytes)
    assert b64encode(raw) == text  # canonical: one spelling per byte string
    assert max_len is None or len(raw) <= max_len


@fuzz_settings(deadline_ms=500)
@given(text=_texts() | st.text(max_size=40), max_len=CAPS)
@example(text=SEEDS["decoded-over-cap"]["text"], max_len=SEEDS["decoded-over-cap"]["max_len"])
@counted("shared.encoding.b64decode")
def test_b64decode_raises_only_value_error(text: str, max_len: int | None) -> None:
    """Any text: the canonical bytes it spells (within max_len), or ValueError."""
    _check(text, max_len)


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_every_seed(name: str) -> None:
    """Each seed, regression seeds included, keeps the same promise."""
    _check(SEEDS[name]["text"], SEEDS[name]["max_len"])


@fuzz_settings(deadline_ms=500)
@given(raw=st.binary(max_size=100), slack=st.none() | st.integers(0, 3))
@counted("shared.encoding.b64decode")
def test_canonical_base64_round_trips(raw: bytes, slack: int | None) -> None:
    """What b64encode writes, b64decode reads back, at any cap >= its size."""
    assert b64decode(b64encode(raw), max_len=None if slack is None else len(raw) + slack) == raw


@fuzz_settings(deadline_ms=500)
@given(value=st.binary() | st.integers() | st.none() | st.lists(st.text(max_size=3)))
@counted("shared.encoding.b64decode")
def test_non_strings_are_refused(value: Any) -> None:
    """Bytes, numbers, None and lists are not base64 text: ValueError."""
    with pytest.raises(ValueError, match="expected a base64 string"):
        b64decode(value)


@fuzz_settings(deadline_ms=500)
@given(max_len=st.integers(0, 4096), extra=st.integers(1, 10**6))
@counted("shared.encoding.b64decode")
def test_over_the_cap_is_refused_before_decoding(max_len: int, extra: int) -> None:
    """Text longer than the cap's encoding is refused without running the decoder."""
    text = "A" * (4 * ((max_len + 2) // 3) + extra)
    decoder = base64.b64decode
    calls: list[object] = []
    encoding.base64.b64decode = lambda *args, **kwargs: calls.append(args)  # type: ignore[assignment]
    try:
        with pytest.raises(ValueError, match="too long"):
            b64decode(text, max_len=max_len)
    finally:
        encoding.base64.b64decode = decoder
    assert calls == []
