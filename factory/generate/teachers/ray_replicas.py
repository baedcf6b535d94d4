"""Teacher replicas on a Ray cluster: N vLLM engines as Ray actors behind the one `Teacher` protocol.

Each replica is the offline engine teacher (`VLLMTeacher`: the same prefix-sharing `n=k` requests, the scheduler
fed continuously) inside an actor. The driver keeps every live replica topped up with prompts (least in flight
first) and yields each prompt's result as it arrives; the generate stage commits results through its ledger on
the driver, so replicas never touch the run folder. A replica that dies (its process or its node killed) has its
in-flight prompts sent to the others and is replaced, up to `executor.max_retries` times; a prompt answered twice
(by a replica that died after answering) is yielded once.

Why actors of our own and not `ray.data.llm`: its processor is a Dataset transform whose results reach a sink
block by block, with Ray Data's own retries; the factory needs each prompt's samples back on the driver as they
finish, to commit shards exactly once through its ledger, and it needs to count and route around lost replicas.
"""
from __future__ import annotations

import os
import queue
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

from factory.core.config import ExecutorConfig
from factory.generate.config import SamplingConfig, VLLMTeacherConfig
from factory.generate.teachers.base import GenRequest, GenResult, TeacherError


class ReplicaWorker:
    """The actor's body: an engine thread pulls submitted prompts and pushes finished results."""

    def __init__(self, cfg: dict, seed: int):
        from factory.generate.teachers.vllm_offline import VLLMTeacher

        self.teacher = VLLMTeacher(VLLMTeacherConfig.model_validate(cfg), seed=seed)
        self.inbox: queue.Queue = queue.Queue()
        self.outbox: queue.Queue = queue.Queue()
        self.error: BaseException | None = None
        threading.Thread(target=self._loop, daemon=True).start()

    def info(self) -> dict:
        import ray

        return {"pid": os.getpid(), "node": ray.get_runtime_context().get_node_id()}

    def submit(self, requests: list[GenRequest], sampling: SamplingConfig) -> None:
        for req in requests:
            self.inbox.put((req, sampling))

    def shutdown(self) -> None:
        """Stop the engine (and its engine-core process) before the actor is killed, so none is left orphaned."""
        self.teacher.close()

    def collect(self, wait_s: float = 1.0) -> list[GenResult]:
        """Finished results (waiting up to `wait_s` for the first one)."""
        if self.error is not None:
            raise self.error
        out = []
        try:
            out.append(self.outbox.get(timeout=wait_s))
            while True:
                out.append(self.outbox.get_nowait())
        except queue.Empty:
            return out

    def _loop(self) -> None:
        try:
            while True:
                first, sampling = self.inbox.get()

                def pull() -> Iterator[GenRequest | None]:
                    yield first
                    while True:  # None: nothing more for now, the engine keeps stepping what it has
                        try:
                            yield self.inbox.get_nowait()[0]
                        except queue.Empty:
                            yield None

                for result in self.teacher.generate(pull(), sampling):
                    self.outbox.put(result)
        except BaseException as exc:  # surfaced by the next collect()
            self.error = exc


