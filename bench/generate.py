"""Benchmark: `factory generate` against raw `vllm.LLM.generate`, same prompts, same sampling, same engine.

Every sample is forced to `--max-tokens` (ignore_eos) so both sides generate exactly the same number of tokens;
the runs alternate (raw, factory, raw, factory, …) on one engine to spread the machine's noise over both.
Prints one summary line, then a JSON result.

    python bench/generate.py --prompts 32 --k 4 --max-tokens 96 --repeats 2
    python bench/generate.py --executor ray --prompts 32 --k 4 --max-tokens 96   # local vs Ray, 1 and 2 replicas

`--executor ray` runs `factory generate` on the same prompts and sampling three ways in one run: the local
executor (the in-process engine), Ray with one replica, Ray with two; engine start-up is not timed. It re-runs
itself inside a loopback-only network namespace (`unshare --net`) so the local Ray cluster uses 127.0.0.1.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
from pathlib import Path

import psutil


class PeakRSS:
    """Peak resident memory of this process and its children (the engine core runs in a child)."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        me = psutil.Process()
        while not self._stop.is_set():
            total = me.memory_info().rss
            for child in me.children(recursive=True):
                try:
                    total += child.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(0.2)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--shard-size", type=int, default=8)
    ap.add_argument("--executor", choices=["local", "ray"], default="local",
                    help="ray: factory on the local executor vs Ray with 1 and 2 replicas (not raw vLLM)")
    args = ap.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    if args.executor == "ray":
        return ray_bench(args)

    from factory.config import PipelineConfig
    from factory.generate.stage import build_request, run_generate
    from factory.generate.teachers import make_teacher
    from factory.generate.sources import load_prompts
    from factory.generate.teachers.vllm_engine import token_prompt
    from factory.generate.teachers.vllm_offline import sampling_params

    cfg = PipelineConfig.model_validate({
        "prompts": [{"kind": "arithmetic", "n": args.prompts, "seed": 7, "max_operand": 50}],
        "teacher": {"model": "embedded", "max_model_len": 1024},
        "sampling": {"n": args.k, "max_tokens": args.max_tokens, "extra": {"ignore_eos": True}},
        "generate": {"shard_size": args.shard_size}})
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        teacher = make_teacher(cfg.teacher, cfg.sampling)
        engine_start = time.perf_counter() - t0
        tokenizer = teacher.tokenizer()
        texts = [build_request(p, cfg.template, tokenizer)[0].prompt for p in load_prompts(cfg.prompts)]
        prompts = [token_prompt(teacher.encode(t)) for t in texts]  # token ids, as the factory's loop sends them
        params = sampling_params(cfg.sampling)
        teacher.llm.generate(prompts[:2], params, use_tqdm=False)  # warm-up, not timed
        raw_tps, ours_tps = [], []
        with tempfile.TemporaryDirectory() as tmp:
            for rep in range(args.repeats):
                t = time.perf_counter()
                outs = teacher.llm.generate(prompts, params, use_tqdm=False)
                tokens = sum(len(c.token_ids) for o in outs for c in o.outputs)
                raw_tps.append(tokens / (time.perf_counter() - t))
                t = time.perf_counter()
                counts = run_generate(cfg, Path(tmp) / f"run{rep}", teacher=teacher)
                ours_tps.append(counts["extra"]["completion_tokens"] / (time.perf_counter() - t))
        teacher.close()
    raw, ours = sum(raw_tps) / len(raw_tps), sum(ours_tps) / len(ours_tps)
    result = {
        "bench": "generate", "device": f"CPU ({os.cpu_count()} cores, {platform.machine()})",
        "model": "SmolLM2-135M-Instruct (embedded)", "prompts": args.prompts, "k": args.k,
        "max_tokens": args.max_tokens, "shard_size": args.shard_size, "repeats": args.repeats,
        "raw_vllm_tokens_per_s": round(raw, 1), "factory_tokens_per_s": round(ours, 1),
        "ratio": round(ours / raw, 3), "per_repeat_raw": [round(x, 1) for x in raw_tps],
        "per_repeat_factory": [round(x, 1) for x in ours_tps], "engine_start_s": round(engine_start, 1),
        "peak_rss_gib": round(rss.peak / 2**30, 2),
    }
    print(f"generate: factory {ours:.1f} tok/s vs raw vLLM {raw:.1f} tok/s → ratio {ours / raw:.3f} "
          f"(goal ≥ 0.97), peak RSS {result['peak_rss_gib']} GiB")
    print(json.dumps(result))


def _config(args, executor: dict | None = None):
    from factory.config import PipelineConfig

    return PipelineConfig.model_validate({
        "prompts": [{"kind": "arithmetic", "n": args.prompts, "seed": 7, "max_operand": 50}],
        "teacher": {"model": "embedded", "max_model_len": 1024},
        "sampling": {"n": args.k, "max_tokens": args.max_tokens, "extra": {"ignore_eos": True}},
        "generate": {"shard_size": args.shard_size}, "executor": executor or {}})


def _timed_generate(cfg, teacher, out: Path) -> float:
    from factory.generate.stage import run_generate

    t = time.perf_counter()
    counts = run_generate(cfg, out, teacher=teacher)
    return counts["extra"]["completion_tokens"] / (time.perf_counter() - t)


def ray_bench(args) -> None:
    """Local executor vs Ray (1 replica with every CPU, 2 replicas with half each), same prompts and sampling."""
    import subprocess
    import sys

    if os.environ.get("FACTORY_LOOPBACK_NETNS") != "1":
        cmd = ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$0" "$@"', sys.executable, *sys.argv]
        raise SystemExit(subprocess.call(cmd, env={**os.environ, "FACTORY_LOOPBACK_NETNS": "1"}))
    from factory.generate.teachers import make_teacher
    from factory.generate.teachers.ray_replicas import RayTeacher

    cpus = os.cpu_count() or 2
    rates: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = _config(args)
        teacher = make_teacher(cfg.teacher, cfg.sampling)
        rates["local"] = _timed_generate(cfg, teacher, Path(tmp) / "local")
        teacher.close()
        for replicas in (1, 2):
            cfg = _config(args, {"kind": "ray", "address": "local", "replicas": replicas,
                                 "replica_cpus": cpus / replicas})
            teacher = RayTeacher(cfg.teacher, cfg.executor, seed=cfg.sampling.seed)
            rates[f"ray_{replicas}"] = _timed_generate(cfg, teacher, Path(tmp) / f"ray{replicas}")
            teacher.close()
    result = {"bench": "generate_executor", "device": f"CPU ({cpus} cores, {platform.machine()})",
              "model": "SmolLM2-135M-Instruct (embedded)", "prompts": args.prompts, "k": args.k,
              "max_tokens": args.max_tokens, "shard_size": args.shard_size,
              **{f"{k}_tokens_per_s": round(v, 1) for k, v in rates.items()},
              "ratio_ray_1_vs_local": round(rates["ray_1"] / rates["local"], 3),
              "ratio_ray_2_vs_local": round(rates["ray_2"] / rates["local"], 3)}
    print(f"generate on Ray: 1 replica {rates['ray_1']:.1f} tok/s vs local {rates['local']:.1f} tok/s → ratio "
          f"{result['ratio_ray_1_vs_local']:.3f} (goal ≥ 0.95); 2 replicas {rates['ray_2']:.1f} tok/s")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
