"""Math accuracy: find the final answer at the end of the reply and compare it with the reference (math-verify).

Pipeline for one sample:
1. extract (cheap, from the end): the R1-Zero `<answer>` tag when that template was used, else the final statement's
   boxes (`extract.final_boxes`: the last `\\boxed{}` and those before it in the same sentence, separated by words
   with a connective or by spacing, joined as one tuple/set answer), unless an explicit "final answer is …" follows
   them (then that wins); else a configured regex; else "the answer is $…$" or math-verify's own extraction, over
   the tail, or from the last final-answer statement when notes follow it (the search window grows until it finds
   one). A reference that holds boxes or a final-answer statement (a worked solution) is read by the same rule;
2. normalize (our small layer, below): fixes for forms math-verify gets wrong, each covered by a test;
3. fast paths that decide without the LaTeX parser: identical after normalization; both exact rationals
   (integers, fractions, terminating decimals equal as rationals); provably different (`latex_numeric`: numbers,
   expressions at sample points, tuples, sets, intervals, unions, matrices); both plain words (case-insensitive);
   a pre-check (`math_precheck`) that decides answers holding absurdly large powers/factorials without sympy;
4. math-verify `parse` + `verify` (gold parsed once per distinct reference and cached).
Steps 1-4 run under one per-sample deadline (see `timeouts`).

Math-Verify's own parametrized tests run through `score_math` in tests/verify/test_math_verify_suite.py; the cases
where the factory deliberately differs are listed there (`DELIBERATE`) and in tests/verify/data/README.md.
"""
from __future__ import annotations

import functools
import logging
import re
from fractions import Fraction

from factory.verify.config import MathConfig
from factory.verify.rewards.extract import (
    BOX_COMMANDS,
    final_boxes,
    last_boxed,
    last_pattern,
    last_statement,
    last_tag,
    tail,
)
from factory.verify.rewards.latex_numeric import provably_different
from factory.verify.rewards.math_precheck import too_large
from factory.verify.rewards.result import RewardResult
from factory.verify.rewards.timeouts import SampleTimeout, deadline

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------------------------
def extract_answer(answer_text: str, template: str | None, cfg: MathConfig) -> tuple[str | None, str]:
    """(answer, how it was found) from the answer part of a reply; (None, why) when there is none."""
    if template == "r1_zero":
        tagged = last_tag(answer_text, "answer")
        if tagged is not None:
            inner = _boxes(tagged, cfg)
            if inner is not None:
                return inner[0], "\\boxed{} inside the last <answer> tag"
            if tagged.strip():
                return tagged.strip(), "last <answer> tag"
    boxed = _boxes(answer_text, cfg)
    if boxed is not None:
        stated = _stated(answer_text, last_statement(answer_text, cfg.fallback_tail_chars or 600, boxed[2], True),
                         cfg)
        if stated is not None:
            return stated, "'final answer is …' after the last \\boxed{}"
        return boxed[0], "last \\boxed{}" + (" (the boxes of one statement joined)" if boxed[3] else "")
    if cfg.answer_pattern:
        found = last_pattern(answer_text, _compiled(cfg.answer_pattern), cfg.pattern_window_chars)
        if found is not None and found.strip():
            return found.strip(), "answer_pattern"
    if cfg.fallback_tail_chars and answer_text.strip():
        return _fallback(answer_text, cfg)
    return None, "no \\boxed{}, <answer> tag or recognisable final answer"


def _boxes(text: str, cfg: MathConfig) -> tuple[str, int, int, bool] | None:
    """(content, start, end, several) of the final statement's boxes (the last box only without joining)."""
    if cfg.join_adjacent_boxes:
        found = final_boxes(text)
        return None if found is None else (*found, _several(text, found))
    content = last_boxed(text, False)
    return None if content is None else (content, 0, len(text), False)


def _several(text: str, found: tuple[str, int, int]) -> bool:
    return sum(text.count(c, found[1], found[2]) for c in BOX_COMMANDS) > 1


def _stated(text: str, at: int, cfg: MathConfig, need_math: bool = True) -> str | None:
    """The answer a final-answer statement starting at `at` gives (`$…$` after it, else math-verify's extraction
    over the statement and what follows); None when there is none (or, with `need_math`, only text)."""
    if at < 0:
        return None
    snippet = text[at:at + max(cfg.fallback_tail_chars, 600)]
    found = _PHRASE.search(snippet)
    if found is not None and found.group(1).strip():
        return found.group(1).strip()
    if too_large(snippet):
        return None
    parsed = _mv_parse_text(unwrap_constants(snippet))
    strings = [p for p in parsed if isinstance(p, str)]
    if not strings or not strings[-1].strip() or (need_math and not _has_math_object(tuple(parsed))):
        return None
    return strings[-1].strip()


