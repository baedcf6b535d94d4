"""Build the Hub repo folder of a curated dataset (DIR/curate) or of a mixture (DIR/mix, `publish.dataset.source`):
resharded Parquet per config, an optional rejected split, a card (with a "Mixture" section for a mixture).

Layout (the convention of open-r1's Mixture-of-Thoughts): `data/<domain>/train-XXXXX-of-YYYYY.parquet`, one config
per domain plus `all` (the default), whose data files are the domain folders' shards, so no sample is stored twice.
"""
from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from factory.core.schema import Schema
from factory.core.shards import list_parts
from factory.publish.cards import (
    mixture_section,
    render,
    size_category,
    validate_dataset_card,
)
from factory.publish.common import (
    PublishError,
    folder_files,
    read_json,
    stage_config,
    staged_dir,
    write_text_atomic,
)
from factory.publish.config import DatasetPublishConfig  # noqa: F401
from factory.publish.mixture import mixture_summary, resolve_input
from factory.publish.reshard import (  # noqa: F401
    ALL,
    REJECTED,
    ConfigPlan,
    _column_bytes,
    _output_schema,
    _quotas,
    _reshard,
    _ShardSeq,
    check_uniform_schema,
    plan_configs,
)

_REJECT_REASON_COLUMNS = ("reject_reason", "reason", "rejected_by", "dropped_by", "filter")


@dataclass
class DatasetBuild:
    """The built folder and what it holds."""

    folder: Path
    configs: dict[str, int]  # config -> rows
    files: list[tuple[str, int]]
    card_text: str
    schema: Schema
    records_in: int
    rejected_rows: int = 0
    source: str = "curate"  # the folder published: DIR/curate or DIR/mix



# -------------------------------------------------------------------------------------------------- provenance
_DECONTAM = re.compile(r"decontam|contamina", re.IGNORECASE)


def _split_decontam(tree: Any) -> tuple[Any, dict]:
    """(tree without its decontamination entries, those entries), looking at the top two levels of a dict."""
    if not isinstance(tree, dict):
        return tree, {}
    rest, found = {}, {}
    for key, value in tree.items():
        if _DECONTAM.search(str(key)):
            found[key] = value
        elif isinstance(value, dict) and any(_DECONTAM.search(str(k)) for k in value):
            inner_rest, inner_found = _split_decontam(value)
            rest[key] = inner_rest
            found.update({f"{key}.{k}": v for k, v in inner_found.items()})
        else:
            rest[key] = value
    return rest, found


def _field_docs(schema: pa.Schema) -> list[dict]:
    return [{"name": f.name, "type": str(f.type), "nullable": f.nullable,
             "doc": (f.metadata or {}).get(b"doc", b"").decode()} for f in schema]


def collect_provenance(run_dir: Path, stages: tuple[str, ...] = ("generate", "verify", "curate")) -> dict:
    """What the card says about where the samples came from, read from the stages' manifests and funnel.json."""
    curate_cfg = stage_config(run_dir, "curate")
    funnel = read_json(run_dir / "curate" / "funnel.json")
    if funnel is not None and not isinstance(funnel, dict):
        raise PublishError(f"{run_dir / 'curate' / 'funnel.json'}: expected a JSON object")
    funnel_rest, funnel_decontam = _split_decontam(funnel or {})
    curate_rest, curate_decontam = _split_decontam(curate_cfg or {})
    return {
        "generate": stage_config(run_dir, "generate"),
        "verify": stage_config(run_dir, "verify"),
        "curate": curate_rest or None,
        "funnel": funnel_rest or None,
        "decontam_config": curate_decontam or None,
        "decontam_counts": funnel_decontam or None,
        "stage_counts": {s: c for s in stages if isinstance(c := read_json(run_dir / s / "counts.json"), dict)},
    }


# ------------------------------------------------------------------------------------------------------- build
def _split_info(name: str, rows: int, nbytes: int):
    from datasets import SplitInfo

    return SplitInfo(name=name, num_bytes=int(nbytes), num_examples=int(rows))


