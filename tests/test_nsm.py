"""NSM port: CBOR codec vectors, NsmClient, the simulator's limits and PCR rules,
DevNsm's ioctl packing (with a fake ioctl; /dev/nsm is never opened), and the
code-derived simulated measurements.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import shutil
import struct
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import enclave.nsm as nsm
from enclave.measurement import extend, simulated_pcrs, source_digest
from enclave.nsm import (
    NSM_IOCTL_RAW,
    AttestationRequest,
    AttestationResponse,
    DescribeNsmRequest,
    DescribeNsmResponse,
    DescribePcrRequest,
    DescribePcrResponse,
    DevNsm,
    ErrorCode,
    ErrorResponse,
    ExtendPcrRequest,
    ExtendPcrResponse,
    GetRandomRequest,
    GetRandomResponse,
    LockPcrRequest,
    LockPcrResponse,
    LockPcrsRequest,
    LockPcrsResponse,
    NsmClient,
    NsmDevice,
    NsmError,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)
from enclave.nsm_simulator import NsmSimulator
from shared.attestation import AttestationVerifier, decode_document

CODEC: dict[str, Any] = json.loads(
    (Path(__file__).parent / "vectors" / "attestation" / "nsm-codec.json").read_text()
)
T0 = datetime(2026, 5, 4, 3, 2, 1, tzinfo=UTC)
REPO = Path(__file__).resolve().parents[1]


def _hex(value: str | None) -> bytes | None:
    return None if value is None else bytes.fromhex(value)


def _message(spec: dict[str, Any], *, response: bool) -> object:
    """Build the dataclass a codec vector describes."""
    kind = spec["type"]
    if response:
        builders: dict[str, Callable[[], object]] = {
            "DescribePCR": lambda: DescribePcrResponse(
                lock=spec["lock"], data=bytes.fromhex(spec["data"])
            ),
            "ExtendPCR": lambda: ExtendPcrResponse(data=bytes.fromhex(spec["data"])),
            "LockPCR": LockPcrResponse,
            "LockPCRs": LockPcrsResponse,
            "DescribeNSM": lambda: DescribeNsmResponse(
                version_major=spec["version_major"],
                version_minor=spec["version_minor"],
                version_patch=spec["version_patch"],
                module_id=spec["module_id"],
                max_pcrs=spec["max_pcrs"],
                locked_pcrs=tuple(spec["locked_pcrs"]),
                digest=spec["digest"],
            ),
            "Attestation": lambda: AttestationResponse(document=bytes.fromhex(spec["document"])),
            "GetRandom": lambda: GetRandomResponse(random=bytes.fromhex(spec["random"])),
            "Error": lambda: ErrorResponse(code=ErrorCode(spec["code"])),
        }
    else:
        builders = {
            "DescribePCR": lambda: DescribePcrRequest(index=spec["index"]),
            "ExtendPCR": lambda: ExtendPcrRequest(
                index=spec["index"], data=bytes.fromhex(spec["data"])
            ),
            "LockPCR": lambda: LockPcrRequest(index=spec["index"]),
            "LockPCRs": lambda: LockPcrsRequest(range=spec["range"]),
            "DescribeNSM": DescribeNsmRequest,
            "Attestation": lambda: AttestationRequest(
                user_data=_hex(spec["user_data"]),
                nonce=_hex(spec["nonce"]),
                public_key=_hex(spec["public_key"]),
            ),
            "GetRandom": GetRandomRequest,
        }
    return builders[kind]()


class FakeClock:
    """A settable clock."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class FakeIoctl:
    """Stands in for the kernel: checks the nsm_raw struct and answers via a device."""

    def __init__(self, answer: Callable[[bytes], bytes]) -> None:
        self.answer = answer
        self.calls: list[tuple[int, int, tuple[int, int, int, int]]] = []
        self.written_override: int | None = None
        self.error: OSError | None = None

    def __call__(self, fd: int, request_code: int, arg: bytearray) -> int:
        fields = struct.unpack("=QQQQ", arg)
        self.calls.append((fd, request_code, fields))
        if self.error is not None:
            raise self.error
        request_address, request_length, response_address, capacity = fields
        response = self.answer(ctypes.string_at(request_address, request_length))
        assert len(response) <= capacity
        ctypes.memmove(response_address, response, len(response))
        written = len(response) if self.written_override is None else self.written_override
        struct.pack_into("=Q", arg, 24, written)
        return 0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def simulator(tmp_path: Path, clock: FakeClock) -> NsmSimulator:
    return NsmSimulator(tmp_path / "nsm", simulated_pcrs(), clock=clock)


