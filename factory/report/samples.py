"""The report's data browser: example records per stage, filter and reason; eval's wrong answers beside the
reference; a per-prompt pass-rate table; and language consistency as a histogram of kept and dropped samples."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from markupsafe import Markup

from factory.report import browser, plots
from factory.report.section import Section, describe, parquet_files, read_column

PER_REASON = 3
MAX_GROUPS = 40
PROMPT_ROWS = 100
DROPPED_COLOR, LATER_COLOR = "#e15759", "#bab0ac"


def samples_section(run_dir: Path, n: int = PER_REASON) -> Section:
    """Per stage (generate, verify, curate): its groups by filter and reason, a few examples each."""
    section = Section("samples", "Samples by stage, filter and reason",
                      source="generate/, verify/ (select_reason), curate/rejected/ (filter, reason), curate/")
    stages = []
    for stage in browser.STAGES:
        groups = browser.stage_groups(run_dir, stage, n=n, notes=section.notes)
        if not groups:
            continue
        if len(groups) > MAX_GROUPS:
            section.notes.append(f"{stage}: {len(groups)} reasons, the {MAX_GROUPS} largest shown")
            groups = groups[:MAX_GROUPS]
        stages.append({"stage": stage, "total": sum(g.count for g in groups),
                       "groups": [{"filter": g.filter, "reason": g.reason, "count": g.count, "kept": g.kept,
                                   "examples": [browser.view(r) for r in g.examples]} for g in groups]})
    if stages:
        section.status = "ok"
        section.data = stages
    return section


def wrong_section(run_dir: Path, n: int = PER_REASON) -> Section:
    """eval's wrong samples per model, benchmark and verdict, each beside the reference answer."""
    section = Section("wrong-answers", "Eval: wrong answers beside the reference",
                      source="eval/*.parquet · reward_accuracy < 1")
    if not parquet_files(Path(run_dir) / "eval"):
        return section
    groups = browser.wrong_answers(run_dir, n=n, notes=section.notes)
    section.status = "ok" if groups else "empty"
    if not groups:
        section.notes.append("no wrong answers")
    section.data = [{"label": g.filter, "verdict": g.reason, "count": g.count,
                     "examples": [browser.view(r, 1000, 300) for r in g.examples]} for g in groups]
    return section


def prompts_section(run_dir: Path, limit: int = PROMPT_ROWS) -> Section:
    """Per benchmark, correct samples per prompt and model, hardest prompts first."""
    section = Section("prompt-pass-rates", "Eval: pass rate per prompt", source="eval/*.parquet")
    if not parquet_files(Path(run_dir) / "eval"):
        return section
    tables = browser.prompt_pass_rates(run_dir, limit=limit, notes=section.notes)
    section.status = "ok" if tables else "empty"
    if not tables:
        section.notes.append("no eval file has model, benchmark, prompt_id and reward_accuracy")
    for bench in tables:
        bench["rows"] = [{**row, "cells": [row["cells"].get(m) for m in bench["models"]]} for row in bench["rows"]]
    section.data = tables
    return section


def with_prompt_table(run_dir: Path, section: Section, limit: int = 50) -> Section:
    """verify's pass-rate section with a table of its prompts, hardest first (correct and selected of k)."""
    if section.status != "not run":
        section.data = browser.verify_prompts(run_dir, limit=limit, notes=section.notes)
    return section


def lang_threshold(run_dir: Path) -> float | None:
    """The language filter's cut-off from curate/manifest.json, when the run recorded it."""
    try:
        config = json.loads((Path(run_dir) / "curate" / "manifest.json").read_text()).get("config") or {}
        value = (config.get("language") or {}).get("min_consistency")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None
    return float(value) if isinstance(value, (int, float)) else None


def dropped_scores(rejected_dir: Path, notes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """lang_consistency of curate's dropped samples: (dropped by the language filter, dropped by a later one)."""
    by_language, later = [], []
    for path in parquet_files(rejected_dir):
        try:
            names = pq.read_schema(path).names
        except Exception as exc:  # a torn file is named, not fatal
            notes.append(f"rejected/{path.name}: unreadable Parquet ({exc})")
            continue
        if not {"lang_consistency", "filter"} <= set(names):
            continue
        table = pq.read_table(path, columns=["lang_consistency", "filter"]).to_pydict()
        for value, name in zip(table["lang_consistency"], table["filter"]):
            if value is not None:
                (by_language if name == "language" else later).append(value)
    return np.asarray(by_language, float), np.asarray(later, float)


def lang_section(run_dir: Path) -> Section:
    """The paper's language consistency of curate's samples: kept, dropped by the language filter, and dropped
    later (scored, then removed by another filter), in fixed bins over [0, 1] with the filter's cut-off."""
    section = Section("lang-consistency", "Language consistency",
                      source="curate/*.parquet and curate/rejected/*.parquet · column lang_consistency")
    stage_dir = Path(run_dir) / "curate"
    if not stage_dir.is_dir() or not parquet_files(stage_dir):
        return section
    kept = read_column(stage_dir, "lang_consistency", section.notes)
    by_language, later = dropped_scores(stage_dir / "rejected", section.notes)
    if kept is None and not by_language.size and not later.size:
        section.status = "empty"
        section.notes.insert(0, "no Parquet file of curate has a 'lang_consistency' column")
        return section
    kept = kept if kept is not None else np.zeros(0)
    values = np.concatenate([kept, by_language, later])
    threshold = lang_threshold(run_dir)
    section.stats = describe(values)
    if threshold is not None and np.isfinite(values).any():
        section.stats["below cut-off"] = f"{int((values[np.isfinite(values)] < threshold).sum()):,}"
    section.status = "ok" if np.isfinite(values).any() else "empty"
    series = [("kept", kept, plots.KEPT_COLOR), ("dropped by the language filter", by_language, DROPPED_COLOR),
              ("dropped by a later filter", later, LATER_COLOR)]
    section.plot = Markup(plots.stacked_histogram(
        [s for s in series if s[1].size], "Language consistency of curate's samples",
        "share of target-language words in the CoT", threshold=threshold))
    return section
