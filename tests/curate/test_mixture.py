"""Mixtures of curated sets to target counts or ratios."""
from collections import Counter

import pyarrow.parquet as pq
import pytest

from _curate_data import cot, trace, write_stage
from factory.curate.filter_pass import CurateConfig
from factory.curate.stage import curate_stage
from factory.curate.mixture import MixtureConfig, MixtureError, build_mixture

PLAIN = CurateConfig(dedupe={"near_prompts": {"enabled": False}}, language={"enabled": False})


def curated_set(tmp_path, name, n, shards=2):
    """A real curated folder of n samples from source `name`."""
    per = n // shards
    write_stage(tmp_path / name / "generate",
                [[trace(f"{name}{s}-{i}", 0, source=name, problem=f"{name} question number {s * per + i}?",
                        reasoning=cot(s * per + i)) for i in range(per)] for s in range(shards)])
    curate_stage(tmp_path / name / "generate", tmp_path / name / "curate", PLAIN)
    return str(tmp_path / name / "curate")


def sources(out):
    rows = [r for p in sorted(out.glob("part-*.parquet")) for r in pq.read_table(p, columns=["source"]).to_pylist()]
    return Counter(r["source"] for r in rows)


def test_counts_and_ratio_per_shard(tmp_path):
    reasoning, general = curated_set(tmp_path, "reasoning", 60), curated_set(tmp_path, "general", 30)
    cfg = MixtureConfig(components=[{"path": reasoning, "count": 45}, {"path": general, "count": 15}], shard_rows=20)
    summary = build_mixture(cfg, tmp_path / "mix")
    assert sources(tmp_path / "mix") == {"reasoning": 45, "general": 15}
    assert summary["shards"] == 3 and [c["taken"] for c in summary["components"]] == [45, 15]
    for p in sorted((tmp_path / "mix").glob("part-*.parquet")):  # every shard carries the 3:1 ratio
        assert Counter(pq.read_table(p, columns=["source"]).column(0).to_pylist()) == {"reasoning": 15, "general": 5}
    ids = [r["prompt_id"] for p in sorted((tmp_path / "mix").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    assert len(set(ids)) == 60  # no repeats


def test_weights_with_and_without_total(tmp_path):
    reasoning, general = curated_set(tmp_path, "reasoning", 60), curated_set(tmp_path, "general", 30)
    cfg = MixtureConfig(components=[{"path": reasoning, "weight": 3}, {"path": general, "weight": 1}])
    assert build_mixture(cfg, tmp_path / "a")["records_out"] == 80  # 3:1 is limited by reasoning (60)
    assert sources(tmp_path / "a") == {"reasoning": 60, "general": 20}
    cfg = MixtureConfig(components=[{"path": reasoning, "weight": 0.75}, {"path": general, "weight": 0.25}], total=41)
    build_mixture(cfg, tmp_path / "b")
    assert sources(tmp_path / "b") == {"reasoning": 31, "general": 10}


def test_upsample_and_errors(tmp_path):
    general = curated_set(tmp_path, "general", 10)
    with pytest.raises(MixtureError, match="25 samples wanted but .* has 10"):
        build_mixture(MixtureConfig(components=[{"path": general, "count": 25}]), tmp_path / "x")
    build_mixture(MixtureConfig(components=[{"path": general, "count": 25}], allow_upsample=True), tmp_path / "up")
    ids = Counter(r["prompt_id"] for p in (tmp_path / "up").glob("part-*.parquet")
                  for r in pq.read_table(p, columns=["prompt_id"]).to_pylist())
    assert sum(ids.values()) == 25 and len(ids) == 10 and max(ids.values()) == 3
    with pytest.raises(MixtureError, match="no part-"):
        build_mixture(MixtureConfig(components=[{"path": str(tmp_path / "none"), "count": 1}]), tmp_path / "y")
    with pytest.raises(ValueError, match="all use `count`"):
        MixtureConfig(components=[{"path": general, "count": 1}, {"path": general, "weight": 1}])
    with pytest.raises(ValueError, match="not both"):
        MixtureConfig(components=[{"path": general, "count": 1, "weight": 1}])
