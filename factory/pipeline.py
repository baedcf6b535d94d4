"""`factory run`: the pipeline's stages in order; each stage resumes itself, so a stopped run picks up where it
stopped (finished stages are skipped through their ledgers)."""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from factory.config import PipelineConfig
from factory.core.progress import console
from factory.core.shards import write_json_atomic

StageFn = Callable[..., dict]


def run_sft_stage(cfg: PipelineConfig, out_dir: Path, *, new_run: bool = False) -> dict:
    """The pipeline's `sft:` block on DIR/curate; `student: embedded` is the embedded SmolLM2. A run finished after
    its input was written, with the same configuration, is not trained again; a stopped one resumes from its last
    checkpoint."""
    import json
    import shutil

    import yaml

    from factory.train.stage import run_sft

    if cfg.sft is None:
        raise ValueError("the pipeline has no `sft:` block")
    sft = cfg.sft
    if sft.student == "embedded":
        from factory.core.embedded import embedded_model_dir

        sft = sft.model_copy(update={"student": str(embedded_model_dir())})
    sft_dir = Path(out_dir) / "sft"
    if new_run:
        shutil.rmtree(sft_dir, ignore_errors=True)
    done = sft_dir / "counts.json"
    source = Path(sft.data) if sft.data else Path(out_dir) / "curate" / "counts.json"
    fresh = done.exists() and source.exists() and done.stat().st_mtime_ns > source.stat().st_mtime_ns
    if fresh and (sft_dir / "sft_config.yaml").exists():
        if yaml.safe_load((sft_dir / "sft_config.yaml").read_text()) == {"sft": sft.model_dump()}:
            console.print(f"sft: already trained in {sft_dir}")
            return json.loads(done.read_text())
    return run_sft(sft, out_dir)


def stage_functions() -> dict[str, StageFn]:
    """Each stage as `fn(cfg, out_dir, new_run=...) -> counts`."""
    from factory.report.html import write_report
    from factory.curate.stage import run_curate
    from factory.eval.stage import run_eval
    from factory.generate.stage import run_generate
    from factory.publish.stage import run_publish
    from factory.verify.stage import run_verify

    return {
        "generate": run_generate,
        "verify": run_verify,
        "curate": run_curate,
        "sft": run_sft_stage,
        "eval": run_eval,
        "publish": lambda cfg, out, new_run=False: {"urls": run_publish(cfg.publish, out).urls},
        "report": lambda cfg, out, new_run=False: {"report": str(write_report(out))},
    }


def run_pipeline(cfg: PipelineConfig, out_dir: Path, *, new_run: bool = False, only: list[str] | None = None) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    registry = stage_functions()
    stages = only or cfg.stages
    missing = [s for s in stages if s not in registry]
    if missing:
        raise ValueError(f"stages not available in this factory build: {missing} (available: {list(registry)})")
    timings: dict[str, float] = {}
    results: dict[str, dict] = {}
    for name in stages:
        started = time.perf_counter()
        results[name] = registry[name](cfg, out_dir, new_run=new_run)
        timings[name] = round(time.perf_counter() - started, 2)
        console.print(f"[green]✓[/] {name} done in {timings[name]:.1f}s")
    write_json_atomic(out_dir / "timings.json", timings)
    if "report" not in stages:
        from factory.report.html import write_report

        console.print(f"report: {write_report(out_dir)}")
    return {"stages": results, "timings_s": timings}
