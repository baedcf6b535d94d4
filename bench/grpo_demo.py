"""Benchmark: R1-Zero GRPO of the embedded SmolLM2-135M on the built-in arithmetic problems (CPU), held-out pass@1
over k before and after, with its standard error, and the reward / accuracy / format / length curves per step.
One summary line, then JSON (also written to bench/results/grpo_demo.json).

    python bench/grpo_demo.py [--out DIR] [--set key=value ...]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from demo import run_pipeline  # noqa: E402  (the demo bench's run-and-score, shared)

CURVES = {"reward": "reward", "accuracy": "rewards/accuracy/mean", "format": "rewards/format/mean",
          "mean_length": "completions/mean_length", "kl": "kl", "clip_fraction": "clip_ratio/region_mean"}


def curves(log: Path) -> dict[str, list]:
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    out = {"step": [r["step"] for r in rows]}
    for name, key in CURVES.items():
        out[name] = [round(float(r[key]), 4) if r.get(key) is not None else None for r in rows]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--results", type=Path, default=REPO / "bench" / "results" / "grpo_demo.json")
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="factory-grpo-demo-"))
    wall, timings, scores = run_pipeline("r1_zero_demo.yaml", args.overrides, out)
    curve = curves(out / "grpo" / "train_log.jsonl")
    before, after = scores.get("base", {}), scores.get("grpo", {})
    gain = (after.get("pass@1") or 0) - (before.get("pass@1") or 0)
    se = ((after.get("pass@1_se") or 0) ** 2 + (before.get("pass@1_se") or 0) ** 2) ** 0.5
    result = {"bench": "grpo_demo", "device": f"CPU ({os.cpu_count()} cores, {platform.machine()})",
              "wall_s": round(wall, 1), "stage_s": timings, "scores": scores, "gain": round(gain, 4),
              "gain_se": round(se, 4), "gain_beyond_se": gain > se, "curves": curve, "out": str(out),
              "command": " ".join(["python bench/grpo_demo.py", *[f"--set {s}" for s in args.overrides]])}
    fmt = lambda s: f"{100 * (s.get('pass@1') or 0):.1f}±{100 * (s.get('pass@1_se') or 0):.1f}%"  # noqa: E731
    first = lambda k: next((v for v in curve[k] if v is not None), None)  # noqa: E731
    last = lambda k: next((v for v in reversed(curve[k]) if v is not None), None)  # noqa: E731
    print(f"grpo_demo: {wall / 60:.1f} min; held-out pass@1 base {fmt(before)} → grpo {fmt(after)} "
          f"(gain {100 * gain:+.1f} ± {100 * se:.1f} pts); reward {first('reward')} → {last('reward')}, "
          f"mean length {first('mean_length')} → {last('mean_length')} tokens over {len(curve['step'])} steps")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
