"""Proof bundles: a genuine bundle verifies offline; every tampered variant names its check."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclave.measurement import simulated_pcrs
from enclave.nsm_simulator import NsmSimulator
from enclave.service import EnclaveService
from shared import protocol as p
from shared.bundle import BundleError, build_bundle, verify_bundle
from shared.disclosure import open_disclosure
from shared.encoding import b64decode, b64encode
from shared.signing import sign_owner_proof
from tests.test_enclave_service import (
    Clock,
    FakePolling,
    FakeTrade,
    call,
    clock,
    log_stream,
    open_session,
    polled,
    simulator,
)
from tests.test_transparency import http_body

__all__ = ["clock", "log_stream", "polled", "simulator"]  # fixtures used by name

NONCE = b"bundle-nonce-0123456789abcdef"


def pinned() -> dict[int, bytes]:
    pcrs = simulated_pcrs()
    return {i: pcrs[i] for i in (0, 1, 2)}


@pytest.fixture
async def genuine(
    polled: tuple[EnclaveService, FakePolling], simulator: NsmSimulator, clock: Clock
) -> dict[str, Any]:
    """A bundle of three chained reports, one disclosed trade and the whole log."""
    service, polling = polled
    owner = Ed25519PrivateKey.generate()
    attest = await call(service, p.Attest(request_id=1, nonce=NONCE))
    assert isinstance(attest, p.AttestReply)
    from shared.attestation import decode_document

    enc = decode_document(attest.document)[0].user_data
    assert enc is not None
    from shared.attestation import decode_user_data

    session_id = await open_session(service, decode_user_data(enc).x25519_public, owner=owner)
    reports = []
    for batch in (["1", "2"], ["3"], ["4", "5"]):
        polling.trade_list.extend(FakeTrade("BTC/USDT", i, price=f"10{i}.5") for i in batch)
        reply = await call(service, p.Aggregates(request_id=2, session_id=session_id))
        assert isinstance(reply, p.AggregatesReply)
        reports.append({"payload": reply.payload, "signature": reply.signature})
    proof = sign_owner_proof(
        owner, method="disclose_trade", session_id=session_id, timestamp=int(time.time())
    )
    sealed = await call(
        service,
        p.DiscloseTrade(
            request_id=3,
            session_id=session_id,
            symbol="BTC/USDT",
            trade_id="2",
            tree_size=reports[0]["payload"]["merkle_tree_size"],
            proof_timestamp=proof.timestamp,
            proof_signature=proof.signature,
        ),
    )
    assert isinstance(sealed, p.DiscloseTradeReply)
    logs = await call(service, p.Logs(request_id=4, session_id=session_id, start=0))
    assert isinstance(logs, p.LogsReply)
    return build_bundle(
        document=attest.document,
        nonce=NONCE,
        reports=reports,
        pcrs=pinned(),
        pcrs_description="simulated measurements of this source tree",
        disclosures=[open_disclosure(sealed.envelope, owner)],
        log=http_body(logs.entries, logs.tree_head, logs.signature),
    )


def test_genuine_bundle_verifies(genuine: dict[str, Any], simulator: NsmSimulator) -> None:
    """Every check passes and the verdict carries the claimed (last) report."""
    # Through JSON, as it travels.
    bundle = json.loads(json.dumps(genuine))
    verdict = verify_bundle(bundle, expected_pcrs=pinned(), root_der=simulator.root_der)
    assert verdict.ok, verdict.to_json()
    assert [c.name for c in verdict.checks] == [
        "format",
        "format",
        "attestation",
        "signature",
        "signature",
        "signature",
        "signature",
        "chain",
        "chain",
        "disclosures",
        "log",
    ]
    assert verdict.report is not None and verdict.report["seq"] == 3
    assert "complete from seq 1" in verdict.to_json()["checks"][8]["detail"]


def _set(path: list[Any], value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(bundle: dict[str, Any]) -> None:
        node: Any = bundle
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return mutate


def _flip_signature(bundle: dict[str, Any]) -> None:
    raw = bytearray(b64decode(bundle["reports"][2]["signature"]))
    raw[5] ^= 1
    bundle["reports"][2]["signature"] = b64encode(bytes(raw))


def _flip_document(bundle: dict[str, Any]) -> None:
    raw = bytearray(b64decode(bundle["attestation"]["document"], max_len=16384))
    raw[-10] ^= 1
    bundle["attestation"]["document"] = b64encode(bytes(raw))


TAMPERED: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("pnl", _set(["reports", 2, "payload", "pnl"], "1000000"), "signature: report 3 does not"),
    ("trades", _set(["reports", 2, "payload", "trades"], 1), "signature"),
    ("merkle root", _set(["reports", 0, "payload", "merkle_root"], "00" * 32), "signature"),
    ("signature bit", _flip_signature, "signature: report 3"),
    ("document bit", _flip_document, "attestation"),
    ("nonce", _set(["attestation", "nonce"], "00"), "attestation: rejected (nonce)"),
    ("dropped middle report", lambda b: b["reports"].pop(1), "chain: seq 3 does not follow 1"),
    ("reordered", lambda b: b["reports"].reverse(), "chain"),
    ("disclosed price", _set(["disclosures", 0, "fields", "price"], "1.0"), "disclosures: "),
    (
        "disclosure proof",
        _set(["disclosures", 0, "inclusion_proof", "size"], 99),
        "disclosures: disclosure 1: no report",
    ),
    ("log entry", _set(["log", "entries", 0, "entry", "data", "label"], "x"), "log: entry 0"),
    ("log truncated", lambda b: b["log"]["entries"].pop(), "log: the log shown is not"),
    ("format", _set(["format"], "zip"), "format"),
    ("extra key", _set(["note"], "trust me"), "format"),
    ("no reports", _set(["reports"], []), "format"),
]


@pytest.mark.parametrize(("name", "mutate", "reason"), TAMPERED, ids=[t[0] for t in TAMPERED])
def test_tampered_bundle_names_the_failing_check(
    genuine: dict[str, Any],
    simulator: NsmSimulator,
    name: str,
    mutate: Callable[[dict[str, Any]], None],
    reason: str,
) -> None:
    """Any change to a payload, signature, document, chain, disclosure or log fails, named."""
    bundle = copy.deepcopy(genuine)
    mutate(bundle)
    verdict = verify_bundle(bundle, expected_pcrs=pinned(), root_der=simulator.root_der)
    assert not verdict.ok and verdict.report is None
    assert verdict.reason is not None and verdict.reason.startswith(reason), verdict.reason


def test_pins_come_from_the_verifier_not_the_bundle(
    genuine: dict[str, Any], simulator: NsmSimulator
) -> None:
    """Other expected PCRs, another root, or a time past the certificates: refused."""
    other = pinned() | {0: bytes(48)}
    verdict = verify_bundle(genuine, expected_pcrs=other, root_der=simulator.root_der)
    assert verdict.reason is not None and "pcr-mismatch" in verdict.reason
    verdict = verify_bundle(genuine, expected_pcrs=pinned())  # the AWS root, not the simulator's
    assert verdict.reason is not None and "(root)" in verdict.reason
    later = datetime.now(UTC) + timedelta(days=3650)
    verdict = verify_bundle(genuine, expected_pcrs=pinned(), root_der=simulator.root_der, at=later)
    assert verdict.reason is not None and "cert-expired" in verdict.reason


def test_partial_chain_is_said_so(genuine: dict[str, Any], simulator: NsmSimulator) -> None:
    """Leaving out the first report still verifies, and the chain check says it is partial."""
    bundle = copy.deepcopy(genuine)
    bundle["reports"].pop(0)
    bundle.pop("disclosures")  # it proves a trade under the dropped report's root
    verdict = verify_bundle(bundle, expected_pcrs=pinned(), root_der=simulator.root_der)
    assert verdict.ok, verdict.reason
    assert any("partial: starts at seq 2" in c.detail for c in verdict.checks)


def test_build_refuses_an_empty_claim() -> None:
    """No report, or a report in another shape: BundleError, nothing written."""
    with pytest.raises(BundleError):
        build_bundle(document=b"x", nonce=b"n", reports=[], pcrs=pinned(), pcrs_description="")
    with pytest.raises(BundleError):
        build_bundle(
            document=b"x", nonce=b"n", reports=[{"payload": {}}], pcrs=pinned(), pcrs_description=""
        )
