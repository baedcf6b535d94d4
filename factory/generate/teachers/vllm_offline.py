"""In-process vLLM engine teacher.

`SamplingParams(n=k)` makes the k samples of a prompt share its prefix's KV cache. Instead of one
`LLM.generate` call per shard (which drains the batch at every shard's end), requests are fed to the engine's
scheduler continuously (`LLMEngine.add_request`/`step`, the loop `LLM.generate` itself runs) and each prompt's
result is yielded as soon as it finishes, so shards commit while the engine stays full.

Public vLLM API only: prompts go in as token ids (`vllm.inputs.tokens_input`, or the documented `TokensPrompt` on
a vLLM without it), the engine is shut down by releasing the `LLM` (vLLM's own finalizers stop its processes;
`LLM.shutdown()` is called where a vLLM has it), and the engine processes it started are checked with psutil so
none outlives `close()`. A dead engine (its process killed, `EngineDeadError`) is restarted, up to
`teacher.max_restarts` times per call, and the prompts it had in flight are sent again.
"""
from __future__ import annotations

import gc
import itertools
import time
from collections.abc import Iterable, Iterator
from typing import Any

from factory.core.progress import console
from factory.generate.config import SamplingConfig, VLLMTeacherConfig
from factory.generate.teachers.base import GenRequest, GenResult, GenSample, TeacherError
from factory.generate.teachers.vllm_engine import (
    EngineProcesses,
    Stepper,
    check_vllm_api,
    engine_capacity,
    engine_kwargs,
    exit_on_sigterm,
    is_engine_death,
    prepare_environment,
    resolve_model,
    token_prompt,
)

