"""pass@1, its standard error, pass@k and cons@k on hand-made verdict tables, ties in the vote included."""
from __future__ import annotations

import itertools
import json
import math
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from rich.console import Console

from factory.eval.metrics import (
    EvalDataError,
    comparison_table,
    is_correct,
    majority_vote,
    normalize_answer,
    pass_at_k,
    read_verdicts,
    summarize,
    write_summary,
)


def verdicts(model: str, benchmark: str, prompt_id: str, rewards: list[float], answers: list[str | None],
             tokens: list[int] | None = None, finish: list[str] | None = None) -> list[dict]:
    """The k verdict records of one problem, sample_idx 0..k-1."""
    k = len(rewards)
    tokens = tokens or [100] * k
    finish = finish or ["stop"] * k
    return [{"model": model, "benchmark": benchmark, "prompt_id": prompt_id, "sample_idx": i,
             "reward_accuracy": rewards[i], "extracted_answer": answers[i], "completion_tokens": tokens[i],
             "finish_reason": finish[i]} for i in range(k)]


# Model A on "toy", k = 4, three problems:
#   p1: 2/4 correct; answers 7,7,8,9 (7 is right)      -> vote 7 (2 votes) -> correct
#   p2: 4/4 correct; all "3"                            -> correct
#   p3: 0/4 correct; None,5,5,None                      -> vote 5 -> wrong
TABLE_A = (verdicts("A", "toy", "p1", [1, 1, 0, 0], ["7", "7", "8", "9"], tokens=[10, 20, 30, 40])
           + verdicts("A", "toy", "p2", [1, 1, 1, 1], ["3", "3", "3", "3"], tokens=[50, 50, 50, 50],
                      finish=["stop", "stop", "stop", "length"])
           + verdicts("A", "toy", "p3", [0, 0, 0, 0], [None, "5", "5", None], tokens=[200, 200, 200, 200],
                      finish=["length", "stop", "stop", "length"]))


def test_pass1_se_cons_length_truncation_by_hand():
    (row,) = summarize(TABLE_A)
    assert row["model"] == "A" and row["benchmark"] == "toy"
    assert row["k"] == 4 and row["n_problems"] == 3
    # per-problem means 0.5, 1.0, 0.0 -> mean 0.5; sample std (ddof=1) = sqrt(((0)^2+.5^2+.5^2)/2) = 0.5
    assert row["pass@1"] == pytest.approx(0.5)
    assert row["pass@1_se"] == pytest.approx(0.5 / math.sqrt(3))
    assert row["cons@k"] == pytest.approx(2 / 3)
    assert row["mean_tokens"] == pytest.approx((10 + 20 + 30 + 40 + 4 * 50 + 4 * 200) / 12)
    assert row["truncation_rate"] == pytest.approx(3 / 12)
    # pass@k levels 1, 2, 4: pass@4 = fraction of problems with any correct sample
    assert row["pass@k"]["1"] == pytest.approx(row["pass@1"])
    assert row["pass@k"]["2"] == pytest.approx((1 - 1 / 6 + 1 + 0) / 3)  # p1: 1 - C(2,2)/C(4,2)
    assert row["pass@k"]["4"] == pytest.approx(2 / 3)


def test_rows_per_model_and_benchmark_in_first_appearance_order():
    records = (TABLE_A
               + verdicts("B", "toy", "p1", [1, 0], ["7", "8"]) + verdicts("B", "toy", "p2", [0, 0], ["1", "2"])
               + verdicts("A", "other", "q1", [1], ["1"]))
    rows = summarize(records)
    assert [(r["model"], r["benchmark"], r["k"]) for r in rows] == [("A", "toy", 4), ("B", "toy", 2), ("A", "other", 1)]
    b = rows[1]
    assert b["pass@1"] == pytest.approx(0.25)
    assert b["pass@1_se"] == pytest.approx(math.sqrt(((0.5 - 0.25) ** 2 + (0 - 0.25) ** 2) / 1) / math.sqrt(2))
    # B p1 votes 7 vs 8 tie -> first occurrence (7, correct) wins; p2 tie 1 vs 2 -> 1, wrong
    assert b["cons@k"] == pytest.approx(0.5)
    single = rows[2]
    assert single["n_problems"] == 1 and single["pass@1_se"] is None  # no spread from one problem


def test_tie_rule_first_occurrence_and_wrong():
    right_first = verdicts("M", "b", "p", [1, 0, 0, 1], ["7", "8", "8", "7"])
    wrong_first = verdicts("M", "b", "p", [0, 1, 1, 0], ["8", "7", "7", "8"])
    assert summarize(right_first)[0]["cons@k"] == 1.0
    assert summarize(wrong_first)[0]["cons@k"] == 0.0
    assert summarize(right_first, ties="wrong")[0]["cons@k"] == 0.0  # a tie counts as wrong
    assert summarize(wrong_first, ties="wrong")[0]["cons@k"] == 0.0
    # a clear majority is unaffected by the tie rule
    clear = verdicts("M", "b", "p", [0, 1, 1, 1], ["8", "7", "7", "7"])
    assert summarize(clear, ties="wrong")[0]["cons@k"] == 1.0
    # three-way tie: first occurrence is decided by sample_idx, not by the order records arrive in
    three = verdicts("M", "b", "p", [0, 1, 0], ["5", "6", "7"])
    random.Random(0).shuffle(three)
    assert summarize(three)[0]["cons@k"] == 0.0  # "5" (sample 0) wins and is wrong


