"""Failures print one message naming the path or key and what to do, exit non-zero, and show no traceback unless
`factory --debug`: bad `--set` list indices, a stage whose input never ran, a full disk and a read-only folder (real
tmpfs mounts in a private mount namespace, `unshare -rm`), a checkpoint that no longer fits the model (torch's own
RuntimeError), vLLM's EngineDeadError; and the prompt-source errors that name the file and line."""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _curate_data import REPO, rewards, trace, write_stage
from typer.testing import CliRunner

import factory.cli as cli
from factory.cli import app
from factory.core.errors import Context, explain
from factory.generate.config import FileSource
from factory.generate.sources import SourceError, load_prompts

BASE = "name: t\nprompts:\n  - {kind: arithmetic, n: 4}\n"
FACTORY = str(Path(sys.executable).with_name("factory"))
runner = CliRunner()


def _pipeline(tmp_path: Path) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(BASE)
    return path


def _clean(result, code: int) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return result.output


@pytest.mark.parametrize("item, expected", [
    ("prompts.5.n=3", "--set prompts.5.n=3: prompts has 1 item(s) (indices 0..0); index 5 is out of range"),
    ("prompts.x.n=3", "--set prompts.x.n=3: prompts is a list; 'x' is not a list index"),
    ("prompts.0.n=abc", "--set prompts.0.n=abc: prompts.0.n: Input should be a valid integer"),
])
def test_set_errors_name_the_override_not_the_yaml_file(tmp_path, item, expected):
    pipeline = _pipeline(tmp_path)
    output = _clean(runner.invoke(app, ["generate", "-c", str(pipeline), "-o", str(tmp_path / "run"), "--set", item]),
                    2)
    assert expected in output
    assert str(pipeline) not in output  # the file is fine: the override is at fault
    assert not (tmp_path / "run").exists()


def test_yaml_errors_still_name_the_file(tmp_path):
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(BASE.replace("n: 4", "n: four"))
    output = _clean(runner.invoke(app, ["generate", "-c", str(pipeline), "--set", "sampling.n=2"]), 2)
    assert f"{pipeline}: prompts.0.n: Input should be a valid integer" in output


def test_a_stage_whose_input_never_ran_says_so_and_what_to_run(tmp_path):
    pipeline, run = _pipeline(tmp_path), tmp_path / "run"
    output = _clean(runner.invoke(app, ["verify", "-c", str(pipeline), "-o", str(run)]), 1)
    assert f"{run / 'generate'}" in output
    assert "never ran" in output or "has not run yet" in output
    assert "factory generate" in output


def _namespace_mount(target: Path, options: str) -> list[str]:
    """A command prefix running the rest inside a private mount namespace with a tmpfs (`options`) on `target`."""
    if not shutil.which("unshare") or subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode:
        pytest.skip("needs unshare -rm (user + mount namespaces) to mount a tmpfs without touching the host")
    return ["unshare", "-rm", "sh", "-c", f'mount -t tmpfs -o {options} tmpfs "{target}" && exec "$@"', "sh"]


def _curate_in(tmp_path: Path, options: str) -> subprocess.CompletedProcess:
    """`factory curate` of a real finished verify folder, with curate/ on a tmpfs mounted with `options`."""
    run = tmp_path / "run"
    write_stage(run / "verify", [[{**trace(f"p{i}", 0), **rewards(True)} for i in range(8)]])
    (run / "curate").mkdir()
    cmd = _namespace_mount(run / "curate", options) + [FACTORY, "curate", "-c", str(_pipeline(tmp_path)),
                                                       "-o", str(run)]
    env = {**os.environ, "FACTORY_PROGRESS": "0"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)


def test_disk_full_names_the_folder_and_its_free_space(tmp_path):
    result = _curate_in(tmp_path, "size=8k")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert f"error: disk full writing {tmp_path / 'run' / 'curate'} (" in result.stderr
    assert "free on that filesystem" in result.stderr and "--out" in result.stderr and "resumes" in result.stderr


def test_read_only_folder_names_the_path(tmp_path):
    result = _curate_in(tmp_path, "ro")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert f"error: cannot write {tmp_path / 'run' / 'curate'}" in result.stderr
    assert "read-only filesystem" in result.stderr and "--out" in result.stderr


