"""Benchmark: wall time of `factory run pipelines/demo.yaml` per stage, and the student's accuracy before and after
(pass@1 over k with its standard error, cons@k) on the held-out problems. One summary line, then JSON.

    python bench/demo.py [--out DIR] [--set key=value ...]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_pipeline(pipeline: str, overrides: list[str], out: Path) -> tuple[float, dict, dict]:
    """`factory run pipelines/<pipeline>` into `out`: (wall seconds, seconds per stage, eval scores per model)."""
    cmd = [sys.executable, "-m", "factory", "run", str(REPO / "pipelines" / pipeline), "--out", str(out)]
    for item in overrides:
        cmd += ["--set", item]
    started = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, env={**os.environ, "FACTORY_PROGRESS": "0"})
    wall = time.perf_counter() - started
    timings = json.loads((out / "timings.json").read_text())
    summary = json.loads((out / "eval" / "summary.json").read_text())
    scores = {row["model"]: {k: row.get(k) for k in ("pass@1", "pass@1_se", "cons@k", "k", "n_problems",
                                                       "mean_tokens", "truncation_rate")} for row in summary}
    return wall, timings, scores


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="factory-demo-"))
    wall, timings, scores = run_pipeline("demo.yaml", args.overrides, out)
    result = {"bench": "demo", "device": f"CPU ({os.cpu_count()} cores, {platform.machine()})", "wall_s": round(wall, 1),
              "stage_s": timings, "scores": scores, "out": str(out)}
    before, after = scores.get("base", {}), scores.get("student", {})
    fmt = lambda s: f"{100 * s.get('pass@1', 0):.1f}±{100 * (s.get('pass@1_se') or 0):.1f}%"  # noqa: E731
    print(f"demo: {wall / 60:.1f} min end to end ({', '.join(f'{k} {v:.0f}s' for k, v in timings.items())}); "
          f"pass@1 base {fmt(before)} → student {fmt(after)}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
