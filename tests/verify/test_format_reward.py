"""Format reward: exactly one <think>…</think> with reasoning, then an answer; the R1-Zero <answer> variant."""
from __future__ import annotations

import pytest

from factory.verify.rewards.format import FORMAT_VERDICTS, score_format

CHAT = [
    ("<think>\nLet me add 2 and 2.\n</think>\n\nThe answer is \\boxed{4}.", "ok"),
    ("  <think>reasoning</think> answer", "ok"),
    ("The answer is 4.", "no_think"),
    ("<think>\nI keep thinking and run out of tokens", "unclosed_think"),
    ("<think>a</think> b <think>c</think> d", "multiple_think"),
    ("<think>a</think></think> b", "multiple_think"),
    ("</think> b <think> a", "unclosed_think"),
    ("Sure! <think>a</think> b", "text_before_think"),
    ("<think>\n   \n</think>\nThe answer is 4.", "empty_reasoning"),
    ("<think>\nreasoning\n</think>\n  \n", "empty_answer"),
]

R1_ZERO = [
    ("<think> 2+2 is 4 </think> <answer> 4 </answer>", "ok"),
    ("<think>\n2+2 is 4\n</think>\n<answer>\n4\n</answer>\n", "ok"),
    ("<think> 2+2 is 4 </think> The answer is 4", "no_answer_tag"),
    ("<think> 2+2 is 4 </think> <answer>4</answer> <answer>5</answer>", "multiple_answer_tags"),
    ("<think> 2+2 is 4 </think> So: <answer>4</answer>", "text_outside_answer"),
    ("<think> 2+2 is 4 </think> <answer>4</answer> done.", "text_outside_answer"),
    ("<think> 2+2 is 4 </think> <answer>  </answer>", "empty_answer"),
    ("<think> 2+2 is 4 </think> </answer>4<answer>", "no_answer_tag"),
    ("<think></think> <answer>4</answer>", "empty_reasoning"),
]


@pytest.mark.parametrize("completion,verdict", CHAT)
def test_chat_format(completion, verdict):
    r = score_format(completion, "chat")
    assert r.verdict == verdict, r
    assert r.reward == (1.0 if verdict == "ok" else 0.0)
    assert r.verdict in FORMAT_VERDICTS and r.reason


@pytest.mark.parametrize("completion,verdict", R1_ZERO)
def test_r1_zero_format(completion, verdict):
    r = score_format(completion, "r1_zero")
    assert r.verdict == verdict, r
    assert r.reward == (1.0 if verdict == "ok" else 0.0)


def test_chat_template_does_not_require_answer_tags():
    assert score_format("<think>x</think> The answer is 4", "chat").verdict == "ok"
    assert score_format("<think>x</think> The answer is 4", "jinja").verdict == "ok"


def test_long_trace_is_fine():
    reasoning = "Step: consider the next case carefully. " * 5000  # ~200k chars
    r = score_format(f"<think>\n{reasoning}</think>\n\n\\boxed{{1}}", "chat")
    assert r.verdict == "ok" and str(len(reasoning.strip())) in r.reason
