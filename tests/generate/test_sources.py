"""Prompt sources: every kind on real local files, the column mapping, and every bad input."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from factory.generate.sources import (ArithmeticSource, FileSource, HubSource, SourceError, arithmetic_problems, load_prompts,
                             stable_prompt_id)


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_jsonl_with_mapping_and_stable_ids(tmp_path):
    path = _jsonl(tmp_path / "p.jsonl", [{"question": "1+1?", "sol": "2"}, {"question": "2+2?", "sol": 4}])
    cfg = FileSource(kind="jsonl", path=path, columns={"problem": "question", "answer": "sol"})
    prompts = load_prompts([cfg])
    assert [p["problem"] for p in prompts] == ["1+1?", "2+2?"]
    assert prompts[1]["answer"] == "4" and prompts[0]["domain"] == "math" and prompts[0]["source"] == "p.jsonl"
    assert prompts[0]["prompt_id"] == stable_prompt_id("p.jsonl", "1+1?")
    assert load_prompts([cfg])[0]["prompt_id"] == prompts[0]["prompt_id"]  # stable across runs


def test_parquet_csv_disk_and_hub_loaders(tmp_path, benchmarks_dir):
    rows = [{"id": "a", "problem": "x?", "answer": "1"}, {"id": "b", "problem": "y?", "answer": "2"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")
    (tmp_path / "p.csv").write_text("id,problem,answer\na,x?,1\nb,y?,2\n")
    import datasets

    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    m = {"prompt_id": "id"}
    for cfg in (FileSource(kind="parquet", path=tmp_path / "p.parquet", columns=m),
                FileSource(kind="csv", path=tmp_path / "p.csv", columns=m),
                FileSource(kind="disk", path=tmp_path / "ds", columns=m),
                # the Hub path is the real datasets.load_dataset call, here on a local file
                HubSource(kind="hub", dataset="json", data_files=str(_jsonl(tmp_path / "h.jsonl", rows)), columns=m)):
        prompts = load_prompts([cfg])
        assert [(p["prompt_id"], p["answer"]) for p in prompts] == [("a", "1"), ("b", "2")], cfg.kind
    gsm = load_prompts([HubSource(kind="hub", dataset="json", data_files=str(benchmarks_dir / "gsm8k.jsonl"),
                                  columns={"prompt_id": "id"}, limit=5)])
    assert len(gsm) == 5 and all(p["answer"] for p in gsm)


def test_arithmetic_generator_is_deterministic_and_splits_are_disjoint():
    train = arithmetic_problems(ArithmeticSource(kind="arithmetic", n=60, seed=3))
    again = arithmetic_problems(ArithmeticSource(kind="arithmetic", n=60, seed=3))
    held = arithmetic_problems(ArithmeticSource(kind="arithmetic", n=30, seed=3, split="heldout"))
    assert train == again

    def triples(ps):
        return {tuple(json.loads(p["metadata"])[k] for k in ("op", "a", "b")) for p in ps}

    assert not triples(train) & triples(held)
    for p in train + held:
        meta = json.loads(p["metadata"])
        assert int(p["answer"]) == meta["a"] + meta["b"]


@pytest.mark.parametrize("content, message", [
    (b'{"problem": "a"}\n{"problem": \n', "p.jsonl:2: malformed JSON"),
    (b'{"problem": "a"}\n\xff\xfe\n', "p.jsonl:2: not valid UTF-8"),
    (b'{"question": "a"}\n', "p.jsonl:1: missing column 'problem'"),
    (b'[1, 2]\n', "p.jsonl:1: expected a JSON object"),
    (b'{"problem": "  "}\n', "p.jsonl:1: empty or non-text problem"),
    (b'{"problem": "a", "domain": "poetry"}\n', "domain 'poetry'"),
    (b"\n\n", "p.jsonl: no prompts in it"),
    (b'{"problem": "a", "id": "x"}\n{"problem": "b", "id": "x"}\n', "duplicate prompt ids: 'x'"),
])
def test_bad_jsonl_names_file_and_line(tmp_path, content, message):
    path = tmp_path / "p.jsonl"
    path.write_bytes(content)
    with pytest.raises(SourceError, match=message.replace("(", r"\(")):
        load_prompts([FileSource(kind="jsonl", path=path, columns={"prompt_id": "id"} if b'"id"' in content else {})])


def test_missing_file_and_mapped_column(tmp_path):
    with pytest.raises(SourceError, match="no such file"):
        load_prompts([FileSource(kind="jsonl", path=tmp_path / "nope.jsonl")])
    path = _jsonl(tmp_path / "p.jsonl", [{"problem": "a"}])
    with pytest.raises(SourceError, match="missing column 'sol'.*'answer'"):
        load_prompts([FileSource(kind="jsonl", path=path, columns={"answer": "sol"})])
    with pytest.raises(ValueError, match="unknown prompt fields"):
        FileSource(kind="jsonl", path=path, columns={"questionn": "q"})
    with pytest.raises(SourceError, match="could not be loaded"):
        load_prompts([HubSource(kind="hub", dataset="json", data_files=str(tmp_path / "missing.jsonl"))])