def _metadata(card_data, infos: dict[str, tuple[pa.Schema, str, int, int, int]],
              data_files: dict[str, list[dict]]) -> None:
    """Write `configs` and `dataset_info` into `card_data` with the `datasets` classes that read them back."""
    from datasets import DatasetInfo, Features, SplitDict
    from datasets.info import DatasetInfosDict
    from datasets.utils.metadata import MetadataConfigs

    MetadataConfigs({name: {"data_files": files, **({"default": True} if name == ALL else {})}
                     for name, files in data_files.items()}).to_dataset_card_data(card_data)
    dinfos = DatasetInfosDict()
    for name, (schema, split, rows, nbytes, download) in infos.items():
        splits = SplitDict()
        splits.add(_split_info(split, rows, nbytes))
        dinfos[name] = DatasetInfo(features=Features.from_arrow_schema(schema), splits=splits,
                                   download_size=download, dataset_size=nbytes)
    dinfos.to_dataset_card_data(card_data)


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.parquet"))


def build_dataset_folder(run_dir: Path, folder: Path, cfg: DatasetPublishConfig, repo_id: str,
                         model_repo_id: str | None = None) -> DatasetBuild:
    """Build the repo folder of DIR/curate or DIR/mix (`cfg.source`) into `folder` (written beside it, swapped in
    when complete)."""
    from huggingface_hub import DatasetCardData

    inp = resolve_input(run_dir, cfg)
    shards = inp.shards
    schema = check_uniform_schema(shards, expected=inp.schema_name)
    columns = list(cfg.columns or schema.names)
    unknown = [c for c in columns if c not in schema.names]
    if unknown:
        raise PublishError(f"publish.dataset.columns: {unknown} are not columns of schema "
                           f"'{schema.name}' v{schema.version} ({schema.names})")
    if "messages" not in columns:
        raise PublishError(f"publish.dataset.columns: the `messages` column is required (schema '{schema.name}' "
                           f"{'lacks it' if 'messages' not in schema.names else 'has it but it is not selected'})")
    if cfg.split_by and cfg.split_by not in schema.names:
        raise PublishError(f"publish.dataset.split_by: {cfg.split_by!r} is not a column of schema '{schema.name}'")
    plans = plan_configs(shards, cfg.split_by, columns)
    records_in = sum(p.rows for p in plans.values())
    if records_in == 0:
        raise PublishError(f"{inp.folder}: the shards hold no rows; nothing to publish")
    out_schema = _output_schema(schema, columns)
    mixture = mixture_summary(inp) if inp.kind == "mix" else None

    with staged_dir(folder) as tmp:
        label = "the mixture" if mixture else "curated samples"
        nbytes = _reshard(shards, tmp, plans, cfg.split_by, columns, out_schema, cfg, "train", label)
        infos: dict[str, tuple] = {}
        data_files: dict[str, list[dict]] = {}
        for key, plan in plans.items():
            download = _folder_bytes(tmp / "data" / key)
            infos[key] = (out_schema, "train", plan.rows, nbytes[key], download)
            data_files[key] = [{"split": "train", "path": f"data/{key}/train-*.parquet"}]
        if cfg.split_by:  # `all` reads every domain's shards
            infos[ALL] = (out_schema, "train", records_in, sum(nbytes.values()),
                          sum(i[4] for i in infos.values()))
            data_files[ALL] = [{"split": "train", "path": [f"data/{k}/train-*.parquet" for k in plans]}]

        rejected = _build_rejected(run_dir, tmp, cfg) if cfg.include_rejected else None
        if rejected:
            infos[REJECTED] = rejected["info"]
            data_files[REJECTED] = [{"split": REJECTED, "path": f"data/{REJECTED}/{REJECTED}-*.parquet"}]

        card_data = DatasetCardData(
            license=cfg.license, language=cfg.language, task_categories=cfg.task_categories,
            size_categories=size_category(records_in), tags=cfg.tags, pretty_name=cfg.pretty_name or repo_id,
        )
        _metadata(card_data, infos, data_files)
        context = _card_context(run_dir, repo_id, model_repo_id, cfg, schema, out_schema, plans, records_in, rejected,
                                mixture)
        text = render("dataset_card.md.jinja", card_data, **context)
        validate_dataset_card(text, where=f"{folder / 'README.md'}")
        write_text_atomic(tmp / "README.md", text)
    configs = {name: info[2] for name, info in infos.items()}
    return DatasetBuild(folder=folder, configs=configs, files=folder_files(folder), card_text=text, schema=schema,
                        records_in=records_in, rejected_rows=rejected["rows"] if rejected else 0, source=inp.kind)


