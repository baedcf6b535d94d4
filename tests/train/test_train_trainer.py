"""The SFT trainer on tiny real students (CPU): loss falls, outputs, resume, LoRA merge, bad students."""
from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from factory.train.stage import run_sft
from factory.train.config import SFTConfig
from factory.train.data import ChatFormatter, Conversation
from factory.train.model import StudentError, load_student
from factory.train.testing import build_student, math_conversations
from factory.train.trainer import train


@pytest.fixture(scope="module")
def students(tmp_path_factory):
    root = tmp_path_factory.mktemp("students")
    return {kind: build_student(root / kind, kind, hidden=48) for kind in ("qwen2", "llama")}


def _write_curated(run_dir, n, seed=0):
    (run_dir / "curate").mkdir(parents=True)
    with (run_dir / "curate" / "part-00000.jsonl").open("w") as handle:
        for conv in math_conversations(n, seed=seed):
            handle.write(json.dumps({"messages": conv}) + "\n")


def test_full_sft_loss_falls_and_writes_the_stage_folder(students, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _write_curated(tmp_path, 32)
    cfg = SFTConfig(student=str(students["qwen2"]), mode="full", epochs=4, global_batch_size=8, max_length=200,
                    micro_batch_tokens=400, learning_rate=1e-2, warmup_ratio=0.0, save_every_steps=0,
                    gradient_checkpointing=True, progress=False)
    counts = run_sft(cfg, tmp_path)
    sft = tmp_path / "sft"
    log = [json.loads(line) for line in (sft / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 16 and log[-1]["step"] == 16 and log[-1]["epoch"] == 4.0
    assert {"step", "epoch", "loss", "lr", "tokens", "tokens_per_s", "grad_norm"} <= set(log[0])
    assert log[-1]["loss"] < 0.6 * log[0]["loss"]
    assert log[-1]["lr"] < log[0]["lr"]  # cosine decay
    assert counts["records_in"] == 32 and counts["records_out"] == 32 and counts["stage"] == "sft"
    assert json.loads((sft / "counts.json").read_text()) == counts
    # the exported student stops on the template's end-of-turn and has a distinct pad token
    tok = AutoTokenizer.from_pretrained(sft / "model")
    model = AutoModelForCausalLM.from_pretrained(sft / "model")
    eos = model.generation_config.eos_token_id
    assert tok.convert_tokens_to_ids("<|im_end|>") in (eos if isinstance(eos, list) else [eos])
    assert tok.pad_token_id not in (eos if isinstance(eos, list) else [eos])
    assert json.loads((sft / "model" / "config.json").read_text()).get("attn_implementation") is None
    # trained in fp32 on the CPU, exported in bf16 (export_dtype's default): half the bytes, every tensor bf16
    assert json.loads((sft / "model" / "config.json").read_text())["dtype"] == "bfloat16"
    from safetensors import safe_open

    with safe_open(str(sft / "model" / "model.safetensors"), "pt") as weights:
        assert {weights.get_slice(k).get_dtype() for k in weights.keys()} == {"BF16"}
    umask = os.umask(0)
    os.umask(umask)
    assert {p.name: p.stat().st_mode & 0o777 for p in (sft / "model").iterdir()} == {
        p.name: 0o666 & ~umask for p in (sft / "model").iterdir()}  # safetensors alone would write 0600


def _lora_cfg(student, **extra):
    base = dict(student=str(student), mode="lora", epochs=2, global_batch_size=6, max_length=200,
                micro_batch_tokens=300, learning_rate=5e-3, warmup_ratio=0.2, gradient_checkpointing=False,
                progress=False, lora={"r": 4, "alpha": 8, "dropout": 0.1})
    base.update(extra)
    return SFTConfig(**base)


def _tokenized(student, n=18):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(student)
    fmt = ChatFormatter(tok)
    samples, _ = fmt.encode_many([Conversation(c, "x") for c in math_conversations(n, seed=3)], 200)
    return tok, fmt, samples


def test_resume_reproduces_the_uninterrupted_run_and_lora_merge_matches_adapter(students, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    student = students["llama"]
    tok, fmt, samples = _tokenized(student)
    common = dict(tokenizer=tok, eos_token_ids=fmt.eos_token_ids(), pad_id=tok.pad_token_id)
    cfg = _lora_cfg(student, save_every_steps=2, export_dtype="fp32")  # fp32: the merge is compared at 1e-4
    whole = train(cfg, samples, tmp_path / "a", **common)
    assert whole.steps == 6
    killed = train(cfg, samples, tmp_path / "b", stop_after_steps=3, **common)  # last checkpoint: step 2
    assert killed.steps == 3 and killed.model_dir is None
    resumed = train(cfg, samples, tmp_path / "b", **common)
    assert resumed.resumed_from == 2
    a = load_file(whole.adapter_dir / "adapter_model.safetensors")
    b = load_file(resumed.adapter_dir / "adapter_model.safetensors")
    assert a.keys() == b.keys() and len(a) > 0
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
    log_a = [json.loads(x) for x in (tmp_path / "a" / "train_log.jsonl").read_text().splitlines()]
    log_b = [json.loads(x) for x in (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log_b] == [1, 2, 3, 4, 5, 6]  # the lost step 3 was logged again, once
    assert [r["loss"] for r in log_a] == pytest.approx([r["loss"] for r in log_b], abs=1e-6)

    # LoRA merge on export reproduces base + adapter
    ids = torch.as_tensor(samples[0].input_ids, dtype=torch.long)[None]
    base = AutoModelForCausalLM.from_pretrained(student)
    with torch.no_grad():
        plain = base(input_ids=ids).logits
        adapted = PeftModel.from_pretrained(base, whole.adapter_dir)(input_ids=ids).logits
        merged = AutoModelForCausalLM.from_pretrained(whole.model_dir)(input_ids=ids).logits
    assert (adapted - plain).abs().max() > 1e-3  # training moved the adapter
    torch.testing.assert_close(merged, adapted, rtol=1e-4, atol=1e-4)


def test_resume_refuses_other_data(students, tmp_path):
    student = students["llama"]
    tok, fmt, samples = _tokenized(student, n=12)
    cfg = _lora_cfg(student, save_every_steps=1, epochs=1)
    train(cfg, samples, tmp_path, stop_after_steps=1, export=False)
    with pytest.raises(ValueError, match="checkpoint was written for other data"):
        train(cfg, samples[:-1], tmp_path, export=False)


def test_bad_students_get_clear_errors(students, tmp_path):
    from transformers import T5Config

    t5 = tmp_path / "t5"
    T5Config(vocab_size=64, d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8).save_pretrained(t5)
    with pytest.raises(StudentError, match="is not a causal language model"):
        load_student(SFTConfig(student=str(t5)), torch.device("cpu"))
    cfg = SFTConfig(student=str(students["qwen2"]), mode="lora", lora={"target_modules": ["qkv", "fc1"]})
    with pytest.raises(StudentError, match=r"match no layer .* its linear layers are: .*q_proj"):
        load_student(cfg, torch.device("cpu"))
    with pytest.raises(ValueError, match="extra_key"):
        SFTConfig(student="x", extra_key=1)
    with pytest.raises(ValueError, match="micro_batch_tokens"):
        SFTConfig(student="x", max_length=4096, micro_batch_tokens=1024)


def test_dataset_without_messages_fails_before_loading_the_model(students, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "curate").mkdir()
    pq.write_table(pa.table({"prompt": ["x"]}), tmp_path / "curate" / "part-00000.parquet")
    with pytest.raises(ValueError, match="no 'messages' column"):
        run_sft(SFTConfig(student=str(students["qwen2"]), progress=False), tmp_path)
