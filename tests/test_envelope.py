"""Credential envelopes: vectors, round trips, strict parsing, no oracle, no leaks."""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import shared.envelope as envelope_module
from shared.encoding import canonical_json
from shared.envelope import (
    ALG_HPKE_MLKEM768X25519,
    ALG_HPKE_X25519,
    ALG_X25519_HKDF,
    DEFAULT_ALG,
    MAX_CIPHERTEXT_BYTES,
    OPEN_FAILED_MESSAGE,
    SUPPORTED_ALGS,
    Credentials,
    Envelope,
    EnvelopeFormatError,
    EnvelopeOpener,
    HybridPrivateKey,
    encrypt_credentials,
    envelope_digest,
    open_credentials,
    seal,
)
from shared.errors import EnvelopeError, PerfAggError

VECTOR_DIR = Path(__file__).parent / "vectors" / "envelope"
ALGS = sorted(SUPPORTED_ALGS)
METADATA: dict[str, Any] = {"exchange": "binance", "label": "main", "ttl": 3600}

# Canary secrets: they must never appear in a repr, a message or a chained exception.
CANARY_KEY = "CANARY-api-key-5b1f0c"
CANARY_SECRET = "CANARY-api-secret-9e77d2"
CANARY_PASSPHRASE = "CANARY-passphrase-31aa"
CANARIES = (CANARY_KEY, CANARY_SECRET, CANARY_PASSPHRASE)

OPENER = EnvelopeOpener.generate(with_pq=True)
KEYS = OPENER.public_keys()
OTHER_OPENER = EnvelopeOpener.generate(with_pq=True)


def credentials(**overrides: Any) -> Credentials:
    fields: dict[str, Any] = {
        "exchange": "binance",
        "api_key": CANARY_KEY,
        "api_secret": CANARY_SECRET,
        "passphrase": CANARY_PASSPHRASE,
        "owner_pub": bytes(range(32)),
    }
    fields.update(overrides)
    return Credentials(**fields)


def sealed(
    plaintext: bytes = b"hello enclave", *, alg: str = DEFAULT_ALG, metadata: Any = None
) -> Envelope:
    return seal(
        plaintext,
        metadata=METADATA if metadata is None else metadata,
        alg=alg,
        recipient_x25519=KEYS.x25519,
        recipient_pq=KEYS.pq,
    )


def assert_open_fails(opener: EnvelopeOpener, envelope: Envelope) -> EnvelopeError:
    with pytest.raises(EnvelopeError) as info:
        opener.open(envelope)
    assert_generic(info.value)
    return info.value


def assert_generic(error: BaseException) -> None:
    """The one opening failure: fixed message, nothing chained."""
    assert type(error) is EnvelopeError
    assert str(error) == OPEN_FAILED_MESSAGE
    assert error.args == (OPEN_FAILED_MESSAGE,)
    assert error.__cause__ is None
    assert error.__context__ is None


def replace_b64(wire: dict[str, Any], name: str, transform: Callable[[bytes], bytes]) -> None:
    wire[name] = base64.b64encode(transform(base64.b64decode(wire[name]))).decode()


def flip(data: bytes, index: int, mask: int = 0x01) -> bytes:
    mutable = bytearray(data)
    mutable[index] ^= mask
    return bytes(mutable)


# --------------------------------------------------------------------------- public API


def test_all_is_exactly_the_public_api() -> None:
    """__all__ lists every public name of the module and nothing else."""
    assert set(envelope_module.__all__) == {
        "ALG_HPKE_MLKEM768X25519",
        "ALG_HPKE_X25519",
        "ALG_X25519_HKDF",
        "DEFAULT_ALG",
        "ENVELOPE_INFO",
        "HYBRID_PUBLIC_BYTES",
        "MAX_CIPHERTEXT_BYTES",
        "MAX_METADATA_BYTES",
        "OPEN_FAILED_MESSAGE",
        "SUPPORTED_ALGS",
        "Credentials",
        "Envelope",
        "EnvelopeFormatError",
        "EnvelopeOpener",
        "EnvelopePublicKeys",
        "HybridPrivateKey",
        "encrypt_credentials",
        "envelope_digest",
        "open_credentials",
        "seal",
    }
    for name in envelope_module.__all__:
        assert hasattr(envelope_module, name)


def test_default_alg_is_the_contract_alg() -> None:
    """The default never changes silently: it is the seed-compatible CONTRACT alg."""
    assert DEFAULT_ALG == "x25519-hkdf-sha256-aes256gcm"
    assert envelope_module.ENVELOPE_INFO == b"perf-aggregator/v1/credentials"


def test_format_error_is_a_value_error_but_not_an_open_failure() -> None:
    """Callers map EnvelopeFormatError to 400 and EnvelopeError to 422."""
    assert issubclass(EnvelopeFormatError, ValueError)
    assert issubclass(EnvelopeFormatError, PerfAggError)
    assert not issubclass(EnvelopeFormatError, EnvelopeError)


# --------------------------------------------------------------------------- vectors


def load_vector_files() -> list[dict[str, Any]]:
    files = sorted(VECTOR_DIR.glob("*.json"))
    assert {path.stem for path in files} == set(SUPPORTED_ALGS)
    return [json.loads(path.read_text(encoding="utf-8")) for path in files]


VECTOR_FILES = load_vector_files()
VALID_VECTORS = [(doc, vector) for doc in VECTOR_FILES for vector in doc["vectors"]]
INVALID_VECTORS = [(doc, vector) for doc in VECTOR_FILES for vector in doc["invalid"]]


