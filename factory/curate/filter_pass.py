"""Curation library: the config, the per-shard filter pass, the dedupe decisions and the funnel.

The stage runs in two passes (orchestrated by `factory/curate/stage.py` through the shard runner), so that
per-record work runs in parallel while dedupe stays correct across shards and workers:

1. Filter pass, per shard (parallel, pure: `curate_shard`): selection -> truncation -> language -> readability ->
   repetition -> decontam (the benchmark n-gram index is built once per process and only read). Survivors leave
   in the curated shape plus their dedupe keys; dropped samples leave with the filter and reason.
2. Dedupe pass, sequential, over the survivors in shard order: first occurrence wins (exact prompt, near-duplicate
   prompt, exact response). Only hashes are held in memory (`factory.curate.filters.dedupe.Deduper`); a resumed run replays
   the decisions of the shards already written from their key columns, and so rebuilds the same state.

`build_funnel` then counts records in/out per filter, per source and domain, and the decontam matches per
benchmark, from the written outputs themselves.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from factory.core.schema import Schema, load_schema
from factory.core.shards import ShardResult
from factory.curate.config import SPEED_ONLY, CurateConfig  # noqa: F401
from factory.curate.export import to_messages
from factory.curate.filters import (
    FilterChain,
    LanguageFilter,
    MissingFieldError,
    ReadabilityFilter,
    RecordFilter,
    RepetitionFilter,
    SelectionFilter,
    TruncationFilter,
)
from factory.curate.filters.decontam import DecontamFilter, build_index
from factory.curate.filters.dedupe import Deduper, prompt_key, response_key

FILTER_ORDER = ("selection", "truncation", "language", "readability", "repetition", "decontam", "dedupe")
# Fields the output needs whatever filters are on.
OUTPUT_FIELDS = ("prompt_id", "sample_idx", "source", "domain", "problem", "teacher", "reasoning", "answer_text",
                 "prompt_tokens", "completion_tokens")
KEY_COLUMNS = ("prompt_id", "problem", "prompt_key", "response_key")


class CurateError(ValueError):
    """Curation cannot run on this input."""


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


_CHAINS: dict[str, FilterChain] = {}


def _chain(config: CurateConfig) -> FilterChain:
    """One chain per config per process: the language model and benchmark index load once per worker. Keyed by the
    config's repr (its values, nested blocks included), since a worker receives a fresh copy for every shard."""
    key = repr(config)
    if key not in _CHAINS:
        if len(_CHAINS) >= 2:
            _CHAINS.pop(next(iter(_CHAINS)))
        _CHAINS[key] = FilterChain(build_filters(config))
    return _CHAINS[key]


def check_output_fields(fields: set[str], where: str) -> None:
    for name in OUTPUT_FIELDS:
        if name not in fields:
            raise MissingFieldError(f"{where}: curate needs the field '{name}', which the records lack "
                                    f"(they have: {', '.join(sorted(fields))})")


def track_of(record: dict) -> str:
    """reasoning | non_reasoning: the general domain, or a reply without a CoT, is the paper's non-reasoning track."""
    general = record.get("domain") == "general" or not (record.get("reasoning") or "").strip()
    return "non_reasoning" if general else "reasoning"


def curated_row(rec: dict, names: list[str]) -> dict:
    """A record in the curated shape (`names` of the target schema), with its `messages` and `num_tokens`."""
    row = {n: rec.get(n) for n in names}
    row["messages"] = to_messages(rec["problem"], rec["reasoning"] or "", rec["answer_text"] or "")
    if "track" in names:
        row["track"] = track_of(rec)
    row["num_tokens"] = int(rec["prompt_tokens"] or 0) + int(rec["completion_tokens"] or 0)
    return row


