"""CMS EnvelopedData as AWS KMS returns it in ``CiphertextForRecipient``. Side: enclave (sans-IO).

When the enclave calls KMS with a ``Recipient`` attestation document, KMS answers with
the plaintext encrypted to the RSA public key inside that document, as a CMS
``ContentInfo`` holding ``EnvelopedData`` (RFC 5652 §3, §6). This module parses exactly
the profile KMS emits and opens it with the enclave's RSA private key.

The accepted profile (aws-nitro-enclaves-sdk-c ``source/cms.c`` and the KMS answer in
its ``tests/cms_test.c``; RFC 5652 §6.1-6.3, RFC 3560 for RSAES-OAEP, RFC 3565 for AES)::

    ContentInfo SEQUENCE {
      contentType            id-envelopedData (1.2.840.113549.1.7.3)
      [0] EXPLICIT EnvelopedData SEQUENCE {
        version              2
        recipientInfos       SET SIZE (1) OF KeyTransRecipientInfo SEQUENCE {
          version            2
          rid                [0] IMPLICIT SubjectKeyIdentifier      (1..64 bytes, not checked)
          keyEncryptionAlgorithm  rsaesOAEP (1.2.840.113549.1.1.7) RSAES-OAEP-params {
                               [0] hashFunc    sha256           (NULL parameters or none)
                               [1] maskGenFunc mgf1(sha256)     (pSourceFunc absent: empty label)
                             }
          encryptedKey       OCTET STRING                      (RSA modulus size)
        }
        encryptedContentInfo SEQUENCE {
          contentType        id-data (1.2.840.113549.1.7.1)
          contentEncryptionAlgorithm  aes256-CBC (2.16.840.1.101.3.4.1.42), IV OCTET STRING (16)
          [0] IMPLICIT encryptedContent  primitive, or constructed from OCTET STRING segments
        }
      }                      (no originatorInfo, no unprotectedAttrs)
    }

Encoding: KMS emits BER (X.690 §8) with indefinite lengths on the outer constructed
values and the encrypted content split into OCTET STRING segments. The reader accepts
exactly two BER liberties, indefinite lengths on constructed values and segmented
``encryptedContent``, and otherwise DER rules: single-byte tags, minimal definite
lengths, no trailing bytes. Input size, nesting depth and element count are bounded.

Every failure, structural or cryptographic (RSA-OAEP, key size, CBC padding), raises
the one ``CmsError`` with the same message and no chained cause, so that an answer
never tells a prober which check failed (no padding oracle in messages).

Security note: EnvelopedData is not authenticated. Anyone holding the public key (it is
in the attestation document, which the parent sees) can build a valid-looking answer
carrying a key of their choosing. Its integrity comes from the TLS session to KMS that
the enclave terminates itself (``enclave.kms``): never accept a ``CiphertextForRecipient``
that did not arrive over a verified TLS connection opened inside the enclave.

Errors::

    PerfAggError
    └── CmsError        the bytes are not the profile above, or do not open with the key
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from shared.errors import PerfAggError

__all__ = [
    "AES_BLOCK_SIZE",
    "MAX_CMS_SIZE",
    "CmsError",
    "EnvelopedData",
    "open_enveloped_data",
    "parse_enveloped_data",
]

# KMS Decrypt returns at most 4096 plaintext bytes; with an RSA-4096 recipient the CMS
# is then under 5 KiB. Anything larger is refused before parsing.
MAX_CMS_SIZE: Final = 16 * 1024
AES_BLOCK_SIZE: Final = 16
_AES_256_KEY_SIZE: Final = 32
_MAX_DEPTH: Final = 10  # mgf1's sha256 OID sits 10 levels below the ContentInfo
_MAX_ELEMENTS: Final = 512  # every element of the profile, plus content segments
_MAX_LENGTH_OCTETS: Final = 3  # definite lengths up to 16 MiB, far above MAX_CMS_SIZE
_MAX_SUBJECT_KEY_ID: Final = 64
_MIN_ENCRYPTED_KEY: Final = 256  # RSA-2048
_MAX_ENCRYPTED_KEY: Final = 512  # RSA-4096

# X.690 §8.1.2: identifier octet = class (bits 8-7) | constructed (bit 6) | number.
_UNIVERSAL: Final = 0x00
_CONTEXT: Final = 0x80
_INTEGER: Final = 0x02
_OCTET_STRING: Final = 0x04
_NULL: Final = 0x05
_OID: Final = 0x06
_SEQUENCE: Final = 0x10
_SET: Final = 0x11

# DER contents octets of the object identifiers of the profile (X.690 §8.19).
_OID_ENVELOPED_DATA: Final = bytes.fromhex("2a864886f70d010703")  # 1.2.840.113549.1.7.3
_OID_DATA: Final = bytes.fromhex("2a864886f70d010701")  # 1.2.840.113549.1.7.1
_OID_RSAES_OAEP: Final = bytes.fromhex("2a864886f70d010107")  # 1.2.840.113549.1.1.7
_OID_MGF1: Final = bytes.fromhex("2a864886f70d010108")  # 1.2.840.113549.1.1.8
_OID_SHA256: Final = bytes.fromhex("608648016503040201")  # 2.16.840.1.101.3.4.2.1
_OID_AES256_CBC: Final = bytes.fromhex("60864801650304012a")  # 2.16.840.1.101.3.4.1.42
_VERSION_2: Final = b"\x02"

_OAEP_SHA256: Final = padding.OAEP(
    mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None
)


class CmsError(PerfAggError):
    """The CMS blob is malformed, outside the KMS profile, or does not open with the key.

    One message for every cause, never chained: no decryption or padding oracle.
    """

    def __init__(self) -> None:
        super().__init__("CiphertextForRecipient could not be opened")


class _Invalid(Exception):
    """Internal: any check failed; turned into ``CmsError`` at the module boundary."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EnvelopedData:
    """The fields of a parsed KMS ``CiphertextForRecipient``; nothing here is decrypted."""

    subject_key_id: bytes  # rid [0]; KMS's identifier of the recipient key, informative only
    encrypted_key: bytes  # RSAES-OAEP-SHA256 encryption of the AES-256 content key
    iv: bytes  # AES-256-CBC initialisation vector, 16 bytes
    encrypted_content: bytes  # AES-256-CBC ciphertext (segments joined), PKCS#7 padded


