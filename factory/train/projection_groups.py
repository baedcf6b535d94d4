"""Projections that read the same input (q/k/v of attention, gate/up of a gated MLP): one backward per group.

Under plain autograd each Linear's backward runs alone: three data-gradient GEMMs for q/k/v whose results two
full-size add kernels then sum, and k/v weight-gradient GEMMs only 256 rows wide for Qwen2.5-1.5B (half the GEMM
rate of the q projection). Here the members of a group still run their forward GEMMs one by one (same outputs,
bit for bit), but as one autograd node, so the backward sees all output gradients at once:
- narrow groups (q/k/v: output widths summed <= 2x the input width): the output gradients are concatenated, one
  data-gradient GEMM over the members' stacked bf16 weights (one buffer; the members' weights are views of it) and
  one weight-gradient GEMM accumulating in fp32 into one buffer whose row blocks are the masters' `.grad`, one
  column sum for the biases (three k/v/q bias sums cost 90 us per layer, as much as their GEMMs);
- wide groups (gate/up): each member's data gradient accumulates into the previous one inside the GEMM (addmm,
  beta = 1: no add kernel), weight gradients per member as in compute_copy's `_FoldedLinear`.
H100, one 16k-token row, Qwen2.5-1.5B (bench/sft.py `gemm`): q/k/v backward 0.46 ms -> 0.32 ms; 7B 1.67 -> 1.47.
Concatenating gate/up instead costs more than it saves (2.45 -> 2.99 ms): their gradients are 8960 wide. Full
fine-tuning of the 1.5B shape, steady-state steps: 0.7% and 1.5% faster in two runs (bench/results/README.md).

The siblings find each other through the input tensor: the first member called with `x` runs the group's node
and keeps the other members' outputs until they ask for them with the same `x`. A member called with another
input (a model that feeds them differently) gets a node of its own; an output nobody uses gets a zero gradient.
"""
from __future__ import annotations

import types

import torch
import torch.nn.functional as F

from factory.train.grad_folding import add_grad, addmm_fp32, fold_matmul, fold_sum

GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


class ProjectionGroup:
    """Members (Linear layers of the bf16 compute copy) reading one input, and their fp32 master layers."""

    def __init__(self, copies: list[torch.nn.Linear], masters: list[torch.nn.Linear], name: str):
        self.name = name
        self.copies, self.masters = copies, masters
        self.widths = [c.out_features for c in copies]
        self.narrow = sum(self.widths) <= 2 * copies[0].in_features
        self.weight = None
        if self.narrow:  # one bf16 buffer; refresh() writes the members' weights through their views
            self.weight = torch.cat([c.weight.data for c in copies])
            for c, view in zip(copies, self.weight.split(self.widths)):
                c.weight.data = view
        self._grad: torch.Tensor | None = None  # fp32 buffer whose row blocks are the masters' .grad
        self._pending: tuple | None = None  # (input, outputs, members not yet served) of the last group call
        for index, c in enumerate(copies):
            c.forward = types.MethodType(self._member_forward(index), c)

    def _member_forward(self, index: int):
        def forward(module, x):
            pending = self._pending
            if pending is not None and pending[0] is x and index in pending[2]:
                pending[2].discard(index)
                if not pending[2]:
                    self._pending = None
                return pending[1][index]
            outputs = _GroupedLinear.apply(x, self, *(c.weight for c in self.copies))
            self._pending = (x, outputs, set(range(len(self.copies))) - {index})
            return outputs[index]
        return forward

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(F.linear(x, c.weight, c.bias) for c in self.copies)

    def backward(self, x: torch.Tensor, grads: list[torch.Tensor], need_x: bool) -> torch.Tensor | None:
        """Data gradient of the shared input (2-D), weight and bias gradients folded into the masters."""
        grad_x = None
        if self.narrow:
            g = torch.cat(grads, dim=1)
            if need_x:
                grad_x = g.mm(self.weight)
            self._fold_stacked(g, x)
            if any(m.bias is not None for m in self.masters):  # one column sum, not one per member
                sums = g.sum(0, dtype=torch.float32) if g.is_cuda else g.sum(0)
                for part, m in zip(sums.split(self.widths), self.masters):
                    if m.bias is not None:
                        add_grad(m.bias, part)
            return grad_x
        if need_x:
            grad_x = grads[0].mm(self.copies[0].weight)
            for g, c in zip(grads[1:], self.copies[1:]):
                grad_x.addmm_(g, c.weight)
        for g, m in zip(grads, self.masters):
            fold_matmul(m.weight, g.t(), x)
            if m.bias is not None:
                fold_sum(m.bias, g)
        return grad_x

    def _fold_stacked(self, g: torch.Tensor, x: torch.Tensor) -> None:
        """masters' weight grads += g.T @ x as one GEMM into one buffer whose row blocks are their `.grad`: on CUDA
        the GEMM accumulates in fp32 itself, elsewhere it rounds to the compute dtype first (like `fold_matmul`)."""
        weights = [m.weight for m in self.masters]
        if self._grad is None:
            self._grad = torch.empty(sum(self.widths), x.shape[1], dtype=weights[0].dtype, device=weights[0].device)
        views = self._grad.split(self.widths)
        if all(w.grad is None for w in weights):  # the step's first micro-batch: the buffer starts from zero
            self._grad.zero_()
            for w, view in zip(weights, views):
                w.grad = view
        elif not all(w.grad is not None and w.grad.data_ptr() == v.data_ptr() for w, v in zip(weights, views)):
            for part, w in zip(g.split(self.widths, dim=1), weights):  # gradients replaced by someone else
                fold_matmul(w, part.t(), x)
            return
        if not addmm_fp32(self._grad, g.t(), x):
            self._grad.add_(g.t().mm(x))


class _GroupedLinear(torch.autograd.Function):
    """The members' forward GEMMs as one autograd node; its backward is the group's."""

    @staticmethod
    def forward(ctx, x, group: ProjectionGroup, *weights):  # weights: inputs so that autograd records the node
        ctx.save_for_backward(x)
        ctx.group = group
        return group.forward(x)

    @staticmethod
    def backward(ctx, *grads):
        (x,) = ctx.saved_tensors
        flat = [g.reshape(-1, g.shape[-1]) for g in grads]
        grad_x = ctx.group.backward(x.reshape(-1, x.shape[-1]), flat, ctx.needs_input_grad[0])
        return (grad_x.view(x.shape) if grad_x is not None else None), None, *(None for _ in ctx.group.copies)


def group_projections(master: torch.nn.Module, copy: torch.nn.Module) -> list[ProjectionGroup]:
    """Group the Linear children of `copy` named as in GROUPS (same input width, trainable masters)."""
    groups = []
    for (name, m_parent), c_parent in zip(master.named_modules(), copy.modules()):
        for names in GROUPS:
            copies = [getattr(c_parent, n, None) for n in names]
            masters = [getattr(m_parent, n, None) for n in names]
            if not all(type(c) is torch.nn.Linear for c in copies):
                continue
            if len({c.in_features for c in copies}) != 1 or not all(m.weight.requires_grad for m in masters):
                continue
            if any(m.bias is not None and not m.bias.requires_grad for m in masters):
                continue
            groups.append(ProjectionGroup(copies, masters, f"{name}.{'/'.join(names)}"))
    return groups
