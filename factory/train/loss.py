"""Summed cross-entropy of the LM head without materialising the logits of the whole row.

A 32k-token row of a 152k-vocabulary model has 5 G logits (10 GB in bf16, twice that in fp32 for the softmax):
more than the rest of the 1.5B model's activations. Two implementations of one function:
- `torch`: own code, here: chunk by chunk, logits -> log-softmax -> gradients of the hidden states and of the head
  are computed in the forward pass and kept (as Liger does), so no chunk's logits outlive its loop iteration and
  nothing is recomputed in backward. Runs anywhere (the CPU tests check it against plain cross-entropy).
- `liger`: Liger-Kernel's Triton fused linear cross-entropy (GPU, optional dependency), same contract.
The head is computed only at positions that have a target (assistant tokens), not at prompt tokens.
Returns the SUM over target tokens: the trainer divides by the step's total target tokens, so gradient
accumulation over micro-batches of unequal size weighs every token the same.
"""
from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from transformers.modeling_outputs import CausalLMOutputWithPast

from factory.train.data import IGNORE_INDEX


class _FusedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk):
        device_type = hidden.device.type
        dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else hidden.dtype
        need_h, need_w = hidden.requires_grad, weight.requires_grad
        need_b = bias is not None and bias.requires_grad
        grad_hidden = torch.empty_like(hidden) if need_h else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_bias = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if need_b else None
        w = weight.to(dtype)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        with torch.autocast(device_type, enabled=False):
            for start in range(0, hidden.shape[0], chunk):
                h = hidden[start:start + chunk].to(dtype)
                t = targets[start:start + chunk]
                logits = (h @ w.t()).float()
                if bias is not None:
                    logits += bias.float()
                lse = torch.logsumexp(logits, dim=-1)
                rows = torch.arange(t.shape[0], device=t.device)
                total += (lse - logits[rows, t]).sum()
                if need_h or need_w or need_b:
                    probs = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
                    probs[rows, t] -= 1.0  # d(sum of CE)/d(logits)
                    g = probs.to(dtype)
                    if need_h:
                        grad_hidden[start:start + chunk] = (g @ w).to(hidden.dtype)
                    if need_w:
                        grad_weight += (g.t() @ h).float()
                    if need_b:
                        grad_bias += probs.sum(0)
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        w_dtype, b_dtype = ctx.dtypes
        gh = grad_hidden * grad_out if grad_hidden is not None else None
        gw = (grad_weight * grad_out).to(w_dtype) if grad_weight is not None else None
        gb = (grad_bias * grad_out).to(b_dtype) if grad_bias is not None else None
        return gh, gw, gb, None, None


def fused_linear_cross_entropy(hidden: torch.Tensor, lm_head: torch.nn.Linear, targets: torch.Tensor,
                               impl: str = "torch", chunk: int = 4096,
                               index: torch.Tensor | None = None) -> torch.Tensor:
    """Sum of token cross-entropies of `lm_head(hidden)` against `targets` (IGNORE_INDEX skipped). `index`: the
    flat positions whose target is not IGNORE_INDEX, if known (then nothing waits for the GPU to find them)."""
    flat_h = hidden.reshape(-1, hidden.shape[-1])
    flat_t = targets.reshape(-1)
    if index is None:
        keep = flat_t != IGNORE_INDEX
        h, t = flat_h[keep], flat_t[keep]
    else:
        h, t = flat_h.index_select(0, index), flat_t.index_select(0, index)
    if t.numel() == 0:  # a dummy micro-batch: zero loss that still touches the graph
        return flat_h.sum() * 0.0 + lm_head.weight.sum() * 0.0
    if impl == "liger":
        return _liger_sum(h, lm_head, t, chunk)
    return _FusedLinearCrossEntropy.apply(h, lm_head.weight, lm_head.bias, t, chunk)


def _liger_sum(h: torch.Tensor, lm_head: torch.nn.Linear, t: torch.Tensor, chunk: int) -> torch.Tensor:
    """Liger's fused linear cross-entropy with `chunk`-token chunks and an fp32 weight-gradient accumulator.

    Liger's default sizes chunks so the logits never exceed the hidden states (256 tokens for a 152k vocabulary
    and hidden size 1536): matmuls that thin run at ~55% of the GEMM rate and a bf16 head's gradient is summed
    in bf16 over 64 chunks. Its `chunk_mem_const` sets the chunk (here ~`chunk` tokens: 2.5 GB of bf16 logits
    at 8192) and `accum_dtype` the accumulator. H100, 16k tokens fwd+bwd: 40 ms vs 64 ms with Liger's own
    chunks (bench/sft.py `check`: ce_liger8192_ms vs ce_liger_default_ms)."""
    import inspect

    from liger_kernel.ops.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyFunction as Fn

    if "chunk_mem_const" not in inspect.signature(Fn.forward).parameters:  # older Liger: its default chunks
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        out = LigerFusedLinearCrossEntropyLoss(reduction="sum")(lm_head.weight, h, t, lm_head.bias)
        return out if isinstance(out, torch.Tensor) else out[0]
    vocab, hidden = lm_head.weight.shape
    pieces = max(1, -(-t.numel() // chunk))
    mem_const = max(1, -(-vocab // (hidden * pieces)))
    out = Fn.apply(h, lm_head.weight, t, lm_head.bias, None, IGNORE_INDEX, 0.0, 0.0, "sum", None, False,
                   torch.float32, False, False, False, None, None, mem_const)
    return out if isinstance(out, torch.Tensor) else out[0]


def naive_cross_entropy(hidden: torch.Tensor, lm_head: torch.nn.Linear, targets: torch.Tensor) -> torch.Tensor:
    """The reference: full logits, F.cross_entropy(reduction='sum')."""
    logits = lm_head(hidden).float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX,
                           reduction="sum")


def install_fused_loss(model, impl: str = "torch", chunk: int = 4096) -> None:
    """Replace the causal LM's forward (on this instance) by decoder -> fused head+loss when `labels` are given.

    `labels` must already be shifted (packing.shifted_targets); `target_index` (packing.model_kwargs) lists the
    positions that have a target. Hooks on the module (FSDP2, peft) still run, since they wrap `__call__`, not
    `forward`."""
    decoder = getattr(model, model.base_model_prefix)
    head = model.get_output_embeddings()

    def forward(self, input_ids=None, labels=None, position_ids=None, attention_mask=None, target_index=None,
                **kwargs):
        kwargs = {k: v for k, v in kwargs.items() if v is not None and k not in ("use_cache", "return_dict")}
        out = decoder(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask,
                      use_cache=False, **kwargs)
        hidden = out.last_hidden_state
        if labels is None:
            return CausalLMOutputWithPast(logits=head(hidden))
        loss = fused_linear_cross_entropy(hidden, head, labels, impl, chunk, target_index)
        return CausalLMOutputWithPast(loss=loss)

    model.forward = types.MethodType(forward, model)
