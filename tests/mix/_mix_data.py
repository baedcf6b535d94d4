"""Small real curated sets for the mix tests: rows of the `curated` schema in real Parquet shards, as the curate
stage leaves them (parts + counts.json), and helpers to read a mixture back."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from factory.core.schema import load_schema
from factory.curate.export import to_messages


def curated_row(prompt_id: str, source: str, domain: str, i: int) -> dict:
    problem = f"{source} question {i}: what is {i} + {i}?"
    return {"messages": to_messages(problem, f"I add {i} and {i}.", f"The answer is $\\boxed{{{2 * i}}}$."),
            "prompt_id": prompt_id, "sample_idx": 0, "source": source, "domain": domain, "problem": problem,
            "answer": str(2 * i), "language": "en", "metadata": "{}", "num_tokens": 40 + i, "teacher": "unit-teacher",
            "sampling": "{}", "reward_accuracy": 1.0, "accuracy_verdict": "correct", "selected": True,
            "track": "non_reasoning" if domain == "general" else "reasoning"}


def write_run(run_dir: Path, source: str, n: int, *, shards: int = 2, domains: tuple[str, ...] = ("math",)) -> Path:
    """A run folder whose curate/ holds n samples of prompt source `source`, domains cycling through `domains`."""
    curate = Path(run_dir) / "curate"
    curate.mkdir(parents=True, exist_ok=True)
    schema = load_schema("curated")
    per = -(-n // shards)
    for s in range(shards):
        rows = [curated_row(f"{source}-{i}", source, domains[i % len(domains)], i)
                for i in range(s * per, min(n, (s + 1) * per))]
        pq.write_table(schema.table(rows), curate / f"part-{s:05d}.parquet")
    (curate / "counts.json").write_text(json.dumps({"stage": "curate", "records_in": n, "records_out": n}))
    return curate


def read_mix(folder: Path, columns: list[str] | None = None) -> list[dict]:
    parts = sorted(Path(folder).glob("part-*.parquet"))
    return [r for p in parts for r in pq.read_table(p, columns=columns).to_pylist()]


def components(folder: Path) -> Counter:
    return Counter(r["mix_component"] for r in read_mix(folder, ["mix_component"]))