__all__ = ["VLLMTeacher", "resolve_model", "sampling_params"]


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
        self.version = check_vllm_api()
        self.cfg = cfg
        self.model_id = cfg.model if cfg.model != "embedded" else "HuggingFaceTB/SmolLM2-135M-Instruct"
        self.on_cpu = prepare_environment(cfg)
        self.kwargs: dict[str, Any] = engine_kwargs(cfg, resolve_model(cfg.model), seed, self.on_cpu)
        self.stats: dict[str, int] = {}
        self.llm = None
        self._ids = itertools.count()
        self._start()

    # -- engine lifetime -----------------------------------------------------------------------------------
    def _start(self) -> None:
        from vllm import LLM

        exit_on_sigterm()
        watch = EngineProcesses()
        try:
            self.llm = LLM(**self.kwargs)
        except BaseException as exc:
            watch.record()
            watch.stop()  # a failed (or interrupted) start leaves no engine process behind
            if not isinstance(exc, Exception):
                raise
            raise TeacherError(f"vLLM {self.version} could not start {self.kwargs['model']}: {exc}") from exc
        watch.record()
        watch.guard()
        self._procs = watch
        self._stepper = Stepper(watch.alive)
        self.capacity = engine_capacity(self.llm)
        self._tokenizer = self.llm.get_tokenizer()

    def _stop(self) -> None:
        llm, self.llm = self.llm, None
        if llm is not None:
            shutdown = getattr(llm, "shutdown", None)  # a public LLM.shutdown() on vLLMs that have one
            if callable(shutdown):
                try:
                    shutdown()
                except Exception:
                    pass
            del llm
            gc.collect()  # vLLM's finalizers stop the engine-core process once the LLM is unreachable
        procs = getattr(self, "_procs", None)
        if procs is not None:
            procs.stop()
        stepper = getattr(self, "_stepper", None)
        if stepper is not None:
            stepper.close()
            self._stepper = None

    def close(self) -> None:
        """Shut the engine down; returns once no process it started is left (idempotent)."""
        self._stop()

    def processes(self) -> list:
        """The psutil processes of the running engine (engine core, workers)."""
        return list(self._procs.procs) if self.llm is not None else []

    def alive(self) -> bool:
        return self.llm is not None and self._procs.alive()

    # -- prompts -------------------------------------------------------------------------------------------
    def tokenizer(self):
        return self._tokenizer

    def encode(self, text: str) -> list[int]:
        """The token ids of a templated prompt: a chat template's text already holds the BOS token, so the
        tokenizer adds special tokens only to text that does not start with it (what vLLM's text path did,
        without the doubled BOS of Llama/DeepSeek tokenizers)."""
        tok = self._tokenizer
        bos = getattr(tok, "bos_token", None)
        add = not (bos and text.startswith(bos))
        return list(tok.encode(text, add_special_tokens=add))

    def window(self, sampling: SamplingConfig) -> int:
        """Prompts handed to the scheduler at once: `teacher.max_inflight`, or twice the sequences the engine
        runs at a time (`max_num_seqs`) over the k samples of a prompt, so a finished sequence is replaced at once."""
        if self.cfg.max_inflight:
            return self.cfg.max_inflight
        seqs = self.capacity.get("max_num_seqs") or 256
        return max(1, -(-2 * seqs // sampling.n))

    # -- generation ----------------------------------------------------------------------------------------
    def generate(self, requests: Iterable[GenRequest], sampling: SamplingConfig) -> Iterator[GenResult]:
        """Yield each request's k samples once all are done. `requests` may yield None: nothing to admit now
        (the caller's window is full); it is asked again after the next result."""
        if self.llm is None:
            raise TeacherError("the vLLM teacher is closed")
        params = sampling_params(sampling)
        self.stats = {}  # this call's restarts (an engine shared across runs reports each run's own)
        pending = iter(requests)
        inflight: dict[str, tuple[GenRequest, list[int], float]] = {}
        restarts = 0
        while True:
            try:
                yield from self._run(pending, inflight, params, self.window(sampling))
                return
            except Exception as exc:
                if not is_engine_death(exc, self):
                    raise
                if restarts >= self.cfg.max_restarts:
                    raise TeacherError(f"the vLLM engine died {restarts + 1} times (teacher.max_restarts="
                                       f"{self.cfg.max_restarts}): {type(exc).__name__}: {exc}") from exc
                reason = type(exc).__name__
            # restart outside the handler, so the dead engine's frames (held by the traceback) can be freed
            restarts += 1
            self.stats["engine_restarts"] = self.stats.get("engine_restarts", 0) + 1
            console.print(f"vllm: the engine died ({reason}); restarting it ({restarts}/{self.cfg.max_restarts}) "
                          f"and sending its {len(inflight)} prompts in flight again")
            self._stop()
            self._start()

    def _run(self, pending: Iterator[GenRequest | None], inflight: dict, params, window: int) -> Iterator[GenResult]:
        engine, stepper = self.llm.llm_engine, self._stepper
        for rid, (req, ids, _started) in inflight.items():  # after a restart: the dead engine's prompts again
            engine.add_request(rid, token_prompt(ids, req.prompt), params)

        def refill() -> None:
            while len(inflight) < window:
                req = next(pending, None)
                if req is None:
                    return
                if req.prompt is None:
                    raise TeacherError("the vllm backend takes templated text prompts")
                rid = f"{req.key}#{next(self._ids)}"
                ids = self.encode(req.prompt)
                inflight[rid] = (req, ids, time.perf_counter())
                engine.add_request(rid, token_prompt(ids, req.prompt), params)

        refill()
        try:
            while inflight:
                for out in stepper.call(engine.step):
                    if not out.finished or out.request_id not in inflight:
                        continue
                    req, ids, started = inflight.pop(out.request_id)
                    samples = [GenSample(text=c.text, finish_reason=c.finish_reason or "stop",
                                         completion_tokens=len(c.token_ids))
                               for c in sorted(out.outputs, key=lambda c: c.index)]
                    sent = list(out.prompt_token_ids or ids)
                    yield GenResult(key=req.key, samples=samples, prompt_tokens=len(sent), prompt_token_ids=sent,
                                    latency_s=time.perf_counter() - started)
                refill()
        except GeneratorExit:
            self._abort(engine, inflight)
            raise
        except BaseException:
            if self.alive():  # a live engine keeps serving: free its scheduler; a dead one is restarted
                self._abort(engine, inflight)
                inflight.clear()
            raise

    @staticmethod
    def _abort(engine, inflight: dict) -> None:
        if inflight:  # the consumer stopped early (error, KeyboardInterrupt): free the scheduler
            try:
                engine.abort_request(list(inflight))
            except Exception:
                pass
