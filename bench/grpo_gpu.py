"""GRPO on a GPU: the factory's `grpo` stage against TRL's `GRPOTrainer` at its defaults, same rewards, in one run.

The policy is a Qwen2.5-shaped model with random bf16 weights built here (bench/generate_gpu.py's `build_model`:
the embedded tokenizer, vocab 49,152, on Qwen's body), the prompts are the built-in arithmetic problems through the
paper's R1-Zero template, the rewards are verify's math accuracy and <think> format. Every arm takes the same
optimizer step: `--prompts-per-step` prompts × G samples of up to `--max-completion` tokens. Arms (each its own
process, so each starts on an empty GPU):

  factory       `factory grpo` (factory.grpo.stage.run_grpo) as a GPU user gets it: use_vllm auto (TRL's colocated
                vLLM), no gradient checkpointing, loss grpo, β 0.001 with a reference model (R1), rewards in the
                factory's worker pool, rollouts written as shards, checkpoints.
  trl_defaults  GRPOTrainer with GRPOConfig's defaults; only the workload is set (G, completion length, steps,
                bf16, per-device batch 8 accumulated to the same step). Rollouts by `model.generate`.
  trl_vllm      trl_defaults plus TRL's own `use_vllm=True` (colocate): how much of the factory's lead TRL gets
                from its documented fast path.

Per step (the first is warm-up, not counted): seconds, rollout seconds (TRL's `_generate`, timed by a subclass),
rollout tokens/s = completion tokens / rollout seconds, training tokens/s = (prompt + completion tokens) / (step −
rollout seconds), the peak GPU memory (NVML). Prints a table line per arm, one summary line and the JSON.

    python bench/grpo_gpu.py --shape qwen2.5-1.5b --tokenizer .gpuw/tok --out bench/results/h200-2026-12-01/grpo.json
    python bench/grpo_gpu.py --shape tiny --tokenizer TOK --generations 4 --prompts-per-step 2 --max-completion 16 \\
        --steps 2 --arms factory,trl_defaults          # the CPU check of this script (measures nothing)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from generate_gpu import SHAPES, GPUMemory, build_model, emit  # noqa: E402

REWARDS = {"accuracy": 1.0, "format": 1.0}
TEMPLATE = {"kind": "r1_zero"}
ARMS = ("factory", "trl_defaults", "trl_vllm")


def add_workload_args(ap: argparse.ArgumentParser) -> None:
    """The workload options `pipeline_tree` reads (bench/grpo_modes.py runs the same workload)."""
    ap.add_argument("--generations", type=int, default=16, help="G")
    ap.add_argument("--prompts-per-step", type=int, default=8)
    ap.add_argument("--max-completion", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=4, help="optimizer steps per arm (the first is warm-up)")
    ap.add_argument("--micro-batch", type=int, default=8, help="the factory arm's micro_batch_size")
    ap.add_argument("--reward-workers", type=int, default=4)


def pipeline_tree(args, model_dir: Path) -> dict:
    n = args.prompts_per_step * args.steps
    grpo = {"policy": str(model_dir), "num_generations": args.generations, "prompts_per_step": args.prompts_per_step,
            "steps": args.steps, "max_completion_length": args.max_completion, "rewards": REWARDS,
            "save_steps": args.steps, "save_total_limit": 1, "reward_workers": args.reward_workers,
            "micro_batch_size": args.micro_batch, "template": TEMPLATE, "seed": 0}
    return {"name": "grpo-gpu-bench", "stages": ["grpo"], "grpo": grpo, "template": TEMPLATE,
            "prompts": [{"kind": "arithmetic", "n": n, "seed": 0, "max_operand": 999, "split": "train"}]}


def run_factory(args, model_dir: Path, work: Path) -> Path:
    from factory.config import PipelineConfig
    from factory.grpo.stage import run_grpo

    run_grpo(PipelineConfig.model_validate(pipeline_tree(args, model_dir)), work)
    return work / "grpo" / "train_log.jsonl"


def _trl_rewards(cfg, prefill: str):
    """verify's accuracy and format through the GRPO stage's own scoring code, called in-process as TRL does."""
    from factory.grpo.rewards import score_one
    from factory.grpo.rollouts import trace_record

    def make(name: str):
        def reward(prompts, completions, completion_ids=None, **kwargs):  # noqa: ARG001 - TRL's signature
            n, out = len(completions), []
            for i, text in enumerate(completions):
                inp = {k: v[i] for k, v in kwargs.items() if isinstance(v, list) and len(v) == n}
                rec = trace_record(inp, text, len(completion_ids[i]), int(inp["prompt_tokens"]), prefill,
                                   "r1_zero", "stop")
                out.append(score_one(name, rec, cfg.grpo, cfg.verify).value)
            return out

        reward.__name__ = name
        return reward

    return [make(name) for name in REWARDS]


def run_trl(args, model_dir: Path, work: Path, use_vllm: bool) -> Path:
    import torch
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from factory.config import PipelineConfig
    from factory.generate.sources import load_prompts
    from factory.grpo.stage import build_dataset
    from factory.grpo.trainer import StepLog, TimedGeneration

    class TimedGRPOTrainer(TimedGeneration, GRPOTrainer):  # measurement only: TRL's behaviour is unchanged
        pass

    cfg = PipelineConfig.model_validate(pipeline_tree(args, model_dir))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dataset, _ = build_dataset(load_prompts(cfg.prompts), cfg.template, tokenizer)
    micro = 8  # GRPOConfig's per_device_train_batch_size default
    total = args.prompts_per_step * args.generations
    cuda = torch.cuda.is_available()
    trl_args = GRPOConfig(output_dir=str(work / "trl"), num_generations=args.generations,
                          max_completion_length=args.max_completion, max_steps=args.steps,
                          gradient_accumulation_steps=max(1, total // micro), bf16=cuda, use_cpu=not cuda,
                          logging_steps=1, save_strategy="no", report_to=[], seed=0, use_vllm=use_vllm,
                          disable_tqdm=True)
    log_path = work / "train_log.jsonl"
    trainer = TimedGRPOTrainer(model=str(model_dir), reward_funcs=_trl_rewards(cfg, cfg.template.prefill or ""),
                               args=trl_args, train_dataset=dataset, processing_class=tokenizer,
                               callbacks=[StepLog(log_path)])
    trainer.train()
    return log_path


def summarise(log_path: Path, args, prompt_tokens: float) -> dict:
    """Medians over the steps after the first (warm-up)."""
    steps = [json.loads(line) for line in log_path.read_text().splitlines()]
    timed = steps[1:] or steps
    total = args.prompts_per_step * args.generations

    def med(key: str) -> float:
        return statistics.median(float(s[key]) for s in timed)

    step_s, gen_s, length = med("timing/step_s"), med("timing/generate_s"), med("completions/mean_length")
    completion_tokens = length * total
    return {"steps_logged": len(steps), "steps_timed": len(timed), "s_per_step": round(step_s, 2),
            "rollout_s_per_step": round(gen_s, 2), "train_s_per_step": round(step_s - gen_s, 2),
            "completion_tokens_per_step": round(completion_tokens), "mean_completion_length": round(length, 1),
            "rollout_tokens_per_s": round(completion_tokens / gen_s, 1),
            "training_tokens_per_s": round((completion_tokens + prompt_tokens * total) / max(step_s - gen_s, 1e-9),
                                           1),
            "per_step": [{k: s.get(k) for k in ("step", "timing/step_s", "timing/generate_s",
                                                "completions/mean_length", "reward", "kl")} for s in steps]}


def child(args) -> None:
    """One arm in this process; writes its JSON to --result."""
    import torch

    os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")  # FlashInfer is not carried to the device
    mem = GPUMemory()
    work = Path(tempfile.mkdtemp(prefix=f"grpo-{args.arm}-"))
    started = time.perf_counter()
    if args.arm == "factory":
        log = run_factory(args, args.model, work)
    else:
        log = run_trl(args, args.model, work, use_vllm=args.arm == "trl_vllm")
    wall = time.perf_counter() - started
    mem.stop()
    from transformers import AutoTokenizer

    from factory.config import PipelineConfig
    from factory.generate.sources import load_prompts
    from factory.grpo.stage import build_dataset

    cfg = PipelineConfig.model_validate(pipeline_tree(args, args.model))
    rows = build_dataset(load_prompts(cfg.prompts), cfg.template, AutoTokenizer.from_pretrained(args.model))[0]
    prompt_tokens = statistics.mean(rows["prompt_tokens"])
    cuda_peak = round(torch.cuda.max_memory_allocated() / 2**30, 1) if torch.cuda.is_available() else None
    result = {"arm": args.arm, "wall_s": round(wall, 1), "mean_prompt_tokens": round(prompt_tokens, 1),
              "gpu_memory_peak_gib": round(mem.peak / 2**30, 1), "torch_peak_allocated_gib": cuda_peak,
              **summarise(log, args, prompt_tokens)}
    args.result.write_text(json.dumps(result))


def _versions() -> dict:
    import torch
    import transformers
    import trl

    out = {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
           "python": platform.python_version()}
    try:
        import vllm

        out["vllm"] = vllm.__version__
    except ImportError:
        out["vllm"] = None
    return out


def _run_arm(arm: str, model_dir: Path, tmp: Path, timeout: int) -> dict:
    result = tmp / f"{arm}.json"
    cmd = [sys.executable, __file__, *sys.argv[1:], "--arm", arm, "--model", str(model_dir), "--result", str(result)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        return {"arm": arm, "error": f"timeout {timeout}s", "tail": (exc.stdout or "")[-2000:]}
    if proc.returncode or not result.exists():
        return {"arm": arm, "error": f"exit {proc.returncode}", "tail": (proc.stdout + proc.stderr)[-3000:]}
    return json.loads(result.read_text())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=sorted(SHAPES), default="qwen2.5-1.5b")
    ap.add_argument("--tokenizer", type=Path, required=True, help="folder with tokenizer.json (the embedded one)")
    add_workload_args(ap)
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--timeout", type=int, default=900, help="seconds per arm")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)  # child mode
    ap.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--build", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.build:
        print(json.dumps({"params": build_model(args.shape, args.tokenizer, args.build, 4096)}))
        return
    if args.arm:
        child(args)
        return
    tmp = Path(tempfile.mkdtemp(prefix="grpo-gpu-"))
    model_dir = tmp / args.shape
    t = time.perf_counter()
    built = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--build", str(model_dir)],
                           check=True, capture_output=True, text=True)
    params = json.loads(built.stdout.strip().splitlines()[-1])["params"]
    build_s = time.perf_counter() - t
    arms = {}
    for arm in args.arms.split(","):
        arms[arm] = _run_arm(arm, model_dir, tmp, args.timeout)
        print(f"grpo_gpu arm {arm}: {json.dumps({k: v for k, v in arms[arm].items() if k != 'per_step'})}",
              flush=True)
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({platform.machine()})"
    result = {"bench": "grpo_gpu", "device": device, "shape": args.shape, "params": params,
              "vocab_note": "embedded tokenizer's vocabulary (49,152), Qwen2.5 body", "versions": _versions(),
              "workload": {"G": args.generations, "prompts_per_step": args.prompts_per_step,
                           "max_completion_length": args.max_completion, "steps": args.steps,
                           "rewards": REWARDS, "template": "r1_zero", "prompts": "arithmetic, max_operand 999"},
              "command": "python bench/grpo_gpu.py " + " ".join(sys.argv[1:]), "model_build_s": round(build_s, 1),
              "arms": arms}
    base, ours = arms.get("trl_defaults", {}), arms.get("factory", {})
    if "s_per_step" in base and "s_per_step" in ours:
        result["speedup_vs_trl_defaults"] = round(base["s_per_step"] / ours["s_per_step"], 2)
        line = (f"grpo_gpu {args.shape} G={args.generations} P={args.prompts_per_step} {args.max_completion} tok: "
                f"factory {ours['s_per_step']} s/step vs TRL defaults {base['s_per_step']} s/step → "
                f"{result['speedup_vs_trl_defaults']}× (goal ≥ 1.3×); rollout {ours['rollout_tokens_per_s']:.0f} vs "
                f"{base['rollout_tokens_per_s']:.0f} tok/s, training {ours['training_tokens_per_s']:.0f} vs "
                f"{base['training_tokens_per_s']:.0f} tok/s")
        if "s_per_step" in arms.get("trl_vllm", {}):
            result["speedup_vs_trl_vllm"] = round(arms["trl_vllm"]["s_per_step"] / ours["s_per_step"], 2)
            line += f"; vs TRL use_vllm {arms['trl_vllm']['s_per_step']} s/step → {result['speedup_vs_trl_vllm']}×"
        print(line)
    emit(result, args.out)


if __name__ == "__main__":
    main()
