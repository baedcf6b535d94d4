"""`factory grpo`: prompts with answers → GRPO of a policy on verify's rewards → DIR/grpo/.

DIR/grpo holds: manifest.json (the configuration's fingerprint; a changed rerun is refused without --new-run),
checkpoints/checkpoint-N/ (TRL/transformers: weights, optimizer, scheduler, RNG, trainer state), rollouts/
(trace shards, one per step: `factory.grpo.rollouts`), train_log.jsonl (one line per step: reward, per-reward
means, accuracy and format rates, length, KL, clip fraction, loss), model/ (final weights + tokenizer, merged when
LoRA), adapter/ (LoRA), counts.json. A rerun after kill -9 resumes from the last complete checkpoint with the same
data order and step count; the rollouts and log lines of steps after that checkpoint are dropped and redone, so
each step is written exactly once.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from factory.core.config import dump_config
from factory.core.progress import console
from factory.core.shards import StageConfigChanged, fingerprint, write_json_atomic
from factory.grpo import checks
from factory.grpo.config import GRPOConfig

STAGE = "grpo"


def _policy_path(policy: str) -> str:
    if policy == "embedded":
        from factory.core.embedded import embedded_model_dir

        return str(embedded_model_dir())
    return policy


def _config(cfg, grpo: GRPOConfig, template, policy: str) -> dict:
    from factory.verify.stage import verify_fingerprint

    return {"grpo": grpo.model_dump(mode="json", exclude={"reward_workers"}), "policy": policy,
            "template": dump_config(template), "prompts": [dump_config(s) for s in (grpo.prompts or cfg.prompts)],
            "verify": verify_fingerprint(cfg.verify)}


def _changed_keys(old, new, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [k for key in sorted(set(old) | set(new))
                for k in _changed_keys(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [] if old == new else [prefix.rstrip(".")]


def _prepare_dir(grpo_dir: Path, config: dict, new_run: bool) -> dict | None:
    """Create or check DIR/grpo; returns counts.json's content when this configuration already finished."""
    if new_run and grpo_dir.exists():
        shutil.rmtree(grpo_dir)
    grpo_dir.mkdir(parents=True, exist_ok=True)
    manifest, fp = grpo_dir / "manifest.json", fingerprint(config)
    if manifest.exists():
        old = json.loads(manifest.read_text())
        if old.get("fingerprint") != fp:
            changed = _changed_keys(old.get("config", {}), config)
            raise StageConfigChanged(f"{grpo_dir} was written by a different configuration (changed: "
                                     f"{', '.join(changed) or 'fingerprint'}). Rerun with --new-run to train afresh, "
                                     f"or choose another --out folder.", changed)
        if (grpo_dir / "counts.json").exists():
            return json.loads((grpo_dir / "counts.json").read_text())
        return None
    write_json_atomic(manifest, {"stage": STAGE, "fingerprint": fp, "config": config})
    return None


def build_dataset(prompts: list[dict], template, tokenizer):
    """TRL's dataset: the prompt text exactly as the policy sees it (templated, prefill included) and every
    prompt field, which TRL hands the reward functions."""
    from datasets import Dataset

    from factory.generate.stage import build_request

    rows = []
    for p in prompts:
        _, text = build_request(p, template, tokenizer)
        n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        rows.append({**p, "prompt": text, "prompt_text": text, "prompt_tokens": n})
    return Dataset.from_list(rows), rows[0]["prompt"]


def run_grpo(cfg, out_dir: Path | str, *, new_run: bool = False) -> dict:
    """Train the pipeline's `grpo:` policy, resuming a stopped run; returns counts.json's content."""
    if getattr(cfg, "grpo", None) is None:
        raise ValueError("the pipeline has no `grpo:` block")
    from factory.generate.sources import load_prompts

    grpo: GRPOConfig = cfg.grpo
    template = grpo.template or cfg.template
    policy = _policy_path(grpo.policy)
    grpo_dir = Path(out_dir) / STAGE
    config = _config(cfg, grpo, template, policy)
    done = _prepare_dir(grpo_dir, config, new_run)
    if done is not None:
        console.print(f"grpo: already trained in {grpo_dir}")
        return done
    # -- bad input, before any model is built ---------------------------------------------------------------
    from transformers import AutoTokenizer

    from factory.grpo.rewards import check_rewards

    prompts = load_prompts(grpo.prompts or cfg.prompts)
    checks.check_prompts(prompts, grpo, cfg.verify)
    checks.check_device(grpo)
    try:
        tokenizer = AutoTokenizer.from_pretrained(policy)
    except Exception as exc:  # noqa: BLE001
        raise checks.GRPOInputError(f"grpo.policy: cannot load the tokenizer of {policy!r}: {exc}") from None
    dataset, first = build_dataset(prompts, template, tokenizer)
    checks.check_template(template, first, tokenizer, "grpo.template" if grpo.template else "template")
    reference = checks.check_reference(grpo, policy)
    check_rewards(grpo)
    from factory.grpo.train import train

    result = train(cfg, grpo, policy, reference, template, tokenizer, dataset, grpo_dir)
    counts = {"stage": STAGE, "records_in": len(prompts), "records_out": result.pop("rollout_rows"),
              "dropped": {}, "extra": result}
    write_json_atomic(grpo_dir / "counts.json", counts)
    return counts
