"""The SFT training loop: packed micro-batches, LoRA or full, one code path for 1 CPU, 1 GPU, DDP and FSDP2.

Own loop on `accelerate` (device placement, bf16, DDP/FSDP2 wrapping from `accelerate launch` configs) rather than
TRL's SFTTrainer, because it is more correct and faster here (bench/sft.py measures the speed against SFTTrainer):
- a step is exactly `global_batch_size` samples (the paper's batch 64), cut into token-budget micro-batches; the
  loss is summed over the step's assistant tokens and divided by their count, so every token weighs the same
  whatever the packing (HF's per-micro-batch mean weighs tokens of short micro-batches more);
- samples are spread over GPUs by tokens, not by count, and packed first-fit (no padding at all);
- the data order is a pure function of (seed, epoch): resume replays the same steps without a sampler state;
- the LM head and loss are fused (loss.py): no logits tensor, which is what limits context length otherwise;
- full FT in one process computes on a bf16 copy of fp32 master weights (compute_copy.py), not through FSDP or
  autocast casts in every micro-batch.
"""
from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from factory.train.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from factory.train.compute_copy import BF16ComputeCopy
from factory.train.config import SFTConfig
from factory.train.data import IGNORE_INDEX, TokenizedSample
from factory.train.loss import install_fused_loss
from factory.train.model import causal_lm_of, load_student, model_flops_per_token
from factory.train.packing import (StepPlan, collate_packed, model_kwargs, plan_epoch, set_cuda_kernel,
                                   warm_cudnn_plans)


@dataclass
class TrainResult:
    steps: int
    epochs: int
    tokens: int
    trained_tokens: int
    final_loss: float | None
    tokens_per_s: float
    model_dir: Path | None
    adapter_dir: Path | None
    log_path: Path
    resumed_from: int


def build_plan(samples: list[TokenizedSample], cfg: SFTConfig, world_size: int) -> list[StepPlan]:
    lengths = np.array([len(s) for s in samples], dtype=np.int64)
    trained = np.array([int((s.labels[1:] != IGNORE_INDEX).sum()) for s in samples], dtype=np.int64)
    plan: list[StepPlan] = []
    for epoch in range(cfg.epochs):
        plan.extend(plan_epoch(lengths, trained, epoch, cfg.seed, cfg.global_batch_size, world_size,
                               cfg.micro_batch_tokens))
        if cfg.max_steps is not None and len(plan) >= cfg.max_steps:
            break
    return plan[:cfg.max_steps] if cfg.max_steps is not None else plan


