"""Eval's code scoring: HumanEval canonical replies scored through `factory.eval.scoring.score_samples` (the sandbox
of the verify stage) serially (baseline) and over `--workers` spawned processes, rounds interleaved in one run (the
machine is shared: load changes between minutes, not between neighbouring rounds). Every canonical reply must pass.

Usage: PYTHONPATH=. python bench/eval_code.py [--limit 164] [--repeat 1] [--rounds 2] [--workers 2]
(--repeat N: each reply N times, i.e. k=N samples per problem; more work per pool start)
Prints one summary line, then a JSON result.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from factory.eval.code import code_row
from factory.eval.scoring import score_samples
from factory.verify.config import VerifyConfig
from factory.verify.rewards.code import humaneval_canonical_reply

BENCH = Path(__file__).resolve().parents[2] / "shared/data/benchmarks/humaneval.jsonl"


def samples(limit: int) -> list[dict]:
    rows = []
    for line in BENCH.open().readlines()[:limit]:
        raw = json.loads(line)
        _, problem, tests = code_row("humaneval", raw)
        reply = humaneval_canonical_reply(raw)
        rows.append({"prompt_id": raw["task_id"], "domain": "code", "problem": problem, "answer": None,
                     "tests": tests, "answer_text": reply, "completion": f"ok\n</think>\n\n{reply}",
                     "think_closed": True, "finish_reason": "stop", "template": "chat"})
    return rows


def timed(rows: list[dict], workers: int) -> float:
    start = time.perf_counter()
    scored = score_samples(rows, VerifyConfig(workers=workers))
    seconds = time.perf_counter() - start
    failed = [r["prompt_id"] for r, s in zip(rows, scored) if s["accuracy_verdict"] != "passed"]
    if failed:
        raise SystemExit(f"canonical replies failed: {failed[:5]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=164)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    rows = samples(args.limit) * args.repeat
    serial, parallel = [], []
    for _ in range(args.rounds):
        serial.append(timed(rows, 1))
        parallel.append(timed(rows, args.workers))
    s, p = statistics.median(serial), statistics.median(parallel)
    result = {"bench": "eval_code", "samples": len(rows), "workers": args.workers, "cpus": os.cpu_count(),
              "serial_samples_per_s": round(len(rows) / s, 2), "parallel_samples_per_s": round(len(rows) / p, 2),
              "speedup": round(s / p, 2), "serial_s": [round(x, 2) for x in serial],
              "parallel_s": [round(x, 2) for x in parallel]}
    print(f"eval_code: {len(rows)} HumanEval samples, serial {result['serial_samples_per_s']}/s, "
          f"{args.workers} workers {result['parallel_samples_per_s']}/s ({result['speedup']}x, same run)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
