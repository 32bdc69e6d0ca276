"""Portable proof bundles: one JSON file anyone checks offline. Side: client.

What a trader hands to a fund or a leaderboard (``perf-agg export``), and what they
check (``perf-agg verify bundle.json --pcrs pcrs.json``). Nothing in a bundle is
trusted because it is in the bundle: every key is taken from the attestation document
after it verified against the pinned root and the verifier's own expected PCRs.

Format (``format`` = ``perf-aggregator/proof-bundle``, ``v`` = 1)::

    {
      "format": "perf-aggregator/proof-bundle", "v": 1, "created_at": RFC 3339,
      "attestation": {"document": base64 COSE_Sign1, "nonce": hex},
      "pcrs_source": {"description": text, "pcrs": {"0": hex, ...}},   informational only
      "reports": [{"payload": {...}, "signature": base64}, ...],       seq order, last = the claim
      "disclosures": [{trade disclosure, shared.disclosure}, ...],     optional
      "log": {"tree_head": {...}, "entries": [...]}                    optional, the whole log
    }

Checks, in order (each a named :class:`Check`; the first failure is the verdict's
reason): bundle shape; attestation (chain to the pinned root at ``at``, signature,
expected PCRs, debug mode, nonce echo, key map); each report's signature with the
attested Ed25519 key and its ``pcr0``; the report chain (one session, consecutive
``seq``, each ``prev_report_hash`` = hash of the previous payload, and a chain starting
at seq 1 or said to be partial); each disclosure against the report whose tree size it
names; the transparency log (signature, inclusion of every entry, complete, and every
report's hash present at its seq).

``at`` defaults to the attestation document's own timestamp: a bundle proves what the
enclave signed, and AWS leaf certificates live for hours, not as long as a track record.
"""

from __future__ import annotations

import hmac
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, NoReturn

from shared.attestation import AttestationVerifier, decode_document, pcrs_to_json
from shared.disclosure import DisclosureError, verify_disclosure
from shared.encoding import b64decode, b64encode
from shared.errors import AttestationError, PerfAggError, SignatureError
from shared.signing import report_hash, verify_payload
from shared.translog import TransparencyLogError, verify_log

__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_VERSION",
    "MAX_BUNDLE_BYTES",
    "BundleError",
    "Check",
    "Verdict",
    "build_bundle",
    "verify_bundle",
]

BUNDLE_FORMAT: Final = "perf-aggregator/proof-bundle"
BUNDLE_VERSION: Final = 1
MAX_BUNDLE_BYTES: Final = 64 * 1024 * 1024  # the CLI refuses to read more
_KEYS: Final = frozenset(
    {"format", "v", "created_at", "attestation", "pcrs_source", "reports", "disclosures", "log"}
)
_OPTIONAL: Final = frozenset({"disclosures", "log", "pcrs_source"})
# A bundle's attestation is as old as the bundle; freshness is not what it proves.
_BUNDLE_MAX_AGE_S: Final = 100 * 365 * 86_400
# A genuine bundle nests about eight levels (bundle, log, entries, entry, data, ...).
# Deeper input is refused up front, so that no check below recurses without bound.
_MAX_DEPTH: Final = 64


class BundleError(PerfAggError):
    """A bundle could not be built from what was given."""


@dataclass(frozen=True, slots=True)
class Check:
    """One named check and its outcome; ``detail`` says why it failed (or what it saw)."""

    name: str
    ok: bool
    detail: str = ""


@dataclass(slots=True)
class Verdict:
    """The outcome of :func:`verify_bundle`: ok only if every check passed."""

    checks: list[Check] = field(default_factory=list)
    report: dict[str, Any] | None = None  # the last (claimed) report's payload, once verified

    @property
    def ok(self) -> bool:
        """True when there is at least one check and none failed."""
        return bool(self.checks) and all(check.ok for check in self.checks)

    @property
    def reason(self) -> str | None:
        """The first failed check as ``name: detail``, or None."""
        for check in self.checks:
            if not check.ok:
                return f"{check.name}: {check.detail}"
        return None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready verdict (``perf-agg verify --json``)."""
        return {
            "ok": self.ok,
            "reason": self.reason,
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks],
        }


def _rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_bundle(
    *,
    document: bytes,
    nonce: bytes,
    reports: Sequence[Mapping[str, Any]],
    pcrs: Mapping[int, bytes],
    pcrs_description: str,
    disclosures: Sequence[Mapping[str, Any]] = (),
    log: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Assemble a bundle (nothing is verified here: run :func:`verify_bundle` on it).

    ``reports`` are ``{"payload", "signature"}`` objects in seq order; ``log`` is a
    ``GET /api/logs`` body (its tree head and entries are kept).
    """
    if not reports:
        raise BundleError("a bundle needs at least one signed report")
    for report in reports:
        if set(report) != {"payload", "signature"}:
            raise BundleError("each report must be {payload, signature}")
    bundle: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "v": BUNDLE_VERSION,
        "created_at": _rfc3339(now or datetime.now(UTC)),
        "attestation": {"document": b64encode(document), "nonce": nonce.hex()},
        "pcrs_source": {"description": pcrs_description, "pcrs": pcrs_to_json(pcrs)},
        "reports": [dict(r) for r in reports],
    }
    if disclosures:
        bundle["disclosures"] = [dict(d) for d in disclosures]
    if log is not None:
        bundle["log"] = {"tree_head": log["tree_head"], "entries": log["entries"]}
    return bundle


