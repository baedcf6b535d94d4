"""Where work units run: the executor seam under the shard runner.

The runner hands an executor picklable work units and commits what comes back; an executor only decides where a
unit's function runs (this process, a pool of spawned processes, later a cluster) and never touches the run folder,
so committing — the ledger, the atomic renames — stays in one place whatever runs the units.
"""
from __future__ import annotations

import itertools
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
        units = iter(units)  # pulled as slots free: a unit may carry its input
        head = list(itertools.islice(units, 2))
        if self.workers == 1 or len(head) < 2:  # one unit is not worth starting processes for
            for unit in itertools.chain(head, units):
                yield unit.index, unit()
            return
        units = itertools.chain(head, units)
        with ProcessPoolExecutor(max_workers=self.workers, mp_context=mp.get_context("spawn")) as pool:
            running: dict[Future, int] = {}
            while True:
                while len(running) < 2 * self.workers and (unit := next(units, None)) is not None:
                    running[pool.submit(unit.fn, *unit.args)] = unit.index
                if not running:
                    return
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    yield running.pop(future), future.result()
