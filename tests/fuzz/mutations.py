"""Mutation strategies: bytes (bit flips, truncations, splices, lying integers) and JSON.

Every strategy starts from real seeds (tests/vectors) and applies one to four
mutations, so most examples stay close to valid input and reach deep checks instead of
dying at the first byte. Hypothesis shrinks a failure to the fewest, smallest
mutations of the simplest seed.
"""

from __future__ import annotations

import base64
import binascii
import copy
from collections.abc import Callable, Sequence
from typing import Any, Final

from hypothesis import strategies as st

__all__ = [
    "INTERESTING_JSON",
    "deep_list",
    "json_values",
    "mutated_bytes",
    "mutate_value",
    "mutated_json",
]

Draw = Callable[[st.SearchStrategy[Any]], Any]

_INTERESTING_BYTES: Final = (0x00, 0x01, 0x1F, 0x20, 0x3F, 0x40, 0x5F, 0x7F, 0x80, 0x9F, 0xBF,
                             0xC0, 0xD8, 0xDF, 0xF4, 0xF7, 0xFB, 0xFF)  # fmt: skip
_INTERESTING_INTS: Final = (0, 1, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0xFFFF, 0x10000, 0x7FFFFFFF,
                            0xFFFFFFFF, 0x7FFFFFFFFFFFFFFF, 0xFFFFFFFFFFFFFFFF)  # fmt: skip


def deep_list(depth: int) -> list[Any]:
    """``[[[...]]]`` nested ``depth`` times, built without recursion."""
    root: list[Any] = []
    node = root
    for _ in range(depth - 1):
        child: list[Any] = []
        node.append(child)
        node = child
    return root


# Values that break parsers which trust a JSON value's type or range. json.loads
# yields all of them (NaN / Infinity literals and 1e400 included) and deep nesting up
# to its own recursion limit.
INTERESTING_JSON: Final[tuple[Any, ...]] = (
    None, True, False, 0, 1, -1, 2**53 - 1, 2**53, 2**63, -(2**63) - 1, 10**30, 1.0, 0.5,
    -0.0, 1e308, float("inf"), float("nan"), "", "0", "\ud800", "\u00e9", "\x00", "a" * 300,
    "00" * 32, "AA==", [], {}, [[]], {"": None}, [None] * 70,
)  # fmt: skip


def _interesting() -> st.SearchStrategy[Any]:
    # Copied: a mutation must never edit the shared constants (that would make the
    # strategy differ between runs, which hypothesis rightly refuses).
    return st.sampled_from(INTERESTING_JSON).map(copy.deepcopy)


def json_values(max_leaves: int = 8) -> st.SearchStrategy[Any]:
    """Arbitrary JSON-compatible values, lone surrogates, NaN and big integers included."""
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=20),
        _interesting(),
    )
    return st.recursive(
        scalars,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(st.text(max_size=8), children, max_size=4),
        ),
        max_leaves=max_leaves,
    )


# --------------------------------------------------------------------------- bytes


def _flip_bit(draw: Draw, data: bytearray, _seeds: Sequence[bytes]) -> bytearray:
    if data:
        position = draw(st.integers(0, len(data) - 1))
        data[position] ^= 1 << draw(st.integers(0, 7))
    return data


def _set_byte(draw: Draw, data: bytearray, _seeds: Sequence[bytes]) -> bytearray:
    if data:
        position = draw(st.integers(0, len(data) - 1))
        data[position] = draw(st.sampled_from(_INTERESTING_BYTES) | st.integers(0, 255))
    return data


def _truncate(draw: Draw, data: bytearray, _seeds: Sequence[bytes]) -> bytearray:
    return data[: draw(st.integers(0, max(0, len(data) - 1)))]


def _drop_range(draw: Draw, data: bytearray, _seeds: Sequence[bytes]) -> bytearray:
    if data:
        start = draw(st.integers(0, len(data) - 1))
        del data[start : start + draw(st.integers(1, 16))]
    return data


def _insert(draw: Draw, data: bytearray, _seeds: Sequence[bytes]) -> bytearray:
    position = draw(st.integers(0, len(data)))
    data[position:position] = draw(st.binary(min_size=1, max_size=16))
    return data


def _duplicate(draw: Draw, data: bytearray, _seeds: Sequence[bytes]) -> bytearray:
    if data:
        start = draw(st.integers(0, len(data) - 1))
        chunk = data[start : start + draw(st.integers(1, 64))]
        position = draw(st.integers(0, len(data)))
        data[position:position] = chunk
    return data


def _splice(draw: Draw, data: bytearray, seeds: Sequence[bytes]) -> bytearray:
    other = draw(st.sampled_from(seeds))
    head = data[: draw(st.integers(0, len(data)))]
    return head + other[draw(st.integers(0, len(other))) :]


def _lying_integer(draw: Draw, data: bytearray, _seeds: Sequence[bytes]) -> bytearray:
    # A big-endian length or count overwritten with a boundary value (1, 2, 4 or 8 bytes).
    width = draw(st.sampled_from((1, 2, 4, 8)))
    if len(data) >= width:
        position = draw(st.integers(0, len(data) - width))
        value = draw(st.sampled_from(_INTERESTING_INTS)) & ((1 << (8 * width)) - 1)
        data[position : position + width] = value.to_bytes(width, "big")
    return data


