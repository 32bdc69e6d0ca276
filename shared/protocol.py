"""Parent <-> enclave RPC: typed messages and their framing. Side: parent and enclave.

Sans-IO, in the manner of h11: bytes go in, messages come out, and no socket or
event loop is touched here, so the codec is tested with vectors and fuzzed.

Wire format (DESIGN.md section 3)::

    frame   = length payload
    length  = 4-byte big-endian unsigned integer, 1 <= length <= MAX_FRAME_SIZE
    payload = one CBOR map (RFC 8949), no tags, definite lengths, no duplicate keys:
              {"v": PROTOCOL_VERSION, "t": <message type>, "id": <request id>, <fields>...}

Every message carries the protocol version and a request id. A reply echoes the
id of its request, which lets one persistent connection carry many concurrent
calls. Decoding is strict: an unknown type, a missing or extra field, a value of
the wrong type, an oversized or truncated frame all raise ``RemoteProtocolError``
and nothing else. After an error a ``FrameDecoder`` stays failed, because the
stream position can no longer be trusted.

Errors carried in ``ErrorReply`` have a code from ``ErrorCode`` and a message
that never contains secret material: the enclave builds them from fixed strings.
"""

from __future__ import annotations

import enum
import math
import struct
import types
import typing
from dataclasses import dataclass, fields
from typing import Any, ClassVar, TypeVar, Union

import cbor2

from shared.cbor import CborError, strict_loads
from shared.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "ENVELOPE_FIELDS",
    "MAX_FRAME_SIZE",
    "PROTOCOL_VERSION",
    "REPLY_TYPES",
    "Aggregates",
    "AggregatesReply",
    "Attest",
    "AttestReply",
    "Confirm",
    "Checkpoint",
    "CheckpointReply",
    "ConfirmReply",
    "DiscloseTrade",
    "DiscloseTradeReply",
    "ErrorCode",
    "ErrorReply",
    "FrameDecoder",
    "Health",
    "HealthReply",
    "JsonObject",
    "Logs",
    "LogsReply",
    "Message",
    "MetricsReply",
    "Reply",
    "Request",
    "Lease",
    "LeaseReply",
    "Restore",
    "RestoreReply",
    "Revoke",
    "RevokeReply",
    "SealRecord",
    "SealRecordReply",
    "SessionMetrics",
    "Stats",
    "StatsReply",
    "Submit",
    "SubmitReply",
    "Summary",
    "SummaryReply",
    "Unlock",
    "UnlockReply",
    "UnsealRecord",
    "UnsealRecordReply",
    "decode_message",
    "encode_frame",
    "encode_message",
]

PROTOCOL_VERSION = 2
"""Bumped on any incompatible change; a peer speaking another version is refused."""

MAX_FRAME_SIZE = 4 * 1024 * 1024
"""Hard cap on one frame's payload. The largest legitimate message (a signed
report with its daily series) is far below it; anything bigger is hostile."""

_LENGTH = struct.Struct(">I")
_MAX_INT = 2**63 - 1
_MIN_INT = -(2**63)
_MAX_JSON_DEPTH = 12

JsonObject = dict[str, Any]
"""A JSON-compatible object: str keys; values str, int, finite float, bool, None,
lists and objects of the same, nested at most a few levels."""

M = TypeVar("M", bound="Message")

ENVELOPE_FIELDS = ("alg", "ephemeral_pub", "nonce", "ciphertext", "tag", "metadata")
"""The credential-envelope fields Submit and SealRecord carry flat (shared.envelope.Envelope)."""


