"""Fuzz shared.sealed_state.SealedHeader.parse: SealedStateError only, exact header.

Seeds: tests/vectors/fuzz/sealed_state (a state blob, a revocation list, the minimum
size and one byte under it, a wrong magic).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.sealed_state import (
    HEADER_SIZE,
    MAX_SEALED_SIZE,
    REVOCATIONS_MAGIC,
    STATE_MAGIC,
    SealedHeader,
    SealedStateError,
)
from tests.fuzz.mutations import mutated_bytes
from tests.fuzz.support import attempt, counted, fuzz_settings, load_seeds

SEEDS = load_seeds("sealed_state")
MINIMUM = HEADER_SIZE + 12 + 16


@fuzz_settings(deadline_ms=500)
@given(
    blob=mutated_bytes(list(SEEDS.values())) | st.binary(max_size=120),
    magic=st.sampled_from((STATE_MAGIC, REVOCATIONS_MAGIC)),
    as_bytearray=st.booleans(),
)
@counted("shared.sealed_state.SealedHeader.parse")
def test_parse_raises_only_sealed_state_error(
    blob: bytes, magic: bytes, as_bytearray: bool
) -> None:
    """Any bytes: the header they start with (right magic, possible size) or
    SealedStateError."""
    data = bytearray(blob) if as_bytearray else blob
    header, _ = attempt(lambda: SealedHeader.parse(data, magic=magic), SealedStateError)
    if header is None:
        assert len(blob) < MINIMUM or blob[:4] != magic
        return
    assert header.magic == magic and MINIMUM <= len(blob) <= MAX_SEALED_SIZE
    assert header.encode() == blob[:HEADER_SIZE]
    assert 0 <= header.version < 2**64 and 0 <= header.expires_at < 2**64


@fuzz_settings(deadline_ms=500)
@given(value=st.none() | st.integers() | st.text(max_size=80) | st.lists(st.integers(0, 255)))
@counted("shared.sealed_state.SealedHeader.parse")
def test_non_bytes_are_refused(value: Any) -> None:
    """Text, numbers, lists and None are not sealed blobs."""
    with pytest.raises(SealedStateError):
        SealedHeader.parse(value)


def test_oversized_blobs_are_refused_from_their_length() -> None:
    """One byte over MAX_SEALED_SIZE is refused whatever it starts with."""
    blob = SEEDS["state"] + bytes(MAX_SEALED_SIZE + 1 - len(SEEDS["state"]))
    with pytest.raises(SealedStateError, match="impossible size"):
        SealedHeader.parse(blob)
    assert SealedHeader.parse(blob[:-1]).magic == STATE_MAGIC
