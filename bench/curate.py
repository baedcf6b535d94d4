"""Benchmark of the whole curate stage (all filters + decontam + dedupe) on R1-length synthetic traces.

For each corpus size: synthetic verified traces (~5k tokens each, k=4 per prompt, a realistic share of defects:
truncated, mixed-language, code in a math CoT, loops, benchmark copies, duplicate prompts) are written as Parquet
shards, then `curate_dir` runs in a fresh subprocess while this process samples the RSS of that process tree.
Baseline in the same run: a copy pass over the same shards (read -> records -> messages rows -> write, no filters),
the I/O floor of any stage; the ratio says what the filters cost on top of it.

Prints one summary line, then JSON.  Usage:
    PYTHONPATH=$PWD python bench/curate.py [--sizes 20000 100000] [--workers 2] [--work /tmp/bench_curate]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

SHARD_RECORDS = 1000
K = 4
PARAGRAPHS = 40          # ~4.8k tokens of SmolLM2's tokenizer, ~17.5 kB
CHARS_PER_TOKEN = 3.6


def _make_pool(rng: random.Random, n: int = 3000) -> list[str]:
    from _curate_data import _sentence

    return [" ".join(_sentence(rng) for _ in range(rng.randint(2, 6))) for _ in range(n)]


CHINESE = "所以我们需要计算每个数字除以三的余数，然后统计满足条件的数目。这样答案就是六十六。让我再检查一下这个计算。"
PY_BLOCK = "\n\nLet me compute it directly:\n\n```python\nprint(sum(1 for n in range(1, 100) if n % 3))\n```\n"


def generate(out_dir: Path, n_records: int, seed: int = 0) -> dict:
    """Write n_records verified traces as shards of SHARD_RECORDS (k=4 samples of a prompt share a shard)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from _curate_data import REWARD_TYPES, _sentence, rewards
    from factory.core.schema import load_schema

    rng = random.Random(seed)
    pool = _make_pool(rng)
    bench_dir = REPO.parent / "shared" / "data" / "benchmarks"
    bench = [json.loads(x)["problem"] for x in (bench_dir / "math500.jsonl").read_text().splitlines()]
    trace_schema = load_schema("trace")
    out_dir.mkdir(parents=True, exist_ok=True)
    kinds = {"ok": 0}
    prompts = n_records // K
    seen_problems: list[str] = []
    shard, rows = 0, []
    for p in range(prompts):
        pid = f"bench-{p:07d}"
        roll = rng.random()
        if roll < 0.01:
            problem = "Please solve: " + rng.choice(bench)                          # contaminated
            kinds["contam_prompt"] = kinds.get("contam_prompt", 0) + 1
        elif roll < 0.03 and seen_problems:
            problem = rng.choice(seen_problems).replace(" ", "  ")                  # duplicate prompt
            kinds["dup_prompt"] = kinds.get("dup_prompt", 0) + 1
        else:
            problem = (f"Problem {p}: " + " ".join(_sentence(rng) for _ in range(2)) + " Find the value of "
                       f"{rng.choice('xyzn')} when it equals {rng.randint(1, 10**6)}.")
        seen_problems.append(problem)
        if len(seen_problems) > 1000:
            seen_problems.pop(0)
        for k in range(K):
            paragraphs = rng.sample(pool, PARAGRAPHS)
            reasoning = "\n\n".join(paragraphs)
            finish, closed, answer = "stop", True, f"The answer is $\\boxed{{{rng.randint(1, 999)}}}$."
            d = rng.random()
            kind = "ok"
            if d < 0.04:
                kind, finish, closed, answer = "truncated", "length", False, ""
            elif d < 0.06:
                kind = "mixed_language"
                reasoning = reasoning + "\n\n" + CHINESE * 40
            elif d < 0.08:
                kind, reasoning = "code_block", reasoning + PY_BLOCK
            elif d < 0.10:
                kind = "loop"
                reasoning = "\n\n".join(paragraphs[:16] + paragraphs[16:19] * 8)
            kinds[kind] = kinds.get(kind, 0) + 1
            correct = rng.random() < 0.85
            rows.append({"prompt_id": pid, "source": rng.choice(["synth-a", "synth-b"]), "domain": "math",
                         "problem": problem, "answer": "1", "tests": None, "language": "en", "metadata": "{}",
                         "sample_idx": k, "teacher": "bench-teacher", "sampling": "{}", "template": "chat",
                         "prompt_text": problem, "completion": f"<think>\n{reasoning}\n</think>\n\n{answer}",
                         "reasoning": reasoning, "answer_text": answer, "think_closed": closed,
                         "finish_reason": finish, "prompt_tokens": 60,
                         "completion_tokens": int(len(reasoning) / CHARS_PER_TOKEN), "latency_s": 1.0, "error": None,
                         **rewards(correct)})
        if len(rows) >= SHARD_RECORDS or p == prompts - 1:
            table = trace_schema.table(rows)
            for name, typ in REWARD_TYPES.items():
                table = table.append_column(pa.field(name, typ), pa.array([r[name] for r in rows], typ))
            pq.write_table(table, out_dir / f"part-{shard:05d}.parquet")
            shard, rows = shard + 1, []
    (out_dir / "counts.json").write_text(json.dumps({"stage": "verify", "records_in": prompts * K,
                                                     "records_out": prompts * K, "dropped": {}, "extra": {}}))
    return kinds


# --------------------------------------------------------------------------------------------- child runs