class RayTeacher:
    """`replicas` engines on the cluster; the tokenizer for templating is loaded on the driver."""

    def __init__(self, cfg: VLLMTeacherConfig, executor: ExecutorConfig, seed: int = 0):
        from factory.core.ray_cluster import cluster_gpus, connect
        from factory.generate.teachers.vllm_offline import resolve_model

        self.ray = connect(executor)
        self.cfg, self.executor, self.seed = cfg, executor, seed
        self.model_id = cfg.model if cfg.model != "embedded" else "HuggingFaceTB/SmolLM2-135M-Instruct"
        self.model_path = resolve_model(cfg.model)
        per_replica = cfg.tensor_parallel_size * int(cfg.engine_kwargs.get("pipeline_parallel_size", 1))
        gpus = executor.replica_gpus if executor.replica_gpus is not None else (per_replica if cluster_gpus() else 0)
        self.replicas_wanted = executor.replicas or max(1, int(cluster_gpus() // per_replica) if gpus else 1)
        self._actor_cls = self.ray.remote(ReplicaWorker).options(
            num_cpus=executor.replica_cpus, num_gpus=gpus, resources=executor.replica_resources or None,
            max_restarts=0, max_concurrency=4)
        self.stats = {"replicas": self.replicas_wanted, "replicas_lost": 0, "replicas_started": 0,
                      "requests_retried": 0}
        self.replicas = [self._start() for _ in range(self.replicas_wanted)]
        self._wait_ready(self.replicas)
        self._tokenizer = None

    def _start(self):
        local = self.cfg.model_copy(update={"model": self.model_path})
        self.stats["replicas_started"] += 1
        return self._actor_cls.remote(local.model_dump(mode="json"), self.seed)

    def _wait_ready(self, actors: list) -> None:
        try:
            self.infos = self.ray.get([a.info.remote() for a in actors])
        except Exception as exc:
            raise TeacherError(f"a teacher replica could not start {self.model_path}: {exc}") from exc

    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.cfg.tokenizer or self.model_path)
        return self._tokenizer

    def generate(self, requests: Iterable[GenRequest], sampling: SamplingConfig) -> Iterator[GenResult]:
        yield from _Dispatch(self, requests, sampling).run()

    def replace(self, dead) -> None:
        """Drop a dead replica and, within the restart budget, start another in its place."""
        self.replicas.remove(dead)
        self.stats["replicas_lost"] += 1
        if self.stats["replicas_started"] - self.replicas_wanted < self.executor.max_retries:
            fresh = self._start()
            self.replicas.append(fresh)
        if not self.replicas:
            raise TeacherError(f"every teacher replica died ({self.stats['replicas_lost']} lost, restart budget "
                               f"executor.max_retries={self.executor.max_retries} spent)")

    def close(self) -> None:
        """Shut every replica's engine down (bounded wait), then end the actors."""
        actors = getattr(self, "replicas", [])
        try:
            self.ray.get([a.shutdown.remote() for a in actors], timeout=60)
        except Exception:  # a replica already dead or stuck: killing it below is all that is left
            pass
        for actor in actors:
            try:
                self.ray.kill(actor)
            except Exception:
                pass
        self.replicas = []


class _Dispatch:
    """One generate call: keep replicas fed, gather results, re-route the prompts of replicas that die."""

    def __init__(self, teacher: RayTeacher, requests: Iterable[GenRequest], sampling: SamplingConfig):
        self.t, self.sampling = teacher, sampling
        self.pending = iter(requests)
        self.retry: deque[GenRequest] = deque()
        self.inflight: dict[Any, dict[str, GenRequest]] = {a: {} for a in teacher.replicas}
        self.polls: dict[Any, Any] = {}
        self.done: set[str] = set()
        self.per_replica = max(1, teacher.cfg.max_inflight or 1024)  # unset: each replica's engine sizes its own

    def _next(self) -> GenRequest | None:
        return self.retry.popleft() if self.retry else next(self.pending, None)

    def _top_up(self) -> None:
        """Hand out prompts one at a time to the live replica with the fewest in flight, then submit per replica."""
        batches: dict[Any, list[GenRequest]] = {a: [] for a in self.t.replicas}
        load = {a: len(self.inflight.setdefault(a, {})) for a in self.t.replicas}
        while load and min(load.values()) < self.per_replica and (req := self._next()) is not None:
            actor = min(load, key=load.get)
            batches[actor].append(req)
            load[actor] += 1
        for actor, batch in batches.items():
            if batch:
                self.inflight[actor].update({r.key: r for r in batch})
                actor.submit.remote(batch, self.sampling)

    def _lost(self, actor) -> None:
        lost = self.inflight.pop(actor, {})
        self.polls.pop(actor, None)
        self.t.stats["requests_retried"] += len(lost)
        self.retry.extend(r for k, r in lost.items() if k not in self.done)
        self.t.replace(actor)

    def run(self) -> Iterator[GenResult]:
        ray = self.t.ray
        self._top_up()
        while any(self.inflight.values()) or self.retry:
            for actor in self.t.replicas:
                if actor not in self.polls:
                    self.polls[actor] = actor.collect.remote()
            by_ref = {ref: actor for actor, ref in self.polls.items()}
            ready, _ = ray.wait(list(by_ref), num_returns=1, timeout=30)
            for ref in ready:
                actor = by_ref[ref]
                del self.polls[actor]
                try:
                    results = ray.get(ref)
                except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
                    self._lost(actor)
                    continue
                except ray.exceptions.RayTaskError as exc:
                    raise TeacherError(f"a teacher replica failed: {exc}") from exc
                for result in results:
                    self.inflight.get(actor, {}).pop(result.key, None)
                    if result.key not in self.done:
                        self.done.add(result.key)
                        yield result
            self._top_up()
            if not self.t.replicas:
                time.sleep(0.1)
