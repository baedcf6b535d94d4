"""The embedded SmolLM2-135M student trains a few LoRA steps from a small curated-like messages set (CPU)."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from factory.train.stage import run_sft
from factory.train.config import SFTConfig


def test_embedded_student_trains_a_few_steps(tmp_path):
    embedded = pytest.importorskip("factory.core.embedded")
    try:
        student = embedded.embedded_model_dir()
    except embedded.EmbeddedModelMissing as exc:
        pytest.skip(str(exc))
    (tmp_path / "curate").mkdir()
    # short curated-like samples: this CPU test pays ~6 x 135M FLOPs per token
    convs = [[{"role": "system", "content": "Solve."}, {"role": "user", "content": f"{a}+{b}?"},
              {"role": "assistant", "content": f"<think>\n{a}+{b}={a + b}\n</think>\n\n\\boxed{{{a + b}}}"}]
             for a, b in [(2, 3), (7, 5)]]
    pq.write_table(pa.table({"prompt_id": ["p0", "p1"], "messages": convs}),
                   tmp_path / "curate" / "part-00000.parquet")
    cfg = SFTConfig(student=str(student), mode="lora",
                    lora={"r": 8, "alpha": 16, "dropout": 0.0, "merge_on_export": False},
                    epochs=3, global_batch_size=2, max_length=128, micro_batch_tokens=256, learning_rate=3e-3,
                    warmup_ratio=0.0, gradient_checkpointing=False, save_every_steps=0, progress=False)
    counts = run_sft(cfg, tmp_path)
    log = [json.loads(x) for x in (tmp_path / "sft" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    assert log[-1]["loss"] < log[0]["loss"]
    assert counts["records_out"] == 2 and counts["extra"]["adapter_dir"]
    adapter = tmp_path / "sft" / "adapter"
    assert (adapter / "adapter_model.safetensors").exists()
    tok_cfg = json.loads((adapter / "tokenizer_config.json").read_text())
    assert tok_cfg["pad_token"] != "<|im_end|>"  # SmolLM2 ships pad == eos; the student must not
