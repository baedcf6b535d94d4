"""Loading the student: causal-LM check, attention implementation, optional Liger kernels, LoRA (peft)."""
from __future__ import annotations

import torch

from factory.train.attention import register_varlen_attention
from factory.train.config import SFTConfig

# LoRA targets per architecture (model_type): all projections of attention and MLP, as in the QLoRA/LoRA-without-
# regret findings (MLP adapters matter most for SFT). Anything else falls back to peft's "all-linear".
LORA_TARGETS: dict[str, list[str]] = {
    name: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    for name in ("qwen2", "qwen3", "llama", "mistral", "gemma", "gemma2", "gemma3_text", "olmo2", "smollm3")
}
LORA_TARGETS.update({"phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
                     "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]})


class StudentError(ValueError):
    """The student model cannot be trained as configured."""


def resolve_precision(cfg: SFTConfig, device: torch.device | str) -> str:
    """The run's precision, "bf16" or "fp32": `cfg.precision`, where auto is bf16 on a GPU and fp32 elsewhere."""
    if cfg.precision != "auto":
        return cfg.precision
    return "bf16" if torch.device(device).type == "cuda" else "fp32"


def check_causal_lm(config, student: str) -> None:
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING

    if getattr(config, "is_encoder_decoder", False) or type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise StudentError(f"student {student!r} (model_type {config.model_type!r}) is not a causal language "
                           f"model; SFT needs a decoder-only model loadable by AutoModelForCausalLM")


def load_student(cfg: SFTConfig, device: torch.device, fsdp: bool = False, model_config=None):
    """The student as an (untrained-adapter) model on `device` (or on CPU for FSDP to place), and its precision.

    `model_config` (a transformers config) overrides `cfg.student`'s config (random-weight benchmarks/tests).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    config = model_config or AutoConfig.from_pretrained(cfg.student, trust_remote_code=cfg.trust_remote_code)
    check_causal_lm(config, cfg.student)
    for key, value in cfg.config_overrides.items():
        if not hasattr(config, key):
            raise StudentError(f"config_overrides: {config.model_type} config has no key {key!r}")
        setattr(config, key, value)
    precision = resolve_precision(cfg, device)
    attn = register_varlen_attention()
    # LoRA: frozen base in bf16. Full FT: fp32 master weights (FSDP casts to bf16 for compute; without FSDP,
    # autocast does), so small updates are not rounded away.
    dtype = torch.bfloat16 if (precision == "bf16" and cfg.mode == "lora") else torch.float32
    place = torch.device("cpu") if fsdp else device
    if cfg.init == "random" or model_config is not None:
        with place:
            model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn,
                                                     trust_remote_code=cfg.trust_remote_code)
    else:
        model = AutoModelForCausalLM.from_pretrained(cfg.student, config=config, dtype=dtype,
                                                     attn_implementation=attn,
                                                     trust_remote_code=cfg.trust_remote_code).to(place)
    model.config.use_cache = False
    if cfg.liger:
        apply_liger(model)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.mode == "lora":
        model = add_lora(model, cfg)
    return model, precision


def apply_liger(model) -> None:
    """Liger's RMSNorm, SwiGLU and RoPE kernels on this instance (the loss is handled by loss.py)."""
    try:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance
    except ImportError as exc:
        raise StudentError("liger: true needs the liger-kernel package (pip install liger-kernel)") from exc
    _apply_liger_kernel_to_instance(model=model, rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                    fused_linear_cross_entropy=False)


def lora_targets(model, cfg: SFTConfig) -> list[str] | str:
    if cfg.lora.target_modules == "auto":
        return LORA_TARGETS.get(model.config.model_type, "all-linear")
    return cfg.lora.target_modules


def add_lora(model, cfg: SFTConfig):
    from peft import LoraConfig, get_peft_model

    targets = lora_targets(model, cfg)
    linear_names = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                           if isinstance(module, torch.nn.Linear)})
    if targets != "all-linear":
        missing = [t for t in targets if t not in linear_names]
        if len(missing) == len(targets):
            raise StudentError(f"LoRA target_modules {targets} match no layer of {cfg.student!r} "
                               f"({model.config.model_type}); its linear layers are: {', '.join(linear_names)}")
    lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=targets, task_type="CAUSAL_LM", bias="none")
    try:
        return get_peft_model(model, lora)
    except ValueError as exc:
        raise StudentError(f"LoRA target_modules {targets}: {exc}") from exc


def causal_lm_of(model):
    """The transformers causal LM inside a (peft-wrapped) model."""
    from peft import PeftModel

    return model.get_base_model() if isinstance(model, PeftModel) else model


def model_flops_per_token(config, effective_len: float, lora: bool) -> float:
    """Training FLOPs per token (model FLOPs, no recompute): 6N for the linear layers (4N with frozen weights
    under LoRA: no weight gradients) plus causal attention 6 * L * H * d_head * effective_len, where
    effective_len = E[s^2]/E[s] over the samples (the token-weighted mean sample length)."""
    h = config.hidden_size
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or h // heads
    kv = config.num_key_value_heads
    inter = config.intermediate_size
    layers = config.num_hidden_layers
    per_layer = h * heads * head_dim + 2 * h * kv * head_dim + heads * head_dim * h + 3 * h * inter
    linear = layers * per_layer + h * config.vocab_size
    attn = 6.0 * layers * heads * head_dim * effective_len  # fwd 2*(QK+PV)/2 causal, x3 for training
    return (4.0 if lora else 6.0) * linear + attn
