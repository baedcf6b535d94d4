"""Curation: verified traces in, training-ready samples out, and an exact account of what was removed and why.

Two passes, so that per-record work runs in parallel while dedupe stays correct across shards and workers:

1. Filter pass, per shard (parallel, pure): selection -> truncation -> language -> readability -> repetition ->
   decontam (the benchmark n-gram index is built once per process and only read). Survivors are written to
   `DIR/curate/_work/part-N.parquet` in the curated shape plus their dedupe keys; dropped samples go to
   `DIR/curate/rejected/part-N.parquet` with the filter and reason.
2. Dedupe pass, sequential: the `_work` shards are read in shard order, first occurrence wins (exact prompt,
   near-duplicate prompt, exact response). Kept samples become `DIR/curate/part-N.parquet`, duplicates go to
   `DIR/curate/rejected/dedupe-part-N.parquet`. Only hashes are held in memory. On resume the pass replays the
   decisions of shards already written (reading their key columns only) and so rebuilds the same state.

`DIR/curate/funnel.json` then counts records in/out per filter, per source and domain, and the decontam matches per
benchmark, from the written outputs themselves. Records are streamed in batches: memory is bounded by the batch
size and the dedupe hashes, not by the shard or corpus size.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from factory.decontam import DecontamConfig, DecontamFilter, build_index
from factory.dedupe import DedupeConfig, Deduper, prompt_key, response_key
from factory.export import to_messages
from factory.filters import (ChainStats, FilterChain, LanguageConfig, LanguageFilter, MissingFieldError,
                             ReadabilityConfig, ReadabilityFilter, RecordFilter, RepetitionConfig, RepetitionFilter,
                             SelectionConfig, SelectionFilter, TruncationConfig, TruncationFilter)
from factory.schema import load_schema

FILTER_ORDER = ("selection", "truncation", "language", "readability", "repetition", "decontam", "dedupe")
# Fields the output needs whatever filters are on.
OUTPUT_FIELDS = ("prompt_id", "sample_idx", "source", "domain", "problem", "teacher", "reasoning", "answer_text",
                 "prompt_tokens", "completion_tokens")
KEY_COLUMNS = ("prompt_key", "response_key")


class CurateError(ValueError):
    """Curation cannot run on this input or in this folder."""


class CurateConfig(BaseModel):
    """One block per filter, in the order they run (dedupe last)."""

    model_config = ConfigDict(extra="forbid")
    selection: SelectionConfig = SelectionConfig()
    truncation: TruncationConfig = TruncationConfig()
    language: LanguageConfig = LanguageConfig()
    readability: ReadabilityConfig = ReadabilityConfig()
    repetition: RepetitionConfig = RepetitionConfig()
    decontam: DecontamConfig = DecontamConfig()
    dedupe: DedupeConfig = DedupeConfig()
    batch_size: int = Field(1024, ge=1)      # records held in memory at a time per worker
    keep_work: bool = False                  # keep DIR/curate/_work after a finished run

    def fingerprint(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]


def build_filters(config: CurateConfig) -> list[RecordFilter]:
    """The enabled per-record filters in order (dedupe is the separate sequential pass)."""
    filters: list[RecordFilter] = []
    if config.selection.mode != "off":
        filters.append(SelectionFilter(config.selection))
    if config.truncation.enabled:
        filters.append(TruncationFilter(config.truncation))
    if config.language.enabled:
        filters.append(LanguageFilter(config.language))
    if config.readability.enabled:
        filters.append(ReadabilityFilter(config.readability))
    if config.repetition.enabled:
        filters.append(RepetitionFilter(config.repetition))
    if config.decontam.enabled and config.decontam.benchmarks:
        filters.append(DecontamFilter(config.decontam))
    return filters


@functools.lru_cache(maxsize=2)
def _chain(config_json: str) -> FilterChain:
    """One chain per config per process: the language model and benchmark index load once per worker."""
    return FilterChain(build_filters(CurateConfig.model_validate_json(config_json)))


@dataclass
class ShardOutcome:
    """What the filter pass made of one shard's records."""

    rows: list[dict]                    # curate_work rows (curated shape + dedupe keys)
    rejected: list[dict]                # rejected rows
    dropped: dict[str, int]             # "filter:reason" -> count
    stats: ChainStats = field(default_factory=ChainStats)


