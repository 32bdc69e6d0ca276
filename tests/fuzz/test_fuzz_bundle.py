"""Fuzz shared.bundle.verify_bundle: it never raises, whatever the JSON, and a passing
verdict only ever vouches for a report the enclave signed.

Seeds: tests/vectors/fuzz/bundle (a genuine bundle of the fuzz world: attestation,
three chained reports, one disclosure, the whole log; and the regression seeds).
Mutations: JSON-level anywhere (the bundle is untrusted); and re-signed ones, where
the world keys sign mutated reports, logs and attestation payloads, so the checks
behind each signature see hostile values too.
"""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import cbor2
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from shared.bundle import Verdict, verify_bundle
from shared.encoding import canonical_json
from tests.fuzz import world
from tests.fuzz.mutations import Draw, deep_list, json_values, mutate_value, mutated_json
from tests.fuzz.support import counted, fuzz_settings, load_seeds, seed_records

SEEDS = load_seeds("bundle")
RECORDS = seed_records("bundle")
GENUINE: dict[str, Any] = SEEDS["genuine"]
GENUINE_REPORTS = {canonical_json(report["payload"]) for report in GENUINE["reports"]}
SECTIONS = ("attestation", "reports", "disclosures", "log", "pcrs_source")
PINNED = {
    (0, 1, 2): {i: world.EXPECTED_PCRS[i] for i in (0, 1, 2)},
    (1, 2): {i: world.EXPECTED_PCRS[i] for i in (1, 2)},
}


def _verify(bundle: Any, pins: tuple[int, ...] = (0, 1, 2)) -> Verdict:
    verdict = verify_bundle(bundle, expected_pcrs=PINNED[pins], root_der=world.ROOT_DER)
    assert isinstance(verdict, Verdict) and verdict.checks
    assert json.loads(json.dumps(verdict.to_json()))["ok"] is verdict.ok
    assert verdict.ok == (verdict.reason is None)
    assert (verdict.report is not None) == verdict.ok
    return verdict


_PAYLOAD = cbor2.loads(cbor2.loads(world.DOCUMENT)[2])
# Timestamps (ms) at the edges of what CBOR carries and datetime can represent.
_TIMESTAMPS = st.sampled_from((1, 2**63, 2**64 - 1, 253_402_300_800_000, 10**17)) | st.integers(
    1, 2**64 - 1
)


def _document_payload(draw: Draw) -> dict[Any, Any]:
    """The world document's payload with one field changed (not signed here)."""
    payload = dict(_PAYLOAD)
    field = draw(st.sampled_from(sorted(payload)))
    if field == "pcrs":
        pcrs = dict(payload["pcrs"])
        for index in draw(st.lists(st.sampled_from(sorted(pcrs)), max_size=3, unique=True)):
            del pcrs[index]
        payload["pcrs"] = pcrs
    elif field == "timestamp":
        payload["timestamp"] = draw(_TIMESTAMPS)
    else:
        payload[field] = draw(st.none() | st.binary(max_size=40) | st.integers(0, 2**64 - 1))
    return payload


def _tamper_document(draw: Draw, bundle: dict[str, Any]) -> None:
    """What anyone can do: edit the document's payload and keep the old signature."""
    protected, _, _, signature = cbor2.loads(world.DOCUMENT)
    payload = cbor2.dumps(_document_payload(draw))
    document = cbor2.dumps([protected, {}, payload, signature])
    bundle["attestation"]["document"] = base64.b64encode(document).decode()


@st.composite
def _mutated(draw: Draw) -> Any:
    """The genuine bundle with one section (or the whole) mutated as JSON, or its
    document's payload edited under the old signature."""
    section = draw(st.sampled_from((*SECTIONS, None, "document")))
    if section is None:
        return draw(mutated_json([GENUINE]))
    bundle = copy.deepcopy(GENUINE)
    if section == "document":
        _tamper_document(draw, bundle)
    else:
        bundle[section] = draw(mutated_json([bundle[section]]))
    return bundle