class _Failed(Exception):
    """Internal: stops verification at the first failed check."""


class _Checks:
    """Records checks into a verdict; a failure stops the run."""

    def __init__(self, verdict: Verdict) -> None:
        self.verdict = verdict

    def check(self, name: str, ok: bool, detail: str = "") -> None:
        self.verdict.checks.append(Check(name, ok, detail))
        if not ok:
            raise _Failed

    def fail(self, name: str, detail: str) -> NoReturn:
        self.verdict.checks.append(Check(name, False, detail))
        raise _Failed


def verify_bundle(
    bundle: object,
    *,
    expected_pcrs: Mapping[int, bytes],
    root_der: bytes | None = None,
    at: datetime | None = None,
    allow_debug: bool = False,
) -> Verdict:
    """Check everything in ``bundle`` offline; never raises on bad content.

    ``expected_pcrs`` come from the verifier (a measurements file they trust), never
    from the bundle; ``root_der`` None pins the AWS Nitro root G1.
    """
    verdict = Verdict()
    checks = _Checks(verdict)
    try:
        if not _depth_within(bundle, _MAX_DEPTH):
            checks.fail("format", "the bundle is nested too deeply")
        _verify(bundle, verdict, checks, expected_pcrs, root_der, at, allow_debug)
    except _Failed:
        verdict.report = None
    return verdict


def _depth_within(value: object, limit: int) -> bool:
    """True when ``value`` nests at most ``limit`` containers deep (explicit stack)."""
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, Mapping | list | tuple):
            if depth >= limit:
                return False
            items = node.values() if isinstance(node, Mapping) else node
            stack.extend((item, depth + 1) for item in items)
    return True


def _shown(value: object) -> str:
    """An untrusted number for a verdict detail: itself if an integer, else "?"."""
    return str(value) if type(value) is int else "?"