def curate_records(records: list[dict], config: CurateConfig, where: str = "input") -> ShardResult:
    """The filter pass over one shard's records: survivors as `curate_work` rows (curated shape + dedupe keys),
    dropped ones as `rejected` rows, drops as {"filter:reason": n}, and seconds spent per filter."""
    if not records:
        return ShardResult(rows=[])
    check_output_fields(set(records[0]), where)
    result = _chain(config).run(records, where)
    work_names = load_schema("curate_work").names
    rejected_names = load_schema("rejected").names
    rows = []
    for rec in result.kept:
        row = curated_row(rec, work_names)
        row["prompt_key"] = prompt_key(rec["problem"])
        row["response_key"] = response_key(rec["reasoning"] or "", rec["answer_text"] or "")
        rows.append(row)
    rejected = [curated_row(rec, rejected_names) for rec in result.rejected]
    dropped = Counter(f"{r['filter']}:{r['reason']}" for r in rejected)
    stats = {f"seconds.{name}": round(st.seconds, 6) for name, st in result.stats.filters.items()}
    return ShardResult(rows=rows, rejected=rejected, dropped=dict(dropped), stats=stats)


def curate_shard(records: list[dict], config: CurateConfig) -> ShardResult:
    """The runner's `fn`: use as `functools.partial(curate_shard, config=config)` (the config travels pickled)."""
    return curate_records(records, config)


# --------------------------------------------------------------------------------------------------- dedupe

def dedupe_decisions(deduper: Deduper | None, keys: pa.Table) -> tuple[list[bool], list[str | None], list[str | None]]:
    """(keep, reason, matched) for each row of a survivors' shard, in order (the deduper's state advances)."""
    n = keys.num_rows
    if deduper is None:
        return [True] * n, [None] * n, [None] * n
    keep, reasons, matched = [], [], []
    cols = [keys.column(c).to_pylist() for c in KEY_COLUMNS]
    for pid, problem, pk, rk in zip(*cols):
        k, r, m = deduper.check(pid, problem, pk, rk)
        keep.append(k)
        reasons.append(r)
        matched.append(m)
    return keep, reasons, matched


def dedupe_rejected(table: pa.Table, keep: list[bool], reasons: list[str | None], matched: list[str | None],
                    rejected: Schema) -> pa.Table:
    """The rows dedupe dropped, in the rejected shape (filter "dedupe", reason, matched prompt id)."""
    drop = [not k for k in keep]
    dropped = table.filter(pa.array(drop, pa.bool_()))
    n = dropped.num_rows
    extra = {"filter": pa.array(["dedupe"] * n, pa.string()),
             "reason": pa.array([r for r, d in zip(reasons, drop) if d], pa.string()),
             "matched": pa.array([m for m, d in zip(matched, drop) if d], pa.string()),
             "finish_reason": pa.nulls(n, pa.string()), "think_closed": pa.nulls(n, pa.bool_())}
    cols = {name: (extra[name] if name in extra else dropped.column(name)) for name in rejected.names}
    return pa.Table.from_pydict(cols, schema=rejected.with_metadata())


# --------------------------------------------------------------------------------------------------- funnel

def resolve_input(run_dir: Path) -> Path:
    """DIR/verify when it has shards, else DIR/generate (verification off)."""
    for stage in ("verify", "generate"):
        d = Path(run_dir) / stage
        if any(d.glob("part-*.parquet")):
            return d
    raise CurateError(f"{run_dir}: neither verify/ nor generate/ holds part-*.parquet shards (empty input)")


def _read_columns(paths: list[Path], columns: list[str]) -> Iterator[dict]:
    for p in paths:
        for batch in pq.ParquetFile(p).iter_batches(batch_size=65536, columns=columns):
            yield from batch.to_pylist()


def skip_reasons(config: CurateConfig, fields: set[str]) -> dict[str, str | None]:
    """Why each step of the funnel was skipped for input records with these fields (None: it ran)."""
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
                 seconds: dict[str, float] | None = None) -> dict:
    """Counts in/out per filter (in order), per source and per domain, and decontam matches per benchmark."""
    out_dir = Path(out_dir)
    rejected_paths = sorted((out_dir / "rejected").glob("part-*.parquet"))
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
    skipped = skip_reasons(config, input_fields)
    seconds = seconds or {}
    filters, remaining = [], records_in
    for name in FILTER_ORDER:
        dropped = sum(by_filter[name].values())
        step = {"name": name, "in": remaining, "out": remaining - dropped,
                "dropped": dict(by_filter[name].most_common()), "skipped": skipped[name]}
        if name in seconds:
            step["seconds"] = round(seconds[name], 3)
        filters.append(step)
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
            "by_source": groups["source"], "by_domain": groups["domain"], "decontam": decontam}
