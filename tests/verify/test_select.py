"""Per-prompt aggregates (pass rate, majority answer, consensus) and the rejection-sampling policies."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from factory.verify.rewards.math import answers_equivalent
from factory.verify.selection import (ConsensusConfig, SelectConfig, apply_consensus, group_answers, majority, pass_rate,
                            select_group)


def sample(idx: int, verdict: str = "correct", tokens: int = 100, fmt: str = "ok", answer: str | None = "4") -> dict:
    ok = verdict in ("correct", "passed")
    return {"prompt_id": "p", "sample_idx": idx, "reward_accuracy": 1.0 if ok else 0.0, "accuracy_verdict": verdict,
            "accuracy_reason": "", "reward_format": 1.0 if fmt == "ok" else 0.0, "format_verdict": fmt,
            "completion_tokens": tokens, "extracted_answer": answer}


def with_rate(rows: list[dict]) -> list[dict]:
    rate = pass_rate(rows)
    for r in rows:
        r["pass_rate"] = rate
    return rows


def test_pass_rate_counts_only_judged_samples():
    rows = [sample(0), sample(1, "wrong"), sample(2, "no_answer"), sample(3, "timeout")]
    assert pass_rate(rows) == 0.25
    assert pass_rate([sample(0, "no_reference"), sample(1, "no_reference")]) is None
    assert pass_rate([sample(0, "no_tests")]) is None
    partial = sample(0, "wrong_answer")
    partial["reward_accuracy"] = 0.5  # half the tests passed: not a solve
    assert pass_rate([partial, sample(1, "passed")]) == 0.5


def test_majority_groups_equivalent_answers():
    answers = [r"\frac{1}{2}", "0.5", "3", "1/2", None, "3"]
    groups = group_answers(answers, lambda a, b: answers_equivalent(a, b))
    assert groups == [[0, 1, 3], [2, 5]]
    rows = [sample(i, "no_reference", answer=a) for i, a in enumerate(answers)]
    top, members, answered = majority(rows, lambda a, b: answers_equivalent(a, b))
    assert (top, members, answered) == (r"\frac{1}{2}", [0, 1, 3], 5)


def test_majority_tie_goes_to_the_first_seen():
    assert group_answers(["a", "b", "b", "a"], str.__eq__) == [[0, 3], [1, 2]]


def test_consensus_labels_only_when_enabled_and_agreeing():
    def rows():
        return [sample(i, "no_reference", answer=a) for i, a in enumerate(["7", "7", "7.0", "8", None])]

    same = lambda a, b: answers_equivalent(a, b)  # noqa: E731
    r = rows()
    _, top, answered = majority(r, same)
    assert not apply_consensus(r, top, answered, ConsensusConfig(enabled=False))
    assert all(x["accuracy_verdict"] == "no_reference" for x in r)
    assert apply_consensus(r, top, answered, ConsensusConfig(enabled=True, min_votes=3, min_share=0.7))
    assert [x["accuracy_verdict"] for x in r] == ["correct", "correct", "correct", "wrong", "no_reference"]
    assert "consensus" in r[0]["accuracy_reason"] and "3/4" in r[0]["accuracy_reason"]
    assert pass_rate(r) == 0.75
    r = rows()
    _, top, answered = majority(r, same)
    assert not apply_consensus(r, top, answered, ConsensusConfig(enabled=True, min_votes=4))


def test_consensus_never_overrides_a_reference():
    r = [sample(0, "correct", answer="7"), sample(1, "wrong", answer="8"), sample(2, "wrong", answer="8")]
    _, top, answered = majority(r, str.__eq__)
    assert not apply_consensus(r, top, answered, ConsensusConfig(enabled=True))
    assert [x["accuracy_verdict"] for x in r] == ["correct", "wrong", "wrong"]


def test_all_correct_keeps_every_correct_well_formed_sample():
    rows = with_rate([sample(0), sample(1, "wrong"), sample(2, fmt="unclosed_think"), sample(3)])
    select_group(rows, SelectConfig())
    assert [r["selected"] for r in rows] == [True, False, False, True]
    assert rows[1]["select_reason"] == "rejected: accuracy wrong"
    assert rows[2]["select_reason"] == "rejected: format unclosed_think"
    assert rows[0]["select_reason"].startswith("kept")
    rows = with_rate([sample(0, fmt="multiple_think")])
    select_group(rows, SelectConfig(require_format=False))
    assert rows[0]["selected"]


def test_at_most_m_by_sample_order_or_length():
    rows = with_rate([sample(0, tokens=500), sample(1, tokens=100), sample(2, tokens=300), sample(3, "wrong")])
    select_group(rows, SelectConfig(policy="at_most_m", m=2))
    assert [r["selected"] for r in rows] == [True, True, False, False]
    assert "cap of 2" in rows[2]["select_reason"]
    select_group(rows, SelectConfig(policy="at_most_m", m=2, order="shortest"))
    assert [r["selected"] for r in rows] == [False, True, True, False]


def test_shortest_correct():
    rows = with_rate([sample(0, tokens=500), sample(1, tokens=100), sample(2, "wrong", tokens=10),
                      sample(3, tokens=100)])
    select_group(rows, SelectConfig(policy="shortest_correct"))
    assert [r["selected"] for r in rows] == [False, True, False, False]  # ties go to the lower sample index
    assert "shorter" in rows[0]["select_reason"]


def test_pass_rate_band_drops_too_easy_and_too_hard_prompts():
    easy = with_rate([sample(i) for i in range(4)])
    select_group(easy, SelectConfig(pass_rate_max=0.9))
    assert not any(r["selected"] for r in easy)
    assert "pass rate 1.00 outside [0, 0.9]" in easy[0]["select_reason"]
    hard = with_rate([sample(0)] + [sample(i, "wrong") for i in range(1, 8)])
    select_group(hard, SelectConfig(pass_rate_min=0.25))
    assert not any(r["selected"] for r in hard)
    assert hard[1]["select_reason"] == "rejected: accuracy wrong"
    mid = with_rate([sample(0), sample(1, "wrong")])
    select_group(mid, SelectConfig(pass_rate_min=0.25, pass_rate_max=0.9))
    assert [r["selected"] for r in mid] == [True, False]


def test_select_config_is_validated():
    with pytest.raises(ValidationError, match="above pass_rate_max"):
        SelectConfig(pass_rate_min=0.8, pass_rate_max=0.2)
    with pytest.raises(ValidationError, match="extra"):
        SelectConfig(polcy="all_correct")
    with pytest.raises(ValidationError):
        SelectConfig(policy="best_of_n")
    with pytest.raises(ValidationError):
        SelectConfig(m=0)
