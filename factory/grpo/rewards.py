"""GRPO's rewards: the verify stage's own functions (accuracy through `score_record`: the same extraction,
math-verify and code sandbox; format through `score_format`), the paper's language-consistency reward (curate's
`consistency_for`), or a user function `package.module:function(record) -> float`.

Every (sample, reward) pair is scored in a worker process under a hard deadline: a worker still busy at the
deadline is killed (SIGKILL) and replaced, and the pair scores 0 with verdict `timeout`, so a pathological answer
can never stall a training step. Workers run tasks in their main thread, so verify's own per-sample deadlines
(`setitimer`) stay enforced inside them; the kill is the backstop for what those cannot interrupt.
"""
from __future__ import annotations

import importlib
import logging
import multiprocessing as mp
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import wait

from factory.grpo.config import GRPOConfig
from factory.verify.config import VerifyConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Score:
    value: float
    verdict: str


def _custom(target: str) -> Callable[[dict], float]:
    module, _, function = target.partition(":")
    try:
        return getattr(importlib.import_module(module), function)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"grpo.rewards.{target}: cannot import {target!r} ({exc})") from exc


def score_one(name: str, record: dict, grpo: GRPOConfig, verify: VerifyConfig) -> Score:
    """One reward of one rollout record (a trace row: completion, reasoning, answer_text, answer, domain, ...)."""
    if name == "accuracy":
        from factory.verify.verdicts import score_record

        row = score_record(record, verify)
        return Score(row["reward_accuracy"], row["accuracy_verdict"])
    if name == "format":
        from factory.verify.rewards.format import score_format

        result = score_format(record.get("completion") or "", record.get("template"))
        return Score(result.reward, result.verdict)
    if name == "language":
        from factory.curate.config import LanguageConfig
        from factory.curate.filters.language import consistency_for

        lang = grpo.language
        target = lang.target or record.get("language") or lang.default_language
        config = LanguageConfig(method=lang.method, min_segment_words=lang.min_segment_words)
        return Score(float(consistency_for(record.get("reasoning") or "", target, config)), "scored")
    return Score(float(_custom(name)(record)), "scored")


def _worker(conn, grpo: GRPOConfig, verify: VerifyConfig) -> None:
    """A reward worker: says "ready" once its rewards are imported (the deadline counts from then), then
    (task id, reward name, record) in, (task id, value, verdict) out, until None."""
    import factory.verify.verdicts  # noqa: F401 - warm the imports before the first deadline starts

    for name in grpo.rewards:
        if ":" in name:
            _custom(name)
    conn.send("ready")
    while True:
        task = conn.recv()
        if task is None:
            return
        tid, name, record = task
        try:
            score = score_one(name, record, grpo, verify)
            conn.send((tid, score.value, score.verdict))
        except Exception as exc:  # noqa: BLE001 - a reward bug scores 0 and is logged, it does not stop training
            conn.send((tid, 0.0, f"error: {type(exc).__name__}: {exc}"[:200]))


class RewardPool:
    """Persistent reward workers (spawned: safe beside torch's threads) with a hard per-task deadline."""

    def __init__(self, grpo: GRPOConfig, verify: VerifyConfig, workers: int | None = None,
                 timeout_s: float | None = None):
        self.grpo, self.verify = grpo, verify
        self.timeout_s = timeout_s or grpo.reward_timeout_s
        self._ctx = mp.get_context("spawn")
        self._procs: list = [None] * (workers or grpo.reward_workers)
        self._conns: list = [None] * len(self._procs)
        self.timeouts = 0
        self._ready: set[int] = set()
        for i in range(len(self._procs)):
            self._start(i)

    def _start(self, i: int) -> None:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_worker, args=(child, self.grpo, self.verify), daemon=True,
                                 name=f"grpo-reward-{i}")
        proc.start()
        child.close()
        self._ready.discard(i)
        self._procs[i], self._conns[i] = proc, parent

    def _kill(self, i: int) -> None:
        self._procs[i].kill()
        self._procs[i].join()
        self._conns[i].close()
        self._start(i)

    def _starting(self, i: int) -> None:
        try:
            if self._conns[i].recv() == "ready":
                self._ready.add(i)
        except (EOFError, OSError) as exc:
            raise RuntimeError(f"a reward worker failed to start (exit code {self._procs[i].exitcode}); "
                               f"run one reward by hand to see why") from exc

    def score(self, tasks: list[tuple[str, dict]]) -> list[Score]:
        """Score (reward name, record) pairs, each under the deadline; results in task order."""
        results: list[Score | None] = [None] * len(tasks)
        pending = list(range(len(tasks)))[::-1]
        busy: dict[int, tuple[int, float]] = {}  # worker -> (task, started)
        while pending or busy:
            for i in range(len(self._procs)):
                if i in self._ready and i not in busy and pending:
                    tid = pending.pop()
                    self._conns[i].send((tid, *tasks[tid]))
                    busy[i] = (tid, time.monotonic())
            now = time.monotonic()
            wait_s = min((start + self.timeout_s - now for _, start in busy.values()), default=1.0)
            waiting = [i for i in range(len(self._procs)) if i in busy or i not in self._ready]
            ready = wait([self._conns[i] for i in waiting], timeout=max(0.0, wait_s))
            for i in waiting:
                if i not in busy:  # a (re)started worker reporting ready
                    if self._conns[i] in ready:
                        self._starting(i)
                    continue
                tid, start = busy[i]
                if self._conns[i] in ready:
                    try:
                        got, value, verdict = self._conns[i].recv()
                    except (EOFError, OSError):  # the worker died (e.g. out of memory): score 0, replace it
                        got, value, verdict = tid, 0.0, "worker_died"
                        self._kill(i)
                    results[got] = Score(float(value), verdict)
                    del busy[i]
                elif time.monotonic() - start >= self.timeout_s:
                    name, record = tasks[tid]
                    log.warning("reward %r on %s sample %s passed its %.1fs deadline: cut, scored 0", name,
                                record.get("prompt_id"), record.get("sample_idx"), self.timeout_s)
                    self.timeouts += 1
                    results[tid] = Score(0.0, "timeout")
                    del busy[i]
                    self._kill(i)
        return results  # type: ignore[return-value]

    def close(self) -> None:
        for i, proc in enumerate(self._procs):
            try:
                self._conns[i].send(None)
            except (BrokenPipeError, OSError):
                pass
            proc.join(timeout=2)
            if proc.is_alive():
                proc.kill()
                proc.join()

    def __enter__(self) -> RewardPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_rewards(grpo: GRPOConfig) -> None:
    """Custom reward targets must import, and the language reward's model must be there, before training."""
    from factory.grpo.checks import GRPOInputError

    for name in grpo.rewards:
        if ":" in name:
            try:
                _custom(name)
            except ValueError as exc:
                raise GRPOInputError(str(exc)) from None
    if "language" in grpo.rewards:
        from factory.curate.filters.language_lid import _model

        _model()
