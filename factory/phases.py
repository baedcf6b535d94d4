"""`phases:` in a pipeline YAML: a chain of ordinary pipelines in one file (R1: cold-start SFT → GRPO → rejection
sampling from the RL checkpoint → SFT of the base model → eval).

    phases:
      - {name: cold_start, stages: [generate, verify, curate, sft]}
      - {name: rl, stages: [grpo], set: {grpo.policy: "{phases.cold_start}/sft/model"}}

Each phase is the file's top-level keys with its `stages` and its `set` overrides applied (the `--set` machinery:
dotted keys, list items by index), run as a plain pipeline in its own run folder DIR/<phase>/, so fingerprints,
locks and resume work per phase unchanged; a rerun skips finished phases through their own stages' ledgers.
`{phases.NAME}` in any string value is the absolute run folder of an earlier phase NAME. Every phase is built and
validated before the first one runs: an unknown phase, a reference to a later phase or an invalid stage is a
ConfigError naming the file, the phase and the key. `--set` items on the command line apply to every phase, last."""
from __future__ import annotations

import copy
import json
import re
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from factory.config import ConfigError, PipelineConfig
from factory.config_paths import resolve_pipeline_paths
from factory.core.config import (
    apply_overrides,
    format_validation_error,
    read_yaml_mapping,
)

PLACEHOLDER = re.compile(r"\{phases\.([^{}]*)\}")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_PHASE_KEYS = {"name", "stages", "set"}


def has_phases(path: Path | str) -> bool:
    """Whether the pipeline file at `path` has a top-level `phases:` block (False when it cannot be read)."""
    try:
        return "phases" in read_yaml_mapping(path)
    except ConfigError:
        return False


def _check_phases(raw: Any, where: str) -> list[dict]:
    """The `phases:` list, each entry checked for its keys, a folder-safe unique name and a stage list."""
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{where}: phases: expected a non-empty list of {{name, stages, set}} mappings")
    seen: set[str] = set()
    for i, phase in enumerate(raw):
        key = f"phases.{i}"
        if not isinstance(phase, dict):
            raise ConfigError(f"{where}: {key}: expected a mapping with name, stages and (optionally) set")
        extra = sorted(set(phase) - _PHASE_KEYS)
        if extra:
            raise ConfigError(f"{where}: {key}: unknown key(s) {extra} (allowed: name, stages, set)")
        name = phase.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(f"{where}: {key}.name: {name!r} is not a folder name (letters, digits, _ . -)")
        if name in seen:
            raise ConfigError(f"{where}: {key}.name: phase {name!r} is defined twice")
        seen.add(name)
        if not isinstance(phase.get("stages"), list) or not phase["stages"]:
            raise ConfigError(f"{where}: {key}.stages: expected a non-empty list of stage names")
        if not isinstance(phase.get("set", {}), dict):
            raise ConfigError(f"{where}: {key}.set: expected a mapping of dotted.key: value")
    return raw


def _substitute(node: Any, keypath: str, folders: dict[str, Path], order: list[str], current: str,
                where: str) -> Any:
    """`node` with every `{phases.NAME}` replaced by NAME's run folder; NAME must be a phase before `current`."""
    if isinstance(node, dict):
        return {k: _substitute(v, f"{keypath}.{k}" if keypath else str(k), folders, order, current, where)
                for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(v, f"{keypath}.{i}", folders, order, current, where) for i, v in enumerate(node)]
    if not isinstance(node, str):
        return node

    def replace(match: re.Match) -> str:
        ref = match.group(1)
        if ref not in order:
            raise ConfigError(f"{where}: phase {current!r}: {keypath}: {match.group(0)} names no phase "
                              f"(phases: {', '.join(order)})")
        if ref not in folders:
            raise ConfigError(f"{where}: phase {current!r}: {keypath}: {match.group(0)} refers to phase {ref!r}, "
                              f"which does not run before {current!r} (order: {' → '.join(order)})")
        return str(folders[ref])

    return PLACEHOLDER.sub(replace, node)


def build_phases(path: Path | str, out_dir: Path, overrides: list[str] | None = None,
                 ) -> list[tuple[str, PipelineConfig, Path]]:
    """(name, validated config, run folder) of every phase of the pipeline file at `path`, in order."""
    from factory.config import prepare_mix_tree
    from factory.registry import STAGE_NAMES

    path, out_dir = Path(path), Path(out_dir).resolve()
    where = str(path)
    tree = read_yaml_mapping(path)
    phases = _check_phases(tree.pop("phases", None), where)
    order = [p["name"] for p in phases]
    folders: dict[str, Path] = {}
    built = []
    for i, phase in enumerate(phases):
        name = phase["name"]
        bad = [s for s in phase["stages"] if s not in STAGE_NAMES]
        if bad:
            raise ConfigError(f"{where}: phases.{i}.stages: phase {name!r}: unknown stage(s) {bad} "
                              f"(known: {', '.join(STAGE_NAMES)})")
        items = [f"{key}={json.dumps(value)}" for key, value in phase.get("set", {}).items()]
        sub = apply_overrides(copy.deepcopy(tree), items)  # JSON is YAML: each value parses back as given
        sub["stages"] = list(phase["stages"])
        sub = _substitute(sub, "", folders, order, name, where)
        sub = resolve_pipeline_paths(sub, path.parent)
        sub = prepare_mix_tree(sub, path.parent)
        sub = apply_overrides(sub, overrides or [])
        try:
            cfg = PipelineConfig.model_validate(sub)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, f"{where} (phase {name!r})", overrides)) from None
        folders[name] = out_dir / name
        built.append((name, cfg, folders[name]))
    return built


def run_phases(path: Path | str, out_dir: Path, overrides: list[str] | None = None, *,
               new_run: bool = False) -> dict:
    """Run every phase of the file at `path` in order, each in DIR/<phase>/; one printed line per phase."""
    from factory.core.progress import console
    from factory.core.shards import write_json_atomic
    from factory.pipeline import run_pipeline

    built = build_phases(path, out_dir, overrides)
    results: dict[str, dict] = {}
    for i, (name, cfg, folder) in enumerate(built, 1):
        console.print(f"[bold]phase {i}/{len(built)}: {name}[/] ({', '.join(cfg.stages)}) → {folder}")
        started = time.perf_counter()
        results[name] = run_pipeline(cfg, folder, new_run=new_run)
        console.print(f"[green]✓ phase {name}[/] done in {time.perf_counter() - started:.1f}s")
    summary = {name: {"run_dir": str(folder), "stages": list(cfg.stages),
                      "timings_s": results[name]["timings_s"]} for name, cfg, folder in built}
    write_json_atomic(Path(out_dir) / "phases.json", summary)
    return {"phases": results}
