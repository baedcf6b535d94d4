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
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from factory.train.attention import set_cuda_kernel, warm_cudnn_plans
from factory.train.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from factory.train.compute_copy import BF16ComputeCopy
from factory.train.config import SFTConfig
from factory.train.data import IGNORE_INDEX, TokenizedSample
from factory.train.export import export_student
from factory.train.loss import install_fused_loss
from factory.train.model import causal_lm_of, load_student, model_flops_per_token, resolve_precision
from factory.train.packing import StepPlan, collate_packed, model_kwargs, plan_epoch


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


def train(cfg: SFTConfig, samples: list[TokenizedSample], out_dir: str | Path, *, tokenizer=None,
          eos_token_ids: list[int] | None = None, pad_id: int = 0, model_config=None,
          stop_after_steps: int | None = None, export: bool = True, save_final: bool = True) -> TrainResult:
    """Train on tokenized samples and write DIR/sft (`out_dir`): checkpoints/, train_log.jsonl, model/, adapter/.

    `model_config` builds a random-weight student of that config (tests, benchmarks); `stop_after_steps` stops
    as if the run were killed after that step (tests of resume); `save_final=False` skips the last checkpoint
    (benchmarks)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    if not samples:
        raise ValueError("no training samples left after tokenization (see counts.json)")
    out, cuda = Path(out_dir), torch.cuda.is_available()
    precision = resolve_precision(cfg, "cuda" if cuda else "cpu")
    accelerator = Accelerator(mixed_precision="bf16" if precision == "bf16" else "no", cpu=not cuda)
    fsdp = accelerator.distributed_type == DistributedType.FSDP
    world, rank, main = accelerator.num_processes, accelerator.process_index, accelerator.is_main_process
    torch.manual_seed(cfg.seed)

    # the student, its attention kernel and fused loss, the optimizer, the bf16 compute copy (full FT, 1 process)
    model, _ = load_student(cfg, accelerator.device, fsdp=fsdp, model_config=model_config)
    attention = _set_up_attention(cfg, model, accelerator.device)
    loss_impl = _install_loss(cfg, model, cuda)
    model.train()
    model, optimizer = accelerator.prepare(model, _optimizer(cfg, model, fused=cuda and not fsdp))
    inner_optimizer = getattr(optimizer, "optimizer", optimizer)
    compute = _compute_copy(cfg, accelerator, model, precision, loss_impl)

    # every step's samples, the schedule over them, and where a previous run of the same plan stopped
    plan = build_plan(samples, cfg, world)
    total_steps = len(plan)
    scheduler = _scheduler(cfg, inner_optimizer, total_steps)
    fingerprint = _fingerprint(samples, cfg)
    ckpt_root = out / "checkpoints"
    start_step, tally = _resume(cfg, ckpt_root, model, inner_optimizer, scheduler, fingerprint, compute)
    log = _Log(out / "train_log.jsonl", main, start_step, world=world, first_step_extra=attention if cuda else {},
               steps_per_epoch=math.ceil(len(samples) / cfg.global_batch_size),
               flops_per_token=_flops_per_token(cfg, samples, causal_lm_of(accelerator.unwrap_model(model))))

    # the steps: forward/backward of this rank's micro-batches, one optimizer step, a log line, checkpoints
    last_loss = None
    progress, task = _progress(cfg.progress and main, total_steps, start_step)
    stop_at = total_steps if stop_after_steps is None else min(total_steps, stop_after_steps)
    with progress, _collect_between_steps(cuda and cfg.manual_gc):
        for step in range(start_step, stop_at):
            step_plan = plan[step]
            _synchronize(cuda)
            t0 = time.perf_counter()
            loss_sum = torch.zeros((), device=accelerator.device)
            lr = scheduler.get_last_lr()[0]
            scale = world / max(1, step_plan.trained_tokens)
            for micro in step_plan.micro_batches[rank]:
                batch = model_kwargs(collate_packed([samples[i] for i in micro], pad_id), accelerator.device)
                loss_sum += forward_backward(model, compute, accelerator, batch, scale)
            grad_norm = _optimizer_step(cfg, accelerator, model, optimizer, scheduler, compute)
            loss_total = accelerator.reduce(loss_sum, reduction="sum") if world > 1 else loss_sum
            last_loss = float(loss_total) / max(1, step_plan.trained_tokens)
            _collect_garbage_if_manual()
            _synchronize(cuda)
            dt = time.perf_counter() - t0
            step_tokens = sum(len(samples[i]) for i in step_plan.samples)
            tally.add(step_tokens, step_plan.trained_tokens, dt)
            done = step + 1
            if main and (done % cfg.log_every_steps == 0 or done == stop_at):
                log.step(done, step_plan, rank, last_loss, lr, grad_norm, dt, step_tokens, tally)
            progress.update(task, completed=done, info=f"loss {last_loss:.4f} {step_tokens / dt:,.0f} tok/s")
            if (cfg.save_every_steps and done % cfg.save_every_steps == 0) or (save_final and done == total_steps):
                save_checkpoint(ckpt_root, done, model, inner_optimizer, scheduler, tally.state(fingerprint),
                                cfg.keep_checkpoints)
    model_dir = adapter_dir = None
    if export and stop_at == total_steps:
        model_dir, adapter_dir = export_student(cfg, accelerator, model, out, tokenizer, eos_token_ids, precision)
    accelerator.wait_for_everyone()
    return TrainResult(steps=stop_at, epochs=cfg.epochs, tokens=tally.tokens, trained_tokens=tally.trained_tokens,
                       final_loss=last_loss, tokens_per_s=tally.tokens_per_s, model_dir=model_dir,
                       adapter_dir=adapter_dir, log_path=out / "train_log.jsonl", resumed_from=start_step)


def forward_backward(model, compute: BF16ComputeCopy | None, accelerator, batch: dict, scale: float) -> torch.Tensor:
    """Forward and backward of one micro-batch, its loss scaled by `scale`; returns the unscaled loss (detached,
    fp32). With a compute copy the bf16 copy runs both (its backward folds into the fp32 master gradients);
    without, the (accelerate-prepared) model under plain autograd."""
    if compute is None:
        loss = model(**batch).loss
        accelerator.backward(loss * scale)
    else:
        loss = compute.module(**batch).loss
        (loss * scale).backward()
    return loss.detach().float()


# ---------------------------------------------------------------------------------------------- set-up

def _set_up_attention(cfg: SFTConfig, model, device: torch.device) -> dict:
    """Choose the CUDA attention kernel and build cuDNN's plans before the first step (a plan built mid-run stalls
    that step); returns what the first log line reports."""
    kernel = set_cuda_kernel(cfg.attention_kernel, device, cudnn_min_len=cfg.cudnn_min_len,
                             cudnn_bucket=cfg.cudnn_bucket)
    warmup_s = warm_cudnn_plans(causal_lm_of(model).config, cfg.max_length, device, cfg.micro_batch_tokens)
    return {"attention_kernel": kernel, "attention_warmup_s": round(warmup_s, 2)}


def _install_loss(cfg: SFTConfig, model, cuda: bool) -> str:
    """Fuse the LM head and the loss (loss.py); returns the implementation (auto: liger on GPU when installed)."""
    loss_impl = cfg.loss_impl
    if loss_impl == "auto":
        loss_impl = "liger" if (cuda and _has_liger()) else "torch"
    install_fused_loss(causal_lm_of(model), loss_impl, cfg.loss_chunk_tokens)
    return loss_impl


def _optimizer(cfg: SFTConfig, model, fused: bool) -> torch.optim.AdamW:
    """AdamW over the trainable parameters: fused on plain CUDA tensors; foreach for FSDP's DTensors (torch would
    otherwise fall back to a per-parameter loop: measured 250 ms per step for 1.5B on an H100) and on the CPU."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    speed = {"fused": True} if fused else {"foreach": True}
    return torch.optim.AdamW(trainable, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                             eps=cfg.adam_eps, weight_decay=cfg.weight_decay, **speed)


