"""`factory mix` as a stage: exact counts and ratios, seeded determinism, lineage, bad input, atomic reruns."""
from collections import Counter

import pyarrow.parquet as pq
import pytest
from _mix_data import components, read_mix, write_run
from pydantic import ValidationError

from factory.core.schema import load_schema
from factory.core.shards import StageConfigChanged
from factory.curate.mixture import MixtureError
from factory.mix.config import MixConfig
from factory.mix.stage import mix_stage


def _cfg(*sources, **kw) -> MixConfig:
    return MixConfig(sources=list(sources), **kw)


@pytest.fixture
def runs(tmp_path):
    return {"reasoning": write_run(tmp_path / "r1-math", "numina", 60, shards=3),
            "general": write_run(tmp_path / "chat", "alpaca", 30, domains=("general",))}


def test_exact_counts_every_shard_at_the_ratio(tmp_path, runs):
    cfg = _cfg({"name": "reasoning", "path": str(runs["reasoning"]), "count": 45},
               {"name": "general", "path": str(runs["general"]), "count": 15}, shard_rows=20)
    counts = mix_stage(cfg, tmp_path / "out" / "mix")
    assert counts["records_out"] == 60 and counts["units"] == 3
    assert components(tmp_path / "out" / "mix") == {"reasoning": 45, "general": 15}
    for part in sorted((tmp_path / "out" / "mix").glob("part-*.parquet")):
        assert Counter(pq.read_table(part, columns=["mix_component"]).column(0).to_pylist()) == \
            {"reasoning": 15, "general": 5}
    rows = read_mix(tmp_path / "out" / "mix", ["prompt_id"])
    assert len({r["prompt_id"] for r in rows}) == 60  # drawn without replacement
    meta = pq.read_schema(tmp_path / "out" / "mix" / "part-00000.parquet").metadata
    assert meta[b"factory.schema"] == b"mixed"


def test_exact_ratios_and_the_largest_total(tmp_path, runs):
    cfg = _cfg({"name": "reasoning", "path": str(runs["reasoning"]), "ratio": 0.75},
               {"name": "general", "path": str(runs["general"]), "ratio": 0.25}, total=41)
    mix_stage(cfg, tmp_path / "a")
    assert components(tmp_path / "a") == {"reasoning": 31, "general": 10}
    cfg = _cfg({"name": "reasoning", "path": str(runs["reasoning"]), "ratio": 0.6},
               {"name": "general", "path": str(runs["general"]), "ratio": 0.4})
    mix_stage(cfg, tmp_path / "b")  # without total: 0.4 of the mixture is all 30 general rows -> 75
    assert components(tmp_path / "b") == {"reasoning": 45, "general": 30}


def test_ratios_must_sum_to_one_and_targets_agree(runs):
    with pytest.raises(ValidationError, match=r"ratios sum to 0.9, not 1 \(0.6 \+ 0.3\)"):
        _cfg({"path": str(runs["reasoning"]), "ratio": 0.6}, {"path": str(runs["general"]), "ratio": 0.3})
    with pytest.raises(ValidationError, match="same target"):
        _cfg({"path": str(runs["reasoning"]), "ratio": 0.5}, {"path": str(runs["general"]), "count": 3})
    with pytest.raises(ValidationError, match="one of count, ratio, weight"):
        _cfg({"path": str(runs["reasoning"]), "ratio": 1.0, "count": 3})
    with pytest.raises(ValidationError, match="`total` applies only"):
        _cfg({"path": str(runs["reasoning"]), "count": 3}, total=10)


def test_same_seed_same_rows_other_seed_other_rows(tmp_path, runs):
    def build(seed, out):
        mix_stage(_cfg({"name": "r", "path": str(runs["reasoning"]), "count": 20},
                       {"name": "g", "path": str(runs["general"]), "count": 10}, seed=seed), tmp_path / out)
        return [(r["mix_component"], r["prompt_id"]) for r in read_mix(tmp_path / out, ["mix_component", "prompt_id"])]

    a, b, c = build(7, "a"), build(7, "b"), build(8, "c")
    assert a == b  # same rows, same order
    assert set(a) != set(c) and len(c) == 30


