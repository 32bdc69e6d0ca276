"""KMS port: the CMS reader against independent encoders (the KMS simulator's BER/DER
writer, OpenSSL, a real KMS answer), the recipient key, the boto3 adapter end to end
against the KMS simulator over HTTPS (with real NSM-simulator attestation documents),
and the adapter's error mapping with botocore's Stubber.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import socket
import socketserver
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import botocore.exceptions
import botocore.session
import pytest
from botocore.stub import Stubber
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

import enclave.cms as cms
import enclave.kms as kms
from enclave.cms import MAX_CMS_SIZE, CmsError, open_enveloped_data, parse_enveloped_data
from enclave.kms import (
    AwsCredentials,
    Boto3Kms,
    GeneratedKey,
    KmsError,
    KmsPort,
    KmsReason,
    RecipientKey,
)
from enclave.measurement import simulated_pcrs
from enclave.nsm import NsmClient
from enclave.nsm_simulator import NsmSimulator
from tests.fakes.exchanges.common import FakeTls, create_fake_tls
from tests.fakes.kms import KeyPolicy, KmsSimulator, TestCredentials, serve_in_thread
from tests.fakes.kms import cms_writer as writer
from tests.fakes.kms.cms_writer import Overrides, build_enveloped_data

VECTORS = Path(__file__).parent / "vectors" / "kms"
KMS_HOST = "kms.us-east-1.amazonaws.com"
REGION = "us-east-1"
DATA_KEY = bytes(range(32))


@pytest.fixture(scope="module")
def private_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def recipient(private_key: rsa.RSAPrivateKey) -> RecipientKey:
    return RecipientKey(private_key)


def _open(blob: bytes, key: rsa.RSAPrivateKey) -> bytes:
    return bytes(open_enveloped_data(blob, key))


# ------------------------------------------------------------------------ public API


def test_public_api_is_exactly_all() -> None:
    """enclave.kms and enclave.cms export exactly their documented names."""
    for module in (kms, cms):
        defined = {
            name
            for name, value in vars(module).items()
            if not name.startswith("_") and getattr(value, "__module__", None) == module.__name__
        }
        assert defined <= set(module.__all__), defined - set(module.__all__)
        assert all(hasattr(module, name) for name in module.__all__)


def test_the_boto3_adapter_satisfies_the_port() -> None:
    """Boto3Kms has the KmsPort methods with the same keyword-only signatures."""
    import inspect

    for name in ("generate_data_key", "decrypt"):
        port = inspect.signature(getattr(KmsPort, name))
        adapter = inspect.signature(getattr(Boto3Kms, name))
        assert list(port.parameters) == list(adapter.parameters)
        assert all(
            p.kind is inspect.Parameter.KEYWORD_ONLY
            for n, p in adapter.parameters.items()
            if n != "self"
        )


# ------------------------------------------------------------------------ CMS reader


def test_real_kms_answer_parses_to_the_reference_fields() -> None:
    """The KMS answer from aws-nitro-enclaves-sdk-c's cms_test.c (BER, indefinite
    lengths, segmented content) parses to the key, IV and ciphertext it lists."""
    blob = bytes.fromhex((VECTORS / "kms-answer.ber.hex").read_text().replace("\n", ""))
    expected = json.loads((VECTORS / "kms-answer.expected.json").read_text())
    parsed = parse_enveloped_data(blob)
    assert parsed.subject_key_id.hex() == expected["subject_key_id"]
    assert parsed.encrypted_key.hex() == expected["encrypted_key"]
    assert parsed.iv.hex() == expected["iv"]
    assert parsed.encrypted_content.hex() == expected["encrypted_content"]


@pytest.mark.parametrize("form", ["ber", "der"])
@pytest.mark.parametrize("size", [1, 15, 16, 17, 32, 1024, 4096])
def test_opens_what_kms_would_send(
    private_key: rsa.RSAPrivateKey, form: writer.Form, size: int
) -> None:
    """BER (indefinite lengths, segmented content) and DER answers both open to the plaintext."""
    plaintext = os.urandom(size)
    blob = build_enveloped_data(plaintext, private_key.public_key(), form=form)
    assert _open(blob, private_key) == plaintext


@pytest.mark.parametrize(
    "overrides",
    [
        Overrides(segment_size=1),
        Overrides(segment_size=16),
        Overrides(primitive_content=True),
        Overrides(sha256_null=False),  # OpenSSL omits the NULL parameters
    ],
    ids=["1-byte-segments", "block-segments", "primitive-content", "sha256-without-null"],
)
def test_opens_the_ber_variants_kms_and_openssl_write(
    private_key: rsa.RSAPrivateKey, overrides: Overrides
) -> None:
    """Segment sizes, primitive content and absent SHA-256 parameters are all accepted."""
    blob = build_enveloped_data(DATA_KEY, private_key.public_key(), overrides=overrides)
    assert _open(blob, private_key) == DATA_KEY


def _self_signed(key: rsa.RSAPrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kms recipient test")])
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )


@pytest.fixture(scope="module")
def openssl_files(
    tmp_path_factory: pytest.TempPathFactory, private_key: rsa.RSAPrivateKey
) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl command not installed")
    directory = tmp_path_factory.mktemp("openssl")
    cert, key = directory / "recipient.pem", directory / "recipient-key.pem"
    cert.write_bytes(_self_signed(private_key).public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key


@pytest.mark.parametrize("stream", [True, False], ids=["ber-stream", "der"])
def test_opens_openssl_cms_output(
    tmp_path: Path,
    private_key: rsa.RSAPrivateKey,
    openssl_files: tuple[Path, Path],
    stream: bool,
) -> None:
    """An independent encoder: `openssl cms -encrypt` with RSA-OAEP-SHA256, AES-256-CBC
    and a subjectKeyIdentifier recipient (-stream gives indefinite-length BER)."""
    cert, _ = openssl_files
    plaintext = os.urandom(100)
    (tmp_path / "in.bin").write_bytes(plaintext)
    command = [
        "openssl", "cms", "-encrypt", "-binary", "-aes256", "-keyid",
        "-in", str(tmp_path / "in.bin"), "-recip", str(cert),
        "-keyopt", "rsa_padding_mode:oaep", "-keyopt", "rsa_oaep_md:sha256",
        "-keyopt", "rsa_mgf1_md:sha256", "-outform", "DER", "-out", str(tmp_path / "out.der"),
    ]  # fmt: skip
    subprocess.run([*command, *(["-stream"] if stream else [])], check=True)
    blob = (tmp_path / "out.der").read_bytes()
    assert (blob[1] == 0x80) is stream  # indefinite outer length only when streaming
    assert _open(blob, private_key) == plaintext


def test_openssl_opens_what_the_simulator_writes(
    tmp_path: Path, private_key: rsa.RSAPrivateKey, openssl_files: tuple[Path, Path]
) -> None:
    """The simulator's BER is real CMS: OpenSSL decrypts it to the same plaintext."""
    _, key = openssl_files
    (tmp_path / "blob.ber").write_bytes(build_enveloped_data(DATA_KEY, private_key.public_key()))
    result = subprocess.run(
        ["openssl", "cms", "-decrypt", "-inform", "DER", "-in", str(tmp_path / "blob.ber"),
         "-inkey", str(key)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    assert result.stdout == DATA_KEY


def test_plaintext_comes_back_in_a_wipeable_bytearray(recipient: RecipientKey) -> None:
    """unwrap returns a bytearray (the caller can zero it), holding exactly the key."""
    public_key = serialization.load_der_public_key(recipient.public_der())
    assert isinstance(public_key, rsa.RSAPublicKey)
    opened = recipient.unwrap(build_enveloped_data(DATA_KEY, public_key))
    assert isinstance(opened, bytearray)
    assert opened == DATA_KEY


def _swap(blob: bytes, old: bytes, new: bytes) -> bytes:
    assert blob.count(old) == 1, old.hex()
    return blob.replace(old, new)


@dataclass(frozen=True)
class Mutation:
    name: str
    make: Callable[[rsa.RSAPublicKey], bytes]


def _ber(public_key: rsa.RSAPublicKey, **fields: Any) -> bytes:
    return build_enveloped_data(DATA_KEY, public_key, overrides=Overrides(**fields))


def _other_key_blob(_: rsa.RSAPublicKey) -> bytes:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return build_enveloped_data(DATA_KEY, other.public_key())


def _non_minimal_length(public_key: rsa.RSAPublicKey) -> bytes:
    # X.690 §10.1: the recipient SET's length 82 01 xx rewritten as 83 00 01 xx.
    blob = _ber(public_key)
    return _swap(blob[:40], b"\x31\x82\x01", b"\x31\x83\x00\x01") + blob[40:]


def _indefinite_primitive(public_key: rsa.RSAPublicKey) -> bytes:
    # The EnvelopedData version INTEGER 02 01 02 rewritten as 02 80 02 00 00.
    blob = _ber(public_key)
    return _swap(blob[:20], b"\x02\x01\x02", b"\x02\x80\x02\x00\x00") + blob[20:]


MUTATIONS = [
    Mutation("signed-data-content-type", lambda k: _ber(k, content_type="1.2.840.113549.1.7.2")),
    Mutation("enveloped-version-0", lambda k: _ber(k, enveloped_version=0)),
    Mutation("recipient-version-0", lambda k: _ber(k, recipient_version=0)),
    Mutation("oaep-sha1", lambda k: _ber(k, oaep_hash=writer.SHA1)),
    Mutation("mgf1-sha1", lambda k: _ber(k, mgf_hash=writer.SHA1)),
    Mutation("aes128-cbc", lambda k: _ber(k, cipher=writer.AES128_CBC)),
    Mutation("iv-8-bytes", lambda k: _ber(k, iv=bytes(8))),
    Mutation("content-key-16-bytes", lambda k: _ber(k, content_key=bytes(16))),
    Mutation("padding-zero", lambda k: _ber(k, padded_plaintext=DATA_KEY + bytes(16))),
    Mutation("padding-17", lambda k: _ber(k, padded_plaintext=DATA_KEY + bytes([17]) * 16)),
    Mutation(
        "padding-inconsistent",
        lambda k: _ber(k, padded_plaintext=DATA_KEY + bytes([3] * 14 + [2, 3])),
    ),
    Mutation("unaligned-content", lambda k: _ber(k, ciphertext_suffix=b"\x01")),
    Mutation("unprotected-attrs", lambda k: _ber(k, unprotected_attrs=True)),
    Mutation("other-recipient", _other_key_blob),
    Mutation("trailing-byte", lambda k: _ber(k) + b"\x00"),
    Mutation("trailing-eoc", lambda k: _ber(k) + b"\x00\x00"),
    Mutation("missing-final-eoc", lambda k: _ber(k)[:-2]),
    Mutation("non-minimal-length", _non_minimal_length),
    Mutation("indefinite-primitive", _indefinite_primitive),
    Mutation("high-tag-number", lambda k: b"\x1f\x81\x00" + _ber(k)[1:]),
    Mutation("not-cms", lambda _k: b"\x30\x03\x02\x01\x00"),
    Mutation("empty", lambda _k: b""),
    Mutation("nesting-bomb", lambda _k: b"\x30\x80" * 200 + b"\x00\x00" * 200),
    Mutation("element-flood", lambda _k: b"\x30\x80" + b"\x05\x00" * 600 + b"\x00\x00"),
    Mutation("oversized", lambda k: _ber(k, segment_size=1000) + bytes(MAX_CMS_SIZE)),
]


@pytest.mark.parametrize("mutation", MUTATIONS, ids=[m.name for m in MUTATIONS])
def test_every_malformed_or_foreign_blob_is_one_generic_error(
    private_key: rsa.RSAPrivateKey, mutation: Mutation
) -> None:
    """Structure, algorithm, key and padding failures all raise the same CmsError,
    with the same message and nothing chained (no oracle)."""
    blob = mutation.make(private_key.public_key())
    with pytest.raises(CmsError) as caught:
        open_enveloped_data(blob, private_key)
    assert str(caught.value) == str(CmsError())
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_every_truncation_is_refused(private_key: rsa.RSAPrivateKey) -> None:
    """Each proper prefix of a BER and of a DER answer is refused."""
    for form in ("ber", "der"):
        blob = build_enveloped_data(DATA_KEY, private_key.public_key(), form=form)
        for length in range(len(blob)):
            with pytest.raises(CmsError):
                parse_enveloped_data(blob[:length])


def test_a_flipped_bit_outside_the_content_is_refused(private_key: rsa.RSAPrivateKey) -> None:
    """Any single bit flip in the structure, the wrapped key or the IV's tag is refused
    (the IV and content themselves are not authenticated by CMS: see enclave.cms)."""
    blob = build_enveloped_data(DATA_KEY, private_key.public_key())
    parsed = parse_enveloped_data(blob)
    unauthenticated = {
        *range(blob.index(parsed.iv), blob.index(parsed.iv) + 16),
        *range(blob.index(parsed.subject_key_id), blob.index(parsed.subject_key_id) + 32),
    }
    content_at = blob.index(parsed.encrypted_content)
    unauthenticated |= set(range(content_at, content_at + len(parsed.encrypted_content)))
    for position in range(len(blob)):
        if position in unauthenticated:
            continue
        mutated = bytearray(blob)
        mutated[position] ^= 0x01
        with pytest.raises(CmsError):
            open_enveloped_data(bytes(mutated), private_key)


@settings(max_examples=300)
@given(data=st.binary(max_size=600))
def test_random_bytes_raise_only_cms_error(data: bytes) -> None:
    """Whatever the input, the parser answers an EnvelopedData or CmsError, nothing else."""
    with contextlib.suppress(CmsError):
        parse_enveloped_data(data)


_FUZZ_BLOB = build_enveloped_data(
    DATA_KEY, rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
)


@settings(max_examples=200, deadline=None)
@given(position=st.integers(min_value=0, max_value=480), value=st.integers(0, 255))
def test_byte_substitutions_raise_only_cms_error(position: int, value: int) -> None:
    """Any byte of a valid answer replaced: CmsError or a parse, never another exception."""
    blob = bytearray(_FUZZ_BLOB)
    blob[position % len(blob)] = value
    with contextlib.suppress(CmsError):
        parse_enveloped_data(bytes(blob))


# --------------------------------------------------------------------- recipient key


def test_recipient_key_public_der_is_an_rsa_2048_spki_that_fits_a_document() -> None:
    """public_der is DER SubjectPublicKeyInfo of RSA-2048, within the NSM's 1024-byte limit."""
    key = RecipientKey.generate()
    der = key.public_der()
    loaded = serialization.load_der_public_key(der)
    assert isinstance(loaded, rsa.RSAPublicKey) and loaded.key_size == 2048
    assert len(der) <= 1024
    assert "PRIVATE" not in repr(key) and der.hex() not in repr(key)


@pytest.mark.parametrize("bits", [1024, 3072])
def test_recipient_key_must_be_rsa_2048(bits: int) -> None:
    """A key of another size is refused: KMS expects RSA-2048 in the document."""
    with pytest.raises(ValueError, match="RSA-2048"):
        RecipientKey(rsa.generate_private_key(public_exponent=65537, key_size=bits))


def test_unwrap_failure_is_kms_malformed_without_cause(recipient: RecipientKey) -> None:
    """A blob that does not open is KmsError(MALFORMED), nothing chained."""
    with pytest.raises(KmsError) as caught:
        recipient.unwrap(b"\x30\x80\x00\x00")
    assert caught.value.reason is KmsReason.MALFORMED
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_credentials_repr_hides_the_secret_and_token() -> None:
    """Logging AwsCredentials never prints the secret key or the session token."""
    credentials = AwsCredentials(
        access_key_id="AKIDEXAMPLE", secret_access_key="s3cr3t-value", session_token="t0ken-value"
    )
    assert "s3cr3t-value" not in repr(credentials) and "t0ken-value" not in repr(credentials)
    with pytest.raises(ValueError, match="spaces"):
        AwsCredentials(access_key_id="AKID EXAMPLE", secret_access_key="x")


# ---------------------------------------------------------- adapter <-> simulator


@dataclass
class KmsWorld:
    """One KMS simulator over HTTPS, an NSM simulator, and a client to use against it."""

    state: Path
    tls: FakeTls
    port: int
    nsm: NsmSimulator
    simulator: KmsSimulator
    credentials: AwsCredentials

    def client(self, **overrides: Any) -> Boto3Kms:
        settings: dict[str, Any] = {
            "credentials": self.credentials,
            "region": REGION,
            "endpoint_url": f"https://localhost:{self.port}",
            "ca_file": self.tls.ca_file,
            "max_attempts": 1,
        }
        settings.update(overrides)
        return Boto3Kms(**settings)

    def document(self, key: RecipientKey, nsm: NsmSimulator | None = None) -> bytes:
        return NsmClient(nsm or self.nsm).attestation(public_key=key.public_der())


PCRS = simulated_pcrs()
OTHER_PCRS = {**PCRS, 0: bytes(47) + b"\x01"}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KmsWorld]:
    state = tmp_path_factory.mktemp("kms-world")
    nsm = NsmSimulator(state / "nsm", PCRS)
    tls = create_fake_tls(state / "tls", hostnames=(KMS_HOST,))
    test_credentials = TestCredentials(
        access_key_id="AKIATESTKMSSIMULATOR",
        secret_access_key="test-secret-" + os.urandom(8).hex(),
        session_token="test-session-token-" + os.urandom(8).hex(),
    )
    simulator = KmsSimulator(
        policies=[
            KeyPolicy(
                key_id="sealing",
                pcrs={i: PCRS[i] for i in (0, 1, 2)},
                aliases=("alias/perf-aggregator",),
            ),
            KeyPolicy(key_id="other", pcrs={0: PCRS[0]}),
            KeyPolicy(key_id="other-image", pcrs={0: OTHER_PCRS[0]}),
        ],
        root_der=nsm.root_der,
        state_dir=state / "kms",
        region=REGION,
        credentials=[test_credentials],
    )
    with serve_in_thread(simulator, tls.server_context()) as port:
        yield KmsWorld(
            state=state,
            tls=tls,
            port=port,
            nsm=nsm,
            simulator=simulator,
            credentials=AwsCredentials(
                access_key_id=test_credentials.access_key_id,
                secret_access_key=test_credentials.secret_access_key,
                session_token=test_credentials.session_token,
            ),
        )


def _reason_of(call: Callable[..., object], /, **arguments: Any) -> KmsError:
    with pytest.raises(KmsError) as caught:
        call(**arguments)
    # Nothing from botocore chained or attached as context.
    error = caught.value
    assert error.__cause__ is None and (error.__suppress_context__ or error.__context__ is None)
    return error


def test_generate_then_decrypt_give_the_same_32_byte_key(
    world: KmsWorld, recipient: RecipientKey
) -> None:
    """GenerateDataKey and a later Decrypt of its blob unwrap to the same AES-256 key,
    with SigV4 (session token included) verified by the simulator."""
    client = world.client()
    generated = client.generate_data_key(
        key_id="sealing", attestation_document=world.document(recipient)
    )
    assert isinstance(generated, GeneratedKey)
    data_key = recipient.unwrap(generated.ciphertext_for_recipient)
    assert len(data_key) == 32
    # A restarted enclave: new RSA key, new document, same blob.
    restarted = RecipientKey.generate()
    for_recipient = client.decrypt(
        key_id=world.simulator.key_arn("sealing"),
        ciphertext_blob=generated.ciphertext_blob,
        attestation_document=world.document(restarted),
    )
    assert restarted.unwrap(for_recipient) == data_key
    # The answer is the BER form KMS emits.
    assert for_recipient[:2] == b"\x30\x80"
    assert data_key.hex() not in repr(generated)


def test_aliases_resolve_to_their_key(world: KmsWorld, recipient: RecipientKey) -> None:
    """A key can be named by alias as well as by id or ARN."""
    client = world.client()
    document = world.document(recipient)
    generated = client.generate_data_key(
        key_id="alias/perf-aggregator", attestation_document=document
    )
    for_recipient = client.decrypt(
        key_id="sealing", ciphertext_blob=generated.ciphertext_blob, attestation_document=document
    )
    assert recipient.unwrap(for_recipient) == recipient.unwrap(generated.ciphertext_for_recipient)


def test_an_enclave_with_another_pcr0_is_refused(world: KmsWorld, recipient: RecipientKey) -> None:
    """A document from other code (same NSM root, other PCR0) gets access_denied for
    both calls: it can neither make a key nor unwrap an existing blob."""
    client = world.client()
    generated = client.generate_data_key(
        key_id="sealing", attestation_document=world.document(recipient)
    )
    other_enclave = NsmSimulator(world.state / "nsm", OTHER_PCRS)  # same root directory
    foreign = world.document(recipient, other_enclave)
    error = _reason_of(
        lambda: client.generate_data_key(key_id="sealing", attestation_document=foreign)
    )
    assert error.reason is KmsReason.ACCESS_DENIED and not error.transient
    error = _reason_of(
        lambda: client.decrypt(
            key_id="sealing",
            ciphertext_blob=generated.ciphertext_blob,
            attestation_document=foreign,
        )
    )
    assert error.reason is KmsReason.ACCESS_DENIED
    assert world.simulator.calls[-1].reason == "attestation:pcr-mismatch"
    # ...while that enclave's own key policy lets it in.
    assert client.generate_data_key(key_id="other-image", attestation_document=foreign)


def test_an_enclave_without_pcr1_match_is_refused_when_the_policy_pins_it(
    world: KmsWorld, recipient: RecipientKey
) -> None:
    """Optional PCRs in a policy are enforced too (PCR1 differs, PCR0 equal)."""
    other_kernel = NsmSimulator(world.state / "nsm", {**PCRS, 1: bytes(47) + b"\x02"})
    document = world.document(recipient, other_kernel)
    error = _reason_of(
        lambda: world.client().generate_data_key(key_id="sealing", attestation_document=document)
    )
    assert error.reason is KmsReason.ACCESS_DENIED
    # "other" pins PCR0 only, so the same document is accepted there.
    assert world.client().generate_data_key(key_id="other", attestation_document=document)


def test_documents_that_do_not_verify_are_refused(
    world: KmsWorld, recipient: RecipientKey, tmp_path: Path
) -> None:
    """Another root, a stale document, no public key, or garbage: access_denied."""
    stranger = NsmSimulator(tmp_path / "other-root", PCRS)
    stale = NsmSimulator(
        world.state / "nsm", PCRS, clock=lambda: datetime.now(UTC) - timedelta(minutes=10)
    )
    cases = {
        "attestation:root": world.document(recipient, stranger),
        "attestation:stale": world.document(recipient, stale),
        "no-public-key": NsmClient(world.nsm).attestation(user_data=b"no key"),
        "attestation:structure": b"\xa0",
    }
    client = world.client()
    for reason, document in cases.items():
        error = _reason_of(
            client.generate_data_key, key_id="sealing", attestation_document=document
        )
        assert error.reason is KmsReason.ACCESS_DENIED, reason
        assert world.simulator.calls[-1].reason == reason


def test_a_blob_under_another_key_or_tampered_is_refused(
    world: KmsWorld, recipient: RecipientKey
) -> None:
    """Decrypt refuses a blob made under another key, a flipped bit, and a truncation."""
    client = world.client()
    document = world.document(recipient)
    blob = client.generate_data_key(key_id="other", attestation_document=document).ciphertext_blob
    flipped = bytearray(blob)
    flipped[-1] ^= 0x01
    for candidate, key_id in (
        (blob, "sealing"),
        (bytes(flipped), "other"),
        (blob[:-20], "other"),
        (b"not a blob at all", "other"),
    ):
        error = _reason_of(
            client.decrypt, key_id=key_id, ciphertext_blob=candidate, attestation_document=document
        )
        assert error.reason is KmsReason.INVALID_CIPHERTEXT


def test_unknown_key_is_not_found(world: KmsWorld, recipient: RecipientKey) -> None:
    """A key id the account does not have maps to not_found."""
    error = _reason_of(
        lambda: world.client().generate_data_key(
            key_id="no-such-key", attestation_document=world.document(recipient)
        )
    )
    assert error.reason is KmsReason.NOT_FOUND


@pytest.mark.parametrize(
    "credentials",
    [
        AwsCredentials(access_key_id="AKIATESTKMSSIMULATOR", secret_access_key="wrong"),
        AwsCredentials(access_key_id="AKIAUNKNOWN", secret_access_key="whatever"),
    ],
    ids=["wrong-secret", "unknown-access-key"],
)
def test_bad_credentials_are_refused(
    world: KmsWorld, recipient: RecipientKey, credentials: AwsCredentials
) -> None:
    """The simulator verifies SigV4: wrong secrets and unknown keys map to credentials."""
    error = _reason_of(
        lambda: world.client(credentials=credentials).generate_data_key(
            key_id="sealing", attestation_document=world.document(recipient)
        )
    )
    assert error.reason is KmsReason.CREDENTIALS


def test_an_untrusted_server_certificate_is_a_tls_error(
    world: KmsWorld, recipient: RecipientKey, tmp_path: Path
) -> None:
    """TLS is always verified: the default trust store or another CA refuses the simulator."""
    other_ca = create_fake_tls(tmp_path / "other-ca", hostnames=(KMS_HOST,)).ca_file
    document = world.document(recipient)
    for ca_file in (None, other_ca):
        error = _reason_of(
            world.client(ca_file=ca_file).generate_data_key,
            key_id="sealing",
            attestation_document=document,
        )
        assert error.reason is KmsReason.TLS


def test_an_unreachable_endpoint_is_transient_unavailable(recipient: RecipientKey) -> None:
    """A closed port maps to unavailable, which callers may retry."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = Boto3Kms(
        credentials=AwsCredentials(access_key_id="AKIDEXAMPLE", secret_access_key="x"),
        region=REGION,
        endpoint_url=f"https://127.0.0.1:{port}",
        max_attempts=1,
        connect_timeout_seconds=2,
    )
    error = _reason_of(lambda: client.generate_data_key(key_id="k", attestation_document=b"\xa0"))
    assert error.reason is KmsReason.UNAVAILABLE and error.transient


class _ConnectProxy(socketserver.ThreadingTCPServer):
    """A loopback CONNECT proxy that maps one host name to the simulator (the egress
    host override) and refuses every other target."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, routes: dict[str, tuple[str, int]]) -> None:
        self.routes = routes
        self.targets: list[str] = []
        super().__init__(("127.0.0.1", 0), _ConnectHandler)


class _ConnectHandler(socketserver.StreamRequestHandler):
    server: _ConnectProxy

    def handle(self) -> None:
        request_line = self.rfile.readline(4096).decode("latin-1").split()
        while self.rfile.readline(4096) not in (b"\r\n", b"\n", b""):
            pass
        if len(request_line) != 3 or request_line[0] != "CONNECT":
            self.wfile.write(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
            return
        self.server.targets.append(request_line[1])
        route = self.server.routes.get(request_line[1])
        if route is None:
            self.wfile.write(b"HTTP/1.1 403 Forbidden\r\n\r\n")
            return
        with socket.create_connection(route) as upstream:
            self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            self.wfile.flush()
            sockets = [self.connection, upstream]
            while True:
                readable, _, _ = select.select(sockets, [], [], 10)
                if not readable:
                    return
                for source in readable:
                    data = source.recv(65536)
                    if not data:
                        return
                    (upstream if source is self.connection else self.connection).sendall(data)


@pytest.fixture
def proxy(world: KmsWorld) -> Iterator[_ConnectProxy]:
    server = _ConnectProxy({f"{KMS_HOST}:443": ("127.0.0.1", world.port)})
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_the_real_host_name_through_the_connect_proxy_ignoring_the_environment(
    world: KmsWorld,
    recipient: RecipientKey,
    proxy: _ConnectProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With no endpoint_url the client talks to kms.us-east-1.amazonaws.com through the
    given CONNECT proxy (TLS verified for that name), whatever AWS_* / proxy variables
    the environment holds."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", "https://127.0.0.1:9")
    monkeypatch.setenv("AWS_ENDPOINT_URL_KMS", "https://127.0.0.1:9")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_CA_BUNDLE", "/nonexistent/ca.pem")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_USE_FIPS_ENDPOINT", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFROMENVIRONMENT")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "from-environment")
    client = world.client(
        endpoint_url=None, proxy_url=f"http://127.0.0.1:{proxy.server_address[1]}"
    )
    generated = client.generate_data_key(
        key_id="sealing", attestation_document=world.document(recipient)
    )
    assert len(recipient.unwrap(generated.ciphertext_for_recipient)) == 32
    assert proxy.targets == [f"{KMS_HOST}:443"]


def test_create_key_and_encryption_context_through_plain_botocore(
    world: KmsWorld, recipient: RecipientKey
) -> None:
    """Unmodified botocore can CreateKey (PCR policy) on the simulator; a blob made with
    an EncryptionContext decrypts only with the same context."""
    raw = botocore.session.Session().create_client(
        "kms",
        region_name=REGION,
        endpoint_url=f"https://localhost:{world.port}",
        verify=str(world.tls.ca_file),
        aws_access_key_id=world.credentials.access_key_id,
        aws_secret_access_key=world.credentials.secret_access_key,
        aws_session_token=world.credentials.session_token,
    )
    policy = json.dumps({"pcrs": {"0": PCRS[0].hex()}})
    metadata = raw.create_key(Policy=policy, Description="test key")["KeyMetadata"]
    assert metadata["Arn"] == world.simulator.key_arn(metadata["KeyId"])
    document = world.document(recipient)
    recipient_param = {
        "KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256",
        "AttestationDocument": document,
    }
    generated = raw.generate_data_key(
        KeyId=metadata["KeyId"],
        KeySpec="AES_256",
        EncryptionContext={"purpose": "sealing"},
        Recipient=recipient_param,
    )
    assert "Plaintext" not in generated or not generated["Plaintext"]
    with pytest.raises(botocore.exceptions.ClientError, match="InvalidCiphertextException"):
        raw.decrypt(CiphertextBlob=generated["CiphertextBlob"], Recipient=recipient_param)
    opened = raw.decrypt(
        CiphertextBlob=generated["CiphertextBlob"],
        EncryptionContext={"purpose": "sealing"},
        Recipient=recipient_param,
    )
    assert recipient.unwrap(opened["CiphertextForRecipient"]) == recipient.unwrap(
        generated["CiphertextForRecipient"]
    )
    with pytest.raises(botocore.exceptions.ClientError, match="MalformedPolicyDocument"):
        raw.create_key(Policy=json.dumps({"pcrs": {"1": PCRS[1].hex()}}))  # no PCR0


def test_concurrent_calls_share_one_client(world: KmsWorld, recipient: RecipientKey) -> None:
    """Callers run the port in worker threads: one client serves them all."""
    client = world.client()
    document = world.document(recipient)
    results: list[bytes] = []

    def work() -> None:
        generated = client.generate_data_key(key_id="sealing", attestation_document=document)
        results.append(bytes(recipient.unwrap(generated.ciphertext_for_recipient)))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(results) == 4 and len(set(results)) == 4


# --------------------------------------------------------- error mapping (Stubber)

SECRET_ECHO = "key material echo 0123456789abcdef"


def _stubbed() -> tuple[Boto3Kms, Stubber]:
    client = Boto3Kms(
        credentials=AwsCredentials(access_key_id="AKIDEXAMPLE", secret_access_key="x"),
        region=REGION,
    )
    stubber = Stubber(client._client)  # the adapter's botocore client
    stubber.activate()
    return client, stubber


@pytest.mark.parametrize(
    ("code", "status", "reason"),
    [
        ("AccessDeniedException", 400, KmsReason.ACCESS_DENIED),
        ("NotFoundException", 400, KmsReason.NOT_FOUND),
        ("InvalidCiphertextException", 400, KmsReason.INVALID_CIPHERTEXT),
        ("IncorrectKeyException", 400, KmsReason.INVALID_CIPHERTEXT),
        ("DisabledException", 400, KmsReason.KEY_UNUSABLE),
        ("KMSInvalidStateException", 400, KmsReason.KEY_UNUSABLE),
        ("KeyUnavailableException", 500, KmsReason.KEY_UNUSABLE),
        ("UnrecognizedClientException", 400, KmsReason.CREDENTIALS),
        ("ExpiredTokenException", 400, KmsReason.CREDENTIALS),
        ("ThrottlingException", 400, KmsReason.THROTTLED),
        ("KMSInternalException", 500, KmsReason.UNAVAILABLE),
        ("DependencyTimeoutException", 503, KmsReason.UNAVAILABLE),
        ("SomethingNewException", 503, KmsReason.UNAVAILABLE),
        ("ValidationException", 400, KmsReason.REJECTED),
        ("SomethingNewException", 400, KmsReason.REJECTED),
    ],
)
@pytest.mark.parametrize("operation", ["generate_data_key", "decrypt"])
def test_aws_errors_map_to_reasons_without_their_message(
    code: str, status: int, reason: KmsReason, operation: str
) -> None:
    """Each AWS error code maps to its reason; AWS's message (which may echo input)
    appears nowhere in the error or its traceback."""
    client, stubber = _stubbed()
    stubber.add_client_error(
        operation, service_error_code=code, service_message=SECRET_ECHO, http_status_code=status
    )
    call: dict[str, Callable[[], object]] = {
        "generate_data_key": lambda: client.generate_data_key(
            key_id="k", attestation_document=b"doc"
        ),
        "decrypt": lambda: client.decrypt(
            key_id="k", ciphertext_blob=b"blob", attestation_document=b"doc"
        ),
    }
    error = _reason_of(call[operation])
    assert error.reason is reason
    assert error.transient == (reason in (KmsReason.THROTTLED, KmsReason.UNAVAILABLE))
    assert SECRET_ECHO not in "".join(traceback.format_exception(error))
    stubber.assert_no_pending_responses()


def test_requests_carry_the_recipient_and_algorithms() -> None:
    """The adapter sends KeySpec AES_256, SYMMETRIC_DEFAULT and the RSAES_OAEP_SHA_256
    Recipient with the document, exactly as the KMS API expects."""
    client, stubber = _stubbed()
    recipient_param = {
        "KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256",
        "AttestationDocument": b"doc",
    }
    stubber.add_response(
        "generate_data_key",
        {"CiphertextBlob": b"blob", "CiphertextForRecipient": b"cms", "KeyId": "arn"},
        {"KeyId": "k", "KeySpec": "AES_256", "Recipient": recipient_param},
    )
    stubber.add_response(
        "decrypt",
        {"CiphertextForRecipient": b"cms", "KeyId": "arn"},
        {
            "KeyId": "k",
            "CiphertextBlob": b"blob",
            "EncryptionAlgorithm": "SYMMETRIC_DEFAULT",
            "Recipient": recipient_param,
        },
    )
    assert client.generate_data_key(key_id="k", attestation_document=b"doc") == GeneratedKey(
        ciphertext_blob=b"blob", ciphertext_for_recipient=b"cms"
    )
    assert (
        client.decrypt(key_id="k", ciphertext_blob=b"blob", attestation_document=b"doc") == b"cms"
    )
    stubber.assert_no_pending_responses()


@pytest.mark.parametrize(
    "response",
    [
        {"CiphertextBlob": b"blob", "CiphertextForRecipient": b"cms", "Plaintext": b"k" * 32},
        {"CiphertextBlob": b"blob"},
        {"CiphertextForRecipient": b"cms"},
    ],
    ids=["plaintext-returned", "no-ciphertext-for-recipient", "no-blob"],
)
def test_an_answer_without_recipient_ciphertext_or_with_plaintext_is_malformed(
    response: dict[str, bytes],
) -> None:
    """A plaintext data key (attestation ignored) or a missing field is refused."""
    client, stubber = _stubbed()
    stubber.add_response("generate_data_key", response)
    error = _reason_of(lambda: client.generate_data_key(key_id="k", attestation_document=b"doc"))
    assert error.reason is KmsReason.MALFORMED


def test_adapter_refuses_insecure_settings() -> None:
    """Plain-http endpoints, non-http proxies, bad regions and missing CA files are refused."""
    credentials = AwsCredentials(access_key_id="AKIDEXAMPLE", secret_access_key="x")
    for bad in (
        {"endpoint_url": "http://kms.us-east-1.amazonaws.com"},
        {"proxy_url": "socks5://127.0.0.1:1080"},
        {"region": "us east 1"},
        {"ca_file": Path("/nonexistent/ca.pem")},
    ):
        settings: dict[str, Any] = {"credentials": credentials, "region": REGION, **bad}
        with pytest.raises(ValueError):
            Boto3Kms(**settings)


# ------------------------------------------------------------- simulator process


def _start(arguments: list[str], cwd: Path) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.kms", "serve", *arguments],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        process.wait(10)
        raise AssertionError(
            f"simulator did not start: {process.stderr.read() if process.stderr else ''}"
        )
    return process, json.loads(line)


def _stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    process.wait(20)


def test_simulator_process_keeps_its_keys_across_restarts(
    tmp_path: Path, recipient: RecipientKey
) -> None:
    """`python -m tests.fakes.kms serve` prints its ready line, verifies SigV4 against
    --credentials, stores master keys 0600 in --state, and after a restart still
    decrypts a blob it made before."""
    repo = Path(__file__).resolve().parents[1]
    nsm = NsmSimulator(tmp_path / "nsm", PCRS)
    credentials = {"access_key_id": "AKIAPROCESSTEST", "secret_access_key": os.urandom(8).hex()}
    (tmp_path / "credentials.json").write_text(json.dumps(credentials))
    policy = json.dumps({"key_id": "sealing", "pcrs": {"0": PCRS[0].hex()}})
    arguments = [
        "--root", str(nsm.root_pem_path), "--policy", policy,
        "--tls-dir", str(tmp_path / "tls"), "--state", str(tmp_path / "kms"),
        "--credentials", str(tmp_path / "credentials.json"),
    ]  # fmt: skip
    document = NsmClient(nsm).attestation(public_key=recipient.public_der())
    aws = AwsCredentials(**credentials)

    process, ready = _start(arguments, repo)
    try:
        assert ready["event"] == "ready" and ready["sigv4"] == "verified"
        assert ready["host"] == KMS_HOST and ready["keys"]["sealing"].endswith(":key/sealing")
        client = Boto3Kms(
            credentials=aws,
            region=REGION,
            endpoint_url=ready["endpoint_url"],
            ca_file=Path(ready["ca_file"]),
            max_attempts=1,
        )
        generated = client.generate_data_key(key_id="sealing", attestation_document=document)
    finally:
        _stop(process)
    assert (tmp_path / "kms" / "kms-keys.json").stat().st_mode & 0o777 == 0o600

    process, ready = _start(arguments, repo)
    try:
        client = Boto3Kms(
            credentials=aws,
            region=REGION,
            endpoint_url=ready["endpoint_url"],
            ca_file=Path(ready["ca_file"]),
            max_attempts=1,
        )
        for_recipient = client.decrypt(
            key_id="sealing",
            ciphertext_blob=generated.ciphertext_blob,
            attestation_document=document,
        )
    finally:
        _stop(process)
    assert recipient.unwrap(for_recipient) == recipient.unwrap(generated.ciphertext_for_recipient)


def test_simulator_refuses_unattested_requests(world: KmsWorld) -> None:
    """Without Recipient, KMS (and the simulator) never hands out a plaintext key."""
    status, answer = world.simulator.handle(
        method="POST",
        path="/",
        query="",
        headers=lambda name: {
            "x-amz-target": ["TrentService.GenerateDataKey"],
            "content-type": ["application/x-amz-json-1.1"],
        }.get(name, []),
        body=json.dumps({"KeyId": "sealing", "KeySpec": "AES_256"}).encode(),
    )
    # No SigV4 header: refused before anything else.
    assert status == 400 and answer["__type"] == "MissingAuthenticationTokenException"
    amz_date = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    unsigned = KmsSimulator(
        policies=[KeyPolicy(key_id="k", pcrs={0: PCRS[0]})], root_der=world.nsm.root_der
    )
    status, answer = unsigned.handle(
        method="POST",
        path="/",
        query="",
        headers=lambda name: {
            "x-amz-target": ["TrentService.GenerateDataKey"],
            "content-type": ["application/x-amz-json-1.1"],
            "authorization": [
                f"AWS4-HMAC-SHA256 Credential=AKID/{amz_date[:8]}/us-east-1/kms/aws4_request, "
                "SignedHeaders=host;x-amz-date, Signature=" + "0" * 64
            ],
            "host": ["localhost"],
            "x-amz-date": [amz_date],
        }.get(name, []),
        body=json.dumps({"KeyId": "k", "KeySpec": "AES_256"}).encode(),
    )
    assert status == 400 and answer["__type"] == "AccessDeniedException"
    assert "Plaintext" not in answer
    assert unsigned.calls[-1].reason == "no-recipient"
