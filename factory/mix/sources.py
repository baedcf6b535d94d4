"""A mixture source: a curate folder (or a run folder's curate/) or a `messages` JSONL export, counted without
holding it and streamed as `mixed` tables (curated fields + lineage) of the chosen rows only."""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from factory.core.schema import check_shard_schema, load_schema
from factory.curate.mixture import MixtureError

BATCH = 8192
MIXED = "mixed"


@dataclass
class Source:
    """One resolved source: its files and, per file, how many of its rows are eligible."""

    index: int
    name: str
    path: Path
    kind: str                      # "curated" | "messages"
    run: str | None
    filters: dict[str, list[str]] | None
    files: list[Path]
    eligible: list[int] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"mix.sources[{self.index}] ({self.name})"

    @property
    def available(self) -> int:
        return sum(self.eligible)

    def describe(self) -> dict:
        """What the fingerprint sees of the input: every file with its size."""
        return {"path": str(self.path), "kind": self.kind, "filters": self.filters,
                "files": [[f.name, f.stat().st_size] for f in self.files]}


def resolve(index: int, spec, run_dir: Path | None) -> Source:
    """The source of config item `spec` (a MixSource); unknown paths and folders without shards are errors."""
    where = f"mix.sources[{index}]"
    if spec.path is None:
        if run_dir is None:
            raise MixtureError(f"{where}: no `path` (only a pipeline's own run has a curate/ folder to default to)")
        path = Path(run_dir) / "curate"
    else:
        path = Path(spec.path)
    path = path.absolute()
    if not path.exists():
        raise MixtureError(f"{where}: {path}: no such file or folder, so no part-*.parquet shards to mix (expected "
                           f"a curate folder, a run folder, or a messages .jsonl export)")
    if path.is_file():
        if path.suffix != ".jsonl":
            raise MixtureError(f"{where}: {path}: expected a curate folder or a messages .jsonl export")
        if spec.filters:
            raise MixtureError(f"{where}: `domains`/`where` need a curated source; {path} is a messages export")
        return Source(index, spec.name or path.stem, path, "messages", None, None, [path])
    if not any(path.glob("part-*.parquet")) and (path / "curate").is_dir():
        path = path / "curate"  # a run folder
    files = sorted(path.glob("part-*.parquet"))
    if not files:
        raise MixtureError(f"{where}: {path}: no part-*.parquet shards (not a curate folder?)")
    if not (path / "counts.json").exists():
        raise MixtureError(f"{where}: {path}: the curate stage has not finished (no counts.json); rerun it first")
    folder = path.resolve()
    run = folder.parent.name if folder.name == "curate" else folder.name
    return Source(index, spec.name or run, path, "curated", run, spec.filters, files)


def count(source: Source) -> Source:
    """Fill `source.eligible` from Parquet footers (the filtered columns only, with `domains`/`where`; the lines of
    a JSONL)."""
    if source.kind == "messages":
        with source.path.open("rb") as fh:
            source.eligible = [sum(1 for line in fh if line.strip())]
        return source
    for f in source.files:
        pf = pq.ParquetFile(f)
        check_shard_schema(f, pf.schema_arrow, expected="curated")
        if source.filters is None:
            source.eligible.append(pf.metadata.num_rows)
            continue
        missing = [c for c in source.filters if c not in pf.schema_arrow.names]
        if missing:
            raise MixtureError(f"{source.where}: {f}: no column {', '.join(missing)} to filter on "
                               f"(columns: {', '.join(pf.schema_arrow.names)})")
        source.eligible.append(sum(int(pc.sum(_mask(b, source.filters)).as_py() or 0)
                                   for b in pf.iter_batches(batch_size=BATCH * 8, columns=list(source.filters))))
    return source


def _mask(batch: pa.RecordBatch, filters: dict[str, list[str]]) -> pa.Array:
    """True where every filtered column holds one of its values (nulls never match)."""
    mask = None
    for column, values in filters.items():
        col = batch.column(batch.schema.get_field_index(column))
        hit = pc.fill_null(pc.is_in(pc.cast(col, pa.string()), value_set=pa.array(values, pa.string())), False)
        mask = hit if mask is None else pc.and_(mask, hit)
    return mask


