"""`factory eval` shows progress like the other stages: one shared `stage_progress` bar over model × benchmark
pairs, advanced with the rows and tokens of each pair (a teacher that records requests stands in for the engine)."""
from __future__ import annotations

from contextlib import contextmanager

from _fake_teacher import RecordingTeacher

import factory.eval.stage as eval_stage
from factory.config import PipelineConfig
from factory.core.progress import StageProgress


def test_eval_advances_a_stage_progress_bar_per_pair(tmp_path, monkeypatch):
    bars: list[dict] = []

    @contextmanager
    def recording_progress(name, total_units, done_units=0, unit_label="shards"):
        progress = StageProgress(None, None, done_units)
        bars.append({"name": name, "total": total_units, "done": done_units, "progress": progress})
        yield progress

    monkeypatch.setattr(eval_stage, "stage_progress", recording_progress)
    heldout = {"kind": "arithmetic", "n": 3, "seed": 1, "split": "heldout"}
    cfg = PipelineConfig.model_validate({
        "prompts": [{"kind": "arithmetic", "n": 1}], "template": {"kind": "r1_zero"},
        "eval": {"models": [{"name": "a", "path": "embedded"}, {"name": "b", "path": "embedded"}],
                 "benchmarks": [{"name": "h1", "source": heldout}, {"name": "h2", "source": {**heldout, "seed": 2}}],
                 "k": 2, "max_tokens": 16}})
    teachers = {"a": RecordingTeacher(), "b": RecordingTeacher()}
    eval_stage.run_eval(cfg, tmp_path, teachers=teachers)
    (bar,) = bars
    assert (bar["name"], bar["total"], bar["done"]) == ("eval", 4, 0)
    assert (bar["progress"].units, bar["progress"].rows, bar["progress"].tokens) == (4, 4 * 3 * 2, 4 * 3 * 2 * 5)
    eval_stage.run_eval(cfg, tmp_path, teachers=teachers)  # a finished eval starts its bar full
    assert (bars[-1]["total"], bars[-1]["done"], bars[-1]["progress"].rows) == (4, 4, 0)
