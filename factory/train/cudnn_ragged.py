"""Packed causal attention in one cuDNN call per layer: cuDNN's fused SDPA on ragged (THD) tensors.

A packed row `[T, H, D]` holds many samples back to back. cuDNN's SDPA graph takes such a row directly: a batch of
`B` sequence slots, each slot's start given by a ragged offset and its length by a padding-mask length, causal
within each slot. One call covers every sample of the row, on cuDNN's Hopper kernels (the kernels behind
`attention_kernel: cudnn`), with neither the per-sample calls nor the bucket padding and concatenation of the
`hybrid` kernel. The graph is built through NVIDIA's `cudnn-frontend` Python package (`pip install
nvidia-cudnn-frontend`; optional, CUDA sm90+ only): PyTorch's own varlen entry into cuDNN
(`aten._cudnn_attention_forward` with cu_seqlens) took 150 ms per call and gave wrong gradients in torch 2.11.

cuDNN builds an execution plan per graph shape, so the shape is bucketed: slots and the longest sample are rounded
up to powers of two (unused slots have length 0, start at the row's end and are skipped by the kernels); the row
length that sizes the backward's fp32 dQ accumulator is the run's micro-batch capacity (`set_capacity`). A run of
R1-like packed rows meets a few dozen shapes; `warm_plans` builds them before the first step.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch

MIN_MAX_LEN = 512  # the longest-sample bucket never goes below this
_CAPACITY = [0]  # tokens of the largest row of this run (set_capacity); 0: rows sized one by one
_HANDLES: dict[int, int] = {}
_PLANS: dict[tuple, "_Plans"] = {}
_META: dict[int, tuple[tuple[int, ...], tuple, "RaggedMeta"]] = {}


def _index(device: torch.device | None) -> int:
    return device.index if device is not None and device.index is not None else torch.cuda.current_device()


def available(device: torch.device | None = None) -> bool:
    """cudnn-frontend importable, and a CUDA device of compute capability 9.0+ (ragged SDPA needs Hopper)."""
    if not torch.cuda.is_available() or importlib.util.find_spec("cudnn") is None:
        return False
    return torch.cuda.get_device_capability(_index(device))[0] >= 9


def _pow2(n: int, floor: int = 1) -> int:
    return max(floor, 1 << max(0, int(n) - 1).bit_length())


@dataclass(frozen=True)
class RaggedShape:
    """The graph shape a packed row runs under (slots and longest-sample bucket are powers of two)."""

    slots: int  # sequence slots: >= the row's samples
    max_len: int  # >= its longest sample
    total: int  # >= its tokens: the run's capacity (a multiple of 64), or a power of two past it


def set_capacity(tokens: int) -> None:
    """Rows of this run hold at most `tokens` tokens (the micro-batch size): one dQ accumulator size for all."""
    _CAPACITY[0] = int(tokens)


def ragged_shape(bounds: list[int]) -> RaggedShape:
    """Bucketed graph shape of a row with cumulative sample bounds `bounds` ([0, ..., T])."""
    longest = max(b - a for a, b in zip(bounds[:-1], bounds[1:]))
    total = bounds[-1]
    total = -(-_CAPACITY[0] // 64) * 64 if total <= _CAPACITY[0] else _pow2(total, MIN_MAX_LEN)
    return RaggedShape(_pow2(len(bounds) - 1), _pow2(longest, MIN_MAX_LEN), total)


def ragged_offsets(bounds: list[int], slots: int, heads: int, kv_heads: int, dim: int) -> torch.Tensor:
    """Host int64 `[3, slots + 1]`: per slot the sequence length, the element offset of its first query row
    (`start * heads * dim`) and of its first key/value row; the slots past the real samples are empty and start
    at the row's end."""
    n = len(bounds) - 1
    if n > slots:
        raise ValueError(f"{n} samples do not fit {slots} slots")
    starts = torch.tensor(bounds + [bounds[-1]] * (slots - n), dtype=torch.int64)
    table = torch.zeros(3, slots + 1, dtype=torch.int64)
    table[0, :slots] = starts[1:] - starts[:-1]
    table[1] = starts * (heads * dim)
    table[2] = starts * (kv_heads * dim)
    return table


@dataclass
class RaggedMeta:
    """Device tensors of one row, shared by every layer's forward and backward."""

    shape: RaggedShape
    seq_len: torch.Tensor  # int32 [slots, 1, 1, 1]
    q_offsets: torch.Tensor  # int64 [slots + 1, 1, 1, 1]
    kv_offsets: torch.Tensor  # int64 [slots + 1, 1, 1, 1]


