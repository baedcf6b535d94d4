"""Resharding curated Parquet into Hub-sized shards per config: the plan (rows, estimated bytes, lineage per
config, known before writing) and the writer that fills `train-XXXXX-of-YYYYY.parquet` files to it."""
from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from rich.console import Console
from rich.progress import Progress

from factory.core.schema import META_NAME, META_VERSION, Schema, SchemaError, check_shard_schema
from factory.publish.common import PublishError
from factory.publish.config import DatasetPublishConfig

ALL = "all"
REJECTED = "rejected"
_CONFIG_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Columns summarised on the card when the curated schema has them.
_LINEAGE_COLUMNS = ("source", "teacher", "num_tokens")


@dataclass
class ConfigPlan:
    """What one config will hold, known before writing: rows, estimated Arrow bytes, lineage counts."""

    rows: int = 0
    est_bytes: float = 0.0
    lineage: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    token_sum: float = 0.0
    token_rows: int = 0

    @property
    def mean_tokens(self) -> float | None:
        return self.token_sum / self.token_rows if self.token_rows else None


def check_uniform_schema(shards: list[Path], expected: str | None) -> Schema:
    """The one schema all `shards` carry; a PublishError names the shards when versions are missing or mixed."""
    seen: dict[tuple[str, str], list[Path]] = defaultdict(list)
    for path in shards:
        meta = pq.read_schema(path).metadata or {}
        if META_NAME not in meta or META_VERSION not in meta:
            raise PublishError(f"{path}: no factory schema version in its Parquet metadata (not written by factory?)")
        seen[(meta[META_NAME].decode(), meta[META_VERSION].decode())].append(path)
    if len(seen) > 1:
        detail = "; ".join(f"{name} v{ver}: {len(paths)} shard(s), e.g. {paths[0].name}"
                           for (name, ver), paths in sorted(seen.items()))
        raise PublishError(f"{shards[0].parent}: shards of mixed schemas/versions ({detail}); "
                           f"rerun the stage that wrote them so all carry one version")
    try:
        return check_shard_schema(shards[0], pq.read_schema(shards[0]), expected=expected)
    except SchemaError as exc:
        raise PublishError(str(exc)) from exc


def _column_bytes(pf: pq.ParquetFile, columns: list[str]) -> int:
    """Uncompressed bytes of `columns` in a Parquet file, from its footer (nothing is read)."""
    md = pf.metadata
    wanted = set(columns)
    total = 0
    for rg in range(md.num_row_groups):
        group = md.row_group(rg)
        for c in range(group.num_columns):
            col = group.column(c)
            if col.path_in_schema.split(".")[0] in wanted:
                total += col.total_uncompressed_size
    return total


def plan_configs(shards: list[Path], split_by: str | None, columns: list[str]) -> dict[str, ConfigPlan]:
    """Rows, size estimate and lineage counts per split value, reading only the small lineage columns."""
    plans: dict[str, ConfigPlan] = defaultdict(ConfigPlan)
    for path in shards:
        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
        wanted = [c for c in ([split_by] if split_by else []) + list(_LINEAGE_COLUMNS) if c in names]
        table = pf.read(columns=wanted)
        if table.num_rows == 0:
            continue
        file_bytes = _column_bytes(pf, columns)
        if split_by:
            keys = table[split_by].to_pylist()
            missing = next((i for i, k in enumerate(keys) if k in (None, "")), None)
            if missing is not None:
                raise PublishError(f"{path}: record {missing} has no {split_by!r}; cannot assign it to a config "
                                   f"(set publish.dataset.split_by to another column, or null for one config)")
        else:
            keys = [ALL] * table.num_rows
        counts = Counter(keys)
        for key, n in counts.items():
            plan = plans[key]
            plan.rows += n
            plan.est_bytes += file_bytes * n / table.num_rows
        lineage = {c: table[c].to_pylist() for c in ("source", "teacher") if c in wanted}
        tokens = table["num_tokens"].to_pylist() if "num_tokens" in wanted else None
        for i, key in enumerate(keys):
            for col, values in lineage.items():
                plans[key].lineage[col][values[i]] += 1
            if tokens is not None and tokens[i] is not None:
                plans[key].token_sum += tokens[i]
                plans[key].token_rows += 1
    for key in plans:
        if key in (ALL, REJECTED) and split_by:
            raise PublishError(f"{split_by!r} value {key!r} collides with the reserved config {key!r}; rename it")
        if not _CONFIG_NAME.match(str(key)):
            raise PublishError(f"{split_by!r} value {key!r} cannot name a config (letters, digits, '_', '.', '-')")
    return dict(sorted(plans.items()))


