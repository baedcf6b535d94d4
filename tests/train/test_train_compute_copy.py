"""fp32 master weights + bf16 compute copy (one-process full FT): exact gradient folding, refresh, resume."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

from factory.train.compute_copy import BF16ComputeCopy
from factory.train.config import SFTConfig
from factory.train.data import ChatFormatter, Conversation
from factory.train.loss import install_fused_loss
from factory.train.packing import collate_packed, model_kwargs
from factory.train.testing import build_student, math_conversations
from factory.train.trainer import train


@pytest.fixture(autouse=True)
def _fresh_accelerator_state():
    """accelerate keeps one process-wide state; these tests train in bf16, the others in fp32."""
    from accelerate.state import AcceleratorState

    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    return build_student(tmp_path_factory.mktemp("students") / "qwen2", "qwen2", hidden=48)


def _samples(student, n=12):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(student)
    fmt = ChatFormatter(tok)
    samples, _ = fmt.encode_many([Conversation(c, "x") for c in math_conversations(n, seed=5)], 200)
    return tok, fmt, samples


def _master(student):
    from transformers import AutoModelForCausalLM

    from factory.train.attention import register_varlen_attention

    model = AutoModelForCausalLM.from_pretrained(student, dtype=torch.float32,
                                                 attn_implementation=register_varlen_attention())
    install_fused_loss(model)
    return model


def test_master_gradient_is_the_fp32_sum_of_the_bf16_micro_batch_gradients(student):
    tok, _, samples = _samples(student)
    master = _master(student)
    twin = BF16ComputeCopy(master, group_projections=False)  # per-Linear backward: autograd's exact sums
    install_fused_loss(twin.module)
    reference = copy.deepcopy(master)  # the same bf16 weights under plain autograd, gradients kept per micro-batch
    for param in reference.parameters():
        param.data = param.data.to(torch.bfloat16)
    install_fused_loss(reference)
    assert all(p.dtype == torch.bfloat16 for p in twin.module.parameters())
    assert all(b.dtype == torch.float32 for n, b in twin.module.named_buffers() if "inv_freq" in n)
    assert twin.module.get_input_embeddings().weight is twin.module.get_output_embeddings().weight  # still tied

    per_micro = []
    for micro in (samples[:3], samples[3:7], samples[7:]):
        batch = collate_packed(micro, tok.pad_token_id)
        twin.module(**model_kwargs(batch, torch.device("cpu"))).loss.backward()
        reference.zero_grad(set_to_none=True)
        reference(**model_kwargs(batch, torch.device("cpu"))).loss.backward()
        per_micro.append([p.grad.clone() for p in reference.parameters()])
    assert all(p.grad is None for p in twin.module.parameters())  # bf16 gradients freed as they are folded in
    folded = [m for m in twin.module.modules() if isinstance(m, torch.nn.Linear) and "forward" in vars(m)]
    assert len(folded) == 7 * master.config.num_hidden_layers  # q k v o gate up down: GEMMs fold into fp32
    assert len(twin._handles) < len(list(twin.module.parameters()))  # hooks only for norms and embeddings
    for i, param in enumerate(master.parameters()):
        expected = per_micro[0][i].float() + per_micro[1][i].float() + per_micro[2][i].float()
        assert param.grad.dtype == torch.float32
        torch.testing.assert_close(param.grad, expected, rtol=0, atol=0)

    with torch.no_grad():  # an optimizer step on the master reaches the copy at refresh
        for param in master.parameters():
            param.add_(1e-2 * torch.randn_like(param))
    twin.refresh()
    for m, c in zip(master.parameters(), twin.module.parameters()):
        assert torch.equal(c, m.to(torch.bfloat16))


def test_grouped_projections_match_the_per_linear_backward(student):
    tok, _, samples = _samples(student)
    master = _master(student)
    per_linear_master = copy.deepcopy(master)
    per_linear = BF16ComputeCopy(per_linear_master, group_projections=False)
    grouped = BF16ComputeCopy(master, group_projections=True)
    for twin in (per_linear, grouped):
        install_fused_loss(twin.module)
    layers = master.config.num_hidden_layers
    assert [g.name.split(".")[-1] for g in grouped.groups] == ["q_proj/k_proj/v_proj", "gate_proj/up_proj"] * layers
    assert [g.narrow for g in grouped.groups] == [True, False] * layers
    qkv = grouped.groups[0]
    offsets = [0, qkv.widths[0], qkv.widths[0] + qkv.widths[1]]
    assert [c.weight.data_ptr() for c in qkv.copies] == [qkv.weight[o].data_ptr() for o in offsets]

    for micro in (samples[:3], samples[3:7], samples[7:]):
        batch = collate_packed(micro, tok.pad_token_id)
        losses = [twin.module(**model_kwargs(batch, torch.device("cpu"))).loss for twin in (per_linear, grouped)]
        assert torch.equal(losses[0], losses[1])  # the forward runs the same GEMMs
        for loss in losses:
            loss.backward()
    assert qkv._pending is None and all(p.grad is None for p in grouped.module.parameters())
    weights = [m.weight for m in qkv.masters]  # q/k/v master gradients: row blocks of one fp32 buffer
    assert [w.grad.data_ptr() for w in weights] == [qkv._grad[o].data_ptr() for o in offsets]
    for (name, a), b in zip(master.named_parameters(), per_linear_master.parameters()):
        assert a.grad.dtype == torch.float32
        # only the rounding of the bf16 input-gradient sums differs (one GEMM instead of GEMMs + adds)
        assert float((a.grad - b.grad).norm() / b.grad.norm()) < 2e-2, name

    master.zero_grad(set_to_none=True)  # the next step starts from zero in the same buffer
    batch = collate_packed(samples[:3], tok.pad_token_id)
    grouped.module(**model_kwargs(batch, torch.device("cpu"))).loss.backward()
    assert weights[0].grad.data_ptr() == qkv._grad.data_ptr()
    with torch.no_grad():
        for param in master.parameters():
            param.add_(1e-2 * torch.randn_like(param))
    grouped.refresh()  # the members' weights are views of the group's buffer: refresh writes through them
    assert torch.equal(qkv.weight[:offsets[1]], qkv.masters[0].weight.to(torch.bfloat16))


def test_grouped_projections_under_gradient_checkpointing_give_the_same_gradients(student):
    tok, _, samples = _samples(student)
    plain_master = _master(student)
    ckpt_master = copy.deepcopy(plain_master)
    plain, ckpt = BF16ComputeCopy(plain_master), BF16ComputeCopy(ckpt_master)
    for twin in (plain, ckpt):
        install_fused_loss(twin.module)
        twin.module.train()
    ckpt.module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    batch = collate_packed(samples[:4], tok.pad_token_id)
    for twin in (plain, ckpt):  # the recomputed forward forms its groups again, in the same order
        twin.module(**model_kwargs(batch, torch.device("cpu"))).loss.backward()
    for a, b in zip(plain_master.parameters(), ckpt_master.parameters()):
        assert torch.equal(a.grad, b.grad)


def test_projection_group_serves_siblings_by_input_and_zero_fills_unused_outputs():
    torch.manual_seed(0)
    attn = torch.nn.Module()
    attn.q_proj, attn.k_proj, attn.v_proj = (torch.nn.Linear(8, n) for n in (8, 4, 4))
    master = torch.nn.Sequential(attn)
    twin = BF16ComputeCopy(master, dtype=torch.float32)
    assert len(twin.groups) == 1 and twin.groups[0].narrow
    q, k, v = twin.module[0].q_proj, twin.module[0].k_proj, twin.module[0].v_proj
    x, y = torch.randn(5, 8), torch.randn(5, 8)
    # v asks first, q second with the same input; k is called with another input (its own node); the group's k
    # output is never used (a zero gradient)
    loss = v(x).square().sum() + (q(x) * 3).sum() + k(y).sum()
    loss.backward()
    ref = copy.deepcopy(master)
    ref.zero_grad(set_to_none=True)
    (ref[0].v_proj(x).square().sum() + (ref[0].q_proj(x) * 3).sum() + ref[0].k_proj(y).sum()).backward()
    for a, b in zip(master.parameters(), ref.parameters()):
        torch.testing.assert_close(a.grad, b.grad)
    assert twin.groups[0]._pending is not None  # k never asked for the output computed with x


def test_compute_copy_trains_and_resumes_exactly(student, tmp_path):
    tok, fmt, samples = _samples(student, n=18)
    common = dict(tokenizer=tok, eos_token_ids=fmt.eos_token_ids(), pad_id=tok.pad_token_id)
    cfg = SFTConfig(student=str(student), mode="full", precision="bf16", epochs=3, global_batch_size=6,
                    max_length=200, micro_batch_tokens=300, learning_rate=1e-2, warmup_ratio=0.0,
                    gradient_checkpointing=False, save_every_steps=4, progress=False)
    whole = train(cfg, samples, tmp_path / "a", **common)
    killed = train(cfg, samples, tmp_path / "b", stop_after_steps=6, **common)  # last checkpoint: step 4
    assert killed.model_dir is None
    resumed = train(cfg, samples, tmp_path / "b", **common)
    assert resumed.resumed_from == 4 and whole.steps == resumed.steps == 9
    log = [json.loads(x) for x in (tmp_path / "a" / "train_log.jsonl").read_text().splitlines()]
    log_b = [json.loads(x) for x in (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["loss"] < 0.8 * log[0]["loss"]
    assert [r["loss"] for r in log_b] == [r["loss"] for r in log]  # the resumed run replays the same steps
    a = load_file(whole.model_dir / "model.safetensors")
    b = load_file(resumed.model_dir / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key

    # the same run without the copy (autocast over the fp32 weights) follows the same curve closely
    plain = train(cfg.model_copy(update={"bf16_compute_copy": False}), samples, tmp_path / "c", **common)
    log_c = [json.loads(x) for x in (tmp_path / "c" / "train_log.jsonl").read_text().splitlines()]
    assert plain.steps == 9
    assert [r["loss"] for r in log_c] == pytest.approx([r["loss"] for r in log], rel=0.05)


def test_unknown_attention_kernel_is_refused():
    from factory.train.attention import set_cuda_kernel

    with pytest.raises(ValueError, match="attention_kernel"):
        SFTConfig(student="x", attention_kernel="fa9")
    with pytest.raises(ValueError, match="expected auto or one of hybrid, flash, cudnn, ragged"):
        set_cuda_kernel("fa9")
