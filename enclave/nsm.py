"""Nitro Secure Module access: CBOR codec, device port, typed client, /dev/nsm. Side: enclave.

Layers, bottom up:

- Codec (sans-IO): request/response dataclasses <-> the CBOR that serde produces for
  the ``Request`` / ``Response`` enums of aws-nitro-enclaves-nsm-api ``src/api/mod.rs``
  (externally tagged: unit variants are a text string such as ``"GetRandom"``, struct
  variants a one-entry map ``{"DescribePCR": {"index": 3}}``, ``Error(ErrorCode)`` is
  ``{"Error": "InputTooLarge"}``; ``Vec<u8>`` fields are CBOR byte strings).
- ``NsmDevice`` port: one request/response round trip, bytes in, bytes out. Adapters:
  ``DevNsm`` (the real ``/dev/nsm`` ioctl, here) and ``NsmSimulator``
  (``enclave.nsm_simulator``). The composition root picks one; nothing probes for
  ``/dev/nsm``.
- ``NsmClient``: typed calls on any ``NsmDevice``; NSM error responses become
  ``NsmError(code)``.

Errors::

    PerfAggError
    └── NsmError(code: ErrorCode)   the NSM answered Error(code), or its answer was
                                    unusable (InternalError / InvalidResponse)
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, Protocol

import cbor2

from shared.errors import PerfAggError

__all__ = [
    "MAX_NONCE",
    "MAX_PUBLIC_KEY",
    "MAX_USER_DATA",
    "NSM_IOCTL_RAW",
    "NSM_REQUEST_MAX_SIZE",
    "NSM_RESPONSE_MAX_SIZE",
    "AttestationRequest",
    "AttestationResponse",
    "DescribeNsmRequest",
    "DescribeNsmResponse",
    "DescribePcrRequest",
    "DescribePcrResponse",
    "DevNsm",
    "ErrorCode",
    "ErrorResponse",
    "ExtendPcrRequest",
    "ExtendPcrResponse",
    "GetRandomRequest",
    "GetRandomResponse",
    "IoctlFunction",
    "LockPcrRequest",
    "LockPcrResponse",
    "LockPcrsRequest",
    "LockPcrsResponse",
    "NsmClient",
    "NsmDevice",
    "NsmError",
    "Request",
    "Response",
    "decode_request",
    "decode_response",
    "encode_request",
    "encode_response",
]

# Linux include/uapi/linux/nsm.h and nsm-api src/driver/mod.rs.
NSM_REQUEST_MAX_SIZE: Final = 0x1000
NSM_RESPONSE_MAX_SIZE: Final = 0x3000
_NSM_MAGIC: Final = 0x0A
# struct nsm_raw { struct nsm_iovec request, response; } with
# struct nsm_iovec { __u64 addr; __u64 len; }: four native u64, 32 bytes.
_NSM_RAW: Final = struct.Struct("=QQQQ")


def _iowr(kind: int, number: int, size: int) -> int:
    # asm-generic/ioctl.h (x86_64 and arm64, the Nitro platforms): dir in bits 30-31
    # (_IOC_READ | _IOC_WRITE = 3), size in 16-29, type in 8-15, number in 0-7.
    return (3 << 30) | (size << 16) | (kind << 8) | number


NSM_IOCTL_RAW: Final = _iowr(_NSM_MAGIC, 0, _NSM_RAW.size)  # 0xC0200A00


class ErrorCode(StrEnum):
    """``nsm_io::ErrorCode``; the value is the serde variant name on the wire."""

    SUCCESS = "Success"
    INVALID_ARGUMENT = "InvalidArgument"
    INVALID_INDEX = "InvalidIndex"
    INVALID_RESPONSE = "InvalidResponse"
    READ_ONLY_INDEX = "ReadOnlyIndex"
    INVALID_OPERATION = "InvalidOperation"
    BUFFER_TOO_SMALL = "BufferTooSmall"
    INPUT_TOO_LARGE = "InputTooLarge"
    INTERNAL_ERROR = "InternalError"


class NsmError(PerfAggError):
    """The NSM refused a request or answered something unusable; ``code`` says which."""

    def __init__(self, code: ErrorCode) -> None:
        super().__init__(f"NSM error: {code.value}")
        self.code = code


# ------------------------------------------------------------------------ messages


@dataclass(frozen=True, slots=True, kw_only=True)
class DescribePcrRequest:
    """Read PCR ``index`` and its lock state."""

    index: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ExtendPcrRequest:
    """PCR[index] = SHA-384(PCR[index] || data), refused for locked PCRs."""

    index: int
    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class LockPcrRequest:
    """Make PCR ``index`` read-only until the enclave terminates."""

    index: int


@dataclass(frozen=True, slots=True, kw_only=True)
class LockPcrsRequest:
    """Lock PCRs ``[0, range)``."""

    range: int


@dataclass(frozen=True, slots=True, kw_only=True)
class DescribeNsmRequest:
    """Ask for the NSM version, module id and PCR bank description."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AttestationRequest:
    """Ask for a signed attestation document carrying these optional fields."""

    user_data: bytes | None = None
    nonce: bytes | None = None
    public_key: bytes | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class GetRandomRequest:
    """Ask for entropy from the NSM."""


