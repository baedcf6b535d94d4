"""What `factory publish` reads (`publish.dataset.source`): DIR/curate, or DIR/mix, the mixture `factory mix` built,
and for a mixture what its card's "Mixture" section says, read from DIR/mix's counts.json and manifest.json and
checked against the shards."""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from factory.core.lock import holder
from factory.core.shards import list_parts
from factory.publish.common import PublishError, read_json
from factory.publish.config import DatasetPublishConfig

SOURCE_SCHEMAS = {"curate": "curated", "mix": "mixed"}
MIX_RECORDS = ("counts.json", "manifest.json")  # written last by `factory mix`: their presence means complete
_BREAKDOWN = ("domain", "track")


@dataclass
class DatasetInput:
    """The folder a publish reads, its shards and the schema they must carry."""

    kind: str  # "curate" | "mix"
    folder: Path
    shards: list[Path]
    schema_name: str


def _rebuild_hint(run_dir: Path) -> str:
    return (f"rebuild it with `factory mix --config PIPELINE.yaml --out {run_dir} --new-run`, or publish the curated "
            f"set instead with `--set publish.dataset.source=curate`")


def _mix_state(mix_dir: Path) -> str:
    """absent (no folder, or only hidden entries such as a lock file), complete, or unfinished."""
    if not mix_dir.is_dir() or not [e for e in mix_dir.iterdir() if not e.name.startswith(".")]:
        return "absent"
    return "complete" if all((mix_dir / name).is_file() for name in MIX_RECORDS) else "unfinished"


def resolve_input(run_dir: Path, cfg: DatasetPublishConfig) -> DatasetInput:
    """DIR/curate or DIR/mix as `cfg.source` asks (auto: the mixture when the run holds one); an unfinished or
    missing input is a PublishError naming the folder and the command that completes it."""
    mix_dir = run_dir / "mix"
    kind = cfg.source
    if kind != "curate":
        who = holder(mix_dir) if mix_dir.is_dir() else None
        if who:
            raise PublishError(f"{mix_dir}: `factory mix` is writing it now ({who}); publish when it has finished")
        state = _mix_state(mix_dir)
        if state == "unfinished":  # refused under auto too: silently publishing curate/ instead would surprise
            missing = [n for n in MIX_RECORDS if not (mix_dir / n).is_file()]
            raise PublishError(f"{mix_dir}: the mixture is unfinished (no {' or '.join(missing)}); "
                               + _rebuild_hint(run_dir))
        if kind == "mix" and state == "absent":
            raise PublishError(f"{mix_dir}: no mixture in this run (publish.dataset.source is `mix`); build it with "
                               f"`factory mix --config PIPELINE.yaml --out {run_dir}`")
        kind = "mix" if state == "complete" else "curate"
    folder = run_dir / kind
    shards = list_parts(folder) if folder.is_dir() else []
    if kind == "curate":
        if not shards:
            raise PublishError(f"{folder}: no part-*.parquet shards; nothing to publish (run `factory curate` first)")
        if not (folder / "counts.json").exists():
            raise PublishError(f"{folder}: the stage has not finished (no counts.json); rerun it to complete it")
    else:
        if not shards:
            raise PublishError(f"{folder}: no part-*.parquet shards beside its counts.json; " + _rebuild_hint(run_dir))
        if cfg.include_rejected:
            raise PublishError(f"publish.dataset.include_rejected: a mixture ({folder}) has no rejected samples; set "
                               f"it to false, or publish the curated set with publish.dataset.source: curate")
    return DatasetInput(kind, folder, shards, cfg.schema_name or SOURCE_SCHEMAS[kind])


# ------------------------------------------------------------------------------------------------- the card
def _asked(spec: dict) -> str:
    """What the mix config asked of one source: `count 45`, `ratio 0.75`, `weight 2` or `all rows`."""
    for key in ("count", "ratio", "weight"):
        if spec.get(key) is not None:
            return f"{key} {spec[key]:,}" if key == "count" else f"{key} {spec[key]:g}"
    return "all rows"


def _shard_breakdown(shards: list[Path]) -> tuple[int, Counter, dict[str, dict[str, Counter]]]:
    """Rows, rows per component, and per component the rows of each domain and track (where the shards have them)."""
    rows, per_component = 0, Counter()
    breakdown: dict[str, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
    for path in shards:
        pf = pq.ParquetFile(path)
        rows += pf.metadata.num_rows
        columns = [c for c in ("mix_component", *_BREAKDOWN) if c in pf.schema_arrow.names]
        if "mix_component" not in columns:
            continue
        for batch in pf.iter_batches(columns=columns, batch_size=65536):
            data = batch.to_pydict()
            per_component.update(data["mix_component"])
            for col in columns[1:]:
                for component, value in zip(data["mix_component"], data[col]):
                    breakdown[component][col][value] += 1
    return rows, per_component, breakdown


def mixture_summary(inp: DatasetInput) -> dict:
    """The mixture as its card shows it: seed, total and every component (asked, available, taken, share,
    repeats, domains and tracks), checked against what the shards hold."""
    mix_dir, counts_path = inp.folder, inp.folder / "counts.json"
    counts, manifest = read_json(counts_path), read_json(mix_dir / "manifest.json")
    try:
        components = [dict(c) for c in counts["extra"]["components"]]
        total = int(counts["records_out"])
        seed = counts["extra"].get("seed")
        specs = (manifest.get("config") or {}).get("sources") or []
        for c in components:
            c["name"], c["taken"], c["available"] = str(c["name"]), int(c["taken"]), int(c["available"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise PublishError(f"{counts_path}: not a `factory mix` record (bad or missing {exc}); "
                           + _rebuild_hint(mix_dir.parent)) from None
    rows, found, breakdown = _shard_breakdown(inp.shards)
    taken = {c["name"]: c["taken"] for c in components}
    if rows != total or (found and dict(found) != {k: n for k, n in taken.items() if n}):
        raise PublishError(f"{mix_dir}: the shards hold {rows:,} rows ({_fmt(found)}) but counts.json records "
                           f"{total:,} ({_fmt(taken)}): the folder changed after `factory mix` wrote it; "
                           + _rebuild_hint(mix_dir.parent))
    for i, c in enumerate(components):
        spec = specs[i] if i < len(specs) and isinstance(specs[i], dict) else {}
        c["asked"] = _asked(spec)
        c.setdefault("share", c["taken"] / total if total else 0.0)
        for col in _BREAKDOWN:
            values = breakdown.get(c["name"], {}).get(col)
            if values:
                c[col + "s"] = {str(k): n for k, n in values.most_common() if k is not None}
    return {"records_out": total, "seed": seed, "components": components}


def _fmt(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {n:,}" for name, n in counts.items())
