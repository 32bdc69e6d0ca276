"""The measured PCRs of a built enclave image: record them, load them, compare them.

Side: build host and parent host (operator tooling), never the enclave.

    python -m scripts.measurements record --describe-eif FILE --build-output FILE \\
        [--payload-manifest FILE] --output eif/measurements.json
    python -m scripts.measurements check --describe-eif FILE --measurements FILE

``record`` turns ``nitro-cli describe-eif`` output into ``eif/measurements.json``, the
file clients pin (``perf-agg --pcrs eif/measurements.json``) and the KMS key policy is
generated from (``python -m scripts.kms_policy``). Its shape is nitro-cli's own::

    {"Measurements": {"HashAlgorithm": "Sha384 { ... }", "PCR0": "<96 hex>", "PCR1": ...,
                      "PCR2": ..., "PCR8": ... (signed images only)},
     "EifVersion": 4, "IsSigned": false, "payload": {... scripts.build_payload manifest}}

so ``shared.cli.read_pcrs_file`` reads it like a raw ``describe-eif`` answer, and the
extra keys record where the image came from.

``check`` compares an EIF about to run with the published file, so an operator cannot
start by mistake an image that clients would refuse.

Refused, with a message naming the problem: PCR0, PCR1 or PCR2 missing; a PCR that is
not 48 bytes of lowercase hex; all-zero PCR0..2 (that is what a debug-mode enclave
reports, and pinning it would admit any debug enclave); ``build-enclave`` and
``describe-eif`` disagreeing; a failed CRC or signature check; PCR8 without a
signature or a signature without PCR8.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from shared.attestation import pcrs_from_json
from shared.cli import UsageError, read_pcrs_file

__all__ = [
    "REQUIRED_PCRS",
    "SIGNING_PCR",
    "MeasurementError",
    "check",
    "load",
    "main",
    "pcrs_of",
    "record",
]

REQUIRED_PCRS: Final = (0, 1, 2)
"""Image (PCR0), kernel and boot ramdisk (PCR1), application (PCR2)."""
SIGNING_PCR: Final = 8
"""Hash of the EIF signing certificate; present only when the image is signed."""
_PCR_BYTES: Final = 48  # SHA-384, nitro-cli's HashAlgorithm
_ROOT: Final = Path(__file__).resolve().parents[1]


class MeasurementError(ValueError):
    """Measurements are missing, malformed, inconsistent or unusable for pinning."""


def _object(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise MeasurementError(f"{what} is not a JSON object")
    return value


def pcrs_of(document: object, what: str = "measurements") -> dict[int, bytes]:
    """The PCRs of a nitro-cli answer (``{"Measurements": {"PCR0": ...}}``), validated."""
    measured = _object(_object(document, what).get("Measurements"), f"{what}: Measurements")
    algorithm = measured.get("HashAlgorithm", "Sha384")
    if not isinstance(algorithm, str) or not algorithm.startswith("Sha384"):
        raise MeasurementError(f"{what}: HashAlgorithm must be Sha384")
    try:
        pcrs = pcrs_from_json(
            {key[3:]: value for key, value in measured.items() if key.startswith("PCR")}
        )
    except ValueError as exc:
        raise MeasurementError(f"{what}: {exc}") from None
    return _validated(pcrs, what)


def _validated(pcrs: Mapping[int, bytes], what: str) -> dict[int, bytes]:
    missing = [f"PCR{index}" for index in REQUIRED_PCRS if index not in pcrs]
    if missing:
        raise MeasurementError(f"{what}: {', '.join(missing)} missing")
    for index, value in pcrs.items():
        if len(value) != _PCR_BYTES:
            raise MeasurementError(f"{what}: PCR{index} is not a SHA-384 value")
    if not any(any(pcrs[index]) for index in REQUIRED_PCRS):
        raise MeasurementError(
            f"{what}: PCR0-2 are all zero (a debug-mode enclave); refusing to pin them"
        )
    return dict(sorted(pcrs.items()))


def load(path: Path) -> dict[int, bytes]:
    """Read a pinned-PCR file exactly as clients do, then apply the checks above."""
    try:
        pcrs = read_pcrs_file(path)
    except UsageError as exc:
        raise MeasurementError(str(exc)) from None
    return _validated(pcrs, str(path))


def record(
    describe: Mapping[str, Any],
    build_output: Mapping[str, Any],
    payload_manifest: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``eif/measurements.json`` document for an image, after cross-checking it."""
    pcrs = pcrs_of(describe, "describe-eif")
    built = pcrs_of(build_output, "build-enclave")
    if built != pcrs:
        raise MeasurementError("build-enclave and describe-eif report different PCRs")
    if describe.get("CheckCRC") is not True:
        raise MeasurementError("describe-eif: the EIF failed its CRC check")
    if describe.get("SignatureCheck", True) is not True:
        raise MeasurementError("describe-eif: the EIF signature check failed")
    signed = describe.get("IsSigned")
    if not isinstance(signed, bool):
        raise MeasurementError("describe-eif: IsSigned missing")
    if signed != (SIGNING_PCR in pcrs):
        raise MeasurementError("describe-eif: PCR8 must be present exactly when IsSigned")
    measurements: dict[str, str] = {"HashAlgorithm": "Sha384 { ... }"}
    measurements.update({f"PCR{index}": value.hex() for index, value in pcrs.items()})
    document: dict[str, Any] = {"Measurements": measurements, "IsSigned": signed}
    for key in ("EifVersion", "ImageName", "ImageVersion"):
        if key in describe:
            document[key] = describe[key]
    if payload_manifest is not None:
        document["payload"] = dict(payload_manifest)
    return document