def mixed_schema() -> pa.Schema:
    return load_schema(MIXED).with_metadata()


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` with every field of `schema`, in its order (missing ones null), cast to its types."""
    cols = [table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
            for f in schema]
    return pa.Table.from_arrays(cols, schema=schema)


def _lineage(table: pa.Table, source: Source, file: Path, rows: np.ndarray) -> pa.Table:
    n = table.num_rows
    extra = {"mix_component": pa.array([source.name] * n, pa.string()),
             "mix_run": pa.array([source.run] * n, pa.string()),
             "mix_path": pa.array([str(source.path)] * n, pa.string()),
             "mix_file": pa.array([file.name] * n, pa.string()),
             "mix_row": pa.array(rows, pa.int64())}
    for name, col in extra.items():
        table = table.append_column(name, col)
    return table


def stream(source: Source, chosen: np.ndarray, schema: pa.Schema) -> Iterator[pa.Table]:
    """The chosen eligible rows (sorted ordinals, repeats allowed) in order, as `schema` tables with lineage."""
    reader = _stream_messages if source.kind == "messages" else _stream_curated
    yield from reader(source, chosen, schema)


def _stream_curated(source: Source, chosen: np.ndarray, schema: pa.Schema) -> Iterator[pa.Table]:
    offset = 0  # eligible rows before this batch
    for f in source.files:
        row0 = 0  # rows of this file before this batch
        for batch in pq.ParquetFile(f).iter_batches(batch_size=BATCH):
            if source.filters is None:
                positions = np.arange(batch.num_rows)
            else:
                positions = np.flatnonzero(_mask(batch, source.filters).to_numpy(zero_copy_only=False))
            lo, hi = np.searchsorted(chosen, [offset, offset + len(positions)])
            if hi > lo:
                take = positions[chosen[lo:hi] - offset]
                table = pa.Table.from_batches([batch]).take(pa.array(take))
                yield _conform(_lineage(table, source, f, row0 + take), schema)
            offset += len(positions)
            row0 += batch.num_rows


def _messages_row(line: bytes, where: str) -> dict:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise MixtureError(f"{where}: not valid JSON: {exc}") from None
    msgs = obj.get("messages") if isinstance(obj, dict) else None
    if not isinstance(msgs, list) or not msgs or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in msgs):
        raise MixtureError(f"{where}: expected {{\"messages\": [{{\"role\": ..., \"content\": ...}}, ...]}}")
    user = next((m["content"] for m in msgs if m["role"] == "user"), None)
    return {"messages": [{"role": m["role"], "content": m["content"]} for m in msgs], "problem": user,
            **{k: obj[k] for k in ("domain", "source", "prompt_id") if isinstance(obj.get(k), str)}}


def _stream_messages(source: Source, chosen: np.ndarray, schema: pa.Schema) -> Iterator[pa.Table]:
    rows, lines, want, ordinal = [], [], 0, 0
    with source.path.open("rb") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            while want < len(chosen) and chosen[want] == ordinal:  # repeats: the same line more than once
                rows.append(_messages_row(line, f"{source.path}:{lineno}"))
                lines.append(lineno - 1)
                want += 1
            ordinal += 1
            if len(rows) >= BATCH:
                yield _messages_table(rows, lines, source, schema)
                rows, lines = [], []
    if rows:
        yield _messages_table(rows, lines, source, schema)


def _messages_table(rows: list[dict], lines: list[int], source: Source, schema: pa.Schema) -> pa.Table:
    names = ("messages", "problem", "domain", "source", "prompt_id")
    table = pa.Table.from_pydict({k: pa.array([r.get(k) for r in rows], schema.field(k).type) for k in names})
    return _conform(_lineage(table, source, source.path, np.asarray(lines, np.int64)), schema)
