"""Padding-free packing: many samples in one row, no attention across their boundaries.

A micro-batch is one row `[1, T]` of concatenated samples with position ids restarting at 0 for each sample and
cumulative sequence lengths `cu_seq_lens` (int32, `[n_samples + 1]`). Attention runs through the attention function
`factory_varlen`, registered with transformers' AttentionInterface:
- on CUDA: cuDNN's fused attention on the ragged row (cudnn_ragged.py, one call per layer; sm90+ with
  nvidia-cudnn-frontend), or PyTorch's own kernels (`hybrid`: cuDNN per long sample, the flash-attention varlen
  kernel inside PyTorch for runs of short ones), causal within each sample, grouped-query heads native — no
  flash-attn build, no T x T mask, no compute spent on cross-sample blocks;
- elsewhere (CPU tests): one causal SDPA call per sample, the plain reference of the same function.
Labels are shifted per sample before concatenation (`targets[i]` = the token after `i` in the same sample), so no
sample is ever trained to predict the next sample's first token.

The order of samples is a pure function of (seed, epoch): a resumed run replays exactly the same steps.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from factory.train.data import IGNORE_INDEX, TokenizedSample

ATTN_NAME = "factory_varlen"


# ------------------------------------------------------------------------------------------------ planning

@dataclass
class StepPlan:
    """One optimizer step: for each rank, a list of micro-batches (lists of sample indices)."""

    epoch: int
    samples: list[int]
    micro_batches: list[list[list[int]]]  # [rank][micro][sample index]
    trained_tokens: int  # label tokens of the whole step (all ranks): the loss normaliser


def plan_epoch(lengths: np.ndarray, trained: np.ndarray, epoch: int, seed: int, global_batch: int,
               world_size: int, micro_batch_tokens: int) -> list[StepPlan]:
    """Shuffle the samples for `epoch`, cut them into steps of `global_batch`, spread each step over the ranks by
    tokens (longest first onto the least loaded rank), and pack each rank's share into micro-batches of at most
    `micro_batch_tokens` (first-fit decreasing). Every rank runs the same number of micro-batches; a rank with
    fewer gets empty ones (run as a dummy, so collective ops stay in step)."""
    order = np.random.default_rng([seed, epoch]).permutation(len(lengths))
    steps = []
    for start in range(0, len(order), global_batch):
        chosen = [int(i) for i in order[start:start + global_batch]]
        loads = [0] * world_size
        shares: list[list[int]] = [[] for _ in range(world_size)]
        for index in sorted(chosen, key=lambda i: (-int(lengths[i]), i)):
            rank = min(range(world_size), key=lambda r: (loads[r], r))
            shares[rank].append(index)
            loads[rank] += int(lengths[index])
        per_rank = [pack_first_fit(share, lengths, micro_batch_tokens) for share in shares]
        depth = max(len(m) for m in per_rank)
        per_rank = [m + [[] for _ in range(depth - len(m))] for m in per_rank]
        steps.append(StepPlan(epoch, chosen, per_rank, int(sum(int(trained[i]) for i in chosen))))
    return steps


def pack_first_fit(indices: list[int], lengths: np.ndarray, capacity: int) -> list[list[int]]:
    """First-fit-decreasing bins of sample indices, each bin's total length <= capacity."""
    bins: list[list[int]] = []
    room: list[int] = []
    for index in sorted(indices, key=lambda i: (-int(lengths[i]), i)):
        size = int(lengths[index])
        if size > capacity:
            raise ValueError(f"sample {index} has {size} tokens, more than micro_batch_tokens={capacity}")
        for b, free in enumerate(room):
            if size <= free:
                bins[b].append(index)
                room[b] -= size
                break
        else:
            bins.append([index])
            room.append(capacity - size)
    return bins


# ----------------------------------------------------------------------------------------------- collation

def shifted_targets(sample: TokenizedSample) -> np.ndarray:
    """targets[i] = labels[i + 1] within the sample; the last position predicts nothing."""
    targets = np.full(len(sample), IGNORE_INDEX, dtype=np.int64)
    targets[:-1] = sample.labels[1:]
    return targets