def opener_for(document: dict[str, Any]) -> EnvelopeOpener:
    recipient = document["recipient"]
    x25519_private = X25519PrivateKey.from_private_bytes(bytes.fromhex(recipient["x25519_private"]))
    if document["alg"] != ALG_HPKE_MLKEM768X25519:
        opener = EnvelopeOpener(x25519_private)
        assert base64.b64encode(opener.public_keys().x25519).decode() == recipient["x25519_public"]
        return opener
    hybrid = HybridPrivateKey(
        mlkem=MLKEM768PrivateKey.from_seed_bytes(bytes.fromhex(recipient["mlkem768_seed"])),
        x25519=x25519_private,
    )
    opener = EnvelopeOpener(X25519PrivateKey.generate(), pq_private=hybrid)
    assert base64.b64encode(hybrid.public_bytes()).decode() == recipient["public"]
    return opener


@pytest.mark.parametrize(
    ("document", "vector"),
    VALID_VECTORS,
    ids=[f"{d['alg']}:{v['name']}" for d, v in VALID_VECTORS],
)
def test_known_answer_vector_opens(document: dict[str, Any], vector: dict[str, Any]) -> None:
    """Each stored vector opens to its plaintext and canonical metadata under the fixed key."""
    envelope = Envelope.from_wire(vector["wire"])
    assert envelope.alg == document["alg"]
    assert canonical_json(envelope.metadata).decode() == vector["metadata_canonical"]
    assert opener_for(document).open(envelope) == vector["plaintext"].encode()
    expected = vector["credentials"]
    if expected is not None:
        opened = open_credentials(opener_for(document), envelope)
        owner = None if expected["owner_pub"] is None else base64.b64decode(expected["owner_pub"])
        assert opened == Credentials(**{**expected, "owner_pub": owner})


@pytest.mark.parametrize(
    "vector",
    [v for d, v in VALID_VECTORS if d["alg"] == ALG_X25519_HKDF],
    ids=lambda v: v["name"],
)
def test_default_alg_vector_reseals_byte_for_byte(vector: dict[str, Any]) -> None:
    """With the vector's ephemeral key and nonce injected, sealing reproduces every wire field."""
    document = next(d for d in VECTOR_FILES if d["alg"] == ALG_X25519_HKDF)
    envelope = envelope_module._seal_default(
        vector["plaintext"].encode(),
        recipient_x25519=base64.b64decode(document["recipient"]["x25519_public"]),
        metadata=vector["wire"]["metadata"],
        ephemeral_private=X25519PrivateKey.from_private_bytes(
            bytes.fromhex(vector["ephemeral_private"])
        ),
        nonce=bytes.fromhex(vector["nonce"]),
    )
    assert envelope.to_wire() == vector["wire"]


def test_default_alg_vector_opens_without_alg_field() -> None:
    """CONTRACT: an envelope with no ``alg`` is the default alg (seed clients send none)."""
    document = next(d for d in VECTOR_FILES if d["alg"] == ALG_X25519_HKDF)
    vector = document["vectors"][0]
    wire = {k: v for k, v in vector["wire"].items() if k != "alg"}
    envelope = Envelope.from_wire(wire)
    assert envelope.alg == DEFAULT_ALG
    assert opener_for(document).open(envelope) == vector["plaintext"].encode()


@pytest.mark.parametrize(
    ("document", "vector"),
    INVALID_VECTORS,
    ids=[f"{d['alg']}:{v['name']}" for d, v in INVALID_VECTORS],
)
def test_invalid_vector_fails_with_the_generic_error(
    document: dict[str, Any], vector: dict[str, Any]
) -> None:
    """Stored tampered envelopes parse but never open, always with the same error."""
    assert_open_fails(opener_for(document), Envelope.from_wire(vector["wire"]))


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("alg", ALGS)
def test_seal_then_open_round_trips_through_json(alg: str) -> None:
    """A sealed envelope survives JSON transport and opens to the same bytes."""
    envelope = sealed(b"\x00binary\xffplaintext", alg=alg)
    wire = json.loads(json.dumps(envelope.to_wire()))
    assert OPENER.open(Envelope.from_wire(wire)) == b"\x00binary\xffplaintext"


@pytest.mark.parametrize(
    ("alg", "ephemeral_len", "nonce_len"),
    [(ALG_X25519_HKDF, 32, 12), (ALG_HPKE_X25519, 32, 0), (ALG_HPKE_MLKEM768X25519, 1120, 0)],
)
def test_wire_shape_per_alg(alg: str, ephemeral_len: int, nonce_len: int) -> None:
    """Documented field lengths: HPKE puts enc in ephemeral_pub and sends an empty nonce."""
    envelope = sealed(b"x" * 100, alg=alg)
    assert len(envelope.ephemeral_pub) == ephemeral_len
    assert len(envelope.nonce) == nonce_len
    assert len(envelope.tag) == 16
    assert len(envelope.ciphertext) == 100
    assert envelope.to_wire()["alg"] == alg


@pytest.mark.parametrize("alg", ALGS)
def test_credentials_round_trip(alg: str) -> None:
    """encrypt_credentials -> open_credentials returns equal credentials for every alg."""
    original = credentials()
    envelope = encrypt_credentials(
        original, metadata=METADATA, alg=alg, recipient_x25519=KEYS.x25519, recipient_pq=KEYS.pq
    )
    assert open_credentials(OPENER, envelope) == original


