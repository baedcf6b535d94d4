"""Building and running the TRL trainer for `factory grpo` (imported only when the stage runs: torch, TRL)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from factory.grpo import rollouts
from factory.grpo.checks import resolve_use_vllm
from factory.grpo.config import GRPOConfig
from factory.grpo.rewards import RewardPool
from factory.grpo.trainer import (
    FactoryGRPOTrainer,
    RewardBank,
    StepLog,
    last_checkpoint,
    truncate_log,
)


def _trl_args(grpo: GRPOConfig, ckpt_dir: Path, bf16: bool, use_cpu: bool, use_vllm: bool = False,
              max_prompt_tokens: int = 0, processes: int = 1):
    """TRL's GRPOConfig for the factory's: every GRPO and running choice set explicitly, none left to TRL's
    defaults (which differ: loss dapo, β 0, gradient checkpointing on, G 8). `prompts_per_step` is global: TRL's
    per-device batch is each process's share (checks.check_processes made sure it divides)."""
    from trl import GRPOConfig as TRLConfig

    total = grpo.prompts_per_step // processes * grpo.num_generations
    micro = grpo.micro_batch_size or total
    server = {"vllm_server_base_url": grpo.vllm_server_base_url,
              "vllm_server_timeout": grpo.vllm_server_timeout_s} if grpo.vllm_mode == "server" else {}
    return TRLConfig(
        output_dir=str(ckpt_dir), per_device_train_batch_size=micro,
        gradient_accumulation_steps=total // micro, num_generations=grpo.num_generations, max_steps=grpo.steps,
        max_completion_length=grpo.max_completion_length, temperature=grpo.temperature, top_p=grpo.top_p,
        epsilon=grpo.epsilon, epsilon_high=grpo.epsilon_high, beta=grpo.effective_beta, loss_type=grpo.loss_type,
        scale_rewards=grpo.scale_rewards, num_iterations=grpo.num_iterations, learning_rate=grpo.learning_rate,
        lr_scheduler_type=grpo.lr_scheduler, warmup_steps=grpo.warmup_steps, weight_decay=grpo.weight_decay,
        max_grad_norm=grpo.max_grad_norm, reward_weights=list(grpo.rewards.values()),
        mask_truncated_completions=grpo.mask_truncated_completions, save_strategy="steps",
        save_steps=grpo.save_steps, save_total_limit=grpo.save_total_limit, logging_steps=1, seed=grpo.seed,
        data_seed=grpo.seed, use_cpu=use_cpu, bf16=bf16, report_to=[], disable_tqdm=True,
        gradient_checkpointing=grpo.gradient_checkpointing, disable_dropout=True, remove_unused_columns=False,
        use_vllm=use_vllm, vllm_mode=grpo.vllm_mode, **server,
        vllm_gpu_memory_utilization=grpo.vllm_gpu_memory_utilization,
        vllm_enable_sleep_mode=grpo.vllm_enable_sleep_mode,
        vllm_max_model_length=(max_prompt_tokens + grpo.max_completion_length) if max_prompt_tokens else None,
        model_init_kwargs={"dtype": "bfloat16" if bf16 else "float32"}, dataloader_num_workers=0,
        ddp_find_unused_parameters=False)


def _lora(grpo: GRPOConfig, policy: str):
    if grpo.mode != "lora":
        return None
    from peft import LoraConfig
    from transformers import AutoConfig

    from factory.train.model import LORA_TARGETS

    model_type = AutoConfig.from_pretrained(policy).model_type
    targets = grpo.lora.target_modules
    if targets == "auto":
        targets = LORA_TARGETS.get(model_type, "all-linear")
    return LoraConfig(r=grpo.lora.r, lora_alpha=grpo.lora.alpha, lora_dropout=grpo.lora.dropout,
                      target_modules=targets, task_type="CAUSAL_LM", bias="none")


def _save_final(trainer, tokenizer, grpo_dir: Path) -> dict:
    """model/ (full weights, LoRA merged) and adapter/ (LoRA), each renamed into place whole."""
    from peft import PeftModel

    model = trainer.accelerator.unwrap_model(trainer.model)
    out = {}
    if isinstance(model, PeftModel):
        tmp = grpo_dir / f".adapter.tmp-{os.getpid()}"
        model.save_pretrained(tmp)
        shutil.rmtree(grpo_dir / "adapter", ignore_errors=True)
        os.replace(tmp, grpo_dir / "adapter")
        out["adapter_dir"] = str(grpo_dir / "adapter")
        model = model.merge_and_unload()
    tmp = grpo_dir / f".model.tmp-{os.getpid()}"
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(grpo_dir / "model", ignore_errors=True)
    os.replace(tmp, grpo_dir / "model")
    out["model_dir"] = str(grpo_dir / "model")
    return out


