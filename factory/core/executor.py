"""Where work units run: the executor seam under the shard runner.

The runner hands an executor picklable work units and commits what comes back; an executor only decides where a
unit's function runs (this process, a pool of spawned processes, later a cluster) and never touches the run folder,
so committing — the ledger, the atomic renames — stays in one place whatever runs the units.
"""
from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class WorkUnit:
    """Unit `index` of a stage: `fn(*args)` computes its result (both picklable for executors that ship them)."""

    index: int
    fn: Callable[..., Any]
    args: tuple = ()

    def __call__(self) -> Any:
        return self.fn(*self.args)


class Executor(Protocol):
    def run(self, units: Iterable[WorkUnit]) -> Iterator[tuple[int, Any]]:
        """Run every unit; yield (unit index, result) as each finishes, in any order."""


class LocalExecutor:
    """This machine: in this process when `workers` is 1 (or there is one unit), else `workers` spawned processes
    (never forked: the parent may hold an inference engine) with at most 2 units per worker in flight."""

    def __init__(self, workers: int = 1):
        self.workers = max(1, workers)

    def run(self, units: Iterable[WorkUnit]) -> Iterator[tuple[int, Any]]:
        queue = list(units)
        if self.workers == 1 or len(queue) <= 1:
            for unit in queue:
                yield unit.index, unit()
            return
        with ProcessPoolExecutor(max_workers=self.workers, mp_context=mp.get_context("spawn")) as pool:
            running: dict[Future, int] = {}
            while queue or running:
                while queue and len(running) < 2 * self.workers:
                    unit = queue.pop(0)
                    running[pool.submit(unit.fn, *unit.args)] = unit.index
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    yield running.pop(future), future.result()