def row_meta(cu: torch.Tensor, bounds: list[int], heads: int, kv_heads: int, dim: int) -> RaggedMeta:
    """The row's shape and offsets on the device: one host-to-device copy per row (cached on `cu`), not per
    layer."""
    key = (heads, kv_heads, dim)
    cached = _META.get(cu.data_ptr())
    if cached is not None and cached[0] == tuple(bounds) and cached[1] == key:
        return cached[2]
    shape = ragged_shape(bounds)
    table = ragged_offsets(bounds, shape.slots, heads, kv_heads, dim).pin_memory()
    table = table.to(cu.device, non_blocking=True)
    meta = RaggedMeta(shape, table[0, :shape.slots].to(torch.int32).view(-1, 1, 1, 1),
                      table[1].view(-1, 1, 1, 1), table[2].view(-1, 1, 1, 1))
    if len(_META) > 8:
        _META.clear()
    _META[cu.data_ptr()] = (tuple(bounds), key, meta)
    return meta


# ----------------------------------------------------------------------------------------------- graphs

def _handle(device: torch.device) -> int:
    """This device's cuDNN handle, bound to the current CUDA stream (autograd may run backward on another)."""
    import cudnn

    index = _index(device)
    if index not in _HANDLES:
        with torch.cuda.device(index):
            _HANDLES[index] = cudnn.create_handle()
    handle = _HANDLES[index]
    cudnn.set_stream(handle=handle, stream=torch.cuda.current_stream(index).cuda_stream)
    return handle


class _Plans:
    """The forward and backward graphs of one (shape, heads, kv heads, dim, scale, device)."""

    def __init__(self, shape: RaggedShape, heads: int, kv_heads: int, dim: int, scale: float,
                 device: torch.device):
        import cudnn

        self.handle = _handle(device)
        b, s = shape.slots, shape.max_len
        bf16, f32 = cudnn.data_type.BFLOAT16, cudnn.data_type.FLOAT

        def graph():
            return cudnn.pygraph(io_data_type=bf16, intermediate_data_type=f32, compute_data_type=f32,
                                 handle=self.handle)

        def tensors(g, names):
            made = {"seq": g.tensor(name="seq", dim=[b, 1, 1, 1], stride=[1, 1, 1, 1],
                                    data_type=cudnn.data_type.INT32),
                    "q_off": g.tensor(name="q_off", dim=[b + 1, 1, 1, 1], stride=[1, 1, 1, 1],
                                      data_type=cudnn.data_type.INT64),
                    "kv_off": g.tensor(name="kv_off", dim=[b + 1, 1, 1, 1], stride=[1, 1, 1, 1],
                                       data_type=cudnn.data_type.INT64)}
            for name in names:
                h = kv_heads if name in ("k", "v") else heads
                made[name] = g.tensor(name=name, dim=[b, h, s, dim], stride=[s * h * dim, dim, h * dim, 1],
                                      data_type=bf16)
                made[name].set_ragged_offset(made["kv_off" if name in ("k", "v") else "q_off"])
            return made

        def finish(g):
            g.validate()
            g.build_operation_graph()
            g.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
            g.check_support()
            g.build_plans()
            return g.get_workspace_size()

        fwd = graph()
        t = tensors(fwd, ("q", "k", "v"))
        o, stats = fwd.sdpa(name="sdpa", q=t["q"], k=t["k"], v=t["v"], is_inference=False, attn_scale=scale,
                            use_padding_mask=True, seq_len_q=t["seq"], seq_len_kv=t["seq"],
                            use_causal_mask=True)
        o.set_output(True).set_dim([b, heads, s, dim]).set_stride([s * heads * dim, dim, heads * dim, 1])
        o.set_ragged_offset(t["q_off"]).set_data_type(bf16)
        stats.set_output(True).set_data_type(f32)
        t["o"], t["stats"] = o, stats
        self.fwd, self.fwd_t, self.fwd_ws = fwd, t, finish(fwd)

        bwd = graph()
        t = tensors(bwd, ("q", "k", "v", "o", "do"))
        t["stats"] = bwd.tensor(name="stats", dim=[b, heads, s, 1], stride=[heads * s, s, 1, 1], data_type=f32)
        dq, dk, dv = bwd.sdpa_backward(name="sdpa_backward", q=t["q"], k=t["k"], v=t["v"], o=t["o"], dO=t["do"],
                                       stats=t["stats"], attn_scale=scale, use_padding_mask=True,
                                       seq_len_q=t["seq"], seq_len_kv=t["seq"], use_causal_mask=True,
                                       max_total_seq_len_q=shape.total, max_total_seq_len_kv=shape.total)
        for name, grad in (("dq", dq), ("dk", dk), ("dv", dv)):
            h = kv_heads if name != "dq" else heads
            grad.set_output(True).set_dim([b, h, s, dim]).set_stride([s * h * dim, dim, h * dim, 1])
            grad.set_ragged_offset(t["q_off" if name == "dq" else "kv_off"]).set_data_type(bf16)
            t[name] = grad
        self.bwd, self.bwd_t, self.bwd_ws = bwd, t, finish(bwd)

    def _run(self, graph, named, buffers: dict, workspace: int, device) -> None:
        ws = torch.empty(max(1, workspace), dtype=torch.uint8, device=device)
        graph.execute({named[k]: v for k, v in buffers.items()}, ws, handle=_handle(device))

    def forward(self, q, k, v, meta: RaggedMeta):
        s, b = meta.shape.max_len, meta.shape.slots
        o = torch.empty_like(q)
        stats = torch.empty(b, q.shape[1], s, 1, dtype=torch.float32, device=q.device)
        self._run(self.fwd, self.fwd_t, {"q": q, "k": k, "v": v, "o": o, "stats": stats, "seq": meta.seq_len,
                                         "q_off": meta.q_offsets, "kv_off": meta.kv_offsets}, self.fwd_ws, q.device)
        return o, stats

    def backward(self, q, k, v, o, stats, do, meta: RaggedMeta):
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        self._run(self.bwd, self.bwd_t, {"q": q, "k": k, "v": v, "o": o, "do": do, "stats": stats, "dq": dq,
                                         "dk": dk, "dv": dv, "seq": meta.seq_len, "q_off": meta.q_offsets,
                                         "kv_off": meta.kv_offsets}, self.bwd_ws, q.device)
        return dq, dk, dv


