"""``make bench``: run every bench/bench_*.py module, print one table, write report.json.

Each figure is printed beside a baseline measured in the same run on the same
machine, and the ratio between them; absolute numbers alone say little.
"""

from __future__ import annotations

import importlib
import json
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.common import Result

BENCH_DIR = Path(__file__).parent


def main(argv: list[str]) -> int:
    """Run the selected benchmark modules (all by default) and report."""
    names = argv or sorted(p.stem for p in BENCH_DIR.glob("bench_*.py"))
    console = Console(width=180)
    results: list[Result] = []
    for name in names:
        console.print(f"[bold]running {name}[/bold] ...")
        started = time.perf_counter()
        module = importlib.import_module(f"bench.{name}")
        results.extend(module.run())
        console.print(f"  done in {time.perf_counter() - started:.1f} s")
    table = Table(
        title=f"perf-aggregator benchmarks ({platform.python_version()}, same-run baselines)"
    )
    for column in ("area", "operation", "ops/s", "baseline", "baseline ops/s", "ratio", "extra"):
        table.add_column(
            column, justify="right" if "ops" in column or column == "ratio" else "left"
        )
    for r in results:
        extra = ", ".join(f"{k}={v}" for k, v in r.extra.items())
        table.add_row(
            r.area, r.name, f"{r.ops_per_s:,.0f}", r.baseline, f"{r.baseline_ops_per_s:,.0f}",
            f"{r.ratio:.3f}", extra,
        )  # fmt: skip
    console.print(table)
    report = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "results": [asdict(r) | {"ratio": r.ratio} for r in results],
    }
    (BENCH_DIR / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    console.print(f"wrote {BENCH_DIR / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
