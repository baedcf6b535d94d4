"""Export of the trained student: DIR/sft/model (full weights, LoRA merged) and DIR/sft/adapter (LoRA)."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from factory.train.config import SFTConfig
from factory.train.model import causal_lm_of


def export_student(cfg: SFTConfig, accelerator, model, out: Path, tokenizer, eos_token_ids, precision: str):
    """Write DIR/sft/model (full weights; LoRA merged when merge_on_export) and DIR/sft/adapter (LoRA), with the
    tokenizer (template, pad) and a generation_config that stops on the end-of-turn token."""
    from accelerate.utils import DistributedType
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    unwrapped = accelerator.unwrap_model(model)
    distributed = accelerator.num_processes > 1 or accelerator.distributed_type == DistributedType.FSDP
    full_sd = None
    if distributed:  # gather the shards on the main process, on CPU
        full_sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    model_dir = out / "model"
    adapter_dir = out / "adapter" if cfg.mode == "lora" else None
    if accelerator.is_main_process:
        dtype = _export_dtype(cfg.export_dtype, precision)
        if cfg.mode == "lora":
            peft_model = _peft_on_cpu(unwrapped, full_sd) if distributed else unwrapped
            peft_model.save_pretrained(str(adapter_dir))
            _save_tokenizer(tokenizer, adapter_dir)
            if cfg.lora.merge_on_export:
                merged = peft_model.merge_and_unload()
                _save_model(merged, None, model_dir, dtype, eos_token_ids)
        else:
            _save_model(causal_lm_of(unwrapped), full_sd, model_dir, dtype, eos_token_ids)
        if model_dir.exists():
            _save_tokenizer(tokenizer, model_dir)
        for folder in (model_dir, adapter_dir):
            _normal_file_modes(folder)
    accelerator.wait_for_everyone()
    return (model_dir if model_dir.exists() else None), adapter_dir


def _export_dtype(export_dtype: str, precision: str) -> torch.dtype:
    """The exported weights' dtype: `export_dtype`, where "training" is the run's precision (fp32 on CPU)."""
    name = precision if export_dtype == "training" else export_dtype
    return torch.bfloat16 if name == "bf16" else torch.float32


def _normal_file_modes(folder: Path | None) -> None:
    """safetensors writes its files 0600; give every exported file the mode the process's umask gives new files
    (0644 usually), so the model folder can be served or published by another user."""
    if folder is None or not folder.exists():
        return
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.iterdir():
        if path.is_file():
            path.chmod(0o666 & ~umask)


def _peft_on_cpu(unwrapped, full_sd):
    """A CPU copy of the peft model holding the gathered full state dict (FSDP export)."""
    import copy

    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    base = causal_lm_of(unwrapped)
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(base.config)
    fresh = fresh.to_empty(device="cpu")
    peft_model = get_peft_model(fresh, copy.deepcopy(unwrapped.peft_config["default"]))
    peft_model.load_state_dict(full_sd, strict=False, assign=True)
    return peft_model


def _save_model(model, state_dict, path: Path, dtype, eos_token_ids) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if state_dict is None:
        state_dict = model.state_dict()
    state_dict = {k: (v.detach().to("cpu", dtype) if v.is_floating_point() else v.detach().cpu())
                  for k, v in state_dict.items()}
    model.config.use_cache = True
    model.config.dtype = dtype
    if eos_token_ids:
        model.generation_config.eos_token_id = eos_token_ids if len(eos_token_ids) > 1 else eos_token_ids[0]
        model.config.eos_token_id = model.generation_config.eos_token_id
    model.save_pretrained(str(path), state_dict=state_dict)
    # save_pretrained records the in-memory model's dtype (fp32 when trained on the CPU), not the saved tensors'
    trained_dtype, model.config.dtype = model.config.dtype, dtype
    model.config.save_pretrained(str(path))
    model.config.dtype = trained_dtype


def _save_tokenizer(tokenizer, path: Path) -> None:
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))
