"""The benchmark loader on the shared benchmark files, and bad input: files, columns, config, adapters."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from factory.eval.benchmarks import BenchmarkError, load_benchmark
from factory.eval.config import AdapterError, BenchmarkConfig, EvalConfig, EvalModel, check_adapter

REPO = Path(__file__).resolve().parents[2]
BENCHMARKS = REPO.parent / "shared/data/benchmarks"

needs_shared = pytest.mark.skipif(not BENCHMARKS.is_dir(), reason=f"{BENCHMARKS} is absent (needs ../shared beside the repo)")


@needs_shared
@pytest.mark.parametrize("name,size", [("aime24", 30), ("amc23", 40), ("gsm8k", 1319), ("math500", 500)])
def test_shared_math_benchmarks_load_whole(name, size):
    rows = load_benchmark(BenchmarkConfig(name=name, path=str(BENCHMARKS / f"{name}.jsonl")))
    assert len(rows) == size
    assert len({r["id"] for r in rows}) == size
    assert all(r["problem"].strip() and r["answer"].strip() for r in rows)
    assert set(rows[0]) == {"id", "problem", "answer", "benchmark", "domain"}
    assert rows[0]["benchmark"] == name and rows[0]["domain"] == "math"
    first = json.loads((BENCHMARKS / f"{name}.jsonl").open().readline())
    assert (rows[0]["id"], rows[0]["problem"], rows[0]["answer"]) == (first["id"], first["problem"], str(first["answer"]))


@needs_shared
def test_limit_and_relative_path():
    config = BenchmarkConfig(name="gsm8k", path="shared/data/benchmarks/gsm8k.jsonl")
    rows = load_benchmark(config, limit=5, base_dir=REPO.parent)
    assert [r["id"] for r in rows] == [f"gsm8k-{i}" for i in range(5)]
    assert rows[0]["answer"] == "18"
    # the benchmark's own limit wins over the run-wide one
    own = BenchmarkConfig(name="gsm8k", path="shared/data/benchmarks/gsm8k.jsonl", limit=2)
    assert len(load_benchmark(own, limit=5, base_dir=REPO.parent)) == 2
    assert EvalConfig(models=[{"name": "m", "path": "x"}], benchmarks=[own], limit=5).limit_for(own) == 2


@needs_shared
def test_benchmark_without_answer_column_names_file_and_column():
    path = BENCHMARKS / "humaneval.jsonl"
    with pytest.raises(BenchmarkError) as err:
        load_benchmark(BenchmarkConfig(name="humaneval", path=str(path), id_column="task_id", problem_column="prompt"))
    message = str(err.value)
    assert str(path) in message and "answer column 'answer'" in message and "entry_point" in message


def test_parquet_with_column_mapping(tmp_path):
    path = tmp_path / "quiz.parquet"
    pq.write_table(pa.table({"question": ["1+1?", "2+3?", "7*6?"], "final": [2, 5, 42], "extra": ["a", "b", "c"]}), path)
    config = BenchmarkConfig(name="quiz", path=str(path), id_column=None, problem_column="question",
                             answer_column="final")
    rows = load_benchmark(config)
    assert rows == [{"id": f"quiz-{i}", "problem": p, "answer": a, "benchmark": "quiz", "domain": "math"}
                    for i, (p, a) in enumerate([("1+1?", "2"), ("2+3?", "5"), ("7*6?", "42")])]
    missing = BenchmarkConfig(name="quiz", path=str(path), id_column=None, problem_column="question")
    with pytest.raises(BenchmarkError, match=rf"{path}.*no answer column 'answer' \(columns: question, final, extra\)"):
        load_benchmark(missing)


def test_empty_answer_cell_names_row_and_id(tmp_path):
    path = tmp_path / "bench.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"id": "a", "problem": "1+1?", "answer": "2"},
        {"id": "b", "problem": "2+2?", "answer": None},
    ]) + "\n")
    with pytest.raises(BenchmarkError, match=rf"{path} row 1 \(id b\): answer column 'answer' is empty"):
        load_benchmark(BenchmarkConfig(name="bench", path=str(path)))
    # within the limit the bad row is never read
    assert len(load_benchmark(BenchmarkConfig(name="bench", path=str(path), limit=1))) == 1


def test_duplicate_ids_rejected(tmp_path):
    path = tmp_path / "dupes.jsonl"
    path.write_text('{"id": "x", "problem": "p", "answer": "1"}\n{"id": "x", "problem": "q", "answer": "2"}\n')
    with pytest.raises(BenchmarkError, match="row 1: id 'x' appears twice"):
        load_benchmark(BenchmarkConfig(name="dupes", path=str(path)))


def test_unreadable_or_missing_files(tmp_path):
    with pytest.raises(BenchmarkError, match="file .*nowhere.jsonl does not exist"):
        load_benchmark(BenchmarkConfig(name="nowhere", path=str(tmp_path / "nowhere.jsonl")))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"id": "a", "problem": "p", "answer": "1"}\n{"id": "b", "problem": \n')
    with pytest.raises(BenchmarkError, match=rf"benchmark 'broken': cannot read {broken}: .*JSON parse error.* row 1"):
        load_benchmark(BenchmarkConfig(name="broken", path=str(broken)))
    csv = tmp_path / "bench.csv"
    csv.write_text("id,problem,answer\na,p,1\n")
    with pytest.raises(BenchmarkError, match=r"is not a \.jsonl, \.json or \.parquet file"):
        load_benchmark(BenchmarkConfig(name="csv", path=str(csv)))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(BenchmarkError, match=rf"benchmark 'empty': {empty} is empty"):
        load_benchmark(BenchmarkConfig(name="empty", path=str(empty)))


def test_unknown_hub_dataset_is_named(monkeypatch):
    import datasets
    import huggingface_hub.constants

    # offline: no network wait; the error must still name the benchmark and the Hub id
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(BenchmarkError, match="benchmark 'ghost': cannot read Hub dataset 'nobody-xyz/ghost-bench'"):
        load_benchmark(BenchmarkConfig(name="ghost", path="nobody-xyz/ghost-bench"))


def test_eval_config_defaults_and_bad_values():
    config = EvalConfig(models=[{"name": "teacher", "path": "HuggingFaceTB/SmolLM2-135M-Instruct"}],
                        benchmarks=[{"name": "aime24", "path": "aime24.jsonl"}], k=4)
    assert (config.temperature, config.top_p, config.max_tokens, config.vote_ties) == (0.6, 0.95, 32768, "first")
    with pytest.raises(ValidationError, match=r"k\n  Input should be greater than or equal to 1"):
        EvalConfig(models=[{"name": "m", "path": "x"}], benchmarks=[{"name": "b", "path": "b.jsonl"}], k=0)
    with pytest.raises(ValidationError, match=r"temprature\n  Extra inputs are not permitted"):
        EvalConfig(models=[{"name": "m", "path": "x"}], benchmarks=[{"name": "b", "path": "b.jsonl"}], temprature=0.6)
    with pytest.raises(ValidationError, match=r"benchmarks.0.answer_col\n  Extra inputs"):
        EvalConfig(models=[{"name": "m", "path": "x"}], benchmarks=[{"name": "b", "path": "b.jsonl", "answer_col": "y"}])
    with pytest.raises(ValidationError, match=r"model names must be unique; repeated: \['m'\]"):
        EvalConfig(models=[{"name": "m", "path": "x"}, {"name": "m", "path": "y"}], benchmarks=[{"name": "b", "path": "b"}])
    with pytest.raises(ValidationError, match="top_p"):
        EvalConfig(models=[{"name": "m", "path": "x"}], benchmarks=[{"name": "b", "path": "b"}], top_p=0)


def test_model_is_a_path_or_an_adapter_with_its_base():
    assert EvalModel(name="s", adapter="out/sft/adapter", base="base-model").weights == "base-model"
    assert EvalModel(name="t", path="teacher").weights == "teacher"
    with pytest.raises(ValidationError, match="model 's': give either 'path' or 'adapter' \\+ 'base'"):
        EvalModel(name="s", path="p", adapter="a", base="b")
    with pytest.raises(ValidationError, match="model 's': needs 'path' .*or both 'adapter' and 'base'"):
        EvalModel(name="s", adapter="a")


def test_adapter_base_must_match(tmp_path):
    base = tmp_path / "base-model"
    base.mkdir()
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base), "peft_type": "LORA"}))
    check_adapter(EvalModel(name="s", adapter=str(adapter), base=str(base)))
    # the same folder written relative to base_dir is the same base
    check_adapter(EvalModel(name="s", adapter="adapter", base="base-model"), base_dir=tmp_path)
    with pytest.raises(AdapterError, match=rf"adapter {adapter} was trained on '{base}', but its base is given as 'other/model'"):
        check_adapter(EvalModel(name="s", adapter=str(adapter), base="other/model"))
    with pytest.raises(AdapterError, match="adapter folder .* does not exist"):
        check_adapter(EvalModel(name="s", adapter=str(tmp_path / "none"), base=str(base)))
    with pytest.raises(AdapterError, match="adapter_config.json is missing"):
        check_adapter(EvalModel(name="s", adapter=str(base), base=str(base)))