def collate_packed(samples: list[TokenizedSample], pad_id: int = 0) -> dict[str, torch.Tensor | int]:
    """One packed row. An empty list gives a 1-token dummy row whose targets are all ignored."""
    if not samples:
        return {"input_ids": torch.full((1, 1), pad_id, dtype=torch.long),
                "position_ids": torch.zeros((1, 1), dtype=torch.long),
                "labels": torch.full((1, 1), IGNORE_INDEX, dtype=torch.long),
                "target_index": torch.zeros(0, dtype=torch.long),
                "cu_seq_lens": torch.tensor([0, 1], dtype=torch.int32), "max_length": 1}
    lengths = [len(s) for s in samples]
    input_ids = np.concatenate([s.input_ids for s in samples]).astype(np.int64)
    position_ids = np.concatenate([np.arange(n) for n in lengths])
    targets = np.concatenate([shifted_targets(s) for s in samples])
    cu = np.zeros(len(samples) + 1, dtype=np.int32)
    np.cumsum(lengths, out=cu[1:])
    return {"input_ids": torch.from_numpy(input_ids)[None], "position_ids": torch.from_numpy(position_ids)[None],
            "labels": torch.from_numpy(targets)[None], "cu_seq_lens": torch.from_numpy(cu),
            "target_index": torch.from_numpy(np.flatnonzero(targets != IGNORE_INDEX)), "max_length": max(lengths)}


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host-to-GPU copies go through pinned memory: a copy from pageable memory waits for the GPU's queue to
    drain first, which idles the GPU at every micro-batch while the CPU catches up."""
    if device.type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def model_kwargs(batch: dict, device: torch.device) -> dict:
    """Keyword arguments for the model's forward. transformers hands `cu_seq_lens_*`/`max_length_*` through to the
    attention function (its flash-attention kwargs); `attention_mask` stays None: no padding, no T x T mask.
    `target_index` (positions with a target, found on the host) is for the fused loss (loss.install_fused_loss):
    selecting rows by a boolean mask on the GPU would stop the CPU until the GPU has caught up, twice per row."""
    cu = _to_device(batch["cu_seq_lens"], device)
    remember_bounds(cu, batch["cu_seq_lens"].tolist())
    return {"input_ids": _to_device(batch["input_ids"], device),
            "position_ids": _to_device(batch["position_ids"], device),
            "labels": _to_device(batch["labels"], device), "target_index": _to_device(batch["target_index"], device),
            "cu_seq_lens_q": cu, "cu_seq_lens_k": cu,
            "max_length_q": int(batch["max_length"]), "max_length_k": int(batch["max_length"])}


# ----------------------------------------------------------------------------------------------- attention

_BOUNDS: dict[int, list[int]] = {}  # device cu_seq_lens data_ptr -> the same bounds on the host


def remember_bounds(cu: torch.Tensor, bounds: list[int]) -> None:
    """Keep the host copy of a device `cu_seq_lens`, so attention never syncs the GPU to read it."""
    if len(_BOUNDS) > 8:
        _BOUNDS.clear()
    _BOUNDS[cu.data_ptr()] = bounds


def _host_bounds(cu: torch.Tensor) -> list[int]:
    bounds = _BOUNDS.get(cu.data_ptr())
    return bounds if bounds is not None and len(bounds) == cu.numel() else cu.tolist()


def _cu_from_position_ids(position_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    flat = position_ids.reshape(-1)
    starts = torch.nonzero(flat == 0).reshape(-1)
    if starts.numel() == 0 or int(starts[0]) != 0:
        starts = torch.cat([torch.zeros(1, dtype=starts.dtype, device=starts.device), starts])
    cu = torch.cat([starts, torch.tensor([flat.numel()], device=flat.device)]).to(torch.int32)
    return cu, int((cu[1:] - cu[:-1]).max())


def _reference_varlen(q, k, v, cu, scale):
    """Per-sample causal SDPA ([T, H, D] layout): the CPU path, and the definition the CUDA path must match."""
    out = torch.empty_like(q)
    bounds = _host_bounds(cu)
    groups = q.shape[1] // k.shape[1]
    for a, b in zip(bounds[:-1], bounds[1:]):
        qs, ks, vs = (t[a:b].transpose(0, 1)[None] for t in (q, k, v))
        if groups > 1:
            ks, vs = ks.repeat_interleave(groups, 1), vs.repeat_interleave(groups, 1)
        out[a:b] = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale)[0].transpose(0, 1)
    return out


# CUDA kernel of factory_varlen (SFTConfig.attention_kernel sets it through set_cuda_kernel):
# "hybrid" (default): samples of >= CUDNN_MIN_LEN tokens through cuDNN's fused attention (SDPA, one call per
# sample, length padded to a CUDNN_BUCKET multiple), runs of shorter samples through one flash varlen call.
# "flash": PyTorch's flash-attention (FA2) varlen, one call per layer. "cudnn": every sample through cuDNN.
# Measured on an H100 (bench/sft.py --cases attn, fwd+bwd, Qwen2.5-1.5B heads): one 16k sample 5.4 ms cuDNN
# (535 TFLOP/s) vs 9.7 ms flash (298); 4 x 4k 2.5 vs 3.1 ms; 7 samples of 0.7-5k 6.5 vs 2.7 ms (short samples
# lose on per-call cost and padding). Full 1.5B training, same run: hybrid 47.6% MFU vs flash 42.6%; min length
# 2048 / bucket 256 vs 4096 / 512: 1.8% faster (bench/results/README.md).
# "ragged": every sample of the row in one cuDNN call (factory/train/cudnn_ragged.py, needs cudnn-frontend): 7 samples
# of 0.7-5k 1.65 ms vs hybrid 2.80, 4 x 4k 2.0 vs 2.9; full 1.5B training +3.1% over hybrid in one run. "auto"
# (SFTConfig's default) resolves to ragged where cudnn-frontend and an sm90+ GPU are there, else to hybrid.
CUDA_KERNELS = ("hybrid", "flash", "cudnn", "ragged")
CUDA_KERNEL = os.environ.get("FACTORY_VARLEN_KERNEL", "hybrid")
CUDNN_MIN_LEN = int(os.environ.get("FACTORY_CUDNN_MIN_LEN", "2048"))
CUDNN_BUCKET = int(os.environ.get("FACTORY_CUDNN_BUCKET", "256"))
_FLASH_KW = None
_CUDNN_GQA: bool | None = None  # whether cuDNN takes grouped K/V heads natively (else K/V are expanded)


def _cudnn_one(q, k, v, scale):
    """Causal attention of one sample, [s, H, D] in and out, through SDPA's cuDNN backend. The length is padded
    up to a multiple of CUDNN_BUCKET: cuDNN builds an execution plan per shape, and every new length costs a plan
    build (measured: unpadded, real packed training ran 14% slower than flash varlen despite faster kernels)."""
    length = q.shape[0]
    padded = -(-length // CUDNN_BUCKET) * CUDNN_BUCKET
    if padded != length:  # zero rows at the end: causal, so the real rows never see them
        q, k, v = (F.pad(t, (0, 0, 0, 0, 0, padded - length)) for t in (q, k, v))
    return _cudnn_sdpa(q, k, v, scale)[:length]


def _cudnn_sdpa(q, k, v, scale):
    global _CUDNN_GQA
    from torch.nn.attention import SDPBackend, sdpa_kernel

    qs, ks, vs = (t.transpose(0, 1)[None] for t in (q, k, v))
    groups = q.shape[1] // k.shape[1]
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        if groups > 1 and _CUDNN_GQA is not False:
            try:
                out = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale, enable_gqa=True)
                _CUDNN_GQA = True
                return out[0].transpose(0, 1)
            except RuntimeError:
                _CUDNN_GQA = False
        if groups > 1:
            ks, vs = ks.repeat_interleave(groups, 1), vs.repeat_interleave(groups, 1)
        return F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale)[0].transpose(0, 1)


def set_cuda_kernel(name: str, device: torch.device | None = None) -> str:
    """Choose the CUDA kernel of factory_varlen for this process (one of CUDA_KERNELS, or "auto"); returns it."""
    global CUDA_KERNEL
    from factory.train import cudnn_ragged

    if name == "auto":
        name = "ragged" if cudnn_ragged.available(device) else "hybrid"
    if name not in CUDA_KERNELS:
        raise ValueError(f"attention kernel {name!r}: expected auto or one of {', '.join(CUDA_KERNELS)}")
    if name == "ragged" and torch.cuda.is_available() and not cudnn_ragged.available(device):
        raise ValueError("attention kernel 'ragged' needs the nvidia-cudnn-frontend package and a GPU of "
                         "compute capability 9.0+ (pip install nvidia-cudnn-frontend)")
    CUDA_KERNEL = name
    return name


def warm_cudnn_plans(config, max_length: int, device: torch.device, capacity: int | None = None) -> float:
    """Build cuDNN's attention plans (forward and backward) for every length bucket that training can meet, before
    the first step; returns the seconds spent. A plan build costs 0.1-1.7 s per new shape on an H100; met in the
    middle of training it stalls that step instead. `capacity`: tokens per packed row (default `max_length`).
    No-op for the flash kernel or off CUDA."""
    import time

    if CUDA_KERNEL == "flash" or device.type != "cuda":
        return 0.0
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    if CUDA_KERNEL == "ragged":
        from factory.train import cudnn_ragged

        started = time.perf_counter()
        cudnn_ragged.warm_plans(heads, kv, dim, dim ** -0.5, capacity or max_length, device)
        return time.perf_counter() - started
    first = CUDNN_MIN_LEN if CUDA_KERNEL == "hybrid" else 1
    started = time.perf_counter()
    for length in range(-(-first // CUDNN_BUCKET) * CUDNN_BUCKET, max_length + CUDNN_BUCKET, CUDNN_BUCKET):
        q = torch.randn(length, heads, dim, device=device, dtype=torch.bfloat16, requires_grad=True)
        k, v = (torch.randn(length, kv, dim, device=device, dtype=torch.bfloat16, requires_grad=True)
                for _ in range(2))
        _cudnn_one(q, k, v, dim ** -0.5).sum().backward()
    torch.cuda.synchronize(device)
    return time.perf_counter() - started


def _hybrid_varlen(q, k, v, cu, scale, min_len):
    """Long samples through cuDNN one by one, each run of consecutive short samples through one flash call.

    The row is cut with one `torch.split` (contiguous pieces, views): its backward is one concatenation, where
    per-piece slicing would zero-fill and copy a full-row gradient for every piece (measured: ~5% of an H100 step
    in copies). Bounds come from the host copy; the flash calls take slices of the device `cu`, so nothing syncs."""
    bounds = _host_bounds(cu)
    pieces: list[tuple[int, int, bool]] = []  # (first sample, end sample, through cuDNN)
    for i in range(len(bounds) - 1):
        long = bounds[i + 1] - bounds[i] >= min_len
        if not long and pieces and not pieces[-1][2]:
            pieces[-1] = (pieces[-1][0], i + 1, False)
        else:
            pieces.append((i, i + 1, long))
    if len(pieces) == 1 and not pieces[0][2]:
        return _flash_varlen(q, k, v, cu, max(bounds[i + 1] - bounds[i] for i in range(len(bounds) - 1)), scale)
    sizes = [bounds[end] - bounds[first] for first, end, _ in pieces]
    outs = []
    for (first, end, long), qp, kp, vp in zip(pieces, q.split(sizes), k.split(sizes), v.split(sizes)):
        if long:
            outs.append(_cudnn_one(qp, kp, vp, scale))
        else:
            local = cu[first:end + 1] - bounds[first]
            longest = max(bounds[i + 1] - bounds[i] for i in range(first, end))
            outs.append(_flash_varlen(qp, kp, vp, local, longest, scale))
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def _flash_varlen(q, k, v, cu, max_len, scale):
    """PyTorch's built-in flash-attention varlen kernel; autograd through aten's `_flash_attention_backward`."""
    global _FLASH_KW
    if _FLASH_KW is None:
        params = str(torch.ops.aten._flash_attention_forward.default._schema)
        _FLASH_KW = {"window_size_left": -1, "window_size_right": 0} if "window_size_left" in params else {}
    out = torch.ops.aten._flash_attention_forward(q, k, v, cu, cu, max_len, max_len, 0.0, True, False,
                                                  scale=scale, **_FLASH_KW)
    return out[0]


def varlen_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                             scaling: float | None = None, **kwargs):
    """transformers attention function ([B=1, H, T, D] in, [1, T, H, D] out) for packed rows."""
    if query.shape[0] != 1:
        raise ValueError("factory_varlen attention expects packed rows of batch size 1")
    cu = kwargs.get("cu_seq_lens_q")
    max_len = kwargs.get("max_length_q")
    if cu is None:
        position_ids = kwargs.get("position_ids")
        if position_ids is None:
            cu = torch.tensor([0, query.shape[2]], dtype=torch.int32, device=query.device)
            max_len = query.shape[2]
        else:
            cu, max_len = _cu_from_position_ids(position_ids)
    # [T, H, D] views. squeeze, not [0]: the backward of t[0] writes the gradient into a new zero-filled
    # [1, H, T, D] tensor (a transposing copy), which RoPE's backward then copies back to [T, H, D] order
    q, k, v = (t.squeeze(0).transpose(0, 1) for t in (query, key, value))
    if query.is_cuda and q.dtype in (torch.bfloat16, torch.float16):
        if CUDA_KERNEL == "flash":
            out = _flash_varlen(q.contiguous(), k.contiguous(), v.contiguous(), cu.to(q.device), int(max_len),
                                scaling)
        elif CUDA_KERNEL == "ragged" and q.dtype == torch.bfloat16:  # its graphs are bf16; fp16 runs hybrid
            from factory.train.cudnn_ragged import ragged_attention

            cu = cu.to(q.device)
            out = ragged_attention(q.contiguous(), k.contiguous(), v.contiguous(), cu, _host_bounds(cu),
                                   scaling if scaling is not None else q.shape[-1] ** -0.5)
        else:
            out = _hybrid_varlen(q.contiguous(), k.contiguous(), v.contiguous(), cu.to(q.device), scaling,
                                 0 if CUDA_KERNEL == "cudnn" else CUDNN_MIN_LEN)
    else:
        out = _reference_varlen(q, k, v, cu.to(q.device), scaling)
    return out[None], None


def _no_mask(*args, **kwargs):
    return None


def register_varlen_attention() -> str:
    """Register `factory_varlen` with transformers (idempotent) and return its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTN_NAME, varlen_attention_forward)
    AttentionMaskInterface.register(ATTN_NAME, _no_mask)
    return ATTN_NAME


__all__ = ["ATTN_NAME", "StepPlan", "collate_packed", "model_kwargs", "pack_first_fit", "plan_epoch",
           "register_varlen_attention", "shifted_targets", "varlen_attention_forward"]
