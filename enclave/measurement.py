"""Simulated PCR measurements derived from the enclave's own code. Side: enclave (dev).

On Nitro hardware PCR0..2 are measured by the hypervisor from the EIF image; the
simulator has no image, so it measures the Python code that would run in the enclave
(the ``enclave`` and ``shared`` packages). Changing one byte of that code changes
PCR0 and PCR2, so a client pinned to the old values refuses the new code, exactly as
with a rebuilt EIF.

    source_digest = SHA-384("perf-aggregator/source-digest/v1\\0"
                            || for each *.py file, sorted by relative POSIX path:
                               u32be(len(path)) || path || u64be(len(bytes)) || bytes)
    PCR0 = extend(0^48, source_digest)                               the "image"
    PCR1 = extend(0^48, SHA-384("perf-aggregator/simulated-kernel/v1"))   fixed kernel
    PCR2 = extend(0^48, SHA-384("perf-aggregator/application/v1\\0" || source_digest))
    PCR3..15 = 0^48
with extend(old, data) = SHA-384(old || data), the NSM ExtendPCR rule.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Final

__all__ = ["MEASURED_PACKAGES", "PCR_SIZE", "extend", "simulated_pcrs", "source_digest"]

PCR_SIZE: Final = 48  # SHA-384 PCR bank, like the NSM (DescribeNSM digest "SHA384")
MEASURED_PACKAGES: Final = ("enclave", "shared")
_ZERO: Final = bytes(PCR_SIZE)
_SOURCE_DOMAIN: Final = b"perf-aggregator/source-digest/v1\0"
_KERNEL_CONSTANT: Final = b"perf-aggregator/simulated-kernel/v1"
_APPLICATION_DOMAIN: Final = b"perf-aggregator/application/v1\0"
_REPO_ROOT: Final = Path(__file__).resolve().parents[1]


def extend(old: bytes, data: bytes) -> bytes:
    """The NSM ExtendPCR rule: SHA-384(old || data)."""
    return hashlib.sha384(old + data).digest()


def _measured_files(base: Path) -> list[tuple[str, Path]]:
    files: list[tuple[str, Path]] = []
    for package in MEASURED_PACKAGES:
        root = base / package
        if not root.is_dir():
            raise FileNotFoundError(f"measured package missing: {package}")
        for path in root.rglob("*.py"):
            relative = path.relative_to(base)
            if any(part == "__pycache__" or part.startswith(".") for part in relative.parts):
                continue
            files.append((relative.as_posix(), path))
    return sorted(files)


def source_digest(base: Path | None = None) -> bytes:
    """SHA-384 over the relative paths and bytes of the measured packages' *.py files.

    ``base`` is the directory holding ``enclave/`` and ``shared/`` (default: this repo).
    Lengths are prefixed so that no two file sets hash the same input.
    """
    digest = hashlib.sha384(_SOURCE_DOMAIN)
    for relative, path in _measured_files(base or _REPO_ROOT):
        name = relative.encode("utf-8")
        content = path.read_bytes()
        digest.update(len(name).to_bytes(4, "big") + name)
        digest.update(len(content).to_bytes(8, "big") + content)
    return digest.digest()


def simulated_pcrs(base: Path | None = None) -> dict[int, bytes]:
    """PCR0..15 as the simulator reports them (see the module docstring)."""
    code = source_digest(base)
    pcrs = dict.fromkeys(range(16), _ZERO)
    pcrs[0] = extend(_ZERO, code)
    pcrs[1] = extend(_ZERO, hashlib.sha384(_KERNEL_CONSTANT).digest())
    pcrs[2] = extend(_ZERO, hashlib.sha384(_APPLICATION_DOMAIN + code).digest())
    return pcrs