class ErrorCode(enum.StrEnum):
    """Why the enclave refused a request; the parent maps each to an HTTP status."""

    BAD_REQUEST = "bad_request"  # 400: well-formed frame, invalid content
    NOT_FOUND = "not_found"  # 404: unknown, expired or revoked session / record
    REPLAYED = "replayed"  # 409: this envelope was submitted before
    UNDECRYPTABLE = "undecryptable"  # 422: the envelope does not open
    TOO_LARGE = "too_large"  # 413
    FORBIDDEN = "forbidden"  # 403: owner proof missing or invalid
    UNAVAILABLE = "unavailable"  # 503: the enclave cannot serve this now
    UNSUPPORTED = "unsupported"  # 501: method known to the protocol, not enabled here
    INTERNAL = "internal"  # 500: a bug; the message is generic


# --------------------------------------------------------------------------- values


def _check_json(value: Any, depth: int) -> bool:
    """True when ``value`` is JSON-compatible (finite floats, str keys, bounded depth)."""
    if depth > _MAX_JSON_DEPTH:
        return False
    if value is None or isinstance(value, (str, bool)):
        return True
    if isinstance(value, int):
        return _MIN_INT <= value <= _MAX_INT
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_check_json(item, depth + 1) for item in value)
    if isinstance(value, dict):
        return all(
            isinstance(key, str) and _check_json(item, depth + 1) for key, item in value.items()
        )
    return False


Checker = typing.Callable[[Any], bool]


def _is_int(value: Any) -> bool:
    # bool is an int subclass in Python; the wire keeps them distinct.
    return type(value) is int and _MIN_INT <= value <= _MAX_INT


def _checker(annotation: Any) -> Checker:
    """Compile a field annotation into a fast type check for decoded CBOR values."""
    origin = typing.get_origin(annotation)
    if origin is Union or origin is types.UnionType:
        options = [_checker(option) for option in typing.get_args(annotation)]
        return lambda value: any(check(value) for check in options)
    if annotation is type(None):
        return lambda value: value is None
    if annotation is bool:
        return lambda value: type(value) is bool
    if annotation is int:
        return _is_int
    if annotation is str:
        return lambda value: type(value) is str
    if annotation is ErrorCode:
        return lambda value: isinstance(value, str) and value in ErrorCode._value2member_map_
    if annotation is bytes:
        return lambda value: type(value) is bytes
    if origin is tuple:  # tuple[bytes, ...], a CBOR array on the wire
        item_check = _checker(typing.get_args(annotation)[0])
        return lambda value: type(value) is list and all(item_check(item) for item in value)
    if origin is dict:  # JsonObject
        return lambda value: type(value) is dict and _check_json(value, 0)
    raise TypeError(f"unsupported field annotation {annotation!r}")  # a bug in this module


# --------------------------------------------------------------------------- schema


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """Base of every message: the request id that pairs a reply with its request."""

    TYPE: ClassVar[str] = ""
    request_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Request(Message):
    """A call from the parent to the enclave."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply(Message):
    """The enclave's answer to one request (same request id)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class _Field:
    """One field of a message, compiled once at import for fast encode/decode."""

    name: str
    wire: str
    check: typing.Callable[[Any], bool]
    is_tuple: bool
    is_code: bool


_WIRE_NAMES = {"request_id": "id"}
_REGISTRY: dict[str, type[Message]] = {}
_SCHEMAS: dict[type[Message], tuple[_Field, ...]] = {}


def _register(type_name: str) -> typing.Callable[[type[M]], type[M]]:
    """Give a message class its wire type name and precompute its field schema."""

    def decorate(cls: type[M]) -> type[M]:
        if type_name in _REGISTRY:
            raise RuntimeError(f"duplicate message type {type_name}")
        cls.TYPE = type_name
        hints = typing.get_type_hints(cls)
        _SCHEMAS[cls] = tuple(
            _Field(
                name=f.name,
                wire=_WIRE_NAMES.get(f.name, f.name),
                check=_checker(hints[f.name]),
                is_tuple=typing.get_origin(hints[f.name]) is tuple,
                is_code=hints[f.name] is ErrorCode,
            )
            for f in fields(cls)
        )
        _REGISTRY[type_name] = cls
        return cls

    return decorate


# --------------------------------------------------------------------------- requests


