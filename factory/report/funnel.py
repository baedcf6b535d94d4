"""The run's funnel: records in/out and drops by reason per stage (every `DIR/<stage>/counts.json`), with
rejection sampling counted at verify, where it happens, and curate's `funnel.json` as plain tables.

Verify drops nothing: it marks each sample `selected` with a `select_reason`, and curate's selection filter later
removes the unselected ones (`selection:not_selected`). The funnel moves those drops to verify, by the reasons
verify gave, so verify no longer reads "kept 100%" and curate counts only what its own filters decided.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

STAGE_ORDER = ["generate", "verify", "curate", "sft", "eval", "publish"]
SELECTION_DROP = "selection:not_selected"


def read_json(path: Path, notes: list[str]) -> object | None:
    """A JSON file's content, or None with a note naming the file when it cannot be read."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        notes.append(f"{path}: unreadable ({exc})")
        return None


def stage_dirs(run_dir: Path) -> list[Path]:
    """Stage folders holding a counts.json: the known stages in pipeline order, then any others by name."""
    found = {p.parent.name: p.parent for p in run_dir.glob("*/counts.json")}
    return [found[s] for s in STAGE_ORDER if s in found] + [found[s] for s in sorted(found) if s not in STAGE_ORDER]


def cell(value: object) -> str:
    """A table cell's text: nested objects as `key value · key value`, lists comma-separated, None empty."""
    if isinstance(value, dict):
        return " · ".join(f"{k} {cell(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(cell(v) for v in value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def funnel_rows(run_dir: Path, notes: list[str]) -> list[dict]:
    """One row per stage: stage, records_in, records_out, dropped {reason: n} (largest first), dropped_total,
    kept_share, extra [(key, text)], note; rejection sampling attributed to verify (see the module doc)."""
    rows: list[dict] = []
    raw_extra: dict[str, dict] = {}
    for stage_dir in stage_dirs(run_dir):
        counts = read_json(stage_dir / "counts.json", notes)
        if not isinstance(counts, dict):
            if counts is not None:
                notes.append(f"{stage_dir / 'counts.json'}: not a JSON object")
            continue
        try:
            records_in, records_out = int(counts.get("records_in", 0)), int(counts.get("records_out", 0))
            dropped = {str(k): int(v) for k, v in (counts.get("dropped") or {}).items()}
        except (TypeError, ValueError, AttributeError) as exc:
            notes.append(f"{stage_dir / 'counts.json'}: bad counts ({exc})")
            continue
        stage = str(counts.get("stage") or stage_dir.name)
        extra = counts.get("extra") if isinstance(counts.get("extra"), dict) else {}
        raw_extra[stage] = extra
        shown = {k: v for k, v in extra.items() if not (stage == "curate" and k == "filters")}  # in the steps table
        rows.append({"stage": stage, "records_in": records_in, "records_out": records_out, "dropped": dropped,
                     "extra": [(str(k), cell(v)) for k, v in shown.items()], "note": ""})
    attribute_selection(rows, raw_extra.get("verify", {}))
    for row in rows:
        row["dropped"] = dict(sorted(row["dropped"].items(), key=lambda kv: -kv[1]))
        row["dropped_total"] = sum(row["dropped"].values())
        row["kept_share"] = row["records_out"] / row["records_in"] if row["records_in"] else None
    return rows


def attribute_selection(rows: list[dict], verify_extra: dict) -> None:
    """Count verify's not-selected samples as verify's drops (by select_reason) and take them out of curate's
    input, when curate's selection filter removed exactly those (or curate has not run yet)."""
    by_stage = {row["stage"]: row for row in rows}
    verify, curate = by_stage.get("verify"), by_stage.get("curate")
    not_selected = verify_extra.get("not_selected")
    if verify is None or not isinstance(not_selected, int) or not_selected <= 0 or verify["dropped"]:
        return
    if curate is not None and curate["dropped"].get(SELECTION_DROP) != not_selected:
        return  # curate selected by another rule (mode correct/off): verify's marks decided nothing
    reasons: dict[str, int] = {}
    for reason, n in (verify_extra.get("select_reason") or {}).items():
        if str(reason).startswith("rejected") and isinstance(n, int):
            key = re.sub(r"^rejected:\s*", "", str(reason))
            reasons[key] = reasons.get(key, 0) + n
    if sum(reasons.values()) != not_selected:
        reasons = {"not_selected": not_selected}
    verify["records_out"] = verify["records_out"] - not_selected
    verify["dropped"] = reasons
    verify["note"] = "rejection sampling: marked not selected here, removed by curate's selection filter"
    if curate is not None:
        curate["records_in"] -= not_selected
        curate["dropped"].pop(SELECTION_DROP)
        curate["note"] = f"input: verify's {verify['records_out']:,} selected samples"


def tabulate(data: object) -> dict | None:
    """Any JSON funnel description as {columns, rows} for a plain table: a list of objects, an object of objects
    (its keys become the first column), or an object of scalars (name, value)."""
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


def _share(n_out: object, n_in: object) -> str:
    return f"{100 * n_out / n_in:.1f}%" if isinstance(n_in, int) and n_in and isinstance(n_out, int) else "—"


def curate_tables(data: object) -> list[dict]:
    """curate/funnel.json as titled tables {id, title, columns, rows}: the filter steps in order, per source, per
    domain, decontam per benchmark. Another shape falls back to one generic table (`tabulate`)."""
    if not (isinstance(data, dict) and isinstance(data.get("filters"), list)):
        table = tabulate(data)
        return [{"id": "curate-steps", "title": "Curation steps", **table}] if table else []
    steps = [f for f in data["filters"] if isinstance(f, dict)]
    tables = [{"id": "curate-steps", "title": "Curation steps, in order",
               "columns": ["step", "in", "out", "kept", "dropped", "dropped by reason", "skipped", "seconds"],
               "rows": [[cell(f.get("name")), cell(f.get("in")), cell(f.get("out")), _share(f.get("out"), f.get("in")),
                         cell(sum((f.get("dropped") or {}).values())), cell(f.get("dropped") or {}) or "—",
                         cell(f.get("skipped")) or "", cell(f.get("seconds"))] for f in steps]}]
    for key, title in (("by_source", "By source"), ("by_domain", "By domain")):
        groups = data.get(key)
        if isinstance(groups, dict) and groups:
            tables.append({"id": f"curate-{key.replace('_', '-')}", "title": title,
                           "columns": [key[3:], "in", "out", "kept", "dropped by filter"],
                           "rows": [[name, cell(g.get("in")), cell(g.get("out")), _share(g.get("out"), g.get("in")),
                                     cell(g.get("dropped") or {}) or "—"]
                                    for name, g in groups.items() if isinstance(g, dict)]})
    benchmarks = (data.get("decontam") or {}).get("benchmarks") if isinstance(data.get("decontam"), dict) else None
    if isinstance(benchmarks, dict) and benchmarks:
        tables.append({"id": "curate-decontam", "title": f"Decontamination ({data['decontam'].get('ngram')}-grams)",
                       "columns": ["benchmark", "problems", "samples removed", "prompts removed"],
                       "rows": [[name, cell(b.get("problems")), cell(b.get("samples_removed")),
                                 cell(b.get("prompts_removed"))] for name, b in benchmarks.items()]})
    return tables