def plans(shape: RaggedShape, heads: int, kv_heads: int, dim: int, scale: float, device: torch.device) -> _Plans:
    key = (shape, heads, kv_heads, dim, float(scale), _index(device))  # "cuda" and "cuda:0": one plan
    if key not in _PLANS:
        _PLANS[key] = _Plans(shape, heads, kv_heads, dim, float(scale), device)
    return _PLANS[key]


class _RaggedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, meta: RaggedMeta, scale: float):
        plan = plans(meta.shape, q.shape[1], k.shape[1], q.shape[2], scale, q.device)
        o, stats = plan.forward(q, k, v, meta)
        ctx.save_for_backward(q, k, v, o, stats)
        ctx.plan, ctx.meta = plan, meta
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, stats = ctx.saved_tensors
        dq, dk, dv = ctx.plan.backward(q, k, v, o, stats, do.contiguous(), ctx.meta)
        return dq, dk, dv, None, None


def ragged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, bounds: list[int],
                     scale: float) -> torch.Tensor:
    """Causal attention within each sample of a packed row: q `[T, H, D]`, k/v `[T, H_kv, D]` (contiguous,
    bf16, CUDA), `cu` the row's int32 cumulative bounds on the device and `bounds` the same on the host."""
    meta = row_meta(cu, bounds, q.shape[1], k.shape[1], q.shape[2])
    return _RaggedAttention.apply(q, k, v, meta, scale)


def warm_shapes(capacity: int, max_slots: int = 64) -> list[RaggedShape]:
    """The shapes rows of at most `capacity` tokens take: longest sample from MIN_MAX_LEN up to `capacity`, up to
    `max_slots` samples (a longest-sample bucket of m and a slot bucket of n need more than m/2 + n/2 tokens)."""
    total = -(-capacity // 64) * 64
    shapes, max_len = [], MIN_MAX_LEN
    while max_len < 2 * capacity:
        slots = 1
        while slots <= max_slots and (slots == 1 or max_len // 2 + slots // 2 <= capacity):
            shapes.append(RaggedShape(slots, max_len, total))
            slots *= 2
        max_len *= 2
    return shapes


def warm_plans(heads: int, kv_heads: int, dim: int, scale: float, capacity: int, device: torch.device,
               max_slots: int = 64) -> int:
    """Build, before training, the plans of `warm_shapes(capacity, max_slots)` (forward and backward, 0.1-0.2 s
    each on an H100); returns how many. Shapes outside it are built when first met."""
    set_capacity(capacity)
    shapes = warm_shapes(capacity, max_slots)
    for shape in shapes:
        plans(shape, heads, kv_heads, dim, scale, device)
    return len(shapes)