@pytest.fixture(scope="module")
def shared_simulator(tmp_path_factory: pytest.TempPathFactory) -> NsmSimulator:
    return NsmSimulator(tmp_path_factory.mktemp("nsm"), {}, clock=lambda: T0)


def _raw(simulator: NsmDevice, request: object) -> object:
    return decode_response(simulator.process(encode_request(request)))  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- codec


def test_public_api_is_exactly_all() -> None:
    """enclave.nsm exports exactly its documented names."""
    defined = {
        name
        for name, value in vars(nsm).items()
        if not name.startswith("_") and getattr(value, "__module__", None) == nsm.__name__
    }
    assert defined <= set(nsm.__all__)
    assert all(hasattr(nsm, name) for name in nsm.__all__)


def test_ioctl_number_is_iowr_0x0a_0_nsm_raw() -> None:
    """NSM_IOCTL_RAW = _IOWR(0x0A, 0, struct nsm_raw) with a 32-byte struct."""
    assert NSM_IOCTL_RAW == 0xC0200A00


@pytest.mark.parametrize("vector", CODEC["requests"], ids=lambda v: v["cbor"][:24])
def test_request_codec_matches_serde_bytes(vector: dict[str, Any]) -> None:
    """Requests encode to, and decode from, the exact serde CBOR bytes."""
    message = _message(vector["message"], response=False)
    assert encode_request(message).hex() == vector["cbor"]  # type: ignore[arg-type]
    assert decode_request(bytes.fromhex(vector["cbor"])) == message


@pytest.mark.parametrize("vector", CODEC["responses"], ids=lambda v: v["cbor"][:24])
def test_response_codec_matches_serde_bytes(vector: dict[str, Any]) -> None:
    """Responses encode to, and decode from, the exact serde CBOR bytes."""
    message = _message(vector["message"], response=True)
    assert encode_response(message).hex() == vector["cbor"]  # type: ignore[arg-type]
    assert decode_response(bytes.fromhex(vector["cbor"])) == message


@pytest.mark.parametrize("vector", CODEC["invalid_requests"], ids=lambda v: v["why"])
def test_malformed_requests_are_invalid_argument(vector: dict[str, Any]) -> None:
    """Requests that are not exactly a serde NSM request are refused."""
    with pytest.raises(NsmError) as caught:
        decode_request(bytes.fromhex(vector["cbor"]))
    assert caught.value.code == ErrorCode.INVALID_ARGUMENT


@pytest.mark.parametrize("vector", CODEC["invalid_responses"], ids=lambda v: v["why"])
def test_malformed_responses_are_internal_error(vector: dict[str, Any]) -> None:
    """An unusable device answer is InternalError, as in the nsm-api driver."""
    with pytest.raises(NsmError) as caught:
        decode_response(bytes.fromhex(vector["cbor"]))
    assert caught.value.code == ErrorCode.INTERNAL_ERROR


def test_encoder_refuses_indices_outside_u16() -> None:
    """PCR indices are u16 on the wire; other values are a local bug."""
    with pytest.raises(ValueError, match="u16"):
        encode_request(DescribePcrRequest(index=65536))


_FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**20), 2**20) | st.binary(max_size=16)
    | st.sampled_from(["GetRandom", "DescribeNSM", "LockPCR", "Error", "index", "data"]),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(
        st.sampled_from(
            ["Attestation", "DescribePCR", "ExtendPCR", "GetRandom", "Error", "index", "data",
             "lock", "random", "document", "user_data", "nonce", "range"]
        ),
        children,
        max_size=3,
    ),
    max_leaves=12,
)  # fmt: skip