def _size_mismatch() -> RuntimeError:
    import torch

    try:
        torch.nn.Linear(8, 4).load_state_dict(torch.nn.Linear(8, 8).state_dict())
    except RuntimeError as exc:
        return exc
    raise AssertionError("torch loaded a mismatched state dict")


def _engine_dead() -> BaseException:
    from vllm.v1.engine.exceptions import EngineDeadError

    return EngineDeadError()


@pytest.mark.parametrize("make, expected", [
    (_size_mismatch, ["does not fit the configured student", "size mismatch for weight", "--new-run",
                      "run/sft"]),
    (_engine_dead, ["the vLLM engine died (EngineDeadError)", "EngineCore", "rerunning the same command resumes"]),
])
def test_library_failures_print_one_clean_message(tmp_path, monkeypatch, make, expected):
    """The real exceptions (torch's state-dict mismatch, vLLM's EngineDeadError) raised inside a stage command."""
    exc = make()

    def failing_stage(cfg, run_dir, *, new_run=False):
        raise exc

    monkeypatch.setattr(cli, "stage", lambda name: failing_stage)
    args = ["sft", "-c", str(_pipeline(tmp_path)), "-o", str(tmp_path / "run")]
    output = _clean(runner.invoke(app, args), 1)
    for text in expected:
        assert text in output
    debug = runner.invoke(app, ["--debug", *args])
    assert debug.exit_code != 0 and debug.exception is exc  # --debug lets the traceback through


def test_unknown_failures_name_their_type_and_point_at_debug(tmp_path, monkeypatch):
    def failing_stage(cfg, run_dir, *, new_run=False):
        raise KeyError("shard")

    monkeypatch.setattr(cli, "stage", lambda name: failing_stage)
    output = _clean(runner.invoke(app, ["curate", "-c", str(_pipeline(tmp_path))]), 1)
    assert "error: KeyError: 'shard'" in output and "--debug" in output


def test_explain_walks_the_cause_chain():
    try:
        try:
            raise OSError(28, "No space left on device", "/data/run/generate/part-00001.parquet")
        except OSError as inner:
            raise RuntimeError("commit failed") from inner
    except RuntimeError as exc:
        message = explain(exc, Context())
    assert message.startswith("disk full writing /data/run/generate/part-00001.parquet (")
    # pyarrow's OSError names no file and carries the errno in its text: the run's fullest folder is named
    assert explain(OSError("Error writing bytes to file. Detail: [errno 28] No space left on device"),
                   Context(run_dir=Path("/nonexistent/run"))).startswith("disk full writing /nonexistent/run (")
    assert explain(OSError(errno.EFBIG, "File too large", "/r/a.parquet"), Context()).startswith(
        "file too large writing /r/a.parquet: the file size limit (ulimit -f)")
    assert "is not writable by this user" in explain(PermissionError(errno.EACCES, "Permission denied", "/r"),
                                                     Context())


# -- prompt sources -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("content, message", [
    (b"", "p.jsonl: no prompts in it"),
    (b'{"problem": "a", "id": "x"}\n{"problem": "b", "id": "y"}\n{"problem": "c", "id": "x"}\n',
     "duplicate prompt ids: 'x' (p.jsonl:1 and p.jsonl:3)"),
    (b'{"problem": "a"}\n{"problem": "b", "answer": 3 4}\n', "p.jsonl:2: malformed JSON at column 30: Expecting ','"),
    (b'{\n  "problem": "a"\n}\n', "p.jsonl:1: malformed JSON at column 2"),
])
def test_source_errors_name_file_line_and_column(tmp_path, content, message):
    path = tmp_path / "p.jsonl"
    path.write_bytes(content)
    columns = {"prompt_id": "id"} if b'"id"' in content else {}
    with pytest.raises(SourceError) as err:
        load_prompts([FileSource(kind="jsonl", path=path, columns=columns)])
    assert message.replace("p.jsonl", str(path)) in str(err.value)


def test_source_errors_through_the_cli(tmp_path):
    data = tmp_path / "p.jsonl"
    data.write_text('{"problem": "a"}\n{"problem": "b",, "x": 1}\n')
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text("name: t\nprompts:\n  - {kind: jsonl, path: p.jsonl}\n")
    output = _clean(runner.invoke(app, ["preview", str(pipeline)]), 1)
    assert f"error: {data}:2: malformed JSON at column 17" in output
