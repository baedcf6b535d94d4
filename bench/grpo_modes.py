"""GRPO seconds per step: rollouts colocated on the training GPU vs on a second GPU (TRL's vLLM server mode).

Both arms run the factory's `grpo` stage (factory.grpo.stage.run_grpo) on the same workload as bench/grpo_gpu.py
(its pipeline, its random-weight Qwen2.5-shaped bf16 policy under the embedded tokenizer, its per-step summary):

  colocate  one GPU (CUDA_VISIBLE_DEVICES=0): vLLM inside the trainer (vllm_mode colocate, TRL's default).
  server    two GPUs: `trl vllm-serve --model POLICY` on GPU 1 generates, the trainer on GPU 0 trains and sends the
            weights to the server over NCCL after each step (vllm_mode server).

Per arm (its own processes, each on empty GPUs; the first step is warm-up, not counted): seconds per step, rollout
seconds, training seconds. The summary line gives server-mode speed as colocate s/step ÷ server s/step.

    python bench/grpo_modes.py --tokenizer TOK --out bench/results/h200x2/grpo_modes.json     # ≥ 2 GPUs
    python bench/grpo_modes.py --tokenizer TOK --dry      # CPU: builds and checks both arms' configuration and the
                                                          # server command; runs no step and measures nothing
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from generate_gpu import SHAPES, GPUMemory, build_model, emit  # noqa: E402
from grpo_gpu import _versions, add_workload_args, pipeline_tree, summarise  # noqa: E402

ARMS = ("colocate", "server")
NCCL_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def arm_tree(args, model_dir: Path, arm: str, url: str | None) -> dict:
    tree = pipeline_tree(args, model_dir)
    tree["grpo"].update({"use_vllm": True, "vllm_mode": arm})
    if arm == "server":
        tree["grpo"].update({"vllm_server_base_url": url, "vllm_server_timeout_s": args.server_timeout})
    return tree


def server_command(args, model_dir: Path, port: int) -> list[str]:
    """`trl vllm-serve` for the policy (TRL 1.16 runs vLLM's own server with its weight-sync endpoints)."""
    return [sys.executable, "-m", "trl.cli.main", "vllm-serve", "--model", str(model_dir), "--host", "127.0.0.1",
            "--port", str(port), "--gpu_memory_utilization", str(args.server_gpu_memory),
            "--max_model_len", str(args.max_model_len)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_health(url: str, server: subprocess.Popen, timeout: float) -> float:
    import urllib.request

    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if server.poll() is not None:
            raise RuntimeError(f"trl vllm-serve exited with {server.returncode} before answering {url}/health")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as resp:
                if resp.status == 200:
                    return time.perf_counter() - start
        except OSError:
            pass
        time.sleep(2)
    raise RuntimeError(f"no answer from {url}/health in {timeout} s")


def child(args) -> None:
    """One arm's trainer in this process (CUDA_VISIBLE_DEVICES=0); writes its JSON to --result."""
    import statistics

    import torch
    from transformers import AutoTokenizer

    from factory.config import PipelineConfig
    from factory.generate.sources import load_prompts
    from factory.grpo.stage import build_dataset, run_grpo

    os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
    cfg = PipelineConfig.model_validate(arm_tree(args, args.model, args.arm, args.server_url))
    mem, work, started = GPUMemory(), Path(tempfile.mkdtemp(prefix=f"grpo-{args.arm}-")), time.perf_counter()
    run_grpo(cfg, work)
    wall = time.perf_counter() - started
    mem.stop()
    rows = build_dataset(load_prompts(cfg.prompts), cfg.template, AutoTokenizer.from_pretrained(args.model))[0]
    prompt_tokens = statistics.mean(rows["prompt_tokens"])
    result = {"arm": args.arm, "wall_s": round(wall, 1), "trainer_gpu_memory_peak_gib": round(mem.peak / 2**30, 1),
              "torch_peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1),
              **summarise(work / "grpo" / "train_log.jsonl", args, prompt_tokens)}
    args.result.write_text(json.dumps(result))


def run_arm(args, arm: str, model_dir: Path, tmp: Path) -> dict:
    """The arm's trainer on GPU 0 in a child process; for `server`, the server on GPU 1 first."""
    env = {**os.environ, **NCCL_ENV}
    server, url, extra = None, None, {}
    if arm == "server":
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        with open(tmp / "server.log", "w") as log:
            server = subprocess.Popen(server_command(args, model_dir, port), env={**env, "CUDA_VISIBLE_DEVICES": "1"},
                                      stdout=log, stderr=subprocess.STDOUT)
        try:
            extra["server_start_s"] = round(_wait_health(url, server, args.server_timeout), 1)
        except RuntimeError as exc:
            server.kill()
            return {"arm": arm, "error": str(exc), "tail": (tmp / "server.log").read_text()[-3000:]}
    result = tmp / f"{arm}.json"
    cmd = [sys.executable, __file__, *sys.argv[1:], "--arm", arm, "--model", str(model_dir), "--result", str(result),
           *(["--server-url", url] if url else [])]
    try:
        proc = subprocess.run(cmd, env={**env, "CUDA_VISIBLE_DEVICES": "0"}, capture_output=True, text=True,
                              timeout=args.timeout)
        out = json.loads(result.read_text()) if proc.returncode == 0 and result.exists() else {
            "arm": arm, "error": f"exit {proc.returncode}", "tail": (proc.stdout + proc.stderr)[-3000:]}
    except subprocess.TimeoutExpired:
        out = {"arm": arm, "error": f"timeout {args.timeout}s"}
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
    return {**out, **extra}


def dry(args, tmp: Path) -> dict:
    """The CPU check: a tiny policy, both arms' pipelines validated, TRL's GRPOConfig built for each (as the
    stage builds it), TRL's own `vllm serve` command for the server, and the stage's server check against a closed
    port. No step runs."""
    from trl.scripts.vllm_serve import ScriptArguments, build_command

    from factory.config import PipelineConfig
    from factory.grpo import checks
    from factory.grpo.train import _trl_args

    model_dir = tmp / "tiny"
    params = build_model("tiny", args.tokenizer, model_dir, args.max_model_len)
    port = _free_port()  # nothing listens there
    report = {"params": params, "arms": {}}
    for arm in ARMS:
        cfg = PipelineConfig.model_validate(arm_tree(args, model_dir, arm, f"http://127.0.0.1:{port}"))
        checks.check_processes(cfg.grpo, 1)
        trl = _trl_args(cfg.grpo, tmp / arm, bf16=False, use_cpu=True, use_vllm=checks.resolve_use_vllm(cfg.grpo))
        report["arms"][arm] = {"vllm_mode": trl.vllm_mode, "use_vllm": trl.use_vllm,
                               "per_device_train_batch_size": trl.per_device_train_batch_size,
                               "gradient_accumulation_steps": trl.gradient_accumulation_steps,
                               "vllm_server_base_url": trl.vllm_server_base_url if arm == "server" else None}
        if arm == "server":
            try:
                checks.check_server(cfg.grpo.model_copy(update={"vllm_server_timeout_s": 1.0}))
                report["arms"][arm]["closed_port_refused"] = False
            except checks.GRPOInputError as exc:
                report["arms"][arm]["closed_port_refused"] = "grpo.vllm_server_base_url" in str(exc)
    serve = build_command(ScriptArguments(model=str(model_dir), host="127.0.0.1", port=port,
                                          gpu_memory_utilization=args.server_gpu_memory,
                                          max_model_len=args.max_model_len))
    report["server_command"] = server_command(args, model_dir, port)
    report["vllm_serve_equivalent"] = ["vllm", *serve[serve.index("serve"):]]
    return report


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=sorted(SHAPES), default="qwen2.5-1.5b")
    ap.add_argument("--tokenizer", type=Path, help="folder with only the tokenizer's files; default: the embedded "
                                                   "model's tokenizer, saved alone")
    add_workload_args(ap)
    ap.add_argument("--max-model-len", type=int, default=2048)
    ap.add_argument("--server-gpu-memory", type=float, default=0.9, help="the server's gpu_memory_utilization")
    ap.add_argument("--server-timeout", type=float, default=600.0)
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--timeout", type=int, default=1200, help="seconds per arm")
    ap.add_argument("--dry", action="store_true", help="CPU check of the plumbing; no step, no figures")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)  # child mode
    ap.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--server-url", help=argparse.SUPPRESS)
    ap.add_argument("--build", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.build:
        print(json.dumps({"params": build_model(args.shape, args.tokenizer, args.build, args.max_model_len)}))
        return
    if args.arm:
        child(args)
        return
    tmp = Path(tempfile.mkdtemp(prefix="grpo-modes-"))
    if args.tokenizer is None:  # the embedded folder holds weights too: save its tokenizer alone
        from transformers import AutoTokenizer

        from factory.core.embedded import embedded_model_dir

        AutoTokenizer.from_pretrained(str(embedded_model_dir())).save_pretrained(tmp / "tok")
        args.tokenizer = tmp / "tok"
        sys.argv += ["--tokenizer", str(args.tokenizer)]  # the children see it too
    workload = {"G": args.generations, "prompts_per_step": args.prompts_per_step,
                "max_completion_length": args.max_completion, "steps": args.steps, "micro_batch": args.micro_batch}
    if args.dry:
        report = dry(args, tmp)
        ok = all(a["vllm_mode"] == m for m, a in report["arms"].items()) and report["arms"]["server"][
            "closed_port_refused"]
        print(f"grpo_modes DRY on CPU (no GPU, nothing measured): both arms' configs built and validated, server "
              f"command built, a closed server port refused: {'ok' if ok else 'FAILED'}")
        print(json.dumps({"bench": "grpo_modes", "dry": True, "ok": ok, "workload": workload, **report}))
        raise SystemExit(0 if ok else 1)
    import torch

    if torch.cuda.device_count() < 2:
        raise SystemExit(f"grpo_modes needs ≥ 2 GPUs (found {torch.cuda.device_count()}); --dry checks the script")
    model_dir = tmp / args.shape
    built = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--build", str(model_dir)], check=True,
                           capture_output=True, text=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": "0"})
    params = json.loads(built.stdout.strip().splitlines()[-1])["params"]
    arms = {}
    for arm in args.arms.split(","):
        arms[arm] = run_arm(args, arm, model_dir, tmp)
        print(f"grpo_modes arm {arm}: {json.dumps({k: v for k, v in arms[arm].items() if k != 'per_step'})}",
              flush=True)
    result = {"bench": "grpo_modes", "device": torch.cuda.get_device_name(0), "gpus": torch.cuda.device_count(),
              "shape": args.shape, "params": params, "versions": _versions(), "workload": workload,
              "command": "python bench/grpo_modes.py " + " ".join(sys.argv[1:]), "arms": arms}
    co, sv = arms.get("colocate", {}), arms.get("server", {})
    if "s_per_step" in co and "s_per_step" in sv:
        result["server_speedup"] = round(co["s_per_step"] / sv["s_per_step"], 2)
        print(f"grpo_modes {args.shape} G={args.generations} P={args.prompts_per_step} {args.max_completion} tok: "
              f"colocated (1 GPU) {co['s_per_step']} s/step (rollout {co['rollout_s_per_step']}) vs server mode "
              f"(rollouts GPU 1, training GPU 0) {sv['s_per_step']} s/step (rollout {sv['rollout_s_per_step']}) → "
              f"{result['server_speedup']}×")
    emit(result, args.out)


if __name__ == "__main__":
    main()