def test_lineage_names_run_source_file_and_row(tmp_path, runs):
    cfg = _cfg({"path": str(runs["reasoning"]), "count": 12}, {"path": str(runs["general"].parent), "count": 5})
    mix_stage(cfg, tmp_path / "m")
    rows = read_mix(tmp_path / "m")
    assert {r["mix_run"] for r in rows} == {"r1-math", "chat"}  # names default to the run folders
    assert {r["mix_component"] for r in rows} == {"r1-math", "chat"}
    for r in rows:  # mix_file + mix_row point at the exact source row
        assert r["mix_path"] in (str(runs["reasoning"]), str(runs["general"]))
        src = pq.read_table(f"{r['mix_path']}/{r['mix_file']}").slice(r["mix_row"], 1).to_pylist()[0]
        assert src["prompt_id"] == r["prompt_id"] and src["messages"] == r["messages"]


def test_domains_pick_the_tracks_of_one_run(tmp_path):
    run = write_run(tmp_path / "both", "mixed-src", 40, domains=("math", "math", "math", "general"))  # 30 + 10
    cfg = _cfg({"name": "reasoning", "path": str(run), "domains": ["math"], "count": 24},
               {"name": "general", "path": str(run), "domains": ["general"], "count": 8})
    mix_stage(cfg, tmp_path / "m")
    rows = read_mix(tmp_path / "m", ["mix_component", "domain"])
    assert Counter((r["mix_component"], r["domain"]) for r in rows) == {("reasoning", "math"): 24,
                                                                         ("general", "general"): 8}
    with pytest.raises(MixtureError, match=r"general\): 11 samples wanted but .*domains general.* has 10"):
        mix_stage(_cfg({"name": "general", "path": str(run), "domains": ["general"], "count": 11}), tmp_path / "x")
    # any string column: the non-reasoning track of the same run, by `where`
    cfg = _cfg({"name": "chat", "path": str(run), "where": {"track": ["non_reasoning"]}, "count": 10})
    mix_stage(cfg, tmp_path / "t")
    assert {r["track"] for r in read_mix(tmp_path / "t", ["track"])} == {"non_reasoning"}
    with pytest.raises(MixtureError, match=r"part-00000.parquet: no column nope to filter on"):
        mix_stage(_cfg({"path": str(run), "where": {"nope": ["x"]}, "count": 1}), tmp_path / "y")


def test_too_many_samples_names_the_source_and_writes_nothing(tmp_path, runs):
    cfg = _cfg({"name": "reasoning", "path": str(runs["reasoning"]), "count": 10},
               {"name": "general", "path": str(runs["general"]), "count": 31})
    with pytest.raises(MixtureError, match=r"mix.sources\[1\] \(general\): 31 samples wanted but .*chat/curate "
                                           r"has 30"):
        mix_stage(cfg, tmp_path / "out" / "mix")
    assert not (tmp_path / "out").exists()
    cfg = _cfg({"path": str(runs["general"]), "count": 31}, allow_upsample=True)
    mix_stage(cfg, tmp_path / "up")
    ids = Counter(r["prompt_id"] for r in read_mix(tmp_path / "up", ["prompt_id"]))
    assert sum(ids.values()) == 31 and len(ids) == 30 and max(ids.values()) == 2


