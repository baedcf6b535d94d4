"""Benchmark: `factory generate` against raw `vllm.LLM.generate`, same prompts, same sampling, same engine.

Every sample is forced to `--max-tokens` (ignore_eos) so both sides generate exactly the same number of tokens;
the runs alternate (raw, factory, raw, factory, …) on one engine to spread the machine's noise over both.
Prints one summary line, then a JSON result.

    python bench/generate.py --prompts 32 --k 4 --max-tokens 96 --repeats 2
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
    args = ap.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

    from factory.config import PipelineConfig
    from factory.generate.stage import build_request, run_generate
    from factory.generate.teachers import make_teacher
    from factory.generate.teachers.vllm_offline import sampling_params
    from factory.generate.sources import load_prompts

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
        prompts = [build_request(p, cfg.template, tokenizer)[0].prompt for p in load_prompts(cfg.prompts)]
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


if __name__ == "__main__":
    main()