BYTE_MUTATIONS: Final = (_flip_bit, _set_byte, _truncate, _drop_range, _insert, _duplicate,
                         _splice, _lying_integer)  # fmt: skip


@st.composite
def mutated_bytes(
    draw: Draw,
    seeds: Sequence[bytes],
    *,
    extra: Sequence[Callable[[Draw, bytearray, Sequence[bytes]], bytearray]] = (),
    max_mutations: int = 4,
) -> bytes:
    """One seed with 1..max_mutations byte-level mutations (``extra``: target-aware ones)."""
    data = bytearray(draw(st.sampled_from(seeds)))
    mutations = (*BYTE_MUTATIONS, *extra)
    for _ in range(draw(st.integers(1, max_mutations))):
        data = draw(st.sampled_from(mutations))(draw, data, seeds)
    return bytes(data)


# --------------------------------------------------------------------------- JSON

Path = tuple[Any, ...]


def _paths(value: Any, prefix: Path = (), limit: int = 24) -> list[Path]:
    """Every path into ``value``, stopping ``limit`` levels down (deep decoys stay cheap)."""
    found = [prefix]
    if len(prefix) >= limit:
        return found
    if isinstance(value, dict):
        for key, item in value.items():
            found.extend(_paths(item, (*prefix, key), limit))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found.extend(_paths(item, (*prefix, index), limit))
    return found


def _get(value: Any, path: Path) -> Any:
    for step in path:
        value = value[step]
    return value


def _mutate_string(draw: Draw, text: str) -> str:
    choice = draw(st.integers(0, 5))
    if choice == 0 and text:  # one character changed
        position = draw(st.integers(0, len(text) - 1))
        replacement = draw(st.sampled_from(("0", "f", "A", "=", "\n", "\u00e9", "\ud800")))
        return text[:position] + replacement + text[position + 1 :]
    if choice == 1:
        return text[: draw(st.integers(0, len(text)))]
    if choice == 2:
        return text + draw(st.sampled_from(("=", "0", "00", " ", "\x00", "A")))
    if choice == 3:
        return text.upper() if text != text.upper() else text.lower()
    if choice == 4:  # base64 or hex content with one bit flipped, re-encoded
        for decode, encode in (
            (lambda t: base64.b64decode(t, validate=True), lambda b: base64.b64encode(b).decode()),
            (bytes.fromhex, bytes.hex),
        ):
            try:
                raw = bytearray(decode(text))
            except (ValueError, binascii.Error):
                continue
            if raw:
                raw[draw(st.integers(0, len(raw) - 1))] ^= 1 << draw(st.integers(0, 7))
                return str(encode(bytes(raw)))
        return text
    return draw(st.text(max_size=70))


def mutate_value(draw: Draw, node: Any, keys: Sequence[str] = ()) -> Any:
    """A replacement for ``node`` (the tree is copied by the caller)."""
    kind = draw(st.integers(0, 6))
    if kind == 0:
        return draw(json_values())
    if kind == 1:
        return draw(_interesting())
    if kind == 2:
        return deep_list(draw(st.sampled_from((20, 100, 500, 900))))
    if isinstance(node, bool) or node is None:
        return draw(st.sampled_from((not node, 0, 1, "true", None)))
    if isinstance(node, int):
        return draw(st.sampled_from((node + 1, node - 1, -node, node * 2, float(node), 2**53, -1)))
    if isinstance(node, str):
        return _mutate_string(draw, node)
    if isinstance(node, dict):
        result = dict(node)
        if result and draw(st.booleans()):
            del result[draw(st.sampled_from(sorted(result)))]
        else:
            names = st.sampled_from(keys) | st.text(max_size=6) if keys else st.text(max_size=6)
            result[draw(names)] = draw(json_values(4))
        return result
    if isinstance(node, list):
        result_list = list(node)
        action = draw(st.integers(0, 3))
        if action == 0 and result_list:
            del result_list[draw(st.integers(0, len(result_list) - 1))]
        elif action == 1 and result_list:
            result_list.append(copy.deepcopy(draw(st.sampled_from(result_list))))
        elif action == 2:
            result_list.reverse()
        else:
            result_list.insert(draw(st.integers(0, len(result_list))), draw(json_values(4)))
        return result_list
    return draw(json_values())


@st.composite
def mutated_json(draw: Draw, seeds: Sequence[Any], *, max_mutations: int = 3) -> Any:
    """A deep copy of one seed with 1..max_mutations structure-aware mutations."""
    value = copy.deepcopy(draw(st.sampled_from(seeds)))
    keys = sorted(
        {key for seed in seeds for path in _paths(seed) for key in path if isinstance(key, str)}
    )
    for _ in range(draw(st.integers(1, max_mutations))):
        path = draw(st.sampled_from(_paths(value)))
        replacement = mutate_value(draw, _get(value, path), keys)
        if not path:
            value = replacement
        else:
            _get(value, path[:-1])[path[-1]] = replacement
    return value