def test_unknown_or_empty_sources(tmp_path, runs):
    with pytest.raises(MixtureError, match=r"mix.sources\[0\]: .*nowhere: no such file or folder"):
        mix_stage(_cfg({"path": str(tmp_path / "nowhere"), "count": 1}), tmp_path / "m")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MixtureError, match="no part-.*parquet shards"):
        mix_stage(_cfg({"path": str(tmp_path / "empty"), "count": 1}), tmp_path / "m")
    with pytest.raises(MixtureError, match="names must be unique"):
        mix_stage(_cfg({"path": str(runs["general"]), "count": 1}, {"path": str(runs["general"]), "count": 1}),
                  tmp_path / "m")
    with pytest.raises(MixtureError, match=r"mix.sources\[0\]: no `path`"):
        mix_stage(_cfg({"count": 1}), tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_rerun_is_a_no_op_and_a_changed_config_is_refused(tmp_path, runs):
    cfg = _cfg({"path": str(runs["reasoning"]), "count": 10}, {"path": str(runs["general"]), "count": 5})
    out = tmp_path / "run" / "mix"
    first = mix_stage(cfg, out)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert mix_stage(cfg, out) == {**first, "up_to_date": True}
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps  # nothing rewritten
    changed = _cfg({"path": str(runs["reasoning"]), "count": 12}, {"path": str(runs["general"]), "count": 5})
    with pytest.raises(StageConfigChanged, match=r"changed: config.sources.0.count\).*--new-run"):
        mix_stage(changed, out)
    with pytest.raises(StageConfigChanged, match="changed: config.seed"):
        mix_stage(_cfg(*cfg.sources, seed=1), out)
    assert mix_stage(changed, out, new_run=True)["records_out"] == 17
    assert len(read_mix(out, ["prompt_id"])) == 17
    assert sorted(p.name for p in out.parent.iterdir()) == ["mix"]  # no temp or old folders left
    write_run(tmp_path / "r1-math", "numina", 61, shards=3)  # the input changed under the mixture
    with pytest.raises(StageConfigChanged, match="changed: input"):
        mix_stage(changed, out)


def test_mixed_schema_is_curated_plus_lineage_and_card_section(tmp_path, runs):
    curated, mixed = load_schema("curated").arrow, load_schema("mixed").arrow
    assert [(f.name, f.type) for f in curated] == [(f.name, f.type) for f in mixed][: len(curated)]
    assert mixed.names[len(curated):] == ["mix_component", "mix_run", "mix_path", "mix_file", "mix_row"]
    mix_stage(_cfg({"name": "reasoning", "path": str(runs["reasoning"]), "ratio": 0.75},
                   {"name": "general", "path": str(runs["general"]), "ratio": 0.25}, total=40, seed=3), tmp_path / "m")
    card = (tmp_path / "m" / "card.md").read_text()
    assert card.startswith("## Mixture\n") and "seed 3" in card
    assert "| reasoning | r1-math |" in card and "| general | chat | `" in card and "| 60 | 30 | 75.00% | 0 |" in card
    assert "| general | chat |" in card and "| 30 | 10 | 25.00% | 0 |" in card


def test_a_build_cut_short_leaves_nothing_and_the_rerun_cleans_up(tmp_path, runs, monkeypatch):
    import factory.mix.stage as stage

    cfg = _cfg({"path": str(runs["reasoning"]), "count": 30}, shard_rows=10)
    out = tmp_path / "run" / "mix"
    real, calls = stage.write_table_atomic, []

    def crash_on_second_shard(path, table):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        real(path, table)

    monkeypatch.setattr(stage, "write_table_atomic", crash_on_second_shard)
    with pytest.raises(OSError, match="disk full"):
        mix_stage(cfg, out)
    assert not out.parent.exists()  # no half mixture, no temp folder: the run folder this start made is gone too
    monkeypatch.setattr(stage, "write_table_atomic", real)
    (out.parent / ".mix.tmp-99999").mkdir(parents=True)  # what kill -9 during a build leaves behind
    (out.parent / ".mix.tmp-99999" / "part-00000.parquet").write_bytes(b"torn")
    assert mix_stage(cfg, out)["records_out"] == 30
    assert sorted(p.name for p in out.parent.iterdir()) == ["mix"] and len(read_mix(out, ["prompt_id"])) == 30