def test_none_and_empty_answers_never_win():
    # two unanswered samples outnumber the single answer, which still wins
    assert majority_vote([None, None, "  ", "5"]) == 3
    assert majority_vote([None, None]) is None
    assert majority_vote([]) is None
    rows = summarize(verdicts("M", "b", "p", [0, 0, 0, 1], [None, None, "", "5"]))
    assert rows[0]["cons@k"] == 1.0
    rows = summarize(verdicts("M", "b", "p", [0, 0], [None, None]))
    assert rows[0]["cons@k"] == 0.0


def test_vote_on_normalised_answers():
    answers = ["3", "\\boxed{\\frac{1}{2}}", "0.5", "1/2", "3"]
    assert majority_vote(answers) == 1  # 1/2 has three votes once normalised
    rows = summarize(verdicts("M", "b", "p", [0, 1, 1, 1, 0], answers))
    assert rows[0]["cons@k"] == 1.0
    assert normalize_answer("$1,000$.") == "1000"
    assert normalize_answer("18.0") == normalize_answer("18") == "18"
    assert normalize_answer("\\text{ (B) }") == "(b)"
    assert normalize_answer("  ") is None and normalize_answer(None) is None


def test_correctness_threshold():
    assert is_correct(1) and is_correct(1.0) and is_correct(1.5)
    assert not is_correct(0) and not is_correct(0.99) and not is_correct(None) and not is_correct(float("nan"))
    rows = summarize(verdicts("M", "b", "p", [0.99, 1.0, 0.5, 2.0], ["1", "1", "2", "2"]))
    assert rows[0]["pass@1"] == pytest.approx(0.5)


@pytest.mark.parametrize("n,c,k", [(5, 2, 1), (5, 2, 2), (6, 3, 4), (4, 0, 2), (4, 4, 3), (7, 1, 7)])
def test_pass_at_k_matches_enumeration(n, c, k):
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(samples, k))
    expected = sum(any(s) for s in subsets) / len(subsets)
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_rejects_bad_arguments():
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k(3, 1, 4)
    with pytest.raises(ValueError, match="0 <= c <= n"):
        pass_at_k(3, 4, 1)


def test_bad_verdicts_are_named():
    uneven = verdicts("M", "b", "p1", [1, 0], ["1", "2"]) + verdicts("M", "b", "p2", [1], ["1"])
    with pytest.raises(EvalDataError, match="M on b: problems have different sample counts"):
        summarize(uneven)
    duplicated = verdicts("M", "b", "p1", [1, 0], ["1", "2"])
    duplicated[1]["sample_idx"] = 0
    with pytest.raises(EvalDataError, match="problem p1 has a repeated sample_idx"):
        summarize(duplicated)
    missing = verdicts("M", "b", "p1", [1], ["1"])
    del missing[0]["reward_accuracy"]
    with pytest.raises(EvalDataError, match=r"record 0 lacks field\(s\) \['reward_accuracy'\]"):
        summarize(missing)


def test_write_summary_atomic_and_readable(tmp_path):
    rows = summarize(TABLE_A)
    path = write_summary(rows, tmp_path / "eval")
    assert path == tmp_path / "eval" / "summary.json"
    assert json.loads(path.read_text()) == rows
    assert [p.name for p in path.parent.iterdir()] == ["summary.json"]  # no temp file left behind


def test_read_verdicts_from_parquet_reads_scoring_columns(tmp_path):
    table = pa.Table.from_pylist([{**r, "completion": "x" * 50} for r in TABLE_A])
    pq.write_table(table, tmp_path / "part-00000.parquet")
    records = read_verdicts([tmp_path / "part-00000.parquet"])
    assert "completion" not in records[0]
    assert summarize(records) == summarize(TABLE_A)
    pq.write_table(table.drop(["reward_accuracy"]), tmp_path / "bad.parquet")
    with pytest.raises(EvalDataError, match=r"bad.parquet: no column\(s\) \['reward_accuracy'\]"):
        read_verdicts([tmp_path / "bad.parquet"])


def test_comparison_table_models_by_benchmarks():
    records = (TABLE_A + verdicts("B", "toy", "p1", [1, 1], ["7", "7"]) + verdicts("B", "other", "q", [0, 1], ["1", "2"]))
    console = Console(record=True, width=120)
    console.print(comparison_table(summarize(records)))
    text = console.export_text()
    lines = text.splitlines()
    header = next(line for line in lines if "model" in line)
    assert header.index("toy") < header.index("other")
    assert "50.0 ± 28.9" in text  # A on toy: 0.5 ± 0.2887
    assert "cons@4 66.7" in text
    assert "—" in text  # A has no row for "other"
    assert any(line.strip("│ ").startswith("A ") for line in lines) and any(line.strip("│ ").startswith("B ") for line in lines)
