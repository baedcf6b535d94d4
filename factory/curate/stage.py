"""`factory curate`: verified traces (`DIR/verify/`, or `DIR/generate/` when verification is off; never the one
in place of the other) → training-ready samples in `DIR/curate/`, every dropped sample in `DIR/curate/rejected/`
with its filter and reason, and `DIR/curate/funnel.json`.

Pass 1 (the shard runner, `workers` processes): the per-record filters and decontam over each input shard into
the internal stage folder `DIR/curate/_filter/` (survivors with dedupe keys; its own ledger, so it resumes).
Pass 2 (sequential): dedupe over `_filter` in shard order; unit N writes `DIR/curate/part-N` (kept) and
`DIR/curate/rejected/part-N` (pass-1 drops of shard N + its duplicates), committed through the runner's
`StageDir` (atomic, ledgered). A resumed pass 2 replays the key columns of committed units to rebuild the dedupe
state. `_filter` is removed once the funnel is written (unless `keep_work`).
"""
from __future__ import annotations

import functools
import json
import shutil
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from factory.core.executor import Executor
from factory.core.identity import require_finished, upstream_identity
from factory.core.lock import clear_folder, has_shards, stage_lock
from factory.core.progress import console, stage_progress
from factory.core.ray_executor import make_executor
from factory.core.runner import run_map_stage
from factory.core.schema import load_schema
from factory.core.shards import (
    PART,
    StageDir,
    fingerprint,
    list_parts,
    read_part,
    write_json_atomic,
    write_parquet_tmp,
)
from factory.curate.decontam_plan import pipeline_curate_config, selection_matches
from factory.curate.filter_pass import (
    KEY_COLUMNS,
    CurateConfig,
    CurateError,
    build_filters,
    build_funnel,
    check_output_fields,
    curate_shard,
    dedupe_decisions,
    dedupe_rejected,
)
from factory.curate.filters.dedupe import Deduper

STAGE = "curate"
FILTER_DIR = "_filter"


def run_curate(config, out_dir: Path | str, *, new_run: bool = False, workers: int | None = None) -> dict:
    """Pipeline entry: curate `out_dir/verify` (or `out_dir/generate`) into `out_dir/curate`; returns counts.json.

    `config` is a `CurateConfig` or a pipeline config with a `curate` block (absent: the defaults)."""
    pipeline = config
    # a pipeline: its curate block, decontaminating against its eval benchmarks too
    config = config if isinstance(config, CurateConfig) else pipeline_curate_config(config)
    out_dir = Path(out_dir)
    executor = make_executor(getattr(pipeline, "executor", None), workers or config.workers)
    counts = curate_stage(declared_input(out_dir, getattr(pipeline, "stages", None)), out_dir / STAGE, config,
                          new_run=new_run, executor=executor)
    console.print(f"[bold]curate[/]: {counts['records_in']} samples → {counts['records_out']} kept "
                  f"({counts['records_in'] - counts['records_out']} in {out_dir / STAGE / 'rejected'}), "
                  f"funnel in {out_dir / STAGE / 'funnel.json'}")
    return counts


def declared_input(run_dir: Path, stages: list[str] | None = None) -> Path:
    """Curate's one input: DIR/verify when the run verifies (the pipeline lists verify, or DIR/verify exists),
    else DIR/generate (verification off). It must have finished: an unfinished verify is an error, never a fallback
    to unverified traces."""
    run_dir = Path(run_dir)
    verify, generate = run_dir / "verify", run_dir / "generate"
    verifies = verify.exists() or (stages is not None and "verify" in stages) or not generate.exists()
    chosen = verify if verifies else generate
    require_finished(chosen, reader=STAGE)
    return chosen


def _committed(out_dir: Path) -> bool:
    return has_shards(out_dir) or has_shards(out_dir / FILTER_DIR)


def curate_stage(in_dir: Path, out_dir: Path, config: CurateConfig, *, workers: int | None = None,
                 new_run: bool = False, executor: Executor | None = None) -> dict:
    """Curate the finished stage folder `in_dir` into `out_dir`; return counts.json (its extra holds the funnel).
    The filter pass runs on `executor` (default: this machine, `workers` processes); dedupe is one sequential pass
    here, on the driver, since first-occurrence-wins needs every earlier shard's decisions."""
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    parts = list_parts(in_dir)
    if not parts:
        raise CurateError(f"{in_dir}: no part-*.parquet shards to curate (empty input)")
    records_in = sum(pq.read_metadata(p).num_rows for p in parts)
    if records_in == 0:
        raise CurateError(f"{in_dir}: the input shards hold no records (empty input)")
    require_finished(in_dir, reader=STAGE)
    with stage_lock(out_dir, committed=_committed):  # one writer; a failed start leaves no folder behind
        return _curate(in_dir, out_dir, parts, records_in, config, workers, new_run, executor)


