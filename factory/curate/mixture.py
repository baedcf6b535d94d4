"""Mixture: combine curated sets (e.g. reasoning and general/non-reasoning, like the R1 paper's ~600k + ~200k) to
target counts or ratios, as curated shards with the components interleaved.

Each component's rows are sampled by index without replacement (or repeated whole, then sampled, when
`allow_upsample`), chosen from the row counts in the Parquet footers without reading the data. Output shard j takes
its share of every component, so each shard has the target ratio; rows are shuffled within a shard. Memory holds
the chosen indices and one output shard, never a whole component.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, model_validator

from factory.core.schema import check_shard_schema, load_schema
from factory.core.shards import write_table_atomic, write_text_atomic


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


def _shards(path: Path) -> list[Path]:
    shards = sorted(Path(path).glob("part-*.parquet"))
    if not shards:
        raise MixtureError(f"{path}: no part-*.parquet shards (not a curated folder?)")
    return shards


def _available(shards: list[Path]) -> int:
    total = 0
    for s in shards:
        pf = pq.ParquetFile(s)
        check_shard_schema(s, pf.schema_arrow, expected="curated")
        total += pf.metadata.num_rows
    return total


def _split(total: int, weights: list[float]) -> list[int]:
    """Integer shares of `total` by weight, summing to `total` (largest remainder)."""
    raw = [total * w / sum(weights) for w in weights]
    counts = [math.floor(r) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: counts[i] - raw[i])[: total - sum(counts)]:
        counts[i] += 1
    return counts


def plan(config: MixtureConfig) -> list[dict]:
    """Per component: name, path, available rows, rows to take."""
    rows = []
    for c in config.components:
        avail = _available(_shards(Path(c.path)))
        folder = Path(c.path).resolve()
        default = folder.parent.name if folder.name == "curate" else folder.name
        rows.append({"name": c.name or default, "path": c.path, "available": avail})
    names = [r["name"] for r in rows]
    if len(set(names)) != len(names):
        raise MixtureError(f"component names must be unique, got {names}; set `name`")
    comps = config.components
    if comps[0].count is not None:
        targets = [c.count for c in comps]
    elif comps[0].weight is not None:
        weights = [c.weight for c in comps]
        total = config.total
        if total is None:
            total = int(min(r["available"] * sum(weights) / w for r, w in zip(rows, weights)))
        targets = _split(total, weights)
    else:
        targets = [r["available"] for r in rows]
    for r, t in zip(rows, targets):
        if t > r["available"] and not config.allow_upsample:
            raise MixtureError(f"component {r['name']}: {t} samples wanted but {r['path']} has {r['available']}; "
                               f"lower the target or set allow_upsample")
        if t > 0 and r["available"] == 0:
            raise MixtureError(f"component {r['name']}: {r['path']} holds no samples")
        r["taken"] = t
    return rows


def _choose(available: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted row indices: whole repeats when count > available, then a sample without replacement."""
    repeats, rest = divmod(count, available) if available else (0, 0)
    parts = [np.arange(available)] * repeats + [rng.choice(available, size=rest, replace=False)]
    return np.sort(np.concatenate(parts))


def _stream(shards: list[Path], chosen: np.ndarray, schema: pa.Schema) -> Iterator[pa.Table]:
    """The chosen rows (repeats included) in order, as tables."""
    offset = 0
    for s in shards:
        pf = pq.ParquetFile(s)
        for batch in pf.iter_batches(batch_size=8192):
            lo, hi = np.searchsorted(chosen, [offset, offset + batch.num_rows])
            if hi > lo:
                yield pa.Table.from_batches([batch]).take(pa.array(chosen[lo:hi] - offset)).cast(schema)
            offset += batch.num_rows


class _Taker:
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


def build_mixture(config: MixtureConfig, out_dir: Path) -> dict:
    """Write the mixture's shards and `mixture.json` into out_dir; return the summary."""
    out_dir = Path(out_dir)
    rows = plan(config)
    total = sum(r["taken"] for r in rows)
    if total == 0:
        raise MixtureError("the mixture would be empty")
    fingerprint = hashlib.sha256(config.model_dump_json().encode()).hexdigest()[:16]
    summary_path = out_dir / "mixture.json"
    if summary_path.exists() and json.loads(summary_path.read_text()).get("fingerprint") == fingerprint:
        return json.loads(summary_path.read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("part-*.parquet"):
        old.unlink()
    curated = load_schema("curated")
    schema = curated.with_metadata()
    rng = np.random.default_rng(config.seed)
    takers = [_Taker(_stream(_shards(Path(r["path"])), _choose(r["available"], r["taken"], rng), schema))
              for r in rows]
    n_shards = math.ceil(total / config.shard_rows)
    for j in range(n_shards):
        parts = []
        for r, taker in zip(rows, takers):
            n = r["taken"] * (j + 1) // n_shards - r["taken"] * j // n_shards
            part = taker.take(n)
            if part is not None:
                parts.append(part)
        shard = pa.concat_tables(parts)
        shard = shard.take(pa.array(rng.permutation(shard.num_rows)))
        write_table_atomic(out_dir / f"part-{j:05d}.parquet", shard)
    summary = {"stage": "mixture", "records_out": total, "shards": n_shards, "seed": config.seed,
               "fingerprint": fingerprint,
               "components": [{**r, "share": round(r["taken"] / total, 6)} for r in rows]}
    write_text_atomic(summary_path, json.dumps(summary, indent=2) + "\n")
    return summary