def _check_output_fields(fields: set[str], where: str) -> None:
    for name in OUTPUT_FIELDS:
        if name not in fields:
            raise MissingFieldError(f"{where}: curate needs the field '{name}', which the records lack "
                                    f"(they have: {', '.join(sorted(fields))})")


def _curated_row(rec: dict, names: list[str]) -> dict:
    row = {n: rec.get(n) for n in names}
    row["messages"] = to_messages(rec["problem"], rec["reasoning"] or "", rec["answer_text"] or "")
    row["num_tokens"] = int(rec["prompt_tokens"] or 0) + int(rec["completion_tokens"] or 0)
    return row


def curate_records(records: list[dict], config: CurateConfig, where: str = "input") -> ShardOutcome:
    """The filter pass over one shard's (or batch's) records: pure and picklable through functools.partial."""
    if not records:
        return ShardOutcome([], [], {})
    _check_output_fields(set(records[0]), where)
    result = _chain(config.model_dump_json()).run(records, where)
    work_names = load_schema("curate_work").names
    rejected_names = load_schema("rejected").names
    rows = []
    for rec in result.kept:
        row = _curated_row(rec, work_names)
        row["prompt_key"] = prompt_key(rec["problem"])
        row["response_key"] = response_key(rec["reasoning"] or "", rec["answer_text"] or "")
        rows.append(row)
    rejected = [_curated_row(rec, rejected_names) for rec in result.rejected]
    dropped = Counter(f"{r['filter']}:{r['reason']}" for r in rejected)
    return ShardOutcome(rows, rejected, dict(dropped), result.stats)


# --------------------------------------------------------------------------------------------------- files

def input_shards(in_dir: Path) -> list[Path]:
    shards = sorted(Path(in_dir).glob("part-*.parquet"))
    if not shards:
        raise CurateError(f"{in_dir}: no part-*.parquet shards to curate (empty input)")
    return shards


def resolve_input(run_dir: Path) -> Path:
    """DIR/verify when it has shards, else DIR/generate (verification off)."""
    for stage in ("verify", "generate"):
        d = Path(run_dir) / stage
        if any(d.glob("part-*.parquet")):
            return d
    raise CurateError(f"{run_dir}: neither verify/ nor generate/ holds part-*.parquet shards (empty input)")


