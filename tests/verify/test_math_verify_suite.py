"""Math-Verify's own parametrized test suite, run through the factory's math reward.

The cases (tests/verify/data/math_verify_cases.json, Apache-2.0, origin and commit in its header and in
tests/verify/data/README.md) are (gold, prediction, expected) triples. They map onto the factory as
`score_math(answer_text=prediction, reference=gold)`: the prediction plays the answer part of a reply (the text after
`</think>`), the gold plays the reference. A case agrees when the verdict is `correct` exactly when math-verify's
expected result is 1. Settings a case gives math-verify (float precision, set/relation comparison) map onto
`MathConfig`; its extraction targets do not (the factory always extracts with its own rules, see `math.py`).

`DELIBERATE` lists where the factory differs on purpose, each with its reason; those cases must keep differing, so
the list cannot go stale. Every other case must agree.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from factory.verify.rewards.math import MathConfig, score_math

DATA = Path(__file__).parent / "data" / "math_verify_cases.json"
CASES = json.loads(DATA.read_text())["cases"]

DELIBERATE: dict[str, str] = {
    "tests/test_all.py::test_number_extraction[6]":
        "reference '1,22': a comma between numbers in a reference is a list separator (MATH's '1,-2'); only a "
        "3-digit group after a comma reads as thousands. Math-verify reads 1.22 only with expr-only extraction",
    "tests/test_all.py::test_latex_notation[5]":
        "'Answer $ \\n 9 \\n $': latex-only extraction in the test; the factory also takes a bare number at the end "
        "of the answer (math-verify's default extraction does too), and 9 is the answer",
    "tests/test_all.py::test_latex_notation[6]":
        "'Answer \\( \\n 9 \\n \\)': as above",
    "tests/test_boxed.py::test_boxed[0]":
        "reference '$\\\\boxed{35 cm} ++++++ \\\\boxed{4}$': boxes are joined only when words, punctuation or spacing "
        "separate them; '++++++' is none of these, so the reference is its last box, 4",
    "tests/test_yujianll.py::test_string_extraction[9]":
        "1 + 1/e vs 1 - 1/e: a false positive of math-verify, which drops `\\mathrm{e}` and compares 1 with 1; the "
        "factory reads `\\mathrm{e}` as e and finds the answers different",
    "tests/test_strict.py::test_strict_variable_comparison[1]":
        "strict=False (f(x) equals f(y)) is a non-default math-verify setting that MathConfig does not expose",
}


def _config(case: dict) -> MathConfig:
    settings = case.get("settings", {})
    kwargs = {}
    if "precision" in settings:
        kwargs["float_rounding"] = settings["precision"]
    if "allow_set_relation_comp" in settings:
        kwargs["allow_set_relation_comp"] = settings["allow_set_relation_comp"]
    return MathConfig(**kwargs)


def _agrees(case: dict) -> tuple[bool, str]:
    result = score_math(case["pred"], case["gold"], cfg=_config(case))
    return (result.verdict == "correct") == bool(case["expected"]), f"{result.verdict}: {result.reason}"


@pytest.mark.parametrize("case", CASES, ids=[c["origin"] for c in CASES])
def test_math_verify_case(case):
    agrees, why = _agrees(case)
    if case["origin"] in DELIBERATE:
        assert not agrees, f"listed as a deliberate difference but now agrees: {case['origin']} ({why})"
    else:
        assert agrees, f"expected {case['expected']}, got {why}"


def test_the_suite_is_whole():
    assert len(CASES) == 269
    assert set(DELIBERATE) <= {c["origin"] for c in CASES}