def test_credentials_plaintext_is_the_contract_json() -> None:
    """Plaintext uses the wire names apiKey/apiSecret and base64 owner_pub, nothing else."""
    document = json.loads(credentials().to_plaintext())
    assert document == {
        "exchange": "binance",
        "apiKey": CANARY_KEY,
        "apiSecret": CANARY_SECRET,
        "passphrase": CANARY_PASSPHRASE,
        "owner_pub": base64.b64encode(bytes(range(32))).decode(),
    }
    minimal = Credentials(exchange="kraken", api_key="k", api_secret="s")
    assert json.loads(minimal.to_plaintext()) == {
        "exchange": "kraken",
        "apiKey": "k",
        "apiSecret": "s",
    }


def test_envelope_copies_metadata() -> None:
    """Mutating the caller's dict or to_wire() output cannot change an envelope."""
    metadata = copy.deepcopy(METADATA)
    envelope = sealed(metadata=metadata)
    metadata["label"] = "changed"
    envelope.to_wire()["metadata"]["label"] = "changed too"
    assert envelope.metadata == METADATA
    assert OPENER.open(envelope) == b"hello enclave"


def test_public_keys_and_supported_algs() -> None:
    """The opener publishes enc (32 B) and the 1216-byte hybrid key, and opens what it holds."""
    assert len(KEYS.x25519) == 32
    assert KEYS.pq is not None
    assert len(KEYS.pq) == envelope_module.HYBRID_PUBLIC_BYTES == 1216
    classical = EnvelopeOpener.generate()
    assert classical.public_keys().pq is None
    assert classical.supported_algs() == {ALG_X25519_HKDF, ALG_HPKE_X25519}
    assert OPENER.supported_algs() == SUPPORTED_ALGS


# --------------------------------------------------------------------------- digest


def test_digest_ignores_encoding_choices_that_do_not_change_the_message() -> None:
    """Absent vs explicit default alg, key order and 3600 vs 3600.0 give one digest."""
    wire = sealed().to_wire()
    reordered = {
        **{k: v for k, v in wire.items() if k != "alg"},
        "metadata": {"ttl": 3600.0, "label": "main", "exchange": "binance"},
    }
    digest = envelope_digest(Envelope.from_wire(wire))
    assert len(digest) == 32
    assert envelope_digest(Envelope.from_wire(reordered)) == digest


def test_digest_distinguishes_envelopes() -> None:
    """Two seals of the same plaintext, or a changed field, give different digests."""
    first, second = sealed(), sealed()
    assert envelope_digest(first) != envelope_digest(second)
    wire = first.to_wire()
    replace_b64(wire, "tag", lambda tag: flip(tag, 0))
    assert envelope_digest(Envelope.from_wire(wire)) != envelope_digest(first)


# --------------------------------------------------------------------------- format errors


def _valid_wire(alg: str = DEFAULT_ALG) -> dict[str, Any]:
    return sealed(b"plaintext", alg=alg).to_wire()


def _b64_len(size: int) -> str:
    return base64.b64encode(b"\x01" * size).decode()


def _with_int_key(wire: dict[str, Any]) -> dict[object, object]:
    out: dict[object, object] = {1: "x"}
    out.update(wire)
    return out


def _deep(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"k": value}
    return value


