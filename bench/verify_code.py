"""Code verification throughput with the sandbox on: HumanEval canonical solutions (and broken ones).

Ours: `score_code` on a reply holding each canonical solution — confined process (Landlock, seccomp, rlimits, own
process group), harness, verdict. Baseline in the same run: the usual unconfined check, `python -I` on
prompt + solution + test + `check(entry_point)` in a subprocess with a timeout (what HumanEval's reference harness
does, minus its in-process monkeypatching). Both run sequentially in one stream; figures are samples per wall
second and per CPU-second (this process and its children: robust to a shared machine). Also checked: every
canonical solution passes and every broken one (body replaced by `return object()`) fails, in the sandbox.

Usage: PYTHONPATH=. python bench/verify_code.py [--limit 164]
Prints one summary line, then a JSON result.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO.parent / "shared/data/benchmarks"


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the sandboxed programs run as children)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def baseline(rows: list[dict], timeout_s: float) -> tuple[int, list[float]]:
    passed, times = 0, []
    with tempfile.TemporaryDirectory() as tmp:
        for row in rows:
            program = (row["prompt"] + row["canonical_solution"] + "\n" + row["test"] +
                       f"\ncheck({row['entry_point']})\n")
            path = os.path.join(tmp, "program.py")
            Path(path).write_text(program)
            start = time.perf_counter()
            try:
                rc = subprocess.run([sys.executable, "-I", path], cwd=tmp, capture_output=True,
                                    timeout=timeout_s).returncode
            except subprocess.TimeoutExpired:
                rc = -1
            times.append(time.perf_counter() - start)
            passed += rc == 0
    return passed, times


def ours(rows: list[dict], cfg) -> tuple[Counter, list[float], list[str]]:
    from factory.verify.rewards.code import humaneval_canonical_reply, humaneval_to_prompt, score_code

    verdicts, times, failures = Counter(), [], []
    for row in rows:
        tests = humaneval_to_prompt(row)["tests"]
        start = time.perf_counter()
        r = score_code(humaneval_canonical_reply(row), tests, cfg)
        times.append(time.perf_counter() - start)
        verdicts[r.verdict] += 1
        if r.verdict != "passed":
            failures.append(f"{row['task_id']}: {r.reason}")
    return verdicts, times, failures


def broken(rows: list[dict], cfg) -> tuple[Counter, list[str]]:
    from factory.verify.rewards.code import humaneval_to_prompt, score_code

    verdicts, passed = Counter(), []
    for row in rows:
        reply = f"```python\n{row['prompt']}    return object()\n```"
        r = score_code(reply, humaneval_to_prompt(row)["tests"], cfg)
        verdicts[r.verdict] += 1
        if r.verdict == "passed":
            passed.append(row["task_id"])
    return verdicts, passed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=164)
    ap.add_argument("--timeout", type=float, default=10.0)
    args = ap.parse_args()
    from factory.verify.rewards.code import CodeConfig
    from factory.verify.rewards.sandbox import capabilities

    rows = [json.loads(line) for line in (BENCH / "humaneval.jsonl").open()][: args.limit]
    cfg = CodeConfig(case_timeout_s=args.timeout)
    ours(rows[:3], cfg)  # warm the page cache for both
    baseline(rows[:3], args.timeout)

    wall, cpu = time.perf_counter(), cpu_seconds()
    verdicts, times, failures = ours(rows, cfg)
    ours_wall, ours_cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    wall, cpu = time.perf_counter(), cpu_seconds()
    base_passed, base_times = baseline(rows, args.timeout)
    base_wall, base_cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    broken_verdicts, broken_passed = broken(rows, cfg)

    n = len(rows)
    result = {
        "bench": "verify_code", "samples": n, "sandbox": capabilities(),
        "ours_samples_per_s": round(n / ours_wall, 2), "baseline_unconfined_samples_per_s": round(n / base_wall, 2),
        "ratio_vs_unconfined": round(base_wall / ours_wall, 3),
        "ours_samples_per_cpu_s": round(n / ours_cpu, 2), "baseline_samples_per_cpu_s": round(n / base_cpu, 2),
        "cpu_ratio_vs_unconfined": round(base_cpu / ours_cpu, 3), "load_average": os.getloadavg()[0],
        "ours_median_s": round(statistics.median(times), 4),
        "baseline_median_s": round(statistics.median(base_times), 4),
        "ours_p95_s": round(sorted(times)[int(0.95 * (n - 1))], 4),
        "canonical_passed": verdicts.get("passed", 0), "canonical_verdicts": dict(verdicts),
        "canonical_failures": failures[:10], "baseline_passed": base_passed,
        "broken_verdicts": dict(broken_verdicts), "broken_that_passed": broken_passed,
        "device": f"CPU ({os.cpu_count()} cores), one sample at a time",
    }
    print(f"verify_code: {n / ours_wall:.1f} samples/s sandboxed vs {n / base_wall:.1f} unconfined "
          f"({base_wall / ours_wall:.2f}x wall; per CPU-second {n / ours_cpu:.1f} vs {n / base_cpu:.1f}); "
          f"canonical passed {verdicts.get('passed', 0)}/{n}, broken passed "
          f"{len(broken_passed)}/{n}")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
