"""Example records of a run, grouped by why they were kept or dropped: per stage and filter, a few per reason.

The choice is deterministic and spread over the run: within a reason, the samples with the smallest hash of
(model, prompt_id, sample_idx) win, so the same run always shows the same examples, drawn from every shard.
Parquet is read twice: the small grouping columns of every row, then the display columns of the chosen rows only.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

KEY_COLUMNS = ("model", "benchmark", "prompt_id", "sample_idx")
TEXT_COLUMNS = ("problem", "answer", "extracted_answer", "answer_text", "reasoning", "messages", "completion")
DETAIL_COLUMNS = ("accuracy_verdict", "accuracy_reason", "format_verdict", "select_reason", "pass_rate",
                  "majority_answer", "finish_reason", "completion_tokens", "filter", "reason", "matched",
                  "lang_consistency", "repeated_ngram_ratio", "compression_ratio", "longest_paragraph_words",
                  "markup_ratio", "error")
STAGES = ("generate", "verify", "curate")


@dataclass
class Group:
    """The samples of one (stage, filter, reason): how many there are and a few examples."""

    stage: str
    filter: str
    reason: str
    count: int = 0
    examples: list[dict] = field(default_factory=list)
    kept: bool = False


def parts(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("part-*.parquet") if not p.name.startswith("."))


def sample_hash(row: dict) -> str:
    key = f"{row.get('model') or ''}/{row.get('prompt_id')}/{row.get('sample_idx')}"
    return hashlib.blake2b(key.encode(), digest_size=8).hexdigest()


def pick(paths: list[Path], columns: list[str], group_of: Callable[[dict], tuple | None], n: int,
         notes: list[str] | None = None) -> dict[tuple, tuple[int, list[dict]]]:
    """{group: (count, up to n example rows)} over `paths`; `group_of(row)` of the grouping `columns` (None:
    skip the row). Examples carry the key, text and detail columns the files have, in hash order."""
    counts: dict[tuple, int] = {}
    chosen: dict[tuple, list[tuple[str, int, int]]] = {}
    for fi, path in enumerate(paths):
        try:
            names = pq.read_schema(path).names
        except Exception as exc:  # a torn or foreign file must not sink the whole view
            (notes if notes is not None else []).append(f"{path.name}: unreadable Parquet ({exc})")
            continue
        wanted = [c for c in dict.fromkeys([*KEY_COLUMNS, *columns]) if c in names]
        offset = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=65536, columns=wanted):
            for j, row in enumerate(batch.to_pylist()):
                group = group_of(row)
                if group is None:
                    continue
                counts[group] = counts.get(group, 0) + 1
                best = chosen.setdefault(group, [])
                best.append((sample_hash(row), fi, offset + j))
                if len(best) > 4 * n:
                    best.sort()
                    del best[n:]
            offset += batch.num_rows
    by_file: dict[int, list[int]] = {}
    for group, best in chosen.items():
        best.sort()
        del best[n:]
        for _, fi, row in best:
            by_file.setdefault(fi, []).append(row)
    rows: dict[tuple[int, int], dict] = {}
    for fi, indices in by_file.items():
        names = pq.read_schema(paths[fi]).names
        cols = [c for c in dict.fromkeys([*KEY_COLUMNS, *columns, *TEXT_COLUMNS, *DETAIL_COLUMNS]) if c in names
                and not (c == "completion" and "reasoning" in names)]  # the split text, not the whole twice
        table = pq.read_table(paths[fi], columns=cols).take(sorted(indices))
        for index, row in zip(sorted(indices), table.to_pylist()):
            rows[(fi, index)] = row
    return {g: (counts[g], [rows[(fi, r)] for _, fi, r in chosen[g]]) for g in counts}


def _ordered(found: dict[tuple, tuple[int, list[dict]]]) -> list[tuple[tuple, int, list[dict]]]:
    return sorted(((g, c, ex) for g, (c, ex) in found.items()), key=lambda t: (t[0][0] == "kept", -t[1], t[0]))


def generic_reason(reason: str) -> str:
    """A reason with its numbers replaced by N, so 'pass rate 0.25 outside …' and '… 0.75 …' group together."""
    return re.sub(r"\d+(?:\.\d+)?", "N", reason)


def verify_group(row: dict) -> tuple[str, str]:
    """verify's group of a sample: its rejection-sampling decision, else its verdict (older verdict files)."""
    if row.get("select_reason") is not None:
        return ("kept" if row.get("selected") else "rejection sampling", generic_reason(row["select_reason"]))
    if row.get("accuracy_verdict") is not None:
        return "verdict", str(row["accuracy_verdict"])
    return "reward_accuracy", str(row.get("reward_accuracy"))