@_register("attest")
@dataclass(frozen=True, slots=True, kw_only=True)
class Attest(Request):
    """Ask for an attestation document that echoes the client's nonce."""

    nonce: bytes


@_register("submit")
@dataclass(frozen=True, slots=True, kw_only=True)
class Submit(Request):
    """Hand over a sealed credential envelope; the enclave opens a *pending* session.

    The session becomes live only on ``Confirm(commit=True)``, sent once the parent
    has stored the ciphertext, so a failed database write leaves nothing behind.
    """

    alg: str
    ephemeral_pub: bytes
    nonce: bytes
    ciphertext: bytes
    tag: bytes
    metadata: JsonObject


@_register("confirm")
@dataclass(frozen=True, slots=True, kw_only=True)
class Confirm(Request):
    """Activate (commit=True) or discard (commit=False) a pending session."""

    session_id: str
    commit: bool


@_register("aggregates")
@dataclass(frozen=True, slots=True, kw_only=True)
class Aggregates(Request):
    """Ask for a newly signed performance report for a session."""

    session_id: str


@_register("metrics")
@dataclass(frozen=True, slots=True, kw_only=True)
class SessionMetrics(Request):
    """Ask for the detailed metrics of a session."""

    session_id: str


@_register("summary")
@dataclass(frozen=True, slots=True, kw_only=True)
class Summary(Request):
    """Ask for the headline figures and polling state of a session."""

    session_id: str


@_register("revoke")
@dataclass(frozen=True, slots=True, kw_only=True)
class Revoke(Request):
    """End a session now; an owner proof is required when the session has an owner.

    ``log_start`` is how many transparency-log entries the parent already stores: the
    reply carries the rest, ending with the ``revoke`` entry, and the final signed head.
    """

    session_id: str
    proof_timestamp: int | None
    proof_signature: str | None
    log_start: int


@_register("logs")
@dataclass(frozen=True, slots=True, kw_only=True)
class Logs(Request):
    """Ask for a session's transparency-log entries from ``start`` and a fresh signed head."""

    session_id: str
    start: int


@_register("disclose_trade")
@dataclass(frozen=True, slots=True, kw_only=True)
class DiscloseTrade(Request):
    """Owner only: one committed trade, its salt and inclusion proof, sealed to the owner.

    ``tree_size`` picks the tree the proof is for (a signed report's
    ``merkle_tree_size``); None means the current tree.
    """

    session_id: str
    symbol: str
    trade_id: str
    tree_size: int | None
    proof_timestamp: int
    proof_signature: str


@_register("unlock")
@dataclass(frozen=True, slots=True, kw_only=True)
class Unlock(Request):
    """Give the enclave AWS credentials and its sealed identity, or ask it to create one.

    With ``wrapped_key`` None the enclave asks KMS for a new data key (GenerateDataKey
    with its attestation as Recipient) and seals its current service keys under it;
    otherwise it asks KMS to decrypt ``wrapped_key`` and adopts the service keys in
    ``sealed_keys``. Until an Unlock succeeds the enclave serves nothing but health.
    """

    aws_access_key_id: str
    aws_secret_access_key: str
    aws_session_token: str | None
    region: str
    key_id: str
    wrapped_key: bytes | None
    sealed_keys: bytes | None


@_register("restore")
@dataclass(frozen=True, slots=True, kw_only=True)
class Restore(Request):
    """Replay sealed session states (a batch) and the sealed revocation list."""

    sealed: tuple[bytes, ...]
    revocations: bytes | None


@_register("lease")
@dataclass(frozen=True, slots=True, kw_only=True)
class Lease(Request):
    """Which sessions this replica now polls (``acquire``) and gives up (``release``).

    The parent holds the sessions' leases in PostgreSQL (parent/leases.py). A restored
    session is not polled until it is acquired; a released one stops being polled and
    is forgotten (another replica serves it now, from its own restored copy). Both are
    session hashes; unknown ones are ignored.
    """

    acquire: tuple[bytes, ...]
    release: tuple[bytes, ...]


