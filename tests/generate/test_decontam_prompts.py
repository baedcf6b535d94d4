"""Decontamination before generation: a verbatim GSM8K / MATH-500 test problem in the prompt set is dropped before
any request is sent, recorded with the benchmark item it matched and counted; by default against the pipeline's own
eval benchmarks. Curate checks the samples against the same benchmarks and reports matches before and after
selection. Benchmark data is read from the shared folder (`benchmarks_dir`), never copied."""
from __future__ import annotations

import json

from _fake_teacher import RecordingTeacher

from factory.config import PipelineConfig, load_pipeline
from factory.core.jsonl import iter_jsonl
from factory.curate.decontam_plan import pipeline_decontam
from factory.curate.stage import run_curate
from factory.generate.preview import build_preview, format_preview, load_tokenizer
from factory.generate.stage import run_generate

OWN = ["Zorblax keeps 3 glimmerstones and finds 4 more glimmerstones. How many glimmerstones does Zorblax keep?",
       "What is the sum of seventeen quibbles and five quibbles, counted in quibbles?"]


def _first(path, key="problem") -> dict:
    return next(row for _, row in iter_jsonl(path, ValueError))


def _prompts_file(tmp_path, benchmarks_dir):
    gsm, math = _first(benchmarks_dir / "gsm8k.jsonl"), _first(benchmarks_dir / "math500.jsonl")
    rows = [{"prompt_id": f"own-{i}", "problem": p, "answer": "7"} for i, p in enumerate(OWN)]
    rows += [{"prompt_id": "copied-gsm8k", "problem": gsm["problem"], "answer": gsm["answer"]},
             {"prompt_id": "copied-math500", "problem": "  " + math["problem"].upper() + " ", "answer": math["answer"]}]
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, gsm["id"], math["id"]


def pipeline(tmp_path, benchmarks_dir, **decontam) -> PipelineConfig:
    path, _, _ = _prompts_file(tmp_path, benchmarks_dir)
    return PipelineConfig.model_validate({
        "name": "t", "prompts": [{"kind": "jsonl", "path": str(path)}], "template": {"kind": "r1_zero"},
        "sampling": {"n": 2, "max_tokens": 16}, "generate": {"shard_size": 2},
        "curate": {"decontam": decontam, "language": {"enabled": False}},
        "eval": {"models": [{"name": "m", "path": "embedded"}],
                 "benchmarks": [{"name": "gsm8k", "path": str(benchmarks_dir / "gsm8k.jsonl")},
                                {"name": "math500", "path": str(benchmarks_dir / "math500.jsonl")}]}})


def test_benchmark_problems_are_dropped_before_generation_and_reported(tmp_path, benchmarks_dir):
    _, gsm_id, math_id = _prompts_file(tmp_path, benchmarks_dir)
    cfg = pipeline(tmp_path, benchmarks_dir)
    teacher = RecordingTeacher()
    counts = run_generate(cfg, tmp_path / "run", teacher=teacher)
    assert sorted(r.key for r in teacher.requests) == ["own-0", "own-1"]  # never sent to the teacher

    report = json.loads((tmp_path / "run" / "generate" / "decontam.json").read_text())
    assert report["prompts_in"] == 4 and report["prompts_removed"] == 2
    assert {(d["prompt_id"], d["benchmark"], d["matched"]) for d in report["dropped"]} == {
        ("copied-gsm8k", "gsm8k", gsm_id), ("copied-math500", "math500", math_id)}
    assert report["benchmarks"]["gsm8k"] == {"problems": 1319, "prompts_removed": 1}
    assert counts == json.loads((tmp_path / "run" / "generate" / "counts.json").read_text())
    assert counts["records_in"] == 4 and counts["records_out"] == 4
    assert counts["dropped"] == {"decontam:benchmark:gsm8k": 1, "decontam:benchmark:math500": 1}
    assert counts["extra"]["decontam"] == {"file": "decontam.json", "prompts_removed": 2,
                                           "benchmarks": {"gsm8k": 1, "math500": 1}}
    # a resume sends nothing more and reports the same
    assert run_generate(cfg, tmp_path / "run", teacher=teacher)["dropped"] == counts["dropped"]
    assert len(teacher.requests) == 2

    preview = build_preview(cfg, n=5)
    assert [p.prompt_id for p in preview.prompts] == ["own-0", "own-1"] and preview.plan["prompts"] == 2
    assert "2 prompts dropped before generation (gsm8k 1, math500 1)" in format_preview(preview)


