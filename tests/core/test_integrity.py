"""Run-folder integrity across stages, on real shards (generate with a scripted teacher, the real verify and curate):
a stage reads only its declared, finished input; a re-run upstream stage is detected downstream and named; a
changed plan or config is named key by key; a failed start leaves nothing behind; a torn ledger line is repaired."""
from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

import pytest

from factory.config import PipelineConfig
from factory.core.identity import UpstreamNotReady
from factory.core.schema import load_schema
from factory.core.shards import ShardResult, StageConfigChanged, StageDir, iter_stage_rows
from factory.curate.stage import run_curate
from factory.generate.sources import load_prompts
from factory.generate.stage import run_generate
from factory.generate.teachers import GenRequest, GenResult, GenSample, TeacherError
from factory.pipeline import run_pipeline
from factory.verify.stage import run_verify


class AnswerTeacher:
    """k samples per prompt: the first `correct` give the prompt's answer, the rest a wrong one."""

    model_id = "answer-teacher"

    def __init__(self, answers: dict[str, str], correct: int = 2, style: str = "So"):
        self.answers, self.correct, self.style = answers, correct, style

    def tokenizer(self):
        return None

    def generate(self, requests: Iterable[GenRequest], sampling) -> Iterator[GenResult]:
        for req in requests:
            answer = int(self.answers[req.key])
            texts = [f"{self.style} we add.\n</think>\n\nThe answer is \\boxed{{{answer + (i >= self.correct)}}}."
                     for i in range(sampling.n)]
            yield GenResult(key=req.key, samples=[GenSample(text=t, finish_reason="stop", completion_tokens=7)
                                                  for t in texts], prompt_tokens=9, latency_s=0.0)

    def close(self) -> None:
        pass


def pipeline(**over) -> PipelineConfig:
    body = {"name": "t", "stages": ["generate", "verify", "curate"],
            "prompts": [{"kind": "arithmetic", "n": 6, "seed": 3}],
            "template": {"kind": "jinja", "jinja": "{{ problem }}", "prefill": "<think>\n"},
            "sampling": {"n": 3, "max_tokens": 16}, "generate": {"shard_size": 2},
            "curate": {"language": {"enabled": False}, "decontam": {"enabled": False}, "dedupe": {"enabled": False}}}
    for key, value in over.items():
        node = body
        *path, last = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return PipelineConfig.model_validate(body)


def teacher(cfg: PipelineConfig, **kw) -> AnswerTeacher:
    return AnswerTeacher({p["prompt_id"]: p["answer"] for p in load_prompts(cfg.prompts)}, **kw)


def kept(run) -> list[tuple]:
    return sorted((r["prompt_id"], r["sample_idx"]) for r in iter_stage_rows(run / "curate", "curated"))


def test_curate_refuses_an_unverified_or_unfinished_input_and_a_failed_start_leaves_nothing(tmp_path):
    cfg = pipeline()
    run_generate(cfg, tmp_path, teacher=teacher(cfg))
    with pytest.raises(UpstreamNotReady, match=r"curate reads verify/, but verify has not run yet"):
        run_curate(cfg, tmp_path)  # never falls back to the unverified generate/
    verify = StageDir(tmp_path / "verify", "verify", load_schema("verdict"))  # verify stopped after one part
    verify.prepare("fp", {}, {})
    rows = [r for r in iter_stage_rows(tmp_path / "generate", "trace")][:3]
    from factory.verify.stage import verify_unit

    verify.commit_result(0, verify_unit(rows, cfg.verify))
    verify.release()
    with pytest.raises(UpstreamNotReady, match=r"verify has not finished: it stopped part-way \(1 part\(s\) committed"):
        run_curate(cfg, tmp_path)
    assert not (tmp_path / "curate").exists()  # no manifest, no empty folder
    run_verify(cfg, tmp_path, new_run=True)
    counts = run_curate(cfg, tmp_path)  # not refused as "changed": the failed start recorded nothing
    assert counts["records_in"] == 18 and len(kept(tmp_path)) == 12


