"""Full fine-tuning on one device: fp32 master weights, a bf16 copy of the model for compute.

This is the numerics of FSDP2's `MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)` (and of Megatron's
fp32 `main_grad`) without FSDP: forward and backward run on bf16 weights, each bf16 gradient is added into the
fp32 master gradient as soon as backward produces it (then freed), the optimizer steps the fp32 master, and the
bf16 copy is refreshed once per optimizer step. Checkpoints, clipping, the scheduler and export keep working on
the fp32 master model unchanged. Linear layers (all but the LM head, which the fused loss handles) go further: their
weight-gradient GEMM accumulates in fp32 straight into the master gradient on CUDA (cuBLAS with an fp32 output and
beta = 1), so no bf16 weight gradient is written, read back and added (~2% of an H100 step for Qwen2.5-1.5B).
Projections that read the same input (q/k/v, gate/up) run their backward as one (projection_groups.py).

Why own code: on one GPU, FSDP2 re-casts and copies every layer's weights in every micro-batch's forward and
backward (~15% of step time for Qwen2.5-1.5B on an H100, bench/sft.py profile) and autocast re-casts every weight
at every matmul; here the cast happens once per optimizer step (bench/sft.py `full_1p5b_copy` vs `full_1p5b_fsdp`).
"""
from __future__ import annotations

import copy
import types

import torch
import torch.nn.functional as F

from factory.train import projection_groups
from factory.train.grad_folding import add_grad, fold_matmul, fold_sum


class _FoldedLinear(torch.autograd.Function):
    """F.linear on the bf16 copy whose weight and bias gradients go straight into the fp32 master gradients."""

    @staticmethod
    def forward(ctx, x, weight, bias, master_weight, master_bias):
        ctx.save_for_backward(x, weight)
        ctx.masters = (master_weight, master_bias)
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        master_weight, master_bias = ctx.masters
        g = grad_out.reshape(-1, grad_out.shape[-1])
        grad_x = g.mm(weight).view(*grad_out.shape[:-1], weight.shape[1]) if ctx.needs_input_grad[0] else None
        fold_matmul(master_weight, g.t(), x.reshape(-1, x.shape[-1]))
        if master_bias is not None:
            fold_sum(master_bias, g)
        return grad_x, None, None, None, None


def _folded_forward(master: torch.nn.Linear):
    def forward(self, x):
        return _FoldedLinear.apply(x, self.weight, self.bias, master.weight,
                                   master.bias if self.bias is not None else None)
    return forward


class BF16ComputeCopy:
    """A bf16 copy of `master` (an fp32 module) whose gradients accumulate into the master's `.grad` in fp32.
    `group_projections`: q/k/v and gate/up run one backward per group (projection_groups.py); off: per Linear."""

    def __init__(self, master: torch.nn.Module, dtype: torch.dtype = torch.bfloat16, group_projections: bool = True):
        self.module = copy.deepcopy(master)
        for param in self.module.parameters():  # parameters only: buffers (RoPE inv_freq) keep their fp32
            param.data = param.data.to(dtype)
        masters = list(master.parameters())
        copies = list(self.module.parameters())
        if len(masters) != len(copies):
            raise RuntimeError("compute copy: parameter lists of master and copy differ")
        self._pairs = [(m, c) for m, c in zip(masters, copies) if m.requires_grad]
        for m, c in zip(masters, copies):
            c.requires_grad_(m.requires_grad)
        folded: set[int] = set()  # parameters of Linear layers whose gradients the GEMM folds in itself
        self.groups = projection_groups.group_projections(master, self.module) if group_projections else []
        for group in self.groups:
            folded.update(id(p) for c in group.copies for p in c.parameters())
        head = self.module.get_output_embeddings() if hasattr(self.module, "get_output_embeddings") else None
        for m, c in zip(master.modules(), self.module.modules()):
            if type(c) is torch.nn.Linear and c is not head and m.weight.requires_grad and id(c.weight) not in folded:
                c.forward = types.MethodType(_folded_forward(m), c)
                folded.update(id(p) for p in c.parameters())
        self._handles = [c.register_post_accumulate_grad_hook(self._hook(m)) for m, c in self._pairs
                         if id(c) not in folded]

    @staticmethod
    def _hook(master: torch.nn.Parameter):
        def accumulate(param: torch.Tensor) -> None:
            add_grad(master, param.grad)
            param.grad = None  # the bf16 gradient is freed as soon as it is folded in
        return accumulate

    @torch.no_grad()
    def refresh(self) -> None:
        """Copy the (updated) master weights into the bf16 copy: once per optimizer step and after a resume."""
        if self._pairs:
            torch._foreach_copy_([c for _, c in self._pairs], [m for m, _ in self._pairs])
