"""The final-answer statement: boxes joined by words or spacing, references read by the same rule, a later 'final
answer is' winning over intermediate boxes, the search window growing, `\\mathrm{e}` kept, spaced thousands; and the
pre-check that keeps absurdly large answers away from math-verify."""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from factory.verify.rewards.extract import final_boxes, last_boxed, last_statement
from factory.verify.rewards.math import (
    MathConfig,
    extract_answer,
    normalize,
    score_math,
)
from factory.verify.rewards.math_precheck import log10_magnitude, too_large

CFG = MathConfig()
BENCH = Path(__file__).resolve().parents[3] / "shared/data/benchmarks"


@pytest.mark.parametrize("text,joined", [
    (r"$$\boxed{(2, 2)} \quad \text{and} \quad \boxed{(6, 2)}$$", "(2, 2), (6, 2)"),
    (r"\(\boxed{1}\) and \(\boxed{-2}\).", "1, -2"),
    (r"\boxed{1} papers and \boxed{2} bins", "1, 2"),
    (r"\boxed{(3, 3)} \text{ for part (a) and } \boxed{(1, 1)}", "(3, 3), (1, 1)"),
    (r"\($y_1 = \boxed{-2(x - 1)^2 + 5} \) and \( y_2 = \boxed{3(x + 2)^2 - 2} \)", "-2(x - 1)^2 + 5, 3(x + 2)^2 - 2"),
    (r"\boxed{1},\boxed{2},\boxed{3}", "1, 2, 3"),
    (r"(a) \boxed{3} (b) \boxed{4}", "3, 4"),
    (r"First I thought \boxed{3}. Actually the roots are $\boxed{1}$ and $\boxed{-2}$.", "1, -2"),  # . ends it
    (r"\boxed{1} no no no no no \boxed{2}", "2"),  # words without a connective: two statements
    ("\\boxed{3}\n\\boxed{4}", "4"),  # a line break ends the statement
    (r"\boxed{2} + \boxed{3}", "3"),  # math between boxes: not one answer
    (r"\boxed{7} since 2+3=5 and \boxed{5}", "5"),
    (r"$\boxed{3}$ is the minimum value, attained when $x = \boxed{2}$", "2"),  # prose about two results
])
def test_final_boxes_joins_the_boxes_of_one_statement(text, joined):
    assert final_boxes(text)[0] == joined


def test_joining_can_be_switched_off():
    text = r"$$\boxed{(2, 2)} \quad \text{and} \quad \boxed{(6, 2)}$$"
    assert extract_answer(text, "chat", MathConfig(join_adjacent_boxes=False))[0] == "(6, 2)"


def test_final_boxes_leaves_choice_extraction_alone():
    assert last_boxed(r"\boxed{1} papers and \boxed{2} bins") == "2"  # choice.py's last_boxed is unchanged


def test_several_boxes_score_as_one_answer():
    assert score_math(r"$$\boxed{(2, 2)} \quad \text{and} \quad \boxed{(6, 2)}$$", "(2, 2), (6, 2)").verdict == "correct"
    assert score_math(r"$$\boxed{(2, 2)} \quad \text{and} \quad \boxed{(6, 2)}$$", "(6, 2)").verdict == "wrong"
    assert score_math(r"The roots are $\boxed{-2}$ and $\boxed{1}$.", "1,-2").verdict == "correct"


@pytest.mark.parametrize("reference,answer", [
    (r"\(\boxed{1}\) and \(\boxed{-2}\).", r"$\boxed{-2,1}$."),
    (r"\boxed{1} papers and \boxed{2} bins", r"$\boxed{1,2}$"),
    (r"So $x = \boxed{3}$. The final answer is $5$.", r"\boxed{5}"),  # a worked reference: its statement counts
    ("A long solution. Final Answer: The final answer is $28 \\%$. I hope it is correct. " + "Note: ... " * 80,
     r"\boxed{28\%}"),
])
def test_references_follow_the_same_rule(reference, answer):
    assert score_math(answer, reference).verdict == "correct"


def test_short_references_are_taken_as_written():
    for ref in ("x=5", "1,-2", r"\text{Evelyn}", r"\frac{14}{3}", "(3,4]"):
        assert score_math(f"\\boxed{{{ref}}}", ref).verdict == "correct", ref
    r = score_math(r"\boxed{W(n) = 1}", r"\\boxed{W(n) = 1 \\text{ and }")  # unbalanced box: the reference as is
    assert r.verdict in ("correct", "wrong", "unparseable")


def test_a_stated_final_answer_after_intermediate_boxes_wins():
    text = (r"Step 2: $0.05 \cdot 10,200 \cdot \frac{1}{2} = \boxed{255}$ So he has $10,200 + $255 = $10,455. "
            r"Final Answer: The final answer is $10,455$. I hope it is correct.")
    answer, how = extract_answer(text, "chat", CFG)
    assert answer == "10,455" and "final answer" in how
    assert score_math(text, "10455").verdict == "correct"
    # a box inside or after the statement is the statement's answer; a statement without math does not override
    assert extract_answer(r"The final answer is $\boxed{7}$.", "chat", CFG)[0] == "7"
    assert extract_answer("\\boxed{7}\n\nI am sure the final answer is correct.", "chat", CFG)[0] == "7"