@_register("checkpoint")
@dataclass(frozen=True, slots=True, kw_only=True)
class Checkpoint(Request):
    """Ask for the sealed state of sessions that changed since their last checkpoint."""

    max_sessions: int


@_register("seal_record")
@dataclass(frozen=True, slots=True, kw_only=True)
class SealRecord(Request):
    """Seal a record the owner encrypted to the enclave; the parent stores the result."""

    session_id: str
    alg: str
    ephemeral_pub: bytes
    nonce: bytes
    ciphertext: bytes
    tag: bytes
    metadata: JsonObject
    proof_timestamp: int | None
    proof_signature: str | None


@_register("unseal_record")
@dataclass(frozen=True, slots=True, kw_only=True)
class UnsealRecord(Request):
    """Open a sealed record and re-encrypt it to the session owner's key.

    ``label`` is the one stored beside the blob; it is bound into the seal's AAD, so
    a parent that swaps labels or blobs gets UNDECRYPTABLE, not a mislabelled record.
    """

    session_id: str
    record_id: str
    label: str
    sealed: bytes
    proof_timestamp: int
    proof_signature: str


@_register("health")
@dataclass(frozen=True, slots=True, kw_only=True)
class Health(Request):
    """Liveness and identity of the enclave."""


@_register("stats")
@dataclass(frozen=True, slots=True, kw_only=True)
class Stats(Request):
    """Operation counters (no per-session data)."""


# --------------------------------------------------------------------------- replies


@_register("attest_reply")
@dataclass(frozen=True, slots=True, kw_only=True)
class AttestReply(Reply):
    """The COSE_Sign1 attestation document, verbatim from the NSM.

    ``pq_public`` is the enclave's 1216-byte ML-KEM-768+X25519 public key, sent beside
    the document because user_data only has room for its SHA-256 ("pq"); clients use
    it only after checking that hash.
    """

    document: bytes
    pq_public: bytes | None


@_register("submit_reply")
@dataclass(frozen=True, slots=True, kw_only=True)
class SubmitReply(Reply):
    """A pending session: its id (a bearer secret for the client) and expiry."""

    session_id: str
    expires_at: int
    exchange: str
    label: str


@_register("confirm_reply")
@dataclass(frozen=True, slots=True, kw_only=True)
class ConfirmReply(Reply):
    """The pending session was activated or discarded as asked.

    ``sealed_state`` (activation only, when the enclave seals) is the session's first
    sealed state: the parent stores it with the session so a restart can restore it.
    """

    sealed_state: bytes | None


@_register("aggregates_reply")
@dataclass(frozen=True, slots=True, kw_only=True)
class AggregatesReply(Reply):
    """A signed report: ``signature`` = base64 Ed25519 over RFC 8785 of ``payload``."""

    payload: JsonObject
    signature: str
    merkle_root: str
    sealed_state: bytes | None


@_register("metrics_reply")
@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsReply(Reply):
    """Detailed metrics of one session."""

    metrics: JsonObject


@_register("summary_reply")
@dataclass(frozen=True, slots=True, kw_only=True)
class SummaryReply(Reply):
    """Headline figures and polling state of one session."""

    summary: JsonObject


@_register("revoke_reply")
@dataclass(frozen=True, slots=True, kw_only=True)
class RevokeReply(Reply):
    """The session is gone from enclave memory; its log's last entries and final head.

    ``revocations`` is the new sealed revocation list (when the enclave seals): restores
    refuse every session on it, so an old backup cannot bring a revoked session back.
    """

    entries: tuple[bytes, ...]
    tree_head: JsonObject
    signature: str
    revocations: bytes | None


