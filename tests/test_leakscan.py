"""The leak scanner finds planted canaries in every encoding and nowhere else. Side: tests."""

from __future__ import annotations

import base64
import os
import random
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support import leakscan
from tests.support.leakscan import Finding, LeakScanner

# Contains a space, "/", "+" and "=" so that every URL form differs from the raw bytes.
CANARY = b"api secret/9f8e7d6c5b4a+=" + b"leak-canary-0123456789"
OTHER = b"second canary: a different secret value"
# Six 0xff bytes encode to "////////" at any alignment, so base64url differs from base64.
BINARY_CANARY = b"\xff" * 6 + b"\x00binary-canary-42"


def _noise(size: int, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(size)


def _utf16(data: bytes, codec: str) -> bytes:
    return (
        b"prefix text".decode().encode(codec)
        + data.decode().encode(codec)
        + b"!".decode().encode(codec)
    )


ENCODERS: dict[str, Callable[[bytes], bytes]] = {
    "raw": lambda c: b"before " + c + b" after",
    "hex": lambda c: b"\\x00ff" + c.hex().encode() + b"00",
    "HEX": lambda c: b"0xAB" + c.hex().upper().encode() + b"CD",
    "utf-16-le": lambda c: _utf16(c, "utf-16-le"),
    "utf-16-be": lambda c: _utf16(c, "utf-16-be"),
    "url": lambda c: b"GET /?q=" + urllib.parse.quote_from_bytes(c, safe="").encode() + b"&x=1",
    "url-lower": lambda c: b"q=" + urllib.parse.quote_from_bytes(c, safe="").lower().encode(),
    "url-plus": lambda c: b"a=1&q=" + urllib.parse.quote_plus(c).encode() + b"&b=2",
}


@pytest.mark.parametrize("form", sorted(ENCODERS))
def test_finds_each_encoded_form(form: str) -> None:
    """A canary planted in each non-base64 form is reported under that form's name."""
    data = _noise(1000) + ENCODERS[form](CANARY) + _noise(1000, seed=8)
    findings = LeakScanner([CANARY]).scan_bytes(data, where="sample")
    assert form in {finding.form for finding in findings}
    assert all(finding.where == "sample" for finding in findings)


@pytest.mark.parametrize("prefix_len", range(6))
@pytest.mark.parametrize(
    ("encode", "family"),
    [(base64.b64encode, "base64"), (base64.urlsafe_b64encode, "base64url")],
)
def test_finds_base64_at_every_alignment(
    prefix_len: int, encode: Callable[[bytes], bytes], family: str
) -> None:
    """Base64 of data holding the canary at any offset mod 3 is found (stable inner part)."""
    data = encode(_noise(prefix_len, seed=prefix_len) + BINARY_CANARY + b"tail")
    forms = {finding.form for finding in LeakScanner([BINARY_CANARY]).scan_bytes(data)}
    assert f"{family}@{prefix_len % 3}" in forms


@settings(max_examples=60, deadline=None)
@given(prefix=st.binary(max_size=12), suffix=st.binary(max_size=12))
def test_base64_found_whatever_surrounds_it(prefix: bytes, suffix: bytes) -> None:
    """Base64, padded or not, of any bytes around the canary still reveals it."""
    encoded = base64.b64encode(prefix + CANARY + suffix).rstrip(b"=")
    assert LeakScanner([CANARY]).scan_bytes(encoded)


def test_finds_canary_in_nested_binary_file(tmp_path: Path) -> None:
    """A canary inside a binary file deep in a tree is reported with that file's path."""
    nested = tmp_path / "pgdata" / "pg_wal" / "archive" / "deeper"
    nested.mkdir(parents=True)
    segment = nested / "000000010000000000000001"
    segment.write_bytes(_noise(70_000) + CANARY.decode().encode("utf-16-le") + _noise(5000))
    (tmp_path / "pgdata" / "clean.bin").write_bytes(_noise(50_000, seed=3))
    findings = LeakScanner([CANARY]).scan(tmp_path)
    assert [(f.where, f.form, f.offset) for f in findings] == [(str(segment), "utf-16-le", 70_000)]


def test_tree_scan_skips_sockets_fifos_and_symlinks(tmp_path: Path) -> None:
    """Only regular files are read: a FIFO does not hang the scan, a symlink is not followed."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(CANARY)
    tree = tmp_path / "tree"
    tree.mkdir()
    os.mkfifo(tree / "fifo")
    (tree / "link").symlink_to(outside, target_is_directory=True)
    (tree / "file-link").symlink_to(outside / "secret.txt")
    assert LeakScanner([CANARY]).scan(tree) == []


def test_canary_across_chunk_boundary_found_once(tmp_path: Path) -> None:
    """A canary straddling the read-chunk boundary is found exactly once, at the right offset."""
    start = leakscan._CHUNK - len(CANARY) // 2
    path = tmp_path / "big.bin"
    path.write_bytes(b"\0" * start + CANARY + b"\0" * 100)
    findings = LeakScanner([CANARY]).scan_file(path)
    raw = [finding for finding in findings if finding.form == "raw"]
    assert [finding.offset for finding in raw] == [start]


def test_clean_data_has_no_findings(tmp_path: Path) -> None:
    """Random binary data and files without the canaries produce no findings."""
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "noise.bin").write_bytes(_noise(2_000_000, seed=11))
    (tmp_path / "text.log").write_text("LOG: database system is ready\n" * 1000)
    scanner = LeakScanner([CANARY, OTHER])
    assert scanner.scan(_noise(1_000_000, seed=12), tmp_path) == []


def test_reports_which_canary(tmp_path: Path) -> None:
    """With several canaries, each finding names the canary by its index."""
    path = tmp_path / "f"
    path.write_bytes(b"x" + OTHER + b"y")
    findings = LeakScanner([CANARY, OTHER]).scan(path)
    assert {finding.canary for finding in findings} == {1}


def test_findings_and_scanner_never_show_the_canary() -> None:
    """Neither a finding's str/repr nor the scanner's repr contains the canary in any form."""
    scanner = LeakScanner([CANARY])
    findings = scanner.scan_bytes(b"".join(encode(CANARY) for encode in ENCODERS.values()))
    shown = repr(findings) + "".join(str(finding) for finding in findings) + repr(scanner)
    assert LeakScanner([CANARY]).scan_bytes(shown.encode()) == []
    assert isinstance(findings[0], Finding)


def test_refuses_short_or_missing_canaries() -> None:
    """Canaries shorter than 8 bytes would match noise by chance, so they are refused."""
    with pytest.raises(ValueError, match="shorter"):
        LeakScanner([b"short"])
    with pytest.raises(ValueError, match="at least one"):
        LeakScanner([])


def test_identical_forms_searched_once() -> None:
    """An alphanumeric canary's URL forms equal its raw form and are not reported twice."""
    forms = LeakScanner([b"plainalnumcanary123"]).forms
    assert "raw" in forms
    assert "url" not in forms
    assert len(forms) == len(set(forms))