def test_the_search_window_grows_until_it_finds_the_final_statement():
    notes = " [Note: it is always a good idea to double-check the calculations.]" * 40  # ~2.7k chars of notes
    text = "We find N = 14916. Final Answer: The final answer is $14 {, }916$. I hope it is correct." + notes
    assert len(notes) > CFG.fallback_tail_chars
    assert score_math(text, r"\boxed{14{,}916}").verdict == "correct"
    assert last_statement("no statement here " * 500, 600) == -1
    assert last_statement("the answer is 3" + "x" * 5000, 600) == 4


@pytest.mark.parametrize("gold,pred", [
    (r"1 - \frac{1}{\mathrm{e}}", r"$1 - \frac{1}{\mathrm{e}}$"),
    (r"1 - \frac{1}{e}", r"\boxed{1 - \frac{1}{\mathrm{e}}}"),
    (r"e^2", r"\boxed{\operatorname{e}^2}"),
    (r"2\mathrm{i}", r"\boxed{2i}"),
    (r"\sin x", r"\boxed{\operatorname{sin} x}"),
])
def test_mathrm_and_operatorname_constants_survive(gold, pred):
    assert score_math(pred, gold).verdict == "correct"


def test_mathrm_e_is_e_so_a_sign_error_is_wrong():
    assert score_math(r"$1 + \frac{1}{\mathrm{e}}$", r"1 - \frac{1}{\mathrm{e}}").verdict == "wrong"


@pytest.mark.parametrize("text", ["1 000", "1 000 000", r"1\,000", r"1\ 000", "12 345.5", "-1 000"])
def test_space_grouped_thousands(text):
    value = normalize(text).replace("-", "")
    assert value in ("1000", "1000000", "12345.5")
    assert score_math(f"\\boxed{{{text}}}", re.sub(r"[^\d.-]", "", text)).verdict == "correct"
    assert normalize("2 3") == "2 3" and normalize("12 34") == "12 34"  # not thousands groups: left alone


# --- the pre-check ------------------------------------------------------------------------------------------------
PATHOLOGICAL = ["9^{9^{9}}", "(10^{10})!", "99999999999^{99999999}", "10^{10^{10}}", "e^{10^{10}}", "2^{1000!}",
                "9^{9^{9^{9^{9^{9^{9^{9^{9^{9}}}}}}}}}", "2^{" * 300 + "2" + "}" * 300, r"\left(10^{10}\right)!"]


def _best_of_3(fn) -> float:
    times = []
    for _ in range(3):
        log10_magnitude.cache_clear()  # time the work, not the cache
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


@pytest.mark.parametrize("answer", PATHOLOGICAL)
def test_absurdly_large_answers_are_decided_at_once(answer):
    assert too_large(answer)
    assert _best_of_3(lambda: too_large(answer)) < 0.05
    start = time.perf_counter()
    r = score_math(f"\\boxed{{{answer}}}", "5")
    assert r.verdict == "wrong" and "digits" in r.reason and time.perf_counter() - start < 0.5, r
    assert score_math(r"\boxed{5}", answer).verdict == "wrong"  # the same for a reference
    r = score_math(f"So the final answer is {answer}. Done.", "5")  # no box: the statement, not math-verify's parse
    assert r.verdict == "wrong" and time.perf_counter() - start < 0.5, r
    assert score_math(f"\\boxed{{{answer}}}", answer).verdict == "correct"  # written the same way: equal


@pytest.mark.parametrize("answer", ["2^{2^{2^{2^{2}}}}", "100000!", "7^{7^{7}}", "2^{100000}", r"\frac{1}{2004!}",
                                    "10^{100}", "x^{10^{10}}", "5!!", r"2\!", "3 != 4", "(-1)^{n}", "0.5^{3}"])
def test_large_but_normal_answers_pass_the_pre_check(answer):
    assert too_large(answer) is None


def test_the_pre_check_is_linear_on_long_inputs():
    for text in ["x^2+" * 5000, "1!" * 3000, "2^{10}" * 4000, "{" * 2000 + "}" * 2000 + "^{9}", "(x)^{2}" * 3000,
                 "2^{" + "x+" * 1900 + "1}", "(" * 1900 + "9" + ")" * 1900 + "!"]:
        assert _best_of_3(lambda t=text: too_large(t)) < 0.05, text[:40]  # best of 3: the CI machine is shared


def test_log10_magnitude():
    assert log10_magnitude("9^{9}") == pytest.approx(9 * 0.9542425, rel=1e-6)
    assert log10_magnitude("10^{10^{10}}") == pytest.approx(1e10)
    assert log10_magnitude("x^2") is None


def test_the_pre_check_never_fires_on_benchmark_or_suite_answers():
    answers = [str(json.loads(line)["answer"]) for name in ("math500", "aime24", "amc23")
               for line in (BENCH / f"{name}.jsonl").open()]
    suite = json.loads((Path(__file__).parent / "data" / "math_verify_cases.json").read_text())["cases"]
    answers += [c[k] for c in suite for k in ("gold", "pred")]
    assert [a for a in answers if too_large(a)] == []


def test_plain_math_verify_gets_these_forms_wrong():
    """Honesty check: the normalization rules added here fix real math-verify 0.9 behaviour."""
    from math_verify import parse, verify

    assert not verify(parse(r"\boxed{1000}"), parse(r"\boxed{1 000}"))  # read as 1*0
    assert verify(parse(r"$1 - \frac{1}{\mathrm{e}}$"), parse(r"$1 + \frac{1}{\mathrm{e}}$"))  # \mathrm{e} dropped
    assert not any(not isinstance(p, str) for p in parse(r"\boxed{\operatorname{e}^2}"))  # text only
