"""Format reward: the reply is exactly one `<think>…</think>` with non-empty reasoning, then a non-empty answer.

With the R1-Zero template the answer must be exactly one `<answer>…</answer>` (paper, Table 1: "<think> reasoning
process here </think> <answer> answer here </answer>"), with nothing but whitespace around it.
The completion is expected to include the prefilled "<think>\\n" when the prompt prefilled it (see trace schema).
Tag counting is a C-level scan (`str.count`), so long traces cost microseconds.
"""
from __future__ import annotations

from factory.verify.rewards.result import RewardResult

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"

FORMAT_VERDICTS = ("ok", "no_think", "unclosed_think", "multiple_think", "text_before_think", "empty_reasoning",
                   "empty_answer", "no_answer_tag", "multiple_answer_tags", "text_outside_answer")


def _bad(verdict: str, reason: str) -> RewardResult:
    return RewardResult(0.0, verdict, reason)


def score_format(completion: str, template: str | None = None, allow_empty_reasoning: bool = False) -> RewardResult:
    """`allow_empty_reasoning`: the non-reasoning track, whose replies open with an empty `<think>\n\n</think>`
    (the R1 form of an answer without a CoT)."""
    text = completion or ""
    n_open, n_close = text.count(THINK_OPEN), text.count(THINK_CLOSE)
    if n_open == 0:
        return _bad("no_think", "no <think> tag")
    if n_close == 0:
        return _bad("unclosed_think", "<think> is never closed: the reasoning did not finish")
    if n_open > 1 or n_close > 1:
        return _bad("multiple_think", f"{n_open} <think> and {n_close} </think> tags; exactly one pair expected")
    start, end = text.index(THINK_OPEN), text.index(THINK_CLOSE)
    if end < start:
        return _bad("unclosed_think", "</think> comes before <think>")
    if text[:start].strip():
        return _bad("text_before_think", "text before <think>")
    reasoning = text[start + len(THINK_OPEN):end]
    if not reasoning.strip() and not allow_empty_reasoning:
        return _bad("empty_reasoning", "the <think> block is empty")
    answer = text[end + len(THINK_CLOSE):]
    if not answer.strip():
        return _bad("empty_answer", "nothing after </think>")
    if not reasoning.strip():
        return RewardResult(1.0, "ok", f"no CoT (empty <think> block) then an answer ({len(answer.strip())} chars)")
    if template == "r1_zero":
        a_open, a_close = answer.count(ANSWER_OPEN), answer.count(ANSWER_CLOSE)
        if a_open == 0 or a_close == 0:
            return _bad("no_answer_tag", "R1-Zero template: no <answer>…</answer> after </think>")
        if a_open > 1 or a_close > 1:
            return _bad("multiple_answer_tags", f"{a_open} <answer> and {a_close} </answer> tags")
        i, j = answer.index(ANSWER_OPEN), answer.index(ANSWER_CLOSE)
        if j < i:
            return _bad("no_answer_tag", "</answer> comes before <answer>")
        if answer[:i].strip() or answer[j + len(ANSWER_CLOSE):].strip():
            return _bad("text_outside_answer", "R1-Zero template: text outside <answer>…</answer>")
        if not answer[i + len(ANSWER_OPEN):j].strip():
            return _bad("empty_answer", "the <answer> tag is empty")
    return RewardResult(1.0, "ok", f"one <think> block ({len(reasoning.strip())} chars) then an answer "
                                   f"({len(answer.strip())} chars)")