Request = (
    DescribePcrRequest
    | ExtendPcrRequest
    | LockPcrRequest
    | LockPcrsRequest
    | DescribeNsmRequest
    | AttestationRequest
    | GetRandomRequest
)


@dataclass(frozen=True, slots=True, kw_only=True)
class DescribePcrResponse:
    """PCR value and whether it is locked (read-only)."""

    lock: bool
    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class ExtendPcrResponse:
    """The PCR value after the extension."""

    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class LockPcrResponse:
    """The PCR is now locked."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LockPcrsResponse:
    """The PCR range is now locked."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DescribeNsmResponse:
    """NSM runtime description (``Response::DescribeNSM``)."""

    version_major: int
    version_minor: int
    version_patch: int
    module_id: str
    max_pcrs: int
    locked_pcrs: tuple[int, ...]  # a BTreeSet<u16> on the wire: sorted, no duplicates
    digest: str  # "SHA256" | "SHA384" | "SHA512"


@dataclass(frozen=True, slots=True, kw_only=True)
class AttestationResponse:
    """A COSE_Sign1 attestation document (verified with ``shared.attestation``)."""

    document: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class GetRandomResponse:
    """Entropy from the NSM."""

    random: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorResponse:
    """``Response::Error(ErrorCode)``."""

    code: ErrorCode


Response = (
    DescribePcrResponse
    | ExtendPcrResponse
    | LockPcrResponse
    | LockPcrsResponse
    | DescribeNsmResponse
    | AttestationResponse
    | GetRandomResponse
    | ErrorResponse
)

_DIGESTS: Final = frozenset({"SHA256", "SHA384", "SHA512"})
_ERROR_CODES: Final = frozenset(code.value for code in ErrorCode)
_U16_MAX: Final = 0xFFFF


# --------------------------------------------------------------------------- codec


def encode_request(request: Request) -> bytes:
    """Serialise ``request`` exactly as serde does for ``nsm_io::Request``."""
    value: object
    match request:
        case DescribePcrRequest(index=index):
            value = {"DescribePCR": {"index": _u16(index)}}
        case ExtendPcrRequest(index=index, data=data):
            value = {"ExtendPCR": {"index": _u16(index), "data": bytes(data)}}
        case LockPcrRequest(index=index):
            value = {"LockPCR": {"index": _u16(index)}}
        case LockPcrsRequest(range=range_):
            value = {"LockPCRs": {"range": _u16(range_)}}
        case DescribeNsmRequest():
            value = "DescribeNSM"
        case AttestationRequest(user_data=user_data, nonce=nonce, public_key=public_key):
            # Field order as declared in the Rust enum; None is CBOR null.
            value = {
                "Attestation": {
                    "user_data": user_data,
                    "nonce": nonce,
                    "public_key": public_key,
                }
            }
        case GetRandomRequest():
            value = "GetRandom"
    return cbor2.dumps(value)


def encode_response(response: Response) -> bytes:
    """Serialise ``response`` exactly as serde does for ``nsm_io::Response``."""
    value: object
    match response:
        case DescribePcrResponse(lock=lock, data=data):
            value = {"DescribePCR": {"lock": bool(lock), "data": bytes(data)}}
        case ExtendPcrResponse(data=data):
            value = {"ExtendPCR": {"data": bytes(data)}}
        case LockPcrResponse():
            value = "LockPCR"
        case LockPcrsResponse():
            value = "LockPCRs"
        case DescribeNsmResponse():
            value = {
                "DescribeNSM": {
                    "version_major": _u16(response.version_major),
                    "version_minor": _u16(response.version_minor),
                    "version_patch": _u16(response.version_patch),
                    "module_id": response.module_id,
                    "max_pcrs": _u16(response.max_pcrs),
                    "locked_pcrs": sorted({_u16(index) for index in response.locked_pcrs}),
                    "digest": response.digest,
                }
            }
        case AttestationResponse(document=document):
            value = {"Attestation": {"document": bytes(document)}}
        case GetRandomResponse(random=random):
            value = {"GetRandom": {"random": bytes(random)}}
        case ErrorResponse(code=code):
            value = {"Error": ErrorCode(code).value}
    return cbor2.dumps(value)