def test_a_failed_teacher_start_leaves_no_folder(tmp_path):
    cfg = pipeline(teacher={"backend": "openai", "model": "m", "base_url": "http://127.0.0.1:9/v1",
                            "api": "completions"})
    with pytest.raises(TeacherError):
        run_generate(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_verify_detects_a_regenerated_input_of_the_same_configuration(tmp_path):
    cfg = pipeline()
    run_generate(cfg, tmp_path, teacher=teacher(cfg))
    run_verify(cfg, tmp_path)
    run_generate(cfg, tmp_path, new_run=True, teacher=teacher(cfg, style="Thus"))  # other texts, same config
    with pytest.raises(StageConfigChanged, match=r"input: generate was re-run with the same configuration and "
                                                 r"holds other records \(parts digest") as info:
        run_verify(cfg, tmp_path)
    assert info.value.input_changed and not info.value.config_changed
    run_verify(cfg, tmp_path, new_run=True)
    assert all(r["completion"].startswith("<think>\nThus") for r in iter_stage_rows(tmp_path / "verify", "verdict"))


def test_curate_detects_a_re_run_verify_and_factory_run_invalidates_it_explicitly(tmp_path, capsys):
    cfg = pipeline()
    run_generate(cfg, tmp_path, teacher=teacher(cfg))
    run_verify(cfg, tmp_path)
    run_curate(cfg, tmp_path)
    assert len(kept(tmp_path)) == 12  # all correct: 2 of 3 per prompt
    other = pipeline(**{"verify.select.policy": "at_most_m"})
    run_verify(other, tmp_path, new_run=True)
    with pytest.raises(StageConfigChanged, match=r"input: verify was re-run \(fingerprint \w+… → \w+…\)"):
        run_curate(other, tmp_path)
    assert len(kept(tmp_path)) == 12  # the refused run changed nothing
    run_pipeline(other.model_copy(update={"stages": ["verify", "curate"]}), tmp_path)
    assert "curate: its input changed since it ran (input: verify was re-run" in capsys.readouterr().err
    assert len(kept(tmp_path)) == 6  # at most one correct sample per prompt


def test_changes_are_named_key_by_key(tmp_path):
    cfg = pipeline()
    run_generate(cfg, tmp_path, teacher=teacher(cfg))
    with pytest.raises(StageConfigChanged, match=r"changed: plan: shard_size 2 → 3\)"):
        run_generate(pipeline(**{"generate.shard_size": 3}), tmp_path, teacher=teacher(cfg))
    with pytest.raises(StageConfigChanged, match=r"sampling\.temperature: 0\.6 → 0\.9"):
        run_generate(pipeline(**{"sampling.temperature": 0.9}), tmp_path, teacher=teacher(cfg))
    run_verify(cfg, tmp_path)
    with pytest.raises(StageConfigChanged, match=r"verify\.select\.policy: all_correct → shortest_correct"):
        run_verify(pipeline(**{"verify.select.policy": "shortest_correct"}), tmp_path)


def test_a_torn_last_ledger_line_is_repaired_before_the_next_append(tmp_path):
    from test_shards import trace_row

    stage = StageDir(tmp_path / "s", "s", load_schema("trace"))
    stage.prepare("fp", {}, {})
    for u in range(2):
        stage.commit_result(u, ShardResult(rows=[trace_row(f"p{u}", 0)]))
    stage.release()
    text = stage.ledger_path.read_text()
    stage.ledger_path.write_text(text + '{"unit": 2, "part": "part-0')  # killed while writing unit 2's line
    again = StageDir(tmp_path / "s", "s", load_schema("trace"))
    again.prepare("fp", {}, {})
    again.commit_result(2, ShardResult(rows=[trace_row("p2", 0)]))
    lines = again.ledger_path.read_text().splitlines()
    assert [json.loads(line)["unit"] for line in lines] == [0, 1, 2]  # every line whole, none glued
    assert again.finalize(records_in=3)["records_out"] == 3
