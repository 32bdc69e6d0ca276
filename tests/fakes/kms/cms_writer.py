"""Build CMS EnvelopedData the way AWS KMS writes CiphertextForRecipient. Side: test fake.

Written independently of the enclave's reader (``enclave/cms.py``): the KMS simulator
and the tests use it to produce what KMS would send, in the BER form KMS emits
(indefinite lengths, encrypted content as OCTET STRING segments, the layout of the KMS
answer in aws-nitro-enclaves-sdk-c ``tests/cms_test.c``) or in plain DER.

    ContentInfo { id-envelopedData, [0] EnvelopedData { 2, SET { KeyTransRecipientInfo {
        2, [0] subjectKeyIdentifier, rsaesOAEP(sha256, mgf1(sha256)), encryptedKey } },
      EncryptedContentInfo { id-data, aes256-CBC(iv), [0] encryptedContent } } }

RFC 5652 §6 (EnvelopedData), RFC 3560 (RSAES-OAEP in CMS), RFC 3565 (AES-CBC in CMS),
X.690 §8 (BER) and §10 (DER).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Final, Literal

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives import padding as symmetric_padding
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = [
    "Form",
    "Overrides",
    "build_enveloped_data",
    "der",
    "indefinite",
    "oid",
    "subject_key_id",
]

Form = Literal["ber", "der"]

# Object identifiers, dotted (encoded by ``oid`` below, not copied as bytes).
ENVELOPED_DATA: Final = "1.2.840.113549.1.7.3"
DATA: Final = "1.2.840.113549.1.7.1"
RSAES_OAEP: Final = "1.2.840.113549.1.1.7"
MGF1: Final = "1.2.840.113549.1.1.8"
SHA256: Final = "2.16.840.1.101.3.4.2.1"
SHA1: Final = "1.3.14.3.2.26"
AES256_CBC: Final = "2.16.840.1.101.3.4.1.42"
AES128_CBC: Final = "2.16.840.1.101.3.4.1.2"

SEQUENCE: Final = 0x30
SET: Final = 0x31
INTEGER: Final = 0x02
OCTET_STRING: Final = 0x04
NULL: Final = 0x05
OBJECT_IDENTIFIER: Final = 0x06
CONTEXT_0_PRIMITIVE: Final = 0x80
CONTEXT_0: Final = 0xA0
CONTEXT_1: Final = 0xA1


def _length(size: int) -> bytes:
    # X.690 §10.1: definite form, minimal number of octets.
    if size < 0x80:
        return bytes([size])
    octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(octets)]) + octets


def der(tag: int, *contents: bytes) -> bytes:
    """One definite-length element: tag, minimal length, the concatenated contents."""
    body = b"".join(contents)
    return bytes([tag]) + _length(len(body)) + body


def indefinite(tag: int, *contents: bytes) -> bytes:
    """One constructed element in the indefinite form (X.690 §8.1.3.6), ended by 00 00."""
    assert tag & 0x20, "only constructed encodings may use the indefinite form"
    return bytes([tag, 0x80]) + b"".join(contents) + b"\x00\x00"


def oid(dotted: str) -> bytes:
    """DER OBJECT IDENTIFIER (X.690 §8.19) from its dotted form."""
    arcs = [int(arc) for arc in dotted.split(".")]
    values = [arcs[0] * 40 + arcs[1], *arcs[2:]]
    body = bytearray()
    for value in values:
        chunk = [value & 0x7F]
        value >>= 7
        while value:
            chunk.append(0x80 | (value & 0x7F))
            value >>= 7
        body.extend(reversed(chunk))
    return der(OBJECT_IDENTIFIER, bytes(body))


def subject_key_id(public_key: rsa.RSAPublicKey) -> bytes:
    """The simulator's recipient identifier: SHA-256 of the SubjectPublicKeyInfo DER.

    KMS sends a 32-byte subjectKeyIdentifier whose derivation AWS does not document;
    the enclave does not rely on it.
    """
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).digest()


@dataclass(frozen=True, slots=True, kw_only=True)
class Overrides:
    """Deviations from the KMS profile, for negative tests (None = the KMS value)."""

    content_type: str | None = None
    enveloped_version: int | None = None
    recipient_version: int | None = None
    oaep_hash: str | None = None
    mgf_hash: str | None = None
    sha256_null: bool = True  # KMS writes NULL parameters, OpenSSL omits them
    cipher: str | None = None
    iv: bytes | None = None  # the IV written into the structure (encryption uses a real one)
    content_key: bytes | None = None  # the key that is RSA-wrapped (default: the real one)
    padded_plaintext: bytes | None = None  # bypass PKCS#7 (must be block aligned)
    ciphertext_suffix: bytes = b""  # appended to the encrypted content as is
    segment_size: int = 1024  # encrypted content split every n bytes (BER form only)
    primitive_content: bool = False  # [0] primitive even in the BER form
    unprotected_attrs: bool = False  # append an unprotectedAttrs [1]


def _algorithm(dotted: str, *, null: bool) -> bytes:
    return der(SEQUENCE, oid(dotted), der(NULL) if null else b"")


def build_enveloped_data(
    plaintext: bytes,
    recipient: rsa.RSAPublicKey,
    *,
    form: Form = "ber",
    overrides: Overrides | None = None,
) -> bytes:
    """Encrypt ``plaintext`` to ``recipient`` as KMS does: RSA-OAEP-SHA256 + AES-256-CBC.

    ``form="ber"`` gives the indefinite-length layout of a real KMS answer; ``"der"``
    the same structure in DER.
    """
    o = overrides or Overrides()
    content_key = os.urandom(32)
    iv = os.urandom(16)
    if o.padded_plaintext is not None:
        padded = o.padded_plaintext
    else:
        padder = symmetric_padding.PKCS7(128).padder()
        padded = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(algorithms.AES(content_key), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padded) + encryptor.finalize() + o.ciphertext_suffix
    wrapped = recipient.encrypt(
        o.content_key if o.content_key is not None else content_key,
        padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None),
    )

    null = o.sha256_null
    oaep_params = der(
        SEQUENCE,
        der(CONTEXT_0, _algorithm(o.oaep_hash or SHA256, null=null)),
        der(CONTEXT_1, der(SEQUENCE, oid(MGF1), _algorithm(o.mgf_hash or SHA256, null=null))),
    )
    recipient_info = der(
        SEQUENCE,
        der(INTEGER, bytes([o.recipient_version if o.recipient_version is not None else 2])),
        der(CONTEXT_0_PRIMITIVE, subject_key_id(recipient)),
        der(SEQUENCE, oid(RSAES_OAEP), oaep_params),
        der(OCTET_STRING, wrapped),
    )
    # KMS writes the recipient SET in definite form even inside the BER answer.
    recipient_infos = der(SET, recipient_info)
    version = der(INTEGER, bytes([o.enveloped_version if o.enveloped_version is not None else 2]))
    written_iv = o.iv if o.iv is not None else iv  # an override is written, not used
    cipher = der(SEQUENCE, oid(o.cipher or AES256_CBC), der(OCTET_STRING, written_iv))
    attrs = (
        der(CONTEXT_1, der(SEQUENCE, oid(DATA), der(SET, der(NULL))))
        if o.unprotected_attrs
        else b""
    )
    content_type = oid(o.content_type or ENVELOPED_DATA)

    if form == "der":
        content = der(CONTEXT_0_PRIMITIVE, ciphertext)
        encrypted_info = der(SEQUENCE, oid(DATA), cipher, content)
        enveloped = der(SEQUENCE, version, recipient_infos, encrypted_info, attrs)
        return der(SEQUENCE, content_type, der(CONTEXT_0, enveloped))

    if o.primitive_content:
        content = der(CONTEXT_0_PRIMITIVE, ciphertext)
    else:
        step = max(1, o.segment_size)
        segments = [
            der(OCTET_STRING, ciphertext[start : start + step])
            for start in range(0, len(ciphertext), step)
        ]
        content = indefinite(CONTEXT_0, *segments)
    encrypted_info = indefinite(SEQUENCE, oid(DATA), cipher, content)
    enveloped = indefinite(SEQUENCE, version, recipient_infos, encrypted_info, attrs)
    return indefinite(SEQUENCE, content_type, indefinite(CONTEXT_0, enveloped))
