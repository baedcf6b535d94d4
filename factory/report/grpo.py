"""The report's GRPO section: per step reward, accuracy, format rate, mean response length (R1-Zero's figure:
length grows as training goes), KL to the reference and clip fraction, read from DIR/grpo/train_log.jsonl."""
from __future__ import annotations

import math
from pathlib import Path

from markupsafe import Markup, escape

from factory.core.jsonl import iter_log
from factory.report import plots
from factory.report.section import Section

# (log key, column title): TRL's metric names, plus the factory's per-reward means
COLUMNS = [("reward", "reward"), ("rewards/accuracy/mean", "accuracy"), ("rewards/format/mean", "format rate"),
           ("rewards/language/mean", "language"), ("completions/mean_length", "mean length"), ("kl", "KL"),
           ("clip_ratio/region_mean", "clip fraction"), ("rewards/timeouts", "reward timeouts")]
CHARTS = [(("reward", "rewards/accuracy/mean", "rewards/format/mean"), "Reward, accuracy and format rate by step",
           "mean over the step's samples"),
          (("completions/mean_length",), "Mean response length by step", "tokens"),
          (("kl", "clip_ratio/region_mean"), "KL to the reference and clip fraction by step", "value")]


def read_log(path: Path, notes: list[str]) -> list[dict]:
    rows = []
    for number, entry, why in iter_log(path):
        if why and why.startswith("not JSON"):
            notes.append(f"{path.name} line {number}: {why}")
        elif entry and isinstance(entry.get("step"), (int, float)):
            rows.append(entry)
    return rows


def _num(value) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    head = "".join(f"<th>{escape(title)}</th>" for _, title in columns)
    body = []
    for r in rows:
        cells = "".join(f"<td>{plots.fmt(v) if (v := _num(r.get(k))) is not None else '—'}</td>" for k, _ in columns)
        body.append(f"<tr><td>{int(r['step'])}</td>{cells}</tr>")
    return (f'<details class="prompt-table"><summary>{len(rows)} steps</summary><table class="grpo-steps">'
            f"<thead><tr><th>step</th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></details>")


def grpo_section(run_dir: Path) -> Section:
    section = Section("grpo", "GRPO: reward, accuracy, format, length, KL and clipping per step",
                      source="grpo/train_log.jsonl")
    path = Path(run_dir) / "grpo" / "train_log.jsonl"
    if not path.exists():
        return section
    rows = read_log(path, section.notes)
    if not rows:
        section.status = "empty"
        section.notes.insert(0, "no line with a numeric step")
        return section
    section.status = "ok"
    columns = [(k, t) for k, t in COLUMNS if any(_num(r.get(k)) is not None for r in rows)]
    first, last = rows[0], rows[-1]
    section.stats = {"steps": str(len(rows))}
    for key, title in columns[:5]:
        a, b = _num(first.get(key)), _num(last.get(key))
        if a is not None and b is not None:
            section.stats[title] = f"{plots.fmt(a)} → {plots.fmt(b)}"
    charts = []
    for keys, title, y_label in CHARTS:
        series = {dict(COLUMNS)[k]: ([float(r["step"]) for r in rows if _num(r.get(k)) is not None],
                                     [_num(r.get(k)) for r in rows if _num(r.get(k)) is not None]) for k in keys}
        if any(len(x) for x, _ in series.values()):
            charts.append(plots.line_chart(series, title, "step", y_label))
    section.plot = Markup("".join(charts) + _table(rows, columns))
    counts = Path(run_dir) / "grpo" / "counts.json"
    if not counts.exists():
        section.notes.append("grpo has not finished (no grpo/counts.json): the steps so far")
    return section
