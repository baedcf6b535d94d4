"""Configuration of the SFT stage: one pydantic model, unknown keys are errors that name the key."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator


class LoRAConfig(BaseModel):
    """LoRA adapter settings (peft). `target_modules: auto` picks the per-architecture table in `model.py`."""

    model_config = ConfigDict(extra="forbid")

    r: int = Field(64, ge=1, le=4096)
    alpha: float = Field(128.0, gt=0)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["auto", "all-linear"] = "auto"
    merge_on_export: bool = True


class SFTConfig(BaseModel):
    """Everything `run_sft` needs. Batch sizes count samples (conversations), the paper's unit."""

    model_config = ConfigDict(extra="forbid")

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
    gradient_checkpointing: bool = True
    bf16_compute_copy: bool = Field(
        True, description="full FT in bf16 in one process (no FSDP): fp32 master weights, compute on a bf16 copy "
                          "refreshed once per step (FSDP2's numerics, without its per-micro-batch casts)")
    # Only the registered varlen attention keeps packed samples apart: transformers 5.19's sdpa/eager with
    # restarting position ids and no mask attend across samples (tests/test_train_packing.py shows the leak).
    attn_implementation: Literal["auto", "varlen"] = Field(
        "auto", description="varlen: flash/cuDNN attention per sample on GPU, per-sample SDPA on CPU")
    attention_kernel: Literal["auto", "ragged", "hybrid", "flash", "cudnn"] = Field(
        "auto", description="CUDA kernel of the varlen attention: ragged = the whole packed row in one cuDNN call "
                            "(needs nvidia-cudnn-frontend and an sm90+ GPU); hybrid = cuDNN for samples >= 2k "
                            "tokens, flash varlen for shorter ones; flash = flash varlen only; cudnn = cuDNN per "
                            "sample; auto = ragged where it can run, else hybrid")
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


def load_sft_config(path: str | Path, overrides: dict[str, Any] | None = None) -> SFTConfig:
    """Read an SFT recipe: a YAML file whose `sft:` block (or whole body) holds SFTConfig fields.

    `overrides` use dotted keys (`{"mode": "lora", "lora.r": 16}`), as CLI flags would.
    """
    raw = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping, got {type(raw).__name__}")
    body = raw.get("sft", raw) if isinstance(raw.get("sft", raw), dict) else raw
    body = dict(body)
    for key, value in (overrides or {}).items():
        node = body
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    try:
        return SFTConfig.model_validate(body)
    except Exception as exc:  # pydantic's message names the key; add the file
        raise ValueError(f"{path}: {exc}") from exc
