"""Code verification throughput with the sandbox on: HumanEval canonical solutions (and broken ones).

Ours: `score_code` on a reply holding each canonical solution — the candidate and the trusted test harness each in a
confined process (Landlock, seccomp, rlimits, own process group) forked by the sandbox's zygote, the verdict from
the harness. Two references in the same run, interleaved round by round with ours (the machine is shared: load
changes between minutes, not between neighbouring rounds):

- previous: the implementation of `--previous-rev` (git; default the last commit before the zygote and the separate
  harness: one interpreter started per run, `check(candidate)` in the candidate's own process), checked out read-only
  into a temp dir with `git archive` and timed in a subprocess the same way;
- unconfined: the usual unconfined check, `python -I` on prompt + solution + test + `check(entry_point)` in a
  subprocess with a timeout (what HumanEval's reference harness does, minus its in-process monkeypatching).

Figures are samples per wall second and per CPU-second (this process, its children and the zygote's children:
robust to a shared machine). Also checked: every canonical solution passes and every broken one (body replaced by
`return object()`) fails, in the sandbox.

Usage: PYTHONPATH=. python bench/verify_code.py [--limit 164] [--rounds 3] [--previous-rev REV | --no-previous]
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


PREVIOUS_REV = "67bafa5"  # one interpreter per run, in-process check(candidate): the implementation before the zygote


def _zygote_cpu() -> float:
    """CPU of the zygote and the runs it reaped (it is not reaped itself before exit, so RUSAGE_CHILDREN lacks it)."""
    try:
        from factory.verify.rewards.sandbox_zygote_client import _ZYGOTES
    except ImportError:  # the previous implementation has no zygote
        return 0.0
    total = 0.0
    for (pid, _), zyg in _ZYGOTES.items():
        if pid == os.getpid() and zyg.proc is not None:
            try:
                fields = Path(f"/proc/{zyg.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")
            except OSError:
                pass
    return total


def cpu_seconds() -> float:
    """CPU time of this process, its finished children and the zygote's (the sandboxed programs)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime + _zygote_cpu()


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


def timed(fn, *args) -> tuple[float, float, object]:
    wall, cpu = time.perf_counter(), cpu_seconds()
    out = fn(*args)
    return time.perf_counter() - wall, cpu_seconds() - cpu, out


def previous(rev: str, limit: int, timeout: float, tmp: str) -> dict:
    """Time the implementation of `rev` (its files only, read from git) in a subprocess over the same rows."""
    tree = os.path.join(tmp, "previous")
    if not os.path.isdir(tree):
        os.makedirs(tree)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "factory"], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", tree], input=archive.stdout, check=True)
    env = {**os.environ, "PYTHONPATH": tree}
    out = subprocess.run([sys.executable, __file__, "--measure-only", "--limit", str(limit), "--timeout",
                          str(timeout)], env=env, capture_output=True, text=True, check=True, cwd=tmp)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_only(rows: list[dict], cfg) -> None:
    import factory.verify.rewards.code as code

    ours(rows[:3], cfg)
    wall, cpu, (verdicts, _, _) = timed(ours, rows, cfg)
    print(json.dumps({"wall": wall, "cpu": cpu, "passed": verdicts.get("passed", 0), "code": code.__file__}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=164)
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=3, help="rounds of ours / previous / unconfined, interleaved")
    ap.add_argument("--previous-rev", default=PREVIOUS_REV, help="git revision of the previous implementation")
    ap.add_argument("--no-previous", action="store_true", help="skip the previous implementation")
    ap.add_argument("--measure-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    from factory.verify.rewards.code import CodeConfig
    from factory.verify.rewards.sandbox import capabilities

    rows = [json.loads(line) for line in (BENCH / "humaneval.jsonl").open()][: args.limit]
    cfg = CodeConfig(case_timeout_s=args.timeout)
    if args.measure_only:
        return measure_only(rows, cfg)
    ours(rows[:3], cfg)  # warm the page cache (and start the zygote) for both
    baseline(rows[:3], args.timeout)

    n = len(rows)
    rates: dict[str, list[tuple[float, float]]] = {"ours": [], "previous": [], "unconfined": []}
    times: list[float] = []
    prev_code = None
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            wall, cpu, (verdicts, times_r, failures) = timed(ours, rows, cfg)
            rates["ours"].append((n / wall, n / cpu))
            times += times_r
            if not args.no_previous:
                prev = previous(args.previous_rev, args.limit, args.timeout, tmp)
                rates["previous"].append((n / prev["wall"], n / prev["cpu"]))
                prev_code = prev["code"]
            wall, cpu, (base_passed, _) = timed(baseline, rows, args.timeout)
            rates["unconfined"].append((n / wall, n / cpu))
    broken_verdicts, broken_passed = broken(rows, cfg)

    def med(kind: str, i: int) -> float | None:
        return round(statistics.median(r[i] for r in rates[kind]), 2) if rates[kind] else None

    ours_s, prev_s, base_s = med("ours", 0), med("previous", 0), med("unconfined", 0)
    result = {
        "bench": "verify_code", "samples": n, "rounds": args.rounds, "sandbox": capabilities(),
        "ours_samples_per_s": ours_s, "previous_samples_per_s": prev_s, "previous_rev": args.previous_rev,
        "previous_code": prev_code,
        "ratio_vs_previous": round(ours_s / prev_s, 3) if prev_s else None,
        "baseline_unconfined_samples_per_s": base_s, "ratio_vs_unconfined": round(ours_s / base_s, 3),
        "ours_samples_per_cpu_s": med("ours", 1), "previous_samples_per_cpu_s": med("previous", 1),
        "baseline_samples_per_cpu_s": med("unconfined", 1),
        "per_round_samples_per_s": {k: [round(r[0], 2) for r in v] for k, v in rates.items()},
        "load_average": os.getloadavg()[0],
        "ours_median_s": round(statistics.median(times), 4),
        "ours_p95_s": round(sorted(times)[int(0.95 * (len(times) - 1))], 4),
        "canonical_passed": verdicts.get("passed", 0), "canonical_verdicts": dict(verdicts),
        "canonical_failures": failures[:10], "baseline_passed": base_passed,
        "broken_verdicts": dict(broken_verdicts), "broken_that_passed": broken_passed,
        "device": f"CPU ({os.cpu_count()} cores), one sample at a time",
    }
    print(f"verify_code: {ours_s} samples/s sandboxed vs {prev_s} previous ({args.previous_rev}) and {base_s} "
          f"unconfined ({result['ratio_vs_previous']}x previous, {result['ratio_vs_unconfined']}x unconfined; "
          f"per CPU-second {med('ours', 1)} vs {med('previous', 1)} vs {med('unconfined', 1)}); canonical passed "
          f"{verdicts.get('passed', 0)}/{n}, broken passed {len(broken_passed)}/{n}")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