FORMAT_CASES: list[tuple[str, Callable[[dict[str, Any]], object], str]] = [
    ("not-an-object", lambda w: [w], "envelope"),
    ("string-instead-of-object", lambda w: "envelope", "envelope"),
    ("unexpected-field", lambda w: {**w, "apiKey": CANARY_KEY}, "unexpected field"),
    ("non-string-key", lambda w: _with_int_key(w), "non-string key"),
    ("alg-unknown", lambda w: {**w, "alg": "rot13"}, "'alg'"),
    ("alg-null", lambda w: {**w, "alg": None}, "'alg'"),
    ("alg-number", lambda w: {**w, "alg": 1}, "'alg'"),
    ("alg-wrong-case", lambda w: {**w, "alg": DEFAULT_ALG.upper()}, "'alg'"),
    *[
        (f"missing-{name}", lambda w, n=name: {k: v for k, v in w.items() if k != n}, f"'{name}'")
        for name in ("ephemeral_pub", "nonce", "ciphertext", "tag", "metadata")
    ],
    *[
        (f"{name}-not-string-{kind}", lambda w, n=name, v=value: {**w, n: v}, f"'{name}'")
        for name in ("ephemeral_pub", "nonce", "ciphertext", "tag")
        for kind, value in (("int", 7), ("null", None), ("list", [1]), ("bytes", b"\x00" * 12))
    ],
    *[
        (f"{name}-bad-base64-{kind}", lambda w, n=name, v=value: {**w, n: v}, f"'{name}'")
        for name in ("ephemeral_pub", "nonce", "ciphertext", "tag")
        for kind, value in (
            ("alphabet", "@@@@"),
            ("urlsafe", "-_-_"),
            ("unpadded", "AAECAw"),
            ("whitespace", "AAEC Aw=="),
            ("trailing-bits", "AB=="),
            ("non-ascii", "AAECAw\u00e9="),
            ("canary", CANARY_SECRET),
        )
    ],
    ("ephemeral-31", lambda w: {**w, "ephemeral_pub": _b64_len(31)}, "'ephemeral_pub'"),
    ("ephemeral-33", lambda w: {**w, "ephemeral_pub": _b64_len(33)}, "'ephemeral_pub'"),
    ("ephemeral-1120-for-x25519", lambda w: {**w, "ephemeral_pub": _b64_len(1120)}, "ephemeral"),
    ("nonce-11", lambda w: {**w, "nonce": _b64_len(11)}, "'nonce'"),
    ("nonce-13", lambda w: {**w, "nonce": _b64_len(13)}, "'nonce'"),
    ("nonce-empty", lambda w: {**w, "nonce": ""}, "'nonce'"),
    ("tag-15", lambda w: {**w, "tag": _b64_len(15)}, "'tag'"),
    ("tag-17", lambda w: {**w, "tag": _b64_len(17)}, "'tag'"),
    ("tag-empty", lambda w: {**w, "tag": ""}, "'tag'"),
    ("ciphertext-empty", lambda w: {**w, "ciphertext": ""}, "'ciphertext'"),
    (
        "ciphertext-oversized",
        lambda w: {**w, "ciphertext": _b64_len(MAX_CIPHERTEXT_BYTES + 1)},
        "'ciphertext'",
    ),
    (
        "ciphertext-huge",
        lambda w: {**w, "ciphertext": "A" * (8 * MAX_CIPHERTEXT_BYTES)},
        "'ciphertext'",
    ),
    ("metadata-list", lambda w: {**w, "metadata": [1]}, "'metadata'"),
    ("metadata-string", lambda w: {**w, "metadata": "{}"}, "'metadata'"),
    ("metadata-null", lambda w: {**w, "metadata": None}, "'metadata'"),
    ("metadata-oversized", lambda w: {**w, "metadata": {"label": "x" * 5000}}, "'metadata'"),
    (
        "metadata-oversized-many-keys",
        lambda w: {**w, "metadata": {f"k{i}": i for i in range(1000)}},
        "'metadata'",
    ),
    ("metadata-too-deep", lambda w: {**w, "metadata": _deep(50)}, "'metadata'"),
    ("metadata-very-deep", lambda w: {**w, "metadata": _deep(5000)}, "'metadata'"),
    ("metadata-nan", lambda w: {**w, "metadata": {"ttl": float("nan")}}, "'metadata'"),
    ("metadata-infinity", lambda w: {**w, "metadata": {"ttl": float("inf")}}, "'metadata'"),
    ("metadata-unsafe-int", lambda w: {**w, "metadata": {"ttl": 2**53}}, "'metadata'"),
    ("metadata-lone-surrogate", lambda w: {**w, "metadata": {"label": "\ud800"}}, "'metadata'"),
    ("metadata-surrogate-key", lambda w: {**w, "metadata": {"\udfff": 1}}, "'metadata'"),
    ("metadata-non-string-key", lambda w: {**w, "metadata": {1: 1}}, "'metadata'"),
    ("metadata-bytes-value", lambda w: {**w, "metadata": {"k": b"v"}}, "'metadata'"),
    ("metadata-set-value", lambda w: {**w, "metadata": {"k": {1}}}, "'metadata'"),
]


@pytest.mark.parametrize(
    ("mutate", "field_hint"),
    [(m, h) for _, m, h in FORMAT_CASES],
    ids=[name for name, _, _ in FORMAT_CASES],
)
def test_from_wire_rejects_bad_structure(
    mutate: Callable[[dict[str, Any]], object], field_hint: str
) -> None:
    """Every malformed wire form raises EnvelopeFormatError naming the field, never the value."""
    with pytest.raises(EnvelopeFormatError) as info:
        Envelope.from_wire(mutate(_valid_wire()))
    message = str(info.value)
    assert field_hint in message
    for canary in CANARIES:
        assert canary not in message
    assert "@@@@" not in message
    assert len(message) < 120


@pytest.mark.parametrize("alg", [ALG_HPKE_X25519, ALG_HPKE_MLKEM768X25519])
@pytest.mark.parametrize(
    ("name", "value"),
    [("nonce", _b64_len(12)), ("nonce", _b64_len(1)), ("ephemeral_pub", _b64_len(64))],
)
def test_hpke_wire_lengths_are_strict(alg: str, name: str, value: str) -> None:
    """HPKE envelopes must carry an empty nonce and an enc of the KEM's exact length."""
    with pytest.raises(EnvelopeFormatError, match=name):
        Envelope.from_wire({**_valid_wire(alg), name: value})


def test_pq_enc_of_x25519_length_is_rejected() -> None:
    """A 32-byte enc is refused for the hybrid alg (Nenc = 1120)."""
    with pytest.raises(EnvelopeFormatError, match="ephemeral_pub"):
        Envelope.from_wire({**_valid_wire(ALG_HPKE_MLKEM768X25519), "ephemeral_pub": _b64_len(32)})


def test_direct_construction_is_validated() -> None:
    """Envelope(...) checks types too: bytearray and unknown alg are refused."""
    valid = sealed()
    fields: dict[str, Any] = {
        "alg": valid.alg,
        "ephemeral_pub": valid.ephemeral_pub,
        "nonce": valid.nonce,
        "ciphertext": valid.ciphertext,
        "tag": valid.tag,
        "metadata": valid.metadata,
    }
    assert Envelope(**fields) == valid
    with pytest.raises(EnvelopeFormatError, match="'tag'"):
        Envelope(**{**fields, "tag": bytearray(valid.tag)})
    with pytest.raises(EnvelopeFormatError, match="'alg'"):
        Envelope(**{**fields, "alg": "none"})