# ------------------------------------------------------------------------ BER reader


@dataclass(frozen=True, slots=True)
class _Element:
    identifier: int  # class | number, without the constructed bit
    constructed: bool
    content: bytes  # primitive contents octets (empty when constructed)
    children: tuple[_Element, ...]  # constructed contents (empty when primitive)


class _Reader:
    """Strict BER reader: the DER subset plus indefinite lengths on constructed values."""

    __slots__ = ("_count", "_data")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._count = 0

    def read_all(self) -> _Element:
        element, end = self._element(0, 0)
        if end != len(self._data):  # trailing bytes after the ContentInfo
            raise _Invalid
        return element

    def _element(self, position: int, depth: int) -> tuple[_Element, int]:
        data = self._data
        self._count += 1
        if depth > _MAX_DEPTH or self._count > _MAX_ELEMENTS or position >= len(data):
            raise _Invalid
        first = data[position]
        # X.690 §8.1.2.4: number 31 announces the high-tag-number form; the profile has
        # no tag above 30, so it is refused rather than parsed.
        if first & 0x1F == 0x1F:
            raise _Invalid
        constructed = bool(first & 0x20)
        identifier = first & ~0x20
        position += 1
        if position >= len(data):
            raise _Invalid
        length_octet = data[position]
        position += 1
        if length_octet == 0x80:
            # X.690 §8.1.3.6: indefinite form, constructed encodings only, ended by the
            # end-of-contents octets 00 00 (§8.1.5).
            if not constructed:
                raise _Invalid
            children: list[_Element] = []
            while True:
                if position + 2 > len(data):
                    raise _Invalid
                if data[position] == 0 and data[position + 1] == 0:
                    position += 2
                    break
                child, position = self._element(position, depth + 1)
                children.append(child)
            return _Element(identifier, True, b"", tuple(children)), position
        if length_octet < 0x80:
            length = length_octet
        else:
            # X.690 §8.1.3.5 long form; 0xFF is reserved (§8.1.3.5 c). DER §10.1: the
            # minimal number of octets, so no leading zero and no long form below 128.
            count = length_octet & 0x7F
            if count > _MAX_LENGTH_OCTETS or position + count > len(data):
                raise _Invalid
            octets = data[position : position + count]
            position += count
            if octets[0] == 0:
                raise _Invalid
            length = int.from_bytes(octets, "big")
            if length < 0x80:
                raise _Invalid
        end = position + length
        if end > len(data):
            raise _Invalid
        if not constructed:
            return _Element(identifier, False, data[position:end], ()), end
        children = []
        while position < end:
            child, position = self._element(position, depth + 1)
            children.append(child)
        if position != end:  # a child ran past its parent's definite length
            raise _Invalid
        return _Element(identifier, True, b"", tuple(children)), end


