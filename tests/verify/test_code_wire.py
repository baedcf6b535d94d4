"""The strict plain-data codec between a candidate and the trusted side: exact builtin types in, exact builtin
types out, whatever bytes arrive; subclasses and objects of a program's own are refused."""
from __future__ import annotations

import json
import math

import pytest

from factory.verify.rewards.sandbox_wire import WireError, decode, encode, frame, split_frames

PLAIN = [None, True, False, 0, -1, 2**53, -(2**200), 1.5, -0.0, float("inf"), float("-inf"), "", "é\ud800x",
         b"\x00\xff", 1 + 2j, [], (), {}, set(), frozenset(), [1, (2, "3"), {"k": [4.0]}], {(1, 2): {3}},
         {1: "a", "1": "b", None: 0, 2.5: (), frozenset({1}): True}, [[[[[]]]]]]


def _same(a, b) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


@pytest.mark.parametrize("value", PLAIN, ids=repr)
def test_plain_values_round_trip_with_their_exact_types(value):
    assert _same(decode(encode(value)), value)


def test_nan_round_trips():
    assert math.isnan(decode(encode(float("nan"))))


class Liar(int):
    def __eq__(self, other):
        return True

    __hash__ = int.__hash__


class Anything:
    def __eq__(self, other):
        return True


@pytest.mark.parametrize("value", [Liar(3), [Liar(3)], {"k": Anything()}, Anything(), type("S", (str,), {})("x"),
                                   type("L", (list,), {})(), (i for i in []), range(3), object, print,
                                   {Liar(1): 2}, bytearray(b"x"), memoryview(b"x")], ids=repr)
def test_anything_not_exactly_builtin_is_refused(value):
    with pytest.raises(WireError):
        encode(value)


def test_depth_cycles_and_size_are_bounded():
    cyclic: list = []
    cyclic.append(cyclic)
    deep: list = []
    for _ in range(200):
        deep = [deep]
    for value in (cyclic, deep):
        with pytest.raises(WireError):
            encode(value)


@pytest.mark.parametrize("raw", [b"", b"{", b'{"a": 1}', b'["x", 1]', b'["i", 12]', b'["f", "1e5"]', b'["d", 1]',
                                 b'["s", ["l"]]', b'["d", ["l"], 1]', b'["c", 1, 2]', b"[]", b"\xff\xfe",
                                 b"[" * 100_000, json.dumps(["b", "zz"]).encode()], ids=repr)
def test_malformed_bytes_never_decode_to_something(raw):
    with pytest.raises(WireError):
        decode(raw)


def test_decoded_values_are_built_here_from_builtins_only():
    got = decode(b'["l", 1, "x", ["t", 2.5, null], ["d", "k", ["s", 1, 2]], ["i", "ff"]]')
    assert got == [1, "x", (2.5, None), {"k": {1, 2}}, 255]
    assert [type(v) for v in got] == [int, str, tuple, dict, int]


def test_frames_split_only_complete_messages():
    buf = frame(b"one") + frame(b"") + frame(b"three")[:5]
    assert split_frames(buf) == [b"one", b""]