def _verify(
    bundle: object,
    verdict: Verdict,
    checks: _Checks,
    expected_pcrs: Mapping[int, bytes],
    root_der: bytes | None,
    at: datetime | None,
    allow_debug: bool,
) -> None:
    # -- shape
    shape_ok = (
        isinstance(bundle, Mapping)
        and bundle.get("format") == BUNDLE_FORMAT
        and type(bundle.get("v")) is int
        and bundle.get("v") == BUNDLE_VERSION
        and set(bundle) <= _KEYS
        and set(bundle) >= _KEYS - _OPTIONAL
    )
    checks.check("format", shape_ok, "" if shape_ok else f"not a {BUNDLE_FORMAT} v1 object")
    assert isinstance(bundle, Mapping)
    reports = bundle["reports"]
    attestation = bundle["attestation"]
    well_formed = (
        isinstance(reports, list)
        and bool(reports)
        and all(isinstance(r, Mapping) and set(r) == {"payload", "signature"} for r in reports)
        and isinstance(attestation, Mapping)
        and set(attestation) == {"document", "nonce"}
    )
    checks.check(
        "format",
        well_formed,
        ""
        if well_formed
        else "reports must be a non-empty list of {payload, signature}; "
        "attestation {document, nonce}",
    )

    # -- attestation: keys come only from here
    try:
        document = b64decode(attestation["document"], max_len=16384)
        nonce = bytes.fromhex(attestation["nonce"])
        unverified, _ = decode_document(document)
    except (TypeError, ValueError, AttestationError):
        checks.fail("attestation", "the attestation document is not decodable")
    try:
        # The timestamp is not authenticated yet: up to 2**64 - 1 ms, past datetime's range.
        when = at or datetime.fromtimestamp(unverified.timestamp / 1000, UTC)
    except (OverflowError, ValueError, OSError):
        checks.fail("attestation", "the attestation timestamp is not a date")
    try:
        verifier = AttestationVerifier(
            expected_pcrs=expected_pcrs,
            root_der=root_der,
            allow_debug=allow_debug,
            max_age_seconds=_BUNDLE_MAX_AGE_S,
        )
        verified = verifier.verify(document, nonce=nonce, now=when)
    except AttestationError as exc:
        checks.fail("attestation", f"rejected ({exc.reason}) at {_rfc3339(when)}")
    except ValueError as exc:
        checks.fail("attestation", str(exc))
    keys = verified.keys
    assert keys is not None
    if 0 not in verified.pcrs:
        # Only possible when the verifier's own expected PCRs leave PCR0 out.
        checks.fail("attestation", "the document has no PCR0 for the reports to name")
    pcr0 = verified.pcrs[0].hex()
    checks.check(
        "attestation",
        True,
        f"chain, signature and PCRs {sorted(expected_pcrs)} verified at {_rfc3339(when)}",
    )

    # -- reports: signature, measurement, one session, chain
    payloads: list[Mapping[str, Any]] = []
    for report in reports:
        payload, signature = report["payload"], report["signature"]
        try:
            if not isinstance(payload, Mapping) or not isinstance(signature, str):
                raise SignatureError("malformed")
            verify_payload(keys.ed25519_public, payload, signature)
        except (SignatureError, TypeError, ValueError):
            checks.fail("signature", f"report {len(payloads) + 1} does not verify")
        checks.check(
            "signature",
            payload.get("pcr0") == pcr0,
            f"report {len(payloads) + 1} names another enclave measurement",
        )
        payloads.append(payload)
    checks.check("signature", True, f"{len(payloads)} report(s) signed by the attested key")
    # Signed values are well formed, not necessarily sensible: compared, never hashed
    # (a list is unhashable) and never written into a detail unless integers.
    session = payloads[0].get("session_hash")
    checks.check(
        "chain",
        isinstance(session, str) and all(p.get("session_hash") == session for p in payloads),
        "reports of different sessions",
    )
    for previous, current in itertools.pairwise(payloads):
        if current.get("seq") != _seq(previous) + 1:
            checks.fail(
                "chain",
                f"seq {_shown(current.get('seq'))} does not follow {_shown(previous.get('seq'))}",
            )
        expected = report_hash(previous)
        got = current.get("prev_report_hash")
        # compare_digest refuses non-ASCII text with TypeError; a hash is ASCII hex.
        if not isinstance(got, str) or not got.isascii() or not hmac.compare_digest(got, expected):
            checks.fail(
                "chain",
                f"report seq {_shown(current.get('seq'))} does not link to seq "
                f"{_shown(previous.get('seq'))}",
            )
    first = payloads[0]
    starts = _seq(first) == 1 and first.get("prev_report_hash") is None
    checks.check(
        "chain",
        True,
        "complete from seq 1"
        if starts
        else f"partial: starts at seq {_shown(first.get('seq'))} (earlier reports not included)",
    )

    # -- disclosures against the report with the tree they name
    claimed = payloads[-1]
    disclosures = bundle.get("disclosures", [])
    if not isinstance(disclosures, list):
        checks.fail("disclosures", "disclosures must be a list")
    by_size = {p["merkle_tree_size"]: p for p in payloads if type(p.get("merkle_tree_size")) is int}
    for number, disclosure in enumerate(disclosures, 1):
        proof = disclosure.get("inclusion_proof") if isinstance(disclosure, Mapping) else None
        size = proof.get("size") if isinstance(proof, Mapping) else None
        # Only an integer size can name a report (and a list would not even hash).
        target = by_size.get(size) if type(size) is int else None
        if target is None:
            checks.fail(
                "disclosures", f"disclosure {number}: no report with tree size {_shown(size)}"
            )
        try:
            verify_disclosure(disclosure, report_payload=target)
        except DisclosureError as exc:
            checks.fail("disclosures", f"disclosure {number}: {exc.reason}")
    if disclosures:
        checks.check("disclosures", True, f"{len(disclosures)} trade(s) proven in a signed root")

    # -- transparency log
    log = bundle.get("log")
    if log is not None:
        try:
            session_hash = bytes.fromhex(str(claimed.get("session_hash")))
            verified_log = verify_log(
                {**log, "consistency_proof": None} if isinstance(log, Mapping) else log,
                signing_public=keys.ed25519_public,
                session_hash=session_hash,
                require_complete=True,
            )
            logged = verified_log.reports()
        except (TransparencyLogError, ValueError) as exc:
            reason = exc.reason if isinstance(exc, TransparencyLogError) else str(exc)
            checks.fail("log", reason)
        for payload in payloads:
            if logged.get(_seq(payload)) != report_hash(payload):
                checks.fail("log", f"report seq {_shown(payload.get('seq'))} is not in the log")
            # The log holds every report's hash: the first report shown links to the one
            # before it even when that one is not in the bundle.
            if _seq(payload) > 1 and logged.get(_seq(payload) - 1) != payload.get(
                "prev_report_hash"
            ):
                checks.fail(
                    "chain", f"report seq {_shown(payload.get('seq'))} does not link to the log"
                )
        checks.check(
            "log",
            True,
            f"{verified_log.head.size} entries, {len(logged)} report(s) logged; "
            f"the claim is seq {_seq(claimed)}",
        )
    verdict.report = dict(claimed)


def _seq(payload: Mapping[str, Any]) -> int:
    seq = payload.get("seq")
    return seq if type(seq) is int else -1
