"""OpenAI-compatible server teacher (`vllm serve`, SGLang, hosted APIs).

Async with bounded concurrency; retries with exponential backoff and jitter on 429, 5xx, timeouts and dropped
connections; a request that still fails is recorded as `finish_reason="error"` samples with the reason, never
dropped. A separate `reasoning_content` (vLLM's reasoning parser, DeepSeek's API) is folded back into the
`<think>…</think>` form the rest of the factory reads.
"""
from __future__ import annotations

import asyncio
import os
import queue
import random
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import httpx

from factory.generate.config import OpenAITeacherConfig, SamplingConfig
from factory.generate.teachers.base import GenRequest, GenResult, GenSample, TeacherError
from factory.generate.teachers.endpoints import Endpoints

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
_DONE = object()


class _Fatal(Exception):
    """A response that retrying cannot fix (4xx other than rate limits)."""


class OpenAITeacher:
    def __init__(self, cfg: OpenAITeacherConfig):
        self.cfg = cfg
        self.model_id = cfg.model
        self.endpoints = Endpoints(cfg.urls, cooldown_s=cfg.backoff_s)
        key = os.environ.get(cfg.api_key_env)
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._tokenizer = None
        if cfg.tokenizer:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer)
        elif cfg.api == "completions":
            raise TeacherError("teacher.tokenizer is required with api=completions (prompts are templated locally)")
        self._check_reachable()

    def tokenizer(self):
        return self._tokenizer

    @property
    def stats(self) -> dict:
        return self.endpoints.stats() if len(self.endpoints.table) > 1 else {}

    def _check_reachable(self) -> None:
        """Wait (with backoff) until at least one endpoint answers; the others start benched and are tried again
        after their cooldown."""
        delay = self.cfg.backoff_s
        last: dict[str, str] = {}
        for attempt in range(self.cfg.connect_retries + 1):
            for ep in self.endpoints.table:
                try:
                    r = httpx.get(f"{ep.url}/models", headers=self.headers, timeout=10)
                    if r.status_code < 500:
                        self.endpoints.succeeded(ep)
                        continue
                    last[ep.url] = f"HTTP {r.status_code}"
                except httpx.HTTPError as exc:
                    last[ep.url] = f"{type(exc).__name__}: {exc}"
                self.endpoints.failed(ep)
            if len(last) < len(self.endpoints.table) or not last:
                return
            if attempt < self.cfg.connect_retries:
                time.sleep(delay)
                delay = min(delay * 2, 30)
                last = {}
        where = "; ".join(f"{url} ({why})" for url, why in last.items())
        raise TeacherError(f"cannot reach the teacher server at {where} after {self.cfg.connect_retries + 1} tries")

    # -- one request ----------------------------------------------------------------------------------------
    def _payload(self, req: GenRequest, sampling: SamplingConfig, n: int) -> tuple[str, dict]:
        body: dict[str, Any] = {"model": self.cfg.model, "n": n, "temperature": sampling.temperature,
                                "top_p": sampling.top_p, "max_tokens": sampling.max_tokens, **sampling.extra}
        if self.cfg.api == "completions":
            return "/completions", {**body, "prompt": req.prompt}
        messages = list(req.messages or [])
        if req.prefill and self.cfg.prefill_think:
            messages.append({"role": "assistant", "content": req.prefill})
            body.update(continue_final_message=True, add_generation_prompt=False)
        return "/chat/completions", {**body, "messages": messages}

    async def _post(self, client: httpx.AsyncClient, path: str, body: dict) -> dict:
        """POST to the least-loaded healthy endpoint; a failed try is benched and retried on another one at once
        (a failover), or after backoff when it is the only endpoint up."""
        delay, previous = self.cfg.backoff_s, None
        for attempt in range(self.cfg.max_retries + 1):
            ep, wait_s = self.endpoints.pick(exclude=previous)
            if wait_s:
                await asyncio.sleep(wait_s)
            ep.inflight += 1
            try:
                r = await client.post(f"{ep.url}{path}", json=body, headers=self.headers)
                if r.status_code == 200:
                    self.endpoints.succeeded(ep)
                    return r.json()
                if r.status_code not in RETRY_STATUS:
                    raise _Fatal(f"HTTP {r.status_code}: {r.text[:300]}")
                reason = f"HTTP {r.status_code} from {ep.url}"
                retry_after = r.headers.get("retry-after")
                if retry_after and retry_after.replace(".", "", 1).isdigit():
                    delay = max(delay, float(retry_after))
                elif r.status_code >= 500:
                    self.endpoints.failed(ep)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                reason = f"{type(exc).__name__} from {ep.url}: {exc}"
                self.endpoints.failed(ep)
            finally:
                ep.inflight -= 1
            if attempt == self.cfg.max_retries:
                raise RuntimeError(f"gave up after {attempt + 1} tries: {reason}")
            previous = ep
            if self.endpoints.has_other_healthy(ep):
                self.endpoints.failovers += 1
                continue
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 60)
        raise AssertionError("unreachable")

    def _samples(self, data: dict) -> list[GenSample]:
        out = []
        choices = sorted(data.get("choices", []), key=lambda c: c.get("index", 0))
        usage = data.get("usage") or {}
        for c in choices:
            if self.cfg.api == "completions":
                text, reasoning = c.get("text", ""), None
            else:
                msg = c.get("message") or {}
                text = msg.get("content") or ""
                reasoning = msg.get("reasoning_content") or msg.get("reasoning")
            tokens = self._count(text if reasoning is None else reasoning + text)
            if tokens is None:  # no local tokenizer: share the reported total evenly
                tokens = int(usage.get("completion_tokens", 0)) // max(len(choices), 1)
            out.append(GenSample(text=text, finish_reason=c.get("finish_reason") or "stop",
                                 completion_tokens=tokens, reasoning=reasoning))
        return out

    def _count(self, text: str) -> int | None:
        if self._tokenizer is None:
            return None
        return len(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    async def _one(self, client, sem, req: GenRequest, sampling: SamplingConfig) -> GenResult:
        async with sem:
            started = time.perf_counter()
            calls = [sampling.n] if self.cfg.n_per_request else [1] * sampling.n
            samples: list[GenSample] = []
            prompt_tokens = 0
            for n in calls:
                path, body = self._payload(req, sampling, n)
                try:
                    data = await self._post(client, path, body)
                    got = self._samples(data)
                    prompt_tokens = int((data.get("usage") or {}).get("prompt_tokens", prompt_tokens))
                    if len(got) != n:
                        raise RuntimeError(f"asked for {n} choices, got {len(got)}")
                    samples.extend(got)
                except Exception as exc:  # recorded per request, never silently dropped
                    samples.extend(GenSample(text="", finish_reason="error", completion_tokens=0,
                                             error=f"{type(exc).__name__}: {exc}") for _ in range(n))
            return GenResult(key=req.key, samples=samples, prompt_tokens=prompt_tokens,
                             latency_s=time.perf_counter() - started)

    # -- the stream -----------------------------------------------------------------------------------------
    def generate(self, requests: Iterable[GenRequest], sampling: SamplingConfig) -> Iterator[GenResult]:
        out: queue.Queue = queue.Queue(maxsize=4 * self.cfg.concurrency)
        stop = threading.Event()

        async def main() -> None:
            sem = asyncio.Semaphore(self.cfg.concurrency)
            limits = httpx.Limits(max_connections=self.cfg.concurrency)
            async with httpx.AsyncClient(timeout=self.cfg.timeout_s, limits=limits) as client:
                tasks: set[asyncio.Task] = set()
                for req in requests:
                    if stop.is_set():
                        break
                    while len(tasks) >= 2 * self.cfg.concurrency:
                        done, tasks = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                        for t in done:
                            await asyncio.to_thread(out.put, t.result())
                    tasks.add(asyncio.create_task(self._one(client, sem, req, sampling)))
                for t in asyncio.as_completed(tasks):
                    await asyncio.to_thread(out.put, await t)

        def runner() -> None:
            try:
                asyncio.run(main())
            except BaseException as exc:  # surfaced in the consumer's thread
                out.put(exc)
            finally:
                out.put(_DONE)

        thread = threading.Thread(target=runner, daemon=True)
        thread.start()
        try:
            while True:
                item = out.get()
                if item is _DONE:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            while thread.is_alive():  # drain so the producer can finish
                try:
                    out.get(timeout=0.1)
                except queue.Empty:
                    pass

    def close(self) -> None:
        pass
