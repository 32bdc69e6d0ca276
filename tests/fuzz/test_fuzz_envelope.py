"""Fuzz shared.envelope: from_wire raises EnvelopeFormatError, open the one EnvelopeError.

Seeds: tests/vectors/fuzz/envelope (genuine envelopes of the three algs, sealed to the
keys in its context, and tricky wire forms). Mutations: JSON-level on the wire form,
and field-level on parsed envelopes (flipped bits in every byte field, truncated or
extended ciphertext, edited metadata, alg swapped with the lengths made to fit).
"""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import assume, example, given
from hypothesis import strategies as st

from shared.envelope import (
    OPEN_FAILED_MESSAGE,
    SUPPORTED_ALGS,
    Credentials,
    Envelope,
    EnvelopeFormatError,
    EnvelopeOpener,
    HybridPrivateKey,
    envelope_digest,
    open_credentials,
)
from shared.errors import EnvelopeError
from tests.fuzz.mutations import Draw, json_values, mutated_json
from tests.fuzz.support import (
    attempt,
    counted,
    fuzz_settings,
    load_context,
    load_seeds,
    names_marked,
)

SEEDS = load_seeds("envelope")
CONTEXT = load_context("envelope")
OPENER = EnvelopeOpener(
    X25519PrivateKey.from_private_bytes(bytes.fromhex(CONTEXT["x25519_private_hex"])),
    pq_private=HybridPrivateKey(
        mlkem=MLKEM768PrivateKey.from_seed_bytes(bytes.fromhex(CONTEXT["mlkem_seed_hex"])),
        x25519=X25519PrivateKey.from_private_bytes(
            bytes.fromhex(CONTEXT["hybrid_x25519_private_hex"])
        ),
    ),
)
CLASSICAL_OPENER = EnvelopeOpener(
    X25519PrivateKey.from_private_bytes(bytes.fromhex(CONTEXT["x25519_private_hex"]))
)
GENUINE = [Envelope.from_wire(SEEDS[name]) for name in names_marked("envelope", "opens")]
GENUINE_DIGESTS = {envelope_digest(envelope) for envelope in GENUINE}
WIRES: list[Any] = list(SEEDS.values())


def _check_parsed(envelope: Envelope) -> None:
    assert envelope.alg in SUPPORTED_ALGS
    assert len(envelope.tag) == 16 and 1 <= len(envelope.ciphertext) <= 16 * 1024
    assert Envelope.from_wire(envelope.to_wire()) == envelope


@fuzz_settings(deadline_ms=1000)
@given(wire=mutated_json(WIRES) | json_values())
@example(wire=SEEDS["metadata-deep"])
@example(wire=SEEDS["non-canonical-base64"])
@counted("shared.envelope.Envelope.from_wire")
def test_from_wire_raises_only_envelope_format_error(wire: Any) -> None:
    """Any JSON value parses to a self-consistent envelope or raises EnvelopeFormatError."""
    try:
        envelope = Envelope.from_wire(wire)
    except EnvelopeFormatError:
        return
    _check_parsed(envelope)


def _flip(draw: Draw, data: bytes) -> bytes:
    if not data:
        return data
    raw = bytearray(data)
    raw[draw(st.integers(0, len(raw) - 1))] ^= 1 << draw(st.integers(0, 7))
    return bytes(raw)


@st.composite
def _tampered(draw: Draw) -> Envelope:
    """A genuine envelope with one to three of its fields changed (shape kept valid)."""
    base = draw(st.sampled_from(GENUINE))
    fields: dict[str, Any] = {
        name: getattr(base, name)
        for name in ("alg", "ephemeral_pub", "nonce", "ciphertext", "tag", "metadata")
    }
    for _ in range(draw(st.integers(1, 3))):
        target = draw(
            st.sampled_from(
                ("ephemeral_pub", "nonce", "ciphertext", "tag", "metadata", "alg", "cut")
            )
        )
        if target == "metadata":
            fields["metadata"] = draw(mutated_json([fields["metadata"]]))
        elif target == "alg":
            fields["alg"] = draw(st.sampled_from(sorted(SUPPORTED_ALGS)))
            other = draw(st.sampled_from([e for e in GENUINE if e.alg == fields["alg"]]))
            fields["ephemeral_pub"], fields["nonce"] = other.ephemeral_pub, other.nonce
        elif target == "cut":
            ciphertext = fields["ciphertext"]
            fields["ciphertext"] = draw(
                st.sampled_from(
                    (ciphertext[:-1] or b"\x00", ciphertext + b"\x00", ciphertext[1:] or b"\x00")
                )
            )
        else:
            fields[target] = _flip(draw, fields[target])
    try:
        return Envelope(**fields)
    except EnvelopeFormatError:
        assume(False)
        raise AssertionError("unreachable") from None


@fuzz_settings(deadline_ms=1000)
@given(
    envelope=_tampered() | st.sampled_from(GENUINE),
    opener=st.sampled_from((OPENER, CLASSICAL_OPENER)),
)
@counted("shared.envelope.EnvelopeOpener.open")
def test_open_fails_with_one_generic_error_unless_untouched(
    envelope: Envelope, opener: EnvelopeOpener
) -> None:
    """A tampered envelope never opens; every failure is the same EnvelopeError with
    nothing chained (no oracle), and the credentials parser keeps the same promise."""
    plaintext, error = attempt(lambda: opener.open(envelope), EnvelopeError)
    if plaintext is None:
        assert str(error) == OPEN_FAILED_MESSAGE
        assert error is not None and error.__cause__ is None and error.__context__ is None
        return
    assert isinstance(plaintext, bytes) and plaintext
    assert envelope_digest(envelope) in GENUINE_DIGESTS
    credentials, error = attempt(lambda: open_credentials(opener, envelope), EnvelopeError)
    if credentials is None:
        assert str(error) == OPEN_FAILED_MESSAGE
        assert error is not None and error.__cause__ is None
    else:
        assert isinstance(credentials, Credentials)


@fuzz_settings(deadline_ms=1000)
@given(wire=mutated_json(WIRES))
@counted("shared.envelope.EnvelopeOpener.open")
def test_open_after_from_wire_raises_only_envelope_errors(wire: Any) -> None:
    """The parent's parse then the enclave's open: format error, open error, or genuine."""
    try:
        envelope = Envelope.from_wire(wire)
    except EnvelopeFormatError:
        return
    plaintext, error = attempt(lambda: OPENER.open(envelope), EnvelopeError)
    if plaintext is None:
        assert str(error) == OPEN_FAILED_MESSAGE
        return
    assert envelope_digest(envelope) in GENUINE_DIGESTS


def test_genuine_seeds_open_and_tricky_ones_do_not() -> None:
    """The seeds marked genuine open with the context keys; the low-order points do not."""
    for envelope in GENUINE:
        assert OPENER.open(envelope)
    for name in ("low-order-point-zero", "low-order-point-one"):
        with pytest.raises(EnvelopeError, match=f"^{OPEN_FAILED_MESSAGE}$"):
            OPENER.open(Envelope.from_wire(SEEDS[name]))
