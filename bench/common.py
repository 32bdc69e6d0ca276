"""Timing helpers shared by the benchmark modules.

Every benchmark module ``bench/bench_<area>.py`` exposes ``run() -> list[Result]``;
``bench/run.py`` imports them all, prints one table and writes ``bench/report.json``.
Each Result names the operation measured and the baseline measured in the same run,
so the ratio is meaningful on whatever machine runs it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Result", "measure"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Result:
    """One measured figure and the same-run baseline it is compared against."""

    area: str
    name: str
    ops_per_s: float
    baseline: str
    baseline_ops_per_s: float
    extra: dict[str, float | int | str] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """ops_per_s / baseline_ops_per_s (1.0 means as fast as the baseline)."""
        return self.ops_per_s / self.baseline_ops_per_s if self.baseline_ops_per_s else 0.0


def measure(fn: Callable[[], object], *, min_time: float = 0.5, batch: int = 1) -> float:
    """Call ``fn`` repeatedly for at least ``min_time`` seconds; return calls per second.

    ``batch`` says how many operations one call of ``fn`` performs.
    """
    fn()  # warm-up: imports, caches, first allocation
    calls = 0
    start = time.perf_counter()
    deadline = start + min_time
    while True:
        fn()
        calls += 1
        now = time.perf_counter()
        if now >= deadline:
            return calls * batch / (now - start)
