"""The embedded demo end to end, sized for CI: `factory run pipelines/demo.yaml` in a real subprocess — generate,
verify, curate, LoRA SFT, eval of base, student and teacher — then the report; a stopped pipeline resumes from the
last finished stage without redoing it."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.engine, pytest.mark.slow]

SMALL = ["prompts.0.n=16", "sampling.max_tokens=96", "generate.shard_size=8", "sft.epochs=1", "sft.global_batch_size=4",
         "eval.k=2", "eval.max_tokens=96", "eval.benchmarks.0.source.n=8"]


def factory(repo, *args):
    cmd = [sys.executable, "-m", "factory", *args]
    for item in SMALL:
        cmd += ["--set", item]
    env = {**os.environ, "PYTHONPATH": str(repo), "FACTORY_PROGRESS": "0", "VLLM_CPU_KVCACHE_SPACE": "1"}
    done = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_demo_pipeline_end_to_end_and_resume(tmp_path, repo):
    out = tmp_path / "demo"
    factory(repo, "run", "pipelines/demo.yaml", "--out", str(out), "--stages", "generate,verify")
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "generate").glob("part-*")}
    assert stamps and not (out / "curate").exists()

    done = factory(repo, "run", "pipelines/demo.yaml", "--out", str(out))
    assert stamps == {p.name: p.stat().st_mtime_ns for p in (out / "generate").glob("part-*")}, "generate redone"
    for stage in ("generate", "verify", "curate", "sft", "eval"):
        counts = json.loads((out / stage / "counts.json").read_text())
        assert counts["stage"] == stage, stage
    assert json.loads((out / "generate" / "counts.json").read_text())["records_out"] == 16 * 4
    assert (out / "sft" / "model" / "model.safetensors").exists() and (out / "sft" / "adapter").is_dir()
    losses = [json.loads(line)["loss"] for line in (out / "sft" / "train_log.jsonl").read_text().splitlines()]
    assert losses and all(loss == loss for loss in losses)  # logged and finite
    summary = json.loads((out / "eval" / "summary.json").read_text())
    assert {r["model"] for r in summary} == {"base", "student", "teacher-fewshot"}
    assert all(r["k"] == 2 and r["n_problems"] == 8 and 0 <= r["pass@1"] <= 1 for r in summary)
    assert "student" in done.stdout + done.stderr  # the comparison table was printed
    html = (out / "report.html").read_text()
    for section in ("funnel", "loss", "eval"):
        assert section in html.lower()
    timings = json.loads((out / "timings.json").read_text())
    assert set(timings) == {"generate", "verify", "curate", "sft", "eval"}