def _curate(in_dir: Path, out_dir: Path, parts: list[Path], records_in: int, config: CurateConfig,
            workers: int | None, new_run: bool, executor: Executor | None) -> dict:
    if new_run:
        clear_folder(out_dir)
    stage = StageDir(out_dir, STAGE, load_schema("curated"), load_schema("rejected"))
    plan = {"input": in_dir.name, "records_in": records_in}
    stage.prepare(fingerprint({"config": config.decisive(), "plan": plan}), config.decisive(), plan,
                  inputs={in_dir.name: upstream_identity(in_dir)}, prefix="curate.")
    filter_dir = out_dir / FILTER_DIR
    if stage.is_complete():
        if not config.keep_work and filter_dir.exists():  # stopped between finishing and tidying up
            shutil.rmtree(filter_dir)
        return json.loads(stage.counts_path.read_text())

    input_fields = set(pq.read_schema(parts[0]).names)
    check_output_fields(input_fields, str(parts[0]))
    build_filters(config)  # fail early (missing language model, unreadable benchmark) before any worker starts

    started = time.perf_counter()
    run_map_stage(name=f"{STAGE}:filter", in_dir=in_dir, out_dir=filter_dir, out_schema=load_schema("curate_work"),
                  fn=functools.partial(curate_shard, config=config), config=config.decisive(),
                  rejected_schema=load_schema("rejected"), workers=workers or config.workers, executor=executor)
    filtered = time.perf_counter()
    dedupe = _dedupe_pass(filter_dir, stage, config)
    deduped = time.perf_counter()

    seconds: dict[str, float] = {}
    for entry in StageDir(filter_dir, f"{STAGE}:filter", load_schema("curate_work")).ledger().values():
        for key, value in (entry.get("stats") or {}).items():
            if key.startswith("seconds."):
                seconds[key[8:]] = seconds.get(key[8:], 0.0) + value
    funnel = build_funnel(out_dir, records_in, config, input_fields, seconds)
    if funnel["decontam"] is not None:  # matches in the input before and after selection, per benchmark
        rejected_parts = sorted((out_dir / "rejected").glob("part-*.parquet"))
        for name, seen in selection_matches(parts, rejected_parts, config.decontam).items():
            funnel["decontam"]["benchmarks"][name].update(seen)
    funnel.update(input=str(in_dir), fingerprint=config.fingerprint(), dedupe_state=dedupe,
                  run_seconds={"filter_pass": round(filtered - started, 3), "dedupe_pass": round(deduped - filtered, 3)})
    write_json_atomic(out_dir / "funnel.json", funnel)
    counts = stage.finalize(records_in, extra={
        "funnel": "funnel.json",
        "filters": {f["name"]: {"in": f["in"], "out": f["out"], "skipped": f["skipped"]} for f in funnel["filters"]},
        "decontam": {k: v["samples_removed"] for k, v in (funnel["decontam"] or {}).get("benchmarks", {}).items()}})
    if not config.keep_work:
        shutil.rmtree(filter_dir)
    return counts


def _dedupe_pass(filter_dir: Path, stage: StageDir, config: CurateConfig) -> dict:
    """Sequential first-occurrence-wins dedupe over the filter pass's shards, one committed unit per shard."""
    curated, rejected = load_schema("curated"), load_schema("rejected")
    deduper = Deduper(config.dedupe) if config.dedupe.enabled else None
    filter_ledger = StageDir(filter_dir, f"{STAGE}:filter", load_schema("curate_work")).ledger()
    done = stage.ledger()
    (stage.path / "rejected").mkdir(exist_ok=True)
    parts = list_parts(filter_dir)
    with stage_progress(f"{STAGE}:dedupe", total_units=len(parts)) as progress:
        for part in parts:
            unit = int(part.stem.split("-")[1])
            if deduper is not None:
                deduper.start_shard()
            keep, reasons, matched = dedupe_decisions(deduper, read_part(part, "curate_work", KEY_COLUMNS))
            if unit in done:  # committed before a restart: its decisions above only rebuild the state
                progress.advance()
                continue
            table = read_part(part, "curate_work")
            kept = table.filter(pa.array(keep, pa.bool_())).select(curated.names).cast(curated.with_metadata())
            drops = [dedupe_rejected(table, keep, reasons, matched, rejected)]
            earlier = filter_dir / "rejected" / PART.format(unit)
            if earlier.exists():
                drops.insert(0, read_part(earlier, "rejected").select(rejected.names).cast(rejected.with_metadata()))
            rej_table = pa.concat_tables(drops)
            dropped = dict(filter_ledger.get(unit, {}).get("dropped", {}))
            for r in reasons:
                if r is not None:
                    dropped[f"dedupe:{r}"] = dropped.get(f"dedupe:{r}", 0) + 1
            kept = kept.replace_schema_metadata({**kept.schema.metadata,
                                                 b"factory.dropped": json.dumps(dropped).encode()})
            part_tmp = write_parquet_tmp(kept, stage.path / PART.format(unit))
            rej_tmp = write_parquet_tmp(rej_table, stage.path / "rejected" / PART.format(unit)) if rej_table.num_rows \
                else None
            keys = kept.select(["prompt_id", "sample_idx"]).to_pylist()
            entry = {"unit": unit, "part": PART.format(unit), "rows": kept.num_rows, "rejected": rej_table.num_rows,
                     "dropped": dropped, "keys": [[k["prompt_id"], k["sample_idx"]] for k in keys], "stats": {}}
            stage.commit(unit, part_tmp, rej_tmp, entry)
            progress.advance(rows=kept.num_rows)
    return {"unique_prompts": deduper.unique_prompts if deduper else None}