def child_curate(in_dir: str, out_dir: str, workers: int) -> None:
    from factory.curate.filter_pass import CurateConfig
    from factory.curate.stage import curate_stage

    bench_dir = REPO.parent / "shared" / "data" / "benchmarks"
    config = CurateConfig(decontam={"benchmarks": [{"path": str(bench_dir)}]}, workers=workers)
    t0 = time.perf_counter()
    curate_stage(Path(in_dir), Path(out_dir), config, new_run=True)
    seconds = time.perf_counter() - t0
    funnel = json.loads((Path(out_dir) / "funnel.json").read_text())
    print(json.dumps({"seconds": seconds, "funnel": funnel}))


def copy_fn(records: list[dict]):
    """The baseline stage function: every record to the curated shape, no filter."""
    from factory.curate.filter_pass import curated_row
    from factory.core.schema import load_schema
    from factory.core.shards import ShardResult

    names = load_schema("curated").names
    return ShardResult(rows=[curated_row(r, names) for r in records])


def child_copy(in_dir: str, out_dir: str, workers: int) -> None:
    """The same shard runner with a copy function: the I/O and conversion floor of any stage."""
    from factory.core.schema import load_schema
    from factory.core.runner import run_map_stage

    t0 = time.perf_counter()
    counts = run_map_stage(name="copy", in_dir=Path(in_dir), out_dir=Path(out_dir), out_schema=load_schema("curated"),
                           fn=copy_fn, config={}, workers=workers, new_run=True)
    print(json.dumps({"seconds": time.perf_counter() - t0, "records": counts["records_out"]}))


def run_measured(args: list[str]) -> tuple[dict, float]:
    """Run this script as a child with `args`; return its JSON line and the peak RSS (GiB) of its process tree."""
    import psutil

    proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        parent = psutil.Process(proc.pid)
        while not stop.is_set():
            try:
                procs = [parent, *parent.children(recursive=True)]
                rss = sum(p.memory_info().rss for p in procs if p.is_running())
                peak = max(peak, rss)
            except psutil.Error:
                pass
            stop.wait(0.05)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out, _ = proc.communicate()
    stop.set()
    t.join()
    if proc.returncode != 0:
        raise SystemExit(f"child {args} failed with exit code {proc.returncode}")
    return json.loads(out.strip().splitlines()[-1]), peak / 2**30


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[20000, 100000])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--work", default="/tmp/bench_curate")
    ap.add_argument("--keep", action="store_true", help="keep the generated corpora")
    ap.add_argument("--child", choices=["curate", "copy"])
    ap.add_argument("--in-dir")
    ap.add_argument("--out-dir")
    a = ap.parse_args()
    if a.child == "curate":
        return child_curate(a.in_dir, a.out_dir, a.workers)
    if a.child == "copy":
        return child_copy(a.in_dir, a.out_dir, a.workers)

    work = Path(a.work)
    results = []
    for n in a.sizes:
        corpus = work / f"n{n}"
        if corpus.exists():
            shutil.rmtree(corpus)
        t0 = time.perf_counter()
        kinds = generate(corpus / "verify", n)
        gen_s = time.perf_counter() - t0
        n = (n // K) * K
        copy, copy_rss = run_measured(["--child", "copy", "--workers", str(a.workers), "--in-dir",
                                       str(corpus / "verify"), "--out-dir", str(corpus / "copy")])
        shutil.rmtree(corpus / "copy")
        cur, cur_rss = run_measured(["--child", "curate", "--workers", str(a.workers), "--in-dir",
                                     str(corpus / "verify"), "--out-dir", str(corpus / "curate")])
        f = cur["funnel"]
        # time inside each filter's check(), summed over the workers' shards (wall clock of busy workers)
        per_filter_us = {x["name"]: round(x["seconds"] / n * 1e6, 1) for x in f["filters"] if "seconds" in x}
        per_filter_us["dedupe_pass (sequential, wall)"] = round(f["run_seconds"]["dedupe_pass"] / n * 1e6, 1)
        avg_tokens = None
        import pyarrow.parquet as pq

        first = pq.read_table(corpus / "verify" / "part-00000.parquet", columns=["completion_tokens"])
        avg_tokens = round(sum(first.column(0).to_pylist()) / first.num_rows)
        results.append({
            "records": n, "avg_completion_tokens": avg_tokens, "generated_defects": kinds,
            "generate_s": round(gen_s, 1),
            "curate_s": round(cur["seconds"], 1), "curate_samples_per_s": round(n / cur["seconds"], 1),
            "curate_peak_rss_gib": round(cur_rss, 3),
            "copy_baseline_s": round(copy["seconds"], 1), "copy_samples_per_s": round(n / copy["seconds"], 1),
            "copy_peak_rss_gib": round(copy_rss, 3),
            "curate_vs_copy_time_ratio": round(cur["seconds"] / copy["seconds"], 2),
            "filter_us_per_sample": per_filter_us,
            "pass_seconds": f["run_seconds"],
            "records_out": f["records_out"],
            "funnel": {x["name"]: {"in": x["in"], "out": x["out"], "dropped": x["dropped"]} for x in f["filters"]},
            "dedupe_unique_prompts": f["dedupe_state"]["unique_prompts"],
        })
        if not a.keep:
            shutil.rmtree(corpus)
    load = os.getloadavg()
    summary = {"bench": "curate", "device": f"CPU, {os.cpu_count()} cores (shared with other agents; "
                                            f"load avg at end {load[0]:.1f})",
               "workers": a.workers, "goal": {"samples_per_s": 250, "peak_rss_gib": 4.0}, "runs": results}
    line = " | ".join(f"{r['records']} samples: {r['curate_samples_per_s']}/s, peak RSS "
                      f"{r['curate_peak_rss_gib']} GiB (copy floor {r['copy_samples_per_s']}/s, "
                      f"x{r['curate_vs_copy_time_ratio']} time)" for r in results)
    print(f"curate bench ({a.workers} workers, ~{results[0]['avg_completion_tokens']} tokens/trace): {line}")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
