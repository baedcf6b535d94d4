"""`factory mix`: curated sets of one or more runs (and `messages` exports) → one mixture in `DIR/mix/`, to counts
or ratios, deterministic with a seed, every row carrying its lineage (`mix_component`, `mix_run`, `mix_path`,
`mix_file`, `mix_row`).

Streaming: the plan reads Parquet footers (the `domain` column only when a source filters by domain); the build
holds the chosen row indices and one output shard. The whole folder is written beside `DIR/mix` and renamed into
place, so it is either the complete mixture or absent; a rerun of the same config and input is a no-op, a changed
one is refused unless `new_run`.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from factory.core.config import dump_config
from factory.core.lock import stage_lock
from factory.core.progress import console
from factory.core.shards import StageConfigChanged, fingerprint, write_json_atomic, write_table_atomic
from factory.curate.mixture import MixtureError, Taker, choose_rows, interleave, largest_total, split_counts
from factory.mix.config import MixConfig
from factory.mix.sources import MIXED, Source, count, mixed_schema, resolve, stream

STAGE = "mix"


def run_mix(cfg, run_dir: Path | str, *, new_run: bool = False) -> dict:
    """Pipeline entry: the pipeline's `mix:` block → `run_dir/mix`; returns counts.json."""
    mix = cfg if isinstance(cfg, MixConfig) else getattr(cfg, "mix", None)
    if mix is None:
        raise MixtureError("the pipeline has no `mix:` block (sources to combine); add one to run the mix stage")
    run_dir = Path(run_dir)
    counts = mix_stage(mix, run_dir / STAGE, run_dir=run_dir, new_run=new_run)
    parts = ", ".join(f"{c['name']} {c['taken']:,}" for c in counts["extra"]["components"])
    note = " (up to date: same config and input)" if counts.get("up_to_date") else ""
    console.print(f"[bold]mix[/]: {counts['records_out']:,} samples ({parts}) in {run_dir / STAGE}{note}")
    return counts


def plan(config: MixConfig, run_dir: Path | None = None) -> tuple[list[Source], list[int]]:
    """The resolved, counted sources and how many rows each gives; every impossible request is a MixtureError
    naming the source, raised before anything is written."""
    sources = [count(resolve(i, spec, run_dir)) for i, spec in enumerate(config.sources)]
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise MixtureError(f"mix.sources: names must be unique, got {names}; set `name` on each source")
    kind = config.sources[0].target_kind
    available = [s.available for s in sources]
    if kind == "count":
        targets = [spec.count for spec in config.sources]
    elif kind in ("ratio", "weight"):
        shares = [getattr(spec, kind) for spec in config.sources]
        empty = next((s for s in sources if s.available == 0), None)
        if config.total is None and empty is not None:
            raise MixtureError(f"{empty.where}: {_where(empty)} has no samples; a share of it cannot be drawn")
        total = config.total if config.total is not None else largest_total(available, shares)
        targets = split_counts(total, shares)
    else:
        targets = available
    for s, want in zip(sources, targets):
        if want > 0 and s.available == 0:
            raise MixtureError(f"{s.where}: {_where(s)} has no samples; {want:,} were asked for")
        if want > s.available and not config.allow_upsample:
            raise MixtureError(f"{s.where}: {want:,} samples wanted but {_where(s)} has {s.available:,}; "
                               f"lower the target or set `allow_upsample: true`")
    if sum(targets) == 0:
        raise MixtureError("mix: the mixture would be empty")
    return sources, targets


def _where(s: Source) -> str:
    rules = "; ".join(f"{'domains' if c == 'domain' else c} {', '.join(v)}" for c, v in (s.filters or {}).items())
    return f"{s.path}" + (f" ({rules})" if rules else "")


def _manifest(config: MixConfig, sources: list[Source], targets: list[int]) -> dict:
    conf = dump_config(config)
    inputs = [s.describe() for s in sources]
    plan_rows = [{"name": s.name, "available": s.available, "taken": t} for s, t in zip(sources, targets)]
    return {"stage": STAGE, "schema": MIXED, "fingerprint": fingerprint({"config": conf, "inputs": inputs}),
            "config": conf, "inputs": inputs, "plan": plan_rows}