def stage_groups(run_dir: Path, stage: str, n: int = 3, notes: list[str] | None = None) -> list[Group]:
    """Groups of one stage: generate by finish reason, verify by select_reason (rejection sampling), curate by
    filter and reason of `curate/rejected/`, plus the kept samples as one group."""
    folder = Path(run_dir) / stage
    if stage == "generate":
        found = pick(parts(folder), ["finish_reason", "error"], lambda r: (
            "finish_reason", "error" if r.get("error") else str(r.get("finish_reason"))), n, notes)
        return [Group(stage, f, reason, c, ex, kept=reason == "stop") for (f, reason), c, ex in _ordered(found)]
    if stage == "verify":
        found = pick(parts(folder), ["selected", "select_reason", "accuracy_verdict", "reward_accuracy"],
                     verify_group, n, notes)
        return [Group(stage, f, reason, c, ex, kept=f == "kept") for (f, reason), c, ex in _ordered(found)]
    if stage == "curate":
        found = pick(parts(folder / "rejected"), ["filter", "reason"],
                     lambda r: (str(r.get("filter")), str(r.get("reason"))), n, notes)
        groups = [Group(stage, f, reason, c, ex) for (f, reason), c, ex in _ordered(found)]
        kept = pick(parts(folder), [], lambda r: ("kept", "kept"), n, notes)
        return groups + [Group(stage, "kept", "kept", c, ex, kept=True) for _, c, ex in _ordered(kept)]
    return []


def wrong_answers(run_dir: Path, n: int = 3, notes: list[str] | None = None) -> list[Group]:
    """eval's wrong samples per (model, benchmark) and verdict, each beside its reference answer."""
    found = pick(parts(Path(run_dir) / "eval"), ["reward_accuracy", "accuracy_verdict"], lambda r: None if (
        r.get("reward_accuracy") is not None and r["reward_accuracy"] >= 1.0) else (
        f"{r.get('model')} · {r.get('benchmark')}", str(r.get("accuracy_verdict"))), n, notes)
    return [Group("eval", f, reason, c, ex) for (f, reason), c, ex in sorted(
        ((g, c, ex) for g, (c, ex) in found.items()), key=lambda t: (t[0][0], -t[1], t[0][1]))]


def prompt_pass_rates(run_dir: Path, limit: int = 100, notes: list[str] | None = None) -> list[dict]:
    """Per benchmark, a prompt × model table of eval's correct samples: {benchmark, models, rows, more} with rows
    {prompt_id, reference, cells: {model: (correct, k)}, mean}, hardest prompts first, at most `limit` rows."""
    tallies: dict[str, dict[str, dict]] = {}
    for path in parts(Path(run_dir) / "eval"):
        try:
            names = pq.read_schema(path).names
        except Exception as exc:  # a torn file is named, not fatal
            (notes if notes is not None else []).append(f"{path.name}: unreadable Parquet ({exc})")
            continue
        if not {"model", "benchmark", "prompt_id", "reward_accuracy"} <= set(names):
            continue
        columns = ["model", "benchmark", "prompt_id", "reward_accuracy"] + (["answer"] if "answer" in names else [])
        table = pq.read_table(path, columns=columns).to_pydict()
        for i, model in enumerate(table["model"]):
            prompts = tallies.setdefault(table["benchmark"][i], {})
            entry = prompts.setdefault(table["prompt_id"][i], {"reference": None, "cells": {}})
            if "answer" in table:
                entry["reference"] = table["answer"][i]
            right, k = entry["cells"].get(model, (0, 0))
            value = table["reward_accuracy"][i]
            entry["cells"][model] = (right + (value is not None and value >= 1.0), k + 1)
    out = []
    for benchmark, prompts in tallies.items():
        models = list(dict.fromkeys(m for e in prompts.values() for m in e["cells"]))
        rows = [{"prompt_id": pid, "reference": e["reference"], "cells": e["cells"],
                 "mean": sum(c / k for c, k in e["cells"].values()) / len(e["cells"])} for pid, e in prompts.items()]
        rows.sort(key=lambda r: (r["mean"], r["prompt_id"]))
        out.append({"benchmark": benchmark, "models": models, "rows": rows[:limit], "more": max(len(rows) - limit, 0)})
    return out


