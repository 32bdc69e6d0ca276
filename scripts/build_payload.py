"""Build the enclave application payload: a deterministic tar of enclave/ and shared/.

Side: build host (operator or CI), never the enclave.

    python -m scripts.build_payload [--source DIR] [--output eif/build/payload.tar]

The tar is what eif/Dockerfile unpacks into the image as the application. Two builds of
the same sources give the same bytes, whatever the checkout's file times, owners,
permissions or directory order: entries are sorted by path, every mtime is
``PAYLOAD_MTIME``, owners are 0:0 with no names, modes are 0755 (directories) and 0644
(files), and the archive is uncompressed ustar (gzip would add a time and a name).

The payload holds the files that ``pip install .`` installs from those packages:
``*.py`` plus the package data of pyproject.toml (``*.pem``, ``*.sql``, ``py.typed``).
Caches, dot-files and anything else in the tree stay out.

After writing it, the builder unpacks its own output and measures that with
``enclave.measurement``: the printed ``simulated_pcr0`` is the PCR0 the NSM simulator
reports for exactly this code, so a developer pinned to the simulator and an operator
holding the payload can compare one number. (The real PCR0 is measured by
``nitro-cli build-enclave`` over the whole image and is recorded by eif/build.sh.)
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from enclave.measurement import MEASURED_PACKAGES, PCR_SIZE, extend, source_digest

__all__ = [
    "PAYLOAD_MTIME",
    "Payload",
    "build_payload",
    "main",
    "payload_files",
    "write_payload",
]

PAYLOAD_MTIME: Final = 315_532_800
"""1980-01-01T00:00:00Z, the usual fixed SOURCE_DATE_EPOCH (zip cannot go earlier)."""

_REPO_ROOT: Final = Path(__file__).resolve().parents[1]
_DEFAULT_OUTPUT: Final = _REPO_ROOT / "eif" / "build" / "payload.tar"
_DATA_NAMES: Final = frozenset({"py.typed"})
_DATA_SUFFIXES: Final = frozenset({".py", ".pem", ".sql"})


@dataclass(frozen=True, slots=True, kw_only=True)
class Payload:
    """The payload bytes and the digests that identify them."""

    data: bytes
    files: tuple[str, ...]
    source_digest: bytes  # enclave.measurement.source_digest of the unpacked payload
    simulated_pcr0: bytes  # extend(0^48, source_digest), as the NSM simulator reports

    @property
    def sha256(self) -> str:
        """Lowercase hex SHA-256 of the tar bytes."""
        return hashlib.sha256(self.data).hexdigest()

    def manifest(self) -> dict[str, object]:
        """What build.sh records next to the measurements (JSON-ready)."""
        return {
            "payload_sha256": self.sha256,
            "payload_bytes": len(self.data),
            "files": len(self.files),
            "packages": list(MEASURED_PACKAGES),
            "source_digest_sha384": self.source_digest.hex(),
            "simulated_pcr0": self.simulated_pcr0.hex(),
            "mtime": PAYLOAD_MTIME,
        }


def _is_payload_file(relative: Path) -> bool:
    if any(part == "__pycache__" or part.startswith(".") for part in relative.parts):
        return False
    return relative.name in _DATA_NAMES or relative.suffix in _DATA_SUFFIXES


def payload_files(source: Path) -> list[str]:
    """Relative POSIX paths of the files that go into the payload, sorted."""
    files: list[str] = []
    for package in MEASURED_PACKAGES:
        root = source / package
        if not root.is_dir():
            raise FileNotFoundError(f"payload package missing: {root}")
        for path in root.rglob("*"):
            relative = path.relative_to(source)
            if path.is_file() and not path.is_symlink() and _is_payload_file(relative):
                files.append(relative.as_posix())
    return sorted(files)


def _directories(files: Sequence[str]) -> list[str]:
    directories: set[str] = set()
    for name in files:
        parts = name.split("/")[:-1]
        directories.update("/".join(parts[: index + 1]) for index in range(len(parts)))
    return sorted(directories)


def _entry(name: str, *, directory: bool, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name + "/" if directory else name)
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o755 if directory else 0o644
    info.size = size
    info.mtime = PAYLOAD_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _tar(source: Path, files: Sequence[str]) -> bytes:
    buffer = io.BytesIO()
    # ustar: fixed headers, no pax records that could carry times or names of the host.
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        entries = [(name, True) for name in _directories(files)]
        entries += [(name, False) for name in files]
        for name, directory in sorted(entries):
            if directory:
                archive.addfile(_entry(name, directory=True))
            else:
                content = (source / name).read_bytes()
                archive.addfile(
                    _entry(name, directory=False, size=len(content)), io.BytesIO(content)
                )
    return buffer.getvalue()


def build_payload(source: Path | None = None) -> Payload:
    """Build the payload from ``source`` (default: this repository) and measure it."""
    base = (source or _REPO_ROOT).resolve()
    files = payload_files(base)
    data = _tar(base, files)
    # Measure what was written, not the tree it came from: unpack and hash the result.
    with tempfile.TemporaryDirectory(prefix="payload-") as scratch:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r") as archive:
            archive.extractall(scratch, filter="data")
        measured = source_digest(Path(scratch))
    if measured != source_digest(base):
        raise RuntimeError("the payload does not reproduce the source digest of its tree")
    return Payload(
        data=data,
        files=tuple(files),
        source_digest=measured,
        simulated_pcr0=extend(bytes(PCR_SIZE), measured),
    )


def write_payload(payload: Payload, output: Path) -> None:
    """Write the tar atomically (a reader never sees half a payload)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_name(output.name + ".tmp")
    temporary.write_bytes(payload.data)
    os.replace(temporary, output)


def main(argv: Sequence[str] | None = None) -> int:
    """Build, write and print the manifest as JSON on stdout."""
    parser = argparse.ArgumentParser(
        prog="python -m scripts.build_payload",
        description="Build the deterministic enclave application payload (tar).",
    )
    parser.add_argument(
        "--source", type=Path, default=_REPO_ROOT, help="directory holding enclave/ and shared/"
    )
    parser.add_argument(
        "--output", type=Path, default=_DEFAULT_OUTPUT, help="where to write the tar"
    )
    args = parser.parse_args(argv)
    try:
        payload = build_payload(args.source)
        write_payload(payload, args.output)
    except (OSError, RuntimeError, tarfile.TarError) as exc:
        print(f"build_payload: {exc}", file=sys.stderr)
        return 1
    manifest = {"output": str(args.output), **payload.manifest()}
    print(json.dumps(manifest, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
