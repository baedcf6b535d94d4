"""The six paper students' recipes load, carry the paper's hyper-parameters, and switch to LoRA by override."""
from __future__ import annotations

from pathlib import Path

import pytest

from factory.train.config import load_sft_config

RECIPES = Path(__file__).resolve().parents[2] / "pipelines" / "recipes"
PAPER_LR = {"qwen2.5-math-1.5b": 1e-4, "qwen2.5-math-7b": 8e-5, "qwen2.5-14b": 7e-5, "qwen2.5-32b": 6e-5,
            "llama-3.1-8b": 5e-5, "llama-3.3-70b-instruct": 2e-5}


@pytest.mark.parametrize("name", sorted(PAPER_LR))
def test_recipe_has_the_paper_settings(name):
    cfg = load_sft_config(RECIPES / f"{name}.yaml")
    assert cfg.learning_rate == pytest.approx(PAPER_LR[name])
    assert cfg.max_length == 32768 and cfg.global_batch_size == 64 and cfg.min_lr_ratio == 0.1
    assert 2 <= cfg.epochs <= 3 and cfg.mode == "full"
    lora = load_sft_config(RECIPES / f"{name}.yaml", {"mode": "lora", "lora.r": 16})
    assert lora.mode == "lora" and lora.lora.r == 16


def test_recipes_are_valid_pipelines():
    pytest.importorskip("factory.config")
    from factory.config import load_pipeline

    for path in sorted(RECIPES.glob("*.yaml")):
        cfg = load_pipeline(path, [])
        if path.stem.startswith("eval-"):  # eval recipes (tests/eval/test_eval_code.py checks their settings)
            assert cfg.eval is not None and cfg.stages == ["eval"]
            continue
        if path.stem.startswith("teacher-"):  # generate recipes (tests/generate/test_engine_recovery.py)
            assert cfg.stages == ["generate"] and cfg.teacher.backend == "vllm"
            continue
        assert cfg.sft is not None and cfg.stages == ["sft"]


def test_unknown_recipe_key_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sft:\n  student: x\n  learning_rat: 1.0e-4\n")
    with pytest.raises(ValueError, match="learning_rat"):
        load_sft_config(bad)
