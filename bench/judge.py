"""Benchmark: the judge reward through the in-process vLLM engine against the same model behind `vllm serve` (the
OpenAI-compatible backend), same samples, same judge template and sampling, in one run.

Each backend judges the same N synthetic samples (half with a reference answer, half by the rubric) through
`JudgeSession.judge` with the cache off, so every sample is a real judge request; engine and server start-up are
not timed. Both stay up and the timed rounds alternate (offline, server, offline, server, …), one backend busy at a
time, so the machine's noise falls on both; the best round of each is reported. Prints one summary line
(samples/s of each and the ratio server/offline), then a JSON result.

    python bench/judge.py --samples 64 --max-tokens 32                    # the embedded model, on this machine
    python bench/judge.py --model /models/Qwen2.5-7B-Instruct --samples 2048 --max-tokens 256 --concurrency 256
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def samples(n: int) -> list[dict]:
    out = []
    for i in range(n):
        a, b = i % 17 + 2, i % 11 + 3
        ref = i % 2 == 0
        out.append({"prompt_id": f"b{i}", "domain": "general", "problem": f"What is {a} plus {b}? Sample {i}.",
                    "answer": str(a + b) if ref else None, "reasoning": "",
                    "answer_text": f"{a} plus {b} is {a + b + (i % 3 == 0)}."})
    return out


def timed(session, rows: list[dict]) -> dict:
    start = time.perf_counter()
    judged = session.judge(rows)
    seconds = time.perf_counter() - start
    verdicts: dict[str, int] = {}
    for j in judged:
        verdicts[j.verdict] = verdicts.get(j.verdict, 0) + 1
    return {"seconds": round(seconds, 3), "samples_per_s": round(len(rows) / seconds, 3), "verdicts": verdicts,
            "calls": session.calls}


def start_server(model: str, port: int, max_model_len: int, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--served-model-name",
           "judge", "--host", "127.0.0.1", "--port", str(port), "--max-model-len", str(max_model_len), "--seed", "0",
           "--enforce-eager"]  # as the offline engine's default
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vllm serve exited early:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(1)
    os.killpg(proc.pid, 9)
    raise RuntimeError("vllm serve did not come up in 600 s")


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="model folder (default: the embedded SmolLM2-135M-Instruct)")
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--max-model-len", type=int, default=1024)
    ap.add_argument("--concurrency", type=int, default=64, help="server backend: requests in flight")
    ap.add_argument("--repeats", type=int, default=2, help="alternating timed rounds per backend (best is reported)")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON result here")
    args = ap.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

    from factory.core.embedded import embedded_model_dir
    from factory.generate.config import OpenAITeacherConfig, VLLMTeacherConfig
    from factory.generate.teachers.vllm_offline import VLLMTeacher
    from factory.verify.config import JudgeConfig
    from factory.verify.rewards.judge import JudgeSession

    model = args.model or str(embedded_model_dir())
    rows = samples(args.samples)
    sampling = {"n": 1, "temperature": 0.0, "max_tokens": args.max_tokens, "extra": {"ignore_eos": True}}

    offline_cfg = JudgeConfig(teacher=VLLMTeacherConfig(model=model, max_model_len=args.max_model_len),
                              sampling=sampling, cache=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = Path(f"/tmp/bench-judge-server-{os.getpid()}.log")
    proc = start_server(model, port, args.max_model_len, log)
    server_cfg = JudgeConfig(teacher=OpenAITeacherConfig(backend="openai", model="judge", concurrency=args.concurrency,
                                                         base_url=f"http://127.0.0.1:{port}/v1"),
                             sampling=sampling, cache=False)
    runs: dict[str, list[dict]] = {"offline": [], "server": []}
    sessions: dict = {}
    try:
        sessions["offline"] = JudgeSession(offline_cfg, None, VLLMTeacher(offline_cfg.teacher, seed=0))
        sessions["server"] = JudgeSession(server_cfg, None)
        for session in sessions.values():
            session.judge(rows[:2])  # warm-up, not timed
        for _ in range(args.repeats):  # alternate, to spread the machine's noise over both
            for name, session in sessions.items():
                session.calls = 0
                runs[name].append(timed(session, rows))
    finally:
        for session in sessions.values():
            session.teacher().close()
        os.killpg(proc.pid, 15)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
    results = {name: {**max(r, key=lambda x: x["samples_per_s"]), "runs_samples_per_s":
                      [x["samples_per_s"] for x in r]} for name, r in runs.items()}

    ratio = results["server"]["samples_per_s"] / results["offline"]["samples_per_s"]
    result = {"bench": "judge", "model": model, "samples": args.samples, "max_tokens": args.max_tokens,
              "repeats": args.repeats,
              "concurrency": args.concurrency, "results": results, "ratio_server_over_offline": round(ratio, 3),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "cuda": _has_cuda()}}
    print(f"judge: offline engine {results['offline']['samples_per_s']:.2f} samples/s vs server "
          f"{results['server']['samples_per_s']:.2f} samples/s → ratio server/offline {ratio:.3f} "
          f"({args.samples} samples, {args.max_tokens} tokens each)")
    print(json.dumps(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
