"""Readability: long paragraphs, code blocks in a non-code CoT, markup noise, no reply after </think>, length."""
import pytest

from _curate_data import cot, trace
from factory.curate.filters import ReadabilityConfig, ReadabilityFilter

PY_BLOCK = ("\n\nLet me just compute it:\n\n```python\nprint(sum(1 for n in range(1, 100) if n % 3))\n```\n\n"
            "That gives 66.")


def test_healthy_trace_passes_with_scores():
    keep, reason, m = ReadabilityFilter().check(trace())
    assert keep, reason
    assert 20 < m["longest_paragraph_words"] < 80 and m["code_blocks"] == 0 and m["markup_ratio"] == 0.0


def test_python_block_in_math_cot_is_caught():
    keep, reason, m = ReadabilityFilter().check(trace(reasoning=cot() + PY_BLOCK, domain="math"))
    assert (keep, reason, m["code_blocks"]) == (False, "code_block_in_cot", 1)


def test_python_block_in_code_cot_passes():
    assert ReadabilityFilter().check(trace(reasoning=cot() + PY_BLOCK, domain="code"))[0]


def test_wall_of_text_is_caught():
    wall = " ".join(cot().split() * 4)  # every paragraph joined: ~900 words, no blank line
    keep, reason, m = ReadabilityFilter().check(trace(reasoning=wall))
    assert (keep, reason) == (False, "longest_paragraph>600") and m["longest_paragraph_words"] > 600


def test_markup_noise_is_caught_but_comparisons_are_not_tags():
    html = "\n".join(f"<div><b>step {i}</b></div>" for i in range(12))
    keep, reason, m = ReadabilityFilter().check(trace(reasoning=cot() + "\n" + html))
    assert (keep, reason) == (False, "markup_ratio>0.2")
    compare = cot() + "\nSince a<b and c>d, and 3 < 5 > 2, the order holds."
    assert ReadabilityFilter().check(trace(reasoning=compare))[2]["markup_ratio"] == 0.0


@pytest.mark.parametrize("answer, reason", [
    ("<answer> </answer>", "no_answer_after_think"),
    ("<think> again", "think_tag_in_answer"),
])
def test_reply_after_think_must_be_reader_facing(answer, reason):
    assert ReadabilityFilter().check(trace(answer_text=answer))[:2] == (False, reason)


def test_r1_zero_answer_tags_are_a_reply():
    assert ReadabilityFilter().check(trace(answer_text="<answer> 66 </answer>"))[0]


def test_token_bounds():
    f = ReadabilityFilter(ReadabilityConfig(min_tokens=100, max_tokens=1000))
    assert f.check(trace(completion_tokens=50))[:2] == (False, "tokens<100")
    assert f.check(trace(completion_tokens=5000))[:2] == (False, "tokens>1000")
    assert f.check(trace(completion_tokens=500))[0]
    with pytest.raises(ValueError, match="max_tokens"):
        ReadabilityConfig(min_tokens=10, max_tokens=5)
