"""Configuration of the SFT stage: one pydantic model, unknown keys are errors that name the key."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from factory.core.config import ConfigError, Strict, apply_overrides, format_validation_error, read_yaml_mapping


class LoRAConfig(Strict):
    """LoRA adapter settings (peft). `target_modules: auto` picks the per-architecture table in `model.py`."""

    r: int = Field(64, ge=1, le=4096)
    alpha: float = Field(128.0, gt=0)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["auto", "all-linear"] = "auto"
    merge_on_export: bool = True


class SFTConfig(Strict):
    """Everything `run_sft` needs. Batch sizes count samples (conversations), the paper's unit."""

    student: str = Field(..., description="Hugging Face model id or local folder of a causal LM")
    init: Literal["pretrained", "random"] = Field(
        "pretrained", description="random: build the student from its config only (benchmarks, tests)")
    config_overrides: dict[str, Any] = Field(
        default_factory=dict, description="model config keys to change, e.g. max_position_embeddings for 32k "
                                          "training of a 4k-context base (as the R1 distills did)")
    mode: Literal["lora", "full"] = "lora"
    lora: LoRAConfig = Field(default_factory=LoRAConfig)

    # data
    data: str | None = Field(None, description="Parquet/JSONL file or folder with a messages column; "
                                               "default: DIR/curate")
    messages_column: str = "messages"
    chat_template: str | None = Field(None, description="Jinja chat template overriding the student's")
    max_length: int = Field(32768, ge=16, description="context: longest sample in tokens")
    overlong: Literal["drop", "truncate"] = "drop"

    # optimisation (paper: 2-3 epochs, batch 64, cosine to 0.1x)
    epochs: int = Field(3, ge=1, le=100)
    max_steps: int | None = Field(None, ge=1, description="cap on optimizer steps (the schedule spans them)")
    global_batch_size: int = Field(64, ge=1, description="samples per optimizer step, all GPUs together")
    micro_batch_tokens: int = Field(32768, ge=16, description="token budget of one packed micro-batch")
    learning_rate: float = Field(1e-4, gt=0, le=1.0)
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0)
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0, le=1.0)
    adam_beta1: float = Field(0.9, ge=0.0, lt=1.0)
    adam_beta2: float = Field(0.95, ge=0.0, lt=1.0)
    adam_eps: float = Field(1e-8, gt=0.0)
    max_grad_norm: float = Field(1.0, ge=0.0, description="0 disables clipping")
    seed: int = 42

    # speed and memory
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="auto: bf16 on GPU, fp32 on CPU")
    export_dtype: Literal["bf16", "fp32", "training"] = Field(
        "bf16", description="dtype of DIR/sft/model: bf16 (half the size of fp32; what vLLM serves it in), fp32, "
                            "or the training precision")
    gradient_checkpointing: bool = True
    bf16_compute_copy: bool = Field(
        True, description="full FT in bf16 in one process (no FSDP): fp32 master weights, compute on a bf16 copy "
                          "refreshed once per step (FSDP2's numerics, without its per-micro-batch casts)")
    # Attention is always the registered varlen function (attention.py): transformers 5.19's sdpa/eager with
    # restarting position ids and no mask attend across packed samples (tests/train/test_train_packing.py).
    attention_kernel: Literal["auto", "ragged", "hybrid", "flash", "cudnn"] = Field(
        "auto", description="CUDA kernel of the varlen attention: ragged = the whole packed row in one cuDNN call "
                            "(needs nvidia-cudnn-frontend and an sm90+ GPU); hybrid = cuDNN for samples >= "
                            "cudnn_min_len tokens, flash varlen for shorter ones; flash = flash varlen only; cudnn = "
                            "cuDNN per sample; auto = ragged where it can run, else hybrid")
    cudnn_min_len: int = Field(
        2048, ge=0, description="hybrid kernel: samples of at least this many tokens go through cuDNN, runs of "
                                "shorter ones through flash varlen")
    cudnn_bucket: int = Field(
        256, ge=1, description="hybrid and cudnn kernels: a sample's length is padded to a multiple of this for "
                               "cuDNN (one execution plan per bucket)")
    group_projections: bool = Field(
        True, description="compute copy: q/k/v and gate/up projections run one backward per group (one GEMM pair "
                          "for q/k/v); off: one backward per Linear")
    manual_gc: bool = Field(
        True, description="GPU: Python's garbage collector runs once per optimizer step, not mid-step "
                          "(Megatron-LM's --manual-gc); off: Python's automatic collection")
    liger: bool = Field(False, description="Liger RMSNorm/SwiGLU/RoPE kernels (GPU, needs liger-kernel)")
    loss_impl: Literal["auto", "liger", "torch"] = Field(
        "auto", description="fused linear+cross-entropy: liger (Triton) when installed on GPU, else torch")
    loss_chunk_tokens: int = Field(8192, ge=1, description="tokens per chunk of the fused LM head + loss")

    # checkpoints and logs
    save_every_steps: int = Field(200, ge=0, description="0: only at the end")
    keep_checkpoints: int = Field(2, ge=1)
    resume: bool = Field(True, description="resume from the last complete checkpoint in DIR/sft/checkpoints")
    log_every_steps: int = Field(1, ge=1)
    progress: bool = True
    trust_remote_code: bool = False

    @model_validator(mode="after")
    def _check(self) -> "SFTConfig":
        if self.micro_batch_tokens < self.max_length:
            raise ValueError(f"micro_batch_tokens ({self.micro_batch_tokens}) must be >= max_length "
                             f"({self.max_length}): the longest sample must fit one micro-batch")
        return self


def load_sft_config(path: str | Path, overrides: list[str] | dict[str, Any] | None = None) -> SFTConfig:
    """Read an SFT recipe: a YAML file whose `sft:` block (or whole body) holds SFTConfig fields.

    `overrides`: `--set` items relative to that block (`["mode=lora", "lora.r=16"]`, factory.core.config's
    parser), or the same as a dict of dotted keys and values (`{"mode": "lora", "lora.r": 16}`).
    """
    raw = read_yaml_mapping(path)
    body = raw["sft"] if isinstance(raw.get("sft"), dict) else raw
    apply_overrides(body, _as_set_items(overrides or []))
    try:
        return SFTConfig.model_validate(body)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path))) from None


def _as_set_items(overrides: list[str] | dict[str, Any]) -> list[str]:
    """Dict overrides as `key=value` items (the value in YAML, which the one `--set` parser reads back exactly)."""
    if isinstance(overrides, dict):
        return [f"{key}={yaml.safe_dump(value, default_flow_style=True, width=math.inf)}"
                for key, value in overrides.items()]
    return list(overrides)
