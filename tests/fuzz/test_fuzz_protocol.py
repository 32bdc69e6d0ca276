"""Fuzz shared.protocol: FrameDecoder and decode_message raise only RemoteProtocolError.

Seeds: every frame of tests/vectors/frames/frames.json plus tests/vectors/fuzz/frames.
Mutations: bit flips, truncations, splices, lying length headers, CBOR field swaps.
"""

from __future__ import annotations

import itertools
import struct
import tracemalloc
from collections.abc import Sequence
from typing import Any

import cbor2
import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from shared import protocol as p
from shared.errors import RemoteProtocolError
from tests.fuzz.mutations import Draw, mutated_bytes, mutated_json
from tests.fuzz.support import VECTORS, counted, fuzz_settings, load_seeds

FRAMES_JSON = (VECTORS / "frames" / "frames.json").read_text()
SEEDS = load_seeds("frames")


def _vector_frames() -> list[bytes]:
    import json

    return [bytes.fromhex(vector["frame"]) for vector in json.loads(FRAMES_JSON)]


VECTOR_FRAMES = _vector_frames()
STREAMS: list[bytes] = [*VECTOR_FRAMES, *SEEDS.values(), VECTOR_FRAMES[0] + VECTOR_FRAMES[-1]]
PAYLOADS: list[bytes] = [frame[4:] for frame in VECTOR_FRAMES]


def _frame_starts(data: bytes) -> list[int]:
    """Offsets of the length headers of the frames ``data`` claims to hold."""
    starts, offset = [], 0
    while offset + 4 <= len(data):
        starts.append(offset)
        (length,) = struct.unpack_from(">I", data, offset)
        offset += 4 + length
    return starts or [0]


def _lie_about_length(draw: Draw, data: bytearray, _seeds: Sequence[bytes]) -> bytearray:
    """Rewrite one frame's length header: zero, off by one, at or over the cap, all ones."""
    if len(data) < 4:
        return data
    start = draw(st.sampled_from(_frame_starts(bytes(data))))
    if start + 4 > len(data):
        return data
    (length,) = struct.unpack_from(">I", data, start)
    lie = draw(
        st.sampled_from(
            (0, 1, length - 1, length + 1, p.MAX_FRAME_SIZE, p.MAX_FRAME_SIZE + 1, 2**32 - 1)
        )
        | st.integers(0, 2**32 - 1)
    )
    struct.pack_into(">I", data, start, lie % 2**32)
    return data


def _reference(data: bytes, max_size: int) -> tuple[list[p.Message], bool, int]:
    """Decode ``data`` frame by frame in one pass: (messages, refused, bytes left over)."""
    messages: list[p.Message] = []
    offset = 0
    while len(data) - offset >= 4:
        (length,) = struct.unpack_from(">I", data, offset)
        if not 1 <= length <= max_size:
            return messages, True, 0
        if offset + 4 + length > len(data):
            break
        try:
            messages.append(p.decode_message(data[offset + 4 : offset + 4 + length]))
        except RemoteProtocolError:
            return messages, True, 0
        offset += 4 + length
    return messages, False, len(data) - offset


def _check_well_typed(message: p.Message) -> None:
    # A decoded message is a registered type that re-encodes and decodes to itself.
    assert type(message).TYPE and isinstance(message, p.Request | p.Reply)
    assert message.request_id >= 0
    assert p.decode_message(p.encode_message(message)) == message