def _fallback(text: str, cfg: MathConfig) -> tuple[str | None, str]:
    """No box: 'the answer is $…$' or math-verify's extraction, over the tail or from the last final statement."""
    n = cfg.fallback_tail_chars
    at = last_statement(text, n)
    snippet, where = tail(text, n), f"the last {n} chars"
    if 0 <= at < len(text) - n:  # the final statement is followed by more than n chars of notes: start there
        snippet, where = text[at:at + n], "the final-answer statement"
    found = last_pattern(snippet, _PHRASE, len(snippet))
    if found is not None and found.strip():
        return found.strip(), "'the answer is $…$' phrase"
    big = too_large(snippet)
    if big:  # math-verify would build the number while extracting: take the statement's words as they are
        plain = last_pattern(snippet, _PLAIN, len(snippet))
        if plain is not None and plain.strip():
            return plain.strip(), f"'the answer is …' phrase (too large for math-verify's extraction: {big})"
        return None, f"the end of the answer is too large to parse ({big})"
    parsed = _mv_parse_text(unwrap_constants(snippet))
    strings = [p for p in parsed if isinstance(p, str)]
    if strings and strings[-1].strip():
        return strings[-1].strip(), f"math-verify extraction over {where}"
    return None, "no \\boxed{}, <answer> tag or recognisable final answer"


@functools.lru_cache(maxsize=4096)
def _reference_answer(reference: str, join: bool, tail_chars: int) -> str:
    """The answer a reference states, by the rule for replies when it holds boxes (with a later 'final answer is'
    winning) or a final-answer statement (a worked solution); else the reference as written."""
    cfg = MathConfig(join_adjacent_boxes=join, fallback_tail_chars=tail_chars or 600)
    boxed = _boxes(reference, cfg)
    at = last_statement(reference, cfg.fallback_tail_chars, boxed[2] if boxed else 0, True)
    stated = _stated(reference, at, cfg, need_math=False) if at >= 0 else None
    return stated or (boxed[0] if boxed and boxed[0] else reference)


_PHRASE = re.compile(r"answer\s*(?:is|:|=)\s*:?\s*\$\$?((?:\\.|[^$\\]){1,300})\$", re.IGNORECASE)
_PLAIN = re.compile(r"answer\s*(?:is|:|=)\s*:?\s*([^\n$]{1,300}?)\s*(?:\.(?:\s|$)|\n|$)", re.IGNORECASE)


@functools.lru_cache(maxsize=64)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.DOTALL)


# --------------------------------------------------------------------------------------------------------------
# Normalization layer: each rule exists because math-verify 0.9 gets that form wrong (see tests/test_rewards_math)
# --------------------------------------------------------------------------------------------------------------
_UNICODE = {"°": "^\\circ", "−": "-", "–": "-", "×": "\\times", "·": "\\cdot", "÷": "\\div", "≤": "\\le",
            "≥": "\\ge", "≠": "\\ne", "∞": "\\infty", "π": "\\pi", "√": "\\sqrt", "∪": "\\cup",
            "∩": "\\cap",
            "\u00a0": " ", "\u2009": " "}
_UNICODE_RE = re.compile("|".join(map(re.escape, _UNICODE)))
_OVERLINE = re.compile(r"(-?)(\d*)\.(\d*)\\overline\{?(\d+)\}?")
_DELIMS = [("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")]
_TEXT_WRAP = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_WORDS = re.compile(r"[A-Za-z]{2,}(?:[ '][A-Za-z]{2,})*")
_BASE = re.compile(r"^([0-9A-Za-z]+)_\{?(\d+)\}?$")


def _overline_to_fraction(m: re.Match) -> str:
    sign, whole, fixed, rep = m.groups()
    value = Fraction(int(whole or 0)) + Fraction(int(fixed or 0), 10 ** len(fixed)) \
        + Fraction(int(rep), (10 ** len(rep) - 1) * 10 ** len(fixed))
    return f"{sign}\\frac{{{value.numerator}}}{{{value.denominator}}}"


_CONSTANT = re.compile(r"\\(?:mathrm|operatorname|mathit|rm)\s*\{\s*([ei])\s*\}")
_FUNCTIONS = ("sin", "cos", "tan", "cot", "sec", "csc", "arcsin", "arccos", "arctan", "sinh", "cosh", "tanh", "log",
              "ln", "exp", "det", "gcd", "min", "max")
