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

_FP32_GEMM = [True]  # cleared if this torch's CUDA mm lacks out_dtype (then: bf16 GEMM, fp32 add)
GROUP_PROJECTIONS = [True]  # q/k/v and gate/up: one backward per group (projection_groups.py); off: per Linear


def _fold_matmul(master: torch.nn.Parameter, a: torch.Tensor, b: torch.Tensor) -> None:
    """master.grad (fp32) += a @ b, a and b bf16. On CUDA the GEMM accumulates into the fp32 gradient itself;
    elsewhere it rounds to bf16 first, exactly like autograd's own weight gradient followed by a hook's add."""
    if a.is_cuda and _FP32_GEMM[0]:
        try:
            if master.grad is None:
                master.grad = torch.mm(a, b, out_dtype=torch.float32)
            else:
                torch.addmm(master.grad, a, b, out_dtype=torch.float32, out=master.grad)
            return
        except (RuntimeError, TypeError):
            _FP32_GEMM[0] = False
    _add_grad(master, a.mm(b))


def _fold_sum(master: torch.nn.Parameter, g: torch.Tensor) -> None:
    """master.grad += g.sum(0): summed in fp32 on CUDA, in g's dtype elsewhere (autograd's bias gradient)."""
    _add_grad(master, g.sum(0, dtype=torch.float32) if g.is_cuda else g.sum(0))


def _add_grad(master: torch.nn.Parameter, grad: torch.Tensor) -> None:
    """master.grad += grad, in the master's dtype (the first gradient of a step is cast, not added to zeros)."""
    if master.grad is None:
        master.grad = grad.to(master.dtype)
    else:
        master.grad.add_(grad)


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
        _fold_matmul(master_weight, g.t(), x.reshape(-1, x.shape[-1]))
        if master_bias is not None:
            _fold_sum(master_bias, g)
        return grad_x, None, None, None, None


def _folded_forward(master: torch.nn.Linear):
    def forward(self, x):
        return _FoldedLinear.apply(x, self.weight, self.bias, master.weight,
                                   master.bias if self.bias is not None else None)
    return forward


class BF16ComputeCopy:
    """A bf16 copy of `master` (an fp32 module) whose gradients accumulate into the master's `.grad` in fp32."""

    def __init__(self, master: torch.nn.Module, dtype: torch.dtype = torch.bfloat16):
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
        self.groups = []
        if GROUP_PROJECTIONS[0]:
            from factory.train.projection_groups import group_projections

            self.groups = group_projections(master, self.module)
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
            _add_grad(master, param.grad)
            param.grad = None  # the bf16 gradient is freed as soon as it is folded in
        return accumulate

    @torch.no_grad()
    def refresh(self) -> None:
        """Copy the (updated) master weights into the bf16 copy: once per optimizer step and after a resume."""
        if self._pairs:
            torch._foreach_copy_([c for _, c in self._pairs], [m for m, _ in self._pairs])
