"""`factory report DIR`: one self-contained HTML page of a run — the funnel, trace length, pass rate,
language consistency, the training loss and the eval table — written to `DIR/report.html`.

Every section reads only its own stage's files (Parquet: only the column it plots) and says "not run" when that
stage has not written them, so the report can be rendered at any point of a pipeline.
"""
from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from markupsafe import Markup

from factory.core.shards import write_text_atomic
from factory.report import plots

STAGE_ORDER = ["generate", "verify", "curate", "sft", "eval", "publish"]
REPORT_FILE = "report.html"
TEMPLATE = "report.html.j2"
SUMMARY_KEYS = ["model", "benchmark", "k", "n_problems", "pass@1", "pass@1_se", "cons@k", "mean_tokens",
                "truncation_rate"]


@dataclass
class Section:
    """One part of the page: `status` is 'ok', 'not run' or 'empty'; `notes` say what was skipped and why."""

    id: str
    title: str
    status: str = "not run"
    source: str = ""
    plot: Markup | None = None
    stats: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# --- reading -------------------------------------------------------------------------------------------------

def stage_dirs(run_dir: Path) -> list[Path]:
    """Stage folders holding a counts.json: the known stages in pipeline order, then any others by name."""
    found = {p.parent.name: p.parent for p in run_dir.glob("*/counts.json")}
    return [found[s] for s in STAGE_ORDER if s in found] + [found[s] for s in sorted(found) if s not in STAGE_ORDER]


def read_json(path: Path, notes: list[str]) -> object | None:
    """A JSON file's content, or None with a note naming the file when it cannot be read."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        notes.append(f"{path}: unreadable ({exc})")
        return None


def parquet_files(stage_dir: Path) -> list[Path]:
    return sorted(p for p in stage_dir.glob("*.parquet") if not p.name.startswith("."))


def read_column(stage_dir: Path, column: str, notes: list[str], per: str | None = None) -> np.ndarray | None:
    """Values of `column` over the stage's Parquet files, reading only that column (and `per`, when given and
    present: one value per distinct `per`, the first seen). None when no file has the column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    chunks, seen, files_with = [], set(), 0
    for path in parquet_files(stage_dir):
        try:
            names = pq.read_schema(path).names
        except Exception as exc:  # a torn or foreign file must not sink the whole report
            notes.append(f"{path.name}: unreadable Parquet ({exc})")
            continue
        if column not in names:
            notes.append(f"{path.name}: no '{column}' column")
            continue
        files_with += 1
        group = per if per is not None and per in names else None
        table = pq.read_table(path, columns=[column] + ([group] if group else []))
        values = table.column(column).cast(pa.float64()).to_numpy(zero_copy_only=False)  # nulls become NaN
        if group:
            keys = table.column(group).to_pylist()
            first = np.fromiter((key not in seen and not seen.add(key) for key in keys), dtype=bool, count=len(keys))
            values = values[first]
        chunks.append(values)
    if not files_with:
        return None
    return np.concatenate(chunks)


def describe(values: np.ndarray) -> dict[str, str]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return {"n": "0"}
    return {"n": f"{finite.size:,}", "mean": plots.fmt(float(finite.mean())),
            "median": plots.fmt(float(np.median(finite))), "p90": plots.fmt(float(np.percentile(finite, 90))),
            "min": plots.fmt(float(finite.min())), "max": plots.fmt(float(finite.max()))}


# --- sections ------------------------------------------------------------------------------------------------

