"""Bench: resharding a curated dataset into per-domain Hub shards — factory's streaming resharder vs the
`datasets` route that `push_to_hub` takes (load into an Arrow cache, filter per domain, shard, to_parquet).

Each side runs in its own subprocess on the same synthetic curate folder; prints one summary line and a JSON
result with wall time and peak RSS of each, and their ratios (factory / datasets).

    PYTHONPATH=$PWD python bench/publish_reshard.py --rows 40000 --reply-chars 4000

Until schemas/curated.yaml lands on main, the curated records use the stand-in schema of tests/publish_fixtures.
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests"), str(REPO)]


def _schemas(tmp: Path) -> None:
    import pytest
    from publish_fixtures import use_fixture_schemas

    (tmp / "s").mkdir(exist_ok=True)
    use_fixture_schemas(pytest.MonkeyPatch(), tmp / "s")


def make_input(run: Path, rows: int, reply_chars: int, shards: int) -> None:
    import random

    from publish_fixtures import curated_row, write_shard

    rng = random.Random(0)
    domains = ["math", "code", "science"]
    per = math.ceil(rows / shards)
    words = ["so", "the", "sum", "is", "then", "we", "check", "wait", "therefore", "x", "=", "2", "+"]
    for s in range(shards):
        batch = []
        for i in range(s * per, min(rows, (s + 1) * per)):
            row = curated_row(i, domains[i % 3] if i % 3 != 1 else "code", f"src{i % 5}")
            row["domain"] = domains[i % 3]
            text = " ".join(rng.choice(words) for _ in range(reply_chars // 4))
            row["messages"][1]["content"] = f"<think>\n{text}\n</think>\n\nThe answer is \\boxed{{{i}}}."
            batch.append(row)
        write_shard(run / "curate" / f"part-{s:05d}.parquet", "curated", batch)
    (run / "curate" / "counts.json").write_text(json.dumps({"stage": "curate", "records_in": rows,
                                                            "records_out": rows}))


def side_factory(run: Path, out: Path, shard_mb: float) -> dict:
    from factory.publish.dataset import DatasetPublishConfig, build_dataset_folder

    build = build_dataset_folder(run, out, DatasetPublishConfig(shard_size_mb=shard_mb), "bench/reshard")
    return {"rows": build.configs["all"], "files": sum(1 for p, _ in build.files if p.endswith(".parquet"))}


def side_datasets(run: Path, out: Path, shard_mb: float) -> dict:
    import datasets

    datasets.disable_progress_bars()
    files = sorted(str(p) for p in (run / "curate").glob("part-*.parquet"))
    ds = datasets.load_dataset("parquet", data_files=files, split="train",
                               cache_dir=str(out.parent / "hf_cache"))
    n_files = rows = 0
    for domain in sorted(set(ds["domain"])):
        sub = ds.filter(lambda d: d == domain, input_columns="domain")
        n = max(1, math.ceil(sub._estimate_nbytes() / (shard_mb * 1e6)))  # push_to_hub's max_shard_size rule
        for i in range(n):
            path = out / "data" / domain / f"train-{i:05d}-of-{n:05d}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            sub.shard(num_shards=n, index=i, contiguous=True).to_parquet(str(path))
        n_files += n
        rows += sub.num_rows
    return {"rows": rows, "files": n_files}


def child(side: str, run: Path, out: Path, shard_mb: float) -> None:
    _schemas(out.parent)
    t0 = time.perf_counter()
    res = (side_factory if side == "factory" else side_datasets)(run, out, shard_mb)
    res["seconds"] = time.perf_counter() - t0
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(res))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=40_000)
    ap.add_argument("--reply-chars", type=int, default=4_000)
    ap.add_argument("--input-shards", type=int, default=8)
    ap.add_argument("--shard-mb", type=float, default=50.0)
    ap.add_argument("--child", nargs=3, metavar=("SIDE", "RUN", "OUT"))
    args = ap.parse_args()
    if args.child:
        side, run, out = args.child
        return child(side, Path(run), Path(out), args.shard_mb)
    tmp = Path(tempfile.mkdtemp(prefix="bench-publish-"))
    try:
        _schemas(tmp)
        run = tmp / "run"
        make_input(run, args.rows, args.reply_chars, args.input_shards)
        in_mb = sum(p.stat().st_size for p in (run / "curate").glob("*.parquet")) / 1e6
        results = {}
        for side in ("datasets", "factory"):
            out = tmp / side / "dataset"
            out.parent.mkdir()
            proc = subprocess.run([sys.executable, __file__, "--shard-mb", str(args.shard_mb), "--child", side,
                                   str(run), str(out)], capture_output=True, text=True, check=True)
            results[side] = json.loads(proc.stdout.strip().splitlines()[-1])
        f, d = results["factory"], results["datasets"]
        assert f["rows"] == d["rows"] == args.rows, (f, d)
        summary = {"bench": "publish_reshard", "rows": args.rows, "input_parquet_mb": round(in_mb, 1),
                   "shard_mb": args.shard_mb, "factory": f, "datasets": d,
                   "time_ratio": round(f["seconds"] / d["seconds"], 3),
                   "peak_rss_ratio": round(f["peak_rss_mb"] / d["peak_rss_mb"], 3), "device": "cpu"}
        print(f"publish_reshard: {args.rows} rows ({in_mb:.0f} MB parquet): factory {f['seconds']:.1f}s "
              f"{f['peak_rss_mb']:.0f} MB RSS vs datasets {d['seconds']:.1f}s {d['peak_rss_mb']:.0f} MB RSS "
              f"(time x{summary['time_ratio']}, memory x{summary['peak_rss_ratio']})")
        print(json.dumps(summary))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