def _compute_copy(cfg: SFTConfig, accelerator, model, precision: str, loss_impl: str) -> BF16ComputeCopy | None:
    """The bf16 copy that runs forward/backward for full FT in bf16 in one process; None: the model itself does."""
    from accelerate.utils import DistributedType

    if not (cfg.bf16_compute_copy and cfg.mode == "full" and precision == "bf16"
            and accelerator.distributed_type == DistributedType.NO):
        return None
    compute = BF16ComputeCopy(accelerator.unwrap_model(model), group_projections=cfg.group_projections)
    install_fused_loss(causal_lm_of(compute.module), loss_impl, cfg.loss_chunk_tokens)
    compute.module.train()
    return compute


def _scheduler(cfg: SFTConfig, optimizer, total_steps: int):
    """Linear warm-up over `warmup_ratio` of the steps, then cosine decay to `min_lr_ratio` x the peak."""
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    return get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, num_warmup_steps=math.ceil(cfg.warmup_ratio * total_steps), num_training_steps=total_steps,
        min_lr_rate=cfg.min_lr_ratio)


def _flops_per_token(cfg: SFTConfig, samples: list[TokenizedSample], causal_lm) -> float:
    """Model FLOPs per trained token (model.model_flops_per_token) at the samples' token-weighted mean length."""
    lengths_sq = sum(len(s) ** 2 for s in samples) / max(1, sum(len(s) for s in samples))
    return model_flops_per_token(causal_lm.config, lengths_sq, cfg.mode == "lora")