@_FUZZ
@given(st.binary(max_size=512) | cbor_values.map(cbor2.dumps))
def test_response_decoding_raises_only_nsm_error(data: bytes) -> None:
    """Arbitrary device bytes decode to a response or raise NsmError, nothing else."""
    try:
        response = decode_response(data)
    except NsmError as exc:
        code = exc.code
    else:
        assert encode_response(response) == data
        return
    assert code == ErrorCode.INTERNAL_ERROR


@_FUZZ
@given(st.binary(max_size=512) | cbor_values.map(cbor2.dumps))
def test_simulator_answers_any_bytes_with_a_response(
    shared_simulator: NsmSimulator, data: bytes
) -> None:
    """Whatever the enclave sends, the simulator answers a well-formed response."""
    response = decode_response(shared_simulator.process(data))
    try:
        decode_request(data)
    except NsmError:
        assert response == ErrorResponse(code=ErrorCode.INVALID_ARGUMENT)


# ----------------------------------------------------------------------------- client


class ScriptedDevice:
    """An NsmDevice that replays one fixed response and records requests."""

    def __init__(self, response: bytes) -> None:
        self.response = response
        self.requests: list[bytes] = []

    def process(self, request: bytes) -> bytes:
        self.requests.append(request)
        return self.response


@pytest.mark.parametrize("code", list(ErrorCode))
def test_client_raises_the_nsm_error_code(code: ErrorCode) -> None:
    """An Error response becomes NsmError carrying the same code."""
    client = NsmClient(ScriptedDevice(encode_response(ErrorResponse(code=code))))
    with pytest.raises(NsmError) as caught:
        client.get_random()
    assert caught.value.code == code


_OTHER = ExtendPcrResponse(data=b"\x00" * 48)


@pytest.mark.parametrize(
    ("call", "wrong"),
    [
        (lambda client: client.get_random(), _OTHER),
        (lambda client: client.get_random(), GetRandomResponse(random=b"")),
        (lambda client: client.attestation(), _OTHER),
        (lambda client: client.attestation(), AttestationResponse(document=b"")),
        (lambda client: client.describe_pcr(0), _OTHER),
        (lambda client: client.extend_pcr(16, b"x"), GetRandomResponse(random=b"\x01")),
        (lambda client: client.lock_pcr(16), LockPcrsResponse()),
        (lambda client: client.lock_pcrs(16), LockPcrResponse()),
        (lambda client: client.describe_nsm(), _OTHER),
    ],
    ids=[
        "random", "random-empty", "attestation", "attestation-empty", "describe_pcr",
        "extend", "lock", "lock_range", "describe",
    ],
)  # fmt: skip
def test_client_refuses_a_response_of_the_wrong_kind(
    call: Callable[[NsmClient], object], wrong: object
) -> None:
    """A response that does not answer the request (or is empty) is InvalidResponse."""
    device = ScriptedDevice(encode_response(wrong))  # type: ignore[arg-type]
    with pytest.raises(NsmError) as caught:
        call(NsmClient(device))
    assert caught.value.code == ErrorCode.INVALID_RESPONSE


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"user_data": b"\x00" * 513}, ErrorCode.INPUT_TOO_LARGE),
        ({"nonce": b"\x00" * 513}, ErrorCode.INPUT_TOO_LARGE),
        ({"public_key": b"\x00" * 1025}, ErrorCode.INPUT_TOO_LARGE),
        ({"public_key": b""}, ErrorCode.INVALID_ARGUMENT),
    ],
    ids=["user_data", "nonce", "public_key", "empty-public_key"],
)
def test_client_enforces_document_limits_before_calling_the_device(
    fields: dict[str, bytes], code: ErrorCode
) -> None:
    """The client never asks for a document that verifiers would refuse."""
    device = ScriptedDevice(encode_response(AttestationResponse(document=b"x")))
    with pytest.raises(NsmError) as caught:
        NsmClient(device).attestation(**fields)
    assert caught.value.code == code
    assert device.requests == []


# -------------------------------------------------------------------------- simulator


def test_request_over_4096_bytes_is_input_too_large(simulator: NsmSimulator) -> None:
    """Requests above NSM_REQUEST_MAX_SIZE are refused before decoding."""
    request = encode_request(ExtendPcrRequest(index=16, data=b"\x00" * 4096))
    assert len(request) > 4096
    assert decode_response(simulator.process(request)) == ErrorResponse(
        code=ErrorCode.INPUT_TOO_LARGE
    )


