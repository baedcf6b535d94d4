"""Padding-free packing: the plan of optimizer steps and the packed rows (micro-batches) they are made of.

A micro-batch is one row `[1, T]` of concatenated samples with position ids restarting at 0 for each sample and
cumulative sequence lengths `cu_seq_lens` (int32, `[n_samples + 1]`), which the attention function `factory_varlen`
(attention.py) reads to keep samples apart. Labels are shifted per sample before concatenation (`targets[i]` = the
token after `i` in the same sample), so no sample is ever trained to predict the next sample's first token.

The order of samples is a pure function of (seed, epoch): a resumed run replays exactly the same steps.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from factory.train.attention import remember_bounds
from factory.train.data import IGNORE_INDEX, TokenizedSample

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


__all__ = ["StepPlan", "collate_packed", "model_kwargs", "pack_first_fit", "plan_epoch", "shifted_targets"]
