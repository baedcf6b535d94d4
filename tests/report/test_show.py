"""`factory show DIR`: the funnel, samples by stage/filter/reason and eval's wrong answers in the terminal, over a
small real run (real verify and curate stages over trace shards, eval samples in the eval schema)."""
from __future__ import annotations

import re

import pyarrow.parquet as pq
import pytest
from _real_run import make_real_run
from typer.testing import CliRunner

from factory.cli import app
from factory.report import browser


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    return make_real_run(tmp_path_factory.mktemp("show"))


def factory_show(*args) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["show", *map(str, args)], env={"COLUMNS": "160"})
    return result.exit_code, result.output


def row(output: str, first_cell: str) -> list[str]:
    """The cells of the first table line whose first cell is `first_cell`."""
    for line in output.splitlines():
        cells = [c.strip() for c in line.replace("┃", "│").strip().strip("│").split("│")]
        if cells and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no table row {first_cell!r} in:\n{output}")


def test_show_prints_the_funnel_with_rejection_at_verify(real_run):
    code, out = factory_show(real_run)
    assert code == 0, out
    funnel = out.split("generate: samples by reason")[0]
    assert row(funnel, "generate")[1:4] == ["8", "32", "×4.00"]
    # 9 of 32 samples rejected by rejection sampling: counted at verify, not as "kept 100%"
    assert row(funnel, "verify")[1:5] == ["32", "23", "71.9%", "accuracy wrong: 8"]
    assert row(funnel, "curate")[1:5] == ["23", "19", "82.6%", "dedupe:exact_response: 1"]
    assert "selection:not_selected" not in funnel and "language:lang_consistency<0.9: 1" in funnel
    # each stage's reasons with their counts
    assert row(out, "rejection sampling")[1:] == ["rejected: accuracy wrong", "8"]
    assert row(out, "language")[1:] == ["lang_consistency<0.9", "1"]
    assert row(out, "truncation")[1:] == ["finish_reason=length", "1"]
    assert row(out, "finish_reason")[1:] == ["stop", "31"]


def test_show_a_filter_prints_its_examples_with_reasons(real_run):
    code, out = factory_show(real_run, "--stage", "curate", "--filter", "language")
    assert code == 0, out
    assert "curate · language · lang_consistency<0.9  (1 of 1)" in out
    assert row(out, "p3#1")[1] == "language: lang_consistency<0.9"
    score = float(re.search(r"lang_consistency: ([0-9.]+)", out).group(1))
    assert score < 0.9 and re.search("[\u4e00-\u9fff]", out)  # its score beside the Chinese tail of its CoT
    assert "curate · dedupe" not in out and "curate · kept" not in out


def test_show_a_stage_picks_a_few_examples_per_reason_deterministically(real_run):
    code, out = factory_show(real_run, "--stage", "verify")
    assert code == 0, out
    assert "verify · rejection sampling · rejected: accuracy wrong  (3 of 8)" in out
    assert "verify · rejection sampling · rejected: accuracy no_answer  (1 of 1)" in out
    assert "verify · kept · kept: correct (all_correct)  (3 of 23)" in out
    assert row(out, "p1#0")[2] == "—" and "→ I am not sure." in out  # no answer, beside the reference
    # the same examples every time: the three wrong samples with the smallest hashes of their ids
    wrong = [r for p in sorted((real_run / "verify").glob("part-*.parquet"))
             for r in pq.read_table(p, columns=["prompt_id", "sample_idx", "accuracy_verdict"]).to_pylist()
             if r["accuracy_verdict"] == "wrong"]
    expected = sorted(wrong, key=browser.sample_hash)[:3]
    section = out.split("rejected: accuracy wrong  (3 of 8)")[1].split("verify · ")[0]
    first_cells = (line.strip().strip("│").split("│")[0].strip() for line in section.splitlines())
    shown = [c for c in first_cells if "#" in c]
    assert shown == [f"{r['prompt_id']}#{r['sample_idx']}" for r in expected]
    assert factory_show(real_run, "--stage", "verify") == (code, out)
    # then its prompts, hardest first
    table = out.split("verify: correct and selected samples per prompt")[1]
    assert row(table, "p1") == ["p1", "66", "66", "2/4", "2/4", "0.50"]
    assert [line.strip().strip("│").split("│")[0].strip() for line in table.splitlines() if "│ p" in line][:2] == [
        "p1", "p0"]


def test_show_wrong_answers_beside_the_reference_and_pass_rate_per_prompt(real_run):
    code, out = factory_show(real_run, "--wrong", "--n", "2")
    assert code == 0, out
    assert "eval · base · arith · wrong  (2 of 10 wrong)" in out
    assert "eval · student · arith · wrong  (2 of 7 wrong)" in out
    assert "math-verify: 59 != 60" in out or "math-verify: 57 != 62" in out
    table = out.split("eval · arith: correct samples per prompt")[1]
    assert row(table, "prompt")[2:] == ["base", "student"]
    # hardest prompts first: arith/0 and arith/3 (2/4 for both models) before the others
    order = [line.strip().strip("│").split("│")[0].strip() for line in table.splitlines() if "arith/" in line]
    assert order[:2] == ["arith/0", "arith/3"] and sorted(order) == [f"arith/{p}" for p in range(5)]
    assert row(table, "arith/1")[1:] == ["61", "2/4", "3/4"]


def test_show_errors_name_what_exists(real_run, tmp_path):
    code, out = factory_show(real_run, "--filter", "nope")
    assert code == 1
    assert "--filter nope: no samples; filters with samples: dedupe, finish_reason, kept, language, " \
           "rejection sampling, repetition, selection, truncation" in " ".join(out.split())
    code, out = factory_show(real_run, "--stage", "eval")
    assert code == 1 and "--stage eval: one of generate, verify, curate (eval: --wrong)" in out
    (tmp_path / "bare").mkdir()
    code, out = factory_show(tmp_path / "bare", "--wrong")
    assert code == 1 and "no eval samples (eval not run?)" in out
    code, out = factory_show(tmp_path / "bare")
    assert code == 1 and "no stage has written a counts.json yet" in out
    code, out = factory_show(tmp_path / "nowhere")
    assert code == 1 and "does not exist" in out
