"""Find planted secrets ("canaries") in bytes, files and trees, in any common encoding. Side: tests.

A test plants a random canary where a secret would enter the system, drives the
system, then scans everything it could have written (pg_dump output, the PostgreSQL
data directory with its WAL segments, server logs). A leak rarely stays raw, so each
canary is searched in these forms:

- ``raw``
- ``base64@0``, ``base64@1``, ``base64@2``: the canary may start at any offset modulo
  3 of a base64-encoded stream, which changes every output character. For each
  alignment the scanner searches the stable inner part: the encoding of the canary's
  whole 3-byte groups that start on a group boundary. ``base64url@k`` likewise with
  the URL-safe alphabet. Padding-free, so unpadded and embedded base64 match too.
- ``hex``, ``HEX``
- ``utf-16-le``, ``utf-16-be`` (of the canary's text: UTF-8, else Latin-1)
- ``url`` (percent-encoding, upper and lower case hex), ``url-plus`` (form encoding)

Forms whose bytes equal an earlier form (e.g. ``url`` of an alphanumeric canary) are
searched once, under the earlier name. A finding says where, which canary (by index)
and which form, never the canary itself, so a failing assertion does not print the
secret.

Files are read in chunks with an overlap, so a canary spanning a chunk boundary is
found and files of any size cost bounded memory. Trees are walked without following
symlinks; only regular files are read (sockets and FIFOs in a data directory are
skipped); a file that disappears mid-walk (a recycled WAL segment) is skipped; an
unreadable file raises, because a scan that silently skips data proves nothing.
"""

from __future__ import annotations

import base64
import os
import stat
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

__all__ = ["Finding", "LeakScanner"]

_CHUNK = 4 * 1024 * 1024
# Short canaries match by chance in megabytes of binary data: refuse them.
_MIN_CANARY = 8
# Enough to show a leak without flooding a report when a canary repeats a lot.
_MAX_PER_NEEDLE = 20


@dataclass(frozen=True, slots=True, kw_only=True)
class Finding:
    """One occurrence of a canary: where, in which form, and at which byte offset."""

    where: str
    canary: int  # index into the scanner's canary list
    form: str
    offset: int

    def __str__(self) -> str:
        return f"{self.where}: canary #{self.canary} as {self.form} at byte {self.offset}"


@dataclass(frozen=True, slots=True)
class _Needle:
    canary: int
    form: str
    data: bytes


def _text_of(canary: bytes) -> str:
    try:
        return canary.decode("utf-8")
    except UnicodeDecodeError:
        return canary.decode("latin-1")


def _forms(canary: bytes) -> list[tuple[str, bytes]]:
    forms: list[tuple[str, bytes]] = [("raw", canary)]
    for alignment in range(3):
        # The canary starts at stream offset == alignment (mod 3): its first whole group
        # begins (3 - alignment) % 3 bytes in. Earlier and trailing partial groups
        # produce characters that depend on neighbouring bytes, so they are left out.
        start = (3 - alignment) % 3
        body = canary[start:]
        body = body[: len(body) - len(body) % 3]
        if body:
            forms.append((f"base64@{alignment}", base64.b64encode(body)))
            forms.append((f"base64url@{alignment}", base64.urlsafe_b64encode(body)))
    forms.append(("hex", canary.hex().encode("ascii")))
    forms.append(("HEX", canary.hex().upper().encode("ascii")))
    text = _text_of(canary)
    forms.append(("utf-16-le", text.encode("utf-16-le")))
    forms.append(("utf-16-be", text.encode("utf-16-be")))
    quoted = urllib.parse.quote_from_bytes(canary, safe="")
    forms.append(("url", quoted.encode("ascii")))
    forms.append(("url-lower", _lower_percent(quoted).encode("ascii")))
    forms.append(("url-plus", urllib.parse.quote_plus(canary, safe="").encode("ascii")))
    return forms


def _lower_percent(quoted: str) -> str:
    # "%2F" -> "%2f": some encoders emit lower-case hex digits.
    parts = quoted.split("%")
    return parts[0] + "".join("%" + part[:2].lower() + part[2:] for part in parts[1:])