def check(describe: Mapping[str, Any], pinned: Mapping[int, bytes]) -> None:
    """Raise unless the image's PCRs equal every pinned PCR."""
    actual = pcrs_of(describe, "describe-eif")
    differing = [f"PCR{index}" for index, value in pinned.items() if actual.get(index) != value]
    if differing:
        raise MeasurementError(
            f"the EIF does not match the published measurements ({', '.join(differing)})"
        )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise MeasurementError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError:
        raise MeasurementError(f"{path} is not JSON") from None


def _write(document: Mapping[str, Any], output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_name(output.name + ".tmp")
    temporary.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(temporary, output)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``record`` or ``check``; exit 1 with a message on any refusal."""
    parser = argparse.ArgumentParser(
        prog="python -m scripts.measurements",
        description="Record or check the measured PCRs of an enclave image.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    record_parser = commands.add_parser("record", help="write eif/measurements.json")
    record_parser.add_argument("--describe-eif", type=Path, required=True)
    record_parser.add_argument("--build-output", type=Path, required=True)
    record_parser.add_argument("--payload-manifest", type=Path)
    record_parser.add_argument("--output", type=Path, default=_ROOT / "eif" / "measurements.json")
    check_parser = commands.add_parser("check", help="compare an EIF with the pinned file")
    check_parser.add_argument("--describe-eif", type=Path, required=True)
    check_parser.add_argument(
        "--measurements", type=Path, default=_ROOT / "eif" / "measurements.json"
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "record":
            manifest = None
            if args.payload_manifest is not None:
                manifest = _object(_read_json(args.payload_manifest), "payload manifest")
            document = record(
                _object(_read_json(args.describe_eif), "describe-eif"),
                _object(_read_json(args.build_output), "build-enclave"),
                manifest,
            )
            _write(document, args.output)
            for key, value in document["Measurements"].items():
                if key.startswith("PCR"):
                    print(f"{key} {value}")
        else:
            check(_object(_read_json(args.describe_eif), "describe-eif"), load(args.measurements))
            print(f"the EIF matches {args.measurements}")
    except MeasurementError as exc:
        print(f"measurements: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
