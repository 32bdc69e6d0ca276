"""The parent<->enclave wire protocol: exact frames, strict decoding, fuzzing."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared import protocol as p
from shared.errors import LocalProtocolError, RemoteProtocolError

VECTORS = json.loads((Path(__file__).parent / "vectors" / "frames" / "frames.json").read_text())
MESSAGE_CLASSES = {
    cls.TYPE: cls
    for name in p.__all__
    if isinstance(cls := getattr(p, name), type) and issubclass(cls, p.Message) and cls.TYPE
}


_TUPLE_FIELDS = frozenset({"sealed", "entries", "states", "acquire", "release"})


def from_jsonable(value: Any) -> Any:
    """Inverse of the generator's to_jsonable."""
    if isinstance(value, dict) and set(value) == {"$bytes"}:
        return bytes.fromhex(value["$bytes"])
    return value


def build(vector: dict[str, Any]) -> p.Message:
    """The message a vector describes."""
    cls = MESSAGE_CLASSES[vector["type"]]
    values = {name: from_jsonable(value) for name, value in vector["fields"].items()}
    for name, value in values.items():
        if isinstance(value, list) and name in _TUPLE_FIELDS:
            values[name] = tuple(from_jsonable(item) for item in value)
    if "code" in values:
        values["code"] = p.ErrorCode(values["code"])
    return cls(**values)


def framed(payload: bytes) -> bytes:
    """Length-prefix raw payload bytes."""
    return struct.pack(">I", len(payload)) + payload


def frame_of(body: Any) -> bytes:
    """Frame an arbitrary CBOR body, bypassing the encoder's checks."""
    return framed(cbor2.dumps(body))


def test_vectors_cover_every_message_type() -> None:
    """Every registered message type has at least one frame vector."""
    assert {v["type"] for v in VECTORS} == set(MESSAGE_CLASSES)


@pytest.mark.parametrize("vector", VECTORS, ids=[v["type"] for v in VECTORS])
def test_encode_gives_exact_frame(vector: dict[str, Any]) -> None:
    """Encoding a message gives exactly the recorded frame bytes."""
    assert p.encode_frame(build(vector)).hex() == vector["frame"]


@pytest.mark.parametrize("vector", VECTORS, ids=[v["type"] for v in VECTORS])
def test_decode_gives_the_message(vector: dict[str, Any]) -> None:
    """Decoding the recorded frame gives back the equal, typed message."""
    (message,) = p.FrameDecoder().feed(bytes.fromhex(vector["frame"]))
    assert message == build(vector)
    assert type(message) is MESSAGE_CLASSES[vector["type"]]


def test_stream_split_anywhere_gives_same_messages() -> None:
    """A stream of many frames fed one byte at a time decodes to the same messages."""
    stream = b"".join(bytes.fromhex(v["frame"]) for v in VECTORS)
    decoder = p.FrameDecoder()
    out: list[p.Message] = []
    for i in range(len(stream)):
        out.extend(decoder.feed(stream[i : i + 1]))
    assert out == [build(v) for v in VECTORS]
    assert decoder.pending == 0
    decoder.close()


def test_every_request_type_has_a_reply_type() -> None:
    """REPLY_TYPES maps every request class to a reply class."""
    requests = {c for c in MESSAGE_CLASSES.values() if issubclass(c, p.Request)}
    assert set(p.REPLY_TYPES) == requests
    assert all(issubclass(r, p.Reply) for r in p.REPLY_TYPES.values())


GOOD = {"v": 2, "t": "summary", "id": 5, "session_id": "abc"}

BAD_BODIES: list[tuple[str, Any]] = [
    ("unknown type", {**GOOD, "t": "launch_missiles"}),
    ("type not a string", {**GOOD, "t": 3}),
    ("wrong version", {**GOOD, "v": 1}),  # the previous protocol
    ("future version", {**GOOD, "v": 3}),
    ("version as bool", {**GOOD, "v": True}),
    ("missing version", {k: v for k, v in GOOD.items() if k != "v"}),
    ("missing field", {k: v for k, v in GOOD.items() if k != "session_id"}),
    ("missing id", {k: v for k, v in GOOD.items() if k != "id"}),
    ("extra field", {**GOOD, "admin": True}),
    ("str field as bytes", {**GOOD, "session_id": b"abc"}),
    ("str field as int", {**GOOD, "session_id": 1}),
    ("id as string", {**GOOD, "id": "5"}),
    ("id as bool", {**GOOD, "id": True}),
    ("negative id", {**GOOD, "id": -1}),
    ("id beyond 64 bits", {**GOOD, "id": 2**64}),
    ("not a map", [1, 2, 3]),
    ("bytes field as str", {"v": 2, "t": "attest", "id": 1, "nonce": "00"}),
    ("bool field as int", {"v": 2, "t": "confirm", "id": 1, "session_id": "s", "commit": 1}),
    ("tuple field as bytes", {"v": 2, "t": "restore", "id": 1, "sealed": b"", "revocations": None}),
    (
        "tuple item wrong type",
        {"v": 2, "t": "restore", "id": 1, "sealed": ["a"], "revocations": None},
    ),
    ("json field not a map", {"v": 2, "t": "metrics_reply", "id": 1, "metrics": [1]}),
    ("json key not a string", {"v": 2, "t": "metrics_reply", "id": 1, "metrics": {1: 2}}),
    ("json holds bytes", {"v": 2, "t": "metrics_reply", "id": 1, "metrics": {"a": b"x"}}),
    ("json holds NaN", {"v": 2, "t": "metrics_reply", "id": 1, "metrics": {"a": float("nan")}}),
    ("unknown error code", {"v": 2, "t": "error", "id": 1, "code": "teapot", "message": "m"}),
]