_OPERATOR = re.compile(r"\\operatorname\s*\{\s*(" + "|".join(_FUNCTIONS) + r")\s*\}")
_SPACED_THOUSANDS = re.compile(r"-?\d{1,3}(?:(?:[ ~]|\\[ ,;:!])\d{3})+(?:\.\d+)?")


def unwrap_constants(s: str) -> str:
    """`\\mathrm{e}` / `\\operatorname{i}` -> e / i and `\\operatorname{sin}` -> `\\sin` (math-verify cut `1 -
    \\frac{1}{\\mathrm{e}}` to `1 - \\frac{1}{` and kept `\\operatorname{e}^2` as text only)."""
    if "\\m" not in s and "\\o" not in s and "\\rm" not in s:
        return s
    return _OPERATOR.sub(r"\\\1", _CONSTANT.sub(r"\1", s))


def normalize(answer: str) -> str:
    """Clean an extracted answer or a reference before comparison (keeps its meaning)."""
    s = answer.strip()
    for left, right in _DELIMS:
        if s.startswith(left) and s.endswith(right) and len(s) > len(left) + len(right):
            s = s[len(left):-len(right)].strip()
            break
    s = _UNICODE_RE.sub(lambda m: _UNICODE[m.group(0)], s)  # "90°" was not parsed at all
    s = _OVERLINE.sub(_overline_to_fraction, s)  # "0.\overline{3}" was unparseable
    s = unwrap_constants(s)
    if _SPACED_THOUSANDS.fullmatch(s):  # "1 000" was read as 1*0 = 0
        s = re.sub(r"[ ~]|\\[ ,;:!]", "", s)
    s = re.sub(r"(?<=[\w}])\s*(?:\.|\\\.)$", "", s)  # "4." (sentence full stop inside the box) was unparseable
    return s.strip()


