"""Full fine-tuning on one device: fp32 master weights, a bf16 copy of the model for compute.

This is the numerics of FSDP2's `MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)` (and of Megatron's
fp32 `main_grad`) without FSDP: forward and backward run on bf16 weights, each bf16 gradient is added into the
fp32 master gradient as soon as backward produces it (then freed), the optimizer steps the fp32 master, and the
bf16 copy is refreshed once per optimizer step. Checkpoints, clipping, the scheduler and export keep working on
the fp32 master model unchanged.

Why own code: on one GPU, FSDP2 re-casts and copies every layer's weights in every micro-batch's forward and
backward (~15% of step time for Qwen2.5-1.5B on an H100, bench/sft.py profile) and autocast re-casts every weight
at every matmul; here the cast happens once per optimizer step (bench/sft.py `full_1p5b_copy` vs `full_1p5b_fsdp`).
"""
from __future__ import annotations

import copy

import torch


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
        self._handles = [c.register_post_accumulate_grad_hook(self._hook(m)) for m, c in self._pairs]

    @staticmethod
    def _hook(master: torch.nn.Parameter):
        def accumulate(param: torch.Tensor) -> None:
            grad = param.grad
            if master.grad is None:
                master.grad = grad.to(master.dtype)
            else:
                master.grad.add_(grad)
            param.grad = None  # the bf16 gradient is freed as soon as it is folded in
        return accumulate

    @torch.no_grad()
    def refresh(self) -> None:
        """Copy the (updated) master weights into the bf16 copy: once per optimizer step and after a resume."""
        if self._pairs:
            torch._foreach_copy_([c for _, c in self._pairs], [m for m, _ in self._pairs])

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
