"""Templates and the <think> split, with the embedded model's real tokenizer."""
from __future__ import annotations

import pytest

from factory.generate.templates import DEFAULT_INSTRUCTIONS, render_chat, render_jinja, render_r1_zero, split_think

REC = {"problem": "What is 2+3?", "domain": "math", "prompt_id": "p"}


def test_r1_zero_template_is_the_papers():
    text = render_r1_zero(REC, DEFAULT_INSTRUCTIONS)
    assert text.startswith("A conversation between User and Assistant.")
    assert "<think> reasoning process here </think> <answer> answer here </answer>" in text
    assert text.endswith("User: What is 2+3?\nPlease reason step by step, and put your final answer within "
                         "\\boxed{}.. Assistant:")


def test_chat_template_forces_the_think_opening_once(embedded_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(embedded_dir)
    text = render_chat(REC, DEFAULT_INSTRUCTIONS, tok, "<think>\n")
    assert text.endswith("<|im_start|>assistant\n<think>\n") and text.count("<think>") == 1
    shots = [{"user": "1+1?", "assistant": "<think>\n2\n</think>\n\n\\boxed{2}"}]
    with_shots = render_chat(REC, DEFAULT_INSTRUCTIONS, tok, "<think>\n", fewshot=shots)
    assert with_shots.index("1+1?") < with_shots.index("What is 2+3?")

    class R1Like:  # an R1 template already opens the tag in its generation prompt
        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            return "<｜User｜>" + messages[-1]["content"] + "<｜Assistant｜><think>\n"

    assert render_chat(REC, DEFAULT_INSTRUCTIONS, R1Like(), "<think>\n").count("<think>") == 1


def test_jinja_template_and_missing_field():
    assert render_jinja(REC, DEFAULT_INSTRUCTIONS, "Q: {{ problem }} ({{ domain }})") == "Q: What is 2+3? (math)"
    with pytest.raises(ValueError, match="'nope' is undefined"):
        render_jinja(REC, DEFAULT_INSTRUCTIONS, "{{ nope }}")


@pytest.mark.parametrize("completion, reasoning, answer, closed", [
    ("<think>\nadd them\n</think>\n\n\\boxed{5}", "add them", "\\boxed{5}", True),
    ("add them</think>The answer is 5", "add them", "The answer is 5", True),  # opening tag in the template
    ("<think>\nstill thinking", "still thinking", "", False),
    ("<think>a</think>b</think>c", "a", "b</think>c", True),
    ("", "", "", False),
])
def test_split_think(completion, reasoning, answer, closed):
    s = split_think(completion)
    assert (s.reasoning, s.answer_text, s.think_closed) == (reasoning, answer, closed)