@pytest.mark.parametrize(
    "request_",
    [
        AttestationRequest(user_data=b"\x00" * 513),
        AttestationRequest(nonce=b"\x00" * 513),
        AttestationRequest(public_key=b"\x00" * 1025),
    ],
    ids=["user_data", "nonce", "public_key"],
)
def test_simulator_refuses_oversized_attestation_fields(
    simulator: NsmSimulator, request_: AttestationRequest
) -> None:
    """user_data/nonce over 512 bytes or public_key over 1024 is InputTooLarge."""
    assert _raw(simulator, request_) == ErrorResponse(code=ErrorCode.INPUT_TOO_LARGE)


def test_simulator_accepts_fields_at_the_limits(simulator: NsmSimulator) -> None:
    """512-byte user_data and nonce and a 1024-byte public_key give a document."""
    document = NsmClient(simulator).attestation(
        user_data=b"\x01" * 512, nonce=b"\x02" * 512, public_key=b"\x03" * 1024
    )
    doc, _ = decode_document(document)
    assert doc.user_data == b"\x01" * 512
    assert doc.nonce == b"\x02" * 512
    assert doc.public_key == b"\x03" * 1024


@pytest.mark.parametrize("index", range(16))
def test_boot_pcrs_are_read_only(simulator: NsmSimulator, index: int) -> None:
    """PCR0..15 are locked at boot: ExtendPCR and LockPCR give ReadOnlyIndex."""
    client = NsmClient(simulator)
    for call in (lambda: client.extend_pcr(index, b"x"), lambda: client.lock_pcr(index)):
        with pytest.raises(NsmError) as caught:
            call()
        assert caught.value.code == ErrorCode.READ_ONLY_INDEX
    assert client.describe_pcr(index) == DescribePcrResponse(
        lock=True, data=simulated_pcrs()[index]
    )


@pytest.mark.parametrize(
    "call",
    [
        lambda client: client.describe_pcr(32),
        lambda client: client.extend_pcr(32, b"x"),
        lambda client: client.lock_pcr(32),
        lambda client: client.lock_pcrs(33),
    ],
    ids=["describe", "extend", "lock", "lock_range"],
)
def test_pcr_index_32_and_up_is_invalid_index(
    simulator: NsmSimulator, call: Callable[[NsmClient], object]
) -> None:
    """There are 32 PCRs; anything beyond is InvalidIndex."""
    with pytest.raises(NsmError) as caught:
        call(NsmClient(simulator))
    assert caught.value.code == ErrorCode.INVALID_INDEX


def test_extend_is_sha384_of_old_value_and_data(simulator: NsmSimulator) -> None:
    """ExtendPCR sets PCR = SHA-384(PCR || data) and reports the new value."""
    client = NsmClient(simulator)
    first = client.extend_pcr(16, b"one")
    assert first == hashlib.sha384(bytes(48) + b"one").digest()
    second = client.extend_pcr(16, b"two")
    assert second == hashlib.sha384(first + b"two").digest()
    assert client.describe_pcr(16) == DescribePcrResponse(lock=False, data=second)
    assert first == extend(bytes(48), b"one")


def test_locked_user_pcr_is_read_only(simulator: NsmSimulator) -> None:
    """After LockPCR a user PCR keeps its value; locking again is harmless."""
    client = NsmClient(simulator)
    value = client.extend_pcr(20, b"config")
    client.lock_pcr(20)
    client.lock_pcr(20)
    with pytest.raises(NsmError) as caught:
        client.extend_pcr(20, b"more")
    assert caught.value.code == ErrorCode.READ_ONLY_INDEX
    assert client.describe_pcr(20) == DescribePcrResponse(lock=True, data=value)


def test_lock_pcrs_locks_the_whole_range(simulator: NsmSimulator) -> None:
    """LockPCRs(32) locks every PCR, as nsm-check expects of real hardware."""
    client = NsmClient(simulator)
    client.lock_pcrs(32)
    assert client.describe_nsm().locked_pcrs == tuple(range(32))
    with pytest.raises(NsmError) as caught:
        client.extend_pcr(31, b"x")
    assert caught.value.code == ErrorCode.READ_ONLY_INDEX


