"""Pipeline configuration: YAML → pydantic models (unknown keys are errors) → the objects the Python API takes.

`--set key.path=value` overrides are applied to the YAML tree before validation; values are parsed as YAML
(`--set sampling.n=8`, `--set teacher.model=/models/r1`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from factory.config_paths import resolve_pipeline_paths
from factory.core.config import (  # noqa: F401
    ConfigError,
    ExecutorConfig,
    Strict,
    apply_overrides,
    dump_config,
    format_validation_error,
    read_yaml_mapping,
)
from factory.curate.config import CurateConfig
from factory.eval.config import EvalConfig
from factory.generate.config import (  # noqa: F401
    GenerateConfig,
    OpenAITeacherConfig,
    SamplingConfig,
    SourceConfig,
    TeacherConfig,
    TemplateConfig,
    VLLMTeacherConfig,
)
from factory.grpo.config import GRPOConfig
from factory.mix.config import MixConfig, prepare_mix_tree
from factory.publish.config import PublishConfig
from factory.registry import STAGE_NAMES
from factory.train.config import SFTConfig
from factory.verify.config import VerifyConfig

StageName = Literal[STAGE_NAMES]  # the registry is the one list of stages


class PipelineConfig(Strict):
    name: str = "run"
    stages: list[StageName] = Field(
        default_factory=lambda: ["generate"])
    prompts: list[SourceConfig]
    template: TemplateConfig = Field(default_factory=TemplateConfig)
    teacher: TeacherConfig = Field(default_factory=VLLMTeacherConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    verify: VerifyConfig = Field(default_factory=VerifyConfig)
    curate: CurateConfig = Field(default_factory=CurateConfig)
    sft: SFTConfig | None = None
    grpo: GRPOConfig | None = None
    eval: EvalConfig | None = None
    mix: MixConfig | None = None
    publish: PublishConfig = Field(default_factory=PublishConfig)
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)

    @model_validator(mode="before")
    @classmethod
    def _default_backend(cls, data: Any) -> Any:
        """A teacher block without `backend` is the in-process vLLM engine."""
        if isinstance(data, dict) and isinstance(data.get("teacher"), dict):
            data["teacher"] = {"backend": "vllm", **data["teacher"]}
        return data


def load_pipeline(path: Path | str, overrides: list[str] | None = None) -> PipelineConfig:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such pipeline file")
    tree = read_yaml_mapping(path)
    # Relative paths in the YAML resolve against its own folder; those in --set values against the current one.
    tree = resolve_pipeline_paths(tree, path.parent)
    tree = prepare_mix_tree(tree, path.parent)  # mix source paths; a mix-only file has no prompts
    tree = apply_overrides(tree, overrides or [])
    try:
        return PipelineConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path), overrides)) from None

