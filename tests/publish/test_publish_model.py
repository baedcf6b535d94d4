"""The model repo folder: a tiny real Llama (LoRA adapter or full model) + tokenizer + card, loadable with
transformers/peft, its card's metadata (model-index included) validated."""
from __future__ import annotations

import json

import pytest
import torch
from huggingface_hub import ModelCard
from peft import PeftModel
from publish_fixtures import make_sft
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from factory.publish.cards import validate_model_card
from factory.publish.common import PublishError
from factory.publish.model import ModelPublishConfig, build_model_folder

HUB_BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"


def _logits(model, tokenizer):
    ids = tokenizer("what is 2 + 2 ?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(ids).logits


def test_adapter_folder_loads_with_peft_and_card_validates(tmp_path):
    run = tmp_path / "run"
    final = make_sft(run, "adapter")
    folder = run / "publish" / "model"
    build = build_model_folder(run, folder, ModelPublishConfig(base_model=HUB_BASE), "org/r1-student", "org/r1-data")
    assert build.kind == "adapter" and build.eval_rows == 2
    names = {p for p, _ in build.files}
    assert {"README.md", "adapter_config.json", "adapter_model.safetensors", "tokenizer.json",
            "training/train_log.jsonl", "training/sft_config.json", "training/eval_summary.json"} <= names
    assert "training_args.bin" not in names, "pickled trainer state stays behind"
    # The adapter now names the Hub base, so others can load it from the repo alone.
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == HUB_BASE

    base = LlamaForCausalLM.from_pretrained(run / "base")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    published = PeftModel.from_pretrained(base, folder).eval()
    original = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(run / "base"), final).eval()
    plain = LlamaForCausalLM.from_pretrained(run / "base").eval()
    assert torch.allclose(_logits(published, tokenizer), _logits(original, tokenizer))
    assert not torch.allclose(_logits(published, tokenizer), _logits(plain, tokenizer)), "the adapter is applied"
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "what is 2 + 2 ?"}], tokenize=False,
                                         add_generation_prompt=True)
    assert chat.endswith("assistant <think> ")

    card = ModelCard.load(folder / "README.md")
    validate_model_card(str(card))
    data = card.data
    assert data.base_model == HUB_BASE and data.library_name == "peft" and data.datasets == ["org/r1-data"]
    assert data.pipeline_tag == "text-generation" and "lora" in data.tags
    assert data.get("base_model_relation") == "adapter"
    results = {(r.dataset_type, r.metric_type): r.metric_value for r in data.eval_results}
    assert results == {("HuggingFaceH4/MATH-500", "pass@1"): 0.412, ("HuggingFaceH4/MATH-500", "cons@4"): 0.47,
                       ("HuggingFaceH4/aime_2024", "pass@1"): 0.05, ("HuggingFaceH4/aime_2024", "cons@4"): 0.067}
    body = card.text
    assert "AutoPeftModelForCausalLM" in body and "r: 4" in body and "lora_alpha: 8" in body
    assert "| sft/model | math500 | 4 | 500 | 0.412 | 0.011 | 0.47 |" in body
    assert "| HuggingFaceTB/SmolLM2-135M-Instruct | math500 |" in body  # the baseline row stays in the table
    assert "loss 1.9 at the first logged step, 1 at the last" in body
    assert "hf_should_never_show" not in (folder / "training" / "sft_config.json").read_text() + body


def test_full_model_folder_loads_with_transformers(tmp_path):
    run = tmp_path / "run"
    final = make_sft(run, "full")
    folder = run / "publish" / "model"
    build = build_model_folder(run, folder, ModelPublishConfig(eval_model="sft/model"), "org/r1-student", None)
    assert build.kind == "full"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    published = AutoModelForCausalLM.from_pretrained(folder).eval()
    original = AutoModelForCausalLM.from_pretrained(final).eval()
    assert torch.equal(_logits(published, tokenizer), _logits(original, tokenizer))
    card = ModelCard.load(folder / "README.md")
    validate_model_card(str(card))
    # Trained from a local folder and no Hub id given: no base_model metadata (the Hub would reject a path),
    # the path is said in the prose instead.
    assert card.data.base_model is None and card.data.library_name == "transformers"
    assert str(run / "base") in card.text and "not on the Hub" in card.text
    assert "| parameters | " in card.text


def test_eval_rows_of_the_student_only_in_model_index(tmp_path):
    run = tmp_path / "run"
    make_sft(run, "full")
    summary = json.loads((run / "eval" / "summary.json").read_text())
    (run / "eval" / "summary.json").write_text(json.dumps([r for r in summary if r["model"] != "sft/model"]))
    folder = run / "publish" / "model"
    build = build_model_folder(run, folder, ModelPublishConfig(), "org/r1-student", None)
    assert build.eval_rows == 1  # one model evaluated: it is this one
    with pytest.raises(PublishError, match=r"eval_model: 'other' is not a model of .*summary\.json"):
        build_model_folder(run, folder, ModelPublishConfig(eval_model="other"), "org/r1-student", None)


def test_bad_model_inputs_are_named(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(PublishError, match=r"sft: no trained model or adapter"):
        build_model_folder(run, run / "publish" / "model", ModelPublishConfig(), "org/x", None)
    final = make_sft(run, "adapter")
    (final / "tokenizer.json").unlink()
    with pytest.raises(PublishError, match="no tokenizer files"):
        build_model_folder(run, run / "publish" / "model", ModelPublishConfig(), "org/x", None)
    AutoTokenizer.from_pretrained(run / "base").save_pretrained(final)
    (run / "eval" / "summary.json").write_text('{"model": "x"}')
    with pytest.raises(PublishError, match=r"summary\.json: expected a list of row objects"):
        build_model_folder(run, run / "publish" / "model", ModelPublishConfig(), "org/x", None)
    (final / "adapter_model.safetensors").unlink()
    with pytest.raises(PublishError, match="no weights"):
        build_model_folder(run, run / "publish" / "model", ModelPublishConfig(), "org/x", None)
    assert not (run / "publish" / "model").exists(), "nothing half-written"
