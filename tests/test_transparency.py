"""The enclave's transparency log and owner-only trade disclosure, end to end in the service."""

from __future__ import annotations

import copy
import json
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclave.commitments import leaf_fields
from enclave.nsm_simulator import NsmSimulator
from enclave.opslog import OpsLog
from enclave.service import EnclaveService
from shared import protocol as p
from shared.disclosure import DisclosureError, open_disclosure, verify_disclosure
from shared.encoding import b64encode
from shared.ids import session_hash
from shared.merkle import InclusionProof, MerkleTree, TreeHead
from shared.signing import report_hash, sign_owner_proof, verify_payload
from shared.translog import (
    SignedTreeHead,
    TransparencyLogError,
    encode_entry,
    log_id_for,
    parse_entry,
    verify_log,
)
from tests.test_enclave_service import (  # fixtures and helpers of the service tests
    Clock,
    FakePolling,
    FakeTrade,
    attested_keys,
    call,
    clock,
    log_stream,
    open_session,
    polled,
    simulator,
)

__all__ = ["clock", "log_stream", "polled", "simulator"]  # fixtures used by name


def http_body(
    entries: tuple[bytes, ...], tree_head: dict[str, Any], signature: str
) -> dict[str, Any]:
    """What GET /api/logs serves for a whole log (the parent's job, done here by hand)."""
    tree = MerkleTree(entries)
    return {
        "tree_head": {"payload": tree_head, "signature": signature},
        "entries": [
            {
                "index": i,
                "entry": json.loads(leaf),
                "inclusion_proof": InclusionProof.from_hashes(
                    i, tree.size, tree.inclusion_proof(i, tree.size)
                ).to_json(),
            }
            for i, leaf in enumerate(entries)
        ],
        "consistency_proof": None,
    }


async def logs(service: EnclaveService, session_id: str, start: int = 0) -> p.LogsReply:
    reply = await call(service, p.Logs(request_id=9, session_id=session_id, start=start))
    assert isinstance(reply, p.LogsReply), reply
    return reply


def ops(entries: tuple[bytes, ...]) -> list[str]:
    return [json.loads(e)["op"] for e in entries]


async def test_log_records_submit_polls_reports_and_revoke(
    polled: tuple[EnclaveService, FakePolling], simulator: NsmSimulator, clock: Clock
) -> None:
    """Every operation lands in the signed log; unchanged polling adds no entry."""
    service, polling = polled
    enc, sig = await attested_keys(service, simulator, clock)
    session_id = await open_session(service, enc)
    digest = session_hash(session_id)
    first = await logs(service, session_id)
    assert ops(first.entries) == ["submit", "poll"]
    polling.trade_list.extend([FakeTrade("BTC/USDT", "1"), FakeTrade("BTC/USDT", "2")])
    report = await call(service, p.Aggregates(request_id=2, session_id=session_id))
    assert isinstance(report, p.AggregatesReply)
    assert report.payload["log_size"] == 3  # submit, poll, poll(2 trades): before its own entry
    await call(service, p.Summary(request_id=3, session_id=session_id))  # nothing new
    full = await logs(service, session_id)
    assert ops(full.entries) == ["submit", "poll", "poll", "report"]
    body = http_body(full.entries, full.tree_head, full.signature)
    verified = verify_log(body, signing_public=sig, session_hash=digest, require_complete=True)
    poll = verified.entries[2]["data"]
    assert poll["trades"] == 2 and poll["merkle_root"] == report.payload["merkle_root"]
    assert verified.reports() == {1: report_hash(report.payload)}
    # A later page starts where asked; the head still covers everything.
    page = await logs(service, session_id, start=3)
    assert ops(page.entries) == ["report"] and page.tree_head["tree_size"] == 4
    held = service.sessions.get_active(digest, now=clock.now)
    assert held is not None and held.commitments.salt_key != bytes(32)
    revoked = await call(
        service,
        p.Revoke(
            request_id=5,
            session_id=session_id,
            proof_timestamp=None,
            proof_signature=None,
            log_start=4,
        ),
    )
    assert isinstance(revoked, p.RevokeReply)
    assert ops(revoked.entries) == ["revoke"]
    assert held.commitments.salt_key == bytes(32)  # wiped with the session
    final = verify_log(
        http_body(full.entries + revoked.entries, revoked.tree_head, revoked.signature),
        signing_public=sig,
        session_hash=digest,
        require_complete=True,
    )
    assert final.head.size == 5 and final.entries[-1]["data"] == {"by": "holder"}


async def test_log_start_beyond_the_log_is_refused(
    polled: tuple[EnclaveService, FakePolling], simulator: NsmSimulator, clock: Clock
) -> None:
    """A parent claiming more entries than exist gets BAD_REQUEST; a revoke is not applied."""
    service, _ = polled
    enc, _ = await attested_keys(service, simulator, clock)
    session_id = await open_session(service, enc)
    reply = await call(service, p.Logs(request_id=1, session_id=session_id, start=99))
    assert isinstance(reply, p.ErrorReply) and reply.code is p.ErrorCode.BAD_REQUEST
    revoke = p.Revoke(
        request_id=2, session_id=session_id, proof_timestamp=None, proof_signature=None,
        log_start=99,
    )  # fmt: skip
    reply = await call(service, revoke)
    assert isinstance(reply, p.ErrorReply) and reply.code is p.ErrorCode.BAD_REQUEST
    assert isinstance(await logs(service, session_id), p.LogsReply)  # still live


