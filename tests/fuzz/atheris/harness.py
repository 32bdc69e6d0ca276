"""Coverage-guided fuzzing of the same parsers with atheris (libFuzzer), when installed.

    python -m tests.fuzz.atheris.harness TARGET [libFuzzer flags, e.g. -runs=20000]

atheris is optional: it ships manylinux x86_64 wheels only (no aarch64, no macOS), so
it is not a project dependency; ``make fuzz`` runs these harnesses when the venv can
import it (``pip install atheris==3.0.0`` on such a machine) and skips them otherwise.
Each target seeds libFuzzer with tests/vectors/fuzz/<target>, lets documented errors
through, and crashes (a libFuzzer finding) on anything else. Targets: see TARGETS.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import atheris

with atheris.instrument_imports():
    from enclave.cms import CmsError, parse_enveloped_data
    from shared.attestation import decode_document
    from shared.bundle import verify_bundle
    from shared.cbor import CborError, strict_loads
    from shared.encoding import b64decode
    from shared.envelope import Envelope, EnvelopeFormatError
    from shared.errors import AttestationError, RemoteProtocolError
    from shared.merkle import InclusionProof, MerkleError, TreeHead
    from shared.protocol import FrameDecoder
    from shared.sealed_state import SealedHeader, SealedStateError
    from shared.translog import TransparencyLogError, verify_log

import contextlib

from tests.fuzz import world
from tests.fuzz.support import FUZZ_VECTORS, load_seeds


def _json(data: bytes) -> Any:
    """The JSON value ``data`` spells, or None (then the input is not interesting)."""
    try:
        return json.loads(data.decode("utf-8", "surrogatepass"))
    except (ValueError, RecursionError):
        return None


def _frames(data: bytes) -> None:
    decoder = FrameDecoder(max_frame_size=4096)
    try:
        for start in range(0, len(data), 7):  # fed in pieces, as a socket would
            decoder.feed(data[start : start + 7])
        decoder.close()
    except RemoteProtocolError:
        pass


def _cbor(data: bytes) -> None:
    with contextlib.suppress(CborError):
        strict_loads(data)


def _attestation(data: bytes) -> None:
    with contextlib.suppress(AttestationError):
        decode_document(data)


def _cms(data: bytes) -> None:
    with contextlib.suppress(CmsError):
        parse_enveloped_data(data)


def _base64(data: bytes) -> None:
    with contextlib.suppress(ValueError):
        b64decode(data.decode("utf-8", "surrogatepass"), max_len=64)


def _envelope(data: bytes) -> None:
    with contextlib.suppress(EnvelopeFormatError):
        Envelope.from_wire(_json(data))


def _merkle(data: bytes) -> None:
    value = _json(data)
    for parse in (InclusionProof.from_json, TreeHead.from_payload):
        with contextlib.suppress(MerkleError):
            parse(value)


def _translog(data: bytes) -> None:
    with contextlib.suppress(TransparencyLogError):
        verify_log(
            _json(data), signing_public=world.SIGNING_PUBLIC, session_hash=world.SESSION_HASH
        )


def _bundle(data: bytes) -> None:
    verify_bundle(_json(data), expected_pcrs=world.EXPECTED_PCRS, root_der=world.ROOT_DER)


def _sealed_state(data: bytes) -> None:
    with contextlib.suppress(SealedStateError):
        SealedHeader.parse(data)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "frames": _frames,
    "cbor": _cbor,
    "attestation": _attestation,
    "cms": _cms,
    "base64": _base64,
    "envelope": _envelope,
    "merkle": _merkle,
    "translog": _translog,
    "bundle": _bundle,
    "sealed_state": _sealed_state,
}


def _seed_bytes(target: str) -> list[bytes]:
    seeds = []
    for seed in load_seeds(target).values():
        if isinstance(seed, bytes):
            seeds.append(seed)
        elif target == "base64":
            seeds.append(seed["text"].encode("utf-8", "surrogatepass"))
        else:
            seeds.append(json.dumps(seed).encode("utf-8", "surrogatepass"))
    return seeds


def main(argv: list[str]) -> None:
    """Fuzz ``argv[1]`` with the rest of ``argv`` as libFuzzer flags."""
    if len(argv) < 2 or argv[1] not in TARGETS or not (FUZZ_VECTORS / argv[1]).is_dir():
        raise SystemExit(f"usage: harness TARGET [libFuzzer flags]; targets: {', '.join(TARGETS)}")
    target = argv[1]
    with tempfile.TemporaryDirectory(prefix=f"atheris-{target}-") as corpus:
        for number, seed in enumerate(_seed_bytes(target)):
            (Path(corpus) / f"seed-{number}").write_bytes(seed)
        atheris.Setup([argv[0], *argv[2:], corpus], TARGETS[target])
        atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
