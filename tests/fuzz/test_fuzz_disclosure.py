"""Fuzz shared.disclosure.verify_disclosure: DisclosureError only, and only the trade the
report committed to is ever proven.

Seeds: tests/vectors/fuzz/disclosure (a genuine disclosure of trade 2 under the first
report's Merkle root, and that report's payload).
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from shared.disclosure import DisclosedTrade, DisclosureError, verify_disclosure
from tests.fuzz.mutations import json_values, mutated_json
from tests.fuzz.support import attempt, counted, fuzz_settings, load_seeds

SEEDS = load_seeds("disclosure")
DISCLOSURE: dict[str, Any] = SEEDS["genuine"]["disclosure"]
REPORT: dict[str, Any] = SEEDS["genuine"]["report_payload"]
GENUINE = verify_disclosure(DISCLOSURE, report_payload=REPORT)


@fuzz_settings(deadline_ms=1000)
@given(disclosure=mutated_json([DISCLOSURE]) | json_values())
@counted("shared.disclosure.verify_disclosure")
def test_a_mutated_disclosure_proves_nothing_new(disclosure: Any) -> None:
    """Against the genuine report: DisclosureError, or exactly the genuine trade."""
    proven, _ = attempt(
        lambda: verify_disclosure(disclosure, report_payload=REPORT), DisclosureError
    )
    if proven is not None:
        assert proven == GENUINE


@fuzz_settings(deadline_ms=1000)
@given(
    report=mutated_json([REPORT]).filter(lambda r: isinstance(r, dict)),
    disclosure=st.just(DISCLOSURE) | mutated_json([DISCLOSURE]),
)
@counted("shared.disclosure.verify_disclosure")
def test_a_mutated_report_payload_raises_only_disclosure_error(
    report: Any, disclosure: Any
) -> None:
    """The report side is a caller-verified mapping (its documented type), but odd
    values in it still only refuse."""
    proven, _ = attempt(
        lambda: verify_disclosure(disclosure, report_payload=report), DisclosureError
    )
    if proven is not None:
        assert isinstance(proven, DisclosedTrade)
        assert proven.fields == GENUINE.fields and proven.index == GENUINE.index
