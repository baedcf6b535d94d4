"""GPU benchmark of the SFT trainer against TRL's SFTTrainer with default (padded) settings, in one run.

Qwen2.5-1.5B / Qwen2.5-7B shapes with random bf16 weights, an R1-like length mix (log-uniform 1k-16k tokens, mean
~5.4k like the paper's 5,355), short prompts (64-512 tokens, not trained). Each case runs in its own process (clean
peak-memory figures); the first optimizer step is warm-up and not timed. MFU = model FLOPs (6N, 4N for LoRA's
frozen weights, + causal attention; no recompute counted) / time / dense bf16 peak (H100 SXM: 989 TFLOP/s).

    python bench/sft.py --out OUT [--cases trl_1p5b,full_1p5b,...]
    BENCH_STEPS=6 python bench/sft.py --out OUT --cases full_1p5b,full_1p5b_ungrouped   # A/B over more steps

Results and the exact commands run: bench/results/README.md. Multi-GPU (issue 8, on nvidia-h200-x2):
    NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 \
    python bench/sft.py --out OUT --timeout 420 \
      --cases check,full_1p5b,full_1p5b_fsdp,full_1p5b_fsdp_2gpu,full_7b_fsdp_1gpu,full_7b_fsdp_2gpu

prints a table, one summary line and the JSON (also written to OUT/sft_bench.json).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DRY = os.environ.get("BENCH_DRY") == "1"  # tiny shape on the CPU: checks this script, measures nothing
sys.path.insert(0, str(ROOT))

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
SHAPES = {
    "1p5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512, tie_word_embeddings=True),  # CPU dry run of this script
    "7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
}
# name: (shape, kind, options). "ours" options: mode, ckpt (gradient checkpointing), micro (micro-batch tokens),
# kernel (SFTConfig.attention_kernel), launch (an accelerate config: FSDP2), batch (samples per optimizer step);
# A/B switches: manual_gc / ungrouped (SFTConfig.manual_gc / group_projections), bf16_wgrad (no fp32-output GEMMs)
_FULL = {"mode": "full", "ckpt": False, "micro": 16384, "liger": True, "batch": 64}
CASES = {
    "check": ("1p5b", "check", {}),
    "attn": ("1p5b", "attn", {}),
    "attn_7b": ("7b", "attn", {}),
    "gemm": ("1p5b", "gemm", {}),
    "gemm_7b": ("7b", "gemm", {}),
    "trl_1p5b": ("1p5b", "trl", {"batch": 4}),
    # full FT, one H100: the default (fp32 master + bf16 compute copy whose Linear weight gradients accumulate in
    # fp32 GEMMs, ragged cuDNN attention, GC between steps) and what each part replaced
    "full_1p5b": ("1p5b", "ours", {**_FULL, "kernel": "auto"}),
    "full_1p5b_hybrid": ("1p5b", "ours", {**_FULL, "kernel": "hybrid"}),
    "full_1p5b_autogc": ("1p5b", "ours", {**_FULL, "kernel": "auto", "manual_gc": False}),
    "full_1p5b_20k": ("1p5b", "ours", {**_FULL, "kernel": "auto", "micro": 20480}),
    "full_1p5b_bf16_wgrad": ("1p5b", "ours", {**_FULL, "kernel": "auto", "bf16_wgrad": True}),
    "full_1p5b_ungrouped": ("1p5b", "ours", {**_FULL, "kernel": "auto", "ungrouped": True}),
    "gaps_full_1p5b": ("1p5b", "ours", {**_FULL, "kernel": "auto", "gaps": True}),
    "full_1p5b_flash": ("1p5b", "ours", {**_FULL, "kernel": "flash"}),
    "full_1p5b_fsdp": ("1p5b", "ours", {**_FULL, "kernel": "auto", "launch": "fsdp2_1gpu"}),
    "full_1p5b_fsdp_flash": ("1p5b", "ours", {**_FULL, "kernel": "flash", "launch": "fsdp2_1gpu"}),
    "full_1p5b_ckpt": ("1p5b", "ours", {**_FULL, "kernel": "auto", "ckpt": True, "micro": 32768}),
    "profile_full_1p5b": ("1p5b", "ours", {**_FULL, "kernel": "auto", "batch": 16, "profile": True}),
    # LoRA (r 64, all projections); 7B: gradient checkpointing, 32k micro-batches / one 32k sample per step
    "lora_1p5b": ("1p5b", "ours", {**_FULL, "mode": "lora", "kernel": "auto"}),
    "lora_7b": ("7b", "ours", {**_FULL, "mode": "lora", "ckpt": True, "micro": 32768, "kernel": "auto",
                               "batch": 16}),
    "lora_7b_32k": ("7b", "ours", {**_FULL, "mode": "lora", "ckpt": True, "micro": 32768, "kernel": "auto",
                                   "lengths": "32k"}),
    # issue 8 (multi-GPU kinds): the same over 2 GPUs of one host, and the 7B shape's full FT
    "full_1p5b_fsdp_2gpu": ("1p5b", "ours", {**_FULL, "kernel": "auto", "launch": "fsdp2_2gpu"}),
    "full_7b_fsdp_1gpu": ("7b", "ours", {**_FULL, "kernel": "auto", "ckpt": True, "micro": 32768,
                                         "launch": "fsdp2_1gpu"}),
    "full_7b_fsdp_2gpu": ("7b", "ours", {**_FULL, "kernel": "auto", "ckpt": True, "micro": 32768,
                                         "launch": "fsdp2_2gpu"}),
    # issue 20 (4 and 8 GPUs of one host): the same scaling questions on the larger kinds
    **{f"full_1p5b_fsdp_{n}gpu": ("1p5b", "ours", {**_FULL, "kernel": "auto", "launch": f"fsdp2_{n}gpu"})
       for n in (4, 8)},
    **{f"full_7b_fsdp_{n}gpu": ("7b", "ours", {**_FULL, "kernel": "auto", "ckpt": True, "micro": 32768,
                                               "launch": f"fsdp2_{n}gpu"}) for n in (4, 8)},
}
DEFAULT = "check,trl_1p5b,full_1p5b,full_1p5b_hybrid,lora_1p5b,lora_7b_32k"


def qwen_config(shape: str):
    from transformers import Qwen2Config

    return Qwen2Config(max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6, **SHAPES[shape])


def synthetic_samples(n: int, vocab: int, seed: int = 0, lengths: str = "r1"):
    """R1-like samples: log-uniform lengths 1k-16k, prompt 64-512 tokens (labels ignored), the rest trained."""
    import numpy as np

    from factory.train.data import IGNORE_INDEX, TokenizedSample

    rng = np.random.default_rng(seed)
    if lengths == "32k":
        sizes = [32768] * n
    elif DRY:
        sizes = rng.integers(80, 600, n).tolist()
    else:
        sizes = np.exp(rng.uniform(math.log(1024), math.log(16384), n)).astype(int).tolist()
    out = []
    for size in sizes:
        ids = rng.integers(0, vocab, size, dtype=np.int32)
        labels = ids.copy()
        labels[: int(rng.integers(16, 64) if DRY else rng.integers(64, 512))] = IGNORE_INDEX
        out.append(TokenizedSample(ids, labels))
    return out


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _gpu_ms(step, repeats: int, warmup: int = 2) -> float:
    """Mean wall milliseconds of `step()` on the GPU after `warmup` untimed calls."""
    import torch

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - started) / repeats * 1e3


def _peak_gib() -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def peak_tflops() -> float:
    name = device_name()
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), 989.0)


# ------------------------------------------------------------------------------------------------ cases

def run_check(shape: str, opts: dict) -> dict:
    """Correctness on the GPU: flash varlen vs per-sample SDPA (GQA), fused CE (torch, liger) vs plain CE."""
    import torch

    from factory.train.loss import fused_linear_cross_entropy, naive_cross_entropy
    from factory.train.attention import _reference_varlen, varlen_attention_forward

    torch.manual_seed(0)
    res = {}
    cu = torch.tensor([0, 1000, 3500, 8192], dtype=torch.int32, device="cuda")
    q = torch.randn(1, 12, 8192, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(1, 2, 8192, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(1, 2, 8192, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = _reference_varlen(q64[0].transpose(0, 1), k64[0].transpose(0, 1), v64[0].transpose(0, 1), cu.cpu(),
                            128 ** -0.5)[None]
    ref_grads = torch.autograd.grad(ref.square().sum(), (q64, k64, v64))
    rel = lambda a, b: float((a.double() - b).norm() / b.norm())  # noqa: E731
    from factory.train import attention

    for kernel in ("flash", "cudnn", "hybrid", "ragged"):
        attention.ACTIVE.kernel = kernel  # set directly: set_cuda_kernel refuses ragged where it cannot run
        name = "varlen" if kernel == "flash" else kernel
        try:
            out, _ = varlen_attention_forward(None, q, k, v, None, scaling=128 ** -0.5, cu_seq_lens_q=cu,
                                              max_length_q=4692)
            grads = torch.autograd.grad(out.float().square().sum(), (q, k, v))
            res[f"{name}_out_rel_err"] = rel(out, ref)
            res[f"{name}_grad_rel_err"] = max(rel(a, b) for a, b in zip(grads, ref_grads))
        except Exception as exc:  # report, don't hide
            res[f"{name}_error"] = f"{type(exc).__name__}: {exc}"[:300]
    attention.ACTIVE.kernel = "flash"
    head = torch.nn.Linear(1536, 151936, bias=False, device="cuda", dtype=torch.bfloat16)
    h = torch.randn(6000, 1536, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    t = torch.randint(0, 151936, (6000,), device="cuda")
    t[:500] = -100
    head64 = torch.nn.Linear(1536, 151936, bias=False, device="cuda", dtype=torch.float64)
    head64.weight.data.copy_(head.weight.data)
    ref_loss = naive_cross_entropy(h.double(), head64, t)
    ref_g, ref_gw = torch.autograd.grad(ref_loss, (h, head64.weight))
    for impl in ("torch", "liger"):
        try:
            loss = fused_linear_cross_entropy(h, head, t, impl=impl, chunk=1024)  # several chunks
            g, gw = torch.autograd.grad(loss, (h, head.weight))
            res[f"ce_{impl}_loss_rel_err"] = abs(float(loss) - float(ref_loss)) / float(ref_loss)
            res[f"ce_{impl}_grad_rel_err"] = rel(g, ref_g.double())
            res[f"ce_{impl}_weight_grad_rel_err"] = rel(gw, ref_gw.double())
        except Exception as exc:  # report, don't hide
            res[f"ce_{impl}_error"] = f"{type(exc).__name__}: {exc}"[:300]
    # speed of the fused head+loss for one 16k-token micro-batch (fwd+bwd, trainable head)
    head.weight.requires_grad_(True)
    h = torch.randn(16384, 1536, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    t = torch.randint(0, 151936, (16384,), device="cuda")
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    liger_default = LigerFusedLinearCrossEntropyLoss(reduction="sum")
    for impl, chunk in (("liger_default", 0), ("liger", 2048), ("liger", 4096), ("liger", 8192), ("torch", 4096),
                        ("torch", 8192)):
        def step():
            if impl == "liger_default":  # Liger's own chunking (256 tokens here), bf16 head-gradient sums
                loss = liger_default(head.weight, h, t)
            else:
                loss = fused_linear_cross_entropy(h, head, t, impl=impl, chunk=chunk)
            torch.autograd.grad(loss, (h, head.weight))
        res[f"ce_{impl}{chunk or ''}_ms"] = round(_gpu_ms(step, 5), 2)
    res.update(_check_folded_linear())
    res["device"] = torch.cuda.get_device_name(0)
    res["torch"] = torch.__version__
    return res


def _check_folded_linear() -> dict:
    """The compute copy's Linear weight gradient, accumulated over 3 micro-batches by the fp32-output GEMM,
    against float64 (same bf16 inputs and output gradients), next to autograd's bf16 gradients summed in fp32."""
    import torch

    from factory.train import compute_copy, grad_folding

    torch.manual_seed(0)
    master = torch.nn.Sequential(torch.nn.Linear(1536, 8960, device="cuda"))
    twin = compute_copy.BF16ComputeCopy(master)
    xs = [torch.randn(16384, 1536, device="cuda", dtype=torch.bfloat16) for _ in range(3)]
    gs = [torch.randn(16384, 8960, device="cuda", dtype=torch.bfloat16) for _ in range(3)]
    for x, g in zip(xs, gs):
        twin.module(x).backward(g)
    ref = sum(g.double().t() @ x.double() for x, g in zip(xs, gs))
    ref_bias = sum(g.double().sum(0) for g in gs)
    bf16_sum = sum((g.t() @ x).float() for x, g in zip(xs, gs))
    rel = lambda a, b: float((a.double() - b).norm() / b.norm())  # noqa: E731
    res = {"folded_fp32_gemm": grad_folding.FP32_GEMM[0],
           "folded_weight_grad_rel_err": rel(master[0].weight.grad, ref),
           "bf16_grads_summed_rel_err": rel(bf16_sum, ref),
           "folded_bias_grad_rel_err": rel(master[0].bias.grad, ref_bias)}
    # grouped projections (q/k/v with biases: one stacked fp32 buffer; gate/up: chained data gradients), the
    # input gradient and every master gradient against float64, the k output unused in the last micro-batch
    block = torch.nn.Module()
    block.q_proj, block.k_proj, block.v_proj = (torch.nn.Linear(1536, n, device="cuda") for n in (1536, 256, 256))
    block.gate_proj, block.up_proj = (torch.nn.Linear(1536, 8960, bias=False, device="cuda") for _ in range(2))
    master = torch.nn.Sequential(block)
    twin = compute_copy.BF16ComputeCopy(master)
    copy_block = twin.module[0]
    names = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")
    weights64 = {n: (getattr(copy_block, n).weight.double(), None if getattr(copy_block, n).bias is None
                     else getattr(copy_block, n).bias.double()) for n in names}
    grads64 = {n: [torch.zeros_like(w), None if b is None else torch.zeros_like(b)] for n, (w, b) in weights64.items()}
    worst_x, worst_w = 0.0, 0.0
    for i in range(3):
        x = torch.randn(16384, 1536, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        outs = {n: getattr(copy_block, n)(x) for n in names}
        used = [n for n in names if not (i == 2 and n == "k_proj")]
        gs = {n: torch.randn_like(outs[n]) for n in used}
        torch.autograd.backward([outs[n] for n in used], [gs[n] for n in used])
        x64 = x.detach().double()
        ref_x = sum(gs[n].double() @ weights64[n][0] for n in used)
        worst_x = max(worst_x, rel(x.grad, ref_x))
        for n in used:
            grads64[n][0] += gs[n].double().t() @ x64
            if grads64[n][1] is not None:
                grads64[n][1] += gs[n].double().sum(0)
    for n in names:
        m = getattr(block, n)
        worst_w = max(worst_w, rel(m.weight.grad, grads64[n][0]))
        if m.bias is not None:
            worst_w = max(worst_w, rel(m.bias.grad, grads64[n][1]))
    res.update({"grouped": [g.name for g in twin.groups], "grouped_input_grad_rel_err": worst_x,
                "grouped_master_grad_rel_err": worst_w,
                "grouped_qkv_grads_share_buffer": all(
                    getattr(block, n).weight.grad.untyped_storage().data_ptr()
                    == block.q_proj.weight.grad.untyped_storage().data_ptr() for n in ("k_proj", "v_proj"))})
    return res


def run_attn(shape: str, opts: dict) -> dict:
    """fwd+bwd time of the packed attention kernels for one 16k-token micro-batch (Qwen2.5-1.5B heads)."""
    import torch

    from factory.train import attention

    res = {}
    default_kernel = attention.ACTIVE.kernel
    heads, kv, dim = (12, 2, 128) if shape == "1p5b" else (28, 4, 128)
    kernels = ("flash", "cudnn", "hybrid", "ragged")
    for docs in ([16384], [9000, 5000, 2384], [4096] * 4, [5000, 3100, 2500, 2000, 1800, 1200, 700]):
        total = sum(docs)
        bounds = [0] + torch.tensor(docs).cumsum(0).tolist()
        cu = torch.tensor(bounds, dtype=torch.int32, device="cuda")
        attention.remember_bounds(cu, bounds)
        q = torch.randn(1, heads, total, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        k = torch.randn(1, kv, total, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        v = torch.randn(1, kv, total, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        flops = sum(2 * d * d * heads * dim for d in docs) * 3.5  # causal fwd (2 matmuls, /2) x (1 fwd + 2.5 bwd)
        for kernel in kernels:
            attention.ACTIVE.kernel = kernel
            try:
                def step():
                    out, _ = attention.varlen_attention_forward(None, q, k, v, None, scaling=dim ** -0.5,
                                                                cu_seq_lens_q=cu, max_length_q=max(docs))
                    out.sum().backward()
                res[f"{kernel}_{len(docs)}docs_first_ms"] = round(_gpu_ms(step, 1, warmup=0), 1)
                ms = _gpu_ms(step, 10)
                res[f"{kernel}_{len(docs)}docs_ms"] = round(ms, 2)
                res[f"{kernel}_{len(docs)}docs_tflops"] = round(flops / ms / 1e9, 1)
            except Exception as exc:
                res[f"{kernel}_{len(docs)}docs_error"] = f"{type(exc).__name__}: {exc}"[:200]
    # plan cache: first-call time of packed rows of new sample counts and lengths (same 16k total) after
    # warm_cudnn_plans
    import numpy as np
    from transformers import Qwen2Config

    rng = np.random.default_rng(1)
    for kernel in ("flash", "hybrid", "ragged"):
        attention.ACTIVE.kernel = kernel
        res[f"{kernel}_warmup_s"] = round(attention.warm_cudnn_plans(
            Qwen2Config(hidden_size=heads * dim, num_attention_heads=heads, num_key_value_heads=kv), 16384,
            torch.device("cuda")), 2)
        firsts = []
        for _ in range(6):
            cuts = np.sort(rng.choice(np.arange(700, 16000), int(rng.integers(2, 9)), replace=False))
            docs = np.diff(np.concatenate([[0], cuts, [16384]])).tolist()
            bounds = [0] + np.cumsum(docs).tolist()
            cu = torch.tensor(bounds, dtype=torch.int32, device="cuda")
            attention.remember_bounds(cu, bounds)
            q = torch.randn(1, heads, 16384, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
            k = torch.randn(1, kv, 16384, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
            v = torch.randn(1, kv, 16384, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)

            def first_call():
                out, _ = attention.varlen_attention_forward(None, q, k, v, None, scaling=dim ** -0.5,
                                                            cu_seq_lens_q=cu, max_length_q=max(docs))
                out.sum().backward()
            firsts.append(round(_gpu_ms(first_call, 1, warmup=0), 1))
        res[f"{kernel}_new_shape_first_ms"] = firsts
    attention.ACTIVE.kernel = default_kernel
    return res


def run_ours(shape: str, opts: dict) -> dict:
    from factory.train.config import SFTConfig
    from factory.train.model import model_flops_per_token
    from factory.train.trainer import train

    config = qwen_config(shape)
    lengths = opts.get("lengths", "r1")
    # the first step is warm-up; the recipes' global batch is 64 samples; BENCH_STEPS: more steps (A/B runs)
    n_steps, batch = (3, 1) if lengths == "32k" else (4 if opts["batch"] <= 16 else 3, opts["batch"])
    n_steps = int(os.environ.get("BENCH_STEPS", n_steps))
    samples = synthetic_samples(n_steps * batch, config.vocab_size, lengths=lengths)
    cfg = SFTConfig(student=f"qwen2.5-{shape}-shape", init="random", mode=opts["mode"], epochs=1,
                    max_steps=n_steps, global_batch_size=batch, micro_batch_tokens=opts["micro"],
                    max_length=opts["micro"], gradient_checkpointing=opts["ckpt"], liger=opts["liger"],
                    warmup_ratio=0.0, save_every_steps=0, progress=False, precision="fp32" if DRY else "bf16",
                    attention_kernel=opts["kernel"], manual_gc=opts.get("manual_gc", True),
                    group_projections=not opts.get("ungrouped"))  # ungrouped: q/k/v, gate/up Linear by Linear
    if opts.get("bf16_wgrad"):  # the compute copy's Linear gradients as bf16 GEMMs + fp32 adds (the A/B baseline)
        from factory.train import grad_folding

        grad_folding.FP32_GEMM[0] = False
    with tempfile.TemporaryDirectory() as tmp:
        if opts.get("profile"):
            return profile_ours(cfg, samples, tmp, config)
        if opts.get("gaps"):
            return gaps_ours(cfg, samples, tmp, config)
        result = train(cfg, samples, tmp, model_config=config, export=False, save_final=False)
        if int(os.environ.get("RANK", 0)) != 0:  # the training log is rank 0's; its figures are global
            return {}
        log = [json.loads(line) for line in Path(result.log_path).read_text().splitlines()]
    from factory.train import cudnn_ragged
    timed = log[1:]
    tokens = sum(r["tokens"] - p["tokens"] for p, r in zip(log[:-1], log[1:]))
    seconds = sum(r["step_s"] for r in timed)
    tflops = sum(r["tflops_per_gpu"] * r["step_s"] for r in timed) / seconds
    world = int(os.environ.get("WORLD_SIZE", 1))
    # the same throughput under the PaLM/torchtitan convention (attention counted without the causal halving:
    # 12 L H d s per token instead of 6 L H d s), for comparison with figures published that way
    eff_len = sum(len(x) ** 2 for x in samples) / sum(len(x) for x in samples)
    strict = model_flops_per_token(config, eff_len, opts["mode"] == "lora")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    noncausal = strict + 6.0 * config.num_hidden_layers * config.num_attention_heads * head_dim * eff_len
    return {"tokens_per_s_per_gpu": tokens / seconds / world, "tflops_per_gpu": tflops,
            "mfu": tflops / peak_tflops(), "mfu_noncausal_attention": tflops * noncausal / strict / peak_tflops(),
            "peak_mem_gib": max(r.get("peak_mem_gib", 0) for r in log),
            "timed_steps": len(timed), "timed_tokens": tokens, "loss": [r["loss"] for r in log],
            "mean_len": sum(len(s) for s in samples) / len(samples), "world": world,
            "step_s": [r["step_s"] for r in log], "attention_warmup_s": log[0].get("attention_warmup_s"),
            "attention_kernel": log[0].get("attention_kernel"),
            "ragged_plans": len(cudnn_ragged._PLANS)}


def profile_ours(cfg, samples, tmp, config) -> dict:
    """Where the time goes: kernel time by op over the whole run (steps 2-4 dominate) vs wall time."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from factory.train.trainer import train

    from factory.train import cudnn_ragged

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
        started = time.perf_counter()
        train(cfg, samples, tmp, model_config=config, export=False, save_final=False)
        _sync()
        wall = time.perf_counter() - started
    events = prof.key_averages()
    table = events.table(sort_by="self_cuda_time_total", row_limit=40, max_name_column_width=60)
    print(table)
    kernel_s = sum(e.self_device_time_total for e in events) / 1e6
    # elementwise/copy ops by input shape: which tensors the copies and adds move
    import collections
    import re

    row = re.compile(r"(?<![0-9])(?:[12][0-9]{4}|3[0-2][0-9]{3})(?![0-9])")  # a row's length, 10k-33k tokens
    folded_t: dict[str, list] = collections.defaultdict(lambda: [0.0, 0])
    for e in prof.key_averages(group_by_input_shape=True):
        if e.self_device_time_total > 0 and e.key.startswith("aten::"):
            key = f"{e.key} {row.sub('T', str(e.input_shapes))[:140]}"
            folded_t[key][0] += e.self_device_time_total / 1e3
            folded_t[key][1] += e.count
    shapes = [f"{ms:.1f}ms x{n} {key}" for key, (ms, n) in sorted(folded_t.items(), key=lambda kv: -kv[1][0])[:40]]
    print("\n".join(shapes))
    return {"wall_s_profiled": wall, "kernel_s": kernel_s, "table": table[-9000:], "by_shape": shapes,
            "ragged_plans": len(cudnn_ragged._PLANS)}


def gaps_ours(cfg, samples, tmp, config) -> dict:
    """GPU idle time in the last optimizer step: kernel intervals from the profiler's timeline, the step's window
    from the training log, and the longest idle stretches summed by the kernels on either side."""
    import collections

    import torch
    from torch.profiler import ProfilerActivity, profile

    from factory.train.trainer import train

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        result = train(cfg, samples, tmp, model_config=config, export=False, save_final=False)
        _sync()
    log = [json.loads(line) for line in Path(result.log_path).read_text().splitlines()]
    kernels = []
    for e in prof.profiler.kineto_results.events():
        if "cuda" in str(e.device_type()).lower():
            start = e.start_ns() if hasattr(e, "start_ns") else e.start_us() * 1000
            dur = e.duration_ns() if hasattr(e, "duration_ns") else e.duration_us() * 1000
            kernels.append((start, start + dur, e.name()[:60]))
    kernels.sort()
    if not kernels:
        return {"error": "no CUDA kernels in the profile"}
    end = kernels[-1][1]
    window = log[-1]["step_s"] * 1e9
    begin = end - window
    busy, gaps, last_end, last_name = 0.0, collections.Counter(), begin, "step start"
    counts = collections.Counter()
    for start, stop, name in kernels:
        if stop <= begin:
            continue
        start = max(start, last_end)
        if start - last_end > 20_000:  # idle stretches over 20 us
            key = f"{last_name} -> {name}"
            gaps[key] += start - last_end
            counts[key] += 1
        busy += max(0, stop - start)
        if stop > last_end:
            last_end, last_name = stop, name
    top = [f"{v / 1e6:.1f} ms x{counts[k]}: {k}" for k, v in gaps.most_common(25)]
    print("\n".join(top))
    return {"step_s": window / 1e9, "busy_fraction": busy / window, "idle_ms_over_20us": sum(gaps.values()) / 1e6,
            "top_gaps": top, "log_step_s": [r["step_s"] for r in log]}


def run_trl(shape: str, opts: dict) -> dict:
    """TRL SFTTrainer, default settings (padding to the longest of the batch, gradient checkpointing, sdpa,
    bf16 model), on the same samples; max_length raised so nothing is truncated."""
    import datasets
    import torch
    from tokenizers import Tokenizer, models
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, TrainerCallback
    from trl import SFTConfig as TRLConfig
    from trl import SFTTrainer

    from factory.train.data import IGNORE_INDEX
    from factory.train.model import model_flops_per_token

    config = qwen_config(shape)
    samples = synthetic_samples(64, config.vocab_size)
    ds = datasets.Dataset.from_dict({"input_ids": [s.input_ids.tolist() for s in samples],
                                     "completion_mask": [(s.labels != IGNORE_INDEX).astype(int).tolist()
                                                         for s in samples]})
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<pad>": 0, "<eos>": 1, "<unk>": 2},
                                                                              unk_token="<unk>")),
                                  pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    stamps: list[tuple[float, int]] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            _sync()
            stamps.append((time.perf_counter(), -1))

    class Counting(SFTTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            mask = inputs.get("attention_mask")
            real = int(mask.sum()) if mask is not None else inputs["input_ids"].numel()
            stamps.append((0.0, real))
            return super().training_step(model, inputs, num_items_in_batch)

    batch = opts["batch"]
    result = {}
    while batch >= 1:
        stamps.clear()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        torch.manual_seed(0)
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation="sdpa")
        steps = min(12, 64 // batch)
        with tempfile.TemporaryDirectory() as tmp:
            args = TRLConfig(output_dir=tmp, per_device_train_batch_size=batch, max_steps=steps, learning_rate=1e-4,
                             logging_steps=1, save_strategy="no", report_to="none", max_length=None, bf16=not DRY,
                             gradient_checkpointing=True, disable_tqdm=True, dataloader_num_workers=0, seed=0)
            trainer = Counting(model=model, args=args, train_dataset=ds, processing_class=tok,
                               callbacks=[Timer()])
            try:
                trainer.train()
            except torch.OutOfMemoryError:
                result[f"oom_batch_{batch}"] = True
                del trainer, model
                batch //= 2
                continue
        _sync()
        end = time.perf_counter()
        begins = [t for t, n in stamps if n == -1]
        counts = [n for t, n in stamps if n != -1]
        # step i runs from begins[i] to begins[i+1] (or the end); skip step 0 (warm-up)
        bounds = begins[1:] + [end]
        seconds = bounds[-1] - bounds[0]
        tokens = sum(counts[1:])
        lengths_sq = sum(len(s) ** 2 for s in samples) / sum(len(s) for s in samples)
        fpt = model_flops_per_token(config, lengths_sq, lora=False)
        tflops = fpt * tokens / seconds / 1e12
        result.update({"batch": batch, "tokens_per_s_per_gpu": tokens / seconds, "tflops_per_gpu": tflops,
                       "mfu": tflops / peak_tflops(), "peak_mem_gib": _peak_gib(),
                       "timed_steps": len(begins) - 1, "timed_tokens": tokens,
                       "padded_tokens_fraction": None})
        break
    return result


def run_gemm(shape: str, opts: dict) -> dict:
    """Backward of the projections that share an input (q/k/v, gate/up) for one 16k-token row: each Linear on its
    own (data gradient, fp32-accumulating weight gradient, the data gradients summed) against one grouped GEMM
    pair over the concatenated output gradients; plus each weight-gradient GEMM alone."""
    import torch

    cfg = SHAPES[shape]
    hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    kv = hidden // heads * cfg["num_key_value_heads"]
    rows = 16384
    x = torch.randn(rows, hidden, device="cuda", dtype=torch.bfloat16)
    res = {}
    for group, widths in (("qkv", [hidden, kv, kv]), ("gate_up", [cfg["intermediate_size"]] * 2)):
        weight = torch.randn(sum(widths), hidden, device="cuda", dtype=torch.bfloat16)
        weights = list(weight.split(widths))
        grads = [torch.randn(rows, w, device="cuda", dtype=torch.bfloat16) for w in widths]
        master = torch.zeros(sum(widths), hidden, device="cuda", dtype=torch.float32)
        masters = list(master.split(widths))
        flops = 4 * rows * hidden * sum(widths)

        def separate():
            grad_x = None
            for g, w, m in zip(grads, weights, masters):
                part = g.mm(w)
                grad_x = part if grad_x is None else grad_x.add_(part)
                torch.addmm(m, g.t(), x, out_dtype=torch.float32, out=m)

        def grouped():
            g = torch.cat(grads, dim=1)
            g.mm(weight)
            torch.addmm(master, g.t(), x, out_dtype=torch.float32, out=master)

        for name, fn in (("separate", separate), ("grouped", grouped)):
            ms = _gpu_ms(fn, 20)
            res[f"{group}_{name}_ms"] = round(ms, 3)
            res[f"{group}_{name}_tflops"] = round(flops / ms / 1e9, 1)
        for i, (g, m) in enumerate(zip(grads, masters)):
            ms = _gpu_ms(lambda: torch.addmm(m, g.t(), x, out_dtype=torch.float32, out=m), 20)
            res[f"{group}_wgrad{i}_ms"] = round(ms, 3)
            res[f"{group}_wgrad{i}_tflops"] = round(2 * rows * hidden * g.shape[1] / ms / 1e9, 1)
    res["device"] = torch.cuda.get_device_name(0)
    print(json.dumps(res))
    return res


# ------------------------------------------------------------------------------------------------ driver

def run_case(name: str) -> dict:
    shape, kind, opts = CASES[name]
    if DRY:
        shape, opts = "tiny", {**opts, "micro": 1024, "liger": False}
    started = time.time()
    fn = {"check": run_check, "ours": run_ours, "trl": run_trl, "attn": run_attn, "gemm": run_gemm}[kind]
    res = fn(shape, opts)
    res.update({"case": name, "shape": shape, "kind": kind, "options": opts, "wall_s": round(time.time() - started, 1)})
    res.setdefault("device", device_name())
    return res


def child(name: str, result_file: str, timeout: int) -> dict:
    opts = CASES[name][2]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{os.environ.get('PYTHONPATH', '')}", "PYTHONUNBUFFERED": "1",
           **opts.get("env", {})}
    if opts.get("launch"):
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "pipelines" / "accelerate" / f"{opts['launch']}.yaml")]
    else:  # one process, one GPU: on a multi-GPU host TRL's Trainer would wrap the model in DataParallel
        env.setdefault("CUDA_VISIBLE_DEVICES", "0")
        cmd = [sys.executable]
    cmd += [str(Path(__file__).resolve()), "--case", name, "--result", result_file]
    started = time.time()
    try:
        proc = subprocess.run(cmd, env=env, timeout=timeout, capture_output=True, text=True)
        tail = (proc.stdout + proc.stderr)[-3000:]
        if proc.returncode != 0 or not Path(result_file).exists():
            return {"case": name, "error": f"exit {proc.returncode}", "tail": tail,
                    "wall_s": round(time.time() - started, 1)}
    except subprocess.TimeoutExpired as exc:
        return {"case": name, "error": f"timeout {timeout}s", "tail": str(exc.stdout)[-2000:] if exc.stdout else ""}
    return json.loads(Path(result_file).read_text())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", default=DEFAULT)
    parser.add_argument("--case")
    parser.add_argument("--result")
    parser.add_argument("--out", default=".")
    parser.add_argument("--timeout", type=int, default=240)
    args = parser.parse_args()
    if args.case:  # child
        res = run_case(args.case)
        rank = int(os.environ.get("RANK", 0))
        if rank == 0:
            Path(args.result).write_text(json.dumps(res))
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for name in args.cases.split(","):
        res = child(name, str(out / f"case_{name}.json"), args.timeout)
        results.append(res)
        print(json.dumps(res)[:1500], flush=True)
    by = {r["case"]: r for r in results}
    base = by.get("trl_1p5b", {}).get("tokens_per_s_per_gpu")
    print(f"\n{'case':18} {'tok/s/GPU':>10} {'TFLOP/s':>8} {'MFU':>6} {'peak GiB':>9} {'x TRL':>6}")
    for r in results:
        if "tokens_per_s_per_gpu" in r:
            ratio = r["tokens_per_s_per_gpu"] / base if base and r["shape"] == "1p5b" else float("nan")
            print(f"{r['case']:18} {r['tokens_per_s_per_gpu']:10.0f} {r['tflops_per_gpu']:8.1f} "
                  f"{r['mfu']:6.1%} {r['peak_mem_gib']:9.1f} {ratio:6.2f}")
        elif "error" in r:
            print(f"{r['case']:18} ERROR {r['error']}")
    best = max((r for r in results if r.get("kind") == "ours" and r.get("shape") == "1p5b"
                and r.get("options", {}).get("mode") == "full" and "tokens_per_s_per_gpu" in r),
               key=lambda r: r["tokens_per_s_per_gpu"], default=None)
    summary = {"device": next((r["device"] for r in results if r.get("device")), None), "results": results}
    if best and base:
        summary["best_full_1p5b"] = best["case"]
        summary["speedup_vs_trl_padded"] = best["tokens_per_s_per_gpu"] / base
        print(f"SUMMARY sft full 1.5B {best['case']}: {best['tokens_per_s_per_gpu']:,.0f} tok/s/GPU, "
              f"MFU {best['mfu']:.1%}, {summary['speedup_vs_trl_padded']:.2f}x TRL padded ({base:,.0f} tok/s)")
    (out / "sft_bench.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
