"""Build the Hub repo folder of a trained student: weights or LoRA adapter, tokenizer, training record, model card."""
from __future__ import annotations

import fnmatch
import json
import math
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from factory.publish.cards import render, validate_model_card
from factory.publish.common import (
    PublishError,
    folder_files,
    read_json,
    read_jsonl,
    stage_config,
    staged_dir,
    write_json_atomic,
    write_text_atomic,
)
from factory.publish.config import ModelPublishConfig  # noqa: F401

# Files of a saved model/adapter that belong on the Hub; optimizer states, pickled training args and peft's
# auto-generated README stay behind.
MODEL_FILES = (
    "config.json", "generation_config.json", "adapter_config.json",
    "*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "adapter_model.bin",
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "vocab.txt", "merges.txt", "chat_template.jinja", "chat_template.json",
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt")

# Hub datasets of the benchmarks in ../shared/data/benchmarks, so the model-index links to them.
BENCHMARK_DATASETS = {
    "aime24": ("HuggingFaceH4/aime_2024", "AIME 2024"),
    "amc23": ("math-ai/amc23", "AMC 2023"),
    "gsm8k": ("openai/gsm8k", "GSM8K"),
    "math500": ("HuggingFaceH4/MATH-500", "MATH-500"),
    "humaneval": ("openai/openai_humaneval", "HumanEval"),
}


@dataclass
class ModelBuild:
    folder: Path
    kind: Literal["adapter", "full"]
    base_model: str | None
    files: list[tuple[str, int]]
    card_text: str
    eval_rows: int


def is_hub_id(name: str | None) -> bool:
    """`namespace/name` that the Hub could resolve (not a local folder)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not name or name.count("/") != 1 or Path(name).exists():
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _find_key(tree: Any, keys: tuple[str, ...], depth: int = 2) -> str | None:
    """The first string value under one of `keys` in a config tree, looking `depth` levels down."""
    if not isinstance(tree, dict) or depth < 0:
        return None
    for key in keys:
        if isinstance(tree.get(key), str):
            return tree[key]
    for value in tree.values():
        if (found := _find_key(value, keys, depth - 1)) is not None:
            return found
    return None


def _teacher_name(generate_config: dict | None) -> str | None:
    teacher = (generate_config or {}).get("teacher")
    if isinstance(teacher, str):
        return teacher
    return _find_key(teacher, ("model", "name", "path"), depth=0) if isinstance(teacher, dict) else None


def safetensors_params(files: list[Path]) -> int:
    """Parameters stored in safetensors files, read from their JSON headers only."""
    total = 0
    for path in files:
        with open(path, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(size))
        total += sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")
    return total


def train_log_summary(rows: list[dict]) -> dict | None:
    """Steps, epochs and loss trajectory of train_log.jsonl (None when it has no loss entries)."""
    losses = [(r.get("step"), r["loss"]) for r in rows if isinstance(r.get("loss"), (int, float))]
    if not losses:
        return None
    steps = [r["step"] for r in rows if isinstance(r.get("step"), (int, float))]
    epochs = [r["epoch"] for r in rows if isinstance(r.get("epoch"), (int, float))]
    return {"entries": len(rows), "steps": max(steps) if steps else None, "epochs": max(epochs) if epochs else None,
            "first_loss": losses[0][1], "last_loss": losses[-1][1], "min_loss": min(v for _, v in losses)}


def eval_rows(run_dir: Path) -> list[dict]:
    path = run_dir / "eval" / "summary.json"
    rows = read_json(path)
    if rows is None:
        return []
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise PublishError(f"{path}: expected a list of row objects")
    for i, row in enumerate(rows):
        for key in ("model", "benchmark"):
            if key not in row:
                raise PublishError(f"{path}: row {i} has no {key!r}")
    return rows


def _student_rows(rows: list[dict], cfg: ModelPublishConfig, model_dir: Path, run_dir: Path) -> list[dict]:
    """The eval rows of this student: named in the config, the only model evaluated, or its sft folder."""
    models = list(dict.fromkeys(str(r["model"]) for r in rows))
    if cfg.eval_model is not None:
        if cfg.eval_model not in models:
            raise PublishError(f"publish.model.eval_model: {cfg.eval_model!r} is not a model of "
                               f"{run_dir / 'eval' / 'summary.json'} ({models})")
        return [r for r in rows if str(r["model"]) == cfg.eval_model]
    if len(models) == 1:
        return rows
    names = {str(model_dir), str(model_dir.resolve()), str(model_dir.relative_to(run_dir)),
             str(model_dir.parent.relative_to(run_dir)), "sft", "student"}
    return [r for r in rows if str(r["model"]) in names
            or str(r["model"]).rstrip("/").endswith(("sft/model", "sft/adapter"))]


def _eval_results(rows: list[dict]):
    from huggingface_hub import EvalResult

    results = []
    for row in rows:
        bench = str(row["benchmark"])
        dataset_type, dataset_name = BENCHMARK_DATASETS.get(bench.lower(), (bench, bench))
        k = row.get("k")
        for metric in ("pass@1", "cons@k"):
            value = row.get(metric)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            name = metric if metric == "pass@1" else f"cons@{k}"
            results.append(EvalResult(task_type="text-generation", dataset_type=dataset_type,
                                      dataset_name=dataset_name, metric_type=name, metric_value=float(value),
                                      metric_name=f"{name} ({k} samples)" if k else name))
    return results


def _copy_model_files(src: Path, dst: Path) -> list[str]:
    copied = []
    for path in sorted(src.iterdir()):
        if path.is_file() and any(fnmatch.fnmatch(path.name, pat) for pat in MODEL_FILES):
            shutil.copy2(path, dst / path.name)
            copied.append(path.name)
    return copied


def sft_artifact(run_dir: Path, artifact: str = "auto") -> Path | None:
    """The folder the SFT stage left: `adapter/` (LoRA) or `model/` (full, or LoRA merged on export)."""
    order = {"auto": ("adapter", "model"), "adapter": ("adapter",), "model": ("model",)}[artifact]
    for name in order:
        if (run_dir / "sft" / name).is_dir():
            return run_dir / "sft" / name
    return None


def build_model_folder(run_dir: Path, folder: Path, cfg: ModelPublishConfig, repo_id: str,
                       dataset_repo_id: str | None) -> ModelBuild:
    """Build the repo folder of the trained student into `folder` (written beside it, swapped in when complete)."""
    from huggingface_hub import ModelCardData

    src = sft_artifact(run_dir, cfg.artifact)
    if src is None:
        raise PublishError(f"{run_dir / 'sft'}: no trained model or adapter (run `factory sft` first, or set "
                           f"publish.model.enabled: false)")
    if (src / "adapter_config.json").exists():
        kind: Literal["adapter", "full"] = "adapter"
        adapter_config = read_json(src / "adapter_config.json", required=True)
        weights = [p for p in src.glob("adapter_model.*") if p.suffix in (".safetensors", ".bin")]
    elif (src / "config.json").exists():
        kind = "full"
        adapter_config = None
        weights = [p for p in src.iterdir()
                   if p.suffix == ".safetensors" or fnmatch.fnmatch(p.name, "pytorch_model*.bin")]
    else:
        raise PublishError(f"{src}: neither adapter_config.json (LoRA adapter) nor config.json (full model)")
    if not weights:
        expected = "adapter_model.safetensors" if kind == "adapter" else "*.safetensors"
        raise PublishError(f"{src}: no weights ({expected})")
    if not any((src / name).exists() for name in TOKENIZER_FILES):
        raise PublishError(f"{src}: no tokenizer files ({', '.join(TOKENIZER_FILES)}); "
                           f"save the tokenizer with the model")

    sft_config = stage_config(run_dir, "sft")
    local_base = (adapter_config or {}).get("base_model_name_or_path") or _find_key(
        sft_config, ("base_model", "model_name_or_path", "student", "model"))
    base_model = cfg.base_model or local_base
    hub_base = base_model if is_hub_id(base_model) else None
    log_rows = read_jsonl(run_dir / "sft" / "train_log.jsonl")
    generate = stage_config(run_dir, "generate")
    teacher = _teacher_name(generate)
    all_rows = eval_rows(run_dir)
    mine = _student_rows(all_rows, cfg, src, run_dir)

    with staged_dir(folder) as tmp:
        copied = _copy_model_files(src, tmp)
        if kind == "adapter" and cfg.base_model and adapter_config.get("base_model_name_or_path") != cfg.base_model:
            # Point the adapter at the Hub base so `PeftModel.from_pretrained(repo)` works for others.
            write_json_atomic(tmp / "adapter_config.json",
                              {**adapter_config, "base_model_name_or_path": cfg.base_model})
        if cfg.include_training_record:
            (tmp / "training").mkdir()
            if log_rows:
                shutil.copy2(run_dir / "sft" / "train_log.jsonl", tmp / "training" / "train_log.jsonl")
            if sft_config:
                write_json_atomic(tmp / "training" / "sft_config.json", sft_config)
            if all_rows:
                write_json_atomic(tmp / "training" / "eval_summary.json", all_rows)
        params = safetensors_params(sorted(src.glob("*.safetensors"))) if any(src.glob("*.safetensors")) else None
        results = _eval_results(mine)
        model_name = repo_id.split("/", 1)[1]
        extra = {"base_model_relation": "adapter" if kind == "adapter" else "finetune"} if hub_base else {}
        card_data = ModelCardData(
            base_model=hub_base, datasets=[dataset_repo_id] if dataset_repo_id else None,
            library_name="peft" if kind == "adapter" else "transformers", license=cfg.license,
            language=cfg.language, pipeline_tag="text-generation",
            tags=list(dict.fromkeys(cfg.tags + (["lora"] if kind == "adapter" else []))),
            model_name=model_name, eval_results=results or None, **extra,
        )
        context = {
            "repo_id": repo_id, "model_name": model_name, "kind": kind, "base_model": base_model,
            "hub_base": hub_base, "local_base": local_base if local_base != base_model else None,
            "dataset_repo_id": dataset_repo_id, "teacher": teacher, "params": params,
            "adapter": {k: adapter_config.get(k) for k in ("peft_type", "r", "lora_alpha", "lora_dropout",
                                                           "target_modules", "task_type")
                        if adapter_config.get(k) is not None} if adapter_config else None,
            "sft_config": sft_config, "train_log": train_log_summary(log_rows),
            "eval_rows": all_rows, "student_models": sorted({str(r["model"]) for r in mine}),
            "eval_config": stage_config(run_dir, "eval"), "files": copied,
            "training_record": cfg.include_training_record,
        }
        text = render("model_card.md.jinja", card_data, **context)
        validate_model_card(text, where=f"{folder / 'README.md'}")
        write_text_atomic(tmp / "README.md", text)
    return ModelBuild(folder=folder, kind=kind, base_model=base_model, files=folder_files(folder), card_text=text,
                      eval_rows=len(mine))

