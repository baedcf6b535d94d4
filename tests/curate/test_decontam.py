"""Decontamination against the shared benchmark files, with lightly edited benchmark problems mixed in."""
import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from _curate_data import BENCHMARKS, trace
from factory.curate.filters.decontam import (BenchmarkSpec, DecontamConfig, DecontamError, DecontamFilter, NgramIndex,
                              load_benchmarks)
from factory.curate.filters import FilterChain

pytestmark = pytest.mark.skipif(not BENCHMARKS.is_dir(), reason="../shared/data/benchmarks not beside the repo")


def bench_rows(name):
    return [json.loads(line) for line in (BENCHMARKS / f"{name}.jsonl").read_text().splitlines() if line.strip()]


def edits(problem: str, rng: random.Random) -> str:
    """A light edit: a prefix, doubled spaces, changed case, a trailing note, or the first sentence dropped."""
    choice = rng.randrange(5)
    if choice == 0:
        return "Solve the following problem. " + problem
    if choice == 1:
        return problem.replace(" ", "  ").upper()
    if choice == 2:
        return problem + " Show your work and give the final answer."
    if choice == 3:
        return problem.replace(",", " ,").replace(".", " .")
    parts = problem.split(". ", 1)
    return parts[1] if len(parts) == 2 and len(parts[1].split()) >= 12 else "Please help: " + problem


def test_edited_benchmark_problems_are_removed_and_named():
    rng = random.Random(4)
    config = DecontamConfig(benchmarks=[BenchmarkSpec(path=str(BENCHMARKS))])
    planted = {}
    for name in ("math500", "gsm8k", "aime24", "amc23"):
        for row in rng.sample(bench_rows(name), 5):
            planted[f"contam-{name}-{row['id']}"] = (name, row["id"], edits(row["problem"], rng))
    clean = {f"clean-{i}": f"A farmer plants {i + 3} rows of {2 * i + 5} trees and {i} of the trees die each "
                           f"winter; how many trees are left after {i % 4 + 1} winters if none are replanted?"
             for i in range(30)}
    records = [trace(pid, 0, problem=p) for pid, (_, _, p) in planted.items()]
    records += [trace(pid, 0, problem=p) for pid, p in clean.items()]
    rng.shuffle(records)
    result = FilterChain([DecontamFilter(config)]).run(records)
    removed = {r["prompt_id"]: (r["reason"], r["matched"]) for r in result.rejected}
    assert removed == {pid: (f"benchmark:{name}", bid) for pid, (name, bid, _) in planted.items()}
    assert {r["prompt_id"] for r in result.kept} == set(clean)


def test_index_covers_every_benchmark_file():
    benches = load_benchmarks([BenchmarkSpec(path=str(BENCHMARKS))])
    assert [b.name for b in benches] == ["aime24", "amc23", "gsm8k", "humaneval", "math500"]
    sizes = {b.name: len(b.problems) for b in benches}
    assert sizes == {"aime24": 30, "amc23": 40, "gsm8k": 1319, "humaneval": 164, "math500": 500}
    index = NgramIndex(benches, 8)
    humaneval = bench_rows("humaneval")[3]
    assert index.match("Complete this function:\n" + humaneval["prompt"]) == ("humaneval", humaneval["task_id"])
    assert index.match("What is the capital of France? Answer in one word, please.") is None


def test_short_benchmark_problem_matches_whole_text(tmp_path):
    path = tmp_path / "tiny.jsonl"
    path.write_text(json.dumps({"id": "t1", "problem": "Compute 17 * 23."}) + "\n")
    index = NgramIndex(load_benchmarks([BenchmarkSpec(path=str(path))]), 8)
    assert index.match("compute 17*23") == ("tiny", "t1")
    assert index.match("Compute 17 * 24.") is None


def test_parquet_and_local_dataset_sources(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    rows = bench_rows("aime24")[:3]
    pq.write_table(pa.Table.from_pylist([{"id": r["id"], "question": r["problem"]} for r in rows]),
                   tmp_path / "aime_q.parquet")
    (tmp_path / "hub").mkdir()
    pq.write_table(pa.Table.from_pylist([{"problem": r["problem"]} for r in rows]), tmp_path / "hub" / "test.parquet")
    benches = load_benchmarks([BenchmarkSpec(path=str(tmp_path / "aime_q.parquet")),
                               BenchmarkSpec(dataset=str(tmp_path / "hub"), name="hubbed")])
    assert [(b.name, len(b.problems)) for b in benches] == [("aime_q", 3), ("hubbed", 3)]
    assert benches[0].ids == [r["id"] for r in rows]


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(DecontamError, match="nope.jsonl does not exist"):
        load_benchmarks([BenchmarkSpec(path=str(tmp_path / "nope.jsonl"))])
    with pytest.raises(DecontamError, match="matches no .jsonl/.parquet file"):
        load_benchmarks([BenchmarkSpec(path=str(tmp_path / "*.jsonl"))])


def test_no_problem_column_is_a_clear_error(tmp_path):
    path = tmp_path / "odd.jsonl"
    path.write_text(json.dumps({"id": 1, "text": "hello"}) + "\n")
    with pytest.raises(DecontamError, match=r"odd.jsonl:1: no problem column .* the record has \['id', 'text'\]"):
        load_benchmarks([BenchmarkSpec(path=str(path))])
    with pytest.raises(DecontamError, match="no problem column \\(statement\\)"):
        load_benchmarks([BenchmarkSpec(path=str(BENCHMARKS / "aime24.jsonl"), column="statement")])
    pq.write_table(pa.table({"text": ["a"]}), tmp_path / "odd.parquet")
    with pytest.raises(DecontamError, match=r"odd.parquet: no problem column .* columns are \['text'\]"):
        load_benchmarks([BenchmarkSpec(path=str(tmp_path / "odd.parquet"))])


def test_config_is_validated():
    with pytest.raises(ValueError, match="exactly one of 'path'"):
        BenchmarkSpec()
    with pytest.raises(ValueError, match="ngram"):
        DecontamConfig(ngram=1)
