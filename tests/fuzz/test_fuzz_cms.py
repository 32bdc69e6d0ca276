"""Fuzz enclave.cms with structure-aware mutations: CmsError only, one message, no cause.

tests/test_kms.py already feeds random bytes and single-byte substitutions; this file
parses the seed answers into a BER element tree of its own (independent of the reader
under test) and mutates the tree: tags, definite / indefinite / non-minimal lengths,
dropped, duplicated, swapped, inserted or wrapped elements, OIDs one arc off, contents
cut or extended, the encrypted content re-segmented or nested. Seeds:
tests/vectors/fuzz/cms (openable with its context key) and the real KMS answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import event, given
from hypothesis import strategies as st

from enclave.cms import CmsError, EnvelopedData, open_enveloped_data, parse_enveloped_data
from tests.fuzz.mutations import Draw, mutated_bytes
from tests.fuzz.support import (
    VECTORS,
    attempt,
    counted,
    fuzz_settings,
    load_context,
    load_seeds,
)

SEEDS = load_seeds("cms")
CONTEXT = load_context("cms")
PRIVATE_KEY = serialization.load_pem_private_key(CONTEXT["private_key_pem"].encode(), None)
assert isinstance(PRIVATE_KEY, rsa.RSAPrivateKey)
DATA_KEY = bytes.fromhex(CONTEXT["data_key_hex"])
KMS_ANSWER = bytes.fromhex((VECTORS / "kms" / "kms-answer.ber.hex").read_text().strip())
OPENABLE = [SEEDS["ber"], SEEDS["der"], SEEDS["ber-small-segments"]]
CORPUS = [*SEEDS.values(), KMS_ANSWER]
GENUINE_WRAPPED_KEYS = {parse_enveloped_data(blob).encrypted_key for blob in OPENABLE}

# OIDs of the profile and their neighbours (DER contents): SHA-1, AES-128-CBC,
# signedData, and the profile's own with the last arc changed.
_OIDS = (
    bytes.fromhex("2b0e03021a"),
    bytes.fromhex("608648016503040102"),
    bytes.fromhex("2a864886f70d010702"),
    bytes.fromhex("2a864886f70d010704"),
    bytes.fromhex("608648016503040202"),
    bytes.fromhex("2a864886f70d010109"),
)
_TAGS = (0x02, 0x04, 0x05, 0x06, 0x24, 0x30, 0x31, 0x80, 0x81, 0xA0, 0xA1, 0xA2, 0x1F, 0x00)


# --------------------------------------------------------------------------- BER tree


@dataclass
class Node:
    """One BER element: identifier octet, contents or children, and how it is written."""

    tag: int
    content: bytes = b""
    children: list[Node] | None = None
    indefinite: bool = False
    extra_length_octets: int = 0  # > 0 writes a non-minimal long-form length
    trailing: bytes = field(default=b"")


def _parse(data: bytes, position: int = 0) -> tuple[Node, int]:
    tag = data[position]
    length_octet = data[position + 1]
    position += 2
    if length_octet == 0x80:
        node = Node(tag, children=[], indefinite=True)
        while data[position : position + 2] != b"\x00\x00":
            child, position = _parse(data, position)
            assert node.children is not None
            node.children.append(child)
        return node, position + 2
    if length_octet & 0x80:
        count = length_octet & 0x7F
        length = int.from_bytes(data[position : position + count], "big")
        position += count
    else:
        length = length_octet
    end = position + length
    if tag & 0x20:
        children = []
        while position < end:
            child, position = _parse(data, position)
            children.append(child)
        return Node(tag, children=children), end
    return Node(tag, content=data[position:end]), end


def _length(size: int, extra: int) -> bytes:
    if size < 0x80 and not extra:
        return bytes([size])
    octets = size.to_bytes(max(1, (size.bit_length() + 7) // 8), "big")
    octets = bytes(extra) + octets
    return bytes([0x80 | len(octets)]) + octets


def _write(node: Node) -> bytes:
    if node.children is None:
        body = node.content
    else:
        body = b"".join(_write(child) for child in node.children)
    if node.indefinite:
        return bytes([node.tag, 0x80]) + body + b"\x00\x00" + node.trailing
    return bytes([node.tag]) + _length(len(body), node.extra_length_octets) + body + node.trailing


def _nodes(node: Node) -> list[Node]:
    found = [node]
    for child in node.children or []:
        found.extend(_nodes(child))
    return found


TREES = [_parse(blob)[0] for blob in (*OPENABLE, KMS_ANSWER)]
assert all(_write(tree) == blob for tree, blob in zip(TREES, (*OPENABLE, KMS_ANSWER), strict=True))


def _copy(node: Node) -> Node:
    return replace(
        node, children=None if node.children is None else [_copy(c) for c in node.children]
    )


def _mutate(draw: Draw, root: Node) -> Node:
    node = draw(st.sampled_from(_nodes(root)))
    kind = draw(st.integers(0, 9))
    if kind == 0:
        node.tag = draw(st.sampled_from(_TAGS) | st.integers(0, 255))
    elif kind == 1 and node.children:
        del node.children[draw(st.integers(0, len(node.children) - 1))]
    elif kind == 2 and node.children:
        node.children.insert(
            draw(st.integers(0, len(node.children))), _copy(draw(st.sampled_from(node.children)))
        )
    elif kind == 3 and node.children and len(node.children) > 1:
        i, j = draw(st.permutations(range(len(node.children))))[:2]
        node.children[i], node.children[j] = node.children[j], node.children[i]
    elif kind == 4 and node.children is not None:
        node.children.insert(
            draw(st.integers(0, len(node.children))),
            draw(st.sampled_from((Node(0x05), Node(0x02, b"\x02"), Node(0x30, children=[])))),
        )
    elif kind == 5:
        node.indefinite = not node.indefinite
    elif kind == 6:
        node.extra_length_octets = draw(st.integers(1, 3))
    elif kind == 7 and node.children is None:
        if node.tag == 0x06:
            node.content = draw(st.sampled_from(_OIDS))
        else:
            content = bytearray(node.content)
            action = draw(st.integers(0, 2))
            if action == 0 and content:
                content[draw(st.integers(0, len(content) - 1))] ^= 1 << draw(st.integers(0, 7))
            elif action == 1:
                del content[draw(st.integers(0, len(content))) :]
            else:
                content += draw(st.binary(min_size=1, max_size=17))
            node.content = bytes(content)
    elif kind == 8 and node.tag in (0x80, 0xA0) and node.children is None:
        # Primitive [0] encryptedContent -> constructed OCTET STRING segments (or nested).
        step = draw(st.integers(1, 64))
        segments = [
            Node(0x04, node.content[i : i + step]) for i in range(0, len(node.content), step)
        ]
        if draw(st.booleans()) and segments:
            segments = [Node(0x24, children=segments, indefinite=draw(st.booleans()))]
        node.tag, node.children, node.content = 0xA0, segments, b""
        node.indefinite = draw(st.booleans())
    else:
        node.trailing = draw(st.sampled_from((b"\x00", b"\x00\x00", b"\x05\x00")))
    return root


@st.composite
def _structured(draw: Draw) -> bytes:
    root = _copy(draw(st.sampled_from(TREES)))
    for _ in range(draw(st.integers(1, 3))):
        root = _mutate(draw, root)
    return _write(root)


def _check_parsed(parsed: EnvelopedData) -> None:
    assert 0 < len(parsed.subject_key_id) <= 64
    assert 256 <= len(parsed.encrypted_key) <= 512
    assert len(parsed.iv) == 16
    assert parsed.encrypted_content and len(parsed.encrypted_content) % 16 == 0


@fuzz_settings(deadline_ms=1000)
@given(blob=_structured() | mutated_bytes(CORPUS))
@counted("enclave.cms.parse_enveloped_data")
def test_parse_raises_only_cms_error_on_structural_mutations(blob: bytes) -> None:
    """A tree-mutated or byte-mutated answer parses into in-range fields or CmsError."""
    parsed, error = attempt(lambda: parse_enveloped_data(blob), CmsError)
    if parsed is None:
        assert str(error) == str(CmsError()) and error.__cause__ is None
        event("refused")
        return
    event("parsed")
    _check_parsed(parsed)


@fuzz_settings(deadline_ms=2000, scale=0.5)
@given(blob=_structured())
@counted("enclave.cms.open_enveloped_data")
def test_open_raises_one_generic_error_on_structural_mutations(blob: bytes) -> None:
    """Opening a mutated answer: CmsError with the one message and nothing chained, or
    a plaintext under the genuine wrapped key (CBC content is not authenticated)."""
    plaintext, error = attempt(lambda: open_enveloped_data(blob, PRIVATE_KEY), CmsError)
    if plaintext is None:
        assert str(error) == str(CmsError())
        assert error.__cause__ is None and error.__suppress_context__
        event("refused")
        return
    event("opened")
    assert isinstance(plaintext, bytearray)
    assert parse_enveloped_data(blob).encrypted_key in GENUINE_WRAPPED_KEYS


def test_openable_seeds_open_to_the_data_key() -> None:
    """The context key opens the three openable seeds; the tree writer is lossless."""
    for blob in OPENABLE:
        assert bytes(open_enveloped_data(blob, PRIVATE_KEY)) == DATA_KEY
