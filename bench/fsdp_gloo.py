"""FSDP2 sharded checkpoint save/resume on the CPU: 2 processes, gloo, a tiny Qwen2 student.

    torchrun --nproc_per_node 2 bench/fsdp_gloo.py --out DIR

Each rank shards every decoder layer and the root with `fully_shard`, trains with the SFT trainer's own pieces
(token-balanced packed plan over 2 ranks, varlen attention, fused loss, loss normalised by the step's tokens) and
saves/loads through factory.train.checkpoint (torch.distributed.checkpoint, one shard file per rank):
  A. N steps uninterrupted;
  B. fresh model + optimizer, K steps, sharded checkpoint, then thrown away;
  C. fresh model + optimizer, load B's checkpoint, steps K+1..N.
Rank 0 gathers the full state dicts of A and C and prints one JSON line: max |A - C| over all parameters, the
losses of both runs, and the shard files written. The GPU run of the same question is issue 8's command.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from factory.train.attention import register_varlen_attention  # noqa: E402
from factory.train.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint  # noqa: E402
from factory.train.loss import install_fused_loss  # noqa: E402
from factory.train.packing import collate_packed, model_kwargs, plan_epoch  # noqa: E402


def samples(n: int, vocab: int):
    import numpy as np

    from factory.train.data import IGNORE_INDEX, TokenizedSample

    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        size = int(rng.integers(8, 60))
        ids = rng.integers(0, vocab, size).astype(np.int32)
        labels = ids.copy()
        labels[: int(rng.integers(2, 6))] = IGNORE_INDEX
        out.append(TokenizedSample(ids, labels))
    return out


def build(vocab: int):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from transformers import AutoModelForCausalLM

    from factory.train.testing import tiny_config

    torch.manual_seed(0)  # same initial weights on every rank
    model = AutoModelForCausalLM.from_config(tiny_config("qwen2", vocab, layers=2, hidden=32),
                                             attn_implementation=register_varlen_attention())
    install_fused_loss(model, "torch", chunk=64)
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, foreach=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / 8)))
    return model, optimizer, scheduler


def run(model, optimizer, scheduler, data, plan, start: int, stop: int) -> list[float]:
    rank, world = dist.get_rank(), dist.get_world_size()
    losses = []
    for step in range(start, stop):
        step_plan = plan[step]
        total = torch.zeros(())
        for micro in step_plan.micro_batches[rank]:
            out = model(**model_kwargs(collate_packed([data[i] for i in micro]), torch.device("cpu")))
            (out.loss * world / step_plan.trained_tokens).backward()
            total += out.loss.detach()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        dist.all_reduce(total)
        losses.append(round(float(total) / step_plan.trained_tokens, 6))
    return losses


def full_state(model) -> dict:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--stop", type=int, default=3)
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    vocab = 101
    data = samples(48, vocab)
    import numpy as np

    lengths = np.array([len(s) for s in data])
    trained = np.array([int((s.labels[1:] != -100).sum()) for s in data])
    plan = plan_epoch(lengths, trained, 0, seed=1, global_batch=8, world_size=world, micro_batch_tokens=128)
    out = Path(args.out)

    model, opt, sched = build(vocab)
    losses_a = run(model, opt, sched, data, plan, 0, args.steps)
    state_a = full_state(model)
    del model, opt, sched

    model, opt, sched = build(vocab)
    losses_b = run(model, opt, sched, data, plan, 0, args.stop)
    torch.manual_seed(1234 + rank)  # whatever happens after the save must not matter
    ckpt = save_checkpoint(out / "checkpoints", args.stop, model, opt, sched, {"fingerprint": "gloo"}, keep=1)
    del model, opt, sched

    model, opt, sched = build(vocab)
    state = load_checkpoint(list_checkpoints(out / "checkpoints")[-1], model, opt, sched)
    losses_c = run(model, opt, sched, data, plan, state["step"], args.steps)
    sharded = all(type(p).__name__ == "DTensor" for p in model.parameters())
    local = sum(p.to_local().numel() for p in model.parameters())
    state_c = full_state(model)
    if rank == 0:
        diff = max(float((state_a[k] - state_c[k]).abs().max()) for k in state_a)
        report = {"world": world, "max_abs_diff": diff, "losses_uninterrupted": losses_a,
                  "losses_resumed": losses_b + losses_c, "resumed_at": state["step"],
                  "shard_files": sorted(p.name for p in ckpt.iterdir()),
                  "params_sharded": sharded, "rank0_local_params": local,
                  "total_params": sum(v.numel() for v in state_c.values())}
        print(json.dumps(report), flush=True)
        (out / "fsdp_gloo.json").write_text(json.dumps(report))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
