"""What every stage's config shares: the strict pydantic base, the config error, the one `--set` parser and the
YAML reader. A leaf module: it imports pydantic and yaml, nothing of any stage."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

# Discriminator tags pydantic puts in error locations of tagged unions (teacher backends, prompt sources).
_UNION_TAGS = ("vllm", "openai", "jsonl", "parquet", "csv", "disk", "hub", "arithmetic")


class ConfigError(ValueError):
    """The pipeline file or an override is invalid; the message names the file and key."""


class Strict(BaseModel):
    """A config block: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


def parse_override(item: str) -> tuple[list[str], Any]:
    """`key.path=value` → (["key", "path"], value parsed as YAML)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key.path=value")
    key, _, raw = item.partition("=")
    if not key.strip():
        raise ConfigError(f"--set {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {item!r}: value is not valid YAML: {exc}") from exc
    return key.strip().split("."), value


def apply_overrides(tree: dict, overrides: list[str]) -> dict:
    """Apply `--set key.path=value` items to a YAML tree in place (list items by index) and return it."""
    for item in overrides:
        path, value = parse_override(item)
        node: Any = tree
        for part in path[:-1]:
            if isinstance(node, list):
                node = node[int(part)]
                continue
            if part not in node or not isinstance(node[part], (dict, list)):
                node[part] = {}
            node = node[part]
        last = path[-1]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return tree


def format_validation_error(exc: ValidationError, where: str) -> str:
    """pydantic's errors as `FILE: key.path: message` lines (union tags left out of the key path)."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not (isinstance(p, str) and p in _UNION_TAGS))
        lines.append(f"{where}: {loc or '(top level)'}: {err['msg']}")
    return "\n".join(lines)


def read_yaml_mapping(path: Path | str) -> dict:
    """A YAML file whose top level is a mapping; anything else is a ConfigError naming the file."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such file")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return tree


def dump_config(model: BaseModel) -> dict:
    """A config block as plain JSON-able data (for manifests and fingerprints)."""
    return model.model_dump(mode="json")
