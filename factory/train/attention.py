"""Attention of packed rows: `factory_varlen`, registered with transformers' AttentionInterface.

A packed row holds many samples back to back (packing.py); attention is causal within each sample and never
crosses a boundary. The bounds come in as `cu_seq_lens_q` (transformers hands its flash-attention kwargs through).
- on CUDA: cuDNN's fused attention on the ragged row (cudnn_ragged.py, one call per layer; sm90+ with
  nvidia-cudnn-frontend), or PyTorch's own kernels (`hybrid`: cuDNN per long sample, the flash-attention varlen
  kernel inside PyTorch for runs of short ones), grouped-query heads native — no flash-attn build, no T x T mask,
  no compute spent on cross-sample blocks;
- elsewhere (CPU tests): one causal SDPA call per sample, the plain reference of the same function.

CUDA kernels (`ACTIVE.kernel`, set from SFTConfig.attention_kernel by `set_cuda_kernel`):
"hybrid": samples of >= `cudnn_min_len` tokens through cuDNN's fused attention (SDPA, one call per sample, length
padded to a `cudnn_bucket` multiple), runs of shorter samples through one flash varlen call.
"flash": PyTorch's flash-attention (FA2) varlen, one call per layer. "cudnn": every sample through cuDNN.
Measured on an H100 (bench/sft.py --cases attn, fwd+bwd, Qwen2.5-1.5B heads): one 16k sample 5.4 ms cuDNN
(535 TFLOP/s) vs 9.7 ms flash (298); 4 x 4k 2.5 vs 3.1 ms; 7 samples of 0.7-5k 6.5 vs 2.7 ms (short samples
lose on per-call cost and padding). Full 1.5B training, same run: hybrid 47.6% MFU vs flash 42.6%; min length
2048 / bucket 256 vs 4096 / 512: 1.8% faster (bench/results/README.md).
"ragged": every sample of the row in one cuDNN call (cudnn_ragged.py, needs cudnn-frontend): 7 samples of 0.7-5k
1.65 ms vs hybrid 2.80, 4 x 4k 2.0 vs 2.9; full 1.5B training +3.1% over hybrid in one run. "auto" (SFTConfig's
default) resolves to ragged where cudnn-frontend and an sm90+ GPU are there, else to hybrid.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

ATTN_NAME = "factory_varlen"
CUDA_KERNELS = ("hybrid", "flash", "cudnn", "ragged")


@dataclass
class KernelSettings:
    """What factory_varlen runs on CUDA in this process: SFTConfig's attention_kernel, cudnn_min_len, cudnn_bucket."""

    kernel: str = "hybrid"
    cudnn_min_len: int = 2048  # hybrid: samples at least this long go through cuDNN
    cudnn_bucket: int = 256  # cuDNN lengths are padded to a multiple of this: one execution plan per bucket


ACTIVE = KernelSettings()  # set in place by set_cuda_kernel; nothing is read from the environment
_FLASH_KW = None
_CUDNN_GQA: bool | None = None  # whether cuDNN takes grouped K/V heads natively (else K/V are expanded)
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


def _cudnn_one(q, k, v, scale):
    """Causal attention of one sample, [s, H, D] in and out, through SDPA's cuDNN backend. The length is padded
    up to a multiple of `ACTIVE.cudnn_bucket`: cuDNN builds an execution plan per shape, and every new length costs
    a plan build (measured: unpadded, real packed training ran 14% slower than flash varlen despite faster kernels)."""
    length, bucket = q.shape[0], ACTIVE.cudnn_bucket
    padded = -(-length // bucket) * bucket
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


def set_cuda_kernel(name: str, device: torch.device | None = None, *,
                    cudnn_min_len: int = KernelSettings.cudnn_min_len,
                    cudnn_bucket: int = KernelSettings.cudnn_bucket) -> str:
    """Choose the CUDA kernel of factory_varlen for this process (one of CUDA_KERNELS, or "auto") and the cuDNN
    length knobs; returns the kernel."""
    from factory.train import cudnn_ragged

    if name == "auto":
        name = "ragged" if cudnn_ragged.available(device) else "hybrid"
    if name not in CUDA_KERNELS:
        raise ValueError(f"attention kernel {name!r}: expected auto or one of {', '.join(CUDA_KERNELS)}")
    if name == "ragged" and torch.cuda.is_available() and not cudnn_ragged.available(device):
        raise ValueError("attention kernel 'ragged' needs the nvidia-cudnn-frontend package and a GPU of "
                         "compute capability 9.0+ (pip install nvidia-cudnn-frontend)")
    ACTIVE.kernel, ACTIVE.cudnn_min_len, ACTIVE.cudnn_bucket = name, cudnn_min_len, cudnn_bucket
    return name


def warm_cudnn_plans(config, max_length: int, device: torch.device, capacity: int | None = None) -> float:
    """Build cuDNN's attention plans (forward and backward) for every length bucket that training can meet, before
    the first step; returns the seconds spent. A plan build costs 0.1-1.7 s per new shape on an H100; met in the
    middle of training it stalls that step instead. `capacity`: tokens per packed row (default `max_length`).
    No-op for the flash kernel or off CUDA."""
    kernel, bucket = ACTIVE.kernel, ACTIVE.cudnn_bucket
    if kernel == "flash" or device.type != "cuda":
        return 0.0
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    if kernel == "ragged":
        from factory.train import cudnn_ragged

        started = time.perf_counter()
        cudnn_ragged.warm_plans(heads, kv, dim, dim ** -0.5, capacity or max_length, device)
        return time.perf_counter() - started
    first = ACTIVE.cudnn_min_len if kernel == "hybrid" else 1
    started = time.perf_counter()
    for length in range(-(-first // bucket) * bucket, max_length + bucket, bucket):
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
        kernel = ACTIVE.kernel
        if kernel == "flash":
            out = _flash_varlen(q.contiguous(), k.contiguous(), v.contiguous(), cu.to(q.device), int(max_len),
                                scaling)
        elif kernel == "ragged" and q.dtype == torch.bfloat16:  # its graphs are bf16; fp16 runs hybrid
            from factory.train.cudnn_ragged import ragged_attention

            cu = cu.to(q.device)
            out = ragged_attention(q.contiguous(), k.contiguous(), v.contiguous(), cu, _host_bounds(cu),
                                   scaling if scaling is not None else q.shape[-1] ** -0.5)
        else:
            out = _hybrid_varlen(q.contiguous(), k.contiguous(), v.contiguous(), cu.to(q.device), scaling,
                                 0 if kernel == "cudnn" else ACTIVE.cudnn_min_len)
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


__all__ = ["ACTIVE", "ATTN_NAME", "CUDA_KERNELS", "KernelSettings", "register_varlen_attention",
           "remember_bounds", "set_cuda_kernel", "varlen_attention_forward", "warm_cudnn_plans"]
