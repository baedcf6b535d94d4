"""CLI and config conventions: -h and --version, flags shown as flags, publish's dry run without a repo id, YAML 1.2
booleans, non-UTF-8 pipelines, paths relative to the YAML file, and timings.json across resumes."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from factory.cli import app
from factory.config import ConfigError, load_pipeline

BASE = "name: t\nprompts:\n  - {kind: arithmetic, n: 4}\n"
runner = CliRunner()


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def test_top_level_help_and_version():
    for flag in ("-h", "--help"):
        result = runner.invoke(app, [flag])
        assert result.exit_code == 0, result.output
        assert "Commands:" in result.output and "generate" in result.output and "--version" in result.output
    result = runner.invoke(app, ["--version"])
    from importlib.metadata import version

    assert result.exit_code == 0 and result.output.strip() == f"factory {version('factory')}"


def test_boolean_flags_show_as_flags_in_help():
    for command in (["run", "-h"], ["generate", "-h"], ["publish", "-h"]):
        result = runner.invoke(app, command, env={"COLUMNS": "160"})
        assert result.exit_code == 0, result.output
        assert "<bool>" not in result.output, result.output
    assert "--new-run " in runner.invoke(app, ["run", "-h"]).output
    publish_help = runner.invoke(app, ["publish", "-h"]).output
    assert "--dry-run " in publish_help and "--private / --public" in publish_help
    assert "--config <path>" in publish_help  # options that take a value still say what they take


def test_publish_dry_run_without_repo_id_prints_a_plan(tmp_path, monkeypatch):
    from publish_fixtures import make_run, use_fixture_schemas

    use_fixture_schemas(monkeypatch, tmp_path)
    run = make_run(tmp_path / "run")
    pipeline = _write(tmp_path / "p.yaml", BASE)
    result = runner.invoke(app, ["publish", "-c", str(pipeline), "-o", str(run), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "placeholder ORG/NAME" in result.output and "Dry run: nothing was uploaded." in result.output
    manifest = json.loads((run / "publish" / "manifest.json").read_text())
    assert manifest["repo_id"] == "ORG/NAME" and manifest["dry_run"] is True
    # a real upload still demands a repo id
    result = runner.invoke(app, ["publish", "-c", str(pipeline), "-o", str(run)])
    assert result.exit_code == 1 and "no repo id given" in result.output


def test_yaml_off_on_yes_no_stay_strings(tmp_path):
    cfg = load_pipeline(_write(tmp_path / "p.yaml", BASE + "curate:\n  selection: {mode: off}\n"))
    assert cfg.curate.selection.mode == "off"
    cfg = load_pipeline(_write(tmp_path / "p.yaml", BASE), ["curate.selection.mode=off"])
    assert cfg.curate.selection.mode == "off"
    # true/false are still booleans, and bool fields still take on/off
    cfg = load_pipeline(_write(tmp_path / "p.yaml", BASE + "curate:\n  truncation: {enabled: false}\n"
                                                           "  language: {enabled: off}\n"))
    assert cfg.curate.truncation.enabled is False and cfg.curate.language.enabled is False
    result = runner.invoke(app, ["generate", "-c", str(_write(tmp_path / "q.yaml", BASE + "curate:\n  selection:\n"
                                                                                  "    mode: no\n"))])
    assert "selection.mode" in result.output  # a string that is not an allowed mode: a normal config error


def test_non_utf8_pipeline_is_a_one_line_error(tmp_path):
    path = _write(tmp_path / "latin1.yaml", BASE.encode() + b"# caf\xe9\n")
    with pytest.raises(ConfigError) as err:
        load_pipeline(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and f"byte offset {len(BASE) + 5}" in message
    result = runner.invoke(app, ["generate", "-c", str(path)])
    assert result.exit_code == 2 and f"byte offset {len(BASE) + 5}" in result.output


def test_relative_paths_resolve_against_the_yaml_folder(tmp_path, monkeypatch):
    folder = tmp_path / "pipes"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _write(folder / "tmpl.j2", "{{ problem }}")
    text = f"""
