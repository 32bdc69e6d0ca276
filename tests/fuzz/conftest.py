"""Parser fuzzing: the hypothesis profile (HYPOTHESIS_PROFILE) and the per-target table.

``HYPOTHESIS_PROFILE=fuzz`` (``make fuzz``) runs the long profile and prints, per
target, how many examples ran and how long they took; anything else runs the short
``fuzz-ci`` profile of ``make test`` (``FUZZ_SUMMARY=1`` prints the table there too).
The profile is applied per test (tests.fuzz.support.fuzz_settings), never loaded
globally, so the rest of the suite keeps its own hypothesis settings.
"""

from __future__ import annotations

import collections
import os

import pytest

from tests.fuzz.support import LONG_PROFILE, STATS, active_profile, register_profiles

register_profiles()

_WALL: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" and "tests/fuzz/" in report.nodeid:
        _WALL[report.nodeid] = report.duration


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not STATS or (active_profile() != LONG_PROFILE and not os.environ.get("FUZZ_SUMMARY")):
        return
    examples: collections.Counter[str] = collections.Counter()
    seconds: collections.Counter[str] = collections.Counter()
    properties: collections.Counter[str] = collections.Counter()
    for (target, node), (count, _inside) in STATS.items():
        examples[target] += int(count)
        seconds[target] += _WALL.get(node, 0.0)
        properties[target] += 1
    write = terminalreporter.write_line
    terminalreporter.section(f"parser fuzzing, profile {active_profile()}")
    write(f"{'target':<52} {'props':>5} {'examples':>9} {'seconds':>8}")
    for target in sorted(examples):
        write(f"{target:<52} {properties[target]:>5} {examples[target]:>9} {seconds[target]:>8.1f}")
    write(
        f"{'total':<52} {sum(properties.values()):>5} {sum(examples.values()):>9} "
        f"{sum(seconds.values()):>8.1f}"
    )
