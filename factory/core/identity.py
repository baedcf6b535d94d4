"""What a stage's output depends on, and how a change is told in words.

- `upstream_identity`: the identity of a finished input stage: its manifest fingerprint (its whole configuration
  and, in turn, its own input) and a digest of its committed parts' checksums, not their file names;
- `describe_changes`: a manifest against what a rerun would record, as lines such as
  "sft.learning_rate: 0.0002 → 0.001", "plan: shard_size 64 → 32" or "input: verify was re-run (…)";
- `require_finished`: an unfinished or missing input stage is an error saying which, and whether it never ran, is
  running now, or stopped part-way.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from factory.core.jsonl import iter_log


class StageConfigChanged(RuntimeError):
    """The stage folder was written with a different configuration or input; `changes` says what changed."""

    def __init__(self, message: str, changes: list[str] | None = None, *, input_changed: bool = False,
                 config_changed: bool = True):
        super().__init__(message)
        self.changes = list(changes or [])
        self.input_changed = input_changed
        self.config_changed = config_changed


class UpstreamNotReady(RuntimeError):
    """A stage's declared input stage never ran, is running, or stopped part-way."""


def fingerprint(obj: Any) -> str:
    """Stable hash of a JSON-able object (config, input description)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def parts_digest(stage_path: Path) -> str:
    """A digest of the committed parts' checksums (from the ledger; a part without one is hashed here)."""
    stage_path = Path(stage_path)
    known = {entry["part"]: entry["sha256"] for _, entry, _ in iter_log(stage_path / "ledger.jsonl")
             if entry and entry.get("sha256") and entry.get("part")}
    digest = hashlib.sha256()
    for part in sorted(stage_path.glob("part-*.parquet")):
        digest.update(f"{part.name}:{known.get(part.name) or file_sha256(part)}\n".encode())
    return digest.hexdigest()[:16]


def upstream_identity(stage_path: Path) -> dict:
    """The identity of a finished input stage (what a downstream manifest records as its input)."""
    stage_path = Path(stage_path)
    manifest = _read_json(stage_path / "manifest.json")
    return {"stage": manifest.get("stage", stage_path.name), "fingerprint": manifest.get("fingerprint"),
            "parts": parts_digest(stage_path)}


def require_finished(stage_path: Path, reader: str | None = None) -> None:
    """Raise `UpstreamNotReady` unless the input stage folder `stage_path` has finished (has counts.json)."""
    from factory.core.lock import has_shards, holder

    stage_path = Path(stage_path)
    if (stage_path / "counts.json").exists():
        return
    name = stage_path.name
    who = f"{reader} reads {name}/, but " if reader else ""
    again = f"rerun `factory {name}` with the same --config and --out (or `factory run`) to complete it"
    if not stage_path.is_dir():
        raise UpstreamNotReady(f"{stage_path}: {who}{name} has not run yet (no such folder); run `factory {name}` "
                               f"(or `factory run`) on this run folder first")
    running = holder(stage_path)
    if running:
        raise UpstreamNotReady(f"{stage_path}: {who}{name} has not finished: it is running now ({running}); "
                               f"wait for it to finish")
    if not has_shards(stage_path):
        raise UpstreamNotReady(f"{stage_path}: {who}{name} has not finished: it stopped before committing "
                               f"anything; {again}")
    parts = len(list(stage_path.glob("part-*.parquet")))
    raise UpstreamNotReady(f"{stage_path}: {who}{name} has not finished: it stopped part-way ({parts} part(s) "
                           f"committed, no counts.json); {again}")


# -- telling what changed ------------------------------------------------------------------------------------
def _fmt(value: Any, width: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= width else text[:width - 1] + "…"


def leaf_diffs(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, old, new) of every leaf that differs; lists of equal length are compared item by item."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            out += leaf_diffs(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new) and old != new:
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in leaf_diffs(a, b, f"{prefix}{i}.")]
    return [] if old == new else [(prefix.rstrip("."), old, new)]


def _short(fp: Any) -> str:
    return f"{str(fp)[:8]}…" if fp else "none"


def input_changes(old: dict | None, new: dict | None) -> list[str]:
    """Lines for changed inputs (`inputs` maps an input's name to its identity)."""
    if old == new:
        return []
    if old is None:
        return ["input: not recorded (the folder was written by an older factory) → "
                + ", ".join(f"{k} {_short((v or {}).get('fingerprint'))}" for k, v in (new or {}).items())]
    new = new or {}
    if set(old) != set(new):
        return [f"input: now {', '.join(sorted(new)) or 'none'} (was {', '.join(sorted(old)) or 'none'})"]
    out = []
    for name in sorted(new):
        a, b = old[name] or {}, new[name] or {}
        if a == b:
            continue
        if a.get("fingerprint") != b.get("fingerprint"):
            out.append(f"input: {name} was re-run (fingerprint {_short(a.get('fingerprint'))} → "
                       f"{_short(b.get('fingerprint'))})")
        elif a.get("parts") != b.get("parts"):
            out.append(f"input: {name} was re-run with the same configuration and holds other records "
                       f"(parts digest {_short(a.get('parts'))} → {_short(b.get('parts'))})")
        else:
            out += [f"input: {name}.{k}: {_fmt(x)} → {_fmt(y)}" for k, x, y in leaf_diffs(a, b)]
    return out


def describe_changes(old: dict, config: dict, plan: dict | None, inputs: dict | None,
                     prefix: str = "") -> tuple[list[str], list[str]]:
    """(configuration and plan changes, input changes) of manifest `old` against a rerun's values."""
    lines = [f"{prefix}{k}: {_fmt(a)} → {_fmt(b)}" for k, a, b in leaf_diffs(old.get("config") or {}, config)]
    lines += [f"plan: {k} {_fmt(a)} → {_fmt(b)}" for k, a, b in leaf_diffs(old.get("plan") or {}, plan or {})]
    return lines, input_changes(old.get("inputs"), inputs) if ("inputs" in old or inputs is not None) else []


def changed_error(path: Path, old: dict, config: dict, plan: dict | None, inputs: dict | None,
                  prefix: str = "") -> StageConfigChanged:
    """The refusal of a rerun whose configuration or input differs from what wrote `path`."""
    config_lines, input_lines = describe_changes(old, config, plan, inputs, prefix)
    changes = config_lines + input_lines or ["fingerprint (the code's own settings)"]
    return StageConfigChanged(
        f"{path} was written by a different configuration or input (changed: {'; '.join(changes)}). Rerun with "
        f"--new-run to redo this stage, or choose another --out folder.", changes,
        input_changed=bool(input_lines), config_changed=bool(config_lines) or not input_lines)
