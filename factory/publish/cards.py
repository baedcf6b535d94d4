"""Dataset and model cards: rendered from the Jinja templates in `templates/`, checked with huggingface_hub's card
classes and the `datasets` metadata readers before anything is uploaded.

The Hub checks a card's YAML again when it is committed (`DatasetCard.validate()` asks its API); the checks here are
the offline part of that: the YAML parses, `configs` and `dataset_info` read back with the same code `load_dataset`
uses, and license, task categories and size category are values the Hub knows.
"""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import yaml
from huggingface_hub import DatasetCard, DatasetCardData, ModelCard, ModelCardData

from factory.publish.common import PublishError
from factory.publish.config import HUB_LICENSES, TEXT_TASK_CATEGORIES  # noqa: F401

TEMPLATES = Path(__file__).resolve().parent / "templates"


_SIZE_BOUNDS = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]


def size_category(num_rows: int) -> str:
    """The Hub's size category of a dataset of `num_rows` rows (the same buckets as `datasets`' list)."""
    for bound, name in _SIZE_BOUNDS:
        if num_rows < bound:
            return name
    return "1B<n<10B"


def _known_size_categories() -> set[str]:
    text = resources.files("datasets.utils.resources").joinpath("size_categories.json").read_text()
    return set(json.loads(text))


# ---------------------------------------------------------------------------------------------------- rendering
def _cell(value: Any) -> str:
    """A value as one Markdown table cell."""
    if value is None:
        return ""
    if isinstance(value, float):
        text = f"{value:.4g}"
    elif isinstance(value, (dict, list)):
        text = json.dumps(value, sort_keys=True)
    else:
        text = str(value)
    # Escape what Markdown tables and the Hub's HTML rendering would swallow (pipes, <think>-like tags).
    return text.replace("|", "\\|").replace("\n", " ").replace("<", "&lt;").replace(">", "&gt;")


def _num(value: Any) -> str:
    """Integers with thousands separators; floats with 4 significant digits."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) >= 1 else f"{value:.4g}"
    return str(value)


def _to_yaml(value: Any) -> str:
    return yaml.safe_dump(value, sort_keys=False, allow_unicode=True, default_flow_style=False).rstrip()


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _is_flat(value: Any) -> bool:
    """A non-empty dict of scalars (a two-column table)."""
    return isinstance(value, dict) and bool(value) and all(_is_scalar(v) for v in value.values())


def _is_table(value: Any) -> bool:
    """A dict of flat dicts sharing most of their keys renders as one table (rows = outer keys, columns = keys)."""
    if not (isinstance(value, dict) and value and all(_is_flat(v) for v in value.values())):
        return False
    keys = [set(v) for v in value.values()]
    union, common = set().union(*keys), set.intersection(*keys)
    return 2 * len(common) >= len(union)


def _columns(table: dict) -> list[str]:
    cols: list[str] = []
    for row in table.values():
        cols.extend(k for k in row if k not in cols)
    return cols


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True, autoescape=False)
    env.filters.update(cell=_cell, num=_num, to_yaml=_to_yaml, tojson_compact=lambda v: json.dumps(v, sort_keys=True))
    env.tests.update(scalar=_is_scalar, flat=_is_flat, table=_is_table)
    env.globals.update(columns=_columns)
    return env


def render(template: str, card_data: DatasetCardData | ModelCardData, **context: Any) -> str:
    """The card text: YAML front matter from `card_data`, then the template's prose."""
    text = _environment().get_template(template).render(card_data=card_data.to_yaml(), **context)
    return text.rstrip() + "\n"


# --------------------------------------------------------------------------------------------------- validation
def _check_license(license_id: Any, where: str) -> None:
    for lic in license_id if isinstance(license_id, list) else [license_id]:
        if lic not in HUB_LICENSES:
            raise PublishError(f"{where}: license {lic!r} is not a Hub license identifier "
                               f"(e.g. apache-2.0, mit, cc-by-4.0, other)")


