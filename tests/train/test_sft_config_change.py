"""The SFT stage on a tiny real student: a changed output-deciding setting (learning rate, LoRA shape) on a trained
run is refused before anything is written, naming the key; `--new-run` retrains; a run killed during its export
resumes into the export and its counts.json carries the loss and throughput from the training log."""
from __future__ import annotations

import json
import shutil

import pytest
from safetensors.torch import load_file

from factory.config import PipelineConfig
from factory.core.shards import StageConfigChanged
from factory.train.stage import run_sft_stage
from factory.train.testing import build_student, math_conversations


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    return build_student(tmp_path_factory.mktemp("student") / "llama", "llama", hidden=48)


def _pipeline(student, data, **sft) -> PipelineConfig:
    body = dict(student=str(student), data=str(data), mode="lora", epochs=1, global_batch_size=4, max_length=200,
                micro_batch_tokens=400, learning_rate=5e-3, warmup_ratio=0.0, save_every_steps=0,
                gradient_checkpointing=False, progress=False, lora={"r": 4, "alpha": 8, "dropout": 0.0})
    for key, value in sft.items():
        if key.startswith("lora_"):
            body["lora"] = {**body["lora"], key[5:]: value}
        else:
            body[key] = value
    return PipelineConfig.model_validate({"prompts": [], "sft": body})


def _data(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps({"messages": c}) + "\n" for c in math_conversations(8, seed=2)))
    return path


def _lora_rank(run) -> int:
    weights = load_file(run / "sft" / "adapter" / "adapter_model.safetensors")
    return next(v.shape[0] for k, v in weights.items() if "lora_A" in k)


def test_changed_sft_config_is_refused_and_new_run_retrains(student, tmp_path):
    data, run = _data(tmp_path), tmp_path / "run"
    first = run_sft_stage(_pipeline(student, data), run)
    assert first["extra"]["steps"] == 2 and _lora_rank(run) == 4
    recorded = {p: (run / "sft" / p).read_bytes() for p in ("sft_config.yaml", "manifest.json", "counts.json")}
    adapter = (run / "sft" / "adapter" / "adapter_model.safetensors").read_bytes()

    with pytest.raises(StageConfigChanged, match=r"changed: sft\.learning_rate: 0\.005 → 0\.001\)"):
        run_sft_stage(_pipeline(student, data, learning_rate=1e-3), run)
    with pytest.raises(StageConfigChanged, match=r"sft\.lora\.r: 4 → 2"):  # not a checkpoint size mismatch
        run_sft_stage(_pipeline(student, data, lora_r=2), run)
    assert {p: (run / "sft" / p).read_bytes() for p in recorded} == recorded  # nothing recorded, nothing trained
    assert (run / "sft" / "adapter" / "adapter_model.safetensors").read_bytes() == adapter
    assert run_sft_stage(_pipeline(student, data, progress=True, log_every_steps=2), run) == first  # speed only

    data.write_text(data.read_text() + json.dumps({"messages": math_conversations(1, seed=9)[0]}) + "\n")
    with pytest.raises(StageConfigChanged, match=r"input: data\.files"):
        run_sft_stage(_pipeline(student, data), run)

    again = run_sft_stage(_pipeline(student, data, lora_r=2), run, new_run=True)
    assert again["records_in"] == 9 and _lora_rank(run) == 2
    assert "r: 2" in (run / "sft" / "sft_config.yaml").read_text()


def test_counts_after_a_kill_during_export_come_from_the_training_log(student, tmp_path):
    data, run = _data(tmp_path), tmp_path / "run"
    cfg = _pipeline(student, data)
    whole = run_sft_stage(cfg, run)
    # killed while exporting: the final checkpoint is complete, the model, adapter and counts are not written
    for folder in ("model", "adapter"):
        shutil.rmtree(run / "sft" / folder)
    (run / "sft" / "counts.json").unlink()
    resumed = run_sft_stage(cfg, run)
    assert resumed["extra"]["resumed_from_step"] == resumed["extra"]["steps"] == 2
    last = json.loads((run / "sft" / "train_log.jsonl").read_text().splitlines()[-1])
    assert resumed["extra"]["final_loss"] == last["loss"] == pytest.approx(whole["extra"]["final_loss"], abs=1e-6)
    assert resumed["extra"]["tokens_per_s"] > 0
    assert (run / "sft" / "adapter" / "adapter_model.safetensors").exists()


def test_sft_refuses_an_unfinished_curate_and_leaves_no_folder(student, tmp_path):
    from factory.core.identity import UpstreamNotReady

    cfg = _pipeline(student, _data(tmp_path))
    cfg = cfg.model_copy(update={"sft": cfg.sft.model_copy(update={"data": None})})
    (tmp_path / "run" / "curate").mkdir(parents=True)
    (tmp_path / "run" / "curate" / "part-00000.parquet").write_bytes(b"x")
    with pytest.raises(UpstreamNotReady, match=r"sft reads curate/, but curate has not finished: it stopped part-way"):
        run_sft_stage(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "sft").exists()