def test_describe_nsm_reports_the_pcr_bank(simulator: NsmSimulator) -> None:
    """DescribeNSM reports 32 SHA-384 PCRs, PCR0..15 locked, and the module id."""
    description = NsmClient(simulator).describe_nsm()
    assert description.max_pcrs == 32
    assert description.digest == "SHA384"
    assert description.locked_pcrs == tuple(range(16))
    assert description.module_id == simulator.module_id
    assert description.version_major == 1


def test_get_random_returns_256_fresh_bytes(simulator: NsmSimulator) -> None:
    """GetRandom gives 256 bytes, different on every call."""
    client = NsmClient(simulator)
    first, second = client.get_random(), client.get_random()
    assert len(first) == len(second) == 256
    assert first != second


def test_documents_hold_boot_pcrs_and_touched_user_pcrs(simulator: NsmSimulator) -> None:
    """Documents carry PCR0..15 plus user PCRs that were extended or locked, no others."""
    client = NsmClient(simulator)
    extended = client.extend_pcr(16, b"app")
    client.lock_pcr(23)
    doc, _ = decode_document(client.attestation())
    assert sorted(doc.pcrs) == [*range(16), 16, 23]
    assert doc.pcrs[16] == extended
    assert doc.pcrs[23] == bytes(48)
    assert {index: doc.pcrs[index] for index in range(16)} == simulated_pcrs()


def test_simulator_document_timestamp_is_milliseconds(
    simulator: NsmSimulator, clock: FakeClock
) -> None:
    """The document timestamp is the simulator clock in ms since the epoch."""
    clock.now = T0.replace(microsecond=123_456)
    doc, _ = decode_document(NsmClient(simulator).attestation())
    assert doc.timestamp == int(T0.timestamp()) * 1000 + 123


# ------------------------------------------------------------------------- /dev/nsm


def test_dev_nsm_packs_nsm_raw_and_returns_the_written_bytes() -> None:
    """DevNsm passes {request iovec, response iovec of 0x3000} and honours the length."""
    answer = encode_response(GetRandomResponse(random=b"\x07" * 256))
    seen: list[bytes] = []

    def kernel(request: bytes) -> bytes:
        seen.append(request)
        return answer

    fake = FakeIoctl(kernel)
    device = DevNsm(99, ioctl=fake)
    assert NsmClient(device).get_random() == b"\x07" * 256
    assert seen == [encode_request(GetRandomRequest())]
    ((fd, code, (_, request_length, _, capacity)),) = fake.calls
    assert fd == 99
    assert code == 0xC0200A00
    assert request_length == len(encode_request(GetRandomRequest()))
    assert capacity == 0x3000


def test_dev_nsm_never_sends_oversized_requests() -> None:
    """Requests over 0x1000 bytes are InputTooLarge without an ioctl (nsm-api driver)."""
    fake = FakeIoctl(lambda request: b"")
    response = DevNsm(3, ioctl=fake).process(b"\x00" * 4097)
    assert decode_response(response) == ErrorResponse(code=ErrorCode.INPUT_TOO_LARGE)
    assert fake.calls == []


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (OSError(errno.EMSGSIZE, "Message too long"), ErrorCode.INPUT_TOO_LARGE),
        (OSError(errno.ENOTTY, "Inappropriate ioctl"), ErrorCode.INTERNAL_ERROR),
        (OSError(errno.EBADF, "Bad file descriptor"), ErrorCode.INTERNAL_ERROR),
    ],
    ids=["EMSGSIZE", "ENOTTY", "EBADF"],
)
def test_dev_nsm_maps_errno_like_the_driver(error: OSError, code: ErrorCode) -> None:
    """ioctl failures become Error responses: EMSGSIZE InputTooLarge, else InternalError."""
    fake = FakeIoctl(lambda request: b"")
    fake.error = error
    with pytest.raises(NsmError) as caught:
        NsmClient(DevNsm(3, ioctl=fake)).describe_nsm()
    assert caught.value.code == code