def _build_rejected(run_dir: Path, tmp: Path, cfg: DatasetPublishConfig) -> dict | None:
    """Reshard DIR/curate/rejected into config `rejected` (split `rejected`), all of its columns kept."""
    rej_dir = run_dir / "curate" / REJECTED
    shards = list_parts(rej_dir) if rej_dir.is_dir() else []
    if not shards:
        raise PublishError(f"{rej_dir}: no part-*.parquet shards, but publish.dataset.include_rejected is true")
    schema = check_uniform_schema(shards, expected=None)
    plan = plan_configs(shards, None, schema.names).get(ALL)
    if plan is None:  # rejected shards exist but hold no rows: nothing was rejected
        return None
    rows = plan.rows
    out_schema = _output_schema(schema, schema.names)
    seq = _ShardSeq(tmp / "data" / REJECTED, REJECTED, _quotas(rows, plan.est_bytes, cfg.shard_size_mb * 1e6),
                    out_schema, cfg.row_group_rows)
    reasons: Counter = Counter()
    reason_col = next((c for c in _REJECT_REASON_COLUMNS if c in schema.names), None)
    for path in shards:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=cfg.row_group_rows):
            table = pa.Table.from_batches([batch]).cast(out_schema)
            if reason_col:
                reasons.update(table[reason_col].to_pylist())
            seq.write(table)
    seq.close()
    if not seq.complete:
        raise PublishError(f"{rej_dir}: shards changed while publishing; rerun")
    download = _folder_bytes(tmp / "data" / REJECTED)
    return {"rows": rows, "schema": schema, "reason_column": reason_col, "reasons": dict(reasons.most_common()),
            "fields": _field_docs(out_schema), "info": (out_schema, REJECTED, rows, seq.bytes, download)}


def _card_context(run_dir: Path, repo_id: str, model_repo_id: str | None, cfg: DatasetPublishConfig,
                  schema: Schema, out_schema: pa.Schema, plans: dict[str, ConfigPlan], records_in: int,
                  rejected: dict | None, mixture: dict | None = None) -> dict:
    configs = [{"name": key, "rows": plan.rows, "mean_tokens": plan.mean_tokens} for key, plan in plans.items()]
    sources: dict[str, dict[str, int]] = defaultdict(dict)  # source -> {config: rows}
    teachers: Counter = Counter()
    for key, plan in plans.items():
        for src, n in plan.lineage.get("source", {}).items():
            sources[str(src)][key] = n
        teachers.update({str(t): n for t, n in plan.lineage.get("teacher", {}).items()})
    token_rows = sum(p.token_rows for p in plans.values())
    return {
        "repo_id": repo_id,
        "pretty_name": cfg.pretty_name or repo_id,
        "model_repo_id": model_repo_id,
        "description": cfg.description,
        "split_by": cfg.split_by,
        "all_config": ALL,
        "configs": configs,
        "records": records_in,
        "mean_tokens": sum(p.token_sum for p in plans.values()) / token_rows if token_rows else None,
        "sources": dict(sorted(sources.items())),
        "config_names": list(plans),
        "teachers": dict(teachers.most_common()),
        "schema_name": schema.name,
        "schema_version": schema.version,
        "fields": _field_docs(out_schema),
        "rejected": rejected,
        "mixture": mixture_section(mixture) if mixture else None,
        **collect_provenance(run_dir, ("generate", "verify", "curate") + (("mix",) if mixture else ())),
    }