def disclose(
    session_id: str, owner: Ed25519PrivateKey | None, *, trade_id: str = "2", **fields: Any
) -> p.DiscloseTrade:
    proof = sign_owner_proof(
        owner or Ed25519PrivateKey.generate(),
        method="disclose_trade",
        session_id=session_id,
        timestamp=int(time.time()),
    )
    values: dict[str, Any] = {
        "request_id": 7,
        "session_id": session_id,
        "symbol": "BTC/USDT",
        "trade_id": trade_id,
        "tree_size": None,
        "proof_timestamp": proof.timestamp,
        "proof_signature": proof.signature,
    }
    return p.DiscloseTrade(**(values | fields))


async def test_owner_discloses_one_trade_provably_in_a_signed_report(
    polled: tuple[EnclaveService, FakePolling], simulator: NsmSimulator, clock: Clock
) -> None:
    """The owner gets one trade + salt + proof sealed to them; it verifies against the report."""
    service, polling = polled
    owner = Ed25519PrivateKey.generate()
    enc, sig = await attested_keys(service, simulator, clock)
    session_id = await open_session(service, enc, owner=owner)
    trades = [FakeTrade("BTC/USDT", str(i), price=f"{100 + i}.5") for i in range(1, 6)]
    polling.trade_list.extend(trades[:3])
    report = await call(service, p.Aggregates(request_id=2, session_id=session_id))
    assert isinstance(report, p.AggregatesReply)
    verify_payload(sig, report.payload, report.signature)
    assert report.payload["merkle_tree_size"] == 3
    polling.trade_list.extend(trades[3:])  # the tree grows after the report
    reply = await call(service, disclose(session_id, owner, tree_size=3))
    assert isinstance(reply, p.DiscloseTradeReply), reply
    assert "101.5" not in json.dumps(reply.envelope)  # sealed: the parent sees no trade value
    disclosure = open_disclosure(reply.envelope, owner)
    trade = verify_disclosure(disclosure, report_payload=report.payload)
    assert trade.fields == leaf_fields(trades[1]) and (trade.index, trade.tree_size) == (1, 3)
    # Tampering with anything breaks it.
    for mutate in (
        lambda d: d["fields"].__setitem__("price", "999"),
        lambda d: d.__setitem__("salt", b64encode(bytes(32))),
        lambda d: d["inclusion_proof"]["path"].__setitem__(0, "00" * 32),
        lambda d: d["inclusion_proof"].__setitem__("index", 0),
        lambda d: d.__setitem__("session_hash", "00" * 32),
    ):
        forged = copy.deepcopy(disclosure)
        mutate(forged)
        with pytest.raises(DisclosureError):
            verify_disclosure(forged, report_payload=report.payload)
    with pytest.raises(DisclosureError, match="tree size"):
        verify_disclosure(disclosure, report_payload=report.payload | {"merkle_tree_size": 5})
    with pytest.raises(DisclosureError, match="does not open"):
        open_disclosure(reply.envelope, Ed25519PrivateKey.generate())
    # The disclosure itself is logged (index and tree size only).
    entries = (await logs(service, session_id)).entries
    assert json.loads(entries[-1])["op"] == "disclose"
    assert json.loads(entries[-1])["data"] == {"index": 1, "tree_size": 3}


async def test_disclosure_is_owner_only_and_validated(
    polled: tuple[EnclaveService, FakePolling], simulator: NsmSimulator, clock: Clock
) -> None:
    """No owner, a wrong owner key, an unknown trade or a bad tree size: refused."""
    service, polling = polled
    owner = Ed25519PrivateKey.generate()
    enc, _ = await attested_keys(service, simulator, clock)
    owned = await open_session(service, enc, owner=owner)
    ownerless = await open_session(
        service, enc, metadata={"exchange": "binance", "label": "other", "ttl": 3600}
    )
    polling.trade_list.extend([FakeTrade("BTC/USDT", "1"), FakeTrade("BTC/USDT", "2")])
    cases = [
        (disclose(ownerless, None), p.ErrorCode.FORBIDDEN),
        (disclose(owned, Ed25519PrivateKey.generate()), p.ErrorCode.FORBIDDEN),
        (disclose(owned, owner, trade_id="404"), p.ErrorCode.NOT_FOUND),
        (disclose(owned, owner, tree_size=1), p.ErrorCode.BAD_REQUEST),  # trade 2 is leaf 1
        (disclose(owned, owner, tree_size=3), p.ErrorCode.BAD_REQUEST),
        (disclose(owned, owner, symbol=""), p.ErrorCode.BAD_REQUEST),
    ]
    for request, code in cases:
        reply = await call(service, request)
        assert isinstance(reply, p.ErrorReply) and reply.code is code, (request, reply)
    assert isinstance(await call(service, disclose(owned, owner)), p.DiscloseTradeReply)


