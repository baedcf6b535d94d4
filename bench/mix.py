"""Benchmark of `factory mix` on synthetic curated sets of 100k and 1M rows: build time and peak memory must stay
flat with size (time per row constant, peak RSS the same).

For each size N: two real curated sets (Parquet, `curated` schema, shards of 10k rows, ~1.5 kB of messages per row):
`reasoning` (0.75 N rows, domain math) and `general` (0.25 N rows, domain general); the mixture takes 0.8 N rows at
ratio 0.75 / 0.25 (the paper's 600k + 200k at N = 1M). Each measurement runs in a fresh subprocess that reports its
own peak RSS (getrusage). Baseline in the same run: a copy pass over the same shards (read every batch, write it
back, no sampling), the I/O floor of any mixture; the ratio says what sampling and interleaving cost on top of it.

Prints one summary line, then JSON.  Usage:
    PYTHONPATH=$PWD .venv/bin/python bench/mix.py [--sizes 100000 1000000] [--work /tmp/bench_mix]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SHARD_ROWS = 10_000
WORDS = ("so the sum of the first terms equals the product of the remaining factors and then we check the "
         "parity of each case before we count the values that satisfy the given condition").split()


def _base_table(source: str, domain: str):
    """One shard's worth of varied curated rows; shards differ by their prompt ids."""
    import random

    from factory.core.schema import load_schema
    from factory.curate.export import to_messages

    rng = random.Random(hash(source) % 1000)
    rows = []
    for i in range(SHARD_ROWS):
        problem = f"{source} problem {i}: " + " ".join(rng.choices(WORDS, k=20))
        reasoning = " ".join(rng.choices(WORDS, k=220)) + f" {rng.randint(0, 10**9)}"
        rows.append({"messages": to_messages(problem, reasoning, f"The answer is $\\boxed{{{i}}}$."),
                     "prompt_id": f"{source}-{i}", "sample_idx": 0, "source": source, "domain": domain,
                     "problem": problem, "answer": str(i), "num_tokens": 400, "teacher": "bench", "language": "en"})
    return load_schema("curated").table(rows)


def make_set(folder: Path, source: str, domain: str, n: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    curate = folder / "curate"
    if (curate / "counts.json").exists():
        return
    shutil.rmtree(curate, ignore_errors=True)
    curate.mkdir(parents=True)
    base = _base_table(source, domain)
    idx = base.schema.get_field_index("prompt_id")
    for s in range(-(-n // SHARD_ROWS)):
        rows = min(SHARD_ROWS, n - s * SHARD_ROWS)
        ids = pa.array([f"{source}-{s * SHARD_ROWS + i}" for i in range(rows)], pa.string())
        table = base.slice(0, rows).set_column(idx, base.schema.field(idx), ids)
        pq.write_table(table, curate / f"part-{s:05d}.parquet", compression="zstd")
    (curate / "counts.json").write_text(json.dumps({"stage": "curate", "records_in": n, "records_out": n}))


def _child(kind: str, work: Path, n: int) -> None:
    """In a fresh process: the mixture (or the copy baseline) of size n; prints seconds and own peak RSS."""
    import resource

    import pyarrow.parquet as pq

    from factory.mix.config import MixConfig
    from factory.mix.stage import mix_stage

    out = work / f"out-{kind}-{n}"
    shutil.rmtree(out, ignore_errors=True)
    def cpu() -> float:
        use = resource.getrusage(resource.RUSAGE_SELF)
        return use.ru_utime + use.ru_stime

    started, cpu0 = time.perf_counter(), cpu()  # imports excluded: the same fixed cost at every size
    if kind == "mix":
        cfg = MixConfig(sources=[{"name": "reasoning", "path": str(work / f"reasoning-{n}"), "ratio": 0.75},
                                 {"name": "general", "path": str(work / f"general-{n}"), "ratio": 0.25}],
                        total=int(0.8 * n), seed=0)
        rows = mix_stage(cfg, out / "mix")["records_out"]
    else:
        out.mkdir(parents=True)
        rows, j = 0, 0
        for name in ("reasoning", "general"):
            for part in sorted((work / f"{name}-{n}" / "curate").glob("part-*.parquet")):
                table = pq.read_table(part)
                pq.write_table(table, out / f"part-{j:05d}.parquet", compression="zstd")
                rows, j = rows + table.num_rows, j + 1
    seconds, cpu_s = time.perf_counter() - started, cpu() - cpu0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # kB → MiB (Linux)
    shutil.rmtree(out, ignore_errors=True)
    print(json.dumps({"kind": kind, "rows": rows, "seconds": round(seconds, 2), "cpu_s": round(cpu_s, 2),
                      "peak_rss_mib": round(peak, 1)}))


def measure(kind: str, work: Path, n: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", kind, "--work", str(work), "--sizes", str(n)],
                         capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_mix"))
    ap.add_argument("--child", choices=["mix", "copy"])
    ap.add_argument("--keep", action="store_true", help="keep the synthetic sets for a rerun")
    a = ap.parse_args()
    if a.child:
        return _child(a.child, a.work, a.sizes[0])
    results = []
    for n in a.sizes:
        t0 = time.perf_counter()
        make_set(a.work / f"reasoning-{n}", "reasoning", "math", n * 3 // 4)
        make_set(a.work / f"general-{n}", "general", "general", n - n * 3 // 4)
        made = time.perf_counter() - t0
        mix, copy = measure("mix", a.work, n), measure("copy", a.work, n)
        results.append({"input_rows": n, "mixture_rows": mix["rows"], "mix_s": mix["seconds"],
                        "mix_peak_rss_mib": mix["peak_rss_mib"],
                        "mix_us_per_row": round(1e6 * mix["seconds"] / mix["rows"], 2), "mix_cpu_s": mix["cpu_s"],
                        "mix_cpu_us_per_row": round(1e6 * mix["cpu_s"] / mix["rows"], 2), "copy_cpu_s": copy["cpu_s"],
                        "copy_s": copy["seconds"], "copy_peak_rss_mib": copy["peak_rss_mib"],
                        "mix_over_copy": round(mix["seconds"] / copy["seconds"], 2), "make_input_s": round(made, 1),
                        "input_mib": round(sum(p.stat().st_size for p in a.work.glob(f"*-{n}/curate/*")) / 2**20)})
    if not a.keep:
        shutil.rmtree(a.work, ignore_errors=True)
    small, large = results[0], results[-1]
    summary = {"bench": "mix", "device": f"CPU, {os.cpu_count()} cores (shared with other agents)",
               "date": time.strftime("%Y-%m-%d"), "results": results,
               "time_per_row_ratio": round(large["mix_us_per_row"] / small["mix_us_per_row"], 2),
               "cpu_per_row_ratio": round(large["mix_cpu_us_per_row"] / small["mix_cpu_us_per_row"], 2),
               "load_average": os.getloadavg(),
               "peak_rss_ratio": round(large["mix_peak_rss_mib"] / small["mix_peak_rss_mib"], 2)}
    line = "; ".join(f"{r['input_rows']:,} rows → {r['mixture_rows']:,}: {r['mix_s']} s "
                     f"({r['mix_us_per_row']} µs/row, CPU {r['mix_cpu_us_per_row']} µs/row, "
                     f"{r['mix_over_copy']}x copy), peak {r['mix_peak_rss_mib']} MiB"
                     for r in results)
    print(f"mix bench: {line}; per-row time x{summary['time_per_row_ratio']} (CPU x{summary['cpu_per_row_ratio']}), "
          f"peak RSS x{summary['peak_rss_ratio']} "
          f"from {small['input_rows']:,} to {large['input_rows']:,}")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
