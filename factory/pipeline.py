"""`factory run`: the pipeline's stages in order, each through the stage registry; each stage resumes itself, so
a stopped run picks up where it stopped (finished stages are skipped through their ledgers)."""
from __future__ import annotations

import time
from pathlib import Path

from factory.config import PipelineConfig
from factory.core.progress import console
from factory.core.shards import write_json_atomic
from factory.registry import STAGE_NAMES, stage


def run_pipeline(cfg: PipelineConfig, out_dir: Path, *, new_run: bool = False, only: list[str] | None = None) -> dict:
    out_dir = Path(out_dir)
    stages = only or cfg.stages
    missing = [s for s in stages if s not in STAGE_NAMES]
    if missing:
        raise ValueError(f"unknown stages {missing} (known: {', '.join(STAGE_NAMES)})")
    out_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    results: dict[str, dict] = {}
    for name in stages:
        started = time.perf_counter()
        results[name] = stage(name)(cfg, out_dir, new_run=new_run)
        timings[name] = round(time.perf_counter() - started, 2)
        console.print(f"[green]✓[/] {name} done in {timings[name]:.1f}s")
    write_json_atomic(out_dir / "timings.json", timings)
    if "report" not in stages:
        console.print(f"report: {stage('report')(cfg, out_dir)['report']}")
    return {"stages": results, "timings_s": timings}
