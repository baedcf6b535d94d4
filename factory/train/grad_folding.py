"""Folding bf16 compute gradients into fp32 master gradients: the helpers that the compute copy's Linear layers
(compute_copy.py) and the grouped projections (projection_groups.py) share.

On CUDA a weight-gradient GEMM accumulates in fp32 straight into the master gradient (cuBLAS with an fp32 output
and beta = 1); elsewhere, or where this torch's mm lacks `out_dtype`, the GEMM rounds to bf16 first and the result
is added, exactly like autograd's own weight gradient followed by a hook's add.
"""
from __future__ import annotations

import torch

FP32_GEMM = [True]  # cleared if this torch's CUDA mm lacks out_dtype (then: bf16 GEMM, fp32 add)


def add_grad(master: torch.nn.Parameter, grad: torch.Tensor) -> None:
    """master.grad += grad, in the master's dtype (the first gradient of a step is cast, not added to zeros)."""
    if master.grad is None:
        master.grad = grad.to(master.dtype)
    else:
        master.grad.add_(grad)


def addmm_fp32(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> bool:
    """out (fp32) += a @ b with the GEMM accumulating in fp32 itself (CUDA); False where that is not available."""
    if not (a.is_cuda and FP32_GEMM[0]):
        return False
    try:
        torch.addmm(out, a, b, out_dtype=torch.float32, out=out)
        return True
    except (RuntimeError, TypeError):
        FP32_GEMM[0] = False
        return False


def fold_matmul(master: torch.nn.Parameter, a: torch.Tensor, b: torch.Tensor) -> None:
    """master.grad (fp32) += a @ b, a and b bf16. On CUDA the GEMM accumulates into the fp32 gradient itself;
    elsewhere it rounds to bf16 first, exactly like autograd's own weight gradient followed by a hook's add."""
    if a.is_cuda and FP32_GEMM[0]:
        try:
            if master.grad is None:
                master.grad = torch.mm(a, b, out_dtype=torch.float32)
            else:
                torch.addmm(master.grad, a, b, out_dtype=torch.float32, out=master.grad)
            return
        except (RuntimeError, TypeError):
            FP32_GEMM[0] = False
    add_grad(master, a.mm(b))


def fold_sum(master: torch.nn.Parameter, g: torch.Tensor) -> None:
    """master.grad += g.sum(0): summed in fp32 on CUDA, in g's dtype elsewhere (autograd's bias gradient)."""
    add_grad(master, g.sum(0, dtype=torch.float32) if g.is_cuda else g.sum(0))