def _fingerprint(samples: list[TokenizedSample], cfg: SFTConfig) -> str:
    import hashlib

    digest = hashlib.sha256()
    digest.update(np.array([len(s) for s in samples], dtype=np.int64).tobytes())
    for s in samples[:: max(1, len(samples) // 64)]:
        digest.update(s.input_ids.tobytes())
    digest.update(json.dumps([cfg.seed, cfg.epochs, cfg.global_batch_size, cfg.micro_batch_tokens,
                              cfg.max_steps]).encode())
    return digest.hexdigest()[:16]


class _Log:
    """Appends JSON lines to train_log.jsonl (main process only); on resume drops lines past the checkpoint."""

    def __init__(self, path: Path, main: bool, resume_step: int):
        self.path, self.main = path, main
        if main:
            path.parent.mkdir(parents=True, exist_ok=True)
            kept = []
            if resume_step and path.exists():
                kept = [line for line in path.read_text().splitlines()
                        if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        if self.main:
            with self.path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")


def _progress(enabled: bool, total: int, start: int):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(TextColumn("sft"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                        TimeRemainingColumn(), disable=not enabled)
    task = progress.add_task("sft", total=total, completed=start, info="")
    return progress, task


def train(cfg: SFTConfig, samples: list[TokenizedSample], out_dir: str | Path, *, tokenizer=None,
          eos_token_ids: list[int] | None = None, pad_id: int = 0, model_config=None,
          stop_after_steps: int | None = None, export: bool = True, save_final: bool = True) -> TrainResult:
    """Train on tokenized samples and write DIR/sft (`out_dir`): checkpoints/, train_log.jsonl, model/, adapter/.

    `model_config` builds a random-weight student of that config (tests, benchmarks); `stop_after_steps` stops
    as if the run were killed after that step (tests of resume); `save_final=False` skips the last checkpoint
    (benchmarks)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedType
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    out = Path(out_dir)
    if not samples:
        raise ValueError("no training samples left after tokenization (see counts.json)")
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if device_type == "cuda" else "fp32")
    accelerator = Accelerator(mixed_precision="bf16" if precision == "bf16" else "no", cpu=device_type == "cpu")
    fsdp = accelerator.distributed_type == DistributedType.FSDP
    world, rank, main = accelerator.num_processes, accelerator.process_index, accelerator.is_main_process
    torch.manual_seed(cfg.seed)

    model, _ = load_student(cfg, accelerator.device, fsdp=fsdp, model_config=model_config)
    attention_kernel = set_cuda_kernel(cfg.attention_kernel, accelerator.device)
    attention_warmup_s = warm_cudnn_plans(causal_lm_of(model).config, cfg.max_length, accelerator.device,
                                          cfg.micro_batch_tokens)
    loss_impl = cfg.loss_impl
    if loss_impl == "auto":
        loss_impl = "liger" if (device_type == "cuda" and _has_liger()) else "torch"
    install_fused_loss(causal_lm_of(model), loss_impl, cfg.loss_chunk_tokens)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    # fused AdamW on plain CUDA tensors; foreach for FSDP's DTensors (torch would otherwise fall back to a
    # per-parameter loop: measured 250 ms per step for 1.5B on an H100)
    speed = {"fused": True} if device_type == "cuda" and not fsdp else {"foreach": True}
    optimizer = torch.optim.AdamW(trainable, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                  eps=cfg.adam_eps, weight_decay=cfg.weight_decay, **speed)
    model, optimizer = accelerator.prepare(model, optimizer)
    inner_optimizer = getattr(optimizer, "optimizer", optimizer)
    compute = None  # the bf16 copy that runs forward/backward (full FT, one process), else the model itself
    if (cfg.bf16_compute_copy and cfg.mode == "full" and precision == "bf16"
            and accelerator.distributed_type == DistributedType.NO):
        compute = BF16ComputeCopy(accelerator.unwrap_model(model))
        install_fused_loss(causal_lm_of(compute.module), loss_impl, cfg.loss_chunk_tokens)
        compute.module.train()

    plan = build_plan(samples, cfg, world)
    total_steps = len(plan)
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(
        inner_optimizer, num_warmup_steps=math.ceil(cfg.warmup_ratio * total_steps),
        num_training_steps=total_steps, min_lr_rate=cfg.min_lr_ratio)
    fingerprint = _fingerprint(samples, cfg)

    ckpt_root = out / "checkpoints"
    start_step, tokens_done, trained_done, elapsed_before = 0, 0, 0, 0.0
    existing = list_checkpoints(ckpt_root) if cfg.resume else []
    if existing:
        state = load_checkpoint(existing[-1], model, inner_optimizer, scheduler)
        if state.get("fingerprint") != fingerprint:
            raise ValueError(f"{existing[-1]}: checkpoint was written for other data or batch settings; "
                             f"use a new output folder or resume: false")
        start_step = state["step"]
        tokens_done, trained_done = state.get("tokens", 0), state.get("trained_tokens", 0)
        elapsed_before = state.get("elapsed_s", 0.0)
        if compute is not None:
            compute.refresh()
    log = _Log(out / "train_log.jsonl", main, start_step)

    lengths_sq = sum(len(s) ** 2 for s in samples) / max(1, sum(len(s) for s in samples))
    flops_per_token = model_flops_per_token(causal_lm_of(accelerator.unwrap_model(model)).config, lengths_sq,
                                            cfg.mode == "lora")
    steps_per_epoch = math.ceil(len(samples) / cfg.global_batch_size)
    last_loss = None
    run_tokens, run_time = 0, 0.0
    progress, task = _progress(cfg.progress and main, total_steps, start_step)
    stop_at = total_steps if stop_after_steps is None else min(total_steps, stop_after_steps)
    with progress, _collect_between_steps(device_type == "cuda" and MANUAL_GC):
        for step in range(start_step, stop_at):
            step_plan = plan[step]
            if device_type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            loss_sum = torch.zeros((), device=accelerator.device)
            lr = scheduler.get_last_lr()[0]
            scale = world / max(1, step_plan.trained_tokens)
            for micro in step_plan.micro_batches[rank]:
                batch = collate_packed([samples[i] for i in micro], pad_id)
                if compute is None:
                    outputs = model(**model_kwargs(batch, accelerator.device))
                    accelerator.backward(outputs.loss * scale)
                else:
                    outputs = compute.module(**model_kwargs(batch, accelerator.device))
                    (outputs.loss * scale).backward()
                loss_sum += outputs.loss.detach().float()
            grad_norm = None
            if cfg.max_grad_norm > 0:
                grad_norm = float(accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm))
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if compute is not None:
                compute.refresh()
            loss_total = accelerator.reduce(loss_sum, reduction="sum") if world > 1 else loss_sum
            last_loss = float(loss_total) / max(1, step_plan.trained_tokens)
            if not gc.isenabled():
                gc.collect()
            if device_type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            step_tokens = sum(len(samples[i]) for i in step_plan.samples)
            tokens_done += step_tokens
            trained_done += step_plan.trained_tokens
            run_tokens += step_tokens
            run_time += dt
            done = step + 1
            if main and (done % cfg.log_every_steps == 0 or done == stop_at):
                record = {"step": done, "epoch": round(step_plan.epoch + _epoch_fraction(step, steps_per_epoch), 4),
                          "loss": round(last_loss, 6), "lr": lr, "grad_norm": grad_norm,
                          "tokens": tokens_done, "trained_tokens": trained_done, "samples": len(step_plan.samples),
                          "micro_batches": len(step_plan.micro_batches[rank]), "step_s": round(dt, 4),
                          "tokens_per_s": round(step_tokens / dt, 1),
                          "tokens_per_s_per_gpu": round(step_tokens / dt / world, 1),
                          "tflops_per_gpu": round(flops_per_token * step_tokens / dt / world / 1e12, 2),
                          "elapsed_s": round(elapsed_before + run_time, 2)}
                if done == start_step + 1 and device_type == "cuda":
                    record["attention_kernel"] = attention_kernel
                    record["attention_warmup_s"] = round(attention_warmup_s, 2)
                if device_type == "cuda":
                    record["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
                log.write(record)
            progress.update(task, completed=done, info=f"loss {last_loss:.4f} {step_tokens / dt:,.0f} tok/s")
            if (cfg.save_every_steps and done % cfg.save_every_steps == 0) or (save_final and done == total_steps):
                save_checkpoint(ckpt_root, done, model, inner_optimizer, scheduler,
                                {"fingerprint": fingerprint, "tokens": tokens_done, "trained_tokens": trained_done,
                                 "elapsed_s": elapsed_before + run_time}, cfg.keep_checkpoints)
    model_dir = adapter_dir = None
    if export and stop_at == total_steps:
        model_dir, adapter_dir = export_student(cfg, accelerator, model, out, tokenizer, eos_token_ids, precision)
    accelerator.wait_for_everyone()
    return TrainResult(steps=stop_at, epochs=cfg.epochs, tokens=tokens_done, trained_tokens=trained_done,
                       final_loss=last_loss, tokens_per_s=run_tokens / run_time if run_time else 0.0,
                       model_dir=model_dir, adapter_dir=adapter_dir, log_path=out / "train_log.jsonl",
                       resumed_from=start_step)


# Python's cyclic garbage collector runs at the end of each step, not whenever allocations trip its thresholds
# mid-step (Megatron-LM's --manual-gc): a collection in the middle of a micro-batch stops the CPU from launching
# kernels while the GPU drains its queue. FACTORY_MANUAL_GC=0 restores automatic collection.
MANUAL_GC = os.environ.get("FACTORY_MANUAL_GC", "1") == "1"


@contextlib.contextmanager
def _collect_between_steps(enabled: bool):
    """Freeze the objects that exist now (model, data) out of the collector's sweeps and turn automatic
    collection off for the loop; the loop calls gc.collect() once per optimizer step."""
    if not enabled or not gc.isenabled():
        yield
        return
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


def _epoch_fraction(step: int, steps_per_epoch: int) -> float:
    return ((step % steps_per_epoch) + 1) / steps_per_epoch


def _has_liger() -> bool:
    import importlib.util

    return importlib.util.find_spec("liger_kernel") is not None


def export_student(cfg: SFTConfig, accelerator, model, out: Path, tokenizer, eos_token_ids, precision: str):
    """Write DIR/sft/model (full weights; LoRA merged when merge_on_export) and DIR/sft/adapter (LoRA), with the
    tokenizer (template, pad) and a generation_config that stops on the end-of-turn token."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from accelerate.utils import DistributedType

    unwrapped = accelerator.unwrap_model(model)
    distributed = accelerator.num_processes > 1 or accelerator.distributed_type == DistributedType.FSDP
    full_sd = None
    if distributed:  # gather the shards on the main process, on CPU
        full_sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    model_dir = out / "model"
    adapter_dir = out / "adapter" if cfg.mode == "lora" else None
    if accelerator.is_main_process:
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        if cfg.mode == "lora":
            peft_model = _peft_on_cpu(unwrapped, full_sd) if distributed else unwrapped
            peft_model.save_pretrained(str(adapter_dir))
            _save_tokenizer(tokenizer, adapter_dir)
            if cfg.lora.merge_on_export:
                merged = peft_model.merge_and_unload()
                _save_model(merged, None, model_dir, dtype, eos_token_ids)
        else:
            _save_model(causal_lm_of(unwrapped), full_sd, model_dir, dtype, eos_token_ids)
        if model_dir.exists():
            _save_tokenizer(tokenizer, model_dir)
    accelerator.wait_for_everyone()
    return (model_dir if model_dir.exists() else None), adapter_dir


def _peft_on_cpu(unwrapped, full_sd):
    """A CPU copy of the peft model holding the gathered full state dict (FSDP export)."""
    import copy

    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    base = causal_lm_of(unwrapped)
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(base.config)
    fresh = fresh.to_empty(device="cpu")
    peft_model = get_peft_model(fresh, copy.deepcopy(unwrapped.peft_config["default"]))
    peft_model.load_state_dict(full_sd, strict=False, assign=True)
    return peft_model


def _save_model(model, state_dict, path: Path, dtype, eos_token_ids) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if state_dict is None:
        state_dict = model.state_dict()
    state_dict = {k: (v.detach().to("cpu", dtype) if v.is_floating_point() else v.detach().cpu())
                  for k, v in state_dict.items()}
    model.config.use_cache = True
    model.config.dtype = dtype
    if eos_token_ids:
        model.generation_config.eos_token_id = eos_token_ids if len(eos_token_ids) > 1 else eos_token_ids[0]
        model.config.eos_token_id = model.generation_config.eos_token_id
    model.save_pretrained(str(path), state_dict=state_dict)


def _save_tokenizer(tokenizer, path: Path) -> None:
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))