def _fast_key(s: str) -> str:
    """A spelling-insensitive key: equal keys mean equal strings up to spacing and sizing commands."""
    s = re.sub(r"\\(?:left|right|displaystyle|!|,|;|:)", "", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = re.sub(r"\s+", " ", s)
    return re.sub(r" ?([^\w\\ ]) ?", r"\1", s).strip()


_INT = re.compile(r"^-?\d+$")
_DEC = re.compile(r"^-?(\d+\.\d*|\.\d+)$")
_FRAC = re.compile(r"^(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}$|^(-?)\\frac(\d)(\d)$|^(-?\d+)\s*/\s*(-?\d+)$")


def _exact_number(key: str) -> tuple[Fraction, bool] | None:
    """(value, is_decimal) for integers, simple fractions and terminating decimals; None otherwise."""
    if _INT.match(key):
        return Fraction(int(key)), False
    if _DEC.match(key):
        return Fraction(key), True
    m = _FRAC.match(key)
    if m:
        if m.group(2) is not None:
            sign, num, den = m.group(1), m.group(2), m.group(3)
        elif m.group(5) is not None:
            sign, num, den = m.group(4), m.group(5), m.group(6)
        else:
            sign, num, den = "", m.group(7), m.group(8)
        if int(den) == 0:
            return None
        value = Fraction(int(num), int(den))
        return (-value if sign else value), False
    return None


def _plain_words(s: str) -> str | None:
    inner = _TEXT_WRAP.sub(lambda m: m.group(1), s).strip()
    return inner.casefold() if _WORDS.fullmatch(inner) and not _INT.match(inner) else None


def fast_compare(gold: str, pred: str) -> tuple[bool, str] | None:
    """Decide without the LaTeX parser when that is certain; None to defer to math-verify."""
    kg, kp = _fast_key(gold), _fast_key(pred)
    if kg == kp:
        return True, "identical after normalization"
    ng, np_ = _exact_number(kg), _exact_number(kp)
    if ng is not None and np_ is not None:
        if ng[0] == np_[0]:
            return True, "equal as exact numbers"
        if not (ng[1] or np_[1]):  # decimals are compared by math-verify with its rounding rules
            return False, "different exact numbers"
    different = provably_different(gold, pred)
    if different:
        return False, different
    wg, wp = _plain_words(gold), _plain_words(pred)
    if wg is not None and wp is not None:  # math-verify compared plain words case-sensitively ("evelyn")
        return (wg == wp), ("same words (case-insensitive)" if wg == wp else "different words")
    bg, bp = _BASE.match(kg), _BASE.match(kp)
    if bg and bp and bg.group(2) != bp.group(2):  # math-verify drops base subscripts: 52_8 == 52_9 otherwise
        return False, f"different bases ({bg.group(2)} vs {bp.group(2)})"
    return None


# --------------------------------------------------------------------------------------------------------------
# math-verify
# --------------------------------------------------------------------------------------------------------------
def _silence_math_verify() -> None:
    # We pass timeouts of None (our own deadline covers the whole sample); math-verify then warns once per process
    # that timeouts are off. That is intended here, so mark its one-time warnings as already shown.
    import math_verify.grader
    import math_verify.parser

    math_verify.parser.TIMEOUT_WARNING_SHOWN = True
    math_verify.grader.TIMEOUT_WARNING_SHOWN = True
    logging.getLogger("math_verify").setLevel(logging.ERROR)


@functools.cache
def _mv():
    import math_verify

    _silence_math_verify()
    return math_verify


@functools.cache
def warm_up() -> None:
    """Import math-verify and build its parser's tables once, outside any per-sample deadline (in a fresh worker
    process this takes seconds under load, which would otherwise be charged to the first sample as a timeout)."""
    _mv().parse("\\boxed{\\frac{1}{2}+\\sqrt{2}x}", parsing_timeout=None)


def _mv_parse_text(text: str) -> list:
    mv = _mv()
    return mv.parse(text, parsing_timeout=None)


@functools.lru_cache(maxsize=8192)
def _parse_boxed(answer: str) -> tuple:
    """math-verify's parse of one answer, as if it were written `\\boxed{answer}` (cached: k samples repeat)."""
    return tuple(_mv_parse_text("\\boxed{" + answer + "}"))


def _has_math_object(parsed: tuple) -> bool:
    return any(not isinstance(p, str) for p in parsed)


def compare(gold: str, pred: str, cfg: MathConfig) -> tuple[str, str]:
    """(verdict, reason) for a normalized reference and answer: correct | wrong | unparseable."""
    fast = fast_compare(gold, pred)
    if fast is not None:
        return ("correct" if fast[0] else "wrong"), fast[1]
    big_g, big_p = too_large(gold), too_large(pred)
    if big_g or big_p:  # math-verify would run into the deadline building the number; decide without it
        if big_g and big_p:
            return "unparseable", f"both too large to verify ({big_p}) and not written the same way"
        return "wrong", f"the {'reference' if big_g else 'answer'} holds {big_g or big_p}, the other side does not"
    g, p = _parse_boxed(gold), _parse_boxed(pred)
    if not g:
        return "unparseable", "the reference answer could not be parsed"
    if not p:
        return "unparseable", "the answer could not be parsed"
    ok = _mv().verify(list(g), list(p), float_rounding=cfg.float_rounding, numeric_precision=cfg.numeric_precision,
                      allow_set_relation_comp=cfg.allow_set_relation_comp, timeout_seconds=None)
    if ok:
        return "correct", "math-verify: equivalent"
    if not _has_math_object(p) and _has_math_object(g):
        return "unparseable", "the answer is not valid LaTeX/math (math-verify kept only its text)"
    return "wrong", "math-verify: not equivalent"


def _short(s: str, n: int = 80) -> str:
    s = s.replace("\n", " ")
    return s if len(s) <= n else s[:n] + "…"


def score_math(answer_text: str, reference: str | None, template: str | None = None,
               cfg: MathConfig | None = None) -> RewardResult:
    """Math accuracy of one reply; verdicts: correct|wrong|no_answer|no_reference|unparseable|timeout."""
    cfg = cfg or MathConfig()
    warm_up()
    extracted: str | None = None
    try:
        with deadline(cfg.timeout_s):
            raw, how = extract_answer(answer_text or "", template, cfg)
            if raw is None:
                return RewardResult(0.0, "no_answer", how)
            extracted = normalize(raw)
            if not extracted:
                return RewardResult(0.0, "no_answer", f"{how} is empty", extracted=raw)
            if reference is None or not reference.strip():
                return RewardResult(0.0, "no_reference", "no reference answer to compare with", extracted)
            gold = normalize(_reference_answer(reference, cfg.join_adjacent_boxes, cfg.fallback_tail_chars))
            verdict, why = compare(gold, extracted, cfg)
    except SampleTimeout:
        return RewardResult(0.0, "timeout", f"verification took over {cfg.timeout_s:g} s", extracted)
    reason = f"{why}: {_short(extracted)!r} vs reference {_short(gold)!r} ({how})"
    return RewardResult(1.0 if verdict == "correct" else 0.0, verdict, reason, extracted)


def answers_equivalent(a: str, b: str, cfg: MathConfig | None = None) -> bool:
    """Whether two extracted answers are the same (for majority voting); never raises."""
    cfg = cfg or MathConfig()
    warm_up()
    try:
        with deadline(cfg.timeout_s):
            return compare(normalize(a), normalize(b), cfg)[0] == "correct"
    except SampleTimeout:
        return False