def test_listed_benchmarks_and_switches(tmp_path, benchmarks_dir):
    listed = {"benchmarks": [{"path": str(benchmarks_dir / "gsm8k.jsonl")}], "eval_benchmarks": False}
    cfg = pipeline(tmp_path, benchmarks_dir, **listed)
    assert [b.path for b in pipeline_decontam(cfg).benchmarks] == [str(benchmarks_dir / "gsm8k.jsonl")]
    teacher = RecordingTeacher()
    run_generate(cfg, tmp_path / "a", teacher=teacher)
    assert sorted(r.key for r in teacher.requests) == ["copied-math500", "own-0", "own-1"]
    # a benchmark both listed and in the eval block is indexed once
    both = pipeline(tmp_path, benchmarks_dir, benchmarks=[{"path": str(benchmarks_dir)}])
    assert len(pipeline_decontam(both).benchmarks) == 1
    off = pipeline(tmp_path, benchmarks_dir, prompts=False)
    teacher = RecordingTeacher()
    counts = run_generate(off, tmp_path / "b", teacher=teacher)
    assert len(teacher.requests) == 4 and counts["dropped"] == {} and counts["extra"]["decontam"] is None
    assert not (tmp_path / "b" / "generate" / "decontam.json").exists()


def test_curate_drops_contaminated_samples_and_reports_before_and_after_selection(tmp_path, benchmarks_dir):
    cfg = pipeline(tmp_path, benchmarks_dir, prompts=False)  # let the copies through generation
    run_generate(cfg, tmp_path, teacher=RecordingTeacher())
    counts = run_curate(cfg, tmp_path)
    funnel = json.loads((tmp_path / "curate" / "funnel.json").read_text())
    step = next(f for f in funnel["filters"] if f["name"] == "decontam")
    assert step["skipped"] is None and step["dropped"] == {"benchmark:gsm8k": 2, "benchmark:math500": 2}
    gsm = funnel["decontam"]["benchmarks"]["gsm8k"]
    assert gsm["before_selection"] == gsm["after_selection"] == {"samples": 2, "prompts": 1}
    assert (gsm["samples_removed"], gsm["prompts_removed"]) == (2, 1)
    assert counts["dropped"]["decontam:benchmark:math500"] == 2


def test_the_demo_is_decontaminated_against_its_held_out_split(tmp_path, repo, embedded_dir):
    cfg = load_pipeline(repo / "pipelines" / "demo.yaml", ["prompts.0.n=8", "generate.shard_size=4",
                                                           "curate.language.enabled=false",
                                                           "stages=[generate,curate]"])  # curate reads generate/
    specs = pipeline_decontam(cfg).benchmarks
    assert [(b.name, b.match) for b in specs] == [("arithmetic-heldout", "exact")]  # whole problems: templated
    teacher = RecordingTeacher(load_tokenizer(str(embedded_dir)))
    counts = run_generate(cfg, tmp_path, teacher=teacher)
    assert len(teacher.requests) == 8 and counts["extra"]["decontam"]["benchmarks"] == {"arithmetic-heldout": 0}
    run_curate(cfg, tmp_path)
    funnel = json.loads((tmp_path / "curate" / "funnel.json").read_text())
    step = next(f for f in funnel["filters"] if f["name"] == "decontam")
    assert step["skipped"] is None  # not "no benchmarks configured"
    assert funnel["decontam"]["benchmarks"]["arithmetic-heldout"]["before_selection"] == {"samples": 0, "prompts": 0}
    # the held-out split itself as prompts would be caught in full
    leaked = load_pipeline(repo / "pipelines" / "demo.yaml", ["prompts.0.split=heldout", "prompts.0.seed=1",
                                                              "prompts.0.n=60"])
    assert build_preview(leaked, n=0).plan["prompts"] == 0
