"""Regenerate the simulator attestation vectors in this directory, byte for byte.

    .venv/bin/python tests/vectors/attestation/generate.py [OUT_DIR]

Everything is deterministic: P-384 keys come from a counter-based KDF, the clock is
fixed, certificates and COSE signatures use RFC 6979 ECDSA, serials derive from keys.
``valid.cbor`` is produced by ``enclave.nsm_simulator.NsmSimulator`` through the full
NSM CBOR interface; every other document is a copy with exactly one defect, re-signed
by this script's own minimal COSE_Sign1 signer (independent of shared.attestation).
``manifest.json`` says how to verify each file and which ``Reason`` must come out.
The real AWS documents in ``aws/`` are static copies and are not touched here.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from enclave.nsm import NsmClient
from enclave.nsm_simulator import NsmSimulator, issue_intermediate, issue_leaf
from shared.attestation import EnclaveKeys, encode_user_data, pcrs_to_json

HERE = Path(__file__).resolve().parent
T0 = datetime(2025, 1, 15, 12, 0, 0, tzinfo=UTC)
MODULE_ID = "i-0simvector00001-enc0123456789abcdef"
NONCE = bytes.fromhex("6e6f6e63652d666f722d746865736520766563746f72732d3031323334353637")
OTHER_NONCE = bytes(32)
P384_ORDER = int(
    "ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf"
    "581a0db248b0a77aecec196accc52973",
    16,
)
PROTECTED_ES384 = bytes.fromhex("a1013822")  # {1: -35}


def _pcr(label: str) -> bytes:
    return hashlib.sha384(bytes(48) + hashlib.sha384(label.encode()).digest()).digest()


BOOT_PCRS = {index: bytes(48) for index in range(16)}
BOOT_PCRS.update({0: _pcr("vector image"), 1: _pcr("vector kernel"), 2: _pcr("vector app")})
BOOT_PCRS[8] = _pcr("vector signing certificate")
EXPECTED_PCRS = {index: BOOT_PCRS[index] for index in (0, 1, 2, 8)}
KEYS = EnclaveKeys(
    x25519_public=bytes(range(32)),
    ed25519_public=bytes(range(32, 64)),
    pq_public_sha256=hashlib.sha256(b"vector pq public key").digest(),
)


class DeterministicKeys:
    """A key factory handing out P-384 keys derived from (label, counter); remembers them."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.issued: list[ec.EllipticCurvePrivateKey] = []

    def __call__(self) -> ec.EllipticCurvePrivateKey:
        seed = hashlib.sha512(f"{self.label}/{len(self.issued)}".encode()).digest()
        scalar = int.from_bytes(seed, "big") % (P384_ORDER - 1) + 1
        key = ec.derive_private_key(scalar, ec.SECP384R1())
        self.issued.append(key)
        return key

    def owner_of(self, cert_der: bytes) -> ec.EllipticCurvePrivateKey:
        """The issued private key whose public key is in ``cert_der``."""
        public = x509.load_der_x509_certificate(cert_der).public_key()
        for key in self.issued:
            if key.public_key() == public:
                return key
        raise LookupError("certificate key was not issued by this factory")


def cose_sign1(
    payload: bytes, key: ec.EllipticCurvePrivateKey, protected: bytes = PROTECTED_ES384
) -> bytes:
    """Untagged COSE_Sign1 (RFC 9052 §4.2/§4.4) with a raw r||s ECDSA-SHA384 signature."""
    to_be_signed = cbor2.dumps(["Signature1", protected, b"", payload])
    r, s = decode_dss_signature(
        key.sign(to_be_signed, ec.ECDSA(hashes.SHA384(), deterministic_signing=True))
    )
    size = (key.curve.key_size + 7) // 8
    return cbor2.dumps([protected, {}, payload, r.to_bytes(size, "big") + s.to_bytes(size, "big")])


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _custom_leaf(
    issuer_key: ec.EllipticCurvePrivateKey,
    issuer_der: bytes,
    key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    serial: int,
) -> x509.Certificate:
    issuer = x509.load_der_x509_certificate(issuer_der)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name.from_rfc4514_string(f"CN={MODULE_ID}.bad.sim.nitro-enclaves"))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(T0 - timedelta(minutes=1))
        .not_valid_after(T0 + timedelta(hours=3))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        .sign(issuer_key, hashes.SHA384(), ecdsa_deterministic=True)
    )


