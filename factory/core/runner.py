"""The map-stage runner: every input part becomes one work unit, run by an executor, committed here.

Unit i reads input part i and applies the stage's function; the executor decides where that runs
(`factory.core.executor`), and this module alone writes and commits what comes back (through `StageDir`), so the
exactly-once ledger does not depend on where a unit ran.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from factory.core.executor import Executor, LocalExecutor, WorkUnit
from factory.core.identity import upstream_identity
from factory.core.lock import stage_lock
from factory.core.progress import stage_progress
from factory.core.schema import Schema
from factory.core.shards import ShardResult, StageDir, fingerprint, list_parts, read_part, require_complete


def apply_to_part(fn: Callable[[list[dict]], ShardResult], in_part: str | pa.Table,
                  in_schema: str | None) -> ShardResult:
    """A map unit's work, wherever it runs: one input part (its path, or the table the driver read and shipped)
    and the stage's function applied to its rows."""
    table = in_part if isinstance(in_part, pa.Table) else read_part(Path(in_part), in_schema)
    return fn(table.to_pylist())


def run_map_stage(*, name: str, in_dir: Path, out_dir: Path, out_schema: Schema,
                  fn: Callable[[list[dict]], ShardResult], config: dict, in_schema: str | None = None,
                  rejected_schema: Schema | None = None, workers: int = 1, new_run: bool = False,
                  extra: dict | None = None, executor: Executor | None = None, prefix: str = "") -> dict:
    """Apply `fn` to every input part (unit i = input part i), committing each unit atomically as it finishes.

    The input stage must have finished; its identity (manifest fingerprint and part checksums) is part of the
    output's fingerprint, so a re-run input is refused downstream, naming it. `prefix` is the config block of
    `config`'s keys (e.g. "verify.") for that message. `executor` defaults to a `LocalExecutor(workers)`; `fn`
    must be picklable (a module-level function or a functools.partial of one) for any executor that runs units
    outside this process.
    """
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    require_complete(in_dir, reader=name)
    with stage_lock(out_dir):
        return _run_map_stage(name, in_dir, out_dir, out_schema, fn, config, in_schema, rejected_schema, workers,
                              new_run, extra, executor, prefix)


def _run_map_stage(name, in_dir, out_dir, out_schema, fn, config, in_schema, rejected_schema, workers, new_run,
                   extra, executor, prefix) -> dict:
    parts = list_parts(in_dir)
    plan = {"input": in_dir.name, "units": len(parts)}
    inputs = {in_dir.name: upstream_identity(in_dir)}
    stage = StageDir(out_dir, name, out_schema, rejected_schema)
    stage.prepare(fingerprint({"config": config, "plan": plan}), config, plan, new_run, inputs=inputs, prefix=prefix)
    done = stage.ledger()
    units = {int(p.stem.split("-")[1]): p for p in parts}
    executor = executor or LocalExecutor(workers)
    ship = not getattr(executor, "shares_filesystem", True)  # the driver reads parts for executors elsewhere

    def units_to_run():
        for u in sorted(units):
            if u not in done:
                source = read_part(units[u], in_schema) if ship else str(units[u])
                yield WorkUnit(u, apply_to_part, (fn, source, in_schema))

    records_in = sum(pq.read_metadata(p).num_rows for p in parts)
    with stage_progress(name, total_units=len(units), done_units=len(done)) as progress:
        for unit, result in executor.run(units_to_run()):
            entry = stage.commit_result(unit, result)
            progress.advance(rows=entry["rows"])
    return stage.finalize(records_in, extra)