def validate_dataset_card(text: str, where: str = "dataset card") -> DatasetCard:
    """Parse a dataset card and check its metadata as the Hub and `load_dataset` read it."""
    from datasets.info import DatasetInfosDict
    from datasets.utils.metadata import MetadataConfigs

    try:
        card = DatasetCard(text, ignore_metadata_errors=False)
        data = card.data
        configs = MetadataConfigs.from_dataset_card_data(data)
        infos = DatasetInfosDict.from_dataset_card_data(data)
        configs.get_default_config_name()
    except (ValueError, TypeError, KeyError, yaml.YAMLError) as exc:
        raise PublishError(f"{where}: metadata does not validate: {exc}") from exc
    if not configs:
        raise PublishError(f"{where}: metadata has no `configs` (or no YAML metadata block at all)")
    for name in configs:
        if name not in infos:
            raise PublishError(f"{where}: config {name!r} has no `dataset_info` entry")
        if infos[name].features is None:
            raise PublishError(f"{where}: dataset_info of config {name!r} has no features")
    _check_license(data.license, where)
    unknown = set(data.task_categories or []) - TEXT_TASK_CATEGORIES
    if unknown:
        raise PublishError(f"{where}: task_categories {sorted(unknown)} are not Hub text tasks")
    sizes = data.size_categories if isinstance(data.size_categories, list) else [data.size_categories]
    bad = set(sizes) - _known_size_categories()
    if bad:
        raise PublishError(f"{where}: size_categories {sorted(map(str, bad))} are not Hub size categories")
    return card


def validate_model_card(text: str, where: str = "model card") -> ModelCard:
    """Parse a model card and check its metadata (model-index included) as huggingface_hub reads it."""
    try:
        card = ModelCard(text, ignore_metadata_errors=False)
    except (ValueError, TypeError, KeyError, yaml.YAMLError) as exc:
        raise PublishError(f"{where}: metadata does not validate: {exc}") from exc
    if not card.data.to_dict():
        raise PublishError(f"{where}: no YAML metadata block")
    _check_license(card.data.license, where)
    return card


# ------------------------------------------------------------------------------------------------------ mixture
def mixture_section(summary: dict) -> str:
    """The dataset card's "Mixture" section for a `factory mix` summary (`DIR/mix/mixture.json`): every source
    with its run, path, rows available and taken, share and repeats, and the seed that fixes the draw. Components
    that carry `asked` (what the config asked for) or `domains`/`tracks` (rows per value) get those columns too."""
    comps = summary["components"]
    asked = any("asked" in c for c in comps)
    lines = ["## Mixture", "",
             f"{_num(summary['records_out'])} samples combined by `factory mix` from "
             f"{len(comps)} source(s), drawn with seed {summary['seed']} (the same seed and inputs "
             f"give the same rows in the same order). Every row names its origin in five lineage columns: "
             f"`mix_component` (the source below), `mix_run` (its run folder), `mix_path` (the curate folder or "
             f"JSONL file), `mix_file` (the shard in it) and `mix_row` (the row in that file, 0-based).", "",
             "| source | run | path | rows where | " + ("asked | " if asked else "")
             + "available | taken | share | repeated |",
             "|---|---|---|---|" + ("---|" if asked else "") + "---:|---:|---:|---:|"]
    for c in comps:
        cells = [_cell(c["name"]), _cell(c.get("run")), f"`{_cell(c['path'])}`",
                 _cell("; ".join(f"{k} in {', '.join(v)}" for k, v in (c.get("filters") or {}).items())),
                 *([_cell(c.get("asked"))] if asked else []), _num(c["available"]), _num(c["taken"]),
                 f"{100 * c['share']:.2f}%", _num(c.get("repeats", 0))]
        lines.append("| " + " | ".join(cells) + " |")
    if any(c.get("domains") or c.get("tracks") for c in comps):
        lines += ["", "Rows taken per domain and track:", "", "| source | domains | tracks |", "|---|---|---|"]
        for c in comps:
            parts = [", ".join(f"{_cell(k)} {_num(n)}" for k, n in (c.get(col) or {}).items())
                     for col in ("domains", "tracks")]
            lines.append(f"| {_cell(c['name'])} | {parts[0]} | {parts[1]} |")
    return "\n".join(lines) + "\n"
