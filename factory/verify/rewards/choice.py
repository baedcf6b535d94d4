"""Multiple-choice letters and exact / numeric answers (science, logic, general prompts with a short reference)."""
from __future__ import annotations

import math
import re

from factory.verify.config import ChoiceConfig, ExactConfig  # noqa: F401
from factory.verify.rewards.extract import last_boxed, last_tag, tail
from factory.verify.rewards.result import RewardResult

_WRAPPERS = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")


def _unwrap(s: str) -> str:
    s = _WRAPPERS.sub(lambda m: m.group(1), s)
    return s.replace("$", "").replace("**", "").strip()


def letter_of(text: str, letters: str) -> str | None:
    """The letter in a short answer like "C", "(C)", "\\text{(C)}", "C) 12", "C." or "Option C"."""
    s = _unwrap(text)
    m = re.fullmatch(rf"(?:option|choice|answer)?\s*:?\s*\(?\s*([{letters}])\s*\)?\s*[.:]?", s, re.IGNORECASE)
    if m and (m.group(1).isupper() or len(s) <= 3):
        return m.group(1).upper()
    m = re.match(rf"\(?([{letters}])\)[\s.:]", s + " ")  # "(C) 12" / "C) 12"
    return m.group(1) if m else None


def extract_choice(answer_text: str, template: str | None, cfg: ChoiceConfig) -> tuple[str | None, str]:
    text = tail(answer_text, cfg.window_chars)
    if template == "r1_zero":
        tagged = last_tag(text, "answer")
        if tagged is not None:
            letter = letter_of(last_boxed(tagged) or tagged, cfg.letters)
            if letter:
                return letter, "last <answer> tag"
    boxed = last_boxed(text)
    if boxed is not None:
        letter = letter_of(boxed, cfg.letters)
        if letter:
            return letter, "last \\boxed{}"
    pattern = re.compile(rf"answer\s*(?:is|:)?\s*[:*$\s]*(?:\\text\{{)?\(?\s*([{cfg.letters}])\b\)?", re.IGNORECASE)
    found = None
    for found in pattern.finditer(text):
        pass
    if found is not None and found.group(1).isupper():
        return found.group(1), "'answer is X' phrase"
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    if lines:
        letter = letter_of(lines[-1], cfg.letters)
        if letter:
            return letter, "last line"
    return None, "no choice letter found"


def score_choice(answer_text: str, reference: str | None, template: str | None = None,
                 cfg: ChoiceConfig | None = None) -> RewardResult:
    """Verdicts: correct|wrong|no_answer|no_reference."""
    cfg = cfg or ChoiceConfig()
    letter, how = extract_choice(answer_text or "", template, cfg)
    if letter is None:
        return RewardResult(0.0, "no_answer", how)
    gold = letter_of(reference, cfg.letters) if reference else None
    if gold is None:
        why = "no reference answer" if not reference else f"reference {reference!r} is not a choice letter"
        return RewardResult(0.0, "no_reference", why, letter)
    ok = letter == gold
    return RewardResult(float(ok), "correct" if ok else "wrong", f"chose {letter}, reference {gold} ({how})", letter)


# --------------------------------------------------------------------------------------------------------------
_NUMBER = re.compile(r"^[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:[eE][-+]?\d+)?$")


def _as_number(s: str) -> float | None:
    t = s.strip().rstrip("%").strip()
    if not t or not _NUMBER.match(t) or not any(c.isdigit() for c in t):
        return None
    try:
        return float(t.replace(",", ""))
    except ValueError:
        return None


def normalize_exact(s: str, case_sensitive: bool = False) -> str:
    s = _unwrap(s)
    s = re.sub(r"\s+", " ", s).strip().rstrip(".").strip()
    return s if case_sensitive else s.casefold()


def extract_exact(answer_text: str, template: str | None, cfg: ExactConfig) -> tuple[str | None, str]:
    text = tail(answer_text, cfg.window_chars)
    if template == "r1_zero":
        tagged = last_tag(text, "answer")
        if tagged is not None and tagged.strip():
            return (last_boxed(tagged) or tagged).strip(), "last <answer> tag"
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed.strip(), "last \\boxed{}"
    found = None
    for found in re.finditer(r"(?:final answer|answer)\s*(?:is|:)\s*(.+)", text, re.IGNORECASE):
        pass
    if found is not None and found.group(1).strip():
        return found.group(1).strip(), "'answer is …' phrase"
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    if lines:
        return lines[-1].strip(), "last line"
    return None, "empty answer"


def score_exact(answer_text: str, reference: str | None, template: str | None = None,
                cfg: ExactConfig | None = None) -> RewardResult:
    """Exact string (normalized) or numeric (relative tolerance) match. Verdicts as for choice."""
    cfg = cfg or ExactConfig()
    got, how = extract_exact(answer_text or "", template, cfg)
    if got is None:
        return RewardResult(0.0, "no_answer", how)
    if not reference or not reference.strip():
        return RewardResult(0.0, "no_reference", "no reference answer", got)
    g, r = normalize_exact(got, cfg.case_sensitive), normalize_exact(reference, cfg.case_sensitive)
    gn, rn = _as_number(g), _as_number(r)
    if gn is not None and rn is not None:
        ok = math.isclose(gn, rn, rel_tol=cfg.rel_tol, abs_tol=cfg.rel_tol if rn == 0 else 0.0)
        why = f"numbers {gn:g} vs reference {rn:g}"
    else:
        ok = g == r
        why = f"{g[:60]!r} vs reference {r[:60]!r}"
    return RewardResult(float(ok), "correct" if ok else "wrong", f"{why} ({how})", got)
