"""`make demo` itself: the local stack starts and the whole client flow passes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from scripts.localstack import free_port

pytestmark = pytest.mark.e2e


def test_demo_passes_every_check(tmp_path: Path) -> None:
    """`python -m scripts.localstack demo` exits 0 and reports every check as passed."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "scripts.localstack",
            "demo",
            "--state-dir",
            str(tmp_path / "state"),
            "--port",
            str(free_port()),
            "--enclave-port",
            str(free_port()),
            "--egress-port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "demo passed" in output
    assert "FAIL" not in output
    assert output.count("PASS") >= 10
