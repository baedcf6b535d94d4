"""The verify stage's config blocks: the accuracy reward per domain and each reward's settings, consensus and the
rejection-sampling policy. A leaf module: it imports no reward, no sandbox and no math-verify."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from factory.generate.config import SamplingConfig, TeacherConfig, VLLMTeacherConfig


class MathConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    answer_pattern: str | None = Field(None, description="regex whose first group is the answer, tried after \\boxed")
    pattern_window_chars: int = Field(2000, ge=50, le=100_000, description="tail searched by answer_pattern")
    fallback_tail_chars: int = Field(600, ge=0, le=20_000,
                                     description="no box: math-verify extraction over this many final chars (0=off)")
    join_adjacent_boxes: bool = True
    timeout_s: float = Field(5.0, gt=0, le=300, description="per-sample deadline for extraction + comparison")
    float_rounding: int = Field(6, ge=1, le=15)
    numeric_precision: int = Field(15, ge=1, le=50)
    allow_set_relation_comp: bool = Field(True, description="(3,4] equals 3 < x \\le 4, either way round")

    @field_validator("answer_pattern")
    @classmethod
    def _compiles(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"answer_pattern is not a valid regex: {exc}") from exc
        return v


class CodeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    default_language: Literal["python", "cpp"] = "python"
    case_timeout_s: float = Field(5.0, gt=0, le=120, description="per test case (tests may lower/raise it)")
    max_total_s: float = Field(120.0, gt=0, le=3600, description="wall limit for all cases of one sample")
    memory_mb: int = Field(1024, ge=64, le=65536)
    file_size_mb: int = Field(16, ge=1, le=4096)
    max_output_bytes: int = Field(1 << 20, ge=1024, le=1 << 30)
    stop_on_first_failure: bool = Field(False, description="faster; the reward then counts later cases failed")
    float_tolerance: float = Field(1e-6, ge=0, le=1)
    cpp_compiler: str = "g++"
    cpp_flags: list[str] = Field(default_factory=lambda: ["-O2", "-std=c++17"])
    compile_timeout_s: float = Field(60.0, gt=0, le=600)


class ChoiceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    letters: str = Field("ABCDEFGHIJ", min_length=2, pattern=r"^[A-Z]+$")
    window_chars: int = Field(2000, ge=50, le=100_000, description="tail of the answer searched for a letter")


class ExactConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rel_tol: float = Field(1e-6, ge=0, le=0.5, description="relative tolerance when both answers are numbers")
    case_sensitive: bool = False
    window_chars: int = Field(2000, ge=50, le=100_000)


class SelectConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    policy: Literal["all_correct", "at_most_m", "shortest_correct"] = "all_correct"
    m: int = Field(1, ge=1, description="at_most_m: correct samples kept per prompt")
    order: Literal["sample", "shortest"] = Field("sample", description="at_most_m: which m to keep")
    require_format: bool = Field(True, description="a correct sample must also pass the format reward")
    pass_rate_min: float = Field(0.0, ge=0, le=1, description="drop prompts solved by fewer (unsolvable/lucky)")
    pass_rate_max: float = Field(1.0, ge=0, le=1, description="drop prompts solved by more (too easy)")

    @model_validator(mode="after")
    def _band(self) -> "SelectConfig":
        if self.pass_rate_min > self.pass_rate_max:
            raise ValueError(f"pass_rate_min ({self.pass_rate_min}) is above pass_rate_max ({self.pass_rate_max})")
        return self


class ConsensusConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="label prompts without a reference by majority vote")
    min_votes: int = Field(2, ge=1, description="samples that must share the majority answer")
    min_share: float = Field(0.5, gt=0, le=1, description="share of answered samples the majority must hold")


def _judge_sampling() -> SamplingConfig:
    return SamplingConfig(n=1, temperature=0.0, top_p=1.0, max_tokens=512)


class JudgeConfig(BaseModel):
    """A model judging samples the rules cannot decide (the paper's generative reward model)."""

    model_config = ConfigDict(extra="forbid")

    teacher: TeacherConfig = Field(default_factory=VLLMTeacherConfig,
                                   description="the judge model: any teacher backend (vllm, openai, base_urls)")
    sampling: SamplingConfig = Field(default_factory=_judge_sampling, description="n must be 1")
    domains: dict[str, Literal["fallback", "always", "never"]] = Field(
        default_factory=lambda: {"science": "fallback", "general": "fallback"},
        description="fallback: judge only where the rules cannot decide (see `undecided`); always: judge every sample")
    undecided: list[str] = Field(default_factory=lambda: ["no_reference", "unparseable", "no_answer"],
                                 description="rule verdicts that mean the rules could not decide")
    template_file: Path | None = Field(None, description="Jinja judge prompt; needs {{ problem }}, {{ response }} "
                                       "and {{ reference }} or {{ rubric }}")
    rubric: str = Field("The response is correct if it answers the question accurately, completely and helpfully.",
                        description="used when a prompt has no reference answer")
    verdict_pattern: str = Field(r"VERDICT\s*[:=]\s*\**\s*(CORRECT|INCORRECT)",
                                 description="regex; group 1 is the verdict word")
    score_pattern: str = Field(r"SCORE\s*[:=]\s*\**\s*([0-9]*\.?[0-9]+)", description="regex; group 1 in [0, 1]")
    pass_score: float = Field(0.5, ge=0, le=1, description="a parsed score at or above this counts as correct")
    max_response_chars: int = Field(6000, ge=100, description="longer responses are cut to their tail")
    batch_size: int = Field(256, ge=1, description="judge requests per batch (a cache commit per batch)")
    cache: bool = Field(True, description="DIR/judge_cache/: a rerun never asks the judge twice")

    @field_validator("verdict_pattern", "score_pattern")
    @classmethod
    def _regex(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as exc:
            raise ValueError(f"not a valid regex: {exc}") from exc
        return v

    @model_validator(mode="before")
    @classmethod
    def _default_backend(cls, data):
        """A judge teacher block without `backend` is the in-process vLLM engine."""
        if isinstance(data, dict) and isinstance(data.get("teacher"), dict):
            data = {**data, "teacher": {"backend": "vllm", **data["teacher"]}}
        return data

    @model_validator(mode="after")
    def _one_sample(self) -> "JudgeConfig":
        if self.sampling.n != 1:
            raise ValueError(f"judge.sampling.n must be 1 (got {self.sampling.n})")
        return self


RewardKind = Literal["math", "code", "choice", "exact", "judge", "auto", "none"]


class VerifyConfig(BaseModel):
    """The `verify` block of a pipeline YAML."""

    model_config = ConfigDict(extra="forbid")

    rewards: dict[str, RewardKind] = Field(
        default_factory=lambda: {"math": "math", "code": "code", "science": "auto", "general": "auto"},
        description="accuracy reward per domain; auto = choice when the reference is a letter, else math; "
                    "judge = the judge model only")
    judge: JudgeConfig | None = Field(None, description="a model judging what the rules cannot decide (off: null)")
    no_cot_domains: list[str] = Field(default_factory=lambda: ["general"],
                                      description="domains whose replies may have an empty <think> block")
    math: MathConfig = Field(default_factory=MathConfig)
    code: CodeConfig = Field(default_factory=CodeConfig)
    choice: ChoiceConfig = Field(default_factory=ChoiceConfig)
    exact: ExactConfig = Field(default_factory=ExactConfig)
    consensus: ConsensusConfig = Field(default_factory=ConsensusConfig)
    select: SelectConfig = Field(default_factory=SelectConfig)
    workers: int = Field(1, ge=1, le=256, description="worker processes over shards (speed only)")

    @model_validator(mode="after")
    def _judge_kind_needs_judge(self) -> "VerifyConfig":
        judged = sorted(d for d, kind in self.rewards.items() if kind == "judge")
        if judged and self.judge is None:
            raise ValueError(f"rewards: domain(s) {judged} use the judge reward but there is no verify.judge block")
        return self
