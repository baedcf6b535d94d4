"""Two processes on the CPU (gloo): FSDP2 sharded checkpoints and the real trainer resume to exactly the
uninterrupted result."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _torchrun(script: str, out: Path, timeout: int) -> subprocess.CompletedProcess:
    """2 CPU processes; one retry when the rendezvous port was taken meanwhile by another process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           str(ROOT / "bench" / script), "--out", str(out)]
    for _ in range(2):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode == 0 or "address already in use" not in proc.stderr.lower():
            break
    return proc


def test_fsdp2_sharded_checkpoint_resumes_to_the_same_weights(tmp_path):
    proc = _torchrun("fsdp_gloo.py", tmp_path, 240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "fsdp_gloo.json").read_text())
    assert report["world"] == 2 and report["params_sharded"]
    assert report["rank0_local_params"] < report["total_params"]
    assert {"__0_0.distcp", "__1_0.distcp", "rng-0.pt", "rng-1.pt"} <= set(report["shard_files"])
    assert report["resumed_at"] == 3
    assert report["losses_resumed"] == report["losses_uninterrupted"]
    assert report["max_abs_diff"] == 0.0


@pytest.mark.slow
def test_real_trainer_on_two_processes_resumes_and_exports(tmp_path):
    """factory's trainer under torchrun (2 CPU processes, DDP over gloo): token-balanced ranks, per-rank
    checkpoint files, a killed run resumes to the same weights, and export gathers (full and LoRA + merge)."""
    proc = _torchrun("fsdp_resume.py", tmp_path, 300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "fsdp_resume.json").read_text())
    assert report["world"] == 2
    for mode in ("full", "lora"):
        run = report[mode]
        assert run["resumed_from"] == 2 and run["max_abs_diff"] == 0.0
        assert run["losses_resumed"] == run["losses_a"] and run["losses_a"][-1] < run["losses_a"][0]
        assert {"__0_0.distcp", "__1_0.distcp", "rng-0.pt", "rng-1.pt"} <= set(run["checkpoint_files"])
        assert "model.safetensors" in run["exported"]
    assert "adapter_model.safetensors" in report["lora"]["adapter"]