prompts:
  - {{kind: jsonl, path: data/math.jsonl}}
  - {{kind: parquet, path: {tmp_path / 'abs.parquet'}}}
  - {{kind: hub, dataset: AI-MO/NuminaMath-1.5}}
  - {{kind: hub, dataset: json, data_files: [more/a.jsonl]}}
template: {{kind: jinja, jinja_file: tmpl.j2}}
teacher: {{model: deepseek-ai/DeepSeek-R1-Distill-Qwen-7B}}
sft: {{student: embedded, data: ../sft/data.parquet}}
curate:
  decontam: {{benchmarks: [{{path: bench/*.jsonl}}, {{dataset: HuggingFaceH4/MATH-500}}]}}
eval:
  models: [{{name: student, path: sft/model}}]
  benchmarks:
    - {{name: local, path: bench/gsm8k.jsonl}}
    - {{name: hub, path: HuggingFaceH4/aime_2024}}
    - {{name: gen, source: {{kind: jsonl, path: held/out.jsonl}}}}
"""
    pipeline = _write(folder / "p.yaml", text)
    monkeypatch.chdir(elsewhere)
    cfg = load_pipeline(Path("..") / "pipes" / "p.yaml", ["prompts.1.path=cli.parquet"])
    base = folder.resolve()
    assert cfg.prompts[0].path == base / "data" / "math.jsonl"
    assert cfg.prompts[1].path == Path("cli.parquet")  # a --set value stays relative to the current folder
    assert cfg.prompts[2].dataset == "AI-MO/NuminaMath-1.5" and cfg.prompts[3].dataset == "json"
    assert cfg.prompts[3].data_files == [str(base / "more" / "a.jsonl")]
    assert cfg.template.jinja_file == base / "tmpl.j2"
    assert cfg.teacher.model == "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"
    assert cfg.sft.data == str(tmp_path.resolve() / "sft" / "data.parquet") and cfg.sft.student == "embedded"
    assert cfg.curate.decontam.benchmarks[0].path == str(base / "bench" / "*.jsonl")
    assert cfg.curate.decontam.benchmarks[1].dataset == "HuggingFaceH4/MATH-500"
    assert cfg.eval.models[0].path == "sft/model"  # relative to the run folder, as before
    assert cfg.eval.benchmarks[0].path == str(base / "bench" / "gsm8k.jsonl")
    assert cfg.eval.benchmarks[1].path == "HuggingFaceH4/aime_2024"
    assert cfg.eval.benchmarks[2].source.path == base / "held" / "out.jsonl"
    # an absolute path is left alone
    cfg = load_pipeline(pipeline)
    assert cfg.prompts[1].path == tmp_path / "abs.parquet"


def test_timings_accumulate_across_resumes(tmp_path, monkeypatch):
    import factory.pipeline as pipeline_mod

    work = {"generate": 0.3}

    def fake_stage(name):
        def run(cfg, out_dir, new_run=False):
            time.sleep(work.pop(name, 0.0))  # only the first run does the work; resumes skip it
            return {"report": str(out_dir / "report.html")} if name == "report" else {}
        return run

    monkeypatch.setattr(pipeline_mod, "stage", fake_stage)
    cfg = load_pipeline(_write(tmp_path / "p.yaml", BASE))
    pipeline_mod.run_pipeline(cfg, tmp_path / "run")
    first = json.loads((tmp_path / "run" / "timings.json").read_text())["generate"]
    assert first >= 0.3
    pipeline_mod.run_pipeline(cfg, tmp_path / "run")  # a resume: near-zero time must not overwrite the real one
    assert first <= json.loads((tmp_path / "run" / "timings.json").read_text())["generate"] < first + 0.2
    pipeline_mod.run_pipeline(cfg, tmp_path / "run", new_run=True)  # a new run starts the count afresh
    assert json.loads((tmp_path / "run" / "timings.json").read_text())["generate"] < 0.2