def _atomic_write_table(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _atomic_write_json(obj: dict, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


class _ShardWriter:
    """Streams tables of one schema into `path` through a temp file; `commit` renames it into place."""

    def __init__(self, path: Path, schema):
        self.path, self.schema = path, schema
        self.tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        self.writer = pq.ParquetWriter(self.tmp, schema.with_metadata())
        self.rows = 0

    def write_rows(self, rows: list[dict]) -> None:
        if rows:
            self.write_table(self.schema.table(rows))

    def write_table(self, table: pa.Table) -> None:
        if table.num_rows:
            self.writer.write_table(table)
            self.rows += table.num_rows

    def commit(self) -> None:
        self.writer.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.writer.close()
        self.tmp.unlink(missing_ok=True)


def _iter_records(shard: Path, batch_size: int) -> Iterator[list[dict]]:
    pf = pq.ParquetFile(shard)
    for batch in pf.iter_batches(batch_size=batch_size):
        yield batch.to_pylist()


def filter_shard(shard: Path, work_dir: Path, rejected_dir: Path, config: CurateConfig) -> dict:
    """Filter pass over one input shard file, streamed in batches; writes rejected then work shard (the commit).
    Returns the shard's ChainStats as JSON (also saved beside the work shard, for the funnel's timings)."""
    stats = ChainStats()
    work = _ShardWriter(work_dir / shard.name, load_schema("curate_work"))
    rej = _ShardWriter(rejected_dir / shard.name, load_schema("rejected"))
    try:
        for records in _iter_records(shard, config.batch_size):
            out = curate_records(records, config, where=str(shard))
            work.write_rows(out.rows)
            rej.write_rows(out.rejected)
            stats.merge(out.stats)
    except BaseException:
        work.abort()
        rej.abort()
        raise
    rej.commit()
    stats_json = stats.to_json()
    _atomic_write_json(stats_json, work_dir / f"{shard.stem}.stats.json")
    work.commit()
    return stats_json


def _filter_shard_job(args: tuple[str, str, str, str]) -> dict:
    shard, work_dir, rejected_dir, config_json = args
    return filter_shard(Path(shard), Path(work_dir), Path(rejected_dir), CurateConfig.model_validate_json(config_json))


def dedupe_pass(work_dir: Path, out_dir: Path, rejected_dir: Path, config: CurateConfig,
                progress: Callable[[], None] | None = None) -> dict:
    """Sequential first-occurrence-wins dedupe over the work shards in name order (see the module docstring)."""
    deduper = Deduper(config.dedupe) if config.dedupe.enabled else None
    curated = load_schema("curated")
    rejected = load_schema("rejected")
    counts: Counter = Counter()
    for work in sorted(work_dir.glob("part-*.parquet")):
        final = out_dir / work.name
        done = final.exists()
        pf = pq.ParquetFile(work)
        if deduper is not None:
            deduper.start_shard()
        writer = rej_writer = None
        if not done:
            writer = _ShardWriter(final, curated)
            rej_writer = _ShardWriter(rejected_dir / f"dedupe-{work.name}", rejected)
        try:
            key_cols = ["prompt_id", "problem", *KEY_COLUMNS]
            for batch in pf.iter_batches(batch_size=config.batch_size, columns=None if not done else key_cols):
                cols = {n: batch.column(n).to_pylist() for n in key_cols}
                keep = [True] * batch.num_rows
                reasons: list[str | None] = [None] * batch.num_rows
                matched: list[str | None] = [None] * batch.num_rows
                if deduper is not None:
                    for i, (pid, prob, pk, rk) in enumerate(zip(*cols.values())):
                        keep[i], reasons[i], matched[i] = deduper.check(pid, prob, pk, rk)
                counts.update(r for r in reasons if r is not None)
                if done:
                    continue
                table = pa.Table.from_batches([batch])
                mask = pa.array(keep, pa.bool_())
                writer.write_table(table.filter(mask).select(curated.names).cast(curated.with_metadata()))
                if not all(keep):
                    dropped = table.filter(pc.invert(mask)).select(curated.names)
                    n = dropped.num_rows
                    extra = {"filter": pa.array(["dedupe"] * n, pa.string()),
                             "reason": pa.array([r for r in reasons if r is not None], pa.string()),
                             "matched": pa.array([m for k, m in zip(keep, matched) if not k], pa.string()),
                             "finish_reason": pa.nulls(n, pa.string()), "think_closed": pa.nulls(n, pa.bool_())}
                    for name, arr in extra.items():
                        dropped = dropped.append_column(name, arr)
                    rej_writer.write_table(dropped.select(rejected.names).cast(rejected.with_metadata()))
        except BaseException:
            if writer is not None:
                writer.abort()
                rej_writer.abort()
            raise
        if not done:
            rej_writer.commit()
            writer.commit()  # the kept shard is the commit marker of this shard's dedupe
        if progress:
            progress()
    return {"dropped": dict(counts), "unique_prompts": deduper.unique_prompts if deduper else None}


# --------------------------------------------------------------------------------------------------- funnel

def _read_columns(paths: list[Path], columns: list[str]) -> Iterator[dict]:
    for p in paths:
        for batch in pq.ParquetFile(p).iter_batches(batch_size=65536, columns=columns):
            yield from batch.to_pylist()


def skip_reasons(config: CurateConfig, fields: set[str]) -> dict[str, str | None]:
    """Why each stage of the funnel was skipped for input records with these fields (None: it ran)."""
    out: dict[str, str | None] = {}
    enabled = {"truncation": config.truncation.enabled, "language": config.language.enabled,
               "readability": config.readability.enabled, "repetition": config.repetition.enabled,
               "dedupe": config.dedupe.enabled}
    for name in FILTER_ORDER:
        if name == "selection":
            out[name] = SelectionFilter(config.selection).skip_reason(fields)
        elif name == "decontam":
            out[name] = None if (config.decontam.enabled and config.decontam.benchmarks) else \
                ("disabled" if not config.decontam.enabled else "no benchmarks configured")
        else:
            out[name] = None if enabled[name] else "disabled"
    return out


def build_funnel(out_dir: Path, records_in: int, config: CurateConfig, input_fields: set[str],
                 shard_stats: list[dict] | None = None, extra: dict | None = None) -> dict:
    """Counts in/out per filter (in order), per source and per domain, and decontam matches per benchmark."""
    rejected_paths = sorted((out_dir / "rejected").glob("*.parquet"))
    kept_paths = sorted(out_dir.glob("part-*.parquet"))
    by_filter: dict[str, Counter] = {n: Counter() for n in FILTER_ORDER}
    groups: dict[str, dict[str, dict]] = {"source": {}, "domain": {}}

    def group(kind: str, value: str) -> dict:
        return groups[kind].setdefault(value, {"in": 0, "out": 0, "dropped": {}})

    bench_samples: Counter = Counter()
    bench_prompts: dict[str, set] = defaultdict(set)
    for r in _read_columns(rejected_paths, ["filter", "reason", "source", "domain", "prompt_id"]):
        by_filter[r["filter"]][r["reason"]] += 1
        for kind in ("source", "domain"):
            g = group(kind, r[kind])
            g["in"] += 1
            g["dropped"][r["filter"]] = g["dropped"].get(r["filter"], 0) + 1
        if r["filter"] == "decontam":
            name = r["reason"].split(":", 1)[1]
            bench_samples[name] += 1
            bench_prompts[name].add(r["prompt_id"])
    records_out = 0
    for r in _read_columns(kept_paths, ["source", "domain"]):
        records_out += 1
        for kind in ("source", "domain"):
            g = group(kind, r[kind])
            g["in"] += 1
            g["out"] += 1
    seconds: Counter = Counter()
    for st in shard_stats or []:
        for name, s in st.get("filters", {}).items():
            seconds[name] += s.get("seconds", 0.0)
    skipped = skip_reasons(config, input_fields)
    filters, remaining = [], records_in
    for name in FILTER_ORDER:
        dropped = sum(by_filter[name].values())
        filters.append({"name": name, "in": remaining, "out": remaining - dropped,
                        "dropped": dict(by_filter[name].most_common()), "skipped": skipped[name],
                        **({"seconds": round(seconds[name], 3)} if name in seconds else {})})
        remaining -= dropped
    if remaining != records_out:
        raise CurateError(f"{out_dir}: funnel does not add up: {records_in} in - dropped = {remaining}, "
                          f"but {records_out} kept records are written (outputs from another run mixed in?)")
    decontam = None
    if config.decontam.enabled and config.decontam.benchmarks:
        index = build_index(config.decontam)
        decontam = {"ngram": config.decontam.ngram,
                    "benchmarks": {name: {"problems": index.sizes[name], "samples_removed": bench_samples[name],
                                          "prompts_removed": len(bench_prompts[name])} for name in index.names}}
    return {"stage": "curate", "records_in": records_in, "records_out": records_out, "filters": filters,
            "by_source": groups["source"], "by_domain": groups["domain"], "decontam": decontam, **(extra or {})}


# --------------------------------------------------------------------------------------------------- driver

def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=Console(stderr=True), disable=not enabled)


def curate_dir(in_dir: Path, out_dir: Path, config: CurateConfig, workers: int = 1, new_run: bool = False,
               progress: bool = True) -> dict:
    """Curate the shards of `in_dir` into `out_dir` (kept shards, rejected/, funnel.json, counts.json); resumable.

    Returns the funnel. A finished run with the same config returns its funnel without work; a different config
    in a used folder is an error unless `new_run` (which clears the folder first)."""
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    shards = input_shards(in_dir)
    fingerprint = config.fingerprint()
    funnel_path, work_dir, rejected_dir = out_dir / "funnel.json", out_dir / "_work", out_dir / "rejected"
    stamp = out_dir / "_work" / "fingerprint.json"
    if new_run and out_dir.exists():
        shutil.rmtree(out_dir)
    if funnel_path.exists():
        funnel = json.loads(funnel_path.read_text())
        if funnel.get("fingerprint") == fingerprint:
            return funnel
        raise CurateError(f"{out_dir} holds a finished curate run with another config; rerun with new_run")
    if stamp.exists() and json.loads(stamp.read_text())["fingerprint"] != fingerprint:
        raise CurateError(f"{out_dir} holds an unfinished curate run with another config; rerun with new_run")
    for d in (work_dir, rejected_dir):
        d.mkdir(parents=True, exist_ok=True)
    _atomic_write_json({"fingerprint": fingerprint, "config": config.model_dump()}, stamp)

    input_fields = set(pq.ParquetFile(shards[0]).schema_arrow.names)
    _check_output_fields(input_fields, str(shards[0]))
    build_filters(config)  # fail early (missing language model, unreadable benchmark) before any worker starts
    records_in = sum(pq.ParquetFile(s).metadata.num_rows for s in shards)
    if records_in == 0:
        raise CurateError(f"{in_dir}: the input shards hold no records (empty input)")

    t0 = time.perf_counter()
    todo = [s for s in shards if not (work_dir / s.name).exists()]
    with _progress(progress) as bar:
        task = bar.add_task("curate: filters", total=len(shards), completed=len(shards) - len(todo))
        jobs = [(str(s), str(work_dir), str(rejected_dir), config.model_dump_json()) for s in todo]
        if workers > 1 and len(jobs) > 1:
            with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
                for _ in pool.map(_filter_shard_job, jobs):
                    bar.advance(task)
        else:
            for job in jobs:
                _filter_shard_job(job)
                bar.advance(task)
        t_filter = time.perf_counter() - t0
        task = bar.add_task("curate: dedupe", total=len(shards))
        dedupe = dedupe_pass(work_dir, out_dir, rejected_dir, config, progress=lambda: bar.advance(task))
    t_total = time.perf_counter() - t0

    shard_stats = [json.loads(p.read_text()) for p in sorted(work_dir.glob("*.stats.json"))]
    funnel = build_funnel(out_dir, records_in, config, input_fields, shard_stats,
                          extra={"input": str(in_dir), "fingerprint": fingerprint,
                                 "dedupe_state": {"unique_prompts": dedupe["unique_prompts"]},
                                 "seconds": {"filter_pass": round(t_filter, 3), "total": round(t_total, 3)}})
    dropped = Counter()
    for f in funnel["filters"]:
        for reason, n in f["dropped"].items():
            dropped[f"{f['name']}:{reason}"] += n
    _atomic_write_json({"stage": "curate", "records_in": records_in, "records_out": funnel["records_out"],
                        "dropped": dict(dropped), "extra": {"funnel": "funnel.json"}}, out_dir / "counts.json")
    _atomic_write_json(funnel, funnel_path)  # written last: its presence marks the run finished
    if not config.keep_work:
        shutil.rmtree(work_dir)
    return funnel
