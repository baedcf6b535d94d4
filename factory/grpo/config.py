"""The `grpo:` block of a pipeline: R1-Zero-style GRPO of a policy on the verify stage's rule-based rewards.

A leaf module (pydantic only): loading a pipeline imports no torch, no TRL, no reward. Defaults name their source:
[R1] DeepSeek-R1 (Nature 2025, suppl. "Training details of DeepSeek-R1-Zero": lr 3e-6, KL coefficient 0.001,
16 outputs per question, rollout temperature 1); [DSM] DeepSeekMath (GRPO's paper, eq. 3: clip ε = 0.2, per-
sequence mean of token losses, group-normalised advantages); [TRL] TRL 1.16 GRPOConfig defaults.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from factory.core.config import Strict
from factory.generate.config import SourceConfig, TemplateConfig
from factory.train.config import LoRAConfig

BUILTIN_REWARDS = ("accuracy", "format", "language")


class LanguageRewardConfig(Strict):
    """The paper's language-consistency reward: Num(target-language words) / Num(words) of the CoT, scored by
    curate's language filter (`factory.curate.filters.language`)."""

    target: str | None = Field(None, description="ISO 639-1; None: the prompt's `language`, else default_language")
    default_language: str = "en"
    method: Literal["runs", "segments"] = "runs"
    min_segment_words: int = Field(5, ge=1, le=200)


class GRPOConfig(Strict):
    """Everything `factory grpo` needs. One optimizer step = `prompts_per_step` prompts × G samples each."""

    policy: str = Field("embedded", description="model folder or Hub id; 'embedded' = SmolLM2-135M-Instruct")
    prompts: list[SourceConfig] | None = Field(None, description="prompt sources; None: the pipeline's `prompts`")
    template: TemplateConfig | None = Field(
        None, description="None: the pipeline's `template`. Base models: kind r1_zero (paper, Table 1); instruct "
                          "models: kind chat with prefill '<think>\\n'")
    mode: Literal["lora", "full"] = "full"
    lora: LoRAConfig = Field(default_factory=lambda: LoRAConfig(r=16, alpha=32, dropout=0.0))

    # GRPO itself
    num_generations: int = Field(16, ge=2, description="G, samples per prompt [R1: 16; TRL: 8]")
    prompts_per_step: int = Field(2, ge=1, description="prompts per optimizer step [R1: 32 questions per step]")
    epsilon: float = Field(0.2, gt=0, description="clip range ε of the importance ratio [DSM, TRL: 0.2]")
    epsilon_high: float | None = Field(None, gt=0, description="upper clip (DAPO's clip-higher); None: = epsilon")
    beta: float = Field(0.001, ge=0, description="KL coefficient β to the reference [R1: 0.001; DSM: 0.04; TRL: 0]")
    reference: bool = Field(True, description="keep a reference policy for the KL term; false sets β = 0 "
                                              "(TRL then loads no reference model)")
    reference_model: str | None = Field(None, description="reference weights; None: the initial policy (the paper)")
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo"] = Field(
        "grpo", description="loss aggregation: grpo = mean over each sample's tokens, then over samples [DSM eq. 3];"
                            " TRL's default is dapo (token mean over the batch)")
    scale_rewards: Literal["group", "batch", "none"] = Field("group", description="advantage = (r - mean) / std "
                                                                                  "within the group [DSM, TRL]")
    num_iterations: int = Field(1, ge=1, description="μ, updates per batch of rollouts [TRL: 1; DSM: 1]")
    learning_rate: float = Field(3e-6, gt=0, le=1.0, description="[R1: 3e-6; DSM: 1e-6; TRL: 1e-6]")
    lr_scheduler: Literal["constant", "linear", "cosine"] = Field("constant", description="[R1, DSM: constant]")
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, ge=0)
    steps: int = Field(100, ge=1, description="optimizer steps")
    max_completion_length: int = Field(1024, ge=8, description="[DSM: 1024; R1: 32768; TRL: 512]")
    temperature: float = Field(1.0, gt=0, description="rollout temperature [R1: 1.0; TRL: 1.0]")
    top_p: float = Field(1.0, gt=0, le=1)
    mask_truncated_completions: bool = Field(False, description="exclude completions cut at the length limit")
    drop_equal_groups: bool = Field(False, description="drop groups whose G rewards are all equal (zero advantage)"
                                                       " from the loss")

    # rewards: name -> weight. accuracy (verify's math / code / choice per domain), format (verify's), language
    # (the paper's consistency reward), or "package.module:function" taking a rollout record, returning a float.
    rewards: dict[str, float] = Field(default_factory=lambda: {"accuracy": 1.0, "format": 1.0})
    language: LanguageRewardConfig = Field(default_factory=LanguageRewardConfig)
    reward_timeout_s: float = Field(10.0, gt=0, le=600, description="hard per-sample deadline of each reward; a "
                                                                    "reward cut at it scores 0")
    reward_workers: int = Field(2, ge=1, le=256, description="worker processes scoring the rewards")

    # running
    save_steps: int = Field(10, ge=1, description="checkpoint every N steps (resume restarts from the last)")
    save_total_limit: int = Field(2, ge=1)
    seed: int = 0
    use_vllm: bool = Field(False, description="GPU: rollouts from a vLLM engine colocated on the training GPU")
    vllm_gpu_memory_utilization: float = Field(0.3, gt=0, lt=1)
    gradient_checkpointing: bool = False
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="auto: bf16 on GPU, fp32 on CPU")

    @field_validator("rewards")
    @classmethod
    def _known_rewards(cls, v: dict[str, float]) -> dict[str, float]:
        if not v:
            raise ValueError("at least one reward is needed")
        for name in v:
            if name not in BUILTIN_REWARDS and ":" not in name:
                raise ValueError(f"unknown reward {name!r} (known: {', '.join(BUILTIN_REWARDS)}, or "
                                 f"'package.module:function')")
        return v

    @model_validator(mode="after")
    def _reference(self) -> GRPOConfig:
        if self.reference_model is not None and not self.reference:
            raise ValueError("reference_model is set but reference is false")
        if self.reference_model is not None and self.mode == "lora":
            raise ValueError("reference_model: with mode lora the reference is the policy without its adapter")
        return self

    @property
    def effective_beta(self) -> float:
        return self.beta if self.reference else 0.0
