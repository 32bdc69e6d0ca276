"""Profiles, seed loading and example accounting shared by the parser fuzzers.

Two hypothesis profiles, picked by ``HYPOTHESIS_PROFILE`` (tests/fuzz/conftest.py):

``fuzz-ci`` (the default, inside ``make test``)
    a few dozen derandomised examples per property: the same inputs every run, so a
    red ``make test`` is always reproducible; the whole directory runs in well under
    a minute on two cores.
``fuzz`` (``make fuzz``)
    thousands of random examples per property, failures saved in the example database
    (.hypothesis/) and replayed first on the next run; bounded to a few minutes.

Names are our own: hypothesis ships a built-in ``ci`` profile that it loads by itself
on CI machines, and redefining it would change every other property test in the suite.
"""

from __future__ import annotations

import collections
import copy
import functools
import json
import os
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, Final, TypeVar

from hypothesis import HealthCheck, settings

__all__ = [
    "LONG_PROFILE",
    "PROFILE_ENV",
    "SHORT_PROFILE",
    "STATS",
    "VECTORS",
    "active_profile",
    "attempt",
    "counted",
    "fuzz_settings",
    "load_context",
    "load_seeds",
    "load_world",
    "names_marked",
    "register_profiles",
    "seed_records",
]

PROFILE_ENV: Final = "HYPOTHESIS_PROFILE"
SHORT_PROFILE: Final = "fuzz-ci"
LONG_PROFILE: Final = "fuzz"
VECTORS: Final = Path(__file__).resolve().parents[1] / "vectors"
FUZZ_VECTORS: Final = VECTORS / "fuzz"

# Slow inputs are the point here (size caps, nesting limits), not a test smell.
_SUPPRESSED: Final = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")
E = TypeVar("E", bound=BaseException)


def register_profiles() -> None:
    """Register both profiles (idempotent: re-registering replaces with the same values)."""
    settings.register_profile(
        SHORT_PROFILE,
        max_examples=100,
        derandomize=True,
        database=None,
        print_blob=True,
        suppress_health_check=_SUPPRESSED,
    )
    settings.register_profile(
        LONG_PROFILE,
        max_examples=int(os.environ.get("FUZZ_MAX_EXAMPLES", "3000")),
        print_blob=True,
        suppress_health_check=_SUPPRESSED,
    )


def active_profile() -> str:
    """``fuzz`` when HYPOTHESIS_PROFILE says so, else the short profile."""
    return LONG_PROFILE if os.environ.get(PROFILE_ENV) == LONG_PROFILE else SHORT_PROFILE


def fuzz_settings(*, deadline_ms: int, scale: float = 1.0) -> settings:
    """The active profile with this property's deadline (a hang fails the example).

    ``scale`` shrinks the example count of properties whose every example costs a
    public-key operation, so the long profile stays bounded; never below 20.
    """
    register_profiles()
    parent = settings.get_profile(active_profile())
    return settings(
        parent=parent,
        deadline=timedelta(milliseconds=deadline_ms),
        max_examples=max(20, int(parent.max_examples * scale)),
    )


# --------------------------------------------------------------------------- accounting

# (target, test node id) -> [examples run, seconds spent inside the examples]
STATS: Final[collections.defaultdict[tuple[str, str], list[float]]] = collections.defaultdict(
    lambda: [0, 0.0]
)


def counted(target: str) -> Callable[[F], F]:
    """Count the examples a property runs against ``target`` (for the make fuzz table)."""

    def decorate(test: F) -> F:
        @functools.wraps(test)
        def run(*args: Any, **kwargs: Any) -> Any:
            node = os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" ", 1)[0]
            entry = STATS[(target, node)]
            started = time.perf_counter()
            try:
                return test(*args, **kwargs)
            finally:
                entry[0] += 1
                entry[1] += time.perf_counter() - started

        return run  # type: ignore[return-value]

    return decorate


def attempt(call: Callable[[], T], documented: type[E]) -> tuple[T | None, E | None]:
    """``(result, None)``, or ``(None, error)`` when ``call`` raised its documented error.

    Any other exception propagates: that is the bug a fuzzer is looking for.
    """
    try:
        return call(), None
    except documented as error:
        return None, error


# --------------------------------------------------------------------------- seeds


def _decode(seed: dict[str, Any]) -> Any:
    if "hex" in seed:
        return bytes.fromhex(seed["hex"])
    if "json" in seed:
        return seed["json"]
    return seed["text"]


def _patched(base: Any, sets: list[list[Any]]) -> Any:
    value = copy.deepcopy(base)
    for path, replacement in sets:
        if not path:
            value = replacement
            continue
        node = value
        for step in path[:-1]:
            node = node[step]
        node[path[-1]] = replacement
    return value


def load_seeds(target: str) -> dict[str, Any]:
    """``name -> seed`` of tests/vectors/fuzz/<target>/seeds.json (hex -> bytes).

    A JSON seed ``{"patch_of": name, "set": [[path, value], ...]}`` is the named seed
    with those values set (regression seeds stay small and show what they change).
    """
    document = json.loads((FUZZ_VECTORS / target / "seeds.json").read_text())
    seeds: dict[str, Any] = {}
    for record in document["seeds"]:
        seed = _decode(record)
        if isinstance(seed, dict) and "patch_of" in seed:
            seed = _patched(seeds[seed["patch_of"]], seed["set"])
        seeds[record["name"]] = seed
    return seeds


def seed_records(target: str) -> dict[str, dict[str, Any]]:
    """``name -> the raw record`` (its marks: "regression", "opens", "pcrs", ...)."""
    document = json.loads((FUZZ_VECTORS / target / "seeds.json").read_text())
    records: dict[str, dict[str, Any]] = {}
    for record in document["seeds"]:
        marks = dict(record)
        if isinstance(record.get("json"), dict) and "patch_of" in record["json"]:
            marks.update({k: v for k, v in record["json"].items() if k not in ("patch_of", "set")})
        records[record["name"]] = marks
    return records


def names_marked(target: str, mark: str) -> list[str]:
    """Names of the seeds of ``target`` that carry ``mark`` (e.g. "opens": genuine ones)."""
    document = json.loads((FUZZ_VECTORS / target / "seeds.json").read_text())
    return [seed["name"] for seed in document["seeds"] if mark in seed]


def load_context(target: str) -> dict[str, Any]:
    """The ``context`` object of a target's seeds file (keys that open its seeds)."""
    context: dict[str, Any] = json.loads((FUZZ_VECTORS / target / "seeds.json").read_text())[
        "context"
    ]
    return context


def load_world() -> dict[str, Any]:
    """tests/vectors/fuzz/world.json: the test keys behind the signed seeds."""
    world: dict[str, Any] = json.loads((FUZZ_VECTORS / "world.json").read_text())
    return world
