"""`factory run`: the pipeline's stages in order, each through the stage registry; each stage resumes itself, so
a stopped run picks up where it stopped (finished stages are skipped through their ledgers). A stage whose input
stage was re-run (e.g. `factory verify --new-run`) is invalidated and redone, with a printed line."""
from __future__ import annotations

import time
from pathlib import Path

from factory.config import PipelineConfig
from factory.core.progress import console
from factory.core.shards import StageConfigChanged, write_json_atomic
from factory.registry import STAGE_NAMES, stage


def run_pipeline(cfg: PipelineConfig, out_dir: Path, *, new_run: bool = False, only: list[str] | None = None) -> dict:
    out_dir = Path(out_dir)
    stages = only or cfg.stages
    missing = [s for s in stages if s not in STAGE_NAMES]
    if missing:
        raise ValueError(f"unknown stages {missing} (known: {', '.join(STAGE_NAMES)})")
    timings_path = out_dir / "timings.json"  # the run folder is made by the first stage that writes into it
    timings = read_timings(timings_path)
    results: dict[str, dict] = {}
    for name in stages:
        started = time.perf_counter()
        results[name], redone = _run_stage(name, cfg, out_dir, new_run)
        spent = time.perf_counter() - started
        # A resumed stage adds the time it spent to what earlier runs spent on it: a finished stage that is only
        # skipped adds (almost) nothing, so the file keeps each stage's real time across resumes.
        timings[name] = round((0.0 if new_run or redone else timings.get(name, 0.0)) + spent, 2)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(timings_path, timings)  # after every stage: a crash later keeps these
        console.print(f"[green]✓[/] {name} done in {spent:.1f}s" + (
            f" ({timings[name]:.1f}s over all runs)" if timings[name] > spent + 0.05 else ""))
    if "report" not in stages:
        console.print(f"report: {stage('report')(cfg, out_dir)['report']}")
    return {"stages": results, "timings_s": timings}


def _run_stage(name: str, cfg: PipelineConfig, out_dir: Path, new_run: bool) -> tuple[dict, bool]:
    """Run one stage; (its counts, whether it was redone). A stage whose input stage was re-run since (only its
    input changed, not its configuration) is invalidated explicitly and redone, with a line saying so: that is
    what running the pipeline in order asks for. A changed configuration is still refused."""
    try:
        return stage(name)(cfg, out_dir, new_run=new_run), False
    except StageConfigChanged as exc:
        if exc.config_changed or not exc.input_changed:
            raise
        console.print(f"{name}: its input changed since it ran ({'; '.join(exc.changes)}); "
                      f"discarding {out_dir / name} and redoing {name}")
        return stage(name)(cfg, out_dir, new_run=True), True


def read_timings(path: Path) -> dict[str, float]:
    """Seconds per stage from an earlier run's timings.json ({} when there is none or it is unreadable)."""
    import json

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return {k: float(v) for k, v in data.items() if isinstance(v, (int, float))} if isinstance(data, dict) else {}
