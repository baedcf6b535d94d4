"""`phases:` pipelines (factory/phases.py): each phase is the file's keys plus its `set` overrides, run in DIR/<phase>/;
`{phases.NAME}` is an earlier phase's folder; bad references and stages are config errors naming the key, before
anything runs; a reduced real chain (GRPO → SFT of the RL policy) runs end to end and a rerun skips both phases."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from factory.cli import app
from factory.config import ConfigError
from factory.phases import build_phases, run_phases

runner = CliRunner()
BASE = {"name": "chain", "prompts": [{"kind": "arithmetic", "n": 4}],
        "sft": {"student": "embedded", "mode": "lora"}}


def _write(tmp_path: Path, phases, **top) -> Path:
    path = tmp_path / "chain.yaml"
    path.write_text(yaml.safe_dump({**BASE, **top, "phases": phases}, sort_keys=False))
    return path


def test_phases_get_their_stages_overrides_and_earlier_folders(tmp_path):
    path = _write(tmp_path, [
        {"name": "first", "stages": ["generate", "sft"], "set": {"sampling.n": 2, "prompts.0.n": 3}},
        {"name": "second", "stages": ["sft"], "set": {"sft.student": "{phases.first}/sft/model",
                                                      "sft.data": "{phases.first}/curate"}}])
    (first, a, a_dir), (second, b, b_dir) = build_phases(path, tmp_path / "out")
    assert (first, second) == ("first", "second")
    assert a_dir == (tmp_path / "out" / "first").resolve() and b_dir == (tmp_path / "out" / "second").resolve()
    assert a.stages == ["generate", "sft"] and a.sampling.n == 2 and a.prompts[0].n == 3
    assert b.stages == ["sft"] and b.sampling.n == 4 and b.prompts[0].n == 4  # a phase's set stays in that phase
    assert b.sft.student == f"{a_dir}/sft/model" and b.sft.data == f"{a_dir}/curate"


def test_command_line_set_applies_to_every_phase_last(tmp_path):
    path = _write(tmp_path, [{"name": "a", "stages": ["generate"], "set": {"sampling.n": 2}},
                             {"name": "b", "stages": ["generate"]}])
    assert [c.sampling.n for _, c, _ in build_phases(path, tmp_path / "o", ["sampling.n=7"])] == [7, 7]


@pytest.mark.parametrize("phases, message", [
    ([{"name": "a", "stages": ["sft"], "set": {"sft.student": "{phases.nope}/sft/model"}}],
     "phase 'a': sft.student: {phases.nope} names no phase (phases: a)"),
    ([{"name": "a", "stages": ["sft"], "set": {"sft.student": "{phases.b}/sft/model"}},
      {"name": "b", "stages": ["sft"]}],
     "phase 'a': sft.student: {phases.b} refers to phase 'b', which does not run before 'a' (order: a → b)"),
    ([{"name": "a", "stages": ["sft"], "set": {"sft.student": "{phases.a}/sft/model"}}],
     "which does not run before 'a'"),
    ([{"name": "a", "stages": ["generate", "sfft"]}], "phases.0.stages: phase 'a': unknown stage(s) ['sfft']"),
    ([{"name": "a", "stages": ["sft"]}, {"name": "a", "stages": ["sft"]}], "phases.1.name: phase 'a' is defined twice"),
    ([{"name": "../up", "stages": ["sft"]}], "phases.0.name: '../up' is not a folder name"),
    ([{"name": "a", "stages": ["sft"], "sett": {}}], "phases.0: unknown key(s) ['sett']"),
    ([{"name": "a", "stages": []}], "phases.0.stages: expected a non-empty list"),
    ([], "phases: expected a non-empty list"),
    ([{"name": "a", "stages": ["sft"], "set": {"sampling.n": "many"}}],
     "(phase 'a'): sampling.n: Input should be a valid integer"),
])
def test_bad_phases_are_config_errors_naming_the_key(tmp_path, phases, message):
    with pytest.raises(ConfigError) as err:
        build_phases(_write(tmp_path, phases), tmp_path / "out")
    assert message in str(err.value) and str(tmp_path / "chain.yaml") in str(err.value)


def test_cli_refuses_a_bad_later_phase_before_running_any(tmp_path):
    path = _write(tmp_path, [{"name": "a", "stages": ["generate"]},
                             {"name": "b", "stages": ["sft"], "set": {"sft.student": "{phases.c}/x"}}])
    result = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "{phases.c} names no phase" in result.output
    assert not (tmp_path / "out").exists()  # nothing ran, nothing was written
    result = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "out"), "--stages", "generate"])
    assert result.exit_code == 2 and "--stages: not supported" in result.output


def test_the_shipped_r1_pipeline_validates(repo, tmp_path):
    built = {name: (cfg, folder) for name, cfg, folder in build_phases(repo / "pipelines" / "r1.yaml", tmp_path)}
    assert list(built) == ["cold_start", "rl", "distill"]
    (cold, cold_dir), (rl, rl_dir), (distill, _) = built["cold_start"], built["rl"], built["distill"]
    assert cold.stages == ["generate", "verify", "curate", "sft"] and cold.sft.student == "embedded"
    assert rl.stages == ["grpo"] and rl.grpo.policy == f"{cold_dir}/sft/model" and "language" in rl.grpo.rewards
    assert distill.teacher.model == f"{rl_dir}/grpo/model" and distill.sft.student == "embedded"
    assert [m.path for m in distill.eval.models] == ["embedded", f"{cold_dir}/sft/model", f"{rl_dir}/grpo/model",
                                                     "sft/model"]


@pytest.mark.slow
def test_a_reduced_chain_runs_end_to_end_and_a_rerun_skips_it(tmp_path):
    """GRPO of a tiny random policy (1 step), then SFT of the RL checkpoint: real stages, real placeholders."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "grpo"))
    import torch
    from _policy import build_policy, pipeline_tree

    from factory.train.testing import math_conversations

    policy = build_policy(tmp_path / "tiny-llama")
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"messages": c}) + "\n" for c in math_conversations(4, seed=2)))
    tree = pipeline_tree(policy, steps=1, rewards={"accuracy": 1.0, "format": 1.0})
    sft = {"student": "embedded", "data": str(data), "mode": "full", "epochs": 1, "global_batch_size": 2,
           "max_length": 200, "micro_batch_tokens": 400, "warmup_ratio": 0.0, "save_every_steps": 0,
           "gradient_checkpointing": False, "progress": False}
    path = _write(tmp_path, [{"name": "rl", "stages": ["grpo"]},
                             {"name": "sft", "stages": ["sft"], "set": {"sft.student": "{phases.rl}/grpo/model"}}],
                  prompts=tree["prompts"], grpo=tree["grpo"], sft=sft)
    out = tmp_path / "out"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_phases(path, out)
        model = out / "sft" / "sft" / "model"
        assert (out / "rl" / "grpo" / "model" / "config.json").exists() and (model / "config.json").exists()
        log = (out / "rl" / "grpo" / "train_log.jsonl").read_text().splitlines()
        assert len(log) == 1
        manifest = json.loads((out / "sft" / "sft" / "manifest.json").read_text())
        assert str(out / "rl" / "grpo" / "model") in json.dumps(manifest)  # SFT started from the RL checkpoint
        summary = json.loads((out / "phases.json").read_text())
        assert list(summary) == ["rl", "sft"] and summary["sft"]["stages"] == ["sft"]
        stamps = {p: p.stat().st_mtime_ns for p in (model / "config.json", out / "rl" / "grpo" / "train_log.jsonl")}
        run_phases(path, out)  # resume: both phases are finished, nothing is trained again
        assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
        assert (out / "rl" / "grpo" / "train_log.jsonl").read_text().splitlines() == log
    finally:
        torch.set_num_threads(before)
