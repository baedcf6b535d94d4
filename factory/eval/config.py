"""Pydantic models of the `eval` block of a pipeline: which models, which benchmarks, how many samples.

Defaults follow the R1 protocol (paper §3): k samples per problem at temperature 0.6, top-p 0.95; pass@1 is the
mean correctness over the k samples, cons@k the majority vote over them.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from factory.generate.config import SourceConfig, TemplateConfig


class EvalModel(BaseModel):
    """One model to evaluate: either a full model (`path`), or a LoRA `adapter` applied to its `base` model."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="label in tables, e.g. teacher, base, student")
    path: str | None = Field(default=None, description="local model folder or Hub id of a full model")
    adapter: str | None = Field(default=None, description="local folder of a PEFT adapter (adapter_config.json)")
    base: str | None = Field(default=None, description="local folder or Hub id of the adapter's base model")
    template: TemplateConfig | None = Field(default=None, description="this model's prompt template (e.g. a base "
                                            "model without few-shot turns); None: eval.template, else the pipeline's")

    @model_validator(mode="after")
    def _path_or_adapter(self) -> "EvalModel":
        if self.path is not None and (self.adapter is not None or self.base is not None):
            raise ValueError(f"model '{self.name}': give either 'path' or 'adapter' + 'base', not both")
        if self.path is None and (self.adapter is None or self.base is None):
            raise ValueError(f"model '{self.name}': needs 'path' (a full model), or both 'adapter' and 'base'")
        return self

    @property
    def weights(self) -> str:
        """The model the engine loads: `path`, or the adapter's base."""
        return self.path if self.path is not None else self.base  # type: ignore[return-value]


class BenchmarkConfig(BaseModel):
    """One benchmark: a local JSONL/JSON/Parquet file or a Hub dataset id, and how its columns map onto
    {id, problem, answer}."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="label in tables, e.g. aime24")
    path: str | None = Field(default=None, min_length=1, description="local .jsonl/.json/.parquet file, or a Hub id")
    source: SourceConfig | None = Field(default=None, description="a prompt source instead of a file, e.g. the "
                                        "built-in arithmetic generator's held-out split")
    subset: str | None = Field(default=None, description="Hub dataset configuration name")
    split: str = Field(default="test", description="Hub dataset split (local files are read whole)")
    domain: Literal["math", "code", "science", "general"] = "math"
    id_column: str | None = Field(default="id", description="None: ids are '<name>-<row index>'")
    problem_column: str = "problem"
    answer_column: str = "answer"
    limit: int | None = Field(default=None, ge=1, description="first N problems only (overrides EvalConfig.limit)")

    @model_validator(mode="after")
    def _path_or_source(self) -> "BenchmarkConfig":
        if (self.path is None) == (self.source is None):
            raise ValueError(f"benchmark '{self.name}': give exactly one of 'path' or 'source'")
        return self


class EvalConfig(BaseModel):
    """The eval stage: every model × every benchmark, k samples per problem."""

    model_config = ConfigDict(extra="forbid")

    models: list[EvalModel] = Field(min_length=1)
    benchmarks: list[BenchmarkConfig] = Field(min_length=1)
    k: int = Field(default=1, ge=1, description="samples per problem (pass@1 over k, cons@k)")
    temperature: float = Field(default=0.6, ge=0.0, le=2.0)
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    max_tokens: int = Field(default=32768, ge=1)
    limit: int | None = Field(default=None, ge=1, description="first N problems of every benchmark")
    seed: int = 0
    template: TemplateConfig | None = Field(default=None, description="prompt template; None: the pipeline's")
    engine: dict = Field(default_factory=dict, description="vLLM engine settings (as teacher: max_model_len, ...)")
    vote_ties: Literal["first", "wrong"] = Field(
        default="first", description="cons@k on a tied vote: 'first' = the tied answer seen first wins; 'wrong'")

    @model_validator(mode="after")
    def _unique_names(self) -> "EvalConfig":
        for kind, names in (("model", [m.name for m in self.models]), ("benchmark", [b.name for b in self.benchmarks])):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{kind} names must be unique; repeated: {dupes}")
        return self

    def limit_for(self, benchmark: BenchmarkConfig) -> int | None:
        return benchmark.limit if benchmark.limit is not None else self.limit


def resolve_local(path: str, base_dir: Path | None) -> Path | None:
    """`path` as an existing local file or folder (relative to `base_dir` when given), else None (a Hub id)."""
    candidate = Path(path).expanduser()
    if not candidate.is_absolute() and base_dir is not None:
        candidate = base_dir / candidate
    return candidate if candidate.exists() else None


class AdapterError(ValueError):
    """An adapter folder is missing, unreadable, or was trained on another base model."""


def check_adapter(model: EvalModel, base_dir: Path | None = None) -> None:
    """Refuse an adapter whose adapter_config.json names another base model than `model.base`.

    Names are compared as written, and as resolved local paths when both exist (a model trained from
    `./cache/smollm2` and evaluated from its absolute path is the same base).
    """
    if model.adapter is None:
        return
    folder = resolve_local(model.adapter, base_dir)
    if folder is None:
        raise AdapterError(f"model '{model.name}': adapter folder {model.adapter} does not exist")
    config_file = folder / "adapter_config.json"
    if not config_file.is_file():
        raise AdapterError(f"model '{model.name}': {config_file} is missing (not a PEFT adapter folder?)")
    try:
        trained_on = json.loads(config_file.read_text()).get("base_model_name_or_path")
    except (json.JSONDecodeError, AttributeError) as exc:
        raise AdapterError(f"model '{model.name}': {config_file} is not a JSON object: {exc}") from exc
    if not trained_on:
        raise AdapterError(f"model '{model.name}': {config_file} has no 'base_model_name_or_path'")
    if trained_on == model.base:
        return
    local_trained, local_base = resolve_local(trained_on, base_dir), resolve_local(model.base or "", base_dir)
    if local_trained is not None and local_base is not None and local_trained.resolve() == local_base.resolve():
        return
    raise AdapterError(f"model '{model.name}': adapter {folder} was trained on '{trained_on}', "
                       f"but its base is given as '{model.base}'")
