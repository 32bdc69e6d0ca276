"""`make demo` itself: the local stack starts and the whole client flow passes."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from scripts.localstack import REPORT_FILE, free_port, report_rows
from shared.attestation import pcrs_from_json
from shared.signing import verify_payload

pytestmark = pytest.mark.e2e

WIDTH = 200
"""Terminal width the demo is run with, wide enough that no table cell wraps."""


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    """One run of `python -m scripts.localstack demo`, and its state directory."""
    state = tmp_path_factory.mktemp("demo") / "state"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "scripts.localstack",
            "demo",
            "--state-dir",
            str(state),
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
        env={**os.environ, "COLUMNS": str(WIDTH)},
    )
    return result, state


def table_rows(output: str) -> dict[str, str]:
    """The (metric, value) body rows of the rich tables printed in ``output``."""
    rows: dict[str, str] = {}
    for line in output.splitlines():
        cells = line.strip().split("│")
        if len(cells) == 4 and cells[0] == cells[3] == "":
            rows[cells[1].strip()] = cells[2].strip()
    return rows


def test_demo_passes_every_check(demo: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    """`python -m scripts.localstack demo` exits 0 and reports every check as passed."""
    result, _state = demo
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "demo passed" in output
    assert "FAIL" not in output
    assert output.count("PASS") >= 10
    # Progress while the first poll runs (a line per change when not on a terminal).
    assert "polling: state" in result.stdout


def test_demo_prints_the_verified_report_as_a_table(
    demo: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    """The printed metric/value table shows exactly the figures of the signed report."""
    result, state = demo
    assert result.returncode == 0, result.stdout + result.stderr
    saved: dict[str, Any] = json.loads((state / REPORT_FILE).read_text())
    payload = saved["payload"]
    # The saved report is the one the demo verified: its signature checks out under the
    # attested key it names, and it comes from the measured enclave.
    verify_payload(base64.b64decode(saved["signing_public_key"]), payload, saved["signature"])
    assert (
        payload["pcr0"]
        == pcrs_from_json(json.loads((state / "expected-pcrs.json").read_text()))[0].hex()
    )

    printed = table_rows(result.stdout)
    expected = dict(report_rows(payload))
    assert {metric: printed.get(metric) for metric in expected} == expected
    truth = json.loads((state / "fakes" / "truth-binance.json").read_text())
    assert printed["trades"] == str(payload["trades"]) == str(len(truth))
    assert printed["orders"] == str(payload["orders"])
    currency = payload["reporting_currency"]
    assert printed["PnL net (realized)"] == f"{payload['pnl']} {currency}"
    assert printed["PnL gross (realized)"] == f"{payload['pnl_gross']} {currency}"
    assert printed["volume"] == f"{payload['volume']} {currency}"
    assert printed["fees"] == f"{payload['fees']} {currency}"
    assert printed["merkle root"] == payload["merkle_root"]
    assert printed["completeness"].startswith("complete:")
