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


class PrefilterConfig(Strict):
    """Before training, sample k completions per prompt from the initial policy, score them with GRPO's accuracy
    reward, and keep the prompts whose pass rate (correct / k) lies in [min_pass_rate, max_pass_rate] (inclusive).
    A prompt every sample solves, or none does, has a zero advantage in every group: it costs a rollout and teaches
    nothing (open-r1's scripts/pass_rate_filtering, which kept DAPO-Math prompts at 0.3-0.7 of R1-Distill-Qwen-7B;
    Skywork-OR1 and DAPO drop the always-/never-solved ones). The defaults keep every prompt; to drop both ends
    with k = 8 use e.g. min 0.1, max 0.9."""

    k: int = Field(8, ge=2, description="samples per prompt [TRL's num_generations default: 8]")
    min_pass_rate: float = Field(0.0, ge=0, le=1, description="drop prompts solved less often (too hard)")
    max_pass_rate: float = Field(1.0, ge=0, le=1, description="drop prompts solved more often (too easy)")
    max_tokens: int | None = Field(None, ge=1, description="None: grpo.max_completion_length (what GRPO samples)")
    temperature: float | None = Field(None, gt=0, description="None: grpo.temperature (what GRPO samples at)")

    @model_validator(mode="after")
    def _range(self) -> PrefilterConfig:
        if self.min_pass_rate > self.max_pass_rate:
            raise ValueError(f"min_pass_rate={self.min_pass_rate} is above max_pass_rate={self.max_pass_rate}: "
                             f"no prompt could be kept")
        return self


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

    prefilter: PrefilterConfig | None = Field(
        None, description="drop prompts by the initial policy's pass rate before training (open-r1's pass-rate "
                          "filtering, Skywork-OR1, DAPO: always- and never-solved prompts give zero advantage)")

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
    micro_batch_size: int | None = Field(
        None, ge=1, description="sequences per forward/backward pass; the step's prompts_per_step × G samples are "
                                "accumulated over (prompts_per_step × G) / micro_batch_size passes. None: one pass")
    use_vllm: bool | Literal["auto"] = Field(
        "auto", description="rollouts from a vLLM engine colocated on the training GPU (TRL's colocate mode); auto:"
                            " on when a GPU and vLLM are present, else model.generate (TRL's default)")
    vllm_gpu_memory_utilization: float = Field(0.3, gt=0, lt=1, description="share of the GPU for vLLM's weights "
                                                                              "and KV cache [TRL: 0.3]")
    vllm_enable_sleep_mode: bool = Field(False, description="free vLLM's KV cache and weights during the backward "
                                                            "pass (more room for training, slower wake-up)")
    vllm_mode: Literal["colocate", "server"] = Field(
        "colocate", description="colocate: vLLM on the training GPU; server: rollouts from a separate `trl vllm-serve` "
                                "(its own GPUs), weights synced to it after each step over NCCL [TRL: colocate]")
    vllm_server_base_url: str | None = Field(None, description="server mode: the server's URL, e.g. "
                                                               "http://10.0.0.2:8000 (not part of the fingerprint)")
    vllm_server_timeout_s: float = Field(240.0, gt=0, le=3600, description="server mode: seconds to wait for the "
                                                                           "server's /health at start [TRL: 240]")
    gradient_checkpointing: bool = Field(False, description="recompute activations in the backward pass: less "
                                                            "memory, ~30% slower training [TRL default: true]")
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

    @model_validator(mode="after")
    def _prefilter_needs_accuracy(self) -> GRPOConfig:
        if self.prefilter is not None and "accuracy" not in self.rewards:
            raise ValueError("prefilter: the pass rate is the accuracy reward's, but grpo.rewards has no accuracy")
        return self

    @model_validator(mode="after")
    def _server_mode(self) -> GRPOConfig:
        if self.vllm_mode != "server":
            return self
        if self.use_vllm is False:
            raise ValueError("vllm_mode: server takes its rollouts from vLLM, but use_vllm is false")
        url = self.vllm_server_base_url
        if not url:
            raise ValueError("vllm_server_base_url: vllm_mode server needs the server's URL (e.g. "
                             "http://127.0.0.1:8000, where `trl vllm-serve --model POLICY` listens)")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"vllm_server_base_url: {url!r} is not an http:// or https:// URL")
        return self

    @model_validator(mode="after")
    def _micro_batch(self) -> GRPOConfig:
        total = self.prompts_per_step * self.num_generations
        if self.micro_batch_size is not None and total % self.micro_batch_size:
            raise ValueError(f"micro_batch_size={self.micro_batch_size} must divide prompts_per_step × "
                             f"num_generations = {total}")
        return self

    @property
    def effective_beta(self) -> float:
        return self.beta if self.reference else 0.0