def build_plan(samples: list[TokenizedSample], cfg: SFTConfig, world_size: int) -> list[StepPlan]:
    """Every optimizer step of the run: `epochs` epochs of packing.plan_epoch, cut at `max_steps`."""
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


# ------------------------------------------------------------------------------------- steps and checkpoints

def _optimizer_step(cfg: SFTConfig, accelerator, model, optimizer, scheduler,
                    compute: BF16ComputeCopy | None) -> float | None:
    """Clip, step the optimizer and the schedule, drop the gradients, refresh the compute copy's bf16 weights;
    returns the gradient norm before clipping (None: clipping off)."""
    grad_norm = None
    if cfg.max_grad_norm > 0:
        grad_norm = float(accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm))
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    if compute is not None:
        compute.refresh()
    return grad_norm


def _synchronize(cuda: bool) -> None:
    """Wait for the GPU, so that step times measure its work."""
    if cuda:
        torch.cuda.synchronize()


@dataclass
class _Tally:
    """Token and time totals; checkpoints carry the run's totals, `run_*` count this process only."""

    tokens: int = 0
    trained_tokens: int = 0
    elapsed_before: float = 0.0  # seconds trained before this process resumed the run
    run_tokens: int = 0
    run_time: float = 0.0

    def add(self, tokens: int, trained_tokens: int, seconds: float) -> None:
        self.tokens += tokens
        self.trained_tokens += trained_tokens
        self.run_tokens += tokens
        self.run_time += seconds

    @property
    def elapsed_s(self) -> float:
        """Seconds the run has trained, over all its processes' lives."""
        return self.elapsed_before + self.run_time

    @property
    def tokens_per_s(self) -> float:
        """This process's training throughput."""
        return self.run_tokens / self.run_time if self.run_time else 0.0

    def state(self, fingerprint: str) -> dict:
        """What a checkpoint stores besides the weights, optimizer and schedule."""
        return {"fingerprint": fingerprint, "tokens": self.tokens, "trained_tokens": self.trained_tokens,
                "elapsed_s": self.elapsed_s}