def _quotas(rows: int, est_bytes: float, target_bytes: float) -> list[int]:
    """Rows per shard: as many shards as the size estimate asks for, rows spread evenly (none empty)."""
    n = max(1, min(rows, math.ceil(est_bytes / target_bytes)))
    base, extra = divmod(rows, n)
    return [base + (1 if i < extra else 0) for i in range(n)]


class _ShardSeq:
    """Writes one config's rows into `<prefix>-XXXXX-of-YYYYY.parquet` files of fixed row quotas.

    Rows arrive in small pieces (one input batch split across configs); they are buffered up to a full row group so
    the shards get row groups of `row_group_rows` rows, not one per piece.
    """

    def __init__(self, folder: Path, prefix: str, quotas: list[int], schema: pa.Schema, row_group_rows: int):
        self.folder, self.prefix, self.quotas, self.schema = folder, prefix, quotas, schema
        self.row_group_rows = row_group_rows
        self.index, self.left, self.writer = -1, 0, None
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.bytes = 0
        folder.mkdir(parents=True, exist_ok=True)

    def _next(self) -> None:
        self.close()
        self.index += 1
        self.left = self.quotas[self.index]
        name = f"{self.prefix}-{self.index:05d}-of-{len(self.quotas):05d}.parquet"
        self.writer = pq.ParquetWriter(self.folder / name, self.schema, compression="zstd")

    def _flush(self, final: bool = False) -> None:
        """Write the buffered rows in whole row groups; the remainder too when the shard is `final`."""
        if not self.pending_rows:
            return
        table = pa.concat_tables(self.pending)
        n = table.num_rows if final else table.num_rows - table.num_rows % self.row_group_rows
        if n:
            self.writer.write_table(table.slice(0, n), row_group_size=self.row_group_rows)
        rest = table.slice(n)
        self.pending, self.pending_rows = ([rest] if rest.num_rows else []), rest.num_rows

    def write(self, table: pa.Table) -> None:
        self.bytes += table.nbytes
        while table.num_rows:
            if self.left == 0:
                self._next()
            take = min(self.left, table.num_rows)
            self.pending.append(table.slice(0, take))
            self.pending_rows += take
            self.left -= take
            table = table.slice(take)
            if self.left == 0:
                self._flush(final=True)
            elif self.pending_rows >= self.row_group_rows:
                self._flush()

    def close(self) -> None:
        if self.writer is not None:
            self._flush(final=True)
            self.writer.close()
            self.writer = None

    @property
    def complete(self) -> bool:
        return self.index == len(self.quotas) - 1 and self.left == 0


def _reshard(shards: list[Path], folder: Path, plans: dict[str, ConfigPlan], split_by: str | None,
             columns: list[str], schema: pa.Schema, cfg: DatasetPublishConfig, prefix: str,
             label: str) -> dict[str, int]:
    """One pass over the input shards routing every row to its config's shard sequence; returns Arrow bytes."""
    target = cfg.shard_size_mb * 1e6
    seqs = {key: _ShardSeq(folder / "data" / key, prefix, _quotas(p.rows, p.est_bytes, target), schema,
                           cfg.row_group_rows) for key, p in plans.items()}
    total = sum(p.rows for p in plans.values())
    read = columns + ([split_by] if split_by and split_by not in columns else [])
    with Progress(transient=True, console=Console(stderr=True)) as progress:
        task = progress.add_task(f"publish: resharding {label}", total=total)
        for path in shards:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=cfg.row_group_rows, columns=read):
                table = pa.Table.from_batches([batch])
                if split_by:
                    keys = table[split_by]
                    table = table.select(columns).cast(schema)
                    for key in pc.unique(keys).to_pylist():
                        seqs[key].write(table.filter(pc.equal(keys, key)))
                else:
                    seqs[ALL].write(table.select(columns).cast(schema))
                progress.advance(task, batch.num_rows)
    for key, seq in seqs.items():
        seq.close()
        if not seq.complete:  # the plan and the data disagree: inputs changed while we read them
            raise PublishError(f"{shards[0].parent}: shards changed while publishing (config {key!r}); rerun")
    return {key: seq.bytes for key, seq in seqs.items()}


def _output_schema(schema: Schema, columns: list[str]) -> pa.Schema:
    """The published columns, keeping field docs and the factory schema name/version as lineage."""
    fields = [schema.arrow.field(c) for c in columns]
    return pa.schema(fields, metadata=schema.with_metadata().metadata)
