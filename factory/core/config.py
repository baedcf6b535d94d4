"""What every stage's config shares: the strict pydantic base, the config error, the one `--set` parser and the
YAML reader. A leaf module: it imports pydantic and yaml, nothing of any stage."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

# Discriminator tags pydantic puts in error locations of tagged unions (teacher backends, prompt sources).
_UNION_TAGS = ("vllm", "openai", "jsonl", "parquet", "csv", "disk", "hub", "arithmetic")


class ConfigError(ValueError):
    """The pipeline file or an override is invalid; the message names the file and key."""


class YamlLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader with YAML 1.2 booleans: only true/false (any case) are booleans, so `mode: off` or
    `answer: yes` stay strings (YAML 1.1 reads on/off/yes/no as booleans, which breaks string enums)."""


YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
YamlLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                 list("tTfF"))


def load_yaml(text: str) -> Any:
    """Parse YAML text with `YamlLoader` (the one YAML reading of pipelines, recipes and `--set` values)."""
    return yaml.load(text, Loader=YamlLoader)  # a SafeLoader subclass: no arbitrary objects


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
        value = load_yaml(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {item!r}: value is not valid YAML: {exc}") from exc
    return key.strip().split("."), value


def _index(node: list, part: str, item: str, where: str) -> int:
    """`part` as an index into list `node` (at key path `where`); anything else is a ConfigError saying why."""
    try:
        index = int(part)
    except ValueError:
        raise ConfigError(f"--set {item}: {where} is a list; {part!r} is not a list index "
                          f"(use an integer 0..{len(node) - 1}, e.g. {where}.0)") from None
    if not 0 <= index < len(node):
        raise ConfigError(f"--set {item}: {where} has {len(node)} item(s) (indices 0..{len(node) - 1}); "
                          f"index {index} is out of range")
    return index


def apply_overrides(tree: dict, overrides: list[str]) -> dict:
    """Apply `--set key.path=value` items to a YAML tree in place (list items by index) and return it; a bad list
    index is a ConfigError naming the override, the list's key and its length."""
    for item in overrides:
        path, value = parse_override(item)
        node: Any = tree
        for depth, part in enumerate(path[:-1]):
            if isinstance(node, list):
                node = node[_index(node, part, item, ".".join(path[:depth]) or "(top level)")]
                continue
            if part not in node or not isinstance(node[part], (dict, list)):
                node[part] = {}
            node = node[part]
        last = path[-1]
        if isinstance(node, list):
            node[_index(node, last, item, ".".join(path[:-1]))] = value
        else:
            node[last] = value
    return tree


def _override_for(loc: str, overrides: list[str]) -> str | None:
    """The `--set` item whose key is, contains or lies inside key path `loc` (the last one given wins)."""
    for item in reversed(overrides):
        key = item.partition("=")[0].strip()
        if loc == key or loc.startswith(key + ".") or key.startswith(loc + "."):
            return item
    return None


def format_validation_error(exc: ValidationError, where: str, overrides: list[str] | None = None) -> str:
    """pydantic's errors as `FILE: key.path: message` lines (union tags left out of the key path); an error at a key
    that a `--set` item gave is blamed on that item (`--set key=value: key.path: message`), not on the file."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not (isinstance(p, str) and p in _UNION_TAGS))
        item = _override_for(loc, overrides or []) if loc else None
        lines.append(f"{f'--set {item}' if item else where}: {loc or '(top level)'}: {err['msg']}")
    return "\n".join(lines)


def read_yaml_mapping(path: Path | str) -> dict:
    """A YAML file whose top level is a mapping; anything else is a ConfigError naming the file."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such file")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: byte offset {exc.start} (0x{data[exc.start]:02x}) "
                          f"cannot be decoded ({exc.reason}); save the file as UTF-8") from None
    try:
        tree = load_yaml(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return tree


def dump_config(model: BaseModel) -> dict:
    """A config block as plain JSON-able data (for manifests and fingerprints)."""
    return model.model_dump(mode="json")


class ExecutorConfig(Strict):
    """The `executor:` block: where work runs. `local` is this machine (processes of it); `ray` is a Ray cluster."""

    kind: Literal["local", "ray"] = "local"
    address: str = Field("auto", description="ray: 'auto' (the cluster RAY_ADDRESS or a `ray start` on this node "
                                             "names, else a new one-node cluster here), 'host:port' of a head node, "
                                             "'ray://host:port' (Ray Client), or 'local' (always a new one here)")
    replicas: int | None = Field(None, ge=1, description="teacher engines; default: the cluster's GPUs divided by "
                                                         "tensor x pipeline parallel size (at least 1)")
    replica_cpus: float = Field(1.0, gt=0, description="CPUs reserved per teacher replica")
    replica_gpus: float | None = Field(None, ge=0, description="GPUs per replica; default tensor x pipeline size on "
                                                               "a GPU cluster, 0 on a CPU one")
    replica_resources: dict[str, float] = Field(default_factory=dict, description="custom resources per replica")
    task_cpus: float = Field(1.0, gt=0, description="CPUs per map task (verify, curate filters)")
    tasks_in_flight: int = Field(0, ge=0, description="map tasks submitted at once; 0: twice the cluster's CPUs")
    max_retries: int = Field(3, ge=0, description="retries of a map task or restarts of a teacher replica that died")
    connect_timeout_s: float = Field(15.0, gt=0)
    shared_filesystem: bool = Field(False, description="tasks read input parts themselves (else the driver ships "
                                                       "them); results always come back to the driver")
    worker_logs: bool = Field(False, description="print the workers' own logs (engine start-up, warnings) on the "
                                                 "driver; errors reach the driver either way")