@pytest.mark.parametrize("written", [0, 0x3001])
def test_dev_nsm_refuses_an_impossible_response_length(written: int) -> None:
    """A response length of zero or beyond the buffer is InternalError."""
    fake = FakeIoctl(lambda request: encode_response(LockPcrResponse()))
    fake.written_override = written
    with pytest.raises(NsmError) as caught:
        NsmClient(DevNsm(3, ioctl=fake)).lock_pcr(16)
    assert caught.value.code == ErrorCode.INTERNAL_ERROR


@pytest.fixture(params=["simulator", "dev-nsm-over-simulator"])
def device(request: pytest.FixtureRequest, simulator: NsmSimulator) -> NsmDevice:
    if request.param == "simulator":
        return simulator
    return DevNsm(7, ioctl=FakeIoctl(simulator.process))


def test_contract_attestation_verifies_through_any_adapter(
    device: NsmDevice, simulator: NsmSimulator
) -> None:
    """The simulator, directly or behind the ioctl adapter, yields verifiable documents."""
    pcrs = simulated_pcrs()
    document = NsmClient(device).attestation(nonce=b"n" * 16)
    verifier = AttestationVerifier(
        expected_pcrs={0: pcrs[0], 1: pcrs[1], 2: pcrs[2]},
        root_der=simulator.root_der,
        require_keys=False,
    )
    assert verifier.verify(document, nonce=b"n" * 16, now=T0).doc.nonce == b"n" * 16


def test_contract_errors_are_identical_through_any_adapter(device: NsmDevice) -> None:
    """Error responses travel unchanged through every adapter."""
    with pytest.raises(NsmError) as caught:
        NsmClient(device).extend_pcr(0, b"x")
    assert caught.value.code == ErrorCode.READ_ONLY_INDEX


# ------------------------------------------------------------------------ measurement


def _copy_measured_tree(target: Path) -> Path:
    for package in ("enclave", "shared"):
        shutil.copytree(
            REPO / package, target / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    return target


def test_simulated_pcrs_follow_the_documented_derivation() -> None:
    """PCR0/1/2 are extends of the code digest, a kernel constant and the app digest."""
    pcrs = simulated_pcrs()
    digest = source_digest()
    assert sorted(pcrs) == list(range(16))
    assert pcrs[0] == hashlib.sha384(bytes(48) + digest).digest()
    kernel = hashlib.sha384(b"perf-aggregator/simulated-kernel/v1").digest()
    assert pcrs[1] == hashlib.sha384(bytes(48) + kernel).digest()
    application = hashlib.sha384(b"perf-aggregator/application/v1\0" + digest).digest()
    assert pcrs[2] == hashlib.sha384(bytes(48) + application).digest()
    assert all(pcrs[index] == bytes(48) for index in range(3, 16))


def test_changing_one_source_byte_changes_pcr0(tmp_path: Path) -> None:
    """Editing any enclave/shared .py file changes PCR0 and PCR2 but not PCR1."""
    tree = _copy_measured_tree(tmp_path / "copy")
    before = simulated_pcrs(tree)
    assert before == simulated_pcrs()
    target = tree / "enclave" / "nsm.py"
    source = bytearray(target.read_bytes())
    source[-2] ^= 0x01
    target.write_bytes(bytes(source))
    after = simulated_pcrs(tree)
    assert after[0] != before[0]
    assert after[2] != before[2]
    assert after[1] == before[1]


def test_renaming_a_file_changes_the_digest(tmp_path: Path) -> None:
    """Paths are measured too: moving code between files changes the measurement."""
    tree = _copy_measured_tree(tmp_path / "copy")
    before = source_digest(tree)
    (tree / "shared" / "errors.py").rename(tree / "shared" / "errors2.py")
    assert source_digest(tree) != before


def test_non_python_files_and_caches_are_not_measured(tmp_path: Path) -> None:
    """Only *.py sources count; __pycache__ and other files do not change PCR0."""
    tree = _copy_measured_tree(tmp_path / "copy")
    before = source_digest(tree)
    (tree / "enclave" / "__pycache__").mkdir()
    (tree / "enclave" / "__pycache__" / "x.py").write_text("junk")
    (tree / "enclave" / "notes.txt").write_text("junk")
    assert source_digest(tree) == before
