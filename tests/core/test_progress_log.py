"""Logs a person can read: off a terminal every stage prints a plain progress line at least every
FACTORY_PROGRESS_INTERVAL seconds (stage, done/total, rows, rate, elapsed, ETA), summary lines never wrap, and an
engine start of the embedded model (stored in bf16, the dtype vLLM runs) prints only a few third-party lines."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _curate_data import REPO, rewards, trace, write_stage

from factory.core import progress

FACTORY = str(Path(sys.executable).with_name("factory"))
LINE = re.compile(r"^\[\d\d:\d\d:\d\d\] (?P<stage>[\w:]+): (?P<done>\d+)/(?P<total>\d+) (?P<label>\w+) \(\d+%\)"
                  r"(?:, (?P<items>\d+/\d+) prompts)?(?:, [\d,]+ rows)?(?:, (?P<rate>[\d,.]+ (?:tok|rows)/s|loss [\d.]+ [\d,]+ tok/s))?"
                  r", elapsed \d+s, (?:ETA (?:\d+s|\d+m\d\ds|unknown)|done|stopped)$")


def _lines(text: str, stage: str) -> list[re.Match]:
    return [m for m in map(LINE.match, text.splitlines()) if m and m["stage"] == stage]


def test_log_lines_every_interval_with_rate_and_eta(monkeypatch, capsys):
    monkeypatch.setenv("FACTORY_PROGRESS", "log")
    monkeypatch.setenv("FACTORY_PROGRESS_INTERVAL", "0.2")
    with progress.stage_progress("verify", total_units=4, done_units=1) as bar:
        bar.advance(rows=10)
        time.sleep(0.5)  # a unit that takes long: the ticker still reports
        bar.advance(rows=10, tokens=3000)
    err = capsys.readouterr().err
    lines = _lines(err, "verify")
    assert len(lines) >= 4, err  # the start, at least two ticks, the end
    assert (lines[0]["done"], lines[0]["total"]) == ("1", "4") and "ETA unknown" in lines[0].group(0)
    assert any(m["done"] == "2" and m["rate"].endswith("rows/s") and "ETA " in m.group(0) for m in lines), err
    assert lines[-1]["done"] == "3" and lines[-1]["rate"].endswith("tok/s") and lines[-1].group(0).endswith("stopped")


def test_notes_inside_a_unit_show_prompts_tokens_and_an_eta(monkeypatch, capsys):
    """generate notes each prompt as its samples come back, before the shard holding it commits."""
    monkeypatch.setenv("FACTORY_PROGRESS", "log")
    monkeypatch.setenv("FACTORY_PROGRESS_INTERVAL", "0.1")
    with progress.stage_progress("generate", total_units=2, items_total=8) as bar:
        for _ in range(3):
            bar.note(tokens=500)
        time.sleep(0.35)
        bar.advance(rows=16, tokens=1500)
    lines = _lines(capsys.readouterr().err, "generate")
    mid = next(m for m in lines if m["items"] == "3/8" and m["done"] == "0")
    assert mid["rate"].endswith("tok/s") and re.search(r"ETA \d+s$", mid.group(0)), mid.group(0)


def test_step_progress_for_training_loops(monkeypatch, capsys):
    monkeypatch.setenv("FACTORY_PROGRESS", "log")
    monkeypatch.setenv("FACTORY_PROGRESS_INTERVAL", "0.1")
    bar, task = progress.step_progress("sft", True, total=3, start=0)
    with bar:
        for step in range(3):
            time.sleep(0.15)
            bar.update(task, completed=step + 1, info=f"loss {1.5 - step / 10:.4f} 1,234 tok/s")
    lines = _lines(capsys.readouterr().err, "sft")
    assert lines[-1].group(0).endswith("loss 1.3000 1,234 tok/s, elapsed 0s, done"), lines[-1].group(0)
    assert lines[-1]["label"] == "steps"
    off, _ = progress.step_progress("sft", False, total=3, start=0)  # cfg.progress: false → nothing at all
    assert off.disable


def test_modes(monkeypatch):
    for value, expected in (("0", "off"), ("false", "off"), ("log", "log"), ("1", "bar"), ("bar", "bar")):
        monkeypatch.setenv("FACTORY_PROGRESS", value)
        assert progress.mode() == expected
    monkeypatch.delenv("FACTORY_PROGRESS")
    assert progress.mode() == "log"  # pytest's stderr is not a terminal


def test_a_real_stage_logs_progress_lines_and_unwrapped_summaries(tmp_path):
    """`factory curate` with stdout and stderr redirected to a file, as under nohup or Slurm."""
    run = tmp_path / ("a-long-run-folder-name-so-the-summary-line-is-far-wider-than-eighty-columns" * 2)
    write_stage(run / "verify", [[{**trace(f"p{s}-{i}", 0), **rewards(True)} for i in range(4)] for s in range(3)])
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text("name: t\nprompts:\n  - {kind: arithmetic, n: 4}\n")
    log = tmp_path / "log.txt"
    env = {k: v for k, v in os.environ.items() if k not in ("FACTORY_PROGRESS", "COLUMNS")}
    env["FACTORY_PROGRESS_INTERVAL"] = "0.5"
    with open(log, "w") as fh:
        subprocess.run([FACTORY, "curate", "-c", str(pipeline), "-o", str(run)], stdout=fh, stderr=subprocess.STDOUT,
                       env=env, cwd=REPO, timeout=300, check=True)
    text = log.read_text()
    lines = _lines(text, "curate:filter")
    assert lines and lines[-1]["done"] == lines[-1]["total"] == "3" and lines[-1].group(0).endswith("done"), text
    summary = [line for line in text.splitlines() if line.startswith("curate:") and str(run / "curate") in line]
    assert summary, text  # the path is on the summary's own line: no wrap at 80 columns
    assert "\x1b[" not in text  # no terminal escapes in a log file


@pytest.mark.slow
def test_generate_in_a_log_file_progress_bf16_engine_and_little_noise(tmp_path):
    """A real `factory generate` on the embedded model, output to a file as under nohup: progress lines with prompts
    and tokens/s, the engine loads the bf16 copy (no per-weight cast warnings), at most ~10 third-party lines."""
    from factory.core.embedded import embedded_model_dir
    from factory.generate.teachers.vllm_offline import resolve_model

    bf16 = embedded_model_dir(dtype="bfloat16")
    assert resolve_model("embedded") == str(bf16)
    assert json.loads((bf16 / "config.json").read_text())["dtype"] == "bfloat16"
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text("name: t\nprompts:\n  - {kind: arithmetic, n: 4}\n"
                        "teacher: {backend: vllm, model: embedded, max_model_len: 512, kv_cache_gib: 1}\n"
                        "sampling: {n: 2, max_tokens: 24, seed: 0}\ngenerate: {shard_size: 2}\n")
    log = tmp_path / "log.txt"
    env = {k: v for k, v in os.environ.items()
           if k not in ("FACTORY_PROGRESS", "VLLM_LOGGING_LEVEL", "PYTHONWARNINGS", "TRANSFORMERS_VERBOSITY")}
    env["FACTORY_PROGRESS_INTERVAL"] = "1"
    with open(log, "w") as fh:
        subprocess.run([FACTORY, "generate", "-c", str(pipeline), "-o", str(tmp_path / "run")], stdout=fh,
                       stderr=subprocess.STDOUT, env=env, cwd=REPO, timeout=600, check=True)
    text = log.read_text()
    lines = _lines(text, "generate")
    assert lines[-1]["done"] == lines[-1]["total"] == "2" and lines[-1]["rate"].endswith("tok/s"), text
    assert lines[-1]["items"] == "4/4", text
    assert "Attempted to load weight" not in text and "Traceback" not in text
    ours = [line for line in text.splitlines() if LINE.match(line) or line.startswith("generate: ")]
    noise = [line for line in text.splitlines() if line.strip() and line not in ours]
    assert len(noise) <= 10, "\n".join(noise)
