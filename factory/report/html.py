"""`factory report DIR`: one self-contained HTML page of a run — the funnel (rejection counted where it happens)
with curate's steps as tables, trace length, pass rate, language consistency, a browser of example samples per
stage, filter and reason, the training loss, the eval table, eval's wrong answers beside the reference and the
pass rate per prompt — written to `DIR/report.html`.

Every section reads only its own stage's files (Parquet: only the columns it needs; text only for the examples it
shows) and says "not run" when that stage has not written them, so the report can be rendered at any point of a
pipeline. The funnel lives in `funnel.py`, the browser in `browser.py` / `samples.py`, the charts in `plots.py`.
"""
from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

import numpy as np
from markupsafe import Markup

from factory.core.shards import write_text_atomic
from factory.report import plots, samples
from factory.report.funnel import curate_tables, funnel_rows, read_json
from factory.report.section import Section, describe, parquet_files, read_column

REPORT_FILE = "report.html"
TEMPLATE = "report.html.j2"
SUMMARY_KEYS = ["model", "benchmark", "k", "n_problems", "pass@1", "pass@1_se", "cons@k", "mean_tokens",
                "truncation_rate"]


# --- sections ------------------------------------------------------------------------------------------------

def funnel_section(run_dir: Path) -> tuple[Section, list[dict], list[dict]]:
    """Counts kept and dropped per stage and reason (every DIR/<stage>/counts.json; rejection sampling counted at
    verify), plus DIR/curate/funnel.json as tables."""
    section = Section("funnel", "Funnel: kept and dropped per stage", source="<stage>/counts.json")
    rows = funnel_rows(run_dir, section.notes)
    funnel_file = run_dir / "curate" / "funnel.json"
    tables = curate_tables(read_json(funnel_file, section.notes)) if funnel_file.exists() else []
    if rows:
        section.status = "ok"
        reasons = list(dict.fromkeys(reason for row in rows for reason in row["dropped"]))
        palette = [c for c in plots.PALETTE if c != plots.KEPT_COLOR]  # a drop never looks like "kept"
        colors = {reason: palette[i % len(palette)] for i, reason in enumerate(reasons)}
        bars = [(row["stage"], [("kept", row["records_out"], plots.KEPT_COLOR)]
                 + [(reason, n, colors[reason]) for reason, n in row["dropped"].items()]) for row in rows]
        section.plot = Markup(plots.stacked_bars(bars, "Share of each stage's input kept, and dropped by reason"))
    return section, rows, tables


def distribution_section(run_dir: Path, section_id: str, title: str, stage: str, column: str, x_label: str,
                         per: str | None = None, value_range: tuple[float, float] | None = None) -> Section:
    """A histogram of one column of one stage's Parquet files."""
    section = Section(section_id, title, source=f"{stage}/*.parquet · column {column}")
    stage_dir = run_dir / stage
    if not stage_dir.is_dir() or not parquet_files(stage_dir):
        return section
    values = read_column(stage_dir, column, section.notes, per=per)
    if values is None:
        section.status = "empty"
        section.notes.insert(0, f"no Parquet file of {stage} has a '{column}' column")
        return section
    section.stats = describe(values)
    if per is not None:
        section.stats = {"per": per, **section.stats}
    section.status = "ok" if np.isfinite(values).any() else "empty"
    section.plot = Markup(plots.histogram(values, title, x_label, value_range=value_range))
    return section


def loss_section(run_dir: Path) -> Section:
    """The training loss per step from DIR/sft/train_log.jsonl (lines {step, loss, ...}; eval_loss too if logged)."""
    section = Section("loss", "Training loss", source="sft/train_log.jsonl")
    log = run_dir / "sft" / "train_log.jsonl"
    if not log.exists():
        return section
    series: dict[str, tuple[list[float], list[float]]] = {"loss": ([], []), "eval_loss": ([], [])}
    for number, line in enumerate(log.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            section.notes.append(f"{log} line {number}: not JSON ({exc.msg})")
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("step"), (int, float)):
            continue
        for key in series:
            value = entry.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                series[key][0].append(float(entry["step"]))
                series[key][1].append(float(value))
    series = {k: v for k, v in series.items() if v[0]}
    if not series:
        section.status = "empty"
        section.notes.insert(0, "no line with a numeric step and loss")
        return section
    section.status = "ok"
    losses = series.get("loss", next(iter(series.values())))[1]
    section.stats = {"points": str(len(losses)), "first": plots.fmt(losses[0]), "last": plots.fmt(losses[-1]),
                     "min": plots.fmt(min(losses))}
    section.plot = Markup(plots.line_chart(series, "Training loss by step", "step", "loss"))
    return section