@fuzz_settings(deadline_ms=2000, scale=0.5)
@given(bundle=_mutated() | json_values(), pins=st.sampled_from(sorted(PINNED)))
@example(bundle=SEEDS["regression-disclosure-size-list"], pins=(0, 1, 2))
@example(bundle=SEEDS["regression-timestamp-out-of-range"], pins=(0, 1, 2))
@counted("shared.bundle.verify_bundle")
def test_verify_bundle_never_raises_and_vouches_only_for_signed_reports(
    bundle: Any, pins: tuple[int, ...]
) -> None:
    """Any JSON value: a verdict; a passing one claims a report the enclave signed."""
    verdict = _verify(bundle, pins)
    if verdict.ok:
        assert verdict.report is not None
        assert canonical_json(verdict.report) in GENUINE_REPORTS


def _resign_reports(draw: Draw, bundle: dict[str, Any]) -> None:
    reports = bundle["reports"]
    index = draw(st.integers(0, len(reports) - 1))
    payload: Any = reports[index]["payload"]
    if draw(st.booleans()):
        payload = draw(mutated_json([payload]))
    else:  # one top-level field changed according to its type, or to a decoy
        payload = dict(payload)
        field = draw(st.sampled_from(sorted(payload)))
        payload[field] = mutate_value(draw, copy.deepcopy(payload[field]))
    signature = world.resign_payload(payload)
    if signature is not None:
        reports[index] = {"payload": payload, "signature": signature}


def _resign_log(draw: Draw, bundle: dict[str, Any]) -> None:
    # Entry edits re-signed under a rebuilt tree.
    entries = [copy.deepcopy(row["entry"]) for row in bundle["log"]["entries"]]
    edited = draw(mutated_json([entries]))
    bundle["log"] = world.signed_log_body(edited if isinstance(edited, list) else [edited])


def _resign_document(draw: Draw, bundle: dict[str, Any]) -> None:
    document = world.sign_document(_document_payload(draw))
    bundle["attestation"]["document"] = base64.b64encode(document).decode()


@st.composite
def _resigned(draw: Draw) -> dict[str, Any]:
    bundle = copy.deepcopy(GENUINE)
    for _ in range(draw(st.integers(1, 2))):
        draw(st.sampled_from((_resign_reports, _resign_log, _resign_document)))(draw, bundle)
    return bundle


@fuzz_settings(deadline_ms=2000, scale=0.5)
@given(bundle=_resigned(), pins=st.sampled_from(sorted(PINNED)))
@example(bundle=SEEDS["regression-session-hash-list"], pins=(0, 1, 2))
@counted("shared.bundle.verify_bundle")
def test_verify_bundle_never_raises_on_hostile_signed_content(
    bundle: Any, pins: tuple[int, ...]
) -> None:
    """Reports, logs and documents the keys signed, however odd: still a verdict."""
    _verify(bundle, pins)


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_every_seed_gets_a_verdict(name: str) -> None:
    """The genuine bundle passes; every regression seed (each once an exception out of
    verify_bundle) gets a failing verdict."""
    pins = tuple(RECORDS[name].get("pcrs", (0, 1, 2)))
    verdict = _verify(SEEDS[name], pins)
    assert verdict.ok == (name == "genuine"), verdict.reason


@pytest.mark.parametrize("depth", [65, 900, 5000])
def test_deep_nesting_is_refused_before_any_check_recurses(depth: int) -> None:
    """A value nested deeper than any bundle (a RecursionError before the fix) fails
    the format check, wherever it sits."""
    for path in (["reports", 0, "payload", "deep"], ["log", "entries", 0, "entry", "data", "x"]):
        bundle = copy.deepcopy(GENUINE)
        node: Any = bundle
        for step in path[:-1]:
            node = node[step]
        node[path[-1]] = deep_list(depth)
        verdict = _verify(bundle)
        assert not verdict.ok
        assert verdict.reason == "format: the bundle is nested too deeply"


def test_the_genuine_bundle_passes_every_check() -> None:
    """The seed the fuzzers start from is genuine, so mutations start deep."""
    verdict = _verify(GENUINE)
    assert verdict.ok
    assert [c.name for c in verdict.checks][-3:] == ["chain", "disclosures", "log"]