@st.composite
def _chunks(draw: Draw, data: bytes) -> list[bytes]:
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=6)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@fuzz_settings(deadline_ms=1000)
@given(
    data=mutated_bytes(STREAMS, extra=[_lie_about_length]),
    max_size=st.sampled_from((p.MAX_FRAME_SIZE, 300, 64)),
    split=st.data(),
)
@example(data=SEEDS["version-as-true"], max_size=p.MAX_FRAME_SIZE, split=None)
@example(data=SEEDS["length-max-plus-one"], max_size=p.MAX_FRAME_SIZE, split=None)
@example(data=SEEDS["two-frames"], max_size=p.MAX_FRAME_SIZE, split=None)
@counted("shared.protocol.FrameDecoder")
def test_frame_decoder_raises_only_remote_protocol_error(
    data: bytes, max_size: int, split: Any
) -> None:
    """Whatever the bytes and however the stream is cut, the decoder returns exactly the
    messages a one-pass reference decode finds, or RemoteProtocolError and stays failed;
    it never holds a whole frame's worth of bytes it could have decoded."""
    chunks = [data] if split is None else split.draw(_chunks(data))
    expected, refused, left_over = _reference(data, max_size)
    decoder = p.FrameDecoder(max_frame_size=max_size)
    delivered: list[p.Message] = []
    failed = False
    for chunk in chunks:
        try:
            delivered.extend(decoder.feed(chunk))
        except RemoteProtocolError:
            failed = True
            break
        assert decoder.pending < 4 + max_size
    assert delivered == expected[: len(delivered)]
    for message in delivered:
        _check_well_typed(message)
    if failed:
        assert refused
        assert decoder.pending == 0
        with pytest.raises(RemoteProtocolError):
            decoder.feed(b"\x00")
        return
    assert not refused
    assert delivered == expected
    assert decoder.pending == left_over
    if left_over:
        with pytest.raises(RemoteProtocolError):
            decoder.close()
    else:
        decoder.close()


@st.composite
def _field_swaps(draw: Draw) -> bytes:
    """A vector payload decoded, one to three fields mutated as values, re-encoded."""
    body = cbor2.loads(draw(st.sampled_from(PAYLOADS)))
    if draw(st.booleans()):
        body = draw(mutated_json([body]))
    else:
        key = draw(st.sampled_from(sorted(body)))
        body[key] = draw(
            st.sampled_from((2.0, True, -1, 2**63, -(2**63) - 1, 2**64 - 1, b"", "", None, []))
            | st.binary(max_size=40)
        )
    try:
        return bytes(cbor2.dumps(body))
    except (ValueError, TypeError, cbor2.CBOREncodeError):
        assume(False)
        raise AssertionError("unreachable") from None


@fuzz_settings(deadline_ms=1000)
@given(payload=mutated_bytes(PAYLOADS) | _field_swaps())
@counted("shared.protocol.decode_message")
def test_decode_message_raises_only_remote_protocol_error(payload: bytes) -> None:
    """A mutated payload decodes to a well-typed message or raises RemoteProtocolError."""
    try:
        message = p.decode_message(payload)
    except RemoteProtocolError:
        return
    _check_well_typed(message)


@fuzz_settings(deadline_ms=500)
@given(
    max_size=st.integers(1, 4096) | st.just(p.MAX_FRAME_SIZE),
    excess=st.integers(1, 2**31),
    cut=st.integers(1, 3),
)
@counted("shared.protocol.FrameDecoder")
def test_a_length_over_the_cap_is_refused_by_its_header_alone(
    max_size: int, excess: int, cut: int
) -> None:
    """A header announcing more than the cap fails the byte it completes, before any
    payload byte is buffered, even when the header arrives in two pieces."""
    length = min(max_size + excess, 2**32 - 1)
    header = struct.pack(">I", length)
    decoder = p.FrameDecoder(max_frame_size=max_size)
    assert decoder.feed(header[:cut]) == []
    with pytest.raises(RemoteProtocolError):
        decoder.feed(header[cut:])
    assert decoder.pending == 0


def test_a_frame_at_the_cap_is_not_allocated_before_its_bytes_arrive() -> None:
    """A header claiming MAX_FRAME_SIZE costs what was sent, not 4 MiB up front."""
    decoder = p.FrameDecoder()
    tracemalloc.start()
    try:
        decoder.feed(struct.pack(">I", p.MAX_FRAME_SIZE) + bytes(1024))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert decoder.pending == 4 + 1024
    assert peak < 256 * 1024


def test_a_float_protocol_version_is_refused() -> None:
    """The CBOR float 2.0 is not protocol version 2 (one encoding per message)."""
    with pytest.raises(RemoteProtocolError):
        p.FrameDecoder().feed(SEEDS["version-as-float"])