def _constructed(
    element: _Element, identifier: int, count: int | None = None
) -> tuple[_Element, ...]:
    if not element.constructed or element.identifier != identifier:
        raise _Invalid
    if count is not None and len(element.children) != count:
        raise _Invalid
    return element.children


def _primitive(element: _Element, identifier: int) -> bytes:
    if element.constructed or element.identifier != identifier:
        raise _Invalid
    return element.content


def _expect_oid(element: _Element, oid: bytes) -> None:
    if _primitive(element, _UNIVERSAL | _OID) != oid:
        raise _Invalid


def _expect_version_2(element: _Element) -> None:
    if _primitive(element, _UNIVERSAL | _INTEGER) != _VERSION_2:
        raise _Invalid


def _expect_sha256(element: _Element) -> None:
    # RFC 5754 §2: SHA-2 AlgorithmIdentifiers come with absent or NULL parameters and
    # implementations must accept both. KMS writes NULL, OpenSSL omits it.
    children = _constructed(element, _UNIVERSAL | _SEQUENCE)
    if len(children) not in (1, 2):
        raise _Invalid
    _expect_oid(children[0], _OID_SHA256)
    if len(children) == 2 and _primitive(children[1], _UNIVERSAL | _NULL) != b"":
        raise _Invalid


def _expect_oaep_sha256(element: _Element) -> None:
    # RFC 3560 §3 / RFC 8017 A.2.1: RSAES-OAEP-params ::= SEQUENCE { hashFunc [0],
    # maskGenFunc [1], pSourceFunc [2] }, each defaulting to SHA-1 choices. Both [0] and
    # [1] must be present (SHA-256); [2] must be absent (the default empty label).
    algorithm, params = _constructed(element, _UNIVERSAL | _SEQUENCE, 2)
    _expect_oid(algorithm, _OID_RSAES_OAEP)
    hash_func, mask_gen = _constructed(params, _UNIVERSAL | _SEQUENCE, 2)
    (hash_algorithm,) = _constructed(hash_func, _CONTEXT | 0, 1)
    _expect_sha256(hash_algorithm)
    (mgf,) = _constructed(mask_gen, _CONTEXT | 1, 1)
    mgf_oid, mgf_hash = _constructed(mgf, _UNIVERSAL | _SEQUENCE, 2)
    _expect_oid(mgf_oid, _OID_MGF1)
    _expect_sha256(mgf_hash)


def _encrypted_content(element: _Element) -> bytes:
    # RFC 5652 §6.1: encryptedContent [0] IMPLICIT EncryptedContent (an OCTET STRING).
    # BER (X.690 §8.7.3) may split it into a constructed run of OCTET STRING segments;
    # one level of segments is what KMS and OpenSSL write, nested runs are refused.
    if not element.constructed:
        return _primitive(element, _CONTEXT | 0)
    segments = _constructed(element, _CONTEXT | 0)
    if not segments:
        raise _Invalid
    return b"".join(_primitive(segment, _UNIVERSAL | _OCTET_STRING) for segment in segments)