# --------------------------------------------------------------------------- opening failures

FLIP_FIELDS = {
    ALG_X25519_HKDF: ("ephemeral_pub", "nonce", "ciphertext", "tag"),
    ALG_HPKE_X25519: ("ephemeral_pub", "ciphertext", "tag"),
    ALG_HPKE_MLKEM768X25519: ("ephemeral_pub", "ciphertext", "tag"),
}
FLIP_CASES = [
    (alg, name, where, mask)
    for alg in ALGS
    for name in FLIP_FIELDS[alg]
    for where in ("first", "middle", "last")
    for mask in (0x01, 0x80)
]


@pytest.mark.parametrize(("alg", "name", "where", "mask"), FLIP_CASES)
def test_flipped_bit_in_any_field_fails_generically(
    alg: str, name: str, where: str, mask: int
) -> None:
    """One flipped bit anywhere (incl. X25519's ignored bit 255) makes opening fail."""
    envelope = sealed(b"0123456789abcdef0123", alg=alg)
    wire = envelope.to_wire()
    size = len(getattr(envelope, name))
    index = {"first": 0, "middle": size // 2, "last": size - 1}[where]
    replace_b64(wire, name, lambda data: flip(data, index, mask))
    assert_open_fails(OPENER, Envelope.from_wire(wire))


@pytest.mark.parametrize("alg", ALGS)
def test_wrong_recipient_key_fails(alg: str) -> None:
    """An envelope for one enclave does not open in another."""
    assert_open_fails(OTHER_OPENER, sealed(alg=alg))


def test_pq_envelope_without_pq_key_fails() -> None:
    """An opener without the hybrid key refuses hybrid envelopes with the generic error."""
    assert_open_fails(EnvelopeOpener.generate(), sealed(alg=ALG_HPKE_MLKEM768X25519))


METADATA_CHANGES: list[tuple[str, Callable[[dict[str, Any]], dict[str, Any]]]] = [
    ("exchange-value", lambda m: {**m, "exchange": "kraken"}),
    ("label-value", lambda m: {**m, "label": "main "}),
    ("ttl-value", lambda m: {**m, "ttl": 3601}),
    ("ttl-type", lambda m: {**m, "ttl": "3600"}),
    ("exchange-key", lambda m: {"Exchange" if k == "exchange" else k: v for k, v in m.items()}),
    ("label-key", lambda m: {"labels" if k == "label" else k: v for k, v in m.items()}),
    ("ttl-key", lambda m: {"TTL" if k == "ttl" else k: v for k, v in m.items()}),
    ("key-added", lambda m: {**m, "sandbox": False}),
    ("key-removed", lambda m: {k: v for k, v in m.items() if k != "label"}),
    ("emptied", lambda m: {}),
]


@pytest.mark.parametrize("alg", ALGS)
@pytest.mark.parametrize(
    "change", [c for _, c in METADATA_CHANGES], ids=[n for n, _ in METADATA_CHANGES]
)
def test_changed_metadata_fails(
    alg: str, change: Callable[[dict[str, Any]], dict[str, Any]]
) -> None:
    """Metadata is authenticated (AAD / HPKE info): any change makes opening fail."""
    wire = sealed(alg=alg).to_wire()
    wire["metadata"] = change(wire["metadata"])
    assert_open_fails(OPENER, Envelope.from_wire(wire))


def test_relabelled_alg_fails() -> None:
    """A default envelope presented as HPKE (and vice versa) does not open."""
    default_wire = sealed().to_wire()
    assert_open_fails(
        OPENER, Envelope.from_wire({**default_wire, "alg": ALG_HPKE_X25519, "nonce": ""})
    )
    hpke_wire = sealed(alg=ALG_HPKE_X25519).to_wire()
    assert_open_fails(
        OPENER, Envelope.from_wire({**hpke_wire, "alg": ALG_X25519_HKDF, "nonce": _b64_len(12)})
    )


LOW_ORDER_POINTS = [
    bytes(32),  # 0
    (1).to_bytes(32, "little"),  # 1
    (2**255 - 19 - 1).to_bytes(32, "little"),  # p - 1
    (2**255 - 19).to_bytes(32, "little"),  # p (non-canonical 0)
    (2**255 - 19 + 1).to_bytes(32, "little"),  # p + 1 (non-canonical 1)
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
]


@pytest.mark.parametrize("alg", [ALG_X25519_HKDF, ALG_HPKE_X25519])
@pytest.mark.parametrize("point", LOW_ORDER_POINTS, ids=lambda p: p.hex()[:8])
def test_low_order_ephemeral_points_fail(alg: str, point: bytes) -> None:
    """Low-order ephemeral keys (all-zero shared secret) are refused generically."""
    wire = sealed(alg=alg).to_wire()
    wire["ephemeral_pub"] = base64.b64encode(point).decode()
    assert_open_fails(OPENER, Envelope.from_wire(wire))


def test_all_zero_shared_secret_is_refused_before_key_derivation() -> None:
    """CONTRACT: the explicit all-zero check holds even if the library returned zeros."""
    with pytest.raises(envelope_module._OpenFailed):
        envelope_module._derive_default_key(bytes(32), bytes(32), KEYS.x25519)


def test_open_rejects_non_envelope() -> None:
    """Passing a wire dict instead of an Envelope is an opening failure, not a crash."""
    with pytest.raises(EnvelopeError) as info:
        OPENER.open(sealed().to_wire())  # type: ignore[arg-type]
    assert_generic(info.value)


# --------------------------------------------------------------------------- credentials layer


def seal_raw(plaintext: bytes, metadata: dict[str, Any] | None = None) -> Envelope:
    return seal(plaintext, metadata=metadata or METADATA, recipient_x25519=KEYS.x25519)


def _json(obj: Any) -> bytes:
    return json.dumps(obj).encode()


GOOD_PLAINTEXT = {"exchange": "binance", "apiKey": CANARY_KEY, "apiSecret": CANARY_SECRET}

BAD_PLAINTEXTS: list[tuple[str, bytes]] = [
    ("not-json", b"apiKey=" + CANARY_KEY.encode()),
    ("truncated-json", _json(GOOD_PLAINTEXT)[:-1]),
    ("json-array", _json([GOOD_PLAINTEXT])),
    ("json-string", _json(CANARY_SECRET)),
    ("invalid-utf8", _json(GOOD_PLAINTEXT)[:-2] + b'\xff"}'),
    ("utf16", json.dumps(GOOD_PLAINTEXT).encode("utf-16")),
    ("missing-apiKey", _json({"exchange": "binance", "apiSecret": CANARY_SECRET})),
    ("missing-apiSecret", _json({"exchange": "binance", "apiKey": CANARY_KEY})),
    ("missing-exchange", _json({"apiKey": CANARY_KEY, "apiSecret": CANARY_SECRET})),
    ("unknown-key", _json({**GOOD_PLAINTEXT, "api_secret": CANARY_SECRET})),
    ("snake-case-names", _json({"exchange": "binance", "api_key": "k", "api_secret": "s"})),
    ("empty-apiKey", _json({**GOOD_PLAINTEXT, "apiKey": ""})),
    ("number-apiSecret", _json({**GOOD_PLAINTEXT, "apiSecret": 12345})),
    ("null-apiKey", _json({**GOOD_PLAINTEXT, "apiKey": None})),
    ("number-passphrase", _json({**GOOD_PLAINTEXT, "passphrase": 1})),
    ("owner-pub-bad-base64", _json({**GOOD_PLAINTEXT, "owner_pub": "not base64!"})),
    ("owner-pub-31-bytes", _json({**GOOD_PLAINTEXT, "owner_pub": _b64_len(31)})),
    ("owner-pub-33-bytes", _json({**GOOD_PLAINTEXT, "owner_pub": _b64_len(33)})),
    ("duplicate-key", b'{"exchange":"binance","apiKey":"a","apiKey":"b","apiSecret":"c"}'),
    ("nan-constant", b'{"exchange":"binance","apiKey":"a","apiSecret":"c","passphrase":NaN}'),
    ("lone-surrogate", b'{"exchange":"binance","apiKey":"\\ud800","apiSecret":"c"}'),
    ("exchange-mismatch", _json({**GOOD_PLAINTEXT, "exchange": "kraken"})),
    ("exchange-case-mismatch", _json({**GOOD_PLAINTEXT, "exchange": "Binance"})),
    ("deeply-nested", b"[" * 100_000 + b"]" * 100_000),
]


@pytest.mark.parametrize(
    "plaintext", [p for _, p in BAD_PLAINTEXTS], ids=[n for n, _ in BAD_PLAINTEXTS]
)
def test_authentic_but_invalid_plaintext_fails_generically(plaintext: bytes) -> None:
    """A plaintext that decrypts but is not the CONTRACT JSON gives the same error as a bad tag."""
    envelope = seal_raw(plaintext[:MAX_CIPHERTEXT_BYTES])
    with pytest.raises(EnvelopeError) as info:
        open_credentials(OPENER, envelope)
    assert_generic(info.value)


@pytest.mark.parametrize(
    "metadata",
    [{"label": "main"}, {**METADATA, "exchange": None}, {**METADATA, "exchange": ["binance"]}],
    ids=["missing", "null", "list"],
)
def test_metadata_without_matching_exchange_fails(metadata: dict[str, Any]) -> None:
    """metadata.exchange must be present and equal the plaintext exchange."""
    with pytest.raises(EnvelopeError) as info:
        open_credentials(OPENER, seal_raw(_json(GOOD_PLAINTEXT), metadata))
    assert_generic(info.value)


def test_javascript_style_plaintext_opens() -> None:
    """Non-canonical JSON (key order, spaces, null passphrase) from other clients is accepted."""
    plaintext = (
        b'{ "exchange": "binance", "apiKey": "k", "apiSecret": "s", '
        b'"passphrase": null, "owner_pub": null }'
    )
    opened = open_credentials(OPENER, seal_raw(plaintext))
    assert opened == Credentials(exchange="binance", api_key="k", api_secret="s")


def test_every_opening_failure_has_one_message() -> None:
    """Tag, key, metadata, alg, point and plaintext failures are indistinguishable by message."""
    messages: set[str] = set()
    failures: list[Callable[[], object]] = [
        lambda: OTHER_OPENER.open(sealed()),
        lambda: EnvelopeOpener.generate().open(sealed(alg=ALG_HPKE_MLKEM768X25519)),
        lambda: OPENER.open(
            Envelope.from_wire({**sealed().to_wire(), "metadata": {"exchange": "kraken"}})
        ),
        lambda: OPENER.open(
            Envelope.from_wire(
                {**sealed().to_wire(), "ephemeral_pub": base64.b64encode(bytes(32)).decode()}
            )
        ),
        lambda: open_credentials(OPENER, seal_raw(b"not json")),
        lambda: open_credentials(OPENER, seal_raw(_json({**GOOD_PLAINTEXT, "exchange": "x"}))),
    ]
    for failure in failures:
        with pytest.raises(EnvelopeError) as info:
            failure()
        assert_generic(info.value)
        messages.add(str(info.value))
    assert messages == {OPEN_FAILED_MESSAGE}


# --------------------------------------------------------------------------- sealing input checks

SEAL_ERRORS: list[tuple[str, dict[str, Any]]] = [
    ("empty-plaintext", {"plaintext": b""}),
    ("oversized-plaintext", {"plaintext": b"x" * (MAX_CIPHERTEXT_BYTES + 1)}),
    ("str-plaintext", {"plaintext": "text"}),
    ("unknown-alg", {"alg": "aes-ecb"}),
    ("missing-x25519", {"recipient_x25519": None}),
    ("short-x25519", {"recipient_x25519": bytes(31)}),
    ("long-x25519", {"recipient_x25519": bytes(33)}),
    ("low-order-x25519", {"recipient_x25519": bytes(32)}),
    ("hpke-missing-x25519", {"alg": ALG_HPKE_X25519, "recipient_x25519": None}),
    ("hpke-low-order-x25519", {"alg": ALG_HPKE_X25519, "recipient_x25519": bytes(32)}),
    ("pq-missing", {"alg": ALG_HPKE_MLKEM768X25519, "recipient_pq": None}),
    ("pq-short", {"alg": ALG_HPKE_MLKEM768X25519, "recipient_pq": bytes(1215)}),
    ("pq-invalid-mlkem", {"alg": ALG_HPKE_MLKEM768X25519, "recipient_pq": b"\xff" * 1216}),
    (
        "pq-low-order-x25519",
        {"alg": ALG_HPKE_MLKEM768X25519, "recipient_pq": (KEYS.pq or b"")[:1184] + bytes(32)},
    ),
    ("metadata-list", {"metadata": [1]}),
    ("metadata-nan", {"metadata": {"ttl": float("nan")}}),
]


@pytest.mark.parametrize("overrides", [o for _, o in SEAL_ERRORS], ids=[n for n, _ in SEAL_ERRORS])
def test_seal_refuses_bad_input(overrides: dict[str, Any]) -> None:
    """Client-side input checks raise EnvelopeError before anything is sent."""
    arguments: dict[str, Any] = {
        "plaintext": b"plaintext",
        "metadata": METADATA,
        "alg": DEFAULT_ALG,
        "recipient_x25519": KEYS.x25519,
        "recipient_pq": KEYS.pq,
    }
    arguments.update(overrides)
    plaintext = arguments.pop("plaintext")
    with pytest.raises(EnvelopeError):
        seal(plaintext, **arguments)


def test_encrypt_credentials_refuses_exchange_mismatch() -> None:
    """The client refuses to seal credentials whose exchange differs from metadata.exchange."""
    with pytest.raises(EnvelopeError, match="exchange") as info:
        encrypt_credentials(
            credentials(exchange="kraken"), metadata=METADATA, recipient_x25519=KEYS.x25519
        )
    for canary in CANARIES:
        assert canary not in str(info.value)


@pytest.mark.parametrize(
    "overrides",
    [
        {"exchange": ""},
        {"exchange": "x" * 65},
        {"api_key": ""},
        {"api_key": 5},
        {"api_secret": None},
        {"api_secret": "s" * 8193},
        {"passphrase": ""},
        {"api_key": CANARY_KEY + "\ud800"},
        {"owner_pub": bytes(31)},
        {"owner_pub": "not bytes"},
    ],
)
def test_credentials_validate_fields(overrides: dict[str, Any]) -> None:
    """Credentials refuse empty, oversized or mistyped fields, without echoing them."""
    with pytest.raises(ValueError) as info:
        credentials(**overrides)
    for canary in CANARIES:
        assert canary not in str(info.value)


# --------------------------------------------------------------------------- canaries


def test_credentials_repr_and_str_never_show_secrets() -> None:
    """repr/str show the exchange and owner key but redact api_key, api_secret, passphrase."""
    value = credentials()
    for text in (repr(value), str(value), f"{value}", f"{value!r}", repr([value])):
        for canary in CANARIES:
            assert canary not in text
        assert "binance" in text
        assert "<redacted>" in text


def test_key_holders_repr_never_show_private_keys() -> None:
    """Neither the opener nor the hybrid key prints key material."""
    hybrid = HybridPrivateKey.generate()
    private = hybrid.mlkem.private_bytes_raw().hex()
    assert private not in repr(hybrid)
    assert repr(hybrid) == "HybridPrivateKey()"
    assert repr(OPENER) == "EnvelopeOpener(pq=True)"


def _error_texts(error: BaseException) -> list[str]:
    texts = [str(error), repr(error), *map(repr, error.args)]
    for chained in (error.__cause__, error.__context__):
        if chained is not None:
            texts += _error_texts(chained)
    return texts


@pytest.mark.parametrize("alg", ALGS)
def test_no_raised_error_contains_a_secret(alg: str) -> None:
    """Every failure path that saw the plaintext raises errors free of the canaries."""
    raised: list[BaseException] = []
    cases: list[Callable[[], object]] = [
        # decrypts, then fails JSON parsing (json's error would carry the whole document)
        lambda: open_credentials(
            OPENER,
            seal(
                b"{" + CANARY_SECRET.encode() + CANARY_KEY.encode(),
                metadata=METADATA,
                alg=alg,
                recipient_x25519=KEYS.x25519,
                recipient_pq=KEYS.pq,
            ),
        ),
        # decrypts, valid JSON, wrong exchange
        lambda: open_credentials(
            OPENER,
            seal(
                credentials(exchange="kraken").to_plaintext(),
                metadata=METADATA,
                alg=alg,
                recipient_x25519=KEYS.x25519,
                recipient_pq=KEYS.pq,
            ),
        ),
        # decrypts, invalid field value holding a canary
        lambda: open_credentials(
            OPENER,
            seal(
                _json({**GOOD_PLAINTEXT, "owner_pub": CANARY_PASSPHRASE}),
                metadata=METADATA,
                alg=alg,
                recipient_x25519=KEYS.x25519,
                recipient_pq=KEYS.pq,
            ),
        ),
        lambda: Envelope.from_wire({**sealed(alg=alg).to_wire(), "tag": CANARY_SECRET}),
        lambda: Envelope.from_wire({**sealed(alg=alg).to_wire(), CANARY_KEY: 1}),
        lambda: Envelope.from_wire(
            {**sealed(alg=alg).to_wire(), "metadata": {"k": CANARY_KEY * 1000}}
        ),
        lambda: credentials(api_secret=CANARY_SECRET * 1000),
        lambda: encrypt_credentials(
            credentials(), metadata={"exchange": CANARY_KEY}, recipient_x25519=KEYS.x25519
        ),
    ]
    for case in cases:
        with pytest.raises((EnvelopeError, EnvelopeFormatError, ValueError)) as info:
            case()
        raised.append(info.value)
    for error in raised:
        for text in _error_texts(error):
            for canary in CANARIES:
                assert canary not in text


# --------------------------------------------------------------------------- property tests

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=8)
)
JSON_LIKE = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=12) | st.integers(), children, max_size=6)
    ),
    max_leaves=25,
)
B64ISH = st.text(alphabet="ABCDEFGHabcdef0123456789+/=-_ \n", max_size=64) | st.builds(
    lambda raw: base64.b64encode(raw).decode(), st.binary(max_size=64)
)
WIRE_LIKE = st.fixed_dictionaries(
    {
        "ephemeral_pub": B64ISH | JSON_LIKE,
        "nonce": B64ISH | JSON_LIKE,
        "ciphertext": B64ISH | JSON_LIKE,
        "tag": B64ISH | JSON_LIKE,
        "metadata": JSON_LIKE,
    },
    optional={"alg": st.sampled_from([*ALGS, "other"]) | JSON_LIKE, "extra": JSON_LIKE},
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(JSON_LIKE | WIRE_LIKE)
def test_from_wire_raises_only_format_errors(obj: Any) -> None:
    """Arbitrary JSON-like input yields an Envelope or EnvelopeFormatError, nothing else."""
    try:
        envelope = Envelope.from_wire(obj)
    except EnvelopeFormatError:
        return
    assert envelope.alg in SUPPORTED_ALGS


@st.composite
def arbitrary_envelopes(draw: st.DrawFn) -> Envelope:
    alg = draw(st.sampled_from(ALGS))
    ephemeral_len = 1120 if alg == ALG_HPKE_MLKEM768X25519 else 32
    return Envelope(
        alg=alg,
        ephemeral_pub=draw(st.binary(min_size=ephemeral_len, max_size=ephemeral_len)),
        nonce=draw(st.binary(min_size=12, max_size=12)) if alg == ALG_X25519_HKDF else b"",
        ciphertext=draw(st.binary(min_size=1, max_size=300)),
        tag=draw(st.binary(min_size=16, max_size=16)),
        metadata=draw(st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=4)),
    )