def _diff(old, new, prefix: str) -> list[str]:
    """The dotted keys (list items by index) where two JSON trees differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [k for key in sorted(set(old) | set(new)) for k in _diff(old.get(key), new.get(key), f"{prefix}.{key}")]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [k for i, (a, b) in enumerate(zip(old, new)) for k in _diff(a, b, f"{prefix}.{i}")]
    return [] if old == new else [prefix]


def _changed(old: dict, new: dict) -> list[str]:
    return _diff(old.get("config"), new["config"], "config") + (["input"] if old.get("inputs") != new["inputs"] else [])


def mix_stage(config: MixConfig, out_dir: Path, *, run_dir: Path | None = None, new_run: bool = False) -> dict:
    """Build the mixture into `out_dir` (atomically, as a whole); return its counts.json."""
    out_dir = Path(out_dir)
    sources, targets = plan(config, run_dir)
    manifest = _manifest(config, sources, targets)
    # One writer: DIR/mix's lock is held from here until the finished folder has been swapped into place, so a
    # second mix of the same run is refused rather than removing the first one's build folder below.
    with stage_lock(out_dir, committed=lambda folder: (folder / "counts.json").exists()):
        return _locked_build(config, sources, targets, manifest, out_dir, new_run)


def _occupied(folder: Path) -> bool:
    """Whether `folder` holds a mixture (or anything but hidden entries such as the writer lock)."""
    return folder.is_dir() and any(not p.name.startswith(".") for p in folder.iterdir())


def _locked_build(config: MixConfig, sources: list[Source], targets: list[int], manifest: dict, out_dir: Path,
                  new_run: bool) -> dict:
    for stale in out_dir.parent.glob(f".{out_dir.name}.*-*"):  # a build or swap cut short by a crash
        shutil.rmtree(stale, ignore_errors=True)
    if _occupied(out_dir) and not new_run:
        try:
            old = json.loads((out_dir / "manifest.json").read_text())
        except (OSError, ValueError):
            old = {}
        if old.get("fingerprint") == manifest["fingerprint"] and (out_dir / "counts.json").exists():
            return {**json.loads((out_dir / "counts.json").read_text()), "up_to_date": True}
        raise StageConfigChanged(
            f"{out_dir} was written by a different mix configuration or input (changed: "
            f"{', '.join(_changed(old, manifest)) or 'not a mix folder'}). Rerun with --new-run to rebuild it, "
            f"or choose another --out folder.")
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    try:
        counts = _build(config, sources, targets, manifest, tmp)
        _swap(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return counts


def _build(config: MixConfig, sources: list[Source], targets: list[int], manifest: dict, tmp: Path) -> dict:
    from factory.publish.cards import mixture_section

    started = time.perf_counter()
    tmp.mkdir(parents=True)
    schema = mixed_schema()
    rng = np.random.default_rng(config.seed)
    takers = [Taker(stream(s, choose_rows(s.available, t, rng), schema)) for s, t in zip(sources, targets)]
    shards = 0
    for j, shard in enumerate(interleave(takers, targets, config.shard_rows, rng)):
        write_table_atomic(tmp / f"part-{j:05d}.parquet", shard)
        shards += 1
    total = sum(targets)
    components = [{"name": s.name, "run": s.run, "path": str(s.path), "kind": s.kind, "filters": s.filters,
                   "available": s.available, "taken": t, "share": round(t / total, 6),
                   "repeats": max(0, t - s.available)} for s, t in zip(sources, targets)]
    summary = {"stage": STAGE, "records_out": total, "shards": shards, "seed": config.seed,
               "fingerprint": manifest["fingerprint"], "components": components}
    write_json_atomic(tmp / "mixture.json", summary)
    (tmp / "card.md").write_text(mixture_section(summary), encoding="utf-8")
    write_json_atomic(tmp / "manifest.json", {**manifest, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    counts = {"stage": STAGE, "records_in": sum(s.available for s in sources), "records_out": total,
              "dropped": {}, "units": shards, "extra": {"components": components, "seed": config.seed,
                                                         "seconds": round(time.perf_counter() - started, 2)}}
    write_json_atomic(tmp / "counts.json", counts)
    return counts


def _swap(tmp: Path, out_dir: Path) -> None:
    """Rename the finished folder into place; an earlier one is moved aside first and removed after."""
    old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)
