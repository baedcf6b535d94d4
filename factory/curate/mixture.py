"""Mixture: combine curated sets (e.g. reasoning and general/non-reasoning, like the R1 paper's ~600k + ~200k) to
target counts or ratios, with the components interleaved. The Python face of `factory mix` (factory/mix/, which
builds on the sampling and interleaving here).

Each component's rows are sampled by index without replacement (or repeated whole, then sampled, when
`allow_upsample`), chosen from the row counts in the Parquet footers without reading the data. Output shard j takes
its share of every component, so each shard has the target ratio; rows are shuffled within a shard. Memory holds
the chosen indices and one output shard, never a whole component.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, model_validator


class MixtureError(ValueError):
    """The mixture cannot be built as asked."""


class MixComponent(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str                                   # a curated folder (part-*.parquet)
    name: str | None = None                     # default: the folder name (the run's name for DIR/curate)
    count: int | None = Field(None, ge=0)       # exact number of samples ...
    weight: float | None = Field(None, gt=0)    # ... or a share of `total` (weights are normalized)

    @model_validator(mode="after")
    def _one_target(self) -> MixComponent:
        if self.count is not None and self.weight is not None:
            raise ValueError(f"component {self.path}: give `count` or `weight`, not both")
        return self


class MixtureConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    components: list[MixComponent] = Field(min_length=1)
    # With weights: the total size; None takes the largest total every component can supply without repeats.
    total: int | None = Field(None, ge=1)
    allow_upsample: bool = False                # a component may be asked for more rows than it has
    seed: int = 0
    shard_rows: int = Field(50_000, ge=1)

    @model_validator(mode="after")
    def _same_kind(self) -> MixtureConfig:
        kinds = {"count" if c.count is not None else "weight" if c.weight is not None else "all"
                 for c in self.components}
        if len(kinds) > 1:
            raise ValueError(f"components must all use `count`, all use `weight`, or all neither; got {sorted(kinds)}")
        if kinds != {"weight"} and self.total is not None:
            raise ValueError("`total` applies only to weighted components")
        return self


def split_counts(total: int, weights: list[float]) -> list[int]:
    """Integer shares of `total` by weight, summing to `total` (largest remainder)."""
    raw = [total * w / sum(weights) for w in weights]
    counts = [math.floor(r) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: counts[i] - raw[i])[: total - sum(counts)]:
        counts[i] += 1
    return counts



def largest_total(available: list[int], weights: list[float]) -> int:
    """The largest total whose shares by weight every component can supply without repeats."""
    return int(min(a * sum(weights) / w for a, w in zip(available, weights)))


def _mix_config(config: MixtureConfig):
    from factory.mix.config import MixConfig

    return MixConfig(sources=[c.model_dump(exclude_none=True) for c in config.components], total=config.total,
                     allow_upsample=config.allow_upsample, seed=config.seed, shard_rows=config.shard_rows)


def plan(config: MixtureConfig) -> list[dict]:
    """Per component: name, path, available rows, rows to take (the `factory mix` plan)."""
    from factory.mix.stage import plan as mix_plan

    sources, targets = mix_plan(_mix_config(config))
    return [{"name": s.name, "path": str(s.path), "available": s.available, "taken": t}
            for s, t in zip(sources, targets)]


def choose_rows(available: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted row indices: whole repeats when count > available, then a sample without replacement."""
    repeats, rest = divmod(count, available) if available else (0, 0)
    parts = [np.arange(available)] * repeats + [rng.choice(available, size=rest, replace=False)]
    return np.sort(np.concatenate(parts))



class Taker:
    """Pulls exactly n rows at a time from a stream of tables."""

    def __init__(self, tables: Iterator[pa.Table]):
        self.tables, self.buf = tables, []
        self.buffered = 0

    def take(self, n: int) -> pa.Table | None:
        while self.buffered < n:
            t = next(self.tables)
            self.buf.append(t)
            self.buffered += t.num_rows
        if n == 0:
            return None
        whole = pa.concat_tables(self.buf)
        self.buf, self.buffered = [whole.slice(n)], whole.num_rows - n
        return whole.slice(0, n)


def interleave(takers: list[Taker], targets: list[int], shard_rows: int,
               rng: np.random.Generator) -> Iterator[pa.Table]:
    """The output shards: shard j takes its share of every component (so each has the target ratio), rows shuffled
    within the shard by `rng`. Holds one output shard in memory."""
    total = sum(targets)
    n_shards = math.ceil(total / shard_rows)
    for j in range(n_shards):
        parts = [taker.take(t * (j + 1) // n_shards - t * j // n_shards) for t, taker in zip(targets, takers)]
        shard = pa.concat_tables([p for p in parts if p is not None])
        yield shard.take(pa.array(rng.permutation(shard.num_rows)))


def build_mixture(config: MixtureConfig, out_dir: Path, *, new_run: bool = False) -> dict:
    """Write the mixture into out_dir through `factory mix` (shards of schema `mixed`, with lineage; `mixture.json`);
    return the summary. The same config again is a no-op; a changed one is refused unless `new_run`."""
    from factory.mix.stage import mix_stage

    mix_stage(_mix_config(config), Path(out_dir), new_run=new_run)
    return json.loads((Path(out_dir) / "mixture.json").read_text())