def verify_prompts(run_dir: Path, limit: int = 50, notes: list[str] | None = None) -> dict | None:
    """verify's prompts, hardest first: {rows, more, prompts} with rows {prompt_id, reference, majority, correct,
    k, selected, pass_rate} (pass_rate as verify judged it: null when nothing could be judged)."""
    prompts: dict[str, dict] = {}
    wanted = ["prompt_id", "answer", "majority_answer", "reward_accuracy", "selected", "pass_rate"]
    for path in parts(Path(run_dir) / "verify"):
        try:
            names = pq.read_schema(path).names
        except Exception as exc:  # a torn file is named, not fatal
            (notes if notes is not None else []).append(f"{path.name}: unreadable Parquet ({exc})")
            continue
        if not {"prompt_id", "reward_accuracy"} <= set(names):
            return None
        table = pq.read_table(path, columns=[c for c in wanted if c in names]).to_pylist()
        for r in table:
            p = prompts.setdefault(r["prompt_id"], {"prompt_id": r["prompt_id"], "reference": r.get("answer"),
                                                    "majority": r.get("majority_answer"), "correct": 0, "k": 0,
                                                    "selected": 0, "pass_rate": r.get("pass_rate")})
            p["k"] += 1
            p["correct"] += r["reward_accuracy"] is not None and r["reward_accuracy"] >= 1.0
            p["selected"] += bool(r.get("selected"))
    if not prompts:
        return None
    rows = sorted(prompts.values(), key=lambda p: (p["correct"] / p["k"], p["prompt_id"]))
    return {"rows": rows[:limit], "more": max(len(rows) - limit, 0), "prompts": len(rows)}


def excerpt(text: str | None, head: int = 600, tail: int = 200) -> str:
    """`text` shortened to its start and end, saying how much was left out."""
    text = text or ""
    if len(text) <= head + tail + 40:
        return text
    return f"{text[:head]} … [{len(text) - head - tail:,} chars] … {text[-tail:]}"


def reply(row: dict) -> str:
    """The sample's reasoning and answer: from reasoning/answer_text, or the assistant turn of `messages`."""
    if row.get("reasoning") is not None or row.get("answer_text") is not None:
        return f"{row.get('reasoning') or ''}\n\n→ {row.get('answer_text') or ''}".strip()
    messages = row.get("messages")
    if isinstance(messages, str):
        try:
            messages = json.loads(messages)
        except json.JSONDecodeError:
            return messages
    for m in messages or []:
        if isinstance(m, dict) and m.get("role") == "assistant":
            return str(m.get("content") or "")
    return str(row.get("completion") or "")


def details(row: dict) -> list[tuple[str, str]]:
    """The row's scores and verdicts worth showing beside it, as (name, text)."""
    out = []
    for name in DETAIL_COLUMNS:
        value = row.get(name)
        if value is None or value == "" or name in ("filter", "reason"):
            continue
        out.append((name, f"{value:.3g}" if isinstance(value, float) else str(value)))
    return out


def view(row: dict, head: int = 1500, tail: int = 500) -> dict:
    """One example as the report shows it: its id, reason, scores, answer beside the reference, and texts."""
    return {"id": f"{row.get('prompt_id')}#{row.get('sample_idx')}", "model": row.get("model"),
            "reason": row.get("reason"), "matched": row.get("matched"), "details": details(row),
            "answer": row.get("extracted_answer"), "reference": row.get("answer"),
            "correct": row.get("reward_accuracy") is not None and row["reward_accuracy"] >= 1.0,
            "problem": excerpt(row.get("problem"), 400, 100), "reply": excerpt(reply(row), head, tail)}