@_register("logs_reply")
@dataclass(frozen=True, slots=True, kw_only=True)
class LogsReply(Reply):
    """Log entries (canonical JSON bytes, the Merkle leaves) and a signed tree head.

    ``entries`` start at the requested index and may stop before the head's size
    (a page); ``signature`` is base64 Ed25519 over RFC 8785 of ``tree_head``.
    """

    entries: tuple[bytes, ...]
    tree_head: JsonObject
    signature: str
    sealed_state: bytes | None


@_register("disclose_trade_reply")
@dataclass(frozen=True, slots=True, kw_only=True)
class DiscloseTradeReply(Reply):
    """The disclosure, an envelope only the owner's key opens (JSON wire form)."""

    envelope: JsonObject
    sealed_state: bytes | None


@_register("unlock_reply")
@dataclass(frozen=True, slots=True, kw_only=True)
class UnlockReply(Reply):
    """The enclave is unlocked; what the parent must keep to unlock the next one.

    ``created`` says a new identity was made (store ``wrapped_key`` and ``sealed_keys``
    once; a parent that loses the race to store them unlocks again with the winner's).
    """

    created: bool
    wrapped_key: bytes
    sealed_keys: bytes


@_register("restore_reply")
@dataclass(frozen=True, slots=True, kw_only=True)
class RestoreReply(Reply):
    """How many sealed sessions were restored, and how many refused (revoked, expired,
    not openable, older than what the enclave holds)."""

    restored: int
    refused: int


@_register("lease_reply")
@dataclass(frozen=True, slots=True, kw_only=True)
class LeaseReply(Reply):
    """How many sessions the enclave polls after the change."""

    polling: int


@_register("checkpoint_reply")
@dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointReply(Reply):
    """Sealed states of changed sessions (``more``: call again for the rest)."""

    states: tuple[bytes, ...]
    more: bool


@_register("seal_record_reply")
@dataclass(frozen=True, slots=True, kw_only=True)
class SealRecordReply(Reply):
    """The sealed record blob for the parent to store, and its id."""

    record_id: str
    label: str
    sealed: bytes


@_register("unseal_record_reply")
@dataclass(frozen=True, slots=True, kw_only=True)
class UnsealRecordReply(Reply):
    """The record re-encrypted to the owner: an envelope in its JSON wire form."""

    envelope: JsonObject


@_register("health_reply")
@dataclass(frozen=True, slots=True, kw_only=True)
class HealthReply(Reply):
    """Enclave liveness: status word, live sessions, uptime and its PCR0 (hex)."""

    status: str
    sessions: int
    uptime_seconds: int
    pcr0: str


@_register("stats_reply")
@dataclass(frozen=True, slots=True, kw_only=True)
class StatsReply(Reply):
    """Counters by operation and outcome."""

    counters: JsonObject


@_register("error")
@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorReply(Reply):
    """The request failed; ``message`` is safe to show (no secret material)."""

    code: ErrorCode
    message: str


REPLY_TYPES: dict[type[Request], type[Reply]] = {
    Attest: AttestReply,
    Submit: SubmitReply,
    Confirm: ConfirmReply,
    Aggregates: AggregatesReply,
    SessionMetrics: MetricsReply,
    Summary: SummaryReply,
    Revoke: RevokeReply,
    Logs: LogsReply,
    DiscloseTrade: DiscloseTradeReply,
    Restore: RestoreReply,
    Lease: LeaseReply,
    Unlock: UnlockReply,
    Checkpoint: CheckpointReply,
    SealRecord: SealRecordReply,
    UnsealRecord: UnsealRecordReply,
    Health: HealthReply,
    Stats: StatsReply,
}
"""The successful reply type of each request (an ``ErrorReply`` is always possible)."""