# --------------------------------------------------------------------------- shared.translog


def signed_log(n: int, key: Ed25519PrivateKey, digest: bytes) -> dict[str, Any]:
    from shared.signing import sign_payload

    log = OpsLog(digest)
    for i in range(n):
        log.append("report", at=1_700_000_000 + i, data={"seq": i + 1, "report_hash": "ab"})
    head = log.tree_head(now=1_700_000_100)
    return http_body(log.since(0, n), head, sign_payload(key, head))


def test_verify_log_rejects_every_malformed_part() -> None:
    """Wrong key, foreign log, holes, bad entries, wrong proofs: each named in the reason."""
    key, digest = Ed25519PrivateKey.generate(), bytes(range(32))
    public = key.public_key().public_bytes_raw()
    body = signed_log(5, key, digest)
    assert verify_log(body, signing_public=public, session_hash=digest).head.size == 5

    def fails(mutate: Any, reason: str, **kwargs: Any) -> None:
        forged = copy.deepcopy(body)
        mutate(forged)
        with pytest.raises(TransparencyLogError, match=reason):
            verify_log(forged, **({"signing_public": public, "session_hash": digest} | kwargs))

    fails(lambda b: None, "signature", signing_public=bytes(32))
    fails(lambda b: b["entries"].pop(2), "consecutive")
    fails(lambda b: b["entries"].pop(0), "not complete", require_complete=True)
    fails(lambda b: b["entries"][1]["entry"].__setitem__("index", 3), "another position")
    fails(lambda b: b["entries"][1]["entry"].__setitem__("op", "launch"), "unknown operation")
    fails(lambda b: b["entries"][1]["entry"]["data"].__setitem__("x", 1.5), "malformed data")
    fails(lambda b: b["entries"][1]["entry"].__setitem__("at", "yesterday"), "malformed time")
    fails(lambda b: b["entries"][1]["inclusion_proof"].__setitem__("size", 4), "not for the")
    fails(lambda b: b.__setitem__("tree_head", {"payload": {}}), "payload, signature")
    fails(lambda b: b.__setitem__("entries", "x"), "must be a list")
    with pytest.raises(TransparencyLogError, match="another log"):
        verify_log(body, signing_public=public, session_hash=bytes(32))


def test_trusted_head_detects_a_shrunk_or_rewritten_log() -> None:
    """A head seen before must be extended: a smaller log or a missing proof fails."""
    key, digest = Ed25519PrivateKey.generate(), bytes(range(32))
    public = key.public_key().public_bytes_raw()
    small, big = signed_log(3, key, digest), signed_log(6, key, digest)
    small_head = verify_log(small, signing_public=public, session_hash=digest).head
    big_head = verify_log(big, signing_public=public, session_hash=digest).head
    with pytest.raises(TransparencyLogError, match="shrank"):
        verify_log(small, signing_public=public, session_hash=digest, trusted_head=big_head)
    with pytest.raises(TransparencyLogError, match="missing"):
        verify_log(big, signing_public=public, session_hash=digest, trusted_head=small_head)
    # Entries at the same positions with other contents: another history entirely.
    other = OpsLog(digest)
    for i in range(3):
        other.append("poll", at=1_700_000_000 + i, data={})
    forged = TreeHead(
        log_id=log_id_for(digest),
        size=3,
        root_hash=MerkleTree(other.since(0, 3)).root().hex(),
        timestamp=0,
    )
    tree = MerkleTree(
        encode_entry(i, "report", at=1_700_000_000 + i, data={"seq": i + 1, "report_hash": "ab"})
        for i in range(6)
    )
    path = [h.hex() for h in tree.consistency_proof(3, 6)]
    big["consistency_proof"] = {"old_size": 3, "new_size": 6, "path": path}
    assert verify_log(big, signing_public=public, session_hash=digest, trusted_head=small_head)
    with pytest.raises(TransparencyLogError, match="rewritten"):
        verify_log(big, signing_public=public, session_hash=digest, trusted_head=forged)


def test_entries_are_canonical_and_bounded() -> None:
    """encode_entry gives RFC 8785 bytes that parse back; huge or unknown entries are refused."""
    leaf = encode_entry(4, "poll", at=0, data={"b": 1, "a": None})
    assert (
        leaf == b'{"at":"1970-01-01T00:00:00Z","data":{"a":null,"b":1},"index":4,"op":"poll","v":1}'
    )
    entry, again = parse_entry(json.loads(leaf), index=4)
    assert again == leaf and entry["op"] == "poll"
    with pytest.raises(ValueError, match="unknown"):
        encode_entry(0, "delete", at=0, data={})
    with pytest.raises(ValueError, match="too large"):
        encode_entry(0, "poll", at=0, data={"x": "y" * 5000})
    with pytest.raises(TransparencyLogError):
        SignedTreeHead.from_json({"payload": [], "signature": "x"})