def eval_section(run_dir: Path) -> tuple[Section, dict | None]:
    """The eval summary (DIR/eval/summary.json): a models × benchmarks table, all rows, and a pass@1 bar chart."""
    section = Section("eval", "Evaluation", source="eval/summary.json")
    path = run_dir / "eval" / "summary.json"
    if not path.exists():
        return section, None
    rows = read_json(path, section.notes)
    if not isinstance(rows, list) or not all(isinstance(r, dict) and {"model", "benchmark"} <= r.keys()
                                             and isinstance(r.get("pass@1"), (int, float)) for r in rows):
        section.status = "empty"
        if rows is not None:
            section.notes.append(f"{path}: expected a list of rows with model, benchmark and a numeric pass@1")
        return section, None
    rows = [{**dict.fromkeys(SUMMARY_KEYS), **r} for r in rows]  # a row lacking a field shows "—"
    if not rows:
        section.status = "empty"
        return section, None
    models = list(dict.fromkeys(r["model"] for r in rows))
    benchmarks = list(dict.fromkeys(r["benchmark"] for r in rows))
    by_key = {(r["model"], r["benchmark"]): r for r in rows}
    grid = []
    for model in models:
        cells = []
        for benchmark in benchmarks:
            r = by_key.get((model, benchmark))
            if r is None:
                cells.append(None)
                continue
            se = r.get("pass@1_se")
            cells.append({"pass1": f"{100 * r['pass@1']:.1f}", "se": f"{100 * se:.1f}" if se is not None else None,
                          "cons": f"{100 * r['cons@k']:.1f}" if r.get("cons@k") is not None else None,
                          "k": r.get("k")})
        grid.append({"model": model, "cells": cells})
    section.status = "ok"
    values = {(r["benchmark"], r["model"]): (100 * r["pass@1"], 100 * r["pass@1_se"] if r.get("pass@1_se") else None)
              for r in rows}
    section.plot = Markup(plots.grouped_bars(benchmarks, models, values, "pass@1 (%) ± SE by benchmark", "pass@1 (%)",
                                             y_max=100.0))
    return section, {"benchmarks": benchmarks, "grid": grid, "rows": rows, "r1": r1_table(run_dir, section.notes)}


def r1_table(run_dir: Path, notes: list[str]) -> dict | None:
    """The R1 paper's table layout (DIR/eval/r1_table.json, written by `factory eval` with eval.table: r1)."""
    path = run_dir / "eval" / "r1_table.json"
    table = read_json(path, notes) if path.exists() else None
    if table is None:
        return None
    columns = table.get("columns") if isinstance(table, dict) else None
    rows = table.get("rows") if isinstance(table, dict) else None
    if not isinstance(columns, list) or not isinstance(rows, list) or not all(
            isinstance(r, dict) and len(r.get("values") or []) == len(columns) for r in rows):
        notes.append(f"{path}: expected columns and rows with one value per column")
        return None
    return table


# --- page ----------------------------------------------------------------------------------------------------

def build_context(run_dir: Path) -> dict:
    funnel, funnel_table, curate_funnel = funnel_section(run_dir)
    evaluation, eval_table = eval_section(run_dir)
    distributions = [
        distribution_section(run_dir, "trace-length", "Trace length", "generate", "completion_tokens",
                             "completion tokens"),
        samples.with_prompt_table(run_dir, distribution_section(
            run_dir, "pass-rate", "Pass rate per prompt", "verify", "pass_rate",
            "share of the k samples that are correct", per="prompt_id", value_range=(0.0, 1.0))),
        samples.lang_section(run_dir),
    ]
    if (run_dir / "grpo").is_dir():  # the GRPO stage's step log, for runs that have one
        from factory.report.grpo import grpo_section

        distributions.append(grpo_section(run_dir))
    return {"run_name": run_dir.resolve().name, "run_dir": str(run_dir),
            "generated": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
            "funnel": funnel, "funnel_rows": funnel_table, "curate_funnel": curate_funnel,
            "distributions": distributions, "samples": samples.samples_section(run_dir),
            "loss": loss_section(run_dir), "evaluation": evaluation, "eval_table": eval_table,
            "wrong": samples.wrong_section(run_dir), "prompts": samples.prompts_section(run_dir)}


def render_report(run_dir: Path) -> str:
    """The report's HTML text for `run_dir`."""
    from importlib.resources import files

    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    template = env.from_string((files("factory.report") / "assets" / TEMPLATE).read_text(encoding="utf-8"))
    return template.render(**build_context(Path(run_dir)))


def write_report(run_dir: Path) -> Path:
    """Render and write `run_dir/report.html` atomically (temp file + rename); returns its path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    html = render_report(run_dir)
    target = run_dir / REPORT_FILE
    write_text_atomic(target, html)
    return target


def report_stage(cfg, run_dir: Path, *, new_run: bool = False) -> dict:
    """The stage contract: the report of `run_dir` (it reads every stage's output; nothing to resume)."""
    return {"report": str(write_report(run_dir))}
