"""Benchmark of the language-consistency filter: agreement on the labelled set and time per segment / per CoT.

Both methods run in the same process on the same inputs: `segments` (before the issue: merged segments, every one
labelled by the model, no confidence floor) and `runs` (now: script runs, neutral short/embedded/quoted spans,
a confidence floor). Agreement: a snippet labelled "consistent" must score >= min_consistency, a "mixed" one
below it. Time: best of --repeat passes over the labelled set, over R1-length synthetic English CoTs (~5k tokens,
tests/_curate_data.synthetic_cot; also with math symbols) and over ~9k-character Chinese CoTs, the model warm, in
CPU time of this process (the machine is shared: wall time would measure the neighbours); a segment is a sentence
of the cleaned CoT.

Prints one summary line, then JSON.  Usage:
    PYTHONPATH=$PWD python bench/language.py [--cots 40] [--repeat 5]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from factory.curate.config import LanguageConfig
from factory.curate.filters.language import consistency_for
from factory.curate.filters.language_scripts import clean, sentences

DATA = REPO / "tests" / "curate" / "data" / "language_cots.jsonl"
METHODS = {"before": LanguageConfig(method="segments"), "after": LanguageConfig()}


def agreement(rows: list[dict], config: LanguageConfig) -> dict:
    """n/N agreement and each miss with its score."""
    misses = []
    for r in rows:
        score = consistency_for(r["text"], r["target"], config)
        if (score >= config.min_consistency) != (r["label"] == "consistent"):
            misses.append({"id": r["id"], "label": r["label"], "score": round(score, 3), "why": r["why"]})
    ok = len(rows) - len(misses)
    return {"agree": ok, "n": len(rows), "rate": round(ok / len(rows), 4), "misses": misses}


def best_seconds(texts: list[tuple[str, str]], config: LanguageConfig, repeat: int) -> float:
    """Best CPU time of `repeat` passes scoring every (text, target)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        for text, target in texts:
            consistency_for(text, target, config)
        best = min(best, time.process_time() - t0)
    return best


def timing(texts: list[tuple[str, str]], repeat: int) -> dict:
    """ms per text and per segment (sentence) for both methods."""
    segs = sum(len(sentences(clean(t))) for t, _ in texts)
    out = {"texts": len(texts), "segments": segs}
    for name, config in METHODS.items():
        s = best_seconds(texts, config, repeat)
        out[name] = {"ms_per_cot": round(1000 * s / len(texts), 3), "ms_per_segment": round(1000 * s / segs, 4)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cots", type=int, default=40, help="synthetic R1-length CoTs to time")
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    from _curate_data import synthetic_cot

    rows = [json.loads(x) for x in DATA.read_text(encoding="utf-8").splitlines() if x.strip()]
    consistency_for("warm up the model", "en", METHODS["after"])
    result = {name: agreement(rows, config) for name, config in METHODS.items()}
    rng = random.Random(0)
    long_cots = [(synthetic_cot(rng), "en") for _ in range(a.cots)]
    # the same with math symbols in every sentence (no ASCII fast path), and ~9k-character Chinese CoTs
    symbols = [(t.replace(" = ", " ≤ ").replace(" + ", " × "), g) for t, g in long_cots]
    zh = "\n\n".join(r["text"] for r in rows if r["target"] == "zh" and r["label"] == "consistent")
    zh_cots = [("\n\n".join([zh] * 8), "zh")] * max(1, a.cots // 4)
    summary = {
        "bench": "language", "device": f"CPU, 1 thread of {os.cpu_count()} cores (shared; load avg "
                                         f"{os.getloadavg()[0]:.1f})",
        "goal": {"agreement": 0.95, "ms_per_segment": 2.0},
        "agreement": result,
        "time_labelled_set": timing([(r["text"], r["target"]) for r in rows], a.repeat),
        "time_r1_length_cots": timing(long_cots, a.repeat),
        "time_r1_length_cots_with_symbols": timing(symbols, a.repeat),
        "time_zh_cots_9k_chars": timing(zh_cots, a.repeat),
    }
    b, f = result["before"], result["after"]
    t = summary["time_r1_length_cots"]
    print(f"language bench: agreement {b['agree']}/{b['n']} before -> {f['agree']}/{f['n']} after; "
          f"{t['after']['ms_per_segment']} ms/segment, {t['after']['ms_per_cot']} ms per ~5k-token CoT "
          f"(before {t['before']['ms_per_segment']} / {t['before']['ms_per_cot']})")
    print(json.dumps(summary, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