def generate(out_dir: Path) -> None:
    """Write every vector file and manifest.json into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    keys = DeterministicKeys("perf-aggregator/attestation-vectors/main")
    other_keys = DeterministicKeys("perf-aggregator/attestation-vectors/other-root")
    with tempfile.TemporaryDirectory() as scratch:
        simulator = NsmSimulator(
            Path(scratch) / "state",
            BOOT_PCRS,
            clock=lambda: T0,
            module_id=MODULE_ID,
            key_factory=keys,
        )
        client = NsmClient(simulator)
        client.extend_pcr(16, b"application-defined measurement")  # like the AWS pcr16 doc
        valid = client.attestation(user_data=encode_user_data(KEYS), nonce=NONCE)
        root_pem = simulator.root_pem_path.read_bytes()
        other = NsmSimulator(
            Path(scratch) / "other",
            BOOT_PCRS,
            clock=lambda: T0,
            module_id=MODULE_ID,
            key_factory=other_keys,
        )
        unknown_root = NsmClient(other).attestation(user_data=encode_user_data(KEYS), nonce=NONCE)

    outer = cbor2.loads(valid)
    base: dict[str, object] = cbor2.loads(outer[2])
    leaf_der, cabundle = base["certificate"], base["cabundle"]
    assert isinstance(leaf_der, bytes)
    assert isinstance(cabundle, list)
    leaf_key = keys.owner_of(leaf_der)
    intermediate_der = cabundle[-1]
    intermediate_key = keys.owner_of(intermediate_der)
    intermediate = x509.load_der_x509_certificate(intermediate_der)

    files: dict[str, bytes] = {"valid.cbor": valid, "unknown-root.cbor": unknown_root}

    def resign(
        name: str,
        change: Callable[[dict[str, object]], None],
        *,
        key: ec.EllipticCurvePrivateKey = leaf_key,
        protected: bytes = PROTECTED_ES384,
    ) -> None:
        payload = dict(base)
        change(payload)
        files[name] = cose_sign1(cbor2.dumps(payload), key, protected)

    def set_field(field: str, value: object) -> Callable[[dict[str, object]], None]:
        def change(payload: dict[str, object]) -> None:
            payload[field] = value

        return change

    def drop_field(field: str) -> Callable[[dict[str, object]], None]:
        def change(payload: dict[str, object]) -> None:
            del payload[field]

        return change

    def with_pcrs(**updates: bytes | None) -> Callable[[dict[str, object]], None]:
        def change(payload: dict[str, object]) -> None:
            pcrs = dict(payload["pcrs"])  # type: ignore[call-overload]
            for label, value in updates.items():
                index = int(label.removeprefix("pcr"))
                if value is None:
                    pcrs.pop(index)
                else:
                    pcrs[index] = value
            payload["pcrs"] = pcrs

        return change

    def with_leaf(cert: x509.Certificate) -> Callable[[dict[str, object]], None]:
        return set_field("certificate", _der(cert))

    resign("future.cbor", set_field("timestamp", base["timestamp"] + 120_000))  # type: ignore[operator]
    resign("no-nonce.cbor", set_field("nonce", None))
    resign("pcr0-mismatch.cbor", with_pcrs(pcr0=_pcr("tampered image")))
    resign("pcr8-absent.cbor", with_pcrs(pcr8=None))
    resign("debug-mode.cbor", with_pcrs(pcr0=bytes(48), pcr1=bytes(48), pcr2=bytes(48)))
    resign("oversized-user-data.cbor", set_field("user_data", bytes(513)))
    resign("oversized-nonce.cbor", set_field("nonce", bytes(513)))
    resign("missing-digest.cbor", drop_field("digest"))
    resign("missing-certificate.cbor", drop_field("certificate"))
    resign("null-module-id.cbor", set_field("module_id", None))
    resign("empty-cabundle.cbor", set_field("cabundle", []))
    resign("digest-sha256.cbor", set_field("digest", "SHA256"))
    resign("pcr-wrong-size.cbor", with_pcrs(pcr3=bytes(20)))
    resign("unknown-field.cbor", set_field("extra", b"unsigned intent"))
    resign("timestamp-zero.cbor", set_field("timestamp", 0))
    resign("user-data-not-keys.cbor", set_field("user_data", cbor2.dumps({"v": 2})))
    resign("no-user-data.cbor", set_field("user_data", None))
    resign("alg-es256.cbor", lambda _: None, protected=cbor2.dumps({1: -7}))
    resign("protected-with-kid.cbor", lambda _: None, protected=cbor2.dumps({1: -35, 4: b"k"}))

    expired_key, future_key, ca_leaf_key, wrong_issuer_key, path_key, path_leaf_key = (
        keys() for _ in range(6)
    )
    expired = issue_leaf(
        intermediate_key,
        intermediate,
        expired_key,
        module_id=MODULE_ID,
        not_before=T0 - timedelta(hours=4),
    )
    resign("expired-cert.cbor", with_leaf(expired), key=expired_key)
    not_yet = issue_leaf(
        intermediate_key,
        intermediate,
        future_key,
        module_id=MODULE_ID,
        not_before=T0 + timedelta(hours=1),
    )
    resign("not-yet-valid-cert.cbor", with_leaf(not_yet), key=future_key)
    ca_leaf = _custom_leaf(intermediate_key, intermediate_der, ca_leaf_key, ca=True, serial=7)
    resign("leaf-is-ca.cbor", with_leaf(ca_leaf), key=ca_leaf_key)
    # Same issuer name as the intermediate, signed by a key that is not its key.
    forged = _custom_leaf(wrong_issuer_key, intermediate_der, wrong_issuer_key, ca=False, serial=8)
    resign("wrong-issuer.cbor", with_leaf(forged), key=wrong_issuer_key)
    p256_key = ec.derive_private_key(0x5EC9256, ec.SECP256R1())
    p256_leaf = _custom_leaf(intermediate_key, intermediate_der, p256_key, ca=False, serial=9)
    resign("leaf-p256.cbor", with_leaf(p256_leaf), key=leaf_key)
    # The intermediate has pathLenConstraint 0; put a second CA under it.
    second_ca = issue_intermediate(intermediate_key, intermediate, path_key, now=T0)
    path_leaf = issue_leaf(path_key, second_ca, path_leaf_key, module_id=MODULE_ID, not_before=T0)

    def longer_path(payload: dict[str, object]) -> None:
        payload["cabundle"] = [*cabundle, _der(second_ca)]
        payload["certificate"] = _der(path_leaf)

    resign("path-length.cbor", longer_path, key=path_leaf_key)

    # Byte-level defects of the valid document (no re-signing).
    signature_flipped = bytearray(valid)
    signature_flipped[-1] ^= 0x01
    files["bad-signature.cbor"] = bytes(signature_flipped)
    payload_flipped = bytearray(valid)
    position = valid.index(MODULE_ID.encode()) + 6  # inside "vector": stays ASCII
    payload_flipped[position] ^= 0x01
    files["flipped-payload-bit.cbor"] = bytes(payload_flipped)
    files["tagged.cbor"] = cbor2.dumps(cbor2.CBORTag(18, outer))
    files["truncated.cbor"] = valid[:-1]
    files["trailing-byte.cbor"] = valid + b"\x00"
    files["unprotected-kid.cbor"] = cbor2.dumps([outer[0], {4: b"kid"}, outer[2], outer[3]])

    for name, data in files.items():
        (out_dir / name).write_bytes(data)
    (out_dir / "sim-root.pem").write_bytes(root_pem)
    timestamp = base["timestamp"]
    assert isinstance(timestamp, int)
    manifest = _manifest(timestamp)
    cases = manifest["cases"]
    assert isinstance(cases, list)
    missing = {case["file"] for case in cases} - set(files)
    assert not missing, missing
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def _case(
    name: str,
    reason: str | None,
    *,
    file: str | None = None,
    at: datetime = T0,
    nonce: bytes | None = NONCE,
    root: str = "sim",
    allow_debug: bool = False,
    require_keys: bool = True,
    expected_pcrs: dict[int, bytes] | None = None,
) -> dict[str, object]:
    case: dict[str, object] = {
        "name": name,
        "file": file or f"{name}.cbor",
        "verify_at": at.isoformat(timespec="milliseconds"),
        "nonce": None if nonce is None else nonce.hex(),
        "root": root,
        "allow_debug": allow_debug,
        "require_keys": require_keys,
        "reason": reason,
    }
    if expected_pcrs is not None:
        case["expected_pcrs"] = pcrs_to_json(expected_pcrs)
    return case


def _manifest(timestamp_ms: int) -> dict[str, object]:
    issued = datetime.fromtimestamp(timestamp_ms / 1000, UTC)
    assert issued == T0
    cases = [
        _case("valid", None),
        _case("valid-nonce-unchecked", None, file="valid.cbor", nonce=None),
        _case("valid-near-max-age", None, file="valid.cbor", at=T0 + timedelta(seconds=300)),
        _case("wrong-nonce", "nonce", file="valid.cbor", nonce=OTHER_NONCE),
        _case("no-nonce", "nonce"),
        _case("stale", "stale", file="valid.cbor", at=T0 + timedelta(seconds=301)),
        _case("future", "future"),
        _case("pcr0-mismatch", "pcr-mismatch"),
        _case("pcr8-absent", "pcr-mismatch"),
        _case("debug-mode", "debug-mode"),
        _case(
            "debug-mode-allowed",
            None,
            file="debug-mode.cbor",
            allow_debug=True,
            expected_pcrs={0: bytes(48), 8: EXPECTED_PCRS[8]},
        ),
        _case("unknown-root", "root"),
        _case("aws-root-pinned", "root", file="valid.cbor", root="aws"),
        _case("expired-cert", "cert-expired"),
        _case("not-yet-valid-cert", "cert-not-yet-valid"),
        _case("leaf-is-ca", "chain"),
        _case("wrong-issuer", "chain"),
        _case("leaf-p256", "chain"),
        _case("path-length", "chain"),
        _case("bad-signature", "signature"),
        _case("flipped-payload-bit", "signature"),
        _case("oversized-user-data", "structure"),
        _case("oversized-nonce", "structure"),
        _case("missing-digest", "structure"),
        _case("missing-certificate", "structure"),
        _case("null-module-id", "structure"),
        _case("empty-cabundle", "structure"),
        _case("digest-sha256", "structure"),
        _case("pcr-wrong-size", "structure"),
        _case("unknown-field", "structure"),
        _case("timestamp-zero", "structure"),
        _case("tagged", "structure"),
        _case("truncated", "structure"),
        _case("trailing-byte", "structure"),
        _case("unprotected-kid", "structure"),
        _case("alg-es256", "algorithm"),
        _case("protected-with-kid", "algorithm"),
        _case("user-data-not-keys", "user-data"),
        _case("no-user-data", "user-data"),
        _case("no-user-data-keys-optional", None, file="no-user-data.cbor", require_keys=False),
    ]
    return {
        "description": (
            "Simulator attestation documents (valid.cbor) and single-defect copies. "
            "Verify each file with AttestationVerifier(expected_pcrs, root_der=<root>, "
            "allow_debug, require_keys, max_age_seconds=300, max_clock_skew_seconds=60) "
            ".verify(file, nonce=<nonce>, now=<verify_at>); reason null means it verifies, "
            "otherwise AttestationError.reason must equal it. root 'sim' is sim-root.pem, "
            "'aws' the built-in AWS Nitro root G1. Regenerate with generate.py."
        ),
        "root": "sim-root.pem",
        "expected_pcrs": pcrs_to_json(EXPECTED_PCRS),
        "user_data_keys": {
            "x25519_public": KEYS.x25519_public.hex(),
            "ed25519_public": KEYS.ed25519_public.hex(),
            "pq_public_sha256": (KEYS.pq_public_sha256 or b"").hex(),
        },
        "cases": cases,
    }


def main(argv: list[str]) -> int:
    """Generate into argv[1] (default: this directory)."""
    out_dir = Path(argv[1]) if len(argv) > 1 else HERE
    generate(out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
