"""Which benchmarks a pipeline decontaminates against, and decontamination of prompts and of a stage's input.

By default a pipeline is decontaminated against its own eval benchmarks (the `eval:` block) plus those listed in
`curate.decontam.benchmarks`: an eval file or Hub dataset is matched by word n-grams, an eval prompt source (the
demo's built-in held-out arithmetic split) by its whole problems, since templated problems share n-grams by design.
`decontaminate_prompts` runs before generation (generate drops the matches and records them in
`DIR/generate/decontam.json`); curate's `DecontamFilter` runs on the curated samples with the same benchmarks, and
`selection_matches` counts the matches in curate's input before and after selection.
"""
from __future__ import annotations

import glob
from collections import Counter, defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

from factory.curate.config import BenchmarkSpec, CurateConfig, DecontamConfig

if TYPE_CHECKING:
    from factory.config import PipelineConfig
    from factory.eval.config import BenchmarkConfig

DATA_SUFFIXES = (".jsonl", ".json", ".parquet")


def _listed(specs: list[BenchmarkSpec]) -> tuple[set[str], set[str]]:
    """(names, resolved file paths) of the listed benchmarks, folders and globs expanded."""
    names, files = set(), set()
    for spec in specs:
        if spec.name:
            names.add(spec.name)
        if spec.path is None:
            continue
        path = Path(spec.path).expanduser()
        found = (list(path.iterdir()) if path.is_dir() else [Path(p) for p in glob.glob(str(path))]
                 if any(ch in spec.path for ch in "*?[") else [path])
        for f in found:
            names.add(f.stem)
            files.add(str(f.resolve()))
    return names, files


def eval_benchmark_spec(bench: BenchmarkConfig) -> BenchmarkSpec:
    """An eval benchmark as a decontamination benchmark (same name; problems from the same column)."""
    if bench.source is not None:
        return BenchmarkSpec(name=bench.name, source=bench.source)
    path = Path(bench.path).expanduser()
    if path.exists() or bench.path.lower().endswith(DATA_SUFFIXES):
        return BenchmarkSpec(name=bench.name, path=bench.path, column=bench.problem_column)
    return BenchmarkSpec(name=bench.name, dataset=bench.path, subset=bench.subset, split=bench.split,
                         column=bench.problem_column)


def pipeline_decontam(cfg: PipelineConfig) -> DecontamConfig:
    """The pipeline's decontam block with its eval benchmarks added (unless `eval_benchmarks: false`); an eval
    benchmark already listed (same name or file) is not added twice."""
    config = cfg.curate.decontam
    evaluation = getattr(cfg, "eval", None)
    if not (config.enabled and config.eval_benchmarks and evaluation is not None):
        return config
    names, files = _listed(config.benchmarks)
    extra = []
    for bench in evaluation.benchmarks:
        local = bench.path is not None and Path(bench.path).expanduser().exists()
        if bench.name in names or (local and str(Path(bench.path).expanduser().resolve()) in files):
            continue
        extra.append(eval_benchmark_spec(bench))
    return config.model_copy(update={"benchmarks": [*config.benchmarks, *extra]}) if extra else config


def decontaminate_prompts(prompts: list[dict], config: DecontamConfig) -> tuple[list[dict], dict | None]:
    """(prompts kept, report) — the report (None when prompt decontamination is off or has no benchmarks) lists
    every dropped prompt with the benchmark and problem id it matched, and the counts per benchmark."""
    if not (config.enabled and config.prompts and config.benchmarks):
        return prompts, None
    from factory.curate.filters.decontam import build_index

    index = build_index(config)
    kept, dropped = [], []
    for p in prompts:
        hit = index.match(p.get("problem") or "")
        if hit is None:
            kept.append(p)
        else:
            dropped.append({"prompt_id": p["prompt_id"], "source": p.get("source"), "problem": p.get("problem"),
                            "benchmark": hit[0], "matched": hit[1]})
    per = Counter(d["benchmark"] for d in dropped)
    report = {"ngram": config.ngram, "prompts_in": len(prompts), "prompts_removed": len(dropped),
              "benchmarks": {name: {"problems": index.sizes[name], "prompts_removed": per[name]}
                             for name in index.names},
              "dropped": dropped}
    return kept, report


def _problem_rows(parts: list[Path], only_filter: str | None = None):
    """(prompt_id, problem) of every row of these shards (rejected shards: only those `only_filter` dropped)."""
    import pyarrow.parquet as pq

    columns = ["prompt_id", "problem"] + (["filter"] if only_filter else [])
    for part in parts:
        for batch in pq.ParquetFile(part).iter_batches(batch_size=65536, columns=columns):
            rows = zip(*(batch.column(c).to_pylist() for c in columns))
            yield from ((r[0], r[1]) for r in rows if only_filter is None or r[2] == only_filter)


def selection_matches(input_parts: list[Path], rejected_parts: list[Path], config: DecontamConfig) -> dict:
    """Per benchmark, the samples and prompts of curate's input that match it before selection, and after it (the
    input less what the selection filter rejected)."""
    from factory.curate.filters.decontam import build_index

    index = build_index(config)
    hits: dict[str, tuple[str, str] | None] = {}

    def count(rows) -> dict[str, Counter]:
        out: dict[str, Counter] = defaultdict(Counter)
        for pid, problem in rows:
            if problem not in hits:
                hits[problem] = index.match(problem or "")
            if hits[problem] is not None:
                out[hits[problem][0]][pid] += 1
        return out

    before = count(_problem_rows(input_parts))
    selection_drops = count(_problem_rows(rejected_parts, only_filter="selection"))
    report = {}
    for name in index.names:
        after = before[name] - selection_drops[name]  # Counter subtraction keeps positive counts only
        report[name] = {"before_selection": {"samples": sum(before[name].values()), "prompts": len(before[name])},
                        "after_selection": {"samples": sum(after.values()), "prompts": len(after)}}
    return report


def decontam_counts(report: dict | None) -> dict[str, int]:
    """{"decontam:benchmark:<name>": prompts removed} for a counts.json's `dropped` (benchmarks with matches)."""
    if not report:
        return {}
    return {f"decontam:benchmark:{name}": b["prompts_removed"] for name, b in report["benchmarks"].items()
            if b["prompts_removed"]}


def decontam_summary(report: dict | None) -> dict | None:
    """The report without its list of dropped prompts (that stays in decontam.json)."""
    if report is None:
        return None
    return {"file": "decontam.json", "prompts_removed": report["prompts_removed"],
            "benchmarks": {name: b["prompts_removed"] for name, b in report["benchmarks"].items()}}


def pipeline_curate_config(cfg) -> CurateConfig:
    """A pipeline's curate block with the decontam benchmarks of `pipeline_decontam` (absent block: defaults)."""
    curate = getattr(cfg, "curate", None)
    if curate is None:
        return CurateConfig()
    return curate.model_copy(update={"decontam": pipeline_decontam(cfg)})
