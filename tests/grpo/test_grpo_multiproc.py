"""GRPO on several processes (DDP over gloo on the CPU, as `accelerate launch` runs it on GPUs) and TRL's vLLM
server mode's configuration: a real 2-process run of the tiny random policy, killed with kill -9 and resumed."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
import yaml

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))  # _grpo_rewards and _policy (spawned reward workers inherit sys.path)

from _policy import build_policy, pipeline_tree  # noqa: E402

from factory.config import ConfigError, PipelineConfig, load_pipeline  # noqa: E402

REWARDS = {"accuracy": 1.0, "format": 1.0, "_grpo_rewards:chars": 1.0}


@pytest.fixture(scope="module")
def policy(tmp_path_factory) -> Path:
    return build_policy(tmp_path_factory.mktemp("grpo-mp-policy") / "tiny-llama")


def _write(tmp_path: Path, tree: dict) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def _launch(pipeline: Path, out: Path) -> list[str]:
    """What `accelerate launch --num_processes 2 -m factory.grpo.stage` runs, on the CPU: torchrun, gloo."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
            "-m", "factory.grpo.stage", "--config", str(pipeline), "--out", str(out)]


ENV = {**os.environ, "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE), os.environ.get("PYTHONPATH", "")])}


def _kill_tree(pid: int) -> int:
    """kill -9 of the launcher and every process under it, as a node failure or Slurm's cgroup kill does (torchrun
    starts each rank in its own session, so the launcher's process group alone would leave the ranks running)."""
    root = psutil.Process(pid)
    procs = [root, *root.children(recursive=True)]
    for proc in procs:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=30)
    return len(procs)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_kill_9_and_resume_write_each_step_once(tmp_path, policy):
    """2 ranks × 1 prompt × G=4 per step: both ranks' shards (unit = step × 2 + rank), one log line per step, one
    manifest / counts / model; the launcher's process group killed after checkpoint-1, the rerun resumes from it."""
    tree = pipeline_tree(policy, steps=3, rewards=REWARDS, learning_rate=1e-4)
    pipeline, out = _write(tmp_path, tree), tmp_path / "run"
    grpo = out / "grpo"
    log_file = tmp_path / "killed.log"
    with open(log_file, "w") as fh:
        proc = subprocess.Popen(_launch(pipeline, out), env=ENV, stdout=fh, stderr=subprocess.STDOUT)
    target = grpo / "checkpoints" / "checkpoint-1" / "trainer_state.json"
    deadline = time.monotonic() + 300
    while not target.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = proc.poll() is None
    killed = _kill_tree(proc.pid) if alive else 0  # the launcher, both ranks, their reward workers
    proc.wait()
    assert alive and target.exists(), log_file.read_text()[-3000:]
    assert killed >= 3  # launcher + 2 ranks at least
    assert not (grpo / "counts.json").exists()
    done = subprocess.run(_launch(pipeline, out), env=ENV, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    counts = json.loads((grpo / "counts.json").read_text())
    assert counts["extra"]["steps"] == 3 and 1 <= counts["extra"]["resumed_from_step"] < 3
    assert counts["records_out"] == 3 * 2 * 4 and counts["extra"]["rollout_units"] == 6
    log = [json.loads(line) for line in (grpo / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [1, 2, 3]
    parts = sorted((grpo / "rollouts").glob("part-*.parquet"))
    assert [p.name for p in parts] == [f"part-{i:05d}.parquet" for i in range(6)]
    keys = []
    for unit, part in enumerate(parts):
        rows = pq.read_table(part).to_pylist()
        assert len(rows) == 4 and {r["grpo_step"] for r in rows} == {unit // 2}  # rank = unit % 2: one group
        assert len({r["prompt_id"] for r in rows}) == 1
        keys += [(r["prompt_id"], r["sample_idx"]) for r in rows]
    assert len(keys) == len(set(keys)) == 24
    manifest = json.loads((grpo / "manifest.json").read_text())
    assert manifest["config"]["processes"] == 2
    assert (grpo / "model" / "model.safetensors").exists()
    assert not list(grpo.glob(".*tmp*")) and not (grpo / ".lock").exists()
    assert json.loads(done.stdout.strip().splitlines()[-1])["records_out"] == 24  # printed once, by the main rank

    from factory.core.shards import StageConfigChanged
    from factory.grpo.rollouts import verify_rollouts
    from factory.grpo.stage import run_grpo

    assert verify_rollouts(PipelineConfig.model_validate(tree), out)["records_out"] == 24  # both ranks' shards
    with pytest.raises(StageConfigChanged, match="processes"):  # a resume must keep the process count
        run_grpo(PipelineConfig.model_validate(tree), out)


def test_prompts_per_step_is_global_and_must_divide_by_the_processes():
    from factory.grpo.checks import GRPOInputError, check_processes
    from factory.grpo.config import GRPOConfig
    from factory.grpo.train import _trl_args

    cfg = GRPOConfig(prompts_per_step=4, num_generations=4, micro_batch_size=4)
    args = _trl_args(cfg, Path("/tmp/unused"), bf16=False, use_cpu=True, processes=2)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (4, 2)  # 2 prompts × 4 each
    check_processes(cfg, 2)
    with pytest.raises(GRPOInputError, match=r"grpo\.prompts_per_step=4 does not divide by the 3"):
        check_processes(cfg, 3)
    with pytest.raises(GRPOInputError, match=r"grpo\.micro_batch_size=8"):
        check_processes(GRPOConfig(prompts_per_step=4, num_generations=4, micro_batch_size=8), 4)


def test_server_mode_without_a_url_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"grpo.*vllm_server_base_url"):
        load_pipeline(_write(tmp_path, pipeline_tree(Path("x"), vllm_mode="server")))
    with pytest.raises(ConfigError, match="use_vllm is false"):
        load_pipeline(_write(tmp_path, pipeline_tree(Path("x"), vllm_mode="server", use_vllm=False,
                                                     vllm_server_base_url="http://127.0.0.1:8000")))


def test_a_server_that_does_not_answer_is_refused_before_any_step(tmp_path, policy):
    from factory.grpo.checks import GRPOInputError
    from factory.grpo.stage import run_grpo

    url = f"http://127.0.0.1:{_closed_port()}"
    tree = pipeline_tree(policy, vllm_mode="server", vllm_server_base_url=url, vllm_server_timeout_s=1)
    start = time.monotonic()
    with pytest.raises(GRPOInputError, match=r"grpo\.vllm_server_base_url: no vLLM server answers at "
                                             + url.replace(".", r"\.")) as exc:
        run_grpo(PipelineConfig.model_validate(tree), tmp_path / "run")
    assert "trl vllm-serve" in str(exc.value) and time.monotonic() - start < 30
    assert not (tmp_path / "run").exists()  # the failed start leaves nothing behind


def test_server_mode_reaches_trls_config(tmp_path):
    from factory.grpo.config import GRPOConfig
    from factory.grpo.train import _trl_args

    cfg = GRPOConfig(vllm_mode="server", vllm_server_base_url="http://10.0.0.2:8000", vllm_server_timeout_s=60,
                     prompts_per_step=4, num_generations=16)
    args = _trl_args(cfg, tmp_path, bf16=False, use_cpu=True, use_vllm=True, processes=2)
    assert (args.vllm_mode, args.vllm_server_base_url, args.vllm_server_timeout) == ("server", cfg.vllm_server_base_url,
                                                                                   60)
    assert args.use_vllm and args.per_device_train_batch_size == 32


@pytest.mark.slow
def test_bad_input_on_two_processes_is_one_error_and_leaves_nothing(tmp_path, policy):
    """3 prompts per step cannot split into whole groups over 2 ranks: refused before any step, reported once by
    the main rank, and the run folder is gone (the ranks wait for the main one's cleanup before they exit)."""
    pipeline = _write(tmp_path, pipeline_tree(policy, prompts_per_step=3, rewards=REWARDS))
    done = subprocess.run(_launch(pipeline, tmp_path / "run"), env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error")]
    assert errors == ["error: grpo.prompts_per_step=3 does not divide by the 2 training processes (each takes whole "
                      "groups of G); use a multiple of 2"], done.stderr[-3000:]
    assert not (tmp_path / "run").exists()
