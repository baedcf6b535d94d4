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

BenchmarkFormat = Literal["qa", "humaneval", "livecodebench", "apps", "code"]
TableColumn = Literal["aime24", "math500", "gpqa", "code", "none"]


class EvalModel(BaseModel):
    """One model to evaluate: either a full model (`path`), or a LoRA `adapter` applied to its `base` model."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="label in tables, e.g. teacher, base, student")
    path: str | None = Field(default=None, description="local model folder or Hub id of a full model")
    adapter: str | None = Field(default=None, description="local folder of a PEFT adapter (adapter_config.json)")
    base: str | None = Field(default=None, description="local folder or Hub id of the adapter's base model")
    template: TemplateConfig | None = Field(default=None, description="this model's prompt template (e.g. a base "
                                            "model without few-shot turns); None: eval.template, else the pipeline's")
    backend: dict | None = Field(default=None, description="this model's backend, over eval.backend: {backend: "
                                 "openai, base_url(s), model, api, ...} (an OpenAI-compatible server), or "
                                 "{backend: vllm} (the offline engine)")

    @model_validator(mode="after")
    def _path_or_adapter(self) -> "EvalModel":
        if self.path is not None and (self.adapter is not None or self.base is not None):
            raise ValueError(f"model '{self.name}': give either 'path' or 'adapter' + 'base', not both")
        served = isinstance(self.backend, dict) and self.backend.get("model")
        if self.path is None and (self.adapter is None or self.base is None) and not served:
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
    format: BenchmarkFormat = Field(default="qa", description="qa: {id, problem, answer} columns; code benchmarks "
                                    "scored by the sandbox: humaneval, livecodebench, apps, or code (problem_column "
                                    "+ tests_column in the verify stage's tests format)")
    tests_column: str = Field(default="tests", description="format code: the column of the tests JSON")
    timeout_s: float | None = Field(default=None, gt=0, le=120, description="code: sandbox time limit per test case "
                                    "(None: the tests' own, else verify.code.case_timeout_s)")
    k: int | None = Field(default=None, ge=1, description="samples per problem for this benchmark (None: eval.k)")
    table_column: TableColumn | None = Field(default=None, description="R1 table column it fills (None: guessed "
                                             "from the name: aime*, math500, gpqa*, livecodebench/humaneval/apps)")

    @model_validator(mode="after")
    def _path_or_source(self) -> "BenchmarkConfig":
        if (self.path is None) == (self.source is None):
            raise ValueError(f"benchmark '{self.name}': give exactly one of 'path' or 'source'")
        if self.format != "qa":
            if "domain" in self.model_fields_set and self.domain != "code":
                raise ValueError(f"benchmark '{self.name}': format {self.format} is a code benchmark, "
                                 f"but its domain is given as '{self.domain}'")
            self.domain = "code"
            if self.source is not None:
                raise ValueError(f"benchmark '{self.name}': format {self.format} needs a 'path', not a 'source'")
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
    backend: dict = Field(default_factory=dict, description="every model's backend unless it names its own: {} or "
                          "{backend: vllm}: the offline engine (settings in eval.engine); {backend: openai, "
                          "base_url or base_urls, api, ...}: an OpenAI-compatible server (model: the model's path)")
    table: Literal["default", "r1"] = Field(default="default", description="r1: also the R1 paper's distilled-model "
                                            "table (AIME 2024 pass@1 and cons@k, MATH-500, GPQA, LiveCodeBench)")

    @model_validator(mode="after")
    def _unique_names(self) -> "EvalConfig":
        for kind, names in (("model", [m.name for m in self.models]), ("benchmark", [b.name for b in self.benchmarks])):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{kind} names must be unique; repeated: {dupes}")
        from factory.eval.backends import server_config

        for model in self.models:  # a bad backend block fails here, at load time, naming the model
            server_config(model, self)
        return self

    def limit_for(self, benchmark: BenchmarkConfig) -> int | None:
        return benchmark.limit if benchmark.limit is not None else self.limit

    def k_for(self, benchmark: BenchmarkConfig) -> int:
        return benchmark.k if benchmark.k is not None else self.k


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