class LeakScanner:
    """Search data for any of ``canaries`` in raw and encoded forms (see module docstring)."""

    def __init__(self, canaries: Sequence[bytes]) -> None:
        if not canaries:
            raise ValueError("at least one canary is needed")
        needles: list[_Needle] = []
        seen: set[bytes] = set()
        for index, canary in enumerate(canaries):
            if len(canary) < _MIN_CANARY:
                raise ValueError(f"canary #{index} is shorter than {_MIN_CANARY} bytes")
            for form, data in _forms(canary):
                if data not in seen:
                    seen.add(data)
                    needles.append(_Needle(index, form, data))
        self._needles = tuple(needles)
        self._overlap = max(len(needle.data) for needle in needles) - 1

    def __repr__(self) -> str:
        # Never the canaries: this object may end up in an assertion message.
        canaries = len({needle.canary for needle in self._needles})
        return f"LeakScanner(<{canaries} canaries, {len(self._needles)} needles>)"

    @property
    def forms(self) -> list[str]:
        """The names of the forms searched for canary #0 (for reports and tests)."""
        return [needle.form for needle in self._needles if needle.canary == 0]

    def scan(self, *targets: bytes | Path, label: str = "<bytes>") -> list[Finding]:
        """Scan each target: bytes (reported as ``label``), a file, or a directory tree."""
        findings: list[Finding] = []
        for target in targets:
            if isinstance(target, bytes):
                findings += self.scan_bytes(target, where=label)
            elif target.is_dir():
                findings += self.scan_tree(target)
            else:
                findings += self.scan_file(target)
        return findings

    def scan_bytes(self, data: bytes, *, where: str = "<bytes>") -> list[Finding]:
        """Every occurrence (up to a cap per form) of every canary form in ``data``."""
        return list(self._search(data, where=where, base=0, skip_before=0))

    def scan_file(self, path: Path) -> list[Finding]:
        """Scan one file in overlapping chunks."""
        with path.open("rb") as handle:
            return self._scan_stream(handle, where=str(path))

    def scan_tree(self, root: Path) -> list[Finding]:
        """Scan every regular file under ``root``, recursively, without following symlinks."""
        findings: list[Finding] = []
        for path in self._regular_files(root):
            try:
                handle = path.open("rb")
            except FileNotFoundError:
                continue  # removed or renamed while walking (e.g. WAL recycling)
            with handle:
                findings += self._scan_stream(handle, where=str(path))
        return findings

    @staticmethod
    def _regular_files(root: Path) -> Iterable[Path]:
        for directory, subdirs, files in os.walk(root, followlinks=False):
            subdirs.sort()
            for name in sorted(files):
                path = Path(directory, name)
                try:
                    mode = path.lstat().st_mode
                except FileNotFoundError:
                    continue
                if stat.S_ISREG(mode):
                    yield path

    def _scan_stream(self, handle: BinaryIO, *, where: str) -> list[Finding]:
        findings: list[Finding] = []
        tail = b""
        position = 0  # file offset of the first byte after ``tail``
        while chunk := handle.read(_CHUNK):
            window = tail + chunk
            base = position - len(tail)
            # Matches lying wholly inside ``tail`` were reported with the previous window.
            findings += self._search(window, where=where, base=base, skip_before=len(tail))
            position += len(chunk)
            tail = window[-self._overlap :] if self._overlap else b""
        return findings

    def _search(self, data: bytes, *, where: str, base: int, skip_before: int) -> list[Finding]:
        findings: list[Finding] = []
        for needle in self._needles:
            found = 0
            start = 0
            while found < _MAX_PER_NEEDLE:
                index = data.find(needle.data, start)
                if index < 0:
                    break
                start = index + 1
                if index + len(needle.data) <= skip_before:
                    continue
                findings.append(
                    Finding(
                        where=where, canary=needle.canary, form=needle.form, offset=base + index
                    )
                )
                found += 1
        return findings
