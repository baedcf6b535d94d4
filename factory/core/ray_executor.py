"""The Ray executor: map-stage units (verify, curate's filter pass) as Ray tasks across the cluster.

Tasks compute; they never write into the run folder: each result comes back to the driver, where the shard runner
commits it through the one ledger, so a run folder need not be on a shared filesystem and a task that died and
was retried by Ray (`max_retries`) cannot commit twice.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from factory.core.config import ExecutorConfig
from factory.core.executor import WorkUnit
from factory.core.ray_cluster import cluster_cpus, connect


def _run_unit(unit: WorkUnit) -> Any:
    return unit()


class RayExecutor:
    """Units as Ray tasks with `task_cpus` each, at most `tasks_in_flight` at once, yielded as they finish."""

    def __init__(self, cfg: ExecutorConfig):
        self.cfg = cfg
        self.ray = connect(cfg)
        self.shares_filesystem = cfg.shared_filesystem
        self._remote = self.ray.remote(_run_unit).options(num_cpus=cfg.task_cpus, max_retries=cfg.max_retries)

    def run(self, units: Iterable[WorkUnit]) -> Iterator[tuple[int, Any]]:
        units = iter(units)  # pulled as slots free: a unit may carry its input
        limit = self.cfg.tasks_in_flight or max(2, int(2 * cluster_cpus() / self.cfg.task_cpus))
        running: dict[Any, int] = {}
        while True:
            while len(running) < limit and (unit := next(units, None)) is not None:
                running[self._remote.remote(unit)] = unit.index
            if not running:
                return
            finished, _ = self.ray.wait(list(running), num_returns=1)
            for ref in finished:
                yield running.pop(ref), self.ray.get(ref)

def make_executor(cfg: ExecutorConfig | None, workers: int = 1):
    """The executor of a pipeline's `executor:` block (absent or `local`: this machine with `workers` processes)."""
    from factory.core.executor import LocalExecutor

    if cfg is None or cfg.kind == "local":
        return LocalExecutor(workers)
    return RayExecutor(cfg)