def funnel_section(run_dir: Path) -> tuple[Section, list[dict], dict | None]:
    """Counts kept and dropped per stage and reason (every DIR/<stage>/counts.json), plus DIR/curate/funnel.json."""
    section = Section("funnel", "Funnel: kept and dropped per stage", source="<stage>/counts.json")
    rows: list[dict] = []
    for stage_dir in stage_dirs(run_dir):
        counts = read_json(stage_dir / "counts.json", section.notes)
        if not isinstance(counts, dict):
            if counts is not None:
                section.notes.append(f"{stage_dir / 'counts.json'}: not a JSON object")
            continue
        try:
            records_in, records_out = int(counts.get("records_in", 0)), int(counts.get("records_out", 0))
            dropped = {str(k): int(v) for k, v in (counts.get("dropped") or {}).items()}
        except (TypeError, ValueError, AttributeError) as exc:
            section.notes.append(f"{stage_dir / 'counts.json'}: bad counts ({exc})")
            continue
        extra = counts.get("extra") or {}
        rows.append({"stage": counts.get("stage") or stage_dir.name, "records_in": records_in,
                     "records_out": records_out, "dropped": dict(sorted(dropped.items(), key=lambda kv: -kv[1])),
                     "dropped_total": sum(dropped.values()),
                     "kept_share": records_out / records_in if records_in else None,
                     "extra": {k: json.dumps(v) if isinstance(v, (dict, list)) else str(v) for k, v in extra.items()}})
    curate_funnel = None
    funnel_file = run_dir / "curate" / "funnel.json"
    if funnel_file.exists():
        curate_funnel = tabulate(read_json(funnel_file, section.notes))
    if rows:
        section.status = "ok"
        reasons = list(dict.fromkeys(reason for row in rows for reason in row["dropped"]))
        colors = {reason: plots.PALETTE[(i + 1) % len(plots.PALETTE)] for i, reason in enumerate(reasons)}
        bars = [(row["stage"], [("kept", row["records_out"], plots.KEPT_COLOR)]
                 + [(reason, n, colors[reason]) for reason, n in row["dropped"].items()]) for row in rows]
        section.plot = Markup(plots.stacked_bars(bars, "Share of each stage's input kept, and dropped by reason"))
    return section, rows, curate_funnel


def tabulate(data: object) -> dict | None:
    """Any JSON funnel description as {columns, rows} for a plain table: a list of objects, an object of objects
    (its keys become the first column), or an object of scalars (name, value)."""
    def cell(v: object) -> str:
        return json.dumps(v) if isinstance(v, (dict, list)) else ("" if v is None else str(v))

    if isinstance(data, dict) and isinstance(data.get("steps"), list):
        data = data["steps"]
    if isinstance(data, list) and data and all(isinstance(d, dict) for d in data):
        columns = list(dict.fromkeys(k for d in data for k in d))
        return {"columns": columns, "rows": [[cell(d.get(c)) for c in columns] for d in data]}
    if isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
        columns = ["step"] + list(dict.fromkeys(k for v in data.values() for k in v))
        return {"columns": columns, "rows": [[k] + [cell(v.get(c)) for c in columns[1:]] for k, v in data.items()]}
    if isinstance(data, dict) and data:
        return {"columns": ["name", "value"], "rows": [[k, cell(v)] for k, v in data.items()]}
    if data is None:
        return None
    return {"columns": ["value"], "rows": [[cell(data)]]}


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
    return section, {"benchmarks": benchmarks, "grid": grid, "rows": rows}


# --- page ----------------------------------------------------------------------------------------------------

def build_context(run_dir: Path) -> dict:
    funnel, funnel_rows, curate_funnel = funnel_section(run_dir)
    evaluation, eval_table = eval_section(run_dir)
    distributions = [
        distribution_section(run_dir, "trace-length", "Trace length", "generate", "completion_tokens",
                             "completion tokens"),
        distribution_section(run_dir, "pass-rate", "Pass rate per prompt", "verify", "pass_rate",
                             "share of the k samples that are correct", per="prompt_id", value_range=(0.0, 1.0)),
        distribution_section(run_dir, "lang-consistency", "Language consistency", "curate", "lang_consistency",
                             "share of target-language words in the CoT", value_range=(0.0, 1.0)),
    ]
    return {"run_name": run_dir.resolve().name, "run_dir": str(run_dir),
            "generated": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
            "funnel": funnel, "funnel_rows": funnel_rows, "curate_funnel": curate_funnel,
            "distributions": distributions, "loss": loss_section(run_dir), "evaluation": evaluation,
            "eval_table": eval_table}


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