@settings(max_examples=200, deadline=None)
@given(arbitrary_envelopes())
def test_open_of_arbitrary_bytes_raises_only_the_generic_error(envelope: Envelope) -> None:
    """Random well-shaped envelopes never open and always fail with the one error."""
    with pytest.raises(EnvelopeError) as info:
        open_credentials(OPENER, envelope)
    assert_generic(info.value)


@settings(max_examples=150, deadline=None)
@given(st.binary(min_size=1, max_size=512))
def test_open_credentials_of_arbitrary_plaintext(plaintext: bytes) -> None:
    """Any authentic plaintext yields Credentials or the generic error, never another exception."""
    try:
        opened = open_credentials(OPENER, seal_raw(plaintext))
    except EnvelopeError as error:
        assert_generic(error)
    else:
        assert opened.exchange == "binance"


METADATA_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=16),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=60, deadline=None)
@given(
    plaintext=st.binary(min_size=1, max_size=2048),
    metadata=st.dictionaries(st.text(max_size=10), METADATA_VALUES, max_size=5),
    alg=st.sampled_from(ALGS),
)
def test_round_trip_any_plaintext_and_metadata(
    plaintext: bytes, metadata: dict[str, Any], alg: str
) -> None:
    """Whatever the plaintext and JSON metadata, seal -> wire -> open returns the plaintext."""
    envelope = sealed(plaintext, alg=alg, metadata=metadata)
    assert OPENER.open(Envelope.from_wire(json.loads(json.dumps(envelope.to_wire())))) == plaintext