def encode_message(message: Message) -> bytes:
    """One message -> its CBOR payload (deterministic: canonical CBOR, RFC 8949 4.2)."""
    schema = _SCHEMAS.get(type(message))
    if schema is None:
        raise LocalProtocolError(f"not a registered message: {type(message).__name__}")
    body: dict[str, Any] = {"v": PROTOCOL_VERSION, "t": message.TYPE}
    for field in schema:
        value = getattr(message, field.name)
        if field.is_tuple and type(value) is tuple:
            value = list(value)
        if not field.check(value):
            raise LocalProtocolError(f"{message.TYPE}.{field.name} has the wrong type")
        body[field.wire] = value
    payload: bytes = cbor2.dumps(body, canonical=True)
    if len(payload) > MAX_FRAME_SIZE:
        raise LocalProtocolError(f"{message.TYPE} message exceeds the maximum frame size")
    return payload


def encode_frame(message: Message) -> bytes:
    """One message -> length-prefixed frame bytes ready for the stream."""
    payload = encode_message(message)
    return _LENGTH.pack(len(payload)) + payload


def decode_message(payload: bytes) -> Message:
    """One CBOR payload -> a typed message, or ``RemoteProtocolError``."""
    try:
        body = strict_loads(payload, max_depth=_MAX_JSON_DEPTH + 2)
    except CborError as exc:
        raise RemoteProtocolError(f"undecodable message: {exc}") from None
    if not isinstance(body, dict):
        raise RemoteProtocolError("message is not a CBOR map")
    # type() not isinstance(): neither true nor the float 2.0 is version 2.
    if type(body.get("v")) is not int or body["v"] != PROTOCOL_VERSION:
        raise RemoteProtocolError("unsupported protocol version")
    type_name = body.get("t")
    cls = _REGISTRY.get(type_name) if isinstance(type_name, str) else None
    if cls is None:
        raise RemoteProtocolError("unknown message type")
    schema = _SCHEMAS[cls]
    if len(body) != len(schema) + 2 or any(field.wire not in body for field in schema):
        raise RemoteProtocolError(f"{cls.TYPE}: missing or unexpected fields")
    values: dict[str, Any] = {}
    for field in schema:
        value = body[field.wire]
        if not field.check(value):
            raise RemoteProtocolError(f"{cls.TYPE}.{field.name} has the wrong type")
        if field.is_tuple:
            value = tuple(value)
        elif field.is_code:
            value = ErrorCode(value)
        values[field.name] = value
    if values["request_id"] < 0:
        raise RemoteProtocolError("request id must not be negative")
    return cls(**values)


class FrameDecoder:
    """Byte stream -> messages. No I/O: feed it whatever the socket returned.

    The buffer never holds more than one frame's header plus MAX_FRAME_SIZE bytes
    of payload beyond what ``feed`` was just given; a length above the cap is
    refused as soon as its 4 header bytes arrive, before any payload is buffered.
    """

    def __init__(self, *, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        if not 1 <= max_frame_size <= MAX_FRAME_SIZE:
            raise ValueError("max_frame_size out of range")
        self._max = max_frame_size
        self._buffer = bytearray()
        self._failed = False

    def feed(self, data: bytes) -> list[Message]:
        """Add bytes; return every message now complete, in order."""
        if self._failed:
            raise RemoteProtocolError("decoder already failed on this stream")
        self._buffer += data
        messages: list[Message] = []
        try:
            while len(self._buffer) >= _LENGTH.size:
                (length,) = _LENGTH.unpack_from(self._buffer)
                if length == 0 or length > self._max:
                    raise RemoteProtocolError(f"frame length {length} outside 1..{self._max}")
                end = _LENGTH.size + length
                if len(self._buffer) < end:
                    break
                payload = bytes(self._buffer[_LENGTH.size : end])
                del self._buffer[:end]
                messages.append(decode_message(payload))
        except RemoteProtocolError:
            self._failed = True
            self._buffer.clear()
            raise
        return messages

    @property
    def pending(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._buffer)

    def close(self) -> None:
        """The stream ended: refuse a frame cut short (RemoteProtocolError)."""
        if self._buffer and not self._failed:
            self._failed = True
            raise RemoteProtocolError("stream ended inside a frame")
