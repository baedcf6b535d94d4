"""`factory mix --config …` (a mix-only YAML and a `mix:` block in a pipeline) and `factory export` from the CLI."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from _mix_data import components, read_mix, write_run
from typer.testing import CliRunner

from factory.cli import app
from factory.config import load_pipeline

runner = CliRunner()


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _ok(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())  # rich may wrap long lines


def test_mix_only_yaml_paths_relative_to_it(tmp_path):
    write_run(tmp_path / "runs" / "r1-math", "numina", 40)
    write_run(tmp_path / "runs" / "chat", "alpaca", 20, domains=("general",))
    mix_yaml = _write(tmp_path / "conf" / "mix.yaml",
                      "name: sft-mix\nmix:\n  seed: 5\n  total: 24\n  sources:\n"
                      "    - {name: reasoning, path: ../runs/r1-math, ratio: 0.75}\n"
                      "    - {name: general, path: ../runs/chat/curate, ratio: 0.25}\n")
    cfg = load_pipeline(mix_yaml)
    assert cfg.stages == ["mix"] and cfg.prompts == [] and cfg.mix.sources[0].path == str(tmp_path / "runs/r1-math")
    out = tmp_path / "out"
    assert "mix: 24 samples (reasoning 18, general 6)" in _ok(["mix", "--config", str(mix_yaml), "--out", str(out)])
    assert components(out / "mix") == {"reasoning": 18, "general": 6}
    assert json.loads((out / "mix" / "counts.json").read_text())["records_out"] == 24
    assert "up to date" in _ok(["mix", "-c", str(mix_yaml), "--out", str(out)])  # the same config again: a no-op
    result = runner.invoke(app, ["mix", "-c", str(mix_yaml), "--out", str(out), "--set", "mix.seed=6"])
    assert result.exit_code == 1 and "changed: config.seed" in result.output and "--new-run" in result.output
    _ok(["mix", "-c", str(mix_yaml), "--out", str(out), "--set", "mix.seed=6", "--new-run"])
    _ok(["run", str(mix_yaml), "--out", str(tmp_path / "via-run")])  # `factory run` of a mix-only file: stage mix
    assert components(tmp_path / "via-run" / "mix") == {"reasoning": 18, "general": 6}


def test_bad_mix_yaml_and_too_many_samples_are_one_line_errors(tmp_path):
    write_run(tmp_path / "chat", "alpaca", 20)
    bad = _write(tmp_path / "bad.yaml",
                 "mix:\n  sources:\n    - {path: chat, ratio: 0.5}\n    - {path: chat, ratio: 0.4}\n")
    result = runner.invoke(app, ["mix", "-c", str(bad), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "bad.yaml" in result.output and "ratios sum to 0.9" in result.output
    many = _write(tmp_path / "many.yaml", "mix:\n  sources:\n    - {path: chat, count: 21}\n")
    result = runner.invoke(app, ["mix", "-c", str(many), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "mix.sources[0] (chat): 21 samples wanted but" in result.output
    assert "has 20" in result.output and not (tmp_path / "o" / "mix").exists()
    plain = _write(tmp_path / "plain.yaml", "prompts:\n  - {kind: arithmetic, n: 4}\n")
    result = runner.invoke(app, ["mix", "-c", str(plain), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "no `mix:` block" in result.output
    unknown = _write(tmp_path / "unknown.yaml", "mix:\n  sources:\n    - {path: nope, count: 1}\n")
    result = runner.invoke(app, ["mix", "-c", str(unknown), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "nope: no such file or folder" in result.output


def test_mix_block_in_a_pipeline_defaults_to_the_runs_own_curate(tmp_path):
    run = tmp_path / "run"
    write_run(run, "numina", 30, domains=("math", "general"))  # 15 reasoning + 15 general
    pipeline = _write(tmp_path / "p.yaml",
                      "name: t\nstages: [generate, verify, curate, mix]\nprompts:\n  - {kind: arithmetic, n: 4}\n"
                      "mix:\n  sources:\n    - {name: reasoning, domains: [math], count: 12}\n"
                      "    - {name: general, domains: [general], count: 4}\n")
    assert load_pipeline(pipeline).mix.sources[1].domains == ["general"]
    _ok(["mix", "-c", str(pipeline), "--out", str(run)])
    rows = read_mix(run / "mix", ["mix_component", "domain", "mix_run", "mix_path"])
    assert Counter((r["mix_component"], r["domain"]) for r in rows) == {("reasoning", "math"): 12,
                                                                         ("general", "general"): 4}
    assert {(r["mix_run"], r["mix_path"]) for r in rows} == {("run", str(run / "curate"))}


def test_export_formats_and_a_messages_export_as_a_source(tmp_path):
    run = tmp_path / "run"
    write_run(run, "numina", 6)
    _ok(["export", str(run), "--format", "messages", "-o", str(tmp_path / "m.jsonl")])  # a run folder: its curate/
    msgs = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert len(msgs) == 6 and msgs[0]["messages"][0]["role"] == "user" and set(msgs[0]) == {"messages"}
    assert "6 samples" in _ok(["export", str(run / "curate"), "-f", "sharegpt", "-o", str(tmp_path / "s" / "d.jsonl")])
    conv = json.loads((tmp_path / "s" / "d.jsonl").read_text().splitlines()[0])["conversations"]
    assert [c["from"] for c in conv] == ["human", "gpt"] and not (tmp_path / "s" / "dataset_info.json").exists()
    _ok(["export", str(run), "-f", "llamafactory", "-o", str(tmp_path / "lf" / "r1.jsonl"), "--name", "r1_mix"])
    info = json.loads((tmp_path / "lf" / "dataset_info.json").read_text())
    assert info["r1_mix"]["file_name"] == "r1.jsonl" and info["r1_mix"]["formatting"] == "sharegpt"
    result = runner.invoke(app, ["export", str(run), "-f", "alpaca", "-o", str(tmp_path / "x.jsonl")])
    assert result.exit_code == 1 and "one of messages, sharegpt, llamafactory" in result.output
    assert not (tmp_path / "x.jsonl").exists()

    # the messages export mixes back in (upsampled: 9 of 6 lines), then the mixture exports in turn
    mix_yaml = _write(tmp_path / "mix.yaml", "mix:\n  sources:\n    - {name: chat, path: m.jsonl, count: 9}\n"
                                             "  allow_upsample: true\n")
    _ok(["mix", "-c", str(mix_yaml), "--out", str(tmp_path / "mixed")])
    rows = read_mix(tmp_path / "mixed" / "mix")
    assert len(rows) == 9 and Counter(r["mix_row"] for r in rows).most_common(1)[0][1] == 2
    assert {r["mix_file"] for r in rows} == {"m.jsonl"} and all(r["mix_run"] is None for r in rows)
    assert all(r["messages"] == msgs[r["mix_row"]]["messages"] and r["problem"] == r["messages"][0]["content"]
               for r in rows)
    _ok(["export", str(tmp_path / "mixed" / "mix"), "-f", "messages", "-o", str(tmp_path / "again.jsonl")])
    assert len((tmp_path / "again.jsonl").read_text().splitlines()) == 9


def test_a_broken_messages_export_names_the_line(tmp_path):
    _write(tmp_path / "m.jsonl", '{"messages": [{"role": "user", "content": "hi"}]}\n{"text": "no messages"}\n')
    mix_yaml = _write(tmp_path / "mix.yaml", "mix:\n  sources:\n    - {path: m.jsonl}\n")
    result = runner.invoke(app, ["mix", "-c", str(mix_yaml), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "m.jsonl:2: expected" in result.output
    assert not (tmp_path / "o" / "mix").exists()
