"""`run_publish`: repo id and token checked before any work, the dry run lists what would be uploaded, and the
token never reaches a file, the logs or the output. The Hub itself is not faked: the last test lets the real
client refuse the network call (offline mode) and checks what is left behind."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from publish_fixtures import FAKE_TOKEN, curated_row, make_run, make_sft, use_fixture_schemas, write_shard
from pydantic import ValidationError

from factory.publish.common import PublishError
from factory.publish.stage import PublishConfig, run_publish

REPO = Path(__file__).resolve().parents[2]
CONFIG = PublishConfig.model_validate({"dataset": {"include_rejected": True},
                                       "model": {"base_model": "HuggingFaceTB/SmolLM2-135M-Instruct"}})


@pytest.fixture
def run(tmp_path, monkeypatch):
    use_fixture_schemas(monkeypatch, tmp_path)
    run = make_run(tmp_path / "run", secret=FAKE_TOKEN)  # the teacher's api_key is the token itself
    make_sft(run, "adapter")
    return run


def _all_text_under(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in folder.rglob("*") if p.is_file())


def test_dry_run_lists_files_and_token_appears_nowhere(run, monkeypatch, capsys, caplog):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    caplog.set_level(logging.DEBUG)
    result = run_publish(CONFIG, run, "org/r1-demo", private=True, dry_run=True)
    out = capsys.readouterr()
    assert [(p.repo_type, p.repo_id, p.private) for p in result.plans] == [("dataset", "org/r1-demo", True),
                                                                             ("model", "org/r1-demo", True)]
    assert "Dry run: would upload 2 repo(s)" in out.out and "Dry run: nothing was uploaded." in out.out
    for plan in result.plans:  # every file of both folders is listed, with its path in the repo
        assert plan.files == sorted(plan.files)
        for path, _ in plan.files:
            assert f"  {path}  " in out.out
    assert "data/math/train-00000-of-00001.parquet" in out.out and "adapter_model.safetensors" in out.out
    assert result.urls == []
    published = run / "publish"
    assert (published / "manifest.json").exists() and (published / "counts.json").exists()
    # The token is in neither the built repo folders, nor the stage record, nor stdout/stderr/logs.
    needle = FAKE_TOKEN.encode()
    assert needle not in _all_text_under(published)
    assert FAKE_TOKEN not in out.out + out.err + caplog.text


def test_counts_record_what_was_published(run):
    import json

    run_publish(CONFIG, run, "org/r1-demo", dry_run=True)
    counts = json.loads((run / "publish" / "counts.json").read_text())
    assert counts["stage"] == "publish" and counts["records_in"] == 42 and counts["records_out"] == 42
    assert counts["extra"]["configs"] == {"code": 12, "math": 30, "all": 42, "rejected": 5}
    assert counts["extra"]["model_kind"] == "adapter"


def test_token_inside_the_data_is_refused(run, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    leaked = curated_row(500, "math", "numina")
    leaked["problem"] = f"my token is {FAKE_TOKEN}"
    write_shard(run / "curate" / "part-00002.parquet", "curated", [leaked])
    with pytest.raises(PublishError, match="contains the Hugging Face token; refusing to publish it"):
        run_publish(CONFIG, run, "org/r1-demo", dry_run=True)


@pytest.mark.parametrize("repo_id", ["r1-demo", "org/team/r1", "org/r1..demo", "org/", "/r1", "org/r1 demo"])
def test_bad_repo_id_fails_before_any_work(run, repo_id):
    with pytest.raises(PublishError, match="--repo-id"):
        run_publish(CONFIG, run, repo_id, dry_run=True)
    assert not (run / "publish").exists()


def test_publish_config_forbids_unknown_keys():
    with pytest.raises(ValidationError, match="privte"):
        PublishConfig.model_validate({"privte": True})
    with pytest.raises(ValidationError, match="basemodel"):
        PublishConfig.model_validate({"model": {"basemodel": "x/y"}})


def _publish_in_subprocess(tmp_path: Path, run: Path, env: dict) -> subprocess.CompletedProcess:
    """run_publish (not a dry run) in a fresh interpreter, so huggingface_hub reads this environment at import."""
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        sys.path[:0] = [{str(REPO / "tests")!r}, {str(REPO)!r}]
        import pytest
        from publish_fixtures import use_fixture_schemas
        use_fixture_schemas(pytest.MonkeyPatch(), Path({str(tmp_path / "sub")!r}))
        from factory.publish.stage import PublishConfig, run_publish
        config = PublishConfig.model_validate({CONFIG.model_dump(mode="json")!r})
        run_publish(config, Path({str(run)!r}), "org/r1-demo")
    """)
    (tmp_path / "sub").mkdir(exist_ok=True)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE"))}
    return subprocess.run([sys.executable, "-c", script], env={**base, **env}, capture_output=True, text=True,
                          timeout=300)


def test_no_token_fails_before_any_work(run, tmp_path):
    hf_home = tmp_path / "empty_hf_home"
    hf_home.mkdir()
    proc = _publish_in_subprocess(tmp_path, run, {"HF_HOME": str(hf_home)})
    assert proc.returncode != 0
    assert "no Hugging Face token: set HF_TOKEN or run `hf auth login`" in proc.stderr
    assert not (run / "publish").exists(), "nothing was built before the token check"


def test_offline_mode_fails_before_any_work(run, tmp_path):
    proc = _publish_in_subprocess(tmp_path, run, {"HF_TOKEN": FAKE_TOKEN, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode != 0 and "HF_HUB_OFFLINE is set" in proc.stderr
    assert not (run / "publish").exists()


def test_upload_step_reads_login_cache_and_leaks_no_token(run, tmp_path):
    # The token sits in the login cache (as `hf auth login` leaves it). The Hub endpoint is a closed local port,
    # so the real client's first request (the card check) fails; everything before that call has run.
    hf_home = tmp_path / "hf_home"
    hf_home.mkdir()
    (hf_home / "token").write_text(FAKE_TOKEN)
    proc = _publish_in_subprocess(tmp_path, run, {"HF_HOME": str(hf_home), "HF_ENDPOINT": "http://127.0.0.1:9"})
    assert proc.returncode != 0
    assert "127.0.0.1:9" in proc.stderr or "ConnectError" in proc.stderr, proc.stderr[-2000:]
    assert "no Hugging Face token" not in proc.stderr
    assert "Uploading 2 repo(s)" in proc.stdout  # the folders were built and planned
    assert (run / "publish" / "dataset" / "README.md").exists() and (run / "publish" / "model" / "README.md").exists()
    assert FAKE_TOKEN not in proc.stdout + proc.stderr
    assert FAKE_TOKEN.encode() not in _all_text_under(run / "publish")


def test_repo_id_and_private_from_config_flags_override(run):
    config = PublishConfig.model_validate({"repo_id": "org/from-yaml", "private": True,
                                           "model": {"repo_id": "org/from-yaml-student"}})
    result = run_publish(config, run, dry_run=True)
    assert [(p.repo_type, p.repo_id, p.private) for p in result.plans] == [
        ("dataset", "org/from-yaml", True), ("model", "org/from-yaml-student", True)]
    result = run_publish(config, run, "org/flag", private=False, dry_run=True)
    assert [(p.repo_id, p.private) for p in result.plans] == [("org/flag", False), ("org/from-yaml-student", False)]
    # the model card links the dataset repo, and the dataset card the model repo
    assert "org/flag" in result.model.card_text and "org/from-yaml-student" in result.dataset.card_text
    with pytest.raises(PublishError, match="no repo id given"):  # a dry run plans for a placeholder instead
        run_publish(PublishConfig(), run)
