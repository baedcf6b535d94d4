"""Padding-free packing: packed == unpacked logits, no cross-sample targets, deterministic plans, fused loss."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from factory.train.attention import register_varlen_attention
from factory.train.data import IGNORE_INDEX, TokenizedSample
from factory.train.loss import fused_linear_cross_entropy, install_fused_loss, naive_cross_entropy
from factory.train.packing import collate_packed, model_kwargs, pack_first_fit, plan_epoch
from factory.train.testing import tiny_config


def _samples(n: int, vocab: int, seed: int = 0) -> list[TokenizedSample]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        size = int(rng.integers(5, 40))
        ids = rng.integers(0, vocab, size).astype(np.int32)
        labels = ids.copy()
        labels[: int(rng.integers(1, size - 2))] = IGNORE_INDEX
        out.append(TokenizedSample(ids, labels))
    return out


@pytest.mark.parametrize("kind", ["qwen2", "llama"])
def test_packed_logits_equal_unpacked(kind):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(kind, 97),
                                             attn_implementation=register_varlen_attention()).eval()
    samples = _samples(4, 97)
    batch = collate_packed(samples)
    kwargs = model_kwargs(batch, torch.device("cpu"))
    kwargs.pop("labels")
    kwargs.pop("target_index")
    with torch.no_grad():
        packed = model(**kwargs).logits[0]
        alone = torch.cat([model(input_ids=torch.as_tensor(s.input_ids, dtype=torch.long)[None]).logits[0]
                           for s in samples])
    torch.testing.assert_close(packed, alone, rtol=1e-4, atol=1e-4)
    # a row whose samples attend across boundaries differs, so the comparison can fail. (transformers 5.19's
    # sdpa/eager with restarting position_ids and no mask leak like this too; hence the registered varlen path.)
    with torch.no_grad():
        leaky = model(input_ids=kwargs["input_ids"]).logits[0]
    assert (leaky - alone).abs().max() > 1e-3


def test_targets_never_cross_sample_boundaries():
    samples = _samples(5, 50, seed=1)
    batch = collate_packed(samples)
    targets = batch["labels"][0].numpy()
    cu = batch["cu_seq_lens"].numpy()
    for i, s in enumerate(samples):
        a, b = cu[i], cu[i + 1]
        assert targets[b - 1] == IGNORE_INDEX  # the last token of a sample predicts nothing
        assert (targets[a:b - 1] == s.labels[1:]).all()
    assert (batch["position_ids"][0].numpy()[cu[:-1]] == 0).all()
    assert batch["target_index"].tolist() == [i for i, t in enumerate(targets) if t != IGNORE_INDEX]


def test_plan_is_deterministic_complete_and_balanced():
    rng = np.random.default_rng(2)
    lengths = rng.integers(10, 200, 103)
    trained = lengths // 2
    plan = plan_epoch(lengths, trained, epoch=0, seed=7, global_batch=16, world_size=3, micro_batch_tokens=256)
    again = plan_epoch(lengths, trained, epoch=0, seed=7, global_batch=16, world_size=3, micro_batch_tokens=256)
    other = plan_epoch(lengths, trained, epoch=1, seed=7, global_batch=16, world_size=3, micro_batch_tokens=256)
    assert [s.micro_batches for s in plan] == [s.micro_batches for s in again]
    assert [s.samples for s in plan] != [s.samples for s in other]
    seen = sorted(i for step in plan for rank in step.micro_batches for mb in rank for i in mb)
    assert seen == list(range(103))
    for step in plan:
        assert len({len(rank) for rank in step.micro_batches}) == 1  # same number of micro-batches per rank
        assert step.trained_tokens == sum(int(trained[i]) for i in step.samples)
        for rank in step.micro_batches:
            assert all(sum(int(lengths[i]) for i in mb) <= 256 for mb in rank)
    with pytest.raises(ValueError, match="more than micro_batch_tokens"):
        pack_first_fit([0], np.array([300]), 256)


@pytest.mark.parametrize("frozen_head", [False, True])
def test_fused_cross_entropy_matches_plain(frozen_head):
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 300, bias=False)
    head.weight.requires_grad_(not frozen_head)
    hidden = torch.randn(1, 50, 16, requires_grad=True)
    targets = torch.randint(0, 300, (1, 50))
    targets[0, :7] = IGNORE_INDEX
    fused = fused_linear_cross_entropy(hidden, head, targets, impl="torch", chunk=8)
    grads = torch.autograd.grad(fused * 0.5, [hidden] + ([head.weight] if not frozen_head else []))
    index = torch.nonzero(targets.reshape(-1) != IGNORE_INDEX).reshape(-1)  # positions found on the host
    indexed = fused_linear_cross_entropy(hidden, head, targets, impl="torch", chunk=8, index=index)
    assert torch.equal(indexed, fused)
    for a, b in zip(torch.autograd.grad(indexed * 0.5, [hidden] + ([head.weight] if not frozen_head else [])), grads):
        assert torch.equal(a, b)
    plain = naive_cross_entropy(hidden, head, targets)
    ref = torch.autograd.grad(plain * 0.5, [hidden] + ([head.weight] if not frozen_head else []))
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_installed_loss_equals_transformers_loss():
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("qwen2", 97), attn_implementation="sdpa")
    sample = _samples(1, 97, seed=3)[0]
    ids = torch.as_tensor(sample.input_ids, dtype=torch.long)[None]
    labels = torch.as_tensor(sample.labels, dtype=torch.long)[None]
    expected = model(input_ids=ids, labels=labels).loss * int((labels[0, 1:] != IGNORE_INDEX).sum())
    install_fused_loss(model, "torch", chunk=4)
    batch = collate_packed([sample])
    got = model(input_ids=ids, labels=batch["labels"]).loss
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("lengths", [[700, 300, 1200, 90, 64, 20], [1500], [80, 70], [64, 900, 30, 1100]])
def test_hybrid_attention_pieces_equal_the_reference(monkeypatch, lengths):
    """The CUDA hybrid kernel's bookkeeping (split into cuDNN samples and flash runs, bucket padding, one concat),
    run on the CPU with both CUDA kernels swapped for per-sample SDPA: output and q/k/v gradients are exact."""
    from factory.train import attention

    def flash_on_cpu(q, k, v, cu, max_len, scale):
        assert max_len == max(int(b - a) for a, b in zip(cu[:-1], cu[1:]))
        return attention._reference_varlen(q, k, v, cu, scale)

    def cudnn_on_cpu(q, k, v, scale):
        assert q.shape[0] % attention.ACTIVE.cudnn_bucket == 0  # padded to a plan bucket
        whole = torch.tensor([0, q.shape[0]], dtype=torch.int32)
        return attention._reference_varlen(q, k, v, whole, scale)

    monkeypatch.setattr(attention, "_flash_varlen", flash_on_cpu)
    monkeypatch.setattr(attention, "_cudnn_sdpa", cudnn_on_cpu)
    monkeypatch.setattr(attention.ACTIVE, "cudnn_bucket", 256)
    torch.manual_seed(0)
    total = sum(lengths)
    cu = torch.tensor(np.concatenate([[0], np.cumsum(lengths)]), dtype=torch.int32)
    q = torch.randn(total, 4, 16, dtype=torch.float64, requires_grad=True)
    k = torch.randn(total, 2, 16, dtype=torch.float64, requires_grad=True)
    v = torch.randn(total, 2, 16, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(total, 4, 16, dtype=torch.float64)
    expected = attention._reference_varlen(q, k, v, cu, 0.25)
    expected_grads = torch.autograd.grad((expected * weights).sum(), (q, k, v))
    for min_len in (0, 500, 10_000):  # every sample via cuDNN; long ones; none
        out = attention._hybrid_varlen(q, k, v, cu, 0.25, min_len)
        grads = torch.autograd.grad((out * weights).sum(), (q, k, v))
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
        for got, want in zip(grads, expected_grads):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
