"""The demo's generate stage with the cores to itself vs with a competing CPU-bound process (`while True: pass`),
on one engine per thread setting: the slowdown (loaded / idle, goal ≤ 2.5×) and the time to the first committed
shard as a share of the stage.

    .venv/bin/python bench/generate_contention.py [--prompts 96] [--settings shared,spin]

`shared` is the teacher's default (teacher.cpu_shared_cores: OpenMP threads yield instead of spinning), `spin`
is vLLM's own OpenMP behaviour. Each setting starts its own engine in a subprocess (the environment is read at
engine start). Prints one summary line, then the JSON (also written with --out).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _first_commit(ledger: Path, start: float, stop: threading.Event, out: list[float]) -> None:
    while not stop.is_set():
        if ledger.exists() and ledger.read_text().strip():
            out.append(time.perf_counter() - start)
            return
        time.sleep(0.2)


def timed_generate(cfg, run_dir: Path, teacher) -> dict:
    from factory.generate.stage import run_generate

    stop, first = threading.Event(), []
    start = time.perf_counter()
    watcher = threading.Thread(target=_first_commit, args=(run_dir / "generate" / "ledger.jsonl", start, stop, first),
                               daemon=True)
    watcher.start()
    counts = run_generate(cfg, run_dir, teacher=teacher)
    total = time.perf_counter() - start
    stop.set()
    watcher.join()
    tokens = counts["extra"]["completion_tokens"]
    return {"seconds": round(total, 1), "tokens": tokens, "tokens_per_s": round(tokens / total, 1),
            "first_shard_s": round(first[0], 1) if first else None,
            "first_shard_share": round(first[0] / total, 3) if first else None}


def one_setting(args) -> dict:
    """In the subprocess: one engine, the stage idle and then with a competitor."""
    from factory.config import load_pipeline
    from factory.generate.teachers.vllm_offline import VLLMTeacher

    over = [f"prompts.0.n={args.prompts}", f"teacher.cpu_shared_cores={args.setting == 'shared'}"]
    cfg = load_pipeline(ROOT / "pipelines" / "demo.yaml", over + ([f"generate.shard_size={args.shard_size}"]
                                                                  if args.shard_size else []))
    t0 = time.perf_counter()
    teacher = VLLMTeacher(cfg.teacher, seed=cfg.sampling.seed)
    result = {"setting": args.setting, "engine_start_s": round(time.perf_counter() - t0, 1),
              "capacity": teacher.capacity, "window_prompts": teacher.window(cfg.sampling)}
    with tempfile.TemporaryDirectory() as tmp:
        result["idle"] = timed_generate(cfg, Path(tmp) / "idle", teacher)
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            result["loaded"] = timed_generate(cfg, Path(tmp) / "loaded", teacher)
        finally:
            hog.kill()
            hog.wait()
    teacher.close()
    result["slowdown"] = round(result["loaded"]["seconds"] / result["idle"]["seconds"], 2)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=96, help="demo prompts (the demo has 96)")
    ap.add_argument("--shard-size", type=int, help="default: the demo's (16)")
    ap.add_argument("--settings", default="shared,spin")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--setting", help=argparse.SUPPRESS)  # internal: run one setting in this process
    args = ap.parse_args()
    if args.setting:
        print(json.dumps(one_setting(args)), flush=True)
        return
    runs = []
    for setting in args.settings.split(","):
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")}
        cmd = [sys.executable, __file__, "--prompts", str(args.prompts), "--setting", setting]
        out = subprocess.run(cmd + (["--shard-size", str(args.shard_size)] if args.shard_size else []),
                             env=env, capture_output=True, text=True, cwd=ROOT)
        if out.returncode != 0:
            sys.exit(f"setting {setting} failed:\n{out.stderr[-4000:]}")
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(runs[-1]), file=sys.stderr, flush=True)  # each setting as it ends
    import vllm

    result = {"bench": "generate_contention", "device": f"CPU ({os.cpu_count()} cores, {platform.machine()})",
              "vllm": vllm.__version__, "model": "SmolLM2-135M-Instruct (embedded)", "prompts": args.prompts,
              "command": " ".join([sys.executable, *sys.argv]), "runs": runs}
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("generate_contention: " + "; ".join(
        f"{r['setting']}: idle {r['idle']['seconds']} s, loaded {r['loaded']['seconds']} s, slowdown "
        f"{r['slowdown']}x, first shard at {r['idle']['first_shard_share']} of the stage" for r in runs))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
