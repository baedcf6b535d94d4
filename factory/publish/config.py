"""The publish stage's config blocks: the dataset repo, the model repo and the upload. A leaf module: it imports
neither huggingface_hub nor the folder builders."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# License identifiers the Hub accepts in a card (hub-docs, docs/hub/repositories-licenses.md).
HUB_LICENSES = frozenset("""
apache-2.0 mit openrail bigscience-openrail-m creativeml-openrail-m bigscience-bloom-rail-1.0 bigcode-openrail-m
afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause bsd-3-clause-clear c-uda cc cc0-1.0 cc-by-2.0 cc-by-2.5
cc-by-3.0 cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0 cc-by-nc-3.0 cc-by-nc-4.0 cc-by-nd-4.0 cc-by-nc-nd-3.0
cc-by-nc-nd-4.0 cc-by-nc-sa-2.0 cc-by-nc-sa-3.0 cc-by-nc-sa-4.0 cdla-sharing-1.0 cdla-permissive-1.0
cdla-permissive-2.0 wtfpl ecl-2.0 epl-1.0 epl-2.0 etalab-2.0 eupl-1.1 agpl-3.0 gfdl gpl gpl-2.0 gpl-3.0 lgpl lgpl-2.1
lgpl-3.0 isc lppl-1.3c ms-pl mpl-2.0 odc-by odbl openrail++ osl-3.0 postgresql ofl-1.1 ncsa unlicense zlib pddl
lgpl-lr deepfloyd-if-license llama2 llama3 llama3.1 llama3.2 llama3.3 gemma unknown other
""".split())

# The text tasks of the Hub's task list (huggingface.js packages/tasks/src/pipelines.ts) a reasoning corpus can name.
TEXT_TASK_CATEGORIES = frozenset("""
text-generation question-answering text2text-generation summarization translation text-classification
token-classification fill-mask table-question-answering zero-shot-classification sentence-similarity
feature-extraction text-ranking
""".split())


class DatasetPublishConfig(BaseModel):
    """How the curated dataset (or the run's mixture) becomes a Hub dataset repo."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    pretty_name: str | None = None
    description: str | None = Field(None, description="a paragraph opening the card")
    license: str = "apache-2.0"
    language: list[str] = ["en"]
    task_categories: list[str] = ["text-generation"]
    tags: list[str] = ["reasoning", "distillation", "synthetic", "chain-of-thought", "factory"]
    source: Literal["auto", "curate", "mix"] = Field(
        "auto", description="what to publish: DIR/curate, or DIR/mix (a `factory mix` mixture); auto: DIR/mix "
                            "when the run holds one, else DIR/curate")
    schema_name: str | None = Field(None, description="the schema the input shards must carry; default: `curated` "
                                                      "for DIR/curate, `mixed` for DIR/mix")
    split_by: str | None = Field("domain", description="column whose values become configs (plus `all`)")
    columns: list[str] | None = Field(None, description="columns to publish; all of the schema when unset")
    shard_size_mb: float = Field(500.0, gt=0, le=50_000,
                                 description="target in-memory (Arrow) size of a shard (push_to_hub's max_shard_size)")
    include_rejected: bool = Field(False, description="publish DIR/curate/rejected as config `rejected`")
    row_group_rows: int = Field(1000, ge=1, le=1_000_000)

    @field_validator("license")
    @classmethod
    def _license_known(cls, value: str) -> str:
        if value not in HUB_LICENSES:
            raise ValueError(f"{value!r} is not a Hub license identifier (e.g. apache-2.0, mit, cc-by-4.0, other)")
        return value

    @field_validator("task_categories")
    @classmethod
    def _tasks_known(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - TEXT_TASK_CATEGORIES)
        if unknown:
            raise ValueError(f"{unknown} are not Hub text tasks ({sorted(TEXT_TASK_CATEGORIES)})")
        return value


class ModelPublishConfig(BaseModel):
    """How the SFT stage's output (DIR/sft/adapter for LoRA, DIR/sft/model for full or merged weights) becomes a Hub
    model repo."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool | None = Field(None, description="None: publish when the SFT stage left a model or adapter")
    artifact: Literal["auto", "adapter", "model"] = Field(
        "auto", description="auto: the LoRA adapter when there is one, else the full model")
    repo_id: str | None = Field(None, description="model repo; defaults to the dataset's --repo-id")
    base_model: str | None = Field(None, description="Hub id of the base model when SFT loaded it from a local path")
    license: str = "apache-2.0"
    language: list[str] = ["en"]
    tags: list[str] = ["reasoning", "distillation", "deepseek-r1", "sft", "factory"]
    eval_model: str | None = Field(None, description="the `model` of this student's rows in eval/summary.json")
    include_training_record: bool = Field(True, description="ship train_log.jsonl and the SFT config in training/")

    @field_validator("license")
    @classmethod
    def _license_known(cls, value: str) -> str:
        if value not in HUB_LICENSES:
            raise ValueError(f"{value!r} is not a Hub license identifier (e.g. apache-2.0, mit, llama3.1, other)")
        return value


class PublishConfig(BaseModel):
    """The `publish:` block of a pipeline YAML."""

    model_config = ConfigDict(extra="forbid")

    repo_id: str | None = Field(None, description="ORG/NAME of the dataset repo; the --repo-id flag overrides it")
    private: bool = False
    dataset: DatasetPublishConfig = Field(default_factory=DatasetPublishConfig)
    model: ModelPublishConfig = Field(default_factory=ModelPublishConfig)
    large_upload_mb: float = Field(1000.0, gt=0, description="above this size, the resumable large-folder upload")