def _u16(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _U16_MAX:
        raise ValueError("NSM indices are u16")
    return value


class _Malformed(Exception):
    """Internal: the CBOR is not a message of the expected shape."""


def _loads(data: bytes) -> object:
    if not isinstance(data, bytes):
        raise _Malformed
    try:
        value = cbor2.loads(
            data,
            tag_hook=_no_tags,
            max_depth=8,
            allow_indefinite=False,
            allow_duplicate_keys=False,
        )
    except (cbor2.CBORError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise _Malformed from exc
    # Refuse trailing bytes and non-minimal encodings (serde_cbor's from_slice refuses
    # trailing data too): the bytes must be what a minimal encoder writes back.
    try:
        if cbor2.dumps(value) != data:
            raise _Malformed
    except (cbor2.CBORError, ValueError, TypeError) as exc:
        raise _Malformed from exc
    return value


def _no_tags(*_args: object) -> object:
    raise ValueError("CBOR tags are not part of the NSM encoding")


def _variant(value: object) -> tuple[str, dict[str, object] | None]:
    # serde externally tagged enums: "Unit" or {"Variant": {fields}} / {"Error": "Code"}.
    if isinstance(value, str):
        return value, None
    if isinstance(value, dict) and len(value) == 1:
        ((name, body),) = value.items()
        if isinstance(name, str) and isinstance(body, dict):
            return name, body
    raise _Malformed


def _fields(body: dict[str, object] | None, names: tuple[str, ...]) -> tuple[object, ...]:
    # Exactly these fields, nothing more (stricter than serde, which ignores extras).
    if body is None or set(body) != set(names):
        raise _Malformed
    return tuple(body[name] for name in names)


def _as_u16(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _U16_MAX:
        raise _Malformed
    return value


def _as_bytes(value: object) -> bytes:
    if not isinstance(value, bytes):
        raise _Malformed
    return value


def _as_optional_bytes(value: object) -> bytes | None:
    return None if value is None else _as_bytes(value)


def decode_request(data: bytes) -> Request:
    """Parse a request (the simulator side); ``NsmError(InvalidArgument)`` if malformed."""
    try:
        return _decode_request(_loads(data))
    except _Malformed:
        raise NsmError(ErrorCode.INVALID_ARGUMENT) from None


def _decode_request(value: object) -> Request:
    if isinstance(value, dict) and len(value) == 1 and "Attestation" in value:
        body = value["Attestation"]
        # serde fills an absent Option field with None; accept that, refuse extras.
        if not isinstance(body, dict) or not set(body) <= {"user_data", "nonce", "public_key"}:
            raise _Malformed
        return AttestationRequest(
            user_data=_as_optional_bytes(body.get("user_data")),
            nonce=_as_optional_bytes(body.get("nonce")),
            public_key=_as_optional_bytes(body.get("public_key")),
        )
    name, body = _variant(value)
    match name:
        case "DescribePCR":
            (index,) = _fields(body, ("index",))
            return DescribePcrRequest(index=_as_u16(index))
        case "ExtendPCR":
            index, data = _fields(body, ("index", "data"))
            return ExtendPcrRequest(index=_as_u16(index), data=_as_bytes(data))
        case "LockPCR":
            (index,) = _fields(body, ("index",))
            return LockPcrRequest(index=_as_u16(index))
        case "LockPCRs":
            (range_,) = _fields(body, ("range",))
            return LockPcrsRequest(range=_as_u16(range_))
        case "DescribeNSM" if body is None:
            return DescribeNsmRequest()
        case "GetRandom" if body is None:
            return GetRandomRequest()
    raise _Malformed


def decode_response(data: bytes) -> Response:
    """Parse a device response; ``NsmError(InternalError)`` if it is not one.

    The nsm-api driver maps an undecodable response to ``InternalError`` too.
    """
    try:
        return _decode_response(_loads(data))
    except _Malformed:
        raise NsmError(ErrorCode.INTERNAL_ERROR) from None


def _decode_response(value: object) -> Response:
    if isinstance(value, dict) and len(value) == 1 and "Error" in value:
        code = value["Error"]
        if not isinstance(code, str) or code not in _ERROR_CODES:
            raise _Malformed
        return ErrorResponse(code=ErrorCode(code))
    name, body = _variant(value)
    match name:
        case "DescribePCR":
            lock, data = _fields(body, ("lock", "data"))
            if not isinstance(lock, bool):
                raise _Malformed
            return DescribePcrResponse(lock=lock, data=_as_bytes(data))
        case "ExtendPCR":
            (data,) = _fields(body, ("data",))
            return ExtendPcrResponse(data=_as_bytes(data))
        case "LockPCR" if body is None:
            return LockPcrResponse()
        case "LockPCRs" if body is None:
            return LockPcrsResponse()
        case "DescribeNSM":
            return _decode_describe_nsm(body)
        case "Attestation":
            (document,) = _fields(body, ("document",))
            return AttestationResponse(document=_as_bytes(document))
        case "GetRandom":
            (random,) = _fields(body, ("random",))
            return GetRandomResponse(random=_as_bytes(random))
    raise _Malformed


def _decode_describe_nsm(body: dict[str, object] | None) -> DescribeNsmResponse:
    names = (
        "version_major",
        "version_minor",
        "version_patch",
        "module_id",
        "max_pcrs",
        "locked_pcrs",
        "digest",
    )
    major, minor, patch, module_id, max_pcrs, locked, digest = _fields(body, names)
    if not isinstance(module_id, str) or not isinstance(locked, list):
        raise _Malformed
    locked_pcrs = tuple(_as_u16(index) for index in locked)
    if list(locked_pcrs) != sorted(set(locked_pcrs)):  # BTreeSet: sorted and unique
        raise _Malformed
    if digest not in _DIGESTS:
        raise _Malformed
    return DescribeNsmResponse(
        version_major=_as_u16(major),
        version_minor=_as_u16(minor),
        version_patch=_as_u16(patch),
        module_id=module_id,
        max_pcrs=_as_u16(max_pcrs),
        locked_pcrs=locked_pcrs,
        digest=str(digest),
    )


# ---------------------------------------------------------------------------- port


class NsmDevice(Protocol):
    """One NSM request/response round trip: CBOR request in, CBOR response out.

    Device-level failures come back as an encoded ``Error`` response, as the nsm-api
    driver does, so every adapter behaves the same behind ``NsmClient``.
    """

    def process(self, request: bytes) -> bytes:
        """Send one encoded request, return the encoded response."""
        ...


# Attestation field limits the verifier enforces (attestation_process.md §3.2.2.2).
# The real NSM reportedly only enforces the 4 KiB request limit (nsm-api issue #52);
# the client checks these itself so that hardware and simulator behave alike and the
# enclave never obtains a document that clients would refuse.
MAX_USER_DATA: Final = 512
MAX_NONCE: Final = 512
MAX_PUBLIC_KEY: Final = 1024


class NsmClient:
    """Typed NSM calls on any ``NsmDevice``. Raises ``NsmError`` on error responses."""

    __slots__ = ("_device",)

    def __init__(self, device: NsmDevice) -> None:
        self._device = device

    def _call(self, request: Request) -> Response:
        response = decode_response(self._device.process(encode_request(request)))
        if isinstance(response, ErrorResponse):
            raise NsmError(response.code)
        return response

    def attestation(
        self,
        *,
        user_data: bytes | None = None,
        nonce: bytes | None = None,
        public_key: bytes | None = None,
    ) -> bytes:
        """A COSE_Sign1 attestation document binding these fields to the enclave's PCRs."""
        for value, limit in ((user_data, MAX_USER_DATA), (nonce, MAX_NONCE)):
            if value is not None and len(value) > limit:
                raise NsmError(ErrorCode.INPUT_TOO_LARGE)
        if public_key is not None and not 1 <= len(public_key) <= MAX_PUBLIC_KEY:
            raise NsmError(ErrorCode.INPUT_TOO_LARGE if public_key else ErrorCode.INVALID_ARGUMENT)
        response = self._call(
            AttestationRequest(user_data=user_data, nonce=nonce, public_key=public_key)
        )
        if not isinstance(response, AttestationResponse) or not response.document:
            raise NsmError(ErrorCode.INVALID_RESPONSE)
        return response.document

    def get_random(self) -> bytes:
        """Entropy from the NSM (non-empty)."""
        response = self._call(GetRandomRequest())
        if not isinstance(response, GetRandomResponse) or not response.random:
            raise NsmError(ErrorCode.INVALID_RESPONSE)
        return response.random

    def describe_pcr(self, index: int) -> DescribePcrResponse:
        """Value and lock state of PCR ``index``."""
        response = self._call(DescribePcrRequest(index=index))
        if not isinstance(response, DescribePcrResponse):
            raise NsmError(ErrorCode.INVALID_RESPONSE)
        return response

    def extend_pcr(self, index: int, data: bytes) -> bytes:
        """Extend PCR ``index`` with ``data``; returns the new value."""
        response = self._call(ExtendPcrRequest(index=index, data=data))
        if not isinstance(response, ExtendPcrResponse):
            raise NsmError(ErrorCode.INVALID_RESPONSE)
        return response.data

    def lock_pcr(self, index: int) -> None:
        """Lock PCR ``index``."""
        if not isinstance(self._call(LockPcrRequest(index=index)), LockPcrResponse):
            raise NsmError(ErrorCode.INVALID_RESPONSE)

    def lock_pcrs(self, range_: int) -> None:
        """Lock PCRs ``[0, range_)``."""
        if not isinstance(self._call(LockPcrsRequest(range=range_)), LockPcrsResponse):
            raise NsmError(ErrorCode.INVALID_RESPONSE)

    def describe_nsm(self) -> DescribeNsmResponse:
        """NSM version, module id, PCR count, locked PCRs and digest."""
        response = self._call(DescribeNsmRequest())
        if not isinstance(response, DescribeNsmResponse):
            raise NsmError(ErrorCode.INVALID_RESPONSE)
        return response


# ---------------------------------------------------------------- /dev/nsm adapter

IoctlFunction = Callable[[int, int, bytearray], int]
"""``(fd, request_code, arg) -> int`` with ``arg`` read and written in place, like
``fcntl.ioctl(fd, request_code, arg, True)``."""


def _fcntl_ioctl(fd: int, request_code: int, arg: bytearray) -> int:
    return int(fcntl.ioctl(fd, request_code, arg, True))


def _error(code: ErrorCode) -> bytes:
    return encode_response(ErrorResponse(code=code))


class DevNsm:
    """The real NSM: ``NSM_IOCTL_RAW`` on ``/dev/nsm``. Only the composition root opens it.

    ``ioctl`` is injectable so tests check the packed ``struct nsm_raw``, the ioctl
    number and the response handling without a device.
    """

    __slots__ = ("_fd", "_ioctl")

    def __init__(self, fd: int, *, ioctl: IoctlFunction = _fcntl_ioctl) -> None:
        self._fd = fd
        self._ioctl = ioctl

    @classmethod
    def open(cls, path: str = "/dev/nsm") -> DevNsm:
        """Open the device read-write (as nsm-api's nsm_init does)."""
        return cls(os.open(path, os.O_RDWR | os.O_CLOEXEC))

    def close(self) -> None:
        """Close the device descriptor."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def process(self, request: bytes) -> bytes:
        """One ioctl round trip; driver failures map to Error responses like nsm-api."""
        # nsm-api driver: a request over 0x1000 bytes is InputTooLarge, never sent.
        if not request or len(request) > NSM_REQUEST_MAX_SIZE:
            return _error(ErrorCode.INPUT_TOO_LARGE if request else ErrorCode.INVALID_ARGUMENT)
        request_buffer = ctypes.create_string_buffer(request, len(request))
        response_buffer = ctypes.create_string_buffer(NSM_RESPONSE_MAX_SIZE)
        message = bytearray(
            _NSM_RAW.pack(
                ctypes.addressof(request_buffer),
                len(request),
                ctypes.addressof(response_buffer),
                NSM_RESPONSE_MAX_SIZE,  # in: capacity; out: bytes written
            )
        )
        try:
            self._ioctl(self._fd, NSM_IOCTL_RAW, message)
        except OSError as exc:
            # nsm-api driver: EMSGSIZE -> InputTooLarge, any other errno -> InternalError.
            if exc.errno == errno.EMSGSIZE:
                return _error(ErrorCode.INPUT_TOO_LARGE)
            return _error(ErrorCode.INTERNAL_ERROR)
        _, _, _, written = _NSM_RAW.unpack(message)
        if not 0 < written <= NSM_RESPONSE_MAX_SIZE:
            return _error(ErrorCode.INTERNAL_ERROR)
        return response_buffer.raw[:written]
