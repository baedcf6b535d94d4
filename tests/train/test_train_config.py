"""SFTConfig as the one home of the trainer's switches: `--set` overrides through factory.core.config's parser,
recipe errors that name the file, the precision resolver, and the switches reaching the code they steer."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from factory.core.config import ConfigError
from factory.train import attention, stage
from factory.train.config import SFTConfig, load_sft_config
from factory.train.model import resolve_precision

RECIPE = Path(__file__).resolve().parents[2] / "pipelines" / "recipes" / "qwen2.5-math-1.5b.yaml"


def test_set_items_and_dict_overrides_give_the_same_config():
    items = load_sft_config(RECIPE, ["mode=lora", "lora.r=16", "cudnn_min_len=4096", "manual_gc=false"])
    mapping = load_sft_config(RECIPE, {"mode": "lora", "lora.r": 16, "cudnn_min_len": 4096, "manual_gc": False})
    assert items == mapping
    assert (items.mode, items.lora.r, items.cudnn_min_len, items.manual_gc) == ("lora", 16, 4096, False)
    assert load_sft_config(RECIPE, {"student": "16", "data": "a=b: c"}).student == "16"  # strings stay strings


def test_bad_overrides_and_recipes_name_the_key_and_file(tmp_path):
    with pytest.raises(ConfigError, match="expected key.path=value"):
        load_sft_config(RECIPE, ["mode"])
    with pytest.raises(ConfigError, match=r"qwen2.5-math-1.5b.yaml: lora.r: "):
        load_sft_config(RECIPE, ["lora.r=0"])
    flat = tmp_path / "flat.yaml"  # a recipe may also hold SFTConfig fields at the top level
    flat.write_text("student: x\ncudnn_bucket: 0\n")
    with pytest.raises(ValueError, match="flat.yaml: cudnn_bucket"):
        load_sft_config(flat)
    with pytest.raises(ValueError, match="missing.yaml"):
        load_sft_config(tmp_path / "missing.yaml")


def test_cli_passes_set_items_to_the_one_parser(monkeypatch, tmp_path, capsys):
    seen = {}

    def fake_run_sft(cfg, out_dir):
        seen.update(cfg=cfg, out=out_dir)
        return {"stage": "sft"}

    monkeypatch.setattr(stage, "run_sft", fake_run_sft)
    stage.main(["--config", str(RECIPE), "--out", str(tmp_path), "--set", "mode=lora", "--set", "lora.r=8",
                "--set", "attention_kernel=flash"])
    assert (seen["cfg"].mode, seen["cfg"].lora.r, seen["cfg"].attention_kernel) == ("lora", 8, "flash")
    assert seen["out"] == str(tmp_path) and '"stage": "sft"' in capsys.readouterr().out


def test_one_precision_resolver():
    auto, fp32 = SFTConfig(student="x"), SFTConfig(student="x", precision="fp32")
    assert resolve_precision(auto, "cpu") == "fp32" and resolve_precision(auto, torch.device("cpu")) == "fp32"
    assert resolve_precision(auto, "cuda") == "bf16" and resolve_precision(fp32, "cuda") == "fp32"


def test_kernel_defaults_are_the_config_defaults():
    cfg, settings = SFTConfig(student="x"), attention.KernelSettings()
    assert (cfg.cudnn_min_len, cfg.cudnn_bucket) == (settings.cudnn_min_len, settings.cudnn_bucket)
    assert cfg.manual_gc and cfg.group_projections


def test_config_sets_the_attention_kernel_and_its_cudnn_knobs():
    from transformers import AutoModelForCausalLM

    from factory.train.testing import tiny_config
    from factory.train.trainer import _set_up_attention

    before = attention.KernelSettings(**vars(attention.ACTIVE))
    model = AutoModelForCausalLM.from_config(tiny_config("qwen2", 97))
    cfg = SFTConfig(student="x", attention_kernel="cudnn", cudnn_min_len=4096, cudnn_bucket=512, max_length=64,
                    micro_batch_tokens=64)
    try:
        assert _set_up_attention(cfg, model, torch.device("cpu")) == {"attention_kernel": "cudnn",
                                                                      "attention_warmup_s": 0.0}
        assert attention.ACTIVE == attention.KernelSettings("cudnn", 4096, 512)
    finally:
        vars(attention.ACTIVE).update(vars(before))


@pytest.mark.parametrize("group", [True, False])
def test_config_switches_projection_groups_of_the_compute_copy(group):
    from accelerate.utils import DistributedType
    from transformers import AutoModelForCausalLM

    from factory.train.testing import tiny_config
    from factory.train.trainer import _compute_copy

    model = AutoModelForCausalLM.from_config(tiny_config("qwen2", 97))
    accelerator = SimpleNamespace(distributed_type=DistributedType.NO, unwrap_model=lambda m: m)
    cfg = SFTConfig(student="x", mode="full", group_projections=group)
    compute = _compute_copy(cfg, accelerator, model, "bf16", "torch")
    assert len(compute.groups) == (2 * model.config.num_hidden_layers if group else 0)
    assert _compute_copy(cfg, accelerator, model, "fp32", "torch") is None  # fp32: the model computes itself


def test_no_library_module_reads_the_old_environment_switches():
    import os
    import subprocess
    import sys

    env = {**os.environ, "FACTORY_VARLEN_KERNEL": "flash", "FACTORY_CUDNN_MIN_LEN": "1", "FACTORY_CUDNN_BUCKET": "8",
           "FACTORY_MANUAL_GC": "0", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    code = ("from factory.train import attention, trainer; s = attention.ACTIVE; "
            "print(s.kernel, s.cudnn_min_len, s.cudnn_bucket, hasattr(trainer, 'MANUAL_GC'))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["hybrid", "2048", "256", "False"]
