"""A tiny random policy with the embedded model's real tokenizer, and pipeline configs for the GRPO tests."""
from __future__ import annotations

from pathlib import Path


def build_policy(folder: Path, kind: str = "llama", seed: int = 0) -> Path:
    """Random Llama/Qwen2 weights (2 layers, hidden 32) under SmolLM2-135M-Instruct's tokenizer and chat template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from factory.core.embedded import embedded_model_dir
    from factory.train.testing import tiny_config

    folder = Path(folder)
    if (folder / "config.json").exists():
        return folder
    tokenizer = AutoTokenizer.from_pretrained(str(embedded_model_dir()))
    torch.manual_seed(seed)
    config = tiny_config(kind, len(tokenizer), layers=2, hidden=32)
    config.eos_token_id = tokenizer.eos_token_id
    config.bos_token_id = tokenizer.bos_token_id
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def pipeline_tree(policy: Path, **grpo) -> dict:
    """A pipeline with arithmetic prompts and a small grpo block (overrides in `grpo`)."""
    block = {"policy": str(policy), "num_generations": 4, "prompts_per_step": 2, "steps": 2,
             "max_completion_length": 16, "learning_rate": 1e-3, "save_steps": 1, "reward_workers": 1,
             "reward_timeout_s": 20, "template": {"kind": "r1_zero", "prefill": "<think>\n",
                                                   "instructions": {"math": ""}}}
    block.update(grpo)
    return {"name": "grpo-test", "stages": ["grpo"],
            "prompts": [{"kind": "arithmetic", "n": 8, "seed": 0, "max_operand": 9, "ops": ["add"],
                         "split": "train"}],
            "grpo": block}
