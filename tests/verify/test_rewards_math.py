"""Math accuracy: a table of tricky equivalences both ways, MATH-500 answers in other valid forms, extraction from
the tail only, timeouts, and the verdicts for bad input."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from factory.verify.rewards import math as rmath
from factory.verify.rewards.math import MathConfig, compare, extract_answer, normalize, score_math

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO.parent / "shared/data/benchmarks"
CFG = MathConfig()

# (reference, answer): equal both ways. Rows marked "fix" failed with plain math-verify 0.9 and pass through our
# normalization layer (factory/verify/rewards/math.py).
EQUAL = [
    (r"\frac{3}{56}", "3/56"),
    (r"\frac{\sqrt{2}}{2}", r"\sqrt{2}/2"),
    (r"\frac{\sqrt2}{2}", r"\frac{1}{\sqrt{2}}"),
    (r"2\sqrt{3}", r"\sqrt{12}"),
    (r"[1,2)", r"[1, 2)"),
    (r"(-\infty, 3]", r"(-\infty,3]"),
    (r"\{1,2\}", r"\{2,1\}"),
    (r"1, 2", r"\{1,2\}"),
    (r"50\%", "50"),
    (r"50\%", "0.5"),
    (r"30^\circ", "30"),
    (r"30^{\circ}", r"30^\circ"),
    ("90^\\circ", "90°"),  # fix: unicode degree sign
    (r"5\text{ cm}", "5"),
    (r"\text{Monday}", "Monday"),
    ("Evelyn", "evelyn"),  # fix: plain words were compared case-sensitively
    (r"\text{(C)}", "C"),
    ("0.5", r"\frac12"),
    (r"\dfrac{14}{3}", r"4\frac{2}{3}"),
    ("10", "10.0"),
    ("1,000", "1000"),
    ("x=2", "2"),
    ("p - q", "-q + p"),
    (r"\$18.90", "18.90"),
    (r"\pi", r"\frac{2\pi}{2}"),
    (r"\frac{11}{2}", "5.5"),
    ("4", "4."),  # fix: a full stop inside the box made it unparseable
    (r"0.\overline{3}", r"\frac13"),  # fix: repeating decimals were unparseable
    (r"\frac{4}{33}", r"0.\overline{12}"),  # fix
    (r"\sqrt{5}", "5^{1/2}"),
    ("2+i", "i+2"),
    (r"[2,5]", r"2 \le x \le 5"),  # fix (config): interval vs inequality only matched one way round
    (r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", r"\begin{pmatrix}1\\2\end{pmatrix}"),
    (r"y = 2x + 3", "y=3+2x"),
    ("−3", "-3"),  # fix: unicode minus
]

NOT_EQUAL = [
    (r"\frac{3}{56}", r"\frac{56}{3}"),
    ("[1,2)", "(1,2]"),
    (r"\{1,2\}", r"\{1,2,3\}"),
    ("0.5", "0.51"),
    ("x=2", "y=3"),
    (r"\text{Monday}", "Tuesday"),
    (r"(3, \frac{\pi}{2})", r"(\frac{\pi}{2}, 3)"),
    (r"50\%", "5"),
    ("5", "-5"),
    (r"\sqrt{2}/2", r"\sqrt{2}"),
    ("(C)", "D"),
    ("1000", "100"),
    ("2", "2.1"),
    ("p-q", "q-p"),
    ("12", "1, 2"),
    (r"\text{even}", r"\text{odd}"),
    ("-2, 1", "2, -1"),
    (r"\frac{1}{3}", "0.33"),
    ("52_8", "52_9"),  # fix: math-verify drops base subscripts, so different bases compared equal
    (r"0.\overline{3}", "0.3"),
    (r"90^\circ", r"\frac{\pi}{2}"),  # by design: degrees are not converted to radians
]

# MATH-500 references (taken from the file below) and the same answer written another valid way.
MATH500_REWRITES = [
    (r"\left( 3, \frac{\pi}{2} \right)", r"(3, \pi/2)"),
    (r"\text{Evelyn}", "Evelyn"),
    (r"90^\circ", "90"),
    (r"90^\circ", r"90 \text{ degrees}"),
    (r"3\sqrt{13}", r"\sqrt{117}"),
    ("6 - 5i", "-5i + 6"),
    ("x=5", "5"),
    ("1,-2", "-2, 1"),
    ("1,-2", r"\{1,-2\}"),
    ("52_8", "52_{8}"),
    ("1.25", r"\frac{5}{4}"),
    ("0.15", r"\frac{3}{20}"),
    ("0.15", r"15\%"),
    ("(6,31,-1)", "(6, 31, -1)"),
    (r"1 \pm \sqrt{19}", r"1+\sqrt{19}, 1-\sqrt{19}"),
    (r"\begin{pmatrix} -1/3 \\ 2/3 \\ 5/3 \end{pmatrix}",
     r"\begin{pmatrix} -\frac13 \\ \frac23 \\ \frac53 \end{pmatrix}"),
    ("(3,4]", r"3 < x \le 4"),
    (r"\frac{270}7\text{ degrees}", r"\frac{270}{7}^\circ"),
    (r"\frac{270}7\text{ degrees}", "270/7"),
    (".0000672", r"6.72 \times 10^{-5}"),
    (r"10,\!080", "10080"),
    (r"11,\! 111,\! 111,\! 100", "11111111100"),
    (r"\$32,\!348", "32348"),
    (r"864 \mbox{ inches}^2", "864"),
    (r"1\frac{4}{5}", r"\frac{9}{5}"),
    (r"1\frac{4}{5}", "1.8"),
    (r"\dfrac{33}{100}", "0.33"),
    (r"\dfrac{33}{100}", r"33\%"),
    (r"5.4 \text{ cents}", "5.4"),
    (r"\text{(C)}", r"\textbf{(C)}"),
    (r"(0,9) \cup (9,36)", r"(9,36) \cup (0,9)"),
    (r"x \in [-2,7]", "[-2, 7]"),
    (r"x \in [-2,7]", r"-2 \le x \le 7"),
    (r"\{1\pm\sqrt{5},-2\}", r"-2, 1+\sqrt5, 1-\sqrt5"),
    (r"137 \frac{1}{2}", "137.5"),
    (r"\text{east}", "East"),
    (r"15\mbox{ cm}^2", "15"),
    ("58,500", "58500"),
    (r"\text{ellipse}", "ellipse"),
    (r"-\frac{\pi}{6}", r"-\pi/6"),
    (r"(-\infty, 2) \cup (3, \infty)", r"(-\infty,2)\cup(3,\infty)"),
    ("x^3+3x-6", "-6+3x+x^3"),
    ("(a+5)(b+2)", "(b+2)(a+5)"),
    ("2k+2", "2(k+1)"),
    (r"\frac 59", "5/9"),
    (r"\frac{14}{3}", r"4\frac{2}{3}"),
]

MATH500_WRONG = [
    ("52_8", "42"),
    ("(3,4]", "[3,4)"),
    (r"1 \pm \sqrt{19}", r"1+\sqrt{19}"),
    (r"(0,9) \cup (9,36)", "(0,36)"),
    ("1,-2", "1"),
    (r"\text{Evelyn}", r"\text{Navin}"),
    (".0000672", ".000672"),
    ("x=5", "x=-5"),
    (r"\text{east}", r"\text{west}"),
    ("6 - 5i", "6+5i"),
    (r"1\frac{4}{5}", r"\frac{4}{5}"),
    ("(6,31,-1)", "(6,-1,31)"),
    (r"\begin{pmatrix} -1/3 \\ 2/3 \\ 5/3 \end{pmatrix}", r"\begin{pmatrix} 2/3 \\ -1/3 \\ 5/3 \end{pmatrix}"),
    ("x^3+3x-6", "x^3+3x+6"),
    (r"\frac{11+9a}{20}", r"\frac{11+9b}{20}"),
]


def _verdict(gold: str, pred: str) -> str:
    return compare(normalize(gold), normalize(pred), CFG)[0]


@pytest.mark.parametrize("gold,pred", EQUAL + MATH500_REWRITES)
def test_equivalent_both_ways(gold, pred):
    assert _verdict(gold, pred) == "correct", (gold, pred)
    assert _verdict(pred, gold) == "correct", (pred, gold)


@pytest.mark.parametrize("gold,pred", NOT_EQUAL + MATH500_WRONG)
def test_not_equivalent_both_ways(gold, pred):
    assert _verdict(gold, pred) != "correct", (gold, pred)
    assert _verdict(pred, gold) != "correct", (pred, gold)


def test_rewrites_use_real_math500_answers():
    answers = {json.loads(line)["answer"] for line in (BENCH / "math500.jsonl").open()}
    used = {g for g, _ in MATH500_REWRITES + MATH500_WRONG}
    missing = used - answers
    assert not missing, f"not MATH-500 answers: {missing}"


def test_plain_math_verify_gets_the_fixed_rows_wrong():
    """Honesty check: the rows marked 'fix' really fail without our layer (else the layer is dead code)."""
    from math_verify import parse, verify

    def plain(g, p):
        return verify(parse("\\boxed{" + g + "}"), parse("\\boxed{" + p + "}"))

    assert not plain("90^\\circ", "90°")
    assert not plain("Evelyn", "evelyn")
    assert not plain("4", "4.")
    assert not plain(r"0.\overline{3}", r"\frac13")
    assert plain("52_8", "52_9")  # a false positive we turn into "wrong"
    assert not plain("[2,5]", r"2 \le x \le 5")  # default allow_set_relation_comp=False


def test_every_math500_answer_matches_itself_boxed():
    rows = [json.loads(line) for line in (BENCH / "math500.jsonl").open()]
    bad = [r["answer"] for r in rows
           if score_math(f"So the answer is $\\boxed{{{r['answer']}}}$.", r["answer"]).verdict != "correct"]
    assert not bad


# --- extraction ----------------------------------------------------------------------------------------------
def test_last_boxed_wins_and_adjacent_boxes_join():
    text = r"First I thought \boxed{3}. Actually the roots are $\boxed{1}$ and $\boxed{-2}$."
    assert extract_answer(text, "chat", CFG)[0] == "1, -2"
    r = score_math(text, "1,-2")
    assert r.verdict == "correct" and r.extracted == "1, -2"


def test_nested_braces_and_fbox():
    assert extract_answer(r"so \boxed{\frac{\sqrt{3}}{2}} done", "chat", CFG)[0] == r"\frac{\sqrt{3}}{2}"
    assert extract_answer(r"\fbox{7}", "chat", CFG)[0] == "7"
    assert extract_answer(r"answer \boxed 7 here", "chat", CFG)[0] == "7"


def test_r1_zero_answer_tag():
    answer = " <answer> The value is \\boxed{14/3} </answer>"
    assert score_math(answer, r"\frac{14}{3}", template="r1_zero").verdict == "correct"
    assert score_math(" <answer>42</answer>", "42", template="r1_zero").verdict == "correct"


def test_fallback_and_configured_pattern():
    assert score_math("The final answer is $\\frac{1}{2}$.", "0.5").verdict == "correct"
    assert score_math("So the answer is $\\$36$.", "\\$36").verdict == "correct"  # escaped dollar inside
    assert score_math("Thus the answer is 12, as claimed.", "12").verdict == "correct"  # math-verify's own anchors
    cfg = MathConfig(answer_pattern=r"ANSWER:\s*(\S+)", fallback_tail_chars=0)
    assert score_math("blah\nANSWER: 17\n", "17", cfg=cfg).verdict == "correct"
    assert score_math("blah, no answer here", "17", cfg=cfg).verdict == "no_answer"


def test_only_the_short_answer_reaches_math_verify(monkeypatch):
    """A 20k-token trace is not parsed whole: math-verify only ever sees the extracted answer."""
    import math_verify

    seen: list[int] = []
    real_parse = math_verify.parse

    def counting_parse(text, *a, **k):
        seen.append(len(text))
        return real_parse(text, *a, **k)

    monkeypatch.setattr(math_verify, "parse", counting_parse)
    rmath._parse_boxed.cache_clear()
    from factory.verify.verdicts import score_record

    # ~100k chars of reasoning full of LaTeX, with a decoy box; the answer part comes after </think>.
    reasoning = "Let $x^2 + \\frac{a}{b} = \\int_0^1 f(t)\\,dt$ and consider \\boxed{999}. " * 1600
    answer_text = "After all that, the result is $\\boxed{\\frac{7}{3}}$."
    assert len(reasoning) > 80_000
    record = {"prompt_id": "p", "domain": "math", "answer": r"\frac{14}{6}", "template": "chat",
              "completion": f"<think>\n{reasoning}\n</think>\n\n{answer_text}", "reasoning": reasoning,
              "answer_text": answer_text, "think_closed": True, "finish_reason": "stop"}
    out = score_record(record)
    assert (out["accuracy_verdict"], out["extracted_answer"]) == ("correct", r"\frac{7}{3}")
    out = score_record({**record, "answer": r"\sin x"})  # a function: only math-verify can decide
    assert out["accuracy_verdict"] == "wrong"
    assert seen and max(seen) < 100, seen


# --- bad input -----------------------------------------------------------------------------------------------
def test_no_reference_is_a_verdict_not_a_crash():
    r = score_math("\\boxed{5}", None)
    assert (r.verdict, r.reward, r.extracted) == ("no_reference", 0.0, "5")
    assert score_math("\\boxed{5}", "  ").verdict == "no_reference"


def test_no_answer():
    r = score_math("I give up.", "5", cfg=MathConfig(fallback_tail_chars=0))
    assert r.verdict == "no_answer" and r.reward == 0.0
    assert score_math("", "5").verdict == "no_answer"
    assert score_math("\\boxed{}", "5").verdict == "no_answer"


def test_unparseable_answer():
    r = score_math(r"\boxed{\frac{3}{\left(}", "5")
    assert r.verdict in ("unparseable", "wrong")
    r = score_math(r"\boxed{@@##!!}", "5")
    assert r.verdict == "unparseable", r


def test_timeout_is_a_verdict():
    cfg = MathConfig(timeout_s=0.5)
    r = score_math(r"\boxed{\int_0^1 e^{-x^2}\sin(x^{7}) dx}", "5", cfg=cfg)
    assert r.verdict == "timeout" and r.reward == 0.0
    # the process is fine afterwards: the next sample verifies normally
    assert score_math(r"\boxed{5}", "5", cfg=cfg).verdict == "correct"


def test_outside_the_main_thread_runs_without_timeout():
    out = {}

    def work():
        out["r"] = score_math(r"\boxed{\frac{6}{4}}", "1.5", cfg=MathConfig(timeout_s=1))

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert out["r"].verdict == "correct"


def test_config_rejects_unknown_keys_and_bad_values():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="extra"):
        MathConfig(timeout=3)
    with pytest.raises(ValidationError, match="timeout_s"):
        MathConfig(timeout_s=0)
    with pytest.raises(ValidationError, match="regex"):
        MathConfig(answer_pattern="(")


# --- the "provably different" fast path must agree with math-verify ---------------------------------------------
from factory.verify.rewards.latex_numeric import numeric_value, provably_different  # noqa: E402


@pytest.mark.parametrize("a,b", [
    ("i^2", "-1"), (r"4\frac{2}{3}", "14/3"), ("1,000", "1000"), (r"(0,9) \cup (9,36)", r"(9,36) \cup (0,9)"),
    (r"\{1,2\}", r"\{2,1\}"), ("2k+2", "2(k+1)"), (r"e^{i\pi}", "-1"), ("-2, 1", "1, -2"),
    (r"\frac{1}{2\pi}", r"1/2\pi"),
    (r"\sqrt{2}/2", r"\frac{1}{\sqrt2}"), ("30^\\circ", "30"), ("(x+1)^2", "x^2+2x+1"), (r"2^{10}", "1024"),
    (r"\frac{1}{3}", "0.333333"), ("6 - 5i", "-5i + 6"),
    (r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", r"\begin{pmatrix}1\\2\end{pmatrix}"),
])
def test_provably_different_never_fires_on_equal_answers(a, b):
    assert provably_different(a, b) is None and provably_different(b, a) is None


@pytest.mark.parametrize("a,b", [
    ("6+9i", "8+9i"), ("x^5 - x^4 + x^3", "x^5 - x^4 + x^8"), ("(15,-29)", "(16,-29)"), ("-2,1", "-2,9"),
    (r"(-\infty, 2) \cup (3, \infty)", r"(-\infty, 0) \cup (3, \infty)"), (r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}",
    r"\begin{pmatrix} 1 \\ 3 \end{pmatrix}"), (r"\frac{\sqrt{3}}{3}", r"\frac{\sqrt{7}}{3}"),
    ("76^\\circ", "66^\\circ"),
    ("2k+2", "2k+3"), (r"\{1, 2\}", r"\{1, 3\}"),
])
def test_provably_different_fires_where_math_verify_also_says_different(a, b):
    from math_verify import parse, verify

    assert provably_different(a, b) and provably_different(b, a)
    assert not verify(parse("\\boxed{" + a + "}"), parse("\\boxed{" + b + "}"), allow_set_relation_comp=True)


def test_provably_different_is_sound_on_math500_pairs():
    """On real answers (perturbed and unrelated pairs), whenever the fast path says 'different', math-verify too."""
    import random

    from math_verify import parse, verify

    answers = [json.loads(line)["answer"] for line in (BENCH / "math500.jsonl").open()]
    rng = random.Random(1)
    pairs = []
    for a in rng.sample(answers, 60):
        digits = [i for i, c in enumerate(a) if c.isdigit()]
        if digits:
            i = rng.choice(digits)
            pairs.append((a, a[:i] + str((int(a[i]) + 1) % 10) + a[i + 1:]))
        pairs.append((a, rng.choice(answers)))
    fired = 0
    for a, b in pairs:
        if provably_different(normalize(a), normalize(b)):
            fired += 1
            g, p = parse("\\boxed{" + a + "}"), parse("\\boxed{" + b + "}")
            assert not verify(g, p, allow_set_relation_comp=True, timeout_seconds=10), (a, b)
    assert fired > len(pairs) // 2


def test_numeric_value_gives_up_on_what_it_does_not_know():
    for text in ["50\\%", "1/2\\pi", "4\\frac{2}{3}", "2^10", "\\sin x", "f(x)", "ab", "x_1", "\\sqrt{-1}", "3 4"]:
        assert numeric_value(text, {"x": 1.0, "a": 1.0, "b": 2.0, "f": 3.0}) is None, text
    assert numeric_value("3\\sqrt{13}") == pytest.approx(10.8166538)
    assert numeric_value("i^2") == -1


def test_an_enclosing_alarm_survives_a_sample_deadline():
    import signal
    import time

    from factory.verify.rewards.timeouts import deadline

    fired = []
    previous = signal.signal(signal.SIGALRM, lambda *_: fired.append(time.monotonic()))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.4)
        with deadline(5):
            pass
        left = signal.getitimer(signal.ITIMER_REAL)[0]
        assert 0 < left <= 0.4
        time.sleep(0.6)
        assert fired, "the enclosing alarm was cancelled"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