def _resume(cfg: SFTConfig, ckpt_root: Path, model, optimizer, scheduler, fingerprint: str,
            compute: BF16ComputeCopy | None) -> tuple[int, _Tally]:
    """Load the last complete checkpoint (unless resume: false); returns the step to start at and the totals."""
    existing = list_checkpoints(ckpt_root) if cfg.resume else []
    if not existing:
        return 0, _Tally()
    state = load_checkpoint(existing[-1], model, optimizer, scheduler)
    if state.get("fingerprint") != fingerprint:
        raise ValueError(f"{existing[-1]}: checkpoint was written for other data or batch settings; "
                         f"use a new output folder or resume: false")
    if compute is not None:
        compute.refresh()
    return state["step"], _Tally(state.get("tokens", 0), state.get("trained_tokens", 0), state.get("elapsed_s", 0.0))


# ------------------------------------------------------------------------------------------------- logging

class _Log:
    """Appends JSON lines to train_log.jsonl (main process only); on resume drops lines past the checkpoint."""

    def __init__(self, path: Path, main: bool, resume_step: int, *, world: int, steps_per_epoch: int,
                 flops_per_token: float, first_step_extra: dict):
        self.path, self.main, self.resume_step = path, main, resume_step
        self.world, self.steps_per_epoch, self.flops_per_token = world, steps_per_epoch, flops_per_token
        self.first_step_extra = first_step_extra  # added to the first line this process writes
        if main:
            path.parent.mkdir(parents=True, exist_ok=True)
            kept = []
            if resume_step and path.exists():
                kept = [line for line in path.read_text().splitlines()
                        if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            path.write_text("".join(line + "\n" for line in kept))

    def step(self, done: int, step_plan: StepPlan, rank: int, loss: float, lr: float, grad_norm: float | None,
             dt: float, step_tokens: int, tally: _Tally) -> None:
        """The line of optimizer step `done` (1-based)."""
        world = self.world
        record = {"step": done, "epoch": round(step_plan.epoch + _epoch_fraction(done - 1, self.steps_per_epoch), 4),
                  "loss": round(loss, 6), "lr": lr, "grad_norm": grad_norm,
                  "tokens": tally.tokens, "trained_tokens": tally.trained_tokens, "samples": len(step_plan.samples),
                  "micro_batches": len(step_plan.micro_batches[rank]), "step_s": round(dt, 4),
                  "tokens_per_s": round(step_tokens / dt, 1),
                  "tokens_per_s_per_gpu": round(step_tokens / dt / world, 1),
                  "tflops_per_gpu": round(self.flops_per_token * step_tokens / dt / world / 1e12, 2),
                  "elapsed_s": round(tally.elapsed_s, 2)}
        if done == self.resume_step + 1:
            record.update(self.first_step_extra)
        if torch.cuda.is_available():
            record["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        self.write(record)

    def write(self, record: dict) -> None:
        if self.main:
            with self.path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")


def _progress(enabled: bool, total: int, start: int):
    from factory.core.progress import step_progress  # a bar on a terminal, a line every 30 s in a log file

    return step_progress("sft", enabled, total, start)


def _epoch_fraction(step: int, steps_per_epoch: int) -> float:
    return ((step % steps_per_epoch) + 1) / steps_per_epoch


# ------------------------------------------------------------------------------------------- garbage collection

# Python's cyclic garbage collector runs at the end of each step, not whenever allocations trip its thresholds
# mid-step (Megatron-LM's --manual-gc): a collection in the middle of a micro-batch stops the CPU from launching
# kernels while the GPU drains its queue. SFTConfig.manual_gc: false restores automatic collection.

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


def _collect_garbage_if_manual() -> None:
    """The once-per-step collection while `_collect_between_steps` has automatic collection off."""
    if not gc.isenabled():
        gc.collect()


def _has_liger() -> bool:
    import importlib.util

    return importlib.util.find_spec("liger_kernel") is not None