@pytest.mark.parametrize(("case", "body"), BAD_BODIES, ids=[c for c, _ in BAD_BODIES])
def test_invalid_message_is_refused(case: str, body: Any) -> None:
    """Each malformed message body raises RemoteProtocolError and nothing else."""
    with pytest.raises(RemoteProtocolError):
        p.FrameDecoder().feed(frame_of(body))


BAD_STREAMS: list[tuple[str, bytes]] = [
    ("zero length", b"\x00\x00\x00\x00"),
    ("oversize length", struct.pack(">I", p.MAX_FRAME_SIZE + 1)),
    ("max uint32 length", b"\xff\xff\xff\xff"),
    ("payload not CBOR", b"\x00\x00\x00\x01\xff"),
    ("trailing bytes in payload", framed(cbor2.dumps(GOOD) + b"\x00")),
    ("semantic tag 1 around the message", framed(b"\xc1" + cbor2.dumps(GOOD))),
    ("unknown tag 42 around the message", framed(b"\xd8\x2a" + cbor2.dumps(GOOD))),
    ("tagged field value", framed(cbor2.dumps({**GOOD, "session_id": cbor2.CBORTag(32, "x")}))),
    ("duplicate keys", framed(b"\xa2\x61a\x01\x61a\x02")),
    ("indefinite map", framed(b"\xbf\xff")),
    ("truncated CBOR in payload", framed(cbor2.dumps(GOOD)[:-2])),
]


@pytest.mark.parametrize(("case", "data"), BAD_STREAMS, ids=[c for c, _ in BAD_STREAMS])
def test_invalid_frame_is_refused(case: str, data: bytes) -> None:
    """Bad lengths and non-strict CBOR raise RemoteProtocolError."""
    with pytest.raises(RemoteProtocolError):
        p.FrameDecoder().feed(data)


def test_oversize_refused_before_payload_arrives() -> None:
    """An oversized length is refused from its 4-byte header alone, nothing buffered."""
    decoder = p.FrameDecoder(max_frame_size=1024)
    with pytest.raises(RemoteProtocolError, match="outside"):
        decoder.feed(struct.pack(">I", 1025))
    assert decoder.pending == 0


def test_truncated_stream_is_refused_at_close() -> None:
    """A stream ending inside a frame is a protocol error, not silence."""
    frame = p.encode_frame(p.Health(request_id=1))
    decoder = p.FrameDecoder()
    assert decoder.feed(frame[:-1]) == []
    with pytest.raises(RemoteProtocolError, match="inside a frame"):
        decoder.close()


def test_decoder_stays_failed_after_an_error() -> None:
    """After a protocol error the decoder refuses further input (position untrusted)."""
    decoder = p.FrameDecoder()
    with pytest.raises(RemoteProtocolError):
        decoder.feed(b"\x00\x00\x00\x00")
    with pytest.raises(RemoteProtocolError, match="already failed"):
        decoder.feed(p.encode_frame(p.Health(request_id=1)))


def test_encoder_refuses_wrong_types() -> None:
    """Encoding a message with a mistyped field is a LocalProtocolError (our bug)."""
    with pytest.raises(LocalProtocolError):
        p.encode_frame(p.Attest(request_id=1, nonce="not bytes"))  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        p.encode_frame(p.MetricsReply(request_id=1, metrics={"x": float("inf")}))


def test_encoder_refuses_oversize_message() -> None:
    """A message bigger than MAX_FRAME_SIZE cannot be sent."""
    with pytest.raises(LocalProtocolError, match="maximum frame size"):
        p.encode_frame(
            p.AttestReply(request_id=1, document=bytes(p.MAX_FRAME_SIZE), pq_public=None)
        )


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_raise_only_protocol_errors(data: bytes) -> None:
    """Whatever bytes arrive, the decoder returns messages or raises RemoteProtocolError."""
    decoder = p.FrameDecoder()
    try:
        messages = decoder.feed(data)
        decoder.close()
    except RemoteProtocolError:
        return
    assert all(isinstance(m, p.Message) for m in messages)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=400))
def test_arbitrary_payload_in_valid_frame_raises_only_protocol_errors(payload: bytes) -> None:
    """A correctly framed but arbitrary payload never escapes as another exception."""
    try:
        messages = p.FrameDecoder().feed(struct.pack(">I", len(payload)) + payload)
    except RemoteProtocolError:
        return
    assert len(messages) == 1
    assert isinstance(messages[0], p.Message)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(
    request_id=st.integers(min_value=0, max_value=2**63 - 1),
    metrics=st.dictionaries(st.text(max_size=8), json_values, max_size=5),
    cut=st.integers(min_value=0, max_value=10_000),
)
def test_round_trip_any_json_and_split(request_id: int, metrics: dict[str, Any], cut: int) -> None:
    """Any JSON-compatible payload survives encode/decode whatever the read boundaries."""
    message = p.MetricsReply(request_id=request_id, metrics=metrics)
    frame = p.encode_frame(message)
    cut %= len(frame) + 1
    decoder = p.FrameDecoder()
    out = decoder.feed(frame[:cut]) + decoder.feed(frame[cut:])
    assert out == [message]