def _load_reference(trainer, reference: str, bf16: bool) -> None:
    """A reference other than the initial policy replaces the copy TRL loaded."""
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(reference, dtype=torch.bfloat16 if bf16 else torch.float32)
    ref.eval()
    trainer.ref_model = trainer.accelerator.prepare_model(ref, evaluation_mode=True)


def _sampling(grpo: GRPOConfig) -> str:
    return json.dumps({"n": grpo.num_generations, "temperature": grpo.temperature, "top_p": grpo.top_p,
                       "max_tokens": grpo.max_completion_length, "seed": grpo.seed}, sort_keys=True)


def _resume_point(ckpt_dir: Path, rollout_dir: Path, log_path: Path, state) -> tuple[Path | None, int]:
    """The checkpoint to resume from and its step. The main process removes what the steps after it wrote (their
    rollout shards, units ≥ step × processes, and log lines), so each step is written exactly once; the other
    ranks wait for it, then see the same checkpoint."""
    if state.is_main_process:
        rollout_dir.mkdir(parents=True, exist_ok=True)
        ckpt = last_checkpoint(ckpt_dir)  # removes incomplete newer ones
        start_step = int(ckpt.name.split("-")[1]) if ckpt else 0
        rollouts.drop_after(rollout_dir, start_step * state.num_processes)
        truncate_log(log_path, start_step)
    state.wait_for_everyone()
    ckpt = last_checkpoint(ckpt_dir)
    return ckpt, int(ckpt.name.split("-")[1]) if ckpt else 0


def _finish(trainer, tokenizer, grpo_dir: Path, rollout_config: dict, state) -> tuple[dict, dict]:
    """After every rank's last shard: the main process saves the model and finalizes the rollouts folder; the
    others read its counts."""
    state.wait_for_everyone()
    saved, counts = {}, None
    if state.is_main_process:
        saved = _save_final(trainer, tokenizer, grpo_dir)
        counts = rollouts.finalize_rollouts(grpo_dir / "rollouts", rollout_config)
    state.wait_for_everyone()
    if counts is None:
        counts = json.loads((grpo_dir / "rollouts" / "counts.json").read_text())
    return saved, counts


def train(cfg, grpo: GRPOConfig, policy: str, reference: str | None, template, tokenizer, dataset,
          grpo_dir: Path) -> dict:
    """Train (or resume) and save; returns counts.json's `extra` plus `rollout_rows`."""
    from accelerate import PartialState

    state = PartialState()
    cuda = torch.cuda.is_available()
    bf16 = grpo.precision == "bf16" or (grpo.precision == "auto" and cuda)
    ckpt_dir, rollout_dir, log_path = grpo_dir / "checkpoints", grpo_dir / "rollouts", grpo_dir / "train_log.jsonl"
    ckpt, start_step = _resume_point(ckpt_dir, rollout_dir, log_path, state)
    log = StepLog(log_path)
    eos = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    with RewardPool(grpo, cfg.verify) as pool:
        bank = RewardBank(pool, dict(grpo.rewards), template.prefill or "", template.kind,
                          grpo.max_completion_length, eos)
        trainer = FactoryGRPOTrainer(model=policy, reward_funcs=[bank.func(n) for n in grpo.rewards],
                                     args=_trl_args(grpo, ckpt_dir, bf16, use_cpu=not cuda,
                                                    use_vllm=resolve_use_vllm(grpo),
                                                    max_prompt_tokens=max(dataset["prompt_tokens"]),
                                                    processes=state.num_processes),
                                     train_dataset=dataset, processing_class=tokenizer, callbacks=[log],
                                     peft_config=_lora(grpo, policy))
        trainer.setup_factory(bank, rollout_dir, policy, _sampling(grpo), grpo.drop_equal_groups)
        if reference is not None and grpo.reference_model is not None:
            _load_reference(trainer, reference, bf16)
        trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
        timeouts = pool.timeouts
    saved, counts = _finish(trainer, tokenizer, grpo_dir, {"policy": policy, "grpo": grpo.model_dump(
        mode="json", exclude={"vllm_server_base_url", "vllm_server_timeout_s"})}, state)
    summary = {k: v for k, v in log.summary.items() if isinstance(v, (int, float))}
    return {"steps": trainer.state.global_step, "resumed_from_step": start_step, "rollout_units": counts["units"],
            "rollout_rows": counts["records_out"], "reward_timeouts_this_run": timeouts, "policy": policy,
            "mode": grpo.mode, **saved, **summary}
