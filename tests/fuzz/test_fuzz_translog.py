"""Fuzz shared.translog.verify_log: TransparencyLogError only, and no entry the enclave
did not log is ever vouched for.

Seeds: tests/vectors/fuzz/translog (a genuine log signed by the world key, and the
regression seeds). Mutations: JSON-level on the body; and re-signed ones, where the
fuzzer edits entries, rebuilds the tree and proofs and signs the new head with the
world key, so the entry checks see hostile entries behind a valid signature.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from shared.encoding import canonical_json
from shared.merkle import MerkleTree, TreeHead
from shared.translog import TransparencyLogError, VerifiedLog, verify_log
from tests.fuzz import world
from tests.fuzz.mutations import Draw, deep_list, json_values, mutated_json
from tests.fuzz.support import attempt, counted, fuzz_settings, load_seeds, seed_records

SEEDS = load_seeds("translog")
REGRESSIONS = sorted(
    name for name, record in seed_records("translog").items() if "regression" in record
)
GENUINE_BODY = SEEDS["genuine-log"]
GENUINE = verify_log(
    GENUINE_BODY, signing_public=world.SIGNING_PUBLIC, session_hash=world.SESSION_HASH
)
GENUINE_LEAVES = {entry["index"]: canonical_json(entry) for entry in GENUINE.entries}
LOG_ID = world.LOG_ID


def _verify(body: Any, **options: Any) -> tuple[VerifiedLog | None, TransparencyLogError | None]:
    return attempt(
        lambda: verify_log(
            body, signing_public=world.SIGNING_PUBLIC, session_hash=world.SESSION_HASH, **options
        ),
        TransparencyLogError,
    )


def _check_result(result: VerifiedLog) -> None:
    # The reports view is part of the contract too: a dict or TransparencyLogError.
    reports, _ = attempt(result.reports, TransparencyLogError)
    assert reports is None or all(type(seq) is int for seq in reports)
    assert all(isinstance(op, str) for op in result.ops())


@fuzz_settings(deadline_ms=1000)
@given(body=mutated_json([GENUINE_BODY]) | json_values(), complete=st.booleans())
@example(body=SEEDS["regression-op-is-a-list"], complete=False)
@counted("shared.translog.verify_log")
def test_verify_log_raises_only_its_error_and_vouches_only_for_genuine_entries(
    body: Any, complete: bool
) -> None:
    """Without the key nothing but the genuine head and genuine entries verifies."""
    result, _ = _verify(body, require_complete=complete)
    if result is None:
        return
    assert result.head == GENUINE.head
    for entry in result.entries:
        assert canonical_json(entry) == GENUINE_LEAVES[entry["index"]]
    _check_result(result)


@st.composite
def _resigned(draw: Draw) -> Any:
    """Genuine entries edited as JSON, the tree rebuilt and the head re-signed."""
    entries = [copy.deepcopy(row["entry"]) for row in GENUINE_BODY["entries"]]
    edited = draw(mutated_json([entries]))
    if not isinstance(edited, list):
        edited = [edited]
    body = world.signed_log_body(edited, size_shift=draw(st.sampled_from((0, 0, 0, -1, 1))))
    if draw(st.booleans()):
        head = body["tree_head"]["payload"]
        head.update(
            draw(st.dictionaries(st.sampled_from(sorted(head)), json_values(4), max_size=1))
        )
        signature = world.resign_payload(head)
        if signature is not None:
            body["tree_head"]["signature"] = signature
    return body


@fuzz_settings(deadline_ms=1000)
@given(body=_resigned(), complete=st.booleans())
@counted("shared.translog.verify_log")
def test_hostile_entries_behind_a_valid_head_raise_only_its_error(
    body: Any, complete: bool
) -> None:
    """Entries the key signed over, however malformed: a verified log or TransparencyLogError."""
    result, _ = _verify(body, require_complete=complete)
    if result is not None:
        _check_result(result)


@fuzz_settings(deadline_ms=1000)
@given(old_size=st.integers(0, len(GENUINE_BODY["entries"])), data=st.data())
@counted("shared.translog.verify_log")
def test_tampered_consistency_proofs_raise_only_its_error(
    old_size: int, data: st.DataObject
) -> None:
    """With a trusted earlier head: the genuine proof verifies, a mutated one fails as
    TransparencyLogError (or still proves the same extension)."""
    leaves = [canonical_json(row["entry"]) for row in GENUINE_BODY["entries"]]
    tree = MerkleTree(leaves)
    trusted = TreeHead(
        log_id=LOG_ID, size=old_size, root_hash=tree.root_at(old_size).hex(), timestamp=1
    )
    proof = {
        "old_size": old_size,
        "new_size": tree.size,
        "path": [h.hex() for h in tree.consistency_proof(old_size, tree.size)],
    }
    body = {**GENUINE_BODY, "consistency_proof": proof}
    assert _verify(body, trusted_head=trusted)[0] is not None
    mutated = data.draw(mutated_json([proof]))
    result, _ = _verify({**GENUINE_BODY, "consistency_proof": mutated}, trusted_head=trusted)
    assert result is None or mutated == proof or mutated.get("path") == proof["path"]


@pytest.mark.parametrize("name", REGRESSIONS)
def test_regression_seeds_raise_only_its_error(name: str) -> None:
    """Each input that once escaped as TypeError or KeyError now fails (or verifies)
    with TransparencyLogError only."""
    result, _ = _verify(SEEDS[name])
    if result is not None:
        with pytest.raises(TransparencyLogError, match="malformed report entry"):
            result.reports()


def test_deeply_nested_entry_data_is_refused_without_recursing() -> None:
    """Entry data nested thousands deep (a RecursionError before the fix) is refused as
    malformed data, also when the key signed over it."""
    entries = [copy.deepcopy(row["entry"]) for row in GENUINE_BODY["entries"]]
    entries[1]["data"]["deep"] = deep_list(5000)
    for body in (
        world.signed_log_body(entries),
        {
            **GENUINE_BODY,
            "entries": [
                dict(GENUINE_BODY["entries"][0], entry=entries[0]),
                dict(GENUINE_BODY["entries"][1], entry=entries[1]),
            ],
        },
    ):
        result, error = _verify(body)
        assert result is None and error is not None and "malformed data" in error.reason