def _parse(data: bytes) -> EnvelopedData:
    if not isinstance(data, bytes | bytearray) or not 0 < len(data) <= MAX_CMS_SIZE:
        raise _Invalid
    root = _Reader(bytes(data)).read_all()
    # RFC 5652 §3 ContentInfo.
    content_type, explicit = _constructed(root, _UNIVERSAL | _SEQUENCE, 2)
    _expect_oid(content_type, _OID_ENVELOPED_DATA)
    (enveloped,) = _constructed(explicit, _CONTEXT | 0, 1)
    # §6.1 EnvelopedData: version, recipientInfos, encryptedContentInfo; no
    # originatorInfo [0] before them and no unprotectedAttrs [1] after them.
    version, recipient_infos, content_info = _constructed(enveloped, _UNIVERSAL | _SEQUENCE, 3)
    # §6.1: version 2 because the recipient is identified by subjectKeyIdentifier.
    _expect_version_2(version)
    (recipient,) = _constructed(recipient_infos, _UNIVERSAL | _SET, 1)
    # §6.2.1 KeyTransRecipientInfo; version 2 goes with rid = [0] subjectKeyIdentifier.
    ktri_version, rid, key_algorithm, encrypted_key = _constructed(
        recipient, _UNIVERSAL | _SEQUENCE, 4
    )
    _expect_version_2(ktri_version)
    subject_key_id = _primitive(rid, _CONTEXT | 0)
    if not 0 < len(subject_key_id) <= _MAX_SUBJECT_KEY_ID:
        raise _Invalid
    _expect_oaep_sha256(key_algorithm)
    wrapped_key = _primitive(encrypted_key, _UNIVERSAL | _OCTET_STRING)
    if not _MIN_ENCRYPTED_KEY <= len(wrapped_key) <= _MAX_ENCRYPTED_KEY:
        raise _Invalid
    # §6.1 EncryptedContentInfo; the content must be present (it is OPTIONAL in CMS).
    data_type, content_algorithm, content = _constructed(content_info, _UNIVERSAL | _SEQUENCE, 3)
    _expect_oid(data_type, _OID_DATA)
    # RFC 3565 §4.1: AES-CBC parameters are the 16-byte IV.
    cipher_oid, iv_element = _constructed(content_algorithm, _UNIVERSAL | _SEQUENCE, 2)
    _expect_oid(cipher_oid, _OID_AES256_CBC)
    iv = _primitive(iv_element, _UNIVERSAL | _OCTET_STRING)
    if len(iv) != AES_BLOCK_SIZE:
        raise _Invalid
    ciphertext = _encrypted_content(content)
    if not ciphertext or len(ciphertext) % AES_BLOCK_SIZE:
        raise _Invalid
    return EnvelopedData(
        subject_key_id=subject_key_id,
        encrypted_key=wrapped_key,
        iv=iv,
        encrypted_content=ciphertext,
    )


def parse_enveloped_data(data: bytes) -> EnvelopedData:
    """Parse a KMS ``CiphertextForRecipient`` (BER or DER); ``CmsError`` if not the profile."""
    try:
        return _parse(data)
    except _Invalid:
        raise CmsError from None


def _unpad_in_place(buffer: bytearray, length: int) -> int:
    """PKCS#7 (RFC 5652 §6.3) length of ``buffer[:length]`` without its padding.

    Every padding byte is inspected whatever the outcome, so the work does not depend
    on where a bad byte sits.
    """
    pad = buffer[length - 1]
    bad = int(pad == 0) | int(pad > AES_BLOCK_SIZE)
    for offset in range(1, AES_BLOCK_SIZE + 1):
        inside = offset <= pad
        bad |= int(inside) & int(buffer[length - offset] != pad)
    if bad:
        raise _Invalid
    return length - pad


def open_enveloped_data(data: bytes, private_key: rsa.RSAPrivateKey) -> bytearray:
    """Parse, unwrap the content key with ``private_key`` and decrypt: the plaintext.

    The plaintext comes back in a ``bytearray`` the caller can wipe. ``CmsError`` for
    every failure, structural or cryptographic.
    """
    buffer = bytearray()
    try:
        parsed = _parse(data)
        if len(parsed.encrypted_key) != (private_key.key_size + 7) // 8:
            raise _Invalid
        try:
            content_key = private_key.decrypt(parsed.encrypted_key, _OAEP_SHA256)
        except ValueError:
            raise _Invalid from None
        if len(content_key) != _AES_256_KEY_SIZE:
            raise _Invalid
        decryptor = Cipher(algorithms.AES256(content_key), modes.CBC(parsed.iv)).decryptor()
        ciphertext = parsed.encrypted_content
        # update_into writes straight into the caller's wipeable buffer (it needs
        # block_size - 1 spare bytes); CBC on whole blocks leaves nothing for finalize.
        buffer = bytearray(len(ciphertext) + AES_BLOCK_SIZE - 1)
        written = decryptor.update_into(ciphertext, buffer)
        if decryptor.finalize() or written != len(ciphertext):
            raise _Invalid
        length = _unpad_in_place(buffer, written)
    except _Invalid:
        buffer[:] = bytes(len(buffer))
        raise CmsError from None
    buffer[length:] = bytes(len(buffer) - length)  # wipe padding and spare bytes...
    del buffer[length:]  # ...then drop them
    return buffer
