"""`factory eval` on the session's real engine: a tiny benchmark slice, the summary and table, adapter merging,
and bad input."""
from __future__ import annotations

import json

import pytest

from factory.config import PipelineConfig
from factory.eval.config import AdapterError, EvalModel
from factory.core.shards import iter_stage_rows
from factory.eval.stage import _model_weights, run_eval
from factory.generate.teachers import TeacherError


def pipeline(benchmarks_dir, **eval_over) -> PipelineConfig:
    return PipelineConfig.model_validate({
        "prompts": [{"kind": "arithmetic", "n": 1}],
        "eval": {"models": [{"name": "base", "path": "embedded"}],
                 "benchmarks": [{"name": "gsm8k", "path": str(benchmarks_dir / "gsm8k.jsonl")}],
                 "k": 2, "limit": 3, "max_tokens": 48, **eval_over}})


@pytest.mark.engine
def test_eval_writes_scored_samples_and_a_summary(tmp_path, engine, benchmarks_dir):
    counts = run_eval(pipeline(benchmarks_dir), tmp_path, teachers={"base": engine})
    rows = list(iter_stage_rows(tmp_path / "eval", "eval"))
    assert len(rows) == 6 and {r["model"] for r in rows} == {"base"} and {r["benchmark"] for r in rows} == {"gsm8k"}
    assert all(r["accuracy_verdict"] in ("correct", "wrong", "no_answer", "unparseable") for r in rows)
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert counts["extra"]["summary_file"] == "summary.json" and counts["records_out"] == 6
    row = summary[0]
    assert (row["model"], row["benchmark"], row["k"], row["n_problems"]) == ("base", "gsm8k", 2, 3)
    per_problem = {}
    for r in rows:
        per_problem.setdefault(r["prompt_id"], []).append(r["reward_accuracy"] >= 1)
    assert row["pass@1"] == pytest.approx(sum(sum(v) / 2 for v in per_problem.values()) / 3)
    # resumes without regenerating; a changed k is refused
    assert run_eval(pipeline(benchmarks_dir), tmp_path, teachers={"base": engine})["records_out"] == 6
    from factory.core.shards import StageConfigChanged

    with pytest.raises(StageConfigChanged):
        run_eval(pipeline(benchmarks_dir, k=3), tmp_path, teachers={"base": engine})


def test_adapter_is_merged_once_and_matches_peft(tmp_path, embedded_dir):
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(embedded_dir, dtype=torch.float32)
    lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                           init_lora_weights=False))
    lora.save_pretrained(tmp_path / "adapter")
    model = EvalModel(name="student", adapter=str(tmp_path / "adapter"), base="embedded")
    folder, ident = _model_weights(model, tmp_path)
    assert "+adapter:" in ident and _model_weights(model, tmp_path)[0] == folder  # cached
    tok = AutoTokenizer.from_pretrained(embedded_dir)
    ids = tok("What is 2 + 2?", return_tensors="pt").input_ids
    merged = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    fresh = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(embedded_dir, dtype=torch.float32),
                                      str(tmp_path / "adapter"))
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, fresh(ids).logits, atol=1e-4, rtol=1e-4)
    other = EvalModel(name="s2", adapter=str(tmp_path / "adapter"), base=str(tmp_path))
    with pytest.raises(AdapterError):
        _model_weights(other, tmp_path)


def test_bad_eval_input(tmp_path, benchmarks_dir):
    with pytest.raises(ValueError, match="no `eval:` block"):
        run_eval(PipelineConfig.model_validate({"prompts": [{"kind": "arithmetic", "n": 1}]}), tmp_path)
    with pytest.raises(Exception, match="greater than or equal to 1"):
        pipeline(benchmarks_dir, k=0)
    bad = pipeline(benchmarks_dir, models=[{"name": "m", "path": str(tmp_path / "no-model")}])
    with pytest.raises(TeacherError, match="could not be loaded"):
        run_eval(bad, tmp_path)
