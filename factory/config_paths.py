"""Relative paths in a pipeline YAML resolve against the YAML file's own folder, not the current directory.

Applied to the YAML tree before `--set` overrides (paths typed on the command line stay relative to the current
directory) and before validation. Absolute paths, URLs and Hub ids are left alone; `~` is expanded. Fields that are a
file (`prompts[].path`, `jinja_file`, `data_files`, decontam benchmark paths, `sft.data`) are always resolved;
fields that are a local path *or* a Hub id (`teacher.model`, `teacher.tokenizer`, `sft.student`, a hub source's
`dataset`, an eval benchmark's `path`) only when they start with `./` or `../`, exist next to the YAML, or (eval
benchmarks) end in a data file suffix. Eval model paths (`eval.models[].path`, e.g. `sft/model`) are relative to
the run folder and are not touched. A leaf module: os and pathlib only.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

FILE_SOURCES = ("jsonl", "parquet", "csv", "disk")
DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


def _absolute(value: str, base: Path) -> str:
    if "://" in value:
        return value
    path = Path(value).expanduser()
    return str(path) if path.is_absolute() else os.path.normpath(base / path)


def _file(node: Any, key: str, base: Path) -> None:
    """`node[key]` is always a local path (or a list of them)."""
    if not isinstance(node, dict):
        return
    value = node.get(key)
    if isinstance(value, str) and value:
        node[key] = _absolute(value, base)
    elif isinstance(value, list):
        node[key] = [_absolute(v, base) if isinstance(v, str) and v else v for v in value]


def _path_or_hub(node: Any, key: str, base: Path, suffixes: tuple[str, ...] = ()) -> None:
    """`node[key]` is a local path or a Hub id: resolved only where it reads as a local path."""
    if not isinstance(node, dict) or not isinstance(node.get(key), str) or not node[key]:
        return
    value = node[key]
    local = (value.startswith(("./", "../", "~")) or (base / value).exists()
             or (suffixes and value.lower().endswith(suffixes)))
    if local:
        node[key] = _absolute(value, base)


def _source(node: Any, base: Path) -> None:
    if not isinstance(node, dict):
        return
    if node.get("kind") in FILE_SOURCES:
        _file(node, "path", base)
    elif node.get("kind") == "hub":
        _path_or_hub(node, "dataset", base)
        _file(node, "data_files", base)


def _template(node: Any, base: Path) -> None:
    _file(node, "jinja_file", base)


def _items(node: Any, key: str) -> list:
    value = node.get(key) if isinstance(node, dict) else None
    return value if isinstance(value, list) else []


def resolve_pipeline_paths(tree: dict, base: Path) -> dict:
    """Resolve the path fields of a pipeline tree against folder `base` in place, and return the tree."""
    base = Path(base).resolve()
    for source in _items(tree, "prompts"):
        _source(source, base)
    _template(tree.get("template"), base)
    teacher = tree.get("teacher")
    _path_or_hub(teacher, "model", base)
    _path_or_hub(teacher, "tokenizer", base)
    sft = tree.get("sft")
    _file(sft, "data", base)
    _path_or_hub(sft, "student", base)
    evaluation = tree.get("eval")
    _template(evaluation.get("template") if isinstance(evaluation, dict) else None, base)
    for model in _items(evaluation, "models"):
        _template(model.get("template") if isinstance(model, dict) else None, base)
    for bench in _items(evaluation, "benchmarks"):
        _path_or_hub(bench, "path", base, DATA_SUFFIXES)
        _source(bench.get("source") if isinstance(bench, dict) else None, base)
    verify = tree.get("verify")
    judge = verify.get("judge") if isinstance(verify, dict) else None
    _file(judge, "template_file", base)
    judge_teacher = judge.get("teacher") if isinstance(judge, dict) else None
    _path_or_hub(judge_teacher, "model", base)
    _path_or_hub(judge_teacher, "tokenizer", base)
    curate = tree.get("curate")
    decontam = curate.get("decontam") if isinstance(curate, dict) else None
    for bench in _items(decontam, "benchmarks"):
        _file(bench, "path", base)
    return tree
